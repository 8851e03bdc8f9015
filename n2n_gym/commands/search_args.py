"""The settings of one search (:class:`Args`), as ``n2n-gym train`` parses them and the search
loop (:mod:`n2n_gym.commands.search_loop`) runs them; plain data, no torch."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["PIPELINE_FILE", "STAGES", "Args", "stage_env"]

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


def stage_env(env_id: str, stage: str) -> str:
    """The environment of a pipeline stage in the family of ``env_id`` (same teacher and data)."""
    kind = {"removal": "Removal", "shrink": "Shrink"}[stage]
    for family in ("Removal", "Shrink"):
        if env_id.startswith(f"N2N{family}"):
            return env_id.replace(f"N2N{family}", f"N2N{kind}", 1)
    raise ValueError(f"--env {env_id!r} is not an N2N removal or shrink environment")
