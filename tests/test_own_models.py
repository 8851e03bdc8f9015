"""Users' own networks: torchvision and hand-written state dicts load without pickle, give valid
episodes, name the argument as the caller passed it (the docs' examples run in test_docs.py)."""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import pytest
import torch
import torchvision
from torch import nn

import n2n_gym  # noqa: F401 (registers the environments)
from n2n_gym import tabulate
from n2n_gym.surgery import build_student
from n2n_gym.task import TaskError
from n2n_gym.teachers import TeacherError, load_teacher

ROOT = Path(__file__).resolve().parents[1]
CHEAP = {"transfer_size": 256, "eval_size": 256}  # a real but small distillation per student

NET = """
import torch.nn.functional as F
from torch import nn


class Block(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x):
        return F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))) + x)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1)
        self.blocks = nn.Sequential(Block(8), Block(8))
        self.head = nn.Linear(8 * 14 * 14, 10)

    def forward(self, x):
        x = F.max_pool2d(self.blocks(F.relu(self.stem(x))), 2)
        return self.head(torch_flatten(x))


def torch_flatten(x):
    return x.flatten(1)
"""


@pytest.fixture
def user_package(tmp_path, monkeypatch) -> Path:
    """A user's module on the path and a state dict of its Net."""
    (tmp_path / "user_nets.py").write_text(NET)
    monkeypatch.syspath_prepend(str(tmp_path))
    import user_nets

    torch.manual_seed(0)
    torch.save(user_nets.Net().state_dict(), tmp_path / "net.pt")
    return tmp_path


@pytest.fixture
def resnet_state(tmp_path) -> tuple[Path, nn.Module]:
    """A torchvision resnet18 for 1-channel images (torchvision's 7x7 stem), random weights."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10)
    model.conv1 = nn.Conv2d(1, 64, 7, 2, 3, bias=False)
    path = tmp_path / "resnet18.pt"
    torch.save(model.state_dict(), path)
    return path, model.eval()


def _episode(env: gym.Env, actions: list[int]) -> dict:
    env.reset(seed=0)
    for action in actions:
        _, reward, terminated, truncated, info = env.step(action)
        if terminated or truncated:
            return {"reward": reward, **info}
    raise AssertionError("the episode did not end")


def test_a_torchvision_resnet18_state_dict_loads_by_name(resnet_state):
    path, model = resnet_state
    teacher = load_teacher(path, arch="resnet18")
    x = torch.randn(2, 1, 28, 28)
    torch.testing.assert_close(teacher.module(x), model(x))
    assert teacher.spec.num_units == 10 and teacher.params == sum(
        p.numel() for p in model.parameters()
    )


@pytest.mark.expensive
def test_a_torchvision_resnet18_gives_a_valid_episode_and_a_working_shrunk_student(resnet_state):
    path, _ = resnet_state
    env = gym.make("N2NJoint-v1", teacher=str(path), teacher_arch="resnet18", fidelity=CHEAP)
    info = _episode(env, [1] * 10)  # joint: every unit halved (where it may be)
    assert info["error"] is None and 0.0 <= info["reward"] <= 1.0
    assert info["params"] < info["teacher_params"]
    teacher = load_teacher(path, arch="resnet18")
    _, student = build_student(teacher.module, [1.0] + [0.5] * 8 + [1.0])
    assert student(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_a_changed_stem_asks_for_the_users_model(tmp_path):
    model = torchvision.models.resnet18(num_classes=10)
    model.conv1 = nn.Conv2d(1, 64, 3, 1, 1, bias=False)
    torch.save(model.state_dict(), tmp_path / "cifar_stem.pt")
    with pytest.raises(TeacherError, match=r"conv1\.weight is \[64, 1, 3, 3\].*module=YourModel"):
        load_teacher(tmp_path / "cifar_stem.pt", arch="resnet18")


def test_the_users_class_loads_by_instance_and_by_import_path_alike(user_package):
    import user_nets

    by_instance = load_teacher(user_package / "net.pt", module=user_nets.Net())
    by_path = load_teacher(user_package / "net.pt", arch="user_nets:Net")
    assert by_instance.fingerprint == by_path.fingerprint
    assert [layer.kind for layer in by_path.spec.layers] == [
        "conv",
        "residual",
        "residual",
        "maxpool",
        "flatten",
        "linear",
    ]


@pytest.mark.expensive
def test_the_users_class_gives_a_valid_episode(user_package):
    env = gym.make(
        "N2NRemoval-v2",
        teacher=str(user_package / "net.pt"),
        teacher_arch="user_nets:Net",
        fidelity=CHEAP,
    )
    info = _episode(env, [1, 0, 1, 1])  # remove the first block
    assert info["error"] is None and info["params"] < info["teacher_params"]


def test_errors_name_the_argument_as_each_caller_passed_it(user_package, capsys):
    path = str(user_package / "net.pt")
    with pytest.raises(TeacherError, match=r"pass arch=NAME"):
        load_teacher(path)
    with pytest.raises(TaskError, match=r"pass teacher_arch=NAME") as caught:
        gym.make("N2NRemoval-v2", teacher=path)
    assert "module=" not in str(caught.value)  # make() takes no module object
    build = user_package / "build"
    command = ["--teacher", path, "--teacher-arch", "user_nets:Nope", "--build-dir", str(build)]
    assert tabulate.main([*command, "--out", str(user_package / "table.json.gz")]) == 2
    assert "--teacher-arch 'user_nets:Nope': cannot import it" in capsys.readouterr().err
    assert not build.exists()


def test_the_example_resnet18_loads_by_its_import_path(tmp_path, monkeypatch):
    """examples/mnist_resnet18.py, the README's real run: its builder is the teacher_arch."""
    monkeypatch.syspath_prepend(str(ROOT))
    from examples.mnist_resnet18 import build

    torch.save(build().state_dict(), tmp_path / "resnet.pt")
    teacher = load_teacher(tmp_path / "resnet.pt", arch="examples.mnist_resnet18:build")
    assert teacher.spec.num_units == 10 and teacher.params == 11_172_810
    assert teacher.spec.input_shape == (1, 28, 28)
