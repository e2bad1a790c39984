"""When a training job may take the GPU: beside generation (``shared``) or alone (``exclusive``).

``PODKIT_TRAINING_GPU_POLICY`` picks one (:data:`~podkit.core.trainer_env.GPU_POLICIES`). Inside
ComfyUI the ``exclusive`` policy is told how to see the host's prompt queue and free its VRAM
(``TrainingService.attach_host``); elsewhere (a trainer worker) it has nothing to wait for.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Protocol

logger = logging.getLogger(__name__)


class GpuArbiter(Protocol):
    """Decides when a training job may take the GPU (``PODKIT_TRAINING_GPU_POLICY``)."""

    def acquire(self, job_id: str, cancelled: Callable[[], bool]) -> None:
        """Block until the job may start its trainer (return early when ``cancelled()``)."""
        ...

    def release(self, job_id: str) -> None: ...

    def reserved(self) -> bool:
        """True while training holds the GPU exclusively (generation should wait)."""
        ...


class SharedGpu:
    """``shared``: training and generation run side by side; ComfyUI keeps its models loaded."""

    def acquire(self, job_id: str, cancelled: Callable[[], bool]) -> None:
        return None

    def release(self, job_id: str) -> None:
        return None

    def reserved(self) -> bool:
        return False


class ExclusiveGpu:
    """``exclusive``: a trainer starts only when the host reports no generation running, after the
    host has freed its VRAM; while it trains, :meth:`reserved` is True for the host to hold prompts.

    Args:
        generation_busy: True while the host runs a prompt (default: never).
        free_vram: unloads the host's models (default: nothing to free).
    """

    def __init__(
        self,
        generation_busy: Callable[[], bool] | None = None,
        free_vram: Callable[[], None] | None = None,
        *,
        poll: float = 0.5,
    ) -> None:
        self.generation_busy = generation_busy or (lambda: False)
        self.free_vram = free_vram or (lambda: None)
        self.poll = poll
        self._holders: set[str] = set()
        self._lock = threading.Lock()

    def acquire(self, job_id: str, cancelled: Callable[[], bool]) -> None:
        while self.generation_busy() and not cancelled():
            time.sleep(self.poll)
        with self._lock:
            self._holders.add(job_id)
        try:
            self.free_vram()
        except Exception:  # the host's cleanup must not fail the job
            logger.warning("freeing VRAM before training failed", exc_info=True)

    def release(self, job_id: str) -> None:
        with self._lock:
            self._holders.discard(job_id)

    def reserved(self) -> bool:
        with self._lock:
            return bool(self._holders)


def gpu_policy(name: str) -> GpuArbiter:
    """The arbiter a ``PODKIT_TRAINING_GPU_POLICY`` value names (validated by the settings)."""
    return ExclusiveGpu() if name == "exclusive" else SharedGpu()
