"""Fit a surrogate on sampled tables and validate it on held-out students: ``n2n-gym surrogate``.

::

    n2n-gym surrogate fit data/surrogates/narrow_resnet-mnist-joint-sample.json.gz \\
        data/surrogates/narrow_resnet-mnist-joint-visited.json.gz --out narrow.json.gz
    n2n-gym surrogate show n2n_gym/surrogates/narrow_resnet-mnist-joint.json.gz

(``python -m n2n_gym.surrogate_fit`` is the same.) What a surrogate is and how it answers:
:mod:`n2n_gym.surrogate`.
"""

from __future__ import annotations

import hashlib
import math
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from n2n_gym.arch import StudentDescription, StudentPlan
from n2n_gym.reward import RewardConfig
from n2n_gym.surrogate import (
    LIGHTGBM_PARAMS,
    ROUNDS,
    SECONDS,
    Surrogate,
    SurrogateError,
    _lightgbm,
    features,
    load_surrogate,
)
from n2n_gym.table import Table, TableError, TableRow, load_table

__all__ = ["fit_surrogate", "main"]

# ---- fitting --------------------------------------------------------------------------------

NOISE_CAP_QUANTILE = 0.95


@dataclass
class _Example:
    student: StudentDescription
    plan: StudentPlan
    row: TableRow


def _examples(tables: Sequence[Table]) -> list[_Example]:
    """The measured students of tables of one task (refusing a mix), each once."""
    first = tables[0]
    for table in tables[1:]:
        if (table.world, table.teacher_fingerprint) != (first.world, first.teacher_fingerprint):
            raise SurrogateError(
                f"tables {first.name!r} and {table.name!r} were measured for different tasks "
                "(teacher weights, data split or fidelity): fit on tables of one task"
            )
    examples: dict[tuple[float, ...], _Example] = {}
    for table in tables:
        for row in table.rows.values():
            if not row.measurement.ok or not row.measurement.curve:
                continue
            student = StudentDescription(table.teacher, row.ratios)
            examples.setdefault(row.ratios, _Example(student, student.plan(), row))
    return [examples[k] for k in sorted(examples)]


def _split(example: _Example, holdout: float, seed: int) -> str:
    """``"train"``, or for a ``holdout`` share of the students half ``"calibrate"`` (the noise
    scale) and half ``"test"`` (the reported figures); fixed per student and seed."""
    digest = hashlib.sha256(f"{seed}:{example.row.key}".encode()).hexdigest()
    share = int(digest[:8], 16) / 0xFFFFFFFF
    return "calibrate" if share < holdout / 2 else "test" if share < holdout else "train"


def _targets(example: _Example, rng: random.Random) -> dict[str, float]:
    """One training example's targets: the curve of its own measurement, and for the final
    accuracy one of its seeds at random (so the ensemble sees the seed noise)."""
    m = example.row.measurement
    values = {f"accuracy_{i}": point[2] for i, point in enumerate(m.curve)}
    values[f"accuracy_{len(m.curve) - 1}"] = rng.choice(example.row.seed_accuracies)
    values[SECONDS] = math.log(max(m.seconds or 1e-3, 1e-3))
    return values


def fit_surrogate(
    tables: Sequence[Table],
    name: str,
    *,
    members: int = 5,
    holdout: float = 0.2,
    seed: int = 0,
    rounds: int = ROUNDS,
    progress: Callable[[str], None] | None = None,
) -> Surrogate:
    """Fit the ensemble on the tables' rows and validate it on held-out students.

    Args:
        tables: sampled tables of one task (same teacher weights, data split and fidelity).
        name: the surrogate's name.
        members: ensemble size.
        holdout: share of students held out of training: half calibrates the noise scale, half
            (the test students) gives the validation figures.
        seed: seeds the split, the bootstraps and LightGBM.
        rounds: boosting rounds of the final-accuracy models (the others get a third).
        progress: called with a short note as each member is fit.

    Returns:
        The surrogate, its ``validation`` holding: Kendall τ and Spearman of predicted vs
        measured (seed-mean) reward on the held-out students, overall and within their top 10 %,
        the accuracy error, and the predicted vs measured seed noise.
    """
    lightgbm = _lightgbm()
    started = time.perf_counter()
    examples = _examples(tables)
    if len(examples) < 20:
        raise SurrogateError(
            f"{len(examples)} measured students are too few to fit a surrogate (need 20+)"
        )
    reference = tables[0]
    points = {len(e.row.measurement.curve) for e in examples}
    if len(points) != 1:
        raise SurrogateError(f"the tables' learning curves have different lengths {sorted(points)}")
    curve_images = tuple(int(p[0]) for p in examples[0].row.measurement.curve)
    curve_seconds = tuple(
        statistics.fmean(
            e.row.measurement.curve[i][1] / e.row.measurement.seconds for e in examples
        )
        for i in range(len(curve_images))
    )
    parts: dict[str, list[_Example]] = {"train": [], "calibrate": [], "test": []}
    for example in examples:
        parts[_split(example, holdout, seed)].append(example)
    train, test = parts["train"], parts["test"]
    x_train = np.array([features(reference.teacher, e.student, e.plan) for e in train])
    models = []
    for member in range(members):
        rng = random.Random(seed * 1000 + member)
        picks = [rng.randrange(len(train)) for _ in train]  # a bootstrap of the students
        rows = x_train[picks]
        values = [_targets(train[i], rng) for i in picks]
        fitted = {}
        final = f"accuracy_{len(curve_images) - 1}"
        for target in values[0]:
            data = lightgbm.Dataset(rows, label=[v[target] for v in values], free_raw_data=True)
            params = {**LIGHTGBM_PARAMS, "seed": seed * 1000 + member}
            # The final accuracy decides rewards; the earlier curve points (halving rungs) and
            # the cost need less detail, and a third of the trees keeps the file small.
            trees = rounds if target == final else max(50, rounds // 3)
            booster = lightgbm.train(params, data, num_boost_round=trees)
            fitted[target] = booster.model_to_string()
        models.append(fitted)
        if progress is not None:
            progress(f"member {member + 1}/{members} fit")
    surrogate = Surrogate(
        name=name,
        teacher=reference.teacher,
        teacher_accuracy=reference.teacher_accuracy,
        teacher_fingerprint=reference.teacher_fingerprint,
        world=reference.world,
        task=reference.task,
        context={"kind": "surrogate-of", "measured": reference.context},
        grid=reference.grid,
        curve_images=curve_images,
        curve_seconds=curve_seconds,
        models=models,
        noise_scale=1.0,
    )
    surrogate.noise_scale, noise = _calibrate_noise(surrogate, train, parts["calibrate"], test)
    surrogate.noise_cap = noise["cap"]
    surrogate.validation = {
        "train_students": len(train),
        "calibration_students": len(parts["calibrate"]),
        "test_students": len(test),
        **_rank_agreement(surrogate, test),
        "noise": noise,
    }
    surrogate.build = {
        "tables": [t.name for t in tables],
        "members": members,
        "rounds": rounds,
        "holdout": holdout,
        "seed": seed,
        "lightgbm": lightgbm.__version__,
        "fit_seconds": time.perf_counter() - started,
        "measured_hours": sum(e.row.measurement.seconds or 0.0 for e in examples) / 3600,
        "created": time.strftime("%Y-%m-%d"),
    }
    default = RewardConfig()
    surrogate.target(default)  # stored in the file: loading needs no search for the default
    return surrogate


def _predicted_mean_rewards(surrogate: Surrogate, examples: Sequence[_Example]) -> list[float]:
    final = surrogate.accuracy_targets[-1]
    x = surrogate._features([e.student for e in examples], [e.plan for e in examples])
    accuracy = surrogate.predict(x, [final])[final][0]
    return [
        surrogate.reward_of(float(np.clip(a, 0.0, 1.0)), e.plan)
        for a, e in zip(accuracy, examples, strict=True)
    ]


def _rank_agreement(surrogate: Surrogate, test: Sequence[_Example]) -> dict[str, Any]:
    from scipy.stats import kendalltau, spearmanr

    if len(test) < 10:
        return {}
    measured = [surrogate.reward_of(e.row.mean_accuracy, e.plan) for e in test]
    predicted = _predicted_mean_rewards(surrogate, test)
    order = sorted(range(len(test)), key=lambda i: measured[i], reverse=True)
    top = order[: max(5, len(test) // 10)]
    errors = [abs(p - m) for p, m in zip(predicted, measured, strict=True)]
    final = surrogate.accuracy_targets[-1]
    x = surrogate._features([e.student for e in test], [e.plan for e in test])
    accuracy = surrogate.predict(x, [final])[final][0]
    return {
        "kendall_tau": float(kendalltau(predicted, measured).statistic),
        "spearman": float(spearmanr(predicted, measured).statistic),
        "top10_students": len(top),
        "top10_kendall_tau": float(
            kendalltau([predicted[i] for i in top], [measured[i] for i in top]).statistic
        ),
        "top10_spearman": float(
            spearmanr([predicted[i] for i in top], [measured[i] for i in top]).statistic
        ),
        # Accuracy alone: the reward's size term is exact, its accuracy term is what is predicted.
        "accuracy_kendall_tau": float(
            kendalltau(accuracy, [e.row.mean_accuracy for e in test]).statistic
        ),
        "accuracy_spearman": float(
            spearmanr(accuracy, [e.row.mean_accuracy for e in test]).statistic
        ),
        "reward_mae": statistics.fmean(errors),
        "accuracy_mae": statistics.fmean(
            abs(float(a) - e.row.mean_accuracy) for a, e in zip(accuracy, test, strict=True)
        ),
    }


def _pooled_seed_std(values: Sequence[Sequence[float]]) -> tuple[float, int]:
    squares, dof = 0.0, 0
    for seeds in values:
        mean = statistics.fmean(seeds)
        squares += sum((v - mean) ** 2 for v in seeds)
        dof += len(seeds) - 1
    return (math.sqrt(squares / dof) if dof else 0.0), dof


def _calibrate_noise(
    surrogate: Surrogate,
    train: Sequence[_Example],
    calibrate: Sequence[_Example],
    test: Sequence[_Example],
) -> tuple[float, dict[str, Any]]:
    """The factor that turns the ensemble's spread into one seed's accuracy noise, and how well
    it predicts the test students' noise.

    The spread is smaller on students a member was fit on than on new ones, which are what
    a search asks about; so the factor is measured on held-out students (the calibration
    split's with several seeds): their pooled seed-to-seed std over their mean spread.
    """
    final = surrogate.accuracy_targets[-1]

    def spreads(examples: Sequence[_Example]) -> np.ndarray:
        if not examples:
            return np.zeros(0)
        x = surrogate._features([e.student for e in examples], [e.plan for e in examples])
        return surrogate.predict(x, [final])[final][1]

    repeated = [e for e in calibrate if e.row.seeds >= 2]
    measured, _dof = _pooled_seed_std([e.row.seed_accuracies for e in repeated])
    raw = float(np.mean(spreads(repeated))) if repeated else 0.0
    scale = measured / raw if raw > 0 and measured > 0 else 1.0
    # No student is noisier than nearly every one measured: the 95th percentile of the measured
    # students' seed-to-seed std (the single noisiest, a student whose distillation nearly
    # failed on one seed, would let a search find lucky draws far from the data).
    stds = [
        statistics.stdev(e.row.seed_accuracies) for e in (*train, *calibrate) if e.row.seeds >= 2
    ]
    cap = float(np.quantile(stds, NOISE_CAP_QUANTILE)) if stds else math.inf
    held = [e for e in test if e.row.seeds >= 2]
    held_measured, held_dof = _pooled_seed_std([e.row.seed_accuracies for e in held])
    # The reward's seed noise near the top (the band of the target), as a table computes it.
    everyone = [e for e in (*train, *calibrate) if e.row.seeds >= 2]
    ranked = sorted(
        everyone, key=lambda e: surrogate.reward_of(e.row.mean_accuracy, e.plan), reverse=True
    )
    top = ranked[: max(10, len(ranked) // 5)]
    reward_std, _ = _pooled_seed_std(
        [[surrogate.reward_of(a, e.plan) for a in e.row.seed_accuracies] for e in top]
    )
    return scale, {
        "students": len(repeated),
        "measured_accuracy_std": measured,
        "ensemble_spread": raw,
        "scale": scale,
        "test_students": len(held),
        "test_measured_accuracy_std": held_measured if held_dof else None,
        "test_predicted_accuracy_std": float(np.mean(np.minimum(spreads(held) * scale, cap)))
        if held
        else None,
        "cap": cap,
        "reward_std": reward_std,
    }


# ---- the command line ---------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    from n2n_gym.cli import OneLineParser, fail, program

    parser = OneLineParser(
        prog=program("python -m n2n_gym.surrogate_fit"),
        description="Fit a surrogate on sampled tables, or report on one.",
        epilog="examples: n2n-gym surrogate fit A.json.gz B.json.gz --out S.json.gz | "
        "n2n-gym surrogate show S.json.gz",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    fit = commands.add_parser("fit", help="fit a surrogate on tables of one task")
    fit.add_argument("tables", nargs="+", help="table files (tabulate --sample / --students-from)")
    fit.add_argument("--out", required=True, help="the surrogate file to write (.json.gz)")
    fit.add_argument("--members", type=int, default=5, help="ensemble size (default: 5)")
    fit.add_argument(
        "--holdout",
        type=float,
        default=0.2,
        help="share held out of training: half calibrates the noise, half tests (default: 0.2)",
    )
    fit.add_argument("--seed", type=int, default=0, help="seed (default: 0)")
    show = commands.add_parser("show", help="print a surrogate's validation figures")
    show.add_argument("surrogate", help="the surrogate file")
    args = parser.parse_args(argv)
    if args.command == "show":
        try:
            surrogate = load_surrogate(args.surrogate)
        except SurrogateError as error:
            return fail(str(error))
        _print_report(surrogate)
        return 0
    if args.members < 1:
        return fail(f"--members={args.members} must be at least 1")
    if not 0.0 < args.holdout < 1.0:
        return fail(f"--holdout={args.holdout} must be between 0 and 1")
    out = Path(args.out)
    if out.is_dir():
        return fail(f"--out {out} is a folder; pass a file such as {out / 'surrogate.json.gz'}")
    try:
        _lightgbm()
        tables = [load_table(path) for path in args.tables]
        surrogate = fit_surrogate(
            tables,
            out.name.removesuffix(".gz").removesuffix(".json"),
            members=args.members,
            holdout=args.holdout,
            seed=args.seed,
            progress=lambda note: print(note, file=sys.stderr),
        )
    except TableError as error:
        return fail(str(error))
    surrogate.save(out)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB)")
    _print_report(surrogate)
    return 0


def _print_report(surrogate: Surrogate) -> None:
    from rich.console import Console
    from rich.table import Table as RichTable

    v, n, b = surrogate.validation, surrogate.validation.get("noise", {}), surrogate.build
    out = RichTable(title=f"surrogate {surrogate.name}")
    out.add_column("quantity")
    out.add_column("value", justify="right")
    out.add_row(
        "students",
        f"{v.get('train_students')} to fit, {v.get('calibration_students')} to calibrate the "
        f"noise, {v.get('test_students')} to test",
    )
    out.add_row(
        "fit",
        f"{b.get('members')} members x {b.get('rounds')} rounds, {b.get('fit_seconds', 0):.0f} s",
    )
    for label, key in (("Kendall tau", "kendall_tau"), ("Spearman", "spearman")):
        if key in v:
            out.add_row(
                f"held-out {label} (reward)",
                f"{v[key]:.3f} overall, {v['top10_' + key]:.3f} within the top 10 % "
                f"({v['top10_students']} students)",
            )
    if "accuracy_kendall_tau" in v:
        out.add_row(
            "held-out Kendall tau (accuracy)",
            f"{v['accuracy_kendall_tau']:.3f} (Spearman {v['accuracy_spearman']:.3f})",
        )
    if "accuracy_mae" in v:
        out.add_row(
            "held-out mean |error|",
            f"accuracy {v['accuracy_mae']:.4f}, reward {v['reward_mae']:.4f}",
        )
    if n:
        held = n.get("test_measured_accuracy_std")
        out.add_row(
            "seed noise of accuracy",
            f"measured {n['measured_accuracy_std']:.4f} ({n['students']} students), ensemble "
            f"spread {n['ensemble_spread']:.4f} (x{n['scale']:.2f}, at most {n.get('cap', 0):.4f});"
            " held out: measured "
            + (f"{held:.4f}, predicted {n['test_predicted_accuracy_std']:.4f}" if held else "n/a"),
        )
    target = surrogate.target()
    out.add_row(
        "target (default reward)",
        f"{target.reward:.4f} +/- {target.band:.4f}: {list(target.row.ratios)}",
    )
    Console(width=200 if not sys.stdout.isatty() else None).print(out)


if __name__ == "__main__":
    sys.exit(main())
