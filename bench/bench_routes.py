"""PodKit's read routes under a steady load, measured from a second process, while a download runs.

Run with our venv::

    .venv/bin/python bench/bench_routes.py [--rate 200] [--seconds 30] [--json PATH]

Starts the standalone control plane in a child process (temp state, cache, models and local-store
folders), plus ``GET /bench/ping`` — a handler that answers ``{}`` — as the anchor: the floor that
aiohttp itself costs on this machine. When the download routes exist, a large download from a
throttled local HTTP server (tests/support/http_server.py) is started first, so the routes are
served while the engine writes and hashes.

A second child process generates the load open-loop (requests are sent on a fixed schedule
whether or not earlier ones have answered, and each latency is counted from its scheduled time,
so a stalled server shows up as latency instead of silently lowering the rate), round-robin over
the read routes (status, cache stats, downloads list, metrics report, Prometheus metrics — those
that exist) and the ping anchor. Target (PERF.md): p99 ≤ 20 ms and no errors at 200 req/s for
30 s. The ratio printed is each route's p99 over the anchor's p99 from the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _bootstrap
import requests
from _common import emit_json, print_table

READ_ROUTES = (
    "/podkit/status",
    "/podkit/cache/stats",
    "/podkit/downloads",
    "/podkit/metrics/report?hours=24",
    "/podkit/metrics",
)
ANCHOR = "/bench/ping"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- child 1: the server ----------------------------------------------------------------------


def serve(port: int) -> None:
    """The standalone control plane plus the anchor route (runs in a child process)."""
    from aiohttp import web

    from podkit.core.settings import Settings
    from podkit.services import build_services, set_services
    from podkit.standalone import build_app

    services = build_services(Settings.from_env(os.environ, port=port))
    services.start()
    set_services(services)
    app = build_app(services)

    async def ping(request: web.Request) -> web.Response:
        return web.json_response({})

    app.router.add_get(ANCHOR, ping)
    try:
        web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)
    finally:
        services.close()


# --- child 2: the load generator -------------------------------------------------------------


async def _load(base: str, paths: list[str], rate: float, seconds: float) -> dict[str, Any]:
    import aiohttp

    results: dict[str, list[float]] = {p: [] for p in paths}
    errors: dict[str, int] = {p: 0 for p in paths}
    interval = 1.0 / rate
    total = int(rate * seconds)
    connector = aiohttp.TCPConnector(limit=64)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one(path: str, scheduled: float) -> None:
            try:
                async with session.get(base + path) as r:
                    await r.read()
                    ok = r.status == 200
            except aiohttp.ClientError:
                ok = False
            if ok:
                results[path].append(time.perf_counter() - scheduled)
            else:
                errors[path] += 1

        start = time.perf_counter() + 0.1
        tasks = []
        for i in range(total):
            scheduled = start + i * interval
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(paths[i % len(paths)], scheduled)))
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - start
    return {"latencies": results, "errors": errors, "sent": total, "elapsed_s": elapsed}


def load(base: str, paths: list[str], rate: float, seconds: float, out: Path) -> None:
    out.write_text(json.dumps(asyncio.run(_load(base, paths, rate, seconds))))


# --- the parent --------------------------------------------------------------------------------


def _wait_up(url: str, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with {proc.returncode}")
        try:
            requests.get(url, timeout=2)
            return
        except requests.ConnectionError:
            time.sleep(0.2)
    raise SystemExit(f"{url} did not answer within {timeout} s")


def _request(method: str, url: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    r = requests.request(method, url, json=body, timeout=10)
    try:
        return r.status_code, r.json()
    except ValueError:
        return r.status_code, None


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _start_download(base: str, seconds: float) -> tuple[Any, str] | None:
    """A throttled local download that outlasts the load (None when the download routes are absent)."""
    if _request("GET", base + "/podkit/downloads")[0] == 404:
        return None
    from http_server import FaultServer  # tests/support, put on sys.path by _bootstrap

    size = 256 * 2**20
    server = FaultServer()
    server.add("/big.safetensors", os.urandom(size))
    # Per connection; with PodKit's default connections per file the download lasts ~1.5x the load.
    server.throttle_bps = max(2**20, int(size / (seconds * 1.5) / 8))
    server.start()
    status, answer = _request(
        "POST",
        base + "/podkit/downloads",
        {"url": server.url("/big.safetensors"), "type": "checkpoint", "name": "bench-big.safetensors"},
    )
    if status != 202:
        server.close()
        raise SystemExit(f"could not start the download: {status} {answer}")
    return server, answer["jobs"][0]["id"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rate", type=float, default=200.0, help="requests per second (default 200)")
    ap.add_argument("--seconds", type=float, default=30.0, help="duration of the load (default 30)")
    ap.add_argument("--no-download", action="store_true", help="do not run a download during the load")
    ap.add_argument("--workdir", type=Path, default=None, help="parent of the temp folder")
    ap.add_argument("--json", default=None, help="also write the JSON line to this file")
    ap.add_argument("--serve", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--load", nargs=4, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve is not None:
        serve(args.serve)
        return 0
    if args.load is not None:
        base, paths, rate_s, out = args.load
        load(base, paths.split(","), float(rate_s.split(":")[0]), float(rate_s.split(":")[1]), Path(out))
        return 0

    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(SystemExit(143)))
    tmp = Path(tempfile.mkdtemp(prefix="podkit-bench-routes-", dir=args.workdir))
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "PODKIT_STORE": "local",
        "PODKIT_LOCAL_STORE_DIR": str(tmp / "store"),
        "PODKIT_CACHE_DIR": str(tmp / "cache"),
        "PODKIT_STATE_DIR": str(tmp / "state"),
        "PODKIT_MODELS_DIR": str(tmp / "models"),
        "PODKIT_VOLUME_DIR": "",
        "PODKIT_URL_ALLOW_HOSTS": "127.0.0.1",
        "PODKIT_URL_ALLOW_PRIVATE": "1",
    }
    me = [sys.executable, str(Path(__file__).resolve())]
    server = subprocess.Popen([*me, "--serve", str(port)], env=env, stderr=subprocess.DEVNULL)
    file_server = None
    try:
        _wait_up(base + ANCHOR, server)
        paths = [p for p in READ_ROUTES if _request("GET", base + p)[0] == 200] + [ANCHOR]
        download = None if args.no_download else _start_download(base, args.seconds)
        if download is not None:
            file_server, job_id = download
        out = tmp / "load.json"
        spec = f"{args.rate}:{args.seconds}"
        subprocess.run([*me, "--load", base, ",".join(paths), spec, str(out)], check=True)
        result = json.loads(out.read_text())
        job = _request("GET", f"{base}/podkit/downloads/{job_id}")[1] if download else None
    finally:
        server.terminate()
        server.wait(30)
        if file_server is not None:
            file_server.close()
        shutil.rmtree(tmp, ignore_errors=True)

    anchor_p99 = _percentile(result["latencies"][ANCHOR], 0.99)
    rows = []
    per_route: dict[str, Any] = {}
    for path in paths:
        lat = result["latencies"][path]
        p50, p99 = _percentile(lat, 0.5), _percentile(lat, 0.99)
        figures = {
            "n": len(lat),
            "errors": result["errors"][path],
            "p50_ms": p50 * 1e3,
            "p99_ms": p99 * 1e3,
            "max_ms": max(lat) * 1e3 if lat else float("nan"),
            "p99_vs_anchor": p99 / anchor_p99 if anchor_p99 else float("nan"),
        }
        per_route[path] = figures
        rows.append([path, *figures.values()])
    all_lat = [v for p in paths if p != ANCHOR for v in result["latencies"][p]]
    errors = sum(result["errors"][p] for p in paths)
    overall = {
        "rate": args.rate,
        "seconds": args.seconds,
        "achieved_rps": result["sent"] / result["elapsed_s"],
        "p99_ms": _percentile(all_lat, 0.99) * 1e3,
        "errors": errors,
        "download": None
        if job is None
        else {k: job.get(k) for k in ("status", "bytes_done", "bytes_total", "speed")},
        "target_met": _percentile(all_lat, 0.99) <= 0.020 and errors == 0,
    }
    print_table(
        f"Read routes at {args.rate:.0f} req/s for {args.seconds:.0f} s (anchor: {ANCHOR})",
        ["route", "n", "errors", "p50 ms", "p99 ms", "max ms", "p99/anchor"],
        rows,
    )
    print(
        f"\nall PodKit routes: p99 {overall['p99_ms']:.1f} ms, errors {errors}, "
        f"download during load: {overall['download']}; target p99 ≤ 20 ms and 0 errors: "
        f"{'met' if overall['target_met'] else 'NOT met'}"
    )
    emit_json("routes", {"overall": overall, "routes": per_route}, args.json)
    return 0


if __name__ == "__main__":
    _bootstrap.register_package()
    raise SystemExit(main())
