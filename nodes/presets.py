"""Sampler preset nodes: a tier (or a time budget) in, sampler settings or a sampled LATENT out.

Both nodes resolve through one function, :func:`resolve`: the preset table (defaults plus the
user's presets file, validated against ComfyUI's sampler and scheduler lists), the model family
(detected from the MODEL when asked to), and for tier ``auto`` the budget chooser fed with this
machine's measured seconds-per-step. The prediction is attached to the prompt's performance record,
so the monitor reports predicted against actual time.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ..core.presets import (
    Choice,
    Family,
    Quality,
    SamplerPreset,
    SpeedModel,
    Tier,
    choose,
    family_from_class_names,
    table_to_wire,
)
from ._comfy import CATEGORY, ComboListOutput, io
from ._host import services

AUTO = "auto"
TIER_OPTIONS = [AUTO, *(t.value for t in Tier)]
FAMILY_OPTIONS = [AUTO, Family.SD15.value, Family.SDXL.value, Family.FLUX.value, Family.GENERIC.value]


def _samplers() -> list[str]:
    import comfy.samplers

    return list(comfy.samplers.KSampler.SAMPLERS)


def _schedulers() -> list[str]:
    import comfy.samplers

    return list(comfy.samplers.KSampler.SCHEDULERS)


def detect_family(model: Any) -> Family:
    """The family of a ComfyUI MODEL from its model-config class (``comfy/supported_models.py``)."""
    config = getattr(getattr(model, "model", None), "model_config", None)
    if config is None:
        return Family.GENERIC
    return family_from_class_names([c.__name__ for c in type(config).__mro__])


@dataclass(frozen=True)
class Resolved:
    family: Family
    tier: Tier
    preset: SamplerPreset
    predicted_s: float
    reason: str

    def annotation(self) -> dict[str, Any]:
        p = self.preset
        return {
            "family": self.family.value,
            "tier": self.tier.value,
            "predicted_s": self.predicted_s,
            "steps": p.steps,
            "sampler": p.sampler,
            "width": p.width,
            "height": p.height,
        }


def _speed() -> SpeedModel:
    monitor = services().monitor
    return monitor.speed_model() if monitor is not None else SpeedModel(())


def resolve(model: Any, tier: str, family: str, time_budget_seconds: float, quality: str) -> Resolved:
    """The preset for these node inputs, with its predicted seconds and the reason.

    Raises:
        ConfigError: the presets file is invalid (the message names the entry).
        InvalidRequest: a bad budget for tier auto.
    """
    book = services().presets
    book.set_vocabulary(_samplers(), _schedulers())
    table = book.table()
    fam = detect_family(model) if family == AUTO else Family(family)
    tiers = table[fam]
    speed = _speed()
    if tier == AUTO:
        choice: Choice = choose(tiers, fam, float(time_budget_seconds), Quality(quality), speed)
        return Resolved(fam, choice.tier, choice.preset, choice.predicted_s, choice.reason)
    t = Tier(tier)
    p = tiers[t]
    pred = speed.predict(fam, p.width, p.height, p.steps)
    return Resolved(
        fam, t, p, pred.seconds, f"tier {t.value} chosen; predicted {pred.seconds:.1f} s ({pred.basis})"
    )


def _fingerprint(
    tier: str | None, family: str | None, time_budget_seconds: float | None, quality: str | None
) -> str:
    """Changes when what the node would choose changes (not with every new measurement)."""
    try:
        book = services().presets
        book.set_vocabulary(_samplers(), _schedulers())
        table = book.table()
        if tier != AUTO:
            return json.dumps([tier, table_to_wire(table)], sort_keys=True)
        speed = _speed()
        budget = float(time_budget_seconds or 0)
        picks = {
            f.value: choose(table[f], f, budget, Quality(quality or Quality.BALANCED.value), speed).tier.value
            for f in Family
        }
        return json.dumps([tier, family, picks, table_to_wire(table)], sort_keys=True)
    except Exception as e:  # the node reports the error when it runs
        return f"invalid:{e}"


def _annotate(node_id: str | None, resolved: Resolved) -> None:
    monitor = services().monitor
    if monitor is not None:
        monitor.annotate(node_id=node_id, **resolved.annotation())


def _show(node_id: str | None, resolved: Resolved) -> None:
    from server import PromptServer

    if node_id is not None:
        p = resolved.preset
        PromptServer.instance.send_progress_text(
            f"{resolved.family.value} {resolved.tier.value}: {p.steps} steps {p.sampler}/{p.scheduler} "
            f"cfg {p.cfg:g} {p.width}×{p.height}, ~{resolved.predicted_s:.1f} s\n{resolved.reason}",
            node_id,
        )


def _common_inputs() -> list[io.Input]:
    return [
        io.Combo.Input(
            "tier",
            options=TIER_OPTIONS,
            default=Tier.STANDARD.value,
            tooltip="draft / standard / high, or auto: the best tier whose predicted time fits "
            "time_budget_seconds (learnt from this machine's measured generations).",
        ),
        io.Float.Input(
            "time_budget_seconds",
            default=60.0,
            min=0.1,
            max=86400.0,
            step=0.5,
            tooltip="Tier auto only: the time one generation may take.",
        ),
        io.Combo.Input(
            "quality",
            options=[q.value for q in Quality],
            default=Quality.BALANCED.value,
            tooltip="Tier auto only: quality plans with the whole budget, balanced keeps 20% spare, "
            "reliable 40% (for run-to-run variance).",
        ),
        io.Combo.Input(
            "family",
            options=FAMILY_OPTIONS,
            default=AUTO,
            tooltip="Model family of the preset table; auto detects it from the model input "
            "(generic when no model is connected or the family is unknown).",
        ),
    ]


class _PresetInputs:
    """What both preset nodes share: re-run only when the preset they would choose changes."""

    @classmethod
    def fingerprint_inputs(
        cls,
        tier: str | None = None,
        time_budget_seconds: float | None = None,
        quality: str | None = None,
        family: str | None = None,
        **_: Any,
    ) -> str:
        return _fingerprint(tier, family, time_budget_seconds, quality)


class PodKitSamplerPreset(_PresetInputs, io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PodKitSamplerPreset",
            display_name="Sampler Preset (PodKit)",
            category=f"{CATEGORY}/sampling",
            description="Sampler settings of a quality tier for the model's family (SD1.5, SDXL, FLUX), "
            "or the best tier for a time budget. Connect the outputs to a KSampler and an Empty Latent "
            "Image. Tables can be overridden in the presets file (PODKIT_PRESETS_FILE).",
            inputs=[
                *_common_inputs(),
                io.Model.Input("model", optional=True, tooltip="Used only to detect the model family."),
            ],
            outputs=[
                io.Int.Output("steps", display_name="steps"),
                io.Float.Output("cfg", display_name="cfg"),
                ComboListOutput("sampler_name", display_name="sampler_name", options=_samplers()),
                ComboListOutput("scheduler", display_name="scheduler", options=_schedulers()),
                io.Int.Output("width", display_name="width"),
                io.Int.Output("height", display_name="height"),
                io.String.Output("tier_chosen", display_name="tier"),
                io.Float.Output("predicted_seconds", display_name="predicted_seconds"),
                io.Float.Output(
                    "guidance",
                    display_name="guidance",
                    tooltip="FLUX guidance for FluxGuidance (0 when the family has none).",
                ),
            ],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(
        cls,
        tier: str,
        time_budget_seconds: float,
        quality: str,
        family: str,
        model: Any = None,
    ) -> io.NodeOutput:
        resolved = resolve(model, tier, family, time_budget_seconds, quality)
        node_id = cls.hidden.unique_id if cls.hidden else None
        _annotate(node_id, resolved)
        _show(node_id, resolved)
        p = resolved.preset
        return io.NodeOutput(
            p.steps,
            p.cfg,
            p.sampler,
            p.scheduler,
            p.width,
            p.height,
            resolved.tier.value,
            round(resolved.predicted_s, 3),
            p.guidance or 0.0,
        )


class PodKitPresetSampler(_PresetInputs, io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PodKitPresetSampler",
            display_name="Preset Sampler (PodKit)",
            category=f"{CATEGORY}/sampling",
            description="KSampler driven by a quality tier or a time budget: steps, cfg, sampler, "
            "scheduler and (without a latent input) the size come from the preset of the model's family; "
            "FLUX guidance is set on the conditioning as FluxGuidance does.",
            inputs=[
                io.Model.Input("model"),
                io.Conditioning.Input("positive"),
                io.Conditioning.Input("negative"),
                io.Int.Input(
                    "seed",
                    default=0,
                    min=0,
                    max=0xFFFFFFFFFFFFFFFF,
                    control_after_generate=True,
                    tooltip="The random seed of the noise.",
                ),
                *_common_inputs(),
                io.Int.Input("batch_size", default=1, min=1, max=64, tooltip="Without a latent input."),
                io.Latent.Input(
                    "latent_image",
                    optional=True,
                    tooltip="Sample into this latent (img2img, or a size of your own); without it an "
                    "empty latent of the preset's size is used.",
                ),
                io.Float.Input("denoise", default=1.0, min=0.0, max=1.0, step=0.01, optional=True),
            ],
            outputs=[io.Latent.Output()],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(
        cls,
        model: Any,
        positive: Any,
        negative: Any,
        seed: int,
        tier: str,
        time_budget_seconds: float,
        quality: str,
        family: str,
        batch_size: int = 1,
        latent_image: Any = None,
        denoise: float = 1.0,
    ) -> io.NodeOutput:
        import comfy.model_management
        import node_helpers
        import torch

        import nodes

        resolved = resolve(model, tier, family, time_budget_seconds, quality)
        p = resolved.preset
        node_id = cls.hidden.unique_id if cls.hidden else None
        if latent_image is None:
            latent_image = {
                "samples": torch.zeros(
                    [batch_size, 4, p.height // 8, p.width // 8],
                    device=comfy.model_management.intermediate_device(),
                )
            }
            info = resolved
        else:
            shape = latent_image["samples"].shape
            width, height = int(shape[-1]) * 8, int(shape[-2]) * 8
            speed = _speed().predict(resolved.family, width, height, p.steps)
            sized = SamplerPreset(p.steps, p.cfg, p.sampler, p.scheduler, width, height, p.guidance)
            info = Resolved(resolved.family, resolved.tier, sized, speed.seconds, resolved.reason)
        if p.guidance is not None:
            positive = node_helpers.conditioning_set_values(positive, {"guidance": p.guidance})
        _annotate(node_id, info)
        _show(node_id, info)
        (out,) = nodes.common_ksampler(
            model,
            seed,
            p.steps,
            p.cfg,
            p.sampler,
            p.scheduler,
            positive,
            negative,
            latent_image,
            denoise=denoise,
        )
        return io.NodeOutput(out)
