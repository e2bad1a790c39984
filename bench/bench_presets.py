"""Prediction error of the time-budget preset chooser on a tiny model, in a real ComfyUI.

    .venv/bin/python bench/bench_presets.py --comfy "$COMFYUI_PATH" [--learn 12] [--learn-max 60]
        [--rounds 1] [--models DIR] [--json PATH]

Starts ComfyUI (``--cpu``) with PodKit and the tiny SD1.5 checkpoint of
tests/support/make_tiny_models.py, and a presets file whose SD1.5 tiers are 2 steps ``euler``,
4 ``dpmpp_2m`` and 8 ``dpmpp_2m_sde``. Every generation goes through ``PodKitPresetSampler``, whose
prediction (sampler seconds and prompt seconds) lands in the prompt's performance record next to
what happened. Then:

1. learn: at least ``--learn`` generations, the tiers in turn at 64² and 128², and on (up to
   ``--learn-max``) until each size has five steady runs: the first run loads the model (cold) and
   a run during which other processes used more than a quarter of the CPU is disturbed; the speed
   model leaves both out;
2. measure, after five runs of each size, ``--rounds`` times: the three tiers, a batch of two, and
   two-stage samplers the history has never seen (``heun``, ``dpm_2``, ``dpmpp_sde``; a second
   presets file) at 64² and 128²; the headline is the median abs error of the predicted *sampler*
   time;
3. estimating: sizes the history lacks (96², 160²): the record must say ``estimating`` (and the
   prediction errs long);
4. budget: tier ``auto`` with ten budgets placed by the measured times of the tiers (each tier's
   median prompt time × 1.2, and the midpoints between tiers) at 64² and 128²: how often the run
   finished within its budget, and how often it picked the best tier that really fits.

Anchors, on the same cases and the same history (every attempt, as the server saw it): the
chooser without history (its conservative default) and the naive rule (one median seconds per step
per megapixel over all runs, scaled by pixel count, plus one median rest-of-prompt time). Every
run goes through the foreign-CPU guard of ``_common.py`` (the machine is shared); a discarded
attempt is still learnt by the server. Prints tables and one JSON line.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import itertools
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import _bootstrap
import yaml
from _common import CpuGuard, emit_json, print_table

_bootstrap.register_package()

from podkit.core.presets import Family  # noqa: E402
from podkit.core.speed import DISTURBED_SHARE, ESTIMATE_RUNS, SpeedModel  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
TINY_MODELS = REPO / "tests" / "support" / "make_tiny_models.py"
TIERS = ("draft", "standard", "high")
TABLES = {
    # the shipped tiers' samplers (a first-order, a multistep and an SDE solver) on a tiny budget
    "tiers": """\
sd15:
  draft: {steps: 2, width: 64, height: 64, sampler: euler, scheduler: normal}
  standard: {steps: 4, width: 64, height: 64, sampler: dpmpp_2m, scheduler: karras}
  high: {steps: 8, width: 64, height: 64, sampler: dpmpp_2m_sde, scheduler: karras}
""",
    # two model evaluations a step: never learnt, priced by the counted evaluations
    "two-stage": """\
sd15:
  draft: {steps: 3, width: 64, height: 64, sampler: heun, scheduler: normal}
  standard: {steps: 4, width: 64, height: 64, sampler: dpm_2, scheduler: karras}
  high: {steps: 3, width: 64, height: 64, sampler: dpmpp_sde, scheduler: karras}
""",
}
LEARNED_SIZES = (64, 128)
NEW_SIZES = (96, 160)
# (presets table, tier, size, batch) measured after the learning runs
MEASURE = [
    *(("tiers", t, s, 1) for s in LEARNED_SIZES for t in TIERS),
    ("two-stage", "draft", 64, 1),
    ("two-stage", "standard", 128, 1),
    ("two-stage", "high", 64, 1),
    ("two-stage", "draft", 128, 1),
]
# sizes the history lacks: other images, and batches of two (a batch is priced by its pixels)
ESTIMATING = [
    *(("tiers", t, s, 1) for s in NEW_SIZES for t in ("standard", "high")),
    *(("tiers", "standard", s, 2) for s in LEARNED_SIZES),
]
BUDGET_HEADROOM = 1.2
GUARD_LIMIT = 0.10  # a run with more foreign CPU than this share of the machine is not quiet


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


def prompt(seed: int, tier: str, size: int, batch: int, budget: float) -> dict[str, Any]:
    from support import workflows as wf
    from support.make_tiny_models import CHECKPOINT

    p = wf.txt2img(CHECKPOINT, seed=seed, size=size, batch_size=batch)
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
        batch_size=batch,
    )
    return p


@dataclasses.dataclass(frozen=True)
class Run:
    """One attempt as the server recorded it."""

    table: str
    tier: str  # the tier run (the one chosen, for auto)
    size: int
    batch: int
    steps: int
    sampler: str
    sampler_s: float
    wall_s: float
    load_s: float
    cold: bool
    predicted_s: float
    predicted_sampler_s: float
    estimating: bool
    foreign_cpu: float  # the server's measure of other processes' CPU during the prompt
    foreign: float = 0.0  # the bench guard's measure (its process tree is "own")
    expected_estimating: bool = False  # fewer than five steady runs of its size before it

    @property
    def quiet(self) -> bool:
        return self.foreign <= GUARD_LIMIT

    @property
    def rest_s(self) -> float:
        return self.wall_s - self.sampler_s - self.load_s

    @property
    def steady(self) -> bool:
        """What the server learns from: neither cold nor disturbed by other processes."""
        return not self.cold and self.foreign_cpu <= DISTURBED_SHARE


class Bench:
    def __init__(self, client: Any, presets: Path) -> None:
        self.client = client
        self.presets = presets
        self.table = ""
        self.history: list[Run] = []
        self.seeds = itertools.count(1000)
        self.stamp = 10**18
        self.guard = CpuGuard(limit=GUARD_LIMIT, retries=4, max_wait=5.0, wait_budget=300.0)

    def use(self, table: str) -> None:
        if table != self.table:
            self.presets.write_text(TABLES[table])
            self.stamp += 10**9  # a new stamp even within the clock's resolution
            os.utime(self.presets, ns=(self.stamp, self.stamp))
            self.table = table

    def run(self, table: str, tier: str, size: int, batch: int = 1, budget: float = 60.0) -> Run:
        """One generation under the CPU guard; every attempt joins the history (the server learns it too).

        Each attempt has a new seed: a repeated prompt would be served from ComfyUI's cache.
        """
        self.use(table)
        steady = self.steady_runs(size, batch)

        def once() -> Run:
            result = self.client.run_workflow(
                prompt(next(self.seeds), tier, size, batch, budget), timeout=600
            )
            if not result.ok:
                raise RuntimeError(result.describe())
            r = self.record(result.prompt_id)
            before = steady + sum(h.steady for h in attempts)
            run = Run(table, r["tier"], size, r["batch"] or 1, r["steps"], r["sampler"], r["sampler_s"],
                      r["wall_s"], r["load_s"], bool(r["cold"]) or r["load_s"] > 0, r["predicted_s"],
                      r["predicted_sampler_s"], bool(r["estimating"]), r["foreign_cpu"] or 0.0,
                      expected_estimating=before < ESTIMATE_RUNS)  # fmt: skip
            attempts.append(run)
            return run

        attempts: list[Run] = []
        try:
            run, foreign = self.guard.run(once)
        finally:
            self.history += attempts  # also the discarded ones: the server learnt them
        run = dataclasses.replace(run, foreign=foreign)
        self.history[-1] = run
        return run

    def steady_runs(self, size: int, batch: int = 1) -> int:
        return sum(1 for h in self.history if (h.size, h.batch) == (size, batch) and h.steady)

    def record(self, prompt_id: str) -> dict[str, Any]:
        for r in self.client.get_json("/podkit/metrics/report?hours=1")["recent"]:
            if r["prompt_id"] == prompt_id:
                return r
        raise RuntimeError(f"prompt {prompt_id} has no performance record")

    def naive(self, size: int, batch: int, steps: int) -> tuple[float, float]:
        """(sampler s, prompt s): one rate per step and megapixel and one rest for every case."""
        rate = statistics.median(h.sampler_s / (h.steps * h.size**2 / 1e6 * h.batch) for h in self.history)
        rest = statistics.median(h.wall_s - h.sampler_s for h in self.history)
        sampler_s = rate * steps * size * size / 1e6 * batch
        return sampler_s, sampler_s + rest

    def typical_wall(self, table: str, tier: str, size: int) -> float:
        """The median prompt time of a warm configuration (what a budget is placed by)."""
        return statistics.median(
            h.wall_s - h.load_s
            for h in self.history
            if (h.table, h.tier, h.size, h.batch) == (table, tier, size, 1) and h.steady
        )


Case = tuple[str, str, int, int]  # presets table, tier, size, batch


def pct(predicted: float, actual: float) -> float:
    return abs(predicted - actual) / actual * 100


PREDICTORS = ("podkit", "naive", "default")


@dataclasses.dataclass(frozen=True)
class Measured:
    """One case: the run, and each predictor's (sampler s, prompt s) made before it."""

    run: Run
    predicted: dict[str, tuple[float, float]]

    def error(self, name: str, what: str = "sampler") -> float:
        sampler_s, wall_s = self.predicted[name]
        return pct(sampler_s, self.run.sampler_s) if what == "sampler" else pct(wall_s, self.run.wall_s)


def measure(bench: Bench, cases: list[Case]) -> list[Measured]:
    """Run ``cases``, each with PodKit's, the naive rule's and the default's prediction."""
    default = SpeedModel(())
    out = []
    for table, tier, size, batch in cases:
        preset = yaml.safe_load(TABLES[table])["sd15"][tier]
        naive = bench.naive(size, batch, preset["steps"])  # from the history before this run
        d = default.predict(Family.SD15, size, size, preset["steps"], preset["sampler"], batch)
        r = bench.run(table, tier, size, batch)
        out.append(Measured(r, {"podkit": (r.predicted_sampler_s, r.predicted_s), "naive": naive,
                                "default": (d.sampler_s, d.seconds)}))  # fmt: skip
    return out


def measured_table(title: str, cases: list[Measured]) -> None:
    headers = ["sampler", "size", "estimating", "quiet", "sampler s", "PodKit", "naive", "PodKit %",
               "naive %", "default %", "prompt s", "PodKit", "PodKit %", "naive %"]  # fmt: skip
    rows = []
    for m in cases:
        r = m.run
        rows.append([
            f"{r.sampler} {r.steps}", f"{r.size}²×{r.batch}", "yes" if r.estimating else "no",
            "yes" if r.quiet else f"no ({r.foreign:.0%})", f"{r.sampler_s:.2f}",
            f"{m.predicted['podkit'][0]:.2f}", f"{m.predicted['naive'][0]:.2f}",
            *(f"{m.error(n):.1f}" for n in PREDICTORS),
            f"{r.wall_s:.2f}", f"{r.predicted_s:.2f}", f"{m.error('podkit', 'wall'):.1f}",
            f"{m.error('naive', 'wall'):.1f}",
        ])  # fmt: skip
    print_table(title, headers, rows)


def med(values: list[float]) -> float | None:
    return round(statistics.median(values), 1) if values else None


def errors_summary(prefix: str, cases: list[Measured]) -> dict[str, Any]:
    """Median abs errors of each predictor over ``cases``, and over the quiet ones."""
    quiet = [m for m in cases if m.run.quiet]
    out: dict[str, Any] = {f"{prefix}runs": len(cases), f"{prefix}quiet_runs": len(quiet)}
    for name in PREDICTORS:
        out[f"{prefix}{name}_sampler_median_abs_error_pct"] = med([m.error(name) for m in cases])
    for name in PREDICTORS:
        out[f"{prefix}{name}_prompt_median_abs_error_pct"] = med([m.error(name, "wall") for m in cases])
    for name in ("podkit", "naive"):
        out[f"{prefix}quiet_{name}_sampler_median_abs_error_pct"] = med([m.error(name) for m in quiet])
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--comfy", default=os.environ.get("COMFYUI_PATH", ""), help="ComfyUI checkout")
    ap.add_argument("--models", default=os.environ.get("PODKIT_TEST_MODELS_CACHE", ""), help="tiny models")
    ap.add_argument("--learn", type=int, default=12, help="learning runs at least")
    ap.add_argument("--learn-max", type=int, default=60, help="learning runs at most")
    ap.add_argument("--rounds", type=int, default=1, help="times the after-five-runs cases are measured")
    ap.add_argument("--no-guard", action="store_true", help="keep samples taken while others used the CPU")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
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
    if install.site is None:
        # the same checkout as prepared by scripts/comfy_env.py has its pinned frontend on a site
        # folder (a tree without its frontend package refuses to start)
        os.environ.pop("COMFYUI_PATH")
        recorded = h.find_installs()
        os.environ["COMFYUI_PATH"] = args.comfy
        if not isinstance(recorded, str):
            same = [i for i in recorded if i.checkout.resolve() == install.checkout.resolve()]
            if same:
                install = dataclasses.replace(install, site=same[0].site, frontend=same[0].frontend)

    with tempfile.TemporaryDirectory(prefix="podkit-bench-presets-") as tmp:
        root = Path(tmp)
        models = Path(args.models) if args.models else root / "models"
        models.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [str(install.python), str(TINY_MODELS), "--out", str(models),
             "--comfyui", str(install.checkout)],
            cwd=models, env=h.sanitized_env(), check=True, capture_output=True, timeout=900,
        )  # fmt: skip
        presets = root / "presets.yaml"
        presets.write_text(TABLES["tiers"])
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
            bench = Bench(server.client, presets)
            bench.guard.enabled = not args.no_guard
            # at least --learn runs, and on until each size has five steady runs (a busy machine
            # disturbs many)
            for i in range(args.learn_max):
                if i >= args.learn and all(bench.steady_runs(s) >= ESTIMATE_RUNS for s in LEARNED_SIZES):
                    break
                bench.run("tiers", TIERS[i % 3], LEARNED_SIZES[(i // 3) % 2])
            learned = len(bench.history)
            print_table(
                "learned runs (every attempt, as the server recorded them)",
                ["size", "sampler", "steps", "sampler s", "rest s", "loading s", "cold", "others' CPU",
                 "estimating"],
                [[f"{r.size}²", r.sampler, r.steps, f"{r.sampler_s:.2f}", f"{r.rest_s:.2f}",
                  f"{r.load_s:.2f}",
                  r.cold, f"{r.foreign_cpu:.0%}", r.estimating] for r in bench.history],
            )  # fmt: skip

            after_five: list[Measured] = []
            for _ in range(args.rounds):
                after_five += measure(bench, MEASURE)
            measured_table("after five runs of the size: predicted vs actual (s; abs error %)", after_five)
            estimating = measure(bench, ESTIMATING)
            measured_table("sizes without five runs: estimating (s; abs error %)", estimating)

            # budgets placed by what the tiers really took (not by PodKit's predictions)
            budgets: list[tuple[int, float, str]] = []
            for size in LEARNED_SIZES:
                typical = {t: bench.typical_wall("tiers", t, size) for t in TIERS}
                places = [typical[t] * BUDGET_HEADROOM for t in TIERS]
                places += [(typical[lo] + typical[hi]) / 2 for lo, hi in itertools.pairwise(TIERS)]
                for budget in sorted(places):
                    fits = [t for t in TIERS if typical[t] <= budget]
                    budgets.append((size, budget, fits[-1] if fits else "none"))
            auto = [
                (budget, fits, bench.run("tiers", "auto", size, 1, budget)) for size, budget, fits in budgets
            ]
            print_table(
                "tier auto within budget (quality: plans with the whole budget)",
                ["size", "budget s", "best fitting", "chosen", "predicted s", "actual s", "within", "quiet"],
                [[f"{r.size}²", f"{budget:.2f}", fits, r.tier, f"{r.predicted_s:.2f}", f"{r.wall_s:.2f}",
                  "yes" if r.wall_s <= budget else "NO", "yes" if r.quiet else f"no ({r.foreign:.0%})"]
                 for budget, fits, r in auto],
            )  # fmt: skip
        finally:
            server.stop()

    within = [r.wall_s <= budget for budget, _, r in auto]
    quiet_within = [r.wall_s <= budget for budget, _, r in auto if r.quiet]
    flags = [m.run.estimating == m.run.expected_estimating for m in after_five + estimating]
    summary = {
        "learn_runs": learned,
        **errors_summary("", after_five),
        "sampler_mean_abs_error_pct": round(statistics.fmean(m.error("podkit") for m in after_five), 1),
        "naive_sampler_mean_abs_error_pct": round(statistics.fmean(m.error("naive") for m in after_five), 1),
        **errors_summary("estimating_", estimating),
        "estimating_flag_right": f"{sum(flags)}/{len(flags)}",
        "auto_within_budget": f"{sum(within)}/{len(within)}",
        "auto_within_budget_quiet": f"{sum(quiet_within)}/{len(quiet_within)}",
        "auto_best_tier": f"{sum(r.tier == fits for _, fits, r in auto)}/{len(auto)}",
        "discarded": bench.guard.discarded,
    }
    print_table("summary", ["metric", "value"], [[k, v] for k, v in summary.items()])
    emit_json("bench_presets", summary, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
