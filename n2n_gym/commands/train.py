"""Search for a compressed student of a teacher network with an RL agent on an N2N environment.

    python train_agent.py --algo reinforce                       # stage 1 on the bundled MNIST teacher
    python train_agent.py --algo ppo --budget 150 --seed 1
    python train_agent.py --env N2NShrink-v2 --env-kwargs '{"start_from": "runs/N2NRemoval-v2-reinforce-0"}'

Every algorithm gets the same budget of *distinct* students: a student the search proposes again
is answered by the run's cache and costs nothing, so it does not count. A search that keeps
proposing students it has seen has converged: it stops after 200 episodes in a row without a new
student, or after 5x the budget in episodes, and its summary says so. The run directory
(``--out``, default ``runs/<env>-<algo>-<seed>``) receives ``config.json``, one line per evaluation
in ``evaluations.jsonl``, TensorBoard scalars in ``tb/``, agent checkpoints in ``checkpoints/``,
the best student in ``best_student.json`` and ``summary.json``. Ctrl-C stops cleanly and keeps
everything; ``--resume`` continues a stopped run from its last checkpoint without losing
evaluations.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import inspect
import json
import logging
import math
import os
import sys
import time
import traceback
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
from agents import (
    ALGOS,
    PRUNING_SEARCHES,
    SEARCHES,
    RandomSearch,
    Reinforce,
    agent_class,
    hyperparams,
    reward_free_students,
)
from agents.controllers import CONTROLLER_KINDS, controller_kind
from agents.pretrained import PRETRAINED, policy_path
from agents.sb3 import make_sb3_agent
from n2n_gym.backends import BackendConfigError, WorkersLost, make_backend
from n2n_gym.cli import (
    OneLineParser,
    cores,
    fail,
    field_docs,
    out_folder_problem,
    progress,
    set_threads,
    show_table,
)
from n2n_gym.commands.final_training import finish_with_progress
from n2n_gym.commands.shared_cores import warn_shared_cores
from n2n_gym.distill import FIDELITY_PRESETS
from n2n_gym.envs import EPISODES_PER_UPDATE, EnvConfigError, task_for
from n2n_gym.envs.vector import ThreadedVecEnv
from n2n_gym.finalize import FINAL_TRAINING
from n2n_gym.runs import (
    CHECKPOINT_FILE,
    CONFIG_FILE,
    CONVERGED_EPISODE_FACTOR,
    RunRecorder,
    resume_conflict,
    write_best_weights,
    write_json_atomic,
)
from n2n_gym.task import Task, TaskError

STAGES = ("removal", "shrink", "final")
# A pipeline's own record at the top of its folder (each stage has its config.json).
PIPELINE_FILE = "pipeline.json"


@dataclass
class Args:
    algo: str = "reinforce"
    """search algorithm: reinforce, an SB3 agent, random, evolution, tpe or tpe-hyperband"""
    env: str = "N2NRemoval-v2"
    """registered environment id"""
    budget: int = 100
    """distinct students to evaluate (repeats are cache hits and free; see the module doc)"""
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
    backend: str = "pool"
    """what --workers are: pool (processes; fastest on CPU) or threads (one process, one CUDA
    stream each: several small students in flight on one GPU)"""
    ray_address: str | None = None
    """Ray cluster that evaluates students ("local" starts Ray here); default: $RAY_ADDRESS"""
    ray_data: str = "object_store"
    """how Ray workers get the teacher and data: object_store (shipped by this process; nodes
    need only the package) or paths (each reads the task's paths, which every node must have)"""
    threads: int | None = None
    """torch CPU threads of this search, shared by its processes (default: every core)"""
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    """extra gymnasium.make keyword arguments"""
    hyperparams: dict[str, Any] = field(default_factory=dict)
    """the algorithm's hyperparameters over agents/hyperparams.yml"""
    out: str | None = None
    """run directory (default runs/<env>-<algo>-<seed>)"""
    resume: bool = False
    """continue the run in the run directory from its last checkpoint"""
    init_policy: str | None = None
    """start from the agent of an earlier run (its directory or checkpoint): policy transfer"""
    controller: str | None = None
    """reinforce's controller: bidirectional, autoregressive, encoder-decoder or actor-critic
    (default: bidirectional for removal, autoregressive otherwise)"""
    checkpoint_every: int = 10
    """save the agent every this many evaluations"""
    stages: tuple[str, ...] = ()
    """pipeline stages run one after the other into --out (removal, shrink, final)"""
    shrink_kwargs: dict[str, Any] = field(default_factory=dict)
    """pipeline's shrink stage: gymnasium.make arguments that override --env-kwargs there"""
    final: dict[str, Any] = field(default_factory=dict)
    """pipeline's final training: DistillConfig fields that replace evaluate.py's defaults"""
    argv: list[str] = field(default_factory=list)
    """the command line that made the run (config.json keeps it; --rerun replays it)"""


EXAMPLES = """examples (python train_agent.py takes the same flags):
  n2n-gym train --algo reinforce                       # the paper's search, default teacher
  n2n-gym train --pipeline --out runs/mnist-10x \\
      --shrink-kwargs '{"constraints": {"max_params": 12000}, "fidelity": {"lr": 0.002}}'
  n2n-gym train --algo evolution --env N2NJoint-Tab-v0 --budget 300   # on a table
  n2n-gym train --algo reinforce --workers 2           # 2 evaluation processes
  n2n-gym train --algo tpe --env-kwargs '{"halving": {"eta": 3}}'      # successive halving
  n2n-gym train --out runs/a --resume                  # continue a stopped run
"""


def build_parser() -> OneLineParser:
    """The command line: every flag with its help and default, in groups, examples below."""
    parser = OneLineParser(
        description=__doc__.split("\n")[0],
        epilog=EXAMPLES,
    )
    defaults = Args()
    docs = field_docs(Args)

    def add(group, flag: str, **kwargs: Any) -> None:
        name = flag[2:].replace("-", "_")
        name = {"final_kwargs": "final"}.get(name, name)
        text = kwargs.pop("help", None) or docs.get(name, "")
        value = kwargs.get("default")
        if value not in (None, "") and "default" not in text and kwargs.get("action") is None:
            text += f" (default: {value})"
        group.add_argument(flag, help=text, **kwargs)

    task = parser.add_argument_group(
        "task: what is compressed, on which data, how rewards are measured"
    )
    add(task, "--env", default=defaults.env)
    add(
        task,
        "--env-kwargs",
        default="{}",
        help="JSON object of gymnasium.make arguments (teacher, "
        "teacher_arch, dataset, data_dir, fidelity, constraints, halving, ...), e.g. "
        '\'{"teacher": "my_net.pt", "teacher_arch": "resnet18"}\'',
    )
    add(task, "--device", default=defaults.device)
    add(
        task,
        "--teacher",
        default=None,
        help="the teacher: default (the data set's bundled "
        "one), bundled:NAME, or a checkpoint / state dict file (gymnasium.make's teacher=)",
    )
    add(
        task,
        "--teacher-arch",
        default=None,
        help="the architecture of a state dict: a "
        "torchvision or zoo name (resnet18, vgg11, small_vgg ...) or 'package.module:function'",
    )
    add(
        task,
        "--dataset",
        default=None,
        help="mnist (bundled), fashion_mnist, cifar10, "
        "cifar100, svhn or imagefolder (default: the environment's, mnist)",
    )
    add(task, "--data-dir", default=None, help="the data set's folder (an image folder's root)")
    add(
        task,
        "--fidelity",
        choices=tuple(FIDELITY_PRESETS),
        default=None,
        help="how much distillation one reward gets: a preset (default: the environment's)",
    )
    add(
        task,
        "--reward-lr",
        type=float,
        default=None,
        help="the reward distillation's Adam learning rate (fidelity lr)",
    )
    add(
        task,
        "--reward-images",
        type=int,
        default=None,
        help="training images one reward distils on (fidelity transfer_size)",
    )
    add(
        task,
        "--reward-epochs",
        type=int,
        default=None,
        help="passes over them (fidelity epochs)",
    )
    add(
        task,
        "--max-params",
        type=int,
        default=None,
        help="constraint: students with more parameters get reward -1",
    )
    add(
        task,
        "--max-flops",
        type=int,
        default=None,
        help="constraint: students with more multiply-adds per image get reward -1",
    )
    add(
        task,
        "--min-accuracy",
        type=float,
        default=None,
        help="constraint: students below this validation accuracy (a fraction) get reward -1",
    )
    add(
        task,
        "--compress",
        default=None,
        help="a target compression such as 10x: with "
        "--pipeline (or a shrink search) a parameter limit of teacher parameters / N on the "
        f"shrink stage, at the reward learning rate {COMPRESS_REWARD_LR} the walkthrough found",
    )
    search = parser.add_argument_group("search")
    add(search, "--algo", choices=ALGOS, default=defaults.algo, help="search algorithm")
    add(search, "--budget", type=int, default=defaults.budget)
    add(search, "--seed", type=int, default=defaults.seed)
    add(
        search,
        "--hyperparams",
        default="{}",
        help="JSON object of the algorithm's "
        "hyperparameters over agents/hyperparams.yml, e.g. '{\"population_size\": 50}'",
    )
    add(
        search,
        "--controller",
        default=None,
        help=f"reinforce's controller: "
        f"{', '.join(CONTROLLER_KINDS)} (default: bidirectional for removal, autoregressive "
        "otherwise)",
    )
    add(
        search,
        "--init-policy",
        default=None,
        help="start from a trained agent: a run "
        "directory, an agent .zip, or a shipped one ("
        + ", ".join(f"pretrained:{name}" for name in PRETRAINED)
        + ")",
    )
    scale = parser.add_argument_group("scale-out")
    add(scale, "--n-envs", type=int, default=defaults.n_envs)
    add(scale, "--workers", type=int, default=defaults.workers)
    add(scale, "--backend", choices=("pool", "threads"), default=defaults.backend)
    add(scale, "--ray-address", default=os.environ.get("RAY_ADDRESS") or None)
    add(scale, "--ray-data", choices=("object_store", "paths"), default=defaults.ray_data)
    add(scale, "--threads", type=int, default=None)
    pipeline = parser.add_argument_group("pipeline: removal, then shrinking, then final training")
    add(
        pipeline,
        "--pipeline",
        action="store_true",
        help="the whole pipeline: --stages removal,shrink,final",
    )
    add(
        pipeline,
        "--stages",
        default=None,
        help=f"run several stages into --out, comma-separated from {','.join(STAGES)}",
    )
    add(
        pipeline,
        "--start-from",
        default=None,
        help="shrink stage: a stage-1 run directory (or student JSON) to start from",
    )
    add(
        pipeline,
        "--shrink-kwargs",
        default="{}",
        help="shrink stage: JSON of gymnasium.make "
        'arguments over --env-kwargs, e.g. \'{"constraints": {"max_params": 12000}}\'',
    )
    add(
        pipeline,
        "--final-kwargs",
        default="{}",
        help="final stage: JSON of DistillConfig fields, e.g. '{\"epochs\": 5}'",
    )
    output = parser.add_argument_group("output")
    add(output, "--out", default=None)
    add(output, "--resume", action="store_true")
    add(output, "--checkpoint-every", type=int, default=defaults.checkpoint_every)
    add(
        output,
        "--rerun",
        default=None,
        help="run the command that made RUN_DIR again, exactly "
        "(its config.json), into --out (default: RUN_DIR-rerun)",
    )
    return parser


def parse_args(argv: list[str] | None = None) -> Args:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    ns = parser.parse_args(argv)
    if ns.rerun is not None:
        return parse_args(_rerun_argv(parser, ns, argv))
    stages = _parse_stages(parser, ns.stages, ns.pipeline)
    for stage in set(stages) - {"final"}:
        try:
            stage_env(ns.env, stage)
        except ValueError as error:
            parser.error(f"{error}; a pipeline starts from N2NRemoval-v2 or a paper removal id")
    env_kwargs = _task_flags(parser, ns, _json_object(parser, "--env-kwargs", ns.env_kwargs))
    agent_settings = _json_object(parser, "--hyperparams", ns.hyperparams)
    _check_hyperparams(parser, ns.algo, agent_settings)
    if ns.init_policy is not None:
        if ns.algo in SEARCHES:
            parser.error(f"--init-policy starts a trained policy; --algo {ns.algo} has none")
        try:
            policy_path(ns.init_policy)
        except ValueError as error:
            parser.error(str(error))
    if ns.controller is not None:
        if ns.algo != "reinforce":
            parser.error(f"--controller chooses reinforce's controller; --algo {ns.algo} has none")
        if ns.init_policy:
            parser.error("--controller builds a new agent; --init-policy loads one with its own")
        try:
            ns.controller = controller_kind(ns.controller)
        except ValueError as error:
            parser.error(f"--controller: {error}")
    if ns.out is not None and (problem := out_folder_problem(ns.out)):
        parser.error(f"--out {ns.out}: {problem}")
    for name in ("budget", "n_envs", "checkpoint_every", "threads"):
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
                "--env N2NShrink-v2 (a pipeline passes it between its stages by itself)"
            )
        env_kwargs["start_from"] = ns.start_from
    final = _json_object(parser, "--final-kwargs", ns.final_kwargs)
    try:
        replace(FINAL_TRAINING, **final)
    except (TypeError, ValueError) as error:
        parser.error(f"--final-kwargs: {error}")
    shrink_kwargs = _json_object(parser, "--shrink-kwargs", ns.shrink_kwargs)
    if ns.compress is not None:
        target = _compress_constraint(parser, ns, env_kwargs, stages)
        if stages:
            shrink_kwargs = _merge_stage(parser, shrink_kwargs, target, env_kwargs)
        else:
            env_kwargs = _merge_stage(parser, env_kwargs, target, {})
    if shrink_kwargs and "shrink" not in stages:
        parser.error(
            "--shrink-kwargs applies to a pipeline's shrink stage: add --pipeline (or --stages "
            "removal,shrink)"
        )
    for stage in stages or ("search",):
        if stage == "final":
            continue
        env_id = ns.env if stage == "search" else stage_env(ns.env, stage)
        kwargs = dict(env_kwargs)
        if stage == "shrink":
            kwargs.update(shrink_kwargs)
            kwargs.pop("start_from", None)  # the pipeline passes stage 1's result
        flag = "--shrink-kwargs" if stage == "shrink" and shrink_kwargs else "--env-kwargs"
        try:
            task, _ = search_task(env_id, kwargs, device=ns.device, ray_address=ns.ray_address)
        except TaskError as error:
            given = _given_task_flags(ns, stage == "shrink" and bool(shrink_kwargs))
            parser.error(f"{env_id}{f' ({given})' if given else ''}: {error}")
        if ns.algo in PRUNING_SEARCHES and task.halving is None:
            parser.error(
                f"--algo {ns.algo} prunes at successive-halving rungs: add halving to {flag}, "
                'e.g. \'{"halving": {"eta": 3, "rungs": [0.25, 0.5]}}\''
            )
    skip = (
        *TASK_FLAGS,
        "rerun",
        "env_kwargs",
        "start_from",
        "stages",
        "pipeline",
        "final_kwargs",
        "shrink_kwargs",
        "hyperparams",
    )
    values = {k: v for k, v in vars(ns).items() if k not in skip}
    return Args(
        **values,
        env_kwargs=env_kwargs,
        hyperparams=agent_settings,
        stages=stages,
        shrink_kwargs=shrink_kwargs,
        final=final,
        argv=argv,
    )


def _rerun_argv(
    parser: argparse.ArgumentParser, ns: argparse.Namespace, argv: list[str]
) -> list[str]:
    """The recorded command line of ``--rerun RUN_DIR``, writing into ``--out``."""
    extra = [a for a in argv if a.startswith("--") and a.split("=")[0] not in ("--rerun", "--out")]
    if extra:
        parser.error(f"--rerun replays a recorded command; it takes only --out, not {extra[0]}")
    run_dir = Path(ns.rerun)
    config = next(
        (run_dir / name for name in (CONFIG_FILE, PIPELINE_FILE) if (run_dir / name).exists()), None
    )
    if config is None:
        parser.error(
            f"--rerun {run_dir}: no {CONFIG_FILE} or {PIPELINE_FILE} there; pass a "
            "run directory written by n2n-gym train"
        )
    recorded = json.loads(config.read_text()).get("argv")
    if not isinstance(recorded, list):
        parser.error(
            f"--rerun {run_dir}: {config.name} records no command line (written by an "
            "older version); rerun it by hand"
        )
    replay, skip = [], False
    for token in recorded:
        if skip:
            skip = False
            continue
        if token in ("--out", "--rerun"):
            skip = True
            continue
        if token == "--resume" or token.startswith(("--out=", "--rerun=")):
            continue
        replay.append(token)
    out = ns.out or f"{str(run_dir).rstrip('/')}-rerun"
    return [*replay, "--out", out]


# Flags that set the task; they become --env-kwargs entries (recorded in config.json there).
TASK_FLAGS = (
    "teacher",
    "teacher_arch",
    "dataset",
    "data_dir",
    "fidelity",
    "reward_lr",
    "reward_images",
    "reward_epochs",
    "max_params",
    "max_flops",
    "min_accuracy",
    "compress",
)
# --reward-* flags -> the fidelity (DistillConfig) fields they set.
REWARD_FLAGS = {"reward_lr": "lr", "reward_images": "transfer_size", "reward_epochs": "epochs"}
# --compress: the walkthrough's finding (README): a shrink stage limited to teacher / N
# parameters, rewarded at this distillation learning rate, which ranks small students better.
COMPRESS_REWARD_LR = 2e-3


def _given_task_flags(ns: argparse.Namespace, shrink: bool) -> str:
    """The flags the user typed that set a stage's task, for an error to name (none: empty)."""
    names = [*TASK_FLAGS, "device"]
    flags = [
        f"--{name.replace('_', '-')}"
        for name in names
        if getattr(ns, name, None) not in (None, Args.device)
    ]
    if ns.env_kwargs and ns.env_kwargs.strip() != "{}":
        flags.append("--env-kwargs")
    if shrink:
        flags.append("--shrink-kwargs")
    return ", ".join(flags)


def _task_flags(
    parser: argparse.ArgumentParser, ns: argparse.Namespace, env_kwargs: dict[str, Any]
) -> dict[str, Any]:
    """--env-kwargs with the task flags folded in; a setting given both ways is refused."""
    kwargs = dict(env_kwargs)

    def put(key: str, value: Any, flag: str) -> None:
        if key in kwargs:
            parser.error(f"{flag} and --env-kwargs both set {key}: give it once")
        kwargs[key] = value

    for name in ("teacher", "teacher_arch", "dataset", "data_dir"):
        if getattr(ns, name) is not None:
            put(name, getattr(ns, name), f"--{name.replace('_', '-')}")
    fields = {
        key: getattr(ns, name)
        for name, key in REWARD_FLAGS.items()
        if getattr(ns, name) is not None
    }
    if ns.fidelity is not None or fields:
        preset = FIDELITY_PRESETS[ns.fidelity].to_dict() if ns.fidelity else {}
        put("fidelity", {**preset, **fields} if fields else ns.fidelity, "--fidelity/--reward-*")
    constraints = {
        name: getattr(ns, name)
        for name in ("max_params", "max_flops", "min_accuracy")
        if getattr(ns, name) is not None
    }
    if constraints:
        put("constraints", constraints, "--max-params/--max-flops/--min-accuracy")
    return kwargs


def _compress_constraint(
    parser: argparse.ArgumentParser,
    ns: argparse.Namespace,
    env_kwargs: dict[str, Any],
    stages: tuple[str, ...],
) -> dict[str, Any]:
    """The shrink stage's settings --compress N stands for: a parameter limit and its fidelity."""
    text = str(ns.compress).strip().lower().removesuffix("x")
    try:
        factor = float(text)
    except ValueError:
        factor = 0.0
    if not 1 < factor < math.inf:  # NaN fails too
        parser.error(
            f"--compress {ns.compress!r}: give a finite factor above 1, e.g. --compress 10x"
        )
    if not stages and not ns.env.startswith(("N2NShrink", "N2NJoint")):
        parser.error(
            "--compress limits the shrink stage (a limit on removal alone forces a poor start): "
            "add --pipeline, or search a shrink or joint environment"
        )
    try:
        task, _ = task_for(ns.env, env_kwargs)
    except EnvConfigError as error:
        parser.error(f"--compress: {error}")
    return {
        "constraints": {"max_params": int(task.teacher_spec.params / factor)},
        "fidelity": {"lr": COMPRESS_REWARD_LR},
    }


def _merge_stage(
    parser: argparse.ArgumentParser,
    kwargs: dict[str, Any],
    target: dict[str, Any],
    base: dict[str, Any],
) -> dict[str, Any]:
    """A stage's kwargs with --compress's settings over ``base`` (the pipeline's --env-kwargs,
    which the stage's own kwargs override): a second parameter limit is refused, a fidelity the
    user chose is kept."""
    merged = dict(kwargs)
    constraints = {**(base.get("constraints") or {}), **(merged.get("constraints") or {})}
    if "max_params" in constraints:
        parser.error(
            "--compress and another parameter limit (--max-params, --env-kwargs or "
            "--shrink-kwargs) both limit parameters: give one"
        )
    merged["constraints"] = {**constraints, **target["constraints"]}
    if merged.get("fidelity") is None and base.get("fidelity") is None:
        merged["fidelity"] = target["fidelity"]
    return merged


def _check_hyperparams(parser: argparse.ArgumentParser, algo: str, settings: dict) -> None:
    """Unknown hyperparameter names fail here, before any folder exists."""
    cls = SEARCHES[algo] if algo in SEARCHES else agent_class(algo)
    known = set(inspect.signature(cls.__init__).parameters) - {"self", "env", "policy", "seed"}
    unknown = sorted(set(settings) - known)
    if unknown:
        parser.error(
            f"--hyperparams: {algo} has no hyperparameter {', '.join(unknown)}; it takes "
            f"{', '.join(sorted(known)) or 'none'}"
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
    """Records every finished episode into the run directory, TensorBoard and the progress bar.

    It also tells each environment how many evaluations the whole search has finished before
    its next one (annealed constraints count policy updates from that), so the schedule does not
    depend on the number of environments and continues after a resume. The environments of one
    search step together and their episodes have one length, so environment ``i``'s next
    evaluation is the search's evaluation ``finished + i``.
    """

    def __init__(self, venv: VecEnv, recorder: RunRecorder, bar: tqdm, tb_dir: Path) -> None:
        super().__init__(venv)
        self.recorder = recorder
        self.bar = bar
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(tb_dir))

    def _push_progress(self) -> None:
        for index in range(self.num_envs):
            self.venv.env_method(
                "set_search_evaluations", self.recorder.evaluations + index, indices=[index]
            )

    def reset(self):
        observations = self.venv.reset()
        self._push_progress()
        return observations

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
            if record["new_student"]:
                self.bar.update(1)
            self.bar.set_postfix(
                best=f"{self.recorder.best_reward:.4f}", hits=self.recorder.cache_hits
            )
        if dones.any():
            self._push_progress()
        return obs, rewards, dones, infos

    def close(self) -> None:
        self.writer.close()
        super().close()


class BudgetAndCheckpoints(BaseCallback):
    """Stops the agent at its budget of distinct students (or converged) and checkpoints it."""

    def __init__(self, recorder: RunRecorder, budget: int, every: int, path: Path) -> None:
        super().__init__()
        self.recorder, self.budget, self.every, self.path = recorder, budget, every, path
        self.saved_at = recorder.evaluations

    def _on_step(self) -> bool:
        if self.recorder.evaluations - self.saved_at >= self.every:
            self.save()
        return self.recorder.stop_reason(self.budget) is None

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
    settings = {**hyperparams(args.algo, args.env), **args.hyperparams}
    if args.algo == "random":
        return RandomSearch(venv, seed=args.seed + done)
    if args.algo in SEARCHES:
        search = SEARCHES[args.algo](venv, seed=args.seed, tensorboard_log=tb, **settings)
        checkpoint = run_dir / CHECKPOINT_FILE
        if args.resume and checkpoint.exists():
            search.restore(checkpoint)
        return search
    cls = agent_class(args.algo)
    source = (
        run_dir / CHECKPOINT_FILE if args.resume and (run_dir / CHECKPOINT_FILE).exists() else None
    )
    if source is None and args.init_policy:
        source = policy_path(args.init_policy)
    if source is not None:
        agent = cls.load(source, env=venv, device="cpu", tensorboard_log=tb)
        # SB3's load keeps the saved run's seed and leaves the generators as they are, so every
        # run started from one policy would sample the same students: seed this run's own.
        agent.seed = args.seed + done
        agent.set_random_seed(agent.seed)
        return agent
    if args.algo == "reinforce":
        if args.controller:
            settings["policy_kwargs"] = {
                **settings.get("policy_kwargs", {}),
                "controller": args.controller,
            }
        return Reinforce("ControllerPolicy", venv, seed=args.seed, tensorboard_log=tb, **settings)
    return make_sb3_agent(
        args.algo,
        venv,
        episode_length,
        seed=args.seed,
        device="cpu",
        tensorboard_log=tb,
        env_id=args.env,
        **args.hyperparams,
    )


def _make_env(env_id: str, env_kwargs: dict[str, Any], threads: int | None = None) -> gym.Env:
    # The string entry point imports n2n_gym in subprocess workers too.
    if threads is not None:
        set_threads(threads)  # this subprocess's share of the search's cores
    return Monitor(gym.make(f"n2n_gym:{env_id}", **env_kwargs))


def make_vec_env(
    args: Args, task: Task, options: dict[str, Any], threads: int
) -> tuple[VecEnv, Any]:
    """The search's environments and the back-end they share (``None`` without workers).

    Without --workers / --ray-address every environment evaluates in its own process (several:
    SubprocVecEnv, each with its share of ``threads``). With them, one evaluator on the back-end
    is shared by environments that step in threads, so the episodes that end together have their
    students evaluated concurrently on the workers. Fills in ``args.n_envs``.
    """
    env_kwargs = {**task.to_dict(), **options}
    if not args.workers and not args.ray_address:
        args.n_envs = args.n_envs or 1
        if args.n_envs == 1:
            return DummyVecEnv([partial(_make_env, args.env, env_kwargs)]), None
        share = max(1, threads // args.n_envs)
        return SubprocVecEnv(
            [partial(_make_env, args.env, env_kwargs, share) for _ in range(args.n_envs)]
        ), None
    backend = make_backend(
        task,
        workers=args.workers,
        ray_address=args.ray_address,
        kind=args.backend,
        ray_data=args.ray_data,
    )
    evaluator = task.build_evaluator(backend)
    if args.n_envs is None:
        # REINFORCE's m rollouts end on the same step; SB3 agents get one environment per worker.
        args.n_envs = EPISODES_PER_UPDATE if args.algo == "reinforce" else backend.num_workers
    shared = {**env_kwargs, "evaluator": evaluator}
    env_fns = [partial(_make_env, args.env, shared) for _ in range(args.n_envs)]
    return ThreadedVecEnv(env_fns, on_close=evaluator.close), backend


def run_logged(argv: list[str], log_path: str) -> int:
    """Run one search with everything it prints in ``log_path``; returns its exit status.

    A benchmark's worker processes call this for run after run (no start-up per run).
    """
    set_threads(1)
    with (
        open(log_path, "w") as log,
        contextlib.redirect_stdout(log),
        contextlib.redirect_stderr(log),
    ):
        root = logging.getLogger()
        for handler in root.handlers[:]:  # the last run's handler wrote to its own log
            root.removeHandler(handler)
        try:
            return main(argv)
        except SystemExit as error:  # bad arguments: the message is in the log
            return error.code if isinstance(error.code, int) else 2
        except Exception:
            traceback.print_exc()
            return 1


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
        console = Console()
        if args.stages:
            return run_pipeline(args, console)
        return run_search(args, console)
    except KeyboardInterrupt as error:  # while starting up, or a final training cut short
        return fail(str(error) or "interrupted", 130)


def search_task(
    env_id: str,
    env_kwargs: dict[str, Any],
    *,
    device: str,
    ray_address: str | None,
    run_dir: Path | None = None,
) -> tuple[Task, dict[str, Any]]:
    """A search's task and env options, checked (the device here unless Ray places it).

    Args:
        env_id: the environment.
        env_kwargs: --env-kwargs (they win over --device).
        device: --device.
        ray_address: --ray-address; a Ray cluster checks its own devices.
        run_dir: the run directory, home of the run's cache unless env_kwargs name one.

    Raises:
        TaskError: a bad --env-kwargs value or --device (one line).
    """
    defaults: dict[str, Any] = {"device": device}
    if run_dir is not None:
        # A per-run cache: a student the agent proposes again costs nothing the second time.
        defaults["cache_path"] = str(run_dir / "rewards.sqlite")
    task, options = task_for(env_id, {**defaults, **env_kwargs})
    if not ray_address:
        task.check_device()
    return task, options


def run_search(args: Args, console: Console) -> int:
    """One search on ``args.env``; returns the exit status."""
    run_dir = Path(args.out or f"runs/{args.env}-{args.algo}-{args.seed}")
    if (run_dir / CONFIG_FILE).exists() and not args.resume:
        return fail(f"{run_dir} already holds a run: pass --resume to continue it, or --out DIR")
    if args.resume and (run_dir / CONFIG_FILE).exists():
        recorded = json.loads((run_dir / CONFIG_FILE).read_text())
        if args.n_envs is None:  # keep the recorded concurrency, whatever --workers is now
            args = replace(args, n_envs=recorded.get("n_envs"))
        conflict = resume_conflict(recorded, {**asdict(args), "out": str(run_dir)})
        if conflict:
            return fail(f"{run_dir}: {conflict}")
    try:
        task, options = search_task(
            args.env,
            args.env_kwargs,
            device=args.device,
            ray_address=args.ray_address,
            run_dir=run_dir,
        )
        # Only the episode length is needed: the proxy builds nothing.
        probe = gym.make(
            args.env, **task.replace(measurer="proxy", table=None).to_dict(), **options
        )
    except (TaskError, EnvConfigError) as error:
        return fail(f"{args.env}: {error}")
    episode_length = probe.unwrapped.num_steps
    probe.close()
    # Every core by default; workers and subprocess environments divide them.
    threads = args.threads or cores()
    set_threads(1 if args.workers or args.ray_address else threads)
    try:
        task = task.resolved()  # records the teacher's fingerprint in config.json
        venv, backend = make_vec_env(args, task, options, threads)
        if backend is not None:
            backend.start()  # a worker that cannot start stops the search before any folder
    except (TaskError, BackendConfigError) as error:
        return fail(f"cannot start the evaluation workers: {error}")
    recorder = RunRecorder(run_dir, args.algo, args.seed)
    done = recorder.stop_reason(args.budget)
    if done is not None:
        venv.close()
        console.print(f"{run_dir} already stopped ({done}) at a budget of {args.budget} students")
        _print_summary(console, recorder.write_summary(env=args.env, stop_reason=done), run_dir)
        return 0
    # The run's own folder, even when it was the default: config.json alone reruns the search.
    config = {**asdict(args), "out": str(run_dir), "task": task.to_dict(), "env_options": options}
    write_json_atomic(run_dir / CONFIG_FILE, config)
    warn_shared_cores(console, run_dir, threads)
    venv.seed(args.seed + recorder.evaluations)
    bar = progress(
        args.budget, f"{args.algo} on {args.env}", "student", initial=recorder.distinct_students
    )
    venv = RecordEvaluations(venv, recorder, bar, run_dir / "tb")
    agent = make_agent(args, venv, run_dir, episode_length, recorder.evaluations)
    callback = BudgetAndCheckpoints(
        recorder, args.budget, args.checkpoint_every, run_dir / CHECKPOINT_FILE
    )
    # Enough steps to reach the episode cap; the callback stops at the budget or convergence.
    total_steps = (
        CONVERGED_EPISODE_FACTOR * args.budget - recorder.evaluations + args.n_envs
    ) * episode_length
    start = time.perf_counter()
    interrupted = lost = False
    try:
        agent.learn(total_steps, callback=callback)
    except KeyboardInterrupt:
        interrupted = True
        console.print(
            "interrupted: everything so far is kept; rerun with --resume to continue",
            style="yellow",
            soft_wrap=True,
        )
    except WorkersLost as error:
        interrupted = lost = True
        console.print(f"error: {error}", style="red", soft_wrap=True)
    finally:
        callback.save()
        bar.close()
        venv.close()
    summary = recorder.write_summary(
        env=args.env,
        wall_time=time.perf_counter() - start,
        interrupted=interrupted,
        stop_reason="interrupted" if interrupted else recorder.stop_reason(args.budget),
        reward_free_students=reward_free_students(agent, episode_length),
    )
    _print_summary(console, summary, run_dir)
    _save_best_weights(run_dir, task, console)
    return 1 if lost else 130 if interrupted else 0


def _save_best_weights(run_dir: Path, task: Task, console: Console) -> None:
    # A fresh in-process measurer re-creates the best student's trained network (seeded).
    try:
        with console.status("saving the best student's weights"):
            measurer = task.build_measurer()
            path = write_best_weights(run_dir, measurer)
    except (TaskError, ValueError) as error:
        console.print(f"best student's weights not saved here: {error}", soft_wrap=True)
        return
    except KeyboardInterrupt:
        console.print(
            "best student's weights not saved (its description is); "
            "`python evaluate.py RUN_DIR` trains it from the description",
            style="yellow",
            soft_wrap=True,
        )
        return
    if path is not None:
        console.print(
            f"best student saved to {path} (load with n2n_gym.students.load_student)",
            soft_wrap=True,
        )


def run_pipeline(args: Args, console: Console) -> int:
    """Removal, then shrinkage of its best student, then final training and the test report."""
    out = Path(args.out or f"runs/pipeline-{args.algo}-{args.seed}")
    if args.resume and (out / PIPELINE_FILE).exists():
        conflict = resume_conflict(
            json.loads((out / PIPELINE_FILE).read_text()), {**asdict(args), "out": str(out)}
        )
        if conflict:
            return fail(f"{out}: {conflict}")
    previous: Path | None = None
    for number, stage in enumerate(args.stages, 1):
        if stage == "final":
            if previous is None:
                return fail("--stages final needs a search stage before it")
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
        # Written once a stage has run (a start that fails leaves no folder): --rerun reads it.
        write_json_atomic(out / PIPELINE_FILE, {**asdict(args), "out": str(out)})
        previous = Path(stage_args.out)
    return 0


def _percent(fraction: float | None) -> float | None:
    return None if fraction is None else 100 * fraction


def _fmt(value: float | None, pattern: str) -> str:
    return "-" if value is None else pattern.format(value)


def _print_summary(console: Console, summary: dict[str, Any], run_dir: Path) -> None:
    table = Table(
        title=f"best student of {summary['algo']} ({run_dir})",
        caption=f"The student's accuracy is after the search's short distillation. Next: "
        f"`n2n-gym evaluate {run_dir}` trains it fully and reports test accuracy; every "
        f"evaluation is in {run_dir / 'evaluations.jsonl'}, the totals in {run_dir / 'summary.json'}.",
    )
    for column in ("", "teacher", "best student"):
        table.add_column(column, justify="right")
    table.add_row(
        "validation accuracy",
        _fmt(_percent(summary["teacher_accuracy"]), "{:.2f} %"),
        _fmt(_percent(summary["best_accuracy"]), "{:.2f} %"),
    )
    table.add_row(
        "parameters", _fmt(summary["teacher_params"], "{:,}"), _fmt(summary["best_params"], "{:,}")
    )
    table.add_row("compression", "1x", _fmt(summary["best_compression"], "{:.2f}x"))
    table.add_row("reward", "", _fmt(summary["best_reward"], "{:.4f}"))
    table.add_row(
        "students",
        "",
        f"{summary['distinct_students']} distinct in {summary['evaluations']} episodes "
        f"({summary['cache_hits']} cache hits)",
    )
    if summary.get("stop_reason") == "converged":
        table.add_row("stopped", "", "converged (no new students)")
    show_table(console, table)


if __name__ == "__main__":
    sys.exit(main())
