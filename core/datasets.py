"""Training datasets: safe zip/tar extraction and folder intake, keeping only images and captions.

A dataset is a folder of images with same-stem caption files (``img1.png`` + ``img1.txt``), the
layout ai-toolkit reads (it walks sub-folders and skips hidden names). Archives come from
strangers, so extraction refuses path escapes (``..``, absolute names, drive letters), symlinks
and other special entries, and caps the file count, the total and per-file sizes and the
compression ratio — all checked on the bytes actually inflated, not on the sizes the archive
claims. Everything is written under a temporary folder that replaces the target only when the
whole archive passed, so a rejected archive leaves nothing behind.
"""

from __future__ import annotations

import lzma
import os
import shutil
import stat
import tarfile
import uuid
import zipfile
import zlib
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import IO

from .errors import InvalidRequest, PayloadTooLarge

#: Image types ai-toolkit trains on (toolkit/data_loader.py ``image_extensions``).
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp"})
#: Caption extensions accepted next to the images (the request picks which one ai-toolkit reads).
CAPTION_EXTENSIONS = frozenset({".txt", ".caption"})
_SKIPPED_DIRS = frozenset({"__MACOSX"})
_CHUNK = 1 * 2**20


@dataclass(frozen=True)
class DatasetLimits:
    """Caps applied while a dataset is taken in.

    Attributes:
        max_files: entries in the archive (any kind) or files in the folder.
        max_total_bytes: inflated bytes of every kept file together.
        max_file_bytes: inflated bytes of one file.
        max_ratio: inflated / compressed bytes of one entry (a zip bomb reaches thousands).
    """

    max_files: int = 5000
    max_total_bytes: int = 8 * 2**30
    max_file_bytes: int = 256 * 2**20
    max_ratio: float = 100.0


@dataclass(frozen=True)
class DatasetReport:
    """What a dataset holds once taken in."""

    folder: str
    images: int
    captions: int
    missing_captions: int
    bytes: int
    skipped: int
    missing_examples: tuple[str, ...] = ()

    def to_wire(self) -> dict[str, object]:
        return {
            "images": self.images,
            "captions": self.captions,
            "missing_captions": self.missing_captions,
            "bytes": self.bytes,
            "skipped": self.skipped,
            "missing_examples": list(self.missing_examples),
        }


def _kind(name: str, caption_ext: str) -> str | None:
    """``"image"``, ``"caption"`` or None (dropped) for a file name."""
    suffix = PurePosixPath(name).suffix.lower()
    if suffix in IMAGE_EXTENSIONS:
        return "image"
    if suffix == caption_ext or suffix in CAPTION_EXTENSIONS:
        return "caption"
    return None


def is_dataset_file(name: str, caption_ext: str = "txt") -> bool:
    """Whether a file of this name is kept in a dataset (an image or a caption)."""
    return _kind(name, _caption_ext(caption_ext)) is not None


def safe_member_path(name: str) -> PurePosixPath | None:
    """The relative path an archive member may be written to; None for a skipped (hidden) one.

    Raises:
        InvalidRequest: an absolute name, a drive letter, a backslash path or a ``..`` part.
    """
    if "\x00" in name:
        raise InvalidRequest(f"archive entry {name[:80]!r} has a NUL byte in its name")
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise InvalidRequest(f"archive entry {name[:80]!r} has an absolute path")
    if "\\" in name:
        raise InvalidRequest(f"archive entry {name[:80]!r} uses backslashes; refusing an ambiguous path")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise InvalidRequest(f"archive entry {name[:80]!r} escapes the dataset folder ('..')")
    if not parts or any(p.startswith(".") or p in _SKIPPED_DIRS for p in parts):
        return None
    return PurePosixPath(*parts)


def _caption_ext(caption_ext: str) -> str:
    ext = caption_ext if caption_ext.startswith(".") else f".{caption_ext}"
    return ext.lower()


def summarize(root: Path, caption_ext: str, *, skipped: int = 0) -> DatasetReport:
    """Count images, captions (``<stem><caption_ext>`` beside an image) and images without one."""
    ext = _caption_ext(caption_ext)
    images: list[Path] = []
    total = 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d not in _SKIPPED_DIRS)
        for f in sorted(filenames):
            p = Path(dirpath) / f
            if f.startswith(".") or p.is_symlink():
                continue
            total += p.stat().st_size
            if PurePosixPath(f).suffix.lower() in IMAGE_EXTENSIONS:
                images.append(p)
    missing = [p for p in images if not p.with_suffix(ext).is_file()]
    return DatasetReport(
        folder=str(root),
        images=len(images),
        captions=len(images) - len(missing),
        missing_captions=len(missing),
        bytes=total,
        skipped=skipped,
        missing_examples=tuple(str(p.relative_to(root)) for p in missing[:10]),
    )


def _require_images(report: DatasetReport, source: str) -> DatasetReport:
    if report.images == 0:
        raise InvalidRequest(
            f"{source} holds no training images ({', '.join(sorted(IMAGE_EXTENSIONS))}); "
            "a dataset is images plus same-stem caption files"
        )
    return report


def _fresh_tmp(dest: Path) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}.incomplete")
    tmp.mkdir()
    return tmp


def _complete(tmp: Path, dest: Path, ext: str, skipped: int, label: str) -> DatasetReport:
    """Count what ``tmp`` holds (it must hold images), then let it replace ``dest`` as a whole."""
    report = _require_images(summarize(tmp, ext, skipped=skipped), label)
    if dest.exists():
        shutil.rmtree(dest)
    os.replace(tmp, dest)
    return replace(report, folder=str(dest))


def extract_zip(
    archive: Path, dest: Path, *, caption_ext: str = "txt", limits: DatasetLimits | None = None
) -> DatasetReport:
    """Extract the images and captions of ``archive`` into ``dest`` (replaced as a whole).

    Raises:
        InvalidRequest: not a zip, a path escape, a symlink or special entry, or no images.
        PayloadTooLarge: a cap of ``limits`` was exceeded (count, sizes, compression ratio).
    """
    lim = limits or DatasetLimits()
    ext = _caption_ext(caption_ext)
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as e:
        raise InvalidRequest(f"{archive.name}: not a readable zip archive ({e})") from e
    tmp = _fresh_tmp(dest)
    try:
        with zf:
            infos = zf.infolist()
            if len(infos) > lim.max_files:
                raise PayloadTooLarge(
                    f"{archive.name}: {len(infos)} entries; at most {lim.max_files} allowed"
                )
            total = 0
            skipped = 0
            for info in infos:
                rel = safe_member_path(info.filename)
                # Unix archivers keep st_mode in the high 16 bits; others leave the type bits 0.
                kind = stat.S_IFMT(info.external_attr >> 16)
                if kind == stat.S_IFLNK:
                    raise InvalidRequest(f"archive entry {info.filename[:80]!r} is a symbolic link")
                if kind and kind not in (stat.S_IFREG, stat.S_IFDIR):
                    raise InvalidRequest(f"archive entry {info.filename[:80]!r} is not a regular file")
                if rel is None or info.is_dir() or _kind(rel.name, ext) is None:
                    skipped += 0 if info.is_dir() else 1
                    continue
                total = _extract_member(zf, info, tmp / rel, lim, total, archive.name)
            return _complete(tmp, dest, ext, skipped, archive.name)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _extract_member(
    zf: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path, lim: DatasetLimits, total: int, label: str
) -> int:
    """Inflate one zip member to ``target`` under the caps; return the new running total."""
    if info.file_size > lim.max_file_bytes:
        raise PayloadTooLarge(f"{label}: {info.filename[:80]!r} is larger than {lim.max_file_bytes} bytes")
    try:
        with zf.open(info) as src:
            return _inflate(src, target, lim, total, label, info.filename, max(info.compress_size, 1))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, RuntimeError) as e:
        # RuntimeError: encrypted entries; BadZipFile: CRC mismatch or truncation.
        raise InvalidRequest(f"{label}: cannot read {info.filename[:80]!r} ({e})") from e


def _inflate(
    src: IO[bytes],
    target: Path,
    lim: DatasetLimits,
    total: int,
    label: str,
    name: str,
    compressed: int | None,
) -> int:
    """Copy one archive member to ``target`` under the caps, counted on the bytes actually read.

    ``compressed`` is the member's compressed size (zip), or None when the ratio is checked for the
    whole archive instead (tar streams).
    """
    if target.exists():
        raise InvalidRequest(f"{label}: {name[:80]!r} appears twice in the archive")
    target.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    with open(target, "xb") as out:
        while chunk := src.read(_CHUNK):
            written += len(chunk)
            total += len(chunk)
            # Checked on the inflated bytes: the sizes in the header may lie.
            if written > lim.max_file_bytes:
                raise PayloadTooLarge(f"{label}: {name[:80]!r} inflates past {lim.max_file_bytes} bytes")
            if compressed is not None and written > 64 * 1024 and written / compressed > lim.max_ratio:
                raise PayloadTooLarge(
                    f"{label}: {name[:80]!r} inflates more than {lim.max_ratio:g}x (a zip bomb?)"
                )
            if total > lim.max_total_bytes:
                raise PayloadTooLarge(f"{label}: the dataset inflates past {lim.max_total_bytes} bytes")
            out.write(chunk)
    return total


def extract_tar(
    archive: Path, dest: Path, *, caption_ext: str = "txt", limits: DatasetLimits | None = None
) -> DatasetReport:
    """Extract the images and captions of a tar archive (plain, gzip, bzip2 or xz) into ``dest``.

    The same rules as :func:`extract_zip`: links, devices and path escapes are refused; the caps
    are checked while reading (a tar has no index, so the entry count is checked as it goes, and
    the compression ratio over the whole archive).

    Raises:
        InvalidRequest: not a tar, a path escape, a link or special entry, or no images.
        PayloadTooLarge: a cap of ``limits`` was exceeded.
    """
    lim = limits or DatasetLimits()
    ext = _caption_ext(caption_ext)
    try:
        tf = tarfile.open(archive, mode="r:*")  # noqa: SIM115 - closed below
    except (tarfile.TarError, OSError) as e:
        raise InvalidRequest(f"{archive.name}: not a readable tar archive ({e})") from e
    packed = max(archive.stat().st_size, 1)
    tmp = _fresh_tmp(dest)
    try:
        with tf:
            total = skipped = count = 0
            try:
                for member in tf:
                    count += 1
                    if count > lim.max_files:
                        raise PayloadTooLarge(f"{archive.name}: more than {lim.max_files} entries")
                    rel = safe_member_path(member.name)
                    if member.issym() or member.islnk():
                        raise InvalidRequest(f"archive entry {member.name[:80]!r} is a link")
                    if not (member.isfile() or member.isdir()):
                        raise InvalidRequest(f"archive entry {member.name[:80]!r} is not a regular file")
                    if rel is None or member.isdir() or _kind(rel.name, ext) is None:
                        skipped += 0 if member.isdir() else 1
                        continue
                    if member.size > lim.max_file_bytes:
                        raise PayloadTooLarge(
                            f"{archive.name}: {member.name[:80]!r} is larger than {lim.max_file_bytes} bytes"
                        )
                    src = tf.extractfile(member)
                    if src is None:
                        raise InvalidRequest(f"archive entry {member.name[:80]!r} has no data")
                    with src:
                        total = _inflate(src, tmp / rel, lim, total, archive.name, member.name, None)
                    if total > 64 * 1024 and total / packed > lim.max_ratio:
                        raise PayloadTooLarge(
                            f"{archive.name}: inflates more than {lim.max_ratio:g}x (a compression bomb?)"
                        )
            except (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, OSError) as e:
                if isinstance(e, OSError) and e.errno is not None:
                    raise  # the disk, not the archive (ENOSPC while writing)
                raise InvalidRequest(f"{archive.name}: cannot read the archive ({e})") from e
            return _complete(tmp, dest, ext, skipped, archive.name)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def extract_archive(
    archive: Path, dest: Path, *, caption_ext: str = "txt", limits: DatasetLimits | None = None
) -> DatasetReport:
    """:func:`extract_zip` or :func:`extract_tar`, by the archive's content (not its name).

    Raises:
        InvalidRequest: neither a zip nor a tar archive, or what the extractor raises.
    """
    if zipfile.is_zipfile(archive):
        return extract_zip(archive, dest, caption_ext=caption_ext, limits=limits)
    try:
        is_tar = tarfile.is_tarfile(archive)
    except OSError:
        is_tar = False
    if is_tar:
        return extract_tar(archive, dest, caption_ext=caption_ext, limits=limits)
    raise InvalidRequest(f"{archive.name}: not a zip or tar archive")


def copy_folder(
    source: Path, dest: Path, *, caption_ext: str = "txt", limits: DatasetLimits | None = None
) -> DatasetReport:
    """Copy the images and captions of the folder ``source`` into ``dest`` (replaced as a whole).

    Symbolic links are not followed (a link could point anywhere on the host). ai-toolkit writes
    latent caches into its dataset folder, so training never works in the user's own folder.

    Raises:
        InvalidRequest: ``source`` is not a folder or holds no images.
        PayloadTooLarge: a cap of ``limits`` was exceeded.
    """
    lim = limits or DatasetLimits()
    ext = _caption_ext(caption_ext)
    if not source.is_dir():
        raise InvalidRequest(f"{source} is not a folder")
    tmp = _fresh_tmp(dest)
    try:
        count = total = skipped = 0
        for dirpath, dirnames, filenames in os.walk(source):
            dirnames[:] = [d for d in dirnames if not d.startswith(".") and d not in _SKIPPED_DIRS]
            for f in filenames:
                src = Path(dirpath) / f
                count += 1
                if count > lim.max_files:
                    raise PayloadTooLarge(f"{source}: more than {lim.max_files} files")
                if f.startswith(".") or src.is_symlink() or not src.is_file() or _kind(f, ext) is None:
                    skipped += 1
                    continue
                size = src.stat().st_size
                total += size
                if size > lim.max_file_bytes:
                    raise PayloadTooLarge(f"{src}: larger than {lim.max_file_bytes} bytes")
                if total > lim.max_total_bytes:
                    raise PayloadTooLarge(f"{source}: more than {lim.max_total_bytes} bytes")
                target = tmp / src.relative_to(source)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, target, follow_symlinks=False)
        return _complete(tmp, dest, ext, skipped, str(source))
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
