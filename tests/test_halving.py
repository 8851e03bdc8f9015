"""Successive halving: the rule, tables, live distillation, the cache, and bad settings."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

import n2n_gym  # noqa: F401 (registers the environments)
from n2n_gym.arch import StudentDescription
from n2n_gym.cache import MeasurementCache
from n2n_gym.distill import DistillConfig
from n2n_gym.evaluation import Evaluator
from n2n_gym.halving import Halving, HalvingConfig
from n2n_gym.measure import ProxyMeasurer
from n2n_gym.task import Task, TaskError
from n2n_gym.teachers import small_vgg

SPEC = small_vgg()
HALVING = {"eta": 3, "rungs": [0.25, 0.5]}


def test_a_student_continues_when_it_ranks_in_the_top_third_of_its_rung():
    halving = Halving(HalvingConfig(eta=3, rungs=(0.5,)))
    # 1st always; 2nd only above the 1st; 4th needs to be in the top 2 of 4
    decisions = [halving.keep(0, reward) for reward in (0.5, 0.4, 0.6, 0.55, 0.1)]
    assert decisions == [True, False, True, True, False]
    assert halving.measured(0) == 5


@pytest.mark.parametrize(
    "halving, match",
    [
        ({"eta": 1}, "eta"),
        ({"rungs": [0.5, 0.25]}, "rungs"),
        ({"rungs": [1.0]}, "rungs"),
        ({"eta": 3, "rung": [0.5]}, "no setting rung"),
        ("fast", "pass a dict"),
    ],
)
def test_bad_halving_settings_fail_at_make_naming_the_setting(halving, match):
    with pytest.raises(TaskError, match=match):
        gym.make("N2NJoint-Tab-v0", halving=halving)


def test_halving_round_trips_through_the_task_file():
    task = Task(measurer="table", halving=HALVING)
    assert task.halving == HalvingConfig(3, (0.25, 0.5))
    assert Task.from_dict(task.to_dict()) == task


def test_halving_needs_a_measurer_that_can_stop_part_way():
    with pytest.raises(ValueError, match="cannot stop a measurement part-way"):
        Evaluator(ProxyMeasurer(SPEC), halving=HalvingConfig())
    with pytest.raises(TaskError, match="proxy"):
        Task(measurer="proxy", halving=HALVING).build_evaluator()
    with pytest.raises(TaskError, match=r"not points of table .* learning curves"):
        Task(measurer="table", halving={"rungs": [0.3]}).build_evaluator()


def play_random(env, episodes: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    infos = []
    for episode in range(episodes):
        env.reset(seed=episode)
        done = False
        while not done:
            mask = env.unwrapped.action_masks()
            _, reward, done, _, info = env.step(int(rng.choice(np.flatnonzero(mask))))
        infos.append(info | {"reward": reward})
    return infos


def test_on_a_table_halving_costs_less_and_keeps_every_full_measurement():
    full = play_random(gym.make("N2NJoint-Tab-v0"), 120)
    halved = play_random(gym.make("N2NJoint-Tab-v0", halving=HALVING), 120)
    table = gym.make("N2NJoint-Tab-v0").unwrapped.evaluator.measurer.table
    stopped = [h for h in halved if h["halted_at"] is not None]
    assert stopped and all(f["halted_at"] is None for f in full)
    for f, h in zip(full, halved, strict=True):
        assert f["student_key"] == h["student_key"]  # random search ignores the rewards
        if h["halted_at"] is None:  # continued to the end: exactly the full measurement
            assert (h["accuracy"], h["reward"]) == (f["accuracy"], f["reward"])
        elif not h["cache_hit"]:
            # the reward of the curve point where it stopped, and only its cost
            row = table.by_ratios[tuple(h["student"]["ratios"])]
            point = next(
                p
                for p in row.measurement.curve
                if p[0] == row.measurement.curve[-1][0] * h["halted_at"]
            )
            # its training up to there, plus the one validation a live rung check pays
            assert h["accuracy"] == point[2]
            assert point[1] < h["eval_seconds"] < row.measurement.seconds
            assert h["accuracy"] <= row.measurement.accuracy + 0.05
    spent = lambda infos: sum(i["eval_seconds"] for i in infos)  # noqa: E731
    assert spent(halved) < 0.7 * spent(full)
    # a winner can be stopped early, but what is found at full fidelity is close to the best
    best = lambda infos: max(i["reward"] for i in infos if i["halted_at"] is None)  # noqa: E731
    assert best(full) * 0.99 <= best(halved) <= best(full)


FIDELITY = DistillConfig(transfer_size=512, batch_size=32, lr=2e-3, eval_size=500)
TASK = Task(fidelity=FIDELITY, device="cpu", val_size=500)
STUDENT = StudentDescription(SPEC, (1, 0, 1, 0, 1, 0, 1, 1, 1))


@pytest.fixture(autouse=True)
def one_torch_thread():
    """CPU results depend on the thread count (and train_agent.main sets it): one, everywhere."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def measurer():
    return TASK.replace(curve_points=4).build_measurer()


def test_live_halving_stops_where_the_curve_was_measured_and_continues_bit_for_bit(measurer):
    plan = STUDENT.plan()
    full = measurer.measure(plan, STUDENT)
    asked = []
    kept = measurer.measure_halving(
        plan, STUDENT, (0.25, 0.5), lambda r, m: asked.append(m) or True
    )
    assert [m.halted_at for m in asked] == [0.25, 0.5] and kept.halted_at is None
    assert kept.accuracy == full.accuracy  # the checks at the rungs change nothing
    stopped = measurer.measure_halving(plan, STUDENT, (0.25, 0.5), lambda r, m: r < 1)
    assert stopped.halted_at == 0.5 and stopped.accuracy == full.curve[1][2]
    # It distilled only the images up to its rung (no wall-clock comparison: timings are noisy).
    assert [point[0] for point in stopped.curve] == [point[0] for point in full.curve[:2]]


def test_a_halted_student_is_never_cached_as_a_full_measurement(tmp_path, measurer):
    cache = MeasurementCache(tmp_path / "rewards.sqlite")
    evaluator = Evaluator(measurer, cache=cache, halving=HalvingConfig(eta=3, rungs=(0.5,)))
    evaluator.halving.keep(0, 1.0)  # a strong earlier student: this one ranks below it
    first = evaluator.evaluate(STUDENT)
    assert first.halted_at == 0.5 and first.ok and len(cache) == 0
    again = evaluator.evaluate(STUDENT)  # a repeat within the search: answered, free
    assert again.cache_hit and again.seconds == 0 and again.reward == first.reward
    # without halving the same cache measures it in full
    full = Evaluator(measurer, cache=cache).evaluate(STUDENT)
    assert full.halted_at is None and not full.cache_hit and len(cache) == 1
    assert full.accuracy > 0.3


def test_halving_with_worker_processes_is_refused_before_the_cache_file_exists(tmp_path):
    from n2n_gym.backends import ProcessPoolBackend

    cache = tmp_path / "run" / "rewards.sqlite"
    task = TASK.replace(halving=HalvingConfig(), cache_path=str(cache))
    with ProcessPoolBackend(task, 1) as backend, pytest.raises(TaskError, match="whole students"):
        task.build_evaluator(backend)
    assert not cache.exists()


def test_tpe_hyperband_lets_optunas_pruner_stop_students(tmp_path):
    import train_agent
    from n2n_gym.runs import read_evaluations

    out = tmp_path / "run"
    argv = ["--algo", "tpe-hyperband", "--env", "N2NJoint-Tab-v0", "--budget", "60"]
    assert train_agent.main([*argv, "--out", str(out), "--env-kwargs", '{"halving": {}}']) == 0
    records = read_evaluations(out)
    halted = [r for r in records if r["halted_at"] is not None]
    assert 0 < len(halted) < len(records)
    assert {r["halted_at"] for r in halted} <= {0.25, 0.5}
    # the pruned students cost less than the full ones (their training stopped at a rung)
    spent = {r["student_key"]: r["eval_seconds"] for r in records if not r["cache_hit"]}
    full = [
        spent[r["student_key"]] for r in records if r["halted_at"] is None and not r["cache_hit"]
    ]
    assert max(spent[r["student_key"]] for r in halted if not r["cache_hit"]) < max(full)


def test_a_pruning_search_without_halving_fails_before_any_folder(tmp_path, capsys):
    import train_agent

    out = tmp_path / "run"
    with pytest.raises(SystemExit):
        train_agent.parse_args(
            ["--algo", "tpe-hyperband", "--env", "N2NJoint-Tab-v0", "--out", str(out)]
        )
    assert "add halving to --env-kwargs" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.expensive
def test_the_thread_backend_halves_as_the_search_process_does(measurer):
    from n2n_gym.backends import ThreadBackend

    halving = HalvingConfig(eta=3, rungs=(0.5,))
    alone = Evaluator(measurer, halving=halving)
    with ThreadBackend(TASK.replace(curve_points=4), 2) as backend:
        shared = Evaluator(backend, halving=halving)
        for evaluator in (alone, shared):
            evaluator.halving.keep(0, 1.0)  # a strong earlier student
        assert [measured.halted_at for measured in shared.evaluate_many([STUDENT])] == [0.5]
        assert shared.evaluate_many([STUDENT])[0].cache_hit
        assert alone.evaluate(STUDENT).accuracy == shared.evaluate(STUDENT).accuracy


def test_a_stopped_student_proposed_again_is_measured_again_once_the_field_ranks_below_it(
    measurer,
):
    evaluator = Evaluator(measurer, halving=HalvingConfig(eta=2, rungs=(0.5,)))
    evaluator.halving.keep(0, 1.0)  # one strong earlier student: this one is stopped
    first = evaluator.evaluate(STUDENT)
    assert first.halted_at == 0.5
    assert evaluator.evaluate(STUDENT).cache_hit  # the field has not changed: still out
    for _ in range(3):
        evaluator.halving.keep(0, 0.0)  # three weak ones: now it ranks in the top half
    assert not evaluator.halving.still_out(0, first.reward)
    again = evaluator.evaluate(STUDENT)
    assert not again.cache_hit and again.halted_at is None and again.accuracy > first.accuracy
