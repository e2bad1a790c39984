"""The durable upload outbox: spool first, upload in the background, never lose an upload.

Generated images (:meth:`Outbox.submit`, bytes) and trained LoRAs (:meth:`Outbox.submit_file`, a
hard link to the file) take the same way. Flow of one item: a row is recorded (``spooling``) →
the file is written to the spool folder (unique temp file, fsync, rename) → the row becomes
``pending`` → a worker uploads it and marks it ``done`` (then the spool file is removed).
Transient failures (store down, timeouts) go back to ``pending`` with exponential backoff and are
retried forever; permanent ones (access denied, missing bucket) become ``failed`` and wait for a
retry request or a restart. On start, rows left ``uploading`` by a crash are pending again. Object
keys are deterministic per item, so a repeated upload overwrites the same object instead of
duplicating it. Whoever waits for an item (the training service) is told of every attempt's
outcome through :meth:`Outbox.observe`.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..backends.state_db import StateDB
from ..core.errors import InvalidRequest, PodKitError
from ..core.events import Notifier, NullNotifier
from ..core.fsutil import sha256_file
from ..core.objects import ObjectRef, ObjectStore
from ..core.outbox import ACTIVE, STATUSES, OutboxItem, OutboxRepo, UploadStatus
from .kit import Backoff, retryable
from .outbox_store import SqliteOutboxRepo

logger = logging.getLogger(__name__)
U = UploadStatus


class Outbox:
    """Spool + background upload workers. Thread-safe; ``submit`` is called from node threads."""

    def __init__(
        self,
        spool_dir: Path,
        repo: OutboxRepo,
        store: ObjectStore,
        *,
        notifier: Notifier | None = None,
        workers: int = 2,
        backoff: Backoff | None = None,
        keep_done: int = 1000,
    ) -> None:
        self.spool_dir = spool_dir
        self.repo = repo
        self.store = store
        self.notifier = notifier or NullNotifier()
        self.workers = workers
        self.backoff = backoff or Backoff()
        self.keep_done = keep_done
        self._wake = threading.Condition()
        self._stop = False
        self._threads: list[threading.Thread] = []
        self._busy = 0
        self._observers: list[Callable[[OutboxItem], object]] = []

    # ----------------------------------------------------------------- lifecycle
    def start(self) -> None:
        """Recover what a previous process left, then start the upload workers."""
        if self._threads:
            return
        self.recover()
        self._stop = False
        for i in range(self.workers):
            t = threading.Thread(target=self._run, name=f"podkit-outbox-{i}", daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self, timeout: float = 10.0) -> None:
        with self._wake:
            self._stop = True
            self._wake.notify_all()
        for t in self._threads:
            t.join(timeout)
        self._threads.clear()

    def recover(self) -> None:
        """Make every row consistent with the spool folder after a crash or restart."""
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        now = time.time()
        known: set[str] = set()
        for item in self.repo.list(None, 10**9):
            path = Path(item.spool_path)
            known.add(path.name)
            if item.status != U.DONE:
                if not path.is_file():
                    if item.status == U.SPOOLING:
                        self.repo.delete(item.id)  # the node never returned: nothing was promised
                    else:
                        logger.error("outbox item %s lost its spool file %s", item.id, path)
                        self.repo.update(
                            replace(
                                item,
                                status=U.FAILED,
                                last_error="spool file missing",
                                updated=now,
                            )
                        )
                    continue
                if item.status != U.PENDING or item.next_attempt > now:
                    self.repo.update(replace(item, status=U.PENDING, next_attempt=now, updated=now))
        for p in self.spool_dir.iterdir():
            if p.name not in known and (p.name.endswith(".tmp") or p.suffix in (".png", ".bin", ".json")):
                p.unlink(missing_ok=True)  # half-written spool files of a crashed process

    # ----------------------------------------------------------------- submit
    def submit(
        self,
        data: bytes,
        ref: ObjectRef,
        *,
        content_type: str,
        prompt_id: str | None = None,
        sha256: str | None = None,
    ) -> OutboxItem:
        """Spool ``data`` durably and queue it for upload to ``ref``; returns at once."""

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())

        sha = sha256 or hashlib.sha256(data).hexdigest()
        return self._spool(ref, content_type, len(data), sha, write, prompt_id=prompt_id)

    def submit_file(
        self, src: Path, ref: ObjectRef, *, content_type: str, sha256: str | None = None
    ) -> OutboxItem:
        """Spool the file at ``src`` and queue it for upload to ``ref``; returns at once.

        The spool gets a hard link to ``src`` where the filesystem allows one (a trained LoRA is
        gigabytes: no second copy), else a copy. Either way the spool owns its file, so the caller
        may delete ``src`` before the upload ends.
        """

        def write(tmp: Path) -> None:
            try:
                os.link(src, tmp)
            except OSError:  # another filesystem, or one without hard links
                shutil.copyfile(src, tmp)
                with open(tmp, "rb") as f:
                    os.fsync(f.fileno())

        sha = sha256 or sha256_file(src)
        return self._spool(ref, content_type, src.stat().st_size, sha, write)

    def _spool(
        self,
        ref: ObjectRef,
        content_type: str,
        size: int,
        sha256: str,
        write: Callable[[Path], None],
        *,
        prompt_id: str | None = None,
    ) -> OutboxItem:
        """Record the row, ``write`` the spool file (temp name, then rename), mark it pending."""
        item_id = uuid.uuid4().hex
        ext = {"image/png": ".png"}.get(content_type, ".bin")
        path = self.spool_dir / f"{item_id}{ext}"
        now = time.time()
        item = OutboxItem(
            id=item_id,
            bucket=ref.bucket,
            key=ref.key,
            spool_path=str(path),
            content_type=content_type,
            size=size,
            sha256=sha256,
            status=U.SPOOLING,
            attempts=0,
            next_attempt=now,
            last_error=None,
            created=now,
            updated=now,
            prompt_id=prompt_id,
        )
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        self.repo.insert(item)
        tmp = path.with_name(path.name + ".tmp")
        try:
            write(tmp)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            self.repo.delete(item_id)
            raise
        item = replace(item, status=U.PENDING)
        self.repo.update(item)
        self.notifier.emit("podkit.upload", item.to_wire())
        with self._wake:
            self._wake.notify()
        return item

    def withdraw(self, item_id: str) -> bool:
        """Take a waiting (pending or failed) item out of the outbox and drop its spool file.

        Returns False when the item is being uploaded, is delivered, or does not exist: an upload
        in flight is never cut off.
        """
        item = self.repo.get(item_id)
        if item is None or not self.repo.withdraw(item_id):
            return False
        Path(item.spool_path).unlink(missing_ok=True)
        # the row is gone: the event says so (the panel drops it from its list and its counts)
        self.notifier.emit("podkit.upload", {**item.to_wire(), "removed": True})
        return True

    def observe(self, observer: Callable[[OutboxItem], object]) -> None:
        """Call ``observer`` with the item whenever an upload attempt ends (done, pending, failed).

        Observers run on an upload worker, after the row is saved and the event emitted, outside
        the outbox's locks; an observer's exception is logged and never stops the outbox.
        """
        self._observers.append(observer)

    def _announce(self, item: OutboxItem) -> None:
        self.notifier.emit("podkit.upload", item.to_wire())
        for observer in self._observers:
            try:
                observer(item)
            except Exception:
                logger.exception("outbox: an observer failed on %s", item.ref)

    # ----------------------------------------------------------------- worker
    def _run(self) -> None:
        while True:
            with self._wake:
                if self._stop:
                    return
            try:
                batch = self.repo.claim_due(time.time(), 1)
            except Exception:  # a broken database must not kill the worker thread
                logger.exception("outbox: cannot read the state database")
                batch = []
            if not batch:
                with self._wake:
                    if self._stop:
                        return
                    due = self.repo.next_due()
                    wait = 5.0 if due is None else min(5.0, max(0.0, due - time.time()))
                    if wait > 0:
                        self._wake.wait(wait)
                continue
            for item in batch:
                with self._wake:
                    self._busy += 1
                try:
                    self._upload(item)
                finally:
                    with self._wake:
                        self._busy -= 1
                        self._wake.notify_all()

    def _upload(self, item: OutboxItem) -> None:
        path = Path(item.spool_path)
        attempts = item.attempts + 1
        try:
            meta = self.store.upload_file(
                path, item.ref, content_type=item.content_type, metadata={"sha256": item.sha256}
            )
        except Exception as e:
            now = time.time()
            permanent = not retryable(e)
            if not isinstance(e, PodKitError):
                logger.exception("outbox: unexpected error uploading %s", item.ref)
            status = U.FAILED if permanent else U.PENDING
            delay = self.backoff.delay(attempts)
            updated = replace(
                item,
                status=status,
                attempts=attempts,
                next_attempt=now + delay,
                last_error=f"{type(e).__name__}: {e}"[:500],
                updated=now,
            )
            self.repo.update(updated)
            logger.warning(
                "outbox: upload of %s failed (attempt %d, %s): %s",
                item.ref,
                attempts,
                status,
                updated.last_error,
            )
            self._announce(updated)
            return
        done = replace(
            item,
            status=U.DONE,
            attempts=attempts,
            etag=meta.etag,
            last_error=None,
            updated=time.time(),
        )
        self.repo.update(done)
        path.unlink(missing_ok=True)
        self._announce(done)
        with contextlib.suppress(Exception):
            self.repo.prune_done(self.keep_done)

    # ----------------------------------------------------------------- queries
    def list(self, statuses: Sequence[str] | None = None, limit: int = 200) -> list[OutboxItem]:
        for s in statuses or ():
            if s not in STATUSES:
                raise InvalidRequest(f"unknown outbox status {s!r}; use one of {', '.join(STATUSES)}")
        return self.repo.list(statuses, limit)

    def counts(self) -> dict[str, int]:
        return self.repo.counts()

    def get(self, item_id: str) -> OutboxItem | None:
        return self.repo.get(item_id)

    def retry(self, ids: Sequence[str] | None = None) -> int:
        """Make failed (and waiting pending) items due now; returns how many were requeued."""
        now = time.time()
        items = (
            [i for i in (self.repo.get(x) for x in ids) if i is not None]
            if ids is not None
            else self.repo.list((U.FAILED, U.PENDING), 10**9)
        )
        n = 0
        for item in items:
            if item.status in (U.FAILED, U.PENDING):
                self.repo.update(replace(item, status=U.PENDING, next_attempt=now, updated=now))
                n += 1
        with self._wake:
            self._wake.notify_all()
        return n

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until nothing is pending or uploading (failed items do not count)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            c = self.repo.counts()
            with self._wake:
                busy = self._busy
            if not (any(c.get(s.value, 0) for s in ACTIVE) or busy):
                return True
            with self._wake:
                self._wake.notify_all()
                self._wake.wait(0.05)
        return False


def sqlite_outbox(db: StateDB, spool_dir: Path, store: ObjectStore, **options: Any) -> Outbox:
    """An outbox whose rows live in the instance's state database (``options``: see :class:`Outbox`)."""
    return Outbox(spool_dir, SqliteOutboxRepo(db), store, **options)
