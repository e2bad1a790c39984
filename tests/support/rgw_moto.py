"""``MotoServer``: ``python -m moto.server`` on 127.0.0.1, a much lighter fallback than radosgw for
quick local correctness runs only. It is an emulator, keeps everything in memory and loses all data
when it is restarted with ``stop_gateway``/``start_gateway``. Import it from ``rgw``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from rgw_api import REGION, S3Server
from rgw_procs import ProcessOwner, free_ports, http_answers, port_is_free, tail_log


class MotoServer(ProcessOwner):
    """``python -m moto.server`` on 127.0.0.1: quick local fallback, NOT a real S3 server.

    All data lives in the moto process: ``stop_gateway()``/``start_gateway()`` restart it on
    the same port and every bucket and object is lost.
    """

    kind = "moto"
    daemon_attrs = ("_proc",)

    def __init__(
        self,
        workdir: Path | None = None,
        *,
        log: bool = False,
        timeout: float = 60.0,
        python: str | None = None,
    ) -> None:
        super().__init__(workdir, "podkit-moto-", log=log)
        self.timeout = timeout
        self.python = python or sys.executable
        self.port = 0
        self.server: S3Server | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> S3Server:
        with self._lock:
            if self._closed:
                raise RuntimeError("MotoServer already closed")
            if self.server is not None:
                return self.server
            try:
                self._make_root()
                (self._require_root() / "log").mkdir()
                (self.port,) = free_ports(1)
                self._launch()
            except BaseException:
                self.close()
                raise
            self.server = S3Server(
                endpoint_url=self.endpoint_url,
                access_key="podkit-test-key",
                secret_key="podkit-test-secret",  # noqa: S106 - dummy credentials for moto
                region=REGION,
                kind=self.kind,
            )
            return self.server

    def _require_root(self) -> Path:
        assert self.root is not None, "moto server not started"
        return self.root

    def start_gateway(self) -> None:
        """(Re)start the moto process on the same port (all previous data is gone)."""
        with self._lock:
            if self.server is None:
                raise RuntimeError("MotoServer.start() has not completed")
            self._launch()

    def _launch(self) -> None:
        with self._lock:
            if self._proc is not None and self._proc.poll() is None:
                return
            root = self._require_root()
            out = root / "log" / "moto.out"
            env = dict(os.environ)
            env.setdefault("AWS_DEFAULT_REGION", REGION)
            self._proc = self._spawn(
                [self.python, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)], out, env
            )
            deadline = time.monotonic() + self.timeout
            while not http_answers(self.endpoint_url + "/moto-api/"):
                if self._proc.poll() is not None:
                    raise RuntimeError(f"moto.server exited with {self._proc.returncode}:\n{tail_log(out)}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"moto.server did not answer on {self.endpoint_url}:\n{tail_log(out)}")
                time.sleep(0.1)

    def alive(self) -> bool:
        """True while the moto process is running."""
        return self._proc is not None and self._proc.poll() is None

    def stop_gateway(self) -> None:
        """Stop the moto process (simulated outage; its data is lost)."""
        with self._lock:
            if self._proc is None:
                return
            self._release(self._proc, graceful=3.0)
            self._proc = None
            end = time.monotonic() + 10
            while not port_is_free(self.port) and time.monotonic() < end:
                time.sleep(0.1)
