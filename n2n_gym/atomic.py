"""Crash-safe file writes: readers see the old file or the new one, never half of one."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then move it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)  # atomic within one file system
    finally:
        tmp.unlink(missing_ok=True)


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):  # numpy scalars and arrays, tensors
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def write_json_atomic(path: Path, data: Any) -> None:
    """Write ``data`` as indented JSON, atomically."""
    text = json.dumps(data, indent=2, sort_keys=True, default=_jsonable)
    atomic_write(path, lambda tmp: tmp.write_text(text))


def write_gzip_json_atomic(path: str | os.PathLike[str], data: Any) -> Path:
    """Write ``data`` as compact, key-sorted JSON, gzipped, atomically; the same data gives the
    same bytes (no time stamp in the gzip header)."""
    import gzip

    path = Path(path)
    text = json.dumps(data, separators=(",", ":"), sort_keys=True)

    def write(tmp: Path) -> None:
        with (
            open(tmp, "wb") as raw,
            gzip.GzipFile(filename="", fileobj=raw, mode="wb", mtime=0) as out,
        ):
            out.write(text.encode())

    atomic_write(path, write)
    return path


def json_line(data: Any) -> str:
    """One compact JSON line (numpy values allowed)."""
    return json.dumps(data, default=_jsonable)
