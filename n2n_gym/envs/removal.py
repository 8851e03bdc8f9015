"""N2NRemoval-v2: stage 1 of N2N, deciding layer by layer which units of the teacher to remove."""

from __future__ import annotations

import numpy as np
from gymnasium import spaces

from n2n_gym.arch import unit_rules
from n2n_gym.envs.base import CompressionEnv

KEEP, REMOVE = 0, 1


class LayerRemovalEnv(CompressionEnv):
    """Compress a trained teacher network by removing whole layers, one decision per layer.

    ## Description

    Stage 1 of N2N learning (Ashok et al., ICLR 2018). The teacher is described as an ordered
    sequence of *decision units* — conv+BN+activation groups, linear layers and residual blocks.
    The agent walks the sequence once, deciding for each unit whether to keep or remove it. After
    the last unit the resulting student is built (downstream layers adapt their input widths, a
    removed residual block leaves its shortcut), distilled from the teacher for a short, fixed
    budget on held-out training data, and scored on the validation split.

    ## Action Space

    ``Discrete(2)``: ``0`` keeps the current unit, ``1`` removes it. Units that must stay (the
    stem that reads the image, the classifier head, units whose removal would break the network)
    are marked in :meth:`action_masks`; a forbidden action is treated as keep and counted in
    ``info["masked_actions"]``.

    ## Observation Space

    A ``Dict`` of float32 arrays, padded to ``max_units`` (default 32) rows:

    - ``unit`` ``(15,)``: the current unit's descriptor (zeros once the episode is over);
    - ``position`` ``(max_units,)``: one-hot index of the current unit;
    - ``sequence`` ``(max_units * 15,)``: every unit's descriptor in network order, flattened
      row by row (reshape to ``(max_units, 15)``; flat because SB3's stock policies expect 1-D
      entries);
    - ``valid`` ``(max_units,)``: 1 for real units, 0 for padding;
    - ``decisions`` ``(max_units,)``: width ratio chosen so far (1 = kept or undecided, 0 = removed).

    Descriptor fields (:data:`n2n_gym.arch.DESCRIPTOR_FIELDS`): one-hot type (conv, linear, basic
    and bottleneck residual block), kernel/7, stride/2, padding/3, log2(outputs)/12, log2(inner
    width)/12, skip start, skip end, projection shortcut, relative position, share of the
    teacher's parameters and FLOPs.

    ## Rewards

    0 on every step but the last. At the last step
    ``R = C(2 - C) * acc_student / acc_teacher`` with ``C = 1 - params_student / params_teacher``,
    accuracies on the validation split held out of the training data. A student that cannot be
    built or whose distillation fails gets -1 (``info["error"]`` says why); violated constraints
    (``max_params``, ``max_flops``, ``min_accuracy``) give -1 or an annealed penalty.

    ## Starting State

    The teacher with every unit kept; the first unit is current. There is no randomness.

    ## Episode End

    Terminates after one step per decision unit. Never truncates.

    ## Arguments

    ``gymnasium.make("N2NRemoval-v2", **kwargs)``; every argument is a plain JSON-able value:

    - ``teacher="default"``: ``"default"`` (the bundled MNIST teacher), or a path to a checkpoint
      from ``python -m n2n_gym.teachers train``, to a state dict (with ``teacher_arch``), or to a
      whole pickled model (with ``allow_pickle=True``).
    - ``dataset="mnist"``, ``data_dir=None``: the data set and, except for MNIST, its folder.
    - ``fidelity="fast"``: a preset name (``"fast"``, ``"paper"``, …) or a dict of
      :class:`~n2n_gym.distill.DistillConfig` fields.
    - ``constraints=None``: a dict of :class:`~n2n_gym.reward.RewardConfig` fields.
    - ``evaluator="distill"``: ``"proxy"`` gives a cheap, deterministic stand-in for tests; an
      :class:`~n2n_gym.evaluation.Evaluator` object is used as it is (a shared back-end).
    - ``device="auto"``, ``cache_path=None`` (a SQLite measurement cache file),
      ``inherit_weights=True``, ``val_size=5000``, ``split_seed=0``, ``eval_seed=0``,
      ``allow_other_dataset=False``, ``max_units=32``, ``render_mode=None`` or ``"ansi"``.

    These are the fields of :class:`~n2n_gym.task.Task` (``gymnasium.make(id, **task.to_dict())``)
    plus the environment's options. Every one is checked here, at ``make()``: a bad value raises
    :class:`~n2n_gym.envs.EnvConfigError` in one line naming the argument and the fix, before any
    weights or data are loaded.

    ## Version History

    - v1: the default fidelity learns at a higher rate, so short distillations rank students the
      way long ones do (``bench/reward_fidelity.py``); rewards differ from v0's.
    - v0: initial version (``fidelity={"lr": 5e-4}``).
    """

    def _action_space(self) -> spaces.Discrete:
        return spaces.Discrete(2)

    def _ratio(self, action: int) -> float:
        return 0.0 if action == REMOVE else 1.0

    @property
    def _keep_action(self) -> int:
        return KEEP

    def _allowed_actions(self) -> np.ndarray:
        rules = unit_rules(self.teacher_spec)
        return np.array([[True, rules[unit].removable] for unit in self.active_units], dtype=bool)
