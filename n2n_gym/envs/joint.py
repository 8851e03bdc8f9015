"""N2NJoint-v1: both stages of N2N at once, one decision per unit: remove it, or keep it at a width."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from gymnasium import spaces

from n2n_gym.arch import unit_rules
from n2n_gym.envs.shrink import LayerShrinkEnv

JOINT_RATIOS = (0.5, 1.0)
REMOVE = 0


class LayerJointEnv(LayerShrinkEnv):
    """Compress a network by removing or shrinking each unit in a single pass.

    ## Description

    Stage 1 and stage 2 of N2N learning (Ashok et al., ICLR 2018) as one decision per unit:
    remove it (as ``N2NRemoval-v2`` does) or keep it at one of ``ratios`` of its width (as
    ``N2NShrink-v2`` does). Students are distilled and scored as in the other environments. With
    the default ratios its students are exactly the grid of the shipped table, so
    ``N2NJoint-Tab-v0`` is this environment answered from the table.

    ## Action Space

    ``Discrete(1 + K)``: 0 removes the unit, ``1 + i`` keeps it at ``ratios[i]`` (default 0.5,
    1.0). Units that cannot be removed (the stem, the head) or shrunk only allow what their rules
    permit, see :meth:`action_masks`; a forbidden action keeps the unit as it is and is counted in
    ``info["masked_actions"]``.

    ## Observation Space

    As in ``N2NRemoval-v2``; ``decisions`` holds the chosen ratios (0 = removed, 1 = undecided or
    kept).

    ## Rewards

    As in ``N2NRemoval-v2``: 0 on every step but the last; then ``R = C(2 - C) * acc_student /
    acc_teacher``, -1 for a failed student, constraints as configured.

    ## Starting State

    The starting network (the teacher, or ``start_from``) with every unit whole; no randomness.

    ## Episode End

    Terminates after one step per unit of the starting network. Never truncates.

    ## Arguments

    Everything ``N2NShrink-v2`` takes (``ratios`` default ``(0.5, 1.0)``).

    ## Version History

    - v0: initial version.
    """

    def __init__(self, *, ratios: Sequence[float] = JOINT_RATIOS, **kwargs: Any) -> None:
        super().__init__(ratios=ratios, **kwargs)

    def _action_space(self) -> spaces.Discrete:
        return spaces.Discrete(1 + len(self.ratios))

    def _ratio(self, action: int) -> float:
        return 0.0 if action == REMOVE else self.ratios[action - 1]

    @property
    def _keep_action(self) -> int:
        return 1 + self.ratios.index(1.0)

    def _allowed_actions(self) -> np.ndarray:
        rules = unit_rules(self.teacher_spec)
        widths = super()._allowed_actions()
        removable = np.array([[rules[unit].removable] for unit in self.active_units], dtype=bool)
        return np.concatenate([removable, widths], axis=1)
