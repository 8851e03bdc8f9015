"""Finishing a search: saved students, evaluate.py's report, the two-stage pipeline."""

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import evaluate
import train_agent
from n2n_gym import finalize
from n2n_gym.arch import StudentDescription
from n2n_gym.data import load_dataset
from n2n_gym.distill import accuracy
from n2n_gym.export import export_student
from n2n_gym.runs import BEST_WEIGHTS_FILE, read_evaluations
from n2n_gym.students import StudentFileError, load_student, save_student
from n2n_gym.surgery import build_student
from n2n_gym.teachers import load_teacher

PROXY = '{"evaluator": "proxy"}'


@pytest.fixture(scope="module")
def mnist():
    return load_dataset("mnist", val_size=5000, seed=0)


@pytest.fixture
def real_run(finished_search):
    """A short stage-1 search with real (tiny) distillation rewards."""
    return finished_search[0]


def test_saved_student_reloads_with_identical_outputs(tmp_path):
    teacher = load_teacher("default")
    description = StudentDescription(teacher.spec, (1, 0.5, 0, 1, 0.5, 0, 0, 0.5, 1))
    _, module = build_student(teacher.module, description)
    path = save_student(tmp_path / "s.pt", module, description, {"note": "x"})
    loaded = load_student(path)
    x = torch.randn(4, 1, 28, 28)
    torch.testing.assert_close(loaded.module(x), module.eval()(x))
    assert loaded.description == description and loaded.metadata == {"note": "x"}
    assert loaded.params == sum(p.numel() for p in module.parameters())


def test_bad_student_files_give_clear_errors(tmp_path):
    with pytest.raises(StudentFileError, match="does not exist"):
        load_student(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(StudentFileError, match="not a readable student file"):
        load_student(tmp_path / "junk.pt")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(StudentFileError, match="not a student file"):
        load_student(tmp_path / "other.pt")


def test_reports_measure_one_teacher_once_and_a_changed_teacher_again(mnist, monkeypatch):
    teacher = load_teacher("default")
    _, student = build_student(teacher.module, StudentDescription(teacher.spec, (1,) * 9))
    small = replace(mnist, test_x=mnist.test_x[:300], test_y=mnist.test_y[:300])
    measured = []
    real = finalize.accuracy

    def counted(module, x, y, **kwargs):
        measured.append(module)
        return real(module, x, y, **kwargs)

    monkeypatch.setattr(finalize, "accuracy", counted)
    first = finalize.test_report(teacher, student, None, small, device="cpu", latency_batch=4)
    second = finalize.test_report(teacher, student, None, small, device="cpu", latency_batch=4)
    assert len(measured) == 3  # the teacher once, the student twice
    assert second.teacher_test_accuracy == first.teacher_test_accuracy
    assert first.teacher_test_accuracy == real(teacher.module, small.test_x, small.test_y)
    # Another test split, or the teacher trained further, is measured anew.
    fewer = replace(small, test_x=small.test_x[:200], test_y=small.test_y[:200])
    finalize.test_report(teacher, student, None, fewer, device="cpu", latency_batch=4)
    with torch.no_grad():
        next(teacher.module.parameters()).mul_(0.5)
    changed = finalize.test_report(teacher, student, None, small, device="cpu", latency_batch=4)
    assert len(measured) == 7
    assert changed.teacher_test_accuracy == real(teacher.module, small.test_x, small.test_y)


def test_trainings_on_one_teacher_and_transfer_set_run_the_teacher_over_it_once(mnist, monkeypatch):
    from n2n_gym.distill import DistillConfig, TeacherTargets

    teacher = load_teacher("default")
    small = replace(mnist, train_x=mnist.train_x[:256], train_y=mnist.train_y[:256])
    small = replace(small, val_x=small.val_x[:64], val_y=small.val_y[:64])
    config = DistillConfig(transfer_size=128, epochs=1, batch_size=64, eval_size=64)
    passes = []
    real = TeacherTargets.compute.__func__

    def counted(cls, *args, **kwargs):
        passes.append(args[3].transfer_size)
        return real(cls, *args, **kwargs)

    monkeypatch.setattr(TeacherTargets, "compute", classmethod(counted))
    student = StudentDescription(teacher.spec, (1, 0.5, 0, 1, 0.5, 0, 0, 0.5, 1))

    def train(config=config, data=small):
        return finalize.train_final(teacher, data, student, config, device="cpu").val_accuracy

    first = train()
    assert train() == first and passes == [128]  # the same targets: the same training
    train(replace(config, transfer_size=192))  # another transfer set
    other = replace(small, train_x=small.train_x.clone())  # another data set object
    train(data=other)
    with torch.no_grad():
        next(teacher.module.parameters()).mul_(0.5)  # a teacher changed in place
    train()
    assert passes == [128, 192, 128, 128]


@pytest.mark.expensive
def test_search_saves_the_best_students_weights_as_it_scored_them(real_run, mnist):
    best = json.loads((real_run / "best_student.json").read_text())
    saved = load_student(real_run / BEST_WEIGHTS_FILE)
    assert saved.description.to_dict() == best["student"]
    x, y = mnist.split("val")
    # Rewards are measured on the first 500 validation images; seeded CPU distillation repeats.
    assert accuracy(saved.module, x[:500], y[:500]) == pytest.approx(best["accuracy"], abs=1e-9)
    assert saved.metadata["val_accuracy"] == pytest.approx(best["accuracy"], abs=1e-9)


@pytest.mark.expensive
def test_evaluate_reports_on_the_test_set_and_the_student_reloads(finished_search, mnist):
    real_run, out = finished_search  # evaluate.py RUN --out OUT --epochs 2 --transfer-size 2048
    report = json.loads((out / "report.json").read_text())
    for key in ("test_accuracy", "teacher_test_accuracy", "params", "teacher_params"):
        assert report[key] is not None, key
    best = json.loads((real_run / "best_student.json").read_text())
    assert report["params"] == best["params"]
    assert report["compression"] == pytest.approx(report["teacher_params"] / report["params"])
    assert report["teacher_test_accuracy"] > 0.99  # the bundled teacher
    assert report["latency_ms"] > 0 and report["teacher_latency_ms"] > 0
    assert len(report["history"]) == 2
    assert report["val_accuracy"] == max(e["val_accuracy"] for e in report["history"])
    # Two epochs on 2,048 images already beat the 4-second search reward.
    assert report["test_accuracy"] > best["accuracy"]

    student = load_student(out / "student.pt")
    x, y = mnist.split("test")
    assert accuracy(student.module, x, y) == pytest.approx(report["test_accuracy"], abs=1e-9)
    assert student.metadata["test_accuracy"] == report["test_accuracy"]
    assert set(report["exports"]) == {"torchscript", "onnx"}  # the test extra has onnx
    assert report["input"] == {"shape": [1, 28, 28], "mean": [0.1307], "std": [0.3081]}


LOAD_WITHOUT_N2N_GYM = """
import sys
sys.modules["n2n_gym"] = None  # any import of n2n_gym fails
import numpy as np, onnxruntime, torch
images = torch.load(sys.argv[1])
scripted = torch.jit.load(sys.argv[2])(images)
session = onnxruntime.InferenceSession(sys.argv[3], providers=["CPUExecutionProvider"])
(onnx,) = session.run(None, {"images": images.numpy()})
torch.save({"torchscript": scripted.detach(), "onnx": torch.from_numpy(onnx)}, sys.argv[4])
"""


def test_the_exported_student_loads_without_n2n_gym_and_computes_the_same(tmp_path):
    teacher = load_teacher("default")
    description = StudentDescription(teacher.spec, (1, 0.5, 0, 1, 0.5, 0, 0, 0.5, 1))
    _, module = build_student(teacher.module, description)
    files = export_student(module, (1, 28, 28), tmp_path)
    assert set(files) == {"torchscript", "onnx"}
    images = torch.randn(7, 1, 28, 28)  # another batch size than the export's example
    torch.save(images, tmp_path / "images.pt")
    script = tmp_path / "load.py"
    script.write_text(LOAD_WITHOUT_N2N_GYM)
    outputs = tmp_path / "outputs.pt"
    done = subprocess.run(
        [
            sys.executable,
            str(script),
            str(tmp_path / "images.pt"),
            str(files["torchscript"]),
            str(files["onnx"]),
            str(outputs),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    expected = module.eval()(images).detach()
    for kind, got in torch.load(outputs).items():
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-3, msg=kind)


@pytest.mark.expensive
def test_pipeline_runs_removal_then_shrink_then_selection_then_final_training(tmp_path):
    out = tmp_path / "pipe"
    argv = [
        "--pipeline",
        "--algo",
        "random",
        "--budget",
        "3",
        "--out",
        str(out),
        "--env-kwargs",
        PROXY,
        "--final-kwargs",
        '{"epochs": 1, "transfer_size": 1024, "eval_size": 1000}',
        "--shrink-kwargs",
        '{"constraints": {"max_params": 100000}}',
        "--baselines",
        "uniform-width",
    ]
    assert train_agent.main(argv) == 0
    removal, shrink = out / "1-removal", out / "2-shrink"
    assert json.loads((removal / "config.json").read_text())["env"] == "N2NRemoval-v2"
    shrink_config = json.loads((shrink / "config.json").read_text())
    assert shrink_config["env"] == "N2NShrink-v2"
    assert shrink_config["env_kwargs"]["start_from"] == str(removal)
    # --shrink-kwargs reach the shrink stage only.
    assert shrink_config["env_kwargs"]["constraints"] == {"max_params": 100000}
    assert "constraints" not in json.loads((removal / "config.json").read_text())["env_kwargs"]
    # Stage 2 starts from stage 1's best: its removed units stay removed in every shrink student.
    removed = [
        i
        for i, r in enumerate(
            json.loads((removal / "best_student.json").read_text())["student"]["ratios"]
        )
        if r == 0
    ]
    records = read_evaluations(shrink)
    assert len(records) == 3
    for record in records:
        assert all(record["student"]["ratios"][i] == 0 for i in removed)
    report = json.loads((out / "report.json").read_text())
    # Stage 3 trained stage 2's best distinct students (three at most) and the teacher at the
    # uniform width that fits the limit briefly; the one that validated best was trained fully.
    selection_file = out / "3-select" / "selection.json"
    selection = json.loads(selection_file.read_text())
    candidates = list(selection["candidates"].values())
    assert {"uniform-width", "search #1"} <= {c["name"] for c in candidates}
    assert len(candidates) <= 4 and all(c["params"] <= 100000 for c in candidates)
    assert all(0 <= c["val_accuracy"] <= 1 for c in candidates)
    assert max(c["val_accuracy"] for c in candidates) > 0.12  # real training: above chance
    chosen = max(candidates, key=lambda c: c["val_accuracy"])
    assert selection["chosen"] == chosen["name"] and report["student"] == chosen["student"]
    assert load_student(out / "student.pt").params == report["params"]
    # --baselines: the teacher at the student's size, trained as it was, reported beside it.
    compared = json.loads((out / "baselines.json").read_text())
    assert compared["student"]["test_accuracy"] == report["test_accuracy"]
    uniform = report["baselines"]["students"]["uniform-width"]
    assert uniform == {k: compared["baselines"]["uniform-width"][k] for k in uniform}
    assert abs(uniform["params"] - report["params"]) / report["params"] < 0.1
    assert "uniform-width" in (out / "baselines.md").read_text()

    # Rerunning with --resume finds every stage done and trains nothing: the selection, the
    # finished student and the baselines measured are kept.
    trained = (out / "student.pt").stat().st_mtime_ns
    report = json.loads((out / "report.json").read_text())
    assert train_agent.main([*argv, "--resume"]) == 0
    assert len(read_evaluations(shrink)) == 3
    assert json.loads(selection_file.read_text()) == selection
    assert (out / "student.pt").stat().st_mtime_ns == trained
    assert json.loads((out / "report.json").read_text()) == report
    assert json.loads((out / "baselines.json").read_text())["baselines"] == compared["baselines"]


def test_start_from_continues_a_removal_run_in_the_shrink_env(tmp_path):
    first = tmp_path / "removal"
    base = ["--env-kwargs", PROXY, "--algo", "random", "--budget", "3"]
    assert train_agent.main([*base, "--out", str(first)]) == 0
    second = tmp_path / "shrink"
    argv = [*base, "--env", "N2NShrink-v2", "--start-from", str(first), "--out", str(second)]
    assert train_agent.main(argv) == 0
    config = json.loads((second / "config.json").read_text())
    assert config["env_options"]["start_from"] == str(first)
    # every stage-2 episode starts from stage 1's best student: removed units stay removed
    best = StudentDescription.from_dict(
        json.loads((first / "best_student.json").read_text())["student"]
    )
    removed = [unit for unit, ratio in enumerate(best.ratios) if ratio == 0.0]
    assert removed  # stage 1 removed something, so the check below can fail
    for record in read_evaluations(second):
        ratios = record["student"]["ratios"]
        assert [unit for unit, ratio in enumerate(ratios) if ratio == 0.0] == removed
        assert all(ratio <= base for ratio, base in zip(ratios, best.ratios, strict=True))


def test_greedy_student_of_a_trained_policy(tmp_path):
    out = tmp_path / "run"
    argv = ["--env-kwargs", PROXY, "--algo", "reinforce", "--budget", "5", "--out", str(out)]
    assert train_agent.main(argv) == 0
    student = evaluate.greedy_student(out)
    assert len(student.ratios) == 9 and set(student.ratios) <= {0.0, 1.0}
    assert student == evaluate.greedy_student(out)  # deterministic


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["{tmp}"], "is not a search run directory"),
        (["{tmp}", "{tmp}"], "pass --compare"),
        (["{tmp}", "--epochs", "0"], "--epochs must be at least 1"),
        (["--compare", "{tmp}"], "pass directories written by train_agent.py --out DIR"),
    ],
)
def test_evaluate_bad_input_gives_one_clear_line(argv, message, tmp_path):
    script = Path(evaluate.__file__)
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    result = subprocess.run(
        [sys.executable, str(script), *argv], capture_output=True, text=True, timeout=120
    )
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    # one unbroken line, whatever the terminal width and the length of the path in it
    lines = [line for line in output.splitlines() if "error" in line]
    assert len(lines) == 1 and message in lines[0], output
    assert "Traceback" not in output and "final training" not in output


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--stages", "final"], "comes last"),
        (["--stages", "removal,nope"], "choose from removal,shrink,select,final"),
        (["--start-from", "x"], "use it with --env N2NShrink-v2"),
        (["--final-kwargs", '{"epochs": 0}'], "--final-kwargs"),
        (["--shrink-kwargs", '{"fidelity": "medium"}'], "add --pipeline"),
        (["--pipeline", "--env", "CartPole-v1"], "not an N2N removal or shrink environment"),
        (["--baselines"], "--baselines compares the finished student: add --pipeline"),
        (["--pipeline", "--baselines", "uniform,scratch-labels"], "unknown baseline uniform"),
    ],
)
def test_pipeline_flags_are_checked(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        train_agent.parse_args(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_compare_prints_the_table_and_writes_the_plots(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # the table's full width
    runs = tmp_path / "runs"
    for algo in ("random", "reinforce"):
        for seed in (0, 1):
            argv = ["--env-kwargs", PROXY, "--algo", algo, "--seed", str(seed), "--budget", "6"]
            assert train_agent.main([*argv, "--out", str(runs / f"{algo}-{seed}")]) == 0
    capsys.readouterr()
    out = tmp_path / "comparison"
    assert evaluate.main(["--compare", str(runs), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "reinforce" in printed and "random" in printed
    rows = json.loads((out / "comparison.json").read_text())["rows"]
    assert sorted(row["algo"] for row in rows) == ["random", "reinforce"]
    assert all(row["seeds"] == [0, 1] for row in rows)
    for name in ("best_reward.png", "pareto.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
