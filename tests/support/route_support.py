"""Real services on a temp folder and a bare aiohttp app serving PodKit's routes (tests/routes).

The route tests share these helpers from here, never by importing one another.
"""

from __future__ import annotations

import re
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


def app_for(svc: Services) -> web.Application:
    """A bare app with every PodKit route, as the standalone control plane mounts them."""
    routes = web.RouteTableDef()
    register(routes, svc)
    app = web.Application(client_max_size=1024**2)
    app.add_routes(routes)
    return app


async def client_for(aiohttp_client, svc: Services) -> TestClient:  # type: ignore[no-untyped-def]
    return await aiohttp_client(app_for(svc))


def assert_no_secrets(text: str) -> None:
    """None of the planted secrets, nor the API token, is in ``text``."""
    for value in (*SECRETS.values(), TOKEN):
        assert value not in text


def template(path: str) -> str:
    """aiohttp's ``{key:regex}`` → ``{key}``, as OpenAPI and aiohttp's route info write a path."""
    return re.sub(r"\{(\w+):[^{}]*(?:\{[^{}]*\}[^{}]*)*\}", r"{\1}", path)
