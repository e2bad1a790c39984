"""Cached Tiled VAE Decode (PodKit) in a real ComfyUI: same image as core VAE Decode, cache hits, errors."""

from __future__ import annotations

import io
import math
from typing import Any

import numpy as np
from PIL import Image
from support import workflows as wf
from support.make_tiny_models import CHECKPOINT

OURS = "20"
OURS_SAVE = "21"


def pixels(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("RGB"), dtype=np.float64)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a - b) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def prompt(seed: int, *, tile_size: int, use_cache: bool = True, size: int = 128) -> dict[str, Any]:
    """txt2img (tiny SD1.5, full SD VAE) decoded twice: core VAEDecode and PodKit's node."""
    p = wf.txt2img(CHECKPOINT, seed=seed, size=size, steps=2)
    p[OURS] = wf.node(
        "PodKitTiledVAEDecode",
        samples=wf.link(wf.Ids.SAMPLER),
        vae=wf.link(wf.Ids.CKPT, 2),
        tile_size=tile_size,
        overlap=64,
        use_cache=use_cache,
    )
    p[OURS_SAVE] = wf.node("SaveImage", images=wf.link(OURS), filename_prefix="podkit_decode")
    return p


def run_ok(server: Any, p: dict[str, Any]) -> Any:
    result = server.client.run_workflow(p, timeout=600)
    assert result.ok, result.describe()
    return result


def decode_stats(server: Any) -> dict[str, Any]:
    return server.client.get_json("/podkit/cache/stats")["decode"]  # type: ignore[no-any-return]


def test_node_matches_core_decode_and_hits_the_cache(comfy_server: Any) -> None:
    comfy_server.require_podkit()
    info = comfy_server.client.object_info("PodKitTiledVAEDecode")
    assert info["display_name"] == "Cached Tiled VAE Decode (PodKit)"
    assert "fall back" in info["description"]
    before = decode_stats(comfy_server)

    # 64-px bands: the 128 px image's full-resolution layers run in two bands.
    first = run_ok(comfy_server, prompt(5, tile_size=64))
    core = pixels(first.image_bytes(wf.Ids.SAVE)[0])
    ours = pixels(first.image_bytes(OURS_SAVE)[0])
    assert core.shape == ours.shape == (128, 128, 3)
    assert core.std() > 5, "the test image must have content"
    assert psnr(ours, core) >= 40.0
    after_first = decode_stats(comfy_server)
    assert after_first["misses"] == before["misses"] + 1 and after_first["stores"] == before["stores"] + 1

    # Another prompt whose node inputs differ (ComfyUI re-runs the node) but whose latent, VAE and
    # pixels do not: PodKit's cache answers without decoding.
    second = run_ok(comfy_server, prompt(5, tile_size=0))
    assert OURS in second.executed_nodes()
    assert np.array_equal(pixels(second.image_bytes(OURS_SAVE)[0]), ours)
    after_second = decode_stats(comfy_server)
    assert after_second["ram_hits"] == after_first["ram_hits"] + 1
    assert after_second["misses"] == after_first["misses"]

    # use_cache off decodes again (and stores nothing).
    third = run_ok(comfy_server, prompt(5, tile_size=128, use_cache=False))
    assert psnr(pixels(third.image_bytes(OURS_SAVE)[0]), core) >= 40.0
    assert decode_stats(comfy_server)["stores"] == after_second["stores"]


def test_bad_tile_size_is_a_node_error_naming_the_input(comfy_server: Any) -> None:
    comfy_server.require_podkit()
    p = prompt(1, tile_size=32, size=64)
    del p[wf.Ids.SAVE], p[wf.Ids.DECODE]  # PodKit's output is the only one: the prompt is refused
    result = comfy_server.client.run_workflow(p, timeout=120)
    assert result.status == "rejected"
    assert OURS in result.node_errors
    assert "tile_size: 32 px is too small" in result.describe()
