"""Wiring into a running ComfyUI: services from ComfyUI's folders, routes, and events."""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from pathlib import Path

from ..server_routes import register
from ..services import Services, get_services

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


def attach_to_comfyui() -> Services:
    """Build the services, route events to the browser and mount ``/podkit/`` routes (once)."""
    global _attached
    from server import PromptServer

    with _attach_lock:
        svc = services()
        if not _attached:
            svc.notifier.target = PromptServerNotifier()
            register(PromptServer.instance.routes, svc)
            _attached = True
    return svc
