"""The finished student outside the tool: TorchScript always, ONNX when the ``onnx`` extra is in.

Both files load without ``n2n_gym`` (``torch.jit.load``; ``onnxruntime.InferenceSession``), take a
float batch of images ``(N, C, H, W)`` normalised as the data set's loader normalises them, and
return logits. Each export is checked against the student on a random batch before it is kept.
"""

from __future__ import annotations

import copy
import importlib.util
import logging
import os
import warnings
from pathlib import Path

import torch
from torch import nn

__all__ = ["ONNX_FILE", "TORCHSCRIPT_FILE", "ExportError", "export_student", "onnx_available"]

logger = logging.getLogger(__name__)

TORCHSCRIPT_FILE = "student.torchscript.pt"
ONNX_FILE = "student.onnx"


class ExportError(RuntimeError):
    """An export that could not be written, or that computes something else than the student.

    ``written`` holds the formats that did export.
    """

    def __init__(self, message: str, written: dict[str, Path] | None = None) -> None:
        super().__init__(message)
        self.written = written or {}


def onnx_available() -> bool:
    """Whether the ``onnx`` extra (``pip install 'n2n-gym[onnx]'``) is installed."""
    return all(importlib.util.find_spec(name) is not None for name in ("onnx", "onnxscript"))


def export_student(
    module: nn.Module,
    input_shape: tuple[int, int, int],
    out_dir: str | os.PathLike[str],
    *,
    onnx: bool | None = None,
) -> dict[str, Path]:
    """Write the student as TorchScript (and ONNX) into ``out_dir``, atomically.

    Args:
        module: the trained student (left untouched: a CPU copy is exported).
        input_shape: ``(C, H, W)`` of one image.
        out_dir: the folder (created).
        onnx: also write ONNX; default: when the ``onnx`` extra is installed.

    Returns:
        ``{"torchscript": path, "onnx": path}`` for the files written.

    Raises:
        ExportError: an export failed or does not compute the student's outputs.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    student = copy.deepcopy(module).cpu().eval()
    # A batch of 1 would let torch.export specialise the batch size to 1 (and refuse it as dynamic).
    example = torch.zeros(2, *input_shape)
    check = torch.randn(4, *input_shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = student(check)
    if onnx is None:
        onnx = onnx_available()
    exporters = {"torchscript": _torchscript, **({"onnx": _onnx} if onnx else {})}
    written, failures = {}, []
    for kind, exporter in exporters.items():  # one failed format does not cost the other
        try:
            written[kind] = exporter(student, example, check, expected, out_dir)
        except ExportError as error:
            failures.append(str(error))
    if failures:
        raise ExportError("; ".join(failures), written)
    logger.info("exported the student to %s", ", ".join(str(p) for p in written.values()))
    return written


def _close(got: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    if got.shape != expected.shape or not torch.allclose(got, expected, atol=1e-4, rtol=1e-3):
        raise ExportError(f"the {what} export computes something else than the student")


def _torchscript(
    student: nn.Module,
    example: torch.Tensor,
    check: torch.Tensor,
    expected: torch.Tensor,
    out_dir: Path,
) -> Path:
    path = out_dir / TORCHSCRIPT_FILE
    temporary = path.with_suffix(".tmp")
    try:
        with warnings.catch_warnings():
            # torch.jit is deprecated upstream, and still what loads everywhere without n2n_gym
            warnings.simplefilter("ignore", FutureWarning)
            traced = torch.jit.trace(student, example)
            torch.jit.save(traced, str(temporary))
            reloaded = torch.jit.load(str(temporary))
    except Exception as error:  # the tracer's failures come in many types
        raise ExportError(f"TorchScript export failed ({type(error).__name__}: {error})") from error
    with torch.no_grad():
        _close(reloaded(check), expected, "TorchScript")
    os.replace(temporary, path)
    return path


def _onnx(
    student: nn.Module,
    example: torch.Tensor,
    check: torch.Tensor,
    expected: torch.Tensor,
    out_dir: Path,
) -> Path:
    if not onnx_available():
        raise ExportError("ONNX export needs the onnx extra: pip install 'n2n-gym[onnx]'")
    path = out_dir / ONNX_FILE
    temporary = path.with_suffix(".tmp.onnx")
    batch = torch.export.Dim("batch", min=1)
    try:
        torch.onnx.export(
            student,
            (example,),
            str(temporary),
            input_names=["images"],
            output_names=["logits"],
            dynamic_shapes=({0: batch},),
            external_data=False,
            verbose=False,
        )
    except Exception as error:  # the exporter's failures come in many types
        message = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise ExportError(f"ONNX export failed ({type(error).__name__}: {message})") from error
    if importlib.util.find_spec("onnxruntime") is not None:
        import onnxruntime

        session = onnxruntime.InferenceSession(str(temporary), providers=["CPUExecutionProvider"])
        (got,) = session.run(None, {"images": check.numpy()})
        _close(torch.from_numpy(got), expected, "ONNX")
    os.replace(temporary, path)
    return path
