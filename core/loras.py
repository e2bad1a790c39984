"""The LoRA library: the bucket listing, ETag fingerprints, and bucket → cache → local file.

The node adapter (``nodes/lora_loader.py``) turns the local file into a state dict and applies it;
everything that decides *which* bytes to use lives here, testable without ComfyUI.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .errors import CorruptFile, InvalidRequest, ObjectChanged, PodKitError
from .model_cache import ModelCache
from .model_cache_types import CacheKey
from .objects import ObjectMeta, ObjectRef, ObjectStore, ProgressFn, parse_object_uri
from .safetensors_info import SafetensorsInfo, read_safetensors_info

logger = logging.getLogger(__name__)

LORA_SUFFIXES = (".safetensors", ".sft")


@dataclass(frozen=True)
class LocalLora:
    ref: ObjectRef
    meta: ObjectMeta
    key: CacheKey
    path: Path
    info: SafetensorsInfo


@dataclass(frozen=True)
class Listing:
    items: tuple[ObjectMeta, ...]
    fetched_at: float | None
    error: str | None = None

    def to_wire(self) -> dict[str, object]:
        return {
            "items": [m.to_wire() for m in self.items],
            "fetched_at": self.fetched_at,
            "error": self.error,
        }


class LoraLibrary:
    """LoRAs in one bucket, fetched through the shared model cache.

    Args:
        store: where the LoRAs live.
        cache: the shared model cache.
        bucket: the LoRA bucket (bare keys resolve here).
        etag_ttl: seconds a HEAD answer is reused (fingerprints run on every queued prompt).
        listing_ttl: seconds a bucket listing is reused.
    """

    def __init__(
        self,
        store: ObjectStore,
        cache: ModelCache,
        bucket: str,
        *,
        etag_ttl: float = 10.0,
        listing_ttl: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.cache = cache
        self.bucket = bucket
        self.etag_ttl = etag_ttl
        self.listing_ttl = listing_ttl
        self._clock = clock
        self._lock = threading.Lock()
        self._heads: dict[ObjectRef, tuple[float, ObjectMeta]] = {}
        self._listing = Listing((), None)
        self._listing_at: float | None = None
        self._infos: dict[str, SafetensorsInfo] = {}

    # ----------------------------------------------------------------- listing
    def refresh_listing(self) -> Listing:
        """List the bucket now (blocking); on failure keep the last good list and record the error."""
        try:
            items = [
                m
                for m in self.store.list(self.bucket)
                if m.ref.key.lower().endswith(LORA_SUFFIXES) and m.size > 0
            ]
        except PodKitError as e:
            with self._lock:
                self._listing = Listing(self._listing.items, self._listing.fetched_at, str(e))
                self._listing_at = self._clock()
                return self._listing
        with self._lock:
            self._listing = Listing(tuple(items), time.time())
            self._listing_at = self._clock()
            for m in items:  # a listing is as good as a HEAD for the fingerprint TTL
                self._heads[m.ref] = (self._clock(), m)
            return self._listing

    def listing(self, *, max_age: float | None = None) -> Listing:
        """The cached listing, refreshed when older than ``max_age`` (default ``listing_ttl``)."""
        age_limit = self.listing_ttl if max_age is None else max_age
        with self._lock:
            at = self._listing_at
        if at is None or self._clock() - at > age_limit:
            return self.refresh_listing()
        with self._lock:
            return self._listing

    def snapshot(self) -> Listing:
        """The last listing as it is, without touching the network."""
        with self._lock:
            return self._listing

    def cached_names(self) -> list[str]:
        """Keys from the last listing, without touching the network (for the node's combo)."""
        with self._lock:
            return [m.ref.key for m in self._listing.items]

    # ----------------------------------------------------------------- refs
    def resolve(self, name_or_uri: str) -> ObjectRef:
        """``r2://b/k``, ``s3://b/k`` or a key in the LoRA bucket → a validated reference."""
        ref = parse_object_uri(name_or_uri, self.bucket)
        if not ref.key.lower().endswith(LORA_SUFFIXES):
            raise InvalidRequest(f"{ref.uri}: a LoRA must be a .safetensors file")
        return ref

    def head(self, ref: ObjectRef, *, max_age: float | None = None) -> ObjectMeta:
        """HEAD ``ref``, reusing an answer younger than ``max_age`` (default ``etag_ttl``)."""
        limit = self.etag_ttl if max_age is None else max_age
        now = self._clock()
        with self._lock:
            hit = self._heads.get(ref)
        if hit is not None and now - hit[0] <= limit:
            return hit[1]
        meta = self.store.head(ref)
        with self._lock:
            self._heads[ref] = (self._clock(), meta)
        return meta

    def fingerprint(self, ref: ObjectRef) -> str:
        """The object's current ETag (cheap: TTL-cached HEAD); never raises.

        ComfyUI re-runs the loader when this value changes, so a retrained LoRA uploaded under the
        same key is picked up by the next prompt. When the store cannot be reached the last known
        ETag is returned so the cached result stays valid; ``execute`` reports the real error.
        """
        try:
            return self.head(ref).etag
        except PodKitError as e:
            with self._lock:
                hit = self._heads.get(ref)
            return hit[1].etag if hit else f"unavailable:{type(e).__name__}"

    # ----------------------------------------------------------------- fetch
    def ensure_local(
        self,
        ref: ObjectRef,
        *,
        meta: ObjectMeta | None = None,
        on_bytes: ProgressFn | None = None,
        on_wait: Callable[[], None] | None = None,
    ) -> LocalLora:
        """Make ``ref`` available as a verified local file (downloaded at most once per ETag).

        ``meta`` is a fresh HEAD answer the caller already has (saves a request).

        Raises:
            ObjectNotFound: no such object (the message names it).
            AccessDenied / StoreUnavailable: credentials or connectivity.
            CorruptFile: the file is not a valid safetensors LoRA.
        """
        for attempt in (1, 2):
            if attempt == 2 or meta is None:
                meta = self.head(ref, max_age=0 if attempt == 2 else None)
            key = CacheKey.for_source(ref.uri, meta.etag or f"size:{meta.size}", ".safetensors")

            def fetch(tmp: Path, meta: ObjectMeta = meta) -> str | None:
                return self.store.download_verified(meta, tmp, on_bytes=on_bytes)

            try:
                path = self.cache.ensure(key, fetch, size=meta.size, sha256=meta.sha256, on_wait=on_wait)
            except ObjectChanged:
                if attempt == 2:
                    raise
                logger.info("%s changed during download; fetching the new version", ref)
                continue
            info = self._infos.get(key.digest)
            if info is None:
                info = read_safetensors_info(path, label=ref.uri)
                if not info.is_lora:
                    raise CorruptFile(
                        f"{ref.uri}: no LoRA tensors found (expected keys such as '*.lora_up.weight' or "
                        "'*.lora_A.weight'); is this a full checkpoint?"
                    )
                self._infos[key.digest] = info
            return LocalLora(ref, meta, key, path, info)
        raise AssertionError("unreachable")  # pragma: no cover
