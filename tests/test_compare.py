"""Comparing search runs: grouping, statistics at a common budget, files, plots and errors."""

from __future__ import annotations

import csv
import json
import math
import struct
from pathlib import Path

import pytest
from rich.console import Console

from n2n_gym.atomic import write_json_atomic
from n2n_gym.compare import (
    ROW_FIELDS,
    _pareto_front,
    compare_runs,
    comparison_rows,
    comparison_table,
    load_runs,
)
from n2n_gym.runs import CONFIG_FILE, CONVERGED_AFTER, RunRecorder, incumbent_worth

ENV = "N2NRemoval-v2"
TEACHER_PARAMS = 100_000
FAILED = object()  # marks a failed evaluation in a reward list


def make_run(
    root: Path,
    algo: str,
    seed: int,
    rewards: list,
    env: str = ENV,
    error_reward: float = 5.0,
    report: dict | None = None,
    students: list[str] | None = None,
    summary: dict | None = None,
) -> Path:
    """A run directory as train_agent.py writes it; ``FAILED`` entries are failed evaluations.

    ``students`` names each evaluation's student (default: all different).
    """
    students = students or [f"student-{i}" for i in range(len(rewards))]
    run_dir = root / f"{env}-{algo}-{seed}"
    write_json_atomic(
        run_dir / CONFIG_FILE, {"algo": algo, "env": env, "seed": seed, "budget": len(rewards)}
    )
    recorder = RunRecorder(run_dir, algo, seed)
    teacher = {"teacher_accuracy": 0.99, "teacher_params": TEACHER_PARAMS}
    for reward, key in zip(rewards, students, strict=True):
        teacher["student_key"] = key
        if reward is FAILED:
            # A deliberately huge reward: a failure must never become the best student.
            info = {**teacher, "error": "invalid architecture", "error_type": "InvalidArchitecture"}
            recorder.record(error_reward, info, wall_time=0.5)
            continue
        params = round(TEACHER_PARAMS * (1 - reward) / 2) + 1000
        info = {
            **teacher,
            "accuracy": 0.5 + reward / 2,
            "params": params,
            "compression": TEACHER_PARAMS / params,
        }
        recorder.record(reward, info, wall_time=2.0)
    recorder.write_summary(env=env, **(summary or {}))
    if report is not None:
        write_json_atomic(run_dir / "report.json", report)
    return run_dir


@pytest.fixture
def runs_root(tmp_path: Path) -> Path:
    """Three reinforce seeds (bests 0.5, 0.86, 0.9) and two random seeds (bests 0.3, 0.4)."""
    root = tmp_path / "runs"
    make_run(root, "reinforce", 0, [0.1, 0.5, 0.2, 0.4])  # never reaches 95 % of 0.9
    make_run(root, "reinforce", 1, [0.3, 0.86, 0.1, 0.2])  # reaches 0.855 at evaluation 2
    make_run(root, "reinforce", 2, [0.2, 0.1, 0.9, 0.9])  # reaches it at evaluation 3
    make_run(root, "random", 0, [0.3, 0.1, 0.2, 0.0])
    make_run(root, "random", 1, [0.0, 0.4, 0.1, 0.3])
    return root


def by_algo(rows: list[dict]) -> dict[str, dict]:
    return {row["algo"]: row for row in rows}


def test_groups_runs_by_algorithm_and_seed(runs_root, tmp_path):
    comparison = compare_runs([runs_root], tmp_path / "out")
    assert [(row["env"], row["algo"], row["seeds"]) for row in comparison.rows] == [
        (ENV, "reinforce", [0, 1, 2]),  # better mean reward first
        (ENV, "random", [0, 1]),
    ]
    assert len(comparison.runs) == 5
    # Naming the run directories themselves (in any order, one twice) gives the same groups.
    dirs = sorted(runs_root.iterdir(), reverse=True)
    again = compare_runs([*dirs, dirs[0], runs_root], tmp_path / "out2")
    assert len(again.runs) == 5 and again.rows == comparison.rows


def test_best_reward_mean_and_std_over_seeds(runs_root, tmp_path):
    rows = by_algo(compare_runs([runs_root], tmp_path / "out").rows)
    mean = (0.5 + 0.86 + 0.9) / 3
    assert rows["reinforce"]["best_reward_mean"] == pytest.approx(mean)
    sample_std = math.sqrt(((0.5 - mean) ** 2 + (0.86 - mean) ** 2 + (0.9 - mean) ** 2) / 2)
    assert rows["reinforce"]["best_reward_std"] == pytest.approx(sample_std)
    assert sample_std == pytest.approx(0.2203, abs=1e-4)
    assert rows["random"]["best_reward_mean"] == pytest.approx(0.35)
    assert rows["random"]["best_reward_std"] == pytest.approx(math.sqrt(0.005))
    # The group's best student is reinforce seed 2's 0.9, with that student's numbers.
    best = rows["reinforce"]
    assert best["best_accuracy"] == pytest.approx(0.95)
    assert best["best_params"] == 6000
    assert best["best_compression"] == pytest.approx(TEACHER_PARAMS / best["best_params"])
    assert best["best_run"].endswith("reinforce-2")
    assert (best["teacher_accuracy"], best["teacher_params"]) == (0.99, TEACHER_PARAMS)
    assert best["wall_time_mean"] == pytest.approx(4 * 2.0)


def test_a_single_seed_has_no_std(tmp_path):
    make_run(tmp_path / "runs", "ppo", 3, [0.2, 0.6])
    (row,) = compare_runs([tmp_path / "runs"], tmp_path / "out").rows
    assert row["best_reward_mean"] == pytest.approx(0.6) and row["best_reward_std"] is None


def test_evaluations_to_95_percent_of_the_best_reward(runs_root, tmp_path):
    rows = by_algo(compare_runs([runs_root], tmp_path / "out").rows)
    reinforce = rows["reinforce"]
    assert reinforce["target_reward"] == pytest.approx(0.95 * 0.9)
    # Seeds 1 and 2 reach 0.855 at evaluations 2 and 3; seed 0 never does.
    assert reinforce["reached"] == 2
    assert reinforce["evals_to_target_mean"] == pytest.approx(2.5)
    assert reinforce["evals_to_target_std"] == pytest.approx(math.sqrt(0.5))
    random = rows["random"]
    assert random["reached"] == 0
    assert random["evals_to_target_mean"] is None and random["evals_to_target_std"] is None


def test_failed_evaluations_count_but_are_never_best(tmp_path):
    root = tmp_path / "runs"
    make_run(root, "a2c", 0, [0.2, FAILED, 0.6, FAILED])
    make_run(root, "a2c", 1, [FAILED, FAILED, 0.4, 0.1])
    (row,) = compare_runs([root], tmp_path / "out").rows
    assert row["best_reward_mean"] == pytest.approx(0.5)  # (0.6 + 0.4) / 2, not 5.0
    assert row["target_reward"] == pytest.approx(0.95 * 0.6)
    # The failure at evaluation 2 uses up an evaluation: seed 0 reaches 0.57 at evaluation 3.
    assert row["reached"] == 1 and row["evals_to_target_mean"] == 3
    assert row["best_accuracy"] == pytest.approx(0.8)
    # A run whose evaluations within the budget all failed has no best at all.
    rows, budget = comparison_rows(load_runs([root]), budget=2)
    assert budget == 2 and rows[0]["best_reward_mean"] == pytest.approx(0.2)
    assert rows[0]["best_reward_std"] is None  # only seed 0 has a successful student


def test_runs_are_cut_to_the_common_budget(tmp_path):
    root = tmp_path / "runs"
    make_run(root, "ppo", 0, [0.1, 0.2, 0.3, 0.9, 0.95])
    make_run(root, "ppo", 1, [0.4, 0.1, 0.3])  # the shortest run sets the default budget
    comparison = compare_runs([root], tmp_path / "out")
    (row,) = comparison.rows
    assert comparison.budget == row["budget"] == 3
    assert row["best_reward_mean"] == pytest.approx(0.35)  # 0.9 and 0.95 come too late
    assert row["wall_time_mean"] == pytest.approx(3 * 2.0)
    rows, budget = comparison_rows(comparison.runs, budget=1)
    assert budget == 1 and rows[0]["best_reward_mean"] == pytest.approx(0.25)
    with pytest.raises(ValueError, match=r"budget=4 exceeds the 3 distinct students of .*ppo-1"):
        comparison_rows(comparison.runs, budget=4)
    with pytest.raises(ValueError, match="at least 1"):
        comparison_rows(comparison.runs, budget=0)


def test_the_budget_counts_distinct_students_and_repeats_are_free(tmp_path):
    root = tmp_path / "runs"
    # Seed 0 proposes student a three times: 4 evaluations, 2 distinct students.
    make_run(root, "ppo", 0, [0.1, 0.1, 0.1, 0.9], students=["a", "a", "a", "b"])
    make_run(root, "ppo", 1, [0.2, 0.3, 0.4, 0.5])
    comparison = compare_runs([root], tmp_path / "out")
    (row,) = comparison.rows
    assert comparison.budget == 2  # the smallest run has 2 distinct students
    # Within 2 students seed 0 reaches 0.9 (its 4th episode), seed 1 only 0.3.
    assert row["best_reward_mean"] == pytest.approx((0.9 + 0.3) / 2)
    assert incumbent_worth(comparison.runs[0].evaluations, 3).tolist() == [0.1, 0.9, 0.9]


def test_a_converged_run_counts_as_flat_to_any_budget(tmp_path):
    root = tmp_path / "runs"
    make_run(root, "tpe", 0, [0.5, 0.7], summary={"stop_reason": "converged"})
    make_run(root, "tpe", 1, [0.1, 0.2, 0.3, 0.4])
    (row,) = comparison_rows(load_runs([root]), budget=4)[0]
    assert row["best_reward_mean"] == pytest.approx((0.7 + 0.4) / 2)


def test_recorder_stops_at_the_budget_or_when_converged(tmp_path):
    recorder = RunRecorder(tmp_path / "run", "random", 0)
    info = {"student_key": "same"}
    recorder.record(0.5, info)
    assert recorder.stop_reason(2) is None
    for _ in range(CONVERGED_AFTER):
        recorder.record(0.5, info)
    assert recorder.distinct_students == 1 and recorder.stop_reason(2) == "converged"
    recorder.record(0.6, {"student_key": "other"})
    assert recorder.stop_reason(2) == "budget"
    # A resumed recorder counts the same.
    again = RunRecorder(tmp_path / "run", "random", 0)
    assert (again.distinct_students, again.since_new) == (2, 0)
    assert again.stop_reason(40) == "converged"  # 202 episodes: over 5x a budget of 40


def test_each_environment_has_its_own_target(tmp_path):
    root = tmp_path / "runs"
    make_run(root, "ppo", 0, [0.9, 0.8])
    make_run(root, "ppo", 0, [0.1, 0.2], env="N2NShrink-v2")
    comparison = compare_runs([root], tmp_path / "out")
    rows = {row["env"]: row for row in comparison.rows}
    assert rows["N2NShrink-v2"]["target_reward"] == pytest.approx(0.19)
    assert rows["N2NShrink-v2"]["reached"] == 1
    assert rows["N2NShrink-v2"]["evals_to_target_mean"] == 2
    # One panel per environment: both plots are twice as wide as a single environment's.
    single = compare_runs([root / f"{ENV}-ppo-0"], tmp_path / "single")
    for both, one in (
        (comparison.reward_plot, single.reward_plot),
        (comparison.pareto_plot, single.pareto_plot),
    ):
        assert png_size(both)[0] == 2 * png_size(one)[0]
        assert png_size(both)[1] == png_size(one)[1]


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    width, height = struct.unpack(">II", data[16:24])  # the IHDR chunk comes first
    return width, height


def test_plots_are_written_as_png(runs_root, tmp_path):
    make_run(
        runs_root,
        "random",
        2,
        [0.2, 0.3, 0.1, 0.5],
        report={"test_accuracy": 0.7, "params": 26_000, "teacher_test_accuracy": 0.99},
    )
    comparison = compare_runs([runs_root], tmp_path / "out")
    for path in (comparison.reward_plot, comparison.pareto_plot):
        assert path.parent == tmp_path / "out"
        width, height = png_size(path)
        assert width >= 600 and height >= 400
        assert path.stat().st_size > 10_000  # drawn lines and points, not an empty canvas
    assert not list((tmp_path / "out").glob(".*.tmp"))


def test_pareto_front_keeps_the_best_accuracy_for_its_size():
    points = [(10, 0.5), (20, 0.4), (30, 0.7), (30, 0.8), (5, 0.3), (40, 0.8)]
    assert _pareto_front(points) == [(5, 0.3), (10, 0.5), (30, 0.8)]


def test_rows_are_written_as_json_and_csv(runs_root, tmp_path):
    comparison = compare_runs([runs_root], tmp_path / "out")
    saved = json.loads(comparison.json_path.read_text())
    assert saved["budget"] == 4 and saved["target_fraction"] == 0.95
    assert len(saved["runs"]) == 5
    assert saved["rows"] == comparison.rows
    assert all(list(row) == list(ROW_FIELDS) for row in comparison.rows)
    with comparison.csv_path.open(newline="") as handle:
        table = list(csv.DictReader(handle))
    assert [row["algo"] for row in table] == ["reinforce", "random"]
    reinforce, random = table
    assert list(reinforce) == list(ROW_FIELDS)
    assert reinforce["seeds"] == "0;1;2" and reinforce["reached"] == "2"
    assert float(reinforce["best_reward_mean"]) == pytest.approx((0.5 + 0.86 + 0.9) / 3)
    assert random["evals_to_target_mean"] == ""  # no seed reached the target


def test_table_shows_mean_std_and_reached(runs_root, tmp_path):
    comparison = compare_runs([runs_root], tmp_path / "out")
    console = Console(record=True, width=200)
    console.print(comparison_table(comparison))
    text = console.export_text()
    assert "at 4 student evaluations" in text
    reinforce = next(line for line in text.splitlines() if "reinforce" in line)
    assert "0.7533 ± 0.2203" in reinforce
    assert "2.5 ± 0.7" in reinforce and "2/3" in reinforce
    assert "95.00 %" in reinforce and "6,000" in reinforce
    random = next(line for line in text.splitlines() if "random" in line)
    assert "0/2" in random


def test_clear_errors_for_folders_that_are_not_runs(tmp_path):
    stray = tmp_path / "photos"
    stray.mkdir()
    (stray / "cat.png").write_bytes(b"x")
    with pytest.raises(ValueError, match=r"photos is not a run directory.*train_agent\.py"):
        load_runs([stray])
    with pytest.raises(ValueError, match="missing does not exist"):
        load_runs([tmp_path / "missing"])
    started = tmp_path / "started"
    write_json_atomic(started / CONFIG_FILE, {"algo": "ppo", "env": ENV, "seed": 0})
    with pytest.raises(ValueError, match=r"started has no evaluations yet"):
        load_runs([started])


def test_a_folder_skips_runs_without_evaluations(runs_root, tmp_path):
    empty = runs_root / "just-started"
    write_json_atomic(empty / CONFIG_FILE, {"algo": "ppo", "env": ENV, "seed": 0})
    (empty / "evaluations.jsonl").write_text("")
    runs = load_runs([runs_root])
    assert len(runs) == 5 and "ppo" not in {run.algo for run in runs}
