"""Prediction error of the time-budget preset chooser on a tiny model, in a real ComfyUI.

    .venv/bin/python bench/bench_presets.py --comfy "$COMFYUI_PATH" [--learn 6] [--measure 9]
        [--models DIR] [--json PATH]

Starts ComfyUI (``--cpu``) with PodKit and the tiny SD1.5 checkpoint of
tests/support/make_tiny_models.py, and a presets file whose SD1.5 tiers are 2, 4 and 8 steps. Then:

1. learn: ``--learn`` generations with ``PodKitPresetSampler`` (tiers in turn, at 64² and 128²):
   the monitor records their sampler time per step;
2. measure: ``--measure`` generations at sizes the history has (64², 128²), one between them
   (96², interpolated) and one beyond (160², scaled by pixel count), each predicted by the node when
   it runs; actual = the prompt's wall time in the monitor's record;
3. budget: tier ``auto`` with budgets between the tiers' predictions: how often the run finished
   within its budget.

Anchors, on the same cases and the same history: the chooser without history (its conservative
default) and the naive rule (one median seconds-per-step-per-megapixel and one overhead over all
runs, scaled by pixel count). ``error_ratio_*`` = PodKit's mean abs error / the anchor's. Every run
goes through the foreign-CPU guard of ``_common.py`` (the machine is shared). Prints tables and one
JSON line.
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import _bootstrap
from _common import CpuGuard, emit_json, print_table

_bootstrap.register_package()

from podkit.core.presets import Family, SpeedModel, SpeedSample  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
PRESETS = """\
sd15:
  draft: {steps: 2, width: 64, height: 64, sampler: euler, scheduler: normal}
  standard: {steps: 4, width: 64, height: 64, sampler: euler, scheduler: normal}
  high: {steps: 8, width: 64, height: 64, sampler: euler, scheduler: normal}
"""
STEPS = {"draft": 2, "standard": 4, "high": 8}


def harness() -> Any:
    """tests/comfy/conftest.py as a module: its ComfyServer starts and drives ComfyUI."""
    spec = importlib.util.spec_from_file_location(
        "podkit_comfy_harness", REPO / "tests" / "comfy" / "conftest.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def prompt(seed: int, tier: str, size: int, budget: float = 60.0) -> dict[str, Any]:
    from support import workflows as wf
    from support.make_tiny_models import CHECKPOINT

    p = wf.txt2img(CHECKPOINT, seed=seed, size=size)
    p[wf.Ids.SAMPLER] = wf.node(
        "PodKitPresetSampler",
        model=wf.link(wf.Ids.CKPT, 0),
        positive=wf.link(wf.Ids.POSITIVE, 0),
        negative=wf.link(wf.Ids.NEGATIVE, 0),
        latent_image=wf.link(wf.Ids.LATENT, 0),
        seed=seed,
        tier=tier,
        time_budget_seconds=budget,
        quality="quality",
        family="sd15",
        batch_size=1,
    )
    return p


def record(client: Any, prompt_id: str) -> dict[str, Any]:
    for r in client.get_json("/podkit/metrics/report?hours=1")["recent"]:
        if r["prompt_id"] == prompt_id:
            return r
    raise RuntimeError(f"prompt {prompt_id} has no performance record")


GUARD = CpuGuard(max_wait=3.0, wait_budget=120.0)


SEEDS = itertools.count(1000)


def run(
    client: Any, tier: str, size: int, history: list[SpeedSample], budget: float = 60.0
) -> dict[str, Any]:
    """One generation under the CPU guard; every attempt joins ``history`` (the server learns it too).

    Each attempt has a new seed: a repeated prompt would be served from ComfyUI's cache.
    """

    def once() -> dict[str, Any]:
        result = client.run_workflow(prompt(next(SEEDS), tier, size, budget), timeout=600)
        if not result.ok:
            raise RuntimeError(result.describe())
        r = record(client, result.prompt_id)
        history.append(
            SpeedSample(Family.SD15, r["width"], r["height"], r["steps"], r["sampler_s"], r["wall_s"])
        )
        return r

    return GUARD.run(once)[0]


def naive(history: list[SpeedSample], size: int, steps: int) -> float:
    """One rate per megapixel and one overhead for every size."""
    rate = statistics.median(s.s_per_step_mp for s in history)
    overhead = statistics.median(s.overhead_s for s in history)
    return overhead + rate * steps * size * size / 1e6


def pct(predicted: float, actual: float) -> float:
    return abs(predicted - actual) / actual * 100


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--comfy", default=os.environ.get("COMFYUI_PATH", ""), help="ComfyUI checkout")
    ap.add_argument("--models", default=os.environ.get("PODKIT_TEST_MODELS_CACHE", ""), help="tiny models")
    ap.add_argument("--learn", type=int, default=6)
    ap.add_argument("--measure", type=int, default=12)
    ap.add_argument("--no-guard", action="store_true", help="keep samples taken while others used the CPU")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    GUARD.enabled = not args.no_guard
    if not args.comfy:
        print("set --comfy or COMFYUI_PATH", file=sys.stderr)  # noqa: T201
        return 2
    os.environ["COMFYUI_PATH"] = args.comfy
    h = harness()
    installs = h.find_installs()
    if isinstance(installs, str):
        print(installs, file=sys.stderr)  # noqa: T201
        return 2
    install = installs[0]

    history: list[SpeedSample] = []
    errors: dict[str, list[float]] = {"podkit": [], "naive": [], "default": []}
    with tempfile.TemporaryDirectory(prefix="podkit-bench-presets-") as tmp:
        root = Path(tmp)
        models = Path(args.models) if args.models else root / "models"
        models.mkdir(parents=True, exist_ok=True)
        h.subprocess.run(
            [str(install.python), str(h.SUPPORT / "make_tiny_models.py"), "--out", str(models),
             "--comfyui", str(install.checkout)],
            cwd=models, env=h.sanitized_env(), check=True, capture_output=True, timeout=900,
        )  # fmt: skip
        presets = root / "presets.yaml"
        presets.write_text(PRESETS)
        server = h.ComfyServer(
            install,
            models,
            root / "server",
            env={"PODKIT_PRESETS_FILE": str(presets), "PODKIT_VOLUME_DIR": ""},
            name="bench-presets",
        )
        try:
            server.start()
            server.require_podkit()
            client = server.client
            tiers = list(STEPS)
            for i in range(args.learn):
                run(client, tiers[i % 3], (64, 128)[(i // 3) % 2], history)
            learned = len(history)
            print_table(
                "learned runs (every attempt, as the server recorded them)",
                ["size", "steps", "sampler s", "rest of prompt s"],
                [[f"{h.width}²", h.steps, f"{h.sampler_s:.2f}", f"{h.overhead_s:.2f}"] for h in history],
            )

            rows = []
            default = SpeedModel(())
            for i in range(args.measure):
                tier, size = tiers[i % 3], (64, 96, 128, 160)[(i // 3) % 4]
                naive_s = naive(history, size, STEPS[tier])  # from the history before this run
                default_s = default.predict(Family.SD15, size, size, STEPS[tier]).seconds
                r = run(client, tier, size, history)
                actual = r["wall_s"]
                for name, value in (("podkit", r["predicted_s"]), ("naive", naive_s), ("default", default_s)):
                    errors[name].append(pct(value, actual))
                rows.append([tier, f"{size}²", f"{actual:.2f}", f"{r['predicted_s']:.2f}",
                             *(f"{errors[n][-1]:.1f}" for n in errors)])  # fmt: skip
            print_table(
                "prediction vs actual (wall s; abs error %)",
                ["tier", "size", "actual", "PodKit", "PodKit %", "naive %", "default %"],
                rows,
            )

            # budgets between the tiers' predicted times at 64²
            predicted = {t: run(client, t, 64, history)["predicted_s"] for t in tiers}
            budgets = [
                (predicted["draft"] + predicted["standard"]) / 2,
                (predicted["standard"] + predicted["high"]) / 2,
                predicted["high"] * 1.5,
            ]
            hits, chosen, walls = 0, [], []
            for budget in budgets:
                r = run(client, "auto", 64, history, budget)
                chosen.append(r["tier"])
                walls.append(r["wall_s"])
                hits += r["wall_s"] <= budget
            print_table(
                "tier auto within budget",
                ["budget s", "tier chosen", "actual s"],
                [[f"{b:.2f}", t, f"{w:.2f}"] for b, t, w in zip(budgets, chosen, walls, strict=True)],
            )
        finally:
            server.stop()

    mean = {n: statistics.fmean(v) for n, v in errors.items()}
    summary = {
        "learn_runs": learned,
        "measure_runs": len(errors["podkit"]),
        "mean_abs_error_pct": round(mean["podkit"], 1),
        "median_abs_error_pct": round(statistics.median(errors["podkit"]), 1),
        "naive_mean_abs_error_pct": round(mean["naive"], 1),
        "default_mean_abs_error_pct": round(mean["default"], 1),
        "error_ratio_vs_naive": round(mean["podkit"] / mean["naive"], 3),
        "error_ratio_vs_default": round(mean["podkit"] / mean["default"], 3),
        "auto_within_budget": f"{hits}/{len(budgets)}",
        "auto_tiers": chosen,
        "discarded": GUARD.discarded,
    }
    print_table("summary", ["metric", "value"], [[k, v] for k, v in summary.items()])
    emit_json("bench_presets", summary, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
