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

import asyncio
import contextlib
import errno
import hashlib
import logging
import os
import random
import shutil
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
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
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
    TransferFailed,
)
from ..core.retry import backoff_delay
from .url_guard import policy_refusal

logger = logging.getLogger(__name__)

#: Bytes gathered from the socket before one ``pwritev`` (fewer syscalls, no copies). Small
#: enough that a kill loses little that arrived but was not yet written (N connections x this).
WRITE_BATCH = 512 * 2**10
#: Most buffers in one ``pwritev`` (below the kernel's IOV_MAX of 1024).
MAX_IOV = 512
_HASH_BLOCK = 8 * 2**20
#: A slow connection writes what it has at least this often (seconds), so a kill loses little.
FLUSH_INTERVAL = 0.25
#: The resume map is checkpointed at least this often (seconds) while bytes arrive.
CHECKPOINT_INTERVAL = 1.0

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


def checkpoint_interval_bytes(piece: int) -> int:
    """Bytes written between two checkpoints of the map: a quarter piece (at least 1 MiB).

    With :meth:`_Transfer._keep_up_with_checkpoints` at most two intervals are unsaved, so a kill
    fetches again about half a piece plus what the connections held in flight.
    """
    return max(2**20, piece // 4)


def map_path(part: Path) -> Path:
    """Where the resume map of ``part`` lives."""
    return part.with_name(part.name + ".map")


def discard_partial(part: Path) -> None:
    """Remove a partial download and its map."""
    part.unlink(missing_ok=True)
    map_path(part).unlink(missing_ok=True)


def partial_progress(part: Path) -> tuple[int, int] | None:
    """``(bytes done, size)`` from the checkpointed map of ``part`` (another process's, too)."""
    try:
        m = PieceMap.from_json(map_path(part).read_text())
    except (OSError, InvalidRequest):
        return None
    return m.bytes_done, m.size


def source_id(url: str) -> str:
    """A URL's identity for the resume map: signed query strings change, the path does not."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"


class _PrefixHasher:
    """sha256 of a file's contiguous prefix, computed on a thread while the file is written."""

    def __init__(self, path: Path) -> None:
        self._fd = os.open(path, os.O_RDONLY)
        self._h = hashlib.sha256()
        self._pos = 0
        self._target = 0
        self._closing = False
        self._error: BaseException | None = None
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="podkit-hash", daemon=True)
        self._thread.start()

    def advance(self, upto: int) -> None:
        with self._cond:
            if upto > self._target:
                self._target = upto
                self._cond.notify()

    def _run(self) -> None:
        buf = bytearray(_HASH_BLOCK)
        view = memoryview(buf)
        try:
            while True:
                with self._cond:
                    while self._pos >= self._target and not self._closing:
                        self._cond.wait()
                    if self._pos >= self._target:
                        return
                    target = self._target
                while self._pos < target:
                    want = min(_HASH_BLOCK, target - self._pos)
                    n = os.preadv(self._fd, [view[:want]], self._pos)
                    if n <= 0:
                        raise OSError(errno.EIO, f"short read at {self._pos} while hashing")
                    self._h.update(view[:n])
                    self._pos += n
        except BaseException as e:  # reported by finish()
            self._error = e

    def finish(self, size: int) -> str:
        """Hash up to ``size`` and return the hex digest (blocking)."""
        self.advance(size)
        self.close()
        if self._error is not None:
            raise self._error
        if self._pos != size:
            raise TransferFailed(f"hashed {self._pos} bytes of {size}")
        return self._h.hexdigest()

    def close(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join()
        with contextlib.suppress(OSError):
            os.close(self._fd)


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


class _Transfer:
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

    # ------------------------------------------------------------------ files and map
    def need_map(self) -> PieceMap:
        if self.map is None:
            raise TransferFailed(f"{self.source}: no piece map (internal error)")
        return self.map

    def _load_map(self) -> PieceMap | None:
        if not self.part.exists():
            map_path(self.part).unlink(missing_ok=True)
            return None
        try:
            m = PieceMap.from_json(map_path(self.part).read_text())
        except (OSError, InvalidRequest):
            return None
        if m.source != self.source or not m.ranges:
            return None
        if self.expected_size is not None and m.size != self.expected_size:
            return None
        self.resumed_from = self.on_disk = m.bytes_done
        self.checkpoint_every = checkpoint_interval_bytes(m.piece)
        return m

    def _new_map(self, size: int, *, validator: str | None, ranges: bool = True) -> None:
        if self.max_bytes is not None and size > self.max_bytes:
            raise PayloadTooLarge(f"{self.source} is {size} bytes, more than the limit of {self.max_bytes}")
        if self.expected_size is not None and size != self.expected_size:
            raise CorruptFile(f"{self.source}: the server has {size} bytes, expected {self.expected_size}")
        m = PieceMap.plan(size, self.connections, source=self.source, validator=validator)
        m.ranges = ranges
        self.map = m
        self.resumed_from = self.on_disk = 0
        self.checkpoint_every = checkpoint_interval_bytes(m.piece)
        self._open(truncate=True)
        self._check_space(size)
        self._preallocate(size)

    def _open(self, *, truncate: bool) -> None:
        if self.hasher is not None:
            self.hasher.close()
            self.hasher = None
        if self.fd >= 0:
            os.close(self.fd)
        flags = os.O_RDWR | os.O_CREAT | (os.O_TRUNC if truncate else 0)
        self.fd = os.open(self.part, flags, 0o644)
        if truncate:
            map_path(self.part).unlink(missing_ok=True)
        self.hasher = _PrefixHasher(self.part)
        if self.map is not None:
            self.hasher.advance(self.map.contiguous())

    def _check_space(self, size: int) -> None:
        free = shutil.disk_usage(self.part.parent).free
        need = size + self.engine.min_free_bytes
        if free < need:
            raise InsufficientStorage(
                f"not enough space for {self.source} in {self.part.parent}: {size} bytes needed "
                f"(+{self.engine.min_free_bytes} kept free), {free} free"
            )

    def _preallocate(self, size: int) -> None:
        if size <= 0:
            return
        try:
            os.posix_fallocate(self.fd, 0, size)
        except OSError as e:
            if e.errno == errno.ENOSPC:
                raise InsufficientStorage(f"disk full while reserving {size} bytes for {self.source}") from e
            # Filesystems without fallocate (some network volumes) simply grow the file.

    async def _checkpoint_now(self) -> None:
        if self.checkpointing is not None:
            await self.checkpointing
        if self.map is not None and self.map.ranges and self.fd >= 0:
            await asyncio.to_thread(self._save_map, list(self.map.done))

    async def _checkpoint_on_stop(self) -> None:
        """A cancel or failure keeps every written byte: one last fdatasync + map write."""
        if self.checkpointing is not None:
            with contextlib.suppress(BaseException):
                await asyncio.wait([self.checkpointing])
        if self.map is not None and self.map.ranges and self.fd >= 0:
            with contextlib.suppress(OSError):
                self._save_map(list(self.map.done))

    def _maybe_checkpoint(self) -> None:
        if self.map is None or not self.map.ranges or not self.since_checkpoint:
            return
        now = time.monotonic()
        if self.since_checkpoint < self.checkpoint_every and now - self.checkpointed < CHECKPOINT_INTERVAL:
            return
        if self.checkpointing is not None and not self.checkpointing.done():
            return
        self.since_checkpoint = 0
        self.checkpointed = now
        done = list(self.map.done)  # taken *before* the fdatasync: these bytes are all written
        self.checkpointing = asyncio.get_running_loop().run_in_executor(None, self._save_map, done)

    async def _keep_up_with_checkpoints(self) -> None:
        """Wait while a checkpoint is running and ``checkpoint_every`` more bytes were written since.

        Without this, a slow ``fdatasync`` (a busy disk, a network volume) lets the bytes written
        past the last saved map grow without bound, and a kill fetches them all again; with it, at
        most about two checkpoint intervals (half a piece) are unsaved at any time.
        """
        while (
            self.checkpointing is not None
            and not self.checkpointing.done()
            and self.since_checkpoint >= self.checkpoint_every
        ):
            with contextlib.suppress(Exception):  # a failed checkpoint raises in _checkpoint_now
                await asyncio.shield(self.checkpointing)

    def _save_map(self, done: list[int]) -> None:
        m = self.need_map()
        os.fdatasync(self.fd)
        snapshot = PieceMap(m.size, m.piece, done, self.source, m.validator, m.ranges)
        path = map_path(self.part)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(snapshot.to_json())
        os.replace(tmp, path)

    async def _close(self) -> None:
        if self.checkpointing is not None:
            with contextlib.suppress(Exception):
                await self.checkpointing
        if self.hasher is not None:
            await asyncio.to_thread(self.hasher.close)
            self.hasher = None
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

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
