"""The standalone panel in a real browser: layout at the sidebar's width, labels and keyboard
reachability, sections whose routes are missing, the eviction form and the API token field."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from browser_support import shot

SECTIONS = ["Downloads", "Models & cache", "Training", "Monitor", "Outbox"]

# the accessible name of every visible form control, or a description of the unnamed ones
UNLABELLED_JS = """() => {
  const out = [];
  const visible = (el) => !!(el.offsetWidth || el.offsetHeight || el.getClientRects().length);
  for (const el of document.querySelectorAll('#podkit-root input, #podkit-root select, #podkit-root textarea')) {
    if (!visible(el)) continue;
    const byFor = el.id && document.querySelector(`label[for="${el.id}"]`);
    const name = (byFor && byFor.textContent.trim()) || el.getAttribute('aria-label') || '';
    if (!name) out.push(el.outerHTML.slice(0, 120));
  }
  for (const el of document.querySelectorAll('#podkit-root button')) {
    if (!visible(el)) continue;
    if (!(el.getAttribute('aria-label') || el.textContent.trim())) out.push(el.outerHTML.slice(0, 120));
  }
  return out;
}"""

FOCUS_JS = """() => {
  const el = document.activeElement;
  if (!el || el === document.body) return null;
  const label = el.id && document.querySelector(`label[for="${el.id}"]`);
  return (el.getAttribute('aria-label') || (label && label.textContent) || el.textContent || el.tagName).trim();
}"""


def test_panel_renders_every_section_at_sidebar_width(
    open_panel: Any, page_clean: Any, screenshots: Path
) -> None:
    for width in (360, 450, 1100):
        page = open_panel(width=width)
        titles = page.locator("#podkit-root .podkit-section-title").all_inner_texts()
        assert titles == SECTIONS
        page.wait_for_selector("#podkit-sec-cache >> text=Model cache")
        # nothing sticks out sideways at this width (the sidebar would scroll horizontally)
        overflow = page.evaluate("() => document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"{overflow}px horizontal overflow at {width}px"
        shot(page, screenshots, f"panel-{width}")
    page_clean()


def test_controls_are_labelled_and_reachable_by_keyboard(open_panel: Any) -> None:
    page = open_panel()
    wanted = [
        "Source",
        "Add download",
        "Shrink the model cache to",
        "Show eviction plan",
        "Refresh list",
        "Refresh report",
        "Outbox",
    ]
    training = page.locator("#podkit-sec-training summary:has-text('Launch a training')")
    if training.is_visible():  # the training routes are on this server
        training.click()
        wanted += ["LoRA name", "Dataset location", "Start training"]
    assert page.evaluate(UNLABELLED_JS) == []
    seen: list[str] = []
    page.locator("body").focus()
    for _ in range(80):
        page.keyboard.press("Tab")
        name = page.evaluate(FOCUS_JS)
        if name:
            seen.append(name)
    for name in wanted:
        assert any(name in s for s in seen), f"{name!r} is not reachable with Tab: {seen}"
    # a collapsed section opens from the keyboard
    page.locator("#podkit-sec-monitor summary").focus()
    page.keyboard.press("Enter")
    assert page.evaluate("() => document.getElementById('podkit-sec-monitor').open") is False
    page.keyboard.press("Enter")
    assert page.evaluate("() => document.getElementById('podkit-sec-monitor').open") is True


def test_sections_without_routes_say_so_and_the_rest_works(open_panel: Any, screenshots: Path) -> None:
    page = open_panel()
    missing = json.dumps({"error": "not_found", "message": "no such route"})
    page.route(
        "**/podkit/training/**",
        lambda r: r.fulfill(status=404, body=missing, content_type="application/json"),
    )
    page.route(
        "**/podkit/metrics/**", lambda r: r.fulfill(status=404, body=missing, content_type="application/json")
    )
    page.click("button[aria-label='Refresh the PodKit panel']")
    page.wait_for_selector("#podkit-sec-training >> text=Training: not available on this server.")
    page.wait_for_selector("#podkit-sec-monitor >> text=Monitor: not available on this server.")
    assert page.locator("#podkit-sec-training form").is_hidden()
    # the other sections still show their data
    page.wait_for_selector("#podkit-sec-cache >> text=Entries")
    assert page.locator("#podkit-sec-downloads form").is_visible()
    shot(page, screenshots, "not-available")


def test_eviction_form_checks_the_size_and_shows_a_plan(open_panel: Any) -> None:
    page = open_panel()
    field = page.get_by_label("Shrink the model cache to")
    field.fill("lots")
    page.click("text=Show eviction plan")
    error = page.locator("#podkit-sec-cache .podkit-field-error")
    assert "Enter a size such as 50G" in error.inner_text()
    assert field.get_attribute("aria-invalid") == "true"
    field.fill("50G")
    page.click("text=Show eviction plan")
    page.wait_for_selector(
        "#podkit-sec-cache >> text=Nothing to remove: the cache is already under that size."
    )
    assert error.is_hidden()


def test_api_token_is_kept_in_local_storage_and_sent(open_panel: Any) -> None:
    page = open_panel()
    page.get_by_role("textbox", name="API token").fill("s3cr3t-token")
    page.click("form.podkit-token button")
    page.wait_for_selector("text=saved in this browser")
    assert page.evaluate("() => localStorage.getItem('podkit.apiToken')") == "s3cr3t-token"
    sent: list[str | None] = []
    page.on("request", lambda r: sent.append(r.headers.get("authorization")) if "/podkit/" in r.url else None)
    page.reload()
    page.wait_for_selector("#podkit-root .podkit-conn[data-state='live']")
    assert page.get_by_role("textbox", name="API token").input_value() == "s3cr3t-token"
    assert sent and all(h == "Bearer s3cr3t-token" for h in sent)
    # the token never lands in the page's visible text
    assert "s3cr3t-token" not in page.locator("body").inner_text()


def test_timers_stop_once_the_panel_leaves_the_page(open_panel: Any) -> None:
    page = open_panel()
    # the page re-syncs on its own every 5 s
    page.wait_for_event("request", lambda r: "/podkit/" in r.url, timeout=20_000)
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url) if "/podkit/" in r.url else None)
    page.evaluate("() => document.getElementById('podkit-root').remove()")
    page.wait_for_timeout(300)  # a request already in flight may still finish
    requests.clear()
    page.wait_for_timeout(6000)
    assert requests == [], f"a detached panel kept polling: {requests}"


def test_cache_filled_by_another_process_shows_its_plan_and_purges(
    open_panel: Any, control_plane: Any, screenshots: Path, page_clean: Any
) -> None:
    from podkit.core.model_cache import ModelCache
    from podkit.core.model_cache_types import CacheKey

    # another process on the volume (a ComfyUI worker loading a LoRA) puts a file into the shared cache
    cache = ModelCache(control_plane.root / "cache", max_bytes=2**40)
    data = b"\x00" * (3 * 2**20)
    key = CacheKey.for_source("r2://loras/purge_me.safetensors", "etag-1", ".safetensors")
    path = cache.ensure(key, lambda tmp: tmp.write_bytes(data) and None, size=len(data))
    assert path.is_file()
    page = open_panel()
    stats = page.locator("#podkit-sec-cache .podkit-cache-block").first
    stats.locator("dd", has_text="3.00 MiB of 100 GiB").wait_for()
    assert "Entries1" in stats.inner_text().replace("\n", "")
    page.get_by_label("Shrink the model cache to").fill("0")
    page.click("text=Show eviction plan")
    plan = page.locator("ul[aria-label='Entries the purge would remove']")
    plan.locator("text=r2://loras/purge_me.safetensors").wait_for()
    assert "Would remove 1 entry, freeing 3.00 MiB" in page.locator("#podkit-sec-cache").inner_text()
    shot(page, screenshots, "cache-plan")
    page.get_by_role("button", name="Purge 1 entry (3.00 MiB)").click()
    page.wait_for_selector("#podkit-sec-cache >> text=Removed 1 entry, freed 3.00 MiB.")
    stats.locator("dd", has_text="0 B of 100 GiB").wait_for()
    assert not path.exists()
    page_clean()
