"""Server query latency benchmark: the API's store queries over a day and over 30 days, on both
backends, with the store's memory at those sizes.

`python -m bench server-query [--backends sqlite,clickhouse] [--day-events N] [--month-events N]
[--month-days D] [--repeat R] [--clickhouse-url URL]`

For each backend, two stores are filled through the store's own `ingest` (the server's path:
the daily log written and fsync'd, then the index), in batches of 50,000 like the intake's:
"day" holds --day-events events (default 1,000,000) in one day; "month" holds --month-events
(default 10,000,000) over --month-days days (30). Events are synthetic and seeded, with the
cardinalities of real traffic: a few thousand sources (3,000 IPv4 and 1,000 IPv6, the commonest
seen most: index = N * u**3), a few hundred trails (300; each source keeps to a few of them, or
with --uncorrelated any, the threats query's worst case), 400 destinations, five sensors, the
three event types and severities. Then each query runs --repeat times and the
median and the worst are printed:
- the dashboard of the last day: counts per hour by type and by severity, top 10 sources,
  destinations and trails, the top 100 threats, each alone and as the sum of all six (target
  <= 200 ms); the same over the whole range (30 days);
- pages of events (100, newest first; target <= 100 ms): the first page, a page ten pages deep
  (following the cursor), filtered by a source /16, by an IPv6 /64, by a trail, by a port;
- a scoped user's dashboard (scope 10.1.0.0/16 and 2001:db8:1::/48): aggregates computed from the
  events in scope, not the roll-ups.
Memory: this process's RSS and PSS (it holds the store as the server would) after the queries;
for ClickHouse, clickhouse-server's too. The bench starts its own clickhouse-server on loopback
(tests/clickhouse.py, so run it from the checkout) unless --clickhouse-url names one. Measures;
asserts nothing.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
import uuid

os.environ["TZ"] = "UTC"       # day files are named by the local date: make it the store's zone
time.tzset()

from events.record import SEVERITIES, TYPE_DNS, TYPE_IP, TYPE_URL, Event  # noqa: E402
from server.store import AggregateQuery, EventQuery, TimeRange  # noqa: E402

DAY0_S = 1_772_323_200            # 2026-03-01 00:00:00 UTC
DAY_US = 86_400_000_000
CHUNK = 50_000
SCOPE = ("10.1.0.0/16", "2001:db8:1::/48")     # a department: about 1/30 of the events


class Pools:
    """The value pools events are drawn from (see the module docstring)."""

    def __init__(self):
        self.srcs = ["10.%d.%d.%d" % (i >> 16 & 255, i >> 8 & 255, i & 255) for i in range(0, 3000 * 97, 97)]
        self.srcs += ["2001:db8:%x::%x" % (i % 7, i) for i in range(1, 1001)]
        random.Random(1).shuffle(self.srcs)     # both families among the commonest
        self.dsts = ["192.0.2.%d" % i for i in range(256)] + ["2001:db8:ff::%x" % i for i in range(144)]
        self.trails = ["bad%d.example" % i for i in range(300)]
        self.types = (TYPE_IP, TYPE_DNS, TYPE_URL)
        self.sensors = ["sensor%d" % i for i in range(5)]


def generate(pools: Pools, n: int, start_us: int, span_us: int, seed: int, correlated: bool = True):
    """n seeded events in [start_us, start_us + span_us), in chunks of CHUNK, each chunk sorted
    by time (a sensor's events arrive in nearly that order). Correlated: each source hits a few
    trails of its own (about 12,000 source/trail pairs a day); not: source and trail drawn
    independently (about 400,000 pairs in a day of 1M: the threats query's worst case)."""
    rnd = random.Random(seed)
    srcs, dsts, trails = pools.srcs, pools.dsts, pools.trails
    ns, nt = len(srcs), len(trails)
    step = span_us / n
    for first in range(0, n, CHUNK):
        out = []
        for i in range(first, min(n, first + CHUNK)):
            t = start_us + int(i * step) + rnd.randrange(max(1, int(step)))
            src_i = int(ns * rnd.random() ** 3)
            if correlated:
                # A source keeps to a few trails of its own (a scanner, a bot and its C2s).
                trail_i = (src_i * 37 + int(8 * rnd.random() ** 2)) % nt
            else:
                trail_i = int(nt * rnd.random() ** 3)
            out.append(Event(t, pools.sensors[i % 5], srcs[src_i], rnd.randrange(1024, 65536),
                             rnd.choice(dsts), (53, 80, 443, 8080)[i & 3], "TCP", pools.types[trail_i % 3],
                             trails[trail_i], "malware (static)", "feed", SEVERITIES[trail_i % 3], 1, t))
        yield out


def timed(repeat: int, fn) -> tuple[float, float, object]:
    took, answer = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        answer = fn()
        took.append((time.perf_counter() - t0) * 1000)
    return statistics.median(took), max(took), answer


def memory_kib(pid: int | str = "self") -> tuple[int, int]:
    """(RSS, PSS) in KiB of a process, from /proc (smaps_rollup)."""
    rss = pss = 0
    try:
        with open("/proc/%s/smaps_rollup" % pid) as f:
            for line in f:
                if line.startswith("Rss:"):
                    rss = int(line.split()[1])
                elif line.startswith("Pss:"):
                    pss = int(line.split()[1])
    except OSError:
        pass
    return rss, pss


def clickhouse_pid(directory: str) -> int | None:
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open("/proc/%s/cmdline" % entry, "rb") as f:
                    if directory.encode() in f.read():
                        return int(entry)
            except OSError:
                continue
    return None


def fill(store, pools: Pools, n: int, days: int, seed: int, correlated: bool) -> tuple[float, float]:
    t0, c0 = time.perf_counter(), time.process_time()
    for chunk in generate(pools, n, DAY0_S * 1_000_000, days * DAY_US, seed, correlated):
        store.ingest(chunk)
    return time.perf_counter() - t0, time.process_time() - c0


def dashboard(store, rng: TimeRange, scope=()) -> list[tuple[str, object]]:
    q = AggregateQuery(rng, scope=scope, budget_ms=60_000, row_cap=1 << 40)
    return [
        ("counts per hour by type", lambda: store.counts(q, "type", "hour")),
        ("counts per hour by severity", lambda: store.counts(q, "severity", "hour")),
        ("top 10 sources", lambda: store.top(q, "src_ip", 10)),
        ("top 10 destinations", lambda: store.top(q, "dst_ip", 10)),
        ("top 10 trails", lambda: store.top(q, "trail", 10)),
        ("threats, top 100", lambda: store.threats(q, 100)),
    ]


def pages(store, rng: TimeRange, pools: Pools) -> list[tuple[str, object]]:
    def q(**kw):
        return EventQuery(rng, limit=100, budget_ms=60_000, **kw)

    def deep():
        cursor = None
        for _ in range(10):
            cursor = store.events(q(cursor=cursor)).next_cursor
        return store.events(q(cursor=cursor))

    return [
        ("first page", lambda: store.events(q())),
        ("page 11 (cursor, 10 pages walked)", deep),
        ("source 10.0.0.0/16", lambda: store.events(q(src="10.0.0.0/16"))),
        ("source 2001:db8:3::/64", lambda: store.events(q(src="2001:db8:3::/64"))),
        ("trail (a rare one)", lambda: store.events(q(trail=pools.trails[-1]))),
        ("port 8080", lambda: store.events(q(port=8080))),
    ]


def report(title: str, cases, repeat: int, target_ms: float | None, total: str | None = None) -> None:
    print("  %s" % title)
    sum_med = 0.0
    for name, fn in cases:
        med, worst, answer = timed(repeat, fn)
        sum_med += med
        partial = " PARTIAL" if getattr(answer, "partial", False) else ""
        print("    %-36s %8.1f ms / %8.1f ms%s" % (name, med, worst, partial))
    if total:
        flag = "" if target_ms is None else ("  (target <= %d ms: %s)" % (target_ms, "met" if sum_med <= target_ms
                                                                           else "MISSED"))
        print("    %-36s %8.1f ms%s" % (total, sum_med, flag))


def run_size(label: str, make_store, pools: Pools, n: int, days: int, args, extra_pid=None) -> None:
    repeat = args.repeat
    store = make_store()
    try:
        wall, cpu = fill(store, pools, n, days, args.seed, not args.uncorrelated)
        print("%s: %d events over %d day(s): ingest %.1f s wall, %.1f s CPU here (%.0f events/s)"
              % (label, n, days, wall, cpu, n / wall))
        end = DAY0_S * 1_000_000 + days * DAY_US
        last_day = TimeRange(end - DAY_US, end)
        everything = TimeRange(DAY0_S * 1_000_000, end)
        gc.collect()
        report("dashboard, last day (median / worst of %d):" % repeat, dashboard(store, last_day), repeat, 200,
               "the six together (medians)")
        if days > 1:
            report("dashboard, all %d days:" % days, dashboard(store, everything), repeat, None,
                   "the six together (medians)")
        report("pages of 100 events, last day (target <= 100 ms each):", pages(store, last_day, pools), repeat, None)
        if days > 1:
            report("pages of 100 events, all %d days:" % days, pages(store, everything, pools), repeat, None)
        report("scoped user %s, last day:" % ", ".join(SCOPE), dashboard(store, last_day, SCOPE), repeat, None,
               "the six together (medians)")
        rss, pss = memory_kib()
        line = "  memory: this process RSS %d MiB, PSS %d MiB" % (rss // 1024, pss // 1024)
        if extra_pid:
            crss, cpss = memory_kib(extra_pid)
            line += "; clickhouse-server RSS %d MiB, PSS %d MiB" % (crss // 1024, cpss // 1024)
        print(line, flush=True)
    finally:
        store.close()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench server-query", description=__doc__.split("\n\n")[0])
    ap.add_argument("--backends", default="sqlite,clickhouse")
    ap.add_argument("--day-events", type=int, default=1_000_000, help="events in the one-day store (0: skip)")
    ap.add_argument("--month-events", type=int, default=10_000_000, help="events in the many-day store (0: skip)")
    ap.add_argument("--month-days", type=int, default=30)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--uncorrelated", action="store_true",
                    help="draw each event's trail independently of its source (many more threats)")
    ap.add_argument("--clickhouse-url", help="an existing ClickHouse (default: start one on loopback)")
    ap.add_argument("--clickhouse-user", default="default")
    ap.add_argument("--clickhouse-password", default="")
    args = ap.parse_args(argv)
    pools = Pools()
    sizes = [(label, n, days) for label, n, days in (("day", args.day_events, 1),
                                                     ("month", args.month_events, args.month_days)) if n > 0]
    print("server-query: %s, Python %s, %d CPUs" % (platform.machine(), platform.python_version(), os.cpu_count() or 0))
    work = tempfile.mkdtemp(prefix="bench-server-query-")
    try:
        for backend in [b for b in args.backends.split(",") if b]:
            if backend == "sqlite":
                from server.store.sqlite import SqliteStore
                for label, n, days in sizes:
                    log_dir = os.path.join(work, "sqlite-" + label)
                    run_size("sqlite, " + label, lambda: SqliteStore(log_dir), pools, n, days, args)
                    shutil.rmtree(log_dir, ignore_errors=True)
            elif backend == "clickhouse":
                run_clickhouse(args, work, pools, sizes)
            else:
                print("unknown backend %r (sqlite, clickhouse)" % backend, file=sys.stderr)
                return 2
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def run_clickhouse(args, work: str, pools: Pools, sizes) -> None:
    from server.store.clickhouse import ClickHouseEventStore

    def go(url, user, password, directory):
        pid = clickhouse_pid(directory) if directory else None
        for label, n, days in sizes:
            db = "bench_" + uuid.uuid4().hex[:8]
            log_dir = os.path.join(work, "clickhouse-" + label)
            try:
                run_size("clickhouse, " + label, lambda: ClickHouseEventStore(url, db, user, password, "UTC",
                                                                              log_dir=log_dir),
                         pools, n, days, args, pid)
            finally:
                _drop_database(url, user, password, db)
                shutil.rmtree(log_dir, ignore_errors=True)

    if args.clickhouse_url:
        go(args.clickhouse_url, args.clickhouse_user, args.clickhouse_password, None)
        return
    from tests.clickhouse import running_clickhouse
    with running_clickhouse() as server:
        print("ClickHouse %s (started on loopback)" % server.version)
        go(server.url, server.user, server.password, server.directory)


def _drop_database(url: str, user: str, password: str, db: str) -> None:
    import base64
    import urllib.request
    basic = base64.b64encode(("%s:%s" % (user, password)).encode()).decode()
    req = urllib.request.Request(url, data=("DROP DATABASE IF EXISTS " + db).encode(),
                                 headers={"Authorization": "Basic " + basic})
    urllib.request.urlopen(req, timeout=60).close()


if __name__ == "__main__":
    sys.exit(main())
