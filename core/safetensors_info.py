"""Reading and checking a safetensors header without torch (8-byte length + JSON header).

Used before a downloaded file is trusted: a truncated or corrupt file is reported as such, naming
the file, instead of failing later as a shape mismatch deep inside the sampler.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

from .errors import CorruptFile

MAX_HEADER_BYTES = 100 * 2**20
_DTYPE_SIZES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8,
}  # fmt: skip

#: Tensor-name fragments that mark a LoRA-style adapter (kohya, diffusers, PEFT, LyCORIS, ai-toolkit).
LORA_MARKERS = (
    ".lora_up.", ".lora_down.", "lora_A.", "lora_B.", "_lora.up.", "_lora.down.", ".lora.up.", ".lora.down.",
    ".lora_linear_layer.", ".hada_w1", ".lokr_w1", ".oft_blocks",
)  # fmt: skip
LORA_SUFFIXES = (".alpha", ".dora_scale", ".diff", ".diff_b")
#: Per-tensor suffixes after the module name (what ComfyUI's weight adapters read).
LORA_TENSOR_SUFFIXES = (
    ".lora_up.weight", ".lora_down.weight", ".lora_mid.weight", "_lora.up.weight", "_lora.down.weight",
    ".lora_B.weight", ".lora_A.weight", ".lora.up.weight", ".lora.down.weight", ".lora_B.default.weight",
    ".lora_A.default.weight", ".lora_linear_layer.up.weight", ".lora_linear_layer.down.weight", ".alpha",
    ".dora_scale", ".diff", ".diff_b", ".hada_w1_a", ".hada_w1_b", ".hada_w2_a", ".hada_w2_b", ".lokr_w1",
    ".lokr_w2", ".reshape_weight",
)  # fmt: skip


@dataclass(frozen=True)
class SafetensorsInfo:
    header_bytes: int
    tensors: dict[str, tuple[str, tuple[int, ...], int]]  # name -> (dtype, shape, nbytes)
    metadata: dict[str, str]
    data_bytes: int

    @property
    def lora_keys(self) -> list[str]:
        return [k for k in self.tensors if any(m in k for m in LORA_MARKERS) or k.endswith(LORA_SUFFIXES)]

    @property
    def lora_module_count(self) -> int:
        """How many modules (layers) the adapter patches: tensor names without their suffix."""
        modules = set()
        for k in self.tensors:
            suffix = next((s for s in LORA_TENSOR_SUFFIXES if k.endswith(s)), None)
            if suffix is not None:
                modules.add(k[: -len(suffix)])
        return len(modules) or len(self.tensors)

    @property
    def is_lora(self) -> bool:
        return bool(self.lora_keys)


def read_safetensors_info(path: Path, *, label: str | None = None) -> SafetensorsInfo:
    """Parse and check ``path``'s header against its size.

    Raises:
        CorruptFile: not a safetensors file, a truncated one, or an inconsistent header; the
            message names ``label`` (or the path).
    """
    name = label or str(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise CorruptFile(f"{name}: not a safetensors file (only {size} bytes)")
            (n,) = struct.unpack("<Q", head)
            if n == 0 or n > MAX_HEADER_BYTES or 8 + n > size:
                raise CorruptFile(
                    f"{name}: not a safetensors file or truncated (header length {n}, size {size})"
                )
            raw = f.read(n)
    except OSError as e:
        raise CorruptFile(f"{name}: cannot read ({e.strerror or e})") from e
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise CorruptFile(f"{name}: safetensors header is not valid JSON") from e
    if not isinstance(header, dict):
        raise CorruptFile(f"{name}: safetensors header is not a JSON object")
    meta_raw = header.pop("__metadata__", {}) or {}
    metadata = {str(k): str(v) for k, v in meta_raw.items()} if isinstance(meta_raw, dict) else {}
    tensors: dict[str, tuple[str, tuple[int, ...], int]] = {}
    end_max = 0
    data_len = size - 8 - n
    for tname, desc in header.items():
        try:
            dtype = desc["dtype"]
            shape = tuple(int(x) for x in desc["shape"])
            start, end = (int(x) for x in desc["data_offsets"])
        except (KeyError, TypeError, ValueError) as e:
            raise CorruptFile(f"{name}: tensor {tname!r} has a malformed header entry") from e
        if dtype not in _DTYPE_SIZES:
            raise CorruptFile(f"{name}: tensor {tname!r} has unknown dtype {dtype!r}")
        count = 1
        for dim in shape:
            count *= dim
        nbytes = count * _DTYPE_SIZES[dtype]
        if start < 0 or end < start or end - start != nbytes:
            raise CorruptFile(f"{name}: tensor {tname!r} offsets do not match its shape")
        if end > data_len:
            raise CorruptFile(f"{name}: truncated (tensor {tname!r} ends at {end}, data is {data_len} bytes)")
        end_max = max(end_max, end)
        tensors[tname] = (dtype, shape, nbytes)
    if not tensors:
        raise CorruptFile(f"{name}: safetensors file holds no tensors")
    return SafetensorsInfo(8 + n, tensors, metadata, end_max)
