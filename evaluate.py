"""Finish a compression search, or compare searches.

    python evaluate.py runs/N2NRemoval-v2-reinforce-0                # train the best student fully
    python evaluate.py RUN_DIR --student policy                        # the trained agent's greedy pick
    python evaluate.py --compare runs/compare --out runs/comparison   # algorithms over seeds

Finishing trains the run's best student (or the agent's greedy student) by distillation over the
whole training split until it converges, keeps its best validation epoch, and reports teacher
versus student on the *test* set: accuracy, parameters, FLOPs, compression and CPU latency per
batch. It writes ``student.pt`` (reload with ``n2n_gym.students.load_student``) and
``report.json`` into the run directory (or ``--out``).

Comparing groups runs by algorithm and seed and writes ``comparison.json``, ``comparison.csv``,
``best_reward.png`` (best reward so far against evaluations, band over seeds) and ``pareto.png``
(accuracy against parameters with the Pareto front).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
from rich.console import Console
from sb3_contrib import MaskablePPO

import n2n_gym  # noqa: F401  (registers the environments)
from agents import Reinforce, agent_class
from n2n_gym.arch import StudentDescription
from n2n_gym.cli import OneLineParser, fail, finish_with_progress
from n2n_gym.compare import compare_runs, comparison_table
from n2n_gym.distill import DistillationDiverged
from n2n_gym.finalize import FINAL_TRAINING
from n2n_gym.runs import CHECKPOINT_FILE, RunDirError, read_run_config, read_run_task
from n2n_gym.students import StudentFileError
from n2n_gym.task import TaskError


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = OneLineParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("runs", nargs="+", type=Path, help="run directories")
    parser.add_argument(
        "--compare", action="store_true", help="compare the runs instead of finishing one"
    )
    parser.add_argument("--out", type=Path, default=None, help="where outputs go")
    parser.add_argument(
        "--student",
        choices=("best", "policy"),
        default="best",
        help="best: the best student the search evaluated; policy: the trained agent's greedy one",
    )
    final = FINAL_TRAINING
    parser.add_argument("--epochs", type=int, default=final.epochs)
    parser.add_argument("--lr", type=float, default=final.lr)
    parser.add_argument("--batch-size", type=int, default=final.batch_size)
    parser.add_argument("--hard-label-weight", type=float, default=final.hard_label_weight)
    parser.add_argument(
        "--transfer-size", type=int, default=None, help="training images (default: all)"
    )
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--latency-batch", type=int, default=64)
    parser.add_argument(
        "--budget",
        type=int,
        default=None,
        help="--compare: distinct students per run to compare at",
    )
    args = parser.parse_args(argv)
    if not args.compare and len(args.runs) != 1:
        parser.error("finishing takes one run directory; pass --compare to compare several")
    for name in ("epochs", "batch_size", "latency_batch"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


def greedy_student(run_dir: Path) -> StudentDescription:
    """The student the run's trained agent picks when it takes its most likely action everywhere."""
    settings = read_run_config(run_dir)
    task = read_run_task(run_dir)
    checkpoint = run_dir / CHECKPOINT_FILE
    if not checkpoint.exists():
        raise RunDirError(
            f"{run_dir} has no agent checkpoint ({CHECKPOINT_FILE}); use --student best"
        )
    try:
        cls = agent_class(settings["algo"])
    except ValueError as error:
        raise RunDirError(f"{run_dir}: {error}; use --student best") from None
    # The proxy evaluator: only the decisions matter here, not a reward.
    env = gym.make(
        settings["env"],
        **task.replace(measurer="proxy", table=None).to_dict(),
        **settings.get("env_options", {}),
    )
    agent = cls.load(checkpoint, device="cpu")
    obs, _ = env.reset(seed=settings.get("seed", 0))
    state, start, done = None, np.ones(1, bool), False
    masked = isinstance(agent, MaskablePPO | Reinforce)
    while not done:
        kwargs = {"action_masks": env.unwrapped.action_masks()} if masked else {}
        action, state = agent.predict(
            obs, state=state, episode_start=start, deterministic=True, **kwargs
        )
        obs, _, done, _, _ = env.step(int(np.asarray(action).reshape(-1)[0]))
        start = np.zeros(1, bool)
    return env.unwrapped.student()


def finish(args: argparse.Namespace, console: Console) -> int:
    run_dir = args.runs[0]
    student = greedy_student(run_dir) if args.student == "policy" else None
    config = dataclasses.replace(
        FINAL_TRAINING,
        epochs=args.epochs,
        lr=args.lr,
        batch_size=args.batch_size,
        hard_label_weight=args.hard_label_weight,
        transfer_size=args.transfer_size,
    )
    finish_with_progress(
        run_dir,
        console,
        student=student,
        config=config,
        device=args.device,
        out_dir=args.out,
        latency_batch=args.latency_batch,
    )
    return 0


def compare(args: argparse.Namespace, console: Console) -> int:
    out = args.out or Path("runs/comparison")
    comparison = compare_runs(args.runs, out, budget=args.budget)
    console.print(comparison_table(comparison))
    console.print(
        f"wrote {comparison.json_path}, {comparison.csv_path}, {comparison.reward_plot}, "
        f"{comparison.pareto_plot}"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    console = Console()
    try:
        return compare(args, console) if args.compare else finish(args, console)
    except (RunDirError, StudentFileError, TaskError, DistillationDiverged, ValueError) as error:
        return fail(str(error))
    except KeyboardInterrupt:
        return fail("interrupted", 130)


if __name__ == "__main__":
    sys.exit(main())
