"""Training requests and the ai-toolkit config they become, checked against ai-toolkit's own example.

``EXAMPLE`` is the structure of ai-toolkit's ``config/examples/train_lora_flux_24gb.yaml`` (snapshot
of 2026-08-21): every key path PodKit's generated config must carry, with the example's value.
The values PodKit deliberately changes are listed in ``CHANGED`` with the reason.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from podkit.core.ai_toolkit import (
    build_config,
    config_yaml,
    last_progress,
    log_tail,
    parse_progress,
    split_output,
    step_saves,
)
from podkit.core.errors import Forbidden, InvalidRequest
from podkit.core.trainer_env import trainer_env, trainer_passthrough
from podkit.core.training import TrainingJob
from podkit.core.training_request import REQUEST_FIELDS, parse_training_request, resolve_base_model

P = "config.process[0]."
EXAMPLE: dict[str, Any] = {
    "job": "extension",
    "config.name": "my_first_flux_lora_v1",
    P + "type": "sd_trainer",
    P + "training_folder": "output",
    P + "device": "cuda:0",
    P + "network.type": "lora",
    P + "network.linear": 16,
    P + "network.linear_alpha": 16,
    P + "save.dtype": "float16",
    P + "save.save_every": 250,
    P + "save.max_step_saves_to_keep": 4,
    P + "save.push_to_hub": False,
    P + "datasets[0].folder_path": "/path/to/images/folder",
    P + "datasets[0].caption_ext": "txt",
    P + "datasets[0].caption_dropout_rate": 0.05,
    P + "datasets[0].shuffle_tokens": False,
    P + "datasets[0].cache_latents_to_disk": True,
    P + "datasets[0].resolution": [512, 768, 1024],
    P + "train.batch_size": 1,
    P + "train.steps": 2000,
    P + "train.gradient_accumulation_steps": 1,
    P + "train.train_unet": True,
    P + "train.train_text_encoder": False,
    P + "train.gradient_checkpointing": True,
    P + "train.noise_scheduler": "flowmatch",
    P + "train.optimizer": "adamw8bit",
    P + "train.lr": 1e-4,
    P + "train.ema_config.use_ema": True,
    P + "train.ema_config.ema_decay": 0.99,
    P + "train.dtype": "bf16",
    P + "model.name_or_path": "black-forest-labs/FLUX.1-dev",
    P + "model.is_flux": True,
    P + "model.quantize": True,
    P + "sample.sampler": "flowmatch",
    P + "sample.sample_every": 250,
    P + "sample.sample_start_step": 0,
    P + "sample.width": 1024,
    P + "sample.height": 1024,
    P + "sample.prompts": ["woman with red hair, playing chess at the park"],
    P + "sample.neg": "",
    P + "sample.seed": 42,
    P + "sample.walk_seed": True,
    P + "sample.guidance_scale": 4,
    P + "sample.sample_steps": 20,
    "meta.name": "[name]",
    "meta.version": "1.0",
}
#: Paths whose value PodKit sets from the request or the job (value compared in its own test).
FROM_REQUEST = {
    "config.name", P + "training_folder", P + "datasets[0].folder_path", P + "model.name_or_path",
    P + "sample.prompts",
}  # fmt: skip
#: Deliberate changes from the example.
CHANGED = {P + "train.ema_config.use_ema": False}  # EMA off so FLUX fits in 24 GB (the seed's finding)
#: Keys PodKit adds that the example has commented out or that ai-toolkit's newer configs carry.
ADDED = {P + "trigger_word", P + "train.disable_sampling", P + "model.arch", "meta.podkit_base_model"}


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a.b[0].c": leaf}`` for every leaf; lists of scalars stay leaves."""
    out: dict[str, Any] = {}
    if isinstance(node, dict):
        for k, v in node.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    elif isinstance(node, list) and node and all(isinstance(x, dict) for x in node):
        for i, v in enumerate(node):
            out.update(flatten(v, f"{prefix}[{i}]"))
    else:
        out[prefix] = node
    return out


def request(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"name": "my_lora", "dataset": {"url": "https://example.com/ds.zip"}}
    body.update(overrides)
    return body


def generated(body: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    req = parse_training_request(body)
    config = build_config(
        req,
        name_or_path="/volume/hub/flux",
        dataset_dir=tmp_path / "dataset",
        training_folder=tmp_path / "output",
    )
    # What ai-toolkit reads is the YAML text, so compare what the text loads back to.
    loaded = yaml.safe_load(config_yaml(config))
    assert loaded == config
    return loaded


def test_flux_config_matches_the_example_field_by_field(tmp_path: Path) -> None:
    config = generated(request(sample_prompts=["a [trigger] photo"], trigger_word="p3r5on"), tmp_path)
    flat = flatten(config)
    missing = sorted(set(EXAMPLE) - set(flat))
    assert missing == [], f"fields of the ai-toolkit example missing: {missing}"
    extra = sorted(set(flat) - set(EXAMPLE) - ADDED)
    assert extra == [], f"fields ai-toolkit's example does not have: {extra}"
    for path, value in EXAMPLE.items():
        if path in FROM_REQUEST:
            continue
        expected = CHANGED.get(path, value)
        assert flat[path] == expected, path
        assert type(flat[path]) is type(expected) or isinstance(expected, (int, float)), path
    assert list(config) == ["job", "config", "meta"]
    assert list(config["config"]["process"][0])[:3] == ["type", "training_folder", "device"]
    assert flat["config.name"] == "my_lora"
    assert flat[P + "training_folder"] == str(tmp_path / "output")
    assert flat[P + "datasets[0].folder_path"] == str(tmp_path / "dataset")
    assert flat[P + "model.name_or_path"] == "/volume/hub/flux"
    assert flat[P + "sample.prompts"] == ["a [trigger] photo"]
    assert flat[P + "trigger_word"] == "p3r5on"
    assert flat[P + "model.arch"] == "flux"
    assert "disable_sampling" not in config["config"]["process"][0]["train"]


def test_request_values_land_in_their_fields(tmp_path: Path) -> None:
    body = request(
        steps=1500, learning_rate=4e-4, rank=32, alpha=16, resolutions=[1024, 512], batch_size=2,
        caption_ext="caption", save_every=100, sample_every=0, optimizer="prodigy",
        sample_prompts=["x"],
    )  # fmt: skip
    p = generated(body, tmp_path)["config"]["process"][0]
    assert p["train"]["steps"] == 1500
    assert p["train"]["lr"] == 4e-4
    assert p["train"]["batch_size"] == 2
    assert p["train"]["optimizer"] == "prodigy"
    assert p["network"] == {"type": "lora", "linear": 32, "linear_alpha": 16}
    assert p["datasets"][0]["resolution"] == [512, 1024]
    assert p["datasets"][0]["caption_ext"] == "caption"
    assert p["save"]["save_every"] == 100
    # sample_every 0 disables sampling rather than sampling at step 0 forever
    assert p["train"]["disable_sampling"] is True


def test_no_prompts_disables_sampling_instead_of_using_example_prompts(tmp_path: Path) -> None:
    p = generated(request(), tmp_path)["config"]["process"][0]
    assert p["train"]["disable_sampling"] is True
    assert p["sample"]["prompts"] == []


@pytest.mark.parametrize(
    ("base", "model", "scheduler", "size", "guidance", "resolution"),
    [
        (
            "sdxl",
            {"name_or_path": "/volume/hub/flux", "arch": "sdxl", "is_xl": True, "quantize": False},
            "ddpm", 1024, 6.0, [1024],
        ),
        (
            "sd15",
            {"name_or_path": "/volume/hub/flux", "arch": "sd1", "quantize": False},
            "ddpm", 512, 6.0, [512],
        ),
    ],
)  # fmt: skip
def test_sdxl_and_sd15_change_the_model_block_like_ai_toolkit_ui(
    tmp_path: Path,
    base: str,
    model: dict[str, Any],
    scheduler: str,
    size: int,
    guidance: float,
    resolution: list[int],
) -> None:
    p = generated(request(base_model=base), tmp_path)["config"]["process"][0]
    assert p["model"] == model
    # ai-toolkit UI's sdxl/sd15 presets: ddpm for training and sampling (they must match), cfg 6
    assert p["train"]["noise_scheduler"] == scheduler
    assert p["sample"]["sampler"] == scheduler
    assert (p["sample"]["width"], p["sample"]["height"]) == (size, size)
    assert p["sample"]["guidance_scale"] == guidance
    assert p["datasets"][0]["resolution"] == resolution
    # the rest of the structure is the FLUX example's
    assert set(flatten(p)) >= {k[len(P) :] for k in EXAMPLE if k.startswith(P) and "model." not in k}


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (request(stepz=10), "unknown field(s): stepz"),
        (request(dataset={"url": "https://x/y.zip", "folder": "/x"}), "unknown dataset field(s): folder"),
        ({"dataset": {"url": "https://x/y.zip"}}, "name must be"),
        (request(name="../evil"), "name must be"),
        (request(name="lora.safetensors"), "name must be"),
        (request(name="a" * 65), "name must be"),
        ({"name": "x"}, "dataset is required"),
        (request(dataset="https://x/y.zip"), "dataset must be an object"),
        (request(dataset={}), "exactly one of url, uri or path"),
        (request(dataset={"url": "https://x/y.zip", "path": "/x"}), "exactly one of url, uri or path"),
        (request(dataset={"url": "file:///etc/passwd"}), "http(s) URL"),
        (request(dataset={"path": "relative/dir"}), "absolute path"),
        (request(dataset={"url": "https://x/y.zip", "sha256": "abc"}), "64 hex digits"),
        (request(dataset={"path": "/x", "sha256": "a" * 64}), "goes with dataset.url"),
        (request(base_model="sd3"), "neither a preset"),
        (request(base_model="sdxl", arch="flux"), "contradicts"),
        (request(arch="wan"), "arch must be one of"),
        (request(steps=0), "steps must be an integer between 1 and 100000"),
        (request(steps=True), "steps must be an integer"),
        (request(steps="100"), "steps must be an integer"),
        (request(learning_rate=0), "learning_rate"),
        (request(learning_rate=float("nan")), "learning_rate"),
        (request(rank=0), "rank must be"),
        (request(alpha=1000), "alpha must be"),
        (request(resolutions=[100]), "resolutions"),
        (request(resolutions=[1000]), "multiples of 32"),
        (request(resolutions=[]), "resolutions"),
        (request(batch_size=65), "batch_size"),
        (request(trigger_word="two\nlines"), "one line"),
        (request(trigger_word=""), "trigger_word must be a non-empty string"),
        (request(caption_ext="json"), "caption_ext must be one of"),
        (request(sample_prompts="one prompt"), "sample_prompts must be a list"),
        (request(sample_prompts=["x"] * 21), "at most 20"),
        (request(sample_prompts=[3]), "sample_prompts[] must be a non-empty string"),
        (request(optimizer="sgd"), "optimizer must be one of"),
        (request(upload_intermediate="yes"), "upload_intermediate must be true or false"),
    ],
)
def test_invalid_requests_name_the_field(body: dict[str, Any], needle: str) -> None:
    with pytest.raises(InvalidRequest) as e:
        parse_training_request(body)
    assert needle in str(e.value)


def test_defaults_and_round_trip() -> None:
    req = parse_training_request(request())
    assert (req.arch, req.base_model, req.steps, req.rank, req.alpha) == (
        "flux-dev",
        "flux-dev",
        2000,
        16,
        16,
    )
    assert req.resolutions == (512, 768, 1024)
    assert req.save_every == 250
    assert parse_training_request(req.to_wire()) == req
    assert set(req.to_wire()) == REQUEST_FIELDS
    # alpha follows rank unless given; save_every never exceeds a short run
    short = parse_training_request(request(rank=8, steps=100))
    assert (short.alpha, short.save_every) == (8, 100)
    custom = parse_training_request(request(base_model="/models/my-sdxl", arch="sdxl"))
    assert (custom.arch, custom.base_model) == ("sdxl", "/models/my-sdxl")
    assert parse_training_request(custom.to_wire()) == custom


def test_base_model_resolves_to_the_volume_hf_snapshot(tmp_path: Path) -> None:
    hub = tmp_path / "hub"
    repo = hub / "models--black-forest-labs--FLUX.1-dev"
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123\n")
    req = parse_training_request(request())
    assert resolve_base_model(req, hub_dirs=[hub], roots=[]) == str(repo / "snapshots" / "abc123")
    # not on the volume: the repo id, which ai-toolkit downloads with HF_TOKEN
    assert resolve_base_model(req, hub_dirs=[tmp_path / "empty"], roots=[]) == "black-forest-labs/FLUX.1-dev"
    inside = tmp_path / "models" / "mine"
    inside.mkdir(parents=True)
    custom = parse_training_request(request(base_model=str(inside)))
    assert resolve_base_model(custom, hub_dirs=[], roots=[tmp_path / "models"]) == str(inside)
    with pytest.raises(Forbidden):
        resolve_base_model(custom, hub_dirs=[], roots=[tmp_path / "other"])
    gone = parse_training_request(request(base_model=str(tmp_path / "models" / "gone")))
    with pytest.raises(InvalidRequest, match="does not exist"):
        resolve_base_model(gone, hub_dirs=[], roots=[tmp_path / "models"])


# ai-toolkit's bar: tqdm(desc=<name>) with BaseSDTrainProcess's postfix f"lr: {lr:.1e} loss: {loss:.3e}"
BAR = "my_lora:  12%|█▏        | 250/2000 [05:12<36:24,  1.25s/it, lr: 1.0e-04 loss: 4.123e-01]"


def test_progress_from_ai_toolkit_bar() -> None:
    p = parse_progress(BAR)
    assert p is not None
    assert (p.step, p.total, p.loss, p.lr) == (250, 2000, 0.4123, 1e-4)
    assert p.sec_per_step == 1.25
    assert p.eta_s == 36 * 60 + 24
    fast = parse_progress("x:  50%|█████     | 5/10 [00:02<00:02,  2.00it/s, lr: 4.0e-04 loss: 1.000e+00]")
    assert fast is not None and fast.sec_per_step == 0.5 and fast.loss == 1.0
    start = parse_progress("my_lora:   0%|          | 0/2000 [00:00<?, ?it/s]")
    assert start is not None and (start.step, start.loss, start.sec_per_step, start.eta_s) == (
        0,
        None,
        None,
        None,
    )
    hours = parse_progress("n:   1%|          | 10/1000 [00:10<1:02:03, 3.76s/it, lr: 1.0e-04 loss: nan]")
    assert hours is not None and hours.eta_s == 3723 and hours.loss is None
    assert parse_progress("Saving at step 250") is None
    assert (
        parse_progress("Loading checkpoint shards: 100%|██████████| 2/2 [00:01<00:00, 1.9it/s]") is not None
    )


def test_output_split_on_carriage_returns_and_tail_collapses_redraws() -> None:
    text = (
        "Loading\r"
        + "\r".join(BAR.replace("250/", f"{i}/") for i in (248, 249, 250))
        + "\n\nSaving at step 250\nmore"
    )
    lines, rest = split_output(text)
    assert lines[0] == "Loading" and rest == "more"
    assert len(lines) == 5
    tail = log_tail(text, 10)
    assert tail == ["Loading", BAR, "Saving at step 250", "more"]
    assert log_tail(text, 2) == ["Saving at step 250", "more"]


def test_last_progress_keeps_only_new_loss_points() -> None:
    redraws = [BAR.replace("250/", f"{i}/") for i in (248, 249, 249, 250)]
    progress, points = last_progress(["Loading", *redraws, "Saving at step 250"], after_step=248)
    assert progress is not None and progress.step == 250
    assert [step for step, _ in points] == [249, 250]  # 248 was seen before, 249 is redrawn once
    assert last_progress(["no bar here"], after_step=0) == (None, [])


def test_step_saves_follow_ai_toolkit_naming(tmp_path: Path) -> None:
    folder = tmp_path / "my_lora"
    folder.mkdir()
    for name in ("my_lora_000000500.safetensors", "my_lora_000000250.safetensors", "my_lora.safetensors",
                 "other_000000250.safetensors", "my_lora_250.safetensors"):  # fmt: skip
        (folder / name).write_bytes(b"x")
    assert [(s, p.name) for s, p in step_saves(tmp_path, "my_lora")] == [
        (250, "my_lora_000000250.safetensors"),
        (500, "my_lora_000000500.safetensors"),
    ]


def test_trainer_environment_is_an_allow_list() -> None:
    env = {
        "PATH": "/usr/bin", "HOME": "/root", "CUDA_VISIBLE_DEVICES": "0", "HF_TOKEN": "hf_secret",
        "R2_SECRET_ACCESS_KEY": "r2secret", "AWS_SECRET_ACCESS_KEY": "aws", "PODKIT_API_TOKEN": "tok",
        "CIVITAI_TOKEN": "civ", "SOME_OTHER": "x", "R2_LORA_BUCKET": "loras",
    }  # fmt: skip
    passed = trainer_passthrough(env, extra_names=["SOME_OTHER", "R2_SECRET_ACCESS_KEY", "PODKIT_API_TOKEN"])
    assert passed == {"PATH": "/usr/bin", "HOME": "/root", "CUDA_VISIBLE_DEVICES": "0", "SOME_OTHER": "x"}
    full = trainer_env(passed, hf_token="hf_secret", hf_home=Path("/vol/hf"))
    assert full["HF_TOKEN"] == "hf_secret"  # ai-toolkit needs it for gated FLUX.1-dev
    assert full["HF_HOME"] == "/vol/hf" and full["PYTHONUNBUFFERED"] == "1"
    assert not any(k.startswith(("R2_", "AWS_", "PODKIT_", "CIVITAI_")) for k in full)


def test_job_wire_redacts_signed_dataset_urls(tmp_path: Path) -> None:
    url = "https://bucket.example.com/ds.zip?X-Amz-Signature=deadbeef&token=hf_secret&v=2"
    req = parse_training_request(request(dataset={"url": url}))
    job = TrainingJob(id="j1", name=req.name, status="queued", request=req, job_dir=str(tmp_path),
                      created=1.0, updated=1.0)  # fmt: skip
    wire = json.dumps(job.to_wire())
    assert "deadbeef" not in wire and "hf_secret" not in wire and "v=2" in wire
    assert req.to_wire()["dataset"]["url"] == url  # the stored request keeps what the fetch needs
