"""The RunPod Serverless worker on a real ComfyUI, driven through the runpod SDK's own local API
(``--rp_serve_api``: ``/runsync``, ``/run``, ``/status``), with the real S3 test server.

One worker per ComfyUI tree (module scope): ``python <podkit> worker`` cold-starts ComfyUI with
PodKit from ``COMFYUI_PATH`` (the read-only tree; PodKit comes in through an extra custom_nodes
folder), then serves jobs. ``--test_input`` runs of the same command point ``PODKIT_COMFY_URL`` at
that ComfyUI (no second cold start) and check exit codes, retried job ids and the training role.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from rgw import free_ports
from support import workflows as wf
from support.make_tiny_models import CHECKPOINT, LORA_A

REPO = Path(__file__).resolve().parents[2]

FAKE_AI_TOOLKIT = Path(__file__).resolve().parents[1] / "support" / "fake_ai_toolkit"


class Worker:
    def __init__(self, proc: subprocess.Popen[bytes], port: int, log: Path, env: dict[str, str]) -> None:
        self.proc, self.port, self.log, self.env = proc, port, log, env

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def call(self, path: str, body: dict[str, Any] | None = None, timeout: float = 600) -> Any:
        data = json.dumps(body or {}).encode()
        req = urllib.request.Request(self.url + path, data=data, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310
            return json.loads(resp.read())

    def runsync(self, job_input: dict[str, Any]) -> Any:
        return self.call("/runsync", {"input": job_input})

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def comfy_url(self) -> str:
        for line in self.log_text().splitlines():
            if "starting ComfyUI:" in line and "--port" in line:
                port = line.split("--port", 1)[1].split()[0]
                return f"http://127.0.0.1:{port}"
        raise AssertionError("the worker did not say where ComfyUI runs\n" + self.log_text()[-3000:])


def models_config(tiny_models: Path, folder: Path) -> Path:
    config = folder / "models.yaml"
    entries = {k: str(tiny_models / k) for k in ("checkpoints", "loras", "vae")}
    config.write_text(json.dumps({"tiny": entries}))
    return config


@pytest.fixture(scope="module")
def worker_env(
    comfy_install: Any,
    tiny_models: Path,
    s3_server: Any,
    s3: Any,
    comfy_child_env: Any,
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, str]:
    root = tmp_path_factory.mktemp("worker")
    tag = uuid.uuid4().hex[:8]
    loras, outputs = f"wloras-{tag}", f"wout-{tag}"
    for bucket in (loras, outputs):
        s3.create_bucket(Bucket=bucket)
    comfy_args = [
        "--cpu", "--disable-api-nodes", "--preview-method", "none", "--disable-all-custom-nodes",
        "--whitelist-custom-nodes", "podkit", "--extra-model-paths-config", str(models_config(tiny_models, root)),
    ]  # fmt: skip
    env = {
        "COMFYUI_PATH": str(comfy_install.checkout),
        "COMFYUI_PYTHON": str(comfy_install.python),
        "PODKIT_COMFY_ARGS": " ".join(comfy_args),
        "PODKIT_S3_ENDPOINT": s3_server.endpoint_url,
        "PODKIT_S3_REGION": s3_server.region,
        "R2_ACCESS_KEY_ID": s3_server.access_key,
        "R2_SECRET_ACCESS_KEY": s3_server.secret_key,
        "R2_LORA_BUCKET": loras,
        "R2_OUTPUT_BUCKET": outputs,
        # a network volume: each process keeps its state in <volume>/podkit/state/<instance>, the
        # cache is shared (never one PODKIT_STATE_DIR for several processes)
        "PODKIT_VOLUME_DIR": str(root / "volume"),
        "PODKIT_MODELS_DIR": str(root / "models"),
        "AWS_CONFIG_FILE": str(root / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(root / "no-aws-credentials"),
        "RUNPOD_POD_ID": f"test-worker-{tag}",
    }
    warmup = root / "warmup.json"
    warmup.write_text(json.dumps(wf.txt2img(CHECKPOINT, seed=0, steps=1)))
    env["PODKIT_WARMUP_WORKFLOW"] = str(warmup)
    if comfy_install.site is not None:
        env["PYTHONPATH"] = str(comfy_install.site)
    return dict(comfy_child_env(env))


def start_worker(env: dict[str, str], args: list[str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as fh:
        return subprocess.Popen(
            [sys.executable, str(REPO), "worker", *args],
            cwd=log.parent,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


@pytest.fixture(scope="module")
def worker(worker_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    port = free_ports(1)[0]
    log = tmp_path_factory.mktemp("worker-log") / "worker.log"
    proc = start_worker(
        worker_env, ["--rp_serve_api", "--rp_api_port", str(port), "--rp_api_host", "127.0.0.1"], log
    )
    handle = Worker(proc, port, log, worker_env)
    deadline = time.monotonic() + 300
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the worker exited with {proc.returncode}:\n{handle.log_text()[-6000:]}")
            try:
                urllib.request.urlopen(handle.url + "/docs", timeout=5).read()  # noqa: S310
                break
            except (urllib.error.URLError, OSError):
                if time.monotonic() > deadline:
                    pytest.fail("the worker's API did not answer\n" + handle.log_text()[-6000:])
                time.sleep(0.5)
        text = handle.log_text()
        for phase in (
            "bootstrap skipped (no manifest)",
            "comfyui start took",
            "warm-up took",
            "inference worker ready in",
        ):
            assert f"podkit: {phase}" in text, text[-4000:]
        yield handle
    finally:
        comfy_pids = _children_of(proc.pid)
        proc.send_signal(signal.SIGTERM)  # uvicorn stops; the worker stops its ComfyUI
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        deadline = time.monotonic() + 60
        while [p for p in comfy_pids if Path(f"/proc/{p}").exists()] and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not [p for p in comfy_pids if Path(f"/proc/{p}").exists()], "ComfyUI outlived its worker"


def _answers(url: str) -> bool:
    try:
        urllib.request.urlopen(url + "/system_stats", timeout=2).read()
        return True
    except (urllib.error.URLError, OSError):
        return False


def _children_of(pid: int) -> list[int]:
    """The worker's ComfyUI children (main.py), not the SDK's helper processes."""
    try:
        pids = [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []
    return [p for p in pids if b"main.py" in Path(f"/proc/{p}/cmdline").read_bytes()]


def head_sha(s3: Any, uri: str) -> str:
    bucket, key = uri.removeprefix("r2://").split("/", 1)
    return hashlib.sha256(s3.get_object(Bucket=bucket, Key=key)["Body"].read()).hexdigest()


def png_bytes(color: tuple[int, int, int], size: int = 16) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buf, format="PNG")
    return buf.getvalue()


def test_runsync_delivers_every_output_to_the_bucket(worker: Worker, s3: Any) -> None:
    graph = wf.txt2img(CHECKPOINT, seed=3, steps=1)
    graph[wf.Ids.DECODE] = wf.node("PodKitTiledVAEDecode", samples=wf.link(wf.Ids.SAMPLER), vae=wf.link(wf.Ids.CKPT, 2),
                                   tile_size=512, overlap=64, use_cache=True)  # fmt: skip
    # a second, animated output from a core save node (not only images)
    graph["30"] = wf.node("SaveAnimatedWEBP", images=wf.link(wf.Ids.DECODE), filename_prefix="anim", fps=6.0,
                          lossless=False, quality=80, method="default")  # fmt: skip
    answer = worker.runsync({"workflow": graph})
    assert answer["status"] == "COMPLETED", answer
    out = answer["output"]
    assert {(o["node"], o["content_type"]) for o in out["outputs"]} == {
        (wf.Ids.SAVE, "image/png"),
        ("30", "image/webp"),
    }
    for o in out["outputs"]:
        assert o["status"] == "done" and o["uri"].startswith(
            f"r2://{worker.env['R2_OUTPUT_BUCKET']}/{answer['id']}/"
        )
        assert o["uri"].endswith(f"/{o['sha256']}.{o['filename'].rsplit('.', 1)[1]}")
        assert head_sha(s3, o["uri"]) == o["sha256"]
        with urllib.request.urlopen(o["url"], timeout=30) as resp:  # noqa: S310 - a presigned URL on loopback
            assert hashlib.sha256(resp.read()).hexdigest() == o["sha256"]
    assert [i["type"] for i in out["images"]] == ["s3_url", "s3_url"]
    assert set(out["timings"]) == {"queue", "run", "upload", "total"}
    assert worker.env["R2_SECRET_ACCESS_KEY"] not in json.dumps(answer)


def test_run_then_status_and_input_images(worker: Worker) -> None:
    graph = {
        "1": wf.node("LoadImage", image="red.png"),
        "2": wf.node("SaveImage", images=wf.link("1"), filename_prefix="echo"),
    }
    red = png_bytes((255, 0, 0))
    job = worker.call("/run", {"input": {"workflow": graph, "return_base64": True,
                                         "images": [{"name": "red.png", "image": base64.b64encode(red).decode()}]}})  # fmt: skip
    assert job["status"] == "IN_PROGRESS"
    answer = worker.call(f"/status/{job['id']}")
    assert answer["status"] == "COMPLETED", answer
    image = answer["output"]["images"][0]
    assert image["type"] == "base64"
    pixels = np.asarray(Image.open(io.BytesIO(base64.b64decode(image["data"]))).convert("RGB"))
    assert (pixels == [255, 0, 0]).all()


def test_template_job_and_unknown_names(worker: Worker, s3: Any) -> None:
    template = {
        "workflow": wf.txt2img(CHECKPOINT, seed=1, steps=1),
        "params": {
            "prompt": {"bind": f"{wf.Ids.POSITIVE}.text", "type": "string", "required": True},
            "seed": {"bind": f"{wf.Ids.SAMPLER}.seed", "type": "int", "min": 0},
        },
    }
    s3.put_object(Bucket=worker.env["R2_LORA_BUCKET"], Key="templates/tiny.json", Body=json.dumps(template))
    answer = worker.runsync({"template": "tiny", "params": {"prompt": "a red cube", "seed": 5}})
    assert answer["status"] == "COMPLETED", answer
    assert [o["kind"] for o in answer["output"]["outputs"]] == ["image"]
    bad = worker.runsync({"template": "tiny", "params": {"prompt": "x", "sede": 1}})
    assert (
        bad["status"] == "FAILED"
        and "unknown parameter(s) sede" in bad["error"]
        and "valid: prompt, seed" in bad["error"]
    )
    missing = worker.runsync({"template": "nope", "params": {}})
    assert missing["status"] == "FAILED" and "unknown template 'nope'; available: tiny" in missing["error"]


def test_failing_node_and_invalid_graph_are_named(worker: Worker) -> None:
    failing = {
        "1": wf.node("LoadImage", image="broken.png"),
        "2": wf.node("SaveImage", images=wf.link("1"), filename_prefix="x"),
    }
    answer = worker.runsync(
        {
            "workflow": failing,
            "images": [{"name": "broken.png", "image": base64.b64encode(b"not an image").decode()}],
        }
    )
    assert answer["status"] == "FAILED"
    assert "node 1 (LoadImage) failed" in answer["error"] and "Traceback" not in answer["error"]
    invalid = wf.txt2img(CHECKPOINT, seed=1)
    del invalid[wf.Ids.SAMPLER]["inputs"]["steps"]
    answer = worker.runsync({"workflow": invalid})
    assert answer["status"] == "FAILED" and f"node {wf.Ids.SAMPLER} (KSampler)" in answer["error"]
    answer = worker.runsync({"workflow": {"nodes": [], "links": []}})
    assert answer["status"] == "FAILED" and "Export (API)" in answer["error"]


def test_a_job_can_bypass_the_generation_cache(worker: Worker) -> None:
    answer = worker.runsync({"workflow": wf.txt2img(CHECKPOINT, seed=21, steps=1), "generation_cache": False})
    assert answer["status"] == "COMPLETED", answer
    prompt_id = answer["output"]["prompt_id"]
    with urllib.request.urlopen(f"{worker.comfy_url()}/history/{prompt_id}", timeout=30) as resp:
        queued = json.loads(resp.read())[prompt_id]["prompt"]  # [number, id, graph, extra_data, outputs]
    assert queued[3]["podkit_generation_cache"] is False
    with urllib.request.urlopen(f"{worker.comfy_url()}/podkit/cache/stats", timeout=30) as resp:
        generation = json.loads(resp.read())["generation"]
    if generation["enabled"]:  # ComfyUI 0.33+: the provider saw the prompt and left it alone
        assert generation["totals"]["bypassed"] >= 1


def test_test_input_mode_retried_job_id_and_exit_codes(worker: Worker, s3: Any, tmp_path: Path) -> None:
    env = {**worker.env, "PODKIT_COMFY_URL": worker.comfy_url(), "PODKIT_INSTANCE_ID": "test-input"}
    job = {"id": "fixed-job-1", "input": {"workflow": wf.txt2img(CHECKPOINT, seed=9, steps=1)}}
    bucket = worker.env["R2_OUTPUT_BUCKET"]
    for attempt in range(2):  # RunPod retries a job with the same id: the second run uploads nothing new
        log = tmp_path / f"run{attempt}.log"
        proc = start_worker(env, ["--test_input", json.dumps(job)], log)
        assert proc.wait(timeout=300) == 0, log.read_text()[-4000:]
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="fixed-job-1/").get("Contents", [])]
    assert len(keys) == 1, keys
    log = tmp_path / "failing.log"
    bad = {"id": "fixed-job-2", "input": {"workflow": {"1": {"class_type": "NoSuchNode", "inputs": {}}}}}
    proc = start_worker(env, ["--test_input", json.dumps(bad)], log)
    assert proc.wait(timeout=300) == 1, log.read_text()[-4000:]


def test_s3_outage_during_a_job_loses_nothing(worker: Worker, s3: Any, s3_gateway: Any) -> None:
    job = worker.call("/run", {"input": {"workflow": wf.txt2img(CHECKPOINT, seed=21, steps=1)}})
    s3_gateway.stop_gateway()
    try:
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(worker.call, f"/status/{job['id']}")
            time.sleep(8)  # the prompt ran; its upload waits for the store
            assert not pending.done()
            s3_gateway.start_gateway()
            answer = pending.result(timeout=300)
    finally:
        s3_gateway.start_gateway()
    assert answer["status"] == "COMPLETED", answer
    (out,) = answer["output"]["outputs"]
    assert out["status"] == "done" and head_sha(s3, out["uri"]) == out["sha256"]


def test_cancel_interrupts_the_prompt_and_uploads_nothing(worker: Worker, tmp_path: Path) -> None:
    """RunPod's cancel is a cancelled handler task (the SDK's ``task.cancel()``): run the handler in
    this process against the worker's ComfyUI and cancel it mid-prompt."""
    from podkit.core.settings import Settings
    from podkit.runtime.cold_start import ComfyHandle
    from podkit.services import build_services
    from podkit.worker.inference import InferenceWorker
    from podkit.worker.templates import TemplateLibrary

    settings = Settings.from_env({"PODKIT_STATE_DIR": str(tmp_path / "state"), "PODKIT_CACHE_DIR": str(tmp_path / "cache"),
                                  "PODKIT_LOCAL_STORE_DIR": str(tmp_path / "store"), "PODKIT_VOLUME_DIR": ""})  # fmt: skip
    services = build_services(settings)
    services.start()
    progress: list[dict[str, Any]] = []
    comfy = ComfyHandle(worker.comfy_url())
    handler = InferenceWorker(services, comfy, TemplateLibrary(None, services.store, "loras"),
                              progress=lambda job, p: progress.append(dict(p)), progress_interval=0)  # fmt: skip
    graph = wf.txt2img(CHECKPOINT, seed=31, steps=200, size=128)

    async def scenario() -> None:
        task = asyncio.create_task(handler.handle({"id": "cancel-me", "input": {"workflow": graph}}))
        deadline = time.monotonic() + 120
        while not any(p.get("step") for p in progress):
            assert time.monotonic() < deadline and not task.done(), progress
            await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await handler.close()

    try:
        asyncio.run(scenario())
        assert any(p.get("node_type") == "KSampler" and p.get("total") == 200 for p in progress), progress
        with urllib.request.urlopen(comfy.url + "/queue", timeout=10) as resp:  # noqa: S310
            queue = json.loads(resp.read())
        deadline = time.monotonic() + 60
        while queue["queue_running"] and time.monotonic() < deadline:
            time.sleep(0.5)
            with urllib.request.urlopen(comfy.url + "/queue", timeout=10) as resp:  # noqa: S310
                queue = json.loads(resp.read())
        assert queue["queue_running"] == [] and queue["queue_pending"] == []
        assert services.outbox.counts() == {}
    finally:
        services.close()


def test_training_role(worker_env: dict[str, str], tiny_models: Path, s3: Any, tmp_path: Path) -> None:
    dataset = tmp_path / "volume" / "datasets" / "cats"
    dataset.mkdir(parents=True)
    for i in range(3):
        (dataset / f"cat{i}.png").write_bytes(png_bytes((10 * i, 20, 30)))
        (dataset / f"cat{i}.txt").write_text("a photo of a tiny test cat")
    env = {**worker_env, "PODKIT_WORKER_ROLE": "training", "PODKIT_VOLUME_DIR": str(tmp_path / "volume"),
           "PODKIT_AI_TOOLKIT_DIR": str(FAKE_AI_TOOLKIT), "PODKIT_AI_TOOLKIT_PYTHON": sys.executable,
           "PODKIT_TRAINER_ENV": "FAKE_AITK_LIKE", "FAKE_AITK_LIKE": str(tiny_models / "loras" / LORA_A),
           "PODKIT_INSTANCE_ID": "trainer"}  # fmt: skip
    job = {"id": "train-1", "input": {"name": "worker_cat", "dataset": {"path": str(dataset)}, "base_model": "sd15",
                                      "steps": 10, "rank": 4, "alpha": 4}}  # fmt: skip
    # two trainer workers on one volume at once (the seed allowed one for fear of cache collisions)
    runs = []
    for i in range(2):
        job = {"id": f"train-{i}", "input": {**job["input"], "name": f"worker_cat{i}"}}
        log = tmp_path / f"train{i}.log"
        env_i = {**env, "PODKIT_INSTANCE_ID": f"trainer{i}", "RUNPOD_POD_ID": f"trainer-pod-{i}"}
        runs.append((start_worker(env_i, ["--test_input", json.dumps(job)], log), log))
    for i, (proc, log) in enumerate(runs):
        assert proc.wait(timeout=300) == 0, log.read_text()[-4000:]
        uri = f"r2://{worker_env['R2_LORA_BUCKET']}/worker_cat{i}.safetensors"
        assert uri in log.read_text(), log.read_text()[-4000:]
        assert head_sha(s3, uri)


def test_a_job_over_its_timeout_is_interrupted(worker: Worker) -> None:
    answer = worker.runsync({"workflow": wf.txt2img(CHECKPOINT, seed=41, steps=400, size=128), "timeout": 3})
    assert answer["status"] == "FAILED" and "timed out" in answer["error"], answer
    deadline = time.monotonic() + 60
    while True:
        with urllib.request.urlopen(worker.comfy_url() + "/queue", timeout=10) as resp:
            queue = json.loads(resp.read())
        if not queue["queue_running"] and not queue["queue_pending"]:
            break
        assert time.monotonic() < deadline, queue
        time.sleep(0.5)


def test_a_worker_whose_comfyui_died_asks_to_be_replaced(worker: Worker) -> None:
    """Last in the module: it kills the module's ComfyUI."""
    (pid,) = _children_of(worker.proc.pid)
    url = worker.comfy_url()
    os.kill(pid, signal.SIGKILL)
    # a big multi-threaded process takes a moment to die: its listener closes when the last thread exits
    deadline = time.monotonic() + 60
    while _answers(url):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    answer = worker.runsync({"workflow": wf.txt2img(CHECKPOINT, seed=1, steps=1)})
    assert answer["status"] == "FAILED" and "is not running on this worker" in answer["error"], answer
