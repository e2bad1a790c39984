"""Every output of a prompt to the output bucket, through the durable outbox.

A prompt's outputs are what its history names (``images``, ``gifs``, ``audio``, ``video`` … entries
of type ``output``, from any save node) plus any other file that appeared in ComfyUI's output folder
while the job ran (a save node that reports nothing still wrote a file). Each file is spooled into
PodKit's outbox under a content-addressed key below the job id, then removed from the output folder
(the spool is the durable copy). A retried job (same id, same bytes) finds its keys already
uploaded or queued and uploads nothing twice. ``PodKitSaveToR2`` uploads on its own; its
``podkit_uploads`` are reported as they are.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.errors import ObjectNotFound, PodKitError
from ..core.objects import ObjectRef
from ..core.outbox import ACTIVE as UPLOAD_ACTIVE
from ..core.outbox import OutboxItem
from ..core.saving import OutputSaver
from ..core.worker_jobs import content_type_of, output_key, output_kind
from ..jobs.outbox import Outbox

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProducedFile:
    """A file the prompt wrote: on this disk (``path``) or fetched from a remote ComfyUI (``data``)."""

    node: str | None
    path: Path | None
    filename: str
    data: bytes | None = None

    def read(self) -> bytes:
        if self.data is not None:
            return self.data
        return self.path.read_bytes() if self.path is not None else b""

    def remove(self) -> None:
        if self.path is not None:
            self.path.unlink(missing_ok=True)


@dataclass
class Delivery:
    node: str | None
    kind: str
    ref: ObjectRef
    sha256: str
    size: int
    content_type: str
    outbox_id: str | None
    status: str
    filename: str
    data: bytes | None = None

    def to_wire(self, url: str | None) -> dict[str, object]:
        return {
            "node": self.node,
            "kind": self.kind,
            "filename": self.filename,
            "uri": self.ref.uri,
            "url": url,
            "sha256": self.sha256,
            "size": self.size,
            "content_type": self.content_type,
            "status": self.status,
        }


def snapshot(folder: Path | None) -> set[Path]:
    if folder is None or not folder.is_dir():
        return set()
    return {p for p in folder.rglob("*") if p.is_file()}


def produced_files(
    outputs: Mapping[str, Any], output_dir: Path | None, before: set[Path]
) -> list[ProducedFile]:
    """The files the prompt wrote: those its history names, then any other new file in the folder."""
    found: dict[Path, ProducedFile] = {}
    if output_dir is not None:
        root = output_dir.resolve()
        for node_id, entry in history_files(outputs):
            path = (root / entry.get("subfolder", "") / entry["filename"]).resolve()
            if root in path.parents and path.is_file() and path not in found:
                found[path] = ProducedFile(node_id, path, entry["filename"])
        for path in sorted(snapshot(output_dir) - before):
            path = path.resolve()
            if path not in found:
                found[path] = ProducedFile(None, path, path.name)
    return list(found.values())


def history_files(outputs: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    """(node id, ``{filename, subfolder, type}``) of every output file the history names."""
    return [(str(node_id), entry) for node_id, ui in outputs.items() for entry in _file_entries(ui)]


def _file_entries(ui: Any) -> Iterable[Mapping[str, Any]]:
    if not isinstance(ui, Mapping):
        return
    for value in ui.values():
        if isinstance(value, list):
            for entry in value:
                if (
                    isinstance(entry, Mapping)
                    and isinstance(entry.get("filename"), str)
                    and entry.get("type", "output") == "output"
                ):
                    yield entry


def saved_by_podkit(outputs: Mapping[str, Any]) -> tuple[list[dict[str, object]], list[dict[str, object]]]:
    """``outputs`` and ``images`` entries for what ``PodKitSaveToR2`` nodes uploaded themselves
    (their ``ui.podkit_uploads``)."""
    entries, images = [], []
    for node_id, ui in outputs.items():
        uploads = ui.get("podkit_uploads") if isinstance(ui, Mapping) else None
        for up in uploads or []:
            if not isinstance(up, Mapping):
                continue
            key = str(up.get("key") or "")
            entries.append(
                {
                    "node": str(node_id),
                    "kind": "image",
                    "filename": key.rsplit("/", 1)[-1],
                    "uri": up.get("uri"),
                    "url": up.get("url"),
                    "sha256": up.get("sha256"),
                    "size": up.get("size"),
                    "content_type": "image/png",
                    "status": up.get("status"),
                }
            )
            images.append({"filename": key, "type": "s3_url", "data": up.get("url") or up.get("uri")})
    return entries, images


class OutputDeliverer:
    def __init__(self, outbox: Outbox, saver: OutputSaver, bucket: str) -> None:
        self.outbox = outbox
        self.saver = saver
        self.bucket = bucket

    def spool(
        self, job_id: str, prompt_id: str, files: list[ProducedFile], keep_bytes: bool
    ) -> list[Delivery]:
        """Queue every file for upload (unless its key is already there or queued); removes the files."""
        queued = {(i.bucket, i.key): i for i in self.outbox.list(UPLOAD_ACTIVE, 10**6)}
        out: list[Delivery] = []
        for f in files:
            data = f.read()
            sha = hashlib.sha256(data).hexdigest()
            ref = ObjectRef(self.bucket, output_key(job_id, sha, f.filename))
            content_type = content_type_of(f.filename)
            existing = queued.get((ref.bucket, ref.key))
            item: OutboxItem | None = None
            if existing is not None:
                status, outbox_id = existing.status, existing.id
            elif self._already_uploaded(ref, len(data)):
                status, outbox_id = "done", None
            else:
                item = self.outbox.submit(
                    data, ref, content_type=content_type, prompt_id=prompt_id, sha256=sha
                )
                status, outbox_id = item.status, item.id
            out.append(
                Delivery(
                    node=f.node,
                    kind=output_kind(f.filename),
                    ref=ref,
                    sha256=sha,
                    size=len(data),
                    content_type=content_type,
                    outbox_id=outbox_id,
                    status=status,
                    filename=f.filename,
                    data=data if keep_bytes else None,
                )
            )
            f.remove()  # spooled (or already in the bucket): the outbox owns it now
        return out

    def _already_uploaded(self, ref: ObjectRef, size: int) -> bool:
        try:
            return self.saver.store.head(ref).size == size
        except ObjectNotFound:
            return False
        except PodKitError:  # store down: spool it; the outbox delivers when the store is back
            return False

    def wait(self, deliveries: list[Delivery], deadline: float, retry_every: float = 2.0) -> None:
        """Until every queued delivery is uploaded (the store may be down for a while) or ``deadline``.

        While the job waits, its waiting uploads are retried every ``retry_every`` seconds instead of
        on the outbox's growing backoff, so the job ends soon after the store is back."""
        next_retry = time.monotonic() + retry_every
        while True:
            for d in deliveries:
                if d.outbox_id is not None and d.status in UPLOAD_ACTIVE:
                    item = self.outbox.repo.get(d.outbox_id)
                    d.status = item.status if item is not None else "done"
            now = time.monotonic()
            if all(d.status not in UPLOAD_ACTIVE for d in deliveries) or now >= deadline:
                return
            if now >= next_retry:
                self.outbox.retry([d.outbox_id for d in deliveries if d.outbox_id and d.status == "pending"])
                next_retry = now + retry_every
            time.sleep(0.02)

    def answer(
        self, deliveries: list[Delivery], max_base64: int
    ) -> tuple[list[dict[str, object]], list[dict[str, object]]]:
        """``outputs`` and worker-comfyui's ``images`` for the job's answer."""
        outputs, images = [], []
        budget = max_base64
        for d in deliveries:
            url = self.saver.url_for(d.ref)
            wire = d.to_wire(url)
            if d.data is not None and len(d.data) <= budget:
                wire["base64"] = base64.b64encode(d.data).decode()
                budget -= len(d.data)
            outputs.append(wire)
            if d.kind == "image":
                if "base64" in wire:
                    images.append({"filename": d.filename, "type": "base64", "data": wire["base64"]})
                else:
                    images.append({"filename": d.filename, "type": "s3_url", "data": url or d.ref.uri})
        return outputs, images
