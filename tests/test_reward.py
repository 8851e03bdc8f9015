"""The N2N reward formula, its constraints and their validation."""

from __future__ import annotations

import json
import math

import pytest

from n2n_gym.reward import VIOLATION_REWARD, RewardConfig, compute_reward

TEACHER_PARAMS = 100_000
TEACHER_FLOPS = 9_000_000


def reward(accuracy=0.98, params=50_000, flops=4_000_000, config=None, progress=None):
    return compute_reward(
        accuracy, 0.99, params, TEACHER_PARAMS, flops, config or RewardConfig(), progress
    )


def test_paper_formula_values():
    parts = reward(accuracy=0.98, params=50_000)
    assert parts.compression == pytest.approx(0.5)
    assert parts.compression_term == pytest.approx(0.75)  # C(2 - C)
    assert parts.accuracy_term == pytest.approx(0.98 / 0.99)
    assert parts.reward == pytest.approx(0.75 * 0.98 / 0.99)
    assert parts.penalty == 0.0 and parts.violated == ()


def test_ten_times_smaller_student_at_teacher_accuracy():
    parts = compute_reward(0.99, 0.99, 10_000, TEACHER_PARAMS, 1, RewardConfig())
    assert parts.reward == pytest.approx(0.9 * 1.1)


def test_teacher_itself_earns_nothing_and_smaller_students_earn_more():
    assert reward(params=TEACHER_PARAMS).reward == 0.0
    rewards = [reward(params=p).reward for p in (90_000, 50_000, 20_000, 5_000)]
    assert rewards == sorted(rewards) and len(set(rewards)) == 4


def test_accuracy_above_the_teacher_raises_the_reward_above_the_compression_term():
    parts = compute_reward(1.0, 0.98, 50_000, TEACHER_PARAMS, 1, RewardConfig())
    assert parts.accuracy_term > 1.0 and parts.reward > parts.compression_term


@pytest.mark.parametrize(
    ("config", "kwargs", "violated"),
    [
        (RewardConfig(max_params=40_000), {"params": 50_000}, ("max_params",)),
        (RewardConfig(max_flops=1_000_000), {"flops": 4_000_000}, ("max_flops",)),
        (RewardConfig(min_accuracy=0.985), {"accuracy": 0.98}, ("min_accuracy",)),
        (
            RewardConfig(max_params=1, max_flops=1, min_accuracy=0.99),
            {},
            ("max_params", "max_flops", "min_accuracy"),
        ),
    ],
)
def test_hard_constraint_violation_gives_minus_one(config, kwargs, violated):
    parts = reward(config=config, **kwargs)
    free = reward(**kwargs)
    assert parts.reward == VIOLATION_REWARD == -1.0
    assert parts.violated == violated
    assert parts.penalty == pytest.approx(free.reward + 1.0)
    # the unconstrained parts are still reported, so a user sees how close the student was
    assert parts.compression_term == free.compression_term


def test_satisfied_constraints_change_nothing():
    config = RewardConfig(max_params=50_000, max_flops=4_000_000, min_accuracy=0.98)
    assert reward(config=config) == reward()


def test_annealed_penalty_phases_in_linearly_over_anneal_steps():
    config = RewardConfig(max_params=10_000, constraint_mode="annealed", anneal_steps=10)
    free = reward().reward
    assert reward(config=config, progress=0).reward == pytest.approx(free)
    assert reward(config=config, progress=5).reward == pytest.approx(0.5 * free - 0.5)
    assert reward(config=config, progress=10).reward == pytest.approx(-1.0)
    assert reward(config=config, progress=100).reward == pytest.approx(-1.0)
    # without progress the constraint is fully enforced, as after annealing
    assert reward(config=config).reward == pytest.approx(-1.0)
    steps = [reward(config=config, progress=p).reward for p in range(11)]
    assert steps == sorted(steps, reverse=True)


def test_hard_mode_ignores_progress():
    config = RewardConfig(max_params=10_000)
    assert reward(config=config, progress=0).reward == -1.0


def test_default_anneal_steps_is_the_original_fifteen_updates():
    assert RewardConfig().anneal_steps == 15


def test_parts_are_json_able():
    parts = reward(config=RewardConfig(max_params=1))
    data = json.loads(json.dumps(parts.as_dict()))
    assert data["violated"] == ["max_params"] and data["reward"] == -1.0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_params": 0}, "max_params"),
        ({"max_params": 1.5}, "max_params"),
        ({"max_flops": -3}, "max_flops"),
        ({"min_accuracy": 98}, r"min_accuracy.*fraction"),
        ({"min_accuracy": 0.0}, "min_accuracy"),
        ({"constraint_mode": "soft"}, r"constraint_mode.*hard, annealed"),
        ({"anneal_steps": 0}, "anneal_steps"),
        ({"reward_on_error": math.nan}, "reward_on_error"),
    ],
)
def test_reward_config_rejects_bad_values_naming_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RewardConfig(**kwargs)


def test_reward_config_round_trips_through_json():
    config = RewardConfig(max_params=5000, min_accuracy=0.97, constraint_mode="annealed")
    assert RewardConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


@pytest.mark.parametrize(
    "kwargs",
    [
        {"accuracy": 1.5},
        {"accuracy": -0.1},
        {"params": -1},
        {"progress": -1},
    ],
)
def test_compute_reward_rejects_impossible_numbers(kwargs):
    with pytest.raises(ValueError):
        reward(**kwargs)


def test_zero_teacher_accuracy_is_an_error():
    with pytest.raises(ValueError, match="teacher_accuracy"):
        compute_reward(0.5, 0.0, 10, 100, 1)


def test_the_accuracy_objective_rewards_accuracy_alone_within_a_fixed_size():
    """AMC's resource-constrained mode: below the limit a smaller student earns nothing more."""
    config = RewardConfig(max_params=40_000, objective="accuracy")
    small = compute_reward(0.97, 0.99, 5_000, TEACHER_PARAMS, 1, config)
    larger = compute_reward(0.98, 0.99, 39_000, TEACHER_PARAMS, 1, config)
    assert small.reward == pytest.approx(0.97 / 0.99)
    assert larger.reward == pytest.approx(0.98 / 0.99) and larger.reward > small.reward
    # The paper's reward prefers the smaller one: that is what the objective changes.
    plain = RewardConfig(max_params=40_000)
    assert (
        compute_reward(0.97, 0.99, 5_000, TEACHER_PARAMS, 1, plain).reward
        > compute_reward(0.98, 0.99, 39_000, TEACHER_PARAMS, 1, plain).reward
    )
    over = compute_reward(1.0, 0.99, 50_000, TEACHER_PARAMS, 1, config)
    assert over.reward == VIOLATION_REWARD and over.violated == ("max_params",)
    with pytest.raises(ValueError, match="needs the size fixed: give max_params or max_flops"):
        RewardConfig(objective="accuracy")
    with pytest.raises(ValueError, match="objective='speed' must be one of n2n, accuracy"):
        RewardConfig(max_params=1, objective="speed")


def test_an_env_searches_under_the_accuracy_objective():
    """On the table env: a small student earns its accuracy ratio, the teacher-sized one −1."""
    import gymnasium as gym

    import n2n_gym  # noqa: F401

    limit = 20_000
    env = gym.make("N2NJoint-Tab-v0", constraints={"max_params": limit, "objective": "accuracy"})
    for remove in (True, False):
        env.reset(seed=0)
        done = False
        while not done:
            mask = env.unwrapped.action_masks()
            action = 0 if remove and mask[0] else len(mask) - 1  # remove, or keep whole
            _, reward, done, _, info = env.step(action)
        if remove:
            assert info["params"] <= limit
            assert reward == pytest.approx(info["accuracy"] / info["teacher_accuracy"])
        else:
            assert info["params"] > limit and reward == VIOLATION_REWARD
    env.close()
