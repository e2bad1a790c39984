"""The generation cache: a second pod's identical prompt, a hit's cost per node, a miss's store cost.

    .venv/bin/python bench/bench_gencache.py [--rounds 5] [--steps 4] [--size 128] [--json PATH]

Needs ComfyUI 0.33+ (its cache-provider API): the newest tree ``scripts/setup`` prepared, or
``COMFYUI_PATH``. Four ComfyUI processes with PodKit and the tiny SD1.5 checkpoint: **A** and **B**
share one cache folder (generation cache on), **C** and **D** have it off (D, C's twin, is the
control for two processes' own difference). Every round is a new prompt (new seed): A (a miss: it
computes and stores), C and D (the same work without the cache) run it in an order that rotates
between rounds, each after A's background writes are done; then B (a second pod: served from the
cache). A round that foreign CPU load disturbed is run again with a new seed (a
repeated prompt would come from ComfyUI's own cache). Figures:

- ``second_pod``: B / C wall time, paired per round, median — what the cache saves a second pod
  (goal: no sampling, ≪ 1);
- ``store_overhead``: A / C − 1, paired per round, median, as % of the prompt (goal ≤ 2 %); the
  same within one process: A / A bypassing its cache (another new prompt with
  ``extra_data={"podkit_generation_cache": false}``) − 1, free of two processes' own difference, in
  wall time and in the process's CPU time (prompt and background writes: far less disturbed by the
  other processes on the same cores); and the
  same overhead as PodKit accounted it on A (model scope + lookups that missed + entries taken on
  the prompt thread, from A's stats) — the low-noise reading of the same cost; ``control``: D / C − 1, and the
  overhead against both: A / mean(C, D) − 1;
- per node type: B's time per hit (reading the entry) and A's time per store on the prompt thread.

Prints tables and one JSON line.
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _bootstrap
from _common import CpuGuard, emit_json, paired_ratio, print_table, process_cpu_seconds, stats

_bootstrap.register_package()

REPO = Path(__file__).resolve().parent.parent
TINY_MODELS = REPO / "tests" / "support" / "make_tiny_models.py"
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


def generation(server: Any) -> dict[str, Any]:
    return dict(server.client.get_json("/podkit/cache/stats")["generation"])


def wait_for_stores(server: Any, count: int, timeout: float = 60) -> None:
    """Entries are written in the background: wait until ``count`` KSampler entries are published."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if generation(server)["nodes"].get("KSampler", {}).get("stores", 0) >= count:
            return
        time.sleep(0.05)
    raise RuntimeError("the first pod's entries were not published")


#: a prompt's ``extra_data`` that makes it bypass the generation cache (nothing read or stored)
BYPASS = {"podkit_generation_cache": False}
ORDER = ("A", "C", "A_off", "D")
#: seconds given to A's background writes before its CPU time is read (they take a few ms)
WRITE_PAUSE = 0.5


def timed(
    server: Any, prompt: dict[str, Any], sampler: str, *, served: bool, extra: dict[str, Any] | None = None
) -> float:
    """Wall seconds of one prompt; raises when the sampler ran (``served``) or did not (a miss)."""
    result = server.client.run_workflow(prompt, timeout=600, extra_data=extra)
    if not result.ok:
        raise RuntimeError(result.describe())
    if (sampler in result.cached_nodes()) != served:
        raise RuntimeError(f"{server.name}: the sampler {'ran' if served else 'came from a cache'}")
    return float(result.elapsed)


def one_round(
    servers: dict[str, Any], prompts: tuple[dict[str, Any], dict[str, Any]], sampler: str, r: int
) -> dict[str, float]:
    """A, C, D on one new prompt and A bypassing its cache on another (order rotating, each after
    A's background writes), then B on the first."""
    prompt, other = prompts
    before = generation(servers["A"])
    stored = before["nodes"].get("KSampler", {}).get("stores", 0) + 1
    pid = servers["A"].proc.pid
    times: dict[str, float] = {}
    for name in ORDER[r % 4 :] + ORDER[: r % 4]:
        if name not in ("A", "A_off"):
            times[name] = timed(servers[name], prompt, sampler, served=False)
            continue
        # A's CPU time over the prompt and the background writes after it (A bypassing the cache
        # gets the same pause and the same one look at the stats, so both pay the same for them)
        cpu = process_cpu_seconds(pid)
        if name == "A":
            times[name] = timed(servers["A"], prompt, sampler, served=False)
        else:  # the same process, the same work, the cache bypassed
            times[name] = timed(servers["A"], other, sampler, served=False, extra=BYPASS)
        time.sleep(WRITE_PAUSE)
        generation(servers["A"])
        times[f"{name}_cpu"] = process_cpu_seconds(pid) - cpu
        if name == "A":
            wait_for_stores(servers["A"], stored)
    times["B"] = timed(servers["B"], prompt, sampler, served=True)
    # what A's prompt waited for the cache, as PodKit accounted it: the model scope, the lookups that
    # missed, the entries taken
    after = generation(servers["A"])["totals"]
    times["A_cache"] = sum(
        (after[k] - before["totals"][k]) / 1e6 for k in ("scope_us", "miss_us", "store_us")
    )
    return times


def node_delta(after: dict[str, Any], before: dict[str, Any]) -> dict[str, dict[str, int]]:
    """Per node type: the counts of ``after`` less those of ``before`` (the warm-up; retried rounds
    stay in, which is fine for per-hit and per-store means)."""
    old = before["nodes"]
    return {
        node: {k: v - old.get(node, {}).get(k, 0) for k, v in counts.items()}
        for node, counts in after["nodes"].items()
    }


def report(
    version: str, args: Any, rounds: list[dict[str, float]], before: dict[str, Any], after: dict[str, Any]
) -> None:
    times = {name: [r[name] for r in rounds] for name in ("A", "B", "C", "D")}
    labels = {"A": "A (miss + store)", "B": "B (second pod, cache)", "C": "C (second pod, no cache)",
              "D": "D (control: C's twin)"}  # fmt: skip
    rows = [[labels[k], f"{stats(v)['min']:.3f}", f"{stats(v)['median']:.3f}"] for k, v in times.items()]
    print_table(f"identical prompts, ComfyUI {version}, {args.size}², {args.steps} steps (wall s)",
                ["case", "min", "median"], rows)  # fmt: skip
    a_nodes, b_nodes = node_delta(after["A"], before["A"]), node_delta(after["B"], before["B"])
    second = paired_ratio(times["B"], times["C"])
    same_process = (paired_ratio(times["A"], [r["A_off"] for r in rounds]) - 1) * 100
    cpu = (paired_ratio([r["A_cpu"] for r in rounds], [r["A_off_cpu"] for r in rounds]) - 1) * 100
    overhead = (paired_ratio(times["A"], times["C"]) - 1) * 100
    control = (paired_ratio(times["D"], times["C"]) - 1) * 100  # two identical processes
    off = [(c + d) / 2 for c, d in zip(times["C"], times["D"], strict=True)]
    beyond = (paired_ratio(times["A"], off) - 1) * 100
    accounted = 100 * paired_ratio([r["A_cache"] for r in rounds], times["A"])
    print_table("ratios (paired per round, median)", ["figure", "value", "goal"],
                [["second pod with cache / without", f"{second:.3f}", "≪ 1 (no sampling)"],
                 ["store overhead on a miss, wall, one process (A / A bypassing − 1)",
                  f"{same_process:+.2f} %", "≤ 2 %"],
                 ["store overhead on a miss, CPU time of one process (A / A bypassing − 1)",
                  f"{cpu:+.2f} %", "≤ 2 %"],
                 ["store overhead on a miss, wall (A/C − 1)", f"{overhead:+.2f} %", "≤ 2 %"],
                 ["control: two processes without cache (D/C − 1)", f"{control:+.2f} %", "≈ 0"],
                 ["store overhead on a miss, wall (A / mean(C, D) − 1)", f"{beyond:+.2f} %", "≤ 2 %"],
                 ["store overhead on a miss, accounted on A", f"{accounted:.2f} %", "≤ 2 %"]])  # fmt: skip
    per_node = []
    for node in sorted(set(a_nodes) | set(b_nodes)):
        a, b = a_nodes.get(node, {}), b_nodes.get(node, {})
        hits, takes = b.get("hits", 0), a.get("stores", 0) + a.get("skipped", 0)
        per_node.append([
            node, hits, f"{b.get('hit_us', 0) / hits / 1000:.2f}" if hits else "-",
            b.get("bytes_served", 0) // hits if hits else "-",
            a.get("stores", 0), f"{a.get('store_us', 0) / takes / 1000:.2f}" if takes else "-",
        ])  # fmt: skip
    headers = [
        "node",
        "hits B",
        "ms per hit B",
        "bytes per hit",
        "stores A",
        "ms per store A (prompt thread)",
    ]
    print_table("per node type (rounds only)", headers, per_node)
    emit_json("bench_gencache", {"comfyui": version, "rounds": rounds, "second_pod_ratio": second,
                                 "store_overhead_pct": overhead, "store_overhead_accounted_pct": accounted,
                                 "store_overhead_same_process_pct": same_process,
                                 "store_overhead_cpu_pct": cpu,
                                 "control_pct": control, "store_overhead_vs_both_pct": beyond,
                                 "nodes_a": a_nodes, "nodes_b": b_nodes,
                                 "discarded": GUARD.discarded}, args.json)  # fmt: skip


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
    with tempfile.TemporaryDirectory(prefix="podkit-bench-gencache-") as tmp:
        root = Path(tmp)
        models = root / "models"
        models.mkdir()
        subprocess.run(
            [str(install.python), str(TINY_MODELS), "--out", str(models),
             "--comfyui", str(install.checkout)],
            cwd=models, env=h.sanitized_env(), check=True, capture_output=True, timeout=900,
        )  # fmt: skip
        shared = root / "volume"
        servers: dict[str, Any] = {}
        for name, on in (("A", True), ("B", True), ("C", False), ("D", False)):
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
            wait_for_stores(servers["A"], 1)
            before = {n: generation(servers[n]) for n in ("A", "B")}

            def new_prompts() -> tuple[dict[str, Any], dict[str, Any]]:  # a retried round repeats none
                return tuple(  # type: ignore[return-value]
                    dict(wf.txt2img(CHECKPOINT, seed=next(seeds), steps=args.steps, size=args.size))
                    for _ in range(2)
                )

            rounds = [
                GUARD.run(lambda r=r: one_round(servers, new_prompts(), wf.Ids.SAMPLER, r))[0]
                for r in range(args.rounds)
            ]
            after = {n: generation(servers[n]) for n in ("A", "B")}
        finally:
            for srv in servers.values():
                srv.stop()
    report(install.version, args, rounds, before, after)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
