"""Process plumbing of the S3 test servers: free ports, daemons in their own process groups, a
watchdog that kills them (and removes their directory) if the Python process that started them dies
without ``close()``, log tails for error messages.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import TypeVar

LOG_TAIL_LINES = 40
_Owner = TypeVar("_Owner", bound="ProcessOwner")


def free_ports(count: int) -> list[int]:
    """Ask the kernel for ``count`` distinct free TCP ports on 127.0.0.1."""
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # SO_REUSEADDR like the servers themselves: TIME_WAIT leftovers must not count as busy
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def tail_log(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 64 * 1024))
            data = fh.read().decode("utf-8", "replace")
    except OSError as exc:
        return f"<cannot read {path}: {exc}>"
    return "\n".join(data.splitlines()[-lines:])


def http_answers(url: str, timeout: float = 2.0) -> bool:
    """True when something speaks HTTP at ``url`` (any status code counts)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - fixed http://127.0.0.1 URL
            resp.read()
        return True
    except urllib.error.HTTPError:
        return True
    except (OSError, ValueError):
        return False


def kill_group(proc: subprocess.Popen[bytes], *, graceful: float = 0.0) -> None:
    """Kill ``proc``'s whole process group (SIGTERM first when ``graceful`` > 0) and reap it."""
    if proc.poll() is None and graceful > 0:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=graceful)
    # the leader may be gone while children of the group survive: always SIGKILL the group
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


# Runs as ``python -c`` in its own session: when the owning process disappears it kills
# every process group listed in the pgid file and removes the work directory.
_WATCHDOG = r"""
import os, shutil, signal, sys, time
owner, pgid_file, root = int(sys.argv[1]), sys.argv[2], sys.argv[3]
def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
while alive(owner) and os.getppid() == owner:
    time.sleep(1.0)
try:
    with open(pgid_file) as fh:
        pgids = [int(x) for x in fh.read().split()]
except OSError:
    pgids = []
for pgid in pgids:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except OSError:
        pass
time.sleep(0.5)
shutil.rmtree(root, ignore_errors=True)
"""


class ProcessOwner:
    """Shared plumbing: temp dir, process groups, watchdog, atexit hook, ``close()`` and the context
    manager. ``log``: keep ``<root>/log`` on ``close()``."""

    #: the attributes holding the daemons' processes, in the order ``close()`` kills them
    daemon_attrs: tuple[str, ...] = ()
    server: object | None = None

    def __init__(self, workdir: Path | None, prefix: str, *, log: bool = False) -> None:
        self.log = log
        self._parent_dir = workdir
        self._prefix = prefix
        self.root: Path | None = None
        self._pgids: set[int] = set()
        self._watchdog: subprocess.Popen[bytes] | None = None
        self._closed = False
        self._lock = threading.RLock()
        self._owner_pid = os.getpid()

    def _make_root(self) -> Path:
        if self._parent_dir is not None:
            self._parent_dir.mkdir(parents=True, exist_ok=True)
        root = Path(tempfile.mkdtemp(prefix=self._prefix, dir=self._parent_dir))
        self.root = root
        atexit.register(self._atexit_close)
        self._watchdog = subprocess.Popen(
            [sys.executable, "-c", _WATCHDOG, str(os.getpid()), str(root / "pgids"), str(root)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            close_fds=True,
        )
        return root

    def _spawn(
        self, args: Sequence[str], out: Path, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        assert self.root is not None
        with out.open("ab") as fh:
            proc = subprocess.Popen(
                list(args),
                cwd=self.root,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=fh,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
            )
        self._pgids.add(proc.pid)
        (self.root / "pgids").write_text("".join(f"{p}\n" for p in sorted(self._pgids)))
        return proc

    def _release(self, proc: subprocess.Popen[bytes], *, graceful: float = 0.0) -> None:
        kill_group(proc, graceful=graceful)
        self._pgids.discard(proc.pid)

    def _finish_close(self, keep_logs: bool) -> None:
        if self._watchdog is not None:
            kill_group(self._watchdog)
            self._watchdog = None
        with contextlib.suppress(Exception):
            atexit.unregister(self._atexit_close)
        root, self.root = self.root, None
        if root is None:
            return
        if keep_logs and (root / "log").is_dir():
            for child in root.iterdir():
                if child.name == "log":
                    continue
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child, ignore_errors=True)
                else:
                    with contextlib.suppress(OSError):
                        child.unlink()
        else:
            shutil.rmtree(root, ignore_errors=True)

    def _atexit_close(self) -> None:
        # a forked child that exits normally must not tear down its parent's server
        if os.getpid() == self._owner_pid:
            self.close()

    def start(self) -> object:  # pragma: no cover - overridden
        raise NotImplementedError

    def close(self) -> None:
        """Kill every daemon (process groups) and remove the directory; idempotent."""
        with self._lock:
            for attr in self.daemon_attrs:
                proc = getattr(self, attr)
                if proc is not None:
                    self._release(proc)
                    setattr(self, attr, None)
            self._closed = True
            self.server = None
            self._finish_close(keep_logs=self.log)

    def __enter__(self: _Owner) -> _Owner:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
