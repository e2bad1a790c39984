"""The download manager: jobs that put verified model files into the model folders on the volume.

One :class:`DownloadService` per process runs its own asyncio loop in a background thread
(:class:`~.loop_thread.LoopThread`), with one shared aiohttp session (the outbound URL policy wired
in) and the parallel ranged engine of :mod:`podkit.backends.http_download`, so nodes, routes and the
bootstrap command all use it through plain thread-safe methods.

A job is one request item (a file, or an HF snapshot of several). Its life:

1. ``queued`` until resolved; the item's source gives URL, size and sha256 (``backends/sources``).
2. Per file, under a cross-process lock file in ``<models>/.podkit/locks`` (the model cache's
   ``O_EXCL`` lock with stale takeover, so two processes or pods asking for the same file make one
   transfer): a file that is already present and verified finishes at once; else ``running``:
   the engine writes ``<models>/.podkit/partial/<key>.part`` and its resume map, at most
   ``PODKIT_DOWNLOAD_FILES`` files at once, after a free-space check.
3. ``verifying``: size and sha256 (computed while downloading), the model type read from the
   safetensors header (an explicit ``type`` wins), then an atomic rename into
   ``<models>/<folder>/[<subfolder>/]<name>``, confined to the models root, and a record in
   ``<models>/.podkit/index`` that later requests trust (size + mtime) instead of re-hashing
   (:mod:`.model_folders`).
4. ``done``, ``failed`` (with the reason; a wrong sha256 names both hashes and publishes nothing),
   ``cancelled`` (partial files removed) or ``paused`` (partial files kept for ``resume``).

Jobs live in the state database (:mod:`.download_store`); after a restart the unfinished ones
resume from their maps. Identical requests while a job is active return that job; an identical
request later re-runs the same job, which finishes at once when the file is still there (``force``
re-downloads). Job records are frozen: every change replaces the job under the service's lock, and
the task running a job and its stop request live in the service's own dicts (the records and
their throttled announcing in :mod:`.download_records`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import aiohttp

from ..backends.http_download import HttpDownloader
from ..backends.http_partial import discard_partial, partial_progress
from ..backends.sources import ResolvedFile, make_session, resolve
from ..backends.state_db import StateDB
from ..core.download_job import ACTIVE, FINISHED, DownloadJob, FileState, describe_source, request_key
from ..core.download_request import DownloadItem
from ..core.errors import (
    Conflict,
    CorruptFile,
    InsufficientStorage,
    InvalidRequest,
    NotFound,
    PodKitError,
    TransferFailed,
)
from ..core.events import Notifier, NullNotifier
from ..core.locks import FileLock
from ..core.objects import ObjectStore, parse_object_uri
from ..core.settings import Settings
from ..core.url_policy import UrlPolicy
from .download_records import DownloadRecords
from .file_fetch import FileFetch
from .loop_thread import LoopThread
from .model_folders import ModelFolders, file_key

logger = logging.getLogger(__name__)

#: Bytes that must stay free on the models volume beyond a download.
FREE_RESERVE = 64 * 2**20
KEEP_FINISHED = 500
#: What a snapshot without an explicit type places (other files of the repo are listed as skipped).
WEIGHT_SUFFIXES = (".safetensors", ".sft", ".ckpt", ".pt", ".pth", ".bin", ".gguf", ".onnx")


class DownloadService:
    """Download jobs on a loop of their own; every public method is thread-safe and quick.

    Args:
        settings: models_dir, connection counts and tokens come from here.
        db: the per-instance state database (the ``downloads`` table).
        store: the object store, for ``r2://`` items.
        policy: the outbound URL policy.
        notifier: receives ``podkit.download`` events.
        engine_options: extra :class:`HttpDownloader` arguments (tests shorten backoff/stall).
    """

    def __init__(
        self,
        settings: Settings,
        db: StateDB,
        store: ObjectStore,
        *,
        policy: UrlPolicy,
        notifier: Notifier | None = None,
        engine_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.settings = settings
        self.folders = ModelFolders(Path(settings.models_dir or settings.cache_dir.parent / "models"))
        self.db = db
        self.store = store
        self.notifier = notifier or NullNotifier()
        self.policy = policy
        self.engine_options = dict(engine_options or {})
        self.free_bytes: Callable[[Path], int] = lambda p: shutil.disk_usage(p).free
        self.records = DownloadRecords(db, self.notifier)
        self._lock = self.records.lock
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._stops: dict[str, str] = {}  # "pause" or "cancel" while a job's task is being stopped
        self._loop = LoopThread("podkit-downloads")
        self._session: aiohttp.ClientSession | None = None
        self._engine: HttpDownloader | None = None
        self._slots: asyncio.Semaphore | None = None
        bucket = settings.lora_bucket
        self.fetcher = FileFetch(self._loop, store, policy, bucket, lambda: self._engine)
        self.fetch_file = self.fetcher.fetch_file

    @property
    def root(self) -> Path:
        return self.folders.root

    def model_folders(self) -> dict[str, Path]:
        """ComfyUI folder name → folder on the volume (created), for ``folder_paths``."""
        return self.folders.folders()

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Start the loop thread and resume every unfinished job."""
        if self._loop.started:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        self._loop.start(self._setup)
        with self._lock:
            pending = [j for j in self.records.all() if j.status in ACTIVE]
        for job in sorted(pending, key=lambda j: j.created):
            self.records.update(job.id, status="queued")
            self._schedule(job.id)

    async def _setup(self) -> None:
        files = self.settings.download_files
        connections = self.settings.download_connections
        self._session = make_session(self.policy, limit=files * connections + 8)
        options: dict[str, Any] = {"connections": connections, "min_free_bytes": FREE_RESERVE}
        options.update(self.engine_options)
        self._engine = HttpDownloader(self._session, **options)
        self._slots = asyncio.Semaphore(files)

    def close(self) -> None:
        """Stop every transfer (partial files stay, so the next start resumes) and the loop."""

        async def shutdown() -> None:
            # job tasks stay active for the next start; fetch_file callers get TransferFailed
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if self._session is not None:
                await self._session.close()

        self._loop.stop(shutdown)

    # ------------------------------------------------------------------ public API
    def submit(self, items: Sequence[DownloadItem], *, force: bool = False) -> list[DownloadJob]:
        """Queue ``items``; returns one job per item (an identical active request's job is reused)."""
        if not items:
            raise InvalidRequest("nothing to download")
        ids: list[str] = []
        for item in items:
            key = request_key(item)
            with self._lock:
                job = next((j for j in self.records.all() if j.key == key), None)
                if job is not None and job.status in ACTIVE and job.id not in self._stops:
                    ids.append(job.id)  # one transfer for identical requests
                    continue
                if job is None:
                    now = time.time()
                    job = DownloadJob(id=uuid.uuid4().hex[:16], key=key, item=item, created=now, updated=now)
                    self.records.add(job)
                self._stops.pop(job.id, None)
                self.records.update(
                    job.id, force=force, forced_at=time.time() if force else 0.0, status="queued",
                    error=None, files=(), speed=0.0, eta=None,
                )  # fmt: skip
            self.records.changed(job.id)
            self._schedule(job.id)
            ids.append(job.id)
        self._prune()
        return [self.get(i) for i in ids]

    def get(self, job_id: str) -> DownloadJob:
        return self.records.get(job_id)

    def jobs(self) -> list[DownloadJob]:
        """Every job, newest first."""
        return self.records.all()

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for job in self.jobs():
            out[job.status] = out.get(job.status, 0) + 1
        return out

    def cancel(self, job_id: str) -> DownloadJob:
        """Cancel an active or paused job (partial files removed), or remove a finished one."""
        with self._lock:
            job = self.get(job_id)
            if job.status in FINISHED:
                self.records.remove(job.id)
                self._forget(job.id)
                if job.status != "done":
                    self._discard_partials(job)  # a failed job's bytes would never be resumed now
                return job
            running = self._running(job.id)
            self._stops[job.id] = "cancel"
        if running:
            self._stop_task(job.id)
        else:
            self._discard_partials(job)
            self.records.set_status(job.id, "cancelled")
        return self.get(job.id)

    def pause(self, job_id: str) -> DownloadJob:
        """Stop an active job, keeping its partial files for :meth:`resume`."""
        with self._lock:
            job = self.get(job_id)
            if job.status not in ACTIVE:
                raise Conflict(f"download {job.id} is {job.status}; only a queued or running job pauses")
            self._stops[job.id] = "pause"
            running = self._running(job.id)
        if running:
            self._stop_task(job.id)
        else:
            self.records.set_status(job.id, "paused")
        return self.get(job.id)

    def resume(self, job_id: str) -> DownloadJob:
        """Queue a paused (or failed) job again; it continues from its partial files."""
        with self._lock:
            job = self.get(job_id)
            if job.status not in ("paused", "failed"):
                raise Conflict(f"download {job.id} is {job.status}; only a paused or failed job resumes")
            self._stops.pop(job.id, None)
            self.records.update(job.id, status="queued", error=None)
        self.records.changed(job.id)
        self._schedule(job.id)
        return self.get(job.id)

    def wait(self, job_ids: Iterable[str], timeout: float | None = None) -> list[DownloadJob]:
        """Block until the jobs are finished or paused (tests and the bootstrap command)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        ids = list(job_ids)
        while True:
            jobs = [self.get(i) for i in ids]
            if all(j.status not in ACTIVE for j in jobs):
                return jobs
            if deadline is not None and time.monotonic() > deadline:
                raise TransferFailed(f"downloads still running after {timeout} s")
            time.sleep(0.05)

    # ------------------------------------------------------------------ scheduling
    def _forget(self, job_id: str) -> None:
        self._stops.pop(job_id, None)
        self._tasks.pop(job_id, None)

    def _running(self, job_id: str) -> bool:
        task = self._tasks.get(job_id)
        return task is not None and not task.done()

    def _schedule(self, job_id: str) -> None:
        def create() -> None:
            # Under the lock that pause/cancel hold while they look at the task: a job paused or
            # cancelled before its task existed was settled by them, and must not start now.
            with self._lock:
                job = self.records.find(job_id)
                if job is None or job_id in self._stops or job.status != "queued":
                    return
                task = self._tasks.get(job_id)
                if task is not None and not task.done():
                    # still stopping (a cancel or pause just before this request): start when it ends
                    task.add_done_callback(lambda _t: create())
                    return
                self._tasks[job_id] = asyncio.ensure_future(self._run(job_id))

        self._loop.call(create)  # not started: start() schedules every queued job

    def _stop_task(self, job_id: str) -> None:
        def stop() -> None:
            task = self._tasks.get(job_id)
            if task is not None and not task.done():
                task.cancel()
            else:  # it finished or never started on the loop: settle the state here
                self._settle_stopped(job_id)

        self._loop.call(stop)

    def _settle_stopped(self, job_id: str) -> None:
        with self._lock:
            job = self.records.find(job_id)
            if job is None or job.status not in ACTIVE:
                return
            if self._stops.get(job_id) == "cancel":
                self._discard_partials(job)
                self.records.set_status(job_id, "cancelled")
            else:
                files = tuple(
                    dataclasses.replace(f, status="paused") if f.status in ACTIVE else f for f in job.files
                )
                self.records.update(job_id, files=files)
                self.records.set_status(job_id, "paused")

    def _discard_partials(self, job: DownloadJob) -> None:
        """Remove ``job``'s partial files, except those another active job is using."""
        with self._lock:
            busy = {k for j in self.records.all() if j.id != job.id and j.status in ACTIVE for k in j.keys}
        for key in job.keys:
            if key not in busy:
                discard_partial(self.folders.partial(key))

    def _prune(self) -> None:
        with self._lock:
            finished = sorted(
                (j for j in self.records.all() if j.status in FINISHED), key=lambda j: j.updated
            )
            drop = [j.id for j in finished[: max(0, len(finished) - KEEP_FINISHED)]]
            for job_id in drop:
                self._forget(job_id)
            self.records.remove(*drop)

    # ------------------------------------------------------------------ one job
    async def _run(self, job_id: str) -> None:
        item = self.get(job_id).item
        try:
            assert self._session is not None  # noqa: S101 - set up before the loop runs
            files = await resolve(item, session=self._session, settings=self.settings, store=self.store)
            skipped: list[FileState] = []
            if item.is_snapshot and item.type is None:
                # a repo's README/config files are not models; say so instead of failing the job
                skipped = [
                    FileState(name=f.filename, bytes_total=0, status="skipped",
                              error="not a model weights file; give type to place it anyway")
                    for f in files if not f.filename.lower().endswith(WEIGHT_SUFFIXES)
                ]  # fmt: skip
                files = [f for f in files if f.filename.lower().endswith(WEIGHT_SUFFIXES)]
                if not files:
                    raise NotFound(f"{describe_source(item)} has no model weights file to place")
            states = [FileState(name=f.filename, bytes_total=f.size, sha256=f.sha256) for f in files]
            self.records.update(
                job_id, files=(*states, *skipped), keys=tuple(file_key(item, f) for f in files)
            )
            self.records.set_status(job_id, "running")
            results = await asyncio.gather(
                *(self._one_file(job_id, i, rf) for i, rf in enumerate(files)), return_exceptions=True
            )
            for r in results:
                if isinstance(r, asyncio.CancelledError):
                    raise r
            errors = [r for r in results if isinstance(r, BaseException)]
            self.records.replace(job_id, DownloadJob.summarised)
            if errors:
                first = errors[0]
                message = str(first) if isinstance(first, PodKitError) else f"internal error: {first!r}"
                if not isinstance(first, PodKitError):
                    logger.error("download %s failed", job_id, exc_info=first)
                if len(results) > 1:
                    message = f"{len(errors)} of {len(results)} files failed; first: {message}"
                self.records.set_status(job_id, "failed", message)
            else:
                self.records.set_status(job_id, "done")
        except asyncio.CancelledError:
            if job_id not in self._stops:  # the service is closing: the job stays active for the next start
                raise
            self._settle_stopped(job_id)
        except PodKitError as e:
            self.records.set_status(job_id, "failed", str(e))
        except Exception as e:
            logger.exception("download %s failed", job_id)
            self.records.set_status(job_id, "failed", f"internal error: {e!r}")

    async def _one_file(self, job_id: str, index: int, rf: ResolvedFile) -> None:
        key = file_key(self.get(job_id).item, rf)
        try:
            await self._locked_file(job_id, index, rf, key)
            self.records.set_file(job_id, index, status="done")
        except asyncio.CancelledError:
            self.records.set_file(
                job_id, index, status="paused" if self._stops.get(job_id) == "pause" else "cancelled"
            )
            raise
        except BaseException as e:
            self.records.set_file(job_id, index, status="failed", error=str(e))
            raise

    async def _locked_file(self, job_id: str, index: int, rf: ResolvedFile, key: str) -> None:
        lock = self.folders.lock(key)
        # Polled on the loop (a cancel never leaves a lock taken by an abandoned thread behind),
        # with the heartbeat as a task; another process fetching the same file keeps us waiting.
        while not lock.try_acquire():
            await asyncio.sleep(0.25)
        beat = asyncio.ensure_future(_heartbeat(lock))
        try:
            job = self.get(job_id)
            if job.force:
                # a forced download starts from zero once; after a restart it resumes its own bytes
                part = self.folders.partial(key)
                with contextlib.suppress(FileNotFoundError):
                    if part.stat().st_mtime < job.forced_at:
                        discard_partial(part)
                self.folders.forget(key)
            else:
                placed = await asyncio.to_thread(self.folders.present, job.item, rf, key)
                if placed is not None:
                    self.records.set_file(job_id, index, **placed.file_changes(), present=True)
                    return
            assert self._slots is not None  # noqa: S101
            async with self._slots:
                self.records.set_file(job_id, index, status="running")
                part = await self._transfer(job_id, index, rf, key)
            self.records.set_file(job_id, index, status="verifying")
            job = self.get(job_id)
            if all(f.status in ("verifying", "done", "failed", "skipped") for f in job.files):
                self.records.set_status(job_id, "verifying")  # every byte is in: classify, check, publish
            else:
                self.records.progress(job_id, force_emit=True)
            sha = job.files[index].sha256
            placed = await asyncio.to_thread(
                self.folders.publish, job.item, rf, key, part, sha, force=job.force
            )
            self.records.set_file(job_id, index, **placed.file_changes())
        finally:
            beat.cancel()
            lock.release()

    # ------------------------------------------------------------------ transfer
    async def _transfer(self, job_id: str, index: int, rf: ResolvedFile, key: str) -> Path:
        part = self.folders.partial(key)
        part.parent.mkdir(parents=True, exist_ok=True)
        if rf.size is not None:
            have = partial_progress(part)
            done = have[0] if have is not None and have[1] == rf.size else 0
            need = rf.size - done + FREE_RESERVE
            free = await asyncio.to_thread(self.free_bytes, part.parent)
            if free < need:
                raise InsufficientStorage(
                    f"not enough space for {rf.filename} in {self.root}: {rf.size - done} more bytes "
                    f"needed (+{FREE_RESERVE} kept free), {free} free"
                )

        def progress(done: int, total: int | None) -> None:
            self.records.set_file(
                job_id, index, bytes_done=done, **({} if total is None else {"bytes_total": total})
            )
            self.records.progress(job_id)

        if rf.store_uri is not None:
            sha = await asyncio.to_thread(self._copy_object, job_id, index, rf, part)
            self.records.set_file(job_id, index, sha256=sha)
            return part
        assert self._engine is not None  # noqa: S101
        result = await self._engine.fetch(
            rf.url, part, size=rf.size, sha256=rf.sha256, headers=rf.headers, on_progress=progress
        )
        self.records.set_file(
            job_id, index, sha256=result.sha256, bytes_done=result.size, bytes_total=result.size
        )
        return part

    def _copy_object(self, job_id: str, index: int, rf: ResolvedFile, part: Path) -> str:
        ref = parse_object_uri(rf.store_uri or "", self.settings.lora_bucket)
        meta = self.store.head(ref)
        if rf.size is not None and meta.size != rf.size:
            raise Conflict(f"{ref.uri} changed since it was resolved")
        self.records.set_file(job_id, index, bytes_done=0, bytes_total=meta.size)
        loop = self._loop.loop

        def on_bytes(n: int) -> None:
            self.records.add_bytes(job_id, index, n)
            if loop is not None:
                loop.call_soon_threadsafe(self.records.progress, job_id)

        discard_partial(part)
        sha = self.store.download_verified(meta, part, on_bytes=on_bytes)
        if rf.sha256 is not None and sha != rf.sha256:
            discard_partial(part)
            raise CorruptFile(f"sha256 mismatch for {ref.uri}: expected {rf.sha256}, got {sha}")
        with open(part, "rb+") as f:
            os.fsync(f.fileno())
        return sha


async def _heartbeat(lock: FileLock) -> None:
    """Refresh the lock file's mtime so other hosts see the transfer alive."""
    while True:
        await asyncio.sleep(max(lock.stale_after / 4, 0.05))
        with contextlib.suppress(OSError):
            os.utime(lock.path)
