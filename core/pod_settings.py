"""The pod's own settings: idle stop and health thresholds (``Settings.pod``)."""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field

from .errors import ConfigError
from .idle import ACTIONS, IdlePolicy
from .sizes import parse_size

ENV_DOCS = {
    "PODKIT_IDLE_MINUTES": "stop the pod after this many idle minutes (default: off)",
    "PODKIT_IDLE_ACTION": "'stop' (RunPod API: RUNPOD_API_KEY, RUNPOD_POD_ID) or 'command' (default stop)",
    "PODKIT_IDLE_COMMAND": "the idle command, an argv split shell-style and run without a shell",
    "PODKIT_IDLE_WARN_SECONDS": "warn (podkit.idle event, panel countdown) this long before acting "
    "(default 300)",
    "RUNPOD_API_KEY": "RunPod API key, used only by the idle stop",
    "PODKIT_HEALTH_MIN_FREE": "free disk below this on the volume or cache fails /podkit/health (default 2G)",
    "PODKIT_HEALTH_STORE_TTL": "seconds a store check is reused by /podkit/health (default 30)",
    "PODKIT_HEALTH_OUTBOX_STUCK": "an upload waiting longer than this many seconds fails /podkit/health "
    "(default 900)",
    "PODKIT_EXPECT_GPU": "1: /podkit/health fails without a visible GPU (default: when RUNPOD_GPU_COUNT > 0)",
}


def _float(env: Mapping[str, str], name: str, default: float | None, lo: float, hi: float) -> float | None:
    raw = (env.get(name) or "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError as e:
        raise ConfigError(f"{name} must be a number") from e
    if not lo <= value <= hi:
        raise ConfigError(f"{name} must be between {lo:g} and {hi:g}")
    return value


@dataclass(frozen=True)
class PodSettings:
    idle: IdlePolicy = field(default_factory=IdlePolicy)
    pod_id: str | None = None
    min_free_bytes: int = 2 * 2**30
    store_check_ttl: float = 30.0
    outbox_stuck_seconds: float = 900.0
    expect_gpu: bool = False
    runpod_api_key: str | None = field(default=None, repr=False)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> PodSettings:
        action = (env.get("PODKIT_IDLE_ACTION") or "stop").strip().lower()
        if action not in ACTIONS:
            raise ConfigError(f"PODKIT_IDLE_ACTION={action!r} must be one of {', '.join(ACTIONS)}")
        try:
            command = tuple(shlex.split(env.get("PODKIT_IDLE_COMMAND") or ""))
        except ValueError as e:
            raise ConfigError(f"PODKIT_IDLE_COMMAND: {e}") from e
        minutes = _float(env, "PODKIT_IDLE_MINUTES", None, 0, 7 * 24 * 60)
        if minutes and action == "command" and not command:
            raise ConfigError("PODKIT_IDLE_ACTION=command needs PODKIT_IDLE_COMMAND")
        expect = (env.get("PODKIT_EXPECT_GPU") or "").strip().lower()
        gpus = (env.get("RUNPOD_GPU_COUNT") or "0").strip()
        return cls(
            idle=IdlePolicy(
                idle_minutes=minutes or None,
                action=action,
                warn_seconds=_float(env, "PODKIT_IDLE_WARN_SECONDS", 300.0, 0, 24 * 3600) or 0.0,
                command=command,
            ),
            pod_id=(env.get("RUNPOD_POD_ID") or "").strip() or None,
            min_free_bytes=parse_size(
                env.get("PODKIT_HEALTH_MIN_FREE") or "2G", name="PODKIT_HEALTH_MIN_FREE"
            ),
            store_check_ttl=_float(env, "PODKIT_HEALTH_STORE_TTL", 30.0, 0, 3600) or 0.0,
            outbox_stuck_seconds=_float(env, "PODKIT_HEALTH_OUTBOX_STUCK", 900.0, 1, 7 * 24 * 3600) or 900.0,
            expect_gpu=expect in ("1", "true", "yes") or (not expect and gpus.isdigit() and int(gpus) > 0),
            runpod_api_key=(env.get("RUNPOD_API_KEY") or "").strip() or None,
        )

    def public_view(self) -> dict[str, object]:
        return {
            "idle": self.idle.to_wire(),
            "pod_id": self.pod_id,
            "runpod_api_key": self.runpod_api_key is not None,
            "health": {
                "min_free_bytes": self.min_free_bytes,
                "store_check_ttl": self.store_check_ttl,
                "outbox_stuck_seconds": self.outbox_stuck_seconds,
                "expect_gpu": self.expect_gpu,
            },
        }
