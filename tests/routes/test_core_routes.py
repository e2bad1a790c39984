"""Status, cache, LoRA, outbox and object routes on a bare aiohttp app, with real services on a temp folder."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient
from route_support import TOKEN, assert_no_secrets, client_for, make_services

from podkit.core.model_cache_types import CacheKey
from podkit.core.objects import ObjectRef
from podkit.services import Services


@pytest.fixture
def services(tmp_path: Path) -> Iterator[Services]:
    svc = make_services(tmp_path)
    yield svc
    svc.close()


@pytest.fixture
async def client(aiohttp_client, services: Services) -> AsyncIterator[TestClient]:  # type: ignore[no-untyped-def]
    yield await client_for(aiohttp_client, services)


async def test_status(client: TestClient) -> None:
    r = await client.get("/podkit/status")
    assert r.status == 200
    body = await r.json()
    assert body["name"] == "PodKit" and body["settings"]["store"] == "local"
    assert body["host"]["kind"] == "standalone" and body["host"]["comfyui_version"] is None
    assert body["settings"]["lora_bucket"] == "loras" and "xformers" in body["accelerations"]
    assert_no_secrets(await r.text())


async def test_cache_stats_and_evict(client: TestClient, services: Services) -> None:
    for i in range(3):
        services.cache.ensure(CacheKey.for_source("s", f"v{i}"), lambda p: p.write_bytes(b"x" * 100) and None)
    r = await client.get("/podkit/cache/stats")
    body = await r.json()
    stats = body["model_cache"]
    assert body["lora_patches"] == {
        "entries": 0,
        "max_entries": 4,
        "bytes": 0,
        "hits": 0,
        "misses": 0,
        "evictions": 0,
    }
    assert (stats["entries"], stats["bytes_on_disk"], stats["misses"]) == (3, 300, 3)
    r = await client.post("/podkit/cache/evict", json={"target_bytes": 100})
    plan = (await r.json())["plan"]
    assert r.status == 200 and plan["freed_bytes"] == 200 and len(plan["entries"]) == 2
    assert services.cache.stats().entries == 3  # dry run by default
    r = await client.post("/podkit/cache/evict", json={"target_bytes": 100, "dry_run": False})
    assert (await r.json())["evicted"]["freed_bytes"] == 200 and services.cache.stats().entries == 1


async def test_cache_stats_show_the_decode_cache(client: TestClient, services: Services) -> None:
    from podkit.core.decode_cache import decode_key

    key = decode_key("latent", "vae", {"method": "banded"})
    assert services.decode_cache.get(key) is None
    services.decode_cache.put(key, b"image", 5)
    assert services.decode_cache.get(key) == (b"image", "ram")
    r = await client.get("/podkit/cache/stats")
    decode = (await r.json())["decode"]
    assert (decode["ram_hits"], decode["misses"], decode["stores"], decode["ram_bytes"]) == (1, 1, 1, 5)
    assert decode["hit_rate"] == 0.5 and decode["disk_enabled"] is False


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"target_bytes": -1}, 400),
        ({"target_bytes": "1G"}, 400),
        ({"dry_run": "no"}, 400),
        ({"surprise": 1}, 400),
        ([], 400),
    ],
)
async def test_evict_rejects_bad_bodies(client: TestClient, body: object, status: int) -> None:
    r = await client.post("/podkit/cache/evict", json=body)
    assert r.status == status
    answer = await r.json()
    assert answer["error"] == "invalid_request" and answer["message"]


async def test_mutations_need_json(client: TestClient) -> None:
    r = await client.post("/podkit/cache/evict", data="dry_run=false", headers={"Content-Type": "text/plain"})
    assert r.status == 415 and (await r.json())["error"] == "unsupported_media_type"
    r = await client.post(
        "/podkit/outbox/retry", data=b"{}", headers={"Content-Type": "application/x-www-form-urlencoded"}
    )
    assert r.status == 415
    r = await client.post("/podkit/cache/evict", data=b"{nope", headers={"Content-Type": "application/json"})
    assert r.status == 400 and "JSON" in (await r.json())["message"]
    r = await client.post(
        "/podkit/cache/evict",
        data=b"[" + b"1," * 200_000 + b"1]",
        headers={"Content-Type": "application/json"},
    )
    assert r.status == 413


async def test_loras_listing(client: TestClient, services: Services) -> None:
    store = services.store
    store.put_bytes(
        b"x" * 10, ObjectRef("loras", "style/a.safetensors"), content_type="application/octet-stream"
    )
    store.put_bytes(b"x", ObjectRef("loras", "notes.txt"), content_type="text/plain")
    r = await client.post("/podkit/loras/refresh", json={})
    body = await r.json()
    assert [i["key"] for i in body["items"]] == ["style/a.safetensors"] and body["error"] is None
    assert await (await client.get("/podkit/loras/names")).json() == ["style/a.safetensors"]
    assert (await (await client.get("/podkit/loras")).json())["bucket"] == "loras"


async def test_outbox_routes(client: TestClient, services: Services) -> None:
    services.outbox.submit(b"png", ObjectRef("outputs", "o/1.png"), content_type="image/png")
    assert services.outbox.flush(10)
    body = await (await client.get("/podkit/outbox")).json()
    assert body["counts"] == {"done": 1} and body["items"][0]["key"] == "o/1.png"
    assert (await client.get("/podkit/outbox?status=bogus")).status == 400
    assert (await client.get("/podkit/outbox?limit=0")).status == 400
    r = await client.post("/podkit/outbox/retry", json={"ids": "all"})
    assert r.status == 400
    r = await client.post("/podkit/outbox/retry", json={})
    assert (await r.json()) == {"requeued": 0}


async def test_objects_route_serves_local_store_only_inside_buckets(
    client: TestClient, services: Services
) -> None:
    services.store.put_bytes(b"img", ObjectRef("outputs", "a/b.png"), content_type="image/png")
    r = await client.get("/podkit/objects/outputs/a/b.png")
    assert r.status == 200 and await r.read() == b"img"
    assert (await client.get("/podkit/objects/outputs/a/missing.png")).status == 404
    assert (await client.get("/podkit/objects/outputs/a/%2e%2e/%2e%2e/x")).status in (400, 404)
    assert (await client.get("/podkit/objects/elsewhere/a/b.png")).status == 404


async def test_token_protects_mutations_and_listings(aiohttp_client, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    svc = make_services(tmp_path, PODKIT_API_TOKEN=TOKEN)
    try:
        client = await client_for(aiohttp_client, svc)
        for method, path in [
            ("post", "/podkit/cache/evict"),
            ("post", "/podkit/outbox/retry"),
            ("post", "/podkit/loras/refresh"),
            ("get", "/podkit/loras"),
            ("get", "/podkit/loras/names"),
        ]:
            r = await getattr(client, method)(path, json={}) if method == "post" else await client.get(path)
            assert r.status == 401, path
            assert_no_secrets(await r.text())
            wrong = {"Authorization": "Bearer nope"}
            r = (
                await getattr(client, method)(path, json={}, headers=wrong)
                if method == "post"
                else await client.get(path, headers=wrong)
            )
            assert r.status == 401
        good = {"Authorization": f"Bearer {TOKEN}"}
        assert (await client.post("/podkit/cache/evict", json={}, headers=good)).status == 200
        assert (await client.get("/podkit/status")).status == 200  # read-only status stays open
        status = await (await client.get("/podkit/status")).text()
        assert_no_secrets(status)
        settings = json.loads(status)["settings"]
        assert settings["api_token_required"] is True
        # folders are the token's: the open status shows them only to a caller that bears it
        assert not [k for k in settings if k.endswith("_dir")] and str(tmp_path) not in status
        authorized = await (await client.get("/podkit/status", headers=good)).json()
        assert authorized["settings"]["cache_dir"] == str(tmp_path / "cache")
    finally:
        svc.close()
