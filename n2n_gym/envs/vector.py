"""A vector environment whose sub-environments step in threads, so their evaluations overlap.

With an evaluation back-end (:mod:`n2n_gym.backends`) shared by every sub-environment, the
terminal step of an episode blocks on a worker while this process sits idle. Stepping the
sub-environments in threads lets all of them wait at once: with equal episode lengths, the
``n_envs`` episodes of a batch end on the same step and their students are evaluated concurrently.
Everything else about SB3's ``DummyVecEnv`` (one process, auto-reset, ``terminal_observation``)
stays the same, so every SB3 agent and :class:`~agents.reinforce.Reinforce` accept it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from copy import deepcopy

import gymnasium as gym
import numpy as np
from stable_baselines3.common.vec_env import DummyVecEnv
from stable_baselines3.common.vec_env.base_vec_env import VecEnvStepReturn

__all__ = ["ThreadedVecEnv"]


class ThreadedVecEnv(DummyVecEnv):
    """``DummyVecEnv`` that steps its environments concurrently in a thread pool.

    Only worthwhile when a step blocks without holding the GIL, as a step that waits on an
    evaluation worker does; the environments must not share unguarded state (a back-end is
    thread-safe, an in-process evaluator is not).

    Args:
        env_fns: functions that make the environments.
        on_close: called once after the environments are closed, e.g. the back-end's ``close``.
    """

    def __init__(
        self,
        env_fns: Sequence[Callable[[], gym.Env]],
        on_close: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(list(env_fns))
        self._threads = ThreadPoolExecutor(self.num_envs, thread_name_prefix="vec-env")
        self._on_close = on_close

    def step_wait(self) -> VecEnvStepReturn:
        steps = list(
            self._threads.map(
                lambda index: self.envs[index].step(self.actions[index]), range(self.num_envs)
            )
        )
        # Book-keeping as in DummyVecEnv.step_wait, in order, after every step has finished.
        for index, (obs, reward, terminated, truncated, info) in enumerate(steps):
            self.buf_rews[index] = reward
            self.buf_infos[index] = info
            self.buf_dones[index] = terminated or truncated
            info["TimeLimit.truncated"] = truncated and not terminated
            if self.buf_dones[index]:
                info["terminal_observation"] = obs
                obs, self.reset_infos[index] = self.envs[index].reset()
            self._save_obs(index, obs)
        return (
            self._obs_from_buf(),
            np.copy(self.buf_rews),
            np.copy(self.buf_dones),
            deepcopy(self.buf_infos),
        )

    def close(self) -> None:
        self._threads.shutdown(wait=True)
        super().close()
        if self._on_close is not None:
            on_close, self._on_close = self._on_close, None
            on_close()
