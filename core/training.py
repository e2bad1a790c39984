"""A training job as PodKit keeps it: the statuses and the frozen record.

The record is what the state database holds and what routes and ``podkit.training`` events show
(:meth:`TrainingJob.to_wire`, with credential-like parts of a dataset URL redacted). The request,
the ai-toolkit formats and the trainer's environment have their own modules
(:mod:`~podkit.core.training_request`, :mod:`~podkit.core.ai_toolkit`,
:mod:`~podkit.core.trainer_env`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import Enum
from pathlib import Path
from typing import Any, Protocol

from .ai_toolkit import Progress, final_lora_path
from .training_request import TrainingRequest
from .url_policy import redact_url


class TrainingStatus(str, Enum):
    """A training job's states, declared once (``queued`` → ``preparing`` → ``running`` →
    ``uploading`` → ``done``, or ``failed`` / ``cancelled``); members are their wire strings."""

    QUEUED = "queued"
    PREPARING = "preparing"
    RUNNING = "running"
    UPLOADING = "uploading"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

    def __str__(self) -> str:
        return self.value


STATUSES = tuple(s.value for s in TrainingStatus)
#: Unfinished: the job still needs the service (``uploading`` waits on the outbox's delivery).
ACTIVE_STATUSES = (
    TrainingStatus.QUEUED,
    TrainingStatus.PREPARING,
    TrainingStatus.RUNNING,
    TrainingStatus.UPLOADING,
)
FINISHED_STATUSES = (TrainingStatus.DONE, TrainingStatus.FAILED, TrainingStatus.CANCELLED)


def downsample(series: Sequence[tuple[int, float]], max_points: int) -> list[tuple[int, float]]:
    """Every k-th point (always the last) so a long run's loss curve stays small on the wire."""
    if len(series) <= max_points:
        return list(series)
    k = math.ceil(len(series) / max_points)
    out = list(series[::k])
    if out[-1] != series[-1]:
        out.append(series[-1])
    return out


@dataclass(frozen=True)
class TrainingJob:
    """One training job as the state database keeps it."""

    id: str
    name: str
    status: str
    request: TrainingRequest
    job_dir: str
    created: float
    updated: float
    step: int = 0
    total_steps: int = 0
    loss: float | None = None
    sec_per_step: float | None = None
    eta_s: float | None = None
    error: str | None = None
    lora_uri: str | None = None
    lora_etag: str | None = None
    lora_sha256: str | None = None
    lora_bytes: int | None = None
    dataset: Mapping[str, object] | None = None
    base_model_path: str | None = None
    pid: int | None = None
    proc_start: str | None = None
    attempts: int = 0
    next_attempt: float | None = None
    finished: float | None = None
    intermediate: tuple[str, ...] = field(default_factory=tuple)
    upload_id: str | None = None  # the outbox item that delivers the final LoRA

    @property
    def training_folder(self) -> Path:
        return Path(self.job_dir) / "output"

    @property
    def final_path(self) -> Path:
        return final_lora_path(self.training_folder, self.name)

    @property
    def config_path(self) -> Path:
        return Path(self.job_dir) / "config.yaml"

    @property
    def log_path(self) -> Path:
        return Path(self.job_dir) / "train.log"

    @property
    def finished_status(self) -> bool:
        return self.status in FINISHED_STATUSES

    def with_progress(self, p: Progress, now: float) -> TrainingJob:
        return replace(
            self,
            step=p.step,
            total_steps=p.total,
            loss=p.loss if p.loss is not None else self.loss,
            sec_per_step=p.sec_per_step,
            eta_s=p.eta_s,
            updated=now,
        )

    def _public_request(self) -> dict[str, Any]:
        """The request as stored, with credential-like parts of a dataset URL (signatures) redacted."""
        wire = self.request.to_wire()
        if "url" in wire["dataset"]:
            wire["dataset"] = {**wire["dataset"], "url": redact_url(wire["dataset"]["url"])}
        return wire

    def to_wire(self) -> dict[str, object]:
        """The job as routes and ``podkit.training`` events show it (no paths outside the job)."""
        ds = self.dataset or {}
        return {
            "id": self.id,
            "name": self.name,
            "status": self.status,
            "step": self.step,
            "total_steps": self.total_steps or self.request.steps,
            "loss": self.loss,
            "speed": 1.0 / self.sec_per_step if self.sec_per_step else None,  # steps per second
            "eta": self.eta_s,
            "sec_per_step": self.sec_per_step,
            "eta_s": self.eta_s,
            "error": self.error,
            "lora_uri": self.lora_uri,
            "lora_etag": self.lora_etag,
            "lora_sha256": self.lora_sha256,
            "lora_bytes": self.lora_bytes,
            "intermediate_uris": list(self.intermediate),
            "dataset": {
                "images": ds.get("images"),
                "captions": ds.get("captions"),
                "missing_captions": ds.get("missing_captions"),
            },
            "base_model": self.request.base_model,
            "request": self._public_request(),
            "created": self.created,
            "updated": self.updated,
            "finished": self.finished,
        }


class TrainingJobs(Protocol):
    """What code below the job layer reads of the training service (the idle watch)."""

    def list_jobs(self, *, statuses: Sequence[str] | None = None, limit: int = 500) -> list[TrainingJob]: ...
