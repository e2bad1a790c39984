"""The values of the model cache: entry keys, listed entries, statistics and eviction plans.

:class:`CacheKey` is how callers (LoRAs, the decode cache, the generation cache) name an entry;
:class:`CacheEntry`, :class:`CacheStats` and :class:`EvictionPlan` are what
:class:`~podkit.core.model_cache.ModelCache` reports. Plain frozen dataclasses with no file system
access, kept apart from the cache's locking, leasing and eviction logic in
:mod:`podkit.core.model_cache`.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import InvalidRequest


@dataclass(frozen=True)
class CacheKey:
    """The identity of one cache entry."""

    digest: str
    suffix: str = ""
    source: str = ""
    version: str = ""

    @classmethod
    def for_source(cls, source: str, version: str, suffix: str = "") -> CacheKey:
        """Key for ``source`` (e.g. ``r2://bucket/key``) at ``version`` (its ETag)."""
        if not source or not version:
            raise InvalidRequest("a cache key needs a source and a version")
        digest = hashlib.sha256(f"{source}\n{version}".encode()).hexdigest()
        return cls(digest, _clean_suffix(suffix), source, version)

    @classmethod
    def for_sha256(cls, sha256: str, suffix: str = "", source: str = "") -> CacheKey:
        """Key for content with a known sha256 (the same bytes from any source share it)."""
        sha = sha256.lower()
        if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
            raise InvalidRequest(f"{sha256!r} is not a sha256 hex digest")
        return cls(sha, _clean_suffix(suffix), source, f"sha256:{sha}")


def _clean_suffix(suffix: str) -> str:
    if not suffix:
        return ""
    if not suffix.startswith(".") or len(suffix) > 16 or not suffix[1:].isalnum():
        raise InvalidRequest(f"invalid file suffix {suffix!r}")
    return suffix.lower()


@dataclass(frozen=True)
class CacheEntry:
    digest: str
    path: Path
    size: int
    source: str
    version: str
    sha256: str | None
    created: float
    last_used: float
    pinned: bool = False
    in_use: bool = False

    def to_wire(self) -> dict[str, object]:
        d = asdict(self)
        d["path"] = str(self.path)
        return d


@dataclass(frozen=True)
class CacheStats:
    entries: int
    bytes_on_disk: int
    max_bytes: int
    hits: int
    misses: int
    waits: int
    evictions: int
    evicted_bytes: int
    fetched_bytes: int
    hit_rate: float | None
    free_bytes: int | None


@dataclass(frozen=True)
class EvictionPlan:
    """Entries an eviction would remove (least recently used first), and what it frees."""

    entries: tuple[CacheEntry, ...]
    freed_bytes: int
    target_bytes: int
    bytes_before: int
    skipped_in_use: int = 0
    skipped_pinned: int = 0

    def to_wire(self) -> dict[str, object]:
        return {
            "entries": [
                {"digest": e.digest, "source": e.source, "size": e.size, "last_used": e.last_used}
                for e in self.entries
            ],
            "freed_bytes": self.freed_bytes,
            "target_bytes": self.target_bytes,
            "bytes_before": self.bytes_before,
            "skipped_in_use": self.skipped_in_use,
            "skipped_pinned": self.skipped_pinned,
        }
