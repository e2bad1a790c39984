"""The generation cache across ComfyUI processes sharing a volume (ComfyUI 0.33+: its cache-provider
API), and its absence on 0.3.64, where everything else still works (checked on the shared server,
so the older host starts no extra pods).

Two servers share one cache folder. Each has its own LoRA folder holding a *different* file under the
same name, so a result that depends on that name must never cross between them. Both read LoRAs
from a bucket on the test S3 server (Ceph radosgw), where the cache is also mirrored.
"""

from __future__ import annotations

import io
import itertools
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from support import workflows as wf
from support.make_tiny_models import CHECKPOINT, LORA_A, LORA_B

from podkit.core.host import version_tuple
from tests.support.metrics_support import parse_prometheus

SAME_NAME = "same_name.safetensors"
BUCKET_LORA = "styles/retrained.safetensors"
SEEDS = itertools.count(500)
CAP = 1_500_000


def newer(install: Any) -> bool:
    return version_tuple(install.version) >= (0, 33, 0)


@pytest.fixture(scope="module")
def bucket(s3: Any) -> str:
    """The pods' LoRA bucket; the generation cache is mirrored under its ``gencache/`` prefix."""
    name = f"gencache-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="module")
def pods(
    comfy_server_factory: Any,
    comfy_install: Any,
    tiny_models: Path,
    tmp_path_factory: pytest.TempPathFactory,
    s3_server: Any,
    bucket: str,
) -> Iterator[tuple[Any, Any]]:
    shared = tmp_path_factory.mktemp("shared-volume")
    made = []
    for name, lora in (("pod-a", LORA_A), ("pod-b", LORA_B)):
        loras = tmp_path_factory.mktemp(f"{name}-loras")
        shutil.copy(tiny_models / "loras" / lora, loras / SAME_NAME)
        env = {
            "PODKIT_VOLUME_DIR": str(shared),
            "PODKIT_CACHE_DIR": str(shared / "cache"),
            "PODKIT_GENERATION_CACHE_MAX_BYTES": str(CAP),
            "PODKIT_S3_ENDPOINT": s3_server.endpoint_url,
            "PODKIT_S3_REGION": s3_server.region,
            "R2_ACCESS_KEY_ID": s3_server.access_key,
            "R2_SECRET_ACCESS_KEY": s3_server.secret_key,
            "R2_LORA_BUCKET": bucket,
            "PODKIT_GENERATION_CACHE_BUCKET_PREFIX": f"r2://{bucket}/gencache",
            "PODKIT_ETAG_TTL": "0",  # a LoRA overwritten in the bucket is seen by the next prompt
        }
        made.append(comfy_server_factory(name=name, env=env, extra_model_paths={"loras": [loras]}))
    for srv in made:
        srv.require_podkit()
    yield made[0], made[1]
    for srv in made:
        srv.stop()


def run_ok(server: Any, prompt: dict[str, Any]) -> Any:
    result = server.client.run_workflow(prompt, timeout=600)
    assert result.ok, result.describe()
    return result


def pixels(result: Any) -> np.ndarray:
    with Image.open(io.BytesIO(result.image_bytes(wf.Ids.SAVE)[0])) as img:
        return np.asarray(img.convert("RGB"))


def generation(server: Any) -> dict[str, Any]:
    return server.client.get_json("/podkit/cache/stats")["generation"]


def wait_for_stores(server: Any, expected: dict[str, int], timeout: float = 30) -> dict[str, Any]:
    """Entries are written in the background after the prompt: wait until they are published."""
    deadline = time.monotonic() + timeout
    while True:
        nodes = generation(server)["nodes"]
        if all(nodes.get(n, {}).get("stores", 0) >= k for n, k in expected.items()):
            return nodes
        assert time.monotonic() < deadline, nodes
        time.sleep(0.1)


def stores_of(server: Any, node: str) -> int:
    return int(generation(server)["nodes"].get(node, {}).get("stores", 0))


def the_pods(request: pytest.FixtureRequest, comfy_install: Any, comfy_server: Any) -> tuple[Any, Any] | None:
    """The two pods on a host with the cache-provider API; on an older host None, after checking
    that PodKit says why there is no generation cache and still generates (on the shared server)."""
    if newer(comfy_install):
        pods: tuple[Any, Any] = request.getfixturevalue("pods")
        return pods
    stats = generation(comfy_server)
    assert stats["enabled"] is False and stats["reason"] in ("host too old", "PODKIT_GENERATION_CACHE is off")
    features = comfy_server.client.get_json("/podkit/status")["host"]["features"]
    note = "host too old for a generation cache"
    assert features["cache_provider"] == {"present": False, "used": False, "note": note}
    result = run_ok(comfy_server, wf.txt2img(CHECKPOINT, seed=next(SEEDS), steps=1))
    assert wf.Ids.SAMPLER in result.executed_nodes()
    return None


def test_a_second_pod_serves_the_first_pods_prompt(
    request: pytest.FixtureRequest, comfy_install: Any, comfy_server: Any
) -> None:
    pods = the_pods(request, comfy_install, comfy_server)
    if pods is None:
        return
    a, b = pods
    first = run_ok(a, wf.txt2img(CHECKPOINT, seed=5, steps=2))
    assert wf.Ids.SAMPLER in first.executed_nodes()
    assert a.client.get_json("/podkit/status")["host"]["features"]["cache_provider"]["used"] is True
    stored = wait_for_stores(a, {"KSampler": 1, "VAEDecode": 1})
    assert "SaveImage" not in stored and stored["CheckpointLoaderSimple"]["skipped"] == 1
    assert stored["KSampler"]["misses"] == 1  # ComfyUI asks twice (prompt start, before running)
    second = run_ok(b, wf.txt2img(CHECKPOINT, seed=5, steps=2))
    # no sampling on the second pod: ComfyUI reports the nodes as cached, the image is the same
    assert {wf.Ids.SAMPLER, wf.Ids.DECODE, wf.Ids.POSITIVE} <= set(second.cached_nodes()), (
        second.cached_nodes()
    )
    assert wf.Ids.SAMPLER not in second.executed_nodes()
    assert np.array_equal(pixels(first), pixels(second))
    stats = generation(b)
    assert (
        stats["enabled"] and stats["nodes"]["KSampler"]["hits"] == 1 and stats["totals"]["bytes_served"] > 0
    )
    # the same counts in the Prometheus export, per node class
    _, samples = parse_prometheus(b.client.get_bytes("/podkit/metrics").decode())
    assert samples[("podkit_generation_cache_hits_total", frozenset({("class_type", "KSampler")}))] == 1

    # only the negative text differs: the positive conditioning comes from the cache
    other = run_ok(b, wf.txt2img(CHECKPOINT, seed=5, steps=2, negative="grainy"))
    assert wf.Ids.POSITIVE in other.cached_nodes() and wf.Ids.SAMPLER in other.executed_nodes()


def test_a_different_file_under_the_same_name_is_not_served(
    pods: tuple[Any, Any], comfy_install: Any
) -> None:
    a, b = pods
    first = run_ok(a, wf.txt2img(CHECKPOINT, seed=6, steps=2, lora=SAME_NAME))
    if newer(comfy_install):
        wait_for_stores(a, {"KSampler": 2})
    second = run_ok(b, wf.txt2img(CHECKPOINT, seed=6, steps=2, lora=SAME_NAME))
    assert wf.Ids.SAMPLER in second.executed_nodes() and wf.Ids.SAMPLER not in second.cached_nodes()
    assert not np.array_equal(pixels(first), pixels(second))


def test_the_cache_survives_a_restart_and_keeps_to_its_cap(
    request: pytest.FixtureRequest, comfy_install: Any, comfy_server: Any
) -> None:
    pods = the_pods(request, comfy_install, comfy_server)
    if pods is None:
        return
    a, _ = pods
    before = pixels(run_ok(a, wf.txt2img(CHECKPOINT, seed=7, steps=2)))
    wait_for_stores(a, {"KSampler": 3})
    a.restart()
    again = run_ok(a, wf.txt2img(CHECKPOINT, seed=7, steps=2))
    assert np.array_equal(before, pixels(again))
    assert wf.Ids.SAMPLER in again.cached_nodes() and wf.Ids.SAMPLER not in again.executed_nodes()
    for seed in (8, 9, 10):
        run_ok(a, wf.txt2img(CHECKPOINT, seed=seed, steps=1, positive=f"prompt {seed}"))
    stats = generation(a)
    assert 0 < stats["bytes"] <= CAP, stats


def test_overwriting_the_lora_object_invalidates_its_results(
    request: pytest.FixtureRequest, comfy_install: Any, comfy_server: Any, s3: Any, tiny_models: Path
) -> None:
    pods = the_pods(request, comfy_install, comfy_server)
    if pods is None:
        return
    a, b = pods
    lora_bucket = request.getfixturevalue("bucket")
    s3.upload_file(str(tiny_models / "loras" / LORA_A), lora_bucket, BUCKET_LORA)
    spec = ("PodKitR2LoraLoader", {"lora_name": BUCKET_LORA, "strength_model": 1.0, "strength_clip": 1.0})
    prompt = wf.txt2img(CHECKPOINT, seed=11, steps=2, lora_node=spec)
    stored = stores_of(a, "KSampler")
    first = run_ok(a, prompt)
    assert wf.Ids.SAMPLER in first.executed_nodes()
    wait_for_stores(a, {"KSampler": stored + 1})
    served = run_ok(b, prompt)  # the entry exists and serves the unchanged LoRA's prompt
    assert wf.Ids.SAMPLER in served.cached_nodes() and wf.Ids.SAMPLER not in served.executed_nodes()
    assert np.array_equal(pixels(first), pixels(served))

    # Retrained: other weights under the same key (a new ETag, the loader's fingerprint)
    s3.upload_file(str(tiny_models / "loras" / LORA_B), lora_bucket, BUCKET_LORA)
    stored = stores_of(b, "KSampler")
    again = run_ok(b, prompt)
    assert wf.Ids.SAMPLER in again.executed_nodes() and wf.Ids.SAMPLER not in again.cached_nodes()
    assert not np.array_equal(pixels(first), pixels(again))
    # and the retrained LoRA's result is what the first pod now gets from the cache
    wait_for_stores(b, {"KSampler": stored + 1})
    retrained = run_ok(a, prompt)
    assert wf.Ids.SAMPLER in retrained.cached_nodes() and wf.Ids.SAMPLER not in retrained.executed_nodes()
    assert np.array_equal(pixels(again), pixels(retrained))
    # the pods' entries also reached the bucket mirror (uploaded after the prompts, in the background)
    deadline = time.monotonic() + 60
    while generation(a)["totals"]["bucket_uploads"] == 0:
        assert time.monotonic() < deadline, generation(a)["totals"]
        time.sleep(0.2)
    assert generation(a)["totals"]["bucket_errors"] == 0


def decode_prompt(seed: int, tile_size: int) -> dict[str, Any]:
    """txt2img whose image goes through PodKit's decode node (tile_size: its band height, which
    changes ComfyUI's cache key of the node but not the pixels, nor the decode cache's key)."""
    p = wf.txt2img(CHECKPOINT, seed=seed, steps=2)
    p["20"] = wf.node("PodKitTiledVAEDecode", samples=wf.link(wf.Ids.SAMPLER), vae=wf.link(wf.Ids.CKPT, 2),
                      tile_size=tile_size, overlap=64, use_cache=True)  # fmt: skip
    p[wf.Ids.SAVE] = wf.node("SaveImage", images=wf.link("20"), filename_prefix="gencache_decode")
    del p[wf.Ids.DECODE]
    return p


def decode_stats(server: Any) -> dict[str, Any]:
    return server.client.get_json("/podkit/cache/stats")["decode"]  # type: ignore[no-any-return]


def test_the_decode_node_keeps_its_images_in_the_generation_cache(
    request: pytest.FixtureRequest, comfy_install: Any, comfy_server: Any
) -> None:
    pods = the_pods(request, comfy_install, comfy_server)
    if pods is None:
        return
    a, b = pods
    assert decode_stats(a)["disk_tier"] == "generation cache"
    stored = stores_of(a, "PodKitTiledVAEDecode")
    first = run_ok(a, decode_prompt(seed=13, tile_size=0))
    assert "20" in first.executed_nodes()
    nodes = wait_for_stores(a, {"PodKitTiledVAEDecode": stored + 1})
    # the provider's entry for the node refers to the image the decode cache keeps: one copy
    image_bytes = 64 * 64 * 3 * 4
    assert nodes["PodKitTiledVAEDecode"]["bytes_stored"] < 4096 < image_bytes, nodes["PodKitTiledVAEDecode"]

    # the same prompt on the other pod: the decode is served (through the reference), pixels equal
    same = run_ok(b, decode_prompt(seed=13, tile_size=0))
    assert {wf.Ids.SAMPLER, "20"} <= set(same.cached_nodes()), same.cached_nodes()
    assert np.array_equal(pixels(first), pixels(same))

    # another graph decoding the same latent (ComfyUI's key differs): the decode cache's entry
    before = decode_stats(b)
    other = run_ok(b, decode_prompt(seed=13, tile_size=64))
    assert "20" in other.executed_nodes() and wf.Ids.SAMPLER in other.cached_nodes()
    after = decode_stats(b)
    assert after["disk_hits"] == before["disk_hits"] + 1 and after["misses"] == before["misses"], after
    assert np.array_equal(pixels(first), pixels(other))


def test_a_prompt_can_bypass_the_cache(
    request: pytest.FixtureRequest, comfy_install: Any, comfy_server: Any
) -> None:
    pods = the_pods(request, comfy_install, comfy_server)
    if pods is None:
        return
    a, b = pods
    before = generation(a)["totals"]
    prompt = wf.txt2img(CHECKPOINT, seed=14, steps=2, positive="bypassed")
    fresh = a.client.run_workflow(prompt, timeout=600, extra_data={"podkit_generation_cache": False})
    assert fresh.ok, fresh.describe()
    assert wf.Ids.SAMPLER in fresh.executed_nodes()
    after = generation(a)["totals"]
    assert after["bypassed"] == before["bypassed"] + 1
    assert (after["hits"], after["misses"]) == (before["hits"], before["misses"])  # no lookups
    # nothing was stored: the other pod computes the prompt too, to the same pixels
    again = run_ok(b, prompt)
    assert wf.Ids.SAMPLER in again.executed_nodes() and np.array_equal(pixels(fresh), pixels(again))
