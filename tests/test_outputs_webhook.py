"""Webhook alerts through the real sensor, received by an HTTP(S) server the test runs on loopback.

- The body is alert_format with every field filled (JSON-escaped: a trail holding a quote keeps
  the body one JSON value), the default posts the event as Logstash gets it, application/json;
  events below alert_severity are not posted, and counted.
- Throttling holds: one alert per (source, trail) in alert_throttle_s of event time; the others
  are counted, not sent.
- An outage loses nothing: 5xx answers, and a receiver that is not there across a restart of the
  sensor, cost delay only; every alert arrives, in order, once.
- A 4xx refuses that alert: counted, said once, skipped; the next ones go out.
- HTTPS verifies the certificate always: with alert_ca_file it is delivered, without it nothing is.
- The total timeout holds against a server that never answers; the URL's secret is never printed.
"""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import threading

import pytest

from engine.sources import synthetic as g
from tests.test_outputs import (
    T0_S, FifoSensor, WebhookReceiver, artifact, log_records, replay, wait_for, write_conf, write_pcap,
)


@pytest.fixture(scope="module")
def trails(tmp_path_factory):
    return artifact(tmp_path_factory.mktemp("trails") / "trails.mtdb", 'quote"d.evil-quote.org,quote test (malware),(test)')


def _stats(path) -> dict:
    (only,) = json.loads(path.read_text())["forwarders"].values()
    return only


def test_the_fields_config_checks_are_the_fields_the_webhook_fills():
    from config import ALERT_FORMAT_FIELDS
    from events.forwarders.webhook import FIELDS
    assert tuple(ALERT_FORMAT_FIELDS) == FIELDS


def test_the_body_is_the_template_filled_and_below_severity_is_not_posted(tmp_path, trails):
    hook = WebhookReceiver()
    try:
        template = ('{"text": "%(severity)s: %(info)s %(src_ip)s:%(src_port)s -> %(dst_ip)s:%(dst_port)s %(proto)s '
                    '%(type)s %(trail)s %(reference)s", "sensor": "%(sensor)s", "at": %(timestamp)d, '
                    '"time": "%(time)s", "count": %(count)s, "event": %(json)s}')
        conf = write_conf(tmp_path / "maltrail.toml", sensor={
            "alert_webhook_url": hook.url("/hooks/T0/B0/s3cret?channel=ids"), "alert_format": template,
            "alert_severity": "medium"})
        pcap = write_pcap(tmp_path / "x.pcap", [
            g.udp_frame("10.0.0.1", "10.0.0.53", 40000, 53, g.dns_query('quote"d.evil-quote.org')),      # high
            g.tcp_frame("10.0.0.2", "203.0.113.70", 40001, 443),                          # web (suspicious): medium
            g.tcp_frame("203.0.113.67", "10.0.0.3", 40002, 443),                          # known attacker: low
        ])
        stats = tmp_path / "stats.json"
        result = replay(conf, trails, tmp_path / "log", pcap, extra=("--stats-json", str(stats)))
        assert result.returncode == 0, result.stderr
        assert len(log_records(tmp_path / "log")) == 3
        assert len(hook.posts) == 2
        path, headers, body = hook.posts[0]
        assert path == "/hooks/T0/B0/s3cret?channel=ids"
        assert headers["Content-Type"] == "application/json" and headers["User-Agent"].startswith("maltrail-engine/")
        alert = json.loads(body)          # one JSON value, though the trail holds a quote
        assert alert["text"] == ('high: quote test (malware) 10.0.0.1:40000 -> 10.0.0.53:53 UDP DNS '
                                 'quote"d.evil-quote.org (test)')
        assert alert["sensor"] == "s1" and alert["at"] == T0_S and alert["time"] == "2026-03-01 00:00:00.000000"
        assert alert["count"] == 1
        assert list(alert["event"]) == ["timestamp", "sensor", "severity", "src_ip", "src_port", "dst_ip",
                                        "dst_port", "proto", "type", "trail", "info", "reference"]
        assert json.loads(hook.posts[1][2])["text"].startswith("medium: corpus web (suspicious) 10.0.0.2:40001")
        counts = _stats(stats)
        assert counts["alerted"] == 2 and counts["below_severity"] == 1 and counts["sent"] == 2
        assert "s3cret" not in result.stderr and "/...(" in result.stderr
    finally:
        hook.close()


def test_the_default_body_is_the_logstash_object(tmp_path, trails):
    hook = WebhookReceiver()
    try:
        conf = write_conf(tmp_path / "maltrail.toml", sensor={"alert_webhook_url": hook.url()})
        pcap = write_pcap(tmp_path / "x.pcap", [g.tcp_frame("10.0.0.1", "203.0.113.66", 40001, 443)])
        assert replay(conf, trails, tmp_path / "log", pcap).returncode == 0
        assert hook.bodies() == [json.dumps({
            "timestamp": T0_S, "sensor": "s1", "severity": "high", "src_ip": "10.0.0.1", "src_port": 40001,
            "dst_ip": "203.0.113.66", "dst_port": 443, "proto": "TCP", "type": "IP", "trail": "203.0.113.66",
            "info": "corpus c2 (malware)", "reference": "(corpus)"}).encode()]
    finally:
        hook.close()


def test_throttling_holds_per_source_and_trail(tmp_path, trails):
    hook = WebhookReceiver()
    try:
        conf = write_conf(tmp_path / "maltrail.toml", sensor={
            "alert_webhook_url": hook.url(), "alert_format": "%(src_ip)s %(timestamp)s %(trail)s",
            "alert_throttle_s": 3, "condense_window_s": 1})
        # one source calling the same c2 at 0, 2 and 4 s (each a new record: the condensing window is
        # 1 s); another source at 2 s; and the first source's other trail at 1 s
        pcap = write_pcap(tmp_path / "x.pcap", [
            (0, g.tcp_frame("10.0.0.1", "203.0.113.66", 40001, 443)),
            (1, g.tcp_frame("10.0.0.1", "203.0.113.69", 40002, 443)),
            (2, g.tcp_frame("10.0.0.1", "203.0.113.66", 40003, 443)),
            (2.5, g.tcp_frame("10.0.0.2", "203.0.113.66", 40004, 443)),
            (4, g.tcp_frame("10.0.0.1", "203.0.113.66", 40005, 443)),
        ])
        stats = tmp_path / "stats.json"
        result = replay(conf, trails, tmp_path / "log", pcap, extra=("--stats-json", str(stats)))
        assert result.returncode == 0, result.stderr
        assert len(log_records(tmp_path / "log")) == 5
        assert [b.decode() for b in hook.bodies()] == [
            "10.0.0.1 %d 203.0.113.66" % T0_S, "10.0.0.1 %d 203.0.113.69" % (T0_S + 1),
            "10.0.0.2 %d 203.0.113.66" % (T0_S + 2), "10.0.0.1 %d 203.0.113.66" % (T0_S + 4)]
        counts = _stats(stats)
        assert counts["throttled"] == 1 and counts["alerted"] == 4
    finally:
        hook.close()


def test_an_outage_loses_nothing_and_sends_nothing_twice(tmp_path, trails):
    hook = WebhookReceiver(answers=[503, 502, 500])
    conf = write_conf(tmp_path / "maltrail.toml", sensor={
        "alert_webhook_url": hook.url(), "alert_format": "%(src_ip)s", "alert_throttle_s": 0})
    sensor = FifoSensor(tmp_path, trails, conf)
    try:
        sensor.batch([g.tcp_frame("10.0.0.%d" % i, "203.0.113.66", 40000 + i, 443) for i in range(1, 4)])
        wait_for(lambda: len(hook.posts) == 3, timeout_s=60, what="three alerts after the outage")
        stats = sensor.finish()
    finally:
        sensor.kill()
        hook.close()
    assert hook.statuses == [503, 502, 500, 200, 200, 200]
    assert hook.bodies() == [b"10.0.0.1", b"10.0.0.2", b"10.0.0.3"]
    text = sensor.text()
    assert "answered 503" in text and "events wait in the log" in text and "reachable again" in text
    assert "s3cret" not in text
    (counts,) = stats["forwarders"].values()
    assert counts["alerted"] == 3 and counts["refused"] == 0 and counts["failed"] == 3


def test_a_receiver_down_across_a_restart_gets_every_alert_once(tmp_path, trails):
    hook = WebhookReceiver()
    url = hook.url()
    hook.close()                                     # nothing listens on that port now
    conf = write_conf(tmp_path / "maltrail.toml", sensor={"alert_webhook_url": url, "alert_format": "%(src_ip)s",
                                                          "alert_throttle_s": 0})
    first = write_pcap(tmp_path / "a.pcap", [g.tcp_frame("10.0.0.1", "203.0.113.66", 40001, 443),
                                             g.tcp_frame("10.0.0.2", "203.0.113.66", 40002, 443)])
    result = replay(conf, trails, tmp_path / "log", first)
    assert result.returncode == 0, result.stderr
    assert "unreachable" in result.stderr and "Connection refused" in result.stderr
    revived = WebhookReceiver(port=hook.port)
    try:
        second = write_pcap(tmp_path / "b.pcap", [g.tcp_frame("10.0.0.3", "203.0.113.66", 40003, 443)],
                            start_s=T0_S + 10)
        result = replay(conf, trails, tmp_path / "log", second)
        assert result.returncode == 0, result.stderr
        assert revived.bodies() == [b"10.0.0.1", b"10.0.0.2", b"10.0.0.3"]
    finally:
        revived.close()


def test_a_refused_alert_is_counted_said_once_and_skipped(tmp_path, trails):
    hook = WebhookReceiver(answers=[lambda body: 400 if b"203.0.113.66" in body else 200] * 4)
    try:
        conf = write_conf(tmp_path / "maltrail.toml", sensor={
            "alert_webhook_url": hook.url(), "alert_format": "%(src_ip)s %(trail)s", "alert_throttle_s": 0})
        pcap = write_pcap(tmp_path / "x.pcap", [
            g.tcp_frame("10.0.0.1", "203.0.113.66", 40001, 443), g.tcp_frame("10.0.0.2", "203.0.113.69", 40002, 443),
            g.tcp_frame("10.0.0.3", "203.0.113.66", 40003, 443), g.tcp_frame("10.0.0.4", "203.0.113.69", 40004, 443)])
        stats = tmp_path / "stats.json"
        result = replay(conf, trails, tmp_path / "log", pcap, extra=("--stats-json", str(stats)))
        assert result.returncode == 0, result.stderr
        assert hook.statuses == [400, 200, 400, 200]                       # each offered once
        assert hook.bodies() == [b"10.0.0.2 203.0.113.69", b"10.0.0.4 203.0.113.69"]
        assert result.stderr.count("refused an alert with 400") == 1 and "no thanks" in result.stderr
        counts = _stats(stats)
        assert counts["refused"] == 2 and counts["failed"] == 0
    finally:
        hook.close()


def _certificates(tmp_path):
    """A CA and a certificate for 127.0.0.1 it signed, made with openssl."""
    def run(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=tmp_path)
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
        "-subj", "/CN=test CA", "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=keyCertSign")
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1")
    (tmp_path / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "server.pem", "-days", "2", "-extfile", "ext.cnf")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "server.pem", tmp_path / "server.key")
    return tmp_path / "ca.pem", context


def test_https_verifies_the_certificate_always(tmp_path, trails):
    ca, server_context = _certificates(tmp_path)
    hook = WebhookReceiver(tls=server_context)
    try:
        pcap = write_pcap(tmp_path / "x.pcap", [g.tcp_frame("10.0.0.1", "203.0.113.66", 40001, 443)])
        unverified = write_conf(tmp_path / "plain.toml", sensor={"alert_webhook_url": hook.url(scheme="https"),
                                                                 "alert_format": "%(src_ip)s"})
        result = replay(unverified, trails, tmp_path / "log1", pcap)
        assert result.returncode == 0, result.stderr
        assert "certificate does not verify" in result.stderr and hook.posts == []
        verified = write_conf(tmp_path / "ca.toml", sensor={"alert_webhook_url": hook.url(scheme="https"),
                                                            "alert_format": "%(src_ip)s", "alert_ca_file": str(ca)})
        result = replay(verified, trails, tmp_path / "log2", pcap)
        assert result.returncode == 0, result.stderr
        assert hook.bodies() == [b"10.0.0.1"]
    finally:
        hook.close()


def test_the_total_timeout_holds_against_a_server_that_never_answers():
    from events.forwarders.base import Unreachable
    from events.forwarders.webhook import Webhook
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(4)
    held = []
    threading.Thread(target=lambda: held.append(silent.accept()), daemon=True).start()
    hook = Webhook("http://127.0.0.1:%d/x" % silent.getsockname()[1], severity="low", total_timeout_s=0.5)
    with pytest.raises(Unreachable, match="no answer within"):
        hook.deliver([b"{}"])
    silent.close()
