"""Download jobs in the state database: the ``downloads`` table, as it has always been laid out."""

from __future__ import annotations

import logging

from ..backends.state_db import StateDB
from ..core.download_job import DownloadJob, item_from_json, item_to_json
from ..core.errors import InvalidRequest
from .kit import JobRow, JobTable, TableSpec

logger = logging.getLogger(__name__)

#: ``key`` (the request's identity), ``item`` (the request as JSON) and ``force`` beside the kit's
#: columns; the JSON blob is called ``state``.
DOWNLOADS = TableSpec(
    table="downloads",
    component="downloads",
    blob="state",
    columns=(("key", "TEXT NOT NULL"), ("item", "TEXT NOT NULL"), ("force", "INTEGER NOT NULL")),
    indexes={"downloads_key": "key", "downloads_status": "status"},
)


class DownloadStore:
    """Reads and writes :class:`DownloadJob` rows."""

    def __init__(self, db: StateDB) -> None:
        self.table = JobTable(db, DOWNLOADS)

    def load(self) -> list[DownloadJob]:
        """Every stored job; a row that no longer parses is skipped with a warning."""
        jobs: list[DownloadJob] = []
        for row in self.table.rows():
            try:
                item = item_from_json(str(row.extra["item"]))
            except (ValueError, TypeError, InvalidRequest):
                logger.warning("download job %s has an unreadable record; skipped", row.id)
                continue
            job = DownloadJob(
                id=row.id, key=str(row.extra["key"]), item=item, force=bool(row.extra["force"]),
                status=row.status, created=row.created, updated=row.updated,
            )  # fmt: skip
            jobs.append(job.restored(row.data))
        return jobs

    def save(self, job: DownloadJob) -> None:
        extra = {"key": job.key, "item": item_to_json(job.item), "force": int(job.force)}
        self.table.save(JobRow(job.id, job.status, job.created, job.updated, job.state(), extra))

    def delete(self, *job_ids: str) -> None:
        if job_ids:
            self.table.delete(*job_ids)
