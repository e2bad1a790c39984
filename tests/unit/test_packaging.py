"""Packaging rules: light imports, requirements kept equal to pyproject, registry metadata."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[2]
HEAVY = {"torch", "comfy", "comfy_api", "folder_paths", "server", "boto3", "botocore", "PIL", "numpy"}

PROBE = r"""
import importlib, json, sys
sys.path.insert(0, sys.argv[1] + "/tests/support")
from podkit_import import register_package
register_package()
for name in sys.argv[2:]:
    importlib.import_module(name)
print(json.dumps(sorted({m.split(".")[0] for m in sys.modules})))
"""


def loaded_after(*modules: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(ROOT), *modules], capture_output=True, text=True, check=True
    ).stdout
    return set(json.loads(out))


@pytest.mark.parametrize(
    "modules",
    [(), ("podkit.core.model_cache", "podkit.core.loras", "podkit.core.outbox", "podkit.core.saving"),
     ("podkit.server_routes",),
     tuple(f"podkit.core.{p.stem}" for p in sorted((ROOT / "core").glob("*.py")) if p.stem != "__init__")],
    ids=["root", "core-services", "routes", "every-core-module"],
)  # fmt: skip
def test_imports_stay_light(modules: tuple[str, ...]) -> None:
    heavy = HEAVY & loaded_after(*modules)
    assert not heavy, f"importing {modules or 'the package root'} pulled in {sorted(heavy)}"


def test_root_defines_no_v1_mappings() -> None:
    import podkit

    assert not hasattr(podkit, "NODE_CLASS_MAPPINGS"), "V1 mappings would make ComfyUI skip comfy_entrypoint"
    assert podkit.WEB_DIRECTORY == "./js" and callable(podkit.comfy_entrypoint)


def _names(reqs: list[str]) -> list[str]:
    return sorted(r.strip() for r in reqs if r.strip() and not r.strip().startswith("#"))


def test_requirements_match_pyproject() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert _names((ROOT / "requirements.txt").read_text().splitlines()) == _names(project["dependencies"])
    dev = (ROOT / "requirements-dev.txt").read_text().splitlines()
    assert _names(dev) == _names(project["optional-dependencies"]["dev"])
    assert not any(r.lower().startswith("torch") for r in project["dependencies"]), "ComfyUI provides torch"


def test_registry_metadata() -> None:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    comfy = data["tool"]["comfy"]
    assert comfy["PublisherId"] and comfy["DisplayName"] == "PodKit"
    assert comfy["requires-comfyui"].startswith(">=")
    # the floor the registry states is the one /podkit/status checks the host against
    from podkit.core.host import MIN_COMFYUI

    assert comfy["requires-comfyui"] == f">={MIN_COMFYUI}"
    assert "comfyui" not in data["project"]["name"].lower()
    assert (ROOT / "js").is_dir() and not list((ROOT / "js").rglob("*.test.js"))
