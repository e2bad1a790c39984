"""Preset table, override-file validation, family detection and the time-budget chooser."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from podkit.core.errors import ConfigError, InvalidRequest
from podkit.core.presets import (
    DEFAULT_OVERHEAD_S,
    DEFAULT_S_PER_STEP_MP,
    DEFAULT_TABLE,
    FAMILY_COST,
    Family,
    PresetBook,
    Quality,
    SamplerPreset,
    SpeedModel,
    SpeedSample,
    Tier,
    choose,
    family_from_class_names,
    merge_overrides,
    parse_overrides,
    resolution_bucket,
    validate_table,
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


def sample(family: Family, side: int, steps: int, s_per_step: float, overhead: float = 1.0) -> SpeedSample:
    sampler_s = s_per_step * steps
    return SpeedSample(family, side, side, steps, sampler_s, sampler_s + overhead)


def test_speed_model_default_is_conservative_and_explained() -> None:
    pred = SpeedModel(()).predict(Family.SDXL, 1024, 1024, 10)
    expected = DEFAULT_OVERHEAD_S + DEFAULT_S_PER_STEP_MP * FAMILY_COST[Family.SDXL] * 10 * 1024 * 1024 / 1e6
    assert pred.seconds == pytest.approx(expected)
    assert "conservative default" in pred.basis


def test_speed_model_same_bucket_then_scaled_by_pixels() -> None:
    model = SpeedModel([sample(Family.SD15, 512, 10, 0.2), sample(Family.SD15, 512, 20, 0.2)])
    same = model.predict(Family.SD15, 512, 512, 15)
    assert same.seconds == pytest.approx(1.0 + 0.2 * 15)
    assert "at ~512²" in same.basis
    bigger = model.predict(Family.SD15, 1024, 1024, 15)
    assert bigger.seconds == pytest.approx(1.0 + 0.2 * 15 * 4)  # 4× the pixels
    assert "scaled by pixel count" in bigger.basis
    # an exact-bucket measurement wins over a scaled one
    model = SpeedModel([sample(Family.SD15, 512, 10, 0.2), sample(Family.SD15, 1024, 10, 1.6)])
    assert model.predict(Family.SD15, 1024, 1024, 10).seconds == pytest.approx(1.0 + 16.0)


def test_speed_model_interpolates_between_measured_sizes() -> None:
    # per step: 0.1 s at 512², 0.4 s at 1024²; overhead 1 s and 3 s
    model = SpeedModel([sample(Family.SD15, 512, 10, 0.1, 1.0), sample(Family.SD15, 1024, 10, 0.4, 3.0)])
    mid_side = 832  # its own bucket, between the two in pixel count
    mp = mid_side * mid_side / 1e6
    f = (mp - 0.262144) / (1.048576 - 0.262144)
    pred = model.predict(Family.SD15, mid_side, mid_side, 10)
    assert pred.seconds == pytest.approx(1.0 + f * 2.0 + 10 * (0.1 + f * 0.3))
    assert "interpolated between measured sd15 runs at ~512² and ~1024²" in pred.basis
    # outside the measured sizes: the nearest one scaled by pixel count, its overhead kept
    big = model.predict(Family.SD15, 2048, 2048, 10)
    assert big.seconds == pytest.approx(3.0 + 10 * 0.4 * 4)
    # a noisy run does not move a bucket's median much
    noisy = SpeedModel([sample(Family.SD15, 512, 10, 0.1), sample(Family.SD15, 512, 10, 0.1),
                        sample(Family.SD15, 512, 10, 5.0)])  # fmt: skip
    assert noisy.predict(Family.SD15, 512, 512, 10).seconds == pytest.approx(1.0 + 1.0)


def test_speed_model_separates_a_sampler_calls_fixed_cost_from_its_steps() -> None:
    def run(steps: int, sampler_s: float) -> SpeedSample:
        return SpeedSample(Family.SD15, 512, 512, steps, sampler_s, sampler_s + 0.5)

    # sampler time = 1 s + 0.5 s per step; one run slowed down by something else
    runs = [run(2, 2.0), run(4, 3.0), run(8, 5.0), run(4, 3.0), run(2, 9.0)]
    pred = SpeedModel(runs).predict(Family.SD15, 512, 512, 6)
    assert pred.seconds == pytest.approx(0.5 + 1.0 + 0.5 * 6)
    # per-step billing would charge the fixed cost to every step: 2 steps ≠ a quarter of 8
    assert SpeedModel(runs).predict(Family.SD15, 512, 512, 2).seconds == pytest.approx(0.5 + 1.0 + 1.0)


def test_speed_model_carries_other_families_over_by_cost() -> None:
    model = SpeedModel([sample(Family.SD15, 512, 10, 0.2)])
    flux = model.predict(Family.FLUX, 512, 512, 10)
    assert flux.seconds == pytest.approx(1.0 + 0.2 * 10 * FAMILY_COST[Family.FLUX] / FAMILY_COST[Family.SD15])
    assert "no flux run measured" in flux.basis


def test_resolution_bucket() -> None:
    assert resolution_bucket(512, 512) == 512
    assert resolution_bucket(832, 1216) == 1024
    assert resolution_bucket(64, 64) == 128


def test_chooser_picks_the_best_tier_that_fits() -> None:
    tiers = DEFAULT_TABLE[Family.SD15]  # 8/15/25 steps at 512/640/768
    # 0.1 s per step at 512² (scaled by pixels), 1 s overhead
    speed = SpeedModel([sample(Family.SD15, 512, 10, 0.1)])
    predicted = {t: speed.predict(Family.SD15, p.width, p.height, p.steps).seconds for t, p in tiers.items()}
    assert predicted[Tier.DRAFT] < predicted[Tier.STANDARD] < predicted[Tier.HIGH]

    big = choose(tiers, Family.SD15, predicted[Tier.HIGH] + 0.01, Quality.QUALITY, speed)
    assert big.tier is Tier.HIGH and big.predicted_s == pytest.approx(predicted[Tier.HIGH])
    assert "fits" in big.reason and "measured 1 sd15" in big.reason
    mid = choose(tiers, Family.SD15, predicted[Tier.HIGH] - 0.01, Quality.QUALITY, speed)
    assert mid.tier is Tier.STANDARD
    # balanced keeps 20 % headroom: the same budget no longer fits HIGH
    budget = predicted[Tier.HIGH] / 0.9
    assert choose(tiers, Family.SD15, budget, Quality.QUALITY, speed).tier is Tier.HIGH
    assert choose(tiers, Family.SD15, budget, Quality.BALANCED, speed).tier is not Tier.HIGH


def test_chooser_falls_back_to_the_fastest_with_a_reason() -> None:
    speed = SpeedModel([sample(Family.SD15, 512, 10, 0.1)])
    c = choose(DEFAULT_TABLE[Family.SD15], Family.SD15, 0.5, Quality.RELIABLE, speed)
    assert c.tier is Tier.DRAFT
    assert c.reason.startswith("no tier fits")
    with pytest.raises(InvalidRequest):
        choose(DEFAULT_TABLE[Family.SD15], Family.SD15, 0, Quality.QUALITY, speed)
    with pytest.raises(InvalidRequest):
        choose(DEFAULT_TABLE[Family.SD15], Family.SD15, float("nan"), Quality.QUALITY, speed)
