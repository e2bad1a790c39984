"""The decoded-image cache: a byte-bounded RAM LRU in front of an optional disk tier (pure rules).

A key is ``sha256`` over the latent's digest, the VAE weights' fingerprint and every decode
setting that changes the pixels (the method, and the tile settings of a fallback decode), so two
workflows that decode the same latent with the same VAE share one entry. The RAM tier holds the
decoded values themselves; the disk tier is a :class:`DiskTier`: a blob per key in the shared model
cache (:class:`ModelCacheTier`, its LRU, leases and size cap apply), or, inside a ComfyUI with the
cache-provider API, an entry of the generation cache (``backends/decode_tiers.py``), which every pod
shares and which a bucket may mirror.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import weakref
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Generic, Protocol, TypeVar

from .errors import InvalidRequest, PodKitError
from .lru import ByteLRU
from .model_cache import ModelCache
from .model_cache_types import CacheKey

logger = logging.getLogger(__name__)

V = TypeVar("V")
_HEX = frozenset("0123456789abcdef")
#: Bumped whenever the decoded pixels of the same inputs change (invalidates old disk entries).
FORMAT_VERSION = "1"


def decode_key(latent_digest: str, vae_fingerprint: str, settings: Mapping[str, object]) -> str:
    """The cache key of one decode (hex sha256).

    Raises:
        InvalidRequest: empty digests, or settings that are not plain JSON values.
    """
    if not latent_digest or not vae_fingerprint:
        raise InvalidRequest("a decode cache key needs the latent digest and the VAE fingerprint")
    try:
        text = json.dumps(dict(settings), sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as e:
        raise InvalidRequest(f"decode settings must be plain JSON values: {e}") from e
    h = hashlib.sha256()
    for part in (FORMAT_VERSION, latent_digest, vae_fingerprint, text):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()


class DiskTier(Protocol[V]):
    """Where decoded values outlive the process. ``load`` raises (OSError, ValueError, PodKitError)
    on a damaged entry, which the cache counts and treats as a miss."""

    #: what /podkit/cache/stats calls it ("model cache", "generation cache")
    name: str

    def load(self, key: str) -> tuple[V, int] | None:
        """(value, size in bytes) stored under ``key``, or None."""
        ...

    def save(self, key: str, value: V) -> None:
        """Store ``value`` under ``key`` (once across processes)."""
        ...


class ModelCacheTier(Generic[V]):
    """A blob per key in a :class:`ModelCache`, read and written by the codec the torch side gives.

    Args:
        cache: the model cache holding the blobs.
        read: ``read(path) -> (value, size)``; raises ValueError on a blob it does not understand.
        write: ``write(value, tmp_path)``.
        suffix: file suffix of the blobs.
    """

    name = "model cache"

    def __init__(
        self,
        cache: ModelCache,
        read: Callable[[Path], tuple[V, int]],
        write: Callable[[V, Path], None],
        *,
        suffix: str = ".npy",
    ) -> None:
        self.cache, self.read, self.write, self.suffix = cache, read, write, suffix

    def _key(self, key: str) -> CacheKey:
        return CacheKey.for_source(f"podkit-decode:{key}", f"v{FORMAT_VERSION}", self.suffix)

    def load(self, key: str) -> tuple[V, int] | None:
        disk_key = self._key(key)
        path = self.cache.use(disk_key)
        if path is None:
            return None
        with self.cache.lease(disk_key):
            return self.read(path)

    def save(self, key: str, value: V) -> None:
        def fetch(tmp: Path) -> None:
            self.write(value, tmp)

        self.cache.ensure(self._key(key), fetch)


@dataclass(frozen=True)
class DecodeCacheStats:
    ram_hits: int
    disk_hits: int
    misses: int
    stores: int
    disk_errors: int
    ram_entries: int
    ram_bytes: int
    ram_max_bytes: int
    disk_enabled: bool
    #: the disk tier's name, or None without one
    disk_tier: str | None
    hit_rate: float | None

    def to_wire(self) -> dict[str, object]:
        return asdict(self)


#: outputs remembered for :meth:`DecodeCache.key_of` (the last few decodes of this process)
RECENT_OUTPUTS = 16


class DecodeCache(Generic[V]):
    """RAM LRU of decoded values, with an optional disk tier.

    Args:
        ram_bytes: size cap of the RAM tier.
        disk: the disk tier, or None for RAM only (see :meth:`use_disk`).
    """

    def __init__(self, ram_bytes: int, disk: DiskTier[V] | None = None) -> None:
        self.ram: ByteLRU[V] = ByteLRU(ram_bytes)
        self.disk = disk
        self._lock = threading.Lock()
        self._ram_hits = self._disk_hits = self._misses = self._stores = self._disk_errors = 0
        self._recent: dict[int, tuple[weakref.ref[object], str]] = {}

    def use_disk(self, disk: DiskTier[V] | None) -> None:
        """Switch the disk tier (the host attaching its generation cache); RAM entries stay."""
        self.disk = disk

    @staticmethod
    def _check(key: str) -> None:
        if len(key) != 64 or not set(key) <= _HEX:
            raise InvalidRequest(f"{key!r} is not a decode cache key")

    def _count(self, name: str) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + 1)

    def get(self, key: str) -> tuple[V, str] | None:
        """``(value, "ram" | "disk")`` for ``key``, from RAM, else from disk (then kept in RAM), else
        None. An entry the disk tier cannot read is logged and counted, and is a miss."""
        self._check(key)
        value = self.ram.get(key)
        if value is not None:
            self._count("_ram_hits")
            return value, "ram"
        disk = self.disk
        if disk is not None:
            try:
                found = disk.load(key)
            except (OSError, ValueError, PodKitError) as e:
                logger.warning("PodKit decode cache: cannot read entry %s (%s): %s", key[:12], disk.name, e)
                self._count("_disk_errors")
            else:
                if found is not None:
                    self.ram.put(key, found[0], found[1])
                    self._count("_disk_hits")
                    return found[0], "disk"
        self._count("_misses")
        return None

    def put(self, key: str, value: V, size: int) -> None:
        """Keep ``value`` in RAM and, with a disk tier, store it there once.

        A failed disk write is logged and counted, never raised: the decode itself succeeded.
        """
        self._check(key)
        self.ram.put(key, value, size)
        self._count("_stores")
        disk = self.disk
        if disk is None:
            return
        try:
            disk.save(key, value)
        except (OSError, ValueError, PodKitError) as e:
            logger.warning("PodKit decode cache: cannot store a decoded image (%s): %s", disk.name, e)
            self._count("_disk_errors")

    def note_output(self, output: object, key: str) -> None:
        """``output`` (the object a decode returned) holds the value cached under ``key``: the
        generation cache then stores a reference to that entry instead of a second copy."""
        with self._lock:
            self._recent = {k: v for k, v in self._recent.items() if v[0]() is not None}
            while len(self._recent) >= RECENT_OUTPUTS:
                del self._recent[next(iter(self._recent))]
            self._recent[id(output)] = (weakref.ref(output), key)

    def key_of(self, output: object) -> str | None:
        """The key of a recent decode that returned this very object, else None."""
        with self._lock:
            known = self._recent.get(id(output))
        return known[1] if known is not None and known[0]() is output else None

    def stats(self) -> DecodeCacheStats:
        ram = self.ram.stats()
        disk = self.disk
        with self._lock:
            hits = self._ram_hits + self._disk_hits
            lookups = hits + self._misses
            return DecodeCacheStats(
                ram_hits=self._ram_hits,
                disk_hits=self._disk_hits,
                misses=self._misses,
                stores=self._stores,
                disk_errors=self._disk_errors,
                ram_entries=ram.entries,
                ram_bytes=ram.bytes,
                ram_max_bytes=ram.max_bytes,
                disk_enabled=disk is not None,
                disk_tier=disk.name if disk is not None else None,
                hit_rate=(hits / lookups) if lookups else None,
            )
