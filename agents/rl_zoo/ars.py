"""RL Zoo hyperparameters for ars on every N2N id (see agents.rl_zoo)."""

from agents.rl_zoo import zoo_hyperparams

hyperparams = zoo_hyperparams("ars")
