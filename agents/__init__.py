"""Search agents for the N2N environments."""

from agents.random_search import RandomSearch
from agents.reinforce import Reinforce

__all__ = ["RandomSearch", "Reinforce"]
