"""A LoRA training request: its fields, the model-family presets, and the paths it may name.

The request (``POST /podkit/training/jobs``) is validated field by field into a frozen
:class:`TrainingRequest`; unknown fields are refused so a typo is never silently ignored. A base
model is a preset name (resolved to a snapshot in a Hugging Face cache on the volume, else its repo
id) or an absolute path, which, like a dataset path, must lie inside the folders training may read.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

from .errors import Forbidden, InvalidRequest

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
