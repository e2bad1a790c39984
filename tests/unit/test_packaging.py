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
     ("podkit.server_routes",)],
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


#: Which top-level folders each layer may import from within the package (besides itself).
LAYERS = {
    "core": set(),
    "backends": {"core"},
    "jobs": {"core", "backends"},
}


def _package_imports(path: Path) -> set[str]:
    """The package's top-level folders or modules that ``path`` imports (relative or ``podkit.``)."""
    import ast

    folder = path.relative_to(ROOT).parts[:-1]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.ImportFrom):
            continue
        if node.level:
            full = [*folder[: len(folder) - node.level + 1], *(node.module.split(".") if node.module else [])]
            out |= {full[0]} if full else {_root_name(a.name) for a in node.names}
        elif (node.module or "").startswith("podkit."):
            out.add((node.module or "").split(".")[1])
    return out


def _root_name(name: str) -> str:
    """``from .. import name``: a module or folder of the package, or "" for the root's own names."""
    return name if (ROOT / name).is_dir() or (ROOT / f"{name}.py").is_file() else ""


@pytest.mark.parametrize("layer", sorted(LAYERS))
def test_layers_import_downward(layer: str) -> None:
    """core imports nothing above it; backends only core; jobs core and backends."""
    allowed = LAYERS[layer] | {layer, ""}  # "": the import-safe root (``__version__``)
    bad = {
        str(p.relative_to(ROOT)): sorted(found - allowed)
        for p in (ROOT / layer).rglob("*.py")
        if (found := _package_imports(p)) - allowed
    }
    assert not bad, f"{layer}/ imports layers above it: {bad}"
