"""The algorithms' names, importable without torch: command lines are parsed before it loads.

The classes behind the names are in :mod:`agents` (:data:`agents.sb3.SB3_ALGOS`,
:data:`agents.SEARCHES`, :mod:`agents.controllers`), which check that they match.
"""

from __future__ import annotations

__all__ = [
    "ALGOS",
    "BUDGET_DEPENDENT",
    "CONTROLLER_ALIASES",
    "CONTROLLER_KINDS",
    "PRUNING_SEARCHES",
    "SB3_ALGO_NAMES",
    "SEARCH_NAMES",
    "controller_kind",
]

SB3_ALGO_NAMES: tuple[str, ...] = ("ppo", "a2c", "recurrent_ppo", "maskable_ppo", "dqn")
# Searches without a trainable policy: they propose students and learn from the rewards directly.
SEARCH_NAMES: tuple[str, ...] = ("random", "evolution", "tpe", "tpe-hyperband")
ALGOS: tuple[str, ...] = ("reinforce", *SB3_ALGO_NAMES, *SEARCH_NAMES)
# Searches that decide at the task's successive-halving rungs themselves: they need its halving.
PRUNING_SEARCHES: tuple[str, ...] = ("tpe-hyperband",)
# Algorithms whose schedule scales with the budget they are given (DQN's exploration decays over
# a fraction of its steps): a shorter budget is a run of its own, never a prefix of a longer one.
BUDGET_DEPENDENT: tuple[str, ...] = ("dqn",)
# REINFORCE's controllers (agents/controllers.py).
CONTROLLER_KINDS: tuple[str, ...] = (
    "bidirectional",
    "autoregressive",
    "encoder-decoder",
    "actor-critic",
)
# The names the paper's two controllers had before there were more; saved agents still use them.
CONTROLLER_ALIASES = {"removal": "bidirectional", "shrink": "autoregressive"}


def controller_kind(name: str) -> str:
    """The canonical name of a controller (aliases resolved).

    Raises:
        ValueError: an unknown name, listing the known ones.
    """
    name = CONTROLLER_ALIASES.get(name, name)
    if name not in CONTROLLER_KINDS:
        raise ValueError(
            f"controller={name!r}: use one of {', '.join(CONTROLLER_KINDS)} (or the paper's "
            f"names {', '.join(CONTROLLER_ALIASES)})"
        )
    return name
