"""The outbox's rows: the repository owns its schema and adopts databases from before components."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from podkit.backends.state_db import StateDB
from podkit.jobs.outbox_store import OUTBOX_MIGRATIONS, SqliteOutboxRepo


def test_the_repository_creates_the_outbox_table_not_the_database(tmp_path: Path) -> None:
    db = StateDB(tmp_path / "s.sqlite3")
    try:
        assert db.query("SELECT name FROM sqlite_master WHERE name='outbox'") == []
        repo = SqliteOutboxRepo(db)
        assert db.query("SELECT version FROM podkit_schema WHERE component='outbox'") == [
            (max(OUTBOX_MIGRATIONS),)
        ]
        assert repo.counts() == {}
    finally:
        db.close()


def test_legacy_user_version_database_is_adopted(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    conn = sqlite3.connect(path)
    conn.executescript(OUTBOX_MIGRATIONS[1])
    conn.execute(
        "INSERT INTO outbox (id, bucket, key, spool_path, content_type, size, sha256, status, next_attempt,"
        " created, updated) VALUES ('x', 'b', 'k', '/s', 'image/png', 1, 'h', 'pending', 0, 0, 0)"
    )
    conn.execute("PRAGMA user_version=1")
    conn.commit()
    conn.close()
    db = StateDB(path)
    try:
        repo = SqliteOutboxRepo(db)
        assert [i.id for i in repo.list(None, 10)] == ["x"]
        assert db.query("SELECT id, status FROM outbox") == [("x", "pending")]
        assert db.query("SELECT version FROM podkit_schema WHERE component='outbox'") == [(1,)]
        assert db.query("PRAGMA user_version") == [(0,)]
    finally:
        db.close()
