"""Is the search worth it? Simple students of the same size as a finished search's, trained as long.

A compression search is worth its cost only if its student beats what needs no search. Given a
finished student (a ``report.json`` of ``evaluate.py`` or of a pipeline), each baseline below is
built at the parameter count nearest the student's and trained with the student's own final
training settings (the same epochs, optimiser, schedule and data), then measured on the test set
as the student was:

``uniform-width``
    the teacher with every shrinkable unit at one common width ratio (the width-multiplier
    network), freshly initialised and distilled;
``magnitude-pruned``
    the teacher pruned by `Torch-Pruning <https://github.com/VainF/Torch-Pruning>`_: in every
    layer the same share of channels goes, those of smallest L1 norm over their coupled group
    (the layer, its BatchNorm, the next layer's inputs; its dependency graph also prunes residual
    sums, which N2N's shrink action leaves whole), the rest keeping the teacher's weights; then
    distilled;
``scratch-labels``
    the searched student's architecture, freshly initialised and trained on the true labels alone
    (cross-entropy, no teacher);
``scratch-distilled``
    the same architecture freshly initialised and distilled: what starting from the teacher's
    weights is worth.

Torch-Pruning is an optional extra (``pip install 'n2n-gym[baselines]'``), needed only for
``magnitude-pruned``.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from rich.table import Table
from torch import nn

from n2n_gym.arch import InvalidArchitecture, NetworkSpec, StudentDescription, unit_rules
from n2n_gym.atomic import write_json_atomic
from n2n_gym.baseline_names import (
    BASELINES,
    BASELINES_FILE,
    MATCHES,
    baselines_file,
    check_baselines,
)
from n2n_gym.distill import DistillConfig
from n2n_gym.finalize import TrainingInterrupted, model_size, points, test_report, train_module
from n2n_gym.runs import REPORT_FILE, RunDirError, read_run_task
from n2n_gym.surgery import build_module, build_student
from n2n_gym.task import Task
from n2n_gym.teachers import Teacher

__all__ = [
    "BASELINES",
    "BASELINES_FILE",
    "MATCHES",
    "BaselineSource",
    "baselines_file",
    "baselines_table",
    "check_baselines",
    "magnitude_pruned",
    "read_baseline_source",
    "run_baselines",
    "uniform_width_student",
]

logger = logging.getLogger(__name__)

_BISECTION_STEPS = 30


@dataclasses.dataclass(frozen=True)
class BaselineSource:
    """The finished student the baselines are measured against, and where it came from."""

    folder: Path
    report: dict[str, Any]
    student: StudentDescription
    config: DistillConfig
    task: Task


def read_baseline_source(folder: str | Path) -> BaselineSource:
    """Read a finished student's ``report.json`` and the search run it names.

    Raises:
        RunDirError: ``folder`` holds no report, or the search run it names is gone.
    """
    folder = Path(folder)
    path = folder / REPORT_FILE
    if not path.is_file():
        raise RunDirError(
            f"{folder} has no {REPORT_FILE}; finish the search first (python evaluate.py RUN_DIR, "
            "or train_agent.py --pipeline), then pass the folder that holds its report"
        )
    report = json.loads(path.read_text())
    for key in ("student", "final_training", "run_dir"):
        if not report.get(key):
            raise RunDirError(f"{path} has no {key!r}; write it again with evaluate.py RUN_DIR")
    # The report names its search run as it was given; a pipeline's stages sit beside it.
    run_dir = Path(report["run_dir"])
    if not run_dir.is_dir() and (folder / run_dir.name).is_dir():
        run_dir = folder / run_dir.name
    return BaselineSource(
        folder=folder,
        report=report,
        student=StudentDescription.from_dict(report["student"]),
        config=DistillConfig.from_dict(report["final_training"]),
        task=read_run_task(run_dir),
    )


def _check_match(match: str) -> None:
    if match not in MATCHES:
        raise ValueError(f"match={match!r}: choose from {', '.join(MATCHES)}")


def _nearest(
    size_of: Callable[[float], int | None], target: int, match: str, *, at_most: bool = False
) -> float:
    """The ratio in (0, 1] whose size (parameters or MACs) is nearest ``target`` (sizes grow
    with it); with ``at_most`` the largest whose size is not above it."""
    low, high = 0.0, 1.0  # size_of(low) <= target < size_of(high), or high is the answer
    for _ in range(_BISECTION_STEPS):
        middle = (low + high) / 2
        size = size_of(middle)
        if size is not None and size <= target:
            low = middle
        else:
            high = middle
    candidates = [r for r in (low, high) if r > 0 and size_of(r) is not None]
    if at_most:
        candidates = [r for r in candidates if size_of(r) <= target]
    if not candidates:
        what = "parameters" if match == "params" else "MACs per image"
        raise InvalidArchitecture(f"no network of this family has about {target:,} {what}")
    return min(candidates, key=lambda r: abs(size_of(r) - target))


def uniform_width_student(
    teacher: NetworkSpec, target: int, match: str = "params", *, at_most: bool = False
) -> StudentDescription:
    """The teacher with every shrinkable unit at the one width ratio whose parameter count (or,
    with ``match="flops"``, MACs per image) is nearest ``target`` (with ``at_most``: the
    largest not above it, for a hard size limit)."""
    _check_match(match)
    shrinkable = [rule.shrinkable for rule in unit_rules(teacher)]

    def describe(ratio: float) -> StudentDescription:
        return StudentDescription(teacher, tuple(ratio if s else 1.0 for s in shrinkable))

    def size_of(ratio: float) -> int | None:
        try:
            return getattr(describe(round(ratio, 4)).plan().spec, match)
        except InvalidArchitecture:
            return None

    ratio = _nearest(size_of, target, match, at_most=at_most)
    if at_most:  # rounding must not cross the limit
        ratio = math.floor(ratio * 10_000) / 10_000
    return describe(round(ratio, 4))


def magnitude_pruned(
    teacher: nn.Module, input_shape: Sequence[int], target: int, match: str = "params"
) -> nn.Module:
    """A copy of ``teacher`` pruned by Torch-Pruning's L1 magnitude to about ``target``
    parameters (or, with ``match="flops"``, MACs per image).

    Every prunable layer loses the same share of its channels (Torch-Pruning's default uniform
    ratio), ranked by the L1 norm of each channel's coupled group; the classifier keeps its
    outputs, and the ratio is found by bisection.
    """
    import torch_pruning as tp

    example = torch.zeros(1, *input_shape)

    def pruned(ratio: float) -> nn.Module:
        module = copy.deepcopy(teacher).cpu().eval().requires_grad_(True)  # traced through autograd
        heads = [m for m in module.modules() if isinstance(m, nn.Linear | nn.Conv2d)][-1:]
        pruner = tp.pruner.MagnitudePruner(
            module,
            example,
            importance=tp.importance.MagnitudeImportance(p=1),
            pruning_ratio=ratio,
            ignored_layers=heads,
        )
        pruner.step()
        return module

    _check_match(match)

    def size_of(keep: float) -> int | None:
        try:
            module = pruned(1.0 - keep)
        except (RuntimeError, ValueError, IndexError):  # nothing left to prune to
            return None
        if match == "params":
            return sum(p.numel() for p in module.parameters())
        return model_size(module, tuple(input_shape))[1]

    keep = _nearest(size_of, target, match)
    return pruned(1.0 - keep)


def _build(
    name: str, source: BaselineSource, teacher: Teacher, match: str
) -> tuple[nn.Module, DistillConfig]:
    target = getattr(source.student.plan().spec, match)
    # The final training's seed also initialises the fresh networks: a comparison over seeds
    # (final_training's "seed") varies both, as it varies the search's student's training.
    seed = source.config.seed
    config = source.config
    if name == "uniform-width":
        description = uniform_width_student(teacher.spec, target, match)
        module = build_module(description.plan().spec, seed)
    elif name == "magnitude-pruned":
        module = magnitude_pruned(teacher.module, teacher.spec.input_shape, target, match)
    else:
        _, module = build_student(
            copy.deepcopy(teacher.module).cpu(), source.student, inherit_weights=False, seed=seed
        )
        if name == "scratch-labels":
            config = dataclasses.replace(config, loss="labels")
    return module.requires_grad_(True), config


def run_baselines(
    source: BaselineSource,
    names: Sequence[str] = BASELINES,
    *,
    match: str = "params",
    device: str | torch.device = "auto",
    on_epoch: Callable[[str, dict[str, float]], None] | None = None,
) -> dict[str, Any]:
    """Build, train and test each baseline; results go to ``baselines.json`` as each finishes.

    Each baseline is sized to the student's parameters (``match="params"``) or to its MACs per
    image (``match="flops"``, written to ``baselines-flops.json``); the scratch baselines are
    the student's own architecture either way. A baseline already in that file (for the same
    student and training settings) is kept, so an interrupted comparison continues where it
    stopped. One that fails is recorded with its error and the others still run.

    Returns:
        ``{"student": {...}, "teacher": {...}, "baselines": {name: {...}}}``: test accuracy,
        parameters, MACs, latency and training time of each.
    """
    _check_match(match)
    path = source.folder / baselines_file(match)
    report = source.report
    identity = {
        "student_key": source.student.key,
        "final_training": source.config.to_dict(),
        "match": match,
    }
    results: dict[str, Any] = {
        **identity,
        "teacher": {
            "test_accuracy": report["teacher_test_accuracy"],
            "params": report["teacher_params"],
            "flops": report["teacher_flops"],
            "latency_ms": report.get("teacher_latency_ms"),
        },
        "student": {key: report[key] for key in ("test_accuracy", "params", "flops", "latency_ms")},
        "baselines": {},
    }
    if path.is_file():
        earlier = json.loads(path.read_text())
        # Files written before sizes could match MACs matched parameters.
        earlier.setdefault("match", "params")
        if all(earlier.get(k) == v for k, v in identity.items()):
            # A failed or cut-short baseline is never a result: it is trained again.
            results["baselines"] = {
                n: r
                for n, r in earlier.get("baselines", {}).items()
                if "error" not in r and "interrupted" not in r
            }
    todo = [n for n in names if n not in results["baselines"]]
    if not todo:
        return results
    teacher = source.task.load_teacher()
    data = source.task.load_data()
    for name in todo:
        logger.info("baseline %s", name)
        try:
            module, config = _build(name, source, teacher, match)
            trained = train_module(
                teacher,
                data,
                module,
                config,
                device=device,
                on_epoch=None if on_epoch is None else lambda entry, n=name: on_epoch(n, entry),
            )
            if trained.interrupted:
                results["baselines"][name] = {
                    "interrupted": {
                        "epochs_done": len(trained.history),
                        "epochs": config.epochs,
                    }
                }
                write_json_atomic(path, results)
                raise TrainingInterrupted(f"baseline {name}", len(trained.history), config.epochs)
            measured = test_report(
                teacher,
                trained.module,
                None,
                data,
                device=device,
                latency_batch=report.get("latency_batch", 64),
            )
            results["baselines"][name] = {
                "test_accuracy": measured.test_accuracy,
                "params": measured.params,
                "flops": measured.flops,
                "latency_ms": measured.latency_ms,
                "val_accuracy": trained.val_accuracy,
                "best_epoch": trained.best_epoch,
                "training_seconds": trained.wall_time,
            }
        except (InvalidArchitecture, RuntimeError, ValueError) as error:
            # one baseline that cannot be built or trained does not cost the others
            logger.warning("baseline %s failed: %s", name, error)
            results["baselines"][name] = {"error": f"{type(error).__name__}: {error}"}
        write_json_atomic(path, results)
    return results


def _rows(results: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [
        ("teacher", results["teacher"]),
        ("the search's student", results["student"]),
        *results["baselines"].items(),
    ]


def baselines_table(results: dict[str, Any]) -> Table:
    """The comparison as a rich table (``n2n_gym.cli.markdown`` turns it into Markdown)."""
    teacher = results["teacher"]
    size = "MACs per image" if results.get("match") == "flops" else "parameter count"
    table = Table(title=f"the search's student against baselines of its {size} (test set)")
    for column in ("", "test accuracy", "vs teacher", "parameters", "MACs / image", "training"):
        table.add_column(column, justify="left" if not column else "right")
    for name, row in _rows(results):
        if "error" in row:
            table.add_row(name, "failed", row["error"], "", "", "")
            continue
        if "interrupted" in row:
            cut = row["interrupted"]
            table.add_row(
                name,
                "interrupted",
                f"after {cut['epochs_done']} of {cut['epochs']} epochs",
                "",
                "",
                "",
            )
            continue
        seconds = row.get("training_seconds")
        table.add_row(
            name,
            f"{100 * row['test_accuracy']:.2f} %",
            ""
            if name == "teacher"
            else points(100 * (row["test_accuracy"] - teacher["test_accuracy"])),
            f"{row['params']:,}",
            f"{row['flops']:,}",
            "" if seconds is None else f"{seconds / 60:.1f} min",
        )
    return table
