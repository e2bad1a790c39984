"""What kind of model a file is, and which ComfyUI model folder it belongs in.

The type comes, in order of trust, from: the request's explicit ``type``; the safetensors header
(tensor names are a reliable fingerprint of the architecture: kohya/PEFT LoRA keys, a full
checkpoint's ``model.diffusion_model.`` + ``first_stage_model.`` prefixes, a VAE's
``encoder.``/``decoder.`` pair, FLUX's ``double_blocks.`` …); the source's own label (CivitAI's
model type); and last the file name. Nothing here reads more than the header.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from .errors import CorruptFile
from .safetensors_info import MAX_HEADER_BYTES

#: Every model type PodKit places, and the ComfyUI folder (``folder_paths`` name) it goes to.
MODEL_FOLDERS: Mapping[str, str] = {
    "lora": "loras",
    "checkpoint": "checkpoints",
    "vae": "vae",
    "text_encoder": "text_encoders",
    "diffusion_model": "diffusion_models",
    "controlnet": "controlnet",
    "upscale_model": "upscale_models",
    "clip_vision": "clip_vision",
    "embedding": "embeddings",
}
MODEL_TYPES: tuple[str, ...] = tuple(MODEL_FOLDERS)
#: Folder name → type, with ComfyUI's legacy folder names (``clip``, ``unet``) as aliases.
FOLDER_TYPES: Mapping[str, str] = {
    **{folder: type_ for type_, folder in MODEL_FOLDERS.items()},
    "clip": "text_encoder",
    "unet": "diffusion_model",
}
#: CivitAI's ``model.type`` values → ours.
CIVITAI_TYPES: Mapping[str, str] = {
    "lora": "lora", "locon": "lora", "dora": "lora", "lycoris": "lora",
    "checkpoint": "checkpoint", "textualinversion": "embedding", "vae": "vae",
    "controlnet": "controlnet", "upscaler": "upscale_model",
}  # fmt: skip
SAFETENSORS_SUFFIXES = (".safetensors", ".sft")


@dataclass(frozen=True)
class TypeDecision:
    """The chosen type (None when nothing could tell) and why, for logs and job state."""

    type: str | None
    reason: str


def folder_for(model_type: str) -> str:
    """The ComfyUI folder name for ``model_type`` (``lora`` → ``loras``)."""
    return MODEL_FOLDERS[model_type]


def _has(keys: Iterable[str], *prefixes: str) -> bool:
    return any(k.startswith(prefixes) for k in keys)


def _contains(keys: Iterable[str], *fragments: str) -> bool:
    return any(f in k for k in keys for f in fragments)


_KOHYA_PREFIXES = ("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_", "lora_te3_", "lora_transformer_")
_LORA_FRAGMENTS = (
    ".lora_up.", ".lora_down.", "lora_A.", "lora_B.", ".lora.up.", ".lora.down.", "_lora.up.", "_lora.down.",
    ".lora_linear_layer.", ".hada_w1_a", ".lokr_w1", ".oft_blocks", ".lora_mid.",
)  # fmt: skip
_EMBEDDING_KEYS = frozenset({"emb_params", "clip_l", "clip_g", "string_to_param.*", "t5"})
_CKPT_OTHER_PREFIXES = (
    "first_stage_model.",
    "cond_stage_model.",
    "conditioner.",
    "text_encoders.",
    "vae.",
    "text_encoder.",
)
_CONTROLNET_PREFIXES = (
    "control_model.", "controlnet_", "controlnet_blocks.", "controlnet_down_blocks.", "controlnet_mid_block.",
    "controlnet_cond_embedding.", "input_hint_block.", "controlnet_x_embedder.", "pos_embed_input.",
)  # fmt: skip
_UNET_PREFIXES = ("input_blocks.", "middle_block.", "output_blocks.")
_DIFFUSERS_UNET = ("down_blocks.", "up_blocks.", "mid_block.")
_TRANSFORMER_PREFIXES = (
    "double_blocks.", "single_blocks.", "joint_blocks.", "transformer_blocks.", "single_transformer_blocks.",
    "img_in.", "x_embedder.", "patch_embedding.", "blocks.0.self_attn.", "layers.0.attention.",
    "noise_refiner.", "context_refiner.", "adaln_single.", "pos_embed.",
)  # fmt: skip
_T5_PREFIXES = ("encoder.block.", "shared.", "encoder.final_layer_norm", "decoder.block.")
_LLM_PREFIXES = ("model.layers.", "model.embed_tokens.", "layers.0.self_attn.", "embed_tokens.")
_CLIP_TEXT_PREFIXES = ("text_model.", "transformer.resblocks.", "token_embedding.", "text_projection")
_CLIP_VISION_PREFIXES = ("vision_model.", "visual.", "vision_encoder.", "image_encoder.")
_ESRGAN_RE = re.compile(r"^model\.\d+\.sub\.\d+\.RDB\d\.|^body\.\d+\.rdb\d\.|^RRDB_trunk\.")
_VAE_PREFIXES = ("encoder.", "decoder.", "quant_conv.", "post_quant_conv.", "first_stage_model.")


def classify_keys(keys: Iterable[str]) -> TypeDecision:
    """Classify a state dict by its tensor names (the safetensors header's keys)."""
    names = [k for k in keys if k != "__metadata__"]
    if not names:
        return TypeDecision(None, "no tensors")
    if _has(names, *_KOHYA_PREFIXES) or _contains(names, *_LORA_FRAGMENTS):
        return TypeDecision("lora", "LoRA/adapter tensor names")
    if len(names) <= 4 and all(k in _EMBEDDING_KEYS or k.startswith("string_to_param.") for k in names):
        return TypeDecision("embedding", "textual-inversion embedding tensors")
    if _has(names, "model.diffusion_model.") and _has(names, *_CKPT_OTHER_PREFIXES):
        return TypeDecision("checkpoint", "diffusion model with VAE/text encoder in one file")
    if _has(names, *_CONTROLNET_PREFIXES) or (
        _contains(names, "zero_convs.") and _has(names, *_UNET_PREFIXES)
    ):
        return TypeDecision("controlnet", "ControlNet tensor names")
    if _has(names, "model.diffusion_model.", *_UNET_PREFIXES, *_TRANSFORMER_PREFIXES) or (
        _has(names, *_DIFFUSERS_UNET) and _has(names, "conv_in.", "time_embedding.")
    ):
        return TypeDecision(
            "diffusion_model", "diffusion model (UNet/transformer) without VAE or text encoder"
        )
    if _has(names, *_T5_PREFIXES) and _contains(names, "SelfAttention", ".layer.0."):
        return TypeDecision("text_encoder", "T5-style text encoder")
    if _has(names, *_CLIP_VISION_PREFIXES):
        return TypeDecision("clip_vision", "CLIP/SigLIP vision tower")
    if _has(names, *_CLIP_TEXT_PREFIXES, *_LLM_PREFIXES, "text_encoders."):
        return TypeDecision("text_encoder", "CLIP/LLM text encoder")
    vae_keys = [k for k in names if k.startswith(_VAE_PREFIXES)]
    if vae_keys and len(vae_keys) >= 0.9 * len(names):
        has_pair = _has(vae_keys, "encoder.", "first_stage_model.encoder.") and _has(
            vae_keys, "decoder.", "first_stage_model.decoder."
        )
        if has_pair or _has(vae_keys, "decoder.", "first_stage_model.decoder."):
            return TypeDecision("vae", "VAE encoder/decoder")
    if any(_ESRGAN_RE.match(k) for k in names) or (
        _has(names, "conv_first.") and _has(names, "conv_last.", "conv_after_body.", "upsample.", "conv_up1.")
    ):
        return TypeDecision("upscale_model", "super-resolution (ESRGAN/SwinIR-style) network")
    return TypeDecision(None, "tensor names match no known model type")


_NAME_HINTS: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(p), t)
    for p, t in (
        (r"lora|locon|lycoris|dora", "lora"),
        (r"controlnet|control[-_]|t2i[-_]?adapter", "controlnet"),
        (r"clip[-_]?vision|clip[-_]vit|siglip|image[-_]encoder", "clip_vision"),
        (r"esrgan|swinir|(^|[^a-z0-9])[248]x|x[248]([^a-z0-9]|$)|upscal", "upscale_model"),
        (r"^ae\.|vae", "vae"),
        (
            r"t5xxl|umt5|clip[-_]?[lg]\b|clip[-_][lg][-_.]|text[-_]?encoder|llava|qwen.*vl|gemma",
            "text_encoder",
        ),
        (r"embedding|textual[-_]?inversion|(^|[^a-z])ti[-_]", "embedding"),
        (r"unet|transformer|diffusion|flux1?[-_]?(dev|schnell)|sd3|wan2", "diffusion_model"),
        (r"checkpoint|ckpt|sd[-_]?xl|sd[-_]?1\.?5|v1-5|pruned", "checkpoint"),
    )
)


def type_from_name(filename: str) -> str | None:
    """The model type a file name suggests, if any (the weakest hint; headers win)."""
    name = filename.replace("\\", "/").rsplit("/", 1)[-1].lower()
    if name.endswith(".ckpt"):
        return "checkpoint"
    if name.endswith((".pth", ".pt")) and re.search(r"esrgan|swinir|[248]x|x[248]|upscal", name):
        return "upscale_model"
    for pattern, type_ in _NAME_HINTS:
        if pattern.search(name):
            return type_
    return None


def civitai_type(model_type: str | None) -> str | None:
    """Our type for CivitAI's ``model.type`` label (``LORA``, ``Checkpoint``…), if it maps."""
    return CIVITAI_TYPES.get((model_type or "").replace(" ", "").lower())


def decide_type(
    *, explicit: str | None, path: Path | None, filename: str, source_hint: str | None = None
) -> TypeDecision:
    """Pick the model type for a downloaded (or partly downloaded) file.

    Args:
        explicit: the request's ``type``; always wins.
        path: the file on disk; a safetensors header is read when its name says safetensors.
            It may be a partial download as long as the header is complete.
        filename: the target file name (last hint).
        source_hint: the source's own label (CivitAI's model type), trusted below the header.

    Raises:
        CorruptFile: a safetensors file whose header cannot be read (truncated or not safetensors).
    """
    if explicit is not None:
        return TypeDecision(explicit, "type given in the request")
    if path is not None and filename.lower().endswith(SAFETENSORS_SUFFIXES):
        decision = classify_keys(_header_keys(path, filename))
        if decision.type is not None:
            return decision
    if source_hint is not None:
        return TypeDecision(source_hint, "type given by the source")
    by_name = type_from_name(filename)
    if by_name is not None:
        return TypeDecision(by_name, "guessed from the file name")
    return TypeDecision(None, "could not tell the model type; give type in the request")


def _header_keys(path: Path, label: str) -> list[str]:
    """Tensor names from ``path``'s safetensors header; the data after it need not be there yet."""
    with open(path, "rb") as f:
        head = f.read(8)
        n = struct.unpack("<Q", head)[0] if len(head) == 8 else 0
        raw = f.read(n) if 0 < n <= MAX_HEADER_BYTES else b""
    try:
        header = json.loads(raw.decode("utf-8")) if raw and len(raw) == n else None
    except (UnicodeDecodeError, ValueError):
        header = None
    if isinstance(header, dict) and len(header) > ("__metadata__" in header):
        return [str(k) for k in header if k != "__metadata__"]
    raise CorruptFile(f"{label}: not a safetensors file, or its header is truncated or invalid")
