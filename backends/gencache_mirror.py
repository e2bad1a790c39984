"""The generation cache's bucket mirror: entries under a bucket prefix, for pods without the volume.

A local miss asks the bucket; what comes back is published into the local store only after it is
verified (size and the sha256 the uploading pod recorded, a valid safetensors header, and the
entry's own digest inside it), so a corrupt or foreign object is refused, never served. A local
store is uploaded afterwards on the mirror's own thread: the prompt never waits for the bucket,
and a failed upload is logged and counted, the local entry stays. After the bucket could not be
reached, it is left alone for a while (lookups would otherwise pay the retries on every node).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from pathlib import Path

from ..core.errors import (
    CorruptFile,
    InsufficientStorage,
    ObjectChanged,
    ObjectNotFound,
    PodKitError,
    TransferFailed,
)
from ..core.fsutil import sha256_file
from ..core.gencache import GenerationStats, mirror_key
from ..core.model_cache import ModelCache
from ..core.model_cache_types import CacheKey
from ..core.objects import ObjectMeta, ObjectRef, ObjectStore

logger = logging.getLogger(__name__)
CONTENT_TYPE = "application/octet-stream"
#: uploads waiting at most; beyond it new ones are dropped (and counted as errors)
MAX_PENDING = 256

Verify = Callable[[Path], None]
"""Checks a downloaded entry before it is published; raises CorruptFile when it is not one."""


class BucketMirror:
    """Entries of a :class:`~podkit.backends.gencache_store.GenerationStore` under ``root``'s prefix."""

    def __init__(
        self, store: ObjectStore, root: ObjectRef, stats: GenerationStats, *, retry_after: float = 30.0
    ) -> None:
        self.store = store
        self.root = root
        self.stats = stats
        self.retry_after = retry_after
        self._down_until = 0.0
        self._lock = threading.Lock()
        self._uploader = ThreadPoolExecutor(1, thread_name_prefix="podkit-gencache-mirror")
        self._pending: list[Future[None]] = []

    def ref(self, digest: str) -> ObjectRef:
        return ObjectRef(self.root.bucket, mirror_key(self.root.key, digest))

    # ----------------------------------------------------------------- health
    def available(self) -> bool:
        """False for ``retry_after`` seconds after the bucket could not be reached."""
        return time.monotonic() >= self._down_until

    def _failed(self, what: str, error: Exception) -> None:
        self.stats.count_bucket("bucket_errors")
        with self._lock:
            tripped = self.available()
            self._down_until = time.monotonic() + self.retry_after
        if tripped:
            logger.warning(
                "generation cache: bucket %s unusable (%s: %s); retrying in %.0f s",
                self.root.uri, what, error, self.retry_after,
            )  # fmt: skip

    # ----------------------------------------------------------------- lookups
    def fetch(self, digest: str, cache: ModelCache, key: CacheKey, verify: Verify) -> Path | None:
        """The entry from the bucket, published into ``cache`` under ``key``; None when the bucket
        has none, it is refused, or the bucket cannot be reached."""
        if not self.available():
            return None
        ref = self.ref(digest)
        try:
            meta = self.store.head(ref)
            if meta.sha256 is None:
                raise CorruptFile(f"{ref}: no recorded sha256")
            path = cache.ensure(key, self._download(meta, verify), size=meta.size, sha256=meta.sha256)
        except ObjectNotFound:
            self.stats.count_bucket("bucket_misses")
            return None
        except (CorruptFile, TransferFailed) as e:
            if isinstance(e, ObjectChanged):  # replaced while we read it: another pod's upload
                self.stats.count_bucket("bucket_misses")
                return None
            self.stats.count_bucket("bucket_refused")
            logger.warning("generation cache: refused %s from the bucket: %s", digest[:12], e)
            return None
        except InsufficientStorage as e:  # the volume is full, the bucket is fine
            self.stats.count_bucket("bucket_errors")
            logger.warning("generation cache: no room for %s from the bucket: %s", digest[:12], e)
            return None
        except (PodKitError, OSError) as e:
            self._failed("lookup", e)
            return None
        self.stats.count_bucket("bucket_hits")
        return path

    def _download(self, meta: ObjectMeta, verify: Verify) -> Callable[[Path], str]:
        def fetch(tmp: Path) -> str:
            sha = self.store.download_verified(meta, tmp)
            verify(tmp)
            return sha

        return fetch

    # ----------------------------------------------------------------- uploads
    def upload_later(self, digest: str, cache: ModelCache, key: CacheKey) -> None:
        """Queue the published entry ``key`` for the bucket (never raises, never waits)."""
        with self._lock:
            self._pending = [f for f in self._pending if not f.done()]
            if len(self._pending) >= MAX_PENDING:
                self.stats.count_bucket("bucket_errors")
                return
            self._pending.append(self._uploader.submit(self._upload, digest, cache, key))

    def _upload(self, digest: str, cache: ModelCache, key: CacheKey) -> None:
        if not self.available():
            self.stats.count_bucket("bucket_errors")  # not attempted: the entry stays local only
            return
        ref = self.ref(digest)
        try:
            with cache.lease(key):  # eviction leaves it alone while it is read
                path = cache.lookup(key)
                if path is None or self._present(ref):
                    return  # evicted meanwhile, or another pod uploaded it first
                sha = sha256_file(path)
                self.store.upload_file(path, ref, content_type=CONTENT_TYPE, metadata={"sha256": sha})
        except (PodKitError, OSError) as e:
            self._failed("upload", e)
            return
        self.stats.count_bucket("bucket_uploads")

    def _present(self, ref: ObjectRef) -> bool:
        try:
            return self.store.head(ref).sha256 is not None
        except ObjectNotFound:
            return False

    def flush(self, timeout: float | None = None) -> None:
        """Wait for the queued uploads (tests, the bench, shutdown)."""
        with self._lock:
            pending = list(self._pending)
        wait(pending, timeout=timeout)

    def close(self) -> None:
        self._uploader.shutdown(wait=False, cancel_futures=True)
