"""The SQLite store's tops and threats over many days (server/store/sqlite.py): the sources and
the threats by most events over several whole days are ranked by a threshold algorithm over each
day's roll-up, read best first, instead of merging every day's every row. Each answer is
compared with one computed here from the ingested events themselves, on random multi-day stores
made to be hard for it: many ties, per-day favourites that differ from day to day, and a steady
pair that no single day lists near its top but that ranks first over the week.
"""

from __future__ import annotations

import collections
import random

import pytest

import server.store.sqlite as sqlite_store
from events.record import Event
from server.addresses import ip_key, key_text
from server.store import AggregateQuery, TimeRange, Term
from server.store.sqlite import SqliteStore

H_US = 3_600_000_000
DAY_US = 24 * H_US
DAY0 = 1_772_323_200 * 1_000_000          # 2026-03-01 00:00:00 UTC (tests run in UTC: conftest)
DAYS = 7
RANK = ("low", "medium", "high")
BUDGET_MS = 600_000                       # no answer here may be cut by the time budget
SOURCES = (["10.0.%d.%d" % (i // 7, i % 7 + 1) for i in range(45)]
           + ["2001:db8::%x" % i for i in range(1, 11)] + ["10.0.0.10", "10.0.0.9"])
TRAILS = ["bad%d.example" % i for i in range(12)] + ["Mixed.Case.example", "198.51.100.7"]


def _stamps(rng: random.Random, day: int, k: int) -> list[int]:
    """k distinct timestamps in day `day` (distinct, so "the latest event" is one event)."""
    return [DAY0 + day * DAY_US + off for off in rng.sample(range(DAY_US), k)]


def _event(rng: random.Random, ts: int, src: str, trail: str) -> Event:
    return Event(ts, rng.choice(("s1", "s2", "s3")), src, rng.choice((None, 1234, 40000)),
                 "192.0.2.%d" % rng.randrange(1, 30), rng.choice((53, 80)), rng.choice(("TCP", "UDP")),
                 rng.choice(("DNS", "URL", "IP")), trail, "info %d" % rng.randrange(1000), "ref%d" % rng.randrange(3),
                 rng.choice(RANK), 1, ts + rng.choice((0, 0, 1000)))


def make_events(kind: str, seed: int) -> list[Event]:
    """A week of events. zipf: each day its own skewed favourites (the algorithm stops early);
    flat: hundreds of pairs with one to three events (ties everywhere, read deep); steady: each
    day 100 pairs of its own with 12 events over one pair with 11 every day (77 in all: first
    over the week, yet in no day's first 100)."""
    rng = random.Random("%s-%d" % (kind, seed))
    out = []
    for day in range(DAYS):
        plan: list[tuple[str, str, int]] = []
        if kind == "zipf":
            pairs = rng.sample([(s, t) for s in SOURCES for t in TRAILS], 160)
            plan = [(s, t, max(1, int(90 / (i + 1) ** 1.1))) for i, (s, t) in enumerate(pairs)]
        elif kind == "flat":
            pairs = rng.sample([(s, t) for s in SOURCES for t in TRAILS], 300)
            plan = [(s, t, rng.choice((1, 1, 2, 3))) for s, t in pairs]
        else:
            plan = [("10.9.%d.%d" % (day, i), "local%d.example" % day, 12) for i in range(100)]
            plan.append(("10.0.0.9", "steady.example", 11))
            plan += [(rng.choice(SOURCES), rng.choice(TRAILS), rng.choice((1, 2))) for _ in range(40)]
        total = sum(k for _s, _t, k in plan)
        stamps = iter(_stamps(rng, day, total))
        for src, trail, k in plan:
            out += [_event(rng, next(stamps), src, trail) for _ in range(k)]
    rng.shuffle(out)
    return out


def _store(tmp_path, events: list[Event]) -> SqliteStore:
    store = SqliteStore(str(tmp_path / "store"))
    for i in range(0, len(events), 700):        # several batches: the roll-ups are merged
        store.ingest(events[i:i + 700])
    return store


def _hours(since: int, until: int) -> tuple[int, int]:
    return since - since % H_US, -(-until // H_US) * H_US


def _canonical(src: str) -> str:
    return key_text(ip_key(src)) if ":" in src else src


def brute_top(events, since, until, field, n):
    lo, hi = _hours(since, until)
    c = collections.Counter(getattr(e, field) for e in events if lo <= e.ts_us < hi)
    return sorted(c.items(), key=lambda kv: (-kv[1], kv[0]))[:n]


def brute_threats(events, since, until, n, sort="-events", spark=0, excluded=()):
    """The interface's rules (server/store threats): pairs in range, left out when excluded
    (address by value, trail by case), in `sort` order with ties by most events, then source
    (as written canonically), then trail; each with its latest event's type/info/reference."""
    lo, hi = _hours(since, until)
    gone = {(ip_key(s), t.lower()) for s, t in excluded}
    groups = collections.defaultdict(list)
    for e in events:
        if lo <= e.ts_us < hi and (ip_key(e.src_ip), e.trail.lower()) not in gone:
            groups[(e.src_ip, e.trail)].append(e)
    rows = []
    for (src, trail), g in groups.items():
        latest = max(g, key=lambda e: e.ts_us)
        slices = [0] * spark
        for e in g if spark else ():
            slices[min((e.ts_us - lo) * spark // (hi - lo), spark - 1)] += 1
        rows.append(dict(src=src, trail=trail, events=len(g), first=min(e.ts_us for e in g),
                         last=max(e.last_ts_us for e in g), severity=max(RANK.index(e.severity) for e in g),
                         sensors=tuple(sorted({e.sensor for e in g})), type=latest.type, info=latest.info,
                         reference=latest.reference, spark=tuple(slices)))
    order, descending = sort.lstrip("-"), sort.startswith("-")
    rows.sort(key=lambda r: (-r["events"], _canonical(r["src"]), r["trail"]))
    value = {"events": lambda r: r["events"], "first": lambda r: r["first"], "last": lambda r: r["last"],
             "severity": lambda r: r["severity"], "trail": lambda r: r["trail"],
             "src": lambda r: ip_key(r["src"])}[order]
    rows.sort(key=value, reverse=descending)     # stable: ties keep the order above
    return rows[:n]


def _rows(answer, spark: bool):
    return [dict(src=t.src_ip, trail=t.trail, events=t.events, first=t.first_ts_us, last=t.last_ts_us,
                 severity=RANK.index(t.severity), sensors=t.sensors, type=t.type, info=t.info,
                 reference=t.reference, spark=t.spark if spark else ()) for t in answer.rows]


# The week whole (the threshold path), the week cut inside its first and last days (whole days
# ranked, the cut ones read whole), and a lone day (ranked by SQLite).
RANGES = {"week": (DAY0, DAY0 + DAYS * DAY_US),
          "cut": (DAY0 + 5 * H_US + 17, DAY0 + 5 * DAY_US + 7 * H_US),
          "day": (DAY0 + 2 * DAY_US, DAY0 + 3 * DAY_US)}
STORES = [("zipf", 1), ("zipf", 2), ("flat", 1), ("flat", 2), ("steady", 1)]


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    made = {}
    for kind, seed in STORES:
        events = make_events(kind, seed)
        made[(kind, seed)] = (_store(tmp_path_factory.mktemp("%s%d" % (kind, seed)), events), events)
    yield made
    for store, _events in made.values():
        store.close()


@pytest.mark.parametrize("kind,seed", STORES)
def test_tops_over_days_equal_the_events(stores, kind, seed):
    store, events = stores[(kind, seed)]
    for name, (since, until) in RANGES.items():
        query = AggregateQuery(TimeRange(since, until), budget_ms=BUDGET_MS)
        for field in ("src_ip", "dst_ip", "trail"):
            for n in (1, 3, 10, 50, 1000):
                got = store.top(query, field, n)
                assert not got.partial
                assert list(got.rows) == brute_top(events, since, until, field, n), (name, field, n)


@pytest.mark.parametrize("kind,seed", STORES)
def test_threats_by_most_events_over_days_equal_the_events(stores, kind, seed):
    """The dashboard's order, with its sparkline (whole hours, and slices that are not) and each
    pair's sensors and latest event, with and without pairs left out."""
    store, events = stores[(kind, seed)]
    for name, (since, until) in RANGES.items():
        for n in (1, 5, 20, 51, 400):
            for spark in (0, 24, 5):
                query = AggregateQuery(TimeRange(since, until), budget_ms=BUDGET_MS)
                got = store.threats(query, n, "-events", spark)
                assert not got.partial
                assert _rows(got, True) == brute_threats(events, since, until, n, "-events", spark), (name, n, spark)
        # Leave out the first three pairs (one spelled as an IPv4-mapped address, another with
        # its trail in other letters): the ones after them move up.
        first = brute_threats(events, since, until, 3)
        excluded = [(r["src"], r["trail"]) for r in first]
        if excluded and ":" not in excluded[0][0]:
            excluded[0] = ("::ffff:" + excluded[0][0], excluded[0][1])
        if len(excluded) > 1:
            excluded[1] = (excluded[1][0], excluded[1][1].upper())
        for n in (1, 4, 30):
            query = AggregateQuery(TimeRange(since, until), exclude_pairs=tuple(excluded), budget_ms=BUDGET_MS)
            got = store.threats(query, n, "-events", 24)
            assert _rows(got, True) == brute_threats(events, since, until, n, "-events", 24, excluded), (name, n)


@pytest.mark.parametrize("kind,seed", [("zipf", 1), ("flat", 2), ("steady", 1)])
def test_threats_in_every_order_equal_the_events(stores, kind, seed):
    store, events = stores[(kind, seed)]
    for name, (since, until) in RANGES.items():
        query = AggregateQuery(TimeRange(since, until), budget_ms=BUDGET_MS)
        for order in ("events", "first", "last", "severity", "src", "trail"):
            for sort in (order, "-" + order):
                for n in (1, 7, 40):
                    got = store.threats(query, n, sort)
                    assert _rows(got, False) == brute_threats(events, since, until, n, sort), (name, sort, n)


def test_the_steady_pair_is_found_and_days_are_read_deeper(stores, monkeypatch):
    """The steady store makes the algorithm work: no day lists the week's first pair near its top,
    so it reads the days again, deeper, and looks pairs up by key (what each SQL statement
    returned is recorded through the store's own runner)."""
    store, events = stores[("steady", 1)]
    seen = []
    real_run = sqlite_store._run

    def run(day, sql, params, deadline):
        rows = real_run(day, sql, params, deadline)
        seen.append((sql, list(params), rows))
        return rows

    monkeypatch.setattr(sqlite_store, "_run", run)
    since, until = RANGES["week"]
    got = store.threats(AggregateQuery(TimeRange(since, until), budget_ms=BUDGET_MS), 3)
    assert [(t.src_ip, t.trail, t.events) for t in got.rows][0] == ("10.0.0.9", "steady.example", 77)
    assert _rows(got, False) == brute_threats(events, since, until, 3)
    batches = {params[0] for sql, params, _rows_ in seen if "FROM threats_day ORDER BY events DESC LIMIT" in sql}
    assert len(batches) > 1                          # read again, deeper
    assert any("FROM threats_day WHERE src_ip = ? AND trail = ?" in sql for sql, _p, _r in seen)
    # Never a whole day's pairs in one read: each read is bounded by its batch.
    assert all(len(rows) <= params[0] for sql, params, rows in seen if "ORDER BY events DESC LIMIT" in sql)
    seen.clear()
    top = store.top(AggregateQuery(TimeRange(since, until), budget_ms=BUDGET_MS), "src_ip", 1)
    assert list(top.rows) == [("10.0.0.9", brute_top(events, since, until, "src_ip", 1)[0][1])]
    assert any("GROUP BY src_ip ORDER BY c DESC LIMIT" in sql for sql, _p, _r in seen)


def test_a_cut_threats_answer_with_a_sparkline_has_empty_slices(tmp_path):
    """An answer cut before its details were read (here by the row cap of a filtered query) still
    carries a sparkline of the asked length (it was a TypeError, an HTTP 500 in the API)."""
    events = make_events("zipf", 3)
    store = _store(tmp_path, events)
    try:
        every = (Term("severity", ("high", "medium", "low")),)
        query = AggregateQuery(TimeRange(DAY0, DAY0 + DAYS * DAY_US), terms=every, row_cap=50, budget_ms=BUDGET_MS)
        got = store.threats(query, 10, "-events", 24)
        assert got.partial and got.rows
        assert all(t.spark == (0,) * 24 for t in got.rows)
    finally:
        store.close()
