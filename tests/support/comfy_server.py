"""One ComfyUI process for a tree (``support.comfy_trees.ComfyInstall``), with its own dirs and port.

A ``ComfyServer`` has its own temp root (output/input/temp/user dirs, SQLite db, PodKit dirs, log)
that survives ``stop()``/``start()``, so a restart sees the same state: ``.url``, ``.client``,
``.start()``, ``.stop()``, ``.restart()``, ``.log_text()``, ``.log_mark()``/``.log_since(mark)``,
``.wait_for_log()``, ``.podkit_import_error()``/``.require_podkit()``, ``.podkit_dirs``,
``.output_dir``/``.input_dir``, ``.proc``. PODKIT_CACHE_DIR/STATE_DIR/LOCAL_STORE_DIR/VOLUME_DIR
default to folders in the root.

ComfyUI never gets the parent's AWS_*, R2_*, PODKIT_* or HF_TOKEN variables (``sanitized_env``);
pass the ones a test needs through ``env=`` (None as a value unsets a default). The repo is loaded
as the custom node ``podkit`` through a ``custom_nodes:`` entry of the extra_model_paths.yaml (a temp
folder holding a symlink ``podkit`` → repo root), with ``--disable-all-custom-nodes
--whitelist-custom-nodes podkit``, so nothing is written into the ComfyUI checkout.

``LIVE`` lists the servers running now, ``ALL`` every server made in this process (the tests/comfy
conftest puts their logs in failure reports); an atexit hook stops what is still running.
Imported as ``support.comfy_server`` (tests/ on ``sys.path``), like ``support.comfy_client``.
"""

from __future__ import annotations

import atexit
import json
import os
import re
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from rgw import free_ports, port_is_free
from support.comfy_client import ComfyClient
from support.comfy_trees import ComfyInstall

from podkit.runtime.comfy_process import stop_process_group

REPO = Path(__file__).resolve().parents[2]

# Never inherited by the ComfyUI child: real credentials and PodKit settings of the developer's shell.
DROPPED_ENV_PREFIXES = ("AWS_", "R2_", "PODKIT_")
DROPPED_ENV = {"HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME"}
PODKIT_DIR_VARS = {
    "PODKIT_CACHE_DIR": "cache",
    "PODKIT_STATE_DIR": "state",
    "PODKIT_LOCAL_STORE_DIR": "store",
    "PODKIT_VOLUME_DIR": "volume",
}


def free_port() -> int:
    return free_ports(1)[0]


def sanitized_env(extra: dict[str, Any] | None = None) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(DROPPED_ENV_PREFIXES) and k not in DROPPED_ENV
    }
    env.update(
        {
            "PYTHONUNBUFFERED": "1",
            # keep the ComfyUI checkout (and the repo) free of __pycache__ folders
            "PYTHONDONTWRITEBYTECODE": "1",
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "DO_NOT_TRACK": "1",
            "AWS_EC2_METADATA_DISABLED": "true",
        }
    )
    for k, v in (extra or {}).items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = str(v)
    return env


LIVE: list[ComfyServer] = []  # running now
ALL: list[ComfyServer] = []  # made this session


class ComfyServerError(RuntimeError):
    pass


class ComfyServer:
    """One ComfyUI process (restartable) with its own dirs under ``root``."""

    def __init__(
        self,
        install: ComfyInstall,
        models_dir: Path,
        root: Path,
        *,
        env: dict[str, Any] | None = None,
        args: list[str] | tuple[str, ...] = (),
        name: str = "comfy",
        podkit: bool = True,
        extra_model_paths: dict[str, list[str | Path] | str | Path] | None = None,
        start_timeout: float | None = None,
    ) -> None:
        self.install = install
        self.models_dir = Path(models_dir)
        self.root = Path(root)
        self.name = name
        self.podkit = podkit
        self.extra_env = dict(env or {})
        self.extra_args = [str(a) for a in args]
        self.start_timeout = start_timeout or float(os.environ.get("PODKIT_COMFY_START_TIMEOUT", "240"))
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.start_seconds: list[float] = []

        self.output_dir = self.root / "output"
        self.input_dir = self.root / "input"
        self.temp_root = self.root / "temp"  # ComfyUI uses <this>/temp and wipes it on start
        self.user_dir = self.root / "user"
        self.custom_nodes_dir = self.root / "custom_nodes"
        self.podkit_root = self.root / "podkit"
        self.db_path = self.root / "comfy.db"
        self.log_path = self.root / "server.log"
        self.extra_model_paths_path = self.root / "extra_model_paths.yaml"
        for d in (
            self.output_dir,
            self.input_dir,
            self.temp_root,
            self.user_dir / "default",
            self.custom_nodes_dir,
        ):
            d.mkdir(parents=True, exist_ok=True)
        settings = self.user_dir / "default" / "comfy.settings.json"
        if not settings.exists():
            settings.write_text(json.dumps({"Comfy.TutorialCompleted": True}))
        if podkit:
            link = self.custom_nodes_dir / "podkit"
            if not link.is_symlink():
                link.symlink_to(REPO, target_is_directory=True)
        self._write_extra_model_paths(extra_model_paths or {})
        ALL.append(self)

    # ---- configuration -------------------------------------------------------------------------

    @property
    def podkit_dirs(self) -> dict[str, Path]:
        """Default PodKit folders (env var → path), all inside this server's root."""
        return {var: self.podkit_root / sub for var, sub in PODKIT_DIR_VARS.items()}

    def _write_extra_model_paths(self, extra: dict[str, Any]) -> None:
        folders: dict[str, list[str]] = {
            "checkpoints": [str(self.models_dir / "checkpoints")],
            "loras": [str(self.models_dir / "loras")],
            "vae": [str(self.models_dir / "vae")],
            "custom_nodes": [str(self.custom_nodes_dir)],
        }
        for key, value in extra.items():
            values = value if isinstance(value, (list, tuple)) else [value]
            folders.setdefault(key, []).extend(str(v) for v in values)
        # JSON is valid YAML; multi-folder values use ComfyUI's newline-separated form
        config = {"podkit_tests": {k: "\n".join(v) for k, v in folders.items()}}
        self.extra_model_paths_path.write_text(json.dumps(config, indent=2) + "\n")

    def env(self) -> dict[str, str]:
        defaults: dict[str, Any] = {var: str(path) for var, path in self.podkit_dirs.items()}
        # boto3 must not find the developer's ~/.aws files either
        defaults["AWS_CONFIG_FILE"] = str(self.root / "no-aws-config")
        defaults["AWS_SHARED_CREDENTIALS_FILE"] = str(self.root / "no-aws-credentials")
        if self.install.site is not None:  # the tree's own pinned frontend packages
            defaults["PYTHONPATH"] = str(self.install.site)
        return sanitized_env({**defaults, **self.extra_env})

    def command(self) -> list[str]:
        cmd = [
            str(self.install.python),
            "main.py",
            "--cpu",
            "--listen",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--disable-api-nodes",
            "--preview-method",
            "none",
            "--user-directory",
            str(self.user_dir),
            "--output-directory",
            str(self.output_dir),
            "--temp-directory",
            str(self.temp_root),
            "--input-directory",
            str(self.input_dir),
            "--database-url",
            f"sqlite:///{self.db_path}",
            "--extra-model-paths-config",
            str(self.extra_model_paths_path),
            "--disable-all-custom-nodes",
        ]
        if self.podkit:
            cmd += ["--whitelist-custom-nodes", "podkit"]
        return cmd + self.extra_args

    # ---- lifecycle -----------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def client(self) -> ComfyClient:
        return ComfyClient(self.url)

    def is_running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float | None = None, *, _retry_port: bool = True) -> ComfyServer:
        if self.is_running():
            return self
        clash = self.install.checkout / "custom_nodes" / "podkit"
        if self.podkit and (clash.exists() or clash.is_symlink()):
            raise ComfyServerError(
                f"{clash} exists: ComfyUI would load it as well as the repo (both are whitelisted as "
                "'podkit'); remove it, the harness loads the repo through extra_model_paths.yaml"
            )
        if not port_is_free(self.port):
            self.port = free_port()
        self.starts += 1
        for path in self.podkit_dirs.values():
            path.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as fh:
            stamp = time.strftime("%H:%M:%S")
            fh.write(
                f"===== podkit harness: start #{self.starts} at {stamp}, port {self.port} =====\n".encode()
            )
            fh.write(("===== " + " ".join(self.command()) + "\n").encode())
        t0 = time.monotonic()
        log = open(self.log_path, "ab")  # the child keeps its own descriptor; ours is closed after spawn
        try:
            self.proc = subprocess.Popen(
                self.command(),
                cwd=self.install.checkout,
                env=self.env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # own process group: stop() reaches anything it spawned
            )
        finally:
            log.close()
        LIVE.append(self)
        try:
            self._wait_ready(t0, timeout or self.start_timeout)
        except ComfyServerError:
            self.stop()
            # lost a race for the port (another process took it between our check and the bind)
            if _retry_port and "address already in use" in self.log_text(current=True):
                self.port = free_port()
                return self.start(timeout, _retry_port=False)
            raise
        except BaseException:
            self.stop()
            raise
        self.start_seconds.append(time.monotonic() - t0)
        with open(self.log_path, "ab") as fh:
            fh.write(f"===== podkit harness: ready after {self.start_seconds[-1]:.1f}s =====\n".encode())
        return self

    def _wait_ready(self, t0: float, timeout: float) -> None:
        assert self.proc is not None
        while True:
            rc = self.proc.poll()
            if rc is not None:
                raise ComfyServerError(
                    f"ComfyUI exited with code {rc} during startup (port {self.port} in use?)\n"
                    + self.log_tail()
                )
            try:
                with urllib.request.urlopen(self.url + "/system_stats", timeout=5) as resp:  # noqa: S310
                    stats = json.loads(resp.read())
                break
            except (urllib.error.URLError, OSError, ValueError):
                pass
            if time.monotonic() - t0 > timeout:
                raise ComfyServerError(f"ComfyUI did not answer within {timeout:.0f}s\n{self.log_tail()}")
            time.sleep(0.25)
        # A stale server on the same port would answer too: make sure it is ours.
        argv = " ".join(stats.get("system", {}).get("argv", []))
        if str(self.user_dir) not in argv:
            raise ComfyServerError(f"another server answers on port {self.port}: argv {argv!r}")
        with urllib.request.urlopen(self.url + "/object_info", timeout=120) as resp:  # noqa: S310
            if resp.status != 200:
                raise ComfyServerError(f"GET /object_info -> {resp.status}")
            resp.read()
        if not self.is_running():
            raise ComfyServerError(f"ComfyUI exited right after answering\n{self.log_tail()}")

    def stop(self, timeout: float = 20) -> int | None:
        """terminate → kill the server's process group; returns the exit code (None if not started)."""
        proc, self.proc = self.proc, None
        if self in LIVE:
            LIVE.remove(self)
        return stop_process_group(proc, timeout) if proc is not None else None

    def restart(self, timeout: float | None = None) -> ComfyServer:
        self.stop()
        return self.start(timeout)

    def __enter__(self) -> ComfyServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.is_running() else "stopped"
        return f"<ComfyServer {self.name} {self.url} {state} root={self.root}>"

    # ---- logs ----------------------------------------------------------------------------------

    def log_text(self, current: bool = False) -> str:
        """The whole log (every start), or only the current/last start's part."""
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        if current:
            idx = text.rfind("===== podkit harness: start #")
            text = text[idx:] if idx >= 0 else text
        return text

    def log_mark(self) -> int:
        """An offset for ``log_since``: take one before an action, read what it logged afterwards."""
        try:
            return self.log_path.stat().st_size
        except FileNotFoundError:
            return 0

    def log_since(self, mark: int) -> str:
        with open(self.log_path, "rb") as fh:
            fh.seek(mark)
            return fh.read().decode(errors="replace")

    def log_tail(self, lines: int = 60) -> str:
        tail = self.log_text().splitlines()[-lines:]
        return f"--- last {len(tail)} lines of {self.log_path} ---\n" + "\n".join(tail)

    def wait_for_log(self, pattern: str, *, since: int = 0, timeout: float = 30) -> re.Match[str]:
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            m = rx.search(self.log_since(since))
            if m:
                return m
            if time.monotonic() > deadline:
                raise AssertionError(f"{pattern!r} not in the log within {timeout}s\n{self.log_tail()}")
            time.sleep(0.2)

    def podkit_import_error(self) -> str | None:
        """The traceback and message if ComfyUI failed to import the podkit package in the current
        start, else None. (ComfyUI only logs import failures and starts anyway.)"""
        text = self.log_text(current=True)
        pkg = str(self.custom_nodes_dir / "podkit")
        if not re.search(rf"IMPORT FAILED\)?: {re.escape(pkg)}$", text, re.M):
            return None
        end = text.find(f"Cannot import {pkg} module")
        if end < 0:
            return "podkit: IMPORT FAILED (see the log)"
        end = text.find("\n", end)
        start = text.rfind("Traceback (most recent call last):", 0, end)
        return text[max(start, 0) : end if end >= 0 else None]

    def require_podkit(self) -> None:
        """Fail the calling test with ComfyUI's traceback when the podkit package did not import."""
        err = self.podkit_import_error()
        if err is not None:
            pytest.fail(f"ComfyUI could not import podkit:\n{err}", pytrace=False)


@atexit.register
def _stop_leftovers() -> None:  # backstop for interrupted sessions
    for srv in list(LIVE):
        srv.stop(timeout=5)
