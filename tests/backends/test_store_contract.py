"""One contract, two stores: the embedded local store and a real S3 server (Ceph radosgw)."""

from __future__ import annotations

import hashlib
import os
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from podkit.backends.local_store import LocalStore
from podkit.backends.s3_store import S3Store
from podkit.core.errors import AccessDenied, InvalidRequest, ObjectNotFound, StoreUnavailable, TransferFailed
from podkit.core.objects import ObjectRef, ObjectStore


def make_s3(server: object, **kw: object) -> S3Store:
    return S3Store(
        server.endpoint_url,  # type: ignore[attr-defined]
        region=server.region,  # type: ignore[attr-defined]
        access_key_id=server.access_key,  # type: ignore[attr-defined]
        secret_access_key=server.secret_key,  # type: ignore[attr-defined]
        **kw,  # type: ignore[arg-type]
    )


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[ObjectStore, str]]:
    bucket = f"contract-{uuid.uuid4().hex[:10]}"
    if request.param == "local":
        s: ObjectStore = LocalStore(tmp_path / "store")
    else:
        s = make_s3(request.getfixturevalue("s3_server"), multipart_threshold=5 * 2**20, part_size=5 * 2**20)
    s.ensure_bucket(bucket)
    yield s, bucket
    for m in s.list(bucket):
        s.delete(m.ref)


def test_put_head_get_list_delete(store: tuple[ObjectStore, str], tmp_path: Path) -> None:
    s, bucket = store
    ref = ObjectRef(bucket, "dir/a.bin")
    meta = s.put_bytes(b"hello", ref, content_type="application/octet-stream", metadata={"sha256": "ab" * 32})
    assert meta.size == 5 and meta.etag
    head = s.head(ref)
    assert head.size == 5 and head.etag == meta.etag and head.sha256 == "ab" * 32
    assert s.get_bytes(ref) == b"hello"
    s.put_bytes(b"x", ObjectRef(bucket, "dir/b.bin"), content_type="text/plain")
    s.put_bytes(b"y", ObjectRef(bucket, "other.bin"), content_type="text/plain")
    assert [m.ref.key for m in s.list(bucket, "dir/")] == ["dir/a.bin", "dir/b.bin"]
    assert [m.ref.key for m in s.list(bucket)] == ["dir/a.bin", "dir/b.bin", "other.bin"]
    s.delete(ref)
    s.delete(ref)  # deleting twice is fine
    with pytest.raises(ObjectNotFound):
        s.head(ref)


def test_missing_object_and_bucket(store: tuple[ObjectStore, str], tmp_path: Path) -> None:
    s, bucket = store
    with pytest.raises(ObjectNotFound, match="missing.safetensors"):
        s.head(ObjectRef(bucket, "missing.safetensors"))
    with pytest.raises(ObjectNotFound):
        s.list(f"nobucket-{uuid.uuid4().hex[:8]}")


@pytest.mark.parametrize("size", [0, 1000, 12 * 2**20 + 7])
def test_upload_and_verified_download(store: tuple[ObjectStore, str], tmp_path: Path, size: int) -> None:
    s, bucket = store
    data = os.urandom(size)
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    sha = hashlib.sha256(data).hexdigest()
    ref = ObjectRef(bucket, f"up/{size}.bin")
    seen: list[int] = []
    meta = s.upload_file(src, ref, content_type="application/octet-stream", metadata={"sha256": sha})
    assert meta.size == size and meta.sha256 == sha
    dest = tmp_path / "dest.bin"
    assert s.download_verified(s.head(ref), dest, on_bytes=seen.append) == sha
    assert dest.read_bytes() == data and sum(seen) == size


def test_recorded_checksum_mismatch_is_detected(store: tuple[ObjectStore, str], tmp_path: Path) -> None:
    s, bucket = store
    ref = ObjectRef(bucket, "liar.bin")
    s.put_bytes(b"real bytes", ref, content_type="application/octet-stream", metadata={"sha256": "0" * 64})
    with pytest.raises(TransferFailed, match="sha256"):
        s.download_verified(s.head(ref), tmp_path / "d.bin")


def test_object_replaced_during_download_is_detected(store: tuple[ObjectStore, str], tmp_path: Path) -> None:
    s, bucket = store
    ref = ObjectRef(bucket, "moving.bin")
    s.put_bytes(b"v1" * 100, ref, content_type="application/octet-stream")
    old = s.head(ref)
    s.put_bytes(b"v2" * 200, ref, content_type="application/octet-stream")
    with pytest.raises(TransferFailed, match="changed"):
        s.download_verified(old, tmp_path / "d.bin")


def test_url_for_serves_the_object(store: tuple[ObjectStore, str]) -> None:
    s, bucket = store
    ref = ObjectRef(bucket, "pub/x.txt")
    s.put_bytes(b"fetch me", ref, content_type="text/plain")
    url = s.url_for(ref, ttl=60)
    assert url
    if s.kind == "s3":
        with urllib.request.urlopen(url, timeout=10) as r:  # noqa: S310 - presigned URL on loopback
            assert r.read() == b"fetch me"
    else:
        assert url == f"/podkit/objects/{bucket}/pub/x.txt"


def test_unsafe_keys_never_reach_a_store() -> None:
    with pytest.raises(InvalidRequest):
        ObjectRef("bucket", "../../etc/passwd")


def test_wrong_credentials_are_access_denied(s3_server: object) -> None:
    s = S3Store(s3_server.endpoint_url, region="us-east-1", access_key_id="nope", secret_access_key="nope")  # type: ignore[attr-defined]
    with pytest.raises(AccessDenied, match="credentials"):
        s.list("anything")


def test_unreachable_store_is_unavailable() -> None:
    s = S3Store(
        "http://127.0.0.1:9", access_key_id="a", secret_access_key="b", max_attempts=1, connect_timeout=1
    )
    with pytest.raises(StoreUnavailable):
        s.head(ObjectRef("bucket", "k"))
