"""Training jobs' rows: the kit's job table with the columns training has always written.

A row is ``id, status, created, updated`` plus the whole :class:`~podkit.core.training.TrainingJob`
as JSON in ``data`` (the request in its wire form), so a state database written before the kit,
or before a field was added, opens as it is: a field the blob lacks takes its default.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import fields
from typing import Any

from ..backends.state_db import StateDB
from ..core.training import TrainingJob, TrainingStatus
from ..core.training_request import parse_training_request
from .kit import JobRow, JobTable, TableSpec

TRAINING_TABLE = TableSpec(
    table="training_jobs", component="training", indexes={"training_jobs_status": "status, created"}
)
_FIELDS = tuple(f.name for f in fields(TrainingJob))


def job_to_data(job: TrainingJob) -> dict[str, Any]:
    """The JSON blob of ``job``: every field, the request and dataset report as plain JSON."""
    data = {name: getattr(job, name) for name in _FIELDS}
    data["status"] = str(job.status)
    data["request"] = job.request.to_wire()
    data["dataset"] = dict(job.dataset) if job.dataset is not None else None
    data["intermediate"] = list(job.intermediate)
    return data


def job_from_data(data: Mapping[str, Any]) -> TrainingJob:
    """The job a blob describes (it was valid when it was stored; unknown keys are ignored)."""
    d = {k: v for k, v in data.items() if k in _FIELDS}
    d["request"] = parse_training_request(d["request"])
    d["intermediate"] = tuple(d.get("intermediate") or ())
    return TrainingJob(**d)


class TrainingStore:
    """Load, save and list training jobs in the instance's state database (thread-safe)."""

    def __init__(self, db: StateDB) -> None:
        self.table = JobTable(db, TRAINING_TABLE)

    def save(self, job: TrainingJob) -> None:
        self.table.save(JobRow(job.id, str(job.status), job.created, job.updated, job_to_data(job)))

    def get(self, job_id: str) -> TrainingJob | None:
        row = self.table.get(job_id)
        return job_from_data(row.data) if row is not None else None

    def list(self, statuses: Sequence[str] | None = None, limit: int = 500) -> list[TrainingJob]:
        """Jobs, newest first."""
        return [job_from_data(r.data) for r in self.table.rows(statuses=statuses, limit=limit)]

    def next_queued(self) -> TrainingJob | None:
        """The oldest queued job (jobs start in the order they were submitted)."""
        rows = self.table.rows(statuses=(TrainingStatus.QUEUED,), newest_first=False, limit=1)
        return job_from_data(rows[0].data) if rows else None

    def delete(self, job_id: str) -> None:
        self.table.delete(job_id)
