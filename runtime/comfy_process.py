"""ComfyUI with PodKit as a child process: the cold-start path the worker and the pod share.

``ComfyProcess`` starts ``main.py`` of a ComfyUI checkout with its interpreter on 127.0.0.1 and a
free port, in its own process group (so a stop reaches everything it spawned), waits until it
answers, and reports whether it is still alive. It never writes into the checkout: when PodKit is
not installed in the checkout's ``custom_nodes/`` it is loaded through an extra ``custom_nodes``
folder (a link to this package) named in an ``--extra-model-paths-config`` file in PodKit's work
folder, which also works for read-only images. ComfyUI's writable folders (output, input, temp,
user, its database) default to that work folder too, so the worker knows where outputs land.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..core.errors import PodKitError

logger = logging.getLogger(__name__)
PODKIT_ROOT = Path(__file__).resolve().parent.parent


class ComfyStartError(PodKitError):
    """ComfyUI could not be started or did not answer."""

    http_status = 503
    code = "comfy_unavailable"


@dataclass(frozen=True)
class ComfyLaunch:
    """How to start ComfyUI: from ``COMFYUI_PATH`` (+ ``COMFYUI_PYTHON``) and PodKit's work folder."""

    checkout: Path
    python: Path
    work_dir: Path
    host: str = "127.0.0.1"
    port: int = 0  # 0: a free port
    extra_args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    #: True (worker): ComfyUI's output/input/temp/user folders and database live in ``work_dir``;
    #: False (pod): ComfyUI keeps its own (the user browses its outputs there)
    own_dirs: bool = True

    @classmethod
    def from_env(
        cls,
        env: Mapping[str, str],
        work_dir: Path,
        extra_args: Sequence[str] = (),
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        own_dirs: bool = True,
    ) -> ComfyLaunch:
        raw = env.get("COMFYUI_PATH", "").strip()
        if not raw:
            raise ComfyStartError("COMFYUI_PATH is not set: point it at the ComfyUI folder holding main.py")
        checkout = Path(raw).expanduser().absolute()
        if not (checkout / "main.py").is_file():
            raise ComfyStartError(f"COMFYUI_PATH={checkout} has no main.py")
        return cls(
            checkout=checkout,
            python=comfy_python(checkout, env),
            work_dir=work_dir,
            host=host,
            port=int(env.get("PODKIT_COMFY_PORT") or 0) if port is None else port,
            extra_args=tuple(extra_args),
            env=dict(env),
            own_dirs=own_dirs,
        )


def comfy_python(checkout: Path, env: Mapping[str, str]) -> Path:
    """``COMFYUI_PYTHON``, else a venv beside or inside the checkout, else this interpreter."""
    explicit = env.get("COMFYUI_PYTHON", "").strip()
    if explicit:
        return Path(explicit).expanduser()
    for cand in (checkout / "venv", checkout.parent / "venv", checkout / ".venv"):
        python = cand / "bin" / "python"
        if python.is_file() and os.access(python, os.X_OK):
            return python
    return Path(sys.executable)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def podkit_installed_in(checkout: Path) -> bool:
    """True when the checkout's ``custom_nodes/`` already holds this PodKit (any folder name)."""
    folder = checkout / "custom_nodes"
    if not folder.is_dir():
        return False
    mine = PODKIT_ROOT.resolve()
    return any(p.resolve() == mine for p in folder.iterdir() if p.is_dir())


class ComfyProcess:
    """One ComfyUI child process with PodKit loaded."""

    def __init__(self, launch: ComfyLaunch) -> None:
        self.launch = launch
        loopback = launch.host in ("0.0.0.0", "::", "")  # noqa: S104 - the address ComfyUI listens on
        self.port = launch.port or free_port("127.0.0.1" if loopback else launch.host)
        self.proc: subprocess.Popen[bytes] | None = None
        self.dirs = {name: launch.work_dir / name for name in ("output", "input", "temp", "user")}

    @property
    def url(self) -> str:
        """Where this machine reaches it (loopback when it listens on every address)."""
        host = "127.0.0.1" if self.launch.host in ("0.0.0.0", "::", "") else self.launch.host  # noqa: S104
        return f"http://{host}:{self.port}"

    @property
    def output_dir(self) -> Path | None:
        """ComfyUI's output folder when PodKit chose it (``own_dirs``), else None."""
        return self.dirs["output"] if self.launch.own_dirs else None

    @property
    def input_dir(self) -> Path | None:
        return self.dirs["input"] if self.launch.own_dirs else None

    def command(self) -> list[str]:
        launch = self.launch
        cmd = [str(launch.python), "main.py", "--listen", launch.host, "--port", str(self.port)]
        given = set(launch.extra_args)
        if launch.own_dirs:
            for name, path in self.dirs.items():
                if f"--{name}-directory" not in given:
                    cmd += [f"--{name}-directory", str(path)]
            if "--database-url" not in given:
                cmd += ["--database-url", f"sqlite:///{launch.work_dir / 'comfyui.db'}"]
        if not podkit_installed_in(launch.checkout):
            cmd += ["--extra-model-paths-config", str(self._podkit_link_config())]
        return cmd + list(launch.extra_args)

    def _podkit_link_config(self) -> Path:
        nodes = self.launch.work_dir / "custom_nodes"
        nodes.mkdir(parents=True, exist_ok=True)
        link = nodes / "podkit"
        if not (link.is_symlink() and link.resolve() == PODKIT_ROOT.resolve()):
            link.unlink(missing_ok=True)
            link.symlink_to(PODKIT_ROOT, target_is_directory=True)
        config = self.launch.work_dir / "podkit_custom_nodes.yaml"
        # JSON is valid YAML; ComfyUI adds this folder to its custom_nodes search path
        config.write_text(json.dumps({"podkit": {"custom_nodes": str(nodes)}}, indent=2) + "\n")
        return config

    def start(self) -> None:
        if self.alive():
            return
        if self.launch.own_dirs:
            for path in self.dirs.values():
                path.mkdir(parents=True, exist_ok=True)
        env = dict(self.launch.env)
        env.setdefault("PYTHONUNBUFFERED", "1")
        logger.info("starting ComfyUI: %s", " ".join(self.command()))
        # output is inherited: ComfyUI's log goes where the worker's/pod's log goes
        self.proc = subprocess.Popen(  # noqa: S603 - argv list, no shell
            self.command(),
            cwd=self.launch.checkout,
            env=env,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_die_with_parent,  # only sets a signal, before exec
        )

    def wait_ready(self, timeout: float = 300.0) -> float:
        """Block until ComfyUI answers ``/system_stats`` and ``/object_info``; returns the seconds waited."""
        t0 = time.monotonic()
        while True:
            if self.proc is not None and self.proc.poll() is not None:
                raise ComfyStartError(f"ComfyUI exited with code {self.proc.returncode} during startup")
            if answers(self.url + "/system_stats") and answers(self.url + "/object_info", timeout=120):
                return time.monotonic() - t0
            if time.monotonic() - t0 > timeout:
                raise ComfyStartError(f"ComfyUI did not answer on {self.url} within {timeout:.0f} s")
            time.sleep(0.25)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait(self) -> int:
        """Block until ComfyUI exits; its exit code (0 if it never started)."""
        return self.proc.wait() if self.proc is not None else 0

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM the process group, then SIGKILL; returns the exit code (None if never started)."""
        proc, self.proc = self.proc, None
        return stop_process_group(proc, timeout) if proc is not None else None


def answers(url: str, timeout: float = 5.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - our own loopback URL
            resp.read()
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _die_with_parent() -> None:
    """Linux: the child gets SIGTERM when its parent dies, so a killed worker leaves no ComfyUI behind."""
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        except OSError:
            pass


def stop_process_group(proc: subprocess.Popen[bytes], timeout: float = 20.0) -> int:
    """SIGTERM the group of ``proc`` (started with ``start_new_session``), SIGKILL it after
    ``timeout`` seconds, then SIGKILL whatever it spawned that is left; its exit code."""
    if proc.poll() is None:
        _signal_group(proc, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _signal_group(proc, signal.SIGKILL)
            proc.wait(timeout=30)
    _signal_group(proc, signal.SIGKILL)  # stragglers the process spawned, if any
    return proc.returncode


def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
