"""Measurers: the one narrow door from a student to what it measures.

A measurer turns a student into a :class:`Measurement` — validation accuracy, parameters, FLOPs,
or the expected error it failed with. It knows nothing of rewards or caches: the
:class:`~n2n_gym.evaluation.Evaluator` adds those. Every source of measurements has this shape:

- :class:`DistillationMeasurer` builds the student (inheriting teacher weights), distils it from
  the teacher's cached logits and measures its validation accuracy — the real thing;
- :class:`ProxyMeasurer` computes a deterministic accuracy from the architecture alone, for tests
  and for debugging agents in milliseconds;
- the back-ends in :mod:`n2n_gym.backends` run a task's measurer on worker processes or Ray
  actors and are measurers themselves.

Expected failures (:data:`EXPECTED_ERRORS`) become error measurements in :meth:`Measurer.measure_many`;
anything else is a bug and raises.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

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
    transfer_set,
)
from n2n_gym.surgery import build_student

if TYPE_CHECKING:
    from n2n_gym.data import DatasetSplits
    from n2n_gym.teachers import Teacher

__all__ = [
    "EXPECTED_ERRORS",
    "TRANSIENT_ERRORS",
    "DistillationMeasurer",
    "Gate",
    "Measurement",
    "Measurer",
    "ProxyMeasurer",
    "WorkerDied",
    "error_measurement",
]

logger = logging.getLogger(__name__)


class WorkerDied(RuntimeError):
    """An evaluation worker ended while measuring a student, and so did the retry."""


# Failures that end an episode with reward_on_error instead of crashing a search.
EXPECTED_ERRORS: tuple[type[BaseException], ...] = (
    InvalidArchitecture,
    DistillationDiverged,
    torch.OutOfMemoryError,
    WorkerDied,
)
# Out of memory and dead workers depend on what else runs on the machine, so they are not
# remembered; the others are properties of the student and the fidelity, and are cached.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (torch.OutOfMemoryError, WorkerDied)
_TRANSIENT_NAMES = frozenset(cls.__name__ for cls in TRANSIENT_ERRORS)


@dataclass(frozen=True)
class Measurement:
    """What the expensive part found out about a student; what the cache stores.

    Attributes:
        accuracy: validation accuracy (a fraction); ``None`` when the student failed.
        params: the student's parameters; ``None`` for an invalid architecture.
        flops: its multiply-accumulates per image; ``None`` for an invalid architecture.
        error: what went wrong, for people; ``None`` on success.
        error_type: the exception class name (e.g. ``"InvalidArchitecture"``).
        seconds: wall-clock seconds the measurement cost (building, distilling, scoring; not the
            extra validations of a learning curve); ``None`` when not measured.
        curve: the learning curve, ``(images, seconds, accuracy)`` at evenly spaced points of the
            transfer budget, the last one being the measurement itself; empty unless asked for
            (``DistillationMeasurer(curve_points=)``).
        halted_at: the fraction of the training budget at which successive halving stopped the
            student (the accuracy is the one measured there); ``None``: the full budget.
    """

    accuracy: float | None
    params: int | None
    flops: int | None
    error: str | None = None
    error_type: str | None = None
    seconds: float | None = None
    curve: tuple[tuple[int, float, float], ...] = ()
    halted_at: float | None = None

    @property
    def ok(self) -> bool:
        return self.error_type is None and self.accuracy is not None

    @property
    def transient(self) -> bool:
        """A failure that says nothing about the student (out of memory, a dead worker)."""
        return self.error_type in _TRANSIENT_NAMES

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["curve"] = [list(point) for point in self.curve]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Measurement:
        data = dict(data)
        data["curve"] = tuple(
            (int(images), float(seconds), float(acc))
            for images, seconds, acc in data.get("curve", ())
        )
        return cls(**data)


def error_measurement(error: BaseException, plan: StudentPlan | None) -> Measurement:
    """The measurement of a student that failed with ``error`` (sizes known once it has a plan)."""
    return Measurement(
        accuracy=None,
        params=plan.spec.params if plan else None,
        flops=plan.spec.flops if plan else None,
        error=str(error) or repr(error),
        error_type=type(error).__name__,
    )


# A gate of successive halving: called at each rung with its index and the partial measurement
# there; returns whether the student continues.
Gate = Callable[[int, Measurement], bool]


class Measurer(ABC):
    """Turns students of one teacher into measurements.

    Subclasses provide the teacher facts, :meth:`context` and :meth:`measure`; a measurer that can
    measure several students at once (a back-end with several workers) overrides
    :meth:`measure_many`, one that can stop a measurement part-way (successive halving) sets
    :attr:`supports_halving` and overrides :meth:`measure_halving`.
    """

    supports_halving = False

    @property
    @abstractmethod
    def teacher_spec(self) -> NetworkSpec:
        """The teacher's architecture; students must be made for it."""

    @property
    @abstractmethod
    def teacher_accuracy(self) -> float:
        """The teacher's validation accuracy, measured the way students are."""

    @abstractmethod
    def context(self) -> dict[str, Any]:
        """Everything besides the student that determines a measurement (part of the cache key)."""

    @abstractmethod
    def measure(self, plan: StudentPlan, student: StudentDescription) -> Measurement:
        """Measure one student.

        Raises:
            InvalidArchitecture, DistillationDiverged, torch.OutOfMemoryError, WorkerDied: see
                :data:`EXPECTED_ERRORS`.
        """

    def measure_many(
        self, items: Sequence[tuple[StudentPlan, StudentDescription]]
    ) -> list[Measurement]:
        """Measure several students; expected errors become error measurements; same order."""
        return [self.measure_safely(plan, student) for plan, student in items]

    def measure_halving(
        self,
        plan: StudentPlan,
        student: StudentDescription,
        rungs: Sequence[float],
        gate: Gate,
    ) -> Measurement:
        """Measure one student, asking ``gate`` at each rung (a fraction of the budget) whether
        to go on; a student it stops gets the partial measurement, with ``halted_at`` set."""
        raise NotImplementedError(f"{type(self).__name__} cannot stop a measurement part-way")

    def measure_safely(
        self,
        plan: StudentPlan,
        student: StudentDescription,
        halving: tuple[Sequence[float], Gate] | None = None,
    ) -> Measurement:
        """:meth:`measure` (:meth:`measure_halving` with ``(rungs, gate)``), with an expected
        error returned as an error measurement."""
        try:
            if halving is not None:
                return self.measure_halving(plan, student, *halving)
            return self.measure(plan, student)
        except EXPECTED_ERRORS as error:
            logger.info("student %s failed: %s: %s", student.key, type(error).__name__, error)
            return error_measurement(error, plan)

    def close(self) -> None:  # noqa: B027 (optional hook: in-process measurers hold nothing)
        """Release workers or files (nothing for in-process measurers)."""


class _Halted(Exception):
    """Successive halving stopped a distillation at a rung."""

    def __init__(self, measurement: Measurement) -> None:
        super().__init__("halted")
        self.measurement = measurement


# ---- the real thing -----------------------------------------------------------------------------


class DistillationMeasurer(Measurer):
    """Measures students by distilling them from the teacher and scoring validation accuracy.

    The teacher's accuracy is measured here, on the same validation images and device as the
    students, so the reward's accuracy ratio compares like with like. The transfer images, their
    teacher logits and the validation images are prepared once, lazily, on the measurer's device
    and reused for every student.

    Args:
        teacher: the trained teacher (its ``module`` is not modified).
        data: the dataset splits; students train on a subset of ``train`` and are scored on
            ``val``.
        distill_config: the fidelity of one measurement.
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``, ``"cuda:1"`` ...
        inherit_weights: students start from the teacher's weights where shapes allow; otherwise
            they are re-initialised as in the paper.
        seed: seeds the re-initialised layers of each student.
        curve_points: validation accuracy is also measured at this many evenly spaced points of
            the transfer budget (the last is the measurement) and recorded as
            :attr:`Measurement.curve`; 1: only at the end. The extra validations change neither
            the training nor the final accuracy, and are not counted in ``seconds``.
    """

    def __init__(
        self,
        teacher: Teacher,
        data: DatasetSplits,
        distill_config: DistillConfig | None = None,
        *,
        device: str | torch.device = "auto",
        inherit_weights: bool = True,
        seed: int = 0,
        curve_points: int = 1,
    ) -> None:
        if isinstance(curve_points, bool) or not isinstance(curve_points, int) or curve_points < 1:
            raise ValueError(f"curve_points={curve_points!r} must be a positive integer")
        self.curve_points = curve_points
        self.teacher = teacher
        self.data = data
        self.distill_config = distill_config or DistillConfig()
        self.device = resolve_device(device)
        self.inherit_weights = inherit_weights
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
        """The teacher's accuracy on the measurer's validation images (measured once)."""
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
                    f"fidelity eval_size={size} exceeds the {len(y)} validation images of "
                    f"'{self.data.name}'; lower eval_size or raise val_size"
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
        """The untrained student module, as this measurer builds it (weights inherited or not)."""
        return build_student(
            self._surgery_teacher, student, inherit_weights=self.inherit_weights, seed=self.seed
        )

    def train(self, student: StudentDescription) -> tuple[StudentPlan, torch.nn.Module, float]:
        """Build and distil ``student`` exactly as a measurement does; returns it with its accuracy.

        A search keeps only measurements; this re-creates the trained network of one of them (on
        CPU, bitwise the same as during the search).

        Raises:
            InvalidArchitecture, DistillationDiverged, torch.OutOfMemoryError: see
                :data:`EXPECTED_ERRORS`.
        """
        plan, module, measured, _ = self._train(student)
        return plan, module, measured

    supports_halving = True

    def measure_halving(
        self,
        plan: StudentPlan,
        student: StudentDescription,
        rungs: Sequence[float],
        gate: Gate,
    ) -> Measurement:
        return self._train(student, rungs, gate)[3]

    def _train(
        self,
        student: StudentDescription,
        rungs: Sequence[float] = (),
        gate: Gate | None = None,
    ) -> tuple[StudentPlan, torch.nn.Module, float, Measurement]:
        targets = self.targets
        x, y = self.eval_set
        config = self.distill_config
        start = time.perf_counter()
        plan, module = self.build(student)
        steps_per_epoch = math.ceil(len(targets.inputs) / config.batch_size)
        total = config.epochs * steps_per_epoch
        # The last point is the measurement itself; tiny budgets get fewer distinct points.
        probes = {round(total * k / self.curve_points) for k in range(1, self.curve_points)}
        probes &= set(range(1, total))
        curve: list[tuple[int, float, float]] = []
        probing = 0.0  # seconds spent on the curve's extra validations

        # Rung checks are part of the cost (they decide); the curve's validations are not.
        rung_at = {round(total * fraction): i for i, fraction in enumerate(rungs)}
        rung_at = {step: i for step, i in rung_at.items() if 0 < step < total}

        def probe(steps: int, images: int) -> None:
            nonlocal probing
            if steps in probes:
                began = time.perf_counter()
                value = accuracy(module, x, y, config.eval_batch_size)
                curve.append((images, began - start - probing, value))
                probing += time.perf_counter() - began
            if steps in rung_at and gate is not None:
                rung = rung_at[steps]
                partial = Measurement(
                    accuracy=accuracy(module, x, y, config.eval_batch_size),
                    params=plan.spec.params,
                    flops=plan.spec.flops,
                    seconds=time.perf_counter() - start - probing,
                    curve=tuple(curve),
                    halted_at=rungs[rung],
                )
                if not gate(rung, partial):
                    raise _Halted(partial)

        try:
            stats = distill(
                module,
                targets.logits,
                targets.inputs,
                config,
                self.device,
                labels=targets.labels,
                on_step=probe if probes or rung_at else None,
            )
            measured = accuracy(module, x, y, config.eval_batch_size)
        except _Halted as halted:
            return plan, module, halted.measurement.accuracy, halted.measurement
        except torch.OutOfMemoryError:
            del module
            torch.cuda.empty_cache()
            raise
        seconds = time.perf_counter() - start - probing
        if self.curve_points > 1:
            curve.append((stats.images, seconds, measured))
        measurement = Measurement(
            accuracy=measured,
            params=plan.spec.params,
            flops=plan.spec.flops,
            seconds=seconds,
            curve=tuple(curve),
        )
        logger.debug(
            "student %s: %d steps in %.2f s, loss %.4g -> %.4g, accuracy %.4f",
            student.key,
            stats.steps,
            stats.wall_time,
            stats.first_loss,
            stats.final_loss,
            measured,
        )
        return plan, module, measured, measurement

    def measure(self, plan: StudentPlan, student: StudentDescription) -> Measurement:
        return self._train(student)[3]

    def context(self) -> dict[str, Any]:
        return {
            "kind": "distillation",
            "teacher": self.teacher.fingerprint,
            "data": self._fingerprint_data(),
            "distill": self.distill_config.to_dict(),
            "inherit_weights": self.inherit_weights,
            "seed": self.seed,
            # bf16 on CUDA and fp32 on CPU give (slightly) different accuracies.
            "device": self.device.type,
        } | ({"curve_points": self.curve_points} if self.curve_points > 1 else {})

    def _fingerprint_data(self) -> str:
        """A hash of exactly the images and labels a measurement depends on: the transfer set's
        (picked as :class:`TeacherTargets` picks them, without the teacher's pass over them, so a
        cache that answers every student never runs it) and the validation set's."""
        if self._data_fingerprint is None:
            hasher = hashlib.blake2b(digest_size=16)
            hasher.update(self.data.name.encode())
            transfer = transfer_set(*self.data.split("train"), self.distill_config)
            for tensor in (*transfer, *self.eval_set):
                hasher.update(tensor.contiguous().cpu().numpy().tobytes())
            self._data_fingerprint = hasher.hexdigest()
        return self._data_fingerprint


# ---- the cheap stand-in -------------------------------------------------------------------------


class ProxyMeasurer(Measurer):
    """A stand-in for :class:`DistillationMeasurer` that needs no data and trains nothing.

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
    """

    _SHARPNESS = 8.0

    def __init__(self, teacher_spec: NetworkSpec, teacher_accuracy: float = 0.99) -> None:
        if not 0.0 < teacher_accuracy <= 1.0:
            raise ValueError(f"teacher_accuracy={teacher_accuracy!r} must be in (0, 1]")
        self._teacher_spec = teacher_spec
        self._teacher_accuracy = float(teacher_accuracy)

    @property
    def teacher_spec(self) -> NetworkSpec:
        return self._teacher_spec

    @property
    def teacher_accuracy(self) -> float:
        return self._teacher_accuracy

    def measure(self, plan: StudentPlan, student: StudentDescription) -> Measurement:
        spec, teacher = plan.spec, self.teacher_spec
        kept_params = spec.params / teacher.params
        kept_flops = spec.flops / teacher.flops
        kept_units = spec.num_units / teacher.num_units
        capacity = kept_params**0.6 * kept_flops**0.2 * kept_units**0.2
        chance = 1.0 / spec.num_classes
        quality = -math.expm1(-self._SHARPNESS * capacity) / -math.expm1(-self._SHARPNESS)
        value = chance + (self.teacher_accuracy - chance) * min(quality, 1.0)
        return Measurement(accuracy=value, params=spec.params, flops=spec.flops)

    def context(self) -> dict[str, Any]:
        return {
            "kind": "proxy",
            "teacher": self.teacher_spec.key,
            "teacher_accuracy": self.teacher_accuracy,
        }
