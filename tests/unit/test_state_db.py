"""The state database migrates each component's tables on its own, and upgrades old databases."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from podkit.backends.state_db import OUTBOX_MIGRATIONS, StateDB


def test_components_migrate_independently(tmp_path: Path) -> None:
    db = StateDB(tmp_path / "s.sqlite3")
    try:
        assert db.ensure_schema("widgets", {1: "CREATE TABLE widgets (id TEXT PRIMARY KEY)"}) == 1
        # A later version of the same component adds a column; re-running is a no-op.
        v2 = {1: "CREATE TABLE widgets (id TEXT PRIMARY KEY)", 2: "ALTER TABLE widgets ADD COLUMN n INTEGER"}
        assert db.ensure_schema("widgets", v2) == 2
        assert db.ensure_schema("widgets", v2) == 2
        db.query("INSERT INTO widgets (id, n) VALUES ('a', 1)")
        assert db.query("SELECT component, version FROM podkit_schema ORDER BY component") == [
            ("outbox", max(OUTBOX_MIGRATIONS)),
            ("widgets", 2),
        ]
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
        assert db.query("SELECT id, status FROM outbox") == [("x", "pending")]
        assert db.query("SELECT version FROM podkit_schema WHERE component='outbox'") == [(1,)]
        assert db.query("PRAGMA user_version") == [(0,)]
    finally:
        db.close()
