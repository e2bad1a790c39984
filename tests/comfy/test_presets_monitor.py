"""Sampler presets and the performance monitor inside a real ComfyUI, on the tiny SD1.5 model.

The presets file shrinks every SD1.5 tier to 64² and a few steps (the CPU runs here); the tiers
still differ in steps, so the chooser has something to choose between.
"""

from __future__ import annotations

import copy
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from support import workflows as wf
from support.make_tiny_models import CHECKPOINT

from tests.support.metrics_support import parse_prometheus

PRESETS = """\
sd15:
  draft: {steps: 2, width: 64, height: 64, sampler: euler, scheduler: normal}
  standard: {steps: 3, width: 64, height: 64}
  high: {steps: 5, width: 64, height: 64}
"""


@pytest.fixture(scope="module")
def comfy(comfy_server_factory, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    presets = tmp_path_factory.mktemp("presets") / "presets.yaml"
    presets.write_text(PRESETS)
    server = comfy_server_factory(
        env={"PODKIT_PRESETS_FILE": str(presets), "PODKIT_VOLUME_DIR": ""}, name="presets"
    )
    server.require_podkit()
    server.presets_file = presets
    yield server
    server.stop()


def preset_sampler_prompt(seed: int, **inputs: Any) -> dict[str, Any]:
    """txt2img with PodKitPresetSampler in place of EmptyLatentImage + KSampler."""
    p = wf.txt2img(CHECKPOINT, seed=seed)
    del p[wf.Ids.LATENT]
    p[wf.Ids.SAMPLER] = wf.node(
        "PodKitPresetSampler",
        model=wf.link(wf.Ids.CKPT, 0),
        positive=wf.link(wf.Ids.POSITIVE, 0),
        negative=wf.link(wf.Ids.NEGATIVE, 0),
        seed=seed,
        **{
            "tier": "draft",
            "time_budget_seconds": 60.0,
            "quality": "balanced",
            "family": "auto",
            "batch_size": 1,
            **inputs,
        },
    )
    return p


def run_ok(server: Any, prompt: dict[str, Any]) -> Any:
    result = server.client.run_workflow(prompt, timeout=600)
    assert result.ok, result.describe()
    return result


def record_of(server: Any, prompt_id: str) -> dict[str, Any]:
    report = server.client.get_json("/podkit/metrics/report?hours=1")
    matches = [r for r in report["recent"] if r["prompt_id"] == prompt_id]
    assert matches, f"{prompt_id} not in the report: {[r['prompt_id'] for r in report['recent']]}"
    return matches[0]


def test_nodes_and_effective_presets(comfy: Any) -> None:
    info = comfy.client.object_info()
    assert {"PodKitSamplerPreset", "PodKitPresetSampler"} <= set(info)
    table = comfy.client.get_json("/podkit/presets")
    assert table["error"] is None and table["source"] == str(comfy.presets_file)
    assert table["families"]["sd15"]["draft"]["steps"] == 2
    assert table["families"]["sdxl"]["high"]["width"] == 1024  # untouched defaults


def test_preset_sampler_runs_and_the_report_shows_prediction_vs_actual(comfy: Any) -> None:
    first = run_ok(comfy, preset_sampler_prompt(1))
    image = first.image_bytes(wf.Ids.SAVE)[0]
    assert image[:8] == b"\x89PNG\r\n\x1a\n"
    record = record_of(comfy, first.prompt_id)
    assert record["status"] == "success" and record["family"] == "sd15"
    assert (record["tier"], record["steps"], record["width"], record["height"]) == ("draft", 2, 64, 64)
    assert record["sampler"] == "euler"
    assert record["predicted_s"] > 0 and record["prediction_error_pct"] is not None
    # the first sampler run of the process, with nothing measured before: an estimate, kept out of the fit
    assert record["estimating"] is True and record["cold"] is True and record["batch"] == 1
    assert 0 < record["predicted_sampler_s"] < record["predicted_s"]
    assert record["foreign_cpu"] is not None and record["foreign_cpu"] >= 0  # busy neighbours, measured
    nodes = {n["node_id"]: n for n in record["nodes"]}
    assert nodes[wf.Ids.SAMPLER]["class_type"] == "PodKitPresetSampler"
    assert nodes[wf.Ids.SAMPLER]["seconds"] > 0 and record["sampler_s"] > 0
    assert nodes[wf.Ids.CKPT]["class_type"] == "CheckpointLoaderSimple"
    assert 0 < sum(n["seconds"] for n in record["nodes"]) <= record["wall_s"] + 1e-3
    assert record["ram_peak"] and record["ram_peak"] > 10 * 2**20
    # the event carries the same record to every tab
    events = [e for e in first.events_of("podkit.generation") if e["prompt_id"] == first.prompt_id]
    assert len(events) == 1 and events[0]["tier"] == "draft"

    # tier auto with a budget, after a measurement: a prediction from this machine's history
    second = run_ok(comfy, preset_sampler_prompt(2, tier="auto", time_budget_seconds=600.0))
    record = record_of(comfy, second.prompt_id)
    assert record["tier"] == "high" and record["steps"] == 5  # everything fits 600 s here
    assert record["estimating"] is True and record["cold"] is False  # one cold run so far: not five
    assert wf.Ids.CKPT in {n["node_id"] for n in record["nodes"] if n["cached"]}
    tiny_budget = run_ok(comfy, preset_sampler_prompt(3, tier="auto", time_budget_seconds=0.1))
    assert record_of(comfy, tiny_budget.prompt_id)["tier"] == "draft"  # nothing fits: the fastest

    report = comfy.client.get_json("/podkit/metrics/report?hours=1")
    assert report["count"] >= 3 and report["p50_s"] > 0
    assert report["prediction"]["count"] >= 3 and report["prediction"]["mean_abs_error_pct"] is not None
    assert "PodKitPresetSampler" in {n["class_type"] for n in report["slowest_nodes"]}
    assert report["cache_hit_rate"] > 0
    assert report["bottleneck"]["kind"] in {"compute", "io", "vram", "none"}

    status, text = comfy.client.request("GET", "/podkit/metrics")
    assert status == 200
    types, samples = parse_prometheus(text)
    assert samples[("podkit_generations_total", frozenset({("status", "success")}))] >= 3
    assert samples[("podkit_node_runs_total", frozenset({("class_type", "PodKitPresetSampler")}))] >= 3


def test_preset_node_drives_core_ksampler(comfy: Any) -> None:
    """The preset node's outputs link into core KSampler and EmptyLatentImage (combo outputs)."""
    p = wf.txt2img(CHECKPOINT, seed=5)
    p["20"] = wf.node(
        "PodKitSamplerPreset",
        tier="standard",
        time_budget_seconds=60.0,
        quality="balanced",
        family="auto",
        model=wf.link(wf.Ids.CKPT, 0),
    )
    sampler = p[wf.Ids.SAMPLER]["inputs"]
    for i, name in enumerate(("steps", "cfg", "sampler_name", "scheduler")):
        sampler[name] = wf.link("20", i)
    p[wf.Ids.LATENT]["inputs"]["width"] = wf.link("20", 4)
    p[wf.Ids.LATENT]["inputs"]["height"] = wf.link("20", 5)
    result = run_ok(comfy, p)
    record = record_of(comfy, result.prompt_id)
    assert (record["tier"], record["steps"], record["family"], record["width"]) == ("standard", 3, "sd15", 64)

    # the same graph again with a new seed: the preset node is served from ComfyUI's cache, and
    # what it chose still describes the run
    again = copy.deepcopy(p)
    again[wf.Ids.SAMPLER]["inputs"]["seed"] = 6
    result = run_ok(comfy, again)
    assert "20" in result.cached_nodes()
    assert record_of(comfy, result.prompt_id)["tier"] == "standard"


def test_a_bad_presets_file_fails_the_node_naming_the_entry(comfy: Any) -> None:
    path: Path = comfy.presets_file
    path.write_text(PRESETS + "  # broken below\nsdxl:\n  high: {sampler: dpmpp_9m}\n")
    try:
        table = comfy.client.get_json("/podkit/presets")
        assert "sdxl.high.sampler: 'dpmpp_9m' is not a ComfyUI sampler" in table["error"]
        result = comfy.client.run_workflow(preset_sampler_prompt(9), timeout=300)
        assert result.status == "error"
        assert "sdxl.high.sampler: 'dpmpp_9m'" in result.error["exception_message"]
        assert record_of(comfy, result.prompt_id)["status"] == "error"
    finally:
        path.write_text(PRESETS)


COUNT_EVALUATIONS = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
sys.path.insert(0, sys.argv[2] + "/tests/support")
import comfy.cli_args
comfy.cli_args.args.cpu = True
from podkit_import import register_package
register_package()
import comfy.samplers
from podkit.nodes import presets
names = list(comfy.samplers.KSampler.SAMPLERS)
print(json.dumps({n: [presets._counted_line(n) is not None, presets.EVALUATIONS(n, 8)] for n in names}))
"""


def test_sampler_evaluations_are_counted_with_the_hosts_samplers(
    comfy_install: Any, comfy_child_env: Any
) -> None:
    """Every sampler in ComfyUI's list runs with the stand-in model: two-stage solvers cost two
    evaluations a step (one on the last), multistep and SDE-multistep ones one."""
    out = subprocess.run(
        [str(comfy_install.python), "-c", COUNT_EVALUATIONS, str(comfy_install.checkout),
         str(Path(__file__).resolve().parents[2])],
        cwd=comfy_install.checkout, env=comfy_child_env(None), capture_output=True, text=True, timeout=300,
        check=True,
    ).stdout  # fmt: skip
    counted = json.loads(out.strip().splitlines()[-1])
    assert [name for name, (ok, _) in counted.items() if not ok] == []
    eight = {name: n for name, (_, n) in counted.items()}
    assert {eight[s] for s in ("euler", "euler_ancestral", "dpmpp_2m", "dpmpp_2m_sde", "lcm", "ddim")} == {8}
    assert {eight[s] for s in ("heun", "dpm_2", "dpm_2_ancestral", "dpmpp_sde", "dpmpp_2s_ancestral")} == {15}
