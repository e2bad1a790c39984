"""The idle stop's rules: busy reasons, the warning window, acting."""

from __future__ import annotations

from podkit.core.idle import Activity, IdlePolicy, evaluate

POLICY = IdlePolicy(idle_minutes=1, warn_seconds=20)


def test_off_busy_idle_warning_acting() -> None:
    assert evaluate(IdlePolicy(), Activity(), 0, 500).phase == "off"
    busy = evaluate(POLICY, Activity(queue=1, uploads=2), 0, 500)
    assert busy.phase == "busy" and busy.busy == (
        "1 prompt(s) in ComfyUI's queue",
        "2 upload(s) waiting for the store",
    )
    assert evaluate(POLICY, Activity(), 100, 130).phase == "idle"
    warning = evaluate(POLICY, Activity(), 100, 145)
    assert (
        warning.phase == "warning"
        and warning.act_in_seconds == 15
        and "stops the pod in 15 s" in warning.message
    )
    assert evaluate(POLICY, Activity(), 100, 160).phase == "acting"
