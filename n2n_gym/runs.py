"""Search run directories: what a search records, written so that nothing is lost on a crash.

A run directory holds ``config.json`` (how the run was started), ``evaluations.jsonl`` (one line
per student evaluation, appended and flushed as it happens), ``best_student.json`` (the best
student so far, as a description plus its scores), ``best_student.pt`` (its weights as the search
trained them, written when the search stops) and ``summary.json``. JSON files are replaced
atomically; the JSONL log is append-only, so a killed run keeps every finished evaluation.
"""

from __future__ import annotations

import atexit
import json
import logging
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from n2n_gym.arch import StudentDescription
from n2n_gym.atomic import json_line, write_json_atomic
from n2n_gym.measure import EXPECTED_ERRORS, DistillationMeasurer, Measurer
from n2n_gym.students import save_student
from n2n_gym.task import Task, TaskError

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
EVALUATIONS_FILE = "evaluations.jsonl"
BEST_FILE = "best_student.json"
SUMMARY_FILE = "summary.json"
BEST_WEIGHTS_FILE = "best_student.pt"
CHECKPOINT_FILE = "checkpoints/agent.zip"
# Written by evaluate.py: the fully trained student and its test-set report.
STUDENT_FILE = "student.pt"
REPORT_FILE = "report.json"

# A search's budget counts distinct students: a repeat is answered by the cache and costs nothing.
# A search that keeps repeating itself has converged; it stops after this many episodes in a row
# without a new student, or after CONVERGED_EPISODE_FACTOR x its budget in episodes.
CONVERGED_AFTER = 200
CONVERGED_EPISODE_FACTOR = 5


class RunDirError(ValueError):
    """A folder that is not (or not yet) the run directory a command needs; says what to run."""


def read_run_config(run_dir: str | Path) -> dict[str, Any]:
    """The ``config.json`` a search wrote: its ``task``, ``env``, ``env_options``, ``algo`` ...

    Raises:
        RunDirError: ``run_dir`` is not a run directory, or its config is unreadable.
    """
    path = Path(run_dir) / CONFIG_FILE
    if not Path(run_dir).is_dir():
        raise RunDirError(f"{run_dir} does not exist or is not a folder; pass a run directory")
    if not path.exists():
        raise RunDirError(
            f"{run_dir} is not a search run directory (no {CONFIG_FILE}); "
            "make one with `python train_agent.py --out DIR`"
        )
    try:
        config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise RunDirError(
            f"{path} is unreadable ({error}); was the run directory edited?"
        ) from None
    if not isinstance(config, dict) or "task" not in config or "env" not in config:
        raise RunDirError(f"{path} does not describe a search (no task); rerun the search")
    return config


# Settings a resumed run may change: they decide how long and on what it runs, never what it
# measures or proposes.
RESUME_FREE = frozenset(
    {
        "budget",
        "workers",
        "backend",
        "ray_address",
        "ray_data",
        "threads",
        "checkpoint_every",
        "out",
        "resume",
        "argv",
        "rerun",
        "task",
        "env_options",
        "reward_free_students",
        "baselines",  # a pipeline's comparison after its student: more may be asked for later
    }
)


def resume_conflict(recorded: dict[str, Any], given: dict[str, Any]) -> str | None:
    """The first setting a resume would change, as one line (``None``: the same search).

    Args:
        recorded: the settings the run (or pipeline, or benchmark) recorded when it started.
        given: the settings of the command that resumes it.
    """
    normal = json.loads(json.dumps(given, default=str))
    for name in sorted(set(recorded) | set(normal)):
        if name in RESUME_FREE or recorded.get(name) == normal.get(name):
            continue
        path, old, new = [name], recorded.get(name), normal.get(name)
        while isinstance(old, dict) and isinstance(new, dict):  # name the innermost setting
            key = next(k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k))
            path, old, new = [*path, key], old.get(key), new.get(key)
        setting = "--" + path[0].replace("_", "-") + "".join(f" {k}" for k in path[1:])
        return (
            f"{setting} was {old!r} when this run started, {new!r} now: a resumed run must be "
            "the same search; resume with the recorded setting, or start a new run with another "
            "--out"
        )
    return None


def read_run_task(run_dir: str | Path) -> Task:
    """The task a search ran on, rebuilt from its ``config.json`` (the same world)."""
    config = read_run_config(run_dir)
    try:
        return Task.from_dict(config["task"])
    except TaskError as error:
        raise RunDirError(f"{run_dir}: its task cannot be rebuilt here: {error}") from None


def read_best_student(run_dir: str | Path) -> tuple[StudentDescription, dict[str, Any]]:
    """The best student a search found, with its recorded evaluation."""
    path = Path(run_dir) / BEST_FILE
    if not path.exists():
        raise RunDirError(
            f"{run_dir} has no successful evaluation yet ({BEST_FILE} is missing); "
            "run or resume the search first (`python train_agent.py --resume --out DIR`)"
        )
    record = json.loads(path.read_text())
    return StudentDescription.from_dict(record["student"]), record


def write_best_weights(run_dir: str | Path, measurer: Measurer) -> Path | None:
    """Re-create the best student's trained network as its reward did and save it in the run.

    Only measurements are kept during a search (weights of hundreds of students would not be);
    distillation is seeded, so this gives the network the search scored. Returns the file, or
    ``None`` when there is no best student or the measurer trains nothing (a proxy).
    """
    run_dir = Path(run_dir)
    if not (run_dir / BEST_FILE).exists():
        return None
    if not isinstance(measurer, DistillationMeasurer):
        logger.info(
            "no weights for the best student: %s trains no network", type(measurer).__name__
        )
        return None
    student, record = read_best_student(run_dir)
    try:
        _, module, measured = measurer.train(student)
    except EXPECTED_ERRORS as error:
        logger.warning("could not re-train the best student: %s", error)
        return None
    metadata = {
        "val_accuracy": measured,
        "search_accuracy": record.get("accuracy"),
        "reward": record.get("reward"),
        "trained_by": "search reward",
        "distill_config": measurer.distill_config.to_dict(),
    }
    return save_student(run_dir / BEST_WEIGHTS_FILE, module, student, metadata)


def read_evaluations(run_dir: str | Path) -> list[dict[str, Any]]:
    """Every recorded evaluation of a run, in order; a torn last line (a crash mid-write) is skipped."""
    path = Path(run_dir) / EVALUATIONS_FILE
    if not path.exists():
        return []
    text = path.read_text()
    lines = text.split("\n")
    # The text after the last newline is a record being written now (or torn by a crash).
    if lines[-1]:
        logger.debug("skipping the unfinished last line of %s", path)
    records = []
    for number, line in enumerate(lines[:-1], 1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            logger.warning("skipping unreadable line %d of %s", number, path)
    return records


def student_id(record: dict[str, Any]) -> str:
    """What makes two records the same student (the key; the description for older records)."""
    return record.get("student_key") or json_line(record.get("student"))


def full_fidelity(record: dict[str, Any]) -> bool:
    """Whether an evaluation record can be a run's best: measured without error, and at the full
    fidelity (a student successive halving stopped part-way has a lower-fidelity reward)."""
    return record.get("error") is None and record.get("halted_at") is None


def distinct_counts(records: list[dict[str, Any]]) -> list[int]:
    """Distinct students evaluated after each record (what a budget counts)."""
    seen: set[str] = set()
    counts = []
    for record in records:
        seen.add(student_id(record))
        counts.append(len(seen))
    return counts


def incumbent_worth(
    records: list[dict[str, Any]], budget: int, worth: str | None = None
) -> np.ndarray:
    """The worth of the run's incumbent after 1 … ``budget`` distinct students.

    The incumbent is the student with the best reward the search saw (the first of equals); its
    worth is the record's ``worth`` field (a table's seed-mean reward) or, without one, that
    reward. NaN before the first success; a run that stopped short keeps its last incumbent.
    """
    curve: list[float] = []
    seen, value = -math.inf, math.nan
    for record, count in zip(records, distinct_counts(records), strict=True):
        if full_fidelity(record) and record["reward"] > seen:
            seen = record["reward"]
            value = float(record[worth] if worth and record.get(worth) is not None else seen)
        if count > len(curve):
            curve.append(value)
        else:
            curve[-1] = value  # a repeat: the same student count, maybe a better (noisier) reward
        if len(curve) == budget:
            break
    return np.array(curve + [value] * (budget - len(curve)), dtype=float)


def within_budget(records: list[dict[str, Any]], budget: int) -> list[dict[str, Any]]:
    """The records up to the one that evaluated the ``budget``-th distinct student."""
    for index, count in enumerate(distinct_counts(records)):
        if count >= budget:
            return records[: index + 1]
    return records


def _drop_torn_tail(path: Path) -> None:
    """Cut a line left half-written by a crash, so that new lines start on a line of their own."""
    if not path.exists():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        keep = data.rfind(b"\n") + 1
        logger.warning(
            "dropping a half-written last line of %s (the run was killed mid-write)", path
        )
        with path.open("r+b") as handle:
            handle.truncate(keep)


@dataclass
class RunRecorder:
    """Appends evaluations to a run directory and keeps the best student and summary current."""

    run_dir: Path
    algo: str
    seed: int

    def __post_init__(self) -> None:
        self.run_dir = Path(self.run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        _drop_torn_tail(self.run_dir / EVALUATIONS_FILE)
        self.records = read_evaluations(self.run_dir)
        self.best: dict[str, Any] | None = None
        self.students: set[str] = set()
        self.since_new = 0  # episodes in a row without a new student
        for record in self.records:
            self._update_best(record)
            self._count_student(record)

    @property
    def evaluations(self) -> int:
        """Episodes recorded (evaluations, repeats included)."""
        return len(self.records)

    @property
    def distinct_students(self) -> int:
        """Different students evaluated: what a search's budget counts."""
        return len(self.students)

    def stop_reason(self, budget: int) -> str | None:
        """``"budget"``, ``"converged"`` or ``None`` (go on), for a budget of distinct students."""
        if self.distinct_students >= budget:
            return "budget"
        if self.since_new >= CONVERGED_AFTER or (
            self.evaluations >= CONVERGED_EPISODE_FACTOR * budget
        ):
            return "converged"
        return None

    def _count_student(self, record: dict[str, Any]) -> None:
        key = student_id(record)
        new = key not in self.students
        self.students.add(key)
        self.since_new = 0 if new else self.since_new + 1
        record.setdefault("new_student", new)

    @property
    def cache_hits(self) -> int:
        return sum(bool(r.get("cache_hit")) for r in self.records)

    @property
    def best_reward(self) -> float:
        return self.best["reward"] if self.best else -math.inf

    def record(
        self, reward: float, info: dict[str, Any], wall_time: float | None = None
    ) -> dict[str, Any]:
        """Record one finished episode's evaluation; returns the stored record."""
        fields = (
            "accuracy",
            "params",
            "flops",
            "compression",
            "rewards",
            "teacher_accuracy",
            "teacher_params",
            "cache_hit",
            "error",
            "error_type",
            "student",
            "eval_seconds",
            "table_optimum",
            "table_target",
            "table_band",
            "student_mean_reward",
            "student_key",
            "halted_at",
        )
        record = {
            "evaluation": self.evaluations + 1,
            "reward": float(reward),
            "wall_time": wall_time,
        }
        record.update({key: info.get(key) for key in fields})
        self._count_student(record)
        with (self.run_dir / EVALUATIONS_FILE).open("a") as handle:
            handle.write(json_line(record) + "\n")
            handle.flush()
        self.records.append(record)
        if self._update_best(record):
            write_json_atomic(self.run_dir / BEST_FILE, self.best)
        return record

    def _update_best(self, record: dict[str, Any]) -> bool:
        if full_fidelity(record) and (self.best is None or record["reward"] > self.best["reward"]):
            self.best = record
            return True
        return False

    def write_summary(self, **extra: Any) -> dict[str, Any]:
        best = self.best or {}
        teacher = self.records[-1] if self.records else {}
        summary = {
            "algo": self.algo,
            "seed": self.seed,
            "evaluations": self.evaluations,
            "distinct_students": self.distinct_students,
            "cache_hits": self.cache_hits,
            "best_reward": best.get("reward"),
            "best_accuracy": best.get("accuracy"),
            "best_params": best.get("params"),
            "best_compression": best.get("compression"),
            "teacher_accuracy": teacher.get("teacher_accuracy"),
            "teacher_params": teacher.get("teacher_params"),
            **extra,
        }
        write_json_atomic(self.run_dir / SUMMARY_FILE, summary)
        return summary


# ---- searches running on this machine -----------------------------------------------------------


def _registry() -> Path:
    # Per user and machine; each run has its own cache by default, so caches cannot tell.
    return Path(tempfile.gettempdir()) / f"n2n_gym-searches-{os.getuid()}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def announce_search(run_dir: str | Path, threads: int) -> list[dict[str, Any]]:
    """Register this search as running on this machine; the other live searches.

    The entry is removed when the process exits. Entries of processes that died are ignored
    and cleaned up.

    Args:
        run_dir: this search's run directory.
        threads: torch CPU threads this search uses.

    Returns:
        One dict per other running search: ``pid``, ``run_dir``, ``threads``.
    """
    folder = _registry()
    folder.mkdir(parents=True, exist_ok=True)
    others = []
    for entry in folder.glob("*.json"):
        try:
            data = json.loads(entry.read_text())
            pid = int(data["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if pid == os.getpid():
            continue
        if _alive(pid):
            others.append(data)
        else:
            entry.unlink(missing_ok=True)
    mine = folder / f"{os.getpid()}.json"
    write_json_atomic(
        mine, {"pid": os.getpid(), "run_dir": str(Path(run_dir).resolve()), "threads": threads}
    )
    atexit.register(lambda: mine.unlink(missing_ok=True))
    return others
