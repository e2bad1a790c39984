"""The object route: a file of the output or LoRA bucket, for the panel's previews and links."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from aiohttp import web

from ..core.errors import NotFound
from ..core.objects import ObjectRef

if TYPE_CHECKING:
    from ..services import Services

#: Seconds a presigned URL handed out by a redirect stays valid.
PRESIGN_TTL = 300


async def get_object(request: web.Request, services: Services) -> web.StreamResponse:
    """The local store's file, or a redirect to a short-lived presigned URL (S3/R2).

    Only the configured buckets are served; the key matches anything, so a bad one gets a JSON 400
    from ``ObjectRef`` rather than aiohttp's plain-text 404.
    """
    settings = services.settings
    ref = ObjectRef(request.match_info["bucket"], request.match_info["key"])
    if ref.bucket not in (settings.output_bucket, settings.lora_bucket):
        raise NotFound(f"bucket {ref.bucket!r} is not served here")
    path_of = getattr(services.store, "path_of", None)
    if path_of is None:
        url = await asyncio.to_thread(services.store.url_for, ref, ttl=PRESIGN_TTL)
        if url is None:
            raise NotFound(f"{ref} has no URL")
        raise web.HTTPFound(url)
    path = await asyncio.to_thread(path_of, ref)
    return web.FileResponse(path, headers={"Cache-Control": "private, max-age=60"})
