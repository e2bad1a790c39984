"""``RadosGateway``: a real, single-node Ceph cluster (1 monitor + 1 BlueStore OSD on a sparse file,
no mgr, ``auth none``) plus ``radosgw`` on 127.0.0.1, and the S3 test user it serves.

Everything (config, data, logs, sockets, pid files) lives in one temporary directory; every daemon
runs in its own process group and is killed on ``close()`` (the plumbing is ``rgw_procs.py``, the
config ``rgw_conf.py``). Import it from ``rgw``.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import string
import subprocess
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

from rgw_api import REGION, TEST_UID, S3Server, radosgw_available
from rgw_conf import BLOCK_SIZE, ceph_conf
from rgw_procs import ProcessOwner, free_ports, http_answers, port_is_free, tail_log


class RadosGateway(ProcessOwner):
    """A throw-away one-node Ceph cluster with radosgw on 127.0.0.1.

    ``workdir``: parent directory for the cluster's temporary directory (default: the
    system temp dir).  ``log``: raise the daemons' debug levels and keep ``<root>/log``
    on ``close()`` (everything else, including the block file, is still removed).
    """

    kind = "radosgw"
    daemon_attrs = ("_rgw", "_osd", "_mon")

    def __init__(
        self,
        workdir: Path | None = None,
        *,
        log: bool = False,
        timeout: float = 90.0,
        block_size: int = BLOCK_SIZE,
    ) -> None:
        super().__init__(workdir, "podkit-rgw-", log=log)
        self.timeout = timeout
        self.block_size = block_size
        self.mon_port = 0
        self.rgw_port = 0
        self.access_key = ""
        self.secret_key = ""
        self.server: S3Server | None = None
        self._mon: subprocess.Popen[bytes] | None = None
        self._osd: subprocess.Popen[bytes] | None = None
        self._rgw: subprocess.Popen[bytes] | None = None
        self._env: dict[str, str] = {}
        #: seconds since ``start()`` at which each phase finished (diagnostics)
        self.timings: dict[str, float] = {}

    # ----------------------------------------------------------------- paths
    @property
    def conf_path(self) -> Path:
        assert self.root is not None, "cluster not started"
        return self.root / "ceph.conf"

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.rgw_port}"

    def _log(self, name: str) -> Path:
        assert self.root is not None
        return self.root / "log" / name

    # ----------------------------------------------------------------- config
    def _write_conf(self, fsid: str) -> None:
        assert self.root is not None
        self.conf_path.write_text(
            ceph_conf(
                self.root,
                fsid,
                mon_port=self.mon_port,
                rgw_port=self.rgw_port,
                block_size=self.block_size,
                log=self.log,
            )
        )

    # ----------------------------------------------------------------- tools
    def _fail(self, what: str, logs: Sequence[str]) -> RuntimeError:
        parts = [f"radosgw test cluster: {what}"]
        for name in logs:
            path = self._log(name)
            if path.exists():
                parts.append(f"--- tail of {path} ---\n{tail_log(path) or '(empty)'}")
        return RuntimeError("\n".join(parts))

    def _run(
        self,
        args: Sequence[str],
        *,
        timeout: float,
        logs: Sequence[str] = (),
        check: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        try:
            proc = subprocess.run(
                list(args),
                cwd=self.root,
                env=self._env,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=max(1.0, timeout),
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise self._fail(f"{' '.join(args)} timed out after {exc.timeout:.0f}s", logs) from None
        if check and proc.returncode != 0:
            raise self._fail(
                f"{' '.join(args)} failed with {proc.returncode}:\n{proc.stdout}\n{proc.stderr}", logs
            )
        return proc

    def _ceph(
        self, *args: str, timeout: float, logs: Sequence[str] = ("mon.a.log",), check: bool = True
    ) -> str:
        cmd = ["ceph", "-c", str(self.conf_path), "--connect-timeout", str(max(1, int(timeout))), *args]
        return self._run(cmd, timeout=timeout + 5, logs=logs, check=check).stdout

    def _check_alive(self, proc: subprocess.Popen[bytes] | None, name: str, logs: Sequence[str]) -> None:
        if proc is not None and proc.poll() is not None:
            raise self._fail(f"{name} exited with status {proc.returncode}", logs)

    # ----------------------------------------------------------------- lifecycle
    def start(self) -> S3Server:
        """Create the cluster and the gateway; block until S3 answers with the test user's keys."""
        with self._lock:
            if self._closed:
                raise RuntimeError("RadosGateway already closed")
            if self.server is not None:
                return self.server
            reason = radosgw_available()
            if reason is not None:
                raise RuntimeError(reason)
            try:
                return self._start(time.monotonic() + self.timeout)
            except BaseException:
                self.close()
                raise

    def _start(self, deadline: float) -> S3Server:
        t0 = time.monotonic()

        def mark(phase: str) -> None:
            self.timings[phase] = round(time.monotonic() - t0, 2)

        root = self._make_root()
        for sub in ("run", "log", "mon", "osd0", "crash", "rgw", "mgr", "mds", "cache", "luarocks"):
            (root / sub).mkdir()
        self.mon_port, self.rgw_port = free_ports(2)
        self._env = {k: v for k, v in os.environ.items() if not k.startswith("CEPH_")}
        self._env["CEPH_CONF"] = str(root / "ceph.conf")
        self._env["TMPDIR"] = str(root / "cache")
        fsid = str(uuid.uuid4())
        self._write_conf(fsid)
        conf = str(self.conf_path)

        def left() -> float:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self._fail(f"start timed out after {self.timeout:.0f}s", ("mon.a.log", "osd.0.log"))
            return remaining

        # --- monitor
        monmap = str(root / "monmap")
        self._run(
            [
                "monmaptool",
                "--create",
                "--clobber",
                "--fsid",
                fsid,
                "--addv",
                "a",
                f"[v2:127.0.0.1:{self.mon_port}]",
                monmap,
            ],
            timeout=left(),
        )
        self._run(
            ["ceph-mon", "-c", conf, "--mkfs", "-i", "a", "--monmap", monmap],
            timeout=left(),
            logs=("mon.a.log",),
        )
        mark("mon_mkfs")
        self._mon = self._spawn(["ceph-mon", "-f", "-c", conf, "-i", "a"], self._log("mon.a.out"), self._env)

        # --- OSD: register it with the monitor (this also waits for the monitor to be up)
        osd_uuid = str(uuid.uuid4())
        while True:
            self._check_alive(self._mon, "ceph-mon", ("mon.a.out", "mon.a.log"))
            proc = self._run(
                ["ceph", "-c", conf, "--connect-timeout", "5", "osd", "new", osd_uuid],
                timeout=min(left(), 15),
                logs=("mon.a.log",),
                check=False,
            )
            if proc.returncode == 0:
                osd_id = proc.stdout.strip()
                if osd_id != "0":
                    raise self._fail(f"unexpected OSD id {osd_id!r}", ("mon.a.log",))
                break
            left()
            time.sleep(0.2)
        mark("mon_up")
        self._run(
            ["ceph-osd", "-c", conf, "-i", "0", "--mkfs", "--osd-uuid", osd_uuid],
            timeout=left(),
            logs=("osd.0.log",),
        )
        mark("osd_mkfs")
        self._osd = self._spawn(["ceph-osd", "-f", "-c", conf, "-i", "0"], self._log("osd.0.out"), self._env)
        while True:
            self._check_alive(self._mon, "ceph-mon", ("mon.a.out", "mon.a.log"))
            self._check_alive(self._osd, "ceph-osd", ("osd.0.out", "osd.0.log"))
            out = self._ceph("osd", "stat", "-f", "json", timeout=min(left(), 10), check=False)
            with contextlib.suppress(ValueError):
                if json.loads(out or "{}").get("num_up_osds", 0) >= 1:
                    break
            left()
            time.sleep(0.25)

        mark("osd_up")
        # --- gateway (creates its pools itself), then the S3 user
        self._spawn_rgw()
        self._wait_gateway(deadline)
        mark("rgw_up")
        self.access_key = "".join(secrets.choice(string.ascii_uppercase + string.digits) for _ in range(20))
        self.secret_key = secrets.token_urlsafe(30)
        self._run(
            [
                "radosgw-admin",
                "-c",
                conf,
                "user",
                "create",
                "--uid",
                TEST_UID,
                "--display-name",
                "PodKit test user",
                "--access-key",
                self.access_key,
                "--secret",
                self.secret_key,
            ],
            timeout=left(),
            logs=("client.admin.log", "client.rgw.log"),
        )
        self._wait_signed(deadline)
        mark("user_ready")
        self.server = S3Server(
            endpoint_url=self.endpoint_url,
            access_key=self.access_key,
            secret_key=self.secret_key,
            region=REGION,
            kind=self.kind,
        )
        return self.server

    def _spawn_rgw(self) -> None:
        self._rgw = self._spawn(
            ["radosgw", "-f", "-c", str(self.conf_path), "-n", "client.rgw"],
            self._log("client.rgw.out"),
            self._env,
        )

    def _wait_gateway(self, deadline: float) -> None:
        logs = ("client.rgw.out", "client.rgw.log")
        while True:
            self._check_alive(self._rgw, "radosgw", logs)
            if http_answers(self.endpoint_url + "/"):
                return
            if time.monotonic() > deadline:
                raise self._fail(f"radosgw did not answer on {self.endpoint_url}", logs)
            time.sleep(0.2)

    def _wait_signed(self, deadline: float) -> None:
        """Wait until a signed request with the test user's keys succeeds (when botocore is around)."""
        try:
            import botocore.session
            from botocore.config import Config
            from botocore.exceptions import BotoCoreError, ClientError
        except ImportError:
            return
        client = botocore.session.get_session().create_client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=REGION,
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}, connect_timeout=2),
        )
        try:
            last: Exception | None = None
            while time.monotonic() < deadline:
                try:
                    client.list_buckets()  # type: ignore[attr-defined,unused-ignore]
                    return
                except (BotoCoreError, ClientError) as exc:
                    last = exc
                    time.sleep(0.2)
            raise self._fail(f"signed S3 request never succeeded: {last}", ("client.rgw.log",))
        finally:
            client.close()

    def stop_gateway(self) -> None:
        """Stop only radosgw (simulated S3 outage); monitor and OSD keep running."""
        with self._lock:
            if self._rgw is None:
                return
            self._release(self._rgw, graceful=5.0)
            self._rgw = None
            # make sure the port is really closed before returning
            end = time.monotonic() + 10
            while http_answers(self.endpoint_url + "/", timeout=0.5) and time.monotonic() < end:
                time.sleep(0.1)

    def start_gateway(self) -> None:
        """Restart radosgw on the same port with the same user; block until it answers again."""
        with self._lock:
            if self.server is None or self.root is None:
                raise RuntimeError("RadosGateway.start() has not completed")
            if self._rgw is not None and self._rgw.poll() is None:
                return
            deadline = time.monotonic() + self.timeout
            while not port_is_free(self.rgw_port):
                if time.monotonic() > deadline:
                    raise self._fail(f"port {self.rgw_port} still busy", ())
                time.sleep(0.2)
            self._spawn_rgw()
            self._wait_gateway(deadline)
            self._wait_signed(deadline)

    def alive(self) -> bool:
        """True while mon, OSD and radosgw are all running."""
        return len(self.daemon_pids()) == 3

    def daemon_pids(self) -> dict[str, int]:
        """PIDs of the running daemons (for diagnostics and memory accounting)."""
        procs = {"ceph-mon": self._mon, "ceph-osd": self._osd, "radosgw": self._rgw}
        return {name: p.pid for name, p in procs.items() if p is not None and p.poll() is None}
