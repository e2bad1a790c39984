"""Sampler preset nodes: a tier (or a time budget) in, sampler settings or a sampled LATENT out.

The choice itself is :mod:`podkit.core.preset_resolve` (the preset table, the family, the budget
chooser fed with this machine's measured generations). What stays here touches ComfyUI: its sampler
and scheduler lists, the family of a MODEL, how many model evaluations each of ComfyUI's sampler
functions makes (:class:`SamplerEvaluations`), the monitor annotation and the sampling itself.
"""

from __future__ import annotations

import logging
import threading
import warnings
from typing import Any

from ..core.preset_resolve import AUTO, PresetInputs, Resolved, Vocabulary, fingerprint, resolve
from ..core.presets import Family, Quality, SamplerPreset, Tier, family_from_class_names
from ..core.speed import SpeedModel, evaluations_by_name
from ._comfy import CATEGORY, ComboListOutput, io
from ._progress import say
from .host import services

logger = logging.getLogger(__name__)

TIER_OPTIONS = [AUTO, *(t.value for t in Tier)]
FAMILY_OPTIONS = [AUTO, Family.SD15.value, Family.SDXL.value, Family.FLUX.value, Family.GENERIC.value]


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


def _vocabulary() -> Vocabulary:
    import comfy.samplers

    return comfy.samplers.KSampler.SAMPLERS, comfy.samplers.KSampler.SCHEDULERS


def _speed() -> SpeedModel:
    monitor = services().monitor
    return monitor.speed_model(EVALUATIONS) if monitor is not None else SpeedModel((), EVALUATIONS)


def _resolve(
    model: Any, inputs: PresetInputs, size: tuple[int, int] | None = None, batch: int | None = None
) -> Resolved:
    """:func:`~podkit.core.preset_resolve.resolve` with what ComfyUI knows: the MODEL's family,
    the sampler lists and the evaluation counts."""
    return resolve(
        services().presets,
        inputs,
        detected=detect_family(model),
        vocabulary=_vocabulary(),
        speed=_speed(),
        size=size,
        batch=batch,
    )


def _report(node_id: str | None, resolved: Resolved) -> None:
    """The choice to the prompt's performance record (predicted against actual) and to the user."""
    monitor = services().monitor
    if monitor is not None:
        monitor.annotate(node_id=node_id, **resolved.annotation())
    say(node_id, resolved.describe())


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
        inputs = PresetInputs(tier or "", family or AUTO, time_budget_seconds or 0.0, quality or "")
        try:
            return fingerprint(services().presets, inputs, vocabulary=_vocabulary(), speed=_speed())
        except Exception as e:  # the node reports the error when it runs
            return f"invalid:{e}"


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
                ComboListOutput("sampler_name", display_name="sampler_name", options=list(_vocabulary()[0])),
                ComboListOutput("scheduler", display_name="scheduler", options=list(_vocabulary()[1])),
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
        resolved = _resolve(model, PresetInputs(tier, family, time_budget_seconds, quality))
        _report(cls.hidden.unique_id if cls.hidden else None, resolved)
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
        size = None
        if latent_image is not None:  # its size and batch are sampled, not the preset's
            shape = latent_image["samples"].shape
            size, batch_size = (int(shape[-1]) * 8, int(shape[-2]) * 8), int(shape[0])
        inputs = PresetInputs(tier, family, time_budget_seconds, quality)
        resolved = _resolve(model, inputs, size=size, batch=batch_size)
        p = resolved.preset
        if latent_image is None:
            latent_image = _empty_latent(p, batch_size)
        _report(cls.hidden.unique_id if cls.hidden else None, resolved)
        return io.NodeOutput(_sample(model, seed, p, positive, negative, latent_image, denoise))


def _empty_latent(preset: SamplerPreset, batch: int) -> dict[str, Any]:
    """What core Empty Latent Image makes at the preset's size."""
    import comfy.model_management
    import torch

    device = comfy.model_management.intermediate_device()
    return {"samples": torch.zeros([batch, 4, preset.height // 8, preset.width // 8], device=device)}


def _sample(
    model: Any, seed: int, preset: SamplerPreset, positive: Any, negative: Any, latent: Any, denoise: float
) -> Any:
    """Core KSampler with the preset's settings; FLUX guidance set on the conditioning as
    FluxGuidance does."""
    import node_helpers

    import nodes as comfy_nodes  # ComfyUI's top-level nodes.py, not this package

    if preset.guidance is not None:
        positive = node_helpers.conditioning_set_values(positive, {"guidance": preset.guidance})
    (out,) = comfy_nodes.common_ksampler(
        model,
        seed,
        preset.steps,
        preset.cfg,
        preset.sampler,
        preset.scheduler,
        positive,
        negative,
        latent,
        denoise=denoise,
    )
    return out
