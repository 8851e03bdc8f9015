"""The error every teacher problem a user can fix is reported with, and how it names arguments.

The same check runs behind ``load_teacher(arch=...)``, ``gymnasium.make(teacher_arch=...)`` and
command lines: each boundary says once how its caller spells the arguments
(:func:`argument_names`), and every message names the one the caller actually typed
(:func:`argument`).
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager
from types import MappingProxyType

__all__ = ["TeacherError", "argument", "argument_names"]

_NAMES: contextvars.ContextVar[MappingProxyType[str, str]] = contextvars.ContextVar(
    "teacher_argument_names", default=MappingProxyType({})
)


class TeacherError(ValueError):
    """A teacher problem the user can fix: unknown architecture, missing or unsuitable file, bad settings."""


@contextmanager
def argument_names(**names: str) -> Iterator[None]:
    """Within the block, messages name ``load_teacher``'s arguments as the caller spells them.

    Example: ``argument_names(arch="teacher_arch")`` (keyword arguments); a name that starts with
    ``--`` is a command line's flag. An enclosing block's names
    win: the outermost boundary is the one the user typed into.
    """
    token = _NAMES.set(MappingProxyType({**names, **_NAMES.get()}))
    try:
        yield
    finally:
        _NAMES.reset(token)


def argument(name: str, value: str | None = None) -> str:
    """How the caller passes ``load_teacher``'s argument ``name`` (with ``value``): ``arch=NAME``,
    ``teacher_arch=NAME`` or a flag and its value."""
    spelled = _NAMES.get().get(name, name)
    if value is None:
        return spelled
    return f"{spelled} {value}" if spelled.startswith("--") else f"{spelled}={value}"
