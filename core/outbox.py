"""The durable upload outbox's record and seams: :class:`OutboxItem`, its repository, its queue.

The runner that spools and uploads is :class:`podkit.jobs.outbox.Outbox`; its rows live in
:mod:`podkit.jobs.outbox_store`. Code below the job layer (the saver, the health check, the idle
watch) sees the outbox only through :class:`OutboxQueue`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

from .objects import ObjectRef
from .retry import Backoff

__all__ = ["STATUSES", "ACTIVE", "Backoff", "OutboxItem", "OutboxQueue", "OutboxRepo", "UploadStatus"]


class UploadStatus(str, Enum):
    """An outbox item's status; members are their wire strings (as ``TrainingStatus``)."""

    SPOOLING = "spooling"
    PENDING = "pending"
    UPLOADING = "uploading"
    DONE = "done"
    FAILED = "failed"

    def __str__(self) -> str:
        return self.value


STATUSES = tuple(s.value for s in UploadStatus)
#: an upload that has not finished yet (the idle stop, the health check and a job's outputs wait for it)
ACTIVE = (UploadStatus.SPOOLING, UploadStatus.PENDING, UploadStatus.UPLOADING)


@dataclass(frozen=True)
class OutboxItem:
    id: str
    bucket: str
    key: str
    spool_path: str
    content_type: str
    size: int
    sha256: str
    status: str
    attempts: int
    next_attempt: float
    last_error: str | None
    created: float
    updated: float
    prompt_id: str | None = None
    etag: str | None = None

    @property
    def ref(self) -> ObjectRef:
        return ObjectRef(self.bucket, self.key)

    def to_wire(self) -> dict[str, object]:
        return {
            "id": self.id,
            "bucket": self.bucket,
            "key": self.key,
            "size": self.size,
            "sha256": self.sha256,
            "status": self.status,
            "attempts": self.attempts,
            "next_attempt": self.next_attempt,
            "last_error": self.last_error,
            "created": self.created,
            "updated": self.updated,
            "prompt_id": self.prompt_id,
            "etag": self.etag,
        }


class OutboxRepo(Protocol):
    """Persistence of outbox rows (the instance's SQLite database)."""

    def insert(self, item: OutboxItem) -> None: ...
    def update(self, item: OutboxItem) -> None: ...
    def get(self, item_id: str) -> OutboxItem | None: ...
    def delete(self, item_id: str) -> None: ...
    def withdraw(self, item_id: str) -> bool:
        """Delete the row only while it waits (``pending`` or ``failed``); True when it was deleted."""
        ...

    def claim_due(self, now: float, limit: int) -> list[OutboxItem]:
        """Atomically move up to ``limit`` due ``pending`` rows to ``uploading`` and return them."""
        ...

    def list(self, statuses: Sequence[str] | None, limit: int) -> list[OutboxItem]: ...
    def counts(self) -> dict[str, int]: ...
    def next_due(self) -> float | None: ...
    def prune_done(self, keep: int) -> int: ...


class OutboxQueue(Protocol):
    """What code below the job layer may do with the outbox: queue bytes, read its rows."""

    def submit(
        self,
        data: bytes,
        ref: ObjectRef,
        *,
        content_type: str,
        prompt_id: str | None = None,
        sha256: str | None = None,
    ) -> OutboxItem: ...

    def list(self, statuses: Sequence[str] | None = None, limit: int = 200) -> list[OutboxItem]: ...
    def counts(self) -> dict[str, int]: ...
