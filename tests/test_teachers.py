"""Tests for the teacher zoo, the bundled MNIST teacher, loading users' teachers, training and the CLI."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn

from n2n_gym.data import DatasetSplits, load_dataset
from n2n_gym.distill import accuracy
from n2n_gym.surgery import SpecNetwork, build_module
from n2n_gym.teachers import (
    BUNDLED_TEACHERS,
    ZOO,
    Teacher,
    TeacherError,
    TeacherInfo,
    inspect_teacher,
    load_teacher,
    sidecar_path,
    train_teacher,
    weights_fingerprint,
    zoo_spec,
)
from n2n_gym.teachers.cli import main

REPO = Path(__file__).resolve().parents[1]
WEIGHTS = REPO / "n2n_gym" / "weights"
PACKAGE = REPO / "n2n_gym" / "teachers"


@pytest.fixture(scope="module")
def mnist() -> DatasetSplits:
    return load_dataset("mnist")


@pytest.fixture(scope="module")
def tiny_mnist(mnist: DatasetSplits) -> DatasetSplits:
    """2,000 training images and 1,000 each for validation and test: training in seconds."""
    return replace(
        mnist,
        train_x=mnist.train_x[:2000],
        train_y=mnist.train_y[:2000],
        val_x=mnist.val_x[:1000],
        val_y=mnist.val_y[:1000],
        test_x=mnist.test_x[:1000],
        test_y=mnist.test_y[:1000],
    )


@pytest.fixture(scope="module")
def bundled() -> Teacher:
    return load_teacher()


def _user_model() -> nn.Module:
    """A small user-written CNN for MNIST, made of layers the converter understands."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 10),
    ).eval()


# ---- zoo ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape, classes", [((1, 28, 28), 10), ((3, 32, 32), 100)])
@pytest.mark.parametrize("name", list(ZOO))
def test_every_zoo_teacher_builds_and_outputs_one_logit_per_class(name, shape, classes):
    spec = zoo_spec(name, shape, classes)
    module = build_module(spec, seed=0).eval()
    with torch.no_grad():
        logits = module(torch.randn(2, *shape))
    assert logits.shape == (2, classes)
    assert spec.params == sum(p.numel() for p in module.parameters())


def test_unknown_zoo_name_lists_the_zoo():
    with pytest.raises(TeacherError, match=r"'vgg12'.*small_vgg.*resnet18"):
        zoo_spec("vgg12", (1, 28, 28), 10)


# ---- the bundled teacher ------------------------------------------------------------------------


def test_bundled_teacher_is_accurate_on_held_out_mnist(bundled, mnist):
    assert bundled.arch == "small_vgg" and bundled.dataset == "mnist"
    assert bundled.source == "bundled"
    assert bundled.spec == zoo_spec("small_vgg", (1, 28, 28), 10)
    assert bundled.val_accuracy >= 0.99 and bundled.test_accuracy >= 0.99
    measured = accuracy(bundled.module, mnist.test_x[:2000], mnist.test_y[:2000])
    assert measured >= 0.99


def test_bundled_teacher_is_frozen_and_in_eval_mode(bundled):
    assert not bundled.module.training
    assert not any(p.requires_grad for p in bundled.module.parameters())


def test_bundled_files_are_small_and_describe_the_weights(bundled):
    checkpoint = WEIGHTS / "small_vgg_mnist.pt"
    assert checkpoint.stat().st_size < 1_000_000  # weights and metadata only, no optimiser state
    summary = json.loads(sidecar_path(checkpoint).read_text())
    assert summary["arch"] == "small_vgg" and summary["dataset"] == "mnist"
    assert summary["complete"] is True
    assert summary["params"] == bundled.params == 120_762
    assert summary["test_accuracy"] == pytest.approx(bundled.test_accuracy)
    assert summary["fingerprint"] == bundled.fingerprint


@pytest.mark.parametrize("name", list(BUNDLED_TEACHERS))
def test_every_bundled_teacher_loads_by_name_and_is_accurate(name, request):
    dataset = BUNDLED_TEACHERS[name]
    teacher = load_teacher(f"bundled:{name}", dataset=dataset)
    arch = name.removesuffix(f"_{dataset}")
    assert teacher.arch == arch and teacher.spec == zoo_spec(arch, (1, 28, 28), 10)
    assert teacher.test_accuracy >= {"mnist": 0.993, "fashion-mnist": 0.91}[dataset]
    summary = json.loads(sidecar_path(WEIGHTS / f"{name}.pt").read_text())
    assert summary["fingerprint"] == teacher.fingerprint and summary["complete"] is True
    assert summary["dataset"] == dataset
    assert (WEIGHTS / f"{name}.pt").stat().st_size < 2_000_000
    # The recorded accuracy is what the weights score on the data set's test images.
    if dataset == "mnist":
        data = request.getfixturevalue("mnist")
    else:
        data = load_dataset(dataset, data_dir=request.getfixturevalue("fashion_mnist_dir"))
    measured = accuracy(teacher.module, data.test_x[:2000], data.test_y[:2000])
    assert measured == pytest.approx(teacher.test_accuracy, abs=0.02)


def test_a_bundled_teacher_is_refused_for_another_data_set():
    with pytest.raises(TeacherError, match="trained on 'fashion-mnist', not dataset 'mnist'"):
        load_teacher("bundled:small_vgg_fashion-mnist")


def test_an_unknown_bundled_teacher_lists_the_shipped_ones():
    with pytest.raises(TeacherError, match="bundled:narrow_resnet_mnist"):
        load_teacher("bundled:resnet_mnist")


def test_fingerprint_identifies_the_weights(bundled):
    copy = build_module(bundled.spec)
    copy.load_state_dict(bundled.module.state_dict())
    assert weights_fingerprint(copy) == bundled.fingerprint
    with torch.no_grad():
        copy[0][0].weight[0, 0, 0, 0] += 1e-3
    assert weights_fingerprint(copy) != bundled.fingerprint


def test_default_teacher_for_another_dataset_says_how_to_train_one():
    with pytest.raises(TeacherError, match=r"no bundled teacher for dataset 'cifar10'.*train"):
        load_teacher("default", dataset="cifar10")


# ---- users' teachers ----------------------------------------------------------------------------


def test_state_dict_with_arch_round_trips(bundled, mnist, tmp_path):
    path = tmp_path / "weights.pt"
    torch.save(bundled.module.state_dict(), path)
    teacher = load_teacher(path, arch="small_vgg")
    assert teacher.arch == "small_vgg" and teacher.source == str(path)
    assert teacher.fingerprint == bundled.fingerprint
    assert teacher.val_accuracy is None  # a bare state dict records no accuracy
    x = mnist.test_x[:64]
    torch.testing.assert_close(teacher.module(x), bundled.module(x))


def test_state_dict_saved_from_data_parallel_loads(bundled, tmp_path):
    path = tmp_path / "parallel.pt"
    torch.save({f"module.{k}": v for k, v in bundled.module.state_dict().items()}, path)
    assert load_teacher(path, arch="small_vgg").fingerprint == bundled.fingerprint


def test_pickled_module_needs_allow_pickle(tmp_path, mnist):
    model = _user_model()
    path = tmp_path / "model.pt"
    torch.save(model, path)
    with pytest.raises(TeacherError, match=r"model\.pt.*pickled.*allow_pickle=True"):
        load_teacher(path)
    teacher = load_teacher(path, allow_pickle=True)
    assert teacher.arch == "custom"
    assert isinstance(teacher.module, SpecNetwork)
    x = mnist.test_x[:16]
    with torch.no_grad():
        torch.testing.assert_close(teacher.module(x), model(x), atol=1e-5, rtol=1e-4)


def test_missing_file_is_named(tmp_path):
    missing = tmp_path / "nowhere.pt"
    with pytest.raises(TeacherError, match=r"nowhere\.pt.*does not exist"):
        load_teacher(missing)


@pytest.mark.parametrize(
    "content",
    [b"not a checkpoint\n", b"", b"PK\x03\x04broken zip", bytes(range(256)) * 20],
)
def test_corrupt_file_is_named(tmp_path, content):
    path = tmp_path / "corrupt.pt"
    path.write_bytes(content)
    with pytest.raises(TeacherError, match=r"corrupt\.pt.*(corrupt|not a PyTorch)") as error:
        load_teacher(path, arch="small_vgg")
    # Never the advice to unpickle a file nobody vouched for.
    assert "weights_only" not in str(error.value)


def test_truncated_checkpoint_is_named(tmp_path):
    path = tmp_path / "truncated.pt"
    data = (WEIGHTS / "small_vgg_mnist.pt").read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(TeacherError, match=r"truncated\.pt.*corrupt"):
        load_teacher(path)


def test_state_dict_without_arch_asks_for_it(bundled, tmp_path):
    path = tmp_path / "bare.pt"
    torch.save(bundled.module.state_dict(), path)
    with pytest.raises(TeacherError, match=r"bare\.pt.*plain state dict.*arch=NAME.*small_vgg"):
        load_teacher(path)


def test_unknown_arch_lists_the_zoo(bundled, tmp_path):
    path = tmp_path / "bare.pt"
    torch.save(bundled.module.state_dict(), path)
    with pytest.raises(TeacherError, match=r"'lenet'.*small_vgg, narrow_resnet, vgg11"):
        load_teacher(path, arch="lenet")


def test_state_dict_of_another_architecture_is_refused(bundled, tmp_path):
    path = tmp_path / "small.pt"
    torch.save(bundled.module.state_dict(), path)
    with pytest.raises(
        TeacherError, match=r"small\.pt.*fit neither the zoo's vgg11.*torchvision's"
    ):
        load_teacher(path, arch="vgg11")
    state = dict(bundled.module.state_dict())
    state["0.0.weight"] = torch.zeros(8, 1, 3, 3)
    torch.save(state, path)
    with pytest.raises(TeacherError, match=r"0\.0\.weight is \(8, 1, 3, 3\) in the file"):
        load_teacher(path, arch="small_vgg")


def test_teacher_for_other_input_shape_names_both_shapes(tmp_path):
    path = tmp_path / "mnist_teacher.pt"
    path.write_bytes((WEIGHTS / "small_vgg_mnist.pt").read_bytes())
    with pytest.raises(TeacherError, match=r"\(1, 28, 28\).*'cifar10'.*\(3, 32, 32\)"):
        load_teacher(path, dataset="cifar10")
    with pytest.raises(TeacherError, match=r"10 classes.*100 classes"):
        load_teacher(path, num_classes=100)


def test_unknown_dataset_is_named():
    with pytest.raises(TeacherError, match=r"'imagenet'.*available.*mnist"):
        load_teacher(dataset="imagenet")


def test_a_pickled_model_the_converter_does_not_understand_is_named(tmp_path):
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.Sigmoid(), nn.Flatten(), nn.Linear(4 * 26 * 26, 10)
    )
    path = tmp_path / "sigmoid.pt"
    torch.save(model, path)
    with pytest.raises(TeacherError, match=r"sigmoid\.pt.*Sigmoid"):
        load_teacher(path, allow_pickle=True)


def _bundled_checkpoint() -> dict:
    return torch.load(WEIGHTS / "small_vgg_mnist.pt", map_location="cpu", weights_only=True)


def _message(call, *args, **kwargs) -> str:
    with pytest.raises(TeacherError) as caught:
        call(*args, **kwargs)
    return str(caught.value)


# ---- teachers trained on another data set -------------------------------------------------------


@pytest.fixture
def fashion_checkpoint(tmp_path) -> Path:
    """The bundled checkpoint relabelled as trained on Fashion-MNIST (same input shape and classes)."""
    content = _bundled_checkpoint()
    content["dataset"] = "fashion-mnist"
    path = tmp_path / "fashion.pt"
    torch.save(content, path)
    return path


@pytest.mark.parametrize("call", [load_teacher, inspect_teacher])
def test_checkpoint_of_another_dataset_is_refused_in_one_line(call, fashion_checkpoint):
    message = _message(call, fashion_checkpoint, dataset="mnist")
    assert len(message.splitlines()) == 1
    assert "fashion.pt" in message
    assert "trained on 'fashion-mnist', not dataset 'mnist'" in message
    assert "allow_other_dataset=True" in message


def test_checkpoint_of_another_dataset_loads_when_allowed(fashion_checkpoint, bundled, caplog):
    with caplog.at_level(logging.WARNING, logger="n2n_gym.teachers"):
        teacher = load_teacher(fashion_checkpoint, allow_other_dataset=True)
    assert teacher.fingerprint == bundled.fingerprint and teacher.dataset == "mnist"
    assert teacher.val_accuracy is None and teacher.test_accuracy is None
    assert "'fashion-mnist'" in caplog.text and "accuracy is ignored" in caplog.text
    info = inspect_teacher(fashion_checkpoint, allow_other_dataset=True)
    assert info.trained_on == "fashion-mnist" and info.dataset == "mnist"
    assert info.val_accuracy is None and info.test_accuracy is None
    # Used with the data set it records, it needs no override and keeps its accuracies.
    own = load_teacher(fashion_checkpoint, dataset="fashion-mnist")
    assert own.val_accuracy == bundled.val_accuracy


def test_checkpoint_without_a_recorded_dataset_loads(bundled, tmp_path):
    content = _bundled_checkpoint()
    del content["dataset"]
    path = tmp_path / "anonymous.pt"
    torch.save(content, path)
    teacher = load_teacher(path)
    assert teacher.fingerprint == bundled.fingerprint and teacher.val_accuracy is None
    assert inspect_teacher(path).trained_on is None


# ---- inspecting without loading -----------------------------------------------------------------


def _same_as_loaded(info: TeacherInfo, teacher: Teacher) -> None:
    assert info.spec == teacher.spec
    assert (info.arch, info.dataset, info.source) == (teacher.arch, teacher.dataset, teacher.source)
    assert (info.val_accuracy, info.test_accuracy) == (teacher.val_accuracy, teacher.test_accuracy)


def test_inspect_describes_the_bundled_teacher_as_load_does(bundled):
    info = inspect_teacher()
    _same_as_loaded(info, bundled)
    assert info.trained_on == "mnist" and info.params == bundled.params
    assert info.val_accuracy >= 0.99


def test_inspect_describes_a_state_dict_as_load_does(bundled, tmp_path):
    path = tmp_path / "weights.pt"
    torch.save(bundled.module.state_dict(), path)
    info = inspect_teacher(path, arch="small_vgg")
    _same_as_loaded(info, load_teacher(path, arch="small_vgg"))
    assert info.trained_on is None and info.val_accuracy is None


def test_inspect_copies_no_weights_and_draws_no_random_numbers(bundled, tmp_path, monkeypatch):
    path = tmp_path / "weights.pt"
    torch.save(bundled.module.state_dict(), path)

    def refuse(*args, **kwargs):
        raise AssertionError("inspect_teacher loaded weights into a module")

    monkeypatch.setattr(nn.Module, "load_state_dict", refuse)
    rng = torch.random.get_rng_state()
    inspect_teacher()
    inspect_teacher(path, arch="small_vgg")
    assert torch.equal(torch.random.get_rng_state(), rng)


def test_inspect_converts_a_pickled_module_on_one_thread_and_restores_the_count(tmp_path):
    path = tmp_path / "model.pt"
    torch.save(_user_model(), path)
    threads = torch.get_num_threads()
    info = inspect_teacher(path, allow_pickle=True)
    assert torch.get_num_threads() == threads
    _same_as_loaded(info, load_teacher(path, allow_pickle=True))
    assert info.arch == "custom" and info.trained_on is None


def _bad_inputs(tmp_path: Path, bundled: Teacher) -> list[tuple[str, dict]]:
    bare = tmp_path / "bare.pt"
    torch.save(bundled.module.state_dict(), bare)
    misshapen = tmp_path / "misshapen.pt"
    state = dict(bundled.module.state_dict())
    state["0.0.weight"] = torch.zeros(8, 1, 3, 3)
    torch.save(state, misshapen)
    pickled = tmp_path / "model.pt"
    torch.save(_user_model(), pickled)
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint\n")
    return [
        (str(tmp_path / "nowhere.pt"), {}),
        (str(tmp_path), {}),
        (str(corrupt), {"arch": "small_vgg"}),
        (str(pickled), {}),
        (str(bare), {}),
        (str(bare), {"arch": "lenet"}),
        (str(bare), {"arch": "vgg11"}),
        (str(misshapen), {"arch": "small_vgg"}),
        ("default", {"dataset": "cifar10"}),
        (str(WEIGHTS / "small_vgg_mnist.pt"), {"dataset": "cifar10"}),
        (str(WEIGHTS / "small_vgg_mnist.pt"), {"num_classes": 100}),
        (str(WEIGHTS / "small_vgg_mnist.pt"), {"arch": "vgg11"}),
    ]


def test_inspect_raises_the_errors_load_raises(bundled, tmp_path):
    for teacher, kwargs in _bad_inputs(tmp_path, bundled):
        expected = _message(load_teacher, teacher, **kwargs)
        assert _message(inspect_teacher, teacher, **kwargs) == expected, (teacher, kwargs)
        assert len(expected.splitlines()) == 1, expected


_FORK_SCRIPT = textwrap.dedent(
    """
    import multiprocessing as mp

    from n2n_gym.teachers import inspect_teacher, load_teacher


    def child():
        import faulthandler

        faulthandler.dump_traceback_later(50, exit=True)
        load_teacher("default")
        print("child ok", flush=True)


    if __name__ == "__main__":
        inspect_teacher("default")
        process = mp.get_context("fork").Process(target=child)
        process.start()
        process.join(60)
        if process.is_alive():
            process.kill()
            process.join()
        print("exit", process.exitcode, flush=True)
    """
)


def test_a_process_forked_after_inspect_can_load_the_teacher(tmp_path):
    # A fresh interpreter: this one has loaded teachers, so its own thread pool is running. Two
    # threads make torch start its pool when weights are loaded, so the test would catch a leak.
    script = tmp_path / "fork_after_inspect.py"
    script.write_text(_FORK_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "2"}
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=150
    )
    assert done.returncode == 0, done.stderr
    assert "child ok" in done.stdout and "exit 0" in done.stdout, done.stdout + done.stderr


def test_no_teachers_error_message_names_a_command_line_flag_of_another_program():
    for source in sorted(PACKAGE.glob("*.py")):
        if source.name != "cli.py":
            assert "CLI:" not in source.read_text(), source
            assert "--teacher-arch" not in source.read_text(), source
    assert "CLI:" not in (PACKAGE / "cli.py").read_text()


# ---- training -----------------------------------------------------------------------------------


def _train(tiny: DatasetSplits, out: Path, **overrides) -> Teacher:
    settings = {"epochs": 2, "batch_size": 64, "seed": 3, "progress": False, "device": "cpu"}
    return train_teacher("small_vgg", "mnist", out=out, splits=tiny, **{**settings, **overrides})


@pytest.mark.expensive
def test_training_writes_a_checkpoint_that_loads(tiny_mnist, tmp_path):
    out = tmp_path / "teacher.pt"
    teacher = _train(tiny_mnist, out)
    assert teacher.val_accuracy > 0.5 and teacher.test_accuracy > 0.5  # chance is 0.1
    summary = json.loads(sidecar_path(out).read_text())
    assert [e["epoch"] for e in summary["history"]] == [1, 2]
    assert summary["val_accuracy"] == teacher.val_accuracy
    loaded = load_teacher(out)
    assert loaded.fingerprint == teacher.fingerprint == summary["fingerprint"]
    assert loaded.test_accuracy == teacher.test_accuracy
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temporary files


@pytest.mark.expensive
def test_interrupted_training_resumes_where_it_stopped(tiny_mnist, tmp_path, monkeypatch):
    # Resuming is about bookkeeping, not accuracy: a few hundred images keep the four runs quick.
    tiny_mnist = replace(
        tiny_mnist, train_x=tiny_mnist.train_x[:384], train_y=tiny_mnist.train_y[:384]
    )
    reference = _train(tiny_mnist, tmp_path / "reference.pt")

    import n2n_gym.teachers.training as training

    calls = []

    def interrupted_accuracy(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # validation after epoch 2: epoch 1's checkpoint is on disk
            raise KeyboardInterrupt
        return accuracy(*args, **kwargs)

    out = tmp_path / "teacher.pt"
    monkeypatch.setattr(training, "accuracy", interrupted_accuracy)
    with pytest.raises(KeyboardInterrupt):
        _train(tiny_mnist, out)
    partial = json.loads(sidecar_path(out).read_text())
    assert partial["epoch"] == 1 and not partial["complete"]
    monkeypatch.setattr(training, "accuracy", accuracy)

    with pytest.raises(TeacherError, match=r"cannot resume.*lr=0\.1 there, 0\.05 now"):
        _train(tiny_mnist, out, resume=True, lr=0.05)
    resumed = _train(tiny_mnist, out, resume=True)
    summary = json.loads(sidecar_path(out).read_text())
    assert summary["epoch"] == 2 and summary["complete"]
    assert summary["history"][0] == partial["history"][0]  # epoch 1 was not trained again
    # Per-epoch seeding makes the resumed run the same run as the unbroken one.
    for key, value in reference.module.state_dict().items():
        torch.testing.assert_close(resumed.module.state_dict()[key], value)


def test_bad_training_settings_are_refused_before_loading_data(tmp_path):
    with pytest.raises(TeacherError, match=r"'lenet'.*small_vgg"):
        train_teacher("lenet", out=tmp_path / "t.pt")
    with pytest.raises(TeacherError, match="epochs=0"):
        train_teacher("small_vgg", out=tmp_path / "t.pt", epochs=0)
    with pytest.raises(TeacherError, match="lr=-1"):
        train_teacher("small_vgg", out=tmp_path / "t.pt", lr=-1.0)
    with pytest.raises(TeacherError, match="'svhn2'"):
        train_teacher("small_vgg", "svhn2", out=tmp_path / "t.pt")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_training_on_cuda_gives_a_teacher_that_loads_on_cpu(tiny_mnist, tmp_path):
    out = tmp_path / "cuda.pt"
    teacher = _train(tiny_mnist, out, device="cuda")
    assert next(teacher.module.parameters()).is_cuda
    assert teacher.val_accuracy > 0.5
    loaded = load_teacher(out)
    assert loaded.fingerprint == teacher.fingerprint
    cpu_acc = accuracy(loaded.module, tiny_mnist.val_x, tiny_mnist.val_y)
    assert cpu_acc == pytest.approx(teacher.val_accuracy, abs=0.02)  # bf16 vs fp32 inference


# ---- command line -------------------------------------------------------------------------------


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    # The package may run from a checkout that is not pip-installed.
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "n2n_gym.teachers", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=120,
    )


def test_cli_lists_the_zoo_with_sizes(capsys):
    assert main(["list", "--dataset", "cifar100"]) == 0
    shown = capsys.readouterr().out
    for name in ZOO:
        assert name in shown
    assert f"{zoo_spec('resnet18', (3, 32, 32), 100).params:,}" in shown


BAD_COMMAND_LINES = [
    (("train", "lenet5"), "lenet5"),
    (("train", "small_vgg", "--epochs", "0"), "epochs=0"),
    (("train", "small_vgg", "--dataset", "cifar10"), "cifar10"),
    (("train", "small_vgg", "--device", "tpu"), "tpu"),
    (("list", "--dataset", "imagenet"), "imagenet"),
    (("train", "small_vgg", "--epochs", "many"), "many"),
]


@pytest.mark.parametrize("args, named", BAD_COMMAND_LINES)
def test_cli_bad_input_exits_2_with_one_line(args, named, capsys):
    try:
        code = main(list(args))
    except SystemExit as stop:  # argparse's own errors exit from inside parse_args
        code = stop.code
    assert code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and named in lines[0], lines


@pytest.mark.expensive
def test_cli_runs_as_a_module():
    listing = _cli("list")
    assert listing.returncode == 0, listing.stderr
    assert "small_vgg" in listing.stdout and "120,762" in listing.stdout
    bad = _cli("train", "lenet5")
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [bad.stderr.strip()]
    assert "lenet5" in bad.stderr and "Traceback" not in bad.stderr
