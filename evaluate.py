"""Finish, compare and benchmark searches: ``python evaluate.py`` is ``n2n-gym evaluate``.

The command lives in :mod:`n2n_gym.commands.evaluate` (installed with the package); this file
keeps the checkout's ``python evaluate.py ...`` working with the same flags.
"""

import sys

from n2n_gym.commands.evaluate import *  # noqa: F403 (the command's names, for scripts and tests)
from n2n_gym.commands.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
