"""The ``n2n-gym`` command, installed with the package: one entry point for every job.

    n2n-gym train ...        search for a compressed student (the checkout's train_agent.py)
    n2n-gym evaluate ...     finish a search, compare searches, baselines (evaluate.py)
    n2n-gym benchmark ...    benchmark search algorithms (evaluate.py --benchmark)
    n2n-gym tabulate ...     measure a grid of students into a table (python -m n2n_gym.tabulate)
    n2n-gym teachers ...     list the teacher zoo, train a teacher (python -m n2n_gym.teachers)
    n2n-gym surrogate ...    fit a surrogate, or show one (python -m n2n_gym.surrogate_fit)

``n2n-gym COMMAND --help`` lists a command's flags. Each command's logic is a module of this
package with a ``main(argv) -> exit status``; the checkout's scripts are thin entry points to the
same functions.
"""

from __future__ import annotations

import importlib
import sys
from importlib.metadata import PackageNotFoundError, version

__all__ = ["COMMANDS", "main"]

# name -> (module with main(argv), what it does, arguments put before the user's)
COMMANDS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "train": ("n2n_gym.commands.train", "search for a compressed student", ()),
    "evaluate": (
        "n2n_gym.commands.evaluate",
        "finish a search (final training, test report), compare searches, baselines",
        (),
    ),
    "benchmark": (
        "n2n_gym.commands.benchmark",
        "benchmark search algorithms over seeds and budgets (rliable statistics)",
        (),
    ),
    "tabulate": ("n2n_gym.tabulate", "measure a grid of students into a table", ()),
    "teachers": ("n2n_gym.teachers.cli", "list the teacher zoo, train a teacher", ()),
    "surrogate": (
        "n2n_gym.surrogate_fit",
        "fit a surrogate on sampled tables, or show one's validation",
        (),
    ),
}


def _usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = ["usage: n2n-gym COMMAND [flags]   (n2n-gym COMMAND --help lists its flags)", ""]
    lines += [f"  {name:<{width}}  {what}" for name, (_, what, _) in COMMANDS.items()]
    lines += ["", "example: n2n-gym train --algo reinforce   # the default search, offline, CPU"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run ``n2n-gym COMMAND ...``; returns the command's exit status (2 for bad input)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    if argv[0] == "--version":
        try:
            print(f"n2n-gym {version('n2n-gym')}")
        except PackageNotFoundError:
            print("n2n-gym (not installed)")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        from n2n_gym.task import closest

        guess = closest(name, list(COMMANDS))
        hint = f" (did you mean {guess}?)" if guess else ""
        print(
            f"n2n-gym: error: unknown command {name!r}{hint}; commands: {', '.join(COMMANDS)}",
            file=sys.stderr,
        )
        return 2
    module_name, _, before = COMMANDS[name]
    # argparse names the program after argv[0]: usage and errors then say "n2n-gym train".
    sys.argv[0] = f"n2n-gym {name}"
    try:
        return importlib.import_module(module_name).main([*before, *rest])
    except KeyboardInterrupt:  # while importing torch and the rest: nothing started yet
        print(f"n2n-gym {name}: interrupted", file=sys.stderr)
        return 130
