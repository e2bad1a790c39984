"""Upload outbox routes: the items and counts per status, and putting failed uploads back in line."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from aiohttp import web

from ..core.errors import InvalidRequest
from ._common import only_fields, query_int, require_json

if TYPE_CHECKING:
    from ..services import Services

MAX_IDS = 10000
MAX_ID_LENGTH = 64


async def listing(request: web.Request, services: Services) -> web.Response:
    raw = request.query.get("status", "")
    statuses = [s for s in raw.split(",") if s] or None
    limit = query_int(request, "limit", 200, lo=1, hi=5000)
    items = await asyncio.to_thread(services.outbox.list, statuses, limit)
    counts = await asyncio.to_thread(services.outbox.counts)
    return web.json_response({"counts": counts, "items": [i.to_wire() for i in items]})


async def retry(request: web.Request, services: Services) -> web.Response:
    body = await require_json(request)
    only_fields(body, {"ids"})
    ids = body.get("ids")
    if ids is not None and (
        not isinstance(ids, list)
        or len(ids) > MAX_IDS
        or not all(isinstance(i, str) and len(i) <= MAX_ID_LENGTH for i in ids)
    ):
        raise InvalidRequest("ids must be a list of outbox item ids")
    n = await asyncio.to_thread(services.outbox.retry, ids)
    return web.json_response({"requeued": n})
