"""Finishing a search: train the chosen student to convergence and report it on the test set.

A reward distils a student briefly; the student a user keeps gets a long distillation over the
whole training split with a cosine learning rate, keeping the weights of the epoch with the best
*validation* accuracy (the test set is touched once, for the report). The report compares teacher
and student on the test set — accuracy, parameters, FLOPs, compression and CPU latency per batch.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import statistics
import time
import weakref
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.table import Table

from n2n_gym.arch import StudentDescription
from n2n_gym.atomic import write_json_atomic
from n2n_gym.data import DatasetSplits
from n2n_gym.distill import (
    DistillConfig,
    TeacherTargets,
    accuracy,
    distill,
    prepare_inputs,
    prepare_module,
    resolve_device,
)
from n2n_gym.export import ExportError, export_student
from n2n_gym.fidelity import FINAL_TRAINING
from n2n_gym.runs import REPORT_FILE, STUDENT_FILE, read_best_student, read_run_task
from n2n_gym.students import save_student
from n2n_gym.surgery import build_student
from n2n_gym.teachers import Teacher, weights_fingerprint

__all__ = [
    "FINAL_TRAINING",
    "FinalTraining",
    "StudentReport",
    "TrainingInterrupted",
    "cpu_latency",
    "finish_run",
    "finished_report",
    "model_size",
    "report_table",
    "test_report",
    "train_final",
    "train_module",
]

logger = logging.getLogger(__name__)


@dataclass
class FinalTraining:
    """The outcome of :func:`train_final`.

    Attributes:
        module: the student with the weights of its best validation epoch, on the CPU, eval mode.
        val_accuracy: that epoch's validation accuracy.
        best_epoch: which epoch it was (1-based).
        history: one dict per finished epoch: ``epoch``, ``loss``, ``val_accuracy``, ``seconds``.
        wall_time: seconds for the whole training.
        config: the distillation settings used.
        interrupted: stopped by Ctrl-C before its last epoch (the module is the best epoch so
            far: a result to keep, never one to compare as if trained fully).
    """

    module: torch.nn.Module
    val_accuracy: float
    best_epoch: int
    history: list[dict[str, float]]
    wall_time: float
    config: DistillConfig
    interrupted: bool = False


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped a final training after what is kept was saved, marked as interrupted.

    Attributes:
        what: what was being trained (for the one line a command prints).
        epochs_done: finished epochs.
        epochs: the epochs it was to train.
        saved: where the cut-short result was written, if anywhere.
    """

    def __init__(self, what: str, epochs_done: int, epochs: int, saved: Path | None = None):
        super().__init__(what)
        self.what, self.epochs_done, self.epochs, self.saved = what, epochs_done, epochs, saved

    def __str__(self) -> str:
        kept = f"; what it had is saved to {self.saved}, marked interrupted" if self.saved else ""
        return (
            f"{self.what}: interrupted after {self.epochs_done} of {self.epochs} epochs{kept}; "
            "rerun the command to train it fully"
        )


def train_final(
    teacher: Teacher,
    data: DatasetSplits,
    student: StudentDescription,
    config: DistillConfig = FINAL_TRAINING,
    *,
    device: str | torch.device = "auto",
    inherit_weights: bool = True,
    seed: int = 0,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
) -> FinalTraining:
    """Distil ``student`` from ``teacher`` for ``config.epochs`` and keep its best epoch.

    Args:
        teacher: the trained teacher.
        data: splits; the student trains on ``train`` (``config.transfer_size`` of it) and is
            validated on ``val`` (``config.eval_size`` of it) after every epoch.
        student: what to build (from the teacher's weights when ``inherit_weights``).
        config: the distillation settings.
        device: where to train; ``"auto"`` picks CUDA when available.
        inherit_weights: start from the teacher's weights where shapes allow.
        seed: seeds re-initialised layers.
        on_epoch: called with each epoch's history entry (for progress bars). Ctrl-C during
            training stops it and keeps the best epoch so far.

    Raises:
        InvalidArchitecture, DistillationDiverged: the student cannot be built or trained.
    """
    start = time.perf_counter()
    _, module = build_student(
        copy.deepcopy(teacher.module).cpu(), student, inherit_weights=inherit_weights, seed=seed
    )
    trained = train_module(teacher, data, module, config, device=device, on_epoch=on_epoch)
    trained.wall_time = time.perf_counter() - start
    return trained


# The last transfer set's teacher logits: the candidates of a selection, the final training and
# the baselines distil from the same teacher on the same images, and a teacher pass over the
# whole training split costs seconds to minutes on a CPU. Weak references: the entry never keeps
# a teacher or a data set alive, and goes (with its device memory) when either does.
_LAST_TARGETS: dict[str, Any] = {}


def _teacher_targets(
    teacher: Teacher,
    x: torch.Tensor,
    y: torch.Tensor,
    config: DistillConfig,
    device: torch.device,
) -> TeacherTargets:
    # The weights' hash, not the object alone: a teacher changed in place is another teacher.
    key = (
        weights_fingerprint(teacher.module),
        config.transfer_size,
        config.seed,
        config.eval_batch_size,
        str(device),
    )
    last = _LAST_TARGETS
    if (
        last.get("key") == key
        and last["teacher"]() is teacher.module
        and last["x"]() is x
        and last["y"]() is y
    ):
        return last["targets"]
    targets = TeacherTargets.compute(teacher.module, x, y, config, device)
    last.clear()
    token = object()
    for owner in (x, teacher.module):
        weakref.finalize(owner, _forget_targets, token)
    last.update(
        token=token,
        key=key,
        teacher=weakref.ref(teacher.module),
        x=weakref.ref(x),
        y=weakref.ref(y),
        targets=targets,
    )
    return targets


def _forget_targets(token: object) -> None:
    if _LAST_TARGETS.get("token") is token:
        _LAST_TARGETS.clear()


def train_module(
    teacher: Teacher,
    data: DatasetSplits,
    module: torch.nn.Module,
    config: DistillConfig = FINAL_TRAINING,
    *,
    device: str | torch.device = "auto",
    on_epoch: Callable[[dict[str, float]], None] | None = None,
) -> FinalTraining:
    """:func:`train_final` for a network already built (a baseline, a pruned teacher, ...).

    ``module`` is trained in place; the best validation epoch's weights are loaded back into it.
    """
    device = resolve_device(device)
    start = time.perf_counter()
    x_train, y_train = data.split("train")
    targets = _teacher_targets(teacher, x_train, y_train, config, device)
    x_val, y_val = data.split("val")
    size = config.eval_size or len(y_val)
    x_val, y_val = prepare_inputs(x_val[:size], device), y_val[:size].to(device)
    history: list[dict[str, float]] = []
    best: dict[str, Any] = {"accuracy": -1.0, "epoch": 0, "state": None}
    epoch_start = time.perf_counter()

    def after_epoch(epoch: int, loss: float) -> None:
        nonlocal epoch_start
        measured = accuracy(module, x_val, y_val, config.eval_batch_size)
        entry = {
            "epoch": epoch,
            "loss": loss,
            "val_accuracy": measured,
            "seconds": time.perf_counter() - epoch_start,
        }
        history.append(entry)
        logger.info("epoch %d: loss %.4g, validation accuracy %.4f", epoch, loss, measured)
        if measured > best["accuracy"]:
            best.update(accuracy=measured, epoch=epoch, state=copy.deepcopy(module.state_dict()))
        if on_epoch is not None:
            on_epoch(entry)
        epoch_start = time.perf_counter()

    module = prepare_module(module, device)
    try:
        distill(
            module,
            targets.logits,
            targets.inputs,
            config,
            device,
            labels=targets.labels,
            on_epoch=after_epoch,
        )
    except KeyboardInterrupt:
        if best["state"] is None:
            raise
        interrupted = True
    else:
        interrupted = False
    module.load_state_dict(best["state"])
    return FinalTraining(
        module=module.cpu().eval(),
        val_accuracy=best["accuracy"],
        best_epoch=best["epoch"],
        history=history,
        wall_time=time.perf_counter() - start,
        config=config,
        interrupted=interrupted,
    )


def model_size(module: torch.nn.Module, input_shape: tuple[int, ...]) -> tuple[int, int]:
    """Parameters and MACs per image of any network, counted as :class:`NetworkSpec` counts them.

    MACs are those of the convolutions and linear layers (without biases), measured by one
    forward pass of a single image, so a network that is not a description (a pruned teacher)
    is counted the same way as one that is.
    """
    macs = 0

    def count(layer: torch.nn.Module, _: Any, output: torch.Tensor) -> None:
        nonlocal macs
        if isinstance(layer, torch.nn.Conv2d):
            per_output = layer.in_channels // layer.groups * math.prod(layer.kernel_size)
            macs += output[0].numel() * per_output
        elif isinstance(layer, torch.nn.Linear):
            macs += layer.in_features * layer.out_features

    module = copy.deepcopy(module).cpu().eval()
    handles = [
        layer.register_forward_hook(count)
        for layer in module.modules()
        if isinstance(layer, torch.nn.Conv2d | torch.nn.Linear)
    ]
    with torch.inference_mode():
        module(torch.zeros(1, *input_shape))
    for handle in handles:
        handle.remove()
    return sum(p.numel() for p in module.parameters()), macs


def cpu_latency(
    module: torch.nn.Module,
    input_shape: tuple[int, ...],
    batch_size: int = 64,
    repeats: int = 20,
) -> float:
    """Median seconds for one forward pass of a ``batch_size`` batch on the CPU (after warm-up)."""
    module = prepare_module(copy.deepcopy(module), "cpu").eval()
    x = prepare_inputs(torch.randn(batch_size, *input_shape), "cpu")
    times = []
    with torch.inference_mode():
        for index in range(repeats + 3):
            begin = time.perf_counter()
            module(x)
            if index >= 3:  # the first passes pick kernels and allocate
                times.append(time.perf_counter() - begin)
    return statistics.median(times)


@dataclass
class StudentReport:
    """Teacher versus finished student on the test set (see :func:`test_report`)."""

    test_accuracy: float
    teacher_test_accuracy: float
    params: int
    teacher_params: int
    flops: int
    teacher_flops: int
    compression: float
    accuracy_drop_pp: float
    latency_ms: float
    teacher_latency_ms: float
    latency_batch: int
    test_images: int
    student: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(data.pop("extra"))
        return data


# The teacher's test accuracy and CPU latency by (its weights, the test split, device, batch):
# a finish and its baselines report several students against one teacher, measured once.
_TEACHER_MEASURES: dict[tuple[str, str, str, int], tuple[float, float]] = {}


def _split_digest(data: DatasetSplits, x: torch.Tensor, y: torch.Tensor) -> str:
    """A digest of the test split: its labels, shape, normalisation and a sample of its pixels."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(repr((data.name, tuple(x.shape), data.mean, data.std)).encode())
    digest.update(y.cpu().contiguous().numpy().tobytes())
    step = max(1, x.numel() // 65_536)
    digest.update(x.detach().cpu().reshape(-1)[::step].contiguous().numpy().tobytes())
    return digest.hexdigest()


def test_report(
    teacher: Teacher,
    module: torch.nn.Module,
    student: StudentDescription | None,
    data: DatasetSplits,
    *,
    device: str | torch.device = "auto",
    latency_batch: int = 64,
    **extra: Any,
) -> StudentReport:
    """Measure teacher and student on the test split and time both on the CPU.

    Args:
        teacher: the teacher.
        module: the finished student (built from ``student``).
        student: its description; ``None`` for a network that has none (its size is counted by
            :func:`model_size`).
        data: the splits; only ``test`` is read.
        device: where accuracies are measured.
        latency_batch: images per batch for the CPU latency.
        extra: more facts to put in the report (e.g. the run directory, training history).
    """
    device = resolve_device(device)
    x, y = data.split("test")
    shape = tuple(teacher.spec.input_shape)
    key = (
        weights_fingerprint(teacher.module),
        _split_digest(data, x, y),
        str(device),
        latency_batch,
    )
    x = prepare_inputs(x, device)
    y = y.to(device)
    if key not in _TEACHER_MEASURES:
        teacher_module = prepare_module(copy.deepcopy(teacher.module), device).eval()
        _TEACHER_MEASURES[key] = (
            accuracy(teacher_module, x, y),
            1000.0 * cpu_latency(teacher.module, shape, latency_batch),
        )
    teacher_accuracy, teacher_latency_ms = _TEACHER_MEASURES[key]
    student_module = prepare_module(copy.deepcopy(module), device).eval()
    student_accuracy = accuracy(student_module, x, y)
    if student is None:
        params, flops = model_size(module, shape)
    else:
        spec = student.plan().spec
        params, flops = spec.params, spec.flops
    return StudentReport(
        test_accuracy=student_accuracy,
        teacher_test_accuracy=teacher_accuracy,
        params=params,
        teacher_params=teacher.spec.params,
        flops=flops,
        teacher_flops=teacher.spec.flops,
        compression=teacher.spec.params / params,
        accuracy_drop_pp=100.0 * (teacher_accuracy - student_accuracy),
        latency_ms=1000.0 * cpu_latency(module, shape, latency_batch),
        teacher_latency_ms=teacher_latency_ms,
        latency_batch=latency_batch,
        test_images=len(y),
        student=student.to_dict() if student is not None else {},
        extra=extra,
    )


def finished_report(
    out_dir: str | Path, student: StudentDescription, config: DistillConfig
) -> dict[str, Any] | None:
    """The report in ``out_dir`` if it finished ``student`` with ``config`` to the end and its
    student file is there (a resumed pipeline keeps it); ``None`` otherwise."""
    out_dir = Path(out_dir)
    path = out_dir / REPORT_FILE
    if not path.is_file() or not (out_dir / STUDENT_FILE).is_file():
        return None
    report = json.loads(path.read_text())
    wanted = json.loads(json.dumps({"student": student.to_dict(), "final": config.to_dict()}))
    same = report.get("student") == wanted["student"]
    same = same and report.get("final_training") == wanted["final"]
    return report if same and not report.get("interrupted") else None


def finish_run(
    run_dir: str | Path,
    *,
    student: StudentDescription | None = None,
    config: DistillConfig = FINAL_TRAINING,
    device: str | torch.device = "auto",
    out_dir: str | Path | None = None,
    latency_batch: int = 64,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
) -> tuple[StudentReport, Path]:
    """Train a search's student fully, report it on the test set and save it.

    Args:
        run_dir: a run directory of ``train_agent.py`` (its teacher, data and settings are used).
        student: what to finish; default the run's best student.
        config: the final distillation.
        device: where to train and measure accuracy.
        out_dir: where ``student.pt`` and ``report.json`` go; default ``run_dir``.
        latency_batch: images per batch for the CPU latency.
        on_epoch: called with each epoch's history entry.

    Returns:
        The report and the saved student file.

    Raises:
        RunDirError: ``run_dir`` is not a finished-enough run directory.
    """
    run_dir = Path(run_dir)
    task = read_run_task(run_dir)
    if student is None:
        student, _ = read_best_student(run_dir)
    teacher = task.load_teacher()
    data = task.load_data()
    trained = train_final(
        teacher,
        data,
        student,
        config,
        device=device,
        inherit_weights=task.inherit_weights,
        seed=task.eval_seed,
        on_epoch=on_epoch,
    )
    report = test_report(
        teacher,
        trained.module,
        student,
        data,
        device=device,
        latency_batch=latency_batch,
        run_dir=str(run_dir),
        val_accuracy=trained.val_accuracy,
        best_epoch=trained.best_epoch,
        training_seconds=trained.wall_time,
        history=trained.history,
        final_training=config.to_dict(),
    )
    out_dir = Path(out_dir or run_dir)
    facts = {k: v for k, v in report.to_dict().items() if k not in ("student", "history")}
    path = save_student(out_dir / STUDENT_FILE, trained.module, student, facts)
    # Files that load without n2n_gym; a failed export does not cost the trained student.
    try:
        exports = export_student(trained.module, student.teacher.input_shape, out_dir)
    except ExportError as error:
        exports = error.written
        logger.warning("the student was saved to %s; not every export worked: %s", path, error)
    report.extra["exports"] = {kind: str(p) for kind, p in exports.items()}
    # What an exported model expects: (pixel / 255 - mean) / std per channel, this input shape.
    report.extra["input"] = {
        "shape": list(student.teacher.input_shape),
        "mean": list(data.mean),
        "std": list(data.std),
    }
    if trained.interrupted:
        report.extra["interrupted"] = {"epochs_done": len(trained.history), "epochs": config.epochs}
    write_json_atomic(out_dir / REPORT_FILE, report.to_dict())
    logger.info("saved %s and %s", path, out_dir / REPORT_FILE)
    if trained.interrupted:
        raise TrainingInterrupted("final training", len(trained.history), config.epochs, path)
    return report, path


def points(delta: float) -> str:
    """An accuracy difference in percentage points as people read it: ``−0.41 points``."""
    if round(delta, 2) == 0:
        return "0.00 points"
    return f"{'+' if delta > 0 else '−'}{abs(delta):.2f} points"


def report_table(report: StudentReport, path: Path | None = None) -> Table:
    """The report as a table for the terminal (``path``: where the student was saved)."""
    table = Table(title=f"teacher vs finished student ({report.test_images:,} test images)")
    for column in ("", "teacher", "student"):
        table.add_column(column, justify="right")
    table.add_row(
        "test accuracy", f"{report.teacher_test_accuracy:.4f}", f"{report.test_accuracy:.4f}"
    )
    table.add_row("parameters", f"{report.teacher_params:,}", f"{report.params:,}")
    table.add_row("FLOPs (MACs/image)", f"{report.teacher_flops:,}", f"{report.flops:,}")
    table.add_row("compression", "1x", f"{report.compression:.2f}x")
    table.add_row(
        f"CPU latency / batch of {report.latency_batch}",
        f"{report.teacher_latency_ms:.2f} ms",
        f"{report.latency_ms:.2f} ms",
    )
    caption = (
        f"test accuracy {points(-report.accuracy_drop_pp)} against the teacher, "
        f"{report.compression:.1f}x fewer parameters"
    )
    if path is not None:
        caption += f"; saved to {path} (n2n_gym.students.load_student)"
    exports = report.extra.get("exports", {})
    if exports:
        caption += "; exported to " + ", ".join(exports.values())
    table.caption = caption
    return table
