"""The state database migrates each component's tables on its own (and creates none of its own)."""

from __future__ import annotations

from pathlib import Path

from podkit.backends.state_db import StateDB


def test_components_migrate_independently(tmp_path: Path) -> None:
    db = StateDB(tmp_path / "s.sqlite3")
    try:
        assert db.ensure_schema("widgets", {1: "CREATE TABLE widgets (id TEXT PRIMARY KEY)"}) == 1
        # A later version of the same component adds a column; re-running is a no-op.
        v2 = {1: "CREATE TABLE widgets (id TEXT PRIMARY KEY)", 2: "ALTER TABLE widgets ADD COLUMN n INTEGER"}
        assert db.ensure_schema("widgets", v2) == 2
        assert db.ensure_schema("widgets", v2) == 2
        db.query("INSERT INTO widgets (id, n) VALUES ('a', 1)")
        assert db.query("SELECT component, version FROM podkit_schema ORDER BY component") == [("widgets", 2)]
    finally:
        db.close()
