"""Ray on a simulated cluster: students/s with 1, 2 and 3 nodes, and what losing a node costs.

Every node of ``ray.cluster_utils.Cluster`` is a set of Ray processes on this machine with one CPU
slot (one actor, one torch thread), so the nodes share this machine's cores: on a 2-core machine
a third node adds an actor but no core. The same distinct students are measured at the default
fidelity in one ``evaluate_many`` per configuration, after the actors have started (teacher and
data shipped through the object store). Then, with 3 nodes, one node is removed as soon as every
actor is busy, and the batch's wall time is compared with the undisturbed 3-node and 2-node runs.

    python bench/bench_ray_cluster.py --students 9
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

import ray
from ray.cluster_utils import Cluster
from reward_fidelity import random_removal_students
from rich.console import Console
from rich.table import Table

from n2n_gym.backends import RayBackend
from n2n_gym.evaluation import Evaluator
from n2n_gym.task import Task

ROOT = Path(__file__).resolve().parent.parent


def run(task: Task, students, nodes: int, remove_one: bool = False) -> dict:
    """Wall seconds of one batch on ``nodes`` one-slot nodes (optionally losing one mid-batch)."""
    cluster = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False}
    )
    extra = [cluster.add_node(num_cpus=1) for _ in range(nodes - 1)]
    ray.init(address=cluster.address, logging_level="WARNING")
    try:
        with RayBackend(task) as backend:
            start = time.perf_counter()
            backend.start()
            startup = time.perf_counter() - start
            results: list = []
            thread = threading.Thread(
                target=lambda: results.extend(Evaluator(backend).evaluate_many(students))
            )
            start = time.perf_counter()
            thread.start()
            if remove_one:
                while backend.in_flight < nodes:
                    time.sleep(0.01)
                cluster.remove_node(extra[-1])
            thread.join()
            seconds = time.perf_counter() - start
            return {
                "nodes": nodes,
                "removed": remove_one,
                "startup": startup,
                "seconds": seconds,
                "ok": sum(r.ok for r in results),
                "errors": sum(not r.ok for r in results),
                "actors_after": backend.num_workers,
            }
    finally:
        ray.shutdown()
        cluster.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--students", type=int, default=9)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results_ray_cluster.json")
    args = parser.parse_args()
    console = Console()
    task = Task(device="cpu")
    students = random_removal_students(task.teacher_spec, args.students, args.seed)
    rows = []
    for nodes, remove in ((1, False), (2, False), (3, False), (3, True)):
        row = run(task, students, nodes, remove)
        console.print(row)
        rows.append(row)
    base = rows[0]["seconds"]
    table = Table(title=f"{args.students} students on a simulated Ray cluster ({sys.platform})")
    for column in (
        "nodes",
        "node removed",
        "start-up s",
        "seconds",
        "students/s",
        "vs 1 node",
        "measured / errors",
        "actors after",
    ):
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(
            str(row["nodes"]),
            "yes" if row["removed"] else "",
            f"{row['startup']:.1f}",
            f"{row['seconds']:.1f}",
            f"{args.students / row['seconds']:.3f}",
            f"{base / row['seconds']:.2f}x",
            f"{row['ok']} / {row['errors']}",
            str(row["actors_after"]),
        )
    console.print(table)
    args.out.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
