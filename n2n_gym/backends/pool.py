"""A back-end of long-lived worker processes on this machine."""

from __future__ import annotations

import logging
import os
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from n2n_gym.backends.base import BackendConfigError, WorkerBackend
from n2n_gym.backends.worker import WorkerFacts, pool_call, pool_context, start_pool_worker
from n2n_gym.measure import WorkerDied
from n2n_gym.task import Task

__all__ = ["ProcessPoolBackend"]

logger = logging.getLogger(__name__)


class ProcessPoolBackend(WorkerBackend):
    """Evaluations on ``workers`` long-lived processes of this machine.

    Workers start from a fork server (safe with CUDA, like ``spawn``) at the first evaluation or
    :meth:`start`, and each builds the measurer once. A worker that dies breaks a ``ProcessPoolExecutor`` for every
    evaluation in flight; the pool is then replaced and those evaluations retried on it.

    Args:
        task: the search's task; each worker builds its measurer from it.
        workers: worker processes.
        retries: retries of a measurement whose worker died.
        threads: torch CPU threads per worker (default: this machine's cores divided among the
            workers, so they do not oversubscribe it).
    """

    def __init__(
        self,
        task: Task,
        workers: int,
        *,
        retries: int = 1,
        threads: int | None = None,
    ) -> None:
        if workers < 1:
            raise BackendConfigError(f"workers={workers}: a process pool needs at least 1")
        super().__init__(task, retries=retries)
        self.workers = workers
        self.threads = threads or max(1, (os.cpu_count() or 1) // workers)
        self._generation = 0
        self._executor = self._new_executor()

    @property
    def num_workers(self) -> int:
        return self.workers

    def _new_executor(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            self.workers,
            mp_context=pool_context(),
            initializer=start_pool_worker,
            initargs=(self.task, self.threads, os.getpid()),
        )

    def _start_all(self) -> list[WorkerFacts]:
        # One task per worker makes the executor start them all; each builds at start-up.
        with self._lock:
            self._check_open()
            executor = self._executor
        try:
            futures = [executor.submit(pool_call, "facts") for _ in range(self.workers)]
            return [future.result() for future in futures]
        except BrokenProcessPool as error:
            raise WorkerDied(f"a worker process died while starting: {error}") from error

    def _call(self, method: str, *args: Any) -> Any:
        deaths = 0
        while True:
            with self._lock:
                self._check_open()
                executor, generation = self._executor, self._generation
            try:
                future = executor.submit(pool_call, method, *args)
            except RuntimeError as error:
                # Broken, or shut down by the thread that replaced it: nothing ran; use a new pool.
                with self._lock:
                    stale = generation != self._generation
                if not (stale or isinstance(error, BrokenProcessPool)):
                    raise
                self._replace_executor(generation, error)
                continue
            try:
                return future.result()
            except BrokenProcessPool as error:
                # A worker died while this was running or queued: it counts as a try.
                deaths += 1
                self._replace_executor(generation, error)
                if deaths > self.retries:
                    raise WorkerDied(
                        f"evaluation worker process died on {deaths} tries ({error})"
                    ) from error

    def _replace_executor(self, generation: int, error: BaseException) -> None:
        with self._lock:
            if self._closed or generation != self._generation:
                return  # another thread has replaced it already
            broken, self._executor = self._executor, self._new_executor()
            self._generation += 1
            self.workers_replaced += 1
        logger.warning(
            "an evaluation worker process died (%s); restarting the pool of %d workers",
            error,
            self.workers,
        )
        broken.shutdown(wait=False, cancel_futures=True)

    def worker_pids(self) -> list[int]:
        with self._lock:
            processes = self._executor._processes or {}
            return sorted(pid for pid, process in processes.items() if process.is_alive())

    def _shutdown(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
