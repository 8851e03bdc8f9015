"""The selection, final training and baselines of a finished search, shown at a terminal
(``train_agent.py``, ``evaluate.py``)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from n2n_gym.atomic import write_json_atomic
from n2n_gym.cli import default_threads, markdown, progress, show_table
from n2n_gym.finalize import FINAL_TRAINING, finish_run, report_table
from n2n_gym.runs import REPORT_FILE, read_best_student, read_run_task

if TYPE_CHECKING:
    from rich.console import Console

    from n2n_gym.arch import StudentDescription
    from n2n_gym.distill import DistillConfig

__all__ = ["baselines_with_progress", "finish_with_progress", "select_with_progress"]


def finish_with_progress(run_dir: Path, console: Console, **kwargs: Any) -> Path:
    """:func:`~n2n_gym.finalize.finish_run` with a progress bar over epochs; prints the report."""
    # Refuse a folder that is not a finished-enough run before drawing any progress bar.
    read_run_task(run_dir)
    if kwargs.get("student") is None:
        read_best_student(run_dir)
    epochs = kwargs.get("config", FINAL_TRAINING).epochs
    with progress(epochs, "final training", "epoch") as bar:

        def on_epoch(entry: dict[str, float]) -> None:
            bar.update(1)
            bar.set_postfix(val=f"{entry['val_accuracy']:.4f}", loss=f"{entry['loss']:.4g}")

        report, path = finish_run(run_dir, on_epoch=on_epoch, **kwargs)
    show_table(console, report_table(report, path))
    return path


def select_with_progress(
    run_dir: Path, out_dir: Path, final: DistillConfig, console: Console, **kwargs: Any
) -> StudentDescription:
    """:func:`~n2n_gym.selection.select_student` with a progress bar over its candidates; prints
    each candidate's validation accuracy and which was chosen."""
    from rich.table import Table

    from n2n_gym.selection import SelectionConfig, select_student, selection_candidates

    config = kwargs.pop("config", SelectionConfig())
    candidates = selection_candidates(run_dir, config)
    count = len(candidates)
    with progress(count, "selection", "candidate") as bar:

        def started(name: str, index: int, count: int) -> None:
            bar.update(index - bar.n)
            bar.set_postfix(training=name)

        student, record = select_student(
            run_dir, out_dir, config, final, on_candidate=started, candidates=candidates, **kwargs
        )
        bar.update(count - bar.n)
    table = Table(
        title=f"selection ({record['training']['epochs']} epochs of the final training each)",
        caption=f"validation accuracy; every candidate in {out_dir / 'selection.json'}",
    )
    for column in ("candidate", "parameters", "search reward", "validation accuracy"):
        table.add_column(column, justify="left" if column == "candidate" else "right")
    for entry in record["candidates"].values():
        reward = entry.get("search_reward")
        accuracy = entry.get("val_accuracy")
        table.add_row(
            entry["name"] + (" (chosen)" if entry["name"] == record["chosen"] else ""),
            f"{entry['params']:,}",
            "-" if reward is None else f"{reward:.4f}",
            entry.get("error", "-") if accuracy is None else f"{100 * accuracy:.2f} %",
        )
    show_table(console, table)
    return student


def baselines_with_progress(
    folder: Path,
    names: list[str] | tuple[str, ...],
    console: Console,
    *,
    match: str = "params",
    device: str = "auto",
    threads: int | None = None,
) -> dict[str, Any]:
    """:func:`~n2n_gym.baselines.run_baselines` on the finished student in ``folder`` with a
    progress bar over epochs; writes the comparison as Markdown beside its JSON, adds each
    baseline's figures to the student's ``report.json`` (``baselines``, or ``baselines_flops``
    with ``match="flops"``) and prints the table (``threads``: this job's torch threads, for the
    warning when jobs share the cores).

    Returns:
        The comparison (``baselines.json``'s content); a baseline that failed holds ``error``.
    """
    from n2n_gym.baselines import (
        baselines_file,
        baselines_table,
        read_baseline_source,
        run_baselines,
    )
    from n2n_gym.shared_cores import warn_shared_cores

    source = read_baseline_source(folder)  # refuses a wrong folder before any work
    warn_shared_cores(console, source.folder, threads or default_threads())
    with progress(source.config.epochs * len(names), "baselines", "epoch") as bar:

        def on_epoch(name: str, entry: dict[str, float]) -> None:
            bar.update(1)
            bar.set_postfix(baseline=name, val=f"{entry['val_accuracy']:.4f}")

        results = run_baselines(source, list(names), match=match, device=device, on_epoch=on_epoch)
    table = baselines_table(results)
    written = source.folder / baselines_file(match)
    summary = written.with_suffix(".md")
    summary.write_text(markdown(table) + "\n")
    # The student's report names its comparison, so whoever reads it sees the baselines too.
    report = dict(source.report)
    report[written.stem.replace("-", "_")] = {
        "file": written.name,
        "match": match,
        "students": {
            name: {key: row[key] for key in ("test_accuracy", "params", "flops", "latency_ms")}
            for name, row in results["baselines"].items()
            if "test_accuracy" in row
        },
    }
    write_json_atomic(source.folder / REPORT_FILE, report)
    show_table(console, table)
    console.print(f"wrote {written} and {summary}")
    return results
