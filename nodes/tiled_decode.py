"""Cached Tiled VAE Decode (PodKit): an exact low-memory decode behind a decoded-image cache.

The decode itself is ``backends/tiled_vae.py`` (banded, whole-image GroupNorm statistics, equal to
core VAE Decode's pixels); the cache is the process-wide ``services().decode_cache``.
"""

from __future__ import annotations

import logging
from typing import Any

from ..core.errors import InvalidRequest
from ._comfy import CATEGORY, io
from ._progress import say
from .host import services

logger = logging.getLogger(__name__)

#: Smallest explicit tile size (px), as core VAEDecodeTiled allows.
MIN_TILE_PX = 64
#: Tile size of the fallback when tile_size is 0 (core VAEDecodeTiled's default).
FALLBACK_TILE_PX = 512


def check_settings(tile_size: int, overlap: int) -> None:
    """Raises InvalidRequest naming the bad input."""
    if not isinstance(tile_size, int) or isinstance(tile_size, bool) or tile_size < 0:
        raise InvalidRequest(f"tile_size: must be 0 (auto) or a size in pixels, got {tile_size!r}")
    if 0 < tile_size < MIN_TILE_PX:
        raise InvalidRequest(
            f"tile_size: {tile_size} px is too small; use 0 (auto) or at least {MIN_TILE_PX}"
        )
    if not isinstance(overlap, int) or isinstance(overlap, bool) or overlap < 0:
        raise InvalidRequest(f"overlap: must be ≥ 0 pixels, got {overlap!r}")


def _latent(samples: Any) -> Any:
    import torch

    tensor = samples.get("samples") if isinstance(samples, dict) else None
    if not isinstance(tensor, torch.Tensor) or tensor.ndim < 3:
        raise InvalidRequest("samples: expected a LATENT (a dict holding a 'samples' tensor)")
    return tensor


def _fallback(vae: Any, samples: Any, tile_size: int, overlap: int) -> Any:
    """Core VAEDecodeTiled's decode, with its own overlap clamp and video handling."""
    import nodes as comfy_nodes  # ComfyUI's top-level nodes.py

    (images,) = comfy_nodes.VAEDecodeTiled().decode(
        vae, {"samples": samples}, tile_size or FALLBACK_TILE_PX, overlap
    )
    return images


class PodKitTiledVAEDecode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PodKitTiledVAEDecode",
            display_name="Cached Tiled VAE Decode (PodKit)",
            category=f"{CATEGORY}/latent",
            description="Decodes latents to images with a fraction of a full decode's memory and the same "
            "pixels as VAE Decode, in one pass (core VAE Decode (Tiled) decodes three tilings and still "
            "shows seams), falling back to smaller bands on out-of-memory. Decoded images are cached by "
            "latent, VAE weights and settings: the same latent decodes once. SD1.x/SD2/SDXL/SD3/FLUX image "
            "VAEs use PodKit's decode; video, audio and other VAEs fall back to core VAE Decode (Tiled) "
            "with tile_size and overlap.",
            inputs=[
                io.Latent.Input("samples", tooltip="The latent to decode."),
                io.Vae.Input("vae", tooltip="The VAE to decode with."),
                io.Int.Input(
                    "tile_size",
                    default=0,
                    min=0,
                    max=8192,
                    step=32,
                    tooltip="0 = auto from free memory. PodKit's decode: height in pixels of each band of "
                    "rows (smaller = less memory, same pixels). Fallback: core VAE Decode (Tiled)'s tile "
                    f"size (auto = {FALLBACK_TILE_PX}).",
                ),
                io.Int.Input(
                    "overlap",
                    default=64,
                    min=0,
                    max=4096,
                    step=32,
                    tooltip="Only for the fallback (video and other VAEs): core VAE Decode (Tiled)'s tile "
                    "overlap in pixels. PodKit's decode is exact and needs none.",
                ),
                io.Boolean.Input(
                    "use_cache",
                    default=True,
                    tooltip="Reuse an earlier decode of the same latent with the same VAE and settings.",
                ),
            ],
            outputs=[io.Image.Output(tooltip="The decoded images.")],
        )

    @classmethod
    def validate_inputs(cls, tile_size: int = 0, overlap: int = 64) -> bool | str:
        try:
            check_settings(tile_size, overlap)
        except InvalidRequest as e:
            return str(e)
        return True

    @classmethod
    def execute(cls, samples: Any, vae: Any, tile_size: int, overlap: int, use_cache: bool) -> io.NodeOutput:
        import comfy.model_management as mm
        import comfy.utils

        from ..backends.vae_decode import DecodeHost, cached_decode

        check_settings(tile_size, overlap)
        latent = _latent(samples)
        if getattr(vae, "first_stage_model", None) is None:
            raise InvalidRequest("vae: this VAE is empty (the checkpoint holds no VAE weights)")
        bar = comfy.utils.ProgressBar(100)
        host = DecodeHost(
            prepare=lambda need: mm.load_models_gpu(
                [vae.patcher], memory_required=need, force_full_load=getattr(vae, "disable_offload", False)
            ),
            free_memory=lambda: int(mm.get_free_memory(vae.device)),
            fallback=lambda s: _fallback(vae, s, tile_size, overlap),
            fallback_settings={"tile_size": tile_size or FALLBACK_TILE_PX, "overlap": overlap},
        )
        cache = services().decode_cache if use_cache else None
        image, info = cached_decode(
            vae,
            latent,
            host,
            cache=cache,  # type: ignore[arg-type]
            band_px=tile_size,
            progress=lambda done, total: bar.update_absolute(done, total),
        )
        bar.update_absolute(bar.total)
        where = f"cached ({info.cache})" if info.cache in ("ram", "disk") else f"{info.seconds:.1f} s"
        # "exact, 64-px bands" or "streamed from …, statistics from 6% of the rows, 8-px bands"
        how = info.detail or (f"{info.band_px}-px bands" if info.band_px else info.method)
        if info.reason:
            logger.info("PodKit decode fell back to core VAE Decode (Tiled): %s", info.reason)
        say(None, f"{how}, {where}" + (f", {info.retries} out-of-memory retries" if info.retries else ""))
        return io.NodeOutput(image)
