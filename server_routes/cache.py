"""Cache routes: statistics of every PodKit cache, and the model cache's LRU eviction."""

from __future__ import annotations

import asyncio
from dataclasses import asdict
from typing import TYPE_CHECKING

from aiohttp import web

from ._common import get_bool, get_int, only_fields, require_json

if TYPE_CHECKING:
    from ..services import Services


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


async def stats(request: web.Request, services: Services) -> web.Response:
    """One entry per cache (a new cache adds its line here and its schema in openapi/cache.yaml)."""
    model_cache = await asyncio.to_thread(services.cache.stats)
    return web.json_response(
        {
            "model_cache": asdict(model_cache),
            "lora_ram": asdict(services.lora_ram.stats()),
            "lora_patches": services.lora_patches.stats().to_wire(),
            "decode": services.decode_cache.stats().to_wire(),
            "generation": await asyncio.to_thread(generation_stats, services),
            "cache_dir": str(services.cache.root),
        }
    )


async def evict(request: web.Request, services: Services) -> web.Response:
    """Plan (the default, a dry run) or carry out an eviction down to ``target_bytes``."""
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
