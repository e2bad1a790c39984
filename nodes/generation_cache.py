"""PodKit's generation cache as a ComfyUI cache provider (``comfy_api.latest.Caching``, 0.33+).

Feature-detected: on a host without ``Caching.CacheProvider`` nothing is registered and
``/podkit/status`` says so. On a lookup miss of ComfyUI's own cache, ComfyUI asks
:meth:`PodKitCacheProvider.on_lookup`; after it computed a node, :meth:`on_store` (a task on the
prompt's loop) publishes the outputs. Entries are scoped per prompt by the sha256 of every model
file the prompt names (computed once per file and volume). Output nodes, nodes marked
``NOT_IDEMPOTENT`` and outputs that cannot be stored exactly (MODEL, CLIP, VAE objects, …) are
never served from it. A prompt whose ``extra_data`` holds ``"podkit_generation_cache": false``
neither reads nor writes it (computed afresh; what a bench compares against).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ..backends.gencache_store import FileIdentities, GenerationStore
from ..core.gencache import BYPASS_KEY, Unsupported, entry_digest, model_scope

logger = logging.getLogger(__name__)
#: folder_paths kinds whose files decide what a node computes
MODEL_FOLDERS = (
    "checkpoints", "loras", "vae", "text_encoders", "diffusion_models", "clip_vision", "controlnet",
    "upscale_models", "style_models", "embeddings", "hypernetworks", "gligen", "model_patches",
)  # fmt: skip


def _us_since(started: float) -> int:
    return int((time.perf_counter() - started) * 1e6)


def scope_of(graph: Mapping[str, Any], identities: FileIdentities) -> str:
    """The model scope of a prompt: every string input naming a file of a model folder, by content."""
    import folder_paths

    found: dict[str, str] = {}
    for node in graph.values():
        inputs = node.get("inputs") if isinstance(node, Mapping) else None
        for value in (inputs or {}).values():
            if not isinstance(value, str) or not value or len(value) > 512:
                continue
            for folder in MODEL_FOLDERS:
                try:
                    path = folder_paths.get_full_path(folder, value)
                except KeyError:
                    continue
                if path:
                    found[f"{folder}/{value}"] = identities.sha256(Path(path))
                    break
    return model_scope(found)


def cacheable(class_type: str) -> bool:
    """Output nodes (they write files, their ``ui`` points at them) and nodes marked
    ``NOT_IDEMPOTENT`` are never served from the cache."""
    import nodes as comfy_nodes  # ComfyUI's top-level nodes.py, not this package

    cls = comfy_nodes.NODE_CLASS_MAPPINGS.get(class_type)
    return not (cls is None or getattr(cls, "OUTPUT_NODE", False) or getattr(cls, "NOT_IDEMPOTENT", False))


def make_provider(store: GenerationStore, identities: FileIdentities, prompt_of: Any) -> Any:
    """A ``Caching.CacheProvider`` subclass instance (built here: its base exists on new hosts only)."""
    from comfy_api.latest import Caching

    class PodKitCacheProvider(Caching.CacheProvider):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            self.scope: str | None = None
            self._writer = ThreadPoolExecutor(1, thread_name_prefix="podkit-gencache")
            self._pending: list[Future[None]] = []
            # ComfyUI asks for every node when the prompt starts and again, for each one it then
            # has to run, just before running it: a digest that missed is not looked up twice
            # (with a bucket mirror, each look-up is a request)
            self._missed: set[str] = set()

        def on_prompt_start(self, prompt_id: str) -> None:
            self._missed.clear()
            started = time.perf_counter()
            found = prompt_of(prompt_id)
            graph, extra = found if found is not None else (None, {})
            if extra.get(BYPASS_KEY) is False:
                store.stats.count_bypass()
                graph = None
            try:
                self.scope = scope_of(graph, identities) if graph is not None else None
            except Exception as e:  # an unreadable model file: no cache for this prompt
                logger.warning("generation cache off for prompt %s: %s", prompt_id, e)
                self.scope = None
            if self.scope is not None:
                store.stats.count_prompt(_us_since(started))

        def on_prompt_end(self, prompt_id: str) -> None:
            # The writes go on in the background: ComfyUI writes the prompt's history after this
            # returns, and a client waits for it. An entry not yet published is a miss, never wrong.
            self._pending = [f for f in self._pending if not f.done()]
            self.scope = None

        def should_cache(self, context: Any, value: Any = None) -> bool:
            if self.scope is None or not cacheable(context.class_type):
                return False
            if value is None:
                return True  # a lookup
            # A store. ComfyUI would run on_store as a task of the prompt's event loop, which ends
            # with the prompt and cancels what has not run yet (the last nodes' stores, typically).
            # So the entry is taken here, on the prompt thread (tensors copied, a few ms), and
            # written by PodKit's own writer thread; ComfyUI is told not to call on_store.
            self._store_now(context, value, self.scope)
            return False

        def _store_now(self, context: Any, value: Any, scope: str) -> None:
            digest = entry_digest(context.cache_key_hash, scope)
            started = time.perf_counter()
            try:
                entry = store.prepare(value.outputs, value.ui)
            except Unsupported:
                store.stats.count(context.class_type, skipped=1, store_us=_us_since(started))
                return
            store.stats.count(context.class_type, store_us=_us_since(started))

            def write() -> None:
                try:
                    size = store.write(digest, entry)
                except Exception as e:  # a full volume must not fail the prompt
                    store.stats.error()
                    logger.warning("generation cache: could not store %s: %s", context.class_type, e)
                    return
                store.stats.count(context.class_type, stores=1, bytes_stored=size)

            self._pending.append(self._writer.submit(write))

        async def on_lookup(self, context: Any) -> Any:
            scope = self.scope
            if scope is None:
                return None
            digest = entry_digest(context.cache_key_hash, scope)
            started = time.perf_counter()
            if digest in self._missed:  # asked again before running it: the same miss, not counted
                return None
            try:
                found = await asyncio.to_thread(store.load, digest)
            except Exception as e:  # a damaged entry is a miss
                store.stats.error()
                logger.warning("generation cache: entry %s unreadable: %s", digest[:12], e)
                found = None
            if found is None:
                self._missed.add(digest)
                store.stats.count(context.class_type, misses=1, miss_us=_us_since(started))
                return None
            outputs, ui, size = found
            store.stats.count(context.class_type, hits=1, bytes_served=size, hit_us=_us_since(started))
            return Caching.CacheValue(outputs=outputs, ui=ui)

        async def on_store(self, context: Any, value: Any) -> None:  # stores go through should_cache
            return None

    return PodKitCacheProvider()


async def register(store: GenerationStore, identities: FileIdentities, prompt_of: Any) -> bool:
    """Register the provider when the host has the API; True when it did."""
    try:
        from comfy_api.latest import Caching
    except ImportError:
        return False
    if not hasattr(Caching, "CacheProvider"):
        return False
    await Caching().register_provider(make_provider(store, identities, prompt_of))
    return True
