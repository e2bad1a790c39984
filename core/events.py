"""The ``Notifier`` seam: how services tell browsers what happened (``podkit.*`` events).

Inside ComfyUI the adapter calls ``PromptServer.instance.send_sync`` (thread-safe); the standalone
control plane and tests plug in their own.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Mapping
from typing import Protocol

logger = logging.getLogger(__name__)


class Notifier(Protocol):
    def emit(self, event: str, data: Mapping[str, object]) -> None:
        """Send ``data`` as event ``event`` to every connected client; never raises."""
        ...


class NullNotifier:
    def emit(self, event: str, data: Mapping[str, object]) -> None:
        return None


class RecordingNotifier:
    """Keeps the last events in memory (tests, and the standalone server's event feed)."""

    def __init__(self, maxlen: int = 1000) -> None:
        self.events: deque[tuple[str, dict[str, object]]] = deque(maxlen=maxlen)
        self._lock = threading.Lock()

    def emit(self, event: str, data: Mapping[str, object]) -> None:
        with self._lock:
            self.events.append((event, dict(data)))

    def of(self, event: str) -> list[dict[str, object]]:
        with self._lock:
            return [d for e, d in self.events if e == event]
