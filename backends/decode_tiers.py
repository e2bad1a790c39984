"""The decode cache's disk tiers (torch is imported only when an image is read or written).

Two places a decoded image outlives the process:

- :func:`model_cache_tier`: an exact float32 ``.npy`` blob per key in the shared model cache (its
  LRU, leases and size cap). Used on hosts without ComfyUI's cache-provider API (0.3.64) when
  ``PODKIT_DECODE_DISK_CACHE`` is on.
- :class:`GenerationTier`: an entry of the generation cache, inside a ComfyUI that has the API and
  with the generation cache on. One store, one cap, one eviction plan and one bucket mirror for
  every node output PodKit keeps; a decoded image is stored once, and the provider's entry for the
  same node refers to it (:meth:`GenerationTier.reference`) instead of copying it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..core.decode_cache import DecodeCache, ModelCacheTier
from ..core.gencache import decode_digest
from ..core.model_cache import ModelCache

if TYPE_CHECKING:
    from .gencache_store import GenerationStore

#: the tensor name of the image inside its generation cache entry (outputs = [image])
IMAGE_TENSOR = "t0"


def write_image(image: Any, path: Path) -> None:
    """Write an IMAGE tensor as a .npy file (exact float32)."""
    import torch

    with open(path, "wb") as f:
        np.save(f, image.detach().to("cpu", torch.float32).contiguous().numpy(), allow_pickle=False)


def _checked(image: Any, where: str) -> tuple[Any, int]:
    import torch

    if not isinstance(image, torch.Tensor) or image.dtype != torch.float32 or image.ndim != 4:
        shape = (image.dtype, tuple(image.shape)) if isinstance(image, torch.Tensor) else type(image)
        raise ValueError(f"{where}: expected a float32 [B,H,W,C] image, got {shape}")
    return image, int(image.nbytes)


def read_image(path: Path) -> tuple[Any, int]:
    """Read an IMAGE written by :func:`write_image`; (tensor, size in bytes).

    Raises:
        ValueError: not a float32 ``[B, H, W, C]`` array.
    """
    import torch

    return _checked(torch.from_numpy(np.load(path, allow_pickle=False)), path.name)


def model_cache_tier(cache: ModelCache) -> ModelCacheTier[Any]:
    """Decoded images as ``.npy`` blobs in the model cache."""
    return ModelCacheTier(cache, read_image, write_image, suffix=".npy")


class GenerationTier:
    """Decoded images as generation cache entries (``outputs = [image]``, keyed by
    :func:`~podkit.core.gencache.decode_digest` of the decode key)."""

    name = "generation cache"

    def __init__(self, store: GenerationStore) -> None:
        self.store = store

    def load(self, key: str) -> tuple[Any, int] | None:
        found = self.store.load(decode_digest(key))
        if found is None:
            return None
        outputs, _ui, _size = found
        if len(outputs) != 1:
            raise ValueError(f"decode entry {key[:12]}: {len(outputs)} outputs, expected the image")
        return _checked(outputs[0], f"decode entry {key[:12]}")

    def save(self, key: str, value: Any) -> None:
        self.store.save(decode_digest(key), [value], None)

    def reference(self, key: str | None) -> tuple[str, str] | None:
        """(entry digest, tensor name) holding the image decoded under ``key``, when it is on the
        volume now; None otherwise (the caller then stores its own copy)."""
        if key is None:
            return None
        digest = decode_digest(key)
        return (digest, IMAGE_TENSOR) if self.store.holds(digest) else None


def attach(decode_cache: DecodeCache[Any], store: GenerationStore) -> None:
    """Make the generation cache the decode cache's disk tier, and let the store refer to the image
    a decode returned (its entry) instead of storing the same tensor again."""
    tier = GenerationTier(store)
    decode_cache.use_disk(tier)

    def refs(tensor: Any) -> tuple[str, str] | None:
        if str(getattr(tensor, "dtype", "")) != "torch.float32":  # the entry holds float32
            return None
        return tier.reference(decode_cache.key_of(tensor))

    store.refs = refs
