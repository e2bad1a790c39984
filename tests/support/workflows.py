"""API-format workflow builders (plain dicts, as POSTed to ``/prompt``) for the tests/comfy tier.

    prompt = txt2img("tiny_sd15.safetensors", seed=1)                       # core nodes only
    prompt = txt2img(ckpt, seed=1, lora="tiny_lora_a.safetensors")          # + core LoraLoader
    prompt = txt2img(ckpt, seed=1,
                     lora_node=("PodKitR2LoraLoader", {"lora_name": "...", "strength_model": 1.0}),
                     save_node=("PodKitSaveToR2", {"key_prefix": "runs/x"}))

Node ids are fixed strings (see ``Ids``) so tests can address outputs (``result.images(Ids.SAVE)``)
and patch inputs (``prompt[Ids.SAMPLER]["inputs"]["steps"] = 3``). A swapped-in LoRA node gets the
``model``/``clip`` links and a swapped-in save node the ``images`` link automatically, unless its
inputs already name them.
"""

from __future__ import annotations

import copy
from typing import Any

# (class_type, inputs) or (class_type, inputs, {"model": out_idx, "clip": out_idx_or_None})
NodeSpec = tuple[str, dict[str, Any]] | tuple[str, dict[str, Any], dict[str, Any]]


class Ids:
    CKPT = "1"
    LORA = "2"  # the first LoRA node; chained ones get "21", "22", ...
    POSITIVE = "3"
    NEGATIVE = "4"
    LATENT = "5"
    SAMPLER = "6"
    DECODE = "7"
    SAVE = "8"
    VAE = "9"


def link(node_id: str, output: int = 0) -> list[Any]:
    return [str(node_id), output]


def node(class_type: str, **inputs: Any) -> dict[str, Any]:
    return {"class_type": class_type, "inputs": inputs}


def add_node(
    prompt: dict[str, Any], class_type: str, inputs: dict[str, Any], node_id: str | None = None
) -> str:
    """Add a node (id: next free integer unless given) and return its id."""
    if node_id is None:
        n = 100
        while str(n) in prompt:
            n += 1
        node_id = str(n)
    prompt[str(node_id)] = {"class_type": class_type, "inputs": dict(inputs)}
    return str(node_id)


def _spec(spec: NodeSpec) -> tuple[str, dict[str, Any], dict[str, Any]]:
    if len(spec) == 2:
        class_type, inputs = spec  # type: ignore[misc]
        outputs: dict[str, Any] = {}
    else:
        class_type, inputs, outputs = spec  # type: ignore[misc]
    return class_type, copy.deepcopy(dict(inputs)), dict(outputs)


def podkit_lora(name: str, strength: float = 1.0) -> NodeSpec:
    """PodKit's bucket LoRA loader in place of core ``LoraLoader`` (``txt2img(..., lora_node=...)``)."""
    return ("PodKitR2LoraLoader", {"lora_name": name, "strength_model": strength, "strength_clip": strength})


def txt2img(
    ckpt: str,
    *,
    seed: int,
    steps: int = 2,
    size: int = 64,
    width: int | None = None,
    height: int | None = None,
    batch_size: int = 1,
    cfg: float = 7.0,
    sampler_name: str = "euler",
    scheduler: str = "normal",
    denoise: float = 1.0,
    positive: str = "a photo of a tiny test cat",
    negative: str = "blurry",
    lora: str | None = None,
    strength_model: float = 1.0,
    strength_clip: float | None = None,
    lora_node: NodeSpec | list[NodeSpec] | None = None,
    vae: str | None = None,
    save_node: NodeSpec | None = None,
    filename_prefix: str = "podkit_test",
) -> dict[str, Any]:
    """CheckpointLoaderSimple → [LoRA node(s)] → 2× CLIPTextEncode → EmptyLatentImage → KSampler →
    VAEDecode (checkpoint VAE, or VAELoader ``vae``) → SaveImage (or ``save_node``).

    ``lora``: a file for the core ``LoraLoader`` (``strength_model`` / ``strength_clip``, the latter
    defaulting to the former). ``lora_node``: any node spec(s) instead, chained in order; the third
    tuple item maps ``model``/``clip`` to that node's output index (default 0 and 1; ``clip: None``
    for model-only loaders, which keep the previous CLIP)."""
    if lora is not None and lora_node is not None:
        raise ValueError("pass lora= or lora_node=, not both")
    p: dict[str, Any] = {}
    p[Ids.CKPT] = node("CheckpointLoaderSimple", ckpt_name=ckpt)
    model, clip, vae_link = link(Ids.CKPT, 0), link(Ids.CKPT, 1), link(Ids.CKPT, 2)

    specs: list[NodeSpec] = []
    if lora is not None:
        specs.append(
            (
                "LoraLoader",
                {
                    "lora_name": lora,
                    "strength_model": strength_model,
                    "strength_clip": strength_model if strength_clip is None else strength_clip,
                },
            )
        )
    elif lora_node is not None:
        specs.extend(lora_node if isinstance(lora_node, list) else [lora_node])
    for i, spec in enumerate(specs):
        class_type, inputs, outputs = _spec(spec)
        nid = Ids.LORA if i == 0 else f"{Ids.LORA}{i}"
        out_model = outputs.get("model", 0)
        out_clip = outputs.get("clip", 1)
        inputs.setdefault("model", model)
        if out_clip is not None:
            inputs.setdefault("clip", clip)
        p[nid] = {"class_type": class_type, "inputs": inputs}
        if out_model is not None:
            model = link(nid, out_model)
        if out_clip is not None:
            clip = link(nid, out_clip)

    p[Ids.POSITIVE] = node("CLIPTextEncode", text=positive, clip=clip)
    p[Ids.NEGATIVE] = node("CLIPTextEncode", text=negative, clip=clip)
    p[Ids.LATENT] = node(
        "EmptyLatentImage", width=width or size, height=height or size, batch_size=batch_size
    )
    p[Ids.SAMPLER] = node(
        "KSampler",
        model=model,
        seed=seed,
        steps=steps,
        cfg=cfg,
        sampler_name=sampler_name,
        scheduler=scheduler,
        positive=link(Ids.POSITIVE),
        negative=link(Ids.NEGATIVE),
        latent_image=link(Ids.LATENT),
        denoise=denoise,
    )
    if vae is not None:
        p[Ids.VAE] = node("VAELoader", vae_name=vae)
        vae_link = link(Ids.VAE, 0)
    p[Ids.DECODE] = node("VAEDecode", samples=link(Ids.SAMPLER), vae=vae_link)
    if save_node is None:
        p[Ids.SAVE] = node("SaveImage", images=link(Ids.DECODE), filename_prefix=filename_prefix)
    else:
        class_type, inputs, _ = _spec(save_node)
        inputs.setdefault("images", link(Ids.DECODE))
        p[Ids.SAVE] = {"class_type": class_type, "inputs": inputs}
    return p


def decode_empty_latent(vae: str, *, size: int = 64, save_node: NodeSpec | None = None) -> dict[str, Any]:
    """EmptyLatentImage → VAELoader + VAEDecode → SaveImage: a flat gray image without any sampling
    (cheapest workflow that exercises a save node)."""
    p: dict[str, Any] = {
        Ids.LATENT: node("EmptyLatentImage", width=size, height=size, batch_size=1),
        Ids.VAE: node("VAELoader", vae_name=vae),
        Ids.DECODE: node("VAEDecode", samples=link(Ids.LATENT), vae=link(Ids.VAE)),
    }
    if save_node is None:
        p[Ids.SAVE] = node("SaveImage", images=link(Ids.DECODE), filename_prefix="podkit_test")
    else:
        class_type, inputs, _ = _spec(save_node)
        inputs.setdefault("images", link(Ids.DECODE))
        p[Ids.SAVE] = {"class_type": class_type, "inputs": inputs}
    return p
