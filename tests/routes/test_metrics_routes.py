"""/podkit/metrics/report, /podkit/metrics (Prometheus) and /podkit/presets on a bare aiohttp app."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient
from route_support import client_for, make_services

from podkit.core.presets import DEFAULT_TABLE, Family, Tier
from podkit.services import Services
from tests.support.metrics_support import GRAPH, parse_prometheus, run_events


@pytest.fixture
def services(tmp_path: Path) -> Iterator[Services]:
    svc = make_services(tmp_path, PODKIT_PRESETS_FILE=str(tmp_path / "presets.yaml"))
    yield svc
    svc.close()


@pytest.fixture
async def client(aiohttp_client, services: Services) -> AsyncIterator[TestClient]:  # type: ignore[no-untyped-def]
    yield await client_for(aiohttp_client, services)


def feed(svc: Services, pid: str, *, sampler_s: float = 0.0) -> None:
    monitor = svc.monitor
    monitor.set_graphs(lambda _pid: GRAPH)
    timings = [("1", 0.0), ("5", 0.0), ("6", sampler_s), ("7", 0.0), ("8", 0.0)]
    for _t, event, data in run_events(pid, ["3", "4"], timings):
        monitor.on_event(event, data)
        if event == "execution_cached":
            monitor.annotate(node_id="6", tier="draft", predicted_s=1.5, family="sd15")


async def test_report_lists_fed_prompts(client: TestClient, services: Services) -> None:
    r = await client.get("/podkit/metrics/report")
    body = await r.json()
    assert r.status == 200 and body["count"] == 0 and body["recent"] == [] and body["hours"] == 24
    feed(services, "prompt-1")
    feed(services, "prompt-2")
    r = await client.get("/podkit/metrics/report?hours=1")
    body = await r.json()
    assert body["count"] == 2 and body["hours"] == 1
    assert [x["prompt_id"] for x in body["recent"]] == ["prompt-2", "prompt-1"]
    first = body["recent"][0]
    assert (first["tier"], first["predicted_s"], first["family"], first["steps"]) == ("draft", 1.5, "sd15", 4)
    assert {n["node_id"] for n in first["nodes"] if n["cached"]} == {"3", "4"}
    assert body["cache_hit_rate"] == pytest.approx(2 / 7, abs=1e-4)
    assert {n["class_type"] for n in body["slowest_nodes"]} >= {"KSampler", "VAEDecode"}
    assert body["prediction"]["count"] == 2


@pytest.mark.parametrize("query", ["hours=0", "hours=abc", "hours=100000", "hours=1.5"])
async def test_report_rejects_bad_hours(client: TestClient, query: str) -> None:
    r = await client.get(f"/podkit/metrics/report?{query}")
    assert r.status == 400
    body = await r.json()
    assert body["error"] == "invalid_request" and "hours" in body["message"]


async def test_prometheus_export(client: TestClient, services: Services) -> None:
    feed(services, "prompt-1")
    r = await client.get("/podkit/metrics")
    assert r.status == 200
    assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    types, samples = parse_prometheus(await r.text())
    assert types["podkit_generation_seconds"] == "histogram"
    assert samples[("podkit_generations_total", frozenset({("status", "success")}))] == 1


async def test_prometheus_exports_the_generation_cache_per_node_class(
    aiohttp_client,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    svc = make_services(tmp_path, PODKIT_GENERATION_CACHE="1")
    try:
        assert svc.generation is not None
        stats = svc.generation.stats
        stats.count("KSampler", hits=2, bytes_served=4096, misses=1)
        stats.count('Odd "node"\nname', stores=1, bytes_stored=10)
        stats.count_bypass()
        stats.count_bucket("bucket_uploads")
        client = await client_for(aiohttp_client, svc)
        types, samples = parse_prometheus(await (await client.get("/podkit/metrics")).text())
    finally:
        svc.close()
    ksampler = frozenset({("class_type", "KSampler")})
    assert types["podkit_generation_cache_hits_total"] == "counter"
    assert samples[("podkit_generation_cache_hits_total", ksampler)] == 2
    assert samples[("podkit_generation_cache_served_bytes_total", ksampler)] == 4096
    assert samples[("podkit_generation_cache_misses_total", ksampler)] == 1
    odd = frozenset({("class_type", 'Odd \\"node\\"\\nname')})  # escaped as the format wants
    assert samples[("podkit_generation_cache_stored_bytes_total", odd)] == 10
    assert samples[("podkit_generation_cache_bypassed_total", frozenset())] == 1
    assert samples[("podkit_generation_cache_bucket_uploads_total", frozenset())] == 1


async def test_prometheus_without_a_generation_cache_has_none_of_its_metrics(
    client: TestClient, services: Services
) -> None:
    assert services.generation is None
    types, _ = parse_prometheus(await (await client.get("/podkit/metrics")).text())
    assert not [name for name in types if name.startswith("podkit_generation_cache")]


async def test_presets_table_and_override_file(
    client: TestClient, services: Services, tmp_path: Path
) -> None:
    r = await client.get("/podkit/presets")
    body = await r.json()
    assert r.status == 200 and body["source"] is None and body["error"] is None
    assert body["families"]["sdxl"]["high"]["width"] == 1024
    assert body["families"]["flux"]["draft"]["guidance"] == 3.5
    assert set(body["families"]) == {f.value for f in Family}

    (tmp_path / "presets.yaml").write_text("sdxl:\n  draft: {steps: 6}\n")
    body = await (await client.get("/podkit/presets")).json()
    assert body["source"] == str(tmp_path / "presets.yaml") and body["error"] is None
    assert body["families"]["sdxl"]["draft"]["steps"] == 6

    services.presets.set_vocabulary(["euler"], ["simple"])  # what the node layer does inside ComfyUI
    body = await (await client.get("/podkit/presets")).json()
    assert "generic.draft.sampler: 'dpm_fast' is not a ComfyUI sampler" in body["error"]
    # the answer shows the defaults the file was meant to change
    assert body["families"]["sdxl"]["draft"] == DEFAULT_TABLE[Family.SDXL][Tier.DRAFT].to_wire()
