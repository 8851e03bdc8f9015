"""Search agents for the N2N environments."""

from agents.random_search import RandomSearch

__all__ = ["RandomSearch"]
