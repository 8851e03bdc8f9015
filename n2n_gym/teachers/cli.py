"""The teachers command line: ``python -m n2n_gym.teachers list`` and ``... train NAME``."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from typing import Any

import torch

from n2n_gym.arch import InvalidArchitecture
from n2n_gym.cli import OneLineParser, program, show_table
from n2n_gym.data import IMAGE_FOLDER, DataError
from n2n_gym.teachers.errors import TeacherError
from n2n_gym.teachers.loading import _expected_io
from n2n_gym.teachers.training import sidecar_path, train_teacher
from n2n_gym.teachers.zoo import BUNDLED_DEFAULTS, BUNDLED_TEACHERS, ZOO, zoo_spec

__all__ = ["main"]


def _build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog=program("python -m n2n_gym.teachers"),
        description="Train zoo teachers and list the zoo.",
    )
    commands = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    train = commands.add_parser(
        "train",
        help="train a zoo network on a data set and write a checkpoint",
        description="Train a zoo network with supervised learning; writes PATH and PATH.json "
        "after every epoch (atomically), resumable with --resume.",
    )
    train.add_argument("name", help=f"zoo architecture: {', '.join(ZOO)}")
    train.add_argument("--dataset", default="mnist", help="data set name (default: mnist)")
    train.add_argument("--data-dir", default=None, help="folder holding the data set files")
    train.add_argument("--download", action="store_true", help="fetch the data set if missing")
    train.add_argument(
        "--image-size",
        type=int,
        nargs="+",
        default=None,
        metavar="N",
        help="--dataset imagefolder: resize to N x N (or H W); default: the first image's size",
    )
    train.add_argument(
        "--channels",
        type=int,
        choices=(1, 3),
        default=None,
        help="--dataset imagefolder: 1 (grey) or 3 (RGB); default: the first image's",
    )
    train.add_argument("--epochs", type=int, default=3, help="passes over the data (default: 3)")
    train.add_argument("--batch-size", type=int, default=128, help="default: 128")
    train.add_argument("--lr", type=float, default=0.1, help="peak learning rate (default: 0.1)")
    train.add_argument("--weight-decay", type=float, default=5e-4, help="default: 5e-4")
    train.add_argument("--label-smoothing", type=float, default=0.0, help="default: 0")
    train.add_argument("--no-augment", action="store_true", help="train without augmentation")
    train.add_argument("--device", default="auto", help="cpu, cuda or auto (default: auto)")
    train.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    train.add_argument("--out", default=None, help="checkpoint path (default: NAME_DATASET.pt)")
    train.add_argument("--seed", type=int, default=0, help="default: 0")
    train.add_argument("--resume", action="store_true", help="continue the checkpoint at --out")
    train.add_argument("--quiet", action="store_true", help="no progress bars")
    listing = commands.add_parser("list", help="list the zoo with sizes for a data set")
    listing.add_argument("--dataset", default="mnist", help="data set name (default: mnist)")
    return parser


def _list_zoo(dataset: str) -> None:
    from rich.console import Console
    from rich.table import Table

    shape, classes = _expected_io(dataset, None, None)
    table = Table(title=f"Teacher zoo for {dataset} (input {shape}, {classes} classes)")
    table.add_column("name")
    table.add_column("params", justify="right")
    table.add_column("MMACs", justify="right")
    table.add_column("decision units", justify="right")
    table.add_column("weights")
    for name in ZOO:
        spec = zoo_spec(name, shape, classes)
        bundled = (
            "bundled (load_teacher('default'))"
            if BUNDLED_DEFAULTS.get(dataset, "").startswith(f"{name}_")
            else f"bundled (teacher='bundled:{name}_{dataset}')"
            if f"{name}_{dataset}" in BUNDLED_TEACHERS
            else "train with `train`"
        )
        table.add_row(
            name, f"{spec.params:,}", f"{spec.flops / 1e6:,.1f}", str(spec.num_units), bundled
        )
    show_table(Console(), table)  # Markdown when piped or too narrow: every column whole


def _image_folder(args: argparse.Namespace) -> dict[str, Any] | None:
    given = {"image_size": args.image_size, "channels": args.channels}
    given = {k: v for k, v in given.items() if v is not None}
    if args.dataset != IMAGE_FOLDER:
        if given:
            raise DataError("--image-size and --channels apply to --dataset imagefolder")
        return None
    if "image_size" in given and len(given["image_size"]) not in (1, 2):
        raise DataError("--image-size takes N (square) or H W")
    if "image_size" in given:
        size = given["image_size"]
        given["image_size"] = size[0] if len(size) == 1 else size
    return given


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; returns the exit code (2 for bad input)."""
    args = _build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.command == "list":
            _list_zoo(args.dataset)
            return 0
        if args.threads is not None:
            if args.threads < 1:
                raise TeacherError(f"--threads {args.threads} must be a positive integer")
            torch.set_num_threads(args.threads)
        out = args.out or f"{args.name}_{args.dataset}.pt"
        started = time.perf_counter()
        teacher = train_teacher(
            args.name,
            args.dataset,
            out=out,
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            weight_decay=args.weight_decay,
            label_smoothing=args.label_smoothing,
            augment=not args.no_augment,
            seed=args.seed,
            device=args.device,
            data_dir=args.data_dir,
            download=args.download,
            resume=args.resume,
            progress=not args.quiet,
            image_folder=_image_folder(args),
        )
    except (TeacherError, DataError, InvalidArchitecture) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; continue later with --resume", file=sys.stderr)
        return 130
    print(
        f"{teacher.arch} on {teacher.dataset}: val accuracy {teacher.val_accuracy:.4f}, "
        f"test accuracy {teacher.test_accuracy:.4f}, {teacher.params:,} parameters, "
        f"{time.perf_counter() - started:.0f} s; wrote {teacher.source} and {sidecar_path(out)}"
    )
    return 0
