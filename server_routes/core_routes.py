"""Status, cache, LoRA listing, outbox and object routes."""

from __future__ import annotations

import asyncio
import importlib.util
import sys
import time
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from aiohttp import web

from ..core.errors import InvalidRequest, NotFound
from ..core.objects import ObjectRef
from ._common import (
    ROUTE_PREFIX,
    check_token,
    get_bool,
    get_int,
    json_errors,
    only_fields,
    query_int,
    require_json,
)

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


def generation_stats(services: Services) -> dict[str, object]:
    """The generation cache: on or off (and why), entries and bytes, hits/misses per node type."""
    store = services.generation
    if store is None:
        return {"enabled": False, "reason": "PODKIT_GENERATION_CACHE is off"}
    if not services.host.uses("cache_provider"):
        reason = "host too old" if services.host.kind == "comfyui" else "not inside ComfyUI"
        return {"enabled": False, "reason": reason, **store.stats.to_wire()}
    disk = store.cache.stats()
    sizes = {"entries": disk.entries, "bytes": disk.bytes_on_disk, "max_bytes": disk.max_bytes}
    return {"enabled": True, **sizes, **store.stats.to_wire()}


def register(routes: web.RouteTableDef, services: Services) -> None:
    settings = services.settings
    token = settings.api_token

    @routes.get(f"{ROUTE_PREFIX}/status")
    @json_errors
    async def status(request: web.Request) -> web.Response:
        counts = await asyncio.to_thread(services.outbox.counts)
        listing = services.loras.snapshot()
        return web.json_response(
            {
                "name": "PodKit",
                "version": services.version,
                "uptime_s": round(time.time() - services.started_at, 1),
                "host": services.host.to_wire(),
                "settings": settings.public_view(),
                "accelerations": accelerations(),
                "outbox": counts,
                "loras": {
                    "count": len(listing.items),
                    "fetched_at": listing.fetched_at,
                    "error": listing.error,
                },
            }
        )

    @routes.get(f"{ROUTE_PREFIX}/cache/stats")
    @json_errors
    async def cache_stats(request: web.Request) -> web.Response:
        check_token(request, token)  # cache folders are paths
        stats = await asyncio.to_thread(services.cache.stats)
        return web.json_response(
            {
                "model_cache": asdict(stats),
                "lora_ram": asdict(services.lora_ram.stats()),
                "decode": services.decode_cache.stats().to_wire(),
                "generation": await asyncio.to_thread(generation_stats, services),
                "cache_dir": str(services.cache.root),
            }
        )

    @routes.post(f"{ROUTE_PREFIX}/cache/evict")
    @json_errors
    async def cache_evict(request: web.Request) -> web.Response:
        check_token(request, token)
        body = await require_json(request)
        only_fields(body, {"dry_run", "target_bytes"})
        dry_run = get_bool(body, "dry_run", True)
        target = get_int(body, "target_bytes", lo=0, hi=2**62)

        def run() -> dict[str, object]:
            plan = services.cache.plan_eviction(target)
            if dry_run:
                return {"dry_run": True, "plan": plan.to_wire()}
            done = services.cache.execute(plan)
            return {"dry_run": False, "evicted": done.to_wire()}

        return web.json_response(await asyncio.to_thread(run))

    @routes.get(f"{ROUTE_PREFIX}/loras")
    @json_errors
    async def loras(request: web.Request) -> web.Response:
        check_token(request, token)  # a bucket listing is private data
        listing = await asyncio.to_thread(services.loras.listing)
        return web.json_response({"bucket": settings.lora_bucket, **listing.to_wire()})

    @routes.get(f"{ROUTE_PREFIX}/loras/names")
    @json_errors
    async def lora_names(request: web.Request) -> web.Response:
        """Keys only, for the loader node's remote combo (its refresh button re-lists soon)."""
        check_token(request, token)
        listing = await asyncio.to_thread(services.loras.listing, max_age=5.0)
        return web.json_response([m.ref.key for m in listing.items])

    @routes.post(f"{ROUTE_PREFIX}/loras/refresh")
    @json_errors
    async def loras_refresh(request: web.Request) -> web.Response:
        check_token(request, token)
        only_fields(await require_json(request), set())
        listing = await asyncio.to_thread(services.loras.refresh_listing)
        return web.json_response({"bucket": settings.lora_bucket, **listing.to_wire()})

    @routes.get(f"{ROUTE_PREFIX}/outbox")
    @json_errors
    async def outbox(request: web.Request) -> web.Response:
        check_token(request, token)  # bucket keys
        raw = request.query.get("status", "")
        statuses = [s for s in raw.split(",") if s] or None
        limit = query_int(request, "limit", 200, lo=1, hi=5000)
        items = await asyncio.to_thread(services.outbox.list, statuses, limit)
        counts = await asyncio.to_thread(services.outbox.counts)
        return web.json_response({"counts": counts, "items": [i.to_wire() for i in items]})

    @routes.post(f"{ROUTE_PREFIX}/outbox/retry")
    @json_errors
    async def outbox_retry(request: web.Request) -> web.Response:
        check_token(request, token)
        body = await require_json(request)
        only_fields(body, {"ids"})
        ids = body.get("ids")
        if ids is not None and (
            not isinstance(ids, list)
            or len(ids) > 10000
            or not all(isinstance(i, str) and len(i) <= 64 for i in ids)
        ):
            raise InvalidRequest("ids must be a list of outbox item ids")
        n = await asyncio.to_thread(services.outbox.retry, ids)
        return web.json_response({"requeued": n})

    @routes.get(ROUTE_PREFIX + "/objects/{bucket}/{key:[\\s\\S]+}")  # any key, so bad ones get a JSON 400
    @json_errors
    async def objects(request: web.Request) -> web.StreamResponse:
        check_token(request, token)
        ref = ObjectRef(request.match_info["bucket"], request.match_info["key"])
        if ref.bucket not in (settings.output_bucket, settings.lora_bucket):
            raise NotFound(f"bucket {ref.bucket!r} is not served here")
        path_of = getattr(services.store, "path_of", None)
        if path_of is None:  # S3/R2: send the client to a short-lived presigned URL
            url = await asyncio.to_thread(services.store.url_for, ref, ttl=300)
            if url is None:
                raise NotFound(f"{ref} has no URL")
            raise web.HTTPFound(url)
        path = await asyncio.to_thread(path_of, ref)
        return web.FileResponse(path, headers={"Cache-Control": "private, max-age=60"})
