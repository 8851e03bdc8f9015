"""The distillation fast path: configuration, determinism, learning on real MNIST, divergence, CUDA."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from torch import nn

from n2n_gym.data import load_dataset
from n2n_gym.distill import (
    FIDELITY_PRESETS,
    DistillationDiverged,
    DistillConfig,
    TeacherTargets,
    accuracy,
    distill,
    predict_logits,
    transfer_indices,
)
from n2n_gym.surgery import build_student
from n2n_gym.teachers import load_teacher

# Removes three of the default teacher's nine units (a typical stage-1 student).
STUDENT = (1, 0, 1, 0, 1, 0, 1, 1, 1)
# A fresh student learns slowly from logits alone at the paper's lr; 2e-3 keeps the test short.
TINY = DistillConfig(transfer_size=1500, epochs=2, batch_size=64, lr=2e-3, eval_size=1000)


@pytest.fixture(scope="module")
def teacher():
    return load_teacher("default", dataset="mnist")


@pytest.fixture(scope="module")
def data():
    return load_dataset("mnist", val_size=1000, train_limit=3000)


@pytest.fixture(scope="module")
def targets(teacher, data):
    return TeacherTargets.compute(teacher.module, data.train_x, data.train_y, TINY, "cpu")


def fresh_student(teacher, seed=0):
    """A re-initialised student (no inherited weights), so it starts at chance level."""
    return build_student(teacher.module, STUDENT, inherit_weights=False, seed=seed)[1]


# ---- configuration ------------------------------------------------------------------------------


def test_config_round_trips_through_json():
    config = DistillConfig(transfer_size=None, epochs=3, hard_label_weight=0.5, eval_size=None)
    assert DistillConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


def test_default_config_is_the_measured_one_and_paper_preset_the_papers():
    config = DistillConfig()
    assert (config.lr, config.lr_schedule, config.weight_decay, config.loss) == (
        8e-3,
        "cosine",
        5e-4,
        "mse",
    )
    assert FIDELITY_PRESETS["fast"] == config
    paper = FIDELITY_PRESETS["paper"]
    assert (paper.transfer_size, paper.epochs, paper.lr, paper.lr_schedule) == (
        None,
        5,
        5e-4,
        "constant",
    )


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"transfer_size": 0}, "transfer_size"),
        ({"epochs": 0}, "epochs"),
        ({"batch_size": 2.5}, "batch_size"),
        ({"lr": 0.0}, "lr"),
        ({"weight_decay": -1.0}, "weight_decay"),
        ({"hard_label_weight": float("inf")}, "hard_label_weight"),
        ({"loss": "kl"}, "loss"),
        ({"eval_size": -5}, "eval_size"),
        ({"epochs": True}, "epochs"),
    ],
)
def test_config_rejects_bad_values_naming_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        DistillConfig(**kwargs)


def test_transfer_subset_is_fixed_by_the_seed():
    first, again = transfer_indices(1000, 100, seed=3), transfer_indices(1000, 100, seed=3)
    assert torch.equal(first, again) and len(first.unique()) == 100
    assert not torch.equal(first, transfer_indices(1000, 100, seed=4))
    assert torch.equal(transfer_indices(50, None, 0), torch.arange(50))
    assert torch.equal(transfer_indices(50, 80, 0), torch.arange(50))


# ---- the fast path on real data -------------------------------------------------------------------


def test_teacher_targets_are_the_teachers_logits_for_the_transfer_subset(teacher, data, targets):
    index = transfer_indices(len(data.train_y), TINY.transfer_size, TINY.seed)
    assert torch.equal(targets.inputs, data.train_x[index])
    assert torch.equal(targets.labels, data.train_y[index])
    assert torch.allclose(targets.logits[:10], predict_logits(teacher.module, targets.inputs[:10]))
    assert (targets.logits.argmax(1) == targets.labels).float().mean() > 0.95


@pytest.mark.expensive
def test_distillation_lifts_a_fresh_student_far_above_chance(teacher, data, targets):
    student = fresh_student(teacher)
    before = accuracy(student, data.val_x, data.val_y)
    stats = distill(student, targets.logits, targets.inputs, TINY, "cpu")
    after = accuracy(student, data.val_x, data.val_y)
    assert before < 0.2  # chance is 0.1
    assert after > 0.3 and after > before + 0.15, f"{before:.3f} -> {after:.3f}"
    assert stats.steps == 2 * 24 and stats.images == 2 * 1500
    assert stats.final_loss < stats.first_loss


@pytest.mark.expensive
def test_same_seed_gives_bitwise_the_same_student_on_cpu(teacher, data, targets):
    config = DistillConfig(transfer_size=500, epochs=1, batch_size=50)
    logits, inputs = targets.logits[:500], targets.inputs[:500]
    results = []
    for _ in range(2):
        student = fresh_student(teacher)
        stats = distill(student, logits, inputs, config, "cpu")
        results.append((stats.final_loss, accuracy(student, data.val_x, data.val_y), student))
    (loss_a, acc_a, a), (loss_b, acc_b, b) = results
    assert loss_a == loss_b and acc_a == acc_b
    assert all(
        torch.equal(x, y)
        for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    )
    other = fresh_student(teacher)
    distill(other, logits, inputs, DistillConfig(**{**config.to_dict(), "seed": 1}), "cpu")
    assert not torch.equal(other[0][0].weight, a[0][0].weight)


def test_hard_label_weight_needs_labels_and_uses_them(teacher, targets):
    config = DistillConfig(transfer_size=256, epochs=1, batch_size=128, hard_label_weight=1.0)
    logits, inputs = targets.logits[:256], targets.inputs[:256]
    with pytest.raises(ValueError, match="labels"):
        distill(fresh_student(teacher), logits, inputs, config, "cpu")
    stats = distill(
        fresh_student(teacher), logits, inputs, config, "cpu", labels=targets.labels[:256]
    )
    plain = distill(fresh_student(teacher), logits, inputs, DistillConfig(batch_size=128), "cpu")
    assert stats.first_loss > plain.first_loss  # the cross-entropy term is added


def test_absurd_learning_rate_raises_distillation_diverged(teacher, targets):
    config = DistillConfig(lr=1e30, batch_size=128)
    logits, inputs = targets.logits[:256], targets.inputs[:256]
    with pytest.raises(DistillationDiverged, match="lr"):
        distill(fresh_student(teacher), logits, inputs, config, "cpu")


def test_mismatched_logits_are_refused(teacher, targets):
    with pytest.raises(ValueError, match="teacher logits"):
        distill(fresh_student(teacher), targets.logits[:10], targets.inputs, TINY, "cpu")


NARROW_DOWNSAMPLE = """
import copy, torch
from torch import nn
from n2n_gym.distill import prepare_inputs, prepare_module

torch.manual_seed(0)
net = nn.Sequential(
    nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 9, 1, stride=2), nn.BatchNorm2d(9),
    nn.Flatten(), nn.Linear(9 * 7 * 7, 10),
)
plain = copy.deepcopy(net).train()
prepare_module(net, "cpu").train()
for _ in range(30):
    x = torch.randn(128, 1, 14, 14)
    got, want = net(prepare_inputs(x, "cpu")), plain(x)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    got.pow(2).mean().backward()
    want.pow(2).mean().backward()
for a, b in zip(net.parameters(), plain.parameters()):
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-3, atol=1e-5)
"""


def test_a_narrow_strided_1x1_convolution_trains_on_the_cpu():
    # torch's channels-last backward of a strided 1x1 conv of 2-7 input channels corrupts
    # memory on the CPU (a narrowed ResNet's downsample); in a subprocess, so a crash is a failure.
    done = subprocess.run(
        [sys.executable, "-c", NARROW_DOWNSAMPLE], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]


def test_accuracy_counts_correct_top1_predictions():
    x = torch.eye(4)
    y = torch.tensor([0, 1, 2, 0])
    assert accuracy(nn.Identity(), x, y, batch_size=3) == 0.75
    with pytest.raises(ValueError, match="empty"):
        accuracy(nn.Identity(), x[:0], y[:0])


# ---- CUDA -----------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_path_distils_in_bf16_channels_last_above_chance(teacher, data):
    targets = TeacherTargets.compute(teacher.module, data.train_x, data.train_y, TINY, "cuda")
    assert targets.inputs.is_cuda and targets.logits.dtype == torch.float32
    assert targets.inputs.is_contiguous(memory_format=torch.channels_last)
    student = fresh_student(teacher)
    seen = []
    student[0][0].register_forward_hook(lambda module, inputs, output: seen.append(output.dtype))
    distill(student, targets.logits, targets.inputs, TINY, "cuda")
    assert seen[0] == torch.bfloat16  # autocast is on
    assert student[0][0].weight.is_contiguous(memory_format=torch.channels_last)
    val_x = data.val_x.cuda().contiguous(memory_format=torch.channels_last)
    assert accuracy(student, val_x, data.val_y.cuda()) > 0.3  # chance is 0.1
