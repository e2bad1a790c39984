"""Fake safetensors files for the download tests: a real header naming the tensor keys (what
PodKit's classifier reads), followed by deterministic filler bytes."""

from __future__ import annotations

import hashlib
import json
import struct

LORA_KEYS = ["lora_unet_a.lora_down.weight", "lora_unet_a.lora_up.weight"]
VAE_KEYS = ["encoder.conv_in.weight", "decoder.conv_in.weight"]


def safetensors_bytes(keys: list[str], payload: int, seed: int = 0) -> bytes:
    """A file whose header names ``keys`` (what the classifier reads), followed by ``payload`` bytes."""
    header = {k: {"dtype": "U8", "shape": [1], "data_offsets": [i, i + 1]} for i, k in enumerate(keys)}
    raw = json.dumps(header).encode()
    body = hashlib.sha256(str(seed).encode()).digest() * (payload // 32 + 1)
    return struct.pack("<Q", len(raw)) + raw + body[:payload]
