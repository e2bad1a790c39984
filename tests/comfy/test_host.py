"""PodKit knows which ComfyUI it runs in: ``GET /podkit/status`` reports the host, and the features
newer than 0.3.64 are detected on the host that has them and reported absent on the one that does not."""

from __future__ import annotations

from typing import Any

from podkit.core.host import version_tuple


def test_status_reports_the_host(comfy_server: Any, comfy_install: Any) -> None:
    comfy_server.require_podkit()
    host = comfy_server.client.get_json("/podkit/status")["host"]
    assert host["kind"] == "comfyui"
    assert host["comfyui_version"] == comfy_install.version
    assert host["supported"] is True
    if comfy_install.frontend:  # the tree's own pinned frontend, served from its site folder
        assert host["frontend_version"] == comfy_install.frontend
    # also under ComfyUI's /api alias, which the frontend's fetchApi uses
    assert comfy_server.client.get_json("/api/podkit/status")["host"] == host

    features = host["features"]
    newer = version_tuple(comfy_install.version) >= (0, 33, 0)
    assert features["remote_combo"] == {"present": True, "used": True}
    assert features["progress_text"] == {"present": True, "used": True}
    assert features["cache_provider"]["present"] is newer
    if not newer:
        assert features["cache_provider"]["note"] == "host too old for a generation cache"
    # 0.33 keeps node outputs under RAM pressure by default; 0.3.64 has only the classic cache
    assert host["execution_cache"] == ("ram" if newer else "classic")
