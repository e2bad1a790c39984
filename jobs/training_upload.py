"""A trained LoRA's way to the bucket: handed to the outbox, followed until it is delivered.

The outbox owns the upload and its one retry rule; this module only keeps each training job in
line with its outbox item (the job's ``upload_id``): ``uploading`` while the item waits or is being
retried (with the last attempt's error), ``failed`` when the store refused it (the item stays in the
outbox, where a retry may still deliver it), ``done`` once it is delivered, after the LoRA listing
was refreshed so that a client seeing ``done`` finds the LoRA in the loader's list.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..core.errors import CorruptFile
from ..core.fsutil import sha256_file
from ..core.objects import ObjectRef
from ..core.outbox import OutboxItem
from ..core.safetensors_info import read_safetensors_info
from ..core.training import TrainingJob, TrainingStatus
from .outbox import Outbox

logger = logging.getLogger(__name__)

S = TrainingStatus
LORA_CONTENT_TYPE = "application/octet-stream"
SetJob = Callable[..., TrainingJob]


def lora_problem(path: Path) -> CorruptFile | None:
    """Why the trainer's final file is not a LoRA to upload (unreadable, or no LoRA tensors);
    None when it is one."""
    try:
        info = read_safetensors_info(path, label=path.name)
    except CorruptFile as e:
        return e
    return None if info.is_lora else CorruptFile(f"{path.name}: no LoRA tensors in the trainer's output")


class LoraUploads:
    """Queues trained LoRAs in the outbox and mirrors each item's outcome onto its job.

    Args:
        outbox: the instance's outbox (observed from here on).
        get_job: the stored job by id (None when it was deleted).
        set_job: ``set_job(job, **changes)`` saves and announces a change of the job.
        bucket: the LoRA bucket.
        on_delivered: refreshes the LoRA listing before a job becomes ``done``.
    """

    def __init__(
        self,
        outbox: Outbox,
        get_job: Callable[[str], TrainingJob | None],
        set_job: SetJob,
        *,
        bucket: str,
        on_delivered: Callable[[], object] | None = None,
    ) -> None:
        self.outbox = outbox
        self.get_job = get_job
        self.set_job = set_job
        self.bucket = bucket
        self.on_delivered = on_delivered
        self._lock = threading.RLock()
        self._items: dict[str, str] = {}  # outbox item id → training job id
        self._closed = False
        outbox.observe(self._observed)

    def queue(self, job: TrainingJob, **changes: Any) -> None:
        """Spool the job's checked final LoRA in the outbox; the job becomes ``uploading``."""
        final = job.final_path
        ref = ObjectRef(self.bucket, f"{job.name}.safetensors")
        try:
            sha = sha256_file(final)
            with self._lock:  # an outcome observed meanwhile waits until the job names its item
                item = self.outbox.submit_file(final, ref, content_type=LORA_CONTENT_TYPE, sha256=sha)
                self._items[item.id] = job.id
                self.set_job(
                    job,
                    **changes,
                    status=S.UPLOADING,
                    upload_id=item.id,
                    lora_sha256=sha,
                    lora_bytes=item.size,
                    attempts=0,
                    next_attempt=None,
                    error=None,
                )
        except OSError as e:
            self.set_job(job, status=S.FAILED, error=f"cannot queue {final.name} for upload: {e}"[:1000])
            return
        logger.info("training %s: %s queued for %s (outbox item %s)", job.id, final.name, ref.uri, item.id)

    def follow(self, job: TrainingJob) -> None:
        """After a restart: follow the job's item again (or queue the LoRA when it has none)."""
        if job.upload_id is None:  # an upload begun before uploads went through the outbox
            self.queue(job)
            return
        with self._lock:
            self._items[job.upload_id] = job.id
            item = self.outbox.get(job.upload_id)
            if item is None or item.status == "done":
                self._items.pop(job.upload_id, None)
            elif _status_for(item) != job.status:
                self._mirror(job, item)
        if item is None and job.status == S.UPLOADING:  # the item is gone: spool the LoRA again
            self.queue(job)
        elif item is not None and item.status == "done":
            self._mirror(job, item)

    def withdraw(self, job: TrainingJob) -> bool:
        """Take the job's LoRA out of the outbox; False while its upload is in flight or done."""
        with self._lock:
            if job.upload_id is None:
                return True
            if not self.outbox.withdraw(job.upload_id):
                return False
            self._items.pop(job.upload_id, None)
            return True

    def open(self) -> None:
        """Mirror outcomes again (the service's start; its reconcile follows the items again)."""
        with self._lock:
            self._closed = False

    def close(self) -> None:
        """Stop mirroring: the next start reads the outcomes from the outbox."""
        with self._lock:
            self._closed = True
            self._items.clear()

    def _observed(self, item: OutboxItem) -> None:
        with self._lock:
            job_id = self._items.get(item.id)
            job = self.get_job(job_id) if job_id is not None and not self._closed else None
            if job is None or job.upload_id != item.id:
                return
            if item.status != "done":
                self._mirror(job, item)
                return
            del self._items[item.id]
        self._mirror(job, item)  # the listing refresh runs outside the lock

    def _mirror(self, job: TrainingJob, item: OutboxItem) -> None:
        """Set the job's status from its item: delivered, refused, or waiting to be retried."""
        if item.status == "done":
            if self.on_delivered is not None:
                try:
                    self.on_delivered()
                except Exception:  # the LoRA is uploaded; a listing refresh failure is not the job's
                    logger.warning("LoRA listing refresh after training failed", exc_info=True)
            self.set_job(
                job,
                status=S.DONE,
                lora_uri=item.ref.uri,
                lora_etag=item.etag,
                lora_sha256=item.sha256,
                lora_bytes=item.size,
                attempts=item.attempts,
                next_attempt=None,
                error=None,
            )
            logger.info("training %s: %s delivered to %s", job.id, job.final_path.name, item.ref.uri)
        elif item.status == "failed":
            why = f"upload to {item.ref.uri} refused: {item.last_error}; the LoRA waits in the outbox"
            self.set_job(
                job,
                status=S.FAILED,
                attempts=item.attempts,
                next_attempt=None,
                error=f"{why} (item {item.id}): retry it there"[:1000],
            )
        else:
            error = (
                f"upload attempt {item.attempts} failed, retrying: {item.last_error}"
                if item.attempts
                else None
            )
            self.set_job(
                job,
                status=S.UPLOADING,
                attempts=item.attempts,
                next_attempt=item.next_attempt,
                error=error and error[:1000],
                finished=None,
            )


def _status_for(item: OutboxItem) -> TrainingStatus:
    """The status a job shows while its LoRA is ``item``."""
    return {"done": S.DONE, "failed": S.FAILED}.get(item.status, S.UPLOADING)
