"""The download manager: jobs that put verified model files into the model folders on the volume.

One :class:`DownloadService` per process runs its own asyncio loop in a background thread, with
one shared aiohttp session (the outbound URL policy wired in) and the parallel ranged engine of
:mod:`podkit.backends.http_download`, so nodes, routes and the bootstrap command all use it
through plain thread-safe methods.

A job is one request item (a file, or an HF snapshot of several). Its life:

1. ``queued`` until resolved; the item's source gives URL, size and sha256 (:mod:`.sources`).
2. Per file, under a cross-process lock file in ``<models>/.podkit/locks`` (the model cache's
   ``O_EXCL`` lock with stale takeover, so two processes or pods asking for the same file make one
   transfer): a file that is already present and verified finishes at once; else ``running``:
   the engine writes ``<models>/.podkit/partial/<key>.part`` and its resume map, at most
   ``PODKIT_DOWNLOAD_FILES`` files at once, after a free-space check.
3. ``verifying``: size and sha256 (computed while downloading), the model type read from the
   safetensors header (an explicit ``type`` wins), then an atomic rename into
   ``<models>/<folder>/[<subfolder>/]<name>``, confined to the models root, and a record in
   ``<models>/.podkit/index`` that later requests trust (size + mtime) instead of re-hashing.
4. ``done``, ``failed`` (with the reason; a wrong sha256 names both hashes and publishes nothing),
   ``cancelled`` (partial files removed) or ``paused`` (partial files kept for ``resume``).

Jobs live in the state database; after a restart the unfinished ones resume from their maps.
Identical requests while a job is active return that job; an identical request later re-runs the
same job, which finishes at once when the file is still there (``force`` re-downloads).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from ..core.download_request import DownloadItem, redact_url, sanitize_name, validate_relpath
from ..core.errors import (
    Conflict,
    CorruptFile,
    InsufficientStorage,
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
    PodKitError,
    TransferFailed,
)
from ..core.events import Notifier, NullNotifier
from ..core.locks import FileLock
from ..core.model_cache import _fsync_dir, sha256_file
from ..core.model_types import MODEL_FOLDERS, decide_type, folder_for
from ..core.objects import ObjectStore, parse_object_uri
from ..core.settings import Settings
from ..core.url_policy import UrlPolicy, check_url
from .http_download import HttpDownloader, discard_partial, map_path, partial_progress, source_id
from .sources import ResolvedFile, make_session, resolve
from .state_db import StateDB

logger = logging.getLogger(__name__)

EVENT = "podkit.download"
STATUSES = ("queued", "running", "verifying", "paused", "done", "failed", "cancelled")
ACTIVE = frozenset({"queued", "running", "verifying"})
FINISHED = frozenset({"done", "failed", "cancelled"})
#: Bytes that must stay free on the models volume beyond a download.
FREE_RESERVE = 64 * 2**20
EVENT_INTERVAL = 0.5
SAVE_INTERVAL = 2.0
KEEP_FINISHED = 500
#: What a snapshot without an explicit type places (other files of the repo are listed as skipped).
WEIGHT_SUFFIXES = (".safetensors", ".sft", ".ckpt", ".pt", ".pth", ".bin", ".gguf", ".onnx")

DOWNLOAD_MIGRATIONS: dict[int, str] = {
    1: """
    CREATE TABLE IF NOT EXISTS downloads (
        id TEXT PRIMARY KEY,
        key TEXT NOT NULL,
        item TEXT NOT NULL,
        force INTEGER NOT NULL,
        status TEXT NOT NULL,
        created REAL NOT NULL,
        updated REAL NOT NULL,
        state TEXT NOT NULL
    );
    CREATE INDEX IF NOT EXISTS downloads_key ON downloads(key);
    CREATE INDEX IF NOT EXISTS downloads_status ON downloads(status);
    """,
}


@dataclass
class FileState:
    """One file of a job."""

    name: str
    dest: str | None = None
    model_type: str | None = None
    bytes_done: int = 0
    bytes_total: int | None = None
    sha256: str | None = None
    status: str = "queued"
    error: str | None = None
    present: bool = False  # already in place and verified: nothing was transferred

    def to_wire(self) -> dict[str, object]:
        return dataclasses.asdict(self)


@dataclass
class DownloadJob:
    """A download job; :meth:`to_wire` is the route/event JSON (no tokens, no signed URLs)."""

    id: str
    key: str
    item: DownloadItem
    force: bool = False
    status: str = "queued"
    created: float = field(default_factory=time.time)
    updated: float = field(default_factory=time.time)
    model_type: str | None = None
    dest: str | None = None
    sha256: str | None = None
    error: str | None = None
    files: list[FileState] = field(default_factory=list)
    speed: float = 0.0
    eta: float | None = None
    stop: str | None = None  # "pause" or "cancel" while the task is being stopped
    keys: list[str] = field(default_factory=list)  # per file: its partial/lock/index key
    forced_at: float = 0.0  # when force was asked: partial files older than this are discarded
    task: asyncio.Task[None] | None = field(default=None, repr=False)
    _sample: tuple[float, int] = (0.0, 0)
    _emitted: float = 0.0
    _saved: float = 0.0

    @property
    def bytes_done(self) -> int:
        return sum(f.bytes_done for f in self.files)

    @property
    def bytes_total(self) -> int | None:
        totals = [f.bytes_total for f in self.files]
        if not totals or any(t is None for t in totals):
            return None
        return sum(t for t in totals if t is not None)

    def to_wire(self) -> dict[str, object]:
        return {
            "id": self.id,
            "status": self.status,
            "created": self.created,
            "updated": self.updated,
            "name": self.item.label,
            "source": describe_source(self.item),
            "model_type": self.model_type,
            "dest": self.dest,
            "bytes_done": self.bytes_done,
            "bytes_total": self.bytes_total,
            "speed": round(self.speed, 1),
            "eta": None if self.eta is None else round(self.eta, 1),
            "sha256": self.sha256,
            "error": self.error,
            "force": self.force,
            "files": [f.to_wire() for f in self.files],
        }


def describe_source(item: DownloadItem) -> str:
    """A short, credential-free description of where an item comes from."""
    if item.source == "hf":
        rev = f"@{item.revision}" if item.revision else ""
        return f"hf://{item.repo_id}{rev}" + (f"/{item.filename}" if item.filename else "")
    if item.source == "civitai":
        return f"civitai:{item.version_id}" if item.version_id else redact_url(item.url or "")
    if item.source == "bucket":
        return item.uri or ""
    return redact_url(item.url or "")


def item_to_json(item: DownloadItem) -> str:
    return json.dumps(dataclasses.asdict(item), sort_keys=True)


def item_from_json(text: str) -> DownloadItem:
    data = json.loads(text)
    for name in ("allow_patterns", "ignore_patterns"):
        data[name] = tuple(data.get(name) or ())
    return DownloadItem(**data)


def request_key(item: DownloadItem) -> str:
    """Identical requests (same source, type, name, folder, sha256) share one job."""
    return hashlib.sha256(item_to_json(item).encode()).hexdigest()[:32]


def _file_key(item: DownloadItem, rf: ResolvedFile) -> str:
    """The identity of one target file: what it is and where it goes (partial, lock, index)."""
    what = rf.store_uri or source_id(rf.url)
    if item.source == "hf":  # URLs are pinned to a commit; the file's identity is repo + path
        what = f"hf:{item.repo_id}:{item.filename or rf.filename}"
    where = f"{item.type or ''}\n{item.subfolder or ''}\n{rf.filename}"
    return hashlib.sha256(f"{what}\n{where}".encode()).hexdigest()[:40]


class DownloadService:
    """Download jobs on a loop of their own; every public method is thread-safe and quick.

    Args:
        settings: models_dir, connection counts, tokens and the URL policy come from here.
        db: the per-instance state database (the ``downloads`` table).
        store: the object store, for ``r2://`` items.
        notifier: receives ``podkit.download`` events.
        policy: the outbound URL policy (default: from the settings).
        engine_options: extra :class:`HttpDownloader` arguments (tests shorten backoff/stall).
    """

    def __init__(
        self,
        settings: Settings,
        db: StateDB,
        store: ObjectStore,
        *,
        notifier: Notifier | None = None,
        policy: UrlPolicy | None = None,
        engine_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.settings = settings
        self.root = Path(settings.models_dir or settings.cache_dir.parent / "models")
        self.db = db
        self.store = store
        self.notifier = notifier or NullNotifier()
        self.policy = policy or UrlPolicy.from_settings(settings)
        self.engine_options = dict(engine_options or {})
        self.free_bytes: Callable[[Path], int] = lambda p: shutil.disk_usage(p).free
        db.ensure_schema("downloads", DOWNLOAD_MIGRATIONS)
        self._lock = threading.RLock()
        self._jobs: dict[str, DownloadJob] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._session: aiohttp.ClientSession | None = None
        self._engine: HttpDownloader | None = None
        self._slots: asyncio.Semaphore | None = None
        self._load()

    # ------------------------------------------------------------------ paths
    @property
    def work_dir(self) -> Path:
        return self.root / ".podkit"

    def _partial(self, key: str) -> Path:
        return self.work_dir / "partial" / f"{key}.part"

    def _index_path(self, key: str) -> Path:
        return self.work_dir / "index" / f"{key}.json"

    def model_folders(self) -> dict[str, Path]:
        """ComfyUI folder name → folder on the volume (created), for ``folder_paths``."""
        out: dict[str, Path] = {}
        for folder in MODEL_FOLDERS.values():
            path = self.root / folder
            path.mkdir(parents=True, exist_ok=True)
            out[folder] = path
        return out

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Start the loop thread and resume every unfinished job."""
        if self._thread is not None:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        self._thread = threading.Thread(target=self._run_loop, name="podkit-downloads", daemon=True)
        self._thread.start()
        self._ready.wait(30)
        with self._lock:
            pending = [j for j in self._jobs.values() if j.status in ACTIVE]
        for job in sorted(pending, key=lambda j: j.created):
            job.status = "queued"
            self._schedule(job)

    def _run_loop(self) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop

        async def setup() -> None:
            files = self.settings.download_files
            connections = self.settings.download_connections
            self._session = make_session(self.settings, limit=files * connections + 8, policy=self.policy)
            options: dict[str, Any] = {"connections": connections, "min_free_bytes": FREE_RESERVE}
            options.update(self.engine_options)
            self._engine = HttpDownloader(self._session, **options)
            self._slots = asyncio.Semaphore(files)

        loop.run_until_complete(setup())
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.close()

    def close(self) -> None:
        """Stop every transfer (partial files stay, so the next start resumes) and the loop."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return

        async def shutdown() -> None:
            # job tasks stay active for the next start; fetch_file callers get TransferFailed
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if self._session is not None:
                await self._session.close()

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(shutdown(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)
        self._thread = self._loop = None

    # ------------------------------------------------------------------ persistence
    def _load(self) -> None:
        rows = self.db.query("SELECT id, key, item, force, status, created, updated, state FROM downloads")
        for r in rows:
            try:
                item = item_from_json(str(r[2]))
                state = json.loads(str(r[7]))
            except (ValueError, TypeError, InvalidRequest):
                logger.warning("download job %s has an unreadable record; skipped", r[0])
                continue
            job = DownloadJob(
                id=str(r[0]), key=str(r[1]), item=item, force=bool(r[3]), status=str(r[4]),
                created=float(r[5]), updated=float(r[6]),  # type: ignore[arg-type]
            )  # fmt: skip
            job.model_type = state.get("model_type")
            job.dest = state.get("dest")
            job.sha256 = state.get("sha256")
            job.error = state.get("error")
            job.files = [FileState(**f) for f in state.get("files") or [] if isinstance(f, dict)]
            job.keys = [str(k) for k in state.get("keys") or []]
            job.forced_at = float(state.get("forced_at") or 0.0)
            self._jobs[job.id] = job

    def _save(self, job: DownloadJob) -> None:
        state = {**job.to_wire(), "keys": job.keys, "forced_at": job.forced_at}
        with self.db.transaction() as c:
            c.execute(
                "INSERT INTO downloads (id, key, item, force, status, created, updated, state) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET force=excluded.force, "
                "status=excluded.status, updated=excluded.updated, state=excluded.state",
                (job.id, job.key, item_to_json(job.item), int(job.force), job.status, job.created,
                 job.updated, json.dumps(state)),
            )  # fmt: skip
        job._saved = time.monotonic()

    def _changed(self, job: DownloadJob, *, save: bool = True) -> None:
        job.updated = time.time()
        if save:
            self._save(job)
        job._emitted = time.monotonic()
        self.notifier.emit(EVENT, job.to_wire())

    def _set_status(self, job: DownloadJob, status: str, error: str | None = None) -> None:
        with self._lock:
            job.status = status
            job.error = error
            if status in FINISHED or status == "paused":
                job.speed, job.eta = 0.0, None
        self._changed(job)

    # ------------------------------------------------------------------ public API
    def submit(self, items: Sequence[DownloadItem], *, force: bool = False) -> list[DownloadJob]:
        """Queue ``items``; returns one job per item (an identical active request's job is reused)."""
        if not items:
            raise InvalidRequest("nothing to download")
        jobs: list[DownloadJob] = []
        for item in items:
            key = request_key(item)
            with self._lock:
                job = next((j for j in self._jobs.values() if j.key == key), None)
                if job is not None and job.status in ACTIVE and job.stop is None:
                    jobs.append(job)  # one transfer for identical requests
                    continue
                if job is None:
                    job = DownloadJob(id=uuid.uuid4().hex[:16], key=key, item=item)
                    self._jobs[job.id] = job
                job.force = force
                job.forced_at = time.time() if force else 0.0
                job.status, job.error, job.stop = "queued", None, None
                job.files, job.speed, job.eta = [], 0.0, None
            self._changed(job)
            self._schedule(job)
            jobs.append(job)
        self._prune()
        return jobs

    def get(self, job_id: str) -> DownloadJob:
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None:
            raise NotFound(f"no download job {job_id!r}")
        return job

    def jobs(self) -> list[DownloadJob]:
        with self._lock:
            return sorted(self._jobs.values(), key=lambda j: j.created, reverse=True)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for job in self.jobs():
            out[job.status] = out.get(job.status, 0) + 1
        return out

    def cancel(self, job_id: str) -> DownloadJob:
        """Cancel an active or paused job (partial files removed), or remove a finished one."""
        job = self.get(job_id)
        with self._lock:
            if job.status in FINISHED:
                self._jobs.pop(job.id, None)
                with self.db.transaction() as c:
                    c.execute("DELETE FROM downloads WHERE id=?", (job.id,))
                if job.status != "done":
                    self._discard_partials(job)  # a failed job's bytes would never be resumed now
                return job
            running = job.task is not None and not job.task.done()
            job.stop = "cancel"
        if running:
            self._stop_task(job)
        else:
            self._discard_partials(job)
            self._set_status(job, "cancelled")
        return job

    def pause(self, job_id: str) -> DownloadJob:
        """Stop an active job, keeping its partial files for :meth:`resume`."""
        job = self.get(job_id)
        with self._lock:
            if job.status not in ACTIVE:
                raise Conflict(f"download {job.id} is {job.status}; only a queued or running job pauses")
            job.stop = "pause"
            running = job.task is not None and not job.task.done()
        if running:
            self._stop_task(job)
        else:
            self._set_status(job, "paused")
        return job

    def resume(self, job_id: str) -> DownloadJob:
        """Queue a paused (or failed) job again; it continues from its partial files."""
        job = self.get(job_id)
        with self._lock:
            if job.status not in ("paused", "failed"):
                raise Conflict(f"download {job.id} is {job.status}; only a paused or failed job resumes")
            job.status, job.error, job.stop = "queued", None, None
        self._changed(job)
        self._schedule(job)
        return job

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
    def _call(self, fn: Callable[[], None]) -> None:
        if self._loop is None:
            return  # not started: start() schedules every queued job
        self._loop.call_soon_threadsafe(fn)

    def _schedule(self, job: DownloadJob) -> None:
        def create() -> None:
            # Under the lock that pause/cancel hold while they look at ``job.task``: a job paused or
            # cancelled before its task existed was settled by them, and must not start now.
            with self._lock:
                if job.stop is not None or job.status != "queued":
                    return
                if job.task is not None and not job.task.done():
                    # still stopping (a cancel or pause just before this request): start when it ends
                    job.task.add_done_callback(lambda _t: create())
                    return
                job.task = asyncio.ensure_future(self._run(job))

        self._call(create)

    def _stop_task(self, job: DownloadJob) -> None:
        def stop() -> None:
            if job.task is not None and not job.task.done():
                job.task.cancel()
            else:  # it finished or never started on the loop: settle the state here
                self._settle_stopped(job)

        self._call(stop)

    def _settle_stopped(self, job: DownloadJob) -> None:
        if job.status not in ACTIVE:
            return
        if job.stop == "cancel":
            self._discard_partials(job)
            self._set_status(job, "cancelled")
        else:
            for f in job.files:
                if f.status in ACTIVE:
                    f.status = "paused"
            self._set_status(job, "paused")

    def _discard_partials(self, job: DownloadJob) -> None:
        """Remove ``job``'s partial files, except those another active job is using."""
        with self._lock:
            busy = {k for j in self._jobs.values() if j is not job and j.status in ACTIVE for k in j.keys}
        for key in job.keys:
            if key not in busy:
                discard_partial(self._partial(key))

    def _prune(self) -> None:
        with self._lock:
            finished = sorted(
                (j for j in self._jobs.values() if j.status in FINISHED), key=lambda j: j.updated
            )
            drop = finished[: max(0, len(finished) - KEEP_FINISHED)]
            for j in drop:
                self._jobs.pop(j.id, None)
        if drop:
            with self.db.transaction() as c:
                c.executemany("DELETE FROM downloads WHERE id=?", [(j.id,) for j in drop])

    # ------------------------------------------------------------------ one job
    async def _run(self, job: DownloadJob) -> None:
        try:
            assert self._session is not None  # noqa: S101 - set up before the loop runs
            files = await resolve(job.item, session=self._session, settings=self.settings, store=self.store)
            skipped: list[FileState] = []
            if job.item.is_snapshot and job.item.type is None:
                # a repo's README/config files are not models; say so instead of failing the job
                skipped = [
                    FileState(name=f.filename, bytes_total=0, status="skipped",
                              error="not a model weights file; give type to place it anyway")
                    for f in files if not f.filename.lower().endswith(WEIGHT_SUFFIXES)
                ]  # fmt: skip
                files = [f for f in files if f.filename.lower().endswith(WEIGHT_SUFFIXES)]
                if not files:
                    raise NotFound(f"{describe_source(job.item)} has no model weights file to place")
            states = [FileState(name=f.filename, bytes_total=f.size, sha256=f.sha256) for f in files]
            job.files = states + skipped
            job.keys = [_file_key(job.item, f) for f in files]
            self._set_status(job, "running")
            results = await asyncio.gather(
                *(self._one_file(job, state, rf) for state, rf in zip(states, files, strict=True)),
                return_exceptions=True,
            )
            for r in results:
                if isinstance(r, asyncio.CancelledError):
                    raise r
            errors = [r for r in results if isinstance(r, BaseException)]
            self._summarise(job)
            if errors:
                first = errors[0]
                message = str(first) if isinstance(first, PodKitError) else f"internal error: {first!r}"
                if not isinstance(first, PodKitError):
                    logger.error("download %s failed", job.id, exc_info=first)
                if len(results) > 1:
                    message = f"{len(errors)} of {len(results)} files failed; first: {message}"
                self._set_status(job, "failed", message)
            else:
                self._set_status(job, "done")
        except asyncio.CancelledError:
            if job.stop is None:  # the service is closing: the job stays active for the next start
                raise
            self._settle_stopped(job)
        except PodKitError as e:
            self._set_status(job, "failed", str(e))
        except Exception as e:
            logger.exception("download %s failed", job.id)
            self._set_status(job, "failed", f"internal error: {e!r}")

    def _summarise(self, job: DownloadJob) -> None:
        dests = [f.dest for f in job.files if f.dest]
        types = {f.model_type for f in job.files if f.model_type}
        job.model_type = types.pop() if len(types) == 1 else (job.item.type if types else None)
        if len(job.files) == 1:
            job.dest, job.sha256 = job.files[0].dest, job.files[0].sha256
        elif dests:
            job.dest = os.path.commonpath(dests) or None

    async def _one_file(self, job: DownloadJob, state: FileState, rf: ResolvedFile) -> None:
        key = _file_key(job.item, rf)
        try:
            await self._locked_file(job, state, rf, key)
            state.status = "done"
        except asyncio.CancelledError:
            state.status = "paused" if job.stop == "pause" else "cancelled"
            raise
        except BaseException as e:
            state.status, state.error = "failed", str(e)
            raise

    async def _locked_file(self, job: DownloadJob, state: FileState, rf: ResolvedFile, key: str) -> None:
        lock = FileLock(self.work_dir / "locks" / f"{key}.lock")
        # Polled on the loop (a cancel never leaves a lock taken by an abandoned thread behind),
        # with the heartbeat as a task; another process fetching the same file keeps us waiting.
        while not lock.try_acquire():
            await asyncio.sleep(0.25)
        beat = asyncio.ensure_future(_heartbeat(lock))
        try:
            if job.force:
                # a forced download starts from zero once; after a restart it resumes its own bytes
                part = self._partial(key)
                with contextlib.suppress(FileNotFoundError):
                    if part.stat().st_mtime < job.forced_at:
                        discard_partial(part)
                self._index_path(key).unlink(missing_ok=True)
            elif await asyncio.to_thread(self._already_present, job, state, rf, key):
                return
            assert self._slots is not None  # noqa: S101
            async with self._slots:
                state.status = "running"
                part = await self._transfer(job, state, rf, key)
            state.status = "verifying"
            if all(f.status in ("verifying", "done", "failed", "skipped") for f in job.files):
                self._set_status(job, "verifying")  # every byte is in: classify, check, publish
            else:
                self._progress(job, force_emit=True)
            await asyncio.to_thread(self._publish, job, state, rf, key, part)
        finally:
            beat.cancel()
            lock.release()

    # ------------------------------------------------------------------ idempotency
    def _dest_for(self, item: DownloadItem, model_type: str, filename: str) -> tuple[str, Path]:
        parts = [folder_for(model_type)]
        if item.subfolder:
            parts.append(item.subfolder)
        parts.append(filename)
        rel = "/".join(parts)
        validate_relpath(rel, field="destination")
        path = self.root / rel
        root = self.root.resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.parent.resolve().is_relative_to(root):
            raise InvalidRequest(f"destination {rel!r} leaves the models folder")
        return rel, path

    def _already_present(self, job: DownloadJob, state: FileState, rf: ResolvedFile, key: str) -> bool:
        """True when the target file is there and verified (no transfer needed).

        The index record (size + mtime of what PodKit published) is trusted without re-hashing.
        A file at the destination that PodKit did not record, or that changed since, is hashed
        when the source gives a sha256: the same bytes count as present, others are a conflict
        (``force`` replaces them) found before any transfer.
        """
        record = self._read_index(key)
        model_type: str | None = job.item.type
        if record is not None:
            rel = str(record["dest"])
            path = self.root / rel
            recorded_type = record.get("model_type")
            model_type = recorded_type if isinstance(recorded_type, str) else model_type
            try:
                st = path.stat()
            except OSError:
                return False
            if (
                st.st_size == record.get("size")
                and st.st_mtime_ns == record.get("mtime_ns")
                and (rf.sha256 is None or rf.sha256 == record.get("sha256"))
                and (rf.size is None or rf.size == st.st_size)
            ):
                self._mark_done(state, rel, st.st_size, str(record.get("sha256")), model_type)
                state.present = True
                return True
        elif model_type is not None:
            rel, path = self._dest_for(job.item, model_type, rf.filename)
            if not path.is_file():
                return False
        else:
            return False  # the folder is known only after reading the header
        size = path.stat().st_size
        if rf.size is not None and size != rf.size:
            raise Conflict(f"{rel} already exists with {size} bytes, not {rf.size}; send force to replace it")
        if rf.sha256 is None:
            raise Conflict(f"{rel} already exists and the source gives no sha256 to verify it; send force")
        digest = sha256_file(path)
        if digest != rf.sha256:
            raise Conflict(
                f"{rel} already exists with sha256 {digest}, not {rf.sha256}; send force to replace it"
            )
        self._write_index(key, rel, path, digest, model_type or "", job.item)
        self._mark_done(state, rel, size, digest, model_type)
        state.present = True
        return True

    def _mark_done(self, state: FileState, rel: str, size: int, sha: str | None, model_type: object) -> None:
        state.dest, state.bytes_done, state.bytes_total = rel, size, size
        state.sha256 = sha or None
        state.model_type = model_type if isinstance(model_type, str) else None

    def _read_index(self, key: str) -> dict[str, object] | None:
        try:
            data = json.loads(self._index_path(key).read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) and isinstance(data.get("dest"), str) else None

    def _write_index(
        self, key: str, rel: str, path: Path, sha: str, model_type: str, item: DownloadItem
    ) -> None:
        st = path.stat()
        record = {
            "dest": rel, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha,
            "model_type": model_type, "source": describe_source(item), "time": time.time(),
        }  # fmt: skip
        index = self._index_path(key)
        index.parent.mkdir(parents=True, exist_ok=True)
        tmp = index.with_name(f"{index.name}.{uuid.uuid4().hex[:8]}.tmp")
        tmp.write_text(json.dumps(record))
        os.replace(tmp, index)

    # ------------------------------------------------------------------ transfer
    async def _transfer(self, job: DownloadJob, state: FileState, rf: ResolvedFile, key: str) -> Path:
        part = self._partial(key)
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
            state.bytes_done = done
            if total is not None:
                state.bytes_total = total
            self._progress(job)

        if rf.store_uri is not None:
            sha = await asyncio.to_thread(self._copy_object, rf, part, state, job)
            state.sha256 = sha
            return part
        assert self._engine is not None  # noqa: S101
        result = await self._engine.fetch(
            rf.url, part, size=rf.size, sha256=rf.sha256, headers=rf.headers, on_progress=progress
        )
        state.sha256, state.bytes_done, state.bytes_total = result.sha256, result.size, result.size
        return part

    def _copy_object(self, rf: ResolvedFile, part: Path, state: FileState, job: DownloadJob) -> str:
        ref = parse_object_uri(rf.store_uri or "", self.settings.lora_bucket)
        meta = self.store.head(ref)
        if rf.size is not None and meta.size != rf.size:
            raise Conflict(f"{ref.uri} changed since it was resolved")
        state.bytes_done, state.bytes_total = 0, meta.size
        loop = self._loop

        def on_bytes(n: int) -> None:
            state.bytes_done += n
            if loop is not None:
                loop.call_soon_threadsafe(self._progress, job)

        discard_partial(part)
        sha = self.store.download_verified(meta, part, on_bytes=on_bytes)
        if rf.sha256 is not None and sha != rf.sha256:
            discard_partial(part)
            raise CorruptFile(f"sha256 mismatch for {ref.uri}: expected {rf.sha256}, got {sha}")
        with open(part, "rb+") as f:
            os.fsync(f.fileno())
        return sha

    def _progress(self, job: DownloadJob, *, force_emit: bool = False) -> None:
        now = time.monotonic()
        done = job.bytes_done
        t0, b0 = job._sample
        if t0 == 0.0:
            job._sample = (now, done)
        elif now - t0 >= 0.5:
            rate = max(0.0, (done - b0) / (now - t0))
            job.speed = rate if job.speed == 0.0 else 0.7 * job.speed + 0.3 * rate
            job._sample = (now, done)
            total = job.bytes_total
            job.eta = (total - done) / job.speed if total is not None and job.speed > 0 else None
        if force_emit or now - job._emitted >= EVENT_INTERVAL:
            self._changed(job, save=now - job._saved >= SAVE_INTERVAL)

    # ------------------------------------------------------------------ publish
    def _publish(self, job: DownloadJob, state: FileState, rf: ResolvedFile, key: str, part: Path) -> None:
        """Classify, then move the verified partial file into its model folder (atomic rename)."""
        item = job.item
        decision = decide_type(explicit=item.type, path=part, filename=rf.filename, source_hint=rf.type_hint)
        if decision.type is None:
            raise InvalidRequest(
                f"could not tell the model type of {rf.filename} ({decision.reason}); give type "
                f"({', '.join(MODEL_FOLDERS)}) and request it again"
            )
        rel, path = self._dest_for(item, decision.type, rf.filename)
        sha = state.sha256 or sha256_file(part)
        if path.exists() and not job.force:
            existing = sha256_file(path)
            if existing != sha:
                discard_partial(part)
                raise Conflict(
                    f"{rel} already exists with other content (sha256 {existing}, downloaded {sha}); "
                    "send force to replace it"
                )
        os.replace(part, path)
        map_path(part).unlink(missing_ok=True)
        _fsync_dir(path.parent)
        self._write_index(key, rel, path, sha, decision.type, item)
        self._mark_done(state, rel, path.stat().st_size, sha, decision.type)
        logger.info("downloaded %s → %s (%s)", describe_source(item), rel, decision.reason)

    # ------------------------------------------------------------------ blocking fetch (training)
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

        Not a model placement: the file keeps its (sanitised) name in the caller's folder. The URL
        policy applies; ``sha256`` and ``max_bytes`` are checked before the file appears.

        Raises:
            InvalidRequest / Forbidden: a refused URL; NotFound, AccessDenied, PayloadTooLarge,
            CorruptFile, TransferFailed as the engine raises them; TransferFailed on ``timeout``.
        """
        if self._loop is None:
            raise TransferFailed("the download service is not started")
        future = asyncio.run_coroutine_threadsafe(
            self._fetch_file(url_or_uri, Path(dest_dir), sha256, max_bytes), self._loop
        )
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TransferFailed(f"{redact_url(url_or_uri)}: not downloaded within {timeout} s") from None
        except concurrent.futures.CancelledError:
            raise TransferFailed(f"{redact_url(url_or_uri)}: the download service stopped") from None

    async def _fetch_file(
        self, url_or_uri: str, dest_dir: Path, sha256: str | None, max_bytes: int | None
    ) -> Path:
        dest_dir.mkdir(parents=True, exist_ok=True)
        if url_or_uri.startswith(("r2://", "s3://")):
            ref = parse_object_uri(url_or_uri, self.settings.lora_bucket)
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
        check_url(url_or_uri, self.policy)
        name = sanitize_name(url_or_uri.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1])
        part = dest_dir / f".{name}.part"
        assert self._engine is not None  # noqa: S101
        try:
            await self._engine.fetch(url_or_uri, part, sha256=sha256, max_bytes=max_bytes)
        except BaseException:
            discard_partial(part)  # the caller's folder never keeps a half-written file
            raise
        os.replace(part, dest_dir / name)
        map_path(part).unlink(missing_ok=True)
        return dest_dir / name


async def _heartbeat(lock: FileLock) -> None:
    """Refresh the lock file's mtime so other hosts see the transfer alive."""
    while True:
        await asyncio.sleep(max(lock.stale_after / 4, 0.05))
        with contextlib.suppress(OSError):
            os.utime(lock.path)
