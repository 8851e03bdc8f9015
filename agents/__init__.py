"""Search agents for the N2N environments."""

from __future__ import annotations

from stable_baselines3.common.base_class import BaseAlgorithm

from agents.random_search import RandomSearch
from agents.reinforce import Reinforce
from agents.sb3 import SB3_ALGOS

__all__ = ["ALGOS", "RandomSearch", "Reinforce", "agent_class"]

ALGOS: tuple[str, ...] = ("reinforce", *SB3_ALGOS, "random")


def agent_class(algo: str) -> type[BaseAlgorithm]:
    """The class that trains ``algo`` (random search has no trainable policy, hence no class)."""
    if algo == "reinforce":
        return Reinforce
    if algo in SB3_ALGOS:
        return SB3_ALGOS[algo][0]
    raise ValueError(f"algorithm {algo!r} has no trainable policy; choose one of {ALGOS[:-1]}")
