"""What the command-line scripts share: one-line errors, thread shares, tables and progress bars.

Library code logs; these helpers are for people at a terminal. Errors go to stderr as one plain
line — never through rich, which wraps at the terminal width and would break a message (and the
path in it) across lines.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

__all__ = [
    "OneLineParser",
    "cores",
    "fail",
    "field_docs",
    "markdown",
    "out_folder_problem",
    "program",
    "progress",
    "set_threads",
    "show_table",
]


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Help that wraps between words only: values such as ``reinforce,ppo,a2c`` or
    ``N2NJoint-FashionMNIST-Tab-v0`` stay whole; description and epilog keep their lines."""

    def _split_lines(self, text: str, width: int) -> list[str]:
        import textwrap

        return textwrap.wrap(
            " ".join(text.split()), width, break_long_words=False, break_on_hyphens=False
        )


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad command line in one line, with exit status 2, and wraps its
    help between words (:class:`HelpFormatter`)."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see --help)\n")


def field_docs(cls: type) -> dict[str, str]:
    """The docstring under each field of a dataclass, by field name (one line each): the
    command line's help comes from the same text as the code's documentation."""
    import ast
    import inspect
    import itertools
    import textwrap

    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs = {}
    for field, doc in itertools.pairwise(body):
        if (
            isinstance(field, ast.AnnAssign)
            and isinstance(field.target, ast.Name)
            and isinstance(doc, ast.Expr)
            and isinstance(doc.value, ast.Constant)
            and isinstance(doc.value.value, str)
        ):
            docs[field.target.id] = " ".join(doc.value.value.split())
    return docs


def markdown(table: Table) -> str:
    """A rich table as a Markdown table (its title as a heading line), every column kept."""

    def text(value: Any) -> str:
        plain = getattr(value, "plain", value)
        return " ".join(str(plain).split()).replace("|", "\\|")

    headers = [text(column.header) for column in table.columns]
    cells = [list(column.cells) for column in table.columns]
    rows = [[text(column[i]) for column in cells] for i in range(table.row_count)]
    lines = [f"**{text(table.title)}**", ""] if table.title else []
    lines += ["| " + " | ".join(headers) + " |", "|" + " --- |" * len(headers)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    if table.caption:
        lines += ["", text(table.caption)]
    # A blank line after: a line printed next is not read as one more row of the table.
    return "\n".join([*lines, ""])


def show_table(console: Console, table: Table) -> None:
    """Print ``table`` as drawn by rich on a terminal wide enough for it, else as Markdown, so
    that piped output, files and narrow terminals keep every column and cell whole."""
    if console.is_terminal and console.measure(table).maximum <= console.width:
        console.print(table)
    else:
        console.print(markdown(table), markup=False, highlight=False, soft_wrap=True)


class _LogLines:
    """tqdm's ``update`` / ``set_postfix`` / ``close`` as a line on stderr every ``every`` seconds
    (and at the end): progress that a log file or a pipe keeps readable."""

    def __init__(self, total: int, desc: str, unit: str, initial: int, every: float) -> None:
        import time

        self._clock = time.monotonic
        self.total, self.desc, self.unit, self.n = total, desc, unit, initial
        self._start = self._last = self._clock()
        self._first, self._every, self._postfix = initial, every, ""
        self._shown: tuple[int, str] | None = None  # the last line's count and postfix

    def update(self, count: int = 1) -> None:
        self.n += count
        if self._clock() - self._last >= self._every:
            self._line()

    def set_postfix(self, **values: Any) -> None:
        self._postfix = ", ".join(f"{key}={value}" for key, value in values.items())

    def close(self) -> None:
        if self._shown != (self.n, self._postfix):  # the last line may already say it all
            self._line()

    def _line(self) -> None:
        self._last = now = self._clock()
        elapsed = now - self._start
        done = self.n - self._first
        eta = elapsed / done * (self.total - self.n) if done and self.total else None
        text = f"{self.desc}: {self.n}/{self.total} {self.unit}s, {duration(elapsed)}"
        text += f", about {duration(eta)} left" if eta is not None else ""
        text += f" ({self._postfix})" if self._postfix else ""
        print(text, file=sys.stderr, flush=True)
        self._shown = (self.n, self._postfix)

    def __enter__(self) -> _LogLines:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def progress(total: int, desc: str, unit: str, initial: int = 0, every: float = 30.0) -> Any:
    """A progress bar on a terminal; elsewhere (a pipe, a log file) a line every ``every`` s."""
    if sys.stderr.isatty():
        from tqdm import tqdm

        return tqdm(total=total, initial=initial, desc=desc, unit=unit)
    return _LogLines(total, desc, unit, initial, every)


def program(module_form: str) -> str:
    """The name a command's usage and errors show: ``n2n-gym JOB`` when run that way, else the
    ``python -m ...`` form it was started with."""
    return sys.argv[0] if sys.argv and sys.argv[0].startswith("n2n-gym ") else module_form


def duration(seconds: float) -> str:
    """Seconds as people read them: ``42 s``, ``3.5 min``, ``1.2 h``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def fail(message: str, status: int = 2) -> int:
    """Print ``error: message`` as one unbroken line on stderr; returns the exit status."""
    print(f"error: {' '.join(str(message).split())}", file=sys.stderr, flush=True)
    return status


def cores() -> int:
    """CPU cores this process may use (its affinity mask, not the whole machine)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def default_threads() -> int:
    """Torch threads of a job not told how many: ``OMP_NUM_THREADS`` when it is set (the usual
    cap on a shared machine, which torch itself follows), else every core this process may use."""
    try:
        return max(1, int(os.environ["OMP_NUM_THREADS"]))
    except (KeyError, ValueError):
        return cores()


def set_threads(threads: int) -> None:
    """Give torch ``threads`` CPU threads in this process (its share of the cores)."""
    import torch

    torch.set_num_threads(max(1, threads))


def out_folder_problem(path: str | os.PathLike[str]) -> str | None:
    """Why ``path`` cannot be an output folder (``None`` if it can): checked before any teacher
    or data is loaded, so a bad ``--out`` fails in a second, not after the set-up."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        return "is a file; pass a folder (existing or new)"
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is a file, so no folder can be made under it; pass another folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        where = "it" if existing == path else str(existing)
        return f"cannot write in {where} (permission denied); pass a folder you can write"
    return None
