"""The cold start a serverless worker and a pod share: manifest → ComfyUI → warm-up, timed per phase.

Each phase prints one line with its duration (``podkit: comfyui ready in 17.9 s``): time-to-ready
is the figure users pay for. The bootstrap manifest is the download engine's (already-present files
are skipped, partial ones resumed); ComfyUI starts as a child process (``runtime/comfy_process.py``)
unless ``PODKIT_COMFY_URL`` names one that runs already; the warm-up workflow
(``PODKIT_WARMUP_WORKFLOW``, an API-format graph file) is queued once so the first real job does not
pay for loading the models.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO
from urllib.parse import urlsplit

import aiohttp

from ..core.errors import ConfigError, PodKitError
from ..core.settings import Settings
from ..core.worker_jobs import check_workflow
from .comfy_client import ComfyClient
from .comfy_process import ComfyLaunch, ComfyProcess, ComfyStartError, answers


@dataclass
class Phases:
    """Times the phases of a start and prints one line per phase."""

    out: TextIO = sys.stdout
    times: dict[str, float] = field(default_factory=dict)
    t0: float = field(default_factory=time.monotonic)

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.monotonic()
        try:
            yield
        except BaseException:
            self.times[name] = time.monotonic() - start
            print(f"podkit: {name} failed after {self.times[name]:.1f} s", file=self.out, flush=True)
            raise
        self.times[name] = time.monotonic() - start
        print(f"podkit: {name} took {self.times[name]:.1f} s", file=self.out, flush=True)

    def skip(self, name: str, why: str) -> None:
        print(f"podkit: {name} skipped ({why})", file=self.out, flush=True)

    def total(self) -> float:
        return time.monotonic() - self.t0


@dataclass
class ComfyHandle:
    """The ComfyUI a worker or pod talks to: a child it started, or one that ran already."""

    url: str
    process: ComfyProcess | None = None

    def alive(self) -> bool:
        """A child: still running and accepting connections (a TCP connect, no request; a hang is the
        job timeout's business). A ComfyUI this process did not start: it answers."""
        if self.process is not None:
            return self.process.alive() and port_open(self.url)
        return answers(self.url + "/system_stats")

    @property
    def output_dir(self) -> Path | None:
        return self.process.output_dir if self.process else None

    @property
    def input_dir(self) -> Path | None:
        return self.process.input_dir if self.process else None

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()


def port_open(url: str, timeout: float = 2.0) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 80), timeout=timeout):
            return True
    except OSError:
        return False


def run_manifest(
    settings: Settings, manifest: Path | None, phases: Phases, force: tuple[str, ...] = ()
) -> None:
    if manifest is None:
        phases.skip("bootstrap", "no manifest")
        return
    from ..jobs.bootstrap import run_bootstrap
    from ..services import make_store, url_policy

    with phases.phase("bootstrap"):
        code = run_bootstrap(
            settings, make_store(settings), manifest, policy=url_policy(settings), force=list(force)
        )
        if code != 0:
            raise ConfigError(f"bootstrap of {manifest} failed (exit code {code}); see the lines above")


def start_comfy(
    env: Mapping[str, str],
    settings: Settings,
    phases: Phases,
    extra_args: tuple[str, ...] = (),
    timeout: float = 600.0,
) -> ComfyHandle:
    """The running ComfyUI at ``PODKIT_COMFY_URL``, else a child started from ``COMFYUI_PATH``."""
    url = env.get("PODKIT_COMFY_URL", "").strip().rstrip("/")
    if url:
        with phases.phase("comfyui reachable"):
            deadline = time.monotonic() + timeout
            while not answers(url + "/system_stats"):
                if time.monotonic() > deadline:
                    raise ComfyStartError(f"PODKIT_COMFY_URL={url} did not answer within {timeout:.0f} s")
                time.sleep(0.5)
        return ComfyHandle(url)
    launch = ComfyLaunch.from_env(env, settings.state_dir / "comfyui", extra_args)
    process = ComfyProcess(launch)
    with phases.phase("comfyui start"):
        process.start()
        try:
            process.wait_ready(timeout)
        except BaseException:
            process.stop()
            raise
    return ComfyHandle(process.url, process)


def warm_up(comfy: ComfyHandle, workflow_file: str | None, phases: Phases, timeout: float = 600.0) -> None:
    if not workflow_file:
        phases.skip("warm-up", "PODKIT_WARMUP_WORKFLOW not set")
        return
    path = Path(workflow_file).expanduser()
    try:
        graph = check_workflow(json.loads(path.read_text()))
    except (OSError, ValueError, PodKitError) as e:
        raise ConfigError(f"PODKIT_WARMUP_WORKFLOW={path}: {e}") from e

    async def run() -> None:
        async with aiohttp.ClientSession() as session:
            await asyncio.wait_for(ComfyClient(comfy.url, session).run_prompt(graph), timeout)

    with phases.phase("warm-up"):
        asyncio.run(run())
