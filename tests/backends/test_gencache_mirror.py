"""The generation cache's bucket mirror against a real S3 server (Ceph radosgw): a pod without the
volume gets another pod's entry bit for bit; a corrupt or foreign object is refused, not served; a
bucket that is down costs nothing but the copy in the bucket."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import rgw
import torch

from podkit.backends.gencache_mirror import BucketMirror
from podkit.backends.gencache_store import GenerationStore
from podkit.backends.local_store import LocalStore
from podkit.backends.s3_store import S3Store
from podkit.core import model_cache
from podkit.core.gencache import GenerationStats, entry_digest, model_scope
from podkit.core.model_cache import ModelCache
from podkit.core.objects import ObjectRef, ObjectStore
from podkit.core.settings import Settings
from podkit.services import build_generation_store

SCOPE = model_scope({"checkpoints/tiny.safetensors": "ab" * 32})


def digest_of(name: str) -> str:
    return entry_digest(name * 64, SCOPE)


def outputs(seed: int) -> list[Any]:
    """A LATENT, a CONDITIONING (one tensor shared by two places), a string and a number."""
    g = torch.Generator().manual_seed(seed)
    latent = torch.randn(1, 4, 8, 8, generator=g)
    cond = torch.randn(1, 77, 16, generator=g).to(torch.bfloat16)
    pooled = torch.randn(1, 16, generator=g).half()
    return [{"samples": latent}, [[cond, {"pooled_output": pooled, "also": pooled}]], "text", 7]


def assert_identical(a: Any, b: Any) -> None:
    """Equal structure, and tensors equal in dtype, shape and every bit."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape
        assert torch.equal(a.view(torch.uint8), b.view(torch.uint8))
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_identical(x, y)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            assert_identical(a[k], b[k])
    else:
        assert a == b


@pytest.fixture
def s3(s3_server: Any) -> S3Store:
    return S3Store(**s3_server.store_kwargs())


@pytest.fixture
def root(s3: S3Store) -> Iterator[ObjectRef]:
    """A fresh bucket prefix; its objects are deleted afterwards."""
    bucket = f"gencache-{uuid.uuid4().hex[:10]}"
    s3.ensure_bucket(bucket)
    yield ObjectRef(bucket, "pods/gencache")
    for meta in s3.list(bucket):
        s3.delete(meta.ref)


Pod = tuple[GenerationStore, BucketMirror]


@pytest.fixture
def pod(tmp_path: Path) -> Iterator[Any]:
    """``pod(name, store, root)``: a generation store on its own empty volume, mirrored to ``root``."""
    mirrors: list[BucketMirror] = []

    def make(name: str, store: ObjectStore, root: ObjectRef, **kw: Any) -> Pod:
        mirror = BucketMirror(store, root, GenerationStats(), **kw)
        mirrors.append(mirror)
        return GenerationStore(ModelCache(tmp_path / name, max_bytes=2**30), mirror=mirror), mirror

    yield make
    for mirror in mirrors:
        mirror.close()


def leftovers(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.endswith((".incomplete", ".tmp"))]


def test_a_pod_without_the_volume_gets_the_entry_from_the_bucket(
    s3: S3Store, root: ObjectRef, pod: Any
) -> None:
    a, mirror_a = pod("pod-a", s3, root)
    value, ui = outputs(1), {"text": ["hello"]}
    digest = digest_of("a")
    assert a.save(digest, value, ui) > 0  # published on A's volume at once
    mirror_a.flush(timeout=60)
    assert a.stats.bucket["bucket_uploads"] == 1
    assert s3.head(mirror_a.ref(digest)).sha256 is not None

    b, _ = pod("pod-b", s3, root)
    found = b.load(digest)
    assert found is not None
    assert_identical(found[0], value) and found[1] == ui
    assert b.stats.bucket["bucket_hits"] == 1
    assert b.cache.lookup(b.key(digest)) is not None  # now on B's volume: the next load stays local
    assert_identical(b.load(digest)[0], value)  # type: ignore[index]
    assert b.stats.bucket["bucket_hits"] == 1

    # an entry nobody stored is a miss on the volume and in the bucket
    assert b.load(digest_of("c")) is None and b.stats.bucket["bucket_misses"] == 1
    assert b.stats.totals()["bucket_misses"] == 1


def corrupt_bytes(s3: S3Store, mirror: BucketMirror, digest: str, other: str) -> None:
    """The bytes change, the recorded sha256 stays (a damaged object)."""
    ref = mirror.ref(digest)
    data = bytearray(s3.get_bytes(ref))
    data[-1] ^= 0xFF
    s3.put_bytes(bytes(data), ref, content_type="application/octet-stream", metadata=s3.head(ref).metadata)


def no_checksum(s3: S3Store, mirror: BucketMirror, digest: str, other: str) -> None:
    """Intact bytes, but not uploaded by PodKit (no sha256 recorded): unverifiable."""
    ref = mirror.ref(digest)
    s3.put_bytes(s3.get_bytes(ref), ref, content_type="application/octet-stream")


def foreign_entry(s3: S3Store, mirror: BucketMirror, digest: str, other: str) -> None:
    """Another entry's intact file (with its correct sha256) under this entry's key."""
    source = mirror.ref(other)
    s3.put_bytes(s3.get_bytes(source), mirror.ref(digest), content_type="application/octet-stream",
                 metadata=s3.head(source).metadata)  # fmt: skip


@pytest.mark.parametrize("damage", [corrupt_bytes, no_checksum, foreign_entry])
def test_a_corrupt_or_foreign_bucket_object_is_refused(
    s3: S3Store, root: ObjectRef, pod: Any, damage: Any
) -> None:
    a, mirror_a = pod("pod-a", s3, root)
    digest, other = digest_of("d"), digest_of("e")
    a.save(digest, outputs(2), None)
    a.save(other, outputs(3), None)
    mirror_a.flush(timeout=60)
    damage(s3, mirror_a, digest, other)

    b, _ = pod("pod-b", s3, root)
    assert b.load(digest) is None  # a miss: the node is computed again
    assert b.stats.bucket["bucket_refused"] == 1 and b.stats.bucket["bucket_hits"] == 0
    assert b.cache.lookup(b.key(digest)) is None and not leftovers(b.cache.root)
    assert b.load(other) is not None  # the intact entry is still served


def test_a_bucket_that_is_down_costs_only_the_copy_in_the_bucket(pod: Any, s3_server: Any) -> None:
    (port,) = rgw.free_ports(1)
    down = S3Store(f"http://127.0.0.1:{port}", region=s3_server.region, access_key_id="x",
                   secret_access_key="y", connect_timeout=1, max_attempts=1)  # fmt: skip
    a, mirror = pod("pod-a", down, ObjectRef("gencache-down", "p"), retry_after=3600)
    value = outputs(4)
    digest = digest_of("f")
    assert a.save(digest, value, None) > 0
    mirror.flush(timeout=60)
    assert a.stats.bucket["bucket_errors"] == 1 and a.stats.bucket["bucket_uploads"] == 0
    assert not mirror.available()
    assert_identical(a.load(digest)[0], value)  # type: ignore[index]  # served from the volume
    assert a.load(digest_of("g")) is None  # the bucket is left alone meanwhile: no new error
    assert a.stats.bucket["bucket_errors"] == 1 and a.stats.bucket["bucket_misses"] == 0
    down.close()


def test_the_services_build_the_mirror_from_the_setting(tmp_path: Path) -> None:
    """PODKIT_GENERATION_CACHE_BUCKET_PREFIX through ``build_generation_store``, over the embedded
    local store (the same protocol as S3): two pods without a common volume share an entry."""
    store = LocalStore(tmp_path / "store")
    store.ensure_bucket("shared-cache")
    pods = []
    for name in ("pod-a", "pod-b"):
        settings = Settings.from_env({
            "PODKIT_VOLUME_DIR": "", "PODKIT_CACHE_DIR": str(tmp_path / name), "PODKIT_GENERATION_CACHE": "1",
            "PODKIT_GENERATION_CACHE_BUCKET_PREFIX": "r2://shared-cache/gen",
        })  # fmt: skip
        gen = build_generation_store(settings, store)
        assert (
            gen is not None and gen.mirror is not None and gen.mirror.root == ObjectRef("shared-cache", "gen")
        )
        pods.append(gen)
    a, b = pods
    value = outputs(5)
    a.save(digest_of("h"), value, None)
    a.mirror.flush(timeout=60)  # type: ignore[union-attr]
    assert_identical(b.load(digest_of("h"))[0], value)  # type: ignore[index]
    assert b.stats.totals()["bucket_hits"] == 1
    for gen in pods:
        gen.mirror.close()  # type: ignore[union-attr]


def test_a_full_volume_is_not_taken_for_a_bucket_that_is_down(
    pod: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = LocalStore(tmp_path / "store")
    store.ensure_bucket("shared-cache")
    a, mirror_a = pod("pod-a", store, ObjectRef("shared-cache", "gen"))
    a.save(digest_of("i"), outputs(6), None)
    mirror_a.flush(timeout=60)
    b, mirror_b = pod("pod-b", store, ObjectRef("shared-cache", "gen"))
    monkeypatch.setattr(model_cache, "FREE_SPACE_RESERVE", 2**62)  # no volume has that much room
    assert b.load(digest_of("i")) is None
    assert b.stats.bucket["bucket_errors"] == 1 and mirror_b.available()
