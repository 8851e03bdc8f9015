"""Network surgery: network descriptions to torch modules and back, and students with inherited weights.

Every network the library trains is a :class:`SpecNetwork`: an ``nn.Sequential`` with one child per
layer of its :class:`~n2n_gym.arch.NetworkSpec`, so layer ``i`` of the description is module ``i``.
A user's own model is converted once by :func:`n2n_gym.convert.convert_module`.

Everything that depends on a layer's kind is one :class:`KindSurgery` entry in
:data:`KIND_SURGERY` (building its module, inheriting a teacher's weights); adding a layer kind
means adding one entry there and one in ``arch.KINDS``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

import torch
from torch import nn

from n2n_gym.arch import (
    InvalidArchitecture,
    Layer,
    NetworkSpec,
    StudentDescription,
    StudentPlan,
    TensorShape,
)
from n2n_gym.distill import seeded_global_rng

logger = logging.getLogger(__name__)


class SpecNetwork(nn.Sequential):
    """A network built from a description; child ``i`` implements ``spec.layers[i]``."""

    def __init__(self, spec: NetworkSpec) -> None:
        super().__init__(*(_layer_module(layer) for layer in spec.layers))
        self.spec = spec


def _conv_bn(
    in_channels: int, out_channels: int, kernel: int, stride: int, padding: int
) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel, stride, padding, bias=False),
        nn.BatchNorm2d(out_channels),
    )


def activation_module(layer: Layer) -> nn.Module | None:
    """The module of the layer's activation (``None`` for none)."""
    name = layer.activation
    if name is None:
        return None
    if name == "leaky_relu":
        return nn.LeakyReLU(layer.negative_slope, inplace=True)
    return ACTIVATION_MODULES[name]()


ACTIVATION_MODULES: Mapping[str, Callable[[], nn.Module]] = MappingProxyType(
    {
        "relu": lambda: nn.ReLU(inplace=True),
        "relu6": lambda: nn.ReLU6(inplace=True),
        "gelu": nn.GELU,
        "gelu_tanh": lambda: nn.GELU(approximate="tanh"),
        "silu": lambda: nn.SiLU(inplace=True),
    }
)


def _residual(layer: Layer) -> nn.Module:
    block = _torchvision_block(layer)
    if layer.activation not in (None, "relu"):
        block.relu = activation_module(layer)  # both of torchvision's blocks call self.relu
    return block


def _torchvision_block(layer: Layer) -> nn.Module:
    # Imported here: torchvision takes seconds to load and only residual students need it.
    from torchvision.models.resnet import BasicBlock, Bottleneck

    downsample = (
        _conv_bn(layer.in_channels, layer.out_channels, 1, layer.stride, 0)
        if layer.projection
        else None
    )
    if layer.block == "bottleneck":
        # Bottleneck's inner width is planes * base_width / 64; picking base_width sets it exactly.
        planes = layer.out_channels // Bottleneck.expansion
        block = Bottleneck(layer.in_channels, planes, layer.stride, downsample, base_width=64)
        block.conv1 = nn.Conv2d(layer.in_channels, layer.width, 1, bias=False)
        block.bn1 = nn.BatchNorm2d(layer.width)
        block.conv2 = nn.Conv2d(layer.width, layer.width, 3, layer.stride, 1, bias=False)
        block.bn2 = nn.BatchNorm2d(layer.width)
        block.conv3 = nn.Conv2d(layer.width, layer.out_channels, 1, bias=False)
        block.bn3 = nn.BatchNorm2d(layer.out_channels)
        return block
    block = BasicBlock(layer.in_channels, layer.out_channels, layer.stride, downsample)
    # BasicBlock ties its inner width to its output width; shrinking decouples them.
    block.conv1 = nn.Conv2d(layer.in_channels, layer.width, 3, layer.stride, 1, bias=False)
    block.bn1 = nn.BatchNorm2d(layer.width)
    block.conv2 = nn.Conv2d(layer.width, layer.out_channels, 3, 1, 1, bias=False)
    return block


def _build_conv(layer: Layer) -> nn.Module:
    parts: list[nn.Module] = [
        nn.Conv2d(
            layer.in_channels,
            layer.out_channels,
            layer.kernel,
            layer.stride,
            layer.padding,
            bias=not layer.batch_norm,
        )
    ]
    if layer.batch_norm:
        parts.append(nn.BatchNorm2d(layer.out_channels))
    return _with_activation(parts, layer)


def _build_linear(layer: Layer) -> nn.Module:
    parts: list[nn.Module] = [
        nn.Linear(layer.in_channels, layer.out_channels, bias=not layer.batch_norm)
    ]
    if layer.batch_norm:
        parts.append(nn.BatchNorm1d(layer.out_channels))
    return _with_activation(parts, layer)


def _with_activation(parts: list[nn.Module], layer: Layer) -> nn.Sequential:
    activation = activation_module(layer)
    return nn.Sequential(*parts, *([activation] if activation is not None else []))


def _layer_module(layer: Layer) -> nn.Module:
    if layer.kind not in KIND_SURGERY:
        raise InvalidArchitecture(f"unknown layer kind {layer.kind!r}")
    return KIND_SURGERY[layer.kind].build(layer)


def build_module(spec: NetworkSpec, seed: int | None = None) -> SpecNetwork:
    """Build a freshly initialised network; ``seed`` makes the initialisation reproducible."""
    spec.shapes()
    if seed is None:
        return SpecNetwork(spec)
    with seeded_global_rng(seed):
        return SpecNetwork(spec)


# ---- students -----------------------------------------------------------------------------------


def build_student(
    teacher: SpecNetwork,
    student: StudentDescription | Sequence[float],
    *,
    inherit_weights: bool = True,
    seed: int = 0,
) -> tuple[StudentPlan, SpecNetwork]:
    """Build the student for per-unit ratios of ``teacher``.

    With ``inherit_weights`` every student layer starts from its teacher layer where shapes allow:
    shrunk layers keep their largest-L1-norm filters and their consumers keep the matching input
    channels; a layer whose input no longer corresponds to the teacher's is re-initialised.
    Without it the student is re-initialised from ``seed``, as in the paper.

    Raises:
        InvalidArchitecture: the decisions do not give a working, smaller network.
    """
    if not isinstance(student, StudentDescription):
        student = StudentDescription(teacher.spec, tuple(student))
    if student.teacher.key != teacher.spec.key:
        raise InvalidArchitecture(
            "the student description was made for a different teacher architecture"
        )
    plan = student.plan()
    module = build_module(plan.spec, seed)
    if inherit_weights:
        with torch.no_grad():
            _inherit(teacher, module, plan)
    return plan, module


def _top_channels(weight: torch.Tensor, keep: int) -> torch.Tensor:
    """Indices (ascending) of the ``keep`` output channels with the largest L1 norm."""
    if keep >= weight.shape[0]:
        return torch.arange(weight.shape[0])
    norms = weight.detach().abs().flatten(1).sum(1)
    return norms.topk(keep).indices.sort().values


def _copy_bn(
    target: nn.modules.batchnorm._BatchNorm, source: nn.Module, index: torch.Tensor
) -> None:
    for name in ("weight", "bias", "running_mean", "running_var"):
        getattr(target, name).copy_(getattr(source, name)[index])
    target.num_batches_tracked.copy_(source.num_batches_tracked)


def _copy_conv_bn(
    target: nn.Sequential, source: nn.Sequential, out_idx: torch.Tensor, in_idx: torch.Tensor
) -> None:
    target[0].weight.copy_(source[0].weight[out_idx][:, in_idx])
    _copy_bn(target[1], source[1], out_idx)


def _inherit(teacher: SpecNetwork, student: SpecNetwork, plan: StudentPlan) -> None:
    """Copy teacher weights into ``student`` layer by layer, following the channels each layer keeps."""
    teacher_layers = teacher.spec.layers
    # For each teacher layer, the teacher layer that produced its input channels (-1: the image).
    producer_of, last = [], -1
    for index, layer in enumerate(teacher_layers):
        producer_of.append(last)
        if layer.changes_channels:
            last = index
    student_shapes = plan.spec.shapes()
    # The channels flowing at this point: which teacher layer made them, and which of them survive.
    source, kept = -1, torch.arange(teacher.spec.input_shape[0])
    inherited = 0
    for j, (layer, origin, width) in enumerate(
        zip(plan.spec.layers, plan.origins, plan.kept_widths, strict=True)
    ):
        t_layer = teacher_layers[origin]
        surgery = KIND_SURGERY[layer.kind]
        if not layer.changes_channels:
            kept = surgery.renumber(kept, student_shapes[j][0])
            continue
        if source == producer_of[origin]:
            in_idx = kept
        elif layer.in_channels == t_layer.in_channels:
            in_idx = torch.arange(layer.in_channels)
        else:
            in_idx = None
        s_mod, t_mod = student[j], teacher[origin]
        if in_idx is not None and len(in_idx) == layer.in_channels:
            surgery.inherit(layer, s_mod, t_mod, in_idx, width)
            inherited += 1
        out_idx = surgery.kept_outputs(layer, t_mod, width)
        source, kept = origin, out_idx if in_idx is not None else torch.arange(layer.out_channels)
    logger.debug("inherited teacher weights into %d student layers", inherited)


def _all_outputs(layer: Layer, t_mod: nn.Module, width: int) -> torch.Tensor:
    return torch.arange(layer.out_channels)


def _top_outputs(layer: Layer, t_mod: nn.Module, width: int) -> torch.Tensor:
    return _top_channels(t_mod[0].weight, width)


def _inherit_conv(
    layer: Layer, s_mod: nn.Module, t_mod: nn.Module, in_idx: torch.Tensor, width: int
) -> None:
    out_idx = _top_channels(t_mod[0].weight, width)
    s_mod[0].weight.copy_(t_mod[0].weight[out_idx][:, in_idx])
    if layer.batch_norm:
        _copy_bn(s_mod[1], t_mod[1], out_idx)
    else:
        s_mod[0].bias.copy_(t_mod[0].bias[out_idx])


def _inherit_linear(
    layer: Layer, s_mod: nn.Module, t_mod: nn.Module, in_idx: torch.Tensor, width: int
) -> None:
    out_idx = _top_channels(t_mod[0].weight, width)
    s_mod[0].weight.copy_(t_mod[0].weight[out_idx][:, in_idx])
    if layer.batch_norm:
        _copy_bn(s_mod[1], t_mod[1], out_idx)
    else:
        s_mod[0].bias.copy_(t_mod[0].bias[out_idx])


def _inherit_shortcut(
    layer: Layer, s_mod: nn.Module, t_mod: nn.Module, in_idx: torch.Tensor, width: int
) -> None:
    # a shortcut only ever comes from a removed projection block: its skip path
    _copy_conv_bn(s_mod, t_mod.downsample, torch.arange(layer.out_channels), in_idx)


def _inherit_residual(
    layer: Layer, s_mod: nn.Module, t_mod: nn.Module, in_idx: torch.Tensor, width: int
) -> None:
    inner = _top_channels(t_mod.conv1.weight, width)
    every = torch.arange(layer.out_channels)
    s_mod.conv1.weight.copy_(t_mod.conv1.weight[inner][:, in_idx])
    _copy_bn(s_mod.bn1, t_mod.bn1, inner)
    if layer.block == "bottleneck":
        s_mod.conv2.weight.copy_(t_mod.conv2.weight[inner][:, inner])
        _copy_bn(s_mod.bn2, t_mod.bn2, inner)
        s_mod.conv3.weight.copy_(t_mod.conv3.weight[:, inner])
        _copy_bn(s_mod.bn3, t_mod.bn3, every)
    else:
        s_mod.conv2.weight.copy_(t_mod.conv2.weight[:, inner])
        _copy_bn(s_mod.bn2, t_mod.bn2, every)
    if layer.projection:
        _copy_conv_bn(s_mod.downsample, t_mod.downsample, every, in_idx)


def _renumber_flattened(kept: torch.Tensor, shape: TensorShape) -> torch.Tensor:
    """Channel ``c`` of a ``C x H x W`` map becomes features ``c*H*W .. c*H*W + H*W - 1``.

    Flattening features that are already flat (after a global pool) keeps their numbers.
    """
    if len(shape.dims) == 1:
        return kept
    _, h, w = shape.dims
    return (kept[:, None] * (h * w) + torch.arange(h * w)[None, :]).flatten()


@dataclass(frozen=True)
class KindSurgery:
    """How layers of one kind become modules and inherit a teacher layer's weights.

    Attributes:
        build: ``layer -> module`` implementing it, freshly initialised.
        inherit: for kinds that change channels, ``(layer, student module, teacher module, kept
            input channels, kept width) -> None`` copies the teacher's weights for the kept
            channels; ``width`` is the layer's kept output (for residual blocks, inner) width.
        kept_outputs: for kinds that change channels, ``(layer, teacher module, width) -> indices``
            of the teacher's output channels the student layer keeps (ascending).
        renumber: for kinds that keep the channels, ``(kept indices, input shape) -> indices`` of
            the kept channels in the layer's output.
    """

    build: Callable[[Layer], nn.Module]
    inherit: Callable[[Layer, nn.Module, nn.Module, torch.Tensor, int], None] | None = None
    kept_outputs: Callable[[Layer, nn.Module, int], torch.Tensor] | None = None
    renumber: Callable[[torch.Tensor, TensorShape], torch.Tensor] = lambda kept, shape: kept


# Adding a layer kind means adding its entry here and one in ``arch.KINDS``.
KIND_SURGERY: Mapping[str, KindSurgery] = MappingProxyType(
    {
        "conv": KindSurgery(_build_conv, _inherit_conv, _top_outputs),
        "linear": KindSurgery(_build_linear, _inherit_linear, _top_outputs),
        "residual": KindSurgery(_residual, _inherit_residual, _all_outputs),
        "maxpool": KindSurgery(
            lambda layer: nn.MaxPool2d(layer.kernel, layer.stride, layer.padding)
        ),
        "avgpool": KindSurgery(
            lambda layer: nn.AvgPool2d(layer.kernel, layer.stride, layer.padding)
        ),
        "global_avgpool": KindSurgery(
            lambda layer: nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        ),
        "adaptive_avgpool": KindSurgery(lambda layer: nn.AdaptiveAvgPool2d(layer.output_size)),
        "adaptive_maxpool": KindSurgery(lambda layer: nn.AdaptiveMaxPool2d(layer.output_size)),
        "flatten": KindSurgery(lambda layer: nn.Flatten(), renumber=_renumber_flattened),
        "dropout": KindSurgery(lambda layer: nn.Dropout(layer.p)),
        "shortcut": KindSurgery(
            lambda layer: _conv_bn(layer.in_channels, layer.out_channels, 1, layer.stride, 0),
            _inherit_shortcut,
            _all_outputs,
        ),
    }
)
"""Module building and weight inheritance of every layer kind, keyed by :attr:`Layer.kind`."""
