"""TPE (tree-structured Parzen estimator) from Optuna, asked for one student per episode.

Each episode is one Optuna trial: ``study.ask()``, one categorical parameter per decision step
(the step's allowed actions), ``study.tell()`` with the terminal reward. ``tpe-hyperband`` adds
Optuna's Hyperband pruner over the task's successive-halving rungs: at each rung the trial reports
the partial reward and the pruner, not the halving rule, decides whether the student trains on
(Li et al., 2018, as Optuna implements it), a multi-fidelity baseline. Optuna is an optional
extra: ``pip install 'n2n-gym[tpe]'``.
"""

from __future__ import annotations

from typing import Any

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
        pruner: Any = None,
    ) -> None:
        super().__init__(env, seed, tensorboard_log)
        self.n_startup_trials = n_startup_trials
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
        self.study = optuna.create_study(direction="maximize", sampler=sampler, pruner=pruner)
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


class TPEHyperbandSearch(TPESearch):
    """TPE with Optuna's Hyperband pruner deciding at the task's successive-halving rungs.

    Args:
        env: the vector environment; its task must have ``halving`` (the rungs; its ``eta`` is
            the pruner's reduction factor).
        n_startup_trials, multivariate, seed, tensorboard_log: as for :class:`TPESearch`.

    Raises:
        ValueError: the task has no halving.
    """

    def __init__(
        self,
        env: VecEnv,
        n_startup_trials: int = 10,
        multivariate: bool = True,
        seed: int = 0,
        tensorboard_log: str | None = None,
    ) -> None:
        halving = env.get_attr("task")[0].halving
        if halving is None:
            raise ValueError(
                "tpe-hyperband prunes at the task's halving rungs: pass halving in the env "
                'kwargs, e.g. --env-kwargs \'{"halving": {"eta": 3, "rungs": [0.25, 0.5]}}\''
            )
        optuna = _optuna()
        pruner = optuna.pruners.HyperbandPruner(
            min_resource=1,
            max_resource=len(halving.rungs) + 1,
            reduction_factor=max(2, round(halving.eta)),
        )
        super().__init__(env, n_startup_trials, multivariate, seed, tensorboard_log, pruner)
        self._pruned: set[int] = set()

    def started(self, index: int, plan: Plan) -> None:
        trial = self._trials[plan][-1]

        def gate(rung: int, reward: float) -> bool:
            trial.report(reward, step=rung + 1)
            if trial.should_prune():
                self._pruned.add(trial.number)
                return False
            return True

        self.env.env_method("set_halving_gate", gate, indices=[index])

    def finished(self, plan: Plan, reward: float, info: dict[str, Any]) -> None:
        pending = self._trials.get(plan)
        if pending and pending[0].number in self._pruned:
            # Told as pruned: TPE ranks it by the last reward it reported, as Optuna intends.
            self.study.tell(pending.pop(0), state=_optuna().trial.TrialState.PRUNED)
            return
        self.observe(plan, reward)
