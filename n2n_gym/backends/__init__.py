"""Where measurements run: in this process, in a pool of local worker processes, or on Ray.

Every back-end is a :class:`~n2n_gym.measure.Measurer`, so an
:class:`~n2n_gym.evaluation.Evaluator` built on one (``task.build_evaluator(backend)``) is handed
to environments as ``evaluator=`` and they cannot tell the difference:

- in-process (the default): the environment builds its own evaluator from its task;
- :class:`ProcessPoolBackend` (:mod:`~n2n_gym.backends.pool`): ``N`` long-lived worker processes
  on this machine;
- :class:`ThreadBackend` (:mod:`~n2n_gym.backends.threads`): ``N`` threads of this process
  sharing one measurer, each on its own CUDA stream on a GPU (several small students in flight);
- :class:`RayBackend` (:mod:`~n2n_gym.backends.ray_actors`): long-lived Ray actors on a cluster,
  one per GPU when students are distilled on CUDA, otherwise one per CPU slot.

A worker (:mod:`~n2n_gym.backends.worker`) builds its measurer once from the search's
:class:`~n2n_gym.task.Task` and keeps the teacher, the data and the teacher's logits resident for
its whole life. Only *measurements* run on workers: the cache look-up and the reward (which
depends on the search's progress through annealed constraints) stay in the driver's evaluator,
so a cache hit never leaves the driver and every measurement lands in the driver's cache.

A worker that dies while measuring (killed, out of host memory, a lost node) is replaced and the
student retried on a fresh worker; if that fails too the measurement is an error
(``error_type="WorkerDied"``, reward ``reward_on_error``, not cached) and the search goes on.
"""

from __future__ import annotations

from n2n_gym.backends.base import BackendConfigError, WorkerBackend, WorkersLost
from n2n_gym.backends.pool import ProcessPoolBackend
from n2n_gym.backends.ray_actors import RayBackend
from n2n_gym.backends.threads import ThreadBackend
from n2n_gym.measure import WorkerDied
from n2n_gym.task import Task

__all__ = [
    "BackendConfigError",
    "ProcessPoolBackend",
    "RayBackend",
    "ThreadBackend",
    "WorkerBackend",
    "WorkerDied",
    "WorkersLost",
    "make_backend",
]


def make_backend(
    task: Task,
    *,
    workers: int = 0,
    ray_address: str | None = None,
    threads: int | None = None,
    kind: str = "pool",
    ray_data: str = "object_store",
) -> WorkerBackend:
    """The back-end the command line asks for: Ray when given an address, else ``kind``.

    Args:
        task: the search's task; workers build their measurer from it.
        workers: pool processes; with Ray the number of actors (0: one per GPU or CPU slot).
        ray_address: a Ray address (see :class:`RayBackend`), or ``None`` for a process pool.
        threads: torch threads per pool worker (default: the cores divided among them); Ray CPU
            actors always use one.
        ray_data: how Ray actors get the teacher and data (see :class:`RayBackend`'s ``data``).
        kind: ``"pool"`` (worker processes) or ``"threads"`` (threads of this process sharing
            one measurer; see :class:`ThreadBackend`).

    Raises:
        BackendConfigError: neither asked for, Ray missing, or the cluster cannot host the workers.
    """
    if ray_address:
        return RayBackend(task, ray_address, workers=workers or None, data=ray_data)
    if workers < 1:
        raise BackendConfigError("pass workers=N (N >= 1) or ray_address=ADDRESS")
    if kind == "threads":
        return ThreadBackend(task, workers)
    if kind != "pool":
        raise BackendConfigError(f"backend {kind!r} is not known; use pool or threads")
    return ProcessPoolBackend(task, workers, threads=threads)
