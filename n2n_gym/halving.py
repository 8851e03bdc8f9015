"""Successive halving of the reward's training budget: stop the clearly losing students early.

A reward costs one distillation. Most students of a search are clearly worse than the best ones
after a fraction of it, and the learning curves of the measured tables show that the order of
students settles early. Successive halving (Jamieson & Talwalkar, 2016) spends the rest of the
budget only on the students that rank in the top ``1/eta`` at each *rung* (a fraction of the
budget); the others stop there and their reward is computed from that partial measurement.

A search proposes one student at a time (each environment evaluates at its terminal step), so
the rule is the asynchronous one (ASHA; Li et al., MLSys 2020): a student continues past a rung
when its reward there ranks in the top ``1/eta`` of every reward measured at that rung so far in
this search, itself included. The first student always continues; later ones need to beat more
of the field as it grows. A student that stops is marked (``halted_at``, in the result and the
environment's ``info``), is never cached as a full-fidelity measurement, and its partial reward
only stands for it within the search that measured it.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["Halving", "HalvingConfig"]


@dataclass(frozen=True)
class HalvingConfig:
    """When students may stop early.

    Attributes:
        eta: a student continues past a rung when it ranks in the top ``1/eta`` there.
        rungs: fractions of the fidelity's training budget (increasing, each in (0, 1)) at which
            a student is measured and may stop; the full budget is the last rung. On a table they
            must be points of its learning curves (the shipped table has 1/4, 1/2 and 3/4).
    """

    eta: float = 3.0
    rungs: tuple[float, ...] = (0.25, 0.5)

    def __post_init__(self) -> None:
        if isinstance(self.eta, bool) or not isinstance(self.eta, int | float) or not self.eta > 1:
            raise ValueError(f"halving eta={self.eta!r} must be a number above 1")
        rungs = tuple(self.rungs) if isinstance(self.rungs, Sequence) else None
        if (
            not rungs
            or any(isinstance(r, bool) or not isinstance(r, int | float) for r in rungs)
            or any(not 0 < r < 1 for r in rungs)
            or list(rungs) != sorted(set(rungs))
        ):
            raise ValueError(
                f"halving rungs={self.rungs!r} must be increasing fractions of the budget in "
                "(0, 1), e.g. [0.25, 0.5]"
            )
        object.__setattr__(self, "rungs", tuple(float(r) for r in rungs))

    def to_dict(self) -> dict[str, Any]:
        return {"eta": self.eta, "rungs": list(self.rungs)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> HalvingConfig:
        unknown = sorted(set(data) - {"eta", "rungs"})
        if unknown:
            raise ValueError(f"halving has no setting {', '.join(unknown)}; it takes eta, rungs")
        return cls(**{k: (tuple(v) if k == "rungs" else v) for k, v in data.items()})


class Halving:
    """The rewards a search measured at each rung, and the rule that reads them (thread-safe)."""

    def __init__(self, config: HalvingConfig) -> None:
        self.config = config
        self._rewards: list[list[float]] = [[] for _ in config.rungs]
        self._lock = threading.Lock()

    def keep(self, rung: int, reward: float) -> bool:
        """Record ``reward`` at ``rung`` (an index of ``config.rungs``); whether to continue."""
        with self._lock:
            self._rewards[rung].append(reward)
            return self._in_top(rung, reward)

    def still_out(self, rung: int, reward: float) -> bool:
        """Whether a student stopped at ``rung`` with ``reward`` would still be stopped, against
        the field as it is now (ASHA promotes a stopped one once enough others rank below it)."""
        with self._lock:
            return not self._in_top(rung, reward)

    def _in_top(self, rung: int, reward: float) -> bool:
        field = self._rewards[rung]
        better = sum(other > reward for other in field)
        return better < math.ceil(len(field) / self.config.eta)

    def measured(self, rung: int) -> int:
        """Rewards recorded at ``rung`` so far."""
        with self._lock:
            return len(self._rewards[rung])
