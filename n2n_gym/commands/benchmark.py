"""Benchmark search algorithms: every (algorithm, seed) as a run, then rliable statistics.

    n2n-gym benchmark                                    # both shipped tables, 20 seeds, 30/100/300
    n2n-gym benchmark --env N2NJoint-Tab-v0 --algos ppo,random --seeds 10 --budgets 50,200
    n2n-gym benchmark --env N2NJoint-v1 --algos reinforce,random --seeds 3 --budget 100   # live
    n2n-gym benchmark --suite                            # both tables and the surrogate, pooled

(``python evaluate.py --benchmark ...`` is the same command.) Every run that is not finished yet
runs as an ordinary run directory under ``--out`` (``--workers`` at a time, one torch thread each;
a killed benchmark continues where it stopped, and a folder is continued only with the
``--env-kwargs`` its runs were made with), then each environment's statistics of
:mod:`n2n_gym.benchmark` are written into its folder: regret at each budget against the table's
seed-mean target, IQM with seeded stratified bootstrap intervals, probability of improvement over
random search, reward-free students per algorithm, the two seed halves' ranking agreement,
students to reach the optimum, performance profiles and whether each search learns. With
``--suite`` the environments (by default the tables and the narrow ResNet's surrogate) are also
pooled into one report of normalised regret over tasks x seeds (:mod:`n2n_gym.suite`).
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

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from agents import ALGOS, BUDGET_DEPENDENT, PRUNING_SEARCHES
from agents.controllers import CONTROLLER_KINDS
from n2n_gym.atomic import write_json_atomic
from n2n_gym.benchmark import benchmark_report, benchmark_table, markdown_table
from n2n_gym.cli import OneLineParser, fail, out_folder_problem
from n2n_gym.commands import train as train_agent
from n2n_gym.commands.train import run_logged
from n2n_gym.compare import load_runs
from n2n_gym.runs import (
    CONFIG_FILE,
    SUMMARY_FILE,
    RunDirError,
    distinct_counts,
    read_evaluations,
    resume_conflict,
)
from n2n_gym.suite import SUITE_ENVS, check_suite_envs, suite_markdown, suite_report, suite_table
from n2n_gym.task import TaskError

__all__ = [
    "BENCHMARK_ENVS",
    "DEFAULT_ALGOS",
    "add_arguments",
    "check_args",
    "main",
    "run_benchmark",
]

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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The benchmark's flags (``--budget`` and ``--out`` are the caller's to add)."""
    parser.add_argument(
        "--env",
        default=None,
        help=f"comma-separated environments, each reported on its own (default: "
        f"{','.join(BENCHMARK_ENVS)}; with --suite: {','.join(SUITE_ENVS)})",
    )
    parser.add_argument(
        "--suite",
        action="store_true",
        help="also pool the environments into one suite report (normalised regret over tasks x "
        "seeds); they must be table or surrogate environments",
    )
    parser.add_argument(
        "--budgets",
        default=",".join(map(str, BENCHMARK_BUDGETS)),
        help="comma-separated budgets in distinct students, each reported (default: "
        f"{','.join(map(str, BENCHMARK_BUDGETS))}; --budget N: one budget)",
    )
    parser.add_argument(
        "--algos",
        default="default",
        help="comma-separated algorithms, 'default' "
        f"({', '.join(DEFAULT_ALGOS)}), 'all' ({', '.join(ALGOS)}) or 'controllers' (random and "
        "REINFORCE with each controller: reinforce-bidirectional, reinforce-autoregressive, "
        "reinforce-encoder-decoder, reinforce-actor-critic); reinforce-pretrained starts from "
        "the shipped removal policy",
    )
    parser.add_argument(
        "--seeds",
        type=int,
        default=BENCHMARK_SEEDS,
        help=f"seeds per algorithm (default: {BENCHMARK_SEEDS})",
    )
    parser.add_argument(
        "--first-seed", type=int, default=0, help="the seeds are first-seed, first-seed+1, ..."
    )
    parser.add_argument(
        "--workers", type=int, default=2, help="runs at a time, one core each (default: 2)"
    )
    parser.add_argument(
        "--env-kwargs",
        default="{}",
        help="JSON object of gymnasium.make arguments for every run, e.g. "
        '\'{"halving": {"eta": 3}}\' (default: {})',
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = OneLineParser(
        description=__doc__.split("\n")[0],
        epilog="examples:\n" + __doc__.split("\n\n")[1],
    )
    add_arguments(parser)
    parser.add_argument("--budget", type=int, default=None, help="one budget instead of --budgets")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="the benchmark folder (default: runs/benchmark, or runs/benchmark-<env> for one env)",
    )
    args = parser.parse_args(argv)
    check_args(parser, args)
    return args


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Bad benchmark input fails here, before any run starts or folder exists."""
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
    if args.env is None:
        args.env = ",".join(SUITE_ENVS if args.suite else BENCHMARK_ENVS)
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
    try:
        env_kwargs = json.loads(args.env_kwargs)
    except json.JSONDecodeError:
        env_kwargs = None  # the run checks below say what is wrong with it
    if args.suite and isinstance(env_kwargs, dict):
        problem = check_suite_envs(args.envs, env_kwargs)
        if problem:
            parser.error(f"--suite: {problem}")
    if args.out is None:
        args.out = Path(
            "runs/suite"
            if args.suite
            else "runs/benchmark"
            if len(args.envs) > 1
            else f"runs/benchmark-{args.envs[0]}"
        )
    if problem := out_folder_problem(args.out):
        parser.error(f"--out {args.out}: {problem}")
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


def run_benchmark(args: argparse.Namespace, console: Console) -> int:
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
    reports = {}
    for env in args.envs:
        done = [j.run_dir for j in jobs if j.env == env and _finished(j.run_dir, j.budget)]
        if not done:
            console.print(f"{env}: no run finished, so there is nothing to report", style="red")
            continue
        report = benchmark_report(load_runs(done), _env_dir(args, env), args.budgets)
        reports[env] = report
        reported += 1
        if console.is_terminal:
            console.print(benchmark_table(report))
        else:  # piped or in a file: Markdown keeps every column
            print(markdown_table(report) + "\n")
        console.print(f"wrote {', '.join(str(p) for p in report.files.values())}", soft_wrap=True)
    if not reported:
        return fail("no run finished, so there is nothing to report")
    if args.suite:
        if len(reports) < len(args.envs):
            console.print("the suite needs every environment's runs: rerun to finish them")
            return 1
        suite = suite_report(reports, _references(args), args.out)
        if console.is_terminal:
            console.print(suite_table(suite))
        else:
            print(suite_markdown(suite) + "\n")
        console.print(f"wrote {', '.join(str(p) for p in suite.files.values())}", soft_wrap=True)
    return 1 if failed else 0


def _references(args: argparse.Namespace) -> dict[str, float]:
    """Each environment's reference reward (a random student's worth), under its env kwargs."""
    import gymnasium as gym

    import n2n_gym  # noqa: F401 (registers the environments)

    references = {}
    for env_id in args.envs:
        env = gym.make(env_id, **json.loads(args.env_kwargs))
        references[env_id] = env.unwrapped.table_reference()
        env.close()
    return references


def main(argv: list[str] | None = None) -> int:
    """``n2n-gym benchmark``; returns the exit status (2 for bad input)."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return run_benchmark(args, Console())
    except (RunDirError, TaskError, ValueError) as error:
        return fail(str(error))
    except KeyboardInterrupt:
        return fail("interrupted", 130)


if __name__ == "__main__":
    sys.exit(main())
