"""The final training of a finished search, shown at a terminal (``train_agent.py``, ``evaluate.py``)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from n2n_gym.cli import progress, show_table
from n2n_gym.finalize import FINAL_TRAINING, finish_run, report_table
from n2n_gym.runs import read_best_student, read_run_task

if TYPE_CHECKING:
    from rich.console import Console

__all__ = ["finish_with_progress"]


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
