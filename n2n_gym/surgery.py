"""Network surgery: network descriptions to torch modules and back, and students with inherited weights.

Every network the library trains is a :class:`SpecNetwork`: an ``nn.Sequential`` with one child per
layer of its :class:`~n2n_gym.arch.NetworkSpec`, so layer ``i`` of the description is module ``i``.
A user's own model is converted once by :func:`convert_module`, which refuses anything it does not
understand by naming the module.

Everything that depends on a layer's kind is one :class:`KindSurgery` entry in
:data:`KIND_SURGERY` (building its module, inheriting a teacher's weights); adding a layer kind
means adding one entry there and one in ``arch.KINDS``. Converting a user's module goes through
:data:`MODULE_CONVERTERS`, one :class:`ModuleConverter` per torch module type.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from types import MappingProxyType

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from n2n_gym.arch import (
    InvalidArchitecture,
    Layer,
    NetworkSpec,
    StudentDescription,
    StudentPlan,
    TensorShape,
)

logger = logging.getLogger(__name__)


class UnsupportedModule(InvalidArchitecture):
    """A user's module contains a layer the surgery does not understand."""


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


def _residual(layer: Layer) -> nn.Module:
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
    if layer.activation == "relu":
        parts.append(nn.ReLU(inplace=True))
    return nn.Sequential(*parts)


def _build_linear(layer: Layer) -> nn.Module:
    parts: list[nn.Module] = [nn.Linear(layer.in_channels, layer.out_channels)]
    if layer.activation == "relu":
        parts.append(nn.ReLU(inplace=True))
    return nn.Sequential(*parts)


def _layer_module(layer: Layer) -> nn.Module:
    if layer.kind not in KIND_SURGERY:
        raise InvalidArchitecture(f"unknown layer kind {layer.kind!r}")
    return KIND_SURGERY[layer.kind].build(layer)


def build_module(spec: NetworkSpec, seed: int | None = None) -> SpecNetwork:
    """Build a freshly initialised network; ``seed`` makes the initialisation reproducible."""
    spec.shapes()
    if seed is None:
        return SpecNetwork(spec)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
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


def _copy_bn(target: nn.BatchNorm2d, source: nn.BatchNorm2d, index: torch.Tensor) -> None:
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


# ---- users' own modules -------------------------------------------------------------------------


def convert_module(
    module: nn.Module, input_shape: tuple[int, int, int], num_classes: int | None = None
) -> SpecNetwork:
    """Convert a user's trained model into a :class:`SpecNetwork` with the same weights.

    Understands models whose forward pass runs their submodules in registration order: nested
    ``nn.Sequential`` containers of ``Conv2d`` (+ ``BatchNorm2d``) (+ ``ReLU``), ``Linear``,
    ``MaxPool2d``, ``AvgPool2d``, ``AdaptiveAvgPool2d(1)``, ``Flatten``, ``Dropout`` and torchvision's
    ``BasicBlock``/``Bottleneck`` — which covers torchvision's ResNets and plain VGG-style CNNs.
    The converted network is checked against the original on a random batch.

    Raises:
        UnsupportedModule: naming the first submodule that is not understood, or when the converted
            network computes something different from the original.
    """
    layers, sources = _describe(module, input_shape)
    out_features = layers[-1].out_channels if layers and layers[-1].kind == "linear" else None
    if out_features is None:
        raise UnsupportedModule("the model must end in an nn.Linear classifier head")
    if num_classes is not None and out_features != num_classes:
        raise UnsupportedModule(
            f"the model's head has {out_features} outputs but the data has {num_classes} classes"
        )
    spec = NetworkSpec(tuple(input_shape), out_features, tuple(layers), name=type(module).__name__)
    try:
        spec.shapes()
    except InvalidArchitecture as error:
        raise UnsupportedModule(
            f"the model does not fit input shape {tuple(input_shape)}: {error}"
        ) from error
    network = SpecNetwork(spec)
    with torch.no_grad():
        for target, parts in zip(network, sources, strict=True):
            _load_parts(target, parts)
    _check_same_function(module, network, input_shape)
    return network


def _describe(
    module: nn.Module, input_shape: tuple[int, int, int]
) -> tuple[list[Layer], list[list[nn.Module]]]:
    """Walk the module tree in registration order, grouping leaves into layers."""
    leaves: list[tuple[str, nn.Module]] = []

    def walk(name: str, mod: nn.Module) -> None:
        if isinstance(mod, nn.Sequential | nn.ModuleList | nn.ModuleDict) and not len(mod):
            return  # an empty container computes nothing
        converter = _converter(mod)
        if (converter is not None and converter.whole) or not list(mod.children()):
            leaves.append((name or type(mod).__name__, mod))
            return
        for child_name, child in mod.named_children():
            walk(f"{name}.{child_name}" if name else child_name, child)

    walk("", module)
    layers: list[Layer] = []
    sources: list[list[nn.Module]] = []
    spatial = True
    for name, leaf in leaves:
        converter = _converter(leaf)
        if converter is None:
            raise UnsupportedModule(
                f"module '{name}' ({type(leaf).__name__}) is not supported; supported layers: "
                + ", ".join(dict.fromkeys(c.label for c in MODULE_CONVERTERS.values() if c.label))
            )
        if converter.fold is not None:
            layers[-1] = converter.fold(name, leaf, layers[-1] if layers else None)
            sources[-1].append(leaf)
            continue
        layer = converter.layer(name, leaf)
        if layer is None:
            continue
        if layer.kind == "linear" and spatial:
            layers.append(Layer("flatten"))
            sources.append([])
            spatial = False
        if layer.kind in ("global_avgpool", "flatten"):
            spatial = False
        layers.append(layer)
        sources.append([leaf])
    del input_shape  # shapes are checked by the caller once the whole list is known
    return layers, sources


def _square(name: str, value: int | tuple[int, ...]) -> int:
    values = (value, value) if isinstance(value, int) else tuple(value)
    if len(set(values)) != 1:
        raise UnsupportedModule(
            f"module '{name}': only square kernels, strides and paddings are supported"
        )
    return int(values[0])


def _conv_layer(name: str, leaf: nn.Conv2d) -> Layer:
    if (
        leaf.groups != 1
        or _square(name, leaf.dilation) != 1
        or not isinstance(leaf.padding, tuple | int)
    ):
        raise UnsupportedModule(
            f"module '{name}': grouped, dilated or string-padded convolutions are not supported"
        )
    return Layer(
        "conv",
        leaf.in_channels,
        leaf.out_channels,
        kernel=_square(name, leaf.kernel_size),
        stride=_square(name, leaf.stride),
        padding=_square(name, leaf.padding),
    )


def _basic_block_layer(name: str, leaf: BasicBlock) -> Layer:
    return Layer(
        "residual",
        leaf.conv1.in_channels,
        leaf.bn2.num_features,
        stride=leaf.conv1.stride[0],
        block="basic",
        width=leaf.bn1.num_features,
        projection=leaf.downsample is not None,
    )


def _bottleneck_layer(name: str, leaf: Bottleneck) -> Layer:
    return Layer(
        "residual",
        leaf.conv1.in_channels,
        leaf.bn3.num_features,
        stride=leaf.conv2.stride[0],  # torchvision's Bottleneck strides in its 3x3 conv
        block="bottleneck",
        width=leaf.bn1.num_features,
        projection=leaf.downsample is not None,
    )


def _pool_layer(kind: str) -> Callable[[str, nn.Module], Layer]:
    def convert(name: str, leaf: nn.Module) -> Layer:
        return Layer(
            kind,
            kernel=_square(name, leaf.kernel_size),
            stride=_square(name, leaf.stride or leaf.kernel_size),
            padding=_square(name, leaf.padding),
        )

    return convert


def _global_pool_layer(name: str, leaf: nn.AdaptiveAvgPool2d) -> Layer:
    if _square(name, leaf.output_size) != 1:
        raise UnsupportedModule(
            f"module '{name}': only AdaptiveAvgPool2d(1) (global pooling) is supported"
        )
    return Layer("global_avgpool")


def _fold_batch_norm(name: str, leaf: nn.Module, previous: Layer | None) -> Layer:
    if previous is None or previous.kind != "conv":
        raise UnsupportedModule(
            f"module '{name}' ({type(leaf).__name__}) does not follow a conv or linear layer"
        )
    if previous.batch_norm or previous.activation:
        raise UnsupportedModule(f"module '{name}': BatchNorm2d must come right after its Conv2d")
    return replace(previous, batch_norm=True)


def _fold_relu(name: str, leaf: nn.Module, previous: Layer | None) -> Layer:
    if previous is None or previous.kind not in ("conv", "linear"):
        raise UnsupportedModule(
            f"module '{name}' ({type(leaf).__name__}) does not follow a conv or linear layer"
        )
    return replace(previous, activation="relu")


def _load_weights(target: nn.Module, parts: list[nn.Module]) -> None:
    """A Conv2d or Linear (with the BatchNorm2d folded into it) into a built conv or linear layer."""
    source = parts[0]
    target[0].weight.copy_(source.weight)
    bias = source.bias if source.bias is not None else torch.zeros(source.weight.shape[0])
    norm = next((p for p in parts if isinstance(p, nn.BatchNorm2d)), None)
    if norm is None:
        target[0].bias.copy_(bias)
        return
    target[1].load_state_dict(norm.state_dict())
    # A conv bias before BatchNorm is exactly a shift of the running mean (and cancels in training).
    target[1].running_mean.sub_(bias)


def _load_block(target: nn.Module, parts: list[nn.Module]) -> None:
    target.load_state_dict(parts[0].state_dict())


@dataclass(frozen=True)
class ModuleConverter:
    """How one torch module type becomes part of a network description.

    Attributes:
        label: how the supported-layers list in error messages names it (empty: not listed).
        layer: ``(name, module) -> Layer`` for a module that starts a layer, or ``None`` for one
            that computes nothing (the default); raises UnsupportedModule naming the module.
        fold: ``(name, module, previous layer or None) -> Layer`` for a module that completes the
            previous layer instead (BatchNorm2d, ReLU).
        load: ``(built layer, [module, folded modules...]) -> None`` copies the user's weights.
        whole: converted as one layer rather than walked into (torchvision's residual blocks).
    """

    label: str
    layer: Callable[[str, nn.Module], Layer | None] = lambda name, leaf: None
    fold: Callable[[str, nn.Module, Layer | None], Layer] | None = None
    load: Callable[[nn.Module, list[nn.Module]], None] = lambda target, parts: None
    whole: bool = False


# Keyed by type and looked up along the module's MRO, so subclasses convert like their base.
MODULE_CONVERTERS: Mapping[type[nn.Module], ModuleConverter] = MappingProxyType(
    {
        nn.Conv2d: ModuleConverter("Conv2d", _conv_layer, load=_load_weights),
        nn.BatchNorm2d: ModuleConverter("BatchNorm2d", fold=_fold_batch_norm),
        nn.ReLU: ModuleConverter("ReLU", fold=_fold_relu),
        nn.Linear: ModuleConverter(
            "Linear",
            lambda name, leaf: Layer("linear", leaf.in_features, leaf.out_features),
            load=_load_weights,
        ),
        nn.MaxPool2d: ModuleConverter("MaxPool2d", _pool_layer("maxpool")),
        nn.AvgPool2d: ModuleConverter("AvgPool2d", _pool_layer("avgpool")),
        nn.AdaptiveAvgPool2d: ModuleConverter("AdaptiveAvgPool2d(1)", _global_pool_layer),
        nn.Flatten: ModuleConverter("Flatten", lambda name, leaf: Layer("flatten")),
        nn.Dropout: ModuleConverter(
            "Dropout", lambda name, leaf: Layer("dropout", p=float(leaf.p))
        ),
        BasicBlock: ModuleConverter(
            "torchvision BasicBlock/Bottleneck", _basic_block_layer, load=_load_block, whole=True
        ),
        Bottleneck: ModuleConverter(
            "torchvision BasicBlock/Bottleneck", _bottleneck_layer, load=_load_block, whole=True
        ),
        nn.Identity: ModuleConverter(""),
    }
)
"""How a user's modules convert, keyed by torch module type."""


def _converter(module: nn.Module) -> ModuleConverter | None:
    return next(
        (MODULE_CONVERTERS[t] for t in type(module).__mro__ if t in MODULE_CONVERTERS), None
    )


def _load_parts(target: nn.Module, parts: list[nn.Module]) -> None:
    """Copy a user's weights into one built layer."""
    converter = _converter(parts[0]) if parts else None
    if converter is not None:
        converter.load(target, parts)


def _check_same_function(
    original: nn.Module, converted: SpecNetwork, input_shape: tuple[int, int, int]
) -> None:
    was_training = original.training
    original.eval()
    converted.eval()
    sample = torch.randn(4, *input_shape, generator=torch.Generator().manual_seed(0))
    try:
        with torch.no_grad():
            expected, got = original(sample), converted(sample)
    except Exception as error:
        raise UnsupportedModule(
            f"the model does not run on input shape {tuple(input_shape)}: {error}"
        ) from error
    finally:
        original.train(was_training)
    if expected.shape != got.shape or not torch.allclose(expected, got, atol=1e-4, rtol=1e-3):
        raise UnsupportedModule(
            "the model's forward pass does not run its layers in registration order (or uses operations "
            "between them); rebuild it from nn.Sequential/torchvision blocks or pass a zoo name with a state dict"
        )
