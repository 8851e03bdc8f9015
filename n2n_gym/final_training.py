"""The selection and final training of a finished search, shown at a terminal (``train_agent.py``, ``evaluate.py``)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from n2n_gym.cli import progress, show_table
from n2n_gym.finalize import FINAL_TRAINING, finish_run, report_table
from n2n_gym.runs import read_best_student, read_run_task

if TYPE_CHECKING:
    from rich.console import Console

    from n2n_gym.arch import StudentDescription
    from n2n_gym.distill import DistillConfig

__all__ = ["finish_with_progress", "select_with_progress"]


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
