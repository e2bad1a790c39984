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

This module is the public face (callers import everything from ``rgw``); the parts live beside it:
``rgw_api.py`` (``S3Server``, the handle protocol, availability checks), ``rgw_procs.py`` (ports,
process groups, the watchdog), ``rgw_conf.py`` (the cluster's ceph.conf), ``rgw_cluster.py``
(``RadosGateway``), ``rgw_moto.py`` (``MotoServer``).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from rgw_api import REGION, TEST_UID, S3Server, S3ServerHandle, moto_available, radosgw_available
from rgw_cluster import RadosGateway
from rgw_moto import MotoServer
from rgw_procs import free_ports, port_is_free

__all__ = [
    "REGION",
    "TEST_UID",
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
