"""The on-disk side of one HTTP download: the partial file, its resume map, checkpoints, the hasher.

:class:`_PartialFile` is the file-and-map half of :class:`~podkit.backends.http_transfer._Transfer`
(which adds the network loop): opening and preallocating ``<part>``, loading and planning its
:class:`~podkit.core.download_plan.PieceMap`, and checkpointing it (``fdatasync``, then the map) so the
map never claims bytes that are not durable. :class:`_PrefixHasher` hashes the contiguous prefix on a
thread while the file is written. The helpers here (``map_path``, ``discard_partial``,
``partial_progress``, ``source_id``) are what the download jobs use to find, inspect and remove a
partial download without running the engine. They are separate from the engine
(:mod:`podkit.backends.http_download`) and the network loop so that each module stays one concern.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import os
import shutil
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from ..core.download_plan import PieceMap
from ..core.errors import CorruptFile, InsufficientStorage, InvalidRequest, PayloadTooLarge, TransferFailed

if TYPE_CHECKING:
    from .http_download import HttpDownloader

_HASH_BLOCK = 8 * 2**20
#: The resume map is checkpointed at least this often (seconds) while bytes arrive.
CHECKPOINT_INTERVAL = 1.0


def checkpoint_interval_bytes(piece: int) -> int:
    """Bytes written between two checkpoints of the map: a quarter piece (at least 1 MiB).

    With :meth:`_PartialFile._keep_up_with_checkpoints` at most two intervals are unsaved, so a kill
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


class _PartialFile:
    """The partial file and its resume map: the state :class:`~podkit.backends.http_transfer._Transfer`
    sets up in its ``__init__``, and the methods that open, plan and checkpoint them."""

    engine: HttpDownloader
    part: Path
    source: str
    expected_size: int | None
    max_bytes: int | None
    connections: int
    map: PieceMap | None
    fd: int
    hasher: _PrefixHasher | None
    resumed_from: int
    on_disk: int
    since_checkpoint: int
    checkpoint_every: int
    checkpointing: asyncio.Future[None] | None
    checkpointed: float

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
