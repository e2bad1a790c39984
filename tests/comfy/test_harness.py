"""Smoke tests of the tests/comfy harness itself (core ComfyUI nodes only, no PodKit nodes)."""

from __future__ import annotations

import io
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from support import workflows as wf
from support.comfy_client import ComfyClient, WorkflowFailed
from support.make_tiny_models import CHECKPOINT, LORA_A, LORA_B, LORA_NOMATCH, VAE


def decode_png(data: bytes) -> tuple[np.ndarray, dict[str, str]]:
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        text = dict(getattr(img, "text", {}))
        pixels = np.asarray(img.convert("RGB"), dtype=np.int16)
    return pixels, text


def test_server_lists_tiny_models(comfy_server, tiny_models: Path) -> None:
    client: ComfyClient = comfy_server.client
    info = client.object_info("CheckpointLoaderSimple")
    assert CHECKPOINT in info["input"]["required"]["ckpt_name"][0]
    loras = client.object_info("LoraLoader")["input"]["required"]["lora_name"][0]
    assert {LORA_A, LORA_B, LORA_NOMATCH} <= set(loras)
    assert VAE in client.get_json("/models/vae")
    manifest = json.loads((tiny_models / "manifest.json").read_text())
    assert manifest["files"][f"checkpoints/{CHECKPOINT}"]["bytes"] > 100 * 2**20
    # PodKit is loaded through the extra_model_paths custom_nodes entry; whether its import succeeds
    # is not asserted here (the package is tested elsewhere), only that ComfyUI tried it.
    pkg = re.escape(str(comfy_server.custom_nodes_dir / "podkit"))
    assert re.search(rf"seconds( \(IMPORT FAILED\))?: {pkg}$", comfy_server.log_text(current=True), re.M)


def test_rejected_prompt_carries_node_errors(comfy_server) -> None:
    result = comfy_server.client.run_workflow(wf.txt2img("no_such_model.safetensors", seed=1), timeout=60)
    assert result.status == "rejected"
    assert not result.ok
    assert wf.Ids.CKPT in result.node_errors
    assert "no_such_model.safetensors" in result.describe()


def test_execution_error_carries_details(comfy_server) -> None:
    (comfy_server.input_dir / "broken.png").write_bytes(b"not a png")
    prompt = {
        "1": wf.node("LoadImage", image="broken.png"),
        "2": wf.node("PreviewImage", images=wf.link("1")),
    }
    result = comfy_server.client.run_workflow(prompt, timeout=120)
    assert result.status == "error", result.describe()
    assert result.error["node_id"] == "1"
    assert result.error["node_type"] == "LoadImage"
    assert result.history is not None
    assert "LoadImage" in result.describe()
    with pytest.raises(WorkflowFailed):
        result.raise_for_status()


def test_txt2img_then_lora_changes_the_image(comfy_server) -> None:
    client: ComfyClient = comfy_server.client
    base = client.run_workflow(
        wf.txt2img(CHECKPOINT, seed=42), extra_pnginfo={"workflow": {"harness": True}}, timeout=300
    )
    assert base.ok, base.describe()
    assert "execution_start" in base.event_types()
    assert wf.Ids.SAMPLER in base.executed_nodes()
    refs = base.images(wf.Ids.SAVE)
    assert len(refs) == 1
    pixels, text = decode_png(base.download(refs[0]))
    assert pixels.shape == (64, 64, 3)
    assert pixels.std() > 1.0, "a sampled image should not be flat"
    assert json.loads(text["prompt"])[wf.Ids.SAMPLER]["inputs"]["seed"] == 42
    assert json.loads(text["workflow"]) == {"harness": True}

    mark = comfy_server.log_mark()
    with_lora = client.run_workflow(wf.txt2img(CHECKPOINT, seed=42, lora=LORA_A), timeout=300)
    assert with_lora.ok, with_lora.describe()
    assert wf.Ids.CKPT in with_lora.cached_nodes()
    lora_pixels, _ = decode_png(with_lora.image_bytes(wf.Ids.SAVE)[0])
    diff = float(np.abs(lora_pixels - pixels).mean())
    assert diff > 5.0, f"LoRA barely changed the image (mean abs diff {diff:.2f}/255)"
    log = comfy_server.log_since(mark)
    assert "lora key not loaded" not in log
    assert "NOT LOADED" not in log

    # negative control: the log check above would have caught unmatched keys
    mark = comfy_server.log_mark()
    nomatch = client.run_workflow(wf.txt2img(CHECKPOINT, seed=42, lora=LORA_NOMATCH), timeout=300)
    assert nomatch.ok, nomatch.describe()
    assert "lora key not loaded" in comfy_server.log_since(mark)
    nomatch_pixels, _ = decode_png(nomatch.image_bytes()[0])
    assert np.array_equal(nomatch_pixels, pixels), "a LoRA that matches nothing must not change the image"


def _proc_environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs /proc")
def test_env_is_sanitized_and_server_restarts(comfy_server_factory, monkeypatch) -> None:
    monkeypatch.setenv("R2_SECRET_ACCESS_KEY", "parent-secret")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "parent-key")
    monkeypatch.setenv("PODKIT_S3_ENDPOINT", "http://parent.invalid")
    srv = comfy_server_factory(
        name="restart",
        podkit=False,
        env={"PODKIT_S3_ENDPOINT": "http://127.0.0.1:1", "R2_LORA_BUCKET": "loras"},
    )
    try:
        env = _proc_environ(srv.proc.pid)
        assert "R2_SECRET_ACCESS_KEY" not in env
        assert "AWS_ACCESS_KEY_ID" not in env
        assert env["PODKIT_S3_ENDPOINT"] == "http://127.0.0.1:1"
        assert env["R2_LORA_BUCKET"] == "loras"
        assert env["PODKIT_STATE_DIR"].startswith(str(srv.root))
        first_pid = srv.proc.pid

        (srv.output_dir / "survives.txt").write_text("x")
        srv.restart()
        assert srv.proc.pid != first_pid
        assert srv.client.object_info("SaveImage")
        assert (srv.output_dir / "survives.txt").exists()
        assert srv.log_text().count("===== podkit harness: start #") == 2
        assert "start #2" in srv.log_text(current=True)
        assert _proc_environ(srv.proc.pid)["PODKIT_S3_ENDPOINT"] == "http://127.0.0.1:1"
    finally:
        srv.stop()
    assert not srv.is_running()
    assert not os.path.exists(f"/proc/{first_pid}")
