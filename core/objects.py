"""Object references, metadata and the ``ObjectStore`` protocol every storage backend implements.

URIs: ``r2://bucket/key``, ``s3://bucket/key``, or a bare key in the configured default bucket.
Keys are validated here once, so backends (and the local-directory store above all) can trust them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

from .errors import InvalidRequest

_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")
_RESERVED_NAMES = (
    {"con", "prn", "aux", "nul"} | {f"com{i}" for i in range(10)} | {f"lpt{i}" for i in range(10)}
)
MAX_KEY_LENGTH = 1024

ProgressFn = Callable[[int], None]
"""Called with the number of bytes just transferred."""


def validate_key(key: str) -> str:
    """Return ``key`` if it is a safe object key, else raise :class:`InvalidRequest`.

    Safe means: non-empty, at most 1024 UTF-8 bytes, relative, no ``.``/``..`` segments, no empty
    segments, no backslashes, no NUL or control characters, no reserved device names. The same key
    is then safe as a relative path under the local store and the cache.
    """
    if not isinstance(key, str) or not key:
        raise InvalidRequest("object key must be a non-empty string")
    if len(key.encode("utf-8")) > MAX_KEY_LENGTH:
        raise InvalidRequest(f"object key is longer than {MAX_KEY_LENGTH} bytes")
    if any(ord(c) < 32 or ord(c) == 127 for c in key):
        raise InvalidRequest(f"object key {key[:80]!r} contains control characters")
    if "\\" in key:
        raise InvalidRequest(f"object key {key[:80]!r} contains a backslash")
    if key.startswith("/"):
        raise InvalidRequest(f"object key {key[:80]!r} must be relative (no leading '/')")
    for part in key.split("/"):
        if part in ("", ".", ".."):
            raise InvalidRequest(f"object key {key[:80]!r} has an empty, '.' or '..' segment")
        if part.split(".")[0].lower() in _RESERVED_NAMES:
            raise InvalidRequest(f"object key {key[:80]!r} uses a reserved name {part!r}")
    return key


def validate_bucket(bucket: str) -> str:
    """Return ``bucket`` if it is a valid S3 bucket name, else raise :class:`InvalidRequest`."""
    if not isinstance(bucket, str) or not _BUCKET_RE.match(bucket) or ".." in bucket:
        raise InvalidRequest(f"{bucket!r} is not a valid bucket name")
    return bucket


@dataclass(frozen=True, order=True)
class ObjectRef:
    """A validated (bucket, key) pair."""

    bucket: str
    key: str

    def __post_init__(self) -> None:
        validate_bucket(self.bucket)
        validate_key(self.key)

    def __str__(self) -> str:
        return f"{self.bucket}/{self.key}"

    @property
    def uri(self) -> str:
        return f"r2://{self.bucket}/{self.key}"

    @property
    def name(self) -> str:
        return self.key.rsplit("/", 1)[-1]


def parse_object_uri(text: str, default_bucket: str) -> ObjectRef:
    """Parse ``r2://bucket/key``, ``s3://bucket/key`` or a bare key (in ``default_bucket``).

    Raises:
        InvalidRequest: unknown scheme, missing key, or an unsafe key/bucket.
    """
    if not isinstance(text, str) or not text.strip():
        raise InvalidRequest("an object key or r2://bucket/key URI is required")
    text = text.strip()
    if "://" in text:
        scheme, rest = text.split("://", 1)
        if scheme.lower() not in ("r2", "s3"):
            raise InvalidRequest(f"unsupported URI scheme {scheme!r}: use r2://bucket/key or s3://bucket/key")
        bucket, _, key = rest.partition("/")
        if not key:
            raise InvalidRequest(f"{text!r} names a bucket but no key")
        return ObjectRef(bucket, key)
    return ObjectRef(default_bucket, text)


@dataclass(frozen=True)
class ObjectMeta:
    """What a HEAD (or a listing) tells about one object."""

    ref: ObjectRef
    size: int
    etag: str
    last_modified: float | None = None
    content_type: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)

    @property
    def sha256(self) -> str | None:
        """The sha256 PodKit recorded in the object's metadata when it uploaded it, if any."""
        value = self.metadata.get("sha256")
        return value.lower() if value and re.fullmatch(r"[0-9a-fA-F]{64}", value) else None

    def to_wire(self) -> dict[str, object]:
        return {
            "bucket": self.ref.bucket,
            "key": self.ref.key,
            "uri": self.ref.uri,
            "size": self.size,
            "etag": self.etag,
            "last_modified": self.last_modified,
        }


@runtime_checkable
class ObjectStore(Protocol):
    """The storage PodKit reads LoRAs from and writes outputs to.

    Implementations: the S3-compatible store (R2, Ceph RGW, AWS, MinIO) and a local directory.
    All methods are blocking and thread-safe; routes call them through ``asyncio.to_thread``.
    """

    kind: str

    def head(self, ref: ObjectRef) -> ObjectMeta:
        """Metadata of ``ref``. Raises ObjectNotFound, AccessDenied, StoreUnavailable, StorageError."""
        ...

    def download(self, ref: ObjectRef, dest: Path, *, on_bytes: ProgressFn | None = None) -> ObjectMeta:
        """Write the object's bytes to ``dest`` (created/truncated); return the metadata it had."""
        ...

    def download_verified(self, meta: ObjectMeta, dest: Path, *, on_bytes: ProgressFn | None = None) -> str:
        """Download the object ``meta`` describes into ``dest`` and return its sha256.

        Raises TransferFailed when the bytes do not match ``meta`` (size, recorded sha256, or the
        object changed in between).
        """
        ...

    def upload_file(
        self,
        src: Path,
        ref: ObjectRef,
        *,
        content_type: str,
        metadata: Mapping[str, str] | None = None,
        on_bytes: ProgressFn | None = None,
    ) -> ObjectMeta:
        """Upload ``src`` to ``ref`` (multipart above the threshold); return the new metadata."""
        ...

    def put_bytes(
        self, data: bytes, ref: ObjectRef, *, content_type: str, metadata: Mapping[str, str] | None = None
    ) -> ObjectMeta:
        """Store small ``data`` at ``ref`` in one request."""
        ...

    def get_bytes(self, ref: ObjectRef) -> bytes:
        """Read a small object whole."""
        ...

    def list(self, bucket: str, prefix: str = "", *, limit: int = 10000) -> list[ObjectMeta]:
        """Objects under ``prefix``, sorted by key, at most ``limit``."""
        ...

    def delete(self, ref: ObjectRef) -> None:
        """Delete ``ref``; deleting a missing object is not an error."""
        ...

    def ensure_bucket(self, bucket: str) -> None:
        """Create ``bucket`` if it does not exist (used by tests and the local store)."""
        ...

    def url_for(self, ref: ObjectRef, *, ttl: int) -> str | None:
        """A URL a client can GET the object from (presigned for S3), or None."""
        ...
