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
import json
import logging
import os
import sys
import traceback
from pathlib import Path
from typing import Any

from rich.console import Console

# (importing any n2n_gym module registers the environments: n2n_gym/__init__.py)
from agents.names import ALGOS, CONTROLLER_KINDS
from agents.pretrained import PRETRAINED
from n2n_gym.baseline_names import BASELINES
from n2n_gym.cli import (
    OneLineParser,
    fail,
    field_docs,
)
from n2n_gym.fidelity import FIDELITY_PRESETS
from n2n_gym.search_settings import (
    COMPRESS_REWARD_LR,
    PIPELINE_FILE,
    STAGES,
    SearchSettings,
    SettingsRefused,
    resolve_settings,
)

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
    defaults = SearchSettings()
    docs = field_docs(SearchSettings)

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
        help="the whole pipeline: --stages removal,shrink,select,final",
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
    add(
        pipeline,
        "--baselines",
        nargs="?",
        const=",".join(BASELINES),
        default=None,
        metavar="NAMES",
        help="after the final training, train students of the finished student's size with no "
        "search and the same final training, and report them beside it: comma-separated from "
        f"{','.join(BASELINES)} (default: all of them)",
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


def parse_args(argv: list[str] | None = None) -> SearchSettings:
    """The settings of ``argv``, every check done (:func:`resolve_settings`); a refused setting
    exits with one line."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    ns = parser.parse_args(argv)
    if ns.rerun is not None:
        return parse_args(_rerun_argv(parser, ns, argv))
    stages = STAGES if ns.pipeline else _split_stages(parser, ns.stages)
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
        "baselines",
    )
    settings = SearchSettings(
        **{k: v for k, v in vars(ns).items() if k not in skip},
        env_kwargs=_task_flags(parser, ns, _json_object(parser, "--env-kwargs", ns.env_kwargs)),
        hyperparams=_json_object(parser, "--hyperparams", ns.hyperparams),
        stages=stages,
        shrink_kwargs=_json_object(parser, "--shrink-kwargs", ns.shrink_kwargs),
        final=_json_object(parser, "--final-kwargs", ns.final_kwargs),
        baselines=tuple(n.strip() for n in (ns.baselines or "").split(",") if n.strip()),
        argv=argv,
    )
    try:
        return resolve_settings(
            settings,
            compress=ns.compress,
            start_from=ns.start_from,
            given_task=lambda shrink: _given_task_flags(ns, shrink),
        )
    except SettingsRefused as error:
        parser.error(str(error))


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


def _given_task_flags(ns: argparse.Namespace, shrink: bool) -> str:
    """The flags the user typed that set a stage's task, for an error to name (none: empty)."""
    names = [*TASK_FLAGS, "device"]
    flags = [
        f"--{name.replace('_', '-')}"
        for name in names
        if getattr(ns, name, None) not in (None, SearchSettings.device)
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


def _json_object(parser: argparse.ArgumentParser, flag: str, text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        parser.error(f"{flag} is not valid JSON ({error}); it takes an object like '{{\"a\": 1}}'")
    if not isinstance(value, dict):
        parser.error(f"{flag} must be a JSON object, like '{{\"a\": 1}}'")
    return value


def _split_stages(parser: argparse.ArgumentParser, text: str | None) -> tuple[str, ...]:
    """``--stages removal,shrink`` as a tuple (checked with the other settings)."""
    if text is None:
        return ()
    stages = tuple(part.strip() for part in text.split(",") if part.strip())
    if not stages:
        parser.error(f"--stages {text!r}: choose from {','.join(STAGES)}, e.g. removal,shrink")
    return stages


def run_logged(argv: list[str], log_path: str) -> int:
    """Run one search's command line with everything it prints in ``log_path``; returns its exit
    status (scripts that run many searches in worker processes, e.g. bench/tune_hyperparams.py)."""
    from n2n_gym.search_loop import output_to

    with output_to(log_path):
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
        from n2n_gym.search_loop import SearchFailed, run_pipeline, run_search

        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
        console = Console()
        try:
            return (run_pipeline if args.stages else run_search)(args, console)
        except SearchFailed as error:
            return fail(str(error))
    except KeyboardInterrupt as error:  # while starting up, or a final training cut short
        return fail(str(error) or "interrupted", 130)
