"""Search for a compressed student: ``python train_agent.py`` is ``n2n-gym train``.

The command lives in :mod:`n2n_gym.commands.train` (installed with the package); this file keeps
the checkout's ``python train_agent.py ...`` working with the same flags.
"""

import sys

from n2n_gym.commands.train import *  # noqa: F403 (the command's names, for scripts and tests)
from n2n_gym.commands.train import main

if __name__ == "__main__":
    sys.exit(main())
