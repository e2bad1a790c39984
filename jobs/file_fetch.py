"""The blocking fetch training uses: one URL or bucket object into a folder of the caller's.

Not a model placement: the file keeps its (sanitised) name in the caller's folder, nothing is
indexed, and no job is recorded. It runs on the download service's loop, so it shares that
service's session, URL policy and connection pool.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import uuid
from collections.abc import Callable
from pathlib import Path

from ..backends.http_download import HttpDownloader
from ..backends.http_partial import discard_partial, map_path
from ..core.errors import CorruptFile, PayloadTooLarge, TransferFailed
from ..core.filenames import sanitize_name
from ..core.objects import ObjectStore, parse_object_uri
from ..core.url_policy import UrlPolicy, check_url, redact_url
from .loop_thread import LoopThread


class FileFetch:
    """Blocking downloads of single files on a shared :class:`LoopThread`.

    Args:
        loop: the loop the transfers run on (the download service's).
        store: the object store, for ``r2://`` and ``s3://`` sources.
        policy: the outbound URL policy.
        bucket: the default bucket of a bare object key.
        engine: the loop's HTTP engine (made when the loop starts).
    """

    def __init__(
        self,
        loop: LoopThread,
        store: ObjectStore,
        policy: UrlPolicy,
        bucket: str,
        engine: Callable[[], HttpDownloader | None],
    ) -> None:
        self.loop, self.store, self.policy, self.bucket, self.engine = loop, store, policy, bucket, engine

    def fetch_file(
        self,
        url_or_uri: str,
        dest_dir: Path,
        *,
        sha256: str | None = None,
        max_bytes: int | None = None,
        timeout: float | None = None,
    ) -> Path:
        """Download one URL or bucket object into ``dest_dir`` and return the file (blocking).

        The URL policy applies; ``sha256`` and ``max_bytes`` are checked before the file appears.

        Raises:
            InvalidRequest / Forbidden: a refused URL; NotFound, AccessDenied, PayloadTooLarge,
            CorruptFile, TransferFailed as the engine raises them; TransferFailed on ``timeout``.
        """
        future = self.loop.submit(lambda: self._fetch(url_or_uri, Path(dest_dir), sha256, max_bytes))
        if future is None:
            raise TransferFailed("the download service is not started")
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TransferFailed(f"{redact_url(url_or_uri)}: not downloaded within {timeout} s") from None
        except concurrent.futures.CancelledError:
            raise TransferFailed(f"{redact_url(url_or_uri)}: the download service stopped") from None

    async def _fetch(
        self, url_or_uri: str, dest_dir: Path, sha256: str | None, max_bytes: int | None
    ) -> Path:
        dest_dir.mkdir(parents=True, exist_ok=True)
        if url_or_uri.startswith(("r2://", "s3://")):
            return await self._fetch_object(url_or_uri, dest_dir, sha256, max_bytes)
        check_url(url_or_uri, self.policy)
        name = sanitize_name(url_or_uri.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1])
        part = dest_dir / f".{name}.part"
        engine = self.engine()
        assert engine is not None  # noqa: S101 - made before the loop runs
        try:
            await engine.fetch(url_or_uri, part, sha256=sha256, max_bytes=max_bytes)
        except BaseException:
            discard_partial(part)  # the caller's folder never keeps a half-written file
            raise
        os.replace(part, dest_dir / name)
        map_path(part).unlink(missing_ok=True)
        return dest_dir / name

    async def _fetch_object(
        self, uri: str, dest_dir: Path, sha256: str | None, max_bytes: int | None
    ) -> Path:
        ref = parse_object_uri(uri, self.bucket)
        name = sanitize_name(ref.name)
        meta = await asyncio.to_thread(self.store.head, ref)
        if max_bytes is not None and meta.size > max_bytes:
            raise PayloadTooLarge(f"{ref.uri} is {meta.size} bytes, more than the limit of {max_bytes}")
        tmp = dest_dir / f".{name}.{uuid.uuid4().hex[:8]}.part"
        try:
            got = await asyncio.to_thread(self.store.download_verified, meta, tmp)
            if sha256 is not None and got != sha256.lower():
                raise CorruptFile(f"sha256 mismatch for {ref.uri}: expected {sha256.lower()}, got {got}")
            os.replace(tmp, dest_dir / name)
        finally:
            tmp.unlink(missing_ok=True)
        return dest_dir / name
