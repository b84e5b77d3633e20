"""Best-effort and line destinations against sockets the test holds: Maltrail's LOG_SERVER
datagram, CEF over UDP, Logstash JSON (a UDP datagram each, a TCP line each), and a flood into
closed UDP ports, counted and not slowing the sensor.

Maltrail's own server cannot be installed here (not on PyPI), so its receiver's rules
(core/log.py start_logd, mts_open) are written out below and every datagram is put through them.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import socket
import subprocess
import time

import pytest

from engine.sources import synthetic as g
from events.formats import parse_maltrail
from tests.collectors import (
    T0_S, Sensor, TcpLineCollector, UdpCollector, dns_frames, free_port, logged_events, write_config,
)
from tests.test_corpus import console_script
from tests.test_forward_rsyslog import TRAILS, expected_cef, trails_date, varied_frames
from trailsdb.compile import build

UNICODE_TRAIL = "unicode-evil.org,\"évil café ☕ (malware)\",(tést)\n"


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    directory = tmp_path_factory.mktemp("fwd-udp-trails")
    (directory / "trails.csv").write_text(TRAILS + UNICODE_TRAIL, encoding="utf-8")
    build([str(directory / "trails.csv")], str(directory / "trails.mtdb"))
    return str(directory / "trails.mtdb")


def frames(start_s: int = T0_S):
    yield from varied_frames(start_s)
    yield (start_s * 1_000_000_000 + 7_000,
           g.udp_frame("10.0.0.7", "10.0.0.53", 40007, 53, g.dns_query("z.unicode-evil.org")))


def maltrail_lines(log_dir) -> list[str]:
    out = subprocess.run([console_script(), "tail", "--log-dir", str(log_dir), "--format", "maltrail"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.splitlines(keepends=True)


# --- Maltrail's receiver, as its core/log.py reads a datagram -----------------------------------

MTS_PREFIX = b"MTS1 "
MTS_SKEW_S = 900


def maltrail_server_reads(datagram: bytes, secret: bytes | None, now_s: float) -> tuple[int, bytes] | None:
    """(epoch second, the line it appends to its day file), or None where it drops the datagram."""
    if secret:
        if not datagram.startswith(MTS_PREFIX):
            return None
        rest = datagram[len(MTS_PREFIX):]
        if len(rest) <= 32 or rest[32:33] != b" ":
            return None
        mac, payload = rest[:32], rest[33:]
        if not hmac.compare_digest(mac, hmac.new(secret, payload, hashlib.sha256).hexdigest()[:32].encode()):
            return None
        head = payload.split(b" ", 1)[0]
        if not head.isdigit() or abs(now_s - int(head)) > MTS_SKEW_S:
            return None
        datagram = payload
    if not datagram[:1].isdigit():
        return None          # (it would read a line starting with '"' by its own time instead)
    sec, event = datagram.split(b" ", 1)
    event = event.rstrip(b"\r\n").replace(b"\r", b" ").replace(b"\n", b" ") + b"\n"
    return int(sec), event


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_log_server_datagrams_are_what_a_maltrail_server_accepts(family, artifact, tmp_path):
    collector = UdpCollector(socket.AF_INET6 if family == "ipv6" else socket.AF_INET)
    address = "[::1]:%d" % collector.port if family == "ipv6" else "127.0.0.1:%d" % collector.port
    try:
        sensor = Sensor(tmp_path / "sensor", artifact, tmp_path / "log", log_server=address).start()
        try:
            sensor.feed(frames())
            datagrams = collector.wait(7)
        finally:
            assert sensor.finish() == 0, sensor.text()
    finally:
        collector.close()
    events = logged_events(tmp_path / "log")
    lines = maltrail_lines(tmp_path / "log")
    assert len(events) == len(lines) == len(datagrams) == 7
    # The documented layout: "<epoch seconds> <the tail --format maltrail line, newline included>".
    expected = [("%d %s" % (e["ts_us"] // 1_000_000, line)).encode("utf-8") for e, line in zip(events, lines)]
    assert sorted(datagrams) == sorted(expected)
    for datagram, event in zip(sorted(datagrams), sorted(expected)):
        sec, written = maltrail_server_reads(datagram, None, time.time())
        assert written == datagram.split(b" ", 1)[1]            # it writes the line unchanged
        fields = parse_maltrail(written.decode("utf-8"))
        original = next(e for e in events if e["ts_us"] // 1_000_000 == sec and e["trail"] == fields["trail"])
        assert fields["ts_us"] == original["ts_us"]
        for name in ("sensor", "src_ip", "src_port", "dst_ip", "dst_port", "proto", "trail", "info", "reference"):
            assert fields[name] == original[name], name
        assert fields["type"] == ("DNS" if original["type"] == "SNI" else original["type"])


def test_signed_log_server_datagrams_pass_the_servers_check(artifact, tmp_path):
    """LOG_SERVER_SECRET: "MTS1 <first 16 bytes of HMAC-SHA256, hex> <payload>"; the server also
    drops what is more than 900 s from its clock, so the traffic here is stamped now (as live
    capture is)."""
    collector = UdpCollector()
    now_s = int(time.time())
    try:
        sensor = Sensor(tmp_path / "sensor", artifact, tmp_path / "log", log_server="127.0.0.1:%d" % collector.port,
                        log_server_secret="s3cr3t shared").start()
        try:
            sensor.feed(frames(now_s))
            datagrams = collector.wait(7)
        finally:
            assert sensor.finish() == 0, sensor.text()
    finally:
        collector.close()
    assert "s3cr3t" not in sensor.text()
    read = [maltrail_server_reads(d, b"s3cr3t shared", time.time()) for d in datagrams]
    assert None not in read
    assert all(maltrail_server_reads(d, b"another secret", time.time()) is None for d in datagrams)
    lines = maltrail_lines(tmp_path / "log")
    assert sorted(line for _, line in read) == sorted(line.encode("utf-8") for line in lines)


def test_cef_over_udp_datagrams_follow_the_layout(artifact, tmp_path):
    collector = UdpCollector()
    try:
        sensor = Sensor(tmp_path / "sensor", artifact, tmp_path / "log",
                        syslog_server="udp://127.0.0.1:%d" % collector.port).start()
        try:
            sensor.feed(frames())
            datagrams = collector.wait(7)
        finally:
            assert sensor.finish() == 0, sensor.text()
    finally:
        collector.close()
    events = logged_events(tmp_path / "log")
    from importlib.metadata import version
    expected = [expected_cef(e, "maltrail", socket.gethostname(), version("maltrail-engine"), trails_date(artifact))
                for e in events]
    assert sorted(datagrams) == sorted(x.decode().encode("utf-8") for x in expected)


LOGSTASH_KEYS = ["timestamp", "sensor", "severity", "src_ip", "src_port", "dst_ip", "dst_port", "proto", "type",
                 "trail", "info", "reference"]


def expected_logstash(event: dict) -> bytes:
    port = (lambda p: "-" if p is None else p)
    values = [event["ts_us"] // 1_000_000, "fwd-test", event["severity"], event["src_ip"], port(event["src_port"]),
              event["dst_ip"], port(event["dst_port"]), event["proto"],
              "DNS" if event["type"] == "SNI" else event["type"], event["trail"], event["info"], event["reference"]]
    # Python's default separators (", " and ": "), non-ASCII escaped as \uXXXX.
    return ("{%s}" % ", ".join('"%s": %s' % (k, json.dumps(v)) for k, v in zip(LOGSTASH_KEYS, values))).encode("ascii")


def test_logstash_json_by_udp_datagram_and_tcp_line(artifact, tmp_path):
    udp, tcp = UdpCollector(), TcpLineCollector()
    try:
        sensor = Sensor(tmp_path / "sensor", artifact, tmp_path / "log",
                        logstash_server=["udp://127.0.0.1:%d" % udp.port, "tcp://127.0.0.1:%d" % tcp.port]).start()
        try:
            sensor.feed(frames())
            datagrams, lines = udp.wait(7), tcp.wait(7)
        finally:
            assert sensor.finish() == 0, sensor.text()
    finally:
        udp.close()
        tcp.close()
    events = logged_events(tmp_path / "log")
    expected = [expected_logstash(e) for e in events]
    assert lines == expected                      # a line each over TCP, in order
    assert sorted(datagrams) == sorted(expected)  # a datagram each
    for raw in lines:
        doc = json.loads(raw)
        assert list(doc) == LOGSTASH_KEYS
        assert type(doc["timestamp"]) is int
        assert all(type(doc[k]) is int or doc[k] == "-" for k in ("src_port", "dst_port"))
    assert any(b"\\u00e9vil caf\\u00e9 \\u2615" in line for line in lines)
    assert any(b'"src_port": "-", ' in line for line in lines)


def test_a_flood_into_closed_udp_ports_is_counted_and_the_sensor_keeps_its_pace(artifact, tmp_path):
    """Every datagram into a port where nothing listens is refused by the host (ICMP port
    unreachable): each one is counted as dropped, said once, and the replay judges the same
    frames with every event in the log. The two runs' rates are printed, not compared."""
    pcap = tmp_path / "flood.pcap"
    count = 20_000
    with g.PcapWriter(str(pcap)) as w:
        for ts_ns, frame in dns_frames(0, count):
            w.write(ts_ns, frame)
    closed = [free_port(socket.SOCK_DGRAM) for _ in range(3)]
    runs = {}
    for name, sensor in (("off", {}), ("on", {"log_server": "127.0.0.1:%d" % closed[0],
                                               "syslog_server": ["udp://127.0.0.1:%d" % closed[1]],
                                               "logstash_server": ["udp://127.0.0.1:%d" % closed[2]]})):
        conf = write_config(tmp_path / ("%s.toml" % name), dict({"use_heuristics": False}, **sensor))
        stats = tmp_path / ("%s.json" % name)
        done = subprocess.run([console_script(), "replay", "-c", str(conf), "--trails", artifact, "--log-dir",
                               str(tmp_path / ("log-" + name)), "--workers", "1", "--sensor-name", "fwd-test",
                               "--stats-json", str(stats), str(pcap)], capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr
        runs[name] = (json.loads(stats.read_text()), done.stdout + done.stderr)
    off, on = runs["off"][0], runs["on"][0]
    def judged(counters):
        return {k: v for k, v in counters.items() if not k.endswith("_unix")}     # not the wall clock
    assert judged(on["counters"]) == judged(off["counters"])
    assert len(logged_events(tmp_path / "log-on")) == len(logged_events(tmp_path / "log-off")) == count
    assert len(on["forwarders"]) == 3
    for st in on["forwarders"].values():
        assert (st["sent"], st["dropped"], st["failed"]) == (0, count, 0), (on["forwarders"], runs["on"][1])
    text = runs["on"][1]
    assert len(re.findall(r"message\(s\) dropped: refused by the destination's host", text)) == 3, text
    def judged_s(report):   # from the start until the log was closed: capture, workers, writer
        return report["writer"]["finished_s"] - report["started_unix"]
    print("replay of %d frames (%d events), until the log was closed: %.0f frames/s without forwarders, %.0f with "
          "three flooding closed UDP ports (then %.1f s more for the forwarders to finish)"
          % (count, count, count / judged_s(off), count / judged_s(on), on["elapsed_s"] - judged_s(on)))
