"""CEF over syslog to a real rsyslog (Debian's, started here in the foreground on loopback).

The sensor replays traffic through a FIFO; rsyslog writes every record it receives, raw, to a file
per input; the records are compared byte for byte with the layouts written out below from
COMPATIBILITY.md (Maltrail's: `MMM DD HH:MM:SS HOST CEF:0|Maltrail|sensor|VERSION|TRAILS-DATE|
INFO|0-2|src=... spt=... dst=... dpt=... trail=... ref=...`, no <PRI>; and RFC 5424's), over UDP,
TCP with octet counting, and TLS with the collector's certificate checked against syslog_ca_file.
A collector that demands a client certificate gets ours; one that gets none refuses the handshake
and loses nothing; a collector whose certificate our CA did not sign is refused, said once.
"""

from __future__ import annotations

import datetime
import re
import socket
import time
from importlib.metadata import version as package_version

import pytest

from engine.sources import synthetic as g
from matchers.artifact import Artifact
from tests.collectors import T0_S, Pki, Rsyslog, Sensor, free_port, logged_events, need_rsyslog
from trailsdb.compile import build

TRAILS = r'''evil-parent.net,corpus parent (malware),(corpus)
pipe-evil.org,"pipe | back\slash (malware)",(test)
eq-evil.org,known attacker,(ref=a\b)
plain-evil.org,odd thing,(test)
203.0.113.66,icmp c2 (malware),(test)
aaaa.=auth.tunnel-evil.org,dns tunnel (malware),(test)
'''


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    directory = tmp_path_factory.mktemp("fwd-trails")
    (directory / "trails.csv").write_text(TRAILS)
    build([str(directory / "trails.csv")], str(directory / "trails.mtdb"))
    return str(directory / "trails.mtdb")


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return Pki(tmp_path_factory.mktemp("pki"))


def varied_frames(start_s: int = T0_S):
    """One of each: high, low and medium severity; `|` and `\\` in the info, `=` and `\\` in the
    reference, `=` in the trail, an ICMP event without ports."""
    t = start_s * 1_000_000_000
    yield t + 1_000, g.udp_frame("10.0.0.1", "10.0.0.53", 40001, 53, g.dns_query("www.evil-parent.net"))
    yield t + 2_000, g.udp_frame("10.0.0.2", "10.0.0.53", 40002, 53, g.dns_query("x.pipe-evil.org"))
    yield t + 3_000, g.udp_frame("10.0.0.3", "10.0.0.53", 40003, 53, g.dns_query("eq-evil.org"))
    yield t + 4_000, g.udp_frame("10.0.0.4", "10.0.0.53", 40004, 53, g.dns_query("y.plain-evil.org"))
    yield t + 5_000, g.icmp_frame("10.0.0.5", "203.0.113.66")
    yield t + 6_000, g.udp_frame("10.0.0.6", "10.0.0.53", 40006, 53, g.dns_query("aaaa.=auth.tunnel-evil.org"))


# --- the layouts, written out from COMPATIBILITY.md ---------------------------------------------

def _header_field(value) -> str:
    return str(value).replace("\\", "\\\\").replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def _extension_value(value) -> str:
    return str(value).replace("\\", "\\\\").replace("=", "\\=").replace("\r", " ").replace("\n", " ")


def expected_cef(event: dict, layout: str, host: str, version: str, trails_date: str) -> bytes:
    port = (lambda p: "-" if p is None else str(p))
    scale = {"low": 0, "medium": 1, "high": 2} if layout == "maltrail" else {"low": 3, "medium": 6, "high": 9}
    cef = "CEF:0|Maltrail|sensor|%s|%s|%s|%d|src=%s spt=%s dst=%s dpt=%s trail=%s ref=%s" % (
        version, trails_date, _header_field(event["info"]), scale[event["severity"]], event["src_ip"],
        port(event["src_port"]), event["dst_ip"], port(event["dst_port"]), _extension_value(event["trail"]),
        _extension_value(event["reference"]))
    seconds, micros = divmod(event["ts_us"], 1_000_000)
    if layout == "maltrail":
        return ("%s %s %s" % (time.strftime("%b %d %H:%M:%S", time.localtime(seconds)), host, cef)).encode()
    # RFC 5424: <facility user (1) * 8 + severity> VERSION TIMESTAMP HOSTNAME APP-NAME PROCID MSGID SD
    pri = 8 + {"high": 2, "medium": 4, "low": 5}[event["severity"]]
    stamp = datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).astimezone() \
        .replace(microsecond=micros).isoformat(timespec="microseconds")
    return ("<%d>1 %s %s maltrail-engine - - - %s" % (pri, stamp, host, cef)).encode()


def trails_date(artifact: str) -> str:
    return time.strftime("%Y-%m-%d", time.localtime(Artifact.open(artifact).created_s))


# --- the tests ----------------------------------------------------------------------------------

@pytest.mark.parametrize("layout", ["maltrail", "rfc5424"])
def test_cef_over_udp_tcp_and_tls_arrives_byte_for_byte(layout, artifact, pki, tmp_path):
    need_rsyslog()
    udp, tcp, tls = free_port(socket.SOCK_DGRAM), free_port(), free_port()
    with Rsyslog(tmp_path / "rsyslog", udp=udp, tcp=tcp, tls=tls, pki=pki) as collector:
        sensor = Sensor(tmp_path / "sensor", artifact, tmp_path / "log", syslog_format=layout,
                        syslog_server=["udp://127.0.0.1:%d" % udp, "127.0.0.1:%d" % udp, "tcp://127.0.0.1:%d" % tcp,
                                       "tls://localhost:%d" % tls],
                        syslog_ca_file=str(pki.ca)).start()
        try:
            sensor.feed(varied_frames())
            # "udp://h:p" and Maltrail's bare "h:p" are one destination, fed once.
            sensor.wait_line(r"is listed more than once; events are sent to it once")
            received = {kind: collector.wait_lines(kind, 6) for kind in ("udp", "tcp", "tls")}
        finally:
            assert sensor.finish() == 0, sensor.text()
    events = logged_events(tmp_path / "log")
    assert len(events) == 6
    assert {e["severity"] for e in events} == {"low", "medium", "high"}
    assert any(e["src_port"] is None for e in events)
    expected = [expected_cef(e, layout, socket.gethostname(), package_version("maltrail-engine"),
                             trails_date(artifact)) for e in events]
    assert b"trail=(aaaa).\\=auth.tunnel-evil.org" in b"".join(expected) or \
        b"trail=aaaa.\\=auth.tunnel-evil.org" in b"".join(expected)
    assert received["tcp"] == expected
    assert received["tls"] == expected
    assert sorted(received["udp"]) == sorted(expected)   # datagrams: each once, order not promised
    assert "unreachable" not in sensor.text()
    summary = [line for line in sensor.lines if line.startswith("forwarded to")]
    assert len(summary) == 3, sensor.text()
    assert all(re.search(r": sent 6, failed deliveries 0, dropped 0$", line.rstrip()) for line in summary), summary


def test_a_collector_that_demands_a_client_certificate_gets_ours_and_loses_nothing_without_it(
        artifact, pki, tmp_path):
    """Without the certificate the collector refuses the handshake (TLS 1.2: before anything is
    sent), the sensor says so once and the events wait in the log; restarted with the certificate,
    the sensor sends them, each once."""
    need_rsyslog()
    tls = free_port()
    log = tmp_path / "log"
    with Rsyslog(tmp_path / "rsyslog", tls=tls, pki=pki, auth_mode="x509/certvalid") as collector:
        without = Sensor(tmp_path / "sensor", artifact, log, syslog_server=["tls://127.0.0.1:%d" % tls],
                         syslog_ca_file=str(pki.ca)).start()
        try:
            without.feed(varied_frames())
            without.wait_line(r"syslog_server tls://127\.0\.0\.1:%d unreachable: .*TLS handshake failed" % tls)
            time.sleep(1.5)           # a retry or two, refused the same way
        finally:
            assert without.finish() == 0, without.text()
        assert collector.lines("tls") == []
        assert len(re.findall("unreachable", without.text())) == 1, without.text()
        assert re.search(r"forwarded to syslog_server tls://\S+: sent 0, failed deliveries [1-9]", without.text())

        with_cert = Sensor(tmp_path / "sensor", artifact, log, syslog_server=["tls://127.0.0.1:%d" % tls],
                           syslog_ca_file=str(pki.ca), syslog_client_cert=str(pki.client_cert),
                           syslog_client_key=str(pki.client_key)).start()
        try:
            received = collector.wait_lines("tls", 6)
        finally:
            assert with_cert.finish() == 0, with_cert.text()
    events = logged_events(log)
    expected = [expected_cef(e, "maltrail", socket.gethostname(), package_version("maltrail-engine"),
                             trails_date(artifact)) for e in events]
    assert collector.lines("tls") == expected


def test_a_collector_whose_certificate_our_ca_did_not_sign_gets_nothing(artifact, pki, tmp_path):
    need_rsyslog()
    tls = free_port()
    with Rsyslog(tmp_path / "rsyslog", tls=tls, pki=pki, rogue=True) as collector:
        sensor = Sensor(tmp_path / "sensor", artifact, tmp_path / "log", syslog_server=["tls://localhost:%d" % tls],
                        syslog_ca_file=str(pki.ca)).start()
        try:
            sensor.feed(varied_frames())
            sensor.wait_line(r"unreachable: .*certificate is not trusted")
            time.sleep(3.5)           # retries after 1 s and 2 s, refused the same way
        finally:
            assert sensor.finish() == 0, sensor.text()
        assert collector.lines("tls") == []
    assert len(re.findall("unreachable", sensor.text())) == 1, sensor.text()
    failed = int(re.search(r"forwarded to syslog_server tls://localhost:\d+: sent 0, failed deliveries (\d+)",
                           sensor.text()).group(1))
    assert failed >= 2, sensor.text()
