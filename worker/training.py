"""The training role's RunPod handler: the training route's request in, a LoRA in the bucket out.

PodKit's training service runs the job (dataset intake, ai-toolkit, upload to the LoRA bucket);
this handler follows it, forwards step, loss and ETA as RunPod progress, and answers with
``{"lora_uri", "sha256", "size", "steps", "loss"}``. RunPod's cancel stops the trainer's process
group; a cancelled job uploads nothing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Any

from ..core.errors import Conflict, PodKitError
from ..jobs.training import TrainingService

logger = logging.getLogger(__name__)
ProgressFn = Callable[[Mapping[str, Any], Mapping[str, Any]], None]


class TrainingWorker:
    def __init__(self, training: TrainingService, *, progress: ProgressFn, poll: float = 0.5) -> None:
        self.training = training
        self.progress = progress
        self.poll = poll

    async def handle(self, job: Mapping[str, Any]) -> dict[str, Any]:
        body = job.get("input")
        try:
            if not isinstance(body, Mapping):
                return {"error": "input must be a training request (see the training route's schema)"}
            submitted = await asyncio.to_thread(self.training.submit, body)
        except PodKitError as e:
            return {"error": str(e)}
        job_id = submitted.id
        last: tuple[Any, ...] | None = None
        try:
            while True:
                current = await asyncio.to_thread(self.training.get, job_id)
                seen = (current.status, current.step, current.loss)
                if seen != last:
                    last = seen
                    self._send(
                        job, current.status, current.step, current.total_steps, current.loss, current.eta_s
                    )
                if current.finished_status:
                    break
                await asyncio.sleep(self.poll)
        except asyncio.CancelledError:
            # RunPod cancelled the job: stop the trainer (its process group); nothing is uploaded
            await asyncio.shield(asyncio.to_thread(self._cancel, job_id))
            raise
        if current.status != "done":
            return {"error": f"training {current.name!r} {current.status}: {current.error or 'no detail'}",
                    "training_job": job_id}  # fmt: skip
        return {
            "lora_uri": current.lora_uri,
            "sha256": current.lora_sha256,
            "size": current.lora_bytes,
            "steps": current.step,
            "loss": current.loss,
            "training_job": job_id,
        }

    def _cancel(self, job_id: str) -> None:
        try:
            self.training.cancel(job_id)
        except Conflict:  # it finished meanwhile
            pass
        except PodKitError as e:
            logger.warning("could not cancel training %s: %s", job_id, e)

    def _send(self, job: Mapping[str, Any], status: str, step: int, total: int, loss: Any, eta: Any) -> None:
        try:
            self.progress(job, {"status": status, "step": step, "total": total, "loss": loss, "eta_s": eta})
        except Exception:  # progress is best effort
            logger.debug("progress update failed", exc_info=True)
