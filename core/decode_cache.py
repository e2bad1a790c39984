"""The decoded-image cache: a byte-bounded RAM LRU in front of an optional disk tier (pure rules).

A key is ``sha256`` over the latent's digest, the VAE weights' fingerprint and every decode
setting that changes the pixels (the method, and the tile settings of a fallback decode), so two
workflows that decode the same latent with the same VAE share one entry. The RAM tier holds the
decoded values themselves; the disk tier is a blob per key in the shared model cache (its LRU,
leases and size cap apply), written and read through callables the torch side provides.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Generic, TypeVar

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
    hit_rate: float | None

    def to_wire(self) -> dict[str, object]:
        return asdict(self)


class DecodeCache(Generic[V]):
    """RAM LRU of decoded values, with an optional disk tier in the model cache.

    Args:
        ram_bytes: size cap of the RAM tier.
        disk: the model cache holding the disk tier, or None for RAM only.
        suffix: file suffix of the disk blobs.
    """

    def __init__(self, ram_bytes: int, disk: ModelCache | None = None, *, suffix: str = ".npy") -> None:
        self.ram: ByteLRU[V] = ByteLRU(ram_bytes)
        self.disk = disk
        self.suffix = suffix
        self._lock = threading.Lock()
        self._ram_hits = self._disk_hits = self._misses = self._stores = self._disk_errors = 0

    def _disk_key(self, key: str) -> CacheKey:
        if len(key) != 64 or not set(key) <= _HEX:
            raise InvalidRequest(f"{key!r} is not a decode cache key")
        return CacheKey.for_source(f"podkit-decode:{key}", f"v{FORMAT_VERSION}", self.suffix)

    def _count(self, name: str) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + 1)

    def get(self, key: str, load: Callable[[Path], tuple[V, int]] | None = None) -> tuple[V, str] | None:
        """``(value, "ram" | "disk")`` for ``key``, from RAM, else from disk (then kept in RAM), else None.

        ``load(path) -> (value, size)`` reads a disk blob; a blob that fails to load counts as a miss.
        """
        disk_key = self._disk_key(key)
        value = self.ram.get(key)
        if value is not None:
            self._count("_ram_hits")
            return value, "ram"
        if self.disk is not None and load is not None:
            path = self.disk.lookup(disk_key)
            if path is not None:
                try:
                    with self.disk.lease(disk_key):
                        value, size = load(path)
                except (OSError, ValueError, PodKitError) as e:
                    logger.warning("PodKit decode cache: cannot read %s: %s", path.name, e)
                    self._count("_disk_errors")
                else:
                    self.ram.put(key, value, size)
                    self._count("_disk_hits")
                    return value, "disk"
        self._count("_misses")
        return None

    def put(self, key: str, value: V, size: int, write: Callable[[Path], None] | None = None) -> None:
        """Keep ``value`` in RAM and, with a disk tier, write it once with ``write(tmp_path)``.

        A failed disk write is logged and counted, never raised: the decode itself succeeded.
        """
        disk_key = self._disk_key(key)
        self.ram.put(key, value, size)
        self._count("_stores")
        if self.disk is None or write is None:
            return

        def fetch(tmp: Path) -> None:
            write(tmp)

        try:
            self.disk.ensure(disk_key, fetch)
        except (OSError, ValueError, PodKitError) as e:
            logger.warning("PodKit decode cache: cannot store a decoded image on disk: %s", e)
            self._count("_disk_errors")

    def stats(self) -> DecodeCacheStats:
        ram = self.ram.stats()
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
                disk_enabled=self.disk is not None,
                hit_rate=(hits / lookups) if lookups else None,
            )
