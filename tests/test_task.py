"""The task root: bad input refused at the front in one line, JSON round trips, Gymnasium's vectors."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import gymnasium as gym
import pytest
import torch

import evaluate
import n2n_gym
import train_agent
from n2n_gym.distill import DistillConfig
from n2n_gym.envs import EnvConfigError, task_for
from n2n_gym.task import Task, TaskError

BUNDLED = Path(n2n_gym.__file__).parent / "weights" / "small_vgg_mnist.pt"


@pytest.fixture(scope="module")
def other_dataset_teacher(tmp_path_factory) -> str:
    """The bundled MNIST teacher, relabelled as trained on Fashion-MNIST."""
    checkpoint = torch.load(BUNDLED, map_location="cpu", weights_only=True)
    checkpoint["dataset"] = "fashion-mnist"
    path = tmp_path_factory.mktemp("teachers") / "fashion_teacher.pt"
    torch.save(checkpoint, path)
    return str(path)


def bad_inputs(tmp: Path, other_teacher: str) -> list[tuple[dict, str]]:
    """(gymnasium.make keywords, what the one-line error must say) for each bad input."""
    empty = tmp / "empty"
    empty.mkdir(exist_ok=True)
    cases = [
        ({"data_dir": str(empty)}, "missing MNIST/raw/train-images-idx3-ubyte"),
        ({"val_size": 0}, "val_size=0"),
        ({"val_size": 60000}, "val_size=60000"),
        ({"fidelty": "fast"}, "'fidelty' (did you mean 'fidelity'?)"),
        ({"fidelity": {"epoch": 2}}, "'epoch' (did you mean 'epochs'?)"),
        ({"fidelity": "fats"}, "did you mean 'fast'?"),
        ({"constraints": {"max_param": 10}}, "did you mean 'max_params'?"),
        ({"dataset": "mnsit"}, "did you mean 'mnist'?"),
        ({"max_unit": 8}, "did you mean 'max_units'?"),
        ({"fidelity": {"eval_size": 4000}, "val_size": 1000}, "eval_size=4000 exceeds val_size"),
        ({"teacher": other_teacher}, "allow_other_dataset=True"),
        ({"teacher": str(tmp / "missing.pt")}, "does not exist"),
        ({"device": "tpu"}, "device='tpu'"),
    ]
    if not torch.cuda.is_available():
        cases.append(({"device": "cuda"}, "no usable CUDA GPU"))
    return cases


def test_every_bad_input_fails_at_make_in_one_line(tmp_path, other_dataset_teacher):
    for kwargs, message in bad_inputs(tmp_path, other_dataset_teacher):
        with pytest.raises(EnvConfigError) as error:
            gym.make("N2NRemoval-v2", **kwargs)
        text = str(error.value)
        assert message in text and "\n" not in text, (kwargs, text)


def test_the_override_accepts_a_teacher_of_another_data_set(other_dataset_teacher):
    task = Task(teacher=other_dataset_teacher, allow_other_dataset=True)
    assert task.teacher_info.trained_on == "fashion-mnist"
    assert task.teacher_info.val_accuracy is None  # its recorded accuracy is for other data


@pytest.mark.parametrize("columns", ["40", "200"])
def test_train_agent_refuses_bad_input_before_creating_the_run(
    columns, tmp_path, other_dataset_teacher, capsys, monkeypatch
):
    monkeypatch.setenv("COLUMNS", columns)
    for kwargs, message in bad_inputs(tmp_path, other_dataset_teacher):
        out = tmp_path / "deep" / ("x" * 60) / "run"
        argv = ["--budget", "1", "--out", str(out), "--env-kwargs", json.dumps(kwargs)]
        with pytest.raises(SystemExit) as exit_info:
            train_agent.main(argv)
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and message in lines[0] and "Traceback" not in err, err
        assert not out.exists() and not (tmp_path / "deep").exists()
    # the next start is not blocked by the failed ones
    out = tmp_path / "deep" / "run"
    argv = ["--budget", "2", "--out", str(out), "--env-kwargs", '{"evaluator": "proxy"}']
    assert train_agent.main(argv) == 0 and (out / "config.json").exists()


def test_evaluate_refuses_a_folder_that_is_not_a_run_without_a_progress_bar(tmp_path, capsys):
    assert evaluate.main([str(tmp_path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and "not a search run directory" in captured.err
    assert "final training" not in captured.err


def test_a_task_round_trips_through_json_to_the_same_world():
    task = Task(
        fidelity=DistillConfig(transfer_size=512, lr=2e-3),
        constraints={"max_params": 20000, "constraint_mode": "annealed"},
        val_size=3000,
        device="cpu",
    )
    again = Task.from_dict(json.loads(json.dumps(task.to_dict())))
    assert again == task and again.fingerprint == task.fingerprint
    assert task.replace(val_size=2999).fingerprint != task.fingerprint
    resolved = task.resolved()
    assert resolved.teacher_fingerprint and resolved.fingerprint != task.fingerprint
    assert Task.from_dict(resolved.to_dict()).fingerprint == resolved.fingerprint


def test_a_recorded_fingerprint_refuses_other_weights(tmp_path):
    copy = tmp_path / "teacher.pt"
    copy.write_bytes(BUNDLED.read_bytes())
    task = Task(teacher=str(copy)).resolved()
    checkpoint = torch.load(copy, weights_only=True)
    first = next(iter(checkpoint["state_dict"]))
    checkpoint["state_dict"][first] = checkpoint["state_dict"][first] + 1.0
    torch.save(checkpoint, copy)
    with pytest.raises(TaskError, match="fingerprint"):
        Task.from_dict(task.to_dict()).load_teacher()


def test_task_for_splits_environment_options_from_the_task():
    task, options = task_for("N2NShrink-v2", {"evaluator": "proxy", "ratios": [0.5, 1.0]})
    assert task.measurer == "proxy" and options == {"ratios": [0.5, 1.0]}
    env = gym.make("N2NShrink-v2", **task.to_dict(), **options)
    assert env.unwrapped.task == task and env.action_space.n == 2
    with pytest.raises(EnvConfigError, match="not registered"):
        task_for("N2NNothing-v0", {})


# ---- Gymnasium's own vectorisation ----------------------------------------------------------------


def run_make_vec(context: str, kwargs: dict, timeout: float = 240) -> dict:
    """gymnasium.make_vec(async) in a fresh interpreter: a hang fails instead of blocking CI."""
    code = textwrap.dedent(
        f"""
        import json, gymnasium as gym, numpy as np
        import n2n_gym  # noqa: F401
        if __name__ == "__main__":
            envs = gym.make_vec("N2NRemoval-v2", num_envs=2, vectorization_mode="async",
                                vector_kwargs={{"context": {context!r}}}, **{kwargs!r})
            envs.reset(seed=0)
            while True:
                masks = np.stack(envs.call("action_masks"))
                actions = [int(m[1]) for m in masks]  # remove every unit that may go
                _, rewards, terminated, _, infos = envs.step(actions)
                if terminated.all():
                    break
            print(json.dumps({{"rewards": rewards.tolist(), "params": infos["params"].tolist()}}))
            envs.close()
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("context", ["fork", "forkserver", "spawn"])
def test_make_vec_async_works_with_every_start_method(context):
    result = run_make_vec(context, {"evaluator": "proxy"})
    assert len(result["rewards"]) == 2 and result["rewards"][0] == result["rewards"][1]
    assert 0 < result["rewards"][0] < 1


@pytest.mark.expensive
def test_make_vec_async_fork_distils_real_students():
    fidelity = {"transfer_size": 256, "batch_size": 32, "lr": 2e-3, "eval_size": 200}
    result = run_make_vec("fork", {"fidelity": fidelity, "val_size": 500, "device": "cpu"})
    assert result["rewards"][0] == result["rewards"][1] > 0  # the same student, the same reward


def test_make_vec_sync_steps_each_environment_on_its_own():
    envs = gym.make_vec("N2NRemoval-v2", num_envs=2, vectorization_mode="sync", evaluator="proxy")
    envs.reset(seed=0)
    terminated = [False]
    while not all(terminated):
        _, rewards, terminated, _, _ = envs.step([1, 0])
    assert rewards[0] != rewards[1]  # removing everything allowed differs from keeping it all
    envs.close()


def test_task_errors_are_value_errors_with_one_line():
    with pytest.raises(ValueError, match="'teachr' \\(did you mean 'teacher'\\?\\)") as error:
        Task.from_kwargs(teachr="default")
    assert "\n" not in str(error.value)
