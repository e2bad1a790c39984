"""Running a workflow that must succeed on a tests/comfy server, and reading its images back."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from PIL import Image
from support.workflows import Ids


def decode(data: bytes) -> tuple[np.ndarray, dict[str, str]]:
    """A PNG's RGB pixels (int16, so differences do not wrap) and its text chunks."""
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        return np.asarray(img.convert("RGB"), dtype=np.int16), dict(getattr(img, "text", {}))


def run_ok(server: Any, prompt: dict[str, Any], **kw: Any) -> Any:
    """Run ``prompt`` on ``server`` (a ``ComfyServer``); fails with the result's description unless ok."""
    result = server.client.run_workflow(prompt, timeout=600, **kw)
    assert result.ok, result.describe()
    return result


def pixels_of(server: Any, result: Any) -> np.ndarray:
    """The pixels of the first image the save node (``Ids.SAVE``) wrote."""
    return decode(result.image_bytes(Ids.SAVE)[0])[0]
