"""Downloads through the panel: the form, live progress to 100 %, the models summary, cancel."""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path
from typing import Any

import pytest
from browser_support import shot


def tiny_safetensors(n_floats: int) -> bytes:
    """A valid safetensors file holding one F32 LoRA-like tensor of ``n_floats`` values."""
    name = "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight"
    header = json.dumps(
        {name: {"dtype": "F32", "shape": [n_floats], "data_offsets": [0, 4 * n_floats]}}
    ).encode()
    header += b" " * (-len(header) % 8)
    data = bytes(range(256)) * (4 * n_floats // 256)
    return struct.pack("<Q", len(header)) + header + data


@pytest.fixture
def panel(open_panel: Any, control_plane: Any) -> Any:
    if control_plane.get_json("/podkit/status") and _missing(control_plane, "/podkit/downloads"):
        pytest.skip("this checkout has no /podkit/downloads route yet")
    return open_panel()


def _missing(plane: Any, path: str) -> bool:
    import urllib.error

    try:
        plane.get_json(path)
    except urllib.error.HTTPError as e:
        return e.code == 404
    return False


def add_url_download(page: Any, url: str, model_type: str = "lora") -> None:
    form = page.locator("form[aria-label='Add a download']")
    form.get_by_label("Source").select_option("url")
    form.get_by_label("URL", exact=True).fill(url)
    form.locator("summary:has-text('Options')").click()
    form.get_by_label("Model type").select_option(model_type)
    form.get_by_role("button", name="Add download").click()
    page.wait_for_selector("#podkit-sec-downloads >> text=Queued 1 download.")


def progress_of(row: Any) -> int | None:
    value = row.locator("[role=progressbar]").get_attribute("aria-valuenow")
    return None if value is None else int(value)


def test_download_from_the_form_reaches_100_percent(
    panel: Any, control_plane: Any, file_server: Any, screenshots: Path, page_clean: Any
) -> None:
    page = panel
    # the engine reads in chunks of a few MiB: 64 MiB at 2 × 8 MiB/s shows progress for seconds
    data = tiny_safetensors(16 * 1024 * 1024)
    file_server.add("/models/style.safetensors", data)
    file_server.throttle_bps = 8 * 1024 * 1024
    try:
        page.wait_for_selector("#podkit-sec-cache >> text=No finished downloads listed.")
        add_url_download(page, file_server.url("/models/style.safetensors"))
        row = page.locator("#podkit-sec-downloads li.podkit-row", has_text="style.safetensors").first
        row.wait_for()
        seen: set[int] = set()
        deadline = time.monotonic() + 60
        while (status := row.get_attribute("data-status")) != "done":  # one read: it may finish meanwhile
            assert status in {"queued", "running", "verifying"}, row.inner_text()
            value = progress_of(row)
            if value is not None and 0 < value < 100 and not any(0 < v < 100 for v in seen):
                shot(page, screenshots, "download-running")
            if value is not None:
                seen.add(value)
            assert time.monotonic() < deadline, f"download did not finish: {row.inner_text()}"
            page.wait_for_timeout(150)
    finally:
        file_server.throttle_bps = None
    assert any(0 < v < 100 for v in seen), f"no intermediate progress was shown: {sorted(seen)}"
    assert progress_of(row) == 100
    assert "100 %" in row.inner_text()
    assert "→ loras/style.safetensors" in row.inner_text()
    # the finished download moved to the history, was toasted, and the models summary counts it
    page.wait_for_selector("ul[aria-label='Download history'] >> text=style.safetensors")
    page.wait_for_selector(".podkit-toasts >> text=Download finished")
    models = page.locator("#podkit-sec-cache .podkit-models")
    models.locator("text=lora").wait_for()
    assert "1 file, 64.0 MiB" in models.inner_text()
    assert (control_plane.root / "models" / "loras" / "style.safetensors").read_bytes() == data
    shot(page, screenshots, "download-done")
    page_clean()


def test_pause_resume_and_cancel_a_download(
    panel: Any, file_server: Any, screenshots: Path, page_clean: Any
) -> None:
    page = panel
    file_server.add("/models/slow.safetensors", tiny_safetensors(16 * 1024 * 1024))
    file_server.throttle_bps = 1024 * 1024  # 64 MiB at 2 × 1 MiB/s: half a minute, long enough to act on
    try:
        add_url_download(page, file_server.url("/models/slow.safetensors"))
        row = page.locator("#podkit-sec-downloads li.podkit-row", has_text="slow.safetensors").first
        row.wait_for()
        page.wait_for_function(
            "el => el.dataset.status === 'running' && Number(el.querySelector('[role=progressbar]')"
            ".getAttribute('aria-valuenow')) > 0",
            arg=row.element_handle(),
            timeout=30_000,
        )
        row.get_by_role("button", name="Pause download slow.safetensors").click()
        page.wait_for_function(
            "el => el.dataset.status === 'paused'", arg=row.element_handle(), timeout=30_000
        )
        assert "paused" in page.locator("#podkit-sec-downloads .podkit-badge").inner_text()
        shot(page, screenshots, "download-paused")
        row.get_by_role("button", name="Resume download slow.safetensors").click()
        page.wait_for_function(
            "el => ['queued', 'running'].includes(el.dataset.status)",
            arg=row.element_handle(),
            timeout=30_000,
        )
        row.get_by_role("button", name="Cancel download slow.safetensors").click()
        # a cancelled download moves to the history
        history = page.locator(
            "ul[aria-label='Download history'] li[data-status='cancelled']", has_text="slow"
        )
        history.wait_for(timeout=30_000)
    finally:
        file_server.throttle_bps = None
    assert page.locator("ul[aria-label='Active downloads'] li", has_text="slow.safetensors").count() == 0
    history.get_by_role("button", name="Remove download slow.safetensors").click()
    history.wait_for(state="detached")
    page_clean()


def test_a_pasted_manifest_queues_every_item(panel: Any, file_server: Any, page_clean: Any) -> None:
    page = panel
    for name in ("m_one", "m_two"):
        file_server.add(f"/manifest/{name}.safetensors", tiny_safetensors(1024))
    manifest = "\n".join(
        ["loras:"] + [f"  - url: {file_server.url(f'/manifest/{n}.safetensors')}" for n in ("m_one", "m_two")]
    )
    form = page.locator("form[aria-label='Add a download']")
    form.get_by_label("Source").select_option("manifest")
    assert form.get_by_label("URL", exact=True).is_hidden()
    form.get_by_role("button", name="Add download").click()
    assert "Paste a manifest" in form.locator(".podkit-field-error:visible").inner_text()
    form.get_by_label("Manifest (YAML or JSON)").fill(manifest)
    form.get_by_role("button", name="Add download").click()
    page.wait_for_selector("#podkit-sec-downloads >> text=Queued 2 downloads.")
    history = page.locator("ul[aria-label='Download history']")
    for name in ("m_one", "m_two"):
        history.locator("li[data-status='done']", has_text=f"{name}.safetensors").wait_for(timeout=60_000)
        assert f"→ loras/{name}.safetensors" in history.inner_text()
    # a manifest the server refuses shows the server's message
    form.get_by_label("Manifest (YAML or JSON)").fill(
        "loras:\n  - url: ftp://example.invalid/x.safetensors\n"
    )
    form.get_by_role("button", name="Add download").click()
    status = form.locator(".podkit-status-line.podkit-error")
    status.wait_for()
    assert "url" in status.inner_text().lower()
    page_clean("400 /podkit/downloads")
