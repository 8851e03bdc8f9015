"""A grid of students: a finite set of choices per decision unit, enumerated in a fixed order.

A tabular benchmark measures every student of a grid once (:mod:`n2n_gym.tabulate`); the table
envs offer exactly the grid's choices, so no search can propose a student the table lacks.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from n2n_gym.arch import NetworkSpec, StudentDescription, normalise_ratios, unit_rules

__all__ = ["Grid", "joint_grid"]


@dataclass(frozen=True)
class Grid:
    """The width ratios each unit of a teacher may take (0 removes it); students are the product.

    Attributes:
        teacher: the teacher's architecture.
        choices: per decision unit, the ratios it may take, ascending.
    """

    teacher: NetworkSpec
    choices: tuple[tuple[float, ...], ...]

    def __post_init__(self) -> None:
        choices = tuple(
            tuple(sorted(set(normalise_ratios(unit, len(unit))))) for unit in self.choices
        )
        if len(choices) != self.teacher.num_units or any(not unit for unit in choices):
            raise ValueError(
                f"a grid needs a non-empty list of ratios for each of the teacher's "
                f"{self.teacher.num_units} units, got {len(choices)}"
            )
        object.__setattr__(self, "choices", choices)

    def __len__(self) -> int:
        size = 1
        for unit in self.choices:
            size *= len(unit)
        return size

    def students(self) -> Iterator[StudentDescription]:
        """Every combination, in a fixed order (the first unit's choice varies slowest)."""
        for ratios in itertools.product(*self.choices):
            yield StudentDescription(self.teacher, ratios)

    def sample(self, count: int, seed: int = 0, spread: bool = True) -> list[StudentDescription]:
        """``count`` distinct students spread over the grid (all of them if it has fewer).

        Uniform draws crowd the middle of a large grid (most students of 3^14 keep about a third
        of the units at each width), where a surrogate then learns nothing about the extremes
        that searches head for. So every second student is drawn with its own random mix of
        the choices (Dirichlet weights over each unit's choice positions: mostly removed, mostly
        halved, mostly whole, and everything between), the others uniformly; ``spread=False``
        draws them all uniformly (what a random search meets).
        """
        if count >= len(self):
            return list(self.students())
        rng = random.Random(seed)
        positions = max(len(unit) for unit in self.choices)
        seen: set[tuple[float, ...]] = set()
        chosen = []
        while len(chosen) < count:
            if spread and len(chosen) % 2:
                weights = [rng.expovariate(1.0) for _ in range(positions)]  # Dirichlet(1, ...)
            else:
                weights = [1.0] * positions
            ratios = tuple(
                unit[0] if len(unit) == 1 else rng.choices(unit, weights[: len(unit)])[0]
                for unit in self.choices
            )
            if ratios not in seen:
                seen.add(ratios)
                chosen.append(StudentDescription(self.teacher, ratios))
        return chosen

    def contains(self, ratios: Sequence[float]) -> bool:
        """Whether every ratio is one of its unit's choices."""
        ratios = normalise_ratios(ratios, self.teacher.num_units)
        return all(r in unit for r, unit in zip(ratios, self.choices, strict=True))

    def to_dict(self) -> dict[str, Any]:
        return {"choices": [list(unit) for unit in self.choices]}

    @classmethod
    def from_dict(cls, teacher: NetworkSpec, data: dict[str, Any]) -> Grid:
        return cls(teacher, tuple(tuple(unit) for unit in data["choices"]))


def joint_grid(
    teacher: NetworkSpec, ratios: Sequence[float] = (0.5, 1.0), shrink_fixed: bool = False
) -> Grid:
    """Remove, or keep at one of ``ratios``, every unit that may be removed.

    Units that may not be removed (the stem, the head) stay whole, unless ``shrink_fixed`` lets
    the shrinkable ones among them take ``ratios`` too.
    """
    ratios = tuple(float(r) for r in ratios)
    if 1.0 not in ratios or any(not 0.0 < r <= 1.0 for r in ratios):
        raise ValueError(f"ratios={list(ratios)}: give values in (0, 1] that include 1.0")
    choices = []
    for rule in unit_rules(teacher):
        if rule.removable:
            choices.append((0.0, *(ratios if rule.shrinkable else (1.0,))))
        elif rule.shrinkable and shrink_fixed:
            choices.append(ratios)
        else:
            choices.append((1.0,))
    return Grid(teacher, tuple(choices))
