"""Measured tables: every student of a grid measured once by the live evaluator, queried in microseconds.

A table file holds, for each student of a :class:`~n2n_gym.grid.Grid`, what the live
:class:`~n2n_gym.measure.DistillationMeasurer` measured — accuracy, parameters, FLOPs, the
wall-clock seconds it cost, a learning curve, or the error it failed with — plus its CPU latency
and, for some students, the accuracy further seeds gave (a random 10 % for the noise, and every
student near the top with at least three seeds, so that the target of a benchmark is a seed mean,
not one lucky seed). The file is gzipped JSON (data, never unpickled), carries the fingerprint of
the teacher, data split and fidelity it was measured with, and a checksum of its rows.

:class:`TableMeasurer` answers from a table behind the same :class:`~n2n_gym.measure.Measurer`
interface as live distillation, so the evaluator computes rewards from stored measurements with
the same reward code, and constraints and reward settings still apply. Per query it returns one
seed's measurement (``query="seed"``, the default: what a live search with a fixed evaluation seed
sees, noise included) or the mean over the row's seeds (``query="mean"``, charged the cost of all
of them).

The **target** of a search is the best *seed-mean* reward of the table (:meth:`Table.target`);
a student counts as optimal when its seed mean lies within the **noise band** of it: the 95 %
half-width of the difference of two means of ``n`` seeds each, ``1.96 · σ · √(2 / n)``, with ``σ``
the pooled standard deviation of one seed's reward among the table's top students that have
several seeds, and ``n`` the target student's seed count.
"""

from __future__ import annotations

import functools
import gzip
import json
import math
import os
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from n2n_gym.arch import NetworkSpec, StudentDescription, StudentPlan
from n2n_gym.atomic import write_gzip_json_atomic
from n2n_gym.cache import json_digest, student_identity
from n2n_gym.grid import Grid
from n2n_gym.measure import Gate, Measurement, Measurer
from n2n_gym.reward import RewardConfig, compute_reward

if TYPE_CHECKING:
    from n2n_gym.task import Task

__all__ = [
    "SHIPPED_TABLES",
    "TABLE_FORMAT",
    "TABLE_VERSION",
    "OffGridStudent",
    "RowScorer",
    "Table",
    "TableError",
    "TableMeasurer",
    "TableRow",
    "TableTarget",
    "check_measured_for",
    "load_table",
    "shipped_table",
    "world_fingerprint",
]

TABLE_FORMAT = "n2n-gym-table"
TABLE_VERSION = 2
# Version 1 held at most one extra seed per row (column "repeat"); it still loads.
READABLE_VERSIONS = (1, 2)
TABLE_QUERIES = ("seed", "mean")
# The students near the top get extra seeds: the share of the grid and the seeds they reach.
TOP_FRACTION = 0.05
TOP_SEEDS = 3
BAND_Z = 1.96  # two-sided 95 %
TABLES_DIR = Path(__file__).parent / "tables"
# (teacher, dataset) -> the table shipped for it.
SHIPPED_TABLES = {
    ("default", "mnist"): "small_vgg-mnist-joint.json.gz",
    ("default", "fashion-mnist"): "small_vgg-fashion-mnist-joint.json.gz",
}
# What a task must agree on with a table for the table to stand for its live measurements.
WORLD_FIELDS = ("dataset", "val_size", "split_seed", "fidelity", "inherit_weights", "eval_seed")


class TableError(ValueError):
    """A table that cannot be used: missing, corrupt, or measured for another task."""


class OffGridStudent(KeyError):
    """A student the table has no row for (table envs mask these; see the grid)."""

    def __str__(self) -> str:
        return str(self.args[0])


def world_fingerprint(task: Task, teacher_fingerprint: str) -> str:
    """What determines a measurement besides the student: teacher weights, data split, fidelity."""
    data = task.to_dict()
    return json_digest(
        {"teacher": teacher_fingerprint, **{name: data[name] for name in WORLD_FIELDS}}
    )[:16]


def student_key(plan: StudentPlan) -> str:
    """The row key of a student: the digest of its identity, as the measurement cache keys it."""
    return json_digest(student_identity(plan))


@dataclass(frozen=True)
class TableRow:
    """One student of the table.

    Attributes:
        key: :func:`student_key` of the student.
        ratios: its decisions.
        measurement: what the live evaluator measured (with seconds and learning curve).
        latency_ms: CPU latency of one image, milliseconds (one thread, measured alone);
            ``None`` for an invalid student.
        repeats: what further seeds measured (``{"seed": s, "accuracy": a, "seconds": t}`` each,
            seed order; ``"sample": True`` on the random noise sample's second seed), for the
            noise sample and the students near the top.
    """

    key: str
    ratios: tuple[float, ...]
    measurement: Measurement
    latency_ms: float | None = None
    repeats: tuple[dict[str, Any], ...] = ()

    @property
    def seed_accuracies(self) -> list[float]:
        """Every seed's accuracy, the table's own measurement first (empty for an error)."""
        if not self.measurement.ok:
            return []
        return [self.measurement.accuracy] + [
            r["accuracy"] for r in self.repeats if r.get("accuracy") is not None
        ]

    @property
    def seeds(self) -> int:
        """How many seeds measured this student."""
        return len(self.seed_accuracies)

    @property
    def mean_accuracy(self) -> float | None:
        values = self.seed_accuracies
        return statistics.fmean(values) if values else None

    def to_list(self) -> list[Any]:
        m = self.measurement
        return [
            self.key,
            list(self.ratios),
            m.accuracy,
            m.params,
            m.flops,
            m.seconds,
            [list(point) for point in m.curve],
            m.error_type,
            m.error,
            self.latency_ms,
            [dict(r) for r in self.repeats],
        ]

    @classmethod
    def from_list(cls, values: list[Any], version: int = TABLE_VERSION) -> TableRow:
        key, ratios, acc, params, flops, seconds, curve, error_type, error, latency, again = values
        if version == 1:  # one optional repeat, of the random noise sample
            again = [{**again, "sample": True}] if again else []
        measurement = Measurement.from_dict(
            {
                "accuracy": acc,
                "params": params,
                "flops": flops,
                "seconds": seconds,
                "curve": curve,
                "error_type": error_type,
                "error": error,
            }
        )
        return cls(key, tuple(ratios), measurement, latency, tuple(dict(r) for r in again))


COLUMNS = (
    "key",
    "ratios",
    "accuracy",
    "params",
    "flops",
    "seconds",
    "curve",
    "error_type",
    "error",
    "latency_ms",
    "repeats",
)
COLUMNS_V1 = (*COLUMNS[:-1], "repeat")


@dataclass(frozen=True)
class TableTarget:
    """What a search on a table is scored against (:meth:`Table.target`).

    Attributes:
        reward: the best seed-mean reward of the table under the reward settings.
        row: the student that has it.
        seeds: how many seeds that mean is over.
        band: the noise band: a student whose seed-mean reward is at least ``reward − band``
            counts as having reached the optimum.
        noise_std: ``σ``, the pooled standard deviation of one seed's reward the band is built on.
        noise_students: how many multi-seed students ``σ`` pools.
        resolved: whether every student in the top :data:`TOP_FRACTION` under these settings has
            at least :data:`TOP_SEEDS` seeds (False under reward settings whose top students the
            build did not measure again: the target may then be one seed's luck).
    """

    reward: float
    row: TableRow
    seeds: int
    band: float
    noise_std: float
    noise_students: int
    resolved: bool


class RowScorer:
    """Rewards of measured rows or predicted accuracies, for whatever knows its teacher's
    architecture and accuracy (a :class:`Table`, a :class:`~n2n_gym.surrogate.Surrogate`)."""

    teacher: NetworkSpec
    teacher_accuracy: float

    def reward(
        self,
        row: TableRow,
        reward_config: RewardConfig | None = None,
        progress: int | None = None,
        accuracy: float | None = None,
    ) -> float:
        """A row's reward under ``reward_config``: of its own measurement, or of ``accuracy``
        (another seed's, or the seed mean); an error gets ``reward_on_error``."""
        config = reward_config or RewardConfig()
        m = row.measurement
        if not m.ok:
            return config.reward_on_error
        return compute_reward(
            m.accuracy if accuracy is None else accuracy,
            self.teacher_accuracy,
            m.params,
            self.teacher.params,
            m.flops,
            config,
            progress,
        ).reward

    def mean_reward(
        self, row: TableRow, reward_config: RewardConfig | None = None, progress: int | None = None
    ) -> float:
        """A row's reward at its seed-mean accuracy (its best estimate of the student's worth)."""
        return self.reward(row, reward_config, progress, row.mean_accuracy)

    def reward_of(
        self,
        accuracy: float,
        plan: StudentPlan,
        reward_config: RewardConfig | None = None,
        progress: int | None = None,
    ) -> float:
        """The reward of a student at ``accuracy``."""
        return compute_reward(
            accuracy,
            self.teacher_accuracy,
            plan.spec.params,
            self.teacher.params,
            plan.spec.flops,
            reward_config or RewardConfig(),
            progress,
        ).reward


@dataclass(frozen=True)
class Table(RowScorer):
    """A measured grid.

    Attributes:
        name: a short name (the file's stem).
        teacher: the teacher's architecture.
        teacher_accuracy: its validation accuracy, measured the way the students were.
        teacher_fingerprint: its weights' fingerprint.
        world: :func:`world_fingerprint` of the task the table was measured for.
        task: that task's fields (for people, and to rebuild rows live).
        context: the live measurer's context (its cache key ingredients, data digest included).
        grid: the students' choices.
        rows: by :func:`student_key`.
        build: how it was built (seconds, workers, host, versions).
    """

    name: str
    teacher: NetworkSpec
    teacher_accuracy: float
    teacher_fingerprint: str
    world: str
    task: dict[str, Any]
    context: dict[str, Any]
    grid: Grid
    rows: dict[str, TableRow]
    build: dict[str, Any]

    def __len__(self) -> int:
        return len(self.rows)

    @functools.cached_property
    def by_ratios(self) -> dict[tuple[float, ...], TableRow]:
        return {row.ratios: row for row in self.rows.values()}

    # ---- files ------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        rows = [row.to_list() for row in self.rows.values()]
        return {
            "format": TABLE_FORMAT,
            "version": TABLE_VERSION,
            "name": self.name,
            "teacher": {
                "spec": self.teacher.to_dict(),
                "accuracy": self.teacher_accuracy,
                "fingerprint": self.teacher_fingerprint,
            },
            "world": self.world,
            "task": self.task,
            "context": self.context,
            "grid": self.grid.to_dict(),
            "build": self.build,
            "columns": list(COLUMNS),
            "rows": rows,
            "sha256": json_digest(rows),
        }

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the gzipped JSON file atomically (the same one gives the same bytes)."""
        return write_gzip_json_atomic(path, self.to_dict())

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "table") -> Table:
        if data.get("format") != TABLE_FORMAT:
            raise TableError(f"{where} is not an n2n-gym table (format {data.get('format')!r})")
        version = data.get("version")
        if version not in READABLE_VERSIONS:
            raise TableError(
                f"{where} has table version {version!r}; this n2n-gym reads versions "
                f"{', '.join(map(str, READABLE_VERSIONS))}: rebuild it with `python -m n2n_gym.tabulate`"
            )
        try:
            columns = COLUMNS if version == TABLE_VERSION else COLUMNS_V1
            if list(data["columns"]) != list(columns):
                raise TableError(f"{where} has columns {data['columns']}, expected {list(columns)}")
            if json_digest(data["rows"]) != data["sha256"]:
                raise TableError(f"{where} is corrupt (its rows do not match their checksum)")
            teacher = NetworkSpec.from_dict(data["teacher"]["spec"])
            rows = [TableRow.from_list(values, version) for values in data["rows"]]
            return cls(
                name=data["name"],
                teacher=teacher,
                teacher_accuracy=float(data["teacher"]["accuracy"]),
                teacher_fingerprint=data["teacher"]["fingerprint"],
                world=data["world"],
                task=dict(data["task"]),
                context=dict(data["context"]),
                grid=Grid.from_dict(teacher, data["grid"]),
                rows={row.key: row for row in rows},
                build=dict(data["build"]),
            )
        except TableError:
            raise
        except (KeyError, TypeError, ValueError) as error:
            raise TableError(f"{where} is malformed ({type(error).__name__}: {error})") from None

    # ---- queries ----------------------------------------------------------------------------
    def row(self, plan: StudentPlan, student: StudentDescription) -> TableRow:
        """The row of a student.

        Raises:
            OffGridStudent: the table has no such student.
        """
        row = self.by_ratios.get(student.ratios) or self.rows.get(student_key(plan))
        if row is None:
            raise OffGridStudent(
                f"student with ratios {list(student.ratios)} is not in table {self.name!r}; its "
                f"grid allows {[list(unit) for unit in self.grid.choices]} per unit"
            )
        return row

    def rewards(
        self,
        reward_config: RewardConfig | None = None,
        progress: int | None = None,
        statistic: str = "seed",
    ) -> dict[str, float]:
        """Every row's reward under ``reward_config`` (errors get ``reward_on_error``), of the
        table's own seed (``statistic="seed"``) or of the seed mean (``"mean"``)."""
        score = self.mean_reward if statistic == "mean" else self.reward
        return {key: score(row, reward_config, progress) for key, row in self.rows.items()}

    def target(
        self, reward_config: RewardConfig | None = None, progress: int | None = None
    ) -> TableTarget:
        """The best seed-mean reward and the noise band around it (see the module doc)."""
        means = self.rewards(reward_config, progress, statistic="mean")
        key = max(means, key=lambda k: (means[k], k))
        ranked = sorted(means, key=lambda k: means[k], reverse=True)
        top = ranked[: max(1, round(TOP_FRACTION * len(ranked)))]
        # Noise where it matters: the top students' seeds (the whole table's if too few there).
        pool = [k for k in top if self.rows[k].seeds >= 2]
        if len(pool) < 10:
            pool = [k for k in ranked if self.rows[k].seeds >= 2]
        squares, dof = 0.0, 0
        for k in pool:
            row = self.rows[k]
            values = [
                self.reward(row, reward_config, progress, accuracy)
                for accuracy in row.seed_accuracies
            ]
            mean = statistics.fmean(values)
            squares += sum((v - mean) ** 2 for v in values)
            dof += len(values) - 1
        sigma = math.sqrt(squares / dof) if dof else 0.0
        seeds = self.rows[key].seeds
        return TableTarget(
            reward=means[key],
            row=self.rows[key],
            seeds=seeds,
            band=BAND_Z * sigma * math.sqrt(2 / max(1, seeds)),
            noise_std=sigma,
            noise_students=len(pool),
            resolved=all(self.rows[k].seeds >= TOP_SEEDS for k in top),
        )

    def reference(
        self, reward_config: RewardConfig | None = None, progress: int | None = None
    ) -> float:
        """The median seed-mean reward of the table's students: what a random student is worth,
        the 1 of a normalised regret (the target is its 0)."""
        return statistics.median(self.rewards(reward_config, progress, "mean").values())

    def optimum(
        self,
        reward_config: RewardConfig | None = None,
        progress: int | None = None,
        statistic: str = "seed",
    ) -> tuple[float, TableRow]:
        """The best reward in the table under these reward settings (of one seed, or of the seed
        means), and its row."""
        rewards = self.rewards(reward_config, progress, statistic)
        key = max(rewards, key=lambda k: (rewards[k], k))
        return rewards[key], self.rows[key]

    def difficulty(
        self, reward_config: RewardConfig | None = None, budget: int = 500
    ) -> dict[str, Any]:
        """How hard the table is for a search: the target, near-optimal counts, random search.

        Near-optimal counts and random search use seed-mean rewards against :meth:`target`.
        Random search is taken to draw distinct students uniformly: with ``k`` of ``n`` students
        at or above a threshold, it needs ``(n + 1) / (k + 1)`` evaluations on average to reach
        it, and reaches it within ``budget`` with probability ``1 − C(n−k, b) / C(n, b)``.
        """
        values = sorted(self.rewards(reward_config, statistic="mean").values(), reverse=True)
        best, best_row = self.optimum(reward_config)
        target = self.target(reward_config)
        n = len(values)

        def reach(threshold: float) -> dict[str, float]:
            k = sum(v >= threshold for v in values)
            b = min(budget, n)
            miss = (
                math.exp(
                    math.lgamma(n - k + 1)
                    - math.lgamma(n - k - b + 1)
                    - math.lgamma(n + 1)
                    + math.lgamma(n - b + 1)
                )
                if n - k >= b
                else 0.0
            )
            return {
                "students": k,
                "expected_evaluations": (n + 1) / (k + 1),
                "p_within_budget": 1 - miss,
            }

        ok = [row for row in self.rows.values() if row.measurement.ok]
        seeds = [row.seeds for row in ok]
        return {
            "students": n,
            "errors": n - len(ok),
            "optimum": best,
            "optimum_student": list(best_row.ratios),
            "optimum_accuracy": best_row.measurement.accuracy,
            "optimum_params": best_row.measurement.params,
            "target": target.reward,
            "target_student": list(target.row.ratios),
            "target_accuracy": target.row.mean_accuracy,
            "target_params": target.row.measurement.params,
            "target_seeds": target.seeds,
            "band": target.band,
            "noise_std": target.noise_std,
            "resolved": target.resolved,
            "students_by_seeds": {str(k): seeds.count(k) for k in sorted(set(seeds))},
            "within": {
                f"{pct}%": sum(v >= _fraction_of(target.reward, 1 - pct / 100) for v in values)
                for pct in (0.5, 1, 2)
            },
            "reward_quantiles": {
                q: values[min(n - 1, round((1 - q) * (n - 1)))] for q in (0.0, 0.25, 0.5, 0.75, 1.0)
            },
            "reach_optimum": reach(target.reward - target.band),
            "reach_99": reach(_fraction_of(target.reward, 0.99)),
            "budget": budget,
        }

    def noise_sample(self) -> list[TableRow]:
        """The random sample of students measured with a second seed (not the top students,
        whose extra seeds would bias a noise estimate)."""
        return [
            row for row in self.rows.values() if row.seeds >= 2 and row.repeats[0].get("sample")
        ]

    def noise(self) -> dict[str, Any]:
        """Agreement of the table's seed with the next one, over the random noise sample."""
        pairs = [(row.seed_accuracies[0], row.seed_accuracies[1]) for row in self.noise_sample()]
        if len(pairs) < 2:
            return {"repeated": len(pairs)}
        diffs = [a - b for a, b in pairs]
        return {
            "repeated": len(pairs),
            "accuracy_diff_std": statistics.stdev(diffs),
            # Two independent seeds: the std of one measurement is that of the difference / √2.
            "accuracy_std": statistics.stdev(diffs) / math.sqrt(2),
            "mean_abs_diff": statistics.fmean(abs(d) for d in diffs),
            "median_abs_diff": statistics.median(abs(d) for d in diffs),
        }

    def check_task(self, task: Task, teacher_fingerprint: str) -> None:
        """Refuse a task this table was not measured for.

        Raises:
            TableError: naming what differs.
        """
        check_measured_for(
            f"table {self.name!r}",
            (self.teacher_fingerprint, self.world, self.task),
            task,
            teacher_fingerprint,
        )


def check_measured_for(
    what: str, recorded: tuple[str, str, Mapping[str, Any]], task: Task, teacher_fingerprint: str
) -> None:
    """Refuse a task that a table or surrogate (``what``) was not measured for.

    Args:
        what: how to name it in the message (``"table 'x'"``).
        recorded: its teacher fingerprint, :func:`world_fingerprint` and task fields.
        task: the task that wants to use it.
        teacher_fingerprint: the task's teacher weights' fingerprint.

    Raises:
        TableError: naming what differs.
    """
    recorded_teacher, world, fields = recorded
    if teacher_fingerprint != recorded_teacher:
        raise TableError(
            f"{what} was measured for teacher weights {recorded_teacher}, but "
            f"teacher={task.teacher!r} has {teacher_fingerprint}: build a table for it with "
            "`python -m n2n_gym.tabulate --teacher ...`"
        )
    if world_fingerprint(task, teacher_fingerprint) != world:
        mine = task.to_dict()
        differ = []
        for name in WORLD_FIELDS:
            theirs, ours = fields.get(name), mine[name]
            if isinstance(ours, dict) and isinstance(theirs, dict):
                differ += [
                    f"{name}.{k} ({what.split()[0]} {theirs.get(k)!r}, task {ours.get(k)!r})"
                    for k in sorted(set(ours) | set(theirs))
                    if ours.get(k) != theirs.get(k)
                ]
            elif theirs != ours:
                differ.append(f"{name} ({what.split()[0]} {theirs!r}, task {ours!r})")
        raise TableError(
            f"{what} was measured with other settings than this task: "
            f"{'; '.join(differ) or 'unknown'}; use its settings or build a table for yours "
            "with `python -m n2n_gym.tabulate`"
        )


def _fraction_of(value: float, fraction: float) -> float:
    """``fraction`` of the way to ``value`` from 0, for a negative value too (below it, then)."""
    return value - (1.0 - fraction) * abs(value)


def shipped_table(teacher: str, dataset: str) -> Path | None:
    """The path of the table shipped for a teacher and data set, if there is one."""
    from n2n_gym.data import canonical_dataset

    name = SHIPPED_TABLES.get((teacher, canonical_dataset(dataset)))
    return TABLES_DIR / name if name else None


def read_gzip_json(path: str, kind: str, fix: str, error: type[Exception]) -> dict[str, Any]:
    """The dict in a gzipped JSON file of ``kind`` (``"table"``, ``"surrogate"``), or ``error``
    naming the file and ``fix`` when it is unreadable or holds something else."""
    try:
        with gzip.open(path, "rt") as file:
            data = json.load(file)
    except (OSError, EOFError, UnicodeDecodeError, json.JSONDecodeError) as failure:
        raise error(
            f"{kind} {path!r} is corrupt or truncated ({type(failure).__name__}); {fix}"
        ) from None
    if not isinstance(data, dict):
        raise error(f"{kind} {path!r} is not an n2n-gym {kind}")
    return data


@functools.lru_cache(maxsize=8)
def _read(path: str, stamp: tuple[int, int]) -> Table:
    data = read_gzip_json(path, "table", "rebuild it with `python -m n2n_gym.tabulate`", TableError)
    return Table.from_dict(data, where=f"table {path!r}")


def load_table(path: str | os.PathLike[str]) -> Table:
    """Read a table file (cached per process while the file is unchanged).

    Raises:
        TableError: the file is missing, truncated, corrupt or of another version (one line).
    """
    path = Path(path)
    if not path.is_file():
        raise TableError(
            f"table={str(path)!r}: no such file; build one with `python -m n2n_gym.tabulate`"
        )
    stat = path.stat()
    return _read(str(path.resolve()), (stat.st_mtime_ns, stat.st_size))


def _validation_seconds(measurement: Measurement) -> float:
    """What one validation pass cost in a measurement: its seconds beyond the training time,
    which the learning curve's evenly spaced points extrapolate to the full budget."""
    curve = measurement.curve
    if len(curve) < 3 or measurement.seconds is None:
        return 0.0
    (images_a, seconds_a, _), (images_b, seconds_b, _) = curve[0], curve[-2]
    per_image = (seconds_b - seconds_a) / (images_b - images_a)
    training = seconds_b + per_image * (curve[-1][0] - images_b)
    return max(0.0, measurement.seconds - training)


class TableMeasurer(Measurer):
    """Measurements from a table: what the live evaluator measured, in microseconds.

    Args:
        table: the measured grid.
        query: ``"seed"`` (default): the table's own measurement, one seed, as a live search with
            a fixed evaluation seed gets it — the noise an optimiser meets live stays in. ``"mean"``:
            the accuracy averaged over the row's seeds (one to :data:`TOP_SEEDS`), charged the
            seconds of all of them; its learning curve is dropped, so it cannot halve.
    """

    def __init__(self, table: Table, query: str = "seed") -> None:
        if query not in TABLE_QUERIES:
            raise TableError(f"table_query={query!r}: use one of {', '.join(TABLE_QUERIES)}")
        self.table = table
        self.query = query

    @property
    def teacher_spec(self) -> NetworkSpec:
        return self.table.teacher

    @property
    def teacher_accuracy(self) -> float:
        return self.table.teacher_accuracy

    def context(self) -> dict[str, Any]:
        context = {"kind": "table", "table": self.table.name, "world": self.table.world}
        return context | ({"query": self.query} if self.query != "seed" else {})

    def measure(self, plan: StudentPlan, student: StudentDescription) -> Measurement:
        row = self.table.row(plan, student)
        if self.query == "seed" or not row.measurement.ok:
            return row.measurement
        seconds = [row.measurement.seconds, *(r.get("seconds") for r in row.repeats)]
        return replace(
            row.measurement,
            accuracy=row.mean_accuracy,
            seconds=sum(t for t in seconds if t is not None),
            curve=(),
        )

    @property
    def supports_halving(self) -> bool:  # type: ignore[override]
        return self.query == "seed"

    def check_rungs(self, rungs: Sequence[float]) -> None:
        """Refuse rungs that are not points of the table's learning curves.

        Raises:
            TableError: naming the fractions the table has.
        """
        have = self.curve_fractions()
        missing = [r for r in rungs if not any(abs(r - f) < 1e-3 for f in have)]
        if missing:
            raise TableError(
                f"halving rungs {missing} are not points of table {self.table.name!r}'s learning "
                f"curves; it has {[round(f, 4) for f in have] or 'none'}"
            )

    def curve_fractions(self) -> list[float]:
        """The fractions of the budget at which the table's learning curves were measured."""
        for row in self.table.rows.values():
            curve = row.measurement.curve
            if row.measurement.ok and curve:
                return [images / curve[-1][0] for images, _, _ in curve[:-1]]
        return []

    def measure_halving(
        self,
        plan: StudentPlan,
        student: StudentDescription,
        rungs: Sequence[float],
        gate: Gate,
    ) -> Measurement:
        full = self.measure(plan, student)
        if not full.ok:
            return full
        # The curve's seconds leave out its validations; a live rung check pays one. Charge it
        # at every rung reached, so the simulated clock is what live halving spends.
        check = _validation_seconds(full)
        final_images = full.curve[-1][0]
        for rung, fraction in enumerate(rungs):
            _, seconds, value = next(
                point for point in full.curve if abs(point[0] / final_images - fraction) < 1e-3
            )
            partial = replace(
                full, accuracy=value, seconds=seconds + check, curve=(), halted_at=fraction
            )
            if not gate(rung, partial):
                return partial
        return replace(full, seconds=full.seconds + check * len(rungs))

    def measure_many(
        self, items: Iterable[tuple[StudentPlan, StudentDescription]]
    ) -> list[Measurement]:
        # Off-grid students are a caller's bug (table envs mask them): raise, never score them.
        return [self.measure(plan, student) for plan, student in items]
