"""The persistent measurement cache: one SQLite file shared by runs and processes.

The cache stores *measurements* (accuracy, parameters, FLOPs, deterministic errors), not rewards:
the reward is recomputed from a measurement on every call, because an annealed constraint makes
the same student's reward depend on the search's progress, and changing constraints should not
retrain anybody. The reward configuration is therefore deliberately not part of the key.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from n2n_gym.arch import StudentPlan

__all__ = ["CACHE_FORMAT", "MeasurementCache", "json_digest", "measurement_key", "student_identity"]

# Bump when the meaning of a cached measurement changes, so old entries are ignored.
CACHE_FORMAT = 2


def json_digest(data: Any) -> str:
    """A stable SHA-256 of JSON-able ``data`` (key order does not matter)."""
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def student_identity(plan: StudentPlan) -> dict[str, Any]:
    """What identifies a student: its plan, not its ratios.

    Ratios that round to the same widths build the same network with the same inherited weights.
    """
    return {"spec": plan.spec.key, "origins": list(plan.origins), "kept": list(plan.kept_widths)}


def measurement_key(plan: StudentPlan, context: dict[str, Any]) -> str:
    """The cache key of ``plan`` measured in ``context`` (see ``Measurer.context``)."""
    return json_digest({"format": CACHE_FORMAT, "student": student_identity(plan), **context})


class MeasurementCache:
    """A persistent map from measurement keys to measurements, in one SQLite file.

    Safe for several processes at once: the database runs in WAL mode (readers never block the
    writer) with a busy timeout, and every write is one short transaction. A cache object can be
    pickled into worker processes; each process (and a forked child) opens its own connection.
    ``path=":memory:"`` gives a private in-process cache.

    Args:
        path: the database file (created with its folder when missing), or ``":memory:"``.
        timeout: seconds to wait for another process's write lock before failing.
    """

    def __init__(self, path: str | os.PathLike[str], timeout: float = 60.0) -> None:
        self.path = os.fspath(path)
        self.timeout = timeout
        self._lock = threading.Lock()
        self._connection: sqlite3.Connection | None = None
        self._pid = -1
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._connect()

    def _connect(self) -> sqlite3.Connection:
        if self._connection is not None and self._pid == os.getpid():
            return self._connection
        # A connection inherited through fork must not be used (SQLite forbids it): open a new one.
        connection = sqlite3.connect(
            self.path, timeout=self.timeout, isolation_level=None, check_same_thread=False
        )
        connection.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")
        if self.path != ":memory:":
            connection.execute("PRAGMA journal_mode = WAL")
            # WAL + NORMAL is durable against process crashes; only a power cut may lose the
            # latest entries, which a cache can afford.
            connection.execute("PRAGMA synchronous = NORMAL")
        connection.execute(
            "CREATE TABLE IF NOT EXISTS measurements "
            "(key TEXT PRIMARY KEY, value TEXT NOT NULL, created REAL NOT NULL)"
        )
        self._connection, self._pid = connection, os.getpid()
        return connection

    def get(self, key: str) -> dict[str, Any] | None:
        """The stored value for ``key``, or ``None``."""
        with self._lock:
            row = (
                self._connect()
                .execute("SELECT value FROM measurements WHERE key = ?", (key,))
                .fetchone()
            )
        return None if row is None else json.loads(row[0])

    def put(self, key: str, value: dict[str, Any]) -> None:
        """Store a JSON-able ``value`` under ``key`` (replacing an older one)."""
        text = json.dumps(value, sort_keys=True)
        with self._lock:
            self._connect().execute(
                "INSERT OR REPLACE INTO measurements (key, value, created) VALUES (?, ?, ?)",
                (key, text, time.time()),
            )

    def __len__(self) -> int:
        with self._lock:
            return self._connect().execute("SELECT COUNT(*) FROM measurements").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            if self._connection is not None and self._pid == os.getpid():
                self._connection.close()
            self._connection = None

    def __enter__(self) -> MeasurementCache:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        if self.path == ":memory:":
            raise TypeError("an in-memory MeasurementCache cannot be shared with other processes")
        return {"path": self.path, "timeout": self.timeout}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"], state["timeout"])

    def __repr__(self) -> str:
        return f"MeasurementCache({self.path!r})"
