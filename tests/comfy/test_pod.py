"""``python <podkit> pod`` against a real ComfyUI: bootstrap, ComfyUI in the foreground, health,
the idle stop inside ComfyUI, signals and exit code; a second start skips what is in place."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from rgw import free_ports
from support.make_tiny_models import LORA_A

REPO = Path(__file__).resolve().parents[2]


def get(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def wait_log(log: Path, text: str, proc: subprocess.Popen[bytes], timeout: float = 300) -> str:
    deadline = time.monotonic() + timeout
    while True:
        content = log.read_text(errors="replace") if log.exists() else ""
        if text in content:
            return content
        assert proc.poll() is None, f"the pod command exited with {proc.returncode}:\n{content[-4000:]}"
        assert time.monotonic() < deadline, f"{text!r} not in the log:\n{content[-4000:]}"
        time.sleep(0.2)


def test_pod_command(
    comfy_install: Any,
    tiny_models: Path,
    s3_server: Any,
    s3: Any,
    s3_gateway: Any,
    comfy_child_env: Any,
    tmp_path: Path,
) -> None:
    bucket = f"podloras-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    lora = (tiny_models / "loras" / LORA_A).read_bytes()
    for name in ("pod_a.safetensors", "pod_b.safetensors"):
        s3.put_object(Bucket=bucket, Key=name, Body=lora)
    manifest = tmp_path / "manifest.json"
    manifest.write_text(
        json.dumps(
            {"version": 1, "loras": [f"r2://{bucket}/pod_a.safetensors", f"r2://{bucket}/pod_b.safetensors"]}
        )
    )
    models = tmp_path / "models"
    (tmp_path / "models.yaml").write_text(
        json.dumps({"tiny": {"checkpoints": str(tiny_models / "checkpoints")}})
    )
    marker = tmp_path / "idle-marker"
    env = {
        "COMFYUI_PATH": str(comfy_install.checkout),
        "COMFYUI_PYTHON": str(comfy_install.python),
        "PODKIT_S3_ENDPOINT": s3_server.endpoint_url,
        "PODKIT_S3_REGION": s3_server.region,
        "R2_ACCESS_KEY_ID": s3_server.access_key,
        "R2_SECRET_ACCESS_KEY": s3_server.secret_key,
        "R2_LORA_BUCKET": bucket,
        "R2_OUTPUT_BUCKET": bucket,
        "PODKIT_VOLUME_DIR": "",
        "PODKIT_MODELS_DIR": str(models),
        "PODKIT_STATE_DIR": str(tmp_path / "state"),
        "PODKIT_CACHE_DIR": str(tmp_path / "cache"),
        "PODKIT_HEALTH_STORE_TTL": "0",
        "PODKIT_HEALTH_MIN_FREE": "1M",
        "AWS_CONFIG_FILE": str(tmp_path / "none"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
    }
    if comfy_install.site is not None:
        env["PYTHONPATH"] = str(comfy_install.site)
    port = free_ports(1)[0]
    comfy_args = ["--cpu", "--disable-api-nodes", "--preview-method", "none", "--disable-all-custom-nodes",
                  "--whitelist-custom-nodes", "podkit", "--extra-model-paths-config", str(tmp_path / "models.yaml")]  # fmt: skip
    for name in ("output", "input", "temp", "user"):
        (tmp_path / "comfy" / name).mkdir(parents=True)
        comfy_args += [f"--{name}-directory", str(tmp_path / "comfy" / name)]
    comfy_args += ["--database-url", f"sqlite:///{tmp_path / 'comfy.db'}"]
    url = f"http://127.0.0.1:{port}"

    def start(log: Path, extra_env: dict[str, str]) -> subprocess.Popen[bytes]:
        with open(log, "wb") as fh:
            return subprocess.Popen(
                [sys.executable, str(REPO), "pod", "--manifest", str(manifest), "--listen", "127.0.0.1",
                 "--port", str(port), "--", *comfy_args],
                env=comfy_child_env({**env, **extra_env}), stdin=subprocess.DEVNULL, stdout=fh,
                stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip

    # first start: the manifest's LoRAs are downloaded and placed, then ComfyUI comes up
    log1 = tmp_path / "pod1.log"
    proc = start(log1, {})
    try:
        text = wait_log(log1, "podkit: pod ready in", proc)
        assert "podkit: bootstrap took" in text and "podkit: comfyui start took" in text
        assert (models / "loras" / "pod_a.safetensors").read_bytes() == lora
        status, health = get(url + "/podkit/health")
        assert status == 200, health
        assert "comfyui_queue" in {c["name"] for c in health["checks"]}
        loras = get(url + "/object_info/LoraLoader")[1]["LoraLoader"]["input"]["required"]["lora_name"][0]
        assert {"pod_a.safetensors", "pod_b.safetensors"} <= set(loras)
        # the store goes away: the pod is not ready (a probe every few seconds, one listing each at most)
        s3_gateway.stop_gateway()
        try:
            status, health = get(url + "/podkit/health")
            assert status == 503 and health["failing"] == ["store"], health
        finally:
            s3_gateway.start_gateway()
        status, health = get(url + "/podkit/health")
        assert status == 200, health
    finally:
        proc.send_signal(signal.SIGTERM)  # forwarded to ComfyUI; its exit code is the command's
        rc = proc.wait(timeout=60)
    assert rc in (0, 128 + signal.SIGTERM), rc
    assert not _listening(url)

    # second start: nothing is fetched again; the idle stop runs inside ComfyUI and fires its command
    log2 = tmp_path / "pod2.log"
    idle_env = {"PODKIT_IDLE_MINUTES": "0.1", "PODKIT_IDLE_WARN_SECONDS": "3", "PODKIT_IDLE_ACTION": "command",
                "PODKIT_IDLE_COMMAND": f"{sys.executable} -c \"open('{marker}', 'w').write('idle')\""}  # fmt: skip
    proc = start(log2, idle_env)
    try:
        text = wait_log(log2, "podkit: pod ready in", proc)
        assert text.count("already present") == 2, text[-3000:]
        deadline = time.monotonic() + 120
        # the command writes the marker before it exits; the watcher says "done" once it has exited
        status, idle = get(url + "/podkit/idle")
        while not (marker.exists() and idle["phase"] == "done"):
            assert time.monotonic() < deadline and idle["phase"] != "failed", idle
            time.sleep(0.5)
            status, idle = get(url + "/podkit/idle")
        assert status == 200 and idle["policy"]["action"] == "command"
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    assert not _listening(url)


def _listening(url: str) -> bool:
    try:
        urllib.request.urlopen(url + "/system_stats", timeout=3).read()
        return True
    except (urllib.error.URLError, OSError):
        return False
