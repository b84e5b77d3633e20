"""The parts import one way (ARCHITECTURE.md, "Parts"): cli over everything; engine -> workers ->
matchers; trailsdb -> matchers; events and config are leaves both the sensor and the server use.

Reads every module's imports (including function-local ones) with ast, so a shortcut taken deep
inside a function is caught too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PARTS = ("cli", "config", "events", "engine", "workers", "matchers", "trailsdb", "server")
ALLOWED = {
    "cli": {"cli", "config", "events", "engine", "trailsdb", "matchers", "server"},
    "config": {"config"},
    "events": {"events"},
    "engine": {"engine", "workers", "matchers", "trailsdb", "events", "config"},
    "workers": {"workers", "matchers", "events"},
    "matchers": {"matchers"},
    "trailsdb": {"trailsdb", "matchers"},
    # The server uses the shared event and config packages and the trail matchers, never the
    # sensor's process model or packet path.
    "server": {"server", "events", "config", "trailsdb", "matchers"},
}
# Modules on the packet path: they may load compiled artifacts but never import the compiler.
HOT_PATH = ("engine/inprocess.py", "engine/sources/live.py", "engine/sources/pcapfile.py", "events/log/__init__.py",
            "engine/transport/ring.py", "engine/transport/dispatch.py", "engine/transport/stager.py",
            "engine/processes/capture.py", "engine/processes/worker.py", "engine/processes/logwriter.py")


def imported_parts(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found.update(name.split(".")[0] for name in names if name.split(".")[0] in PARTS)
    return found


def modules():
    return [p for part in PARTS for p in sorted((REPO / part).rglob("*.py"))]


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(REPO)))
def test_imports_point_one_way(path):
    part = path.relative_to(REPO).parts[0]
    wrong = imported_parts(path) - ALLOWED[part]
    assert not wrong, "%s imports %s" % (path.relative_to(REPO), ", ".join(sorted(wrong)))


@pytest.mark.parametrize("name", HOT_PATH)
def test_packet_path_never_imports_the_trail_compiler(name):
    assert "trailsdb" not in imported_parts(REPO / name)


def test_every_module_says_what_it_owns():
    for path in modules():
        doc = ast.get_docstring(ast.parse(path.read_text()))
        assert doc and len(doc) > 20, "%s has no module docstring" % path.relative_to(REPO)
