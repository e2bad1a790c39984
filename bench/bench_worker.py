"""The serverless worker's cost: warm-job overhead against a direct prompt, cold start, warm-up.

    .venv/bin/python bench/bench_worker.py [--comfy DIR] [--rounds 6] [--json PATH]

``--comfy`` defaults to ``COMFYUI_PATH``, else the newest tree ``scripts/setup`` prepared; its
interpreter is ``COMFYUI_PYTHON`` or ``.venv``. Uses the tiny SD1.5 checkpoint of
tests/support/make_tiny_models.py and the embedded local store (the upload is a file copy, so the
figure is the worker's own overhead, not a network's).

1. cold start: ``python <podkit> worker --rp_serve_api`` until its API answers, without and with a
   warm-up workflow (``PODKIT_WARMUP_WORKFLOW``), and the first job after each;
2. warm jobs, interleaved: the same txt2img graph (a new seed each time, so nothing is cached)
   through the worker's ``/runsync`` (input check, prompt, websocket, outputs spooled and uploaded
   through the outbox, URLs) against the anchor: ``POST /prompt`` + websocket + ``/history`` on the
   worker's own ComfyUI (what a hand-written handler does, without delivering the image).

Goal (issue: serverless endpoints): warm-job wall ≤ 1.05× the anchor. Prints tables and one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import _bootstrap
from _common import CpuGuard, emit_json, interleave, paired_ratio, print_table, stats

_bootstrap.register_package()

import aiohttp  # noqa: E402
import workflows as wf  # noqa: E402
from comfy_trees import find_installs  # noqa: E402
from make_tiny_models import CHECKPOINT  # noqa: E402

from podkit.runtime.comfy_client import ComfyClient  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
GUARD = CpuGuard()


def post(url: str, body: dict[str, Any], timeout: float = 600) -> Any:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())


class Worker:
    def __init__(self, env: dict[str, str], root: Path, port: int) -> None:
        self.port = port
        self.log = root / f"worker-{port}.log"
        self.t0 = time.monotonic()
        with open(self.log, "wb") as fh:
            self.proc = subprocess.Popen(
                [sys.executable, str(REPO), "worker", "--rp_serve_api", "--rp_api_port", str(port),
                 "--rp_api_host", "127.0.0.1"],
                env=env, cwd=root, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        GUARD.extra_roots.append(self.proc.pid)
        while True:
            if self.proc.poll() is not None:
                raise SystemExit(f"worker exited:\n{self.log.read_text()[-4000:]}")
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/docs", timeout=5).read()
                break
            except (urllib.error.URLError, OSError):
                time.sleep(0.1)
        self.ready_s = time.monotonic() - self.t0

    def runsync(self, graph: dict[str, Any]) -> float:
        t0 = time.monotonic()
        answer = post(f"http://127.0.0.1:{self.port}/runsync", {"input": {"workflow": graph}})
        if answer.get("status") != "COMPLETED":
            raise SystemExit(f"job failed: {answer}")
        if wf.Ids.SAMPLER in answer["output"].get("cached_nodes", []):
            raise SystemExit("the sampler came from a cache: this run measures nothing")
        return time.monotonic() - t0

    def comfy_url(self) -> str:
        for line in self.log.read_text().splitlines():
            if "starting ComfyUI:" in line:
                return "http://127.0.0.1:" + line.split("--port", 1)[1].split()[0]
        raise SystemExit("no ComfyUI port in the worker log")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)


def direct(url: str, graph: dict[str, Any]) -> float:
    async def go() -> None:
        async with aiohttp.ClientSession() as session:
            run = await ComfyClient(url, session).run_prompt(graph)
        if wf.Ids.SAMPLER in run.cached_nodes:
            raise SystemExit("the sampler came from a cache: this run measures nothing")

    t0 = time.monotonic()
    asyncio.run(go())
    return time.monotonic() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--comfy", default=os.environ.get("COMFYUI_PATH"))
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--no-guard", action="store_true")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    GUARD.enabled = not args.no_guard
    installs = find_installs()
    if isinstance(installs, str):
        print(installs, file=sys.stderr)
        return 2
    install = next(
        (i for i in installs if args.comfy and Path(args.comfy).resolve() == i.checkout.resolve()),
        installs[-1],
    )
    from rgw import free_ports

    with tempfile.TemporaryDirectory(prefix="podkit-bench-worker-") as tmp:
        root = Path(tmp)
        models = root / "models"
        models.mkdir()
        maker = [str(install.python), str(REPO / "tests/support/make_tiny_models.py"), "--out", str(models)]
        subprocess.run(
            [*maker, "--comfyui", str(install.checkout)], check=True, capture_output=True, timeout=900
        )
        (root / "models.yaml").write_text(
            json.dumps({"tiny": {k: str(models / k) for k in ("checkpoints", "vae")}})
        )
        warmup = root / "warmup.json"
        warmup.write_text(json.dumps(wf.txt2img(CHECKPOINT, seed=0, steps=args.steps)))
        base = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("PODKIT_", "R2_", "AWS_")) and k != "PYTHONPATH"
        }
        base.update(
            COMFYUI_PATH=str(install.checkout),
            COMFYUI_PYTHON=str(install.python),
            PODKIT_COMFY_ARGS=f"--cpu --disable-api-nodes --preview-method none --disable-all-custom-nodes "
            f"--whitelist-custom-nodes podkit --extra-model-paths-config {root / 'models.yaml'}",
            PODKIT_STORE="local",
            PODKIT_LOCAL_STORE_DIR=str(root / "store"),
            PODKIT_CACHE_DIR=str(root / "cache"),
            PODKIT_VOLUME_DIR="",
        )
        if install.site is not None:
            base["PYTHONPATH"] = str(install.site)
        seed = iter(range(1000, 100000))
        cold: dict[str, dict[str, float]] = {}
        for name, extra in (("no warm-up", {}), ("warm-up", {"PODKIT_WARMUP_WORKFLOW": str(warmup)})):
            env = {**base, **extra, "PODKIT_STATE_DIR": str(root / f"state-{len(cold)}")}
            worker = Worker(env, root, free_ports(1)[0])
            first = worker.runsync(wf.txt2img(CHECKPOINT, seed=next(seed), steps=args.steps))
            second = worker.runsync(wf.txt2img(CHECKPOINT, seed=next(seed), steps=args.steps))
            cold[name] = {"ready_s": worker.ready_s, "first_job_s": first, "second_job_s": second}
            if name == "warm-up":
                break
            worker.stop()
        print_table(
            "cold start (s)",
            ["worker", "API ready", "first job", "second job"],
            [
                [n, f"{c['ready_s']:.1f}", f"{c['first_job_s']:.2f}", f"{c['second_job_s']:.2f}"]
                for n, c in cold.items()
            ],
        )
        comfy = worker.comfy_url()
        samples: dict[str, list[float]] = {"worker": [], "direct": []}
        try:
            for _, case in interleave(list(samples), args.rounds):

                def sample(case: str = case) -> float:
                    # a new seed for every attempt: a repeated prompt would come from ComfyUI's cache
                    graph = wf.txt2img(CHECKPOINT, seed=next(seed), steps=args.steps)
                    return worker.runsync(graph) if case == "worker" else direct(comfy, graph)

                value, _ = GUARD.run(sample)
                samples[case].append(value)
        finally:
            worker.stop()
    w, d = stats(samples["worker"]), stats(samples["direct"])
    ratio = paired_ratio(samples["worker"], samples["direct"])
    print_table(
        "warm jobs (wall s)",
        ["case", "min", "median", "ratio to direct (paired)"],
        [["worker /runsync", f"{w['min']:.2f}", f"{w['median']:.2f}", f"{ratio:.3f}"],
         ["direct POST /prompt + ws", f"{d['min']:.2f}", f"{d['median']:.2f}", "1"]],
    )  # fmt: skip
    emit_json(
        "bench_worker",
        {"comfyui": install.version, "cold": cold, "worker": samples["worker"], "direct": samples["direct"],
         "ratio_paired": ratio, "ratio_median": w["median"] / d["median"], "discarded": GUARD.discarded},
        args.json,
    )  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
