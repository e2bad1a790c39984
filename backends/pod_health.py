"""``GET /podkit/health`` checks and the system gauges of ``/podkit/metrics``.

Health is liveness and readiness in one answer: ComfyUI's queue reachable (inside ComfyUI), the
store reachable (one cheap listing, reused for ``store_check_ttl`` seconds so a probe every few
seconds never becomes a request each), state folder and volume writable, free disk above
``min_free_bytes``, no upload waiting longer than ``outbox_stuck_seconds``, a GPU visible when one
is expected. Gauges are absent, not zero, when they cannot be read (no GPU, no NVML).
"""

from __future__ import annotations

import logging
import shutil
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.errors import PodKitError
from ..core.objects import ObjectStore
from ..core.outbox import ACTIVE as UPLOAD_ACTIVE
from ..core.outbox import OutboxQueue
from ..core.pod_settings import PodSettings

logger = logging.getLogger(__name__)
QueueLength = Callable[[], int]


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str

    def to_wire(self) -> dict[str, object]:
        return {"name": self.name, "ok": self.ok, "detail": self.detail}


def disk_free(path: Path | None) -> int | None:
    if path is None:
        return None
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        return shutil.disk_usage(probe).free
    except OSError:
        return None


def gpu_gauges() -> dict[str, float]:
    """GPU memory (torch, when the host imported it) and utilisation (NVML, when importable)."""
    out: dict[str, float] = {}
    torch: Any = sys.modules.get("torch")
    try:
        if torch is not None and torch.cuda.is_available():
            free, total = torch.cuda.mem_get_info()
            out["podkit_gpu_memory_used_bytes"] = float(total - free)
            out["podkit_gpu_memory_total_bytes"] = float(total)
    except Exception:  # a broken driver must not break the metrics route
        logger.debug("torch.cuda memory unreadable", exc_info=True)
    try:
        import pynvml  # type: ignore[import-not-found]

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        out["podkit_gpu_utilization_ratio"] = pynvml.nvmlDeviceGetUtilizationRates(handle).gpu / 100.0
    except Exception:  # no NVML here: the gauge is absent
        logger.debug("NVML unavailable", exc_info=True)
    return out


def gpu_visible() -> bool | None:
    torch: Any = sys.modules.get("torch")
    if torch is None:
        return None
    try:
        return bool(torch.cuda.is_available())
    except Exception:
        return False


class HealthChecker:
    def __init__(
        self,
        options: PodSettings,
        *,
        store: ObjectStore,
        bucket: str,
        outbox: OutboxQueue,
        state_dir: Path,
        volume_dir: Path | None,
        cache_dir: Path,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.options = options
        self.store = store
        self.bucket = bucket
        self.outbox = outbox
        self.state_dir = state_dir
        self.volume_dir = volume_dir
        self.cache_dir = cache_dir
        self.clock = clock
        self.queue_length: QueueLength | None = None  # set when PodKit runs inside ComfyUI
        self._lock = threading.Lock()
        self._store_check: tuple[float, Check] | None = None

    def checks(self) -> list[Check]:
        checks = []
        if self.queue_length is not None:
            checks.append(self._queue())
        checks.append(self._store())
        checks.append(self._writable("state", self.state_dir))
        if self.volume_dir is not None:
            checks.append(self._writable("volume", self.volume_dir))
        checks.append(self._disk())
        checks.append(self._outbox())
        if self.options.expect_gpu:
            visible = gpu_visible()
            checks.append(
                Check("gpu", bool(visible), "visible" if visible else "expected a GPU, none visible")
            )
        return checks

    def _queue(self) -> Check:
        try:
            n = self.queue_length() if self.queue_length is not None else 0
        except Exception as e:  # the host's queue is what this check is about
            return Check("comfyui_queue", False, f"unreachable: {e}")
        return Check("comfyui_queue", True, f"{n} prompt(s) running or waiting")

    def _store(self) -> Check:
        now = self.clock()
        with self._lock:
            cached = self._store_check
        if cached is not None and now - cached[0] < self.options.store_check_ttl:
            return cached[1]
        try:
            self.store.list(self.bucket, limit=1)
            check = Check("store", True, f"bucket {self.bucket} reachable")
        except PodKitError as e:
            check = Check("store", False, f"bucket {self.bucket}: {e}")
        with self._lock:
            self._store_check = (now, check)
        return check

    @staticmethod
    def _writable(name: str, folder: Path) -> Check:
        probe = folder / f".podkit-health-{uuid.uuid4().hex}"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            probe.write_bytes(b"ok")
            probe.unlink()
        except OSError as e:
            return Check(f"{name}_writable", False, f"{folder}: {e.strerror or e}")
        return Check(f"{name}_writable", True, str(folder))

    def _disk(self) -> Check:
        low = []
        for label, path in (("volume", self.volume_dir), ("cache", self.cache_dir)):
            free = disk_free(path)
            if free is not None and free < self.options.min_free_bytes:
                low.append(f"{label} {free / 2**30:.1f} GiB free")
        if low:
            return Check(
                "disk", False, ", ".join(low) + f" (< {self.options.min_free_bytes / 2**30:.1f} GiB)"
            )
        return Check("disk", True, "enough free space")

    def _outbox(self) -> Check:
        waiting = self.outbox.list(UPLOAD_ACTIVE, 10_000)
        if not waiting:
            return Check("outbox", True, "nothing waiting")
        oldest = min(i.created for i in waiting)
        age = time.time() - oldest
        if age > self.options.outbox_stuck_seconds:
            last = max(waiting, key=lambda i: i.updated).last_error or "no error recorded"
            return Check("outbox", False, f"{len(waiting)} upload(s) waiting, oldest {age:.0f} s: {last}")
        return Check("outbox", True, f"{len(waiting)} upload(s) waiting, oldest {age:.0f} s")

    def gauges(self) -> dict[str, tuple[str, float | None]]:
        vol, cache = disk_free(self.volume_dir), disk_free(self.cache_dir)
        gauges: dict[str, tuple[str, float | None]] = {
            "podkit_volume_free_bytes": ("Free bytes on the network volume.", vol),
            "podkit_cache_free_bytes": ("Free bytes where the model cache lives.", cache),
        }
        if self.queue_length is not None:
            try:
                gauges["podkit_comfy_queue_length"] = (
                    "Prompts running or waiting in ComfyUI.",
                    self.queue_length(),
                )
            except Exception:  # absent rather than wrong
                logger.debug("queue length unreadable", exc_info=True)
        helps = {
            "podkit_gpu_memory_used_bytes": "GPU memory in use (device 0).",
            "podkit_gpu_memory_total_bytes": "GPU memory (device 0).",
            "podkit_gpu_utilization_ratio": "GPU utilisation of device 0 (NVML), 0..1.",
        }
        for name, value in gpu_gauges().items():
            gauges[name] = (helps[name], value)
        return gauges
