"""Cross-process, cross-host lock files for a shared network volume.

``flock`` is unreliable on network filesystems, so a lock is a file created with ``O_EXCL``. The
holder refreshes its mtime (a heartbeat) while it works; a lock whose holder is dead (same host,
pid gone) or whose heartbeat stopped (``stale_after`` seconds) is taken over by renaming it away.

Exclusivity is an optimisation, not the correctness guarantee: everything published under a lock
is published with an atomic ``os.replace`` of identical content, so two holders in a rare takeover
race only waste a transfer.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from .errors import Conflict

logger = logging.getLogger(__name__)

HOSTNAME = socket.gethostname()


def pid_alive(pid: int) -> bool:
    """True when a process with ``pid`` exists on this host."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def holder_is_dead(info: dict[str, object], mtime: float, stale_after: float, now: float) -> bool:
    """Decide whether a lock/lease record belongs to a holder that is gone."""
    pid = info.get("pid")
    if info.get("host") == HOSTNAME and isinstance(pid, int):
        return not pid_alive(pid)
    return now - mtime > stale_after


class FileLock:
    """An ``O_EXCL`` lock file with heartbeat and stale-lock takeover.

    Args:
        path: the lock file.
        stale_after: seconds without a heartbeat after which another host may take the lock over.
        poll: seconds between attempts while waiting.
    """

    def __init__(self, path: Path, *, stale_after: float = 30.0, poll: float = 0.05) -> None:
        self.path = path
        self.stale_after = stale_after
        self.poll = poll
        self.token = uuid.uuid4().hex
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None
        self.held = False

    def _try_create(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            json.dump({"host": HOSTNAME, "pid": os.getpid(), "token": self.token, "time": time.time()}, f)
        return True

    def _read(self) -> tuple[dict[str, object], float] | None:
        try:
            mtime = self.path.stat().st_mtime
            raw = self.path.read_text()
        except FileNotFoundError:
            return None
        try:
            info = json.loads(raw)
        except ValueError:
            info = {}  # being written right now, or garbage: judge by mtime alone
        return (info if isinstance(info, dict) else {}), mtime

    def _take_over_if_stale(self) -> None:
        current = self._read()
        if current is None:
            return
        info, mtime = current
        # A lock file that is still empty is being written: give it a moment before judging it.
        if not info and time.time() - mtime < self.stale_after:
            return
        if not holder_is_dead(info, mtime, self.stale_after, time.time()):
            return
        grave = self.path.with_name(f"{self.path.name}.stale-{uuid.uuid4().hex[:8]}")
        try:
            os.rename(self.path, grave)
        except FileNotFoundError:
            return
        try:
            moved = json.loads(grave.read_text())
        except (OSError, ValueError):
            moved = {}
        if isinstance(moved, dict) and info.get("token") and moved.get("token") != info.get("token"):
            # We moved a fresh lock that replaced the stale one meanwhile: put it back if we can.
            with contextlib.suppress(FileExistsError, OSError):
                os.link(grave, self.path)
        logger.warning("took over stale lock %s (holder %s)", self.path.name, info.get("host"))
        grave.unlink(missing_ok=True)

    def acquire(self, timeout: float | None = None, on_wait: Callable[[], None] | None = None) -> None:
        """Block until the lock is ours.

        Raises:
            Conflict: ``timeout`` passed while another holder kept the lock alive.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = self.poll
        while not self._try_create():
            self._take_over_if_stale()
            if deadline is not None and time.monotonic() > deadline:
                raise Conflict(f"lock {self.path.name} is held by another process")
            if on_wait is not None:
                on_wait()
            time.sleep(delay)
            delay = min(delay * 1.5, 0.5)
        self.held = True
        self._stop.clear()
        self._beat = threading.Thread(
            target=self._heartbeat, name=f"podkit-lock-{self.path.name}", daemon=True
        )
        self._beat.start()

    def try_acquire(self) -> bool:
        """Take the lock if it is free (or stale) right now, without waiting."""
        if not self._try_create():
            self._take_over_if_stale()
            if not self._try_create():
                return False
        self.held = True
        return True

    def _heartbeat(self) -> None:
        interval = max(self.stale_after / 4, 0.05)
        while not self._stop.wait(interval):
            with contextlib.suppress(OSError):
                os.utime(self.path)

    def release(self) -> None:
        """Release the lock (only if the file is still ours)."""
        if not self.held:
            return
        self.held = False
        self._stop.set()
        if self._beat is not None:
            self._beat.join(timeout=5)
            self._beat = None
        current = self._read()
        if current is not None and current[0].get("token") == self.token:
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> FileLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
