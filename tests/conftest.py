"""Shared fixtures: a table over the default teacher's whole joint grid, answered by the proxy.

Searches and benchmark statistics need a table with thousands of students and a known optimum
that costs nothing to build; the proxy measurer (a smooth, deterministic accuracy of the
architecture) gives one in seconds. It is written in the shipped tables' format, for the default
task, so ``gymnasium.make("N2NJoint-Tab-v0", table=path)`` uses it as it would the shipped one.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
from filelock import FileLock

from n2n_gym.grid import joint_grid
from n2n_gym.measure import ProxyMeasurer
from n2n_gym.table import Table, TableRow, student_key, world_fingerprint
from n2n_gym.task import Task

if os.environ.get("PYTEST_XDIST_WORKER"):
    # Each test process gets one core's share: torch's default (every core) in each of them
    # would oversubscribe the machine several times over, and its idle threads spin. The
    # commands a test runs, in this process or in a child, default to OMP_NUM_THREADS too.
    import torch

    share = max(1, (os.cpu_count() or 2) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    os.environ["OMP_NUM_THREADS"] = str(share)
    torch.set_num_threads(share)

# The files whose tests take minutes, longest first (measured with `make test`). Its test
# processes (`--dist loadfile --no-loadscope-reorder`) each take the next file in this order as
# they free up, so the long files start first and the short ones fill in at the end: the two
# processes then finish together (in pytest-xdist's own order, by test count, 39 s apart).
LONGEST_FILES = (
    "test_benchmark.py",
    "test_table.py",
    "test_ray_cluster.py",
    "test_docs.py",
    "test_backends.py",
    "test_reinforce.py",
    "test_finalize.py",
    "test_baselines.py",
    "test_rl_zoo.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: index for index, name in enumerate(LONGEST_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: in-file order kept


def build_proxy_table(path: Path) -> Table:
    task = Task()
    teacher = task.load_teacher()
    task = task.resolved(teacher)
    measurer = ProxyMeasurer(teacher.spec)
    grid = joint_grid(teacher.spec)
    rows = {}
    for student in grid.students():
        plan = student.plan()
        measurement = measurer.measure(plan, student)
        # A simulated cost that grows with the student: bigger students take longer to distil.
        seconds = 1.0 + measurement.params / 50_000
        curve = tuple(
            (images, seconds * k / 4, measurement.accuracy * (1 - 0.05 * (4 - k)))
            for k, images in enumerate((2048, 4096, 6144, 8192), 1)
        )
        measurement = replace(measurement, seconds=seconds, curve=curve)
        key = student_key(plan)
        rows[key] = TableRow(key, student.ratios, measurement, latency_ms=0.1)
    table = Table(
        name=path.name.removesuffix(".json.gz"),
        teacher=teacher.spec,
        teacher_accuracy=measurer.teacher_accuracy,
        teacher_fingerprint=teacher.fingerprint,
        world=world_fingerprint(task, teacher.fingerprint),
        task={k: v for k, v in task.to_dict().items() if k not in ("cache_path", "table")},
        context={"measurer": "proxy"},
        grid=grid,
        rows=rows,
        build={"students": len(rows), "repeat_seed": 1, "curve_points": 4},
    )
    table.save(path)
    return table


@pytest.fixture(scope="session")
def proxy_table(tmp_path_factory) -> Path:
    """Path of the proxy table over the default teacher's 2,187 joint students."""
    path = tmp_path_factory.mktemp("proxy_table") / "proxy-joint.json.gz"
    build_proxy_table(path)
    return path


@pytest.fixture(scope="session")
def fashion_mnist_dir() -> Path:
    """A folder with Fashion-MNIST in torchvision's layout (``N2N_TEST_DATA_DIR``); skips without it.

    The images are not on PyPI, so tests that need them run where someone put them there, e.g.
    Debian's ``dataset-fashion-mnist`` unpacked into ``$N2N_TEST_DATA_DIR/FashionMNIST/raw``.
    """
    root = Path(os.environ.get("N2N_TEST_DATA_DIR", Path(__file__).resolve().parents[2] / "data"))
    if not (root / "FashionMNIST" / "raw" / "t10k-images-idx3-ubyte").is_file():
        pytest.skip(f"needs Fashion-MNIST images under {root}/FashionMNIST/raw (N2N_TEST_DATA_DIR)")
    return root


# A real but tiny reward (enough images that students learn something) and final training.
TINY_REWARD = '{"fidelity": {"transfer_size": 1024, "eval_size": 500}}'
TINY_FINAL = ["--epochs", "2", "--transfer-size", "2048"]


@pytest.fixture(scope="session")
def finished_search(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny real search (random, 4 students, real distillation rewards) and its best student
    finished by ``evaluate.py`` (2 epochs on 2,048 images): (run folder, finished folder).

    Built once per test session and shared by its test processes; treat both as read-only (copy
    one to change it).
    """
    import evaluate
    import train_agent

    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # the folder the session's test processes share
    root = base / "finished-search"
    run, finished = root / "run", root / "finished"
    with FileLock(f"{root}.lock"):
        if not (finished / "report.json").is_file():
            shutil.rmtree(root, ignore_errors=True)  # a build that failed part way
            argv = ["--algo", "random", "--budget", "4", "--out", str(run)]
            assert train_agent.main([*argv, "--env-kwargs", TINY_REWARD]) == 0
            assert evaluate.main([str(run), "--out", str(finished), *TINY_FINAL]) == 0
    return run, finished
