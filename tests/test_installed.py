"""The suite runs against the installed package, not the source tree (CI sets the flag)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(os.environ.get("MALTRAIL_TEST_INSTALLED") != "1",
                    reason="only meaningful where .ci/run installed the package (MALTRAIL_TEST_INSTALLED=1)")
def test_packages_and_c_extension_come_from_the_installation():
    import engine
    import matchers
    import matchers._native
    import trailsdb
    import workers
    for module in (engine, workers, matchers, trailsdb, matchers._native):
        path = Path(module.__file__).resolve()
        assert "site-packages" in path.parts and REPO / path.parts[-2] != path.parent, module.__file__
    assert matchers._native.__file__.endswith(".so")
