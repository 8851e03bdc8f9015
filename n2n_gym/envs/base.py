"""The shared template of the N2N environments: one step per decision unit, a terminal reward.

The environment is the only place that knows every piece: it loads the teacher (at construction,
so bad input fails at ``gymnasium.make``), builds the evaluator lazily at the first terminal step
(so ``check_env`` and vector-env start-up stay cheap), turns decisions into a
:class:`~n2n_gym.arch.StudentDescription`, and hands it to the evaluator — the single narrow door to
the expensive distillation.
"""

from __future__ import annotations

import logging
from dataclasses import fields
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from n2n_gym.arch import DESCRIPTOR_SIZE, StudentDescription, unit_descriptors
from n2n_gym.backends import EvaluatorRecipe
from n2n_gym.data import DATASETS
from n2n_gym.distill import FIDELITY_PRESETS, DistillConfig
from n2n_gym.evaluation import EvalResult, Evaluator, ProxyEvaluator
from n2n_gym.reward import RewardConfig
from n2n_gym.teachers import Teacher, load_teacher

logger = logging.getLogger(__name__)

EPISODES_PER_UPDATE = 5


class EnvConfigError(ValueError):
    """A ``gymnasium.make`` argument the environment cannot use; the message says what to pass."""


def _dataclass_from(cls: type, value: dict[str, Any] | None, argument: str) -> Any:
    value = dict(value or {})
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(value) - known)
    if unknown:
        raise EnvConfigError(
            f"{argument}: unknown key(s) {unknown}; known keys are {sorted(known)}"
        )
    try:
        return cls(**value)
    except (TypeError, ValueError) as error:
        raise EnvConfigError(f"{argument}: {error}") from error


class CompressionEnv(gym.Env[dict[str, np.ndarray], np.int64]):
    """Base class of :class:`LayerRemovalEnv` and :class:`LayerShrinkEnv` (see their docstrings)."""

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["ansi"], "render_fps": 1}

    def __init__(
        self,
        teacher: str | None = "default",
        dataset: str = "mnist",
        *,
        data_dir: str | None = None,
        teacher_arch: str | None = None,
        allow_pickle: bool = False,
        fidelity: str | dict[str, Any] = "fast",
        constraints: dict[str, Any] | None = None,
        evaluator: str | Evaluator = "distill",
        device: str = "auto",
        cache_path: str | None = None,
        inherit_weights: bool = True,
        val_size: int = 5000,
        eval_seed: int = 0,
        max_units: int = 32,
        render_mode: str | None = None,
        train_hint: str | None = None,
    ) -> None:
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise EnvConfigError(
                f"render_mode={render_mode!r}: supported modes are {self.metadata['render_modes']}"
            )
        if dataset not in DATASETS:
            raise EnvConfigError(f"dataset={dataset!r} is unknown; available: {sorted(DATASETS)}")
        if teacher is None:
            raise EnvConfigError(
                f"this environment needs a trained {teacher_arch or 'teacher'} for {dataset}: pass teacher=PATH"
                + (f" (train one with `{train_hint}`)" if train_hint else "")
                + (" and data_dir=DIR" if dataset != "mnist" and data_dir is None else "")
            )
        if (
            dataset != "mnist"
            and data_dir is None
            and not isinstance(evaluator, ProxyEvaluator)
            and evaluator != "proxy"
        ):
            raise EnvConfigError(
                f"dataset={dataset!r} is read from your disk: pass data_dir=DIR (torchvision layout; "
                "load_dataset(name, data_dir, download=True) fetches it)"
            )
        self.render_mode = render_mode
        self.teacher: Teacher = load_teacher(
            teacher, dataset=dataset, arch=teacher_arch, allow_pickle=allow_pickle, device="cpu"
        )
        self.dataset, self.data_dir, self.device = dataset, data_dir, device
        # What a worker needs to load the same teacher (see evaluator_recipe).
        self.teacher_source, self.teacher_arch = teacher, teacher_arch
        self.allow_pickle = allow_pickle
        self.distill_config = self._distill_config(fidelity)
        self.reward_config: RewardConfig = _dataclass_from(RewardConfig, constraints, "constraints")
        self.cache_path, self.inherit_weights = cache_path, inherit_weights
        self.val_size, self.eval_seed = val_size, eval_seed
        self._evaluator: Evaluator | None = evaluator if not isinstance(evaluator, str) else None
        if isinstance(evaluator, str) and evaluator not in ("distill", "proxy"):
            raise EnvConfigError(
                f"evaluator={evaluator!r}: use 'distill' (real distillation) or 'proxy' (cheap stand-in)"
            )
        self._evaluator_kind = evaluator if isinstance(evaluator, str) else "custom"

        self.base = self._base_student()
        self.active_units = tuple(i for i, r in enumerate(self.base.ratios) if r > 0.0)
        if len(self.active_units) > max_units:
            raise EnvConfigError(
                f"the network has {len(self.active_units)} decision units but max_units={max_units}; pass a larger max_units"
            )
        self.max_units = max_units
        self._descriptors = unit_descriptors(self.base.plan().spec)
        self._allowed = self._allowed_actions()
        self.action_space = self._action_space()
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
        self.episodes = 0  # finished episodes, for annealed constraints

    # ---- hooks for subclasses ---------------------------------------------------------------
    def _base_student(self) -> StudentDescription:
        """The network the episode starts from (the teacher, or a stage-1 student)."""
        return StudentDescription(self.teacher.spec, (1.0,) * self.teacher.spec.num_units)

    def _action_space(self) -> spaces.Discrete:
        raise NotImplementedError

    def _ratio(self, action: int) -> float:
        """The width ratio (relative to the starting network) that an action stands for."""
        raise NotImplementedError

    def _allowed_actions(self) -> np.ndarray:
        """Boolean ``(num_steps, n_actions)`` table of the actions each step allows."""
        raise NotImplementedError

    # ---- configuration ------------------------------------------------------------------------
    def _distill_config(self, fidelity: str | dict[str, Any]) -> DistillConfig:
        if isinstance(fidelity, str):
            if fidelity not in FIDELITY_PRESETS:
                raise EnvConfigError(
                    f"fidelity={fidelity!r}: presets are {sorted(FIDELITY_PRESETS)}, or pass a dict"
                )
            return FIDELITY_PRESETS[fidelity]
        return _dataclass_from(DistillConfig, fidelity, "fidelity")

    def evaluator_recipe(self) -> EvaluatorRecipe:
        """The arguments that determine this environment's evaluator, to build it in a worker.

        Raises:
            EnvConfigError: the environment was given an evaluator object, not ``"distill"`` or
                ``"proxy"``.
        """
        if self._evaluator_kind == "custom":
            raise EnvConfigError(
                "this environment was given an evaluator object; a recipe exists only for "
                "evaluator='distill' or 'proxy'"
            )
        return EvaluatorRecipe(
            teacher=self.teacher_source,
            dataset=self.dataset,
            data_dir=self.data_dir,
            teacher_arch=self.teacher_arch,
            allow_pickle=self.allow_pickle,
            kind=self._evaluator_kind,
            distill_config=self.distill_config,
            reward_config=self.reward_config,
            device=self.device,
            inherit_weights=self.inherit_weights,
            val_size=self.val_size,
            eval_seed=self.eval_seed,
            teacher_fingerprint=self.teacher.fingerprint,
        )

    @property
    def evaluator(self) -> Evaluator:
        """The evaluator, built on first use (loads data and computes teacher logits)."""
        if self._evaluator is None:
            recipe = self.evaluator_recipe()
            self._evaluator = recipe.build(self.teacher, recipe.open_cache(self.cache_path))
        return self._evaluator

    def __getstate__(self) -> dict[str, Any]:
        # A built evaluator holds data tensors and a database connection: rebuild it after unpickling.
        state = self.__dict__.copy()
        if self._evaluator_kind != "custom":
            state["_evaluator"] = None
        return state

    # ---- Gymnasium API --------------------------------------------------------------------------
    @property
    def num_steps(self) -> int:
        return len(self.active_units)

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
        # Annealed constraints phase in over policy updates; the env counts them as finished
        # episodes // EPISODES_PER_UPDATE (the paper's m rollouts per update).
        result = self.evaluator.evaluate(
            self.student(), progress=self.episodes // EPISODES_PER_UPDATE
        )
        self.episodes += 1
        self.last_result = result
        return self._observation(), float(result.reward), True, False, self._terminal_info(result)

    @property
    def _keep_action(self) -> int:
        raise NotImplementedError

    def student(self) -> StudentDescription:
        """The student the decisions so far describe (undecided units keep their starting width)."""
        ratios = list(self.base.ratios)
        for unit, ratio in zip(self.active_units, self._decisions, strict=False):
            ratios[unit] = round(self.base.ratios[unit] * ratio, 4)
        return StudentDescription(self.teacher.spec, tuple(ratios))

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
        }

    def render(self) -> str | None:
        if self.render_mode != "ansi":
            return None
        spec = self.base.plan().spec
        lines = [
            f"{self.__class__.__name__} on {self.teacher.arch}/{self.dataset}: step {self._step}/{self.num_steps}"
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
