"""Searches that propose whole students rather than train a policy: the shared driving loop.

Random search, regularized evolution and TPE answer the Stable-Baselines3 calls a search script
makes (``learn`` with callbacks, ``predict``, ``get_env``, ``logger``, ``save``), so
``train_agent.py`` drives them like any agent. The environments' allowed actions do not change
within an episode (``allowed_actions``: one row per step), so a search can plan a whole episode —
one student — at its start and learn from its terminal reward at its end.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import Logger, configure
from stable_baselines3.common.vec_env import VecEnv

Plan = tuple[int, ...]
STATE_FILE = "search.json"


class EpisodeSearch:
    """Plays episodes on a vector environment; subclasses choose the actions.

    Args:
        env: the search's vector environment (its environments expose ``allowed_actions``).
        seed: seeds the search's own random choices and the environments.
        tensorboard_log: TensorBoard folder of the run (``logger`` writes there).
    """

    def __init__(self, env: VecEnv, seed: int = 0, tensorboard_log: str | None = None) -> None:
        self.env = env
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self.num_timesteps = 0
        self.logger: Logger = configure(
            tensorboard_log, ["tensorboard"] if tensorboard_log else [""]
        )
        self.env.seed(seed)
        self._obs = None

    def get_env(self) -> VecEnv:
        return self.env

    def predict(self, observation=None, state=None, episode_start=None, deterministic=False):
        raise NotImplementedError

    def _episode_ended(self, index: int, reward: float, info: dict[str, Any]) -> None:
        """Environment ``index`` finished an episode with ``reward`` (its student is scored)."""

    def learn(self, total_timesteps: int, callback: BaseCallback | None = None) -> EpisodeSearch:
        """Play until ``total_timesteps`` environment steps, or until ``callback.on_step()`` is False."""
        if callback is not None:
            callback.init_callback(self)  # type: ignore[arg-type]
            callback.on_training_start(locals(), globals())
        self._obs = self.env.reset()
        while self.num_timesteps < total_timesteps:
            actions, _ = self.predict(self._obs)
            self._obs, rewards, dones, infos = self.env.step(actions)
            self.num_timesteps += self.env.num_envs
            for index in np.flatnonzero(dones):
                self._episode_ended(int(index), float(rewards[index]), infos[index])
            if callback is not None:
                callback.update_locals(locals())
                if not callback.on_step():
                    break
        if callback is not None:
            callback.on_training_end()
        return self


class PlannedSearch(EpisodeSearch):
    """An :class:`EpisodeSearch` that picks each episode's student (a plan of actions) up front.

    Subclasses implement :meth:`propose` (the next plan) and :meth:`observe` (a plan's reward).
    ``history`` keeps every (plan, reward) pair, which is all the state a subclass needs: ``save``
    writes it and :meth:`restore` replays it, so a resumed search continues where it stopped.
    """

    def __init__(self, env: VecEnv, seed: int = 0, tensorboard_log: str | None = None) -> None:
        super().__init__(env, seed, tensorboard_log)
        tables = env.get_attr("allowed_actions")
        self.allowed = np.asarray(tables[0], dtype=bool)
        self.choices: list[np.ndarray] = [np.flatnonzero(row) for row in self.allowed]
        self.history: list[tuple[Plan, float]] = []
        self._plans: list[Plan | None] = [None] * env.num_envs
        self._steps = [0] * env.num_envs

    # ---- what a subclass decides ----------------------------------------------------------------
    def propose(self) -> Plan:
        raise NotImplementedError

    def observe(self, plan: Plan, reward: float) -> None:
        """Learn from one finished student (called once per episode, in order of completion)."""

    def started(self, index: int, plan: Plan) -> None:
        """Environment ``index`` starts playing ``plan`` (e.g. to attach a halving gate)."""

    def finished(self, plan: Plan, reward: float, info: dict[str, Any]) -> None:
        """A live episode of ``plan`` ended (``info``: its terminal info); by default
        :meth:`observe`. Replayed histories call :meth:`observe` only."""
        self.observe(plan, reward)

    # ---- shared helpers -------------------------------------------------------------------------
    def random_plan(self) -> Plan:
        return tuple(int(self.rng.choice(choices)) for choices in self.choices)

    def mutate(self, plan: Plan) -> Plan:
        """``plan`` with one decision that has alternatives changed to another allowed action."""
        open_steps = [step for step, choices in enumerate(self.choices) if len(choices) > 1]
        if not open_steps:
            return plan
        step = int(self.rng.choice(open_steps))
        others = [int(a) for a in self.choices[step] if a != plan[step]]
        child = list(plan)
        child[step] = int(self.rng.choice(others))
        return tuple(child)

    # ---- driving the environments ---------------------------------------------------------------
    def predict(self, observation=None, state=None, episode_start=None, deterministic=False):
        actions = []
        for index in range(self.env.num_envs):
            if self._plans[index] is None:
                self._plans[index], self._steps[index] = self.propose(), 0
                self.started(index, self._plans[index])
            actions.append(self._plans[index][self._steps[index]])
            self._steps[index] += 1
        return np.array(actions), None

    def _episode_ended(self, index: int, reward: float, info: dict[str, Any]) -> None:
        plan = self._plans[index]
        self._plans[index] = None
        if plan is None:
            return
        self.history.append((plan, reward))
        self.finished(plan, reward, info)

    # ---- saving and resuming --------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        """Write the search's history (plans and rewards) as JSON inside a zip file."""
        state = {"class": type(self).__name__, "seed": self.seed, "history": self.history}
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr(STATE_FILE, json.dumps(state))

    def restore(self, path: str | Path) -> None:
        """Replay a saved history, so the search continues as if it had not stopped."""
        with zipfile.ZipFile(path) as archive:
            state: dict[str, Any] = json.loads(archive.read(STATE_FILE))
        if state["class"] != type(self).__name__:
            raise ValueError(f"{path} holds a {state['class']} search, not {type(self).__name__}")
        for plan, reward in state["history"]:
            self.history.append((tuple(plan), float(reward)))
            self.observe(tuple(plan), float(reward))
        # A fresh random stream per resume point: the replayed search does not redraw its past.
        self.rng = np.random.default_rng([self.seed, len(self.history)])
