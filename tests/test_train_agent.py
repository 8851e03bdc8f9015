"""train_agent.py end to end on the cheap evaluator: every algorithm, run directories, resume."""

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import gymnasium as gym
import pytest
import torch
from stable_baselines3.common.vec_env import DummyVecEnv

import train_agent
from agents import PRUNING_SEARCHES, Reinforce
from agents.pretrained import policy_path
from n2n_gym.runs import CHECKPOINT_FILE, read_evaluations
from n2n_gym.search_loop import make_agent

PROXY = '{"evaluator": "proxy"}'
RUN_FILES = ("config.json", "evaluations.jsonl", "best_student.json", "summary.json", "tb")


def run(tmp_path: Path, *extra: str) -> int:
    return train_agent.main(["--env-kwargs", PROXY, *extra])


@pytest.mark.parametrize("algo", train_agent.ALGOS)
def test_each_algorithm_writes_a_complete_run_directory(algo, tmp_path):
    out = tmp_path / algo
    # A pruning search needs rungs: the table has learning curves to halve on (the proxy none).
    where = (
        ["--env", "N2NRemoval-Tab-v0", "--env-kwargs", '{"halving": {"eta": 3}}']
        if algo in PRUNING_SEARCHES
        else ["--env-kwargs", PROXY]
    )
    assert train_agent.main([*where, "--algo", algo, "--budget", "6", "--out", str(out)]) == 0
    for name in RUN_FILES:
        assert (out / name).exists(), name
    summary = json.loads((out / "summary.json").read_text())
    for key in (
        "algo",
        "seed",
        "evaluations",
        "best_reward",
        "best_accuracy",
        "best_params",
        "teacher_accuracy",
        "teacher_params",
    ):
        assert summary[key] is not None, key
    # The budget counts distinct students; a repeat is an episode but free.
    assert summary["algo"] == algo and summary["distinct_students"] == 6
    assert summary["stop_reason"] == "budget"
    records = read_evaluations(out)
    assert [r["evaluation"] for r in records] == list(range(1, summary["evaluations"] + 1))
    assert len({r["student_key"] for r in records}) == 6 and records[-1]["new_student"]
    assert summary["best_reward"] == max(r["reward"] for r in records)
    assert summary["best_params"] < summary["teacher_params"]
    best = json.loads((out / "best_student.json").read_text())
    assert best["reward"] == summary["best_reward"] and len(best["student"]["ratios"]) == 9
    if algo != "random":
        assert (out / CHECKPOINT_FILE).exists()


def test_checkpoints_come_every_n_evaluations_but_not_more_often_than_the_time_floor(tmp_path):
    from n2n_gym.runs import RunRecorder
    from n2n_gym.search_loop import BudgetAndCheckpoints

    class Agent:
        saves = 0

        def save(self, path):
            Path(path).write_bytes(b"agent")
            Agent.saves += 1

    def episodes(min_seconds: float) -> int:
        Agent.saves = 0
        recorder = RunRecorder(tmp_path / f"run-{min_seconds}", "random", 0)
        callback = BudgetAndCheckpoints(
            recorder, 100, 2, tmp_path / f"ckpt-{min_seconds}.zip", min_seconds=min_seconds
        )
        callback.model = Agent()
        for index in range(10):
            recorder.record(0.5, {"student_key": f"s{index}"})
            assert callback._on_step()
        return Agent.saves

    assert episodes(0.0) == 5  # every second evaluation
    assert episodes(3600.0) == 0  # cheap evaluations: the floor holds it back; the stop saves


def test_resume_continues_without_losing_evaluations(tmp_path):
    out = tmp_path / "run"
    assert run(tmp_path, "--algo", "reinforce", "--budget", "5", "--out", str(out)) == 0
    first = read_evaluations(out)
    assert (
        run(tmp_path, "--algo", "reinforce", "--budget", "5", "--out", str(out)) == 2
    )  # refuses to overwrite
    assert (
        run(tmp_path, "--algo", "reinforce", "--budget", "12", "--out", str(out), "--resume") == 0
    )
    records = read_evaluations(out)
    assert records[: len(first)] == first
    assert [r["evaluation"] for r in records] == list(range(1, len(records) + 1))
    assert json.loads((out / "summary.json").read_text())["distinct_students"] == 12


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (["--algo", "evolution"], "--algo was 'random' when this run started, 'evolution' now"),
        (["--reward-images", "1024"], "--env-kwargs fidelity transfer_size was 2048"),
        (["--seed", "3"], "--seed was 0"),
    ],
)
def test_a_resume_that_would_change_the_search_is_refused(change, message, tmp_path, capsys):
    out = tmp_path / "run"
    base = ["--algo", "random", "--reward-images", "2048", "--out", str(out)]
    assert run(tmp_path, *base, "--budget", "3") == 0
    config = (out / "config.json").read_text()
    capsys.readouterr()
    given = dict(zip(base[::2], base[1::2], strict=True)) | dict(
        zip(change[::2], change[1::2], strict=True)
    )
    argv = [token for item in given.items() for token in item]
    assert run(tmp_path, *argv, "--budget", "5", "--resume") == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert (out / "config.json").read_text() == config
    assert len(read_evaluations(out)) == 3
    # What cannot change the results may change, and is recorded.
    assert run(tmp_path, *base, "--budget", "5", "--threads", "1", "--resume") == 0
    assert json.loads((out / "config.json").read_text())["budget"] == 5


def test_a_torn_last_line_from_a_crash_is_skipped_on_resume(tmp_path):
    out = tmp_path / "run"
    assert run(tmp_path, "--algo", "random", "--budget", "3", "--out", str(out)) == 0
    with (out / "evaluations.jsonl").open("a") as handle:
        handle.write('{"evaluation": 4, "rew')  # killed mid-write
    assert run(tmp_path, "--algo", "random", "--budget", "5", "--out", str(out), "--resume") == 0
    records = read_evaluations(out)
    assert [r["evaluation"] for r in records] == list(range(1, len(records) + 1))
    assert len({r["student_key"] for r in records}) == 5 and len(records) >= 4


def first_action_probabilities(agent, venv) -> torch.Tensor:
    obs, _ = agent.policy.obs_to_tensor(venv.reset())
    return agent.policy.controller.step_distribution(obs).probs


def test_init_policy_starts_from_the_earlier_runs_trained_agent(tmp_path):
    first = tmp_path / "first"
    # ten evaluations: two REINFORCE updates, so the saved controller is trained, not initial
    assert run(tmp_path, "--algo", "reinforce", "--budget", "10", "--out", str(first)) == 0
    saved = Reinforce.load(first / CHECKPOINT_FILE, device="cpu")
    venv = DummyVecEnv([lambda: gym.make("N2NRemoval-v2", evaluator="proxy")])
    transfer = train_agent.parse_args(["--env-kwargs", PROXY, "--init-policy", str(first)])
    loaded = make_agent(transfer, venv, tmp_path / "second", 9, 0)
    fresh = make_agent(train_agent.parse_args([]), venv, tmp_path / "third", 9, 0)
    saved_state, loaded_state = saved.policy.state_dict(), loaded.policy.state_dict()
    assert saved_state.keys() == loaded_state.keys()
    assert all(torch.equal(saved_state[k], loaded_state[k]) for k in saved_state)
    # the same seed without --init-policy starts elsewhere: the first decision changed
    start = first_action_probabilities(fresh, venv)
    assert torch.allclose(
        first_action_probabilities(loaded, venv), first_action_probabilities(saved, venv)
    )
    assert not torch.allclose(first_action_probabilities(loaded, venv), start, atol=1e-4)
    second = tmp_path / "second"
    argv = ["--budget", "5", "--out", str(second), "--init-policy", str(first)]
    assert run(tmp_path, "--algo", "reinforce", *argv) == 0
    assert json.loads((second / "summary.json").read_text())["distinct_students"] == 5


def test_the_shipped_pretrained_policy_starts_a_search_on_another_teacher(tmp_path):
    students = {}
    for seed in ("0", "1"):
        out = tmp_path / f"transfer-{seed}"
        argv = ["--init-policy", "pretrained:removal", "--budget", "5", "--out", str(out)]
        assert run(tmp_path, "--algo", "reinforce", "--seed", seed, *argv) == 0
        config = json.loads((out / "config.json").read_text())
        assert config["init_policy"] == "pretrained:removal"
        students[seed] = [r["student_key"] for r in read_evaluations(out)]
    # each run samples with its own seed, not the pretraining run's
    assert students["0"] != students["1"]
    shipped = Reinforce.load(Path(policy_path("pretrained:removal")), device="cpu")
    assert shipped.policy.controller_kind == "bidirectional"


@pytest.mark.parametrize("controller", ["encoder-decoder", "actor-critic"])
def test_controller_flag_trains_saves_and_reloads_that_controller(tmp_path, controller):
    out = tmp_path / controller
    argv = ["--algo", "reinforce", "--controller", controller, "--budget", "10", "--out", str(out)]
    assert run(tmp_path, *argv) == 0
    assert json.loads((out / "config.json").read_text())["controller"] == controller
    agent = Reinforce.load(out / CHECKPOINT_FILE, device="cpu")
    assert agent.policy.controller_kind == controller and agent.n_updates == 2
    env = gym.make("N2NRemoval-v2", evaluator="proxy")
    obs, _ = env.reset(seed=0)
    action, _ = agent.predict(obs, deterministic=True, action_masks=env.unwrapped.action_masks())
    assert env.action_space.contains(int(action))


def test_bad_input_gives_one_clear_line(tmp_path):
    script = Path(train_agent.__file__)
    cases = [
        (["--env", "N2NNope-v0"], "is not registered"),
        (["--env-kwargs", "{nope"], "--env-kwargs is not valid JSON"),
        (["--budget", "0"], "--budget must be at least 1"),
        (["--algo", "ppo", "--controller", "actor-critic"], "--algo ppo has none"),
        (["--controller", "lstm"], "use one of bidirectional"),
        (["--init-policy", "pretrained:shrink"], "shipped: pretrained:removal"),
        (["--algo", "random", "--init-policy", "pretrained:removal"], "--algo random has none"),
        (
            ["--env-kwargs", '{"dataset": "imagenet"}', "--out", str(tmp_path / "x")],
            "dataset='imagenet'",
        ),
    ]
    for argv, message in cases:
        result = subprocess.run(
            [sys.executable, str(script), *argv], capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 2, argv
        output = result.stdout + result.stderr
        assert message in output and "Traceback" not in output, output


# ---- annealed constraints count the whole search -------------------------------------------------

# Every student violates max_params=1, so each record's penalty shows the annealing weight the
# search applied: penalty = w * (R + 1) with w = min(progress, anneal_steps) / anneal_steps.
ANNEALED = json.dumps(
    {
        "evaluator": "proxy",
        "constraints": {"max_params": 1, "constraint_mode": "annealed", "anneal_steps": 3},
    }
)


def anneal_weights(out: Path) -> list[float]:
    weights = []
    for record in read_evaluations(out):
        parts = record["rewards"]
        unconstrained = parts["compression_term"] * parts["accuracy_term"]
        weights.append(round(parts["penalty"] / (unconstrained + 1.0), 6))
    return weights


def expected_weights(evaluations: int) -> list[float]:
    # five rollouts per policy update, counted over the whole search
    return [round(min(k // 5, 3) / 3, 6) for k in range(evaluations)]


def test_annealing_follows_the_search_with_one_or_two_environments(tmp_path):
    for n_envs in ("1", "2"):
        out = tmp_path / f"envs-{n_envs}"
        argv = ["--env-kwargs", ANNEALED, "--algo", "random", "--budget", "20"]
        assert train_agent.main([*argv, "--n-envs", n_envs, "--out", str(out)]) == 0
        assert anneal_weights(out) == expected_weights(20), n_envs


def test_annealing_continues_after_a_resume(tmp_path):
    out = tmp_path / "run"
    argv = ["--env-kwargs", ANNEALED, "--algo", "reinforce", "--out", str(out)]
    assert train_agent.main([*argv, "--budget", "7"]) == 0
    assert train_agent.main([*argv, "--budget", "20", "--resume"]) == 0
    weights = anneal_weights(out)
    assert len(weights) >= 20 and weights == expected_weights(len(weights))


def test_a_search_warns_when_other_searches_share_the_cores(tmp_path, capsys):
    from n2n_gym.cli import cores
    from n2n_gym.runs import announce_search

    # another live process registered as a search using every core
    other = announce_search(tmp_path / "first", cores())
    assert all(entry["pid"] != os.getpid() for entry in other)
    registry = next(Path(tempfile.gettempdir()).glob(f"n2n_gym-searches-{os.getuid()}"))
    fake = registry / f"{os.getppid()}.json"
    fake.write_text(json.dumps({"pid": os.getppid(), "run_dir": "x", "threads": cores()}))
    try:
        out = tmp_path / "second"
        assert run(tmp_path, "--algo", "random", "--budget", "1", "--out", str(out)) == 0
    finally:
        fake.unlink(missing_ok=True)
    printed = " ".join(capsys.readouterr().out.split())
    assert "other job(s) run on this machine" in printed and "--threads" in printed


def test_piped_output_keeps_every_column_and_the_config_names_its_folder(tmp_path):
    script = Path(__file__).resolve().parent.parent / "train_agent.py"
    out = tmp_path / "run"
    argv = ["--algo", "random", "--budget", "3", "--out", str(out), "--env-kwargs", PROXY]
    result = subprocess.run(
        [sys.executable, str(script), *argv],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "COLUMNS": "30"},
    )
    assert result.returncode == 0, result.stderr
    # a narrow, piped terminal gets a Markdown table: header and cells whole, nothing cut to "…"
    assert "|  | teacher | best student |" in result.stdout and "…" not in result.stdout
    config = json.loads((out / "config.json").read_text())
    assert config["out"] == str(out)


def test_every_flag_has_help_in_a_group_and_the_help_shows_examples():
    parser = train_agent.build_parser()
    flags = [a for a in parser._actions if a.option_strings and a.dest != "help"]
    assert len(flags) >= 20
    for action in flags:
        assert action.help and len(action.help) > 10, action.option_strings
    titles = [group.title for group in parser._action_groups]
    assert {"search", "scale-out", "output"} <= set(titles)
    assert "examples" in parser.format_help()


def test_task_flags_become_the_environments_arguments():
    args = train_agent.parse_args(
        [
            "--teacher",
            "default",
            "--dataset",
            "mnist",
            "--max-params",
            "5000",
            "--reward-lr",
            "0.01",
            "--env-kwargs",
            PROXY,
        ]
    )
    assert args.env_kwargs == {
        "evaluator": "proxy",
        "teacher": "default",
        "dataset": "mnist",
        "fidelity": {"lr": 0.01},
        "constraints": {"max_params": 5000},
    }
    preset = train_agent.parse_args(["--fidelity", "medium", "--env-kwargs", PROXY])
    assert preset.env_kwargs["fidelity"] == "medium"


def test_a_data_set_may_be_spelled_as_people_write_it():
    from n2n_gym.data import canonical_dataset

    for spelling in ("fashion-mnist", "fashion_mnist", "FashionMNIST", "Fashion-MNIST"):
        assert canonical_dataset(spelling) == "fashion-mnist"
    assert canonical_dataset("CIFAR-10") == "cifar10" and canonical_dataset("mnsit") == "mnsit"
    args = train_agent.parse_args(
        ["--dataset", "fashion_mnist", "--data-dir", "D", "--env-kwargs", PROXY]
    )
    assert args.env_kwargs["dataset"] in ("fashion_mnist", "fashion-mnist")


def test_compress_is_the_walkthroughs_shrink_stage_limit():
    args = train_agent.parse_args(["--pipeline", "--compress", "10x", "--env-kwargs", PROXY])
    teacher_params = 120_762  # the bundled teacher
    assert args.shrink_kwargs == {
        "constraints": {"max_params": teacher_params // 10},
        "fidelity": {"lr": 0.002},
    }
    assert "constraints" not in args.env_kwargs  # removal stays free
    mine = train_agent.parse_args(
        ["--pipeline", "--compress", "20", "--reward-lr", "0.004", "--env-kwargs", PROXY]
    )
    assert mine.shrink_kwargs == {"constraints": {"max_params": teacher_params // 20}}
    assert mine.env_kwargs["fidelity"] == {"lr": 0.004}  # the user's reward lr, both stages


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--teacher", "default", "--env-kwargs", '{"teacher": "default"}'], "both set teacher"),
        (["--compress", "10x"], "add --pipeline"),
        (["--pipeline", "--compress", "1"], "a finite factor above 1"),
        (["--pipeline", "--compress", "inf"], "a finite factor above 1"),
        (["--pipeline", "--compress", "nanx"], "a finite factor above 1"),
        (["--dataset", "fashion_mnst"], "dataset='fashion_mnst' is unknown (did you mean"),
        (["--pipeline", "--compress", "10x", "--max-params", "9000"], "both limit parameters"),
        (["--fidelity", "slow"], "invalid choice"),
    ],
)
def test_bad_task_flags_fail_in_one_line_before_any_folder(argv, message, tmp_path, capsys):
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as stop:
        train_agent.parse_args([*argv, "--out", str(out)])
    assert stop.value.code == 2 and message in capsys.readouterr().err
    assert not out.exists()


def test_rerun_replays_the_recorded_command_exactly(tmp_path):
    first = tmp_path / "first"
    argv = [
        "--algo",
        "random",
        "--budget",
        "4",
        "--seed",
        "3",
        "--out",
        str(first),
        "--env-kwargs",
        PROXY,
    ]
    assert train_agent.main(argv) == 0
    assert json.loads((first / "config.json").read_text())["argv"] == argv
    assert train_agent.main(["--rerun", str(first)]) == 0
    again = Path(f"{first}-rerun")
    key = lambda out: [(r["student_key"], r["reward"]) for r in read_evaluations(out)]  # noqa: E731
    assert key(again) == key(first)
    with pytest.raises(SystemExit):
        train_agent.parse_args(["--rerun", str(first), "--budget", "9"])
