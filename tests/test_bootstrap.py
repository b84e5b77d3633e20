"""bootstrap.sh, run for real: it says what it does, one line per step, and is safe to run again.

It reinstalls the package into the checkout's .venv from the checkout (what the README's test
command does before the tests), so it only runs where the suite itself runs from that .venv.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO


@pytest.mark.slow
def test_bootstrap_says_what_it_does_one_line_per_step():
    if Path(sys.prefix).resolve() != (REPO / ".venv").resolve():
        pytest.skip("runs bootstrap.sh only where the suite runs from the checkout's own .venv (it reinstalls there)")
    if shutil.which("dpkg-query") is None:
        pytest.skip("bootstrap.sh is for Debian (dpkg-query)")
    done = subprocess.run(["./bootstrap.sh"], cwd=REPO, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert all(line.startswith("bootstrap") for line in lines), lines  # the tools' own chatter stays out
    steps = [line for line in lines if line.startswith("bootstrap [")]
    assert [line.split("]")[0] + "]" for line in steps] == ["bootstrap [%d/5]" % i for i in range(1, 6)], lines
    for line, topic in zip(steps, ("system packages", "virtualenv", "pip", "maltrail-engine", "C extensions")):
        assert line.split("] ", 1)[1].startswith(topic), line
    assert lines[-1].startswith("bootstrap: ready") and len(lines) == 6
    # and what it set up works: the installed command runs
    assert subprocess.run([str(REPO / ".venv" / "bin" / "maltrail-engine"), "--version"], capture_output=True,
                          timeout=60).returncode == 0
