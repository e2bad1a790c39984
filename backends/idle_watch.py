"""The idle stop: watch what keeps the pod busy, warn, then stop the pod (or run a command).

A daemon thread samples :class:`~podkit.core.idle.Activity` every ``tick`` seconds (ComfyUI's queue,
PodKit's downloads, trainings and outbox — state, not CPU averages), is also told of every execution
event (:meth:`IdleWatch.touch`), and applies :func:`~podkit.core.idle.evaluate`. Phase changes, and
the countdown while warning, go out as ``podkit.idle`` events; ``keep_alive`` restarts the clock.
The stop action uses the runpod SDK (``RUNPOD_API_KEY``, ``RUNPOD_POD_ID``; ``RUNPOD_API_BASE_URL``
points it elsewhere); the command action runs ``PODKIT_IDLE_COMMAND`` as an argv list, no shell.
A failed action is reported and retried after ``retry_seconds``.
"""

from __future__ import annotations

import logging
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import replace

from ..core.download_job import ACTIVE as DOWNLOAD_ACTIVE
from ..core.download_job import DownloadJobs
from ..core.events import Notifier, NullNotifier
from ..core.idle import Activity, IdlePolicy, IdleState, evaluate
from ..core.outbox import ACTIVE as UPLOAD_ACTIVE
from ..core.outbox import OutboxQueue
from ..core.training import ACTIVE_STATUSES as TRAINING_ACTIVE
from ..core.training import TrainingJobs

logger = logging.getLogger(__name__)
EVENT = "podkit.idle"


class ActivityProbe:
    """Reads what keeps this pod busy: ComfyUI's queue (when PodKit runs inside it), PodKit's
    downloads, trainings (an unfinished training upload included) and outbox."""

    def __init__(
        self, outbox: OutboxQueue, downloads: DownloadJobs | None, training: TrainingJobs | None
    ) -> None:
        self.outbox = outbox
        self.downloads = downloads
        self.training = training
        self.queue_length: Callable[[], int] | None = None

    def __call__(self) -> Activity:
        counts = self.outbox.counts()
        return Activity(
            queue=self.queue_length() if self.queue_length is not None else 0,
            downloads=sum(1 for j in self.downloads.jobs() if j.status in DOWNLOAD_ACTIVE)
            if self.downloads
            else 0,
            trainings=len(self.training.list_jobs(statuses=TRAINING_ACTIVE)) if self.training else 0,
            uploads=sum(counts.get(s.value, 0) for s in UPLOAD_ACTIVE),
        )


def runpod_stopper(api_key: str | None, pod_id: str | None) -> Callable[[], str]:
    """Stop ``pod_id`` through RunPod's API with the runpod SDK."""

    def stop() -> str:
        if not api_key or not pod_id:
            raise RuntimeError("stopping the pod needs RUNPOD_API_KEY and RUNPOD_POD_ID")
        import runpod

        runpod.api_key = api_key
        answer = runpod.stop_pod(pod_id)
        status = answer.get("desiredStatus", "requested") if isinstance(answer, dict) else answer
        return f"pod {pod_id} stopping ({status})"

    return stop


def command_runner(argv: Sequence[str], timeout: float = 300.0) -> Callable[[], str]:
    def run() -> str:
        if not argv:
            raise RuntimeError("PODKIT_IDLE_ACTION=command needs PODKIT_IDLE_COMMAND")
        done = subprocess.run(  # noqa: S603 - an argv list from the operator's settings, no shell
            list(argv), stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout, check=False
        )
        if done.returncode != 0:
            tail = (done.stderr or done.stdout or b"").decode(errors="replace").strip()[-300:]
            raise RuntimeError(f"{argv[0]} exited with {done.returncode}: {tail}")
        return f"{argv[0]} ran"

    return run


class IdleWatch:
    def __init__(
        self,
        policy: IdlePolicy,
        probe: Callable[[], Activity],
        action: Callable[[], str],
        *,
        notifier: Notifier | None = None,
        tick: float = 1.0,
        countdown_every: float = 10.0,
        retry_seconds: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.policy = policy
        self.probe = probe
        self.action = action
        self.notifier = notifier or NullNotifier()
        self.tick = tick
        self.countdown_every = countdown_every
        self.retry_seconds = retry_seconds
        self.clock = clock
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._idle_since = clock()
        self._state = evaluate(policy, Activity(), self._idle_since, self._idle_since)
        self._acted: IdleState | None = None  # done/failed, with when it may act again
        self._retry_at = 0.0
        self._last_emit = -1e9

    # ----------------------------------------------------------------- control
    def start(self) -> None:
        if self._thread is not None or not self.policy.enabled:
            return
        self._thread = threading.Thread(target=self._run, name="podkit-idle", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def touch(self) -> None:
        """Something happened (an execution event): the pod is not idle now."""
        with self._lock:
            self._idle_since = self.clock()

    def keep_alive(self) -> IdleState:
        """A user asked to keep the pod: restart the idle clock (and a failed action's retry)."""
        with self._lock:
            self._idle_since = self.clock()
            self._acted = None
        return self.poll()

    def state(self) -> IdleState:
        with self._lock:
            return self._acted or self._state

    # ----------------------------------------------------------------- the loop
    def _run(self) -> None:
        while not self._stop.wait(self.tick):
            try:
                self.poll()
            except Exception:  # the watch must outlive a failing probe
                logger.warning("idle watch: probe failed", exc_info=True)

    def poll(self) -> IdleState:
        """Observe, evaluate, emit, act (one step; the thread calls it every ``tick``)."""
        activity = self.probe()
        now = self.clock()
        with self._lock:
            if activity.reasons():
                self._idle_since = now
                self._acted = None
            if self._acted is not None and (self._acted.phase == "done" or now < self._retry_at):
                return self._acted
            state = evaluate(self.policy, activity, self._idle_since, now)
            changed = state.phase != self._state.phase
            self._state = state
        if changed or (state.phase == "warning" and now - self._last_emit >= self.countdown_every):
            self._emit(state)
            self._last_emit = now
        if state.phase == "acting":
            return self._act(state)
        return state

    def _act(self, state: IdleState) -> IdleState:
        logger.warning("PodKit idle stop: %s", state.message)
        try:
            detail = self.action()
            result = replace(state, phase="done", message=f"{state.message}: {detail}")
        except Exception as e:  # reported, retried after retry_seconds
            logger.error("PodKit idle stop failed: %s", e)
            result = replace(state, phase="failed", error=str(e)[:500], message="the idle action failed")
        with self._lock:
            self._acted = result
            self._retry_at = self.clock() + self.retry_seconds
        self._emit(result)
        return result

    def _emit(self, state: IdleState) -> None:
        self.notifier.emit(EVENT, state.to_wire())
