"""The monitor on a real SQLite state database: recorded event sequences → stored records, the
``podkit.generation`` event, retention, a restart, the speed model the presets learn from."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from podkit.backends.monitor import MetricsStore, Monitor, RssProbe
from podkit.backends.state_db import StateDB
from podkit.core.events import RecordingNotifier
from podkit.core.presets import Family
from tests.support.metrics_support import GRAPH, Clock, run_events


class FixedProbe:
    """A resource probe with known peaks (the host's CUDA probe needs a GPU)."""

    def __init__(self) -> None:
        self.resets = 0

    def reset(self) -> None:
        self.resets += 1

    def peaks(self) -> tuple[int | None, int | None, int | None]:
        return 3 * 2**30, 8 * 2**30, 5 * 2**30


class Env:
    def __init__(self, path: Path, *, retention_days: int = 30) -> None:
        self.clock = Clock()
        self.now = 1_000_000.0
        self.db = StateDB(path)
        self.notifier = RecordingNotifier()
        self.probe = FixedProbe()
        self.monitor = Monitor(
            MetricsStore(self.db),
            self.notifier,
            retention_days=retention_days,
            probe=self.probe,
            graphs=lambda pid: GRAPH,
            clock=self.clock,
            wall=lambda: self.now,
        )

    def run(self, pid: str, timings: list[tuple[str, float]], cached: list[str] | None = None, **kw: Any):
        record = None
        for t, event, data in run_events(pid, cached or [], timings, **kw):
            self.clock.t = t
            record = self.monitor.on_event(event, data) or record
        return record


TIMINGS = [("1", 1.0), ("3", 0.1), ("4", 0.1), ("5", 0.1), ("6", 4.0), ("7", 0.5), ("8", 0.2)]


def test_event_sequences_become_stored_records_and_events(tmp_path: Path) -> None:
    env = Env(tmp_path / "state.sqlite3")
    try:
        record = env.run("p1", TIMINGS)
        assert record is not None and env.probe.resets == 1
        assert (record.vram_peak, record.vram_total, record.ram_peak) == (3 * 2**30, 8 * 2**30, 5 * 2**30)
        stored = env.monitor.store.since(0)
        assert stored == [record]
        events = env.notifier.of("podkit.generation")
        assert len(events) == 1 and events[0]["prompt_id"] == "p1"
        assert events[0]["nodes"][4] == {
            "node_id": "6",
            "class_type": "KSampler",
            "seconds": 4.0,
            "cached": False,
        }
        report = env.monitor.report(24)
        assert report["count"] == 1 and report["recent"][0]["wall_s"] == pytest.approx(6.0)
        assert "podkit_generations_total" in env.monitor.prometheus()
        # garbage from the host never raises into the executor's event path
        assert env.monitor.on_event("execution_start", None) is None
        assert env.monitor.on_event("executing", {"node": object(), "prompt_id": 5}) is None
    finally:
        env.db.close()


def test_retention_and_row_cap(tmp_path: Path) -> None:
    env = Env(tmp_path / "state.sqlite3", retention_days=2)
    try:
        env.run("old", TIMINGS)
        env.now += 3 * 86400
        env.run("new", TIMINGS)  # an hour past the last prune: pruning runs after this record
        assert [r.prompt_id for r in env.monitor.store.since(0)] == ["new"]
        for i in range(5):
            env.now += 1
            env.run(f"n{i}", TIMINGS)
        assert env.monitor.store.prune(0, max_rows=3) == 3
        assert [r.prompt_id for r in env.monitor.store.since(0)] == ["n4", "n3", "n2"]
        # the report window
        assert env.monitor.report(1)["count"] == 3
        env.now += 2 * 3600
        assert env.monitor.report(1)["count"] == 0
    finally:
        env.db.close()


def test_history_survives_a_restart_and_feeds_the_speed_model(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    env = Env(path)
    try:
        assert (
            env.monitor.speed_model().predict(Family.SD15, 256, 192, 4).basis.endswith("conservative default")
        )
        env.run("no-family", TIMINGS)  # family unknown: not a speed sample
        assert env.monitor.speed_model().samples == []
        for pid in ("a", "b"):
            for t, event, data in run_events(pid, [], TIMINGS):
                env.clock.t = t
                env.monitor.on_event(event, data)
                if event == "execution_cached":
                    env.monitor.annotate(node_id="6", family="sd15", tier="standard", predicted_s=5.0)
        samples = env.monitor.speed_model().samples
        assert len(samples) == 2 and samples[0].family is Family.SD15
        assert samples[0].s_per_step_mp == pytest.approx(4.0 / 4 / (256 * 192 / 1e6))
    finally:
        env.db.close()

    env = Env(path)  # a new process on the same state folder
    try:
        assert {r.prompt_id for r in env.monitor.store.since(0)} == {"no-family", "a", "b"}
        pred = env.monitor.speed_model().predict(Family.SD15, 256, 192, 8)
        assert pred.seconds == pytest.approx(2.0 + 8.0)  # overhead 6-4 s, 1 s per step measured
        assert "measured 2 sd15" in pred.basis
        report = env.monitor.report(24)
        assert report["prediction"]["count"] == 2
        assert report["recent"][0]["tier"] == "standard"
        # counters are per process (Prometheus counters reset on restart)
        assert 'podkit_generations_total{status="success"} 0' in env.monitor.prometheus()
    finally:
        env.db.close()


def test_rss_probe_measures_a_peak_since_reset(tmp_path: Path) -> None:
    probe = RssProbe()
    probe.reset()
    before = probe.peak()
    assert before is not None and before > 0
    block = bytearray(64 * 2**20)
    for i in range(0, len(block), 4096):  # touch every page so it is resident
        block[i] = 1
    after = probe.peak()
    assert after is not None and after >= before + 32 * 2**20
    del block
    _, _, ram = probe.peaks()
    assert ram is not None and ram >= after - 2**20

    # without /proc the lifetime maximum from getrusage stands in
    fallback = RssProbe(proc=tmp_path / "no-proc")
    fallback.reset()
    value = fallback.peak()
    assert value is not None and value > 0
