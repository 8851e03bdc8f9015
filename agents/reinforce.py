"""REINFORCE with LSTM controllers — the search algorithm of N2N learning — as an SB3 algorithm.

:class:`Reinforce` subclasses Stable-Baselines3's ``BaseAlgorithm`` so it drops in wherever an SB3
model does: ``learn(total_timesteps, callback)``, ``predict(obs, state, episode_start,
deterministic)``, ``save`` / ``load`` (optimiser state included), SB3 loggers and callbacks.

One update (Ashok et al., ICLR 2018, with the original code's defects fixed):

1. play ``n_rollouts`` whole episodes with the current controller, sampling every action from the
   masked policy (forbidden actions have probability 0);
2. ascend ``(1/m) Σ_k Σ_t ∇ log π(a_t^k | ·) · (R_k − b)`` where every rollout ``k`` has its own
   advantage ``R_k − b`` and ``b`` is an exponential moving average of past batch-mean returns
   (initialised from the first batch's mean), plus an optional entropy bonus;
3. fold the batch mean into ``b``.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import Logger
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.type_aliases import GymEnv, MaybeCallback, PyTorchObs, Schedule
from stable_baselines3.common.utils import obs_as_tensor, safe_mean

from agents.controllers import Controller, controller_kind, make_controller
from n2n_gym.distill import one_thread

logger = logging.getLogger(__name__)

SelfReinforce = TypeVar("SelfReinforce", bound="Reinforce")

# Terminal-info entries that are bulky or belong to wrappers, not to the student.
_INFO_SKIP = frozenset({"terminal_observation", "episode", "TimeLimit.truncated", "action_mask"})


@contextmanager
def single_threaded(device: torch.device) -> Iterator[None]:
    """Run the enclosed torch work on one CPU thread, restoring the thread count afterwards.

    The controllers are tiny (a few thousand parameters): intra-op threads only add overhead,
    and on a busy machine their spin-waiting made each forward pass about 100 times slower.
    The thread count is restored so that the environment's evaluator (distillation in the same
    process) keeps every core.
    """
    if device.type != "cpu":
        yield
        return
    with one_thread():
        yield


def observation_layout(observation_space: spaces.Space) -> tuple[int, int]:
    """``(max_units, descriptor_size)`` of an N2N-style ``Dict`` observation space.

    Raises:
        ValueError: naming the missing or inconsistent entry, for any other space.
    """
    required = ("sequence", "valid", "position", "decisions")
    if not isinstance(observation_space, spaces.Dict) or any(
        key not in observation_space.spaces for key in required
    ):
        raise ValueError(
            f"the N2N controllers need a Dict observation with entries {list(required)} "
            f"(the layout of N2NRemoval-v2 / N2NShrink-v2); got {observation_space}"
        )
    max_units = int(np.prod(observation_space["valid"].shape))
    sequence_size = int(np.prod(observation_space["sequence"].shape))
    if max_units < 1 or sequence_size % max_units:
        raise ValueError(
            f"observation 'sequence' has {sequence_size} entries, not a multiple of the "
            f"{max_units} units in 'valid'"
        )
    for key in ("position", "decisions"):
        if int(np.prod(observation_space[key].shape)) != max_units:
            raise ValueError(f"observation {key!r} must have one entry per unit ({max_units})")
    return max_units, sequence_size // max_units


class ControllerPolicy(BasePolicy):
    """SB3 policy wrapping a :class:`~agents.controllers.Controller` and its optimiser.

    Args:
        observation_space: an N2N-style ``Dict`` space (see :func:`observation_layout`).
        action_space: ``Discrete(n)``.
        lr_schedule: learning-rate schedule; the optimiser starts at ``lr_schedule(1)``.
        controller: one of :data:`~agents.controllers.CONTROLLER_KINDS` (``"bidirectional"``,
            ``"autoregressive"``, ``"encoder-decoder"``, ``"actor-critic"``; the paper's names
            ``"removal"`` and ``"shrink"`` mean the first two); ``None`` picks bidirectional for
            ``Discrete(2)`` (removal) and autoregressive otherwise, as the paper pairs them.
        hidden_size: LSTM hidden units (paper: 30).
        num_layers: stacked LSTM layers (paper: 2).
        action_values: the value each action writes into ``observation["decisions"]`` (see
            :class:`~agents.controllers.Controller`).
        optimizer_class: torch optimiser (Adam as in the paper).
        optimizer_kwargs: extra optimiser arguments (not the learning rate).
    """

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        lr_schedule: Schedule,
        controller: str | None = None,
        hidden_size: int = 30,
        num_layers: int = 2,
        action_values: Sequence[float] | None = None,
        optimizer_class: type[torch.optim.Optimizer] = torch.optim.Adam,
        optimizer_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(
            observation_space,
            action_space,
            optimizer_class=optimizer_class,
            optimizer_kwargs=optimizer_kwargs,
        )
        if not isinstance(action_space, spaces.Discrete):
            raise ValueError(
                f"the N2N controllers need a Discrete action space; got {action_space}"
            )
        _, descriptor_size = observation_layout(observation_space)
        n_actions = int(action_space.n)
        self.controller_kind = controller_kind(
            controller or ("bidirectional" if n_actions == 2 else "autoregressive")
        )
        self.hidden_size, self.num_layers = hidden_size, num_layers
        self.action_values = None if action_values is None else tuple(map(float, action_values))
        self.controller: Controller = make_controller(
            self.controller_kind,
            descriptor_size,
            n_actions,
            hidden_size,
            num_layers,
            self.action_values,
        )
        self.optimizer = self.optimizer_class(
            self.parameters(), lr=lr_schedule(1), **self.optimizer_kwargs
        )

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.update(
            lr_schedule=self._dummy_schedule,
            controller=self.controller_kind,
            hidden_size=self.hidden_size,
            num_layers=self.num_layers,
            action_values=self.action_values,
            optimizer_class=self.optimizer_class,
            optimizer_kwargs=self.optimizer_kwargs,
        )
        return data

    def forward(self, obs: PyTorchObs, deterministic: bool = False) -> torch.Tensor:
        return self._predict(obs, deterministic)

    def _predict(
        self,
        observation: PyTorchObs,
        deterministic: bool = False,
        action_masks: torch.Tensor | None = None,
    ) -> torch.Tensor:
        assert isinstance(observation, dict)
        dist = self.controller.step_distribution(observation, action_masks)
        return dist.logits.argmax(dim=-1) if deterministic else dist.sample()

    def predict(
        self,
        observation: np.ndarray | dict[str, np.ndarray],
        state: tuple[np.ndarray, ...] | None = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = False,
        action_masks: np.ndarray | None = None,
    ) -> tuple[np.ndarray, tuple[np.ndarray, ...] | None]:
        """Actions for one observation or a batch (SB3 semantics; ``state`` is passed through).

        The controllers are stateless between calls: earlier actions of the episode are read back
        from ``observation["decisions"]``, so ``state`` and ``episode_start`` are not needed.

        Args:
            observation: a single ``Dict`` observation or a batch (leading dimension).
            state: returned unchanged.
            episode_start: ignored.
            deterministic: take the most likely allowed action instead of sampling.
            action_masks: ``(n_actions,)`` or ``(batch, n_actions)`` allowed actions (the env's
                ``action_masks()``); without it every action is allowed.
        """
        self.set_training_mode(False)
        obs_tensor, vectorized = self.obs_to_tensor(observation)
        masks = None
        if action_masks is not None:
            n_actions = int(self.action_space.n)  # type: ignore[attr-defined]
            masks = torch.as_tensor(
                np.asarray(action_masks, dtype=bool).reshape(-1, n_actions), device=self.device
            )
        with torch.no_grad(), single_threaded(self.device):
            actions = self._predict(obs_tensor, deterministic, masks).cpu().numpy()
        if not vectorized:
            actions = actions.squeeze(axis=0)
        return actions, state


@dataclass(frozen=True)
class Rollout:
    """One finished episode: what an update needs to recompute its log-probabilities.

    Attributes:
        sequence: the flat descriptor sequence the episode saw, ``(max_units * descriptor_size,)``.
        valid: ``(max_units,)`` 1 for real units.
        actions: ``(max_units,)`` the action taken at each unit, -1 where none was.
        action_masks: ``(max_units, n_actions)`` the actions allowed at each unit.
        reward: the episode's return (the terminal reward in the N2N environments).
        info: the terminal ``info`` (student, accuracy, params, cache hit, error ...).
    """

    sequence: np.ndarray
    valid: np.ndarray
    actions: np.ndarray
    action_masks: np.ndarray
    reward: float
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def length(self) -> int:
        return int((self.actions >= 0).sum())


class _OpenEpisodes:
    """The unfinished episode of every sub-environment of a VecEnv."""

    def __init__(self, n_envs: int, max_units: int, descriptor_size: int, n_actions: int) -> None:
        self.sequence = np.zeros((n_envs, max_units * descriptor_size), np.float32)
        self.valid = np.zeros((n_envs, max_units), np.float32)
        self.actions = np.full((n_envs, max_units), -1, np.int64)
        self.masks = np.ones((n_envs, max_units, n_actions), bool)
        self.returns = np.zeros(n_envs, np.float64)
        self.steps = np.zeros(n_envs, np.int64)

    def record(
        self,
        obs: dict[str, np.ndarray],
        actions: np.ndarray,
        masks: np.ndarray,
        rewards: np.ndarray,
    ) -> None:
        for env in range(len(actions)):
            if self.steps[env] == 0:
                self.sequence[env] = obs["sequence"][env]
                self.valid[env] = obs["valid"][env]
            unit = int(np.argmax(obs["position"][env]))
            self.actions[env, unit] = actions[env]
            self.masks[env, unit] = masks[env]
        self.returns += rewards
        self.steps += 1

    def close(self, env: int, info: dict[str, Any]) -> Rollout:
        rollout = Rollout(
            self.sequence[env].copy(),
            self.valid[env].copy(),
            self.actions[env].copy(),
            self.masks[env].copy(),
            float(self.returns[env]),
            info,
        )
        self.actions[env] = -1
        self.masks[env] = True
        self.returns[env] = 0.0
        self.steps[env] = 0
        return rollout


class Reinforce(BaseAlgorithm):
    """REINFORCE with the N2N LSTM controllers (Ashok et al., ICLR 2018).

    The controller is picked from the action space — ``Discrete(2)``: the bidirectional removal
    controller, otherwise the autoregressive shrink controller — or by
    ``policy_kwargs={"controller": NAME}`` (bidirectional, autoregressive, encoder-decoder or
    actor-critic, see :mod:`agents.controllers`); ``policy_kwargs`` also takes
    ``hidden_size`` (30), ``num_layers`` (2), ``action_values``, ``optimizer_class`` (Adam) and
    ``optimizer_kwargs``. The policy names ``"ControllerPolicy"`` and ``"MultiInputPolicy"`` both
    mean :class:`ControllerPolicy`.

    What runs concurrently: with a single environment the ``n_rollouts`` episodes of an update are
    played one after the other (the environment evaluates each student at its terminal step).
    Given a VecEnv with ``n_envs > 1`` the sub-environments step in lockstep, so their episodes —
    and, with a ``SubprocVecEnv``, their terminal evaluations — run in parallel; an update then
    uses every episode that finished while collecting (``n_rollouts`` rounded up to a multiple of
    ``n_envs`` when all episodes have the same length). An episode still open when a batch is
    complete (only with unequal episode lengths) is finished in the next update, its earlier steps
    having been sampled by the previous controller.

    Budget: ``total_timesteps`` counts environment steps as in SB3 (one step per decision unit).
    Learning stops at the first update boundary at or after ``total_timesteps``, or at an episode
    end once ``total_timesteps`` is reached with no episode open, so ``total_timesteps =
    episodes * episode_length`` plays exactly ``episodes`` episodes. A callback returning
    ``False`` stops learning after one last update on the episodes already finished (their
    evaluations were paid for).

    Args:
        policy: ``"ControllerPolicy"`` (or ``"MultiInputPolicy"``) or a :class:`ControllerPolicy`
            subclass.
        env: an environment with the N2N observation layout (an env, a VecEnv or a registered id).
        learning_rate: Adam learning rate, or a schedule (paper: 0.003).
        n_rollouts: episodes per update, ``m`` (paper: 5).
        baseline_decay: weight of the old baseline in ``b ← decay·b + (1 − decay)·mean_k R_k``.
        ent_coef: weight of the entropy bonus (mean entropy per decision).
        vf_coef: weight of the critic's squared error (``controller="actor-critic"`` only).
        normalize_advantage: standardise the batch's advantages (off, as in the paper).
        max_grad_norm: clip the gradient norm to this value (``None``: no clipping).
        policy_kwargs: see above.
        stats_window_size: episodes averaged in ``rollout/ep_rew_mean``.
        tensorboard_log: TensorBoard log folder.
        seed: seed of torch, numpy and the environment.
        verbose: 0 silent, 1 SB3 log tables.
        device: torch device (the controllers are tiny: the CPU is the sensible default).

    Attributes:
        baseline: the moving-average baseline ``b`` (``None`` before the first update).
        best_reward: the best episode return seen.
        best_actions: the actions of that episode (replaying them reproduces the student).
        best_info: its terminal ``info`` (the student description, accuracy, params ...).
        num_episodes: finished episodes, i.e. student evaluations (cache hits included).
    """

    policy_aliases: ClassVar[dict[str, type[BasePolicy]]] = {
        "ControllerPolicy": ControllerPolicy,
        "MultiInputPolicy": ControllerPolicy,
    }
    policy: ControllerPolicy

    def __init__(
        self,
        policy: str | type[ControllerPolicy],
        env: GymEnv | str | None,
        learning_rate: float | Schedule = 0.003,
        n_rollouts: int = 5,
        baseline_decay: float = 0.8,
        ent_coef: float = 0.0,
        vf_coef: float = 0.5,
        normalize_advantage: bool = False,
        max_grad_norm: float | None = None,
        policy_kwargs: dict[str, Any] | None = None,
        stats_window_size: int = 100,
        tensorboard_log: str | None = None,
        seed: int | None = None,
        verbose: int = 0,
        device: torch.device | str = "cpu",
        _init_setup_model: bool = True,
    ) -> None:
        if n_rollouts < 1:
            raise ValueError(f"n_rollouts={n_rollouts}: an update needs at least one episode")
        if not 0.0 <= baseline_decay < 1.0:
            raise ValueError(f"baseline_decay={baseline_decay}: must lie in [0, 1)")
        if max_grad_norm is not None and max_grad_norm <= 0:
            raise ValueError(f"max_grad_norm={max_grad_norm}: must be positive or None")
        super().__init__(
            policy,
            env,
            learning_rate,
            policy_kwargs=dict(policy_kwargs or {}),
            stats_window_size=stats_window_size,
            tensorboard_log=tensorboard_log,
            verbose=verbose,
            device=device,
            support_multi_env=True,
            seed=seed,
            supported_action_spaces=(spaces.Discrete,),
        )
        self.n_rollouts = n_rollouts
        self.baseline_decay = baseline_decay
        self.ent_coef = ent_coef
        self.vf_coef = vf_coef
        self.normalize_advantage = normalize_advantage
        self.max_grad_norm = max_grad_norm
        self.baseline: float | None = None
        self.best_reward = -math.inf
        self.best_actions: list[int] | None = None
        self.best_info: dict[str, Any] | None = None
        self.num_episodes = 0
        self.action_values: tuple[float, ...] | None = None
        self._open: _OpenEpisodes | None = None
        self._use_masks: bool | None = None
        if _init_setup_model:
            self._setup_model()

    # ---- model ----------------------------------------------------------------------------------
    @property
    def n_updates(self) -> int:
        """Policy updates done so far (saved and restored with the agent)."""
        return self._n_updates

    def _setup_model(self) -> None:
        self._setup_lr_schedule()
        self.set_random_seed(self.seed)
        self.max_units, self.descriptor_size = observation_layout(self.observation_space)
        self.action_values = self._resolve_action_values()
        kwargs = {**self.policy_kwargs, "action_values": self.action_values}
        self.policy = self.policy_class(  # type: ignore[assignment]
            self.observation_space, self.action_space, self.lr_schedule, **kwargs
        ).to(self.device)
        self._open = None
        self._use_masks = None
        if getattr(self, "_logger", None) is None:
            # A silent logger until learn() configures one, so train() also works on its own.
            self._logger = Logger(folder=None, output_formats=[])

    def _resolve_action_values(self) -> tuple[float, ...] | None:
        """What each action writes into ``decisions``: given > the env's ``ratios`` > saved > removal."""
        n_actions = int(self.action_space.n)  # type: ignore[attr-defined]
        given = self.policy_kwargs.get("action_values")
        if given is not None:
            return tuple(map(float, given))
        if self.env is not None and self.env.has_attr("ratios"):
            ratios = tuple(map(float, self.env.get_attr("ratios", indices=0)[0]))
            if len(ratios) == n_actions:
                return ratios
        if self.action_values is not None:
            return self.action_values
        # The removal environments write 1 for keep (action 0) and 0 for remove (action 1).
        return (1.0, 0.0) if n_actions == 2 else None

    def _excluded_save_params(self) -> list[str]:
        return [*super()._excluded_save_params(), "_open", "_use_masks"]

    def _get_torch_save_params(self) -> tuple[list[str], list[str]]:
        return ["policy", "policy.optimizer"], []

    # ---- acting ---------------------------------------------------------------------------------
    def predict(
        self,
        observation: np.ndarray | dict[str, np.ndarray],
        state: tuple[np.ndarray, ...] | None = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = False,
        action_masks: np.ndarray | None = None,
    ) -> tuple[np.ndarray, tuple[np.ndarray, ...] | None]:
        """Actions for one observation or a batch; see :meth:`ControllerPolicy.predict`.

        Pass ``action_masks=env.unwrapped.action_masks()`` to stay within the allowed actions
        (the N2N environments otherwise treat a forbidden action as "keep").
        """
        return self.policy.predict(observation, state, episode_start, deterministic, action_masks)

    def _action_masks(self) -> np.ndarray:
        assert self.env is not None
        n_actions = int(self.action_space.n)  # type: ignore[attr-defined]
        if self._use_masks is None:
            self._use_masks = bool(self.env.has_attr("action_masks"))
        if not self._use_masks:
            return np.ones((self.env.num_envs, n_actions), bool)
        return np.stack(self.env.env_method("action_masks")).astype(bool)

    # ---- learning -------------------------------------------------------------------------------
    def collect_rollouts(
        self, callback: BaseCallback, total_timesteps: int
    ) -> tuple[list[Rollout], bool]:
        """Play episodes with the current controller until a batch is complete.

        Returns:
            The finished episodes, and ``False`` when a callback asked to stop.
        """
        assert self.env is not None and self._last_obs is not None
        n_actions = int(self.action_space.n)  # type: ignore[attr-defined]
        if self._open is None:
            self._open = _OpenEpisodes(
                self.env.num_envs, self.max_units, self.descriptor_size, n_actions
            )
        open_episodes = self._open
        self.policy.set_training_mode(False)
        completed: list[Rollout] = []
        continue_training = True
        callback.on_rollout_start()
        while True:
            obs = self._last_obs
            masks = self._action_masks()
            with torch.no_grad(), single_threaded(self.device):
                dist = self.policy.controller.step_distribution(
                    obs_as_tensor(obs, self.device),  # type: ignore[arg-type]
                    torch.as_tensor(masks, device=self.device),
                    # The episode's own actions, not the env's decisions, condition the next one, so
                    # the update recomputes exactly the probabilities that were sampled from.
                    torch.as_tensor(open_episodes.actions, device=self.device),
                )
                actions = dist.sample().cpu().numpy()
            new_obs, rewards, dones, infos = self.env.step(actions)
            self.num_timesteps += self.env.num_envs
            open_episodes.record(obs, actions, masks, rewards)  # type: ignore[arg-type]

            callback.update_locals(locals())
            continue_training = callback.on_step()
            self._update_info_buffer(infos, dones)
            for env in np.flatnonzero(dones):
                rollout = open_episodes.close(int(env), infos[env])
                self._episode_finished(rollout)
                completed.append(rollout)
            self._last_obs = new_obs  # type: ignore[assignment]
            self._last_episode_starts = dones

            if not continue_training or len(completed) >= self.n_rollouts:
                break
            if self.num_timesteps >= total_timesteps and not open_episodes.steps.any():
                break
        callback.update_locals(locals())
        callback.on_rollout_end()
        return completed, continue_training

    def _episode_finished(self, rollout: Rollout) -> None:
        self.num_episodes += 1
        assert self.ep_info_buffer is not None
        if "episode" not in rollout.info:
            # No Monitor wrapper (a user's VecEnv): keep rollout/ep_rew_mean meaningful anyway.
            self.ep_info_buffer.append({"r": rollout.reward, "l": rollout.length})
        if rollout.reward > self.best_reward:
            self.best_reward = rollout.reward
            self.best_actions = [int(a) for a in rollout.actions if a >= 0]
            self.best_info = {k: v for k, v in rollout.info.items() if k not in _INFO_SKIP}
            logger.info("new best reward %.4f after %d episodes", rollout.reward, self.num_episodes)

    def policy_loss(
        self, rollouts: Sequence[Rollout], advantages: np.ndarray
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The REINFORCE loss of a batch and the mean entropy per decision.

        ``loss = −(1/m) Σ_k Σ_t A_k,t log π(a_t^k) − ent_coef · entropy``. ``advantages`` is
        ``(m,)``, one per rollout (``R_k − b``), or ``(m, T)``, one per step (``R_k − V_t``,
        the actor–critic).

        Args:
            rollouts: the ``m`` finished episodes.
            advantages: the advantages, per rollout or per step.
        """
        n = len(rollouts)
        if n == 0 or len(advantages) != n:
            raise ValueError(f"{n} rollouts need as many advantages, got {len(advantages)}")
        obs, actions, taken, masks = self._batch(rollouts)
        dist = self.policy.controller.distribution(obs, actions, masks)
        advantage = torch.as_tensor(advantages, dtype=torch.float32, device=self.device)
        if advantage.ndim == 1:
            advantage = advantage.unsqueeze(1)
        log_prob = torch.where(taken, dist.log_prob(actions), 0.0)
        entropy = torch.where(taken, dist.entropy(), 0.0).sum() / taken.sum().clamp(min=1)
        loss = -(advantage * log_prob).sum(dim=1).mean() - self.ent_coef * entropy
        return loss, entropy

    def _batch(
        self, rollouts: Sequence[Rollout]
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor, torch.Tensor]:
        """Observations, actions (clamped), which steps were taken, and action masks."""
        actions = torch.as_tensor(np.stack([r.actions for r in rollouts]), device=self.device)
        taken = actions >= 0
        obs = {
            "sequence": torch.as_tensor(
                np.stack([r.sequence for r in rollouts]), device=self.device
            ),
            "valid": torch.as_tensor(np.stack([r.valid for r in rollouts]), device=self.device),
        }
        masks = torch.as_tensor(np.stack([r.action_masks for r in rollouts]), device=self.device)
        return obs, actions.clamp(min=0), taken, masks

    def train(self, rollouts: Sequence[Rollout]) -> dict[str, float]:
        """One policy-gradient step on a batch of finished episodes; updates the baseline.

        With a critic (``controller="actor-critic"``) each step's advantage is ``R − b − V_t``:
        the critic learns the part of the reward the moving average ``b`` cannot know, that of the
        network and the actions so far, and the loss adds ``vf_coef · mean_t (V_t − (R − b))²``.

        Returns:
            The logged ``train/`` values.
        """
        self.policy.set_training_mode(True)
        self._update_learning_rate(self.policy.optimizer)
        rewards = np.array([r.reward for r in rollouts], dtype=np.float64)
        if self.baseline is None:
            self.baseline = float(rewards.mean())
        controller = self.policy.controller
        stats: dict[str, float] = {}
        with single_threaded(self.device):
            if controller.has_critic:
                # The critic fits R − b, the state-dependent part of the reward: an untrained
                # critic (V = 0) starts as the moving average, and a trained one improves on it.
                obs, actions, taken, _ = self._batch(rollouts)
                values = controller.values(obs, actions)
                target = torch.as_tensor(rewards - self.baseline, dtype=values.dtype)
                target = target.to(self.device).unsqueeze(1).expand_as(values)
                value_loss = ((values - target) ** 2)[taken].mean()
                advantages = torch.where(taken, target - values.detach(), 0.0).cpu().numpy()
                stats["train/value_loss"] = float(value_loss.item())
            else:
                value_loss = torch.zeros(())
                advantages = rewards - self.baseline
            if self.normalize_advantage and len(rewards) > 1:
                advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
            loss, entropy = self.policy_loss(rollouts, advantages)
            loss = loss + self.vf_coef * value_loss
            self.policy.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if self.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(self.policy.parameters(), self.max_grad_norm)
            self.policy.optimizer.step()
        stats |= {
            "train/loss": float(loss.item()),
            "train/entropy": float(entropy.item()),
            "train/baseline": float(self.baseline),
            "train/advantage_mean": float(np.mean(advantages)),
            "train/batch_reward_mean": float(rewards.mean()),
            "train/batch_size": float(len(rollouts)),
        }
        self.baseline = self.baseline_decay * self.baseline + (1.0 - self.baseline_decay) * float(
            rewards.mean()
        )
        self._n_updates += 1
        for key, value in stats.items():
            self.logger.record(key, value)
        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        return stats

    def learn(
        self: SelfReinforce,
        total_timesteps: int,
        callback: MaybeCallback = None,
        log_interval: int = 1,
        tb_log_name: str = "Reinforce",
        reset_num_timesteps: bool = True,
        progress_bar: bool = False,
    ) -> SelfReinforce:
        """Search for ``total_timesteps`` environment steps (see the class docstring).

        Args:
            total_timesteps: environment steps to play (episodes × episode length).
            callback: SB3 callback(s); ``on_step`` runs after every VecEnv step.
            log_interval: dump the logs every this many updates.
            tb_log_name: TensorBoard run name.
            reset_num_timesteps: start counting again (``False`` continues a loaded or earlier run).
            progress_bar: show SB3's progress bar (needs tqdm and rich).
        """
        fresh = reset_num_timesteps or self._last_obs is None
        total_timesteps, callback = self._setup_learn(
            total_timesteps, callback, reset_num_timesteps, tb_log_name, progress_bar
        )
        if fresh:
            self._open = None  # the environment was reset: open episodes are gone
        callback.on_training_start(locals(), globals())
        while self.num_timesteps < total_timesteps:
            rollouts, continue_training = self.collect_rollouts(callback, total_timesteps)
            if rollouts:
                self._update_current_progress_remaining(self.num_timesteps, total_timesteps)
                self.train(rollouts)
                if log_interval and self._n_updates % log_interval == 0:
                    self.dump_logs()
            if not continue_training:
                break
        callback.on_training_end()
        return self

    def dump_logs(self) -> None:
        """Write the ``rollout/`` and ``time/`` values and flush the logger."""
        elapsed = max((time.time_ns() - self.start_time) / 1e9, sys.float_info.epsilon)
        fps = int((self.num_timesteps - self._num_timesteps_at_start) / elapsed)
        if self.ep_info_buffer:
            self.logger.record(
                "rollout/ep_rew_mean", safe_mean([e["r"] for e in self.ep_info_buffer])
            )
            self.logger.record(
                "rollout/ep_len_mean", safe_mean([e["l"] for e in self.ep_info_buffer])
            )
        if math.isfinite(self.best_reward):
            self.logger.record("rollout/best_reward", self.best_reward)
        self.logger.record("rollout/episodes", self.num_episodes)
        self.logger.record("time/iterations", self._n_updates, exclude="tensorboard")
        self.logger.record("time/fps", fps)
        self.logger.record("time/time_elapsed", int(elapsed), exclude="tensorboard")
        self.logger.record("time/total_timesteps", self.num_timesteps, exclude="tensorboard")
        self.logger.dump(step=self.num_timesteps)
