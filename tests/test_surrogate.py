"""The surrogate tier: sampled students, an ensemble fit on them, surrogate envs."""

from __future__ import annotations

import gzip
import json
import random
from collections import Counter
from dataclasses import replace
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import n2n_gym  # noqa: F401 (registers the environments)
from n2n_gym.arch import StudentDescription
from n2n_gym.envs import EnvConfigError
from n2n_gym.grid import joint_grid
from n2n_gym.reward import RewardConfig
from n2n_gym.surrogate import SurrogateError, load_surrogate
from n2n_gym.surrogate_fit import main
from n2n_gym.table import load_table
from n2n_gym.task import Task

pytest.importorskip("lightgbm")

NOISE = 0.004  # the accuracy noise between seeds the fixture's table is given


def test_a_grid_sample_is_distinct_reproducible_and_reaches_the_extremes():
    grid = joint_grid(Task(teacher="bundled:narrow_resnet_mnist").teacher_spec)
    assert len(grid) == 3**14
    sample = grid.sample(2000, seed=0)
    assert len({s.ratios for s in sample}) == 2000
    assert all(grid.contains(s.ratios) for s in sample)
    assert [s.ratios for s in grid.sample(2000, seed=0)] == [s.ratios for s in sample]
    assert [s.ratios for s in grid.sample(50, seed=1)] != [s.ratios for s in sample[:50]]
    # Uniform draws would almost never remove 12 or more of the 14 blocks (p < 1e-4 each), nor
    # keep every one; the spread sample has both ends.
    removed = Counter(sum(r == 0.0 for r in s.ratios) for s in sample)
    assert sum(n for k, n in removed.items() if k >= 12) >= 10
    assert removed[0] >= 10
    small = joint_grid(Task().teacher_spec)
    assert len(small.sample(10_000)) == len(small)  # a small grid: all of it


@pytest.fixture(scope="module")
def noisy_table(proxy_table, tmp_path_factory) -> Path:
    """The proxy table with two more seeds for a random tenth of its students, accuracy noise
    growing as students shrink (as measured tables show)."""
    table = load_table(proxy_table)
    rng = random.Random(0)
    rows = {}
    for key, row in table.rows.items():
        if row.measurement.ok and rng.random() < 0.1:
            sigma = NOISE * (1.5 - row.measurement.params / table.teacher.params)
            repeats = tuple(
                {"seed": seed, "accuracy": row.measurement.accuracy + rng.gauss(0, sigma)}
                | {"seconds": row.measurement.seconds, "sample": True}
                for seed in (1, 2)
            )
            row = replace(row, repeats=repeats)
        rows[key] = row
    path = tmp_path_factory.mktemp("noisy") / "noisy.json.gz"
    replace(table, rows=rows, name="noisy").save(path)
    return path


@pytest.fixture(scope="module")
def surrogate_file(noisy_table, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("surrogate") / "proxy-surrogate.json.gz"
    assert main(["fit", str(noisy_table), "--out", str(out), "--members", "3"]) == 0
    return out


def test_a_surrogate_predicts_held_out_students_and_their_noise(surrogate_file, noisy_table):
    surrogate = load_surrogate(surrogate_file)
    v = surrogate.validation
    assert v["test_students"] > 150 and v["calibration_students"] > 150
    assert v["train_students"] + v["calibration_students"] + v["test_students"] == 2187
    assert v["kendall_tau"] > 0.8 and v["spearman"] > 0.9
    assert v["top10_students"] >= 20
    # The ensemble's spread, rescaled on the training students, predicts the held-out seed noise.
    noise = v["noise"]
    assert noise["measured_accuracy_std"] == pytest.approx(NOISE, rel=0.5)
    assert noise["test_predicted_accuracy_std"] == pytest.approx(
        noise["test_measured_accuracy_std"], rel=0.5
    )
    # No student's noise above nearly every measured student's (one outlier does not set it).
    table = load_table(noisy_table)
    stds = [float(np.std(r.seed_accuracies, ddof=1)) for r in table.rows.values() if r.seeds >= 2]
    assert np.quantile(stds, 0.5) < noise["cap"] <= max(stds)
    assert surrogate.noise_cap == noise["cap"]
    # The target: the best predicted reward, at least the best the training table measured.
    table = load_table(noisy_table)
    target = surrogate.target()
    assert target.reward >= max(table.rewards(statistic="mean").values()) - 0.01
    assert target.band > 0


def test_a_surrogate_file_is_data_reproducible_and_refused_when_broken(
    surrogate_file, noisy_table, tmp_path
):
    again = tmp_path / "again.json.gz"
    assert main(["fit", str(noisy_table), "--out", str(again), "--members", "3"]) == 0
    data = json.loads(gzip.decompress(surrogate_file.read_bytes()))
    second = json.loads(gzip.decompress(again.read_bytes()))
    # The same fit, model for model (only the name and the fit's duration differ).
    assert second["models"] == data["models"] and second["validation"] == data["validation"]
    assert all(isinstance(text, str) for member in data["models"] for text in member.values())
    data["models"][0]["accuracy_3"] = data["models"][0]["accuracy_3"].replace("0", "1", 1)
    broken = tmp_path / "broken.json.gz"
    broken.write_bytes(gzip.compress(json.dumps(data).encode()))
    with pytest.raises(SurrogateError, match="corrupt"):
        load_surrogate(broken)
    with pytest.raises(SurrogateError, match="no such file"):
        load_surrogate(tmp_path / "missing.json.gz")
    # Measured for one fidelity: refused for another, as a table is.
    with pytest.raises(
        EnvConfigError, match=r"surrogate 'proxy-surrogate'.*fidelity.transfer_size"
    ):
        gym.make(
            "N2NJoint-v1",
            evaluator="surrogate",
            table=str(surrogate_file),
            fidelity={"transfer_size": 1024},
        )


def test_surrogate_env_answers_with_clock_noise_masks_and_constraints(surrogate_file):
    surrogate = load_surrogate(surrogate_file)
    env = gym.make("N2NJoint-v1", evaluator="surrogate", table=str(surrogate_file))
    gym_check_env(env.unwrapped, skip_render_check=True)
    sb3_check_env(env.unwrapped)
    target = surrogate.target()
    answers = {}
    for query in ("seed", "mean"):
        env = gym.make(
            "N2NJoint-v1", evaluator="surrogate", table=str(surrogate_file), table_query=query
        )
        for _ in range(2):  # the same student twice: the same answer, the second one free
            env.reset(seed=0)
            for ratio in target.row.ratios:
                *_, info = env.step({0.0: 0, 0.5: 1, 1.0: 2}[ratio])
            answers.setdefault(query, []).append(info)
    seed, mean = answers["seed"][0], answers["mean"][0]
    assert seed["eval_seconds"] > 0 and answers["seed"][1]["eval_seconds"] == 0.0
    assert answers["seed"][1]["accuracy"] == seed["accuracy"]
    # One seed is the mean plus that student's fixed noise draw; the mean costs three seeds.
    assert seed["accuracy"] != mean["accuracy"]
    assert abs(seed["accuracy"] - mean["accuracy"]) < 6 * NOISE
    assert mean["eval_seconds"] == pytest.approx(3 * seed["eval_seconds"])
    assert seed["table_target"] == pytest.approx(target.reward)
    assert seed["student_mean_reward"] == pytest.approx(target.reward)
    assert seed["params"] == target.row.measurement.params  # exact, not predicted
    # Constraints apply to predictions as to measurements.
    limit = target.row.measurement.params - 1
    constrained = gym.make(
        "N2NJoint-v1",
        evaluator="surrogate",
        table=str(surrogate_file),
        constraints={"max_params": limit},
    )
    constrained.reset(seed=0)
    for ratio in target.row.ratios:
        *_, info = constrained.step({0.0: 0, 0.5: 1, 1.0: 2}[ratio])
    assert info["rewards"]["violated"]
    assert info["table_target"] < target.reward
    assert surrogate.target(RewardConfig(max_params=limit)).row.measurement.params <= limit


def test_surrogate_halving_stops_weak_students_at_a_curve_point(surrogate_file):
    env = gym.make(
        "N2NJoint-v1",
        evaluator="surrogate",
        table=str(surrogate_file),
        halving={"eta": 2, "rungs": [0.5]},
    )
    halted = []
    rng = np.random.default_rng(0)
    for _ in range(12):
        env.reset(seed=0)
        mask = env.unwrapped.allowed_actions
        done = False
        step = 0
        while not done:
            action = rng.choice(np.flatnonzero(mask[step]))
            *_, done, _, info = env.step(action)
            step += 1
        halted.append(info["halted_at"])
    assert 0.5 in halted and None in halted


def test_students_off_the_surrogates_space_are_refused(surrogate_file):
    surrogate = load_surrogate(surrogate_file)
    ratios = list(surrogate.grid.choices[0])
    student = StudentDescription(surrogate.teacher, (0.7, *(1.0,) * 8))
    assert 0.7 not in ratios
    with pytest.raises(KeyError, match="outside surrogate"):
        surrogate.measurement(student.plan(), student)


def test_fit_refuses_bad_input_in_one_line(noisy_table, tmp_path, capsys):
    assert main(["fit", str(noisy_table), "--out", str(tmp_path)]) == 2
    assert main(["fit", str(noisy_table), "--out", "x.json.gz", "--members", "0"]) == 2
    assert main(["fit", str(tmp_path / "none.json.gz"), "--out", "x.json.gz"]) == 2
    err = capsys.readouterr().err
    assert "is a folder" in err and "--members=0" in err and "no such file" in err
    assert "Traceback" not in err
    assert not Path("x.json.gz").exists()


@pytest.mark.parametrize(
    "env_id",
    [
        "N2NRemoval-NarrowResNet-MNIST-Sur-v0",
        "N2NShrink-NarrowResNet-MNIST-Sur-v0",
        "N2NJoint-NarrowResNet-MNIST-Sur-v0",
    ],
)
def test_the_shipped_surrogate_answers_its_ids(env_id):
    from n2n_gym.surrogate import SURROGATES_DIR, shipped_surrogate

    path = shipped_surrogate("bundled:narrow_resnet_mnist", "mnist")
    assert path is not None and path.parent == SURROGATES_DIR
    assert path.stat().st_size < 5_000_000  # text models, kept small
    surrogate = load_surrogate(path)
    v = surrogate.validation
    assert v["test_students"] >= 50 and v["kendall_tau"] > 0.5  # the figures it was shipped with
    env = gym.make(env_id)
    gym_check_env(env.unwrapped, skip_render_check=True)
    rng = np.random.default_rng(0)
    for _ in range(3):
        env.reset(seed=0)
        done = False
        while not done:
            action = rng.choice(np.flatnonzero(env.unwrapped.action_masks()))
            *_, done, _, info = env.step(action)
        assert 0.0 <= info["accuracy"] <= 1.0 and info["eval_seconds"] >= 0.0
        assert info["table_target"] >= info["student_mean_reward"] - 1e-9
