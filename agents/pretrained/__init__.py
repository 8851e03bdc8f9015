"""Controllers trained in advance, shipped with the package: ``--init-policy pretrained:NAME``.

Their observations are network-independent layer descriptors, so a controller trained on one
teacher starts a search on another (policy transfer, as N2N learning proposes). Each file is a
REINFORCE agent saved by ``train_agent.py``; ``bench/transfer.py`` trains them and measures what
starting from them is worth.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["PREFIX", "PRETRAINED", "policy_path"]

PREFIX = "pretrained:"
# name -> (file in this folder, what it learned)
PRETRAINED: dict[str, tuple[str, str]] = {
    "removal": (
        "removal.zip",
        "bidirectional REINFORCE controller trained on N2NRemoval-Tab-v0 (the small MNIST "
        "teacher's 128 removal students, from its measured table)",
    ),
}


def policy_path(value: str) -> Path:
    """The agent checkpoint ``--init-policy`` names: ``pretrained:NAME``, a run directory, or a file.

    Raises:
        ValueError: an unknown pretrained name, or no checkpoint at the path (one line each).
    """
    if value.startswith(PREFIX):
        name = value.removeprefix(PREFIX)
        if name not in PRETRAINED:
            known = ", ".join(PREFIX + n for n in PRETRAINED)
            raise ValueError(
                f"--init-policy {value}: no pretrained policy {name!r}; shipped: {known}"
            )
        path = Path(__file__).with_name(PRETRAINED[name][0])
        if not path.is_file():
            raise ValueError(f"--init-policy {value}: {path} is missing; reinstall n2n-gym")
        return path
    path = Path(value).expanduser()
    from n2n_gym.runs import CHECKPOINT_FILE  # after parsing: the runs module loads torch

    path = path / CHECKPOINT_FILE if path.is_dir() else path
    if not path.is_file():
        raise ValueError(
            f"--init-policy {value}: no agent checkpoint at {path}; pass a run directory, an "
            f"agent .zip or one of {', '.join(PREFIX + n for n in PRETRAINED)}"
        )
    return path
