"""Search agents for the N2N environments: trainable policies and proposal searches.

The algorithms' names (:mod:`agents.names`) import without torch, so a command line is checked
before any of it loads; the classes load on first use (``agents.Reinforce``, ``agents.SEARCHES``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from agents.hyperparams import hyperparams
from agents.names import ALGOS, BUDGET_DEPENDENT, PRUNING_SEARCHES, SB3_ALGO_NAMES, SEARCH_NAMES

if TYPE_CHECKING:
    from stable_baselines3.common.base_class import BaseAlgorithm

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

# name -> (module, attribute), imported on first use.
_LAZY = {
    "EpisodeSearch": ("agents.episode_search", "EpisodeSearch"),
    "RandomSearch": ("agents.random_search", "RandomSearch"),
    "RegularizedEvolution": ("agents.evolution", "RegularizedEvolution"),
    "Reinforce": ("agents.reinforce", "Reinforce"),
    "TPESearch": ("agents.tpe", "TPESearch"),
    "TPEHyperbandSearch": ("agents.tpe", "TPEHyperbandSearch"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module, attribute = _LAZY[name]
        return getattr(importlib.import_module(module), attribute)
    if name == "SEARCHES":
        return _searches()
    raise AttributeError(f"module 'agents' has no attribute {name!r}")


def _searches() -> dict[str, type]:
    """Searches without a trainable policy: they propose students and learn from the rewards."""
    from agents.evolution import RegularizedEvolution
    from agents.random_search import RandomSearch
    from agents.sb3 import SB3_ALGOS
    from agents.tpe import TPEHyperbandSearch, TPESearch

    searches = {
        "random": RandomSearch,
        "evolution": RegularizedEvolution,
        "tpe": TPESearch,
        "tpe-hyperband": TPEHyperbandSearch,
    }
    # The names (agents/names.py, importable without torch) must be these classes'.
    if (tuple(SB3_ALGOS), tuple(searches)) != (SB3_ALGO_NAMES, SEARCH_NAMES):
        raise ImportError("agents/names.py does not name the algorithms agents/ implements")
    return searches


def reward_free_students(agent: object, episode_length: int) -> int | None:
    """How many of an agent's first students do not depend on any reward (``None``: all of them).

    Before its first update a policy samples from its initialisation, an evolution draws its
    random population, TPE its start-up trials: for that many students every algorithm is random
    search with its own generator, and a budget below it compares nothing.
    """
    from agents.evolution import RegularizedEvolution
    from agents.random_search import RandomSearch
    from agents.reinforce import Reinforce
    from agents.tpe import TPESearch

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
    from agents.reinforce import Reinforce
    from agents.sb3 import SB3_ALGOS

    if algo == "reinforce":
        return Reinforce
    if algo in SB3_ALGOS:
        return SB3_ALGOS[algo][0]
    trainable = ("reinforce", *SB3_ALGOS)
    raise ValueError(f"algorithm {algo!r} has no trainable policy; choose one of {trainable}")
