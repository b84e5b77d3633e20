"""`json_output`: ECS JSON lines of every event, to a file or over TCP, through the real sensor.

- Every field of every document is an ECS 8.x field of the ECS type, with a value ECS allows
  (the definitions below are transcribed from the ECS reference: field, type, allowed or expected
  values, and which event.type each event.category expects), or lies under our own `maltrail.*`;
  the documents are the log's records one for one, in order, and README.md documents each field.
- The file is appended, created exclusively, never written through a symlink planted at its
  name (what it holds waits in the log and follows once the name is free); a directory anyone
  may write in is refused at start, naming the fix; a file moved away by logrotate is followed
  by a new one, and nothing is lost or written twice.
- Over TCP: a line each; a collector that is down when the events come gets every one of them
  once it listens, exactly once.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
from pathlib import Path

import pytest

from engine.sources import synthetic as g
from tests.test_outputs import (
    CORPUS, T0_S, Collector, FifoSensor, account_dir, artifact, log_records, replay, wait_for, write_conf,
    write_pcap,
)

REPO = Path(__file__).resolve().parent.parent

# ECS 8.x definitions of the fields the documents use (ECS reference: field, type, and where ECS
# constrains the value, its allowed or expected values). Types: keyword, match_only_text, date,
# ip, long; a field may hold an array of its type.
ECS = {
    "@timestamp": ("date", None),
    "message": ("match_only_text", None),
    "ecs.version": ("keyword", None),
    "event.kind": ("keyword", {"alert", "asset", "enrichment", "event", "metric", "state", "pipeline_error",
                               "signal"}),
    "event.category": ("keyword", {"api", "authentication", "configuration", "database", "driver", "file",
                                   "host", "iam", "intrusion_detection", "library", "malware", "network",
                                   "package", "process", "registry", "session", "threat", "vulnerability", "web"}),
    "event.type": ("keyword", {"access", "admin", "allowed", "change", "connection", "creation", "deletion",
                               "denied", "end", "error", "group", "indicator", "info", "installation", "protocol",
                               "start", "user"}),
    "event.module": ("keyword", None),
    "event.dataset": ("keyword", None),
    "event.severity": ("long", None),
    "event.start": ("date", None),
    "event.end": ("date", None),
    "source.ip": ("ip", None),
    "source.port": ("long", None),
    "destination.ip": ("ip", None),
    "destination.port": ("long", None),
    "network.transport": ("keyword", None),
    "network.type": ("keyword", None),
    "network.protocol": ("keyword", None),
    "observer.name": ("keyword", None),
    "observer.type": ("keyword", None),
    "observer.vendor": ("keyword", None),
    "observer.product": ("keyword", None),
    "observer.version": ("keyword", None),
    "rule.name": ("keyword", None),
    "rule.ruleset": ("keyword", None),
    "rule.reference": ("keyword", None),
    "related.ip": ("ip", None),
    "threat.indicator.name": ("keyword", None),
    "threat.indicator.type": ("keyword", {"autonomous-system", "artifact", "directory", "domain-name", "email-addr",
                                          "file", "ipv4-addr", "ipv6-addr", "mac-addr", "mutex", "port", "process",
                                          "software", "url", "user-account", "windows-registry-key",
                                          "x509-certificate"}),
    "threat.indicator.ip": ("ip", None),
    "threat.indicator.port": ("long", None),
    "threat.indicator.url.domain": ("keyword", None),
    "threat.indicator.description": ("keyword", None),
    "threat.indicator.provider": ("keyword", None),
}
# ECS categorization: the event.type values each event.category expects.
EXPECTED_TYPES = {"network": {"access", "allowed", "connection", "denied", "end", "info", "protocol", "start"},
                  "intrusion_detection": {"allowed", "denied", "info"}}
_DATE = re.compile(r"\A\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z\Z")
_LOWER = re.compile(r"\A[a-z0-9-]+\Z")


def _leaves(doc: dict, prefix: str = ""):
    for key, value in doc.items():
        name = prefix + key
        if isinstance(value, dict):
            yield from _leaves(value, name + ".")
        else:
            yield name, value


def _valid(kind: str, value) -> bool:
    if kind == "date":
        return isinstance(value, str) and bool(_DATE.match(value))
    if kind == "long":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "ip":
        try:
            ipaddress.ip_address(value)
            return True
        except (TypeError, ValueError):
            return False
    return isinstance(value, str) and value != ""


def check_ecs(doc: dict) -> None:
    for name, value in _leaves(doc):
        if name.startswith("maltrail."):
            continue            # our own namespace, for what ECS has no name for
        assert name in ECS, "%s is not an ECS field" % name
        kind, allowed = ECS[name]
        for item in value if isinstance(value, list) else [value]:
            assert _valid(kind, item), (name, item)
            assert allowed is None or item in allowed, (name, item)
    for category in doc["event"]["category"]:
        assert set(doc["event"]["type"]) <= EXPECTED_TYPES[category]
    for name in ("network.transport", "network.type", "network.protocol"):
        section, key = name.split(".")
        for item in (lambda v: v if isinstance(v, list) else [v])(doc.get(section, {}).get(key, [])):
            assert _LOWER.match(item), (name, item)     # ECS: lower case, IANA names


def _seconds_us(text: str) -> int:
    import datetime
    moment = datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=datetime.timezone.utc)
    return int(moment.timestamp()) * 1_000_000 + moment.microsecond


@pytest.fixture(scope="module")
def trails(tmp_path_factory):
    return artifact(tmp_path_factory.mktemp("trails") / "trails.mtdb", 'quote"d.evil-quote.org,quote test (malware),(test)',
                    "198.51.100.200,a feed's label (malware),https://feeds.example.org/list")


def _every_kind_of_event():
    c, v6 = "10.0.0.1", "2001:db8::10"
    frames = [
        g.udp_frame(c, "10.0.0.53", 40000, 53, g.dns_query("www.evil-parent.net")),                      # DNS
        g.tcp_frame(c, "203.0.113.66", 40001, 443),                                                    # IP
        g.tcp_frame(c, "203.0.113.66", 40011, 443),                                                    # repeats: a
        g.tcp_frame(c, "203.0.113.66", 40012, 443),                                                    # condensed list
        g.tcp_frame(v6, "2001:db8:bad::2", 40002, 443),                                                # IPORT, IPv6
        g.tcp_frame("192.0.2.130", c, 40003, 443),                                                     # a range
        g.tcp_frame(c, "198.51.100.10", 40004, 443, g.TCP_PSH | g.TCP_ACK, g.tls_client_hello("tls-evil.org")),
        g.tcp_frame(c, "198.51.100.11", 40005, 80, g.TCP_PSH | g.TCP_ACK,
                    g.http_request("GET", "/drop/payload", host="files-evil.biz")),                    # URL
        g.tcp_frame(c, "198.51.100.12", 40006, 80, g.TCP_PSH | g.TCP_ACK,
                    g.http_request("GET", "/", host="ok.example", user_agent="evilbot/2.0")),          # UA
        g.icmp_frame(c, "203.0.113.69"),                                                               # no ports
        g.tcp_frame(c, "198.51.100.200", 40007, 443),                                                  # URL reference
        g.udp_frame(c, "10.0.0.53", 40008, 53, g.dns_query('quote"d.evil-quote.org')),                 # a quote
    ]
    frames += [g.tcp_frame("10.0.0.7", "10.0.0.8", 50000, 1000 + port) for port in range(12)]       # a port scan
    return frames


def test_every_field_is_ecs_and_every_record_is_a_document(tmp_path, trails):
    out = account_dir(tmp_path / "out")
    conf = write_conf(tmp_path / "maltrail.toml", sensor={"json_output": ["file://%s/ecs.json" % out]})
    pcap = write_pcap(tmp_path / "x.pcap", _every_kind_of_event())
    result = replay(conf, trails, tmp_path / "log", pcap)
    assert result.returncode == 0, result.stderr
    records = log_records(tmp_path / "log")
    lines = (out / "ecs.json").read_text().splitlines()
    docs = [json.loads(line) for line in lines]
    assert len(docs) == len(records) == 13
    assert all(line.isascii() for line in lines)
    for doc, record in zip(docs, records):
        check_ecs(doc)
        assert _seconds_us(doc["@timestamp"]) == _seconds_us(doc["event"]["start"]) == record["ts_us"]
        assert _seconds_us(doc["event"]["end"]) == record["last_ts_us"]
        assert doc["observer"]["name"] == "s1" == record["sensor"]
        assert doc["maltrail"]["count"] == record["count"] and doc["maltrail"]["trail"] == record["trail"]
        assert doc["rule"]["name"] == record["info"]
        assert doc["event"]["severity"] == {"low": 21, "medium": 47, "high": 73}[record["severity"]]
        assert doc["event"]["kind"] == "alert"
        if record["reference"] == "(heuristic)":
            assert "threat" not in doc and doc["rule"]["ruleset"] == "heuristics"
        else:
            assert doc["threat"]["indicator"]["name"] == record["trail"]
            assert doc["threat"]["indicator"]["provider"] == record["reference"]
        if isinstance(record["src_port"], int):
            assert doc["source"]["port"] == record["src_port"]
        if record["src_port"] is None and record["dst_port"] is None:
            assert "port" not in doc["source"] and "port" not in doc["destination"]
    by_trail = {d["maltrail"]["trail"]: d for d in docs if d["maltrail"]["count"] == 1}
    dns = by_trail["(www).evil-parent.net"]
    assert dns["threat"]["indicator"]["type"] == "domain-name"
    assert dns["threat"]["indicator"]["url"]["domain"] == "evil-parent.net"
    assert dns["network"] == {"transport": "udp", "type": "ipv4", "protocol": "dns"}
    ipport = next(d for d in docs if d["maltrail"]["type"] == "IPORT")
    assert ipport["threat"]["indicator"]["type"] == ["ipv6-addr", "port"]
    assert ipport["threat"]["indicator"]["ip"] == "2001:db8:bad::2" and ipport["threat"]["indicator"]["port"] == 443
    assert ipport["network"]["type"] == "ipv6"
    ranged = next(d for d in docs if "(192.0.2.128/25)" in d["maltrail"]["trail"])
    assert ranged["threat"]["indicator"]["ip"] == "192.0.2.130"
    sni = next(d for d in docs if d["maltrail"]["type"] == "SNI")
    assert sni["network"]["protocol"] == "tls" and sni["threat"]["indicator"]["url"]["domain"] == "tls-evil.org"
    icmp = next(d for d in docs if d["network"].get("transport") == "icmp")
    assert set(icmp["source"]) == {"ip"}
    feed = next(d for d in docs if d["maltrail"]["trail"] == "198.51.100.200")
    assert feed["rule"]["reference"] == "https://feeds.example.org/list"
    quoted = next(d for d in docs if "quote" in d["maltrail"]["info"])
    assert quoted["maltrail"]["trail"] == 'quote"d.evil-quote.org'
    scan = next(d for d in docs if d["maltrail"]["reference"] == "(heuristic)")
    assert scan["rule"]["name"] == "potential port scanning"
    # the condensed follow-up: one record for the two repeats, its ports an array, its text kept
    follow = next(d for d in docs if d["maltrail"]["trail"] == "203.0.113.66" and d["maltrail"]["count"] == 2)
    assert follow["source"]["port"] == [40011, 40012] and follow["maltrail"]["src_port"] == "40011,40012"


def test_readme_documents_every_field(tmp_path):
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## ECS JSON output"):]
    section = section[:section.index("\n## ", 4)]
    for name in list(ECS) + ["maltrail.type", "maltrail.trail", "maltrail.info", "maltrail.reference",
                             "maltrail.severity", "maltrail.count"]:
        assert "`%s`" % name in section, name


def test_a_symlink_at_the_name_is_never_written_through_and_its_events_wait(tmp_path, trails):
    out = account_dir(tmp_path / "out")
    target = tmp_path / "elsewhere.txt"
    target.write_text("precious\n")
    os.symlink(target, out / "ecs.json")
    conf = write_conf(tmp_path / "maltrail.toml", sensor={"json_output": ["file://%s/ecs.json" % out]})
    first = write_pcap(tmp_path / "a.pcap", [g.tcp_frame("10.0.0.1", "203.0.113.66", 40001, 443)])
    result = replay(conf, trails, tmp_path / "log", first)
    assert result.returncode == 0, result.stderr
    assert "is a symbolic link" in result.stderr and "never written through" in result.stderr
    assert target.read_text() == "precious\n"
    os.unlink(out / "ecs.json")
    second = write_pcap(tmp_path / "b.pcap", [g.tcp_frame("10.0.0.2", "203.0.113.69", 40002, 443)], start_s=T0_S + 5)
    result = replay(conf, trails, tmp_path / "log", second)
    assert result.returncode == 0, result.stderr
    docs = [json.loads(line) for line in (out / "ecs.json").read_text().splitlines()]
    assert [d["source"]["ip"] for d in docs] == ["10.0.0.1", "10.0.0.2"]      # the first run's waited
    assert not (out / "ecs.json").is_symlink() and os.stat(out / "ecs.json").st_mode & 0o777 == 0o640


def test_a_directory_anyone_may_write_in_is_refused_at_start(tmp_path, trails):
    out = tmp_path / "open"
    out.mkdir()
    os.chmod(out, 0o777)
    conf = write_conf(tmp_path / "maltrail.toml", sensor={"json_output": ["file://%s/ecs.json" % out]})
    pcap = write_pcap(tmp_path / "x.pcap", [g.tcp_frame("10.0.0.1", "203.0.113.66", 40001, 443)])
    result = replay(conf, trails, tmp_path / "log", pcap)
    assert result.returncode == 1
    assert "json_output file://%s/ecs.json" % out in result.stderr and "chmod o-w" in result.stderr
    assert not (out / "ecs.json").exists()


def test_a_file_logrotate_moved_away_is_followed_by_a_new_one(tmp_path, trails):
    out = account_dir(tmp_path / "out")
    conf = write_conf(tmp_path / "maltrail.toml", sensor={"json_output": ["file://%s/ecs.json" % out]})
    sensor = FifoSensor(tmp_path, trails, conf)
    try:
        sensor.batch([g.tcp_frame("10.0.0.1", "203.0.113.66", 40001, 443)])
        wait_for(lambda: (out / "ecs.json").exists() and (out / "ecs.json").read_text().count("\n") == 1,
                 what="the first line")
        os.rename(out / "ecs.json", out / "ecs.json.1")            # what logrotate does
        sensor.batch([g.tcp_frame("10.0.0.2", "203.0.113.69", 40002, 443)], at_s=T0_S + 120)
        wait_for(lambda: (out / "ecs.json").exists() and (out / "ecs.json").read_text().count("\n") == 1,
                 what="a new file with the second line")
        stats = sensor.finish()
    finally:
        sensor.kill()
    rotated = [json.loads(line)["source"]["ip"] for line in (out / "ecs.json.1").read_text().splitlines()]
    current = [json.loads(line)["source"]["ip"] for line in (out / "ecs.json").read_text().splitlines()]
    assert rotated == ["10.0.0.1"] and current == ["10.0.0.2"]
    (only,) = stats["forwarders"].values()
    assert only["reopened"] == 1 and only["sent"] == 2


def test_a_tcp_collector_that_was_down_gets_every_event_once_it_listens(tmp_path, trails):
    collector = Collector()
    port = collector.port
    collector.stop()                         # nothing listens yet
    conf = write_conf(tmp_path / "maltrail.toml", sensor={"json_output": ["tcp://127.0.0.1:%d" % port]})
    sensor = FifoSensor(tmp_path, trails, conf)
    try:
        sensor.batch([g.tcp_frame("10.0.0.%d" % i, "203.0.113.66", 40000 + i, 443) for i in range(1, 4)])
        wait_for(lambda: len(log_records(sensor.log)) == 3, what="three events in the log")
        wait_for(lambda: "unreachable" in sensor.text(), what="the forwarder saying the collector is down")
        collector = Collector(port)
        sensor.batch([g.tcp_frame("10.0.0.9", "203.0.113.69", 40009, 443)], at_s=T0_S + 10)
        wait_for(lambda: len(collector.lines) == 4, what="four lines at the collector")
        sensor.finish()
    finally:
        sensor.kill()
        collector.stop()
    docs = collector.json()
    assert [d["source"]["ip"] for d in docs] == ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.9"]
    for doc in docs:
        check_ecs(doc)
    assert "reachable again" in sensor.text()
