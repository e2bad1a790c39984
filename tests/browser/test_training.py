"""Training through the panel: the launch form's messages, a run of the ai-toolkit stand-in with
live progress, its loss chart and log, the LoRA it uploads, and a cancelled run."""

from __future__ import annotations

import time
import urllib.error
from pathlib import Path
from typing import Any

import pytest
from browser_support import shot


@pytest.fixture
def panel(open_panel: Any, control_plane: Any) -> Any:
    try:
        control_plane.get_json("/podkit/training/jobs")
    except urllib.error.HTTPError as e:
        if e.code == 404:
            pytest.skip("this checkout has no /podkit/training routes yet")
        raise
    page = open_panel()
    page.click("#podkit-sec-training summary:has-text('Launch a training')")
    return page


@pytest.fixture
def dataset(control_plane: Any) -> Path:
    """Four tiny captioned images in a folder the training service may read (below the models root)."""
    from PIL import Image

    folder = control_plane.root / "models" / "datasets" / "squares"
    folder.mkdir(parents=True, exist_ok=True)
    for i, colour in enumerate(["red", "green", "blue", "yellow"]):
        Image.new("RGB", (64, 64), colour).save(folder / f"img{i}.png")
        (folder / f"img{i}.txt").write_text(f"a {colour} square")
    return folder


def fill_training(page: Any, name: str, folder: Path, steps: int) -> Any:
    form = page.locator("form[aria-label='Launch a training']")
    form.get_by_label("LoRA name", exact=True).fill(name)
    form.get_by_label("Dataset from").select_option("path")
    form.get_by_label("Dataset location").fill(str(folder))
    form.get_by_label("Base model", exact=True).select_option("sdxl")
    form.get_by_label("Steps", exact=True).fill(str(steps))
    return form


def job_row(page: Any, name: str) -> Any:
    return page.locator("ul[aria-label='Training jobs'] > li", has_text=name).first


def wait_status(row: Any, wanted: set[str], timeout: float = 90) -> str:
    deadline = time.monotonic() + timeout
    while (status := row.get_attribute("data-status")) not in wanted:
        assert time.monotonic() < deadline, f"still {status!r}: {row.inner_text()}"
        row.page.wait_for_timeout(200)
    return status


def test_launch_form_shows_a_message_per_field(panel: Any, page_clean: Any) -> None:
    page = panel
    form = page.locator("form[aria-label='Launch a training']")
    form.get_by_label("LoRA name", exact=True).fill("bad name!")
    form.get_by_label("Dataset from").select_option("path")
    form.get_by_label("Dataset location").fill("relative/folder")
    form.get_by_label("Steps", exact=True).fill("0")
    form.get_by_role("button", name="Start training").click()
    errors = form.locator(".podkit-field-error:visible").all_inner_texts()
    assert any("names the LoRA file" in e for e in errors), errors
    assert any("absolute folder path" in e for e in errors), errors
    assert any("Steps must be a whole number" in e for e in errors), errors
    assert form.get_by_label("LoRA name", exact=True).evaluate("el => el === document.activeElement")
    assert "Check the highlighted fields." in form.inner_text()
    # the server's own refusal is shown too (a folder outside the allowed roots)
    form.get_by_label("LoRA name", exact=True).fill("outside")
    form.get_by_label("Dataset location").fill("/etc")
    form.get_by_label("Steps", exact=True).fill("10")
    form.get_by_role("button", name="Start training").click()
    status = form.locator(".podkit-status-line")
    page.wait_for_function(
        "el => el.classList.contains('podkit-error') && el.textContent.length > 0",
        arg=status.element_handle(),
    )
    assert "dataset" in status.inner_text().lower()
    page_clean("403 /podkit/training/jobs")


def test_training_runs_to_done_with_progress_loss_and_log(
    panel: Any, dataset: Path, screenshots: Path, page_clean: Any
) -> None:
    page = panel
    fill_training(page, "squares_v1", dataset, steps=40).get_by_role("button", name="Start training").click()
    page.wait_for_selector("#podkit-sec-training >> text=Training squares_v1 queued.")
    row = job_row(page, "squares_v1")
    row.wait_for()
    wait_status(row, {"running", "uploading", "done"})
    row.get_by_role("button", name="Details of training squares_v1").click()
    seen: set[int] = set()
    deadline = time.monotonic() + 90
    while row.get_attribute("data-status") != "done":
        assert row.get_attribute("data-status") not in {"failed", "cancelled"}, row.inner_text()
        value = row.locator("[role=progressbar]").get_attribute("aria-valuenow")
        if value is not None and 0 < int(value) < 100 and not any(0 < v < 100 for v in seen):
            page.wait_for_selector(".podkit-job-details path.podkit-chart-line")
            shot(page, screenshots, "training-running")
        if value is not None:
            seen.add(int(value))
        assert time.monotonic() < deadline, row.inner_text()
        page.wait_for_timeout(200)
    assert any(0 < v < 100 for v in seen), f"no intermediate progress shown: {sorted(seen)}"
    text = row.inner_text()
    assert "step 40 of 40" in text
    assert "4 images" in text
    assert "r2://loras/" in text or "loras/" in text
    # the details: a loss curve with points and the trainer's log
    page.wait_for_function(
        "() => /step/.test(document.querySelector('.podkit-job-details svg')?.getAttribute('aria-label') || '')"
    )
    assert row.locator(".podkit-log").inner_text().strip() not in ("", "(no log yet)")
    # finished: toasted, and the uploaded LoRA shows in the bucket list
    page.wait_for_selector(".podkit-toasts >> text=Training finished")
    page.wait_for_selector("ul[aria-label='LoRAs in the bucket'] >> text=squares_v1")
    shot(page, screenshots, "training-done")
    page_clean()


def test_cancel_a_running_training(panel: Any, dataset: Path, screenshots: Path, page_clean: Any) -> None:
    page = panel
    fill_training(page, "squares_long", dataset, steps=5000).get_by_role(
        "button", name="Start training"
    ).click()
    row = job_row(page, "squares_long")
    row.wait_for()
    wait_status(row, {"running"})
    row.get_by_role("button", name="Cancel training squares_long").click()
    assert wait_status(row, {"cancelled", "failed", "done"}) == "cancelled"
    assert row.get_by_role("button", name="Remove training squares_long").is_visible()
    shot(page, screenshots, "training-cancelled")
    row.get_by_role("button", name="Remove training squares_long").click()
    row.wait_for(state="detached")
    page_clean()
