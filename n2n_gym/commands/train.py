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
import traceback
from dataclasses import replace
from pathlib import Path
from typing import Any

import gymnasium as gym
from rich.console import Console

# (importing any n2n_gym module registers the environments: n2n_gym/__init__.py)
from agents.names import ALGOS, CONTROLLER_KINDS, PRUNING_SEARCHES, SEARCH_NAMES, controller_kind
from agents.pretrained import PRETRAINED, policy_path
from n2n_gym.cli import (
    OneLineParser,
    fail,
    field_docs,
    out_folder_problem,
    set_threads,
)
from n2n_gym.commands.search_args import PIPELINE_FILE, STAGES, Args, stage_env
from n2n_gym.fidelity import FIDELITY_PRESETS

# Only what parsing needs loads with this module (no torch): a bad flag or --help answers at once.
# The checks that need a teacher, and the search itself, import the rest when they run.

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


def parse_args(argv: list[str] | None = None, raise_errors: bool = False) -> Args:
    """The settings of ``argv``, every check done; a refused setting exits with one line (or,
    with ``raise_errors``, raises :class:`~n2n_gym.cli.SettingsRefused` and prints nothing)."""
    parser = build_parser()
    parser.raise_errors = raise_errors
    argv = list(sys.argv[1:] if argv is None else argv)
    ns = parser.parse_args(argv)
    if ns.rerun is not None:
        return parse_args(_rerun_argv(parser, ns, argv), raise_errors)
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
        if ns.algo in SEARCH_NAMES:
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
    from n2n_gym.commands.search_loop import search_task  # the checks below load the task
    from n2n_gym.finalize import FINAL_TRAINING
    from n2n_gym.task import TaskError

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
    from n2n_gym.runs import CONFIG_FILE

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
    from n2n_gym.envs import EnvConfigError, task_for

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
    from agents import SEARCHES, agent_class

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
        from n2n_gym.commands.search_loop import run_pipeline, run_search

        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
        console = Console()
        if args.stages:
            return run_pipeline(args, console)
        return run_search(args, console)
    except KeyboardInterrupt as error:  # while starting up, or a final training cut short
        return fail(str(error) or "interrupted", 130)
