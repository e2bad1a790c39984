#!/usr/bin/env python3
"""Prepare the ComfyUI side of the test environment (run by scripts/setup; stdlib only).

One venv (PodKit's ``.venv``) runs both ComfyUI trees: torch/torchvision/torchaudio, the union of
the trees' requirements without the torch lines and without the three packages each tree pins to
its own release (frontend, workflow templates, embedded docs). Those three go into a per-tree
folder that the test harness puts on that tree's ``PYTHONPATH``, so each tree serves its own
pinned frontend. The newest frontend on the registry goes into a folder of its own, served with
``--front-end-root``.

Everything lands in ``.comfy/`` (ignored) and is described by ``.comfy/trees.json``, which
tests/comfy reads. A stamp of every requirement file involved makes a second run a no-op; a
changed file rebuilds what depends on it.

Trees: ``PODKIT_COMFY_TREES`` (``os.pathsep``-separated folders holding main.py), else every
``shared/comfyui/*/`` found beside the repo or above it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / ".comfy"
# Torch for both trees: these releases lie on the machine's disk (pip takes them from there);
# torchaudio is imported by ComfyUI 0.33 and installs beside torch 2.14.1.
TORCH = ["torch==2.14.1", "torchvision==0.29.1", "torchaudio==2.11.1"]
# Pinned per tree (their versions differ between trees, so they cannot share one venv).
PER_TREE = ("comfyui-frontend-package", "comfyui-workflow-templates", "comfyui-embedded-docs")
LATEST_FRONTEND = "comfyui-frontend-package"
_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def find_trees() -> list[Path]:
    raw = os.environ.get("PODKIT_COMFY_TREES", "").strip()
    if raw:
        return [Path(p).expanduser().resolve() for p in raw.split(os.pathsep) if p.strip()]
    for parent in [REPO, *REPO.parents]:
        shared = parent / "shared" / "comfyui"
        if shared.is_dir():
            return sorted(p.resolve() for p in shared.iterdir() if (p / "main.py").is_file())
    return []


def tree_version(tree: Path) -> str:
    text = (tree / "comfyui_version.py").read_text()
    m = re.search(r"__version__\s*=\s*[\"']([^\"']+)", text)
    if not m:
        raise SystemExit(f"{tree}/comfyui_version.py has no __version__")
    return m.group(1)


def requirement_lines(tree: Path) -> tuple[list[str], list[str]]:
    """(shared requirements, per-tree pins) of a tree's requirements.txt."""
    shared: list[str] = []
    pinned: list[str] = []
    for line in (tree / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        m = _NAME.match(line)
        if not m:
            continue
        name = m.group(1).lower().replace("_", "-")
        if name in ("torch", "torchvision", "torchaudio"):
            continue
        (pinned if name in PER_TREE else shared).append(line)
    return shared, pinned


def pip(python: Path, *args: str) -> None:
    cmd = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *args]
    print("   $", " ".join(cmd[3:]), flush=True)
    subprocess.run(cmd, check=True)


def digest(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def installed_version(site: Path, dist: str) -> str | None:
    pattern = dist.replace("-", "_") + "-*.dist-info"
    for info in site.glob(pattern):
        return info.name[len(dist) + 1 : -len(".dist-info")]
    return None


def build_site(python: Path, site: Path, pins: list[str], key: str) -> None:
    """``pip install --target`` into a fresh folder, swapped in whole (never half-built)."""
    stamp = site / ".podkit-stamp"
    if stamp.is_file() and stamp.read_text() == key:
        return
    tmp = site.with_name(site.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    pip(python, "--no-deps", "--target", str(tmp), *pins)
    (tmp / ".podkit-stamp").write_text(key)
    shutil.rmtree(site, ignore_errors=True)
    tmp.rename(site)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--python", type=Path, default=REPO / ".venv" / "bin" / "python")
    ap.add_argument("--latest-frontend", default=os.environ.get("PODKIT_LATEST_FRONTEND", "1.58.*"))
    args = ap.parse_args()
    python: Path = args.python

    trees = find_trees()
    if not trees:
        print("!! no ComfyUI tree found (set PODKIT_COMFY_TREES): the comfy tier will skip", file=sys.stderr)
        OUT.mkdir(exist_ok=True)
        (OUT / "trees.json").write_text(json.dumps({"trees": [], "latest_frontend": None}, indent=2))
        return 0
    OUT.mkdir(exist_ok=True)

    shared: list[str] = []
    per_tree: dict[Path, list[str]] = {}
    for tree in trees:
        common, pins = requirement_lines(tree)
        shared += [c for c in common if c not in shared]
        per_tree[tree] = pins

    key = digest(*TORCH, *shared, (REPO / "requirements.txt").read_text())
    stamp = OUT / "venv.stamp"
    if not (stamp.is_file() and stamp.read_text() == key):
        print("== ComfyUI packages in", python.parent.parent, flush=True)
        pip(python, *TORCH)
        # one resolve over every tree's requirements: the venv satisfies all of them at once
        pip(python, *shared, "-r", str(REPO / "requirements.txt"))
        stamp.write_text(key)

    records = []
    for tree in trees:
        version = tree_version(tree)
        site = OUT / f"site-{version}"
        build_site(python, site, per_tree[tree], digest(*per_tree[tree]))
        records.append(
            {
                "version": version,
                "path": str(tree),
                "site": str(site),
                "frontend": installed_version(site, "comfyui_frontend_package"),
            }
        )
    latest = OUT / "frontend-latest"
    spec = f"{LATEST_FRONTEND}=={args.latest_frontend}"
    build_site(python, latest, [spec], digest(spec))
    latest_record = {
        "version": installed_version(latest, "comfyui_frontend_package"),
        "root": str(latest / "comfyui_frontend_package" / "static"),
    }
    (OUT / "trees.json").write_text(
        json.dumps({"trees": records, "latest_frontend": latest_record}, indent=2)
    )
    for r in records:
        print(f"== ComfyUI {r['version']} (frontend {r['frontend']}): {r['path']}")
    print(f"== newest frontend {latest_record['version']}: {latest_record['root']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
