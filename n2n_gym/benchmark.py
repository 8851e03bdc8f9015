"""Statistics of a search-algorithm benchmark: regret, robust aggregates and their plots.

A benchmark is many runs — one per (algorithm, seed) — of the same environment, each an ordinary
run directory. :func:`benchmark_report` reads them and computes, with rliable (Agarwal et al.,
NeurIPS 2021):

- **regret**: the optimum minus the best reward found so far, against distinct students evaluated
  and against simulated seconds (the measured cost of each new student, 0 for a repeat). The
  optimum is the table's (``info["table_optimum"]``, exact) on table envs, else the best reward
  any run found (then regret is relative to the runs compared, and the report says so);
- the **interquartile mean** of the final regret per algorithm, with a 95 % stratified bootstrap
  confidence interval, and the anytime IQM regret with its band;
- the **probability of improvement** of each algorithm over random search (``P(X > Y)`` on final
  regret, ties counted half), with its interval;
- **students to reach** the optimum and 99 % of it: the median over seeds, where a seed that never
  reached it is right-censored at the budget (not dropped): when more than half the seeds reached
  it, the median is that of the uncensored times, else "not reached";
- **performance profiles**: the fraction of runs whose final regret is at most τ, against τ;
- **learning**: the mean reward of a run's last 100 episodes minus that of its first 100, IQM
  over seeds with its interval (a search that reacts to its rewards has it above 0).

Everything lands in the benchmark folder: ``benchmark.json``, ``benchmark.csv``, ``benchmark.md``
and the plots ``regret_students.png``, ``regret_seconds.png``, ``final_regret.png`` and
``performance_profile.png``.
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from n2n_gym.atomic import atomic_write, write_json_atomic
from n2n_gym.compare import Run, best_by_student
from n2n_gym.runs import distinct_counts, full_fidelity

logger = logging.getLogger(__name__)

__all__ = [
    "REACH_FRACTIONS",
    "BenchmarkReport",
    "anytime_iqm",
    "benchmark_report",
    "learning_gain",
    "regret_curve",
    "seconds_regret_curve",
    "students_to_reach",
]

BASELINE = "random"
REACH_FRACTIONS = (1.0, 0.99)
LEARNING_WINDOW = 100  # episodes at each end compared by the learning statistic
# Rewards pass through float32 in vector environments: a regret below this is the optimum.
TOLERANCE = 1e-6
ANYTIME_POINTS = 25
FILES = {
    "json": "benchmark.json",
    "csv": "benchmark.csv",
    "markdown": "benchmark.md",
    "regret_students": "regret_students.png",
    "regret_seconds": "regret_seconds.png",
    "final_regret": "final_regret.png",
    "profile": "performance_profile.png",
}


def _optimum(runs: Sequence[Run]) -> tuple[float, bool]:
    """The table's optimum if the runs recorded one (exact), else the best reward of any run."""
    recorded = [
        r["table_optimum"]
        for run in runs
        for r in run.evaluations
        if r.get("table_optimum") is not None
    ]
    if recorded:
        return float(max(recorded)), True
    best = max(
        (r["reward"] for run in runs for r in run.evaluations if full_fidelity(r)),
        default=0.0,
    )
    return float(best), False


def regret_curve(records: list[dict[str, Any]], budget: int, optimum: float) -> np.ndarray:
    """Regret after 1 … ``budget`` distinct students (the optimum minus the best so far, ≥ 0).

    Before a run's first successful student its regret is the optimum's distance from 0 reward.
    """
    best = np.array(best_by_student(records, budget), dtype=float)
    best = np.where(np.isnan(best), 0.0, best)
    return _clean(optimum - best)


def _clean(regret: np.ndarray) -> np.ndarray:
    return np.where(regret < TOLERANCE, 0.0, regret)


def seconds_regret_curve(
    records: list[dict[str, Any]], budget: int, optimum: float, times: np.ndarray
) -> np.ndarray:
    """Regret at each simulated time in ``times``: the seconds the new students cost (repeats 0)."""
    clock, best = 0.0, 0.0
    stamps, values = [0.0], [optimum]
    seen = 0
    for record, count in zip(records, distinct_counts(records), strict=True):
        if count > seen:
            clock += float(record.get("eval_seconds") or 0.0)
            seen = count
        if full_fidelity(record) and record["reward"] > best:
            best = record["reward"]
        stamps.append(clock)
        values.append(optimum - best)
        if count >= budget:
            break
    index = np.searchsorted(np.array(stamps), times, side="right") - 1
    return _clean(np.array(values)[np.clip(index, 0, None)])


def students_to_reach(records: list[dict[str, Any]], budget: int, target: float) -> int | None:
    """Distinct students evaluated when the best reward first reached ``target`` (None: never)."""
    for record, count in zip(records, distinct_counts(records), strict=True):
        if count > budget:
            break
        if full_fidelity(record) and record["reward"] >= target - TOLERANCE:
            return count
    return None


def learning_gain(records: list[dict[str, Any]], window: int = LEARNING_WINDOW) -> float | None:
    """Mean reward of the last ``window`` episodes minus that of the first (None: too short)."""
    rewards = [r["reward"] for r in records]
    if len(rewards) < 2 * window:
        return None
    return float(np.mean(rewards[-window:]) - np.mean(rewards[:window]))


def _censored_median(times: list[int | None]) -> float | None:
    """Median with never-reached seeds censored at +inf; None when half or more never reached."""
    values = sorted(math.inf if t is None else float(t) for t in times)
    median = float(np.median(values))
    return None if math.isinf(median) or math.isnan(median) else median


@dataclass(frozen=True)
class BenchmarkReport:
    """What :func:`benchmark_report` computed and wrote.

    Attributes:
        env: the environment benchmarked.
        budget: distinct students per run.
        optimum: the reward regret is measured from.
        exact_optimum: True when it is the table's optimum, False when it is the best any run found.
        rows: one dict per algorithm (see ``benchmark.csv`` for the columns), best IQM first.
        files: the written files by kind (``FILES``).
    """

    env: str
    budget: int
    optimum: float
    exact_optimum: bool
    rows: list[dict[str, Any]]
    files: dict[str, Path]


def _interval(
    scores: dict[str, np.ndarray], func, reps: int, seed: int
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    import warnings

    from rliable import library as rly

    with warnings.catch_warnings():  # arch deprecates the RandomState rliable hands it
        warnings.simplefilter("ignore", FutureWarning)
        return rly.get_interval_estimates(
            scores, func, reps=reps, random_state=np.random.RandomState(seed)
        )


def anytime_iqm(
    curves: dict[str, np.ndarray], reps: int, seed: int
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """IQM over runs at every point of ``(runs, points)`` curves, with percentile bootstrap CIs.

    The statistic and the interval of rliable (one task: its stratified bootstrap resamples the
    runs), vectorised over the points: rliable's per-resample loop took 10 s per algorithm here.
    """
    from scipy.stats import trim_mean

    rng = np.random.default_rng(seed)
    point, interval = {}, {}
    for algo, curve in curves.items():
        point[algo] = trim_mean(curve, 0.25, axis=0)
        draws = rng.integers(0, len(curve), size=(reps, len(curve)))
        samples = trim_mean(curve[draws], 0.25, axis=1)  # (reps, points)
        interval[algo] = np.percentile(samples, [2.5, 97.5], axis=0)
    return point, interval


def benchmark_report(
    runs: Sequence[Run],
    out_dir: str | Path,
    budget: int,
    *,
    reps: int = 2000,
    seed: int = 0,
) -> BenchmarkReport:
    """Compute the benchmark's statistics over ``runs`` (one environment) and write its files.

    Args:
        runs: the runs, one per (algorithm, seed); every one has ``budget`` distinct students or
            stopped converged before.
        out_dir: the benchmark folder.
        budget: distinct students per run.
        reps: bootstrap resamples of every interval.
        seed: seeds the bootstrap, so intervals repeat.

    Raises:
        ImportError: rliable is not installed (``pip install 'n2n-gym[bench]'``).
        ValueError: the runs are of several environments, or none.
    """
    try:
        from rliable import metrics
    except ImportError:
        raise ImportError(
            "benchmark statistics need rliable: pip install 'n2n-gym[bench]'"
        ) from None
    envs = sorted({run.env for run in runs})
    if len(envs) != 1:
        raise ValueError(f"a benchmark covers one environment; these runs cover {envs or 'none'}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    optimum, exact = _optimum(runs)
    algos = sorted({run.algo for run in runs}, key=lambda a: (a != BASELINE, a))
    by_algo = {a: sorted((r for r in runs if r.algo == a), key=lambda r: r.seed) for a in algos}
    curves = {
        a: np.array([regret_curve(r.evaluations, budget, optimum) for r in rs])
        for a, rs in by_algo.items()
    }
    horizon = max(
        float(np.sum([rec.get("eval_seconds") or 0.0 for rec in r.evaluations])) for r in runs
    )
    times = np.linspace(0.0, max(horizon, 1.0), ANYTIME_POINTS)
    time_curves = {
        a: np.array([seconds_regret_curve(r.evaluations, budget, optimum, times) for r in rs])
        for a, rs in by_algo.items()
    }
    final = {a: c[:, -1:] for a, c in curves.items()}  # (runs, 1 task)
    point, interval = _interval(final, lambda s: np.array([metrics.aggregate_iqm(s)]), reps, seed)
    points = np.unique(np.geomspace(1, budget, ANYTIME_POINTS).round().astype(int)) - 1
    any_point, any_interval = anytime_iqm({a: c[:, points] for a, c in curves.items()}, reps, seed)
    time_point, time_interval = anytime_iqm(time_curves, reps, seed)
    improvement = {}
    if BASELINE in final:
        pairs = {a: (-final[a], -final[BASELINE]) for a in algos if a != BASELINE}
        if pairs:
            improvement = dict(
                zip(
                    ("point", "interval"),
                    _interval(pairs, metrics.probability_of_improvement, reps, seed),
                    strict=True,
                )
            )
    gains = {a: [learning_gain(r.evaluations) for r in rs] for a, rs in by_algo.items()}
    gain_scores = {a: np.array([[g] for g in gs if g is not None]) for a, gs in gains.items()}
    gain_scores = {a: g for a, g in gain_scores.items() if len(g) >= 2}
    gain_point, gain_interval = (
        _interval(gain_scores, lambda s: np.array([np.mean(s)]), reps, seed)
        if gain_scores
        else ({}, {})
    )
    rows = []
    for algo in algos:
        members = by_algo[algo]
        reach = {
            fraction: [
                students_to_reach(r.evaluations, budget, _target(optimum, fraction))
                for r in members
            ]
            for fraction in REACH_FRACTIONS
        }
        row = {
            "algo": algo,
            "runs": len(members),
            "seeds": [r.seed for r in members],
            "final_regret_iqm": float(point[algo][0]),
            "final_regret_ci": [float(v) for v in interval[algo][:, 0]],
            "final_regret_mean": float(final[algo].mean()),
            "converged_runs": sum(
                (r.summary or {}).get("stop_reason") == "converged" for r in members
            ),
            "p_improvement": _pick(improvement, "point", algo),
            "p_improvement_ci": _pick(improvement, "interval", algo, ci=True),
            "learning_gain": _pick({"point": gain_point}, "point", algo),
            "learning_gain_ci": _pick({"interval": gain_interval}, "interval", algo, ci=True),
            "episodes_mean": float(np.mean([len(r.evaluations) for r in members])),
        }
        for fraction, times_ in reach.items():
            name = "optimum" if fraction == 1.0 else f"{round(fraction * 100)}pct"
            row[f"reached_{name}"] = sum(t is not None for t in times_)
            row[f"students_to_{name}_median"] = _censored_median(times_)
        row["anytime_students"] = [int(p) + 1 for p in points]
        row["anytime_regret_iqm"] = [float(v) for v in any_point[algo]]
        row["anytime_regret_ci"] = [[float(v) for v in col] for col in any_interval[algo].T]
        row["seconds"] = [float(t) for t in times]
        row["seconds_regret_iqm"] = [float(v) for v in time_point[algo]]
        row["seconds_regret_ci"] = [[float(v) for v in col] for col in time_interval[algo].T]
        rows.append(row)
    rows.sort(key=lambda row: (row["final_regret_iqm"], row["final_regret_mean"]))
    files = {kind: out / name for kind, name in FILES.items()}
    report = BenchmarkReport(envs[0], budget, optimum, exact, rows, files)
    write_json_atomic(
        files["json"],
        {
            "env": report.env,
            "budget": budget,
            "optimum": optimum,
            "exact_optimum": exact,
            "bootstrap": {"reps": reps, "seed": seed, "confidence": 0.95},
            "rows": rows,
        },
    )
    _write_csv(files["csv"], rows)
    atomic_write(files["markdown"], lambda tmp: tmp.write_text(markdown_table(report) + "\n"))
    _plot_regret(report, curves_x="students", path=files["regret_students"])
    _plot_regret(report, curves_x="seconds", path=files["regret_seconds"])
    _plot_final(report, files["final_regret"])
    _plot_profile(final, files["profile"], reps)
    return report


def _target(optimum: float, fraction: float) -> float:
    # For a negative optimum "99 % of it" is 1 % of its size below it, not above.
    return optimum - (1.0 - fraction) * abs(optimum)


def _pick(estimates: dict, kind: str, algo: str, ci: bool = False):
    values = estimates.get(kind, {})
    if algo not in values:
        return None
    value = values[algo]
    return [float(v) for v in np.ravel(value)] if ci else float(np.ravel(value)[0])


CSV_FIELDS = (
    "algo",
    "runs",
    "final_regret_iqm",
    "final_regret_ci",
    "final_regret_mean",
    "p_improvement",
    "p_improvement_ci",
    "reached_optimum",
    "students_to_optimum_median",
    "reached_99pct",
    "students_to_99pct_median",
    "learning_gain",
    "learning_gain_ci",
    "converged_runs",
    "episodes_mean",
)


def _write_csv(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    def write(tmp: Path) -> None:
        with tmp.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=CSV_FIELDS, extrasaction="ignore")
            writer.writeheader()
            for row in rows:
                writer.writerow(
                    {
                        k: ";".join(f"{v:.6g}" for v in row[k])
                        if isinstance(row[k], list)
                        else row[k]
                        for k in CSV_FIELDS
                    }
                )

    atomic_write(path, write)


def _fmt(value: float | None, pattern: str = "{:.4f}") -> str:
    return "—" if value is None else pattern.format(value)


def _ci(values: list[float] | None, pattern: str = "{:.4f}") -> str:
    return "" if values is None else f" [{pattern.format(values[0])}, {pattern.format(values[1])}]"


def markdown_table(report: BenchmarkReport) -> str:
    """The report as a Markdown table (keeps every column however it is displayed)."""
    n = report.rows[0]["runs"] if report.rows else 0
    optimum = "table optimum" if report.exact_optimum else "best reward any run found"
    lines = [
        f"{report.env}, {n} seeds x {report.budget} distinct students; regret from the "
        f"{optimum} {report.optimum:.4f}; IQM with 95 % stratified bootstrap CIs",
        "",
        "| algorithm | final regret IQM [95 % CI] | P(better than random) [CI] | reached optimum "
        "| median students to optimum | reached 99 % | median students to 99 % "
        "| learning: last - first 100 episodes [CI] |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in report.rows:
        lines.append(
            f"| {row['algo']} | {_fmt(row['final_regret_iqm'])}{_ci(row['final_regret_ci'])} "
            f"| {_fmt(row['p_improvement'], '{:.2f}')}{_ci(row['p_improvement_ci'], '{:.2f}')} "
            f"| {row['reached_optimum']}/{row['runs']} "
            f"| {_fmt(row['students_to_optimum_median'], '{:.0f}')} "
            f"| {row['reached_99pct']}/{row['runs']} "
            f"| {_fmt(row['students_to_99pct_median'], '{:.0f}')} "
            f"| {_fmt(row['learning_gain'])}{_ci(row['learning_gain_ci'])} |"
        )
    return "\n".join(lines)


# ---- plots ------------------------------------------------------------------------------------
LINE_STYLES = ("-", "--", "-.", ":")
REGRET_FLOOR = 1e-4  # log-scale plots show a regret of 0 (the optimum) at this floor


def _styles(algos: Sequence[str]) -> dict[str, dict[str, Any]]:
    import matplotlib

    colours = matplotlib.colormaps["tab10"].colors
    return {
        algo: {"color": colours[i % 10], "linestyle": LINE_STYLES[i % len(LINE_STYLES)]}
        for i, algo in enumerate(algos)
    }


def _plot_regret(report: BenchmarkReport, curves_x: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    styles = _styles([row["algo"] for row in sorted(report.rows, key=lambda r: r["algo"])])
    for row in report.rows:
        if curves_x == "students":
            x = np.array(row["anytime_students"])
            y, band = row["anytime_regret_iqm"], np.array(row["anytime_regret_ci"])
        else:
            x = np.array(row["seconds"]) / 3600
            y, band = row["seconds_regret_iqm"], np.array(row["seconds_regret_ci"])
        floor = lambda v: np.maximum(np.asarray(v, dtype=float), REGRET_FLOOR)  # noqa: E731
        style = styles[row["algo"]]
        ax.plot(x, floor(y), label=row["algo"], linewidth=1.8, **style)
        ax.fill_between(x, floor(band[:, 0]), floor(band[:, 1]), color=style["color"], alpha=0.15)
    ax.set_yscale("log")
    if curves_x == "students":
        ax.set_xscale("log")
        ax.set_xlabel("distinct students evaluated")
    else:
        ax.set_xlabel("simulated hours (measured cost of each new student)")
    ax.set_ylabel(f"regret (IQM, 95 % CI; optimum shown at {REGRET_FLOOR:g})")
    ax.set_title(f"{report.env}: regret, {report.rows[0]['runs']} seeds per algorithm")
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)


def _plot_final(report: BenchmarkReport, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report.rows
    fig, ax = plt.subplots(figsize=(6, 0.45 * len(rows) + 1.2))
    styles = _styles([row["algo"] for row in sorted(rows, key=lambda r: r["algo"])])
    for y, row in enumerate(rows):
        low, high = row["final_regret_ci"]
        colour = styles[row["algo"]]["color"]
        ax.plot([low, high], [y, y], color=colour, linewidth=6, alpha=0.5, solid_capstyle="butt")
        ax.plot([row["final_regret_iqm"]], [y], "|", color="black", markersize=14)
    ax.set_yticks(range(len(rows)), [row["algo"] for row in rows])
    ax.invert_yaxis()
    ax.set_xlabel(f"final regret after {report.budget} students (IQM, 95 % CI; lower is better)")
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)


def _plot_profile(final: dict[str, np.ndarray], path: Path, reps: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from rliable import library as rly

    largest = max(float(np.max(v)) for v in final.values())
    taus = np.linspace(0.0, max(largest, REGRET_FLOOR) * 1.05, 60)
    # rliable counts scores above tau; regret at most tau is -regret above -tau.
    profiles, cis = rly.create_performance_profile(
        {a: -v for a, v in final.items()}, -taus, reps=reps
    )
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    styles = _styles(sorted(final))
    for algo in final:
        style = styles[algo]
        ax.plot(taus, profiles[algo], label=algo, linewidth=1.8, **style)
        ax.fill_between(taus, cis[algo][0], cis[algo][1], color=style["color"], alpha=0.15)
    ax.set_xlabel("final regret τ")
    ax.set_ylabel("fraction of runs with regret below τ")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)


def benchmark_table(report: BenchmarkReport):
    """The report as a rich table for a terminal (``benchmark.md`` holds the same)."""
    from rich.table import Table

    n = report.rows[0]["runs"] if report.rows else 0
    table = Table(
        title=f"{report.env}: {n} seeds x {report.budget} students; regret from the "
        f"{'table optimum' if report.exact_optimum else 'best found'} {report.optimum:.4f}"
    )
    for column in (
        "algorithm",
        "final regret IQM [95% CI]",
        "P(> random) [CI]",
        "optimum reached",
        "median students to it",
        "99% reached",
        "median students to 99%",
        "learning [CI]",
    ):
        table.add_column(column, justify="left" if column == "algorithm" else "right")
    for row in report.rows:
        table.add_row(
            row["algo"],
            f"{_fmt(row['final_regret_iqm'])}{_ci(row['final_regret_ci'])}",
            f"{_fmt(row['p_improvement'], '{:.2f}')}{_ci(row['p_improvement_ci'], '{:.2f}')}",
            f"{row['reached_optimum']}/{row['runs']}",
            _fmt(row["students_to_optimum_median"], "{:.0f}"),
            f"{row['reached_99pct']}/{row['runs']}",
            _fmt(row["students_to_99pct_median"], "{:.0f}"),
            f"{_fmt(row['learning_gain'])}{_ci(row['learning_gain_ci'])}",
        )
    return table
