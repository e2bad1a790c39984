"""PodKit's nodes inside a real ComfyUI, against a real S3 server (Ceph radosgw), with tiny models."""

from __future__ import annotations

import json
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from support import workflows as wf
from support.comfy_results import decode, pixels_of, run_ok
from support.make_tiny_models import CHECKPOINT, LORA_A, LORA_B, LORA_NOMATCH
from support.workflows import podkit_lora

SECRET_MARK = "podkit-secret-marker"


@pytest.fixture(scope="module")
def buckets(s3: Any) -> tuple[str, str]:
    tag = uuid.uuid4().hex[:8]
    names = (f"loras-{tag}", f"outputs-{tag}")
    for b in names:
        s3.create_bucket(Bucket=b)
    return names


@pytest.fixture(scope="module")
def podkit_comfy(comfy_server_factory, s3_server: Any, buckets: tuple[str, str]):  # type: ignore[no-untyped-def]
    env = {
        "PODKIT_S3_ENDPOINT": s3_server.endpoint_url,
        "PODKIT_S3_REGION": s3_server.region,
        "R2_ACCESS_KEY_ID": s3_server.access_key,
        "R2_SECRET_ACCESS_KEY": s3_server.secret_key,
        "R2_LORA_BUCKET": buckets[0],
        "R2_OUTPUT_BUCKET": buckets[1],
        "PODKIT_ETAG_TTL": "0",
        "HF_TOKEN": SECRET_MARK,
        "PODKIT_VOLUME_DIR": "",
    }
    server = comfy_server_factory(env=env, name="podkit")
    server.require_podkit()
    yield server
    server.stop()


def test_nodes_registered_without_secrets(podkit_comfy: Any, s3_server: Any) -> None:
    info = podkit_comfy.client.object_info()
    for node_id in ("PodKitR2LoraLoader", "PodKitR2LoraLoaderModelOnly", "PodKitSaveToR2"):
        assert node_id in info, f"{node_id} missing from /object_info"
    text = json.dumps(info) + json.dumps(podkit_comfy.client.get_json("/podkit/status"))
    for secret in (s3_server.secret_key, s3_server.access_key, SECRET_MARK):
        assert secret not in text
    assert SECRET_MARK not in podkit_comfy.log_text(current=True)


def test_lora_from_bucket_equals_core_and_follows_the_bucket(
    podkit_comfy: Any, s3: Any, buckets: tuple[str, str], tiny_models: Path
) -> None:
    key = "styles/tiny.safetensors"
    s3.upload_file(str(tiny_models / "loras" / LORA_A), buckets[0], key)
    base = pixels_of(podkit_comfy, run_ok(podkit_comfy, wf.txt2img(CHECKPOINT, seed=7)))
    core_a = pixels_of(podkit_comfy, run_ok(podkit_comfy, wf.txt2img(CHECKPOINT, seed=7, lora=LORA_A)))
    ours = run_ok(podkit_comfy, wf.txt2img(CHECKPOINT, seed=7, lora_node=podkit_lora(key)))
    ours_a = pixels_of(podkit_comfy, ours)
    assert np.abs(core_a - base).mean() > 1.0, "the test LoRA must change the image"
    assert np.array_equal(ours_a, core_a), "PodKit must apply the LoRA exactly like core LoraLoader"

    stats = podkit_comfy.client.get_json("/podkit/cache/stats")["model_cache"]
    assert stats["entries"] == 1 and stats["misses"] == 1

    # Retrained: a new object under the same key. The next prompt must use it without a restart.
    s3.upload_file(str(tiny_models / "loras" / LORA_B), buckets[0], key)
    core_b = pixels_of(podkit_comfy, run_ok(podkit_comfy, wf.txt2img(CHECKPOINT, seed=7, lora=LORA_B)))
    again = run_ok(podkit_comfy, wf.txt2img(CHECKPOINT, seed=7, lora_node=podkit_lora(key)))
    assert wf.Ids.LORA not in again.cached_nodes()
    assert np.array_equal(pixels_of(podkit_comfy, again), core_b)
    assert not np.array_equal(core_b, core_a)

    # Unchanged object: ComfyUI's cache serves the loader without running it.
    cached = run_ok(podkit_comfy, wf.txt2img(CHECKPOINT, seed=7, lora_node=podkit_lora(key)))
    assert wf.Ids.LORA in cached.cached_nodes()


def test_lora_errors_name_the_lora(
    podkit_comfy: Any, s3: Any, buckets: tuple[str, str], tiny_models: Path
) -> None:
    missing = podkit_comfy.client.run_workflow(
        wf.txt2img(CHECKPOINT, seed=1, lora_node=podkit_lora("nope/missing.safetensors")), timeout=300
    )
    assert missing.status == "error"
    assert "nope/missing.safetensors" in missing.error["exception_message"]

    s3.upload_file(str(tiny_models / "loras" / LORA_NOMATCH), buckets[0], "nomatch.safetensors")
    nomatch = podkit_comfy.client.run_workflow(
        wf.txt2img(CHECKPOINT, seed=1, lora_node=podkit_lora("nomatch.safetensors")), timeout=300
    )
    assert nomatch.status == "error" and "none of its" in nomatch.error["exception_message"]

    s3.put_object(
        Bucket=buckets[0], Key="broken.safetensors", Body=b"\x10\x00\x00\x00\x00\x00\x00\x00{not json"
    )
    broken = podkit_comfy.client.run_workflow(
        wf.txt2img(CHECKPOINT, seed=1, lora_node=podkit_lora("broken.safetensors")), timeout=300
    )
    assert broken.status == "error" and "broken.safetensors" in broken.error["exception_message"]

    bad = podkit_comfy.client.run_workflow(
        wf.txt2img(CHECKPOINT, seed=1, lora_node=podkit_lora("../escape.safetensors")), timeout=60
    )
    assert bad.status == "rejected" and wf.Ids.LORA in bad.node_errors


def wait_for_objects(s3: Any, bucket: str, n: int, prefix: str = "", timeout: float = 120) -> list[str]:
    deadline = time.monotonic() + timeout
    keys: list[str] = []
    while time.monotonic() < deadline:
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])]
        if len(keys) >= n:
            return sorted(keys)
        time.sleep(0.5)
    raise AssertionError(f"only {len(keys)} of {n} objects reached {bucket}")


def save_node(prefix: str) -> tuple[str, dict[str, Any]]:
    return ("PodKitSaveToR2", {"filename_prefix": prefix, "key_template": "{prefix}/{prompt_id}_{batch:02d}_{hash:.12}.png",
                               "url_mode": "auto"})  # fmt: skip


def test_save_to_r2_puts_the_png_and_reports_urls(
    podkit_comfy: Any, s3: Any, buckets: tuple[str, str]
) -> None:
    workflow = {"nodes": [{"id": 8, "type": "PodKitSaveToR2"}], "note": "ui graph"}
    prefix = f"runs/save-{uuid.uuid4().hex[:6]}"  # the buckets are shared by both ComfyUI trees' runs
    prompt = wf.txt2img(CHECKPOINT, seed=3, batch_size=2, save_node=save_node(prefix))
    result = run_ok(podkit_comfy, prompt, extra_pnginfo={"workflow": workflow})
    uploads = result.outputs[wf.Ids.SAVE]["podkit_uploads"]
    assert len(uploads) == 2 and len(result.outputs[wf.Ids.SAVE]["images"]) == 2
    for i, up in enumerate(uploads):
        assert up["bucket"] == buckets[1] and up["key"].startswith(f"{prefix}/{result.prompt_id}_{i:02d}_")
    keys = wait_for_objects(s3, buckets[1], 2, prefix=prefix + "/")
    assert keys == sorted(u["key"] for u in uploads)
    body = s3.get_object(Bucket=buckets[1], Key=uploads[0]["key"])["Body"].read()
    pixels, text = decode(body)
    assert json.loads(text["prompt"])[wf.Ids.SAVE]["class_type"] == "PodKitSaveToR2"
    assert json.loads(text["workflow"]) == workflow
    with urllib.request.urlopen(uploads[0]["url"], timeout=10) as r:  # noqa: S310 - presigned, loopback
        assert r.read() == body
    preview = result.download(result.images(wf.Ids.SAVE)[0])
    assert preview == body, "the preview is the uploaded PNG itself"


def test_s3_outage_and_restart_lose_nothing(
    podkit_comfy: Any, s3_gateway: Any, s3: Any, buckets: tuple[str, str]
) -> None:
    prefix = f"outage-{uuid.uuid4().hex[:6]}"
    before = len(s3.list_objects_v2(Bucket=buckets[1], Prefix=prefix).get("Contents", []))
    assert before == 0
    s3_gateway.stop_gateway()
    try:
        expected: list[str] = []
        for seed in (11, 12, 13):
            result = run_ok(podkit_comfy, wf.txt2img(CHECKPOINT, seed=seed, save_node=save_node(prefix)))
            expected += [u["key"] for u in result.outputs[wf.Ids.SAVE]["podkit_uploads"]]
        outbox = podkit_comfy.client.get_json("/podkit/outbox?status=pending,uploading")
        assert len([i for i in outbox["items"] if i["key"].startswith(prefix)]) == 3
        podkit_comfy.stop()  # the pod goes down with three images spooled
    finally:
        s3_gateway.start_gateway()
    podkit_comfy.start()
    keys = wait_for_objects(s3, buckets[1], 3, prefix=prefix, timeout=300)
    assert sorted(keys) == sorted(expected), "every image arrives exactly once"
    counts = podkit_comfy.client.get_json("/podkit/outbox")["counts"]
    assert counts.get("pending", 0) == 0 and counts.get("failed", 0) == 0
