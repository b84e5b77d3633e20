"""Forwarding configuration, as an operator meets it: a malformed destination is an error naming
the key and the fix, before anything starts; a TLS file that cannot be used is named at start;
a destination whose name resolves to nothing is said, retried and never fatal (its events wait in
the log, or, best effort, are counted as dropped)."""

from __future__ import annotations

import re
import subprocess
import time

import pytest

from tests.collectors import Sensor, dns_frames, logged_events, write_config
from tests.test_corpus import console_script
from tests.test_forward_rsyslog import artifact  # noqa: F401 (a fixture)


@pytest.mark.parametrize("key, value, says", [
    ("syslog_server", "tcp://collector", r"the port is missing \(host:port\)"),
    ("syslog_server", "ftp://collector:514", r"the scheme must be udp:// or tcp:// or tls://"),
    ("syslog_server", "udp://fe80::1:514", r"an IPv6 address goes in brackets: \[fe80::1\]:PORT"),
    ("syslog_server", "collector:0", r"the port must be from 1 to 65535"),
    ("syslog_server", "collector:99999", r"the port must be from 1 to 65535"),
    ("syslog_server", ["tcp://a:514", "tls://"], r"the host is missing \(item 2\)"),
    ("syslog_server", "tcp://collector:514/path", r"only scheme://host:port is allowed"),
    ("log_server", "tcp://collector:8337", r"the scheme must be udp://; allowed: a destination \"host:port\""),
    ("logstash_server", "tls://collector:5000", r"the scheme must be udp:// or tcp://"),
    ("syslog_format", "cef", r"it is neither maltrail nor rfc5424"),
])
def test_a_malformed_destination_is_an_error_naming_the_key_and_the_fix(key, value, says, artifact, tmp_path):  # noqa: F811
    conf = write_config(tmp_path / "maltrail.toml", {key: value})
    for command in (["check-config", "-c", str(conf), "--config-only"],
                    ["replay", "-c", str(conf), "--trails", artifact, "--log-dir", str(tmp_path / "log"),
                     str(tmp_path / "none.pcap")]):
        done = subprocess.run([console_script(), *command], capture_output=True, text=True, timeout=120)
        assert done.returncode == 2, done.stderr
        assert re.search(r"maltrail\.toml:2: \[sensor\] %s = .* is not valid: %s" % (key, says), done.stderr), \
            done.stderr
    assert not (tmp_path / "log").exists()          # nothing started


@pytest.mark.parametrize("keys, says", [
    ({"syslog_ca_file": "/nonexistent/ca.pem"}, r"syslog_ca_file '/nonexistent/ca\.pem' cannot be used: No such file"),
    ({"syslog_client_cert": "/nonexistent/client.pem"},
     r"syslog_client_cert '/nonexistent/client\.pem' cannot be used: No such file"),
    ({"syslog_client_key": "/nonexistent/client.key"}, r"syslog_client_key is set without syslog_client_cert"),
])
def test_a_tls_file_that_cannot_be_used_is_named_at_start(keys, says, artifact, tmp_path):  # noqa: F811
    conf = write_config(tmp_path / "maltrail.toml", dict({"syslog_server": "tls://localhost:6514"}, **keys))
    pcap = tmp_path / "empty.pcap"
    from engine.sources import synthetic as g
    with g.PcapWriter(str(pcap)):
        pass
    done = subprocess.run([console_script(), "replay", "-c", str(conf), "--trails", artifact, "--log-dir",
                           str(tmp_path / "log"), str(pcap)], capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert re.search(r"forwarding: syslog_server tls://localhost:6514: %s" % says, done.stderr), done.stderr


def test_a_destination_that_resolves_to_nothing_is_said_retried_and_not_fatal(artifact, tmp_path):  # noqa: F811
    """`.invalid` never resolves (RFC 6761). The sensor runs and logs every event; the TCP
    destination keeps them waiting (sent 0, dropped 0, retried), the UDP one counts them as
    dropped; each is said once."""
    sensor = Sensor(tmp_path / "sensor", artifact, tmp_path / "log", syslog_server=["tcp://collector.invalid:514"],
                    log_server="collector.invalid:8337").start()
    try:
        sensor.feed(dns_frames(0, 20))
        sensor.wait_line(r"syslog_server tcp://collector\.invalid:514 unreachable: collector\.invalid does not "
                         r"resolve: .*; events wait in the log")
        sensor.wait_line(r"log_server collector\.invalid:8337 unreachable: collector\.invalid does not resolve")
        time.sleep(1.5)               # the TCP destination's first retry, a second after the first try
    finally:
        code = sensor.finish()
    assert code == 0, sensor.text()
    assert len(logged_events(tmp_path / "log")) == 20
    text = sensor.text()
    tcp = re.search(r"forwarded to syslog_server tcp://collector\.invalid:514: sent 0, failed deliveries (\d+), "
                    r"dropped 0", text)
    assert tcp and int(tcp.group(1)) >= 2, text
    assert re.search(r"forwarded to log_server collector\.invalid:8337: sent 0, failed deliveries \d+, dropped 20",
                     text), text
    assert len(re.findall("unreachable", text)) == 2, text
