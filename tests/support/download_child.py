"""A separate process running PodKit's download manager (kill/restart and two-process tests).

``python download_child.py <models_dir> <state_dir> [<url> <type> [<name>]]``: builds a
DownloadService on those folders, starts it (which resumes unfinished jobs), submits the URL when
given, waits until every job is finished and prints the jobs as one JSON line.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from podkit_import import register_package  # noqa: E402

register_package()

from podkit.backends.local_store import LocalStore  # noqa: E402
from podkit.backends.state_db import StateDB  # noqa: E402
from podkit.core.download_request import parse_item  # noqa: E402
from podkit.core.settings import Settings  # noqa: E402
from podkit.jobs.downloads import DownloadService  # noqa: E402
from podkit.services import url_policy  # noqa: E402


def main(argv: list[str]) -> int:
    models, state = Path(argv[0]), Path(argv[1])
    settings = Settings.from_env(
        {
            "PODKIT_VOLUME_DIR": "",
            "PODKIT_STORE": "local",
            "PODKIT_LOCAL_STORE_DIR": str(state / "store"),
            "PODKIT_CACHE_DIR": str(state / "cache"),
            "PODKIT_STATE_DIR": str(state),
            "PODKIT_MODELS_DIR": str(models),
            "PODKIT_URL_ALLOW_PRIVATE": "1",
        }
    )
    db = StateDB(state / "podkit.sqlite3")
    svc = DownloadService(
        settings,
        db,
        LocalStore(settings.local_store_dir),
        policy=url_policy(settings),
        engine_options={"backoff_base": 0.05},
    )
    svc.start()
    try:
        if len(argv) > 2:
            raw = {"url": argv[2], "type": argv[3]}
            if len(argv) > 4:
                raw["name"] = argv[4]
            svc.submit([parse_item(raw)])
            print("submitted", flush=True)  # noqa: T201
        jobs = svc.wait([j.id for j in svc.jobs()], timeout=120)
        print(json.dumps([j.to_wire() for j in jobs]), flush=True)  # noqa: T201
    finally:
        svc.close()
        db.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
