"""Model-type classification from safetensors headers, and where each type is placed."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from podkit.core.errors import CorruptFile
from podkit.core.model_types import (
    FOLDER_TYPES,
    MODEL_TYPES,
    civitai_type,
    classify_keys,
    decide_type,
    folder_for,
    type_from_name,
)


def write_header(path: Path, keys: list[str], *, tail: bytes = b"") -> Path:
    header = {
        k: {"dtype": "F16", "shape": [1], "data_offsets": [2 * i, 2 * i + 2]} for i, k in enumerate(keys)
    }
    header["__metadata__"] = {"format": "pt"}  # type: ignore[assignment]
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + tail)
    return path


CASES = {
    "lora": ["lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight", "lora_te_text_model.alpha"],
    "peft_lora": ["transformer.single_transformer_blocks.0.attn.to_k.lora_A.weight"],
    "checkpoint": [
        "model.diffusion_model.input_blocks.0.0.weight",
        "first_stage_model.decoder.conv_in.weight",
        "cond_stage_model.transformer.text_model.embeddings.position_ids",
    ],
    "vae": ["encoder.conv_in.weight", "decoder.conv_in.weight", "quant_conv.weight"],
    "flux_transformer": [
        "double_blocks.0.img_attn.qkv.weight",
        "single_blocks.0.linear1.weight",
        "img_in.weight",
    ],
    "unet": ["input_blocks.0.0.weight", "middle_block.0.in_layers.0.weight", "output_blocks.0.0.weight"],
    "t5": ["encoder.block.0.layer.0.SelfAttention.q.weight", "shared.weight"],
    "clip_l": ["text_model.encoder.layers.0.mlp.fc1.weight", "text_model.embeddings.token_embedding.weight"],
    "clip_vision": ["vision_model.encoder.layers.0.mlp.fc1.weight"],
    "controlnet": ["control_model.input_blocks.0.0.weight", "control_model.zero_convs.0.0.weight"],
    "esrgan": ["model.0.weight", "model.1.sub.0.RDB1.conv1.0.weight"],
    "embedding": ["emb_params"],
}
EXPECTED = {
    "lora": "lora", "peft_lora": "lora", "checkpoint": "checkpoint", "vae": "vae",
    "flux_transformer": "diffusion_model", "unet": "diffusion_model", "t5": "text_encoder",
    "clip_l": "text_encoder", "clip_vision": "clip_vision", "controlnet": "controlnet",
    "esrgan": "upscale_model", "embedding": "embedding",
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(CASES))
def test_headers_tell_the_type(case: str, tmp_path: Path) -> None:
    assert classify_keys(CASES[case]).type == EXPECTED[case]
    # The same answer from a file whose data is not downloaded yet: only the header is read.
    path = write_header(tmp_path / "file.safetensors", CASES[case])
    decision = decide_type(explicit=None, path=path, filename="anything.safetensors")
    assert decision.type == EXPECTED[case]


def test_explicit_type_wins_then_header_then_source_then_name(tmp_path: Path) -> None:
    path = write_header(tmp_path / "x.safetensors", CASES["vae"])
    assert decide_type(explicit="lora", path=path, filename="ae.safetensors").type == "lora"
    # header beats a misleading name and a source label
    decided = decide_type(explicit=None, path=path, filename="my-lora.safetensors", source_hint="lora")
    assert decided.type == "vae"
    unknown = write_header(tmp_path / "y.safetensors", ["weird.tensor"])
    assert (
        decide_type(explicit=None, path=unknown, filename="y.safetensors", source_hint="lora").type == "lora"
    )
    assert decide_type(explicit=None, path=unknown, filename="t5xxl_fp16.safetensors").type == "text_encoder"
    nothing = decide_type(explicit=None, path=unknown, filename="y.safetensors")
    assert nothing.type is None and "give type" in nothing.reason


def test_a_broken_header_is_a_corrupt_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(struct.pack("<Q", 1000) + b"{not json")
    with pytest.raises(CorruptFile, match="bad.safetensors"):
        decide_type(explicit=None, path=bad, filename="bad.safetensors")
    # non-safetensors files are never parsed
    other = tmp_path / "model.ckpt"
    other.write_bytes(b"PK\x03\x04")
    assert decide_type(explicit=None, path=other, filename="model.ckpt").type == "checkpoint"


def test_name_hints_and_folders() -> None:
    assert type_from_name("flux1-dev.safetensors") == "diffusion_model"
    assert type_from_name("4x-UltraSharp.pth") == "upscale_model"
    assert type_from_name("ae.safetensors") == "vae"
    assert type_from_name("clip_l.safetensors") == "text_encoder"
    assert type_from_name("notes.txt") is None
    assert civitai_type("LORA") == "lora" and civitai_type("TextualInversion") == "embedding"
    assert civitai_type("Poses") is None
    assert folder_for("lora") == "loras" and FOLDER_TYPES["unet"] == "diffusion_model"
    assert all(FOLDER_TYPES[folder_for(t)] == t for t in MODEL_TYPES)
