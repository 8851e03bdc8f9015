"""MkDocs hook: the command-line reference is generated from the parsers, so it cannot drift.

A page line ``<!-- cli: train -->`` becomes the ``--help`` of ``n2n-gym train``.
"""

from __future__ import annotations

import contextlib
import io
import os
import re

MARKER = re.compile(r"^<!-- cli: ([\w-]+) -->$", re.MULTILINE)


def _help(command: str) -> str:
    from n2n_gym.commands import main

    os.environ["COLUMNS"] = "100"  # argparse wraps at the terminal width: one fixed width here
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
        main([command, "--help"] if command != "n2n-gym" else ["--help"])
    return out.getvalue().rstrip()


def on_page_markdown(markdown: str, **kwargs) -> str:
    return MARKER.sub(lambda m: f"```text\n{_help(m.group(1))}\n```", markdown)
