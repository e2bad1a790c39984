"""PodKit R2 LoRA Loader: bucket → shared content-addressed cache → applied to MODEL/CLIP.

Unlike core ``LoraLoader`` it re-runs when the object in the bucket changes (the remote ETag is
the fingerprint), verifies the file before use, keeps loaded state dicts in a bounded RAM LRU
shared by every node, and fails with the LoRA's name when none of its keys match the model.
"""

from __future__ import annotations

import logging
from typing import Any

from ..core.errors import InvalidRequest, PodKitError
from ..core.loras import LocalLora
from ..core.objects import ObjectRef
from ._comfy import CATEGORY, io
from ._progress import ByteProgress, Every, say
from .host import services

logger = logging.getLogger(__name__)

PLACEHOLDER = "(no LoRA in the bucket yet — refresh, or use lora_uri)"


def _lora_options() -> list[str]:
    try:
        svc = services()
    except PodKitError:
        return [PLACEHOLDER]
    if svc.settings.api_token is not None:
        return [PLACEHOLDER]  # a protected bucket's listing must not appear in /object_info
    return svc.loras.cached_names() or [PLACEHOLDER]


def _name_input() -> io.Combo.Input:
    return io.Combo.Input(
        "lora_name",
        options=_lora_options(),
        remote=io.RemoteOptions(route="/podkit/loras/names", refresh_button=True),
        tooltip="LoRA in the configured LoRA bucket (R2_LORA_BUCKET). API clients may send any key or "
        "r2://bucket/key URI here.",
    )


def _uri_input() -> io.String.Input:
    return io.String.Input(
        "lora_uri",
        default="",
        optional=True,
        tooltip="Overrides lora_name when set: a key in the LoRA bucket, or r2://bucket/key / s3://bucket/key.",
    )


def _strength(name: str, what: str) -> io.Float.Input:
    return io.Float.Input(
        name,
        default=1.0,
        min=-10.0,
        max=10.0,
        step=0.01,
        tooltip=f"How strongly the LoRA modifies the {what}.",
    )


def _ref(lora_name: str, lora_uri: str | None) -> ObjectRef:
    text = (lora_uri or "").strip() or lora_name
    if text == PLACEHOLDER:
        raise InvalidRequest("lora_name: choose a LoRA from the bucket, or set lora_uri")
    return services().loras.resolve(text)


def _validate(lora_name: str, lora_uri: str | None) -> bool | str:
    try:
        _ref(lora_name, lora_uri)
    except PodKitError as e:
        return str(e)
    return True


def _fingerprint(lora_name: str | None, lora_uri: str | None) -> str:
    try:
        return services().loras.fingerprint(_ref(lora_name or "", lora_uri))
    except PodKitError as e:
        return f"invalid:{e}"


def _fetch(ref: ObjectRef) -> tuple[LocalLora, dict[str, Any]]:
    """Download (once) and load (once per RAM LRU) the LoRA's state dict, with node progress."""
    import comfy.utils

    svc = services()
    meta = svc.loras.head(ref)
    waiting = Every(1.0)

    def on_wait() -> None:
        if waiting.due():
            say(None, f"waiting for another worker to fetch {ref.name}")

    local = svc.loras.ensure_local(ref, meta=meta, on_bytes=ByteProgress(meta.size), on_wait=on_wait)

    def load() -> tuple[dict[str, Any], int]:
        with svc.cache.lease(local.key):
            sd = comfy.utils.load_torch_file(str(local.path), safe_load=True)
        return sd, _nbytes(sd)

    sd = svc.lora_ram.get_or_create(local.key.digest, load)
    return local, sd  # type: ignore[return-value]


def _nbytes(sd: dict[str, Any]) -> int:
    return sum(int(t.nbytes) for t in sd.values())


def _patches(local: LocalLora, sd: dict[str, Any], unet: Any, text: Any) -> dict[Any, Any]:
    """The LoRA's patches for this model and text encoder: matched against their key maps once,
    then served from ``services().lora_patches`` while the same model objects are in use."""
    import comfy.lora
    import comfy.lora_convert

    def build() -> tuple[dict[Any, Any], int]:
        key_map: dict[str, Any] = {}
        if unet is not None:
            key_map = comfy.lora.model_lora_keys_unet(unet, key_map)
        if text is not None:
            key_map = comfy.lora.model_lora_keys_clip(text, key_map)
        return comfy.lora.load_lora(comfy.lora_convert.convert_lora(sd), key_map), _nbytes(sd)

    return services().lora_patches.get_or_create(local.key.digest, unet, text, build)


def apply_lora(
    model: Any, clip: Any, ref: ObjectRef, strength_model: float, strength_clip: float
) -> tuple[Any, Any, str]:
    """Apply the LoRA exactly as ``comfy.sd.load_lora_for_models`` does, and count matches.

    Raises:
        InvalidRequest: none of the LoRA's keys match this model (names the LoRA).
    """
    local, sd = _fetch(ref)
    unet = model.model if model is not None else None
    text = clip.cond_stage_model if clip is not None else None
    patches = _patches(local, sd, unet, text)
    total = local.info.lora_module_count
    if not patches:
        raise InvalidRequest(
            f"LoRA {ref.uri}: none of its {total} modules match this model "
            "(wrong base model, or an unsupported key format)"
        )
    new_model = model.clone() if model is not None else None
    new_clip = clip.clone() if clip is not None else None
    applied: set[Any] = set()
    if new_model is not None:
        applied |= set(new_model.add_patches(patches, strength_model))
    if new_clip is not None:
        applied |= set(new_clip.add_patches(patches, strength_clip))
    report = f"{ref.name}: {len(applied)}/{total} LoRA modules applied"
    if len(applied) < total:
        logger.warning(
            "PodKit LoRA %s: %d of %d modules did not match the model", ref.uri, total - len(applied), total
        )
    return new_model, new_clip, report


class _BucketLora:
    """What both loaders share: the LoRA reference check and the remote-ETag fingerprint."""

    @classmethod
    def validate_inputs(cls, lora_name: str, lora_uri: str | None = None) -> bool | str:
        return _validate(lora_name, lora_uri)

    @classmethod
    def fingerprint_inputs(cls, lora_name: str | None = None, lora_uri: str | None = None, **_: Any) -> str:
        return _fingerprint(lora_name, lora_uri)


class PodKitR2LoraLoader(_BucketLora, io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PodKitR2LoraLoader",
            display_name="LoRA Loader (R2/S3)",
            category=f"{CATEGORY}/loaders",
            description="Loads a LoRA from the R2/S3 LoRA bucket through PodKit's shared cache and "
            "applies it to MODEL and CLIP. Re-runs automatically when the object in the bucket changes.",
            inputs=[
                io.Model.Input("model", tooltip="The diffusion model the LoRA is applied to."),
                io.Clip.Input("clip", tooltip="The CLIP model the LoRA is applied to."),
                _name_input(),
                _strength("strength_model", "diffusion model"),
                _strength("strength_clip", "CLIP model"),
                _uri_input(),
            ],
            outputs=[
                io.Model.Output(tooltip="The model with the LoRA applied."),
                io.Clip.Output(tooltip="The CLIP model with the LoRA applied."),
            ],
        )

    @classmethod
    def execute(
        cls,
        model: Any,
        clip: Any,
        lora_name: str,
        strength_model: float,
        strength_clip: float,
        lora_uri: str | None = None,
    ) -> io.NodeOutput:
        ref = _ref(lora_name, lora_uri)
        if strength_model == 0 and strength_clip == 0:
            return io.NodeOutput(model, clip)
        new_model, new_clip, report = apply_lora(model, clip, ref, strength_model, strength_clip)
        say(None, report)
        return io.NodeOutput(new_model, new_clip)


class PodKitR2LoraLoaderModelOnly(_BucketLora, io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PodKitR2LoraLoaderModelOnly",
            display_name="LoRA Loader Model Only (R2/S3)",
            category=f"{CATEGORY}/loaders",
            description="Like LoRA Loader (R2/S3), applied to the diffusion model only "
            "(FLUX LoRAs, for instance).",
            inputs=[
                io.Model.Input("model", tooltip="The diffusion model the LoRA is applied to."),
                _name_input(),
                _strength("strength_model", "diffusion model"),
                _uri_input(),
            ],
            outputs=[io.Model.Output(tooltip="The model with the LoRA applied.")],
        )

    @classmethod
    def execute(
        cls, model: Any, lora_name: str, strength_model: float, lora_uri: str | None = None
    ) -> io.NodeOutput:
        ref = _ref(lora_name, lora_uri)
        if strength_model == 0:
            return io.NodeOutput(model)
        new_model, _, report = apply_lora(model, None, ref, strength_model, 0.0)
        say(None, report)
        return io.NodeOutput(new_model)
