"""The idle stop, on real parts: PodKit's services, the runpod SDK against a local stand-in for
RunPod's API, a throttled HTTP download, the S3 test server stopped and restarted."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fake_runpod import FakeRunPod, fake_runpod
from http_server import fault_server

from podkit.backends.idle_watch import IdleWatch
from podkit.core.download_request import parse_item
from podkit.core.events import RecordingNotifier
from podkit.core.idle import Activity, IdlePolicy
from podkit.core.objects import ObjectRef
from podkit.core.settings import Settings
from podkit.services import Services, build_services

POLICY = IdlePolicy(idle_minutes=1, warn_seconds=20)
IDLE = {"PODKIT_IDLE_MINUTES": "0.02", "PODKIT_IDLE_WARN_SECONDS": "0.5"}  # 1.2 s


@pytest.fixture
def runpod_api(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeRunPod]:
    with fake_runpod() as server:
        monkeypatch.setenv("RUNPOD_API_BASE_URL", server.base_url)
        yield server


@pytest.fixture
def make(tmp_path: Path) -> Iterator[Callable[..., Services]]:
    made: list[Services] = []

    def make(**env: str) -> Services:
        settings = Settings.from_env(
            {
                "PODKIT_VOLUME_DIR": "",
                "PODKIT_STORE": "local",
                "PODKIT_LOCAL_STORE_DIR": str(tmp_path / "store"),
                "PODKIT_CACHE_DIR": str(tmp_path / "cache"),
                "PODKIT_STATE_DIR": str(tmp_path / "state"),
                "PODKIT_MODELS_DIR": str(tmp_path / "models"),
                "PODKIT_URL_ALLOW_PRIVATE": "1",
                "RUNPOD_API_KEY": "rp-key-1",
                "RUNPOD_POD_ID": "pod-123",
                **IDLE,
                **env,
            }
        )
        services = build_services(settings, notifier=RecordingNotifier())
        assert services.idle is not None
        services.idle.tick = 0.1
        made.append(services)
        services.start()
        return services

    yield make
    for services in made:
        services.close()


def safetensors_blob(payload: int) -> bytes:
    header = json.dumps(
        {"lora_unet_x.lora_down.weight": {"dtype": "U8", "shape": [payload], "data_offsets": [0, payload]}}
    )
    raw = header.encode() + b" " * (-len(header) % 8)
    return len(raw).to_bytes(8, "little") + raw + bytes(payload)


def wait_for(predicate: Callable[[], Any], timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)
    return value


def test_idle_pod_is_stopped_through_runpods_api(
    make: Callable[..., Services], runpod_api: FakeRunPod
) -> None:
    services = make()
    wait_for(runpod_api.stopped_pods, timeout=20)
    assert runpod_api.stopped_pods() == ["pod-123"]
    assert runpod_api.requests[0][0] == "Bearer rp-key-1"
    # the action is done once RunPod's answer is back, a moment after the API saw the request
    wait_for(lambda: services.idle.state().phase == "done", timeout=10)

    def phases() -> list[str]:
        return [e["phase"] for e in services.notifier.target.of("podkit.idle")]  # type: ignore[attr-defined]

    wait_for(lambda: phases()[-1:] == ["done"], timeout=10)  # the state is kept, then announced
    assert "warning" in phases()
    time.sleep(0.5)
    assert runpod_api.stopped_pods() == ["pod-123"], "the pod is stopped once"


def test_not_while_a_download_runs(make: Callable[..., Services], runpod_api: FakeRunPod) -> None:
    with fault_server() as files:
        files.throttle_bps = 200_000
        files.add("/big.safetensors", safetensors_blob(800_000))  # about 4 s
        url = files.url("/big.safetensors")
        services = make(PODKIT_URL_ALLOW_HOSTS="127.0.0.1")
        assert services.downloads is not None
        (job,) = services.downloads.submit(
            [
                parse_item(
                    {"source": "url", "url": url, "type": "lora", "name": "big.safetensors"},
                    policy=services.downloads.policy,
                )
            ]
        )
        time.sleep(2.5)
        assert services.downloads.get(job.id).status in ("queued", "running")
        assert runpod_api.stopped_pods() == []
        assert services.idle is not None and "download(s) running" in " ".join(services.idle.state().busy)
        seen_running = time.monotonic()  # the last moment the download was seen running
        deadline = seen_running + 60
        while time.monotonic() < deadline:
            now = time.monotonic()
            if services.downloads.get(job.id).status not in ("queued", "running"):
                break
            seen_running = now
            time.sleep(0.05)
        wait_for(runpod_api.stopped_pods, timeout=20)
        # a full idle time (1.2 s, less a 0.1 s tick) after the download was last seen running
        assert time.monotonic() - seen_running >= 1.0, "the idle time counts from the end of the download"


@pytest.mark.s3
def test_not_while_the_outbox_holds_an_image_during_an_outage(
    make: Callable[..., Services], runpod_api: FakeRunPod, s3_server: Any, s3_gateway: Any
) -> None:
    import boto3

    bucket = f"idle-{int(time.time() * 1000) % 10**9}"
    boto3.client("s3", endpoint_url=s3_server.endpoint_url, aws_access_key_id=s3_server.access_key,
                 aws_secret_access_key=s3_server.secret_key, region_name=s3_server.region).create_bucket(Bucket=bucket)  # fmt: skip
    services = make(
        PODKIT_STORE="s3",
        PODKIT_S3_ENDPOINT=s3_server.endpoint_url,
        PODKIT_S3_REGION=s3_server.region,
        R2_ACCESS_KEY_ID=s3_server.access_key,
        R2_SECRET_ACCESS_KEY=s3_server.secret_key,
        R2_OUTPUT_BUCKET=bucket,
        R2_LORA_BUCKET=bucket,
    )
    s3_gateway.stop_gateway()
    try:
        services.outbox.submit(b"an image", ObjectRef(bucket, "kept.png"), content_type="image/png")
        time.sleep(3)  # well past the idle time
        assert runpod_api.stopped_pods() == []
        state = services.idle.state() if services.idle else None
        assert (
            state is not None
            and state.phase == "busy"
            and "1 upload(s) waiting for the store" in state.message
        )
    finally:
        t_back = time.monotonic()  # the upload cannot land before the store is back
        s3_gateway.start_gateway()
    services.outbox.retry()
    assert services.outbox.flush(timeout=60)
    wait_for(runpod_api.stopped_pods, timeout=30)
    # idle for over 3 s by the wall clock, yet the pod stops only a full idle time (1.2 s, less a
    # 0.1 s tick) after the upload drained: the waiting upload kept the idle clock at zero
    assert time.monotonic() - t_back >= 1.0
    assert services.store.get_bytes(ObjectRef(bucket, "kept.png")) == b"an image"


def test_the_command_action_runs_an_argv(make: Callable[..., Services], tmp_path: Path) -> None:
    marker = tmp_path / "idle marker"
    command = f"{sys.executable} -c \"import sys; open(sys.argv[1], 'w').write('stopped')\" '{marker}'"
    services = make(PODKIT_IDLE_ACTION="command", PODKIT_IDLE_COMMAND=command)
    wait_for(marker.exists, timeout=20)
    assert marker.read_text() == "stopped"
    wait_for(lambda: services.idle.state().phase == "done", timeout=10)  # once the command exited


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_watch_counts_from_the_last_activity_keeps_alive_and_acts_once() -> None:
    clock, activity, acted = Clock(), [Activity()], []
    events = RecordingNotifier()
    watch = IdleWatch(
        POLICY, lambda: activity[0], lambda: acted.append(1) or "done", notifier=events, clock=clock
    )
    clock.now += 30
    assert watch.poll().phase == "idle"
    activity[0] = Activity(downloads=1)  # busy: the clock restarts when it ends
    clock.now += 100
    assert watch.poll().phase == "busy"
    activity[0] = Activity()
    clock.now += 45
    state = watch.poll()
    assert state.phase == "warning" and state.act_in_seconds == 15
    clock.now += 10
    assert watch.keep_alive().act_in_seconds == 60  # the panel's "keep alive"
    clock.now += 59
    assert watch.poll().phase == "warning" and not acted
    clock.now += 2
    assert watch.poll().phase == "done" and acted == [1]
    clock.now += 100
    assert watch.poll().phase == "done" and acted == [1]  # once
    assert [e["phase"] for e in events.of("podkit.idle")] == [
        "busy",
        "warning",
        "idle",
        "warning",
        "acting",
        "done",
    ]


def test_a_failed_action_is_reported_and_retried() -> None:
    clock, calls = Clock(), []

    def action() -> str:
        calls.append(1)
        raise RuntimeError("api down")

    watch = IdleWatch(POLICY, Activity, action, clock=clock, retry_seconds=30)
    clock.now += 61
    state = watch.poll()
    assert state.phase == "failed" and state.error == "api down"
    clock.now += 10
    assert watch.poll().phase == "failed" and len(calls) == 1
    clock.now += 25
    watch.poll()
    assert len(calls) == 2
