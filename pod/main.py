"""``python <podkit> pod [--manifest FILE] [--force NAME] [--listen ADDR] [--port N] [-- <ComfyUI args>]``.

An idempotent cold start for a GPU pod: the bootstrap manifest (parallel, verified, present files
skipped, ``--force NAME`` fetches one again), then ComfyUI with PodKit in the foreground: its output
is the pod's log, SIGTERM/SIGINT/SIGHUP are forwarded to it, and its exit code is the command's.
One line per phase with its duration, then ``podkit: pod ready in N s`` (time-to-ready). The cold
start is the serverless worker's (``runtime/cold_start.py``); once ComfyUI runs, PodKit inside it
serves ``/podkit/health`` and the idle stop.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import FrameType

from ..core.errors import PodKitError
from ..core.settings import Settings
from ..runtime.cold_start import Phases, run_manifest
from ..runtime.comfy_process import ComfyLaunch, ComfyProcess, ComfyStartError

FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def parse(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    argv = list(argv)
    extra: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1 :]
    ap = argparse.ArgumentParser(prog="podkit pod", description=__doc__.split("\n\n")[1])
    ap.add_argument(
        "--manifest", type=Path, default=None, help="bootstrap manifest (default PODKIT_MANIFEST)"
    )
    ap.add_argument("--force", action="append", default=[], metavar="NAME", help="download NAME again")
    ap.add_argument("--listen", default=None, help="address ComfyUI listens on (default 0.0.0.0)")
    ap.add_argument("--port", type=int, default=None, help="ComfyUI's port (default 8188, PODKIT_COMFY_PORT)")
    return ap.parse_args(argv), extra


def main(argv: Sequence[str], env: Mapping[str, str] | None = None) -> int:
    env = dict(os.environ if env is None else env)
    args, extra = parse(argv)
    phases = Phases()
    try:
        settings = Settings.from_env(env)
        manifest = args.manifest or (Path(env["PODKIT_MANIFEST"]) if env.get("PODKIT_MANIFEST") else None)
        run_manifest(settings, manifest, phases, tuple(args.force))
        launch = ComfyLaunch.from_env(
            env,
            settings.state_dir / "comfyui",
            extra,
            host=args.listen or env.get("PODKIT_COMFY_LISTEN") or "0.0.0.0",  # noqa: S104 - behind RunPod's proxy
            port=args.port or int(env.get("PODKIT_COMFY_PORT") or 8188),
            own_dirs=False,
        )
    except PodKitError as e:
        print(f"podkit pod: {e}", file=sys.stderr, flush=True)  # noqa: T201
        return 2
    process = ComfyProcess(launch)
    process.start()
    _forward_signals(process)
    threading.Thread(target=_announce_ready, args=(process, phases), name="podkit-ready", daemon=True).start()
    code = process.wait()
    return 128 - code if code < 0 else code  # killed by signal N: 128 + N, as a shell reports it


def _announce_ready(process: ComfyProcess, phases: Phases) -> None:
    try:
        with phases.phase("comfyui start"):
            process.wait_ready(timeout=1800)
    except ComfyStartError as e:
        print(f"podkit: {e}", flush=True)  # noqa: T201
        return
    print(f"podkit: pod ready in {phases.total():.1f} s on {process.url}", flush=True)  # noqa: T201


def _forward_signals(process: ComfyProcess) -> None:
    def forward(signum: int, frame: FrameType | None) -> None:
        proc = process.proc
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signum)
            except ProcessLookupError:
                pass

    for sig in FORWARDED:
        signal.signal(sig, forward)
