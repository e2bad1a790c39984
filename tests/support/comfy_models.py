"""The tiny random models of the tests/comfy tier, made once per session by ``make_tiny_models.py``.

The files are plain safetensors, so one installation's interpreter makes them for every tree.
``PODKIT_TEST_MODELS_CACHE`` keeps them between sessions (generating them takes ~15 s and ~780 MiB).
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from support.comfy_server import sanitized_env
from support.comfy_trees import ComfyInstall

MAKER = Path(__file__).resolve().parent / "make_tiny_models.py"


def models_dir(mktemp: Callable[[str], Path]) -> Path:
    """``PODKIT_TEST_MODELS_CACHE`` when set, else a fresh session temp dir (``mktemp("tiny_models")``)."""
    cache = os.environ.get("PODKIT_TEST_MODELS_CACHE", "").strip()
    out = Path(cache).expanduser().absolute() if cache else mktemp("tiny_models")
    out.mkdir(parents=True, exist_ok=True)
    return out


def make_tiny_models(maker: ComfyInstall, out: Path) -> Path:
    """Write checkpoints/, loras/, vae/ and manifest.json into ``out`` with ``maker``'s interpreter and
    checkout; fails the calling test with the script's output when it does not succeed."""
    cmd = [str(maker.python), str(MAKER), "--out", str(out), "--comfyui", str(maker.checkout)]
    t0 = time.monotonic()
    proc = subprocess.run(
        cmd,
        cwd=out,
        env=sanitized_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    if proc.returncode != 0:
        pytest.fail(
            f"make_tiny_models.py failed ({proc.returncode}) after {time.monotonic() - t0:.1f}s:\n"
            f"{(proc.stdout + proc.stderr)[-6000:]}",
            pytrace=False,
        )
    return out
