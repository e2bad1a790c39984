"""The performance monitor: generation records from execution events, kept in the state database.

:class:`Monitor` is fed ComfyUI's execution events (by the host adapter, or by tests replaying a
recorded sequence), builds one record per prompt with :class:`~podkit.core.metrics.PromptRecorder`,
adds the resource peaks of a :class:`ResourceProbe`, stores it with retention, counts it for
Prometheus and announces it as a ``podkit.generation`` event. Its history is what the time-budget
presets learn seconds-per-step from.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

from ..core.events import Notifier
from ..core.metrics import GenerationRecord, NodeTiming, PromptRecorder, with_resources
from ..core.metrics_report import build_report
from ..core.prometheus import Family, MetricsCounters
from ..core.speed import MAX_SAMPLES, Evaluations, SpeedModel, SpeedSample, evaluations_by_name, speed_samples
from .state_db import StateDB

logger = logging.getLogger(__name__)

METRICS_MIGRATIONS: dict[int, str] = {
    1: """
    CREATE TABLE IF NOT EXISTS generations (
        prompt_id TEXT PRIMARY KEY,
        started REAL NOT NULL,
        wall_s REAL NOT NULL,
        status TEXT NOT NULL,
        family TEXT,
        width INTEGER,
        height INTEGER,
        steps INTEGER,
        sampler TEXT,
        tier TEXT,
        predicted_s REAL,
        vram_peak INTEGER,
        vram_total INTEGER,
        ram_peak INTEGER,
        error TEXT,
        nodes TEXT NOT NULL
    );
    CREATE INDEX IF NOT EXISTS generations_started ON generations(started);
    """,
    # what the speed model reads beyond the first version: batch, cold and disturbed runs, and
    # its sampler prediction
    2: """
    ALTER TABLE generations ADD COLUMN batch INTEGER;
    ALTER TABLE generations ADD COLUMN predicted_sampler_s REAL;
    ALTER TABLE generations ADD COLUMN estimating INTEGER;
    ALTER TABLE generations ADD COLUMN cold INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE generations ADD COLUMN foreign_cpu REAL;
    """,
}

_COLUMNS = (
    "prompt_id, started, wall_s, status, family, width, height, steps, sampler, tier, predicted_s, "
    "vram_peak, vram_total, ram_peak, error, nodes, batch, predicted_sampler_s, estimating, cold, foreign_cpu"
)
#: Hard cap on stored records, whatever the retention (a busy API pod makes thousands a day).
MAX_ROWS = 50_000


def _opt_int(v: object) -> int | None:
    return None if v is None else int(v)  # type: ignore[call-overload]


def _opt_float(v: object) -> float | None:
    return None if v is None else float(v)  # type: ignore[arg-type]


def _opt_str(v: object) -> str | None:
    return None if v is None else str(v)


class MetricsStore:
    """Generation records in the state database (component ``metrics``)."""

    def __init__(self, db: StateDB) -> None:
        self.db = db
        db.ensure_schema("metrics", METRICS_MIGRATIONS)

    def add(self, r: GenerationRecord) -> None:
        nodes = json.dumps([[n.node_id, n.class_type, n.seconds, n.cached] for n in r.nodes])
        values = (
            r.prompt_id, r.started, r.wall_s, r.status, r.family, r.width, r.height, r.steps, r.sampler,
            r.tier, r.predicted_s, r.vram_peak, r.vram_total, r.ram_peak, r.error, nodes,
            r.batch, r.predicted_sampler_s, None if r.estimating is None else int(r.estimating), int(r.cold),
            r.foreign_cpu,
        )  # fmt: skip
        with self.db.transaction() as c:
            c.execute(
                f"INSERT OR REPLACE INTO generations ({_COLUMNS}) VALUES ({', '.join('?' * 21)})",  # noqa: S608
                values,
            )

    def since(self, started_after: float, limit: int = 10_000) -> list[GenerationRecord]:
        """Records started after ``started_after`` (epoch), newest first."""
        rows = self.db.query(
            f"SELECT {_COLUMNS} FROM generations WHERE started > ? ORDER BY started DESC LIMIT ?",  # noqa: S608
            (started_after, limit),
        )
        return [self._record(row) for row in rows]

    def speed_samples(self, limit: int = MAX_SAMPLES) -> list[SpeedSample]:
        """What the speed model learns from the newest successful generations of known family."""
        rows = self.db.query(
            f"SELECT {_COLUMNS} FROM generations WHERE status='success' AND family IS NOT NULL "  # noqa: S608
            "AND steps IS NOT NULL AND width IS NOT NULL ORDER BY started DESC LIMIT ?",
            (limit,),
        )
        return speed_samples(self._record(r) for r in rows)

    def prune(self, older_than: float, max_rows: int = MAX_ROWS) -> int:
        """Delete records started before ``older_than`` and all but the newest ``max_rows``."""
        with self.db.transaction() as c:
            n = c.execute("DELETE FROM generations WHERE started < ?", (older_than,)).rowcount
            n += c.execute(
                "DELETE FROM generations WHERE prompt_id IN (SELECT prompt_id FROM generations "
                "ORDER BY started DESC LIMIT -1 OFFSET ?)",
                (max_rows,),
            ).rowcount
        return int(n)

    @staticmethod
    def _record(r: Sequence[object]) -> GenerationRecord:
        nodes = tuple(
            NodeTiming(str(n[0]), str(n[1]), float(n[2]), bool(n[3])) for n in json.loads(str(r[15]))
        )
        return GenerationRecord(
            prompt_id=str(r[0]),
            started=float(r[1]),  # type: ignore[arg-type]
            wall_s=float(r[2]),  # type: ignore[arg-type]
            status=str(r[3]),
            family=_opt_str(r[4]),
            width=_opt_int(r[5]),
            height=_opt_int(r[6]),
            steps=_opt_int(r[7]),
            sampler=_opt_str(r[8]),
            tier=_opt_str(r[9]),
            predicted_s=_opt_float(r[10]),
            vram_peak=_opt_int(r[11]),
            vram_total=_opt_int(r[12]),
            ram_peak=_opt_int(r[13]),
            error=_opt_str(r[14]),
            nodes=nodes,
            batch=_opt_int(r[16]),
            predicted_sampler_s=_opt_float(r[17]),
            estimating=None if r[18] is None else bool(r[18]),
            cold=bool(r[19]),
            foreign_cpu=_opt_float(r[20]),
        )


class ResourceProbe(Protocol):
    def reset(self) -> None:
        """Start measuring peaks for a new prompt."""
        ...

    def peaks(self) -> tuple[int | None, int | None, int | None]:
        """(VRAM peak, VRAM total, RAM peak) in bytes since :meth:`reset`; None when unknown."""
        ...


class RssProbe:
    """Peak resident memory of this process per prompt.

    On Linux, writing ``5`` to ``/proc/self/clear_refs`` resets the kernel's high-water mark
    (``VmHWM``), so the peak is exact and costs nothing while the prompt runs. Elsewhere it falls back
    to ``getrusage``'s lifetime maximum.
    """

    def __init__(self, proc: Path = Path("/proc/self")) -> None:
        self.proc = proc
        self._resettable = True

    def reset(self) -> None:
        if not self._resettable:
            return
        try:
            (self.proc / "clear_refs").write_text("5")
        except OSError:
            self._resettable = False

    def peak(self) -> int | None:
        if self._resettable:
            try:
                for line in (self.proc / "status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) * 1024
            except (OSError, ValueError, IndexError):
                pass
        maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(maxrss if sys.platform == "darwin" else maxrss * 1024)

    def peaks(self) -> tuple[int | None, int | None, int | None]:
        return None, None, self.peak()


class ForeignCpu:
    """The share of the machine's CPU that other processes used while a prompt ran.

    From the kernel's CPU counters (``/proc/stat``) minus this process's own CPU time, as a fraction
    of wall time × CPUs: the speed model keeps runs that shared the machine with busy neighbours
    out of its fit. None where ``/proc/stat`` cannot be read.
    """

    def __init__(self, stat: Path = Path("/proc/stat"), clock: Callable[[], float] = time.monotonic) -> None:
        self.stat = stat
        self.clock = clock
        self._start: tuple[float, float, float] | None = None

    def _read(self) -> tuple[float, float, float] | None:
        """(busy CPU seconds of the machine, of this process, clock)."""
        try:
            ticks = [int(v) for v in self.stat.read_text().split("\n", 1)[0].split()[1:9]]
        except (OSError, ValueError):
            return None
        if len(ticks) < 8:
            return None
        busy = sum(ticks) - ticks[3] - ticks[4]  # all but idle and iowait (steal included)
        own = os.times()
        return busy / _CLK_TCK, own.user + own.system + own.children_user + own.children_system, self.clock()

    def reset(self) -> None:
        self._start = self._read()

    def share(self) -> float | None:
        start, end = self._start, self._read()
        if start is None or end is None or end[2] <= start[2]:
            return None
        foreign = (end[0] - start[0]) - (end[1] - start[1])
        return max(0.0, foreign) / ((end[2] - start[2]) * (os.cpu_count() or 1))


_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


class Monitor:
    """Execution events in, generation records out (stored, counted, announced)."""

    def __init__(
        self,
        store: MetricsStore,
        notifier: Notifier,
        *,
        retention_days: int = 30,
        probe: ResourceProbe | None = None,
        cpu: ForeignCpu | None = None,
        graphs: Callable[[str], Mapping[str, Any] | None] = lambda _pid: None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.notifier = notifier
        self.retention_s = retention_days * 86400.0
        self.probe: ResourceProbe = probe or RssProbe()
        self.cpu = cpu or ForeignCpu()
        self.wall = wall
        self.recorder = PromptRecorder(graphs, clock=clock, wall=wall)
        self.counters = MetricsCounters()
        self._speed: SpeedModel | None = None
        self._speed_lock = threading.Lock()
        self._sampled = False  # a sampler ran in this process (the first such run is cold)
        self._last_prune = 0.0

    def set_graphs(self, graphs: Callable[[str], Mapping[str, Any] | None]) -> None:
        self.recorder.graphs = graphs

    def start(self) -> None:
        self.prune()

    def on_event(self, event: str, data: object) -> GenerationRecord | None:
        """Feed one host event (never raises: the host's event path must not break)."""
        try:
            return self._on_event(event, data)
        except Exception:
            logger.warning("PodKit monitor: could not handle event %s", event, exc_info=True)
            return None

    def _on_event(self, event: str, data: object) -> GenerationRecord | None:
        if not isinstance(data, Mapping):
            return None
        if event == "execution_start":
            self.probe.reset()
            self.cpu.reset()
        record = self.recorder.on_event(event, data)
        if record is None:
            return None
        vram, vram_total, ram = self.probe.peaks()
        record = with_resources(record, vram_peak=vram, vram_total=vram_total, ram_peak=ram)
        record = replace(record, foreign_cpu=self.cpu.share())
        if not self._sampled and record.seconds_of("sampler") > 0:
            self._sampled = True
            record = replace(record, cold=True)
        self.store.add(record)
        self.counters.add(record)
        with self._speed_lock:
            self._speed = None
        if self.wall() - self._last_prune > 3600:
            self.prune()
        self.notifier.emit("podkit.generation", record.to_wire())
        return record

    def annotate(self, node_id: str | None = None, **info: Any) -> bool:
        """Attach preset details (tier, predicted_s, family, ...) to the running prompt's record."""
        return self.recorder.annotate(node_id=node_id, **info)

    def prune(self) -> int:
        self._last_prune = self.wall()
        return self.store.prune(self.wall() - self.retention_s)

    def report(self, hours: float) -> dict[str, Any]:
        return build_report(self.store.since(self.wall() - hours * 3600), hours)

    def prometheus(
        self, gauges: Mapping[str, tuple[str, float | None]] | None = None, families: Sequence[Family] = ()
    ) -> str:
        return self.counters.render(gauges or {}, families)

    def speed_model(self, evaluations: Evaluations = evaluations_by_name) -> SpeedModel:
        """What the budget chooser predicts with: this machine's measured generations.

        ``evaluations``: model calls per sampler and step count (the node layer counts them with
        ComfyUI's samplers); the model is rebuilt when a record arrives or this changes.
        """
        with self._speed_lock:
            if self._speed is None or self._speed.evaluations is not evaluations:
                self._speed = SpeedModel(self.store.speed_samples(), evaluations)
            return self._speed
