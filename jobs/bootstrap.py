"""``python <path-to-podkit> bootstrap <manifest>``: fetch a pod's models before ComfyUI starts.

Reads a YAML or JSON manifest (:func:`podkit.core.download_request.parse_manifest`), queues every
item on a :class:`~podkit.jobs.downloads.DownloadService` of its own (same models folder, same
resume maps, same locks as a running ComfyUI, so nothing is fetched twice), prints one progress
line per item (redrawn in place on a terminal, plain lines in a log), and exits with 0 when every
item is in place, 1 when any failed, 2 for a bad manifest or option, 130 on Ctrl-C (partial
files stay; the next run resumes them).
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from ..backends.state_db import StateDB
from ..core.download_job import ACTIVE, DownloadJob
from ..core.download_request import DownloadItem, parse_manifest
from ..core.errors import PodKitError
from ..core.objects import ObjectStore
from ..core.settings import Settings
from ..core.url_policy import UrlPolicy
from .downloads import DownloadService

BAR = 24


def _size(n: float | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def describe(job: DownloadJob, width: int) -> str:
    """One progress line for ``job``."""
    name = job.item.label[:width].ljust(width)
    total, done = job.bytes_total, job.bytes_done
    if job.status == "done":
        present = job.files and all(f.present for f in job.files)
        where = job.dest or ""
        return f"{name} done{' (already present)' if present else ''} → {where}"
    if job.status in ("failed", "cancelled", "paused"):
        return f"{name} {job.status}: {job.error or ''}"
    if total:
        filled = min(BAR, int(BAR * done / total))
        bar = "#" * filled + "-" * (BAR - filled)
        eta = f" ETA {job.eta:.0f}s" if job.eta is not None else ""
        return (
            f"{name} [{bar}] {100 * done / total:5.1f}% {_size(done)}/{_size(total)} "
            f"{_size(job.speed)}/s{eta} {job.status}"
        )
    return f"{name} {job.status} {_size(done)}"


def select_forced(items: Sequence[DownloadItem], names: Sequence[str]) -> set[int]:
    """Indexes of the items ``--force NAME`` names (by label, file name or name).

    Raises:
        SystemExit(2): a NAME matches no item.
    """
    chosen: set[int] = set()
    for wanted in names:
        hits = {
            i
            for i, item in enumerate(items)
            if wanted in (item.label, item.name, item.filename, (item.filename or "").rsplit("/", 1)[-1])
        }
        if not hits:
            labels = ", ".join(item.label for item in items)
            raise SystemExit(f"--force {wanted}: no manifest item has that name (items: {labels})")
        chosen |= hits
    return chosen


def run_bootstrap(
    settings: Settings,
    store: ObjectStore,
    manifest: Path,
    *,
    policy: UrlPolicy,
    force: Sequence[str] = (),
    models_dir: Path | None = None,
    out: TextIO | None = None,
    interval: float = 0.25,
) -> int:
    """Download every item of ``manifest``; returns the process exit code."""
    out = out or sys.stdout
    try:
        text = manifest.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        print(f"cannot read manifest {manifest}: {e}", file=sys.stderr)  # noqa: T201
        return 2
    if models_dir is not None:
        settings = dataclasses.replace(settings, models_dir=models_dir)
    db = StateDB(settings.state_dir / "podkit.sqlite3")
    svc = DownloadService(settings, db, store, policy=policy)
    try:
        try:
            items = list(parse_manifest(text, policy=svc.policy).items)
            forced = select_forced(items, force)
        except PodKitError as e:
            print(f"{manifest}: {e}", file=sys.stderr)  # noqa: T201
            return 2
        except SystemExit as e:
            print(e.code, file=sys.stderr)  # noqa: T201
            return 2
        svc.start()
        jobs = svc.submit([it for i, it in enumerate(items) if i in forced], force=True) if forced else []
        rest = [it for i, it in enumerate(items) if i not in forced]
        jobs += svc.submit(rest) if rest else []
        try:
            final = _watch(svc, jobs, out, interval)
        except KeyboardInterrupt:
            print("\ninterrupted; partial files are kept and the next run resumes them", file=out)  # noqa: T201
            return 130
        failed = [j for j in final if j.status != "done"]
        print(f"{len(final) - len(failed)} of {len(final)} items in place under {svc.root}", file=out)  # noqa: T201
        for j in failed:
            print(f"FAILED {j.item.label}: {j.error or j.status}", file=out)  # noqa: T201
        return 1 if failed else 0
    finally:
        svc.close()
        db.close()


def _watch(svc: DownloadService, jobs: list[DownloadJob], out: TextIO, interval: float) -> list[DownloadJob]:
    tty = out.isatty()
    width = min(40, max(len(j.item.label) for j in jobs))
    ids = [j.id for j in jobs]
    drawn = 0
    shown: dict[str, tuple[str, int]] = {}
    while True:
        current = [svc.get(i) for i in ids]
        finished = all(j.status not in ACTIVE for j in current)
        if tty:
            lines = [describe(j, width) for j in current]
            if drawn:
                out.write(f"\x1b[{drawn}F")
            out.write("".join(f"\x1b[2K{line}\n" for line in lines))
            drawn = len(lines)
        else:
            for j in current:  # a line per change of status or quarter of progress
                total = j.bytes_total or 0
                quarter = 4 * j.bytes_done // total if total else 0
                if shown.get(j.id) != (j.status, quarter):
                    shown[j.id] = (j.status, quarter)
                    out.write(describe(j, width) + "\n")
        out.flush()
        if finished:
            return current
        time.sleep(interval)
