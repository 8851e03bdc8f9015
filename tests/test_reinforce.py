"""REINFORCE and the LSTM controllers: gradients, masks, advantages, persistence, learning, N2N envs."""

from importlib import resources

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces
from stable_baselines3.common.callbacks import BaseCallback, CheckpointCallback
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.logger import configure
from stable_baselines3.common.vec_env import DummyVecEnv

import n2n_gym  # noqa: F401  (registers the environments)
from agents import RandomSearch, Reinforce
from agents.controllers import (
    ActorCriticController,
    EncoderDecoderController,
    RemovalController,
    ShrinkController,
)
from agents.reinforce import Rollout
from n2n_gym.arch import DESCRIPTOR_SIZE
from n2n_gym.surgery import build_module
from n2n_gym.teachers import BUNDLED_DEFAULTS, zoo_spec


class MatchTargetEnv(gym.Env):
    """A cheap stand-in with the N2N observation layout and a known, unique optimum.

    Each of ``n_units`` units takes one of ``n_actions`` actions; the terminal reward is the share
    of units whose action equals a hidden target, so the target is the unique best (reward 1).
    Unit 0 only allows action 0, like a stem that must stay. ``target="random"`` draws the target
    at random; ``target="feature"`` makes it follow a descriptor feature (as a policy for real
    networks maps layer features to decisions).
    """

    def __init__(
        self, n_actions: int = 2, n_units: int = 8, max_units: int = 10, target: str = "random"
    ) -> None:
        rng = np.random.default_rng(1234)
        self.n_units, self.max_units = n_units, max_units
        self.action_space = spaces.Discrete(n_actions)
        # What an action writes into "decisions", as the N2N envs do (keep=1, remove=0; ratios).
        self.ratios = (1.0, 0.0) if n_actions == 2 else tuple(np.linspace(1.0, 0.25, n_actions))
        self.descriptors = rng.uniform(0.0, 1.0, (n_units, DESCRIPTOR_SIZE)).astype(np.float32)
        if target == "random":
            self.target = rng.integers(0, n_actions, n_units)
        else:
            self.descriptors[:, 0] = np.linspace(0.0, 1.0, n_units)
            self.target = np.minimum(
                (self.descriptors[:, 0] * n_actions).astype(int), n_actions - 1
            )
        self.target[0] = 0
        self.allowed = np.ones((n_units, n_actions), bool)
        self.allowed[0, 1:] = False
        box = lambda n: spaces.Box(0.0, 1.5, (n,), np.float32)  # noqa: E731
        self.observation_space = spaces.Dict(
            {
                "unit": box(DESCRIPTOR_SIZE),
                "position": box(max_units),
                "sequence": box(max_units * DESCRIPTOR_SIZE),
                "valid": box(max_units),
                "decisions": box(max_units),
            }
        )
        self.masked_actions = 0

    def action_masks(self) -> np.ndarray:
        return self.allowed[min(self._step, self.n_units - 1)].copy()

    def _obs(self) -> dict[str, np.ndarray]:
        position = np.zeros(self.max_units, np.float32)
        unit = np.zeros(DESCRIPTOR_SIZE, np.float32)
        if self._step < self.n_units:
            position[self._step] = 1.0
            unit = self.descriptors[self._step]
        sequence = np.zeros((self.max_units, DESCRIPTOR_SIZE), np.float32)
        sequence[: self.n_units] = self.descriptors
        valid = np.zeros(self.max_units, np.float32)
        valid[: self.n_units] = 1.0
        decisions = valid.copy()
        decisions[: len(self._actions)] = [self.ratios[a] for a in self._actions]
        return {
            "unit": unit,
            "position": position,
            "sequence": sequence.flatten(),
            "valid": valid,
            "decisions": decisions,
        }

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self._step, self._actions = 0, []
        return self._obs(), {}

    def step(self, action):
        action = int(action)
        self.masked_actions += int(not self.allowed[self._step, action])
        self._actions.append(action)
        self._step += 1
        if self._step < self.n_units:
            return self._obs(), 0.0, False, False, {}
        reward = float(np.mean(np.array(self._actions) == self.target))
        return self._obs(), reward, True, False, {"actions": list(self._actions)}


class EpisodeRewards(BaseCallback):
    """Collects every finished episode's return and terminal info (or stops learning)."""

    def __init__(self, stop_after: int | None = None) -> None:
        super().__init__()
        self.rewards: list[float] = []
        self.infos: list[dict] = []
        self.stop_after = stop_after

    def _on_step(self) -> bool:
        locals_ = self.locals
        for done, reward, info in zip(
            locals_["dones"], locals_["rewards"], locals_["infos"], strict=True
        ):
            if done:  # the reward is terminal only, so the last one is the episode's return
                self.rewards.append(float(reward))
                self.infos.append(info)
        return self.stop_after is None or len(self.rewards) < self.stop_after


def masked_rollout_from(env: MatchTargetEnv, actions: list[int], reward: float) -> Rollout:
    """A finished episode built by hand from the env's layout."""
    obs, _ = env.reset()
    padded = np.full(env.max_units, -1, np.int64)
    padded[: len(actions)] = actions
    masks = np.ones((env.max_units, env.action_space.n), bool)
    masks[: env.n_units] = env.allowed
    return Rollout(obs["sequence"], obs["valid"], padded, masks, reward)


def greedy_reward(model: Reinforce, env: MatchTargetEnv) -> float:
    obs, _ = env.reset()
    while True:
        action, _ = model.predict(obs, deterministic=True, action_masks=env.action_masks())
        obs, reward, terminated, _, _ = env.step(action)
        if terminated:
            return reward


@pytest.fixture(scope="module")
def teachers(tmp_path_factory) -> dict[str, dict]:
    """gymnasium.make kwargs for two MNIST teachers of different architectures (cheap evaluator).

    The bundled default teacher is used when it is there; otherwise an untrained one of the
    same architecture, which is all the proxy evaluator needs.
    """
    folder = tmp_path_factory.mktemp("teachers")
    kwargs = {}
    for arch in ("small_vgg", "resnet18"):
        bundled = resources.files("n2n_gym") / "weights" / f"{BUNDLED_DEFAULTS['mnist']}.pt"
        if arch == "small_vgg" and bundled.is_file():
            kwargs[arch] = {"evaluator": "proxy"}
            continue
        path = folder / f"{arch}.pt"
        torch.save(build_module(zoo_spec(arch, (1, 28, 28), 10), seed=0).state_dict(), path)
        kwargs[arch] = {"teacher": str(path), "teacher_arch": arch, "evaluator": "proxy"}
    return kwargs


# Every controller on both kinds of action space (keep/remove, and a choice of ratios).
EVERY_CONTROLLER = [
    ("bidirectional", 2),
    ("autoregressive", 3),
    ("encoder-decoder", 2),
    ("encoder-decoder", 3),
    ("actor-critic", 2),
    ("actor-critic", 3),
]


# ---- controllers ------------------------------------------------------------------------------
@pytest.mark.parametrize(("controller", "n_actions"), EVERY_CONTROLLER)
def test_one_update_gives_every_controller_parameter_a_gradient(controller, n_actions):
    model = Reinforce(
        "ControllerPolicy",
        MatchTargetEnv(n_actions),
        policy_kwargs={"controller": controller},
        seed=0,
    )
    names = [name for name, _ in model.policy.controller.named_parameters()]
    assert any(name.endswith("_l1") for name in names), "both stacked LSTM layers are registered"
    optimised = {id(p) for group in model.policy.optimizer.param_groups for p in group["params"]}
    assert optimised == {id(p) for p in model.policy.controller.parameters()}
    before = {n: p.detach().clone() for n, p in model.policy.controller.named_parameters()}

    model.learn(5 * 8)  # exactly one update of 5 episodes

    assert model.n_updates == 1
    for name, param in model.policy.controller.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
        assert not torch.equal(param.detach(), before[name]), f"{name} did not move"


def test_controllers_ignore_padding_and_work_for_any_length():
    torch.manual_seed(0)
    controllers = [
        RemovalController(DESCRIPTOR_SIZE),
        ShrinkController(DESCRIPTOR_SIZE, 4),
        EncoderDecoderController(DESCRIPTOR_SIZE, 4),
        ActorCriticController(DESCRIPTOR_SIZE, 4),
    ]
    descriptors = torch.rand(6, DESCRIPTOR_SIZE)
    actions = torch.tensor([0, 3, 1, 2, 0, 1])

    def logits(controller, max_units):
        sequence = torch.zeros(1, max_units, DESCRIPTOR_SIZE)
        sequence[0, :6] = descriptors
        valid = torch.zeros(1, max_units)
        valid[0, :6] = 1
        padded = torch.zeros(1, max_units, dtype=torch.long)
        padded[0, :6] = actions
        obs = {"sequence": sequence.flatten(1), "valid": valid}
        return controller.distribution(obs, padded).logits[0, :6]

    for controller in controllers:
        torch.testing.assert_close(logits(controller, 8), logits(controller, 40))


# ---- masks ----------------------------------------------------------------------------------
@pytest.mark.parametrize(("controller", "n_actions"), EVERY_CONTROLLER)
def test_masks_are_never_violated_even_by_a_policy_that_wants_to(controller, n_actions):
    env = MatchTargetEnv(n_actions)
    model = Reinforce(
        "ControllerPolicy", env, policy_kwargs={"controller": controller}, learning_rate=0, seed=0
    )
    with torch.no_grad():  # every unit strongly prefers the last action, forbidden at unit 0
        model.policy.controller.head.bias.copy_(torch.arange(n_actions) * 50.0)
    recorder = EpisodeRewards()
    model.learn(10 * 8, callback=recorder)
    assert env.masked_actions == 0
    assert all(info["actions"][1:] == [n_actions - 1] * 7 for info in recorder.infos)

    evaluation = MatchTargetEnv(n_actions)
    obs, _ = evaluation.reset()
    for _ in range(evaluation.n_units):
        masks = evaluation.action_masks()
        for deterministic in (True, False):
            action, _ = model.predict(obs, deterministic=deterministic, action_masks=masks)
            assert masks[int(action)]
        obs, *_ = evaluation.step(action)
    assert evaluation.masked_actions == 0


def test_n2n_env_masks_are_respected_while_learning(teachers):
    env = gym.make("N2NShrink-v2", **teachers["resnet18"])
    assert not env.unwrapped.action_masks().all(), "the ResNet stem may not shrink"
    recorder = EpisodeRewards()
    model = Reinforce("ControllerPolicy", env, seed=0)
    model.learn(2 * 5 * env.unwrapped.num_steps, callback=recorder)
    assert len(recorder.infos) == 10
    assert all(info["masked_actions"] == 0 for info in recorder.infos)


# ---- the update -----------------------------------------------------------------------------
def test_each_rollout_gets_its_own_advantage():
    env = MatchTargetEnv(3)
    model = Reinforce("ControllerPolicy", env, seed=0)
    plays = [([0, 1, 2, 0, 1, 2, 0, 1], 1.0), ([0, 2, 2, 1, 0, 0, 1, 2], 0.2)]
    rollouts = [masked_rollout_from(env, actions, reward) for actions, reward in plays]

    def log_prob_by_hand(actions: list[int]) -> torch.Tensor:
        # Step the real env and ask the controller one step at a time, reading earlier actions
        # back from the observation: an independent path from the batched, teacher-forced update.
        total, (obs, _) = torch.zeros(()), env.reset()
        for action in actions:
            batch = {k: torch.as_tensor(v)[None] for k, v in obs.items()}
            dist = model.policy.controller.step_distribution(
                batch, torch.as_tensor(env.action_masks())[None]
            )
            total = total + dist.log_prob(torch.tensor([action]))[0]
            obs, *_ = env.step(action)
        return total

    model.baseline = 0.3
    advantages = np.array([1.0 - 0.3, 0.2 - 0.3])
    expected = -(0.7 * log_prob_by_hand(plays[0][0]) - 0.1 * log_prob_by_hand(plays[1][0])) / 2
    loss, _ = model.policy_loss(rollouts, advantages)
    torch.testing.assert_close(loss, expected)

    stats = model.train(rollouts)
    assert stats["train/loss"] == pytest.approx(expected.item(), rel=1e-5)
    assert stats["train/advantage_mean"] == pytest.approx(0.3)  # the mean of (0.7, -0.1)
    assert model.baseline == pytest.approx(0.8 * 0.3 + 0.2 * 0.6)


def test_the_baseline_starts_from_the_first_batch_mean():
    env = MatchTargetEnv(2)
    model = Reinforce("ControllerPolicy", env, seed=0, baseline_decay=0.5)
    rollouts = [masked_rollout_from(env, [0] * 8, r) for r in (0.25, 0.75, 0.5)]
    stats = model.train(rollouts)
    assert stats["train/baseline"] == pytest.approx(0.5)
    assert stats["train/advantage_mean"] == pytest.approx(0.0)
    model.train([masked_rollout_from(env, [0] * 8, 1.0)])
    assert model.baseline == pytest.approx(0.5 * 0.5 + 0.5 * 1.0)


def test_the_critic_is_the_baseline_of_each_step_and_learns_the_reward():
    env = MatchTargetEnv(3)
    model = Reinforce("ControllerPolicy", env, seed=0, policy_kwargs={"controller": "actor-critic"})
    rollouts = [masked_rollout_from(env, [0, 1, 2, 0, 1, 2, 0, 1], 0.6) for _ in range(5)]
    obs, actions, taken, masks = model._batch(rollouts)
    with torch.no_grad():
        values = model.policy.controller.values(obs, actions)
    # The update weighs each step by R − b − V_t: the loss equals the per-step formula by hand.
    model.baseline = 0.5
    advantages = np.where(taken.numpy(), 0.6 - 0.5 - values.numpy(), 0.0)
    dist = model.policy.controller.distribution(obs, actions, masks)
    log_prob = torch.where(taken, dist.log_prob(actions), 0.0)
    expected = -(torch.as_tensor(advantages) * log_prob).sum(dim=1).mean()
    loss, _ = model.policy_loss(rollouts, advantages)
    torch.testing.assert_close(loss, expected.float())
    # Fitting V_t to R − b drives the value error down.
    first = model.train(rollouts)["train/value_loss"]
    for _ in range(60):
        last = model.train(rollouts)["train/value_loss"]
    assert last < first / 10


def test_the_papers_controller_names_still_load():
    for alias, kind in (("removal", "bidirectional"), ("shrink", "autoregressive")):
        model = Reinforce(
            "ControllerPolicy", MatchTargetEnv(3), policy_kwargs={"controller": alias}
        )
        assert model.policy.controller_kind == kind
    with pytest.raises(ValueError, match="encoder-decoder"):
        Reinforce("ControllerPolicy", MatchTargetEnv(3), policy_kwargs={"controller": "lstm"})


# ---- persistence and transfer -----------------------------------------------------------------
@pytest.mark.parametrize("controller", ["autoregressive", "encoder-decoder", "actor-critic"])
def test_save_load_round_trip_reproduces_actions_and_optimiser(tmp_path, controller):
    env = MatchTargetEnv(3)
    model = Reinforce(
        "ControllerPolicy", env, seed=3, ent_coef=0.01, policy_kwargs={"controller": controller}
    )
    model.learn(20 * 8)
    assert all(torch.isfinite(p).all() for p in model.policy.parameters())  # masked entropy
    model.save(tmp_path / "model.zip")

    for loaded in (
        Reinforce.load(tmp_path / "model.zip", env=MatchTargetEnv(3)),
        Reinforce.load(tmp_path / "model.zip"),  # predict only, no env
    ):
        evaluation = MatchTargetEnv(3)
        obs, _ = evaluation.reset()
        for _ in range(evaluation.n_units):
            masks = evaluation.action_masks()
            expected, _ = model.predict(obs, deterministic=True, action_masks=masks)
            action, _ = loaded.predict(obs, deterministic=True, action_masks=masks)
            assert action == expected
            obs, *_ = evaluation.step(action)
        assert loaded.baseline == model.baseline
        assert loaded.best_reward == model.best_reward
        assert loaded.best_actions == model.best_actions
        assert loaded.num_episodes == 20
        saved_state = model.policy.optimizer.state_dict()["state"]
        loaded_state = loaded.policy.optimizer.state_dict()["state"]
        for key, value in saved_state.items():
            torch.testing.assert_close(loaded_state[key]["exp_avg"], value["exp_avg"])

    resumed = Reinforce.load(tmp_path / "model.zip", env=MatchTargetEnv(3))
    resumed.learn(5 * 8, reset_num_timesteps=False)
    assert resumed.num_timesteps == 25 * 8 and resumed.n_updates == 5


def test_a_policy_transfers_to_another_teacher(tmp_path, teachers):
    source = gym.make("N2NRemoval-v2", **teachers["small_vgg"])
    model = Reinforce("ControllerPolicy", source, seed=0)
    model.learn(5 * source.unwrapped.num_steps)
    model.save(tmp_path / "removal.zip")

    # Same max_units: load the whole model onto the other teacher's environment and go on.
    target = gym.make("N2NRemoval-v2", **teachers["resnet18"])
    transferred = Reinforce.load(tmp_path / "removal.zip", env=target)
    recorder = EpisodeRewards()
    transferred.learn(5 * target.unwrapped.num_steps, callback=recorder)
    assert len(recorder.infos) == 5 and all(i["masked_actions"] == 0 for i in recorder.infos)

    # Different max_units: a fresh model takes the controller weights; padding changes nothing.
    wide = gym.make("N2NRemoval-v2", max_units=40, **teachers["resnet18"])
    fresh = Reinforce("ControllerPolicy", wide, seed=1)
    fresh.set_parameters(str(tmp_path / "removal.zip"))
    obs_32, _ = target.reset()
    obs_40, _ = wide.reset()
    mask = target.unwrapped.action_masks()
    controller_32 = transferred.policy.controller
    with torch.no_grad():
        controller_32.load_state_dict(model.policy.controller.state_dict())
        probs = [
            m.policy.controller.step_distribution(
                {k: torch.as_tensor(v)[None] for k, v in obs.items()},
                torch.as_tensor(mask)[None],
            ).probs
            for m, obs in ((transferred, obs_32), (fresh, obs_40))
        ]
    torch.testing.assert_close(probs[0], probs[1])


# ---- learning -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("controller", "n_actions"),
    [
        ("bidirectional", 2),
        ("autoregressive", 3),
        ("encoder-decoder", 2),
        ("encoder-decoder", 3),
        ("actor-critic", 3),
    ],
)
def test_reinforce_beats_random_search_on_a_known_optimum(controller, n_actions):
    # Two actions are learnt sooner: measured, the last 100 of 250 episodes already average
    # 0.89-0.98 against the 0.76 asked; three actions need 400 (0.71-0.88 against 0.61-0.63).
    episodes, target = (250 if n_actions == 2 else 400), "feature"
    for seed in (0, 1):
        random_search = EpisodeRewards()
        RandomSearch(DummyVecEnv([lambda: MatchTargetEnv(n_actions, target=target)]), seed).learn(
            episodes * 8, callback=random_search
        )
        random_rewards = random_search.rewards
        recorder = EpisodeRewards()
        model = Reinforce(
            "ControllerPolicy",
            MatchTargetEnv(n_actions, target=target),
            policy_kwargs={"controller": controller},
            seed=seed,
        )
        model.learn(episodes * 8, callback=recorder)
        learned = np.array(recorder.rewards)
        assert len(learned) == len(random_rewards) == episodes
        # Random search stays at its mean; REINFORCE's late episodes sit far above it.
        assert learned[-100:].mean() > np.mean(random_rewards) + 0.2, (seed, learned[-100:].mean())
        assert learned.max() >= max(random_rewards)
        assert model.best_reward == learned.max()


# ---- SB3 interface and the N2N environments ---------------------------------------------------
@pytest.mark.parametrize("env_id", ["N2NRemoval-v2", "N2NShrink-v2"])
def test_runs_end_to_end_on_the_n2n_envs_with_sb3_callbacks(env_id, tmp_path, teachers):
    env = gym.make(env_id, **teachers["small_vgg"])
    steps = env.unwrapped.num_steps
    model = Reinforce("MultiInputPolicy", env, n_rollouts=3, seed=0)
    model.set_logger(configure(str(tmp_path / "log"), ["csv"]))
    recorder = EpisodeRewards()
    checkpoints = CheckpointCallback(save_freq=3 * steps, save_path=str(tmp_path / "ckpt"))
    model.learn(3 * 3 * steps, callback=[recorder, checkpoints])

    assert model.num_timesteps == 9 * steps and model.n_updates == 3
    assert model.num_episodes == len(recorder.rewards) == 9
    assert model.best_reward == max(recorder.rewards)
    assert "student" in model.best_info and len(model.best_actions) == steps
    assert len(list((tmp_path / "ckpt").glob("*.zip"))) == 3
    header = (tmp_path / "log" / "progress.csv").read_text().splitlines()[0].split(",")
    for key in (
        "rollout/ep_rew_mean",
        "rollout/best_reward",
        "train/loss",
        "train/baseline",
        "train/entropy",
        "time/fps",
        "time/total_timesteps",
    ):
        assert key in header
    mean_reward, _ = evaluate_policy(model, model.get_env(), n_eval_episodes=2)
    assert -1.0 <= mean_reward <= 1.0


def test_vec_env_episodes_run_side_by_side_and_fill_whole_updates():
    vec_env = DummyVecEnv([lambda: MatchTargetEnv(2), lambda: MatchTargetEnv(2)])
    model = Reinforce("ControllerPolicy", vec_env, n_rollouts=3, seed=0)
    recorder = EpisodeRewards()
    model.learn(8 * 8, callback=recorder)
    # Two episodes per lockstep round: 3 rollouts round up to 4 per update, 8 episodes in all.
    assert model.n_updates == 2 and model.num_episodes == 8 and model.num_timesteps == 64
    assert len(recorder.rewards) == 8


def test_budget_in_episodes_is_exact_and_a_callback_can_stop_early():
    model = Reinforce("ControllerPolicy", MatchTargetEnv(2), n_rollouts=5, seed=0)
    model.learn(7 * 8)  # 7 episodes: one full update and one of 2
    assert model.num_episodes == 7 and model.n_updates == 2

    model = Reinforce("ControllerPolicy", MatchTargetEnv(2), n_rollouts=5, seed=0)
    model.learn(100 * 8, callback=EpisodeRewards(stop_after=3))
    assert model.num_episodes == 3 and model.n_updates == 1


def test_clear_errors_for_unsuitable_environments():
    with pytest.raises(ValueError, match="Dict observation"):
        Reinforce("ControllerPolicy", gym.make("CartPole-v1"))
    with pytest.raises(ValueError, match="n_rollouts"):
        Reinforce("ControllerPolicy", MatchTargetEnv(2), n_rollouts=0)
