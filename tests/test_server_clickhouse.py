"""The ClickHouse backend (server/store/clickhouse.py) against a real clickhouse-server on loopback
(tests/clickhouse.py): quoting under hostile input, events in and back exactly, CIDR ranges for
both families, cursor paging, roll-ups equal to counts made here from the inserted events, day
partitions placed by the store's zone and dropped by retention, and clear errors.

Each test takes a database of its own in the one shared server.
"""

from __future__ import annotations

import asyncio
import collections
import datetime
import ipaddress
import itertools
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from events.record import Event
from server.store.clickhouse import (ClickHouseClient, ClickHouseError, ClickHouseStore, ClickHouseUnavailable,
                                     EventQuery, StoreInputError, bind, quote_int, quote_str)
from tests.clickhouse import clickhouse_server  # noqa: F401  (the session fixture)

H_US = 3600 * 1_000_000
DAY0 = 1_772_323_200 * 1_000_000          # 2026-03-01 00:00:00 UTC

HOSTILE = [
    "", "'", "''", "\\", "\\'", "a\\", "'; DROP TABLE events; --", "x\x00y", "\x00", "line\nbreak\r\n",
    "tab\there", "\\x41\\0\\n", "{db}{tz}%s%d{}", "\"dq\"", "`bt`", "ünïcödé ✓ 𝄞", "\x1b[31mred",
    "".join(chr(c) for c in range(0, 32)) + "\x7f", "end'", "a\\'b\\\\'c",
]


def run(coro):
    return asyncio.run(coro)


@pytest.fixture
def store(clickhouse_server):
    """A ClickHouseStore on a fresh database (day boundaries in UTC), authenticated as the
    password user; dropped afterwards."""
    db = "t_" + uuid.uuid4().hex[:12]
    st = ClickHouseStore(clickhouse_server.url, db, clickhouse_server.user, clickhouse_server.password,
                         timezone="UTC")
    call(st, "create")
    yield st

    async def drop():
        c = ClickHouseClient(clickhouse_server.url, "default", clickhouse_server.user, clickhouse_server.password)
        await c.execute("DROP DATABASE IF EXISTS " + db)
        await c.close()
    run(drop())


def ev(ts_us, src="10.0.0.1", dst="192.0.2.7", sport=1234, dport=80, proto="TCP", type_="IP",
       trail="bad.example", info="malware (static)", reference="feed", severity="high", sensor="s1",
       count=1, last=None):
    return Event(ts_us, sensor, src, sport, dst, dport, proto, type_, trail, info, reference, severity,
                 count, ts_us if last is None else last)


async def _with_store(st, fn):
    try:
        return await fn(st)
    finally:
        await st.close()


def call(st, method, *args, **kw):
    """One store call in a loop of its own, its HTTP session closed afterwards."""
    return run(_with_store(st, lambda s: getattr(s, method)(*args, **kw)))


def everything(st, **kw):
    return run(_with_store(st, lambda s: s.events(EventQuery(0, 1 << 62, limit=10_000, **kw)))).events


# --- quoting ------------------------------------------------------------------------------------

def test_quote_str_round_trips_hostile_text_through_the_real_server(clickhouse_server):
    async def go():
        c = ClickHouseClient(clickhouse_server.url)
        try:
            for s in HOSTILE:
                rows = await c.select("SELECT %s, length(%s)" % (quote_str(s), quote_str(s)))
                assert rows == [[s.encode(), str(len(s.encode())).encode()]], s
            # A bound value never becomes SQL: the injection attempt is compared as text.
            rows = await c.select(bind("SELECT {a} = {b}, {n}", a="1' OR '1'='1", b="1' OR '1'='1", n=-7))
            assert rows == [[b"1", b"-7"]]
        finally:
            await c.close()
    run(go())


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(st.characters(blacklist_categories=("Cs",)), max_size=40))
def test_quote_str_round_trips_any_text(clickhouse_server, text):
    async def go():
        c = ClickHouseClient(clickhouse_server.url)
        try:
            return await c.select("SELECT %s" % quote_str(text))
        finally:
            await c.close()
    assert run(go()) == [[text.encode()]]


def test_quoting_refuses_what_it_cannot_render():
    for bad in (True, 1.5, None, "1", b"x"):
        with pytest.raises(StoreInputError):
            quote_int(bad)
    for bad in (1, None, b"x", "lone \ud800 surrogate"):
        with pytest.raises(StoreInputError):
            quote_str(bad)
    with pytest.raises(StoreInputError):
        bind("SELECT {v}", v=2.5)
    with pytest.raises(StoreInputError):
        bind("SELECT {v}", v=[])


# --- events in and out --------------------------------------------------------------------------

def _mixed_events():
    out = []
    for i, s in enumerate(HOSTILE):
        out.append(ev(DAY0 + i * 1_000_001, src="10.%d.0.1" % i, trail=s, info=s, reference=s[::-1], sensor="s%d" % (i % 3),
                      sport=None if i % 4 == 0 else i, dport=None if i % 5 == 0 else 65535 - i,
                      proto="ICMP" if i % 4 == 0 else "UDP", type_=("IP", "DNS", "URL")[i % 3],
                      severity=("low", "medium", "high")[i % 3], count=i + 1, last=DAY0 + i * 1_000_001 + i))
    out.append(ev(DAY0 + 5, src="2001:db8::1", dst="2001:db8:ffff::abcd", sport=0, dport=0, proto="TCP"))
    out.append(ev(DAY0 + 6, src="fe80::1", dst="::ffff:0:0", sport=None, dport=443))
    out.append(ev(DAY0 + 7, src="0.0.0.0", dst="255.255.255.255", sport=65535, dport=1))
    return out


def test_events_come_back_exactly_newest_first(store):
    sent = _mixed_events()
    call(store, "ingest", sent)
    got = everything(store)
    # "::ffff:0:0" is the IPv4-mapped form of 0.0.0.0: it comes back written as IPv4 (documented).
    expected = [e._replace(dst_ip="0.0.0.0") if e.dst_ip == "::ffff:0:0" else e for e in sent]
    assert sorted(got) == sorted(expected)
    assert [e.ts_us for e in got] == sorted((e.ts_us for e in sent), reverse=True)


def test_a_bad_event_refuses_the_whole_batch_and_stores_nothing(store):
    good = [ev(DAY0 + i) for i in range(3)]
    for bad, why in ((ev(DAY0, src="not-an-ip"), "address"), (ev(DAY0, sport=70000), "port"),
                     (ev(DAY0, severity="critical"), "severity"), (ev(DAY0, info="\ud800"), "surrogate"),
                     (ev(-1), "ts_us")):
        with pytest.raises(StoreInputError, match="event 2"):
            call(store, "ingest", good[:2] + [bad] + good[2:])
    assert everything(store) == []


def test_filters_by_cidr_for_both_families_ranges_and_scope(store):
    addrs = ["10.1.2.3", "10.1.255.255", "10.2.0.0", "192.168.1.1", "2001:db8::1", "2001:db8:0:ffff::2",
             "2001:db9::1", "::1"]
    sent = [ev(DAY0 + i, src=a, dst="198.51.100.%d" % i, dport=i, trail="t%d" % (i % 2), sensor="s%d" % (i % 3))
            for i, a in enumerate(addrs)]
    call(store, "ingest", sent)

    def srcs(**kw):
        return sorted(e.src_ip for e in everything(store, **kw))

    assert srcs(src=("10.1.0.0/16",)) == ["10.1.2.3", "10.1.255.255"]
    assert srcs(src=("10.0.0.0/8", "::1")) == ["10.1.2.3", "10.1.255.255", "10.2.0.0", "::1"]
    assert srcs(src=("2001:db8::/32",)) == ["2001:db8:0:ffff::2", "2001:db8::1"]
    assert srcs(src=("2001:db8::/64",)) == ["2001:db8::1"]
    assert srcs(src=("10.1.2.3-10.2.0.0",)) == ["10.1.2.3", "10.1.255.255", "10.2.0.0"]
    assert srcs(addr=("198.51.100.1",)) == ["10.1.255.255"]
    assert srcs(dst=("198.51.100.0/30",)) == ["10.1.2.3", "10.1.255.255", "10.2.0.0", "192.168.1.1"]
    assert srcs(port=4) == ["2001:db8::1"]
    assert srcs(trail="t1", sensor="s1") == ["10.1.255.255", "::1"]
    assert len(everything(store, info="MALWARE (Stat")) == len(sent)           # ASCII case-insensitive
    assert everything(store, info="trojan") == []
    assert everything(store, severity=("low", "medium")) == []
    assert len(everything(store, severity=("high",))) == len(sent)
    assert srcs(scope=("2001:db8::/32", "192.168.0.0/16")) == ["192.168.1.1", "2001:db8:0:ffff::2", "2001:db8::1"]
    assert srcs(scope=()) == sorted(addrs)            # empty scope: every event (Maltrail's netfilter)
    for bad in ("10.0.0.1/8", "300.1.1.1", "10.0.0.9-10.0.0.1", "::1%eth0", "a'b"):
        with pytest.raises(StoreInputError):
            everything(store, src=(bad,))


def test_cursor_paging_returns_every_event_once_even_within_one_microsecond(store):
    sent = [ev(DAY0 + (i // 7), src="10.0.%d.%d" % (i // 250, i % 250), sport=i) for i in range(100)]
    call(store, "ingest", sent)

    async def pages(st):
        got, cursor = [], None
        while True:
            page = await st.events(EventQuery(DAY0, DAY0 + H_US, limit=9, cursor=cursor))
            assert not page.partial
            got += page.events
            cursor = page.next_cursor
            if cursor is None:
                return got
    got = run(_with_store(store, pages))
    assert sorted(got) == sorted(sent)
    assert len(got) == len(sent)
    assert [e.ts_us for e in got] == sorted((e.ts_us for e in got), reverse=True)
    with pytest.raises(StoreInputError):
        everything(store, cursor="1.2'; --")


# --- roll-ups -----------------------------------------------------------------------------------

def _spread_events():
    """Events over two days and many hours, with repeats, so every roll-up has real work."""
    out = []
    srcs = ["10.0.0.%d" % i for i in range(6)] + ["2001:db8::%x" % i for i in range(1, 4)]
    for i in range(600):
        t = DAY0 - 3 * H_US + (i * 7919 % (40 * H_US // 1_000_000)) * 1_000_000 + i
        out.append(ev(t, src=srcs[i * 31 % len(srcs)], dst=srcs[(i * 17 + 1) % len(srcs)],
                      type_=("IP", "DNS", "URL", "UA")[i % 4], severity=("low", "medium", "high")[i * 5 % 3],
                      sensor=("a", "b'c", "d\nx")[i % 3], trail=("t1", "t2", "t'3")[i * 11 % 3], count=1 + i % 4, last=t + i % 3 * 1000))
    return out


def _bucket(ts_us, bucket):
    size = H_US if bucket == "hour" else 24 * H_US
    return ts_us // size * size


def test_rollups_equal_counts_made_from_the_events(store):
    sent = _spread_events()
    # Two inserts: the summing tables must add across parts, not only within one.
    call(store, "ingest", sent[:250])
    call(store, "ingest", sent[250:])
    start, end = DAY0 - 3 * H_US, DAY0 + 40 * H_US            # hour-aligned: answered from the roll-ups
    inside = [e for e in sent if start <= e.ts_us < end]

    async def check(st):
        for by, bucket in itertools.product(("type", "severity", "sensor"), ("hour", "day")):
            want = collections.Counter((_bucket(e.ts_us, bucket), getattr(e, by)) for e in inside)
            got = await st.counts(start, end, by, bucket)
            assert sorted(got) == sorted((b, k, n) for (b, k), n in want.items()), (by, bucket)
            # The same answer computed from the events themselves (a scope takes that path).
            raw = await st.counts(start, end, by, bucket, scope=("0.0.0.0/0", "::/0"))
            assert raw == got
        for field in ("src_ip", "dst_ip", "trail"):
            want = collections.Counter(getattr(e, field) for e in inside)
            got = await st.top(start, end, field, n=50)
            assert dict(got) == dict(want), field
            assert [n for _, n in got] == sorted(want.values(), reverse=True)
            assert await st.top(start, end, field, n=50, scope=("::/0", "0.0.0.0/0")) == got
        groups = collections.defaultdict(list)
        for e in inside:
            groups[(e.src_ip, e.trail)].append(e)
        got = await st.threats(start, end, n=1000)
        assert len(got) == len(groups)
        for t in got:
            g = groups[(t.src_ip, t.trail)]
            assert t.events == len(g)
            assert t.first_us == min(e.ts_us for e in g)
            assert t.last_us == max(e.last_ts_us for e in g)
            assert t.sensors == tuple(sorted({e.sensor for e in g}, key=lambda s: s.encode()))
            assert t.severity == max((e.severity for e in g), key=("low", "medium", "high").index)
        assert await st.threats(start, end, n=1000, scope=("0.0.0.0/0", "::/0")) == got
        assert await st.threats(start, end, n=1) == got[:1]
    run(_with_store(store, check))


def test_aggregates_over_a_scope_or_a_cut_range_count_only_what_is_inside(store):
    sent = _spread_events()
    call(store, "ingest", sent)
    start, end = DAY0 + 1_234_567, DAY0 + 5 * H_US + 17   # not on hour boundaries
    scope = ("10.0.0.0-10.0.0.2", "2001:db8::2")
    nets = [ipaddress.ip_network("2001:db8::2/128")]

    def visible(e):
        return (start <= e.ts_us < end and any(
            ipaddress.ip_address(a) in n for a in (e.src_ip, e.dst_ip) for n in nets)
            or start <= e.ts_us < end and any(a in ("10.0.0.0", "10.0.0.1", "10.0.0.2") for a in (e.src_ip, e.dst_ip)))

    inside = [e for e in sent if visible(e)]
    assert 0 < len(inside) < len([e for e in sent if start <= e.ts_us < end])

    async def check(st):
        got = await st.counts(start, end, "severity", "hour", scope=scope)
        want = collections.Counter((_bucket(e.ts_us, "hour"), e.severity) for e in inside)
        assert sorted(got) == sorted((b, k, n) for (b, k), n in want.items())
        assert dict(await st.top(start, end, "trail", 10, scope=scope)) == collections.Counter(e.trail for e in inside)
        assert sum(t.events for t in await st.threats(start, end, 1000, scope=scope)) == len(inside)
    run(_with_store(store, check))


# --- days and retention ------------------------------------------------------------------------

def test_days_follow_the_stores_zone_and_retention_drops_whole_days(store):
    # The server runs in Asia/Kathmandu (tests/clickhouse.py); this store's days are UTC days.
    sent = [ev(DAY0 - 1), ev(DAY0), ev(DAY0 + 24 * H_US - 1), ev(DAY0 + 24 * H_US), ev(DAY0 + 50 * H_US)]
    call(store, "ingest", sent)
    d = datetime.date(2026, 3, 1)
    one = datetime.timedelta(days=1)
    assert run(_with_store(store, lambda s: s.days())) == [d - one, d, d + one, d + 2 * one]

    dropped = run(_with_store(store, lambda s: s.drop_days_before(d + one)))
    assert dropped == [d - one, d]
    assert sorted(e.ts_us for e in everything(store)) == [DAY0 + 24 * H_US, DAY0 + 50 * H_US]

    async def rollups(st):
        rows = []
        for table in ("hourly", "top_hourly", "threats_hourly"):
            rows += await st.client.select("SELECT DISTINCT toDate(hour) FROM %s.%s ORDER BY 1" % (st.db, table))
        return rows
    assert sorted({r[0] for r in run(_with_store(store, rollups))}) == [b"2026-03-02", b"2026-03-03"]
    assert run(_with_store(store, lambda s: s.counts(0, 1 << 62, "type", "day"))) == [
        ((DAY0 + 24 * H_US), "IP", 1), ((DAY0 + 48 * H_US), "IP", 1)]


def test_a_store_in_another_zone_buckets_by_its_own_hours(clickhouse_server):
    db = "t_" + uuid.uuid4().hex[:12]
    st = ClickHouseStore(clickhouse_server.url, db, timezone="Asia/Kolkata")   # UTC+05:30

    async def go():
        try:
            await st.create()
            await st.ingest([ev(DAY0 + 10 * 60 * 1_000_000)])           # 05:40 in Kolkata
            return await st.counts(DAY0 - H_US // 2, DAY0 + H_US // 2, "type", "hour"), await st.days()
        finally:
            await st.client.execute("DROP DATABASE IF EXISTS " + db, database="default")
            await st.close()
    counts, days = run(go())
    assert counts == [(DAY0 - H_US // 2, "IP", 1)]                    # the hour from 05:00 Kolkata
    assert days == [datetime.date(2026, 3, 1)]


# --- errors -------------------------------------------------------------------------------------

def test_errors_are_clear_exceptions(clickhouse_server):
    async def go():
        c = ClickHouseClient(clickhouse_server.url)
        try:
            with pytest.raises(ClickHouseError) as syntax:
                await c.select("SELEC 1")
            assert syntax.value.code == 62 and "Syntax error" in str(syntax.value)
            with pytest.raises(ClickHouseError) as unknown:
                await c.select("SELECT * FROM no_such_table_here")
            assert unknown.value.code == 60 and "no_such_table_here" in str(unknown.value)
        finally:
            await c.close()
        wrong = ClickHouseClient(clickhouse_server.url, user=clickhouse_server.user, password="wrong")
        try:
            with pytest.raises(ClickHouseError) as auth:
                await wrong.select("SELECT 1")
            assert auth.value.code in (192, 193, 516) and "password" in str(auth.value).lower()
            assert "wrong" not in str(auth.value)
        finally:
            await wrong.close()
        port = int(clickhouse_server.url.rsplit(":", 1)[1].strip("/"))
        closed = ClickHouseClient("http://127.0.0.1:%d/" % (port + 1 if port < 65535 else port - 1))
        try:
            with pytest.raises(ClickHouseUnavailable):
                await closed.select("SELECT 1")
        finally:
            await closed.close()
    run(go())
    for url in ("http://u:p@h:1/", "ftp://h/", "http://h:1/path", "http://h:1/?q=1"):
        with pytest.raises(StoreInputError):
            ClickHouseClient(url)
    with pytest.raises(StoreInputError):
        ClickHouseClient("http://h:1/", database="x; DROP")
