"""The PodKit sidebar tab inside a real ComfyUI on its pinned frontend, in headless Chromium.

The tab opens and shows every section; a download added over PodKit's route is followed to the
end through ComfyUI's websocket (``podkit.download`` events; the panel's own re-sync is set to 10
minutes, so only events can move it), toasts when it finishes; re-rendering into a reused element
leaves one panel; nothing PodKit logs to the console is an error, and nothing leaves loopback.

Each test runs on the tree's own pinned frontend and on the newest frontend release that
``scripts/setup`` prepared (ComfyUI's ``--front-end-root``; ``PODKIT_TEST_FRONTEND_ROOT`` names
another ``.../comfyui_frontend_package/static`` folder instead).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

SUPPORT = Path(__file__).resolve().parents[1] / "support"
if str(SUPPORT) not in sys.path:
    sys.path.insert(0, str(SUPPORT))

from browser_support import PageLog, missing_browser, open_context, watch  # noqa: E402
from http_server import FaultServer, fault_server  # noqa: E402
from support.comfy_trees import latest_frontend  # noqa: E402

TAB = "podkit-panel"
TAB_BUTTON = f'[data-testid="{TAB}-tab-button"], button.{TAB}-tab-button'
SECTIONS = ["Downloads", "Models & cache", "Training", "Monitor", "Outbox"]


@pytest.fixture(scope="module", params=["pinned", "newest"], ids=["frontend-pinned", "frontend-newest"])
def frontend_root(request: pytest.FixtureRequest) -> Path | None:
    """None: the tree's own pinned frontend; else the newest frontend release's static folder."""
    if request.param == "pinned":
        return None
    newest = latest_frontend()
    if isinstance(newest, str):
        pytest.skip(newest)
    return newest.root


@pytest.fixture(scope="module")
def comfy_panel_server(
    comfy_server_factory: Callable[..., Any],
    frontend_root: Path | None,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Any]:
    reason = missing_browser()
    if reason:
        pytest.skip(reason)
    models = tmp_path_factory.mktemp("panel-models")
    srv = comfy_server_factory(
        name="panel",
        env={"PODKIT_URL_ALLOW_HOSTS": "127.0.0.1", "PODKIT_MODELS_DIR": str(models)},
        args=["--front-end-root", str(frontend_root)] if frontend_root else [],
        start=False,
    )
    settings = srv.user_dir / "default" / "comfy.settings.json"
    settings.write_text(json.dumps({"Comfy.TutorialCompleted": True, "PodKit.Panel.RefreshSeconds": 600}))
    srv.start()
    srv.require_podkit()
    srv.models = models
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def files() -> Iterator[FaultServer]:
    with fault_server() as server:
        yield server


@pytest.fixture(scope="module")
def comfy_page(comfy_panel_server: Any, chromium_browser: Any) -> Iterator[tuple[Any, PageLog]]:
    log = PageLog()
    ctx = open_context(chromium_browser, log, width=1400, height=900)
    try:
        page = ctx.new_page()
        watch(page, log)
        page.goto(comfy_panel_server.url + "/")
        page.wait_for_function("() => !!(window.app && window.app.extensionManager)", timeout=120_000)
        yield page, log
    finally:
        ctx.close()
    # every outside request was aborted; ComfyUI's own frontend makes some (1.58 probes Hugging Face
    # for its default workflow's models), so only PodKit's are an error here (tests/browser, with
    # PodKit's code alone on the page, allows none at all)
    ours = [u for u in log.blocked if "podkit" in u.lower()]
    assert not ours, f"PodKit tried to reach the outside: {ours}"


def podkit_errors(log: PageLog) -> list[str]:
    """Console errors and page errors that come from PodKit (ComfyUI's own noise is not ours)."""
    mine = [e for e in log.console_errors if "podkit" in e.lower()]
    return mine + [e for e in log.page_errors if "podkit" in e.lower()]


def shot_dir(tmp_path: Path) -> Path:
    keep = os.environ.get("PODKIT_TEST_SCREENSHOTS")  # a folder to keep screenshots in
    folder = Path(keep) if keep else tmp_path
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def tiny_lora() -> bytes:
    header = json.dumps(
        {"lora_unet_x.lora_down.weight": {"dtype": "F32", "shape": [256], "data_offsets": [0, 1024]}}
    )
    raw = header.encode() + b" " * (-len(header) % 8)
    return len(raw).to_bytes(8, "little") + raw + bytes(1024)


def test_tab_opens_with_every_section(comfy_page: tuple[Any, PageLog], tmp_path: Path) -> None:
    page, log = comfy_page
    page.wait_for_selector(TAB_BUTTON, timeout=30_000)
    page.click(TAB_BUTTON)
    page.wait_for_selector("#podkit-root .podkit-conn[data-state='live']", timeout=30_000)
    assert page.locator("#podkit-root .podkit-section-title").all_inner_texts() == SECTIONS
    page.wait_for_selector("#podkit-sec-cache >> text=Model cache")
    page.wait_for_selector("#podkit-sec-cache >> text=Generation cache")  # on, or off and why
    # the sidebar's width: nothing in the panel is wider than its container
    widths = page.evaluate(
        "() => { const r = document.getElementById('podkit-root'); return [r.scrollWidth, r.clientWidth]; }"
    )
    assert widths[0] <= widths[1] + 1, widths
    page.screenshot(path=str(shot_dir(tmp_path) / "comfy-sidebar.png"))
    assert podkit_errors(log) == []


def test_rendering_again_leaves_one_panel_and_a_reconnect_resyncs(comfy_page: tuple[Any, PageLog]) -> None:
    page, log = comfy_page
    # ComfyUI may call render(el) again with the old content still in el (issue #4372)
    page.evaluate(
        """() => {
          const tab = window.app.extensionManager.getSidebarTabs().find((t) => t.id === 'podkit-panel');
          const el = document.getElementById('podkit-root').parentElement;
          tab.render(el);
          tab.render(el);
        }"""
    )
    assert page.locator("#podkit-root").count() == 1
    page.wait_for_selector("#podkit-root .podkit-conn[data-state='live']")
    # after the socket reconnects, the panel re-reads everything over HTTP (events may have been missed)
    shown = page.evaluate(
        """() => {
          window.app.api.dispatchEvent(new CustomEvent('reconnecting'));
          return document.querySelector('#podkit-root .podkit-conn').dataset.state;
        }"""
    )
    assert shown == "connecting"
    with page.expect_request(lambda r: r.url.split("?")[0].endswith("/podkit/downloads")):
        page.evaluate("() => window.app.api.dispatchEvent(new CustomEvent('reconnected'))")
    page.wait_for_selector("#podkit-root .podkit-conn[data-state='live']")
    assert podkit_errors(log) == []


def test_a_download_event_updates_the_open_tab(
    comfy_page: tuple[Any, PageLog], files: FaultServer, comfy_panel_server: Any
) -> None:
    page, log = comfy_page
    data = tiny_lora()
    files.add("/panel/event_lora.safetensors", data)
    listed: list[str] = []
    page.on(
        "request",
        lambda r: (
            listed.append(r.url)
            if r.url.split("?")[0].endswith("/podkit/downloads") and r.method == "GET"
            else None
        ),
    )
    answer = page.evaluate(
        """async (url) => {
          const r = await window.app.api.fetchApi('/podkit/downloads', {
            method: 'POST', headers: {'Content-Type': 'application/json'},
            body: JSON.stringify({items: [{source: 'url', url, type: 'lora'}]}),
          });
          return {status: r.status, body: await r.json()};
        }""",
        files.url("/panel/event_lora.safetensors"),
    )
    assert answer["status"] == 202, answer
    row = page.locator("#podkit-sec-downloads li.podkit-row", has_text="event_lora.safetensors").first
    row.wait_for(timeout=30_000)
    deadline = time.monotonic() + 60
    while row.get_attribute("data-status") != "done":
        assert row.get_attribute("data-status") not in {"failed", "cancelled"}, row.inner_text()
        assert time.monotonic() < deadline, row.inner_text()
        page.wait_for_timeout(200)
    assert row.locator("[role=progressbar]").get_attribute("aria-valuenow") == "100"
    assert "→ loras/event_lora.safetensors" in row.inner_text()
    assert listed == [], f"the panel polled instead of following events: {listed}"
    # the finished download is toasted (1.27: toast.add with a life; 1.58: toast.success with a duration)
    page.wait_for_selector("text=Download finished", timeout=10_000)
    assert (comfy_panel_server.models / "loras" / "event_lora.safetensors").read_bytes() == data
    assert podkit_errors(log) == []


def test_a_finished_prompt_shows_in_the_monitor_and_the_outbox(
    comfy_page: tuple[Any, PageLog], comfy_panel_server: Any, tmp_path: Path
) -> None:
    from support import workflows as wf

    page, log = comfy_page
    before = page.locator("#podkit-sec-monitor .podkit-stats dd").first.inner_text()
    save = (
        "PodKitSaveToR2",
        {
            "filename_prefix": "panel",
            "key_template": "{prefix}/{prompt_id}_{batch:02d}.png",
            "url_mode": "none",
        },
    )
    prompt = wf.txt2img("tiny_sd15.safetensors", seed=7, steps=1, save_node=save)
    # playwright's sync API keeps an event loop in this thread; the client runs in another
    with ThreadPoolExecutor(1) as pool:
        result = pool.submit(comfy_panel_server.client.run_workflow, prompt, timeout=300).result()
    assert result.ok, result.describe()
    # the podkit.generation event reaches the open tab: the last generation is described
    page.wait_for_selector("#podkit-sec-monitor >> text=/Last: .*64×64.*1 steps/", timeout=30_000)
    page.wait_for_selector("#podkit-sec-monitor svg rect.podkit-chart-bar")
    assert page.locator("#podkit-sec-monitor .podkit-stats dd").first.inner_text() != before
    page.locator("#podkit-sec-monitor").screenshot(path=str(shot_dir(tmp_path) / "comfy-monitor.png"))
    # the Save to R2 node's upload went through the outbox: podkit.upload events count it and toast it
    page.wait_for_selector("#podkit-sec-outbox >> text=/done 1/", timeout=30_000)
    page.wait_for_selector(f"text=outputs/panel/{result.prompt_id}_00.png", timeout=10_000)
    assert podkit_errors(log) == []
