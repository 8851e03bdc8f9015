"""Does the surrogate stand for live distillation? The same searches, live and on the surrogate.

As NAS-Bench-301 validated its surrogate, this script runs random search and a learner
(``--learner``), ``--seeds`` seeds x ``--budget`` students each, twice through the benchmark
harness:

1. **live** on ``N2NJoint-NarrowResNet-MNIST-v0`` (real distillation at the surrogate's fidelity,
   learning curves of 4 points on the CPU, one shared measurement cache);
2. on its surrogate ``N2NJoint-NarrowResNet-MNIST-Sur-v0``;

then compares their anytime curves — the reward of each run's incumbent (the best reward it saw)
after 10, 25, 50 and 100 distinct students, IQM over seeds with 95 % bootstrap intervals — and
whether the two rank the algorithms alike; and every distinct student the live runs measured
against the surrogate's prediction of it (Kendall τ and Spearman of the reward, overall and
within the top 10 %, and of accuracy alone). Its live seeds (1000 on) are not those of the
searches whose students trained the surrogate (``--students-from`` runs), so the live runs visit
students the surrogate may never have seen. Results: ``bench/results_surrogate_validation.json``
and ``docs/benchmark/surrogate/validation.png`` (``--results``, ``--plot``).

Resumable: rerun the same command and finished runs are kept::

    python bench/surrogate_validation.py --seeds 3 --budget 100 --workers 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from n2n_gym.compare import load_runs  # noqa: E402
from n2n_gym.runs import incumbent_worth  # noqa: E402
from n2n_gym.statistics import anytime_iqm  # noqa: E402

LIVE_ENV = "N2NJoint-NarrowResNet-MNIST-v0"
SURROGATE_ENV = "N2NJoint-NarrowResNet-MNIST-Sur-v0"
# The surrogate's training measurements: CPU, 4-point learning curves (its fidelity).
LIVE_KWARGS = {"device": "cpu", "curve_points": 4}
FIRST_SEED = 1000
CHECKPOINTS = (10, 25, 50, 100)


def search(env: str, out: Path, algos: list[str], args: argparse.Namespace) -> None:
    # Relative to the project root, where the searches run: the folder's settings then match
    # whichever way the script was started, and the runs resume.
    cache = os.path.relpath(args.out / "live.sqlite", ROOT)
    kwargs = LIVE_KWARGS | {"cache_path": cache} if env == LIVE_ENV else {}
    command = [sys.executable, "-m", "n2n_gym.commands.benchmark", "--env", env]
    command += ["--algos", ",".join(algos), "--seeds", str(args.seeds)]
    command += ["--first-seed", str(FIRST_SEED), "--budget", str(args.budget)]
    command += ["--workers", str(args.workers), "--out", str(out)]
    command += ["--env-kwargs", json.dumps(kwargs)]
    subprocess.run(command, check=True, cwd=ROOT)


def curves(out: Path, algos: list[str], budget: int) -> dict[str, np.ndarray]:
    runs = load_runs([out])
    return {
        algo: np.nan_to_num(
            np.array(
                [incumbent_worth(r.evaluations, budget) for r in runs if r.algo == algo],
                dtype=float,
            )
        )
        for algo in algos
    }


def per_student(live: Path) -> dict[str, object]:
    """Every distinct student the live runs measured against the surrogate's prediction of it.

    The live seeds are not the training searches', so these are students optimizers went to,
    measured after the fit: Kendall τ and Spearman of the reward (and of accuracy alone), over
    all of them and within the top 10 % by live reward, and the mean absolute accuracy error.
    """
    from scipy.stats import kendalltau, spearmanr

    from n2n_gym.arch import StudentDescription
    from n2n_gym.reward import compute_reward
    from n2n_gym.surrogate import load_surrogate, shipped_surrogate

    surrogate = load_surrogate(shipped_surrogate("bundled:narrow_resnet_mnist", "mnist"))
    seen: dict[tuple[float, ...], dict] = {}
    for run in load_runs([live]):
        for record in run.evaluations:
            if record.get("student") and record.get("error") is None:
                seen.setdefault(tuple(record["student"]["ratios"]), record)
    pairs = []
    for record in seen.values():
        student = StudentDescription.from_dict(record["student"])
        plan = student.plan()
        predicted = surrogate.measurement(plan, student, "mean").accuracy
        live_reward = record["reward"]
        predicted_reward = compute_reward(
            predicted,
            surrogate.teacher_accuracy,
            plan.spec.params,
            student.teacher.params,
            plan.spec.flops,
        ).reward
        pairs.append((live_reward, predicted_reward, record["accuracy"], predicted))
    pairs.sort(key=lambda p: -p[0])
    top = pairs[: max(2, len(pairs) // 10)]

    def agreement(rows: list[tuple[float, ...]], a: int, b: int) -> dict[str, float]:
        x, y = [r[a] for r in rows], [r[b] for r in rows]
        return {
            "kendall_tau": float(kendalltau(x, y).statistic),
            "spearman": float(spearmanr(x, y).statistic),
        }

    return {
        "students": len(pairs),
        "reward": agreement(pairs, 0, 1),
        "reward_top10": {"students": len(top), **agreement(top, 0, 1)},
        "accuracy": agreement(pairs, 2, 3),
        "accuracy_mae": float(np.mean([abs(r[2] - r[3]) for r in pairs])),
    }


def target_live(seeds: tuple[int, ...] = (0, 1, 2)) -> dict[str, object]:
    """The surrogate's target student (the best it predicts) measured live with ``seeds``:
    whether the optimum it scores searches against is one distillation reaches."""
    import gymnasium as gym

    from n2n_gym.surrogate import load_surrogate, shipped_surrogate
    from n2n_gym.task import Task

    surrogate = load_surrogate(shipped_surrogate("bundled:narrow_resnet_mnist", "mnist"))
    target = surrogate.target()
    actions = {0.0: 0, 0.5: 1, 1.0: 2}  # remove, keep at half width, keep whole
    fidelity = Task().fidelity.to_dict()
    rewards, accuracies = [], []
    for seed in seeds:
        env = gym.make(LIVE_ENV, **LIVE_KWARGS, eval_seed=seed, fidelity={**fidelity, "seed": seed})
        obs, _ = env.reset(seed=0)
        done = False
        while not done:
            unit = int(obs["position"].argmax())
            obs, reward, done, _, info = env.step(actions[target.row.ratios[unit]])
        assert tuple(info["student"]["ratios"]) == tuple(target.row.ratios), info["student"]
        rewards.append(float(reward))
        accuracies.append(float(info["accuracy"]))
        env.close()
    return {
        "ratios": list(target.row.ratios),
        "predicted_reward": target.reward,
        "predicted_accuracy": target.row.measurement.accuracy,
        "live_rewards": rewards,
        "live_accuracies": accuracies,
        "live_mean_reward": float(np.mean(rewards)),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--budget", type=int, default=100)
    parser.add_argument("--learner", default="ppo", help="the learner compared (default: ppo)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "surrogate-validation")
    parser.add_argument(
        "--results", type=Path, default=ROOT / "bench" / "results_surrogate_validation.json"
    )
    parser.add_argument(
        "--plot", type=Path, default=ROOT / "docs" / "benchmark" / "surrogate" / "validation.png"
    )
    args = parser.parse_args()
    algos = ["random", args.learner]
    checkpoints = sorted({c for c in CHECKPOINTS if c < args.budget} | {args.budget})
    figures: dict[str, dict] = {}
    for label, env in (("surrogate", SURROGATE_ENV), ("live", LIVE_ENV)):
        folder = args.out / label
        search(env, folder, algos, args)
        point, interval = anytime_iqm(
            {
                a: c[:, [k - 1 for k in checkpoints]]
                for a, c in curves(folder, algos, args.budget).items()
            },
            5000,
            0,
        )
        figures[label] = {
            a: {
                "iqm": [float(v) for v in point[a]],
                "ci": [[float(v) for v in col] for col in interval[a].T],
            }
            for a in algos
        }
    ranking = {
        label: [
            max(algos, key=lambda a: figures[label][a]["iqm"][i]) for i in range(len(checkpoints))
        ]
        for label in figures
    }
    results = {
        "per_student": per_student(args.out / "live"),
        "target_live": target_live(),
        "envs": {"live": LIVE_ENV, "surrogate": SURROGATE_ENV},
        "seeds": list(range(FIRST_SEED, FIRST_SEED + args.seeds)),
        "budget": args.budget,
        "checkpoints": checkpoints,
        "incumbent_reward": figures,
        "leader": ranking,
        "rankings_agree": [
            a == b for a, b in zip(ranking["live"], ranking["surrogate"], strict=True)
        ],
    }
    args.results.write_text(json.dumps(results, indent=2) + "\n")
    table = Table(title="incumbent reward (IQM over seeds, 95 % CI): live vs surrogate")
    table.add_column("algorithm / tier")
    for k in checkpoints:
        table.add_column(f"@{k}", justify="right")
    for a in algos:
        for label in ("live", "surrogate"):
            f = figures[label][a]
            table.add_row(
                f"{a} {label}",
                *(
                    f"{v:.4f} [{lo:.4f}, {hi:.4f}]"
                    for v, (lo, hi) in zip(f["iqm"], f["ci"], strict=True)
                ),
            )
    console = Console()
    console.print(table)
    agree = results["per_student"]
    console.print(
        f"the live runs' {agree['students']} students, measured vs predicted: reward Kendall τ "
        f"{agree['reward']['kendall_tau']:.3f} (top 10 %: "
        f"{agree['reward_top10']['kendall_tau']:.3f}), accuracy τ "
        f"{agree['accuracy']['kendall_tau']:.3f}, accuracy MAE {agree['accuracy_mae']:.4f}"
    )
    live = results["target_live"]
    console.print(
        f"the surrogate's target student: predicted reward {live['predicted_reward']:.4f}, "
        f"live {live['live_mean_reward']:.4f} over seeds {', '.join(f'{r:.4f}' for r in live['live_rewards'])}"
    )
    _plot(results, args.plot)
    return 0


def _plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    colours = {"random": "tab:grey"}
    for algo in results["incumbent_reward"]["live"]:
        colour = colours.get(algo, "tab:blue")
        for label, style in (("live", "-"), ("surrogate", "--")):
            f = results["incumbent_reward"][label][algo]
            band = np.array(f["ci"])
            x = results["checkpoints"]
            ax.plot(x, f["iqm"], style, marker="o", color=colour, label=f"{algo} ({label})")
            ax.fill_between(x, band[:, 0], band[:, 1], color=colour, alpha=0.1)
    ax.set_xscale("log")
    ax.set_xlabel("distinct students")
    ax.set_ylabel("incumbent reward (IQM over seeds)")
    ax.set_title("narrow ResNet, joint space: live vs surrogate")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
