"""Baselines of a finished student's size: built at that size, trained as the student was, compared."""

import json
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import evaluate
import n2n_gym.baselines
from n2n_gym.arch import StudentDescription, unit_rules
from n2n_gym.baselines import magnitude_pruned, uniform_width_student
from n2n_gym.data import load_dataset
from n2n_gym.distill import DistillConfig, distill
from n2n_gym.finalize import FINAL_TRAINING, TrainingInterrupted, finish_run, model_size
from n2n_gym.surgery import build_module, build_student
from n2n_gym.teachers import load_teacher

TEACHERS = ["default", "bundled:narrow_resnet_mnist"]
PAIR = ("magnitude-pruned", "scratch-labels")


@pytest.mark.parametrize("name", TEACHERS)
@pytest.mark.parametrize("target", [9_000, 30_000])
def test_uniform_width_student_is_the_teacher_at_one_ratio_near_the_size(name, target):
    teacher = load_teacher(name)
    student = uniform_width_student(teacher.spec, target)
    params = student.plan().spec.params
    assert abs(params - target) / target < 0.1
    rules = unit_rules(teacher.spec)
    shrunk = {r for r, rule in zip(student.ratios, rules, strict=True) if rule.shrinkable}
    assert len(shrunk) == 1 and 0 < shrunk.pop() < 1
    assert all(r == 1 for r, rule in zip(student.ratios, rules, strict=True) if not rule.shrinkable)


@pytest.mark.parametrize("name", TEACHERS)
def test_magnitude_pruned_teacher_keeps_its_own_weights_at_the_size(name):
    pytest.importorskip("torch_pruning")
    teacher = load_teacher(name)
    target = 9_000
    pruned = magnitude_pruned(teacher.module, teacher.spec.input_shape, target)
    params, macs = model_size(pruned, teacher.spec.input_shape)
    assert abs(params - target) / target < 0.1
    assert macs < teacher.spec.flops / 5
    x = torch.randn(3, *teacher.spec.input_shape)
    assert pruned(x).shape == (3, teacher.spec.num_classes)
    # The stem's kept filters are the teacher's own weights, not new ones.
    stem, teacher_stem = (
        next(m for m in net.modules() if isinstance(m, torch.nn.Conv2d))
        for net in (pruned, teacher.module)
    )
    assert 0 < stem.out_channels < teacher_stem.out_channels
    for weight in stem.weight:
        assert (teacher_stem.weight == weight).all(dim=(1, 2, 3)).sum() == 1


def test_model_size_counts_as_the_description_does():
    teacher = load_teacher("bundled:narrow_resnet_mnist")
    description = StudentDescription(teacher.spec, tuple([1.0] + [0.5] * 14 + [1.0]))
    _, student = build_student(teacher.module, description)
    for spec, module in ((teacher.spec, teacher.module), (description.plan().spec, student)):
        assert model_size(module, spec.input_shape) == (spec.params, spec.flops)


def test_training_on_labels_ignores_the_teacher():
    data = load_dataset("mnist", val_size=5000, seed=0)
    x, y = data.split("train")
    x, y = x[:512], y[:512]
    config = DistillConfig(transfer_size=None, epochs=1, loss="labels")
    spec = load_teacher("default").spec
    outputs = []
    for logits in (torch.zeros(512, 10), torch.randn(512, 10)):
        module = build_module(spec, seed=0)
        distill(module, logits, x, config, "cpu", labels=y)
        outputs.append(module(x[:8]))
    torch.testing.assert_close(outputs[0], outputs[1], rtol=0, atol=0)
    with pytest.raises(ValueError, match="needs the labels"):
        distill(build_module(spec, seed=0), torch.zeros(512, 10), x, config, "cpu")


@pytest.mark.parametrize("name", TEACHERS)
def test_baselines_match_the_students_macs_instead_when_asked(name):
    """Matched on MACs per image, both sized baselines land near the MACs, not the parameters."""
    pytest.importorskip("torch_pruning")
    teacher = load_teacher(name)
    target = teacher.spec.flops // 8
    student = uniform_width_student(teacher.spec, target, match="flops")
    assert abs(student.plan().spec.flops - target) / target < 0.1
    pruned = magnitude_pruned(teacher.module, teacher.spec.input_shape, target, match="flops")
    _, macs = model_size(pruned, teacher.spec.input_shape)
    # Pruning one channel of a narrow layer moves its MACs in steps (16 channels: ~6 % each,
    # and the residual sums are pruned together): the nearest step, not the exact count.
    assert abs(macs - target) / target < 0.2
    with pytest.raises(ValueError, match="choose from params, flops"):
        uniform_width_student(teacher.spec, target, match="latency")


@pytest.fixture
def finished(finished_search, tmp_path):
    """A copy of the session's tiny finished search (its report names the shared run)."""
    folder = tmp_path / "finished"
    shutil.copytree(finished_search[1], folder)
    return folder


@pytest.mark.expensive
def test_evaluate_baselines_trains_each_at_the_students_size_and_resumes(finished, monkeypatch):
    pytest.importorskip("torch_pruning")
    # The other two train the same way as scratch-distilled, from a network built by
    # uniform_width_student (tested above).
    argv = [str(finished), "--baselines", "--only", ",".join(PAIR), "--device", "cpu"]
    assert evaluate.main(argv) == 0
    results = json.loads((finished / "baselines.json").read_text())
    report = json.loads((finished / "report.json").read_text())
    assert set(results["baselines"]) == set(PAIR)
    for name, row in results["baselines"].items():
        assert abs(row["params"] - report["params"]) / report["params"] < 0.1, name
        # two epochs on 2,048 images, as the student had: enough to beat chance (10 %)
        assert row["test_accuracy"] > 0.15, name
        assert row["best_epoch"] in (1, 2), name
    assert results["student"]["test_accuracy"] == report["test_accuracy"]
    # the pruned teacher starts from trained weights, the fresh networks from nothing
    pruned = results["baselines"]["magnitude-pruned"]["test_accuracy"]
    assert pruned > results["baselines"]["scratch-labels"]["test_accuracy"]
    table = (finished / "baselines.md").read_text()
    assert all(name in table for name in PAIR)

    # A rerun keeps what was measured and trains nothing.
    def no_training(*args, **kwargs):
        raise AssertionError("a finished baseline was trained again")

    monkeypatch.setattr(n2n_gym.baselines, "train_module", no_training)
    assert evaluate.main(argv) == 0
    assert json.loads((finished / "baselines.json").read_text()) == results


@pytest.mark.expensive
def test_a_training_cut_short_by_ctrl_c_is_kept_marked_and_never_reused(
    finished, finished_search, tmp_path, monkeypatch, capsys
):
    real = n2n_gym.baselines.train_module

    def ctrl_c_after_the_first_epoch(*args, **kwargs):
        def stop(entry):
            raise KeyboardInterrupt

        return real(*args, **{**kwargs, "on_epoch": stop})

    monkeypatch.setattr(n2n_gym.baselines, "train_module", ctrl_c_after_the_first_epoch)
    argv = [
        str(finished),
        "--baselines",
        "--only",
        "uniform-width,scratch-labels",
        "--device",
        "cpu",
    ]
    assert evaluate.main(argv) == 130  # one Ctrl-C stops the command: no second baseline
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the progress lines
    assert err == (
        "error: baseline uniform-width: interrupted after 1 of 2 epochs; rerun the command to "
        "train it fully"
    )
    saved = json.loads((finished / "baselines.json").read_text())["baselines"]
    assert saved == {"uniform-width": {"interrupted": {"epochs_done": 1, "epochs": 2}}}
    monkeypatch.undo()
    assert evaluate.main(argv) == 0  # trained again in full, not reused
    saved = json.loads((finished / "baselines.json").read_text())["baselines"]
    assert (
        saved["uniform-width"]["best_epoch"] in (1, 2)
        and "interrupted" not in saved["uniform-width"]
    )
    # The search's own final training keeps its best epoch, marked, and stops the command too.
    config = replace(FINAL_TRAINING, epochs=2, transfer_size=2048)

    def stop(entry):
        raise KeyboardInterrupt

    with pytest.raises(TrainingInterrupted, match="final training: interrupted after 1 of 2"):
        finish_run(
            finished_search[0],
            config=config,
            device="cpu",
            out_dir=tmp_path / "cut",
            on_epoch=stop,
        )
    report = json.loads((tmp_path / "cut" / "report.json").read_text())
    assert report["interrupted"] == {"epochs_done": 1, "epochs": 2}
    assert (tmp_path / "cut" / "student.pt").exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["{tmp}", "--baselines"], "has no report.json"),
        (["{tmp}", "--baselines", "--only", "nope"], "unknown baseline nope"),
        (["{tmp}", "{tmp}", "--baselines"], "takes one folder"),
    ],
)
def test_baselines_bad_input_gives_one_clear_line(argv, message, tmp_path):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    result = subprocess.run(
        [sys.executable, str(Path(evaluate.__file__)), *argv],
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    lines = [line for line in output.splitlines() if "error" in line]
    assert len(lines) == 1 and message in lines[0], output
    assert list(tmp_path.iterdir()) == []  # nothing written
