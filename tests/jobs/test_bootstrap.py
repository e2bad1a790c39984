"""``python <repo> bootstrap <manifest>`` in a real subprocess against a real HTTP server."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from http_server import FaultServer, fault_server
from safetensors_support import LORA_KEYS, VAE_KEYS, safetensors_bytes

ROOT = Path(__file__).resolve().parents[2]
MiB = 2**20


def bootstrap(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PODKIT_VOLUME_DIR": "",
        "PODKIT_STORE": "local",
        "PODKIT_LOCAL_STORE_DIR": str(tmp_path / "store"),
        "PODKIT_CACHE_DIR": str(tmp_path / "cache"),
        "PODKIT_STATE_DIR": str(tmp_path / "state"),
        "PODKIT_URL_ALLOW_PRIVATE": "1",
    }
    return subprocess.run(
        [sys.executable, str(ROOT), "bootstrap", *args], env=env, capture_output=True, text=True, timeout=120
    )


@pytest.fixture
def server() -> FaultServer:
    with fault_server() as srv:
        yield srv  # type: ignore[misc]


def test_bootstrap_places_skips_forces_and_reports(tmp_path: Path, server: FaultServer) -> None:
    lora = safetensors_bytes(LORA_KEYS, 3 * MiB, 1)
    vae = safetensors_bytes(VAE_KEYS, 2 * MiB, 2)
    server.add("/style.safetensors", lora)
    server.add("/ae.safetensors", vae)
    manifest = tmp_path / "pod.yaml"
    manifest.write_text(
        f"loras:\n  - url: {server.url('/style.safetensors')}\n    dest: loras/flux/style.safetensors\n"
        f"models:\n  - {server.url('/ae.safetensors')}\n"
    )
    models = tmp_path / "models"
    server.throttle_bps = 2 * MiB  # slow enough for progress lines
    first = bootstrap(tmp_path, str(manifest), "--models-dir", str(models))
    assert first.returncode == 0, first.stdout + first.stderr
    assert (models / "loras/flux/style.safetensors").read_bytes() == lora
    assert (models / "vae/ae.safetensors").read_bytes() == vae
    assert "2 of 2 items in place" in first.stdout and "%" in first.stdout
    assert "\x1b[" not in first.stdout  # not a terminal: plain lines

    server.throttle_bps = None
    sent = server.bytes_sent
    again = bootstrap(tmp_path, str(manifest), "--models-dir", str(models))
    assert again.returncode == 0 and again.stdout.count("already present") == 2
    assert server.bytes_sent == sent

    forced = bootstrap(tmp_path, str(manifest), "--models-dir", str(models), "--force", "ae.safetensors")
    assert forced.returncode == 0, forced.stdout + forced.stderr
    assert server.bytes_sent == sent + len(vae) and forced.stdout.count("already present") == 1


def test_bootstrap_exit_codes(tmp_path: Path, server: FaultServer) -> None:
    server.add("/ok.safetensors", safetensors_bytes(LORA_KEYS, MiB))
    manifest = tmp_path / "m.json"
    manifest.write_text(
        '{"loras": ["%s", "%s"]}' % (server.url("/ok.safetensors"), server.url("/missing.safetensors"))  # noqa: UP031
    )
    models = tmp_path / "models"
    failed = bootstrap(tmp_path, str(manifest), "--models-dir", str(models))
    assert failed.returncode == 1
    assert "1 of 2 items in place" in failed.stdout and "FAILED missing.safetensors" in failed.stdout
    assert "404" in failed.stdout and (models / "loras/ok.safetensors").is_file()

    bad = tmp_path / "bad.yaml"
    bad.write_text("loras:\n  - url: file:///etc/passwd\n")
    broken = bootstrap(tmp_path, str(bad))
    assert (
        broken.returncode == 2 and "only http and https" in broken.stderr and "Traceback" not in broken.stderr
    )
    unknown = bootstrap(tmp_path, str(manifest), "--force", "nothing.bin")
    assert unknown.returncode == 2 and "no manifest item has that name" in unknown.stderr
    missing = bootstrap(tmp_path, str(tmp_path / "nope.yaml"))
    assert missing.returncode == 2 and "cannot read manifest" in missing.stderr
