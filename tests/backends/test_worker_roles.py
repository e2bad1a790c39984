"""The worker's role wiring (``worker/main.py``) without a ComfyUI: what a misconfigured role says."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from route_support import make_services

from podkit.core.errors import ConfigError
from podkit.runtime.cold_start import Phases
from podkit.worker.main import build_handler


def test_training_role_without_ai_toolkit_refuses_to_start(tmp_path: Path) -> None:
    # The training service always exists; without ai-toolkit it would refuse every job one by one,
    # so the worker refuses to start instead, naming the setting.
    svc = make_services(tmp_path)
    try:
        with pytest.raises(ConfigError, match="PODKIT_AI_TOOLKIT_DIR"):
            build_handler("training", {}, svc, Phases(out=io.StringIO()), None)
    finally:
        svc.close()
