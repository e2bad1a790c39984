"""The generation cache's entry format: exact round trips of data, refusal of everything else."""

from __future__ import annotations

import pytest

from podkit.core.errors import ConfigError
from podkit.core.gencache import (
    GenerationStats,
    Unsupported,
    decode,
    decode_digest,
    encode,
    entry_digest,
    mirror_key,
    model_scope,
    read_skeleton,
    skeleton_text,
)
from podkit.core.objects import ObjectRef
from podkit.core.settings import Settings


class FakeTensor:
    """Stands for a torch tensor (core/ never imports torch)."""


def is_tensor(obj: object) -> bool:
    return isinstance(obj, FakeTensor)


def test_round_trip_keeps_types_and_shares_repeated_tensors() -> None:
    t1, t2 = FakeTensor(), FakeTensor()
    # a LATENT, a CONDITIONING ([tensor, {"pooled_output": tensor}]), strings, numbers, None
    value = [[{"samples": t1, "batch_index": [0, 1]}], [[t2, {"pooled_output": t1, "area": (8, 8, 0, 0)}]],
             ("text", 3, 2.5, True, None)]  # fmt: skip
    skeleton, tensors = encode(value, is_tensor)
    assert tensors == [t1, t2]  # t1 stored once
    back = decode(skeleton, {"t0": t1, "t1": t2})
    assert back == value and isinstance(back[1][0][1]["area"], tuple) and back[2][3] is True


def test_outputs_and_ui_through_the_metadata_text() -> None:
    t = FakeTensor()
    text, tensors = skeleton_text([[t]], {"text": ["hi"]}, is_tensor)
    assert tensors == [t]
    outputs, ui = read_skeleton(text, {"t0": t})
    assert outputs == [[t]] and ui == {"text": ["hi"]}


def test_a_known_tensor_is_stored_as_a_reference_to_its_entry() -> None:
    image, other = FakeTensor(), FakeTensor()
    held = {id(image): ("d" * 64, "t0")}
    text, tensors = skeleton_text([[image, other]], None, is_tensor, lambda t: held.get(id(t)))
    assert tensors == [other]  # the image is not copied
    seen: list[tuple[str, str]] = []

    def resolve(digest: str, name: str) -> object:
        seen.append((digest, name))
        return image

    outputs, _ = read_skeleton(text, {"t0": other}, resolve)
    assert outputs == [[image, other]] and seen == [("d" * 64, "t0")]
    with pytest.raises(ValueError, match="reference"):  # a reader that does not expect references
        read_skeleton(text, {"t0": other})


def test_decode_entries_have_their_own_digests() -> None:
    key = "a" * 64
    assert decode_digest(key) != decode_digest("b" * 64)
    assert decode_digest(key) != entry_digest(key, model_scope({}))


@pytest.mark.parametrize("value", [object(), {1: "x"}, float("nan"), {"m": lambda: 0}, {1.5}])
def test_anything_but_data_is_refused(value: object) -> None:
    with pytest.raises(Unsupported):
        encode([value], is_tensor)


def test_keys_depend_on_the_model_scope() -> None:
    a = model_scope({"checkpoints/x.safetensors": "aa", "loras/y.safetensors": "bb"})
    b = model_scope({"loras/y.safetensors": "bb", "checkpoints/x.safetensors": "aa"})
    c = model_scope({"checkpoints/x.safetensors": "aa", "loras/y.safetensors": "cc"})
    assert a == b != c
    assert entry_digest("k" * 64, a) != entry_digest("k" * 64, c)


def test_stats_per_node_type() -> None:
    stats = GenerationStats()
    stats.count("KSampler", hits=1, bytes_served=10)
    stats.count("KSampler", misses=1)
    stats.count("VAEDecode", stores=1, bytes_stored=5, store_us=300)
    stats.count("KSampler", store_us=200)
    wire = stats.to_wire()
    assert wire["nodes"]["KSampler"]["hits"] == 1 and wire["totals"]["bytes_stored"] == 5
    assert wire["totals"]["store_us"] == 500  # what taking entries cost the prompt thread, summed


def test_prompt_starts_join_the_totals() -> None:
    stats = GenerationStats()
    stats.count_prompt(1200)
    stats.count_prompt(800)
    totals = stats.to_wire()["totals"]
    assert (totals["prompts"], totals["scope_us"], totals["bypassed"]) == (2, 2000, 0)
    stats.count_bypass()
    assert stats.totals()["bypassed"] == 1


def test_bucket_counts_join_the_totals() -> None:
    stats = GenerationStats()
    stats.count_bucket("bucket_hits")
    stats.count_bucket("bucket_refused")
    totals = stats.to_wire()["totals"]
    assert totals["bucket_hits"] == 1 and totals["bucket_refused"] == 1 and totals["bucket_uploads"] == 0


def test_mirror_keys_fan_out_like_the_volume() -> None:
    digest = entry_digest("k" * 64, model_scope({}))
    assert mirror_key("/pods/gencache/", digest) == f"pods/gencache/{digest[:2]}/{digest}.safetensors"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("", None),
        ("r2://shared-cache/gen/", ObjectRef("shared-cache", "gen")),
        ("s3://shared-cache/a/b", ObjectRef("shared-cache", "a/b")),
        ("gencache", ObjectRef("out-bucket", "gencache")),  # a bare prefix: the output bucket
    ],
)
def test_the_bucket_prefix_setting(value: str, expected: ObjectRef | None) -> None:
    env = {"PODKIT_GENERATION_CACHE_BUCKET_PREFIX": value, "R2_OUTPUT_BUCKET": "out-bucket"}
    settings = Settings.from_env(env)
    assert settings.generation_cache_mirror == expected
    assert settings.public_view()["generation_cache_mirror"] == (expected.uri if expected else None)


@pytest.mark.parametrize("value", ["r2://shared-cache", "ftp://b/x", "r2://Bad_Bucket/x", "a/../b"])
def test_a_bad_bucket_prefix_is_a_config_error(value: str) -> None:
    with pytest.raises(ConfigError, match="PODKIT_GENERATION_CACHE_BUCKET_PREFIX"):
        Settings.from_env({"PODKIT_GENERATION_CACHE_BUCKET_PREFIX": value})
