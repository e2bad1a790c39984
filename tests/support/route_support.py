"""Real services on a temp folder and a bare aiohttp app serving PodKit's routes (tests/routes)."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web
from aiohttp.test_utils import TestClient

from podkit.core.outbox import Backoff
from podkit.core.settings import Settings
from podkit.server_routes import register
from podkit.services import Services, build_services

TOKEN = "route-test-token-123"
SECRETS = {
    "R2_SECRET_ACCESS_KEY": "sekrit-value-987",
    "R2_ACCESS_KEY_ID": "AKID-VALUE-654",
    "HF_TOKEN": "hf_leak",
}


def make_services(tmp_path: Path, **env: str) -> Services:
    base = {
        "PODKIT_STORE": "local",
        "PODKIT_LOCAL_STORE_DIR": str(tmp_path / "store"),
        "PODKIT_CACHE_DIR": str(tmp_path / "cache"),
        "PODKIT_STATE_DIR": str(tmp_path / "state"),
        "PODKIT_VOLUME_DIR": "",
        "PODKIT_MODELS_DIR": str(tmp_path / "models"),
        **SECRETS,
        **env,
    }
    svc = build_services(Settings.from_env(base), backoff=Backoff(0.02, 0.1))
    svc.start()
    return svc


async def client_for(aiohttp_client, svc: Services) -> TestClient:  # type: ignore[no-untyped-def]
    routes = web.RouteTableDef()
    register(routes, svc)
    app = web.Application()
    app.add_routes(routes)
    return await aiohttp_client(app)
