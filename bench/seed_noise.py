"""How much does a reward depend on the seed? Measure the same students at two seeds per fidelity.

A table stores one measurement per student, so it stands for live runs only if a second seed ranks
the students the same way. For each candidate fidelity this script measures the 40 reference
students of ``bench/results_fidelity_round2.json`` (which also carry a long-distillation reference)
plus ``--extra`` random joint students at seeds 0 and 1 — the seed chooses the transfer subset,
the batch order and the initialisation of shrunk layers, as ``tabulate``'s repeat pass does — and
reports the seed-to-seed Spearman of accuracy and reward, the spread of accuracy between seeds,
and the two-seed mean's Spearman against the long reference. One process per candidate, one torch
thread each::

    nohup python bench/seed_noise.py --workers 2 --out bench/results_seed_noise.json > noise.log &
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import replace
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table
from scipy.stats import spearmanr

from n2n_gym.distill import DistillConfig

REFERENCE = Path(__file__).with_name("results_fidelity_round2.json")

CANDIDATES: dict[str, DistillConfig] = {
    "lr4e-3": DistillConfig(lr=4e-3, lr_schedule="constant"),
    "lr4e-3-cos": DistillConfig(lr=4e-3, lr_schedule="cosine"),
    "lr8e-3-cos": DistillConfig(lr=8e-3, lr_schedule="cosine"),
    "lr2e-3-cos": DistillConfig(lr=2e-3, lr_schedule="cosine"),
}
SEEDS = (0, 1)


def measure_candidate(name: str, config: DistillConfig, students: list[list[float]]) -> dict:
    """Every student at every seed under ``config``, in this (one-thread) process."""
    import torch

    from n2n_gym.arch import StudentDescription
    from n2n_gym.data import load_dataset
    from n2n_gym.evaluation import Evaluator
    from n2n_gym.measure import DistillationMeasurer
    from n2n_gym.teachers import load_teacher

    torch.set_num_threads(1)
    teacher = load_teacher("default", dataset="mnist", device="cpu")
    data = load_dataset("mnist")
    rows: dict[int, list[dict]] = {}
    for seed in SEEDS:
        measurer = DistillationMeasurer(
            teacher, data, replace(config, seed=seed), device="cpu", seed=seed
        )
        evaluator = Evaluator(measurer)
        rows[seed] = []
        for ratios in students:
            result = evaluator.evaluate(StudentDescription(teacher.spec, tuple(ratios)))
            rows[seed].append(
                {"accuracy": result.accuracy, "reward": result.reward, "time": result.wall_time}
            )
    return {"name": name, "config": config.to_dict(), "seeds": {str(s): r for s, r in rows.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--extra", type=int, default=20, help="random joint students added")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--only", nargs="*", help="candidate names (default: all)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    console = Console()

    from reward_fidelity import random_joint_students  # bench/ is on sys.path as the script's dir

    from n2n_gym.teachers import load_teacher

    reference = json.loads(REFERENCE.read_text())["students"]
    students = [list(r["ratios"]) for r in reference]
    spec = load_teacher("default", dataset="mnist", device="cpu").spec
    known = {tuple(s) for s in students}
    for student in random_joint_students(spec, args.extra + len(students), seed=7):
        if len(students) == len(reference) + args.extra:
            break
        if tuple(student.ratios) not in known:
            students.append(list(student.ratios))
            known.add(tuple(student.ratios))
    long_reward = [r["long"]["reward"] for r in reference]
    long_accuracy = [r["long"]["accuracy"] for r in reference]
    chosen = {n: c for n, c in CANDIDATES.items() if not args.only or n in args.only}
    started = time.perf_counter()
    results = {}
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        futures = [pool.submit(measure_candidate, n, c, students) for n, c in chosen.items()]
        for future in as_completed(futures):
            result = future.result()
            results[result["name"]] = result
            console.print(f"{result['name']} done after {time.perf_counter() - started:.0f} s")

    table = Table(title=f"Seed noise over {len(students)} joint students (seeds 0 and 1)")
    for column in (
        "fidelity",
        "Spearman acc s0-s1",
        "Spearman reward s0-s1",
        "median |dacc| pt",
        "p90 |dacc| pt",
        "mean-of-2 vs long acc",
        "mean-of-2 vs long reward",
        "median s",
    ):
        table.add_column(column, justify="right")
    summary = {}
    for name, result in results.items():
        s0, s1 = result["seeds"]["0"], result["seeds"]["1"]
        a0 = np.array([r["accuracy"] for r in s0])
        a1 = np.array([r["accuracy"] for r in s1])
        r0 = np.array([r["reward"] for r in s0])
        r1 = np.array([r["reward"] for r in s1])
        diff = np.abs(a0 - a1) * 100
        n = len(reference)
        row = {
            "spearman_accuracy_seeds": float(spearmanr(a0, a1).statistic),
            "spearman_reward_seeds": float(spearmanr(r0, r1).statistic),
            "median_abs_diff_pt": float(np.median(diff)),
            "p90_abs_diff_pt": float(np.percentile(diff, 90)),
            "spearman_accuracy_long": float(
                spearmanr((a0[:n] + a1[:n]) / 2, long_accuracy).statistic
            ),
            "spearman_reward_long": float(spearmanr((r0[:n] + r1[:n]) / 2, long_reward).statistic),
            "median_seconds": statistics.median(r["time"] for r in s0 + s1),
        }
        summary[name] = row
        table.add_row(
            name,
            *(
                f"{row[k]:.3f}" if "spearman" in k else f"{row[k]:.2f}"
                for k in (
                    "spearman_accuracy_seeds",
                    "spearman_reward_seeds",
                    "median_abs_diff_pt",
                    "p90_abs_diff_pt",
                    "spearman_accuracy_long",
                    "spearman_reward_long",
                    "median_seconds",
                )
            ),
        )
    console.print(table)
    if args.out:
        args.out.write_text(
            json.dumps({"students": students, "summary": summary, "results": results}, indent=2)
        )


if __name__ == "__main__":
    main()
