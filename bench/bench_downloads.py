"""HTTP download of a large file from a local nginx: PodKit's engine vs hf_transfer, aria2c, curl, requests.

Run with our venv (prerequisites: nginx, aria2c and curl on PATH, ``hf_transfer`` in the venv; see
bench/README.md)::

    .venv/bin/python bench/bench_downloads.py [--size 2048] [--rounds 3] [--json PATH]

A random ``--size`` MiB file lies in tmpfs (``/dev/shm``) and is served by nginx on 127.0.0.1 on
two ports: one with ``limit_rate 100m`` (per connection, like a CDN) and one uncapped. Downloads go
to a folder on disk (``--workdir``). Every download is durable (fsync) and sha256-verified:

* **PodKit**: ``HttpDownloader.fetch`` (``--connections`` ranged pieces, hashing while it downloads,
  fsync at the end) on the session ``sources.make_session`` builds (URL policy, one pool).
* **hf_transfer**: ``hf_transfer.download`` (``--connections`` files, 10 MiB chunks), then fsync,
  then sha256 read back.
* **aria2c** ``-x16 -s16 -k1M --file-allocation=falloc --checksum=sha-256=…`` (it verifies by
  reading the file back), then fsync.
* **curl**: one stream, then fsync and sha256 read back.
* **requests** (uncapped only, the anchor of PERF.md's target (b)): one stream, ``iter_content(1 MiB)``,
  fsync, *no* hashing.

Scenarios, each interleaved round by round: (a) capped, (b) uncapped, (c) kill -9 of a PodKit
download in a child process at about 50 % and a resume in this process; the bytes fetched twice
come from nginx's access log (``$body_bytes_sent`` of every request of both runs) and are compared
with one piece (segment) of the download.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import _bootstrap
from _common import CpuGuard, emit_json, interleave, paired_ratio, print_table, stats

MiB = 2**20
MB = 1e6
FILE = "model.safetensors"
CAP = "100m"  # nginx size units: 100 MiB/s per connection

NGINX_CONF = """
worker_processes 2;
pid {root}/nginx.pid;
error_log {root}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    log_format dl '$server_port $request_uri $status $body_bytes_sent "$http_range"';
    access_log {root}/access.log dl;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 100000;
    keepalive_timeout 60;
    default_type application/octet-stream;
    client_body_temp_path {root}/tmp;
    proxy_temp_path {root}/tmp;
    fastcgi_temp_path {root}/tmp;
    uwsgi_temp_path {root}/tmp;
    scgi_temp_path {root}/tmp;
    server {{ listen 127.0.0.1:{capped}; root {www}; limit_rate {cap}; }}
    server {{ listen 127.0.0.1:{uncapped}; root {www}; }}
}}
"""


def _sigterm(_signo: int, _frame: Any) -> None:
    raise SystemExit(143)


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        buf = bytearray(8 * MiB)
        view = memoryview(buf)
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def prerequisites() -> list[str]:
    missing = [
        f"{tool} (apt-get install {pkg})"
        for tool, pkg in (("nginx", "nginx"), ("aria2c", "aria2"), ("curl", "curl"))
        if shutil.which(tool) is None
    ]
    for module in ("hf_transfer", "requests"):
        try:
            __import__(module)
        except ImportError:
            missing.append(f"{module} (.venv/bin/pip install {module.replace('_', '-')})")
    return missing


def make_source(path: Path, size: int) -> str:
    """``size`` random bytes at ``path``; returns their sha256."""
    import numpy as np

    rng = np.random.default_rng(2026)
    h = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left:
            chunk = rng.bytes(min(64 * MiB, left))
            h.update(chunk)
            f.write(chunk)
            left -= len(chunk)
    return h.hexdigest()


class Nginx:
    """nginx serving ``www`` on a capped and an uncapped port, logging bytes per request."""

    def __init__(self, root: Path, www: Path) -> None:
        from rgw import free_ports

        self.root = root
        (root / "tmp").mkdir(parents=True)
        self.capped, self.uncapped = free_ports(2)
        conf = root / "nginx.conf"
        conf.write_text(
            NGINX_CONF.format(root=root, www=www, capped=self.capped, uncapped=self.uncapped, cap=CAP)
        )
        self.proc = subprocess.Popen(
            ["nginx", "-p", str(root), "-c", str(conf), "-g", "daemon off;"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 10
        import socket

        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"nginx exited: {self.proc.stderr.read().decode() if self.proc.stderr else ''}"
                )
            try:
                with socket.create_connection(("127.0.0.1", self.uncapped), timeout=0.2):
                    with socket.create_connection(("127.0.0.1", self.capped), timeout=0.2):
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("nginx did not start listening")

    def url(self, capped: bool) -> str:
        return f"http://127.0.0.1:{self.capped if capped else self.uncapped}/{FILE}"

    @property
    def log(self) -> Path:
        return self.root / "access.log"

    def log_offset(self) -> int:
        return self.log.stat().st_size if self.log.exists() else 0

    def bytes_since(self, offset: int) -> tuple[int, int]:
        """(body bytes sent, requests) for the file since ``offset`` of the access log."""
        with open(self.log, "rb") as f:
            f.seek(offset)
            lines = f.read().decode().splitlines()
        sent = requests = 0
        for line in lines:
            parts = line.split(" ")
            if len(parts) >= 4 and parts[1] == f"/{FILE}":
                sent += int(parts[3])
                requests += 1
        return sent, requests

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# --------------------------------------------------------------------------- the downloaders


def podkit_fetch(url: str, part: Path, size: int, sha: str, connections: int) -> Any:
    """One PodKit download on a fresh loop and session, as the download manager runs it."""
    from podkit.backends.http_download import HttpDownloader
    from podkit.backends.sources import make_session
    from podkit.core.settings import Settings
    from podkit.services import url_policy

    settings = Settings.from_env({"PODKIT_VOLUME_DIR": "", "PODKIT_URL_ALLOW_HOSTS": "127.0.0.1"})

    async def run() -> Any:
        async with make_session(url_policy(settings), limit=connections + 8) as session:
            engine = HttpDownloader(session, connections=connections)
            return await engine.fetch(url, part, size=size, sha256=sha)

    return asyncio.run(run())


class Cases:
    def __init__(self, runs: Path, size: int, sha: str, connections: int) -> None:
        self.runs, self.size, self.sha, self.connections = runs, size, sha, connections

    def _dest(self, name: str) -> Path:
        d = self.runs / name
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
        return d / FILE

    def _finish(self, dest: Path, t0: float, t_done: float, *, hash_it: bool) -> dict[str, float]:
        fsync_path(dest)
        t_durable = time.perf_counter()
        out = {"done": t_done - t0, "durable": t_durable - t0}
        if hash_it:
            if sha256_of(dest) != self.sha:
                raise RuntimeError(f"{dest.parent.name}: sha256 mismatch")
            out["verified"] = time.perf_counter() - t0
        if dest.stat().st_size != self.size:
            raise RuntimeError(f"{dest.parent.name}: wrong size")
        return out

    def podkit(self, url: str) -> dict[str, float]:
        dest = self._dest("podkit")
        t0 = time.perf_counter()
        r = podkit_fetch(url, dest, self.size, self.sha, self.connections)
        t = time.perf_counter() - t0  # hashed while downloading, fsynced, verified
        if r.sha256 != self.sha or r.size != self.size:
            raise RuntimeError("podkit: wrong result")
        shutil.rmtree(dest.parent)
        return {"done": t, "durable": t, "verified": t}

    def hf_transfer(self, url: str) -> dict[str, float]:
        import hf_transfer

        dest = self._dest("hf_transfer")
        t0 = time.perf_counter()
        hf_transfer.download(url, str(dest), max_files=self.connections, chunk_size=10 * MiB)
        out = self._finish(dest, t0, time.perf_counter(), hash_it=True)
        shutil.rmtree(dest.parent)
        return out

    def aria2c(self, url: str) -> dict[str, float]:
        dest = self._dest("aria2c")
        cmd = [
            "aria2c",
            "-x16",
            "-s16",
            "-k1M",
            "--file-allocation=falloc",
            f"--checksum=sha-256={self.sha}",
            "--allow-overwrite=true",
            "--auto-file-renaming=false",
            "--console-log-level=error",
            "--summary-interval=0",
            "--download-result=hide",
            "-q",
            "-d",
            str(dest.parent),
            "-o",
            FILE,
            url,
        ]
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True)
        t_done = time.perf_counter()  # aria2c verified the sha256 itself (--checksum)
        out = self._finish(dest, t0, t_done, hash_it=False)
        out["verified"] = out["durable"]
        shutil.rmtree(dest.parent)
        return out

    def curl(self, url: str) -> dict[str, float]:
        dest = self._dest("curl")
        t0 = time.perf_counter()
        subprocess.run(["curl", "-sS", "--fail", "-o", str(dest), url], check=True)
        out = self._finish(dest, t0, time.perf_counter(), hash_it=True)
        shutil.rmtree(dest.parent)
        return out

    def requests(self, url: str, *, check: bool = False) -> dict[str, float]:
        import requests

        dest = self._dest("requests")
        t0 = time.perf_counter()
        with requests.get(url, stream=True, timeout=60) as r, open(dest, "wb") as f:
            r.raise_for_status()
            for chunk in r.iter_content(MiB):
                f.write(chunk)
        out = self._finish(dest, t0, time.perf_counter(), hash_it=False)  # the anchor: no hashing
        if check and sha256_of(dest) != self.sha:
            raise RuntimeError("requests: sha256 mismatch")
        shutil.rmtree(dest.parent)
        return out


# --------------------------------------------------------------------------- scenarios


def run_scenario(
    title: str,
    url: str,
    cases: dict[str, Callable[[], dict[str, float]]],
    rounds: int,
    warmup: int,
    guard: CpuGuard,
    size: int,
) -> dict[str, Any]:
    print(f"\n== {title}: {url}", flush=True)
    for _, name in interleave(list(cases), warmup):
        cases[name]()
    times: dict[str, dict[str, list[float]]] = {n: {"done": [], "durable": [], "verified": []} for n in cases}
    foreign: dict[str, list[float]] = {n: [] for n in cases}
    for r, name in interleave(list(cases), rounds):
        res, frac = guard.run(cases[name])
        foreign[name].append(round(frac, 4))
        for k, v in res.items():
            times[name][k].append(v)
        shown = " ".join(f"{k}={size / MB / v:.0f}MB/s" for k, v in res.items())
        print(f"  round {r + 1} {name:12s} {shown} foreign={frac:.1%}", flush=True)
    return {"times": times, "foreign": foreign}


def mbps(size: int, seconds: list[float]) -> dict[str, float]:
    s = stats(seconds)
    return {"best": size / MB / s["min"], "median": size / MB / s["median"]}


def ratio_rows(
    size: int, result: dict[str, Any], anchors: list[tuple[str, str, float | None]]
) -> tuple[list[list[object]], dict[str, dict[str, float]]]:
    """Rows of PodKit's speed over each anchor's (same run); ``anchors`` = (case, column, goal)."""
    pk = result["times"]["podkit"]["verified"]
    rows: list[list[object]] = []
    out: dict[str, dict[str, float]] = {}
    for name, column, goal in anchors:
        a = result["times"][name][column]
        r = {
            "min_min": min(a) / min(pk),
            "median_median": stats(a)["median"] / stats(pk)["median"],
            "paired": paired_ratio(a, pk),  # anchor time / PodKit time = PodKit speed / anchor speed
        }
        out[f"{name}_{column}"] = r
        verdict = "" if goal is None else ("meets" if r["paired"] >= goal else "MISSES") + f" {goal:.1f}x"
        rows.append([f"podkit vs {name} ({column})", r["min_min"], r["median_median"], r["paired"], verdict])
    return rows, out


def report(
    label: str, size: int, result: dict[str, Any], anchors: list[tuple[str, str, float | None]]
) -> dict[str, dict[str, float]]:
    """Print a scenario's speed table and its ratio table; return the ratios."""
    print_table(
        f"{label}: MB/s best / median",
        ["case", "done", "+fsync", "+sha256", "max foreign"],
        speed_rows(size, result),
    )
    rows, ratios = ratio_rows(size, result, anchors)
    print_table(f"{label}: PodKit speed / anchor speed", ["vs", "min/min", "med/med", "paired", "goal"], rows)
    return ratios


def speed_rows(size: int, result: dict[str, Any]) -> list[list[object]]:
    rows: list[list[object]] = []
    for name, cols in result["times"].items():
        cells: list[object] = [name]
        for col in ("done", "durable", "verified"):
            if cols[col]:
                m = mbps(size, cols[col])
                cells.append(f"{m['best']:.0f} / {m['median']:.0f}")
            else:
                cells.append("-")
        cells.append(f"{max(result['foreign'][name]):.1%}")
        rows.append(cells)
    return rows


def resume_run(
    nginx: Nginx, runs: Path, size: int, sha: str, connections: int, capped: bool
) -> dict[str, Any]:
    """kill -9 a PodKit download at ~50 % (child process), resume it here, count bytes sent twice."""
    from podkit.backends.http_partial import partial_progress
    from podkit.core.download_plan import PieceMap

    d = runs / "resume"
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    part = d / FILE
    url = nginx.url(capped)
    offset = nginx.log_offset()
    child = subprocess.Popen(
        [sys.executable, __file__, "--child", url, str(part), str(size), sha, str(connections)],
        stdout=subprocess.DEVNULL,
    )
    progress: tuple[int, int] | None = None
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and child.poll() is None:
        progress = partial_progress(part)
        if progress is not None and progress[0] >= size // 2:
            break
        time.sleep(0.01)
    if child.poll() is not None:
        raise RuntimeError("the child finished (or died) before it could be killed; use a larger --size")
    child.send_signal(signal.SIGSTOP)  # freeze it, read what the kernel holds for its connections, kill it
    in_kernel = socket_queues(nginx.capped if capped else nginx.uncapped)
    child.send_signal(signal.SIGKILL)
    child.wait()
    at_kill = partial_progress(part)
    time.sleep(0.5)  # nginx logs a request when its connection closes
    first_sent, first_requests = nginx.bytes_since(offset)
    offset = nginx.log_offset()
    t0 = time.perf_counter()
    r = podkit_fetch(url, part, size, sha, connections)
    resume_s = time.perf_counter() - t0
    time.sleep(0.2)
    second_sent, second_requests = nginx.bytes_since(offset)
    if r.sha256 != sha:
        raise RuntimeError("resumed download has the wrong sha256")
    piece = PieceMap.plan(size, connections).piece
    twice = first_sent + second_sent - size
    client_lost = twice - in_kernel  # arrived at the client (in its buffers or written) but not saved
    shutil.rmtree(d)
    return {
        "checkpointed_at_kill": at_kill[0] if at_kill else None,
        "first_run_bytes_sent": first_sent,
        "first_run_requests": first_requests,
        "resume_bytes_sent": second_sent,
        "resume_requests": second_requests,
        "resumed_from": r.resumed_from,
        "bytes_fetched_twice": twice,
        "in_kernel_buffers_at_kill": in_kernel,
        "lost_by_client": client_lost,
        "piece_bytes": piece,
        "twice_over_piece": twice / piece,
        "client_lost_over_piece": client_lost / piece,
        "resume_seconds": resume_s,
    }


def socket_queues(port: int) -> int:
    """Bytes in kernel socket buffers of the connections to ``port`` on 127.0.0.1 (``ss``).

    nginx's Send-Q (written by nginx, not yet acknowledged) plus the client's Recv-Q (received by
    the kernel, not yet read by the client): nginx counts them as sent, the client never saw them.
    """
    out = subprocess.run(["ss", "-tnH", "state", "established"], capture_output=True, text=True, check=True)
    total = 0
    for line in out.stdout.splitlines():
        fields = line.split()
        if len(fields) < 4:
            continue
        recv_q, send_q, local, peer = int(fields[0]), int(fields[1]), fields[2], fields[3]
        if local.endswith(f":{port}"):
            total += send_q
        elif peer.endswith(f":{port}"):
            total += recv_q
    return total


def child_main(argv: list[str]) -> int:
    url, part, size, sha, connections = argv
    podkit_fetch(url, Path(part), int(size), sha, int(connections))
    return 0


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _bootstrap.register_package()
        return child_main(sys.argv[2:])
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=2048, help="file size in MiB (default 2048)")
    ap.add_argument("--rounds", type=int, default=3, help="timed rounds per scenario (default 3)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed rounds first (default 1)")
    ap.add_argument("--connections", type=int, default=16, help="PodKit's and hf_transfer's connections")
    ap.add_argument("--resume-rounds", type=int, default=2, help="kill-and-resume repetitions (default 2)")
    ap.add_argument("--skip", default="", help="comma list of scenarios to skip: capped,uncapped,resume")
    ap.add_argument("--no-curl-capped", action="store_true", help="leave the ~20 s curl run out of (a)")
    ap.add_argument("--workdir", type=Path, default=None, help="parent of the download folder (on disk)")
    ap.add_argument("--no-guard", action="store_true", help="do not wait for / discard on foreign load")
    ap.add_argument("--json", help="also write the JSON line to this file")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, _sigterm)
    missing = prerequisites()
    if missing:
        print("cannot run, missing: " + ", ".join(missing), file=sys.stderr)
        return 2
    _bootstrap.register_package()
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}

    guard = CpuGuard(enabled=not args.no_guard)
    shm = Path(tempfile.mkdtemp(prefix="podkit-bench-dl-", dir="/dev/shm"))
    tmp = Path(tempfile.mkdtemp(prefix="podkit-bench-dl-", dir=args.workdir))
    nginx: Nginx | None = None
    try:
        www = shm / "www"
        www.mkdir()
        size = args.size * MiB
        t = time.monotonic()
        sha = make_source(www / FILE, size)
        for p in (shm, www):
            p.chmod(0o755)
        (www / FILE).chmod(0o644)
        print(
            f"source: {size / MB:.0f} MB in tmpfs, sha256 {sha[:16]}…, made in {time.monotonic() - t:.1f} s"
        )
        nginx = Nginx(shm / "nginx", www)
        runs = tmp / "runs"
        cases = Cases(runs, size, sha, args.connections)
        data: dict[str, Any] = {"size_bytes": size, "connections": args.connections, "rounds": args.rounds}

        if "capped" not in skip:
            url = nginx.url(True)
            capped_cases: dict[str, Callable[[], dict[str, float]]] = {
                "podkit": lambda: cases.podkit(url),
                "hf_transfer": lambda: cases.hf_transfer(url),
                "aria2c": lambda: cases.aria2c(url),
            }
            if not args.no_curl_capped:
                capped_cases["curl"] = lambda: cases.curl(url)
            res = run_scenario(
                f"(a) nginx limit_rate {CAP} per connection",
                url,
                capped_cases,
                args.rounds,
                args.warmup,
                guard,
                size,
            )
            anchors: list[tuple[str, str, float | None]] = [
                ("hf_transfer", "verified", 1.0),
                ("aria2c", "verified", 1.3),
                ("hf_transfer", "durable", None),
            ]
            if "curl" in capped_cases:
                anchors.append(("curl", "verified", None))
            ratios = report("(a) capped", size, res, anchors)
            data["capped"] = {**res, "ratios": ratios}

        if "uncapped" not in skip:
            url = nginx.url(False)
            first = [True]

            def requests_case() -> dict[str, float]:
                out = cases.requests(url, check=first[0])
                first[0] = False
                return out

            uncapped_cases: dict[str, Callable[[], dict[str, float]]] = {
                "podkit": lambda: cases.podkit(url),
                "requests": requests_case,
                "hf_transfer": lambda: cases.hf_transfer(url),
                "aria2c": lambda: cases.aria2c(url),
                "curl": lambda: cases.curl(url),
            }
            res = run_scenario("(b) uncapped", url, uncapped_cases, args.rounds, args.warmup, guard, size)
            anchors = [
                ("requests", "durable", 0.8),
                ("hf_transfer", "verified", None),
                ("aria2c", "verified", None),
                ("curl", "verified", None),
            ]
            ratios = report("(b) uncapped", size, res, anchors)
            data["uncapped"] = {**res, "ratios": ratios}

        if "resume" not in skip:
            print("\n== (c) kill -9 at ~50 % and resume (capped server)", flush=True)
            results = []
            for i in range(args.resume_rounds):
                r = resume_run(nginx, runs, size, sha, args.connections, capped=True)
                results.append(r)
                print(
                    f"  run {i + 1}: checkpointed {r['checkpointed_at_kill'] / MB:.0f} MB at the kill, "
                    f"fetched twice {r['bytes_fetched_twice'] / MB:.1f} MB = "
                    f"{r['twice_over_piece']:.2f} piece(s) of {r['piece_bytes'] / MB:.1f} MB, of which "
                    f"{r['in_kernel_buffers_at_kill'] / MB:.1f} MB sat in kernel socket buffers (the client "
                    f"lost {r['lost_by_client'] / MB:.1f} MB = {r['client_lost_over_piece']:.2f} piece); "
                    f"resume took {r['resume_seconds']:.1f} s",
                    flush=True,
                )
            worst = max(r["twice_over_piece"] for r in results)
            verdict = "meets" if worst <= 1.0 else "MISSES"
            print(f"  worst: {worst:.2f} piece(s) fetched twice ({verdict} the goal of at most 1)")
            client = max(r["client_lost_over_piece"] for r in results)
            print(f"  worst without the kernel's socket buffers: {client:.2f} piece(s)")
            data["resume"] = results

        data["discarded_samples"] = guard.discarded
        emit_json("downloads", data, args.json)
        return 0
    finally:
        if nginx is not None:
            nginx.close()
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(shm, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
