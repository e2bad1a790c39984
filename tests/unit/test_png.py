"""Tests for the PNG encoder in ``backends/png.py`` (and ``png_filters.py``, ``png_read.py``): exactness,
metadata, validation, size."""

from __future__ import annotations

import io
import json
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageDraw
from PIL.PngImagePlugin import PngImageFile, PngInfo

from podkit.backends import png as png_module
from podkit.backends import png_read
from podkit.backends.png import PngStrategy, encode_png, to_uint8
from podkit.backends.png_read import read_png_text

FILTERS = ["adaptive", "none", "sub", "up", "average", "paeth"]
STRATEGIES = ["auto", "default", "filtered", "rle", "huffman"]


# ------------------------------------------------------------------------------------------------
# helpers


def natural_float(
    height: int, width: int, channels: int = 3, seed: int = 0, sigma: float = 4.0
) -> np.ndarray:
    """A natural-looking float32 image: gradients + low-frequency blobs + gaussian noise (in 0..255 units)."""
    rng = np.random.default_rng(seed)
    y = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None]
    x = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :]
    image = np.empty((height, width, channels), dtype=np.float32)
    for c in range(channels):
        plane = 0.5 + 0.2 * (x * rng.uniform(-1, 1) + y * rng.uniform(-1, 1))
        for _ in range(6):
            cx, cy = rng.uniform(0, 1, 2)
            radius = rng.uniform(0.05, 0.3)
            plane = plane + rng.uniform(-0.4, 0.4) * np.exp(
                -((x - cx) ** 2 + (y - cy) ** 2) / (2 * radius**2)
            )
        image[..., c] = plane
    image += rng.normal(0.0, sigma / 255.0, image.shape).astype(np.float32)
    return image


def natural(height: int, width: int, channels: int = 3, seed: int = 0, sigma: float = 4.0) -> np.ndarray:
    """:func:`natural_float` converted to uint8 the ComfyUI way."""
    return np.clip(255.0 * natural_float(height, width, channels, seed, sigma), 0, 255).astype(np.uint8)


def cartoon(height: int, width: int, seed: int = 1) -> np.ndarray:
    """Flat colours, hard outlines and text: content where LZ77 matching beats RLE."""
    rng = np.random.default_rng(seed)
    canvas = Image.new("RGB", (width, height), (240, 230, 200))
    draw = ImageDraw.Draw(canvas)
    for _ in range(40):
        x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
        r = int(rng.integers(5, max(6, width // 5)))
        fill = tuple(int(v) for v in rng.integers(0, 256, 3))
        draw.ellipse([x0 - r, y0 - r, x0 + r, y0 + r], fill=fill, outline=(0, 0, 0), width=3)
    for _ in range(20):
        draw.text((int(rng.integers(0, width)), int(rng.integers(0, height))), "PodKit " * 4, fill=(0, 0, 0))
    return np.asarray(canvas)


def decode(data: bytes) -> PngImageFile:
    image = Image.open(io.BytesIO(data))
    assert isinstance(image, PngImageFile)
    image.load()
    return image


def chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """(type, data) of every chunk, without any checking."""
    out = []
    pos = 8
    while pos < len(data):
        (length,) = struct.unpack_from(">I", data, pos)
        out.append((data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]))
        pos += 12 + length
    return out


def pil_png(pixels: np.ndarray, text: dict[str, str] | None = None, level: int = 4) -> bytes:
    """ComfyUI SaveImage's encoding."""
    info = None
    if text is not None:
        info = PngInfo()
        for key, value in text.items():
            info.add_text(key, value)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", pnginfo=info, compress_level=level)
    return buffer.getvalue()


def assert_round_trip(pixels: np.ndarray, **options: Any) -> bytes:
    """Encode, check the file structurally and check that it decodes to exactly ``pixels``."""
    data = encode_png(pixels, **options)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    read_png_text(data)  # verifies every chunk's CRC and the chunk structure
    idat = b"".join(body for kind, body in chunks(data) if kind == b"IDAT")
    stride = pixels.shape[1] * (1 if pixels.ndim == 2 else pixels.shape[2])
    assert len(zlib.decompress(idat)) == pixels.shape[0] * (stride + 1)  # checks the adler32 too
    image = decode(data)
    expected_mode = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[1 if pixels.ndim == 2 else pixels.shape[2]]
    assert image.mode == expected_mode
    assert image.size == (pixels.shape[1], pixels.shape[0])
    np.testing.assert_array_equal(np.asarray(image).reshape(pixels.shape), pixels)
    return data


# ------------------------------------------------------------------------------------------------
# round trips


@pytest.mark.parametrize(
    "shape",
    [(1, 1, 3), (3, 7, 3), (1000, 3, 3), (3, 1000, 3), (1, 1), (5, 9), (5, 9, 1), (4, 6, 2), (7, 3, 4),
     (1, 1, 4), (130, 257, 4), (64, 64)],
)  # fmt: skip
def test_round_trip_shapes(shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(sum(shape))
    assert_round_trip(rng.integers(0, 256, shape, dtype=np.uint8))
    channels = 1 if len(shape) == 2 else shape[2]
    smooth = natural(shape[0], shape[1], channels, seed=3).reshape(shape)
    assert_round_trip(smooth)


@pytest.mark.parametrize("filter_name", FILTERS)
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_round_trip_filters_and_strategies(filter_name: str, strategy: str) -> None:
    for pixels in (natural(61, 47, 3, seed=5), natural(9, 13, 4, seed=6), natural(20, 30, 1, seed=7)[..., 0]):
        assert_round_trip(pixels, filter=filter_name, strategy=strategy)


@pytest.mark.parametrize("level", range(10))
def test_round_trip_levels(level: int) -> None:
    data = assert_round_trip(natural(300, 400, 3, seed=level), level=level)
    assert data[data.index(b"IDAT") + 4] == 0x78  # zlib header: deflate with a 32 KiB window


def test_level_zero_stores() -> None:
    pixels = natural(64, 64, 3)
    assert len(assert_round_trip(pixels, level=0)) > pixels.size


@pytest.mark.parametrize("threads", [1, 2, 3, 5, 8, 64])
@pytest.mark.parametrize("filter_name", ["adaptive", "up", "paeth"])
def test_threads_decode_to_the_same_pixels(threads: int, filter_name: str) -> None:
    pixels = natural(384, 512, 3, seed=11)  # 576 KiB raw: big enough for parallel bands
    data = assert_round_trip(pixels, threads=threads, filter=filter_name)
    n_idat = sum(1 for kind, _ in chunks(data) if kind == b"IDAT")
    assert (n_idat == 1) if threads == 1 else (n_idat > 1)


@pytest.mark.parametrize("strategy", ["auto", "default", "rle"])
def test_parallel_bands_cost_little_ratio(strategy: PngStrategy) -> None:
    """Bands primed with the previous band's last 32 KiB compress almost as well as one stream."""
    for pixels in (natural(512, 512, 3, seed=2), cartoon(512, 512)):
        one = len(encode_png(pixels, threads=1, strategy=strategy))
        many = len(assert_round_trip(pixels, threads=8, strategy=strategy))
        assert many <= one * 1.02


def test_tall_narrow_and_wide_flat_images_in_parallel() -> None:
    assert_round_trip(natural(3000, 40, 3, seed=1), threads=4)  # more bands than a few rows each
    assert_round_trip(natural(2, 70000, 3, seed=1), threads=4)  # fewer rows than wanted bands
    assert_round_trip(np.zeros((600, 600, 4), dtype=np.uint8), threads=4)
    assert_round_trip(np.full((600, 600, 3), 255, dtype=np.uint8), threads=3)


def test_gray_layouts_and_non_contiguous_input() -> None:
    gray = natural(40, 50, 1, seed=4)
    assert encode_png(gray) == encode_png(gray[..., 0])
    wide = natural(40, 100, 3, seed=4)
    assert_round_trip(wide[:, ::2])  # non-contiguous view
    assert_round_trip(np.asfortranarray(wide))


def test_concurrent_callers_share_the_pool() -> None:
    images = [natural(300, 300 + 10 * i, 3, seed=i) for i in range(6)]
    with ThreadPoolExecutor(4) as callers:
        results = list(callers.map(lambda p: encode_png(p, threads=2), images))
    for pixels, data in zip(images, results, strict=True):
        np.testing.assert_array_equal(np.asarray(decode(data)), pixels)


def test_adler32_combine_matches_zlib() -> None:
    rng = np.random.default_rng(0)
    blob = rng.integers(0, 256, 200_000, dtype=np.uint8).tobytes()
    for cut in (0, 1, 5552, 65521, 65522, 131_042, 199_999, 200_000):
        a, b = blob[:cut], blob[cut:]
        combined = png_module._adler32_combine(zlib.adler32(a), zlib.adler32(b), len(b))
        assert combined == zlib.adler32(blob)


# ------------------------------------------------------------------------------------------------
# size against ComfyUI's SaveImage (PIL compress_level=4)


@pytest.mark.parametrize("sigma", [4.0, 1.0, 0.0])
def test_size_close_to_saveimage_on_natural_images(sigma: float) -> None:
    pixels = natural(512, 512, 3, seed=9, sigma=sigma)
    assert len(encode_png(pixels)) <= 1.15 * len(pil_png(pixels))


def test_size_close_to_saveimage_on_flat_artwork() -> None:
    pixels = cartoon(512, 512)
    assert len(encode_png(pixels)) <= 1.15 * len(pil_png(pixels))


def test_auto_strategy_beats_plain_level_1_on_noisy_images() -> None:
    pixels = natural(512, 512, 3, seed=9)
    auto = len(encode_png(pixels))
    assert auto < len(encode_png(pixels, level=1, strategy="default"))
    assert auto < len(pil_png(pixels))


def test_auto_strategy_picks_per_content() -> None:
    def pick(pixels: np.ndarray) -> tuple[int, int]:
        rows = pixels.reshape(pixels.shape[0], -1)
        options = png_module._Options(pixels.shape[2], -1, 4, -1)
        return png_module._pick_method(rows, 0, rows.shape[0], options)

    assert pick(natural(256, 256, 3, seed=1)) == (1, zlib.Z_RLE)  # fine noise: RLE
    assert pick(cartoon(256, 256)) == (4, zlib.Z_DEFAULT_STRATEGY)  # flat artwork: LZ77 at `level`
    noise = np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    assert pick(noise) == (1, zlib.Z_DEFAULT_STRATEGY)  # incompressible: fastest LZ77


# ------------------------------------------------------------------------------------------------
# text metadata


COMFY_TEXT = {
    "prompt": json.dumps({"3": {"class_type": "KSampler", "inputs": {"seed": 42, "text": "a cat, étoile"}}}),
    "workflow": json.dumps({"nodes": [{"id": i, "type": "CLIPTextEncode"} for i in range(50)]}),
}


@pytest.mark.parametrize(
    "text",
    [
        COMFY_TEXT,
        {"prompt": "plain ascii", "latin": "café ÿ"},
        {"prompt": json.dumps({"t": "猫 🐱"}, ensure_ascii=False), "workflow": "{}"},
        {"empty": ""},
        {"k" * 79: "max keyword length"},
    ],
)
def test_text_chunks_match_pil(text: dict[str, str]) -> None:
    pixels = natural(20, 30, 3)
    ours = encode_png(pixels, text=text)
    image = decode(ours)
    assert image.text == text
    for key, value in text.items():
        assert image.info[key] == value
    assert read_png_text(ours) == text
    # Byte-identical metadata chunks, in the same place as PIL's (right after IHDR, before IDAT).
    ours_meta = [c for c in chunks(ours) if c[0] != b"IDAT"]
    pil_meta = [c for c in chunks(pil_png(pixels, text)) if c[0] != b"IDAT"]
    assert ours_meta == pil_meta
    kinds = [kind for kind, _ in chunks(ours)]
    n_idat = kinds.count(b"IDAT")
    assert kinds == [b"IHDR", *[kind for kind, _ in pil_meta[1:-1]], *[b"IDAT"] * n_idat, b"IEND"]


def test_non_latin1_text_is_itxt() -> None:
    data = encode_png(natural(8, 8, 3), text={"prompt": "naïve", "workflow": "ünïcode ✓ 猫"})
    kinds = {body.split(b"\0", 1)[0]: kind for kind, body in chunks(data) if kind in (b"tEXt", b"iTXt")}
    assert kinds == {b"prompt": b"tEXt", b"workflow": b"iTXt"}
    assert decode(data).text == {"prompt": "naïve", "workflow": "ünïcode ✓ 猫"}
    assert read_png_text(data) == {"prompt": "naïve", "workflow": "ünïcode ✓ 猫"}


def test_no_text_means_no_text_chunks() -> None:
    data = encode_png(natural(8, 8, 3))
    assert [kind for kind, _ in chunks(data)] == [b"IHDR", b"IDAT", b"IEND"]
    assert read_png_text(data) == {}
    assert encode_png(natural(8, 8, 3), text={}) == data


@pytest.mark.parametrize("key", ["", "k" * 80, "a\0b", "ключ"])
def test_bad_text_keys_are_rejected(key: str) -> None:
    with pytest.raises(ValueError, match="key"):
        encode_png(natural(4, 4, 3), text={key: "v"})


def test_non_str_text_is_rejected() -> None:
    with pytest.raises(ValueError, match="str"):
        not_text: Any = {"k": 1}
        encode_png(natural(4, 4, 3), text=not_text)


def test_unencodable_text_value_is_rejected() -> None:
    with pytest.raises(ValueError, match="UTF-8"):
        encode_png(natural(4, 4, 3), text={"k": "lone \ud800 surrogate"})


def test_read_png_text_reads_compressed_chunks_written_by_pil() -> None:
    info = PngInfo()
    info.add_text("plain", "tEXt value")
    info.add_text("zipped", "zTXt value " * 50, zip=True)
    info.add_itxt("intl", "iTXt ✓ value", lang="en", tkey="Intl")
    info.add_itxt("intl_zip", "compressed iTXt ✓ " * 50, zip=True)
    buffer = io.BytesIO()
    Image.fromarray(natural(8, 8, 3)).save(buffer, format="PNG", pnginfo=info)
    assert read_png_text(buffer.getvalue()) == {
        "plain": "tEXt value",
        "zipped": "zTXt value " * 50,
        "intl": "iTXt ✓ value",
        "intl_zip": "compressed iTXt ✓ " * 50,
    }


def test_read_png_text_later_chunk_wins() -> None:
    data = encode_png(natural(4, 4, 3), text={"a": "1", "b": "x"})
    extra = png_module._chunk(b"tEXt", b"a\x002")  # after IDAT, just before IEND
    assert read_png_text(data[:-12] + extra + data[-12:]) == {"a": "2", "b": "x"}


# ------------------------------------------------------------------------------------------------
# malformed PNGs


def corrupt(data: bytes, offset: int) -> bytes:
    return data[:offset] + bytes([data[offset] ^ 0x01]) + data[offset + 1 :]


def test_read_png_text_rejects_bad_crc() -> None:
    data = encode_png(natural(16, 16, 3), text=COMFY_TEXT)
    start = data.index(b"tEXt")
    with pytest.raises(ValueError, match="CRC"):
        read_png_text(corrupt(data, start + 10))  # flipped bit in the text
    with pytest.raises(ValueError, match="CRC"):
        read_png_text(corrupt(data, len(data) - 20))  # flipped bit in IDAT
    with pytest.raises(ValueError, match="CRC"):
        read_png_text(corrupt(data, len(data) - 1))  # flipped bit in IEND's CRC


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: b"",
        lambda d: b"GIF89a" + d[6:],
        lambda d: d[:-12],  # no IEND
        lambda d: d[:-5],  # truncated IEND
        lambda d: d[:40],  # truncated mid-chunk
        lambda d: d[:8] + d[33:],  # IHDR missing
        lambda d: d[:8] + b"\xff\xff\xff\xff" + d[12:],  # absurd chunk length
        lambda d: d[:12] + b"IH1R" + d[16:],  # non-letter chunk type
    ],
)
def test_read_png_text_rejects_malformed_files(mutate: Any) -> None:
    data = encode_png(natural(16, 16, 3), text={"a": "b"})
    with pytest.raises(ValueError):
        read_png_text(mutate(data))


@pytest.mark.parametrize(
    "kind, body",
    [
        (b"tEXt", b"no separator"),
        (b"tEXt", b"\0empty keyword"),
        (b"zTXt", b"k\0\x01" + zlib.compress(b"v")),  # unknown compression method
        (b"zTXt", b"k\0\0not zlib"),
        (b"zTXt", b"k\0\0" + zlib.compress(b"value")[:-3]),  # truncated stream
        (b"iTXt", b"k\0\x02\0\0\0v"),  # bad compression flag
        (b"iTXt", b"k\0\0\0lang-only"),  # missing separators
        (b"iTXt", b"k\0\0\0\0\0\xff\xfe"),  # not UTF-8
    ],
)
def test_read_png_text_rejects_malformed_text_chunks(kind: bytes, body: bytes) -> None:
    data = encode_png(natural(4, 4, 3))
    ihdr_end = 8 + 25
    with pytest.raises(ValueError):
        read_png_text(data[:ihdr_end] + png_module._chunk(kind, body) + data[ihdr_end:])


def test_read_png_text_limits_decompressed_text(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(png_read, "_MAX_TEXT_BYTES", 1000)
    data = encode_png(natural(4, 4, 3))
    ihdr_end = 8 + 25
    bomb = png_module._chunk(b"zTXt", b"k\0\0" + zlib.compress(b"x" * 5000))
    with pytest.raises(ValueError, match="exceeds"):
        read_png_text(data[:ihdr_end] + bomb + data[ihdr_end:])
    plain = png_module._chunk(b"tEXt", b"k\0" + b"x" * 1200)
    with pytest.raises(ValueError, match="exceeds"):
        read_png_text(data[:ihdr_end] + plain + data[ihdr_end:])


# ------------------------------------------------------------------------------------------------
# to_uint8


@pytest.mark.parametrize("shape", [(1, 1, 3), (7, 5, 4), (300, 301, 3), (64, 64, 1), (9, 11)])
def test_to_uint8_matches_comfyui_formula(shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(1)
    image = rng.uniform(-0.5, 1.5, shape).astype(np.float32)
    edges = np.array([0.0, 1.0, -0.0, 0.5 / 255, 254.5 / 255, 1 / 255, 1 - 1e-7, 255.99 / 255], np.float32)
    n = min(edges.size, image.size)
    image.reshape(-1)[:n] = edges[:n]
    expected = np.clip(255.0 * image, 0, 255).astype(np.uint8)
    result = to_uint8(image)
    assert result.dtype == np.uint8 and result.shape == image.shape
    np.testing.assert_array_equal(result, expected)


def test_to_uint8_natural_image_and_other_float_types() -> None:
    image = natural_float(200, 300, 3, seed=8)
    np.testing.assert_array_equal(to_uint8(image), np.clip(255.0 * image, 0, 255).astype(np.uint8))
    np.testing.assert_array_equal(
        to_uint8(image[:, ::3]), np.clip(255.0 * image[:, ::3], 0, 255).astype(np.uint8)
    )
    for dtype in (np.float16, np.float64):
        cast = image.astype(dtype)
        np.testing.assert_array_equal(to_uint8(cast), np.clip(255.0 * cast, 0, 255).astype(np.uint8))


@pytest.mark.parametrize(
    "image, message",
    [
        (np.zeros((4, 4, 3), dtype=np.uint8), "floating-point"),
        (np.zeros((4, 4, 3), dtype=np.int32), "floating-point"),
        (np.zeros((1, 4, 4, 3), dtype=np.float32), "shape"),
        (np.zeros((4,), dtype=np.float32), "shape"),
        (np.zeros((4, 4, 5), dtype=np.float32), "channels"),
        (np.zeros((0, 4, 3), dtype=np.float32), "non-empty"),
        ([[0.0]], "numpy array"),
    ],
)
def test_to_uint8_rejects_bad_input(image: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        to_uint8(image)


# ------------------------------------------------------------------------------------------------
# encode_png input validation


@pytest.mark.parametrize(
    "pixels, message",
    [
        (np.zeros((4, 4, 3), dtype=np.float32), "uint8"),
        (np.zeros((4, 4, 3), dtype=np.uint16), "uint8"),
        (np.zeros((4, 4, 3), dtype=bool), "uint8"),
        (np.zeros((4,), dtype=np.uint8), "shape"),
        (np.zeros((2, 4, 4, 3), dtype=np.uint8), "shape"),
        (np.zeros((4, 4, 5), dtype=np.uint8), "channels"),
        (np.zeros((4, 4, 0), dtype=np.uint8), "channels"),
        (np.zeros((0, 4, 3), dtype=np.uint8), "non-empty"),
        (np.zeros((4, 0), dtype=np.uint8), "non-empty"),
        (b"not an array", "numpy array"),
    ],
)
def test_encode_png_rejects_bad_pixels(pixels: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        encode_png(pixels)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"level": -1}, "level"),
        ({"level": 10}, "level"),
        ({"level": 4.0}, "level"),
        ({"level": True}, "level"),
        ({"threads": 0}, "threads"),
        ({"threads": -2}, "threads"),
        ({"threads": 1.5}, "threads"),
        ({"filter": "median"}, "filter"),
        ({"strategy": "fast"}, "strategy"),
    ],
)
def test_encode_png_rejects_bad_options(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        encode_png(np.zeros((4, 4, 3), dtype=np.uint8), **options)
