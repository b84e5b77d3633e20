"""`maltrail-engine demo`, the README's first command, run as a user runs it.

Non-interactive (standard input not a terminal, or `--once` even on a terminal) it builds the
trails, replays the capture, shows the events and finishes by itself. From a terminal it also
starts a real server on loopback, registers its sensor, sends the events through the sensor's
server link and serves them until Ctrl-C: the test logs in with the login it prints, reads the
events over the API, sees a later replay arrive, presses Ctrl-C (SIGINT) and checks that no
process the demo started is left. `--serve` does the same without a terminal, and SIGTERM stops it
as Ctrl-C does.
"""

from __future__ import annotations

import http.cookiejar
import json
import os
import pty
import re
import select
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

from tests.test_corpus import console_script

WAIT_LIMIT_S = 120
EVERY_KIND = ("(update).evil-demo.com", "sinkholed by demo (malware)", "203.0.113.66", "198.51.100.77:4444",
              "/wp-login/gate.php", "shop.phish-demo.org/account/verify", "sqlmap/", "(c2).badcdn-demo.net",
              "UDP DNS (quic).badcdn-demo.net", "2001:db8::66", "192.0.2.128/25",
              "41026 10.1.0.53 53 UDP DNS evil-demo.com", "TCP IP 198.51.100.200 \"potential port scanning\"",
              "potential xss injection (suspicious)", "(xkqwzlvbnmfghjd).com \"entropy threshold no such domain")


def _check_finished_demo(result, out: Path) -> None:
    assert result.returncode == 0, result.stderr
    # the closing hint must not point a real span port at the demo's ten trails
    hint = result.stdout.split("\n$ maltrail-engine tail", 1)[1].strip().splitlines()[-3:]
    assert not any(" -i " in line and str(out) in line for line in hint), hint
    assert any(line.strip() == "sudo maltrail-engine trails update" for line in hint), hint
    for text in EVERY_KIND:
        assert text in result.stdout, text
    # nothing was served: no server, no login, no server directory
    assert "http://127.0.0.1" not in result.stdout and "password" not in result.stdout
    assert not [p for p in out.iterdir() if p.name.startswith("server-")]


def test_demo_without_a_terminal_runs_offline_shows_every_kind_and_finishes(tmp_path):
    out = tmp_path / "demo"
    result = subprocess.run([console_script(), "demo", "--out", str(out)], stdin=subprocess.DEVNULL,
                            capture_output=True, text=True, timeout=WAIT_LIMIT_S)
    _check_finished_demo(result, out)


def test_demo_once_on_a_terminal_finishes(tmp_path):
    out = tmp_path / "demo"
    terminal, terminal_end = pty.openpty()   # standard input is a terminal: --once alone keeps it short
    try:
        result = subprocess.run([console_script(), "demo", "--once", "--out", str(out)], stdin=terminal_end,
                                capture_output=True, text=True, timeout=WAIT_LIMIT_S)
    finally:
        os.close(terminal)
        os.close(terminal_end)
    _check_finished_demo(result, out)


def _stat(pid: int) -> tuple[int, str, int] | None:
    """(parent pid, state, start time in ticks) of a process, None when it is gone."""
    try:
        text = Path("/proc/%d/stat" % pid).read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()
    return int(fields[1]), fields[0], int(fields[19])


def _descendants(root: int) -> dict[int, int]:
    """pid -> start time of every living process below `root`."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = _stat(int(entry))
            if st is not None:
                parents[int(entry)] = st
    found, todo = {}, [root]
    while todo:
        parent = todo.pop()
        for pid, (ppid, _state, start) in parents.items():
            if ppid == parent and pid not in found:
                found[pid] = start
                todo.append(pid)
    return found


class _Lines:
    """The demo's standard output, read line by line with a limit, kept whole for messages."""

    def __init__(self, proc):
        self.proc = proc
        self.text = ""
        self._buffer = b""

    def until(self, pattern: str) -> re.Match:
        limit = time.monotonic() + WAIT_LIMIT_S
        while True:
            found = re.search(pattern, self.text)
            if found:
                return found
            assert time.monotonic() < limit, "the demo never printed %r:\n%s" % (pattern, self.text)
            ready, _, _ = select.select([self.proc.stdout], [], [], 1.0)
            if ready:
                chunk = os.read(self.proc.stdout.fileno(), 65536)
                assert chunk, "the demo closed its output (status %s):\n%s" % (self.proc.poll(), self.text)
                self.text += chunk.decode(errors="replace")


def _events(opener, url: str) -> list[dict]:
    now_s = time.time()   # the served demo shifts its capture to the time of each replay
    query = "from=%d&to=%d&limit=1000" % (now_s - 3600, now_s + 3600)
    with opener.open(url + "/api/v1/events?" + query, timeout=30) as answer:
        return json.loads(answer.read())["events"]


def test_demo_on_a_terminal_serves_its_events_until_ctrl_c(tmp_path):
    out = tmp_path / "demo"
    terminal, terminal_end = pty.openpty()   # what a user's shell gives it: the interactive default
    proc = subprocess.Popen([console_script(), "demo", "--out", str(out), "--every-s", "1"], stdin=terminal_end,
                            stdout=subprocess.PIPE, stderr=open(tmp_path / "demo.err", "wb"))
    seen: dict[int, int] = {}
    try:
        lines = _Lines(proc)
        found = lines.until(r"running at (http://127\.0\.0\.1:(\d+))/\s+log in as (\S+), password (\S+)\n")
        url, port, user, password = found.group(1), int(found.group(2)), found.group(3), found.group(4)
        seen.update(_descendants(proc.pid))
        assert any("server" in Path("/proc/%d/cmdline" % pid).read_bytes().decode(errors="replace")
                   for pid in seen if _stat(pid)), "no server process below the demo"
        server_dir = Path(re.search(r"removes\s+(\S+)/\.", lines.text).group(1))
        assert server_dir.parent == out and (server_dir.stat().st_mode & 0o777) == 0o700

        # the printed login works over HTTP, and a wrong password does not
        jar = http.cookiejar.CookieJar()
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
        for attempt, expect in ((password + "x", 401), (password, 200)):
            request = urllib.request.Request(url + "/api/v1/login", method="POST", headers={
                "Content-Type": "application/json"}, data=json.dumps({"username": user, "password": attempt}).encode())
            try:
                with opener.open(request, timeout=30) as answer:
                    status = answer.status
            except urllib.error.HTTPError as exc:
                status = exc.code
            assert status == expect, (attempt, status)

        # the demo's events, sent by its sensor through the server link, are the server's
        first = _events(opener, url)
        assert {e["sensor"] for e in first} == {"demo"}
        trails = {e["trail"] for e in first}
        for trail in ("(update).evil-demo.com", "203.0.113.66", "198.51.100.77:4444", "2001:db8::66",
                      "shop.phish-demo.org/account/verify"):
            assert trail in trails, (trail, sorted(trails))
        # and it keeps replaying: a later replay's events arrive while the page would be open
        lines.until(r"replay 3: the server now holds \d+ events")
        seen.update(_descendants(proc.pid))
        assert len(_events(opener, url)) > len(first)

        proc.send_signal(signal.SIGINT)      # Ctrl-C
        assert proc.wait(timeout=WAIT_LIMIT_S) == 0, (tmp_path / "demo.err").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(terminal)
        os.close(terminal_end)
    rest = proc.stdout.read().decode(errors="replace")
    assert "Stopped the demo's server and sensor" in rest, rest
    _check_nothing_left(seen, server_dir, port)


def _check_nothing_left(seen: dict[int, int], server_dir: Path, port: int) -> None:
    # every process seen below the demo is gone (or a new one with its pid), its directory too
    survivors = [pid for pid, start in seen.items()
                 if (st := _stat(pid)) is not None and st[2] == start and st[1] != "Z"]
    assert not survivors, [Path("/proc/%d/cmdline" % p).read_bytes() for p in survivors]
    assert not server_dir.exists()
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0, "something still listens on the demo's port"


def test_demo_serve_without_a_terminal_stops_cleanly_on_sigterm(tmp_path):
    """--serve starts the server from a script too; SIGTERM (a service manager's stop) cleans up
    as Ctrl-C does."""
    out = tmp_path / "demo"
    proc = subprocess.Popen([console_script(), "demo", "--serve", "--out", str(out)], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=open(tmp_path / "demo.err", "wb"))
    try:
        lines = _Lines(proc)
        found = lines.until(r"running at (http://127\.0\.0\.1:(\d+))/\s+log in as (\S+), password (\S+)\n")
        server_dir = Path(lines.until(r"removes\s+(\S+)/\.").group(1))
        seen = _descendants(proc.pid)
        assert server_dir.is_dir() and seen
        with urllib.request.urlopen(found.group(1) + "/api/v1/health", timeout=30) as answer:
            assert json.loads(answer.read())["store"]["events_indexed"] > 0
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=WAIT_LIMIT_S) == 0, (tmp_path / "demo.err").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    _check_nothing_left(seen, server_dir, int(found.group(2)))
