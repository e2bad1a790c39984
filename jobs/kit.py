"""What every job kind shares: its table, save-then-emit announcing, one backoff, one retry rule.

A job row is ``id, status, created, updated`` and a JSON blob, plus the columns a kind declares
(downloads add ``key``, ``item``, ``force``). :class:`TableSpec` declares a kind's table with the
names it has always had, so a state database written before the kit opens without a migration:
the generated ``CREATE TABLE IF NOT EXISTS`` is what the kind used to write, and the kind's
schema version in ``podkit_schema`` stays 1.

:class:`Announcer` is the one place a job's change reaches the database and the browsers: save
first, then emit (a client never hears of a state the database does not hold), with the kind's
:class:`Throttle` for progress and no throttle for a change of status.

The retry rule (:class:`Backoff`, :func:`backoff_delay`, :func:`retryable`) is defined in
``core/retry.py``, because ``core``'s outbox and the ``backends`` engine use it too and neither may
import ``jobs``; the kit re-exports it so a job kind finds everything in one place.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from ..backends.state_db import StateDB
from ..core.events import Notifier
from ..core.retry import Backoff, backoff_delay, retryable

__all__ = [
    "Announcer", "Backoff", "JobRow", "JobTable", "TableSpec", "Throttle", "backoff_delay", "retryable",
]  # fmt: skip

logger = logging.getLogger(__name__)

R = TypeVar("R")


@dataclass(frozen=True)
class TableSpec:
    """A kind's job table: its name, its schema component, its blob column and its extra columns.

    Args:
        table: the SQLite table.
        component: the name its schema version is recorded under (``StateDB.ensure_schema``).
        blob: the JSON column (``data`` for training, ``state`` for downloads).
        columns: extra columns in table order before ``status``, as (name, SQL type).
        indexes: index name → its column list.
    """

    table: str
    component: str
    blob: str = "data"
    columns: tuple[tuple[str, str], ...] = ()
    indexes: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        names = [self.table, self.component, self.blob, *(c for c, _ in self.columns), *self.indexes]
        bad = [n for n in names if not n.isidentifier()]
        if bad:  # names go into SQL text: identifiers only
            raise ValueError(f"not SQL identifiers: {bad}")

    @property
    def extra(self) -> tuple[str, ...]:
        return tuple(c for c, _ in self.columns)

    @property
    def all_columns(self) -> tuple[str, ...]:
        return ("id", *self.extra, "status", "created", "updated", self.blob)

    def create_sql(self) -> str:
        """The schema, column for column what the kind wrote before the kit existed."""
        cols = ["id TEXT PRIMARY KEY", *(f"{c} {t}" for c, t in self.columns)]
        cols += ["status TEXT NOT NULL", "created REAL NOT NULL", "updated REAL NOT NULL"]
        cols.append(f"{self.blob} TEXT NOT NULL")
        script = [f"CREATE TABLE IF NOT EXISTS {self.table} ({', '.join(cols)})"]
        script += [f"CREATE INDEX IF NOT EXISTS {n} ON {self.table}({c})" for n, c in self.indexes.items()]
        return ";\n".join(script)


@dataclass(frozen=True)
class JobRow:
    """One stored job: the common columns, the decoded blob and the kind's extra columns."""

    id: str
    status: str
    created: float
    updated: float
    data: Mapping[str, Any]
    extra: Mapping[str, object] = field(default_factory=dict)


class JobTable:
    """A kind's rows in the state database; every method is one statement (thread-safe)."""

    def __init__(self, db: StateDB, spec: TableSpec) -> None:
        self.db = db
        self.spec = spec
        db.ensure_schema(spec.component, {1: spec.create_sql()})
        self._select = f"SELECT {', '.join(spec.all_columns)} FROM {spec.table}"  # noqa: S608

    def save(self, row: JobRow) -> None:
        """Insert or update ``row`` (``created`` is kept from the first save)."""
        s = self.spec
        cols = s.all_columns
        values = (row.id, *(row.extra.get(c) for c in s.extra), row.status, row.created, row.updated)
        changed = ", ".join(f"{c}=excluded.{c}" for c in (*s.extra, "status", "updated", s.blob))
        with self.db.transaction() as c:
            c.execute(
                f"INSERT INTO {s.table} ({', '.join(cols)}) VALUES ({','.join('?' * len(cols))}) "  # noqa: S608
                f"ON CONFLICT(id) DO UPDATE SET {changed}",
                (*values, json.dumps(dict(row.data))),
            )

    def get(self, job_id: str) -> JobRow | None:
        rows = self._rows(self.db.query(f"{self._select} WHERE id=?", (job_id,)))
        return rows[0] if rows else None

    def rows(
        self, *, statuses: Sequence[str] | None = None, newest_first: bool = True, limit: int | None = None
    ) -> list[JobRow]:
        """Rows by creation time, optionally only those in ``statuses``."""
        sql, params = self._select, list[object]()
        if statuses:
            sql += f" WHERE status IN ({','.join('?' * len(statuses))})"
            params += [str(s) for s in statuses]
        sql += " ORDER BY created DESC" if newest_first else " ORDER BY created"
        if limit is not None:
            sql, params = sql + " LIMIT ?", [*params, limit]
        return self._rows(self.db.query(sql, params))

    def delete(self, *job_ids: str) -> None:
        with self.db.transaction() as c:
            c.executemany(f"DELETE FROM {self.spec.table} WHERE id=?", [(i,) for i in job_ids])  # noqa: S608

    def counts(self) -> dict[str, int]:
        rows = self.db.query(f"SELECT status, COUNT(*) FROM {self.spec.table} GROUP BY status")  # noqa: S608
        return {str(s): n for s, n in rows if isinstance(n, int)}

    def _rows(self, raw: Sequence[Sequence[object]]) -> list[JobRow]:
        out: list[JobRow] = []
        n = len(self.spec.extra)
        for r in raw:
            try:
                data = json.loads(str(r[-1]))
                if not isinstance(data, dict):
                    raise TypeError("not a JSON object")
                created, updated = float(str(r[n + 2])), float(str(r[n + 3]))
            except (ValueError, TypeError):
                logger.warning("%s row %s is unreadable; skipped", self.spec.table, r[0])
                continue
            extra = dict(zip(self.spec.extra, r[1 : n + 1], strict=True))
            out.append(JobRow(str(r[0]), str(r[n + 1]), created, updated, data, extra))
        return out


@dataclass(frozen=True)
class Throttle:
    """How often a running job's progress is saved and announced (a change of status: always)."""

    save_every: float
    emit_every: float


class Announcer(Generic[R]):
    """Save, then emit: the one path from a job's change to the database and the browsers.

    Args:
        notifier: where events go.
        event: the event name (``podkit.download``, …).
        save: persists a record.
        wire: the record's event payload.
        throttle: the kind's progress throttle.
        clock: monotonic seconds (tests pass their own).
    """

    def __init__(
        self,
        notifier: Notifier,
        event: str,
        *,
        save: Callable[[R], None],
        wire: Callable[[R], Mapping[str, object]],
        throttle: Throttle,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.notifier, self.event, self.throttle, self.clock = notifier, event, throttle, clock
        self._save, self._wire = save, wire
        self._saved: dict[str, float] = {}
        self._emitted: dict[str, float] = {}

    def changed(self, job_id: str, record: R, *, save: bool = True) -> None:
        """A change every client must see now (a new status, a final state): save and emit."""
        if save:
            self._save(record)
            self._saved[job_id] = self.clock()
        self._emitted[job_id] = self.clock()
        self.notifier.emit(self.event, self._wire(record))

    def progress(self, job_id: str, record: R, *, force_emit: bool = False) -> None:
        """Progress: emitted at most every ``emit_every`` s, saved with an emit every ``save_every`` s."""
        now = self.clock()
        if force_emit or now - self._emitted.get(job_id, 0.0) >= self.throttle.emit_every:
            self.changed(job_id, record, save=now - self._saved.get(job_id, 0.0) >= self.throttle.save_every)

    def forget(self, job_id: str) -> None:
        """Drop a finished or removed job's throttle stamps."""
        self._saved.pop(job_id, None)
        self._emitted.pop(job_id, None)
