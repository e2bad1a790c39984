"""PodKit's command line: ``serve`` (the standalone control plane: routes and panel on a plain
aiohttp server), ``bootstrap`` (a pod's models), ``pod`` (a pod's one start command) and ``worker``
(a RunPod Serverless worker).

For pods without the ComfyUI canvas (a trainer pod, an API host), for CI's browser tests, and for a
newcomer without ComfyUI or R2: ``python <path-to-podkit> serve`` starts it on the embedded local
store and the state folder from the environment (see README).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from aiohttp import web

from .core.errors import PodKitError
from .core.events import RecordingNotifier
from .core.settings import Settings
from .server_routes import register
from .services import Services, build_services, set_services

ROOT = Path(__file__).resolve().parent
logger = logging.getLogger(__name__)


def build_app(services: Services) -> web.Application:
    """An aiohttp app serving ``/podkit/…`` routes, the page in ``web/`` and the modules in ``js/``."""
    routes = web.RouteTableDef()
    register(routes, services)
    app = web.Application(client_max_size=1024**2)
    app.add_routes(routes)

    async def index(request: web.Request) -> web.FileResponse:
        return web.FileResponse(ROOT / "web" / "index.html")

    app.router.add_get("/", index)
    app.router.add_static("/web/", ROOT / "web", follow_symlinks=False)
    app.router.add_static("/js/", ROOT / "js", follow_symlinks=False)
    return app


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["worker"]:  # the runpod SDK parses its own flags: hand them over untouched
        from .worker.main import main as worker_main

        return worker_main(argv[1:])
    if argv[:1] == ["pod"]:  # ComfyUI's own arguments follow "--"
        from .pod.main import main as pod_main

        return pod_main(argv[1:])
    parser = argparse.ArgumentParser(prog="podkit", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the standalone control plane")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8189, help="port (default 8189)")
    sub.add_parser("pod", help="start a pod: bootstrap manifest, then ComfyUI with PodKit in the foreground")
    sub.add_parser("worker", help="run a RunPod Serverless worker (PODKIT_WORKER_ROLE; runpod SDK flags)")
    boot = sub.add_parser("bootstrap", help="download a manifest's models (run before ComfyUI starts)")
    boot.add_argument("manifest", type=Path, help="YAML or JSON manifest (see README, Downloads)")
    boot.add_argument("--force", action="append", default=[], metavar="NAME", help="download NAME again")
    boot.add_argument("--models-dir", type=Path, help="models folder (default: PODKIT_MODELS_DIR)")
    args = parser.parse_args(argv)
    if args.command == "bootstrap":
        from .jobs.bootstrap import run_bootstrap
        from .services import make_store, url_policy

        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
        try:
            settings = Settings.from_env(os.environ)
            store = make_store(settings)
        except PodKitError as e:
            print(f"podkit bootstrap: {e}", file=sys.stderr)  # noqa: T201
            return 2
        return run_bootstrap(
            settings,
            store,
            args.manifest,
            policy=url_policy(settings),
            force=args.force,
            models_dir=args.models_dir,
        )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings.from_env(os.environ, port=args.port)
    services = build_services(settings, notifier=RecordingNotifier())
    services.start()
    set_services(services)
    if settings.api_token is None and args.host not in ("127.0.0.1", "localhost", "::1"):
        logger.warning("PODKIT_API_TOKEN is not set: PodKit's mutating routes are open on %s", args.host)
    logger.info("PodKit control plane on http://%s:%d/ (store=%s)", args.host, args.port, settings.store_kind)
    try:
        web.run_app(build_app(services), host=args.host, port=args.port, print=None)
    finally:
        services.close()
    return 0
