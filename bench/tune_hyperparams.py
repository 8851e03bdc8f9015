"""Choose each algorithm's default hyperparameters on the joint table, on seeds the benchmark skips.

A small, documented budget: two settings per algorithm (the shipped default and one that
explores more or learns faster, below; three learning rates for REINFORCE), 3 seeds (100-102; the reported benchmark uses 0-9), 500
distinct students per run on ``N2NJoint-Tab-v0``. The winner
has the lowest IQM final regret, ties broken by the mean regret over the run (faster is better).
Runs go to ``--out`` (resumable: finished runs are kept); the table of every setting is printed and
written to ``bench/results_tuning.json``::

    python bench/tune_hyperparams.py --workers 2
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table
from scipy.stats import trim_mean

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from n2n_gym.benchmark import regret_curve  # noqa: E402
from n2n_gym.runs import SUMMARY_FILE, read_evaluations  # noqa: E402
from train_agent import run_logged  # noqa: E402

ENV = "N2NJoint-Tab-v0"
SEEDS = (100, 101, 102)
BUDGET = 500
GRID: dict[str, list[dict]] = {
    "reinforce": [{"learning_rate": lr} for lr in (0.003, 0.01, 0.03)],
    "ppo": [{"ent_coef": e} for e in (0.01, 0.1)],
    "maskable_ppo": [{"ent_coef": e} for e in (0.01, 0.1)],
    "a2c": [{"ent_coef": e} for e in (0.01, 0.1)],
    "dqn": [{"exploration_fraction": f} for f in (0.1, 0.3)],
    "evolution": [{"population_size": p, "sample_size": s} for p, s in ((20, 5), (50, 10))],
    "tpe": [{"n_startup_trials": n} for n in (10, 30)],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--algos", default=",".join(GRID))
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "tuning")
    parser.add_argument("--results", type=Path, default=ROOT / "bench" / "results_tuning.json")
    args = parser.parse_args()
    console = Console()
    jobs = []
    for algo in args.algos.split(","):
        for index, settings in enumerate(GRID[algo]):
            for seed in SEEDS:
                run_dir = args.out / f"{algo}-{index}-{seed}"
                if (run_dir / SUMMARY_FILE).exists():
                    continue
                argv = ["--algo", algo, "--env", ENV, "--seed", str(seed), "--budget", str(BUDGET)]
                argv += ["--out", str(run_dir), "--threads", "1"]
                argv += ["--hyperparams", json.dumps(settings)]
                argv += ["--resume"] if (run_dir / "config.json").exists() else []
                jobs.append((run_dir, argv))
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with ProcessPoolExecutor(args.workers, mp_context=get_context("spawn")) as pool:
        futures = {pool.submit(run_logged, argv, str(d) + ".log"): d for d, argv in jobs}
        for number, future in enumerate(as_completed(futures), 1):
            console.print(
                f"[{number}/{len(jobs)}] {futures[future].name}: exit {future.result()} "
                f"({time.perf_counter() - started:.0f} s)"
            )
    results = []
    table = Table(title=f"Tuning on {ENV}: seeds {SEEDS}, {BUDGET} students")
    for column in (
        "algorithm",
        "settings",
        "IQM final regret",
        "mean regret",
        "converged",
        "s/run",
    ):
        table.add_column(column, justify="right")
    for algo in args.algos.split(","):
        rows = []
        for index, settings in enumerate(GRID[algo]):
            finals, means, converged, seconds = [], [], 0, []
            for seed in SEEDS:
                run_dir = args.out / f"{algo}-{index}-{seed}"
                records = read_evaluations(run_dir)
                optimum = max(r["table_optimum"] for r in records)
                curve = regret_curve(records, BUDGET, optimum)
                finals.append(curve[-1])
                means.append(float(np.mean(curve)))
                summary = json.loads((run_dir / SUMMARY_FILE).read_text())
                converged += summary.get("stop_reason") == "converged"
                seconds.append(summary.get("wall_time") or 0.0)
            rows.append(
                {
                    "algo": algo,
                    "settings": settings,
                    "final_regret_iqm": float(trim_mean(finals, 0.25)),
                    "mean_regret": float(np.mean(means)),
                    "converged_runs": converged,
                    "seconds_per_run": float(np.mean(seconds)),
                }
            )
        best = min(rows, key=lambda r: (round(r["final_regret_iqm"], 6), r["mean_regret"]))
        for row in rows:
            row["chosen"] = row is best
            table.add_row(
                algo + (" *" if row["chosen"] else ""),
                json.dumps(row["settings"]),
                f"{row['final_regret_iqm']:.5f}",
                f"{row['mean_regret']:.5f}",
                f"{row['converged_runs']}/{len(SEEDS)}",
                f"{row['seconds_per_run']:.1f}",
            )
        results += rows
    console.print(table)
    args.results.write_text(
        json.dumps({"env": ENV, "seeds": SEEDS, "budget": BUDGET, "rows": results}, indent=2)
    )


if __name__ == "__main__":
    main()
