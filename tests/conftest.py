"""Shared test setup: make the repo root importable as the package ``podkit``.

The repository root *is* the package ComfyUI imports from ``custom_nodes/`` (under whatever folder
name the user cloned it to), so tests register it under a stable name instead of relying on the
checkout's folder name.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Test helpers (rgw.py, comfy_client.py, podkit_import.py, ...) are plain modules in tests/support.
sys.path.insert(0, str(ROOT / "tests" / "support"))

from podkit_import import register_package  # noqa: E402

register_package()


@pytest.fixture(scope="session")
def s3_gateway() -> Iterator[object]:
    """A real S3-compatible server on 127.0.0.1 for the whole session (Ceph radosgw).

    ``PODKIT_TEST_S3=moto`` switches to moto's server for quick local correctness runs. Without
    radosgw the S3 tests are skipped with the reason, except under CI, where that is an error.
    """
    import rgw

    prefer = os.environ.get("PODKIT_TEST_S3", "radosgw")
    reason = rgw.moto_available() if prefer == "moto" else rgw.radosgw_available()
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(f"S3 test server unavailable in CI: {reason}")
        pytest.skip(f"S3 test server unavailable: {reason}")
    handle = rgw.MotoServer() if prefer == "moto" else rgw.RadosGateway()
    try:
        handle.start()
        yield handle
    finally:
        handle.close()


@pytest.fixture(scope="session")
def s3_server(s3_gateway: object) -> object:
    """The running server's endpoint and credentials (``rgw.S3Server``)."""
    return s3_gateway.start()  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def chromium_browser() -> Iterator[object]:
    """Headless Chromium for the browser tests (tests/browser, tests/comfy/test_panel.py). Module
    scope on purpose: while playwright's sync API runs, its event loop counts as running in this
    thread, which would break every asyncio test after it; it also allows one instance per thread.
    Skips when chromium or playwright is missing."""
    from browser_support import browser_session, missing_browser

    reason = missing_browser()
    if reason:
        pytest.skip(reason)
    with browser_session() as browser:
        yield browser
