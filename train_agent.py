"""Search for a compressed student of a teacher network with an RL agent on an N2N environment.

    python train_agent.py --algo reinforce                       # stage 1 on the bundled MNIST teacher
    python train_agent.py --algo ppo --budget 150 --seed 1
    python train_agent.py --env N2NShrink-v0 --env-kwargs '{"start_from": "runs/N2NRemoval-v0-reinforce-0"}'

Every algorithm gets the same budget of student evaluations (episodes). The run directory
(``--out``, default ``runs/<env>-<algo>-<seed>``) receives ``config.json``, one line per evaluation
in ``evaluations.jsonl``, TensorBoard scalars in ``tb/``, agent checkpoints in ``checkpoints/``,
the best student in ``best_student.json`` and ``summary.json``. Ctrl-C stops cleanly and keeps
everything; ``--resume`` continues a stopped run from its last checkpoint without losing
evaluations.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import gymnasium as gym
from rich.console import Console
from rich.table import Table
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecEnv, VecEnvWrapper
from tqdm import tqdm

import n2n_gym  # noqa: F401  (registers the environments)
from agents import RandomSearch, Reinforce
from agents.sb3 import SB3_ALGOS, make_sb3_agent
from n2n_gym.runs import CONFIG_FILE, RunRecorder, write_json_atomic

ALGOS = ("reinforce", *SB3_ALGOS, "random")
CHECKPOINT = "checkpoints/agent.zip"


@dataclass
class Args:
    algo: str = "reinforce"
    """search algorithm: reinforce, ppo, a2c, recurrent_ppo, maskable_ppo or random"""
    env: str = "N2NRemoval-v0"
    """registered environment id"""
    budget: int = 100
    """student evaluations (episodes) to spend; cache hits count and are reported separately"""
    seed: int = 0
    """seed of the agent and the environments"""
    device: str = "auto"
    """device for distilling students: auto, cpu or cuda (agents' own networks run on the CPU)"""
    n_envs: int = 1
    """parallel environments; above 1 they run in subprocesses, evaluating students concurrently"""
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    """extra gymnasium.make keyword arguments"""
    out: str | None = None
    """run directory (default runs/<env>-<algo>-<seed>)"""
    resume: bool = False
    """continue the run in the run directory from its last checkpoint"""
    init_policy: str | None = None
    """start from the agent of an earlier run (its directory or checkpoint): policy transfer"""
    checkpoint_every: int = 10
    """save the agent every this many evaluations"""


def parse_args(argv: list[str] | None = None) -> Args:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    defaults = Args()
    parser.add_argument("--algo", choices=ALGOS, default=defaults.algo)
    parser.add_argument("--env", default=defaults.env)
    parser.add_argument("--budget", type=int, default=defaults.budget)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--device", default=defaults.device)
    parser.add_argument("--n-envs", "--workers", dest="n_envs", type=int, default=defaults.n_envs)
    parser.add_argument(
        "--env-kwargs", default="{}", help="JSON object of gymnasium.make arguments"
    )
    parser.add_argument("--out", default=None)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--init-policy", default=None)
    parser.add_argument("--checkpoint-every", type=int, default=defaults.checkpoint_every)
    ns = parser.parse_args(argv)
    try:
        env_kwargs = json.loads(ns.env_kwargs)
    except json.JSONDecodeError as error:
        parser.error(
            f'--env-kwargs is not valid JSON ({error}); example: \'{{"cache_path": "r.db"}}\''
        )
    if not isinstance(env_kwargs, dict):
        parser.error('--env-kwargs must be a JSON object, e.g. \'{"fidelity": "medium"}\'')
    for name in ("budget", "n_envs", "checkpoint_every"):
        if getattr(ns, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if ns.env not in gym.registry:
        known = ", ".join(sorted(i for i in gym.registry if i.startswith("N2N")))
        parser.error(f"--env {ns.env!r} is not registered; known: {known}")
    values = {k: v for k, v in vars(ns).items() if k != "env_kwargs"}
    return Args(**values, env_kwargs=env_kwargs)


class RecordEvaluations(VecEnvWrapper):
    """Records every finished episode into the run directory, TensorBoard and the progress bar."""

    def __init__(self, venv: VecEnv, recorder: RunRecorder, bar: tqdm, tb_dir: Path) -> None:
        super().__init__(venv)
        self.recorder = recorder
        self.bar = bar
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(tb_dir))

    def reset(self):
        return self.venv.reset()

    def step_wait(self):
        obs, rewards, dones, infos = self.venv.step_wait()
        for index in range(self.num_envs):
            if not dones[index]:
                continue
            info = infos[index]
            record = self.recorder.record(
                float(rewards[index]), info, wall_time=info.get("wall_time")
            )
            step = record["evaluation"]
            self.writer.add_scalar("eval/reward", record["reward"], step)
            self.writer.add_scalar("eval/best_reward", self.recorder.best_reward, step)
            if record["error"] is None:
                self.writer.add_scalar("eval/accuracy", record["accuracy"], step)
                self.writer.add_scalar("eval/params", record["params"], step)
            self.bar.update(1)
            self.bar.set_postfix(
                best=f"{self.recorder.best_reward:.4f}", hits=self.recorder.cache_hits
            )
        return obs, rewards, dones, infos

    def close(self) -> None:
        self.writer.close()
        super().close()


class BudgetAndCheckpoints(BaseCallback):
    """Stops the agent at the evaluation budget and checkpoints it every few evaluations."""

    def __init__(self, recorder: RunRecorder, budget: int, every: int, path: Path) -> None:
        super().__init__()
        self.recorder, self.budget, self.every, self.path = recorder, budget, every, path
        self.saved_at = recorder.evaluations

    def _on_step(self) -> bool:
        if self.recorder.evaluations - self.saved_at >= self.every:
            self.save()
        return self.recorder.evaluations < self.budget

    def save(self) -> None:
        if not hasattr(self.model, "save"):
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_suffix(".tmp.zip")
        self.model.save(temporary)
        os.replace(temporary, self.path)
        self.saved_at = self.recorder.evaluations


def make_agent(args: Args, venv: VecEnv, run_dir: Path, episode_length: int, done: int):
    """The agent for ``args.algo``: fresh, resumed from the run's checkpoint, or from --init-policy."""
    tb = str(run_dir / "tb")
    if args.algo == "random":
        return RandomSearch(venv, seed=args.seed + done)
    cls = Reinforce if args.algo == "reinforce" else SB3_ALGOS[args.algo][0]
    source = run_dir / CHECKPOINT if args.resume and (run_dir / CHECKPOINT).exists() else None
    if source is None and args.init_policy:
        source = Path(args.init_policy)
        source = source / CHECKPOINT if source.is_dir() else source
        if not source.exists():
            raise SystemExit(f"--init-policy {args.init_policy}: no agent checkpoint at {source}")
    if source is not None:
        return cls.load(source, env=venv, device="cpu", tensorboard_log=tb)
    if args.algo == "reinforce":
        return Reinforce("ControllerPolicy", venv, seed=args.seed, tensorboard_log=tb)
    return make_sb3_agent(
        args.algo, venv, episode_length, seed=args.seed, device="cpu", tensorboard_log=tb
    )


def _make_env(env_id: str, env_kwargs: dict[str, Any]) -> gym.Env:
    # The string entry point imports n2n_gym in subprocess workers too.
    return Monitor(gym.make(f"n2n_gym:{env_id}", **env_kwargs))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    console = Console()
    run_dir = Path(args.out or f"runs/{args.env}-{args.algo}-{args.seed}")
    if (run_dir / CONFIG_FILE).exists() and not args.resume:
        console.print(
            f"[red]{run_dir} already holds a run:[/] pass --resume to continue it, or --out DIR"
        )
        return 2
    # A per-run reward cache: a student the agent proposes again costs nothing the second time.
    env_kwargs = {
        "device": args.device,
        "cache_path": str(run_dir / "rewards.sqlite"),
        **args.env_kwargs,
    }
    try:
        probe = gym.make(args.env, **env_kwargs)
    except (ValueError, gym.error.Error) as error:
        console.print(f"[red]cannot make {args.env}:[/] {error}")
        return 2
    episode_length = probe.unwrapped.num_steps
    probe.close()
    write_json_atomic(run_dir / CONFIG_FILE, asdict(args))
    recorder = RunRecorder(run_dir, args.algo, args.seed)
    if recorder.evaluations >= args.budget:
        console.print(f"{run_dir} already spent its budget of {args.budget} evaluations")
        _print_summary(console, recorder.write_summary(env=args.env), run_dir)
        return 0
    vec_cls = SubprocVecEnv if args.n_envs > 1 else DummyVecEnv
    venv = vec_cls([partial(_make_env, args.env, env_kwargs) for _ in range(args.n_envs)])
    venv.seed(args.seed + recorder.evaluations)
    bar = tqdm(
        total=args.budget,
        initial=recorder.evaluations,
        desc=f"{args.algo} on {args.env}",
        unit="eval",
    )
    venv = RecordEvaluations(venv, recorder, bar, run_dir / "tb")
    agent = make_agent(args, venv, run_dir, episode_length, recorder.evaluations)
    callback = BudgetAndCheckpoints(
        recorder, args.budget, args.checkpoint_every, run_dir / CHECKPOINT
    )
    # Enough steps for the budget even if some episodes stop early; the callback stops at the budget.
    total_steps = (
        2 * (args.budget - recorder.evaluations) * episode_length + episode_length * args.n_envs
    )
    start = time.perf_counter()
    interrupted = False
    try:
        agent.learn(total_steps, callback=callback)
    except KeyboardInterrupt:
        interrupted = True
        console.print(
            "[yellow]interrupted:[/] everything so far is kept; rerun with --resume to continue"
        )
    finally:
        callback.save()
        bar.close()
        venv.close()
    summary = recorder.write_summary(
        env=args.env, wall_time=time.perf_counter() - start, interrupted=interrupted
    )
    _print_summary(console, summary, run_dir)
    return 130 if interrupted else 0


def _fmt(value: float | None, pattern: str) -> str:
    return "-" if value is None else pattern.format(value)


def _print_summary(console: Console, summary: dict[str, Any], run_dir: Path) -> None:
    table = Table(title=f"best student of {summary['algo']} ({run_dir})")
    for column in ("", "teacher", "best student"):
        table.add_column(column, justify="right")
    table.add_row(
        "val accuracy",
        _fmt(summary["teacher_accuracy"], "{:.4f}"),
        _fmt(summary["best_accuracy"], "{:.4f}"),
    )
    table.add_row(
        "parameters", _fmt(summary["teacher_params"], "{:,}"), _fmt(summary["best_params"], "{:,}")
    )
    table.add_row("compression", "1x", _fmt(summary["best_compression"], "{:.2f}x"))
    table.add_row("reward", "", _fmt(summary["best_reward"], "{:.4f}"))
    table.add_row(
        "evaluations", "", f"{summary['evaluations']} ({summary['cache_hits']} cache hits)"
    )
    console.print(table)


if __name__ == "__main__":
    sys.exit(main())
