"""Search agents for the N2N environments: trainable policies and proposal searches."""

from __future__ import annotations

from stable_baselines3.common.base_class import BaseAlgorithm

from agents.episode_search import EpisodeSearch
from agents.evolution import RegularizedEvolution
from agents.hyperparams import hyperparams
from agents.random_search import RandomSearch
from agents.reinforce import Reinforce
from agents.sb3 import SB3_ALGOS
from agents.tpe import TPEHyperbandSearch, TPESearch

__all__ = [
    "ALGOS",
    "BUDGET_DEPENDENT",
    "PRUNING_SEARCHES",
    "SEARCHES",
    "EpisodeSearch",
    "RandomSearch",
    "RegularizedEvolution",
    "Reinforce",
    "TPEHyperbandSearch",
    "TPESearch",
    "agent_class",
    "hyperparams",
    "reward_free_students",
]

# Searches without a trainable policy: they propose students and learn from the rewards directly.
SEARCHES: dict[str, type[EpisodeSearch]] = {
    "random": RandomSearch,
    "evolution": RegularizedEvolution,
    "tpe": TPESearch,
    "tpe-hyperband": TPEHyperbandSearch,
}
ALGOS: tuple[str, ...] = ("reinforce", *SB3_ALGOS, *SEARCHES)
# Searches that decide at the task's successive-halving rungs themselves: they need its halving.
PRUNING_SEARCHES: tuple[str, ...] = ("tpe-hyperband",)
# Algorithms whose schedule scales with the budget they are given (DQN's exploration decays over
# a fraction of its steps): a shorter budget is a run of its own, never a prefix of a longer one.
BUDGET_DEPENDENT: tuple[str, ...] = ("dqn",)


def reward_free_students(agent: object, episode_length: int) -> int | None:
    """How many of an agent's first students do not depend on any reward (``None``: all of them).

    Before its first update a policy samples from its initialisation, an evolution draws its
    random population, TPE its start-up trials: for that many students every algorithm is random
    search with its own generator, and a budget below it compares nothing.
    """
    if isinstance(agent, RandomSearch):
        return None
    if isinstance(agent, RegularizedEvolution):
        return agent.population_size
    if isinstance(agent, TPESearch):
        return agent.n_startup_trials
    if isinstance(agent, Reinforce):
        return agent.n_rollouts
    learning_starts = getattr(agent, "learning_starts", None)  # off-policy: DQN
    if learning_starts is not None:
        return -(-learning_starts // episode_length)
    n_steps = getattr(agent, "n_steps", None)  # on-policy: the first rollout
    if n_steps is not None:
        return n_steps * agent.n_envs // episode_length
    return 0


def agent_class(algo: str) -> type[BaseAlgorithm]:
    """The class that trains ``algo``'s policy (the proposal searches have none)."""
    if algo == "reinforce":
        return Reinforce
    if algo in SB3_ALGOS:
        return SB3_ALGOS[algo][0]
    trainable = ("reinforce", *SB3_ALGOS)
    raise ValueError(f"algorithm {algo!r} has no trainable policy; choose one of {trainable}")
