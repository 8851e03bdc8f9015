"""Policy transfer: does a removal policy trained on the small teacher speed up the larger one's search?

N2N learning's controllers read network-independent layer descriptors, so a policy trained on one
teacher can start the search on another. This script

1. trains REINFORCE's removal controller on the small MNIST teacher's removal table
   (``N2NRemoval-Tab-v0``, 128 students, free rewards) and ships it as
   ``agents/pretrained/removal.zip`` (``--init-policy pretrained:removal``), unless it is there;
2. runs removal searches on the larger bundled teacher (``N2NRemoval-NarrowResNet-MNIST-v0``,
   16 decision units, live distillation) through the benchmark harness: REINFORCE from the
   pretrained policy, REINFORCE from scratch and random search, ``--seeds`` seeds each, one
   shared measurement cache (a student measured once is not measured again by another run);
3. reports the best reward reached after 10, 25, 50 and 100 distinct students: IQM over seeds with 95 %
   bootstrap intervals, written to ``bench/results_transfer.json``.

Resumable: rerun the same command and finished runs are kept::

    python bench/transfer.py --seeds 5 --budget 100 --workers 2
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agents.pretrained import PRETRAINED  # noqa: E402
from n2n_gym.benchmark import anytime_iqm  # noqa: E402
from n2n_gym.compare import load_runs  # noqa: E402
from n2n_gym.runs import (  # noqa: E402
    CHECKPOINT_FILE,
    incumbent_worth,
)

SOURCE_ENV = "N2NRemoval-Tab-v0"
TARGET_ENV = "N2NRemoval-NarrowResNet-MNIST-v0"
ALGOS = ("reinforce-pretrained", "reinforce", "random")
POLICY = ROOT / "agents" / "pretrained" / PRETRAINED["removal"][0]


def pretrain(out: Path, episodes: int) -> None:
    """REINFORCE on the small teacher's removal table until it has seen every student or converged."""
    run = out / "pretrain"
    command = [sys.executable, str(ROOT / "train_agent.py"), "--algo", "reinforce"]
    command += ["--env", SOURCE_ENV, "--budget", str(episodes), "--seed", "0", "--threads", "1"]
    command += ["--out", str(run)]
    subprocess.run(command, check=True, cwd=ROOT)
    POLICY.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(run / CHECKPOINT_FILE, POLICY)


def search(out: Path, seeds: int, budget: int, workers: int) -> None:
    cache = out / "rewards.sqlite"
    command = [sys.executable, str(ROOT / "evaluate.py"), "--benchmark", "--env", TARGET_ENV]
    command += ["--algos", ",".join(ALGOS), "--seeds", str(seeds), "--budget", str(budget)]
    command += ["--workers", str(workers), "--out", str(out / "runs")]
    command += ["--env-kwargs", json.dumps({"cache_path": str(cache)})]
    subprocess.run(command, check=True, cwd=ROOT)


def report(out: Path, checkpoints: tuple[int, ...]) -> dict:
    runs = load_runs([out / "runs"])
    budget = max(checkpoints)
    curves = {
        algo: np.array(
            [incumbent_worth(r.evaluations, budget) for r in runs if r.algo == algo], dtype=float
        )
        for algo in ALGOS
    }
    columns = [k - 1 for k in checkpoints]
    point, interval = anytime_iqm(
        {a: np.nan_to_num(c)[:, columns] for a, c in curves.items()}, 5000, 0
    )
    rows = []
    for algo in ALGOS:
        row = {"algo": algo, "seeds": len(curves[algo])}
        for i, k in enumerate(checkpoints):
            row[f"best_at_{k}"] = float(point[algo][i])
            row[f"best_at_{k}_ci"] = [float(v) for v in interval[algo][:, i]]
        rows.append(row)
    return {
        "source": SOURCE_ENV,
        "target": TARGET_ENV,
        "checkpoints": list(checkpoints),
        "rows": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5, help="seeds per method (default: 5)")
    parser.add_argument("--budget", type=int, default=100, help="distinct students per run")
    parser.add_argument("--workers", type=int, default=2, help="runs at a time (default: 2)")
    parser.add_argument(
        "--pretrain-budget", type=int, default=128, help="students seen in pretraining"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "transfer", help="work folder")
    parser.add_argument("--retrain", action="store_true", help="pretrain again though shipped")
    args = parser.parse_args()
    if args.retrain or not POLICY.is_file():
        pretrain(args.out, args.pretrain_budget)
    search(args.out, args.seeds, args.budget, args.workers)
    checkpoints = tuple(k for k in (10, 25, 50, 100) if k <= args.budget) or (args.budget,)
    results = report(args.out, checkpoints)
    (ROOT / "bench" / "results_transfer.json").write_text(json.dumps(results, indent=2) + "\n")
    table = Table(title=f"best reward on {TARGET_ENV}: IQM over seeds [95 % CI]")
    table.add_column("search")
    for k in checkpoints:
        table.add_column(f"after {k} students", justify="right")
    for row in results["rows"]:
        cells = [
            f"{row[f'best_at_{k}']:.4f} [{row[f'best_at_{k}_ci'][0]:.4f}, {row[f'best_at_{k}_ci'][1]:.4f}]"
            for k in checkpoints
        ]
        table.add_row(f"{row['algo']} ({row['seeds']} seeds)", *cells)
    Console(width=200).print(table)


if __name__ == "__main__":
    main()
