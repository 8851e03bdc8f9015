"""Which student of one size trains best? A cheap screen of candidate students before a full test.

Each candidate is a student of one teacher near the same parameter budget (teacher / ``--compress``),
trained with the final training's settings cut to ``--epochs`` (default 5), then measured on the
test set. Candidates (``--candidates``, comma-separated):

``uniform``
    every shrinkable unit at the one width ratio nearest the budget, freshly initialised (the
    ``uniform-width`` baseline of ``evaluate.py --baselines``);
``uniform-inherited``
    the same architecture starting from the teacher's largest-L1-norm filters (what a search that
    starts from the uniform student would train);
``run:DIR``
    the best student of a search run (``DIR`` a run directory, e.g. a pipeline's ``2-shrink``),
    inherited from the teacher as the pipeline's final training does.

A screen ranks candidates under a short training; the winner still needs the full training over
seeds (``bench/search_vs_baselines.py``). Results go to ``--results`` (JSON, one entry per
candidate and seed; rerunning skips what is there)::

    python bench/screen_students.py --env N2NRemoval-FashionMNIST-v0 \\
        --env-kwargs '{"data_dir": "../data"}' --candidates uniform,uniform-inherited,run:runs/x/2-shrink
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from n2n_gym.atomic import write_json_atomic  # noqa: E402
from n2n_gym.baselines import uniform_width_student  # noqa: E402
from n2n_gym.envs import task_for  # noqa: E402
from n2n_gym.finalize import FINAL_TRAINING, test_report, train_final  # noqa: E402
from n2n_gym.runs import read_best_student  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--env", default="N2NRemoval-v2", help="an env of the teacher and data")
    parser.add_argument("--env-kwargs", default="{}", help="JSON gymnasium.make arguments")
    parser.add_argument("--compress", type=float, default=10.0)
    parser.add_argument("--candidates", default="uniform,uniform-inherited")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--results", type=Path, default=ROOT / "bench" / "results_screen.json")
    return parser.parse_args(argv)


def candidate(name: str, spec, budget: int):
    """(student, inherit weights) of a candidate name."""
    if name in ("uniform", "uniform-inherited"):
        return uniform_width_student(spec, budget), name == "uniform-inherited"
    if name.startswith("run:"):
        student, _ = read_best_student(name.removeprefix("run:"))
        return student, True
    raise SystemExit(
        f"--candidates: unknown candidate {name!r}; use uniform, uniform-inherited, run:DIR"
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    console = Console()
    task, _ = task_for(args.env, json.loads(args.env_kwargs) | {"device": "cpu"})
    teacher, data = task.load_teacher(), task.load_data()
    budget = int(teacher.spec.params / args.compress)
    config = dataclasses.replace(FINAL_TRAINING, epochs=args.epochs)
    results = json.loads(args.results.read_text()) if args.results.is_file() else {}
    context = f"{args.env} {args.env_kwargs} {args.compress:g}x {args.epochs} epochs"
    rows = results.setdefault(context, {})
    for name in args.candidates.split(","):
        student, inherit = candidate(name, teacher.spec, budget)
        for seed in range(args.seeds):
            key = f"{name} seed {seed}"
            if key in rows:
                continue
            console.print(f"{key}: {student.plan().spec.params:,} parameters, training")
            start = time.perf_counter()
            trained = train_final(
                teacher,
                data,
                student,
                dataclasses.replace(config, seed=seed),
                device="cpu",
                inherit_weights=inherit,
                seed=seed,
            )
            report = test_report(teacher, trained.module, student, data, device="cpu")
            rows[key] = {
                "ratios": list(student.ratios),
                "params": report.params,
                "flops": report.flops,
                "val_accuracy": trained.val_accuracy,
                "test_accuracy": report.test_accuracy,
                "teacher_test_accuracy": report.teacher_test_accuracy,
                "seconds": time.perf_counter() - start,
            }
            write_json_atomic(args.results, results)
    table = Table(title=context)
    for column in ("candidate", "parameters", "val %", "test %", "ratios"):
        table.add_column(column)
    for key, row in rows.items():
        table.add_row(
            key,
            f"{row['params']:,}",
            f"{100 * row['val_accuracy']:.2f}",
            f"{100 * row['test_accuracy']:.2f}",
            " ".join(f"{r:g}" for r in row["ratios"]),
        )
    console.print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
