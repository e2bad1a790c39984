"""LoRA fetch from S3 (Ceph RGW): PodKit's cold path vs boto3 ``download_file``, plus the warm path.

Run with our venv::

    .venv/bin/python bench/bench_lora_fetch.py [--size 256] [--rounds 3] [--json PATH]

Starts a throw-away Ceph RADOS Gateway (tests/support/rgw.py), uploads a random ``--size`` MiB
safetensors file (one big tensor named like a kohya LoRA tensor, so PodKit's header check passes)
with a ``sha256`` metadata entry as PodKit's own uploads carry, then interleaves per round:

* anchor: boto3 ``client.download_file`` with the default ``TransferConfig`` (10 threads, 8 MiB
  parts) into a temp file; timed until it returns ("done") and after an fsync ("+fsync", durable).
* PodKit single GET: a fresh ``ModelCache`` in a fresh folder + ``LoraLibrary.ensure_local``
  (HEAD, download, sha256 while streaming, size/sha256 check, fsync, atomic publish, safetensors
  header validation) with ``multipart_threshold`` above the object size.
* PodKit ranged: the same with the default threshold (64 MiB; parallel ranged GETs, in-order hash).

Ratios are PodKit's throughput over the anchor's (> 1 is faster), from the same run. The warm path
(``ensure_local`` on a cached entry: TTL-cached HEAD + stat + touch) is timed in microseconds.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _bootstrap
from _common import CpuGuard, emit_json, interleave, paired_ratio, print_table, stats

MiB = 2**20
MB = 1e6
BUCKET = "bench-loras"
KEY = "bench/big_lora.safetensors"
TENSOR = "lora_unet_x.lora_up.weight"


def _sigterm(_signo: int, _frame: Any) -> None:
    raise SystemExit(143)


def make_lora(path: Path, size: int, seed: int = 1234) -> None:
    """A valid safetensors file of about ``size`` bytes: one float32 tensor of random bits."""
    import numpy as np
    from safetensors.numpy import save_file

    rng = np.random.default_rng(seed)
    arr = np.frombuffer(rng.bytes(size // 4 * 4), dtype=np.float32).reshape(-1, 1024)
    save_file({TENSOR: arr}, str(path))


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(8 * MiB):
            h.update(chunk)
    return h.hexdigest()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=256, help="object size in MiB (default 256)")
    ap.add_argument("--rounds", type=int, default=3, help="timed rounds (default 3)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed rounds first (default 1)")
    ap.add_argument("--warm-calls", type=int, default=2000, help="ensure_local calls per warm sample")
    ap.add_argument("--workdir", type=Path, default=None, help="parent of the temp folders")
    ap.add_argument("--no-guard", action="store_true", help="do not wait for / discard on foreign load")
    ap.add_argument("--json", help="also write the JSON line to this file")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, _sigterm)

    _bootstrap.register_package()
    import boto3
    import rgw

    from podkit.backends.s3_store import S3Store
    from podkit.core.loras import LoraLibrary
    from podkit.core.model_cache import ModelCache
    from podkit.core.objects import ObjectRef

    reason = rgw.radosgw_available()
    if reason is not None:
        print(f"cannot run: {reason}", file=sys.stderr)
        return 2

    guard = CpuGuard(enabled=not args.no_guard)
    tmp = Path(tempfile.mkdtemp(prefix="podkit-bench-lora-", dir=args.workdir))
    gw = rgw.RadosGateway(workdir=args.workdir)
    stores: list[Any] = []
    try:
        t = time.monotonic()
        server = gw.start()
        print(f"radosgw up at {server.endpoint_url} in {time.monotonic() - t:.1f} s")
        client = boto3.client("s3", **server.boto3_kwargs())
        client.create_bucket(Bucket=BUCKET)

        src = tmp / "src.safetensors"
        make_lora(src, args.size * MiB)
        size = src.stat().st_size
        sha = sha256_of(src)
        t = time.monotonic()
        client.upload_file(str(src), BUCKET, KEY, ExtraArgs={"Metadata": {"sha256": sha}})
        print(f"uploaded {size / MB:.1f} MB in {time.monotonic() - t:.1f} s (boto3 default config)")
        src.unlink()

        def s3store(threshold: int) -> S3Store:
            s = S3Store(
                server.endpoint_url,
                region=server.region,
                access_key_id=server.access_key,
                secret_access_key=server.secret_key,
                multipart_threshold=threshold,
            )
            stores.append(s)
            return s

        single = s3store(size + 1)
        ranged = s3store(min(64 * MiB, size - 1))
        ref = ObjectRef(BUCKET, KEY)
        runs = tmp / "runs"
        runs.mkdir()
        seq = [0]

        def boto3_run(check: bool = False) -> dict[str, float]:
            dest = runs / "boto3.bin"
            t0 = time.perf_counter()
            client.download_file(BUCKET, KEY, str(dest))
            t1 = time.perf_counter()
            fd = os.open(dest, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            t2 = time.perf_counter()
            if dest.stat().st_size != size or (check and sha256_of(dest) != sha):
                raise RuntimeError("boto3 download does not match the uploaded object")
            dest.unlink()
            return {"done": t1 - t0, "durable": t2 - t0}

        def podkit_run(store: S3Store) -> dict[str, float]:
            seq[0] += 1
            root = runs / f"cache-{seq[0]}"
            lib = LoraLibrary(store, ModelCache(root, max_bytes=4 * size + 2**30), BUCKET)
            t0 = time.perf_counter()
            local = lib.ensure_local(ref)
            t1 = time.perf_counter()
            if local.path.stat().st_size != size or local.meta.sha256 != sha:
                raise RuntimeError("PodKit download does not match the uploaded object")
            shutil.rmtree(root)
            return {"durable": t1 - t0}

        cases = {
            "boto3": lambda: boto3_run(),
            "podkit_single": lambda: podkit_run(single),
            "podkit_ranged": lambda: podkit_run(ranged),
        }
        for _, name in interleave(list(cases), args.warmup):
            if name == "boto3":
                boto3_run(check=True)
            else:
                cases[name]()

        times: dict[str, list[float]] = {
            "boto3_done": [],
            "boto3_durable": [],
            "podkit_single": [],
            "podkit_ranged": [],
        }
        foreign: dict[str, list[float]] = {k: [] for k in cases}
        for r, name in interleave(list(cases), args.rounds):
            res, frac = guard.run(cases[name])
            foreign[name].append(round(frac, 4))
            if name == "boto3":
                times["boto3_done"].append(res["done"])
                times["boto3_durable"].append(res["durable"])
            else:
                times[name].append(res["durable"])
            print(f"  round {r + 1} {name:14s} {res} foreign={frac:.1%}", flush=True)

        # ------------------------------------------------------------ warm path
        warm_root = runs / "cache-warm"
        lib = LoraLibrary(ranged, ModelCache(warm_root, max_bytes=4 * size + 2**30), BUCKET)
        local = lib.ensure_local(ref)
        heads = [0]
        real_head = ranged.head

        def counting_head(r: ObjectRef) -> Any:
            heads[0] += 1
            return real_head(r)

        ranged.head = counting_head  # type: ignore[method-assign]
        warm_us: list[float] = []
        stat_us: list[float] = []
        n = args.warm_calls
        for _ in range(7):
            t0 = time.perf_counter()
            for _ in range(n):
                lib.ensure_local(ref)
            t1 = time.perf_counter()
            for _ in range(n):
                os.stat(local.path)
            t2 = time.perf_counter()
            warm_us.append((t1 - t0) / n * 1e6)
            stat_us.append((t2 - t1) / n * 1e6)
        ranged.head = real_head  # type: ignore[method-assign]
        shutil.rmtree(warm_root)
    finally:
        for s in stores:
            s.close()
        gw.close()
        shutil.rmtree(tmp, ignore_errors=True)

    # ---------------------------------------------------------------- report
    anchor = times["boto3_durable"]
    nofsync = times["boto3_done"]
    rows = []
    labels = {
        "boto3_done": "boto3 download_file (default cfg), no fsync",
        "boto3_durable": "boto3 download_file + fsync  [anchor]",
        "podkit_single": "PodKit ensure_local, single GET",
        "podkit_ranged": "PodKit ensure_local, ranged (64 MiB thr)",
    }
    summary: dict[str, Any] = {}
    for key, label in labels.items():
        vals = times[key]
        s = stats(vals)
        case = "boto3" if key.startswith("boto3") else key
        row = {
            "s_min": s["min"],
            "s_median": s["median"],
            "mbps_best": size / MB / s["min"],
            "mbps_median": size / MB / s["median"],
            "x_anchor_best": min(anchor) / s["min"],
            "x_anchor_median": statistics.median(anchor) / s["median"],
            "x_anchor_paired": paired_ratio(anchor, vals),
            "x_nofsync_paired": paired_ratio(nofsync, vals),
            "foreign_max": max(foreign[case]),
            "samples": [round(v, 4) for v in vals],
        }
        summary[key] = row
        rows.append(
            [
                label,
                row["s_min"],
                row["s_median"],
                row["mbps_best"],
                row["mbps_median"],
                row["x_anchor_best"],
                row["x_anchor_median"],
                row["x_anchor_paired"],
                row["x_nofsync_paired"],
                f"{row['foreign_max']:.0%}",
            ]
        )
    print_table(
        f"LoRA fetch, {size / MB:.0f} MB object on Ceph RGW, N={args.rounds} interleaved "
        f"(ratio = throughput / anchor's; > 1 is faster)",
        [
            "case",
            "min s",
            "med s",
            "MB/s best",
            "MB/s med",
            "x anchor best",
            "x anchor med",
            "x anchor paired",
            "x no-fsync paired",
            "foreign max",
        ],
        rows,
    )
    ws, ss = stats(warm_us), stats(stat_us)
    print_table(
        f"Warm path ({n} calls per sample, 7 samples; HEADs sent during the loop: {heads[0]})",
        ["case", "min us", "med us", "x os.stat med"],
        [
            ["PodKit ensure_local (cached)", ws["min"], ws["median"], ws["median"] / ss["median"]],
            ["os.stat of the cached file", ss["min"], ss["median"], 1.0],
        ],
    )
    print(f"guard: {guard.discarded} sample(s) discarded for foreign CPU > {guard.limit:.0%}")
    emit_json(
        "lora_fetch",
        {
            "size_bytes": size,
            "rounds": args.rounds,
            "results": summary,
            "warm_us": {"min": ws["min"], "median": ws["median"], "heads": heads[0]},
            "os_stat_us": {"min": ss["min"], "median": ss["median"]},
            "foreign": foreign,
            "discarded": guard.discarded,
        },
        args.json,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
