"""``python -m n2n_gym.teachers``: see :mod:`n2n_gym.teachers.cli`."""

import sys

from n2n_gym.teachers.cli import main

if __name__ == "__main__":
    sys.exit(main())
