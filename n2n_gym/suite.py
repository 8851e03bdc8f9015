"""The benchmark suite: search algorithms on several tasks at once, pooled as rliable intends.

Rankings on one task do not carry over to others (NAS-Bench-Suite, YAHPO Gym), so algorithms are
compared over many. Each task is first reported on its own (:func:`n2n_gym.benchmark.benchmark_report`);
the suite then pools them through each run's **normalised regret**::

    (target − incumbent's worth) / (target − reference)

with the task's target (a table's best seed-mean reward; a surrogate's best mean prediction) and
its **reference**, what a uniformly random student of the task is worth (the median seed-mean
reward of its students). 0 means the run reached the target, 1 that its best student is worth no
more than a typical random one; tasks whose rewards spread over different ranges then weigh the
same. Per budget, over tasks × seeds:

- the **IQM** of normalised regret per algorithm with a 95 % **stratified bootstrap** interval
  (seeds resampled within each task, rliable's ``get_interval_estimates``);
- the **probability of improvement** over random search, with its interval;
- a **performance profile** of the final normalised regret (share of runs at or below τ);
- **stability**: the algorithms ranked by the pooled IQM on two disjoint halves of the seeds,
  and Kendall's τ between the two rankings.

Every bootstrap is seeded: the same runs give the same report. Files: ``suite.json``,
``suite.md``, ``suite_iqm.png`` and ``suite_profile.png`` in the suite folder.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from n2n_gym.atomic import atomic_write, write_json_atomic
from n2n_gym.benchmark import (
    BASELINE,
    BenchmarkReport,
    _ci,
    _fmt,
    _pick,
    _span,
    report_markdown,
    report_table,
    stability,
)
from n2n_gym.benchmark_plots import plot_profile, styles
from n2n_gym.statistics import improvement_estimates, iqm_estimates

__all__ = ["SUITE_ENVS", "SuiteReport", "normalised_regret", "suite_report", "suite_table"]

# The suite's tasks: both shipped tables and the narrow ResNet's surrogate.
SUITE_ENVS = (
    "N2NJoint-Tab-v0",
    "N2NJoint-FashionMNIST-Tab-v0",
    "N2NJoint-NarrowResNet-MNIST-Sur-v0",
)
FILES = {
    "json": "suite.json",
    "markdown": "suite.md",
    "iqm": "suite_iqm.png",
    "profile": "suite_profile.png",
}


@dataclass(frozen=True)
class SuiteReport:
    """What :func:`suite_report` computed and wrote.

    Attributes:
        envs: the tasks pooled.
        budgets: the budgets reported, ascending.
        seeds: the seeds every algorithm has on every task (the ones pooled).
        scales: per task, its ``target`` and ``reference`` (the normalisation).
        rows: one dict per algorithm, best pooled IQM at the largest budget first;
            ``row["budgets"][str(b)]`` holds the figures at budget ``b``.
        stability: per budget, the seed halves' rankings and Kendall's τ.
        files: the written files by kind.
    """

    envs: list[str]
    budgets: list[int]
    seeds: list[int]
    scales: dict[str, dict[str, float]]
    rows: list[dict[str, Any]]
    stability: dict[str, dict[str, Any]]
    files: dict[str, Path]


def normalised_regret(regret: np.ndarray, target: float, reference: float) -> np.ndarray:
    """Regret in units of the distance from a random student to the target (0 = target)."""
    if not target > reference:
        raise ValueError(
            f"a task's target {target:.4f} must lie above its reference {reference:.4f} to "
            "normalise its regret"
        )
    return np.asarray(regret, dtype=float) / (target - reference)


def _per_seed(report: BenchmarkReport, algo: str, budget: int) -> dict[int, float]:
    row = next(r for r in report.rows if r["algo"] == algo)
    figures = row["budgets"][str(budget)]
    return dict(zip(figures["seeds"], figures["regret_per_seed"], strict=True))


def suite_report(
    reports: Mapping[str, BenchmarkReport],
    references: Mapping[str, float],
    out_dir: str | Path,
    *,
    reps: int = 2000,
    seed: int = 0,
) -> SuiteReport:
    """Pool the per-task reports into the suite's statistics and write its files.

    Args:
        reports: each task's benchmark report (same budgets, algorithms and seeds).
        references: each task's reference reward (see the module doc).
        out_dir: the suite folder.
        reps: bootstrap resamples of every interval.
        seed: seeds every bootstrap.

    Raises:
        ValueError: fewer than two tasks, tasks without common budgets, algorithms or seeds, or
            a task whose target is not above its reference.
    """
    envs = sorted(reports)
    if len(envs) < 2:
        raise ValueError(f"a suite pools two or more tasks; got {envs}")
    budgets = sorted(set.intersection(*(set(reports[e].budgets) for e in envs)))
    algos = sorted(
        set.intersection(*({r["algo"] for r in reports[e].rows} for e in envs)),
        key=lambda a: (a != BASELINE, a),
    )
    if not budgets or not algos:
        raise ValueError("the tasks share no budget or no algorithm: run them with the same ones")
    seeds = sorted(
        set.intersection(
            *(set(_per_seed(reports[e], a, b)) for e in envs for a in algos for b in budgets)
        )
    )
    if not seeds:
        raise ValueError("the tasks' runs share no seed: run them with the same --seeds")
    scales = {
        e: {"target": reports[e].target.value, "reference": float(references[e])} for e in envs
    }
    # (seeds, tasks) normalised regret per budget and algorithm.
    scores = {
        b: {
            a: np.stack(
                [
                    normalised_regret(
                        [_per_seed(reports[e], a, b)[s] for s in seeds],
                        scales[e]["target"],
                        scales[e]["reference"],
                    )
                    for e in envs
                ],
                axis=1,
            )
            for a in algos
        }
        for b in budgets
    }
    per_budget = {}
    for b in budgets:
        point, interval = iqm_estimates(scores[b], reps, seed)
        improvement = improvement_estimates(scores[b], BASELINE, reps, seed)
        per_budget[b] = {
            "point": point,
            "interval": interval,
            "improvement": improvement,
            "stability": stability(scores[b], seeds),
        }
    rows = []
    for algo in algos:
        row: dict[str, Any] = {"algo": algo, "budgets": {}}
        for b in budgets:
            figures = per_budget[b]
            row["budgets"][str(b)] = {
                "iqm": float(figures["point"][algo][0]),
                "ci": [float(v) for v in figures["interval"][algo][:, 0]],
                "p_improvement": _pick(figures["improvement"], "point", algo),
                "p_improvement_ci": _pick(figures["improvement"], "interval", algo, ci=True),
                "per_task_mean": {
                    e: float(np.mean(scores[b][algo][:, i])) for i, e in enumerate(envs)
                },
            }
        rows.append(row)
    largest = str(budgets[-1])
    rows.sort(key=lambda r: (r["budgets"][largest]["iqm"], r["algo"]))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {kind: out / name for kind, name in FILES.items()}
    stable = {str(b): per_budget[b]["stability"] for b in budgets}
    report = SuiteReport(envs, budgets, seeds, scales, rows, stable, files)
    write_json_atomic(
        files["json"],
        {
            "envs": envs,
            "budgets": budgets,
            "seeds": seeds,
            "normalisation": "(target - incumbent's worth) / (target - reference)",
            "scales": scales,
            "bootstrap": {"reps": reps, "seed": seed, "confidence": 0.95, "stratified": "tasks"},
            "stability": stable,
            "rows": rows,
        },
    )
    atomic_write(files["markdown"], lambda tmp: tmp.write_text(suite_markdown(report) + "\n"))
    _plot_iqm(report, files["iqm"])
    plot_profile(scores[budgets[-1]], files["profile"], reps, seed, "final normalised regret τ")
    return report


def _cells(report: SuiteReport) -> tuple[list[str], list[list[str]]]:
    header = ["algorithm"]
    header += [f"normalised regret @{b} [CI]" for b in report.budgets]
    header += [f"P(> random) @{b} [CI]" for b in report.budgets]
    header += [f"{env} @{report.budgets[-1]}" for env in report.envs]
    lines = []
    for row in report.rows:
        at = row["budgets"]
        cells = [row["algo"]]
        cells += [
            f"{_fmt(at[str(b)]['iqm'], '{:.3f}')}{_ci(at[str(b)]['ci'], '{:.3f}')}"
            for b in report.budgets
        ]
        cells += [
            f"{_fmt(at[str(b)]['p_improvement'], '{:.2f}')}"
            f"{_ci(at[str(b)]['p_improvement_ci'], '{:.2f}')}"
            for b in report.budgets
        ]
        largest = at[str(report.budgets[-1])]["per_task_mean"]
        cells += [f"{largest[env]:.3f}" for env in report.envs]
        lines.append(cells)
    return header, lines


def _caption(report: SuiteReport) -> str:
    tasks = "; ".join(
        f"{env} (target {s['target']:.4f}, reference {s['reference']:.4f})"
        for env, s in report.scales.items()
    )
    return (
        f"Suite of {len(report.envs)} tasks x {len(report.seeds)} seeds: {tasks}. Normalised "
        "regret = (target − incumbent's worth) / (target − reference); IQM over tasks x seeds "
        "with 95 % stratified bootstrap CIs (seeded); per-task columns: mean normalised regret."
    )


def _notes(report: SuiteReport) -> list[str]:
    halves = report.stability[str(report.budgets[-1])]["halves"]
    if not halves[0]:
        return []
    taus = [
        f"τ = {report.stability[str(b)]['tau']:.2f} @{b}"
        if report.stability[str(b)]["tau"] is not None
        else f"τ undefined @{b}"
        for b in report.budgets
    ]
    return [
        f"Ranking stability, seeds {_span(halves[0])} against {_span(halves[1])} (Kendall's τ "
        f"of the pooled IQM rankings): {', '.join(taus)}."
    ]


def suite_markdown(report: SuiteReport) -> str:
    """The suite's table as Markdown."""
    return report_markdown(_caption(report), *_cells(report), _notes(report))


def suite_table(report: SuiteReport):
    """The suite's table for a terminal."""
    return report_table(_caption(report), *_cells(report), _notes(report))


def _plot_iqm(report: SuiteReport, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    style_of = styles(sorted(row["algo"] for row in report.rows))
    for row in report.rows:
        y = [row["budgets"][str(b)]["iqm"] for b in report.budgets]
        band = np.array([row["budgets"][str(b)]["ci"] for b in report.budgets])
        style = style_of[row["algo"]]
        ax.plot(report.budgets, y, marker="o", label=row["algo"], linewidth=1.8, **style)
        ax.fill_between(report.budgets, band[:, 0], band[:, 1], color=style["color"], alpha=0.15)
    ax.set_xscale("log")
    ax.set_xticks(report.budgets, [str(b) for b in report.budgets])
    ax.set_xlabel("budget (distinct students)")
    ax.set_ylabel("normalised regret (IQM, 95 % CI; 0 = target)")
    ax.set_title(f"suite of {len(report.envs)} tasks, {len(report.seeds)} seeds per task")
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)


def check_suite_envs(envs: Sequence[str], env_kwargs: Mapping[str, Any]) -> str | None:
    """Why these envs cannot make a suite (``None`` if they can): each must answer from a table
    or surrogate, which knows its target and reference."""
    import gymnasium as gym

    from n2n_gym.task import LOOKUPS

    if len(envs) < 2:
        return "a suite pools two or more environments"
    for env in envs:
        try:
            kwargs = {**gym.spec(env).kwargs, **env_kwargs}
        except gym.error.Error:
            return None  # unknown ids are reported by the run checks, with a suggestion
        if kwargs.get("evaluator") not in LOOKUPS:
            return (
                f"{env} measures live: a suite pools tables and surrogates, whose target and "
                "reference are known (pass table or surrogate envs, e.g. the default --suite)"
            )
    return None
