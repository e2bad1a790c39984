"""The download manager against a real HTTP server, real SQLite, real processes and a real S3 server."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from http_server import FaultServer, fault_server
from safetensors_support import LORA_KEYS, VAE_KEYS, safetensors_bytes

from podkit.backends.http_partial import partial_progress
from podkit.backends.local_store import LocalStore
from podkit.backends.state_db import StateDB
from podkit.core.download_job import DownloadJob
from podkit.core.download_plan import MIN_PIECE
from podkit.core.download_request import parse_item
from podkit.core.events import RecordingNotifier
from podkit.core.objects import ObjectRef, ObjectStore
from podkit.core.settings import Settings
from podkit.jobs.downloads import DownloadService
from podkit.services import url_policy

CHILD = Path(__file__).resolve().parents[1] / "support" / "download_child.py"
MiB = 2**20


def settings_for(tmp_path: Path, **env: str) -> Settings:
    return Settings.from_env(
        {
            "PODKIT_VOLUME_DIR": "",
            "PODKIT_STORE": "local",
            "PODKIT_LOCAL_STORE_DIR": str(tmp_path / "store"),
            "PODKIT_CACHE_DIR": str(tmp_path / "cache"),
            "PODKIT_STATE_DIR": str(tmp_path / "state"),
            "PODKIT_MODELS_DIR": str(tmp_path / "models"),
            "PODKIT_URL_ALLOW_PRIVATE": "1",
            **env,
        }
    )


class Harness:
    def __init__(self, tmp_path: Path, store: ObjectStore | None = None, **env: str) -> None:
        self.settings = settings_for(tmp_path, **env)
        self.db = StateDB(self.settings.state_dir / "podkit.sqlite3")
        self.events = RecordingNotifier()
        self.svc = DownloadService(
            self.settings,
            self.db,
            store or LocalStore(self.settings.local_store_dir),
            policy=url_policy(self.settings),
            notifier=self.events,
            engine_options={"backoff_base": 0.02, "stall_timeout": 3.0},
        )
        self.svc.start()
        self.models = self.settings.models_dir
        assert self.models is not None

    def submit(self, force: bool = False, **raw: object) -> DownloadJob:
        (job,) = self.svc.submit([parse_item(raw, policy=self.svc.policy)], force=force)
        return job

    def run(self, force: bool = False, **raw: object) -> DownloadJob:
        job = self.submit(force=force, **raw)
        (done,) = self.svc.wait([job.id], timeout=60)
        return done

    def close(self) -> None:
        self.svc.close()
        self.db.close()


@pytest.fixture
def server() -> Iterator[FaultServer]:
    with fault_server() as srv:
        yield srv


@pytest.fixture
def h(tmp_path: Path) -> Iterator[Harness]:
    harness = Harness(tmp_path)
    yield harness
    harness.close()


def wait_for(predicate, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.02)


def settled_bytes_sent(server: FaultServer) -> int:
    """The server's byte count once its handler threads noticed the closed connections."""
    last = -1
    while server.bytes_sent != last:
        last = server.bytes_sent
        time.sleep(0.3)
    return last


def leftovers(models: Path) -> list[Path]:
    return [p for p in (models / ".podkit" / "partial").glob("*")] if (models / ".podkit").exists() else []


def test_many_files_land_in_their_folders_by_header(h: Harness, server: FaultServer) -> None:
    files = {
        "/style.safetensors": safetensors_bytes(LORA_KEYS, 3 * MiB, 1),
        "/ae.safetensors": safetensors_bytes(VAE_KEYS, 2 * MiB, 2),
        "/detail.safetensors": safetensors_bytes(LORA_KEYS, 9 * MiB, 3),
        "/other.bin": b"x" * 1000,
    }
    shas = {p: server.add(p, d) for p, d in files.items()}
    items = [parse_item({"url": server.url(p)}, policy=h.svc.policy) for p in list(files)[:3]]
    items.append(parse_item({"url": server.url("/other.bin"), "type": "upscale_model", "subfolder": "x4"}))
    jobs = h.svc.wait([j.id for j in h.svc.submit(items)], timeout=60)
    assert [j.status for j in jobs] == ["done"] * 4, [j.error for j in jobs]
    assert [j.dest for j in jobs] == [
        "loras/style.safetensors", "vae/ae.safetensors", "loras/detail.safetensors", "upscale_models/x4/other.bin",
    ]  # fmt: skip
    for job, (path, data) in zip(jobs, files.items(), strict=True):
        assert job.sha256 == shas[path]
        assert (h.models / str(job.dest)).read_bytes() == data
        assert job.bytes_done == job.bytes_total == len(data)
    assert jobs[0].model_type == "lora" and jobs[1].model_type == "vae"
    assert leftovers(h.models) == []
    events = h.events.of("podkit.download")
    assert {e["status"] for e in events} >= {"queued", "running", "verifying", "done"}
    assert all("files" in e and "speed" in e for e in events)
    # jobs persist: a new service on the same database lists them
    again = DownloadService(h.settings, h.db, LocalStore(h.settings.local_store_dir), policy=h.svc.policy)
    assert {j.id for j in again.jobs()} == {j.id for j in jobs}


def test_identical_requests_share_one_transfer_and_repeat_at_once(h: Harness, server: FaultServer) -> None:
    data = safetensors_bytes(LORA_KEYS, 4 * MiB)
    server.add("/a.safetensors", data)
    server.throttle_bps = 4 * MiB
    first = h.submit(url=server.url("/a.safetensors"))
    second = h.submit(url=server.url("/a.safetensors"))
    assert second.id == first.id
    (done,) = h.svc.wait([first.id], timeout=60)
    assert done.status == "done", done.error
    assert server.bytes_sent == len(data)
    # present and verified: done without a byte
    again = h.run(url=server.url("/a.safetensors"))
    assert again.status == "done" and again.id == first.id and server.bytes_sent == len(data)
    assert again.dest == "loras/a.safetensors"
    # force downloads it again
    forced = h.run(force=True, url=server.url("/a.safetensors"))
    assert forced.status == "done", forced.error
    assert server.bytes_sent == 2 * len(data)
    assert (h.models / "loras/a.safetensors").read_bytes() == data


def test_a_file_changed_behind_its_record_is_not_trusted(h: Harness, server: FaultServer) -> None:
    data = safetensors_bytes(LORA_KEYS, MiB)
    sha = server.add("/b.safetensors", data)
    assert h.run(url=server.url("/b.safetensors"), sha256=sha).status == "done"
    target = h.models / "loras/b.safetensors"
    target.write_bytes(b"garbage" + data[7:])
    job = h.run(url=server.url("/b.safetensors"), sha256=sha)
    assert (
        job.status == "failed"
        and "already exists with sha256" in str(job.error)
        and "force" in str(job.error)
    )
    assert h.run(force=True, url=server.url("/b.safetensors"), sha256=sha).status == "done"
    assert target.read_bytes() == data


def test_cancel_removes_partial_files(h: Harness, server: FaultServer) -> None:
    server.add("/big.safetensors", safetensors_bytes(LORA_KEYS, 24 * MiB))
    server.throttle_bps = 2 * MiB
    job = h.submit(url=server.url("/big.safetensors"), type="lora")
    wait_for(lambda: h.svc.get(job.id).bytes_done > MiB)
    h.svc.cancel(job.id)
    wait_for(lambda: h.svc.get(job.id).status == "cancelled")
    assert not (h.models / "loras/big.safetensors").exists()
    wait_for(lambda: leftovers(h.models) == [])
    # a finished job is removed by a second cancel
    h.svc.cancel(job.id)
    assert job.id not in {j.id for j in h.svc.jobs()}


def test_pause_keeps_the_bytes_and_resume_continues(h: Harness, server: FaultServer) -> None:
    data = safetensors_bytes(LORA_KEYS, 40 * MiB)
    sha = server.add("/p.safetensors", data)
    server.throttle_bps = MiB  # per connection: several progress events before the pause
    job = h.submit(url=server.url("/p.safetensors"))
    wait_for(lambda: h.svc.get(job.id).bytes_done > 12 * MiB)
    h.svc.pause(job.id)
    wait_for(lambda: h.svc.get(job.id).status == "paused")
    running = [e for e in h.events.of("podkit.download") if e["id"] == job.id and e["status"] == "running"]
    assert any(e["speed"] > 0 and e["eta"] is not None for e in running), "progress carries speed and ETA"
    assert all(0 < e["bytes_done"] <= len(data) for e in running[1:])
    part = leftovers(h.models)
    assert part, "the partial file stays while paused"
    server.throttle_bps = None
    h.svc.resume(job.id)
    (done,) = h.svc.wait([job.id], timeout=60)
    assert done.status == "done", done.error
    assert done.sha256 == sha
    assert server.bytes_sent - len(data) <= MIN_PIECE


def test_a_job_paused_or_cancelled_right_after_submit_never_starts(h: Harness, server: FaultServer) -> None:
    server.throttle_bps = 64 * 1024  # nothing can finish legitimately within the test
    jobs = []
    for i in range(12):
        server.add(f"/r{i}.safetensors", safetensors_bytes(LORA_KEYS, MiB, i))
        job = h.submit(url=server.url(f"/r{i}.safetensors"))
        (h.svc.pause if i % 2 else h.svc.cancel)(job.id)  # at once: often before its task exists
        jobs.append((job.id, "paused" if i % 2 else "cancelled"))
    for job_id, want in jobs:
        wait_for(lambda job_id=job_id, want=want: h.svc.get(job_id).status == want)
    time.sleep(0.5)  # a task wrongly started after the stop would be running by now
    assert [h.svc.get(j).status for j, _ in jobs] == [want for _, want in jobs]
    assert not list((h.models / "loras").glob("*")), "nothing is published"


def test_wrong_sha256_fails_with_both_hashes_and_publishes_nothing(h: Harness, server: FaultServer) -> None:
    data = safetensors_bytes(LORA_KEYS, 2 * MiB)
    actual = server.add("/w.safetensors", data)
    wrong = "0" * 64
    job = h.run(url=server.url("/w.safetensors"), sha256=wrong)
    assert job.status == "failed"
    assert wrong in str(job.error) and actual in str(job.error)
    assert not (h.models / "loras" / "w.safetensors").exists()
    assert leftovers(h.models) == []


def test_missing_file_and_a_server_closing_mid_segment(h: Harness, server: FaultServer) -> None:
    job = h.run(url=server.url("/nope.safetensors"))
    assert job.status == "failed" and "404" in str(job.error)
    data = safetensors_bytes(VAE_KEYS, 20 * MiB)
    sha = server.add("/cut.safetensors", data)
    server.close_after(3 * MiB)
    job = h.run(url=server.url("/cut.safetensors"))
    assert job.status == "done", job.error
    assert job.sha256 == sha and (h.models / "vae/cut.safetensors").read_bytes() == data


def test_disk_full_is_a_clear_error_and_the_service_keeps_serving(h: Harness, server: FaultServer) -> None:
    server.add("/huge.safetensors", safetensors_bytes(LORA_KEYS, 5 * MiB))
    server.add("/small.safetensors", safetensors_bytes(LORA_KEYS, MiB))
    real = h.svc.free_bytes
    h.svc.free_bytes = lambda _p: 3 * MiB
    job = h.run(url=server.url("/huge.safetensors"))
    assert job.status == "failed"
    assert "not enough space" in str(job.error) and "free" in str(job.error)
    assert not (h.models / "loras/huge.safetensors").exists()
    h.svc.free_bytes = real
    assert h.run(url=server.url("/small.safetensors")).status == "done"


def test_private_addresses_are_refused_unless_allowed(tmp_path: Path, server: FaultServer) -> None:
    server.add("/x.safetensors", safetensors_bytes(LORA_KEYS, 1000))
    strict = Harness(tmp_path, PODKIT_URL_ALLOW_PRIVATE="0")
    try:
        # a name that resolves to loopback passes the request check and is refused at connect time
        job = strict.run(url=f"http://localhost:{server.server_address[1]}/x.safetensors")
        assert job.status == "failed" and "PODKIT_URL_ALLOW_PRIVATE" in str(job.error)
        assert server.requests == []
    finally:
        strict.close()


def test_unknown_type_is_reported_and_nothing_is_placed(h: Harness, server: FaultServer) -> None:
    server.add("/mystery.bin", os.urandom(4096))
    job = h.run(url=server.url("/mystery.bin"))
    assert job.status == "failed" and "give type" in str(job.error)
    assert not any(p.is_file() for p in h.models.glob("*/*"))


def test_bucket_object_through_the_s3_server(tmp_path: Path, s3_server: object) -> None:
    from podkit.backends.s3_store import S3Store

    store = S3Store(
        s3_server.endpoint_url,  # type: ignore[attr-defined]
        region=s3_server.region,  # type: ignore[attr-defined]
        access_key_id=s3_server.access_key,  # type: ignore[attr-defined]
        secret_access_key=s3_server.secret_key,  # type: ignore[attr-defined]
    )
    bucket = f"dl-{os.getpid()}-{int(time.time())}"
    store.ensure_bucket(bucket)
    data = safetensors_bytes(LORA_KEYS, 6 * MiB)
    store.put_bytes(
        data, ObjectRef(bucket, "loras/r2-style.safetensors"), content_type="application/octet-stream"
    )
    harness = Harness(tmp_path, store=store)
    try:
        job = harness.run(uri=f"r2://{bucket}/loras/r2-style.safetensors")
        assert job.status == "done", job.error
        assert job.dest == "loras/r2-style.safetensors"
        assert job.sha256 == hashlib.sha256(data).hexdigest()
        assert (harness.models / "loras/r2-style.safetensors").read_bytes() == data
        # the blocking fetch the trainer uses
        got = harness.svc.fetch_file(f"r2://{bucket}/loras/r2-style.safetensors", tmp_path / "ds")
        assert got.read_bytes() == data
    finally:
        harness.close()
        store.close() if hasattr(store, "close") else None


def test_fetch_file_for_training(h: Harness, server: FaultServer, tmp_path: Path) -> None:
    data = os.urandom(3 * MiB)
    sha = server.add("/ds/images.zip", data)
    got = h.svc.fetch_file(server.url("/ds/images.zip?sig=abc"), tmp_path / "ds", sha256=sha)
    assert got == tmp_path / "ds" / "images.zip" and got.read_bytes() == data
    with pytest.raises(Exception, match="limit"):
        h.svc.fetch_file(server.url("/ds/images.zip"), tmp_path / "ds2", max_bytes=1000)
    with pytest.raises(Exception, match="only http and https"):
        h.svc.fetch_file("file:///etc/passwd", tmp_path / "ds3")
    assert not (tmp_path / "ds2" / "images.zip").exists()


def _child(models: Path, state: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(CHILD), str(models), str(state), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_kill_9_mid_download_then_a_new_process_resumes(tmp_path: Path, server: FaultServer) -> None:
    data = safetensors_bytes(LORA_KEYS, 64 * MiB)
    sha = server.add("/k.safetensors", data)
    server.throttle_bps = MiB  # per connection
    models, state = tmp_path / "models", tmp_path / "state"
    child = _child(models, state, server.url("/k.safetensors"), "lora")
    try:

        def checkpointed() -> bool:
            parts = list((models / ".podkit" / "partial").glob("*.part"))
            progress = partial_progress(parts[0]) if parts else None
            return progress is not None and progress[0] >= 16 * MiB

        wait_for(checkpointed, timeout=60)
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    finally:
        if child.poll() is None:
            child.kill()
        child.communicate(timeout=10)  # reap it and close its pipes
    assert not (models / "loras/k.safetensors").exists()
    assert settled_bytes_sent(server) < len(data)
    server.throttle_bps = None
    restarted = _child(models, state)
    out, err = restarted.communicate(timeout=120)
    assert restarted.returncode == 0, err
    (job,) = json.loads(out.strip().splitlines()[-1])
    assert job["status"] == "done", job["error"]
    assert job["sha256"] == sha
    assert (models / "loras/k.safetensors").read_bytes() == data
    fetched_twice = server.bytes_sent - len(data)
    assert fetched_twice <= MIN_PIECE, f"{fetched_twice} bytes fetched twice"


def test_two_processes_asking_for_one_file_make_one_transfer(tmp_path: Path, server: FaultServer) -> None:
    data = safetensors_bytes(VAE_KEYS, 16 * MiB)
    sha = server.add("/shared.safetensors", data)
    server.throttle_bps = 4 * MiB
    models = tmp_path / "models"
    children = [
        _child(models, tmp_path / f"state{i}", server.url("/shared.safetensors"), "vae") for i in range(2)
    ]
    outs = [c.communicate(timeout=120) for c in children]
    for c, (out, err) in zip(children, outs, strict=True):
        assert c.returncode == 0, err
        (job,) = json.loads(out.strip().splitlines()[-1])
        assert job["status"] == "done", job["error"]
        assert job["sha256"] == sha and job["dest"] == "vae/shared.safetensors"
    assert server.bytes_sent == len(data)
    assert (models / "vae/shared.safetensors").read_bytes() == data


T5_KEYS = ["encoder.block.0.layer.0.SelfAttention.q.weight", "shared.weight"]
CLIP_KEYS = ["text_model.encoder.layers.0.mlp.fc1.weight"]


def test_hugging_face_snapshot_and_civitai_through_a_local_hub(tmp_path: Path) -> None:
    from fake_hub import CivitFile, CivitModel, CivitVersion, fake_hub

    with fake_hub() as hub:
        t5, clip = safetensors_bytes(T5_KEYS, 2 * MiB, 5), safetensors_bytes(CLIP_KEYS, MiB, 6)
        hub.add_repo(
            "org/encoders", {"t5xxl.safetensors": t5, "clip_l.safetensors": clip, "README.md": b"# hi"}
        )
        hub.add_repo("org/gated", {"model.safetensors": t5}, gated=True)
        lora = safetensors_bytes(LORA_KEYS, MiB, 7)
        version = CivitVersion(55, 5, "v1", [CivitFile("pixel-art.safetensors", lora)])
        hub.add_civitai_model(CivitModel(5, "Pixel art", "LORA", [version]))
        harness = Harness(tmp_path, PODKIT_HF_ENDPOINT=hub.hub_url, PODKIT_CIVITAI_BASE_URL=hub.hub_url)
        try:
            snap = harness.run(repo_id="org/encoders")
            assert snap.status == "done", snap.error
            readme = next(f for f in snap.files if f.name == "README.md")
            assert readme.status == "skipped" and "not a model weights file" in str(readme.error)
            placed = [f for f in snap.files if f is not readme]
            assert sorted(str(f.dest) for f in placed) == [
                "text_encoders/clip_l.safetensors", "text_encoders/t5xxl.safetensors",
            ]  # fmt: skip
            assert snap.dest == "text_encoders" and snap.model_type == "text_encoder"
            assert (harness.models / "text_encoders/t5xxl.safetensors").read_bytes() == t5
            assert all(f.sha256 == hashlib.sha256(d).hexdigest() for f, d in zip(
                sorted(placed, key=lambda f: f.name), (clip, t5), strict=True))  # fmt: skip

            only = harness.run(repo_id="org/encoders", allow_patterns=["t5*"])
            assert only.status == "done" and [f.name for f in only.files] == ["t5xxl.safetensors"]

            civ = harness.run(url="https://civitai.com/models/5?modelVersionId=55")
            assert civ.status == "done", civ.error
            assert (
                civ.dest == "loras/pixel-art.safetensors" and civ.sha256 == hashlib.sha256(lora).hexdigest()
            )

            gated = harness.run(repo_id="org/gated", filename="model.safetensors")
            assert gated.status == "failed" and "HF_TOKEN" in str(gated.error)
            missing = harness.run(repo_id="org/encoders", filename="nope.safetensors")
            assert missing.status == "failed" and "nope.safetensors" in str(missing.error)
        finally:
            harness.close()


def test_cancel_then_the_same_request_at_once_starts_again(h: Harness, server: FaultServer) -> None:
    data = safetensors_bytes(LORA_KEYS, 12 * MiB)
    sha = server.add("/again.safetensors", data)
    server.throttle_bps = 2 * MiB
    job = h.submit(url=server.url("/again.safetensors"))
    wait_for(lambda: h.svc.get(job.id).bytes_done > 0)
    h.svc.cancel(job.id)
    server.throttle_bps = None
    again = h.submit(url=server.url("/again.safetensors"))  # before the cancel has settled
    (done,) = h.svc.wait([again.id], timeout=60)
    assert done.status == "done", done.error
    assert done.sha256 == sha


def test_closing_the_service_ends_a_blocking_fetch_with_a_clear_error(
    h: Harness, server: FaultServer, tmp_path: Path
) -> None:
    import threading

    from podkit.core.errors import TransferFailed

    server.add("/slow.zip", os.urandom(8 * MiB))
    server.throttle_bps = MiB
    outcome: list[BaseException] = []

    def fetch() -> None:
        try:
            h.svc.fetch_file(server.url("/slow.zip"), tmp_path / "ds")
        except BaseException as e:  # recorded for the assertion below
            outcome.append(e)

    worker = threading.Thread(target=fetch)
    worker.start()
    wait_for(lambda: server.bytes_sent > 0)
    h.svc.close()
    worker.join(30)
    assert not worker.is_alive()
    assert len(outcome) == 1 and isinstance(outcome[0], TransferFailed) and "stopped" in str(outcome[0])
    assert not list((tmp_path / "ds").glob("*"))  # no half-written file left in the caller's folder


def test_a_forced_download_resumes_its_own_bytes_after_a_pause(h: Harness, server: FaultServer) -> None:
    data = safetensors_bytes(LORA_KEYS, 24 * MiB)
    server.add("/f.safetensors", data)
    assert h.run(url=server.url("/f.safetensors")).status == "done"
    first = server.bytes_sent
    server.throttle_bps = MiB
    job = h.submit(force=True, url=server.url("/f.safetensors"))
    wait_for(lambda: h.svc.get(job.id).bytes_done > 6 * MiB)
    h.svc.pause(job.id)
    wait_for(lambda: h.svc.get(job.id).status == "paused")
    server.throttle_bps = None
    h.svc.resume(job.id)
    (done,) = h.svc.wait([job.id], timeout=60)
    assert done.status == "done", done.error
    assert server.bytes_sent - first - len(data) <= MIN_PIECE  # the forced run resumed, not restarted
    assert (h.models / "loras/f.safetensors").read_bytes() == data
