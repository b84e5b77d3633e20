"""A real browser for the UI tests: Playwright for Python driving Debian's `chromium`.

`browser` (module scope) launches the system's chromium through `executable_path` (found with
shutil.which), headless, with --no-sandbox when running as root (chromium refuses root without
it). Nothing here ever runs `playwright install`: that downloads a browser build of Playwright's
own and fails offline; bootstrap.sh installs Debian's package instead. Without chromium or the
playwright package the UI tests skip with the reason.

`watched(page, expected)` collects everything the page says on its console and every uncaught
page error; `check()` fails on any of them. The only lines let through are the browser's own
"Failed to load resource" notes for API answers the test declares expected (`expected(url,
status)`: 401 before login, a filter the server refuses, ...): the browser writes
those for every non-2xx fetch, whatever the page does with the answer; the app itself writes
nothing to the console.

`shots` (session scope) is a temporary directory for the screenshots of each view; its path is
printed on the terminal so a reviewer can open them. They are never committed.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium")
_NETWORK_NOTE = re.compile(r"Failed to load resource: the server responded with a status of (\d+)")


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs the playwright package (bootstrap.sh installs it)")
    if CHROMIUM is None:
        pytest.skip("needs Debian's chromium on PATH (apt-get install chromium; bootstrap.sh installs it)")
    args = ["--no-sandbox"] if os.geteuid() == 0 else []
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=args)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="session")
def shots(request, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("ui-screenshots")
    line = "screenshots of the UI views: %s" % folder
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():     # shown even while output is captured
            reporter.write_line("\n" + line)
    else:
        print(line)
    return folder


class Watched:
    """A page whose console and page errors are collected (module docstring)."""

    def __init__(self, page, expected, shots: Path | None = None):
        self.page = page
        self.expected = expected
        self.shots = shots
        self.problems: list[str] = []
        self.refusals: list[tuple[str, int]] = []
        self.also: list = []        # more expected(url, status) a test adds for what it provokes
        page.on("console", self._console)
        page.on("pageerror", lambda exc: self.problems.append("page error: %s" % exc))

    def _console(self, msg) -> None:
        text = msg.text
        url = (msg.location or {}).get("url", "")
        m = _NETWORK_NOTE.match(text)
        if m and msg.type == "error" and any(f(url, int(m.group(1))) for f in [self.expected] + self.also):
            self.refusals.append((url, int(m.group(1))))
            return
        self.problems.append("console %s: %s (%s)" % (msg.type, text, url))

    def check(self) -> None:
        assert not self.problems, "the page wrote to its console or raised:\n" + "\n".join(self.problems)

    def shot(self, name: str, full_page: bool = True) -> Path | None:
        if self.shots is None:
            return None
        path = self.shots / ("%s.png" % name)
        self.page.screenshot(path=str(path), full_page=full_page)
        return path

    # -- waiting on the app's own signal -------------------------------------------------------

    def ready(self, timeout_ms: int = 30_000) -> None:
        """Wait until the app says every panel of its view has its answer."""
        self.page.wait_for_selector("html[data-state=ready]", state="attached", timeout=timeout_ms)

    def stale(self) -> None:
        """Mark the state before an action that starts a new load, so ready() cannot see the
        previous view's "ready" (a hash change is handled a moment after it is made)."""
        self.page.evaluate("() => { document.documentElement.dataset.state = 'stale'; }")

    def go(self, hash_text: str) -> None:
        """Show the view of `hash_text` ("#/sensors") and wait for it (at once if it is shown)."""
        self.page.evaluate("""(h) => {
            if (window.location.hash === h) return;
            document.documentElement.dataset.state = "stale";
            window.location.hash = h;
        }""", hash_text)
        self.ready()

    def act(self, fn) -> None:
        """Do something that makes the app load (a click on a chip, a toggle), then wait."""
        self.stale()
        fn()
        self.ready()
