"""Recorder (event sequence → record), aggregation, bottleneck classes, Prometheus text parsed back."""

from __future__ import annotations

import math

import pytest

from podkit.core.metrics import GenerationRecord, NodeTiming, PromptRecorder, describe_graph, node_kind
from podkit.core.metrics_report import build_report, classify, percentile
from podkit.core.prometheus import PROMETHEUS_CONTENT_TYPE, WALL_BUCKETS, MetricsCounters
from tests.support.metrics_support import GRAPH, Clock, parse_prometheus, replay, run_events


def test_recorder_builds_a_record_from_a_recorded_sequence() -> None:
    clock = Clock()
    rec = PromptRecorder(lambda pid: GRAPH if pid == "p1" else None, clock=clock, wall=lambda: 1000.0)
    timings = [("1", 2.0), ("3", 0.25), ("4", 0.25), ("5", 0.5), ("6", 5.0), ("7", 1.5), ("8", 0.5)]
    events = run_events("p1", [], timings)
    # an unrelated prompt's event in between is ignored
    events.insert(3, (100.0, "executing", {"node": "9", "prompt_id": "other"}))
    # an output node's "executed" closes its timing early; the next executing opens the next node
    results = replay(rec, clock, events)
    record = next(r for r in results if r is not None)
    assert isinstance(record, GenerationRecord)
    assert results[-1] is None  # the final executing(None) comes after the record
    assert record.prompt_id == "p1" and record.status == "success"
    assert record.started == 1000.0
    assert record.wall_s == pytest.approx(10.0)
    by_id = {n.node_id: n for n in record.nodes}
    assert by_id["6"].class_type == "KSampler" and by_id["6"].seconds == pytest.approx(5.0)
    assert record.seconds_of("sampler") == pytest.approx(5.0)
    assert record.seconds_of("load") == pytest.approx(2.0)
    assert record.seconds_of("decode") == pytest.approx(1.5)
    assert (record.steps, record.sampler, record.width, record.height) == (4, "euler", 256, 192)
    assert record.error is None and rec.running_prompt is None


def test_recorder_cached_nodes_errors_and_annotations() -> None:
    clock = Clock()
    rec = PromptRecorder(lambda pid: GRAPH, clock=clock)
    events = run_events("p2", ["1", "3", "4", "5"], [("6", 3.0)], end="execution_error")
    replay(rec, clock, events[:3])
    assert rec.running_prompt == "p2"
    assert rec.annotate(node_id="6", tier="draft", predicted_s=2.5, family="sd15")
    assert not rec.annotate(prompt_id="someone-else", tier="high")
    with pytest.raises(ValueError, match="unknown annotation"):
        rec.annotate(colour="red")
    record = next(r for r in replay(rec, clock, events[3:]) if r is not None)
    assert record.status == "error"
    assert record.cached_count == 4 and {n.node_id for n in record.nodes if n.cached} == {"1", "3", "4", "5"}
    assert record.error == "KSampler 6: OutOfMemoryError: CUDA out of memory"
    assert (record.tier, record.predicted_s, record.family) == ("draft", 2.5, "sd15")
    assert record.prediction_error_pct is None  # only successful runs are compared

    # the next prompt serves node 6 from the cache: what it said last time still describes the run
    events = run_events("p3", ["1", "3", "4", "5", "6"], [("7", 1.0), ("8", 1.0)])
    record = next(r for r in replay(rec, clock, events) if r is not None)
    assert (record.tier, record.predicted_s) == ("draft", 2.5)
    assert record.prediction_error_pct == pytest.approx((2.5 - 2.0) / 2.0 * 100)


def test_recorder_interrupt_and_events_without_a_prompt() -> None:
    clock = Clock()
    rec = PromptRecorder(clock=clock)
    assert rec.on_event("executing", {"node": "1", "prompt_id": "x"}) is None  # nothing running
    assert rec.on_event("execution_success", "not a dict") is None  # type: ignore[arg-type]
    events = run_events("p4", [], [("6", 1.0)], end="execution_interrupted")
    record = next(r for r in replay(rec, clock, events) if r is not None)
    assert record.status == "interrupted" and record.error == "interrupted"
    assert record.nodes[0].class_type == "unknown"  # no graph known


def test_describe_graph_needs_literal_inputs() -> None:
    assert describe_graph(GRAPH) == {"steps": 4, "sampler": "euler", "width": 256, "height": 192}
    linked = {**GRAPH, "6": {"class_type": "KSampler", "inputs": {**GRAPH["6"]["inputs"], "steps": ["9", 0]}}}
    assert describe_graph(linked) == {}
    assert describe_graph({}) == {}


def test_node_kinds() -> None:
    assert node_kind("KSampler") == "sampler" and node_kind("PodKitPresetSampler") == "sampler"
    assert node_kind("VAEDecodeTiled") == "decode"
    assert node_kind("CheckpointLoaderSimple") == "load" and node_kind("PodKitR2LoraLoader") == "load"
    assert node_kind("SaveImage") == "other"


def test_percentile_matches_linear_interpolation() -> None:
    assert percentile([], 50) is None
    assert percentile([3.0], 95) == 3.0
    xs = [1.0, 2.0, 3.0, 4.0, 10.0]
    assert percentile(xs, 50) == 3.0
    assert percentile(xs, 95) == pytest.approx(4 + 0.8 * 6)  # numpy.percentile(xs, 95)
    assert percentile(list(reversed(xs)), 0) == 1.0


def rec_(
    pid: str,
    wall: float,
    *,
    load: float = 0.0,
    sample: float = 0.0,
    decode: float = 0.0,
    cached: int = 0,
    status: str = "success",
    error: str | None = None,
    vram: tuple[int, int] | None = None,
    predicted: float | None = None,
) -> GenerationRecord:
    nodes = [NodeTiming(f"c{i}", "CLIPTextEncode", 0.0, cached=True) for i in range(cached)]
    nodes += [
        NodeTiming("1", "CheckpointLoaderSimple", load),
        NodeTiming("6", "KSampler", sample),
        NodeTiming("7", "VAEDecode", decode),
    ]
    return GenerationRecord(
        prompt_id=pid, started=1000.0, wall_s=wall, status=status, nodes=tuple(nodes), error=error,
        vram_peak=vram[0] if vram else None, vram_total=vram[1] if vram else None, predicted_s=predicted,
        family="sd15", width=512, height=512, steps=8, sampler="euler", tier="draft" if predicted else None,
    )  # fmt: skip


def test_bottleneck_classes() -> None:
    compute = classify([rec_("a", 10, load=1, sample=8, decode=0.5)])
    assert [b.kind for b in compute] == ["compute"]
    assert "sampling took 80%" in compute[0].detail
    assert any("Draft tier" in h for h in compute[0].hints)

    io = classify([rec_("a", 10, load=6, sample=3)])
    assert io[0].kind == "io" and "model loading took 60%" in io[0].detail

    decode = classify([rec_("a", 10, load=1, sample=4, decode=4)])
    assert [b.kind for b in decode] == ["compute"] and "VAE decode took 40%" in decode[0].detail
    assert any("tiled decode" in h for h in decode[0].hints)

    gib = 2**30
    vram = classify(
        [rec_("a", 10, load=6, sample=3, vram=(int(7.8 * gib), 8 * gib)), rec_("b", 10, sample=9)]
    )
    assert {b.kind for b in vram} == {"vram", "io", "compute"}
    oom = classify(
        [rec_("a", 10, sample=9), rec_("b", 1, status="error", error="KSampler 6: CUDA out of memory")]
    )
    assert oom[0].kind == "vram" and "1 prompt(s) failed out of GPU memory" in oom[0].detail
    assert any("tiled decode" in h for h in oom[0].hints)
    assert classify([]) == [] and classify([rec_("a", 10, sample=2, load=1)]) == []


def test_report_shape_and_numbers() -> None:
    records = [
        rec_("c", 4.0, load=0.5, sample=3.0, decode=0.2, cached=3, predicted=5.0),
        rec_("b", 2.0, sample=1.5, cached=3, predicted=1.0),
        rec_("a", 12.0, load=8.0, sample=3.0),
        rec_("x", 0.5, sample=0.1, status="error", error="boom"),
    ]
    report = build_report(records, 24)
    assert report["count"] == 4 and report["succeeded"] == 3 and report["failed"] == 1
    assert report["mean_s"] == pytest.approx(6.0)
    assert report["p50_s"] == pytest.approx(4.0)
    assert report["p95_s"] == pytest.approx(percentile([2.0, 4.0, 12.0], 95))
    assert report["cache_hit_rate"] == pytest.approx(6 / (6 + 12), abs=1e-4)
    assert report["slowest_nodes"][0]["class_type"] == "CheckpointLoaderSimple"
    assert report["slowest_nodes"][0]["max_s"] == 8.0
    assert [b["kind"] for b in report["bottlenecks"]] == ["io"]  # "boom" is no OOM
    assert report["bottleneck"]["kind"] == report["bottlenecks"][0]["kind"]
    assert report["recommendations"] and len(set(report["recommendations"])) == len(report["recommendations"])
    # |5-4|/4 = 25 %, |1-2|/2 = 50 %
    assert report["prediction"] == {"count": 2, "mean_abs_error_pct": 37.5}
    assert [r["prompt_id"] for r in report["recent"]] == ["c", "b", "a", "x"]
    first = report["recent"][0]
    for key in ("prompt_id", "started", "wall_s", "family", "width", "height", "steps", "sampler",
                "vram_peak", "ram_peak", "tier", "predicted_s"):  # fmt: skip
        assert key in first
    empty = build_report([], 1)
    assert empty["count"] == 0 and empty["p50_s"] is None and empty["bottleneck"]["kind"] == "none"


def test_prometheus_text_parses_back() -> None:
    counters = MetricsCounters()
    text = counters.render()
    types, samples = parse_prometheus(text)
    assert samples[("podkit_generations_total", frozenset({("status", "success")}))] == 0
    assert "podkit_last_generation_seconds" not in types  # nothing recorded yet

    counters.add(rec_("a", 3.0, load=1.0, sample=1.5, cached=2, predicted=2.0))
    counters.add(rec_("b", 45.0, sample=40.0))
    counters.add(rec_("c", 1.0, status="error", error='a "quoted"\nerror'))
    weird = GenerationRecord("d", 1.0, 0.7, "success", (NodeTiming("9", 'My"Node\\x', 0.5),))
    counters.add(weird)
    types, samples = parse_prometheus(counters.render())
    assert types["podkit_generations_total"] == "counter"
    assert types["podkit_generation_seconds"] == "histogram"
    assert samples[("podkit_generations_total", frozenset({("status", "success")}))] == 3
    assert samples[("podkit_generations_total", frozenset({("status", "error")}))] == 1
    buckets = {
        dict(lbl)["le"]: v for (n, lbl), v in samples.items() if n == "podkit_generation_seconds_bucket"
    }
    assert buckets["+Inf"] == 3 and buckets["1"] == 1 and buckets["5"] == 2 and buckets["60"] == 3
    bounds = [float(b) for b in buckets]
    assert bounds == sorted(bounds) and len(bounds) == len(WALL_BUCKETS) + 1
    assert all(a <= b for a, b in zip(list(buckets.values()), list(buckets.values())[1:], strict=False))
    assert samples[("podkit_generation_seconds_count", frozenset())] == 3
    assert samples[("podkit_generation_seconds_sum", frozenset())] == pytest.approx(48.7)
    ksampler = frozenset({("class_type", "KSampler")})
    assert samples[("podkit_node_seconds_total", ksampler)] == pytest.approx(41.5)
    assert samples[("podkit_node_runs_total", ksampler)] == 3
    assert samples[("podkit_nodes_cached_total", frozenset())] == 2
    escaped = frozenset({("class_type", 'My\\"Node\\\\x')})
    assert samples[("podkit_node_seconds_total", escaped)] == 0.5
    assert samples[("podkit_last_generation_seconds", frozenset())] == pytest.approx(0.7)
    assert not math.isnan(samples[("podkit_nodes_executed_total", frozenset())])
    assert PROMETHEUS_CONTENT_TYPE.startswith("text/plain; version=0.0.4")
