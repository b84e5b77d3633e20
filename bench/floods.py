"""Floods benchmark: what the heuristics' bounded state costs when traffic fills it.

`python -m bench floods [--keys N] [--trails T]` feeds a shipped worker (`Worker(fast=True)`, the
C scan with its heuristic state, noise control behind it) one flood per kind, each in a fresh
process: N distinct keys (scanners, sources, clients, domains, names), each pushed past its
heuristic's threshold, so every table fills to its cap (65,536 keys by default) and noise control
holds a group per key. It reports the growth of the process's resident memory over the flood, what
the state holds at the end, the saturation counters and the events, so the worst case of the
bounded state is a measured figure, not an estimate.

Frames are built in the child before the worker is created, so the memory figure is the worker's.

`--scanners N` (default 180,000; 0 skips it) then runs the scanner flood through the real engine:
a pcap of N distinct IPv4 scanners, each probing `--ports` (default 20) ports of one target with
SYNs 100 us apart, is written to a temporary file (built from one template, patched per frame, so
3.6 M frames take seconds) and replayed by `maltrail-engine replay` with one worker. Every 50 ms
the bench reads each engine process's VmRSS (/proc/PID/status) and Pss (/proc/PID/smaps_rollup)
and keeps each process's peak and the peak of the summed PSS; afterwards it reads the log back
(`maltrail-engine tail --format json`) and counts the port-scan detections (the records' repeat
counts summed) and the distinct scanners reported, which must be all N. `--baseline-site DIR`
replays the same pcap with another build of the package first (a `pip install --target DIR` of an
older tree, put first on PYTHONPATH), alternating runs, and prints each figure as a ratio of it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
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


def _proc_memory(pid: int) -> tuple[int, int]:
    """(VmRSS, Pss) of one process in bytes, (0, 0) once it has exited."""
    rss = pss = 0
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1]) * 1024
        with open("/proc/%d/smaps_rollup" % pid) as f:
            for line in f:
                if line.startswith("Pss:"):
                    pss = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return rss, pss


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


SCAN_TARGET = "198.18.0.7"
SCAN_SPORT = 40000
FIRST_PORT = 1000
START_NS = 1_700_000_000 * 10**9
GAP_NS = 100_000


def scanner_address(k: int) -> str:
    """The k-th scanner of the engine flood (100.1.0.0 up, outside every local network)."""
    return _address(k, 100)


def _fold(total: int) -> int:
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def write_scanner_pcap(path: str, scanners: int, ports: int) -> int:
    """Writes the engine flood: scanner after scanner, each sending a SYN to ports FIRST_PORT ..
    FIRST_PORT + ports - 1 of SCAN_TARGET, GAP_NS apart. The frames are those
    engine.sources.synthetic.tcp_frame builds (tests/test_bench.py holds them to it), made from one
    template with the source address, the port and both checksums patched. Returns the frames."""
    import struct
    from engine.sources import synthetic as g
    template = bytearray(g.tcp_frame("0.0.0.0", SCAN_TARGET, SCAN_SPORT, 0, g.TCP_SYN))
    words = struct.unpack("!27H", bytes(template))
    ip_base = sum(words[7:17]) - words[12]          # the IPv4 header, its checksum field left out
    tcp_base = (sum(words[17:27]) - words[25]        # the TCP header, checksum left out
                + sum(struct.unpack("!2H", g._addr(SCAN_TARGET))) + 6 + 20)  # pseudo-header
    record = struct.Struct("<IIII")
    ts_ns = START_NS
    frames = 0
    with open(path, "wb") as f:
        f.write(struct.pack("<IHHiIII", g.PCAP_MAGIC_US, 2, 4, 0, 0, 262144, g.LINKTYPE_ETHERNET))
        out = []
        for k in range(scanners):
            src = g._addr(scanner_address(k))
            template[26:30] = src
            hi, lo = struct.unpack("!HH", src)
            template[24:26] = struct.pack("!H", _fold(ip_base + hi + lo))
            for v in range(ports):
                ts_ns += GAP_NS
                port = FIRST_PORT + v
                template[36:38] = port.to_bytes(2, "big")
                template[50:52] = _fold(tcp_base + hi + lo + port).to_bytes(2, "big")
                sec, ns = divmod(ts_ns, 1_000_000_000)
                out.append(record.pack(sec, ns // 1000, len(template), len(template)) + bytes(template))
                frames += 1
            if len(out) >= 65536:
                f.write(b"".join(out))
                out.clear()
        f.write(b"".join(out))
    return frames


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


class _Sampler(threading.Thread):
    """Every 50 ms, VmRSS and Pss of the engine's processes (the root and its descendants, found
    afresh each time from /proc/PID/stat); keeps each process's peaks, named by its comm, and the
    peak of the summed PSS."""

    def __init__(self, root: int):
        super().__init__(daemon=True)
        self.root = root
        self.peak = {}              # comm[pid] -> [peak RSS, peak PSS]
        self.total_pss = 0
        self._halt = threading.Event()

    def _tree(self) -> dict:
        from bench.replay import process_tree
        return {pid: "supervisor" if pid == self.root else comm
                for pid, (_, comm, _cpu) in process_tree(self.root).items()}

    def sample(self) -> None:
        total = 0
        for pid, comm in self._tree().items():
            rss, pss = _proc_memory(pid)
            total += pss
            peak = self.peak.setdefault("%s[%d]" % (comm, pid), [0, 0])
            peak[0], peak[1] = max(peak[0], rss), max(peak[1], pss)
        self.total_pss = max(self.total_pss, total)

    def run(self) -> None:
        while not self._halt.wait(0.05):
            self.sample()

    def stop(self) -> None:
        self._halt.set()
        self.join()


def engine_flood(pcap: str, artifact: str, workdir: str, site: str | None = None) -> dict:
    """One `maltrail-engine replay` of the scanner flood with one worker (the package from `site`
    when given); the peaks per process and in all, and the detections read back from the log."""
    from bench.replay import engine_command
    env = dict(os.environ)
    if site:
        env["PYTHONPATH"] = site + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    log_dir = tempfile.mkdtemp(prefix="log-", dir=workdir)
    os.chmod(log_dir, 0o755)
    engine = engine_command()
    cmd = [engine, "replay", "--trails", artifact, "--log-dir", log_dir, "--workers", "1",
           "--stats-json", os.path.join(log_dir, "stats.json"), "-q", pcap]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    sampler = _Sampler(proc.pid)
    sampler.start()
    _, err = proc.communicate()
    wall = time.perf_counter() - start
    sampler.stop()
    if proc.returncode:
        raise SystemExit("bench.floods: %s exited %d\n%s" % (" ".join(cmd), proc.returncode, err))
    tail = subprocess.run([engine, "tail", "--log-dir", log_dir, "--format", "json"], capture_output=True,
                          text=True, env=env)
    if tail.returncode:
        raise SystemExit("bench.floods: maltrail-engine tail exited %d\n%s" % (tail.returncode, tail.stderr))
    scanners, detections, records = set(), 0, 0
    for line in tail.stdout.splitlines():
        if line.strip():
            record = json.loads(line)
            records += 1
            if record.get("info") == "potential port scanning":
                scanners.add(record["src_ip"])
                detections += int(record.get("count") or 1)
    workers = {k: v for k, v in sampler.peak.items() if k.startswith("mte-worker")}
    with open(os.path.join(log_dir, "stats.json")) as f:
        cpu = json.load(f).get("cpu_by_process") or {}   # each process's own CPU (an older tree: none)
    return {"wall_s": wall, "records": records, "detections": detections, "scanners": len(scanners),
            "cpu_by_process": cpu,
            "worker_rss": max(v[0] for v in workers.values()), "worker_pss": max(v[1] for v in workers.values()),
            "total_pss": sampler.total_pss, "peaks": sampler.peak}


def engine_floods(args, artifact: str, tmp: str) -> tuple[list[str], dict]:
    """The scanner flood through the engine, against --baseline-site when given: the table and the
    raw runs per build."""
    pcap = os.path.join(tmp, "scanners.pcap")
    print("bench.floods: writing %d scanners x %d ports" % (args.scanners, args.ports), file=sys.stderr)
    frames = write_scanner_pcap(pcap, args.scanners, args.ports)
    os.chmod(tmp, 0o755)
    builds = ([("baseline", args.baseline_site)] if args.baseline_site else []) + [("this tree", None)]
    runs = {name: [] for name, _ in builds}
    for r in range(args.runs):
        for name, site in builds:
            print("bench.floods: engine replay, %s, run %d" % (name, r + 1), file=sys.stderr)
            runs[name].append(engine_flood(pcap, artifact, tmp, site))
    expected = args.scanners * max(0, args.ports - 10)     # probes past the default threshold of 10 ports
    out = ["", "scanner flood through the engine (maltrail-engine replay, 1 worker): %d scanners x %d ports = %d "
           "frames; medians of %d runs; MB = 10^6 bytes" % (args.scanners, args.ports, frames, args.runs),
           "  %-10s  %13s  %13s  %13s  %10s  %13s  %9s  %7s" % ("build", "worker RSS MB", "worker PSS MB",
                                                               "all PSS MB", "records", "detections",
                                                               "scanners", "wall s")]
    base = None
    for name, _ in builds:
        rows = runs[name]
        med = {k: _median([r[k] for r in rows]) for k in ("worker_rss", "worker_pss", "total_pss", "wall_s")}
        last = rows[-1]
        cells = []
        for k in ("worker_rss", "worker_pss", "total_pss"):
            text = "%.1f" % (med[k] / 1e6)
            if base is not None:
                text += " (%.2fx)" % (med[k] / base[k])
            cells.append(text)
        out.append("  %-10s  %13s  %13s  %13s  %10d  %13s  %9s  %7.1f" % (
            name, cells[0], cells[1], cells[2], last["records"], "%d/%d" % (last["detections"], expected),
            "%d/%d" % (last["scanners"], args.scanners), med["wall_s"]))
        if base is None:
            base = med
    out.append("  peaks per process (last run of this tree): " + ", ".join(
        "%s RSS %.1f PSS %.1f" % (k, v[0] / 1e6, v[1] / 1e6) for k, v in sorted(runs["this tree"][-1]["peaks"].items())
        if v[0]))
    cpu = runs["this tree"][-1]["cpu_by_process"]
    if cpu:
        out.append("  CPU seconds per process at this event rate (last run of this tree): " + ", ".join(
            "%s %.2f" % kv for kv in sorted(cpu.items(), key=lambda kv: -kv[1])))
    out.append("  worker RSS/PSS: the worker process's peak VmRSS / Pss; all PSS: the peak of the summed Pss of every")
    out.append("  engine process; detections: port-scan events in the log (repeat counts summed), of the probes past")
    out.append("  the threshold; scanners: distinct sources reported for a port scan")
    return out, {"kind": "engine", "scanners": args.scanners, "ports": args.ports, "expected": expected,
                 "runs": runs}


def _median(values):
    values = sorted(values)
    return values[len(values) // 2] if len(values) % 2 else (values[len(values) // 2 - 1] + values[len(values) // 2]) / 2


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench floods", description=__doc__.split("\n\n")[0])
    ap.add_argument("--keys", type=int, default=65536, help="distinct keys per flood (default 65536: every cap)")
    ap.add_argument("--trails", default=DEFAULT_TRAILS, help="trail source or compiled artifact (default: the "
                    "project's corpus trails; floods touch no trail)")
    ap.add_argument("--kind", action="append", choices=sorted(KINDS), help="only these floods (repeatable)")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--scanners", type=int, default=180000, help="scanners in the flood replayed through the "
                    "engine (default 180000; 0 skips it)")
    ap.add_argument("--ports", type=int, default=20, help="ports each scanner probes (default 20)")
    ap.add_argument("--runs", type=int, default=1, help="engine replays per build (default 1; medians)")
    ap.add_argument("--baseline-site", help="a `pip install --no-deps --target DIR` of another tree, replayed "
                    "first as the baseline")
    ap.add_argument("--no-kinds", action="store_true", help="only the engine flood (skip the in-process kinds)")
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
        for kind in [] if args.no_kinds else args.kind or list(KINDS):
            print("bench.floods: %s, %d keys" % (kind, args.keys), file=sys.stderr)
            done = subprocess.run([sys.executable, "-m", "bench.floods", "--child", kind, "--keys", str(args.keys),
                                   "--trails", artifact], capture_output=True, text=True)
            if done.returncode:
                print(done.stderr, file=sys.stderr)
                return 1
            results.append(json.loads(done.stdout.splitlines()[-1]))
        engine_table, engine_runs = engine_floods(args, artifact, tmp) if args.scanners > 0 else ([], None)
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
    for line in engine_table:
        print(line)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results + ([engine_runs] if engine_runs else []), f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
