"""The /podkit/training/ routes on a bare aiohttp app: real services, the ai-toolkit stand-in as trainer."""

from __future__ import annotations

import asyncio
import io
import sys
import time
import zipfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp.test_utils import TestClient
from http_server import fault_server
from route_support import SECRETS, TOKEN, assert_no_secrets, client_for, make_services

from podkit.services import Services

FAKE_AI_TOOLKIT = Path(__file__).resolve().parents[1] / "support" / "fake_ai_toolkit"
CONTRACT_FIELDS = {
    "id", "name", "status", "created", "updated", "step", "total_steps", "loss", "speed", "eta", "error",
    "lora_uri", "dataset",
}  # fmt: skip
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 32


def training_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {
        "PODKIT_AI_TOOLKIT_DIR": str(FAKE_AI_TOOLKIT),
        "PODKIT_AI_TOOLKIT_PYTHON": sys.executable,
        "PODKIT_TRAINER_ENV": "FAKE_AITK_STEP_DELAY,FAKE_AITK_HANG_AT,FAKE_AITK_PRINT_ENV",
        "FAKE_AITK_PRINT_ENV": "1",
        **extra,
    }


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    folder = tmp_path / "models" / "datasets" / "me"
    folder.mkdir(parents=True)
    (folder / "a.png").write_bytes(PNG)
    (folder / "a.txt").write_text("p3r5on")
    return folder


@pytest.fixture
def services(tmp_path: Path) -> Iterator[Services]:
    svc = make_services(tmp_path, **training_env(tmp_path))
    yield svc
    svc.close()


@pytest.fixture
async def client(aiohttp_client, services: Services) -> AsyncIterator[TestClient]:  # type: ignore[no-untyped-def]
    yield await client_for(aiohttp_client, services)


async def wait_status(
    client: TestClient, job_id: str, statuses: set[str], timeout: float = 60
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = await client.get(f"/podkit/training/jobs/{job_id}")
        assert r.status == 200
        job: dict[str, Any] = await r.json()
        if job["status"] in statuses:
            return job
        await asyncio.sleep(0.05)
    raise AssertionError(f"job {job_id} never reached {statuses}")


async def test_launch_watch_and_the_lora_in_the_listing(client: TestClient, dataset: Path) -> None:
    body = {"name": "route_lora", "dataset": {"path": str(dataset)}, "steps": 30, "save_every": 10}
    r = await client.post("/podkit/training/jobs", json=body)
    assert r.status == 202, await r.text()
    job = await r.json()
    assert CONTRACT_FIELDS <= set(job) and job["status"] == "queued" and job["total_steps"] == 30

    done = await wait_status(client, job["id"], {"done", "failed", "cancelled"})
    assert done["status"] == "done", done["error"]
    assert done["lora_uri"] == "r2://loras/route_lora.safetensors"
    assert done["dataset"] == {"images": 1, "captions": 1, "missing_captions": 0}
    assert done["step"] == 30 and isinstance(done["loss"], list) and done["loss"][-1][0] == 30
    config = yaml.safe_load(done["config_yaml"])
    assert config["job"] == "extension" and config["config"]["name"] == "route_lora"
    assert any("Saving at step 20" in line for line in done["log_tail"])
    assert_no_secrets(await (await client.get(f"/podkit/training/jobs/{job['id']}")).text())

    listing = await client.get("/podkit/training/jobs")
    jobs = (await listing.json())["jobs"]
    assert [j["id"] for j in jobs] == [job["id"]]
    assert isinstance(jobs[0]["loss"], float) and CONTRACT_FIELDS <= set(jobs[0])
    # the loader's combo offers the new LoRA (the listing was refreshed after the upload)
    names = await (await client.get("/podkit/loras/names")).json()
    assert "route_lora.safetensors" in names

    r = await client.post(f"/podkit/training/jobs/{job['id']}/cancel", json={})
    assert r.status == 409 and (await r.json())["error"] == "conflict"
    r = await client.delete(f"/podkit/training/jobs/{job['id']}")
    assert r.status == 200
    r = await client.get(f"/podkit/training/jobs/{job['id']}")
    assert r.status == 404 and (await r.json())["error"] == "not_found"


async def test_zip_url_through_the_download_manager(tmp_path: Path, aiohttp_client) -> None:  # type: ignore[no-untyped-def]
    """The dataset URL is fetched by the real download manager (services.downloads), policy included."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("set/one.png", PNG)
        zf.writestr("set/one.txt", "p3r5on")
        zf.writestr("set/two.png", PNG)
    with fault_server() as web:
        sha = web.add("/datasets/set.zip", buf.getvalue())
        url = web.url("/datasets/set.zip")
        refused = make_services(tmp_path / "strict", **training_env(tmp_path))
        svc = make_services(tmp_path / "open", **training_env(tmp_path), PODKIT_URL_ALLOW_PRIVATE="1")
        try:
            strict = await client_for(aiohttp_client, refused)
            r = await strict.post("/podkit/training/jobs", json={"name": "z", "dataset": {"url": url}})
            job = await wait_status(strict, (await r.json())["id"], {"done", "failed"})
            assert job["status"] == "failed" and "private" in job["error"].lower(), job["error"]

            client = await client_for(aiohttp_client, svc)
            body = {"name": "zipped", "dataset": {"url": url, "sha256": sha}, "steps": 10}
            r = await client.post("/podkit/training/jobs", json=body)
            assert r.status == 202
            job = await wait_status(client, (await r.json())["id"], {"done", "failed"})
            assert job["status"] == "done", job["error"]
            assert job["dataset"] == {"images": 2, "captions": 1, "missing_captions": 1}
        finally:
            svc.close()
            refused.close()


async def test_cancel_and_delete_rules(tmp_path: Path, aiohttp_client, dataset: Path) -> None:  # type: ignore[no-untyped-def]
    svc = make_services(tmp_path, **training_env(tmp_path, FAKE_AITK_HANG_AT="3"))
    try:
        client = await client_for(aiohttp_client, svc)
        r = await client.post(
            "/podkit/training/jobs", json={"name": "stuck", "dataset": {"path": str(dataset)}}
        )
        job = await r.json()
        await wait_status(client, job["id"], {"running"})
        r = await client.delete(f"/podkit/training/jobs/{job['id']}")
        assert r.status == 409 and "cancel it first" in (await r.json())["message"]
        r = await client.post(f"/podkit/training/jobs/{job['id']}/cancel", json={})
        assert r.status == 200 and (await r.json())["status"] == "cancelled"
        r = await client.delete(f"/podkit/training/jobs/{job['id']}", json={"force": False})
        assert r.status == 200
    finally:
        svc.close()


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        ({"name": "x", "dataset": {"path": "/etc"}}, 403, "outside the folders"),
        ({"name": "x", "dataset": {"path": "/x"}, "lr": 1}, 400, "unknown field(s): lr"),
        ({"name": "../x", "dataset": {"path": "/x"}}, 400, "name must be"),
        ({"name": "x", "dataset": {"url": "ftp://h/x.zip"}}, 400, "http(s) URL"),
        ({"name": "x", "dataset": {"path": "/x"}, "steps": -1}, 400, "steps must be"),
        ([1, 2], 400, "must be a JSON object"),
    ],
)
async def test_bad_requests_get_json_errors(client: TestClient, body: Any, status: int, needle: str) -> None:
    r = await client.post("/podkit/training/jobs", json=body)
    assert r.status == status
    answer = await r.json()
    assert set(answer) == {"error", "message"} and needle in answer["message"]


async def test_json_only_and_ids(client: TestClient) -> None:
    r = await client.post("/podkit/training/jobs", data={"name": "x"})
    assert r.status == 415
    r = await client.get("/podkit/training/jobs/not-an-id!")
    assert r.status == 400
    r = await client.get("/podkit/training/jobs/abc123")
    assert r.status == 404
    r = await client.post("/podkit/training/jobs/abc123/cancel", json={"now": True})
    assert r.status == 400
    r = await client.get("/podkit/training/jobs?limit=0")
    assert r.status == 400


async def test_disabled_without_ai_toolkit_and_token_required(tmp_path: Path, aiohttp_client) -> None:  # type: ignore[no-untyped-def]
    svc = make_services(tmp_path, PODKIT_API_TOKEN=TOKEN)
    try:
        client = await client_for(aiohttp_client, svc)
        body = {"name": "x", "dataset": {"url": "https://example.com/x.zip"}}
        r = await client.post("/podkit/training/jobs", json=body)
        assert r.status == 401
        auth = {"Authorization": f"Bearer {TOKEN}"}
        r = await client.post("/podkit/training/jobs", json=body, headers=auth)
        assert r.status == 403 and "PODKIT_AI_TOOLKIT_DIR" in (await r.json())["message"]
        assert (await client.get("/podkit/training/jobs")).status == 401  # datasets, keys, logs
        r = await client.get("/podkit/training/jobs", headers=auth)
        assert r.status == 200 and (await r.json()) == {"jobs": []}
        for path in ("/podkit/training/jobs/abc/cancel",):
            assert (await client.post(path, json={})).status == 401
        assert (await client.delete("/podkit/training/jobs/abc")).status == 401
        assert SECRETS["HF_TOKEN"] not in (await (await client.get("/podkit/status")).text())
    finally:
        svc.close()
