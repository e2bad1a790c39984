"""The jobs kit: tables that open old databases as they are, save-then-emit, backoff, retryable."""

from __future__ import annotations

import errno
from collections.abc import Iterator
from pathlib import Path

import pytest
from old_schemas import OLD_DOWNLOADS, OLD_TRAINING

from podkit.backends.state_db import StateDB
from podkit.core import errors
from podkit.core.events import RecordingNotifier
from podkit.jobs.download_store import DOWNLOADS
from podkit.jobs.kit import (
    Announcer,
    Backoff,
    JobRow,
    JobTable,
    TableSpec,
    Throttle,
    backoff_delay,
    retryable,
)

TRAINING = TableSpec(
    table="training_jobs", component="training", indexes={"training_jobs_status": "status, created"}
)


@pytest.fixture
def db(tmp_path: Path) -> Iterator[StateDB]:
    d = StateDB(tmp_path / "state.sqlite3")
    try:
        yield d
    finally:
        d.close()


def _shape(db: StateDB, table: str) -> tuple[list[tuple[object, ...]], list[tuple[object, ...]]]:
    """Columns (name, type, not null, pk) and indexes (name, columns) of ``table``."""
    cols = [(r[1], r[2], r[3], r[5]) for r in db.query(f"PRAGMA table_info({table})")]
    idx = [
        (str(r[1]), tuple(c[2] for c in db.query(f"PRAGMA index_info({r[1]})")))
        for r in db.query(f"PRAGMA index_list({table})")
        if not str(r[1]).startswith("sqlite_autoindex")
    ]
    return cols, sorted(idx)


@pytest.mark.parametrize(("spec", "old"), [(DOWNLOADS, OLD_DOWNLOADS), (TRAINING, OLD_TRAINING)])
def test_new_table_has_the_old_shape(tmp_path: Path, spec: TableSpec, old: str) -> None:
    """A database created by the kit is the one the kinds created before it."""
    old_db, new_db = StateDB(tmp_path / "old.sqlite3"), StateDB(tmp_path / "new.sqlite3")
    try:
        old_db.ensure_schema(spec.component, {1: old})
        JobTable(new_db, spec)
        assert _shape(new_db, spec.table) == _shape(old_db, spec.table)
        assert _shape(new_db, spec.table)[1], "the indexes are created too"
    finally:
        old_db.close()
        new_db.close()


def test_opens_a_database_written_by_the_old_downloads_code(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    old = StateDB(path)
    old.ensure_schema("downloads", {1: OLD_DOWNLOADS})
    with old.transaction() as c:
        c.execute(
            "INSERT INTO downloads (id, key, item, force, status, created, updated, state) "
            "VALUES ('j1', 'k1', '{\"source\": \"url\"}', 1, 'paused', 10.0, 11.0, '{\"dest\": \"loras/a\"}')"
        )
        c.execute(
            "INSERT INTO downloads (id, key, item, force, status, created, updated, state) "
            "VALUES ('bad', 'k2', '{}', 0, 'done', 12.0, 12.0, 'not json')"
        )
    old.close()
    db = StateDB(path)
    try:
        table = JobTable(db, DOWNLOADS)
        assert db.query("SELECT version FROM podkit_schema WHERE component='downloads'") == [(1,)]
        row = table.get("j1")
        assert row == JobRow(
            "j1",
            "paused",
            10.0,
            11.0,
            {"dest": "loras/a"},
            {"key": "k1", "item": '{"source": "url"}', "force": 1},
        )
        assert [r.id for r in table.rows()] == ["j1"]  # the unreadable row is skipped, not fatal
        table.save(JobRow("j1", "done", 99.0, 20.0, {"dest": "loras/b"}, {**row.extra, "force": 0}))
        assert db.query("SELECT force, status, created, updated, state FROM downloads WHERE id='j1'") == [
            (0, "done", 10.0, 20.0, '{"dest": "loras/b"}')
        ]
    finally:
        db.close()


def test_rows_filter_order_limit_count_delete(db: StateDB) -> None:
    table = JobTable(db, TRAINING)
    for i, status in enumerate(["queued", "running", "queued", "done"]):
        table.save(JobRow(f"t{i}", status, float(i), float(i), {"n": i}))
    assert [r.id for r in table.rows()] == ["t3", "t2", "t1", "t0"]
    assert [r.id for r in table.rows(statuses=["queued"], newest_first=False, limit=1)] == ["t0"]
    assert [r.data["n"] for r in table.rows(statuses=("queued", "done"))] == [3, 2, 0]
    assert table.counts() == {"queued": 2, "running": 1, "done": 1}
    table.delete("t0", "t3")
    assert table.get("t0") is None
    assert table.counts() == {"queued": 1, "running": 1}


def test_table_names_must_be_identifiers() -> None:
    with pytest.raises(ValueError, match="identifiers"):
        TableSpec(table="jobs; DROP TABLE outbox", component="x")


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_announcer_saves_before_it_emits_and_throttles_progress() -> None:
    log: list[tuple[str, int]] = []
    notifier = RecordingNotifier()
    clock = Clock()

    def save(n: int) -> None:
        log.append(("save", n))

    def wire(n: int) -> dict[str, object]:
        log.append(("emit", n))
        return {"n": n}

    ann: Announcer[int] = Announcer(
        notifier,
        "podkit.test",
        save=save,
        wire=wire,
        throttle=Throttle(save_every=2.0, emit_every=0.5),
        clock=clock,
    )
    ann.changed("a", 1)
    assert log == [("save", 1), ("emit", 1)]
    log.clear()
    ann.progress("a", 2)  # too soon after the change: nothing
    clock.t += 0.6
    ann.progress("a", 3)  # emitted, not saved (saved 0.6 s ago)
    assert log == [("emit", 3)]
    clock.t += 1.5
    ann.progress("a", 4)  # 2.1 s since the save: saved, then emitted
    assert log == [("emit", 3), ("save", 4), ("emit", 4)]
    ann.progress("a", 5, force_emit=True)
    ann.progress("b", 6)  # another job has its own stamps
    assert log[-3:] == [("emit", 5), ("save", 6), ("emit", 6)]
    ann.changed("a", 7)  # a final state is never throttled
    assert log[-2:] == [("save", 7), ("emit", 7)]
    ann.forget("a")
    ann.progress("a", 8)
    assert log[-2:] == [("save", 8), ("emit", 8)]
    assert [d["n"] for d in notifier.of("podkit.test")] == [1, 3, 4, 5, 6, 7, 8]


def test_backoff_is_one_exponential_rule() -> None:
    assert [backoff_delay(a, base=0.5, cap=3.0) for a in (0, 1, 2, 3, 4, 5)] == [0.5, 0.5, 1.0, 2.0, 3.0, 3.0]
    assert backoff_delay(2, base=1.0, jitter=0.5) == 2.5
    delays = [Backoff(base=2.0, cap=10.0).delay(3) for _ in range(50)]
    assert all(4.0 <= d <= 8.0 for d in delays) and len(set(delays)) > 1


class ClientError(Exception):
    """Shaped like botocore's (class name and module) without importing it."""

    def __init__(self, status: int, code: str) -> None:
        super().__init__(code)
        self.response = {"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}


ClientError.__module__ = "botocore.exceptions"


class EndpointConnectionError(Exception):
    pass


EndpointConnectionError.__module__ = "botocore.exceptions"


class ServerDisconnectedError(Exception):
    pass


ServerDisconnectedError.__module__ = "aiohttp.client_exceptions"


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (errors.StoreUnavailable("down"), True),
        (errors.TransferFailed("cut"), True),
        (errors.ObjectChanged("replaced"), True),
        (errors.InsufficientStorage("full"), True),
        (errors.AccessDenied("no"), False),
        (errors.InvalidRequest("bad"), False),
        (errors.ObjectNotFound("gone"), False),
        (errors.Conflict("exists"), False),
        (errors.PodKitError("bug"), False),
        (ClientError(503, "ServiceUnavailable"), True),
        (ClientError(400, "SlowDown"), True),
        (ClientError(429, ""), True),
        (ClientError(403, "AccessDenied"), False),
        (EndpointConnectionError(), True),
        (ServerDisconnectedError(), True),
        (ConnectionResetError(), True),
        (TimeoutError(), True),
        (OSError(errno.ENOSPC, "full"), True),
        (FileNotFoundError(errno.ENOENT, "gone"), False),
        (ValueError("bug"), False),
    ],
)
def test_retryable(exc: BaseException, expected: bool) -> None:
    assert retryable(exc) is expected
