"""The evaluator: a measurer, a measurement cache and the reward, behind one call.

``Evaluator.evaluate(student) -> EvalResult`` is what an environment's terminal step calls. It
checks the student was made for the teacher, looks the measurement up in the persistent
:class:`~n2n_gym.cache.MeasurementCache`, asks the :class:`~n2n_gym.measure.Measurer` for the
rest — in-process distillation, the cheap proxy, or a back-end of worker processes — and turns the
measurement into a reward with :func:`~n2n_gym.reward.compute_reward`. Expected failures (an
invalid architecture, diverged distillation, CUDA out of memory, a dead worker) come back as
results with ``reward_on_error`` and ``error``/``error_type`` set; ``evaluate`` never raises for
them.

The evaluator is thread-safe when its measurer is (every back-end is): environments stepping in
threads evaluate concurrently, and requests for a student that is being measured wait for that
measurement instead of starting another (reported as cache hits, as they would be one after the
other).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import asdict, dataclass, field
from typing import Any

from n2n_gym.arch import InvalidArchitecture, NetworkSpec, StudentDescription, StudentPlan
from n2n_gym.cache import MeasurementCache, json_digest, measurement_key, student_identity
from n2n_gym.halving import Halving, HalvingConfig
from n2n_gym.measure import Measurement, Measurer, error_measurement
from n2n_gym.reward import RewardConfig, RewardParts, compute_reward

__all__ = ["EvalResult", "Evaluator", "RewardGate"]

# A caller's successive-halving decision: (rung index, partial reward) -> continue?
RewardGate = Callable[[int, float], bool]


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
        cache_hit: whether the measurement came from the cache (or from a concurrent request).
        seconds: what this evaluation cost the search: the measurement's recorded seconds (for a
            table, the live wall-clock it stores), 0 on a cache hit. The simulated clock of a
            table search is their sum.
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
    seconds: float = 0.0
    halted_at: float | None = None

    @property
    def ok(self) -> bool:
        """Whether the student was evaluated without error."""
        return self.error_type is None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvalResult:
        return cls(**data)


@dataclass
class _Pending:
    """One student of a batch on its way to a result."""

    student: StudentDescription
    start: float
    plan: StudentPlan | None = None
    cache_key: str | None = None
    measurement: Measurement | None = None
    cache_hit: bool = False
    wait_for: Future[Measurement] | None = None


class Evaluator:
    """Scores students: cache look-up, measurement, reward; expected errors as results.

    Args:
        measurer: where measurements come from.
        reward_config: constraints and the error reward.
        cache: persistent measurement cache shared by runs and processes; ``None``: no caching.
        halving: stop students that rank low part-way through their measurement (successive
            halving, :mod:`n2n_gym.halving`); ``None``: every student gets the full budget.

    Raises:
        ValueError: halving asked of a measurer that cannot stop a measurement part-way.
    """

    def __init__(
        self,
        measurer: Measurer,
        reward_config: RewardConfig | None = None,
        cache: MeasurementCache | None = None,
        halving: HalvingConfig | None = None,
    ) -> None:
        if halving is not None and not measurer.supports_halving:
            raise ValueError(
                f"halving: {type(measurer).__name__} measures whole students (it cannot stop a "
                "measurement part-way); halving runs in the search's own process (no --workers, "
                "or --backend threads) or on a table"
            )
        self.measurer = measurer
        self.reward_config = reward_config or RewardConfig()
        self.cache = cache
        self.halving = Halving(halving) if halving is not None else None
        # Partial measurements of halted students: answers to repeats within this search only.
        self._halted: dict[str, Measurement] = {}
        self._lock = threading.Lock()
        self._in_flight: dict[str, Future[Measurement]] = {}

    # ---- teacher facts --------------------------------------------------------------------------
    @property
    def teacher_spec(self) -> NetworkSpec:
        return self.measurer.teacher_spec

    @property
    def teacher_accuracy(self) -> float:
        return self.measurer.teacher_accuracy

    @property
    def teacher_params(self) -> int:
        return self.teacher_spec.params

    @property
    def teacher_flops(self) -> int:
        return self.teacher_spec.flops

    # ---- evaluation -----------------------------------------------------------------------------
    def evaluate(
        self,
        student: StudentDescription,
        progress: int | None = None,
        gate: RewardGate | None = None,
    ) -> EvalResult:
        """Score one student.

        Args:
            student: decisions on this evaluator's teacher.
            progress: policy updates completed so far (for annealed constraints).
            gate: with halving, decides at each rung instead of the halving rule: called with
                the rung's index and the partial reward, returns whether to continue (a
                multi-fidelity optimiser's pruner, e.g. Optuna's).

        Returns:
            The result; an expected failure gives ``reward_on_error`` with ``error`` and
            ``error_type`` set.

        Raises:
            ValueError: the student was made for a different teacher architecture.
        """
        return self.evaluate_many([student], progress, gate)[0]

    def evaluate_many(
        self,
        students: Iterable[StudentDescription],
        progress: int | None = None,
        gate: RewardGate | None = None,
    ) -> list[EvalResult]:
        """Score several students; the measurer gets every cache miss at once. Same order.

        Args:
            students: decisions on this evaluator's teacher.
            progress: policy updates completed so far (for annealed constraints).
            gate: see :meth:`evaluate`.
        """
        batch = [self._prepare(student) for student in students]
        mine: dict[str, tuple[Future[Measurement], list[_Pending]]] = {}
        for item in batch:
            if item.plan is None or item.measurement is not None:
                continue
            key = json_digest(student_identity(item.plan))
            if key in mine:  # the same student twice in this batch: measured once
                mine[key][1].append(item)
                item.cache_hit = True
                continue
            with self._lock:
                shared = self._in_flight.get(key)
                if shared is None:
                    future: Future[Measurement] = Future()
                    self._in_flight[key] = future
                    mine[key] = (future, [item])
            if shared is not None:
                item.wait_for, item.cache_hit = shared, True
        try:
            self._measure(mine, gate)
        finally:
            with self._lock:
                for key, (future, _) in mine.items():
                    self._in_flight.pop(key, None)
                    if not future.done():
                        future.set_exception(RuntimeError("measurement abandoned"))
        for item in batch:
            if item.wait_for is not None:
                item.measurement = item.wait_for.result()
        return [self._result(item, progress) for item in batch]

    def _prepare(self, student: StudentDescription) -> _Pending:
        if student.teacher.key != self.teacher_spec.key:
            raise ValueError(
                f"student {student.key} was made for teacher architecture "
                f"'{student.teacher.name}', not this evaluator's '{self.teacher_spec.name}'"
            )
        item = _Pending(student, time.perf_counter())
        try:
            item.plan = student.plan()
        except InvalidArchitecture as error:
            item.measurement = error_measurement(error, None)
            return item
        if self.cache is not None:
            item.cache_key = measurement_key(item.plan, self.measurer.context())
            stored = self.cache.get(item.cache_key)
            if stored is not None:
                item.measurement, item.cache_hit = Measurement.from_dict(stored), True
        if item.measurement is None and self.halving is not None:
            halted = self._halted.get(json_digest(student_identity(item.plan)))
            if halted is not None:
                rung = self.halving.config.rungs.index(halted.halted_at)
                if self.halving.still_out(rung, self._partial_reward(halted)):
                    item.measurement, item.cache_hit = halted, True
                # else: the field has grown below it; proposed again, it is measured again
        return item

    def _measure(
        self,
        mine: dict[str, tuple[Future[Measurement], list[_Pending]]],
        gate: RewardGate | None = None,
    ) -> None:
        """Measure the first request of every student this batch owns; share the result."""
        if not mine:
            return
        firsts = [entries[0] for _, entries in mine.values()]
        if self.halving is None:
            measurements = self.measurer.measure_many([(p.plan, p.student) for p in firsts])
        else:
            decide = self._gate if gate is None else self._external_gate(gate)
            rungs = self.halving.config.rungs
            measurements = [
                self.measurer.measure_safely(p.plan, p.student, (rungs, decide)) for p in firsts
            ]
        for (key, (future, entries)), measurement in zip(mine.items(), measurements, strict=True):
            if measurement.halted_at is not None:
                self._halted[key] = measurement
            # Cached before the in-flight entry goes, so a later request finds one or the other.
            elif entries[0].cache_key is not None and not measurement.transient:
                self.cache.put(entries[0].cache_key, measurement.to_dict())
            for entry in entries:
                entry.measurement = measurement
            future.set_result(measurement)

    def _reward_parts(self, measurement: Measurement, progress: int | None = None) -> RewardParts:
        """The reward of a successful measurement (full or partial), with its parts."""
        return compute_reward(
            measurement.accuracy,
            self.teacher_accuracy,
            measurement.params,
            self.teacher_params,
            measurement.flops,
            self.reward_config,
            progress,
        )

    def _partial_reward(self, partial: Measurement) -> float:
        return self._reward_parts(partial).reward

    def _gate(self, rung: int, partial: Measurement) -> bool:
        """Successive halving's decision at a rung, on the reward of the partial measurement."""
        assert self.halving is not None
        return self.halving.keep(rung, self._partial_reward(partial))

    def _external_gate(self, gate: RewardGate) -> Callable[[int, Measurement], bool]:
        return lambda rung, partial: bool(gate(rung, self._partial_reward(partial)))

    def _result(self, item: _Pending, progress: int | None) -> EvalResult:
        measurement = item.measurement
        assert measurement is not None
        if measurement.ok:
            parts = self._reward_parts(measurement, progress)
            reward, reward_parts = parts.reward, parts.as_dict()
        else:
            reward, reward_parts = self.reward_config.reward_on_error, {}
        return EvalResult(
            student_key=item.student.key,
            accuracy=measurement.accuracy,
            params=measurement.params,
            flops=measurement.flops,
            reward=reward,
            reward_parts=reward_parts,
            wall_time=time.perf_counter() - item.start,
            cache_hit=item.cache_hit,
            error=measurement.error,
            error_type=measurement.error_type,
            seconds=0.0 if item.cache_hit else (measurement.seconds or 0.0),
            halted_at=measurement.halted_at,
        )

    def close(self) -> None:
        """Close the measurer (stops back-end workers) and the cache."""
        self.measurer.close()
        if self.cache is not None:
            self.cache.close()

    def __enter__(self) -> Evaluator:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
