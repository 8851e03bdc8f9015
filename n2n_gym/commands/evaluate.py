"""Finish a compression search, or compare searches.

    python evaluate.py runs/N2NRemoval-v2-reinforce-0                # train the best student fully
    python evaluate.py RUN_DIR --student policy                        # the trained agent's greedy pick
    python evaluate.py --compare runs/compare --out runs/comparison   # algorithms over seeds
    python evaluate.py --benchmark                                     # = n2n-gym benchmark
    python evaluate.py runs/mnist-10x --baselines                      # is the search worth it?

Finishing trains the run's best student (or the agent's greedy student) by distillation over the
whole training split until it converges, keeps its best validation epoch, and reports teacher
versus student on the *test* set: accuracy, parameters, FLOPs, compression and CPU latency per
batch. It writes ``student.pt`` (reload with ``n2n_gym.students.load_student``) and
``report.json`` into the run directory (or ``--out``).

Comparing groups runs by algorithm and seed and writes ``comparison.json``, ``comparison.csv``,
``best_reward.png`` (best reward so far against distinct students, band over seeds) and
``pareto.png`` (accuracy against parameters with the Pareto front).

Baselines (``--baselines``, on a folder that holds a finished student's ``report.json``) train
students of the same parameter count with no search — the teacher scaled uniformly in width,
the teacher magnitude-pruned by Torch-Pruning, the student's architecture from scratch on labels
and distilled from scratch — with the student's own final training, and write ``baselines.json``
and ``baselines.md`` there (``--match flops``: sized to the student's MACs, into
``baselines-flops.json`` and ``.md``; see :mod:`n2n_gym.baselines`).

The benchmark (``--benchmark``, or ``n2n-gym benchmark``) is :mod:`n2n_gym.commands.benchmark`.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console

import n2n_gym  # noqa: F401  (registers the environments)
from n2n_gym.baseline_names import BASELINES, MATCHES, check_baselines
from n2n_gym.cli import (
    OneLineParser,
    default_threads,
    fail,
    out_folder_problem,
    set_threads,
    show_table,
)
from n2n_gym.fidelity import FINAL_TRAINING

# Only what parsing needs loads with this module (no torch): a bad flag or --help answers at once;
# each job imports the rest when it runs.

if TYPE_CHECKING:
    from n2n_gym.arch import StudentDescription


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = OneLineParser(
        description=__doc__.split("\n")[0],
        # The module doc's examples (python evaluate.py ... is n2n-gym evaluate ...).
        epilog="examples:\n" + __doc__.split("\n\n")[1],
    )
    parser.add_argument("runs", nargs="*", type=Path, help="run directories")
    parser.add_argument(
        "--compare", action="store_true", help="compare the runs instead of finishing one"
    )
    parser.add_argument(
        "--baselines",
        action="store_true",
        help="train baselines of the finished student's size, with no search, and compare",
    )
    parser.add_argument(
        "--only",
        default=",".join(BASELINES),
        help=f"--baselines: comma-separated subset of {','.join(BASELINES)}",
    )
    parser.add_argument(
        "--match",
        choices=MATCHES,
        default="params",
        help="--baselines: size each baseline to the student's parameters (default) or its "
        "MACs per image (written to baselines-flops.json)",
    )
    parser.add_argument(
        "--benchmark",
        action="store_true",
        help="benchmark search algorithms instead (the same as n2n-gym benchmark, whose --help "
        "lists its flags)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="where outputs go (default: the run directory; runs/comparison)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads for the training (default: OMP_NUM_THREADS when set, else "
        "every core; on a machine shared "
        "with other jobs, give each its share, e.g. --threads 1)",
    )
    parser.add_argument(
        "--student",
        choices=("best", "policy"),
        default="best",
        help="best: the best student the search evaluated; policy: the trained agent's greedy one",
    )
    final = FINAL_TRAINING
    training = parser.add_argument_group("final training of the finished student")
    training.add_argument(
        "--epochs",
        type=int,
        default=final.epochs,
        help=f"passes over the training images (default: {final.epochs})",
    )
    training.add_argument(
        "--lr", type=float, default=final.lr, help=f"Adam learning rate (default: {final.lr})"
    )
    training.add_argument(
        "--batch-size",
        type=int,
        default=final.batch_size,
        help=f"images per optimiser step (default: {final.batch_size})",
    )
    training.add_argument(
        "--hard-label-weight",
        type=float,
        default=final.hard_label_weight,
        help="weight of the cross-entropy with the true labels added to the distillation loss "
        f"(default: {final.hard_label_weight})",
    )
    training.add_argument(
        "--transfer-size", type=int, default=None, help="training images (default: all)"
    )
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    parser.add_argument(
        "--latency-batch",
        type=int,
        default=64,
        help="batch size of the CPU latency measurement in the report (default: 64)",
    )
    parser.add_argument(
        "--budget",
        type=int,
        default=None,
        help="--compare: distinct students each run is compared at (default: the shortest run's)",
    )
    args = parser.parse_args(argv)
    if args.baselines:
        if len(args.runs) != 1 or args.compare:
            parser.error("--baselines takes one folder with a finished student's report.json")
        try:
            args.only = check_baselines(n.strip() for n in args.only.split(",") if n.strip())
        except ValueError as error:
            parser.error(f"--only: {error}")
    elif not args.compare and len(args.runs) != 1:
        parser.error("finishing takes one run directory; pass --compare to compare several")
    for name in ("epochs", "batch_size", "latency_batch", "threads"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.out is not None and (problem := out_folder_problem(args.out)):
        parser.error(f"--out {args.out}: {problem}")
    return args


def greedy_student(run_dir: Path) -> StudentDescription:
    """The student the run's trained agent picks when it takes its most likely action everywhere."""
    import gymnasium as gym
    import numpy as np
    from sb3_contrib import MaskablePPO

    from agents import Reinforce, agent_class
    from n2n_gym.runs import CHECKPOINT_FILE, RunDirError, read_run_config, read_run_task

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
    from n2n_gym.final_training import finish_with_progress
    from n2n_gym.runs import read_run_task
    from n2n_gym.shared_cores import warn_shared_cores

    run_dir = args.runs[0]
    read_run_task(run_dir)  # refuses a folder that is not a run before anything else
    warn_shared_cores(console, run_dir, args.threads or default_threads())
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


def baselines(args: argparse.Namespace, console: Console) -> int:
    """Train each baseline with the finished student's settings, then print the comparison."""
    from n2n_gym.final_training import baselines_with_progress

    results = baselines_with_progress(
        args.runs[0], args.only, console, match=args.match, device=args.device, threads=args.threads
    )
    failed = [n for n, r in results["baselines"].items() if "error" in r]
    return 1 if failed else 0


def compare(args: argparse.Namespace, console: Console) -> int:
    from n2n_gym.compare import compare_runs, comparison_table

    out = args.out or Path("runs/comparison")
    comparison = compare_runs(args.runs, out, budget=args.budget)
    show_table(console, comparison_table(comparison))
    console.print(
        f"wrote {comparison.json_path}, {comparison.csv_path}, {comparison.reward_plot}, "
        f"{comparison.pareto_plot}"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--benchmark" in argv:  # its own command, with its own flags and help
        from n2n_gym.commands import benchmark

        return benchmark.main([a for a in argv if a != "--benchmark"])
    args = parse_args(argv)
    from n2n_gym.distill import DistillationDiverged
    from n2n_gym.runs import RunDirError
    from n2n_gym.students import StudentFileError
    from n2n_gym.task import TaskError

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    console = Console()
    if not args.compare:  # finishing and baselines train: share the cores as searches do
        set_threads(args.threads or default_threads())
    try:
        if args.baselines:
            return baselines(args, console)
        return compare(args, console) if args.compare else finish(args, console)
    except (RunDirError, StudentFileError, TaskError, DistillationDiverged, ValueError) as error:
        return fail(str(error))
    except KeyboardInterrupt as error:  # a final training or baseline cut short says so
        return fail(str(error) or "interrupted", 130)


if __name__ == "__main__":
    sys.exit(main())
