"""Students per second: evaluation in-process against a process pool and Ray with 1 and N workers.

Every configuration scores the same distinct students at the same fidelity (no cache), one batch
submitted at once (``Evaluator.evaluate_many``), which is how a search's concurrent episodes reach
a back-end. The in-process baseline is ``task.build_evaluator()``; each back-end is a measurer
behind ``Evaluator(backend)``. Workers are started and have built their measurers (teacher, data,
teacher logits) before the clock starts; their start-up is reported in its own column. By default
the in-process baseline uses all torch threads and a pool of ``w`` workers gives each ``cores / w``
threads (Ray actors one); ``--threads 1`` gives every process one thread, which isolates the
effect of the worker count (and avoids the slow-down of several torch threads on an oversubscribed
machine).

    python bench/bench_backends.py                      # 8 students, 1 and 2 workers, pool and Ray
    python bench/bench_backends.py --threads 1          # one thread everywhere: scaling by workers
    python bench/bench_backends.py --students 16 --workers 1,2,4 --backends pool

On a shared machine the load changes while it runs: compare ratios from one run, and read the
load averages printed before and after.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import time
from collections.abc import Sequence

import torch
from reward_fidelity import random_removal_students
from rich.console import Console
from rich.table import Table

from n2n_gym.arch import StudentDescription
from n2n_gym.backends import ProcessPoolBackend, RayBackend, WorkerBackend
from n2n_gym.distill import DistillConfig
from n2n_gym.evaluation import EvalResult, Evaluator
from n2n_gym.task import Task


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f}, {five:.2f}, {fifteen:.2f} on {os.cpu_count()} cores"


def time_in_process(
    task: Task, students: Sequence[StudentDescription]
) -> tuple[float, float, list[EvalResult]]:
    """(start-up seconds, evaluation seconds, results) of the plain in-process evaluator."""
    start = time.perf_counter()
    measurer = task.build_measurer()
    _ = measurer.teacher_accuracy, measurer.targets
    evaluator = task.build_evaluator(measurer)
    startup = time.perf_counter() - start
    start = time.perf_counter()
    results = evaluator.evaluate_many(students)
    return startup, time.perf_counter() - start, results


def time_backend(
    backend: WorkerBackend, students: Sequence[StudentDescription]
) -> tuple[float, float, list[EvalResult]]:
    """(start-up seconds, evaluation seconds, results) of a back-end, closed afterwards."""
    with backend:
        start = time.perf_counter()
        backend.start()
        startup = time.perf_counter() - start
        evaluator = Evaluator(backend)
        start = time.perf_counter()
        results = evaluator.evaluate_many(students)
        return startup, time.perf_counter() - start, results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--students", type=int, default=8)
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    parser.add_argument(
        "--backends", default="pool,ray", help="pool and/or ray (ray is skipped if not installed)"
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads per process (in-process, pool)"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    console = Console()
    console = Console(width=100) if console.width < 100 else console
    worker_counts = [int(w) for w in args.workers.split(",")]
    backends = [b.strip() for b in args.backends.split(",")]
    if "ray" in backends and importlib.util.find_spec("ray") is None:
        console.print("[yellow]ray is not installed: skipping it (pip install '.[ray]')[/]")
        backends.remove("ray")
    task = Task(fidelity=DistillConfig(), device="cpu")
    students = random_removal_students(task.load_teacher().spec, args.students, args.seed)
    config = task.fidelity
    console.print(
        f"{len(students)} students, {config.transfer_size} transfer images x {config.epochs} "
        f"epoch(s), {config.eval_size} validation images, CPU; {load()}"
    )

    rows: list[tuple[str, int, str, float, float, list[EvalResult]]] = []
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    startup, seconds, results = time_in_process(task, students)
    rows.append(("in-process", 1, str(threads), startup, seconds, results))
    console.print(f"  in-process: {seconds:.1f} s")
    ray = None
    for name in backends:
        if name == "ray":
            import ray

            ray.init(num_cpus=os.cpu_count(), include_dashboard=False)
        for workers in worker_counts:
            if name == "pool":
                backend: WorkerBackend = ProcessPoolBackend(task, workers, threads=args.threads)
                per_worker = str(backend.threads)
            else:
                backend = RayBackend(task, workers=workers)
                per_worker = "1"
            startup, seconds, results = time_backend(backend, students)
            rows.append((name, workers, per_worker, startup, seconds, results))
            console.print(f"  {name} x {workers}: {seconds:.1f} s")
    if ray is not None:
        ray.shutdown()

    baseline = rows[0][4]
    table = Table(title="Evaluation throughput by back-end (same students, default fidelity)")
    for column in (
        "back-end",
        "workers",
        "threads",
        "start-up s",
        "seconds",
        "students/s",
        "vs in-process",
        "mean acc",
    ):
        table.add_column(column, justify="right")
    for name, workers, per_worker, startup, seconds, results in rows:
        errors = [r for r in results if not r.ok]
        accuracy = (
            statistics.mean(r.accuracy for r in results if r.ok)
            if len(errors) < len(results)
            else float("nan")
        )
        table.add_row(
            name,
            str(workers),
            per_worker,
            f"{startup:.1f}",
            f"{seconds:.1f}",
            f"{len(students) / seconds:.3f}",
            f"{baseline / seconds:.2f}x",
            f"{accuracy:.4f}" + (f" ({len(errors)} errors)" if errors else ""),
        )
    console.print(table)
    console.print(f"after: {load()}")


if __name__ == "__main__":
    main()
