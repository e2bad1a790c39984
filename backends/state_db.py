"""The per-instance SQLite state database: the outbox, download and training jobs, metrics.

SQLite is never shared between processes or hosts: each ComfyUI process has its own state folder.
One connection, guarded by a lock, serves every thread; WAL with ``synchronous=FULL`` so a row that
was committed survives a crash of the pod.

Each feature owns its tables and migrates them itself with :meth:`StateDB.ensure_schema`
(component name → numbered scripts), so features evolve their schemas independently.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path


class StateDB:
    """Owns the SQLite connection and the schema migrations."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=30)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.execute("PRAGMA foreign_keys=ON")
        with self.transaction() as c:
            c.execute(
                "CREATE TABLE IF NOT EXISTS podkit_schema "
                "(component TEXT PRIMARY KEY, version INTEGER NOT NULL)"
            )

    def ensure_schema(self, component: str, migrations: Mapping[int, str]) -> int:
        """Apply ``component``'s migrations newer than its recorded version; returns the version."""
        with self.transaction() as c:
            row = c.execute("SELECT version FROM podkit_schema WHERE component=?", (component,)).fetchone()
            version = int(row[0]) if row else 0
            for v in sorted(migrations):
                if v > version:
                    _run_script(c, migrations[v])
                    version = v
            c.execute(
                "INSERT INTO podkit_schema (component, version) VALUES (?, ?) "
                "ON CONFLICT(component) DO UPDATE SET version=excluded.version",
                (component, version),
            )
        return version

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def query(self, sql: str, params: Sequence[object] = ()) -> list[tuple[object, ...]]:
        with self._lock:
            return list(self._conn.execute(sql, tuple(params)).fetchall())

    def close(self) -> None:
        with self._lock:
            self._conn.close()


def _run_script(conn: sqlite3.Connection, script: str) -> None:
    # executescript() would COMMIT our open transaction; run statement by statement instead.
    for statement in script.split(";"):
        if statement.strip():
            conn.execute(statement)
