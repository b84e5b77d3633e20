"""The installed `maltrail-engine` command, run as a real process.

Covers the fail-closed start, configuration errors and check-config, trails build/stats/check,
replay from a trails.csv (compiled into the cache), the log read back with `tail` in every format
and with the real `zstd` tool, and the live sensor on a veth pair: frames injected from
a network namespace, SIGTERM, events read back.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import msgpack
import pytest

from engine.sources import synthetic as g
from events.log import EventLogReader
from tests.conftest import need_root
from tests.netns import DST_MAC, send_frames, veth  # noqa: F401 (veth is a fixture)
from tests.test_corpus import console_script

CORPUS = Path(__file__).resolve().parent / "corpus"


def mte(*args, env=None, timeout=120, **kw):
    full_env = dict(os.environ, **(env or {}))
    return subprocess.run([console_script(), *args], capture_output=True, text=True, timeout=timeout,
                          env=full_env, **kw)


@pytest.fixture
def cache(tmp_path):
    return {"MALTRAIL_ENGINE_CACHE": str(tmp_path / "cache")}


@pytest.fixture
def artifact(tmp_path):
    path = tmp_path / "trails.mtdb"
    result = mte("trails", "build", "--source", str(CORPUS / "trails.csv"), "-o", str(path))
    assert result.returncode == 0, result.stderr
    return path


def wait_for_records(log_dir, count: int, timeout_s: float = 20.0) -> int:
    """Polls the event log until it holds `count` records or the deadline passes (the deadline
    bounds a failing test, it measures nothing); returns how many it holds, the assertions after
    say what is missing."""
    deadline = time.monotonic() + timeout_s
    while True:
        held = sum(1 for _ in EventLogReader().iter_dir(str(log_dir))) if os.path.isdir(log_dir) else 0
        if held >= count or time.monotonic() >= deadline:
            return held
        time.sleep(0.1)


def _pcap(path, frames):
    with g.PcapWriter(str(path)) as w:
        for i, frame in enumerate(frames):
            w.write(1_772_323_200_000_000_000 + i * 1_000_000, frame)
    return str(path)


def test_refuses_to_start_without_trails(tmp_path, cache):
    pcap = _pcap(tmp_path / "x.pcap", [g.tcp_frame("10.0.0.1", "203.0.113.66", 40000, 443)])
    missing = str(tmp_path / "nothing-here.mtdb")
    for args in (["replay", "--trails", missing, "--log-dir", str(tmp_path / "log"), pcap],
                 ["--trails", missing, "--log-dir", str(tmp_path / "log"), "-i", "lo"]):
        result = mte(*args, env=cache)
        assert result.returncode == 1
        assert "no trails at" in result.stderr and "trails build" in result.stderr
        assert "--allow-no-trails" in result.stderr
    result = mte("replay", "--trails", missing, "--allow-no-trails", "--log-dir", str(tmp_path / "log"), pcap, env=cache)
    assert result.returncode == 0, result.stderr
    assert "events: 0" in result.stderr


def test_empty_trail_source_is_not_usable(tmp_path, cache):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    pcap = _pcap(tmp_path / "x.pcap", [g.tcp_frame("10.0.0.1", "203.0.113.66", 40000, 443)])
    result = mte("replay", "--trails", str(empty), "--log-dir", str(tmp_path / "log"), pcap, env=cache)
    assert result.returncode == 1
    assert "holds no trails" in result.stderr


def test_bad_config_names_file_line_and_fix(tmp_path):
    conf = tmp_path / "maltrail.toml"
    conf.write_text('[sensor]\nsnaplen_bytes = 10\n')
    result = mte("check-config", "-c", str(conf))
    assert result.returncode == 2
    assert "maltrail.toml:2" in result.stderr and "snaplen_bytes" in result.stderr and "64" in result.stderr
    conf.write_text('[sensor]\nsnaplen_bytes = 1500\n')
    result = mte("check-config", "-c", str(conf), "--sensor-name", "edge-1", "--config-only")
    assert result.returncode == 0, result.stderr
    assert "snaplen_bytes = 1500" in result.stdout and 'sensor_name = "edge-1"' in result.stdout
    assert "command line" in result.stdout
    result = mte("check-config", "-c", str(tmp_path / "missing.toml"))
    assert result.returncode == 2 and "missing.toml" in result.stderr


def test_trails_build_stats_and_check(artifact):
    stats = mte("trails", "stats", str(artifact))
    assert stats.returncode == 0, stats.stderr
    assert "generation: 1" in stats.stdout and "trails: 30" in stats.stdout
    # the corpus lists 0.0.0.0/0, ::/0, a /2 and a /3: refused at build, and the stats say why
    assert "rejected at build: 2 range wider than /8, would match (nearly) every address" in stats.stdout
    assert "rejected at build: 2 range wider than /12, would match (nearly) every address" in stats.stdout
    check = mte("trails", "check", "--trails", str(artifact), "www.evil-parent.net")
    assert check.returncode == 0
    assert "parent evil-parent.net" in check.stdout and "MATCH" in check.stdout
    check = mte("trails", "check", "--trails", str(artifact), "192.0.2.130")
    assert check.returncode == 0 and "inside range" in check.stdout
    check = mte("trails", "check", "--trails", str(artifact), "innocent.org/gate/panel.php?x=1")
    assert check.returncode == 0 and "/gate/panel.php" in check.stdout
    check = mte("trails", "check", "--trails", str(artifact), "clean-site.org")
    assert check.returncode == 3 and "no domain trail matches" in check.stdout
    rebuilt = mte("trails", "build", "--source", str(CORPUS / "trails.csv"), "-o", str(artifact))
    assert rebuilt.returncode == 0 and "generation 2" in rebuilt.stdout


def test_trails_build_reports_a_missing_source(tmp_path):
    result = mte("trails", "build", "--source", str(tmp_path / "nope.csv"), "-o", str(tmp_path / "t.mtdb"))
    assert result.returncode == 1 and "nope.csv" in result.stderr
    assert not (tmp_path / "t.mtdb").exists()


def test_ranges_wider_than_the_configured_minimum_are_rejected_by_build_and_replay(tmp_path, cache):
    source = tmp_path / "feed.csv"
    source.write_text("0.0.0.0/0,everything (malware),(feed)\n10.0.0.0/12,wide range (suspicious),(feed)\n"
                      "::/0,everything (malware),(feed)\n203.0.113.66,c2 (malware),(feed)\n")
    default, narrow = tmp_path / "default.toml", tmp_path / "narrow.toml"
    default.write_text("")
    narrow.write_text("[all]\nmin_trail_prefix_v4 = 16\n")
    pcap = _pcap(tmp_path / "x.pcap", [g.tcp_frame("10.1.2.3", "198.18.0.1", 40000, 443),
                                       g.tcp_frame("10.1.2.3", "203.0.113.66", 40001, 443),
                                       g.tcp_frame("2001:db8::1", "2001:db8::2", 40002, 443)])

    built = mte("trails", "build", "-c", str(narrow), "--source", str(source), "-o", str(tmp_path / "t.mtdb"))
    assert built.returncode == 0, built.stderr
    assert "1 trails" in built.stdout                         # the c2 address alone
    assert ("rejected 2: range wider than /16, would match (nearly) every address ([all] min_trail_prefix_v4) "
            "(e.g. feed.csv:1 '0.0.0.0/0', feed.csv:2 '10.0.0.0/12')") in built.stdout
    assert "rejected 1: range wider than /12" in built.stdout and "feed.csv:3 '::/0'" in built.stdout

    # a source named by --trails is compiled for the sensor with the configured minimum, which is
    # part of the cache key: the same source under another minimum is compiled again
    wide = mte("replay", "-c", str(default), "--trails", str(source), "--log-dir", str(tmp_path / "l1"), pcap, env=cache)
    assert wide.returncode == 0, wide.stderr
    assert "rejected 1: range wider than /8" in wide.stderr and "rejected 1: range wider than /12" in wide.stderr
    assert "events: 2 (IP 2)" in wide.stderr                  # the /12 and the c2 address
    tight = mte("replay", "-c", str(narrow), "--trails", str(source), "--log-dir", str(tmp_path / "l2"), pcap, env=cache)
    assert tight.returncode == 0, tight.stderr
    assert "compiling trails from" in tight.stderr and "rejected 2: range wider than /16" in tight.stderr
    assert "events: 1 (IP 1)" in tight.stderr
    lines = mte("tail", "--log-dir", str(tmp_path / "l2")).stdout.splitlines()
    assert len(lines) == 1 and '10.1.2.3 40001 203.0.113.66 443 TCP IP 203.0.113.66 "c2 (malware)"' in lines[0]


def test_replay_from_csv_then_tail_in_every_format(tmp_path, cache):
    log = tmp_path / "log"
    pcap = _pcap(tmp_path / "x.pcap", [
        g.udp_frame("10.0.0.1", "10.0.0.53", 40000, 53, g.dns_query("www.evil-parent.net")),
        g.tcp_frame("10.0.0.1", "203.0.113.66", 40001, 443),
        g.tcp_frame("203.0.113.66", "10.0.0.1", 443, 40001, g.TCP_SYN | g.TCP_ACK),
        g.ether(b"\x00" * 10, 0x0806),  # ARP-ish: counted as skipped, not an error
    ])
    result = mte("replay", "--trails", str(CORPUS / "trails.csv"), "--log-dir", str(log), "--sensor-name", "s1",
                 pcap, env=cache)
    assert result.returncode == 0, result.stderr
    assert "compiling trails from" in result.stderr
    assert "frames: 4" in result.stderr and "decoded: 3; skipped: 1" in result.stderr
    assert "events: 3 (IP 2, DNS 1)" in result.stderr
    again = mte("replay", "--trails", str(CORPUS / "trails.csv"), "--log-dir", str(tmp_path / "log2"), pcap, env=cache)
    assert again.returncode == 0 and "compiling trails" not in again.stderr  # the cache is reused

    lines = mte("tail", "--log-dir", str(log)).stdout.splitlines()
    assert lines == [
        '"2026-03-01 00:00:00.000000" s1 10.0.0.1 40000 10.0.0.53 53 UDP DNS (www).evil-parent.net '
        '"corpus parent (malware)" (corpus)',
        '"2026-03-01 00:00:00.001000" s1 10.0.0.1 40001 203.0.113.66 443 TCP IP 203.0.113.66 '
        '"corpus c2 (malware)" (corpus)',
        '"2026-03-01 00:00:00.002000" s1 10.0.0.1 40001 203.0.113.66 443 TCP IP 203.0.113.66 '
        '"corpus c2 (malware)" (corpus)',
    ]
    records = [json.loads(line) for line in mte("tail", "--log-dir", str(log), "--format", "json").stdout.splitlines()]
    assert [r["count"] for r in records] == [1, 1, 1]
    assert records[0]["type"] == "DNS" and records[0]["severity"] == "high" and records[0]["src_port"] == 40000
    csv_lines = mte("tail", "--log-dir", str(log), "--format", "csv").stdout.splitlines()
    assert csv_lines[0].startswith("time,") and len(csv_lines) == 4
    since = mte("tail", "--log-dir", str(log), "--since", "2026-03-01 00:00:00.001")
    assert len(since.stdout.splitlines()) == 2

    # the log is plain zstd frames holding msgpack records: the real zstd tool reads it
    if shutil.which("zstd"):
        files = list(log.glob("*.events.zst"))
        assert [f.name for f in files] == ["2026-03-01.events.zst"]
        raw = subprocess.run(["zstd", "-dc", str(files[0])], capture_output=True, check=True).stdout
        unpacker = msgpack.Unpacker(raw=False)
        unpacker.feed(raw)
        assert len(list(unpacker)) == 3


def test_tail_of_a_missing_directory_fails_clearly(tmp_path):
    result = mte("tail", "--log-dir", str(tmp_path / "absent"))
    assert result.returncode == 2 and "absent" in result.stderr


@pytest.mark.root
def test_live_sensor_on_a_veth_pair(veth, artifact, tmp_path):
    namespace, host, peer = veth
    log = tmp_path / "log"
    proc = subprocess.Popen([console_script(), "-i", host, "--trails", str(artifact), "--log-dir", str(log),
                             "--sensor-name", "live"], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        seen = ""
        while "capturing on" not in seen and time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line:
                break
            seen += line
        assert "capturing on %s" % host in seen, seen

        def frame(ip_frame: bytes) -> bytes:
            return DST_MAC + ip_frame[6:]  # unicast to a MAC nobody owns: captured, then dropped

        client, server = "10.99.0.2", "10.99.0.1"
        send_frames(namespace, peer, [frame(f) for f in (
            g.udp_frame(client, server, 40000, 53, g.dns_query("evil-exact.com")),
            g.tcp_frame(client, "203.0.113.66", 40001, 443, g.TCP_SYN),
            g.tcp_frame(client, server, 40002, 80, g.TCP_PSH | g.TCP_ACK,
                        g.http_request("GET", "/gate/panel.php", "innocent-blog.org", "Mozilla/5.0")),
            g.tcp_frame(client, server, 40003, 443, g.TCP_PSH | g.TCP_ACK, g.tls_client_hello("tls-evil.org")),
        )])
        wait_for_records(log, 4)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            _, rest = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert proc.returncode == 0, rest
    assert "kernel: received 4" in rest and "events: 4" in rest, rest
    lines = [line.split('" ', 1)[1] for line in mte("tail", "--log-dir", str(log)).stdout.splitlines()]
    assert 'live 10.99.0.2 40000 10.99.0.1 53 UDP DNS evil-exact.com "corpus exact (malware)" (corpus)' in lines
    assert 'live 10.99.0.2 40001 203.0.113.66 443 TCP IP 203.0.113.66 "corpus c2 (malware)" (corpus)' in lines
    assert ('live 10.99.0.2 40002 10.99.0.1 80 TCP URL (innocent-blog.org)/gate/panel.php "corpus panel (malware)" '
            '(corpus)') in lines
    assert 'live 10.99.0.2 40003 10.99.0.1 443 TCP DNS tls-evil.org "corpus tls (malware)" (corpus)' in lines


def test_live_errors_are_clear(artifact, tmp_path):
    result = mte("-i", "no-such-iface0", "--trails", str(artifact), "--log-dir", str(tmp_path / "log"))
    assert result.returncode == 1 and "no-such-iface0" in result.stderr and "not found" in result.stderr
    need_root()
    result = mte("-i", "lo", "--filter", "port not-a-number", "--trails", str(artifact), "--log-dir", str(tmp_path / "log"))
    assert result.returncode == 1 and "filter" in result.stderr


def test_version():
    from importlib.metadata import version
    result = mte("--version")
    assert result.returncode == 0 and result.stdout.startswith("maltrail-engine %s" % version("maltrail-engine"))


def _options(help_text: str) -> set[str]:
    return {word.rstrip(",") for line in help_text.splitlines() for word in line.split()
            if word.startswith("-") and len(word) > 1 and word[1] != " "}


def test_each_command_shows_only_its_own_options():
    capture_only = {"-i", "--interface", "--filter", "--no-promisc", "--capture-buffer"}
    replay = _options(mte("replay", "--help").stdout)
    assert "--stats-json" in replay and "--workers" in replay and not capture_only & replay, replay
    check = _options(mte("trails", "check", "--help").stdout)
    assert check == {"-h", "--help", "-c", "--config", "--trails"}, check
    assert "--filter" in _options(mte("check-config", "--help").stdout)
    assert "--filter" in _options(mte("--help").stdout)


def test_every_option_of_every_command_has_help_text():
    import argparse
    from cli import build_parser
    pending = [("maltrail-engine", build_parser())]
    seen = 0
    while pending:
        name, parser = pending.pop()
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                pending += [("%s %s" % (name, sub), p) for sub, p in action.choices.items()]
                continue
            assert action.help and action.help != argparse.SUPPRESS, (name, action.option_strings or action.dest)
            seen += 1
    assert seen > 40


@pytest.mark.parametrize("indicator, reason", [
    ("", "empty"),
    ("999.1.1.1", "not a valid IPv4 address"),
    ("[::ffff:1.2.3.4]:99999", "out of range"),
    ("1.2.3.4:70000", "out of range"),
    ("a..example.com", "empty label"),
    ("evil.example:80", "a port goes with an IP address"),
])
def test_trails_check_refuses_what_is_not_an_indicator(artifact, indicator, reason):
    result = mte("trails", "check", "--trails", str(artifact), indicator)
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "usage:" in result.stderr and reason in result.stderr and "Traceback" not in result.stderr


def test_trails_check_still_answers_every_shape(artifact):
    for indicator in ("[2001:db8::bad]:8443", "2001:db8::66", "/gate/panel.php", "EVIL-EXACT.COM.", "ua:x"):
        result = mte("trails", "check", "--trails", str(artifact), indicator)
        assert result.returncode in (0, 3) and "Traceback" not in result.stderr, (indicator, result.stderr)
    assert mte("trails", "check", "--trails", str(artifact), "/gate/panel.php").returncode == 0


def test_an_unwritable_stats_json_fails_before_the_run(tmp_path, artifact):
    pcap = _pcap(tmp_path / "x.pcap", [g.tcp_frame("10.0.0.1", "203.0.113.66", 40000, 443)])
    log = tmp_path / "log"
    for target in (tmp_path, tmp_path / "no-such-dir" / "stats.json"):  # a directory; a missing parent
        result = mte("replay", "--trails", str(artifact), "--log-dir", str(log), "--stats-json", str(target), pcap)
        assert result.returncode == 2, result.stderr
        assert "cannot write --stats-json %s" % target in result.stderr and "Traceback" not in result.stderr
        assert "frames:" not in result.stderr and not log.exists()  # nothing ran
    good = tmp_path / "stats.json"
    result = mte("replay", "--trails", str(artifact), "--log-dir", str(log), "--stats-json", str(good), pcap)
    assert result.returncode == 0 and json.loads(good.read_text())
