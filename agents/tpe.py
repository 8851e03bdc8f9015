"""TPE (tree-structured Parzen estimator) from Optuna, asked for one student per episode.

Each episode is one Optuna trial: ``study.ask()``, one categorical parameter per decision step
(the step's allowed actions), ``study.tell()`` with the terminal reward. Optuna is an optional
extra: ``pip install 'n2n-gym[tpe]'``.
"""

from __future__ import annotations

from stable_baselines3.common.vec_env import VecEnv

from agents.episode_search import Plan, PlannedSearch


def _optuna():
    try:
        import optuna
    except ImportError:
        raise ImportError("--algo tpe needs Optuna: pip install 'n2n-gym[tpe]'") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


class TPESearch(PlannedSearch):
    """Optuna's TPE sampler over the per-step choices of an N2N environment.

    Args:
        env: the vector environment.
        n_startup_trials: random students before the model takes over.
        multivariate: model the decisions jointly (they interact: removing one unit changes what
            the next one is worth), not one by one.
        seed, tensorboard_log: as for every search.
    """

    def __init__(
        self,
        env: VecEnv,
        n_startup_trials: int = 10,
        multivariate: bool = True,
        seed: int = 0,
        tensorboard_log: str | None = None,
    ) -> None:
        super().__init__(env, seed, tensorboard_log)
        optuna = _optuna()
        self._distributions = {
            f"step{step}": optuna.distributions.CategoricalDistribution([int(a) for a in choices])
            for step, choices in enumerate(self.choices)
        }
        # Several students can be in flight (n_envs > 1): the constant liar keeps them apart.
        sampler = optuna.samplers.TPESampler(
            seed=seed,
            n_startup_trials=n_startup_trials,
            multivariate=multivariate,
            constant_liar=True,
        )
        self.study = optuna.create_study(direction="maximize", sampler=sampler)
        self._trials: dict[Plan, list] = {}

    def propose(self) -> Plan:
        trial = self.study.ask(self._distributions)
        plan = tuple(int(trial.params[f"step{step}"]) for step in range(len(self.choices)))
        self._trials.setdefault(plan, []).append(trial)
        return plan

    def observe(self, plan: Plan, reward: float) -> None:
        pending = self._trials.get(plan)
        if pending:
            self.study.tell(pending.pop(0), reward)
            return
        # A replayed history (resume): the finished trial is added as it was.
        optuna = _optuna()
        params = {f"step{step}": action for step, action in enumerate(plan)}
        self.study.add_trial(
            optuna.trial.create_trial(
                params=params, distributions=self._distributions, value=reward
            )
        )
