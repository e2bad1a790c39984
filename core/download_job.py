"""The download job record: what a job is, as stored and as shown (no task, no throttle stamps).

A job is one request item (a file, or an HF snapshot of several files). Records are frozen: the
service replaces a job with ``dataclasses.replace`` under its lock, so a reader (a route, the
bootstrap printer, an event) always holds one consistent state. The asyncio task that runs a job
and the throttle stamps of its progress belong to the service, not to the record.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any, Protocol

from .download_request import DownloadItem
from .url_policy import redact_url


class DownloadStatus(str, Enum):
    """A job's (and a file's) status; the values are the wire's."""

    QUEUED = "queued"
    RUNNING = "running"
    VERIFYING = "verifying"
    PAUSED = "paused"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"
    SKIPPED = "skipped"  # a file of a snapshot that is not a model (never a job's status)


STATUSES = tuple(s.value for s in DownloadStatus if s is not DownloadStatus.SKIPPED)
ACTIVE = frozenset(
    {DownloadStatus.QUEUED.value, DownloadStatus.RUNNING.value, DownloadStatus.VERIFYING.value}
)
FINISHED = frozenset({DownloadStatus.DONE.value, DownloadStatus.FAILED.value, DownloadStatus.CANCELLED.value})


@dataclass(frozen=True)
class FileState:
    """One file of a job."""

    name: str
    dest: str | None = None
    model_type: str | None = None
    bytes_done: int = 0
    bytes_total: int | None = None
    sha256: str | None = None
    status: str = DownloadStatus.QUEUED.value
    error: str | None = None
    present: bool = False  # already in place and verified: nothing was transferred

    def to_wire(self) -> dict[str, object]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class DownloadJob:
    """A download job; :meth:`to_wire` is the route/event JSON (no tokens, no signed URLs).

    ``keys`` are the per-file identities (partial file, lock, index record); ``forced_at`` is when
    ``force`` was asked (partial files older than that are discarded once).
    """

    id: str
    key: str
    item: DownloadItem
    force: bool = False
    status: str = DownloadStatus.QUEUED.value
    created: float = 0.0
    updated: float = 0.0
    model_type: str | None = None
    dest: str | None = None
    sha256: str | None = None
    error: str | None = None
    files: tuple[FileState, ...] = ()
    speed: float = 0.0
    eta: float | None = None
    keys: tuple[str, ...] = ()
    forced_at: float = 0.0

    @property
    def bytes_done(self) -> int:
        return sum(f.bytes_done for f in self.files)

    @property
    def bytes_total(self) -> int | None:
        totals = [f.bytes_total for f in self.files]
        if not totals or any(t is None for t in totals):
            return None
        return sum(t for t in totals if t is not None)

    def with_file(self, index: int, **changes: Any) -> DownloadJob:
        """This job with file ``index`` changed."""
        files = list(self.files)
        files[index] = dataclasses.replace(files[index], **changes)
        return dataclasses.replace(self, files=tuple(files))

    def summarised(self) -> DownloadJob:
        """This job with its type, destination and sha256 taken from its files (once they ran)."""
        dests = [f.dest for f in self.files if f.dest]
        types = {f.model_type for f in self.files if f.model_type}
        model_type = types.pop() if len(types) == 1 else (self.item.type if types else None)
        if len(self.files) == 1:
            return dataclasses.replace(
                self, model_type=model_type, dest=self.files[0].dest, sha256=self.files[0].sha256
            )
        dest = (os.path.commonpath(dests) or None) if dests else self.dest
        return dataclasses.replace(self, model_type=model_type, dest=dest)

    def to_wire(self) -> dict[str, object]:
        return {
            "id": self.id,
            "status": self.status,
            "created": self.created,
            "updated": self.updated,
            "name": self.item.label,
            "source": describe_source(self.item),
            "model_type": self.model_type,
            "dest": self.dest,
            "bytes_done": self.bytes_done,
            "bytes_total": self.bytes_total,
            "speed": round(self.speed, 1),
            "eta": None if self.eta is None else round(self.eta, 1),
            "sha256": self.sha256,
            "error": self.error,
            "force": self.force,
            "files": [f.to_wire() for f in self.files],
        }

    def state(self) -> dict[str, object]:
        """The stored JSON: the wire form plus what a restart needs to resume."""
        return {**self.to_wire(), "keys": list(self.keys), "forced_at": self.forced_at}

    def restored(self, state: Mapping[str, Any]) -> DownloadJob:
        """This job with what its stored JSON adds (speed and ETA start again from zero)."""
        files: Sequence[object] = state.get("files") or []
        return dataclasses.replace(
            self,
            model_type=state.get("model_type"),
            dest=state.get("dest"),
            sha256=state.get("sha256"),
            error=state.get("error"),
            files=tuple(FileState(**f) for f in files if isinstance(f, dict)),
            keys=tuple(str(k) for k in state.get("keys") or []),
            forced_at=float(state.get("forced_at") or 0.0),
        )


class DownloadJobs(Protocol):
    """What a reader of download jobs needs (the idle watch counts the active ones)."""

    def jobs(self) -> list[DownloadJob]: ...


def describe_source(item: DownloadItem) -> str:
    """A short, credential-free description of where an item comes from."""
    if item.source == "hf":
        rev = f"@{item.revision}" if item.revision else ""
        return f"hf://{item.repo_id}{rev}" + (f"/{item.filename}" if item.filename else "")
    if item.source == "civitai":
        return f"civitai:{item.version_id}" if item.version_id else redact_url(item.url or "")
    if item.source == "bucket":
        return item.uri or ""
    return redact_url(item.url or "")


def item_to_json(item: DownloadItem) -> str:
    return json.dumps(dataclasses.asdict(item), sort_keys=True)


def item_from_json(text: str) -> DownloadItem:
    data = json.loads(text)
    for name in ("allow_patterns", "ignore_patterns"):
        data[name] = tuple(data.get(name) or ())
    return DownloadItem(**data)


def request_key(item: DownloadItem) -> str:
    """Identical requests (same source, type, name, folder, sha256) share one job."""
    return hashlib.sha256(item_to_json(item).encode()).hexdigest()[:32]
