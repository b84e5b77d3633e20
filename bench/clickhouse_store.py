"""`python -m bench.clickhouse_store`: the server's ClickHouse store (server/store/clickhouse.py) at
the sizes issue 11 names: ingest rate, then the latency of the dashboard's queries over a day of
events, from the roll-ups and (the baseline, and what a scoped user gets) from the events table.

Starts its own clickhouse-server on loopback (tests/clickhouse.py, so run it from the checkout)
unless --url names one. Events are synthetic and seeded: --events over --days days, sources
drawn from a few thousand IPv4 and IPv6 addresses, a few hundred trails, three sensors. Each
query runs --repeat times; the median and the worst are printed, with the event count beside
them, the ClickHouse version and the machine. Measures; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import statistics
import sys
import time
import uuid

from events.record import SEVERITIES, TYPE_DNS, TYPE_IP, TYPE_URL, Event
from server.store.clickhouse import ClickHouseClient, ClickHouseStore, EventQuery

DAY0_S = 1_772_323_200            # 2026-03-01 00:00:00 UTC
H_US = 3_600_000_000


def synthetic(n: int, days: int, seed: int, skewed: bool = True) -> list[Event]:
    """Seeded events. Skewed (the default): sources and trails drawn with a heavy head (index =
    N * u**3), as real traffic repeats a few scanners and trails; uniform: every (source, trail)
    pair about equally likely, the worst case for the threats roll-up (nearly one pair per event)."""
    rnd = random.Random(seed)
    srcs = ["10.%d.%d.%d" % (i >> 16 & 255, i >> 8 & 255, i & 255) for i in range(3000)]
    srcs += ["2001:db8::%x" % i for i in range(1, 1001)]
    trails = ["bad%d.example" % i for i in range(300)]
    span_us = days * 24 * H_US
    out = []
    for i in range(n):
        t = DAY0_S * 1_000_000 + rnd.randrange(span_us)
        if skewed:
            src, trail = srcs[int(len(srcs) * rnd.random() ** 3)], trails[int(len(trails) * rnd.random() ** 3)]
        else:
            src, trail = rnd.choice(srcs), rnd.choice(trails)
        out.append(Event(t, "sensor%d" % (i % 3), src, rnd.randrange(1024, 65536),
                         "192.0.2.%d" % rnd.randrange(256), rnd.choice((53, 80, 443)), "TCP",
                         rnd.choice((TYPE_IP, TYPE_DNS, TYPE_URL)), trail, "malware (static)",
                         "feed", rnd.choice(SEVERITIES), 1, t))
    return out


async def timed(repeat: int, fn) -> tuple[float, float]:
    took = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        await fn()
        took.append((time.perf_counter() - t0) * 1000)
    return statistics.median(took), max(took)


async def run(url: str, user: str, password: str, n: int, days: int, repeat: int, seed: int, skewed: bool) -> None:
    db = "bench_" + uuid.uuid4().hex[:8]
    st = ClickHouseStore(url, db, user, password)
    try:
        await st.create()
        version = (await st.client.select("SELECT version()"))[0][0].decode()
        print("ClickHouse %s, Python %s, %s, %d CPUs" % (version, platform.python_version(), platform.machine(),
                                                         os.cpu_count() or 0))
        events = synthetic(n, days, seed, skewed)
        print("events: %d over %d day(s), %s" % (n, days, "skewed" if skewed else "uniform"))
        t0, c0 = time.perf_counter(), time.process_time()
        for i in range(0, n, 50_000):
            await st.ingest(events[i:i + 50_000])
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        print("ingest: %d events in %.1f s wall (%.1f s CPU here): %.0f events/s"
              % (n, wall, cpu, n / wall))
        start, end = DAY0_S * 1_000_000, (DAY0_S + 86_400) * 1_000_000
        day_n = sum(1 for e in events if start <= e.ts_us < end)
        everyone = ("0.0.0.0/0", "::/0")    # a scope covering all: the from-the-events path
        cases = [
            ("events page (100, newest first)", lambda: st.events(EventQuery(start, end, limit=100))),
            ("events page, source /16", lambda: st.events(EventQuery(start, end, src=("10.0.0.0/16",), limit=100))),
            ("events page, IPv6 /64", lambda: st.events(EventQuery(start, end, src=("2001:db8::/64",), limit=100))),
            ("counts by type per hour (roll-up)", lambda: st.counts(start, end, "type", "hour")),
            ("counts by type per hour (events)", lambda: st.counts(start, end, "type", "hour", scope=everyone)),
            ("top 10 sources (roll-up)", lambda: st.top(start, end, "src_ip", 10)),
            ("top 10 sources (events)", lambda: st.top(start, end, "src_ip", 10, scope=everyone)),
            ("threats, top 100 (roll-up)", lambda: st.threats(start, end, 100)),
            ("threats, top 100 (events)", lambda: st.threats(start, end, 100, scope=everyone)),
        ]
        print("queries over one day (%d events), median / worst of %d:" % (day_n, repeat))
        for name, fn in cases:
            med, worst = await timed(repeat, fn)
            print("  %-36s %7.1f ms / %7.1f ms" % (name, med, worst))
    finally:
        c = ClickHouseClient(url, "default", user, password)
        await c.execute("DROP DATABASE IF EXISTS " + db)
        await c.close()
        await st.close()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.clickhouse_store", description=__doc__.split("\n")[0])
    ap.add_argument("--url", help="an existing ClickHouse (default: start one on loopback)")
    ap.add_argument("--user", default="default")
    ap.add_argument("--password", default="")
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--days", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--uniform", action="store_true", help="every (source, trail) pair equally likely")
    args = ap.parse_args(argv)
    if args.url:
        asyncio.run(run(args.url, args.user, args.password, args.events, args.days, args.repeat, args.seed,
                        not args.uniform))
        return 0
    from tests.clickhouse import running_clickhouse
    with running_clickhouse() as server:
        asyncio.run(run(server.url, server.user, server.password, args.events, args.days, args.repeat, args.seed,
                        not args.uniform))
    return 0


if __name__ == "__main__":
    sys.exit(main())
