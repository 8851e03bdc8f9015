"""The benchmark suite: per-task reports pooled by normalised regret, and the --suite command."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from n2n_gym.atomic import write_json_atomic
from n2n_gym.benchmark import benchmark_report
from n2n_gym.compare import load_runs
from n2n_gym.runs import CONFIG_FILE, RunRecorder
from n2n_gym.suite import normalised_regret, suite_report

ROOT = Path(__file__).resolve().parents[1]


def _run(root: Path, env: str, algo: str, seed: int, worth: list[float], target: float) -> Path:
    """A table-env run whose students are worth ``worth`` (rewards equal to their worth)."""
    run_dir = root / env / f"{algo}-{seed}"
    write_json_atomic(run_dir / CONFIG_FILE, {"algo": algo, "env": env, "seed": seed})
    recorder = RunRecorder(run_dir, algo, seed)
    for index, value in enumerate(worth):
        recorder.record(
            value,
            {
                "student_key": f"s{index}",
                "eval_seconds": 1.0,
                "table_target": target,
                "table_band": 0.0,
                "student_mean_reward": value,
            },
        )
    recorder.write_summary(env=env, stop_reason="budget")
    return run_dir


# Two tasks on different scales: targets 0.9 and 0.5, random students worth 0.5 and 0.3.
TASKS = {"TaskA-Tab-v0": (0.9, 0.5), "TaskB-Tab-v0": (0.5, 0.3)}


def _reports(tmp_path: Path, seeds: int = 6):
    reports = {}
    for env, (target, reference) in TASKS.items():
        runs = []
        for seed in range(seeds):
            # "good" reaches the target by its 5th student; random gets halfway (plus a little
            # seed-dependent luck), in each task's own units.
            half = reference + (0.5 + 0.01 * seed) * (target - reference)
            runs.append(_run(tmp_path, env, "good", seed, [reference] * 4 + [target] * 6, target))
            runs.append(_run(tmp_path, env, "random", seed, [reference] * 4 + [half] * 6, target))
        reports[env] = benchmark_report(load_runs(runs), tmp_path / "out" / env, [3, 10], reps=200)
    return reports


def test_the_suite_pools_tasks_of_different_scales_by_normalised_regret(tmp_path):
    reports = _reports(tmp_path)
    references = {env: reference for env, (_, reference) in TASKS.items()}
    suite = suite_report(reports, references, tmp_path / "suite", reps=200)
    rows = {row["algo"]: row["budgets"] for row in suite.rows}
    # After 10 students: good is at the target everywhere, random half-way in both units.
    assert rows["good"]["10"]["iqm"] == pytest.approx(0.0)
    assert rows["random"]["10"]["iqm"] == pytest.approx(0.475, abs=0.03)
    for env in TASKS:
        assert rows["random"]["10"]["per_task_mean"][env] == pytest.approx(0.475, abs=0.01)
    # After 3 students neither found anything: both at the reference, normalised regret 1.
    assert rows["good"]["3"]["iqm"] == pytest.approx(1.0)
    assert rows["good"]["10"]["p_improvement"] == pytest.approx(1.0)
    low, high = rows["random"]["10"]["ci"]
    assert low <= rows["random"]["10"]["iqm"] <= high
    assert suite.rows[0]["algo"] == "good" and suite.seeds == list(range(6))
    assert suite.stability["10"]["halves"] == [[0, 1, 2], [3, 4, 5]]
    for path in suite.files.values():
        assert path.is_file() and path.stat().st_size > 0
    # The same runs, the same report, byte for byte.
    first = (tmp_path / "suite" / "suite.json").read_bytes()
    suite_report(reports, references, tmp_path / "suite", reps=200)
    assert (tmp_path / "suite" / "suite.json").read_bytes() == first
    assert "| good |" in (tmp_path / "suite" / "suite.md").read_text()


def test_a_task_without_room_above_its_reference_is_refused():
    assert normalised_regret(np.array([0.2, 0.0]), 0.9, 0.5) == pytest.approx([0.5, 0.0])
    with pytest.raises(ValueError, match=r"target 0\.5000 must lie above its reference 0\.6000"):
        normalised_regret(np.array([0.1]), 0.5, 0.6)


def test_a_suite_of_live_envs_is_refused_in_one_line_before_any_folder(tmp_path):
    out = tmp_path / "suite"
    command = [sys.executable, "-m", "n2n_gym.commands.benchmark", "--suite"]
    command += ["--env", "N2NJoint-Tab-v0,N2NJoint-v1", "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 2
    assert "--suite: N2NJoint-v1 measures live" in done.stderr
    assert "Traceback" not in done.stderr and not out.exists()


@pytest.mark.expensive
def test_the_suite_command_reports_each_task_and_the_pool(proxy_table, tmp_path):
    out = tmp_path / "suite"
    envs = "N2NJoint-Tab-v0,N2NRemoval-Tab-v0"
    command = [sys.executable, "-m", "n2n_gym.commands.benchmark", "--suite", "--env", envs]
    command += ["--env-kwargs", json.dumps({"table": str(proxy_table)})]
    command += ["--algos", "random,evolution", "--seeds", "4", "--budgets", "5,20"]
    command += ["--workers", "2", "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    for env in envs.split(","):
        assert (out / env / "benchmark.json").is_file()
    suite = json.loads((out / "suite.json").read_text())
    assert suite["envs"] == sorted(envs.split(",")) and suite["seeds"] == [0, 1, 2, 3]
    for env, scale in suite["scales"].items():
        assert scale["target"] > scale["reference"], env
    rows = {row["algo"]: row["budgets"] for row in suite["rows"]}
    assert set(rows) == {"random", "evolution"}
    assert 0.0 <= rows["random"]["20"]["iqm"] <= rows["random"]["5"]["iqm"] + 1e-9
    assert "normalised regret @20" in done.stdout
