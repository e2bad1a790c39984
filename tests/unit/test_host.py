"""The host record /podkit/status reports: version parsing and the supported floor."""

from __future__ import annotations

import pytest

from podkit.core.host import MIN_COMFYUI, STANDALONE, HostFeature, HostInfo, version_tuple


@pytest.mark.parametrize(
    ("text", "expected"),
    [("0.3.64", (0, 3, 64)), ("0.33.0", (0, 33, 0)), ("1.2", (1, 2, 0)), ("0.38.1+local7", (0, 38, 1))],
)
def test_version_tuple(text: str, expected: tuple[int, ...]) -> None:
    assert version_tuple(text) == expected


def test_supported_compares_versions_not_strings() -> None:
    # "0.33.0" < "0.3.64" as strings; as versions it is newer
    assert HostInfo("comfyui", comfyui_version="0.33.0").supported is True
    assert HostInfo("comfyui", comfyui_version=MIN_COMFYUI).supported is True
    assert HostInfo("comfyui", comfyui_version="0.3.63").supported is False
    assert HostInfo("comfyui").supported is None
    assert STANDALONE.supported is None


def test_wire_form_lists_features_with_their_use() -> None:
    host = HostInfo(
        "comfyui",
        comfyui_version="0.3.64",
        frontend_version="1.27.10",
        execution_cache="classic",
        features={
            "remote_combo": HostFeature(present=True, used=True),
            "cache_provider": HostFeature(present=False, note="host too old"),
        },
    )
    wire = host.to_wire()
    assert wire["features"] == {
        "cache_provider": {"present": False, "used": False, "note": "host too old"},
        "remote_combo": {"present": True, "used": True},
    }
    assert wire["min_comfyui"] == MIN_COMFYUI and wire["supported"] is True
    assert host.uses("remote_combo") and not host.uses("cache_provider") and not host.uses("absent")
