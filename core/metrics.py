"""Generation records from ComfyUI's execution events: the record types and the recorder.

:class:`PromptRecorder` turns the event sequence of one prompt (``execution_start``,
``execution_cached``, ``executing``, ``executed``, ``execution_success`` / ``_error`` /
``_interrupted``) into a :class:`GenerationRecord`; it knows nothing of the host, so tests feed it
recorded sequences. :func:`with_resources` attaches a prompt's resource peaks to its record. What
is computed from records lives apart: the report and bottleneck classification in
:mod:`podkit.core.metrics_report`, the Prometheus counters in :mod:`podkit.core.prometheus`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

#: Node classes whose time is sampling (seconds-per-step is learnt from them).
SAMPLER_CLASSES = frozenset(
    {"KSampler", "KSamplerAdvanced", "SamplerCustom", "SamplerCustomAdvanced", "PodKitPresetSampler"}
)
#: Node classes whose time is VAE decoding.
DECODE_CLASSES = frozenset({"VAEDecode", "VAEDecodeTiled", "PodKitTiledVAEDecode"})
#: Loader classes outside the "*Loader*" naming rule (the time is model I/O).
LOADER_CLASSES = frozenset({"unCLIPCheckpointLoader", "ImageOnlyCheckpointLoader"})

TERMINAL = MappingProxyType(
    {"execution_success": "success", "execution_error": "error", "execution_interrupted": "interrupted"}
)

#: Fields a node may attach to the running prompt's record (:meth:`PromptRecorder.annotate`).
ANNOTATIONS = frozenset(
    {"family", "width", "height", "batch", "steps", "sampler", "tier", "predicted_s", "predicted_sampler_s",
     "estimating"}
)  # fmt: skip


def node_kind(class_type: str) -> str:
    """``sampler``, ``decode``, ``load`` or ``other``."""
    if class_type in SAMPLER_CLASSES:
        return "sampler"
    if class_type in DECODE_CLASSES:
        return "decode"
    if class_type in LOADER_CLASSES or "Loader" in class_type:
        return "load"
    return "other"


@dataclass(frozen=True)
class NodeTiming:
    node_id: str
    class_type: str
    seconds: float
    cached: bool = False

    def to_wire(self) -> dict[str, Any]:
        return {
            "node_id": self.node_id,
            "class_type": self.class_type,
            "seconds": round(self.seconds, 4),
            "cached": self.cached,
        }


@dataclass(frozen=True)
class GenerationRecord:
    prompt_id: str
    started: float  # epoch seconds
    wall_s: float
    status: str  # success | error | interrupted
    nodes: tuple[NodeTiming, ...] = ()
    family: str | None = None
    width: int | None = None
    height: int | None = None
    steps: int | None = None
    sampler: str | None = None
    tier: str | None = None
    predicted_s: float | None = None
    vram_peak: int | None = None
    vram_total: int | None = None
    ram_peak: int | None = None
    error: str | None = None
    batch: int | None = None
    #: the preset node's predicted sampler seconds, and whether that was still an estimate
    predicted_sampler_s: float | None = None
    estimating: bool | None = None
    #: the first sampler run of its process (slower for reasons that do not recur)
    cold: bool = False
    #: the share of the machine's CPU other processes used while it ran (None: unknown)
    foreign_cpu: float | None = None

    def seconds_of(self, kind: str) -> float:
        return sum(n.seconds for n in self.nodes if not n.cached and node_kind(n.class_type) == kind)

    @property
    def cached_count(self) -> int:
        return sum(1 for n in self.nodes if n.cached)

    @property
    def prediction_error_pct(self) -> float | None:
        if self.predicted_s is None or self.status != "success" or self.wall_s <= 0:
            return None
        return (self.predicted_s - self.wall_s) / self.wall_s * 100

    def to_wire(self) -> dict[str, Any]:
        err = self.prediction_error_pct
        return {
            "prompt_id": self.prompt_id,
            "started": self.started,
            "wall_s": round(self.wall_s, 4),
            "status": self.status,
            "family": self.family,
            "width": self.width,
            "height": self.height,
            "steps": self.steps,
            "sampler": self.sampler,
            "vram_peak": self.vram_peak,
            "vram_total": self.vram_total,
            "ram_peak": self.ram_peak,
            "tier": self.tier,
            "predicted_s": None if self.predicted_s is None else round(self.predicted_s, 3),
            "prediction_error_pct": None if err is None else round(err, 1),
            "sampler_s": round(self.seconds_of("sampler"), 4),
            "load_s": round(self.seconds_of("load"), 4),
            "decode_s": round(self.seconds_of("decode"), 4),
            "cached_nodes": self.cached_count,
            "nodes": [n.to_wire() for n in self.nodes],
            "error": self.error,
            "batch": self.batch,
            "predicted_sampler_s": _round(self.predicted_sampler_s),
            "estimating": self.estimating,
            "cold": self.cold,
            "foreign_cpu": None if self.foreign_cpu is None else round(self.foreign_cpu, 3),
        }


def _literal_int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def describe_graph(graph: Mapping[str, Any], *, batch: bool = False) -> dict[str, Any]:
    """Steps, sampler and latent size of an API-format prompt's first sampler with literal inputs.

    ``batch``: also the latent's batch size (with its width and height).
    """
    out: dict[str, Any] = {}
    for node in graph.values():
        if not isinstance(node, Mapping) or node.get("class_type") not in SAMPLER_CLASSES:
            continue
        inputs = node.get("inputs") or {}
        steps = _literal_int(inputs.get("steps"))
        if steps is None:
            continue
        out["steps"] = steps
        if isinstance(inputs.get("sampler_name"), str):
            out["sampler"] = inputs["sampler_name"]
        latent = inputs.get("latent_image")
        if isinstance(latent, list) and latent and isinstance(graph.get(str(latent[0])), Mapping):
            source = graph[str(latent[0])].get("inputs") or {}
            width, height = _literal_int(source.get("width")), _literal_int(source.get("height"))
            if width and height:
                out["width"], out["height"] = width, height
                if batch:
                    out["batch"] = _literal_int(source.get("batch_size")) or 1
        break
    return out


@dataclass
class _Running:
    prompt_id: str
    started: float
    t0: float
    graph: Mapping[str, Any]
    cached: list[str] = field(default_factory=list)
    times: dict[str, float] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)
    current: str | None = None
    current_t: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)


class PromptRecorder:
    """Builds one :class:`GenerationRecord` per prompt from its execution events.

    Node time = from its ``executing`` event to the next ``executing`` (or the end): ComfyUI sends
    ``executing`` right before a node runs, on the worker thread, so the gap is the node's work.
    Thread-safe: events come from the worker thread, annotations from nodes on the same thread,
    reads from the server loop.

    Args:
        graphs: prompt id → the API-format prompt being run (class types and literal inputs), or
            None when unknown.
        clock: a monotonic clock; ``wall``: epoch seconds.
    """

    def __init__(
        self,
        graphs: Callable[[str], Mapping[str, Any] | None] = lambda _pid: None,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.graphs = graphs
        self.clock = clock
        self.wall = wall
        self._lock = threading.Lock()
        self._running: _Running | None = None
        # node id -> what that node said when it last ran: a node ComfyUI serves from its cache
        # does not run again, but what it chose still describes this prompt
        self._sticky: dict[str, dict[str, Any]] = {}

    @property
    def running_prompt(self) -> str | None:
        with self._lock:
            return self._running.prompt_id if self._running else None

    def annotate(self, prompt_id: str | None = None, node_id: str | None = None, **info: Any) -> bool:
        """Attach ``info`` (see :data:`ANNOTATIONS`) to the running prompt (or ``prompt_id``).

        With ``node_id``, the info is also applied to later prompts in which that node is cached.
        """
        unknown = set(info) - ANNOTATIONS
        if unknown:
            raise ValueError(f"unknown annotation(s): {', '.join(sorted(unknown))}")
        with self._lock:
            if node_id is not None:
                if len(self._sticky) >= 256 and node_id not in self._sticky:
                    self._sticky.pop(next(iter(self._sticky)))
                self._sticky[node_id] = dict(info)
            run = self._running
            if run is None or (prompt_id is not None and run.prompt_id != prompt_id):
                return False
            run.info.update({k: v for k, v in info.items() if v is not None})
            return True

    def on_event(self, event: str, data: Mapping[str, Any]) -> GenerationRecord | None:
        """Feed one event; returns the finished record on the prompt's terminal event."""
        if not isinstance(data, Mapping):
            return None
        prompt_id = data.get("prompt_id")
        now = self.clock()
        with self._lock:
            if event == "execution_start" and isinstance(prompt_id, str):
                graph = self.graphs(prompt_id) or {}
                fresh = _Running(prompt_id, self.wall(), now, graph)
                fresh.info.update(describe_graph(graph, batch=True))
                self._running = fresh
                return None
            run = self._running
            if run is None or (prompt_id is not None and prompt_id != run.prompt_id):
                return None
            if event == "execution_cached":
                run.cached = [str(n) for n in data.get("nodes") or []]
                for n in run.cached:
                    run.info.update({k: v for k, v in self._sticky.get(n, {}).items() if v is not None})
            elif event == "executing":
                self._close_node(run, now)
                node = data.get("node")
                if node is not None:
                    run.current, run.current_t = str(node), now
                    if run.current not in run.times:
                        run.order.append(run.current)
                        run.times[run.current] = 0.0
            elif event == "executed":
                if data.get("node") is not None and str(data["node"]) == run.current:
                    self._close_node(run, now)
            elif event in TERMINAL:
                self._close_node(run, now)
                self._running = None
                return self._finish(run, TERMINAL[event], data, now)
        return None

    @staticmethod
    def _close_node(run: _Running, now: float) -> None:
        if run.current is not None:
            run.times[run.current] += now - run.current_t
            run.current = None

    def _class_of(self, run: _Running, node_id: str) -> str:
        node = run.graph.get(node_id)
        if isinstance(node, Mapping) and isinstance(node.get("class_type"), str):
            return str(node["class_type"])
        return "unknown"

    def _finish(self, run: _Running, status: str, data: Mapping[str, Any], now: float) -> GenerationRecord:
        nodes = [NodeTiming(n, self._class_of(run, n), 0.0, cached=True) for n in run.cached]
        nodes += [NodeTiming(n, self._class_of(run, n), run.times[n]) for n in run.order]
        error = None
        if status == "error":
            error = f"{data.get('node_type') or 'node'} {data.get('node_id', '?')}: " + (
                f"{data.get('exception_type', 'error')}: {data.get('exception_message', '')}".strip(": ")
            )
        elif status == "interrupted":
            error = "interrupted"
        info = run.info
        return GenerationRecord(
            prompt_id=run.prompt_id,
            started=run.started,
            wall_s=max(0.0, now - run.t0),
            status=status,
            nodes=tuple(nodes),
            family=info.get("family"),
            width=info.get("width"),
            height=info.get("height"),
            steps=info.get("steps"),
            sampler=info.get("sampler"),
            tier=info.get("tier"),
            predicted_s=info.get("predicted_s"),
            error=error[:500] if error else None,
            batch=info.get("batch"),
            predicted_sampler_s=info.get("predicted_sampler_s"),
            estimating=info.get("estimating"),
        )


def with_resources(
    record: GenerationRecord, *, vram_peak: int | None, vram_total: int | None, ram_peak: int | None
) -> GenerationRecord:
    return replace(record, vram_peak=vram_peak, vram_total=vram_total, ram_peak=ram_peak)


def _round(v: float | None) -> float | None:
    return None if v is None else round(v, 4)
