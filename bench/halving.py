"""Successive halving on the measured table: simulated time to reach a reward, with and without.

Runs the same searches (``--algos``, ``--seeds`` seeds, ``--budget`` distinct students each) on
``N2NJoint-Tab-v0`` twice through the benchmark harness — every student at the full fidelity, and
with ``halving`` in the environment kwargs — then reads the runs' simulated clocks (the live
seconds the table stores for each measurement, a partial one's up to its rung) and reports, per
algorithm (and for TPE with Optuna's Hyperband pruner at the same rungs against plain TPE)
and for each target (the table's optimum and 99 % of it), the simulated seconds until
the best full-fidelity reward reaches the target: IQM over seeds with 95 % stratified bootstrap
intervals (rliable), the speed-up (IQM without / IQM with halving, its interval from resampling
the seeds of both) and how many seeds reached the target. A seed that never reaches it is counted
at the time its run ended (right-censored), which only flatters the side that misses more.

    python bench/halving.py                       # random, reinforce, evolution, tpe; 10 seeds
    python bench/halving.py --seeds 10 --budget 300 --eta 3 --rungs 0.25,0.5

Both benchmarks resume: rerunning the command finishes what is missing, then reports.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from n2n_gym.compare import load_runs
from n2n_gym.runs import distinct_counts, full_fidelity

ROOT = Path(__file__).resolve().parent.parent


def time_to_reach(records: list[dict], target: float, budget: int) -> tuple[float, bool]:
    """Simulated seconds until the best full-fidelity reward reaches ``target`` (or the run's end)."""
    clock, seen = 0.0, 0
    for record, count in zip(records, distinct_counts(records), strict=True):
        if count > seen:
            clock += float(record.get("eval_seconds") or 0.0)
            seen = count
        if full_fidelity(record) and record["reward"] >= target - 1e-6:  # float32 in vector envs
            return clock, True
        if count >= budget:
            break
    return clock, False


def iqm(values: np.ndarray) -> float:
    from scipy import stats

    return float(stats.trim_mean(values, 0.25))


def bootstrap(a: np.ndarray, b: np.ndarray | None, reps: int, rng) -> tuple[float, float]:
    """95 % interval of IQM(a) (or IQM(a)/IQM(b)), resampling seeds with replacement."""
    draws = []
    for _ in range(reps):
        x = iqm(rng.choice(a, len(a)))
        draws.append(x if b is None else x / iqm(rng.choice(b, len(b))))
    return float(np.percentile(draws, 2.5)), float(np.percentile(draws, 97.5))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--algos", default="random,reinforce,evolution,tpe")
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--budget", type=int, default=300)
    parser.add_argument("--eta", type=float, default=3.0)
    parser.add_argument("--rungs", default="0.25,0.5")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("runs/halving"))
    parser.add_argument(
        "--results", type=Path, default=None, help="default bench/results_halving_eta<ETA>.json"
    )
    args = parser.parse_args()
    console = Console()
    args.results = args.results or ROOT / "bench" / f"results_halving_eta{args.eta:g}.json"
    halving = {"eta": args.eta, "rungs": [float(r) for r in args.rungs.split(",")]}
    sides = {"full": {}, "halving": {"halving": halving}}
    algos = {"full": args.algos.split(",")}
    # With halving, TPE also runs with Optuna's Hyperband pruner deciding at the rungs.
    algos["halving"] = algos["full"] + (["tpe-hyperband"] if "tpe" in algos["full"] else [])
    for side, kwargs in sides.items():
        command = [
            sys.executable,
            str(ROOT / "evaluate.py"),
            "--benchmark",
            "--env",
            "N2NJoint-Tab-v0",
            "--algos",
            ",".join(algos[side]),
            "--seeds",
            str(args.seeds),
            "--budget",
            str(args.budget),
            "--workers",
            str(args.workers),
            "--out",
            str(args.out / side),
            "--env-kwargs",
            json.dumps(kwargs),
        ]
        console.print(f"[bold]{side}[/]: {' '.join(command[1:])}")
        subprocess.run(command, check=True)

    runs = {side: load_runs([args.out / side]) for side in sides}
    optimum = max(
        r["table_optimum"]
        for run in runs["full"]
        for r in run.evaluations
        if r.get("table_optimum")
    )
    rng = np.random.default_rng(0)
    results = {"halving": halving, "budget": args.budget, "seeds": args.seeds, "rows": []}
    table = Table(
        title=f"Simulated seconds to reach a reward (IQM over {args.seeds} seeds, 95 % CI)"
    )
    for column in ("algorithm", "target", "full fidelity", "halving", "speed-up", "reached"):
        table.add_column(column, justify="right")
    for algo in algos["halving"]:
        baseline = "tpe" if algo == "tpe-hyperband" else algo
        for fraction in (1.0, 0.99):
            target = fraction * optimum
            times, reached = {}, {}
            for side, name in (("full", baseline), ("halving", algo)):
                pairs = [
                    time_to_reach(run.evaluations, target, args.budget)
                    for run in runs[side]
                    if run.algo == name
                ]
                times[side] = np.array([t for t, _ in pairs])
                reached[side] = sum(ok for _, ok in pairs)
            full, halved = times["full"], times["halving"]
            row = {
                "algo": algo,
                "baseline": baseline,
                "target": f"{fraction:.0%} of optimum",
                "full_iqm": iqm(full),
                "full_ci": bootstrap(full, None, 2000, rng),
                "halving_iqm": iqm(halved),
                "halving_ci": bootstrap(halved, None, 2000, rng),
                "speedup": iqm(full) / iqm(halved),
                "speedup_ci": bootstrap(full, halved, 2000, rng),
                "reached_full": reached["full"],
                "reached_halving": reached["halving"],
                "runs": len(full),
            }
            results["rows"].append(row)
            table.add_row(
                algo if algo == baseline else f"{algo} (vs {baseline})",
                row["target"],
                f"{row['full_iqm']:.0f} s [{row['full_ci'][0]:.0f}, {row['full_ci'][1]:.0f}]",
                f"{row['halving_iqm']:.0f} s [{row['halving_ci'][0]:.0f}, {row['halving_ci'][1]:.0f}]",
                f"{row['speedup']:.2f}x [{row['speedup_ci'][0]:.2f}, {row['speedup_ci'][1]:.2f}]",
                f"{row['reached_full']}/{len(full)} vs {row['reached_halving']}/{len(halved)}",
            )
    console.print(table)
    args.results.write_text(json.dumps(results, indent=1) + "\n")
    console.print(f"wrote {args.results}")


if __name__ == "__main__":
    main()
