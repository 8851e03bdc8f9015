"""Search for a compressed student of a teacher network with an agent on an N2N environment.

    python train_agent.py --algo random --budget 20
    python train_agent.py --env N2NShrink-v0 --env-kwargs '{"start_from": "runs/removal-random-0"}'

The run directory (``--out``, default ``runs/<env>-<algo>-<seed>``) receives the configuration,
one line per student evaluation, the best student and a summary; ``--resume`` continues a run
that was stopped, without losing or repeating evaluations.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import gymnasium as gym
from rich.console import Console
from rich.table import Table
from tqdm import tqdm

import n2n_gym  # noqa: F401  (registers the environments)
from agents import RandomSearch
from n2n_gym.runs import CONFIG_FILE, RecordEvaluations, RunRecorder, write_json_atomic

ALGOS = ("random",)


@dataclass
class Args:
    algo: str = "random"
    """search algorithm"""
    env: str = "N2NRemoval-v0"
    """registered environment id"""
    budget: int = 20
    """number of student evaluations (episodes); cache hits are counted among them and reported"""
    seed: int = 0
    """seed of the agent and of the environment"""
    device: str = "auto"
    """device for distillation: auto, cpu or cuda"""
    env_kwargs: dict = field(default_factory=dict)
    """extra gymnasium.make keyword arguments (JSON)"""
    out: str | None = None
    """run directory (default runs/<env>-<algo>-<seed>)"""
    resume: bool = False
    """continue the run in --out instead of refusing to overwrite it"""


def parse_args(argv: list[str] | None = None) -> Args:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--algo", choices=ALGOS, default=Args.algo)
    parser.add_argument("--env", default=Args.env)
    parser.add_argument("--budget", type=int, default=Args.budget)
    parser.add_argument("--seed", type=int, default=Args.seed)
    parser.add_argument("--device", default=Args.device)
    parser.add_argument(
        "--env-kwargs", default="{}", help="JSON object of gymnasium.make keyword arguments"
    )
    parser.add_argument("--out", default=None)
    parser.add_argument("--resume", action="store_true")
    ns = parser.parse_args(argv)
    try:
        env_kwargs = json.loads(ns.env_kwargs)
    except json.JSONDecodeError as error:
        parser.error(
            f'--env-kwargs is not valid JSON ({error}); example: --env-kwargs \'{{"cache_path": "r.sqlite"}}\''
        )
    if not isinstance(env_kwargs, dict):
        parser.error("--env-kwargs must be a JSON object")
    if ns.budget < 1:
        parser.error("--budget must be at least 1")
    return Args(ns.algo, ns.env, ns.budget, ns.seed, ns.device, env_kwargs, ns.out, ns.resume)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    console = Console()
    run_dir = Path(args.out or f"runs/{args.env}-{args.algo}-{args.seed}")
    if (run_dir / CONFIG_FILE).exists() and not args.resume:
        console.print(
            f"[red]{run_dir} already holds a run[/]: pass --resume to continue it or --out for a new one"
        )
        return 2
    write_json_atomic(run_dir / CONFIG_FILE, asdict(args))
    try:
        env = gym.make(args.env, device=args.device, **args.env_kwargs)
    except (ValueError, gym.error.Error) as error:
        console.print(f"[red]cannot make {args.env}:[/] {error}")
        return 2
    recorder = RunRecorder(run_dir, args.algo, args.seed)
    env = RecordEvaluations(env, recorder)
    done_before = recorder.evaluations
    remaining = max(args.budget - done_before, 0)
    env.reset(seed=args.seed + done_before)
    agent = RandomSearch(env, seed=args.seed + done_before)
    start = time.perf_counter()
    bar = tqdm(
        total=args.budget, initial=done_before, desc=f"{args.algo} on {args.env}", unit="eval"
    )

    def progress(reward: float, info: dict) -> None:
        bar.update(1)
        bar.set_postfix(best=f"{recorder.best_reward:.4f}", hits=recorder.cache_hits)

    interrupted = False
    try:
        agent.learn(remaining, on_episode_end=progress)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        bar.close()
    summary = recorder.write_summary(
        wall_time=time.perf_counter() - start, interrupted=interrupted, env=args.env
    )
    _print_summary(console, summary, run_dir)
    return 130 if interrupted else 0


def _print_summary(console: Console, summary: dict, run_dir: Path) -> None:
    table = Table(title=f"best student ({run_dir})")
    table.add_column("")
    table.add_column("teacher", justify="right")
    table.add_column("student", justify="right")
    best_acc, teacher_acc = summary["best_accuracy"], summary["teacher_accuracy"]
    table.add_row(
        "val accuracy",
        f"{teacher_acc:.4f}" if teacher_acc else "-",
        f"{best_acc:.4f}" if best_acc else "-",
    )
    table.add_row(
        "parameters", f"{summary['teacher_params'] or '-'}", f"{summary['best_params'] or '-'}"
    )
    compression = summary.get("best_compression")
    table.add_row("compression", "1x", f"{compression:.2f}x" if compression else "-")
    table.add_row(
        "reward", "", f"{summary['best_reward']:.4f}" if summary["best_reward"] is not None else "-"
    )
    table.add_row(
        "evaluations", "", f"{summary['evaluations']} ({summary['cache_hits']} cache hits)"
    )
    console.print(table)


if __name__ == "__main__":
    sys.exit(main())
