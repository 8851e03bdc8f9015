"""Reading a user's trained model into a network description, by ``torch.fx`` symbolic tracing.

:func:`convert_module` traces the model's forward pass, so what the forward *does* is read, not
the order its submodules were registered in: functional activations (``F.relu``, ``x.relu()``),
``torch.flatten`` / ``x.view(x.size(0), -1)``, functional pooling and residual additions
(``out + x``, ``out += self.shortcut(x)``) read like their module forms. It then builds the
:class:`~n2n_gym.surgery.SpecNetwork` that computes the same function with the same weights and
checks that on a random batch.

Understood: ``Conv2d``, ``Linear``, ``BatchNorm1d/2d`` (after a conv or linear layer), ReLU /
ReLU6 / GELU / SiLU / LeakyReLU (module or functional), max and average pooling, adaptive pooling,
global average pooling by ``mean``, flatten, dropout, torchvision's ``BasicBlock``/``Bottleneck``,
and residual blocks written by hand in the standard forms (below), each of which becomes one
removable decision unit as in the N2N paper. Anything else is refused with one
:class:`UnsupportedModule` naming the operation and where it is (graph node, module path, source
line).

A hand-written residual block is a fork, two branches and a sum followed by an activation ``A``:

- body: ``conv3x3-BN-A-conv3x3-BN`` (basic) or ``conv1x1-BN-A-conv3x3-BN-A-conv1x1-BN``
  (bottleneck), the stride in the first 3x3 conv;
- skip: nothing (identity) or ``conv1x1-BN`` with the block's stride (projection).
"""

from __future__ import annotations

import math
import operator
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp, TensorMetadata

from n2n_gym.arch import InvalidArchitecture, Layer, NetworkSpec
from n2n_gym.surgery import SpecNetwork

__all__ = ["UnsupportedModule", "convert_module"]


class UnsupportedModule(InvalidArchitecture):
    """A user's model holds an operation the conversion does not understand."""


SUPPORTED = (
    "Conv2d, Linear, BatchNorm1d/2d, ReLU/ReLU6/GELU/SiLU/LeakyReLU (module or functional), "
    "max/avg/adaptive pooling, mean over H and W, flatten/view, Dropout, residual additions, "
    "torchvision BasicBlock/Bottleneck"
)
_TORCH_DIR = str(Path(torch.__file__).parent)


def convert_module(
    module: nn.Module, input_shape: tuple[int, int, int], num_classes: int | None = None
) -> SpecNetwork:
    """Convert a user's trained model into a :class:`SpecNetwork` with the same weights.

    Args:
        module: the model; its forward takes one image batch and returns the class logits.
        input_shape: ``(C, H, W)`` of one image.
        num_classes: the data's class count, checked against the model's head.

    Raises:
        UnsupportedModule: naming the first operation that is not understood and where it is, a
            model that cannot be traced or does not run on ``input_shape``, or (a safety net) a
            converted network that computes something else.
    """
    was_training = module.training
    try:
        graph = _trace(module, input_shape)
        layers, sources = _Reader(graph).read()
    finally:
        module.train(was_training)
    if not layers or layers[-1].kind != "linear":
        raise UnsupportedModule("the model must end in an nn.Linear classifier head")
    head = layers[-1].out_channels
    if num_classes is not None and head != num_classes:
        raise UnsupportedModule(
            f"the model's head has {head} outputs but the data has {num_classes} classes"
        )
    spec = NetworkSpec(tuple(input_shape), head, tuple(layers), name=type(module).__name__)
    try:
        spec.shapes()
    except InvalidArchitecture as error:
        raise UnsupportedModule(
            f"the model does not fit input shape {tuple(input_shape)}: {error}"
        ) from error
    network = SpecNetwork(spec)
    with torch.no_grad():
        for target, parts in zip(network, sources, strict=True):
            if parts is not None:
                parts.load(target)
    _check_same_function(module, network, input_shape)
    return network


# ---- tracing ------------------------------------------------------------------------------------


class _Tracer(fx.Tracer):
    """torch.fx's tracer, keeping torchvision's residual blocks whole (they convert as one layer)."""

    def __init__(self) -> None:
        super().__init__()
        self.record_stack_traces = True

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return isinstance(module, _torchvision_blocks()) or super().is_leaf_module(
            module, qualified_name
        )


def _trace(module: nn.Module, input_shape: tuple[int, int, int]) -> fx.GraphModule:
    # Traced in training mode, so `F.dropout(x, p, self.training)` reads as the dropout it is;
    # tracing runs no module, so no BatchNorm statistic moves. Shapes come from an eval-mode run.
    module.train()
    try:
        graph = fx.GraphModule(module, _Tracer().trace(module), type(module).__name__)
    except Exception as error:  # tracing runs the user's forward on proxies: anything can fail
        raise UnsupportedModule(
            f"torch.fx cannot trace the model's forward ({type(error).__name__}: "
            f"{_first_line(error)}); control flow that depends on the input's values is not "
            "supported"
        ) from None
    first_conv = next((m for m in module.modules() if isinstance(m, nn.Conv2d)), None)
    if first_conv is not None and first_conv.in_channels != input_shape[0]:
        raise UnsupportedModule(
            f"the teacher expects {first_conv.in_channels} input channels; the images have "
            f"{input_shape[0]}"
        )
    sample = torch.randn(2, *input_shape, generator=torch.Generator().manual_seed(0))
    module.eval()
    try:  # eagerly first: torch's own message, and ShapeProp prints tracebacks on failure
        with torch.no_grad():
            module(sample)
    except Exception as error:
        raise UnsupportedModule(
            f"the model does not run on input shape {tuple(input_shape)} "
            f"({type(error).__name__}: {_first_line(error)})"
        ) from None
    with torch.no_grad():
        ShapeProp(graph).propagate(sample)
    return graph


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _is_tensor(node: fx.Node) -> bool:
    return isinstance(node.meta.get("tensor_meta"), TensorMetadata)


def _shape(node: fx.Node) -> tuple[int, ...]:
    return tuple(node.meta["tensor_meta"].shape)


def _tensor_users(node: fx.Node) -> list[fx.Node]:
    return [user for user in node.users if _is_tensor(user) or user.op == "output"]


def _tensor_inputs(node: fx.Node) -> list[fx.Node]:
    return [arg for arg in node.all_input_nodes if _is_tensor(arg)]


def _where(node: fx.Node) -> str:
    """``node 'relu_1' (F.relu) in module 'layer1.0', model.py:42``."""
    text = f"node '{node.name}' ({_operation(node)})"
    stack = node.meta.get("nn_module_stack")
    if node.op == "call_module":
        text += f" at module '{node.target}'"
    elif stack:
        path = list(stack.values())[-1][0]
        text += f" in module '{path}'" if path else ""
    frames = re.findall(r'File "([^"]+)", line (\d+)', node.stack_trace or "")
    user_frames = [(f, line) for f, line in frames if not f.startswith(_TORCH_DIR)]
    if user_frames:
        file, line = user_frames[-1]
        text += f", {Path(file).name}:{line}"
    return text


def _operation(node: fx.Node) -> str:
    if node.op == "call_module":
        return type(node.graph.owning_module.get_submodule(node.target)).__name__
    if node.op == "call_method":
        return f"Tensor.{node.target}"
    if node.op == "call_function":
        name = getattr(node.target, "__name__", str(node.target))
        module = getattr(node.target, "__module__", "") or ""
        if module.startswith("torch.nn.functional"):
            return f"F.{name}"
        if module.startswith("torch") or module == "torch._C._VariableFunctions":
            return f"torch.{name}"
        return f"{module}.{name}" if module and module != "_operator" else name
    return node.op


# ---- reading the graph --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Parts:
    """Where a converted layer's weights come from, and how they are copied into it."""

    modules: tuple[nn.Module | None, ...]
    copy: Callable[[nn.Module, tuple[nn.Module | None, ...]], None]

    def load(self, target: nn.Module) -> None:
        self.copy(target, self.modules)


# What one node means: a new layer (with where its weights come from), a BatchNorm or an
# activation completing the layer before it, or nothing.
@dataclass(frozen=True)
class _Step:
    layer: Layer | None = None
    parts: _Parts | None = None
    norm: nn.Module | None = None
    activation: tuple[str, float] | None = None


_NOTHING = _Step()
_MONOTONE = ("relu", "relu6", "leaky_relu")  # commute with max pooling


class _Reader:
    """Walks the traced graph along its data path, collecting layers (and their weights' sources)."""

    def __init__(self, graph: fx.GraphModule) -> None:
        self.graph = graph
        self.layers: list[Layer] = []
        self.sources: list[_Parts | None] = []

    def read(self) -> tuple[list[Layer], list[_Parts | None]]:
        inputs = [n for n in self.graph.graph.nodes if n.op == "placeholder"]
        if len(inputs) != 1:
            raise UnsupportedModule(
                f"the model's forward takes {len(inputs)} inputs; it must take one image batch"
            )
        current = inputs[0]
        while True:
            users = _tensor_users(current)
            if len(users) == 1 and users[0].op == "output":
                if users[0].args[0] is not current:
                    raise UnsupportedModule(
                        "the model's forward must return one tensor of logits, not "
                        f"{type(users[0].args[0]).__name__}"
                    )
                return self.layers, self.sources
            if not users:
                raise UnsupportedModule(f"nothing uses the output of {_where(current)}")
            if len(users) == 1:
                node = users[0]
                if _tensor_inputs(node) != [current]:
                    raise UnsupportedModule(
                        f"{_where(node)} combines several tensors; supported: one data path with "
                        f"residual additions ({SUPPORTED})"
                    )
                _apply_step(node, read_step(node), self.layers, self.sources)
                current = node
            else:
                current = self._residual(current, users)

    def _residual(self, fork: fx.Node, users: list[fx.Node]) -> fx.Node:
        """Read a residual block starting at ``fork``; returns the node after its activation."""
        if len(users) != 2:
            raise UnsupportedModule(
                f"the output of {_where(fork)} feeds {len(users)} branches; supported: a residual "
                "block's two"
            )
        branches = [_branch(fork, user) for user in users]
        joins = {join for _, join in branches}
        if len(joins) != 1:
            raise UnsupportedModule(
                f"the two branches from {_where(fork)} do not meet in one sum; supported: residual "
                "blocks"
            )
        join = joins.pop()
        if not _is_add(join):
            raise UnsupportedModule(
                f"{_where(join)} joins two branches; supported: residual additions ({SUPPORTED})"
            )
        after = _tensor_users(join)
        step = read_step(after[0]) if len(after) == 1 and after[0].op != "output" else _NOTHING
        if step.activation is None:
            raise UnsupportedModule(
                f"the residual sum {_where(join)} is not followed by an activation; supported "
                "blocks end in one (conv-BN-act-conv-BN + skip, then act)"
            )
        read = [_read_branch(nodes) for nodes, _ in branches]
        body, skip = sorted(read, key=lambda branch: len(branch[0]), reverse=True)
        layer, parts = _residual_layer(join, _shape(fork), body, skip, step.activation)
        self.layers.append(layer)
        self.sources.append(parts)
        return after[0]


def _apply_step(
    node: fx.Node, step: _Step, layers: list[Layer], sources: list[_Parts | None]
) -> None:
    """Add the layer a node starts, or complete the last one with its BatchNorm or activation."""
    if step.layer is not None:
        layers.append(step.layer)
        sources.append(step.parts)
    elif step.norm is not None:
        _fold_norm(node, step.norm, layers, sources)
    elif step.activation is not None:
        _fold_activation(node, step.activation, layers)


def _branch(fork: fx.Node, start: fx.Node) -> tuple[list[fx.Node], fx.Node]:
    """The nodes of one branch from ``fork`` up to (not including) the node joining it."""
    nodes: list[fx.Node] = []
    node = start
    while len(_tensor_inputs(node)) == 1:
        nodes.append(node)
        users = _tensor_users(node)
        if len(users) != 1 or users[0].op == "output":
            raise UnsupportedModule(
                f"{_where(node)} inside a branch from {_where(fork)} feeds {len(users)} "
                "operations; supported: residual blocks of two branches that meet in a sum"
            )
        node = users[0]
    return nodes, node


def _read_branch(nodes: list[fx.Node]) -> tuple[list[Layer], list[_Parts | None]]:
    layers: list[Layer] = []
    sources: list[_Parts | None] = []
    for node in nodes:
        step = read_step(node)
        if step.layer is not None and step.layer.kind != "conv":
            raise UnsupportedModule(
                f"{_where(node)} inside a residual block; supported there: Conv2d, BatchNorm2d "
                "and activations"
            )
        _apply_step(node, step, layers, sources)
    return layers, sources


def _is_add(node: fx.Node) -> bool:
    if node.op == "call_function":
        return node.target in (operator.add, operator.iadd, torch.add)
    return node.op == "call_method" and node.target in ("add", "add_")


def _fold_norm(
    node: fx.Node, norm: nn.Module, layers: list[Layer], sources: list[_Parts | None]
) -> None:
    wanted = "conv" if isinstance(norm, nn.BatchNorm2d) else "linear"
    previous = layers[-1] if layers else None
    if previous is None or previous.kind != wanted or previous.batch_norm or previous.activation:
        follows = "Conv2d" if wanted == "conv" else "Linear"
        raise UnsupportedModule(
            f"{_where(node)} must come right after a {follows} (before its activation)"
        )
    if not norm.affine or not norm.track_running_stats or norm.eps != 1e-5:
        raise UnsupportedModule(
            f"{_where(node)}: only BatchNorm with affine=True, running statistics and the default "
            f"eps=1e-5 is supported (this one: affine={norm.affine}, eps={norm.eps})"
        )
    layers[-1] = replace(previous, batch_norm=True)
    parts = sources[-1]
    assert parts is not None  # conv and linear layers always have weights
    sources[-1] = replace(parts, modules=(parts.modules[0], norm))


def _fold_activation(node: fx.Node, activation: tuple[str, float], layers: list[Layer]) -> None:
    name, slope = activation
    index = len(layers) - 1
    # max pooling commutes with monotone activations: conv, max-pool, ReLU is conv+ReLU, max-pool
    while index > 0 and layers[index].kind in ("maxpool", "adaptive_maxpool") and name in _MONOTONE:
        index -= 1
    previous = layers[index] if index >= 0 else None
    if previous is None or previous.kind not in ("conv", "linear") or previous.activation:
        raise UnsupportedModule(
            f"{_where(node)} must follow a Conv2d or Linear (with its BatchNorm); supported: "
            f"{SUPPORTED}"
        )
    layers[index] = replace(previous, activation=name, negative_slope=slope)


# ---- one node -----------------------------------------------------------------------------------


def read_step(node: fx.Node) -> _Step:
    """What one graph node on the data path means; raises UnsupportedModule naming it."""
    if node.op == "call_module":
        module = node.graph.owning_module.get_submodule(node.target)
        reader = next(
            (MODULE_READERS[t] for t in type(module).__mro__ if t in MODULE_READERS), None
        )
        if reader is None and isinstance(module, _torchvision_blocks()):
            reader = _whole_block
    elif node.op == "call_function":
        module, reader = None, FUNCTION_READERS.get(node.target)
    elif node.op == "call_method":
        module, reader = None, METHOD_READERS.get(node.target)
    else:
        reader = None
    if reader is None:
        raise UnsupportedModule(f"{_where(node)} is not supported; supported: {SUPPORTED}")
    return reader(node, module)


def _arguments(node: fx.Node, names: tuple[str, ...]) -> dict[str, Any]:
    """A function node's arguments by name (``names`` in positional order, input first)."""
    values = dict(zip(names, node.args, strict=False))
    values.update(node.kwargs)
    return values


def _square(node: fx.Node, what: str, value: Any) -> int:
    values = (value, value) if isinstance(value, int) else tuple(value)
    if len(set(values)) != 1 or not isinstance(values[0], int):
        raise UnsupportedModule(f"{_where(node)}: only square {what} are supported, got {value}")
    return int(values[0])


def _conv(node: fx.Node, conv: nn.Conv2d) -> _Step:
    if conv.groups != 1:
        raise UnsupportedModule(
            f"{_where(node)}: grouped or depthwise convolutions (groups={conv.groups}) are not "
            "supported"
        )
    if _square(node, "dilations", conv.dilation) != 1 or conv.padding_mode != "zeros":
        raise UnsupportedModule(
            f"{_where(node)}: dilated convolutions and padding modes other than zeros are not "
            "supported"
        )
    kernel = _square(node, "kernels", conv.kernel_size)
    stride = _square(node, "strides", conv.stride)
    padding: Any = conv.padding
    if padding == "valid":
        padding = 0
    elif padding == "same":
        if kernel % 2 == 0:
            raise UnsupportedModule(f"{_where(node)}: padding='same' needs an odd kernel")
        padding = kernel // 2
    layer = Layer(
        "conv",
        conv.in_channels,
        conv.out_channels,
        kernel=kernel,
        stride=stride,
        padding=_square(node, "paddings", padding),
    )
    return _Step(layer, _Parts((conv, None), _copy_layer))


def _linear(node: fx.Node, linear: nn.Linear) -> _Step:
    if len(_shape(node.all_input_nodes[0])) != 2:
        raise UnsupportedModule(
            f"{_where(node)} reads input of shape {_shape(node.all_input_nodes[0])}; flatten the "
            "feature maps before a Linear layer"
        )
    layer = Layer("linear", linear.in_features, linear.out_features)
    return _Step(layer, _Parts((linear, None), _copy_layer))


def _pool(kind: str, *, ceil_mode: bool, dilation: Any = 1, count_include_pad: bool = True):
    def build(node: fx.Node, kernel: Any, stride: Any, padding: Any) -> _Step:
        if ceil_mode or dilation not in (1, (1, 1)):
            raise UnsupportedModule(f"{_where(node)}: ceil_mode and dilation are not supported")
        padding_value = _square(node, "paddings", padding)
        if not count_include_pad and padding_value:
            raise UnsupportedModule(
                f"{_where(node)}: padded average pooling must count the padding "
                "(count_include_pad=True)"
            )
        layer = Layer(
            kind,
            kernel=_square(node, "kernels", kernel),
            stride=_square(node, "strides", stride if stride not in (None, ()) else kernel),
            padding=padding_value,
        )
        return _Step(layer)

    return build


def _max_pool_module(node: fx.Node, pool: nn.MaxPool2d) -> _Step:
    if pool.return_indices:
        raise UnsupportedModule(f"{_where(node)}: return_indices is not supported")
    build = _pool("maxpool", ceil_mode=pool.ceil_mode, dilation=pool.dilation)
    return build(node, pool.kernel_size, pool.stride, pool.padding)


def _avg_pool_module(node: fx.Node, pool: nn.AvgPool2d) -> _Step:
    if pool.divisor_override is not None:
        raise UnsupportedModule(f"{_where(node)}: divisor_override is not supported")
    build = _pool("avgpool", ceil_mode=pool.ceil_mode, count_include_pad=pool.count_include_pad)
    return build(node, pool.kernel_size, pool.stride, pool.padding)


def _max_pool_function(node: fx.Node, module: None) -> _Step:
    a = _arguments(
        node,
        ("input", "kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices"),
    )
    if a.get("return_indices"):
        raise UnsupportedModule(f"{_where(node)}: return_indices is not supported")
    build = _pool("maxpool", ceil_mode=bool(a.get("ceil_mode")), dilation=a.get("dilation", 1))
    return build(node, a["kernel_size"], a.get("stride"), a.get("padding", 0))


def _avg_pool_function(node: fx.Node, module: None) -> _Step:
    a = _arguments(
        node,
        (
            "input",
            "kernel_size",
            "stride",
            "padding",
            "ceil_mode",
            "count_include_pad",
            "divisor_override",
        ),
    )
    if a.get("divisor_override") is not None:
        raise UnsupportedModule(f"{_where(node)}: divisor_override is not supported")
    build = _pool(
        "avgpool",
        ceil_mode=bool(a.get("ceil_mode")),
        count_include_pad=a.get("count_include_pad", True),
    )
    return build(node, a["kernel_size"], a.get("stride"), a.get("padding", 0))


def _adaptive(kind: str) -> Callable[[fx.Node, nn.Module | None], _Step]:
    def read(node: fx.Node, module: nn.Module | None) -> _Step:
        if module is not None:
            size, indices = module.output_size, getattr(module, "return_indices", False)
        else:
            a = _arguments(node, ("input", "output_size", "return_indices"))
            size, indices = a["output_size"], a.get("return_indices", False)
        if indices:
            raise UnsupportedModule(f"{_where(node)}: return_indices is not supported")
        if size is None or (not isinstance(size, int) and None in tuple(size)):
            raise UnsupportedModule(f"{_where(node)}: an output size of None is not supported")
        return _Step(Layer(kind, output_size=_square(node, "output sizes", size)))

    return read


def _mean(node: fx.Node, module: None) -> _Step:
    """``x.mean((2, 3))`` is global average pooling (with ``keepdim``, to a 1x1 map)."""
    before, after = _shape(node.all_input_nodes[0]), _shape(node)
    if len(before) == 4 and after == before[:2]:
        return _Step(Layer("global_avgpool"))
    if len(before) == 4 and after == (*before[:2], 1, 1):
        return _Step(Layer("adaptive_avgpool", output_size=1))
    raise UnsupportedModule(
        f"{_where(node)}: only a mean over height and width (global average pooling) is supported"
    )


def _reshape(node: fx.Node, module: nn.Module | None) -> _Step:
    """Flatten, view and reshape, when they flatten each sample (anything else is refused)."""
    before, after = _shape(node.all_input_nodes[0]), _shape(node)
    if after == before:
        return _NOTHING
    if len(after) == 2 and after[0] == before[0] and after[1] == math.prod(before[1:]):
        return _Step(Layer("flatten"))
    raise UnsupportedModule(
        f"{_where(node)} reshapes {before} to {after}; supported: flattening each sample"
    )


def _dropout(node: fx.Node, module: nn.Module | None) -> _Step:
    if module is not None:
        return _Step(Layer("dropout", p=float(module.p)))
    a = _arguments(node, ("input", "p", "training", "inplace"))
    if a.get("training", True) is False:
        return _NOTHING  # F.dropout(x, training=False) computes nothing
    if not isinstance(a.get("training", True), bool):
        raise UnsupportedModule(
            f"{_where(node)}: pass training=self.training as a module attribute, or use nn.Dropout"
        )
    return _Step(Layer("dropout", p=float(a.get("p", 0.5))))


def _norm(node: fx.Node, module: nn.Module) -> _Step:
    return _Step(norm=module)


def _activation(name: str) -> Callable[[fx.Node, nn.Module | None], _Step]:
    def read(node: fx.Node, module: nn.Module | None) -> _Step:
        if name == "gelu":
            approximate = (
                module.approximate if module is not None else node.kwargs.get("approximate")
            )
            return _Step(activation=("gelu_tanh" if approximate == "tanh" else "gelu", 0.01))
        if name == "leaky_relu":
            if module is not None:
                slope = module.negative_slope
            else:
                slope = _arguments(node, ("input", "negative_slope")).get("negative_slope", 0.01)
            return _Step(activation=(name, float(slope)))
        return _Step(activation=(name, 0.01))

    return read


def _torchvision_blocks() -> tuple[type[nn.Module], ...]:
    """torchvision's residual block classes, or none while torchvision is not loaded.

    A model holds such a block only if torchvision was imported to build it, so a converter that
    does not import torchvision itself (seconds of start-up) still recognises every one.
    """
    resnet = sys.modules.get("torchvision.models.resnet")
    return (resnet.BasicBlock, resnet.Bottleneck) if resnet is not None else ()


def _whole_block(node: fx.Node, block: nn.Module) -> _Step:
    """torchvision's BasicBlock and Bottleneck: one residual unit, their weights as they are."""
    from torchvision.models.resnet import Bottleneck  # loaded: the model holds its blocks

    if isinstance(block, Bottleneck):
        layer = Layer(
            "residual",
            block.conv1.in_channels,
            block.bn3.num_features,
            stride=_square(node, "strides", block.conv2.stride),  # torchvision strides its 3x3
            block="bottleneck",
            width=block.bn1.num_features,
            projection=block.downsample is not None,
        )
        convs = (block.conv1, block.conv2, block.conv3)
    else:
        layer = Layer(
            "residual",
            block.conv1.in_channels,
            block.bn2.num_features,
            stride=_square(node, "strides", block.conv1.stride),
            block="basic",
            width=block.bn1.num_features,
            projection=block.downsample is not None,
        )
        convs = (block.conv1, block.conv2)
    if any(conv.groups != 1 or conv.dilation != (1, 1) for conv in convs):
        raise UnsupportedModule(
            f"{_where(node)}: grouped or dilated residual blocks (ResNeXt, wide dilations) are "
            "not supported"
        )
    return _Step(
        layer, _Parts((block,), lambda target, parts: target.load_state_dict(parts[0].state_dict()))
    )


def _identity(node: fx.Node, module: nn.Module | None) -> _Step:
    return _NOTHING


MODULE_READERS: Mapping[type[nn.Module], Callable[[fx.Node, Any], _Step]] = MappingProxyType(
    {
        nn.Conv2d: _conv,
        nn.Linear: _linear,
        nn.BatchNorm2d: _norm,
        nn.BatchNorm1d: _norm,
        nn.ReLU: _activation("relu"),
        nn.ReLU6: _activation("relu6"),
        nn.GELU: _activation("gelu"),
        nn.SiLU: _activation("silu"),
        nn.LeakyReLU: _activation("leaky_relu"),
        nn.MaxPool2d: _max_pool_module,
        nn.AvgPool2d: _avg_pool_module,
        nn.AdaptiveAvgPool2d: _adaptive("adaptive_avgpool"),
        nn.AdaptiveMaxPool2d: _adaptive("adaptive_maxpool"),
        nn.Flatten: _reshape,
        nn.Dropout: _dropout,
        nn.Identity: _identity,
    }
)
"""How a call of a torch module type reads, looked up along the module's MRO."""

FUNCTION_READERS: Mapping[Any, Callable[[fx.Node, None], _Step]] = MappingProxyType(
    {
        F.relu: _activation("relu"),
        torch.relu: _activation("relu"),
        F.relu6: _activation("relu6"),
        F.gelu: _activation("gelu"),
        F.silu: _activation("silu"),
        F.leaky_relu: _activation("leaky_relu"),
        F.max_pool2d: _max_pool_function,
        F.avg_pool2d: _avg_pool_function,
        F.adaptive_avg_pool2d: _adaptive("adaptive_avgpool"),
        F.adaptive_max_pool2d: _adaptive("adaptive_maxpool"),
        F.dropout: _dropout,
        torch.flatten: _reshape,
        torch.reshape: _reshape,
        torch.mean: _mean,
    }
)
"""How a call of a torch function reads."""

METHOD_READERS: Mapping[str, Callable[[fx.Node, None], _Step]] = MappingProxyType(
    {
        "relu": _activation("relu"),
        "relu_": _activation("relu"),
        "flatten": _reshape,
        "view": _reshape,
        "reshape": _reshape,
        "mean": _mean,
        "contiguous": _identity,
    }
)
"""How a call of a Tensor method reads."""


# ---- residual blocks written by hand ------------------------------------------------------------


def _residual_layer(
    join: fx.Node,
    input_shape: tuple[int, ...],
    body: tuple[list[Layer], list[_Parts | None]],
    skip: tuple[list[Layer], list[_Parts | None]],
    activation: tuple[str, float],
) -> tuple[Layer, _Parts]:
    """The residual unit of a hand-written block, refusing bodies of other forms."""
    convs, conv_parts = body
    skip_convs, skip_parts = skip
    name, slope = activation
    shape = "-".join(
        f"conv{c.kernel}x{c.kernel}"
        + ("-BN" if c.batch_norm else "")
        + (f"-{c.activation}" if c.activation else "")
        for c in convs
    )
    refuse = UnsupportedModule(
        f"the residual block ending in {_where(join)} has the body {shape or 'nothing'}"
        + (f" and a skip of {len(skip_convs)} convs" if skip_convs else "")
        + "; supported: conv3x3-BN-act-conv3x3-BN (basic) or conv1x1-BN-act-conv3x3-BN-act-"
        "conv1x1-BN (bottleneck) with the same activation after the sum, and an identity or "
        "conv1x1-BN skip"
    )
    inner = [
        (c.activation, c.negative_slope if c.activation == "leaky_relu" else 0.01)
        for c in convs[:-1]
    ]
    if (
        not convs
        or not all(c.batch_norm for c in convs + skip_convs)
        or any(a != (name, slope if name == "leaky_relu" else 0.01) for a in inner)
        or convs[-1].activation is not None
    ):
        raise refuse
    if [c.kernel for c in convs] == [3, 3] and [c.padding for c in convs] == [1, 1]:
        block, stride = "basic", convs[0].stride
        if convs[1].stride != 1:
            raise refuse
    elif [c.kernel for c in convs] == [1, 3, 1] and [c.padding for c in convs] == [0, 1, 0]:
        block, stride = "bottleneck", convs[1].stride
        if (
            convs[0].stride != 1
            or convs[2].stride != 1
            or convs[1].out_channels != convs[0].out_channels
        ):
            raise refuse
    else:
        raise refuse
    in_channels, out_channels = input_shape[1], convs[-1].out_channels
    if skip_convs:
        projection = skip_convs[0]
        if (
            len(skip_convs) != 1
            or (projection.kernel, projection.padding, projection.stride) != (1, 0, stride)
            or projection.activation
        ):
            raise refuse
    elif stride != 1 or in_channels != out_channels:
        raise refuse
    layer = Layer(
        "residual",
        in_channels,
        out_channels,
        stride=stride,
        block=block,
        width=convs[0].out_channels,
        projection=bool(skip_convs),
        activation=None if name == "relu" else name,
        negative_slope=slope if name == "leaky_relu" else 0.01,
    )
    modules: list[nn.Module | None] = []
    for parts in conv_parts + skip_parts:
        assert parts is not None
        modules += parts.modules
    return layer, _Parts(tuple(modules), _copy_block)


# ---- copying weights ----------------------------------------------------------------------------


def _copy_conv_norm(
    conv: nn.Module, norm: nn.Module | None, source: nn.Module, source_norm: nn.Module | None
) -> None:
    """A conv or linear layer (and the BatchNorm after it) into a built one.

    A bias before a BatchNorm is exactly a shift of its running mean, so it folds into it.
    """
    conv.weight.copy_(source.weight)
    bias = source.bias if source.bias is not None else torch.zeros(source.weight.shape[0])
    if source_norm is None:
        conv.bias.copy_(bias)
        return
    assert norm is not None
    norm.load_state_dict(source_norm.state_dict())
    norm.running_mean.sub_(bias)


def _copy_layer(target: nn.Module, parts: tuple[nn.Module | None, ...]) -> None:
    source, source_norm = parts
    _copy_conv_norm(target[0], target[1] if source_norm is not None else None, source, source_norm)


def _copy_block(target: nn.Module, parts: tuple[nn.Module | None, ...]) -> None:
    """(conv, BN) pairs of a hand-written block's body, then its skip, into a torchvision block."""
    from torchvision.models.resnet import Bottleneck  # loaded: ``target`` is one of its blocks

    pairs = [(parts[i], parts[i + 1]) for i in range(0, len(parts), 2)]
    targets = [(target.conv1, target.bn1), (target.conv2, target.bn2)]
    if isinstance(target, Bottleneck):
        targets.append((target.conv3, target.bn3))
    if target.downsample is not None:
        targets.append((target.downsample[0], target.downsample[1]))
    for (conv, norm), (source, source_norm) in zip(targets, pairs, strict=True):
        _copy_conv_norm(conv, norm, source, source_norm)


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
    finally:
        original.train(was_training)
    if expected.shape != got.shape or not torch.allclose(expected, got, atol=1e-4, rtol=1e-3):
        difference = (expected - got).abs().max().item() if expected.shape == got.shape else None
        raise UnsupportedModule(
            "the converted network computes something else than the model "
            + (f"(largest difference {difference:.3g})" if difference is not None else "")
            + "; an operation in its forward is not read as it runs"
        )
