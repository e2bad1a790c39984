"""Dataset intake: zips from strangers are extracted safely, folders are copied, captions counted."""

from __future__ import annotations

import io
import os
import stat
import tarfile
import zipfile
from pathlib import Path

import pytest

from podkit.core.datasets import (
    DatasetLimits,
    copy_folder,
    extract_archive,
    extract_zip,
    is_dataset_file,
    safe_member_path,
)
from podkit.core.errors import InvalidRequest, PayloadTooLarge

PNG = b"\x89PNG\r\n\x1a\n" + os.urandom(200)


def make_zip(path: Path, entries: dict[str, bytes], *, compression: int = zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", compression=compression) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return path


def assert_nothing_left(dest: Path) -> None:
    assert not dest.exists()
    assert [p.name for p in dest.parent.iterdir() if p.name.startswith(f".{dest.name}.")] == []


def test_images_and_captions_are_kept_and_counted(tmp_path: Path) -> None:
    archive = make_zip(
        tmp_path / "ds.zip",
        {
            "set/a.png": PNG, "set/a.txt": b"a photo of p3r5on",
            "set/b.JPG": PNG, "set/b.txt": b"another",
            "set/sub/c.webp": PNG,  # no caption
            "set/d.jpeg": PNG, "set/d.caption": b"wrong extension for this request",
            "set/readme.md": b"dropped", "set/run.sh": b"#!/bin/sh\nrm -rf /",
            "__MACOSX/set/._a.png": b"resource fork", "set/.hidden.png": PNG,
        },
    )  # fmt: skip
    dest = tmp_path / "job" / "dataset"
    report = extract_zip(archive, dest, caption_ext="txt")
    assert (report.images, report.captions, report.missing_captions) == (4, 2, 2)
    assert sorted(report.missing_examples) == ["set/d.jpeg", "set/sub/c.webp"]
    assert report.skipped == 4  # readme.md, run.sh, the __MACOSX fork, the hidden file
    assert report.folder == str(dest)
    kept = sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file())
    assert kept == ["set/a.png", "set/a.txt", "set/b.JPG", "set/b.txt", "set/d.caption", "set/d.jpeg",
                    "set/sub/c.webp"]  # fmt: skip
    assert (dest / "set" / "a.txt").read_bytes() == b"a photo of p3r5on"
    wire = report.to_wire()
    assert (wire["images"], wire["captions"], wire["missing_captions"]) == (4, 2, 2)
    # with .caption as the caption extension, d.jpeg is captioned and a/b are not
    other = extract_zip(archive, tmp_path / "job" / "d2", caption_ext="caption")
    assert (other.captions, other.missing_captions) == (1, 3)


@pytest.mark.parametrize(
    "name",
    [
        "../evil.png",
        "set/../../evil.png",
        "/etc/evil.png",
        "C:/evil.png",
        "set\\..\\evil.png",
        "./../evil.png",
    ],
)
def test_path_escapes_are_refused_and_nothing_is_written(tmp_path: Path, name: str) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("ok.png", PNG)
        info = zipfile.ZipInfo("placeholder")
        info.filename = name  # ZipInfo() would normalise some of these; a hostile archive does not
        zf.writestr(info, PNG)
    archive = tmp_path / "evil.zip"
    archive.write_bytes(buf.getvalue())
    dest = tmp_path / "job" / "dataset"
    with pytest.raises(InvalidRequest) as e:
        extract_zip(archive, dest)
    assert "archive entry" in str(e.value)
    assert_nothing_left(dest)
    assert not (tmp_path / "evil.png").exists()
    assert not (tmp_path / "job" / "evil.png").exists()


def test_safe_member_path_rules() -> None:
    assert str(safe_member_path("a/./b/c.png")) == "a/b/c.png"
    assert safe_member_path(".git/config") is None
    assert safe_member_path("dir/") is not None
    with pytest.raises(InvalidRequest, match=r"\.\."):
        safe_member_path("a/../../b.png")


def test_symlink_entry_is_refused(tmp_path: Path) -> None:
    archive = tmp_path / "link.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("a.png", PNG)
        info = zipfile.ZipInfo("b.png")
        info.create_system = 3  # unix
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, "/etc/passwd")
    dest = tmp_path / "dataset"
    with pytest.raises(InvalidRequest, match="symbolic link"):
        extract_zip(archive, dest)
    assert_nothing_left(dest)


def test_device_entry_is_refused(tmp_path: Path) -> None:
    archive = tmp_path / "fifo.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        info = zipfile.ZipInfo("pipe.png")
        info.create_system = 3
        info.external_attr = (stat.S_IFIFO | 0o644) << 16
        zf.writestr(info, b"")
    with pytest.raises(InvalidRequest, match="not a regular file"):
        extract_zip(archive, tmp_path / "dataset")


def test_ten_thousand_files_hit_the_count_cap(tmp_path: Path) -> None:
    archive = tmp_path / "many.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_STORED) as zf:
        for i in range(10_000):
            zf.writestr(f"img/{i:05d}.txt", b"c")
    dest = tmp_path / "dataset"
    with pytest.raises(PayloadTooLarge, match="10000 entries; at most 5000"):
        extract_zip(archive, dest)
    assert_nothing_left(dest)


def test_zip_bomb_is_stopped_on_the_inflated_bytes(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "bomb.zip", {"a.png": PNG, "bomb.png": b"\0" * (64 * 2**20)})
    assert archive.stat().st_size < 2**20  # 64 MiB of zeros in well under a MiB
    dest = tmp_path / "dataset"
    with pytest.raises(PayloadTooLarge, match="zip bomb"):
        extract_zip(archive, dest)
    assert_nothing_left(dest)


def test_lying_header_sizes_do_not_help(tmp_path: Path) -> None:
    """The size caps count inflated bytes: a header that claims a small file changes nothing."""
    archive = make_zip(tmp_path / "big.zip", {"a.png": os.urandom(300_000)}, compression=zipfile.ZIP_STORED)
    limits = DatasetLimits(max_file_bytes=100_000)
    with pytest.raises(PayloadTooLarge, match="larger than 100000 bytes"):
        extract_zip(archive, tmp_path / "d1", limits=limits)
    total = DatasetLimits(max_total_bytes=250_000)
    two = make_zip(tmp_path / "two.zip", {"a.png": os.urandom(200_000), "b.png": os.urandom(200_000)},
                   compression=zipfile.ZIP_STORED)  # fmt: skip
    with pytest.raises(PayloadTooLarge, match="inflates past 250000 bytes"):
        extract_zip(two, tmp_path / "d2", limits=total)
    assert_nothing_left(tmp_path / "d2")


def test_no_images_is_a_clear_error(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "captions.zip", {"a.txt": b"caption without image", "notes.md": b"x"})
    with pytest.raises(InvalidRequest, match="holds no training images"):
        extract_zip(archive, tmp_path / "dataset")
    assert_nothing_left(tmp_path / "dataset")


def test_not_a_zip(tmp_path: Path) -> None:
    junk = tmp_path / "ds.zip"
    junk.write_bytes(b"<html>not found</html>")
    with pytest.raises(InvalidRequest, match="not a readable zip"):
        extract_zip(junk, tmp_path / "dataset")


def test_corrupt_member_is_reported(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "ds.zip", {"a.png": b"A" * 5000}, compression=zipfile.ZIP_STORED)
    raw = bytearray(archive.read_bytes())
    raw[raw.index(b"A" * 100) + 10] = ord("B")  # the CRC no longer matches
    archive.write_bytes(bytes(raw))
    with pytest.raises(InvalidRequest, match="cannot read"):
        extract_zip(archive, tmp_path / "dataset")
    assert_nothing_left(tmp_path / "dataset")


def test_a_new_extraction_replaces_the_old_dataset_whole(tmp_path: Path) -> None:
    dest = tmp_path / "dataset"
    extract_zip(make_zip(tmp_path / "one.zip", {"old.png": PNG}), dest)
    extract_zip(make_zip(tmp_path / "two.zip", {"new.png": PNG}), dest)
    assert sorted(p.name for p in dest.iterdir()) == ["new.png"]


def test_folder_copy_skips_symlinks_and_other_files(tmp_path: Path) -> None:
    src = tmp_path / "mine"
    (src / "sub").mkdir(parents=True)
    (src / "a.png").write_bytes(PNG)
    (src / "a.txt").write_text("caption")
    (src / "sub" / "b.png").write_bytes(PNG)
    (src / "notes.md").write_text("x")
    secret = tmp_path / "secret.png"
    secret.write_bytes(b"host file")
    (src / "link.png").symlink_to(secret)
    dest = tmp_path / "job" / "dataset"
    report = copy_folder(src, dest)
    assert (report.images, report.captions, report.missing_captions, report.skipped) == (2, 1, 1, 2)
    assert sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file()) == [
        "a.png", "a.txt", "sub/b.png",
    ]  # fmt: skip
    assert (src / "a.png").exists()  # the user's folder is untouched


def test_folder_caps_and_errors(tmp_path: Path) -> None:
    src = tmp_path / "many"
    src.mkdir()
    for i in range(12):
        (src / f"{i}.png").write_bytes(PNG)
    with pytest.raises(PayloadTooLarge, match="more than 10 files"):
        copy_folder(src, tmp_path / "d1", limits=DatasetLimits(max_files=10))
    assert_nothing_left(tmp_path / "d1")
    with pytest.raises(InvalidRequest, match="is not a folder"):
        copy_folder(tmp_path / "nope", tmp_path / "d2")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "x.txt").write_text("only a caption")
    with pytest.raises(InvalidRequest, match="holds no training images"):
        copy_folder(empty, tmp_path / "d3")


def make_tar(path: Path, entries: dict[str, bytes], *, mode: str = "w:gz") -> Path:
    with tarfile.open(path, mode) as tf:
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


@pytest.mark.parametrize("mode", ["w", "w:gz", "w:bz2", "w:xz"])
def test_tar_archives_are_taken_in_the_same_way(tmp_path: Path, mode: str) -> None:
    archive = make_tar(tmp_path / "ds.tar", {"set/a.png": PNG, "set/a.txt": b"cap", "set/b.png": PNG,
                                             "set/run.sh": b"x"}, mode=mode)  # fmt: skip
    report = extract_archive(archive, tmp_path / "dataset")
    assert (report.images, report.captions, report.missing_captions, report.skipped) == (2, 1, 1, 1)
    assert (tmp_path / "dataset" / "set" / "a.txt").read_bytes() == b"cap"


@pytest.mark.parametrize(
    ("kind", "needle"),
    [(tarfile.SYMTYPE, "is a link"), (tarfile.LNKTYPE, "is a link"), (tarfile.CHRTYPE, "not a regular file"),
     (tarfile.FIFOTYPE, "not a regular file")],
)  # fmt: skip
def test_tar_links_and_devices_are_refused(tmp_path: Path, kind: bytes, needle: str) -> None:
    archive = tmp_path / "bad.tar"
    with tarfile.open(archive, "w") as tf:
        ok = tarfile.TarInfo("a.png")
        ok.size = len(PNG)
        tf.addfile(ok, io.BytesIO(PNG))
        bad = tarfile.TarInfo("b.png")
        bad.type = kind
        bad.linkname = "/etc/passwd"
        tf.addfile(bad)
    with pytest.raises(InvalidRequest, match=needle):
        extract_archive(archive, tmp_path / "dataset")
    assert_nothing_left(tmp_path / "dataset")


def test_tar_path_escape_and_bomb(tmp_path: Path) -> None:
    escape = make_tar(tmp_path / "escape.tgz", {"a.png": PNG, "../../evil.png": PNG})
    with pytest.raises(InvalidRequest, match="escapes the dataset folder"):
        extract_archive(escape, tmp_path / "d1")
    assert not (tmp_path / "evil.png").exists()
    bomb = make_tar(tmp_path / "bomb.tgz", {"a.png": PNG, "bomb.png": b"\0" * (32 * 2**20)})
    with pytest.raises(PayloadTooLarge, match="compression bomb"):
        extract_archive(bomb, tmp_path / "d2")
    assert_nothing_left(tmp_path / "d2")
    many = make_tar(tmp_path / "many.tar", {f"{i}.txt": b"c" for i in range(30)}, mode="w")
    with pytest.raises(PayloadTooLarge, match="more than 20 entries"):
        extract_archive(many, tmp_path / "d3", limits=DatasetLimits(max_files=20))


def test_archive_kind_comes_from_the_content(tmp_path: Path) -> None:
    zipped = make_zip(tmp_path / "looks.tar", {"a.png": PNG})  # a zip with a misleading name
    assert extract_archive(zipped, tmp_path / "d1").images == 1
    junk = tmp_path / "ds.zip"
    junk.write_bytes(b"<html>404</html>")
    with pytest.raises(InvalidRequest, match="not a zip or tar archive"):
        extract_archive(junk, tmp_path / "d2")
    assert (
        is_dataset_file("x/a.PNG") and is_dataset_file("a.caption", "caption") and not is_dataset_file("a.md")
    )
