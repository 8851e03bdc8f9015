"""Surrogate benchmarks: a gradient-boosted ensemble that predicts what distillation would measure.

A grid too big to measure (the narrow ResNet's joint space: 3^14 ≈ 4.8 million students) gets a
surrogate instead of a table, as NAS-Bench-301 did for its 10^18 architectures. It is fit on the
rows of sampled tables (``python -m n2n_gym.tabulate --sample N`` and ``--students-from RUN``,
students that searches visited), each measured by the live evaluator:

- **features** of a student: its width ratio per decision unit, plus the exact fractions of the
  teacher's parameters, FLOPs and units it keeps;
- **targets**: validation accuracy at each point of the learning curve (the last point is the
  measurement) and the log of the seconds it cost; parameters and FLOPs are computed exactly,
  never predicted;
- **ensemble**: ``members`` LightGBM models per target, each fit on a bootstrap of the training
  students (taking one random seed's accuracy where a student has several). Their mean is the
  prediction; their spread, rescaled so that it matches the seed-to-seed noise measured on the
  repeated students, is the noise model.

:class:`SurrogateMeasurer` answers behind the same :class:`~n2n_gym.measure.Measurer`
interface as tables and live distillation, so every env, constraint, reward setting and halving
rung works on it, and ``info["eval_seconds"]`` is the predicted live cost (the simulated clock).
Per query it returns, like a table, one seed's measurement (``query="seed"``, the default: the
prediction plus a noise draw fixed per student, as a live search with a fixed evaluation seed
sees it) or the mean prediction (``"mean"``, charged three seeds' cost, as a table's mean).

The file is gzipped JSON: the models as LightGBM's text format (data, never unpickled), the
fingerprint of teacher, data split and fidelity of the measurements, and the validation figures.
A surrogate refuses tasks it was not fit for, as a table does. Fit one with
:mod:`n2n_gym.surrogate_fit` (``n2n-gym surrogate fit TABLE... --out FILE``).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import os
import random
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from n2n_gym.arch import InvalidArchitecture, NetworkSpec, StudentDescription, StudentPlan
from n2n_gym.atomic import write_gzip_json_atomic
from n2n_gym.cache import json_digest
from n2n_gym.grid import Grid
from n2n_gym.measure import Measurement
from n2n_gym.reward import RewardConfig
from n2n_gym.table import (
    BAND_Z,
    TOP_SEEDS,
    RowScorer,
    TableError,
    TableMeasurer,
    TableRow,
    TableTarget,
    check_measured_for,
    read_gzip_json,
    student_key,
)

if TYPE_CHECKING:
    from n2n_gym.task import Task

__all__ = [
    "SHIPPED_SURROGATES",
    "Surrogate",
    "SurrogateMeasurer",
    "load_surrogate",
    "shipped_surrogate",
]

logger = logging.getLogger(__name__)

SURROGATE_FORMAT = "n2n-gym-surrogate"
SURROGATE_VERSION = 1
SURROGATES_DIR = Path(__file__).parent / "surrogates"
# (teacher, dataset) -> the surrogate shipped for it.
SHIPPED_SURROGATES = {
    ("bundled:narrow_resnet_mnist", "mnist"): "narrow_resnet-mnist-joint.json.gz",
}
SECONDS = "log_seconds"
# How a target is estimated on a space too big to enumerate: predictions for a spread sample,
# then greedy one-unit moves from the best of them until none improves.
TARGET_SAMPLE = 4000
TARGET_STARTS = 8
LIGHTGBM_PARAMS = {
    "objective": "regression",
    "learning_rate": 0.05,
    "num_leaves": 15,
    "min_data_in_leaf": 10,
    "feature_fraction": 0.9,
    "lambda_l2": 1.0,
    "num_threads": 1,
    "deterministic": True,
    "force_row_wise": True,
    "verbosity": -1,
}
ROUNDS = 300


class SurrogateError(TableError):
    """A surrogate file that cannot be used (missing, corrupt, another version, other task)."""


def _lightgbm():
    try:
        import lightgbm
    except ImportError:
        raise SurrogateError(
            "surrogates need LightGBM: pip install 'n2n-gym[surrogate]' (or pip install lightgbm)"
        ) from None
    return lightgbm


def features(teacher: NetworkSpec, student: StudentDescription, plan: StudentPlan) -> list[float]:
    """A student as the surrogate sees it: its ratios, then the shares of the teacher's
    parameters, FLOPs and decision units it keeps (exact, from the architecture)."""
    spec = plan.spec
    return [
        *student.ratios,
        spec.params / teacher.params,
        spec.flops / teacher.flops,
        spec.num_units / teacher.num_units,
    ]


def _noise_draw(key: str) -> float:
    """A standard normal draw fixed per student: its 'seed 0' deviation from the mean."""
    seed = int(hashlib.sha256(key.encode()).hexdigest()[:16], 16)
    return random.Random(seed).gauss(0.0, 1.0)


@dataclass
class Surrogate(RowScorer):
    """A fitted surrogate of one task's measurements (see the module doc).

    Attributes:
        name: a short name (the file's stem).
        teacher, teacher_accuracy, teacher_fingerprint, world, task, context, grid: as a
            :class:`~n2n_gym.table.Table`'s; the grid is the space it answers for.
        curve_images: the images seen at each learning-curve point (the last: the budget).
        curve_seconds: each point's share of a measurement's seconds (mean over the training
            rows), to place the curve's seconds.
        models: per ensemble member, per target (``"accuracy_0"`` ... and ``"log_seconds"``),
            LightGBM's text model.
        noise_scale: the factor from the ensemble's spread to one seed's accuracy noise.
        noise_cap: the largest seed-to-seed std of accuracy measured on any repeated student: a
            student's noise never exceeds it (the spread grows far from the measured students,
            where a search would otherwise be rewarded for finding lucky draws).
        validation: held-out figures (see :func:`fit_surrogate`).
        build: how it was fit (rows, members, seconds, versions).
        targets: precomputed :meth:`target` s by reward settings (the default's is stored).
    """

    name: str
    teacher: NetworkSpec
    teacher_accuracy: float
    teacher_fingerprint: str
    world: str
    task: dict[str, Any]
    context: dict[str, Any]
    grid: Grid
    curve_images: tuple[int, ...]
    curve_seconds: tuple[float, ...]
    models: list[dict[str, str]]
    noise_scale: float
    noise_cap: float = math.inf
    validation: dict[str, Any] = field(default_factory=dict)
    build: dict[str, Any] = field(default_factory=dict)
    targets: dict[str, dict[str, Any]] = field(default_factory=dict)

    # A surrogate has no rows to look up by ratios (the env then asks row()).
    by_ratios: Mapping[tuple[float, ...], TableRow] = field(default_factory=dict, repr=False)

    # ---- predictions ------------------------------------------------------------------------
    @functools.cached_property
    def _boosters(self) -> list[dict[str, Any]]:
        lightgbm = _lightgbm()
        return [
            {target: lightgbm.Booster(model_str=text) for target, text in member.items()}
            for member in self.models
        ]

    @property
    def accuracy_targets(self) -> list[str]:
        return [f"accuracy_{i}" for i in range(len(self.curve_images))]

    def predict(
        self, rows: np.ndarray, targets: Sequence[str] | None = None
    ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Ensemble mean and spread (std over members) of each target for a feature matrix."""
        targets = list(targets or [*self.accuracy_targets, SECONDS])
        out = {}
        for target in targets:
            values = np.stack([member[target].predict(rows) for member in self._boosters])
            out[target] = (values.mean(axis=0), values.std(axis=0))
        return out

    def _features(self, students: Sequence[StudentDescription], plans: Sequence[StudentPlan]):
        return np.array(
            [features(self.teacher, s, p) for s, p in zip(students, plans, strict=True)],
            dtype=np.float64,
        )

    def check_student(self, student: StudentDescription) -> None:
        if student.teacher.key != self.teacher.key or not self.grid.contains(student.ratios):
            from n2n_gym.table import OffGridStudent

            raise OffGridStudent(
                f"student with ratios {list(student.ratios)} is outside surrogate {self.name!r}'s "
                f"space; it answers for {[list(unit) for unit in self.grid.choices]} per unit"
            )

    def measurement(
        self, plan: StudentPlan, student: StudentDescription, query: str = "seed"
    ) -> Measurement:
        """The predicted measurement: one seed's (``"seed"``) or the mean (``"mean"``)."""
        self.check_student(student)
        predicted = self.predict(self._features([student], [plan]))
        shift = 0.0
        if query == "seed":
            spread = predicted[self.accuracy_targets[-1]][1][0]
            sigma = min(self.noise_scale * spread, self.noise_cap)
            shift = sigma * _noise_draw(student_key(plan))
        seconds = float(math.exp(predicted[SECONDS][0][0]))
        curve = tuple(
            (
                images,
                seconds * share,
                float(np.clip(predicted[target][0][0] + shift, 0.0, 1.0)),
            )
            for images, share, target in zip(
                self.curve_images, self.curve_seconds, self.accuracy_targets, strict=True
            )
        )
        if query == "mean":  # as a table's mean: the cost of the seeds behind it
            seconds *= TOP_SEEDS
            curve = ()
        accuracy = float(np.clip(predicted[self.accuracy_targets[-1]][0][0] + shift, 0.0, 1.0))
        return Measurement(
            accuracy=accuracy,
            params=plan.spec.params,
            flops=plan.spec.flops,
            seconds=seconds,
            curve=curve,
        )

    # ---- the table interface the envs use ---------------------------------------------------
    def row(self, plan: StudentPlan, student: StudentDescription) -> TableRow:
        """The student's predicted mean, as a table row (what the env scores a run's worth by)."""
        return TableRow(student_key(plan), student.ratios, self.measurement(plan, student, "mean"))

    def target(
        self, reward_config: RewardConfig | None = None, progress: int | None = None
    ) -> TableTarget:
        """The best predicted reward found on the space and the noise band around it.

        The space cannot be enumerated: the best is searched for (predictions for a spread
        sample of :data:`TARGET_SAMPLE` students, then greedy one-unit moves from the best
        :data:`TARGET_STARTS` until none improves), so it is a lower bound of the true best
        prediction. The band is a table's: ``1.96 · σ · √(2/3)``, with ``σ`` the seed noise of
        the reward measured on the training data's repeated students near the top.
        """
        config = reward_config or RewardConfig()
        label = json_digest({"config": config.to_dict(), "progress": progress})
        if label not in self.targets:
            started = time.perf_counter()
            self.targets[label] = self._search_target(config, progress)
            logger.info(
                "surrogate %s: target under these reward settings found in %.1f s",
                self.name,
                time.perf_counter() - started,
            )
        found = self.targets[label]
        student = StudentDescription(self.teacher, tuple(found["ratios"]))
        plan = student.plan()
        return TableTarget(
            reward=found["reward"],
            row=self.row(plan, student),
            seeds=TOP_SEEDS,
            band=BAND_Z * found["noise_std"] * math.sqrt(2 / TOP_SEEDS),
            noise_std=found["noise_std"],
            noise_students=self.validation.get("noise", {}).get("students", 0),
            resolved=True,
        )

    def reference(
        self, reward_config: RewardConfig | None = None, progress: int | None = None
    ) -> float:
        """The median predicted reward of uniformly random students: what a random student is
        worth, the 1 of a normalised regret (the target is its 0)."""
        self.target(reward_config, progress)
        config = reward_config or RewardConfig()
        return self.targets[json_digest({"config": config.to_dict(), "progress": progress})][
            "reference"
        ]

    def optimum(
        self,
        reward_config: RewardConfig | None = None,
        progress: int | None = None,
        statistic: str = "seed",
    ) -> tuple[float, TableRow]:
        """The target's reward and row (a surrogate's best is its best mean prediction)."""
        target = self.target(reward_config, progress)
        return target.reward, target.row

    def _search_target(self, config: RewardConfig, progress: int | None) -> dict[str, Any]:
        final = self.accuracy_targets[-1]

        def scores(students: list[StudentDescription]) -> list[tuple[float, StudentDescription]]:
            valid = []
            for student in students:
                try:
                    valid.append((student, student.plan()))
                except InvalidArchitecture:
                    continue
            if not valid:
                return []
            accuracy = self.predict(
                self._features([s for s, _ in valid], [p for _, p in valid]), [final]
            )[final][0]
            return [
                (self.reward_of(float(np.clip(a, 0.0, 1.0)), plan, config, progress), student)
                for a, (student, plan) in zip(accuracy, valid, strict=True)
            ]

        ranked = sorted(scores(self.grid.sample(TARGET_SAMPLE, seed=1)), key=_by_score)
        best_reward, best = ranked[-1]
        for reward, start in ranked[-TARGET_STARTS:]:
            while True:
                moves = [
                    StudentDescription(
                        self.teacher, (*start.ratios[:unit], choice, *start.ratios[unit + 1 :])
                    )
                    for unit, choices in enumerate(self.grid.choices)
                    for choice in choices
                    if choice != start.ratios[unit]
                ]
                step_reward, step = max(scores(moves), key=_by_score)
                if step_reward <= reward:
                    break
                reward, start = step_reward, step
            if reward > best_reward:
                best_reward, best = reward, start
        uniform = [reward for reward, _ in scores(self.grid.sample(TARGET_SAMPLE, 2, spread=False))]
        return {
            "reward": best_reward,
            "reference": statistics.median(uniform),
            "ratios": list(best.ratios),
            "noise_std": self.validation.get("noise", {}).get("reward_std", 0.0),
        }

    # ---- files ------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        models = [dict(sorted(member.items())) for member in self.models]
        return {
            "format": SURROGATE_FORMAT,
            "version": SURROGATE_VERSION,
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
            "curve_images": list(self.curve_images),
            "curve_seconds": list(self.curve_seconds),
            "noise_scale": self.noise_scale,
            "noise_cap": self.noise_cap,
            "validation": self.validation,
            "build": self.build,
            "targets": self.targets,
            "models": models,
            "sha256": json_digest(models),
        }

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the gzipped JSON file atomically (the same surrogate gives the same bytes)."""
        return write_gzip_json_atomic(path, self.to_dict())

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "surrogate") -> Surrogate:
        if data.get("format") != SURROGATE_FORMAT:
            raise SurrogateError(
                f"{where} is not an n2n-gym surrogate (format {data.get('format')!r})"
            )
        if data.get("version") != SURROGATE_VERSION:
            raise SurrogateError(
                f"{where} has surrogate version {data.get('version')!r}; this n2n-gym reads "
                f"version {SURROGATE_VERSION}: fit it again with `n2n-gym surrogate fit`"
            )
        try:
            if json_digest(data["models"]) != data["sha256"]:
                raise SurrogateError(f"{where} is corrupt (its models do not match their checksum)")
            teacher = NetworkSpec.from_dict(data["teacher"]["spec"])
            return cls(
                name=data["name"],
                teacher=teacher,
                teacher_accuracy=float(data["teacher"]["accuracy"]),
                teacher_fingerprint=data["teacher"]["fingerprint"],
                world=data["world"],
                task=dict(data["task"]),
                context=dict(data["context"]),
                grid=Grid.from_dict(teacher, data["grid"]),
                curve_images=tuple(int(i) for i in data["curve_images"]),
                curve_seconds=tuple(float(s) for s in data["curve_seconds"]),
                models=[dict(member) for member in data["models"]],
                noise_scale=float(data["noise_scale"]),
                noise_cap=float(data.get("noise_cap", math.inf)),
                validation=dict(data["validation"]),
                build=dict(data["build"]),
                targets=dict(data["targets"]),
            )
        except SurrogateError:
            raise
        except (KeyError, TypeError, ValueError) as error:
            raise SurrogateError(
                f"{where} is malformed ({type(error).__name__}: {error})"
            ) from None

    def check_task(self, task: Task, teacher_fingerprint: str) -> None:
        """Refuse a task this surrogate's measurements were not taken for (as a table does)."""
        check_measured_for(
            f"surrogate {self.name!r}",
            (self.teacher_fingerprint, self.world, self.task),
            task,
            teacher_fingerprint,
        )


def _by_score(item: tuple[float, StudentDescription]) -> tuple[float, tuple[float, ...]]:
    return item[0], item[1].ratios


class SurrogateMeasurer(TableMeasurer):
    """Measurements predicted by a surrogate, behind the table measurer's interface.

    Args:
        surrogate: the fitted surrogate.
        query: ``"seed"`` (default): the prediction plus a noise draw fixed per student (one
            seed's measurement); ``"mean"``: the mean prediction, charged three seeds' cost.
    """

    def __init__(self, surrogate: Surrogate, query: str = "seed") -> None:
        super().__init__(surrogate, query)  # type: ignore[arg-type]

    def context(self) -> dict[str, Any]:
        context = {"kind": "surrogate", "surrogate": self.table.name, "world": self.table.world}
        return context | ({"query": self.query} if self.query != "seed" else {})

    def measure(self, plan: StudentPlan, student: StudentDescription) -> Measurement:
        return self.table.measurement(plan, student, self.query)

    def curve_fractions(self) -> list[float]:
        images = self.table.curve_images
        return [i / images[-1] for i in images[:-1]]


def shipped_surrogate(teacher: str, dataset: str) -> Path | None:
    """The path of the surrogate shipped for a teacher and data set, if there is one."""
    from n2n_gym.data import canonical_dataset

    name = SHIPPED_SURROGATES.get((teacher, canonical_dataset(dataset)))
    return SURROGATES_DIR / name if name else None


@functools.lru_cache(maxsize=4)
def _read(path: str, stamp: tuple[int, int]) -> Surrogate:
    data = read_gzip_json(
        path, "surrogate", "fit it again with `n2n-gym surrogate fit`", SurrogateError
    )
    return Surrogate.from_dict(data, where=f"surrogate {path!r}")


def load_surrogate(path: str | os.PathLike[str]) -> Surrogate:
    """Read a surrogate file (cached per process while the file is unchanged).

    Raises:
        SurrogateError: missing, truncated, corrupt, another version, or LightGBM missing.
    """
    path = Path(path)
    if not path.is_file():
        raise SurrogateError(
            f"surrogate={str(path)!r}: no such file; fit one with `n2n-gym surrogate fit`"
        )
    _lightgbm()
    stat = path.stat()
    return _read(str(path.resolve()), (stat.st_mtime_ns, stat.st_size))
