"""Filter terms, excluded pairs, threat sorts, sparklines and the latest event's fields
(server/store/__init__.py: Term, AggregateQuery.terms/exclude_pairs, threats(sort, spark)) on
every store backend, against a real clickhouse-server (tests/clickhouse.py) and SQLite.

Every answer is compared with one computed here from the inserted events by the interface's
documented rules (the Term docstring), so both backends are held to the same contract: the
`backend` fixture (tests/test_server_clickhouse_store.py BACKENDS) runs each test on each.
"""

from __future__ import annotations

import collections
import re

import pytest

from events.record import Event
from server.addresses import ip_key, key_range, range_text
from server.store import THREAT_SORTS, AggregateQuery, EventQuery, QueryError, Term, TimeRange
from tests.clickhouse import clickhouse_server  # noqa: F401  (the session fixture)
from tests.test_server_clickhouse_store import DAY0, H_US, RANK, backend, make_events  # noqa: F401

EVERYTHING = TimeRange(0, 1 << 62)
# Hour-aligned, so the aggregates' widening to whole hours changes nothing.
SPAN = TimeRange(DAY0 - 2 * H_US, DAY0 + 28 * H_US)


def events_set() -> list[Event]:
    """make_events() with every ts_us distinct (so "the latest event" of a pair is one event),
    plus events whose trails and infos hold LIKE's own metacharacters (% _ \\), upper case and
    SQL-looking text: a filter must match them literally."""
    out = []
    for i, e in enumerate(make_events()):
        t = e.ts_us - e.ts_us % 1_000_000 + i
        out.append(e._replace(ts_us=t, last_ts_us=t + (i % 4) * 1000))
    odd = [("100%_sure.example", "a_b 50% off"), ("100xxsure.example", "axb 50x off"), ("EVIL.Example", "C:\\path\\x"),
           ("x' OR 1=1 --", "quote's \\ and %")]
    for j in range(40):
        t = DAY0 + 5 * H_US + j * 7_000_001
        trail, info = odd[j % len(odd)]
        out.append(Event(t, ("alpha", "Beta")[j % 2], "10.0.0.%d" % (j % 3 + 1), 2000 + j, "2001:db8::%x" % (j % 4 + 1),
                         (80, 8080)[j % 2], "TCP", ("URL", "DNS")[j % 2], trail, info, "ref%d" % j, RANK[j % 3],
                         1, t))
    return out


def rt(text: str) -> str:
    """An address, CIDR or range as the range text Terms carry."""
    return range_text(*key_range(text))


def _wild(value: str, anchored: bool) -> re.Pattern:
    body = ".*".join(re.escape(p) for p in value.split("*"))
    return re.compile(body if anchored else ".*" + body + ".*", re.S | re.I | re.A)


def term_holds(term: Term, e: Event) -> bool:
    """The Term docstring's rules, written out."""
    def one(v: str) -> bool:
        f = term.field
        if f in ("src", "dst", "address"):
            lo, hi = key_range(v)
            sides = {"src": [e.src_ip], "dst": [e.dst_ip], "address": [e.src_ip, e.dst_ip]}[f]
            return any(lo <= ip_key(a) <= hi for a in sides)
        if f == "port":
            return int(v) in (e.src_port, e.dst_port)
        if f in ("proto", "type"):
            return getattr(e, f).upper() == v
        if f == "severity":
            return e.severity == v
        if f in ("trail", "sensor"):
            return _wild(v, True).fullmatch(getattr(e, f)) is not None
        if f == "info":
            return _wild(v, False).fullmatch(e.info) is not None
        if f == "text":
            return any(_wild(v, False).fullmatch(x) is not None for x in (e.trail, e.info))
        raise AssertionError(f)
    hit = any(one(v) for v in term.values)
    return not hit if term.negate else hit


def kept(sent, terms, rng=EVERYTHING):
    return [e for e in sent if rng.since_us <= e.ts_us < rng.until_us and all(term_holds(t, e) for t in terms)]


CASES = [
    (Term("src", (rt("10.0.0.0/30"),)),),
    (Term("dst", (rt("2001:db8::/126"), rt("10.0.0.5")),),),
    (Term("address", (rt("10.0.0.2-10.0.0.4"),), negate=True),),
    (Term("port", ("80", "1005")),),
    (Term("proto", ("TCP",)), Term("type", ("URL", "IP"))),
    (Term("severity", ("high", "low")), Term("sensor", ("GAM'MA", "al*"))),
    (Term("trail", ("evil.*",)),),
    (Term("trail", ("t'3", "x\n4", "t\\2")),),
    (Term("trail", ("100%_*",)),),                 # % and _ are literal: 100xxsure does not match
    (Term("trail", ("*' or 1=1 --",)),),
    (Term("info", ("c2 (stat",)), Term("type", ("IP",), negate=True)),
    (Term("info", ("mal*c2",)),),
    (Term("info", ("a_b",)),),
    (Term("info", ("a_b*off", "50%*off")),),      # the same with LIKE: axb 50x off does not match
    (Term("info", ("c:\\p",)),),
    (Term("info", ("c:\\p*\\x",)),),
    (Term("text", ("100%",)),),
    (Term("text", ("SPAM", "evil")), Term("severity", ("medium",), negate=True)),
]


def test_event_pages_hold_exactly_the_events_every_term_matches(backend):
    sent = events_set()
    backend.ingest(sent)
    for terms in CASES:
        want = kept(sent, terms)
        assert want, terms
        got, cursor = [], None
        while True:
            page = backend.events(EventQuery(EVERYTHING, terms=terms, limit=29, cursor=cursor))
            assert not page.partial
            got += page.events
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
        assert sorted(got) == sorted(want), terms
        assert [e.ts_us for e in got] == sorted((e.ts_us for e in want), reverse=True)
    # Terms with the old single-field filters: all hold.
    page = backend.events(EventQuery(EVERYTHING, proto="TCP", terms=(Term("trail", ("EVIL.EXAMPLE",)),), limit=1000))
    assert sorted(page.events) == sorted(e for e in kept(sent, (Term("trail", ("evil.example",)),)) if e.proto == "TCP")
    assert backend.events(EventQuery(EVERYTHING, terms=(Term("trail", ("x' OR 1=1 --x",)),))).events == []


def _threat_rows(events):
    groups = collections.defaultdict(list)
    for e in events:
        groups[(e.src_ip, e.trail)].append(e)
    rows = []
    for (src, trail), g in groups.items():
        latest = max(g, key=lambda e: e.ts_us)
        rows.append(dict(src_ip=src, trail=trail, events=len(g), first=min(e.ts_us for e in g),
                         last=max(e.last_ts_us for e in g), severity=max((e.severity for e in g), key=RANK.index),
                         sensors=tuple(sorted({e.sensor for e in g})), type=latest.type, info=latest.info,
                         reference=latest.reference, group=g))
    return rows


def _sorted_threats(rows, sort):
    key, desc = sort.lstrip("-"), sort.startswith("-")
    rows = sorted(rows, key=lambda r: (-r["events"], r["src_ip"], r["trail"]))     # the ties
    value = {"events": lambda r: r["events"], "first": lambda r: r["first"], "last": lambda r: r["last"],
             "severity": lambda r: RANK.index(r["severity"]), "src": lambda r: ip_key(r["src_ip"]),  # address order
             "trail": lambda r: r["trail"]}[key]
    return sorted(rows, key=value, reverse=desc)      # stable: equal values keep the tie order


def _check_threats(got, want):
    assert [(t.src_ip, t.trail, t.events) for t in got] == [(r["src_ip"], r["trail"], r["events"]) for r in want]
    for t, r in zip(got, want):
        assert (t.first_ts_us, t.last_ts_us, t.severity, t.sensors) == (r["first"], r["last"], r["severity"],
                                                                        r["sensors"]), t
        assert (t.type, t.info, t.reference) == (r["type"], r["info"], r["reference"]), t


def test_aggregates_with_terms_are_computed_from_the_matching_events(backend):
    sent = events_set()
    backend.ingest(sent[:400])
    backend.ingest(sent[400:])
    for terms in CASES:
        inside = kept(sent, terms, SPAN)
        q = AggregateQuery(SPAN, terms=terms)
        for by in ("type", "severity", "sensor"):
            for bucket, size in (("hour", H_US), ("day", 24 * H_US)):
                c = backend.counts(q, by, bucket)
                assert (c.since_us, c.until_us, c.partial) == (SPAN.since_us, SPAN.until_us, False)
                want = collections.Counter((e.ts_us // size * size, getattr(e, by)) for e in inside)
                assert c.rows == sorted((b, v, n) for (b, v), n in want.items()), (terms, by, bucket)
        for field in ("src_ip", "dst_ip", "trail"):
            t = backend.top(q, field, 4)
            ranked = sorted(collections.Counter(getattr(e, field) for e in inside).items(), key=lambda kv: (-kv[1], kv[0]))
            assert (t.rows, t.partial) == (ranked[:4], False), (terms, field)
        got = backend.threats(q, 12)
        assert not got.partial
        _check_threats(got.rows, _sorted_threats(_threat_rows(inside), "-events")[:12])
    # Terms that every event matches give what the roll-ups give.
    every = (Term("severity", RANK),)
    for sort in ("-events", "first", "-severity"):
        assert backend.threats(AggregateQuery(SPAN, terms=every), 30, sort) == backend.threats(AggregateQuery(SPAN), 30, sort)


@pytest.mark.parametrize("terms", [(), (Term("proto", ("TCP",)),)], ids=["rollups", "terms"])
def test_threats_sort_by_every_key_both_ways_with_ties_by_events_source_trail(backend, terms):
    sent = events_set()
    backend.ingest(sent)
    rows = _threat_rows(kept(sent, terms, SPAN))
    for key in THREAT_SORTS:
        for sort in (key, "-" + key):
            got = backend.threats(AggregateQuery(SPAN, terms=terms), 9, sort)
            _check_threats(got.rows, _sorted_threats(rows, sort)[:9])
    with pytest.raises(QueryError):
        backend.threats(AggregateQuery(SPAN), 5, "loudest")


@pytest.mark.parametrize("terms", [(), (Term("port", ("53", "80", "443", "8080")),)], ids=["rollups", "terms"])
def test_excluded_pairs_leave_threats_only(backend, terms):
    sent = events_set()
    backend.ingest(sent)
    inside = kept(sent, terms, SPAN)
    ranked = _sorted_threats(_threat_rows(inside), "-events")
    gone = [(r["src_ip"], r["trail"]) for r in ranked[:3:2]] + [("not an address", "evil.example"),
                                                                ("10.0.0.1", "no such trail")]
    q = AggregateQuery(SPAN, terms=terms, exclude_pairs=tuple(gone))
    got = backend.threats(q, 10)
    _check_threats(got.rows, [r for r in ranked if (r["src_ip"], r["trail"]) not in gone][:10])
    # counts and tops ignore it
    assert backend.counts(q, "type").rows == backend.counts(AggregateQuery(SPAN, terms=terms), "type").rows
    assert backend.top(q, "trail").rows == backend.top(AggregateQuery(SPAN, terms=terms), "trail").rows


@pytest.mark.parametrize("terms", [(), (Term("text", ("e",)),)], ids=["rollups", "terms"])
def test_sparklines_count_each_pairs_events_per_equal_slice(backend, terms):
    sent = events_set()
    backend.ingest(sent)
    rows = {(r["src_ip"], r["trail"]): r for r in _threat_rows(kept(sent, terms, SPAN))}
    for spark in (1, 7, 96):
        got = backend.threats(AggregateQuery(SPAN, terms=terms), 15, spark=spark)
        assert len(got.rows) == min(15, len(rows))
        width = SPAN.until_us - SPAN.since_us
        for t in got.rows:
            want = [0] * spark
            for e in rows[(t.src_ip, t.trail)]["group"]:
                want[(e.ts_us - SPAN.since_us) * spark // width] += 1
            assert list(t.spark) == want, (spark, t.src_ip, t.trail)
    assert all(t.spark == () for t in backend.threats(AggregateQuery(SPAN, terms=terms), 5).rows)


def test_filtered_aggregates_say_partial_at_the_row_cap_and_bad_terms_are_refused(backend):
    sent = events_set()
    backend.ingest(sent)
    q = AggregateQuery(SPAN, terms=(Term("proto", ("TCP", "UDP")),), row_cap=10)
    assert backend.counts(q, "severity").partial
    assert backend.top(q, "src_ip", 3).partial
    assert backend.threats(q, 3).partial
    assert not backend.threats(AggregateQuery(SPAN, terms=q.terms), 3).partial
    for bad in (Term("src", ("not-an-address",)), Term("port", ("http",)), Term("port", ("70000",)),
                Term("severity", ("urgent",))):
        with pytest.raises(QueryError):
            backend.events(EventQuery(EVERYTHING, terms=(bad,)))
        with pytest.raises(QueryError):
            backend.threats(AggregateQuery(SPAN, terms=(bad,)), 5)


def test_threats_of_whole_days_carry_the_latest_event_and_hourly_sparklines(backend):
    """A range of whole days (the dashboard's day; ClickHouse answers it from its per-day roll-up
    alone) gives what the events say, in every sort, with sparklines of whole hours and finer."""
    sent = events_set()
    backend.ingest(sent)
    for rng in (TimeRange(DAY0, DAY0 + 24 * H_US), TimeRange(DAY0 - 24 * H_US, DAY0 + 48 * H_US)):
        rows = _threat_rows(kept(sent, (), rng))
        for sort in ("-events", "last", "-severity", "src"):
            got = backend.threats(AggregateQuery(rng), 11, sort)
            assert (got.since_us, got.until_us, got.partial) == (rng.since_us, rng.until_us, False)
            _check_threats(got.rows, _sorted_threats(rows, sort)[:11])
        by_pair = {(r["src_ip"], r["trail"]): r for r in rows}
        width = rng.until_us - rng.since_us
        for spark in (24, 6, 96, 5):
            for t in backend.threats(AggregateQuery(rng), 8, spark=spark).rows:
                want = [0] * spark
                for e in by_pair[(t.src_ip, t.trail)]["group"]:
                    want[(e.ts_us - rng.since_us) * spark // width] += 1
                assert list(t.spark) == want, (rng, spark, t.src_ip, t.trail)


def test_clickhouse_days_stored_before_the_daily_rollup_are_answered_from_the_hourly_one(clickhouse_server, tmp_path):
    """A database made before threats_daily existed: its days are recorded as missing from it
    when the view is made, and answered from threats_hourly and the events; days stored after
    come from threats_daily. Either way the answer is the events'."""
    import asyncio
    import uuid

    from server.store.clickhouse import ClickHouseClient, ClickHouseEventStore

    db = "c_" + uuid.uuid4().hex[:12]

    def sql(text):
        async def go():
            c = ClickHouseClient(clickhouse_server.url, "default")
            try:
                return await c.select(text)
            finally:
                await c.close()
        return asyncio.run(go())

    def store():
        return ClickHouseEventStore(clickhouse_server.url, db, timezone="UTC", log_dir=str(tmp_path / "store"))

    sent = events_set()
    old, new = sent[:500], [e._replace(ts_us=e.ts_us + 10 * 24 * H_US, last_ts_us=e.last_ts_us + 10 * 24 * H_US)
                            for e in sent[500:]]
    try:
        with store() as s:
            s.ingest(old)
        for name in ("threats_daily_mv", "threats_daily", "threats_daily_missing"):    # as an older version made it
            sql("DROP TABLE %s.%s" % (db, name))
        with store() as s:
            s.ingest(new)
            held = sorted({e.ts_us // (24 * H_US) for e in old})
            assert sorted(int(r[0]) for r in sql("SELECT DISTINCT toUInt32(day) FROM %s.threats_daily_missing" % db)) \
                == held
            assert sum(int(r[0]) for r in sql("SELECT countMerge(events) FROM %s.threats_daily" % db)) == len(new)
            for rng in (TimeRange(DAY0, DAY0 + 24 * H_US), TimeRange(DAY0 + 10 * 24 * H_US, DAY0 + 11 * 24 * H_US),
                        TimeRange(DAY0 - 24 * H_US, DAY0 + 12 * 24 * H_US)):
                want = _sorted_threats(_threat_rows(kept(old + new, (), rng)), "-events")[:10]
                assert want
                _check_threats(s.threats(AggregateQuery(rng), 10).rows, want)
    finally:
        sql("DROP DATABASE IF EXISTS " + db)
