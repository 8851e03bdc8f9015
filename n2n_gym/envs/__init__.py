"""The N2N compression environments."""

from n2n_gym.envs.base import EPISODES_PER_UPDATE, CompressionEnv, EnvConfigError, task_for
from n2n_gym.envs.joint import LayerJointEnv
from n2n_gym.envs.removal import LayerRemovalEnv
from n2n_gym.envs.shrink import LayerShrinkEnv

__all__ = [
    "EPISODES_PER_UPDATE",
    "CompressionEnv",
    "EnvConfigError",
    "LayerJointEnv",
    "LayerRemovalEnv",
    "LayerShrinkEnv",
    "task_for",
]
