"""Stable-Baselines3 and sb3-contrib agents with defaults suited to N2N's sparse terminal reward."""

from __future__ import annotations

from typing import Any

from sb3_contrib import MaskablePPO, RecurrentPPO
from stable_baselines3 import A2C, DQN, PPO
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.vec_env import VecEnv

from agents.hyperparams import hyperparams

SB3_ALGOS: dict[str, tuple[type[BaseAlgorithm], str]] = {
    "ppo": (PPO, "MultiInputPolicy"),
    "a2c": (A2C, "MultiInputPolicy"),
    "recurrent_ppo": (RecurrentPPO, "MultiInputLstmPolicy"),
    "maskable_ppo": (MaskablePPO, "MultiInputPolicy"),
    # DQN ignores action masks: a masked action keeps its unit, as the environments document.
    "dqn": (DQN, "MultiInputPolicy"),
}


def sb3_defaults(
    algo: str, episode_length: int, n_envs: int, episodes_per_update: int = 5
) -> dict[str, Any]:
    """The settings that follow from a reward that arrives only at the end of an episode.

    ``gamma=1`` (the paper's: every decision shares the terminal reward undiscounted) and, for the
    on-policy agents, a rollout of whole episodes, so every update sees finished students — as
    REINFORCE's m rollouts do. The rest comes from ``agents/hyperparams.yml``.
    """
    if algo in ("dqn", "qrdqn"):  # off-policy: no rollouts
        return {"gamma": 1.0}
    if algo == "ars":  # no discount, no rollout buffer: each perturbation plays whole episodes
        return {}
    rollout_episodes = max(1, -(-episodes_per_update // n_envs))  # ceil: about m per update
    n_steps = episode_length * rollout_episodes
    kwargs: dict[str, Any] = {"gamma": 1.0, "n_steps": n_steps}
    if algo != "a2c":
        kwargs["batch_size"] = n_steps * n_envs  # one minibatch per rollout
    return kwargs


def make_sb3_agent(
    algo: str,
    env: VecEnv,
    episode_length: int,
    *,
    seed: int = 0,
    device: str = "auto",
    tensorboard_log: str | None = None,
    env_id: str | None = None,
    **overrides: Any,
) -> BaseAlgorithm:
    """Build one of :data:`SB3_ALGOS` on a vector environment with the N2N defaults.

    The defaults are :func:`sb3_defaults` and the file's entry for ``algo`` (and ``env_id``);
    ``overrides`` win over both.
    """
    if algo not in SB3_ALGOS:
        raise ValueError(f"unknown SB3 algorithm {algo!r}; choose one of {sorted(SB3_ALGOS)}")
    cls, policy = SB3_ALGOS[algo]
    kwargs = {
        **sb3_defaults(algo, episode_length, env.num_envs),
        **hyperparams(algo, env_id),
        **overrides,
    }
    return cls(
        policy, env, seed=seed, device=device, tensorboard_log=tensorboard_log, verbose=0, **kwargs
    )
