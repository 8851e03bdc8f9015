"""Worker processes: where they come from, and that they end with the process that started them."""

from __future__ import annotations

import multiprocessing
import multiprocessing.context
import os
import threading
import time
from pathlib import Path

__all__ = ["exit_with_parent", "worker_context"]


def worker_context(*preload: str) -> multiprocessing.context.BaseContext:
    """A start method for worker processes: each forks from a server process that imported the
    ``preload`` modules but never touched CUDA or torch's thread pool, which is as safe as spawn
    without paying torch's imports (seconds of CPU) again in every worker; spawn where there is no
    forkserver.

    A process has one such server, started with the first workers: the ``preload`` of that first
    call is what later workers inherit (a module it lacks, a worker imports itself).
    """
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(list(preload))
    return context


def exit_with_parent(owner: int | None = None, interval: float = 1.0) -> None:
    """End this process (``os._exit``) soon after ``owner`` is gone.

    A pool worker busy with a long job (a benchmark run, a distillation) reads its task queue only
    between jobs, so when the process that started it is killed it would go on working for
    minutes, holding cores no one asked for. A daemon thread checks every ``interval`` seconds
    that ``owner`` still runs; what the worker recorded so far (each evaluation is appended as it
    finishes) stays, and a rerun of the command continues from it. A pool's ``initializer`` (or
    the first thing it calls) is the place to call this.

    Args:
        owner: the pid of the process that made the pool (default: this process's parent). A
            worker of :func:`worker_context` needs it: its parent is the fork server, which lives
            as long as any of its workers does.
        interval: seconds between checks.
    """
    owner = owner or os.getppid()

    def watch() -> None:
        while _running(owner):
            time.sleep(interval)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _running(pid: int) -> bool:
    """Whether ``pid`` runs (a killed process its parent has not reaped yet does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it exists
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):  # no /proc (not Linux): existing is all that can be told
        return True
    return state != "Z"
