"""The HTTP download engine against a real local server with ranges, throttling and faults."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
from http_server import FaultServer, fault_server

from podkit.backends.http_download import HttpDownloader
from podkit.backends.http_partial import checkpoint_interval_bytes, map_path, partial_progress
from podkit.backends.http_transfer import WRITE_BATCH
from podkit.core.download_plan import PieceMap
from podkit.core.errors import AccessDenied, CorruptFile, InsufficientStorage, NotFound, PayloadTooLarge

MiB = 2**20


def payload(n: int, seed: int = 1) -> bytes:
    """Deterministic, incompressible-looking bytes."""
    block = hashlib.sha256(str(seed).encode()).digest() * 2048  # 64 KiB
    reps = -(-n // len(block))
    data = bytearray(block * reps)[:n]
    for i in range(0, n, 4096):  # make every 4 KiB distinct so misplaced bytes are caught
        data[i : i + 8] = i.to_bytes(8, "little")
    return bytes(data)


@pytest.fixture
def server() -> Iterator[FaultServer]:
    with fault_server() as srv:
        yield srv


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(read_bufsize=2**20) as s:
        yield s


def engine(session: aiohttp.ClientSession, **kw: object) -> HttpDownloader:
    kw.setdefault("backoff_base", 0.01)
    return HttpDownloader(session, **kw)  # type: ignore[arg-type]


async def test_parallel_ranged_download(
    server: FaultServer, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    data = payload(40 * MiB + 123)
    sha = server.add("/f.bin", data)
    seen: list[tuple[int, int | None]] = []
    part = tmp_path / "f.part"
    r = await engine(session, connections=4).fetch(
        server.url("/f.bin"), part, sha256=sha, on_progress=lambda d, t: seen.append((d, t))
    )
    assert part.read_bytes() == data and r.sha256 == sha and r.size == len(data)
    assert r.ranges and r.connections == 4 and r.resumed_from == 0
    assert server.bytes_sent == len(data)  # nothing fetched twice
    assert set(server.statuses()) == {206}
    assert seen[-1] == (len(data), len(data))


async def test_small_file_and_empty_file(
    server: FaultServer, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    server.add("/small", b"hello")
    server.add("/empty", b"")
    r = await engine(session).fetch(server.url("/small"), tmp_path / "s")
    assert (tmp_path / "s").read_bytes() == b"hello" and r.sha256 == hashlib.sha256(b"hello").hexdigest()
    r = await engine(session).fetch(server.url("/empty"), tmp_path / "e", size=0)
    assert r.size == 0 and r.sha256 == hashlib.sha256(b"").hexdigest()


@pytest.mark.parametrize("known_size", [True, False])
async def test_pieces_larger_than_the_first_request_need_no_retry(
    server: FaultServer,
    session: aiohttp.ClientSession,
    tmp_path: Path,
    known_size: bool,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="podkit.backends.http_transfer")
    data = payload(96 * MiB)  # 2 connections: 8 pieces of 12 MiB, more than a first request of unknown size
    sha = server.add("/f", data)
    size = len(data) if known_size else None
    r = await engine(session, connections=2).fetch(server.url("/f"), tmp_path / "p", size=size, sha256=sha)
    assert r.sha256 == sha and server.bytes_sent == len(data)
    starts = [int(rng.split("=")[1].split("-")[0]) for _, rng, _ in server.requests if rng]
    assert len(starts) == len(set(starts))  # no range asked twice: nothing was retried
    assert len(server.requests) == (8 if known_size else 9)  # unknown size: 8 MiB first, then the rest
    assert "retry" not in caplog.text


async def test_writes_never_run_far_ahead_of_a_slow_checkpoint(
    server: FaultServer, session: aiohttp.ClientSession, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = payload(64 * MiB)
    sha = server.add("/f", data)
    real_fdatasync = os.fdatasync

    def slow_disk(fd: int) -> None:  # a busy disk or a network volume: every sync takes a while
        time.sleep(0.2)
        real_fdatasync(fd)

    monkeypatch.setattr(os, "fdatasync", slow_disk)
    part = tmp_path / "p"
    gaps: list[int] = []

    def progress(on_disk: int, _total: int | None) -> None:
        saved = partial_progress(part)
        gaps.append(on_disk - (saved[0] if saved else 0))

    connections = 4
    r = await engine(session, connections=connections).fetch(
        server.url("/f"), part, sha256=sha, on_progress=progress
    )
    assert r.sha256 == sha
    interval = checkpoint_interval_bytes(PieceMap.plan(len(data), connections).piece)
    # The saved map trails by at most two checkpoint intervals plus, per interval, one batch per
    # connection (a batch may end one network chunk past WRITE_BATCH). Unchecked, a 0.2 s sync lets
    # the whole file run ahead.
    assert max(gaps) <= 2 * interval + 2 * connections * 2 * WRITE_BATCH < len(data) // 4


async def test_server_closing_mid_segment_is_retried(
    server: FaultServer, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    data = payload(20 * MiB)
    sha = server.add("/f", data)
    server.close_after(3 * MiB + 5)
    r = await engine(session, connections=2).fetch(server.url("/f"), tmp_path / "p", sha256=sha)
    assert r.sha256 == sha and (tmp_path / "p").read_bytes() == data
    assert server.bytes_sent == len(data)  # the cut piece resumed at its last byte


async def test_200_instead_of_206_is_streamed_whole(
    server: FaultServer, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    data = payload(24 * MiB)
    sha = server.add("/f", data)
    server.ranges = False
    r = await engine(session, connections=8).fetch(server.url("/f"), tmp_path / "p", sha256=sha)
    assert (tmp_path / "p").read_bytes() == data and not r.ranges and r.connections == 1
    assert set(server.statuses()) == {200} and len(server.requests) == 1


async def test_retry_after_and_throttling(
    server: FaultServer, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    data = payload(33 * MiB)
    sha = server.add("/f", data)
    server.fail(503, retry_after=0)
    server.fail(429, retry_after=0)
    r = await engine(session, connections=4).fetch(server.url("/f"), tmp_path / "p", sha256=sha)
    assert r.sha256 == sha and server.statuses()[:2] == [503, 429]


async def test_stall_is_detected_and_retried(
    server: FaultServer, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    data = payload(9 * MiB)
    sha = server.add("/f", data)
    server.stall_after(MiB, 3.0)
    r = await engine(session, connections=2, stall_timeout=0.5).fetch(
        server.url("/f"), tmp_path / "p", sha256=sha
    )
    assert r.sha256 == sha and len(server.requests) >= 3


async def test_errors_are_clear(server: FaultServer, session: aiohttp.ClientSession, tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="404"):
        await engine(session).fetch(server.url("/missing"), tmp_path / "p")
    server.add("/f", b"x" * 100)
    server.fail(403)
    with pytest.raises(AccessDenied, match="403"):
        await engine(session).fetch(server.url("/f"), tmp_path / "p")
    with pytest.raises(PayloadTooLarge):
        await engine(session).fetch(server.url("/f"), tmp_path / "p", max_bytes=99)


async def test_wrong_sha256_removes_the_partial(
    server: FaultServer, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    data = payload(MiB)
    actual = server.add("/f", data)
    wanted = "0" * 64
    with pytest.raises(CorruptFile) as e:
        await engine(session).fetch(server.url("/f"), tmp_path / "p", sha256=wanted)
    assert wanted in str(e.value) and actual in str(e.value)
    assert not (tmp_path / "p").exists() and not map_path(tmp_path / "p").exists()


async def test_wrong_size_is_refused(
    server: FaultServer, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    server.add("/f", payload(MiB))
    with pytest.raises(CorruptFile, match="expected"):
        await engine(session).fetch(server.url("/f"), tmp_path / "p", size=MiB + 1)


async def test_no_space_is_refused_before_downloading(
    server: FaultServer, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    server.add("/f", payload(16 * MiB))
    with pytest.raises(InsufficientStorage, match="not enough space"):
        await engine(session, min_free_bytes=2**62).fetch(server.url("/f"), tmp_path / "p")
    assert server.bytes_sent < 16 * MiB


async def settled_bytes_sent(server: FaultServer) -> int:
    """The server's byte count once its handler threads noticed the closed connections."""
    last = -1
    while server.bytes_sent != last:
        last = server.bytes_sent
        await asyncio.sleep(0.3)
    return last


async def test_resume_after_interruption_fetches_little_twice(
    server: FaultServer, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    data = payload(64 * MiB)
    sha = server.add("/f", data)
    server.throttle_bps = 24 * MiB  # per connection
    part = tmp_path / "p"
    task = asyncio.ensure_future(engine(session, connections=4).fetch(server.url("/f"), part, sha256=sha))
    while (progress := partial_progress(part)) is None or progress[0] < 24 * MiB:
        await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    sent_first = await settled_bytes_sent(server)
    server.throttle_bps = None
    r = await engine(session, connections=4).fetch(server.url("/f"), part, sha256=sha)
    assert r.sha256 == sha and part.read_bytes() == data
    assert r.resumed_from >= 24 * MiB
    assert server.bytes_sent - len(data) <= sent_first - r.resumed_from
    assert server.bytes_sent - len(data) <= 16 * MiB  # at most one piece fetched twice


async def test_resume_of_a_changed_file_starts_over(
    server: FaultServer, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    old = payload(32 * MiB, seed=1)
    server.add("/f", old)
    server.throttle_bps = 16 * MiB
    part = tmp_path / "p"
    task = asyncio.ensure_future(engine(session, connections=2).fetch(server.url("/f"), part))
    while (progress := partial_progress(part)) is None or progress[0] < 8 * MiB:
        await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    server.throttle_bps = None
    new = payload(32 * MiB, seed=2)
    sha = server.add("/f", new)  # same size, other bytes, other ETag: If-Range answers 200
    r = await engine(session, connections=2).fetch(server.url("/f"), part, sha256=sha)
    assert part.read_bytes() == new and r.sha256 == sha


async def test_resume_when_server_stops_serving_ranges(
    server: FaultServer, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    data = payload(32 * MiB)
    sha = server.add("/f", data)
    server.throttle_bps = 16 * MiB
    part = tmp_path / "p"
    task = asyncio.ensure_future(engine(session, connections=2).fetch(server.url("/f"), part))
    while (progress := partial_progress(part)) is None or progress[0] < 8 * MiB:
        await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    server.throttle_bps = None
    server.ranges = False
    r = await engine(session, connections=2).fetch(server.url("/f"), part, sha256=sha)
    assert part.read_bytes() == data and r.sha256 == sha and not r.ranges


@pytest.fixture
def tiny_mount(tmp_path: Path) -> Iterator[Path]:
    """A 12 MiB tmpfs (needs root; skipped otherwise): a real disk that fills up."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a size-capped tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12m", "tmpfs", str(mnt)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount tmpfs: {done.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


async def test_disk_full(server: FaultServer, session: aiohttp.ClientSession, tiny_mount: Path) -> None:
    server.add("/f", payload(16 * MiB))
    with pytest.raises(InsufficientStorage):
        await engine(session).fetch(server.url("/f"), tiny_mount / "p")
