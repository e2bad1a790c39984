"""PodKit's cached banded VAE decode vs ComfyUI's full decode and ComfyUI's tiled decode, same random SD VAE.

Run with the ComfyUI venv::

    "$COMFYUI_PATH"/venv/bin/python bench/bench_decode.py [--sizes 512 1024] [--json PATH]

(``--comfy`` defaults to ``$COMFYUI_PATH``.) The parent writes one random full-size SD1.x VAE
(``AutoencoderKL``, ch 128, ch_mult 1,2,4,4, 83.7M params, N(0, 1/fan_in) weights, fp32) to a temp
folder. Every case then runs in a fresh subprocess, so each peak RSS is its own: the child loads the
VAE with ``comfy.sd.VAE(sd=comfy.utils.load_torch_file(...))`` (device: CPU, ``args.cpu = True``),
makes a seeded ``randn(1, 4, h, w)`` latent, resets the kernel's peak-RSS counter
(``/proc/self/clear_refs``) and decodes once inside ``torch.inference_mode()``:

- **full**: ``vae.decode`` (what core VAE Decode runs), the time and PSNR anchor;
- **comfy tiled**: ``vae.decode_tiled(tile_x=64, tile_y=64, overlap=8)``: core VAE Decode (Tiled) with
  its defaults (512 px tiles, 64 px overlap), the memory anchor;
- **podkit**: ``backends.vae_decode.cached_decode`` as the node calls it (band from free memory, a
  fresh decode cache: a miss, including the latent digest and keeping the image), then five more calls
  with the same latent: cache hits (latent digest + lookup + copy), timed each.

Printed: decode seconds and ratio to full, peak RSS (absolute, the process baseline of imports +
weights included, and the baseline itself), PSNR of each output against full's. Targets (PERF.md):
podkit ≤ 1.3× full's time, peak RSS ≤ comfy tiled's, PSNR ≥ 40 dB, cache hit ≤ 20 ms. The foreign
CPU (other processes) during each case is reported, not used to discard: a 1024² tiled decode takes
minutes.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _bootstrap
from _common import CpuGuard, emit_json, print_table

GiB = 2**30
CASES = ("full", "exact", "podkit", "comfy_tiled")
DEFAULT_CASES = ("full", "podkit", "comfy_tiled")


def import_comfy(comfy: Path) -> None:
    if str(comfy) not in sys.path:
        sys.path.insert(0, str(comfy))
    import comfy.cli_args

    comfy.cli_args.args.cpu = True
    import utils.install_util  # noqa: F401  (ComfyUI's own import order: before comfy.sd pulls nodes' deps)


def make_vae(comfy: Path, path: Path, seed: int) -> None:
    """Write a random full-size SD1.x VAE (all encoder + decoder keys, fp32) as safetensors."""
    import_comfy(comfy)
    from comfy.ldm.models.autoencoder import AutoencoderKL
    from ldm_vae import randomize
    from make_tiny_models import VAE_DDCONFIG  # comfy.sd.VAE's SD1.x config
    from safetensors.torch import save_file

    model = AutoencoderKL(ddconfig=dict(VAE_DDCONFIG), embed_dim=4)
    randomize(model, seed)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def child(args: argparse.Namespace) -> None:
    import_comfy(Path(args.comfy))
    import comfy.model_management as mm
    import comfy.sd
    import comfy.utils
    import numpy as np
    import torch

    _bootstrap.register_package()
    from podkit.backends.vae_decode import DecodeHost, cached_decode
    from podkit.core.decode_cache import DecodeCache

    sd = comfy.utils.load_torch_file(args.vae)
    vae = comfy.sd.VAE(sd=sd)
    del sd
    side = args.size // 8
    z = torch.randn(1, 4, side, side, generator=torch.Generator().manual_seed(args.seed))
    host = DecodeHost(
        prepare=lambda need: mm.load_models_gpu([vae.patcher], memory_required=need),
        free_memory=lambda: int(mm.get_free_memory(vae.device)),
        fallback=lambda s: vae.decode_tiled(s, tile_x=64, tile_y=64, overlap=8),
        fallback_settings={"tile_size": 512, "overlap": 64},
    )
    cache: DecodeCache[Any] = DecodeCache(2 * GiB)
    extra: dict[str, Any] = {}
    mm.load_models_gpu([vae.patcher])
    baseline = _status("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM (peak RSS) to the current RSS
    with torch.inference_mode():
        t0 = time.perf_counter()
        if args.case == "full":
            image = vae.decode(z)
        elif args.case == "comfy_tiled":
            image = vae.decode_tiled(z, tile_x=64, tile_y=64, overlap=8)
        elif args.case == "exact":
            image = exact_decode(vae, z)
        else:
            image, info = cached_decode(vae, z, host, cache=cache)
            extra = {
                "band_px": info.band_px,
                "method": info.method,
                "retries": info.retries,
                "mode": info.mode,
                "detail": info.detail,
            }
        seconds = time.perf_counter() - t0
    peak = _status("VmHWM")
    if args.case == "podkit":
        hits = []
        for _ in range(5):
            t1 = time.perf_counter()
            _, info = cached_decode(vae, z, host, cache=cache)
            hits.append(time.perf_counter() - t1)
            assert info.cache == "ram", info  # noqa: S101 - the bench must measure hits
        extra["hit_ms"] = [round(h * 1000, 2) for h in hits]
    np.save(args.out, image.detach().float().contiguous().numpy())
    print(
        json.dumps(
            {
                "case": args.case,
                "size": args.size,
                "seconds": seconds,
                "peak_rss": peak,
                "baseline_rss": baseline,
                "ru_maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                "threads": torch.get_num_threads(),
                **extra,
            }
        )
    )


def exact_decode(vae: Any, z: Any) -> Any:
    """PodKit's banded decode with whole-image activations, no memory cap: the full decode's
    pixels (tests/backends/test_tiled_vae.py: within 1e-4) in less memory than the full decode, the
    PSNR reference where the full decode does not fit in RAM (2048² needs ~15 GiB)."""
    import torch

    from podkit.backends.tiled_vae import LdmDecoder, TiledDecoder

    decoder = TiledDecoder(LdmDecoder.from_model(vae.first_stage_model), torch.device("cpu"), vae.vae_dtype)
    h, w = z.shape[2:]
    image, _ = decoder.decode(z, decoder.auto_band(h, w, 2**40), post=vae.process_output)
    return image


def psnr(a: Any, b: Any) -> float:
    import numpy as np

    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--comfy", default=os.environ.get("COMFYUI_PATH"), help="ComfyUI checkout")
    ap.add_argument("--sizes", type=int, nargs="+", default=[512, 1024], help="image sides in px")
    ap.add_argument("--cases", nargs="+", default=list(DEFAULT_CASES), choices=CASES)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", help="also write the JSON line here")
    ap.add_argument("--workdir", help="parent of the temp folder")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--case", help=argparse.SUPPRESS)
    ap.add_argument("--size", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--vae", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if not args.comfy:
        ap.error("--comfy (or COMFYUI_PATH) is required")
    _bootstrap.register_package()
    if args.child:
        child(args)
        return 0

    import numpy as np

    guard = CpuGuard(retries=0, max_wait=10.0)
    results: dict[tuple[int, str], dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="podkit-bench-decode-", dir=args.workdir) as tmp:
        vae_path = Path(tmp) / "random_sd15_vae.safetensors"
        t = time.perf_counter()
        make_vae(Path(args.comfy), vae_path, args.seed)
        print(f"random SD VAE written in {time.perf_counter() - t:.1f} s", flush=True)
        for size in args.sizes:
            for case in args.cases:
                out = Path(tmp) / f"{case}_{size}.npy"
                cmd = [
                    sys.executable,
                    __file__,
                    "--child",
                    "1",
                    "--comfy",
                    args.comfy,
                    "--case",
                    case,
                    "--size",
                    str(size),
                    "--vae",
                    str(vae_path),
                    "--out",
                    str(out),
                    "--seed",
                    str(args.seed),
                ]
                proc, foreign = guard.run(lambda cmd=cmd: subprocess.run(cmd, capture_output=True, text=True))
                if proc.returncode != 0:
                    print(proc.stdout[-2000:], proc.stderr[-4000:], file=sys.stderr)
                    raise SystemExit(f"{case} at {size}px failed")
                record = json.loads(proc.stdout.strip().splitlines()[-1])
                record["foreign_cpu"] = round(foreign, 3)
                results[(size, case)] = record
                print(
                    f"{size}px {case}: {record['seconds']:.1f} s, "
                    f"peak RSS {record['peak_rss'] / GiB:.2f} GiB, foreign CPU {foreign:.0%}"
                    + (f", {record['detail']}" if record.get("detail") else ""),
                    flush=True,
                )
            for name in ("full", "exact"):  # the PSNR reference: the full decode, else the exact one
                ref = Path(tmp) / f"{name}_{size}.npy"
                if ref.exists():
                    full = np.load(ref)
                    for case in args.cases:
                        if case != name:
                            results[(size, case)]["psnr_vs_full"] = psnr(
                                np.load(Path(tmp) / f"{case}_{size}.npy"), full
                            )
                            results[(size, case)]["psnr_reference"] = name
                    break

    rows = []
    for (size, case), r in results.items():
        full_r = results.get((size, "full"))
        tiled_r = results.get((size, "comfy_tiled"))
        rows.append(
            [
                f"{size}²",
                case,
                r["seconds"],
                r["seconds"] / full_r["seconds"] if full_r else "-",
                r["peak_rss"] / GiB,
                r["baseline_rss"] / GiB,
                r["peak_rss"] / tiled_r["peak_rss"] if tiled_r else "-",
                r.get("psnr_vs_full", "-"),
                min(r["hit_ms"]) if "hit_ms" in r else "-",
                r["foreign_cpu"],
            ]
        )
    print_table(
        "VAE decode, random SD1.x VAE, fp32, CPU (targets: podkit ≤ 1.3× full time, RSS ≤ comfy tiled, "
        "PSNR ≥ 40 dB, hit ≤ 20 ms)",
        [
            "image",
            "case",
            "seconds",
            "× full",
            "peak RSS GiB",
            "baseline GiB",
            "× tiled RSS",
            "PSNR dB",
            "hit ms",
            "foreign CPU",
        ],
        rows,
    )
    emit_json("decode", {"results": [{**r} for r in results.values()], "load": os.getloadavg()}, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
