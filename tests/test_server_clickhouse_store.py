"""The store interface (server/store/__init__.py EventStore) on ClickHouse, through
ClickHouseEventStore, against a real clickhouse-server (tests/clickhouse.py): every answer is
compared with one computed here from the inserted events by the interface's documented rules.

Written backend-neutral: the `backend` fixture makes a store; a backend is one more entry in
BACKENDS (the SQLite one joins where both are merged).
"""

from __future__ import annotations

import collections
import datetime
import ipaddress
import uuid

import pytest

from events.record import Event
from server.store import AggregateQuery, EventQuery, QueryError, StoreError, TimeRange
from server.store.clickhouse import ClickHouseClient, ClickHouseEventStore
from tests.clickhouse import clickhouse_server  # noqa: F401  (the session fixture)

H_US = 3_600_000_000
DAY0 = 1_772_323_200 * 1_000_000          # 2026-03-01 00:00:00 UTC
RANK = ("low", "medium", "high")


def _clickhouse(request, tmp_path):
    server = request.getfixturevalue("clickhouse_server")
    db = "c_" + uuid.uuid4().hex[:12]
    store = ClickHouseEventStore(server.url, db, server.user, server.password, timezone="UTC",
                                 log_dir=str(tmp_path / "store"))

    def drop():
        import asyncio

        async def go():
            c = ClickHouseClient(server.url, "default", server.user, server.password)
            await c.execute("DROP DATABASE IF EXISTS " + db)
            await c.close()
        asyncio.run(go())
    return store, drop


def _sqlite(request, tmp_path):
    from server.store.sqlite import SqliteStore
    return SqliteStore(str(tmp_path / "store")), lambda: None


BACKENDS = {"clickhouse": _clickhouse, "sqlite": _sqlite}


@pytest.fixture(params=sorted(BACKENDS))
def backend(request, tmp_path):
    store, cleanup = BACKENDS[request.param](request, tmp_path)
    try:
        yield store
    finally:
        store.close()
        cleanup()


def make_events() -> list[Event]:
    srcs = ["10.0.0.%d" % i for i in range(1, 12)] + ["2001:db8::%x" % i for i in range(1, 6)] + ["fe80::9"]
    out = []
    for i in range(700):
        t = DAY0 - 2 * H_US + (i * 104_729 % (30 * 3600)) * 1_000_000 + i % 5
        out.append(Event(t, ("alpha", "beta", "gam'ma")[i % 3], srcs[i * 7 % len(srcs)], None if i % 9 == 0 else 1000 + i,
                         srcs[(i * 5 + 3) % len(srcs)], (53, 80, 443)[i % 3], ("TCP", "UDP")[i % 2],
                         ("IP", "DNS", "URL")[i * 3 % 3 if i % 2 else 1], ("evil.example", "t\\2", "t'3", "x\n4")[i % 4],
                         ("Malware C2", "known attacker", "spam")[i % 3] + " (static)", "feed%d" % (i % 2),
                         RANK[i * 11 % 3], 1 + i % 3, t + (i % 4) * 1000))
    return out


def _in(addr: str, nets) -> bool:
    a = ipaddress.ip_address(addr)
    return any(a in n for n in nets)


def test_events_filters_and_cursor_pages_match_the_inserted_events(backend):
    sent = make_events()
    assert backend.ingest(sent[:300]) == 300 and backend.ingest(sent[300:]) == 400
    everything = TimeRange(0, 1 << 62)
    net = ipaddress.ip_network("2001:db8::/120")
    cases = [
        (EventQuery(everything), lambda e: True),
        (EventQuery(TimeRange(DAY0, DAY0 + 3 * H_US)), lambda e: DAY0 <= e.ts_us < DAY0 + 3 * H_US),
        (EventQuery(everything, src="2001:db8::/120"), lambda e: _in(e.src_ip, [net])),
        (EventQuery(everything, address="10.0.0.2-10.0.0.4"),
         lambda e: any(x in ("10.0.0.2", "10.0.0.3", "10.0.0.4") for x in (e.src_ip, e.dst_ip))),
        (EventQuery(everything, port=80, severity=("high", "low")),
         lambda e: 80 in (e.src_port, e.dst_port) and e.severity in ("high", "low")),
        (EventQuery(everything, severity=("high", "low")), lambda e: e.severity in ("high", "low")),
        (EventQuery(everything, info="c2 (STAT", sensor="alpha", proto="TCP"),
         lambda e: "Malware C2" in e.info and e.sensor == "alpha" and e.proto == "TCP"),
        (EventQuery(everything, sensor="gam'ma"), lambda e: e.sensor == "gam'ma"),
        (EventQuery(everything, trail="x\n4", proto="UDP"), lambda e: e.trail == "x\n4" and e.proto == "UDP"),
        (EventQuery(everything, scope=("10.0.0.0/30", "fe80::/64")),
         lambda e: _in(e.src_ip, [ipaddress.ip_network("10.0.0.0/30"), ipaddress.ip_network("fe80::/64")])
         or _in(e.dst_ip, [ipaddress.ip_network("10.0.0.0/30"), ipaddress.ip_network("fe80::/64")])),
    ]
    for query, keep in cases:
        want = [e for e in sent if keep(e)]
        assert want, query
        got, cursor = [], None
        while True:
            page = backend.events(EventQuery(**{**query.__dict__, "limit": 37, "cursor": cursor}))
            assert not page.partial
            got += page.events
            cursor = page.next_cursor
            if cursor is None:
                break
        assert sorted(got) == sorted(want), query
        assert [e.ts_us for e in got] == sorted((e.ts_us for e in want), reverse=True)
    for bad in (dict(src="10.0.0.300"), dict(cursor="x"), dict(limit=0), dict(address="10.0.0.9-10.0.0.1")):
        with pytest.raises(QueryError):
            backend.events(EventQuery(everything, **bad))


def test_aggregates_match_counts_made_from_the_events_widened_to_hours(backend):
    sent = make_events()
    backend.ingest(sent)
    # A range cut inside hours: the answer covers the whole hours around it, and says so.
    since, until = DAY0 - 2 * H_US + 1234, DAY0 + 20 * H_US - 5
    lo, hi = DAY0 - 2 * H_US, DAY0 + 20 * H_US
    for scope in ((), ("10.0.0.0/29", "2001:db8::2")):
        nets = [ipaddress.ip_network("10.0.0.0/29"), ipaddress.ip_network("2001:db8::2/128")]
        inside = [e for e in sent if lo <= e.ts_us < hi and (not scope or _in(e.src_ip, nets) or _in(e.dst_ip, nets))]
        q = AggregateQuery(TimeRange(since, until), scope=scope)
        for by in ("type", "severity", "sensor"):
            for bucket, size in (("hour", H_US), ("day", 24 * H_US)):
                c = backend.counts(q, by, bucket)
                assert (c.since_us, c.until_us, c.partial) == (lo, hi, False)
                want = collections.Counter((e.ts_us // size * size, getattr(e, by)) for e in inside)
                assert c.rows == sorted((b, v, n) for (b, v), n in want.items()), (scope, by, bucket)
        for field in ("src_ip", "dst_ip", "trail"):
            t = backend.top(q, field, 5)
            ranked = sorted(collections.Counter(getattr(e, field) for e in inside).items(), key=lambda kv: (-kv[1], kv[0]))
            assert t.rows == ranked[:5], (scope, field)
        groups = collections.defaultdict(list)
        for e in inside:
            groups[(e.src_ip, e.trail)].append(e)
        want = sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0]))[:20]
        got = backend.threats(q, 20)
        assert [(t.src_ip, t.trail, t.events) for t in got.rows] == [(s, tr, len(g)) for (s, tr), g in want]
        for t, ((_s, _tr), g) in zip(got.rows, want):
            assert t.first_ts_us == min(e.ts_us for e in g)
            assert t.last_ts_us == max(e.last_ts_us for e in g)
            assert t.sensors == tuple(sorted({e.sensor for e in g}))
            assert t.severity == max((e.severity for e in g), key=RANK.index)
    # A scoped aggregate that reaches its row cap says it is partial.
    capped = AggregateQuery(TimeRange(lo, hi), scope=("0.0.0.0/0", "::/0"), row_cap=10)
    assert backend.counts(capped, "type").partial


def test_threats_over_whole_days_match_the_events(backend):
    """Ranges holding whole days (the SQLite backend answers those from its per-day roll-up, and
    ranks in SQL when one day is all there is) give what the events say, sensors included."""
    sent = make_events()
    backend.ingest(sent[:350])
    backend.ingest(sent[350:])
    for since, until in ((DAY0, DAY0 + 24 * H_US), (DAY0 - 2 * H_US, DAY0 + 30 * H_US), (0, 1 << 62)):
        inside = [e for e in sent if since <= e.ts_us < until]
        groups = collections.defaultdict(list)
        for e in inside:
            groups[(e.src_ip, e.trail)].append(e)
        want = sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0]))[:15]
        got = backend.threats(AggregateQuery(TimeRange(since, until)), 15)
        assert not got.partial
        assert [(t.src_ip, t.trail, t.events) for t in got.rows] == [(s, tr, len(g)) for (s, tr), g in want]
        for t, ((_s, _tr), g) in zip(got.rows, want):
            assert (t.first_ts_us, t.last_ts_us) == (min(e.ts_us for e in g), max(e.last_ts_us for e in g))
            assert t.sensors == tuple(sorted({e.sensor for e in g}))
            assert t.severity == max((e.severity for e in g), key=RANK.index)
    # One day alone in the store: ranked by the database itself.
    only = [e._replace(ts_us=DAY0 + 3 * H_US + i, last_ts_us=DAY0 + 3 * H_US + i) for i, e in enumerate(sent[:50])]
    far = [e._replace(ts_us=t, last_ts_us=t) for e in only for t in [e.ts_us + 40 * 24 * H_US]]
    backend.ingest(far)
    groups = collections.defaultdict(list)
    for e in far:
        groups[(e.src_ip, e.trail)].append(e)
    want = sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0]))[:7]
    day = DAY0 + 40 * 24 * H_US
    got = backend.threats(AggregateQuery(TimeRange(day, day + 24 * H_US)), 7)
    assert [(t.src_ip, t.trail, t.events, t.sensors) for t in got.rows] == [
        (s, tr, len(g), tuple(sorted({e.sensor for e in g}))) for (s, tr), g in want]


def test_bad_events_are_refused_whole_and_status_reports(backend):
    good = make_events()[:5]
    with pytest.raises(StoreError):
        backend.ingest(good + [good[0]._replace(src_ip="999.1.1.1")])
    assert backend.events(EventQuery(TimeRange(0, 1 << 62))).events == []
    backend.ingest(good)
    st = backend.status()
    assert st.ready and st.backend == backend.backend and st.events_indexed == 5
    assert st.days == len({datetime.datetime.fromtimestamp(e.ts_us // 1_000_000, datetime.timezone.utc).date()
                           for e in good})


def test_an_unreachable_clickhouse_is_a_store_error(clickhouse_server, tmp_path):
    port = int(clickhouse_server.url.rsplit(":", 1)[1].strip("/"))
    with pytest.raises(StoreError, match="ClickHouse"):
        ClickHouseEventStore("http://127.0.0.1:%d/" % (port + 1 if port < 65535 else port - 1), log_dir=str(tmp_path))
    with pytest.raises(StoreError, match="clickhouse_url"):
        ClickHouseEventStore("http://user:pw@127.0.0.1:1/", log_dir=str(tmp_path))


def test_aggregates_widen_to_the_hours_of_the_stores_zone(clickhouse_server, tmp_path):
    db = "c_" + uuid.uuid4().hex[:12]
    store = ClickHouseEventStore(clickhouse_server.url, db, timezone="Asia/Kolkata",     # UTC+05:30
                                 log_dir=str(tmp_path / "store"))
    try:
        store.ingest([make_events()[0]._replace(ts_us=DAY0 + 10 * 60 * 1_000_000)])     # 05:40 Kolkata
        c = store.counts(AggregateQuery(TimeRange(DAY0, DAY0 + 1)), "type")
        assert (c.since_us, c.until_us) == (DAY0 - H_US // 2, DAY0 + H_US // 2)        # 05:00-06:00 Kolkata
        assert [(b, n) for b, _v, n in c.rows] == [(DAY0 - H_US // 2, 1)]
        d = store.counts(AggregateQuery(TimeRange(DAY0, DAY0 + 1)), "type", "day")
        assert [(b, n) for b, _v, n in d.rows] == [(DAY0 - 5 * H_US - H_US // 2, 1)]    # Kolkata midnight
    finally:
        store.close()

        async def drop():
            cl = ClickHouseClient(clickhouse_server.url)
            await cl.execute("DROP DATABASE IF EXISTS " + db)
            await cl.close()
        import asyncio
        asyncio.run(drop())
