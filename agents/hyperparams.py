"""Per-algorithm, per-environment default hyperparameters, read from ``hyperparams.yml``."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import yaml

HYPERPARAMS_FILE = Path(__file__).with_name("hyperparams.yml")


@cache
def _table() -> dict[str, dict[str, dict[str, Any]]]:
    return yaml.safe_load(HYPERPARAMS_FILE.read_text())


def hyperparams(algo: str, env_id: str | None = None) -> dict[str, Any]:
    """The defaults of ``algo``, with the entry for ``env_id`` (if the file has one) over them."""
    entry = _table().get(algo)
    if entry is None:
        raise ValueError(f"{HYPERPARAMS_FILE} has no entry for algorithm {algo!r}")
    merged = {**entry.get("default", {}), **(entry.get(env_id, {}) if env_id else {})}
    # YAML has no tuples; SB3 wants them (e.g. DQN's train_freq: [1, episode]).
    return {k: tuple(v) if isinstance(v, list) else v for k, v in merged.items()}
