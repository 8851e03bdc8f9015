"""Table env vs live env: steps per second of the same random policy, in the same run.

    python bench/bench_table.py --live-episodes 4 --table-episodes 5000
    python bench/bench_table.py --table my.json.gz --table-kwargs '{"fidelity": {...}}'

Both use ``N2NJoint`` (the table id and its live twin) on the bundled teacher; the random policy
samples allowed actions. The live env distils every new student (seconds per episode), the table
env looks its measurement up.
"""

from __future__ import annotations

import argparse
import json
import time

import gymnasium as gym
import numpy as np
from rich.console import Console
from rich.table import Table

import n2n_gym  # noqa: F401 (registers the environments)


def random_steps(env: gym.Env, episodes: int, seed: int) -> tuple[int, float, float]:
    """(steps, seconds, simulated seconds) of ``episodes`` random episodes."""
    rng = np.random.default_rng(seed)
    env.reset(seed=seed)
    steps, simulated = 0, 0.0
    start = time.perf_counter()
    for _ in range(episodes):
        _, info = env.reset()
        done = False
        while not done:
            action = rng.choice(np.flatnonzero(env.unwrapped.action_masks()))
            _, _, done, _, info = env.step(action)
            steps += 1
        simulated += info["eval_seconds"]
    return steps, time.perf_counter() - start, simulated


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--live-episodes", type=int, default=4)
    parser.add_argument("--table-episodes", type=int, default=5000)
    parser.add_argument("--table", default=None, help="another table than the shipped one")
    parser.add_argument("--table-kwargs", default="{}", help="its task's make() arguments (JSON)")
    args = parser.parse_args()
    extra = json.loads(args.table_kwargs) | ({"table": args.table} if args.table else {})
    table_env = gym.make("N2NJoint-Tab-v0", **extra)
    live_env = gym.make("N2NJoint-v1", device="cpu")
    random_steps(table_env, 10, seed=1)  # loads the table
    random_steps(live_env, 1, seed=1)  # teacher logits and accuracy, computed once
    rows = {}
    for name, env, episodes in (
        ("live N2NJoint-v1", live_env, args.live_episodes),
        ("table N2NJoint-Tab-v0", table_env, args.table_episodes),
    ):
        rows[name] = random_steps(env, episodes, seed=0)
    out = Table(title="random policy, 9 steps per episode")
    for column in ("env", "steps", "seconds", "steps/s", "µs per step", "simulated s"):
        out.add_column(column, justify="right")
    for name, (steps, seconds, simulated) in rows.items():
        out.add_row(
            name,
            str(steps),
            f"{seconds:.2f}",
            f"{steps / seconds:,.0f}",
            f"{1e6 * seconds / steps:,.1f}",
            f"{simulated:.1f}",
        )
    console = Console(width=120)
    console.print(out)
    live, table = (rows[n][0] / rows[n][1] for n in rows)
    console.print(f"table env: {table / live:,.0f}x the live env's steps/s")


if __name__ == "__main__":
    main()
