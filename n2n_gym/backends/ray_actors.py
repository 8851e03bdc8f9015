"""A back-end of long-lived Ray actors: one per GPU on CUDA, otherwise one per CPU slot."""

from __future__ import annotations

import logging
import queue
from typing import Any

from n2n_gym.backends.base import BackendConfigError, WorkerBackend
from n2n_gym.backends.worker import Worker, WorkerFacts
from n2n_gym.measure import WorkerDied
from n2n_gym.task import Task

__all__ = ["RayBackend"]

logger = logging.getLogger(__name__)


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as error:
        raise BackendConfigError(
            "the Ray back-end needs Ray: install it with `pip install .[ray]` (or "
            "`pip install 'ray[default]>=2.9'`) on this machine and every cluster node"
        ) from error
    return ray


def _ray_placement(
    device: str, resources: dict[str, float], workers: int | None
) -> tuple[str, dict[str, float], int]:
    """``(device, actor resources, actor count)`` for a cluster; refuses what would wait forever."""
    cpus, gpus = resources.get("CPU", 0.0), resources.get("GPU", 0.0)
    summary = f"the Ray cluster has {cpus:g} CPUs and {gpus:g} GPUs"
    if device.startswith("cuda") or (device == "auto" and gpus >= 1):
        if gpus < 1:
            raise BackendConfigError(
                f"device={device!r} distils on GPUs, but {summary}: add GPU nodes "
                "(`ray start --address=HEAD:6379 --num-gpus=N`) or use device='cpu'"
            )
        count = workers or int(gpus)
        # Several actors share a GPU when asked for more workers than GPUs.
        per_gpu = -(-count // int(gpus))
        return "cuda", {"num_gpus": 1.0 / per_gpu, "num_cpus": 1.0}, count
    count = workers or int(cpus)
    if count < 1 or count > cpus:
        raise BackendConfigError(
            f"{count} CPU evaluation workers need {count} CPUs, but {summary}: pass "
            f"workers={int(cpus)} or fewer, or add nodes (`ray start --address=HEAD:6379`)"
        )
    # "auto" would pick CUDA on a node whose GPUs Ray does not manage: stay on the CPU slots.
    return "cpu" if device == "auto" else device, {"num_cpus": 1.0}, count


class _RayWorker(Worker):
    """The Ray actor: a :class:`Worker` on one CPU slot or GPU of the cluster."""


class RayBackend(WorkerBackend):
    """Evaluations on long-lived Ray actors: one per GPU on CUDA, otherwise one per CPU slot.

    Connects to ``address`` unless Ray is already initialised in this process. Before creating
    GPU actors the cluster's resources are checked, since Ray would otherwise wait forever for
    GPUs it does not have. The package must be importable on every node, and ``teacher`` and
    ``data_dir`` readable at the same paths.

    Args:
        task: the search's task; each actor builds its measurer from it; ``device="auto"`` means CUDA when the
            cluster has GPUs.
        address: ``ray.init`` address: ``"auto"`` or ``"HOST:6379"`` (a running cluster),
            ``"ray://HOST:10001"`` (Ray client), ``"local"`` (start Ray here), ``None`` (Ray's
            default: ``RAY_ADDRESS``, a running local cluster, else a new one).
        workers: actors to start (default: one per GPU, or one per CPU slot).
        retries: retries of a measurement whose actor died.
    """

    def __init__(
        self,
        task: Task,
        address: str | None = None,
        *,
        workers: int | None = None,
        retries: int = 1,
    ) -> None:
        ray = _import_ray()
        self._ray = ray
        self._owns_ray = not ray.is_initialized()
        if self._owns_ray:
            options = {"include_dashboard": False} if address == "local" else {}
            ray.init(address=address, logging_level=logging.WARNING, **options)
        elif address not in (None, "auto"):
            logger.info("Ray is already initialised here; ignoring address %r", address)
        device, resources, count = _ray_placement(task.device, ray.cluster_resources(), workers)
        super().__init__(task.replace(device=device), retries=retries)
        self._actor_class = ray.remote(max_restarts=0, **resources)(_RayWorker)
        self._pid_refs: dict[int, Any] = {}
        self._actors = [self._new_actor() for _ in range(count)]
        self._idle: queue.Queue[Any] = queue.Queue()
        for actor in self._actors:
            self._idle.put(actor)
        logger.info("%d Ray evaluation actor(s) on %s with %s", count, device, resources)

    @property
    def num_workers(self) -> int:
        return len(self._actors)

    def _new_actor(self) -> Any:
        actor = self._actor_class.remote(self.task, 1)
        # Asked now, answered as soon as the actor is up: later it may be busy measuring.
        self._pid_refs[id(actor)] = actor.pid.remote()
        return actor

    def _start_all(self) -> list[WorkerFacts]:
        self._check_open()
        try:
            return self._get([actor.facts.remote() for actor in list(self._actors)])
        except self._ray.exceptions.RayActorError as error:
            raise WorkerDied(f"a Ray actor died while starting: {error}") from error

    def _get(self, refs: Any) -> Any:
        try:
            return self._ray.get(refs)
        except self._ray.exceptions.RayTaskError as error:
            # A bug or a bad setting on the worker (a missing data folder): raise it as what it is.
            raise error.as_instanceof_cause() from None

    def _call(self, method: str, *args: Any) -> Any:
        ray = self._ray
        last: BaseException | None = None
        for _ in range(self.retries + 1):
            self._check_open()
            actor = self._idle.get()
            try:
                return self._get(getattr(actor, method).remote(*args))
            except ray.exceptions.RayActorError as error:
                last = error
                actor = self._replace_actor(actor, error)
            finally:
                self._idle.put(actor)
        raise WorkerDied(f"Ray evaluation actor died on {self.retries + 1} tries ({last})")

    def _replace_actor(self, dead: Any, error: BaseException) -> Any:
        logger.warning("a Ray evaluation actor died (%s); starting a new one", error)
        try:
            self._ray.kill(dead, no_restart=True)
        except Exception:  # it is gone already
            logger.debug("ray.kill of a dead actor failed", exc_info=True)
        fresh = self._new_actor()
        with self._lock:
            self._actors = [fresh if a is dead else a for a in self._actors]
            self._pid_refs.pop(id(dead), None)
            self.workers_replaced += 1
        return fresh

    def worker_pids(self) -> list[int]:
        refs = [self._pid_refs[id(actor)] for actor in list(self._actors)]
        return sorted(self._ray.get(refs))

    def _shutdown(self) -> None:
        for actor in self._actors:
            self._ray.kill(actor, no_restart=True)
        if self._owns_ray:
            self._ray.shutdown()
