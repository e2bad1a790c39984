from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from podkit.core.errors import CorruptFile, InsufficientStorage
from podkit.core.locks import FileLock
from podkit.core.model_cache import ModelCache
from podkit.core.model_cache_types import CacheKey

ROOT = Path(__file__).resolve().parents[2]


def writer(data: bytes, calls: list[int] | None = None):
    def fetch(tmp: Path) -> str | None:
        if calls is not None:
            calls.append(1)
        tmp.write_bytes(data)
        return None

    return fetch


def leftovers(root: Path) -> list[Path]:
    return [
        p for p in root.rglob("*") if p.suffix in (".incomplete", ".evicting", ".tmp") or ".stale-" in p.name
    ]


def test_second_ensure_is_a_hit(tmp_path: Path) -> None:
    cache = ModelCache(tmp_path, max_bytes=10**6)
    key = CacheKey.for_source("r2://b/x.safetensors", '"etag1"', ".safetensors")
    calls: list[int] = []
    p1 = cache.ensure(key, writer(b"abc", calls), size=3)
    p2 = cache.ensure(key, writer(b"abc", calls), size=3)
    assert p1 == p2 and p1.read_bytes() == b"abc" and p1.suffix == ".safetensors"
    assert len(calls) == 1
    s = cache.stats()
    assert (s.entries, s.bytes_on_disk, s.hits, s.misses) == (1, 3, 1, 1)
    (entry,) = cache.entries()
    assert entry.sha256 == hashlib.sha256(b"abc").hexdigest()
    assert entry.source == "r2://b/x.safetensors"


def test_new_etag_is_a_new_entry(tmp_path: Path) -> None:
    cache = ModelCache(tmp_path, max_bytes=10**6)
    a = cache.ensure(CacheKey.for_source("s", "v1"), writer(b"one"))
    b = cache.ensure(CacheKey.for_source("s", "v2"), writer(b"two"))
    assert a != b and a.read_bytes() == b"one" and b.read_bytes() == b"two"


def test_size_and_sha_mismatch_publish_nothing(tmp_path: Path) -> None:
    cache = ModelCache(tmp_path, max_bytes=10**6)
    key = CacheKey.for_source("s", "v")
    with pytest.raises(CorruptFile, match="got 3 bytes, expected 4"):
        cache.ensure(key, writer(b"abc"), size=4)
    with pytest.raises(CorruptFile, match="sha256"):
        cache.ensure(key, writer(b"abc"), sha256="0" * 64)
    assert cache.lookup(key) is None
    assert leftovers(tmp_path) == []
    assert not list((tmp_path / "locks").iterdir())


def test_fetch_error_leaves_nothing(tmp_path: Path) -> None:
    cache = ModelCache(tmp_path, max_bytes=10**6)

    def boom(tmp: Path) -> str | None:
        tmp.write_bytes(b"partial")
        raise ConnectionError("store went away")

    with pytest.raises(ConnectionError):
        cache.ensure(CacheKey.for_source("s", "v"), boom)
    assert leftovers(tmp_path) == [] and cache.entries() == []


def test_lru_eviction_respects_leases_and_pins(tmp_path: Path) -> None:
    cache = ModelCache(tmp_path, max_bytes=250)
    keys = [CacheKey.for_source("s", f"v{i}") for i in range(3)]
    for i, k in enumerate(keys):
        cache.ensure(k, writer(bytes([i]) * 100))
        os.utime(cache._meta_path(k.digest), (1000 + i, 1000 + i))  # deterministic LRU order
    # 300 bytes > 250: publishing the third evicted the least recently used (keys[0])
    assert cache.lookup(keys[0]) is None and cache.stats().evictions == 1
    cache.ensure(keys[0], writer(b"\x00" * 100))  # back again, now the most recent
    assert cache.lookup(keys[1]) is None
    with cache.lease(keys[2]):
        plan = cache.plan_eviction(0)
        assert keys[2].digest not in {e.digest for e in plan.entries} and plan.skipped_in_use == 1
        cache.execute(plan)
        assert cache.lookup(keys[2]) is not None
    cache.pin(keys[2])
    plan = cache.plan_eviction(0)
    assert plan.skipped_pinned == 1 and plan.entries == ()
    assert cache.lookup(keys[0]) is None  # it was evicted by the execute above


def test_use_is_a_hit_that_keeps_an_entry_from_eviction(tmp_path: Path) -> None:
    cache = ModelCache(tmp_path, max_bytes=10**6)
    old, new = (CacheKey.for_source("s", f"v{i}") for i in range(2))
    for i, k in enumerate((old, new)):
        cache.ensure(k, writer(b"x" * 100))
        os.utime(cache._meta_path(k.digest), (1000 + i, 1000 + i))
    assert cache.lookup(old) is not None  # a lookup touches nothing: `old` is still the LRU entry
    assert [e.digest for e in cache.plan_eviction(150).entries] == [old.digest]
    hits = cache.stats().hits
    assert cache.use(old) == cache.blob_path(old) and cache.stats().hits == hits + 1
    assert [e.digest for e in cache.plan_eviction(150).entries] == [new.digest]
    assert cache.use(CacheKey.for_source("s", "absent")) is None


def test_dry_run_plan_has_no_side_effects(tmp_path: Path) -> None:
    cache = ModelCache(tmp_path, max_bytes=10**6)
    for i in range(3):
        cache.ensure(CacheKey.for_source("s", f"v{i}"), writer(b"x" * 10))
    plan = cache.plan_eviction(15)
    assert plan.freed_bytes == 20 and len(plan.entries) == 2
    assert cache.stats().entries == 3
    assert cache.execute(plan).freed_bytes == 20 and cache.stats().entries == 1


def test_not_enough_disk_is_a_clear_error(tmp_path: Path) -> None:
    cache = ModelCache(tmp_path, max_bytes=10**18)
    with pytest.raises(InsufficientStorage, match="not enough space"):
        cache.ensure(CacheKey.for_source("s", "v"), writer(b""), size=10**17)
    assert leftovers(tmp_path) == []


def test_threads_share_one_fetch(tmp_path: Path) -> None:
    cache = ModelCache(tmp_path, max_bytes=10**6)
    key = CacheKey.for_source("s", "v")
    calls: list[int] = []

    def slow(tmp: Path) -> str | None:
        calls.append(1)
        time.sleep(0.3)
        tmp.write_bytes(b"data")
        return None

    results: list[Path] = []
    threads = [threading.Thread(target=lambda: results.append(cache.ensure(key, slow))) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len(set(results)) == 1 and len(results) == 5


def test_stale_lock_of_dead_process_is_taken_over(tmp_path: Path) -> None:
    lock_path = tmp_path / "x.lock"
    proc = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    dead_pid = int(proc.stdout)
    import socket

    lock_path.write_text(json.dumps({"host": socket.gethostname(), "pid": dead_pid, "token": "t", "time": 0}))
    lock = FileLock(lock_path, stale_after=60)
    t0 = time.monotonic()
    lock.acquire(timeout=5)
    assert time.monotonic() - t0 < 2
    lock.release()
    assert not lock_path.exists() and leftovers(tmp_path) == []


def test_stale_lock_of_other_host_needs_silence(tmp_path: Path) -> None:
    lock_path = tmp_path / "x.lock"
    lock_path.write_text(json.dumps({"host": "other-pod", "pid": 1, "token": "t", "time": 0}))
    lock = FileLock(lock_path, stale_after=0.5)
    assert not lock.try_acquire()  # fresh heartbeat: still held
    old = time.time() - 5
    os.utime(lock_path, (old, old))
    assert lock.try_acquire()
    lock.release()


CHILD = r"""
import sys, time
from pathlib import Path
root, cache_dir, log, data_len = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4])
sys.path.insert(0, str(root / "tests" / "support"))
from podkit_import import register_package
register_package()
from podkit.core.model_cache import ModelCache
from podkit.core.model_cache_types import CacheKey
cache = ModelCache(cache_dir, max_bytes=10**9, stale_lock_after=5)
def fetch(tmp):
    with open(log, "a") as f:
        f.write("fetch\n")
    with open(tmp, "wb") as f:
        for _ in range(10):
            f.write(b"z" * (data_len // 10)); f.flush(); time.sleep(0.05)
    return None
path = cache.ensure(CacheKey.for_source("r2://b/model.safetensors", "e1", ".safetensors"), fetch, size=data_len)
print(path, path.stat().st_size)
"""


def test_processes_share_one_download(tmp_path: Path) -> None:
    cache_dir, log = tmp_path / "cache", tmp_path / "fetches.log"
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(ROOT), str(cache_dir), str(log), "1000000"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    outs = [p.communicate(timeout=60) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1] for o in outs]
    assert log.read_text().count("fetch") == 1
    assert len({o[0] for o in outs}) == 1 and outs[0][0].split()[1] == "1000000"
    assert leftovers(cache_dir) == []
    assert not list((cache_dir / "locks").iterdir())


def test_hits_refresh_last_use_at_most_once_a_minute(tmp_path: Path) -> None:
    cache = ModelCache(tmp_path, max_bytes=10**6)
    key = CacheKey.for_source("s", "v")
    cache.ensure(key, writer(b"abc"))
    meta = cache._meta_path(key.digest)
    os.utime(meta, (1000, 1000))
    cache.ensure(key, writer(b"abc"))  # old last-use: refreshed
    refreshed = meta.stat().st_mtime
    assert refreshed > time.time() - 60
    os.utime(meta, (refreshed - 30, refreshed - 30))
    cache.ensure(key, writer(b"abc"))  # used 30 s ago: no write
    assert meta.stat().st_mtime == refreshed - 30
    assert cache.stats().hits == 2
