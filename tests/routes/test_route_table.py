"""The route table is the read/write policy, in one place.

It is exactly what gets mounted; the OpenAPI document and docs/architecture.md show the same
policy; and with ``PODKIT_API_TOKEN`` set every ``TOKEN`` route refuses a request without it while
every ``OPEN`` route answers (unset: nothing asks for a token).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient
from route_support import TOKEN, assert_no_secrets, client_for, make_services, template

from podkit.server_routes import ROUTES
from podkit.server_routes._common import Auth, Route
from podkit.server_routes.contract import build_document

ROOT = Path(__file__).resolve().parents[2]
DOC = build_document("test")
#: A docs row: ``| GET | `/podkit/status` | open | `status.status` |``
DOCS_ROW = re.compile(r"^\| (GET|POST|DELETE) \| `(/podkit/[^`]+)` \| (open|token) \| `(\w+\.\w+)` \|", re.M)


def mounted_routes(client: TestClient) -> list[tuple[str, str]]:
    """(method, path) of every route the app serves, HEAD (aiohttp's twin of each GET) left out."""
    found = []
    for route in client.app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("path") or info.get("formatter", "")
        if route.method != "HEAD":
            found.append((route.method, path))
    return found


def declared(route: Route) -> tuple[str, str]:
    return route.method, template(route.url)


def handler_name(route: Route) -> str:
    return f"{route.handler.__module__.rsplit('.', 1)[1]}.{route.handler.__name__}"


def concrete(path: str) -> str:
    """A path with every parameter filled (a job id that does not exist)."""
    return re.sub(r"\{[^}]+\}", "x0123456789abcdef0123456789abcdef", path)


async def test_the_table_is_exactly_what_gets_mounted(aiohttp_client, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    svc = make_services(tmp_path)
    try:
        client: TestClient = await client_for(aiohttp_client, svc)
        mounted = mounted_routes(client)
    finally:
        svc.close()
    assert len(mounted) == len(set(mounted)) == len(ROUTES)
    assert set(mounted) == {declared(r) for r in ROUTES}


def test_every_write_needs_the_token() -> None:
    writes = [r for r in ROUTES if r.method != "GET"]
    assert writes and [r.url for r in writes if r.auth is not Auth.TOKEN] == []


@pytest.mark.parametrize("route", ROUTES, ids=lambda r: f"{r.method} {r.path}")
def test_the_contract_documents_the_policy(route: Route) -> None:
    """A TOKEN route documents the bearer scheme and its 401; an OPEN route documents neither."""
    method, path = declared(route)
    operation = DOC["paths"][path][method.lower()]
    bearer = {"bearer": []} in operation.get("security", [])
    assert bearer == (route.auth is Auth.TOKEN)
    assert ("401" in operation["responses"]) == (route.auth is Auth.TOKEN)


def test_the_docs_show_the_table() -> None:
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    rows = {(m, p, a, h) for m, p, a, h in DOCS_ROW.findall(text)}
    assert rows == {(*declared(r), r.auth.value, handler_name(r)) for r in ROUTES}


@pytest.mark.parametrize("token", [TOKEN, None], ids=["token set", "token unset"])
async def test_the_policy_is_enforced(aiohttp_client, tmp_path: Path, token: str | None) -> None:  # type: ignore[no-untyped-def]
    """Every route of the table is called without the token (and TOKEN routes again with it)."""
    svc = make_services(tmp_path, **({"PODKIT_API_TOKEN": token} if token else {}))
    try:
        client: TestClient = await client_for(aiohttp_client, svc)
        for route in ROUTES:
            url = concrete(template(route.url))
            r = await client.request(route.method, url, json={})
            refused = r.status == 401
            assert refused == (token is not None and route.auth is Auth.TOKEN), (route.method, url, r.status)
            if refused:
                assert (await r.json())["error"] == "unauthorized"
                assert_no_secrets(await r.text())
                good = {"Authorization": f"Bearer {token}"}
                r = await client.request(route.method, url, json={}, headers=good)
                assert r.status != 401, (route.method, url)
    finally:
        svc.close()
