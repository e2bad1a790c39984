"""The job tables as PodKit wrote them before ``jobs/kit.py``: databases made by them must keep opening."""

from __future__ import annotations

#: backends/downloads.py's schema (component "downloads", version 1).
OLD_DOWNLOADS = """
    CREATE TABLE IF NOT EXISTS downloads (
        id TEXT PRIMARY KEY, key TEXT NOT NULL, item TEXT NOT NULL, force INTEGER NOT NULL,
        status TEXT NOT NULL, created REAL NOT NULL, updated REAL NOT NULL, state TEXT NOT NULL
    );
    CREATE INDEX IF NOT EXISTS downloads_key ON downloads(key);
    CREATE INDEX IF NOT EXISTS downloads_status ON downloads(status)
"""
#: backends/training_jobs.py's schema (component "training", version 1).
OLD_TRAINING = """
    CREATE TABLE IF NOT EXISTS training_jobs (
        id TEXT PRIMARY KEY, status TEXT NOT NULL, created REAL NOT NULL, updated REAL NOT NULL,
        data TEXT NOT NULL
    );
    CREATE INDEX IF NOT EXISTS training_jobs_status ON training_jobs(status, created)
"""
