"""Teachers: the zoo of teacher architectures, training them, and loading trained ones.

The zoo maps a name to a :class:`~n2n_gym.arch.NetworkSpec` builder. :func:`train_teacher` (and its
command line, ``python -m n2n_gym.teachers train NAME --dataset D``) trains a zoo network with plain
supervised learning and writes a checkpoint that :func:`load_teacher` reads back. The default MNIST
teacher ships with the package (``n2n_gym/weights/small_vgg_mnist.pt``); users may also bring a
state dict plus a zoo name, or (opt-in, since unpickling runs code) a whole pickled ``nn.Module``.

Checkpoints are plain dicts of tensors and Python values, so they load with
``torch.load(weights_only=True)``. Accuracies are fractions in [0, 1]; the validation accuracy is
measured on the split :func:`n2n_gym.data.load_dataset` holds out of the training set with its
default seed, which is also the split the teacher was not trained on.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import pickle
import sys
import time
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.vgg import cfgs as VGG_CONFIGS
from tqdm.auto import tqdm

from n2n_gym.arch import InvalidArchitecture, Layer, NetworkSpec
from n2n_gym.atomic import atomic_write
from n2n_gym.data import DATASETS, DataError, DatasetSplits, available_datasets, load_dataset
from n2n_gym.distill import accuracy, autocast, prepare_inputs, resolve_device
from n2n_gym.surgery import SpecNetwork, UnsupportedModule, build_module, convert_module

__all__ = [
    "BUNDLED_TEACHERS",
    "CHECKPOINT_FORMAT",
    "ZOO",
    "Teacher",
    "TeacherError",
    "load_teacher",
    "main",
    "sidecar_path",
    "train_teacher",
    "weights_fingerprint",
    "zoo_spec",
]

logger = logging.getLogger(__name__)

InputShape = tuple[int, int, int]

CHECKPOINT_FORMAT = "n2n_gym.teacher/1"
# Data set -> bundled weights file stem under n2n_gym/weights/ (plus its .json sidecar).
BUNDLED_TEACHERS: dict[str, str] = {"mnist": "small_vgg_mnist"}
# load_dataset's default seed: teachers are trained on the train split it leaves, so their
# validation accuracy is measured on images they never saw, the same ones the environments use.
_SPLIT_SEED = 0
# Digits change meaning when mirrored; these data sets do not.
_FLIP_DATASETS = frozenset({"cifar10", "cifar100", "fashion-mnist"})


class TeacherError(ValueError):
    """A teacher problem the user can fix: unknown architecture, missing or unsuitable file, bad settings."""


# ---- the zoo ------------------------------------------------------------------------------------


def _conv(in_channels: int, out_channels: int, kernel: int = 3, stride: int = 1) -> Layer:
    return Layer(
        "conv",
        in_channels,
        out_channels,
        kernel,
        stride,
        kernel // 2,
        batch_norm=True,
        activation="relu",
    )


def small_vgg(input_shape: InputShape = (1, 28, 28), num_classes: int = 10) -> NetworkSpec:
    """The default teacher: a VGG-style CNN for small grey images, cheap enough to distil on a CPU.

    Nine decision units (seven conv groups, two linear layers); it pools early so one student
    trains in seconds on two cores.
    """
    channels = input_shape[0]
    layers = [
        _conv(channels, 16),
        Layer("maxpool", kernel=2, stride=2),
        _conv(16, 32),
        _conv(32, 32),
        _conv(32, 32),
        Layer("maxpool", kernel=2, stride=2),
        _conv(32, 64),
        _conv(64, 64),
        _conv(64, 64),
        Layer("global_avgpool"),
        Layer("linear", 64, 64, activation="relu"),
        Layer("linear", 64, num_classes),
    ]
    return NetworkSpec(input_shape, num_classes, tuple(layers), name="small_vgg")


def vgg(config: str, input_shape: InputShape, num_classes: int, name: str) -> NetworkSpec:
    """VGG with batch norm for 32x32 images (torchvision's layer configurations, a 512-wide head).

    Smaller inputs (28x28) run out of pixels before VGG's fifth max-pool; pools that would shrink
    the feature map below 1x1 are left out.
    """
    layers: list[Layer] = []
    channels = input_shape[0]
    size = min(input_shape[1:])
    for item in VGG_CONFIGS[config]:
        if item == "M":
            if size < 2:
                continue
            size //= 2
            layers.append(Layer("maxpool", kernel=2, stride=2))
        else:
            layers.append(_conv(channels, int(item)))
            channels = int(item)
    layers += [
        Layer("global_avgpool"),
        Layer("linear", channels, 512, activation="relu"),
        Layer("dropout", p=0.5),
        Layer("linear", 512, num_classes),
    ]
    return NetworkSpec(input_shape, num_classes, tuple(layers), name=name)


def resnet(
    blocks: tuple[int, ...], block: str, input_shape: InputShape, num_classes: int, name: str
) -> NetworkSpec:
    """ResNet with the CIFAR stem (3x3 conv, no max-pool), built from torchvision's blocks."""
    expansion = 4 if block == "bottleneck" else 1
    layers = [_conv(input_shape[0], 64)]
    channels = 64
    for stage, count in enumerate(blocks):
        planes = 64 * 2**stage
        for i in range(count):
            stride = 2 if stage > 0 and i == 0 else 1
            out = planes * expansion
            projection = stride != 1 or channels != out
            layers.append(
                Layer(
                    "residual",
                    channels,
                    out,
                    stride=stride,
                    block=block,
                    width=planes,
                    projection=projection,
                )
            )
            channels = out
    layers += [Layer("global_avgpool"), Layer("linear", channels, num_classes)]
    return NetworkSpec(input_shape, num_classes, tuple(layers), name=name)


ZOO: dict[str, Callable[[InputShape, int], NetworkSpec]] = {
    "small_vgg": small_vgg,
    "vgg11": lambda shape, classes: vgg("A", shape, classes, "vgg11"),
    "vgg13": lambda shape, classes: vgg("B", shape, classes, "vgg13"),
    "vgg16": lambda shape, classes: vgg("D", shape, classes, "vgg16"),
    "vgg19": lambda shape, classes: vgg("E", shape, classes, "vgg19"),
    "resnet18": lambda shape, classes: resnet((2, 2, 2, 2), "basic", shape, classes, "resnet18"),
    "resnet34": lambda shape, classes: resnet((3, 4, 6, 3), "basic", shape, classes, "resnet34"),
    "resnet50": lambda shape, classes: resnet(
        (3, 4, 6, 3), "bottleneck", shape, classes, "resnet50"
    ),
}


def zoo_spec(name: str, input_shape: InputShape, num_classes: int) -> NetworkSpec:
    """The description of zoo teacher ``name`` for the given input shape and class count.

    Raises:
        TeacherError: ``name`` is not in the zoo.
    """
    _check_arch(name)
    return ZOO[name](tuple(input_shape), num_classes)


def _check_arch(name: str) -> None:
    if name not in ZOO:
        raise TeacherError(f"unknown teacher architecture {name!r}; the zoo has {', '.join(ZOO)}")


# ---- teachers -----------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Teacher:
    """A trained teacher network, ready for distillation (eval mode, parameters frozen).

    Attributes:
        module: the network; layer ``i`` of ``spec`` is child ``i``.
        spec: its description.
        arch: zoo name, or ``"custom"`` for a converted user module.
        dataset: the data set it is used with.
        val_accuracy: top-1 accuracy (fraction) on the held-out validation split as recorded at
            training time; ``None`` when unknown (user modules, other data sets).
        test_accuracy: the same on the test split; ``None`` when unknown.
        fingerprint: identifies architecture and weights (for reward caches).
        source: the file it was loaded from, or ``"bundled"``.
    """

    module: SpecNetwork
    spec: NetworkSpec
    arch: str
    dataset: str
    val_accuracy: float | None
    test_accuracy: float | None
    fingerprint: str
    source: str

    @property
    def params(self) -> int:
        """Trainable parameters of the teacher."""
        return self.spec.params


def weights_fingerprint(module: SpecNetwork) -> str:
    """A short hash of a network's architecture key and every tensor in its state dict.

    Two teachers share a fingerprint only when they compute the same function, so caches keyed by
    it never mix results of different weights.
    """
    digest = hashlib.sha256(module.spec.key.encode())
    for name, tensor in sorted(module.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:20]


def _expected_io(
    dataset: str, input_shape: InputShape | None, num_classes: int | None
) -> tuple[InputShape, int]:
    if dataset in DATASETS:
        info = DATASETS[dataset]
        shape = tuple(input_shape) if input_shape is not None else info.input_shape
        return shape, num_classes if num_classes is not None else info.num_classes  # type: ignore[return-value]
    if input_shape is None or num_classes is None:
        raise TeacherError(
            f"unknown dataset {dataset!r}; available: {', '.join(available_datasets())} "
            "(or pass input_shape and num_classes for your own data)"
        )
    return tuple(input_shape), num_classes  # type: ignore[return-value]


def _bundled_path(dataset: str) -> Any:
    stem = BUNDLED_TEACHERS[dataset]
    return resources.files("n2n_gym").joinpath("weights", f"{stem}.pt")


def _read_torch_file(path: Path, label: str, allow_pickle: bool) -> Any:
    """``torch.load`` with weights only, turning every way it fails into one clear TeacherError."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        # The safe unpickler refuses Python objects other than tensors and containers; in a
        # torch zip archive that means a pickled object such as a whole nn.Module.
        if "Unsupported global" not in str(error) and not zipfile.is_zipfile(path):
            raise TeacherError(
                f"teacher file {label!r} is not a PyTorch checkpoint written by torch.save "
                f"({_first_line(error)}); pass a file saved with torch.save"
            ) from None
        if not allow_pickle:
            raise TeacherError(
                f"teacher file {label!r} holds a pickled Python object (such as a whole nn.Module); "
                "unpickling it runs code from the file, so it is refused by default: pass "
                "allow_pickle=True (CLI: --allow-pickle) if you trust the file, or save "
                "model.state_dict() instead and pass arch=NAME"
            ) from None
    except (RuntimeError, OSError, EOFError, KeyError, ValueError, AttributeError) as error:
        raise TeacherError(
            f"teacher file {label!r} is corrupt or not a PyTorch checkpoint "
            f"({type(error).__name__}: {_first_line(error)}); re-save it with torch.save"
        ) from None
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except (AttributeError, ModuleNotFoundError, ImportError) as error:
        raise TeacherError(
            f"teacher file {label!r} pickles a class that cannot be imported here "
            f"({_first_line(error)}); import the module that defines the model class first, or "
            "save model.state_dict() instead and pass arch=NAME"
        ) from None
    except Exception as error:  # unpickling runs arbitrary code: anything can fail
        raise TeacherError(
            f"teacher file {label!r} could not be unpickled ({type(error).__name__}: "
            f"{_first_line(error)})"
        ) from None


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _strip_prefixes(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    # DataParallel and torch.compile save keys under these prefixes.
    result = dict(state_dict)
    for prefix in ("module.", "_orig_mod."):
        if result and all(key.startswith(prefix) for key in result):
            result = {key[len(prefix) :]: value for key, value in result.items()}
    return result


def _load_state(module: SpecNetwork, state_dict: Mapping[str, Any], label: str, what: str) -> None:
    """Load weights strictly, naming every missing, unexpected or mis-shaped tensor."""
    state_dict = _strip_prefixes(state_dict)
    own = module.state_dict()
    problems = []
    missing = [key for key in own if key not in state_dict]
    unexpected = [key for key in state_dict if key not in own]
    if missing:
        problems.append(f"missing {_some(missing)}")
    if unexpected:
        problems.append(f"unexpected {_some(unexpected)}")
    for key, value in state_dict.items():
        if key in own and (
            not isinstance(value, torch.Tensor) or tuple(value.shape) != tuple(own[key].shape)
        ):
            got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            problems.append(f"{key} is {got} in the file but {tuple(own[key].shape)} in {what}")
    if problems:
        raise TeacherError(
            f"the weights in {label!r} do not fit {what}: {'; '.join(problems[:4])}"
            + (f" (and {len(problems) - 4} more)" if len(problems) > 4 else "")
            + "; pass the architecture and data set the weights were trained for"
        )
    module.load_state_dict(state_dict)


def _some(keys: list[str], limit: int = 3) -> str:
    shown = ", ".join(keys[:limit])
    return f"{shown} (+{len(keys) - limit} more)" if len(keys) > limit else shown


def _describe_arch(arch: str, shape: InputShape, classes: int) -> str:
    return f"{arch} for input {shape} and {classes} classes"


def load_teacher(
    teacher: str | os.PathLike[str] = "default",
    *,
    dataset: str = "mnist",
    input_shape: InputShape | None = None,
    num_classes: int | None = None,
    arch: str | None = None,
    allow_pickle: bool = False,
    device: str | torch.device = "cpu",
) -> Teacher:
    """Load a trained teacher.

    Args:
        teacher: ``"default"`` for the bundled teacher of ``dataset`` (MNIST only), or a path to
            a checkpoint from :func:`train_teacher`, a state dict saved with
            ``torch.save(model.state_dict())`` (needs ``arch``), or a whole pickled ``nn.Module``
            (needs ``allow_pickle``).
        dataset: the data set the teacher will be used with; fixes the expected input shape and
            class count (see :data:`n2n_gym.data.DATASETS`).
        input_shape: expected ``(C, H, W)``, overriding the data set's (for data sets outside the
            registry).
        num_classes: expected class count, overriding the data set's.
        arch: zoo name of the architecture a plain state dict was trained with; for a checkpoint
            it must match the recorded one.
        allow_pickle: allow unpickling a whole ``nn.Module``. Unpickling runs code from the file;
            only enable it for files you trust.
        device: where to put the network.

    Returns:
        The teacher in eval mode with frozen parameters on ``device``.

    Raises:
        TeacherError: naming the input and the fix, for a missing, corrupt or unsuitable file, a
            pickled module without ``allow_pickle``, a missing or unknown ``arch``, weights that do
            not fit the architecture, or a teacher whose input shape or class count differs from
            the data set's.
    """
    shape, classes = _expected_io(dataset, input_shape, num_classes)
    label = os.fspath(teacher)
    if arch is not None:
        _check_arch(arch)
    if label == "default":
        if dataset not in BUNDLED_TEACHERS:
            raise TeacherError(
                f"there is no bundled teacher for dataset {dataset!r} (bundled: "
                f"{', '.join(BUNDLED_TEACHERS)}); train one with `python -m n2n_gym.teachers train "
                f"resnet18 --dataset {dataset} --data-dir DIR --out teacher.pt` and pass its path"
            )
        with resources.as_file(_bundled_path(dataset)) as bundled:
            if not bundled.is_file():
                raise TeacherError(
                    f"the bundled teacher file {bundled} is missing; reinstall n2n-gym"
                )
            content = _read_torch_file(bundled, str(bundled), allow_pickle=False)
        source = "bundled"
    else:
        path = Path(label).expanduser()
        if not path.is_file():
            raise TeacherError(
                f"teacher file {label!r} does not exist"
                + (" (it is a folder)" if path.is_dir() else "")
                + "; pass 'default' for the bundled MNIST teacher or the path of a checkpoint "
                "(python -m n2n_gym.teachers train NAME --out PATH writes one)"
            )
        content = _read_torch_file(path, label, allow_pickle)
        source = str(path)

    val_acc: float | None = None
    test_acc: float | None = None
    if isinstance(content, nn.Module):
        module = _convert_user_module(content, label, dataset, shape, classes)
        arch_name = "custom"
    elif isinstance(content, Mapping) and "spec" in content and "state_dict" in content:
        module, arch_name = _module_from_checkpoint(content, label, arch)
        if content.get("dataset") == dataset:
            val_acc, test_acc = content.get("val_accuracy"), content.get("test_accuracy")
        else:
            logger.warning(
                "teacher %s was trained on %r but is used with %r; its recorded accuracy is ignored",
                label,
                content.get("dataset"),
                dataset,
            )
    elif isinstance(content, Mapping) and content:
        state_dict = content.get("state_dict", content)
        if not isinstance(state_dict, Mapping) or not all(
            isinstance(v, torch.Tensor) for v in state_dict.values()
        ):
            raise TeacherError(
                f"teacher file {label!r} holds a dict that is neither a checkpoint from "
                "`python -m n2n_gym.teachers train` nor a state dict of tensors; save "
                "model.state_dict() and pass arch=NAME"
            )
        if arch is None:
            raise TeacherError(
                f"teacher file {label!r} holds a plain state dict, which does not say its "
                f"architecture; pass arch=NAME (CLI: --teacher-arch) with one of {', '.join(ZOO)}"
            )
        module = build_module(zoo_spec(arch, shape, classes))
        _load_state(module, state_dict, label, _describe_arch(arch, shape, classes))
        arch_name = arch
    else:
        raise TeacherError(
            f"teacher file {label!r} holds a {type(content).__name__}, not a teacher; expected a "
            "checkpoint from `python -m n2n_gym.teachers train`, a state dict, or an nn.Module"
        )

    spec = module.spec
    if spec.input_shape != tuple(shape) or spec.num_classes != classes:
        raise TeacherError(
            f"teacher {label!r} takes input {spec.input_shape} with {spec.num_classes} classes, "
            f"but dataset {dataset!r} has input {tuple(shape)} with {classes} classes; pass the "
            "dataset the teacher was trained on"
        )
    return _finish(module, arch_name, dataset, val_acc, test_acc, source, device)


def _convert_user_module(
    content: nn.Module, label: str, dataset: str, shape: InputShape, classes: int
) -> SpecNetwork:
    if isinstance(content, SpecNetwork):
        return content
    try:
        return convert_module(content, shape, classes)
    except UnsupportedModule as error:
        raise TeacherError(
            f"teacher file {label!r} (a {type(content).__name__}) cannot be used with dataset "
            f"{dataset!r} (input {tuple(shape)}, {classes} classes): {error}"
        ) from None


def _module_from_checkpoint(
    content: Mapping[str, Any], label: str, arch: str | None
) -> tuple[SpecNetwork, str]:
    recorded = str(content.get("arch", "custom"))
    if arch is not None and arch != recorded:
        raise TeacherError(
            f"teacher file {label!r} is a {recorded} checkpoint but arch={arch!r} was passed; "
            "leave arch out (checkpoints record their architecture) or pass the right file"
        )
    try:
        spec = NetworkSpec.from_dict(content["spec"])
    except InvalidArchitecture as error:
        raise TeacherError(
            f"teacher file {label!r} has a broken network description ({error})"
        ) from None
    module = build_module(spec)
    _load_state(module, content["state_dict"], label, f"its recorded {recorded} architecture")
    return module, recorded


def _finish(
    module: SpecNetwork,
    arch: str,
    dataset: str,
    val_accuracy: float | None,
    test_accuracy: float | None,
    source: str,
    device: str | torch.device,
) -> Teacher:
    # Fingerprint on the CPU copy before any layout change, so it is the same on every device.
    module = module.cpu()
    fingerprint = weights_fingerprint(module)
    module.eval().requires_grad_(False)
    module = module.to(_resolve_device(device))
    return Teacher(
        module=module,
        spec=module.spec,
        arch=arch,
        dataset=dataset,
        val_accuracy=None if val_accuracy is None else float(val_accuracy),
        test_accuracy=None if test_accuracy is None else float(test_accuracy),
        fingerprint=fingerprint,
        source=source,
    )


def _resolve_device(device: str | torch.device) -> torch.device:
    try:
        return resolve_device(device)
    except ValueError as error:
        raise TeacherError(str(error)) from None


# ---- training -----------------------------------------------------------------------------------


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
    val_size: int = 5000,
    train_limit: int | None = None,
    resume: bool = False,
    progress: bool = True,
    splits: DatasetSplits | None = None,
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
        arch: a zoo name (:data:`ZOO`).
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
            split seed, so the environments validate on the same held-out images).
        train_limit: train on at most this many images (quick experiments, tests).
        resume: continue from the checkpoint at ``out`` if one exists; its settings must match.
        progress: show a tqdm progress bar per epoch.
        splits: already loaded data (used instead of loading ``dataset``; its ``name`` must be
            ``dataset``).

    Returns:
        The trained teacher (eval mode, frozen), with ``source`` the checkpoint path.

    Raises:
        TeacherError: unknown ``arch``, bad hyperparameters or device, or a checkpoint to resume
            from that was written with different settings.
        DataError: the data set cannot be loaded.
    """
    _check_arch(arch)
    _check_hyperparameters(epochs, batch_size, lr, weight_decay, label_smoothing)
    if dataset not in DATASETS and splits is None:
        raise TeacherError(
            f"unknown dataset {dataset!r}; available: {', '.join(available_datasets())}"
        )
    if splits is not None and splits.name != dataset:
        raise TeacherError(f"splits hold {splits.name!r} but dataset={dataset!r} was passed")
    out = Path(out).expanduser()
    if out.is_dir():
        raise TeacherError(f"out={str(out)!r} is a folder; pass a file path such as teacher.pt")
    run_device = _resolve_device(device)
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
        bar = tqdm(
            range(steps_per_epoch),
            desc=f"epoch {epoch + 1}/{epochs}",
            unit="batch",
            disable=not progress,
            dynamic_ncols=True,
        )
        for step in bar:
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
            if progress and (step % 20 == 0 or step == steps_per_epoch - 1):
                bar.set_postfix(
                    loss=f"{loss_sum.item() / seen:.4f}", acc=f"{correct.item() / seen:.4f}"
                )
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
                out, module, spec, settings, history, val_acc, None, elapsed, optimizer, run_device
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
        out, module, spec, settings, history, val_acc, test_acc, elapsed, None, run_device
    )
    return _finish(module, arch, dataset, val_acc, test_acc, str(out), run_device)


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


# ---- command line -------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad command line in one line, with exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m n2n_gym.teachers",
        description="Train zoo teachers and list the zoo.",
    )
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    train = commands.add_parser(
        "train",
        help="train a zoo network on a data set and write a checkpoint",
        description="Train a zoo network with supervised learning; writes PATH and PATH.json "
        "after every epoch (atomically), resumable with --resume.",
    )
    train.add_argument("name", help=f"zoo architecture: {', '.join(ZOO)}")
    train.add_argument("--dataset", default="mnist", help="data set name (default: mnist)")
    train.add_argument("--data-dir", default=None, help="folder holding the data set files")
    train.add_argument("--download", action="store_true", help="fetch the data set if missing")
    train.add_argument("--epochs", type=int, default=3, help="passes over the data (default: 3)")
    train.add_argument("--batch-size", type=int, default=128, help="default: 128")
    train.add_argument("--lr", type=float, default=0.1, help="peak learning rate (default: 0.1)")
    train.add_argument("--weight-decay", type=float, default=5e-4, help="default: 5e-4")
    train.add_argument("--label-smoothing", type=float, default=0.0, help="default: 0")
    train.add_argument("--no-augment", action="store_true", help="train without augmentation")
    train.add_argument("--device", default="auto", help="cpu, cuda or auto (default: auto)")
    train.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    train.add_argument("--out", default=None, help="checkpoint path (default: NAME_DATASET.pt)")
    train.add_argument("--seed", type=int, default=0, help="default: 0")
    train.add_argument("--resume", action="store_true", help="continue the checkpoint at --out")
    train.add_argument("--quiet", action="store_true", help="no progress bars")
    listing = commands.add_parser("list", help="list the zoo with sizes for a data set")
    listing.add_argument("--dataset", default="mnist", help="data set name (default: mnist)")
    return parser


def _list_zoo(dataset: str) -> None:
    from rich.console import Console
    from rich.table import Table

    shape, classes = _expected_io(dataset, None, None)
    table = Table(title=f"Teacher zoo for {dataset} (input {shape}, {classes} classes)")
    table.add_column("name")
    table.add_column("params", justify="right")
    table.add_column("MMACs", justify="right")
    table.add_column("decision units", justify="right")
    table.add_column("weights")
    for name in ZOO:
        spec = zoo_spec(name, shape, classes)
        bundled = (
            "bundled (load_teacher('default'))"
            if (BUNDLED_TEACHERS.get(dataset, "").startswith(f"{name}_"))
            else "train with `train`"
        )
        table.add_row(
            name, f"{spec.params:,}", f"{spec.flops / 1e6:,.1f}", str(spec.num_units), bundled
        )
    Console().print(table)


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; returns the exit code (2 for bad input)."""
    args = _build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.command == "list":
            _list_zoo(args.dataset)
            return 0
        if args.threads is not None:
            if args.threads < 1:
                raise TeacherError(f"--threads {args.threads} must be a positive integer")
            torch.set_num_threads(args.threads)
        out = args.out or f"{args.name}_{args.dataset}.pt"
        started = time.perf_counter()
        teacher = train_teacher(
            args.name,
            args.dataset,
            out=out,
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            weight_decay=args.weight_decay,
            label_smoothing=args.label_smoothing,
            augment=not args.no_augment,
            seed=args.seed,
            device=args.device,
            data_dir=args.data_dir,
            download=args.download,
            resume=args.resume,
            progress=not args.quiet,
        )
    except (TeacherError, DataError, InvalidArchitecture) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; continue later with --resume", file=sys.stderr)
        return 130
    print(
        f"{teacher.arch} on {teacher.dataset}: val accuracy {teacher.val_accuracy:.4f}, "
        f"test accuracy {teacher.test_accuracy:.4f}, {teacher.params:,} parameters, "
        f"{time.perf_counter() - started:.0f} s; wrote {teacher.source} and {sidecar_path(out)}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
