"""The driver side shared by the back-ends: a measurer whose measurements run on workers."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from n2n_gym.arch import NetworkSpec, StudentDescription, StudentPlan
from n2n_gym.backends.worker import Reply, WorkerFacts
from n2n_gym.measure import Measurement, Measurer, WorkerDied
from n2n_gym.task import Task

__all__ = ["BackendConfigError", "WorkerBackend", "WorkersLost"]

logger = logging.getLogger(__name__)


class BackendConfigError(ValueError):
    """A back-end setting that cannot work here; the message names the setting and the fix."""


class WorkersLost(RuntimeError):
    """Every evaluation worker is gone and none can be started: the search must stop.

    Not an expected error of one student (those become error results): it stops the search, whose
    finished evaluations are kept for ``--resume``.
    """


class WorkerBackend(Measurer):
    """A measurer whose measurements run on long-lived workers; the base of the back-ends.

    Thread-safe and blocking: :meth:`measure` hands the student to a free worker and waits, and
    :meth:`measure_many` keeps every worker busy. An :class:`~n2n_gym.evaluation.Evaluator` in the
    driver adds the cache and the reward, so a cache hit never leaves the driver.

    Args:
        task: the search's task; every worker builds its measurer from it.
        retries: how many times a measurement whose worker died is retried on a fresh worker
            before it becomes an error measurement (``error_type="WorkerDied"``).

    Attributes:
        remote_measurements: measurements sent to workers so far.
        workers_replaced: workers (or pools of them) started to replace dead ones.
    """

    def __init__(self, task: Task, *, retries: int = 1) -> None:
        if retries < 0:
            raise ValueError(f"retries={retries} must be at least 0")
        self.task = task
        self.retries = retries
        self.remote_measurements = 0
        self.workers_replaced = 0
        self._facts: WorkerFacts | None = None
        self._facts_lock = threading.Lock()
        self._lock = threading.Lock()
        self._running = 0
        self._closed = False

    # ---- what subclasses provide --------------------------------------------------------------
    @property
    def num_workers(self) -> int:
        """How many measurements can run at once."""
        raise NotImplementedError

    def _call(self, method: str, *args: Any) -> Any:
        """Run ``Worker.<method>(*args)`` on a free worker; retry on a fresh one if it dies.

        Raises:
            WorkerDied: the worker died on every try.
        """
        raise NotImplementedError

    def _start_all(self) -> list[WorkerFacts]:
        """Start every worker now; the facts of those that reported."""
        raise NotImplementedError

    def worker_pids(self) -> list[int]:
        """Process ids of the current workers (for monitoring)."""
        raise NotImplementedError

    def _shutdown(self) -> None:
        raise NotImplementedError

    # ---- teacher facts --------------------------------------------------------------------------
    def start(self) -> None:
        """Start the workers and build their measurers now rather than at the first measurement.

        Raises:
            BackendConfigError: workers could not start, or disagree on the teacher or data.
        """
        self._worker_facts()

    def _worker_facts(self) -> WorkerFacts:
        with self._facts_lock:
            if self._facts is None:
                started = time.perf_counter()
                try:
                    facts = self._start_all()
                except WorkerDied as error:
                    raise BackendConfigError(
                        f"evaluation workers died while starting ({error}); run one evaluation "
                        "in-process (without workers) to see why"
                    ) from error
                digests = {f.context_digest for f in facts}
                if len(digests) > 1:
                    hosts = sorted({f"{f.host} ({f.context_digest[:8]})" for f in facts})
                    raise BackendConfigError(
                        f"evaluation workers disagree on the teacher, data or device: {hosts}; "
                        "give every machine the same teacher file and data folder"
                    )
                self._facts = facts[0]
                logger.info(
                    "%d evaluation worker(s) ready in %.1f s (teacher accuracy %.4f)",
                    len(facts),
                    time.perf_counter() - started,
                    self._facts.teacher_accuracy,
                )
            return self._facts

    @property
    def teacher_spec(self) -> NetworkSpec:
        return self._worker_facts().teacher_spec

    @property
    def teacher_accuracy(self) -> float:
        return self._worker_facts().teacher_accuracy

    def context(self) -> dict[str, Any]:
        return self._worker_facts().context

    @property
    def in_flight(self) -> int:
        """Measurements currently handed to workers."""
        return self._running

    # ---- measuring ------------------------------------------------------------------------------
    def measure(self, plan: StudentPlan, student: StudentDescription) -> Measurement:
        """Measure one student on a worker; blocks until done. Safe from several threads.

        Raises:
            WorkerDied: the worker died on every try.
            BackendConfigError: the worker measures with another teacher, data or device.
        """
        expected = self._worker_facts().context_digest
        with self._lock:
            self.remote_measurements += 1
            self._running += 1
        try:
            reply: Reply = self._call("measure", student)
        finally:
            with self._lock:
                self._running -= 1
        if reply.context_digest != expected:
            raise BackendConfigError(
                f"the worker on {reply.host} (pid {reply.pid}) evaluates with another teacher, "
                "data or device than the others; give every machine the same teacher file and "
                "data folder"
            )
        return reply.measurement

    def measure_many(
        self, items: Sequence[tuple[StudentPlan, StudentDescription]]
    ) -> list[Measurement]:
        """Measure several students concurrently, on as many workers as are free; same order."""
        if len(items) <= 1:
            return [self.measure_safely(plan, student) for plan, student in items]
        # The threads only wait on workers; two per worker keep every worker fed.
        threads = min(len(items), 2 * max(self.num_workers, 1))
        with ThreadPoolExecutor(threads, thread_name_prefix="measure") as pool:
            return list(pool.map(lambda item: self.measure_safely(*item), items))

    # ---- life cycle -----------------------------------------------------------------------------
    def close(self) -> None:
        """Stop the workers; later measurements raise."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._shutdown()

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"{type(self).__name__} is closed; make a new one")

    def __enter__(self) -> WorkerBackend:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        raise TypeError(
            f"a {type(self).__name__} owns worker processes and cannot be pickled: share it "
            "between threads (n2n_gym.envs.vector.ThreadedVecEnv), not subprocesses"
        )
