"""Does a search react to its rewards? The same seed under two very different reward settings.

A search that barely moves its policy proposes nearly the same students in the same order however
the students are scored. On the joint table (free rewards) each REINFORCE learning rate runs with
seed 0 twice — default reward, and a 15,000-parameter limit that makes most students worthless —
and counts how many of the first 100 evaluations (episodes) propose the same student, position by
position. Random search (which ignores rewards) gives the ceiling::

    python bench/policy_movement.py
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import train_agent  # noqa: E402
from n2n_gym.runs import read_evaluations  # noqa: E402

SETTINGS = ({}, {"constraints": {"max_params": 15000}})
FIRST = 100


def students(algo: str, hyperparams: dict, env_kwargs: dict, out: Path) -> list[str]:
    argv = ["--algo", algo, "--env", "N2NJoint-Tab-v0", "--seed", "0", "--budget", str(FIRST)]
    argv += ["--out", str(out), "--threads", "1", "--env-kwargs", json.dumps(env_kwargs)]
    if hyperparams:
        argv += ["--hyperparams", json.dumps(hyperparams)]
    assert train_agent.main(argv) == 0
    return [record["student_key"] for record in read_evaluations(out)][:FIRST]


def main() -> None:
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        cases = [("random", {})] + [
            ("reinforce", {"learning_rate": lr}) for lr in (0.003, 0.01, 0.03)
        ]
        for index, (algo, hyperparams) in enumerate(cases):
            runs = [
                students(algo, hyperparams, kwargs, Path(folder, f"{index}-{n}"))
                for n, kwargs in enumerate(SETTINGS)
            ]
            same = sum(a == b for a, b in zip(*runs, strict=False))
            rows.append({"algo": algo, "hyperparams": hyperparams, "same_of_first_100": same})
    table = Table(
        title=f"same student at the same position, first {FIRST} evaluations, two rewards"
    )
    for column in ("search", "settings", "same"):
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(row["algo"], json.dumps(row["hyperparams"]), str(row["same_of_first_100"]))
    Console().print(table)
    (ROOT / "bench" / "results_policy_movement.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
