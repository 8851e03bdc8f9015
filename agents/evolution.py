"""Regularized (aging) evolution (Real et al., AAAI 2019), a strong baseline of architecture search.

A population of the last ``population_size`` students evaluated; each new student is a mutation
(one decision changed) of the best of ``sample_size`` members drawn at random; the oldest member
leaves. Ageing, not the worst leaving, keeps a lucky reward from ruling the population forever —
which matters here, where a reward is one noisy measurement.
"""

from __future__ import annotations

from collections import deque

from stable_baselines3.common.vec_env import VecEnv

from agents.episode_search import Plan, PlannedSearch


class RegularizedEvolution(PlannedSearch):
    """Aging evolution over the per-step choices of an N2N environment.

    Args:
        env: the vector environment.
        population_size: members kept (the first ones are random students).
        sample_size: members drawn for each tournament.
        seed, tensorboard_log: as for every search.
    """

    def __init__(
        self,
        env: VecEnv,
        population_size: int = 20,
        sample_size: int = 5,
        seed: int = 0,
        tensorboard_log: str | None = None,
    ) -> None:
        if not 1 <= sample_size <= population_size:
            raise ValueError(
                f"sample_size={sample_size} must be between 1 and population_size={population_size}"
            )
        super().__init__(env, seed, tensorboard_log)
        self.population_size, self.sample_size = population_size, sample_size
        self.population: deque[tuple[Plan, float]] = deque(maxlen=population_size)
        self._proposed = 0

    def propose(self) -> Plan:
        # Plans in flight count towards filling the population, so n_envs > 1 does not overshoot.
        self._proposed += 1
        if self._proposed <= self.population_size or len(self.population) < self.sample_size:
            return self.random_plan()
        drawn = self.rng.choice(len(self.population), self.sample_size, replace=False)
        parent = max((self.population[i] for i in drawn), key=lambda member: member[1])
        return self.mutate(parent[0])

    def observe(self, plan: Plan, reward: float) -> None:
        self.population.append((plan, reward))  # the oldest leaves once it is full

    def restore(self, path) -> None:
        super().restore(path)
        self._proposed = len(self.history)
