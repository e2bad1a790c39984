"""A real HTTP/1.1 file server on 127.0.0.1 for download tests: ranges, throttling and faults.

Files live in memory (``server.files[path] = bytes``). Faults are queued and each is used once by
the next request that can take it, so a test says exactly what goes wrong and when:

- ``fail(status, retry_after=None)``: the next request is answered with ``status``;
- ``close_after(n)``: the next body is cut (connection closed) after ``n`` bytes;
- ``stall_after(n, seconds)``: the next body stops for ``seconds`` after ``n`` bytes;
- ``ranges = False``: every request gets ``200`` and the whole file (Range ignored);
- ``throttle_bps``: per-connection rate limit (like nginx ``limit_rate``).

``requests`` records ``(path, Range header, status)`` of every request and ``bytes_sent`` the
body bytes actually written, so a test can prove how much was fetched twice.
"""

from __future__ import annotations

import hashlib
import re
import socket
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_RANGE_RE = re.compile(r"^bytes=(\d+)-(\d*)$")


class FaultServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.files: dict[str, bytes] = {}
        self.redirects: dict[str, str] = {}
        self.ranges = True
        self.throttle_bps: int | None = None
        self.etag = True
        self.requests: list[tuple[str, str | None, int]] = []
        self.bytes_sent = 0
        self.lock = threading.Lock()
        self._faults: deque[tuple[str, tuple[object, ...]]] = deque()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ setup
    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def url(self, path: str) -> str:
        return f"{self.base_url}{path}"

    def add(self, path: str, data: bytes) -> str:
        """Serve ``data`` at ``path``; returns its sha256."""
        self.files[path] = data
        return hashlib.sha256(data).hexdigest()

    def fail(self, status: int, retry_after: float | None = None) -> None:
        self._push("status", status, retry_after)

    def close_after(self, n: int) -> None:
        self._push("close", n)

    def stall_after(self, n: int, seconds: float) -> None:
        self._push("stall", n, seconds)

    def _push(self, kind: str, *args: object) -> None:
        with self.lock:
            self._faults.append((kind, args))

    def take(self, kinds: tuple[str, ...]) -> tuple[str, tuple[object, ...]] | None:
        with self.lock:
            if self._faults and self._faults[0][0] in kinds:
                return self._faults.popleft()
        return None

    def statuses(self) -> list[int]:
        with self.lock:
            return [s for _, _, s in self.requests]

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> FaultServer:
        self._thread = threading.Thread(target=self.serve_forever, name="fault-http", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self.shutdown()
        self.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: FaultServer

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - http.server's name
        return None

    def _record(self, status: int) -> None:
        with self.server.lock:
            self.server.requests.append((self.path, self.headers.get("Range"), status))

    def do_HEAD(self) -> None:  # noqa: N802 - http.server's naming
        self._serve(body=False)

    def do_GET(self) -> None:  # noqa: N802
        self._serve(body=True)

    def _serve(self, *, body: bool) -> None:
        srv = self.server
        path = self.path.split("?", 1)[0]
        fault = srv.take(("status",))
        if fault is not None:
            status, retry_after = fault[1]
            self._record(int(status))  # type: ignore[call-overload]
            self.send_response(int(status))  # type: ignore[call-overload]
            if retry_after is not None:
                self.send_header("Retry-After", str(retry_after))
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if path in srv.redirects:
            self._record(302)
            self.send_response(302)
            self.send_header("Location", srv.redirects[path])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        data = srv.files.get(path)
        if data is None:
            self._record(404)
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        etag = '"' + hashlib.md5(data[:65536] + str(len(data)).encode()).hexdigest() + '"'  # noqa: S324
        start, end, status = 0, len(data), 200
        rng = self.headers.get("Range")
        if_range = self.headers.get("If-Range")
        if rng and srv.ranges and (if_range is None or if_range == etag):
            m = _RANGE_RE.match(rng)
            if m:
                start = int(m.group(1))
                end = min(len(data), int(m.group(2)) + 1) if m.group(2) else len(data)
                if start >= len(data) or start >= end:
                    self._record(416)
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                status = 206
        self._record(status)
        self.send_response(status)
        self.send_header("Content-Length", str(end - start))
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Accept-Ranges", "bytes" if srv.ranges else "none")
        if srv.etag:
            self.send_header("ETag", etag)
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(data)}")
        self.end_headers()
        if body:
            self._send_body(memoryview(data)[start:end])

    def _send_body(self, view: memoryview) -> None:
        srv = self.server
        fault = srv.take(("close", "stall"))
        cut = int(fault[1][0]) if fault else None  # type: ignore[call-overload]
        rate = srv.throttle_bps
        block = 64 * 1024 if rate is None else max(4096, rate // 50)
        started = time.monotonic()
        sent = 0
        try:
            while sent < len(view):
                if fault is not None and cut is not None and sent >= cut:
                    if fault[0] == "close":
                        self.connection.shutdown(socket.SHUT_RDWR)
                        self.close_connection = True
                        return
                    time.sleep(float(fault[1][1]))  # type: ignore[arg-type]
                    fault = None
                n = len(view) - sent
                n = min(n, block, (cut - sent) if fault is not None and cut is not None else n)
                self.wfile.write(view[sent : sent + n])
                sent += n
                with srv.lock:
                    srv.bytes_sent += n
                if rate is not None:
                    ahead = sent / rate - (time.monotonic() - started)
                    if ahead > 0:
                        time.sleep(ahead)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True


@contextmanager
def fault_server() -> Iterator[FaultServer]:
    """A started :class:`FaultServer`, closed at the end of the block."""
    srv = FaultServer().start()
    try:
        yield srv
    finally:
        srv.close()
