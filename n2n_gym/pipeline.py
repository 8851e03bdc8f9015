"""One call for a user's model: ``n2n_gym.compress(model, "mnist", compress=10)``.

It runs what ``n2n-gym train --pipeline --compress 10x`` runs — layer removal, then shrinking
under a parameter limit of teacher / N, then the final training and the test report — into one
run folder, and returns the finished student and its report. The model is saved into that folder
first, as a whole pickled module (it is read back in this process; the search then works on
its ``torch.fx`` description, see the README's "Your own network").
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from n2n_gym.students import SavedStudent, load_student

__all__ = ["compress"]


def compress(
    model: nn.Module | str | os.PathLike[str],
    data: str | os.PathLike[str] = "mnist",
    *,
    compress: float = 10.0,
    out: str | os.PathLike[str] = "runs/compress",
    budget: int = 100,
    algo: str = "reinforce",
    seed: int = 0,
    final: dict[str, Any] | None = None,
    resume: bool = False,
    **env_kwargs: Any,
) -> tuple[SavedStudent, dict[str, Any]]:
    """Compress a trained network with the two-stage N2N pipeline.

    Args:
        model: the trained teacher: an ``nn.Module`` (saved into ``out``), or a teacher file with
            ``teacher_arch=`` in ``env_kwargs`` for a state dict.
        data: a data set name (``"mnist"``, ``"cifar10"`` ...) or an image folder's root.
        compress: the target compression: the shrink stage may keep at most 1/``compress`` of the
            teacher's parameters.
        out: the run folder (stages, final student ``student.pt``, ``report.json``).
        budget: distinct students per search stage.
        algo: the search algorithm (``n2n-gym train --algo``).
        seed: seeds the searches.
        final: DistillConfig fields for the final training (``--final-kwargs``).
        resume: continue a stopped run in ``out``.
        env_kwargs: further ``gymnasium.make`` arguments for both stages (``data_dir``,
            ``fidelity``, ``device``, ``evaluator`` ...).

    Returns:
        The finished student (``.module`` is a plain ``nn.Module``) and the test-set report.

    Raises:
        ValueError: a setting was refused (the message is the command line's one-line error).
        RuntimeError: a stage failed.
    """
    from n2n_gym.commands import train

    out = Path(out)
    kwargs = dict(env_kwargs)
    if isinstance(model, nn.Module):
        out.mkdir(parents=True, exist_ok=True)
        teacher = out / "teacher.pt"
        torch.save(model, teacher)
        kwargs.update(teacher=str(teacher), allow_pickle=True)
    else:
        kwargs["teacher"] = os.fspath(model)
    if Path(data).is_dir():
        kwargs.update(dataset="imagefolder", data_dir=os.fspath(data))
    else:
        kwargs["dataset"] = os.fspath(data)
    argv = [
        "--pipeline",
        "--algo",
        algo,
        "--budget",
        str(budget),
        "--seed",
        str(seed),
        "--out",
        str(out),
        "--compress",
        f"{compress}x",
        "--env-kwargs",
        json.dumps(kwargs),
        "--final-kwargs",
        json.dumps(final or {}),
        *(["--resume"] if resume else []),
    ]
    try:
        status = train.main(argv)
    except SystemExit as stop:  # a refused setting: argparse's one line is already printed
        raise ValueError(f"n2n_gym.compress: settings refused ({stop.code}); see above") from None
    if status != 0:
        raise RuntimeError(f"n2n_gym.compress: the pipeline stopped with status {status}")
    report = json.loads((out / "report.json").read_text())
    return load_student(out / "student.pt"), report
