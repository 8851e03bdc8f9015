"""Benchmark search algorithms: every (algorithm, seed) as a run, then rliable statistics.

    n2n-gym benchmark                                    # both shipped tables, 20 seeds, 30/100/300
    n2n-gym benchmark --env N2NJoint-Tab-v0 --algos ppo,random --seeds 10 --budgets 50,200
    n2n-gym benchmark --env N2NJoint-v1 --algos reinforce,random --seeds 3 --budget 100   # live
    n2n-gym benchmark --suite                            # both tables and the surrogate, pooled

(``python evaluate.py --benchmark ...`` is the same command; :mod:`n2n_gym.benchmark_runner` is
the library it calls.) Every run that is not finished yet runs as an ordinary run directory under
``--out`` (``--workers`` at a time, one torch thread each; a killed benchmark continues where it
stopped, and a folder is continued only with the ``--env-kwargs`` its runs were made with), then
each environment's statistics of :mod:`n2n_gym.benchmark` are written into its folder: regret at each budget against the table's
seed-mean target, IQM with seeded stratified bootstrap intervals, probability of improvement over
random search, reward-free students per algorithm, the two seed halves' ranking agreement,
students to reach the optimum, performance profiles and whether each search learns. With
``--suite`` the environments (by default the tables and the narrow ResNet's surrogate) are also
pooled into one report of normalised regret over tasks x seeds (:mod:`n2n_gym.suite`).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from rich.console import Console

from n2n_gym.benchmark_runner import (
    BENCHMARK_ALGOS,
    BENCHMARK_BUDGETS,
    BENCHMARK_ENVS,
    BENCHMARK_SEEDS,
    DEFAULT_ALGOS,
    BenchmarkSettings,
    resolve_benchmark,
)
from n2n_gym.cli import OneLineParser, fail
from n2n_gym.search_settings import SettingsRefused

__all__ = [
    "BENCHMARK_ALGOS",
    "BENCHMARK_ENVS",
    "DEFAULT_ALGOS",
    "add_arguments",
    "check_args",
    "main",
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The benchmark's flags (``--budget`` and ``--out`` are the caller's to add)."""
    from agents.names import ALGOS
    from n2n_gym.suite import SUITE_ENVS

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


def parse_args(argv: list[str] | None = None) -> BenchmarkSettings:
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
    return check_args(parser, parser.parse_args(argv))


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> BenchmarkSettings:
    """The flags as checked settings; bad input exits here with one line, before any run starts
    or folder exists."""
    envs = tuple(e.strip() for e in (args.env or "").split(",") if e.strip())
    if args.env is not None and not envs:
        parser.error(f"--env {args.env!r}: name each environment once, comma-separated")
    if args.budget is not None:
        budgets: tuple[int, ...] = (args.budget,)
    else:
        try:
            budgets = tuple(int(b) for b in args.budgets.split(",") if b.strip())
        except ValueError:
            parser.error(
                f"--budgets {args.budgets!r}: comma-separated whole numbers, e.g. 30,100,300"
            )
    try:
        env_kwargs = json.loads(args.env_kwargs)
    except json.JSONDecodeError as error:
        parser.error(
            f"--env-kwargs is not valid JSON ({error}); it takes an object like '{{\"a\": 1}}'"
        )
    if not isinstance(env_kwargs, dict):
        parser.error("--env-kwargs must be a JSON object, like '{\"a\": 1}'")
    settings = BenchmarkSettings(
        envs=envs,
        algos=tuple(a.strip() for a in args.algos.split(",") if a.strip()),
        seeds=args.seeds,
        first_seed=args.first_seed,
        budgets=budgets,
        workers=args.workers,
        env_kwargs=env_kwargs,
        out=args.out,
        suite=args.suite,
    )
    try:
        return resolve_benchmark(settings)
    except SettingsRefused as error:
        parser.error(str(error))


def main(argv: list[str] | None = None) -> int:
    """``n2n-gym benchmark``; returns the exit status (2 for bad input)."""
    from n2n_gym.benchmark import benchmark_table, markdown_table
    from n2n_gym.benchmark_runner import run_benchmark
    from n2n_gym.runs import RunDirError
    from n2n_gym.suite import suite_markdown, suite_table
    from n2n_gym.task import TaskError

    settings = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    console = Console()
    try:
        result = run_benchmark(settings, console)
    except (RunDirError, TaskError, ValueError) as error:
        return fail(str(error))
    except KeyboardInterrupt:
        return fail("interrupted: rerun the same command to continue the benchmark", 130)
    if result.failed:
        console.print(
            f"{len(result.failed)} run(s) failed: {'; '.join(result.failed)}",
            style="red",
            soft_wrap=True,
        )
    for env in settings.envs:
        report = result.reports.get(env)
        if report is None:
            console.print(f"{env}: no run finished, so there is nothing to report", style="red")
            continue
        if console.is_terminal:
            console.print(benchmark_table(report))
        else:  # piped or in a file: Markdown keeps every column
            print(markdown_table(report) + "\n")
        console.print(f"wrote {', '.join(str(p) for p in report.files.values())}", soft_wrap=True)
    if settings.suite:
        if result.suite is None:
            console.print("the suite needs every environment's runs: rerun to finish them")
            return 1
        if console.is_terminal:
            console.print(suite_table(result.suite))
        else:
            print(suite_markdown(result.suite) + "\n")
        files = result.suite.files.values()
        console.print(f"wrote {', '.join(str(p) for p in files)}", soft_wrap=True)
    return 1 if result.failed else 0


if __name__ == "__main__":
    sys.exit(main())
