"""Shared test fixtures: where ../shared lives, and skipping with a reason when it does not."""

from __future__ import annotations

import contextlib
import os
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
