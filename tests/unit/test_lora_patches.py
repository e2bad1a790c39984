"""The LoRA patch cache: bounded, keyed on object identity, never fooled by a reused id()."""

from __future__ import annotations

import gc
import weakref

from podkit.core.lora_patches import DEFAULT_MAX_ENTRIES, LoraPatchCache, LoraPatchStats


class Model:
    """Stands in for a ComfyUI model object (weakly referable, like a torch module)."""


def test_patches_are_kept_per_lora_and_model_objects() -> None:
    cache: LoraPatchCache[dict[str, int]] = LoraPatchCache()
    unet, text = Model(), Model()
    built: list[str] = []

    def create(name: str) -> tuple[dict[str, int], int]:
        built.append(name)
        return {name: 1}, 100

    assert cache.get_or_create("lora-a", unet, text, lambda: create("a")) == {"a": 1}
    assert cache.get_or_create("lora-a", unet, text, lambda: create("again")) == {"a": 1}
    assert cache.get_or_create("lora-a", unet, None, lambda: create("model only")) == {"model only": 1}
    assert cache.get_or_create("lora-b", unet, text, lambda: create("b")) == {"b": 1}
    assert built == ["a", "model only", "b"]
    assert cache.stats() == LoraPatchStats(
        entries=3, max_entries=DEFAULT_MAX_ENTRIES, bytes=300, hits=1, misses=3, evictions=0
    )
    assert cache.stats().to_wire()["bytes"] == 300


def test_it_is_bounded_and_evicts_the_least_recently_used() -> None:
    cache: LoraPatchCache[str] = LoraPatchCache(max_entries=2)
    unet = Model()
    cache.put("a", unet, None, "A", 10)
    cache.put("b", unet, None, "B", 10)
    assert cache.get("a", unet, None) == "A"  # a is now the most recent
    cache.put("c", unet, None, "C", 10)
    assert cache.get("b", unet, None) is None
    assert (cache.get("a", unet, None), cache.get("c", unet, None)) == ("A", "C")
    stats = cache.stats()
    assert (stats.entries, stats.bytes, stats.evictions) == (2, 20, 1)


def test_a_freed_model_is_dropped_and_its_id_never_matches_a_new_object() -> None:
    cache: LoraPatchCache[str] = LoraPatchCache()
    unet = Model()
    old_id = id(unet)
    cache.put("a", unet, None, "A", 10)
    del unet
    gc.collect()
    # a new object may get the freed one's id: it must not be served the old patches
    for _ in range(1000):
        fresh = Model()
        if id(fresh) == old_id:
            break
    assert cache.get("a", fresh, None) is None
    assert cache.stats().entries == 0, "an entry whose model is gone holds no LoRA tensors"


def test_it_does_not_keep_the_model_alive() -> None:
    cache: LoraPatchCache[str] = LoraPatchCache()
    unet = Model()
    cache.put("a", unet, None, "A", 10)
    collected: list[bool] = []
    weakref.finalize(unet, collected.append, True)
    del unet
    gc.collect()
    assert collected == [True]


def test_nothing_is_kept_without_a_model_or_for_objects_without_weak_references() -> None:
    cache: LoraPatchCache[str] = LoraPatchCache()
    cache.put("a", None, None, "A", 10)
    unreferable = (1, 2)  # tuples cannot be weakly referenced: their identity cannot be checked later
    cache.put("b", unreferable, None, "B", 10)
    assert cache.get("a", None, None) is None and cache.get("b", unreferable, None) is None
    assert cache.stats().entries == 0


def test_clear_forgets_everything() -> None:
    cache: LoraPatchCache[str] = LoraPatchCache()
    unet = Model()
    cache.put("a", unet, None, "A", 10)
    cache.clear()
    assert cache.get("a", unet, None) is None and cache.stats().entries == 0
