"""A PodKit process that runs the training service, for kill -9 tests.

``python training_host.py <config.json>`` builds a :class:`TrainingService` (real SQLite state, a
real S3 store, the ai-toolkit stand-in as trainer), starts it, submits the job in the config, and
prints every ``podkit.training`` event as one JSON line on stdout until it is killed.
"""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Mapping
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from podkit_import import register_package  # noqa: E402

register_package()

from podkit.backends.s3_store import S3Store  # noqa: E402
from podkit.backends.state_db import StateDB  # noqa: E402
from podkit.backends.trainer import AiToolkitBackend  # noqa: E402
from podkit.jobs.outbox import sqlite_outbox  # noqa: E402
from podkit.jobs.training import TrainingOptions, TrainingService  # noqa: E402

FAKE_AI_TOOLKIT = Path(__file__).resolve().parent / "fake_ai_toolkit"


class PrintNotifier:
    def __init__(self) -> None:
        self._lock = threading.Lock()

    def emit(self, event: str, data: Mapping[str, object]) -> None:
        with self._lock:
            sys.stdout.write(json.dumps({"event": event, "data": data}) + "\n")
            sys.stdout.flush()


def main() -> None:
    cfg = json.loads(Path(sys.argv[1]).read_text())
    s3 = cfg["s3"]
    store = S3Store(
        s3["endpoint_url"],
        region=s3["region"],
        access_key_id=s3["access_key"],
        secret_access_key=s3["secret_key"],
    )
    db = StateDB(Path(cfg["state_dir"]) / "podkit.sqlite3")
    outbox = sqlite_outbox(db, Path(cfg["state_dir"]) / "spool", store)
    outbox.start()
    service = TrainingService(
        db,
        store,
        AiToolkitBackend(FAKE_AI_TOOLKIT, python=sys.executable),
        TrainingOptions(
            training_dir=Path(cfg["training_dir"]),
            lora_bucket=cfg["bucket"],
            roots=tuple(Path(r) for r in cfg["roots"]),
            passthrough_env=cfg["env"],
            poll_interval=0.05,
        ),
        outbox=outbox,
        notifier=PrintNotifier(),
    )
    service.start()
    service.submit(cfg["request"])
    threading.Event().wait()


if __name__ == "__main__":
    main()
