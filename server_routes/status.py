"""The status route: version, uptime, host, public settings, optional accelerations, a summary of the
outbox and of the LoRA listing. Open even with a token set: it never shows a secret."""

from __future__ import annotations

import asyncio
import importlib.util
import sys
import time
from typing import TYPE_CHECKING, Any

from aiohttp import web

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


async def status(request: web.Request, services: Services) -> web.Response:
    counts = await asyncio.to_thread(services.outbox.counts)
    listing = services.loras.snapshot()
    return web.json_response(
        {
            "name": "PodKit",
            "version": services.version,
            "uptime_s": round(time.time() - services.started_at, 1),
            "host": services.host.to_wire(),
            "settings": services.settings.public_view(),
            "accelerations": accelerations(),
            "outbox": counts,
            "loras": {
                "count": len(listing.items),
                "fetched_at": listing.fetched_at,
                "error": listing.error,
            },
        }
    )
