"""The benchmark's plots: anytime regret, final regret and performance profiles (matplotlib, Agg).

Every algorithm keeps one colour and line style in every plot of a report (:func:`styles`), so
the same algorithm reads the same across a benchmark's and a suite's figures.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from n2n_gym.atomic import atomic_write
from n2n_gym.statistics import performance_profile

if TYPE_CHECKING:
    from n2n_gym.benchmark import BenchmarkReport

__all__ = ["REGRET_FLOOR", "plot_final", "plot_profile", "plot_regret", "styles"]

LINE_STYLES = ("-", "--", "-.", ":")
REGRET_FLOOR = 1e-4  # log-scale plots show a regret of 0 (the optimum) at this floor


def styles(algos: Sequence[str]) -> dict[str, dict[str, Any]]:
    import matplotlib

    colours = matplotlib.colormaps["tab10"].colors
    return {
        algo: {"color": colours[i % 10], "linestyle": LINE_STYLES[i % len(LINE_STYLES)]}
        for i, algo in enumerate(algos)
    }


def plot_regret(report: BenchmarkReport, curves_x: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    style_of = styles([row["algo"] for row in sorted(report.rows, key=lambda r: r["algo"])])
    for row in report.rows:
        if curves_x == "students":
            x = np.array(row["anytime_students"])
            y, band = row["anytime_regret_iqm"], np.array(row["anytime_regret_ci"])
        else:
            x = np.array(row["seconds"]) / 3600
            y, band = row["seconds_regret_iqm"], np.array(row["seconds_regret_ci"])
        floor = lambda v: np.maximum(np.asarray(v, dtype=float), REGRET_FLOOR)  # noqa: E731
        style = style_of[row["algo"]]
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


def plot_final(report: BenchmarkReport, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report.rows
    fig, ax = plt.subplots(figsize=(6, 0.45 * len(rows) + 1.2))
    style_of = styles([row["algo"] for row in sorted(rows, key=lambda r: r["algo"])])
    for y, row in enumerate(rows):
        low, high = row["final_regret_ci"]
        colour = style_of[row["algo"]]["color"]
        ax.plot([low, high], [y, y], color=colour, linewidth=6, alpha=0.5, solid_capstyle="butt")
        ax.plot([row["final_regret_iqm"]], [y], "|", color="black", markersize=14)
    ax.set_yticks(range(len(rows)), [row["algo"] for row in rows])
    ax.invert_yaxis()
    ax.set_xlabel(f"final regret after {report.budget} students (IQM, 95 % CI; lower is better)")
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)


def plot_profile(
    final: dict[str, np.ndarray],
    path: Path,
    reps: int,
    seed: int,
    xlabel: str = "final regret τ",
) -> None:
    """Share of runs (× tasks: ``final`` holds (runs, tasks) arrays) at or below each regret."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    largest = max(float(np.max(v)) for v in final.values())
    taus = np.linspace(0.0, max(largest, REGRET_FLOOR) * 1.05, 60)
    # rliable counts scores above tau; regret at most tau is -regret above -tau.
    profiles, cis = performance_profile({a: -v for a, v in final.items()}, -taus, reps, seed)
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    style_of = styles(sorted(final))
    for algo in final:
        style = style_of[algo]
        ax.plot(taus, profiles[algo], label=algo, linewidth=1.8, **style)
        ax.fill_between(taus, cis[algo][0], cis[algo][1], color=style["color"], alpha=0.15)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("fraction of runs with regret below τ")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)
