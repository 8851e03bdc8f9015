"""Evaluation back-ends: same rewards as in-process, cache hits in the driver, dead workers, Ray, CLI."""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from stable_baselines3.common.vec_env import DummyVecEnv

import n2n_gym
import train_agent
from n2n_gym.arch import StudentDescription
from n2n_gym.backends import BackendConfigError, ProcessPoolBackend, RayBackend, ThreadBackend
from n2n_gym.cache import MeasurementCache
from n2n_gym.distill import DistillConfig
from n2n_gym.envs.vector import ThreadedVecEnv
from n2n_gym.evaluation import EvalResult, Evaluator
from n2n_gym.measure import Measurer, ProxyMeasurer
from n2n_gym.runs import read_evaluations
from n2n_gym.task import Task, TaskError
from n2n_gym.teachers import small_vgg

SPEC = small_vgg()
# 16 optimiser steps per student: well above chance (0.1) in a fraction of a second.
FIDELITY = {"transfer_size": 512, "batch_size": 32, "lr": 2e-3, "eval_size": 500}
TASK = Task(fidelity=DistillConfig(**FIDELITY), device="cpu", val_size=500)
PROXY = TASK.replace(measurer="proxy")
STUDENTS = [
    StudentDescription(SPEC, ratios)
    for ratios in (
        (1, 0, 1, 0, 1, 0, 1, 1, 1),
        (1, 0, 0, 0, 1, 0, 1, 1, 1),
        (1, 1, 1, 1, 1, 1, 0, 1, 1),
        (1, 1, 0, 1, 1, 0, 1, 1, 1),
    )
]
# Workers distil on one torch thread each; CPU results can depend on the thread count, so the
# in-process reference uses one thread too and the comparison is exact.
THREADS = 1


def measured(result: EvalResult) -> tuple:
    return result.accuracy, result.params, result.flops, result.reward, result.error_type


@pytest.fixture(scope="module")
def reference() -> dict[str, EvalResult]:
    """In-process results of STUDENTS with the workers' thread count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        evaluator = TASK.build_evaluator()
        return {s.key: evaluator.evaluate(s) for s in STUDENTS}
    finally:
        torch.set_num_threads(threads)


def assert_same_as_reference(results: list[EvalResult], reference: dict[str, EvalResult]):
    assert [r.student_key for r in results] == [s.key for s in STUDENTS]
    for result in results:
        assert result.ok, result.error
        assert measured(result) == measured(reference[result.student_key])
    assert max(r.accuracy for r in results) > 0.3  # chance is 0.1


def kill_a_worker_mid_evaluation(backend) -> tuple[list[EvalResult], int]:
    """Evaluate STUDENTS in a thread and SIGKILL a worker as soon as work is handed out."""
    results: list[EvalResult] = []
    evaluator = Evaluator(backend)
    search = threading.Thread(target=lambda: results.extend(evaluator.evaluate_many(STUDENTS)))
    search.start()
    deadline = time.monotonic() + 60
    while backend.in_flight == 0 and search.is_alive() and time.monotonic() < deadline:
        time.sleep(0.005)
    assert backend.in_flight > 0, "no evaluation reached a worker"
    victim = backend.worker_pids()[0]
    os.kill(victim, signal.SIGKILL)
    search.join(timeout=120)
    assert not search.is_alive()
    return results, victim


# ---- the local process pool ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def pool():
    with ProcessPoolBackend(TASK, 2, threads=THREADS) as backend:
        yield backend


@pytest.mark.expensive
def test_pool_gives_the_same_rewards_as_in_process(pool, reference):
    assert isinstance(pool, Measurer)
    results = Evaluator(pool).evaluate_many(STUDENTS)
    assert_same_as_reference(results, reference)
    assert len(pool.worker_pids()) == 2 and pool.remote_measurements == len(STUDENTS)
    assert pool.teacher_accuracy > 0.95 and pool.teacher_spec == SPEC


@pytest.mark.expensive
def test_killing_a_pool_worker_mid_search_retries_its_students(pool, reference):
    replaced = pool.workers_replaced
    results, victim = kill_a_worker_mid_evaluation(pool)
    # The broken pool was replaced and every interrupted student retried: nothing lost.
    assert_same_as_reference(results, reference)
    assert pool.workers_replaced == replaced + 1 and victim not in pool.worker_pids()
    assert Evaluator(pool).evaluate(STUDENTS[0]).ok  # and the search goes on


_POOL_MAKER = """
import os, sys, time
from concurrent.futures import ProcessPoolExecutor
from n2n_gym.parent_watch import exit_with_parent, worker_context

pool = ProcessPoolExecutor(
    1, mp_context=worker_context(), initializer=exit_with_parent, initargs=(os.getpid(), 0.1)
)
print(pool.submit(os.getpid).result(), flush=True)
pool.submit(time.sleep, 600)  # a worker busy with a long job
time.sleep(600)
"""


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads processes from /proc")
def test_a_pool_worker_ends_with_the_process_that_made_the_pool():
    """A worker forked from the fork server has that server as its parent, and the server lives
    as long as its workers do: the worker watches the process that made the pool."""
    import subprocess
    import sys

    maker = subprocess.Popen([sys.executable, "-c", _POOL_MAKER], stdout=subprocess.PIPE, text=True)
    try:
        worker = int(maker.stdout.readline())
        assert Path(f"/proc/{worker}").exists()
    finally:
        maker.kill()
        maker.wait()
    deadline = time.monotonic() + 20
    while Path(f"/proc/{worker}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    if Path(f"/proc/{worker}").exists():
        os.kill(worker, signal.SIGKILL)
        pytest.fail("the pool worker outlived the process that made the pool")


def test_cache_hits_and_repeated_students_stay_in_the_driver(tmp_path):
    backend = ProcessPoolBackend(PROXY, 1)
    evaluator = Evaluator(backend, cache=MeasurementCache(tmp_path / "rewards.sqlite"))
    first = evaluator.evaluate(STUDENTS[0])
    again = evaluator.evaluate(STUDENTS[0])
    assert not first.cache_hit and again.cache_hit and again.reward == first.reward
    assert backend.remote_measurements == 1
    # the same student proposed three times at once is measured once
    batch = evaluator.evaluate_many([STUDENTS[1]] * 3)
    assert backend.remote_measurements == 2 and sum(r.cache_hit for r in batch) == 2
    assert len({r.reward for r in batch}) == 1
    backend.close()  # no workers left: hits are still answered, anything else is refused
    assert evaluator.evaluate(STUDENTS[0]).cache_hit
    with pytest.raises(RuntimeError, match="closed"):
        evaluator.evaluate(STUDENTS[2])


@pytest.mark.expensive
def test_without_retries_a_dead_worker_gives_error_results_and_the_search_goes_on(
    pool, reference, monkeypatch
):
    monkeypatch.setattr(pool, "retries", 0)
    replaced = pool.workers_replaced
    results, _ = kill_a_worker_mid_evaluation(pool)
    died = [r for r in results if r.error_type == "WorkerDied"]
    assert died  # at least the student the worker was distilling
    for result in died:
        assert result.reward == -1.0 and not result.cache_hit and result.params is not None
    for result in results:
        assert result in died or measured(result) == measured(reference[result.student_key])
    assert pool.workers_replaced == replaced + 1
    assert measured(Evaluator(pool).evaluate(STUDENTS[0])) == measured(reference[STUDENTS[0].key])


def test_a_worker_that_cannot_build_its_measurer_says_why(tmp_path):
    teacher = tmp_path / "teacher.pt"
    shutil.copy(Path(n2n_gym.__file__).parent / "weights" / "small_vgg_mnist.pt", teacher)
    task = PROXY.replace(teacher=str(teacher), measurer="distill")
    teacher.unlink()  # gone between configuration and the workers' start
    with ProcessPoolBackend(task, 1) as backend:
        # the worker's own error, with its message, not a bare "process pool is broken"
        with pytest.raises(TaskError, match=r"teacher.pt.*does not exist"):
            backend.start()
        assert backend.workers_replaced == 0


# ---- threads of one process sharing a measurer --------------------------------------------------


@pytest.mark.expensive
def test_thread_backend_measures_concurrently_bit_for_bit_as_in_process(reference):
    threads = torch.get_num_threads()
    try:
        with ThreadBackend(TASK, 2) as backend:
            results = Evaluator(backend).evaluate_many(STUDENTS)
            assert backend.remote_measurements == len(STUDENTS)
            assert backend.worker_pids() == [os.getpid()]
    finally:
        torch.set_num_threads(threads)
    assert_same_as_reference(results, reference)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_thread_backend_keeps_several_students_in_flight_on_one_gpu():
    task = TASK.replace(device="cuda")
    in_process = task.build_evaluator().evaluate_many(STUDENTS)
    with ThreadBackend(task, 4) as backend:
        streams = []
        backend.start()
        while not backend._slots.empty():
            streams.append(backend._slots.get())
        for stream in streams:
            backend._slots.put(stream)
        assert len({id(s) for s in streams}) == 4 and all(s is not None for s in streams)
        results = Evaluator(backend).evaluate_many(STUDENTS)
    assert all(r.ok for r in results) and max(r.accuracy for r in results) > 0.3
    # bf16 on CUDA is not bitwise reproducible; concurrent streams agree with one at a time closely
    for ours, alone in zip(results, in_process, strict=True):
        assert ours.accuracy == pytest.approx(alone.accuracy, abs=0.05)


def test_concurrent_distillations_leave_the_global_generator_as_they_found_it():
    from torch import nn

    from n2n_gym.distill import TeacherTargets, distill

    x = torch.randn(256, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    teacher = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    targets = TeacherTargets.compute(
        teacher,
        x,
        torch.zeros(256, dtype=torch.long),
        DistillConfig(transfer_size=None, batch_size=32),
        "cpu",
    )

    def student(dropout: bool) -> nn.Module:
        torch.manual_seed(0)
        layers = [nn.Flatten(), nn.Linear(784, 32), nn.ReLU()]
        return nn.Sequential(*layers, *([nn.Dropout(0.5)] if dropout else []), nn.Linear(32, 10))

    def train(module):
        distill(
            module,
            targets.logits,
            targets.inputs,
            DistillConfig(transfer_size=None, batch_size=32, epochs=2),
            "cpu",
        )
        return torch.cat([p.detach().flatten() for p in module.parameters()])

    alone = [train(student(d)) for d in (True, False, True)]
    torch.manual_seed(123)
    state = torch.get_rng_state()
    modules = [student(d) for d in (True, False, True)]
    torch.set_rng_state(state)
    outputs: list = [None] * 3
    workers = [
        threading.Thread(target=lambda i=i: outputs.__setitem__(i, train(modules[i])))
        for i in range(3)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    # each student, dropout or not, trained as it does alone; the caller's random state is intact
    assert all(torch.equal(a, b) for a, b in zip(alone, outputs, strict=True))
    assert torch.equal(torch.get_rng_state(), state)


# ---- threads that step environments -------------------------------------------------------------


class SlowMeasurer(ProxyMeasurer):
    """The proxy, taking 0.2 s per student and counting how many measurements overlap."""

    def __init__(self) -> None:
        super().__init__(SPEC)
        self.running = self.most = 0
        self.lock = threading.Lock()

    def measure(self, plan, student):
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
        time.sleep(0.2)
        with self.lock:
            self.running -= 1
        return super().measure(plan, student)


def play_one_episode(vec_cls, measurer: SlowMeasurer, n_envs: int = 3):
    evaluator = Evaluator(measurer)
    make = lambda: gym.make("N2NRemoval-v2", evaluator=evaluator)  # noqa: E731
    venv = vec_cls([make] * n_envs)
    venv.seed(0)
    venv.reset()
    rng = np.random.default_rng(0)
    while True:
        masks = np.stack(venv.env_method("action_masks"))
        actions = [int(rng.choice(np.flatnonzero(mask))) for mask in masks]
        _, rewards, dones, infos = venv.step(np.array(actions))
        if dones.all():
            venv.close()
            return rewards, [info["student_key"] for info in infos]


def test_threaded_vec_env_evaluates_the_batch_concurrently_with_the_same_results():
    threaded, serial = SlowMeasurer(), SlowMeasurer()
    rewards, students = play_one_episode(ThreadedVecEnv, threaded)
    # every distinct student's measurement overlapped (a repeated one waits for its twin)
    assert threaded.most == len(set(students)) >= 2
    expected_rewards, expected_students = play_one_episode(DummyVecEnv, serial)
    assert serial.most == 1
    assert students == expected_students and rewards.tolist() == expected_rewards.tolist()


# ---- Ray ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_session():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def ray_backend(ray_session):
    with RayBackend(TASK) as backend:  # one actor per CPU slot
        yield backend


def test_ray_refuses_gpus_and_workers_the_cluster_does_not_have(ray_session):
    with pytest.raises(BackendConfigError, match=r"device='cuda'.*0 GPUs.*device='cpu'"):
        RayBackend(TASK.replace(device="cuda"))
    with pytest.raises(BackendConfigError, match="workers=2"):
        RayBackend(TASK, workers=3)


@pytest.mark.expensive
def test_ray_gives_the_same_rewards_as_in_process(ray_backend, reference):
    assert ray_backend.num_workers == 2
    assert_same_as_reference(Evaluator(ray_backend).evaluate_many(STUDENTS), reference)


@pytest.mark.expensive
def test_killing_a_ray_actor_mid_search_retries_its_students(ray_backend, reference):
    results, victim = kill_a_worker_mid_evaluation(ray_backend)
    assert_same_as_reference(results, reference)
    assert ray_backend.workers_replaced == 1 and victim not in ray_backend.worker_pids()
    assert ray_backend.num_workers == 2


# ---- the command line ---------------------------------------------------------------------------


def test_workers_are_separate_from_environments(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    args = train_agent.parse_args(["--workers", "2"])
    assert (args.workers, args.n_envs, args.ray_address) == (2, None, None)
    assert train_agent.parse_args(["--n-envs", "3", "--workers", "2"]).n_envs == 3
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    assert train_agent.parse_args([]).ray_address == "10.0.0.1:6379"
    with pytest.raises(SystemExit):
        train_agent.parse_args(["--workers", "-1"])


@pytest.mark.expensive
def test_train_agent_with_two_workers_end_to_end(tmp_path, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    out = tmp_path / "run"
    env_kwargs = json.dumps({"fidelity": FIDELITY, "val_size": 500, "device": "cpu"})
    argv = ["--algo", "reinforce", "--budget", "5", "--workers", "2", "--out", str(out)]
    assert train_agent.main([*argv, "--env-kwargs", env_kwargs]) == 0
    records = read_evaluations(out)
    # REINFORCE batches of five environments, evaluated together on the two workers, until five
    # distinct students (a repeat in the first batch takes a second batch)
    assert [r["evaluation"] for r in records] == list(range(1, len(records) + 1))
    assert len(records) % 5 == 0
    assert all(r["error"] is None for r in records)
    assert max(r["accuracy"] for r in records) > 0.3
    assert json.loads((out / "summary.json").read_text())["distinct_students"] >= 5
