"""Evaluators: the one narrow door from a student description to its reward.

An evaluator turns a :class:`~n2n_gym.arch.StudentDescription` into an :class:`EvalResult` —
accuracy, size, reward and what went wrong, if anything. The environments only ever talk to the
:class:`Evaluator` protocol, so the expensive back-end can be swapped:

- :class:`DistillationEvaluator` builds the student (inheriting teacher weights), distils it from
  the teacher's cached logits and measures its validation accuracy — the real thing.
- :class:`ProxyEvaluator` computes a deterministic accuracy from the architecture alone, for tests
  and for debugging agents in milliseconds.

Both share the template in :class:`BaseEvaluator`: expected failures (an invalid architecture,
diverged distillation, CUDA out of memory) become a result with ``reward_on_error`` and
``error``/``error_type`` set instead of an exception, and measurements go through an optional
persistent :class:`RewardCache` shared by processes.

The cache stores *measurements* (accuracy, parameters, FLOPs, deterministic errors), not rewards: the
reward is recomputed from them on every call, because an annealed constraint makes the same
student's reward depend on the search's progress, and changing constraints should not retrain
anybody. The reward configuration is therefore deliberately not part of the cache key.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch

from n2n_gym.arch import InvalidArchitecture, NetworkSpec, StudentDescription, StudentPlan
from n2n_gym.distill import (
    DistillationDiverged,
    DistillConfig,
    TeacherTargets,
    accuracy,
    distill,
    module_device,
    prepare_inputs,
    prepare_module,
    resolve_device,
)
from n2n_gym.reward import RewardConfig, compute_reward
from n2n_gym.surgery import build_student

if TYPE_CHECKING:
    from n2n_gym.data import DatasetSplits
    from n2n_gym.teachers import Teacher

__all__ = [
    "EXPECTED_ERRORS",
    "BaseEvaluator",
    "DistillationEvaluator",
    "EvalResult",
    "Evaluator",
    "Measurement",
    "ProxyEvaluator",
    "RewardCache",
    "error_measurement",
    "json_digest",
    "resolve_device",
]

logger = logging.getLogger(__name__)

# Failures that end an episode with reward_on_error instead of crashing a search. Anything else is
# a bug and raises.
EXPECTED_ERRORS: tuple[type[BaseException], ...] = (
    InvalidArchitecture,
    DistillationDiverged,
    torch.OutOfMemoryError,
)
# Out of memory depends on what else runs on the device, so it is not remembered; the others are
# properties of the student and the fidelity, and are cached like accuracies.
_TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (torch.OutOfMemoryError,)

# Bump when the meaning of a cached measurement changes, so old entries are ignored.
_CACHE_FORMAT = 1


@dataclass(frozen=True)
class EvalResult:
    """The outcome of evaluating one student.

    Attributes:
        student_key: ``StudentDescription.key`` of the evaluated decisions.
        accuracy: validation accuracy (a fraction); ``None`` when the student could not be
            evaluated.
        params: the student's parameters; ``None`` for an invalid architecture.
        flops: the student's multiply-accumulates per image; ``None`` for an invalid architecture.
        reward: the reward (``reward_on_error`` on failure).
        reward_parts: :meth:`RewardParts.as_dict` of the reward; empty on failure.
        wall_time: seconds this call took (a cache hit is fast). Not deterministic: keep it out of
            anything compared between seeded runs (e.g. a Gymnasium ``info`` dict).
        cache_hit: whether the measurement came from the cache.
        error: what went wrong, for people; ``None`` on success.
        error_type: the exception class name (e.g. ``"InvalidArchitecture"``); ``None`` on
            success.
    """

    student_key: str
    accuracy: float | None
    params: int | None
    flops: int | None
    reward: float
    reward_parts: dict[str, Any] = field(default_factory=dict)
    wall_time: float = 0.0
    cache_hit: bool = False
    error: str | None = None
    error_type: str | None = None

    @property
    def ok(self) -> bool:
        """Whether the student was evaluated without error."""
        return self.error_type is None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvalResult:
        return cls(**data)


@runtime_checkable
class Evaluator(Protocol):
    """What an environment needs from a back-end that scores students."""

    @property
    def teacher_spec(self) -> NetworkSpec: ...

    @property
    def teacher_accuracy(self) -> float: ...

    @property
    def teacher_params(self) -> int: ...

    @property
    def teacher_flops(self) -> int: ...

    def evaluate(self, student: StudentDescription, progress: int | None = None) -> EvalResult:
        """Score one student; ``progress`` (policy updates so far) drives annealed constraints."""
        ...

    def evaluate_many(
        self, students: Sequence[StudentDescription], progress: int | None = None
    ) -> list[EvalResult]:
        """Score several students, results in the same order."""
        ...


# ---- persistent cache ---------------------------------------------------------------------------


class RewardCache:
    """A persistent map from evaluation keys to measurements, in one SQLite file.

    Safe for several processes at once: the database runs in WAL mode (readers never block the
    writer) with a busy timeout, and every write is one short transaction. A cache object can be
    pickled into worker processes; each process (and a forked child) opens its own connection.
    ``path=":memory:"`` gives a private in-process cache.

    Args:
        path: the database file (created with its folder when missing), or ``":memory:"``.
        timeout: seconds to wait for another process's write lock before failing.
    """

    def __init__(self, path: str | Path, timeout: float = 60.0) -> None:
        self.path = str(path)
        self.timeout = timeout
        self._lock = threading.Lock()
        self._connection: sqlite3.Connection | None = None
        self._pid = -1
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._connect()

    def _connect(self) -> sqlite3.Connection:
        if self._connection is not None and self._pid == os.getpid():
            return self._connection
        # A connection inherited through fork must not be used (SQLite forbids it): open a new one.
        connection = sqlite3.connect(
            self.path, timeout=self.timeout, isolation_level=None, check_same_thread=False
        )
        connection.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")
        if self.path != ":memory:":
            connection.execute("PRAGMA journal_mode = WAL")
            # WAL + NORMAL is durable against process crashes; only a power cut may lose the
            # latest entries, which a cache can afford.
            connection.execute("PRAGMA synchronous = NORMAL")
        connection.execute(
            "CREATE TABLE IF NOT EXISTS measurements "
            "(key TEXT PRIMARY KEY, value TEXT NOT NULL, created REAL NOT NULL)"
        )
        self._connection, self._pid = connection, os.getpid()
        return connection

    def get(self, key: str) -> dict[str, Any] | None:
        """The stored value for ``key``, or ``None``."""
        with self._lock:
            row = (
                self._connect()
                .execute("SELECT value FROM measurements WHERE key = ?", (key,))
                .fetchone()
            )
        return None if row is None else json.loads(row[0])

    def put(self, key: str, value: dict[str, Any]) -> None:
        """Store a JSON-able ``value`` under ``key`` (replacing an older one)."""
        text = json.dumps(value, sort_keys=True)
        with self._lock:
            self._connect().execute(
                "INSERT OR REPLACE INTO measurements (key, value, created) VALUES (?, ?, ?)",
                (key, text, time.time()),
            )

    def __len__(self) -> int:
        with self._lock:
            return self._connect().execute("SELECT COUNT(*) FROM measurements").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            if self._connection is not None and self._pid == os.getpid():
                self._connection.close()
            self._connection = None

    def __enter__(self) -> RewardCache:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        if self.path == ":memory:":
            raise TypeError("an in-memory RewardCache cannot be shared with other processes")
        return {"path": self.path, "timeout": self.timeout}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"], state["timeout"])

    def __repr__(self) -> str:
        return f"RewardCache({self.path!r})"


def json_digest(data: Any) -> str:
    """A stable SHA-256 of JSON-able ``data`` (key order does not matter)."""
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


# ---- shared evaluation template -----------------------------------------------------------------


@dataclass(frozen=True)
class Measurement:
    """What the expensive part found out about a student; what the cache stores."""

    accuracy: float | None
    params: int | None
    flops: int | None
    error: str | None = None
    error_type: str | None = None


class BaseEvaluator:
    """The evaluation template: plan, cache look-up, measure, reward; expected errors as results.

    Subclasses provide the teacher facts, :meth:`_measure` and :meth:`_cache_context` (everything
    besides the student that determines a measurement).
    """

    reward_config: RewardConfig
    cache: RewardCache | None

    @property
    def teacher_spec(self) -> NetworkSpec:
        raise NotImplementedError

    @property
    def teacher_accuracy(self) -> float:
        raise NotImplementedError

    @property
    def teacher_params(self) -> int:
        return self.teacher_spec.params

    @property
    def teacher_flops(self) -> int:
        return self.teacher_spec.flops

    def _measure(self, plan: StudentPlan, student: StudentDescription) -> Measurement:
        raise NotImplementedError

    def _cache_context(self) -> dict[str, Any]:
        raise NotImplementedError

    def evaluate(self, student: StudentDescription, progress: int | None = None) -> EvalResult:
        """Score one student.

        Args:
            student: decisions on this evaluator's teacher.
            progress: policy updates completed so far (for annealed constraints).

        Returns:
            The result; an invalid architecture, diverged distillation or CUDA out-of-memory gives
            ``reward_on_error`` with ``error`` and ``error_type`` set.

        Raises:
            ValueError: the student was made for a different teacher architecture.
        """
        if student.teacher.key != self.teacher_spec.key:
            raise ValueError(
                f"student {student.key} was made for teacher architecture "
                f"'{student.teacher.name}', not this evaluator's '{self.teacher_spec.name}'"
            )
        start = time.perf_counter()
        try:
            plan = student.plan()
        except InvalidArchitecture as error:
            measurement = error_measurement(error, None)
            return self._result(student, measurement, progress, start, cache_hit=False)
        key = self._cache_key(plan) if self.cache is not None else None
        if key is not None and (stored := self.cache.get(key)) is not None:
            return self._result(student, Measurement(**stored), progress, start, cache_hit=True)
        try:
            measurement = self._measure(plan, student)
        except EXPECTED_ERRORS as error:
            logger.info("student %s failed: %s: %s", student.key, type(error).__name__, error)
            measurement = error_measurement(error, plan)
            if isinstance(error, _TRANSIENT_ERRORS):
                return self._result(student, measurement, progress, start, cache_hit=False)
        if key is not None:
            self.cache.put(key, asdict(measurement))
        return self._result(student, measurement, progress, start, cache_hit=False)

    def evaluate_many(
        self, students: Iterable[StudentDescription], progress: int | None = None
    ) -> list[EvalResult]:
        """Score several students one after the other; results in the same order.

        Args:
            students: decisions on this evaluator's teacher.
            progress: policy updates completed so far (for annealed constraints).
        """
        return [self.evaluate(student, progress) for student in students]

    def _cache_key(self, plan: StudentPlan) -> str:
        # The plan, not the ratios, identifies a student: ratios that round to the same widths
        # build the same network with the same inherited weights.
        student = {
            "spec": plan.spec.key,
            "origins": list(plan.origins),
            "kept": list(plan.kept_widths),
        }
        return json_digest({"format": _CACHE_FORMAT, "student": student, **self._cache_context()})

    def _result(
        self,
        student: StudentDescription,
        measurement: Measurement,
        progress: int | None,
        start: float,
        *,
        cache_hit: bool,
    ) -> EvalResult:
        if measurement.error_type is not None or measurement.accuracy is None:
            reward, parts = self.reward_config.reward_on_error, {}
        else:
            reward_parts = compute_reward(
                measurement.accuracy,
                self.teacher_accuracy,
                measurement.params,
                self.teacher_params,
                measurement.flops,
                self.reward_config,
                progress,
            )
            reward, parts = reward_parts.reward, reward_parts.as_dict()
        return EvalResult(
            student_key=student.key,
            accuracy=measurement.accuracy,
            params=measurement.params,
            flops=measurement.flops,
            reward=reward,
            reward_parts=parts,
            wall_time=time.perf_counter() - start,
            cache_hit=cache_hit,
            error=measurement.error,
            error_type=measurement.error_type,
        )


def error_measurement(error: BaseException, plan: StudentPlan | None) -> Measurement:
    """The measurement of a student that failed with ``error`` (sizes known once it has a plan)."""
    return Measurement(
        accuracy=None,
        params=plan.spec.params if plan else None,
        flops=plan.spec.flops if plan else None,
        error=str(error) or repr(error),
        error_type=type(error).__name__,
    )


# ---- the real thing -----------------------------------------------------------------------------


class DistillationEvaluator(BaseEvaluator):
    """Scores students by distilling them from the teacher and measuring validation accuracy.

    The teacher's accuracy is measured here, on the same validation images and device as the
    students, so the reward's accuracy ratio compares like with like. The transfer images, their
    teacher logits and the validation images are prepared once, lazily, on the evaluator's device
    and reused for every student.

    Args:
        teacher: the trained teacher (its ``module`` is not modified).
        data: the dataset splits; students train on a subset of ``train`` and are scored on
            ``val``.
        distill_config: the fidelity of one reward.
        reward_config: constraints and the error reward.
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``, ``"cuda:1"`` ...
        inherit_weights: students start from the teacher's weights where shapes allow; otherwise
            they are re-initialised as in the paper.
        cache: persistent measurement cache shared by runs and processes; ``None``: no caching.
        seed: seeds the re-initialised layers of each student.
    """

    def __init__(
        self,
        teacher: Teacher,
        data: DatasetSplits,
        distill_config: DistillConfig | None = None,
        reward_config: RewardConfig | None = None,
        *,
        device: str | torch.device = "auto",
        inherit_weights: bool = True,
        cache: RewardCache | None = None,
        seed: int = 0,
    ) -> None:
        self.teacher = teacher
        self.data = data
        self.distill_config = distill_config or DistillConfig()
        self.reward_config = reward_config or RewardConfig()
        self.device = resolve_device(device)
        self.inherit_weights = inherit_weights
        self.cache = cache
        self.seed = seed
        if tuple(data.input_shape) != tuple(teacher.spec.input_shape) or (
            data.num_classes != teacher.spec.num_classes
        ):
            raise ValueError(
                f"teacher '{teacher.spec.name}' expects {teacher.spec.input_shape} images and "
                f"{teacher.spec.num_classes} classes, but data set '{data.name}' has "
                f"{data.input_shape} and {data.num_classes}"
            )
        # Surgery copies weights into students built on the CPU, so it reads a CPU teacher.
        self._surgery_teacher = (
            teacher.module
            if module_device(teacher.module).type == "cpu"
            else copy.deepcopy(teacher.module).cpu()
        )
        self._device_teacher: torch.nn.Module | None = None
        self._targets: TeacherTargets | None = None
        self._eval_set: tuple[torch.Tensor, torch.Tensor] | None = None
        self._teacher_accuracy: float | None = None
        self._data_fingerprint: str | None = None

    @property
    def teacher_spec(self) -> NetworkSpec:
        return self.teacher.spec

    @property
    def teacher_accuracy(self) -> float:
        """The teacher's accuracy on the evaluator's validation images (measured once)."""
        if self._teacher_accuracy is None:
            x, y = self.eval_set
            self._teacher_accuracy = accuracy(
                self._teacher_on_device(), x, y, self.distill_config.eval_batch_size
            )
            logger.info(
                "teacher accuracy on %d validation images: %.4f", len(y), self._teacher_accuracy
            )
        return self._teacher_accuracy

    @property
    def eval_set(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The validation images and labels every student is scored on, on the device."""
        if self._eval_set is None:
            x, y = self.data.split("val")
            size = self.distill_config.eval_size or len(y)
            if size > len(y):
                raise ValueError(
                    f"DistillConfig.eval_size={size} exceeds the {len(y)} validation images of "
                    f"'{self.data.name}'; lower it or load the data with a larger val_size"
                )
            self._eval_set = (prepare_inputs(x[:size], self.device), y[:size].to(self.device))
        return self._eval_set

    @property
    def targets(self) -> TeacherTargets:
        """The transfer images and the teacher's logits for them (computed once)."""
        if self._targets is None:
            x, y = self.data.split("train")
            self._targets = TeacherTargets.compute(
                self._teacher_on_device(), x, y, self.distill_config, self.device
            )
        return self._targets

    def _teacher_on_device(self) -> torch.nn.Module:
        if self._device_teacher is None:
            module = prepare_module(copy.deepcopy(self._surgery_teacher), self.device)
            self._device_teacher = module.eval().requires_grad_(False)
        return self._device_teacher

    def build(self, student: StudentDescription) -> tuple[StudentPlan, torch.nn.Module]:
        """The untrained student module, as this evaluator builds it (weights inherited or not)."""
        return build_student(
            self._surgery_teacher, student, inherit_weights=self.inherit_weights, seed=self.seed
        )

    def train(self, student: StudentDescription) -> tuple[StudentPlan, torch.nn.Module, float]:
        """Build and distil ``student`` exactly as a reward does; returns it with its accuracy.

        A search keeps only measurements; this re-creates the trained network of one of them (on
        CPU, bitwise the same as during the search).

        Raises:
            InvalidArchitecture, DistillationDiverged, torch.OutOfMemoryError: see
                :data:`EXPECTED_ERRORS`.
        """
        targets = self.targets
        x, y = self.eval_set
        plan, module = self.build(student)
        try:
            stats = distill(
                module,
                targets.logits,
                targets.inputs,
                self.distill_config,
                self.device,
                labels=targets.labels,
            )
            measured = accuracy(module, x, y, self.distill_config.eval_batch_size)
        except torch.OutOfMemoryError:
            del module
            torch.cuda.empty_cache()
            raise
        logger.debug(
            "student %s: %d steps in %.2f s, loss %.4g -> %.4g, accuracy %.4f",
            student.key,
            stats.steps,
            stats.wall_time,
            stats.first_loss,
            stats.final_loss,
            measured,
        )
        return plan, module, measured

    def _measure(self, plan: StudentPlan, student: StudentDescription) -> Measurement:
        _, _, measured = self.train(student)
        return Measurement(accuracy=measured, params=plan.spec.params, flops=plan.spec.flops)

    def _cache_context(self) -> dict[str, Any]:
        return {
            "kind": "distillation",
            "teacher": self.teacher.fingerprint,
            "data": self._fingerprint_data(),
            "distill": self.distill_config.to_dict(),
            "inherit_weights": self.inherit_weights,
            "seed": self.seed,
            # bf16 on CUDA and fp32 on CPU give (slightly) different accuracies.
            "device": self.device.type,
        }

    def _fingerprint_data(self) -> str:
        """A hash of exactly the images and labels a reward depends on."""
        if self._data_fingerprint is None:
            hasher = hashlib.blake2b(digest_size=16)
            hasher.update(self.data.name.encode())
            targets, (x, y) = self.targets, self.eval_set
            for tensor in (targets.inputs, targets.labels, x, y):
                hasher.update(tensor.contiguous().cpu().numpy().tobytes())
            self._data_fingerprint = hasher.hexdigest()
        return self._data_fingerprint


# ---- the cheap stand-in -------------------------------------------------------------------------


class ProxyEvaluator(BaseEvaluator):
    """A stand-in for :class:`DistillationEvaluator` that needs no data and trains nothing.

    The accuracy is a smooth, deterministic function of the student's architecture: with ``p``,
    ``f`` and ``d`` the fractions of the teacher's parameters, FLOPs and decision units kept,
    capacity ``x = p^0.6 · f^0.2 · d^0.2`` and
    ``accuracy = chance + (teacher_accuracy − chance) · (1 − e^(−8x)) / (1 − e^(−8))``.
    Accuracy falls slowly for the first savings and steeply for tiny students, so the paper's
    reward peaks at an intermediate size (around a quarter of the teacher's parameters) as it does
    for real distillation, and fewer parameters never give a higher accuracy.

    Args:
        teacher_spec: the teacher's architecture.
        teacher_accuracy: the accuracy the teacher is assumed to have.
        reward_config: constraints and the error reward.
        cache: optional measurement cache (it makes no difference to speed; useful to test
            caching cheaply).
    """

    _SHARPNESS = 8.0

    def __init__(
        self,
        teacher_spec: NetworkSpec,
        teacher_accuracy: float = 0.99,
        reward_config: RewardConfig | None = None,
        *,
        cache: RewardCache | None = None,
    ) -> None:
        if not 0.0 < teacher_accuracy <= 1.0:
            raise ValueError(f"teacher_accuracy={teacher_accuracy!r} must be in (0, 1]")
        self._teacher_spec = teacher_spec
        self._teacher_accuracy = float(teacher_accuracy)
        self.reward_config = reward_config or RewardConfig()
        self.cache = cache

    @property
    def teacher_spec(self) -> NetworkSpec:
        return self._teacher_spec

    @property
    def teacher_accuracy(self) -> float:
        return self._teacher_accuracy

    def _measure(self, plan: StudentPlan, student: StudentDescription) -> Measurement:
        spec = plan.spec
        kept_params = spec.params / self.teacher_params
        kept_flops = spec.flops / self.teacher_flops
        kept_units = spec.num_units / self.teacher_spec.num_units
        capacity = kept_params**0.6 * kept_flops**0.2 * kept_units**0.2
        chance = 1.0 / spec.num_classes
        quality = -math.expm1(-self._SHARPNESS * capacity) / -math.expm1(-self._SHARPNESS)
        value = chance + (self.teacher_accuracy - chance) * min(quality, 1.0)
        return Measurement(accuracy=value, params=spec.params, flops=spec.flops)

    def _cache_context(self) -> dict[str, Any]:
        return {
            "kind": "proxy",
            "teacher": self.teacher_spec.key,
            "teacher_accuracy": self.teacher_accuracy,
        }
