"""LoRA bucket routes: the listing (for the panel), the keys (for the loader node's combo), a re-list."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from aiohttp import web

from ._common import only_fields, require_json

if TYPE_CHECKING:
    from ..services import Services


async def listing(request: web.Request, services: Services) -> web.Response:
    answer = await asyncio.to_thread(services.loras.listing)
    return web.json_response({"bucket": services.settings.lora_bucket, **answer.to_wire()})


async def names(request: web.Request, services: Services) -> web.Response:
    """Keys only, for the loader node's remote combo (its refresh button re-lists soon)."""
    answer = await asyncio.to_thread(services.loras.listing, max_age=5.0)
    return web.json_response([m.ref.key for m in answer.items])


async def refresh(request: web.Request, services: Services) -> web.Response:
    only_fields(await require_json(request), set())
    answer = await asyncio.to_thread(services.loras.refresh_listing)
    return web.json_response({"bucket": services.settings.lora_bucket, **answer.to_wire()})
