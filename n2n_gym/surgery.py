"""Network surgery: network descriptions to torch modules and back, and students with inherited weights.

Every network the library trains is a :class:`SpecNetwork`: an ``nn.Sequential`` with one child per
layer of its :class:`~n2n_gym.arch.NetworkSpec`, so layer ``i`` of the description is module ``i``.
A user's own model is converted once by :func:`convert_module`, which refuses anything it does not
understand by naming the module.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from n2n_gym.arch import InvalidArchitecture, Layer, NetworkSpec, StudentDescription, StudentPlan

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


def _layer_module(layer: Layer) -> nn.Module:
    kind = layer.kind
    if kind == "conv":
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
    if kind == "linear":
        parts = [nn.Linear(layer.in_channels, layer.out_channels)]
        if layer.activation == "relu":
            parts.append(nn.ReLU(inplace=True))
        return nn.Sequential(*parts)
    if kind == "residual":
        return _residual(layer)
    if kind == "shortcut":
        return _conv_bn(layer.in_channels, layer.out_channels, 1, layer.stride, 0)
    if kind == "maxpool":
        return nn.MaxPool2d(layer.kernel, layer.stride, layer.padding)
    if kind == "avgpool":
        return nn.AvgPool2d(layer.kernel, layer.stride, layer.padding)
    if kind == "global_avgpool":
        return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
    if kind == "flatten":
        return nn.Flatten()
    if kind == "dropout":
        return nn.Dropout(layer.p)
    raise InvalidArchitecture(f"unknown layer kind {kind!r}")


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
        if layer.kind == "flatten":
            _, h, w = student_shapes[j][0].dims
            kept = (kept[:, None] * (h * w) + torch.arange(h * w)[None, :]).flatten()
            continue
        if not layer.changes_channels:
            continue
        if source == producer_of[origin]:
            in_idx = kept
        elif layer.in_channels == t_layer.in_channels:
            in_idx = torch.arange(layer.in_channels)
        else:
            in_idx = None
        s_mod, t_mod = student[j], teacher[origin]
        if in_idx is not None and len(in_idx) == layer.in_channels:
            _inherit_layer(layer, s_mod, t_mod, in_idx, width)
            inherited += 1
        out_idx = _output_index(layer, t_mod, width)
        source, kept = origin, out_idx if in_idx is not None else torch.arange(layer.out_channels)
    logger.debug("inherited teacher weights into %d student layers", inherited)


def _output_index(layer: Layer, t_mod: nn.Module, width: int) -> torch.Tensor:
    if layer.kind in ("residual", "shortcut"):
        return torch.arange(layer.out_channels)
    return _top_channels(t_mod[0].weight, width)


def _inherit_layer(
    layer: Layer, s_mod: nn.Module, t_mod: nn.Module, in_idx: torch.Tensor, width: int
) -> None:
    if layer.kind == "conv":
        out_idx = _top_channels(t_mod[0].weight, width)
        s_mod[0].weight.copy_(t_mod[0].weight[out_idx][:, in_idx])
        if layer.batch_norm:
            _copy_bn(s_mod[1], t_mod[1], out_idx)
        else:
            s_mod[0].bias.copy_(t_mod[0].bias[out_idx])
    elif layer.kind == "linear":
        out_idx = _top_channels(t_mod[0].weight, width)
        s_mod[0].weight.copy_(t_mod[0].weight[out_idx][:, in_idx])
        s_mod[0].bias.copy_(t_mod[0].bias[out_idx])
    elif layer.kind == "shortcut":
        _copy_conv_bn(s_mod, t_mod.downsample, torch.arange(layer.out_channels), in_idx)
    else:  # residual block
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
        if isinstance(mod, BasicBlock | Bottleneck) or not list(mod.children()):
            leaves.append((name or type(mod).__name__, mod))
            return
        for child_name, child in mod.named_children():
            walk(f"{name}.{child_name}" if name else child_name, child)

    walk("", module)
    layers: list[Layer] = []
    sources: list[list[nn.Module]] = []
    spatial = True
    for name, leaf in leaves:
        if isinstance(leaf, nn.BatchNorm2d | nn.ReLU):
            previous = layers[-1] if layers else None
            if previous is None or (
                previous.kind != "conv"
                and not (isinstance(leaf, nn.ReLU) and previous.kind == "linear")
            ):
                raise UnsupportedModule(
                    f"module '{name}' ({type(leaf).__name__}) does not follow a conv or linear layer"
                )
            if isinstance(leaf, nn.BatchNorm2d):
                if previous.batch_norm or previous.activation:
                    raise UnsupportedModule(
                        f"module '{name}': BatchNorm2d must come right after its Conv2d"
                    )
                layers[-1] = Layer(**{**previous.__dict__, "batch_norm": True})
            else:
                layers[-1] = Layer(**{**previous.__dict__, "activation": "relu"})
            sources[-1].append(leaf)
            continue
        layer = _leaf_layer(name, leaf)
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


def _leaf_layer(name: str, leaf: nn.Module) -> Layer | None:
    def pair(value: int | tuple[int, ...]) -> int:
        values = (value, value) if isinstance(value, int) else tuple(value)
        if len(set(values)) != 1:
            raise UnsupportedModule(
                f"module '{name}': only square kernels, strides and paddings are supported"
            )
        return int(values[0])

    if isinstance(leaf, nn.Conv2d):
        if (
            leaf.groups != 1
            or pair(leaf.dilation) != 1
            or not isinstance(leaf.padding, tuple | int)
        ):
            raise UnsupportedModule(
                f"module '{name}': grouped, dilated or string-padded convolutions are not supported"
            )
        return Layer(
            "conv",
            leaf.in_channels,
            leaf.out_channels,
            kernel=pair(leaf.kernel_size),
            stride=pair(leaf.stride),
            padding=pair(leaf.padding),
        )
    if isinstance(leaf, nn.Linear):
        return Layer("linear", leaf.in_features, leaf.out_features)
    if isinstance(leaf, BasicBlock | Bottleneck):
        projection = leaf.downsample is not None
        stride = leaf.conv2.stride[0] if isinstance(leaf, Bottleneck) else leaf.conv1.stride[0]
        block = "bottleneck" if isinstance(leaf, Bottleneck) else "basic"
        out = leaf.bn3.num_features if isinstance(leaf, Bottleneck) else leaf.bn2.num_features
        return Layer(
            "residual",
            leaf.conv1.in_channels,
            out,
            stride=stride,
            block=block,
            width=leaf.bn1.num_features,
            projection=projection,
        )
    if isinstance(leaf, nn.MaxPool2d | nn.AvgPool2d):
        kind = "maxpool" if isinstance(leaf, nn.MaxPool2d) else "avgpool"
        return Layer(
            kind,
            kernel=pair(leaf.kernel_size),
            stride=pair(leaf.stride or leaf.kernel_size),
            padding=pair(leaf.padding),
        )
    if isinstance(leaf, nn.AdaptiveAvgPool2d):
        if pair(leaf.output_size) != 1:
            raise UnsupportedModule(
                f"module '{name}': only AdaptiveAvgPool2d(1) (global pooling) is supported"
            )
        return Layer("global_avgpool")
    if isinstance(leaf, nn.Flatten):
        return Layer("flatten")
    if isinstance(leaf, nn.Dropout):
        return Layer("dropout", p=float(leaf.p))
    if isinstance(leaf, nn.Identity):
        return None
    raise UnsupportedModule(
        f"module '{name}' ({type(leaf).__name__}) is not supported; supported layers: Conv2d, BatchNorm2d, ReLU, "
        "Linear, MaxPool2d, AvgPool2d, AdaptiveAvgPool2d(1), Flatten, Dropout, torchvision BasicBlock/Bottleneck"
    )


def _load_parts(target: nn.Module, parts: list[nn.Module]) -> None:
    """Copy a user's weights into one built layer."""
    if not parts:
        return
    source = parts[0]
    if isinstance(source, BasicBlock | Bottleneck):
        target.load_state_dict(source.state_dict())
        return
    if not isinstance(source, nn.Conv2d | nn.Linear):
        return
    target[0].weight.copy_(source.weight)
    bias = source.bias if source.bias is not None else torch.zeros(source.weight.shape[0])
    norm = next((p for p in parts if isinstance(p, nn.BatchNorm2d)), None)
    if norm is None:
        target[0].bias.copy_(bias)
        return
    target[1].load_state_dict(norm.state_dict())
    # A conv bias before BatchNorm is exactly a shift of the running mean (and cancels in training).
    target[1].running_mean.sub_(bias)


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
