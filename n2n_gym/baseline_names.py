"""The baselines' names, where their results go, and the check of a list of them.

Kept apart from :mod:`n2n_gym.baselines` (which trains them, with torch) so that a command line can
list and check them without loading torch: a bad flag answers at once.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence

__all__ = ["BASELINES", "BASELINES_FILE", "MATCHES", "baselines_file", "check_baselines"]

BASELINES = ("uniform-width", "magnitude-pruned", "scratch-labels", "scratch-distilled")
BASELINES_FILE = "baselines.json"
# What a baseline's size is matched on: the student's parameters, or its multiply-adds per image.
MATCHES = ("params", "flops")


def baselines_file(match: str = "params") -> str:
    """The file a comparison matched on ``match`` is written to, beside the student's report."""
    return BASELINES_FILE if match == "params" else "baselines-flops.json"


def check_baselines(names: Sequence[str]) -> list[str]:
    """Validate baseline names (and that Torch-Pruning is there when asked for); raises ValueError."""
    names = list(names)
    unknown = [n for n in names if n not in BASELINES]
    if unknown or not names:
        raise ValueError(
            f"unknown baseline {', '.join(unknown) or '(none given)'}; choose from {', '.join(BASELINES)}"
        )
    if "magnitude-pruned" in names and importlib.util.find_spec("torch_pruning") is None:
        raise ValueError(
            "the magnitude-pruned baseline needs Torch-Pruning: pip install 'n2n-gym[baselines]' "
            "(or leave it out of the list)"
        )
    return names
