"""Build a measured table: every student of a grid through the live evaluator, once.

::

    python -m n2n_gym.tabulate --workers 2                 # build (or continue) the default table
    python -m n2n_gym.tabulate --stats                     # how hard the shipped table is
    python -m n2n_gym.tabulate --teacher my.pt --dataset cifar10 --data-dir DATA --out my.json.gz

The build itself, its passes and its folder are :mod:`n2n_gym.table_build`.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from n2n_gym.arch import StudentDescription
from n2n_gym.cli import OneLineParser, fail, program
from n2n_gym.grid import Grid, joint_grid
from n2n_gym.table import Table, TableError, load_table, shipped_table
from n2n_gym.table_build import TableBuild
from n2n_gym.task import Task, TaskError
from n2n_gym.teachers.errors import argument_names

__all__ = ["main", "table_vs_repeat", "visited_students"]


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
    parser.add_argument(
        "--sample",
        type=int,
        default=None,
        metavar="N",
        help="measure N students spread over the grid instead of all of it (a grid too big to "
        "enumerate, e.g. a surrogate's training data)",
    )
    parser.add_argument("--sample-seed", type=int, default=0, help="the sample's seed (default: 0)")
    parser.add_argument(
        "--students-from",
        nargs="+",
        default=None,
        metavar="RUN",
        help="measure the students these search runs visited (their folders) instead",
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
        help="print the difficulty report of --table (or the table shipped for --teacher and "
        "--dataset; with --build-dir: of what that build has measured so far) and exit",
    )
    parser.add_argument("--table", default=None, help="the table --stats reports on")
    parser.add_argument(
        "--snapshot",
        default=None,
        metavar="PATH",
        help="write what the build in --build-dir has measured so far as a provisional table "
        "(marked so in its build record) and exit; the build may keep running",
    )
    parser.add_argument(
        "--budget", type=int, default=500, help="random-search budget of --stats (default: 500)"
    )
    return parser.parse_args(argv)


def _default_out(args) -> Path:
    shipped = shipped_table(args.teacher, args.dataset)
    if shipped is not None and not (args.sample or args.students_from):
        return shipped
    teacher = Path(args.teacher.removeprefix("bundled:")).stem.removesuffix(f"_{args.dataset}")
    kind = "-sample" if args.sample else "-visited" if args.students_from else ""
    return Path(f"{teacher}-{args.dataset}-joint{kind}.json.gz")


def visited_students(runs: Sequence[str | Path], grid: Grid) -> list[StudentDescription]:
    """The distinct students the search runs in ``runs`` measured, in the order first visited.

    Raises:
        TaskError: a folder is not a run, or a run searched another teacher.
    """
    from n2n_gym.runs import EVALUATIONS_FILE, read_evaluations

    students: dict[tuple[float, ...], StudentDescription] = {}
    for run in runs:
        if not (Path(run) / EVALUATIONS_FILE).is_file():
            raise TaskError(
                f"--students-from {run}: no {EVALUATIONS_FILE} there; pass a run folder"
            )
        for record in read_evaluations(run):
            if not record.get("student"):
                continue
            student = StudentDescription.from_dict(record["student"])
            if student.teacher != grid.teacher:
                raise TaskError(
                    f"--students-from {run}: that run searched another teacher; pass runs of "
                    "this --teacher"
                )
            students.setdefault(student.ratios, student)
    return list(students.values())


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.stats and not args.build_dir:
        return _stats(args)
    from rich.console import Console
    from tqdm import tqdm

    for name in ("workers", "curve_points"):
        if getattr(args, name) < 1:
            return fail(f"--{name.replace('_', '-')}={getattr(args, name)} must be at least 1")
    if args.sample is not None and args.students_from:
        return fail("pass --sample or --students-from, not both")
    if args.sample is not None and args.sample < 1:
        return fail(f"--sample={args.sample} must be at least 1")
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
        students = (
            grid.sample(args.sample, args.sample_seed)
            if args.sample
            else visited_students(args.students_from, grid)
            if args.students_from
            else None
        )
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
            students=students,
        )
        build.check_folder()
    except (TaskError, ValueError, json.JSONDecodeError) as error:
        return fail(str(error))
    console = Console(stderr=True)
    if args.snapshot:
        if not (folder / "manifest.json").is_file():
            return fail(f"--snapshot: {folder} holds no build yet; pass the --build-dir of one")
        table = build.assemble(None, build_seconds=build.wall_seconds(), partial=True)
        table = replace(
            table, build=table.build | {"provisional": f"{len(table)} of {len(build.students)}"}
        )
        table.save(args.snapshot)
        console.print(
            f"wrote {args.snapshot}: provisional, {len(table)} of {len(build.students)} students"
        )
        return 0
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
                "top": pending["top"],
                "latency": pending["latency"],
            }
            bars[phase] = tqdm(total=total[phase], desc=phase, unit="student", smoothing=0.05)
        bars[phase].update(1)

    try:
        build.measure(args.workers, args.ray_address, progress)
        build.top(args.workers, args.ray_address, progress)
        build.latency(progress)
    except KeyboardInterrupt:
        console.print(
            f"interrupted: run the same command to continue ({folder} keeps what is done)"
        )
        return 130
    finally:
        for bar in bars.values():
            bar.close()
        build.record_wall(time.perf_counter() - started)
    table = build.assemble(out, build_seconds=build.wall_seconds())
    console.print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB, {len(table)} students)")
    _print_stats(table, args.budget, console)
    return 0


def _stats(args) -> int:
    from rich.console import Console

    path = Path(args.table) if args.table else shipped_table(args.teacher, args.dataset)
    if path is None:
        return fail(
            f"no table is shipped for --teacher {args.teacher} on --dataset {args.dataset}: "
            "pass --table PATH"
        )
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
    out.add_row(
        "seeds per student",
        ", ".join(f"{n} students x {k}" for k, n in report["students_by_seeds"].items()),
    )
    out.add_row(
        "target (best seed-mean reward)",
        f"{report['target']:.4f}: {report['target_student']} (mean acc "
        f"{report['target_accuracy']:.4f} over {report['target_seeds']} seeds, "
        f"{report['target_params']} params)",
    )
    out.add_row(
        "noise band",
        f"{report['band']:.4f} (1.96 x sigma {report['noise_std']:.4f} x sqrt(2/"
        f"{report['target_seeds']}); top 5 % resolved with 3+ seeds: "
        f"{'yes' if report['resolved'] else 'no'})",
    )
    out.add_row(
        "one-seed optimum",
        f"{report['optimum']:.4f}: {report['optimum_student']} (acc "
        f"{report['optimum_accuracy']:.4f}, {report['optimum_params']} params)",
    )
    for pct, count in report["within"].items():
        out.add_row(f"seed means within {pct} of the target", str(count))
    q = report["reward_quantiles"]
    out.add_row(
        "reward min / q25 / median / q75 / max", " / ".join(f"{q[k]:.3f}" for k in sorted(q))
    )
    for label, key in (("noise band", "reach_optimum"), ("99% of the target", "reach_99")):
        r = report[key]
        out.add_row(
            f"random search to reach the {label}",
            f"{r['expected_evaluations']:.0f} evaluations expected; "
            f"P(within {budget}) = {r['p_within_budget']:.2f}",
        )
    if noise.get("repeated", 0) >= 2:
        spearman = table_vs_repeat(table)
        out.add_row(
            "second seed (random sample)",
            f"{noise['repeated']} students: accuracy std {noise['accuracy_std']:.4f}, median "
            f"|difference| {noise['median_abs_diff']:.4f}; "
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
    """Spearman correlation of the table's accuracy and reward with the next seed's, over the
    random noise sample (the top students' extra seeds would bias it)."""
    from scipy.stats import spearmanr

    rows = table.noise_sample()
    first = [row.seed_accuracies[0] for row in rows]
    second = [row.seed_accuracies[1] for row in rows]
    return {
        "accuracy": float(spearmanr(first, second).statistic),
        "reward": float(
            spearmanr(
                [table.reward(row, accuracy=a) for row, a in zip(rows, first, strict=True)],
                [table.reward(row, accuracy=a) for row, a in zip(rows, second, strict=True)],
            ).statistic
        ),
        "students": len(rows),
    }


if __name__ == "__main__":
    sys.exit(main())
