"""The Gymnasium environments: API conformance, masks, determinism, stage 1 -> stage 2, real episodes."""

import functools
import json
import pickle

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env
from stable_baselines3.common.vec_env import SubprocVecEnv

import n2n_gym
from n2n_gym.envs import EnvConfigError
from n2n_gym.surgery import build_module
from n2n_gym.teachers import zoo_spec

# The table ids are checked with the shipped table in test_table.py, the surrogate ids with the
# shipped surrogate in test_surrogate.py.
N2N_IDS = sorted(
    env_id
    for env_id in gym.registry
    if env_id.startswith("N2N") and "-Tab-" not in env_id and "-Sur-" not in env_id
)
DEFAULT_TEACHER_IDS = (
    "N2NRemoval-v0",
    "N2NRemoval-v1",
    "N2NRemoval-v2",
    "N2NShrink-v0",
    "N2NShrink-v1",
    "N2NShrink-v2",
    "N2NJoint-v0",
    "N2NJoint-v1",
    # the larger bundled teacher
    "N2NRemoval-NarrowResNet-MNIST-v0",
    "N2NShrink-NarrowResNet-MNIST-v0",
    "N2NJoint-NarrowResNet-MNIST-v0",
    # the bundled Fashion-MNIST teacher (the proxy needs no images)
    "N2NRemoval-FashionMNIST-v0",
    "N2NShrink-FashionMNIST-v0",
    "N2NJoint-FashionMNIST-v0",
)
PAPER_ARCH = {"ResNet18": "resnet18", "ResNet34": "resnet34", "VGG19": "vgg19"}
DATA_SHAPES = {
    "CIFAR10": ((3, 32, 32), 10),
    "CIFAR100": ((3, 32, 32), 100),
    "SVHN": ((3, 32, 32), 10),
}


@pytest.fixture(scope="module")
def paper_teachers(tmp_path_factory) -> dict[str, str]:
    """Untrained state dicts for the paper-scale ids: enough for the cheap evaluator."""
    folder = tmp_path_factory.mktemp("teachers")
    paths = {}
    for arch in PAPER_ARCH.values():
        for data, (shape, classes) in DATA_SHAPES.items():
            path = folder / f"{arch}-{data}.pt"
            torch.save(build_module(zoo_spec(arch, shape, classes), seed=0).state_dict(), path)
            paths[f"{arch}-{data}"] = str(path)
    return paths


def make_cheap(env_id: str, paper_teachers: dict[str, str], **kwargs) -> gym.Env:
    if env_id in DEFAULT_TEACHER_IDS:
        return gym.make(env_id, evaluator="proxy", **kwargs)
    _, name, data, _ = env_id.split("-")
    arch = PAPER_ARCH[name]
    return gym.make(env_id, teacher=paper_teachers[f"{arch}-{data}"], evaluator="proxy", **kwargs)


def run_episode(env: gym.Env, policy, seed: int = 0):
    obs, info = env.reset(seed=seed)
    total, steps = 0.0, 0
    while True:
        obs, reward, terminated, truncated, info = env.step(policy(env, obs))
        total += reward
        steps += 1
        if terminated or truncated:
            return total, steps, info


def remove_every_other(env, obs):
    step = int(np.argmax(obs["position"]))
    mask = env.unwrapped.action_masks()
    return 1 if step % 2 and mask[1] else 0


def test_ids_are_registered():
    assert {"N2NRemoval-v2", "N2NShrink-v2", "N2NRemoval-ResNet18-CIFAR10-v0"} <= set(N2N_IDS)


def test_the_larger_bundled_teacher_has_sixteen_decision_units():
    env = gym.make("N2NRemoval-NarrowResNet-MNIST-v0", evaluator="proxy")
    _, info = env.reset(seed=0)
    assert info["num_units"] == 16 and env.unwrapped.task.teacher == "bundled:narrow_resnet_mnist"
    kinds = [layer.kind for layer in env.unwrapped.teacher_spec.layers]
    assert kinds.count("residual") == 14
    assert n2n_gym.__version__


@pytest.mark.parametrize("env_id", N2N_IDS)
def test_gymnasium_and_sb3_checkers_pass(env_id, paper_teachers):
    env = make_cheap(env_id, paper_teachers)
    gym_check_env(env.unwrapped, skip_render_check=False)
    sb3_check_env(make_cheap(env_id, paper_teachers).unwrapped, warn=True)


@pytest.mark.parametrize(
    ("env_id", "lr", "schedule"),
    [
        ("N2NRemoval-v2", 8e-3, "cosine"),
        ("N2NJoint-v1", 8e-3, "cosine"),
        ("N2NRemoval-v1", 4e-3, "constant"),
        ("N2NShrink-v1", 4e-3, "constant"),
        ("N2NJoint-v0", 4e-3, "constant"),
        ("N2NRemoval-v0", 5e-4, "constant"),
    ],
)
def test_each_version_keeps_the_fidelity_its_results_were_measured_with(env_id, lr, schedule):
    fidelity = gym.make(env_id, evaluator="proxy").unwrapped.task.fidelity
    assert (fidelity.lr, fidelity.lr_schedule, fidelity.transfer_size) == (lr, schedule, 8192)


def test_make_string_entry_point_in_a_fresh_process():
    import subprocess
    import sys

    code = "import gymnasium; e = gymnasium.make('n2n_gym:N2NRemoval-v2', evaluator='proxy'); print(e.reset(seed=0)[1]['num_units'])"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.strip() == "9"


@pytest.mark.parametrize(
    "env_id", ["N2NRemoval-ResNet18-CIFAR10-v0", "N2NShrink-VGG19-CIFAR100-v0"]
)
def test_paper_variants_without_a_teacher_say_what_to_provide(env_id):
    with pytest.raises(EnvConfigError, match=r"teacher=PATH.*n2n_gym\.teachers train"):
        gym.make(env_id)


def test_bad_arguments_fail_at_make_with_the_fix():
    with pytest.raises(EnvConfigError, match="dataset='imagenet'"):
        gym.make("N2NRemoval-v2", dataset="imagenet")
    with pytest.raises(EnvConfigError, match="fidelity: unknown key"):
        gym.make("N2NRemoval-v2", fidelity={"epochz": 3})
    with pytest.raises(EnvConfigError, match="fidelity='turbo'"):
        gym.make("N2NRemoval-v2", fidelity="turbo")
    with pytest.raises(EnvConfigError, match="ratios"):
        gym.make("N2NShrink-v2", ratios=[0.5, 0.25])
    with pytest.raises(EnvConfigError, match="data_dir"):
        gym.make("N2NRemoval-v2", dataset="cifar10", teacher="default")


def test_removal_masks_for_vgg_and_resnet(paper_teachers):
    vgg = make_cheap("N2NRemoval-VGG19-CIFAR100-v0", paper_teachers).unwrapped
    masks = vgg.allowed_actions
    assert masks.shape == (18, 2)
    assert not masks[0, 1] and not masks[-1, 1]  # stem and head stay
    assert masks[1:-1, 1].all()
    resnet = make_cheap("N2NRemoval-ResNet18-CIFAR10-v0", paper_teachers).unwrapped
    masks = resnet.allowed_actions
    assert masks.shape == (10, 2) and not masks[0, 1] and not masks[-1, 1] and masks[1:-1, 1].all()
    shrink = make_cheap("N2NShrink-ResNet18-CIFAR10-v0", paper_teachers).unwrapped
    masks = shrink.allowed_actions
    keep_only = np.array([r == 1.0 for r in shrink.ratios])
    np.testing.assert_array_equal(masks[0], keep_only)  # the stem feeds residual sums
    np.testing.assert_array_equal(masks[-1], keep_only)  # the head's width is the class count
    assert masks[1:-1].all()


def test_an_agent_that_ignores_masks_keeps_the_unit():
    env = gym.make("N2NRemoval-v2", evaluator="proxy").unwrapped
    env.reset(seed=0)
    assert not env.action_masks()[1]
    _, reward, terminated, truncated, info = env.step(1)  # remove the stem: forbidden
    for _ in range(env.num_steps - 1):
        _, reward, terminated, truncated, info = env.step(1)
    assert terminated and not truncated
    assert info["masked_actions"] == 2  # the stem and the head
    ratios = info["student"]["ratios"]
    assert ratios[0] == 1.0 and ratios[-1] == 1.0 and ratios[1:-1] == [0.0] * 7
    assert info["error"] is None and reward > 0


def test_observation_carries_sequence_position_and_decisions():
    env = gym.make("N2NRemoval-v2", evaluator="proxy").unwrapped
    obs, _ = env.reset(seed=0)
    assert obs["valid"].sum() == 9 and obs["position"][0] == 1
    sequence = obs["sequence"].reshape(32, -1)
    np.testing.assert_array_equal(obs["unit"], sequence[0])
    assert sequence[9:].sum() == 0
    obs, *_ = env.step(0)
    obs, *_ = env.step(1)
    assert obs["position"][2] == 1
    np.testing.assert_array_equal(obs["decisions"][:3], [1.0, 0.0, 1.0])
    assert obs["decisions"][9:].sum() == 0


def test_ansi_render_shows_units_and_decisions():
    env = gym.make("N2NRemoval-v2", evaluator="proxy", render_mode="ansi")
    env.reset(seed=0)
    env.step(0)
    env.step(1)
    text = env.render()
    assert "conv" in text and "linear" in text and "remove" in text and "keep" in text


def test_seeded_episodes_are_deterministic_and_env_pickles():
    env = gym.make("N2NShrink-v2", evaluator="proxy")
    rng = np.random.default_rng(0)
    actions = [int(a) for a in rng.integers(0, 10, size=9)]

    def play(e):
        e.reset(seed=3)
        for a in actions:
            out = e.step(a)
        return out

    first, second = play(env), play(pickle.loads(pickle.dumps(env)))
    assert first[1] == second[1] and first[4]["student"] == second[4]["student"]


def test_subproc_vec_env_runs_full_episodes():
    venv = SubprocVecEnv(
        [lambda: gym.make("n2n_gym:N2NRemoval-v2", evaluator="proxy") for _ in range(2)]
    )
    try:
        venv.reset()
        finished = []
        for _ in range(2 * 9):
            _, rewards, dones, infos = venv.step(np.array([0, 1]))
            finished += [(r, i) for r, d, i in zip(rewards, dones, infos, strict=True) if d]
        assert len(finished) == 4
        assert all("accuracy" in info and info["error"] is None for _, info in finished)
        assert {
            round(float(r), 6) for r, _ in finished
        }.__len__() == 2  # keep-all vs remove-all differ
    finally:
        venv.close()


def test_stage_one_result_feeds_the_shrink_env(tmp_path):
    removal = gym.make("N2NRemoval-v2", evaluator="proxy")
    _, _, info = run_episode(removal, remove_every_other)
    (tmp_path / "best_student.json").write_text(
        json.dumps({"student": info["student"], "reward": 0.5})
    )
    shrink = gym.make("N2NShrink-v2", evaluator="proxy", start_from=str(tmp_path))
    kept = sum(r > 0 for r in info["student"]["ratios"])
    assert shrink.unwrapped.num_steps == kept < 9
    _, steps, shrunk = run_episode(shrink, lambda env, obs: 4)  # ratio 0.5 wherever allowed
    assert steps == kept
    assert shrunk["teacher_params"] == info["teacher_params"]  # against the original teacher
    assert shrunk["params"] < info["params"]
    assert [r == 0 for r in shrunk["student"]["ratios"]] == [
        r == 0 for r in info["student"]["ratios"]
    ]
    with pytest.raises(EnvConfigError, match="start_from"):
        gym.make("N2NShrink-v2", evaluator="proxy", start_from=str(tmp_path / "missing"))


@pytest.mark.expensive
@pytest.mark.parametrize("env_id", ["N2NRemoval-v2", "N2NShrink-v2"])
def test_real_distillation_episode_is_deterministic(env_id, tmp_path, monkeypatch):
    from n2n_gym.distill import TeacherTargets

    policy = remove_every_other if "Removal" in env_id else (lambda env, obs: 6)
    # A quarter of the default transfer set: a real distillation, in a quarter of the time.
    make = functools.partial(gym.make, env_id, fidelity={"transfer_size": 2048})
    env = make(cache_path=str(tmp_path / "rewards.sqlite"))
    reward, _, info = run_episode(env, policy)
    assert info["error"] is None and not info["cache_hit"]
    assert info["accuracy"] > 0.5 and info["params"] < info["teacher_params"]  # chance is 0.1
    assert 0 < reward <= 1
    again = make(cache_path=str(tmp_path / "rewards.sqlite"))

    def no_teacher_pass(*args, **kwargs):
        raise AssertionError("a cache hit ran the teacher over the transfer set")

    with monkeypatch.context() as patch:
        patch.setattr(TeacherTargets, "compute", no_teacher_pass)
        reward_again, _, info_again = run_episode(again, policy)
    assert info_again["cache_hit"] and reward_again == reward
    fresh = make()  # no cache: the same seed gives the same reward
    assert run_episode(fresh, policy)[0] == reward


def test_annealed_constraints_phase_in_over_updates_and_errors_render():
    env = gym.make(
        "N2NRemoval-v2",
        evaluator="proxy",
        render_mode="ansi",
        constraints={"max_params": 1000, "constraint_mode": "annealed", "anneal_steps": 2},
    )
    rewards = [run_episode(env, remove_every_other)[0] for _ in range(15)]
    assert rewards[0] == rewards[4] > 0  # first update: no penalty yet
    assert rewards[0] > rewards[5] > rewards[10] == -1.0  # half way, then full strength
    assert "reward -1" in env.render()
