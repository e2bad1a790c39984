"""Prometheus text exposition (format 0.0.4) of the generation records: process-lifetime counters.

:class:`MetricsCounters` is fed one :class:`~podkit.core.metrics.GenerationRecord` at a time and
renders ``/podkit/metrics``. Separate from the recorder (:mod:`podkit.core.metrics`) and the report
(:mod:`podkit.core.metrics_report`): it is the scrape format only.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING

from .metrics import GenerationRecord

if TYPE_CHECKING:
    from .gencache import GenerationStats

PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
WALL_BUCKETS: tuple[float, ...] = (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _fmt(v: float) -> str:
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return repr(float(v)) if not float(v).is_integer() else str(int(v))


Labels = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Family:
    """A metric family from outside the generation records (a cache's counters): its samples are
    (labels, value) pairs."""

    name: str
    kind: str  # "counter" or "gauge"
    help: str
    samples: tuple[tuple[Labels, float], ...]


#: per node type of the generation cache: (stats field, metric name, help)
GENERATION_NODE_COUNTERS = (
    ("hits", "hits", "Node outputs served from the generation cache, by node class."),
    ("misses", "misses", "Generation cache lookups that found nothing, by node class."),
    ("stores", "stores", "Node outputs stored in the generation cache, by node class."),
    ("skipped", "skipped", "Node outputs the generation cache cannot keep exactly, by node class."),
    ("bytes_served", "served_bytes", "Bytes served from the generation cache, by node class."),
    ("bytes_stored", "stored_bytes", "Bytes stored in the generation cache, by node class."),
)
#: process-wide counts of the generation cache: (stats total, help)
GENERATION_COUNTERS = (
    ("prompts", "Prompts the generation cache was on for."),
    ("bypassed", "Prompts that asked to bypass the generation cache."),
    ("errors", "Generation cache entries that could not be read or written."),
    ("bucket_hits", "Generation cache entries fetched from its bucket mirror."),
    ("bucket_misses", "Generation cache entries looked up in its bucket mirror and not found."),
    ("bucket_uploads", "Generation cache entries uploaded to its bucket mirror."),
    ("bucket_refused", "Objects of the bucket mirror refused (failed verification)."),
    ("bucket_errors", "Errors of the generation cache's bucket mirror."),
)


def generation_families(stats: GenerationStats) -> list[Family]:
    """The generation cache's counters (since this process started): per node class, and totals."""
    nodes, totals = stats.per_node(), stats.totals()
    families = [
        Family(
            f"podkit_generation_cache_{name}_total",
            "counter",
            text,
            tuple(((("class_type", node),), float(counts.get(field, 0))) for node, counts in nodes.items()),
        )
        for field, name, text in GENERATION_NODE_COUNTERS
    ]
    families += [
        Family(f"podkit_generation_cache_{name}_total", "counter", text, (((), float(totals[name])),))
        for name, text in GENERATION_COUNTERS
    ]
    return families


class MetricsCounters:
    """Process-lifetime counters fed one record at a time (Prometheus counters reset on restart)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.generations: dict[str, int] = {}
        self.wall_buckets = [0] * (len(WALL_BUCKETS) + 1)
        self.wall_sum = 0.0
        self.node_seconds: dict[str, float] = {}
        self.node_runs: dict[str, int] = {}
        self.cached_nodes = 0
        self.executed_nodes = 0
        self.last: GenerationRecord | None = None

    def add(self, record: GenerationRecord) -> None:
        with self._lock:
            self.generations[record.status] = self.generations.get(record.status, 0) + 1
            if record.status == "success":
                i = next((i for i, b in enumerate(WALL_BUCKETS) if record.wall_s <= b), len(WALL_BUCKETS))
                self.wall_buckets[i] += 1
                self.wall_sum += record.wall_s
            for n in record.nodes:
                if n.cached:
                    self.cached_nodes += 1
                    continue
                self.executed_nodes += 1
                self.node_seconds[n.class_type] = self.node_seconds.get(n.class_type, 0.0) + n.seconds
                self.node_runs[n.class_type] = self.node_runs.get(n.class_type, 0) + 1
            self.last = record

    def render(
        self,
        extra_gauges: Mapping[str, tuple[str, float | None]] = MappingProxyType({}),
        families: Sequence[Family] = (),
    ) -> str:
        """The exposition text; ``extra_gauges``: name → (help, value) (None values are left out);
        ``families``: more metric families, as they are."""
        lines: list[str] = []

        def header(name: str, kind: str, text: str) -> None:
            lines.append(f"# HELP {name} {text}")
            lines.append(f"# TYPE {name} {kind}")

        with self._lock:
            header(
                "podkit_generations_total",
                "counter",
                "Prompts finished since this process started, by status.",
            )
            for status in ("success", "error", "interrupted"):
                lines.append(
                    f'podkit_generations_total{{status="{status}"}} {self.generations.get(status, 0)}'
                )
            header("podkit_generation_seconds", "histogram", "Wall time of successful prompts.")
            cumulative = 0
            for bound, n in zip((*WALL_BUCKETS, math.inf), self.wall_buckets, strict=True):
                cumulative += n
                lines.append(f'podkit_generation_seconds_bucket{{le="{_fmt(bound)}"}} {cumulative}')
            lines.append(f"podkit_generation_seconds_sum {_fmt(self.wall_sum)}")
            lines.append(f"podkit_generation_seconds_count {cumulative}")
            header("podkit_node_seconds_total", "counter", "Seconds spent executing nodes, by node class.")
            for c in sorted(self.node_seconds):
                lines.append(
                    f'podkit_node_seconds_total{{class_type="{_escape(c)}"}} {_fmt(self.node_seconds[c])}'
                )
            header("podkit_node_runs_total", "counter", "Node executions (not cached), by node class.")
            for c in sorted(self.node_runs):
                lines.append(f'podkit_node_runs_total{{class_type="{_escape(c)}"}} {self.node_runs[c]}')
            header("podkit_nodes_cached_total", "counter", "Nodes served from ComfyUI's execution cache.")
            lines.append(f"podkit_nodes_cached_total {self.cached_nodes}")
            header("podkit_nodes_executed_total", "counter", "Nodes executed.")
            lines.append(f"podkit_nodes_executed_total {self.executed_nodes}")
            last = self.last
            gauges: dict[str, tuple[str, float | None]] = {
                "podkit_last_generation_seconds": (
                    "Wall time of the last prompt.",
                    last.wall_s if last else None,
                ),
                "podkit_last_vram_peak_bytes": (
                    "Peak GPU memory allocated during the last prompt.",
                    last.vram_peak if last else None,
                ),
                "podkit_last_ram_peak_bytes": (
                    "Peak RSS of the process during the last prompt.",
                    last.ram_peak if last else None,
                ),
                "podkit_last_prediction_error_pct": (
                    "Predicted minus actual wall time of the last preset prompt, percent of actual.",
                    last.prediction_error_pct if last else None,
                ),
            }
        gauges.update(extra_gauges)
        for name, (text, value) in gauges.items():
            if value is None:
                continue
            header(name, "gauge", text)
            lines.append(f"{name} {_fmt(value)}")
        for family in families:
            header(family.name, family.kind, family.help)
            for labels, value in family.samples:
                inner = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
                lines.append(
                    f"{family.name}{{{inner}}} {_fmt(value)}" if inner else f"{family.name} {_fmt(value)}"
                )
        return "\n".join(lines) + "\n"
