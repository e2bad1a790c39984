"""The trainer's environment: what a training subprocess may inherit, and the GPU policy names.

Both are configuration (``PODKIT_TRAINER_ENV``, ``PODKIT_TRAINING_GPU_POLICY``) that
:mod:`~podkit.core.settings` validates once, and rules the training service applies when it starts
a trainer, so they live here, below both, instead of in the training domain.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

#: ``PODKIT_TRAINING_GPU_POLICY`` values: train beside generation, or wait for the host's queue.
GPU_POLICIES = ("shared", "exclusive")

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
