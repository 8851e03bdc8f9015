"""Random search: uniform decisions among the allowed actions, the baseline every agent must beat."""

from __future__ import annotations

import numpy as np

from agents.episode_search import EpisodeSearch


class RandomSearch(EpisodeSearch):
    """Plays episodes with uniformly random allowed actions on a vector environment.

    It reads the allowed actions from the environments' ``action_masks()`` at every step.
    """

    def predict(self, observation=None, state=None, episode_start=None, deterministic=False):
        masks = np.asarray(self.env.env_method("action_masks"), dtype=bool)
        actions = np.array([self.rng.choice(np.flatnonzero(mask)) for mask in masks])
        return actions, None
