"""End to end in a real ComfyUI: a training job's LoRA is loaded by PodKitR2LoraLoader in a workflow.

The trainer is the ai-toolkit stand-in (tests/support/fake_ai_toolkit), told to shape its LoRA like
the tiny test model's (``FAKE_AITK_LIKE``) so the trained file really patches the tiny checkpoint.
The job goes through ComfyUI's own server: ``POST /api/podkit/training/jobs``, the trainer
subprocess, the upload to a real S3 server (radosgw), the LoRA listing refresh, then a prompt.
"""

from __future__ import annotations

import sys
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from support import workflows as wf
from support.comfy_results import pixels_of, run_ok
from support.make_tiny_models import CHECKPOINT, LORA_A
from support.workflows import podkit_lora

FAKE_AI_TOOLKIT = Path(__file__).resolve().parents[1] / "support" / "fake_ai_toolkit"
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 32


@pytest.fixture(scope="module")
def training_comfy(comfy_server_factory, s3_server: Any, s3: Any, tiny_models: Path, tmp_path_factory):  # type: ignore[no-untyped-def]
    bucket = f"loras-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    volume = tmp_path_factory.mktemp("volume")
    dataset = volume / "datasets" / "cats"
    dataset.mkdir(parents=True)
    for i in range(3):
        (dataset / f"cat{i}.png").write_bytes(PNG)
        (dataset / f"cat{i}.txt").write_text("a photo of a tiny test cat")
    core_loras = tmp_path_factory.mktemp("core_loras")
    env = {
        "PODKIT_S3_ENDPOINT": s3_server.endpoint_url,
        "PODKIT_S3_REGION": s3_server.region,
        "R2_ACCESS_KEY_ID": s3_server.access_key,
        "R2_SECRET_ACCESS_KEY": s3_server.secret_key,
        "R2_LORA_BUCKET": bucket,
        "R2_OUTPUT_BUCKET": bucket,
        "PODKIT_ETAG_TTL": "0",
        "PODKIT_VOLUME_DIR": str(volume),
        "PODKIT_AI_TOOLKIT_DIR": str(FAKE_AI_TOOLKIT),
        "PODKIT_AI_TOOLKIT_PYTHON": sys.executable,
        "PODKIT_TRAINER_ENV": "FAKE_AITK_LIKE,FAKE_AITK_UP_STD",
        "FAKE_AITK_LIKE": str(tiny_models / "loras" / LORA_A),
        "FAKE_AITK_UP_STD": "0.5",
    }
    server = comfy_server_factory(env=env, name="podkit-training", extra_model_paths={"loras": [core_loras]})
    server.require_podkit()
    yield server, bucket, dataset, core_loras
    server.stop()


def test_trained_lora_is_loaded_by_the_r2_loader(training_comfy: Any, s3: Any, s3_server: Any) -> None:
    server, bucket, dataset, core_loras = training_comfy
    body = {"name": "tiny_cat", "dataset": {"path": str(dataset)}, "base_model": "sd15", "steps": 20,
            "rank": 4, "alpha": 4, "save_every": 10}  # fmt: skip
    status, job = server.client.request("POST", "/api/podkit/training/jobs", body)
    assert status < 300 and job["status"] == "queued", job  # the harness reports any 2xx as 200
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        job = server.client.get_json(f"/api/podkit/training/jobs/{job['id']}")
        if job["status"] in ("done", "failed", "cancelled"):
            break
        time.sleep(0.5)
    assert job["status"] == "done", job
    key = "tiny_cat.safetensors"
    assert job["lora_uri"] == f"r2://{bucket}/{key}"
    assert job["dataset"] == {"images": 3, "captions": 3, "missing_captions": 0}
    # the loader's combo offers it at once (the listing was refreshed after the upload)
    assert key in server.client.get_json("/podkit/loras/names")

    base = pixels_of(server, run_ok(server, wf.txt2img(CHECKPOINT, seed=11)))
    ours = pixels_of(server, run_ok(server, wf.txt2img(CHECKPOINT, seed=11, lora_node=podkit_lora(key))))
    assert np.abs(ours - base).mean() > 1.0, "the trained LoRA must change the image"

    # the same file through core LoraLoader gives the same pixels
    s3.download_file(bucket, key, str(core_loras / key))
    core = pixels_of(server, run_ok(server, wf.txt2img(CHECKPOINT, seed=11, lora=key)))
    assert np.array_equal(ours, core)
    assert s3_server.secret_key not in server.log_text(current=True)
