"""A training request's dataset into the job folder: a folder or archive on the volume, a bucket
object or prefix, or a URL fetched by the download manager.

Whatever the source, the images and captions end up in ``<job>/dataset`` through
:mod:`~podkit.core.datasets` (which enforces the limits and refuses paths that escape the folder);
downloads land in ``<job>/incoming`` first, which is removed afterwards whatever happens.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ..core.datasets import (
    DatasetLimits,
    DatasetReport,
    copy_folder,
    extract_archive,
    is_dataset_file,
    safe_member_path,
)
from ..core.errors import InvalidRequest, PayloadTooLarge
from ..core.objects import ObjectRef, ObjectStore, parse_object_uri
from ..core.training_request import TrainingRequest, confine

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tgz", ".tar.gz", ".tar.bz2", ".tar.xz")


class DatasetFetcher(Protocol):
    """The download manager's blocking fetch (``services.downloads.fetch_file``)."""

    def fetch_file(
        self,
        url_or_uri: str,
        dest_dir: Path,
        *,
        sha256: str | None = None,
        max_bytes: int | None = None,
        timeout: float | None = None,
    ) -> Path: ...


@dataclass(frozen=True)
class IntakeSources:
    """Where datasets may come from: the folders a path may name, the store, the downloader."""

    roots: tuple[Path, ...]
    store: ObjectStore
    default_bucket: str
    fetcher: DatasetFetcher | None
    limits: DatasetLimits


def dataset_object(uri: str, default_bucket: str) -> tuple[ObjectRef, bool]:
    """The bucket object a ``dataset.uri`` names, and whether it is a folder (prefix) of images.

    An archive name (``.zip``, ``.tar``, ``.tar.gz``, ...) is one object; anything else, or a
    trailing ``/``, is the folder of images and captions under that prefix.

    Raises:
        InvalidRequest: an unsafe or malformed URI.
    """
    ref = parse_object_uri(uri.rstrip("/"), default_bucket)
    return ref, uri.endswith("/") or not ref.key.lower().endswith(ARCHIVE_SUFFIXES)


def intake(req: TrainingRequest, job_dir: Path, src: IntakeSources) -> DatasetReport:
    """Take ``req``'s dataset into ``<job_dir>/dataset``; the report counts images and captions.

    Raises:
        InvalidRequest, Forbidden, PayloadTooLarge: a bad source (the message says which).
        PodKitError: the store or the download failed.
    """
    ds, lim = req.dataset, src.limits
    dest = job_dir / "dataset"
    incoming = job_dir / "incoming"
    shutil.rmtree(incoming, ignore_errors=True)
    incoming.mkdir()
    try:
        if ds.kind == "path":
            path = confine(ds.value, src.roots, "dataset.path")
            if path.is_dir():
                return copy_folder(path, dest, caption_ext=req.caption_ext, limits=lim)
            if path.is_file():
                return extract_archive(path, dest, caption_ext=req.caption_ext, limits=lim)
            raise InvalidRequest(f"dataset.path {ds.value} is neither a folder nor an archive")
        if ds.kind == "uri":
            ref, prefix = dataset_object(ds.value, src.default_bucket)
            if prefix:
                folder = _download_prefix(src, ref.bucket, ref.key + "/", incoming / "files", req)
                return copy_folder(folder, dest, caption_ext=req.caption_ext, limits=lim)
            meta = src.store.head(ref)
            if meta.size > lim.max_total_bytes:
                raise PayloadTooLarge(f"{ref.uri} is larger than {lim.max_total_bytes} bytes")
            archive = incoming / "dataset.archive"
            src.store.download_verified(meta, archive)
        else:
            if src.fetcher is None:
                raise InvalidRequest("dataset.url needs the download manager")
            archive = src.fetcher.fetch_file(
                ds.value, incoming, sha256=ds.sha256, max_bytes=lim.max_total_bytes
            )
        return extract_archive(archive, dest, caption_ext=req.caption_ext, limits=lim)
    finally:
        shutil.rmtree(incoming, ignore_errors=True)


def _download_prefix(
    src: IntakeSources, bucket: str, prefix: str, folder: Path, req: TrainingRequest
) -> Path:
    """Download the images and captions under ``prefix`` (a dataset folder in the bucket)."""
    lim = src.limits
    objects = src.store.list(bucket, prefix, limit=lim.max_files + 1)
    if len(objects) > lim.max_files:
        raise PayloadTooLarge(f"r2://{bucket}/{prefix} holds more than {lim.max_files} objects")
    wanted = [m for m in objects if is_dataset_file(m.ref.key, req.caption_ext)]
    if sum(m.size for m in wanted) > lim.max_total_bytes:
        raise PayloadTooLarge(f"r2://{bucket}/{prefix} holds more than {lim.max_total_bytes} bytes")
    folder.mkdir(parents=True, exist_ok=True)
    for meta in wanted:
        rel = safe_member_path(meta.ref.key[len(prefix) :])
        if rel is None:  # a hidden file or folder
            continue
        if meta.size > lim.max_file_bytes:
            raise PayloadTooLarge(f"{meta.ref.uri} is larger than {lim.max_file_bytes} bytes")
        target = folder / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        src.store.download_verified(meta, target)
    return folder
