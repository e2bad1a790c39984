"""The one error tree: core/errors.py's drawing is the tree, and routes' errors are declared there."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from podkit.core import errors

ROOT = Path(__file__).resolve().parents[2]
#: ``├── Name (status, StdlibBase)   note`` (the root line has no branch)
LINE = re.compile(r"^(?P<indent>[ │├└─]*)(?P<name>\w+) \((?P<status>\d{3})(?:, (?P<extra>\w+))?\)")
#: Folders whose code a route calls: an error they raise belongs to the tree in core/errors.py.
ROUTE_REACHABLE = ("core", "backends", "server_routes", "services.py")
#: Rules only the serverless worker uses: their errors answer a RunPod job, never a route.
WORKER_ONLY = {"core/templates.py"}


def drawn_tree() -> list[tuple[str, int, str | None, str | None]]:
    """(name, status, parent, stdlib base) for each line of the module docstring's drawing."""
    doc = errors.__doc__ or ""
    rows: list[tuple[str, int, str | None, str | None]] = []
    stack: list[tuple[int, str]] = []
    for line in doc.split("::", 1)[1].splitlines():
        m = LINE.match(line.strip("\n")[4:]) if line.strip() else None
        if m is None:
            continue
        depth = len(m["indent"]) // 4
        while stack and stack[-1][0] >= depth:
            stack.pop()
        rows.append((m["name"], int(m["status"]), stack[-1][1] if stack else None, m["extra"]))
        stack.append((depth, m["name"]))
    return rows


def tree_classes() -> dict[str, type[errors.PodKitError]]:
    return {
        name: value
        for name, value in vars(errors).items()
        if isinstance(value, type) and issubclass(value, errors.PodKitError)
    }


def test_the_drawing_is_the_tree() -> None:
    rows = drawn_tree()
    classes = tree_classes()
    assert [r[0] for r in rows if r[2] is None] == ["PodKitError"]
    assert {r[0] for r in rows} == set(classes), "draw every class of core/errors.py, and only those"
    for name, status, parent, extra in rows:
        cls = classes[name]
        assert cls.http_status == status, name
        if parent is not None:
            tree_bases = [b.__name__ for b in cls.__bases__ if issubclass(b, errors.PodKitError)]
            assert tree_bases == [parent], name
            others = [b.__name__ for b in cls.__bases__ if not issubclass(b, errors.PodKitError)]
            assert others == ([extra] if extra else []), name


def test_wire_codes_are_unique() -> None:
    codes = [cls.code for cls in tree_classes().values()]
    assert len(codes) == len(set(codes))


def _defined_errors(path: Path) -> list[str]:
    names = set(tree_classes())
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [
        node.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ClassDef)
        and any(isinstance(b, ast.Name) and b.id in names for b in node.bases)
    ]


@pytest.mark.parametrize("area", ROUTE_REACHABLE)
def test_no_error_class_outside_the_tree(area: str) -> None:
    """A route's error declared beside its handler or service would be outside the drawn tree."""
    root = ROOT / area
    files = [root] if root.is_file() else sorted(root.rglob("*.py"))
    found = {
        f"{path.relative_to(ROOT)}: {name}"
        for path in files
        if str(path.relative_to(ROOT)) not in {"core/errors.py", *WORKER_ONLY}
        for name in _defined_errors(path)
    }
    assert not found


def test_moved_errors_stay_importable_where_they_are_used() -> None:
    from podkit.backends.sources import XetOnly

    assert XetOnly is errors.XetOnly and XetOnly("x").to_wire() == {"error": "xet_only", "message": "x"}
    assert errors.DecodeMemoryError.http_status == 507 and issubclass(errors.DecodeMemoryError, MemoryError)
    assert issubclass(errors.UnsupportedVAE, TypeError)
