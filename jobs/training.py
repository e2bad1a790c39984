"""The training job service: the queue, its dispatcher, restarts, and one job's life.

One job's life: ``queued`` → ``preparing`` (dataset taken in, base model resolved, config
written) → ``running`` (the trainer; progress read from its log) → ``uploading`` (the final
``<name>.safetensors`` checked and handed to the outbox) → ``done`` once the outbox has delivered
it to the LoRA bucket; or ``failed`` / ``cancelled``. At most ``concurrency`` jobs hold the GPU
(preparing or running) at once; the rest wait in creation order.

Every state change is saved before it is announced, so a restart finds each job where it was: a
trainer that still runs is re-attached (its output is a log file, not a pipe), one that is gone is
judged by its final file, an interrupted preparation starts again, an upload is followed again in
the outbox. Closing the service detaches from running trainers instead of killing them: restarting
ComfyUI must not throw away hours of training. The upload is the outbox's, with its one retry rule
(:mod:`.training_upload`): the LoRA is never lost while the store is down or refuses it.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..backends.state_db import StateDB
from ..backends.trainer import (
    LOG_TAIL_BYTES,
    TrainerBackend,
    TrainerProcess,
    last_error_line,
    read_log_tail,
    read_loss,
)
from ..core.ai_toolkit import build_config, config_yaml, last_progress, split_output
from ..core.datasets import DatasetLimits
from ..core.errors import Conflict, InvalidRequest, NotFound, PodKitError
from ..core.events import Notifier, NullNotifier
from ..core.objects import ObjectStore
from ..core.trainer_env import trainer_env
from ..core.training import ACTIVE_STATUSES, TrainingJob, TrainingStatus, downsample
from ..core.training_request import confine, parse_training_request, resolve_base_model
from .dataset_intake import DatasetFetcher, IntakeSources, dataset_object, intake
from .gpu_policy import ExclusiveGpu, GpuArbiter, SharedGpu
from .kit import Announcer, Throttle
from .outbox import Outbox
from .training_saves import StepSaveUploader
from .training_store import TrainingStore
from .training_upload import LoraUploads, lora_problem

logger = logging.getLogger(__name__)

S = TrainingStatus
EVENT = "podkit.training"
#: A running job's progress: saved at most every 2 s, announced at most every second.
THROTTLE = Throttle(save_every=2.0, emit_every=1.0)


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
    max_loss_points: int = 2000


class TrainingService:
    """Training jobs for one PodKit instance. Thread-safe; routes call it via ``asyncio.to_thread``.

    Args:
        outbox: delivers the trained LoRAs; the service follows each delivery through
            :meth:`Outbox.observe`.
        on_lora_uploaded: refreshes the LoRA listing before a job is announced ``done``.
    """

    def __init__(
        self,
        db: StateDB,
        store: ObjectStore,
        backend: TrainerBackend,
        options: TrainingOptions,
        *,
        outbox: Outbox,
        notifier: Notifier | None = None,
        on_lora_uploaded: Callable[[], object] | None = None,
        downloads: DatasetFetcher | None = None,
        gpu: GpuArbiter | None = None,
    ) -> None:
        self.db = db
        self.store = store
        self.backend = backend
        self.options = options
        self.outbox = outbox
        self.notifier = notifier or NullNotifier()
        self.on_lora_uploaded = on_lora_uploaded
        self.downloads = downloads
        self.gpu = gpu or SharedGpu()
        self.jobs = TrainingStore(db)
        self.announce = Announcer[TrainingJob](
            self.notifier, EVENT, save=self.jobs.save, wire=TrainingJob.to_wire, throttle=THROTTLE
        )
        self._intake = IntakeSources(options.roots, store, options.lora_bucket, downloads, options.limits)
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._gpu_jobs: set[str] = set()
        self._cancel: set[str] = set()
        self._threads: dict[str, threading.Thread] = {}
        self._dispatcher: threading.Thread | None = None
        self._live: dict[str, TrainingJob] = {}  # running jobs' latest progress (saved throttled)
        self._loss: dict[str, list[tuple[int, float]]] = {}
        self.uploads = LoraUploads(
            outbox, self.jobs.get, self._set, bucket=options.lora_bucket, on_delivered=on_lora_uploaded
        )

    def _set(self, job: TrainingJob, **changes: Any) -> TrainingJob:
        """Change ``job``, save it, then announce it (a final state stamps ``finished``)."""
        changes.setdefault("updated", time.time())
        if changes.get("status") in (S.DONE, S.FAILED, S.CANCELLED):
            changes.setdefault("finished", changes["updated"])
        job = replace(job, **changes)
        self.announce.changed(job.id, job)
        return job

    # ----------------------------------------------------------------- lifecycle
    def start(self) -> None:
        """Reconcile what an earlier process left, then start dispatching queued jobs."""
        if self._dispatcher is not None:
            return
        self._stop.clear()
        self.options.training_dir.mkdir(parents=True, exist_ok=True)
        self.uploads.open()
        self.reconcile()
        self._dispatcher = threading.Thread(target=self._dispatch, name="podkit-training", daemon=True)
        self._dispatcher.start()

    def close(self, timeout: float = 15.0) -> None:
        """Stop watching; running trainers keep running and are re-attached by the next start."""
        self._stop.set()
        self.uploads.close()
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
        for job in self.jobs.list(statuses=ACTIVE_STATUSES):
            if job.status == S.PREPARING:
                # The intake is redone from scratch; its half-written files are replaced.
                self._set(job, status=S.QUEUED, error=None)
            elif job.status == S.RUNNING:
                proc = self.backend.attach(job.pid, job.proc_start) if job.pid else None
                if proc is not None:
                    logger.info("training %s: re-attached to trainer pid %d", job.id, job.pid)
                    with self._cond:
                        self._gpu_jobs.add(job.id)
                    self.gpu.acquire(job.id, lambda: True)  # it already trains: hold, never wait
                    self._spawn(job.id, self._resume_watch, job, proc)
                else:
                    self._spawn(job.id, self._after_exit, job, None, None)
            elif job.status == S.UPLOADING:
                self.uploads.follow(job)
        for job in self.jobs.list(statuses=(S.FAILED,)):
            if job.upload_id is not None and job.lora_uri is None:
                self.uploads.follow(job)  # refused once; the outbox may still deliver it

    def _spawn(self, job_id: str, target: Callable[..., object], *args: object) -> None:
        def run() -> None:
            try:
                target(*args)
            except Exception as e:  # a bug must fail the job, not leave it "running" forever
                logger.exception("training %s: unexpected error", job_id)
                job = self.jobs.get(job_id)
                if job is not None and not job.finished_status and not self._stop.is_set():
                    self._set(job, status=S.FAILED, error=f"internal error: {type(e).__name__}: {e}"[:500])
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
                    job = self.jobs.next_queued()
                    if job is not None:
                        job = self._set(job, status=S.PREPARING, error=None)
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
            for other in self.jobs.list(statuses=ACTIVE_STATUSES):
                if other.name == req.name:
                    raise Conflict(f"job {other.id} is already training {req.name!r} ({other.status})")
            now = time.time()
            job_id = uuid.uuid4().hex
            job = TrainingJob(
                id=job_id,
                name=req.name,
                status=S.QUEUED,
                request=req,
                job_dir=str(self.options.training_dir / job_id),
                created=now,
                updated=now,
                total_steps=req.steps,
            )
            self.announce.changed(job.id, job)
            self._cond.notify_all()
        return job

    def get(self, job_id: str) -> TrainingJob:
        live = self._live.get(job_id)
        if live is not None:
            return live
        job = self.jobs.get(job_id)
        if job is None:
            raise NotFound(f"no training job {job_id!r}")
        return job

    def list_jobs(self, *, statuses: Sequence[str] | None = None, limit: int = 500) -> list[TrainingJob]:
        """Jobs, newest first."""
        return [self._live.get(j.id, j) for j in self.jobs.list(statuses=statuses, limit=limit)]

    def detail(self, job_id: str, *, log_lines: int = 100) -> dict[str, object]:
        """The job plus its config YAML, the last log lines and the loss series."""
        job = self.get(job_id)
        wire = job.to_wire()
        try:
            wire["config_yaml"] = job.config_path.read_text()
        except OSError:
            wire["config_yaml"] = None
        wire["log_tail"] = read_log_tail(job.log_path, log_lines)
        loss = self._loss.get(job.id)
        if loss is None:
            loss = read_loss(Path(job.job_dir) / "loss.tsv")
        wire["loss"] = [list(p) for p in downsample(loss, self.options.max_loss_points)]
        return wire

    def cancel(self, job_id: str, *, wait: float | None = None) -> TrainingJob:
        """Cancel a job: a queued one at once, a working one by stopping its trainer (group), an
        uploading one by taking its LoRA out of the outbox (not while the upload is in flight).

        Raises:
            NotFound: no such job.
            Conflict: the job has already finished, or its LoRA is being delivered right now.
        """
        with self._cond:
            job = self._existing(job_id)
            if job.finished_status:
                raise Conflict(f"training job {job_id} has already finished ({job.status})")
            if job.status == S.QUEUED:
                return self._set(job, status=S.CANCELLED, error="cancelled before it started")
            if job.status == S.UPLOADING:
                if not self.uploads.withdraw(job):
                    raise Conflict(f"training job {job_id} is delivering its LoRA right now")
                return self._set(job, status=S.CANCELLED, error="cancelled before its LoRA was uploaded")
            self._cancel.add(job_id)
            self._cond.notify_all()
            thread = self._threads.get(job_id)
        if thread is not None:
            thread.join(self.options.stop_grace + 15 if wait is None else wait)
        elif not self._stop.is_set():
            job = self._set(job, status=S.CANCELLED, error="cancelled")
        return self.get(job_id)

    def delete(self, job_id: str, *, force: bool = False) -> TrainingJob:
        """Remove a finished job and its folder (and an upload of its LoRA still in the outbox).

        Raises:
            Conflict: the job is unfinished, or it failed holding a LoRA the bucket does not have
                (pass ``force`` to delete it anyway).
        """
        with self._cond:
            job = self._existing(job_id)
            if not job.finished_status:
                raise Conflict(f"training job {job_id} is {job.status}; cancel it first")
            if (
                job.status == S.FAILED
                and job.lora_uri is None
                and lora_problem(job.final_path) is None
                and not force
            ):
                raise Conflict(
                    f"training job {job_id} holds a trained LoRA that was never uploaded; "
                    'delete with {"force": true} to discard it'
                )
            if job.lora_uri is None:
                self.uploads.withdraw(job)  # a refused upload: discarded with the job
            self.jobs.delete(job_id)
        shutil.rmtree(job.job_dir, ignore_errors=True)
        self._loss.pop(job_id, None)
        self.announce.forget(job_id)
        return job

    def gpu_reserved(self) -> bool:
        """True while a training job holds the GPU under the ``exclusive`` policy."""
        return self.gpu.reserved()

    def attach_host(self, *, generation_busy: Callable[[], bool], free_vram: Callable[[], None]) -> None:
        """Let the ``exclusive`` policy see the host's prompt queue and free its VRAM (ComfyUI)."""
        if isinstance(self.gpu, ExclusiveGpu):
            self.gpu.generation_busy = generation_busy
            self.gpu.free_vram = free_vram

    def _existing(self, job_id: str) -> TrainingJob:
        job = self.jobs.get(job_id)
        if job is None:
            raise NotFound(f"no training job {job_id!r}")
        return job

    # ----------------------------------------------------------------- the job
    def _cancelled(self, job_id: str) -> bool:
        with self._cond:
            return job_id in self._cancel

    def _finish_cancelled(self, job: TrainingJob) -> TrainingJob:
        with self._cond:
            self._cancel.discard(job.id)
        self._live.pop(job.id, None)
        return self._set(job, status=S.CANCELLED, error="cancelled", eta_s=None)

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
            self._set(job, status=S.FAILED, error=reason[:1000])
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
            self._set(job, status=S.FAILED, error=f"cannot start the trainer: {e}"[:1000])
            return
        job = self._set(job, status=S.RUNNING, pid=proc.pid, proc_start=proc.start_time)
        self._watch(job, proc, 0)

    def _prepare(self, job: TrainingJob) -> TrainingJob:
        req = job.request
        job_dir = Path(job.job_dir)
        job_dir.mkdir(parents=True, exist_ok=True)
        report = intake(req, job_dir, self._intake)
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

    def _resume_watch(self, job: TrainingJob, proc: TrainerProcess) -> None:
        try:
            offset = job.log_path.stat().st_size
        except OSError:
            offset = 0
        # Catch up on the last part of the log so progress shows at once.
        self._loss[job.id] = read_loss(Path(job.job_dir) / "loss.tsv")
        self._watch(job, proc, max(0, offset - LOG_TAIL_BYTES))

    def _watch(self, job: TrainingJob, proc: TrainerProcess, offset: int) -> None:
        """Follow the trainer's log until it exits, is cancelled, or this service closes."""
        loss_path = Path(job.job_dir) / "loss.tsv"
        series = self._loss.setdefault(job.id, read_loss(loss_path))
        rest = ""
        saves = StepSaveUploader(self.store, self.options.lora_bucket, self.jobs.save)
        self._live[job.id] = job
        try:
            with open(job.log_path, "a+b") as log, open(loss_path, "a") as loss_out:
                while True:
                    code = proc.poll()
                    log.seek(offset)
                    chunk = log.read()
                    offset += len(chunk)
                    lines, rest = split_output(rest + chunk.decode("utf-8", "replace"))
                    progress, points = last_progress(lines, after_step=series[-1][0] if series else -1)
                    if points:
                        series.extend(points)
                        loss_out.write("".join(f"{step}\t{loss!r}\n" for step, loss in points))
                        loss_out.flush()
                    if progress is not None:
                        job = job.with_progress(progress, time.time())
                        self._live[job.id] = job
                        self.announce.progress(job.id, job)
                    if job.request.upload_intermediate:
                        job = saves.upload_new(job, final=code == 0)
                        self._live[job.id] = job
                    if code is not None:
                        break
                    if self._cancelled(job.id):
                        proc.stop(self.options.stop_grace)
                        self._finish_cancelled(job)
                        return
                    if self._stop.wait(self.options.poll_interval):
                        self.jobs.save(job)  # detach: the trainer runs on; the next start re-attaches
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
        if code not in (None, -1) and code != 0:
            why = f"trainer exited with code {code}: {last_error_line(job.log_path)}"
            self._set(job, status=S.FAILED, error=why[:1000], eta_s=None)
            return
        problem = lora_problem(job.final_path)
        if problem is not None:
            if code in (None, -1):
                why = "the trainer stopped while PodKit was not watching and left no valid final LoRA"
            else:
                why = "the trainer exited without a valid final LoRA"
            self._set(job, status=S.FAILED, error=f"{why}: {problem}"[:1000], eta_s=None)
            return
        self.uploads.queue(job, step=job.total_steps or job.step, eta_s=None)
