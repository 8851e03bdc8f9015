"""Students per second: our distillation fast path against the usual PyTorch training loop.

Both paths distil the same students from the same teacher on the same transfer images for the same
epochs and batch size, and score them on the same validation images:

- **ours**: ``DistillationMeasurer`` behind an ``Evaluator`` (no cache) — transfer images on the
  device once, teacher logits computed once for all students, batches by index slicing of a seeded
  permutation, evaluation under ``inference_mode`` in large batches; bf16 autocast and
  channels-last on CUDA.
- **reference**: the loop most people write — ``DataLoader(TensorDataset(...), shuffle=True)``,
  per-batch ``.to(device)``, a teacher forward pass on every batch, fp32, evaluation through a
  ``DataLoader`` at the training batch size under ``no_grad``.

Students are timed alternately (reference, ours, reference, ...) so a change in machine load hits
both; ours includes its one-off set-up (teacher logits, teacher accuracy). ``--ablation`` adds
reference variants that each take one of our measures, to show where the ratio comes from.

The limit is measured in the same run: the machine's matmul peak (GFLOP/s of 2048x2048 products
on the same threads, best of several, before and after the students; fp32 on the CPU, bf16 on
CUDA, the dtypes students train in). Each path's achieved
GFLOP/s is the students' training and scoring FLOPs, counted by ``torch.utils.flop_counter`` on one
optimiser step and one validation batch (2 FLOPs per multiply-add, as the matmul peak counts them),
divided by its seconds. Two batched paths measure "many students at once": a process pool with one
one-thread worker per core (CPU), and the thread back-end (one process, one measurer; on CUDA one
stream per slot, ``--concurrent`` slots), each given every student in one ``evaluate_many``.

    python bench/bench_evaluator.py --students 6            # CPU, and CUDA when present
    python bench/bench_evaluator.py --device cuda --students 32 --concurrent 16
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import statistics
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from reward_fidelity import random_removal_students
from rich.console import Console
from rich.table import Table
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.flop_counter import FlopCounterMode

from n2n_gym.arch import StudentDescription
from n2n_gym.backends import ProcessPoolBackend, ThreadBackend, WorkerBackend
from n2n_gym.data import DatasetSplits, load_dataset
from n2n_gym.distill import DistillConfig, transfer_indices
from n2n_gym.evaluation import Evaluator
from n2n_gym.measure import DistillationMeasurer
from n2n_gym.surgery import build_student
from n2n_gym.task import Task
from n2n_gym.teachers import Teacher, load_teacher


@dataclass(frozen=True)
class Reference:
    """A variant of the usual training loop; the defaults are the plain one."""

    name: str
    cached_logits: bool = False
    """teacher logits computed once instead of on every batch"""
    loader: bool = True
    """batches through DataLoader(TensorDataset) instead of index slices of on-device tensors"""
    eval_batch: int | None = None
    """evaluation batch size; None: the training batch size"""
    channels_last: bool = False
    """images and networks in the channels-last layout"""


PLAIN = Reference("reference")
ABLATIONS = (
    Reference("reference + cached teacher logits", cached_logits=True),
    Reference("reference + no DataLoader", loader=False),
    Reference("reference + eval batch 256", eval_batch=256),
    Reference("reference + channels-last", channels_last=True),
)


class ReferenceLoop:
    """The usual distillation loop, with the one-off work (teacher accuracy) done once."""

    def __init__(
        self,
        variant: Reference,
        teacher: Teacher,
        data: DatasetSplits,
        config: DistillConfig,
        device: torch.device,
    ) -> None:
        self.variant, self.config, self.device = variant, config, device
        index = transfer_indices(len(data.train_y), config.transfer_size, config.seed)
        self.train = TensorDataset(data.train_x[index], data.train_y[index])
        size = config.eval_size or len(data.val_y)
        self.val = TensorDataset(data.val_x[:size], data.val_y[:size])
        self.teacher = self.layout(copy.deepcopy(teacher.module).to(device).eval())
        self.teacher_accuracy = self.accuracy(self.teacher)
        self.logits = None
        if variant.cached_logits:
            with torch.no_grad():
                self.logits = self.teacher(self.layout(self.train.tensors[0].to(device)))

    def layout(self, value):
        """A module or image batch in the variant's memory layout."""
        if not self.variant.channels_last:
            return value
        if isinstance(value, torch.nn.Module):
            return value.to(memory_format=torch.channels_last)
        return value.contiguous(memory_format=torch.channels_last)

    def batches(self, dataset: TensorDataset, batch_size: int, shuffle: bool, generator=None):
        if self.variant.loader:
            loader = DataLoader(dataset, batch_size, shuffle=shuffle, generator=generator)
            for x, y in loader:
                yield self.layout(x.to(device=self.device)), y.to(device=self.device), None
            return
        x_all, y_all = (t.to(self.device) for t in dataset.tensors[:2])
        x_all = self.layout(x_all)
        order = torch.randperm(len(y_all), generator=generator) if shuffle else None
        for start in range(0, len(y_all), batch_size):
            index = (
                order[start : start + batch_size]
                if order is not None
                else slice(start, start + batch_size)
            )
            yield x_all[index], y_all[index], index

    def accuracy(self, model: torch.nn.Module) -> float:
        model.eval()
        correct = 0
        with torch.no_grad():
            batch = self.variant.eval_batch or self.config.batch_size
            for x, y, _ in self.batches(self.val, batch, shuffle=False):
                correct += (model(x).argmax(1) == y).sum().item()
        return correct / len(self.val)

    def evaluate(self, student_module: torch.nn.Module) -> float:
        model = self.layout(student_module.to(self.device))
        optimiser = torch.optim.Adam(
            model.parameters(), lr=self.config.lr, weight_decay=self.config.weight_decay
        )
        generator = torch.Generator().manual_seed(self.config.seed)
        cached = self.variant.cached_logits and self.variant.loader
        for _ in range(self.config.epochs):
            model.train()
            # With a DataLoader the batch's positions are unknown, so cached logits travel with it.
            dataset = (
                TensorDataset(*self.train.tensors, self.logits.cpu()) if cached else self.train
            )
            for batch in self._train_batches(dataset, generator):
                x, targets = batch
                optimiser.zero_grad()
                loss = F.mse_loss(model(x), targets)
                loss.backward()
                optimiser.step()
        return self.accuracy(model)

    def _train_batches(self, dataset: TensorDataset, generator):
        batch_size = self.config.batch_size
        if self.variant.cached_logits and self.variant.loader:
            loader = DataLoader(dataset, batch_size, shuffle=True, generator=generator)
            for x, _, logits in loader:
                yield self.layout(x.to(self.device)), logits.to(self.device)
            return
        for x, _, index in self.batches(dataset, batch_size, shuffle=True, generator=generator):
            if self.logits is not None:
                yield x, self.logits[index]
                continue
            with torch.no_grad():
                targets = self.teacher(x)
            yield x, targets


def benchmark(
    device: torch.device,
    teacher: Teacher,
    data: DatasetSplits,
    config: DistillConfig,
    students,
    variants: tuple[Reference, ...],
    console: Console,
) -> list[tuple[str, float, float]]:
    """Seconds per path, alternating students; returns (name, total seconds, mean accuracy)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    measurer = DistillationMeasurer(teacher, data, config, device=device)
    _ = measurer.teacher_accuracy, measurer.targets  # the one-off set-up, counted in our time
    ours = Evaluator(measurer)
    totals = {"ours": time.perf_counter() - start}
    accuracies: dict[str, list[float]] = {"ours": []}
    references = {}
    for variant in variants:
        start = time.perf_counter()
        references[variant.name] = ReferenceLoop(variant, teacher, data, config, device)
        totals[variant.name] = time.perf_counter() - start
        accuracies[variant.name] = []
    for number, student in enumerate(students, 1):
        for name, loop in references.items():
            start = time.perf_counter()
            accuracies[name].append(loop.evaluate(measurer.build(student)[1]))
            if device.type == "cuda":
                torch.cuda.synchronize()
            totals[name] += time.perf_counter() - start
        result = ours.evaluate(student)
        totals["ours"] += result.wall_time
        accuracies["ours"].append(result.accuracy)
        console.print(
            f"  [{device.type}] student {number}/{len(students)}: "
            + ", ".join(f"{name} {totals[name]:.1f} s" for name in totals)
        )
    return [(name, totals[name], statistics.mean(accuracies[name])) for name in totals]


def matmul_peak(device: torch.device, size: int = 2048, repeats: int = 8) -> float:
    """GFLOP/s of the best of ``repeats`` ``size``x``size`` matmuls on ``device``, in the dtype
    students train in there (fp32 on the CPU, bf16 under CUDA's autocast)."""
    generator = torch.Generator().manual_seed(0)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a, b = (torch.randn(size, size, generator=generator).to(device, dtype) for _ in range(2))
    best = math.inf
    for _ in range(repeats + 1):  # the first warms up
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def student_flops(
    teacher: Teacher, data: DatasetSplits, student: StudentDescription, config: DistillConfig
) -> float:
    """FLOPs of one measurement: every training step's forward and backward, then scoring."""
    module = build_student(teacher.module, student)[1].train()
    x = data.train_x[: config.batch_size].contiguous(memory_format=torch.channels_last)
    with FlopCounterMode(display=False) as counter:
        output = module(x)
        torch.nn.functional.mse_loss(output, torch.zeros_like(output)).backward()
    step = counter.get_total_flops() / len(x)
    module.eval()
    with FlopCounterMode(display=False) as forward, torch.inference_mode():
        module(x)
    images = config.epochs * len(transfer_indices(len(data.train_y), config.transfer_size, 0))
    scored = config.eval_size or len(data.val_y)
    return step * images + forward.get_total_flops() / len(x) * scored


def time_batched(
    backend: WorkerBackend, students: list[StudentDescription]
) -> tuple[float, float, float]:
    """(start-up seconds, seconds, mean accuracy) of every student in one ``evaluate_many``."""
    with backend:
        start = time.perf_counter()
        backend.start()
        startup = time.perf_counter() - start
        start = time.perf_counter()
        results = Evaluator(backend).evaluate_many(students)
        seconds = time.perf_counter() - start
    return startup, seconds, statistics.mean(r.accuracy for r in results if r.ok)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--students", type=int, default=6)
    parser.add_argument(
        "--device", default="all", help="cpu, cuda, or all (CPU, plus CUDA when present)"
    )
    parser.add_argument("--teacher", default="default")
    parser.add_argument("--arch", default=None)
    parser.add_argument("--transfer-size", type=int, default=DistillConfig().transfer_size)
    parser.add_argument("--epochs", type=int, default=DistillConfig().epochs)
    parser.add_argument("--batch-size", type=int, default=DistillConfig().batch_size)
    parser.add_argument("--eval-size", type=int, default=DistillConfig().eval_size)
    parser.add_argument(
        "--concurrent", type=int, default=16, help="students in flight on a GPU (thread back-end)"
    )
    parser.add_argument("--ablation", action="store_true", help="also time partial speed-ups")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    console = Console()
    console = Console(width=120) if console.width < 120 else console
    if args.device == "all":
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    else:
        devices = [args.device]
    teacher = load_teacher(args.teacher, dataset="mnist", arch=args.arch, device="cpu")
    data = load_dataset("mnist")
    config = DistillConfig(
        transfer_size=args.transfer_size,
        epochs=args.epochs,
        batch_size=args.batch_size,
        eval_size=args.eval_size,
    )
    students = random_removal_students(teacher.spec, args.students, args.seed)
    variants = (PLAIN, *ABLATIONS) if args.ablation else (PLAIN,)
    threads = torch.get_num_threads()
    console.print(
        f"{len(students)} students, {config.transfer_size} transfer images x {config.epochs} "
        f"epoch(s), batch {config.batch_size}, {config.eval_size} validation images; "
        f"torch threads {threads}, {os.cpu_count()} cores"
    )
    table = Table(title="Distillation throughput against the machine's matmul peak")
    for column in (
        "device",
        "path",
        "seconds",
        "students/s",
        "vs reference",
        "GFLOP/s",
        "of peak",
        "mean acc",
    ):
        table.add_column(column, justify="right")
    for name in devices:
        device = torch.device(name)
        if device.type == "cuda":
            console.print(f"CUDA device: {torch.cuda.get_device_name(device)}")
        peaks = [matmul_peak(device)]
        flops = sum(student_flops(teacher, data, student, config) for student in students)
        rows = benchmark(device, teacher, data, config, students, variants, console)
        task = Task(teacher=args.teacher, teacher_arch=args.arch, fidelity=config, device=name)
        batched: list[tuple[str, WorkerBackend]] = []
        if device.type == "cpu":
            cores = os.cpu_count() or 1
            batched.append(
                (f"ours, pool of {cores} x 1 thread", ProcessPoolBackend(task, cores, threads=1))
            )
            batched.append((f"ours, {cores} threads", ThreadBackend(task, cores)))
        else:
            batched.append(
                (f"ours, {args.concurrent} streams", ThreadBackend(task, args.concurrent))
            )
        for path, backend in batched:
            startup, seconds, mean_accuracy = time_batched(backend, students)
            torch.set_num_threads(threads)  # the thread back-end leaves one thread set
            console.print(f"  [{name}] {path}: {seconds:.1f} s (start-up {startup:.1f} s)")
            rows.append((path, seconds, mean_accuracy))
        peaks.append(matmul_peak(device))
        peak = max(peaks)
        console.print(
            f"  [{name}] matmul peak {peaks[0]:.0f} GFLOP/s before, {peaks[1]:.0f} after; "
            f"the students' work: {flops / 1e9:.1f} GFLOP"
        )
        reference_seconds = dict((row[0], row[1]) for row in rows)[PLAIN.name]
        for path, seconds, mean_accuracy in rows:
            achieved = flops / seconds / 1e9
            table.add_row(
                name,
                path,
                f"{seconds:.1f}",
                f"{len(students) / seconds:.3f}",
                f"{reference_seconds / seconds:.2f}x",
                f"{achieved:.0f}",
                f"{achieved / peak:.0%}",
                f"{mean_accuracy:.4f}",
            )
    console.print(table)


if __name__ == "__main__":
    main()
