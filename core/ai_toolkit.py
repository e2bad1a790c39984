"""ai-toolkit's formats: its job config, the names of its saves, and the progress bar it draws.

:func:`build_config` turns a :class:`~podkit.core.training_request.TrainingRequest` into
ai-toolkit's own config format (the structure of its ``config/examples/train_lora_flux_24gb.yaml``:
``job: extension``, one ``sd_trainer`` process with ``network``, ``save``, ``datasets``, ``train``,
``model``, ``sample``, then ``meta``), with the model block switched for SDXL and SD1.5 the way
ai-toolkit's UI does. :func:`parse_progress` reads the tqdm bar ai-toolkit draws (``name:  12%|█▏
| 250/2000 [05:12<36:24,  1.25s/it, lr: 1.0e-04 loss: 4.123e-01]``), which arrives as
``\\r``-separated updates that :func:`split_output` cuts apart.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .training_request import TrainingRequest


def build_config(
    req: TrainingRequest, *, name_or_path: str, dataset_dir: Path, training_folder: Path
) -> dict[str, Any]:
    """ai-toolkit's job config for ``req`` (the structure of train_lora_flux_24gb.yaml).

    EMA is off (``ema_config.use_ema: false``) so FLUX fits in 24 GB, as the seed deployment found.
    Without sample prompts sampling is disabled instead of sampling ai-toolkit's example prompts.
    """
    preset = req.preset
    process: dict[str, Any] = {
        "type": "sd_trainer",
        "training_folder": str(training_folder),
        "device": "cuda:0",
    }
    if req.trigger_word:
        process["trigger_word"] = req.trigger_word
    process["network"] = {"type": "lora", "linear": req.rank, "linear_alpha": req.alpha}
    process["save"] = {
        "dtype": "float16",
        "save_every": req.save_every,
        "max_step_saves_to_keep": 4,
        "push_to_hub": False,
    }
    process["datasets"] = [
        {
            "folder_path": str(dataset_dir),
            "caption_ext": req.caption_ext,
            "caption_dropout_rate": 0.05,
            "shuffle_tokens": False,
            "cache_latents_to_disk": True,
            "resolution": list(req.resolutions),
        }
    ]
    train: dict[str, Any] = {
        "batch_size": req.batch_size,
        "steps": req.steps,
        "gradient_accumulation_steps": 1,
        "train_unet": True,
        "train_text_encoder": False,
        "gradient_checkpointing": True,
        "noise_scheduler": preset.noise_scheduler,
        "optimizer": req.optimizer,
        "lr": req.learning_rate,
        "ema_config": {"use_ema": False, "ema_decay": 0.99},
        "dtype": preset.dtype,
    }
    sampling = bool(req.sample_prompts) and req.sample_every > 0
    if not sampling:
        train["disable_sampling"] = True
    process["train"] = train
    process["model"] = {
        "name_or_path": name_or_path,
        "arch": preset.arch,
        **dict(preset.flags),
        "quantize": preset.quantize,
    }
    process["sample"] = {
        "sampler": preset.noise_scheduler,  # must match train.noise_scheduler
        "sample_every": req.sample_every if sampling else req.steps,
        "sample_start_step": 0,
        "width": preset.sample_size,
        "height": preset.sample_size,
        "prompts": list(req.sample_prompts),
        "neg": "",
        "seed": 42,
        "walk_seed": True,
        "guidance_scale": preset.guidance_scale,
        "sample_steps": 20,
    }
    return {
        "job": "extension",
        "config": {"name": req.name, "process": [process]},
        "meta": {"name": "[name]", "version": "1.0", "podkit_base_model": req.base_model},
    }


def config_yaml(config: Mapping[str, Any]) -> str:
    """The config as YAML text (keys in ai-toolkit's order)."""
    return str(yaml.safe_dump(dict(config), sort_keys=False, default_flow_style=False, allow_unicode=True))


def final_lora_path(training_folder: Path, name: str) -> Path:
    """Where ai-toolkit writes the finished LoRA: ``<training_folder>/<name>/<name>.safetensors``."""
    return training_folder / name / f"{name}.safetensors"


STEP_SAVE_RE = re.compile(r"^(?P<name>.+)_(?P<step>\d{9})\.safetensors$")


def step_saves(training_folder: Path, name: str) -> list[tuple[int, Path]]:
    """ai-toolkit's intermediate saves ``<name>_<step, 9 digits>.safetensors``, oldest first."""
    out: list[tuple[int, Path]] = []
    folder = training_folder / name
    if not folder.is_dir():
        return out
    for p in folder.iterdir():
        m = STEP_SAVE_RE.match(p.name)
        if m and m.group("name") == name:
            out.append((int(m.group("step")), p))
    return sorted(out)


_BAR_RE = re.compile(
    r"(?P<pct>\d{1,3})%\|[^|]*\|\s*(?P<n>\d+)/(?P<total>\d+)\s*"
    r"\[(?P<elapsed>[\d:]+)<(?P<remaining>[\d:?]+),\s*(?P<rate>[\d.]+|\?)(?P<unit>s/it|it/s)"
    r"(?:,\s*(?P<postfix>[^\]]*))?\]"
)
_LOSS_RE = re.compile(r"(?:^|\s)loss:\s*(?P<v>[-+0-9.eE]+|nan|inf)")
_LR_RE = re.compile(r"(?:^|\s)lr:\s*(?P<v>[-+0-9.eE]+)")


@dataclass(frozen=True)
class Progress:
    step: int
    total: int
    loss: float | None
    lr: float | None
    sec_per_step: float | None
    eta_s: float | None


def _seconds(text: str) -> float | None:
    """tqdm's ``MM:SS`` / ``H:MM:SS`` → seconds; None for ``?``."""
    if "?" in text:
        return None
    secs = 0
    for part in text.split(":"):
        if not part.isdigit():
            return None
        secs = secs * 60 + int(part)
    return float(secs)


def _float(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def parse_progress(line: str) -> Progress | None:
    """The last tqdm bar state in ``line``, or None when it holds none."""
    matches = list(_BAR_RE.finditer(line))
    if not matches:
        return None
    m = matches[-1]
    step, total = int(m.group("n")), int(m.group("total"))
    rate = _float(m.group("rate"))
    sec_per_step: float | None = None
    if rate is not None and rate > 0:
        sec_per_step = rate if m.group("unit") == "s/it" else 1.0 / rate
    eta = _seconds(m.group("remaining"))
    if eta is None and sec_per_step is not None:
        eta = max(0, total - step) * sec_per_step
    postfix = m.group("postfix") or ""
    loss_m, lr_m = _LOSS_RE.search(postfix), _LR_RE.search(postfix)
    return Progress(
        step=step,
        total=total,
        loss=_float(loss_m.group("v")) if loss_m else None,
        lr=_float(lr_m.group("v")) if lr_m else None,
        sec_per_step=sec_per_step,
        eta_s=eta,
    )


def last_progress(
    lines: Sequence[str], *, after_step: int
) -> tuple[Progress | None, list[tuple[int, float]]]:
    """The last bar state among ``lines``, and the (step, loss) points past ``after_step``, in order."""
    progress: Progress | None = None
    points: list[tuple[int, float]] = []
    for line in lines:
        p = parse_progress(line)
        if p is None:
            continue
        progress = p
        if p.loss is not None and p.step > (points[-1][0] if points else after_step):
            points.append((p.step, p.loss))
    return progress, points


def split_output(buffer: str) -> tuple[list[str], str]:
    """Split trainer output on ``\\n`` and tqdm's ``\\r``; returns (complete lines, remainder)."""
    parts = re.split(r"\r\n|\r|\n", buffer)
    return [p for p in parts[:-1] if p.strip()], parts[-1]


def is_progress_line(line: str) -> bool:
    return _BAR_RE.search(line) is not None


def log_tail(text: str, n: int) -> list[str]:
    """The last ``n`` lines of trainer output, with each run of bar redraws collapsed to its last."""
    lines, rest = split_output(text + "\n")
    out: list[str] = []
    for line in lines:
        if out and is_progress_line(line) and is_progress_line(out[-1]):
            out[-1] = line
        else:
            out.append(line)
    return out[-n:]
