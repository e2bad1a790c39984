"""The HTTP download engine: parallel ranged pieces, resume after a kill, hashing as it goes.

One :meth:`HttpDownloader.fetch` call downloads one URL into a partial file ``<part>`` and keeps its
resume map in ``<part>.map`` (:class:`~podkit.core.download_plan.PieceMap`):

- The first request asks for the first missing range. ``206`` with ``Content-Range`` gives the size
  and proves range support; up to N connections then take pieces in file order. ``200`` means the
  server ignores ranges (or the file changed, when a resume sent ``If-Range``): the body is the
  whole file, streamed from offset 0 on one connection, and whatever was on disk is discarded, so
  a 200 can never be spliced into the middle of a file.
- Every byte goes to its offset with ``pwritev``; a checkpoint thread runs ``fdatasync`` and then
  writes the map, so the map never claims bytes that are not durable. A killed process (or pod)
  resumes each piece from its checkpointed offset.
- A hashing thread reads the contiguous prefix back (from the page cache) while the download
  continues, so the sha256 is ready moments after the last byte; a resumed download re-reads only
  what is already on disk.
- Errors: connection resets, truncated bodies, stalls (no byte for ``stall_timeout`` seconds) and
  408/429/5xx are retried per piece with exponential backoff that honours ``Retry-After``; a 429 or
  503 also halves the number of connections. 401/403/404/410 fail at once with a clear error.
- Free space is checked before the first byte and the file is preallocated, so a full disk fails
  early (``InsufficientStorage``) instead of after hours; ``ENOSPC`` during a write fails the same way.

The engine runs on whatever loop calls it; the download manager gives it a loop of its own, so
ComfyUI's server loop never waits on disk writes.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import aiohttp

from ..core.errors import CorruptFile
from .http_partial import discard_partial, source_id
from .http_transfer import FetchResult, ProgressFn, _Transfer


class HttpDownloader:
    """Downloads URLs with parallel ranged requests over a shared aiohttp session.

    Args:
        session: the shared session (its connector is the pool; its resolver applies the URL policy).
        connections: most connections per file.
        stall_timeout: seconds without a byte before a request counts as stalled and is retried.
        retries: attempts per piece without progress before the download fails.
        min_free_bytes: bytes that must stay free on the destination's filesystem.
        backoff_base: first retry delay in seconds (doubles per attempt, capped at 30 s).
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        connections: int = 8,
        stall_timeout: float = 30.0,
        retries: int = 6,
        min_free_bytes: int = 0,
        backoff_base: float = 0.5,
    ) -> None:
        self.session = session
        self.connections = max(1, connections)
        self.stall_timeout = stall_timeout
        self.retries = retries
        self.min_free_bytes = min_free_bytes
        self.backoff_base = backoff_base

    async def fetch(
        self,
        url: str,
        part: Path,
        *,
        size: int | None = None,
        sha256: str | None = None,
        headers: Mapping[str, str] | None = None,
        on_progress: ProgressFn | None = None,
        max_bytes: int | None = None,
        source: str | None = None,
        connections: int | None = None,
    ) -> FetchResult:
        """Download ``url`` into ``part`` (resuming what a previous run left) and verify it.

        Args:
            url: the http(s) URL (redirects are followed by the session).
            part: the partial file; its map is ``<part>.map``. Both stay on failure (to resume)
                except when the content proved wrong, and are removed by the caller on success.
            size: the expected size, when the source publishes one.
            sha256: the expected sha256; a mismatch removes the partial file.
            headers: request headers (auth); sent only to ``url``'s origin, never after a redirect
                to another host.
            on_progress: progress callback.
            max_bytes: refuse a file larger than this.
            source: the identity recorded in the map (default: the URL without its query).
            connections: override the engine's per-file connection count.

        Raises:
            NotFound, AccessDenied: the server answered 404/410 or 401/403.
            InsufficientStorage: not enough free space, or the disk filled up.
            PayloadTooLarge: the file is larger than ``max_bytes``.
            CorruptFile: the size or sha256 is wrong (the partial file is removed).
            TransferFailed: the server kept failing after every retry.
        """
        job = _Transfer(
            self,
            url,
            part,
            size=size,
            headers=dict(headers or {}),
            on_progress=on_progress,
            max_bytes=max_bytes,
            source=source or source_id(url),
            connections=connections or self.connections,
        )
        result = await job.run()
        if sha256 is not None and result.sha256 != sha256.lower():
            discard_partial(part)
            raise CorruptFile(
                f"sha256 mismatch for {source_id(url)}: expected {sha256.lower()}, got {result.sha256}"
            )
        return result
