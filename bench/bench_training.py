"""The training launcher's overhead: a PodKit job vs running the trainer and uploading by hand.

Run with our venv::

    .venv/bin/python bench/bench_training.py [--steps 300] [--lora-mb 64] [--rounds 3]

Starts a throw-away Ceph RADOS Gateway (tests/support/rgw.py) and interleaves per round:

* anchor ("by hand", what the seed deployment's script did): write the ai-toolkit config,
  ``subprocess.run([python, run.py, config])`` of the ai-toolkit stand-in
  (tests/support/fake_ai_toolkit), then boto3 ``upload_file`` of ``<name>.safetensors`` with the
  default ``TransferConfig``.
* PodKit: ``TrainingService.submit`` of the same request (dataset folder copied into the job,
  config generated, trainer launched in its own process group and watched through its log,
  safetensors header checked, sha256, multipart upload via the store, LoRA listing refreshed) until
  the job is ``done``.

The trainer is the same program with the same steps and LoRA size in both cases, so the ratio
(PodKit wall / anchor wall, < 1.1 means the launcher costs under 10 %) is the launcher's own cost.
The PodKit process's CPU seconds while the job ran (watching, parsing, hashing, uploading) are
reported next to the anchor process's CPU (boto3's upload) for orientation.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import _bootstrap
from _common import CpuGuard, emit_json, interleave, paired_ratio, print_table, stats

FAKE = _bootstrap.ROOT / "tests" / "support" / "fake_ai_toolkit"
BUCKET = "bench-training"
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64


def _sigterm(_signo: int, _frame: Any) -> None:
    raise SystemExit(143)


def cpu_seconds() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--step-delay", type=float, default=0.005)
    ap.add_argument("--lora-mb", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--json", default=None)
    ap.add_argument("--no-guard", action="store_true")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, _sigterm)
    _bootstrap.register_package()

    import boto3
    import rgw
    from botocore.config import Config

    from podkit.backends.s3_store import S3Store
    from podkit.backends.state_db import StateDB
    from podkit.backends.trainer import AiToolkitBackend
    from podkit.core.ai_toolkit import build_config, config_yaml
    from podkit.core.trainer_env import trainer_passthrough
    from podkit.core.training_request import parse_training_request
    from podkit.jobs.outbox import sqlite_outbox
    from podkit.jobs.training import TrainingOptions, TrainingService

    reason = rgw.radosgw_available()
    if reason is not None:
        print(f"radosgw unavailable: {reason}", file=sys.stderr)
        return 2
    guard = CpuGuard(enabled=not args.no_guard)
    root = Path(tempfile.mkdtemp(prefix="podkit-bench-training-", dir=args.workdir))
    gw = rgw.RadosGateway(workdir=root / "rgw")
    try:
        server = gw.start()
        guard.extra_roots = list(gw.daemon_pids().values())
        client = boto3.client(
            "s3",
            **server.boto3_kwargs(),
            config=Config(
                s3={"addressing_style": "path"},
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            ),
        )
        client.create_bucket(Bucket=BUCKET)
        dataset = root / "volume" / "dataset"
        dataset.mkdir(parents=True)
        for i in range(8):
            (dataset / f"{i}.png").write_bytes(PNG)
            (dataset / f"{i}.txt").write_text("p3r5on")
        fake_env = {
            "PATH": os.environ.get("PATH", ""),
            "FAKE_AITK_STEP_DELAY": str(args.step_delay),
            "FAKE_AITK_PAD_MB": str(args.lora_mb),
        }
        body = {"dataset": {"path": str(dataset)}, "steps": args.steps, "save_every": args.steps}

        store = S3Store(
            server.endpoint_url,
            region=server.region,
            access_key_id=server.access_key,
            secret_access_key=server.secret_key,
        )
        db = StateDB(root / "state" / "podkit.sqlite3")
        outbox = sqlite_outbox(db, root / "state" / "spool", store)
        outbox.start()
        service = TrainingService(
            db,
            store,
            AiToolkitBackend(FAKE, python=sys.executable),
            TrainingOptions(
                training_dir=root / "state" / "training",
                lora_bucket=BUCKET,
                roots=(root / "volume",),
                passthrough_env=trainer_passthrough(fake_env, list(fake_env)),
            ),
            outbox=outbox,
        )
        service.start()

        def podkit() -> float:
            t0 = time.perf_counter()
            job = service.submit({"name": f"pk_{uuid.uuid4().hex[:8]}", **body})
            while not (job := service.get(job.id)).finished_status:
                time.sleep(0.01)
            if job.status != "done":
                raise RuntimeError(f"PodKit job {job.status}: {job.error}")
            return time.perf_counter() - t0

        def by_hand() -> float:
            t0 = time.perf_counter()
            name = f"hand_{uuid.uuid4().hex[:8]}"
            work = root / "hand" / name
            work.mkdir(parents=True)
            req = parse_training_request({"name": name, **body})
            config = build_config(
                req, name_or_path="flux", dataset_dir=dataset, training_folder=work / "output"
            )
            (work / "config.yaml").write_text(config_yaml(config))
            with open(work / "log.txt", "wb") as log:
                subprocess.run(  # noqa: S603 - the stand-in trainer, argv list
                    [sys.executable, str(FAKE / "run.py"), str(work / "config.yaml")],
                    env=fake_env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    check=True,
                )
            client.upload_file(
                str(work / "output" / name / f"{name}.safetensors"), BUCKET, f"{name}.safetensors"
            )
            return time.perf_counter() - t0

        cases = {"by hand (run.py + boto3 upload_file)": by_hand, "PodKit TrainingService job": podkit}
        times: dict[str, list[float]] = {n: [] for n in cases}
        cpu: dict[str, list[float]] = {n: [] for n in cases}
        foreign: dict[str, list[float]] = {n: [] for n in cases}
        for _, name in interleave(list(cases), 1):  # warm-up: imports, connection pools
            cases[name]()
        for _, name in interleave(list(cases), args.rounds):
            c0 = cpu_seconds()
            wall, frac = guard.run(cases[name])
            cpu[name].append(cpu_seconds() - c0)
            times[name].append(wall)
            foreign[name].append(frac)
        service.close()
        outbox.stop()
        service.db.close()
        store.close()

        anchor, ours = list(cases)
        rows = [
            [n, stats(times[n])["min"], stats(times[n])["median"], statistics.median(cpu[n]), max(foreign[n])]
            for n in cases
        ]
        print_table(
            f"{args.steps} steps, {args.lora_mb} MiB LoRA, {args.rounds} rounds (seconds)",
            ["case", "min", "median", "cpu (this process)", "worst foreign"],
            rows,
        )
        ratio = {
            "min": min(times[ours]) / min(times[anchor]),
            "median": stats(times[ours])["median"] / stats(times[anchor])["median"],
            "paired": paired_ratio(times[ours], times[anchor]),
        }
        print(
            f"\nPodKit / by hand (wall): min {ratio['min']:.3f}  median {ratio['median']:.3f}  "
            f"paired {ratio['paired']:.3f}"
        )
        emit_json(
            "training",
            {
                "steps": args.steps,
                "lora_mb": args.lora_mb,
                "rounds": args.rounds,
                "seconds": times,
                "cpu_seconds": cpu,
                "foreign": foreign,
                "discarded": guard.discarded,
                "ratio_podkit_over_by_hand": ratio,
            },
            args.json,
        )
        return 0
    finally:
        gw.close()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
