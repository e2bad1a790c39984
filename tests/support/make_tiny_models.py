"""Write tiny random-weight SD1.5 models for the ``tests/comfy`` tier.

Run it with the *ComfyUI* venv python (it imports ComfyUI's model classes to get every tensor shape):

    <comfy python> tests/support/make_tiny_models.py --out DIR [--seed N] [--comfyui PATH] [--no-verify]

It writes:

    DIR/checkpoints/tiny_sd15.safetensors    SD1.5-detected checkpoint, fp16, original LDM key layout:
                                             shrunk UNet (model_channels 320, channel_mult [1, 2], 1 res
                                             block, transformer depth 1) under ``model.diffusion_model.``,
                                             the full SD VAE under ``first_stage_model.`` and the full
                                             CLIP-L under ``cond_stage_model.transformer.text_model.``
    DIR/vae/tiny_sd15_vae.safetensors        the same VAE alone (``encoder.*``/``decoder.*``), fp16
    DIR/loras/tiny_lora_a.safetensors        kohya LoRA, rank 4, alpha 4: UNet attention/proj modules and
                                             CLIP q/v of all 12 layers
    DIR/loras/tiny_lora_b.safetensors        same modules, other random values
    DIR/loras/tiny_lora_nomatch.safetensors  kohya-shaped LoRA whose module names match nothing
    DIR/manifest.json                        seed, generator hash, size and sha256 of every file

Weights are N(0, 1/fan_in), norm scales 1, biases 0; every tensor is written explicitly (comfy.ops
layers skip init). Values are a pure function of (seed, tensor name), so a run is reproducible. When
the manifest matches (same seed, same version of this script, files present with their recorded
sizes) nothing is regenerated, and torch/ComfyUI are not even imported. A lock file serialises
concurrent runs on the same DIR; files are written to a temp folder and renamed into place.

Size: the checkpoint is ~600 MiB (UNet 107M + VAE 84M + CLIP-L 124M params, fp16). Neither the VAE
(architecture hard-coded in comfy.sd.VAE) nor CLIP-L (12 layers from comfy/sd1_clip_config.json;
missing layers would be left uninitialised) can be made smaller and still load cleanly.

This module can be imported without torch (the constants below are used by the test fixtures).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import shutil
import struct
import sys
import time
import zlib
from pathlib import Path
from typing import Any

CHECKPOINT = "tiny_sd15.safetensors"
VAE = "tiny_sd15_vae.safetensors"
LORA_A = "tiny_lora_a.safetensors"
LORA_B = "tiny_lora_b.safetensors"
LORA_NOMATCH = "tiny_lora_nomatch.safetensors"

FILES = {
    f"checkpoints/{CHECKPOINT}": "checkpoint",
    f"vae/{VAE}": "vae",
    f"loras/{LORA_A}": "lora_a",
    f"loras/{LORA_B}": "lora_b",
    f"loras/{LORA_NOMATCH}": "lora_nomatch",
}
MANIFEST = "manifest.json"
DEFAULT_SEED = 1234

LORA_RANK = 4
LORA_ALPHA = 4.0
# std of the lora_up entries; lora_down entries are N(0, 1/fan_in). With rank 4 and alpha/rank = 1 the
# patch has entries of std 2 * LORA_UP_STD / sqrt(fan_in), i.e. LORA_UP_STD=0.5 matches the base
# weights' own magnitude: large enough to change a 64x64, 2-step image visibly.
LORA_UP_STD = 0.5

# The tiny UNet config, exactly what comfy.model_detection.detect_unet_config returns for the keys we
# write (SD15.unet_config adds num_heads 8 / num_head_channels -1).
UNET_CONFIG: dict[str, Any] = {
    "use_checkpoint": False,
    "image_size": 32,
    "use_spatial_transformer": True,
    "legacy": False,
    "adm_in_channels": None,
    "in_channels": 4,
    "out_channels": 4,
    "model_channels": 320,
    "num_res_blocks": [1, 1],
    "transformer_depth": [1, 1],
    "transformer_depth_output": [1, 1, 1, 1],
    "channel_mult": [1, 2],
    "transformer_depth_middle": 1,
    "use_linear_in_transformer": False,
    "context_dim": 768,
    "use_temporal_resblock": False,
    "use_temporal_attention": False,
}
# comfy.sd.VAE's default SD1.x ddconfig (hard-coded there; only z_channels is read from the weights).
VAE_DDCONFIG: dict[str, Any] = {
    "double_z": True,
    "z_channels": 4,
    "resolution": 256,
    "in_channels": 3,
    "out_ch": 3,
    "ch": 128,
    "ch_mult": [1, 2, 4, 4],
    "num_res_blocks": 2,
    "attn_resolutions": [],
    "dropout": 0.0,
}
# UNet modules (suffix after the SpatialTransformer prefix) covered by the LoRAs.
LORA_UNET_SUFFIXES = (
    "proj_in",
    "transformer_blocks.0.attn1.to_q",
    "transformer_blocks.0.attn1.to_v",
    "transformer_blocks.0.attn2.to_k",
    "transformer_blocks.0.attn2.to_v",
    "transformer_blocks.0.ff.net.2",
    "proj_out",
)
CLIP_LAYERS = 12

log = logging.getLogger("make_tiny_models")


def script_digest() -> str:
    return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]


def manifest_matches(out: Path, seed: int) -> bool:
    """True when ``out`` already holds this generator's files for ``seed``."""
    try:
        manifest = json.loads((out / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    if manifest.get("seed") != seed or manifest.get("generator") != script_digest():
        return False
    files = manifest.get("files", {})
    if set(files) != set(FILES):
        return False
    for rel, info in files.items():
        try:
            if (out / rel).stat().st_size != info["bytes"]:
                return False
        except OSError:
            return False
    return True


@contextlib.contextmanager
def locked(out: Path):
    import fcntl

    out.mkdir(parents=True, exist_ok=True)
    with open(out / ".lock", "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------------------------------
# generation (needs torch + ComfyUI)


def _import_comfy(comfyui: Path) -> None:
    if str(comfyui) not in sys.path:
        sys.path.insert(0, str(comfyui))
    import comfy.cli_args  # noqa: I001 - order matters: args must be set before model_management loads

    comfy.cli_args.args.cpu = True
    import comfy.model_management  # noqa: F401
    import comfy.sd  # noqa: F401
    import comfy.sd1_clip  # noqa: F401
    import comfy.supported_models  # noqa: F401


def _shapes(comfyui: Path) -> dict[str, dict[str, tuple[int, ...]]]:
    """Tensor names and shapes of the three sub-models, built by ComfyUI itself on the meta device."""
    import torch

    _import_comfy(comfyui)
    import comfy.sd1_clip
    import comfy.supported_models
    from comfy.ldm.models.autoencoder import AutoencoderKL

    with torch.device("meta"):
        model_config = comfy.supported_models.SD15(dict(UNET_CONFIG))
        unet = model_config.get_model({}, device="meta").diffusion_model
        vae = AutoencoderKL(ddconfig=dict(VAE_DDCONFIG), embed_dim=4)
        clip = comfy.sd1_clip.SDClipModel(device="meta")
    unet_sd = {k: tuple(v.shape) for k, v in unet.state_dict().items()}
    vae_sd = {k: tuple(v.shape) for k, v in vae.state_dict().items()}
    # An original SD1.x checkpoint carries only text_model.* (no text_projection / logit_scale).
    prefix = "transformer.text_model."
    clip_sd = {k[len(prefix) :]: tuple(v.shape) for k, v in clip.state_dict().items() if k.startswith(prefix)}
    return {"unet": unet_sd, "vae": vae_sd, "clip": clip_sd}


def save_safetensors(tensors, path: Path, metadata: dict[str, str] | None = None) -> None:
    """Byte-reproducible safetensors writer: sorted names and metadata (safetensors' own ``save_file``
    orders ``__metadata__`` through a hash map, so identical content gave different bytes per run)."""
    import torch

    dtypes = {torch.float16: "F16", torch.float32: "F32", torch.bfloat16: "BF16", torch.int64: "I64"}
    header: dict[str, Any] = {}
    offset = 0
    names = sorted(tensors)
    for name in names:
        t = tensors[name]
        nbytes = t.numel() * t.element_size()
        header[name] = {
            "dtype": dtypes[t.dtype],
            "shape": list(t.shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    if metadata:
        header["__metadata__"] = dict(metadata)
    raw = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(raw)))
        fh.write(raw)
        for name in names:
            fh.write(tensors[name].contiguous().reshape(-1).view(torch.uint8).numpy().data)


def _tensor_seed(seed: int, name: str) -> int:
    return (seed * 1_000_003 + zlib.crc32(name.encode())) % (2**63 - 1)


def _randn(seed: int, name: str, shape: tuple[int, ...], std: float):
    import torch

    gen = torch.Generator(device="cpu")
    gen.manual_seed(_tensor_seed(seed, name))
    return torch.randn(shape, generator=gen, dtype=torch.float32).mul_(std)


def _init_tensor(seed: int, name: str, shape: tuple[int, ...]):
    """N(0, 1/fan_in) weights, ones for norm scales (1-D weights), zeros for biases; fp16."""
    import torch

    if name.endswith(".bias"):
        return torch.zeros(shape, dtype=torch.float16)
    if len(shape) <= 1:
        return torch.ones(shape, dtype=torch.float16)
    fan_in = 1
    for d in shape[1:]:
        fan_in *= d
    return _randn(seed, name, shape, fan_in**-0.5).to(torch.float16)


def build_checkpoint(shapes, seed: int):
    ckpt = {}
    vae = {}
    for k, shape in shapes["unet"].items():
        name = "model.diffusion_model." + k
        ckpt[name] = _init_tensor(seed, name, shape)
    for k, shape in shapes["vae"].items():
        name = "first_stage_model." + k
        ckpt[name] = vae[k] = _init_tensor(seed, name, shape)
    for k, shape in shapes["clip"].items():
        name = "cond_stage_model.transformer.text_model." + k
        ckpt[name] = _init_tensor(seed, name, shape)
    return ckpt, vae


def lora_modules(shapes) -> dict[str, tuple[int, ...]]:
    """kohya module name -> base weight shape, for the modules the LoRAs cover."""
    mods: dict[str, tuple[int, ...]] = {}
    unet = shapes["unet"]
    transformers = sorted(
        {k[: -len(".proj_in.weight")] for k in unet if k.endswith(".proj_in.weight")},
    )
    for prefix in transformers:
        for suffix in LORA_UNET_SUFFIXES:
            key = f"{prefix}.{suffix}"
            mods["lora_unet_" + key.replace(".", "_")] = unet[key + ".weight"]
    clip = shapes["clip"]
    for i in range(CLIP_LAYERS):
        for p in ("q", "v"):
            key = f"encoder.layers.{i}.self_attn.{p}_proj"
            mods[f"lora_te_text_model_{key.replace('.', '_')}"] = clip[key + ".weight"]
    return mods


def build_lora(modules: dict[str, tuple[int, ...]], seed: int, tag: str):
    import torch

    sd = {}
    for mod, shape in modules.items():
        out_f, in_f = shape[0], shape[1]
        tail = tuple(shape[2:])  # 1x1 conv (proj_in/proj_out with use_linear_in_transformer False)
        ones = (1,) * len(tail)
        sd[f"{mod}.lora_down.weight"] = _randn(
            seed, f"{tag}:{mod}.down", (LORA_RANK, in_f, *tail), in_f**-0.5
        ).to(torch.float16)
        sd[f"{mod}.lora_up.weight"] = _randn(
            seed, f"{tag}:{mod}.up", (out_f, LORA_RANK, *ones), LORA_UP_STD
        ).to(torch.float16)
        sd[f"{mod}.alpha"] = torch.tensor(LORA_ALPHA, dtype=torch.float16)
    return sd


def nomatch_modules() -> dict[str, tuple[int, ...]]:
    return {
        "lora_unet_no_such_block_0_attn1_to_q": (320, 320),
        "lora_unet_input_blocks_99_1_transformer_blocks_0_attn1_to_k": (320, 320),
        "lora_te_text_model_encoder_layers_99_self_attn_q_proj": (768, 768),
    }


def lora_metadata(name: str, seed: int) -> dict[str, str]:
    return {
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(LORA_RANK),
        "ss_network_alpha": str(int(LORA_ALPHA)),
        "ss_base_model_version": "sd_v1",
        "ss_output_name": name,
        "podkit_tiny_seed": str(seed),
    }


def verify(comfyui: Path, out: Path, n_lora_modules: int) -> None:
    """Load everything the way ComfyUI does; fail on detection errors, missing keys, unmapped LoRA keys."""
    import torch

    _import_comfy(comfyui)
    import comfy.lora
    import comfy.sd
    import comfy.utils

    records: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Collect(level=logging.WARNING)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(
            str(out / "checkpoints" / CHECKPOINT), output_vae=True, output_clip=True
        )
        detected = type(model.model.model_config).__name__
        if detected != "SD15":
            raise SystemExit(f"checkpoint detected as {detected}, expected SD15")
        if clip is None or vae is None:
            raise SystemExit("checkpoint loaded without CLIP or VAE")
        problems = [r.getMessage()[:300] for r in records]
        if problems:
            raise SystemExit("warnings while loading the checkpoint:\n" + "\n".join(problems))

        vae_sd = comfy.utils.load_torch_file(str(out / "vae" / VAE))
        comfy.sd.VAE(sd=vae_sd)
        if records:
            raise SystemExit("warnings while loading the VAE: " + records[0].getMessage()[:300])

        key_map = comfy.lora.model_lora_keys_unet(model.model, {})
        key_map = comfy.lora.model_lora_keys_clip(clip.cond_stage_model, key_map)
        for name, expected in ((LORA_A, n_lora_modules), (LORA_B, n_lora_modules), (LORA_NOMATCH, 0)):
            lora = comfy.utils.load_torch_file(str(out / "loras" / name))
            del records[:]
            patches = comfy.lora.load_lora(lora, key_map)
            not_loaded = [r for r in records if "lora key not loaded" in r.getMessage()]
            if len(patches) != expected or (expected and not_loaded):
                raise SystemExit(
                    f"{name}: {len(patches)} modules patched (expected {expected}), "
                    f"{len(not_loaded)} 'lora key not loaded' warnings"
                )
            if not expected and not not_loaded:
                raise SystemExit(f"{name}: expected 'lora key not loaded' warnings")
        del records[:]

        # Finite activations through the fp16 CLIP (the likeliest place for an overflow).
        with torch.inference_mode():
            tokens = clip.tokenize("a tiny random test prompt")
            cond = clip.encode_from_tokens(tokens)
        if not torch.isfinite(cond).all():
            raise SystemExit("CLIP encode produced non-finite values")
    finally:
        root.removeHandler(handler)


def generate(out: Path, seed: int, comfyui: Path, do_verify: bool) -> dict[str, Any]:
    t0 = time.monotonic()
    shapes = _shapes(comfyui)
    t_shapes = time.monotonic() - t0
    tmp = out / f".tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    for sub in ("checkpoints", "vae", "loras"):
        (tmp / sub).mkdir(parents=True)
    try:
        ckpt, vae = build_checkpoint(shapes, seed)
        meta = {"format": "pt", "podkit_tiny_seed": str(seed), "podkit_tiny_generator": script_digest()}
        save_safetensors(ckpt, tmp / "checkpoints" / CHECKPOINT, meta)
        save_safetensors(vae, tmp / "vae" / VAE, meta)
        n_params = sum(t.numel() for t in ckpt.values())
        del ckpt, vae
        modules = lora_modules(shapes)
        for name, tag, mods in (
            (LORA_A, "lora_a", modules),
            (LORA_B, "lora_b", modules),
            (LORA_NOMATCH, "lora_nomatch", nomatch_modules()),
        ):
            sd = build_lora(mods, seed, tag)
            save_safetensors(sd, tmp / "loras" / name, lora_metadata(Path(name).stem, seed))
        t_write = time.monotonic() - t0
        if do_verify:
            verify(comfyui, tmp, len(modules))
        t_verify = time.monotonic() - t0
        files = {}
        for rel in FILES:
            files[rel] = {"bytes": (tmp / rel).stat().st_size, "sha256": sha256_file(tmp / rel)}
        (out / MANIFEST).unlink(missing_ok=True)
        for rel in FILES:
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp / rel, out / rel)
        manifest = {
            "seed": seed,
            "generator": script_digest(),
            "files": files,
            "checkpoint_params": n_params,
            "lora_modules": len(modules),
            "verified": do_verify,
            "seconds": {
                "shapes": round(t_shapes, 2),
                "write": round(t_write, 2),
                "verify": round(t_verify - t_write, 2),
                "total": round(time.monotonic() - t0, 2),
            },
        }
        tmp_manifest = tmp / MANIFEST
        tmp_manifest.write_text(json.dumps(manifest, indent=2, sort_keys=True))
        os.replace(tmp_manifest, out / MANIFEST)
        return manifest
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def find_comfyui(arg: str | None) -> Path:
    cand = arg or os.environ.get("COMFYUI_PATH")
    if not cand:
        raise SystemExit("pass --comfyui PATH or set COMFYUI_PATH (a ComfyUI checkout)")
    path = Path(cand).expanduser().resolve()
    if not (path / "comfy" / "sd.py").is_file():
        raise SystemExit(f"{path} is not a ComfyUI checkout (no comfy/sd.py)")
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, type=Path, help="models dir (checkpoints/, loras/, vae/)")
    ap.add_argument("--seed", type=int, default=DEFAULT_SEED)
    ap.add_argument("--comfyui", help="ComfyUI checkout (default: $COMFYUI_PATH)")
    ap.add_argument("--no-verify", action="store_true", help="skip loading the result with ComfyUI")
    ap.add_argument("--force", action="store_true", help="regenerate even if the manifest matches")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = args.out.resolve()
    if not args.force and manifest_matches(out, args.seed):
        print(f"tiny models up to date in {out}")  # noqa: T201
        return 0
    comfyui = find_comfyui(args.comfyui)
    with locked(out):
        if not args.force and manifest_matches(out, args.seed):  # another process made them meanwhile
            print(f"tiny models up to date in {out}")  # noqa: T201
            return 0
        manifest = generate(out, args.seed, comfyui, not args.no_verify)
    sizes = ", ".join(f"{rel} {info['bytes'] / 2**20:.1f} MiB" for rel, info in manifest["files"].items())
    print(f"tiny models written to {out} in {manifest['seconds']['total']} s: {sizes}")  # noqa: T201
    return 0


if __name__ == "__main__":
    sys.exit(main())
