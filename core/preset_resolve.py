"""From the preset nodes' inputs to one preset, its predicted time and the reason.

The rules both preset nodes (and anything else choosing a preset) share: the effective table from
the :class:`~.presets.PresetBook` (validated against the host's sampler and scheduler lists), the
family (the user's, or the one detected from the model), a size and batch of the user's own, and
for tier ``auto`` the budget chooser fed with the measured :class:`~.speed.SpeedModel`. The node
layer only detects the family, counts sampler evaluations and talks to ComfyUI.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass, replace
from typing import Any

from .presets import Family, PresetBook, Quality, SamplerPreset, Tier, table_to_wire
from .speed import Prediction, SpeedModel, choose

#: The tier and family input value that asks PodKit to choose (by budget, by the model).
AUTO = "auto"

#: A host's sampler and scheduler names, which every preset must use.
Vocabulary = tuple[Collection[str], Collection[str]]


@dataclass(frozen=True)
class PresetInputs:
    """The preset nodes' shared inputs, as the user set them."""

    tier: str  # a Tier value, or AUTO
    family: str  # a Family value, or AUTO
    time_budget_s: float  # tier auto only
    quality: str  # a Quality value; tier auto only

    def family_for(self, detected: Family) -> Family:
        """The family chosen, ``detected`` (from the model) when the user left it on auto."""
        return detected if self.family == AUTO else Family(self.family)


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
        """The fields the monitor attaches to the prompt's record (predicted against actual)."""
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

    def describe(self) -> str:
        """Two lines for the user: what will be sampled and how long it should take, then why."""
        p, pred = self.preset, self.prediction
        batch = f" ×{self.batch}" if (self.batch or 1) > 1 else ""
        estimate = ", estimating" if pred.estimating else ""
        return (
            f"{self.family.value} {self.tier.value}: {p.steps} steps {p.sampler}/{p.scheduler} "
            f"cfg {p.cfg:g} {p.width}×{p.height}{batch}, ~{pred.seconds:.1f} s "
            f"(sampler ~{pred.sampler_s:.1f} s{estimate})\n{self.reason}"
        )


def resolve(
    book: PresetBook,
    inputs: PresetInputs,
    *,
    detected: Family,
    vocabulary: Vocabulary,
    speed: SpeedModel,
    size: tuple[int, int] | None = None,
    batch: int | None = None,
) -> Resolved:
    """The preset for these inputs, with its predicted seconds and the reason.

    ``detected``: the model's family (used when the family input is auto). ``size`` (width,
    height) replaces the preset's (a latent of the user's own); ``batch`` images are sampled at
    once. Both go into the prediction.

    Raises:
        ConfigError: the presets file is invalid (the message names the entry).
        InvalidRequest: a bad budget for tier auto.
    """
    book.set_vocabulary(*vocabulary)
    family = inputs.family_for(detected)
    tiers = {
        t: p if size is None else replace(p, width=size[0], height=size[1])
        for t, p in book.table()[family].items()
    }
    if inputs.tier == AUTO:
        quality = Quality(inputs.quality)
        choice = choose(tiers, family, float(inputs.time_budget_s), quality, speed, batch=batch or 1)
        return Resolved(family, choice.tier, choice.preset, choice.prediction, choice.reason, batch)
    tier = Tier(inputs.tier)
    p = tiers[tier]
    pred = speed.predict(family, p.width, p.height, p.steps, p.sampler, batch or 1)
    reason = f"tier {tier.value} chosen; predicted {pred.seconds:.1f} s ({pred.basis})"
    return Resolved(family, tier, p, pred, reason, batch)


def fingerprint(book: PresetBook, inputs: PresetInputs, *, vocabulary: Vocabulary, speed: SpeedModel) -> str:
    """Changes when what a preset node would choose changes, not with every new measurement.

    A fixed tier depends only on the table; tier auto on the tier the chooser picks for each family
    (the model, and so its family, is not known before the node runs).

    Raises:
        ConfigError, InvalidRequest, ValueError: as :func:`resolve` (the node reports them when it runs).
    """
    book.set_vocabulary(*vocabulary)
    table = book.table()
    if inputs.tier != AUTO:
        return json.dumps([inputs.tier, table_to_wire(table)], sort_keys=True)
    budget = float(inputs.time_budget_s or 0)
    quality = Quality(inputs.quality or Quality.BALANCED.value)
    picks = {f.value: choose(table[f], f, budget, quality, speed).tier.value for f in Family}
    return json.dumps([inputs.tier, inputs.family, picks, table_to_wire(table)], sort_keys=True)
