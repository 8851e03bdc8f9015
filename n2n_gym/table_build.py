"""A table build: every student of a grid (or a sample of it) through the live evaluator, once.

A build runs in passes, each resumable after a kill (what is measured is kept in shard files and
in the measurement cache of the build folder, so a fresh machine with the folder continues where
the last one stopped):

1. **measure**: every grid student, through the task's live evaluator on the CPU (a process pool
   or Ray back-end, one torch thread per worker), with a learning curve of ``--curve-points``
   validations; errors are rows too.
2. **repeat**: a seeded random ``--repeat-fraction`` of the students again with another seed (the
   transfer subset, batch order and re-initialised layers change), to quantify noise.
3. **top**: every student in the top 5 % of the table (seed-mean reward, default reward settings)
   measured with further seeds until it has three, repeated until the top 5 % no longer changes,
   so that a benchmark's target is a seed mean, not one lucky seed (``seeds.jsonl``, one line per
   measurement, appended as each finishes).
4. **latency**: every valid student's CPU latency for one image, in this process alone on one
   thread (contended timings are not latencies).
5. **assemble**: the table file, with the fingerprint of teacher, data split and fidelity.

:mod:`n2n_gym.tabulate` is its command line.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import statistics
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from functools import cached_property
from pathlib import Path
from typing import Any

from n2n_gym.arch import StudentDescription
from n2n_gym.grid import Grid
from n2n_gym.table import (
    TOP_FRACTION,
    TOP_SEEDS,
    Table,
    TableRow,
    student_key,
    world_fingerprint,
)
from n2n_gym.task import Task, TaskError

__all__ = ["TableBuild"]

logger = logging.getLogger(__name__)

SHARD_SIZE = 128
LATENCY_RUNS = 30


def _with_defaults(found: dict[str, Any], mine: dict[str, Any]) -> dict[str, Any]:
    """``found`` with the keys only ``mine`` has taken from it, in nested dicts too."""
    merged = {**{k: v for k, v in mine.items() if k not in found}, **found}
    for key, value in mine.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _with_defaults(merged[key], value)
    return merged


def _write_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
    os.replace(partial, path)


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class TableBuild:
    """A table being built in ``folder``: the grid, its shards, and the passes that fill them.

    Args:
        task: the live task the table stands for (``measurer="distill"``, CPU).
        grid: the students.
        folder: where shards, the cache and the latency file live (created on first use).
        name: the table's name.
        curve_points: validations along each student's transfer budget.
        repeat_fraction: share of students measured again with ``repeat_seed``.
        repeat_seed: the second seed.
        shard_size: students per shard file.
        students: measure these students of the grid instead of all of them (a grid too big to
            enumerate: :meth:`~n2n_gym.grid.Grid.sample`, or the students searches visited);
            the table then answers only for them.
    """

    def __init__(
        self,
        task: Task,
        grid: Grid,
        folder: Path,
        name: str,
        *,
        curve_points: int = 4,
        repeat_fraction: float = 0.1,
        repeat_seed: int = 1,
        shard_size: int = SHARD_SIZE,
        students: Sequence[StudentDescription] | None = None,
    ) -> None:
        self.folder = Path(folder)
        self.name = name
        self.grid = grid
        self.task = task.replace(
            measurer="distill",
            device="cpu",
            curve_points=curve_points,
            cache_path=str(self.folder / "cache.sqlite"),
        )
        self.repeat_task = self.seed_task(repeat_seed)
        # The seeds a top student is measured with besides the table's own.
        self.top_seeds = [repeat_seed + i for i in range(TOP_SEEDS - 1)]
        self.sampled = students is not None
        self.students = list(grid.students()) if students is None else list(students)
        off_grid = [s.ratios for s in self.students if not grid.contains(s.ratios)]
        if off_grid:
            raise TaskError(
                f"{len(off_grid)} of the students are not in the grid (e.g. {list(off_grid[0])}); "
                "pass --ratios with every width they use"
            )
        count = max(1, round(repeat_fraction * len(self.students))) if repeat_fraction > 0 else 0
        chosen = sorted(random.Random(repeat_seed).sample(range(len(self.students)), count))
        self.repeat_students = [self.students[i] for i in chosen]
        self.shard_size = shard_size

    def seed_task(self, seed: int) -> Task:
        """The table's task measured with another seed (transfer subset, batch order, init)."""
        return self.task.replace(eval_seed=seed, fidelity=replace(self.task.fidelity, seed=seed))

    # ---- the folder -------------------------------------------------------------------------
    def _shards(self, prefix: str, students: list) -> list[tuple[Path, list]]:
        return [
            (
                self.folder / f"{prefix}-{i // self.shard_size:04d}.jsonl",
                students[i : i + self.shard_size],
            )
            for i in range(0, len(students), self.shard_size)
        ]

    def manifest(self) -> dict[str, Any]:
        return {
            # Where the data sit is this machine's business, not the build's identity.
            "task": self.task.to_dict() | {"cache_path": None, "data_dir": None},
            "grid": self.grid.to_dict(),
            "students": len(self.students),
            "repeat_students": len(self.repeat_students),
            "repeat_seed": self.repeat_task.eval_seed,
            "shard_size": self.shard_size,
            "top_fraction": TOP_FRACTION,
            "top_seeds": TOP_SEEDS,
        } | ({"students_digest": self._students_digest()} if self.sampled else {})

    def _students_digest(self) -> str:
        ratios = json.dumps([list(s.ratios) for s in self.students])
        return hashlib.sha256(ratios.encode()).hexdigest()[:16]

    def check_folder(self) -> None:
        """Refuse a folder that holds another build (other task, grid or sharding)."""
        path = self.folder / "manifest.json"
        if path.is_file():
            found = json.loads(path.read_text())
            mine = json.loads(json.dumps(self.manifest()))
            # Fields added since the build started (the top pass, new task fields) take their
            # defaults, which is what they were then.
            found = _with_defaults(found, mine)
            if found != mine:
                differ = sorted(k for k in mine if found.get(k) != mine[k])
                raise TaskError(
                    f"{self.folder} holds another table build (differs in {', '.join(differ)}); "
                    "pass another --build-dir or the same settings"
                )

    def _open(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.check_folder()
        (self.folder / "manifest.json").write_text(json.dumps(self.manifest(), indent=2) + "\n")

    def pending(self, top: bool = True) -> dict[str, int]:
        """Students still to measure in each pass (``top``: count the top pass's measurements,
        which needs the first two passes done; before that it is an upper bound)."""
        latency = self._latencies()
        pending = {
            "measure": sum(
                len(s) for p, s in self._shards("shard", self.students) if not p.exists()
            ),
            "repeat": sum(
                len(s) for p, s in self._shards("repeat", self.repeat_students) if not p.exists()
            ),
            "latency": len(self.students) - len(latency),
        }
        if pending["measure"] or pending["repeat"]:
            pending["top"] = round(TOP_FRACTION * len(self.students)) * len(self.top_seeds)
        else:
            pending["top"] = len(self._top_todo()) if top else 0
        return pending

    # ---- passes -----------------------------------------------------------------------------
    def measure(self, workers: int, ray_address: str | None, progress: Any = None) -> None:
        """Passes 1 and 2: measure every shard not on disk, through the live evaluator.

        The repeated sample goes first, with both seeds, so that the noise between seeds — whether
        the table can stand for live runs at all — is known after minutes, not at the end.
        """
        self._open()
        repeats = [
            (p, s) for p, s in self._shards("repeat", self.repeat_students) if not p.exists()
        ]
        shards = [(p, s) for p, s in self._shards("shard", self.students) if not p.exists()]
        phases = []
        if repeats:
            sample = [student for _, shard in repeats for student in shard]
            phases += [
                (self.task, "sample", [(None, sample)]),
                (self.repeat_task, "repeat", repeats),
            ]
        if shards:
            phases.append((self.task, "shard", shards))
        for task, phase, todo in phases:
            self._measure(task, phase, todo, workers, ray_address, progress)

    def _measure(
        self, task, phase, todo, workers, ray_address, progress, record_seed: int | None = None
    ) -> None:
        """Measure the shards of ``todo`` with ``task``; each written as it finishes (or, with
        ``record_seed``, each student appended to ``seeds.jsonl`` as measured with that seed)."""
        from n2n_gym.backends import make_backend

        resolved = task.resolved()
        # One thread per worker whatever the machine: a row is then reproducible anywhere (float
        # sums depend on the thread count) and the workers do not contend for cores.
        backend = make_backend(resolved, workers=workers, ray_address=ray_address, threads=1)
        evaluator = resolved.build_evaluator(backend)
        try:
            with ThreadPoolExecutor(max(1, backend.num_workers)) as threads:
                for path, shard in todo:
                    for student, result in zip(
                        shard, threads.map(evaluator.evaluate, shard), strict=True
                    ):
                        if record_seed is not None:
                            self._append_seed(student, record_seed, result)
                        if progress is not None:
                            progress(phase, result)
                    if path is not None:
                        self._write_shard(path, shard, evaluator)
        finally:
            evaluator.close()

    def record_wall(self, seconds: float) -> None:
        """Add one invocation's wall-clock to the build's (``wall.jsonl``, summed by the table)."""
        with open(self.folder / "wall.jsonl", "a") as out:
            out.write(json.dumps({"date": time.strftime("%Y-%m-%d"), "seconds": seconds}) + "\n")

    def wall_seconds(self) -> float:
        """The build's wall-clock over every invocation so far."""
        return (
            sum(r["seconds"] for r in _read_jsonl(self.folder / "wall.jsonl"))
            if (self.folder / "wall.jsonl").is_file()
            else 0.0
        )

    # ---- the top pass -----------------------------------------------------------------------
    def _seed_records(self) -> list[dict[str, Any]]:
        path = self.folder / "seeds.jsonl"
        if not path.is_file():
            return []
        records = []
        for line in path.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut by a kill
                continue
        return records

    def _top_todo(self) -> list[tuple[int, Any]]:
        """(seed, student) pairs the top pass still has to measure, from what is measured now."""
        table = self.assemble(None, partial=True)
        means = table.rewards(statistic="mean")
        ranked = sorted(means, key=lambda k: (means[k], k), reverse=True)
        top = ranked[: max(1, round(TOP_FRACTION * len(self.students)))]
        by_ratios = {tuple(s.ratios): s for s in self.students}
        todo = []
        for key in top:
            row = table.rows[key]
            if not row.measurement.ok:
                continue
            have = {r["seed"] for r in row.repeats}
            todo += [(seed, by_ratios[row.ratios]) for seed in self.top_seeds if seed not in have]
        return sorted(todo, key=lambda item: (item[0], item[1].ratios))

    def top(self, workers: int, ray_address: str | None, progress: Any = None) -> None:
        """Pass 3: further seeds for the top students until the top 5 % is stable."""
        self._open()
        while todo := self._top_todo():
            for seed in sorted({seed for seed, _ in todo}):
                students = [student for s, student in todo if s == seed]
                self._measure(
                    self.seed_task(seed),
                    "top",
                    [(None, students)],
                    workers,
                    ray_address,
                    progress,
                    record_seed=seed,
                )

    def _write_shard(self, path: Path, shard: list, evaluator: Any) -> None:
        from n2n_gym.arch import InvalidArchitecture
        from n2n_gym.cache import measurement_key

        records = []
        context = evaluator.measurer.context()
        for student in shard:
            record: dict[str, Any] = {"ratios": list(student.ratios)}
            try:
                plan = student.plan()
            except InvalidArchitecture as error:  # an invalid grid point is a row too
                record.update(
                    key=None,
                    measurement={
                        "accuracy": None,
                        "params": None,
                        "flops": None,
                        "error": str(error),
                        "error_type": type(error).__name__,
                    },
                )
                records.append(record)
                continue
            stored = evaluator.cache.get(measurement_key(plan, context))
            if stored is None:  # transient failure twice: measured again on the next run
                raise RuntimeError(f"student {list(student.ratios)} has no measurement yet")
            record.update(key=student_key(plan), measurement=stored)
            records.append(record)
        _write_jsonl(path, records)

    def _append_seed(self, student: Any, seed: int, result: Any) -> None:
        if result.error is not None:  # transient (an invalid student is never in the top)
            raise RuntimeError(
                f"student {list(student.ratios)} failed with seed {seed}: {result.error}"
            )
        record = {
            "ratios": list(student.ratios),
            "seed": seed,
            "accuracy": result.accuracy,
            "seconds": result.seconds,
        }
        with open(self.folder / "seeds.jsonl", "a") as out:
            out.write(json.dumps(record, sort_keys=True) + "\n")

    def _latencies(self) -> dict[str, float | None]:
        path = self.folder / "latency.jsonl"
        if not path.is_file():
            return {}
        found = {}
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # a line cut by a kill
                continue
            found[record["ratios_key"]] = record["latency_ms"]
        return found

    def latency(self, progress: Any = None) -> None:
        """Pass 4: CPU latency of one image per valid student, on one thread, alone."""
        import torch

        from n2n_gym.arch import InvalidArchitecture
        from n2n_gym.surgery import build_student

        self._open()
        done = self._latencies()
        todo = [s for s in self.students if json.dumps(s.ratios) not in done]
        if not todo:
            return
        teacher = self.task.load_teacher()
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        x = torch.randn(1, *teacher.spec.input_shape)
        try:
            with open(self.folder / "latency.jsonl", "a") as out:
                for student in todo:
                    try:
                        _, module = build_student(teacher.module, student, inherit_weights=True)
                        value = _latency_ms(module.eval(), x)
                    except InvalidArchitecture:
                        value = None
                    out.write(
                        json.dumps({"ratios_key": json.dumps(student.ratios), "latency_ms": value})
                        + "\n"
                    )
                    out.flush()
                    if progress is not None:
                        progress("latency", None)
        finally:
            torch.set_num_threads(threads)

    def assemble(
        self, out: Path | None, build_seconds: float | None = None, partial: bool = False
    ) -> Table:
        """Pass 5: the table file from the finished passes.

        Args:
            out: where to write it (``None``: do not write).
            build_seconds: wall-clock of the build, recorded in the table.
            partial: a provisional table of what is measured so far (shards and the cache), for
                a report while the build runs; never written.
        """
        from n2n_gym.measure import Measurement

        if not partial and any((pending := self.pending()).values()):
            raise TaskError(f"the build in {self.folder} is not finished: {pending} to go")
        latency = self._latencies()
        repeats: dict[str, dict[int, dict[str, Any]]] = {}
        for path, _ in self._shards("repeat", self.repeat_students):
            if path.exists():
                for record in _read_jsonl(path):
                    m = record["measurement"]
                    repeats.setdefault(json.dumps(record["ratios"]), {})[
                        self.repeat_task.eval_seed
                    ] = {
                        "seed": self.repeat_task.eval_seed,
                        "accuracy": m["accuracy"],
                        "seconds": m.get("seconds"),
                        "sample": True,  # the random noise sample, not a top student
                    }
        for record in self._seed_records():
            repeats.setdefault(json.dumps(record["ratios"]), {})[record["seed"]] = {
                **{k: record[k] for k in ("seed", "accuracy", "seconds")},
                "sample": False,  # measured because it was near the top
            }
        records = [
            record
            for path, _ in self._shards("shard", self.students)
            if path.exists()
            for record in _read_jsonl(path)
        ]
        if partial:
            records += self._cached_records({json.dumps(r["ratios"]) for r in records})
        rows: dict[str, TableRow] = {}
        for record in records:
            ratios_key = json.dumps(record["ratios"])
            again = repeats.get(ratios_key)
            row = TableRow(
                key=record["key"] or f"invalid:{ratios_key}",
                ratios=tuple(record["ratios"]),
                measurement=Measurement.from_dict(record["measurement"]),
                latency_ms=latency.get(ratios_key),
                repeats=tuple(again[seed] for seed in sorted(again)) if again else (),
            )
            rows.setdefault(row.key, row)
        teacher, measurer = self._driver_measurer
        task = self.task.resolved(teacher)
        seconds = sum(r.measurement.seconds or 0.0 for r in rows.values())
        table = Table(
            name=self.name,
            teacher=teacher.spec,
            teacher_accuracy=measurer.teacher_accuracy,
            teacher_fingerprint=teacher.fingerprint,
            world=world_fingerprint(task, teacher.fingerprint),
            task={
                k: v
                for k, v in task.to_dict().items()
                if k not in ("cache_path", "data_dir", "table", "measurer", "constraints")
            },
            context=measurer.context(),
            grid=self.grid,
            rows=rows,
            build={
                "students": len(rows),
                "measured_seconds": seconds,
                "wall_seconds": build_seconds,
                "repeat_seed": self.repeat_task.eval_seed,
                "top_fraction": TOP_FRACTION,
                "top_seeds": TOP_SEEDS,
                "curve_points": self.task.curve_points,
                "torch": _torch_version(),
                "created": time.strftime("%Y-%m-%d"),
            },
        )
        if out is not None and not partial:
            table.save(out)
        return table

    @cached_property
    def _driver_measurer(self) -> tuple[Any, Any]:
        """The teacher and a measurer of the build's task in this process, loaded once: the
        teacher's accuracy and the measurement context the table records (the top pass reads a
        provisional table several times)."""
        teacher = self.task.load_teacher()
        return teacher, self.task.build_measurer(teacher)

    def _cached_records(self, skip: set[str]) -> list[dict[str, Any]]:
        """Measurements of students not in a shard yet, from the build's cache."""
        from n2n_gym.arch import InvalidArchitecture
        from n2n_gym.cache import MeasurementCache, measurement_key

        path = self.folder / "cache.sqlite"
        if not path.exists():
            return []
        context = self._driver_measurer[1].context()
        records = []
        with MeasurementCache(path) as cache:
            for student in self.students:
                if json.dumps(student.ratios) in skip:
                    continue
                try:
                    plan = student.plan()
                except InvalidArchitecture:  # no measurement to find
                    continue
                stored = cache.get(measurement_key(plan, context))
                if stored is not None:
                    key = student_key(plan)
                    records.append(
                        {"ratios": list(student.ratios), "key": key, "measurement": stored}
                    )
        return records


def _torch_version() -> str:
    import torch

    return torch.__version__


def _latency_ms(module: Any, x: Any) -> float:
    import torch

    with torch.inference_mode():
        for _ in range(5):
            module(x)
        times = []
        for _ in range(LATENCY_RUNS):
            start = time.perf_counter()
            module(x)
            times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000
