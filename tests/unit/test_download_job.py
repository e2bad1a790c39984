"""The download job record: frozen, its wire and stored forms, and the pure item helpers."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest
import yaml

from podkit.core.download_job import (
    ACTIVE,
    FINISHED,
    STATUSES,
    DownloadJob,
    DownloadStatus,
    FileState,
    describe_source,
    item_from_json,
    item_to_json,
    request_key,
)
from podkit.core.download_request import DownloadItem


def job(**changes: object) -> DownloadJob:
    item = DownloadItem(source="url", url="https://e.com/m.safetensors?token=s3cret", type="lora")
    return dataclasses.replace(DownloadJob(id="j", key=request_key(item), item=item, created=1.0), **changes)  # type: ignore[arg-type]


def test_status_vocabulary_keeps_the_wire_values() -> None:
    assert STATUSES == ("queued", "running", "verifying", "paused", "done", "failed", "cancelled")
    assert ACTIVE == {"queued", "running", "verifying"} and FINISHED == {"done", "failed", "cancelled"}
    assert DownloadStatus.DONE == "done" and json.dumps(DownloadStatus.DONE) == '"done"'


def test_records_are_frozen_and_change_by_replacement() -> None:
    j = job(files=(FileState("a"), FileState("b", bytes_total=5)))
    with pytest.raises(dataclasses.FrozenInstanceError):
        j.status = "done"  # type: ignore[misc]
    k = j.with_file(1, bytes_done=3)
    assert (j.files[1].bytes_done, k.files[1].bytes_done) == (0, 3) and k.files[0] is j.files[0]
    assert k.bytes_done == 3 and k.bytes_total is None  # file "a" has no known size
    assert k.with_file(0, bytes_total=2).bytes_total == 7


def test_wire_has_no_secret_and_state_restores_the_record() -> None:
    j = job(status="paused", files=(FileState("m.safetensors", bytes_done=4, bytes_total=9),),
            keys=("k1",), forced_at=5.0, speed=12.345, eta=3.21)  # fmt: skip
    wire = j.to_wire()
    assert "s3cret" not in json.dumps(wire) and wire["source"] == "https://e.com/m.safetensors?token=REDACTED"
    assert (wire["speed"], wire["eta"], wire["bytes_done"], wire["name"]) == (12.3, 3.2, 4, "m.safetensors")
    state = json.loads(json.dumps(j.state()))
    back = dataclasses.replace(j, files=(), keys=(), forced_at=0.0).restored(state)
    assert back == dataclasses.replace(j, speed=12.345, eta=3.21)


def test_summarised_takes_type_dest_and_hash_from_the_files() -> None:
    one = job(files=(FileState("a", dest="loras/a", sha256="h", model_type="lora"),)).summarised()
    assert (one.dest, one.sha256, one.model_type) == ("loras/a", "h", "lora")
    many = job(files=(FileState("a", dest="vae/x/a", model_type="vae"),
                      FileState("b", dest="loras/x/b", model_type="lora"))).summarised()  # fmt: skip
    assert (many.dest, many.sha256, many.model_type) == (None, None, "lora")  # mixed: the item's type
    same = job(files=(FileState("a", dest="loras/x/a", model_type="lora"),
                      FileState("b", dest="loras/x/b", model_type="lora"))).summarised()  # fmt: skip
    assert (same.dest, same.model_type) == ("loras/x", "lora")


def test_item_helpers() -> None:
    hf = DownloadItem(source="hf", repo_id="o/r", filename="w.safetensors", revision="main",
                      allow_patterns=("*.json",))  # fmt: skip
    assert item_from_json(item_to_json(hf)) == hf
    assert describe_source(hf) == "hf://o/r@main/w.safetensors"
    assert describe_source(DownloadItem(source="civitai", version_id=7)) == "civitai:7"
    assert describe_source(DownloadItem(source="bucket", uri="r2://b/k")) == "r2://b/k"
    assert request_key(hf) == request_key(item_from_json(item_to_json(hf))) != request_key(job().item)


def test_route_contract_and_panel_share_the_vocabulary() -> None:
    """The statuses are declared once here; the OpenAPI document and the panel must not drift."""
    root = Path(__file__).resolve().parents[2]
    spec = yaml.safe_load((root / "server_routes" / "openapi" / "downloads.yaml").read_text())
    assert tuple(spec["components"]["schemas"]["DownloadJob"]["properties"]["status"]["enum"]) == STATUSES
    js = (root / "js" / "panel" / "state.js").read_text()

    def js_set(name: str) -> set[str]:
        m = re.search(rf"export const {name} = new Set\(\[([^\]]*)\]\)", js)
        assert m, name
        return set(re.findall(r'"([^"]+)"', m.group(1)))

    assert js_set("DOWNLOAD_ACTIVE") == ACTIVE and js_set("TERMINAL") == FINISHED
