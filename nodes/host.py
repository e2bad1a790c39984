"""Wiring into a running ComfyUI: services from ComfyUI's folders, routes, and events."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ..backends.monitor import Monitor, RssProbe
from ..server_routes import register
from ..services import Services, get_services
from .host_features import detect_host

logger = logging.getLogger(__name__)
_attached = False
_attach_lock = threading.Lock()


class PromptServerNotifier:
    """``podkit.*`` events to every open tab through ComfyUI's thread-safe ``send_sync``."""

    def emit(self, event: str, data: Mapping[str, object]) -> None:
        from server import PromptServer

        PromptServer.instance.send_sync(event, dict(data))


def services() -> Services:
    """The process-wide services, built from ComfyUI's folders and port on first use."""
    import folder_paths
    from comfy.cli_args import args

    return get_services(
        comfy_models_dir=Path(folder_paths.models_dir),
        comfy_user_dir=Path(folder_paths.get_user_directory()),
        port=getattr(args, "port", None),
    )


def comfy_queue_busy() -> bool:
    """True while ComfyUI runs or holds a prompt (an exclusive-GPU training waits for it)."""
    from server import PromptServer

    running, queued = PromptServer.instance.prompt_queue.get_current_queue_volatile()
    return bool(running or queued)


def comfy_queue_length() -> int:
    """Prompts running or waiting in ComfyUI's queue (health check, idle stop, metrics)."""
    from server import PromptServer

    return int(PromptServer.instance.prompt_queue.get_tasks_remaining())


def comfy_free_vram() -> None:
    """Ask ComfyUI's prompt worker to unload its models and free cached VRAM (what ``POST /free`` does)."""
    from server import PromptServer

    PromptServer.instance.prompt_queue.set_flag("unload_models", True)
    PromptServer.instance.prompt_queue.set_flag("free_memory", True)


def attach_to_comfyui() -> Services:
    """Build the services, route events to the browser and mount ``/podkit/`` routes (once)."""
    global _attached
    from server import PromptServer

    with _attach_lock:
        svc = services()
        if not _attached:
            svc.host = detect_host()
            logger.info(
                "PodKit %s on ComfyUI %s (frontend %s)",
                svc.version,
                svc.host.comfyui_version,
                svc.host.frontend_version,
            )
            svc.notifier.target = PromptServerNotifier()
            register(PromptServer.instance.routes, svc)
            register_model_folders(svc)
            svc.set_queue_length(comfy_queue_length)
            attach_monitor(svc.monitor, on_event=svc.idle.touch)
            # PODKIT_TRAINING_GPU_POLICY=exclusive sees ComfyUI's queue
            svc.training.attach_host(generation_busy=comfy_queue_busy, free_vram=comfy_free_vram)
            import comfy.samplers

            # the presets route validates the table against the same lists as the preset nodes
            svc.presets.set_vocabulary(comfy.samplers.KSampler.SAMPLERS, comfy.samplers.KSampler.SCHEDULERS)
            _attached = True
    return svc


async def attach_generation_cache(svc: Services) -> None:
    """Register the generation cache with ComfyUI's cache-provider API when the host has it."""
    import dataclasses

    from ..backends.decode_tiers import attach as attach_decode_tier
    from ..backends.gencache_store import FileIdentities
    from ..core.host import HostFeature
    from .generation_cache import register

    feature = svc.host.features.get("cache_provider")
    if svc.generation is None or feature is None or not feature.present or feature.used:
        return
    from server import PromptServer

    identities = FileIdentities(svc.settings.cache_dir / "identities")
    if not await register(svc.generation, identities, _running_prompt(PromptServer.instance)):
        return
    features = {**svc.host.features, "cache_provider": HostFeature(present=True, used=True)}
    svc.host = dataclasses.replace(svc.host, features=features)
    # the decode node's cache keeps its images in the generation cache (one store, cap and mirror),
    # and the provider's entry for a decode refers to that image instead of storing it twice
    attach_decode_tier(svc.decode_cache, svc.generation)
    logger.info("PodKit: generation cache on (%s)", svc.generation.cache.root)


def register_model_folders(svc: Services) -> list[str]:
    """Add the download manager's model folders to ComfyUI's search paths; returns those added.

    Downloads land in ``<models_dir>/<folder>/``; registered as extra paths (the folders exist, so
    ComfyUI's listing cache notices new files by the folders' mtimes) they show up in the loaders
    without a restart and without symlinks. When the models dir is ComfyUI's own, nothing is added.
    """
    import folder_paths

    added: list[str] = []
    for name, path in svc.downloads.model_folders().items():
        try:
            known = {os.path.realpath(p) for p in folder_paths.get_folder_paths(name)}
        except KeyError:
            known = set()
        if os.path.realpath(path) not in known:
            folder_paths.add_model_folder_path(name, str(path))
            added.append(name)
    if added:
        logger.info("PodKit: model folders under %s registered for %s", svc.downloads.root, ", ".join(added))
    return added


#: The execution events the performance monitor listens to.
MONITORED_EVENTS = frozenset(
    {
        "execution_start",
        "execution_cached",
        "executing",
        "executed",
        "execution_success",
        "execution_error",
        "execution_interrupted",
    }
)


class CudaRssProbe(RssProbe):
    """Per-prompt peaks: CUDA memory (``max_memory_allocated``, reset at start) and process RSS."""

    def reset(self) -> None:
        super().reset()
        import torch

        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()

    def peaks(self) -> tuple[int | None, int | None, int | None]:
        import torch

        ram = self.peak()
        if not torch.cuda.is_available():
            return None, None, ram
        device = torch.cuda.current_device()
        total = int(torch.cuda.get_device_properties(device).total_memory)
        return int(torch.cuda.max_memory_allocated(device)), total, ram


def _running_prompt(server: Any) -> Callable[[str], tuple[Mapping[str, Any], Mapping[str, Any]] | None]:
    """``prompt_of(prompt_id)``: (graph, extra_data) of the running prompt, from ComfyUI's queue
    (items are ``(number, prompt_id, prompt, extra_data, outputs, ...)``)."""

    def prompt_of(prompt_id: str) -> tuple[Mapping[str, Any], Mapping[str, Any]] | None:
        running, _queued = server.prompt_queue.get_current_queue_volatile()
        for item in running:
            if len(item) > 2 and item[1] == prompt_id and isinstance(item[2], Mapping):
                extra = item[3] if len(item) > 3 and isinstance(item[3], Mapping) else {}
                return item[2], extra
        return None

    return prompt_of


def attach_monitor(monitor: Monitor, on_event: Callable[[], None] | None = None) -> None:
    """Feed ComfyUI's execution events to ``monitor``.

    The executor reports progress only through ``PromptServer.send_sync`` (there is no listener
    API), so the server instance's ``send_sync`` is wrapped: the executor itself is untouched, the
    event still goes out first-hand, and the monitor sees it on the worker thread at the moment it
    is sent (what per-node timing needs). ComfyUI sends execution events only for prompts queued
    with a ``client_id`` (every browser tab and websocket API client does).
    """
    from server import PromptServer

    server = PromptServer.instance
    original = server.send_sync
    if getattr(original, "_podkit_monitor", False):
        return
    monitor.probe = CudaRssProbe()
    prompt_of = _running_prompt(server)

    def graph_of(prompt_id: str) -> Mapping[str, Any] | None:
        found = prompt_of(prompt_id)
        return found[0] if found is not None else None

    monitor.set_graphs(graph_of)

    def send_sync(event: Any, data: Any, sid: Any = None) -> None:
        if isinstance(event, str) and event in MONITORED_EVENTS:
            monitor.on_event(event, data)
            if on_event is not None:  # the idle watch: a prompt ran just now
                on_event()
        original(event, data, sid)

    send_sync._podkit_monitor = True  # type: ignore[attr-defined]
    server.send_sync = send_sync
