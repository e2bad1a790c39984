"""Sampler presets: the tier table as data, user overrides, and the time-budget ("auto") chooser.

The table maps (model family, tier) to a :class:`SamplerPreset`. Users override entries in a YAML or
JSON file (``PODKIT_PRESETS_FILE``, default ``<ComfyUI user dir>/podkit/presets.yaml``); the node
layer validates the merged table against ComfyUI's sampler and scheduler lists, which it passes in
(this module imports no ComfyUI).

The chooser predicts a generation's seconds from seconds-per-step measured on this machine (the
performance monitor's history) and picks the best tier that fits the budget.
"""

from __future__ import annotations

import itertools
import math
import statistics
import threading
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from enum import Enum
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

from .errors import ConfigError, InvalidRequest


class Tier(str, Enum):
    DRAFT = "draft"
    STANDARD = "standard"
    HIGH = "high"


#: Best first: the chooser walks this order and keeps the first tier that fits.
TIERS_BEST_FIRST: tuple[Tier, ...] = (Tier.HIGH, Tier.STANDARD, Tier.DRAFT)

TIER_LABELS: Mapping[Tier, str] = MappingProxyType(
    {Tier.DRAFT: "Draft", Tier.STANDARD: "Standard", Tier.HIGH: "High Quality"}
)


class Family(str, Enum):
    GENERIC = "generic"  # family unknown: the seed deployment's tiers
    SD15 = "sd15"
    SDXL = "sdxl"
    FLUX = "flux"


class Quality(str, Enum):
    """How much of the time budget the chooser may plan to use (headroom for run-to-run variance)."""

    QUALITY = "quality"  # best tier whose prediction fits the budget
    BALANCED = "balanced"  # keep 20 % headroom
    RELIABLE = "reliable"  # keep 40 % headroom


HEADROOM: Mapping[Quality, float] = MappingProxyType(
    {Quality.QUALITY: 1.0, Quality.BALANCED: 0.8, Quality.RELIABLE: 0.6}
)


@dataclass(frozen=True)
class SamplerPreset:
    steps: int
    cfg: float
    sampler: str
    scheduler: str
    width: int
    height: int
    #: FLUX-style distilled guidance, applied to the conditioning (None: the model has none)
    guidance: float | None = None

    def to_wire(self) -> dict[str, Any]:
        return asdict(self)


_SEED = {
    Tier.DRAFT: SamplerPreset(8, 5.0, "dpm_fast", "normal", 512, 512),
    Tier.STANDARD: SamplerPreset(15, 6.5, "dpmpp_2m", "karras", 768, 768),
    Tier.HIGH: SamplerPreset(25, 7.5, "dpmpp_2m_sde", "karras", 1024, 1024),
}


def _sized(base: Mapping[Tier, SamplerPreset], sizes: Mapping[Tier, int]) -> dict[Tier, SamplerPreset]:
    return {t: replace(p, width=sizes[t], height=sizes[t]) for t, p in base.items()}


DEFAULT_TABLE: Mapping[Family, Mapping[Tier, SamplerPreset]] = MappingProxyType(
    {
        # The seed deployment's tiers, for a model whose family is unknown.
        Family.GENERIC: MappingProxyType(dict(_SEED)),
        # SD1.5 is trained at 512²: the seed's sampler settings on a ladder that stays near it.
        Family.SD15: MappingProxyType(_sized(_SEED, {Tier.DRAFT: 512, Tier.STANDARD: 640, Tier.HIGH: 768})),
        # SDXL degrades below its native 1024² base, so only steps and sampler change per tier.
        Family.SDXL: MappingProxyType(
            _sized(_SEED, {Tier.DRAFT: 1024, Tier.STANDARD: 1024, Tier.HIGH: 1024})
        ),
        # FLUX (guidance-distilled): cfg 1 (no negative pass), guidance on the conditioning, euler/simple.
        Family.FLUX: MappingProxyType(
            {
                Tier.DRAFT: SamplerPreset(8, 1.0, "euler", "simple", 768, 768, guidance=3.5),
                Tier.STANDARD: SamplerPreset(15, 1.0, "euler", "simple", 1024, 1024, guidance=3.5),
                Tier.HIGH: SamplerPreset(25, 1.0, "euler", "simple", 1024, 1024, guidance=3.5),
            }
        ),
    }
)

Table = Mapping[Family, Mapping[Tier, SamplerPreset]]

_FIELDS = {f.name: f for f in fields(SamplerPreset)}
_LIMITS: Mapping[str, tuple[float, float]] = MappingProxyType(
    {
        "steps": (1, 10000),
        "cfg": (0.0, 100.0),
        "width": (16, 16384),
        "height": (16, 16384),
        "guidance": (0, 100),
    }
)


def _enum(kind: type[Enum], value: object, what: str) -> Any:
    try:
        return kind(value)
    except ValueError:
        names = ", ".join(str(m.value) for m in kind)
        raise ConfigError(
            f"{what}: unknown {kind.__name__.lower()} {value!r} (expected one of {names})"
        ) from None


def _field_value(name: str, value: object, where: str) -> object:
    if name in ("sampler", "scheduler"):
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{where}.{name}: must be a non-empty string")
        return value
    if name == "guidance" and value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{where}.{name}: must be a number, not {value!r}")
    lo, hi = _LIMITS[name]
    if not lo <= value <= hi or not math.isfinite(value):
        raise ConfigError(f"{where}.{name}: {value!r} is outside {lo:g}..{hi:g}")
    if name in ("steps", "width", "height"):
        if value != int(value):
            raise ConfigError(f"{where}.{name}: must be a whole number, not {value!r}")
        if name != "steps" and int(value) % 8:
            raise ConfigError(f"{where}.{name}: {int(value)} is not a multiple of 8 (the latent grid)")
        return int(value)
    return float(value)


def merge_overrides(base: Table, overrides: object, source: str) -> dict[Family, dict[Tier, SamplerPreset]]:
    """``base`` with the entries of ``overrides`` (``{family: {tier: {field: value}}}``) applied.

    Raises:
        ConfigError: an unknown family, tier or field, or a bad value; the message names the entry
            as ``<source>: <family>.<tier>.<field>``.
    """
    table = {fam: dict(tiers) for fam, tiers in base.items()}
    if overrides is None:
        return table
    if not isinstance(overrides, Mapping):
        raise ConfigError(f"{source}: the top level must map families to tiers")
    for fam_name, tiers in overrides.items():
        family = _enum(Family, fam_name, f"{source}: {fam_name}")
        if not isinstance(tiers, Mapping):
            raise ConfigError(f"{source}: {fam_name}: must map tiers to presets")
        for tier_name, entry in tiers.items():
            where = f"{source}: {fam_name}.{tier_name}"
            tier = _enum(Tier, tier_name, where)
            if not isinstance(entry, Mapping):
                raise ConfigError(f"{where}: must map fields to values")
            changes: dict[str, object] = {}
            for key, value in entry.items():
                if key not in _FIELDS:
                    raise ConfigError(f"{where}.{key}: unknown field (expected one of {', '.join(_FIELDS)})")
                changes[str(key)] = _field_value(str(key), value, where)
            table[family][tier] = replace(table[family][tier], **changes)  # type: ignore[arg-type]
    return table


def parse_overrides(text: str, source: str) -> object:
    """The override document in ``text`` (YAML, of which JSON is a subset)."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: not valid YAML/JSON: {e}") from e


def validate_table(table: Table, samplers: Collection[str], schedulers: Collection[str]) -> None:
    """Check every entry's sampler and scheduler against ComfyUI's lists.

    Raises:
        ConfigError: names the first bad entry, e.g. ``sdxl.high.sampler: 'dpmpp_9m' is not a
            ComfyUI sampler``.
    """
    for family, tiers in table.items():
        for tier, preset in tiers.items():
            where = f"{family.value}.{tier.value}"
            if preset.sampler not in samplers:
                raise ConfigError(f"{where}.sampler: {preset.sampler!r} is not a ComfyUI sampler")
            if preset.scheduler not in schedulers:
                raise ConfigError(f"{where}.scheduler: {preset.scheduler!r} is not a ComfyUI scheduler")


def table_to_wire(table: Table) -> dict[str, dict[str, dict[str, Any]]]:
    return {f.value: {t.value: p.to_wire() for t, p in tiers.items()} for f, tiers in table.items()}


class PresetBook:
    """The effective table: defaults plus the user's override file, re-read when the file changes.

    Thread-safe; the node layer hands in ComfyUI's sampler and scheduler lists with
    :meth:`set_vocabulary` so the table is validated the same way everywhere.
    """

    def __init__(self, path: Path | None, base: Table = DEFAULT_TABLE) -> None:
        self.path = path
        self.base = base
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._table: Table = base
        self._vocabulary: tuple[frozenset[str], frozenset[str]] | None = None

    def set_vocabulary(self, samplers: Iterable[str], schedulers: Iterable[str]) -> None:
        vocabulary = (frozenset(samplers), frozenset(schedulers))
        with self._lock:
            if vocabulary != self._vocabulary:
                self._vocabulary = vocabulary
                self._stamp = None  # validate again against the new lists

    def table(self) -> Table:
        """The merged, validated table.

        Raises:
            ConfigError: the override file is unreadable or invalid (names the entry).
        """
        with self._lock:
            stamp = self._file_stamp()
            if stamp != self._stamp or stamp == (-1, -1):
                table: Table = self.base
                if stamp is not None and self.path is not None:
                    try:
                        text = self.path.read_text(encoding="utf-8")
                    except (OSError, UnicodeDecodeError) as e:
                        raise ConfigError(f"{self.path}: cannot read the presets file: {e}") from e
                    table = merge_overrides(self.base, parse_overrides(text, str(self.path)), str(self.path))
                if self._vocabulary is not None:
                    try:
                        validate_table(table, *self._vocabulary)
                    except ConfigError as e:
                        where = f"{self.path}: " if stamp is not None else ""
                        raise ConfigError(f"{where}{e}") from e
                self._table, self._stamp = table, stamp
            return self._table

    def _file_stamp(self) -> tuple[int, int] | None:
        if self.path is None:
            return None
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None
        except OSError:
            return (-1, -1)  # unreadable: table() reports the error
        return (st.st_mtime_ns, st.st_size)

    def source(self) -> str | None:
        """The override file in effect, or None when only the defaults apply."""
        return str(self.path) if self._file_stamp() is not None else None

    def preset(self, family: Family, tier: Tier) -> SamplerPreset:
        return self.table()[family][tier]


# ------------------------------------------------------------------------------------------------
# Family detection from ComfyUI's model-config class names (comfy/supported_models.py).

_CONFIG_FAMILIES: Mapping[str, Family] = MappingProxyType(
    {"SD15": Family.SD15, "SDXL": Family.SDXL, "Flux": Family.FLUX}
)


def family_from_class_names(names: Sequence[str]) -> Family:
    """The family of a model whose config class (and its bases, most derived first) has ``names``.

    Subclasses (``FluxSchnell``, ``SSD1B``, ``SD15_instructpix2pix``) inherit their base's family;
    anything else (SD2, SD3, video models, ...) is :attr:`Family.GENERIC`.
    """
    for name in names:
        family = _CONFIG_FAMILIES.get(name)
        if family is not None:
            return family
    return Family.GENERIC


# ------------------------------------------------------------------------------------------------
# Time prediction and the budget chooser.

#: Relative cost of one step per megapixel, to carry a measurement of one family over to another.
FAMILY_COST: Mapping[Family, float] = MappingProxyType(
    {Family.SD15: 1.0, Family.GENERIC: 1.5, Family.SDXL: 2.5, Family.FLUX: 6.0}
)
#: Conservative defaults before anything was measured on this machine (a slow GPU).
DEFAULT_S_PER_STEP_MP = 1.0  # for SD1.5; other families scale by FAMILY_COST
DEFAULT_OVERHEAD_S = 5.0
#: Measurements older than this many (newest first) are ignored by the speed model.
MAX_SAMPLES = 200
#: Newest measurements of one size the step fit uses (pairwise slopes grow quadratically).
PAIR_SAMPLES = 40


@dataclass(frozen=True)
class SpeedSample:
    """One finished generation: how long its sampler took for how many steps at what size."""

    family: Family
    width: int
    height: int
    steps: int
    sampler_s: float
    wall_s: float

    @property
    def megapixels(self) -> float:
        return self.width * self.height / 1e6

    @property
    def s_per_step_mp(self) -> float:
        return self.sampler_s / self.steps / self.megapixels

    @property
    def overhead_s(self) -> float:
        """Everything but sampling: loading, text encoding, decoding, saving."""
        return max(0.0, self.wall_s - self.sampler_s)


def resolution_bucket(width: int, height: int) -> int:
    """The side of the square (a multiple of 128) closest to ``width × height`` pixels."""
    return max(128, round(math.sqrt(width * height) / 128) * 128)


@dataclass(frozen=True)
class Prediction:
    seconds: float
    basis: str  # how it was computed, for the "why"


class SpeedModel:
    """Seconds-per-step per megapixel and the fixed overhead, from measured generations."""

    def __init__(self, samples: Iterable[SpeedSample]) -> None:
        self.samples = [
            s for s in samples if s.steps > 0 and s.sampler_s > 0 and s.width > 0 and s.height > 0
        ][:MAX_SAMPLES]

    def predict(self, family: Family, width: int, height: int, steps: int) -> Prediction:
        mp = width * height / 1e6
        bucket = resolution_bucket(width, height)
        same = [s for s in self.samples if s.family == family]
        by_bucket: dict[int, list[SpeedSample]] = {}
        for s in same:
            by_bucket.setdefault(resolution_bucket(s.width, s.height), []).append(s)
        if bucket in by_bucket:
            per_step, overhead = self._fit(by_bucket[bucket])  # overhead includes the fixed part
            return Prediction(
                overhead + per_step * steps * mp / statistics.median(s.megapixels for s in by_bucket[bucket]),
                f"measured {len(by_bucket[bucket])} {family.value} run(s) at ~{bucket}²",
            )
        if same:
            # per-bucket medians (robust to a noisy run), then piecewise-linear in pixel count
            # between measured sizes; outside them, the nearest size scaled by pixel count
            points = sorted((b, *self._fit(group), statistics.median(s.megapixels for s in group))
                            for b, group in by_bucket.items())  # fmt: skip
            below = [p for p in points if p[3] < mp]
            above = [p for p in points if p[3] > mp]
            if below and above:
                lo, hi = below[-1], above[0]
                f = (mp - lo[3]) / (hi[3] - lo[3])
                per_step = lo[1] + f * (hi[1] - lo[1])
                overhead = lo[2] + f * (hi[2] - lo[2])
                basis = f"interpolated between measured {family.value} runs at ~{lo[0]}² and ~{hi[0]}²"
            else:
                near = below[-1] if below else above[0]
                per_step, overhead = near[1] * mp / near[3], near[2]
                basis = f"measured {len(same)} {family.value} run(s) at ~{near[0]}², scaled by pixel count"
            return Prediction(overhead + per_step * steps, basis)
        if self.samples:
            # the median family cost of what was measured stands in for their mix
            rate = statistics.median(s.s_per_step_mp for s in self.samples)
            overhead = statistics.median(s.overhead_s for s in self.samples)
            measured_cost = statistics.median(FAMILY_COST[s.family] for s in self.samples)
            rate *= FAMILY_COST[family] / measured_cost
            basis = (
                f"no {family.value} run measured; scaled from {len(self.samples)} other run(s) by family cost"
            )
        else:
            rate, overhead = DEFAULT_S_PER_STEP_MP * FAMILY_COST[family], DEFAULT_OVERHEAD_S
            basis = "no run measured on this machine yet: conservative default"
        return Prediction(overhead + rate * steps * mp, basis)

    @staticmethod
    def _fit(samples: Sequence[SpeedSample]) -> tuple[float, float]:
        """(seconds per step, fixed seconds) of samples of one size.

        With several step counts, sampler time = fixed + slope × steps by the Theil–Sen estimator
        (median of pairwise slopes: a noisy run cannot drag it), so a sampler call's fixed cost
        (moving the model to the device, preparing noise) is not billed per step; the fixed part
        joins the median overhead of the rest of the prompt. With one step count, seconds per step.
        """
        recent = samples[:PAIR_SAMPLES]
        overhead = statistics.median(s.overhead_s for s in recent)
        slopes = [
            (b.sampler_s - a.sampler_s) / (b.steps - a.steps)
            for a, b in itertools.combinations(recent, 2)
            if a.steps != b.steps
        ]
        if slopes and (slope := statistics.median(slopes)) > 0:
            fixed = statistics.median(s.sampler_s - slope * s.steps for s in recent)
            return slope, overhead + max(0.0, fixed)
        return statistics.median(s.sampler_s / s.steps for s in recent), overhead


@dataclass(frozen=True)
class Choice:
    tier: Tier
    preset: SamplerPreset
    predicted_s: float
    reason: str


def choose(
    tiers: Mapping[Tier, SamplerPreset],
    family: Family,
    budget_s: float,
    quality: Quality,
    speed: SpeedModel,
    *,
    steps_override: int | None = None,
) -> Choice:
    """The best tier whose predicted time fits ``budget_s`` times the preference's headroom.

    When nothing fits, the fastest tier, with a reason saying it exceeds the budget.

    Raises:
        InvalidRequest: a non-positive or non-finite budget.
    """
    if not math.isfinite(budget_s) or budget_s <= 0:
        raise InvalidRequest("time_budget_seconds must be a positive number")
    allowed = budget_s * HEADROOM[quality]
    predictions: dict[Tier, Prediction] = {}
    for tier in TIERS_BEST_FIRST:
        p = tiers[tier]
        predictions[tier] = pred = speed.predict(family, p.width, p.height, steps_override or p.steps)
        if pred.seconds <= allowed:
            return Choice(
                tier,
                p,
                pred.seconds,
                f"{TIER_LABELS[tier]}: predicted {pred.seconds:.1f} s fits {allowed:.1f} s "
                f"({quality.value} keeps {100 - HEADROOM[quality] * 100:.0f}% of {budget_s:g} s spare); "
                f"{pred.basis}",
            )
    fastest = min(predictions, key=lambda t: predictions[t].seconds)
    pred = predictions[fastest]
    return Choice(
        fastest,
        tiers[fastest],
        pred.seconds,
        f"no tier fits {allowed:.1f} s: {TIER_LABELS[fastest]} is the fastest at a predicted "
        f"{pred.seconds:.1f} s; {pred.basis}",
    )
