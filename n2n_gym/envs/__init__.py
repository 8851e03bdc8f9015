"""The N2N compression environments."""

from n2n_gym.envs.base import CompressionEnv, EnvConfigError
from n2n_gym.envs.removal import LayerRemovalEnv
from n2n_gym.envs.shrink import LayerShrinkEnv

__all__ = ["CompressionEnv", "EnvConfigError", "LayerRemovalEnv", "LayerShrinkEnv"]
