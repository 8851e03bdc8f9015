"""``n2n_gym.compress``: a user's model object in, the finished student and its report out."""

from __future__ import annotations

import json

import pytest
import torch

import n2n_gym
from n2n_gym.teachers import load_teacher


@pytest.mark.expensive
def test_compress_a_model_object_in_one_call(tmp_path):
    teacher = load_teacher("default")  # a trained network, as a user's model object
    student, report = n2n_gym.compress(
        teacher.module,
        "mnist",
        compress=10,
        out=tmp_path / "run",
        budget=4,
        algo="random",
        evaluator="proxy",  # the cheap evaluator for the searches; the final training is real
        final={"epochs": 1, "transfer_size": 2048, "lr": 0.01, "eval_size": 1000},
        threads=1,  # a shared machine's share, as --threads gives the command line
        baselines=["uniform-width"],  # trained as the student was, reported beside it
    )
    # the shrink stage's limit: at most a tenth of the teacher's parameters
    assert student.params <= teacher.spec.params // 10
    assert report["params"] == student.params and 0.1 < report["test_accuracy"] <= 1
    uniform = report["baselines"]["students"]["uniform-width"]
    assert abs(uniform["params"] - student.params) / student.params < 0.1
    assert 0.1 < uniform["test_accuracy"] <= 1
    x = torch.zeros(2, *teacher.spec.input_shape)
    assert student.module(x).shape == (2, teacher.spec.num_classes)
    assert (tmp_path / "run" / "1-removal" / "config.json").exists()
    # The model is kept as its description and weights, not pickled: the run reopens anywhere.
    saved = torch.load(tmp_path / "run" / "teacher.pt", weights_only=True)
    assert saved["arch"] == "custom" and saved["spec"] == teacher.spec.to_dict()
    config = json.loads((tmp_path / "run" / "1-removal" / "config.json").read_text())
    assert config["task"]["allow_pickle"] is False
    # The run records the command that does the same: the command line replays it.
    from n2n_gym.commands import train

    again = train.parse_args(["--rerun", str(tmp_path / "run"), "--out", str(tmp_path / "again")])
    assert (again.algo, again.budget, again.stages) == (
        "random",
        4,
        ("removal", "shrink", "select", "final"),
    )
    assert again.shrink_kwargs["constraints"]["max_params"] == teacher.spec.params // 10
    assert again.baselines == ("uniform-width",)


def test_compress_refuses_bad_settings_in_its_own_terms_printing_and_leaving_nothing(
    tmp_path, capsys
):
    out = tmp_path / "run"
    with pytest.raises(ValueError, match=r"^n2n_gym.compress: compress 1: give a finite factor"):
        n2n_gym.compress("default", "mnist", compress=1, out=out)
    with pytest.raises(ValueError, match=r"^n2n_gym.compress: algo 'bogus': choose from reinforce"):
        n2n_gym.compress("default", "mnist", algo="bogus", out=out)
    teacher = load_teacher("default")
    with pytest.raises(ValueError, match="dataset='mnsit' is unknown") as caught:
        n2n_gym.compress(teacher.module, "mnsit", out=out, threads=1)
    assert "--" not in str(caught.value)  # no command-line flag names
    with pytest.raises(ValueError, match="budget must be at least 1"):
        n2n_gym.compress(teacher.module, "mnist", out=out, budget=0)
    with pytest.raises(ValueError, match="baselines: unknown baseline uniform; choose from"):
        n2n_gym.compress(teacher.module, "mnist", out=out, baselines="uniform")
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""
    assert not out.exists()  # the saved model is removed with the folder it made
