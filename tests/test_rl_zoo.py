"""RL Zoo trains on every N2N id out of the box, with the benchmark's hyperparameters."""

from __future__ import annotations

import subprocess
import sys

import pytest

from agents.hyperparams import hyperparams
from agents.rl_zoo import ZOO_ALGOS, n2n_ids, zoo_hyperparams

pytest.importorskip("rl_zoo3")


@pytest.mark.parametrize("zoo_algo", sorted(ZOO_ALGOS))
def test_every_id_has_rl_zoo_hyperparameters_from_the_one_file(zoo_algo):
    table = zoo_hyperparams(zoo_algo)
    assert set(table) == set(n2n_ids()) and "N2NRemoval-v2" in table
    algo, policy = ZOO_ALGOS[zoo_algo]
    for env_id, entry in table.items():
        assert entry["policy"] == policy and entry["n_timesteps"] > 0
        # undiscounted, as the paper's terminal reward is (ARS has no discount)
        assert entry.get("gamma", 1.0) == 1.0 and ("gamma" in entry) != (zoo_algo == "ars")
        for key, value in hyperparams(algo, env_id).items():
            assert entry[key] == (list(value) if isinstance(value, tuple) else value), key
    if zoo_algo == "ars":  # its policies need a flat observation
        assert entry["env_wrapper"] == "gymnasium.wrappers.FlattenObservation"
    if zoo_algo in ("ppo", "a2c", "trpo", "ppo_lstm"):  # rollouts of whole episodes
        assert table["N2NRemoval-v2"]["n_steps"] % 9 == 0  # 9 units in the bundled teacher


@pytest.mark.expensive
@pytest.mark.parametrize("zoo_algo", ["ppo", "ppo_lstm", "qrdqn", "ars"])
def test_rl_zoo_trains_on_an_n2n_id(zoo_algo, tmp_path):
    # the README's command, on the cheap evaluator and for 10 episodes
    command = [sys.executable, "-m", "rl_zoo3.train", "--algo", zoo_algo, "--env", "N2NRemoval-v2"]
    command += ["--gym-packages", "n2n_gym", "--conf-file", f"agents.rl_zoo.{zoo_algo}"]
    command += ["--env-kwargs", "evaluator:'proxy'", "-n", "90", "--eval-freq", "-1"]
    command += ["--log-folder", str(tmp_path)]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert list((tmp_path / zoo_algo).glob("N2NRemoval-v2_1/N2NRemoval-v2.zip"))


@pytest.mark.expensive
def test_a_teacher_whose_episodes_the_rollouts_would_cut_is_refused_with_the_fix(tmp_path):
    """The entries fit the id's teacher (9 units); the narrow ResNet has 16: n_steps must change."""
    command = [sys.executable, "-m", "rl_zoo3.train", "--algo", "ppo", "--env", "N2NRemoval-v2"]
    command += ["--gym-packages", "n2n_gym", "--conf-file", "agents.rl_zoo.ppo"]
    command += ["--env-kwargs", "evaluator:'proxy'", "teacher:'bundled:narrow_resnet_mnist'"]
    command += ["-n", "90", "--eval-freq", "-1", "--log-folder", str(tmp_path)]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert "cuts this teacher's episodes of 16 steps" in done.stderr
    fits = done.stderr.split("pass --hyperparams n_steps:")[1].split()[0]
    assert int(fits) % 16 == 0
    # With the n_steps it names, the same training runs.
    fixed = [*command, "--hyperparams", f"n_steps:{fits}", f"batch_size:{fits}"]
    done = subprocess.run(fixed, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
