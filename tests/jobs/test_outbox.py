from __future__ import annotations

import threading
from pathlib import Path

import pytest

from podkit.backends.local_store import LocalStore
from podkit.backends.state_db import StateDB
from podkit.core.errors import AccessDenied, StoreUnavailable
from podkit.core.events import RecordingNotifier
from podkit.core.objects import ObjectRef
from podkit.core.outbox import Backoff
from podkit.jobs.outbox import Outbox
from podkit.jobs.outbox_store import SqliteOutboxRepo


class FlakyStore(LocalStore):
    """A real local store that can be switched off (an outage) or deny access."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.down = threading.Event()
        self.deny = False
        self.uploads = 0

    def upload_file(self, src, ref, **kw):  # type: ignore[no-untyped-def, override]
        if self.down.is_set():
            raise StoreUnavailable("store is down")
        if self.deny:
            raise AccessDenied("denied")
        self.uploads += 1
        return super().upload_file(src, ref, **kw)


@pytest.fixture
def env(tmp_path: Path):  # type: ignore[no-untyped-def]
    store = FlakyStore(tmp_path / "store")
    store.ensure_bucket("outputs")
    db = StateDB(tmp_path / "state" / "db.sqlite3")
    notifier = RecordingNotifier()
    made: list[Outbox] = []

    def make() -> Outbox:
        ob = Outbox(
            tmp_path / "state" / "spool",
            SqliteOutboxRepo(db),
            store,
            notifier=notifier,
            backoff=Backoff(base=0.02, cap=0.1),
        )
        made.append(ob)
        return ob

    yield store, make, notifier, tmp_path
    for ob in made:
        ob.stop()
    db.close()


def test_upload_happens_in_background_and_spool_is_cleaned(env) -> None:  # type: ignore[no-untyped-def]
    store, make, notifier, tmp = env
    ob = make()
    ob.start()
    item = ob.submit(b"png-bytes", ObjectRef("outputs", "a/1.png"), content_type="image/png")
    assert item.status == "pending"
    assert ob.flush(10)
    assert store.get_bytes(ObjectRef("outputs", "a/1.png")) == b"png-bytes"
    assert store.head(ObjectRef("outputs", "a/1.png")).sha256 == item.sha256
    assert list((tmp / "state" / "spool").iterdir()) == []
    assert ob.counts() == {"done": 1}
    assert [e["status"] for e in notifier.of("podkit.upload")] == ["pending", "done"]


def test_outage_then_recovery_loses_nothing(env) -> None:  # type: ignore[no-untyped-def]
    store, make, _, _ = env
    store.down.set()
    ob = make()
    ob.start()
    refs = [ObjectRef("outputs", f"img/{i}.png") for i in range(5)]
    for i, ref in enumerate(refs):
        ob.submit(bytes([i]) * 100, ref, content_type="image/png")
    assert not ob.flush(0.5)
    pending = ob.list(["pending", "uploading"])
    assert len(pending) == 5 and all(i.attempts >= 1 and i.last_error for i in ob.list(["pending"]))
    store.down.clear()
    assert ob.flush(10)
    assert [store.get_bytes(r) for r in refs] == [bytes([i]) * 100 for i in range(5)]


def test_restart_uploads_what_was_spooled(env) -> None:  # type: ignore[no-untyped-def]
    store, make, _, _ = env
    store.down.set()
    first = make()
    first.start()
    first.submit(b"one", ObjectRef("outputs", "x/1.png"), content_type="image/png")
    first.submit(b"two", ObjectRef("outputs", "x/2.png"), content_type="image/png")
    first.stop()  # the process "dies" with two images spooled
    store.down.clear()
    second = make()
    second.start()  # a new process on the same state folder
    assert second.flush(10)
    assert store.get_bytes(ObjectRef("outputs", "x/1.png")) == b"one"
    assert store.get_bytes(ObjectRef("outputs", "x/2.png")) == b"two"
    assert store.uploads == 2


def test_permanent_failure_waits_for_retry(env) -> None:  # type: ignore[no-untyped-def]
    store, make, _, _ = env
    store.deny = True
    ob = make()
    ob.start()
    ob.submit(b"z", ObjectRef("outputs", "d.png"), content_type="image/png")
    assert ob.flush(5)  # failed items do not count as in flight
    (failed,) = ob.list(["failed"])
    assert "AccessDenied" in (failed.last_error or "")
    store.deny = False
    assert ob.retry() == 1
    assert ob.flush(5)
    assert store.get_bytes(ObjectRef("outputs", "d.png")) == b"z"


def test_crash_leftovers_are_reconciled(env) -> None:  # type: ignore[no-untyped-def]
    store, make, _, tmp = env
    ob = make()
    spool = tmp / "state" / "spool"
    spool.mkdir(parents=True)
    (spool / "orphan.png.tmp").write_bytes(b"half")
    item = ob.submit(b"kept", ObjectRef("outputs", "k.png"), content_type="image/png")
    ob.repo.update(item.__class__(**{**item.__dict__, "status": "uploading"}))  # died mid-upload
    ob.start()
    assert ob.flush(5)
    assert not (spool / "orphan.png.tmp").exists()
    assert store.get_bytes(ObjectRef("outputs", "k.png")) == b"kept"


def test_bad_status_filter(env) -> None:  # type: ignore[no-untyped-def]
    _, make, _, _ = env
    with pytest.raises(ValueError, match="unknown outbox status"):
        make().list(["bogus"])


def test_a_file_is_spooled_as_a_link_and_may_leave_its_folder(env) -> None:  # type: ignore[no-untyped-def]
    store, make, notifier, tmp = env
    store.down.set()
    ob = make()
    seen: list[tuple[str, int]] = []
    ob.observe(lambda item: seen.append((item.status, item.attempts)))
    ob.start()
    src = tmp / "job" / "lora.safetensors"
    src.parent.mkdir()
    src.write_bytes(b"weights" * 1000)
    item = ob.submit_file(
        src, ObjectRef("outputs", "lora.safetensors"), content_type="application/octet-stream"
    )
    spooled = Path(item.spool_path)
    assert spooled.parent == tmp / "state" / "spool" and spooled.stat().st_ino == src.stat().st_ino
    assert item.size == 7000 and item.status == "pending"
    assert not ob.flush(0.3) and seen and seen[0] == ("pending", 1)  # the observer hears each attempt
    src.unlink()  # the job folder goes; the spool still holds the file
    store.down.clear()
    assert ob.flush(10)
    assert store.get_bytes(ObjectRef("outputs", "lora.safetensors")) == b"weights" * 1000
    assert store.head(ObjectRef("outputs", "lora.safetensors")).sha256 == item.sha256
    assert seen[-1][0] == "done" and not spooled.exists()
    assert notifier.of("podkit.upload")[-1]["status"] == "done"


def test_withdraw_takes_only_a_waiting_item(env) -> None:  # type: ignore[no-untyped-def]
    store, make, notifier, _ = env
    store.deny = True
    ob = make()
    ob.start()
    refused = ob.submit(b"a", ObjectRef("outputs", "a.png"), content_type="image/png")
    assert ob.flush(5) and ob.get(refused.id).status == "failed"  # type: ignore[union-attr]
    assert ob.withdraw(refused.id) and ob.get(refused.id) is None
    assert not Path(refused.spool_path).exists()
    last = notifier.of("podkit.upload")[-1]
    assert last["id"] == refused.id and last["removed"] is True and last["status"] == "failed"
    store.deny = False
    delivered = ob.submit(b"b", ObjectRef("outputs", "b.png"), content_type="image/png")
    assert ob.flush(5)
    assert not ob.withdraw(delivered.id) and ob.get(delivered.id).status == "done"  # type: ignore[union-attr]
    assert not ob.withdraw("no-such-item")
