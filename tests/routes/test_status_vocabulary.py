"""Job status vocabularies are declared once per kind and agree everywhere they are repeated.

The Python constants (core/outbox.py, core/download_job.py, core/training.py) == the OpenAPI enums
the routes publish == the sets the panel's pure modules (js/panel/state.js, format.js) decide with.
A status added on one side only fails here instead of leaving a job stuck in the wrong panel list.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from podkit.core import download_job, outbox, training
from podkit.server_routes.contract import build_document

ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = build_document("test")["components"]["schemas"]
JS_SET = re.compile(r"^(?:export )?const (\w+) = new Set\(\[([^\]]*)\]\);", re.M)
JS_STATUS_LITERAL = re.compile(r"\.status [!=]== \"(\w+)\"")


def js_sets(*files: str) -> dict[str, set[str]]:
    """``const NAME = new Set([...])`` of the panel's modules, spreads (``...OTHER``) expanded."""
    sets: dict[str, set[str]] = {}
    for name in files:
        text = (ROOT / "js" / "panel" / name).read_text(encoding="utf-8")
        for const, body in JS_SET.findall(text):
            values: set[str] = set()
            for item in (part.strip() for part in body.split(",") if part.strip()):
                if item.startswith("..."):
                    values |= sets[item[3:]]
                else:
                    values.add(re.fullmatch(r"\"(\w+)\"", item)[1])  # type: ignore[index]
            sets[const] = values
    return sets


JS = js_sets("state.js", "format.js")


@pytest.mark.parametrize(
    ("schema", "statuses"),
    [
        ("OutboxStatus", outbox.STATUSES),
        ("DownloadStatus", download_job.STATUSES),
        ("TrainingStatus", training.STATUSES),
    ],
)
def test_openapi_enums_are_the_declared_statuses(schema: str, statuses: tuple[str, ...]) -> None:
    assert SCHEMAS[schema]["enum"] == list(statuses)


@pytest.mark.parametrize(
    ("where", "schema"),
    [
        (("OutboxItem", "properties", "status"), "OutboxStatus"),
        (("OutboxCounts", "propertyNames"), "OutboxStatus"),
        (("DownloadJob", "properties", "status"), "DownloadStatus"),
        (("DownloadCounts", "propertyNames"), "DownloadStatus"),
        (("TrainingJob", "properties", "status"), "TrainingStatus"),
        (("TrainingJobDetail", "properties", "status"), "TrainingStatus"),
    ],
)
def test_records_and_counts_use_the_enums(where: tuple[str, ...], schema: str) -> None:
    node = SCHEMAS
    for key in where:
        node = node[key]
    assert node == {"$ref": f"#/components/schemas/{schema}"}


def test_the_panel_sets_match_the_services() -> None:
    download_all, training_all = set(download_job.STATUSES), set(training.STATUSES)
    assert JS["DOWNLOAD_ACTIVE"] == download_job.ACTIVE
    assert JS["DOWNLOAD_OPEN"] == download_all - download_job.FINISHED  # active or paused (resumable)
    training_open = training_all - set(training.FINISHED_STATUSES)
    assert JS["TRAINING_ACTIVE"] == set(training.ACTIVE_STATUSES) == training_open
    assert JS["TERMINAL"] == download_job.FINISHED == set(training.FINISHED_STATUSES)
    assert JS["TERMINAL_TRAINING"] == set(training.FINISHED_STATUSES)
    # every upload but a finished one is worth showing: a failed one waits for a retry
    assert JS["OUTBOX_OPEN"] == set(outbox.STATUSES) - {"done"}


def test_status_literals_in_the_panel_are_declared() -> None:
    declared = set(outbox.STATUSES) | set(download_job.STATUSES) | set(training.STATUSES)
    text = (ROOT / "js" / "panel" / "state.js").read_text(encoding="utf-8")
    literals = set(JS_STATUS_LITERAL.findall(text))
    assert literals and literals <= declared
