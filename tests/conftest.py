"""Shared test fixtures: where ../shared lives, and skipping with a reason when it does not."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# The suite exercises the installed package (with its built C extension): `pytest` runs with
# --import-mode=importlib and the repository is only appended to sys.path, so `import engine`
# finds site-packages first and only `tests.*` helpers come from the checkout.
if str(REPO) not in sys.path:
    sys.path.append(str(REPO))
# Child interpreters the tests start (`python -c ...`) must not put their working directory (the
# checkout) in front of the installed package either.
os.environ["PYTHONSAFEPATH"] = "1"
# Tests press Ctrl-C (SIGINT) on the commands they start, as a terminal does. A suite started as a
# background job of a non-interactive shell inherits SIGINT ignored, and so would every command it
# starts (an ignored signal stays ignored across exec): give them the default a terminal gives.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
# ../shared beside the checkout, or $MALTRAIL_SHARED; MALTRAIL_SHARED=none runs the suite as a
# user's clone runs it, without the shared corpus (.ci/run does both). "none" points every shared
# path below /dev/null, where nothing can exist, so a test that looks for the corpus (need_shared
# or .exists()) behaves exactly as it does where the directory is absent.
SHARED_SETTING = os.environ.get("MALTRAIL_SHARED", "")
SHARED_DISABLED = SHARED_SETTING == "none"
SHARED = Path(os.devnull, "shared") if SHARED_DISABLED else Path(SHARED_SETTING or REPO.parent / "shared")
MALTRAIL_CORPUS = SHARED / "corpus" / "maltrail"
REAL_CORPUS = SHARED / "corpus" / "real"
SHARED_TRAILS = SHARED / "trails" / "maltrail-trails.csv.zst"


def need_shared(path: Path) -> Path:
    """Return `path`, or skip the calling test: ../shared is absent in a user's clone."""
    if SHARED_DISABLED:
        pytest.skip("needs the shared corpus; MALTRAIL_SHARED=none runs without it, as a user's clone does")
    if not path.exists():
        pytest.skip("needs %s (the shared corpus beside the project; absent in a user's clone)" % path)
    return path


@pytest.fixture
def maltrail_corpus() -> Path:
    return need_shared(MALTRAIL_CORPUS)


@pytest.fixture
def real_corpus() -> Path:
    return need_shared(REAL_CORPUS)


@contextlib.contextmanager
def pinned_tz(name: str):
    """Local time pinned to `name` (a POSIX TZ string) for the duration, then restored."""
    saved = os.environ.get("TZ")
    os.environ["TZ"] = name
    time.tzset()
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("TZ", None)
        else:
            os.environ["TZ"] = saved
        time.tzset()


def need_root():
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces and live capture)")


# Event lines are rendered in local time: pin it so nothing depends on the machine's zone.
os.environ["TZ"] = "UTC"
time.tzset()

# Fixtures shared by the server's tests: a real ClickHouse (one per session) and each store
# backend in turn as [server] lines.
from tests.clickhouse import clickhouse_server  # noqa: E402,F401
from tests.server_proc import backend_extra  # noqa: E402,F401


# -- CI's second run: only the tests ../shared can change ---------------------------------------
# .ci/run runs the whole suite with ../shared, then again without it (MALTRAIL_SHARED=none) to
# show that nothing depends on it unnoticed. A test can only notice through this module's names, a
# literal path to the shared directory, or the bench package (whose defaults look beside the
# checkout). With MALTRAIL_SHARED_SUBSET=1 the second run collects only the test modules holding
# a top-level definition (a test, a fixture, a helper, a constant) that mentions one of those, or
# uses a definition that does, here or imported from another test module; the others run exactly
# as in the first run. tests/test_layering.py holds the product packages to never naming the
# shared directory, so no test can reach it through them.
SHARED_MENTION = re.compile(
    r"\b(SHARED|SHARED_TRAILS|MALTRAIL_CORPUS|REAL_CORPUS|need_shared|maltrail_corpus|real_corpus)\b"
    r"""|\bbench\.\w|import bench\b|["']bench["']|["']\.\./shared|["']shared["']""")


def modules_shared_can_change(test_dir: Path = REPO / "tests") -> set[str]:
    import ast
    defs: dict[tuple[str, str], str] = {}           # (module, name) -> its source
    imports: dict[str, dict[str, tuple[str, str]]] = {}  # module -> {local name: (module, name)}
    for path in sorted(test_dir.glob("*.py")):
        if path.stem == "conftest":
            continue
        text = path.read_text(errors="replace")
        module, imported = path.stem, {}
        for node in ast.parse(text).body:
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tests."):
                for alias in node.names:
                    imported[alias.asname or alias.name] = (node.module.split(".", 1)[1], alias.name)
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                defs[(module, node.name)] = ast.get_source_segment(text, node) or ""
            elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.Expr)):
                targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
                names = [t.id for t in targets if isinstance(t, ast.Name)] or ["<module code %d>" % node.lineno]
                for name in names:
                    defs[(module, name)] = ast.get_source_segment(text, node) or ""
        imports[module] = imported
    touching = {key for key, source in defs.items() if SHARED_MENTION.search(source)}
    words = {key: set(re.findall(r"\w+", source)) for key, source in defs.items()}
    while True:
        more = set()
        for (module, name), used in words.items():
            if (module, name) in touching:
                continue
            local = any((module, w) in touching for w in used)
            foreign = any(imports[module].get(w) in touching for w in used)
            if local or foreign:
                more.add((module, name))
        if not more:
            return {module for module, _name in touching}
        touching |= more


def pytest_collection_modifyitems(config, items):
    if os.environ.get("MALTRAIL_SHARED_SUBSET") != "1":
        return
    keep = modules_shared_can_change()
    chosen, left = [], []
    for item in items:
        (chosen if Path(str(item.fspath)).stem in keep else left).append(item)
    if left:
        config.hook.pytest_deselected(items=left)
        items[:] = chosen
