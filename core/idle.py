"""When is a pod idle, and when may it be stopped: the rules of the idle stop, as data.

A pod is **busy** while ComfyUI's queue holds a prompt or anything of PodKit's is active: a
download, a training, an upload pending or retrying (the watch starts with ComfyUI, after the
bootstrap). It is **idle** from the moment the last of those ended (or the last keep-alive), and
after ``idle_minutes`` of that the action runs: stop the pod through RunPod's API, or run a
command. A warning goes out ``warn_seconds`` before. Because an upload waiting in the outbox keeps
the pod busy, the idle stop never loses an image: during an R2 outage it waits, says why, and counts
again from the moment the outbox drained.

:func:`evaluate` is pure: the watcher (``backends/idle_watch.py``) feeds it what it observed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

ACTIONS = ("stop", "command")
#: the phases an idle watch reports (``podkit.idle`` events, ``GET /podkit/idle``)
PHASES = ("off", "busy", "idle", "warning", "acting", "done", "failed")


@dataclass(frozen=True)
class IdlePolicy:
    idle_minutes: float | None = None  # None: off
    action: str = "stop"
    warn_seconds: float = 300.0
    command: tuple[str, ...] = ()

    @property
    def enabled(self) -> bool:
        return self.idle_minutes is not None and self.idle_minutes > 0

    @property
    def idle_seconds(self) -> float:
        return (self.idle_minutes or 0.0) * 60.0

    def to_wire(self) -> dict[str, object]:
        return {
            "enabled": self.enabled,
            "idle_minutes": self.idle_minutes,
            "action": self.action,
            "warn_seconds": self.warn_seconds,
            "command": list(self.command[:1]),  # the program only: arguments may carry secrets
        }


@dataclass(frozen=True)
class Activity:
    """What keeps the pod busy right now (each a count)."""

    queue: int = 0  # ComfyUI prompts running or waiting
    downloads: int = 0
    trainings: int = 0
    uploads: int = 0  # outbox items spooling, pending or uploading; training uploads unfinished

    def reasons(self) -> list[str]:
        names = (
            ("queue", "prompt(s) in ComfyUI's queue"),
            ("downloads", "download(s) running"),
            ("trainings", "training(s) running"),
            ("uploads", "upload(s) waiting for the store"),
        )
        return [f"{getattr(self, k)} {text}" for k, text in names if getattr(self, k)]


@dataclass(frozen=True)
class IdleState:
    phase: str
    idle_seconds: float = 0.0
    act_in_seconds: float | None = None
    busy: tuple[str, ...] = ()
    message: str = ""
    error: str | None = None
    extra: dict[str, object] = field(default_factory=dict)

    def to_wire(self) -> dict[str, object]:
        return {
            "phase": self.phase,
            "idle_seconds": round(self.idle_seconds, 1),
            "act_in_seconds": None if self.act_in_seconds is None else round(self.act_in_seconds, 1),
            "busy": list(self.busy),
            "message": self.message,
            "error": self.error,
            **self.extra,
        }


def evaluate(policy: IdlePolicy, activity: Activity, idle_since: float, now: float) -> IdleState:
    """The state of the idle watch at ``now``, ``idle_since`` being when the pod was last busy (or
    kept alive). ``act_in_seconds`` ≤ 0 means: act now."""
    if not policy.enabled:
        return IdleState("off", message="idle stop is off (PODKIT_IDLE_MINUTES)")
    busy = activity.reasons()
    if busy:
        return IdleState("busy", busy=tuple(busy), message="busy: " + ", ".join(busy))
    idle = max(0.0, now - idle_since)
    left = policy.idle_seconds - idle
    verb = "stops the pod" if policy.action == "stop" else "runs the idle command"
    if left <= 0:
        return IdleState("acting", idle, left, message=f"idle for {idle:.0f} s: PodKit {verb} now")
    if left <= policy.warn_seconds:
        return IdleState(
            "warning", idle, left, message=f"idle for {idle:.0f} s: PodKit {verb} in {left:.0f} s"
        )
    return IdleState("idle", idle, left, message=f"idle for {idle:.0f} s; PodKit {verb} in {left:.0f} s")
