"""Evaluators: the proxy's behaviour, expected errors as results, and the persistent reward cache."""

from __future__ import annotations

import json
import multiprocessing
import pickle
import sqlite3

import pytest
import torch

from n2n_gym.arch import StudentDescription
from n2n_gym.cache import MeasurementCache
from n2n_gym.data import load_dataset
from n2n_gym.distill import DistillConfig
from n2n_gym.evaluation import EvalResult, Evaluator
from n2n_gym.measure import DistillationMeasurer, Measurer, ProxyMeasurer
from n2n_gym.reward import RewardConfig
from n2n_gym.teachers import load_teacher, small_vgg

SPEC = small_vgg()
TYPICAL = (1, 0, 1, 0, 1, 0, 1, 1, 1)  # three of nine units removed
SMALLER = (1, 0, 0, 0, 1, 0, 1, 1, 1)  # the same with one more removed
INVALID = (0, 1, 1, 1, 1, 1, 1, 1, 1)  # the stem cannot be removed
# Small enough for tests; the higher lr makes 30 steps enough to be far above chance.
TINY = DistillConfig(transfer_size=1000, epochs=1, batch_size=32, lr=2e-3, eval_size=1000)


def student(ratios, spec=SPEC):
    return StudentDescription(spec, tuple(ratios))


def ProxyEvaluator(spec, teacher_accuracy=0.99, reward_config=None, *, cache=None):
    """The proxy measurer behind an evaluator."""
    return Evaluator(ProxyMeasurer(spec, teacher_accuracy), reward_config, cache)


def DistillationEvaluator(teacher, data, config, *, device, cache=None):
    """Real distillation behind an evaluator."""
    return Evaluator(DistillationMeasurer(teacher, data, config, device=device), cache=cache)


# ---- proxy ----------------------------------------------------------------------------------------


def test_proxy_implements_the_evaluator_protocol():
    evaluator = ProxyEvaluator(SPEC)
    assert isinstance(evaluator, Evaluator)
    assert evaluator.teacher_params == SPEC.params and evaluator.teacher_flops == SPEC.flops


def test_proxy_accuracy_falls_with_fewer_parameters():
    evaluator = ProxyEvaluator(SPEC, teacher_accuracy=0.99)
    nested = [
        (1, 1, 1, 1, 1, 1, 1, 1, 1),
        (1, 1, 1, 1, 1, 1, 0, 1, 1),
        TYPICAL,
        SMALLER,
        (1, 0, 0, 0, 0, 0, 1, 1, 1),
        (1, 0, 0, 0, 0, 0, 0, 1, 1),
    ]
    results = [evaluator.evaluate(student(r)) for r in nested]
    params = [r.params for r in results]
    accuracies = [r.accuracy for r in results]
    assert params == sorted(params, reverse=True)
    assert accuracies == sorted(accuracies, reverse=True) and len(set(accuracies)) == len(nested)
    assert accuracies[0] == pytest.approx(0.99)  # the teacher itself
    assert 0.1 < accuracies[-1] < 0.9  # tiny students fall towards chance
    # the reward peaks at an intermediate size, as with real distillation
    rewards = [r.reward for r in results]
    assert rewards[0] == 0.0 and max(rewards) > max(rewards[0], rewards[-1])


def test_proxy_is_deterministic():
    first = ProxyEvaluator(SPEC).evaluate(student(TYPICAL))
    again = ProxyEvaluator(SPEC).evaluate(student(TYPICAL))
    assert (first.accuracy, first.reward, first.reward_parts) == (
        again.accuracy,
        again.reward,
        again.reward_parts,
    )


def test_invalid_student_gives_the_error_reward_with_the_reason():
    config = RewardConfig(reward_on_error=-2.0)
    result = ProxyEvaluator(SPEC, reward_config=config).evaluate(student(INVALID))
    assert result.reward == -2.0 and not result.ok
    assert result.error_type == "InvalidArchitecture" and "stem" in result.error
    assert result.accuracy is None and result.params is None


def test_constraints_apply_through_the_evaluator():
    config = RewardConfig(max_params=30_000)
    evaluator = ProxyEvaluator(SPEC, reward_config=config)
    result = evaluator.evaluate(student(TYPICAL))
    assert result.params > 30_000 and result.reward == -1.0 and result.ok
    assert result.reward_parts["violated"] == ["max_params"]
    annealed = ProxyEvaluator(
        SPEC, reward_config=RewardConfig(max_params=30_000, constraint_mode="annealed")
    )
    assert annealed.evaluate(student(TYPICAL), progress=0).reward > 0.5


def test_student_of_another_teacher_is_refused():
    other = small_vgg(num_classes=5)
    with pytest.raises(ValueError, match="not this evaluator"):
        ProxyEvaluator(SPEC).evaluate(student([1] * 9, spec=other))


def test_evaluate_many_keeps_the_order():
    evaluator = ProxyEvaluator(SPEC)
    batch = [student(TYPICAL), student(INVALID), student(SMALLER)]
    results = evaluator.evaluate_many(batch)
    assert [r.student_key for r in results] == [s.key for s in batch]
    assert [r.ok for r in results] == [True, False, True]


def test_eval_result_round_trips_through_json():
    result = ProxyEvaluator(SPEC).evaluate(student(TYPICAL))
    assert EvalResult.from_dict(json.loads(json.dumps(result.to_dict()))) == result


# ---- cache ----------------------------------------------------------------------------------------


def test_second_evaluation_is_a_cache_hit(tmp_path):
    cache = MeasurementCache(tmp_path / "rewards.sqlite")
    evaluator = ProxyEvaluator(SPEC, cache=cache)
    first = evaluator.evaluate(student(TYPICAL))
    again = evaluator.evaluate(student(TYPICAL))
    assert not first.cache_hit and again.cache_hit
    assert (again.accuracy, again.reward) == (first.accuracy, first.reward)
    assert len(cache) == 1


def test_ratios_that_build_the_same_network_share_a_cache_entry(tmp_path):
    evaluator = ProxyEvaluator(SPEC, cache=MeasurementCache(tmp_path / "rewards.sqlite"))
    evaluator.evaluate(student((1, 1, 1, 1, 1, 1, 1, 0.5, 1)))
    same_widths = evaluator.evaluate(
        student((1, 1, 1, 1, 1, 1, 1, 0.501, 1))
    )  # 32 of 64 either way
    assert same_widths.cache_hit


def test_cache_keeps_rewards_current_under_annealing(tmp_path):
    config = RewardConfig(max_params=30_000, constraint_mode="annealed")
    evaluator = ProxyEvaluator(
        SPEC, reward_config=config, cache=MeasurementCache(tmp_path / "rewards.sqlite")
    )
    early = evaluator.evaluate(student(TYPICAL), progress=0)
    late = evaluator.evaluate(student(TYPICAL), progress=15)
    assert late.cache_hit and early.reward > 0 and late.reward == -1.0


def test_cache_keys_separate_teacher_accuracies(tmp_path):
    cache = MeasurementCache(tmp_path / "rewards.sqlite")
    ProxyEvaluator(SPEC, 0.99, cache=cache).evaluate(student(TYPICAL))
    assert not ProxyEvaluator(SPEC, 0.95, cache=cache).evaluate(student(TYPICAL)).cache_hit


def _evaluate_in_child(cache: MeasurementCache, queue) -> None:
    evaluator = ProxyEvaluator(SPEC, cache=cache)
    queue.put([evaluator.evaluate(student(r)).to_dict() for r in (TYPICAL, SMALLER)])


def test_cache_hit_from_another_process(tmp_path):
    cache = MeasurementCache(tmp_path / "rewards.sqlite")
    mine = ProxyEvaluator(SPEC, cache=cache).evaluate(student(TYPICAL))
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    # The child gets the pickled cache and opens its own connection; it reads our entry and
    # writes a new one.
    child = context.Process(target=_evaluate_in_child, args=(cache, queue))
    child.start()
    typical, smaller = (EvalResult.from_dict(d) for d in queue.get(timeout=300))
    child.join(timeout=60)
    assert child.exitcode == 0
    assert typical.cache_hit and typical.reward == mine.reward
    assert not smaller.cache_hit
    assert ProxyEvaluator(SPEC, cache=cache).evaluate(student(SMALLER)).cache_hit


def test_cache_file_uses_wal_and_in_memory_caches_refuse_pickling(tmp_path):
    path = tmp_path / "deep" / "rewards.sqlite"
    cache = MeasurementCache(path)
    cache.put("k", {"accuracy": 0.5})
    with sqlite3.connect(path) as other_connection:  # WAL is a property of the file
        assert other_connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    copy = pickle.loads(pickle.dumps(cache))
    assert copy.get("k") == {"accuracy": 0.5} and copy.get("missing") is None
    with pytest.raises(TypeError, match="in-memory"):
        pickle.dumps(MeasurementCache(":memory:"))


# ---- the distillation evaluator on real data -----------------------------------------------------


@pytest.fixture(scope="module")
def teacher():
    return load_teacher("default", dataset="mnist")


@pytest.fixture(scope="module")
def data():
    return load_dataset("mnist", val_size=1000, train_limit=2000)


@pytest.mark.expensive
def test_distillation_evaluator_scores_caches_and_reports_errors(teacher, data, tmp_path):
    cache = MeasurementCache(tmp_path / "rewards.sqlite")
    evaluator = DistillationEvaluator(teacher, data, TINY, device="cpu", cache=cache)
    assert isinstance(evaluator.measurer, Measurer)
    assert evaluator.teacher_accuracy > 0.95  # measured on the same 1000 validation images

    result = evaluator.evaluate(student(TYPICAL))
    assert result.ok and not result.cache_hit
    assert 0.4 < result.accuracy <= 1.0 and result.params < teacher.spec.params  # chance: 0.1
    assert result.reward == pytest.approx(result.reward_parts["reward"]) and result.reward > 0.3

    again = evaluator.evaluate(student(TYPICAL))
    assert again.cache_hit and again.accuracy == result.accuracy
    assert again.wall_time < result.wall_time

    # a new evaluator on the same inputs (a new run) reuses the measurement
    rerun = DistillationEvaluator(teacher, data, TINY, device="cpu", cache=cache)
    assert rerun.evaluate(student(TYPICAL)).cache_hit
    # another fidelity is another measurement
    other_config = DistillConfig(**{**TINY.to_dict(), "transfer_size": 200})
    other = DistillationEvaluator(teacher, data, other_config, device="cpu", cache=cache)
    assert not other.evaluate(student(TYPICAL)).cache_hit

    invalid = evaluator.evaluate(student(INVALID))
    assert invalid.reward == -1.0 and invalid.error_type == "InvalidArchitecture"


@pytest.mark.expensive
def test_same_seed_gives_the_same_reward_without_a_cache(teacher, data):
    rewards = [
        DistillationEvaluator(teacher, data, TINY, device="cpu").evaluate(student(SMALLER)).reward
        for _ in range(2)
    ]
    assert rewards[0] == rewards[1]


def test_diverged_distillation_is_an_error_result_not_an_exception(teacher, data, tmp_path):
    config = DistillConfig(transfer_size=500, epochs=1, batch_size=100, lr=1e30, eval_size=200)
    cache = MeasurementCache(tmp_path / "rewards.sqlite")
    evaluator = DistillationEvaluator(teacher, data, config, device="cpu", cache=cache)
    result = evaluator.evaluate(student(TYPICAL))
    assert result.reward == -1.0 and result.error_type == "DistillationDiverged"
    assert result.params is not None and result.accuracy is None
    assert evaluator.evaluate(student(TYPICAL)).cache_hit  # deterministic, so remembered


def test_out_of_memory_is_an_error_result_and_not_cached(teacher, data, tmp_path, monkeypatch):
    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr("n2n_gym.measure.distill", out_of_memory)
    cache = MeasurementCache(tmp_path / "rewards.sqlite")
    config = DistillConfig(transfer_size=200, eval_size=200)
    evaluator = DistillationEvaluator(teacher, data, config, device="cpu", cache=cache)
    result = evaluator.evaluate(student(TYPICAL))
    assert result.error_type == "OutOfMemoryError" and result.reward == -1.0
    assert "out of memory" in result.error
    assert not evaluator.evaluate(student(TYPICAL)).cache_hit and len(cache) == 0


def test_unexpected_errors_propagate(teacher, data, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr("n2n_gym.measure.distill", broken)
    config = DistillConfig(transfer_size=200, eval_size=200)
    evaluator = DistillationEvaluator(teacher, data, config, device="cpu")
    with pytest.raises(RuntimeError, match="a bug"):
        evaluator.evaluate(student(TYPICAL))


def test_data_that_does_not_fit_the_teacher_is_refused(teacher, data):
    class Grey32:
        name, num_classes, input_shape = "other", 10, (1, 32, 32)

    with pytest.raises(ValueError, match="expects"):
        DistillationEvaluator(teacher, Grey32(), TINY, device="cpu")
