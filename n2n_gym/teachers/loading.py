"""Loading trained teachers: the bundled ones, checkpoints, state dicts and users' modules.

:func:`inspect_teacher` reads a teacher file and performs every check :func:`load_teacher`
performs, without copying weights into a network; :func:`load_teacher` runs the same checks and then
builds the network, loads the weights and freezes it.

A plain state dict says nothing of its architecture, so it comes with one of: a zoo name, a
torchvision classification model's name (``resnet18``, ``vgg16_bn``, ...: torchvision's own stems
and key names, any class count, the input channels read from the weights), ``module=`` the user's
own ``nn.Module`` instance, or (from JSON and command lines) the import path of a function that
builds it, ``"my_package.models:build_net"``. Users' and torchvision's modules are read by
:func:`n2n_gym.convert.convert_module`. No pickle is involved in any of these.

Checkpoints are plain dicts of tensors and Python values, so they load with
``torch.load(weights_only=True)``. Accuracies are fractions in [0, 1].
"""

from __future__ import annotations

import copy
import functools
import hashlib
import importlib
import logging
import os
import pickle
import re
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch import nn

from n2n_gym.arch import InvalidArchitecture, NetworkSpec
from n2n_gym.convert import UnsupportedModule, convert_module
from n2n_gym.data import DATASETS, IMAGE_FOLDER, available_datasets, canonical_dataset
from n2n_gym.distill import one_thread, resolve_device
from n2n_gym.surgery import SpecNetwork, build_module
from n2n_gym.teachers.errors import TeacherError, argument
from n2n_gym.teachers.zoo import (
    BUNDLED_DEFAULTS,
    BUNDLED_PREFIX,
    BUNDLED_TEACHERS,
    ZOO,
    InputShape,
    zoo_spec,
)

__all__ = [
    "Teacher",
    "TeacherError",
    "TeacherInfo",
    "inspect_teacher",
    "load_teacher",
    "weights_fingerprint",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class Teacher:
    """A trained teacher network, ready for distillation (eval mode, parameters frozen).

    Attributes:
        module: the network; layer ``i`` of ``spec`` is child ``i``.
        spec: its description.
        arch: zoo or torchvision name, the import path of the function that built it, or
            ``"custom"`` for a user's module.
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


@dataclass(frozen=True)
class TeacherInfo:
    """What :func:`inspect_teacher` learns about a teacher without loading its weights.

    Attributes:
        spec: the teacher's network description.
        arch: as for :class:`Teacher`.
        dataset: the data set it is to be used with (the ``dataset`` argument).
        trained_on: the data set the checkpoint records it was trained on; ``None`` for state
            dicts, user modules and checkpoints that record none.
        val_accuracy: the recorded top-1 validation accuracy (fraction), only when ``trained_on``
            is ``dataset``; else ``None``.
        test_accuracy: the same on the test split.
        source: the file it would be loaded from, or ``"bundled"``.
        normalisation: ``(mean, std)`` of the images it was trained on, per channel in [0, 1]
            units, when its checkpoint records them.
    """

    spec: NetworkSpec
    arch: str
    dataset: str
    trained_on: str | None
    val_accuracy: float | None
    test_accuracy: float | None
    source: str
    normalisation: tuple[tuple[float, ...], tuple[float, ...]] | None = None

    @property
    def params(self) -> int:
        """Trainable parameters of the teacher."""
        return self.spec.params


@dataclass(frozen=True, eq=False)
class _Checked:
    """A teacher file read and checked: its description plus what it takes to build the network.

    Exactly one of ``state_dict`` (weights that fit ``build_module(info.spec)``) and ``module``
    (an already converted user network) is set.
    """

    info: TeacherInfo
    state_dict: dict[str, Any] | None = None
    module: SpecNetwork | None = None


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
    dataset = canonical_dataset(dataset)
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


def _bundled_path(name: str) -> Any:
    return resources.files("n2n_gym").joinpath("weights", f"{name}.pt")


def is_bundled(teacher: str | os.PathLike[str]) -> bool:
    """Whether ``teacher`` names a teacher shipped with the package (not a file path)."""
    label = os.fspath(teacher)
    return label == "default" or label.startswith(BUNDLED_PREFIX)


def _bundled_name(label: str, dataset: str) -> str:
    if label == "default":
        if dataset not in BUNDLED_DEFAULTS:
            raise TeacherError(
                f"there is no bundled teacher for dataset {dataset!r} (bundled: "
                f"{', '.join(BUNDLED_DEFAULTS)}); train one with `python -m n2n_gym.teachers train "
                f"resnet18 --dataset {dataset} --data-dir DIR --out teacher.pt` and pass its path"
            )
        return BUNDLED_DEFAULTS[dataset]
    name = label.removeprefix(BUNDLED_PREFIX)
    if name not in BUNDLED_TEACHERS:
        raise TeacherError(
            f"teacher {label!r}: no bundled teacher is called {name!r}; bundled are "
            f"{', '.join(BUNDLED_PREFIX + n for n in BUNDLED_TEACHERS)}"
        )
    return name


def _read_torch_file(path: Path, label: str, allow_pickle: bool) -> Any:
    """``torch.load`` with weights only, turning every way it fails into one clear TeacherError."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        # The safe unpickler refuses Python objects other than tensors and containers; in a
        # torch zip archive that means a pickled object such as a whole nn.Module.
        if "Unsupported global" not in str(error) and not zipfile.is_zipfile(path):
            # torch's own text here advises weights_only=False, i.e. unpickling an unknown
            # file: never repeat that.
            raise TeacherError(
                f"teacher file {label!r} is not a PyTorch checkpoint written by torch.save "
                "(neither a torch zip archive nor a tensor pickle); pass a file saved with "
                "torch.save"
            ) from None
        if not allow_pickle:
            raise TeacherError(
                f"teacher file {label!r} holds a pickled Python object (such as a whole nn.Module); "
                f"unpickling it runs code from the file, so it is refused by default: pass "
                f"{argument('allow_pickle', 'True')} if you trust the file, or save "
                f"model.state_dict() instead and pass {_arch_hint()}"
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
            f"save model.state_dict() instead and pass {_arch_hint()}"
        ) from None
    except Exception as error:  # unpickling runs arbitrary code: anything can fail
        raise TeacherError(
            f"teacher file {label!r} could not be unpickled ({type(error).__name__}: "
            f"{_first_line(error)})"
        ) from None


def _arch_hint() -> str:
    return (
        f"{argument('arch', 'NAME')} (a zoo name: {', '.join(ZOO)}; a torchvision "
        "classification model such as resnet50 or vgg16_bn; or 'package.module:function' "
        "returning your model)"
    )


def _module_hint() -> str:
    # only load_teacher itself takes a module object; JSON and command lines name a function
    return ", or module=YourModel()" if argument("arch") == "arch" else ""


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


def _expected_shapes(spec: NetworkSpec) -> dict[str, tuple[int, ...]]:
    """The name and shape of every tensor in the state dict of ``build_module(spec)``.

    The network is built on the meta device: no memory, no initialisation, no random numbers drawn.
    """
    with torch.device("meta"):
        own = build_module(spec).state_dict()
    return {key: tuple(value.shape) for key, value in own.items()}


def _check_state(
    spec: NetworkSpec, state_dict: Mapping[str, Any], label: str, what: str
) -> dict[str, Any]:
    """Check that weights fit ``spec`` exactly, naming every missing, unexpected or mis-shaped tensor.

    Returns:
        The state dict with DataParallel/compile prefixes removed, ready for ``load_state_dict``.
    """
    return _check_fits(_expected_shapes(spec), state_dict, label, what)


def _check_fits(
    own: Mapping[str, tuple[int, ...]], state_dict: Mapping[str, Any], label: str, what: str
) -> dict[str, Any]:
    """:func:`_check_state` against the tensor names and shapes ``own`` of any network."""
    state_dict = _strip_prefixes(state_dict)
    problems = []
    missing = [key for key in own if key not in state_dict]
    unexpected = [key for key in state_dict if key not in own]
    if missing:
        problems.append(f"missing {_some(missing)}")
    if unexpected:
        problems.append(f"unexpected {_some(unexpected)}")
    for key, value in state_dict.items():
        if key in own and (not isinstance(value, torch.Tensor) or tuple(value.shape) != own[key]):
            got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            problems.append(f"{key} is {got} in the file but {own[key]} in {what}")
    if problems:
        raise TeacherError(
            f"the weights in {label!r} do not fit {what}: {'; '.join(problems[:4])}"
            + (f" (and {len(problems) - 4} more)" if len(problems) > 4 else "")
            + "; pass the architecture and data set the weights were trained for"
        )
    return state_dict


class _DoesNotFit(TeacherError):
    """Weights that do not fit one candidate architecture (another may still fit)."""


def _some(keys: list[str], limit: int = 3) -> str:
    shown = ", ".join(keys[:limit])
    return f"{shown} (+{len(keys) - limit} more)" if len(keys) > limit else shown


def _describe_arch(arch: str, shape: InputShape, classes: int) -> str:
    return f"{arch} for input {shape} and {classes} classes"


def _read_and_check(
    teacher: str | os.PathLike[str],
    *,
    dataset: str,
    input_shape: InputShape | None,
    num_classes: int | None,
    arch: str | None,
    module: nn.Module | None,
    allow_pickle: bool,
    allow_other_dataset: bool,
) -> _Checked:
    """Read a teacher file and run every check; shared by inspect_teacher and load_teacher."""
    shape, classes = _expected_io(dataset, input_shape, num_classes)
    label = os.fspath(teacher)
    if arch is not None:
        _check_arch(arch)
    if module is not None and (arch is not None or not isinstance(module, nn.Module)):
        raise TeacherError(
            f"module={type(module).__name__}: pass an nn.Module instance (your model, whose "
            f"state dict the file holds), and not together with {argument('arch')}"
        )
    if is_bundled(label):
        with resources.as_file(_bundled_path(_bundled_name(label, dataset))) as bundled:
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

    trained_on: str | None = None
    normalisation = None
    recorded_acc: tuple[Any, Any] = (None, None)
    state_dict: dict[str, Any] | None = None
    checkpoint = False
    converted: SpecNetwork | None = None
    if isinstance(content, nn.Module):
        # Converting traces the module with a forward pass: keep torch's thread pool unstarted.
        with one_thread():
            converted = _convert_user_module(content, label, dataset, shape, classes)
        spec, arch_name = converted.spec, "custom"
    elif isinstance(content, Mapping) and "spec" in content and "state_dict" in content:
        spec, state_dict, arch_name = _check_checkpoint(content, label, arch)
        checkpoint = True
        if content.get("dataset") is not None:
            trained_on = str(content["dataset"])
        recorded_acc = content.get("val_accuracy"), content.get("test_accuracy")
        recorded = content.get("normalisation")
        if isinstance(recorded, Mapping) and {"mean", "std"} <= set(recorded):
            normalisation = tuple(map(float, recorded["mean"])), tuple(map(float, recorded["std"]))
    elif isinstance(content, Mapping) and content:
        weights = content.get("state_dict", content)
        if not isinstance(weights, Mapping) or not all(
            isinstance(v, torch.Tensor) for v in weights.values()
        ):
            raise TeacherError(
                f"teacher file {label!r} holds a dict that is neither a checkpoint from "
                "`python -m n2n_gym.teachers train` nor a state dict of tensors; save "
                f"model.state_dict() and pass {_arch_hint()}"
            )
        if arch is None and module is None:
            raise TeacherError(
                f"teacher file {label!r} holds a plain state dict, which does not say its "
                f"architecture; pass {_arch_hint()}{_module_hint()}"
            )
        spec, state_dict, converted = _state_dict_teacher(
            weights, label, arch, module, dataset, shape, classes
        )
        arch_name = arch or "custom"
    else:
        raise TeacherError(
            f"teacher file {label!r} holds a {type(content).__name__}, not a teacher; expected a "
            "checkpoint from `python -m n2n_gym.teachers train`, a state dict, or an nn.Module"
        )

    if dataset == IMAGE_FOLDER and spec.num_classes == classes and spec.input_shape != tuple(shape):
        channels, height, width = spec.input_shape
        raise TeacherError(
            f"teacher {label!r} takes input {spec.input_shape}, but the image folder is read as "
            f"{tuple(shape)}: read it at the teacher's size (image_size [{height}, {width}], "
            f"channels {channels})"
        )
    if spec.input_shape != tuple(shape) or spec.num_classes != classes:
        raise TeacherError(
            f"teacher {label!r} takes input {spec.input_shape} with {spec.num_classes} classes, "
            f"but dataset {dataset!r} has input {tuple(shape)} with {classes} classes; pass the "
            "dataset the teacher was trained on"
        )
    val_acc: float | None = None
    test_acc: float | None = None
    if trained_on == dataset:
        val_acc, test_acc = (None if a is None else float(a) for a in recorded_acc)
    elif trained_on is not None:
        if not allow_other_dataset:
            raise TeacherError(
                f"teacher {label!r} was trained on {trained_on!r}, not dataset {dataset!r}: pass "
                f"the teacher trained for {dataset!r}, or "
                f"{argument('allow_other_dataset', 'True')} to use it anyway"
            )
        logger.warning(
            "teacher %s was trained on %r but is used with %r; its recorded accuracy is ignored",
            label,
            trained_on,
            dataset,
        )
    elif checkpoint:
        logger.warning(
            "teacher %s does not record the data set it was trained on; its recorded accuracy "
            "is ignored",
            label,
        )
    info = TeacherInfo(
        spec=spec,
        arch=arch_name,
        dataset=dataset,
        trained_on=trained_on,
        val_accuracy=val_acc,
        test_accuracy=test_acc,
        source=source,
        normalisation=normalisation,
    )
    return _Checked(info, state_dict=state_dict, module=converted)


def inspect_teacher(
    teacher: str | os.PathLike[str] = "default",
    *,
    dataset: str = "mnist",
    input_shape: InputShape | None = None,
    num_classes: int | None = None,
    arch: str | None = None,
    module: nn.Module | None = None,
    allow_pickle: bool = False,
    allow_other_dataset: bool = False,
) -> TeacherInfo:
    """Check a teacher as :func:`load_teacher` does, without loading its weights into a network.

    The file is read (``torch.load``) and every check of :func:`load_teacher` runs, raising the
    same errors, but no weights are copied into a network and no forward pass runs for checkpoints
    and state dicts. Converting a pickled ``nn.Module`` traces it with torch limited to one thread.
    Either way torch's CPU thread pool is not started, so a process may call this before forking
    workers (such as a vector environment with the fork context), which could otherwise deadlock.

    Args:
        teacher: as for :func:`load_teacher`.
        dataset: as for :func:`load_teacher`.
        input_shape: as for :func:`load_teacher`.
        num_classes: as for :func:`load_teacher`.
        arch: as for :func:`load_teacher`.
        module: as for :func:`load_teacher`.
        allow_pickle: as for :func:`load_teacher`.
        allow_other_dataset: as for :func:`load_teacher`.

    Returns:
        The teacher's description, architecture, recorded data set and accuracies, and source.

    Raises:
        TeacherError: exactly when :func:`load_teacher` would raise one for the same arguments
            (except for its ``device``).
    """
    return _read_and_check(
        teacher,
        dataset=dataset,
        input_shape=input_shape,
        num_classes=num_classes,
        arch=arch,
        module=module,
        allow_pickle=allow_pickle,
        allow_other_dataset=allow_other_dataset,
    ).info


def load_teacher(
    teacher: str | os.PathLike[str] = "default",
    *,
    dataset: str = "mnist",
    input_shape: InputShape | None = None,
    num_classes: int | None = None,
    arch: str | None = None,
    module: nn.Module | None = None,
    allow_pickle: bool = False,
    allow_other_dataset: bool = False,
    device: str | torch.device = "cpu",
) -> Teacher:
    """Load a trained teacher.

    Args:
        teacher: ``"default"`` for the bundled teacher of ``dataset`` (MNIST only),
            ``"bundled:NAME"`` for another shipped one (:data:`BUNDLED_TEACHERS`), or a path to
            a checkpoint from :func:`~n2n_gym.teachers.train_teacher`, a state dict saved with
            ``torch.save(model.state_dict())`` (needs ``arch`` or ``module``), or a whole pickled
            ``nn.Module`` (needs ``allow_pickle``).
        dataset: the data set the teacher will be used with; fixes the expected input shape and
            class count (see :data:`n2n_gym.data.DATASETS`).
        input_shape: expected ``(C, H, W)``, overriding the data set's (for data sets outside the
            registry).
        num_classes: expected class count, overriding the data set's.
        arch: the architecture of a plain state dict: a zoo name, a torchvision classification
            model name (its own stem and key names; the class count from ``dataset``, the input
            channels from the weights), or ``"package.module:function"``, a function that
            returns the untrained model. For a checkpoint it must match the recorded one.
        module: the user's model (an instance of its class) that the state dict belongs to;
            its weights are not changed (a copy is loaded).
        allow_pickle: allow unpickling a whole ``nn.Module``. Unpickling runs code from the file;
            only enable it for files you trust.
        allow_other_dataset: use a checkpoint that records another data set than ``dataset``
            (its recorded accuracies are then ignored); without it such a checkpoint is refused.
        device: where to put the network.

    Returns:
        The teacher in eval mode with frozen parameters on ``device``.

    Raises:
        TeacherError: naming the input and the fix, for a missing, corrupt or unsuitable file, a
            pickled module without ``allow_pickle``, a missing or unknown ``arch``, weights that do
            not fit the architecture, a checkpoint trained on another data set without
            ``allow_other_dataset``, or a teacher whose input shape or class count differs from
            the data set's.
    """
    checked = _read_and_check(
        teacher,
        dataset=dataset,
        input_shape=input_shape,
        num_classes=num_classes,
        arch=arch,
        module=module,
        allow_pickle=allow_pickle,
        allow_other_dataset=allow_other_dataset,
    )
    info = checked.info
    module = checked.module
    if module is None:
        module = build_module(info.spec)
        module.load_state_dict(checked.state_dict)
    return _finish(
        module, info.arch, dataset, info.val_accuracy, info.test_accuracy, info.source, device
    )


_IMPORT_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


@functools.cache
def _torchvision_names() -> frozenset[str]:
    import torchvision  # here: it takes seconds to load, and zoo teachers never need it

    return frozenset(torchvision.models.list_models(module=torchvision.models))


def _check_arch(arch: str) -> None:
    if not isinstance(arch, str) or not (
        arch in ZOO or arch in _torchvision_names() or _IMPORT_PATH.match(arch)
    ):
        raise TeacherError(
            f"unknown teacher architecture {argument('arch', repr(arch))}; pass a zoo name "
            f"({', '.join(ZOO)}), a torchvision classification model (e.g. resnet18, resnet50, "
            "vgg16_bn) or 'package.module:function' returning your model"
        )


def _state_dict_teacher(
    weights: Mapping[str, Any],
    label: str,
    arch: str | None,
    module: nn.Module | None,
    dataset: str,
    shape: InputShape,
    classes: int,
) -> tuple[NetworkSpec, dict[str, Any] | None, SpecNetwork | None]:
    """The description of a plain state dict's network, and its weights or converted network.

    Zoo weights stay a state dict (no forward pass); anything else is loaded into its module and
    converted. A name in both the zoo and torchvision (resnet18) is whichever the weights fit.
    """
    if arch in ZOO:
        spec = zoo_spec(arch, shape, classes)
        try:
            return (
                spec,
                _check_state(spec, weights, label, _describe_arch(arch, shape, classes)),
                None,
            )
        except TeacherError as zoo_error:
            if arch not in _torchvision_names():
                raise
            try:
                model = _torchvision_model(arch, weights, label, classes)
            except _DoesNotFit as error:
                raise TeacherError(
                    f"the weights in {label!r} fit neither the zoo's {arch} (for small images: "
                    f"{_first_line(zoo_error).split(': ', 1)[-1]}) nor torchvision's ({error})"
                ) from None
    elif module is not None:
        model = copy.deepcopy(module)
        _load_weights(model, weights, label, f"your {type(module).__name__}")
    elif arch in _torchvision_names():
        model = _torchvision_model(arch, weights, label, classes)
    else:
        model = _built_by(arch, label)
        _load_weights(model, weights, label, f"the model {arch} builds")
    with one_thread():
        converted = _convert_user_module(model, label, dataset, shape, classes)
    return converted.spec, None, converted


def _load_weights(model: nn.Module, weights: Mapping[str, Any], label: str, what: str) -> None:
    own = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    model.load_state_dict(_check_fits(own, weights, label, what))


def _torchvision_model(
    arch: str, weights: Mapping[str, Any], label: str, classes: int
) -> nn.Module:
    """torchvision's ``arch`` for ``classes`` classes, its first conv reading the weights' channels."""
    import torchvision

    model = torchvision.models.get_model(arch, weights=None, num_classes=classes)
    weights = _strip_prefixes(weights)
    name, first = next(
        ((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)), (None, None)
    )
    given = weights.get(f"{name}.weight") if first is not None else None
    if isinstance(given, torch.Tensor) and given.ndim == 4 and given.shape[1] != first.in_channels:
        if tuple(given.shape[2:]) != first.kernel_size:
            raise _DoesNotFit(
                f"{name}.weight is {list(given.shape)} in the file but torchvision's {arch} stem "
                f"is {list(first.weight.shape)}: a changed stem needs your model, pass "
                f"{argument('arch', repr('package.module:function'))}{_module_hint()}"
            )
        parent, _, child = name.rpartition(".")
        replacement = nn.Conv2d(
            int(given.shape[1]),
            first.out_channels,
            first.kernel_size,
            first.stride,
            first.padding,
            bias=first.bias is not None,
        )
        setattr(model.get_submodule(parent) if parent else model, child, replacement)
    own = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    try:
        model.load_state_dict(_check_fits(own, weights, label, f"torchvision's {arch}"))
    except TeacherError as error:
        raise _DoesNotFit(str(error)) from None
    return model


def _built_by(arch: str, label: str) -> nn.Module:
    """The model that the function at import path ``package.module:function`` returns."""
    module_name, _, function_name = arch.partition(":")
    where = argument("arch", repr(arch))
    try:
        builder = getattr(importlib.import_module(module_name), function_name)
    except (ImportError, AttributeError) as error:
        raise TeacherError(
            f"{where}: cannot import it ({_first_line(error)}); the module must be importable "
            "here (installed, or on PYTHONPATH) and define that function or class"
        ) from None
    try:
        model = builder()
    except Exception as error:  # the user's code: anything can fail
        raise TeacherError(
            f"{where}: calling it failed ({type(error).__name__}: {_first_line(error)}); it must "
            "take no arguments and return the untrained model"
        ) from None
    if not isinstance(model, nn.Module):
        raise TeacherError(f"{where} returned a {type(model).__name__}, not an nn.Module")
    return model


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


def _check_checkpoint(
    content: Mapping[str, Any], label: str, arch: str | None
) -> tuple[NetworkSpec, dict[str, Any], str]:
    """The recorded description, checked weights and architecture name of a checkpoint."""
    recorded = str(content.get("arch", "custom"))
    if arch is not None and arch != recorded:
        raise TeacherError(
            f"teacher file {label!r} is a {recorded} checkpoint but {argument('arch', repr(arch))} "
            f"was passed; leave {argument('arch')} out (checkpoints record their architecture) or "
            "pass the right file"
        )
    try:
        spec = NetworkSpec.from_dict(content["spec"])
    except InvalidArchitecture as error:
        raise TeacherError(
            f"teacher file {label!r} has a broken network description ({error})"
        ) from None
    state_dict = _check_state(
        spec, content["state_dict"], label, f"its recorded {recorded} architecture"
    )
    return spec, state_dict, recorded


def _module_from_checkpoint(
    content: Mapping[str, Any], label: str, arch: str | None
) -> tuple[SpecNetwork, str]:
    spec, state_dict, recorded = _check_checkpoint(content, label, arch)
    module = build_module(spec)
    module.load_state_dict(state_dict)
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
