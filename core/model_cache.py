"""The shared, content-addressed model cache on the network volume.

Layout (all under ``root``)::

    blobs/<d[:2]>/<digest><suffix>    the files, named by content identity
    meta/<d[:2]>/<digest>.json        source, version (ETag or sha256), size, sha256; mtime = last use
    locks/<digest>.lock               O_EXCL lock while one process fetches the entry
    leases/<digest>/<host>-<pid>-<n>  "in use" markers: eviction never removes a leased entry

``digest`` is ``sha256(source + "\\n" + version)`` where version is the remote ETag, or the content
sha256 itself when a source publishes one, so several ComfyUI processes on several pods sharing the
volume fetch each object once. Publishing is: unique temp file → fsync → verify size/sha256 →
``os.replace``. Size is capped: least-recently-used entries that are neither leased nor pinned are
evicted, and an eviction is a plan that can be shown before it runs. The key, entry, stats and plan
values are in :mod:`podkit.core.model_cache_types`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .errors import CorruptFile, InsufficientStorage, InvalidRequest
from .fsutil import fsync_dir, sha256_file
from .locks import HOSTNAME, FileLock, holder_is_dead, pid_alive
from .model_cache_types import CacheEntry, CacheKey, CacheStats, EvictionPlan

logger = logging.getLogger(__name__)

#: Bytes kept free on the volume beyond what a download needs.
FREE_SPACE_RESERVE = 256 * 2**20
#: Seconds between refreshes of an entry's last-use time (the LRU's resolution).
TOUCH_INTERVAL = 60.0
_HOST_TAG = HOSTNAME.replace(".", "_") or "host"


@dataclass
class _Counters:
    hits: int = 0
    misses: int = 0
    waits: int = 0
    evictions: int = 0
    evicted_bytes: int = 0
    fetched_bytes: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


Fetch = Callable[[Path], "str | None"]
"""Writes the entry's bytes to the given temp path; may return the sha256 it computed on the way."""


class ModelCache:
    """Content-addressed files shared by every process that mounts ``root``.

    Args:
        root: the cache folder (on the network volume when there is one).
        max_bytes: size cap; least-recently-used unleased, unpinned entries go first.
        stale_lock_after: seconds without heartbeat before another host takes a fetch lock over.
        lease_ttl: seconds after which a lease from another host no longer protects an entry.
    """

    def __init__(
        self,
        root: Path,
        *,
        max_bytes: int,
        stale_lock_after: float = 30.0,
        lease_ttl: float = 6 * 3600,
    ) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self.stale_lock_after = stale_lock_after
        self.lease_ttl = lease_ttl
        self._counters = _Counters()
        self._lease_seq = 0
        self._lease_lock = threading.Lock()

    # ----------------------------------------------------------------- paths
    def blob_path(self, key: CacheKey) -> Path:
        return self.root / "blobs" / key.digest[:2] / f"{key.digest}{key.suffix}"

    def _meta_path(self, digest: str) -> Path:
        return self.root / "meta" / digest[:2] / f"{digest}.json"

    def _lock_path(self, digest: str) -> Path:
        return self.root / "locks" / f"{digest}.lock"

    def _lease_dir(self, digest: str) -> Path:
        return self.root / "leases" / digest

    # ----------------------------------------------------------------- reads
    def lookup(self, key: CacheKey) -> Path | None:
        """The published file for ``key``, or None. Counts nothing and touches nothing."""
        return self.blob_path(key) if self._last_used(key) is not None else None

    def use(self, key: CacheKey) -> Path | None:
        """Like :meth:`lookup`, but a use: counted as a hit, and the entry's LRU clock refreshed
        (at most once a minute), so entries read often are the last evicted."""
        used = self._last_used(key)
        if used is None:
            return None
        self._hit(key, used)
        return self.blob_path(key)

    def _last_used(self, key: CacheKey) -> float | None:
        try:
            used = self._meta_path(key.digest).stat().st_mtime
        except FileNotFoundError:
            return None
        return used if self.blob_path(key).is_file() else None

    def _hit(self, key: CacheKey, used: float, *, waited: bool = False) -> None:
        # The LRU clock is the meta file's mtime. Refresh it at most once a minute: on a network
        # volume every write is a round trip, and a warm hit should cost two stats, nothing more.
        if time.time() - used > TOUCH_INTERVAL:
            self._touch(key.digest)
        self._count(hits=1, waits=1 if waited else 0)

    def _read_meta(self, digest: str) -> dict[str, object] | None:
        try:
            data = json.loads(self._meta_path(digest).read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def _touch(self, digest: str) -> None:
        with contextlib.suppress(OSError):
            os.utime(self._meta_path(digest))

    def _count(self, **deltas: int) -> None:
        c = self._counters
        with c.lock:
            for name, delta in deltas.items():
                setattr(c, name, getattr(c, name) + delta)

    # ----------------------------------------------------------------- leases
    @contextlib.contextmanager
    def lease(self, key: CacheKey) -> Iterator[None]:
        """Mark ``key`` in use for the duration of the block (eviction skips it)."""
        with self._lease_lock:
            self._lease_seq += 1
            seq = self._lease_seq
        d = self._lease_dir(key.digest)
        d.mkdir(parents=True, exist_ok=True)
        marker = d / f"{HOSTNAME}-{os.getpid()}-{seq}-{uuid.uuid4().hex[:6]}"
        marker.write_text(json.dumps({"host": HOSTNAME, "pid": os.getpid()}))
        try:
            yield
        finally:
            marker.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                d.rmdir()  # only succeeds when no other lease remains

    def in_use(self, digest: str) -> bool:
        """True while some live process holds a lease on ``digest``."""
        d = self._lease_dir(digest)
        try:
            markers = list(d.iterdir())
        except FileNotFoundError:
            return False
        now = time.time()
        live = False
        for m in markers:
            try:
                info = json.loads(m.read_text())
                mtime = m.stat().st_mtime
            except (OSError, ValueError):
                continue
            if holder_is_dead(info if isinstance(info, dict) else {}, mtime, self.lease_ttl, now):
                m.unlink(missing_ok=True)  # a crashed process's lease
            else:
                live = True
        return live

    # ----------------------------------------------------------------- fetch
    def ensure(
        self,
        key: CacheKey,
        fetch: Fetch,
        *,
        size: int | None = None,
        sha256: str | None = None,
        on_wait: Callable[[], None] | None = None,
        lock_timeout: float | None = None,
    ) -> Path:
        """Return the local file for ``key``, fetching it once across all processes.

        Args:
            key: the entry's identity.
            fetch: writes the bytes to a temp path; called at most once here, under the key's lock.
            size: the expected size in bytes, checked before publishing (and for free space).
            sha256: the expected sha256, checked before publishing.
            on_wait: called periodically while another process fetches the same key.
            lock_timeout: give up waiting for another fetcher after this many seconds.

        Raises:
            InsufficientStorage: not enough free space even after evicting what may be evicted.
            CorruptFile: the fetched bytes have the wrong size or sha256 (nothing is published).
            Exception: whatever ``fetch`` raised (nothing is published, no temp file is left).
        """
        blob = self.blob_path(key)
        used = self._last_used(key)
        if used is not None:
            self._hit(key, used)
            return blob
        waited = False

        def waiting() -> None:
            nonlocal waited
            waited = True
            if on_wait is not None:
                on_wait()

        lock = FileLock(self._lock_path(key.digest), stale_after=self.stale_lock_after)
        lock.acquire(timeout=lock_timeout, on_wait=waiting)
        try:
            used = self._last_used(key)
            if used is not None:  # another process fetched it while we waited
                self._hit(key, used, waited=waited)
                return blob
            self._count(misses=1)
            if size is not None:
                self._make_room(size, protect=key.digest)
            blob.parent.mkdir(parents=True, exist_ok=True)
            # Unique per process *and* attempt: a crashed fetch can never be mistaken for ours.
            tmp = blob.with_name(f"{blob.name}.{_HOST_TAG}.{os.getpid()}.{uuid.uuid4().hex[:8]}.incomplete")
            try:
                got_sha = fetch(tmp)
                actual = tmp.stat().st_size
                if size is not None and actual != size:
                    raise CorruptFile(f"{key.source or key.digest}: got {actual} bytes, expected {size}")
                got_sha = (got_sha or sha256_file(tmp)).lower()
                if sha256 is not None and got_sha != sha256.lower():
                    raise CorruptFile(f"{key.source or key.digest}: sha256 {got_sha} does not match {sha256}")
                with open(tmp, "rb+") as f:
                    os.fsync(f.fileno())
                self._write_meta(key, actual, got_sha)
                os.replace(tmp, blob)
                fsync_dir(blob.parent)
            finally:
                tmp.unlink(missing_ok=True)
            self._count(fetched_bytes=actual)
        finally:
            lock.release()
        self.enforce_cap(protect=key.digest)
        return blob

    def _write_meta(self, key: CacheKey, size: int, sha: str) -> None:
        meta = self._meta_path(key.digest)
        meta.parent.mkdir(parents=True, exist_ok=True)
        record = {
            "digest": key.digest,
            "suffix": key.suffix,
            "source": key.source,
            "version": key.version,
            "size": size,
            "sha256": sha,
            "created": time.time(),
            "pinned": False,
        }
        tmp = meta.with_name(f"{meta.name}.{uuid.uuid4().hex[:8]}.tmp")
        tmp.write_text(json.dumps(record))
        os.replace(tmp, meta)

    def pin(self, key: CacheKey, pinned: bool = True) -> None:
        """Exclude ``key`` from eviction (files placed for ComfyUI's loaders, for instance)."""
        record = self._read_meta(key.digest)
        if record is None:
            raise InvalidRequest(f"{key.digest} is not in the cache")
        record["pinned"] = pinned
        meta = self._meta_path(key.digest)
        tmp = meta.with_name(f"{meta.name}.{uuid.uuid4().hex[:8]}.tmp")
        tmp.write_text(json.dumps(record))
        os.replace(tmp, meta)

    # ----------------------------------------------------------------- inspection
    def entries(self) -> list[CacheEntry]:
        """Every published entry, least recently used first."""
        out: list[CacheEntry] = []
        meta_root = self.root / "meta"
        if not meta_root.is_dir():
            return out
        for meta in meta_root.glob("*/*.json"):
            try:
                record = json.loads(meta.read_text())
                last_used = meta.stat().st_mtime
            except (OSError, ValueError):
                continue
            if not isinstance(record, dict):
                continue
            digest = str(record.get("digest", ""))
            blob = self.root / "blobs" / digest[:2] / f"{digest}{record.get('suffix', '')}"
            if not blob.is_file():
                continue
            size = record.get("size")
            sha = record.get("sha256")
            created = record.get("created")
            out.append(
                CacheEntry(
                    digest=digest,
                    path=blob,
                    size=size if isinstance(size, int) else blob.stat().st_size,
                    source=str(record.get("source", "")),
                    version=str(record.get("version", "")),
                    sha256=sha if isinstance(sha, str) else None,
                    created=float(created) if isinstance(created, (int, float)) else last_used,
                    last_used=last_used,
                    pinned=bool(record.get("pinned", False)),
                    in_use=self.in_use(digest),
                )
            )
        out.sort(key=lambda e: e.last_used)
        return out

    def stats(self) -> CacheStats:
        entries = self.entries()
        c = self._counters
        with c.lock:
            hits, misses, waits = c.hits, c.misses, c.waits
            evictions, evicted, fetched = c.evictions, c.evicted_bytes, c.fetched_bytes
        try:
            free: int | None = shutil.disk_usage(self.root).free if self.root.exists() else None
        except OSError:
            free = None
        lookups = hits + misses
        return CacheStats(
            entries=len(entries),
            bytes_on_disk=sum(e.size for e in entries),
            max_bytes=self.max_bytes,
            hits=hits,
            misses=misses,
            waits=waits,
            evictions=evictions,
            evicted_bytes=evicted,
            fetched_bytes=fetched,
            hit_rate=(hits / lookups) if lookups else None,
            free_bytes=free,
        )

    # ----------------------------------------------------------------- eviction
    def plan_eviction(self, target_bytes: int | None = None, *, protect: str | None = None) -> EvictionPlan:
        """Which entries to remove so the cache holds at most ``target_bytes`` (no side effects)."""
        target = self.max_bytes if target_bytes is None else max(0, target_bytes)
        entries = self.entries()
        total = sum(e.size for e in entries)
        chosen: list[CacheEntry] = []
        freed = skipped_use = skipped_pin = 0
        for e in entries:
            if total - freed <= target:
                break
            if e.digest == protect:
                continue
            if e.pinned:
                skipped_pin += 1
                continue
            if e.in_use:
                skipped_use += 1
                continue
            chosen.append(e)
            freed += e.size
        return EvictionPlan(tuple(chosen), freed, target, total, skipped_use, skipped_pin)

    def execute(self, plan: EvictionPlan) -> EvictionPlan:
        """Remove the plan's entries that are still unused; return what was actually removed."""
        removed: list[CacheEntry] = []
        for e in plan.entries:
            lock = FileLock(self._lock_path(e.digest), stale_after=self.stale_lock_after)
            if not lock.try_acquire():
                continue  # being fetched or evicted by someone else right now
            try:
                if self.in_use(e.digest) or not e.path.exists():
                    continue
                grave = e.path.with_name(f"{e.path.name}.{uuid.uuid4().hex[:8]}.evicting")
                os.replace(e.path, grave)
                if self.in_use(e.digest):  # a reader leased it between our check and the rename
                    os.replace(grave, e.path)
                    continue
                self._meta_path(e.digest).unlink(missing_ok=True)
                grave.unlink(missing_ok=True)
                removed.append(e)
            finally:
                lock.release()
        freed = sum(e.size for e in removed)
        self._count(evictions=len(removed), evicted_bytes=freed)
        if removed:
            logger.info("evicted %d cache entries (%d bytes)", len(removed), freed)
        return EvictionPlan(
            tuple(removed),
            freed,
            plan.target_bytes,
            plan.bytes_before,
            plan.skipped_in_use,
            plan.skipped_pinned,
        )

    def enforce_cap(self, *, protect: str | None = None) -> EvictionPlan:
        """Evict down to ``max_bytes`` (the just-published ``protect`` entry is kept)."""
        plan = self.plan_eviction(self.max_bytes, protect=protect)
        return self.execute(plan) if plan.entries else plan

    def _make_room(self, size: int, *, protect: str) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        need = size + FREE_SPACE_RESERVE
        free = shutil.disk_usage(self.root).free
        if free >= need:
            return
        current = sum(e.size for e in self.entries())
        self.execute(self.plan_eviction(max(0, current - (need - free)), protect=protect))
        free = shutil.disk_usage(self.root).free
        if free < need:
            raise InsufficientStorage(
                f"not enough space in {self.root}: {size} bytes needed (+{FREE_SPACE_RESERVE} reserve), "
                f"{free} free after evicting unused entries"
            )

    def clean_temp_files(self, older_than: float = 3600.0) -> int:
        """Remove ``*.incomplete``/``*.evicting`` leftovers of crashed processes; return how many."""
        removed = 0
        now = time.time()
        blobs = self.root / "blobs"
        if not blobs.is_dir():
            return 0
        for p in blobs.glob("*/*"):
            if p.suffix not in (".incomplete", ".evicting"):
                continue
            parts = p.name.split(".")
            mine_dead = False
            with contextlib.suppress(ValueError, IndexError):
                host, pid = parts[-4], int(parts[-3])
                mine_dead = p.suffix == ".incomplete" and host == _HOST_TAG and not pid_alive(pid)
            with contextlib.suppress(OSError):
                if mine_dead or now - p.stat().st_mtime > older_than:
                    p.unlink()
                    removed += 1
        return removed
