"""The training job service: queue, dataset intake, trainer watch, upload of the LoRA, restarts.

One job's life: ``queued`` → ``preparing`` (dataset taken in, base model resolved, config
written) → ``running`` (the trainer; progress read from its log) → ``uploading`` (the final
``<name>.safetensors`` checked and pushed to the LoRA bucket) → ``done``; or ``failed`` /
``cancelled``. At most ``concurrency`` jobs hold the GPU (preparing or running) at once; the rest
wait in creation order.

Every state change is written to the instance's state database before it is announced, so a
restart finds each job where it was: a trainer that still runs is re-attached (its output is a log
file, not a pipe), one that is gone is judged by its final file (valid → uploaded, else failed with
the reason), an interrupted upload resumes, an interrupted preparation starts again. Closing the
service detaches from running trainers instead of killing them: restarting ComfyUI must not throw
away hours of training.

An upload that fails because the store is unreachable keeps the file and retries with exponential
backoff for as long as it takes; the LoRA is never deleted before the store has it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from ..core.ai_toolkit import build_config, config_yaml, log_tail, parse_progress, split_output, step_saves
from ..core.datasets import (
    DatasetLimits,
    DatasetReport,
    copy_folder,
    extract_archive,
    is_dataset_file,
    safe_member_path,
)
from ..core.errors import (
    Conflict,
    CorruptFile,
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
    PodKitError,
)
from ..core.events import Notifier, NullNotifier
from ..core.objects import ObjectRef, ObjectStore, parse_object_uri
from ..core.retry import Backoff, retryable
from ..core.safetensors_info import read_safetensors_info
from ..core.settings import Settings
from ..core.trainer_env import trainer_env
from ..core.training import ACTIVE_STATUSES, TrainingJob, downsample
from ..core.training_request import TrainingRequest, confine, parse_training_request, resolve_base_model
from .state_db import StateDB
from .trainer import AiToolkitBackend, TrainerBackend, TrainerProcess

logger = logging.getLogger(__name__)

TRAINING_MIGRATIONS: dict[int, str] = {
    1: """
    CREATE TABLE IF NOT EXISTS training_jobs (
        id TEXT PRIMARY KEY,
        status TEXT NOT NULL,
        created REAL NOT NULL,
        updated REAL NOT NULL,
        data TEXT NOT NULL
    );
    CREATE INDEX IF NOT EXISTS training_jobs_status ON training_jobs(status, created)
    """,
}

EVENT = "podkit.training"
_LOG_TAIL_BYTES = 256 * 1024


class DatasetFetcher(Protocol):
    """The download manager's blocking fetch (``services.downloads.fetch_file``)."""

    def fetch_file(
        self,
        url_or_uri: str,
        dest_dir: Path,
        *,
        sha256: str | None = None,
        max_bytes: int | None = None,
        timeout: float | None = None,
    ) -> Path: ...


class GpuArbiter(Protocol):
    """Decides when a training job may take the GPU (``PODKIT_TRAINING_GPU_POLICY``)."""

    def acquire(self, job_id: str, cancelled: Callable[[], bool]) -> None:
        """Block until the job may start its trainer (return early when ``cancelled()``)."""
        ...

    def release(self, job_id: str) -> None: ...

    def reserved(self) -> bool:
        """True while training holds the GPU exclusively (generation should wait)."""
        ...


class SharedGpu:
    """``shared``: training and generation run side by side; ComfyUI keeps its models loaded."""

    def acquire(self, job_id: str, cancelled: Callable[[], bool]) -> None:
        return None

    def release(self, job_id: str) -> None:
        return None

    def reserved(self) -> bool:
        return False


class ExclusiveGpu:
    """``exclusive``: a trainer starts only when the host reports no generation running, after the
    host has freed its VRAM; while it trains, :meth:`reserved` is True for the host to hold prompts.

    Args:
        generation_busy: True while the host runs a prompt (default: never).
        free_vram: unloads the host's models (default: nothing to free).
    """

    def __init__(
        self,
        generation_busy: Callable[[], bool] | None = None,
        free_vram: Callable[[], None] | None = None,
        *,
        poll: float = 0.5,
    ) -> None:
        self.generation_busy = generation_busy or (lambda: False)
        self.free_vram = free_vram or (lambda: None)
        self.poll = poll
        self._holders: set[str] = set()
        self._lock = threading.Lock()

    def acquire(self, job_id: str, cancelled: Callable[[], bool]) -> None:
        while self.generation_busy() and not cancelled():
            time.sleep(self.poll)
        with self._lock:
            self._holders.add(job_id)
        try:
            self.free_vram()
        except Exception:  # the host's cleanup must not fail the job
            logger.warning("freeing VRAM before training failed", exc_info=True)

    def release(self, job_id: str) -> None:
        with self._lock:
            self._holders.discard(job_id)

    def reserved(self) -> bool:
        with self._lock:
            return bool(self._holders)


@dataclass(frozen=True)
class TrainingOptions:
    """How the service runs jobs (built by ``services.py`` from the settings)."""

    training_dir: Path
    lora_bucket: str
    roots: tuple[Path, ...]  # folders a dataset/base-model path may name
    hub_dirs: tuple[Path, ...] = ()  # Hugging Face caches searched for preset base models
    passthrough_env: Mapping[str, str] = field(default_factory=dict)
    hf_token: str | None = field(default=None, repr=False)
    hf_home: Path | None = None
    concurrency: int = 1
    stop_grace: float = 10.0
    poll_interval: float = 0.25
    limits: DatasetLimits = DatasetLimits()
    backoff: Backoff = Backoff(base=2.0, cap=300.0)
    max_loss_points: int = 2000


class TrainingService:
    """Training jobs for one PodKit instance. Thread-safe; routes call it via ``asyncio.to_thread``."""

    def __init__(
        self,
        db: StateDB,
        store: ObjectStore,
        backend: TrainerBackend,
        options: TrainingOptions,
        *,
        notifier: Notifier | None = None,
        on_lora_uploaded: Callable[[], object] | None = None,
        downloads: DatasetFetcher | None = None,
        gpu: GpuArbiter | None = None,
    ) -> None:
        self.db = db
        self.store = store
        self.backend = backend
        self.options = options
        self.notifier = notifier or NullNotifier()
        self.on_lora_uploaded = on_lora_uploaded
        self.downloads = downloads
        self.gpu = gpu or SharedGpu()
        db.ensure_schema("training", TRAINING_MIGRATIONS)
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._gpu_jobs: set[str] = set()
        self._cancel: set[str] = set()
        self._threads: dict[str, threading.Thread] = {}
        self._dispatcher: threading.Thread | None = None
        self._live: dict[str, TrainingJob] = {}  # running jobs' latest progress (saved throttled)
        self._loss: dict[str, list[tuple[int, float]]] = {}

    # ----------------------------------------------------------------- persistence
    def _save(self, job: TrainingJob) -> None:
        data = _job_to_json(job)
        with self.db.transaction() as c:
            c.execute(
                "INSERT INTO training_jobs (id, status, created, updated, data) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT(id) DO UPDATE SET status=excluded.status, updated=excluded.updated, "
                "data=excluded.data",
                (job.id, job.status, job.created, job.updated, data),
            )

    def _load(self, job_id: str) -> TrainingJob | None:
        rows = self.db.query("SELECT data FROM training_jobs WHERE id=?", (job_id,))
        return _job_from_json(str(rows[0][0])) if rows else None

    def _publish(self, job: TrainingJob) -> TrainingJob:
        """Save, then announce (a client never hears of a state the database does not hold)."""
        self._save(job)
        self.notifier.emit(EVENT, job.to_wire())
        return job

    def _set(self, job: TrainingJob, **changes: Any) -> TrainingJob:
        changes.setdefault("updated", time.time())
        if changes.get("status") in ("done", "failed", "cancelled"):
            changes.setdefault("finished", changes["updated"])
        return self._publish(replace(job, **changes))

    # ----------------------------------------------------------------- lifecycle
    def start(self) -> None:
        """Reconcile what an earlier process left, then start dispatching queued jobs."""
        if self._dispatcher is not None:
            return
        self._stop.clear()
        self.options.training_dir.mkdir(parents=True, exist_ok=True)
        self.reconcile()
        self._dispatcher = threading.Thread(target=self._dispatch, name="podkit-training", daemon=True)
        self._dispatcher.start()

    def close(self, timeout: float = 15.0) -> None:
        """Stop watching; running trainers keep running and are re-attached by the next start."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        deadline = time.monotonic() + timeout
        with self._cond:
            threads = [t for t in (self._dispatcher, *self._threads.values()) if t is not None]
        for t in threads:
            t.join(max(0.1, deadline - time.monotonic()))
        self._dispatcher = None
        self._threads.clear()

    def reconcile(self) -> None:
        """Bring every unfinished job in line with reality after a restart (never stuck running)."""
        for job in self.list_jobs(statuses=ACTIVE_STATUSES):
            if job.status == "preparing":
                # The intake is redone from scratch; its half-written files are replaced.
                self._set(job, status="queued", error=None)
            elif job.status == "running":
                proc = self.backend.attach(job.pid, job.proc_start) if job.pid else None
                if proc is not None:
                    logger.info("training %s: re-attached to trainer pid %d", job.id, job.pid)
                    with self._cond:
                        self._gpu_jobs.add(job.id)
                    self.gpu.acquire(job.id, lambda: True)  # it already trains: hold, never wait
                    self._spawn(job.id, self._resume_watch, job, proc)
                else:
                    self._spawn(job.id, self._after_exit, job, None, None)
            elif job.status == "uploading":
                self._spawn(job.id, self._upload_and_finish, job)

    def _spawn(self, job_id: str, target: Callable[..., object], *args: object) -> None:
        def run() -> None:
            try:
                target(*args)
            except Exception as e:  # a bug must fail the job, not leave it "running" forever
                logger.exception("training %s: unexpected error", job_id)
                job = self._load(job_id)
                if job is not None and not job.finished_status and not self._stop.is_set():
                    self._set(job, status="failed", error=f"internal error: {type(e).__name__}: {e}"[:500])
            finally:
                self._release_gpu(job_id)
                with self._cond:
                    self._threads.pop(job_id, None)
                    self._cond.notify_all()

        t = threading.Thread(target=run, name=f"podkit-training-{job_id[:8]}", daemon=True)
        with self._cond:  # registered and started together: close() never joins an unstarted thread
            self._threads[job_id] = t
            t.start()

    def _release_gpu(self, job_id: str) -> None:
        with self._cond:
            held = job_id in self._gpu_jobs
            self._gpu_jobs.discard(job_id)
            self._cond.notify_all()
        if held:
            self.gpu.release(job_id)

    def _dispatch(self) -> None:
        while not self._stop.is_set():
            with self._cond:
                job: TrainingJob | None = None
                if len(self._gpu_jobs) < self.options.concurrency:
                    rows = self.db.query(
                        "SELECT data FROM training_jobs WHERE status='queued' ORDER BY created LIMIT 1"
                    )
                    if rows:
                        job = _job_from_json(str(rows[0][0]))
                        job = self._set(job, status="preparing", error=None)
                        self._gpu_jobs.add(job.id)
                if job is None:
                    self._cond.wait(1.0)
                    continue
            self._spawn(job.id, self._run, job)

    # ----------------------------------------------------------------- API
    def submit(self, body: Mapping[str, Any]) -> TrainingJob:
        """Validate ``body`` and queue a job; returns at once (the job runs in the background).

        Raises:
            InvalidRequest: a bad field (named in the message).
            Forbidden: training is disabled, or a path outside the allowed folders.
            Conflict: an unfinished job already trains this LoRA name.
        """
        self.backend.check()
        req = parse_training_request(body)
        if req.dataset.kind == "path":
            confine(req.dataset.value, self.options.roots, "dataset.path")
        if req.dataset.kind == "url" and self.downloads is None:
            raise InvalidRequest("dataset.url needs the download manager, which is not available here")
        if req.dataset.kind == "uri":
            dataset_object(req.dataset.value, self.options.lora_bucket)
        if req.base_model.startswith("/"):
            confine(req.base_model, self.options.roots, "base_model")
        with self._cond:
            for other in self.list_jobs(statuses=ACTIVE_STATUSES):
                if other.name == req.name:
                    raise Conflict(f"job {other.id} is already training {req.name!r} ({other.status})")
            now = time.time()
            job_id = uuid.uuid4().hex
            job = TrainingJob(
                id=job_id,
                name=req.name,
                status="queued",
                request=req,
                job_dir=str(self.options.training_dir / job_id),
                created=now,
                updated=now,
                total_steps=req.steps,
            )
            self._publish(job)
            self._cond.notify_all()
        return job

    def get(self, job_id: str) -> TrainingJob:
        live = self._live.get(job_id)
        if live is not None:
            return live
        job = self._load(job_id)
        if job is None:
            raise NotFound(f"no training job {job_id!r}")
        return job

    def list_jobs(self, *, statuses: Sequence[str] | None = None, limit: int = 500) -> list[TrainingJob]:
        """Jobs, newest first."""
        if statuses:
            marks = ",".join("?" * len(statuses))
            rows = self.db.query(
                f"SELECT data FROM training_jobs WHERE status IN ({marks}) ORDER BY created DESC LIMIT ?",  # noqa: S608
                (*statuses, limit),
            )
        else:
            rows = self.db.query("SELECT data FROM training_jobs ORDER BY created DESC LIMIT ?", (limit,))
        jobs = [_job_from_json(str(r[0])) for r in rows]
        return [self._live.get(j.id, j) for j in jobs]

    def detail(self, job_id: str, *, log_lines: int = 100) -> dict[str, object]:
        """The job plus its config YAML, the last log lines and the loss series."""
        job = self.get(job_id)
        wire = job.to_wire()
        try:
            wire["config_yaml"] = job.config_path.read_text()
        except OSError:
            wire["config_yaml"] = None
        wire["log_tail"] = _read_log_tail(job.log_path, log_lines)
        loss = self._loss.get(job.id)
        if loss is None:
            loss = _read_loss(Path(job.job_dir) / "loss.tsv")
        wire["loss"] = [list(p) for p in downsample(loss, self.options.max_loss_points)]
        return wire

    def cancel(self, job_id: str, *, wait: float | None = None) -> TrainingJob:
        """Cancel a job: a queued one at once, a working one by stopping its trainer (group).

        Raises:
            NotFound: no such job.
            Conflict: the job has already finished.
        """
        with self._cond:
            job = self._load(job_id)
            if job is None:
                raise NotFound(f"no training job {job_id!r}")
            if job.finished_status:
                raise Conflict(f"training job {job_id} has already finished ({job.status})")
            if job.status == "queued":
                return self._set(job, status="cancelled", error="cancelled before it started")
            self._cancel.add(job_id)
            self._cond.notify_all()
            thread = self._threads.get(job_id)
        if thread is not None:
            thread.join(self.options.stop_grace + 15 if wait is None else wait)
        elif not self._stop.is_set():
            job = self._set(job, status="cancelled", error="cancelled")
        return self.get(job_id)

    def delete(self, job_id: str, *, force: bool = False) -> TrainingJob:
        """Remove a finished job and its folder.

        Raises:
            Conflict: the job is unfinished, or it failed holding a LoRA the bucket does not have
                (pass ``force`` to delete it anyway).
        """
        with self._cond:
            job = self._load(job_id)
            if job is None:
                raise NotFound(f"no training job {job_id!r}")
            if not job.finished_status:
                raise Conflict(f"training job {job_id} is {job.status}; cancel it first")
            if job.status == "failed" and job.lora_uri is None and _valid_lora(job.final_path) and not force:
                raise Conflict(
                    f"training job {job_id} holds a trained LoRA that was never uploaded; "
                    'delete with {"force": true} to discard it'
                )
            with self.db.transaction() as c:
                c.execute("DELETE FROM training_jobs WHERE id=?", (job_id,))
        shutil.rmtree(job.job_dir, ignore_errors=True)
        self._loss.pop(job_id, None)
        return job

    def gpu_reserved(self) -> bool:
        """True while a training job holds the GPU under the ``exclusive`` policy."""
        return self.gpu.reserved()

    def attach_host(self, *, generation_busy: Callable[[], bool], free_vram: Callable[[], None]) -> None:
        """Let the ``exclusive`` policy see the host's prompt queue and free its VRAM (ComfyUI)."""
        if isinstance(self.gpu, ExclusiveGpu):
            self.gpu.generation_busy = generation_busy
            self.gpu.free_vram = free_vram

    # ----------------------------------------------------------------- the job
    def _cancelled(self, job_id: str) -> bool:
        with self._cond:
            return job_id in self._cancel

    def _finish_cancelled(self, job: TrainingJob) -> TrainingJob:
        with self._cond:
            self._cancel.discard(job.id)
        self._live.pop(job.id, None)
        return self._set(job, status="cancelled", error="cancelled", eta_s=None)

    def _run(self, job: TrainingJob) -> None:
        try:
            job = self._prepare(job)
        except (PodKitError, OSError) as e:  # OSError: the disk filled up, a folder went away
            if self._stop.is_set():
                return  # requeued by the next start
            if self._cancelled(job.id):
                self._finish_cancelled(job)
                return
            reason = str(e) if isinstance(e, PodKitError) else f"cannot prepare the job: {e}"
            self._set(job, status="failed", error=reason[:1000])
            return
        if self._cancelled(job.id):
            self._finish_cancelled(job)
            return
        if self._stop.is_set():
            return
        self.gpu.acquire(job.id, lambda: self._cancelled(job.id) or self._stop.is_set())
        if self._cancelled(job.id):
            self._finish_cancelled(job)
            return
        env = trainer_env(
            self.options.passthrough_env, hf_token=self.options.hf_token, hf_home=self.options.hf_home
        )
        try:
            proc = self.backend.launch(job.config_path, env=env, log_path=job.log_path)
        except (OSError, PodKitError) as e:
            self._set(job, status="failed", error=f"cannot start the trainer: {e}"[:1000])
            return
        job = self._set(job, status="running", pid=proc.pid, proc_start=proc.start_time)
        self._watch(job, proc, 0)

    def _prepare(self, job: TrainingJob) -> TrainingJob:
        req = job.request
        job_dir = Path(job.job_dir)
        job_dir.mkdir(parents=True, exist_ok=True)
        report = self._intake(req, job_dir)
        if report.missing_captions:
            logger.info("training %s: %d images have no caption", job.id, report.missing_captions)
        name_or_path = resolve_base_model(req, hub_dirs=self.options.hub_dirs, roots=self.options.roots)
        config = build_config(
            req,
            name_or_path=name_or_path,
            dataset_dir=Path(report.folder),
            training_folder=job.training_folder,
        )
        tmp = job.config_path.with_suffix(".yaml.tmp")
        tmp.write_text(config_yaml(config))
        tmp.replace(job.config_path)
        (job_dir / "loss.tsv").unlink(missing_ok=True)
        return self._set(job, dataset=report.to_wire(), base_model_path=name_or_path)

    def _intake(self, req: TrainingRequest, job_dir: Path) -> DatasetReport:
        src = req.dataset
        lim = self.options.limits
        dest = job_dir / "dataset"
        incoming = job_dir / "incoming"
        shutil.rmtree(incoming, ignore_errors=True)
        incoming.mkdir()
        try:
            if src.kind == "path":
                path = confine(src.value, self.options.roots, "dataset.path")
                if path.is_dir():
                    return copy_folder(path, dest, caption_ext=req.caption_ext, limits=lim)
                if path.is_file():
                    return extract_archive(path, dest, caption_ext=req.caption_ext, limits=lim)
                raise InvalidRequest(f"dataset.path {src.value} is neither a folder nor an archive")
            if src.kind == "uri":
                ref, prefix = dataset_object(src.value, self.options.lora_bucket)
                if prefix:
                    folder = self._download_prefix(ref.bucket, ref.key + "/", incoming / "files", req)
                    return copy_folder(folder, dest, caption_ext=req.caption_ext, limits=lim)
                meta = self.store.head(ref)
                if meta.size > lim.max_total_bytes:
                    raise PayloadTooLarge(f"{ref.uri} is larger than {lim.max_total_bytes} bytes")
                archive = incoming / "dataset.archive"
                self.store.download_verified(meta, archive)
            else:
                if self.downloads is None:
                    raise InvalidRequest("dataset.url needs the download manager")
                archive = self.downloads.fetch_file(
                    src.value, incoming, sha256=src.sha256, max_bytes=lim.max_total_bytes
                )
            return extract_archive(archive, dest, caption_ext=req.caption_ext, limits=lim)
        finally:
            shutil.rmtree(incoming, ignore_errors=True)

    def _download_prefix(self, bucket: str, prefix: str, folder: Path, req: TrainingRequest) -> Path:
        """Download the images and captions under ``prefix`` (a dataset folder in the bucket)."""
        lim = self.options.limits
        objects = self.store.list(bucket, prefix, limit=lim.max_files + 1)
        if len(objects) > lim.max_files:
            raise PayloadTooLarge(f"r2://{bucket}/{prefix} holds more than {lim.max_files} objects")
        wanted = [m for m in objects if is_dataset_file(m.ref.key, req.caption_ext)]
        if sum(m.size for m in wanted) > lim.max_total_bytes:
            raise PayloadTooLarge(f"r2://{bucket}/{prefix} holds more than {lim.max_total_bytes} bytes")
        folder.mkdir(parents=True, exist_ok=True)
        for meta in wanted:
            rel = safe_member_path(meta.ref.key[len(prefix) :])
            if rel is None:  # a hidden file or folder
                continue
            if meta.size > lim.max_file_bytes:
                raise PayloadTooLarge(f"{meta.ref.uri} is larger than {lim.max_file_bytes} bytes")
            target = folder / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            self.store.download_verified(meta, target)
        return folder

    def _resume_watch(self, job: TrainingJob, proc: TrainerProcess) -> None:
        try:
            offset = job.log_path.stat().st_size
        except OSError:
            offset = 0
        # Catch up on the last part of the log so progress shows at once.
        start = max(0, offset - _LOG_TAIL_BYTES)
        self._loss[job.id] = _read_loss(Path(job.job_dir) / "loss.tsv")
        self._watch(job, proc, start)

    def _watch(self, job: TrainingJob, proc: TrainerProcess, offset: int) -> None:
        """Follow the trainer's log until it exits, is cancelled, or this service closes."""
        loss_path = Path(job.job_dir) / "loss.tsv"
        series = self._loss.setdefault(job.id, _read_loss(loss_path))
        last_step = series[-1][0] if series else -1
        rest = ""
        saved_at = emitted_at = 0.0
        uploaded_steps: set[int] = set()
        checked_saves_at = 0.0
        self._live[job.id] = job
        try:
            with open(job.log_path, "a+b") as log, open(loss_path, "a") as loss_out:
                while True:
                    code = proc.poll()
                    log.seek(offset)
                    chunk = log.read()
                    offset += len(chunk)
                    lines, rest = split_output(rest + chunk.decode("utf-8", "replace"))
                    progress = None
                    for line in lines:
                        p = parse_progress(line)
                        if p is None:
                            continue
                        progress = p
                        if p.loss is not None and p.step > last_step:
                            series.append((p.step, p.loss))
                            loss_out.write(f"{p.step}\t{p.loss!r}\n")
                            last_step = p.step
                    now = time.time()
                    if progress is not None:
                        job = job.with_progress(progress, now)
                        self._live[job.id] = job
                        loss_out.flush()
                        if now - saved_at >= 2.0:
                            self._save(job)
                            saved_at = now
                        if now - emitted_at >= 1.0:
                            self.notifier.emit(EVENT, job.to_wire())
                            emitted_at = now
                    if job.request.upload_intermediate and (code == 0 or now - checked_saves_at >= 2.0):
                        checked_saves_at = now
                        job = self._upload_step_saves(job, uploaded_steps, final=code == 0)
                    if code is not None:
                        break
                    if self._cancelled(job.id):
                        proc.stop(self.options.stop_grace)
                        self._finish_cancelled(job)
                        return
                    if self._stop.wait(self.options.poll_interval):
                        self._save(job)  # detach: the trainer runs on; the next start re-attaches
                        proc.detach()
                        return
        finally:
            self._live.pop(job.id, None)
            self._loss.pop(job.id, None)  # the route reads loss.tsv from now on
        self._after_exit(job, proc, code)

    def _after_exit(self, job: TrainingJob, proc: TrainerProcess | None, code: int | None) -> None:
        """The trainer is gone (``code`` None/-1 when its exit code is unknown): judge its output."""
        if proc is not None:
            proc.reap_group()
        self._release_gpu(job.id)
        final = job.final_path
        if code not in (None, -1) and code != 0:
            reason = _last_error_line(job.log_path)
            self._set(
                job, status="failed", error=f"trainer exited with code {code}: {reason}"[:1000], eta_s=None
            )
            return
        try:
            info = read_safetensors_info(final, label=final.name)
            if not info.is_lora:
                raise CorruptFile(f"{final.name}: no LoRA tensors in the trainer's output")
        except CorruptFile as e:
            if code in (None, -1):
                why = "the trainer stopped while PodKit was not watching and left no valid final LoRA"
            else:
                why = "the trainer exited without a valid final LoRA"
            self._set(job, status="failed", error=f"{why}: {e}"[:1000], eta_s=None)
            return
        job = self._set(job, status="uploading", step=job.total_steps or job.step, eta_s=None, error=None)
        self._upload_and_finish(job)

    # ----------------------------------------------------------------- upload
    def _upload_and_finish(self, job: TrainingJob) -> None:
        final = job.final_path
        if not final.is_file():
            self._set(job, status="failed", error=f"{final.name} disappeared before it was uploaded")
            return
        ref = ObjectRef(self.options.lora_bucket, f"{job.name}.safetensors")
        sha = _sha256(final)
        while True:
            if self._cancelled(job.id):
                self._finish_cancelled(job)
                return
            wait = (job.next_attempt or 0) - time.time()
            if wait > 0 and self._stop.wait(wait):
                return
            if self._stop.is_set():
                return
            try:
                meta = self.store.upload_file(
                    final,
                    ref,
                    content_type="application/octet-stream",
                    metadata={"sha256": sha, "podkit-training-job": job.id},
                )
            except PodKitError as e:
                attempts = job.attempts + 1
                if not retryable(e):
                    self._set(
                        job,
                        status="failed",
                        attempts=attempts,
                        error=f"upload to {ref.uri} refused: {e}; the LoRA stays in the job folder"[:1000],
                    )
                    return
                delay = self.options.backoff.delay(attempts)
                logger.warning(
                    "training %s: upload attempt %d failed (%s); retry in %.0fs", job.id, attempts, e, delay
                )
                job = self._set(
                    job,
                    attempts=attempts,
                    next_attempt=time.time() + delay,
                    error=f"upload attempt {attempts} failed, retrying: {e}"[:1000],
                )
                continue
            break
        # the listing first: a client that sees "done" finds the LoRA in the loader's list
        if self.on_lora_uploaded is not None:
            try:
                self.on_lora_uploaded()
            except Exception:  # the LoRA is uploaded; a listing refresh failure is not the job's
                logger.warning("LoRA listing refresh after training failed", exc_info=True)
        job = self._set(
            job,
            status="done",
            lora_uri=ref.uri,
            lora_etag=meta.etag,
            lora_sha256=sha,
            lora_bytes=final.stat().st_size,
            error=None,
            next_attempt=None,
        )
        logger.info("training %s: %s uploaded to %s", job.id, final.name, ref.uri)

    def _upload_step_saves(self, job: TrainingJob, done: set[int], *, final: bool) -> TrainingJob:
        """Upload new intermediate saves (best effort: a failure is logged and retried next time)."""
        saves = step_saves(job.training_folder, job.name)
        # ai-toolkit may still be writing the newest save; wait until a later one exists or it exits.
        ready = saves if final else saves[:-1]
        for step, path in ready:
            if step in done:
                continue
            ref = ObjectRef(self.options.lora_bucket, f"{job.name}/{path.name}")
            try:
                self.store.upload_file(path, ref, content_type="application/octet-stream")
            except PodKitError as e:
                logger.warning("training %s: intermediate upload of %s failed: %s", job.id, path.name, e)
                continue
            done.add(step)
            if ref.uri not in job.intermediate:
                job = replace(job, intermediate=(*job.intermediate, ref.uri))
                self._live[job.id] = job
                self._save(job)
        return job


# --------------------------------------------------------------------------------------------------
# helpers


ARCHIVE_SUFFIXES = (".zip", ".tar", ".tgz", ".tar.gz", ".tar.bz2", ".tar.xz")


def dataset_object(uri: str, default_bucket: str) -> tuple[ObjectRef, bool]:
    """The bucket object a ``dataset.uri`` names, and whether it is a folder (prefix) of images.

    An archive name (``.zip``, ``.tar``, ``.tar.gz``, ...) is one object; anything else, or a
    trailing ``/``, is the folder of images and captions under that prefix.

    Raises:
        InvalidRequest: an unsafe or malformed URI.
    """
    ref = parse_object_uri(uri.rstrip("/"), default_bucket)
    return ref, uri.endswith("/") or not ref.key.lower().endswith(ARCHIVE_SUFFIXES)


def _job_to_json(job: TrainingJob) -> str:
    return json.dumps(
        {
            "id": job.id,
            "name": job.name,
            "status": job.status,
            "request": job.request.to_wire(),
            "job_dir": job.job_dir,
            "created": job.created,
            "updated": job.updated,
            "step": job.step,
            "total_steps": job.total_steps,
            "loss": job.loss,
            "sec_per_step": job.sec_per_step,
            "eta_s": job.eta_s,
            "error": job.error,
            "lora_uri": job.lora_uri,
            "lora_etag": job.lora_etag,
            "lora_sha256": job.lora_sha256,
            "lora_bytes": job.lora_bytes,
            "dataset": dict(job.dataset) if job.dataset is not None else None,
            "base_model_path": job.base_model_path,
            "pid": job.pid,
            "proc_start": job.proc_start,
            "attempts": job.attempts,
            "next_attempt": job.next_attempt,
            "finished": job.finished,
            "intermediate": list(job.intermediate),
        }
    )


def _job_from_json(text: str) -> TrainingJob:
    d = json.loads(text)
    d["request"] = parse_training_request(d["request"])
    d["intermediate"] = tuple(d.get("intermediate") or ())
    return TrainingJob(**d)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(8 * 2**20):
            h.update(chunk)
    return h.hexdigest()


def _valid_lora(path: Path) -> bool:
    try:
        return read_safetensors_info(path).is_lora
    except CorruptFile:
        return False


def _read_log_tail(path: Path, n: int) -> list[str]:
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - _LOG_TAIL_BYTES))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return []
    return log_tail(text, n)


def _last_error_line(path: Path) -> str:
    lines = _read_log_tail(path, 40)
    for line in reversed(lines):
        if "Error" in line or "Exception" in line:
            return line.strip()[:300]
    return lines[-1].strip()[:300] if lines else "no output"


def _read_loss(path: Path) -> list[tuple[int, float]]:
    out: list[tuple[int, float]] = []
    try:
        text = path.read_text()
    except OSError:
        return out
    for line in text.splitlines():
        step, _, loss = line.partition("\t")
        try:
            out.append((int(step), float(loss)))
        except ValueError:
            continue  # a line cut short by a crash
    return out


def hub_dirs(settings: Settings) -> tuple[Path, ...]:
    """Hugging Face caches where a preset base model may already be (volume first)."""
    env = settings.trainer_env
    found: list[Path] = []
    if env.get("HF_HUB_CACHE"):
        found.append(Path(env["HF_HUB_CACHE"]))
    if env.get("HF_HOME"):
        found.append(Path(env["HF_HOME"]) / "hub")
    if settings.volume_dir is not None:
        volume = settings.volume_dir
        found += [volume / "huggingface" / "hub", volume / ".cache" / "huggingface" / "hub"]
    if env.get("HOME"):
        found.append(Path(env["HOME"]) / ".cache" / "huggingface" / "hub")
    return tuple(dict.fromkeys(found))


def build_training_service(
    settings: Settings,
    db: StateDB,
    store: ObjectStore,
    *,
    notifier: Notifier | None = None,
    on_lora_uploaded: Callable[[], object] | None = None,
    downloads: DatasetFetcher | None = None,
) -> TrainingService:
    """The training service the settings describe (training is disabled without an ai-toolkit dir)."""
    roots = tuple(p for p in (settings.volume_dir, settings.models_dir) if p is not None)
    hf_home = settings.volume_dir / "huggingface" if settings.volume_dir is not None else None
    options = TrainingOptions(
        training_dir=settings.state_dir / "training",
        lora_bucket=settings.lora_bucket,
        roots=roots,
        hub_dirs=hub_dirs(settings),
        passthrough_env=settings.trainer_env,
        hf_token=settings.hf_token,
        hf_home=hf_home,
        concurrency=settings.training_concurrency,
    )
    gpu: GpuArbiter = ExclusiveGpu() if settings.training_gpu_policy == "exclusive" else SharedGpu()
    return TrainingService(
        db,
        store,
        AiToolkitBackend(settings.ai_toolkit_dir, settings.ai_toolkit_python),
        options,
        notifier=notifier,
        on_lora_uploaded=on_lora_uploaded,
        downloads=downloads,
        gpu=gpu,
    )
