"""Running a search or a pipeline from checked :class:`~n2n_gym.search_settings.SearchSettings`:
its environments, the agent, the run records, the two-stage pipeline and the summaries.

``n2n-gym train`` and ``n2n_gym.compress()`` both run their settings through here. Kept apart
from the settings so that ``n2n-gym train --help`` and a bad flag answer before torch,
Stable-Baselines3 and the rest load.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
import traceback
from collections.abc import Iterator
from dataclasses import asdict, replace
from functools import partial
from pathlib import Path
from typing import Any

import gymnasium as gym
from rich.console import Console
from rich.table import Table
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecEnv, VecEnvWrapper
from tqdm import tqdm

# (importing any n2n_gym module registers the environments: n2n_gym/__init__.py)
from agents import (
    SEARCHES,
    RandomSearch,
    Reinforce,
    agent_class,
    hyperparams,
    reward_free_students,
)
from agents.pretrained import policy_path
from agents.sb3 import make_sb3_agent
from n2n_gym.arch import StudentDescription
from n2n_gym.backends import BackendConfigError, WorkersLost, make_backend
from n2n_gym.cli import (
    default_threads,
    fail,
    progress,
    set_threads,
    show_table,
)
from n2n_gym.envs import EPISODES_PER_UPDATE, EnvConfigError
from n2n_gym.envs.vector import ThreadedVecEnv
from n2n_gym.final_training import (
    baselines_with_progress,
    finish_with_progress,
    select_with_progress,
)
from n2n_gym.finalize import FINAL_TRAINING, finished_report
from n2n_gym.runs import (
    CHECKPOINT_FILE,
    CONFIG_FILE,
    CONVERGED_EPISODE_FACTOR,
    REPORT_FILE,
    RunRecorder,
    read_best_student,
    resume_conflict,
    write_best_weights,
    write_json_atomic,
)
from n2n_gym.search_settings import PIPELINE_FILE, SearchSettings, search_task, stage_env
from n2n_gym.shared_cores import warn_shared_cores
from n2n_gym.task import Task, TaskError


class RecordEvaluations(VecEnvWrapper):
    """Records every finished episode into the run directory, TensorBoard and the progress bar.

    It also tells each environment how many evaluations the whole search has finished before
    its next one (annealed constraints count policy updates from that), so the schedule does not
    depend on the number of environments and continues after a resume. The environments of one
    search step together and their episodes have one length, so environment ``i``'s next
    evaluation is the search's evaluation ``finished + i``.
    """

    def __init__(self, venv: VecEnv, recorder: RunRecorder, bar: tqdm, tb_dir: Path) -> None:
        super().__init__(venv)
        self.recorder = recorder
        self.bar = bar
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(tb_dir))

    def _push_progress(self) -> None:
        for index in range(self.num_envs):
            self.venv.env_method(
                "set_search_evaluations", self.recorder.evaluations + index, indices=[index]
            )

    def reset(self):
        observations = self.venv.reset()
        self._push_progress()
        return observations

    def step_wait(self):
        obs, rewards, dones, infos = self.venv.step_wait()
        for index in range(self.num_envs):
            if not dones[index]:
                continue
            info = infos[index]
            record = self.recorder.record(
                float(rewards[index]), info, wall_time=info.get("wall_time")
            )
            step = record["evaluation"]
            self.writer.add_scalar("eval/reward", record["reward"], step)
            self.writer.add_scalar("eval/best_reward", self.recorder.best_reward, step)
            if record["error"] is None:
                self.writer.add_scalar("eval/accuracy", record["accuracy"], step)
                self.writer.add_scalar("eval/params", record["params"], step)
            if record["new_student"]:
                self.bar.update(1)
            self.bar.set_postfix(
                best=f"{self.recorder.best_reward:.4f}", hits=self.recorder.cache_hits
            )
        if dones.any():
            self._push_progress()
        return obs, rewards, dones, infos

    def close(self) -> None:
        self.writer.close()
        super().close()


class BudgetAndCheckpoints(BaseCallback):
    """Stops the agent at its budget of distinct students (or converged) and checkpoints it every
    ``every`` evaluations, but not more often than every ``min_seconds``: on a table an evaluation
    takes microseconds and saving the agent milliseconds, so a checkpoint per few evaluations
    would be most of the run. What the agent learned since its last checkpoint is all a kill can
    lose (each evaluation is recorded as it finishes), and :meth:`save` runs when the search stops.
    """

    def __init__(
        self, recorder: RunRecorder, budget: int, every: int, path: Path, min_seconds: float = 2.0
    ) -> None:
        super().__init__()
        self.recorder, self.budget, self.every, self.path = recorder, budget, every, path
        self.min_seconds = min_seconds
        self.saved_at = recorder.evaluations
        self.saved_time = time.monotonic()

    def _on_step(self) -> bool:
        due = self.recorder.evaluations - self.saved_at >= self.every
        if due and time.monotonic() - self.saved_time >= self.min_seconds:
            self.save()
        return self.recorder.stop_reason(self.budget) is None

    def save(self) -> None:
        if not hasattr(self.model, "save"):
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_suffix(".tmp.zip")
        self.model.save(temporary)
        os.replace(temporary, self.path)
        self.saved_at = self.recorder.evaluations
        self.saved_time = time.monotonic()


def make_agent(args: SearchSettings, venv: VecEnv, run_dir: Path, episode_length: int, done: int):
    """The agent for ``args.algo``: fresh, resumed from the run's checkpoint, or from --init-policy."""
    tb = str(run_dir / "tb")
    settings = {**hyperparams(args.algo, args.env), **args.hyperparams}
    if args.algo == "random":
        return RandomSearch(venv, seed=args.seed + done)
    if args.algo in SEARCHES:
        search = SEARCHES[args.algo](venv, seed=args.seed, tensorboard_log=tb, **settings)
        checkpoint = run_dir / CHECKPOINT_FILE
        if args.resume and checkpoint.exists():
            search.restore(checkpoint)
        return search
    cls = agent_class(args.algo)
    source = (
        run_dir / CHECKPOINT_FILE if args.resume and (run_dir / CHECKPOINT_FILE).exists() else None
    )
    if source is None and args.init_policy:
        source = policy_path(args.init_policy)
    if source is not None:
        agent = cls.load(source, env=venv, device="cpu", tensorboard_log=tb)
        # SB3's load keeps the saved run's seed and leaves the generators as they are, so every
        # run started from one policy would sample the same students: seed this run's own.
        agent.seed = args.seed + done
        agent.set_random_seed(agent.seed)
        return agent
    if args.algo == "reinforce":
        if args.controller:
            settings["policy_kwargs"] = {
                **settings.get("policy_kwargs", {}),
                "controller": args.controller,
            }
        return Reinforce("ControllerPolicy", venv, seed=args.seed, tensorboard_log=tb, **settings)
    return make_sb3_agent(
        args.algo,
        venv,
        episode_length,
        seed=args.seed,
        device="cpu",
        tensorboard_log=tb,
        env_id=args.env,
        **args.hyperparams,
    )


def _make_env(env_id: str, env_kwargs: dict[str, Any], threads: int | None = None) -> gym.Env:
    # The string entry point imports n2n_gym in subprocess workers too.
    if threads is not None:
        set_threads(threads)  # this subprocess's share of the search's cores
    return Monitor(gym.make(f"n2n_gym:{env_id}", **env_kwargs))


def make_vec_env(
    args: SearchSettings, task: Task, options: dict[str, Any], threads: int
) -> tuple[VecEnv, Any]:
    """The search's environments and the back-end they share (``None`` without workers).

    Without --workers / --ray-address every environment evaluates in its own process (several:
    SubprocVecEnv, each with its share of ``threads``). With them, one evaluator on the back-end
    is shared by environments that step in threads, so the episodes that end together have their
    students evaluated concurrently on the workers. Fills in ``args.n_envs``.
    """
    env_kwargs = {**task.to_dict(), **options}
    if not args.workers and not args.ray_address:
        args.n_envs = args.n_envs or 1
        if args.n_envs == 1:
            return DummyVecEnv([partial(_make_env, args.env, env_kwargs)]), None
        share = max(1, threads // args.n_envs)
        return SubprocVecEnv(
            [partial(_make_env, args.env, env_kwargs, share) for _ in range(args.n_envs)]
        ), None
    backend = make_backend(
        task,
        workers=args.workers,
        ray_address=args.ray_address,
        kind=args.backend,
        ray_data=args.ray_data,
    )
    evaluator = task.build_evaluator(backend)
    if args.n_envs is None:
        # REINFORCE's m rollouts end on the same step; SB3 agents get one environment per worker.
        args.n_envs = EPISODES_PER_UPDATE if args.algo == "reinforce" else backend.num_workers
    shared = {**env_kwargs, "evaluator": evaluator}
    env_fns = [partial(_make_env, args.env, shared) for _ in range(args.n_envs)]
    return ThreadedVecEnv(env_fns, on_close=evaluator.close), backend


@contextlib.contextmanager
def output_to(log_path: str | Path) -> Iterator[None]:
    """Everything a search prints (and logs) goes to ``log_path``; one torch thread.

    A benchmark's worker processes run search after search under this (no start-up per run).
    """
    set_threads(1)
    with (
        open(log_path, "w") as log,
        contextlib.redirect_stdout(log),
        contextlib.redirect_stderr(log),
    ):
        root = logging.getLogger()
        for handler in root.handlers[:]:  # the last run's handler wrote to its own log
            root.removeHandler(handler)
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
        yield


def run_search_logged(settings: SearchSettings, log_path: str) -> int:
    """Check and run one search with everything it prints in ``log_path``; its exit status
    (2: refused or could not start, the reason in the log; 1: it failed)."""
    from n2n_gym.search_settings import SettingsRefused, resolve_settings

    with output_to(log_path):
        try:
            return run_search(resolve_settings(settings), Console())
        except (SettingsRefused, SearchFailed) as error:
            return fail(str(error))
        except Exception:
            traceback.print_exc()
            return 1


class SearchFailed(RuntimeError):
    """A search or pipeline that could not start or go on (one line: what and what to do)."""


def run_search(args: SearchSettings, console: Console) -> int:
    """One search on ``args.env`` with checked settings (:func:`resolve_settings`).

    Returns:
        The exit status: 0 when it reached its budget or converged, 130 when interrupted
        (everything so far is kept), 1 when its evaluation workers were lost.

    Raises:
        SearchFailed: it cannot start (a run already in the folder, settings that differ from
            the run it resumes, a task or workers that fail to start).
    """
    run_dir = Path(args.out or f"runs/{args.env}-{args.algo}-{args.seed}")
    if (run_dir / CONFIG_FILE).exists() and not args.resume:
        raise SearchFailed(
            f"{run_dir} already holds a run: pass --resume to continue it, or --out DIR"
        )
    if args.resume and (run_dir / CONFIG_FILE).exists():
        recorded = json.loads((run_dir / CONFIG_FILE).read_text())
        if args.n_envs is None:  # keep the recorded concurrency, whatever --workers is now
            args = replace(args, n_envs=recorded.get("n_envs"))
        conflict = resume_conflict(recorded, {**asdict(args), "out": str(run_dir)})
        if conflict:
            raise SearchFailed(f"{run_dir}: {conflict}")
    try:
        task, options = search_task(
            args.env,
            args.env_kwargs,
            device=args.device,
            ray_address=args.ray_address,
            run_dir=run_dir,
        )
        # Only the episode length is needed: the proxy builds nothing.
        probe = gym.make(
            args.env, **task.replace(measurer="proxy", table=None).to_dict(), **options
        )
    except (TaskError, EnvConfigError) as error:
        raise SearchFailed(f"{args.env}: {error}") from None
    episode_length = probe.unwrapped.num_steps
    probe.close()
    # Every core by default; workers and subprocess environments divide them.
    threads = args.threads or default_threads()
    set_threads(1 if args.workers or args.ray_address else threads)
    try:
        task = task.resolved()  # records the teacher's fingerprint in config.json
        venv, backend = make_vec_env(args, task, options, threads)
        if backend is not None:
            backend.start()  # a worker that cannot start stops the search before any folder
    except (TaskError, BackendConfigError) as error:
        raise SearchFailed(f"cannot start the evaluation workers: {error}") from None
    recorder = RunRecorder(run_dir, args.algo, args.seed)
    done = recorder.stop_reason(args.budget)
    if done is not None:
        venv.close()
        console.print(f"{run_dir} already stopped ({done}) at a budget of {args.budget} students")
        _print_summary(console, recorder.write_summary(env=args.env, stop_reason=done), run_dir)
        return 0
    # The run's own folder, even when it was the default: config.json alone reruns the search.
    config = {**asdict(args), "out": str(run_dir), "task": task.to_dict(), "env_options": options}
    write_json_atomic(run_dir / CONFIG_FILE, config)
    warn_shared_cores(console, run_dir, threads)
    venv.seed(args.seed + recorder.evaluations)
    bar = progress(
        args.budget, f"{args.algo} on {args.env}", "student", initial=recorder.distinct_students
    )
    venv = RecordEvaluations(venv, recorder, bar, run_dir / "tb")
    agent = make_agent(args, venv, run_dir, episode_length, recorder.evaluations)
    callback = BudgetAndCheckpoints(
        recorder, args.budget, args.checkpoint_every, run_dir / CHECKPOINT_FILE
    )
    # Enough steps to reach the episode cap; the callback stops at the budget or convergence.
    total_steps = (
        CONVERGED_EPISODE_FACTOR * args.budget - recorder.evaluations + args.n_envs
    ) * episode_length
    start = time.perf_counter()
    interrupted = lost = False
    try:
        agent.learn(total_steps, callback=callback)
    except KeyboardInterrupt:
        interrupted = True
        console.print(
            "interrupted: everything so far is kept; rerun with --resume to continue",
            style="yellow",
            soft_wrap=True,
        )
    except WorkersLost as error:
        interrupted = lost = True
        console.print(f"error: {error}", style="red", soft_wrap=True)
    finally:
        callback.save()
        bar.close()
        venv.close()
    summary = recorder.write_summary(
        env=args.env,
        wall_time=time.perf_counter() - start,
        interrupted=interrupted,
        stop_reason="interrupted" if interrupted else recorder.stop_reason(args.budget),
        reward_free_students=reward_free_students(agent, episode_length),
    )
    _print_summary(console, summary, run_dir)
    _save_best_weights(run_dir, task, console)
    return 1 if lost else 130 if interrupted else 0


def _save_best_weights(run_dir: Path, task: Task, console: Console) -> None:
    # A fresh in-process measurer re-creates the best student's trained network (seeded).
    try:
        with console.status("saving the best student's weights"):
            measurer = task.build_measurer()
            path = write_best_weights(run_dir, measurer)
    except (TaskError, ValueError) as error:
        console.print(f"best student's weights not saved here: {error}", soft_wrap=True)
        return
    except KeyboardInterrupt:
        console.print(
            "best student's weights not saved (its description is); "
            "`python evaluate.py RUN_DIR` trains it from the description",
            style="yellow",
            soft_wrap=True,
        )
        return
    if path is not None:
        console.print(
            f"best student saved to {path} (load with n2n_gym.students.load_student)",
            soft_wrap=True,
        )


def run_pipeline(args: SearchSettings, console: Console) -> int:
    """Removal, then shrinkage of its best student, the selection, the final training and the
    test report (the stages in ``args.stages``), then the baselines when ``args.baselines`` names
    some.

    Returns the exit status of the stage that stopped it (0 when all finished); raises
    :class:`SearchFailed` as :func:`run_search` does.
    """
    out = Path(args.out or f"runs/pipeline-{args.algo}-{args.seed}")
    if args.resume and (out / PIPELINE_FILE).exists():
        conflict = resume_conflict(
            json.loads((out / PIPELINE_FILE).read_text()), {**asdict(args), "out": str(out)}
        )
        if conflict:
            raise SearchFailed(f"{out}: {conflict}")
    previous: Path | None = None
    selected: StudentDescription | None = None  # the select stage's choice
    for number, stage in enumerate(args.stages, 1):
        if stage == "final":
            if previous is None:
                raise SearchFailed("--stages final needs a search stage before it")
            what = "selected" if selected is not None else "best"
            console.rule(f"stage {number}: final training of the {what} student")
            config = replace(FINAL_TRAINING, **args.final)
            student = selected if selected is not None else read_best_student(previous)[0]
            if args.resume and finished_report(out, student, config) is not None:
                console.print(
                    f"final training: done for this student and training, kept: {out / REPORT_FILE}",
                    soft_wrap=True,
                )
            else:
                finish_with_progress(
                    previous,
                    console,
                    student=student,
                    config=config,
                    device=args.device,
                    out_dir=out,
                )
            if args.baselines:
                console.rule("the finished student beside students of its size with no search")
                # A baseline that fails is a row that says so: the student is finished either way.
                baselines_with_progress(
                    out, args.baselines, console, device=args.device, threads=args.threads
                )
            continue
        if stage == "select":
            console.rule(f"stage {number}: the student to train fully, by a short training")
            selected = select_with_progress(
                previous, out / f"{number}-select", replace(FINAL_TRAINING, **args.final), console
            )
            continue
        env_id = stage_env(args.env, stage)
        env_kwargs = dict(args.env_kwargs)
        if stage == "shrink":
            env_kwargs.update(args.shrink_kwargs)
            if previous is not None:
                env_kwargs["start_from"] = str(previous)
        console.rule(f"stage {number}: {stage} search on {env_id}")
        stage_args = replace(
            args, env=env_id, env_kwargs=env_kwargs, out=str(out / f"{number}-{stage}"), stages=()
        )
        status = run_search(stage_args, console)
        if status != 0:
            return status
        # Written once a stage has run (a start that fails leaves no folder): --rerun reads it.
        write_json_atomic(out / PIPELINE_FILE, {**asdict(args), "out": str(out)})
        previous = Path(stage_args.out)
    return 0


def _percent(fraction: float | None) -> float | None:
    return None if fraction is None else 100 * fraction


def _fmt(value: float | None, pattern: str) -> str:
    return "-" if value is None else pattern.format(value)


def _print_summary(console: Console, summary: dict[str, Any], run_dir: Path) -> None:
    table = Table(
        title=f"best student of {summary['algo']} ({run_dir})",
        caption=f"The student's accuracy is after the search's short distillation. Next: "
        f"`n2n-gym evaluate {run_dir}` trains it fully and reports test accuracy; every "
        f"evaluation is in {run_dir / 'evaluations.jsonl'}, the totals in {run_dir / 'summary.json'}.",
    )
    for column in ("", "teacher", "best student"):
        table.add_column(column, justify="right")
    table.add_row(
        "validation accuracy",
        _fmt(_percent(summary["teacher_accuracy"]), "{:.2f} %"),
        _fmt(_percent(summary["best_accuracy"]), "{:.2f} %"),
    )
    table.add_row(
        "parameters", _fmt(summary["teacher_params"], "{:,}"), _fmt(summary["best_params"], "{:,}")
    )
    table.add_row("compression", "1x", _fmt(summary["best_compression"], "{:.2f}x"))
    table.add_row("reward", "", _fmt(summary["best_reward"], "{:.4f}"))
    table.add_row(
        "students",
        "",
        f"{summary['distinct_students']} distinct in {summary['evaluations']} episodes "
        f"({summary['cache_hits']} cache hits)",
    )
    if summary.get("stop_reason") == "converged":
        table.add_row("stopped", "", "converged (no new students)")
    show_table(console, table)
