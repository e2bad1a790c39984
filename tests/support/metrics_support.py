"""Shared by the metrics tests (tests/unit/test_metrics.py, the monitor, the routes, the comfy tier):
a sample prompt graph, a settable clock, recorded ComfyUI event sequences, and a strict reader of
the Prometheus text format.
"""

from __future__ import annotations

import re
from typing import Any

from podkit.core.metrics import PromptRecorder

GRAPH: dict[str, Any] = {
    "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny.safetensors"}},
    "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "cat", "clip": ["1", 1]}},
    "4": {"class_type": "CLIPTextEncode", "inputs": {"text": "dog", "clip": ["1", 1]}},
    "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 256, "height": 192, "batch_size": 1}},
    "6": {
        "class_type": "KSampler",
        "inputs": {
            "model": ["1", 0],
            "positive": ["3", 0],
            "negative": ["4", 0],
            "latent_image": ["5", 0],
            "seed": 1,
            "steps": 4,
            "cfg": 7.0,
            "sampler_name": "euler",
            "scheduler": "normal",
            "denoise": 1.0,
        },
    },
    "7": {"class_type": "VAEDecode", "inputs": {"samples": ["6", 0], "vae": ["1", 2]}},
    "8": {"class_type": "SaveImage", "inputs": {"images": ["7", 0], "filename_prefix": "x"}},
}


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def replay(rec: PromptRecorder, clock: Clock, events: list[tuple[float, str, dict[str, Any]]]) -> list[Any]:
    """Feed (time, event, data) triples; returns what each call returned."""
    out = []
    for t, event, data in events:
        clock.t = t
        out.append(rec.on_event(event, data))
    return out


def run_events(pid: str, cached: list[str], timings: list[tuple[str, float]], end: str = "execution_success"):
    t = 100.0
    events: list[tuple[float, str, dict[str, Any]]] = [
        (t, "execution_start", {"prompt_id": pid, "timestamp": 1}),
        (t, "execution_cached", {"prompt_id": pid, "nodes": cached, "timestamp": 1}),
    ]
    for node, seconds in timings:
        events.append((t, "executing", {"node": node, "display_node": node, "prompt_id": pid}))
        t += seconds
    end_data: dict[str, Any] = {"prompt_id": pid, "timestamp": 2}
    if end == "execution_error":
        end_data |= {"node_id": timings[-1][0], "node_type": "KSampler", "exception_type": "OutOfMemoryError",
                     "exception_message": "CUDA out of memory", "traceback": ["..."]}  # fmt: skip
    events.append((t, end, end_data))
    events.append((t, "executing", {"node": None, "prompt_id": pid}))
    return events


_SAMPLE = re.compile(
    r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\.)*",?)*\})? (\S+)$'
)
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\.)*)"')


def parse_prometheus(text: str) -> tuple[dict[str, str], dict[tuple[str, frozenset[tuple[str, str]]], float]]:
    """A strict reader of the text exposition format 0.0.4: types and samples; fails on anything else."""
    assert text.endswith("\n")
    types: dict[str, str] = {}
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for line in text.splitlines():
        if line.startswith("# HELP "):
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert kind in {"counter", "gauge", "histogram", "summary", "untyped"}
            assert name not in types, f"TYPE twice for {name}"
            types[name] = kind
            continue
        m = _SAMPLE.match(line)
        assert m, f"not a sample line: {line!r}"
        name, labels = m.group(1), frozenset(_LABEL.findall(m.group(2) or ""))
        base = re.sub(r"_(bucket|sum|count)$", "", name)
        assert name in types or base in types, f"{name} has no TYPE"
        samples[(name, labels)] = float(m.group(4))
    return types, samples
