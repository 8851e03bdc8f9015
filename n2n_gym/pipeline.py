"""One call for a user's model: ``n2n_gym.compress(model, "mnist", compress=10)``.

It runs what ``n2n-gym train --pipeline --compress 10x`` runs — layer removal, then shrinking
under a parameter limit of teacher / N, then the selection (the best few students and the teacher
at uniform width, trained briefly), then the final training and the test report — into one
run folder, and returns the finished student and its report. The model is saved into that folder
first as its ``torch.fx`` network description and state dict (so ``n2n-gym evaluate`` reopens the
run without the model's class; see "Compressing your own network" in the docs).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from n2n_gym.data import canonical_dataset
from n2n_gym.students import SavedStudent, load_student
from n2n_gym.teachers.errors import TeacherError

__all__ = ["compress"]


def _save_description(model: nn.Module, dataset: str, path: Path) -> None:
    """Save ``model`` as a teacher checkpoint of its network description and state dict.

    Raises:
        KeyError: ``dataset`` is not a registered data set (its input shape is unknown here).
        TeacherError: the model cannot be described (``torch.fx`` cannot trace it, or it does
            not fit the data set's images).
    """
    from n2n_gym.data import DATASETS
    from n2n_gym.teachers import CHECKPOINT_FORMAT, load_teacher

    DATASETS[dataset]
    with tempfile.TemporaryDirectory() as folder:
        weights = Path(folder) / "weights.pt"
        torch.save(model.state_dict(), weights)
        teacher = load_teacher(weights, module=model, dataset=dataset)
    content = {
        "format": CHECKPOINT_FORMAT,
        "arch": "custom",
        "dataset": dataset,
        "spec": teacher.spec.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in teacher.module.state_dict().items()},
        "complete": True,
    }
    torch.save(content, path)


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
    threads: int | None = None,
    workers: int = 0,
    baselines: Sequence[str] = (),
    **env_kwargs: Any,
) -> tuple[SavedStudent, dict[str, Any]]:
    """Compress a trained network with the N2N pipeline (both stages, the selection, the final
    training).

    Args:
        model: the trained teacher: an ``nn.Module`` (saved into ``out`` as its network
            description and state dict, so the run reopens without its class; for an image
            folder, as the pickled module), or a teacher file with ``teacher_arch=`` in
            ``env_kwargs`` for a state dict.
        data: a data set name (``"mnist"``, ``"cifar10"`` ...) or an image folder's root.
        compress: the target compression: the shrink stage may keep at most 1/``compress`` of the
            teacher's parameters.
        out: the run folder (stages, final student ``student.pt``, ``report.json``).
        budget: distinct students per search stage.
        algo: the search algorithm (``n2n-gym train --algo``).
        seed: seeds the searches.
        final: DistillConfig fields for the final training (``--final-kwargs``).
        resume: continue a stopped run in ``out``.
        threads: torch CPU threads (default: ``OMP_NUM_THREADS`` when set, else every core); on a machine shared with other jobs,
            give each its share (``threads=1``).
        workers: evaluation worker processes (``n2n-gym train --workers``).
        baselines: after the final training, train these students of the finished student's
            size with no search and the same final training (``uniform-width``,
            ``magnitude-pruned``, ``scratch-labels``, ``scratch-distilled``); the report holds
            their figures under ``"baselines"`` (``n2n-gym train --baselines``).
        env_kwargs: further ``gymnasium.make`` arguments for both stages (``data_dir``,
            ``fidelity``, ``device``, ``evaluator`` ...).

    Returns:
        The finished student (``.module`` is a plain ``nn.Module``) and the test-set report.

    Raises:
        ValueError: a setting was refused, in this function's terms (nothing is printed, and
            nothing is left in ``out``).
        RuntimeError: a stage failed.
    """
    from rich.console import Console

    from n2n_gym.search_loop import run_pipeline
    from n2n_gym.search_settings import (
        API_NAMES,
        PIPELINE_FILE,
        STAGES,
        SearchSettings,
        SettingsRefused,
        resolve_settings,
    )

    out = Path(out)
    if (out / PIPELINE_FILE).exists() and not resume:
        raise ValueError(
            f"n2n_gym.compress: out={str(out)!r} already holds a run: pass resume=True to "
            "continue it, or another out"
        )
    created = not out.exists()
    kwargs = dict(env_kwargs)
    saved: Path | None = None
    if isinstance(model, nn.Module):
        out.mkdir(parents=True, exist_ok=True)
        saved = out / "teacher.pt"
        try:
            # Its description and weights: the run reopens without the model's class.
            _save_description(model, canonical_dataset(os.fspath(data)), saved)
        except (KeyError, TeacherError, TypeError):
            # An image folder (its image size is the task's to resolve) or a data set the
            # checks below will name: the module itself, read back in this process.
            torch.save(model, saved)
            kwargs["allow_pickle"] = True
        kwargs["teacher"] = str(saved)
    else:
        kwargs["teacher"] = os.fspath(model)
    if Path(data).is_dir():
        kwargs.update(dataset="imagefolder", data_dir=os.fspath(data))
    else:
        kwargs["dataset"] = os.fspath(data)
    names = tuple(baselines.split(",") if isinstance(baselines, str) else baselines)
    settings = SearchSettings(
        algo=str(algo),
        budget=budget,
        seed=seed,
        out=str(out),
        workers=workers,
        threads=threads,
        resume=resume,
        env_kwargs=kwargs,
        stages=STAGES,
        final=dict(final or {}),
        baselines=names,
        # The command that does the same, recorded for `n2n-gym train --rerun RUN_DIR`.
        argv=[
            "--pipeline",
            *("--algo", str(algo), "--budget", str(budget), "--seed", str(seed)),
            *("--out", str(out), "--compress", f"{compress}x", "--workers", str(workers)),
            *("--env-kwargs", json.dumps(kwargs), "--final-kwargs", json.dumps(final or {})),
            *(["--threads", str(threads)] if threads is not None else []),
            *(["--baselines", ",".join(names)] if names else []),
            *(["--resume"] if resume else []),
        ],
    )
    try:
        settings = resolve_settings(settings, compress=compress, names=API_NAMES)
    except SettingsRefused as error:
        if saved is not None and not resume:  # leave nothing behind
            saved.unlink(missing_ok=True)
            if created:
                shutil.rmtree(out, ignore_errors=True)
        raise ValueError(f"n2n_gym.compress: {error}") from None
    status = run_pipeline(settings, Console())
    if status != 0:
        raise RuntimeError(f"n2n_gym.compress: the pipeline stopped with status {status}")
    report = json.loads((out / "report.json").read_text())
    return load_student(out / "student.pt"), report
