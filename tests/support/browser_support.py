"""Headless Chromium for the panel's browser tests (tests/browser, tests/comfy/test_panel.py).

Debian's ``chromium`` driven by the PyPI ``playwright`` package through ``executable_path`` (never
``playwright install``), with flags that keep it off the network, and contexts that abort and
record every request to anything but loopback.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}


def chromium_path() -> str | None:
    for candidate in (os.environ.get("PODKIT_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium")):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def missing_browser() -> str | None:
    """Why the browser tests cannot run here, or None."""
    if chromium_path() is None:
        return "chromium is not installed (apt-get install chromium; scripts/setup does it as root)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the Python package playwright is not installed (pip install -r requirements-dev.txt)"
    return None


@dataclass
class PageLog:
    """What pages did that a test may assert on: console errors, page errors, blocked and failed requests."""

    console_errors: list[str] = field(default_factory=list)
    console: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)
    failed_responses: list[str] = field(default_factory=list)


def open_context(browser: Any, log: PageLog, width: int = 420, height: int = 900) -> Any:
    """A fresh context (own storage, no service workers) that lets only loopback and inline URLs through."""
    ctx = browser.new_context(viewport={"width": width, "height": height}, service_workers="block")

    def gate(route: Any) -> None:
        url = route.request.url
        if url.startswith(("data:", "blob:")) or urlparse(url).hostname in LOOPBACK:
            route.continue_()
        else:
            log.blocked.append(url)
            route.abort()

    ctx.route("**/*", gate)
    return ctx


def watch(page: Any, log: PageLog) -> None:
    def on_console(m: Any) -> None:
        log.console.append(f"{m.type}: {m.text}")
        if m.type == "error":
            log.console_errors.append(m.text)

    page.on("console", on_console)
    page.on("pageerror", lambda e: log.page_errors.append(str(e)))
    page.on(
        "response", lambda r: log.failed_responses.append(f"{r.status} {r.url}") if r.status >= 400 else None
    )


def shot(page: Any, screenshots: Path, name: str) -> Path:
    """A full-page screenshot ``<screenshots>/<name>.png``; returns its path."""
    path = screenshots / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


@contextmanager
def browser_session() -> Iterator[Any]:
    """A launched headless Chromium (playwright's sync API allows one per thread: share it)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()
