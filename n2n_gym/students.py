"""A trained student on disk: its description and weights in one file, reloadable with one call.

The file is a plain ``torch.save`` dictionary of tensors, numbers and strings — no pickled code —
so :func:`load_student` reads it with ``weights_only=True`` and rebuilds the network from the
description alone (the teacher's weights are not needed)::

    from n2n_gym.students import load_student
    student = load_student("runs/pipeline/student.pt")
    logits = student.module(images)           # a torch.nn.Module in eval mode
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from n2n_gym.arch import InvalidArchitecture, StudentDescription
from n2n_gym.atomic import atomic_write
from n2n_gym.surgery import SpecNetwork, build_module

__all__ = ["STUDENT_FORMAT", "SavedStudent", "StudentFileError", "load_student", "save_student"]

STUDENT_FORMAT = 1


class StudentFileError(ValueError):
    """A student file that cannot be read; the message names the file and the fix."""


@dataclass
class SavedStudent:
    """A student network with what it is.

    Attributes:
        module: the network, in eval mode on the CPU.
        description: the teacher plus per-unit width ratios it was built from.
        metadata: what the saver recorded (accuracies, how it was trained, ...).
    """

    module: SpecNetwork
    description: StudentDescription
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def params(self) -> int:
        return self.description.plan().spec.params


def save_student(
    path: str | os.PathLike[str],
    module: torch.nn.Module,
    description: StudentDescription,
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Write ``module``'s weights and ``description`` to ``path`` atomically.

    Args:
        path: the file to write (its folder is created).
        module: the trained student, built from ``description``.
        description: what the student is.
        metadata: JSON-like facts to keep with it (numbers, strings, lists, dicts).

    Returns:
        The path written.
    """
    path = Path(path)
    state = {
        name: tensor.detach().cpu().contiguous() for name, tensor in module.state_dict().items()
    }
    content = {
        "format": STUDENT_FORMAT,
        "description": description.to_dict(),
        "state_dict": state,
        "metadata": dict(metadata or {}),
    }
    atomic_write(path, lambda tmp: torch.save(content, tmp))
    return path


def load_student(path: str | os.PathLike[str]) -> SavedStudent:
    """Reload a student written by :func:`save_student` (or ``evaluate.py``).

    Raises:
        StudentFileError: the file is missing, not a student file, or its weights do not fit its
            description.
    """
    path = Path(path)
    if path.is_dir():
        raise StudentFileError(
            f"{path} is a folder; pass the student file in it (e.g. {path / 'student.pt'})"
        )
    if not path.exists():
        raise StudentFileError(
            f"student file {path} does not exist; run `python evaluate.py RUN_DIR` to make one"
        )
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a damaged file
        raise StudentFileError(
            f"{path} is not a readable student file ({type(error).__name__}); "
            "write it again with save_student or evaluate.py"
        ) from None
    if not isinstance(content, dict) or content.get("format") != STUDENT_FORMAT:
        raise StudentFileError(
            f"{path} is not a student file of format {STUDENT_FORMAT}; "
            "write it again with save_student or evaluate.py"
        )
    try:
        description = StudentDescription.from_dict(content["description"])
        module = build_module(description.plan().spec)
        module.load_state_dict(content["state_dict"])
    except (InvalidArchitecture, KeyError, RuntimeError) as error:
        raise StudentFileError(
            f"{path}: the weights do not fit the stored description ({error})"
        ) from None
    return SavedStudent(module.eval(), description, content.get("metadata", {}))
