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
import importlib.util
import json
import logging
import os
import sys
import time
from dataclasses import asdict, dataclass, field, replace
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
from agents import ALGOS, RandomSearch, Reinforce, agent_class
from agents.sb3 import make_sb3_agent
from evaluate import finish_with_progress
from n2n_gym.backends import BackendConfigError, make_backend
from n2n_gym.envs.base import EPISODES_PER_UPDATE
from n2n_gym.envs.vector import ThreadedVecEnv
from n2n_gym.finalize import FINAL_TRAINING
from n2n_gym.runs import (
    CHECKPOINT_FILE,
    CONFIG_FILE,
    RunRecorder,
    write_best_weights,
    write_json_atomic,
)

STAGES = ("removal", "shrink", "final")


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
    n_envs: int | None = None
    """parallel environments (default 1); above 1 without evaluation workers they run in
    subprocesses; with workers the default keeps them all busy (reinforce: its m = 5 rollouts)"""
    workers: int = 0
    """evaluation worker processes on this machine; with --ray-address the number of Ray actors
    (default: one per GPU, or one per CPU slot)"""
    ray_address: str | None = None
    """Ray cluster that evaluates students ("local" starts Ray here); default: $RAY_ADDRESS"""
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
    stages: tuple[str, ...] = ()
    """pipeline stages run one after the other into --out (removal, shrink, final)"""
    shrink_kwargs: dict[str, Any] = field(default_factory=dict)
    """pipeline's shrink stage: gymnasium.make arguments that override --env-kwargs there"""
    final: dict[str, Any] = field(default_factory=dict)
    """pipeline's final training: DistillConfig fields that replace evaluate.py's defaults"""


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
    parser.add_argument("--n-envs", type=int, default=defaults.n_envs)
    parser.add_argument("--workers", type=int, default=defaults.workers)
    parser.add_argument("--ray-address", default=os.environ.get("RAY_ADDRESS") or None)
    parser.add_argument(
        "--env-kwargs", default="{}", help="JSON object of gymnasium.make arguments"
    )
    parser.add_argument("--out", default=None)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--init-policy", default=None)
    parser.add_argument("--checkpoint-every", type=int, default=defaults.checkpoint_every)
    parser.add_argument(
        "--start-from",
        default=None,
        help="shrink stage: a stage-1 run directory (or student JSON) to start from",
    )
    parser.add_argument(
        "--stages",
        default=None,
        help=f"run several stages into --out, comma-separated from {','.join(STAGES)}",
    )
    parser.add_argument(
        "--shrink-kwargs",
        default="{}",
        help="shrink stage: JSON of gymnasium.make arguments over --env-kwargs, e.g. "
        '\'{"constraints": {"max_params": 12000}}\'',
    )
    parser.add_argument(
        "--final-kwargs",
        default="{}",
        help="final stage: JSON of DistillConfig fields, e.g. '{\"epochs\": 5}'",
    )
    parser.add_argument(
        "--pipeline",
        action="store_true",
        help="the whole pipeline: --stages removal,shrink,final",
    )
    ns = parser.parse_args(argv)
    stages = _parse_stages(parser, ns.stages, ns.pipeline)
    for stage in set(stages) - {"final"}:
        try:
            stage_env(ns.env, stage)
        except ValueError as error:
            parser.error(f"{error}; a pipeline starts from N2NRemoval-v0 or a paper removal id")
    env_kwargs = _json_object(parser, "--env-kwargs", ns.env_kwargs)
    for name in ("budget", "n_envs", "checkpoint_every"):
        if getattr(ns, name) is not None and getattr(ns, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if ns.workers < 0:
        parser.error("--workers must be 0 (evaluate in the environments) or more")
    if ns.ray_address and importlib.util.find_spec("ray") is None:
        parser.error("--ray-address (or RAY_ADDRESS) needs Ray: pip install '.[ray]'")
    if ns.env not in gym.registry:
        known = ", ".join(sorted(i for i in gym.registry if i.startswith("N2N")))
        parser.error(f"--env {ns.env!r} is not registered; known: {known}")
    if ns.start_from is not None:
        if stages or not ns.env.startswith("N2NShrink"):
            parser.error(
                "--start-from continues a removal run with a shrink search: use it with "
                "--env N2NShrink-v0 (a pipeline passes it between its stages by itself)"
            )
        env_kwargs["start_from"] = ns.start_from
    final = _json_object(parser, "--final-kwargs", ns.final_kwargs)
    try:
        replace(FINAL_TRAINING, **final)
    except (TypeError, ValueError) as error:
        parser.error(f"--final-kwargs: {error}")
    shrink_kwargs = _json_object(parser, "--shrink-kwargs", ns.shrink_kwargs)
    if shrink_kwargs and "shrink" not in stages:
        parser.error(
            "--shrink-kwargs applies to a pipeline's shrink stage: add --pipeline (or --stages "
            "removal,shrink)"
        )
    skip = ("env_kwargs", "start_from", "stages", "pipeline", "final_kwargs", "shrink_kwargs")
    values = {k: v for k, v in vars(ns).items() if k not in skip}
    return Args(
        **values, env_kwargs=env_kwargs, stages=stages, shrink_kwargs=shrink_kwargs, final=final
    )


def _json_object(parser: argparse.ArgumentParser, flag: str, text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        parser.error(f"{flag} is not valid JSON ({error}); it takes an object like '{{\"a\": 1}}'")
    if not isinstance(value, dict):
        parser.error(f"{flag} must be a JSON object, like '{{\"a\": 1}}'")
    return value


def _parse_stages(
    parser: argparse.ArgumentParser, text: str | None, pipeline: bool
) -> tuple[str, ...]:
    if pipeline:
        return STAGES
    if not text:
        return ()
    stages = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [stage for stage in stages if stage not in STAGES]
    if unknown or not stages:
        parser.error(f"--stages {text!r}: choose from {','.join(STAGES)}, e.g. removal,shrink")
    if "final" in stages[:-1] or stages == ("final",):
        parser.error("--stages: 'final' trains the last search's best student, so it comes last")
    if len(set(stages)) != len(stages):
        parser.error(f"--stages {text!r} names a stage twice")
    return stages


def stage_env(env_id: str, stage: str) -> str:
    """The environment of a pipeline stage in the family of ``env_id`` (same teacher and data)."""
    kind = {"removal": "Removal", "shrink": "Shrink"}[stage]
    for family in ("Removal", "Shrink"):
        if env_id.startswith(f"N2N{family}"):
            return env_id.replace(f"N2N{family}", f"N2N{kind}", 1)
    raise ValueError(f"--env {env_id!r} is not an N2N removal or shrink environment")


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
    cls = agent_class(args.algo)
    source = (
        run_dir / CHECKPOINT_FILE if args.resume and (run_dir / CHECKPOINT_FILE).exists() else None
    )
    if source is None and args.init_policy:
        source = Path(args.init_policy)
        source = source / CHECKPOINT_FILE if source.is_dir() else source
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


def make_vec_env(args: Args, env_kwargs: dict[str, Any]) -> VecEnv:
    """The search's environments, and where they evaluate students; fills in ``args.n_envs``.

    Without --workers / --ray-address every environment evaluates in its own process (several:
    SubprocVecEnv). With them, one back-end is shared by environments that step in threads, so the
    episodes that end together have their students evaluated concurrently on the workers.
    """
    if not args.workers and not args.ray_address:
        args.n_envs = args.n_envs or 1
        vec_cls = SubprocVecEnv if args.n_envs > 1 else DummyVecEnv
        return vec_cls([partial(_make_env, args.env, env_kwargs) for _ in range(args.n_envs)])
    probe = gym.make(args.env, **env_kwargs)
    recipe = probe.unwrapped.evaluator_recipe()
    probe.close()
    try:
        backend = make_backend(
            recipe,
            workers=args.workers,
            ray_address=args.ray_address,
            cache=recipe.open_cache(env_kwargs.get("cache_path")),
        )
    except BackendConfigError as error:
        raise SystemExit(f"cannot start the evaluation workers: {error}") from None
    if args.n_envs is None:
        # REINFORCE's m rollouts end on the same step; SB3 agents get one environment per worker.
        args.n_envs = EPISODES_PER_UPDATE if args.algo == "reinforce" else backend.num_workers
    shared = {**env_kwargs, "evaluator": backend}
    env_fns = [partial(_make_env, args.env, shared) for _ in range(args.n_envs)]
    return ThreadedVecEnv(env_fns, on_close=backend.close)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    console = Console()
    if args.stages:
        return run_pipeline(args, console)
    return run_search(args, console)


def run_search(args: Args, console: Console) -> int:
    """One search on ``args.env``; returns the exit status."""
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
    recorder = RunRecorder(run_dir, args.algo, args.seed)
    if recorder.evaluations >= args.budget:
        console.print(f"{run_dir} already spent its budget of {args.budget} evaluations")
        _print_summary(console, recorder.write_summary(env=args.env), run_dir)
        return 0
    venv = make_vec_env(args, env_kwargs)
    # Written once the workers are up (a failed start leaves no run behind) and n_envs is known.
    write_json_atomic(run_dir / CONFIG_FILE, asdict(args))
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
        recorder, args.budget, args.checkpoint_every, run_dir / CHECKPOINT_FILE
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
    _save_best_weights(run_dir, args.env, env_kwargs, console)
    return 130 if interrupted else 0


def _save_best_weights(
    run_dir: Path, env_id: str, env_kwargs: dict[str, Any], console: Console
) -> None:
    # A fresh in-process evaluator re-creates the best student's trained network (seeded).
    try:
        evaluator = gym.make(env_id, **env_kwargs).unwrapped.evaluator
        with console.status("saving the best student's weights"):
            path = write_best_weights(run_dir, evaluator)
    except KeyboardInterrupt:
        console.print(
            "[yellow]best student's weights not saved[/] (its description is); "
            "`python evaluate.py RUN_DIR` trains it from the description"
        )
        return
    if path is not None:
        console.print(f"best student saved to {path} (load with n2n_gym.students.load_student)")


def run_pipeline(args: Args, console: Console) -> int:
    """Removal, then shrinkage of its best student, then final training and the test report."""
    out = Path(args.out or f"runs/pipeline-{args.algo}-{args.seed}")
    previous: Path | None = None
    for number, stage in enumerate(args.stages, 1):
        if stage == "final":
            if previous is None:
                console.print("[red]--stages final needs a search stage before it[/]")
                return 2
            console.rule(f"stage {number}: final training of the best student")
            config = replace(FINAL_TRAINING, **args.final)
            finish_with_progress(previous, console, config=config, device=args.device, out_dir=out)
            continue
        env_id = stage_env(args.env, stage)
        env_kwargs = dict(args.env_kwargs)
        if stage == "shrink":
            env_kwargs.update(args.shrink_kwargs)
            if previous is not None:
                env_kwargs["start_from"] = str(previous)
        console.rule(f"stage {number}: {stage} search on {env_id}")
        stage_args = replace(
            args, env=env_id, env_kwargs=env_kwargs, out=str(out / f"{number}-{stage}"), stages=()
        )
        status = run_search(stage_args, console)
        if status != 0:
            return status
        previous = Path(stage_args.out)
    return 0


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
