"""RL Zoo hyperparameters for ppo_lstm on every N2N id (see agents.rl_zoo)."""

from agents.rl_zoo import zoo_hyperparams

hyperparams = zoo_hyperparams("ppo_lstm")
