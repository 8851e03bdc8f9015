"""Knowledge distillation of a student from precomputed teacher logits: the fast path.

A compression search distils hundreds of students from one teacher on the same images, so the work
that does not depend on the student is done once: the transfer images are picked and put on the
device once, and the teacher's logits for them are computed once (:class:`TeacherTargets`) and
reused by every student. Each step then costs one student forward and backward pass; batches are
index slices of a seeded permutation of tensors already on the device (no ``DataLoader``).

Images and networks use the channels-last layout on every device: cuDNN's tensor-core convolutions
want it, and oneDNN's CPU convolutions ran a student's training step about 1.4x faster with it on a
2-core x86 machine. On CUDA the student trains under bf16 autocast; on CPU everything is fp32 and
seeded, so the same seed gives bitwise the same student and accuracy.
"""

from __future__ import annotations

import copy
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "FIDELITY_PRESETS",
    "DistillConfig",
    "DistillStats",
    "DistillationDiverged",
    "TeacherTargets",
    "accuracy",
    "distill",
    "module_device",
    "predict_logits",
    "prepare_inputs",
    "prepare_module",
    "transfer_indices",
    "transfer_set",
]

logger = logging.getLogger(__name__)

# The fidelity of a reward is plain data (n2n_gym/fidelity.py, importable without torch).
from n2n_gym.fidelity import (  # noqa: E402
    FIDELITY_PRESETS,
    DistillConfig,
)

# How often (in optimiser steps) the loss is checked for NaN/inf. Checking reads the loss back to the
# host, which stalls a CUDA stream, so it is done in intervals rather than every step.
_FINITE_CHECK_EVERY = 25


class DistillationDiverged(RuntimeError):
    """The distillation loss became NaN or infinite (usually a learning rate far too high)."""


@dataclass(frozen=True)
class DistillStats:
    """What one distillation did.

    Attributes:
        steps: optimiser steps taken.
        images: training images processed (steps × batch, the last batch may be smaller).
        first_loss: loss of the first batch.
        final_loss: mean loss over the last epoch.
        wall_time: seconds spent.
    """

    steps: int
    images: int
    first_loss: float
    final_loss: float
    wall_time: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def transfer_indices(num_images: int, transfer_size: int | None, seed: int) -> torch.Tensor:
    """The fixed, seeded subset of training-image indices a distillation uses (sorted, CPU).

    Args:
        num_images: images in the training split.
        transfer_size: how many to use; ``None`` or more than available: all of them.
        seed: seeds the choice.
    """
    if transfer_size is None or transfer_size >= num_images:
        return torch.arange(num_images)
    order = torch.randperm(num_images, generator=torch.Generator().manual_seed(seed))
    return order[:transfer_size].sort().values


def transfer_set(
    x: torch.Tensor, y: torch.Tensor, config: DistillConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """The training images and labels a distillation with ``config`` uses (on their device)."""
    index = transfer_indices(len(x), config.transfer_size, config.seed).to(x.device)
    return x[index], y[index]


def prepare_inputs(x: torch.Tensor, device: str | torch.device) -> torch.Tensor:
    """``x`` on ``device`` in the layout the fast path wants (channels-last for image batches)."""
    x = x.to(torch.device(device), non_blocking=True)
    if x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def prepare_module(module: nn.Module, device: str | torch.device) -> nn.Module:
    """``module`` moved (in place) to ``device`` in the channels-last layout.

    On the CPU a module with a strided 1x1 convolution of fewer than 8 input channels (the
    downsample of a narrowed ResNet block) stays in the standard layout, its inputs made so:
    torch's channels-last backward of such a convolution corrupts memory and kills the process
    (measured with torch 2.14 for 2 to 7 input channels).
    """
    device = torch.device(device)
    module = module.to(device)
    if device.type != "cpu" or not any(map(_channels_last_crashes, module.modules())):
        return module.to(memory_format=torch.channels_last)
    module = module.to(memory_format=torch.contiguous_format)
    if _standard_layout_input not in module._forward_pre_hooks.values():
        module.register_forward_pre_hook(_standard_layout_input)
    return module


def _channels_last_crashes(module: nn.Module) -> bool:
    return (
        isinstance(module, nn.Conv2d)
        and module.kernel_size == (1, 1)
        and module.stride != (1, 1)
        and module.in_channels < 8
    )


def _standard_layout_input(module: nn.Module, args: tuple[torch.Tensor, ...]) -> tuple:
    return (args[0].contiguous(), *args[1:])


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"``: CUDA when available, else CPU; other names are checked, with a fix in the error."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(
            f"device {device!r} is not a device name ({error}); use cpu, cuda or auto"
        ) from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} needs CUDA, which is not available; use cpu or auto")
    return resolved


# Torch's global generator is process-wide: threads that fork and seed it (dropout, initialisation)
# take turns, so each sees only its own seed and the caller's state is restored intact.
_GLOBAL_RNG_LOCK = threading.RLock()


@contextmanager
def seeded_global_rng(seed: int, device: torch.device | None = None) -> Iterator[None]:
    """Run the enclosed code with torch's global generator seeded, then restore it (thread-safe).

    Args:
        seed: the seed for the enclosed code.
        device: a CUDA device whose generator is forked and seeded too.
    """
    devices = [device] if device is not None and device.type == "cuda" else []
    with _GLOBAL_RNG_LOCK, torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def draws_randomness(module: nn.Module) -> bool:
    """Whether training ``module`` draws from torch's global generator (dropout does)."""
    return any(isinstance(layer, nn.modules.dropout._DropoutNd) for layer in module.modules())


@contextmanager
def one_thread() -> Iterator[None]:
    """Run the enclosed torch work on one CPU thread, restoring the thread count afterwards.

    With one thread torch runs ops inline and never starts its OpenMP thread pool (a process
    forked after a started pool deadlocks in its first parallel op), and tiny networks lose
    nothing: their intra-op threads only spin.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def autocast(device: torch.device) -> torch.autocast:
    """bf16 autocast on CUDA; a no-op elsewhere (CPU stays fp32 and deterministic)."""
    return torch.autocast(
        device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"
    )


def predict_logits(module: nn.Module, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """The module's fp32 logits for ``x`` in eval mode, on ``x``'s device.

    Args:
        module: a network on the same device as ``x``.
        x: images, NCHW.
        batch_size: images per forward pass.
    """
    device = x.device
    was_training = module.training
    module.eval()
    try:
        with torch.inference_mode(), autocast(device):
            outputs = [
                module(x[start : start + batch_size]).float()
                for start in range(0, len(x), batch_size)
            ]
    finally:
        module.train(was_training)
    return torch.cat(outputs)


def accuracy(module: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256) -> float:
    """Top-1 accuracy of ``module`` on ``(x, y)`` (a fraction), in eval mode under inference mode.

    Args:
        module: a network on the same device as ``x``.
        x: images, NCHW.
        y: int64 labels.
        batch_size: images per forward pass.
    """
    if len(x) == 0:
        raise ValueError("accuracy of an empty set of images is undefined")
    device = x.device
    was_training = module.training
    module.eval()
    correct = torch.zeros((), dtype=torch.int64, device=device)
    try:
        with torch.inference_mode(), autocast(device):
            for start in range(0, len(x), batch_size):
                logits = module(x[start : start + batch_size])
                correct += (logits.argmax(1) == y[start : start + batch_size]).sum()
    finally:
        module.train(was_training)
    return correct.item() / len(x)


@dataclass(frozen=True, eq=False)
class TeacherTargets:
    """A transfer set and the teacher's logits for it, on one device, computed once.

    Attributes:
        inputs: transfer images (channels-last).
        logits: the teacher's fp32 logits for ``inputs``.
        labels: the true labels (for ``hard_label_weight``).
    """

    inputs: torch.Tensor
    logits: torch.Tensor
    labels: torch.Tensor

    @classmethod
    def compute(
        cls,
        teacher: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        config: DistillConfig,
        device: str | torch.device,
    ) -> TeacherTargets:
        """Pick the transfer subset of ``(x, y)`` for ``config`` and run the teacher over it once.

        Args:
            teacher: the trained teacher (not modified; a device copy is used when needed).
            x: training images (any device).
            y: training labels.
            config: supplies ``transfer_size``, ``seed`` and ``eval_batch_size``.
            device: where the targets will be used.
        """
        device = torch.device(device)
        start = time.perf_counter()
        x, y = transfer_set(x, y, config)
        inputs = prepare_inputs(x, device)
        labels = y.to(device)
        teacher_on_device = teacher if module_device(teacher) == device else None
        if teacher_on_device is None:
            teacher_on_device = prepare_module(copy.deepcopy(teacher), device)
        logits = predict_logits(teacher_on_device, inputs, config.eval_batch_size)
        logger.info(
            "teacher logits for %d transfer images on %s in %.2f s",
            len(inputs),
            device,
            time.perf_counter() - start,
        )
        return cls(inputs=inputs, logits=logits, labels=labels)


def module_device(module: nn.Module) -> torch.device:
    """The device of a module's parameters (CPU for a module without any)."""
    parameter = next(module.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def distill(
    student: nn.Module,
    teacher_logits: torch.Tensor,
    inputs: torch.Tensor,
    config: DistillConfig,
    device: str | torch.device,
    labels: torch.Tensor | None = None,
    on_epoch: Callable[[int, float], None] | None = None,
    on_step: Callable[[int, int], None] | None = None,
) -> DistillStats:
    """Train ``student`` in place to reproduce the teacher's logits on ``inputs``.

    Adam with the config's learning rate and weight decay minimises the mean squared error between
    student and teacher logits (plus ``hard_label_weight`` × cross-entropy with ``labels``; with
    ``config.loss == "labels"``, the cross-entropy with ``labels`` alone). The
    batch order is a seeded permutation per epoch, so on CPU the result is bitwise reproducible.

    Args:
        student: the network to train; it is moved to ``device`` (channels-last).
        teacher_logits: the teacher's logits for ``inputs``, on ``device`` (see
            :class:`TeacherTargets`).
        inputs: transfer images, on ``device``.
        config: epochs, batch size, optimiser and loss settings; ``seed`` seeds the batch order.
        device: where to train.
        labels: true labels of ``inputs``; needed when ``config.hard_label_weight > 0``.
        on_epoch: called after every epoch with the epoch number (1-based) and its mean loss, the
            student in eval mode (e.g. to validate and keep the best weights); it may raise
            ``KeyboardInterrupt`` to stop early.
        on_step: called after every optimiser step with the steps and images so far, the student
            in train mode (e.g. to validate at points of the budget; it must leave the student's
            weights, mode and the global random state as it found them).

    Returns:
        Step counts, losses and time.

    Raises:
        DistillationDiverged: the loss became NaN or infinite.
        ValueError: ``inputs`` and ``teacher_logits`` disagree in length, or labels are missing.
    """
    device = torch.device(device)
    if len(inputs) != len(teacher_logits):
        raise ValueError(
            f"{len(inputs)} transfer images but {len(teacher_logits)} teacher logits; "
            "compute them together with TeacherTargets.compute"
        )
    if (config.hard_label_weight > 0 or config.loss == "labels") and labels is None:
        raise ValueError(
            f"loss {config.loss!r} with hard_label_weight {config.hard_label_weight} needs the "
            "labels of the transfer images"
        )
    start = time.perf_counter()
    student = prepare_module(student, device)
    student.train()
    optimiser = torch.optim.Adam(
        student.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    generator = torch.Generator().manual_seed(config.seed)
    num = len(inputs)
    total_steps = config.epochs * math.ceil(num / config.batch_size)
    scheduler = (
        torch.optim.lr_scheduler.LambdaLR(
            optimiser, lambda step: 0.5 * (1.0 + math.cos(math.pi * step / total_steps))
        )
        if config.lr_schedule == "cosine"
        else None
    )
    steps = images = 0
    first_loss = math.nan
    epoch_loss = torch.zeros((), device=device)
    # Dropout draws from the global generator: fork it so a distillation neither depends on nor
    # disturbs the caller's random state. Students without dropout never touch it, so concurrent
    # distillations of those need not take turns.
    rng = seeded_global_rng(config.seed, device) if draws_randomness(student) else nullcontext()
    with rng:
        for epoch in range(1, config.epochs + 1):
            order = torch.randperm(num, generator=generator).to(device)
            epoch_loss.zero_()
            for begin in range(0, num, config.batch_size):
                batch = order[begin : begin + config.batch_size]
                with autocast(device):
                    output = student(inputs[batch]).float()
                if config.loss == "labels":
                    loss = F.cross_entropy(output, labels[batch])
                else:
                    loss = F.mse_loss(output, teacher_logits[batch])
                if config.hard_label_weight > 0 and config.loss != "labels":
                    loss = loss + config.hard_label_weight * F.cross_entropy(output, labels[batch])
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                if scheduler is not None:
                    scheduler.step()
                epoch_loss += loss.detach()
                steps += 1
                images += len(batch)
                if on_step is not None:
                    on_step(steps, images)
                if steps == 1:
                    first_loss = loss.item()
                    _check_finite(first_loss, steps)
                elif steps % _FINITE_CHECK_EVERY == 0:
                    _check_finite(loss.item(), steps)
            batches = math.ceil(num / config.batch_size)
            final_loss = epoch_loss.item() / batches
            _check_finite(final_loss, steps)
            if on_epoch is not None:
                student.eval()
                on_epoch(epoch, final_loss)
                student.train()
    student.eval()
    return DistillStats(
        steps=steps,
        images=images,
        first_loss=first_loss,
        final_loss=final_loss,
        wall_time=time.perf_counter() - start,
    )


def _check_finite(loss: float, step: int) -> None:
    if not math.isfinite(loss):
        raise DistillationDiverged(
            f"distillation loss became {loss} by step {step}; lower DistillConfig.lr"
        )
