"""/podkit/health, /podkit/idle and the system gauges, on a bare app with real services."""

from __future__ import annotations

from pathlib import Path

from aiohttp.test_utils import TestClient
from route_support import TOKEN, client_for, make_services

from podkit.core.objects import ObjectRef


async def test_health_is_200_when_ready_and_503_naming_what_fails(aiohttp_client, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    svc = make_services(tmp_path, PODKIT_HEALTH_OUTBOX_STUCK="1", PODKIT_HEALTH_STORE_TTL="0")
    try:
        client: TestClient = await client_for(aiohttp_client, svc)
        r = await client.get("/podkit/health")
        body = await r.json()
        assert r.status == 200 and body["ok"] and body["failing"] == []
        assert {c["name"] for c in body["checks"]} == {"store", "state_writable", "disk", "outbox"}
        # an upload the store refuses stays waiting; past the threshold the outbox counts as stuck
        svc.outbox.stop()
        svc.outbox.submit(b"x", ObjectRef("outputs", "a.png"), content_type="image/png")
        svc.settings.local_store_dir.joinpath("outputs").rename(tmp_path / "gone")  # the bucket vanishes too
        import asyncio

        await asyncio.sleep(1.2)
        r = await client.get("/podkit/health")
        body = await r.json()
        assert r.status == 503 and set(body["failing"]) == {"store", "outbox"}, body
        assert "1 upload(s) waiting" in next(c["detail"] for c in body["checks"] if c["name"] == "outbox")
    finally:
        svc.close()


async def test_idle_state_and_keep_alive_need_the_token_to_change(aiohttp_client, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    svc = make_services(
        tmp_path,
        PODKIT_API_TOKEN=TOKEN,
        PODKIT_IDLE_MINUTES="10",
        PODKIT_IDLE_ACTION="command",
        PODKIT_IDLE_COMMAND="true --secret-arg",
    )
    try:
        client: TestClient = await client_for(aiohttp_client, svc)
        r = await client.get("/podkit/idle")
        body = await r.json()
        assert r.status == 200 and body["policy"]["enabled"] and body["policy"]["command"] == ["true"]
        assert body["phase"] in ("idle", "busy")
        r = await client.post("/podkit/idle/keepalive", json={})
        assert r.status == 401
        r = await client.post("/podkit/idle/keepalive", json={}, headers={"Authorization": f"Bearer {TOKEN}"})
        body = await r.json()
        assert r.status == 200 and body["act_in_seconds"] > 599
        status = await (await client.get("/podkit/status")).json()
        assert status["settings"]["pod"]["idle"]["idle_minutes"] == 10
        assert "--secret-arg" not in await (await client.get("/podkit/status")).text()
        metrics = await (await client.get("/podkit/metrics")).text()
        assert "podkit_volume_free_bytes" not in metrics  # no volume here: absent, not zero
        assert "podkit_cache_free_bytes " in metrics and "podkit_idle_seconds" in metrics
        assert "podkit_gpu_memory_used_bytes" not in metrics  # no GPU in this process
    finally:
        svc.close()


def test_idle_phases_are_published_as_declared() -> None:
    from podkit.core.idle import PHASES
    from podkit.server_routes.contract import build_document

    doc = build_document("test")
    assert doc["components"]["schemas"]["IdleState"]["properties"]["phase"]["enum"] == list(PHASES)
