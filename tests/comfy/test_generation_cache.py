"""The generation cache across ComfyUI processes sharing a volume (ComfyUI 0.33+: its cache-provider
API), and its absence on 0.3.64, where everything else still works (checked on the shared server,
so the older host starts no extra pods).

Two servers share one cache folder. Each has its own LoRA folder holding a *different* file under the
same name, so a result that depends on that name must never cross between them.
"""

from __future__ import annotations

import io
import itertools
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from support import workflows as wf
from support.make_tiny_models import CHECKPOINT, LORA_A, LORA_B

from podkit.core.host import version_tuple

SAME_NAME = "same_name.safetensors"
SEEDS = itertools.count(500)
CAP = 1_500_000


def newer(install: Any) -> bool:
    return version_tuple(install.version) >= (0, 33, 0)


@pytest.fixture(scope="module")
def pods(
    comfy_server_factory: Any, comfy_install: Any, tiny_models: Path, tmp_path_factory: pytest.TempPathFactory
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
