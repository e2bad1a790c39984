"""S3-compatible object store (Cloudflare R2, Ceph RGW, AWS S3, MinIO) on boto3.

R2 needs path-style addressing, ``request_checksum_calculation`` / ``response_checksum_validation``
set to ``"when_required"`` (recent botocore sends CRC32 trailers R2 rejects on some operations),
and no object tagging. Retries are botocore's adaptive mode.

Downloads stream: a single GET below the multipart threshold, else parallel ranged GETs (pinned to
the ETag with ``If-Match``) written in order, so the sha256 is computed while the bytes arrive
instead of re-reading the file afterwards.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections import deque
from collections.abc import Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..core.errors import (
    AccessDenied,
    ConfigError,
    ObjectChanged,
    ObjectNotFound,
    StorageError,
    StoreUnavailable,
    TransferFailed,
)
from ..core.objects import ObjectMeta, ObjectRef, ProgressFn, validate_bucket
from ..core.settings import Settings

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

logger = logging.getLogger(__name__)

_READ_CHUNK = 1 * 2**20
_NOT_FOUND = {"404", "NoSuchKey", "NotFound", "NoSuchBucket"}
_DENIED = {
    "403",
    "AccessDenied",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "Forbidden",
    "AllAccessDisabled",
}
_UNAVAILABLE = {
    "500",
    "502",
    "503",
    "504",
    "ServiceUnavailable",
    "SlowDown",
    "InternalError",
    "RequestTimeout",
}


class S3Store:
    """:class:`~podkit.core.objects.ObjectStore` over an S3-compatible endpoint.

    Args:
        endpoint_url: the S3 endpoint (R2: ``https://<account>.r2.cloudflarestorage.com``).
        region: signing region (``auto`` for R2).
        access_key_id / secret_access_key: credentials; None uses boto3's default chain.
        multipart_threshold: objects above this size move in parallel parts.
        part_size: size of one part (uploads) or one ranged GET (downloads).
        max_concurrency: parallel parts per transfer.
    """

    kind = "s3"

    def __init__(
        self,
        endpoint_url: str | None,
        *,
        region: str = "auto",
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        multipart_threshold: int = 64 * 2**20,
        part_size: int = 16 * 2**20,
        max_concurrency: int = 8,
        connect_timeout: float = 5.0,
        read_timeout: float = 60.0,
        max_attempts: int = 4,
    ) -> None:
        try:
            import boto3
            from botocore.config import Config
        except ImportError as e:  # pragma: no cover - boto3 is a declared dependency
            raise ConfigError("S3/R2 support needs boto3: pip install boto3") from e
        self.endpoint_url = endpoint_url
        self.multipart_threshold = multipart_threshold
        self.part_size = part_size
        self.max_concurrency = max_concurrency
        config = Config(
            signature_version="s3v4",
            s3={"addressing_style": "path"},
            retries={"mode": "adaptive", "max_attempts": max_attempts},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            max_pool_connections=max(10, max_concurrency * 2),
            tcp_keepalive=True,
        )
        session = boto3.session.Session(
            aws_access_key_id=access_key_id, aws_secret_access_key=secret_access_key, region_name=region
        )
        # botocore clients are thread-safe; one client (one connection pool) serves every thread.
        self._client: S3Client = session.client("s3", endpoint_url=endpoint_url, config=config)
        self._pool_lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> S3Store:
        return cls(
            settings.s3_endpoint,
            region=settings.s3_region,
            access_key_id=settings.access_key_id,
            secret_access_key=settings.secret_access_key,
            multipart_threshold=settings.multipart_threshold,
        )

    def _executor(self) -> ThreadPoolExecutor:
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.max_concurrency * 2, thread_name_prefix="podkit-s3")
            return self._pool

    def close(self) -> None:
        with self._pool_lock:
            if self._pool is not None:
                self._pool.shutdown(wait=False, cancel_futures=True)
                self._pool = None

    # ----------------------------------------------------------------- errors
    @contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        from botocore.exceptions import (
            BotoCoreError,
            ClientError,
            NoCredentialsError,
            ReadTimeoutError,
        )
        from botocore.exceptions import (
            ConnectionError as BotoConnectionError,
        )

        try:
            yield
        except ClientError as e:
            err = e.response.get("Error", {})
            code = str(err.get("Code", ""))
            status = str(e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
            if code in _NOT_FOUND or status == "404":
                detail = "bucket does not exist" if code == "NoSuchBucket" else "does not exist"
                raise ObjectNotFound(f"{what}: {detail}") from e
            if code in _DENIED or status == "403":
                raise AccessDenied(
                    f"{what}: access denied ({code or status}); check the R2/S3 credentials"
                ) from e
            if code in ("PreconditionFailed", "412") or status == "412":
                raise ObjectChanged(f"{what}: the object changed during the transfer") from e
            if code in _UNAVAILABLE or status.startswith("5"):
                raise StoreUnavailable(f"{what}: the store is unavailable ({code or status})") from e
            raise StorageError(f"{what}: {code or status} {err.get('Message', '')}".strip()) from e
        except NoCredentialsError as e:
            raise AccessDenied(f"{what}: no credentials (set R2_ACCESS_KEY_ID/R2_SECRET_ACCESS_KEY)") from e
        except (BotoConnectionError, ReadTimeoutError) as e:
            raise StoreUnavailable(f"{what}: cannot reach the store ({type(e).__name__})") from e
        except BotoCoreError as e:
            raise StorageError(f"{what}: {type(e).__name__}") from e
        except OSError as e:
            if isinstance(e, (ConnectionError, TimeoutError)):
                raise StoreUnavailable(f"{what}: connection lost ({e})") from e
            raise

    # ----------------------------------------------------------------- protocol
    def head(self, ref: ObjectRef) -> ObjectMeta:
        with self._errors(f"HEAD {ref}"):
            r = self._client.head_object(Bucket=ref.bucket, Key=ref.key)
        return self._meta(ref, r)

    @staticmethod
    def _meta(ref: ObjectRef, r: Mapping[str, Any]) -> ObjectMeta:
        lm = r.get("LastModified")
        return ObjectMeta(
            ref=ref,
            size=int(r.get("ContentLength", r.get("Size", 0))),
            etag=str(r.get("ETag", "")),
            last_modified=lm.timestamp() if lm is not None else None,
            content_type=r.get("ContentType"),
            metadata={str(k).lower(): str(v) for k, v in (r.get("Metadata") or {}).items()},
        )

    def download(self, ref: ObjectRef, dest: Path, *, on_bytes: ProgressFn | None = None) -> ObjectMeta:
        meta = self.head(ref)
        self.download_verified(meta, dest, on_bytes=on_bytes)
        return meta

    def download_verified(self, meta: ObjectMeta, dest: Path, *, on_bytes: ProgressFn | None = None) -> str:
        """Download the object ``meta`` describes into ``dest``; return its sha256.

        Raises:
            TransferFailed: short read, the object changed meanwhile, or a sha256 mismatch with the
                checksum PodKit recorded at upload time.
        """
        h = hashlib.sha256()
        if meta.size <= self.multipart_threshold:
            self._get_single(meta, dest, h, on_bytes)
        else:
            self._get_ranged(meta, dest, h, on_bytes)
        got = dest.stat().st_size
        if got != meta.size:
            raise TransferFailed(f"{meta.ref}: received {got} of {meta.size} bytes")
        digest = h.hexdigest()
        if meta.sha256 and meta.sha256 != digest:
            raise TransferFailed(f"{meta.ref}: sha256 {digest} does not match the recorded {meta.sha256}")
        return digest

    def _get_single(self, meta: ObjectMeta, dest: Path, h: Any, on_bytes: ProgressFn | None) -> None:
        with self._errors(f"GET {meta.ref}"), open(dest, "wb") as f:
            kwargs: dict[str, Any] = {"Bucket": meta.ref.bucket, "Key": meta.ref.key}
            if meta.etag:
                kwargs["IfMatch"] = meta.etag
            body = self._client.get_object(**kwargs)["Body"]
            try:
                while chunk := body.read(_READ_CHUNK):
                    f.write(chunk)
                    h.update(chunk)
                    if on_bytes is not None:
                        on_bytes(len(chunk))
            finally:
                body.close()

    def _get_range(self, meta: ObjectMeta, start: int, end: int) -> bytes:
        with self._errors(f"GET {meta.ref} bytes {start}-{end}"):
            kwargs: dict[str, Any] = {
                "Bucket": meta.ref.bucket,
                "Key": meta.ref.key,
                "Range": f"bytes={start}-{end}",
            }
            if meta.etag:
                kwargs["IfMatch"] = meta.etag
            body = self._client.get_object(**kwargs)["Body"]
            try:
                data = body.read()
            finally:
                body.close()
        if len(data) != end - start + 1:
            raise TransferFailed(f"{meta.ref}: range {start}-{end} returned {len(data)} bytes")
        return data

    def _get_ranged(self, meta: ObjectMeta, dest: Path, h: Any, on_bytes: ProgressFn | None) -> None:
        part = max(self.part_size, -(-meta.size // 10000))
        ranges = [(s, min(s + part, meta.size) - 1) for s in range(0, meta.size, part)]
        pool = self._executor()
        window = self.max_concurrency
        inflight: deque[tuple[int, Future[bytes]]] = deque()
        todo = iter(ranges)
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:

            def refill() -> None:
                while len(inflight) < window:
                    nxt = next(todo, None)
                    if nxt is None:
                        return
                    inflight.append((nxt[0], pool.submit(self._get_range, meta, nxt[0], nxt[1])))

            refill()
            while inflight:
                offset, fut = inflight.popleft()
                data = fut.result()
                refill()
                view = memoryview(data)
                while view:
                    n = os.pwrite(fd, view, offset)
                    view, offset = view[n:], offset + n
                h.update(data)
                if on_bytes is not None:
                    on_bytes(len(data))
        except BaseException:
            for _, f in inflight:
                f.cancel()
            raise
        finally:
            os.close(fd)

    def upload_file(
        self,
        src: Path,
        ref: ObjectRef,
        *,
        content_type: str,
        metadata: Mapping[str, str] | None = None,
        on_bytes: ProgressFn | None = None,
    ) -> ObjectMeta:
        size = src.stat().st_size
        if size <= self.multipart_threshold:
            data = src.read_bytes()
            meta = self.put_bytes(data, ref, content_type=content_type, metadata=metadata)
            if on_bytes is not None:
                on_bytes(size)
            return meta
        from boto3.s3.transfer import TransferConfig

        config = TransferConfig(
            multipart_threshold=self.multipart_threshold,
            multipart_chunksize=max(self.part_size, -(-size // 10000)),
            max_concurrency=self.max_concurrency,
            use_threads=True,
        )
        extra: dict[str, Any] = {"ContentType": content_type}
        if metadata:
            extra["Metadata"] = dict(metadata)
        with self._errors(f"upload {ref}"):
            self._client.upload_file(
                str(src), ref.bucket, ref.key, ExtraArgs=extra, Config=config, Callback=on_bytes
            )
        return self.head(ref)

    def put_bytes(
        self, data: bytes, ref: ObjectRef, *, content_type: str, metadata: Mapping[str, str] | None = None
    ) -> ObjectMeta:
        with self._errors(f"PUT {ref}"):
            r = self._client.put_object(
                Bucket=ref.bucket,
                Key=ref.key,
                Body=data,
                ContentType=content_type,
                Metadata=dict(metadata or {}),
            )
        return ObjectMeta(
            ref=ref, size=len(data), etag=str(r.get("ETag", "")), content_type=content_type,
            metadata=dict(metadata or {}),
        )  # fmt: skip

    def get_bytes(self, ref: ObjectRef) -> bytes:
        with self._errors(f"GET {ref}"):
            body = self._client.get_object(Bucket=ref.bucket, Key=ref.key)["Body"]
            try:
                return body.read()
            finally:
                body.close()

    def list(self, bucket: str, prefix: str = "", *, limit: int = 10000) -> list[ObjectMeta]:
        validate_bucket(bucket)
        out: list[ObjectMeta] = []
        with self._errors(f"LIST {bucket}/{prefix}"):
            pages = self._client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
            for page in pages:
                for obj in page.get("Contents", []):
                    key = obj.get("Key", "")
                    try:
                        ref = ObjectRef(bucket, key)
                    except ValueError:
                        logger.debug("skipping unsafe key %r in %s", key, bucket)
                        continue
                    out.append(self._meta(ref, obj))
                    if len(out) >= limit:
                        return out
        return out

    def delete(self, ref: ObjectRef) -> None:
        with self._errors(f"DELETE {ref}"):
            self._client.delete_object(Bucket=ref.bucket, Key=ref.key)

    def ensure_bucket(self, bucket: str) -> None:
        validate_bucket(bucket)
        try:
            with self._errors(f"HEAD bucket {bucket}"):
                self._client.head_bucket(Bucket=bucket)
        except ObjectNotFound:
            with self._errors(f"create bucket {bucket}"):
                self._client.create_bucket(Bucket=bucket)

    def url_for(self, ref: ObjectRef, *, ttl: int) -> str | None:
        with self._errors(f"presign {ref}"):
            return str(
                self._client.generate_presigned_url(
                    "get_object", Params={"Bucket": ref.bucket, "Key": ref.key}, ExpiresIn=ttl
                )
            )
