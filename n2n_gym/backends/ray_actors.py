"""A back-end of long-lived Ray actors: one per GPU on CUDA, otherwise one per CPU slot."""

from __future__ import annotations

import logging
import queue
import time
from typing import Any

from n2n_gym.backends.base import BackendConfigError, WorkerBackend, WorkersLost
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

    def node(self) -> str:
        import ray

        return ray.get_runtime_context().get_node_id()


# How often the driver looks for nodes that joined (cheap: a call to the cluster's GCS).
_RESCAN_SECONDS = 2.0


class RayBackend(WorkerBackend):
    """Evaluations on long-lived Ray actors: one per GPU on CUDA, otherwise one per CPU slot.

    Connects to ``address`` unless Ray is already initialised in this process. Before creating
    GPU actors the cluster's resources are checked, since Ray would otherwise wait forever for
    GPUs it does not have. Only the package must be installed on every node: the driver loads
    the teacher and the data once and puts them in Ray's object store, from which every actor
    builds its measurer (the actors of one node share one copy). ``data="paths"`` makes every
    actor read them from the task's paths instead (for data sets too large to ship, on a folder
    every node mounts).

    Nodes may come and go. An actor that dies (its process, or its whole node) is replaced when
    the cluster has room, and its student retried once on another actor before it becomes an
    error result; a node that joins is used: the driver starts actors on free slots as they
    appear, up to ``workers`` (default: every slot, or every GPU). When no actor is left and none
    can be started, :class:`~n2n_gym.backends.base.WorkersLost` stops the search.

    Args:
        task: the search's task; each actor builds its measurer from it; ``device="auto"`` means
            CUDA when the cluster has GPUs.
        address: ``ray.init`` address: ``"auto"`` or ``"HOST:6379"`` (a running cluster),
            ``"ray://HOST:10001"`` (Ray client), ``"local"`` (start Ray here), ``None`` (Ray's
            default: ``RAY_ADDRESS``, a running local cluster, else a new one).
        workers: most actors to run (default: one per GPU, or one per CPU slot, as many as the
            cluster has at any time).
        retries: retries of a measurement whose actor died.
        data: ``"object_store"`` (the driver ships teacher and data) or ``"paths"`` (each actor
            loads them from the task's paths, which must exist on every node).
    """

    def __init__(
        self,
        task: Task,
        address: str | None = None,
        *,
        workers: int | None = None,
        retries: int = 1,
        data: str = "object_store",
    ) -> None:
        if data not in ("object_store", "paths"):
            raise BackendConfigError(f"data={data!r}: use 'object_store' or 'paths'")
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
        self._resources = resources
        self._most = workers
        self._actor_class = ray.remote(max_restarts=0, **resources)(_RayWorker)
        self._shared: tuple[Any, ...] = ()
        if data == "object_store":
            # Loaded here once: nodes need neither the teacher file nor the data folder.
            self._shared = (ray.put(self.task.load_teacher()), ray.put(self.task.load_data()))
        self._pid_refs: dict[int, Any] = {}
        self._node_refs: dict[int, Any] = {}
        self._actors: list[Any] = []
        self._idle: queue.Queue[Any] = queue.Queue()
        self._initial = count
        self._last_scan = 0.0
        logger.info("Ray evaluation on %s with %s per actor, %d to start", device, resources, count)

    @property
    def num_workers(self) -> int:
        with self._lock:
            return len(self._actors) or self._initial

    def _new_actor(self) -> Any:
        actor = self._actor_class.remote(self.task, 1, *self._shared)
        # Asked now, answered as soon as the actor is up: later it may be busy measuring.
        self._pid_refs[id(actor)] = actor.pid.remote()
        self._node_refs[id(actor)] = actor.node.remote()
        with self._lock:
            self._actors.append(actor)
        self._idle.put(actor)
        return actor

    def _room(self) -> int:
        """Actors the cluster has free slots (or GPU shares) for now, within ``workers``."""
        available = self._ray.available_resources()
        cpus = int(available.get("CPU", 0.0) // self._resources.get("num_cpus", 1.0))
        room = cpus
        if "num_gpus" in self._resources:
            room = min(room, int(available.get("GPU", 0.0) // self._resources["num_gpus"]))
        with self._lock:
            running = len(self._actors)
        if self._most is not None:
            room = min(room, self._most - running)
        return max(0, room)

    def _scan(self, force: bool = False) -> None:
        """Start actors on slots that are free now (a node joined, or a dead actor's slot)."""
        now = time.monotonic()
        if not force and now - self._last_scan < _RESCAN_SECONDS:
            return
        self._last_scan = now
        with self._lock:
            starting = [self._pid_refs[id(actor)] for actor in self._actors]
        # Actors still starting hold no resources yet: counting free slots now would overbook.
        _, pending = self._ray.wait(starting, num_returns=len(starting), timeout=0)
        if pending:
            return
        added = self._room()
        for _ in range(added):
            self._new_actor()
        if added and self._facts is not None:
            logger.warning(
                "%d Ray evaluation actor(s) started on free slots: %d in use",
                added,
                len(self._actors),
            )

    def _start_all(self) -> list[WorkerFacts]:
        self._check_open()
        for _ in range(self._initial):
            self._new_actor()
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

    def _take_idle(self) -> Any:
        """A free actor; waits while all are busy, and stops the search when none is left."""
        while True:
            self._check_open()
            self._scan()
            try:
                return self._idle.get(timeout=0.5)
            except queue.Empty:
                with self._lock:
                    left = len(self._actors)
                if left == 0:
                    self._scan(force=True)
                    with self._lock:
                        left = len(self._actors)
                    if left == 0:
                        raise WorkersLost(
                            "every Ray evaluation actor is gone and the cluster has no free "
                            f"slot for a new one ({self._ray.cluster_resources()}); restart the "
                            "nodes and continue with --resume"
                        ) from None

    def _call(self, method: str, *args: Any) -> Any:
        ray = self._ray
        last: BaseException | None = None
        for _ in range(self.retries + 1):
            actor = self._take_idle()
            try:
                result = self._get(getattr(actor, method).remote(*args))
            except ray.exceptions.RayActorError as error:
                last = error
                self._lost(actor, error)
                continue
            self._idle.put(actor)
            return result
        raise WorkerDied(f"Ray evaluation actor died on {self.retries + 1} tries ({last})")

    def _lost(self, dead: Any, error: BaseException) -> None:
        """Forget a dead actor; replace it if its node is alive (a lost node's slots are gone)."""
        alive = self._node_alive(self._node_refs.pop(id(dead), None))
        try:
            self._ray.kill(dead, no_restart=True)
        except Exception:  # it is gone already
            logger.debug("ray.kill of a dead actor failed", exc_info=True)
        with self._lock:
            self._actors = [a for a in self._actors if a is not dead]
            self._pid_refs.pop(id(dead), None)
        replaced = False
        if alive:
            # The dead actor's slot frees once Ray has seen it go.
            deadline = time.monotonic() + 10.0
            while self._room() == 0 and time.monotonic() < deadline:
                time.sleep(0.1)
            if self._room():
                self._new_actor()
                replaced = True
                with self._lock:
                    self.workers_replaced += 1
        logger.warning(
            "a Ray evaluation actor died (%s); %s: %d actor(s) in use",
            str(error).splitlines()[0][:200],
            "replaced" if replaced else "its node is gone, continuing without it",
            len(self._actors),
        )

    def _node_alive(self, node_ref: Any) -> bool:
        if node_ref is None:
            return False
        try:
            node_id = self._ray.get(node_ref, timeout=1.0)
        except Exception:  # the actor never started, or its node is gone
            return False
        return any(n["NodeID"] == node_id and n["Alive"] for n in self._ray.nodes())

    def worker_pids(self) -> list[int]:
        with self._lock:
            refs = [self._pid_refs[id(actor)] for actor in self._actors]
        return sorted(self._ray.get(refs))

    def _shutdown(self) -> None:
        with self._lock:
            actors = list(self._actors)
        for actor in actors:
            try:
                self._ray.kill(actor, no_restart=True)
            except Exception:  # on a node that is gone
                logger.debug("ray.kill at shutdown failed", exc_info=True)
        if self._owns_ray:
            self._ray.shutdown()
