"""Random search: uniform decisions among the allowed actions, the baseline every agent must beat."""

from __future__ import annotations

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import Logger, configure
from stable_baselines3.common.vec_env import VecEnv


class RandomSearch:
    """Plays episodes with uniformly random allowed actions on a vector environment.

    It answers the Stable-Baselines3 calls a search script makes (``learn`` with callbacks,
    ``predict``, ``get_env``, ``logger``), so scripts drive it like any other agent. It reads the
    allowed actions from the environments' ``action_masks()``.
    """

    def __init__(self, env: VecEnv, seed: int = 0, tensorboard_log: str | None = None) -> None:
        self.env = env
        self.rng = np.random.default_rng(seed)
        self.num_timesteps = 0
        self.logger: Logger = configure(
            tensorboard_log, ["tensorboard"] if tensorboard_log else [""]
        )
        self.env.seed(seed)
        self._obs = None

    def get_env(self) -> VecEnv:
        return self.env

    def predict(
        self, observation=None, state=None, episode_start=None, deterministic: bool = False
    ):
        masks = np.asarray(self.env.env_method("action_masks"), dtype=bool)
        actions = np.array([self.rng.choice(np.flatnonzero(mask)) for mask in masks])
        return actions, None

    def learn(self, total_timesteps: int, callback: BaseCallback | None = None) -> RandomSearch:
        """Play until ``total_timesteps`` environment steps, or until ``callback.on_step()`` is False."""
        if callback is not None:
            callback.init_callback(self)  # type: ignore[arg-type]
            callback.on_training_start(locals(), globals())
        self._obs = self.env.reset()
        while self.num_timesteps < total_timesteps:
            actions, _ = self.predict(self._obs)
            self._obs, rewards, dones, infos = self.env.step(actions)
            self.num_timesteps += self.env.num_envs
            if callback is not None:
                callback.update_locals(locals())
                if not callback.on_step():
                    break
        if callback is not None:
            callback.on_training_end()
        return self
