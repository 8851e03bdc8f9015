"""Hyperparameters for RL Zoo (``rl_zoo3``), made from ``agents/hyperparams.yml`` (one source).

RL Zoo reads a Python package's ``hyperparams`` dict, one entry per environment id, through
``--conf-file``; each module of this package is that for one of RL Zoo's algorithms::

    python -m rl_zoo3.train --algo ppo --env N2NRemoval-v2 --gym-packages n2n_gym \\
        --conf-file agents.rl_zoo.ppo

Every registered N2N id gets the entry that ``train_agent.py`` would use: the file's settings
for that algorithm and id, plus what follows from the terminal reward (``gamma=1``, rollouts of
whole episodes, see :func:`agents.sb3.sb3_defaults`), ``MultiInputPolicy`` for the ``Dict``
observation (``MultiInputLstmPolicy`` for ``ppo_lstm``; ``ars`` flattens it with RL Zoo's
``env_wrapper`` and takes ``MlpPolicy``) and ``n_timesteps`` for :data:`EPISODES` episodes.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import gymnasium as gym
from stable_baselines3.common.callbacks import BaseCallback

import n2n_gym  # noqa: F401 (registers the environments)
from agents.hyperparams import hyperparams as file_hyperparams
from agents.sb3 import sb3_defaults
from n2n_gym.data import DATASETS
from n2n_gym.teachers import inspect_teacher, zoo_spec
from n2n_gym.teachers.loading import is_bundled

# RL Zoo's algorithm name -> the name in agents/hyperparams.yml and its policy
ZOO_ALGOS: dict[str, tuple[str, str]] = {
    "ppo": ("ppo", "MultiInputPolicy"),
    "a2c": ("a2c", "MultiInputPolicy"),
    "dqn": ("dqn", "MultiInputPolicy"),
    "ppo_lstm": ("recurrent_ppo", "MultiInputLstmPolicy"),
    "trpo": ("trpo", "MultiInputPolicy"),
    "qrdqn": ("qrdqn", "MultiInputPolicy"),
    # ARS's policies take a flat vector: the Dict observation is flattened by a wrapper.
    "ars": ("ars", "MlpPolicy"),
}
# RL Zoo's env_wrapper per algorithm (the others take the Dict observation as it is).
ZOO_WRAPPERS: dict[str, str] = {"ars": "gymnasium.wrappers.FlattenObservation"}
EPISODES = 200  # about train_agent.py's default budget of 100 distinct students, with repeats
ON_POLICY = ("ppo", "a2c", "trpo", "ppo_lstm")  # rollouts of n_steps: whole episodes, or none


class WholeEpisodes(BaseCallback):
    """Refuses rollouts that cut episodes, before the first step.

    An N2N reward arrives at an episode's last step only, so an on-policy rollout must hold whole
    episodes. The entries size ``n_steps`` for the id's default teacher; a teacher given through
    ``--env-kwargs`` may have another number of units, and then this names the ``n_steps`` that
    fits it.
    """

    def _on_training_start(self) -> None:
        n_steps = getattr(self.model, "n_steps", None)
        lengths = set(self.training_env.get_attr("num_steps"))
        cut = sorted(length for length in lengths if n_steps and n_steps % length)
        if cut:
            fits = cut[0] * max(1, round(n_steps / cut[0]))
            raise ValueError(
                f"n_steps={n_steps} cuts this teacher's episodes of {cut[0]} steps (one per "
                f"decision unit; the entry fits the id's default teacher): pass --hyperparams "
                f"n_steps:{fits}"
            )

    def _on_step(self) -> bool:
        return True


def n2n_ids() -> list[str]:
    """Every registered N2N environment id."""
    return sorted(env_id for env_id in gym.registry if env_id.startswith("N2N"))


def episode_length(env_id: str) -> int:
    """Steps per episode (one per decision unit of the id's default teacher), without its weights."""
    kwargs = gym.spec(env_id).kwargs
    dataset = kwargs.get("dataset", "mnist")
    teacher = kwargs.get("teacher", "default")
    if teacher is not None and is_bundled(teacher):  # a bundled teacher, read not loaded
        return inspect_teacher(teacher, dataset=dataset).spec.num_units
    info = DATASETS[dataset]  # a paper id: its zoo architecture, trained by the user
    return zoo_spec(kwargs["teacher_arch"], info.input_shape, info.num_classes).num_units


@cache
def zoo_hyperparams(zoo_algo: str) -> dict[str, dict[str, Any]]:
    """RL Zoo's ``hyperparams`` for ``zoo_algo``: one entry per N2N id."""
    algo, policy = ZOO_ALGOS[zoo_algo]
    table = {}
    for env_id in n2n_ids():
        length = episode_length(env_id)
        entry = {**sb3_defaults(algo, length, n_envs=1), **file_hyperparams(algo, env_id)}
        # YAML and RL Zoo's saved config want lists; RL Zoo turns train_freq back into a tuple
        entry = {k: list(v) if isinstance(v, tuple) else v for k, v in entry.items()}
        table[env_id] = {"policy": policy, "n_timesteps": length * EPISODES, **entry}
        if zoo_algo in ZOO_WRAPPERS:
            table[env_id]["env_wrapper"] = ZOO_WRAPPERS[zoo_algo]
        if zoo_algo in ON_POLICY:
            table[env_id]["callback"] = "agents.rl_zoo.WholeEpisodes"
    return table
