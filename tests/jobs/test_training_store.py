"""Training rows on the kit's job table: a state database written before the kit opens as it is."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from podkit.backends.state_db import StateDB
from podkit.core.training import TrainingJob
from podkit.core.training_request import parse_training_request
from podkit.jobs.training_store import TrainingStore, job_from_data, job_to_data

#: The schema backends/training_jobs.py created (component "training", version 1).
OLD_SCHEMA = """
CREATE TABLE IF NOT EXISTS training_jobs (
    id TEXT PRIMARY KEY, status TEXT NOT NULL, created REAL NOT NULL, updated REAL NOT NULL, data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS training_jobs_status ON training_jobs(status, created)
"""
REQUEST = {"name": "old_one", "dataset": {"path": "/volume/ds"}, "steps": 10}


def old_row(job_id: str, status: str, created: float) -> dict[str, object]:
    """A job exactly as the old service's JSON mapping wrote it (no ``upload_id``)."""
    return {
        "id": job_id, "name": f"job_{job_id}", "status": status,
        "request": parse_training_request({**REQUEST, "name": f"job_{job_id}"}).to_wire(),
        "job_dir": f"/state/training/{job_id}", "created": created, "updated": created + 1, "step": 4,
        "total_steps": 10, "loss": 0.25, "sec_per_step": 0.5, "eta_s": 3.0, "error": None,
        "lora_uri": None, "lora_etag": None, "lora_sha256": None, "lora_bytes": None,
        "dataset": {"images": 2, "captions": 1, "missing_captions": 1, "folder": "/x"},
        "base_model_path": "black-forest-labs/FLUX.1-dev", "pid": 123, "proc_start": "456", "attempts": 0,
        "next_attempt": None, "finished": None, "intermediate": ["r2://loras/a/a_000000010.safetensors"],
    }  # fmt: skip


def make_old_database(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.executescript(OLD_SCHEMA)
    conn.execute("CREATE TABLE podkit_schema (component TEXT PRIMARY KEY, version INTEGER NOT NULL)")
    conn.execute("INSERT INTO podkit_schema VALUES ('training', 1)")
    for job_id, status, created in (("a", "running", 10.0), ("b", "queued", 20.0), ("c", "queued", 30.0)):
        conn.execute(
            "INSERT INTO training_jobs VALUES (?, ?, ?, ?, ?)",
            (job_id, status, created, created + 1, json.dumps(old_row(job_id, status, created))),
        )
    conn.commit()
    conn.close()


def test_an_old_database_keeps_working(tmp_path: Path) -> None:
    make_old_database(tmp_path / "old.sqlite3")
    db = StateDB(tmp_path / "old.sqlite3")
    try:
        store = TrainingStore(db)
        assert [j.id for j in store.list()] == ["c", "b", "a"]
        assert [j.id for j in store.list(statuses=("running",))] == ["a"]
        running = store.get("a")
        assert running is not None and running.upload_id is None and running.pid == 123
        assert running.request.name == "job_a" and running.intermediate == (
            "r2://loras/a/a_000000010.safetensors",
        )
        assert running.to_wire()["dataset"] == {"images": 2, "captions": 1, "missing_captions": 1}
        queued = store.next_queued()
        assert queued is not None and queued.id == "b"  # the oldest first
        store.save(running.__class__(**{**running.__dict__, "status": "uploading", "upload_id": "item1"}))
        assert store.get("a").upload_id == "item1"  # type: ignore[union-attr]
        assert db.query("SELECT status FROM training_jobs WHERE id='a'") == [("uploading",)]
        assert db.query("SELECT version FROM podkit_schema WHERE component='training'") == [(1,)]
        store.delete("b")
        assert store.get("b") is None and store.next_queued().id == "c"  # type: ignore[union-attr]
    finally:
        db.close()


def test_the_blob_round_trips_every_field() -> None:
    job = job_from_data(old_row("z", "done", 5.0))
    again = job_from_data(json.loads(json.dumps(job_to_data(job))))
    assert again == job and isinstance(again, TrainingJob)
    assert job_from_data({**old_row("z", "done", 5.0), "from_a_newer_podkit": 1}) == job
