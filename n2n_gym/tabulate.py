"""Build a measured table: every student of a grid through the live evaluator, once.

::

    python -m n2n_gym.tabulate --workers 2                 # build (or continue) the default table
    python -m n2n_gym.tabulate --stats                     # how hard the shipped table is
    python -m n2n_gym.tabulate --teacher my.pt --dataset cifar10 --data-dir DATA --out my.json.gz

A build runs in passes, each resumable after a kill (what is measured is kept in shard files and
in the measurement cache of the build folder, so a fresh machine with the folder continues where
the last one stopped):

1. **measure**: every grid student, through the task's live evaluator on the CPU (a process pool
   or Ray back-end, one torch thread per worker), with a learning curve of ``--curve-points``
   validations; errors are rows too.
2. **repeat**: a seeded random ``--repeat-fraction`` of the students again with another seed (the
   transfer subset, batch order and re-initialised layers change), to quantify noise.
3. **latency**: every valid student's CPU latency for one image, in this process alone on one
   thread (contended timings are not latencies).
4. **assemble**: the table file, with the fingerprint of teacher, data split and fidelity.
"""

from __future__ import annotations

import json
import logging
import os
import random
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

from n2n_gym.cli import OneLineParser, fail, program
from n2n_gym.grid import Grid, joint_grid
from n2n_gym.table import (
    Table,
    TableError,
    TableRow,
    load_table,
    shipped_table,
    student_key,
    world_fingerprint,
)
from n2n_gym.task import Task, TaskError
from n2n_gym.teachers.errors import argument_names

__all__ = ["TableBuild", "main"]

logger = logging.getLogger(__name__)

SHARD_SIZE = 128
LATENCY_RUNS = 30


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
        self.repeat_task = self.task.replace(
            eval_seed=repeat_seed, fidelity=replace(self.task.fidelity, seed=repeat_seed)
        )
        self.students = list(grid.students())
        count = max(1, round(repeat_fraction * len(self.students))) if repeat_fraction > 0 else 0
        chosen = sorted(random.Random(repeat_seed).sample(range(len(self.students)), count))
        self.repeat_students = [self.students[i] for i in chosen]
        self.shard_size = shard_size

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
            "task": self.task.to_dict() | {"cache_path": None},
            "grid": self.grid.to_dict(),
            "students": len(self.students),
            "repeat_students": len(self.repeat_students),
            "repeat_seed": self.repeat_task.eval_seed,
            "shard_size": self.shard_size,
        }

    def check_folder(self) -> None:
        """Refuse a folder that holds another build (other task, grid or sharding)."""
        path = self.folder / "manifest.json"
        if path.is_file():
            found = json.loads(path.read_text())
            mine = json.loads(json.dumps(self.manifest()))
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

    def pending(self) -> dict[str, int]:
        """Students still to measure in each pass."""
        latency = self._latencies()
        return {
            "measure": sum(
                len(s) for p, s in self._shards("shard", self.students) if not p.exists()
            ),
            "repeat": sum(
                len(s) for p, s in self._shards("repeat", self.repeat_students) if not p.exists()
            ),
            "latency": len(self.students) - len(latency),
        }

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

    def _measure(self, task, phase, todo, workers, ray_address, progress) -> None:
        from n2n_gym.backends import make_backend

        resolved = task.resolved()
        # One thread per worker whatever the machine: a row is then reproducible anywhere (float
        # sums depend on the thread count) and the workers do not contend for cores.
        backend = make_backend(resolved, workers=workers, ray_address=ray_address, threads=1)
        evaluator = resolved.build_evaluator(backend)
        try:
            with ThreadPoolExecutor(max(1, backend.num_workers)) as threads:
                for path, shard in todo:
                    for result in threads.map(evaluator.evaluate, shard):
                        if progress is not None:
                            progress(phase, result)
                    if path is not None:
                        self._write_shard(path, shard, evaluator)
        finally:
            evaluator.close()

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
        """Pass 3: CPU latency of one image per valid student, on one thread, alone."""
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
        """Pass 4: the table file from the finished passes.

        Args:
            out: where to write it (``None``: do not write).
            build_seconds: wall-clock of the build, recorded in the table.
            partial: a provisional table of what is measured so far (shards and the cache), for
                a report while the build runs; never written.
        """
        from n2n_gym.measure import Measurement

        pending = self.pending()
        if any(pending.values()) and not partial:
            raise TaskError(f"the build in {self.folder} is not finished: {pending} to go")
        latency = self._latencies()
        repeats = {}
        for path, _ in self._shards("repeat", self.repeat_students):
            if path.exists():
                for record in _read_jsonl(path):
                    repeats[json.dumps(record["ratios"])] = record["measurement"]
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
                repeat=None
                if again is None
                else {
                    "seed": self.repeat_task.eval_seed,
                    "accuracy": again["accuracy"],
                    "seconds": again.get("seconds"),
                },
            )
            rows.setdefault(row.key, row)
        teacher = self.task.load_teacher()
        measurer = self.task.build_measurer(teacher)
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
                if k not in ("cache_path", "table", "measurer", "constraints")
            },
            context=measurer.context(),
            grid=self.grid,
            rows=rows,
            build={
                "students": len(rows),
                "measured_seconds": seconds,
                "wall_seconds": build_seconds,
                "repeat_seed": self.repeat_task.eval_seed,
                "curve_points": self.task.curve_points,
                "torch": _torch_version(),
                "created": time.strftime("%Y-%m-%d"),
            },
        )
        if out is not None and not partial:
            table.save(out)
        return table

    def _cached_records(self, skip: set[str]) -> list[dict[str, Any]]:
        """Measurements of students not in a shard yet, from the build's cache."""
        from n2n_gym.arch import InvalidArchitecture
        from n2n_gym.cache import MeasurementCache, measurement_key

        path = self.folder / "cache.sqlite"
        if not path.exists():
            return []
        context = self.task.build_measurer().context()
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


# ---- the command line ---------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None):
    parser = OneLineParser(
        prog=program("python -m n2n_gym.tabulate"),
        description="Build a measured table of a grid of students, or report on one.",
        epilog="examples: python -m n2n_gym.tabulate --workers 2 | python -m n2n_gym.tabulate --stats",
    )
    parser.add_argument(
        "--teacher", default="default", help="teacher checkpoint (default: the bundled one)"
    )
    parser.add_argument(
        "--teacher-arch",
        default=None,
        help="architecture of a plain state dict: zoo or torchvision name, or package.module:function",
    )
    parser.add_argument(
        "--allow-pickle",
        action="store_true",
        help="accept a whole pickled model as --teacher (runs code from the file)",
    )
    parser.add_argument("--dataset", default="mnist", help="data set (default: mnist)")
    parser.add_argument("--data-dir", default=None, help="its folder (not needed for mnist)")
    parser.add_argument(
        "--fidelity",
        default=None,
        help="a preset or a JSON dict of DistillConfig fields (default: the default fidelity)",
    )
    parser.add_argument(
        "--ratios",
        type=float,
        nargs="+",
        default=[0.5, 1.0],
        help="widths a kept unit may take (default: 0.5 1.0)",
    )
    parser.add_argument(
        "--shrink-fixed",
        action="store_true",
        help="also shrink the units that cannot be removed (the stem)",
    )
    parser.add_argument("--workers", type=int, default=2, help="measuring processes (default: 2)")
    parser.add_argument("--ray-address", default=None, help="measure on a Ray cluster instead")
    parser.add_argument(
        "--curve-points",
        type=int,
        default=4,
        help="validations along each student's budget (default: 4)",
    )
    parser.add_argument(
        "--repeat-fraction",
        type=float,
        default=0.1,
        help="share measured again with another seed (default: 0.1)",
    )
    parser.add_argument("--repeat-seed", type=int, default=1, help="that seed (default: 1)")
    parser.add_argument(
        "--out",
        default=None,
        help="the table file (default: the shipped table's path for the default teacher, else NAME.json.gz)",
    )
    parser.add_argument(
        "--build-dir",
        default=None,
        help="shards, cache and latencies (default: tables-build/NAME)",
    )
    parser.add_argument(
        "--stats",
        action="store_true",
        help="print the difficulty report of --table (or the shipped table; with --build-dir: of "
        "what that build has measured so far) and exit",
    )
    parser.add_argument("--table", default=None, help="the table --stats reports on")
    parser.add_argument(
        "--budget", type=int, default=500, help="random-search budget of --stats (default: 500)"
    )
    return parser.parse_args(argv)


def _default_out(args) -> Path:
    shipped = shipped_table(args.teacher, args.dataset)
    if shipped is not None:
        return shipped
    return Path(f"{Path(args.teacher).stem}-{args.dataset}-joint.json.gz")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.stats and not args.build_dir:
        return _stats(args)
    from rich.console import Console
    from tqdm import tqdm

    for name in ("workers", "curve_points"):
        if getattr(args, name) < 1:
            return fail(f"--{name.replace('_', '-')}={getattr(args, name)} must be at least 1")
    if not 0.0 <= args.repeat_fraction <= 1.0:
        return fail(f"--repeat-fraction={args.repeat_fraction} must be between 0 and 1")
    try:
        fidelity = (
            json.loads(args.fidelity)
            if args.fidelity and args.fidelity.startswith("{")
            else args.fidelity
        )
        with argument_names(arch="--teacher-arch", allow_pickle="--allow-pickle"):
            task = Task.from_kwargs(
                teacher=args.teacher,
                teacher_arch=args.teacher_arch,
                allow_pickle=args.allow_pickle,
                dataset=args.dataset,
                data_dir=args.data_dir,
                **({"fidelity": fidelity} if fidelity else {}),
            )
        grid = joint_grid(task.teacher_spec, args.ratios, shrink_fixed=args.shrink_fixed)
        out = Path(args.out) if args.out else _default_out(args)
        name = out.name.removesuffix(".gz").removesuffix(".json")
        folder = Path(args.build_dir) if args.build_dir else Path("tables-build") / name
        build = TableBuild(
            task,
            grid,
            folder,
            name,
            curve_points=args.curve_points,
            repeat_fraction=args.repeat_fraction,
            repeat_seed=args.repeat_seed,
        )
        build.check_folder()
    except (TaskError, ValueError, json.JSONDecodeError) as error:
        return fail(str(error))
    console = Console(stderr=True)
    if args.stats:  # a provisional report on a build that may still run
        table = build.assemble(None, partial=True)
        wide = Console(width=200) if not sys.stdout.isatty() else Console()
        wide.print(f"provisional: {len(table)} of {len(build.students)} students measured")
        _print_stats(table, args.budget, wide)
        return 0
    pending = build.pending()
    console.print(
        f"table {name}: {len(build.students)} students ({len(grid)} grid points), "
        f"{len(build.repeat_students)} repeated with seed {args.repeat_seed}; to go: {pending}; "
        f"build folder {folder}"
    )
    started = time.perf_counter()
    bars: dict[str, Any] = {}

    def progress(phase: str, result: Any) -> None:
        if phase not in bars:
            total = {
                "sample": pending["repeat"],
                "shard": pending["measure"],
                "repeat": pending["repeat"],
                "latency": pending["latency"],
            }
            bars[phase] = tqdm(total=total[phase], desc=phase, unit="student", smoothing=0.05)
        bars[phase].update(1)

    try:
        build.measure(args.workers, args.ray_address, progress)
        build.latency(progress)
    except KeyboardInterrupt:
        console.print(
            f"interrupted: run the same command to continue ({folder} keeps what is done)"
        )
        return 130
    finally:
        for bar in bars.values():
            bar.close()
    table = build.assemble(out, build_seconds=time.perf_counter() - started)
    console.print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB, {len(table)} students)")
    _print_stats(table, args.budget, console)
    return 0


def _stats(args) -> int:
    from rich.console import Console

    path = Path(args.table) if args.table else shipped_table("default", "mnist")
    try:
        table = load_table(path)
    except TableError as error:
        return fail(str(error))
    _print_stats(table, args.budget, Console(width=200) if not sys.stdout.isatty() else Console())
    return 0


def _print_stats(table: Table, budget: int, console: Any) -> None:
    from rich.table import Table as RichTable

    report = table.difficulty(budget=budget)
    noise = table.noise()
    out = RichTable(title=f"table {table.name}: default reward settings")
    out.add_column("quantity")
    out.add_column("value", justify="right")
    out.add_row("students", f"{report['students']} ({report['errors']} errors)")
    out.add_row("teacher accuracy", f"{table.teacher_accuracy:.4f}")
    out.add_row("optimum reward", f"{report['optimum']:.4f}")
    out.add_row(
        "optimum student",
        f"{report['optimum_student']} (acc {report['optimum_accuracy']:.4f}, "
        f"{report['optimum_params']} params)",
    )
    for pct, count in report["within"].items():
        out.add_row(f"within {pct} of the optimum", str(count))
    q = report["reward_quantiles"]
    out.add_row(
        "reward min / q25 / median / q75 / max", " / ".join(f"{q[k]:.3f}" for k in sorted(q))
    )
    for label, key in (("optimum", "reach_optimum"), ("99% of optimum", "reach_99")):
        r = report[key]
        out.add_row(
            f"random search to reach the {label}",
            f"{r['expected_evaluations']:.0f} evaluations expected; "
            f"P(within {budget}) = {r['p_within_budget']:.2f}",
        )
    if noise.get("repeated", 0) >= 2:
        spearman = table_vs_repeat(table)
        out.add_row(
            "second seed",
            f"{noise['repeated']} students: accuracy std {noise['accuracy_std']:.4f}; "
            f"Spearman accuracy {spearman['accuracy']:.3f}, reward {spearman['reward']:.3f}",
        )
    seconds = [r.measurement.seconds for r in table.rows.values() if r.measurement.seconds]
    if seconds:
        out.add_row(
            "live seconds per student",
            f"median {statistics.median(seconds):.2f}, total {sum(seconds) / 3600:.2f} h",
        )
    console.print(out)


def table_vs_repeat(table: Table) -> dict[str, float]:
    """Spearman correlation of the table's accuracy and reward with the second seed's."""
    from scipy.stats import spearmanr

    from n2n_gym.reward import compute_reward

    first, second, reward_first, reward_second = [], [], [], []
    for row in table.rows.values():
        m = row.measurement
        if not (m.ok and row.repeat and row.repeat.get("accuracy") is not None):
            continue
        first.append(m.accuracy)
        second.append(row.repeat["accuracy"])
        for accuracy_, into in (
            (m.accuracy, reward_first),
            (row.repeat["accuracy"], reward_second),
        ):
            into.append(
                compute_reward(
                    accuracy_, table.teacher_accuracy, m.params, table.teacher.params, m.flops
                ).reward
            )
    return {
        "accuracy": float(spearmanr(first, second).statistic),
        "reward": float(spearmanr(reward_first, reward_second).statistic),
        "students": len(first),
    }


if __name__ == "__main__":
    sys.exit(main())
