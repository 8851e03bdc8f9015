"""Where evaluations run: in this process, in a pool of local worker processes, or on Ray.

Every back-end is an :class:`~n2n_gym.evaluation.Evaluator`, so environments take one as
``evaluator=`` and cannot tell the difference:

- in-process (the default): the environment builds its own evaluator from its arguments;
- :class:`ProcessPoolBackend`: ``N`` long-lived worker processes on this machine;
- :class:`RayBackend`: long-lived Ray actors on a cluster, one per GPU when students are distilled
  on CUDA, otherwise one per CPU slot.

A worker builds its evaluator once, from an :class:`EvaluatorRecipe` (the plain, picklable
environment arguments that determine it), and keeps the teacher, the data and the teacher's
logits resident for its whole life. Only *measurements* run on workers: the cache look-up and the
reward (which depends on the search's progress through annealed constraints) stay in the driver,
so a cache hit never leaves the driver and every measurement lands in the driver's cache.

The back-ends are thread-safe and block: :meth:`EvaluatorBackend.evaluate` hands the student to a
free worker and waits. Environments that step in threads (see
:class:`~n2n_gym.envs.vector.ThreadedVecEnv`) therefore evaluate concurrently, and
:meth:`EvaluatorBackend.evaluate_many` submits a whole batch at once. A worker that dies while
measuring (killed, out of host memory, a lost node) is replaced and the student retried on a fresh
worker; if that fails too the result is an error result (``reward_on_error``,
``error_type="WorkerDied"``) and the search goes on.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import queue
import socket
import threading
import time
from collections.abc import Iterable
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import torch

from n2n_gym.arch import NetworkSpec, StudentDescription, StudentPlan
from n2n_gym.data import DatasetSplits, load_dataset
from n2n_gym.distill import DistillConfig
from n2n_gym.evaluation import (
    EXPECTED_ERRORS,
    BaseEvaluator,
    DistillationEvaluator,
    EvalResult,
    Measurement,
    ProxyEvaluator,
    RewardCache,
    error_measurement,
    json_digest,
)
from n2n_gym.reward import RewardConfig
from n2n_gym.teachers import Teacher, load_teacher

__all__ = [
    "BackendConfigError",
    "EvaluatorBackend",
    "EvaluatorRecipe",
    "ProcessPoolBackend",
    "RayBackend",
    "WorkerDied",
    "make_backend",
]

logger = logging.getLogger(__name__)


class BackendConfigError(ValueError):
    """A back-end setting that cannot work here; the message names the setting and the fix."""


class WorkerDied(RuntimeError):
    """An evaluation worker ended while measuring a student, and so did the retry."""


# ---- the recipe ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class EvaluatorRecipe:
    """The arguments that determine an environment's evaluator, as plain picklable data.

    A recipe is small (names, paths and two frozen configs), so it travels to worker processes and
    Ray actors, which build the evaluator themselves. :meth:`CompressionEnv.evaluator_recipe
    <n2n_gym.envs.base.CompressionEnv.evaluator_recipe>` makes one from an environment.

    Attributes:
        teacher: ``"default"`` (the bundled teacher) or a checkpoint path, readable by every
            worker.
        dataset: data set name.
        data_dir: data folder (``None``: the bundled MNIST), readable by every worker.
        teacher_arch: zoo architecture of a plain state dict.
        allow_pickle: accept a pickled ``nn.Module`` as the teacher.
        kind: ``"distill"`` (real distillation) or ``"proxy"`` (the cheap stand-in).
        distill_config: the fidelity of one reward.
        reward_config: constraints and the error reward (applied by the driver).
        device: where students are distilled: ``"auto"``, ``"cpu"``, ``"cuda"`` ...
        inherit_weights: students start from the teacher's weights where shapes allow.
        val_size: validation images held out of the training split.
        eval_seed: seeds the re-initialised layers of each student.
        teacher_fingerprint: the teacher the driver loaded; a worker that finds other weights at
            ``teacher`` refuses to evaluate instead of mixing two teachers' rewards.
    """

    teacher: str = "default"
    dataset: str = "mnist"
    data_dir: str | None = None
    teacher_arch: str | None = None
    allow_pickle: bool = False
    kind: Literal["distill", "proxy"] = "distill"
    distill_config: DistillConfig = field(default_factory=DistillConfig)
    reward_config: RewardConfig = field(default_factory=RewardConfig)
    device: str = "auto"
    inherit_weights: bool = True
    val_size: int = 5000
    eval_seed: int = 0
    teacher_fingerprint: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("distill", "proxy"):
            raise ValueError(f"kind={self.kind!r}: use 'distill' or 'proxy'")
        # Workers may start in another directory (Ray does): pin relative paths to this one.
        if self.teacher != "default" and Path(self.teacher).exists():
            object.__setattr__(self, "teacher", str(Path(self.teacher).resolve()))
        if self.data_dir is not None:
            object.__setattr__(self, "data_dir", str(Path(self.data_dir).resolve()))

    def load_teacher(self) -> Teacher:
        """Load the teacher on the CPU, checking it is the one the recipe was made with.

        Raises:
            ValueError: the file holds another teacher than the driver's (say which machine).
        """
        teacher = load_teacher(
            self.teacher,
            dataset=self.dataset,
            arch=self.teacher_arch,
            allow_pickle=self.allow_pickle,
            device="cpu",
        )
        if self.teacher_fingerprint and teacher.fingerprint != self.teacher_fingerprint:
            raise ValueError(
                f"teacher {self.teacher!r} on {socket.gethostname()} has fingerprint "
                f"{teacher.fingerprint}, but the search uses {self.teacher_fingerprint}: give every "
                "machine the same teacher file"
            )
        return teacher

    def load_data(self) -> DatasetSplits:
        """The data set students are trained and validated on."""
        # Split seed 0 is the split teacher training holds out, so validation stays unseen.
        return load_dataset(self.dataset, self.data_dir, val_size=self.val_size, seed=0)

    def build(self, teacher: Teacher | None = None, cache: RewardCache | None = None) -> Any:
        """The evaluator this recipe describes.

        Args:
            teacher: the loaded teacher, if the caller has it (otherwise it is loaded).
            cache: the measurement cache (see :meth:`open_cache`).

        Returns:
            A :class:`DistillationEvaluator` or, for ``kind="proxy"``, a :class:`ProxyEvaluator`.
        """
        teacher = teacher if teacher is not None else self.load_teacher()
        if self.kind == "proxy":
            return ProxyEvaluator(
                teacher.spec,
                teacher_accuracy=teacher.val_accuracy or 0.99,
                reward_config=self.reward_config,
                cache=cache,
            )
        return DistillationEvaluator(
            teacher,
            self.load_data(),
            self.distill_config,
            self.reward_config,
            device=self.device,
            inherit_weights=self.inherit_weights,
            cache=cache,
            seed=self.eval_seed,
        )

    def open_cache(self, path: str | os.PathLike[str] | None) -> RewardCache | None:
        """The measurement cache at ``path`` for this evaluator, or ``None``.

        The proxy is instant, so it is not cached: a database would only slow it down.
        """
        return RewardCache(Path(path)) if path and self.kind == "distill" else None


# ---- the worker side ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _WorkerFacts:
    """What the driver learns from a worker once: the teacher and the measurement context."""

    teacher_spec: NetworkSpec
    teacher_accuracy: float
    cache_context: dict[str, Any]
    context_digest: str
    host: str
    pid: int


@dataclass(frozen=True)
class _Reply:
    """One measurement, or the expected error it raised, and who measured it."""

    measurement: Measurement | None
    error: BaseException | None
    context_digest: str
    host: str
    pid: int


class _Worker:
    """The evaluator of one worker process, built at start-up and kept for the worker's life.

    A failure to build is kept and raised by every call, so it reaches the driver with its message
    (an exception in a pool initializer would only show up as a broken pool).
    """

    def __init__(self, recipe: EvaluatorRecipe, threads: int | None) -> None:
        if threads:
            torch.set_num_threads(threads)
        self._evaluator: Any = None
        self._error: Exception | None = None
        self.json_digest = ""
        try:
            self._evaluator = recipe.build()
            self.json_digest = json_digest(self._evaluator._cache_context())
        except Exception as error:
            self._error = error

    def _ready(self) -> Any:
        if self._error is not None:
            raise self._error
        return self._evaluator

    def facts(self) -> _WorkerFacts:
        evaluator = self._ready()
        return _WorkerFacts(
            teacher_spec=evaluator.teacher_spec,
            teacher_accuracy=evaluator.teacher_accuracy,
            cache_context=evaluator._cache_context(),
            context_digest=self.json_digest,
            host=socket.gethostname(),
            pid=os.getpid(),
        )

    def measure(self, student: StudentDescription) -> _Reply:
        evaluator = self._ready()
        measurement, error = None, None
        try:
            measurement = evaluator._measure(student.plan(), student)
        except EXPECTED_ERRORS as expected:
            # Returned, not raised: the driver decides what to cache, exactly as in-process.
            error = expected
        return _Reply(measurement, error, self.json_digest, socket.gethostname(), os.getpid())

    def pid(self) -> int:
        return os.getpid()


def _pool_context() -> multiprocessing.context.BaseContext:
    # Workers fork from a server process that has imported this module (torch included) but never
    # touched CUDA: safe like spawn, without paying the imports again for every worker.
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])
    return context


# The worker of this process when it is a pool worker.
_POOL_WORKER: _Worker | None = None


def _start_pool_worker(recipe: EvaluatorRecipe, threads: int | None) -> None:
    global _POOL_WORKER
    _POOL_WORKER = _Worker(recipe, threads)


def _pool_call(method: str, *args: Any) -> Any:
    assert _POOL_WORKER is not None, "not an evaluation pool worker"
    return getattr(_POOL_WORKER, method)(*args)


# ---- the driver side ----------------------------------------------------------------------------


class EvaluatorBackend(BaseEvaluator):
    """An evaluator whose measurements run on long-lived workers; the base of the back-ends.

    The driver keeps the evaluation template of :class:`~n2n_gym.evaluation.DistillationEvaluator`
    — the teacher-architecture check, the cache look-up, expected errors as results, the reward —
    and sends only cache misses to a worker. Concurrent requests for the same student share one
    measurement (the later ones are reported as cache hits, as they would be one after the other).

    Args:
        recipe: how each worker builds its evaluator.
        cache: the driver's measurement cache (``None``: no caching).
        retries: how many times a measurement whose worker died is retried on a fresh worker
            before it becomes an error result.

    Attributes:
        remote_measurements: measurements sent to workers so far (cache hits are not).
        workers_replaced: workers (or pools of them) started to replace dead ones.
    """

    def __init__(
        self, recipe: EvaluatorRecipe, *, cache: RewardCache | None = None, retries: int = 1
    ) -> None:
        if retries < 0:
            raise ValueError(f"retries={retries} must be at least 0")
        self.recipe = recipe
        self.reward_config = recipe.reward_config
        self.cache = cache
        self.retries = retries
        self.remote_measurements = 0
        self.workers_replaced = 0
        self._facts: _WorkerFacts | None = None
        self._facts_lock = threading.Lock()
        self._lock = threading.Lock()
        self._in_flight: dict[str, Future[Measurement]] = {}
        self._running = 0
        self._local = threading.local()
        self._closed = False

    # ---- what subclasses provide --------------------------------------------------------------
    @property
    def num_workers(self) -> int:
        """How many measurements can run at once."""
        raise NotImplementedError

    def _call(self, method: str, *args: Any) -> Any:
        """Run ``_Worker.<method>(*args)`` on a free worker; retry on a fresh one if it dies.

        Raises:
            WorkerDied: the worker died on every try.
        """
        raise NotImplementedError

    def _start_all(self) -> list[_WorkerFacts]:
        """Start every worker now; the facts of those that reported."""
        raise NotImplementedError

    def worker_pids(self) -> list[int]:
        """Process ids of the current workers (for monitoring)."""
        raise NotImplementedError

    def _shutdown(self) -> None:
        raise NotImplementedError

    # ---- teacher facts --------------------------------------------------------------------------
    def start(self) -> None:
        """Start the workers and build their evaluators now rather than at the first evaluation.

        Raises:
            BackendConfigError: workers could not start, or disagree on the teacher or data.
        """
        self._worker_facts()

    def _worker_facts(self) -> _WorkerFacts:
        with self._facts_lock:
            if self._facts is None:
                started = time.perf_counter()
                try:
                    facts = self._start_all()
                except WorkerDied as error:
                    raise BackendConfigError(
                        f"evaluation workers died while starting ({error}); run one evaluation "
                        "in-process (without --workers / --ray-address) to see why"
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

    def _cache_context(self) -> dict[str, Any]:
        return self._worker_facts().cache_context

    @property
    def in_flight(self) -> int:
        """Measurements currently handed to workers."""
        return self._running

    # ---- evaluation -----------------------------------------------------------------------------
    def evaluate(self, student: StudentDescription, progress: int | None = None) -> EvalResult:
        """Score one student on a worker (a cache hit is answered here); blocks until done.

        Safe to call from several threads at once: that is how evaluations run concurrently.
        Arguments, results and errors are those of
        :meth:`DistillationEvaluator.evaluate <n2n_gym.evaluation.BaseEvaluator.evaluate>`;
        a student whose workers died gives an error result with ``error_type="WorkerDied"``.
        """
        self._local.shared, self._local.owned = False, None
        start = time.perf_counter()
        try:
            result = super().evaluate(student, progress)
        except WorkerDied as error:
            logger.warning("student %s: %s", student.key, error)
            measurement = error_measurement(error, student.plan())
            return self._result(student, measurement, progress, start, cache_hit=False)
        finally:
            # Only now is the measurement in the cache: until then, requests for the same student
            # wait for this one instead of measuring it again.
            if self._local.owned is not None:
                with self._lock:
                    del self._in_flight[self._local.owned]
        if self._local.shared:
            result = replace(result, cache_hit=True)
        return result

    def evaluate_many(
        self, students: Iterable[StudentDescription], progress: int | None = None
    ) -> list[EvalResult]:
        """Score several students concurrently, on as many workers as are free; same order."""
        students = list(students)
        if len(students) <= 1:
            return [self.evaluate(student, progress) for student in students]
        # The threads only wait on workers; two per worker keep every worker fed.
        threads = min(len(students), 2 * max(self.num_workers, 1))
        with ThreadPoolExecutor(threads, thread_name_prefix="evaluate") as pool:
            return list(pool.map(lambda s: self.evaluate(s, progress), students))

    def _measure(self, plan: StudentPlan, student: StudentDescription) -> Measurement:
        key = self._cache_key(plan)
        with self._lock:
            shared = self._in_flight.get(key)
            if shared is None:
                mine: Future[Measurement] = Future()
                self._in_flight[key] = mine
                self._local.owned = key
        if shared is not None:
            self._local.shared = True
            return shared.result()
        try:
            measurement = self._measure_on_worker(student)
        except BaseException as error:
            mine.set_exception(error)
            raise
        mine.set_result(measurement)
        return measurement

    def _measure_on_worker(self, student: StudentDescription) -> Measurement:
        expected = self._worker_facts().context_digest
        with self._lock:
            self.remote_measurements += 1
            self._running += 1
        try:
            reply: _Reply = self._call("measure", student)
        finally:
            with self._lock:
                self._running -= 1
        if reply.context_digest != expected:
            raise BackendConfigError(
                f"the worker on {reply.host} (pid {reply.pid}) evaluates with another teacher, "
                "data or device than the others; give every machine the same teacher file and "
                "data folder"
            )
        if reply.error is not None:
            raise reply.error
        assert reply.measurement is not None
        return reply.measurement

    # ---- life cycle -----------------------------------------------------------------------------
    def close(self) -> None:
        """Stop the workers. Cache hits are still answered; anything else raises."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._shutdown()

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"{type(self).__name__} is closed; make a new one")

    def __enter__(self) -> EvaluatorBackend:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        raise TypeError(
            f"a {type(self).__name__} owns worker processes and cannot be pickled: share it "
            "between threads (n2n_gym.envs.vector.ThreadedVecEnv), not subprocesses"
        )


class ProcessPoolBackend(EvaluatorBackend):
    """Evaluations on ``workers`` long-lived processes of this machine.

    Workers start from a fork server (safe with CUDA, like ``spawn``) at the first evaluation or
    :meth:`start`, and each builds the evaluator once. A worker that dies breaks a ``ProcessPoolExecutor`` for every
    evaluation in flight; the pool is then replaced and those evaluations retried on it.

    Args:
        recipe: how each worker builds its evaluator.
        workers: worker processes.
        cache: the driver's measurement cache.
        retries: retries of a measurement whose worker died.
        threads: torch CPU threads per worker (default: this machine's cores divided among the
            workers, so they do not oversubscribe it).
    """

    def __init__(
        self,
        recipe: EvaluatorRecipe,
        workers: int,
        *,
        cache: RewardCache | None = None,
        retries: int = 1,
        threads: int | None = None,
    ) -> None:
        if workers < 1:
            raise BackendConfigError(f"--workers {workers}: a process pool needs at least 1")
        super().__init__(recipe, cache=cache, retries=retries)
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
            mp_context=_pool_context(),
            initializer=_start_pool_worker,
            initargs=(self.recipe, self.threads),
        )

    def _start_all(self) -> list[_WorkerFacts]:
        # One task per worker makes the executor start them all; each builds at start-up.
        with self._lock:
            self._check_open()
            executor = self._executor
        try:
            futures = [executor.submit(_pool_call, "facts") for _ in range(self.workers)]
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
                future = executor.submit(_pool_call, method, *args)
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


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as error:
        raise BackendConfigError(
            "--ray-address needs Ray: install it with `pip install .[ray]` (or "
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
                f"--device {device} distils on GPUs, but {summary}: add GPU nodes "
                "(`ray start --address=HEAD:6379 --num-gpus=N`) or pass --device cpu"
            )
        count = workers or int(gpus)
        # Several actors share a GPU when asked for more workers than GPUs.
        per_gpu = -(-count // int(gpus))
        return "cuda", {"num_gpus": 1.0 / per_gpu, "num_cpus": 1.0}, count
    count = workers or int(cpus)
    if count < 1 or count > cpus:
        raise BackendConfigError(
            f"{count} CPU evaluation workers need {count} CPUs, but {summary}: pass "
            f"--workers {int(cpus)} or fewer, or add nodes (`ray start --address=HEAD:6379`)"
        )
    # "auto" would pick CUDA on a node whose GPUs Ray does not manage: stay on the CPU slots.
    return "cpu" if device == "auto" else device, {"num_cpus": 1.0}, count


class _RayWorker(_Worker):
    """The Ray actor: a :class:`_Worker` on one CPU slot or GPU of the cluster."""


class RayBackend(EvaluatorBackend):
    """Evaluations on long-lived Ray actors: one per GPU on CUDA, otherwise one per CPU slot.

    Connects to ``address`` unless Ray is already initialised in this process. Before creating
    GPU actors the cluster's resources are checked, since Ray would otherwise wait forever for
    GPUs it does not have. The package must be importable on every node, and ``teacher`` and
    ``data_dir`` readable at the same paths.

    Args:
        recipe: how each actor builds its evaluator; ``device="auto"`` means CUDA when the
            cluster has GPUs.
        address: ``ray.init`` address: ``"auto"`` or ``"HOST:6379"`` (a running cluster),
            ``"ray://HOST:10001"`` (Ray client), ``"local"`` (start Ray here), ``None`` (Ray's
            default: ``RAY_ADDRESS``, a running local cluster, else a new one).
        workers: actors to start (default: one per GPU, or one per CPU slot).
        cache: the driver's measurement cache.
        retries: retries of a measurement whose actor died.
    """

    def __init__(
        self,
        recipe: EvaluatorRecipe,
        address: str | None = None,
        *,
        workers: int | None = None,
        cache: RewardCache | None = None,
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
        device, resources, count = _ray_placement(recipe.device, ray.cluster_resources(), workers)
        super().__init__(replace(recipe, device=device), cache=cache, retries=retries)
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
        actor = self._actor_class.remote(self.recipe, 1)
        # Asked now, answered as soon as the actor is up: later it may be busy measuring.
        self._pid_refs[id(actor)] = actor.pid.remote()
        return actor

    def _start_all(self) -> list[_WorkerFacts]:
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


def make_backend(
    recipe: EvaluatorRecipe,
    *,
    workers: int = 0,
    ray_address: str | None = None,
    cache: RewardCache | None = None,
) -> EvaluatorBackend:
    """The back-end the command line asks for: Ray when given an address, else a process pool.

    Args:
        recipe: how workers build their evaluator.
        workers: pool processes; with Ray the number of actors (0: one per GPU or CPU slot).
        ray_address: a Ray address (see :class:`RayBackend`), or ``None`` for a process pool.
        cache: the driver's measurement cache.

    Raises:
        BackendConfigError: neither asked for, Ray missing, or the cluster cannot host the workers.
    """
    if ray_address:
        return RayBackend(recipe, ray_address, workers=workers or None, cache=cache)
    if workers < 1:
        raise BackendConfigError("pass --workers N (N >= 1) or --ray-address ADDRESS")
    return ProcessPoolBackend(recipe, workers, cache=cache)
