"""The ``n2n-gym`` console command, run as a user runs it: a subprocess of the installed script."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

COMMAND = shutil.which("n2n-gym", path=str(Path(sys.executable).parent))
PROXY = json.dumps({"evaluator": "proxy"})


def n2n_gym(*argv: str, columns: int = 40) -> subprocess.CompletedProcess:
    assert COMMAND, "n2n-gym is not installed in this environment: pip install -e ."
    return subprocess.run(
        [COMMAND, *argv],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "COLUMNS": str(columns)},
    )


def test_the_command_lists_its_jobs_and_refuses_unknown_ones_in_one_line():
    listed = n2n_gym("--help")
    assert listed.returncode == 0
    for name in ("train", "evaluate", "benchmark", "tabulate", "teachers", "surrogate"):
        assert f"  {name} " in listed.stdout
    assert n2n_gym().returncode == 2
    wrong = n2n_gym("trian")
    assert wrong.returncode == 2 and "did you mean train?" in wrong.stderr
    assert len(wrong.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "name", ["train", "evaluate", "benchmark", "tabulate", "teachers", "surrogate"]
)
def test_every_job_has_help(name):
    shown = n2n_gym(name, "--help", columns=100)
    assert shown.returncode == 0, shown.stderr
    assert "usage:" in shown.stdout


def test_a_tiny_search_then_a_comparison_piped_keeps_every_column(tmp_path):
    run = tmp_path / "run"
    searched = n2n_gym(
        "train", "--algo", "random", "--budget", "3", "--out", str(run), "--env-kwargs", PROXY
    )
    assert searched.returncode == 0, searched.stderr
    assert (run / "summary.json").exists() and "|  | teacher | best student |" in searched.stdout
    # no terminal: progress as plain lines, no carriage-return bar
    assert "random on N2NRemoval-v2: 3/3 students" in searched.stderr
    assert "\r" not in searched.stderr
    bad = n2n_gym("train", "--budget", "0", "--out", str(tmp_path / "bad"))
    assert bad.returncode == 2 and "n2n-gym train: error:" in bad.stderr
    compared = n2n_gym("evaluate", "--compare", str(run), "--out", str(tmp_path / "cmp"))
    assert compared.returncode == 0, compared.stderr
    header = next(line for line in compared.stdout.splitlines() if line.startswith("| algo"))
    assert "…" not in compared.stdout and header.count("|") >= 5
    assert (tmp_path / "cmp" / "comparison.json").exists()


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "--algo", "random"],
        ["evaluate", "RUN"],
        ["benchmark", "--algos", "random"],
    ],
    ids=["train", "evaluate", "benchmark"],
)
def test_an_out_that_cannot_be_a_folder_is_one_line_before_any_work(argv, tmp_path):
    file = tmp_path / "a-file"
    file.write_text("not a folder")
    argv = [a if a != "RUN" else str(tmp_path) for a in argv]
    for out, said in ((file, "is a file"), (file / "below", f"{file} is a file, so no folder")):
        done = n2n_gym(*argv, "--out", str(out), columns=200)
        assert done.returncode == 2, done.stderr
        assert f"--out {out}: {said}" in done.stderr and "Traceback" not in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1
    if os.geteuid() != 0:  # root may write anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o555)
        done = n2n_gym(*argv, "--out", str(locked / "run"), columns=200)
        assert done.returncode == 2 and "permission denied" in done.stderr


@pytest.mark.parametrize("argv", [["train", "--help"], ["train", "--bogus"]])
def test_a_usage_error_or_help_answers_before_torch_loads(argv):
    """Parsing imports names only: torch (seconds to import on a busy machine) loads later."""
    probe = (
        "import sys\n"
        "from n2n_gym.commands import main\n"
        "try:\n"
        f"    main({argv!r})\n"
        "except SystemExit as stop:\n"
        "    print('exit', stop.code)\n"
        "print('torch loaded' if 'torch' in sys.modules else 'torch not loaded')\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert "torch not loaded" in done.stdout, done.stdout + done.stderr
    assert ("exit 0" if "--help" in argv else "exit 2") in done.stdout


def test_progress_in_a_log_is_plain_lines_without_a_repeated_last_line(capsys):
    from n2n_gym.cli import progress

    with progress(3, "final training", "epoch", every=0.0) as bar:  # stderr is not a terminal
        for epoch in range(3):
            bar.set_postfix(val=f"0.9{epoch}")
            bar.update(1)
    lines = capsys.readouterr().err.strip().splitlines()
    assert [line.split(",")[0] for line in lines] == [
        "final training: 1/3 epochs",
        "final training: 2/3 epochs",
        "final training: 3/3 epochs",
    ]
    assert "\r" not in "".join(lines) and "val=0.92" in lines[-1]


def test_a_job_not_told_its_threads_takes_omp_num_threads_else_every_core(monkeypatch, tmp_path):
    from n2n_gym.cli import cores, default_threads

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert default_threads() == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "not a number")
    assert default_threads() == cores()
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert default_threads() == cores()
    # A search not told its threads: torch gets the capped share, not every core.
    import torch

    import train_agent

    threads = torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    torch.set_num_threads(2)
    try:
        argv = ["--algo", "random", "--budget", "1", "--out", str(tmp_path / "run")]
        assert train_agent.main([*argv, "--env-kwargs", PROXY]) == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
