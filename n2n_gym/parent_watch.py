"""Worker processes that end with the process that started them."""

from __future__ import annotations

import os
import threading
import time

__all__ = ["exit_with_parent"]


def exit_with_parent(interval: float = 1.0) -> None:
    """End this process (``os._exit``) soon after its parent is gone.

    A pool worker busy with a long job (a benchmark run, a distillation) reads its task queue only
    between jobs, so when the process that started it is killed it would go on working for
    minutes, holding cores no one asked for. A daemon thread compares the parent's pid with the
    one at start-up every ``interval`` seconds; what the worker recorded so far (each evaluation is
    appended as it finishes) stays, and a rerun of the command continues from it. A pool's
    ``initializer`` (or the first thing it calls) is the place to call this.
    """
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()
