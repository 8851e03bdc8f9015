"""Finish a compression search, or compare searches.

    python evaluate.py runs/N2NRemoval-v2-reinforce-0                # train the best student fully
    python evaluate.py RUN_DIR --student policy                        # the trained agent's greedy pick
    python evaluate.py --compare runs/compare --out runs/comparison   # algorithms over seeds
    python evaluate.py --benchmark --env N2NJoint-Tab-v0 --seeds 10 --budget 500   # the benchmark
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
and ``baselines.md`` there (see :mod:`n2n_gym.baselines`).

The benchmark runs every (algorithm, seed) pair that is not finished yet as an ordinary run
directory under ``--out`` (``--workers`` at a time, one torch thread each; a killed benchmark
continues where it stopped), then writes the statistics of :mod:`n2n_gym.benchmark` there: regret
against distinct students and simulated seconds, IQM with stratified bootstrap intervals,
probability of improvement over random search, students to reach the optimum, performance
profiles and whether each search learns.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import multiprocessing
import sys
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from sb3_contrib import MaskablePPO

import n2n_gym  # noqa: F401  (registers the environments)
from agents import ALGOS, BUDGET_DEPENDENT, PRUNING_SEARCHES, Reinforce, agent_class
from agents.controllers import CONTROLLER_KINDS
from n2n_gym.arch import StudentDescription
from n2n_gym.atomic import write_json_atomic
from n2n_gym.baselines import (
    BASELINES,
    BASELINES_FILE,
    baselines_table,
    check_baselines,
    read_baseline_source,
    run_baselines,
)
from n2n_gym.benchmark import benchmark_report, benchmark_table, markdown_table
from n2n_gym.cli import (
    OneLineParser,
    fail,
    finish_with_progress,
    markdown,
    progress,
    show_table,
)
from n2n_gym.commands import train as train_agent
from n2n_gym.commands.train import run_logged
from n2n_gym.compare import compare_runs, comparison_table, load_runs
from n2n_gym.distill import DistillationDiverged
from n2n_gym.finalize import FINAL_TRAINING
from n2n_gym.runs import (
    CHECKPOINT_FILE,
    CONFIG_FILE,
    SUMMARY_FILE,
    RunDirError,
    distinct_counts,
    read_evaluations,
    read_run_config,
    read_run_task,
    resume_conflict,
)
from n2n_gym.students import StudentFileError
from n2n_gym.task import TaskError

# The shipped tables; every budget is reported, 20 seeds each (rankings from 5 flip).
BENCHMARK_ENVS = ("N2NJoint-Tab-v0", "N2NJoint-FashionMNIST-Tab-v0")
BENCHMARK_BUDGETS = (30, 100, 300)
BENCHMARK_SEEDS = 20
BENCHMARK_SETTINGS = "settings.json"
# Every algorithm whose own cost fits the default benchmark (RecurrentPPO's LSTM rollouts cost
# about 10x the others': it is reported from a separate run, see the README).
# tpe-hyperband needs halving in the env kwargs (bench/halving.py runs it).
DEFAULT_ALGOS = tuple(a for a in ALGOS if a not in ("recurrent_ppo", *PRUNING_SEARCHES))
# REINFORCE with each of its controllers, and from the shipped removal policy, as algorithms of
# their own: the train_agent.py flags each one adds (--algos controllers runs the controllers).
VARIANTS = {
    **{f"reinforce-{kind}": ["--controller", kind] for kind in CONTROLLER_KINDS},
    "reinforce-pretrained": ["--init-policy", "pretrained:removal"],
}
CONTROLLER_VARIANTS = [f"reinforce-{kind}" for kind in CONTROLLER_KINDS]
BENCHMARK_ALGOS = (*ALGOS, *VARIANTS)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = OneLineParser(
        description=__doc__.split("\n")[0],
        # The module doc's examples (python evaluate.py ... is n2n-gym evaluate ...).
        epilog="examples:\n" + __doc__.split("\n\n")[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
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
    bench = parser.add_argument_group("benchmark (--benchmark)")
    bench.add_argument(
        "--benchmark",
        action="store_true",
        help="run and report a benchmark of search algorithms into --out",
    )
    bench.add_argument(
        "--env",
        default=",".join(BENCHMARK_ENVS),
        help=f"comma-separated environments, each reported on its own (default: "
        f"{','.join(BENCHMARK_ENVS)})",
    )
    bench.add_argument(
        "--budgets",
        default=",".join(map(str, BENCHMARK_BUDGETS)),
        help="comma-separated budgets in distinct students, each reported (default: "
        f"{','.join(map(str, BENCHMARK_BUDGETS))}; --budget N: one budget)",
    )
    bench.add_argument(
        "--algos",
        default="default",
        help="comma-separated algorithms, 'default' "
        f"({','.join(DEFAULT_ALGOS)}), 'all' ({','.join(ALGOS)}) or 'controllers' (random and "
        "REINFORCE with each controller: reinforce-bidirectional, reinforce-autoregressive, "
        "reinforce-encoder-decoder, reinforce-actor-critic); reinforce-pretrained starts from "
        "the shipped removal policy",
    )
    bench.add_argument(
        "--seeds",
        type=int,
        default=BENCHMARK_SEEDS,
        help=f"seeds per algorithm (default: {BENCHMARK_SEEDS})",
    )
    bench.add_argument(
        "--first-seed", type=int, default=0, help="the seeds are first-seed, first-seed+1, ..."
    )
    bench.add_argument(
        "--workers", type=int, default=2, help="runs at a time, one core each (default: 2)"
    )
    bench.add_argument(
        "--env-kwargs",
        default="{}",
        help="JSON object of gymnasium.make arguments for every run, e.g. "
        '\'{"halving": {"eta": 3}}\' (default: {})',
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="where outputs go (default: the run directory; runs/comparison; runs/benchmark-<env>)",
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
        help="distinct students per run: --compare compares at it; --benchmark spends it "
        "instead of --budgets",
    )
    args = parser.parse_args(argv)
    if args.benchmark:
        _check_benchmark_args(parser, args)
        return args
    if args.baselines:
        if len(args.runs) != 1 or args.compare:
            parser.error("--baselines takes one folder with a finished student's report.json")
        try:
            args.only = check_baselines(n.strip() for n in args.only.split(",") if n.strip())
        except ValueError as error:
            parser.error(f"--only: {error}")
    elif not args.compare and len(args.runs) != 1:
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


def baselines(args: argparse.Namespace, console: Console) -> int:
    """Train each baseline with the finished student's settings, then print the comparison."""

    source = read_baseline_source(args.runs[0])  # refuses a wrong folder before any work
    total = source.config.epochs * len(args.only)
    with progress(total, "baselines", "epoch") as bar:

        def on_epoch(name: str, entry: dict[str, float]) -> None:
            bar.update(1)
            bar.set_postfix(baseline=name, val=f"{entry['val_accuracy']:.4f}")

        results = run_baselines(source, args.only, device=args.device, on_epoch=on_epoch)
    table = baselines_table(results)
    (source.folder / "baselines.md").write_text(markdown(table) + "\n")
    show_table(console, table)
    console.print(f"wrote {source.folder / BASELINES_FILE} and {source.folder / 'baselines.md'}")
    failed = [n for n, r in results["baselines"].items() if "error" in r]
    return 1 if failed else 0


def compare(args: argparse.Namespace, console: Console) -> int:
    out = args.out or Path("runs/comparison")
    comparison = compare_runs(args.runs, out, budget=args.budget)
    show_table(console, comparison_table(comparison))
    console.print(
        f"wrote {comparison.json_path}, {comparison.csv_path}, {comparison.reward_plot}, "
        f"{comparison.pareto_plot}"
    )
    return 0


def _check_benchmark_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Bad benchmark input fails here, before any run starts or folder exists."""
    if args.runs or args.compare:
        parser.error("--benchmark runs its own searches: drop the run directories and --compare")
    if args.algos == "default":
        args.algos = list(DEFAULT_ALGOS)
    elif args.algos == "all":
        args.algos = list(ALGOS)
    elif args.algos == "controllers":
        args.algos = ["random", *CONTROLLER_VARIANTS]
    else:
        args.algos = [a.strip() for a in args.algos.split(",") if a.strip()]
        unknown = [a for a in args.algos if a not in BENCHMARK_ALGOS]
        if unknown or not args.algos:
            parser.error(
                f"--algos: unknown {', '.join(unknown) or 'empty'}; choose from "
                f"{', '.join(BENCHMARK_ALGOS)}"
            )
    args.envs = [e.strip() for e in args.env.split(",") if e.strip()]
    if not args.envs or len(set(args.envs)) != len(args.envs):
        parser.error(f"--env {args.env!r}: name each environment once, comma-separated")
    if args.budget is not None:
        args.budgets = [args.budget]
    else:
        try:
            args.budgets = sorted({int(b) for b in args.budgets.split(",") if b.strip()})
        except ValueError:
            parser.error(
                f"--budgets {args.budgets!r}: comma-separated whole numbers, e.g. 30,100,300"
            )
        if not args.budgets:
            parser.error("--budgets: give at least one budget, e.g. 30,100,300")
    for name in ("seeds", "workers"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if args.budgets[0] < 1:
        parser.error(f"--budgets: {args.budgets[0]} must be at least 1")
    if args.out is None:
        args.out = Path(
            "runs/benchmark" if len(args.envs) > 1 else f"runs/benchmark-{args.envs[0]}"
        )
    settings = args.out / BENCHMARK_SETTINGS
    if settings.is_file():
        conflict = resume_conflict(json.loads(settings.read_text()), _benchmark_settings(args))
        if conflict:
            parser.error(f"{args.out} holds a benchmark: {conflict}")
    # The searches check each env and its kwargs exactly as each run will.
    for env in args.envs:
        for algo in args.algos:
            train_agent.parse_args(_run_argv(args, _job(args, env, algo, args.first_seed)))


def _benchmark_settings(args: argparse.Namespace) -> dict[str, Any]:
    """What every run of a benchmark folder shares (algorithms, seeds, envs and budgets may grow)."""
    return {"env_kwargs": json.loads(args.env_kwargs)}


@dataclasses.dataclass(frozen=True)
class _Job:
    """One run of a benchmark."""

    env: str
    algo: str
    seed: int
    budget: int
    run_dir: Path

    @property
    def name(self) -> str:
        return self.run_dir.name


def _env_dir(args: argparse.Namespace, env: str) -> Path:
    return args.out if len(args.envs) == 1 else args.out / env


def _job(
    args: argparse.Namespace, env: str, algo: str, seed: int, budget: int | None = None
) -> _Job:
    """The run of ``algo`` at ``seed``: at the largest budget, or at ``budget`` of its own."""
    largest = args.budgets[-1]
    name = f"{algo}-{seed}" if budget in (None, largest) else f"{algo}-{seed}-b{budget}"
    return _Job(env, algo, seed, budget or largest, _env_dir(args, env) / name)


def _jobs(args: argparse.Namespace) -> list[_Job]:
    """Every run: each (env, algo, seed) at the largest budget, and at each smaller budget for an
    algorithm whose schedule scales with its budget (the others' smaller budgets are prefixes)."""
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    jobs = []
    for env in args.envs:
        for algo in args.algos:
            own = args.budgets if algo in BUDGET_DEPENDENT else args.budgets[-1:]
            jobs += [_job(args, env, algo, seed, budget) for budget in own for seed in seeds]
    return jobs


def _run_argv(args: argparse.Namespace, job: _Job) -> list[str]:
    argv = ["--algo", job.algo, "--env", job.env, "--seed", str(job.seed)]
    argv += ["--budget", str(job.budget)]
    if job.algo in VARIANTS:
        argv[1] = "reinforce"
        argv += VARIANTS[job.algo]
    argv += ["--out", str(job.run_dir), "--threads", "1", "--env-kwargs", args.env_kwargs]
    return argv + (["--resume"] if (job.run_dir / CONFIG_FILE).exists() else [])


def _finished(run_dir: Path, budget: int) -> bool:
    summary = run_dir / SUMMARY_FILE
    if not summary.exists():
        return False
    data = json.loads(summary.read_text())
    return data.get("stop_reason") == "converged" or (data.get("distinct_students") or 0) >= budget


def _distinct_so_far(run_dir: Path) -> int:
    try:
        return distinct_counts(read_evaluations(run_dir))[-1]
    except (IndexError, OSError, RunDirError):
        return 0


def benchmark(args: argparse.Namespace, console: Console) -> int:
    """Run every unfinished benchmark run, ``--workers`` at a time, then report each env."""
    jobs = _jobs(args)
    pending = [job for job in jobs if not _finished(job.run_dir, job.budget)]
    logs = args.out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out / BENCHMARK_SETTINGS, _benchmark_settings(args))
    console.print(
        f"benchmark of {len(args.algos)} algorithms x {args.seeds} seeds x budgets "
        f"{'/'.join(map(str, args.budgets))} on {', '.join(args.envs)} into {args.out}: "
        f"{len(jobs) - len(pending)} runs done, {len(pending)} to go, {args.workers} at a time",
        soft_wrap=True,
    )
    failed: list[str] = []
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    # Long-lived worker processes, one torch thread each: a run costs its search, not a start-up.
    context = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(max_workers=args.workers, mp_context=context)
    try:
        with Progress(*columns, console=console) as progress:
            overall = progress.add_task("runs", total=len(jobs), completed=len(jobs) - len(pending))
            running: dict[Future, _Job] = {}
            bars: dict[_Job, Any] = {}
            while pending or running:
                while pending and len(running) < args.workers:
                    job = pending.pop(0)
                    log = logs / f"{job.env}-{job.name}.log"
                    running[pool.submit(run_logged, _run_argv(args, job), str(log))] = job
                    bars[job] = progress.add_task(
                        f"{job.env} {job.algo} seed {job.seed}", total=job.budget
                    )
                finished, _ = wait(running, timeout=0.5, return_when=FIRST_COMPLETED)
                for future, job in list(running.items()):
                    progress.update(bars[job], completed=_distinct_so_far(job.run_dir))
                    if future not in finished:
                        continue
                    del running[future]
                    progress.remove_task(bars[job])
                    progress.advance(overall)
                    try:
                        status = future.result()
                    except BrokenProcessPool:  # a worker died: the run resumes on a rerun
                        status = "worker died"
                    if status != 0:
                        failed.append(
                            f"{job.env} {job.name} ({logs / f'{job.env}-{job.name}.log'})"
                        )
    except KeyboardInterrupt:
        pool.shutdown(wait=True, cancel_futures=True)  # each run saves what it measured
        return fail("interrupted: rerun the same command to continue the benchmark", 130)
    pool.shutdown()
    if failed:
        console.print(
            f"{len(failed)} run(s) failed: {'; '.join(failed)}", style="red", soft_wrap=True
        )
    reported = 0
    for env in args.envs:
        done = [j.run_dir for j in jobs if j.env == env and _finished(j.run_dir, j.budget)]
        if not done:
            console.print(f"{env}: no run finished, so there is nothing to report", style="red")
            continue
        report = benchmark_report(load_runs(done), _env_dir(args, env), args.budgets)
        reported += 1
        if console.is_terminal:
            console.print(benchmark_table(report))
        else:  # piped or in a file: Markdown keeps every column
            print(markdown_table(report) + "\n")
        console.print(f"wrote {', '.join(str(p) for p in report.files.values())}", soft_wrap=True)
    if not reported:
        return fail("no run finished, so there is nothing to report")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    console = Console()
    try:
        if args.benchmark:
            return benchmark(args, console)
        if args.baselines:
            return baselines(args, console)
        return compare(args, console) if args.compare else finish(args, console)
    except (RunDirError, StudentFileError, TaskError, DistillationDiverged, ValueError) as error:
        return fail(str(error))
    except KeyboardInterrupt:
        return fail("interrupted", 130)


if __name__ == "__main__":
    sys.exit(main())
