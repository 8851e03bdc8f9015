"""Training zoo teachers with plain supervised learning, resumable from per-epoch checkpoints.

:func:`train_teacher` writes a checkpoint that :func:`~n2n_gym.teachers.load_teacher` reads back,
plus a JSON summary next to it (:func:`sidecar_path`). The validation accuracy is measured on the
split :func:`n2n_gym.data.load_dataset` holds out of the training set with its default seed, which
is also the split the teacher was not trained on.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from n2n_gym.arch import NetworkSpec
from n2n_gym.atomic import atomic_write
from n2n_gym.data import (
    DATASETS,
    IMAGE_FOLDER,
    DatasetSplits,
    available_datasets,
    canonical_dataset,
    default_val_size,
    load_dataset,
)
from n2n_gym.distill import accuracy, autocast, prepare_inputs
from n2n_gym.surgery import SpecNetwork, build_module
from n2n_gym.teachers.errors import TeacherError
from n2n_gym.teachers.loading import (
    Teacher,
    _finish,
    _module_from_checkpoint,
    _read_torch_file,
    _resolve_device,
    weights_fingerprint,
)
from n2n_gym.teachers.zoo import _check_arch, zoo_spec

if TYPE_CHECKING:
    from n2n_gym.image_folder import ImageFolderConfig

__all__ = ["CHECKPOINT_FORMAT", "sidecar_path", "train_teacher"]

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "n2n_gym.teacher/1"
# load_dataset's default seed: teachers are trained on the train split it leaves, so their
# validation accuracy is measured on images they never saw, the same ones the environments use.
_SPLIT_SEED = 0
# Digits change meaning when mirrored; these data sets do not.
_FLIP_DATASETS = frozenset({"cifar10", "cifar100", "fashion-mnist"})


def _settings(**values: Any) -> dict[str, Any]:
    return dict(sorted(values.items()))


def sidecar_path(checkpoint: str | os.PathLike[str]) -> Path:
    """The JSON summary written next to a checkpoint (``teacher.pt`` -> ``teacher.json``)."""
    return Path(checkpoint).with_suffix(".json")


def _lr_at(step: int, total: int, peak: float) -> float:
    """One-cycle schedule: linear warm-up over 15 % of the steps, then cosine decay to ~0."""
    warmup = max(1, round(0.15 * total))
    if step < warmup:
        return peak * (0.1 + 0.9 * step / warmup)
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.002 + 0.998 * 0.5 * (1.0 + math.cos(math.pi * progress)))


def _augment(x: torch.Tensor, generator: torch.Generator, shift: int, flip: bool) -> torch.Tensor:
    """Random translations by up to ``shift`` pixels (edge-replicated) and optional mirroring."""
    n, _, h, w = x.shape
    if shift > 0:
        padded = F.pad(x, (shift, shift, shift, shift), mode="replicate")
        offsets = torch.randint(0, 2 * shift + 1, (2, n), generator=generator).to(x.device)
        rows = (offsets[0, :, None] + torch.arange(h, device=x.device))[:, :, None]
        cols = (offsets[1, :, None] + torch.arange(w, device=x.device))[:, None, :]
        batch = torch.arange(n, device=x.device)[:, None, None]
        # Advanced indexing moves the channel axis last: (N, H, W, C) -> NCHW.
        x = padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)
    if flip:
        mirrored = (torch.rand(n, generator=generator) < 0.5).to(x.device)
        x = torch.where(mirrored[:, None, None, None], x.flip(3), x)
    return x


def _check_hyperparameters(
    epochs: int, batch_size: int, lr: float, weight_decay: float, label_smoothing: float
) -> None:
    for name, value in (("epochs", epochs), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise TeacherError(f"{name}={value!r} must be a positive integer")
    if not lr > 0 or not math.isfinite(lr):
        raise TeacherError(f"lr={lr!r} must be a positive number")
    if not weight_decay >= 0 or not math.isfinite(weight_decay):
        raise TeacherError(f"weight_decay={weight_decay!r} must be zero or positive")
    if not 0.0 <= label_smoothing < 1.0:
        raise TeacherError(f"label_smoothing={label_smoothing!r} must be in [0, 1)")


def train_teacher(
    arch: str,
    dataset: str = "mnist",
    *,
    out: str | os.PathLike[str],
    epochs: int = 3,
    batch_size: int = 128,
    lr: float = 0.1,
    weight_decay: float = 5e-4,
    label_smoothing: float = 0.0,
    augment: bool = True,
    seed: int = 0,
    device: str | torch.device = "auto",
    data_dir: str | os.PathLike[str] | None = None,
    download: bool = False,
    val_size: int | None = None,
    train_limit: int | None = None,
    resume: bool = False,
    progress: bool = True,
    splits: DatasetSplits | None = None,
    image_folder: ImageFolderConfig | dict[str, Any] | None = None,
) -> Teacher:
    """Train zoo network ``arch`` on ``dataset`` with plain supervised learning.

    SGD with Nesterov momentum follows a one-cycle schedule (linear warm-up, cosine decay) over
    all steps; weight decay applies to conv and linear weights only. Images stay on the device as
    whole tensors and are shuffled and augmented there (random shifts of 1/14 of the image side,
    mirroring for natural images). On CUDA the network runs in channels-last layout under bf16
    autocast. The same seed gives the same run on CPU, resumed or not.

    After every epoch the checkpoint ``out`` (and ``out`` with suffix ``.json``, a summary for
    people) is replaced atomically; the finished checkpoint keeps only weights and metadata.

    Args:
        arch: a zoo name (:data:`~n2n_gym.teachers.ZOO`).
        dataset: a data set name from :func:`n2n_gym.data.available_datasets`.
        out: checkpoint path to write.
        epochs: passes over the training split.
        batch_size: images per optimiser step.
        lr: peak learning rate.
        weight_decay: L2 weight decay of conv and linear weights.
        label_smoothing: cross-entropy label smoothing.
        augment: random shifts (and flips for natural images) of the training images.
        seed: seeds initialisation, batch order, augmentation and dropout.
        device: ``"cpu"``, ``"cuda"`` or ``"auto"`` (CUDA when available).
        data_dir: folder holding the data set (see :func:`n2n_gym.data.load_dataset`).
        download: fetch the data set into ``data_dir`` if missing.
        val_size: training images held out for validation (with ``load_dataset``'s default
            split seed, so the environments validate on the same held-out images); ``None``:
            :func:`~n2n_gym.data.default_val_size`, as the environments' default.
        train_limit: train on at most this many images (quick experiments, tests).
        resume: continue from the checkpoint at ``out`` if one exists; its settings must match.
        progress: show progress per epoch (a bar on a terminal, a line every 30 s elsewhere).
        image_folder: for ``dataset="imagefolder"``: image size, channels and normalisation
            (see :func:`n2n_gym.data.load_dataset`); the normalisation is recorded in the
            checkpoint, where searches on the folder find it.
        splits: already loaded data (used instead of loading ``dataset``; its ``name`` must be
            ``dataset``).

    Returns:
        The trained teacher (eval mode, frozen), with ``source`` the checkpoint path.

    Raises:
        TeacherError: unknown ``arch``, bad hyperparameters or device, or a checkpoint to resume
            from that was written with different settings.
        DataError: the data set cannot be loaded.
    """
    from n2n_gym.cli import progress as progress_bar

    _check_arch(arch)
    _check_hyperparameters(epochs, batch_size, lr, weight_decay, label_smoothing)
    dataset = canonical_dataset(dataset)
    if dataset not in available_datasets() and splits is None:
        raise TeacherError(
            f"unknown dataset {dataset!r}; available: {', '.join(available_datasets())}"
        )
    if splits is not None and splits.name != dataset:
        raise TeacherError(f"splits hold {splits.name!r} but dataset={dataset!r} was passed")
    out = Path(out).expanduser()
    if out.is_dir():
        raise TeacherError(f"out={str(out)!r} is a folder; pass a file path such as teacher.pt")
    run_device = _resolve_device(device)
    if val_size is None and splits is None:
        val_size = default_val_size(dataset, _train_size(dataset, data_dir))
    settings = _settings(
        arch=arch,
        dataset=dataset,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        weight_decay=weight_decay,
        label_smoothing=label_smoothing,
        augment=augment,
        seed=seed,
        val_size=val_size if splits is None else len(splits.val_y),
        train_limit=train_limit,
        split_seed=_SPLIT_SEED,
        optimizer="sgd-nesterov-0.9",
        schedule="one-cycle-cosine",
    )
    previous = _resume_state(out, settings) if resume else None
    if previous is not None and previous.get("complete"):
        logger.info("%s already holds the finished %d-epoch run; nothing to train", out, epochs)
        return _teacher_from_file(out, previous, run_device)

    if splits is None:
        splits = load_dataset(
            dataset,
            data_dir,
            val_size=val_size,
            seed=_SPLIT_SEED,
            download=download,
            device=run_device,
            train_limit=train_limit,
            image_folder=image_folder,
        )
    else:
        splits = splits.to(run_device)
    spec = zoo_spec(arch, splits.input_shape, splits.num_classes)
    torch.manual_seed(seed)
    module = build_module(spec, seed).to(run_device)
    if run_device.type == "cuda":
        module = module.to(memory_format=torch.channels_last)
        torch.backends.cudnn.benchmark = True
    decay = [p for p in module.parameters() if p.ndim > 1]
    no_decay = [p for p in module.parameters() if p.ndim <= 1]
    optimizer = torch.optim.SGD(
        [
            {"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=lr,
        momentum=0.9,
        nesterov=True,
    )
    history: list[dict[str, Any]] = []
    start_epoch, elapsed = 0, 0.0
    if previous is not None:
        module.load_state_dict(previous["state_dict"])
        optimizer.load_state_dict(previous["optimizer_state"])
        start_epoch, elapsed = int(previous["epoch"]), float(previous["train_seconds"])
        history = list(previous["history"])
        logger.info("resuming %s from epoch %d/%d", out, start_epoch, epochs)
    elif out.exists():
        logger.warning("overwriting %s (pass resume=True to continue it instead)", out)

    train_x, train_y = splits.split("train")
    num_train = len(train_y)
    steps_per_epoch = max(1, num_train // batch_size)  # the ragged last batch is dropped
    total_steps = steps_per_epoch * epochs
    shift = max(1, round(splits.input_shape[-1] / 14)) if augment else 0
    flip = augment and dataset in _FLIP_DATASETS
    logger.info(
        "training %s (%d parameters) on %s: %d images, %d epochs x %d steps, batch %d, on %s",
        arch,
        spec.params,
        dataset,
        num_train,
        epochs,
        steps_per_epoch,
        batch_size,
        run_device,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    val_acc = history[-1]["val_accuracy"] if history else None
    for epoch in range(start_epoch, epochs):
        started = time.perf_counter()
        # Seeding per epoch makes a resumed run draw the same batches and shifts as an unbroken one.
        generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        torch.manual_seed(seed * 1_000_003 + epoch)  # dropout
        order = torch.randperm(num_train, generator=generator).to(run_device)
        module.train()
        loss_sum = torch.zeros((), device=run_device)
        correct = torch.zeros((), dtype=torch.int64, device=run_device)
        seen = 0
        # A bar on a terminal, a plain line every 30 s in a log or a pipe.
        bar = (
            progress_bar(steps_per_epoch, f"epoch {epoch + 1}/{epochs}", "batch")
            if progress
            else None
        )
        for step in range(steps_per_epoch):
            for group in optimizer.param_groups:
                group["lr"] = _lr_at(epoch * steps_per_epoch + step, total_steps, lr)
            index = order[step * batch_size : (step + 1) * batch_size]
            x = prepare_inputs(_augment(train_x[index], generator, shift, flip), run_device)
            y = train_y[index]
            with autocast(run_device):
                logits = module(x)
            loss = F.cross_entropy(logits.float(), y, label_smoothing=label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach() * len(y)
            correct += (logits.argmax(1) == y).sum()
            seen += len(y)
            # Reading values back stalls a CUDA stream: refresh the bar only now and then.
            if bar is not None:
                bar.update(1)
                if step % 20 == 0 or step == steps_per_epoch - 1:
                    bar.set_postfix(
                        loss=f"{loss_sum.item() / seen:.4f}", acc=f"{correct.item() / seen:.4f}"
                    )
        if bar is not None:
            bar.close()
        if not math.isfinite(loss_sum.item()):
            raise TeacherError(
                f"training {arch} diverged (loss is {loss_sum.item()}) in epoch {epoch + 1}; "
                f"lower lr (now {lr})"
            )
        val_acc = accuracy(module, *splits.split("val"))
        elapsed += time.perf_counter() - started
        history.append(
            {
                "epoch": epoch + 1,
                "train_loss": loss_sum.item() / seen,
                "train_accuracy": correct.item() / seen,
                "val_accuracy": val_acc,
                "seconds": time.perf_counter() - started,
            }
        )
        logger.info(
            "epoch %d/%d: train loss %.4f, train acc %.4f, val acc %.4f (%.0f s)",
            epoch + 1,
            epochs,
            history[-1]["train_loss"],
            history[-1]["train_accuracy"],
            val_acc,
            history[-1]["seconds"],
        )
        if epoch + 1 < epochs:
            _save_checkpoint(
                out,
                module,
                spec,
                settings,
                history,
                val_acc,
                None,
                elapsed,
                optimizer,
                run_device,
                splits,
            )

    test_acc = accuracy(module, *splits.split("test"))
    logger.info(
        "%s on %s: val acc %.4f, test acc %.4f after %d epochs (%.0f s of training)",
        arch,
        dataset,
        val_acc,
        test_acc,
        epochs,
        elapsed,
    )
    _save_checkpoint(
        out, module, spec, settings, history, val_acc, test_acc, elapsed, None, run_device, splits
    )
    return _finish(module, arch, dataset, val_acc, test_acc, str(out), run_device)


def _train_size(dataset: str, data_dir: str | os.PathLike[str] | None) -> int:
    if dataset == IMAGE_FOLDER:
        from n2n_gym.image_folder import scan_folder

        return len(scan_folder(data_dir).train)
    return DATASETS[dataset].train_size


def _resume_state(out: Path, settings: dict[str, Any]) -> dict[str, Any] | None:
    if not out.exists():
        logger.info("no checkpoint at %s to resume; starting from scratch", out)
        return None
    content = _read_torch_file(out, str(out), allow_pickle=False)
    if not isinstance(content, Mapping) or content.get("format") != CHECKPOINT_FORMAT:
        raise TeacherError(
            f"{str(out)!r} is not a training checkpoint of this library, so it cannot be resumed; "
            "pass another --out or start without --resume"
        )
    recorded = content.get("settings", {})
    different = [
        f"{key}={recorded.get(key)!r} there, {value!r} now"
        for key, value in settings.items()
        if recorded.get(key) != value
    ]
    if different:
        raise TeacherError(
            f"cannot resume {str(out)!r}: it was trained with other settings ({'; '.join(different)}); "
            "pass the same settings, or start again without --resume"
        )
    return dict(content)


def _save_checkpoint(
    out: Path,
    module: SpecNetwork,
    spec: NetworkSpec,
    settings: dict[str, Any],
    history: list[dict[str, Any]],
    val_acc: float | None,
    test_acc: float | None,
    elapsed: float,
    optimizer: torch.optim.Optimizer | None,
    device: torch.device,
    splits: DatasetSplits,
) -> None:
    complete = optimizer is None
    # Plain float32 NCHW tensors on the CPU: the file loads anywhere and fingerprints match.
    state_dict = {
        key: value.detach().cpu().contiguous() for key, value in module.state_dict().items()
    }
    content: dict[str, Any] = {
        "format": CHECKPOINT_FORMAT,
        "arch": settings["arch"],
        "dataset": settings["dataset"],
        "spec": spec.to_dict(),
        "state_dict": state_dict,
        "val_accuracy": val_acc,
        "test_accuracy": test_acc,
        "epoch": len(history),
        "epochs": settings["epochs"],
        "complete": complete,
        "settings": settings,
        "history": history,
        "params": spec.params,
        "train_seconds": elapsed,
        "device": str(device),
        "torch_version": str(torch.__version__),
        # What the images were normalised with: a search on an image folder reuses it.
        "normalisation": {"mean": list(splits.mean), "std": list(splits.std)},
    }
    if not complete:
        content["optimizer_state"] = optimizer.state_dict()  # type: ignore[union-attr]
    atomic_write(out, lambda tmp: torch.save(content, tmp))
    summary = {
        key: value for key, value in content.items() if key not in ("state_dict", "optimizer_state")
    }
    summary["checkpoint"] = out.name
    summary["fingerprint"] = _fingerprint_of(spec, state_dict)
    atomic_write(
        sidecar_path(out),
        lambda tmp: tmp.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n"),
    )


def _fingerprint_of(spec: NetworkSpec, state_dict: Mapping[str, torch.Tensor]) -> str:
    module = build_module(spec)
    module.load_state_dict(state_dict)
    return weights_fingerprint(module)


def _teacher_from_file(out: Path, content: Mapping[str, Any], device: torch.device) -> Teacher:
    module, arch = _module_from_checkpoint(content, str(out), None)
    return _finish(
        module,
        arch,
        str(content["dataset"]),
        content.get("val_accuracy"),
        content.get("test_accuracy"),
        str(out),
        device,
    )
