"""The settings of one search or pipeline (:class:`SearchSettings`) and their checks.

:func:`resolve_settings` checks a search's settings before any folder exists or any work starts
and folds a target compression into the shrink stage; :mod:`n2n_gym.search_loop` runs them. The
command line (``n2n-gym train``) parses its flags into these settings and
``n2n_gym.compress()`` builds them directly: both go through the same checks, which name each
setting as its caller spells it (``--budget`` on the command line, ``budget`` in Python).
Importing this module loads no torch; the checks that need a teacher load it when they run.
"""

from __future__ import annotations

import importlib.util
import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from n2n_gym.baseline_names import check_baselines

if TYPE_CHECKING:
    from n2n_gym.task import Task

__all__ = [
    "API_NAMES",
    "CLI_NAMES",
    "COMPRESS_REWARD_LR",
    "PIPELINE_FILE",
    "STAGES",
    "SearchSettings",
    "SettingNames",
    "SettingsRefused",
    "check_stages",
    "compress_factor",
    "resolve_settings",
    "search_task",
    "stage_env",
]

STAGES = ("removal", "shrink", "select", "final")
# Stages that train a chosen student instead of searching (n2n_gym.selection, n2n_gym.finalize).
TRAINING_STAGES = ("select", "final")
# A pipeline's own record at the top of its folder (each stage has its config.json).
PIPELINE_FILE = "pipeline.json"


# --compress: the walkthrough's finding: a shrink stage limited to teacher / N parameters,
# rewarded at this distillation learning rate, which ranks small students better.
COMPRESS_REWARD_LR = 2e-3


class SettingsRefused(ValueError):
    """A setting refused before any work: the message names it as its caller spelled it."""


@dataclass(frozen=True)
class SettingNames:
    """How a setting is named in a refusal: ``flag("init_policy")`` is ``--init-policy`` on the
    command line and ``init_policy`` in Python."""

    prefix: str
    dashes: bool
    renamed: dict[str, str] = field(default_factory=dict)

    def flag(self, name: str) -> str:
        if name in self.renamed:
            return self.renamed[name]
        return self.prefix + (name.replace("_", "-") if self.dashes else name)


CLI_NAMES = SettingNames("--", True, {"final": "--final-kwargs", "envs": "--env"})
API_NAMES = SettingNames("", False, {"env_kwargs": "keyword arguments"})


@dataclass
class SearchSettings:
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
    """torch CPU threads of this search, shared by its processes (default: OMP_NUM_THREADS when
    set, else every core)"""
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
    """save the agent every this many evaluations (at most once every 2 s: a table's evaluations
    take microseconds, a checkpoint milliseconds), and when the search stops"""
    stages: tuple[str, ...] = ()
    """pipeline stages run one after the other into --out (removal, shrink, final)"""
    shrink_kwargs: dict[str, Any] = field(default_factory=dict)
    """pipeline's shrink stage: gymnasium.make arguments that override --env-kwargs there"""
    final: dict[str, Any] = field(default_factory=dict)
    """pipeline's final training: DistillConfig fields that replace evaluate.py's defaults"""
    baselines: tuple[str, ...] = ()
    """pipeline: after the final training, train these students of the finished student's size
    with no search and the same final training, and report them beside it (uniform-width,
    magnitude-pruned, scratch-labels, scratch-distilled; as evaluate.py RUN --baselines)"""
    argv: list[str] = field(default_factory=list)
    """the command line that made the run (config.json keeps it; --rerun replays it)"""


def stage_env(env_id: str, stage: str, names: SettingNames = CLI_NAMES) -> str:
    """The environment of a pipeline stage in the family of ``env_id`` (same teacher and data)."""
    kind = {"removal": "Removal", "shrink": "Shrink"}[stage]
    for family in ("Removal", "Shrink"):
        if env_id.startswith(f"N2N{family}"):
            return env_id.replace(f"N2N{family}", f"N2N{kind}", 1)
    raise ValueError(f"{names.flag('env')} {env_id!r} is not an N2N removal or shrink environment")


def check_stages(stages: tuple[str, ...], names: SettingNames = CLI_NAMES) -> tuple[str, ...]:
    """Pipeline stages in order: known, none twice, the final training last after a search."""
    text = ",".join(stages)
    unknown = [stage for stage in stages if stage not in STAGES]
    if unknown:
        raise SettingsRefused(
            f"{names.flag('stages')} {text!r}: choose from {','.join(STAGES)}, e.g. removal,shrink"
        )
    if "final" in stages[:-1] or stages == ("final",):
        raise SettingsRefused(
            f"{names.flag('stages')}: 'final' trains the last search's best student, so it "
            "comes last"
        )
    if "select" in stages and not set(stages[: stages.index("select")]) - {"final"}:
        raise SettingsRefused(
            f"{names.flag('stages')}: 'select' chooses among a search's students, so a search "
            "stage (removal, shrink) comes before it"
        )
    if len(set(stages)) != len(stages):
        raise SettingsRefused(f"{names.flag('stages')} {text!r} names a stage twice")
    return tuple(stages)


def compress_factor(value: str | float, names: SettingNames = CLI_NAMES) -> float:
    """``10x``, ``"10"`` or ``10.0`` as the factor 10.0; refused unless finite and above 1."""
    text = str(value).strip().lower().removesuffix("x")
    try:
        factor = float(text)
    except ValueError:
        factor = 0.0
    if not 1 < factor < math.inf:  # NaN fails too
        example = "--compress 10x" if names is CLI_NAMES else "compress=10"
        raise SettingsRefused(
            f"{names.flag('compress')} {value!r}: give a finite factor above 1, e.g. {example}"
        )
    return factor


def resolve_settings(
    settings: SearchSettings,
    *,
    compress: str | float | None = None,
    start_from: str | None = None,
    names: SettingNames = CLI_NAMES,
    given_task: Callable[[bool], str] = lambda shrink: "",
) -> SearchSettings:
    """Check ``settings`` and return them ready to run, before any folder exists.

    Args:
        settings: the search's settings (``stages`` for a pipeline).
        compress: a target compression (``10``, ``"10x"``): the shrink stage (a pipeline's, or
            a shrink or joint search) may keep at most teacher / N parameters and is rewarded at
            :data:`COMPRESS_REWARD_LR`, unless its fidelity is given.
        start_from: a stage-1 run directory (or student JSON) a shrink search starts from.
        names: how refusals name the settings (:data:`CLI_NAMES`, :data:`API_NAMES`).
        given_task: what the caller gave that set the task (for a refusal to name; its argument
            says whether the shrink stage's own settings were given too).

    Raises:
        SettingsRefused: a setting cannot work; the message says which and what would.
    """
    import gymnasium as gym

    from agents.names import ALGOS, PRUNING_SEARCHES, SEARCH_NAMES, controller_kind
    from agents.pretrained import policy_path
    from n2n_gym.cli import out_folder_problem

    flag = names.flag
    s = settings
    stages = check_stages(s.stages, names)
    if s.algo not in ALGOS:
        raise SettingsRefused(f"{flag('algo')} {s.algo!r}: choose from {', '.join(ALGOS)}")
    for stage in set(stages) - set(TRAINING_STAGES):
        try:
            stage_env(s.env, stage, names)
        except ValueError as error:
            raise SettingsRefused(
                f"{error}; a pipeline starts from N2NRemoval-v2 or a paper removal id"
            ) from None
    if s.hyperparams:  # the check loads the agent classes (and torch): only when there are some
        _check_hyperparams(s.algo, s.hyperparams, flag)
    controller = s.controller
    if s.init_policy is not None:
        if s.algo in SEARCH_NAMES:
            raise SettingsRefused(
                f"{flag('init_policy')} starts a trained policy; {flag('algo')} {s.algo} has none"
            )
        try:
            policy_path(s.init_policy)
        except ValueError as error:
            raise SettingsRefused(str(error)) from None
    if controller is not None:
        if s.algo != "reinforce":
            raise SettingsRefused(
                f"{flag('controller')} chooses reinforce's controller; {flag('algo')} {s.algo} "
                "has none"
            )
        if s.init_policy:
            raise SettingsRefused(
                f"{flag('controller')} builds a new agent; {flag('init_policy')} loads one with "
                "its own"
            )
        try:
            controller = controller_kind(controller)
        except ValueError as error:
            raise SettingsRefused(f"{flag('controller')}: {error}") from None
    if s.out is not None and (problem := out_folder_problem(s.out)):
        raise SettingsRefused(f"{flag('out')} {s.out}: {problem}")
    for name in ("budget", "n_envs", "checkpoint_every", "threads"):
        if getattr(s, name) is not None and getattr(s, name) < 1:
            raise SettingsRefused(f"{flag(name)} must be at least 1")
    if s.workers < 0:
        raise SettingsRefused(f"{flag('workers')} must be 0 (evaluate in the environments) or more")
    if s.ray_address and importlib.util.find_spec("ray") is None:
        raise SettingsRefused(
            f"{flag('ray_address')} (or RAY_ADDRESS) needs Ray: pip install '.[ray]'"
        )
    if s.env not in gym.registry:
        known = ", ".join(sorted(i for i in gym.registry if i.startswith("N2N")))
        raise SettingsRefused(f"{flag('env')} {s.env!r} is not registered; known: {known}")
    env_kwargs = dict(s.env_kwargs)
    if start_from is not None:
        if stages or not s.env.startswith("N2NShrink"):
            raise SettingsRefused(
                f"{flag('start_from')} continues a removal run with a shrink search: use it with "
                f"{flag('env')} N2NShrink-v2 (a pipeline passes it between its stages by itself)"
            )
        env_kwargs["start_from"] = start_from
    from n2n_gym.fidelity import FINAL_TRAINING
    from n2n_gym.task import TaskError

    try:
        replace(FINAL_TRAINING, **s.final)
    except (TypeError, ValueError) as error:
        raise SettingsRefused(f"{flag('final')}: {error}") from None
    baselines = tuple(s.baselines)
    if baselines:
        if "final" not in stages:
            raise SettingsRefused(
                f"{flag('baselines')} compares the finished student: add {flag('pipeline')} "
                f"(or final to {flag('stages')})"
            )
        try:
            baselines = tuple(check_baselines(baselines))
        except ValueError as error:
            raise SettingsRefused(f"{flag('baselines')}: {error}") from None
    shrink_kwargs = dict(s.shrink_kwargs)
    if compress is not None:
        target = _compress_target(s.env, env_kwargs, stages, compress_factor(compress, names), flag)
        if stages:
            shrink_kwargs = _merge_stage(shrink_kwargs, target, env_kwargs, flag)
        else:
            env_kwargs = _merge_stage(env_kwargs, target, {}, flag)
    if shrink_kwargs and "shrink" not in stages:
        raise SettingsRefused(
            f"{flag('shrink_kwargs')} applies to a pipeline's shrink stage: add "
            f"{flag('pipeline')} (or {flag('stages')} removal,shrink)"
        )
    for stage in stages or ("search",):
        if stage in TRAINING_STAGES:
            continue
        env_id = s.env if stage == "search" else stage_env(s.env, stage, names)
        kwargs = dict(env_kwargs)
        if stage == "shrink":
            kwargs.update(shrink_kwargs)
            kwargs.pop("start_from", None)  # the pipeline passes stage 1's result
        where = flag("shrink_kwargs") if stage == "shrink" and shrink_kwargs else flag("env_kwargs")
        try:
            task, _ = search_task(env_id, kwargs, device=s.device, ray_address=s.ray_address)
        except TaskError as error:
            given = given_task(stage == "shrink" and bool(shrink_kwargs))
            raise SettingsRefused(f"{env_id}{f' ({given})' if given else ''}: {error}") from None
        if s.algo in PRUNING_SEARCHES and task.halving is None:
            raise SettingsRefused(
                f"{flag('algo')} {s.algo} prunes at successive-halving rungs: add halving to "
                f'{where}, e.g. \'{{"halving": {{"eta": 3, "rungs": [0.25, 0.5]}}}}\''
            )
    return replace(
        s,
        stages=stages,
        controller=controller,
        env_kwargs=env_kwargs,
        shrink_kwargs=shrink_kwargs,
        baselines=baselines,
    )


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
    from n2n_gym.envs import task_for

    defaults: dict[str, Any] = {"device": device}
    if run_dir is not None:
        # A per-run cache: a student the agent proposes again costs nothing the second time.
        defaults["cache_path"] = str(run_dir / "rewards.sqlite")
    task, options = task_for(env_id, {**defaults, **env_kwargs})
    if not ray_address:
        task.check_device()
    return task, options


def _compress_target(
    env: str,
    env_kwargs: dict[str, Any],
    stages: tuple[str, ...],
    factor: float,
    flag: Callable[[str], str],
) -> dict[str, Any]:
    """The shrink stage's settings a compression factor stands for: a parameter limit and its
    reward fidelity."""
    if not stages and not env.startswith(("N2NShrink", "N2NJoint")):
        raise SettingsRefused(
            f"{flag('compress')} limits the shrink stage (a limit on removal alone forces a poor "
            f"start): add {flag('pipeline')}, or search a shrink or joint environment"
        )
    from n2n_gym.envs import EnvConfigError, task_for

    try:
        task, _ = task_for(env, env_kwargs)
    except EnvConfigError as error:
        raise SettingsRefused(f"{flag('compress')}: {error}") from None
    return {
        "constraints": {"max_params": int(task.teacher_spec.params / factor)},
        "fidelity": {"lr": COMPRESS_REWARD_LR},
    }


def _merge_stage(
    kwargs: dict[str, Any],
    target: dict[str, Any],
    base: dict[str, Any],
    flag: Callable[[str], str],
) -> dict[str, Any]:
    """A stage's kwargs with the compression's settings over ``base`` (the pipeline's
    env_kwargs, which the stage's own kwargs override): a second parameter limit is refused, a
    fidelity the user chose is kept."""
    merged = dict(kwargs)
    constraints = {**(base.get("constraints") or {}), **(merged.get("constraints") or {})}
    if "max_params" in constraints:
        raise SettingsRefused(
            f"{flag('compress')} and another parameter limit ({flag('max_params')}, "
            f"{flag('env_kwargs')} or {flag('shrink_kwargs')}) both limit parameters: give one"
        )
    merged["constraints"] = {**constraints, **target["constraints"]}
    if merged.get("fidelity") is None and base.get("fidelity") is None:
        merged["fidelity"] = target["fidelity"]
    return merged


def _check_hyperparams(algo: str, settings: dict[str, Any], flag: Callable[[str], str]) -> None:
    """Unknown hyperparameter names fail here, before any folder exists."""
    from agents import SEARCHES, agent_class

    cls = SEARCHES[algo] if algo in SEARCHES else agent_class(algo)
    known = set(inspect.signature(cls.__init__).parameters) - {"self", "env", "policy", "seed"}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise SettingsRefused(
            f"{flag('hyperparams')}: {algo} has no hyperparameter {', '.join(unknown)}; it takes "
            f"{', '.join(sorted(known)) or 'none'}"
        )
