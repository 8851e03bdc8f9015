"""Statistics of a search-algorithm benchmark: regret at several budgets, robust aggregates, plots.

A benchmark is many runs — one per (algorithm, seed), and per budget where an algorithm's
schedule depends on it — of the same environment, each an ordinary run directory.
:func:`benchmark_report` reads them and computes, with rliable (Agarwal et al., NeurIPS 2021):

- **regret**: the target minus the worth of the run's *incumbent* — the student with the best
  reward the search saw so far, what it would return if stopped — against distinct students and
  against simulated seconds (the measured cost of each new student, 0 for a repeat). On a table
  env the target is the table's best *seed-mean* reward and a student's worth is its own seed-mean
  reward (``info["table_target"]``, ``info["student_mean_reward"]``): a search is scored on what
  it found, not on the luck of the one seed it saw (see :meth:`n2n_gym.table.Table.target`).
  Runs recorded before tables had seed means score against the table's optimum; live runs
  against the best reward any run found (then regret is relative to the runs compared);
- **reached the optimum**: the incumbent's worth is within the table's noise band of the target
  (``info["table_band"]``; 0 without one); **reached 99 %**: it is at least 99 % of the target;
- at each **budget**, the **interquartile mean** of the regret per algorithm with a 95 %
  stratified bootstrap confidence interval, and the **probability of improvement** over random
  search (``P(X > Y)`` on regret, ties counted half) with its interval. A budget is read off a
  longer run of the same algorithm and seed unless the algorithm's schedule depends on its budget
  (:data:`agents.BUDGET_DEPENDENT`: DQN's exploration), which then has a run per budget; the
  report says which (``source``);
- **reward-free students**: how many of an algorithm's first students depend on no reward (an
  evolution's random population, TPE's start-up trials, a policy's first rollouts): below that
  budget the algorithm *is* random search with its own generator;
- **stability**: the seeds split in two disjoint halves (in order), each ranks the algorithms by
  IQM regret at each budget, and Kendall's τ between the two rankings says whether the ranking
  is more than seed luck;
- **students to reach** the optimum and 99 % of it at the largest budget: the median over seeds,
  where a seed that never reached it is right-censored (not dropped): when more than half the
  seeds reached it, the median is that of the uncensored times, else "not reached";
- **performance profiles**: the fraction of runs whose final regret is at most τ, against τ;
- **learning**: the mean reward of a run's last 100 episodes minus that of its first 100, IQM
  over seeds with its interval (a search that reacts to its rewards has it above 0).

Every bootstrap is seeded (``seed``), so the same runs give the same report, bit for bit.
Everything lands in the benchmark folder: ``benchmark.json``, ``benchmark.csv``, ``benchmark.md``
and the plots ``regret_students.png``, ``regret_seconds.png``, ``final_regret.png`` and
``performance_profile.png``.
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from n2n_gym.atomic import atomic_write, write_json_atomic
from n2n_gym.benchmark_plots import plot_final, plot_profile, plot_regret
from n2n_gym.compare import Run
from n2n_gym.runs import distinct_counts, full_fidelity, incumbent_worth
from n2n_gym.statistics import (
    anytime_iqm,
    improvement_estimates,
    iqm,
    iqm_estimates,
    mean_estimates,
)

logger = logging.getLogger(__name__)

__all__ = [
    "REACH_FRACTIONS",
    "BenchmarkReport",
    "Target",
    "benchmark_report",
    "incumbent_worth",
    "learning_gain",
    "regret_curve",
    "seconds_regret_curve",
    "stability",
    "students_to_reach",
]

BASELINE = "random"
REACH_FRACTIONS = (1.0, 0.99)
LEARNING_WINDOW = 100  # episodes at each end compared by the learning statistic
# Rewards pass through float32 in vector environments: a regret below this is the optimum.
TOLERANCE = 1e-6
ANYTIME_POINTS = 25
PROTOCOL = 2  # 1: regret from one seed's optimum; 2: from the seed-mean target, several budgets
FILES = {
    "json": "benchmark.json",
    "csv": "benchmark.csv",
    "markdown": "benchmark.md",
    "regret_students": "regret_students.png",
    "regret_seconds": "regret_seconds.png",
    "final_regret": "final_regret.png",
    "profile": "performance_profile.png",
}


@dataclass(frozen=True)
class Target:
    """What regret is measured from.

    Attributes:
        value: the target reward.
        band: a run whose incumbent is worth at least ``value − band`` reached the optimum.
        kind: ``"seed-mean"`` (a table's best seed-mean reward), ``"table-optimum"`` (a table's
            best one-seed reward: runs recorded before seed means) or ``"best-found"`` (the best
            reward any run found: live envs).
        worth: the record field holding a student's worth (``None``: the reward it got).
    """

    value: float
    band: float = 0.0
    kind: str = "table-optimum"
    worth: str | None = None

    @property
    def exact(self) -> bool:
        return self.kind != "best-found"


def _target_of(runs: Sequence[Run]) -> Target:
    """The runs' target: the table's seed-mean target, else its optimum, else the best found."""
    records = [r for run in runs for r in run.evaluations]
    targets = [r for r in records if r.get("table_target") is not None]
    if targets:
        best = max(targets, key=lambda r: r["table_target"])
        return Target(
            float(best["table_target"]),
            float(best.get("table_band") or 0.0),
            "seed-mean",
            "student_mean_reward",
        )
    recorded = [r["table_optimum"] for r in records if r.get("table_optimum") is not None]
    if recorded:
        return Target(float(max(recorded)), kind="table-optimum")
    best = max((r["reward"] for r in records if full_fidelity(r)), default=0.0)
    return Target(float(best), kind="best-found")


def regret_curve(records: list[dict[str, Any]], budget: int, target: Target | float) -> np.ndarray:
    """Regret after 1 … ``budget`` distinct students: the target minus the incumbent's worth.

    Before a run's first successful student its regret is the target's distance from 0 reward.
    """
    target = target if isinstance(target, Target) else Target(float(target))
    worth = incumbent_worth(records, budget, target.worth)
    return _clean(target.value - np.where(np.isnan(worth), 0.0, worth))


def _clean(regret: np.ndarray) -> np.ndarray:
    return np.where(regret < TOLERANCE, 0.0, regret)


def seconds_regret_curve(
    records: list[dict[str, Any]], budget: int, target: Target | float, times: np.ndarray
) -> np.ndarray:
    """Regret at each simulated time in ``times``: the seconds the new students cost (repeats 0)."""
    target = target if isinstance(target, Target) else Target(float(target))
    clock, seen, worth = 0.0, -math.inf, 0.0
    stamps, values = [0.0], [target.value]
    count_seen = 0
    for record, count in zip(records, distinct_counts(records), strict=True):
        if count > count_seen:
            clock += float(record.get("eval_seconds") or 0.0)
            count_seen = count
        if full_fidelity(record) and record["reward"] > seen:
            seen = record["reward"]
            field = target.worth
            worth = float(record[field] if field and record.get(field) is not None else seen)
        stamps.append(clock)
        values.append(target.value - worth)
        if count >= budget:
            break
    index = np.searchsorted(np.array(stamps), times, side="right") - 1
    return _clean(np.array(values)[np.clip(index, 0, None)])


def students_to_reach(
    records: list[dict[str, Any]], budget: int, threshold: float, worth: str | None = None
) -> int | None:
    """Distinct students evaluated when the incumbent's worth first reached ``threshold``
    (None: not within ``budget``)."""
    curve = incumbent_worth(records, budget, worth)
    reached = np.flatnonzero(curve >= threshold - TOLERANCE)
    return int(reached[0]) + 1 if len(reached) else None


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
        budgets: the budgets reported (distinct students), ascending; the last is the largest.
        target: what regret is measured from.
        rows: one dict per algorithm (see ``benchmark.csv`` for the columns), best IQM at the
            largest budget first; ``row["budgets"][str(b)]`` holds the figures at budget ``b``.
        stability: per budget, the two seed halves' rankings and Kendall's τ between them.
        files: the written files by kind (``FILES``).
    """

    env: str
    budgets: list[int]
    target: Target
    rows: list[dict[str, Any]]
    stability: dict[str, dict[str, Any]]
    files: dict[str, Path]

    @property
    def budget(self) -> int:
        return self.budgets[-1]

    @property
    def optimum(self) -> float:
        return self.target.value

    @property
    def exact_optimum(self) -> bool:
        return self.target.exact


def stability(final: Mapping[str, np.ndarray], seeds: Sequence[int]) -> dict[str, Any]:
    """Kendall's τ between the algorithm rankings of two disjoint halves of the seeds.

    Args:
        final: per algorithm, the regret of each run, in the order of ``seeds`` (or a
            ``(seeds, tasks)`` array: a half is then ranked by the IQM over its tasks × seeds).
        seeds: the seeds, ascending; the first half against the second.

    Returns:
        ``{"halves": [[seeds], [seeds]], "rankings": [[algos], [algos]], "tau": τ}`` (``tau`` is
        ``None`` with fewer than 4 seeds or 3 algorithms, or when a half cannot rank at all).
    """
    from scipy.stats import kendalltau

    half = len(seeds) // 2
    halves = [list(seeds[:half]), list(seeds[half : 2 * half])]
    if half == 0:  # one seed: no halves to rank
        return {"halves": halves, "rankings": [[], []], "tau": None}
    algos = sorted(final)
    scores = [
        [(iqm(final[a][:half]), float(np.mean(final[a][:half]))) for a in algos],
        [
            (iqm(final[a][half : 2 * half]), float(np.mean(final[a][half : 2 * half])))
            for a in algos
        ],
    ]
    rankings = [[a for _, a in sorted(zip(score, algos, strict=True))] for score in scores]
    tau = None
    if half >= 2 and len(algos) >= 3:
        value = kendalltau([s[0] for s in scores[0]], [s[0] for s in scores[1]]).statistic
        tau = None if math.isnan(value) else float(value)
    return {"halves": halves, "rankings": rankings, "tau": tau}


def _runs_at(runs: Sequence[Run], algo: str, budget: int, largest: int) -> tuple[list[Run], str]:
    """The runs that stand for ``algo`` at ``budget``: its own, else a prefix of its longest."""
    mine = [r for r in runs if r.algo == algo]
    own = [r for r in mine if r.budget == budget]
    if own:
        return sorted(own, key=lambda r: r.seed), "own run"
    longest = max((r.budget or largest) for r in mine)
    chosen = [r for r in mine if (r.budget or largest) == longest]
    return sorted(chosen, key=lambda r: r.seed), f"first {budget} of {longest}"


def benchmark_report(
    runs: Sequence[Run],
    out_dir: str | Path,
    budgets: int | Sequence[int],
    *,
    reps: int = 2000,
    seed: int = 0,
) -> BenchmarkReport:
    """Compute the benchmark's statistics over ``runs`` (one environment) and write its files.

    Args:
        runs: the runs, one per (algorithm, seed) at the largest budget (or stopped converged
            before it), plus one per (algorithm, seed, budget) for an algorithm whose schedule
            depends on its budget (a run's budget is its config's).
        out_dir: the benchmark folder.
        budgets: the budgets to report, in distinct students.
        reps: bootstrap resamples of every interval.
        seed: seeds every bootstrap, so the same runs give the same report.

    Raises:
        ImportError: rliable is not installed (``pip install 'n2n-gym[bench]'``).
        ValueError: the runs are of several environments, or none.
    """
    try:
        import rliable  # noqa: F401
    except ImportError:
        raise ImportError(
            "benchmark statistics need rliable: pip install 'n2n-gym[bench]'"
        ) from None
    envs = sorted({run.env for run in runs})
    if len(envs) != 1:
        raise ValueError(f"a benchmark covers one environment; these runs cover {envs or 'none'}")
    budgets = sorted({budgets} if isinstance(budgets, int) else set(budgets))
    largest = budgets[-1]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    target = _target_of(runs)
    algos = sorted({run.algo for run in runs}, key=lambda a: (a != BASELINE, a))
    at: dict[int, dict[str, tuple[list[Run], str]]] = {
        b: {a: _runs_at(runs, a, b, largest) for a in algos} for b in budgets
    }
    by_algo = {a: at[largest][a][0] for a in algos}
    curves = {
        a: np.array([regret_curve(r.evaluations, largest, target) for r in rs])
        for a, rs in by_algo.items()
    }
    finals = {
        b: {
            a: np.array([regret_curve(r.evaluations, b, target)[-1] for r in at[b][a][0]])
            for a in algos
        }
        for b in budgets
    }
    horizon = max(
        float(np.sum([rec.get("eval_seconds") or 0.0 for rec in r.evaluations])) for r in runs
    )
    times = np.linspace(0.0, max(horizon, 1.0), ANYTIME_POINTS)
    time_curves = {
        a: np.array([seconds_regret_curve(r.evaluations, largest, target, times) for r in rs])
        for a, rs in by_algo.items()
    }
    per_budget: dict[int, dict[str, Any]] = {}
    for b in budgets:
        final = {a: v[:, None] for a, v in finals[b].items()}  # (runs, 1 task)
        point, interval = iqm_estimates(final, reps, seed)
        improvement = improvement_estimates(final, BASELINE, reps, seed)
        seeds = sorted(set.intersection(*({r.seed for r in at[b][a][0]} for a in algos)))
        aligned = {
            a: np.array([finals[b][a][[r.seed for r in at[b][a][0]].index(s)] for s in seeds])
            for a in algos
        }
        per_budget[b] = {
            "point": point,
            "interval": interval,
            "improvement": improvement,
            "stability": stability(aligned, seeds),
        }
    points = np.unique(np.geomspace(1, largest, ANYTIME_POINTS).round().astype(int)) - 1
    any_point, any_interval = anytime_iqm({a: c[:, points] for a, c in curves.items()}, reps, seed)
    time_point, time_interval = anytime_iqm(time_curves, reps, seed)
    gains = {a: [learning_gain(r.evaluations) for r in rs] for a, rs in by_algo.items()}
    gain_scores = {a: np.array([[g] for g in gs if g is not None]) for a, gs in gains.items()}
    gain_scores = {a: g for a, g in gain_scores.items() if len(g) >= 2}
    gain_point, gain_interval = mean_estimates(gain_scores, reps, seed) if gain_scores else ({}, {})
    thresholds = {1.0: target.value - target.band, 0.99: _target(target.value, 0.99)}
    rows = []
    for algo in algos:
        members = by_algo[algo]
        free = [(r.summary or {}).get("reward_free_students", 0) for r in members]
        row: dict[str, Any] = {
            "algo": algo,
            "runs": len(members),
            "seeds": [r.seed for r in members],
            "reward_free_students": "all" if None in free else max(free, default=0),
            "budgets": {},
        }
        for b in budgets:
            figures = per_budget[b]
            members_b, source = at[b][algo]
            reached = {
                fraction: [
                    students_to_reach(r.evaluations, b, threshold, target.worth) for r in members_b
                ]
                for fraction, threshold in thresholds.items()
            }
            row["budgets"][str(b)] = {
                "source": source,
                "runs": len(members_b),
                "regret_iqm": float(figures["point"][algo][0]),
                "regret_ci": [float(v) for v in figures["interval"][algo][:, 0]],
                "regret_mean": float(finals[b][algo].mean()),
                "regret_per_seed": [float(v) for v in finals[b][algo]],
                "seeds": [r.seed for r in members_b],
                "p_improvement": _pick(figures["improvement"], "point", algo),
                "p_improvement_ci": _pick(figures["improvement"], "interval", algo, ci=True),
                "reached_optimum": sum(t is not None for t in reached[1.0]),
                "reached_99pct": sum(t is not None for t in reached[0.99]),
            }
        top = row["budgets"][str(largest)]
        row.update(
            final_regret_iqm=top["regret_iqm"],
            final_regret_ci=top["regret_ci"],
            final_regret_mean=top["regret_mean"],
            p_improvement=top["p_improvement"],
            p_improvement_ci=top["p_improvement_ci"],
            converged_runs=sum(
                (r.summary or {}).get("stop_reason") == "converged" for r in members
            ),
            learning_gain=_pick({"point": gain_point}, "point", algo),
            learning_gain_ci=_pick({"interval": gain_interval}, "interval", algo, ci=True),
            episodes_mean=float(np.mean([len(r.evaluations) for r in members])),
        )
        for fraction, threshold in thresholds.items():
            times_ = [
                students_to_reach(r.evaluations, largest, threshold, target.worth) for r in members
            ]
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
    rows.sort(key=lambda row: (row["final_regret_iqm"], row["final_regret_mean"], row["algo"]))
    files = {kind: out / name for kind, name in FILES.items()}
    stable = {str(b): per_budget[b]["stability"] for b in budgets}
    report = BenchmarkReport(envs[0], budgets, target, rows, stable, files)
    write_json_atomic(
        files["json"],
        {
            "protocol": PROTOCOL,
            "env": report.env,
            "budgets": budgets,
            "budget": largest,
            "target": {
                "value": target.value,
                "band": target.band,
                "kind": target.kind,
                "worth": target.worth,
            },
            "optimum": target.value,
            "exact_optimum": target.exact,
            "bootstrap": {"reps": reps, "seed": seed, "confidence": 0.95},
            "stability": stable,
            "rows": rows,
        },
    )
    _write_csv(files["csv"], rows)
    atomic_write(files["markdown"], lambda tmp: tmp.write_text(markdown_table(report) + "\n"))
    plot_regret(report, curves_x="students", path=files["regret_students"])
    plot_regret(report, curves_x="seconds", path=files["regret_seconds"])
    plot_final(report, files["final_regret"])
    plot_profile({a: v[:, None] for a, v in finals[largest].items()}, files["profile"], reps, seed)
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
    "budget",
    "source",
    "runs",
    "reward_free_students",
    "regret_iqm",
    "regret_ci",
    "regret_mean",
    "p_improvement",
    "p_improvement_ci",
    "reached_optimum",
    "reached_99pct",
    "learning_gain",
    "learning_gain_ci",
    "students_to_optimum_median",
    "students_to_99pct_median",
    "converged_runs",
    "episodes_mean",
)


def _write_csv(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    """One line per (algorithm, budget)."""

    def cell(value: Any) -> Any:
        return ";".join(f"{v:.6g}" for v in value) if isinstance(value, list) else value

    def write(tmp: Path) -> None:
        with tmp.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=CSV_FIELDS, extrasaction="ignore")
            writer.writeheader()
            for row in rows:
                for budget, figures in row["budgets"].items():
                    line = {**row, **figures, "budget": budget}
                    writer.writerow({k: cell(line.get(k)) for k in CSV_FIELDS})

    atomic_write(path, write)


def _fmt(value: float | None, pattern: str = "{:.4f}") -> str:
    return "—" if value is None else pattern.format(value)


def _ci(values: list[float] | None, pattern: str = "{:.4f}") -> str:
    return "" if values is None else f" [{pattern.format(values[0])}, {pattern.format(values[1])}]"


def _caption(report: BenchmarkReport) -> str:
    n = report.rows[0]["runs"] if report.rows else 0
    target = report.target
    source = {
        "seed-mean": f"the table's best seed-mean reward {target.value:.4f} (a student within its "
        f"noise band {target.band:.4f} counts as the optimum; an incumbent is worth its seed-mean "
        "reward)",
        "table-optimum": f"the table's one-seed optimum {target.value:.4f}",
        "best-found": f"the best reward any run found {target.value:.4f}",
    }[target.kind]
    budgets = " / ".join(map(str, report.budgets))
    return (
        f"{report.env}, {n} seeds; budgets {budgets} distinct students; regret from {source}; "
        "IQM with 95 % stratified bootstrap CIs (seeded)"
    )


def _cells(report: BenchmarkReport) -> tuple[list[str], list[list[str]]]:
    """The report's table for people: the header and one row of cells per algorithm."""
    largest = str(report.budget)
    header = ["algorithm", "reward-free students"]
    header += [f"regret @{b} [CI]" for b in report.budgets]
    header += [f"P(> random) @{b} [CI]" for b in report.budgets]
    header += [f"optimum reached @{largest}", f"99 % reached @{largest}", "learning [CI]"]
    lines = []
    for row in report.rows:
        at = row["budgets"]
        cells = [row["algo"], str(row["reward_free_students"])]
        cells += [
            f"{_fmt(at[str(b)]['regret_iqm'])}{_ci(at[str(b)]['regret_ci'])}"
            for b in report.budgets
        ]
        cells += [
            f"{_fmt(at[str(b)]['p_improvement'], '{:.2f}')}"
            f"{_ci(at[str(b)]['p_improvement_ci'], '{:.2f}')}"
            for b in report.budgets
        ]
        cells += [
            f"{at[largest]['reached_optimum']}/{at[largest]['runs']}",
            f"{at[largest]['reached_99pct']}/{at[largest]['runs']}",
            f"{_fmt(row['learning_gain'])}{_ci(row['learning_gain_ci'])}",
        ]
        lines.append(cells)
    return header, lines


def _notes(report: BenchmarkReport) -> list[str]:
    """How each budget was obtained and how stable the ranking is."""
    notes = []
    own = sorted(
        {
            row["algo"]
            for row in report.rows
            for budget, figures in row["budgets"].items()
            if int(budget) != report.budget and figures["source"] == "own run"
        }
    )
    if len(report.budgets) > 1:
        notes.append(
            "Budgets below the largest are read off the largest run of the same seed"
            + (
                f", except for {', '.join(own)} (a run per budget: its schedule scales with it)"
                if own
                else ""
            )
            + "."
        )
    taus = []
    for budget in report.budgets:
        info = report.stability[str(budget)]
        tau = info["tau"]
        taus.append(f"τ = {tau:.2f} @{budget}" if tau is not None else f"τ undefined @{budget}")
    halves = report.stability[str(report.budget)]["halves"]
    if halves[0]:
        notes.append(
            f"Ranking stability, seeds {_span(halves[0])} against {_span(halves[1])} "
            f"(Kendall's τ of the IQM rankings): {', '.join(taus)}."
        )
    return notes


def _span(seeds: list[int]) -> str:
    return (
        f"{seeds[0]}–{seeds[-1]}" if seeds == list(range(seeds[0], seeds[-1] + 1)) else str(seeds)
    )


def report_markdown(
    caption: str, header: list[str], rows: list[list[str]], notes: list[str]
) -> str:
    """A report's table as Markdown: its caption, the table (every column kept), its notes."""
    lines = [caption, "", "| " + " | ".join(header) + " |"]
    lines.append("| " + " | ".join("---" for _ in header) + " |")
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    return "\n".join([*lines, "", *notes])


def report_table(caption: str, header: list[str], rows: list[list[str]], notes: list[str]):
    """The same as a rich table for a terminal."""
    from rich.table import Table

    table = Table(title=caption, caption=" ".join(notes))
    for column in header:
        table.add_column(column, justify="left" if column == "algorithm" else "right")
    for cells in rows:
        table.add_row(*cells)
    return table


def markdown_table(report: BenchmarkReport) -> str:
    """The report as a Markdown table (keeps every column however it is displayed)."""
    return report_markdown(_caption(report), *_cells(report), _notes(report))


def benchmark_table(report: BenchmarkReport):
    """The report as a rich table for a terminal (``benchmark.md`` holds the same)."""
    return report_table(_caption(report), *_cells(report), _notes(report))
