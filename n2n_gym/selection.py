"""Choosing the student to train fully: the search's best few and the uniform student, trained briefly.

A search ranks students by a short distillation (a fraction of an epoch). At high compression that
ranking favours students that recover fast — whole teacher layers kept, others removed — over those
that end best after the full training. Measured on Fashion-MNIST at 10x (small_vgg, docs/baselines):
the default search's student scored 57 % in its reward and the teacher at uniform width 48 %, yet
after 5 epochs of the final training the uniform student, starting from the teacher's
largest-L1-norm filters, led by 3.6 points.

The ``select`` stage of a pipeline therefore trains, before the final training, the search's top
``candidates`` distinct students (by reward) and the teacher at uniform width of the same size
(the size limit of the search, else its best student's parameters), each for ``epochs`` epochs of
the final training from the teacher's weights, and keeps the one with the best validation accuracy.
The test set is never read. Each candidate's result is written to ``selection.json`` as it finishes,
so a stopped selection continues where it stopped.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from n2n_gym.arch import InvalidArchitecture, StudentDescription
from n2n_gym.atomic import write_json_atomic
from n2n_gym.distill import DistillationDiverged, DistillConfig
from n2n_gym.runs import (
    RunDirError,
    full_fidelity,
    read_best_student,
    read_evaluations,
    read_run_task,
    student_id,
)

logger = logging.getLogger(__name__)

SELECTION_FILE = "selection.json"
UNIFORM = "uniform-width"


@dataclass(frozen=True)
class SelectionConfig:
    """How the ``select`` stage chooses.

    Attributes:
        candidates: the search's top distinct students (by reward) that are trained.
        epochs: epochs of the final training each candidate gets.
        uniform: add the teacher at uniform width of the same size as a candidate.
    """

    candidates: int = 3
    epochs: int = 3
    uniform: bool = True

    def __post_init__(self) -> None:
        if self.candidates < 1 or self.epochs < 1:
            raise ValueError(
                f"selection candidates={self.candidates}, epochs={self.epochs}: both must be at "
                "least 1"
            )


def search_candidates(run_dir: Path, count: int) -> list[tuple[StudentDescription, float]]:
    """The run's ``count`` best distinct students by reward, measured at full fidelity and
    within its constraints (a violating student's reward is a penalty, never a candidate)."""
    best: dict[str, dict[str, Any]] = {}
    for record in read_evaluations(run_dir):
        if not full_fidelity(record) or (record.get("rewards") or {}).get("violated"):
            continue
        key = student_id(record)
        if key not in best or record["reward"] > best[key]["reward"]:
            best[key] = record
    ranked = sorted(best.values(), key=lambda r: r["reward"], reverse=True)[:count]
    if not ranked:  # e.g. every student violated: the recorded best is all there is
        student, record = read_best_student(run_dir)
        return [(student, record["reward"])]
    return [(StudentDescription.from_dict(r["student"]), r["reward"]) for r in ranked]


def uniform_candidate(run_dir: Path, best: StudentDescription) -> StudentDescription | None:
    """The teacher at the largest uniform width within the run's size limits (parameters, MACs;
    its best student's parameters when it has none); ``None`` when no uniform width fits."""
    from n2n_gym.baselines import uniform_width_student

    constraints = read_run_task(run_dir).constraints
    limits = [
        (match, limit)
        for match, limit in (("params", constraints.max_params), ("flops", constraints.max_flops))
        if limit is not None
    ] or [("params", best.plan().spec.params)]
    try:
        fitting = [
            uniform_width_student(best.teacher, limit, match, at_most=True)
            for match, limit in limits
        ]
    except InvalidArchitecture:
        return None
    return min(fitting, key=lambda student: student.plan().spec.params)


def selection_candidates(
    run_dir: str | Path, config: SelectionConfig
) -> list[tuple[str, StudentDescription, float | None]]:
    """(name, student, search reward) of every candidate, the search's best first."""
    run_dir = Path(run_dir)
    ranked = search_candidates(run_dir, config.candidates)
    named = [(f"search #{i}", student, reward) for i, (student, reward) in enumerate(ranked, 1)]
    if config.uniform:
        uniform = uniform_candidate(run_dir, ranked[0][0])
        if uniform is not None and uniform.key not in {s.key for _, s, _ in named}:
            named.append((UNIFORM, uniform, None))
    return named


def select_student(
    run_dir: str | Path,
    out_dir: str | Path,
    config: SelectionConfig,
    final: DistillConfig,
    *,
    device: str = "auto",
    on_candidate: Callable[[str, int, int], None] | None = None,
    candidates: list[tuple[str, StudentDescription, float | None]] | None = None,
) -> tuple[StudentDescription, dict[str, Any]]:
    """Train each candidate of a finished search briefly and return the best by validation.

    Args:
        run_dir: the search's run directory (its task, teacher and data are used).
        out_dir: where ``selection.json`` is written (and read, to continue).
        config: how many candidates, how many epochs.
        final: the final training; each candidate gets ``config.epochs`` of it.
        device: where to train.
        on_candidate: called with (name, index, count) as each candidate starts.
        candidates: :func:`selection_candidates` of the run, when the caller has them already.

    Returns:
        The chosen student and the selection record (every candidate's validation accuracy).

    Raises:
        RunDirError: ``run_dir`` has no usable student.
    """
    from n2n_gym.finalize import train_final

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    named = candidates if candidates is not None else selection_candidates(run_dir, config)
    # never longer than the final training itself
    training = dataclasses.replace(final, epochs=min(config.epochs, final.epochs))
    identity = {"run_dir": str(run_dir), "config": dataclasses.asdict(config)}
    identity["training"] = training.to_dict()
    path = out_dir / SELECTION_FILE
    earlier = json.loads(path.read_text()) if path.is_file() else {}
    same = all(earlier.get(k) == v for k, v in identity.items())
    # a candidate that failed is tried again; one measured for other settings is not reused
    done = {
        key: entry
        for key, entry in (earlier.get("candidates", {}) if same else {}).items()
        if "val_accuracy" in entry
    }
    record: dict[str, Any] = {**identity, "candidates": {}}
    task = read_run_task(run_dir)
    teacher = data = None
    for index, (name, student, reward) in enumerate(named):
        if student.key in done:
            record["candidates"][student.key] = done[student.key]
            continue
        if on_candidate is not None:
            on_candidate(name, index, len(named))
        if teacher is None:
            teacher, data = task.load_teacher(), task.load_data()
        entry: dict[str, Any] = {
            "name": name,
            "student": student.to_dict(),
            "params": student.plan().spec.params,
            "search_reward": reward,
        }
        try:
            trained = train_final(
                teacher,
                data,
                student,
                training,
                device=device,
                inherit_weights=task.inherit_weights,
                seed=task.eval_seed,
            )
            entry |= {"val_accuracy": trained.val_accuracy, "seconds": trained.wall_time}
        except (InvalidArchitecture, DistillationDiverged, RuntimeError) as error:
            # one candidate that fails does not cost the selection
            logger.warning("selection candidate %s failed: %s", name, error)
            entry["error"] = f"{type(error).__name__}: {error}"
        record["candidates"][student.key] = entry
        write_json_atomic(path, record)
    measured = [e for e in record["candidates"].values() if "val_accuracy" in e]
    if not measured:
        raise RunDirError(f"{run_dir}: no selection candidate could be trained; see {path}")
    chosen = max(measured, key=lambda e: e["val_accuracy"])
    record["chosen"] = chosen["name"]
    write_json_atomic(path, record)
    logger.info("selected %s (validation accuracy %.4f)", chosen["name"], chosen["val_accuracy"])
    return StudentDescription.from_dict(chosen["student"]), record
