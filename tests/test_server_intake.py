"""The server's UDP intake and store through the installed `maltrail-engine server`, on loopback.

Datagrams are built here from the documented layout (Maltrail's event line: fields separated by
spaces, a value holding a space or a double quote quoted with inner quotes doubled, '-' for an
empty value; optionally prefixed by "<epoch seconds> "), never by our own formatter, and sent to
a real server process. What it stored is read back three ways: `maltrail-engine tail --log-dir`
on its directory, the store interface (server/store) on the files after the server stopped, and
its /api/v1/health counters. Nothing here is timed: waits poll the server's own counters, with a
generous limit only so that a broken server fails instead of hanging.
"""

from __future__ import annotations

import calendar
import json
import os
import signal
import socket
import sqlite3
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from events.log import EventLogWriter
from events.record import Event
from server.store import AggregateQuery, EventQuery, StoreError, TimeRange
from server.store.sqlite import SqliteStore
from tests.collectors import free_port
from tests.server_proc import WAIT_LIMIT_S, ServerProc
from tests.test_corpus import console_script

# 2026-11-24 10:00:00 UTC; the server runs with TZ=UTC so a bare line's time reads the same.
T0_S = calendar.timegm((2026, 11, 24, 10, 0, 0, 0, 0, 0))
DAY_US = 86_400_000_000


def field(value) -> str:
    """One field by the documented rule."""
    text = "-" if value is None or value == "" else str(value)
    if " " in text or '"' in text:
        text = '"' + text.replace('"', '""') + '"'
    return text


def line(ts_us, sensor, src, sport, dst, dport, proto, typ, trail, info, ref) -> str:
    seconds, micros = divmod(ts_us, 1_000_000)
    clock = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(seconds)) + ".%06d" % micros
    return " ".join(field(v) for v in (clock, sensor, src, sport, dst, dport, proto, typ, trail, info, ref))


# (event fields, severity expected under the default rule, sent with the epoch prefix?)
CASES = [
    ((T0_S * 1_000_000 + 1, "sensor-a", "10.0.0.1", 40001, "192.0.2.1", 53, "UDP", "DNS", "evil.example",
      "malware (test)", "(static)"), "high", True),
    ((T0_S * 1_000_000 + 2_000_002, "sensor-a", "10.0.0.2", 40002, "192.0.2.9", 80, "TCP", "URL",
      "bad.example/a b", 'say "hi" there', "feed x"), "medium", False),
    ((T0_S * 1_000_000 + 3_000_003, "sensor b", "2001:db8::1", None, "2001:db8:ffff::2", None, "ICMPV6", "IP",
      "2001:db8:ffff::2", "known attacker", "(static)"), "low", True),
    ((T0_S * 1_000_000 + 3_600_000_004, "sensor-a", "10.0.1.7", 51000, "198.51.100.4", 443, "TCP", "IP",
      "198.51.100.4", "", ""), "medium", False),
    ((T0_S * 1_000_000 + 3_600_000_005, "sensor-c", "10.0.0.1", 40003, "192.0.2.1", 53, "UDP", "DNS",
      "evil.example", "malware (test)", "(static)"), "high", True),
    ((T0_S * 1_000_000 + 7_200_000_006, "sensor-a", "::ffff:10.9.9.9", 1, "2001:db8::99", 65535, "TCP", "IPORT",
      "2001:db8::99:65535", '"quoted"', '""'), "medium", False),
]

MALFORMED = {
    b"": "empty",
    b"\xff\xfe not utf-8": "not_utf8",
    b"hello world": "no_event_line",
    b'%d "2026-11-24 10:00:00.000000 s a' % T0_S: "quoting",
    b'"2026-11-24 10:00:00.000000" s 10.0.0.1 1 10.0.0.2 2 TCP IP 10.0.0.2 info': "field_count",
    b'"2026-13-24 10:00:00.000000" s 10.0.0.1 1 10.0.0.2 2 TCP IP 10.0.0.2 info ref': "time",
    b'"2026-11-24 10:00:00.000000" s not-an-ip 1 10.0.0.2 2 TCP IP 10.0.0.2 info ref': "address",
    b'"2026-11-24 10:00:00.000000" s 10.0.0.1 70000 10.0.0.2 2 TCP IP 10.0.0.2 info ref': "port",
    b'"2026-11-24 10:00:00.000000" s 10.0.0.1 1 10.0.0.2 2 TCP IP - info ref': "missing_field",
    b"99999999999999 " + b'"2026-11-24 10:00:00.000000" s 10.0.0.1 1 10.0.0.2 2 TCP IP x i r': "no_event_line",
    b"999999999999 " + b'"2026-11-24 10:00:00.000000" s 10.0.0.1 1 10.0.0.2 2 TCP IP x i r': "epoch",
    b"MTS1 0123456789abcdef0123456789abcdef 1 x": "signed",
}


def expected_events() -> list[dict]:
    out = []
    for (ts, sensor, src, sp, dst, dp, proto, typ, trail, info, ref), severity, _ in CASES:
        out.append(dict(ts_us=ts, sensor=sensor, src_ip=src, src_port=sp, dst_ip=dst, dst_port=dp, proto=proto,
                        type=typ, trail=trail, info=info, reference=ref, severity=severity))
    return out


def datagrams() -> list[bytes]:
    out = []
    for fields, _severity, prefixed in CASES:
        text = line(*fields)
        out.append(("%d %s\n" % (fields[0] // 1_000_000, text) if prefixed else text).encode())
    return out


def udp(h) -> dict:
    return h["intake"]["udp"]


def tail_json(log_dir: Path) -> list[dict]:
    out = subprocess.run([console_script(), "tail", "--log-dir", str(log_dir), "--format", "json"],
                         capture_output=True, text=True, timeout=120, env=dict(os.environ, TZ="UTC"))
    assert out.returncode == 0, out.stderr
    return [json.loads(x) for x in out.stdout.splitlines()]


def comparable(e: dict) -> tuple:
    return tuple(e[k] if e[k] not in (None,) else "" for k in (
        "ts_us", "sensor", "src_ip", "src_port", "dst_ip", "dst_port", "proto", "type", "trail", "info",
        "reference", "severity"))


def every_event(store, since_us, until_us, limit=2) -> list[Event]:
    """All events of the range through the store's pages (newest first), following the cursor."""
    found, cursor = [], None
    while True:
        page = store.events(EventQuery(TimeRange(since_us, until_us), limit=limit, cursor=cursor))
        assert not page.partial
        found += page.events
        if page.next_cursor is None:
            return found
        cursor = page.next_cursor


def as_dict(e: Event) -> dict:
    return e._asdict()


@pytest.fixture
def stored(tmp_path):
    """A server that received CASES and MALFORMED, then stopped with SIGTERM: (server, health)."""
    server = ServerProc(tmp_path).start()
    sent = datagrams() + list(MALFORMED)
    server.send(sent)
    h = server.until(lambda h: udp(h)["datagrams"] == len(sent) and udp(h)["backlog"] == 0
                     and udp(h)["parsed"] + sum(udp(h)["refused"].values()) == len(sent))
    assert server.stop() == 0, server.stderr()
    return server, h


def test_datagrams_become_the_same_events_in_the_log(stored):
    server, h = stored
    assert udp(h)["stored"] == len(CASES) and udp(h)["dropped"] == {}
    logged = tail_json(server.log_dir)
    assert sorted(map(comparable, logged)) == sorted(map(comparable, expected_events()))


def test_malformed_datagrams_are_counted_by_reason(stored):
    _server, h = stored
    want: dict[str, int] = {}
    for reason in MALFORMED.values():
        want[reason] = want.get(reason, 0) + 1
    assert udp(h)["refused"] == want
    assert udp(h)["parsed"] == len(CASES)


def test_the_index_answers_the_store_queries(stored):
    server, _h = stored
    expected = expected_events()
    since, until = T0_S * 1_000_000 - DAY_US, T0_S * 1_000_000 + DAY_US
    with SqliteStore(str(server.log_dir)) as store:
        # Every event once, newest first, through cursor pages of 2.
        paged = every_event(store, since, until)
        assert [e.ts_us for e in paged] == sorted((e["ts_us"] for e in expected), reverse=True)
        assert sorted(comparable(as_dict(e)) for e in paged) == sorted(map(comparable, expected))

        def ts(q) -> list[int]:
            page = store.events(EventQuery(TimeRange(since, until), limit=100, **q))
            assert page.next_cursor is None and not page.partial
            return sorted(e.ts_us for e in page.events)

        def want(pred) -> list[int]:
            return sorted(e["ts_us"] for e in expected if pred(e))

        assert ts({"src": "10.0.0.0/24"}) == want(lambda e: e["src_ip"].startswith("10.0.0."))
        # An IPv4 CIDR covers IPv4-mapped IPv6 addresses in it too (one key space).
        assert ts({"src": "10.0.0.0/8"}) == want(lambda e: e["src_ip"].startswith(("10.", "::ffff:10.")))
        # An IPv4-mapped IPv6 source is the IPv4 address it maps.
        assert ts({"src": "10.9.9.9"}) == want(lambda e: e["src_ip"] == "::ffff:10.9.9.9")
        assert ts({"dst": "2001:db8::/32"}) == want(lambda e: e["dst_ip"].startswith("2001:db8:"))
        assert ts({"address": "2001:db8::1-2001:db8::1"}) == want(lambda e: "2001:db8::1" in (e["src_ip"], e["dst_ip"]))
        assert ts({"port": 53}) == want(lambda e: 53 in (e["src_port"], e["dst_port"]))
        assert ts({"severity": ("high",)}) == want(lambda e: e["severity"] == "high")
        assert ts({"info": "QUOTED"}) == want(lambda e: "quoted" in e["info"].lower())
        assert ts({"sensor": "sensor b"}) == want(lambda e: e["sensor"] == "sensor b")
        assert ts({"trail": "evil.example", "type": "DNS"}) == want(lambda e: e["trail"] == "evil.example")
        assert ts({"scope": ("2001:db8::/32",)}) == want(
            lambda e: e["src_ip"].startswith("2001:db8:") or e["dst_ip"].startswith("2001:db8:"))

        agg = AggregateQuery(TimeRange(since, until))
        by_type = store.counts(agg, "type")
        hour = 3_600_000_000
        want_counts: dict = {}
        for e in expected:
            key = (e["ts_us"] - e["ts_us"] % hour, e["type"])
            want_counts[key] = want_counts.get(key, 0) + 1
        assert by_type.rows == sorted((k[0], k[1], n) for k, n in want_counts.items())
        assert not by_type.partial
        by_day = store.counts(agg, "severity", bucket="day")
        assert sum(n for _s, _v, n in by_day.rows) == len(expected)
        assert {s for s, _v, _n in by_day.rows} == {(T0_S // 86400) * 86400 * 1_000_000}
        top = store.top(agg, "src_ip", 2)
        assert top.rows == [("10.0.0.1", 2), ("10.0.0.2", 1)]
        threats = store.threats(agg, 1)
        t = threats.rows[0]
        assert (t.src_ip, t.trail, t.events, t.sensors, t.severity) == (
            "10.0.0.1", "evil.example", 2, ("sensor-a", "sensor-c"), "high")
        # The same aggregates computed inside a scope read the rows, and agree.
        scoped = AggregateQuery(TimeRange(since, until), scope=("10.0.0.0/24",))
        assert store.top(scoped, "src_ip", 2).rows == top.rows
        assert store.threats(scoped, 1).rows[0] == t


def test_a_query_past_its_time_budget_says_partial(stored):
    server, _h = stored
    with SqliteStore(str(server.log_dir)) as store:
        page = store.events(EventQuery(TimeRange(0, 1 << 62), budget_ms=0))
        assert page.partial and page.events == []


def index_content(log_dir: Path) -> dict:
    """Every table of every day's database, rows sorted, event ids left out."""
    out = {}
    for db in sorted((log_dir / "index").glob("*.sqlite")):
        conn = sqlite3.connect(db)
        try:
            for table in ("events", "counts_hour", "top_hour", "threats_hour", "log_position"):
                rows = conn.execute("SELECT * FROM %s" % table).fetchall()
                if table == "events":
                    rows = [r[1:] for r in rows]
                out[(db.name, table)] = sorted(rows, key=repr)
        finally:
            conn.close()
    return out


def log_events(log_dir: Path) -> list[tuple]:
    return sorted(comparable(e) for e in tail_json(log_dir))


def index_events(log_dir: Path) -> list[tuple]:
    with SqliteStore(str(log_dir)) as store:
        return sorted(comparable(as_dict(e)) for e in every_event(store, 0, 1 << 62, limit=5000))


def flood(n: int, base_s: int = T0_S) -> list[bytes]:
    return [("%d %s" % (base_s, line((base_s + i // 1000) * 1_000_000 + i % 1_000_000, "s%d" % (i % 3),
                                     "10.%d.%d.%d" % (i >> 16 & 255, i >> 8 & 255, i & 255), 1024 + i % 60000,
                                     "192.0.2.%d" % (i % 200), 80, "TCP", "IP", "192.0.2.%d" % (i % 200),
                                     "event %d" % i, "(static)"))).encode() for i in range(n)]


def test_sigkill_during_intake_then_restart_leaves_the_index_equal_to_the_log(tmp_path):
    server = ServerProc(tmp_path).start()
    payloads = flood(60_000)
    sender = threading.Thread(target=server.send, args=(payloads,))
    sender.start()
    try:
        server.until(lambda h: udp(h)["stored"] > 0)
        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait(timeout=WAIT_LIMIT_S)
    finally:
        sender.join()
    assert log_events(server.log_dir), "nothing reached the log before the kill"
    again = ServerProc(tmp_path, log_dir=server.log_dir).start()
    assert again.stop() == 0, again.stderr()
    assert index_events(server.log_dir) == log_events(server.log_dir)


def test_events_in_the_log_but_not_the_index_are_indexed_at_start(tmp_path):
    """The crash between the log's fsync and the index's commit, made exactly: events appended to
    the server's log by the shared writer while the server is stopped."""
    server = ServerProc(tmp_path).start()
    server.send(datagrams())
    server.until(lambda h: udp(h)["stored"] == len(CASES))
    assert server.stop() == 0
    extra = [Event(T0_S * 1_000_000 + 5_000 + i, "late", "10.7.7.%d" % i, 1000 + i, "192.0.2.77", 25, "TCP", "IP",
                   "192.0.2.77", "spam", "(static)", "medium", 1, T0_S * 1_000_000 + 5_000 + i) for i in range(5)]
    with EventLogWriter(str(server.log_dir)) as writer:
        writer.write(extra)
    again = ServerProc(tmp_path, log_dir=server.log_dir).start()
    h = again.health()
    assert h["store"]["repaired_events"] == len(extra)
    assert again.stop() == 0
    assert "indexed 5 event(s) the log held beyond the index" in again.stderr()
    assert index_events(server.log_dir) == log_events(server.log_dir)
    assert len(index_events(server.log_dir)) == len(CASES) + len(extra)


def test_reindex_reproduces_the_same_index(stored, tmp_path):
    server, _h = stored
    # Several batches and a second day, so roll-ups are summed across commits.
    again = ServerProc(tmp_path, log_dir=server.log_dir).start()
    again.send(flood(3000))
    again.send(flood(500, base_s=T0_S + 86_400))
    again.until(lambda h: udp(h)["stored"] == 3500)
    assert again.stop() == 0
    before = index_content(server.log_dir)
    assert len({db for db, _t in before}) == 2
    out = subprocess.run([console_script(), "server", "reindex", "-c", str(server.config)],
                         capture_output=True, text=True, timeout=300, env=dict(os.environ, TZ="UTC"))
    assert out.returncode == 0, out.stderr
    assert "reindexed" in out.stderr
    assert index_content(server.log_dir) == before


def test_one_process_owns_a_store(tmp_path):
    server = ServerProc(tmp_path).start()
    try:
        with pytest.raises(StoreError, match="in use by another"):
            SqliteStore(str(server.log_dir))
        out = subprocess.run([console_script(), "server", "reindex", "-c", str(server.config)],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 1 and "in use by another" in out.stderr
    finally:
        assert server.stop() == 0


def test_without_users_the_http_side_stays_on_loopback(tmp_path):
    server = ServerProc(tmp_path, http_address="0.0.0.0")
    server.start(wait=False)
    rc = server.proc.wait(timeout=WAIT_LIMIT_S)
    assert rc == 1
    text = server.stderr()
    assert "http_address" in text and "no users are configured" in text and '"127.0.0.1"' in text
    assert not (server.log_dir / "index").exists()


def test_ping_answers_pong(tmp_path):
    server = ServerProc(tmp_path).start()
    try:
        with urllib.request.urlopen("http://127.0.0.1:%d/ping" % server.http_port, timeout=10) as r:
            assert r.read() == b"pong"
    finally:
        assert server.stop() == 0


def test_a_server_on_each_backend_stores_the_datagrams_it_receives(tmp_path, backend_extra):
    """[server] store selects the backend: the same datagrams reach SQLite or ClickHouse and are
    answered by the store the server opened."""
    server = ServerProc(tmp_path, extra=backend_extra).start()
    server.send(datagrams())
    h = server.until(lambda h: udp(h)["stored"] + sum(udp(h)["refused"].values()) >= len(CASES))
    assert udp(h)["refused"] == {} and udp(h)["stored"] == len(CASES), h
    assert h["store"]["backend"] == ("clickhouse" if backend_extra else "sqlite")
    assert h["store"]["events_indexed"] == len(CASES), h
    assert server.stop() == 0, server.stderr()


def test_a_secret_takes_only_datagrams_signed_with_it(tmp_path):
    """[server] udp_secret: datagrams signed as our sensor's log_server forwarder signs them are
    stored; unsigned ones, ones signed with another secret and a cut signature are refused and
    counted by reason. The signing is the forwarder's own function, not a copy of it."""
    from events.forwarders.maltrail_server import sign
    server = ServerProc(tmp_path, extra='udp_secret = "s3cr3t \\"shared\\""\n').start()
    good = [sign(b's3cr3t "shared"', d) for d in datagrams()]
    bad = [datagrams()[0], sign(b"another", datagrams()[1]), good[2][:20], good[3].replace(b"MTS1 ", b"MTS1  ", 1)]
    server.send(good + bad)
    h = server.until(lambda h: udp(h)["parsed"] + sum(udp(h)["refused"].values()) == len(good) + len(bad)
                     and udp(h)["backlog"] == 0)
    assert udp(h)["stored"] == len(CASES)
    assert udp(h)["refused"] == {"unsigned": 1, "bad_signature": 3}
    assert server.stop() == 0, server.stderr()
    assert sorted(map(comparable, tail_json(server.log_dir))) == sorted(map(comparable, expected_events()))


def test_without_a_secret_signed_datagrams_are_refused(tmp_path):
    from events.forwarders.maltrail_server import sign
    server = ServerProc(tmp_path).start()
    server.send([sign(b"k", d) for d in datagrams()])
    h = server.until(lambda h: sum(udp(h)["refused"].values()) == len(CASES) and udp(h)["backlog"] == 0)
    assert udp(h)["refused"] == {"signed": len(CASES)} and udp(h)["stored"] == 0
    assert server.stop() == 0, server.stderr()
