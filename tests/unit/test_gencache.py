"""The generation cache's entry format: exact round trips of data, refusal of everything else."""

from __future__ import annotations

import pytest

from podkit.core.gencache import (
    GenerationStats,
    Unsupported,
    decode,
    encode,
    entry_digest,
    model_scope,
    read_skeleton,
    skeleton_text,
)


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
    stats.count("VAEDecode", stores=1, bytes_stored=5)
    wire = stats.to_wire()
    assert wire["nodes"]["KSampler"]["hits"] == 1 and wire["totals"]["bytes_stored"] == 5
