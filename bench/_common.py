"""Small helpers shared by the benches: a foreign-CPU guard, interleaving, statistics, output.

Methodology (the design notes' `PERF.md`): the anchor and PodKit run in the same process,
interleaved round by round (the order rotates every round), and only ratios measured in the same
run are reported. Absolute numbers are printed for orientation only.

The guard approximates PERF.md's quiet-machine guard: "foreign" CPU is the CPU time
(``/proc/<pid>/stat``) that every process outside this process and its descendants (servers the
bench started included) used during the sample; processes that started and ended in between are
missed. Before each sample it waits (briefly) for a quiet machine; a sample whose foreign CPU
exceeds ``limit`` × wall × cores is thrown away and repeated, at most ``retries`` times. Every
sample's foreign fraction and the number of discarded samples go into the JSON line.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_HZ = os.sysconf("SC_CLK_TCK")
NCPU = os.cpu_count() or 1


def _proc_table() -> dict[int, tuple[int, int, int]]:
    """pid → (ppid, start time, utime+stime+cutime+cstime in ticks) for every readable process."""
    out: dict[int, tuple[int, int, int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                data = f.read()
        except OSError:
            continue
        rest = data[data.rfind(")") + 2 :].split()
        try:
            out[int(name)] = (int(rest[1]), int(rest[19]), sum(int(x) for x in rest[11:15]))
        except (IndexError, ValueError):
            continue
    return out


def process_cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system, every thread) that process ``pid`` has used so far: a cost
    that another process's load on the same cores disturbs far less than wall time."""
    with open(f"/proc/{pid}/stat") as f:
        rest = f.read().rsplit(")", 1)[1].split()
    return (int(rest[11]) + int(rest[12])) / _HZ


def _tree(table: dict[int, tuple[int, int, int]], roots: Iterable[int]) -> set[int]:
    """``roots`` and all their live descendants."""
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    seen: set[int] = set()
    todo = [r for r in roots if r in table]
    while todo:
        pid = todo.pop()
        if pid not in seen:
            seen.add(pid)
            todo.extend(children.get(pid, ()))
    return seen


Snapshot = tuple[float, dict[int, tuple[int, int, int]]]


@dataclass
class CpuGuard:
    """Measures CPU used outside this process tree while a sample runs (see the module doc)."""

    limit: float = 0.10
    retries: int = 2
    quiet_below: float = 0.05
    max_wait: float = 5.0
    wait_budget: float = 60.0  # total seconds a bench may spend waiting for quiet
    enabled: bool = True
    min_foreign_s: float = 0.03  # below this much foreign CPU a sample is kept (/proc has 10 ms ticks)
    extra_roots: list[int] = field(default_factory=list)
    discarded: int = 0

    def _roots(self) -> list[int]:
        return [os.getpid(), *self.extra_roots]

    def snapshot(self) -> Snapshot:
        return time.monotonic(), _proc_table()

    def foreign_fraction(self, snap: Snapshot) -> float:
        """CPU of processes outside this tree since ``snap``, as a fraction of wall time × cores."""
        seconds, wall = self.foreign(snap)
        return seconds / (wall * NCPU)

    def foreign(self, snap: Snapshot) -> tuple[float, float]:
        """(foreign CPU seconds, wall seconds) since ``snap``."""
        t0, before = snap
        t1, after = self.snapshot()
        ours = _tree(after, self._roots()) | _tree(before, self._roots())
        ticks = 0
        for pid, (_, start, cpu) in after.items():
            if pid in ours:
                continue
            old = before.get(pid)
            ticks += cpu - old[2] if old is not None and old[1] == start else cpu
        return max(0, ticks) / _HZ, max(t1 - t0, 1e-6)

    def wait_quiet(self) -> float:
        """Wait up to ``max_wait`` s for foreign load under ``quiet_below``; return the last reading."""
        if not self.enabled or self.wait_budget <= 0:
            return 0.0
        start = time.monotonic()
        deadline = start + min(self.max_wait, self.wait_budget)
        while True:
            snap = self.snapshot()
            time.sleep(0.25)
            frac = self.foreign_fraction(snap)
            if frac < self.quiet_below or time.monotonic() >= deadline:
                self.wait_budget -= time.monotonic() - start
                return frac

    def run(self, fn: Callable[[], Any]) -> tuple[Any, float]:
        """Run one sample under the guard; return (its result, its foreign CPU fraction)."""
        attempt = 0
        while True:
            self.wait_quiet()
            snap = self.snapshot()
            result = fn()
            seconds, wall = self.foreign(snap)
            frac = seconds / (wall * NCPU)
            quiet = frac <= self.limit or seconds < self.min_foreign_s
            if not self.enabled or quiet or attempt >= self.retries:
                return result, frac
            self.discarded += 1
            attempt += 1


def interleave(names: Sequence[str], rounds: int) -> Iterable[tuple[int, str]]:
    """(round, name) pairs; the order of ``names`` rotates every round."""
    for r in range(rounds):
        k = r % len(names)
        for name in [*names[k:], *names[:k]]:
            yield r, name


def stats(values: Sequence[float]) -> dict[str, float]:
    return {"min": min(values), "median": statistics.median(values), "n": len(values)}


def paired_ratio(a: Sequence[float], b: Sequence[float]) -> float:
    """Median over rounds of a[i] / b[i] (a and b measured in the same round)."""
    return statistics.median(x / y for x, y in zip(a, b, strict=True) if y)


def print_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    cells = [[str(h) for h in headers]] + [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    print(f"\n{title}")
    for i, row in enumerate(cells):
        print(
            "  "
            + "  ".join(
                c.rjust(w) if j else c.ljust(w) for j, (c, w) in enumerate(zip(row, widths, strict=True))
            )
        )
        if i == 0:
            print("  " + "  ".join("-" * w for w in widths))


def _fmt(value: object) -> str:
    if isinstance(value, float):
        if value == 0:
            return "0"
        if abs(value) >= 100:
            return f"{value:.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.3f}" if abs(value) < 1 else f"{value:.2f}"
    return str(value)


def emit_json(bench: str, data: Mapping[str, Any], path: str | None) -> None:
    """Print the one JSON line that ends every bench (and write it to ``path`` when given)."""
    record = {"bench": bench, "time": time.strftime("%Y-%m-%dT%H:%M:%S"), **data}
    line = json.dumps(record, sort_keys=False, default=str)
    if path:
        Path(path).write_text(line + "\n")
    print(line)
