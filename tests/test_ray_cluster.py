"""Ray on a simulated multi-node cluster (``ray.cluster_utils.Cluster``, CPU only).

The nodes share this machine's disk, so "data only on the driver" is simulated by moving the
teacher file and the image folder away after the driver has loaded them, before any actor starts.
"""

from __future__ import annotations

import shutil
import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image

from n2n_gym.arch import StudentDescription, unit_rules
from n2n_gym.backends import RayBackend, WorkersLost
from n2n_gym.distill import DistillConfig
from n2n_gym.evaluation import Evaluator
from n2n_gym.task import Task, TaskError
from n2n_gym.teachers import train_teacher

ray = pytest.importorskip("ray")
cluster_utils = pytest.importorskip("ray.cluster_utils")

pytestmark = pytest.mark.expensive

FIDELITY = DistillConfig(transfer_size=None, batch_size=16, lr=2e-3, eval_size=None)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """An image folder, a teacher trained on it, and the task and students of a search on it."""
    root = tmp_path_factory.mktemp("driver")
    rng = np.random.default_rng(0)
    for split, count in (("train", 30), ("test", 8)):
        for label, name in enumerate(("cat", "dog", "fox")):
            folder = root / "images" / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                level = 40 + 80 * label
                pixels = rng.integers(level - 20, level + 20, size=(16, 16), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    teacher = root / "teacher.pt"
    train_teacher(
        "small_vgg",
        "imagefolder",
        data_dir=root / "images",
        out=teacher,
        epochs=2,
        device="cpu",
        progress=False,
    )
    task = Task(
        teacher=str(teacher),
        dataset="imagefolder",
        data_dir=str(root / "images"),
        fidelity=FIDELITY,
        device="cpu",
    )
    spec = task.teacher_spec
    removable = [i for i, rule in enumerate(unit_rules(spec)) if rule.removable]
    students = []
    for drop in (
        removable[:1],
        removable[1:2],
        removable[:2],
        removable[2:4],
        removable[-1:],
        removable[::2],
    ):
        ratios = tuple(0.0 if i in drop else 1.0 for i in range(spec.num_units))
        students.append(StudentDescription(spec, ratios))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as every actor
    try:
        evaluator = task.build_evaluator()
        reference = {s.key: evaluator.evaluate(s) for s in students}
    finally:
        torch.set_num_threads(threads)
    assert all(r.ok for r in reference.values())
    return root, task, students, reference


# A removed node is noticed after about a second instead of Ray's default ~15 s (its health
# checks): what follows a loss is the same, the tests wait less for it.
FAST_HEALTH_CHECKS = {
    "health_check_initial_delay_ms": 0,
    "health_check_period_ms": 300,
    "health_check_timeout_ms": 1000,
    "health_check_failure_threshold": 3,
}


def start_cluster(head_cpus: int, *node_cpus: int):
    cluster = cluster_utils.Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": head_cpus,
            "include_dashboard": False,
            "_system_config": FAST_HEALTH_CHECKS,
        },
    )
    nodes = [cluster.add_node(num_cpus=cpus) for cpus in node_cpus]
    ray.init(address=cluster.address, logging_level="WARNING")
    return cluster, nodes


@pytest.fixture
def cluster_factory():
    made = []

    def make(head_cpus: int, *node_cpus: int):
        made.append(start_cluster(head_cpus, *node_cpus))
        return made[-1]

    yield make
    ray.shutdown()
    for cluster, _ in made:
        cluster.shutdown()


def measured(result):
    return result.accuracy, result.params, result.reward, result.error_type


def evaluate_in_thread(evaluator, students):
    results: list = []
    errors: list = []

    def work():
        try:
            results.extend(evaluator.evaluate_many(students))
        except Exception as error:
            errors.append(error)

    thread = threading.Thread(target=work)
    thread.start()
    return thread, results, errors


def wait_for(condition, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_nodes_need_only_the_package_and_give_the_in_process_rewards(world, cluster_factory):
    root, task, students, reference = world
    cluster_factory(1, 1)  # the head and a second node, one slot each
    backend = RayBackend(task)  # the driver loads teacher and data into the object store
    moved = root.parent / (root.name + "-away")
    shutil.move(root, moved)  # from here on only the object store has them
    try:
        with backend:
            backend.start()
            results = Evaluator(backend).evaluate_many(students)
            assert backend.num_workers == 2
        # reading the paths instead needs them wherever the task is read: a clear error
        with pytest.raises(TaskError, match="data_dir"):
            RayBackend(task, data="paths").start()
    finally:
        shutil.move(moved, root)
    for result in results:
        assert measured(result) == measured(reference[result.student_key])


def test_a_node_removed_mid_search_loses_no_evaluation(world, cluster_factory):
    _, task, students, reference = world
    cluster, nodes = cluster_factory(1, 1, 1)
    with RayBackend(task) as backend:
        backend.start()
        assert backend.num_workers == 3
        thread, results, errors = evaluate_in_thread(Evaluator(backend), students)
        wait_for(lambda: backend.in_flight >= 3)
        cluster.remove_node(nodes[0])
        thread.join(timeout=300)
        assert not thread.is_alive() and not errors
        # every student ends with its measurement (retried on a survivor) or a recorded error
        assert len(results) == len(students)
        for result in results:
            assert result.ok or result.error_type == "WorkerDied"
            if result.ok:
                assert measured(result) == measured(reference[result.student_key])
        assert sum(r.ok for r in results) >= len(students) - 1
        assert backend.num_workers == 2  # the lost node's slot is gone; the search went on
        assert Evaluator(backend).evaluate(students[0]).ok


def test_a_node_that_joins_mid_search_is_used(world, cluster_factory):
    _, task, students, _ = world
    cluster, _ = cluster_factory(1)
    with RayBackend(task) as backend:
        evaluator = Evaluator(backend)
        assert all(r.ok for r in evaluator.evaluate_many(students[:2]))
        assert backend.num_workers == 1
        cluster.add_node(num_cpus=1)
        wait_for(lambda: ray.cluster_resources().get("CPU", 0) >= 2)
        time.sleep(2.5)  # the driver looks for free slots every 2 s
        assert all(r.ok for r in evaluator.evaluate_many(students[2:]))
        assert backend.num_workers == 2 and len(set(backend.worker_pids())) == 2


def test_when_every_worker_is_gone_the_search_stops_with_one_clear_error(world, cluster_factory):
    _, task, students, _ = world
    cluster, nodes = cluster_factory(0, 1)  # the head runs no actor
    with RayBackend(task) as backend:
        backend.start()
        thread, _, errors = evaluate_in_thread(Evaluator(backend), students)
        wait_for(lambda: backend.in_flight >= 1)
        cluster.remove_node(nodes[0])
        thread.join(timeout=300)
        assert not thread.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], WorkersLost)
    assert "--resume" in str(errors[0])


def test_a_search_whose_workers_all_vanish_stops_and_resumes_with_nothing_lost(
    world, cluster_factory, tmp_path, capsys
):
    import json

    import train_agent
    from n2n_gym.runs import read_evaluations

    _, task, _, _ = world
    cluster, nodes = cluster_factory(0, 1)
    out = tmp_path / "run"
    kwargs = {
        "teacher": task.teacher,
        "dataset": "imagefolder",
        "data_dir": task.data_dir,
        "fidelity": task.fidelity.to_dict(),
    }
    argv = ["--algo", "random", "--budget", "8", "--out", str(out), "--ray-address", "auto"]
    argv += ["--env-kwargs", json.dumps(kwargs), "--checkpoint-every", "1"]
    status: list[int] = []
    search = threading.Thread(target=lambda: status.append(train_agent.main(argv)))
    search.start()
    wait_for(lambda: len(read_evaluations(out)) >= 2, seconds=120)
    cluster.remove_node(nodes[0])
    search.join(timeout=300)
    assert status == [1]
    assert "every Ray evaluation actor is gone" in capsys.readouterr().out
    done = read_evaluations(out)
    assert 2 <= len(done) < 8
    cluster.add_node(num_cpus=1)
    assert train_agent.main([*argv, "--resume"]) == 0
    records = read_evaluations(out)
    assert records[: len(done)] == done  # nothing measured before the loss is lost or redone
    assert len({r["student_key"] for r in records}) == 8
