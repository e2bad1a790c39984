"""Planning one HTTP download: pieces, the persisted resume map, and the HTTP rules it relies on.

A file is cut into equal *pieces* (the last one shorter). N connections take pieces in file order,
so the downloaded region grows from the front and the contiguous prefix (what the sha256 can
already hash) trails the frontier by at most about N pieces. The map records, per piece, how many
bytes from its start are on disk; it is written next to the partial file after an ``fdatasync``
(see :mod:`podkit.backends.http_download`), so a killed process or pod resumes every piece at its
recorded offset and fetches again at most what arrived after the last checkpoint.

Pure rules only: no I/O here.
"""

from __future__ import annotations

import email.utils
import json
import re
import time
from dataclasses import dataclass, field

from .errors import InvalidRequest

MiB = 2**20
#: Smallest and largest piece; between them a file gets about four pieces per connection.
MIN_PIECE = 8 * MiB
MAX_PIECE = 64 * MiB
#: Map format version (a map of another version is ignored and the download starts over).
MAP_VERSION = 1

_CONTENT_RANGE_RE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$", re.IGNORECASE)


def piece_size_for(size: int, connections: int) -> int:
    """The piece size for a file of ``size`` bytes fetched over ``connections`` connections."""
    if size <= 0:
        return MIN_PIECE
    target = size // max(1, connections * 4)
    return max(MIN_PIECE, min(MAX_PIECE, (target // MiB) * MiB or MIN_PIECE))


@dataclass
class PieceMap:
    """Which bytes of a partial download are on disk.

    Attributes:
        size: the file's total size in bytes.
        piece: the piece size (every piece but the last has exactly this many bytes).
        done: per piece, how many bytes from its start are written.
        source: what the map belongs to (the source URL without query, or an object URI).
        validator: the server's ETag or Last-Modified at the start, sent back as ``If-Range``.
        ranges: False when the server refused ranges (the next attempt starts from zero).
    """

    size: int
    piece: int
    done: list[int]
    source: str = ""
    validator: str | None = None
    ranges: bool = True
    _first_open: int = field(default=0, repr=False, compare=False)

    @classmethod
    def plan(cls, size: int, connections: int, *, source: str = "", validator: str | None = None) -> PieceMap:
        """A fresh map for ``size`` bytes (nothing done)."""
        if size < 0:
            raise InvalidRequest("a download size cannot be negative")
        piece = piece_size_for(size, connections)
        count = max(1, -(-size // piece))
        return cls(size, piece, [0] * count, source, validator)

    def piece_range(self, index: int) -> tuple[int, int]:
        """``(start, end)`` of piece ``index``, end exclusive."""
        start = index * self.piece
        return start, min(self.size, start + self.piece)

    def piece_len(self, index: int) -> int:
        start, end = self.piece_range(index)
        return end - start

    def is_complete(self, index: int) -> bool:
        return self.done[index] >= self.piece_len(index)

    def open_pieces(self) -> list[int]:
        """Indexes of pieces with bytes still missing, in file order."""
        return [i for i in range(len(self.done)) if not self.is_complete(i)]

    @property
    def bytes_done(self) -> int:
        return sum(min(d, self.piece_len(i)) for i, d in enumerate(self.done))

    @property
    def complete(self) -> bool:
        return self.contiguous() >= self.size

    def contiguous(self) -> int:
        """Bytes from offset 0 that are all on disk (what a streaming hash may read)."""
        i = self._first_open
        while i < len(self.done) and self.is_complete(i):
            i += 1
        self._first_open = i
        if i >= len(self.done):
            return self.size
        return i * self.piece + self.done[i]

    def to_json(self) -> str:
        return json.dumps(
            {
                "version": MAP_VERSION,
                "size": self.size,
                "piece": self.piece,
                "done": self.done,
                "source": self.source,
                "validator": self.validator,
                "ranges": self.ranges,
                "saved": time.time(),
            }
        )

    @classmethod
    def from_json(cls, text: str) -> PieceMap:
        """Parse a saved map.

        Raises:
            InvalidRequest: the text is not a map of this version, or its numbers do not add up.
        """
        try:
            data = json.loads(text)
        except ValueError as e:
            raise InvalidRequest(f"download map is not JSON: {e}") from e
        if not isinstance(data, dict) or data.get("version") != MAP_VERSION:
            raise InvalidRequest("download map has an unknown version")
        size, piece, done = data.get("size"), data.get("piece"), data.get("done")
        if not (isinstance(size, int) and isinstance(piece, int) and isinstance(done, list)):
            raise InvalidRequest("download map lacks size, piece or done")
        if size < 0 or piece <= 0 or len(done) != max(1, -(-size // piece)):
            raise InvalidRequest("download map has an inconsistent piece count")
        m = cls(size, piece, [0] * len(done), str(data.get("source") or ""))
        for i, d in enumerate(done):
            if not isinstance(d, int) or not 0 <= d <= m.piece_len(i):
                raise InvalidRequest(f"download map piece {i} has an invalid byte count")
            m.done[i] = d
        validator = data.get("validator")
        m.validator = validator if isinstance(validator, str) else None
        m.ranges = bool(data.get("ranges", True))
        return m


def parse_content_range(value: str | None) -> tuple[int, int, int | None]:
    """``(first, last, total)`` of a ``Content-Range: bytes first-last/total`` header.

    Raises:
        InvalidRequest: the header is missing or malformed (``total`` is None for ``*``).
    """
    m = _CONTENT_RANGE_RE.match(value or "")
    if not m:
        raise InvalidRequest(f"malformed Content-Range {value!r}")
    first, last = int(m.group(1)), int(m.group(2))
    total = None if m.group(3) == "*" else int(m.group(3))
    if last < first or (total is not None and last >= total):
        raise InvalidRequest(f"inconsistent Content-Range {value!r}")
    return first, last, total


def parse_retry_after(value: str | None, *, now: float | None = None, cap: float = 300.0) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta seconds or an HTTP date), capped."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), cap)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    delta = float(when.timestamp()) - (time.time() if now is None else now)
    return min(max(0.0, delta), cap)


def strong_validator(etag: str | None, last_modified: str | None) -> str | None:
    """A validator usable in ``If-Range``: a strong ETag, else Last-Modified, else None."""
    if etag and not etag.startswith("W/"):
        return etag
    return last_modified or None


#: HTTP statuses worth retrying (the server or a proxy may recover).
RETRYABLE_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
