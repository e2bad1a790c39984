"""The download manager inside a real ComfyUI: a downloaded LoRA appears in core LoraLoader's list
without a restart (the volume folders are registered with ``folder_paths``) and loads like the
original file."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
from http_server import fault_server
from support import workflows as wf
from support.comfy_results import pixels_of, run_ok
from support.make_tiny_models import CHECKPOINT, LORA_A


def lora_choices(server: Any) -> list[str]:
    spec = server.client.object_info("LoraLoader")["input"]["required"]["lora_name"]
    if spec and isinstance(spec[0], list):
        return list(spec[0])
    return list(spec[1].get("options", []))


def test_downloaded_lora_is_in_the_loader_without_restart(
    comfy_server_factory: Any, tiny_models: Path, tmp_path: Path
) -> None:
    models = tmp_path / "volume-models"
    with fault_server() as http:
        sha = http.add("/pod-style.safetensors", (tiny_models / "loras" / LORA_A).read_bytes())
        server = comfy_server_factory(
            env={"PODKIT_MODELS_DIR": str(models), "PODKIT_URL_ALLOW_PRIVATE": "1"}, name="downloads"
        )
        try:
            server.require_podkit()
            assert "pod-style.safetensors" not in lora_choices(server)
            status, answer = server.client.request(
                "POST", "/podkit/downloads", {"url": http.url("/pod-style.safetensors"), "sha256": sha}
            )
            assert status in (200, 202), answer  # the client reports any 2xx as 200
            job_id = answer["jobs"][0]["id"]
            deadline = time.monotonic() + 60
            while (job := server.client.get_json(f"/podkit/downloads/{job_id}"))["status"] not in (
                "done", "failed",
            ):  # fmt: skip
                assert time.monotonic() < deadline, job
                time.sleep(0.1)
            assert job["status"] == "done", job["error"]
            assert job["dest"] == "loras/pod-style.safetensors" and job["sha256"] == sha
            assert (models / "loras" / "pod-style.safetensors").is_file()

            assert "pod-style.safetensors" in lora_choices(server)
            core = pixels_of(server, run_ok(server, wf.txt2img(CHECKPOINT, seed=3, lora=LORA_A)))
            ours = pixels_of(
                server, run_ok(server, wf.txt2img(CHECKPOINT, seed=3, lora="pod-style.safetensors"))
            )
            assert np.array_equal(core, ours)
        finally:
            server.stop()
