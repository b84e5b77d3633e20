"""The parts import one way (ARCHITECTURE.md, "Parts"): cli over everything; engine -> workers ->
matchers; trailsdb -> matchers; server -> events, config, trailsdb, matchers (never engine or
workers); events and config are leaves both the sensor and the server use.

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
    # The server stands on the shared packages only: never the sensor's process model or packet path.
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


def test_no_product_module_knows_where_the_shared_corpus_lives():
    """Only the tests' helpers (tests/conftest.py) and the benchmarks look for ../shared: CI's
    second run (MALTRAIL_SHARED=none) leaves out the test modules that cannot reach it, which
    holds only while no product module can (tests/conftest.py modules_shared_can_change)."""
    from tests.conftest import SHARED_MENTION
    found = [str(p.relative_to(REPO)) for p in modules()
             if "MALTRAIL_SHARED" in p.read_text() or SHARED_MENTION.search(p.read_text().replace("bench.", ""))]
    assert found == []


def test_the_second_ci_run_keeps_every_module_that_can_reach_the_shared_corpus(tmp_path):
    """A module that names the shared corpus, or uses (directly or through an imported helper) a
    definition that does, is kept; one that does not is left out."""
    from tests.conftest import modules_shared_can_change
    (tmp_path / "helpers.py").write_text("from tests.conftest import SHARED_TRAILS\n\n"
                                         "def trails():\n    return SHARED_TRAILS\n\n"
                                         "def unrelated():\n    return 1\n")
    (tmp_path / "test_uses.py").write_text("from tests.helpers import trails\n\n"
                                           "def wrapped():\n    return trails()\n\n"
                                           "def test_a():\n    assert wrapped()\n")
    (tmp_path / "test_other.py").write_text("from tests.helpers import unrelated\n\n"
                                            "def test_b():\n    assert unrelated()\n")
    (tmp_path / "test_path.py").write_text("def test_c(tmp_path):\n    assert (tmp_path / '../shared').parent\n")
    (tmp_path / "test_bench_run.py").write_text("import subprocess\n\ndef test_d():\n"
                                                "    subprocess.run(['python', '-m', 'bench', 'trails'])\n")
    assert modules_shared_can_change(tmp_path) == {"helpers", "test_uses", "test_path", "test_bench_run"}
