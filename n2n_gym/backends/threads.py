"""A back-end of threads in this process: several students in flight on one measurer.

A process pool copies the teacher, the data and the teacher's logits into every worker and, on a
GPU, gives each its own CUDA context. Threads share one measurer instead: the logits are computed
once, and on CUDA each slot trains on its own stream, so ``workers`` small students keep one GPU
busy where one alone leaves it idle. On the CPU every slot trains with one torch thread (the GIL is
released inside the kernels): on 2 cores it measured within 3 % of a process pool of one-thread
workers and started in 3 s instead of 11 (``bench/bench_evaluator.py``).

One-thread CPU measurements are bitwise those of a one-thread in-process evaluator, whatever runs
beside them: the batch order comes from a seeded generator of its own, and students with dropout
(the only draw from torch's global generator) take turns.
"""

from __future__ import annotations

import os
import queue
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from typing import Any

import torch

from n2n_gym.arch import StudentDescription, StudentPlan
from n2n_gym.backends.base import BackendConfigError, WorkerBackend
from n2n_gym.backends.worker import Worker, WorkerFacts
from n2n_gym.distill import resolve_device
from n2n_gym.measure import Gate, Measurement, Measurer
from n2n_gym.task import Task

__all__ = ["ThreadBackend"]


class ThreadBackend(WorkerBackend):
    """Evaluations on ``workers`` threads of this process, sharing one measurer.

    Args:
        task: the search's task; its measurer is built once, here.
        workers: students measured at once.
        retries: unused (a thread does not die); kept for the common signature.
    """

    def __init__(self, task: Task, workers: int, *, retries: int = 1) -> None:
        if workers < 1:
            raise BackendConfigError(f"workers={workers}: a thread back-end needs at least 1")
        super().__init__(task, retries=retries)
        self.workers = workers
        self._worker: Worker | None = None
        self._measurer: Measurer | None = None
        self._slots: queue.SimpleQueue[Any] = queue.SimpleQueue()

    @property
    def num_workers(self) -> int:
        return self.workers

    def _start_all(self) -> list[WorkerFacts]:
        with self._lock:
            self._check_open()
        # Threads share torch's settings: one CPU thread each, set once for the whole process.
        worker = Worker(self.task, threads=1)
        facts = worker.facts()  # builds the shared state (logits, validation set) before threads
        device = resolve_device(self.task.device)
        for _ in range(self.workers):
            stream = torch.cuda.Stream(device) if device.type == "cuda" else None
            self._slots.put(stream)
        self._worker = worker
        self._measurer = worker.measurer
        return [facts]

    # The measurer is in this process, so successive halving's gate can be called from a slot.
    supports_halving = True

    def measure_halving(
        self,
        plan: StudentPlan,
        student: StudentDescription,
        rungs: Sequence[float],
        gate: Gate,
    ) -> Measurement:
        with self._lock:
            self.remote_measurements += 1
        return self._in_slot(lambda: self._measurer.measure_halving(plan, student, rungs, gate))

    def _call(self, method: str, *args: Any) -> Any:
        return self._in_slot(lambda: getattr(self._worker, method)(*args))

    def _in_slot(self, work: Callable[[], Any]) -> Any:
        """Run ``work`` in a free slot (on its CUDA stream), waiting for one."""
        self._worker_facts()
        with self._lock:
            self._check_open()
        stream = self._slots.get()
        try:
            with torch.cuda.stream(stream) if stream is not None else nullcontext():
                result = work()
                if stream is not None:
                    stream.synchronize()
            return result
        finally:
            self._slots.put(stream)

    def worker_pids(self) -> list[int]:
        return [os.getpid()] if self._worker is not None else []

    def _shutdown(self) -> None:
        self._worker = None
