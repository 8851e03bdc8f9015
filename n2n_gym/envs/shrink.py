"""N2NShrink-v2: stage 2 of N2N, choosing a width for every remaining unit."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from gymnasium import spaces

from n2n_gym.arch import InvalidArchitecture, StudentDescription, unit_rules
from n2n_gym.envs.base import CompressionEnv, EnvConfigError

DEFAULT_RATIOS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
START_FILE = "best_student.json"


def load_start(start_from: str | dict[str, Any]) -> StudentDescription:
    """Read a stage-1 result: a student description (dict or JSON file) or a search run directory.

    A run directory holds the best student as ``best_student.json``. Files may hold the
    description itself or a record with it under ``"student"``.
    """
    data: Any = start_from
    if isinstance(start_from, str | Path):
        path = Path(start_from)
        if path.is_dir():
            path = path / START_FILE
        if not path.is_file():
            raise EnvConfigError(
                f"start_from={str(start_from)!r}: no such file (expected a student JSON or a run directory with {START_FILE})"
            )
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise EnvConfigError(
                f"start_from={str(start_from)!r} is not valid JSON: {error}"
            ) from error
    if isinstance(data, dict) and "student" in data:
        data = data["student"]
    try:
        return StudentDescription.from_dict(data)
    except InvalidArchitecture as error:
        raise EnvConfigError(f"start_from does not hold a student description: {error}") from error


class LayerShrinkEnv(CompressionEnv):
    """Compress a network further by choosing, unit by unit, how much of its width to keep.

    ## Description

    Stage 2 of N2N learning (Ashok et al., ICLR 2018). Starting from the teacher or from a
    stage-1 result (``start_from``), the agent walks the remaining decision units once and picks a
    width ratio for each: the output channels of a conv group or linear layer, the inner width of
    a residual block (its output width must match the residual sum). Shrunk layers keep their
    largest-norm filters when weights are inherited. The student is distilled and scored exactly
    as in ``N2NRemoval-v2``, and compression is always measured against the original teacher.

    ## Action Space

    ``Discrete(K)``: index into ``ratios`` (default 0.1, 0.2, …, 1.0). Units that cannot be
    shrunk (the classifier head; a unit whose output feeds a residual sum, such as a ResNet stem)
    only allow ratio 1.0, see :meth:`action_masks`; a forbidden action is treated as 1.0 and
    counted in ``info["masked_actions"]``.

    ## Observation Space

    As in ``N2NRemoval-v2`` (a ``Dict`` of ``unit``, ``position``, ``sequence``, ``valid``,
    ``decisions``), describing the starting network's units; ``decisions`` holds the chosen
    ratios (1 = undecided).

    ## Rewards

    0 on every step but the last; then ``R = C(2 - C) * acc_student / acc_teacher`` against the
    original teacher, -1 for a failed student, constraints as in ``N2NRemoval-v2``.

    ## Starting State

    The starting network with every unit at full width; the first unit is current. No randomness.

    ## Episode End

    Terminates after one step per unit of the starting network. Never truncates.

    ## Arguments

    Everything ``N2NRemoval-v2`` takes, plus:

    - ``ratios``: the width ratios an action can pick; must include 1.0 and lie in (0, 1].
    - ``start_from=None``: a stage-1 result — a search run directory (its ``best_student.json``),
      a student description JSON file, or the description as a dict. It must come from the same
      teacher.

    ## Version History

    - v1: the default fidelity learns at a higher rate, so short distillations rank students the
      way long ones do (``bench/reward_fidelity.py``); rewards differ from v0's.
    - v0: initial version (``fidelity={"lr": 5e-4}``).
    """

    def __init__(
        self,
        *,
        ratios: Sequence[float] = DEFAULT_RATIOS,
        start_from: str | dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        try:
            ratios = tuple(float(r) for r in ratios)
        except (TypeError, ValueError):
            ratios = ()
        if (
            not ratios
            or any(not 0.0 < r <= 1.0 for r in ratios)
            or 1.0 not in ratios
            or len(set(ratios)) != len(ratios)
        ):
            raise EnvConfigError(
                f"ratios={list(ratios)}: give distinct values in (0, 1] that include 1.0"
            )
        self.ratios = ratios
        self._start = load_start(start_from) if start_from is not None else None
        super().__init__(**kwargs)

    def _base_student(self) -> StudentDescription:
        if self._start is None:
            return super()._base_student()
        if self._start.teacher.key != self.teacher_spec.key:
            raise EnvConfigError(
                "start_from was made for a different teacher architecture; pass the same teacher as its search"
            )
        return self._start

    def _action_space(self) -> spaces.Discrete:
        return spaces.Discrete(len(self.ratios))

    def _ratio(self, action: int) -> float:
        return self.ratios[action]

    @property
    def _keep_action(self) -> int:
        return self.ratios.index(1.0)

    def _allowed_actions(self) -> np.ndarray:
        rules = unit_rules(self.teacher_spec)
        full = np.array([r == 1.0 for r in self.ratios])
        return np.array(
            [
                np.ones(len(self.ratios), bool) if rules[unit].shrinkable else full
                for unit in self.active_units
            ]
        )
