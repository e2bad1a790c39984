"""The training service with real trainer subprocesses (the ai-toolkit stand-in) and a real S3 server.

The trainer is ``tests/support/fake_ai_toolkit/run.py`` launched through :class:`AiToolkitBackend`
exactly as ai-toolkit's ``run.py`` would be; its faults (crash at step N, hang, ignored SIGTERM,
a child in its process group) are switched on through its environment. The final LoRA goes to the
bucket through a real outbox on the same state database, as in ``services.py``.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import threading
import time
import uuid
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from http_server import FaultServer, fault_server

from podkit.backends.http_download import HttpDownloader
from podkit.backends.s3_store import S3Store
from podkit.backends.state_db import StateDB
from podkit.backends.trainer import AiToolkitBackend, process_start_time
from podkit.core.ai_toolkit import step_saves
from podkit.core.errors import Conflict, Forbidden, InvalidRequest, NotFound
from podkit.core.events import RecordingNotifier
from podkit.core.objects import ObjectRef
from podkit.core.retry import Backoff
from podkit.core.safetensors_info import read_safetensors_info
from podkit.core.trainer_env import trainer_passthrough
from podkit.core.training import TrainingJob
from podkit.jobs.gpu_policy import ExclusiveGpu, GpuArbiter
from podkit.jobs.outbox import Outbox, sqlite_outbox
from podkit.jobs.training import TrainingOptions, TrainingService

SUPPORT = Path(__file__).resolve().parents[1] / "support"
FAKE_AI_TOOLKIT = SUPPORT / "fake_ai_toolkit"
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64
HF_SECRET = "hf_trainer_secret_value"
R2_SECRET = "r2-secret-never-for-the-trainer"


class EngineFetcher:
    """The download manager's blocking ``fetch_file`` contract, on PodKit's HTTP download engine."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def fetch_file(
        self,
        url_or_uri: str,
        dest_dir: Path,
        *,
        sha256: str | None = None,
        max_bytes: int | None = None,
        timeout: float | None = None,
    ) -> Path:
        self.calls.append(url_or_uri)
        part = dest_dir / "download.part"

        async def run() -> None:
            async with aiohttp.ClientSession() as session:
                engine = HttpDownloader(session, connections=2, backoff_base=0.01)
                await engine.fetch(url_or_uri, part, sha256=sha256, max_bytes=max_bytes)

        asyncio.run(run())
        final = dest_dir / (url_or_uri.rsplit("/", 1)[-1] or "dataset.zip")
        part.replace(final)
        return final


def dataset_zip(entries: dict[str, bytes] | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in (
            entries or {"ds/a.png": PNG, "ds/a.txt": b"p3r5on smiling", "ds/b.png": PNG}
        ).items():
            zf.writestr(name, data)
    return buf.getvalue()


def wait_for(check: Callable[[], Any], what: str, timeout: float = 90.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def gone(pid: int) -> bool:
    return process_start_time(pid) is None


class Rig:
    """Everything one test's services share: state dir, store, bucket, trainer settings."""

    def __init__(self, tmp_path: Path, store: S3Store, bucket: str) -> None:
        self.tmp = tmp_path
        self.store = store
        self.bucket = bucket
        self.volume = tmp_path / "volume"
        self.volume.mkdir()
        self.dataset = self.volume / "dataset"
        self.dataset.mkdir()
        (self.dataset / "a.png").write_bytes(PNG)
        (self.dataset / "a.txt").write_text("p3r5on")
        (self.dataset / "b.png").write_bytes(PNG)
        self.fetcher = EngineFetcher()
        self.refreshes = 0
        self.services: list[TrainingService] = []
        self.outboxes: dict[int, Outbox] = {}
        self.env: dict[str, str] = {}

    def outbox(self, db: StateDB) -> Outbox:
        """A started outbox on ``db``, retrying quickly (what ``services.py`` builds, faster)."""
        ob = sqlite_outbox(db, self.tmp / "state" / "spool", self.store, backoff=Backoff(base=0.2, cap=1.0))
        ob.start()
        return ob

    def bare_service(self, backend: AiToolkitBackend, name: str, **options: Any) -> TrainingService:
        """A service on its own database, with the rig's store and defaults otherwise."""
        db = StateDB(self.tmp / f"{name}.sqlite3")
        svc = TrainingService(
            db,
            self.store,
            backend,
            TrainingOptions(
                training_dir=self.tmp / name, lora_bucket=self.bucket, roots=(self.volume,), **options
            ),
            outbox=self.outbox(db),
        )
        self.services.append(svc)
        self.outboxes[id(svc)] = svc.outbox
        return svc

    def service(self, *, concurrency: int = 1, gpu: GpuArbiter | None = None, **fake: str) -> TrainingService:
        env = {
            **os.environ,
            "R2_SECRET_ACCESS_KEY": R2_SECRET,
            "HF_TOKEN": "not-this-one",
            **{f"FAKE_AITK_{k.upper()}": v for k, v in {**self.env, **fake}.items()},
        }
        names = [k for k in env if k.startswith("FAKE_AITK_")]
        options = TrainingOptions(
            training_dir=self.tmp / "state" / "training",
            lora_bucket=self.bucket,
            roots=(self.volume,),
            passthrough_env=trainer_passthrough(env, names),
            hf_token=HF_SECRET,
            concurrency=concurrency,
            stop_grace=1.0,
            poll_interval=0.05,
        )
        db = StateDB(self.tmp / "state" / "podkit.sqlite3")
        svc = TrainingService(
            db,
            self.store,
            AiToolkitBackend(FAKE_AI_TOOLKIT, python=sys.executable),
            options,
            outbox=self.outbox(db),
            notifier=RecordingNotifier(),
            on_lora_uploaded=self._refreshed,
            downloads=self.fetcher,
            gpu=gpu,
        )
        self.services.append(svc)
        self.outboxes[id(svc)] = svc.outbox
        svc.start()
        return svc

    def stop(self, svc: TrainingService) -> None:
        """The PodKit process of ``svc`` shuts down: training detaches, its outbox stops."""
        svc.close()
        self.outboxes.pop(id(svc)).stop()

    def _refreshed(self) -> None:
        self.refreshes += 1

    def close(self) -> None:
        for svc in self.services:
            svc.close()
            if id(svc) in self.outboxes:
                self.outboxes.pop(id(svc)).stop()
            svc.db.close()

    def objects(self) -> list[str]:
        return sorted(m.ref.key for m in self.store.list(self.bucket))


@pytest.fixture
def store(s3_server: Any) -> Iterator[S3Store]:
    s = S3Store(
        s3_server.endpoint_url,
        region=s3_server.region,
        access_key_id=s3_server.access_key,
        secret_access_key=s3_server.secret_key,
        max_attempts=1,
        connect_timeout=2.0,
    )
    yield s
    s.close()


@pytest.fixture
def rig(tmp_path: Path, store: S3Store) -> Iterator[Rig]:
    bucket = f"loras-{uuid.uuid4().hex[:10]}"
    store.ensure_bucket(bucket)
    r = Rig(tmp_path, store, bucket)
    yield r
    r.close()


@pytest.fixture
def web() -> Iterator[FaultServer]:
    with fault_server() as srv:
        yield srv


def finished(svc: TrainingService, job_id: str) -> Callable[[], TrainingJob | None]:
    def check() -> TrainingJob | None:
        job = svc.get(job_id)
        return job if job.finished_status else None

    return check


def request(name: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "steps": 40, "save_every": 10, **extra}


# --------------------------------------------------------------------------------------------------


def test_happy_path_zip_url_to_uploaded_lora(rig: Rig, web: FaultServer) -> None:
    sha = web.add("/sets/portrait.zip", dataset_zip())
    svc = rig.service(print_env="1")
    url = web.url("/sets/portrait.zip")
    job = svc.submit(request("portrait_v1", dataset={"url": url, "sha256": sha}, upload_intermediate=True))
    assert job.status == "queued"
    done = wait_for(finished(svc, job.id), "the job to finish")
    assert done.status == "done", done.error
    assert rig.fetcher.calls == [url]

    # progress: parsed from ai-toolkit's tqdm bar
    assert (done.step, done.total_steps) == (40, 40)
    assert done.loss is not None and 0 < done.loss < 1
    wire = done.to_wire()
    assert wire["dataset"] == {"images": 2, "captions": 1, "missing_captions": 1}
    detail = svc.detail(job.id)
    steps = [s for s, _ in detail["loss"]]  # type: ignore[union-attr]
    assert steps == sorted(set(steps)) and steps[-1] == 40 and len(steps) >= 5
    assert any("Saving at step 30" in line for line in detail["log_tail"])  # type: ignore[union-attr]
    config = yaml.safe_load(str(detail["config_yaml"]))
    process = config["config"]["process"][0]
    assert config["config"]["name"] == "portrait_v1"
    assert Path(process["datasets"][0]["folder_path"]).is_dir()

    # the trainer saw HF_TOKEN, but no storage credentials
    env_line = next(line for line in detail["log_tail"] if line.startswith("environment: "))  # type: ignore[union-attr]
    env_names = env_line.split()[1:]
    assert "HF_TOKEN" in env_names and "PYTHONUNBUFFERED" in env_names
    assert not [n for n in env_names if n.startswith(("R2_", "AWS_", "PODKIT_"))]
    assert R2_SECRET not in Path(done.job_dir, "train.log").read_text()

    # the LoRA: in the bucket with its ETag and sha256, the listing refreshed
    ref = ObjectRef(rig.bucket, "portrait_v1.safetensors")
    assert done.lora_uri == ref.uri
    meta = rig.store.head(ref)
    local = done.final_path.read_bytes()
    assert done.lora_etag == meta.etag
    assert done.lora_sha256 == hashlib.sha256(local).hexdigest() == meta.sha256
    assert rig.store.get_bytes(ref) == local
    assert read_safetensors_info(done.final_path).is_lora
    assert rig.refreshes == 1
    # intermediate step saves went up too (ai-toolkit keeps the last 4)
    assert {
        "portrait_v1/portrait_v1_000000010.safetensors",
        "portrait_v1/portrait_v1_000000030.safetensors",
    } <= set(rig.objects())
    assert len(done.intermediate) == 3

    # events: every state, in order, from the state database's point of view
    statuses = [e["status"] for e in svc.notifier.of("podkit.training")]  # type: ignore[attr-defined]
    seen = [s for i, s in enumerate(statuses) if i == 0 or statuses[i - 1] != s]
    assert seen == ["queued", "preparing", "running", "uploading", "done"]
    assert not [e for e in svc.notifier.events if HF_SECRET in json.dumps(e)]  # type: ignore[attr-defined]

    # a finished job can be deleted; its folder goes with it
    svc.delete(job.id)
    assert not Path(done.job_dir).exists()
    with pytest.raises(NotFound):
        svc.get(job.id)


def test_large_lora_goes_up_in_parts(tmp_path: Path, s3_server: Any) -> None:
    """Above the multipart threshold the LoRA is uploaded in parts; ETag and sha256 are recorded."""
    store = S3Store(
        s3_server.endpoint_url,
        region=s3_server.region,
        access_key_id=s3_server.access_key,
        secret_access_key=s3_server.secret_key,
        multipart_threshold=5 * 2**20,
        part_size=5 * 2**20,
    )
    bucket = f"loras-{uuid.uuid4().hex[:10]}"
    store.ensure_bucket(bucket)
    rig = Rig(tmp_path, store, bucket)
    try:
        svc = rig.service(pad_mb="12")
        job = svc.submit(request("big", dataset={"path": str(rig.dataset)}, steps=5))
        done = wait_for(finished(svc, job.id), "the big job")
        assert done.status == "done", done.error
        assert done.lora_bytes is not None and done.lora_bytes > 12 * 2**20
        meta = store.head(ObjectRef(bucket, "big.safetensors"))
        assert meta.size == done.lora_bytes and done.lora_etag == meta.etag
        assert meta.etag.strip('"').endswith("-3")  # three 5 MiB parts: a multipart upload's ETag
        assert meta.sha256 == done.lora_sha256 == hashlib.sha256(done.final_path.read_bytes()).hexdigest()
    finally:
        rig.close()
        store.close()


def test_crash_at_step_n_fails_with_the_reason(rig: Rig) -> None:
    svc = rig.service(crash_at="7")
    job = svc.submit(request("crashy", dataset={"path": str(rig.dataset)}))
    done = wait_for(finished(svc, job.id), "the crash")
    assert done.status == "failed"
    assert done.error is not None
    assert "exited with code 1" in done.error and "CUDA out of memory" in done.error
    assert done.step == 7
    assert rig.objects() == []
    assert rig.refreshes == 0


def test_exit_0_without_a_final_lora_fails(rig: Rig) -> None:
    svc = rig.service(no_final="1")
    job = svc.submit(request("empty_handed", dataset={"path": str(rig.dataset)}, steps=5))
    done = wait_for(finished(svc, job.id), "the job")
    assert done.status == "failed"
    assert "exited without a valid final LoRA" in (done.error or "") and "empty_handed.safetensors" in (
        done.error or ""
    )
    assert rig.objects() == []


def test_a_trainer_that_cannot_start_fails_the_job(rig: Rig) -> None:
    svc = rig.bare_service(
        AiToolkitBackend(FAKE_AI_TOOLKIT, python=str(rig.tmp / "no-such-python")), "other", poll_interval=0.05
    )
    svc.start()
    job = svc.submit(request("nopython", dataset={"path": str(rig.dataset)}))
    done = wait_for(finished(svc, job.id), "the job")
    assert done.status == "failed" and "cannot start the trainer" in (done.error or "")


def test_hang_then_cancel_kills_the_process_group(rig: Rig) -> None:
    pid_file = rig.tmp / "pids"
    svc = rig.service(hang_at="5", ignore_term="1", child="1", pid_file=str(pid_file), step_delay="0")
    job = svc.submit(request("hangs", dataset={"path": str(rig.dataset)}, save_every=2))
    wait_for(lambda: svc.get(job.id).step >= 5, "the trainer to reach step 5")
    leader, child = (int(x) for x in pid_file.read_text().split())
    assert not gone(leader) and not gone(child)
    time.sleep(0.5)  # well past the hang: no progress comes any more
    assert svc.get(job.id).status == "running"

    cancelled = svc.cancel(job.id)
    assert cancelled.status == "cancelled"
    # SIGTERM was ignored by both: the group got SIGKILL
    wait_for(lambda: gone(leader) and gone(child), "the process group to die", timeout=15)
    assert len(step_saves(job.training_folder, "hangs")) == 2  # partial outputs exist locally...
    assert rig.objects() == []  # ...and none of them was uploaded
    assert rig.refreshes == 0
    with pytest.raises(Conflict):
        svc.cancel(job.id)


def test_queue_runs_one_training_per_gpu(rig: Rig) -> None:
    svc = rig.service(step_delay="0.02")
    first = svc.submit(request("first", dataset={"path": str(rig.dataset)}))
    second = svc.submit(request("second", dataset={"path": str(rig.dataset)}))
    with pytest.raises(Conflict, match="already training 'first'"):
        svc.submit(request("first", dataset={"path": str(rig.dataset)}))
    wait_for(lambda: svc.get(first.id).status == "running", "the first job to run")
    assert svc.get(second.id).status == "queued"
    with pytest.raises(Conflict):
        svc.delete(first.id)
    wait_for(finished(svc, second.id), "the second job")
    events = [(e["name"], e["status"]) for e in svc.notifier.of("podkit.training")]  # type: ignore[attr-defined]
    # the GPU is handed on when the first trainer exits (before its LoRA is checked and uploaded)
    last_first_running = max(i for i, e in enumerate(events) if e == ("first", "running"))
    assert events.index(("second", "preparing")) > last_first_running
    assert svc.get(first.id).status == svc.get(second.id).status == "done"
    assert rig.objects() == ["first.safetensors", "second.safetensors"]
    # a queued job is cancelled at once
    third = svc.submit(request("third", dataset={"path": str(rig.dataset)}, steps=5000))
    fourth = svc.submit(request("fourth", dataset={"path": str(rig.dataset)}))
    assert svc.cancel(fourth.id).status == "cancelled"
    svc.cancel(third.id)
    assert [j.name for j in svc.list_jobs()][:2] == ["fourth", "third"]


def test_exclusive_gpu_waits_for_generation_and_frees_vram(rig: Rig) -> None:
    busy = threading.Event()
    busy.set()  # ComfyUI is running a prompt
    freed: list[float] = []
    svc = rig.service(gpu=ExclusiveGpu(poll=0.05), step_delay="0.05")
    svc.attach_host(generation_busy=busy.is_set, free_vram=lambda: freed.append(time.time()))
    job = svc.submit(request("polite", dataset={"path": str(rig.dataset)}, steps=20))
    wait_for(lambda: svc.get(job.id).dataset, "the dataset intake")
    time.sleep(0.5)
    waiting = svc.get(job.id)
    assert waiting.status == "preparing" and waiting.pid is None and freed == []
    assert not svc.gpu_reserved()
    busy.clear()  # the queue drained
    wait_for(lambda: svc.get(job.id).status == "running", "the trainer to start")
    assert len(freed) == 1 and svc.gpu_reserved()  # ComfyUI was asked to unload its models first
    assert wait_for(finished(svc, job.id), "the job").status == "done"
    wait_for(lambda: not svc.gpu_reserved(), "the GPU to be released")


def test_bad_datasets_and_paths(rig: Rig, web: FaultServer) -> None:
    svc = rig.service()
    with pytest.raises(Forbidden, match="outside the folders"):
        svc.submit(request("x", dataset={"path": "/etc"}))
    with pytest.raises(InvalidRequest, match="unknown field"):
        svc.submit(request("x", dataset={"path": str(rig.dataset)}, gpu="all"))
    web.add("/evil.zip", dataset_zip({"a.png": PNG, "../../escape.png": PNG}))
    evil = svc.submit(request("evil", dataset={"url": web.url("/evil.zip")}))
    web.add("/empty.zip", dataset_zip({"notes.txt": b"no images"}))
    empty = svc.submit(request("empty", dataset={"url": web.url("/empty.zip")}))
    missing = svc.submit(request("missing", dataset={"url": web.url("/nope.zip")}))
    for job_id, needle in ((evil.id, "escapes the dataset folder"), (empty.id, "no training images"),
                           (missing.id, "404")):  # fmt: skip
        done = wait_for(finished(svc, job_id), "the intake to fail")
        assert done.status == "failed" and needle in (done.error or ""), done.error
    assert not list(rig.tmp.rglob("escape.png"))


def test_dataset_sources_bucket_zip_bucket_folder_and_tar_url(rig: Rig, web: FaultServer) -> None:
    svc = rig.service()
    rig.store.put_bytes(
        dataset_zip(), ObjectRef(rig.bucket, "datasets/set.zip"), content_type="application/zip"
    )
    files = {"a.png": PNG, "a.txt": b"cap", "sub/b.png": PNG, "notes.md": b"x", ".hidden.png": PNG}
    for key, data in files.items():
        rig.store.put_bytes(data, ObjectRef(rig.bucket, f"folders/cats/{key}"), content_type="image/png")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in {"t/a.png": PNG, "t/a.txt": b"cap"}.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    web.add("/sets/t.tar.gz", buf.getvalue())
    sources = {
        "bucket_zip": ({"uri": f"r2://{rig.bucket}/datasets/set.zip"}, (2, 1, 1)),
        "bucket_folder": ({"uri": f"r2://{rig.bucket}/folders/cats"}, (2, 1, 1)),
        "tar_url": ({"url": web.url("/sets/t.tar.gz")}, (1, 1, 0)),
    }
    jobs = {name: svc.submit(request(name, dataset=ds, steps=5)) for name, (ds, _) in sources.items()}
    for name, job in jobs.items():
        done = wait_for(finished(svc, job.id), f"the {name} job")
        assert done.status == "done", (name, done.error)
        ds = done.to_wire()["dataset"]
        assert (ds["images"], ds["captions"], ds["missing_captions"]) == sources[name][1], name  # type: ignore[index]
    assert not list((Path(jobs["bucket_folder"].job_dir) / "dataset").rglob(".hidden.png"))


def test_training_disabled_without_ai_toolkit(rig: Rig) -> None:
    svc = rig.bare_service(AiToolkitBackend(None), "other")
    with pytest.raises(Forbidden, match="PODKIT_AI_TOOLKIT_DIR"):
        svc.submit(request("x", dataset={"path": str(rig.dataset)}))


def test_restart_reattaches_to_a_running_trainer(rig: Rig) -> None:
    pid_file = rig.tmp / "pids"
    rig.env = {"step_delay": "0.03", "pid_file": str(pid_file)}
    first = rig.service()
    job = first.submit(request("survivor", dataset={"path": str(rig.dataset)}, steps=120))
    wait_for(lambda: first.get(job.id).step >= 10, "progress")
    rig.stop(first)  # ComfyUI restarts: the trainer keeps training
    leader = int(pid_file.read_text().split()[0])
    assert not gone(leader)
    assert rig.services[0].get(job.id).status == "running"

    second = rig.service()
    wait_for(lambda: second.get(job.id).step > 20, "progress seen by the new service")
    done = wait_for(finished(second, job.id), "the re-attached job")
    assert done.status == "done", done.error
    assert done.step == 120 and rig.objects() == ["survivor.safetensors"]
    losses = [s for s, _ in second.detail(job.id)["loss"]]  # type: ignore[union-attr]
    assert losses == sorted(set(losses))  # one series across both watchers, no repeats


@pytest.mark.parametrize("outcome", ["finished", "killed"])
def test_restart_after_the_trainer_ended_unwatched(rig: Rig, outcome: str) -> None:
    pid_file = rig.tmp / "pids"
    delay = "0.01" if outcome == "finished" else "0.05"
    first = rig.service(step_delay=delay, pid_file=str(pid_file))
    job = first.submit(request("unwatched", dataset={"path": str(rig.dataset)}, steps=60))
    wait_for(lambda: first.get(job.id).step >= 3, "progress")
    rig.stop(first)
    leader = int(pid_file.read_text().split()[0])
    if outcome == "killed":
        os.killpg(leader, signal.SIGKILL)
    wait_for(lambda: gone(leader), "the trainer to end")

    second = rig.service()
    done = wait_for(finished(second, job.id), "reconciliation")
    if outcome == "finished":
        assert done.status == "done", done.error
        assert rig.objects() == ["unwatched.safetensors"]
    else:
        assert done.status == "failed"
        assert "stopped while PodKit was not watching" in (done.error or "")
        assert rig.objects() == []


def test_kill_9_of_the_podkit_process_then_restart(rig: Rig, s3_server: Any) -> None:
    """issue 7: kill -9 during a training; the restarted service reconciles it, never stuck running."""
    pid_file = rig.tmp / "pids"
    cfg = {
        "s3": {
            "endpoint_url": s3_server.endpoint_url,
            "region": s3_server.region,
            "access_key": s3_server.access_key,
            "secret_key": s3_server.secret_key,
        },
        "state_dir": str(rig.tmp / "state"),
        "training_dir": str(rig.tmp / "state" / "training"),
        "bucket": rig.bucket,
        "roots": [str(rig.volume)],
        "env": {"PATH": os.environ.get("PATH", ""), "FAKE_AITK_STEP_DELAY": "0.03",
                "FAKE_AITK_PID_FILE": str(pid_file)},
        "request": request("after_kill", dataset={"path": str(rig.dataset)}, steps=150),
    }  # fmt: skip
    (rig.tmp / "host.json").write_text(json.dumps(cfg))
    host = subprocess.Popen(  # noqa: S603 - our own test helper
        [sys.executable, str(SUPPORT / "training_host.py"), str(rig.tmp / "host.json")],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert host.stdout is not None
        job_id = None
        for line in host.stdout:
            data = json.loads(line)["data"]
            job_id = data["id"]
            if data["status"] == "running" and data["step"] >= 5:
                break
        assert job_id is not None
        os.kill(host.pid, signal.SIGKILL)  # no close(), no cleanup: the process is simply gone
        host.wait(10)
    finally:
        if host.poll() is None:
            host.kill()
        host.wait()
        if host.stdout is not None:
            host.stdout.close()
    leader = int(pid_file.read_text().split()[0])
    assert not gone(leader)  # the trainer runs in its own session: it survived

    svc = rig.service()
    job = svc.get(job_id)
    assert job.status == "running"  # re-attached, not merely marked
    done = wait_for(finished(svc, job_id), "the job after kill -9")
    assert done.status == "done", done.error
    assert rig.objects() == ["after_kill.safetensors"]
    assert done.lora_sha256 == hashlib.sha256(done.final_path.read_bytes()).hexdigest()


@contextmanager
def store_down(s3_gateway: Any) -> Iterator[None]:
    """The S3 gateway is stopped inside the block (radosgw only: moto forgets its buckets)."""
    if type(s3_gateway).__name__ == "MotoServer":
        pytest.skip("moto forgets its buckets when restarted; this outage needs radosgw")
    s3_gateway.stop_gateway()
    try:
        yield
    finally:
        s3_gateway.start_gateway()


def test_store_down_at_upload_time_then_back(rig: Rig, s3_gateway: Any) -> None:
    """R2 unreachable when the LoRA is ready: the outbox holds it (listed with the other uploads) and
    retries it with its backoff, across a restart; the job is ``uploading`` until it is delivered."""
    svc = rig.service()
    with store_down(s3_gateway):
        job = svc.submit(request("patient", dataset={"path": str(rig.dataset)}, steps=10))
        waiting = wait_for(
            lambda: (j := svc.get(job.id)).status == "uploading" and j.attempts >= 2 and j,
            "failed upload attempts",
        )
        assert "retrying" in (waiting.error or "")
        (item,) = svc.outbox.list(["pending", "uploading"])  # what GET /podkit/outbox shows
        assert (item.id, item.bucket, item.key) == (waiting.upload_id, rig.bucket, "patient.safetensors")
        assert item.attempts >= 2 and item.last_error and item.sha256 == waiting.lora_sha256
        rig.stop(svc)  # and PodKit restarts while the store is still down
        again = rig.service()
        wait_for(lambda: again.get(job.id).attempts > waiting.attempts, "retries after the restart")
        assert again.get(job.id).status == "uploading"
        assert [i.id for i in again.outbox.list(["pending", "uploading"])] == [item.id]  # the same item
    done = wait_for(finished(again, job.id), "the upload once the store is back")
    assert done.status == "done", done.error
    ref = ObjectRef(rig.bucket, "patient.safetensors")
    assert rig.store.get_bytes(ref) == done.final_path.read_bytes()
    assert done.lora_etag == rig.store.head(ref).etag and done.lora_uri == ref.uri
    assert again.outbox.get(item.id).status == "done"  # type: ignore[union-attr]
    assert not list((rig.tmp / "state" / "spool").iterdir())  # the outbox's link to the LoRA is gone
    assert rig.refreshes == 1


def test_cancel_while_the_lora_waits_in_the_outbox(rig: Rig, s3_gateway: Any) -> None:
    """Cancelling an ``uploading`` job takes its LoRA out of the outbox; the job folder keeps it."""
    svc = rig.service()
    with store_down(s3_gateway):
        job = svc.submit(request("unwanted", dataset={"path": str(rig.dataset)}, steps=5))
        waiting = wait_for(lambda: (j := svc.get(job.id)).attempts >= 1 and j, "a failed upload attempt")
        wait_for(lambda: svc.outbox.get(waiting.upload_id).status == "pending", "the item to wait")  # type: ignore[arg-type, union-attr]
        cancelled = svc.cancel(job.id)
    assert cancelled.status == "cancelled" and "before its LoRA was uploaded" in (cancelled.error or "")
    assert svc.outbox.get(waiting.upload_id) is None  # type: ignore[arg-type]
    assert cancelled.final_path.is_file() and rig.objects() == []


def test_a_refused_upload_fails_the_job_and_a_retry_in_the_outbox_delivers_it(
    tmp_path: Path, store: S3Store
) -> None:
    """The bucket does not exist: the outbox refuses to retry on its own, the job fails saying where
    the LoRA waits; once the bucket exists, the outbox's retry delivers it and the job is ``done``."""
    bucket = f"loras-{uuid.uuid4().hex[:10]}"  # not created yet
    rig = Rig(tmp_path, store, bucket)
    try:
        svc = rig.service()
        job = svc.submit(request("early", dataset={"path": str(rig.dataset)}, steps=5))
        failed = wait_for(finished(svc, job.id), "the refused upload")
        assert failed.status == "failed" and "refused" in (failed.error or "")
        assert f"item {failed.upload_id}" in (failed.error or "") and failed.lora_uri is None
        (item,) = svc.outbox.list(["failed"])
        assert item.id == failed.upload_id and "does not exist" in (item.last_error or "")
        with pytest.raises(Conflict, match="never uploaded"):
            svc.delete(job.id)  # the LoRA would be lost: not without force
        store.ensure_bucket(bucket)
        assert svc.outbox.retry([item.id]) == 1  # POST /podkit/outbox/retry
        done = wait_for(lambda: (j := svc.get(job.id)).status == "done" and j, "the delivery after the retry")
        assert done.lora_uri == f"r2://{bucket}/early.safetensors" and done.error is None
        assert store.get_bytes(ObjectRef(bucket, "early.safetensors")) == done.final_path.read_bytes()
        assert rig.refreshes == 1
    finally:
        rig.close()


def test_an_upload_begun_before_the_outbox_is_finished_through_it(rig: Rig) -> None:
    """A state database from a PodKit that uploaded LoRAs itself: a job left ``uploading`` (no outbox
    item) is handed to the outbox by the next start and ends ``done``."""
    first = rig.service()
    job = first.submit(request("legacy", dataset={"path": str(rig.dataset)}, steps=5))
    done = wait_for(finished(first, job.id), "the first run")
    assert done.status == "done", done.error
    rig.stop(first)
    ref = ObjectRef(rig.bucket, "legacy.safetensors")
    rig.store.delete(ref)
    first.jobs.save(
        replace(done, status="uploading", upload_id=None, lora_uri=None, lora_etag=None, finished=None)
    )

    second = rig.service()
    again = wait_for(finished(second, job.id), "the upload after the restart")
    assert again.status == "done" and again.upload_id not in (None, done.upload_id), again.error
    assert rig.store.get_bytes(ref) == again.final_path.read_bytes()
    assert second.outbox.get(again.upload_id).status == "done"  # type: ignore[arg-type, union-attr]
