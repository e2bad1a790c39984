"""Download rows: a state database written before the jobs wing opens and round-trips as it is."""

from __future__ import annotations

import json
from pathlib import Path

from old_schemas import OLD_DOWNLOADS

from podkit.backends.state_db import StateDB
from podkit.core.download_job import DownloadJob, FileState, item_to_json
from podkit.core.download_request import DownloadItem
from podkit.jobs.download_store import DownloadStore

ITEM = DownloadItem(source="url", url="https://e.com/a.safetensors", type="lora")


def test_rows_written_by_the_old_service_load(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    old = StateDB(path)
    old.ensure_schema("downloads", {1: OLD_DOWNLOADS})
    # the old service's state blob: its to_wire() plus keys and forced_at
    state = {
        "id": "j1", "status": "paused", "name": "a.safetensors", "source": "https://e.com/a.safetensors",
        "model_type": "lora", "dest": None, "bytes_done": 5, "bytes_total": 10, "speed": 0.0, "eta": None,
        "sha256": None, "error": None, "force": False, "created": 1.0, "updated": 2.0,
        "files": [{"name": "a.safetensors", "dest": None, "model_type": None, "bytes_done": 5,
                   "bytes_total": 10, "sha256": None, "status": "paused", "error": None, "present": False}],
        "keys": ["k" * 40], "forced_at": 0.0,
    }  # fmt: skip
    with old.transaction() as c:
        c.execute(
            "INSERT INTO downloads (id, key, item, force, status, created, updated, state) VALUES (?,?,?,?,?,?,?,?)",
            ("j1", "rk", item_to_json(ITEM), 0, "paused", 1.0, 2.0, json.dumps(state)),
        )
        c.execute(
            "INSERT INTO downloads (id, key, item, force, status, created, updated, state) VALUES (?,?,?,?,?,?,?,?)",
            ("j2", "rk2", "not json", 0, "done", 3.0, 3.0, "{}"),
        )
    old.close()
    db = StateDB(path)
    try:
        store = DownloadStore(db)
        (job,) = store.load()  # the row whose item no longer parses is skipped
        assert job == DownloadJob(
            id="j1", key="rk", item=ITEM, status="paused", created=1.0, updated=2.0, model_type="lora",
            files=(FileState("a.safetensors", bytes_done=5, bytes_total=10, status="paused"),), keys=("k" * 40,),
        )  # fmt: skip
        store.save(job.with_file(0, bytes_done=7))
        assert store.load()[0].bytes_done == 7
        store.delete("j1", "j2")
        assert store.load() == [] and db.query("SELECT COUNT(*) FROM downloads") == [(0,)]
    finally:
        db.close()
