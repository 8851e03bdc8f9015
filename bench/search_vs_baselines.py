"""Does the searched student beat the simple students of its size? Measured over seeds.

For one teacher (``--env``, the pipeline's removal environment, and ``--env-kwargs``) and one
compression factor, each seed runs:

1. the default pipeline, ``n2n-gym train --pipeline --compress Nx`` with that seed for the
   searches and for the final training (``--final-kwargs '{"seed": s}'``);
2. ``evaluate.py RUN --baselines`` on its finished student: the baselines sized to its parameter
   count, trained with the same final training and seed (so their initialisation and data order
   vary with the seed as the student's training does); the scratch baselines only on the first
   ``--scratch-seeds`` seeds (they cost a full training each and answer a side question);
3. the same with ``--match flops``: sized to the student's multiply-adds instead.

Then it reports, per method, the mean over seeds with a 95 % t-interval of test accuracy,
parameters, MACs and CPU latency, matched on parameters and on MACs, as rich tables, a JSON file
with every seed's values (``bench/results_baselines_<name>.json``) and a Markdown page
(``docs/baselines/<name>-<N>x.md``). Every step is resumable: rerun the same command and
finished pipelines and baselines are kept (a stopped pipeline continues with ``--resume``)::

    python bench/search_vs_baselines.py --name fashion-mnist --env N2NRemoval-FashionMNIST-v0 \\
        --env-kwargs '{"data_dir": "../data"}' --seeds 3
    python bench/search_vs_baselines.py --name narrow-resnet-mnist \\
        --env N2NRemoval-NarrowResNet-MNIST-v0 --seeds 3
    python bench/search_vs_baselines.py --name mnist --seeds 1
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from n2n_gym.baselines import baselines_file  # noqa: E402
from n2n_gym.cli import markdown  # noqa: E402

SIZED = ("uniform-width", "magnitude-pruned")  # built to the student's size
SCRATCH = ("scratch-labels", "scratch-distilled")  # the student's architecture, fresh
FIGURES = ("test_accuracy", "params", "flops", "latency_ms")
TIMES_FILE = "pipeline_seconds.json"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--name", required=True, help="the comparison's name (data set, teacher)")
    parser.add_argument("--env", default="N2NRemoval-v2", help="the pipeline's removal env")
    parser.add_argument("--env-kwargs", default="{}", help="JSON gymnasium.make arguments")
    parser.add_argument("--compress", type=float, default=10.0, help="the factor (default: 10)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--scratch-seeds", type=int, default=1, help="seeds with scratch baselines")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of each step")
    parser.add_argument(
        "--matches", default="params,flops", help="size the baselines by params, flops or both"
    )
    parser.add_argument("--pipeline-args", default="", help="extra train flags, e.g. '--budget 4'")
    parser.add_argument(
        "--final-kwargs", default="{}", help="JSON DistillConfig fields of the final training"
    )
    parser.add_argument("--out", type=Path, help="default: runs/baselines-<name>-<N>x")
    parser.add_argument("--results", type=Path, help="default: bench/results_baselines_<name>.json")
    parser.add_argument("--markdown", type=Path, help="default: docs/baselines/<name>-<N>x.md")
    args = parser.parse_args(argv)
    tag = f"{args.name}-{args.compress:g}x"
    args.out = args.out or ROOT / "runs" / f"baselines-{tag}"
    args.results = args.results or ROOT / "bench" / f"results_baselines_{args.name}.json"
    args.markdown = args.markdown or ROOT / "docs" / "baselines" / f"{tag}.md"
    if args.seeds < 1 or args.scratch_seeds < 0 or args.threads < 1:
        parser.error("--seeds and --threads must be at least 1, --scratch-seeds at least 0")
    args.matches = [m.strip() for m in args.matches.split(",") if m.strip()]
    if not args.matches or set(args.matches) - {"params", "flops"}:
        parser.error("--matches: params, flops or params,flops")
    return args


def run(command: list[str], log: Path) -> None:
    """Run one step with its output in ``log``; a failure names the log."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as stream:
        done = subprocess.run(command, cwd=ROOT, stdout=stream, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command[1:3])}... failed ({done.returncode}); see {log}")


def pipeline(args: argparse.Namespace, seed: int, console: Console) -> Path:
    """The seed's finished pipeline run (run now unless its report is there)."""
    folder = args.out / f"seed-{seed}"
    if (folder / "report.json").is_file():
        return folder
    command = [sys.executable, "train_agent.py", "--pipeline", "--compress", f"{args.compress:g}x"]
    command += ["--env", args.env, "--env-kwargs", args.env_kwargs, "--seed", str(seed)]
    final = json.loads(args.final_kwargs) | {"seed": seed}
    command += ["--final-kwargs", json.dumps(final), "--threads", str(args.threads)]
    command += ["--out", str(folder), *args.pipeline_args.split()]
    # A pipeline stopped during its first stage has a stage folder but no pipeline.json yet.
    command += ["--resume"] if folder.is_dir() and any(folder.iterdir()) else []
    console.print(f"seed {seed}: pipeline into {folder}")
    started = time.perf_counter()
    run(command, args.out / "logs" / f"pipeline-{seed}.log")
    times_path = args.out / TIMES_FILE
    times = json.loads(times_path.read_text()) if times_path.is_file() else {}
    if "--resume" not in command:  # a resumed run's wall-clock is not one run's
        times[str(seed)] = time.perf_counter() - started
        times_path.write_text(json.dumps(times, indent=2) + "\n")
    return folder


def baselines(args: argparse.Namespace, folder: Path, seed: int, match: str) -> dict[str, Any]:
    """The seed's baselines matched on ``match`` (trained now unless recorded)."""
    names = list(SIZED)
    if match == "params" and seed < args.first_seed + args.scratch_seeds:
        names += SCRATCH
    command = [sys.executable, "evaluate.py", str(folder), "--baselines", "--match", match]
    command += ["--only", ",".join(names), "--threads", str(args.threads)]
    run(command, args.out / "logs" / f"baselines-{match}-{seed}.log")
    return json.loads((folder / baselines_file(match)).read_text())


def _selected(folder: Path) -> str | None:
    found = sorted(folder.glob("*-select/selection.json"))
    return json.loads(found[0].read_text()).get("chosen") if found else None


def summary(values: list[float]) -> dict[str, Any]:
    """Mean over seeds with a 95 % t-interval (none from one seed)."""
    from scipy import stats

    mean = float(np.mean(values))
    if len(values) < 2:
        return {"mean": mean, "ci": None, "n": len(values)}
    half = float(stats.t.ppf(0.975, len(values) - 1) * stats.sem(values))
    return {"mean": mean, "ci": [mean - half, mean + half], "n": len(values)}


def aggregate(per_seed: dict[int, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per method, each figure's per-seed values and their summary."""
    methods: dict[str, dict[str, list[float]]] = {}
    for results in per_seed.values():
        rows = {"teacher": results["teacher"], "search": results["student"]}
        rows |= {n: r for n, r in results["baselines"].items() if "test_accuracy" in r}
        for method, row in rows.items():
            for figure in FIGURES:
                if row.get(figure) is not None:
                    methods.setdefault(method, {}).setdefault(figure, []).append(row[figure])
    return {
        method: {f: {"per_seed": v, **summary(v)} for f, v in figures.items()}
        for method, figures in methods.items()
    }


def table(title: str, methods: dict[str, dict[str, Any]]) -> Table:
    out = Table(title=title)
    for column in ("method", "seeds", "test accuracy % [95 % CI]", "parameters", "MACs", "latency"):
        out.add_column(column, justify="left" if column == "method" else "right")
    for method, figures in methods.items():
        acc = figures["test_accuracy"]
        ci = "" if acc["ci"] is None else f" [{100 * acc['ci'][0]:.2f}, {100 * acc['ci'][1]:.2f}]"
        latency = figures.get("latency_ms")
        out.add_row(
            method,
            str(acc["n"]),
            f"{100 * acc['mean']:.2f}{ci}",
            f"{figures['params']['mean']:,.0f}",
            f"{figures['flops']['mean']:,.0f}",
            "" if latency is None else f"{latency['mean']:.2f} ms",
        )
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console()
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    per_match: dict[str, dict[int, dict[str, Any]]] = {match: {} for match in args.matches}
    for seed in seeds:
        folder = pipeline(args, seed, console)
        for match in per_match:
            console.print(f"seed {seed}: baselines matched on {match}")
            per_match[match][seed] = baselines(args, folder, seed, match)
    times_path = args.out / TIMES_FILE
    times = json.loads(times_path.read_text()) if times_path.is_file() else {}
    results = {
        "name": args.name,
        "env": args.env,
        "env_kwargs": json.loads(args.env_kwargs),
        "compress": args.compress,
        "seeds": list(seeds),
        "pipeline_seconds": times,
        # which candidate the select stage trained fully (none: a pipeline without one)
        "selected": {str(seed): _selected(args.out / f"seed-{seed}") for seed in seeds},
        "matched_on": {match: aggregate(rows) for match, rows in per_match.items()},
    }
    args.results.write_text(json.dumps(results, indent=2) + "\n")
    pages = []
    for match, methods in results["matched_on"].items():
        what = "parameter count" if match == "params" else "MACs per image"
        title = f"{args.name}, {args.compress:g}x: search vs baselines of the student's {what}"
        console.print(table(title, methods))
        pages.append(markdown(table(title, methods)))
    minutes = [s / 60 for s in times.values()]
    note = (
        f"Pipeline wall-clock: {', '.join(f'{m:.1f}' for m in minutes)} min per seed "
        f"(--threads {args.threads})."
        if minutes
        else ""
    )
    chosen = {seed: name for seed, name in results["selected"].items() if name}
    if chosen:
        note += (
            " The row `search` is the pipeline's finished student; its select stage chose "
            + ", ".join(f"{name} (seed {seed})" for seed, name in chosen.items())
            + "."
        )
    args.markdown.parent.mkdir(parents=True, exist_ok=True)
    args.markdown.write_text("\n\n".join([*pages, note.strip()]).strip() + "\n")
    console.print(f"wrote {args.results} and {args.markdown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
