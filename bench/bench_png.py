"""Benchmark ``backends/png.py`` against ComfyUI's ``SaveImage`` encoding.

Run from the repository root::

    .venv/bin/python bench/bench_png.py [--runs 7] [--sizes 1024 2048] [--threads N]

For each size it builds a natural-looking float32 RGB image (gradients + low-frequency blobs +
gaussian noise, sigma 4/255, like ``tensor.cpu().numpy()`` of a generated image) and ComfyUI-like
metadata (a ~10 KB ``prompt`` JSON and a ~40 KB ``workflow`` JSON), then times, interleaved:

* ``saveimage``: ComfyUI's exact path: ``255. * image`` -> clip -> uint8 -> ``Image.fromarray`` ->
  ``save(BytesIO, pnginfo=PngInfo, compress_level=4)``;
* ``pil-level1``: the same with ``compress_level=1``;
* ``podkit``: ``encode_png(to_uint8(image), text=...)`` at its default settings (``--threads``
  overrides the thread count);
* ``podkit-1thr``: the same on the calling thread only (``threads=1``), which shows the gain without
  parallelism and is what to expect when the other cores are busy.

Every encoder starts from the float32 image, so conversion is included in every time. The script
also checks that all the files decode to the same pixels and carry the same text.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from types import ModuleType

import numpy as np
from PIL import Image
from PIL.PngImagePlugin import PngInfo


def load_png_module() -> ModuleType:
    """Import ``backends/png.py`` through the package (it imports its filters from ``png_filters.py``)."""
    import _bootstrap

    _bootstrap.register_package()
    from podkit.backends import png

    return png


def natural_image(size: int, seed: int = 0) -> np.ndarray:
    """A deterministic natural-looking float32 [H, W, 3] image in 0..1."""
    rng = np.random.default_rng(seed)
    y = np.linspace(0.0, 1.0, size, dtype=np.float32)[:, None]
    x = np.linspace(0.0, 1.0, size, dtype=np.float32)[None, :]
    image = np.empty((size, size, 3), dtype=np.float32)
    for c in range(3):
        plane = 0.5 + 0.2 * (x * rng.uniform(-1, 1) + y * rng.uniform(-1, 1))
        for _ in range(8):
            cx, cy = rng.uniform(0, 1, 2)
            radius = rng.uniform(0.05, 0.3)
            plane = plane + rng.uniform(-0.4, 0.4) * np.exp(
                -((x - cx) ** 2 + (y - cy) ** 2) / (2 * radius**2)
            )
        image[..., c] = plane
    image += rng.normal(0.0, 4.0 / 255.0, image.shape).astype(np.float32)
    return np.clip(image, 0.0, 1.0).astype(np.float32)


def comfy_metadata(seed: int = 0) -> dict[str, str]:
    """ComfyUI-like ``prompt`` (~10 KB) and ``workflow`` (~40 KB) JSON, serialised like SaveImage."""
    rng = np.random.default_rng(seed)
    words = ["portrait", "cinematic", "lighting", "detailed", "forest", "mist", "golden", "hour", "35mm"]
    prompt: dict[str, object] = {}
    node = 0
    while len(json.dumps(prompt)) < 10_000:
        node += 1
        text = ", ".join(str(w) for w in rng.choice(words, 12))
        prompt[str(node)] = {
            "inputs": {"text": text, "seed": int(rng.integers(0, 2**48)), "steps": 30, "cfg": 6.5,
                       "sampler_name": "dpmpp_2m", "scheduler": "karras", "clip": [str(node - 1), 0]},
            "class_type": "CLIPTextEncode" if node % 2 else "KSampler",
            "_meta": {"title": f"Node {node}"},
        }  # fmt: skip
    nodes: list[dict[str, object]] = []
    while len(json.dumps({"nodes": nodes})) < 40_000:
        i = len(nodes) + 1
        nodes.append(
            {"id": i, "type": "KSampler", "pos": [float(rng.uniform(0, 3000)), float(rng.uniform(0, 2000))],
             "size": [315, 262], "flags": {}, "order": i, "mode": 0,
             "inputs": [{"name": "model", "type": "MODEL", "link": i * 2}],
             "outputs": [{"name": "LATENT", "type": "LATENT", "links": [i * 2 + 1], "slot_index": 0}],
             "properties": {"Node name for S&R": "KSampler"},
             "widgets_values": [int(rng.integers(0, 2**48)), "randomize", 30, 6.5, "dpmpp_2m", "karras", 1]}
        )  # fmt: skip
    workflow = {
        "last_node_id": len(nodes), "last_link_id": 2 * len(nodes) + 1, "nodes": nodes, "links": [],
        "groups": [], "config": {}, "extra": {"ds": {"scale": 1.0}}, "version": 0.4,
    }  # fmt: skip
    return {"prompt": json.dumps(prompt), "workflow": json.dumps(workflow)}


def pil_encode(image: np.ndarray, text: dict[str, str], level: int) -> bytes:
    """ComfyUI ``SaveImage.save_images`` for one image, into memory instead of a file."""
    i = 255.0 * image
    img = Image.fromarray(np.clip(i, 0, 255).astype(np.uint8))
    metadata = PngInfo()
    for key, value in text.items():
        metadata.add_text(key, value)
    buffer = io.BytesIO()
    img.save(buffer, pnginfo=metadata, compress_level=level, format="PNG")
    return buffer.getvalue()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=7, help="timed runs per encoder (default 7)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048], help="square image sizes")
    parser.add_argument("--threads", type=int, default=None, help="encode_png threads (default: auto)")
    args = parser.parse_args()

    png = load_png_module()
    text = comfy_metadata()
    print(f"python {sys.version.split()[0]}, numpy {np.__version__}, Pillow {Image.__version__}, "
          f"cpus {os.cpu_count()}, load avg {os.getloadavg()[0]:.2f}")  # fmt: skip
    sizes = f"prompt {len(text['prompt'])} B, workflow {len(text['workflow'])} B"
    print(f"text: {sizes}; {args.runs} runs per encoder, interleaved")

    def podkit(threads: int | None) -> Callable[[np.ndarray], bytes]:
        return lambda image: bytes(png.encode_png(png.to_uint8(image), text=text, threads=threads))

    encoders: dict[str, Callable[[np.ndarray], bytes]] = {
        "saveimage": lambda image: pil_encode(image, text, 4),
        "pil-level1": lambda image: pil_encode(image, text, 1),
        "podkit": podkit(args.threads),
        "podkit-1thr": podkit(1),
    }

    columns = [("size", ">9"), ("encoder", "<12"), ("min ms", ">8"), ("median ms", ">10"), ("bytes", ">10"),
               ("time/SI", ">8"), ("size/SI", ">8")]  # fmt: skip
    header = " ".join(f"{name:{spec}}" for name, spec in columns)
    rows: list[str] = []
    for size in args.sizes:
        image = natural_image(size, seed=size)
        outputs = {name: encode(image) for name, encode in encoders.items()}  # warm-up + check
        reference = np.asarray(Image.open(io.BytesIO(outputs["saveimage"])))
        for name, data in outputs.items():
            decoded = Image.open(io.BytesIO(data))
            assert decoded.text == text, name
            assert np.array_equal(np.asarray(decoded), reference), name
        times: dict[str, list[float]] = {name: [] for name in encoders}
        for _ in range(args.runs):
            for name, encode in encoders.items():
                start = time.perf_counter()
                encode(image)
                times[name].append((time.perf_counter() - start) * 1000)
        base_time = statistics.median(times["saveimage"])
        base_size = len(outputs["saveimage"])
        for name in encoders:
            median = statistics.median(times[name])
            rows.append(
                f"{size:>4}x{size:<4} {name:<12} {min(times[name]):>8.1f} {median:>10.1f} "
                f"{len(outputs[name]):>10,} {median / base_time:>8.2f} {len(outputs[name]) / base_size:>8.3f}"
            )
    print()
    print(header)
    print("-" * len(header))
    print("\n".join(rows))
    print(f"\n(time/SI: median time / SaveImage median; size/SI: bytes / SaveImage bytes; "
          f"load avg now {os.getloadavg()[0]:.2f})")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
