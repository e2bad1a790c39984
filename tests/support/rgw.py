"""Throw-away S3-compatible servers for tests.

``RadosGateway`` boots a real, single-node Ceph cluster (1 monitor + 1 BlueStore
OSD on a sparse file, no mgr, ``auth none``) plus ``radosgw`` listening on
127.0.0.1.  Everything (config, data, logs, sockets, pid files) lives in one
temporary directory, every daemon runs in its own process group and is killed on
``close()``.  A small watchdog process kills the daemons and removes the
directory if the Python process that started them dies without calling
``close()``.

``MotoServer`` is a much lighter fallback (``python -m moto.server``) for quick
local correctness runs only: it is an emulator, keeps everything in memory and
loses all data when it is restarted with ``stop_gateway``/``start_gateway``.

CLI::

    python tests/support/rgw.py serve [--moto] [--workdir DIR] [--log]

prints one JSON line with the endpoint and credentials and keeps the server
running until SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import string
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Protocol

__all__ = [
    "MotoServer",
    "RadosGateway",
    "S3Server",
    "S3ServerHandle",
    "free_ports",
    "moto_available",
    "port_is_free",
    "radosgw_available",
    "start_s3_server",
]

REGION = "us-east-1"
TEST_UID = "podkit-test"

_CEPH_BINARIES = ("ceph-mon", "ceph-osd", "radosgw", "radosgw-admin", "monmaptool", "ceph")
_BLOCK_SIZE = 8 * 1024**3  # sparse; only what is written is allocated
_LOG_TAIL_LINES = 40


@dataclass(frozen=True)
class S3Server:
    """Connection details of a running S3-compatible test server."""

    endpoint_url: str
    access_key: str
    secret_key: str
    region: str
    kind: str  # "radosgw" or "moto"

    def boto3_kwargs(self) -> dict[str, str]:
        """Keyword arguments for ``boto3.client("s3", **kwargs)``."""
        return {
            "endpoint_url": self.endpoint_url,
            "aws_access_key_id": self.access_key,
            "aws_secret_access_key": self.secret_key,
            "region_name": self.region,
        }

    def store_kwargs(self) -> dict[str, str]:
        """Keyword arguments for PodKit's ``S3Store(**kwargs)``."""
        return {
            "endpoint_url": self.endpoint_url,
            "region": self.region,
            "access_key_id": self.access_key,
            "secret_access_key": self.secret_key,
        }


class S3ServerHandle(Protocol):
    """Common interface of ``RadosGateway`` and ``MotoServer``."""

    def start(self) -> S3Server: ...

    def stop_gateway(self) -> None: ...

    def start_gateway(self) -> None: ...

    def close(self) -> None: ...


# --------------------------------------------------------------------------- helpers


def radosgw_available() -> str | None:
    """Return ``None`` when a radosgw test cluster can be started, else the reason why not."""
    if not sys.platform.startswith("linux"):
        return f"radosgw test cluster needs Linux (running on {sys.platform})"
    missing = [b for b in _CEPH_BINARIES if shutil.which(b) is None]
    if missing:
        return f"radosgw not installed (missing: {', '.join(missing)})"
    return None


def moto_available(python: str | None = None) -> str | None:
    """Return ``None`` when ``python -m moto.server`` can be run, else the reason why not."""
    exe = python or sys.executable
    try:
        proc = subprocess.run(
            [exe, "-c", "import moto.server, flask"],
            capture_output=True,
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"moto not usable with {exe}: {exc}"
    if proc.returncode != 0:
        return f"moto[server] not installed for {exe}"
    return None


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


def _tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 64 * 1024))
            data = fh.read().decode("utf-8", "replace")
    except OSError as exc:
        return f"<cannot read {path}: {exc}>"
    return "\n".join(data.splitlines()[-lines:])


def _http_answers(url: str, timeout: float = 2.0) -> bool:
    """True when something speaks HTTP at ``url`` (any status code counts)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - fixed http://127.0.0.1 URL
            resp.read()
        return True
    except urllib.error.HTTPError:
        return True
    except (OSError, ValueError):
        return False


def _kill_group(proc: subprocess.Popen[bytes], *, graceful: float = 0.0) -> None:
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


class _Cleanup:
    """Shared plumbing: temp dir, process groups, watchdog, atexit hook."""

    def __init__(self, workdir: Path | None, prefix: str) -> None:
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
        _kill_group(proc, graceful=graceful)
        self._pgids.discard(proc.pid)

    def _finish_close(self, keep_logs: bool) -> None:
        if self._watchdog is not None:
            _kill_group(self._watchdog)
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

    def close(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError


# --------------------------------------------------------------------------- radosgw


class RadosGateway(_Cleanup):
    """A throw-away one-node Ceph cluster with radosgw on 127.0.0.1.

    ``workdir``: parent directory for the cluster's temporary directory (default: the
    system temp dir).  ``log``: raise the daemons' debug levels and keep ``<root>/log``
    on ``close()`` (everything else, including the block file, is still removed).
    """

    kind = "radosgw"

    def __init__(
        self,
        workdir: Path | None = None,
        *,
        log: bool = False,
        timeout: float = 90.0,
        block_size: int = _BLOCK_SIZE,
    ) -> None:
        super().__init__(workdir, "podkit-rgw-")
        self.log = log
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
        root = self.root
        assert root is not None
        debug = (
            "debug rgw = 20\ndebug ms = 1\ndebug osd = 10\ndebug mon = 10\n"
            if self.log
            else "debug rgw = 1/5\ndebug ms = 0/0\ndebug rocksdb = 0/5\n"
        )
        conf = f"""\
[global]
fsid = {fsid}
mon host = v2:127.0.0.1:{self.mon_port}
mon initial members = a
public addr = 127.0.0.1
cluster addr = 127.0.0.1
public network = 127.0.0.1/32
ms bind ipv4 = true
ms bind ipv6 = false
ms bind msgr1 = false
ms bind msgr2 = true
auth cluster required = none
auth service required = none
auth client required = none
auth supported = none
ms mon client mode = crc
ms client mode = crc
ms cluster mode = crc
ms service mode = crc
mon warn on insecure global id reclaim = false
mon warn on insecure global id reclaim allowed = false
run dir = {root}/run
admin socket = {root}/run/$name.asok
pid file = {root}/run/$name.pid
log file = {root}/log/$name.log
log to stderr = false
err to stderr = true
log max recent = 500
mon cluster log file = {root}/log/$cluster.$channel.log
mon debug dump location = {root}/log/$name.tdump
crash dir = {root}/crash
keyring = {root}/keyring
mon data = {root}/mon
osd data = {root}/osd0
mgr data = {root}/mgr
mds data = {root}/mds
rgw data = {root}/rgw
rgw luarocks location = {root}/luarocks
immutable object cache path = {root}/cache
immutable object cache sock = {root}/run/immutable_object_cache_sock
rbd persistent cache path = {root}/cache
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool size one = true
mon allow pool delete = true
mon warn on pool no redundancy = false
mon max pg per osd = 1000
paxos propose interval = 0.05
paxos min wait = 0.01
mon data avail warn = 2
mon data avail crit = 1
mon osd full ratio = 0.99
mon osd backfillfull ratio = 0.98
mon osd nearfull ratio = 0.97
osd failsafe full ratio = 0.995
{debug}
[mon]
mon data = {root}/mon

[osd]
osd data = {root}/osd0
osd objectstore = bluestore
bluestore block path = {root}/osd0.block
bluestore block size = {self.block_size}
bluestore block create = true
bluestore fsck on mkfs = false
bluestore fsck on mount = false
osd memory target = 939524096
bluestore cache autotune = false
bluestore cache size = 134217728
osd op num shards = 2
osd op num threads per shard = 1

[client.rgw]
rgw frontends = beast endpoint=127.0.0.1:{self.rgw_port}
rgw thread pool size = 64
rgw enable usage log = false
rgw dynamic resharding = false
rgw run sync thread = false
rgw enable ops log = false
rgw dns name = 127.0.0.1
"""
        self.conf_path.write_text(conf)

    # ----------------------------------------------------------------- tools
    def _fail(self, what: str, logs: Sequence[str]) -> RuntimeError:
        parts = [f"radosgw test cluster: {what}"]
        for name in logs:
            path = self._log(name)
            if path.exists():
                parts.append(f"--- tail of {path} ---\n{_tail(path) or '(empty)'}")
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
            if _http_answers(self.endpoint_url + "/"):
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
            while _http_answers(self.endpoint_url + "/", timeout=0.5) and time.monotonic() < end:
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

    def close(self) -> None:
        """Kill every daemon (process groups) and remove the directory; idempotent."""
        with self._lock:
            for attr in ("_rgw", "_osd", "_mon"):
                proc = getattr(self, attr)
                if proc is not None:
                    self._release(proc)
                    setattr(self, attr, None)
            self._closed = True
            self.server = None
            self._finish_close(keep_logs=self.log)

    def __enter__(self) -> RadosGateway:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


# --------------------------------------------------------------------------- moto


class MotoServer(_Cleanup):
    """``python -m moto.server`` on 127.0.0.1: quick local fallback, NOT a real S3 server.

    All data lives in the moto process: ``stop_gateway()``/``start_gateway()`` restart it on
    the same port and every bucket and object is lost.
    """

    kind = "moto"

    def __init__(
        self,
        workdir: Path | None = None,
        *,
        log: bool = False,
        timeout: float = 60.0,
        python: str | None = None,
    ) -> None:
        super().__init__(workdir, "podkit-moto-")
        self.log = log
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
            while not _http_answers(self.endpoint_url + "/moto-api/"):
                if self._proc.poll() is not None:
                    raise RuntimeError(f"moto.server exited with {self._proc.returncode}:\n{_tail(out)}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"moto.server did not answer on {self.endpoint_url}:\n{_tail(out)}")
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

    def close(self) -> None:
        with self._lock:
            if self._proc is not None:
                self._release(self._proc)
                self._proc = None
            self._closed = True
            self.server = None
            self._finish_close(keep_logs=self.log)

    def __enter__(self) -> MotoServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


# --------------------------------------------------------------------------- convenience


def start_s3_server(
    prefer: str = "radosgw",
    *,
    workdir: Path | None = None,
    log: bool = False,
) -> tuple[S3Server, RadosGateway | MotoServer]:
    """Start the preferred server ("radosgw" or "moto"); falls back to moto when radosgw is missing.

    The caller owns the returned handle and must ``close()`` it.
    """
    if prefer not in ("radosgw", "moto"):
        raise ValueError(f"unknown S3 test server {prefer!r} (expected 'radosgw' or 'moto')")
    handle: RadosGateway | MotoServer
    if prefer == "radosgw" and radosgw_available() is None:
        handle = RadosGateway(workdir, log=log)
    else:
        handle = MotoServer(workdir, log=log)
    return handle.start(), handle


def main(argv: Sequence[str] | None = None) -> int:
    """``rgw.py serve``: start a server, print one JSON line, run until SIGINT/SIGTERM, clean up."""
    parser = argparse.ArgumentParser(prog="rgw.py", description=__doc__.split("\n\n")[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="cmd", required=True)
    serve = sub.add_parser("serve", help="start a server, print one JSON line, run until SIGINT/SIGTERM")
    serve.add_argument("--moto", action="store_true", help="use the moto fallback instead of radosgw")
    serve.add_argument("--workdir", type=Path, default=None, help="parent of the temporary directory")
    serve.add_argument("--log", action="store_true", help="verbose daemon logs, kept after exit")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)

    stop = threading.Event()

    def _on_signal(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)

    handle: RadosGateway | MotoServer = (
        MotoServer(args.workdir, log=args.log) if args.moto else RadosGateway(args.workdir, log=args.log)
    )
    t0 = time.monotonic()
    try:
        server = handle.start()
        info = {
            "endpoint_url": server.endpoint_url,
            "access_key": server.access_key,
            "secret_key": server.secret_key,
            "region": server.region,
            "kind": server.kind,
            "workdir": str(handle.root),
            "startup_s": round(time.monotonic() - t0, 2),
        }
        print(json.dumps(info), flush=True)  # noqa: T201
        while not stop.wait(1.0):
            if not handle.alive():
                print("rgw.py: a server process died, shutting down", file=sys.stderr)  # noqa: T201
                return 1
        return 0
    finally:
        handle.close()


if __name__ == "__main__":
    sys.exit(main())
