"""PodKit's nodes vs ComfyUI's core nodes, in-process: Save to R2 vs SaveImage, R2 LoRA vs LoraLoader.

Run with the ComfyUI venv::

    "$COMFYUI_PATH"/venv/bin/python bench/bench_nodes_comfy.py --comfy "$COMFYUI_PATH" [--json PATH]

(``--comfy`` defaults to ``$COMFYUI_PATH``.) ComfyUI is imported in this process with
``args.cpu = True``; PodKit's services use a temporary local object store and are installed with
``podkit.services.set_services`` so the nodes' ``services()`` finds them. Each node is called the
way the executor calls it (V3: ``PREPARE_CLASS_CLONE`` with the hidden inputs + the locked
``execute``; V1: the method on one persistent instance), inside ``torch.inference_mode()`` and a
``CurrentNodeContext``. Only the node call is timed: the time the graph is blocked.

Save: a natural-looking float32 IMAGE (gradients, blobs, Gaussian noise σ = 4/255) with about 50 KB of
prompt/workflow metadata. Core ``SaveImage`` (PIL level 4 → file) vs ``PodKitSaveToR2`` (encode →
durable outbox spool → preview file). The outbox upload is flushed after each PodKit call, outside
the timed region. Targets (PERF.md): time ≤ 0.5×, file size ≤ 1.15×.

LoRA warm: the tiny SD1.5 checkpoint and kohya LoRA from tests/support/make_tiny_models.py (made in
a temp folder unless ``--models`` points at an existing output). Both loaders are warmed once, then
core ``LoraLoader.load_lora`` and ``PodKitR2LoraLoader.execute`` are interleaved. Target: ≤ 1.05×.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import _bootstrap
from _common import CpuGuard, emit_json, interleave, paired_ratio, print_table, stats

MB = 1e6
LORA_FILE = "tiny_lora_a.safetensors"
CKPT_FILE = "tiny_sd15.safetensors"
NODE_ID = "9"
PROMPT_ID = "bench-prompt"


def _sigterm(_signo: int, _frame: Any) -> None:
    raise SystemExit(143)


# --------------------------------------------------------------------------- inputs
def natural_image(h: int, w: int, seed: int = 7) -> Any:
    """float32 [h, w, 3] in 0..1: gradients + low-frequency blobs + Gaussian noise σ = 4/255."""
    import numpy as np

    rng = np.random.default_rng(seed)
    y = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None]
    x = np.linspace(0.0, 1.0, w, dtype=np.float32)[None, :]
    img = np.empty((h, w, 3), np.float32)
    img[..., 0] = 0.25 + 0.5 * x
    img[..., 1] = 0.3 + 0.4 * y
    img[..., 2] = 0.35 + 0.3 * (x + y) / 2
    for _ in range(14):  # separable Gaussian blobs: cheap at any size
        cy, cx = rng.uniform(0, 1, 2)
        sy, sx = rng.uniform(0.04, 0.25, 2)
        blob = np.exp(-((y - cy) ** 2) / (2 * sy**2)) * np.exp(-((x - cx) ** 2) / (2 * sx**2))
        for c, amp in enumerate(rng.uniform(-0.3, 0.3, 3)):
            img[..., c] += np.float32(amp) * blob
    img += rng.normal(0.0, 4.0 / 255.0, img.shape).astype(np.float32)
    np.clip(img, 0.0, 1.0, out=img)
    return img


def metadata() -> tuple[dict[str, Any], dict[str, Any]]:
    """A ~10 KB API prompt and a ~40 KB UI workflow, as SaveImage embeds them."""
    words = "masterpiece best quality portrait of a woman in a garden soft light detailed".split()

    def text(i: int, n: int) -> str:
        return " ".join(words[(i + k) % len(words)] for k in range(n))

    prompt: dict[str, Any] = {}
    i = 0
    while len(json.dumps(prompt)) < 10_000:
        prompt[str(i)] = {
            "class_type": ["CLIPTextEncode", "KSampler", "LoraLoader", "VAEDecode"][i % 4],
            "inputs": {"text": text(i, 20), "seed": 1000 + i, "steps": 20, "cfg": 7.0, "clip": ["1", 1]},
            "_meta": {"title": f"Node {i}"},
        }
        i += 1
    nodes: list[dict[str, Any]] = []
    while len(json.dumps({"nodes": nodes})) < 40_000:
        j = len(nodes)
        nodes.append(
            {
                "id": j,
                "type": "CLIPTextEncode",
                "pos": [100 + 37 * j, 200 + 11 * j],
                "size": [400, 200],
                "flags": {},
                "order": j,
                "mode": 0,
                "inputs": [{"name": "clip", "type": "CLIP", "link": j + 1}],
                "outputs": [
                    {"name": "CONDITIONING", "type": "CONDITIONING", "links": [j + 2], "slot_index": 0}
                ],
                "properties": {"Node name for S&R": "CLIPTextEncode"},
                "widgets_values": [text(j, 24)],
            }
        )
    workflow = {"last_node_id": len(nodes), "last_link_id": len(nodes) + 2, "nodes": nodes, "version": 0.4}
    return prompt, {"workflow": workflow}


# --------------------------------------------------------------------------- ComfyUI
def import_comfy(root: Path) -> None:
    sys.path.insert(0, str(root))
    from comfy.cli_args import args  # parses nothing: ComfyUI's arg parsing is off when imported

    args.cpu = True
    # comfy.model_management reads args.cpu at import. ComfyUI's own ``utils`` package must be imported
    # before ``nodes``: nodes.py puts comfy/ first on sys.path, after which ``import utils`` finds
    # comfy/utils.py and server.py fails to import (main.py imports utils.extra_config first).
    import comfy.model_management  # noqa: F401
    import utils.install_util  # noqa: F401


class _StandInServer:
    """What the nodes use of ``PromptServer.instance`` when no server runs in this process."""

    last_node_id = None
    client_id = None

    def send_progress_text(self, *_: Any, **__: Any) -> None:
        pass

    def send_sync(self, *_: Any, **__: Any) -> None:
        pass


def v3_call(node_cls: Any, hidden: dict[Any, Any]) -> Callable[..., Any]:
    """The executor's call of a V3 node: a prepared class clone with hidden inputs, locked execute."""
    from comfy_api.internal import make_locked_method_func

    node_cls.VALIDATE_CLASS()
    clone = node_cls.PREPARE_CLASS_CLONE(hidden)
    return make_locked_method_func(node_cls, "execute", clone)


def node_timer(fn: Callable[[], Any]) -> Callable[[], tuple[float, Any]]:
    """Time ``fn`` as the executor runs it (inference mode, current-node context)."""
    import torch
    from comfy_execution.utils import CurrentNodeContext

    def run() -> tuple[float, Any]:
        gc.collect()  # start every sample with empty GC generations: a pause inside is the node's own
        with torch.inference_mode(), CurrentNodeContext(PROMPT_ID, NODE_ID, 0):
            t0 = time.perf_counter()
            out = fn()
            t1 = time.perf_counter()
        return t1 - t0, out

    return run


# --------------------------------------------------------------------------- save
def bench_save(
    svc: Any, tmp: Path, sizes: list[int], rounds: int, guard: CpuGuard
) -> tuple[list[list[object]], dict[str, Any]]:
    import folder_paths
    import numpy as np
    import torch
    from comfy_api.latest import io
    from PIL import Image

    import nodes
    from podkit.core.naming import DEFAULT_KEY_TEMPLATE
    from podkit.core.objects import ObjectRef
    from podkit.nodes.save_r2 import PodKitSaveToR2

    out_dir = Path(folder_paths.get_output_directory())
    preview_dir = Path(folder_paths.get_temp_directory()) / "podkit"
    prompt, extra = metadata()
    meta_bytes = len(json.dumps(prompt)) + sum(len(json.dumps(v)) for v in extra.values())
    hidden = {io.Hidden.prompt: prompt, io.Hidden.extra_pnginfo: extra, io.Hidden.unique_id: NODE_ID}
    save_image = nodes.SaveImage()  # one instance per node id, as the executor keeps it
    rows: list[list[object]] = []
    result: dict[str, Any] = {"metadata_bytes": meta_bytes}

    for side in sizes:
        arr = natural_image(side, side)
        images = torch.from_numpy(arr[None])
        raw = side * side * 3

        def core_once(images: Any = images) -> tuple[float, int]:
            before = set(out_dir.iterdir())
            dt, _ = node_timer(lambda: save_image.save_images(images, "bench", prompt, extra))()
            (new,) = set(out_dir.iterdir()) - before
            size = new.stat().st_size
            new.unlink()
            return dt, size

        def podkit_node(images: Any = images) -> Any:
            return v3_call(PodKitSaveToR2, hidden)(
                images=images, filename_prefix="bench", key_template=DEFAULT_KEY_TEMPLATE, url_mode="auto"
            )

        def podkit_once() -> tuple[float, int]:
            dt, out = node_timer(podkit_node)()
            (upload,) = out.ui["podkit_uploads"]
            if not svc.outbox.flush(timeout=60):  # outside the timed region
                raise RuntimeError("outbox did not drain")
            for p in preview_dir.iterdir():
                p.unlink()
            return dt, int(upload["size"])

        # correctness once, untimed: same pixels as SaveImage's file, metadata readable
        before = set(out_dir.iterdir())
        save_image.save_images(images, "bench", prompt, extra)
        (core_file,) = set(out_dir.iterdir()) - before
        _, out = node_timer(podkit_node)()
        svc.outbox.flush(timeout=60)
        (upload,) = out.ui["podkit_uploads"]
        ours = Image.open(svc.store.path_of(ObjectRef(upload["bucket"], upload["key"])))
        theirs = Image.open(core_file)
        same_pixels = bool(np.array_equal(np.asarray(ours), np.asarray(theirs)))
        same_text = ours.text.get("prompt") == theirs.text.get("prompt") and ours.text.get(
            "workflow"
        ) == theirs.text.get("workflow")
        core_file.unlink()
        for p in preview_dir.iterdir():
            p.unlink()
        print(f"  {side}²: pixels identical to SaveImage's: {same_pixels}; metadata identical: {same_text}")

        t: dict[str, list[float]] = {"core": [], "podkit": []}
        sz: dict[str, list[int]] = {"core": [], "podkit": []}
        fr: dict[str, list[float]] = {"core": [], "podkit": []}
        once = {"core": core_once, "podkit": podkit_once}
        for r, name in interleave(["core", "podkit"], rounds):
            (dt, size), frac = guard.run(once[name])
            t[name].append(dt)
            sz[name].append(size)
            fr[name].append(round(frac, 4))
            ms, mb = dt * 1e3, size / MB
            print(f"  {side}² round {r + 1} {name:6s} {ms:7.1f} ms  {mb:.3f} MB  foreign={frac:.0%}")
        c, p = stats(t["core"]), stats(t["podkit"])
        core_size, pod_size = sz["core"][0], sz["podkit"][0]
        res = {
            "core_ms": {"min": c["min"] * 1e3, "median": c["median"] * 1e3},
            "podkit_ms": {"min": p["min"] * 1e3, "median": p["median"] * 1e3},
            "time_ratio_min": p["min"] / c["min"],
            "time_ratio_median": p["median"] / c["median"],
            "time_ratio_paired": paired_ratio(t["podkit"], t["core"]),
            "core_bytes": core_size,
            "podkit_bytes": pod_size,
            "size_ratio": pod_size / core_size,
            "core_fraction_of_raw": core_size / raw,
            "pixels_identical": same_pixels,
            "metadata_identical": same_text,
            "foreign": fr,
            "samples_ms": {k: [round(v * 1e3, 2) for v in vals] for k, vals in t.items()},
        }
        result[f"{side}"] = res
        ok_t = "ok" if res["time_ratio_median"] <= 0.5 else "MISS"
        ok_s = "ok" if res["size_ratio"] <= 1.15 else "MISS"
        rows.append([f"{side}² core SaveImage [anchor]", c["min"] * 1e3, c["median"] * 1e3, 1.0, 1.0, 1.0,
                     core_size / MB, 1.0, "", f"{max(fr['core']):.0%}"])  # fmt: skip
        rows.append([f"{side}² PodKit Save to R2", p["min"] * 1e3, p["median"] * 1e3, res["time_ratio_min"],
                     res["time_ratio_median"], res["time_ratio_paired"], pod_size / MB, res["size_ratio"],
                     f"time {ok_t} / size {ok_s}", f"{max(fr['podkit']):.0%}"])  # fmt: skip
    return rows, result


# --------------------------------------------------------------------------- LoRA
def ensure_models(args: argparse.Namespace, tmp: Path) -> Path:
    if args.models is not None:
        return Path(args.models)
    out = tmp / "models"
    t = time.monotonic()
    script = _bootstrap.SUPPORT / "make_tiny_models.py"
    proc = subprocess.run(
        [sys.executable, str(script), "--out", str(out), "--comfyui", str(args.comfy), "--no-verify"],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"make_tiny_models.py failed:\n{proc.stdout}\n{proc.stderr}")
    print(f"tiny models made in {time.monotonic() - t:.1f} s")
    return out


def bench_lora(
    svc: Any, models: Path, rounds: int, guard: CpuGuard
) -> tuple[list[list[object]], dict[str, Any]]:
    import comfy.sd
    import folder_paths

    import nodes
    from podkit.core.objects import ObjectRef
    from podkit.nodes.lora_loader import PodKitR2LoraLoader

    lora_path = models / "loras" / LORA_FILE
    svc.store.upload_file(
        lora_path, ObjectRef(svc.settings.lora_bucket, LORA_FILE), content_type="application/octet-stream"
    )
    folder_paths.add_model_folder_path("loras", str(models / "loras"))
    t = time.monotonic()
    model, clip, _, _ = comfy.sd.load_checkpoint_guess_config(
        str(models / "checkpoints" / CKPT_FILE), output_vae=False, output_clipvision=False
    )
    print(f"checkpoint loaded in {time.monotonic() - t:.1f} s")

    core = nodes.LoraLoader()  # persistent instance: keeps the loaded state dict, as in a server

    def core_once() -> tuple[float, Any]:
        return node_timer(lambda: core.load_lora(model, clip, LORA_FILE, 1.0, 1.0))()

    def podkit_once() -> tuple[float, Any]:
        def node() -> Any:
            return v3_call(PodKitR2LoraLoader, {})(
                model=model, clip=clip, lora_name=LORA_FILE, strength_model=1.0, strength_clip=1.0
            )

        return node_timer(node)()

    # warm both, and check they patch the same keys
    _, (cm, cc) = core_once()
    _, out = podkit_once()
    pm, pc = out.args
    same = set(cm.patches) == set(pm.patches) and set(cc.patcher.patches) == set(pc.patcher.patches)
    print(f"  LoRA: both loaders patch the same keys: {same} ({len(pm.patches)} model, "
          f"{len(pc.patcher.patches)} clip)")  # fmt: skip

    t_: dict[str, list[float]] = {"core": [], "podkit": []}
    fr: dict[str, list[float]] = {"core": [], "podkit": []}
    once = {"core": core_once, "podkit": podkit_once}
    for _, name in interleave(["core", "podkit"], rounds):
        (dt, _), frac = guard.run(once[name])
        t_[name].append(dt)
        fr[name].append(round(frac, 4))
    fp_us: list[float] = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(200):
            PodKitR2LoraLoader.fingerprint_inputs(lora_name=LORA_FILE)
        fp_us.append((time.perf_counter() - t0) / 200 * 1e6)
    c, p = stats(t_["core"]), stats(t_["podkit"])
    res = {
        "core_ms": {"min": c["min"] * 1e3, "median": c["median"] * 1e3},
        "podkit_ms": {"min": p["min"] * 1e3, "median": p["median"] * 1e3},
        "ratio_min": p["min"] / c["min"],
        "ratio_median": p["median"] / c["median"],
        "ratio_paired": paired_ratio(t_["podkit"], t_["core"]),
        "same_patched_keys": same,
        "fingerprint_us_median": stats(fp_us)["median"],
        "foreign": fr,
        "samples_ms": {k: [round(v * 1e3, 3) for v in vals] for k, vals in t_.items()},
    }
    ok = "ok" if res["ratio_median"] <= 1.05 else "MISS"
    rows = [
        ["core LoraLoader.load_lora [anchor]", c["min"] * 1e3, c["median"] * 1e3, 1.0, 1.0, 1.0, "",
         f"{max(fr['core']):.0%}"],
        ["PodKitR2LoraLoader.execute (warm)", p["min"] * 1e3, p["median"] * 1e3, res["ratio_min"],
         res["ratio_median"], res["ratio_paired"], ok, f"{max(fr['podkit']):.0%}"],
    ]  # fmt: skip
    return rows, res


# --------------------------------------------------------------------------- main
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--comfy", type=Path, default=os.environ.get("COMFYUI_PATH"), help="ComfyUI checkout")
    ap.add_argument("--sizes", default="1024,2048", help="image sides for the save bench")
    ap.add_argument("--save-rounds", type=int, default=7)
    ap.add_argument("--lora-rounds", type=int, default=15)
    ap.add_argument(
        "--models", type=Path, help="existing make_tiny_models.py output (else made in a temp dir)"
    )
    ap.add_argument("--skip-save", action="store_true")
    ap.add_argument("--skip-lora", action="store_true")
    ap.add_argument("--workdir", type=Path, default=None, help="parent of the temp folder")
    ap.add_argument("--no-guard", action="store_true", help="do not wait for / discard on foreign load")
    ap.add_argument("--json", help="also write the JSON line to this file")
    args = ap.parse_args()
    if args.comfy is None or not (Path(args.comfy) / "comfy" / "sd.py").is_file():
        print("pass --comfy PATH or set COMFYUI_PATH (a ComfyUI checkout)", file=sys.stderr)
        return 2
    args.comfy = Path(args.comfy).resolve()
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[attr-defined]  # keep order with stderr logs
    signal.signal(signal.SIGTERM, _sigterm)

    t = time.monotonic()
    import_comfy(args.comfy)
    _bootstrap.register_package()
    import folder_paths
    import server

    import nodes  # noqa: F401
    from podkit.core.settings import Settings
    from podkit.services import build_services, set_services

    print(f"ComfyUI imported in {time.monotonic() - t:.1f} s")
    if getattr(server.PromptServer, "instance", None) is None:
        server.PromptServer.instance = _StandInServer()  # type: ignore[attr-defined]

    guard = CpuGuard(enabled=not args.no_guard, max_wait=2.0)
    tmp = Path(tempfile.mkdtemp(prefix="podkit-bench-nodes-", dir=args.workdir))
    svc = None
    out: dict[str, Any] = {}
    try:
        for sub in ("output", "temp", "store", "cache", "state"):
            (tmp / sub).mkdir()
        folder_paths.set_output_directory(str(tmp / "output"))
        folder_paths.set_temp_directory(str(tmp / "temp"))
        settings = Settings.from_env(
            {
                "PODKIT_STORE": "local",
                "PODKIT_LOCAL_STORE_DIR": str(tmp / "store"),
                "PODKIT_CACHE_DIR": str(tmp / "cache"),
                "PODKIT_STATE_DIR": str(tmp / "state"),
                "PODKIT_VOLUME_DIR": "",
            }
        )
        svc = build_services(settings)
        svc.start()
        set_services(svc)

        if not args.skip_save:
            sizes = [int(s) for s in args.sizes.split(",") if s]
            rows, out["save"] = bench_save(svc, tmp, sizes, args.save_rounds, guard)
            print_table(
                f"Save node time, N={args.save_rounds} interleaved "
                f"(metadata {out['save']['metadata_bytes'] / 1e3:.1f} KB; "
                "ratio = PodKit / core, < 1 is faster)",
                ["case", "min ms", "med ms", "x min", "x med", "x paired", "file MB", "x size",
                 "target (<=0.5x, <=1.15x)", "foreign max"],
                rows,
            )  # fmt: skip
        if not args.skip_lora:
            models = ensure_models(args, tmp)
            rows, out["lora"] = bench_lora(svc, models, args.lora_rounds, guard)
            print_table(
                f"LoRA node time, warm, N={args.lora_rounds} interleaved (ratio = PodKit / core; "
                f"PodKit fingerprint_inputs {out['lora']['fingerprint_us_median']:.0f} us, not included)",
                ["case", "min ms", "med ms", "x min", "x med", "x paired", "target (<=1.05x)", "foreign max"],
                rows,
            )
    finally:
        if svc is not None:
            set_services(None)
            svc.close()
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"guard: {guard.discarded} sample(s) discarded for foreign CPU > {guard.limit:.0%}")
    emit_json("nodes_comfy", {**out, "discarded": guard.discarded}, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
