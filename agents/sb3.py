"""Stable-Baselines3 and sb3-contrib agents with defaults suited to N2N's sparse terminal reward."""

from __future__ import annotations

from typing import Any

from sb3_contrib import MaskablePPO, RecurrentPPO
from stable_baselines3 import A2C, PPO
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.vec_env import VecEnv

SB3_ALGOS: dict[str, tuple[type[BaseAlgorithm], str]] = {
    "ppo": (PPO, "MultiInputPolicy"),
    "a2c": (A2C, "MultiInputPolicy"),
    "recurrent_ppo": (RecurrentPPO, "MultiInputLstmPolicy"),
    "maskable_ppo": (MaskablePPO, "MultiInputPolicy"),
}


def sb3_defaults(
    algo: str, episode_length: int, n_envs: int, episodes_per_update: int = 5
) -> dict[str, Any]:
    """Hyper-parameters for a reward that arrives only at the end of an episode.

    ``gamma=1`` (the paper's: every decision shares the terminal reward undiscounted) and a rollout
    of whole episodes, so every update sees finished students — as REINFORCE's m rollouts do.
    """
    rollout_episodes = max(
        1, -(-episodes_per_update // n_envs)
    )  # ceil: about m episodes per update
    n_steps = episode_length * rollout_episodes
    kwargs: dict[str, Any] = {"gamma": 1.0, "n_steps": n_steps, "ent_coef": 0.01}
    if algo == "a2c":
        kwargs.update(gae_lambda=1.0, learning_rate=1e-3)
    else:
        # One minibatch per rollout of a few episodes; several epochs reuse the expensive samples.
        kwargs.update(batch_size=n_steps * n_envs, n_epochs=4, gae_lambda=0.95, learning_rate=1e-3)
    return kwargs


def make_sb3_agent(
    algo: str,
    env: VecEnv,
    episode_length: int,
    *,
    seed: int = 0,
    device: str = "auto",
    tensorboard_log: str | None = None,
    **overrides: Any,
) -> BaseAlgorithm:
    """Build one of :data:`SB3_ALGOS` on a vector environment with the N2N defaults (``overrides`` win)."""
    if algo not in SB3_ALGOS:
        raise ValueError(f"unknown SB3 algorithm {algo!r}; choose one of {sorted(SB3_ALGOS)}")
    cls, policy = SB3_ALGOS[algo]
    kwargs = {**sb3_defaults(algo, episode_length, env.num_envs), **overrides}
    return cls(
        policy, env, seed=seed, device=device, tensorboard_log=tensorboard_log, verbose=0, **kwargs
    )
