"""Random search: uniform decisions among the allowed actions, the baseline every agent must beat."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np


class RandomSearch:
    """Plays episodes with uniformly random allowed actions.

    It answers the Stable-Baselines3 ``predict`` signature so scripts can treat it like any agent;
    it needs the environment's ``action_masks()`` to stay within the allowed actions.
    """

    def __init__(self, env: gym.Env, seed: int = 0) -> None:
        self.env = env
        self.rng = np.random.default_rng(seed)

    def predict(
        self,
        observation: Any,
        state: Any = None,
        episode_start: Any = None,
        deterministic: bool = False,
    ) -> tuple[int, None]:
        allowed = np.flatnonzero(self.env.unwrapped.action_masks())
        return int(self.rng.choice(allowed)), None

    def learn(
        self, episodes: int, on_episode_end: Callable[[float, dict[str, Any]], None] | None = None
    ) -> RandomSearch:
        """Play ``episodes`` episodes; ``on_episode_end(reward, info)`` is called after each."""
        for _ in range(episodes):
            obs, _ = self.env.reset()
            done = False
            while not done:
                action, _ = self.predict(obs)
                obs, reward, terminated, truncated, info = self.env.step(action)
                done = terminated or truncated
            if on_episode_end is not None:
                on_episode_end(float(reward), info)
        return self
