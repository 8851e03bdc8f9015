"""The error every teacher problem a user can fix is reported with."""

from __future__ import annotations

__all__ = ["TeacherError"]


class TeacherError(ValueError):
    """A teacher problem the user can fix: unknown architecture, missing or unsuitable file, bad settings."""
