"""The file rules every writer on the volume shares."""

from __future__ import annotations

import hashlib
from pathlib import Path

from podkit.core.fsutil import fsync_dir, sha256_file, write_atomic


def test_write_atomic_replaces_whole_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "index.json"
    write_atomic(target, "first")
    write_atomic(target, b"second")
    assert target.read_bytes() == b"second"
    assert [p.name for p in target.parent.iterdir()] == ["index.json"]
    fsync_dir(tmp_path / "missing")  # best effort: a folder that cannot be opened is no error


def test_sha256_file_reads_in_blocks(tmp_path: Path) -> None:
    data = b"x" * (9 * 2**20 + 7)  # more than one 8 MiB block
    (tmp_path / "f").write_bytes(data)
    assert sha256_file(tmp_path / "f") == hashlib.sha256(data).hexdigest()
