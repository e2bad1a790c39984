"""Sampler presets: the tier table as data, user overrides, and model-family detection.

The table maps (model family, tier) to a :class:`SamplerPreset`. Users override entries in a YAML or
JSON file (``PODKIT_PRESETS_FILE``, default ``<ComfyUI user dir>/podkit/presets.yaml``); the merged
table is validated against ComfyUI's sampler and scheduler lists, which the host passes in (this
module imports no ComfyUI).

The time-budget ("auto") chooser and the speed model it predicts with are in :mod:`.speed`; from a
node's inputs to one preset is :mod:`.preset_resolve`.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from enum import Enum
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

from .errors import ConfigError


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
