"""Planted secrets never leave: not in any route's answer, event, log line or the settings' repr.

Every operation of the published contract is called (GETs with the token, mutations with an
empty and a malformed body), so routes added later are covered without editing this test.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from route_support import app_for

from podkit.core.events import RecordingNotifier
from podkit.core.outbox import Backoff
from podkit.core.settings import Settings
from podkit.server_routes.contract import build_document
from podkit.services import build_services
from tests.support.live_app import LiveApp

PLANTED = {
    "R2_ACCESS_KEY_ID": "AKIA-PLANTED-0001",
    "R2_SECRET_ACCESS_KEY": "planted-secret-key-0002",
    "HF_TOKEN": "hf_planted0003",
    "CIVITAI_TOKEN": "civitai-planted-0004",
    "PODKIT_API_TOKEN": "api-planted-0005",
}


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(logging.Formatter("%(name)s %(message)s").format(record))


@pytest.fixture
def capture() -> Iterator[_Capture]:
    handler = _Capture()
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    yield handler
    root.removeHandler(handler)
    root.setLevel(old_level)


def test_no_planted_secret_in_answers_events_or_logs(tmp_path: Path, capture: _Capture) -> None:
    env = {
        "PODKIT_STORE": "local",
        "PODKIT_LOCAL_STORE_DIR": str(tmp_path / "store"),
        "PODKIT_CACHE_DIR": str(tmp_path / "cache"),
        "PODKIT_STATE_DIR": str(tmp_path / "state"),
        "PODKIT_VOLUME_DIR": "",
        **PLANTED,
    }
    settings = Settings.from_env(env)
    assert set(settings.secrets()) == set(PLANTED.values())
    events = RecordingNotifier()
    svc = build_services(settings, notifier=events, backoff=Backoff(0.02, 0.1))
    svc.start()
    seen: list[str] = [repr(settings), json.dumps(settings.public_view())]
    auth = {"Authorization": f"Bearer {PLANTED['PODKIT_API_TOKEN']}"}
    calls = 0
    try:
        with LiveApp(lambda: app_for(svc)) as live, requests.Session() as http:
            for path, item in build_document("test")["paths"].items():
                url = live.url + re.sub(r"\{\w+\}", "x", path)
                for method in item:
                    bodies: list[object] = [None] if method == "get" else [{}, {"name": "../x", "url": 5}]
                    for body in bodies:
                        r = http.request(method, url, json=body, headers=auth, timeout=30)
                        assert r.status_code < 500, f"{method} {path}: {r.status_code} {r.text[:200]}"
                        seen.append(f"{method} {path} {r.status_code} {dict(r.headers)} {r.text}")
                        calls += 1
        assert calls >= 10
    finally:
        svc.close()
    seen.extend(json.dumps([e, d], default=str) for e, d in list(events.events))
    seen.extend(capture.lines)
    text = "\n".join(seen)
    for name, value in PLANTED.items():
        assert value not in text, f"{name} leaked"
