"""Runs the panel's JavaScript unit tests (``node --test tests/js``) as part of the pytest run."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


def test_panel_modules_under_node() -> None:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: the panel's JS unit tests (tests/js/*.test.mjs) did not run")
    version = subprocess.run([node, "--version"], capture_output=True, text=True, check=True).stdout.strip()
    if int(version.lstrip("v").split(".")[0]) < 20:
        pytest.skip(f"node {version} is too old for `node --test` on ES modules (need 20 or later)")
    files = sorted(str(p.relative_to(REPO)) for p in HERE.glob("*.test.mjs"))
    assert files, "no tests/js/*.test.mjs found"
    proc = subprocess.run([node, "--test", *files], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"node --test failed:\n{proc.stdout[-8000:]}\n{proc.stderr[-4000:]}"
    assert "# fail 0" in proc.stdout, proc.stdout[-4000:]


def test_no_test_or_node_only_code_under_js() -> None:
    """ComfyUI imports every .js under js/ in the browser: no tests, no Node built-ins there."""
    offenders = []
    for path in sorted((REPO / "js").rglob("*")):
        if path.is_dir():
            continue
        rel = path.relative_to(REPO)
        if path.suffix in {".mjs", ".cjs", ".ts"} or ".test." in path.name or path.name.endswith("_test.js"):
            offenders.append(f"{rel}: not a browser module")
        elif path.suffix == ".js":
            text = path.read_text(encoding="utf-8")
            for needle in ('from "node:', "require(", "process.env", "from 'node:"):
                if needle in text:
                    offenders.append(f"{rel}: contains {needle!r}")
    assert not offenders, "\n".join(offenders)
