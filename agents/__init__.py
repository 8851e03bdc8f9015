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


def agent_class(algo: str) -> type[BaseAlgorithm]:
    """The class that trains ``algo``'s policy (the proposal searches have none)."""
    if algo == "reinforce":
        return Reinforce
    if algo in SB3_ALGOS:
        return SB3_ALGOS[algo][0]
    trainable = ("reinforce", *SB3_ALGOS)
    raise ValueError(f"algorithm {algo!r} has no trainable policy; choose one of {trainable}")
