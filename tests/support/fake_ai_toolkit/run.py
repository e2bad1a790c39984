"""A stand-in for ostris/ai-toolkit's ``run.py`` that follows its command-line and output contract.

``python run.py <config.yaml>`` reads the job config the way ai-toolkit does (``job: extension``,
``config.name``, ``config.process[0]`` of type ``sd_trainer``), checks the parts PodKit generates
(dataset folder with images, network rank, steps, save cadence), then "trains": for every step it
draws ai-toolkit's tqdm bar (``desc`` = the job name, postfix ``lr: 1.0e-04 loss: 4.123e-01``, built
exactly as ``BaseSDTrainProcess`` builds it) on stderr, writes the rotating step saves
``<training_folder>/<name>/<name>_<step:09d>.safetensors`` every ``save.save_every`` steps (keeping
``save.max_step_saves_to_keep``), and finally ``<name>.safetensors``: a real safetensors LoRA (PEFT
``lora_A``/``lora_B`` keys under ``transformer.`` the way ai-toolkit saves FLUX LoRAs, with the
``training_info`` metadata ai-toolkit writes), published with an atomic rename.

Faults on request (environment variables, so a test controls the trainer PodKit launches):

    FAKE_AITK_STEP_DELAY     seconds per step (default 0.01)
    FAKE_AITK_CRASH_AT       raise a CUDA-OOM-like error at this step (exit code 1)
    FAKE_AITK_HANG_AT        stop making progress at this step (sleeps until killed)
    FAKE_AITK_IGNORE_TERM    1: ignore SIGTERM (PodKit must escalate to SIGKILL)
    FAKE_AITK_CHILD          1: start a data-loader-like child in the same process group
    FAKE_AITK_PID_FILE       write "<pid> <child pid or 0>" here once started
    FAKE_AITK_NO_FINAL       1: exit 0 without writing the final LoRA
    FAKE_AITK_LIKE           path of a LoRA whose tensor names/shapes/dtypes the output copies
                             (so a real ComfyUI model matches it); values are fresh, seeded
    FAKE_AITK_SEED           seed of the random values (default 0)
    FAKE_AITK_UP_STD         std of the lora_B/lora_up values (default 0.02)
    FAKE_AITK_PAD_MB         add a zero-filled LoRA module of about this many MiB (large files)
    FAKE_AITK_PRINT_ENV      1: print the names of the environment variables it was given
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".webp"}
_DTYPES = {"F16": ("e", 2), "F32": ("f", 4), "BF16": (None, 2)}
PAD_TENSOR = "transformer.proj_out.lora_A.weight"


def env_int(name: str) -> int | None:
    raw = os.environ.get(name, "").strip()
    return int(raw) if raw else None


def say(text: str, stream: Any = None) -> None:
    """One line of output, flushed at once (ai-toolkit runs with PYTHONUNBUFFERED=1)."""
    out = stream or sys.stdout
    out.write(text + "\n")
    out.flush()


def die(message: str, code: int = 1) -> None:
    say(f"Error: {message}", sys.stderr)
    sys.exit(code)


def read_config(path: Path) -> dict[str, Any]:
    text = path.read_text()
    config = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    if not isinstance(config, dict) or config.get("job") != "extension":
        die(f"{path}: not an extension job config")
    return config


def tensor_bytes(shape: list[int], dtype: str, rng: random.Random, std: float) -> bytes:
    count = math.prod(shape)
    values = [rng.gauss(0.0, std) for _ in range(count)]
    fmt, _ = _DTYPES[dtype]
    if fmt is None:  # bf16: the top half of a float32
        return b"".join(struct.pack("<f", v)[2:] for v in values)
    return struct.pack(f"<{count}{fmt}", *values)


def lora_tensors(rank: int, dtype: str) -> dict[str, tuple[list[int], str]]:
    """Tensor name → (shape, dtype) for a small FLUX-style LoRA, or the shapes of FAKE_AITK_LIKE."""
    like = os.environ.get("FAKE_AITK_LIKE")
    if like:
        raw = Path(like).read_bytes()
        (n,) = struct.unpack("<Q", raw[:8])
        header = json.loads(raw[8 : 8 + n])
        return {k: (v["shape"], v["dtype"]) for k, v in header.items() if k != "__metadata__"}
    hidden = 64
    out: dict[str, tuple[list[int], str]] = {}
    for block in range(2):
        for proj in ("to_q", "to_k", "to_v"):
            base = f"transformer.single_transformer_blocks.{block}.attn.{proj}"
            out[f"{base}.lora_A.weight"] = ([rank, hidden], dtype)
            out[f"{base}.lora_B.weight"] = ([hidden, rank], dtype)
    pad_mb = env_int("FAKE_AITK_PAD_MB")
    if pad_mb:  # a large module of zeros: a LoRA big enough for multipart uploads, made in no time
        out[PAD_TENSOR] = ([rank, pad_mb * 2**20 // (rank * _DTYPES[dtype][1])], dtype)
    return out


def write_safetensors(
    path: Path, tensors: dict[str, tuple[list[int], str]], meta: dict[str, str], seed: int, alpha: int
) -> None:
    """Write a real safetensors file (8-byte header length, JSON header, raw little-endian data)."""
    rng = random.Random(seed)
    up_std = float(os.environ.get("FAKE_AITK_UP_STD", "0.02"))
    header: dict[str, Any] = {"__metadata__": meta}
    blobs: list[bytes] = []
    offset = 0
    for name, (shape, dtype) in tensors.items():
        fan_in = shape[-1] if shape else 1
        std = up_std if ("lora_B" in name or "lora_up" in name) else 1.0 / math.sqrt(max(fan_in, 1))
        if name == PAD_TENSOR:
            data = bytes(math.prod(shape) * _DTYPES[dtype][1])
        elif name.endswith(".alpha"):  # network.linear_alpha, as a scalar tensor
            fmt, _ = _DTYPES[dtype]
            data = struct.pack(f"<{fmt}", float(alpha)) if fmt else struct.pack("<f", float(alpha))[2:]
        else:
            data = tensor_bytes(shape, dtype, rng, std)
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(head)))
        f.write(head)
        for blob in blobs:
            f.write(blob)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def count_images(folder: Path) -> int:
    return sum(1 for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTS and p.is_file())


def make_bar(name: str, total: int, initial: int) -> Any:
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm ships with every ai-toolkit install
        return None
    # ai-toolkit's ToolkitProgressBar is a tqdm with desc=<job name>, drawn on stderr.
    return tqdm(total=total, desc=name, leave=True, initial=initial, smoothing=0.7, mininterval=0)


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        die("usage: run.py <config.yaml>")
    config = read_config(Path(argv[1]))
    name = config["config"]["name"]
    process = config["config"]["process"][0]
    if process.get("type") != "sd_trainer":
        die(f"unknown process type {process.get('type')!r}")
    training_folder = Path(process["training_folder"])
    save_root = training_folder / name
    save_root.mkdir(parents=True, exist_ok=True)
    (save_root / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    folder = Path(process["datasets"][0]["folder_path"])
    images = count_images(folder) if folder.is_dir() else 0
    if images == 0:
        die(f"no images found in {folder}")
    train = process["train"]
    steps = int(train["steps"])
    lr = float(train["lr"])
    save = process["save"]
    save_every = int(save.get("save_every") or 0)
    keep = int(save.get("max_step_saves_to_keep") or 4)
    network = process["network"]
    dtype = {"float16": "F16", "fp16": "F16", "float32": "F32", "bf16": "BF16"}.get(save.get("dtype"), "F16")
    alpha = int(network["linear_alpha"])
    tensors = lora_tensors(int(network["linear"]), dtype)
    seed = env_int("FAKE_AITK_SEED") or 0

    if os.environ.get("FAKE_AITK_IGNORE_TERM") == "1":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    child_pid = 0
    if os.environ.get("FAKE_AITK_CHILD") == "1":
        child = subprocess.Popen(  # noqa: S603 - a fixed argv: a sleeping "data-loader worker"
            [
                sys.executable,
                "-c",
                "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(3600)",
            ]
        )
        child_pid = child.pid
    pid_file = os.environ.get("FAKE_AITK_PID_FILE")
    if pid_file:
        Path(pid_file).write_text(f"{os.getpid()} {child_pid}\n")

    say(f"Running  1 process\nLoading Flux model\n#### IMPORTANT: {images} images found")
    if os.environ.get("FAKE_AITK_PRINT_ENV") == "1":
        say("environment: " + " ".join(sorted(os.environ)))
    delay = float(os.environ.get("FAKE_AITK_STEP_DELAY", "0.01"))
    crash_at, hang_at = env_int("FAKE_AITK_CRASH_AT"), env_int("FAKE_AITK_HANG_AT")
    bar = make_bar(name, steps, 0)
    rng = random.Random(seed)
    loss = 0.6
    saved: list[Path] = []
    for step in range(steps):
        if crash_at is not None and step >= crash_at:
            if bar is not None:
                bar.close()
            say("Traceback (most recent call last):", sys.stderr)
            say('  File "jobs/process/BaseSDTrainProcess.py", line 2620, in run', sys.stderr)
            die("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB")
        if hang_at is not None and step >= hang_at:
            while True:
                time.sleep(1)
        time.sleep(delay)
        loss = max(0.05, loss * 0.995 + rng.uniform(-0.02, 0.02))
        if bar is not None:
            # BaseSDTrainProcess: prog_bar_string = f"lr: {learning_rate:.1e}" + f" {key}: {value:.3e}"
            bar.set_postfix_str(f"lr: {lr:.1e} loss: {loss:.3e}", refresh=False)
            bar.update(step + 1 - bar.n)
        if save_every and (step + 1) % save_every == 0 and step + 1 < steps:
            say(f"\nSaving at step {step + 1}")
            path = save_root / f"{name}_{step + 1:09d}.safetensors"
            meta = {"name": name, "training_info": json.dumps({"step": step + 1, "epoch": 0})}
            write_safetensors(path, tensors, meta, seed + step + 1, alpha)
            saved.append(path)
            while len(saved) > keep:
                saved.pop(0).unlink(missing_ok=True)
    if bar is not None:
        bar.close()
    if os.environ.get("FAKE_AITK_NO_FINAL") != "1":
        meta = {
            "name": config.get("meta", {}).get("name", "[name]").replace("[name]", name),
            "version": str(config.get("meta", {}).get("version", "1.0")),
            "training_info": json.dumps({"step": steps, "epoch": 0}),
            "ss_base_model_version": process["model"].get("arch", ""),
        }
        write_safetensors(save_root / f"{name}.safetensors", tensors, meta, seed, alpha)
        say(f"Saved to {save_root / (name + '.safetensors')}")
    if child_pid:
        os.kill(child_pid, signal.SIGKILL)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
