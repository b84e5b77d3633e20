"""Floods benchmark: what the heuristics' bounded state costs when traffic fills it.

`python -m bench floods [--keys N] [--trails T]` feeds a shipped worker (`Worker(fast=True)`, the
C scan with its heuristic state, noise control behind it) one flood per kind, each in a fresh
process: N distinct keys (scanners, sources, clients, domains, names), each pushed past its
heuristic's threshold, so every table fills to its cap (65,536 keys by default) and noise control
holds a group per key. It reports the growth of the process's resident memory over the flood, what
the state holds at the end, the saturation counters and the events, so the worst case of the
bounded state is a measured figure, not an estimate.

Frames are built in the child before the worker is created, so the memory figure is the worker's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

KINDS = {
    # kind: (what a key is, frames per key)
    "port": ("a scanner probing 11 ports of one target", 11),
    "udp": ("a client sending 11 small datagrams to ports of one server", 11),
    "infection": ("a local source reaching 33 hosts on port 445", 33),
    "web": ("a client asking one server for 11 first path segments", 11),
    "dns": ("a registered domain queried for 16 subdomains", 16),
    "nxdomain": ("a name answered NXDOMAIN", 1),
}
DEFAULT_TRAILS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "corpus", "trails.csv")


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _address(k: int, first: int = 10) -> str:
    return "%d.%d.%d.%d" % (first, 1 + k // 65536 % 200, k // 256 % 256, k % 256)


def _frames(kind: str, keys: int):
    """(ts_ns, frame) for the flood, in time order: key after key, 100 us apart."""
    from engine.sources import synthetic as g
    per = KINDS[kind][1]
    ts = 1_700_000_000 * 10**9
    for k in range(keys):
        for v in range(per):
            ts += 100_000
            if kind == "port":
                yield ts, g.tcp_frame(_address(k, 100), "198.18.0.7", 40000, 1000 + v, g.TCP_SYN)
            elif kind == "udp":
                yield ts, g.udp_frame(_address(k, 100), "198.18.0.7", 40000, 1000 + v, b"probe")
            elif kind == "infection":
                yield ts, g.tcp_frame(_address(k), "198.18.%d.%d" % (v, k % 256), 40000, 445, g.TCP_SYN)
            elif kind == "web":
                yield ts, g.tcp_frame(_address(k, 100), "198.18.0.7", 40000, 80, g.TCP_PSH | g.TCP_ACK,
                                      g.http_request("GET", "/s%d/x" % v, "w.example"))
            elif kind == "dns":
                yield ts, g.udp_frame("10.0.0.1", "10.0.0.53", 40000 + v, 53, g.dns_query("s%d.d%d.org" % (v, k)))
            else:
                yield ts, g.udp_frame("10.0.0.53", "10.0.0.1", 53, 40000, g.dns_response("n%d.nx%d.org" % (k, k), rcode=3))


def child(kind: str, keys: int, artifact: str) -> dict:
    from matchers import Artifact, TrailMatchers
    from workers.batch import FrameBatchBuilder
    from workers.pipeline import Worker
    batches, builder = [], FrameBatchBuilder()
    for ts, frame in _frames(kind, keys):
        builder.add(frame, ts, 1)
        if len(builder) == 4096:
            batches.append(builder.take())
    if len(builder):
        batches.append(builder.take())
    matchers = TrailMatchers.load(Artifact.open(artifact))
    worker = Worker(matchers, "bench", fast=True)
    before = _rss_mb()
    start = time.perf_counter()
    records = 0
    for batch in batches:
        records += len(worker.process(batch))
    wall = time.perf_counter() - start
    grown = _rss_mb() - before
    records += len(worker.flush())
    stats = worker.stats()
    return {"kind": kind, "keys": keys, "frames": stats["frames"], "rss_growth_mb": grown, "wall_s": wall,
            "held": worker.fast_heuristics.held(), "saturation": {k: v for k, v in stats["saturation"].items() if v},
            "events": sum(stats["events"].values()), "records": records}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench floods", description=__doc__.split("\n\n")[0])
    ap.add_argument("--keys", type=int, default=65536, help="distinct keys per flood (default 65536: every cap)")
    ap.add_argument("--trails", default=DEFAULT_TRAILS, help="trail source or compiled artifact (default: the "
                    "project's corpus trails; floods touch no trail)")
    ap.add_argument("--kind", action="append", choices=sorted(KINDS), help="only these floods (repeatable)")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.keys, args.trails)))
        return 0
    with tempfile.TemporaryDirectory(prefix="mt-floods-") as tmp:
        artifact = args.trails
        if not artifact.endswith(".mtdb"):
            from trailsdb.compile import build
            artifact = os.path.join(tmp, "t.mtdb")
            build([args.trails], artifact)
        results = []
        for kind in args.kind or list(KINDS):
            print("bench.floods: %s, %d keys" % (kind, args.keys), file=sys.stderr)
            done = subprocess.run([sys.executable, "-m", "bench.floods", "--child", kind, "--keys", str(args.keys),
                                   "--trails", artifact], capture_output=True, text=True)
            if done.returncode:
                print(done.stderr, file=sys.stderr)
                return 1
            results.append(json.loads(done.stdout.splitlines()[-1]))
    print("maltrail-engine floods benchmark (python -m bench floods): a shipped worker's heuristic state filled")
    print("  %-9s  %-58s  %9s  %7s  %9s  %6s  %s" % ("flood", "a key is", "frames", "events", "RSS +MB", "wall s",
                                                   "state held; saturation"))
    for r in results:
        held = ", ".join("%s %d" % (k, v) for k, v in r["held"].items() if v)
        sat = ", ".join("%s %d" % (k, v) for k, v in r["saturation"].items())
        print("  %-9s  %-58s  %9d  %7d  %9.1f  %6.2f  %s%s" % (r["kind"], KINDS[r["kind"]][0], r["frames"], r["events"],
                                                              r["rss_growth_mb"], r["wall_s"], held or "-",
                                                              "; " + sat if sat else ""))
    print("  events: detections (before noise control); RSS +MB: the worker process's resident memory after the flood")
    print("  minus before it (frames built first); state held: keys, domains, subdomains in the C scan's tables")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
