"""The ``/podkit/metrics/report`` answer: percentiles, slowest nodes, bottleneck classification.

Pure aggregation over :class:`~podkit.core.metrics.GenerationRecord` lists (newest first):
:func:`build_report` and :func:`classify`, which names a prompt history VRAM-, compute- or
I/O-bound and recommends what to change. Separate from the recorder (:mod:`podkit.core.metrics`),
which builds the records, and from the Prometheus counters (:mod:`podkit.core.prometheus`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .metrics import GenerationRecord, _round


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0..100) with linear interpolation (numpy's default); None if empty."""
    if not values:
        return None
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


@dataclass(frozen=True)
class Bottleneck:
    kind: str  # vram | compute | io
    detail: str
    share: float  # how strongly (fraction of wall time, or of prompts for VRAM)
    hints: tuple[str, ...]

    def to_wire(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "detail": self.detail,
            "share": round(self.share, 3),
            "hints": list(self.hints),
        }


VRAM_HIGH = 0.9  # a peak above this fraction of the GPU's memory is VRAM-bound
IO_SHARE = 0.3  # model loading above this share of wall time is I/O-bound
SAMPLER_SHARE = 0.5
DECODE_SHARE = 0.25
_OOM = re.compile(r"out ?of ?memory|\bOOM\b", re.IGNORECASE)

HINT_DRAFT = "use the Draft tier (or tier auto with a time budget) for iterations"
HINT_TILED = (
    "enable tiled decode (PodKit Cached Tiled VAE Decode): less VRAM, and repeated decodes hit its cache"
)
HINT_SMALLER = "lower the resolution or the batch size"
HINT_IO = (
    "keep models on fast local disk in PodKit's shared cache and avoid switching checkpoints between prompts"
)


def classify(records: Sequence[GenerationRecord]) -> list[Bottleneck]:
    """VRAM-, compute- and I/O-bound findings for ``records``, strongest first."""
    found: list[Bottleneck] = []
    if not records:
        return found
    ooms = [r for r in records if r.status == "error" and r.error and _OOM.search(r.error)]
    high = [r for r in records if r.vram_peak and r.vram_total and r.vram_peak >= VRAM_HIGH * r.vram_total]
    if ooms or high:
        parts = []
        if ooms:
            parts.append(f"{len(ooms)} prompt(s) failed out of GPU memory")
        if high:
            parts.append(f"{len(high)} prompt(s) peaked above {VRAM_HIGH:.0%} of GPU memory")
        share = (len(ooms) + len(high)) / len(records)
        # an out-of-memory failure outranks any time share
        found.append(
            Bottleneck("vram", "; ".join(parts), 1.0 + share if ooms else share, (HINT_TILED, HINT_SMALLER))
        )
    ok = [r for r in records if r.status == "success"]
    wall = sum(r.wall_s for r in ok)
    if wall > 0:
        load = sum(r.seconds_of("load") for r in ok) / wall
        sampling = sum(r.seconds_of("sampler") for r in ok) / wall
        decode = sum(r.seconds_of("decode") for r in ok) / wall
        if load >= IO_SHARE:
            found.append(Bottleneck("io", f"model loading took {load:.0%} of wall time", load, (HINT_IO,)))
        if sampling >= SAMPLER_SHARE:
            found.append(
                Bottleneck("compute", f"sampling took {sampling:.0%} of wall time", sampling, (HINT_DRAFT,))
            )
        if decode >= DECODE_SHARE:
            found.append(
                Bottleneck("compute", f"VAE decode took {decode:.0%} of wall time", decode, (HINT_TILED,))
            )
    found.sort(key=lambda b: -b.share)
    return found


def build_report(records: Sequence[GenerationRecord], hours: float, *, recent: int = 50) -> dict[str, Any]:
    """The ``/podkit/metrics/report`` answer for ``records`` (newest first) of the last ``hours``."""
    ok = [r for r in records if r.status == "success"]
    walls = [r.wall_s for r in ok]
    cached = sum(r.cached_count for r in records)
    total_nodes = sum(len(r.nodes) for r in records)
    per_class: dict[str, list[float]] = {}
    for r in records:
        for n in r.nodes:
            if not n.cached:
                per_class.setdefault(n.class_type, []).append(n.seconds)
    slowest = sorted(
        (
            {"class_type": c, "mean_s": round(sum(v) / len(v), 4), "max_s": round(max(v), 4), "count": len(v)}
            for c, v in per_class.items()
        ),
        key=lambda d: -float(d["mean_s"]),  # type: ignore[arg-type]
    )[:10]
    found = classify(records)
    recommendations: list[str] = []
    for b in found:
        recommendations += [h for h in b.hints if h not in recommendations]
    errors = [abs(e) for r in ok if (e := r.prediction_error_pct) is not None]
    mean = sum(walls) / len(walls) if walls else None
    return {
        "hours": hours,
        "count": len(records),
        "succeeded": len(ok),
        "failed": sum(1 for r in records if r.status == "error"),
        "interrupted": sum(1 for r in records if r.status == "interrupted"),
        "mean_s": None if mean is None else round(mean, 4),
        "p50_s": _round(percentile(walls, 50)),
        "p95_s": _round(percentile(walls, 95)),
        "cache_hit_rate": round(cached / total_nodes, 4) if total_nodes else None,
        "slowest_nodes": slowest,
        "bottlenecks": [{"kind": b.kind, "detail": b.detail} for b in found],
        "bottleneck": found[0].to_wire()
        if found
        else {"kind": "none", "detail": "", "share": 0.0, "hints": []},
        "recommendations": recommendations,
        "prediction": {
            "count": len(errors),
            "mean_abs_error_pct": round(sum(errors) / len(errors), 1) if errors else None,
        },
        "recent": [r.to_wire() for r in records[:recent]],
    }
