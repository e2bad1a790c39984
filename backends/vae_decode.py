"""Cached VAE decode: PodKit's low-memory decode behind the decoded-image cache (torch).

Works on any object shaped like ComfyUI's ``comfy.sd.VAE`` (``first_stage_model``, ``device``,
``vae_dtype``, ``output_device``, ``process_output``); the host-specific parts (loading the
model onto its device, free memory, ComfyUI's own tiled decode as the fallback) come in as
callables, so this module imports no ComfyUI and the tests drive it with a small LDM VAE.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..core.decode_cache import DecodeCache, decode_key
from ..core.errors import InvalidRequest
from ..core.tiling import decode_budget
from .tiled_vae import DecodeMemoryError, LdmDecoder, Progress, TiledDecoder, UnsupportedVAE

logger = logging.getLogger(__name__)

#: Values sampled from every weight tensor for the fingerprint (plus names, shapes, dtypes).
FINGERPRINT_SAMPLES = 64
_fingerprints: weakref.WeakKeyDictionary[nn.Module, str] = weakref.WeakKeyDictionary()
_checked: weakref.WeakKeyDictionary[nn.Module, LdmDecoder | UnsupportedVAE] = weakref.WeakKeyDictionary()
_fingerprints_lock = threading.Lock()


def latent_digest(samples: torch.Tensor) -> str:
    """sha256 of a latent's shape, dtype and bytes."""
    t = samples.detach().to("cpu").contiguous()
    h = hashlib.sha256(f"{tuple(t.shape)}|{t.dtype}\n".encode())
    h.update(t.reshape(-1).view(torch.uint8).numpy().data)
    return h.hexdigest()


def weights_fingerprint(model: nn.Module) -> str:
    """A cheap, stable identity of ``model``'s weights, computed once per model object.

    Hashes every tensor's name, shape and dtype plus ``FINGERPRINT_SAMPLES`` values spread over it:
    a different or fine-tuned VAE differs in every tensor, so sampling finds it in milliseconds
    where hashing 320 MiB of weights would take a second.
    """
    with _fingerprints_lock:
        known = _fingerprints.get(model)
    if known is not None:
        return known
    h = hashlib.sha256()
    with torch.inference_mode():
        for name, t in sorted(model.state_dict().items()):
            h.update(f"{name}|{tuple(t.shape)}|{t.dtype}\n".encode())
            flat = t.detach().reshape(-1)
            if flat.numel() == 0:
                continue
            idx = torch.linspace(
                0, flat.numel() - 1, min(FINGERPRINT_SAMPLES, flat.numel()), device=flat.device
            )
            h.update(flat[idx.long()].to("cpu", torch.float32).numpy().tobytes())
    digest = h.hexdigest()
    with _fingerprints_lock:
        _fingerprints[model] = digest
    return digest


def checked_decoder(model: nn.Module) -> LdmDecoder:
    """``LdmDecoder.from_model(model)``, checked once per model object (a cache hit stays cheap).

    Raises:
        UnsupportedVAE: as ``from_model`` does.
    """
    with _fingerprints_lock:
        known = _checked.get(model)
    if known is None:
        try:
            known = LdmDecoder.from_model(model)
        except UnsupportedVAE as e:
            known = e
        with _fingerprints_lock:
            _checked[model] = known
    if isinstance(known, UnsupportedVAE):
        raise UnsupportedVAE(str(known))
    return known


def vae_fingerprint(vae: Any) -> str:
    """The VAE's weights fingerprint, plus its patcher's patch identity when something is patched
    into it (a LoRA applied to the VAE: then the entry is this process's own). Every patcher has a
    random ``patches_uuid``, so an unpatched VAE must not use it, or no two processes would share
    an entry."""
    base = weights_fingerprint(vae.first_stage_model)
    patcher = getattr(vae, "patcher", None)
    if not getattr(patcher, "patches", None):
        return base
    return f"{base}+{getattr(patcher, 'patches_uuid', None)}"


@dataclass
class DecodeInfo:
    """What one cached decode did."""

    method: str  # "banded" or "fallback"
    cache: str  # "ram", "disk", "miss" or "off"
    band_px: int | None
    retries: int
    seconds: float
    reason: str | None = None  # why the fallback ran
    mode: str | None = None  # the banded decode's "exact" or "streamed" (a hit: what was cached)
    detail: str | None = None  # how it ran, for the node's progress text and logs


@dataclass
class DecodeHost:
    """What the host (ComfyUI, a test, a bench) provides around the VAE object.

    Args:
        prepare: load the VAE's weights onto its device, given the memory the decode needs.
        free_memory: free bytes on the VAE's device now.
        fallback: the host's own decode of a latent to an IMAGE ``[B, H, W, C]`` (ComfyUI's
            ``vae.decode_tiled``), for VAEs the banded decode does not support.
        fallback_settings: the fallback's tile settings (part of its cache key).
    """

    prepare: Callable[[int], None]
    free_memory: Callable[[], int]
    fallback: Callable[[torch.Tensor], torch.Tensor]
    fallback_settings: Mapping[str, object]


def cached_decode(
    vae: Any,
    samples: torch.Tensor,
    host: DecodeHost,
    *,
    cache: DecodeCache[torch.Tensor] | None,
    band_px: int = 0,
    progress: Progress | None = None,
) -> tuple[torch.Tensor, DecodeInfo]:
    """Decode ``samples`` to an IMAGE ``[B, H, W, C]`` float32 in 0..1, through the cache.

    ``band_px`` (output rows per band) 0 picks it from the device's free memory. A cache hit
    returns a copy of the cached image without touching the VAE.

    Raises:
        InvalidRequest: ``samples`` is not a tensor, or a negative band size.
    """
    start = time.perf_counter()
    if not isinstance(samples, torch.Tensor):
        raise InvalidRequest("samples: expected a latent tensor")
    if band_px < 0:
        raise InvalidRequest("band size must be ≥ 0 (0 = auto)")
    dec: LdmDecoder | None = None
    reason: str | None = None
    try:
        if samples.ndim != 4:
            raise UnsupportedVAE(
                f"a {samples.ndim - 2}-D latent (video/audio) is decoded by ComfyUI's tiled path"
            )
        dec = checked_decoder(vae.first_stage_model)
    except UnsupportedVAE as e:
        reason = str(e)
    settings: dict[str, object] = (
        {"method": "banded", "process_output": "comfy"}
        if dec is not None
        else {"method": "fallback", **dict(host.fallback_settings)}
    )
    key = None
    if cache is not None:
        # One key for the exact and the streamed decode (within ~1e-3 of each other): the first
        # decode of a latent is the one kept, whichever the free memory allowed.
        key = decode_key(latent_digest(samples), vae_fingerprint(vae), settings)
        hit = cache.get(key)
        if hit is not None:
            served = hit[0].clone()
            cache.note_output(served, key)
            return served, DecodeInfo(str(settings["method"]), hit[1], None, 0, time.perf_counter() - start)
    image, band, retries, mode, detail = _decode(vae, samples, host, dec, band_px, progress)
    if dec is None or band is None:
        settings = {"method": "fallback", **dict(host.fallback_settings)}
        if cache is not None:
            key = decode_key(latent_digest(samples), vae_fingerprint(vae), settings)
    if cache is not None and key is not None:
        kept = image.detach().to("cpu", torch.float32).contiguous().clone()
        cache.put(key, kept, int(kept.nbytes))
        cache.note_output(image, key)
    return image, DecodeInfo(
        "banded" if band is not None else "fallback",
        "miss" if cache is not None else "off",
        band,
        retries,
        time.perf_counter() - start,
        reason,
        mode if band is not None else None,
        detail,
    )


def _decode(
    vae: Any,
    samples: torch.Tensor,
    host: DecodeHost,
    dec: LdmDecoder | None,
    band_px: int,
    progress: Progress | None,
) -> tuple[torch.Tensor, int | None, int, str, str]:
    """(image, band used or None for the fallback, OOM retries, mode, how it ran)."""
    if dec is not None:
        device = torch.device(getattr(vae, "device", "cpu"))
        decoder = TiledDecoder(
            dec,
            device=device,
            dtype=getattr(vae, "vae_dtype", torch.float32),
            output_device=torch.device(getattr(vae, "output_device", "cpu")),
        )
        h, w = samples.shape[2:]
        host.prepare(decoder.whole_image_bytes(h, w))
        budget = decode_budget(host.free_memory(), host_ram=device.type == "cpu")
        band = band_px or decoder.auto_band(h, w, budget)
        plan = decoder.plan(h, w, budget, decoder.band_bytes(band, w))
        try:
            with torch.inference_mode():
                image, report = decoder.decode(samples, band, progress, plan=plan, post=vae.process_output)
            detail = f"{report.plan.describe()}, {report.band_px}-px bands"
            logger.info("PodKit decode: %s (budget %d MiB)", detail, budget // 2**20)
            return image, report.band_px, report.retries, report.mode, detail
        except DecodeMemoryError as e:
            logger.warning("PodKit decode: %s; falling back to ComfyUI's tiled decode", e)
    with torch.inference_mode():
        return host.fallback(samples), None, 0, "fallback", "core VAE Decode (Tiled)"
