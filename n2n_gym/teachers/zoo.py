"""The zoo of teacher architectures: a name maps to a :class:`~n2n_gym.arch.NetworkSpec` builder.

:data:`BUNDLED_TEACHERS` names the trained weights that ship with the package
(``n2n_gym/weights/``), :data:`BUNDLED_DEFAULTS` the one ``teacher="default"`` means per data set.
"""

from __future__ import annotations

from collections.abc import Callable

from n2n_gym.arch import Layer, NetworkSpec
from n2n_gym.teachers.errors import TeacherError

__all__ = [
    "BUNDLED_DEFAULTS",
    "BUNDLED_PREFIX",
    "BUNDLED_TEACHERS",
    "ZOO",
    "InputShape",
    "resnet",
    "small_vgg",
    "vgg",
    "zoo_spec",
]

InputShape = tuple[int, int, int]

# Every shipped teacher: its name (teacher="bundled:NAME") -> the data set it was trained on. The
# weights are n2n_gym/weights/NAME.pt (plus a .json sidecar of how they were trained).
BUNDLED_TEACHERS: dict[str, str] = {
    "small_vgg_mnist": "mnist",
    "narrow_resnet_mnist": "mnist",
    "small_vgg_fashion-mnist": "fashion-mnist",
}
# Data set -> the bundled teacher teacher="default" means.
BUNDLED_DEFAULTS: dict[str, str] = {
    "mnist": "small_vgg_mnist",
    "fashion-mnist": "small_vgg_fashion-mnist",
}
BUNDLED_PREFIX = "bundled:"


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
    from torchvision.models.vgg import cfgs  # here: torchvision takes seconds to load

    layers: list[Layer] = []
    channels = input_shape[0]
    size = min(input_shape[1:])
    for item in cfgs[config]:
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


def narrow_resnet(input_shape: InputShape = (1, 28, 28), num_classes: int = 10) -> NetworkSpec:
    """The larger bundled teacher: a narrow 14-block ResNet for small grey images.

    Sixteen decision units (the stem, 14 residual blocks of widths 8 / 16 / 32 in stages of
    4 / 5 / 5 blocks, the classifier). The stem pools at once and the blocks stay narrow, so a
    student still distils in seconds on two cores (widths 12 / 24 / 48 took 1.7x as long per
    step), while the search space (2^14 removal students, before the shrink ratios) is far beyond
    enumeration.
    """
    layers = [_conv(input_shape[0], 8), Layer("maxpool", kernel=2, stride=2)]
    channels = 8
    for stage, (width, count) in enumerate(((8, 4), (16, 5), (32, 5))):
        for i in range(count):
            stride = 2 if stage > 0 and i == 0 else 1
            layers.append(
                Layer(
                    "residual",
                    channels,
                    width,
                    stride=stride,
                    block="basic",
                    width=width,
                    projection=stride != 1 or channels != width,
                )
            )
            channels = width
    layers += [Layer("global_avgpool"), Layer("linear", channels, num_classes)]
    return NetworkSpec(input_shape, num_classes, tuple(layers), name="narrow_resnet")


ZOO: dict[str, Callable[[InputShape, int], NetworkSpec]] = {
    "small_vgg": small_vgg,
    "narrow_resnet": narrow_resnet,
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
