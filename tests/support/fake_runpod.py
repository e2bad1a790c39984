"""A local stand-in for RunPod's GraphQL API (``RUNPOD_API_BASE_URL``): records every request.

The runpod SDK posts ``{"query": "mutation { podStop(input: {podId: ...}) ... }"}`` to
``<base>/graphql`` with ``Authorization: Bearer <key>``; this server answers like RunPod does and
keeps ``(authorization, query)`` of every request in ``requests``.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakeRunPod(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.requests: list[tuple[str, str]] = []
        self.lock = threading.Lock()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def stopped_pods(self) -> list[str]:
        with self.lock:
            return [
                m.group(1)
                for _, q in self.requests
                for m in [re.search(r'podStop\(input: \{ podId: "([^"]+)"', q)]
                if m
            ]


class _Handler(BaseHTTPRequestHandler):
    server: FakeRunPod

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))) or b"{}")
        query = str(body.get("query", ""))
        with self.server.lock:
            self.server.requests.append((self.headers.get("Authorization", ""), query))
        m = re.search(r'podId: "([^"]+)"', query)
        answer = {"data": {"podStop": {"id": m.group(1) if m else None, "desiredStatus": "EXITED"}}}
        data = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        return


@contextmanager
def fake_runpod() -> Iterator[FakeRunPod]:
    server = FakeRunPod()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
