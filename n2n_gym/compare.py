"""Comparing search runs: which algorithm finds the best student for the same evaluation budget.

Runs are grouped by environment and algorithm, one run per seed, and every run is cut to a common
budget of distinct students (by default the smallest run's), the fair unit across algorithms: a
repeat is answered by the cache and costs nothing. For each group :func:`compare_runs` reports

- the best reward within the budget, mean ± sample standard deviation over seeds;
- the distinct students a seed needed to reach 95 % of the best reward found by any compared run
  on the same environment (mean ± std over the seeds that reached it, and how many did);
- the validation accuracy, parameters and compression of the group's best student;
- the time spent evaluating students per run (the sum of the evaluations' ``wall_time``), mean.

A failed evaluation (``error`` set) uses up one evaluation of the budget but is never a best
student. The rows are written to ``comparison.json`` and ``comparison.csv`` with two plots:
``best_reward.png`` (best reward so far against evaluations) and ``pareto.png`` (accuracy against
parameters of every evaluated student, with the Pareto front and the teacher).

    comparison = compare_runs(["runs/"], "runs/comparison")
    Console().print(comparison_table(comparison))
"""

from __future__ import annotations

import csv
import json
import logging
import math
import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from rich.table import Table

from n2n_gym.atomic import atomic_write, write_json_atomic
from n2n_gym.runs import (
    CONFIG_FILE,
    EVALUATIONS_FILE,
    REPORT_FILE,
    SUMMARY_FILE,
    distinct_counts,
    full_fidelity,
    incumbent_worth,
    read_evaluations,
    within_budget,
)

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "ROW_FIELDS",
    "TARGET_FRACTION",
    "Comparison",
    "Run",
    "compare_runs",
    "comparison_rows",
    "comparison_table",
    "load_runs",
]

logger = logging.getLogger(__name__)

# A seed "reaches" the target when one of its students earns this fraction of the best reward.
TARGET_FRACTION = 0.95

JSON_FILE = "comparison.json"
CSV_FILE = "comparison.csv"
REWARD_PLOT = "best_reward.png"
PARETO_PLOT = "pareto.png"

# Column order of comparison.csv; also the keys of every row.
ROW_FIELDS = (
    "env",
    "algo",
    "seeds",
    "budget",
    "best_reward_mean",
    "best_reward_std",
    "target_reward",
    "evals_to_target_mean",
    "evals_to_target_std",
    "reached",
    "best_accuracy",
    "best_params",
    "best_compression",
    "best_run",
    "teacher_accuracy",
    "teacher_params",
    "wall_time_mean",
)


@dataclass(frozen=True)
class Run:
    """One search run read from its directory.

    Attributes:
        path: the run directory.
        env: environment id the run searched.
        algo: search algorithm.
        seed: seed of the run.
        evaluations: the records of ``evaluations.jsonl``, in order (at least one).
        report: the contents of ``report.json`` (the finished student on the test set), if any.
        summary: the contents of ``summary.json``, if any.
        budget: the distinct students the run was given, if its config says.
    """

    path: Path
    env: str
    algo: str
    seed: int
    evaluations: list[dict[str, Any]]
    report: dict[str, Any] | None = None
    summary: dict[str, Any] | None = None
    budget: int | None = None


@dataclass(frozen=True)
class Comparison:
    """What :func:`compare_runs` found and wrote.

    Attributes:
        rows: one plain dict per (env, algo) group, keys as in ``ROW_FIELDS``; ``None`` where a
            value does not exist (a std over one seed, a group no seed of which reached the target).
        budget: distinct students every run was cut to.
        runs: the compared runs.
        json_path: ``comparison.json``: ``{"budget", "target_fraction", "runs", "rows"}``.
        csv_path: ``comparison.csv``: the rows, seeds joined by ``;``.
        reward_plot: ``best_reward.png``.
        pareto_plot: ``pareto.png``.
    """

    rows: list[dict[str, Any]]
    budget: int
    runs: list[Run]
    json_path: Path
    csv_path: Path
    reward_plot: Path
    pareto_plot: Path


def _is_run_dir(path: Path) -> bool:
    return (path / EVALUATIONS_FILE).is_file() or (path / CONFIG_FILE).is_file()


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error}); fix or delete it") from error


def _read_run(path: Path) -> Run:
    evaluations = read_evaluations(path)
    if not evaluations:
        raise ValueError(
            f"{path} has no evaluations yet (empty or missing {EVALUATIONS_FILE}); "
            "let the run record at least one evaluation or leave it out of the comparison"
        )
    # config.json holds the CLI arguments; summary.json also names algo, seed and env.
    summary = _read_json(path / SUMMARY_FILE)
    meta = {**summary, **_read_json(path / CONFIG_FILE)}
    missing = [key for key in ("env", "algo", "seed") if meta.get(key) is None]
    if missing:
        raise ValueError(
            f"{path}: neither {CONFIG_FILE} nor {SUMMARY_FILE} names its {', '.join(missing)}; "
            "compare run directories written by train_agent.py"
        )
    report = _read_json(path / REPORT_FILE) or None
    # A chosen controller, or a start from a trained policy, makes an algorithm of its own:
    # reinforce-actor-critic, reinforce-pretrained ...
    algo = str(meta["algo"]) + (f"-{meta['controller']}" if meta.get("controller") else "")
    algo += "-pretrained" if meta.get("init_policy") else ""
    return Run(
        path,
        str(meta["env"]),
        algo,
        int(meta["seed"]),
        evaluations,
        report,
        summary or None,
        int(meta["budget"]) if meta.get("budget") is not None else None,
    )


def load_runs(paths: Iterable[str | Path]) -> list[Run]:
    """Read search runs from run directories or from folders that hold run directories.

    Args:
        paths: run directories (written by ``train_agent.py``); a folder that is not a run directory
            is searched recursively for the runs inside it. A run found twice is read once.

    Returns:
        The runs, in the order given (runs inside a folder sorted by path).

    Raises:
        ValueError: a path does not exist, is neither a run directory nor holds one, a named run
            directory has no evaluations, or a run does not say its algorithm, seed or environment.
            A run without evaluations found inside a folder is skipped with a warning instead.
    """
    runs: list[Run] = []
    seen: set[Path] = set()
    for given in paths:
        path = Path(given)
        if not path.is_dir():
            raise ValueError(f"{path} does not exist or is not a directory; pass a run directory")
        if _is_run_dir(path):
            found, named = [path], True
        else:
            found = sorted({p.parent for p in path.rglob(EVALUATIONS_FILE)})
            named = False
            if not found:
                raise ValueError(
                    f"{path} is not a run directory (no {EVALUATIONS_FILE} or {CONFIG_FILE}) and "
                    "holds none; pass directories written by train_agent.py --out DIR "
                    "(or a folder of them)"
                )
        for run_dir in found:
            key = run_dir.resolve()
            if key in seen:
                continue
            seen.add(key)
            try:
                runs.append(_read_run(run_dir))
            except ValueError as error:
                if named:
                    raise
                logger.warning("skipping %s: %s", run_dir, error)
    if not runs:
        raise ValueError("no runs with evaluations to compare; pass run directories")
    return runs


def _best_record(records: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The first successful record with the highest reward (the one RunRecorder keeps)."""
    best = None
    for record in records:
        if full_fidelity(record) and (best is None or record["reward"] > best["reward"]):
            best = record
    return best


def _evaluations_to_reach(records: list[dict[str, Any]], target: float) -> int | None:
    """Distinct students evaluated when a record first reached ``target``."""
    for record, count in zip(records, distinct_counts(records), strict=True):
        if full_fidelity(record) and record["reward"] >= target:
            return count
    return None


def _target(best: float) -> float:
    # Rewards can be negative (constraint violations): 95 % of the way from 0 would then be above.
    return best - (1.0 - TARGET_FRACTION) * abs(best)


def _mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    mean = statistics.fmean(values)
    return mean, statistics.stdev(values) if len(values) > 1 else None


def _teacher(runs: Iterable[Run]) -> tuple[float | None, int | None]:
    for run in runs:
        for record in reversed(run.evaluations):
            if record.get("teacher_params") is not None:
                return record.get("teacher_accuracy"), record["teacher_params"]
    return None, None


def _common_budget(runs: Sequence[Run], budget: int | None) -> int:
    sizes = {run.path: distinct_counts(run.evaluations)[-1] for run in runs}
    shortest = min(runs, key=lambda run: sizes[run.path])
    if budget is None:
        return sizes[shortest.path]
    if budget < 1:
        raise ValueError(f"budget={budget} must be at least 1 student")
    if budget > sizes[shortest.path] and not _converged(shortest):
        raise ValueError(
            f"budget={budget} exceeds the {sizes[shortest.path]} distinct students of "
            f"{shortest.path}; pass a budget of at most {sizes[shortest.path]} or leave that "
            "run out"
        )
    return budget


def _converged(run: Run) -> bool:
    # A converged run stopped short of its budget on purpose: its best stays the best from there.
    return (run.summary or {}).get("stop_reason") == "converged"


def _groups(runs: Iterable[Run]) -> dict[tuple[str, str], list[Run]]:
    groups: dict[tuple[str, str], list[Run]] = defaultdict(list)
    for run in runs:
        groups[run.env, run.algo].append(run)
    for members in groups.values():
        members.sort(key=lambda run: (run.seed, str(run.path)))
    return dict(sorted(groups.items()))


def comparison_rows(
    runs: Sequence[Run], budget: int | None = None
) -> tuple[list[dict[str, Any]], int]:
    """One row per (env, algo) group of ``runs``, every run cut to a common budget.

    Args:
        runs: runs from :func:`load_runs`.
        budget: distinct students to compare at; ``None``: the smallest count among ``runs``.

    Returns:
        The rows (plain dicts with the keys of ``ROW_FIELDS``, best mean reward first within an
        environment) and the budget used.

    Raises:
        ValueError: ``budget`` is below 1 or above some run's evaluation count.
    """
    budget = _common_budget(runs, budget)
    groups = _groups(runs)
    best_by_env: dict[str, float] = {}
    for run in runs:
        best = _best_record(within_budget(run.evaluations, budget))
        if best is not None:
            best_by_env[run.env] = max(best["reward"], best_by_env.get(run.env, -math.inf))
    rows = []
    for (env, algo), members in groups.items():
        seeds = [run.seed for run in members]
        if len(set(seeds)) < len(seeds):
            logger.warning("%s on %s: several runs share a seed (%s)", algo, env, seeds)
        records = [within_budget(run.evaluations, budget) for run in members]
        bests = [_best_record(r) for r in records]
        if None in bests:
            logger.warning(
                "%s on %s: a run has no successful evaluation within %d", algo, env, budget
            )
        reward_mean, reward_std = _mean_std([b["reward"] for b in bests if b is not None])
        target = _target(best_by_env[env]) if env in best_by_env else None
        reached = [] if target is None else [_evaluations_to_reach(r, target) for r in records]
        reached = [n for n in reached if n is not None]
        evals_mean, evals_std = _mean_std(reached)
        top_index = max(
            (i for i, b in enumerate(bests) if b is not None),
            key=lambda i: bests[i]["reward"],
            default=None,
        )
        top = bests[top_index] if top_index is not None else {}
        times = [[r["wall_time"] for r in rs if r.get("wall_time") is not None] for rs in records]
        teacher_accuracy, teacher_params = _teacher(members)
        rows.append(
            {
                "env": env,
                "algo": algo,
                "seeds": seeds,
                "budget": budget,
                "best_reward_mean": reward_mean,
                "best_reward_std": reward_std,
                "target_reward": target,
                "evals_to_target_mean": evals_mean,
                "evals_to_target_std": evals_std,
                "reached": len(reached),
                "best_accuracy": top.get("accuracy"),
                "best_params": top.get("params"),
                "best_compression": top.get("compression"),
                "best_run": str(members[top_index].path) if top_index is not None else None,
                "teacher_accuracy": teacher_accuracy,
                "teacher_params": teacher_params,
                "wall_time_mean": _mean_std([sum(t) for t in times if t])[0],
            }
        )
    rows.sort(
        key=lambda row: (
            row["env"],
            math.inf if row["best_reward_mean"] is None else -row["best_reward_mean"],
        )
    )
    return rows, budget


def _algo_colours(runs: Iterable[Run]) -> dict[str, Any]:
    import matplotlib  # only when plotting: it takes a second to import

    palette = matplotlib.colormaps["tab10"]
    return {algo: palette(i % 10) for i, algo in enumerate(sorted({run.algo for run in runs}))}


def _figure(envs: Sequence[str]) -> tuple[Figure, list[Axes]]:
    """One panel per environment, drawn by Agg without pyplot: no window, no global state."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.5 * len(envs), 4.8), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(envs), squeeze=False)
    return fig, list(axes[0])


def _save(fig: Figure, path: Path) -> None:
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    logger.info("wrote %s", path)


def _plot_best_reward(runs: Sequence[Run], budget: int, path: Path) -> None:
    envs = sorted({run.env for run in runs})
    colours = _algo_colours(runs)
    fig, axes = _figure(envs)
    for env, ax in zip(envs, axes, strict=True):
        for (group_env, algo), members in _groups(runs).items():
            if group_env != env:
                continue
            curves = np.array([incumbent_worth(run.evaluations, budget) for run in members])
            steps = np.arange(1, budget + 1)
            # The mean starts once every seed has a student (a mean over a changing subset of
            # seeds could fall); the band covers whichever seeds have one.
            mean = curves.mean(axis=0)
            low, high = np.full(budget, np.nan), np.full(budget, np.nan)
            some = ~np.isnan(curves).all(axis=0)
            low[some] = np.nanmin(curves[:, some], axis=0)
            high[some] = np.nanmax(curves[:, some], axis=0)
            colour = colours[algo]
            ax.plot(steps, mean, color=colour, label=f"{algo} ({len(members)} seeds)")
            ax.fill_between(steps, low, high, color=colour, alpha=0.2, linewidth=0)
        ax.set_xlabel("distinct students evaluated")
        ax.set_ylabel("best reward so far")
        ax.set_xlim(1, max(budget, 2))
        ax.set_title(f"{env}: mean over seeds, band = min–max")
        ax.grid(alpha=0.3)
        ax.legend(loc="best")
    _save(fig, path)


def _pareto_front(points: Iterable[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points (params, accuracy) with a higher accuracy than every point with fewer parameters."""
    front: list[tuple[float, float]] = []
    for params, accuracy in sorted(points, key=lambda p: (p[0], -p[1])):
        if not front or accuracy > front[-1][1]:
            front.append((params, accuracy))
    return front


def _plot_pareto(runs: Sequence[Run], budget: int, path: Path) -> None:
    envs = sorted({run.env for run in runs})
    colours = _algo_colours(runs)
    fig, axes = _figure(envs)
    for env, ax in zip(envs, axes, strict=True):
        members = [run for run in runs if run.env == env]
        points: list[tuple[float, float]] = []
        for algo in sorted({run.algo for run in members}):
            students = [
                (r["params"], 100 * r["accuracy"])
                for run in members
                if run.algo == algo
                for r in within_budget(run.evaluations, budget)
                if r.get("error") is None and r.get("params") and r.get("accuracy") is not None
            ]
            points += students
            if students:
                xs, ys = zip(*students, strict=True)
                ax.scatter(xs, ys, s=14, alpha=0.5, color=colours[algo], label=algo)
        front = _pareto_front(points)
        if front:
            xs, ys = zip(*front, strict=True)
            ax.step(xs, ys, where="post", color="black", linewidth=1.2, label="Pareto front")
        teacher_accuracy, teacher_params = _teacher(members)
        if teacher_params and teacher_accuracy is not None:
            ax.scatter(
                [teacher_params],
                [100 * teacher_accuracy],
                marker="*",
                s=220,
                color="gold",
                edgecolors="black",
                zorder=5,
                label="teacher (validation)",
            )
        finished = [
            run
            for run in members
            if run.report
            and run.report.get("params")
            and run.report.get("test_accuracy") is not None
        ]
        for index, run in enumerate(finished):
            ax.scatter(
                [run.report["params"]],
                [100 * run.report["test_accuracy"]],
                marker="D",
                s=60,
                color=colours[run.algo],
                edgecolors="black",
                zorder=6,
                label="finished student (test)" if index == 0 else None,
            )
        ax.set_xscale("log")
        ax.set_xlabel("parameters")
        ax.set_ylabel("accuracy (%), validation unless marked test")
        ax.set_title(f"{env}: students of the first {budget} evaluations")
        ax.grid(alpha=0.3, which="both")
        ax.legend(loc="best")
    _save(fig, path)


def _write_csv(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    def write(tmp: Path) -> None:
        with tmp.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=ROW_FIELDS)
            writer.writeheader()
            for row in rows:
                cells = {k: "" if v is None else v for k, v in row.items()}
                cells["seeds"] = ";".join(str(seed) for seed in row["seeds"])
                writer.writerow(cells)

    atomic_write(path, write)


def compare_runs(
    paths: Iterable[str | Path], out_dir: str | Path, budget: int | None = None
) -> Comparison:
    """Compare search runs at a common budget and write the rows and plots to ``out_dir``.

    Args:
        paths: run directories, or folders holding them (see :func:`load_runs`).
        out_dir: where ``comparison.json``, ``comparison.csv``, ``best_reward.png`` and
            ``pareto.png`` go (created if missing).
        budget: distinct students to compare at; ``None``: the smallest count among the runs.

    Returns:
        The :class:`Comparison`: rows, budget, runs and the paths written.

    Raises:
        ValueError: a path is not a run directory (see :func:`load_runs`) or the budget is out of
            range (see :func:`comparison_rows`).
    """
    runs = load_runs(paths)
    rows, budget = comparison_rows(runs, budget)
    out = Path(out_dir)
    comparison = Comparison(
        rows=rows,
        budget=budget,
        runs=runs,
        json_path=out / JSON_FILE,
        csv_path=out / CSV_FILE,
        reward_plot=out / REWARD_PLOT,
        pareto_plot=out / PARETO_PLOT,
    )
    write_json_atomic(
        comparison.json_path,
        {
            "budget": budget,
            "target_fraction": TARGET_FRACTION,
            "runs": [str(run.path) for run in runs],
            "rows": rows,
        },
    )
    _write_csv(comparison.csv_path, rows)
    _plot_best_reward(runs, budget, comparison.reward_plot)
    _plot_pareto(runs, budget, comparison.pareto_plot)
    logger.info("compared %d runs in %d groups at %d evaluations", len(runs), len(rows), budget)
    return comparison


def _fmt(value: float | None, pattern: str) -> str:
    return "-" if value is None else pattern.format(value)


def _pm(mean: float | None, std: float | None, pattern: str) -> str:
    if mean is None:
        return "-"
    return pattern.format(mean) + ("" if std is None else " ± " + pattern.format(std))


def comparison_table(comparison: Comparison) -> Table:
    """A rich table of the comparison's rows, for a console."""
    rows = comparison.rows
    pct = f"{100 * TARGET_FRACTION:g} %"
    table = Table(
        title=f"search algorithms at {comparison.budget} student evaluations",
        caption=f"mean ± std over seeds; evals to {pct}: until a student earned {pct} of the "
        "best reward any compared run found",
    )
    show_env = len({row["env"] for row in rows}) > 1
    columns = ["env"] if show_env else []
    columns += [
        "algo",
        "seeds",
        "best reward",
        f"evals to {pct}",
        "reached",
        "best val acc",
        "params",
        "compression",
        "eval time/run",
    ]
    for column in columns:
        table.add_column(column, justify="left" if column in ("env", "algo") else "right")
    for row in rows:
        cells = [row["env"]] if show_env else []
        cells += [
            row["algo"],
            str(len(row["seeds"])),
            _pm(row["best_reward_mean"], row["best_reward_std"], "{:.4f}"),
            _pm(row["evals_to_target_mean"], row["evals_to_target_std"], "{:.1f}"),
            f"{row['reached']}/{len(row['seeds'])}",
            _fmt(None if row["best_accuracy"] is None else 100 * row["best_accuracy"], "{:.2f} %"),
            _fmt(row["best_params"], "{:,}"),
            _fmt(row["best_compression"], "{:.1f}x"),
            _fmt(row["wall_time_mean"], "{:.1f} s"),
        ]
        table.add_row(*cells)
    return table
