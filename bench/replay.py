"""Replay benchmark: the real engine over the `mix` and `hard` pcaps, with its baselines.

Run `python -m bench replay --pcap P [--pcap P2 ...] --trails T [--workers N] [--runs R]` (see
bench/README.md). Categories, each its own table:

- packet path: `workers.pipeline.Worker.process` over the pcap's batches in one process (read
  with engine/sources/pcapfile.py, reading not timed), the C fast path against the plain-Python
  reference path (`Worker(fast=False)`);
- replay: `maltrail-engine replay --stats-json` as a subprocess (capture, rings, workers, log
  writer), against `replay --reference` when the engine has it: wall and CPU time, packets/s,
  the steady rate (start-up taken out with a 1-packet replay of the same file), time from start
  to the first packet, peak PSS of the whole process tree, events by type, and for pcaps with
  planted indicators (PATH.truth.json from bench/generate.py) the recall read back from the log;
- scaling: 1 worker against N.

Every measured process is a fresh one, and the parent never maps the artifact while the engine
runs (a page mapped by the parent too would count half in the engine's PSS). Each figure is a
median over --runs runs, printed beside its baseline from the same run. Owns nothing the engine
uses.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time

from bench import longrun
from bench.trails import DEFAULT_TRAILS, MB, MISSING_TRAILS, PROJECT_ROOT, _median, _mb, _ratio, _table, machine

EXTRA_TRAILS = os.path.join(PROJECT_ROOT, "bench", "extra_trails.csv")
SAMPLE_S = 0.05
QUICK_PACKETS = 30000

# The targets maltrail-engine is built to meet (ARCHITECTURE.md): the steady rates are 2.5x Maltrail's
# Rust sensor as ../shared/bench/README.md documents it (bench/longrun.py RUST_DOC), start-up and
# memory absolute. Below them, other sensors' figures on the reference machine (2 cores, CPython
# 3.11.7, the same trail set and pcaps), from that file.
TARGETS = {"mix_pps": longrun.target_pps("mix"), "hard_pps": longrun.target_pps("hard"), "planted": "500/500",
           "start_s": longrun.TARGET_START_S, "peak_mb": longrun.TARGET_PEAK_MB}
PEERS = [
    ("Maltrail Rust sensor 3.1.2, 1 worker", "1.94 Mpps", "0.40 Mpps", "0.63-0.69 s", "165-205 MB PSS", "500/500"),
    ("Maltrail sensor.py", "34 kpps", "3.7 kpps", "0.2-1.2 s", "40-75 MB PSS", "misses UDP to malware IPs"),
    ("Suricata 7 (datasets/iprep), single / autofp", "0.79 / 0.65 Mpps", "0.083 / 0.11 Mpps", "2.3-2.9 s",
     "370-420 MB / 1.0-1.1 GB", "498/500"),
]


def _progress(message: str) -> None:
    print("bench.replay: " + message, file=sys.stderr, flush=True)


def engine_command() -> str:
    script = os.path.join(os.path.dirname(sys.executable), "maltrail-engine")
    if os.path.exists(script):
        return script
    found = shutil.which("maltrail-engine")
    if not found:
        raise SystemExit("bench.replay: maltrail-engine is not installed in this environment (pip install -e .)")
    return found


def is_artifact(path: str) -> bool:
    from matchers.artifact import MAGIC
    with open(path, "rb") as f:
        return f.read(len(MAGIC)) == MAGIC


def artifact_info(path: str) -> dict:
    """Trail count and kinds, read in this process and unmapped again before any replay."""
    from matchers import Artifact
    artifact = Artifact.open(path)
    try:
        return {"trails": artifact.trail_count, "by_kind": dict(artifact.info.get("by_kind", {})),
                "bytes": os.path.getsize(path)}
    finally:
        artifact.close()


# ---- process-tree memory ------------------------------------------------------------------------

def pss_bytes(pid: int) -> int:
    """Pss of one process from /proc/<pid>/smaps_rollup (0 once it has exited). bench.trails'
    memory() reads the same file for the calling process only."""
    try:
        with open("/proc/%d/smaps_rollup" % pid) as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _stat(pid: int):
    """(ppid, comm, CPU seconds used: utime + stime) of a process, or None."""
    try:
        with open("/proc/%d/stat" % pid, "rb") as f:
            data = f.read()
    except OSError:
        return None
    close = data.rfind(b")")
    fields = data[close + 2:].split()  # state, ppid, ... utime is field 14 of stat(5), stime 15
    return (int(fields[1]), data[data.find(b"(") + 1:close].decode("ascii", "replace"),
            (int(fields[11]) + int(fields[12])) / CLOCK_TICKS)


def process_tree(root: int) -> dict:
    """{pid: (ppid, comm, CPU seconds)} of `root` and all its descendants, found afresh from each
    process's parent: process ids wrap around (pid_max is often 32768), so a new child may reuse
    the id of a process that existed before the engine, and a grandchild may have a lower id than
    its parent. A few dozen small reads of /proc/<pid>/stat."""
    stats = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = _stat(int(name))
            if st is not None:
                stats[int(name)] = st
    tree = {root: stats[root]} if root in stats else {}
    grew = bool(tree)
    while grew:
        grew = False
        for pid, st in stats.items():
            if pid not in tree and st[0] in tree:
                tree[pid] = st
                grew = True
    return tree


class TreeSampler(threading.Thread):
    """Every SAMPLE_S, the summed PSS of `root` and all its descendants; keeps the peak and which
    process held how much at that moment; the tree is found afresh at every sample (process_tree).

    It also keeps each process's CPU time (utime + stime) as last read: `cpu_by_process` misses
    at most the last SAMPLE_S of a process's life, so it is a lower bound per process."""

    def __init__(self, root: int):
        super().__init__(daemon=True)
        self.root = root
        self.tree = {root: "supervisor"}
        self.peak = 0
        self.at_peak: dict = {}
        self.samples = 0
        self.cpu_s: dict = {}  # pid -> CPU seconds at the last sample
        self.names: dict = {}  # pid -> its name at the last sample (a child renames itself)
        self._halt = threading.Event()

    def _grow(self) -> None:
        stats = process_tree(self.root)
        self.tree = {pid: "supervisor" if pid == self.root else st[1] for pid, st in stats.items()}
        for pid, st in stats.items():
            self.cpu_s[pid] = st[2]
            self.names[pid] = "supervisor" if pid == self.root else st[1]

    def sample(self) -> None:
        self._grow()
        sizes = {pid: pss_bytes(pid) for pid in self.tree}
        total = sum(sizes.values())
        self.samples += 1
        if total > self.peak:
            self.peak = total
            self.at_peak = {"%s[%d]" % (self._comm(pid), pid): size for pid, size in sizes.items() if size}

    def _comm(self, pid: int) -> str:
        """The process's name now: a child names itself (mte-capture, ...) only after it started."""
        if pid == self.root:
            return "supervisor"
        st = _stat(pid)
        if st is not None:
            self.tree[pid] = st[1]
        return self.tree[pid]

    def cpu_by_process(self) -> dict:
        """{"name[pid]": CPU seconds} of every process seen, as last sampled."""
        return {"%s[%d]" % (self.names[pid], pid): s for pid, s in self.cpu_s.items()}

    def run(self) -> None:
        while not self._halt.wait(SAMPLE_S):
            self.sample()

    def stop(self) -> None:
        self._halt.set()
        self.join()


# ---- one replay -----------------------------------------------------------------------------------

def run_engine(engine: str, pcap: str, artifact: str, workers: int, reference: bool, workdir: str,
               want_events: bool = False, config: str | None = None, cpus=None) -> dict:
    """One `maltrail-engine replay` in a fresh log directory; returns its statistics, the wall time
    of the subprocess, the CPU time of its whole process tree (wait4: the engine's processes are
    all reaped by the time its supervisor exits, so their CPU is in the supervisor's), each
    process's CPU as it reported its own (sampled from /proc for a tree that does not, which misses
    a process shorter than a sample), time to first packet, peak PSS of its process tree, and the
    events when asked (read back with `maltrail-engine tail --format json`). `cpus`: the CPUs the engine
    may use (its own pinning then works within them)."""
    log_dir = tempfile.mkdtemp(prefix="log-", dir=workdir)
    stats_path = os.path.join(log_dir, "stats.json")
    cmd = [engine, "replay", "--trails", artifact, "--log-dir", log_dir, "--workers", str(workers),
           "--stats-json", stats_path, "-q"] + (["--reference"] if reference else []) + (
        ["-c", config] if config else []) + [pcap]
    out_path = os.path.join(workdir, "engine.out")
    start_unix = time.time()
    with open(out_path, "w+") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None)
        sampler = TreeSampler(proc.pid)
        sampler.start()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        sampler.stop()
        out.seek(0)
        err = out.read()
    if proc.returncode != 0:
        sys.stderr.write(err)
        raise SystemExit("bench.replay: %s exited %d" % (" ".join(cmd), proc.returncode))
    with open(stats_path) as f:
        stats = json.load(f)
    counters = stats["counters"]
    first = counters.get("first_batch_unix") or 0
    result = {"wall_s": wall, "cpu_s": stats["cpu_s"], "engine_elapsed_s": stats["elapsed_s"],
              "tree_cpu_s": usage.ru_utime + usage.ru_stime, "cpu_by_process": stats.get("cpu_by_process") or sampler.cpu_by_process(),
              "frames": counters["frames"], "events": dict(counters.get("events", {})),
              "records": stats.get("writer", {}).get("records"),
              "first_packet_s": first - start_unix if first else None,
              "peak_pss": sampler.peak, "pss_at_peak": sampler.at_peak, "samples": sampler.samples,
              "accounted": counters["frames"] == counters["decoded"] + sum(counters["skipped"].values()),
              "dropped": sum(stats["capture"].get("ring_drop_frames", [])) + sum(stats["engine"].get("lost_frames", [])),
              "stats": stats}
    if want_events:
        tail = subprocess.run([engine, "tail", "--log-dir", log_dir, "--format", "json"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
        if tail.returncode != 0:
            sys.stderr.write(tail.stderr)
            raise SystemExit("bench.replay: maltrail-engine tail exited %d" % tail.returncode)
        result["log_events"] = [json.loads(line) for line in tail.stdout.splitlines() if line.strip()]
    shutil.rmtree(log_dir, ignore_errors=True)
    return result


def copy_head(src: str, dst: str, packets: int) -> int:
    """The first `packets` records of a classic pcap into `dst`; returns how many were copied."""
    with open(src, "rb") as f:
        header = f.read(24)
        magic = header[:4]
        if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
            rec = struct.Struct("<IIII")
        elif magic in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
            rec = struct.Struct(">IIII")
        else:
            raise ValueError("%s: not a classic pcap (the truncated and 1-packet copies need one)" % src)
        copied = 0
        with open(dst, "wb") as out:
            out.write(header)
            while copied < packets:
                head = f.read(16)
                if len(head) < 16:
                    break
                data = f.read(rec.unpack(head)[2])
                out.write(head + data)
                copied += 1
    return copied


# ---- recall ---------------------------------------------------------------------------------------

def recall(truth: dict, events: list, frames: int) -> dict:
    """Planted indicators found in the log: an event of the planted type between the planted flow's
    endpoints (client -> server, as the engine orients events) whose trail text contains the
    planted trail."""
    index: dict = {}
    for e in events:
        index.setdefault((e["type"], e["src_ip"], e["dst_ip"]), []).append(e)
    by_category: dict = {}
    missed = []
    for entry in truth["entries"]:
        if entry["index"] >= frames:
            continue
        cat = by_category.setdefault(entry["category"], [0, 0])
        cat[1] += 1
        found = any(entry["trail"] in e["trail"] and (entry["dst_port"] is None or e["dst_port"] == entry["dst_port"])
                    for e in index.get((entry["type"], entry["src_ip"], entry["dst_ip"]), ()))
        if found:
            cat[0] += 1
        else:
            missed.append(entry)
    return {"found": sum(v[0] for v in by_category.values()), "planted": sum(v[1] for v in by_category.values()),
            "by_category": by_category, "missed": missed[:20]}


def read_truth(pcap: str):
    path = pcap + ".truth.json"
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


# ---- packet path (child) --------------------------------------------------------------------------

def child_packet_path(args) -> dict:
    """Worker.process over every batch of the pcap, in this fresh process; only the calls are timed."""
    from engine.sources.pcapfile import open_capture
    from matchers import Artifact, TrailMatchers
    from workers.pipeline import Worker
    start = time.perf_counter()
    matchers = TrailMatchers.load(Artifact.open(args.artifact))
    from workers.heuristics import HeuristicSettings
    worker = Worker(matchers, "bench", fast=args.mode.startswith("fast"),
                    heuristics=HeuristicSettings(enabled=not args.mode.endswith("-no-heuristics")))
    load_s = time.perf_counter() - start
    wall = cpu = 0.0
    events = 0
    remaining = args.packets or None
    with open_capture(args.pcap) as source:
        while remaining is None or remaining > 0:
            batch = source.read_batch(1024 if remaining is None else min(1024, remaining))
            if batch is None:
                break
            if remaining is not None:
                remaining -= len(batch.caplens)
            w0, c0 = time.perf_counter(), time.process_time()
            out = worker.process(batch)
            wall += time.perf_counter() - w0
            cpu += time.process_time() - c0
            events += len(out)
        w0, c0 = time.perf_counter(), time.process_time()
        events += len(worker.flush())
        wall += time.perf_counter() - w0
        cpu += time.process_time() - c0
    stats = worker.stats()
    return {"mode": args.mode, "load_s": load_s, "wall_s": wall, "cpu_s": cpu, "frames": stats["frames"],
            "events": dict(stats["events"]), "records": events}


def run_packet_path(pcap: str, artifact: str, mode: str, packets: int) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [PROJECT_ROOT, os.environ.get("PYTHONPATH")])))
    cmd = [sys.executable, "-m", "bench.replay", "--child", "packet-path", "--mode", mode, "--artifact", artifact,
           "--pcap", pcap, "--packets", str(packets)]
    done = subprocess.run(cmd, cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if done.returncode != 0:
        sys.stderr.write(done.stderr)
        raise SystemExit("bench.replay: packet-path child (%s) failed (exit %d)" % (mode, done.returncode))
    return json.loads(done.stdout.strip().splitlines()[-1])


def worker_has_reference_switch():
    import inspect

    from workers.pipeline import Worker
    if "fast" in inspect.signature(Worker.__init__).parameters:
        return None
    return "workers.pipeline.Worker has no fast/reference switch"


def engine_has_reference(engine: str):
    done = subprocess.run([engine, "replay", "--help"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if "--reference" in done.stdout:
        return None
    return "`maltrail-engine replay` has no --reference option yet"


# ---- the parent -----------------------------------------------------------------------------------

def measure_config(engine, pcap, one, artifact, workers, reference, runs, workdir, want_events, label, config=None):
    full, single = [], []
    for i in range(runs):
        _progress("%s: %s, %d worker(s), run %d/%d" % (os.path.basename(pcap), label, workers, i + 1, runs))
        full.append(run_engine(engine, pcap, artifact, workers, reference, workdir, want_events and i == 0, config))
        if one:
            single.append(run_engine(engine, one, artifact, workers, reference, workdir, config=config))
    return summarize(full, single)


def summarize(full: list, single: list) -> dict:
    first = full[0]
    wall = _median([r["wall_s"] for r in full])
    one_wall = _median([r["wall_s"] for r in single]) if single else None
    frames = first["frames"]
    steady = longrun.steady(frames, wall, one_wall) if one_wall is not None else None
    return {"frames": frames, "events": first["events"], "events_total": sum(first["events"].values()),
            "records": first["records"], "wall_s": wall, "cpu_s": _median([r["cpu_s"] for r in full]),
            "pps": frames / wall, "ns_per_packet": wall * 1e9 / frames, "steady_pps": steady,
            "one_packet_wall_s": one_wall,
            "first_packet_s": _median([r["first_packet_s"] for r in full + single]),
            "peak_pss": _median([r["peak_pss"] for r in full]),
            "pss_at_peak": max(full, key=lambda r: r["peak_pss"])["pss_at_peak"],
            "samples": sum(r["samples"] for r in full),
            "accounted": all(r["accounted"] for r in full), "dropped": sum(r["dropped"] for r in full),
            "log_events": first.get("log_events"), "runs": [{k: v for k, v in r.items() if k not in ("log_events",)}
                                                            for r in full + single]}


# ---- long replays and the scaling model (bench/longrun.py) ------------------------------------------

def _two_cpus():
    """The first two CPUs this process may use: the engine's own pinning puts its capture process
    on the first and every worker on the second, so 2 workers share one core. None below two."""
    cpus = sorted(os.sched_getaffinity(0))
    return set(cpus[:2]) if len(cpus) >= 2 else None


def _rounds(engine, pcap, one, artifact, workers, runs, workdir, label, want_events=False, cpus=None,
            baseline=None):
    """Alternating rounds: a 1-packet replay, then the full one; medians of every figure. With
    `baseline` (another tree's engine), each round runs it too, right after this tree's, and its
    figures come back under "baseline": the ratio of two trees measured in the same minutes."""
    engines = [("this tree", engine)] + ([("baseline", baseline)] if baseline else [])
    runs_of = {name: ([], []) for name, _ in engines}
    for i in range(runs):
        for name, command in engines:
            _progress("%s: %s, %s, run %d/%d" % (os.path.basename(pcap), label, name, i + 1, runs))
            full, single = runs_of[name]
            single.append(run_engine(command, one, artifact, workers, False, workdir, cpus=cpus))
            full.append(run_engine(command, pcap, artifact, workers, False, workdir,
                                   want_events and i == 0 and name == "this tree", cpus=cpus))
    res = _round_figures(*runs_of["this tree"])
    if baseline:
        res["baseline"] = _round_figures(*runs_of["baseline"])
    return res


def _round_figures(full: list, single: list) -> dict:
    res = summarize(full, single)
    frames = res["frames"]
    tree = _median([r["tree_cpu_s"] for r in full])
    one_tree = _median([r["tree_cpu_s"] for r in single])
    res.update(tree_cpu_s=tree, cpu_ns=tree * 1e9 / frames, steady_cpu_ns=longrun.steady_cpu_ns(frames, tree, one_tree),
               window_s=res["wall_s"] - res["one_packet_wall_s"],
               cpu_by_role=longrun.steady_cpu_by_role(full, single),
               dispatched=full[0]["stats"]["capture"].get("dispatched"))
    return res


def measure_long(engine, kind, artifact, args, workdir, results) -> None:
    """Table 7 (and 8 with --scaling-model) for one kind: generate, measure, delete."""
    packets = longrun.long_packets(kind, args.long_window_s, args.long_packets)
    where = args.long_dir or workdir
    path = os.path.join(where, "long-%s-%d.pcap" % (kind, os.getpid()))
    one = os.path.join(where, "long-one-%s-%d.pcap" % (kind, os.getpid()))
    try:
        _progress("generating %s, %d packets, into %s (deleted after its runs)" % (kind, packets, where))
        truth = longrun.generate_long(kind, path, packets, artifact, _progress)
        copy_head(path, one, 1)
        entry = {"kind": kind, "packets": packets, "bytes": os.path.getsize(path),
                 "target_pps": longrun.target_pps(kind)}
        want_events = bool(truth.get("entries"))
        entry["one_worker"] = _rounds(engine, path, one, artifact, 1, args.runs, workdir, "long, 1 worker",
                                      want_events, baseline=args.baseline_engine)
        if want_events:
            entry["recall"] = recall(truth, entry["one_worker"]["log_events"], entry["one_worker"]["frames"])
        entry["one_worker"]["log_events"] = None
        results["long"][kind] = entry
        if args.scaling_model:
            cpus = _two_cpus()
            model = {"cpus": sorted(cpus) if cpus else None}
            if cpus is None:
                model["skipped"] = "fewer than 2 CPUs: nothing to pin"
            else:
                first, second = sorted(cpus)
                model["capture_alone"] = [longrun.capture_ceiling(path, one, n, args.runs, first, second, _progress)
                                          for n in (1, 2)]
                for workers in (1, 2):
                    model["workers_%d" % workers] = run = _rounds(
                        engine, path, one, artifact, workers, args.runs, workdir,
                        "pinned to CPUs %d,%d, %d worker(s)" % (first, second, workers), cpus=cpus)
                    ceiling = model["capture_alone"][workers - 1]["cpu_bound_pps"]
                    run["modelled_pps"] = longrun.modelled_pps(run["frames"], run["cpu_by_role"], ceiling)
                    run["log_events"] = None
            results["scaling_model"][kind] = model
    finally:
        for f in (path, path + ".truth.json", one):
            try:
                os.unlink(f)
            except FileNotFoundError:
                pass


def _ns(value) -> str:
    return "n/a" if value is None else "%.0f" % value


def _shares(dispatched) -> str:
    total = sum(dispatched or [])
    return "/".join("%.0f%%" % (100.0 * d / total) for d in dispatched) if total else "n/a"


def report_long(results: dict, args, context: str) -> list[str]:
    rust = longrun.RUST_DOC
    out = ["7. Long replay: 1 capture process + 1 worker over pcaps long enough for a steady window of >= %.1f s at "
           "the target rate (generated, deleted after), alternating rounds of a 1-packet and a full replay"
           % args.long_window_s, "  " + context]
    rows = []
    for kind, e in results["long"].items():
        s = e["one_worker"]
        rows.append([kind, format(s["frames"], ","), "%.2f" % s["window_s"], "%.3f" % (s["steady_pps"] / 1e6)
                     if s["steady_pps"] else "n/a", _ns(s["cpu_ns"]), _ns(s["steady_cpu_ns"]),
                     "%.3f" % s["first_packet_s"] if s["first_packet_s"] is not None else "n/a",
                     _mb(s["peak_pss"]), _events(s),
                     "%d/%d" % (e["recall"]["found"], e["recall"]["planted"]) if e.get("recall") else "-"])
    out += _table(["pcap", "frames", "steady window s", "steady Mpps", "CPU ns/pkt (all)", "steady CPU ns/pkt",
                   "start -> 1st packet s", "peak PSS MB", "events", "planted found"], rows, aligns=["<"] + [">"] * 9)
    out.append("  CPU = user + system of every engine process (wait4 on the supervisor, which reaps them all); "
               "steady CPU = (CPU(N) - CPU(1 packet)) / (N - 1)")
    out.append("  where the CPU goes, per process, steady ns/packet (as each process reported its own CPU):")
    for kind, e in results["long"].items():
        s = e["one_worker"]
        out.append("    %s: %s" % (kind, ", ".join("%s %s" % (k, _ns(v * 1e9 / max(s["frames"] - 1, 1)))
                                              for k, v in sorted(s["cpu_by_role"].items(), key=lambda kv: -kv[1]))))
    out.append("")
    out.append("  Against the targets, as ratios of Maltrail's Rust sensor's DOCUMENTED figures (cross-session: %s;"
               % rust["source"])
    out.append("  that sensor is not built on this machine, so it was not measured in this run)")
    rows = []
    for kind, e in results["long"].items():
        s = e["one_worker"]
        pps, ref_pps = s["steady_pps"], rust["%s_pps" % kind]
        rows.append(["%s steady rate" % kind, "%.2f Mpps" % (ref_pps / 1e6), ">= %.1fx" % longrun.TARGET_X_RUST,
                     "n/a" if pps is None else "%.3f Mpps" % (pps / 1e6), _ratio(pps, ref_pps),
                     "n/a" if pps is None else "yes" if pps >= longrun.TARGET_X_RUST * ref_pps else "no"])
        ref_cpu = rust["%s_cpu_ns" % kind]
        for label, ns in (("CPU/packet (whole run)", s["cpu_ns"]), ("CPU/packet (steady)", s["steady_cpu_ns"])):
            rows.append(["%s %s" % (kind, label), "%.0f ns" % ref_cpu, "< 1.0x", "%s ns" % _ns(ns), _ratio(ns, ref_cpu),
                         "n/a" if ns is None else "yes" if ns < ref_cpu else "no"])
        first = s["first_packet_s"]
        rows.append(["%s start -> 1st packet" % kind, "%.2f-%.2f s" % rust["start_s"],
                     "<= %.1f s" % longrun.TARGET_START_S, "n/a" if first is None else "%.3f s" % first,
                     _ratio(first, rust["start_s"][0]), "n/a" if first is None else
                     "yes" if first <= longrun.TARGET_START_S else "no"])
        rows.append(["%s peak PSS" % kind, "%.0f-%.0f MB" % rust["peak_mb"], "<= %.0f MB" % longrun.TARGET_PEAK_MB,
                     "%s MB" % _mb(s["peak_pss"]), _ratio(s["peak_pss"], rust["peak_mb"][0] * MB),
                     "yes" if s["peak_pss"] <= longrun.TARGET_PEAK_MB * MB else "no"])
    out += _table(["figure", "Rust (documented)", "target", "ours (this run)", "ours x Rust doc", "meets"], rows,
                  aligns=["<"] + [">"] * 5)
    out.append("  x Rust doc for start and PSS divides by the low end of the documented range")
    out.append("")
    compared = [(kind, e["one_worker"], e["one_worker"]["baseline"]) for kind, e in results["long"].items()
                if e["one_worker"].get("baseline")]
    if compared:
        out.append("  Against the baseline engine (%s), measured in this run, each round right after this tree's:"
                   % args.baseline_engine)
        rows = []
        for kind, s, b in compared:
            for label, key, unit in (("steady rate", "steady_pps", "Mpps"), ("CPU/packet (whole run)", "cpu_ns", "ns"),
                                     ("CPU/packet (steady)", "steady_cpu_ns", "ns"),
                                     ("start -> 1st packet", "first_packet_s", "s"), ("peak PSS", "peak_pss", "MB")):
                mine, theirs = s[key], b[key]
                shown = {"Mpps": lambda v: "%.3f" % (v / 1e6), "ns": _ns, "s": lambda v: "%.3f" % v,
                         "MB": _mb}[unit]
                rows.append(["%s %s" % (kind, label), "n/a" if theirs is None else "%s %s" % (shown(theirs), unit),
                             "n/a" if mine is None else "%s %s" % (shown(mine), unit), _ratio(mine, theirs)])
            rows.append(["%s events" % kind, _events(b), _events(s), "same" if b["events"] == s["events"] else "DIFFER"])
        out += _table(["figure", "baseline", "this tree", "this / baseline"], rows, aligns=["<", ">", ">", ">"])
        out.append("")
    return out


def report_scaling_model(results: dict, args, context: str) -> list[str]:
    out = ["8. Scaling model: the capture process alone, and 1 against 2 workers held to two CPUs "
           "(capture on the first, the workers on the second)", "  " + context]
    rows = []
    for kind, m in results["scaling_model"].items():
        if m.get("skipped"):
            out.append("  %s: skipped: %s" % (kind, m["skipped"]))
            continue
        for c in m["capture_alone"]:
            rows.append([kind, "capture alone, %d drained ring(s)" % c["rings"], format(c["frames"], ","),
                         "%.3f" % (c["steady_pps"] / 1e6) if c["steady_pps"] else "n/a", _ns(c["cpu_ns"]),
                         _shares(c["dispatched"]), "drainers %s, ring waits %s" % (
                             _ns(c["drain_cpu_ns"]), c["ring_waits"]),
                         "%.3f" % (c["cpu_bound_pps"] / 1e6) if c["cpu_bound_pps"] else "n/a"])
        for workers in (1, 2):
            r = m["workers_%d" % workers]
            per = ", ".join("%s %s" % (k.replace("mte-", ""), _ns(v * 1e9 / max(r["frames"] - 1, 1)))
                            for k, v in sorted(r["cpu_by_role"].items()) if k == "mte-capture" or
                            k.startswith("mte-worker"))
            rows.append([kind, "engine, %d worker(s)" % workers, format(r["frames"], ","),
                         "%.3f" % (r["steady_pps"] / 1e6) if r["steady_pps"] else "n/a", _ns(r["steady_cpu_ns"]),
                         _shares(r["dispatched"]), per,
                         "%.3f" % (r["modelled_pps"] / 1e6) if r["modelled_pps"] else "n/a"])
    out += _table(["pcap", "run", "frames", "steady Mpps", "CPU ns/pkt", "dispatch shares",
                   "steady CPU ns/pkt by process", "modelled Mpps, a core each"], rows, aligns=["<", "<"] + [">"] * 6)
    for kind, m in results["scaling_model"].items():
        if m.get("skipped"):
            continue
        one, two = m["workers_1"]["modelled_pps"], m["workers_2"]["modelled_pps"]
        ceiling = m["capture_alone"][0]["cpu_bound_pps"]
        out.append("  %s: 2 workers on cores of their own (modelled) / 1 worker = %s (>= 1.80x is 0.8x per added "
                   "worker); 2 workers sharing one core (measured) / 1 worker = %s; capture ceiling (CPU-bound) / "
                   "modelled 1-worker rate = %s" % (kind, _ratio(two, one), _ratio(m["workers_2"]["steady_pps"],
                                                                    m["workers_1"]["steady_pps"]),
                                      _ratio(ceiling, one)))
    out.append("  modelled = (frames - 1) / the steady CPU seconds of the busiest of capture and workers (each on a "
               "core of its own), capped by the capture process alone; for capture alone, the modelled column is "
               "its CPU-bound rate, 1 / its CPU per packet: its ceiling with a core to itself")
    out.append("")
    return out


def _kpps(pps) -> str:
    return "n/a" if pps is None else "%.1f" % (pps / 1e3)


def _events(summary) -> str:
    return format(summary["events_total"], ",")


def report(results: dict, args) -> list[str]:
    mach, info = results["machine"], results["trails"]
    context = "[%s trails | %s | %s, %d CPUs, %s | median of %d runs]" % (
        format(info["trails"], ","), mach["python"], mach["arch"], mach["nproc"], mach["cpu"], args.runs)
    out = ["maltrail-engine replay benchmark (python -m bench replay%s)" % (" --quick" if args.quick else ""),
           "kernel %s; trails: %s%s; MB = 10^6 bytes; PSS summed over the engine's process tree every %d ms"
           % (mach["kernel"], info["source"], " (built in %.1f s)" % info["build_s"] if info.get("build_s") else "",
              SAMPLE_S * 1000), ""]
    skipped = results["skipped"]

    out.append("1. Packet path: Worker.process over the pcap's batches, in one fresh process (reading not timed)")
    out.append("  " + context)
    if "packet_path" in skipped:
        out.append("  skipped: " + skipped["packet_path"])
    else:
        rows = []
        for name, pp in results["packet_path"].items():
            ref = pp.get("reference")
            for mode in ("fast", "reference"):
                r = pp.get(mode)
                if r is None:
                    continue
                rows.append([name, mode, format(r["frames"], ","), format(sum(r["events"].values()), ","),
                             "%.2f" % r["wall_s"], "%.2f" % r["cpu_s"], _kpps(r["frames"] / r["wall_s"]),
                             "%.0f" % (r["wall_s"] * 1e9 / r["frames"]),
                             _ratio(ref["wall_s"], r["wall_s"]) if ref else "n/a"])
        out += _table(["pcap", "path", "frames", "events", "wall s", "cpu s", "kpps", "ns/pkt", "speed-up x ref"], rows,
                      aligns=["<", "<"] + [">"] * 7)
    out.append("")

    out.append("2. Replay: maltrail-engine replay (file -> capture -> rings -> %d worker(s) -> log), fresh process per run"
               % args.workers)
    out.append("  " + context)
    if "reference" in skipped:
        out.append("  reference baseline skipped: " + skipped["reference"])
    rows, notes = [], []
    for name, res in results["replay"].items():
        ref = res.get("reference")
        for mode in ("fast", "reference"):
            s = res.get(mode)
            if s is None:
                continue
            rows.append([name, mode, format(s["frames"], ","), _events(s), "%.2f" % s["wall_s"], "%.2f" % s["cpu_s"],
                         _kpps(s["pps"]), "%.0f" % s["ns_per_packet"], _kpps(s["steady_pps"]),
                         _ratio(s["steady_pps"], ref["steady_pps"]) if ref else "n/a",
                         _ratio(s["pps"], ref["pps"]) if ref else "n/a"])
            if not s["accounted"] or s["dropped"]:
                notes.append("  %s %s: frames not all accounted for or %d dropped" % (name, mode, s["dropped"]))
    out += _table(["pcap", "path", "frames", "events", "wall s", "cpu s", "kpps", "ns/pkt", "steady kpps",
                   "steady x ref", "kpps x ref"], rows, aligns=["<", "<"] + [">"] * 9)
    out += notes
    for name, res in results["replay"].items():
        s = res["fast"]
        out.append("  %s events by type: %s (log records %s)" % (
            name, ", ".join("%s %s" % (k, format(v, ",")) for k, v in sorted(s["events"].items(), key=lambda kv: -kv[1]))
            or "none", s["records"]))
    out.append("  steady = (frames - 1) / (wall - wall of a 1-packet replay of the file's first packet); events = "
               "detections counted by the workers")
    out.append("")

    out.append("3. Start-up, memory and recall (the shipped path, %d worker(s))" % args.workers)
    out.append("  " + context)
    rows = []
    for name, res in results["replay"].items():
        s = res["fast"]
        rec = res.get("recall")
        rows.append([name, "%.3f" % s["first_packet_s"] if s["first_packet_s"] is not None else "n/a",
                     "%.3f" % s["one_packet_wall_s"] if s["one_packet_wall_s"] is not None else "n/a",
                     _mb(s["peak_pss"]), _ratio(s["peak_pss"], TARGETS["peak_mb"] * MB),
                     "%d/%d" % (rec["found"], rec["planted"]) if rec else "-"])
    out += _table(["pcap", "start -> 1st packet s", "1-packet replay wall s", "peak PSS MB", "x %.0f MB" % TARGETS["peak_mb"],
                   "planted found"], rows)
    for name, res in results["replay"].items():
        s = res["fast"]
        out.append("  %s PSS at peak: %s" % (name, ", ".join("%s %s" % (k, _mb(v)) for k, v in sorted(s["pss_at_peak"].items()))))
        rec = res.get("recall")
        if rec:
            out.append("  %s recall by category: %s" % (name, ", ".join(
                "%s %d/%d" % (c, v[0], v[1]) for c, v in rec["by_category"].items())))
            for m in rec["missed"][:5]:
                out.append("    missed: %s %s %s -> %s %s" % (m["category"], m["type"], m["src_ip"], m["dst_ip"], m["trail"]))
    out.append("")

    out.append("4. Scaling: the same replay with 1 worker and with --workers %d" % args.workers)
    out.append("  " + context)
    if "scaling" in skipped:
        out.append("  skipped: " + skipped["scaling"])
    else:
        rows = []
        for name, res in results["replay"].items():
            one = res["one_worker"]
            for label, s in (("1", one), (str(args.workers), res["fast"])):
                rows.append([name, label, _events(s), "%.2f" % s["wall_s"], "%.2f" % s["cpu_s"], _kpps(s["pps"]),
                             _kpps(s["steady_pps"]), _ratio(s["steady_pps"], one["steady_pps"]),
                             _ratio(s["pps"], one["pps"])])
        out += _table(["pcap", "workers", "events", "wall s", "cpu s", "kpps", "steady kpps", "steady x 1 worker",
                       "kpps x 1 worker"], rows, aligns=["<", ">"] + [">"] * 7)
    out.append("")

    out.append("5. Heuristics: the shipped path with heuristics on (the default) and off (use_heuristics = false), "
               "%d worker(s)" % args.workers)
    out.append("  " + context)
    if "heuristics" in skipped:
        out.append("  skipped: " + skipped["heuristics"])
    else:
        rows = []
        for name, res in results["replay"].items():
            off = res["no_heuristics"]
            pp = results["packet_path"].get(name, {})
            for label, s, p in (("on", res["fast"], pp.get("fast")), ("off", off, pp.get("fast-no-heuristics"))):
                rows.append([name, label, _events(s), "%.2f" % s["wall_s"], "%.2f" % s["cpu_s"], _kpps(s["steady_pps"]),
                             _ratio(s["steady_pps"], off["steady_pps"]), _mb(s["peak_pss"]),
                             "%.0f" % (p["wall_s"] * 1e9 / p["frames"]) if p else "n/a"])
        out += _table(["pcap", "heuristics", "events", "wall s", "cpu s", "steady kpps", "steady x off", "peak PSS MB",
                       "packet path ns/pkt"], rows, aligns=["<", "<"] + [">"] * 7)
    out.append("")

    out.append("6. Orientation: the targets maltrail-engine is built to meet, beside this run; other sensors measured "
               "on the reference machine (2 cores, CPython 3.11.7; ../shared/bench/README.md)")
    rows = []

    def meets(ok) -> str:
        return "n/a" if ok is None else "yes" if ok else "no"

    for name, res in results["replay"].items():
        kind = (res.get("generator") or "").lower()
        target = TARGETS.get("%s_pps" % kind)
        s = res["fast"]
        steady, first, peak = s["steady_pps"], s["first_packet_s"], s["peak_pss"]
        if target:
            rows.append(["%s steady rate" % name, ">= %.2f Mpps" % (target / 1e6),
                         "n/a" if steady is None else "%.3f Mpps" % (steady / 1e6), _ratio(steady, target),
                         meets(None if steady is None else steady >= target)])
        rows.append(["%s start -> 1st packet" % name, "<= %.1f s" % TARGETS["start_s"],
                     "n/a" if first is None else "%.3f s" % first, _ratio(first, TARGETS["start_s"]),
                     meets(None if first is None else first <= TARGETS["start_s"])])
        rows.append(["%s peak memory" % name, "<= %.0f MB" % TARGETS["peak_mb"], "%s MB PSS" % _mb(peak),
                     _ratio(peak, TARGETS["peak_mb"] * MB), meets(peak <= TARGETS["peak_mb"] * MB)])
        if res.get("recall") and kind == "hard":
            rec = res["recall"]
            rows.append(["%s planted found" % name, "all (500/500)", "%d/%d" % (rec["found"], rec["planted"]),
                         _ratio(rec["found"], rec["planted"]), meets(rec["found"] == rec["planted"])])
    out += _table(["figure", "target", "ours", "x target", "meets"], rows, aligns=["<", ">", ">", ">", ">"])
    out.append("")
    out += _table(["other sensor", "mix steady", "hard steady", "start (1-packet replay)", "peak memory", "hard planted found"],
                  PEERS, aligns=["<"] * 6)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench replay", description=__doc__.split("\n\n")[0])
    p.add_argument("--pcap", action="append", help="pcap to replay (repeatable); default: generate mix and hard "
                                                   "into a temporary directory")
    p.add_argument("--trails", default=DEFAULT_TRAILS,
                   help="compiled artifact, or a trail source compiled (with bench/extra_trails.csv) into a "
                        "temporary artifact once per run (default: %(default)s)")
    p.add_argument("--workers", type=int, default=1, help="workers of the measured engine (default 1); above 1 "
                                                          "adds the 1-worker scaling baseline")
    p.add_argument("--runs", type=int, default=3, help="runs per figure, median taken (default 3)")
    p.add_argument("--packets", type=int, default=0, help="replay only the first N packets of each pcap "
                                                         "(a truncated copy; --quick: %d)" % QUICK_PACKETS)
    p.add_argument("--quick", action="store_true", help="smoke run: 1 run, the first %d packets" % QUICK_PACKETS)
    p.add_argument("--no-packet-path", action="store_true", help="skip the in-process packet-path table")
    p.add_argument("--no-heuristics-baseline", action="store_true",
                   help="skip the heuristics-off runs (table 6)")
    p.add_argument("--long", action="store_true",
                   help="add table 7: mix and hard long enough for a steady window of --long-window-s at the "
                        "target rate (at least %d packets), generated into a temporary file each and deleted "
                        "after" % longrun.MIN_LONG_PACKETS)
    p.add_argument("--long-only", action="store_true", help="--long without tables 1-6")
    p.add_argument("--long-packets", type=int, default=0, help="packets of each long pcap (default: from the window)")
    p.add_argument("--long-window-s", type=float, default=longrun.DEFAULT_WINDOW_S,
                   help="steady window wanted at the target rate (default %(default)s)")
    p.add_argument("--long-kinds", default="mix,hard", help="which long pcaps (default %(default)s)")
    p.add_argument("--long-dir", help="where the long pcaps are written (default: the run's temporary directory)")
    p.add_argument("--scaling-model", action="store_true",
                   help="add table 8 over the long pcaps (implies --long): the capture process alone, and 1 "
                        "against 2 workers held to two CPUs")
    p.add_argument("--baseline-engine", metavar="PATH",
                   help="another tree's maltrail-engine (e.g. main's, bootstrapped in a scratch clone): table 7 "
                        "runs it alternately with this tree's and adds the ratios of the two")
    p.add_argument("--json", help="also write every raw number here")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--mode", help=argparse.SUPPRESS)
    p.add_argument("--artifact", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.child:
        args.pcap = args.pcap[0]
        print(json.dumps(child_packet_path(args)))
        return 0
    if args.scaling_model or args.long_only:
        args.long = True
    kinds = [k for k in args.long_kinds.split(",") if k]
    if any(k not in ("mix", "hard") for k in kinds):
        p.error("--long-kinds takes mix and/or hard")
    if args.long_packets and args.long_packets < 2:
        p.error("--long-packets must be at least 2")
    if args.quick:
        args.runs = 1
        args.packets = args.packets or QUICK_PACKETS
    if args.runs < 1 or args.workers < 1:
        p.error("--runs and --workers must be at least 1")
    if not os.path.exists(args.trails):
        print("bench.replay: skipped: " + MISSING_TRAILS % args.trails)
        return 0

    engine = engine_command()
    workdir = tempfile.mkdtemp(prefix="bench-replay-")
    results = {"machine": machine(), "args": {k: v for k, v in vars(args).items() if k != "child"}, "skipped": {},
               "packet_path": {}, "replay": {}, "long": {}, "scaling_model": {}}
    try:
        info = {"source": args.trails}
        if is_artifact(args.trails):
            artifact = args.trails
        else:
            artifact = os.path.join(workdir, "trails.mtdb")
            _progress("building the artifact from %s + %s" % (args.trails, EXTRA_TRAILS))
            start = time.perf_counter()
            done = subprocess.run([engine, "trails", "build", "--source", args.trails, "--source", EXTRA_TRAILS,
                                   "-o", artifact], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            if done.returncode != 0:
                sys.stderr.write(done.stderr)
                raise SystemExit("bench.replay: trails build failed (exit %d)" % done.returncode)
            info["build_s"] = time.perf_counter() - start
            info["source"] = "%s + %s" % (args.trails, os.path.relpath(EXTRA_TRAILS, PROJECT_ROOT))
        info.update(artifact_info(artifact))
        results["trails"] = info

        pcaps = [] if args.long_only else args.pcap
        if not pcaps and not args.long_only:
            from bench.generate import generate_hard, generate_mix
            n = args.packets or 300000
            pcaps = [os.path.join(workdir, "mix.pcap"), os.path.join(workdir, "hard.pcap")]
            _progress("generating mix and hard (%d packets each) into %s" % (n, workdir))
            generate_mix(pcaps[0], n, 1)
            generate_hard(pcaps[1], n, 1, [artifact], log=_progress)

        reason = engine_has_reference(engine)
        if reason:
            results["skipped"]["reference"] = reason
            _progress("reference baseline skipped: " + reason)
        if args.workers == 1:
            results["skipped"]["scaling"] = "--workers 1 (pass --workers N > 1 to compare 1 worker with N)"
        no_heuristics = None
        if args.no_heuristics_baseline:
            results["skipped"]["heuristics"] = "--no-heuristics-baseline"
        else:
            no_heuristics = os.path.join(workdir, "no-heuristics.toml")
            with open(no_heuristics, "w") as f:
                f.write("[sensor]\nuse_heuristics = false\n")
        pp_reason = "--no-packet-path" if args.no_packet_path else worker_has_reference_switch()
        if pp_reason:
            results["skipped"]["packet_path"] = pp_reason

        for pcap in pcaps:
            truth = read_truth(pcap)
            name = os.path.basename(pcap)
            if args.packets:
                short = os.path.join(workdir, "head-%s" % name)
                copy_head(pcap, short, args.packets)
                pcap_run = short
            else:
                pcap_run = pcap
            one = os.path.join(workdir, "one-%s" % name)
            try:
                copy_head(pcap_run, one, 1)
            except ValueError as exc:
                _progress("%s; steady rate not measured" % exc)
                one = None
            res = {"pcap": pcap, "generator": truth.get("generator") if truth else None}
            want_events = bool(truth and truth.get("entries"))
            res["fast"] = measure_config(engine, pcap_run, one, artifact, args.workers, False, args.runs, workdir,
                                         want_events, "shipped path")
            if want_events:
                res["recall"] = recall(truth, res["fast"]["log_events"], res["fast"]["frames"])
            res["fast"]["log_events"] = None
            if "reference" not in results["skipped"]:
                res["reference"] = measure_config(engine, pcap_run, one, artifact, args.workers, True, args.runs,
                                                  workdir, False, "reference path")
            if args.workers > 1:
                res["one_worker"] = measure_config(engine, pcap_run, one, artifact, 1, False, args.runs, workdir,
                                                   False, "shipped path")
            if no_heuristics:
                res["no_heuristics"] = measure_config(engine, pcap_run, one, artifact, args.workers, False, args.runs,
                                                      workdir, False, "shipped path, heuristics off", no_heuristics)
            results["replay"][name] = res

            if not pp_reason:
                pp = {}
                for mode in ("fast", "reference") + (("fast-no-heuristics",) if no_heuristics else ()):
                    runs = []
                    for i in range(args.runs):
                        _progress("%s: packet path %s, run %d/%d" % (name, mode, i + 1, args.runs))
                        runs.append(run_packet_path(pcap_run, artifact, mode, 0))
                    pp[mode] = dict(runs[0], wall_s=_median([r["wall_s"] for r in runs]),
                                    cpu_s=_median([r["cpu_s"] for r in runs]), runs=runs)
                results["packet_path"][name] = pp
        if args.long:
            for kind in kinds:
                measure_long(engine, kind, artifact, args, workdir, results)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    lines = [] if args.long_only else report(results, args)
    if args.long:
        mach, info = results["machine"], results["trails"]
        context = "[%s trails | %s | %s, %d CPUs, %s | median of %d runs]" % (
            format(info["trails"], ","), mach["python"], mach["arch"], mach["nproc"], mach["cpu"], args.runs)
        if args.long_only:
            lines += ["maltrail-engine replay benchmark, long pcaps (python -m bench replay --long-only)",
                      "kernel %s; trails: %s; MB = 10^6 bytes" % (mach["kernel"], info["source"]), ""]
        lines += report_long(results, args, context)
        if args.scaling_model:
            lines += report_scaling_model(results, args, context)
    print("\n".join(lines))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
