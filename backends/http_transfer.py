"""The network loop of one HTTP download: the first request, parallel ranged pieces, streaming, retries.

:class:`_Transfer` is the state of one :meth:`~podkit.backends.http_download.HttpDownloader.fetch`
call. It adds to :class:`~podkit.backends.http_partial._PartialFile` (the partial file, its map and
checkpoints) the requests: the first range (or the whole file), then up to N connections taking
pieces in file order, each streamed into its offset with ``pwritev``, with per-piece retries and
throttling. It is separate from the engine's public face (:mod:`podkit.backends.http_download`) only
to keep each module to one concern.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import aiohttp

from ..core.download_plan import (
    MIN_PIECE,
    RETRYABLE_STATUSES,
    PieceMap,
    parse_content_range,
    parse_retry_after,
    piece_size_for,
    strong_validator,
)
from ..core.errors import (
    AccessDenied,
    CorruptFile,
    InsufficientStorage,
    NotFound,
    PayloadTooLarge,
    TransferFailed,
)
from ..core.retry import backoff_delay
from .http_partial import _PartialFile, _PrefixHasher, discard_partial
from .url_guard import policy_refusal

if TYPE_CHECKING:
    from .http_download import HttpDownloader

logger = logging.getLogger(__name__)

#: Bytes gathered from the socket before one ``pwritev`` (fewer syscalls, no copies). Small
#: enough that a kill loses little that arrived but was not yet written (N connections x this).
WRITE_BATCH = 512 * 2**10
#: Most buffers in one ``pwritev`` (below the kernel's IOV_MAX of 1024).
MAX_IOV = 512
#: A slow connection writes what it has at least this often (seconds), so a kill loses little.
FLUSH_INTERVAL = 0.25

ProgressFn = Callable[[int, "int | None"], None]
"""Called with (bytes on disk, total bytes or None) as the download advances."""


@dataclass(frozen=True)
class FetchResult:
    """What one finished download produced."""

    path: Path
    size: int
    sha256: str
    fetched_bytes: int  # bytes received over the network in this call
    resumed_from: int  # bytes already on disk (from an earlier run) when the call started
    connections: int  # connections used at most
    ranges: bool  # whether the server served ranges


class _Retry(Exception):
    """A transient failure of one request; ``delay`` is the server's Retry-After, if any."""

    def __init__(self, message: str, delay: float | None = None, throttle: bool = False) -> None:
        super().__init__(message)
        self.delay = delay
        self.throttle = throttle


class _RangesRefused(Exception):
    """A ranged request was answered with the whole file (no range support, or the file changed)."""

    def __init__(self, response: aiohttp.ClientResponse | None = None) -> None:
        super().__init__("server answered a range request with the whole file")
        self.response = response


class _Transfer(_PartialFile):
    """The state of one :meth:`HttpDownloader.fetch` call (lives on one event loop)."""

    def __init__(
        self,
        engine: HttpDownloader,
        url: str,
        part: Path,
        *,
        size: int | None,
        headers: dict[str, str],
        on_progress: ProgressFn | None,
        max_bytes: int | None,
        source: str,
        connections: int,
    ) -> None:
        self.engine = engine
        self.url = url
        self.target_url = url  # the final URL after redirects, reused for later pieces
        self.origin = _origin(url)
        self.part = part
        self.expected_size = size
        self.headers = headers
        self.on_progress = on_progress
        self.max_bytes = max_bytes
        self.source = source
        self.connections = max(1, connections)
        self.limit = self.connections
        self.map: PieceMap | None = None
        self.fd = -1
        self.hasher: _PrefixHasher | None = None
        self.fetched = 0
        self.resumed_from = 0
        self.linear = 0  # bytes written in single-stream mode with an unknown size
        self.on_disk = 0  # bytes of the file on disk (resumed ones included)
        self.since_checkpoint = 0
        self.checkpoint_every = 16 * 2**20
        self.checkpointing: asyncio.Future[None] | None = None
        self.checkpointed = time.monotonic()
        self.queue: deque[int] = deque()
        self.active = 0
        self.peak = 0
        self.timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=engine.stall_timeout)

    # ------------------------------------------------------------------ top level
    async def run(self) -> FetchResult:
        self.part.parent.mkdir(parents=True, exist_ok=True)
        self.map = self._load_map()
        try:
            if self.map is not None and self.map.complete:
                self._open(truncate=False)
            else:
                try:
                    await self._download_with_retries()
                except BaseException:
                    await self._checkpoint_on_stop()
                    raise
            size = self.map.size if self.map is not None else self.linear
            await self._checkpoint_now()
            hasher = self.hasher
            if hasher is None:
                raise TransferFailed(f"{self.source}: the download ended without a file")
            self.hasher = None
            digest = await asyncio.to_thread(hasher.finish, size)
            await asyncio.to_thread(os.fsync, self.fd)
        finally:
            await self._close()
        if self.expected_size is not None and size != self.expected_size:
            discard_partial(self.part)
            raise CorruptFile(f"{self.source}: got {size} bytes, expected {self.expected_size}")
        return FetchResult(
            self.part,
            size,
            digest,
            self.fetched,
            self.resumed_from,
            max(1, self.peak),
            self.map.ranges if self.map is not None else False,
        )

    async def _download_with_retries(self) -> None:
        """Run :meth:`_download`, retrying failures of its first request (later ones retry per piece)."""
        attempt = 0
        while True:
            before = self.on_disk
            try:
                await self._download()
                return
            except _Retry as e:
                attempt = 1 if self.on_disk > before else attempt + 1
                if attempt > self.engine.retries:
                    raise TransferFailed(f"{self.source}: giving up after {attempt} attempts: {e}") from None
                delay = (
                    e.delay if e.delay is not None else backoff_delay(attempt, base=self.engine.backoff_base)
                )
                logger.debug("%s: %s; retry in %.2fs", self.source, e, delay)
                await asyncio.sleep(delay)

    async def _download(self) -> None:
        resume = self.map is not None and self.map.ranges
        if resume:
            m = self.need_map()
            first = m.open_pieces()[0]
            start = first * m.piece + m.done[first]
            end = m.piece_range(first)[1] - 1
        else:
            first, start = 0, 0
            planned = self.expected_size
            # Ask for exactly the first piece the map will plan, so that one response fills it.
            end = (min(planned, piece_size_for(planned, self.connections)) if planned else MIN_PIECE) - 1
        if self.expected_size == 0 and not resume:
            resp = await self._request(None)
        else:
            resp = await self._request((start, max(start, end)), if_range=resume)
        try:
            if resp.status == 200:
                await self._single_stream(resp)
                return
            if resp.status == 416 and not resume:
                resp.release()
                resp = await self._request(None)
                await self._single_stream(resp)
                return
            if resp.status == 416 and resume:
                logger.info("%s: the saved resume map no longer fits the file; starting over", self.source)
                discard_partial(self.part)
                self.map = None
                raise _Retry("HTTP 416 for a resumed range", delay=0.0)
            self._raise_for_status(resp)
            first_total = parse_content_range(resp.headers.get("Content-Range"))[2]
            if first_total is None:
                raise TransferFailed(f"{self.source}: the server does not say how large the file is")
            if self.map is None or self.map.size != first_total:
                if self.map is not None:
                    logger.info("%s changed size; downloading it again", self.source)
                self._new_map(
                    first_total,
                    validator=strong_validator(resp.headers.get("ETag"), resp.headers.get("Last-Modified")),
                )
                if start != 0:  # the file changed size under a resume: start over
                    resp.release()
                    resp = await self._request((0, self.need_map().piece_len(0) - 1))
                    self._raise_for_status(resp)
                first = 0
            else:
                self._open(truncate=False)
            await self._parallel(first, resp)
        except _RangesRefused as e:
            await self._single_stream(e.response)
        finally:
            resp.release()

    # ------------------------------------------------------------------ HTTP
    async def _request(
        self, byte_range: tuple[int, int] | None, *, if_range: bool = False
    ) -> aiohttp.ClientResponse:
        headers: dict[str, str] = {"Accept-Encoding": "identity"}
        if _origin(self.target_url) == self.origin:
            headers.update(self.headers)
        if byte_range is not None:
            headers["Range"] = f"bytes={byte_range[0]}-{byte_range[1]}"
            if if_range and self.map is not None and self.map.validator:
                headers["If-Range"] = self.map.validator
        try:
            resp = await self.engine.session.get(self.target_url, headers=headers, timeout=self.timeout)
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as e:
            refused = policy_refusal(e)
            if refused is not None:
                raise refused from None  # the URL policy refused a hop: final, not a network blip
            if self.target_url != self.url:
                self.target_url = self.url  # a signed CDN URL may have expired: resolve again
            raise _Retry(f"{type(e).__name__}: {e}") from e
        if resp.status in (200, 206) and str(resp.url) != self.target_url:
            self.target_url = str(resp.url)
        return resp

    def _raise_for_status(self, resp: aiohttp.ClientResponse) -> None:
        status = resp.status
        if status in (200, 206):
            return
        resp.release()
        where = self.source
        if status in RETRYABLE_STATUSES:
            raise _Retry(
                f"HTTP {status} from {where}",
                delay=parse_retry_after(resp.headers.get("Retry-After")),
                throttle=status in (429, 503),
            )
        if self.target_url != self.url and status in (401, 403, 404, 410):
            self.target_url = self.url  # an expired CDN link: go through the source URL again
            raise _Retry(f"HTTP {status} from the redirect target of {where}")
        if status in (401, 403):
            raise AccessDenied(f"HTTP {status} from {where}: access denied (is a token needed?)")
        if status in (404, 410):
            raise NotFound(f"HTTP {status} from {where}: no such file")
        raise TransferFailed(f"HTTP {status} from {where}")

    # ------------------------------------------------------------------ parallel ranged mode
    async def _parallel(self, first: int, resp: aiohttp.ClientResponse) -> None:
        self.queue = deque(i for i in self.need_map().open_pieces() if i != first)
        self.active = 0
        workers = [asyncio.ensure_future(self._worker(first, resp))]
        for _ in range(min(self.connections, len(self.queue) + 1) - 1):
            workers.append(asyncio.ensure_future(self._worker(None, None)))
        try:
            await asyncio.gather(*workers)
        finally:
            for w in workers:
                w.cancel()
            await asyncio.gather(*workers, return_exceptions=True)

    async def _worker(self, piece: int | None, resp: aiohttp.ClientResponse | None) -> None:
        self.active += 1
        self.peak = max(self.peak, self.active)
        try:
            while True:
                if piece is None:
                    if not self.queue or self.active > self.limit:
                        return
                    piece = self.queue.popleft()
                await self._piece(piece, resp)
                piece, resp = None, None
        finally:
            self.active -= 1

    async def _piece(self, index: int, resp: aiohttp.ClientResponse | None) -> None:
        m = self.need_map()
        attempt = 0
        while not m.is_complete(index):
            start = index * m.piece + m.done[index]
            end = m.piece_range(index)[1]
            before = m.done[index]
            try:
                if resp is None:
                    resp = await self._request((start, end - 1), if_range=True)
                if resp.status == 200:
                    whole, resp = resp, None
                    raise _RangesRefused(whole)
                self._raise_for_status(resp)
                first, last, total = parse_content_range(resp.headers.get("Content-Range"))
                if total != m.size:
                    raise _RangesRefused(None)  # the file changed: start over
                if first != start:
                    raise TransferFailed(
                        f"{self.source}: asked for byte {start}, the server sent byte {first}"
                    )
                # A shorter range than asked (the first request, a server's cap) is no failure:
                # take what it holds and ask for the rest of the piece.
                await self._stream(resp, start, min(end, last + 1), index)
            except _Retry as e:
                attempt = 1 if m.done[index] > before else attempt + 1
                if attempt > self.engine.retries:
                    raise TransferFailed(f"{self.source}: giving up after {attempt} attempts: {e}") from None
                if e.throttle and self.limit > 1:
                    self.limit = max(1, self.limit // 2)
                    logger.info("%s: server throttles; %d connections now", self.source, self.limit)
                delay = (
                    e.delay if e.delay is not None else backoff_delay(attempt, base=self.engine.backoff_base)
                )
                logger.debug("%s piece %d: %s; retry in %.2fs", self.source, index, e, delay)
                await asyncio.sleep(delay * (1 + 0.25 * random.random()))  # noqa: S311 - jitter only
            finally:
                if resp is not None:
                    resp.release()
                resp = None

    # ------------------------------------------------------------------ streaming
    async def _stream(
        self, resp: aiohttp.ClientResponse, start: int, end: int | None, index: int | None
    ) -> None:
        """Write the body of ``resp`` from offset ``start`` until ``end`` (None: until EOF)."""
        bufs: list[bytes] = []
        pending = 0
        pos = start
        flushed = time.monotonic()
        reader = resp.content
        try:
            while end is None or pos + pending < end:
                try:
                    # One parser chunk as it arrived: read(n) and readany() join buffered chunks
                    # (a copy of every byte); pwritev takes the list as it is.
                    chunk, http_chunk_end = await reader.readchunk()
                except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as e:
                    raise _Retry(f"{type(e).__name__} after byte {pos + pending}: {e}") from e
                if not chunk:
                    if http_chunk_end:
                        continue  # the end of a chunked-encoding chunk, not of the body
                    if end is None:
                        break
                    raise _Retry(f"connection closed at byte {pos + pending} of {end}")
                if end is not None and pos + pending + len(chunk) > end:
                    chunk = chunk[: end - pos - pending]  # never past the piece, whatever was sent
                bufs.append(chunk)
                pending += len(chunk)
                now = time.monotonic()
                if pending >= WRITE_BATCH or len(bufs) >= MAX_IOV or now - flushed >= FLUSH_INTERVAL:
                    pos = self._write(bufs, pos, pending, index)
                    bufs, pending, flushed = [], 0, now
                    if index is not None:
                        await self._keep_up_with_checkpoints()
        finally:
            if pending:
                self._write(bufs, pos, pending, index)

    def _write(self, bufs: list[bytes], pos: int, n: int, index: int | None) -> int:
        try:
            written = os.pwritev(self.fd, bufs, pos)
            while written < n:  # regular files write everything; be safe anyway
                rest = b"".join(bufs)[written:]
                written += os.pwrite(self.fd, rest, pos + written)
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise InsufficientStorage(f"disk full while writing {self.source}") from e
            raise
        self.fetched += n
        self.on_disk += n
        if index is None:
            self.linear += n
            if self.max_bytes is not None and self.linear > self.max_bytes:
                raise PayloadTooLarge(f"{self.source} is larger than the limit of {self.max_bytes} bytes")
            contiguous, total = self.linear, None
        else:
            m = self.need_map()
            m.done[index] += n
            contiguous, total = m.contiguous(), m.size
            self.since_checkpoint += n
            self._maybe_checkpoint()
        if self.hasher is not None:
            self.hasher.advance(contiguous)
        if self.on_progress is not None:
            self.on_progress(self.on_disk, total)
        return pos + n

    # ------------------------------------------------------------------ single-stream mode
    async def _single_stream(self, resp: aiohttp.ClientResponse | None) -> None:
        """The server sends the whole file: write it from offset 0 on one connection.

        Whatever an earlier attempt left is discarded first, so a ``200`` is never spliced into
        the middle of a file. Without range support a broken stream restarts from zero.
        """
        attempt = 0
        while True:
            try:
                if resp is None:
                    resp = await self._request(None)
                if resp.status != 200:
                    self._raise_for_status(resp)
                    raise TransferFailed(f"{self.source}: expected the whole file, got HTTP {resp.status}")
                length = resp.content_length
                validator = strong_validator(resp.headers.get("ETag"), resp.headers.get("Last-Modified"))
                self.peak = max(self.peak, 1)
                if length is not None:
                    self._new_map(length, validator=validator, ranges=False)
                    await self._stream(resp, 0, length, 0)
                else:
                    self.map = None
                    self.linear = self.on_disk = 0
                    self._open(truncate=True)
                    if self.expected_size is not None:
                        self._check_space(self.expected_size)
                    await self._stream(resp, 0, None, None)
                return
            except _Retry as e:
                attempt += 1
                if attempt > self.engine.retries:
                    raise TransferFailed(f"{self.source}: giving up after {attempt} attempts: {e}") from None
                delay = (
                    e.delay if e.delay is not None else backoff_delay(attempt, base=self.engine.backoff_base)
                )
                await asyncio.sleep(delay)
            finally:
                if resp is not None:
                    resp.release()
                resp = None


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme.lower(), parts.netloc.lower()
