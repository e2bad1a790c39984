"""``python <podkit> worker [runpod SDK flags]``: a RunPod Serverless worker built on the runpod SDK.

``PODKIT_WORKER_ROLE=inference`` (default): cold start (``runtime/cold_start.py``: the bootstrap
manifest ``PODKIT_MANIFEST`` when set, ComfyUI with PodKit from ``COMFYUI_PATH`` unless
``PODKIT_COMFY_URL`` names a running one, the warm-up workflow ``PODKIT_WARMUP_WORKFLOW``), then
jobs through :class:`~podkit.worker.inference.InferenceWorker`. ``training``: jobs through PodKit's
training service, no ComfyUI. The SDK's own flags pass through: ``--rp_serve_api``,
``--rp_api_port``, ``--rp_api_host`` (a local ``/run``, ``/runsync``, ``/status`` server) and
``--test_input '<json>'`` (one job, then exit: 0 when it succeeded, 1 when it failed).
"""

from __future__ import annotations

import logging
import os
import shlex
import socket
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..core.errors import ConfigError, PodKitError
from ..core.settings import Settings
from ..runtime.cold_start import ComfyHandle, Phases, run_manifest, start_comfy, warm_up
from ..services import Services, build_services

logger = logging.getLogger(__name__)
ROLES = ("inference", "training")


def worker_settings(env: Mapping[str, str]) -> Settings:
    """The worker's own settings: its state folder is not the one of the ComfyUI it starts."""
    base = env.get("PODKIT_INSTANCE_ID") or env.get("RUNPOD_POD_ID") or socket.gethostname() or "worker"
    return Settings.from_env({**env, "PODKIT_INSTANCE_ID": f"{base}-worker"})


def _number(env: Mapping[str, str], name: str, default: float) -> float:
    try:
        value = float(env.get(name) or default)
    except ValueError as e:
        raise ConfigError(f"{name} must be a number") from e
    if value <= 0:
        raise ConfigError(f"{name} must be positive")
    return value


def build_handler(
    role: str, env: Mapping[str, str], services: Services, phases: Phases, progress: Any
) -> tuple[Any, ComfyHandle | None, Any]:
    """(handler, ComfyUI handle or None, fitness check or None) for ``role``."""
    if role == "training":
        from .training import TrainingWorker

        if services.settings.ai_toolkit_dir is None:
            raise ConfigError("the training role needs ai-toolkit (PODKIT_AI_TOOLKIT_DIR)")
        return TrainingWorker(services.training, progress=progress).handle, None, None
    from .inference import InferenceWorker
    from .templates import TemplateLibrary

    settings = services.settings
    manifest = env.get("PODKIT_MANIFEST", "").strip()
    run_manifest(settings, Path(manifest) if manifest else None, phases)
    comfy = start_comfy(env, settings, phases, tuple(shlex.split(env.get("PODKIT_COMFY_ARGS", ""))))
    try:
        warm_up(comfy, env.get("PODKIT_WARMUP_WORKFLOW"), phases)
        folder = env.get("PODKIT_TEMPLATES_DIR") or (
            str(settings.volume_dir / "podkit" / "templates") if settings.volume_dir else ""
        )
        worker = InferenceWorker(
            services,
            comfy,
            TemplateLibrary(Path(folder) if folder else None, services.store, settings.lora_bucket),
            progress=progress,
            max_timeout=_number(env, "PODKIT_WORKER_JOB_TIMEOUT", 600),
            max_base64_bytes=int(_number(env, "PODKIT_WORKER_BASE64_MAX_BYTES", 8 * 1024**2)),
        )
    except BaseException:
        comfy.stop()
        raise
    return worker.handle, comfy, worker.fit


def _fail(message: str, code: int) -> int:
    print(f"podkit worker: {message}", file=sys.stderr, flush=True)  # noqa: T201
    return code


def main(argv: Sequence[str], env: Mapping[str, str] | None = None) -> int:
    env = dict(os.environ if env is None else env)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    role = (env.get("PODKIT_WORKER_ROLE") or "inference").strip().lower()
    if role not in ROLES:
        return _fail(f"PODKIT_WORKER_ROLE={role!r} must be one of {', '.join(ROLES)}", 2)
    import runpod

    phases = Phases()
    comfy: ComfyHandle | None = None
    try:
        services = build_services(worker_settings(env))
    except PodKitError as e:
        return _fail(str(e), 2)
    services.start()
    try:
        try:
            handler, comfy, fitness = build_handler(
                role, env, services, phases, runpod.serverless.progress_update
            )
        except PodKitError as e:
            return _fail(str(e), 1)
        if fitness is not None:
            runpod.serverless.register_fitness_check(fitness)
        print(f"podkit: {role} worker ready in {phases.total():.1f} s", flush=True)  # noqa: T201
        sys.argv = [sys.argv[0], *argv]  # the SDK reads its flags from sys.argv
        runpod.serverless.start({"handler": handler, "return_aggregate_stream": False})
        return 0
    finally:
        if comfy is not None:
            comfy.stop()
        services.close()
