"""The status route: version, uptime, host, public settings, optional accelerations, a summary of the
outbox and of the LoRA listing. Open even with a token set: it never shows a secret, and with a
token set, a caller without it does not see the settings' folders either (paths are the token's)."""

from __future__ import annotations

import asyncio
import importlib.util
import sys
import time
from typing import TYPE_CHECKING, Any

from aiohttp import web

from ._common import bears_token

if TYPE_CHECKING:
    from ..services import Services


def accelerations() -> dict[str, Any]:
    """Optional accelerations present in this process (detected, never required or imported)."""
    info: dict[str, Any] = {
        "xformers": importlib.util.find_spec("xformers") is not None,
        "triton": importlib.util.find_spec("triton") is not None,
        "sageattention": importlib.util.find_spec("sageattention") is not None,
    }
    torch = sys.modules.get("torch")  # report on torch only if the host already imported it
    if torch is not None:
        info["torch"] = getattr(torch, "__version__", None)
        info["torch_compile"] = hasattr(torch, "compile") and info["triton"]
        try:
            cuda = bool(torch.cuda.is_available())
        except Exception:  # a broken driver must not break the status route
            cuda = False
        info["cuda"] = cuda
        if cuda:
            info["gpu"] = torch.cuda.get_device_name(0)
    return info


def public_settings(request: web.Request, services: Services) -> dict[str, object]:
    """The settings' public view; its folders (``*_dir``) only for a caller that bears the token."""
    view = services.settings.public_view()
    if bears_token(request, services.settings.api_token):
        return view
    return {k: v for k, v in view.items() if not k.endswith("_dir")}


async def status(request: web.Request, services: Services) -> web.Response:
    counts = await asyncio.to_thread(services.outbox.counts)
    listing = services.loras.snapshot()
    return web.json_response(
        {
            "name": "PodKit",
            "version": services.version,
            "uptime_s": round(time.time() - services.started_at, 1),
            "host": services.host.to_wire(),
            "settings": public_settings(request, services),
            "accelerations": accelerations(),
            "outbox": counts,
            "loras": {
                "count": len(listing.items),
                "fetched_at": listing.fetched_at,
                "error": listing.error,
            },
        }
    )
