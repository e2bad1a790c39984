"""tests/browser tier: the PodKit panel in headless Chromium, against the standalone control plane.

The control plane runs as a real subprocess (``python <repo> serve``) on a free loopback port, with
its own state, cache, store and models folders under the test's temp dir; downloads come from a real
local HTTP server (tests/support/http_server.py), allowed through ``PODKIT_URL_ALLOW_HOSTS``.
The browser is Debian's chromium driven by Python playwright (never ``playwright install``); every
request to anything but 127.0.0.1/localhost is aborted and recorded, and the tests assert none
was attempted.

Skipped, with the reason, when chromium or playwright is missing (``scripts/setup`` installs both
as root on Debian). Screenshots go to a temp dir (printed), or to ``PODKIT_TEST_SCREENSHOTS``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
SUPPORT = REPO / "tests" / "support"
if str(SUPPORT) not in sys.path:
    sys.path.insert(0, str(SUPPORT))

from browser_support import PageLog, missing_browser, open_context, watch  # noqa: E402
from http_server import FaultServer, fault_server  # noqa: E402
from rgw import free_ports  # noqa: E402

DROPPED_ENV_PREFIXES = ("AWS_", "R2_", "PODKIT_", "FAKE_AITK_")
DROPPED_ENV = {"HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "CIVITAI_TOKEN"}


@pytest.fixture(scope="session")
def browser_ready() -> None:
    reason = missing_browser()
    if reason:
        pytest.skip(reason)


@dataclass
class ControlPlane:
    """A running ``python <repo> serve``: its URL, folders and log."""

    url: str
    root: Path
    proc: subprocess.Popen[bytes]
    log: Path
    env: dict[str, str]

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def get_json(self, path: str) -> Any:
        import json

        with urllib.request.urlopen(self.url + path, timeout=10) as r:  # noqa: S310 - http://127.0.0.1 only
            return json.loads(r.read())


def _child_env(root: Path, extra: dict[str, str]) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(DROPPED_ENV_PREFIXES) and k not in DROPPED_ENV
    }
    for name, sub in (
        ("PODKIT_STATE_DIR", "state"),
        ("PODKIT_CACHE_DIR", "cache"),
        ("PODKIT_LOCAL_STORE_DIR", "store"),
        ("PODKIT_MODELS_DIR", "models"),
    ):
        (root / sub).mkdir(parents=True, exist_ok=True)
        env[name] = str(root / sub)
    env["PODKIT_VOLUME_DIR"] = ""
    env["PODKIT_STORE"] = "local"
    env["PODKIT_INSTANCE_ID"] = "browser-test"
    env["PODKIT_URL_ALLOW_HOSTS"] = "127.0.0.1"
    env.update(extra)
    return env


def start_control_plane(root: Path, extra_env: dict[str, str] | None = None) -> ControlPlane:
    root.mkdir(parents=True, exist_ok=True)
    env = _child_env(root, extra_env or {})
    (port,) = free_ports(1)
    log = root / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, str(REPO), "serve", "--host", "127.0.0.1", "--port", str(port)],
            cwd=root,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    plane = ControlPlane(url, root, proc, log, env)
    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"the control plane exited ({proc.returncode}):\n{plane.log_text()[-4000:]}")
        try:
            with urllib.request.urlopen(url + "/podkit/status", timeout=2) as r:  # noqa: S310 - loopback
                if r.status == 200:
                    break
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            stop_control_plane(plane)
            raise RuntimeError(f"the control plane did not answer in 60 s:\n{plane.log_text()[-4000:]}")
        time.sleep(0.2)
    return plane


def stop_control_plane(plane: ControlPlane) -> None:
    if plane.proc.poll() is None:
        plane.proc.terminate()
        try:
            plane.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            plane.proc.kill()
            plane.proc.wait(timeout=10)


@pytest.fixture(scope="session")
def file_server() -> Iterator[FaultServer]:
    with fault_server() as server:
        yield server


@pytest.fixture(scope="session")
def plane_env() -> dict[str, str]:
    """Extra environment of the control plane (the training stand-in, when its settings exist)."""
    return {
        "PODKIT_DOWNLOAD_CONNECTIONS": "2",  # with the file server's throttle: progress takes seconds
        # training runs the ai-toolkit stand-in; each step takes a tenth of a second
        "PODKIT_AI_TOOLKIT_DIR": str(SUPPORT / "fake_ai_toolkit"),
        "PODKIT_AI_TOOLKIT_PYTHON": sys.executable,
        "PODKIT_TRAINER_ENV": "FAKE_AITK_STEP_DELAY",
        "FAKE_AITK_STEP_DELAY": "0.1",
    }


@pytest.fixture(scope="session")
def control_plane(
    browser_ready: None, tmp_path_factory: pytest.TempPathFactory, plane_env: dict[str, str]
) -> Iterator[ControlPlane]:
    plane = start_control_plane(tmp_path_factory.mktemp("plane"), plane_env)
    try:
        yield plane
    finally:
        stop_control_plane(plane)


@pytest.fixture(scope="session")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    keep = os.environ.get("PODKIT_TEST_SCREENSHOTS")  # a folder to keep them in (else a temp dir)
    path = Path(keep) if keep else tmp_path_factory.mktemp("screenshots")
    path.mkdir(parents=True, exist_ok=True)
    sys.stderr.write(f"\nbrowser screenshots: {path}\n")
    return path


@pytest.fixture(scope="module")
def browser(browser_ready: None, chromium_browser: Any) -> Any:
    return chromium_browser


def documented_paths(plane: ControlPlane) -> set[str]:
    """The path templates this server documents (its OpenAPI contract)."""
    return set(plane.get_json("/podkit/openapi.json").get("paths", {}))


def assert_clean(log: PageLog, plane: ControlPlane, expected: tuple[str, ...] = ()) -> None:
    """No console errors and no failed requests, except those a test expects and 404s of PodKit
    sections this server lacks.

    The panel asks every section's route and shows "not available on this server" on a 404; the
    browser logs each such 404 as a console error. Those are allowed only for paths the server's
    own contract does not document. ``expected`` lists "<status> <path>" answers a test provoked
    on purpose (a refused form). Any other failure or console error fails the test.
    """
    documented = documented_paths(plane)
    unexpected = []
    allowed: dict[str, int] = {}
    for entry in log.failed_responses:
        status, url = entry.split(" ", 1)
        path = urlparse(url).path
        missing = status == "404" and path.startswith("/podkit/") and path not in documented
        if missing or f"{status} {path}" in expected:
            allowed[status] = allowed.get(status, 0) + 1
        else:
            unexpected.append(entry)
    assert not unexpected, f"failed requests: {unexpected}"
    errors = list(log.console_errors)
    for status, n in allowed.items():
        for _ in range(n):  # the browser's own line for each allowed failed request
            line = next(
                (e for e in errors if e.startswith("Failed to load resource") and f" {status} " in e), None
            )
            if line is not None:
                errors.remove(line)
    assert not errors, f"console errors: {errors}"


@pytest.fixture
def page_log() -> PageLog:
    return PageLog()


@pytest.fixture
def page_clean(page_log: PageLog, control_plane: ControlPlane) -> Callable[..., None]:
    """page_clean(*expected) asserts the pages opened so far logged no errors (see :func:`assert_clean`)."""
    return lambda *expected: assert_clean(page_log, control_plane, expected)


@pytest.fixture
def open_panel(browser: Any, control_plane: ControlPlane, page_log: PageLog) -> Iterator[Callable[..., Any]]:
    """open_panel(width=420) → a playwright Page showing the standalone panel, fully loaded."""
    contexts: list[Any] = []

    def _open(width: int = 420, height: int = 900) -> Any:
        ctx = open_context(browser, page_log, width, height)
        contexts.append(ctx)
        page = ctx.new_page()
        watch(page, page_log)
        page.goto(control_plane.url + "/")
        page.wait_for_selector("#podkit-root .podkit-conn[data-state='live']", timeout=20_000)
        return page

    yield _open
    for ctx in contexts:
        ctx.close()
    assert not page_log.blocked, f"the panel tried to reach the outside: {page_log.blocked}"
    assert not page_log.page_errors, f"uncaught errors in the page: {page_log.page_errors}"
