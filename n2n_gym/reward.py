"""The N2N reward and its constraints, as pure functions of numbers (no torch).

The paper's reward for a student is ``R = R_c · R_a`` with the compression ``C = 1 − p_s / p_t``
(parameters of student and teacher), ``R_c = C(2 − C)`` and ``R_a = acc_s / acc_t``. ``R_c`` rises
steeply for the first savings and flattens towards 1, so the accuracy term decides between students
that are already small. Optional constraints (maximum parameters or FLOPs, minimum accuracy) turn a
violating student's reward into −1, either at once (``"hard"``) or phased in over the first policy
updates (``"annealed"``), as the original implementation did.

``objective="accuracy"`` is AMC's resource-constrained mode instead: the size is fixed by the
constraints and the reward is the accuracy term alone, so a student below the limit earns
nothing for being smaller still.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

__all__ = ["VIOLATION_REWARD", "RewardConfig", "RewardParts", "compute_reward"]

ConstraintMode = Literal["hard", "annealed"]
CONSTRAINT_MODES: tuple[str, ...] = ("hard", "annealed")
Objective = Literal["n2n", "accuracy"]
OBJECTIVES: tuple[str, ...] = ("n2n", "accuracy")

# What a violating student earns once a constraint is fully enforced: the paper's -1, the same value
# an invalid architecture gets, so a policy learns that both are equally useless.
VIOLATION_REWARD = -1.0


@dataclass(frozen=True)
class RewardConfig:
    """How a student's numbers become its reward.

    Attributes:
        max_params: students with more parameters violate the size constraint; ``None``: no limit.
        max_flops: students with more multiply-accumulates per image violate; ``None``: no limit.
        min_accuracy: students below this accuracy (a fraction in (0, 1]) violate; ``None``: no limit.
        constraint_mode: ``"hard"``: a violation gives reward −1. ``"annealed"``: the penalty is
            phased in over the first ``anneal_steps`` policy updates (see :func:`compute_reward`).
        anneal_steps: policy updates over which an annealed penalty reaches full strength.
        reward_on_error: reward of a student that cannot be evaluated (invalid architecture,
            diverged distillation, out of memory).
        objective: ``"n2n"``: the paper's ``C(2 − C) · R_a``. ``"accuracy"``: ``R_a`` alone,
            for a size fixed by ``max_params`` or ``max_flops`` (AMC's resource-constrained
            search: within the limit, accuracy is all that counts).
    """

    max_params: int | None = None
    max_flops: int | None = None
    min_accuracy: float | None = None
    constraint_mode: ConstraintMode = "hard"
    anneal_steps: int = 15
    reward_on_error: float = -1.0
    objective: Objective = "n2n"

    def __post_init__(self) -> None:
        for name in ("max_params", "max_flops"):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 1
            ):
                raise ValueError(
                    f"RewardConfig.{name}={value!r} must be a positive integer or None (no limit)"
                )
        if self.min_accuracy is not None and (
            isinstance(self.min_accuracy, bool)
            or not isinstance(self.min_accuracy, int | float)
            or not 0.0 < self.min_accuracy <= 1.0
        ):
            raise ValueError(
                f"RewardConfig.min_accuracy={self.min_accuracy!r} must be a fraction in (0, 1] "
                "(e.g. 0.98 for 98 %) or None"
            )
        if self.constraint_mode not in CONSTRAINT_MODES:
            raise ValueError(
                f"RewardConfig.constraint_mode={self.constraint_mode!r} must be one of "
                f"{', '.join(CONSTRAINT_MODES)}"
            )
        if self.objective not in OBJECTIVES:
            raise ValueError(
                f"RewardConfig.objective={self.objective!r} must be one of {', '.join(OBJECTIVES)}"
            )
        if self.objective == "accuracy" and self.max_params is None and self.max_flops is None:
            raise ValueError(
                "RewardConfig.objective='accuracy' rewards accuracy alone, so it needs the size "
                "fixed: give max_params or max_flops too"
            )
        if (
            isinstance(self.anneal_steps, bool)
            or not isinstance(self.anneal_steps, int)
            or self.anneal_steps < 1
        ):
            raise ValueError(
                f"RewardConfig.anneal_steps={self.anneal_steps!r} must be a positive integer "
                "(policy updates)"
            )
        if isinstance(self.reward_on_error, bool) or not (
            isinstance(self.reward_on_error, int | float) and math.isfinite(self.reward_on_error)
        ):
            raise ValueError(
                f"RewardConfig.reward_on_error={self.reward_on_error!r} must be a finite number"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RewardConfig:
        return cls(**data)


@dataclass(frozen=True)
class RewardParts:
    """A reward and the named numbers it was made from.

    Attributes:
        reward: the final reward.
        compression: ``C = 1 − params / teacher_params``.
        compression_term: ``R_c = C(2 − C)``.
        accuracy_term: ``R_a = accuracy / teacher_accuracy``.
        penalty: how much the constraints took off: ``R_c · R_a − reward`` (0 without violations).
        violated: names of the violated constraints (``"max_params"``, ``"max_flops"``,
            ``"min_accuracy"``), in that order.
    """

    reward: float
    compression: float
    compression_term: float
    accuracy_term: float
    penalty: float = 0.0
    violated: tuple[str, ...] = field(default=())

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-able values, e.g. for ``info["rewards"]``."""
        data = asdict(self)
        data["violated"] = list(self.violated)
        return data


def _check_fraction(name: str, value: float) -> None:
    if not (isinstance(value, int | float) and 0.0 <= value <= 1.0):
        raise ValueError(f"{name}={value!r} must be a fraction in [0, 1]")


def compute_reward(
    accuracy: float,
    teacher_accuracy: float,
    params: int,
    teacher_params: int,
    flops: int,
    config: RewardConfig | None = None,
    progress: int | None = None,
) -> RewardParts:
    """The N2N reward ``R = C(2 − C) · accuracy / teacher_accuracy`` with optional constraints
    (``R = accuracy / teacher_accuracy`` under ``objective="accuracy"``).

    A student that violates a constraint is penalised towards −1 (:data:`VIOLATION_REWARD`):

    - ``"hard"``: ``reward = −1``.
    - ``"annealed"``: with ``w = min(progress, anneal_steps) / anneal_steps``,
      ``reward = (1 − w) · R + w · (−1)``; the penalty grows linearly from nothing at the first
      policy update to the full −1 after ``anneal_steps`` updates. ``progress=None`` means the
      search is past annealing (``w = 1``), so a result looks the same as in hard mode.

    Args:
        accuracy: the student's accuracy, a fraction in [0, 1].
        teacher_accuracy: the teacher's accuracy on the same images, in (0, 1].
        params: the student's parameter count.
        teacher_params: the teacher's parameter count (positive).
        flops: the student's multiply-accumulates per image (for ``max_flops``).
        config: constraints and mode; ``None`` means no constraints.
        progress: policy updates completed so far, for the annealed mode.

    Returns:
        The reward and its parts.

    Raises:
        ValueError: for accuracies outside [0, 1], a zero teacher accuracy, negative counts or a
            negative ``progress``.
    """
    config = config or RewardConfig()
    _check_fraction("accuracy", accuracy)
    _check_fraction("teacher_accuracy", teacher_accuracy)
    if teacher_accuracy == 0.0:
        raise ValueError("teacher_accuracy is 0: the accuracy ratio is undefined")
    if teacher_params < 1 or params < 0 or flops < 0:
        raise ValueError(
            f"parameter/FLOP counts must be non-negative and teacher_params positive; got "
            f"params={params}, teacher_params={teacher_params}, flops={flops}"
        )
    if progress is not None and progress < 0:
        raise ValueError(f"progress={progress!r} must be a non-negative number of policy updates")

    compression = 1.0 - params / teacher_params
    compression_term = compression * (2.0 - compression)
    accuracy_term = accuracy / teacher_accuracy
    unconstrained = (
        accuracy_term if config.objective == "accuracy" else compression_term * accuracy_term
    )

    violated = tuple(
        name
        for name, broken in (
            ("max_params", config.max_params is not None and params > config.max_params),
            ("max_flops", config.max_flops is not None and flops > config.max_flops),
            ("min_accuracy", config.min_accuracy is not None and accuracy < config.min_accuracy),
        )
        if broken
    )
    reward = unconstrained
    if violated:
        if config.constraint_mode == "hard" or progress is None:
            weight = 1.0
        else:
            weight = min(progress, config.anneal_steps) / config.anneal_steps
        reward = (1.0 - weight) * unconstrained + weight * VIOLATION_REWARD
    return RewardParts(
        reward=reward,
        compression=compression,
        compression_term=compression_term,
        accuracy_term=accuracy_term,
        penalty=unconstrained - reward,
        violated=violated,
    )
