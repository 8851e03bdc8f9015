"""Commands that train on the CPU share the machine's cores: say so when they oversubscribe them.

Two jobs that each use every core slow each other several times over (measured: a baseline's
epoch took 124 s with every core beside another search, 12.7 s with one thread).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from n2n_gym.cli import cores
from n2n_gym.runs import announce_search

if TYPE_CHECKING:
    from rich.console import Console

__all__ = ["warn_shared_cores"]


def warn_shared_cores(console: Console, run_dir: Path, threads: int) -> None:
    """Register this job's threads; warn when the jobs on this machine use more than its cores."""
    others = announce_search(run_dir, threads)
    if not others:
        return
    total = cores()
    used = threads + sum(int(other.get("threads") or 0) for other in others)
    if used > total:
        share = max(1, total // (len(others) + 1))
        console.print(
            f"warning: {len(others)} other job(s) run on this machine "
            f"({', '.join(str(o['pid']) for o in others)}), using {used} threads on {total} "
            f"cores, so each is slower; give each job its share: --threads {share} "
            f'(make demo ARGS="--threads {share}")',
            style="yellow",
            soft_wrap=True,
            highlight=False,  # no colour inside numbers and paths (a log keeps them clean)
        )
