"""The suite runs against the installed package, not the source tree (CI sets the flag)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(os.environ.get("MALTRAIL_TEST_INSTALLED") != "1",
                    reason="only meaningful where .ci/run installed the package (MALTRAIL_TEST_INSTALLED=1)")
def test_packages_and_c_extension_come_from_the_installation():
    import cli
    import config
    import engine
    import events
    import matchers
    import matchers._native
    import trailsdb
    import workers
    for module in (cli, config, engine, events, workers, matchers, trailsdb, matchers._native):
        path = Path(module.__file__).resolve()
        assert "site-packages" in path.parts and REPO / path.parts[-2] != path.parent, module.__file__
    assert matchers._native.__file__.endswith(".so")


@pytest.mark.skipif(os.environ.get("MALTRAIL_TEST_INSTALLED") != "1",
                    reason="only meaningful where .ci/run installed the package (MALTRAIL_TEST_INSTALLED=1)")
def test_every_module_of_the_checkout_is_installed():
    # A subpackage missing from setup.py's list installs nothing and only fails at import time.
    import engine
    site = Path(engine.__file__).resolve().parent.parent
    missing = [str(path.relative_to(REPO))
               for top in ("cli", "config", "events", "engine", "workers", "matchers", "trailsdb")
               for path in sorted((REPO / top).rglob("*.py"))
               if not (site / path.relative_to(REPO)).is_file()]
    assert missing == [], f"not installed (add their packages to setup.py): {missing}"
