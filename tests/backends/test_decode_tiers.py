"""The decode cache's disk tier in the generation cache (a ComfyUI with the cache-provider API): a
decoded image is one entry, exact; another process on the volume reads it; the provider's entry for
the decode node refers to it instead of holding a second copy, and is a miss once it is evicted."""

from __future__ import annotations

from pathlib import Path

import torch

from podkit.backends.decode_tiers import GenerationTier, attach, model_cache_tier
from podkit.backends.gencache_store import GenerationStore
from podkit.core.decode_cache import DecodeCache, decode_key
from podkit.core.gencache import decode_digest, entry_digest, model_scope
from podkit.core.model_cache import ModelCache

KEY = decode_key("latent", "vae", {"method": "banded"})
PROVIDER_DIGEST = entry_digest("c" * 64, model_scope({"checkpoints/x.safetensors": "aa"}))


def store(root: Path) -> GenerationStore:
    return GenerationStore(ModelCache(root, max_bytes=2**30))


def image(seed: int = 0) -> torch.Tensor:
    return torch.rand(1, 32, 48, 3, generator=torch.Generator().manual_seed(seed))


def test_a_decoded_image_is_a_generation_cache_entry_another_process_reads(tmp_path: Path) -> None:
    writer: DecodeCache[torch.Tensor] = DecodeCache(2**30)
    attach(writer, store(tmp_path))
    picture = image()
    writer.put(KEY, picture, int(picture.nbytes))
    assert writer.stats().disk_tier == "generation cache"

    reader: DecodeCache[torch.Tensor] = DecodeCache(2**30, GenerationTier(store(tmp_path)))
    found = reader.get(KEY)
    assert found is not None and found[1] == "disk"
    assert found[0].dtype == torch.float32 and torch.equal(found[0], picture)
    assert reader.get(decode_key("other", "vae", {"method": "banded"})) is None


def test_an_entry_that_is_not_an_image_is_a_counted_miss(tmp_path: Path) -> None:
    volume = store(tmp_path)
    volume.save(decode_digest(KEY), [torch.zeros(4, dtype=torch.int64)], None)
    cache: DecodeCache[torch.Tensor] = DecodeCache(2**30, GenerationTier(volume))
    assert cache.get(KEY) is None
    assert (cache.stats().disk_errors, cache.stats().misses) == (1, 1)


def test_the_providers_entry_refers_to_the_decoded_image(tmp_path: Path) -> None:
    volume = store(tmp_path)
    cache: DecodeCache[torch.Tensor] = DecodeCache(2**30)
    attach(cache, volume)
    returned = image(1)  # what the node returned; the cache keeps its own copy
    cache.put(KEY, returned.clone(), int(returned.nbytes))
    cache.note_output(returned, KEY)

    size = volume.save(PROVIDER_DIGEST, [[returned]], None)  # what the provider stores for the node
    assert size < 1024 < returned.nbytes  # a reference, not a second copy
    other = store(tmp_path)  # another pod on the volume
    found = other.load(PROVIDER_DIGEST)
    assert found is not None
    (images,) = found[0]
    assert torch.equal(images[0], returned) and found[2] >= returned.nbytes

    # a tensor no decode returned is copied as before
    assert volume.save(entry_digest("e" * 64, "s"), [[image(2)]], None) > returned.nbytes
    # an image not kept on the volume is copied too (no reference to an entry that is not there)
    orphan = image(3)
    cache.note_output(orphan, decode_key("gone", "vae", {"method": "banded"}))
    assert volume.save(entry_digest("f" * 64, "s"), [[orphan]], None) > orphan.nbytes

    # the image's entry is evicted: the provider's entry is a miss, never a wrong or broken value
    keep = volume.key(PROVIDER_DIGEST).digest
    volume.cache.execute(volume.cache.plan_eviction(0, protect=keep))
    assert not volume.holds(decode_digest(KEY)) and volume.holds(PROVIDER_DIGEST)
    assert other.load(PROVIDER_DIGEST) is None


def test_model_cache_tier_keeps_exact_float32(tmp_path: Path) -> None:
    picture = image(4)
    tier = model_cache_tier(ModelCache(tmp_path, max_bytes=2**30))
    tier.save(KEY, picture)
    found = tier.load(KEY)
    assert found is not None and torch.equal(found[0], picture) and found[1] == picture.nbytes
