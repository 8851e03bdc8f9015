"""The worker side of the back-ends: one measurer per worker process, built once from a task."""

from __future__ import annotations

import multiprocessing
import os
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from n2n_gym.arch import NetworkSpec, StudentDescription
from n2n_gym.cache import json_digest
from n2n_gym.measure import Measurement, Measurer
from n2n_gym.parent_watch import exit_with_parent, worker_context
from n2n_gym.task import Task

if TYPE_CHECKING:
    from n2n_gym.data import DatasetSplits
    from n2n_gym.teachers import Teacher

__all__ = ["Reply", "Worker", "WorkerFacts", "pool_call", "pool_context", "start_pool_worker"]


@dataclass(frozen=True)
class WorkerFacts:
    """What the driver learns from a worker once: the teacher and the measurement context."""

    teacher_spec: NetworkSpec
    teacher_accuracy: float
    context: dict[str, Any]
    context_digest: str
    host: str
    pid: int


@dataclass(frozen=True)
class Reply:
    """One measurement (an expected error included) and who measured it."""

    measurement: Measurement
    context_digest: str
    host: str
    pid: int


class Worker:
    """The measurer of one worker process, built at start-up and kept for the worker's life.

    A failure to build is kept and raised by every call, so it reaches the driver with its message
    (an exception in a pool initializer would only show up as a broken pool).

    Args:
        task: the search's task; the worker builds its measurer.
        threads: torch CPU threads of this worker (its share of the machine's cores).
        teacher, data: the loaded teacher and data set, when the driver hands them over (Ray's
            object store); otherwise the worker loads them from the task's paths.
    """

    def __init__(
        self,
        task: Task,
        threads: int | None,
        teacher: Teacher | None = None,
        data: DatasetSplits | None = None,
    ) -> None:
        if threads:
            import torch

            torch.set_num_threads(threads)
        self._measurer: Measurer | None = None
        self._error: Exception | None = None
        self.context_digest = ""
        try:
            task.check_device()
            self._measurer = task.build_measurer(teacher, data)
            self.context_digest = json_digest(self._measurer.context())
        except Exception as error:
            self._error = error

    def _ready(self) -> Measurer:
        if self._error is not None:
            raise self._error
        assert self._measurer is not None
        return self._measurer

    @property
    def measurer(self) -> Measurer:
        """The worker's measurer (raises the error it failed to build with)."""
        return self._ready()

    def facts(self) -> WorkerFacts:
        measurer = self._ready()
        return WorkerFacts(
            teacher_spec=measurer.teacher_spec,
            teacher_accuracy=measurer.teacher_accuracy,
            context=measurer.context(),
            context_digest=self.context_digest,
            host=socket.gethostname(),
            pid=os.getpid(),
        )

    def measure(self, student: StudentDescription) -> Reply:
        # Expected errors come back as measurements: the driver decides what to cache.
        measurement = self._ready().measure_safely(student.plan(), student)
        return Reply(measurement, self.context_digest, socket.gethostname(), os.getpid())

    def pid(self) -> int:
        return os.getpid()


def pool_context() -> multiprocessing.context.BaseContext:
    """Pool workers fork from a server process that imported this module (:func:`worker_context`)
    and torch's compiler: torch imports it lazily at a process's first optimiser or ``torch.fx``
    trace, which every worker makes (it took two of a worker's three seconds to start)."""
    return worker_context(__name__, "torch._dynamo")


# The worker of this process when it is a pool worker.
_POOL_WORKER: Worker | None = None


def start_pool_worker(task: Task, threads: int | None, owner: int) -> None:
    """Pool initializer: build this process's worker (which ends when ``owner``, the process that
    made the pool, does)."""
    global _POOL_WORKER
    exit_with_parent(owner)
    _POOL_WORKER = Worker(task, threads)


def pool_call(method: str, *args: Any) -> Any:
    """Run ``Worker.<method>(*args)`` on this pool process's worker."""
    assert _POOL_WORKER is not None, "not an evaluation pool worker"
    return getattr(_POOL_WORKER, method)(*args)
