"""Sampler preset nodes: a tier (or a time budget) in, sampler settings or a sampled LATENT out.

Both nodes resolve through one function, :func:`resolve`: the preset table (defaults plus the
user's presets file, validated against ComfyUI's sampler and scheduler lists), the model family
(detected from the MODEL when asked to), and for tier ``auto`` the budget chooser fed with this
machine's measured generations (:mod:`podkit.core.speed`; how many model evaluations a sampler makes
is counted with ComfyUI's own sampler functions, :class:`SamplerEvaluations`). The prediction is
attached to the prompt's performance record, so the monitor reports predicted against actual time.
"""

from __future__ import annotations

import json
import logging
import threading
import warnings
from dataclasses import dataclass, replace
from typing import Any

from ..core.presets import Family, Quality, SamplerPreset, Tier, family_from_class_names, table_to_wire
from ..core.speed import Prediction, SpeedModel, choose, evaluations_by_name
from ._comfy import CATEGORY, ComboListOutput, io
from .host import services

logger = logging.getLogger(__name__)

AUTO = "auto"
TIER_OPTIONS = [AUTO, *(t.value for t in Tier)]
FAMILY_OPTIONS = [AUTO, Family.SD15.value, Family.SDXL.value, Family.FLUX.value, Family.GENERIC.value]


def _samplers() -> list[str]:
    import comfy.samplers

    return list(comfy.samplers.KSampler.SAMPLERS)


def _schedulers() -> list[str]:
    import comfy.samplers

    return list(comfy.samplers.KSampler.SCHEDULERS)


class SamplerEvaluations:
    """Model evaluations of ComfyUI's samplers per step count, counted once per sampler.

    Each sampler function runs twice (4 and 8 steps) on an 8×8 latent with a stand-in model that
    counts its calls, so two-stage solvers (heun, dpm_2, dpmpp_sde, ...) and samplers added later
    are priced by what they do, not by a list. A sampler that cannot run that way (a custom one
    that needs the real model) is priced by its name (:func:`evaluations_by_name`).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lines: dict[str, tuple[float, float] | None] = {}

    def __call__(self, sampler: str, steps: int) -> float:
        with self._lock:
            if sampler not in self._lines:
                self._lines[sampler] = _counted_line(sampler)
            line = self._lines[sampler]
        if line is None:
            return evaluations_by_name(sampler, steps)
        per_step, extra = line
        return max(1.0, per_step * steps + extra)


def _counted_line(sampler: str) -> tuple[float, float] | None:
    """(evaluations per step, extra evaluations) of ``sampler``, or None when it cannot be counted."""
    try:
        n4, n8 = _count_evaluations(sampler, 4), _count_evaluations(sampler, 8)
    except Exception as e:  # a sampler that needs more than the stand-in offers
        logger.debug("PodKit: cannot count the model evaluations of sampler %s: %s", sampler, e)
        return None
    if n4 < 1 or n8 < n4:
        return None
    per_step = (n8 - n4) / 4
    return per_step, n4 - 4 * per_step


def _count_evaluations(sampler: str, steps: int) -> int:
    """How often ComfyUI's ``sampler`` calls the model in ``steps`` steps (a stand-in model, on the CPU)."""
    import comfy.model_sampling
    import comfy.samplers
    import torch

    class Sampling(comfy.model_sampling.EPS, comfy.model_sampling.ModelSamplingDiscrete):  # type: ignore[misc]
        pass

    sampling = Sampling()

    class Patcher:
        model = sampling

        def get_model_object(self, name: str) -> Any:
            return sampling if name == "model_sampling" else None

    class Inner:
        model_sampling = sampling

        def scale_latent_inpaint(self, latent_image: Any, **_: Any) -> Any:
            return latent_image

    class StandIn:
        """What a sampler function sees of the CFG guider; denoises to x/2 and counts the calls."""

        cfg = 1.0
        inner_model = Inner()
        model_patcher = Patcher()
        calls = 0

        def __call__(self, x: Any, sigma: Any, model_options: Any = None, **_: Any) -> Any:
            self.calls += 1
            out = x * 0.5
            options = model_options or {}
            for fn in options.get("sampler_post_cfg_function", []):  # cfg++ samplers read uncond here
                out = fn({"denoised": out, "cond_denoised": out, "uncond_denoised": out, "model": self,
                          "uncond": None, "cond": None, "sigma": sigma, "model_options": options, "input": x,
                          "cond_scale": 1.0})  # fmt: skip
            return out

    stand_in = StandIn()
    with torch.random.fork_rng(devices=[]), torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sigmas = comfy.samplers.calculate_sigmas(sampling, "normal", steps)
        noise, latent = torch.randn(1, 4, 8, 8), torch.zeros(1, 4, 8, 8)
        extra = {"model_options": {}, "seed": 0}
        comfy.samplers.sampler_object(sampler).sample(
            stand_in, sigmas, extra, None, noise, latent, None, True
        )
    return stand_in.calls


#: The process's counts (a stable object: the monitor's speed model is cached per evaluations).
EVALUATIONS = SamplerEvaluations()


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
    preset: SamplerPreset  # its width and height: the size sampled
    prediction: Prediction
    reason: str
    batch: int | None = None  # None: not known here (the settings node; predicted as one image)

    @property
    def predicted_s(self) -> float:
        return self.prediction.seconds

    def annotation(self) -> dict[str, Any]:
        p = self.preset
        return {
            "family": self.family.value,
            "tier": self.tier.value,
            "predicted_s": self.prediction.seconds,
            "predicted_sampler_s": self.prediction.sampler_s,
            "estimating": self.prediction.estimating,
            "steps": p.steps,
            "sampler": p.sampler,
            "width": p.width,
            "height": p.height,
            "batch": self.batch,
        }


def _speed() -> SpeedModel:
    monitor = services().monitor
    return monitor.speed_model(EVALUATIONS) if monitor is not None else SpeedModel((), EVALUATIONS)


def resolve(
    model: Any,
    tier: str,
    family: str,
    time_budget_seconds: float,
    quality: str,
    *,
    size: tuple[int, int] | None = None,
    batch: int | None = None,
) -> Resolved:
    """The preset for these node inputs, with its predicted seconds and the reason.

    ``size`` (width, height) replaces the preset's (a latent of the user's own); ``batch`` images
    are sampled at once. Both go into the prediction.

    Raises:
        ConfigError: the presets file is invalid (the message names the entry).
        InvalidRequest: a bad budget for tier auto.
    """
    book = services().presets
    book.set_vocabulary(_samplers(), _schedulers())
    table = book.table()
    fam = detect_family(model) if family == AUTO else Family(family)
    tiers = {
        t: p if size is None else replace(p, width=size[0], height=size[1]) for t, p in table[fam].items()
    }
    speed = _speed()
    if tier == AUTO:
        choice = choose(tiers, fam, float(time_budget_seconds), Quality(quality), speed, batch=batch or 1)
        return Resolved(fam, choice.tier, choice.preset, choice.prediction, choice.reason, batch)
    t = Tier(tier)
    p = tiers[t]
    pred = speed.predict(fam, p.width, p.height, p.steps, p.sampler, batch or 1)
    reason = f"tier {t.value} chosen; predicted {pred.seconds:.1f} s ({pred.basis})"
    return Resolved(fam, t, p, pred, reason, batch)


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
        p, pred = resolved.preset, resolved.prediction
        batch = f" ×{resolved.batch}" if (resolved.batch or 1) > 1 else ""
        estimate = ", estimating" if pred.estimating else ""
        PromptServer.instance.send_progress_text(
            f"{resolved.family.value} {resolved.tier.value}: {p.steps} steps {p.sampler}/{p.scheduler} "
            f"cfg {p.cfg:g} {p.width}×{p.height}{batch}, ~{pred.seconds:.1f} s "
            f"(sampler ~{pred.sampler_s:.1f} s{estimate})\n{resolved.reason}",
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

        size = None
        if latent_image is not None:  # its size and batch are sampled, not the preset's
            shape = latent_image["samples"].shape
            size, batch_size = (int(shape[-1]) * 8, int(shape[-2]) * 8), int(shape[0])
        resolved = resolve(model, tier, family, time_budget_seconds, quality, size=size, batch=batch_size)
        p = resolved.preset
        node_id = cls.hidden.unique_id if cls.hidden else None
        if latent_image is None:
            latent_image = {
                "samples": torch.zeros(
                    [batch_size, 4, p.height // 8, p.width // 8],
                    device=comfy.model_management.intermediate_device(),
                )
            }
        if p.guidance is not None:
            positive = node_helpers.conditioning_set_values(positive, {"guidance": p.guidance})
        _annotate(node_id, resolved)
        _show(node_id, resolved)
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
