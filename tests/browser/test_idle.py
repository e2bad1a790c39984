"""The idle stop at the top of the standalone panel: the warning's countdown ticking down between
re-syncs, its toast (once), Keep alive restarting the idle clock, other phases' lines, and a server
without an idle watch.

This module runs its own control plane (the ``control_plane`` fixture below replaces the shared
one for these tests only): 30 s of idleness runs the harmless command ``true``, and the warning
lasts an hour, so the pod is in "warning" from the start.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from browser_support import shot

from .conftest import ControlPlane, start_control_plane, stop_control_plane

IDLE_ENV = {
    "PODKIT_IDLE_MINUTES": "0.5",
    "PODKIT_IDLE_WARN_SECONDS": "3600",
    "PODKIT_IDLE_ACTION": "command",
    "PODKIT_IDLE_COMMAND": "true",
}

BLOCK = "#podkit-idle"
# the countdown shown now, in seconds ("0:27" → 27; null when there is none)
COUNTDOWN_JS = """() => {
  const el = document.querySelector('#podkit-idle .podkit-idle-countdown');
  if (!el || el.hidden || !el.textContent) return null;
  return el.textContent.split(':').reduce((acc, part) => acc * 60 + Number(part), 0);
}"""
# records every toast the page shows (they vanish after a few seconds), from the document's start
TOAST_RECORDER = """
window.__podkitToasts = [];
new MutationObserver((records) => {
  for (const r of records)
    for (const n of r.addedNodes)
      if (n.classList && n.classList.contains('podkit-toast')) window.__podkitToasts.push([n.className, n.textContent]);
}).observe(document, { childList: true, subtree: true });
"""


@pytest.fixture(scope="module")
def control_plane(
    browser_ready: None, tmp_path_factory: pytest.TempPathFactory, plane_env: dict[str, str]
) -> Iterator[ControlPlane]:
    plane = start_control_plane(tmp_path_factory.mktemp("idle-plane"), {**plane_env, **IDLE_ENV})
    try:
        yield plane
    finally:
        stop_control_plane(plane)


def keep_alive(plane: ControlPlane) -> dict[str, Any]:
    request = urllib.request.Request(
        plane.url + "/podkit/idle/keepalive",
        data=b"{}",
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as r:
        return json.loads(r.read())


def countdown(page: Any) -> int | None:
    return page.evaluate(COUNTDOWN_JS)


def wait_countdown(page: Any, test: str, arg: int, timeout: float = 20_000) -> None:
    """Wait until ``test`` ("<=" or ">") holds between the shown countdown and ``arg``."""
    page.wait_for_function(
        f"(n) => {{ const s = ({COUNTDOWN_JS})(); return s !== null && s {test} n; }}",
        arg=arg,
        timeout=timeout,
    )


def test_warning_counts_down_and_keep_alive_restarts_it(
    open_panel: Any, control_plane: ControlPlane, page_clean: Any, screenshots: Path
) -> None:
    # a fresh 30 s on the idle clock, whatever starting the server and the browser took
    fresh = keep_alive(control_plane)
    assert fresh["phase"] == "warning", fresh
    assert fresh["policy"] == {
        "enabled": True,
        "idle_minutes": 0.5,
        "action": "command",
        "warn_seconds": 3600.0,
        "command": ["true"],
    }
    page = open_panel(width=360)
    page.add_init_script(TOAST_RECORDER)
    page.reload()
    page.wait_for_selector("#podkit-root .podkit-conn[data-state='live']", timeout=20_000)
    block = page.locator(BLOCK)
    page.wait_for_selector(f"{BLOCK}.podkit-idle-warning[data-phase='warning']")
    # right under the header, before the first section
    assert (
        page.evaluate("() => document.querySelector('#podkit-root > header').nextElementSibling.id")
        == "podkit-idle"
    )
    text = block.locator(".podkit-idle-text").inner_text()
    assert "runs the idle command in" in text, text
    assert text.startswith("Idle "), text
    assert "Runs the idle command after 30 s idle" in block.inner_text()
    first = countdown(page)
    assert first is not None and 0 < first <= 30, first

    # the countdown ticks down every second on its own, between the page's 5 s re-syncs
    wait_countdown(page, "<=", first - 2)
    # the warning was toasted once: re-syncs that still say "warning" add no toast
    with page.expect_response(lambda r: r.url.endswith("/podkit/idle"), timeout=20_000):
        pass  # the next periodic re-sync
    toasts = page.evaluate("() => window.__podkitToasts")
    assert len(toasts) == 1, toasts
    assert "podkit-toast-warn" in toasts[0][0]
    assert toasts[0][1].startswith("Pod idle"), toasts
    assert "runs the idle command in" in toasts[0][1]
    overflow = page.evaluate("() => document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"{overflow}px horizontal overflow at 360px"
    shot(page, screenshots, "idle-warning")

    # Keep alive restarts the idle clock: about 30 s to go again
    before = countdown(page)
    assert before is not None and before <= 28, before
    keep = page.get_by_role("button", name="Keep alive")
    with page.expect_response(lambda r: r.url.endswith("/podkit/idle/keepalive")) as answer:
        keep.click()
    body = answer.value.json()
    assert answer.value.request.post_data_json == {}
    assert body["phase"] == "warning"
    assert 25 <= body["act_in_seconds"] <= 30, body
    wait_countdown(page, ">", before)
    assert countdown(page) >= 25
    page.wait_for_selector(f"{BLOCK} >> text=Idle clock restarted.")
    assert len(page.evaluate("() => window.__podkitToasts")) == 1, "a keep-alive is no new warning"
    shot(page, screenshots, "idle-kept-alive")
    page_clean()


def fake_idle(page: Any, body: dict[str, Any], status: int = 200) -> None:
    page.route(
        "**/podkit/idle",
        lambda r: r.fulfill(status=status, body=json.dumps(body), content_type="application/json"),
    )


def test_busy_and_failed_lines(open_panel: Any, page_clean: Any) -> None:
    page = open_panel()
    policy = {"enabled": True, "idle_minutes": 30, "action": "stop", "warn_seconds": 300, "command": []}
    busy = ["1 upload(s) waiting for the store"]
    fake_idle(
        page,
        {
            "policy": policy,
            "phase": "busy",
            "idle_seconds": 0,
            "act_in_seconds": None,
            "busy": busy,
            "message": "busy: " + busy[0],
            "error": None,
        },
    )
    page.click("button[aria-label='Refresh the PodKit panel']")
    page.wait_for_selector(f"{BLOCK}[data-phase='busy'] >> text=Busy: 1 upload(s) waiting for the store")
    assert countdown(page) is None
    assert page.locator(f"{BLOCK}.podkit-idle-warning").count() == 0
    assert page.get_by_role("button", name="Keep alive").is_visible()
    assert "Stops the pod after 30 min idle · warns 5 min before" in page.locator(BLOCK).inner_text()

    page.unroute("**/podkit/idle")
    fake_idle(
        page,
        {
            "policy": policy,
            "phase": "failed",
            "idle_seconds": 1800,
            "act_in_seconds": 0,
            "busy": [],
            "message": "the idle action failed",
            "error": "stopping the pod needs RUNPOD_API_KEY and RUNPOD_POD_ID",
        },
    )
    page.click("button[aria-label='Refresh the PodKit panel']")
    page.wait_for_selector(
        f"{BLOCK}[data-phase='failed'] >> "
        "text=Idle action failed: stopping the pod needs RUNPOD_API_KEY and RUNPOD_POD_ID"
    )
    page.wait_for_selector("#podkit-toasts .podkit-toast-error >> text=Idle action failed")
    page_clean()


def test_a_server_without_an_idle_watch_says_so(open_panel: Any, page_clean: Any, screenshots: Path) -> None:
    page = open_panel()
    page.wait_for_selector(f"{BLOCK}[data-phase]")
    fake_idle(
        page,
        {"error": {"code": "unavailable", "message": "the idle watch is not part of this process"}},
        status=503,
    )
    page.click("button[aria-label='Refresh the PodKit panel']")
    page.wait_for_selector(
        f"{BLOCK}[data-phase='unavailable'] >> text=Idle stop: not available on this server."
    )
    assert page.get_by_role("button", name="Keep alive").is_hidden()
    assert page.locator(f"{BLOCK} .podkit-idle-text").is_hidden()
    # the rest of the panel is untouched
    page.wait_for_selector("#podkit-sec-cache >> text=Model cache")
    shot(page, screenshots, "idle-unavailable")
    page_clean("503 /podkit/idle")
