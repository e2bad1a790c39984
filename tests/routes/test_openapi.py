"""The published OpenAPI contract matches the running routes.

Every ``/podkit/`` route the app registers is described, every described route exists, and
schemathesis sends generated valid and malformed requests to each operation of a live server:
no 5xx, no traceback, answers and status codes as documented. With ``PODKIT_API_TOKEN`` set, every
operation that documents the bearer scheme refuses a request without it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from route_support import app_for, make_services, template
from schemathesis import APIOperation, Case, GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

from podkit.server_routes import ROUTES
from podkit.server_routes.contract import build_document
from tests.support.live_app import LiveApp

DOC = build_document("test")
MUTATING = {"post", "put", "patch", "delete"}


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveApp]:
    # Fuzzed download requests become real jobs: keep their Hub/CivitAI lookups on a closed
    # loopback port instead of the internet.
    svc = make_services(
        tmp_path_factory.mktemp("openapi"),
        PODKIT_HF_ENDPOINT="http://127.0.0.1:9",
        PODKIT_CIVITAI_BASE_URL="http://127.0.0.1:9",
    )
    with LiveApp(lambda: app_for(svc)) as live:
        yield live
    svc.close()


@pytest.fixture(scope="module")
def api_schema(live: LiveApp) -> schemathesis.BaseSchema:
    schema = schemathesis.openapi.from_dict(DOC)
    schema.config.update(base_url=live.url)
    return schema


def test_every_declared_route_is_documented_and_vice_versa() -> None:
    """The route table (which is what gets mounted: tests/routes/test_route_table.py) == the contract."""
    declared = {(r.method.lower(), template(r.url)) for r in ROUTES}
    documented = {(method, path) for path, item in DOC["paths"].items() for method in item}
    assert declared == documented


def test_fragments_merge_without_conflicts() -> None:
    assert DOC["openapi"].startswith("3.1")
    for path, item in DOC["paths"].items():
        assert path.startswith("/podkit/"), path
        for method, op in item.items():
            assert op.get("operationId"), f"{method} {path} has no operationId"
            assert "200" in op["responses"] or "202" in op["responses"], f"{method} {path}"
            if method in MUTATING:
                assert {"bearer": []} in op.get("security", []), f"{method} {path} must document the token"
                assert "415" in op["responses"] or method == "delete", f"{method} {path}: document 415"


SCHEMA = schemathesis.openapi.from_dict(DOC)
OPERATIONS = [result.ok() for result in SCHEMA.get_all_operations()]
CASES = [
    (op, mode)
    for op in OPERATIONS
    for mode in GenerationMode
    # a malformed request needs a constrained input to break (any string is a valid path segment)
    if mode is GenerationMode.POSITIVE or any(map(len, (op.query, op.body)))
]


@pytest.mark.parametrize(
    ("operation", "mode"), CASES, ids=lambda v: getattr(v, "label", getattr(v, "value", ""))
)
def test_routes_keep_the_contract(operation: APIOperation, mode: GenerationMode, live: LiveApp) -> None:
    """Generated requests (valid, then malformed) get documented answers; never a 5xx."""
    session = requests.Session()

    @given(operation.as_strategy(generation_mode=mode))
    @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def exchange(case: Case) -> None:
        response = case.call(base_url=live.url, session=session, allow_redirects=False)
        assert response.status_code < 500, response.text
        assert "Traceback" not in response.text
        if mode is GenerationMode.POSITIVE:
            case.validate_response(response, excluded_checks=[positive_data_acceptance])
        elif response.status_code >= 400:
            assert set(response.json()) >= {"error", "message"}

    try:
        exchange()
    finally:
        session.close()


def test_mutations_refuse_requests_without_the_token(tmp_path: Path) -> None:
    svc = make_services(tmp_path, PODKIT_API_TOKEN="openapi-token-1")
    try:
        with LiveApp(lambda: app_for(svc)) as live:
            checked = 0
            for path, item in DOC["paths"].items():
                for method, op in item.items():
                    if {"bearer": []} not in op.get("security", []):
                        continue
                    url = live.url + re.sub(r"\{\w+\}", "x", path)
                    r = requests.request(method, url, json={}, timeout=10)
                    assert r.status_code == 401, f"{method} {path} answered {r.status_code}"
                    assert r.json()["error"] == "unauthorized"
                    checked += 1
            assert checked >= 5
    finally:
        svc.close()
