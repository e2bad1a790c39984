"""Trainer processes: the :class:`TrainerBackend` seam and its ai-toolkit implementation.

A trainer runs as ``<python> <ai-toolkit>/run.py <config.yaml>`` (an argv list, never a shell)
in its own session and process group, with its output going straight to a log file in the job
folder. Because the log is a file and not a pipe, a trainer outlives a restart of ComfyUI: the
next PodKit process re-attaches to it by pid (checked against the process start time, so a
recycled pid is not mistaken for it) and keeps reading the same log. Stopping is SIGTERM to the
whole group, then SIGKILL after a grace period, which also reaches the data-loader workers and
anything else the trainer spawned.

The log readers live here too, beside the process that writes the log: the last lines with bar
redraws collapsed (:func:`read_log_tail`), the line that best says why a trainer failed
(:func:`last_error_line`), and the loss series the watcher appends to ``loss.tsv``
(:func:`read_loss`).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol

from ..core.ai_toolkit import log_tail
from ..core.errors import Forbidden

logger = logging.getLogger(__name__)

#: How much of the end of a trainer's log is read for its tail (and re-read when a watch resumes).
LOG_TAIL_BYTES = 256 * 1024


def process_start_time(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (``/proc/<pid>/stat`` field 22), None if it is gone.

    On systems without ``/proc`` this is ``"?"`` for a live process (pid reuse then goes unchecked).
    """
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            return "?"
        return "?"
    # The command name (field 2) may hold spaces and parentheses; the fields after it do not.
    fields = raw[raw.rfind(")") + 2 :].split()
    if len(fields) < 20 or fields[0] == "Z":  # a zombie has finished
        return None
    return fields[19]


def _signal_group(pgid: int, sig: int) -> bool:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:
        logger.warning("not allowed to signal trainer process group %d", pgid)
        return False
    return True


class TrainerProcess(Protocol):
    """A running (or finished) trainer."""

    pid: int
    start_time: str | None

    def poll(self) -> int | None:
        """The exit code once finished (-1 when unknown: a re-attached trainer), else None."""
        ...

    def stop(self, grace: float) -> None:
        """SIGTERM the process group, SIGKILL it after ``grace`` seconds; returns once it is gone."""
        ...

    def reap_group(self) -> None:
        """After the leader exited: kill what it left in its group (data-loader workers)."""
        ...

    def detach(self) -> None:
        """Stop watching but leave the trainer running (a later PodKit process re-attaches)."""
        ...


class TrainerBackend(Protocol):
    """Launches trainers and re-attaches to the ones an earlier PodKit process started."""

    name: str

    def check(self) -> None:
        """Raise :class:`Forbidden` (with the setting to fix) when this backend cannot run jobs."""
        ...

    def command(self, config_path: Path) -> list[str]:
        """The argv that trains ``config_path``."""
        ...

    def launch(self, config_path: Path, *, env: Mapping[str, str], log_path: Path) -> TrainerProcess:
        """Start training ``config_path``; output (stdout and stderr) is appended to ``log_path``."""
        ...

    def attach(self, pid: int, start_time: str | None) -> TrainerProcess | None:
        """The trainer ``pid`` if it still runs (same start time), else None."""
        ...


class _GroupProcess:
    """Shared stop logic: the trainer leads its own process group (pgid == pid)."""

    pid: int
    start_time: str | None

    def poll(self) -> int | None:  # pragma: no cover - overridden
        raise NotImplementedError

    def stop(self, grace: float) -> None:
        if self.poll() is None:
            _signal_group(self.pid, signal.SIGTERM)
            deadline = time.monotonic() + grace
            while self.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
        # SIGKILL whatever is left of the group (the leader, or workers it left behind).
        _signal_group(self.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while self.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)

    def reap_group(self) -> None:
        _signal_group(self.pid, signal.SIGKILL)

    def detach(self) -> None:
        return None


class ChildTrainer(_GroupProcess):
    """A trainer this process started (its exit code is known)."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self._proc = proc
        self.pid = proc.pid
        self.start_time = process_start_time(proc.pid)

    def poll(self) -> int | None:
        return self._proc.poll()

    def detach(self) -> None:
        # Someone must still wait() for our child when it ends, or it lingers as a zombie.
        threading.Thread(
            target=self._proc.wait, name=f"podkit-trainer-reaper-{self.pid}", daemon=True
        ).start()


class AttachedTrainer(_GroupProcess):
    """A trainer started by an earlier PodKit process; only its liveness is known."""

    def __init__(self, pid: int, start_time: str | None) -> None:
        self.pid = pid
        self.start_time = start_time

    def poll(self) -> int | None:
        now = process_start_time(self.pid)
        if now is None or (self.start_time not in (None, "?") and now != self.start_time):
            return -1
        return None


class SubprocessTrainer:
    """Any trainer with an ``argv + config path`` command line (the base of :class:`AiToolkitBackend`)."""

    name = "subprocess"

    def __init__(self, argv_prefix: Sequence[str], *, cwd: Path | None = None) -> None:
        self.argv_prefix = [str(a) for a in argv_prefix]
        self.cwd = cwd

    def check(self) -> None:
        return None

    def command(self, config_path: Path) -> list[str]:
        return [*self.argv_prefix, str(config_path)]

    def launch(self, config_path: Path, *, env: Mapping[str, str], log_path: Path) -> TrainerProcess:
        self.check()
        argv = self.command(config_path)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as log:
            log.write(f"===== podkit: {' '.join(argv)}\n".encode())
            log.flush()
            proc = subprocess.Popen(  # noqa: S603 - argv list from settings, never a shell
                argv,
                cwd=self.cwd or config_path.parent,
                env=dict(env),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # own group: cancel reaches everything the trainer spawns
                close_fds=True,
            )
        logger.info("trainer started: pid %d, %s", proc.pid, config_path)
        return ChildTrainer(proc)

    def attach(self, pid: int, start_time: str | None) -> TrainerProcess | None:
        proc = AttachedTrainer(pid, start_time)
        return None if proc.poll() is not None else proc


class AiToolkitBackend(SubprocessTrainer):
    """ostris/ai-toolkit: ``<python> run.py <config>`` with the checkout as working directory.

    Args:
        ai_toolkit_dir: the ai-toolkit checkout (holds ``run.py``); None disables training.
        python: its interpreter; default ``<dir>/venv/bin/python``, ``<dir>/.venv/bin/python``,
            else the interpreter running PodKit.
    """

    name = "ai-toolkit"

    def __init__(self, ai_toolkit_dir: Path | None, python: str | None = None) -> None:
        self.ai_toolkit_dir = ai_toolkit_dir
        self.python = python or self._default_python(ai_toolkit_dir)
        run_py = ai_toolkit_dir / "run.py" if ai_toolkit_dir else Path("run.py")
        super().__init__([self.python, str(run_py)], cwd=ai_toolkit_dir)

    @staticmethod
    def _default_python(ai_toolkit_dir: Path | None) -> str:
        if ai_toolkit_dir is not None:
            for cand in (
                ai_toolkit_dir / "venv" / "bin" / "python",
                ai_toolkit_dir / ".venv" / "bin" / "python",
            ):
                if cand.is_file() and os.access(cand, os.X_OK):
                    return str(cand)
        return sys.executable

    def check(self) -> None:
        if self.ai_toolkit_dir is None:
            raise Forbidden("training is disabled: set PODKIT_AI_TOOLKIT_DIR to an ai-toolkit checkout")
        if not (self.ai_toolkit_dir / "run.py").is_file():
            raise Forbidden(
                f"PODKIT_AI_TOOLKIT_DIR={self.ai_toolkit_dir} has no run.py (not an ai-toolkit checkout)"
            )


def read_log_tail(path: Path, n: int) -> list[str]:
    """The last ``n`` lines of a trainer's log (no lines when it cannot be read)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - LOG_TAIL_BYTES))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return []
    return log_tail(text, n)


def last_error_line(path: Path) -> str:
    """The last line that names an error or exception, else the last line: why a trainer failed."""
    lines = read_log_tail(path, 40)
    for line in reversed(lines):
        if "Error" in line or "Exception" in line:
            return line.strip()[:300]
    return lines[-1].strip()[:300] if lines else "no output"


def read_loss(path: Path) -> list[tuple[int, float]]:
    """The ``step<TAB>loss`` lines of ``loss.tsv`` (a line cut short by a crash is skipped)."""
    out: list[tuple[int, float]] = []
    try:
        text = path.read_text()
    except OSError:
        return out
    for line in text.splitlines():
        step, _, loss = line.partition("\t")
        try:
            out.append((int(step), float(loss)))
        except ValueError:
            continue
    return out
