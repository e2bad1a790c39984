"""A running job's intermediate saves to the LoRA bucket (``upload_intermediate``), best effort.

ai-toolkit writes ``<name>_<step>.safetensors`` every ``save_every`` steps and may still be writing
the newest one, so a save goes up once a later one exists or the trainer has exited. A failed upload
is logged and tried again at the next check; the final LoRA never depends on these.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import replace

from ..core.ai_toolkit import step_saves
from ..core.errors import PodKitError
from ..core.objects import ObjectRef, ObjectStore
from ..core.training import TrainingJob

logger = logging.getLogger(__name__)

#: Seconds between two looks at the training folder for new saves.
CHECK_EVERY = 2.0


class StepSaveUploader:
    """Uploads one job's new step saves; ``save`` records each uploaded URI on the job."""

    def __init__(self, store: ObjectStore, bucket: str, save: Callable[[TrainingJob], None]) -> None:
        self.store = store
        self.bucket = bucket
        self.save = save
        self._done: set[int] = set()
        self._checked = 0.0

    def upload_new(self, job: TrainingJob, *, final: bool) -> TrainingJob:
        """Upload the saves not yet up (all of them once ``final``); returns the updated job."""
        now = time.monotonic()
        if not final and now - self._checked < CHECK_EVERY:
            return job
        self._checked = now
        saves = step_saves(job.training_folder, job.name)
        for step, path in saves if final else saves[:-1]:
            if step in self._done:
                continue
            ref = ObjectRef(self.bucket, f"{job.name}/{path.name}")
            try:
                self.store.upload_file(path, ref, content_type="application/octet-stream")
            except PodKitError as e:
                logger.warning("training %s: intermediate upload of %s failed: %s", job.id, path.name, e)
                continue
            self._done.add(step)
            if ref.uri not in job.intermediate:
                job = replace(job, intermediate=(*job.intermediate, ref.uri))
                self.save(job)
        return job
