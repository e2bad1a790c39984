"""Reading the text metadata (``tEXt``, ``zTXt``, ``iTXt``) back out of a PNG file.

:func:`read_png_text` walks the chunks, verifies every CRC and decodes the text chunks with a cap
on decompressed size. Separate from the encoder (:mod:`podkit.backends.png`): it parses files,
the encoder writes them; it shares only the format's constants.
"""

from __future__ import annotations

import struct
import zlib

from .png import _MAX_CHUNK, _SIGNATURE

_MAX_TEXT_BYTES = 64 * 1024 * 1024  # read_png_text: refuse more decoded text than this


def read_png_text(data: bytes) -> dict[str, str]:
    """Return the text metadata (``tEXt``, ``zTXt`` and ``iTXt`` chunks) of a PNG file.

    Every chunk's CRC is verified. Later chunks win over earlier ones with the same key, as in Pillow.

    Args:
        data: The complete PNG file.

    Returns:
        A dict from keyword to text, in file order.

    Raises:
        ValueError: If ``data`` is not a well-formed PNG (bad signature, truncated or corrupt chunk,
            bad CRC, missing IEND, undecodable text chunk) or holds more than 64 MiB of text.
    """
    view = memoryview(data)
    if bytes(view[:8]) != _SIGNATURE:
        raise ValueError("not a PNG file: bad signature")
    texts: dict[str, str] = {}
    total = 0
    pos = 8
    first = True
    while True:
        if pos + 12 > len(view):
            raise ValueError(f"truncated PNG: chunk header expected at offset {pos} (no IEND)")
        length, kind = struct.unpack_from(">I4s", view, pos)
        if length > _MAX_CHUNK or not kind.isalpha():
            raise ValueError(f"corrupt PNG chunk header at offset {pos}")
        end = pos + 8 + length
        if end + 4 > len(view):
            raise ValueError(f"truncated PNG: {kind.decode('ascii')} chunk at offset {pos} runs past the end")
        body = view[pos + 8 : end]
        (crc,) = struct.unpack_from(">I", view, end)
        if zlib.crc32(body, zlib.crc32(kind)) != crc:
            raise ValueError(f"CRC mismatch in {kind.decode('ascii')} chunk at offset {pos}")
        if first and kind != b"IHDR":
            raise ValueError("malformed PNG: first chunk is not IHDR")
        first = False
        if kind == b"IEND":
            return texts
        if kind in (b"tEXt", b"zTXt", b"iTXt"):
            key, value = _parse_text_chunk(kind, bytes(body), _MAX_TEXT_BYTES - total)
            total += len(value)
            if total > _MAX_TEXT_BYTES:
                raise ValueError(f"PNG text exceeds {_MAX_TEXT_BYTES} bytes")
            texts[key] = value
        pos = end + 4


def _parse_text_chunk(kind: bytes, body: bytes, budget: int) -> tuple[str, str]:
    name = kind.decode("ascii")
    keyword, sep, rest = body.partition(b"\0")
    if not sep or not 1 <= len(keyword) <= 79:
        raise ValueError(f"malformed {name} chunk: missing or bad keyword")
    key = keyword.decode("latin-1")
    if kind == b"tEXt":
        return key, rest.decode("latin-1")
    if kind == b"zTXt":
        if rest[:1] != b"\0":
            raise ValueError(f"malformed zTXt chunk {key!r}: unknown compression method")
        return key, _inflate(rest[1:], budget, key).decode("latin-1")
    if len(rest) < 2 or rest[1] != 0 or rest[0] not in (0, 1):
        raise ValueError(f"malformed iTXt chunk {key!r}: bad compression flag or method")
    compressed = rest[0] == 1
    parts = rest[2:].split(b"\0", 2)
    if len(parts) != 3:
        raise ValueError(f"malformed iTXt chunk {key!r}: missing language or translated keyword")
    raw = _inflate(parts[2], budget, key) if compressed else parts[2]
    try:
        return key, raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"malformed iTXt chunk {key!r}: text is not UTF-8") from exc


def _inflate(data: bytes, budget: int, key: str) -> bytes:
    decompressor = zlib.decompressobj()
    try:
        out = decompressor.decompress(data, max(budget, 0) + 1)
    except zlib.error as exc:
        raise ValueError(f"corrupt compressed text in chunk {key!r}: {exc}") from exc
    if len(out) > budget or decompressor.unconsumed_tail:
        raise ValueError(f"PNG text exceeds {_MAX_TEXT_BYTES} bytes")
    if not decompressor.eof:
        raise ValueError(f"truncated compressed text in chunk {key!r}")
    return out
