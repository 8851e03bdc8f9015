"""rliable's robust statistics with the per-resample work vectorised, and seeded.

The benchmark and the suite report what rliable defines — the interquartile mean, the
probability of improvement, score distributions (performance profiles) — with its stratified
bootstrap intervals (``rliable.library.get_interval_estimates``). rliable draws each resample
from numpy's global generator and evaluates the statistic on it, thousands of Python calls per
algorithm; here every resample comes from one draw of the same seeded generator (the same
numbers) and each statistic is evaluated on all of them at once (rliable's own loop remains for a
probability of improvement between run sets of different sizes). The statistics are rliable's
functions written without their per-call overhead (scipy's wrappers, a Mann-Whitney test per
task, ``np.vectorize`` over thresholds) and return the same numbers: the IQM is
scipy's ``trim_mean`` computation step by step, the probability of improvement counts the pairs
that the Mann-Whitney U statistic counts, and a score distribution counts runs above each
threshold. ``tests/test_benchmark.py`` checks each against rliable's.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator, Mapping

import numpy as np

__all__ = [
    "anytime_iqm",
    "interval_estimates",
    "iqm",
    "iqm_estimates",
    "mean_estimates",
    "performance_profile",
    "probability_of_improvement",
    "score_distribution",
]


def iqm(scores: np.ndarray) -> float:
    """The interquartile mean of every score (rliable's ``aggregate_iqm``: scipy's ``trim_mean``
    with a quarter cut from each end, over the flattened array)."""
    values = np.ravel(np.asarray(scores, dtype=float))
    cut = int(0.25 * len(values))
    kept = np.partition(values, (cut, len(values) - cut - 1))[cut : len(values) - cut]
    return float(np.mean(kept))


def probability_of_improvement(scores_x: np.ndarray, scores_y: np.ndarray) -> float:
    """P(X > Y) averaged over tasks, ties counting a half (rliable's, which divides each task's
    one-sided Mann-Whitney U by the number of pairs).

    Args:
        scores_x: ``(runs_x, tasks)`` scores of X (higher is better).
        scores_y: ``(runs_y, tasks)`` scores of Y.
    """
    x = np.asarray(scores_x, dtype=float)
    y = np.asarray(scores_y, dtype=float)
    per_task = []
    for task in range(x.shape[1]):
        a, b = x[:, task], y[:, task]
        if np.array_equal(a, b):
            per_task.append(0.5)
            continue
        greater = np.count_nonzero(a[:, None] > b[None, :])
        ties = np.count_nonzero(a[:, None] == b[None, :])
        per_task.append((greater + 0.5 * ties) / (len(a) * len(b)))
    return float(np.mean(per_task))


def score_distribution(scores: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """The share of all scores above each threshold (rliable's ``score_distributions``)."""
    values = np.ravel(np.asarray(scores, dtype=float))
    return np.count_nonzero(values[:, None] > np.asarray(thresholds)[None, :], axis=0) / len(values)


@contextlib.contextmanager
def _seeded_global_numpy(seed: int) -> Iterator[None]:
    """rliable's bootstraps draw from numpy's global generator whatever generator they are given:
    seed it for the call, and leave the caller's state as it was."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


def interval_estimates(
    scores: Mapping[str, np.ndarray | tuple[np.ndarray, ...]],
    func: Callable[..., np.ndarray],
    reps: int,
    seed: int,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """rliable's point estimates and 95 % stratified bootstrap intervals of ``func``, seeded.

    Args:
        scores: per algorithm, its ``(runs, tasks)`` scores (or a tuple of such arrays that
            ``func`` takes together, e.g. the pair of a probability of improvement).
        func: the statistic of one algorithm's scores, as a 1-D array.
        reps: bootstrap resamples.
        seed: seeds the resampling: the same scores give the same intervals.
    """
    from rliable import library as rly

    with warnings.catch_warnings(), _seeded_global_numpy(seed):
        warnings.simplefilter("ignore", FutureWarning)  # arch deprecates the RandomState
        return rly.get_interval_estimates(
            scores, func, reps=reps, random_state=np.random.RandomState(seed)
        )


def _iqm_rows(rows: np.ndarray) -> np.ndarray:
    """:func:`iqm` of each row of ``rows``, computed as it is for one row: ``(reps, 1)``."""
    cut = int(0.25 * rows.shape[1])
    kept = np.partition(rows, (cut, rows.shape[1] - cut - 1), axis=1)
    return np.mean(kept[:, cut : rows.shape[1] - cut], axis=1)[:, None]


# arch's percentile interval (rliable's default), computed as arch computes it.
_ALPHA = (1.0 - 0.95) / 2
_PERCENTILES = [100 * _ALPHA, 100 * (1.0 - _ALPHA)]


def _draws(values: np.ndarray, reps: int, copies: int = 1) -> np.ndarray:
    """Run indices of ``reps`` stratified resamples (runs drawn per task) of ``copies`` arrays
    shaped as ``values``, ``(reps, copies, runs, tasks)``: the numbers rliable draws from numpy's
    global generator, one resample (and array) at a time, in one call."""
    runs, tasks = values.shape
    return np.random.choice(runs, (reps, copies, runs, tasks), replace=True)


def _stratified_estimates(
    scores: Mapping[str, np.ndarray],
    statistic: Callable[[np.ndarray], np.ndarray],
    reps: int,
    seed: int,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """:func:`interval_estimates` of a statistic of all scores, every resample at once.

    rliable's stratified bootstrap draws each resample's runs per task with one
    ``np.random.choice`` on the global generator, and arch evaluates the statistic resample by
    resample (thousands of Python calls per algorithm). Drawing all of them in one call takes the
    same numbers from the seeded generator, and ``statistic`` maps ``(reps, runs * tasks)``
    resamples (each flattened as rliable's functions flatten it) to ``(reps, k)`` values: the
    same intervals, checked against rliable's in ``tests/test_benchmark.py``.
    """
    point, interval = {}, {}
    with _seeded_global_numpy(seed):
        for algo, values in scores.items():
            values = np.asarray(values, dtype=float)
            runs, tasks = values.shape
            draws = _draws(values, reps)[:, 0]
            resamples = values[draws, np.arange(tasks)].reshape(reps, runs * tasks)
            point[algo] = statistic(values.reshape(1, -1))[0]
            interval[algo] = np.percentile(statistic(resamples), _PERCENTILES, axis=0)
    return point, interval


def iqm_estimates(
    scores: Mapping[str, np.ndarray], reps: int, seed: int
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Each algorithm's IQM over its ``(runs, tasks)`` scores, with its interval."""
    return _stratified_estimates(scores, _iqm_rows, reps, seed)


def mean_estimates(
    scores: Mapping[str, np.ndarray], reps: int, seed: int
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Each algorithm's mean over its ``(runs, tasks)`` scores, with its interval."""
    return _stratified_estimates(scores, lambda rows: np.mean(rows, axis=1)[:, None], reps, seed)


def _improvement_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """:func:`probability_of_improvement` of each resample pair ``(reps, runs, tasks)``."""
    greater = np.count_nonzero(x[:, :, None, :] > y[:, None, :, :], axis=(1, 2))
    ties = np.count_nonzero(x[:, :, None, :] == y[:, None, :, :], axis=(1, 2))
    per_task = (greater + 0.5 * ties) / (x.shape[1] * y.shape[1])  # (reps, tasks)
    return np.mean(per_task, axis=1)


def improvement_estimates(
    scores: Mapping[str, np.ndarray], baseline: str, reps: int, seed: int
) -> dict[str, dict[str, np.ndarray]]:
    """P(improvement) of each algorithm over ``baseline`` (scores: lower is better), with its
    interval: ``{"point": {...}, "interval": {...}}``, empty without the baseline or rivals.

    rliable resamples the two algorithms' runs independently, one after the other in each
    resample; with as many runs in both, all resamples come from one draw of the same numbers.
    """
    if baseline not in scores:
        return {}
    pairs = {a: (-s, -scores[baseline]) for a, s in scores.items() if a != baseline}
    if not pairs:
        return {}
    if any(x.shape != y.shape for x, y in pairs.values()):
        point, interval = interval_estimates(pairs, probability_of_improvement, reps, seed)
        return {"point": point, "interval": interval}
    point, interval = {}, {}
    with _seeded_global_numpy(seed):
        for algo, (x, y) in pairs.items():
            x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
            draws = _draws(x, reps, copies=2)
            tasks = np.arange(x.shape[1])
            estimates = _improvement_rows(x[draws[:, 0], tasks], y[draws[:, 1], tasks])
            point[algo] = probability_of_improvement(x, y)
            interval[algo] = np.percentile(estimates[:, None], _PERCENTILES, axis=0)
    return {"point": point, "interval": interval}


def performance_profile(
    scores: Mapping[str, np.ndarray], thresholds: np.ndarray, reps: int, seed: int
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """rliable's ``create_performance_profile`` (score distributions, percentile intervals;
    like it, the resamples come from numpy's global generator, seeded here)."""
    thresholds = np.asarray(thresholds, dtype=float)

    def distribution(rows: np.ndarray) -> np.ndarray:
        above = np.count_nonzero(rows[:, :, None] > thresholds[None, None, :], axis=1)
        return above / rows.shape[1]

    return _stratified_estimates(scores, distribution, reps, seed)


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
