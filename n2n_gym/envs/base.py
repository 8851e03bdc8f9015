"""The shared template of the N2N environments: one step per decision unit, a terminal reward.

An environment holds a :class:`~n2n_gym.task.Task` — the teacher, data, fidelity, device, cache
and constraints of the search, checked when it is made, so bad input fails at ``gymnasium.make``
with one line — and an evaluator, built from the task at the first terminal step (so
``check_env`` and vector-env start-up stay cheap, and nothing heavy runs before Gymnasium's
async workers fork) or handed in by the search (a shared back-end). It turns decisions into a
:class:`~n2n_gym.arch.StudentDescription` and hands it to the evaluator — the single narrow door
to the expensive distillation.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, ClassVar

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from n2n_gym.arch import DESCRIPTOR_SIZE, StudentDescription, unit_descriptors
from n2n_gym.evaluation import EvalResult, Evaluator, RewardGate
from n2n_gym.task import LOOKUPS, Task, TaskError

if TYPE_CHECKING:
    from n2n_gym.table import TableTarget

logger = logging.getLogger(__name__)

# The paper's m rollouts per policy update: annealed constraints phase in over updates, counted
# as search-wide evaluations // EPISODES_PER_UPDATE for every algorithm.
EPISODES_PER_UPDATE = 5


# Keywords of the environments besides the task's fields.
ENV_OPTIONS = frozenset({"max_units", "render_mode", "train_hint", "ratios", "start_from"})


class EnvConfigError(TaskError):
    """A ``gymnasium.make`` argument the environment cannot use; the message says what to pass."""


def task_for(env_id: str, env_kwargs: dict[str, Any]) -> tuple[Task, dict[str, Any]]:
    """The task ``gymnasium.make(env_id, **env_kwargs)`` would build, and the other options.

    Checks everything without making the environment (no teacher weights, no data loaded).

    Returns:
        ``(task, options)``: ``gymnasium.make(env_id, **task.to_dict(), **options)`` makes the
        same environment.

    Raises:
        EnvConfigError: ``env_id`` is not registered, or an argument is bad (one line).
    """
    try:
        spec = gym.spec(env_id)
    except gym.error.Error:
        raise EnvConfigError(f"environment {env_id!r} is not registered") from None
    merged = {**spec.kwargs, **env_kwargs}
    options = {k: v for k, v in merged.items() if k in ENV_OPTIONS}
    fields = {k: v for k, v in merged.items() if k not in ENV_OPTIONS}
    try:
        task = Task.from_kwargs(
            train_hint=options.pop("train_hint", None), other_keywords=ENV_OPTIONS, **fields
        )
    except TaskError as error:
        raise EnvConfigError(str(error)) from None
    return task, options


class CompressionEnv(gym.Env[dict[str, np.ndarray], np.int64]):
    """Base class of :class:`LayerRemovalEnv` and :class:`LayerShrinkEnv` (see their docstrings).

    The keywords are the fields of :class:`~n2n_gym.task.Task` (``teacher``, ``dataset``,
    ``fidelity`` ...), plain JSON-able values; ``gymnasium.make(id, **task.to_dict())`` makes the
    environment of a task.

    Args:
        evaluator: ``"distill"`` / ``"table"`` / ``"surrogate"`` / ``"proxy"`` (the task's
            measurer), or a ready
            :class:`~n2n_gym.evaluation.Evaluator` (a back-end shared by several environments).
        max_units: observation padding.
        render_mode: ``None`` or ``"ansi"``.
        train_hint: how to train the teacher, for the error when none is given.
        task_kwargs: :class:`~n2n_gym.task.Task` fields.
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["ansi"], "render_fps": 1}

    def __init__(
        self,
        *,
        evaluator: str | Evaluator | None = None,
        max_units: int = 32,
        render_mode: str | None = None,
        train_hint: str | None = None,
        **task_kwargs: Any,
    ) -> None:
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise EnvConfigError(
                f"render_mode={render_mode!r}: supported modes are {self.metadata['render_modes']}"
            )
        if isinstance(evaluator, str):
            # gymnasium.make(id, **task.to_dict()) names the task's measurer, which then wins over
            # the evaluator the id registers (the table ids register "table").
            task_kwargs.setdefault("measurer", evaluator)
        elif evaluator is not None and not isinstance(evaluator, Evaluator):
            raise EnvConfigError(
                f"evaluator={evaluator!r}: pass 'distill', 'table', 'surrogate', 'proxy' or an n2n_gym Evaluator"
            )
        try:
            self.task = Task.from_kwargs(
                train_hint=train_hint, other_keywords=ENV_OPTIONS, **task_kwargs
            )
            if not isinstance(evaluator, Evaluator) and self.task.measurer == "distill":
                self.task.check_device()  # this process will distil
        except TaskError as error:
            raise EnvConfigError(str(error)) from None
        if not _positive(max_units):
            raise EnvConfigError(f"max_units={max_units!r} must be a positive integer")
        self.render_mode = render_mode
        self._evaluator: Evaluator | None = evaluator if isinstance(evaluator, Evaluator) else None
        self._shared_evaluator = self._evaluator is not None
        self.teacher_spec = self.task.teacher_spec
        if (
            self._evaluator is not None
            and self._evaluator.teacher_spec.key != self.teacher_spec.key
        ):
            raise EnvConfigError(
                "evaluator= scores students of another teacher than this task's; build it from "
                "the same task"
            )

        self.base = self._base_student()
        self.active_units = tuple(i for i, r in enumerate(self.base.ratios) if r > 0.0)
        if len(self.active_units) > max_units:
            raise EnvConfigError(
                f"the network has {len(self.active_units)} decision units but max_units={max_units}; pass a larger max_units"
            )
        self.max_units = max_units
        self._descriptors = unit_descriptors(self.base.plan().spec)
        self.action_space = self._action_space()
        self._allowed = self._allowed_actions()
        # A table or surrogate: its grid masks the actions, its target scores the student.
        self._table = self.task.load_lookup() if self.task.measurer in LOOKUPS else None
        if self._table is not None:
            self._allowed &= self._on_grid()
        self._optimum: dict[Any, Any] = {}
        self.observation_space = spaces.Dict(
            {
                "unit": spaces.Box(0.0, 1.5, (DESCRIPTOR_SIZE,), np.float32),
                "position": spaces.Box(0.0, 1.0, (max_units,), np.float32),
                # Flat (row-major units x fields): SB3's stock policies expect 1-D vectors.
                "sequence": spaces.Box(0.0, 1.5, (max_units * DESCRIPTOR_SIZE,), np.float32),
                "valid": spaces.Box(0.0, 1.0, (max_units,), np.float32),
                "decisions": spaces.Box(0.0, 1.0, (max_units,), np.float32),
            }
        )
        self._sequence = np.zeros((max_units, DESCRIPTOR_SIZE), np.float32)
        self._sequence[: self.num_steps] = self._descriptors
        self._valid = np.zeros(max_units, np.float32)
        self._valid[: self.num_steps] = 1.0
        self._step = 0
        self._decisions: list[float] = []
        self._masked_actions = 0
        self.last_result: EvalResult | None = None
        self.search_evaluations = 0
        self._halving_gate: RewardGate | None = None

    # ---- hooks for subclasses ---------------------------------------------------------------
    def _base_student(self) -> StudentDescription:
        """The network the episode starts from (the teacher, or a stage-1 student)."""
        return StudentDescription(self.teacher_spec, (1.0,) * self.teacher_spec.num_units)

    def _action_space(self) -> spaces.Discrete:
        raise NotImplementedError

    def _ratio(self, action: int) -> float:
        """The width ratio (relative to the starting network) that an action stands for."""
        raise NotImplementedError

    def _allowed_actions(self) -> np.ndarray:
        """Boolean ``(num_steps, n_actions)`` table of the actions each step allows."""
        raise NotImplementedError

    def _on_grid(self) -> np.ndarray:
        """Which actions lead to a student of the table's grid (the others are masked)."""
        grid = self._table.grid
        allowed = np.zeros_like(self._allowed)
        for step, unit in enumerate(self.active_units):
            for action in range(self.action_space.n):
                ratio = round(self.base.ratios[unit] * self._ratio(action), 4)
                allowed[step, action] = ratio in grid.choices[unit]
            if not allowed[step, self._keep_action]:
                raise EnvConfigError(
                    f"the starting network's unit {unit} (ratio {self.base.ratios[unit]}) is not "
                    f"on the grid of table {self._table.name!r}: start from one of its students"
                )
        return allowed

    def _table_key(self) -> tuple[Any, int | None]:
        config = self.evaluator.reward_config
        progress = self.anneal_progress
        return config, None if config.constraint_mode == "hard" else min(
            progress, config.anneal_steps
        )

    def table_optimum(self) -> float | None:
        """The best reward this table env can return under the current reward settings (``None``
        off a table): of one seed, or of the seed means with ``table_query="mean"``."""
        if self._table is None:
            return None
        key = self._table_key()
        if ("optimum", key) not in self._optimum:
            self._optimum["optimum", key] = self._table.optimum(
                *key, statistic=self.task.table_query
            )[0]
        return self._optimum["optimum", key]

    def table_target(self) -> TableTarget | None:
        """The best seed-mean reward and its noise band (``None`` off a table): what a benchmark
        scores a search against (see :meth:`n2n_gym.table.Table.target`)."""
        if self._table is None:
            return None
        key = self._table_key()
        if ("target", key) not in self._optimum:
            self._optimum["target", key] = self._table.target(*key)
        return self._optimum["target", key]

    def table_reference(self) -> float | None:
        """What a uniformly random student of the table (surrogate) is worth under the current
        reward settings, ``None`` off one: the 1 of a normalised regret, the target its 0."""
        if self._table is None:
            return None
        key = self._table_key()
        if ("reference", key) not in self._optimum:
            self._optimum["reference", key] = self._table.reference(*key)
        return self._optimum["reference", key]

    def _table_row(self, student: StudentDescription):
        row = self._table.by_ratios.get(student.ratios)
        return row if row is not None else self._table.row(student.plan(), student)

    def _table_info(self, result: EvalResult) -> dict[str, Any]:
        """The scoring facts of a table env's terminal step."""
        target = self.table_target()
        row = None if result.error else self._table_row(self.student())
        return {
            "table_optimum": self.table_optimum(),
            "table_target": target.reward,
            "table_band": target.band,
            # The student's worth as the table knows it best: its reward at its seed mean.
            "student_mean_reward": self._table.mean_reward(row, *self._table_key())
            if row is not None
            else self.evaluator.reward_config.reward_on_error,
        }

    # ---- the evaluator and annealing progress -------------------------------------------------
    def set_search_evaluations(self, count: int) -> None:
        """Tell the environment how many evaluations the whole search has finished before its next.

        Annealed constraints phase in over policy updates, ``count // EPISODES_PER_UPDATE``. A
        search run pushes its search-wide count to each of its environments, so the schedule is
        the same with 1 or N vector environments and continues after a resume; an environment
        used on its own counts its own episodes.
        """
        if isinstance(count, bool) or not isinstance(count, int | np.integer) or count < 0:
            raise ValueError(f"count={count!r} must be a non-negative integer")
        self.search_evaluations = int(count)

    @property
    def anneal_progress(self) -> int:
        """Policy updates finished so far, as annealed constraints count them."""
        return self.search_evaluations // EPISODES_PER_UPDATE

    @property
    def evaluator(self) -> Evaluator:
        """The evaluator, built from the task on first use (loads teacher and data)."""
        if self._evaluator is None:
            self._evaluator = self.task.build_evaluator()
        return self._evaluator

    def close(self) -> None:
        # A shared evaluator belongs to the search that handed it in; an own one is closed here.
        if self._evaluator is not None and not self._shared_evaluator:
            self._evaluator.close()
            self._evaluator = None
        super().close()

    def __getstate__(self) -> dict[str, Any]:
        # A built evaluator holds data tensors and a database connection: rebuild it after unpickling.
        state = self.__dict__.copy()
        if not self._shared_evaluator:
            state["_evaluator"] = None
        return state

    # ---- Gymnasium API --------------------------------------------------------------------------
    @property
    def num_steps(self) -> int:
        return len(self.active_units)

    @property
    def allowed_actions(self) -> np.ndarray:
        """Boolean ``(num_steps, n_actions)`` table: the actions each step allows."""
        return self._allowed.copy()

    def action_masks(self) -> np.ndarray:
        """Actions allowed at the current step (all True once the episode is over)."""
        if self._step >= self.num_steps:
            return np.ones(self.action_space.n, dtype=bool)
        return self._allowed[self._step].copy()

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self._step = 0
        self._decisions = []
        self._masked_actions = 0
        self.last_result = None
        return self._observation(), {
            "num_units": self.num_steps,
            "action_mask": self.action_masks(),
        }

    def step(self, action):
        if self._step >= self.num_steps:
            raise RuntimeError("step() called after the episode ended; call reset()")
        action = int(action)
        if not self.action_space.contains(action):
            raise ValueError(f"action {action} is outside the action space {self.action_space}")
        if not self._allowed[self._step, action]:
            # Documented behaviour for agents that ignore masks: the unit is kept as it is.
            self._masked_actions += 1
            action = self._keep_action
        self._decisions.append(self._ratio(action))
        self._step += 1
        if self._step < self.num_steps:
            return self._observation(), 0.0, False, False, {"action_mask": self.action_masks()}
        gate, self._halving_gate = self._halving_gate, None
        result = self.evaluator.evaluate(self.student(), self.anneal_progress, gate)
        self.search_evaluations += 1
        self.last_result = result
        return self._observation(), float(result.reward), True, False, self._terminal_info(result)

    def set_halving_gate(self, gate: RewardGate | None) -> None:
        """Let ``gate`` decide, at each halving rung of this episode's student, whether it
        continues (``(rung, partial_reward) -> bool``; a multi-fidelity optimiser's pruner),
        instead of the task's halving rule. It applies to the next terminal step only.

        Raises:
            ValueError: the task has no ``halving`` (no rungs to decide at).
        """
        if gate is not None and self.task.halving is None:
            raise ValueError(
                "set_halving_gate needs halving in the task, e.g. halving={'eta': 3, "
                "'rungs': [0.25, 0.5]}"
            )
        self._halving_gate = gate

    @property
    def _keep_action(self) -> int:
        raise NotImplementedError

    def student(self) -> StudentDescription:
        """The student the decisions so far describe (undecided units keep their starting width)."""
        ratios = list(self.base.ratios)
        for unit, ratio in zip(self.active_units, self._decisions, strict=False):
            ratios[unit] = round(self.base.ratios[unit] * ratio, 4)
        return StudentDescription(self.teacher_spec, tuple(ratios))

    def _observation(self) -> dict[str, np.ndarray]:
        position = np.zeros(self.max_units, np.float32)
        unit = np.zeros(DESCRIPTOR_SIZE, np.float32)
        if self._step < self.num_steps:
            position[self._step] = 1.0
            unit = self._descriptors[self._step].copy()
        decisions = self._valid.copy()
        decisions[: len(self._decisions)] = self._decisions
        return {
            "unit": unit,
            "position": position,
            "sequence": self._sequence.flatten(),
            "valid": self._valid.copy(),
            "decisions": decisions,
        }

    def _terminal_info(self, result: EvalResult) -> dict[str, Any]:
        evaluator = self.evaluator
        return {
            "accuracy": result.accuracy,
            "teacher_accuracy": evaluator.teacher_accuracy,
            "params": result.params,
            "teacher_params": evaluator.teacher_params,
            "compression": evaluator.teacher_params / result.params
            if result.params
            else float("nan"),
            "flops": result.flops,
            "teacher_flops": evaluator.teacher_flops,
            "rewards": dict(result.reward_parts),
            "student": self.student().to_dict(),
            "student_key": result.student_key,
            "cache_hit": result.cache_hit,
            "error": result.error,
            "error_type": result.error_type,
            "masked_actions": self._masked_actions,
            "wall_time": result.wall_time,
            "eval_seconds": result.seconds,
            "halted_at": result.halted_at,
        } | (self._table_info(result) if self._table is not None else {})

    def render(self) -> str | None:
        if self.render_mode != "ansi":
            return None
        spec = self.base.plan().spec
        lines = [
            f"{self.__class__.__name__} on {self.task.teacher_info.arch}/{self.task.dataset}: step {self._step}/{self.num_steps}"
        ]
        lines.append(f"{'#':>3} {'type':<20} {'k':>2} {'s':>2} {'out':>5} {'params':>9}  decision")
        params = spec.layer_params()
        for step, index in enumerate(spec.unit_indices):
            layer = spec.layers[index]
            kind = f"{layer.kind}-{layer.block}" if layer.kind == "residual" else layer.kind
            kernel = 3 if layer.kind == "residual" else layer.kernel
            decision = (
                self._describe_decision(self._decisions[step])
                if step < len(self._decisions)
                else ""
            )
            marker = ">" if step == self._step else " "
            lines.append(
                f"{marker}{step:>2} {kind:<20} {kernel:>2} {layer.stride:>2} {layer.out_channels:>5} {params[index]:>9}  {decision}"
            )
        if self.last_result is not None:
            r = self.last_result
            lines.append(
                f"reward {r.reward:.4f}  accuracy {r.accuracy}  params {r.params}  error {r.error}"
            )
        return "\n".join(lines)

    def _describe_decision(self, ratio: float) -> str:
        return "remove" if ratio == 0.0 else ("keep" if ratio == 1.0 else f"width x{ratio:g}")


def _positive(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1
