"""The generation cache: a second pod's identical prompt, the cost of storing on a miss, a hit's cost.

    .venv/bin/python bench/bench_gencache.py [--rounds 5] [--steps 4] [--size 128] [--json PATH]

Needs ComfyUI 0.33+ (its cache-provider API): the newest tree ``scripts/setup`` prepared, or
``COMFYUI_PATH``. Three ComfyUI processes with PodKit and the tiny SD1.5 checkpoint: **A** and **B**
share one cache folder (generation cache on), **C** has it off. Every round queues a new prompt
(new seed) on A (a miss: it computes and stores), then the same prompt on B (a second pod: served from
the cache) and on C (a second pod without the cache), in rotating order for B and C. Ratios:

- ``second_pod``: B / C wall time — what the cache saves a second pod (goal: no sampling, ≪ 1);
- ``store_overhead``: A / C — a miss with the store against no cache (goal ≤ 1.02);
- per-entry load time of the entries B was served (from its stats: bytes and hits).

Prints tables and one JSON line.
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _bootstrap
from _common import CpuGuard, emit_json, paired_ratio, print_table, stats

_bootstrap.register_package()

REPO = Path(__file__).resolve().parent.parent
GUARD = CpuGuard(max_wait=3.0, wait_budget=120.0)


def harness() -> Any:
    spec = importlib.util.spec_from_file_location(
        "podkit_comfy_harness", REPO / "tests" / "comfy" / "conftest.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def wait_for_stores(server: Any, count: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        nodes = server.client.get_json("/podkit/cache/stats")["generation"]["nodes"]
        if nodes.get("KSampler", {}).get("stores", 0) >= count:
            return
        time.sleep(0.05)
    raise RuntimeError("the first pod's entries were not published")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--no-guard", action="store_true")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    GUARD.enabled = not args.no_guard
    h = harness()
    from podkit.core.host import version_tuple

    installs = [i for i in (h.INSTALLS or []) if version_tuple(i.version) >= (0, 33, 0)]
    if not installs:
        print("needs ComfyUI 0.33+ (run scripts/setup, or set COMFYUI_PATH)", file=sys.stderr)
        return 2
    install = installs[-1]
    import workflows as wf
    from make_tiny_models import CHECKPOINT

    seeds = itertools.count(1000)
    times: dict[str, list[float]] = {
        "A (miss + store)": [],
        "B (second pod, cache)": [],
        "C (second pod, no cache)": [],
    }
    with tempfile.TemporaryDirectory(prefix="podkit-bench-gencache-") as tmp:
        root = Path(tmp)
        models = root / "models"
        models.mkdir()
        h.subprocess.run(
            [str(install.python), str(h.SUPPORT / "make_tiny_models.py"), "--out", str(models),
             "--comfyui", str(install.checkout)],
            cwd=models, env=h.sanitized_env(), check=True, capture_output=True, timeout=900,
        )  # fmt: skip
        shared = root / "volume"
        servers = {}
        for name, on in (("A", True), ("B", True), ("C", False)):
            env = {"PODKIT_VOLUME_DIR": str(shared), "PODKIT_CACHE_DIR": str(shared / "cache"),
                   "PODKIT_GENERATION_CACHE": "1" if on else "0"}  # fmt: skip
            servers[name] = h.ComfyServer(install, models, root / name, env=env, name=f"bench-{name}")
        try:
            for srv in servers.values():
                srv.start()
                srv.require_podkit()
                GUARD.extra_roots.append(srv.proc.pid)
                # warm: models loaded, so the rounds compare prompts, not loading
                srv.client.run_workflow(
                    wf.txt2img(CHECKPOINT, seed=next(seeds), steps=1, size=args.size), timeout=600
                )

            def timed(name: str, prompt: dict[str, Any]) -> float:
                def once() -> float:
                    result = servers[name].client.run_workflow(prompt, timeout=600)
                    if not result.ok:
                        raise RuntimeError(result.describe())
                    if name == "B" and "6" not in result.cached_nodes():
                        raise RuntimeError("B did not get the sampler from the cache")
                    return float(result.elapsed)

                return float(GUARD.run(once)[0])

            keys = list(times)
            for r in range(args.rounds):
                prompt = wf.txt2img(CHECKPOINT, seed=next(seeds), steps=args.steps, size=args.size)
                times[keys[0]].append(timed("A", prompt))
                wait_for_stores(servers["A"], r + 2)  # entries are written in the background
                for name in ("B", "C") if r % 2 == 0 else ("C", "B"):
                    times[keys[1] if name == "B" else keys[2]].append(timed(name, prompt))
            gen_b = servers["B"].client.get_json("/podkit/cache/stats")["generation"]
            gen_a = servers["A"].client.get_json("/podkit/cache/stats")["generation"]
        finally:
            for srv in servers.values():
                srv.stop()
    rows = [[k, f"{stats(v)['min']:.3f}", f"{stats(v)['median']:.3f}"] for k, v in times.items()]
    print_table(f"identical prompts, ComfyUI {install.version}, {args.size}², {args.steps} steps (wall s)",
                ["case", "min", "median"], rows)  # fmt: skip
    second = paired_ratio(times[keys[1]], times[keys[2]])
    store = paired_ratio(times[keys[0]], times[keys[2]])
    print_table("ratios (paired median)", ["ratio", "value", "goal"],
                [["second pod with cache / without", f"{second:.3f}", "≪ 1 (no sampling)"],
                 ["miss with store / no cache", f"{store:.3f}", "≤ 1.02"]])  # fmt: skip
    per_node = []
    for node, c in gen_b["nodes"].items():
        stored = gen_a["nodes"].get(node, {})
        if c["hits"]:
            per_node.append(
                [node, c["hits"], c["bytes_served"], stored.get("stores", 0), stored.get("bytes_stored", 0)]
            )
    headers = ["node", "hits B", "bytes served B", "stores A", "bytes stored A"]
    print_table("per node type on B (served) and A (stored)", headers, per_node)
    emit_json("bench_gencache", {"comfyui": install.version, "times": times, "second_pod_ratio": second,
                                 "store_overhead_ratio": store, "generation_b": gen_b, "generation_a": gen_a,
                                 "discarded": GUARD.discarded}, args.json)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
