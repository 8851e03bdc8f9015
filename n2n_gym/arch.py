"""Network descriptions: layers, decision units, shapes, parameter and FLOP counts, descriptors.

Everything here is pure Python/numpy, so descriptions can be hashed, cached, sent to other
processes and turned into observations without touching torch.

A network is an ordered tuple of :class:`Layer` records. Some layers are *decision units* — the
layer groups a person would name (a conv+BN+activation group, a linear layer, a residual block) —
and those are what a compression policy decides on, one step each. Pooling, flattening and dropout
are structural and never decided on.

Everything that depends on a layer's kind (output shape, parameter and FLOP counts, how decisions
resize it, its descriptor features) is one :class:`LayerKind` entry in :data:`KINDS`; adding a
layer kind means adding one entry there and one in ``surgery.KIND_SURGERY``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from types import MappingProxyType
from typing import Any

import numpy as np

# The activations a conv or linear layer (or a residual block) may end in. A residual block's
# ``None`` is its ReLU (torchvision's blocks), so the descriptions of existing ResNets stay as they were.
ACTIVATIONS = (None, "relu", "relu6", "gelu", "gelu_tanh", "silu", "leaky_relu")
RESIDUAL_BLOCKS = ("basic", "bottleneck")

# Descriptor layout; keep in sync with `unit_descriptor`.
DESCRIPTOR_FIELDS = (
    "type_conv",
    "type_linear",
    "type_residual_basic",
    "type_residual_bottleneck",
    "kernel",
    "stride",
    "padding",
    "outputs",
    "inner_width",
    "skip_start",
    "skip_end",
    "projection",
    "position",
    "param_share",
    "flop_share",
)
DESCRIPTOR_SIZE = len(DESCRIPTOR_FIELDS)
_LOG_WIDTH_SCALE = math.log2(4096)  # widths up to 4096 map into [0, 1]


class InvalidArchitecture(ValueError):
    """A network description (or a set of decisions on one) that cannot form a working network."""


@dataclass(frozen=True)
class Layer:
    """One layer of a network description.

    Channels mean feature maps for convolutional layers and features for linear layers.

    Attributes:
        kind: one of :data:`LAYER_KINDS`.
        in_channels: input channels (conv, residual, shortcut) or features (linear).
        out_channels: output channels or features.
        kernel: kernel size (conv, pools).
        stride: stride (conv, pools, residual, shortcut).
        padding: zero padding (conv, pools).
        batch_norm: conv followed by BatchNorm2d, linear followed by BatchNorm1d.
        activation: one of :data:`ACTIVATIONS`: conv and linear layers end in it (``None``: none);
            a residual block uses it inside and after its sum (``None``: ReLU).
        negative_slope: the slope of ``"leaky_relu"`` below zero.
        block: residual block type, ``"basic"`` or ``"bottleneck"``.
        width: inner width of a residual block (channels of its inner convolutions).
        projection: residual block / shortcut with a 1x1 conv + BN on the skip path.
        p: dropout probability.
        output_size: the height and width an adaptive pool produces.
    """

    kind: str
    in_channels: int = 0
    out_channels: int = 0
    kernel: int = 0
    stride: int = 1
    padding: int = 0
    batch_norm: bool = False
    activation: str | None = None
    negative_slope: float = 0.01
    block: str | None = None
    width: int = 0
    projection: bool = False
    p: float = 0.0
    output_size: int = 0

    @property
    def is_unit(self) -> bool:
        """Whether a policy decides on this layer."""
        kind = KINDS.get(self.kind)
        return kind is not None and kind.is_unit

    @property
    def changes_channels(self) -> bool:
        kind = KINDS.get(self.kind)
        return kind is not None and kind.changes_channels

    def to_dict(self) -> dict[str, Any]:
        """Only the fields that differ from their defaults, for readable JSON."""
        out: dict[str, Any] = {"kind": self.kind}
        for name, default in _layer_defaults():
            value = getattr(self, name)
            if value != default:
                out[name] = value
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Layer:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise InvalidArchitecture(f"unknown layer field(s) {sorted(unknown)} in {data}")
        return cls(**data)


@functools.cache
def _layer_defaults() -> tuple[tuple[str, Any], ...]:
    return tuple((f.name, f.default) for f in fields(Layer) if f.name != "kind")


@dataclass(frozen=True)
class TensorShape:
    """Shape of one sample: ``(C, H, W)`` for feature maps, ``(F,)`` after flattening."""

    dims: tuple[int, ...]

    @property
    def is_spatial(self) -> bool:
        return len(self.dims) == 3

    @property
    def channels(self) -> int:
        return self.dims[0]

    @property
    def numel(self) -> int:
        return math.prod(self.dims)


@dataclass(frozen=True)
class NetworkSpec:
    """A whole network: input shape, class count and the ordered layers.

    A spec is canonical: :meth:`to_json` is deterministic and :attr:`key` identifies the
    architecture, so equal specs build identical modules (see ``surgery.build_module``).
    """

    input_shape: tuple[int, int, int]
    num_classes: int
    layers: tuple[Layer, ...]
    name: str = field(default="network", compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "input_shape", tuple(int(d) for d in self.input_shape))
        object.__setattr__(self, "layers", tuple(self.layers))

    # ---- structure -------------------------------------------------------------------------
    @property
    def unit_indices(self) -> tuple[int, ...]:
        """Layer indices of the decision units, in order."""
        return tuple(i for i, layer in enumerate(self.layers) if layer.is_unit)

    @property
    def num_units(self) -> int:
        return len(self.unit_indices)

    def shapes(self) -> list[tuple[TensorShape, TensorShape]]:
        """Input and output shape of every layer; raises InvalidArchitecture on a mismatch."""
        shape = TensorShape(self.input_shape)
        result = []
        for index, layer in enumerate(self.layers):
            out = _output_shape(layer, shape, index)
            result.append((shape, out))
            shape = out
        if shape.dims != (self.num_classes,):
            raise InvalidArchitecture(
                f"network '{self.name}' outputs shape {shape.dims}, expected ({self.num_classes},)"
            )
        return result

    def layer_params(self) -> list[int]:
        """Trainable parameters of every layer (BatchNorm affine parameters included)."""
        return [_params(layer) for layer in self.layers]

    def layer_flops(self) -> list[int]:
        """Multiply-accumulates of every layer for one sample."""
        return [
            _flops(layer, inp, out)
            for layer, (inp, out) in zip(self.layers, self.shapes(), strict=True)
        ]

    @property
    def params(self) -> int:
        return sum(self.layer_params())

    @property
    def flops(self) -> int:
        return sum(self.layer_flops())

    # ---- serialisation ---------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "input_shape": list(self.input_shape),
            "num_classes": self.num_classes,
            "layers": [dict(layer) for layer in self._layer_dicts],
        }

    @functools.cached_property
    def _layer_dicts(self) -> tuple[dict[str, Any], ...]:
        # Specs are immutable and serialised on every evaluation (keys, info dicts): once is enough.
        return tuple(layer.to_dict() for layer in self.layers)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NetworkSpec:
        try:
            spec = cls(
                input_shape=tuple(data["input_shape"]),
                num_classes=int(data["num_classes"]),
                layers=tuple(Layer.from_dict(d) for d in data["layers"]),
                name=data.get("name", "network"),
            )
        except (KeyError, TypeError) as error:
            raise InvalidArchitecture(f"malformed network description: {error!r}") from error
        spec.shapes()
        return spec

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @functools.cached_property
    def key(self) -> str:
        """Hash of the architecture (the name does not count)."""
        data = self.to_dict()
        data.pop("name")
        return _digest(data)


def _digest(data: Any) -> str:
    return hashlib.sha256(
        json.dumps(data, sort_keys=True, separators=(",", ":")).encode()
    ).hexdigest()[:20]


# ---- layer kinds ------------------------------------------------------------------------------
# Everything kind-specific lives in one handler table, in the style of Torch-Pruning's per-layer-type
# functions; the rest of the module dispatches through it.


@dataclass(frozen=True)
class LayerKind:
    """What one layer kind computes: its output shape, size, cost and how decisions resize it.

    Attributes:
        output_shape: ``(layer, input shape, where) -> output shape``; raises InvalidArchitecture,
            starting the message with ``where``, when the layer cannot take that input.
        params: ``layer -> trainable parameters`` (BatchNorm affine parameters included).
        flops: ``(layer, input shape, output shape) -> multiply-accumulates`` for one sample.
        resize: ``(layer, new input channels, ratio) -> (layer or None, kept width)``: the layer in a
            student, ``None`` when the decision removes it, and how many of its output (or inner)
            channels it keeps. Only decision units get ratios below one.
        window: ``layer -> (kernel, padding)`` of its sliding window.
        descriptor: ``layer -> {field: value}`` for the kind-specific :data:`DESCRIPTOR_FIELDS`
            (type flags, inner width, skip path); fields it leaves out read 0.
        is_unit: a policy decides on layers of this kind.
        changes_channels: the layer sets the channel (feature) count of what follows.
        skip_path: the layer also carries its input on a residual skip path, so its input and
            output widths are tied to a residual sum and decisions resize only its inner width.
    """

    output_shape: Callable[[Layer, TensorShape, str], TensorShape]
    params: Callable[[Layer], int] = lambda layer: 0
    flops: Callable[[Layer, TensorShape, TensorShape], int] = lambda layer, inp, out: 0
    resize: Callable[[Layer, int, float], tuple[Layer | None, int]] = lambda layer, c, r: (layer, 0)
    window: Callable[[Layer], tuple[int, int]] = lambda layer: (layer.kernel, layer.padding)
    descriptor: Callable[[Layer], dict[str, float]] = lambda layer: {}
    is_unit: bool = False
    changes_channels: bool = False
    skip_path: bool = False


def _conv_out(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def _feature_maps(shape: TensorShape, where: str) -> tuple[int, int, int]:
    if not shape.is_spatial:
        raise InvalidArchitecture(f"{where}: needs feature maps but gets flat input {shape.dims}")
    return shape.dims  # type: ignore[return-value]


def _slide(layer: Layer, channels: int, h: int, w: int, where: str) -> TensorShape:
    """Output shape of the layer's sliding window (convolution or pool) over an ``h`` x ``w`` map."""
    kernel, padding = KINDS[layer.kind].window(layer)
    h, w = _conv_out(h, kernel, layer.stride, padding), _conv_out(w, kernel, layer.stride, padding)
    if h < 1 or w < 1:
        raise InvalidArchitecture(f"{where}: feature map shrinks to {h}x{w}")
    return TensorShape((channels, h, w))


def _input_size(layer: Layer, shape: TensorShape, where: str) -> tuple[int, int]:
    """Height and width of the feature maps a conv-like layer reads, after checking its channels."""
    c, h, w = _feature_maps(shape, where)
    if c != layer.in_channels:
        raise InvalidArchitecture(f"{where}: expects {layer.in_channels} channels, gets {c}")
    return h, w


def _conv_shape(layer: Layer, shape: TensorShape, where: str) -> TensorShape:
    h, w = _input_size(layer, shape, where)
    if layer.out_channels < 1:
        raise InvalidArchitecture(f"{where}: has no output channels")
    return _slide(layer, layer.out_channels, h, w, where)


def _residual_shape(layer: Layer, shape: TensorShape, where: str) -> TensorShape:
    h, w = _input_size(layer, shape, where)
    if layer.out_channels < 1 or layer.width < 1:
        raise InvalidArchitecture(f"{where}: has no output channels")
    if layer.block not in RESIDUAL_BLOCKS:
        raise InvalidArchitecture(f"{where}: block must be one of {RESIDUAL_BLOCKS}")
    if not layer.projection and (layer.stride != 1 or layer.in_channels != layer.out_channels):
        raise InvalidArchitecture(f"{where}: identity skip needs stride 1 and equal widths")
    return _slide(layer, layer.out_channels, h, w, where)


def _pool_shape(layer: Layer, shape: TensorShape, where: str) -> TensorShape:
    c, h, w = _feature_maps(shape, where)
    return _slide(layer, c, h, w, where)


def _global_pool_shape(layer: Layer, shape: TensorShape, where: str) -> TensorShape:
    return TensorShape((_feature_maps(shape, where)[0],))


def _adaptive_pool_shape(layer: Layer, shape: TensorShape, where: str) -> TensorShape:
    if layer.output_size < 1:
        raise InvalidArchitecture(f"{where}: output_size must be at least 1")
    channels = _feature_maps(shape, where)[0]
    return TensorShape((channels, layer.output_size, layer.output_size))


def _linear_shape(layer: Layer, shape: TensorShape, where: str) -> TensorShape:
    if shape.is_spatial:
        raise InvalidArchitecture(
            f"{where}: needs flat input; add a flatten or global_avgpool layer"
        )
    if shape.channels != layer.in_channels:
        raise InvalidArchitecture(
            f"{where}: expects {layer.in_channels} features, gets {shape.channels}"
        )
    if layer.out_channels < 1:
        raise InvalidArchitecture(f"{where}: has no outputs")
    return TensorShape((layer.out_channels,))


def _conv_params(layer: Layer) -> int:
    # BatchNorm's shift stands in for the bias
    bn_or_bias = 2 * layer.out_channels if layer.batch_norm else layer.out_channels
    return layer.in_channels * layer.out_channels * layer.kernel**2 + bn_or_bias


def _residual_params(layer: Layer) -> int:
    i, w, o = layer.in_channels, layer.width, layer.out_channels
    if layer.block == "basic":
        total = 9 * i * w + 2 * w + 9 * w * o + 2 * o
    else:
        total = i * w + 2 * w + 9 * w * w + 2 * w + w * o + 2 * o
    if layer.projection:
        total += i * o + 2 * o
    return total


def _residual_flops(layer: Layer, inp: TensorShape, out: TensorShape) -> int:
    hw_out = out.dims[1] * out.dims[2]
    i, w, o = layer.in_channels, layer.width, layer.out_channels
    if layer.block == "basic":
        total = (9 * i * w + 9 * w * o) * hw_out
    else:
        # torchvision's Bottleneck strides in the 3x3 conv, so conv1 runs at input size
        total = i * w * inp.dims[1] * inp.dims[2] + (9 * w * w + w * o) * hw_out
    if layer.projection:
        total += i * o * hw_out
    return total


def _resize_outputs(layer: Layer, in_channels: int, ratio: float) -> tuple[Layer | None, int]:
    if ratio == 0.0:
        return None, 0  # the next layer adapts its input width
    out = max(1, round(layer.out_channels * ratio))
    return replace(layer, in_channels=in_channels, out_channels=out), out


def _resize_residual(layer: Layer, in_channels: int, ratio: float) -> tuple[Layer | None, int]:
    if ratio == 0.0 and not layer.projection:
        return None, 0
    if ratio == 0.0:  # a removed projection block keeps its skip path
        shortcut = Layer(
            "shortcut", in_channels, layer.out_channels, stride=layer.stride, projection=True
        )
        return shortcut, layer.out_channels
    new = replace(layer, in_channels=in_channels, width=max(1, round(layer.width * ratio)))
    return new, new.width


def _residual_descriptor(layer: Layer) -> dict[str, float]:
    return {
        f"type_residual_{layer.block}": 1.0,
        "inner_width": _log_width(layer.width),
        "skip_start": 1.0,
        "skip_end": 1.0,
        "projection": float(layer.projection),
    }


# Adding a layer kind means adding its entry here (the order sets LAYER_KINDS) and one in
# ``surgery.KIND_SURGERY``; nothing else dispatches on kinds.
KINDS: Mapping[str, LayerKind] = MappingProxyType(
    {
        "conv": LayerKind(
            _conv_shape,
            params=_conv_params,
            flops=lambda layer, inp, out: (
                layer.in_channels * layer.out_channels * layer.kernel**2 * out.dims[1] * out.dims[2]
            ),
            resize=_resize_outputs,
            descriptor=lambda layer: {"type_conv": 1.0},
            is_unit=True,
            changes_channels=True,
        ),
        "linear": LayerKind(
            _linear_shape,
            params=lambda layer: (layer.in_channels + 1 + layer.batch_norm) * layer.out_channels,
            flops=lambda layer, inp, out: layer.in_channels * layer.out_channels,
            resize=_resize_outputs,
            descriptor=lambda layer: {"type_linear": 1.0},
            is_unit=True,
            changes_channels=True,
        ),
        "residual": LayerKind(
            _residual_shape,
            params=_residual_params,
            flops=_residual_flops,
            resize=_resize_residual,
            window=lambda layer: (3, 1),
            descriptor=_residual_descriptor,
            is_unit=True,
            changes_channels=True,
            skip_path=True,
        ),
        "maxpool": LayerKind(_pool_shape),
        "avgpool": LayerKind(_pool_shape),
        "global_avgpool": LayerKind(_global_pool_shape),
        "adaptive_avgpool": LayerKind(_adaptive_pool_shape),
        "adaptive_maxpool": LayerKind(_adaptive_pool_shape),
        "flatten": LayerKind(lambda layer, shape, where: TensorShape((shape.numel,))),
        "dropout": LayerKind(lambda layer, shape, where: shape),
        # the 1x1 conv + BN skip path a removed projection block leaves behind
        "shortcut": LayerKind(
            _conv_shape,
            params=lambda layer: layer.in_channels * layer.out_channels + 2 * layer.out_channels,
            flops=lambda layer, inp, out: (
                layer.in_channels * layer.out_channels * out.dims[1] * out.dims[2]
            ),
            resize=_resize_outputs,
            window=lambda layer: (1, 0),
            changes_channels=True,
        ),
    }
)
"""The handlers of every layer kind, keyed by :attr:`Layer.kind`."""

DECISION_KINDS = tuple(name for name, kind in KINDS.items() if kind.is_unit)
STRUCTURAL_KINDS = tuple(name for name, kind in KINDS.items() if not kind.is_unit)
LAYER_KINDS = DECISION_KINDS + STRUCTURAL_KINDS


# Pools whose output size does not depend on their input's: removing a unit that changes the
# spatial size before one of them leaves the head's input as it was.
FIXED_SIZE_POOLS = ("global_avgpool", "adaptive_avgpool", "adaptive_maxpool")


def _output_shape(layer: Layer, shape: TensorShape, index: int) -> TensorShape:
    where = f"layer {index} ({layer.kind})"
    if layer.kind not in KINDS:
        raise InvalidArchitecture(f"{where}: unknown layer kind; expected one of {LAYER_KINDS}")
    if layer.activation not in ACTIVATIONS:
        raise InvalidArchitecture(
            f"{where}: unknown activation {layer.activation!r}; expected one of {ACTIVATIONS[1:]}"
        )
    return KINDS[layer.kind].output_shape(layer, shape, where)


# Unknown kinds are refused by NetworkSpec.shapes(); counting them as empty keeps the counts total.
def _params(layer: Layer) -> int:
    kind = KINDS.get(layer.kind)
    return kind.params(layer) if kind else 0


def _flops(layer: Layer, inp: TensorShape, out: TensorShape) -> int:
    kind = KINDS.get(layer.kind)
    return kind.flops(layer, inp, out) if kind else 0


# ---- decision units, masks and students ---------------------------------------------------------


@dataclass(frozen=True)
class UnitRule:
    """What may be done to one decision unit, with the reason when something is not allowed."""

    removable: bool
    shrinkable: bool
    reason: str = ""


def unit_rules(spec: NetworkSpec) -> list[UnitRule]:
    """Which units may be removed or shrunk.

    The first unit (it reads the input image) and the last (the classifier head) always stay.
    A unit that changes the spatial size may only be removed when the network pools to a fixed size
    (global or adaptive pooling) before its head; otherwise removal would change the head's input size. A unit whose output
    width feeds a residual sum cannot be shrunk on its own (the sum's widths must agree).
    """
    units = spec.unit_indices
    shapes = spec.shapes()
    has_global_pool = any(layer.kind in FIXED_SIZE_POOLS for layer in spec.layers)
    rules = []
    for position, index in enumerate(units):
        layer = spec.layers[index]
        inp, out = shapes[index]
        if position == 0:
            rules.append(
                UnitRule(
                    False,
                    layer.kind != "linear" and _feeds_only_plain(spec, index),
                    "stem: reads the input",
                )
            )
            continue
        if position == len(units) - 1:
            rules.append(UnitRule(False, False, "classifier head: its outputs are the classes"))
            continue
        skip_path = KINDS[layer.kind].skip_path
        reasons = []
        removable = True
        # removing a block leaves its skip path, which keeps the spatial size
        if (
            not skip_path
            and inp.is_spatial
            and inp.dims[1:] != out.dims[1:]
            and not has_global_pool
        ):
            removable = False
            reasons.append(
                "changes the spatial size and the head has no global or adaptive pooling"
            )
        plain = _feeds_only_plain(spec, index)
        shrinkable = skip_path or plain  # a block shrinks only its inner width
        if not shrinkable:
            reasons.append("its output width feeds a residual sum")
            if layer.in_channels != layer.out_channels:
                removable = False
        rules.append(UnitRule(removable, shrinkable, "; ".join(reasons)))
    return rules


def _feeds_only_plain(spec: NetworkSpec, index: int) -> bool:
    """Whether the output of layer ``index`` reaches no residual block's skip path."""
    for layer in spec.layers[index + 1 :]:
        if KINDS[layer.kind].skip_path:
            return False
        if layer.changes_channels:
            return True
    return True


@dataclass(frozen=True)
class StudentPlan:
    """A student derived from a teacher by per-unit width ratios.

    Attributes:
        spec: the student's network.
        origins: for every student layer, the index of the teacher layer it comes from.
        kept_widths: for every student layer, the number of the teacher layer's output (or, for
            residual blocks, inner) channels it keeps.
    """

    spec: NetworkSpec
    origins: tuple[int, ...]
    kept_widths: tuple[int, ...]


def normalise_ratios(ratios: Sequence[float], num_units: int) -> tuple[float, ...]:
    """Validate per-unit ratios and round them so equal decisions hash equally."""
    ratios = tuple(round(float(r), 4) for r in ratios)
    if len(ratios) != num_units:
        raise InvalidArchitecture(
            f"got {len(ratios)} decisions for a network with {num_units} units"
        )
    for r in ratios:
        if not 0.0 <= r <= 1.0 or math.isnan(r):
            raise InvalidArchitecture(
                f"width ratio {r} is outside [0, 1] (0 removes a unit, 1 keeps it whole)"
            )
    return ratios


def derive_student(teacher: NetworkSpec, ratios: Sequence[float]) -> StudentPlan:
    """Apply per-unit decisions to a teacher: 0 removes a unit, 1 keeps it, values between shrink it.

    Downstream layers adapt their input widths. A removed residual block leaves its shortcut
    (identity, or its projection). Raises InvalidArchitecture for decisions the rules forbid, that
    do not form a working network, or whose student is not smaller than the teacher.
    """
    ratios = normalise_ratios(ratios, teacher.num_units)
    decisions = dict(
        zip(teacher.unit_indices, zip(ratios, unit_rules(teacher), strict=True), strict=True)
    )
    layers: list[Layer] = []
    origins: list[int] = []
    kept: list[int] = []
    shape = TensorShape(teacher.input_shape)
    for index, layer in enumerate(teacher.layers):
        ratio, rule = decisions.get(index, (1.0, None))
        where = f"unit {teacher.unit_indices.index(index)} ({layer.kind})" if rule else ""
        if rule and ratio == 0.0 and not rule.removable:
            raise InvalidArchitecture(f"{where} cannot be removed: {rule.reason}")
        if rule and 0.0 < ratio < 1.0 and not rule.shrinkable:
            raise InvalidArchitecture(f"{where} cannot be shrunk: {rule.reason}")
        # unit_rules() above has checked every kind
        new, kept_width = KINDS[layer.kind].resize(layer, shape.channels, ratio)
        if new is None:
            continue
        try:
            shape = _output_shape(new, shape, len(layers))
        except InvalidArchitecture as error:
            raise InvalidArchitecture(
                f"decisions {list(ratios)} give a broken network: {error}"
            ) from error
        layers.append(new)
        origins.append(index)
        kept.append(kept_width)
    spec = NetworkSpec(
        teacher.input_shape, teacher.num_classes, tuple(layers), name=f"{teacher.name}-student"
    )
    spec.shapes()
    if any(r < 1.0 for r in ratios) and spec.params >= teacher.params:
        raise InvalidArchitecture(
            f"decisions {list(ratios)} give {spec.params} parameters, not fewer than the teacher's {teacher.params}"
        )
    return StudentPlan(spec, tuple(origins), tuple(kept))


# ---- descriptors -------------------------------------------------------------------------------


def _log_width(width: int) -> float:
    return min(math.log2(max(width, 1)) / _LOG_WIDTH_SCALE, 1.5)


def unit_descriptors(spec: NetworkSpec) -> np.ndarray:
    """The paper's per-layer state, one row per decision unit, normalised network-independently.

    Types are one-hot; kernel, stride and padding are scaled by typical maxima; widths are
    log2-scaled so a policy trained on one teacher reads another teacher's units the same way;
    position is relative; parameter and FLOP shares say how much removing the unit saves.
    """
    units = spec.unit_indices
    params = spec.layer_params()
    flops = spec.layer_flops()
    total_params, total_flops = max(sum(params), 1), max(sum(flops), 1)
    rows = np.zeros((len(units), DESCRIPTOR_SIZE), dtype=np.float32)
    for position, index in enumerate(units):
        layer = spec.layers[index]
        kind = KINDS[layer.kind]
        kernel, padding = kind.window(layer)
        values = {
            "kernel": kernel / 7.0,
            "stride": layer.stride / 2.0,
            "padding": padding / 3.0,
            "outputs": _log_width(layer.out_channels),
            "position": position / max(len(units) - 1, 1),
            "param_share": params[index] / total_params,
            "flop_share": flops[index] / total_flops,
            **kind.descriptor(layer),
        }
        rows[position] = [float(values.get(name, 0.0)) for name in DESCRIPTOR_FIELDS]
    return rows


@dataclass(frozen=True)
class StudentDescription:
    """A student as the teacher plus one width ratio per decision unit; canonical and hashable.

    The ratios are the whole decision (0 removes a unit, 1 keeps it, values between shrink it), so a
    stage-2 student of a stage-1 result is simply the same teacher with more ratios below one, and
    compression is always measured against the original teacher. Rebuilding the student from the
    description (``surgery.build_student``) gives the same module, weights included, for the same
    teacher weights, seed and inheritance setting.
    """

    teacher: NetworkSpec
    ratios: tuple[float, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "ratios", normalise_ratios(self.ratios, self.teacher.num_units))

    def plan(self) -> StudentPlan:
        return _plan(self.teacher, self.ratios)

    @property
    def key(self) -> str:
        return _digest({"teacher": self.teacher.key, "ratios": self.ratios})

    def to_dict(self) -> dict[str, Any]:
        return {"teacher": self.teacher.to_dict(), "ratios": list(self.ratios)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StudentDescription:
        try:
            return cls(NetworkSpec.from_dict(data["teacher"]), tuple(data["ratios"]))
        except (KeyError, TypeError) as error:
            raise InvalidArchitecture(f"malformed student description: {error!r}") from error

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> StudentDescription:
        return cls.from_dict(json.loads(text))


# Plans are immutable: a search that meets a student again (every table search does) reuses it.
@functools.lru_cache(maxsize=8192)
def _plan(teacher: NetworkSpec, ratios: tuple[float, ...]) -> StudentPlan:
    return derive_student(teacher, ratios)
