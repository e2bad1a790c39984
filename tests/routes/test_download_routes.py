"""The /podkit/downloads routes on a bare aiohttp app, real services and a real HTTP file server."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient
from http_server import FaultServer, fault_server
from route_support import SECRETS, TOKEN, client_for, make_services
from safetensors_support import LORA_KEYS, VAE_KEYS, safetensors_bytes

from podkit.services import Services

MiB = 2**20


@pytest.fixture
def server() -> Iterator[FaultServer]:
    with fault_server() as srv:
        yield srv


@pytest.fixture
def services(tmp_path: Path) -> Iterator[Services]:
    svc = make_services(tmp_path, PODKIT_URL_ALLOW_PRIVATE="1")
    yield svc
    svc.close()


@pytest.fixture
async def client(aiohttp_client, services: Services) -> AsyncIterator[TestClient]:  # type: ignore[no-untyped-def]
    yield await client_for(aiohttp_client, services)


async def until_finished(client: TestClient, job_id: str) -> dict[str, object]:
    for _ in range(600):
        r = await client.get(f"/podkit/downloads/{job_id}")
        job = await r.json()
        assert r.status == 200
        if job["status"] not in ("queued", "running", "verifying"):
            return job  # type: ignore[no-any-return]
        await asyncio.sleep(0.05)
    raise AssertionError(f"job {job_id} did not finish")


async def test_one_item_then_list_and_counts(
    client: TestClient, server: FaultServer, services: Services
) -> None:
    data = safetensors_bytes(LORA_KEYS, 2 * MiB)
    sha = server.add("/style.safetensors", data)
    r = await client.post("/podkit/downloads", json={"url": server.url("/style.safetensors?token=s3cr3t")})
    assert r.status == 202
    (job,) = (await r.json())["jobs"]
    assert "s3cr3t" not in json.dumps(job)
    done = await until_finished(client, str(job["id"]))
    assert done["status"] == "done" and done["dest"] == "loras/style.safetensors" and done["sha256"] == sha
    assert done["model_type"] == "lora" and done["bytes_done"] == done["bytes_total"] == len(data)
    assert services.settings.models_dir is not None
    assert (services.settings.models_dir / "loras/style.safetensors").read_bytes() == data
    r = await client.get("/podkit/downloads")
    listing = await r.json()
    assert listing["counts"] == {"done": 1} and listing["jobs"][0]["id"] == job["id"]
    # a finished job cannot be paused; DELETE removes it
    r = await client.post(f"/podkit/downloads/{job['id']}/pause", json={})
    assert r.status == 409 and (await r.json())["error"] == "conflict"
    r = await client.delete(f"/podkit/downloads/{job['id']}")
    assert r.status == 200
    r = await client.get(f"/podkit/downloads/{job['id']}")
    assert r.status == 404 and (await r.json())["error"] == "not_found"


async def test_a_manifest_and_many_items(client: TestClient, server: FaultServer) -> None:
    server.add("/a.safetensors", safetensors_bytes(LORA_KEYS, MiB, 1))
    server.add("/ae.safetensors", safetensors_bytes(VAE_KEYS, MiB, 2))
    manifest = f"loras:\n  - url: {server.url('/a.safetensors')}\n    dest: loras/flux/a-v1.safetensors\n"
    manifest += f"models:\n  - {server.url('/ae.safetensors')}\n"
    r = await client.post("/podkit/downloads", json={"manifest": manifest})
    assert r.status == 202, await r.text()
    jobs = (await r.json())["jobs"]
    done = [await until_finished(client, str(j["id"])) for j in jobs]
    assert [j["dest"] for j in done] == ["loras/flux/a-v1.safetensors", "vae/ae.safetensors"]
    # the same items again: done at once, no new transfer
    sent = server.bytes_sent
    r = await client.post("/podkit/downloads", json={"manifest": manifest})
    again = [await until_finished(client, str(j["id"])) for j in (await r.json())["jobs"]]
    assert [j["status"] for j in again] == ["done", "done"] and server.bytes_sent == sent


async def test_pause_resume_and_cancel(client: TestClient, server: FaultServer) -> None:
    server.add("/big.safetensors", safetensors_bytes(LORA_KEYS, 16 * MiB))
    server.throttle_bps = MiB
    r = await client.post("/podkit/downloads", json={"url": server.url("/big.safetensors"), "type": "lora"})
    job_id = (await r.json())["jobs"][0]["id"]
    r = await client.post(f"/podkit/downloads/{job_id}/pause", json={})
    assert r.status == 200
    paused = await until_finished(client, job_id)
    assert paused["status"] == "paused"
    r = await client.post(f"/podkit/downloads/{job_id}/resume", json={})
    # active again: the download loop may already have picked it up when the answer is written
    assert r.status == 200 and (await r.json())["status"] in ("queued", "running")
    r = await client.delete(f"/podkit/downloads/{job_id}", json={})
    assert r.status == 200
    cancelled = await until_finished(client, job_id)
    assert cancelled["status"] == "cancelled" and cancelled["error"] is None


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        ({"url": "https://example.com/x.safetensors", "name": "../escape.safetensors"}, 400, "plain name"),
        ({"url": "file:///etc/passwd"}, 400, "only http and https"),
        ({"url": "gopher://example.com/x"}, 400, "only http and https"),
        ({"url": "http://169.254.169.254/latest/meta-data"}, 403, "link-local"),
        ({"url": "https://example.com/x", "dest": "loras/x"}, 400, "unknown field(s)"),
        ({"items": []}, 400, "non-empty list"),
        ({"manifest": "loras: [\n"}, 400, "not valid YAML"),
        ({}, 400, "names nothing"),
    ],
)
async def test_bad_requests_get_json_errors(
    client: TestClient, body: dict[str, object], status: int, fragment: str
) -> None:
    r = await client.post("/podkit/downloads", json=body)
    answer = await r.json()
    assert r.status == status, answer
    assert set(answer) == {"error", "message"} and fragment in answer["message"]


async def test_private_address_refused_by_default(aiohttp_client, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    svc = make_services(tmp_path)
    try:
        client = await client_for(aiohttp_client, svc)
        r = await client.post("/podkit/downloads", json={"url": "http://127.0.0.1:9/x.safetensors"})
        assert r.status == 403 and "PODKIT_URL_ALLOW_PRIVATE" in (await r.json())["message"]
        r = await client.post("/podkit/downloads", data="url=x", headers={"Content-Type": "text/plain"})
        assert r.status == 415
    finally:
        svc.close()


async def test_token_is_required_when_set(aiohttp_client, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    svc = make_services(tmp_path, PODKIT_API_TOKEN=TOKEN)
    try:
        client = await client_for(aiohttp_client, svc)
        r = await client.post("/podkit/downloads", json={"url": "https://example.com/x"})
        assert r.status == 401
        r = await client.delete("/podkit/downloads/0123456789abcdef")
        assert r.status == 401
        assert (await client.get("/podkit/downloads")).status == 401  # URLs and destinations are private
        r = await client.get("/podkit/downloads", headers={"Authorization": f"Bearer {TOKEN}"})
        text = await r.text()
        assert r.status == 200 and all(v not in text for v in (*SECRETS.values(), TOKEN))
    finally:
        svc.close()
