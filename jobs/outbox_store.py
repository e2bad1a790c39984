"""The outbox's rows in the instance's state database (:class:`~podkit.core.outbox.OutboxRepo`).

The outbox owns its table like every other job kind owns its own: the schema is migrated here, not
by :class:`~podkit.backends.state_db.StateDB`. Databases from before per-component schemas kept the
outbox's version in SQLite's ``user_version``; the repository adopts it once, so they keep working.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from ..backends.state_db import StateDB
from ..core.outbox import OutboxItem, UploadStatus

OUTBOX_MIGRATIONS: dict[int, str] = {
    1: """
    CREATE TABLE IF NOT EXISTS outbox (
        id TEXT PRIMARY KEY,
        bucket TEXT NOT NULL,
        key TEXT NOT NULL,
        spool_path TEXT NOT NULL,
        content_type TEXT NOT NULL,
        size INTEGER NOT NULL,
        sha256 TEXT NOT NULL,
        status TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt REAL NOT NULL,
        last_error TEXT,
        created REAL NOT NULL,
        updated REAL NOT NULL,
        prompt_id TEXT,
        etag TEXT
    );
    CREATE INDEX IF NOT EXISTS outbox_status_due ON outbox(status, next_attempt);
    CREATE INDEX IF NOT EXISTS outbox_prompt ON outbox(prompt_id);
    """,
}

_OUTBOX_COLUMNS = (
    "id, bucket, key, spool_path, content_type, size, sha256, status, attempts, next_attempt, "
    "last_error, created, updated, prompt_id, etag"
)


def adopt_legacy_version(db: StateDB) -> None:
    """Record a pre-component database's ``user_version`` as the outbox's schema version."""
    with db.transaction() as c:
        legacy = int(c.execute("PRAGMA user_version").fetchone()[0])
        if legacy:
            c.execute(
                "INSERT OR IGNORE INTO podkit_schema (component, version) VALUES ('outbox', ?)", (legacy,)
            )
            c.execute("PRAGMA user_version=0")


def _row(r: Sequence[object]) -> OutboxItem:
    return OutboxItem(
        id=str(r[0]),
        bucket=str(r[1]),
        key=str(r[2]),
        spool_path=str(r[3]),
        content_type=str(r[4]),
        size=int(r[5]),  # type: ignore[call-overload]
        sha256=str(r[6]),
        status=str(r[7]),
        attempts=int(r[8]),  # type: ignore[call-overload]
        next_attempt=float(r[9]),  # type: ignore[arg-type]
        last_error=None if r[10] is None else str(r[10]),
        created=float(r[11]),  # type: ignore[arg-type]
        updated=float(r[12]),  # type: ignore[arg-type]
        prompt_id=None if r[13] is None else str(r[13]),
        etag=None if r[14] is None else str(r[14]),
    )


class SqliteOutboxRepo:
    """:class:`~podkit.core.outbox.OutboxRepo` on the state database."""

    def __init__(self, db: StateDB) -> None:
        self.db = db
        adopt_legacy_version(db)
        db.ensure_schema("outbox", OUTBOX_MIGRATIONS)

    def _values(self, i: OutboxItem) -> tuple[object, ...]:
        return (
            i.id, i.bucket, i.key, i.spool_path, i.content_type, i.size, i.sha256, i.status, i.attempts,
            i.next_attempt, i.last_error, i.created, i.updated, i.prompt_id, i.etag,
        )  # fmt: skip

    def insert(self, item: OutboxItem) -> None:
        with self.db.transaction() as c:
            c.execute(
                f"INSERT INTO outbox ({_OUTBOX_COLUMNS}) VALUES ({','.join('?' * 15)})", self._values(item)
            )

    def update(self, item: OutboxItem) -> None:
        with self.db.transaction() as c:
            c.execute(
                "UPDATE outbox SET status=?, attempts=?, next_attempt=?, last_error=?, updated=?, etag=? "
                "WHERE id=?",
                (
                    item.status,
                    item.attempts,
                    item.next_attempt,
                    item.last_error,
                    item.updated,
                    item.etag,
                    item.id,
                ),
            )

    def get(self, item_id: str) -> OutboxItem | None:
        rows = self.db.query(f"SELECT {_OUTBOX_COLUMNS} FROM outbox WHERE id=?", (item_id,))
        return _row(rows[0]) if rows else None

    def delete(self, item_id: str) -> None:
        with self.db.transaction() as c:
            c.execute("DELETE FROM outbox WHERE id=?", (item_id,))

    def withdraw(self, item_id: str) -> bool:
        with self.db.transaction() as c:
            cur = c.execute("DELETE FROM outbox WHERE id=? AND status IN ('pending', 'failed')", (item_id,))
            return cur.rowcount > 0

    def claim_due(self, now: float, limit: int) -> list[OutboxItem]:
        with self.db.transaction() as c:
            rows = c.execute(
                f"SELECT {_OUTBOX_COLUMNS} FROM outbox WHERE status='pending' AND next_attempt<=? "
                "ORDER BY next_attempt, created LIMIT ?",
                (now, limit),
            ).fetchall()
            items = [_row(r) for r in rows]
            for i in items:
                c.execute("UPDATE outbox SET status='uploading', updated=? WHERE id=?", (now, i.id))
        return [replace(i, status=UploadStatus.UPLOADING, updated=now) for i in items]

    def list(self, statuses: Sequence[str] | None, limit: int) -> list[OutboxItem]:
        if statuses:
            marks = ",".join("?" * len(statuses))
            rows = self.db.query(
                f"SELECT {_OUTBOX_COLUMNS} FROM outbox WHERE status IN ({marks}) "
                "ORDER BY created DESC LIMIT ?",
                (*statuses, limit),
            )
        else:
            rows = self.db.query(
                f"SELECT {_OUTBOX_COLUMNS} FROM outbox ORDER BY created DESC LIMIT ?", (limit,)
            )
        return [_row(r) for r in rows]

    def counts(self) -> dict[str, int]:
        rows = self.db.query("SELECT status, COUNT(*) FROM outbox GROUP BY status")
        return {str(s): int(n) for s, n in rows}  # type: ignore[call-overload]

    def next_due(self) -> float | None:
        rows = self.db.query("SELECT MIN(next_attempt) FROM outbox WHERE status='pending'")
        value = rows[0][0] if rows else None
        return float(value) if isinstance(value, (int, float)) else None

    def prune_done(self, keep: int) -> int:
        with self.db.transaction() as c:
            cur = c.execute(
                "DELETE FROM outbox WHERE status='done' AND id NOT IN "
                "(SELECT id FROM outbox WHERE status='done' ORDER BY updated DESC LIMIT ?)",
                (keep,),
            )
            return int(cur.rowcount)
