"""Reporting for the tests/comfy tier: which tests run where, CI's skip → failure rule, server logs
in failure reports, and the per-installation time summary. The conftest's pytest hooks call these.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import pytest
from support.comfy_server import ComfyServer
from support.comfy_trees import ComfyInstall, in_ci

NEWEST_FRONTEND = "frontend-newest"


def newest_frontend_elsewhere(
    items: Sequence[pytest.Item], installs: Sequence[ComfyInstall]
) -> list[pytest.Item]:
    """The items to deselect: the newest frontend release runs against the newest ComfyUI only (the
    oldest keeps its own pinned frontend), so those combinations are left out, not skipped."""
    if not installs:
        return []
    newest = installs[-1].id
    return [i for i in items if NEWEST_FRONTEND in i.nodeid and newest not in i.nodeid]


def fail_skips_in_ci(report: pytest.TestReport) -> None:
    """CI proves the real host: a comfy test that excuses itself is a failure, with its reason."""
    if report.skipped and in_ci() and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped in CI, where the comfy tier must run: {reason}"


def attach_logs(report: pytest.TestReport, servers: Sequence[ComfyServer]) -> None:
    """Put the log tail of each running server in a failure report."""
    for srv in list(servers):
        report.sections.append((f"ComfyUI log ({srv.name}, {srv.url})", srv.log_tail(80)))


class TierTimes:
    """Seconds (setup+call+teardown) and tests per installation, found by the id in the node id."""

    def __init__(self, installs: Sequence[ComfyInstall]) -> None:
        self.installs = list(installs)
        self.spent: dict[str, list[float]] = {}  # installation id -> [seconds, tests]

    def add(self, report: pytest.TestReport) -> None:
        for install in self.installs:
            if re.search(rf"[\[-]{re.escape(install.id)}[\]-]", report.nodeid):
                spent = self.spent.setdefault(install.id, [0.0, 0])
                spent[0] += report.duration
                spent[1] += report.when == "call"

    def lines(self) -> list[str]:
        return [
            f"comfy tier on {iid}: {tests} tests, {seconds:.0f} s"
            for iid, (seconds, tests) in self.spent.items()
        ]


def summary_lines(times: TierTimes, failed: Sequence[str], servers: Sequence[ComfyServer]) -> list[str]:
    """The terminal summary: time per installation, then where the server logs are when a test failed."""
    out = times.lines()
    if failed and servers:
        out.append("ComfyUI server logs (kept with pytest's temp dirs):")
        out += [f"  {srv.name}: {srv.log_path}" for srv in servers]
    return out
