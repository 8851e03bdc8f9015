"""Reading users' models with torch.fx: what converts (and computes the same), what is refused."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet18, vgg11

from n2n_gym.arch import unit_rules
from n2n_gym.convert import UnsupportedModule, convert_module
from n2n_gym.surgery import build_student


def _randomise_norms(model: nn.Module) -> nn.Module:
    """Non-trivial BatchNorm statistics, so a mis-read norm changes the function."""
    generator = torch.Generator().manual_seed(0)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm1d | nn.BatchNorm2d):
            module.running_mean.copy_(torch.randn(module.num_features, generator=generator))
            module.running_var.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
            module.weight.data.copy_(torch.randn(module.num_features, generator=generator))
    return model.eval()


def _same_function(model: nn.Module, shape: tuple[int, int, int]):
    network = convert_module(model, shape, 10)
    x = torch.randn(3, *shape)
    with torch.no_grad():
        torch.testing.assert_close(network.eval()(x), model(x), atol=1e-4, rtol=1e-3)
    return network


class Block(nn.Module):
    """A residual block as people write it: functional activation, `out + shortcut(x)`."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1)  # a bias before BN folds into it
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x):
        out = F.silu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += self.shortcut(x)
        return F.silu(out)


class HandWritten(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 16, 3, padding=1)
        self.blocks = nn.Sequential(Block(16, 16, 1), Block(16, 32, 2), Block(32, 32, 1))
        self.hidden = nn.Linear(32, 24)
        self.hidden_norm = nn.BatchNorm1d(24)
        self.head = nn.Linear(24, 10)

    def forward(self, x):
        x = F.max_pool2d(self.stem(x), 2)  # max-pool before the activation commutes with it
        x = F.leaky_relu(x, 0.1)
        x = self.blocks(x)
        x = x.mean((2, 3))
        x = F.dropout(x, 0.1, self.training)
        x = F.gelu(self.hidden_norm(self.hidden(x)))
        return self.head(x)


def test_a_hand_written_model_with_functional_ops_and_residual_sums_converts_exactly():
    model = _randomise_norms(HandWritten())
    network = _same_function(model, (1, 28, 28))
    kinds = [layer.kind for layer in network.spec.layers]
    assert kinds == [
        "conv",
        "maxpool",
        "residual",
        "residual",
        "residual",
        "global_avgpool",
        "dropout",
        "linear",
        "linear",
    ]
    stem, blocks = network.spec.layers[0], network.spec.layers[2:5]
    assert (stem.activation, stem.negative_slope) == ("leaky_relu", 0.1)
    assert [b.projection for b in blocks] == [False, True, False]
    assert {b.activation for b in blocks} == {"silu"}
    assert network.spec.layers[7].batch_norm and network.spec.layers[7].activation == "gelu"
    folded_biases = 16 + 32 + 32 + 24  # of the blocks' first convs and the hidden linear layer
    assert network.spec.params == sum(p.numel() for p in model.parameters()) - folded_biases
    # each block is one removable, shrinkable unit; the student of a decision runs
    rules = unit_rules(network.spec)
    assert [r.removable for r in rules] == [False, True, True, True, True, False]
    plan, student = build_student(network, [1.0, 0.0, 0.5, 0.0, 0.5, 1.0])
    assert student(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    assert plan.spec.params < network.spec.params


def test_torchvision_resnet18_with_a_one_channel_3x3_stem_and_a_sequential_cnn():
    model = resnet18(num_classes=10)
    model.conv1 = nn.Conv2d(1, 64, 3, 1, 1, bias=False)
    model.maxpool = nn.Identity()
    network = _same_function(_randomise_norms(model), (1, 28, 28))
    assert network.spec.num_units == 10  # stem, 8 blocks, head
    assert network.spec.params == sum(p.numel() for p in model.parameters())
    cnn = nn.Sequential(
        nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU()),
        nn.Sequential(),  # an empty container computes nothing
        nn.MaxPool2d(2),
        nn.Conv2d(8, 8, 3, padding="same"),
        nn.BatchNorm2d(8),
        nn.ReLU6(),
        nn.Flatten(),
        nn.Linear(8 * 14 * 14, 10),
    )
    _same_function(_randomise_norms(cnn), (1, 28, 28))


def test_the_forward_is_read_not_the_registration_order():
    class Shuffled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.head = nn.Linear(16, 10)
            self.features = nn.Linear(784, 16)

        def forward(self, x):
            return self.head(torch.relu(self.features(x.view(x.size(0), -1))))

    network = _same_function(Shuffled().eval(), (1, 28, 28))
    assert [layer.kind for layer in network.spec.layers] == ["flatten", "linear", "linear"]


@pytest.mark.expensive
def test_a_vgg_family_model_converts():
    model = vgg11(num_classes=10)  # 129 M parameters; its adaptive pool keeps the head's input
    network = _same_function(model.eval(), (3, 32, 32))
    assert network.spec.num_units == 11  # 8 convs, 3 linear
    assert sum(r.removable for r in unit_rules(network.spec)) == 9


class Concat(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.head = nn.Linear(8 * 26 * 26, 10)

    def forward(self, x):
        y = self.conv(x)
        return self.head(torch.cat([y, y], 1).flatten(1))


class Gated(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.head = nn.Linear(4 * 26 * 26, 10)

    def forward(self, x):
        if x.sum() > 0:  # depends on the input's values: not traceable
            x = -x
        return self.head(self.conv(x).flatten(1))


class SumWithoutActivation(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.inner = nn.Conv2d(4, 4, 3, padding=1)
        self.head = nn.Linear(4 * 28 * 28, 10)

    def forward(self, x):
        x = F.relu(self.conv(x))
        return self.head((self.inner(x) + x).flatten(1))


@pytest.mark.parametrize(
    ("model", "message"),
    [
        (Concat(), r"node 'cat' \(torch\.cat\), test_convert\.py:\d+ is not supported"),
        (
            nn.Sequential(nn.Conv2d(1, 4, 3), nn.Sigmoid(), nn.Flatten(), nn.Linear(2704, 10)),
            r"node '_1' \(Sigmoid\) at module '1' is not supported",
        ),
        (
            nn.Sequential(nn.Conv2d(1, 4, 3, groups=1), nn.Conv2d(4, 4, 3, groups=2), nn.Flatten()),
            r"at module '1': grouped or depthwise convolutions \(groups=2\)",
        ),
        (Gated(), "torch.fx cannot trace the model's forward"),
        (SumWithoutActivation(), r"residual sum node 'add' .* is not followed by an activation"),
        (nn.Sequential(nn.Flatten(), nn.Linear(784, 5)), "has 5 outputs but the data has 10"),
        (resnet18(num_classes=10), r"^the teacher expects 3 input channels; the images have 1$"),
        (
            nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(100, 10)),
            r"does not run on input shape \(1, 28, 28\) \(RuntimeError: mat1 and mat2",
        ),
    ],
    ids=[
        "concat",
        "sigmoid",
        "grouped",
        "control-flow",
        "sum-without-activation",
        "classes",
        "channels",
        "shape",
    ],
)
def test_unsupported_operations_are_named_with_where_they_are(model, message, capsys):
    with pytest.raises(UnsupportedModule, match=message):
        convert_module(model, (1, 28, 28), 10)
    assert "Traceback" not in capsys.readouterr().err  # one line, nothing printed on the side
