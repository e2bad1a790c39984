"""This process's download jobs: frozen records replaced under one lock, each change saved and told.

The service's threads (callers of its public methods, the loop, the worker threads of a bucket
copy) never mutate a record: they replace it here, under :attr:`DownloadRecords.lock`, and a reader
always holds one consistent state. A change of status is saved and announced at once; progress at
the kind's declared pace (:data:`THROTTLE`), with the speed smoothed over 0.5 s samples.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from typing import Any

from ..backends.state_db import StateDB
from ..core.download_job import FINISHED, DownloadJob
from ..core.errors import NotFound
from ..core.events import Notifier
from .download_store import DownloadStore
from .kit import Announcer, Throttle

EVENT = "podkit.download"
THROTTLE = Throttle(save_every=2.0, emit_every=0.5)
#: Seconds between speed samples, and the weight a new sample gets in the smoothed speed.
SAMPLE_EVERY, SAMPLE_WEIGHT = 0.5, 0.3


class DownloadRecords:
    """The jobs of this process, loaded from and saved to the state database."""

    def __init__(self, db: StateDB, notifier: Notifier) -> None:
        self.lock = threading.RLock()
        self._rows = DownloadStore(db)
        self._announce: Announcer[DownloadJob] = Announcer(
            notifier, EVENT, save=self._rows.save, wire=DownloadJob.to_wire, throttle=THROTTLE
        )
        self._jobs: dict[str, DownloadJob] = {j.id: j for j in self._rows.load()}
        self._samples: dict[str, tuple[float, int]] = {}  # (monotonic time, bytes) of the last sample

    def find(self, job_id: str) -> DownloadJob | None:
        with self.lock:
            return self._jobs.get(job_id)

    def get(self, job_id: str) -> DownloadJob:
        job = self.find(job_id)
        if job is None:
            raise NotFound(f"no download job {job_id!r}")
        return job

    def all(self) -> list[DownloadJob]:
        """Every job, newest first."""
        with self.lock:
            return sorted(self._jobs.values(), key=lambda j: j.created, reverse=True)

    def add(self, job: DownloadJob) -> None:
        with self.lock:
            self._jobs[job.id] = job

    def remove(self, *job_ids: str) -> None:
        """Forget jobs here and in the database."""
        with self.lock:
            for job_id in job_ids:
                self._jobs.pop(job_id, None)
                self._samples.pop(job_id, None)
                self._announce.forget(job_id)
        if job_ids:
            self._rows.delete(*job_ids)

    def replace(self, job_id: str, change: Callable[[DownloadJob], DownloadJob]) -> DownloadJob | None:
        """Replace ``job_id``'s record with ``change(record)``; None when the job is gone."""
        with self.lock:
            job = self._jobs.get(job_id)
            if job is not None:
                job = self._jobs[job_id] = change(job)
            return job

    def update(self, job_id: str, **changes: Any) -> DownloadJob | None:
        return self.replace(job_id, lambda j: dataclasses.replace(j, **changes))

    def set_file(self, job_id: str, index: int, **changes: Any) -> None:
        self.replace(job_id, lambda j: j.with_file(index, **changes))

    def add_bytes(self, job_id: str, index: int, n: int) -> None:
        self.replace(job_id, lambda j: j.with_file(index, bytes_done=j.files[index].bytes_done + n))

    def changed(self, job_id: str, *, save: bool = True) -> None:
        """Stamp ``updated``, save (unless ``save`` is False) and announce the job now."""
        with self.lock:
            job = self.update(job_id, updated=time.time())
            if job is not None:
                self._announce.changed(job_id, job, save=save)

    def set_status(self, job_id: str, status: str, error: str | None = None) -> None:
        with self.lock:
            idle = status in FINISHED or status == "paused"
            self.update(job_id, status=status, error=error, **({"speed": 0.0, "eta": None} if idle else {}))
            self.changed(job_id)

    def progress(self, job_id: str, *, force_emit: bool = False) -> None:
        """Bytes moved: smooth the speed, then announce at the declared pace."""
        now = time.monotonic()
        with self.lock:
            job = self._jobs.get(job_id)
            if job is None:
                return
            done = job.bytes_done
            t0, b0 = self._samples.get(job_id, (0.0, 0))
            changes: dict[str, Any] = {"updated": time.time()}
            if t0 == 0.0:
                self._samples[job_id] = (now, done)
            elif now - t0 >= SAMPLE_EVERY:
                rate = max(0.0, (done - b0) / (now - t0))
                speed = rate if job.speed == 0.0 else (1 - SAMPLE_WEIGHT) * job.speed + SAMPLE_WEIGHT * rate
                self._samples[job_id] = (now, done)
                total = job.bytes_total
                changes.update(
                    speed=speed, eta=(total - done) / speed if total is not None and speed > 0 else None
                )
            job = self.update(job_id, **changes)
            if job is not None:
                self._announce.progress(job_id, job, force_emit=force_emit)
