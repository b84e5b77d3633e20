"""`--console` (and `[sensor] console`): every event on stderr as the log writer writes it.

- On a pseudo-terminal: Maltrail's line for every record, coloured by severity (high red, medium
  yellow, low cyan), the same lines `tail --format maltrail` prints once the colour is taken off;
  no progress bar over them. NO_COLOR set (to anything): no colour, on a terminal too.
- In a pipe: plain lines, byte for byte the lines of `tail`.
- Control characters an attacker put in a user agent reach the terminal as text, never as commands.
- A stream nobody reads never holds up the writer: the console only queues, and counts what it
  had to leave off.
"""

from __future__ import annotations

import os
import re
import subprocess

from engine.sources import synthetic as g
from events.record import Event
from tests.test_corpus import console_script
from tests.test_outputs import CORPUS, log_lines, write_conf, write_pcap

_ESC = re.compile(r"\x1b\[[0-9;]*m")


def _capture(tmp_path):
    return write_pcap(tmp_path / "x.pcap", [
        g.udp_frame("10.0.0.1", "10.0.0.53", 40000, 53, g.dns_query("www.evil-parent.net")),          # high
        g.tcp_frame("10.0.0.2", "203.0.113.70", 40001, 443),                                          # medium
        g.tcp_frame("203.0.113.67", "10.0.0.3", 40002, 443),                                          # low
        g.tcp_frame("10.0.0.4", "198.51.100.12", 40003, 80, g.TCP_PSH | g.TCP_ACK,
                    g.http_request("GET", "/", host="ok.example", user_agent="evilbot/\x1b]0;owned\x07\x1b[2J")),
    ])


def _args(tmp_path, *extra, log="log"):
    pcap = tmp_path / "x.pcap"
    if not pcap.exists():
        _capture(tmp_path)
    return [console_script(), "replay", "--trails", str(CORPUS / "trails.csv"), "--log-dir", str(tmp_path / log),
            "--sensor-name", "s1", *extra, str(pcap)]


def _on_a_terminal(args, env=None) -> tuple[int, str]:
    master, slave = os.openpty()
    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave,
                            env=dict(os.environ, **(env or {})))
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:              # EIO: every holder of the terminal has closed it
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    return proc.wait(timeout=120), b"".join(chunks).decode("utf-8", "replace").replace("\r\n", "\n")


def _event_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if _ESC.sub("", line).startswith('"')]


def test_on_a_terminal_events_are_coloured_by_severity(tmp_path):
    code, text = _on_a_terminal(_args(tmp_path, "--console"), env={"NO_COLOR": "", "TERM": "xterm"})
    assert code == 0, text
    shown = _event_lines(text)
    logged = log_lines(tmp_path / "log")
    assert len(shown) == len(logged) == 4
    colours = {"high": "\x1b[1;91m", "medium": "\x1b[1;93m", "low": "\x1b[1;96m"}
    expected = [colours["high"], colours["medium"], colours["low"], colours["medium"]]
    for line, colour, plain in zip(shown, expected, logged):
        assert line.startswith(colour) and line.endswith("\x1b[0m"), repr(line)
        if "evilbot" not in plain:
            assert _ESC.sub("", line) == plain
    # the user agent's escape sequences arrive as text: no ESC but the colour's, no BEL
    ua = shown[3]
    assert "\x07" not in ua and _ESC.sub("", ua).count("\x1b") == 0
    assert "evilbot/(\\x1b]0;owned\\x07\\x1b[2J)" in ua
    assert "replay:" not in text and "B/s" not in text           # no progress bar under the lines


def test_no_color_turns_the_colour_off_on_a_terminal(tmp_path):
    code, text = _on_a_terminal(_args(tmp_path, "--console"), env={"NO_COLOR": "1", "TERM": "xterm"})
    assert code == 0, text
    shown = _event_lines(text)
    assert len(shown) == 4 and not any("\x1b[" in line for line in shown)


def test_in_a_pipe_the_lines_are_tails_lines(tmp_path):
    conf = write_conf(tmp_path / "maltrail.toml", sensor={"console": True})
    result = subprocess.run(_args(tmp_path, "-c", conf), capture_output=True, text=True, timeout=120,
                            env=dict(os.environ, NO_COLOR=""))
    assert result.returncode == 0, result.stderr
    shown = [line for line in result.stderr.splitlines() if line.startswith('"')]
    logged = log_lines(tmp_path / "log")
    assert "\x1b" not in result.stderr
    assert shown[:3] == logged[:3]
    assert shown[3] == logged[3].replace("\x1b", "\\x1b").replace("\x07", "\\x07")
    # without the switch, nothing of the kind
    quiet = subprocess.run(_args(tmp_path, log="log2"), capture_output=True, text=True, timeout=120)
    assert quiet.returncode == 0 and not [line for line in quiet.stderr.splitlines() if line.startswith('"')]


def test_a_stream_nobody_reads_never_holds_up_the_writer():
    from events.console import Console
    read_end, write_end = os.pipe()        # nobody reads: the pipe fills after some 64 KiB
    try:
        console = Console(write_end, colour=False, queue_lines=1000)
        event = Event(1_772_323_200_000_000, "s1", "10.0.0.1", 40000, "203.0.113.66", 443, "TCP", "IP",
                      "203.0.113.66", "corpus c2 (malware)", "(corpus)", "high", 1, 1_772_323_200_000_000)
        for _ in range(20):
            console.show([event] * 1000)   # returns at once, whatever the pipe does
        console.close(timeout_s=0.2)
        assert console.not_shown > 0 and console.shown + console.not_shown <= 20_000
    finally:
        os.close(read_end)
        os.close(write_end)
