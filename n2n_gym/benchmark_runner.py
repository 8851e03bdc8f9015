"""Running a benchmark: every (environment, algorithm, seed) as a search run, then the reports.

:func:`resolve_benchmark` checks a benchmark's settings (:class:`BenchmarkSettings`) before any
folder exists — each run's settings too, exactly as each run will check them — and
:func:`run_benchmark` runs what is not finished yet, ``workers`` at a time in long-lived worker
processes with one torch thread each (a run costs its search, not a start-up), each an ordinary
run directory whose output goes to its log. A killed benchmark continues where it stopped, and a
folder is continued only with the env kwargs its runs were made with. Then each environment gets
the statistics of :mod:`n2n_gym.benchmark`, and with ``suite`` the environments are pooled by
:mod:`n2n_gym.suite`. ``n2n-gym benchmark`` is the command line of this module.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agents.names import ALGOS, BUDGET_DEPENDENT, CONTROLLER_KINDS, PRUNING_SEARCHES
from n2n_gym.atomic import write_json_atomic
from n2n_gym.parent_watch import exit_with_parent, worker_context
from n2n_gym.runs import CONFIG_FILE, SUMMARY_FILE, RunDirError, distinct_counts, read_evaluations
from n2n_gym.search_settings import (
    CLI_NAMES,
    SearchSettings,
    SettingNames,
    SettingsRefused,
    resolve_settings,
)

if TYPE_CHECKING:
    from rich.console import Console

    from n2n_gym.benchmark import BenchmarkReport
    from n2n_gym.suite import SuiteReport

__all__ = [
    "BENCHMARK_ALGOS",
    "BENCHMARK_ENVS",
    "DEFAULT_ALGOS",
    "BenchmarkResult",
    "BenchmarkSettings",
    "resolve_benchmark",
    "run_benchmark",
]

# The shipped tables; every budget is reported, 20 seeds each (rankings from 5 flip).
BENCHMARK_ENVS = ("N2NJoint-Tab-v0", "N2NJoint-FashionMNIST-Tab-v0")
BENCHMARK_BUDGETS = (30, 100, 300)
BENCHMARK_SEEDS = 20
BENCHMARK_SETTINGS = "settings.json"
# Every algorithm whose own cost fits the default benchmark (RecurrentPPO's LSTM rollouts cost
# about 10x the others': it is reported from a separate run, see the docs).
# tpe-hyperband needs halving in the env kwargs (bench/halving.py runs it).
DEFAULT_ALGOS = tuple(a for a in ALGOS if a not in ("recurrent_ppo", *PRUNING_SEARCHES))
# REINFORCE with each of its controllers, and from the shipped removal policy, as algorithms of
# their own: the search settings each one sets.
VARIANTS: dict[str, dict[str, str]] = {
    **{f"reinforce-{kind}": {"controller": kind} for kind in CONTROLLER_KINDS},
    "reinforce-pretrained": {"init_policy": "pretrained:removal"},
}
CONTROLLER_VARIANTS = tuple(f"reinforce-{kind}" for kind in CONTROLLER_KINDS)
BENCHMARK_ALGOS = (*ALGOS, *VARIANTS)
# Names that stand for several algorithms.
ALGO_SETS = {
    "default": DEFAULT_ALGOS,
    "all": ALGOS,
    "controllers": ("random", *CONTROLLER_VARIANTS),
}


@dataclass
class BenchmarkSettings:
    """What a benchmark runs (see ``n2n-gym benchmark --help`` for each)."""

    envs: tuple[str, ...] = BENCHMARK_ENVS
    """environments, each reported on its own"""
    algos: tuple[str, ...] = DEFAULT_ALGOS
    """algorithms (``default``, ``all`` and ``controllers`` stand for their sets)"""
    seeds: int = BENCHMARK_SEEDS
    """seeds per algorithm"""
    first_seed: int = 0
    """the seeds are first_seed, first_seed + 1, ..."""
    budgets: tuple[int, ...] = BENCHMARK_BUDGETS
    """budgets in distinct students, each reported"""
    workers: int = 2
    """runs at a time, one core each"""
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    """gymnasium.make arguments of every run"""
    out: Path | None = None
    """the benchmark folder (default: runs/suite, runs/benchmark or runs/benchmark-<env>)"""
    suite: bool = False
    """also pool the environments into one suite report"""


@dataclass
class BenchmarkResult:
    """What :func:`run_benchmark` did: each environment's report, the suite's, the failed runs."""

    reports: dict[str, BenchmarkReport]
    suite: SuiteReport | None
    failed: list[str]


@dataclass(frozen=True)
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


def resolve_benchmark(
    settings: BenchmarkSettings, names: SettingNames = CLI_NAMES
) -> BenchmarkSettings:
    """Check ``settings`` and fill in their defaults, before any run starts or folder exists.

    Raises:
        SettingsRefused: a setting cannot work (named as ``names`` spells it), or one of the runs
            would refuse its own settings.
    """
    from n2n_gym.cli import out_folder_problem
    from n2n_gym.runs import resume_conflict
    from n2n_gym.suite import SUITE_ENVS, check_suite_envs

    flag = names.flag
    algos: list[str] = []
    for name in settings.algos:
        algos += [a for a in ALGO_SETS.get(name, (name,)) if a not in algos]
    unknown = [a for a in algos if a not in BENCHMARK_ALGOS]
    if unknown or not algos:
        raise SettingsRefused(
            f"{flag('algos')}: unknown {', '.join(unknown) or 'empty'}; choose from "
            f"{', '.join(BENCHMARK_ALGOS)}"
        )
    envs = tuple(settings.envs) or (SUITE_ENVS if settings.suite else BENCHMARK_ENVS)
    if len(set(envs)) != len(envs):
        raise SettingsRefused(f"{flag('envs')} {','.join(envs)!r}: name each environment once")
    budgets = tuple(sorted(set(settings.budgets)))
    if not budgets:
        raise SettingsRefused(f"{flag('budgets')}: give at least one budget, e.g. 30,100,300")
    for name in ("seeds", "workers"):
        if getattr(settings, name) < 1:
            raise SettingsRefused(f"{flag(name)} must be at least 1")
    if budgets[0] < 1:
        raise SettingsRefused(f"{flag('budgets')}: {budgets[0]} must be at least 1")
    if settings.suite and (problem := check_suite_envs(envs, settings.env_kwargs)):
        raise SettingsRefused(f"{flag('suite')}: {problem}")
    out = Path(
        settings.out
        or (
            "runs/suite"
            if settings.suite
            else "runs/benchmark"
            if len(envs) > 1
            else f"runs/benchmark-{envs[0]}"
        )
    )
    if problem := out_folder_problem(out):
        raise SettingsRefused(f"{flag('out')} {out}: {problem}")
    resolved = replace(settings, envs=envs, algos=tuple(algos), budgets=budgets, out=out)
    recorded = out / BENCHMARK_SETTINGS
    if recorded.is_file():
        conflict = resume_conflict(json.loads(recorded.read_text()), _recorded(resolved))
        if conflict:
            raise SettingsRefused(f"{out} holds a benchmark: {conflict}")
    # The searches check each env and its kwargs exactly as each run will.
    given = flag("env_kwargs") if settings.env_kwargs else ""
    for env in envs:
        for algo in resolved.algos:
            job = _job(resolved, env, algo, resolved.first_seed)
            resolve_settings(
                _search_settings(resolved, job), names=names, given_task=lambda _: given
            )
    return resolved


def _recorded(settings: BenchmarkSettings) -> dict[str, Any]:
    """What every run of a benchmark folder shares (algorithms, seeds, envs and budgets may grow)."""
    return {"env_kwargs": settings.env_kwargs}


def _env_dir(settings: BenchmarkSettings, env: str) -> Path:
    out = Path(settings.out or ".")  # resolve_benchmark fills it in
    return out if len(settings.envs) == 1 else out / env


def _job(
    settings: BenchmarkSettings, env: str, algo: str, seed: int, budget: int | None = None
) -> _Job:
    """The run of ``algo`` at ``seed``: at the largest budget, or at ``budget`` of its own."""
    largest = settings.budgets[-1]
    name = f"{algo}-{seed}" if budget in (None, largest) else f"{algo}-{seed}-b{budget}"
    return _Job(env, algo, seed, budget or largest, _env_dir(settings, env) / name)


def _jobs(settings: BenchmarkSettings) -> list[_Job]:
    """Every run: each (env, algo, seed) at the largest budget, and at each smaller budget for an
    algorithm whose schedule scales with its budget (the others' smaller budgets are prefixes)."""
    seeds = range(settings.first_seed, settings.first_seed + settings.seeds)
    jobs = []
    for env in settings.envs:
        for algo in settings.algos:
            own = settings.budgets if algo in BUDGET_DEPENDENT else settings.budgets[-1:]
            jobs += [_job(settings, env, algo, seed, budget) for budget in own for seed in seeds]
    return jobs


def _search_settings(settings: BenchmarkSettings, job: _Job) -> SearchSettings:
    """The search one run is: its algorithm (or REINFORCE variant), env, seed, budget, folder."""
    algo, variant = ("reinforce", VARIANTS[job.algo]) if job.algo in VARIANTS else (job.algo, {})
    resume = (job.run_dir / CONFIG_FILE).exists()
    # The command that makes the same run, recorded for `n2n-gym train --rerun RUN_DIR`.
    argv = ["--algo", algo, "--env", job.env, "--seed", str(job.seed), "--budget", str(job.budget)]
    for key, value in variant.items():
        argv += [f"--{key.replace('_', '-')}", value]
    argv += ["--out", str(job.run_dir), "--threads", "1"]
    argv += ["--env-kwargs", json.dumps(settings.env_kwargs)] + (["--resume"] if resume else [])
    return SearchSettings(
        algo=algo,
        env=job.env,
        seed=job.seed,
        budget=job.budget,
        out=str(job.run_dir),
        threads=1,
        resume=resume,
        env_kwargs=dict(settings.env_kwargs),
        argv=argv,
        **variant,
    )


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


def run_benchmark(settings: BenchmarkSettings, console: Console) -> BenchmarkResult:
    """Run every unfinished run of checked ``settings`` (:func:`resolve_benchmark`), then report.

    Progress (runs done, each running run's students, ETA) is shown on ``console``; each run's
    own output goes to ``OUT/logs/<env>-<run>.log``.

    Returns:
        Each environment's report (those with a finished run), the suite's (with ``suite``) and
        the runs that failed.

    Raises:
        KeyboardInterrupt: interrupted; every run keeps what it measured, and the same call
            continues.
        RunDirError: no run finished, so there is nothing to report.
    """
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from n2n_gym.benchmark import benchmark_report
    from n2n_gym.compare import load_runs
    from n2n_gym.search_loop import run_search_logged

    if settings.out is None:
        raise ValueError(
            "run_benchmark: settings.out is None; pass the settings through resolve_benchmark "
            "first (it checks them and fills in the folder)"
        )
    jobs = _jobs(settings)
    pending = [job for job in jobs if not _finished(job.run_dir, job.budget)]
    logs = settings.out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    write_json_atomic(settings.out / BENCHMARK_SETTINGS, _recorded(settings))
    console.print(
        f"benchmark of {len(settings.algos)} algorithms x {settings.seeds} seeds x budgets "
        f"{'/'.join(map(str, settings.budgets))} on {', '.join(settings.envs)} into "
        f"{settings.out}: {len(jobs) - len(pending)} runs done, {len(pending)} to go, "
        f"{settings.workers} at a time",
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
    # Workers end with this process: a killed benchmark leaves no search running.
    pool = ProcessPoolExecutor(
        max_workers=settings.workers,
        mp_context=worker_context("n2n_gym.search_loop"),
        initializer=exit_with_parent,
        initargs=(os.getpid(),),
    )
    try:
        with Progress(*columns, console=console) as progress:
            overall = progress.add_task("runs", total=len(jobs), completed=len(jobs) - len(pending))
            running: dict[Future, _Job] = {}
            bars: dict[_Job, Any] = {}
            while pending or running:
                while pending and len(running) < settings.workers:
                    job = pending.pop(0)
                    log = logs / f"{job.env}-{job.name}.log"
                    search = _search_settings(settings, job)
                    running[pool.submit(run_search_logged, search, str(log))] = job
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
        raise
    pool.shutdown()
    reports: dict[str, BenchmarkReport] = {}
    for env in settings.envs:
        done = [j.run_dir for j in jobs if j.env == env and _finished(j.run_dir, j.budget)]
        if done:
            reports[env] = benchmark_report(
                load_runs(done), _env_dir(settings, env), list(settings.budgets)
            )
    if not reports:
        raise RunDirError("no run finished, so there is nothing to report")
    suite = None
    if settings.suite and len(reports) == len(settings.envs):
        from n2n_gym.suite import suite_report

        suite = suite_report(reports, _references(settings), settings.out)
    return BenchmarkResult(reports=reports, suite=suite, failed=failed)


def _references(settings: BenchmarkSettings) -> dict[str, float]:
    """Each environment's reference reward (a random student's worth), under its env kwargs."""
    import gymnasium as gym

    references = {}
    for env_id in settings.envs:
        env = gym.make(env_id, **settings.env_kwargs)
        references[env_id] = env.unwrapped.table_reference()
        env.close()
    return references
