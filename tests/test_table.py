"""The tabular tier: a grid measured by the live evaluator, a table file, table envs."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env
from torch import nn

import n2n_gym  # noqa: F401 (registers the environments)
from n2n_gym import tabulate
from n2n_gym.arch import StudentDescription
from n2n_gym.cache import json_digest
from n2n_gym.data import load_dataset
from n2n_gym.envs import EnvConfigError
from n2n_gym.grid import Grid, joint_grid
from n2n_gym.measure import DistillationMeasurer
from n2n_gym.reward import RewardConfig, compute_reward
from n2n_gym.runs import read_evaluations
from n2n_gym.table import Table, TableError, load_table, shipped_table
from n2n_gym.task import Task
from n2n_gym.teachers import small_vgg

# 16 optimiser steps per student, scored on 500 images: a real measurement in well under a second.
FIDELITY = {"transfer_size": 512, "batch_size": 32, "lr": 2e-3, "eval_size": 500}


def _train_tiny_teacher(path: Path) -> None:
    """A 3-unit CNN (conv stem, conv, linear head) trained for a few seconds on MNIST."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * 7 * 7, 10),
    )
    data = load_dataset("mnist")
    x, y = data.train_x[:2048], data.train_y[:2048]
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(2):
        for start in range(0, len(x), 64):
            loss = nn.functional.cross_entropy(model(x[start : start + 64]), y[start : start + 64])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    torch.save(model.eval(), path)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict:
    """A tiny table built end to end by the command line: 6 students, half of them repeated."""
    folder = tmp_path_factory.mktemp("tiny_table")
    teacher = folder / "tiny.pt"
    _train_tiny_teacher(teacher)
    out = folder / "tiny.json.gz"
    argv = [
        "--teacher", str(teacher), "--allow-pickle", "--fidelity", json.dumps(FIDELITY),
        "--workers", "1", "--shrink-fixed", "--repeat-fraction", "0.5",
        "--build-dir", str(folder / "tiny.build"), "--out", str(out),
    ]  # fmt: skip
    assert tabulate.main(argv) == 0
    task = Task(teacher=str(teacher), allow_pickle=True, fidelity=FIDELITY, device="cpu")
    kwargs = {"teacher": str(teacher), "allow_pickle": True, "fidelity": FIDELITY}
    return {"out": out, "task": task, "argv": argv, "kwargs": kwargs, "teacher": teacher}


@pytest.mark.expensive
def test_tiny_table_holds_every_grid_student_with_curve_latency_and_repeats(tiny):
    table = load_table(tiny["out"])
    grid = joint_grid(tiny["task"].teacher_spec, shrink_fixed=True)
    assert len(grid) == 6 and len(table) == 6
    assert {row.ratios for row in table.rows.values()} == {s.ratios for s in grid.students()}
    for row in table.rows.values():
        m = row.measurement
        assert m.ok, m.error
        assert [images for images, _, _ in m.curve] == [128, 256, 384, 512]
        assert m.curve[-1][2] == m.accuracy and m.curve[-1][1] == m.seconds > 0
        assert all(a[1] < b[1] for a, b in zip(m.curve, m.curve[1:], strict=False))
        assert row.latency_ms > 0
    assert len(table.noise_sample()) == 3
    # The top 5 % (here one student) is measured with three seeds.
    top = max(table.rows.values(), key=lambda row: table.mean_reward(row))
    assert top.seeds == 3 and [r["seed"] for r in top.repeats] == [1, 2]
    assert table.target().seeds == 3 and table.target().resolved
    assert max(row.measurement.accuracy for row in table.rows.values()) > 0.3  # chance is 0.1
    assert table.build["curve_points"] == 4 and table.build["repeat_seed"] == 1
    # The table names the world it was measured in.
    teacher = tiny["task"].load_teacher()
    table.check_task(tiny["task"], teacher.fingerprint)
    assert table.task["fidelity"]["transfer_size"] == 512


@pytest.mark.expensive
def test_table_rows_are_what_a_live_evaluation_returns(tiny):
    """Rebuilding rows live with the table's seed, on one thread as the build's workers, gives the
    same measurement."""
    table = load_table(tiny["out"])
    task = tiny["task"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        measurer = DistillationMeasurer(
            task.load_teacher(), task.load_data(), task.fidelity, device="cpu"
        )
        assert measurer.teacher_accuracy == table.teacher_accuracy
        for row in list(table.rows.values())[:2]:
            student = StudentDescription(table.teacher, row.ratios)
            live = measurer.measure(student.plan(), student)
            stored = row.measurement
            assert (live.accuracy, live.params, live.flops) == (
                stored.accuracy,
                stored.params,
                stored.flops,
            )
    finally:
        torch.set_num_threads(threads)


@pytest.mark.expensive
def test_a_rerun_finds_the_table_built_and_a_killed_build_continues(tiny, tmp_path, capsys):
    build = tiny["out"].with_name("tiny.build")
    assert sorted(p.name for p in build.glob("*.jsonl")) == [
        "latency.jsonl",
        "repeat-0000.jsonl",
        "seeds.jsonl",  # the top student's further seeds
        "shard-0000.jsonl",
        "wall.jsonl",  # each invocation's wall-clock, summed into the table
    ]
    # A build interrupted after its shard files were lost continues from the cache: nothing is
    # measured again, and the assembled table is the same.
    copy = tmp_path / "copy.build"
    shutil.copytree(build, copy)
    (copy / "shard-0000.jsonl").unlink()
    out = tmp_path / "copy.json.gz"
    argv = [*tiny["argv"][:-4], "--out", str(out), "--build-dir", str(copy)]
    assert tabulate.main(argv) == 0
    assert load_table(out).to_dict()["rows"] == load_table(tiny["out"]).to_dict()["rows"]
    # Other settings in the same folder are refused before anything runs.
    other = [*argv, "--curve-points", "2"]
    assert tabulate.main(other) == 2
    assert "holds another table build" in capsys.readouterr().err


@pytest.mark.expensive
def test_a_sampled_build_measures_only_its_students_and_searches_feed_another(
    tiny, tmp_path, capsys
):
    from n2n_gym.commands import train

    base = [a for a in tiny["argv"] if a not in ("--repeat-fraction", "0.5")][:-4]
    sample = tmp_path / "sample.json.gz"
    argv = [*base, "--sample", "3", "--build-dir", str(tmp_path / "s.build"), "--out", str(sample)]
    assert tabulate.main(argv) == 0
    full, table = load_table(tiny["out"]), load_table(sample)
    assert len(table) == 3 and set(table.by_ratios) < set(full.by_ratios)
    # Another sample in the same folder is another build: refused before anything runs.
    assert tabulate.main([*argv, "--sample-seed", "7"]) == 2
    assert "holds another table build" in capsys.readouterr().err
    # The students a search visited (here a search on the full table) make a table of their own.
    run = tmp_path / "run"
    env_kwargs = json.dumps({**tiny["kwargs"], "evaluator": "table", "table": str(tiny["out"])})
    search = ["--algo", "random", "--budget", "4", "--env", "N2NJoint-v1", "--out", str(run)]
    assert train.main([*search, "--env-kwargs", env_kwargs]) == 0
    visited = {tuple(r["student"]["ratios"]) for r in read_evaluations(run)}
    out = tmp_path / "visited.json.gz"
    visit = [*base, "--students-from", str(run), "--build-dir", str(tmp_path / "v.build")]
    assert tabulate.main([*visit, "--out", str(out)]) == 0
    assert set(load_table(out).by_ratios) == visited
    assert tabulate.main([*base, "--students-from", str(tmp_path)]) == 2
    assert "no evaluations.jsonl there" in capsys.readouterr().err


@pytest.mark.expensive
def test_table_env_answers_from_the_table_with_masks_clock_and_optimum(tiny):
    table = load_table(tiny["out"])
    env = gym.make("N2NJoint-v1", evaluator="table", table=str(tiny["out"]), **tiny["kwargs"])
    gym_check_env(env.unwrapped, skip_render_check=True)
    sb3_check_env(env.unwrapped)
    base = env.unwrapped
    # Unit 0 (the stem) may only be halved or kept, the middle conv removed too; the head stays.
    assert base.allowed_actions.tolist() == [
        [False, True, True],
        [True, True, True],
        [False, False, True],
    ]
    rewards = table.rewards()
    optimum = max(rewards.values())
    # A fresh environment: the checkers' episodes filled the other one's cache.
    env = gym.make("N2NJoint-v1", evaluator="table", table=str(tiny["out"]), **tiny["kwargs"])
    seen = {}
    for actions in ([1, 0, 2], [2, 1, 2], [1, 0, 2]):
        env.reset(seed=0)
        for action in actions:
            _, reward, done, _, info = env.step(action)
        assert done
        row = table.by_ratios[tuple(info["student"]["ratios"])]
        m = row.measurement
        expected = compute_reward(
            m.accuracy, table.teacher_accuracy, m.params, table.teacher.params, m.flops
        ).reward
        assert reward == pytest.approx(expected)
        assert info["table_optimum"] == pytest.approx(optimum)
        # What a benchmark scores: the student's seed-mean reward against the seed-mean target.
        assert info["student_mean_reward"] == pytest.approx(table.mean_reward(row))
        assert info["table_target"] == pytest.approx(table.target().reward)
        assert info["table_band"] == pytest.approx(table.target().band) and info["table_band"] > 0
        repeat = row.key in seen
        assert info["cache_hit"] is repeat
        assert info["eval_seconds"] == (0.0 if repeat else m.seconds)
        seen[row.key] = reward
    # Constraints still apply to stored measurements, and the optimum follows them.
    limit = sorted(r.measurement.params for r in table.rows.values())[2]
    constrained = gym.make(
        "N2NJoint-v1",
        evaluator="table",
        table=str(tiny["out"]),
        constraints={"max_params": limit},
        **tiny["kwargs"],
    )
    constrained.reset(seed=0)
    for action in (2, 2, 2):  # the teacher itself: over the limit
        *_, info = constrained.step(action)
    assert info["rewards"]["violated"] and constrained.unwrapped.last_result.reward == -1.0
    allowed = [
        r for k, r in table.rewards(RewardConfig(max_params=limit)).items()
        if table.rows[k].measurement.params <= limit
    ]  # fmt: skip
    assert info["table_optimum"] == pytest.approx(max(allowed))


@pytest.mark.expensive
def test_a_table_answers_one_seed_or_the_seed_mean(tiny):
    table = load_table(tiny["out"])
    top = table.target().row
    assert top.seeds == 3
    answers = {}
    for query in ("seed", "mean"):
        env = gym.make(
            "N2NJoint-v1",
            evaluator="table",
            table=str(tiny["out"]),
            table_query=query,
            **tiny["kwargs"],
        )
        env.reset(seed=0)
        for ratio in top.ratios:  # the joint env's actions: remove, halve, keep
            *_, info = env.step({0.0: 0, 0.5: 1, 1.0: 2}[ratio])
        answers[query] = info
    assert answers["seed"]["accuracy"] == top.measurement.accuracy
    assert answers["mean"]["accuracy"] == pytest.approx(top.mean_accuracy)
    assert answers["mean"]["accuracy"] != answers["seed"]["accuracy"]
    # The mean costs every seed it averages.
    seconds = top.measurement.seconds + sum(r["seconds"] for r in top.repeats)
    assert answers["mean"]["eval_seconds"] == pytest.approx(seconds)
    assert answers["mean"]["table_optimum"] == pytest.approx(
        max(table.rewards(statistic="mean").values())
    )
    with pytest.raises(EnvConfigError, match="table_query='median'"):
        gym.make("N2NJoint-Tab-v0", table_query="median")


@pytest.mark.expensive
def test_a_version_1_table_still_loads(tiny, tmp_path):
    """Version 1 kept at most one repeat per row in a column "repeat"."""
    content = json.loads(gzip.decompress(tiny["out"].read_bytes()))
    for row in content["rows"]:
        row[-1] = row[-1][0] if row[-1] else None
    content |= {"version": 1, "columns": [*content["columns"][:-1], "repeat"]}
    content["sha256"] = json_digest(content["rows"])
    old = tmp_path / "v1.json.gz"
    old.write_bytes(gzip.compress(json.dumps(content).encode()))
    table, new = load_table(old), load_table(tiny["out"])
    assert table.rows.keys() == new.rows.keys()
    assert {k: r.seeds for k, r in table.rows.items()} == {
        k: min(r.seeds, 2) for k, r in new.rows.items()
    }


@pytest.mark.expensive
def test_table_is_refused_for_another_fidelity_or_a_broken_file(tiny, tmp_path):
    other = {**FIDELITY, "lr": 1e-3}
    kwargs = {**tiny["kwargs"], "fidelity": other}
    with pytest.raises(EnvConfigError, match=r"fidelity\.lr \(table 0\.002, task 0\.001\)"):
        gym.make("N2NJoint-v1", evaluator="table", table=str(tiny["out"]), **kwargs)
    data = tiny["out"].read_bytes()
    truncated = tmp_path / "truncated.json.gz"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(TableError, match="corrupt or truncated") as error:
        load_table(truncated)
    assert "\n" not in str(error.value)
    content = json.loads(gzip.decompress(data))
    content["rows"][0][2] = 0.999  # a tampered accuracy
    tampered = tmp_path / "tampered.json.gz"
    tampered.write_bytes(gzip.compress(json.dumps(content).encode()))
    with pytest.raises(TableError, match="checksum"):
        load_table(tampered)
    content = json.loads(gzip.decompress(data))
    content["version"] = 99
    newer = tmp_path / "newer.json.gz"
    newer.write_bytes(gzip.compress(json.dumps(content).encode()))
    with pytest.raises(TableError, match="version 99"):
        load_table(newer)
    with pytest.raises(EnvConfigError, match="no such file"):
        gym.make("N2NJoint-v1", evaluator="table", table=str(tmp_path / "none.json.gz"))


@pytest.mark.expensive
def test_stats_reports_the_optimum_and_random_search_odds(tiny, capsys):
    assert tabulate.main(["--stats", "--table", str(tiny["out"]), "--budget", "3"]) == 0
    out = capsys.readouterr().out
    table = load_table(tiny["out"])
    report = table.difficulty(budget=3)
    assert f"{report['optimum']:.4f}" in out
    # 6 students, one optimum: (n + 1) / (k + 1) = 3.5 draws; 3 distinct draws find it half the time.
    assert report["reach_optimum"]["expected_evaluations"] == pytest.approx(3.5)
    assert report["reach_optimum"]["p_within_budget"] == pytest.approx(0.5)
    # The same report for a build folder, finished or not, from its shards and cache.
    assert tabulate.main([*tiny["argv"], "--stats", "--budget", "3"]) == 0
    out = capsys.readouterr().out
    assert "provisional: 6 of 6 students measured" in out and f"{report['optimum']:.4f}" in out


def test_joint_grid_of_the_bundled_teacher_is_the_documented_one():
    grid = joint_grid(small_vgg())
    assert len(grid) == 3**7 == 2187
    assert grid.choices[0] == (1.0,) and grid.choices[-1] == (1.0,)
    assert all(unit == (0.0, 0.5, 1.0) for unit in grid.choices[1:-1])
    assert grid.contains((1, 0, 0.5, 1, 1, 0, 0.5, 1, 1))
    assert not grid.contains((1, 0, 0.25, 1, 1, 0, 0.5, 1, 1))
    assert Grid.from_dict(grid.teacher, grid.to_dict()) == grid


SHIPPED = {
    "": shipped_table("default", "mnist"),
    "FashionMNIST-": shipped_table("default", "fashion-mnist"),
}


@pytest.mark.parametrize("name", SHIPPED)
def test_a_shipped_table_covers_the_grid_resolves_its_top_and_answers_table_envs(name):
    path = SHIPPED[name]
    table = load_table(path)
    assert isinstance(table, Table) and len(table) == 2187
    assert path.stat().st_size < 3e6
    assert all(row.measurement.ok for row in table.rows.values())
    noise = table.noise()
    assert noise["repeated"] >= 200 and noise["accuracy_std"] < 0.02
    # A second seed ranks the students alike (rewards and accuracies >= 0.9).
    agreement = tabulate.table_vs_repeat(table)
    assert agreement["reward"] >= 0.9 and agreement["accuracy"] >= 0.9, agreement
    # The top 5 % has three seeds each, so the target is a seed mean with a noise band.
    target = table.target()
    assert target.resolved and target.seeds == 3 and 0 < target.band < 0.02
    assert table.build["top_seeds"] == 3
    for env_id, actions in (
        (f"N2NRemoval-{name}Tab-v0", 2),
        (f"N2NShrink-{name}Tab-v0", 2),
        (f"N2NJoint-{name}Tab-v0", 3),
    ):
        env = gym.make(env_id)
        gym_check_env(env.unwrapped, skip_render_check=True)
        sb3_check_env(env.unwrapped)
        assert env.action_space.n == actions
        _, info = env.reset(seed=0)
        rng = np.random.default_rng(0)
        for _ in range(50):
            env.reset()
            done = False
            while not done:
                mask = info["action_mask"]
                _, reward, done, _, info = env.step(rng.choice(np.flatnonzero(mask)))
                info.setdefault("action_mask", mask)
            assert reward <= info["table_optimum"] + 1e-12
            assert info["student_mean_reward"] <= info["table_target"] + 1e-12
            _, info = env.reset()
