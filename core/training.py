"""LoRA training rules: the job request, ai-toolkit's config, its progress lines, the job record.

The request (``POST /podkit/training/jobs``) is validated field by field into a frozen
:class:`TrainingRequest`; :func:`build_config` turns it into ai-toolkit's own config format (the
structure of its ``config/examples/train_lora_flux_24gb.yaml``: ``job: extension``, one
``sd_trainer`` process with ``network``, ``save``, ``datasets``, ``train``, ``model``, ``sample``,
then ``meta``), with the model block switched for SDXL and SD1.5 the way ai-toolkit's UI does.
:class:`ProgressParser` reads the tqdm bar ai-toolkit draws (``name:  12%|█▏   | 250/2000
[05:12<36:24,  1.25s/it, lr: 1.0e-04 loss: 4.123e-01]``), which arrives as ``\\r``-separated
updates.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

import yaml

from .errors import Forbidden, InvalidRequest
from .url_policy import redact_url

STATUSES = ("queued", "preparing", "running", "uploading", "done", "failed", "cancelled")
ACTIVE_STATUSES = ("queued", "preparing", "running", "uploading")
FINISHED_STATUSES = ("done", "failed", "cancelled")
GPU_POLICIES = ("shared", "exclusive")

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}[A-Za-z0-9_]$|^[A-Za-z0-9]$")
OPTIMIZERS = ("adamw8bit", "adamw", "adam8bit", "adafactor", "prodigy", "lion8bit")
CAPTION_EXTS = ("txt", "caption")

#: Request fields (anything else is rejected, so a typo is never silently ignored).
REQUEST_FIELDS = frozenset(
    {
        "name", "dataset", "base_model", "arch", "steps", "learning_rate", "rank", "alpha", "resolutions",
        "batch_size", "trigger_word", "caption_ext", "sample_prompts", "sample_every", "save_every",
        "optimizer", "upload_intermediate",
    }
)  # fmt: skip
DATASET_FIELDS = frozenset({"url", "uri", "path", "sha256"})


@dataclass(frozen=True)
class ArchPreset:
    """How one model family is trained (ai-toolkit UI's per-model defaults)."""

    arch: str  # ai-toolkit's ModelArch
    repo_id: str  # the Hugging Face repo the preset name stands for
    flags: Mapping[str, bool]  # the older is_flux/is_xl switches ai-toolkit still reads
    quantize: bool
    noise_scheduler: str
    guidance_scale: float
    sample_size: int
    resolutions: tuple[int, ...]
    dtype: str = "bf16"


#: Base-model names → presets. ``flux-dev`` follows train_lora_flux_24gb.yaml; ``sdxl`` and
#: ``sd15`` change the model block, scheduler and sample size as ai-toolkit's UI does.
ARCH_PRESETS: Mapping[str, ArchPreset] = MappingProxyType(
    {
        "flux-dev": ArchPreset(
            arch="flux",
            repo_id="black-forest-labs/FLUX.1-dev",
            flags=MappingProxyType({"is_flux": True}),
            quantize=True,
            noise_scheduler="flowmatch",
            guidance_scale=4.0,
            sample_size=1024,
            resolutions=(512, 768, 1024),
        ),
        "sdxl": ArchPreset(
            arch="sdxl",
            repo_id="stabilityai/stable-diffusion-xl-base-1.0",
            flags=MappingProxyType({"is_xl": True}),
            quantize=False,
            noise_scheduler="ddpm",
            guidance_scale=6.0,
            sample_size=1024,
            resolutions=(1024,),
        ),
        "sd15": ArchPreset(
            arch="sd1",
            repo_id="stable-diffusion-v1-5/stable-diffusion-v1-5",
            flags=MappingProxyType({}),
            quantize=False,
            noise_scheduler="ddpm",
            guidance_scale=6.0,
            sample_size=512,
            resolutions=(512,),
        ),
    }
)
#: ``arch`` request values → preset (for a base model given as a path).
ARCH_NAMES: Mapping[str, str] = MappingProxyType({"flux": "flux-dev", "sdxl": "sdxl", "sd15": "sd15"})


# --------------------------------------------------------------------------------------------------
# the request


@dataclass(frozen=True)
class DatasetSource:
    """Where the images come from: a zip URL, a bucket object, or a folder/zip on the volume."""

    kind: str  # "url" | "uri" | "path"
    value: str
    sha256: str | None = None

    def to_wire(self) -> dict[str, object]:
        wire: dict[str, object] = {self.kind: self.value}
        if self.sha256:
            wire["sha256"] = self.sha256
        return wire


@dataclass(frozen=True)
class TrainingRequest:
    """A validated training request (see :func:`parse_training_request`)."""

    name: str
    dataset: DatasetSource
    base_model: str  # a preset name or an absolute path
    arch: str  # preset key: "flux-dev" | "sdxl" | "sd15"
    steps: int = 2000
    learning_rate: float = 1e-4
    rank: int = 16
    alpha: int = 16
    resolutions: tuple[int, ...] = (512, 768, 1024)
    batch_size: int = 1
    trigger_word: str | None = None
    caption_ext: str = "txt"
    sample_prompts: tuple[str, ...] = ()
    sample_every: int = 250
    save_every: int = 250
    optimizer: str = "adamw8bit"
    upload_intermediate: bool = False

    @property
    def preset(self) -> ArchPreset:
        return ARCH_PRESETS[self.arch]

    def to_wire(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "dataset": self.dataset.to_wire(),
            "base_model": self.base_model,
            "arch": next(k for k, v in ARCH_NAMES.items() if v == self.arch),
            "steps": self.steps,
            "learning_rate": self.learning_rate,
            "rank": self.rank,
            "alpha": self.alpha,
            "resolutions": list(self.resolutions),
            "batch_size": self.batch_size,
            "trigger_word": self.trigger_word,
            "caption_ext": self.caption_ext,
            "sample_prompts": list(self.sample_prompts),
            "sample_every": self.sample_every,
            "save_every": self.save_every,
            "optimizer": self.optimizer,
            "upload_intermediate": self.upload_intermediate,
        }


def _int(body: Mapping[str, Any], name: str, default: int, lo: int, hi: int) -> int:
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise InvalidRequest(f"{name} must be an integer between {lo} and {hi}")
    return value


def _text(value: object, name: str, max_len: int) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidRequest(f"{name} must be a non-empty string")
    if len(value) > max_len or any(c in value for c in "\r\n\x00"):
        raise InvalidRequest(f"{name} must be one line of at most {max_len} characters")
    return value.strip()


def _dataset(value: object) -> DatasetSource:
    if not isinstance(value, dict):
        raise InvalidRequest('dataset must be an object: {"url": ...}, {"uri": ...} or {"path": ...}')
    unknown = sorted(set(value) - DATASET_FIELDS)
    if unknown:
        raise InvalidRequest(f"unknown dataset field(s): {', '.join(unknown)}; use url, uri, path, sha256")
    kinds = [k for k in ("url", "uri", "path") if k in value]
    if len(kinds) != 1:
        raise InvalidRequest("dataset needs exactly one of url, uri or path")
    kind = kinds[0]
    text = _text(value[kind], f"dataset.{kind}", 4096)
    sha = value.get("sha256")
    if sha is not None:
        if kind != "url" or not isinstance(sha, str) or not re.fullmatch(r"[0-9a-fA-F]{64}", sha):
            raise InvalidRequest("dataset.sha256 must be 64 hex digits and goes with dataset.url")
        sha = sha.lower()
    if kind == "url" and urlsplit(text).scheme not in ("http", "https"):
        raise InvalidRequest("dataset.url must be an http(s) URL")
    if kind == "path" and not Path(text).is_absolute():
        raise InvalidRequest("dataset.path must be an absolute path on the volume")
    return DatasetSource(kind, text, sha)


def parse_training_request(body: Mapping[str, Any]) -> TrainingRequest:
    """Validate a request body into a :class:`TrainingRequest`; defaults follow the preset.

    Raises:
        InvalidRequest: an unknown field or an invalid value; the message names the field.
    """
    unknown = sorted(set(body) - REQUEST_FIELDS)
    if unknown:
        raise InvalidRequest(
            f"unknown field(s): {', '.join(unknown)}; allowed: {', '.join(sorted(REQUEST_FIELDS))}"
        )
    name = body.get("name")
    if not isinstance(name, str) or not NAME_RE.match(name) or name.lower().endswith(".safetensors"):
        raise InvalidRequest(
            "name must be 1-64 letters, digits, '_', '-' or '.' (no extension); it names the LoRA file"
        )
    if "dataset" not in body:
        raise InvalidRequest("dataset is required")
    dataset = _dataset(body["dataset"])

    base = body.get("base_model", "flux-dev")
    if not isinstance(base, str) or not base.strip():
        raise InvalidRequest("base_model must be 'flux-dev', 'sdxl', 'sd15' or an absolute path")
    base = base.strip()
    arch_field = body.get("arch")
    if arch_field is not None and arch_field not in ARCH_NAMES:
        raise InvalidRequest(f"arch must be one of {', '.join(ARCH_NAMES)}")
    if base in ARCH_PRESETS:
        arch = base
        if arch_field is not None and ARCH_NAMES[arch_field] != arch:
            raise InvalidRequest(f"arch {arch_field!r} contradicts base_model {base!r}")
    elif Path(base).is_absolute() and "\x00" not in base:
        arch = ARCH_NAMES[arch_field] if arch_field is not None else "flux-dev"
    else:
        raise InvalidRequest(
            f"base_model {base[:80]!r} is neither a preset ({', '.join(ARCH_PRESETS)}) nor an absolute path"
        )
    preset = ARCH_PRESETS[arch]

    steps = _int(body, "steps", 2000, 1, 100_000)
    lr = body.get("learning_rate", 1e-4)
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or not 0 < lr < 1:
        raise InvalidRequest("learning_rate must be a number between 0 and 1 (e.g. 1e-4)")
    rank = _int(body, "rank", 16, 1, 256)
    alpha = _int(body, "alpha", rank, 1, 256)

    res = body.get("resolutions")
    if res is None:
        resolutions = preset.resolutions
    else:
        if (
            not isinstance(res, list)
            or not 1 <= len(res) <= 8
            or not all(isinstance(r, int) and not isinstance(r, bool) for r in res)
            or not all(256 <= r <= 4096 and r % 32 == 0 for r in res)
        ):
            raise InvalidRequest("resolutions must be 1-8 integers between 256 and 4096, multiples of 32")
        resolutions = tuple(sorted(set(res)))

    trigger = body.get("trigger_word")
    trigger = None if trigger is None else _text(trigger, "trigger_word", 64)
    caption_ext = body.get("caption_ext", "txt")
    if caption_ext not in CAPTION_EXTS:
        raise InvalidRequest(f"caption_ext must be one of {', '.join(CAPTION_EXTS)}")

    prompts_raw = body.get("sample_prompts", [])
    if not isinstance(prompts_raw, list) or len(prompts_raw) > 20:
        raise InvalidRequest("sample_prompts must be a list of at most 20 prompts")
    prompts = tuple(_text(p, "sample_prompts[]", 1000) for p in prompts_raw)
    sample_every = _int(body, "sample_every", 250, 0, 100_000)
    save_every = _int(body, "save_every", min(250, steps), 1, 100_000)
    optimizer = body.get("optimizer", "adamw8bit")
    if optimizer not in OPTIMIZERS:
        raise InvalidRequest(f"optimizer must be one of {', '.join(OPTIMIZERS)}")
    upload_intermediate = body.get("upload_intermediate", False)
    if not isinstance(upload_intermediate, bool):
        raise InvalidRequest("upload_intermediate must be true or false")
    return TrainingRequest(
        name=name,
        dataset=dataset,
        base_model=base,
        arch=arch,
        steps=steps,
        learning_rate=float(lr),
        rank=rank,
        alpha=alpha,
        resolutions=resolutions,
        batch_size=_int(body, "batch_size", 1, 1, 64),
        trigger_word=trigger,
        caption_ext=caption_ext,
        sample_prompts=prompts,
        sample_every=sample_every,
        save_every=save_every,
        optimizer=optimizer,
        upload_intermediate=upload_intermediate,
    )


# --------------------------------------------------------------------------------------------------
# paths the request may name


def confine(path: str | Path, roots: Sequence[Path], what: str) -> Path:
    """``path`` resolved (symlinks followed), if it lies inside one of ``roots``.

    Raises:
        Forbidden: outside every allowed root (the message lists the roots).
    """
    resolved = Path(path).resolve()
    for root in roots:
        r = root.resolve()
        if resolved == r or r in resolved.parents:
            return resolved
    allowed = ", ".join(str(r) for r in roots) or "none configured"
    raise Forbidden(f"{what} {path} is outside the folders training may read ({allowed})")


def hf_snapshot(hub_dir: Path, repo_id: str) -> Path | None:
    """The snapshot folder of ``repo_id`` in a Hugging Face hub cache (``refs/main``), if present."""
    repo = hub_dir / ("models--" + repo_id.replace("/", "--"))
    ref = repo / "refs" / "main"
    try:
        revision = ref.read_text().strip()
    except OSError:
        revision = ""
    if revision and (repo / "snapshots" / revision).is_dir():
        return repo / "snapshots" / revision
    snapshots = sorted((repo / "snapshots").glob("*")) if (repo / "snapshots").is_dir() else []
    return snapshots[-1] if snapshots else None


def resolve_base_model(req: TrainingRequest, *, hub_dirs: Sequence[Path], roots: Sequence[Path]) -> str:
    """What ai-toolkit's ``model.name_or_path`` becomes.

    A preset resolves to its snapshot in the volume's Hugging Face cache (so a pod does not
    download FLUX again), else to the repo id (ai-toolkit then downloads it with HF_TOKEN). A path
    must exist inside an allowed root.

    Raises:
        Forbidden: a path outside the allowed roots.
        InvalidRequest: a path that does not exist.
    """
    if req.base_model in ARCH_PRESETS:
        for hub in hub_dirs:
            snap = hf_snapshot(hub, req.preset.repo_id)
            if snap is not None:
                return str(snap)
        return req.preset.repo_id
    path = confine(req.base_model, roots, "base_model")
    if not path.exists():
        raise InvalidRequest(f"base_model {req.base_model} does not exist")
    return str(path)


# --------------------------------------------------------------------------------------------------
# ai-toolkit's config


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


# --------------------------------------------------------------------------------------------------
# the trainer's environment


#: Variables the trainer inherits from PodKit's environment (everything else is dropped).
TRAINER_ENV_ALLOW = frozenset(
    {
        "PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR",
        "TERM", "SHELL", "LD_LIBRARY_PATH", "CUDA_HOME", "CUDA_PATH", "CUDA_VISIBLE_DEVICES",
        "CUDA_DEVICE_ORDER", "NVIDIA_VISIBLE_DEVICES", "NVIDIA_DRIVER_CAPABILITIES",
        "PYTORCH_CUDA_ALLOC_CONF",
        "HF_HOME", "HF_HUB_CACHE", "HF_HUB_OFFLINE", "HF_HUB_ENABLE_HF_TRANSFER", "HF_XET_HIGH_PERFORMANCE",
        "HF_HUB_DISABLE_XET", "TRANSFORMERS_CACHE", "TORCH_HOME", "XDG_CACHE_HOME", "SSL_CERT_FILE",
        "REQUESTS_CA_BUNDLE", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
    }
)  # fmt: skip
#: Never passed, even when named in PODKIT_TRAINER_ENV: PodKit's own and the storage credentials.
TRAINER_ENV_DENY_PREFIXES = ("R2_", "AWS_", "PODKIT_", "CIVITAI_")


def trainer_passthrough(env: Mapping[str, str], extra_names: Iterable[str] = ()) -> dict[str, str]:
    """The part of ``env`` a trainer may see: the allow-list plus ``extra_names``, minus secrets."""
    names = TRAINER_ENV_ALLOW | {n.strip() for n in extra_names if n.strip()}
    return {
        k: v
        for k, v in env.items()
        if k in names and not k.startswith(TRAINER_ENV_DENY_PREFIXES) and k != "HF_TOKEN"
    }


def trainer_env(
    passthrough: Mapping[str, str], *, hf_token: str | None, hf_home: Path | None
) -> dict[str, str]:
    """The trainer's whole environment: the passthrough, HF_TOKEN, unbuffered output."""
    env = dict(passthrough)
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    if hf_token:
        env["HF_TOKEN"] = hf_token
    if hf_home is not None:
        env.setdefault("HF_HOME", str(hf_home))
    env["PYTHONUNBUFFERED"] = "1"  # progress lines reach the log as they happen
    env["NO_ALBUMENTATIONS_UPDATE"] = "1"
    return env


# --------------------------------------------------------------------------------------------------
# progress


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


def downsample(series: Sequence[tuple[int, float]], max_points: int) -> list[tuple[int, float]]:
    """Every k-th point (always the last) so a long run's loss curve stays small on the wire."""
    if len(series) <= max_points:
        return list(series)
    k = math.ceil(len(series) / max_points)
    out = list(series[::k])
    if out[-1] != series[-1]:
        out.append(series[-1])
    return out


# --------------------------------------------------------------------------------------------------
# the job record


@dataclass(frozen=True)
class TrainingJob:
    """One training job as the state database keeps it."""

    id: str
    name: str
    status: str
    request: TrainingRequest
    job_dir: str
    created: float
    updated: float
    step: int = 0
    total_steps: int = 0
    loss: float | None = None
    sec_per_step: float | None = None
    eta_s: float | None = None
    error: str | None = None
    lora_uri: str | None = None
    lora_etag: str | None = None
    lora_sha256: str | None = None
    lora_bytes: int | None = None
    dataset: Mapping[str, object] | None = None
    base_model_path: str | None = None
    pid: int | None = None
    proc_start: str | None = None
    attempts: int = 0
    next_attempt: float | None = None
    finished: float | None = None
    intermediate: tuple[str, ...] = field(default_factory=tuple)

    @property
    def training_folder(self) -> Path:
        return Path(self.job_dir) / "output"

    @property
    def final_path(self) -> Path:
        return final_lora_path(self.training_folder, self.name)

    @property
    def config_path(self) -> Path:
        return Path(self.job_dir) / "config.yaml"

    @property
    def log_path(self) -> Path:
        return Path(self.job_dir) / "train.log"

    @property
    def finished_status(self) -> bool:
        return self.status in FINISHED_STATUSES

    def with_progress(self, p: Progress, now: float) -> TrainingJob:
        return replace(
            self,
            step=p.step,
            total_steps=p.total,
            loss=p.loss if p.loss is not None else self.loss,
            sec_per_step=p.sec_per_step,
            eta_s=p.eta_s,
            updated=now,
        )

    def _public_request(self) -> dict[str, Any]:
        """The request as stored, with credential-like parts of a dataset URL (signatures) redacted."""
        wire = self.request.to_wire()
        if "url" in wire["dataset"]:
            wire["dataset"] = {**wire["dataset"], "url": redact_url(wire["dataset"]["url"])}
        return wire

    def to_wire(self) -> dict[str, object]:
        """The job as routes and ``podkit.training`` events show it (no paths outside the job)."""
        ds = self.dataset or {}
        return {
            "id": self.id,
            "name": self.name,
            "status": self.status,
            "step": self.step,
            "total_steps": self.total_steps or self.request.steps,
            "loss": self.loss,
            "speed": 1.0 / self.sec_per_step if self.sec_per_step else None,  # steps per second
            "eta": self.eta_s,
            "sec_per_step": self.sec_per_step,
            "eta_s": self.eta_s,
            "error": self.error,
            "lora_uri": self.lora_uri,
            "lora_etag": self.lora_etag,
            "lora_sha256": self.lora_sha256,
            "lora_bytes": self.lora_bytes,
            "intermediate_uris": list(self.intermediate),
            "dataset": {
                "images": ds.get("images"),
                "captions": ds.get("captions"),
                "missing_captions": ds.get("missing_captions"),
            },
            "base_model": self.request.base_model,
            "request": self._public_request(),
            "created": self.created,
            "updated": self.updated,
            "finished": self.finished,
        }


def request_from_wire(data: Mapping[str, Any]) -> TrainingRequest:
    """Rebuild a stored request (it was valid when it was stored)."""
    return parse_training_request(data)
