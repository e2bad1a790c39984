"""Preset table, override-file validation, family detection and the time-budget chooser."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest

from podkit.core.errors import ConfigError, InvalidRequest
from podkit.core.metrics import GenerationRecord, NodeTiming
from podkit.core.preset_resolve import AUTO, PresetInputs, fingerprint, resolve
from podkit.core.presets import (
    DEFAULT_TABLE,
    Family,
    PresetBook,
    Quality,
    SamplerPreset,
    Tier,
    family_from_class_names,
    merge_overrides,
    parse_overrides,
    validate_table,
)
from podkit.core.speed import (
    DEFAULT_OVERHEAD_S,
    DEFAULT_S_PER_STEP_MP,
    ESTIMATE_MARGIN,
    ESTIMATE_RUNS,
    FAMILY_COST,
    SpeedModel,
    SpeedSample,
    choose,
    evaluations_by_name,
    size_key,
    speed_samples,
)

# ComfyUI's lists at the pinned checkout (the node layer passes the live ones in)
SAMPLERS = ["euler", "euler_ancestral", "dpm_fast", "dpmpp_2m", "dpmpp_2m_sde", "lcm"]
SCHEDULERS = ["normal", "karras", "simple", "sgm_uniform"]


def test_seed_tiers_are_the_generic_table() -> None:
    t = DEFAULT_TABLE[Family.GENERIC]
    assert t[Tier.DRAFT] == SamplerPreset(8, 5.0, "dpm_fast", "normal", 512, 512)
    assert (t[Tier.STANDARD].steps, t[Tier.STANDARD].sampler, t[Tier.STANDARD].cfg) == (15, "dpmpp_2m", 6.5)
    assert (t[Tier.STANDARD].width, t[Tier.STANDARD].height) == (768, 768)
    assert (t[Tier.HIGH].steps, t[Tier.HIGH].sampler, t[Tier.HIGH].cfg) == (25, "dpmpp_2m_sde", 7.5)
    assert (t[Tier.HIGH].width, t[Tier.HIGH].height) == (1024, 1024)


def test_family_variants() -> None:
    sdxl = DEFAULT_TABLE[Family.SDXL]
    assert {(p.width, p.height) for p in sdxl.values()} == {(1024, 1024)}
    flux = DEFAULT_TABLE[Family.FLUX]
    for p in flux.values():
        assert (p.cfg, p.guidance, p.sampler, p.scheduler) == (1.0, 3.5, "euler", "simple")
    assert all(p.guidance is None for f in (Family.SD15, Family.SDXL) for p in DEFAULT_TABLE[f].values())
    # steps grow with the tier in every family
    for tiers in DEFAULT_TABLE.values():
        assert tiers[Tier.DRAFT].steps < tiers[Tier.STANDARD].steps < tiers[Tier.HIGH].steps
    validate_table(DEFAULT_TABLE, SAMPLERS, SCHEDULERS)


def test_overrides_merge_field_by_field() -> None:
    doc = parse_overrides("sdxl:\n  draft: {steps: 6, sampler: lcm}\n", "p.yaml")
    table = merge_overrides(DEFAULT_TABLE, doc, "p.yaml")
    assert table[Family.SDXL][Tier.DRAFT].steps == 6
    assert table[Family.SDXL][Tier.DRAFT].sampler == "lcm"
    assert table[Family.SDXL][Tier.DRAFT].cfg == DEFAULT_TABLE[Family.SDXL][Tier.DRAFT].cfg
    assert table[Family.SDXL][Tier.HIGH] == DEFAULT_TABLE[Family.SDXL][Tier.HIGH]
    # JSON is YAML too
    doc = parse_overrides(json.dumps({"flux": {"high": {"guidance": 4.0}}}), "p.json")
    assert merge_overrides(DEFAULT_TABLE, doc, "p.json")[Family.FLUX][Tier.HIGH].guidance == 4.0


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("sdxxl:\n  draft: {steps: 4}\n", "p.yaml: sdxxl: unknown family 'sdxxl'"),
        ("sdxl:\n  ultra: {steps: 4}\n", "p.yaml: sdxl.ultra: unknown tier 'ultra'"),
        ("sdxl:\n  draft: {stepz: 4}\n", "p.yaml: sdxl.draft.stepz: unknown field"),
        ("sdxl:\n  draft: {steps: 0}\n", "p.yaml: sdxl.draft.steps: 0 is outside 1..10000"),
        ("sdxl:\n  draft: {steps: 4.5}\n", "p.yaml: sdxl.draft.steps: must be a whole number"),
        ("sdxl:\n  draft: {cfg: high}\n", "p.yaml: sdxl.draft.cfg: must be a number"),
        ("sdxl:\n  draft: {width: 1004}\n", "p.yaml: sdxl.draft.width: 1004 is not a multiple of 8"),
        ("sdxl:\n  draft: {sampler: ''}\n", "p.yaml: sdxl.draft.sampler: must be a non-empty string"),
        ("sdxl: [1, 2]\n", "p.yaml: sdxl: must map tiers to presets"),
        ("- a\n- b\n", "p.yaml: the top level must map families to tiers"),
        ("sdxl: {draft: {steps: 4}\n", "p.yaml: not valid YAML/JSON"),
    ],
)
def test_bad_overrides_name_the_entry(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        merge_overrides(DEFAULT_TABLE, parse_overrides(text, "p.yaml"), "p.yaml")
    assert str(e.value).startswith(message), str(e.value)


def test_validation_against_comfy_lists() -> None:
    table = merge_overrides(DEFAULT_TABLE, {"sdxl": {"high": {"sampler": "dpmpp_9m"}}}, "x")
    with pytest.raises(ConfigError, match=r"sdxl\.high\.sampler: 'dpmpp_9m' is not a ComfyUI sampler"):
        validate_table(table, SAMPLERS, SCHEDULERS)
    table = merge_overrides(DEFAULT_TABLE, {"sd15": {"draft": {"scheduler": "wavy"}}}, "x")
    with pytest.raises(ConfigError, match=r"sd15\.draft\.scheduler: 'wavy' is not a ComfyUI scheduler"):
        validate_table(table, SAMPLERS, SCHEDULERS)


def test_preset_book_reads_validates_and_reloads(tmp_path: Path) -> None:
    path = tmp_path / "presets.yaml"
    book = PresetBook(path)
    assert book.table() is DEFAULT_TABLE and book.source() is None  # no file: the defaults
    book.set_vocabulary(SAMPLERS, SCHEDULERS)
    path.write_text("sd15:\n  draft: {steps: 5}\n")
    assert book.preset(Family.SD15, Tier.DRAFT).steps == 5
    assert book.source() == str(path)
    path.write_text("sd15:\n  draft: {steps: 7, sampler: nope}\n")
    os.utime(path, ns=(1, 1))  # a different stamp even within the clock's resolution
    with pytest.raises(ConfigError) as e:
        book.table()
    assert str(path) in str(e.value) and "sd15.draft.sampler: 'nope'" in str(e.value)
    path.write_text("sd15:\n  draft: {steps: 9}\n")
    assert book.preset(Family.SD15, Tier.DRAFT).steps == 9
    path.unlink()
    assert book.preset(Family.SD15, Tier.DRAFT).steps == DEFAULT_TABLE[Family.SD15][Tier.DRAFT].steps


def test_preset_book_unreadable_file(tmp_path: Path) -> None:
    path = tmp_path / "presets.yaml"
    path.mkdir()  # a folder where the file should be
    with pytest.raises(ConfigError, match="cannot read the presets file"):
        PresetBook(path).table()


def test_family_from_config_class_mro() -> None:
    assert family_from_class_names(["SD15", "BASE", "object"]) is Family.SD15
    assert family_from_class_names(["SSD1B", "SDXL", "BASE"]) is Family.SDXL
    assert family_from_class_names(["FluxSchnell", "Flux", "BASE"]) is Family.FLUX
    assert family_from_class_names(["SD15_instructpix2pix", "SD15", "BASE"]) is Family.SD15
    assert family_from_class_names(["SD3", "BASE"]) is Family.GENERIC
    assert family_from_class_names([]) is Family.GENERIC


# ------------------------------------------------------------------------------------------------
# The speed model, on synthetic histories (no timing in tests).


def run(
    side: int,
    steps: int,
    *,
    fixed: float = 0.3,
    per_eval: float = 0.1,
    rest: float = 0.5,
    sampler: str = "euler",
    batch: int = 1,
    family: Family = Family.SD15,
    cold: bool = False,
    load_s: float = 0.0,
    slower: float = 0.0,
) -> SpeedSample:
    """A generation whose sampler took ``fixed + per_eval × evaluations × batch`` (+ ``slower``)."""
    sampler_s = fixed + per_eval * evaluations_by_name(sampler, steps) * batch + slower
    return SpeedSample(family, side, side, steps, sampler_s, sampler_s + rest * batch + load_s,
                       sampler=sampler, batch=batch, load_s=load_s, cold=cold)  # fmt: skip


def warm(side: int, n: int = ESTIMATE_RUNS, **kw: object) -> list[SpeedSample]:
    """``n`` warm runs of one size, 2/4/8 steps in turn."""
    return [run(side, (2, 4, 8)[i % 3], **kw) for i in range(n)]  # type: ignore[arg-type]


def test_speed_samples_from_performance_records() -> None:
    def record(pid: str, *, loaded: bool = False, first: bool = False, **kw: object) -> GenerationRecord:
        nodes = (
            NodeTiming("1", "CheckpointLoaderSimple", 2.0, cached=not loaded),
            NodeTiming("6", "KSampler", 1.5),
            NodeTiming("7", "VAEDecode", 0.5),
        )
        info: dict[str, object] = {
            "family": "sd15",
            "width": 512,
            "height": 512,
            "steps": 4,
            "sampler": "heun",
        }
        return GenerationRecord(pid, 0.0, 4.5 if loaded else 2.5, "success", nodes, cold=first,
                                **{**info, **kw})  # type: ignore[arg-type]  # fmt: skip

    samples = speed_samples([
        record("first", loaded=True, first=True), record("loaded", loaded=True), record("warm", batch=2),
        record("unknown family", family="sd9"), record("no steps", steps=None),
        record("busy neighbours", foreign_cpu=0.6), record("quiet neighbours", foreign_cpu=0.1),
        dataclasses.replace(record("failed"), status="error"),
    ])  # fmt: skip
    assert [(s.cold, s.load_s, s.batch) for s in samples[:3]] == [
        (True, 2.0, 1),
        (True, 2.0, 1),
        (False, 0.0, 2),
    ]
    assert [(s.disturbed, s.steady) for s in samples[2:]] == [(False, True), (True, False), (False, True)]
    warm = samples[2]
    assert (warm.sampler, warm.steps, warm.sampler_s, warm.overhead_s) == ("heun", 4, 1.5, 1.0)
    assert samples[1].overhead_s == pytest.approx(1.0)  # loading is not the rest of the prompt


def test_default_is_conservative_and_says_it_is_estimating() -> None:
    pred = SpeedModel(()).predict(Family.SDXL, 1024, 1024, 10, "euler")
    per_eval = DEFAULT_S_PER_STEP_MP * FAMILY_COST[Family.SDXL] * 1024 * 1024 / 1e6
    assert pred.sampler_s == pytest.approx(10 * per_eval)
    assert pred.seconds == pytest.approx(DEFAULT_OVERHEAD_S + 10 * per_eval)
    assert pred.estimating and "conservative default" in pred.basis


def test_five_warm_runs_fit_fixed_cost_and_cost_per_evaluation() -> None:
    model = SpeedModel(warm(512))
    pred = model.predict(Family.SD15, 512, 512, 6, "euler")
    assert not pred.estimating and pred.basis == "measured 5 sd15 runs at 512×512"
    assert pred.sampler_s == pytest.approx(0.3 + 0.1 * 6)  # the fixed part is not billed per step
    assert pred.seconds == pytest.approx(0.3 + 0.1 * 6 + 0.5)
    # a run slowed down by something else does not drag the fit
    noisy = SpeedModel([*warm(512, 6), run(512, 2, slower=5.0)])
    assert noisy.predict(Family.SD15, 512, 512, 6, "euler").sampler_s == pytest.approx(0.9)


def test_cold_and_disturbed_runs_and_loading_stay_out_of_the_fit() -> None:
    disturbed = dataclasses.replace(run(512, 8, slower=9.0), disturbed=True)
    history = [run(512, 4, cold=True, load_s=8.0, slower=3.0), disturbed, *warm(512)]
    model = SpeedModel(history)
    assert model.steady_runs(Family.SD15, 512, 512) == ESTIMATE_RUNS
    pred = model.predict(Family.SD15, 512, 512, 4, "euler")
    assert not pred.estimating
    assert pred.sampler_s == pytest.approx(0.7) and pred.seconds == pytest.approx(1.2)
    # the rest of a prompt is its time without sampling and without loading
    assert run(512, 4, load_s=8.0).overhead_s == pytest.approx(0.5)


def test_before_five_warm_runs_it_estimates_on_the_long_side() -> None:
    truth = SpeedModel(warm(512)).predict(Family.SD15, 512, 512, 4, "euler")
    # only the cold first run: that run as it was, loading included
    only_cold = SpeedModel([run(512, 4, cold=True, load_s=8.0, slower=3.0)])
    pred = only_cold.predict(Family.SD15, 512, 512, 4, "euler")
    assert pred.estimating and pred.basis.startswith("estimating (0 of 5 steady runs)")
    assert pred.seconds == pytest.approx(0.7 + 3.0 + 0.5 + 8.0)
    # a few warm runs: their fit with a margin (or the cold ones, when those are longer)
    history = [*warm(512, ESTIMATE_RUNS - 1)]
    pred = SpeedModel(history).predict(Family.SD15, 512, 512, 4, "euler")
    assert pred.estimating and "4 of 5 steady runs" in pred.basis
    assert pred.seconds == pytest.approx(truth.seconds * ESTIMATE_MARGIN)
    # the fifth warm run ends the estimate
    pred = SpeedModel([*history, run(512, 2)]).predict(Family.SD15, 512, 512, 4, "euler")
    assert not pred.estimating and pred.seconds == pytest.approx(truth.seconds)


def test_an_estimate_still_grows_with_the_steps() -> None:
    # the cold first run (2 steps, loading the model) took longer than the next one (5 steps)
    model = SpeedModel([run(64, 5), run(64, 2, cold=True, slower=3.0)])
    predicted = [model.predict(Family.SD15, 64, 64, steps, "euler").seconds for steps in (2, 3, 5)]
    assert predicted == sorted(predicted) and predicted[0] < predicted[-1]
    steps = {Tier.DRAFT: 2, Tier.STANDARD: 3, Tier.HIGH: 5}
    tiers = {t: SamplerPreset(n, 7.0, "euler", "normal", 64, 64) for t, n in steps.items()}
    assert choose(tiers, Family.SD15, 0.01, Quality.QUALITY, model).tier is Tier.DRAFT  # the fastest
    # equal predictions: the cheaper tier is the fastest
    flat = {t: SamplerPreset(4, 7.0, "euler", "normal", 64, 64) for t in Tier}
    assert choose(flat, Family.SD15, 0.01, Quality.QUALITY, model).tier is Tier.DRAFT


def test_evaluations_per_sampler_from_comfyui_names() -> None:
    assert evaluations_by_name("euler", 8) == 8
    assert evaluations_by_name("dpmpp_2m", 8) == 8
    assert evaluations_by_name("dpmpp_2m_sde", 8) == 8  # multistep: one call a step
    assert evaluations_by_name("dpmpp_2m_sde_heun_gpu", 8) == 8
    for two_stage in ("heun", "dpm_2", "dpm_2_ancestral", "dpmpp_sde", "dpmpp_sde_gpu", "dpmpp_2s_ancestral"):
        assert evaluations_by_name(two_stage, 8) == 15  # two a step, one on the last
    assert evaluations_by_name("seeds_3", 4) == 10
    assert evaluations_by_name("heun", 1) == 1


def test_sampler_cost_comes_from_its_model_evaluations() -> None:
    model = SpeedModel(warm(512))  # learnt from euler only
    assert model.predict(Family.SD15, 512, 512, 8, "heun").sampler_s == pytest.approx(0.3 + 0.1 * 15)
    assert model.predict(Family.SD15, 512, 512, 8, "dpmpp_2m").sampler_s == pytest.approx(0.3 + 0.1 * 8)
    # the node layer counts the evaluations with ComfyUI's samplers and hands them in
    counted = SpeedModel(warm(512), lambda sampler, steps: 3.0 * steps if sampler == "custom" else steps)
    assert counted.predict(Family.SD15, 512, 512, 4, "custom").sampler_s == pytest.approx(0.3 + 0.1 * 12)
    # history of a two-stage sampler is priced per evaluation too
    mixed = SpeedModel([*warm(512, 3), run(512, 3, sampler="heun"), run(512, 6, sampler="dpm_2")])
    assert mixed.predict(Family.SD15, 512, 512, 8, "euler").sampler_s == pytest.approx(0.3 + 0.1 * 8)


def test_a_batch_is_a_size_of_its_own() -> None:
    """A batch of b latents is priced like b× the pixels (one model call processes them all)."""
    model = SpeedModel([*warm(512), *warm(1024, fixed=0.5, per_eval=0.4, rest=2.0)])
    two = model.predict(Family.SD15, 512, 512, 4, "euler", batch=2)  # 2 × 512² pixels
    f = (2 * 512 * 512 - 512 * 512) / (1024 * 1024 - 512 * 512)
    expected = (0.3 + f * 0.2) + 4 * (0.1 + f * 0.3) + (0.5 + f * 1.5)
    assert two.estimating and two.seconds == pytest.approx(expected * ESTIMATE_MARGIN)
    assert "512×512×2" in two.basis
    # five runs of that batch: measured like any size
    batches = SpeedModel([*warm(512), *warm(512, batch=2, per_eval=0.15, rest=0.8)])
    pred = batches.predict(Family.SD15, 512, 512, 4, "euler", batch=2)
    assert not pred.estimating and pred.sampler_s == pytest.approx(0.3 + 0.15 * 4 * 2)
    assert pred.seconds == pytest.approx(0.3 + 0.15 * 4 * 2 + 0.8 * 2)
    assert batches.steady_runs(Family.SD15, 512, 512, 2) == ESTIMATE_RUNS


def test_sizes_are_interpolated_or_scaled_with_a_margin() -> None:
    model = SpeedModel([*warm(512), *warm(1024, fixed=0.5, per_eval=0.4, rest=1.5)])
    mid = 768  # between the two in pixel count
    f = (mid * mid - 512 * 512) / (1024 * 1024 - 512 * 512)
    pred = model.predict(Family.SD15, mid, mid, 10, "euler")
    expected = (0.3 + f * 0.2) + 10 * (0.1 + f * 0.3) + (0.5 + f * 1.0)
    assert pred.estimating and pred.seconds == pytest.approx(expected * ESTIMATE_MARGIN)
    assert "interpolated between measured sizes of ~512² and ~1024²" in pred.basis
    # beyond the largest: per pixel (the fixed part kept)
    big = model.predict(Family.SD15, 2048, 2048, 10, "euler")
    assert big.seconds == pytest.approx((0.5 + 10 * 0.4 * 4 + 1.5 * 4) * ESTIMATE_MARGIN)
    assert "scaled by pixel count" in big.basis
    # below the smallest: not scaled down (a smaller latent is rarely much faster)
    small = model.predict(Family.SD15, 256, 256, 10, "euler")
    assert small.seconds == pytest.approx((0.3 + 10 * 0.1 + 0.5) * ESTIMATE_MARGIN)


def test_other_families_carry_over_by_cost() -> None:
    model = SpeedModel(warm(512))
    flux = model.predict(Family.FLUX, 512, 512, 10, "euler")
    factor = FAMILY_COST[Family.FLUX] / FAMILY_COST[Family.SD15]
    assert flux.estimating and "no flux run measured" in flux.basis
    assert flux.seconds == pytest.approx(((0.3 + 0.1 * 10) * factor + 0.5) * ESTIMATE_MARGIN)


def test_size_key() -> None:
    assert size_key(512, 512) == size_key(520, 512) == size_key(512, 520)
    assert size_key(832, 1216) == size_key(1216, 832)
    assert len({size_key(s, s) for s in (64, 96, 128, 160)}) == 4


def test_on_a_noisy_history_it_beats_the_pixel_scaled_rule() -> None:
    """Sampler time = a fixed part + a part per evaluation that grows slower than the pixels; one
    run in five slowed down by other work. After five runs of each size the fit is within 15 %
    (median abs error), the naive rule (one rate per step and megapixel) is not."""
    import random

    rnd = random.Random(7)
    per_eval = {64: 0.08, 128: 0.12}  # not proportional to pixels (4×)

    def noisy(side: int, steps: int, sampler: str, batch: int = 1) -> SpeedSample:
        slower = rnd.uniform(1.0, 3.0) if rnd.random() < 0.2 else 0.0
        return run(side, steps, fixed=0.4, per_eval=per_eval[side] * rnd.uniform(0.95, 1.05), sampler=sampler,
                   batch=batch, slower=slower)  # fmt: skip

    history = [noisy(side, steps, "euler") for side in (64, 128) for steps in (2, 4, 8, 2, 4, 8)]
    model = SpeedModel(history)
    rate = sorted(s.sampler_s / s.steps / s.megapixels for s in history)[len(history) // 2]
    ours, naive = [], []
    for side, steps, sampler, batch in [(64, 4, "euler", 1), (128, 8, "euler", 1), (64, 3, "heun", 1),
                                        (128, 4, "dpm_2", 1), (64, 6, "euler", 1), (128, 2, "euler", 1)]:  # fmt: skip
        actual = run(side, steps, fixed=0.4, per_eval=per_eval[side], sampler=sampler, batch=batch).sampler_s
        ours.append(abs(model.predict(Family.SD15, side, side, steps, sampler, batch).sampler_s / actual - 1))
        naive.append(abs(rate * steps * side * side / 1e6 * batch / actual - 1))
    assert sorted(ours)[len(ours) // 2] < 0.15 < sorted(naive)[len(naive) // 2]


def test_chooser_picks_the_best_tier_that_fits() -> None:
    tiers = DEFAULT_TABLE[Family.SD15]  # 8/15/25 steps at 512/640/768
    speed = SpeedModel([*warm(512), *warm(640), *warm(768)])
    predicted = {
        t: speed.predict(Family.SD15, p.width, p.height, p.steps, p.sampler).seconds for t, p in tiers.items()
    }
    assert predicted[Tier.DRAFT] < predicted[Tier.STANDARD] < predicted[Tier.HIGH]

    big = choose(tiers, Family.SD15, predicted[Tier.HIGH] + 0.01, Quality.QUALITY, speed)
    assert big.tier is Tier.HIGH and big.predicted_s == pytest.approx(predicted[Tier.HIGH])
    assert "fits" in big.reason and "measured 5 sd15 runs" in big.reason
    assert not big.prediction.estimating
    mid = choose(tiers, Family.SD15, predicted[Tier.HIGH] - 0.01, Quality.QUALITY, speed)
    assert mid.tier is Tier.STANDARD
    # balanced keeps 20 % headroom: the same budget no longer fits HIGH
    budget = predicted[Tier.HIGH] / 0.9
    assert choose(tiers, Family.SD15, budget, Quality.QUALITY, speed).tier is Tier.HIGH
    assert choose(tiers, Family.SD15, budget, Quality.BALANCED, speed).tier is not Tier.HIGH
    # a batch of four no longer fits the budget of one
    assert choose(tiers, Family.SD15, budget, Quality.QUALITY, speed, batch=4).tier is not Tier.HIGH
    assert choose(tiers, Family.SD15, budget, Quality.QUALITY, speed, batch=4).prediction.estimating


def test_chooser_prices_a_two_stage_sampler_higher() -> None:
    tiers = {t: SamplerPreset(10, 7.0, "euler", "normal", 512, 512) for t in Tier}
    tiers[Tier.HIGH] = SamplerPreset(10, 7.0, "heun", "normal", 512, 512)
    speed = SpeedModel(warm(512))
    euler = speed.predict(Family.SD15, 512, 512, 10, "euler").seconds
    assert choose(tiers, Family.SD15, euler + 0.01, Quality.QUALITY, speed).tier is Tier.STANDARD


def test_chooser_falls_back_to_the_fastest_with_a_reason() -> None:
    speed = SpeedModel(warm(512))
    c = choose(DEFAULT_TABLE[Family.SD15], Family.SD15, 0.5, Quality.RELIABLE, speed)
    assert c.tier is Tier.DRAFT
    assert c.reason.startswith("no tier fits")
    with pytest.raises(InvalidRequest):
        choose(DEFAULT_TABLE[Family.SD15], Family.SD15, 0, Quality.QUALITY, speed)
    with pytest.raises(InvalidRequest):
        choose(DEFAULT_TABLE[Family.SD15], Family.SD15, float("nan"), Quality.QUALITY, speed)


def test_foreign_cpu_share_from_the_kernel_counters(tmp_path: Path) -> None:
    """The monitor's measure of busy neighbours (its own tier has no file of this task's)."""
    from podkit.backends.monitor import _CLK_TCK, ForeignCpu

    stat, now = tmp_path / "stat", [0.0]
    cpu = ForeignCpu(stat, clock=lambda: now[0])

    def ticks(busy_s: float) -> None:  # user nice system idle iowait irq softirq steal
        busy = round(busy_s * _CLK_TCK)
        stat.write_text(f"cpu  {busy} 0 0 1000 0 0 0 0 0 0\ncpu0 ...\n")

    ticks(100.0)
    cpu.reset()
    now[0] = 10.0  # 10 s later, others kept half the machine busy (this process: next to nothing)
    ticks(100.0 + 10.0 * (os.cpu_count() or 1) / 2)
    assert cpu.share() == pytest.approx(0.5, abs=0.05)
    stat.unlink()
    assert cpu.share() is None  # no counters: unknown


# ------------------------------------------------------------------------------------------------
# From the nodes' inputs to one preset (core/preset_resolve.py).

VOCABULARY = (SAMPLERS, SCHEDULERS)


def inputs(
    tier: str = "standard", family: str = AUTO, budget: float = 60.0, quality: str = "quality"
) -> PresetInputs:
    return PresetInputs(tier, family, budget, quality)


def test_a_fixed_tier_resolves_for_the_detected_or_the_chosen_family() -> None:
    book, speed = PresetBook(None), SpeedModel(warm(640))
    got = resolve(book, inputs(), detected=Family.SD15, vocabulary=VOCABULARY, speed=speed)
    assert (got.family, got.tier, got.preset) == (
        Family.SD15,
        Tier.STANDARD,
        DEFAULT_TABLE[Family.SD15][Tier.STANDARD],
    )
    assert got.prediction == speed.predict(Family.SD15, 640, 640, 15, "dpmpp_2m")
    assert got.reason.startswith("tier standard chosen; predicted") and "measured 5 sd15 runs" in got.reason
    chosen = resolve(book, inputs(family="sdxl"), detected=Family.SD15, vocabulary=VOCABULARY, speed=speed)
    assert chosen.family is Family.SDXL and chosen.preset.width == 1024


def test_a_latent_of_ones_own_sets_the_size_and_batch_predicted() -> None:
    speed = SpeedModel([*warm(512), *warm(512, batch=2)])
    got = resolve(PresetBook(None), inputs(tier="draft"), detected=Family.SD15, vocabulary=VOCABULARY,
                  speed=speed, size=(512, 384), batch=2)  # fmt: skip
    assert (got.preset.width, got.preset.height, got.batch) == (512, 384, 2)
    assert got.prediction == speed.predict(Family.SD15, 512, 384, 8, "dpm_fast", 2)
    assert got.annotation() == {
        "family": "sd15", "tier": "draft", "predicted_s": got.predicted_s,
        "predicted_sampler_s": got.prediction.sampler_s, "estimating": got.prediction.estimating,
        "steps": 8, "sampler": "dpm_fast", "width": 512, "height": 384, "batch": 2,
    }  # fmt: skip
    first, why = got.describe().split("\n")
    assert first.startswith("sd15 draft: 8 steps dpm_fast/normal cfg 5 512×384 ×2, ~") and why == got.reason


def test_tier_auto_asks_the_chooser_with_the_budget_and_quality() -> None:
    speed = SpeedModel([*warm(512), *warm(640), *warm(768)])
    high = speed.predict(Family.SD15, 768, 768, 25, "dpmpp_2m_sde").seconds
    book = PresetBook(None)
    got = resolve(
        book, inputs(AUTO, budget=high + 0.01), detected=Family.SD15, vocabulary=VOCABULARY, speed=speed
    )
    assert got.tier is Tier.HIGH and "fits" in got.reason
    balanced = inputs(AUTO, budget=high + 0.01, quality="balanced")
    assert (
        resolve(book, balanced, detected=Family.SD15, vocabulary=VOCABULARY, speed=speed).tier
        is not Tier.HIGH
    )
    with pytest.raises(InvalidRequest, match="time_budget_seconds"):
        resolve(book, inputs(AUTO, budget=0), detected=Family.SD15, vocabulary=VOCABULARY, speed=speed)


def test_the_table_is_checked_against_the_hosts_lists(tmp_path: Path) -> None:
    path = tmp_path / "presets.yaml"
    path.write_text("sd15:\n  draft: {sampler: lcm}\n")
    book = PresetBook(path)
    got = resolve(book, inputs("draft"), detected=Family.SD15, vocabulary=VOCABULARY, speed=SpeedModel(()))
    assert got.preset.sampler == "lcm"
    other_host = ([s for s in SAMPLERS if s != "lcm"], SCHEDULERS)
    with pytest.raises(ConfigError, match=r"sd15\.draft\.sampler: 'lcm' is not a ComfyUI sampler"):
        resolve(book, inputs("draft"), detected=Family.SD15, vocabulary=other_host, speed=SpeedModel(()))


def test_the_fingerprint_follows_the_choice_not_every_measurement(tmp_path: Path) -> None:
    path = tmp_path / "presets.yaml"
    book, few, more = PresetBook(path), SpeedModel(warm(512)), SpeedModel(warm(512, n=8))

    def fp(i: PresetInputs, speed: SpeedModel) -> str:
        return fingerprint(book, i, vocabulary=VOCABULARY, speed=speed)

    assert fp(inputs("draft"), few) == fp(inputs("draft", budget=5), more)  # a fixed tier: the table only
    assert fp(inputs("draft"), few) != fp(inputs("high"), few)
    assert fp(inputs(AUTO, budget=30), few) == fp(inputs(AUTO, budget=30), more)  # same picks
    assert fp(inputs(AUTO, budget=30), few) != fp(inputs(AUTO, budget=3000), few)  # other picks
    before = fp(inputs("draft"), few)
    path.write_text("sd15:\n  draft: {steps: 3}\n")
    assert fp(inputs("draft"), few) != before  # the presets file changed
