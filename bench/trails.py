"""Trail-database benchmark: build, load, domain-matcher candidates, whole-matcher lookups.

Run `python -m bench.trails` (see bench/README.md). Category: micro (one build, one load, one
lookup at a time; no packets). It measures:

1. build: `trailsdb.compile.build` over the trail set, each run in a fresh process: a first build
   (no artifact to replace) and a rebuild over it (an update: the previous artifact read for its
   provenance), against a baseline that only reads and normalises the rows: wall, CPU, peak RSS
   (target 250 MB), artifact size, the merge's spilled runs, trails by kind;
2. load: `Artifact.open` (every section checked against its checksum) to a ready
   `TrailMatchers.load`, and the memory (PSS, RSS) after load and after a warm-up of mixed
   lookups, against a process that only imported the packages;
2b. the sensor's private copy: the supervisor copying and verifying the artifact (a sealed memfd,
   the shipped way, against an O_TMPFILE beside the artifact), a forked worker mapping the copy
   to a ready `TrailMatchers.load`, its memory after the warm-up, and what the copy holds in the
   system's memory (/proc/meminfo) before and after asking the kernel to drop its pages;
3. domain-matcher candidates behind one suffix-walk interface (the shipped C table over the
   mapped artifact, a dict, a set, a pyahocorasick trie, marisa-trie): load time, memory, and
   ns per name for misses, hits and parent hits;
4. the whole matcher bundle: ns per domain / IP / CIDR / ip:port / URL lookup.

Every measurement whose memory matters runs in a fresh child process (`--child MODE`, one JSON
object on stdout), so one candidate's heap cannot inflate another's figure; the parent only
prepares the lookup workloads and prints the tables. Each figure is a median over `--runs` fresh
processes, and each table prints its baseline from the same run and ratios to it.

Owns nothing the engine uses. Imports only the standard library at module level because every
child measures its own baseline after importing exactly what it needs.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import platform
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The shared 1.6M-row trail set sits beside the checkout (../shared), where the project's developers
# and CI keep it; elsewhere pass --trails.
DEFAULT_TRAILS = os.path.join(os.path.dirname(PROJECT_ROOT), "shared", "trails", "maltrail-trails.csv.zst")
MISSING_TRAILS = ("no trail set at %s; pass --trails PATH: a Maltrail trails.csv (plain, .gz or .zst) or a "
                  "compiled artifact")

LOAD_TARGET_S = 1.0
LOADED_TARGET_MB = 200.0
BUILD_TARGET_MB = 250.0   # peak RSS of a build (an update of the trails on a 512 MB machine)
MB = 1e6  # all sizes are printed in MB = 10^6 bytes

# The domain candidates, in table order. "floor" is no lookup at all: the cost of the Python loop
# and one call per name, which no candidate can beat from Python.
CANDIDATES = [
    ("native", "(a) C hash table over mmap (shipped)"),
    ("native_pywalk", "(a') same table, walk in Python"),
    ("dict", "(b) dict {domain: id} (reference)"),
    ("set", "(c) set of domains (no ids)"),
    ("automaton", "(d) pyahocorasick trie"),
    ("marisa", "(e) marisa-trie + id array"),
    ("floor", "call floor (no lookup)"),
]
SHIPPED = "native"

# Workload names (all lists of the same length, --lookups).
DOMAIN_WORKLOADS = [("dom_miss", "miss"), ("dom_hit", "hit"), ("dom_parent", "parent hit")]


# ---- measuring ---------------------------------------------------------------------------------

def memory() -> dict:
    """This process's smaps_rollup in bytes (Pss, Rss, Pss_Anon, Pss_File, ...), after a full
    collection so garbage waiting for the collector is not counted."""
    gc.collect()
    out = {}
    with open("/proc/self/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if len(parts) == 3 and parts[2] == "kB":
                out[parts[0].rstrip(":")] = int(parts[1]) * 1024
    return out


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _clock():
    return time.perf_counter(), time.process_time()


def _since(start) -> tuple[float, float]:
    wall, cpu = _clock()
    return wall - start[0], cpu - start[1]


# One timing loop per call shape, so a lookup and its call floor share the exact loop. Each
# returns (wall ns/op, cpu ns/op, how many answers were not empty).

def _pass_list(fn, names):
    found = 0
    start = _clock()
    for name in names:
        if fn(name):
            found += 1
    wall, cpu = _since(start)
    return wall * 1e9 / len(names), cpu * 1e9 / len(names), found


def _pass1(fn, xs):
    found = 0
    start = _clock()
    for x in xs:
        if fn(x) is not None:
            found += 1
    wall, cpu = _since(start)
    return wall * 1e9 / len(xs), cpu * 1e9 / len(xs), found


def _pass_ip(fn, addrs):
    found = 0
    start = _clock()
    for addr in addrs:
        if fn(4, addr) is not None:
            found += 1
    wall, cpu = _since(start)
    return wall * 1e9 / len(addrs), cpu * 1e9 / len(addrs), found


def _pass_ipport(fn, pairs):
    found = 0
    start = _clock()
    for addr, port in pairs:
        if fn(4, addr, port) is not None:
            found += 1
    wall, cpu = _since(start)
    return wall * 1e9 / len(pairs), cpu * 1e9 / len(pairs), found


def _pass2(fn, pairs):
    found = 0
    start = _clock()
    for a, b in pairs:
        if fn(a, b) is not None:
            found += 1
    wall, cpu = _since(start)
    return wall * 1e9 / len(pairs), cpu * 1e9 / len(pairs), found


def _floor_list(name):
    return []


def _floor1(x):
    return None


def _floor2(a, b):
    return None


def _floor3(a, b, c):
    return None


# ---- children ----------------------------------------------------------------------------------

def _import_engine() -> float:
    """Imports what a loaded sensor holds; returns the seconds it took."""
    start = time.perf_counter()
    import ahocorasick  # noqa: F401
    import msgpack  # noqa: F401
    import pyroaring  # noqa: F401

    import matchers  # noqa: F401
    import matchers.artifact  # noqa: F401
    import matchers.domains  # noqa: F401
    import matchers.ips  # noqa: F401
    import matchers.urls  # noqa: F401
    import matchers.useragents  # noqa: F401
    return time.perf_counter() - start


def _read_workloads(path: str, names=None) -> dict:
    import msgpack
    with open(path, "rb") as f:
        data = msgpack.unpackb(f.read(), raw=False, use_list=False)
    return data if names is None else {k: data[k] for k in names}


def child_build(args) -> dict:
    """One build into args.output (a first build when nothing is there, else a rebuild that
    reads the artifact it replaces for provenance). Peak RSS is the whole process's, imports
    included."""
    from trailsdb.compile import build
    start = _clock()
    report = build([args.trails], args.output, force=True)
    wall, cpu = _since(start)
    return {"wall_s": wall, "cpu_s": cpu, "bytes": report.bytes, "trails": report.trails,
            "by_kind": dict(report.by_kind), "rows_read": report.rows["rows read"],
            "rejected": sum(report.rejected.values()), "duplicates": report.duplicates,
            "spilled_runs": report.spilled_runs, "carried": report.carried, "provenance": report.provenance,
            "peak_rss": _peak_rss()}


def child_read(args) -> dict:
    """The build's floor: read and normalise every row of the source, keep nothing."""
    from collections import Counter

    from trailsdb.normalize import normalize_trail
    from trailsdb.sources import read_source
    import trailsdb.compile  # noqa: F401  (the same imports as a build, for the memory figure)
    start = _clock()
    stats, kept = Counter(), 0
    for raw in read_source(args.trails, stats):
        if normalize_trail(raw.trail, raw.reference)[0] is not None:
            kept += 1
    wall, cpu = _since(start)
    return {"wall_s": wall, "cpu_s": cpu, "rows_read": stats["rows read"], "kept": kept, "peak_rss": _peak_rss()}


def child_baseline(args) -> dict:
    import_s = _import_engine()
    return {"import_s": import_s, "mem": memory()}


def child_matchers(args) -> dict:
    """Load, memory after load and after a mixed warm-up, then whole-matcher lookup costs."""
    _import_engine()
    from matchers import Artifact, TrailMatchers
    at_start = memory()
    start = _clock()
    artifact = Artifact.open(args.artifact)
    m = TrailMatchers.load(artifact)
    load_wall, load_cpu = _since(start)
    after_load = memory()

    w = _read_workloads(args.workloads_path)
    with_workloads = memory()
    # The warm-up: equal slices of every workload, so pages a realistic mix touches count.
    kinds = [("dom_miss", _pass1, m.domains.match), ("dom_hit", _pass1, m.domains.match),
             ("dom_parent", _pass1, m.domains.match), ("ip_miss", _pass_ip, m.ips.lookup_ip),
             ("ip_hit", _pass_ip, m.ips.lookup_ip), ("cidr_hit", _pass_ip, m.ips.lookup_ip),
             ("ipport_miss", _pass_ipport, m.ips.lookup_ip_port),
             ("ipport_hit", _pass_ipport, m.ips.lookup_ip_port),
             ("url_miss", _pass2, m.urls.match), ("url_hit", _pass2, m.urls.match)]
    share = max(1, args.warmup // len(kinds))
    warmed = 0
    for name, loop, fn in kinds:
        items = w[name][:share]
        if items:
            loop(fn, items)
            warmed += len(items)
    after_warmup = memory()

    ops = [("domains.match", "miss", _pass1, m.domains.match, _floor1, "dom_miss"),
           ("domains.match", "hit", _pass1, m.domains.match, _floor1, "dom_hit"),
           ("domains.match", "parent hit", _pass1, m.domains.match, _floor1, "dom_parent"),
           ("ips.lookup_ip", "miss", _pass_ip, m.ips.lookup_ip, _floor2, "ip_miss"),
           ("ips.lookup_ip", "hit", _pass_ip, m.ips.lookup_ip, _floor2, "ip_hit"),
           ("ips.lookup_ip", "CIDR hit", _pass_ip, m.ips.lookup_ip, _floor2, "cidr_hit"),
           ("ips.lookup_ip_port", "miss", _pass_ipport, m.ips.lookup_ip_port, _floor3, "ipport_miss"),
           ("ips.lookup_ip_port", "hit", _pass_ipport, m.ips.lookup_ip_port, _floor3, "ipport_hit"),
           ("urls.match", "miss", _pass2, m.urls.match, _floor2, "url_miss"),
           ("urls.match", "hit", _pass2, m.urls.match, _floor2, "url_hit")]
    lookups = {}
    for op, workload, loop, fn, floor, name in ops:
        items = w[name]
        if not items:
            continue
        loop(fn, items)  # untimed pass: first touches of mapped pages are not a steady cost
        wall, cpu, found = loop(fn, items)
        floor_wall, _, _ = loop(floor, items)
        lookups["%s %s" % (op, workload)] = {"op": op, "workload": workload, "n": len(items),
                                             "wall_ns": wall, "cpu_ns": cpu, "found": found,
                                             "floor_ns": floor_wall}
    return {"load_wall_s": load_wall, "load_cpu_s": load_cpu, "mem_start": at_start,
            "mem_load": after_load, "mem_workloads": with_workloads, "mem_warm": after_warmup,
            "warmup_lookups": warmed, "trails": artifact.trail_count, "lookups": lookups,
            "peak_rss": _peak_rss()}


def _domain_items(artifact):
    """(domain, trail id) for every domain trail, read out of the artifact's trail table."""
    from matchers.artifact import KIND_DOMAIN, S_STRINGS, S_TRAILS, TRAIL_RECORD
    strings = artifact.section(S_STRINGS)
    keys, ids = [], []
    for trail_id, (off, length, kind, _flags, _meta) in enumerate(
            TRAIL_RECORD.iter_unpack(artifact.section(S_TRAILS))):
        if kind == KIND_DOMAIN:
            keys.append(str(strings[off:off + length], "utf-8", "replace"))
            ids.append(trail_id)
    return keys, ids


def _suffix_table(candidate: str, artifact):
    """(suffixes(name) -> [(trail id or True, start)], structure build seconds). Every walk is the
    same loop as ReferenceSuffixTable.suffixes: the name, then each parent at a label boundary."""
    from matchers import _native
    from matchers.artifact import S_DOMAINS, S_STRINGS, S_TRAILS
    from matchers.domains import NativeSuffixTable, ReferenceSuffixTable

    if candidate == "native":
        start = time.perf_counter()
        table = NativeSuffixTable(artifact)
        return table.suffixes, time.perf_counter() - start

    if candidate == "native_pywalk":
        start = time.perf_counter()
        find = _native.Table(artifact.section(S_DOMAINS), artifact.section(S_TRAILS),
                             artifact.section(S_STRINGS)).find

        def suffixes(name):
            raw = name.encode("ascii", "replace")
            out = []
            start = 0
            while True:
                trail_id = find(raw[start:])
                if trail_id >= 0:
                    out.append((trail_id, start))
                dot = raw.find(b".", start)
                if dot < 0:
                    return out
                start = dot + 1
        return suffixes, time.perf_counter() - start

    keys, ids = _domain_items(artifact)
    start = time.perf_counter()
    if candidate == "dict":
        table = ReferenceSuffixTable(dict(zip(keys, ids)))
        suffixes = table.suffixes
    elif candidate == "set":
        members = set(keys)

        def suffixes(name):
            out = []
            start = 0
            while True:
                if name[start:] in members:
                    out.append((True, start))
                dot = name.find(".", start)
                if dot < 0:
                    return out
                start = dot + 1
    elif candidate == "automaton":
        import ahocorasick
        automaton = ahocorasick.Automaton()
        for key, trail_id in zip(keys, ids):
            automaton.add_word(key, trail_id)
        # Exact lookups only need the trie; make_automaton() would add the failure links that
        # substring search (not used here) needs.
        get = automaton.get

        def suffixes(name):
            out = []
            start = 0
            while True:
                trail_id = get(name[start:], None)
                if trail_id is not None:
                    out.append((trail_id, start))
                dot = name.find(".", start)
                if dot < 0:
                    return out
                start = dot + 1
    elif candidate == "marisa":
        from array import array

        import marisa_trie
        trie = marisa_trie.Trie(keys)
        # marisa assigns its own key ids; a parallel array maps them to trail ids.
        id_of = array("I", bytes(4 * len(trie)))
        for key, trail_id in zip(keys, ids):
            id_of[trie[key]] = trail_id
        get = trie.get

        def suffixes(name):
            out = []
            start = 0
            while True:
                key_id = get(name[start:], None)
                if key_id is not None:
                    out.append((id_of[key_id], start))
                dot = name.find(".", start)
                if dot < 0:
                    return out
                start = dot + 1
    else:
        raise ValueError(candidate)
    return suffixes, time.perf_counter() - start


def child_domains(args) -> dict:
    """One candidate: load from the artifact, memory, then ns per name for each workload."""
    _import_engine()
    if args.candidate == "marisa":
        import marisa_trie  # noqa: F401  (its import is baseline, not the structure)
    from matchers import Artifact
    at_start = memory()
    result = {"candidate": args.candidate}
    if args.candidate == "floor":
        suffixes = _floor_list
    else:
        start = _clock()
        artifact = Artifact.open(args.artifact)
        suffixes, structure_s = _suffix_table(args.candidate, artifact)
        if args.candidate not in ("native", "native_pywalk"):
            artifact.close()  # the copies hold everything; drop the mapping's pages from PSS
        load_wall, load_cpu = _since(start)
        result.update(load_wall_s=load_wall, load_cpu_s=load_cpu, structure_s=structure_s)
    ready = memory()
    w = _read_workloads(args.workloads_path, [name for name, _ in DOMAIN_WORKLOADS])
    with_workloads = memory()
    for name, _ in DOMAIN_WORKLOADS:
        _pass_list(suffixes, w[name])  # untimed: the native table's first page touches
    after = memory()
    timings = {}
    for name, _ in DOMAIN_WORKLOADS:
        wall, cpu, found = _pass_list(suffixes, w[name])
        timings[name] = {"n": len(w[name]), "wall_ns": wall, "cpu_ns": cpu, "found": found}
    result.update(mem_start=at_start, mem_ready=ready, mem_workloads=with_workloads,
                  mem_after=after, lookups=timings, peak_rss=_peak_rss())
    return result


def _resident_bytes(fd: int) -> int:
    """How much of the file open at `fd` is in memory (mincore over a mapping that touches no
    page): per file, so other processes on the machine do not blur it."""
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    size = os.fstat(fd).st_size
    page = os.sysconf("SC_PAGE_SIZE")
    addr = libc.mmap(None, size, 1, 1, fd, 0)  # PROT_READ, MAP_SHARED
    if addr in (None, ctypes.c_void_p(-1).value):
        raise OSError(ctypes.get_errno(), "mmap")
    try:
        vec = ctypes.create_string_buffer((size + page - 1) // page)
        if libc.mincore(addr, size, vec) != 0:
            raise OSError(ctypes.get_errno(), "mincore")
        return sum(b & 1 for b in vec.raw) * page
    finally:
        libc.munmap(addr, size)


def _tmpfile_copy(path: str) -> int:
    """The candidate the sensor does not use: the same copy as engine.trail_artifact.TrailCopy.take, into
    an unnamed O_TMPFILE beside the artifact (page cache of the artifact's filesystem, so the
    kernel can evict it; needs a writable directory there), then verified the same way."""
    from matchers import Artifact
    src = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(src).st_size
        fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_TMPFILE | os.O_RDWR, 0o400)
        copied = 0
        while copied < size:
            copied += os.sendfile(fd, src, copied, size - copied)
    finally:
        os.close(src)
    Artifact.from_fd(fd, path, verify=True).close()
    return fd


def child_copy(args) -> dict:
    """One private-copy candidate: the supervisor's copy and check, then a forked worker mapping
    it (load and memory measured in the worker, reported through a pipe)."""
    _import_engine()
    from engine.trail_artifact import TrailCopy, load_copy
    start = _clock()
    if args.candidate == "memfd":
        copy = TrailCopy.take(args.artifact)
        fd = copy.fd
    else:
        fd = _tmpfile_copy(args.artifact)
    copy_wall, copy_cpu = _since(start)
    sync_s = 0.0
    if args.candidate == "tmpfile":  # written back before its pages can be dropped (a disk write)
        t = time.perf_counter()
        os.fsync(fd)
        sync_s = time.perf_counter() - t
    held = _resident_bytes(fd)
    r, w = os.pipe()
    if args.candidate == "memfd":
        with copy.inherited():  # as the supervisor starts a worker: this copy stays open across fork
            pid = os.fork()
    else:
        pid = os.fork()
    if pid == 0:  # the worker
        os.close(r)
        at_start = memory()
        t = _clock()
        m = load_copy(fd)
        load_wall, load_cpu = _since(t)
        after_load = memory()
        w_ = _read_workloads(args.workloads_path)
        with_workloads = memory()
        kinds = [("dom_miss", _pass1, m.domains.match), ("dom_hit", _pass1, m.domains.match),
                 ("dom_parent", _pass1, m.domains.match), ("ip_miss", _pass_ip, m.ips.lookup_ip),
                 ("ip_hit", _pass_ip, m.ips.lookup_ip), ("cidr_hit", _pass_ip, m.ips.lookup_ip),
                 ("ipport_miss", _pass_ipport, m.ips.lookup_ip_port),
                 ("ipport_hit", _pass_ipport, m.ips.lookup_ip_port),
                 ("url_miss", _pass2, m.urls.match), ("url_hit", _pass2, m.urls.match)]
        share = max(1, args.warmup // len(kinds))
        for name, loop, fn in kinds:
            if w_[name][:share]:
                loop(fn, w_[name][:share])
        after_warmup = memory()
        os.write(w, json.dumps({"load_wall_s": load_wall, "load_cpu_s": load_cpu, "mem_start": at_start,
                                "mem_load": after_load, "mem_workloads": with_workloads,
                                "mem_warm": after_warmup}).encode())
        os._exit(0)
    os.close(w)
    chunks = []
    while True:
        chunk = os.read(r, 1 << 16)
        if not chunk:
            break
        chunks.append(chunk)
    os.waitpid(pid, 0)
    worker = json.loads(b"".join(chunks))
    # Ask the kernel to drop the copy's pages (nothing maps them now): a page-cache file can let
    # them go, a memfd cannot.
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    dropped = _resident_bytes(fd)
    if args.candidate == "memfd":
        copy.close()
    else:
        os.close(fd)
    return {"candidate": args.candidate, "copy_wall_s": copy_wall, "copy_cpu_s": copy_cpu, "sync_s": sync_s,
            "resident": held, "resident_after_drop": dropped, "worker": worker}


COPY_CANDIDATES = [("memfd", "sealed memfd (shipped)"), ("tmpfile", "O_TMPFILE beside the artifact")]

CHILDREN = {"build": child_build, "read": child_read, "baseline": child_baseline, "matchers": child_matchers,
            "domains": child_domains, "copy": child_copy}


# ---- the parent --------------------------------------------------------------------------------

def run_child(mode: str, args, **extra) -> dict:
    cmd = [sys.executable, "-m", "bench.trails", "--child", mode]
    options = {"artifact": args.artifact, "workloads": args.workloads_path, "trails": args.trails,
               "output": args.output, "warmup": args.warmup}
    options.update(extra)
    for key, value in options.items():
        if value is not None:
            cmd += ["--" + key, str(value)]
    done = subprocess.run(cmd, cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)
    if done.returncode != 0:
        sys.stderr.write(done.stderr)
        raise SystemExit("bench.trails: child %s %s failed (exit %d)" % (mode, extra, done.returncode))
    return json.loads(done.stdout.strip().splitlines()[-1])


def machine() -> dict:
    model = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"arch": platform.machine(), "nproc": len(os.sched_getaffinity(0)), "cpu": model,
            "kernel": platform.release(),
            "python": "%s %s" % (platform.python_implementation(), platform.python_version())}


def prepare_workloads(args, info: dict) -> None:
    """Picks the lookup names from the artifact (in this process, whose memory is not measured)
    and writes them for the children. Seeded: every run looks up the same names."""
    import ipaddress

    import msgpack

    from matchers import Artifact, TrailMatchers
    from matchers.artifact import (KIND_CIDR4, KIND_DOMAIN, KIND_IPPORT4, KIND_IPV4, KIND_PATH,
                                   KIND_URL, S_TRAILS)
    from matchers.ips import parse_ipport

    rng = random.Random(20240601)
    n = args.lookups
    artifact = Artifact.open(args.artifact)
    m = TrailMatchers.load(artifact)
    kinds = bytes(artifact.section(S_TRAILS))[6::12]  # TRAIL_RECORD's u8 kind at offset 6
    ids: dict[int, list[int]] = {}
    for trail_id, kind in enumerate(kinds):
        ids.setdefault(kind, []).append(trail_id)

    def pick(kind: int) -> list[int]:
        pool = ids.get(kind, [])
        if not pool:
            return []
        return rng.sample(pool, n) if len(pool) >= n else rng.choices(pool, k=n)

    w = {}
    # Misses as in the mix pcap's DNS queries: host<unique number>.example.org (3 labels).
    w["dom_miss"] = ["host%d.example.org" % v for v in rng.sample(range(1000000, 10000000), n)]
    w["dom_hit"] = [artifact.key(i) for i in pick(KIND_DOMAIN)]
    w["dom_parent"] = ["w%d.%s" % (rng.randrange(1000000), artifact.key(i)) for i in pick(KIND_DOMAIN)]

    ip_miss = []
    while len(ip_miss) < n:
        addr = rng.getrandbits(32)
        if m.ips.lookup_ip(4, addr) is None:
            ip_miss.append(addr)
    w["ip_miss"] = ip_miss
    w["ip_hit"] = [int(ipaddress.IPv4Address(artifact.key(i))) for i in pick(KIND_IPV4)]
    cidr_hit = []
    nets = [ipaddress.IPv4Network(artifact.key(i)) for i in ids.get(KIND_CIDR4, [])]
    for _ in range(50 * n if nets else 0):
        if len(cidr_hit) >= n:
            break
        net = rng.choice(nets)
        addr = int(net.network_address) + rng.randrange(net.num_addresses)
        hit = m.ips.lookup_ip(4, addr)
        if hit is not None and artifact.kind(hit) == KIND_CIDR4:
            cidr_hit.append(addr)
    w["cidr_hit"] = cidr_hit
    ipport_hit = []
    for i in pick(KIND_IPPORT4):
        host, port = parse_ipport(artifact.key(i))
        ipport_hit.append((int(ipaddress.IPv4Address(host)), port))
    w["ipport_hit"] = ipport_hit
    ipport_miss = []
    while len(ipport_miss) < n:
        addr = rng.getrandbits(32)
        if m.ips.lookup_ip_port(4, addr, 443) is None:
            ipport_miss.append((addr, 443))
    w["ipport_miss"] = ipport_miss
    # URL misses as in the mix pcap's HTTP requests; hits are host/path trails split at the first
    # '/', and path-only trails requested from an ordinary host.
    w["url_miss"] = [("www.example.org", "/index%d.html?id=%d" % (i, i)) for i in range(n)]
    url_ids = ids.get(KIND_URL, []) + ids.get(KIND_PATH, [])
    url_hit = []
    for i in (rng.sample(url_ids, n) if len(url_ids) >= n else rng.choices(url_ids, k=n)) if url_ids else []:
        key = artifact.key(i)
        if artifact.kind(i) == KIND_PATH:
            url_hit.append(("www.example.org", key))
        else:
            host, _, path = key.partition("/")
            url_hit.append((host, "/" + path))
    w["url_hit"] = url_hit

    with open(args.workloads_path, "wb") as f:
        f.write(msgpack.packb(w, use_bin_type=True))
    info["trails"] = artifact.trail_count
    info["domain_trails"] = len(ids.get(KIND_DOMAIN, []))
    info["rows_read"] = artifact.info.get("rows", {}).get("rows read")
    info["artifact_bytes"] = os.path.getsize(args.artifact)
    info["by_kind_artifact"] = artifact.info.get("by_kind", {})
    info["workload_sizes"] = {k: len(v) for k, v in w.items()}


# ---- printing ----------------------------------------------------------------------------------

def _median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _ratio(value, base) -> str:
    if value is None or base is None or base <= 0:
        return "n/a"
    r = value / base
    return "%.0fx" % r if r >= 100 else "%.2fx" % r if r < 10 else "%.1fx" % r


def _mb(value) -> str:
    return "n/a" if value is None else "%.1f" % (value / MB)


def _table(headers, rows, aligns=None) -> list[str]:
    cells = [list(map(str, headers))] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    aligns = aligns or ["<"] + [">"] * (len(headers) - 1)
    lines = []
    for k, row in enumerate(cells):
        lines.append("  " + "  ".join("%-*s" % (widths[i], c) if aligns[i] == "<" else "%*s" % (widths[i], c)
                                      for i, c in enumerate(row)).rstrip())
        if k == 0:
            lines.append("  " + "  ".join("-" * w for w in widths))
    return lines


BUILD_RUNS = [("read", "baseline: read + normalise only"), ("first", "first build (nothing to replace)"),
              ("rebuild", "rebuild over it (an update: provenance carried)")]


def _build_table(results: dict, args, context: str) -> list[str]:
    out = ["1. Build: trailsdb.compile.build, each run in a fresh process (target: peak RSS <= %.0f MB)"
           % BUILD_TARGET_MB, "  " + context.rsplit(" | ", 1)[0] + " | median of %d runs each]" % args.runs]
    if not results.get("build"):
        out.append("  skipped (--artifact %s); trails by kind from the artifact's build info" % args.artifact)
        return out
    read = results["build_runs"]["read"]
    base_cpu = _median([r["cpu_s"] for r in read])
    rows = []
    for key, label in BUILD_RUNS:
        runs = results["build_runs"][key]
        wall, cpu = _median([r["wall_s"] for r in runs]), _median([r["cpu_s"] for r in runs])
        peak = _median([r["peak_rss"] for r in runs])
        rows.append([label, "%.1f" % wall, "%.1f" % cpu, _ratio(cpu, base_cpu) if key != "read" else "1.00x",
                     format(int(runs[0]["rows_read"] / wall), ","), _mb(peak),
                     "%.2f" % (peak / MB / BUILD_TARGET_MB),
                     _mb(runs[0]["bytes"]) if "bytes" in runs[0] else "-",
                     str(runs[0].get("spilled_runs", "-")),
                     format(runs[0]["trails"], ",") if "trails" in runs[0] else "-",
                     format(runs[0]["carried"], ",") if "carried" in runs[0] else "-"])
    out += _table(["run", "wall s", "cpu s", "cpu x base", "rows/s", "peak RSS MB", "x target", "artifact MB",
                   "spilled runs", "trails", "carried"], rows, aligns=["<"] + [">"] * 10)
    first = results["build_runs"]["first"][0]
    out.append("  rejected %d rows; %d duplicates merged; rebuild: %s"
               % (first["rejected"], first["duplicates"], results["build_runs"]["rebuild"][0]["provenance"]))
    return out


def report(results: dict, args) -> list[str]:
    info, mach = results["info"], results["machine"]
    context = ("[%s trails from %s rows | %s | %s, %d CPUs, %s | median of %d fresh-process runs]"
               % (format(info["trails"], ","), format(info["rows_read"] or 0, ","), mach["python"],
                  mach["arch"], mach["nproc"], mach["cpu"], args.runs))
    out = ["maltrail-engine trail benchmark (python -m bench.trails%s)" % (" --quick" if args.quick else ""),
           "kernel %s; MB = 10^6 bytes; PSS/RSS from /proc/self/smaps_rollup; every process fresh" % mach["kernel"],
           ""]

    out += _build_table(results, args, context)
    by_kind = results["build"][0]["by_kind"] if results.get("build") else info["by_kind_artifact"]
    out.append("  trails by kind: " + ", ".join("%s %s" % (k, format(v, ","))
                                               for k, v in sorted(by_kind.items(), key=lambda kv: -kv[1])))
    out.append("")
    if args.build_only:
        return out

    base = results["baseline"]
    loads = results["matchers"]
    b_pss = _median([r["mem"]["Pss"] for r in base])
    b_rss = _median([r["mem"]["Rss"] for r in base])

    def mem_row(label, key, warm=False):
        def value(r, field):
            # .get: older kernels lack some smaps_rollup fields (Pss_Anon, FilePmdMapped)
            v = r[key].get(field, 0)
            if warm:  # the lookup names themselves are not the matcher's memory
                v = r["mem_load"].get(field, 0) + r["mem_warm"].get(field, 0) - r["mem_workloads"].get(field, 0)
            return v
        pss = _median([value(r, "Pss") for r in loads])
        return [label, _mb(pss), _mb(pss - b_pss), _ratio(pss, LOADED_TARGET_MB * MB),
                _mb(_median([value(r, "Rss") for r in loads])),
                _mb(_median([value(r, "Pss_Anon") for r in loads])),
                _mb(_median([value(r, "Pss_File") for r in loads])),
                _mb(_median([value(r, "FilePmdMapped") for r in loads]))]

    out.append("2. Load: Artifact.open (every section's checksum checked) -> TrailMatchers.load ready "
               "(fresh process per run)")
    out.append("  " + context)
    load_wall = _median([r["load_wall_s"] for r in loads])
    load_cpu = _median([r["load_cpu_s"] for r in loads])
    out += _table(["", "wall s", "cpu s", "target s", "x target"],
                  [["load", "%.3f" % load_wall, "%.3f" % load_cpu, "%.1f" % LOAD_TARGET_S,
                    _ratio(load_wall, LOAD_TARGET_S)],
                   ["imports (baseline process)", "%.3f" % _median([r["import_s"] for r in base]), "", "", ""]])
    out.append("")
    warm_n = loads[0]["warmup_lookups"]
    out += _table(["memory", "PSS MB", "PSS - baseline", "PSS x 200 MB target", "RSS MB", "PSS anon",
                   "PSS file", "file PMD-mapped"],
                  [["baseline: imports only", _mb(b_pss), "", _ratio(b_pss, LOADED_TARGET_MB * MB), _mb(b_rss),
                    _mb(_median([r["mem"].get("Pss_Anon", 0) for r in base])),
                    _mb(_median([r["mem"].get("Pss_File", 0) for r in base])),
                    _mb(_median([r["mem"].get("FilePmdMapped", 0) for r in base]))],
                   mem_row("after load", "mem_load"),
                   mem_row("after %s mixed lookups" % format(warm_n, ","), "mem_load", warm=True)])
    out.append("  after the warm-up, the lookup names' own memory is subtracted; 'file PMD-mapped' is mapped")
    out.append("  artifact memory the kernel maps in 2 MB folios (one touched byte counts 2 MB)")
    out.append("")

    copies = results.get("copies", {})
    if copies:
        out.append("2b. The sensor's private copy: supervisor copies + verifies, a forked worker maps it "
                   "(fresh process per run)")
        out.append("  " + context)
        rows = []
        for cand, label in COPY_CANDIDATES:
            runs = copies.get(cand)
            if not runs:
                rows.append([label, "skipped: %s" % results["skipped"].get("copy " + cand, "not run")] + [""] * 8)
                continue

            def med(fn, runs=runs):
                return _median([fn(r) for r in runs])
            warm_pss = med(lambda r: r["worker"]["mem_load"]["Pss"] + r["worker"]["mem_warm"]["Pss"]
                           - r["worker"]["mem_workloads"]["Pss"])
            warm_rss = med(lambda r: r["worker"]["mem_load"]["Rss"] + r["worker"]["mem_warm"]["Rss"]
                           - r["worker"]["mem_workloads"]["Rss"])
            rows.append([label, "%.3f" % med(lambda r: r["copy_wall_s"]), "%.3f" % med(lambda r: r["sync_s"]),
                         "%.3f" % med(lambda r: r["worker"]["load_wall_s"]),
                         "%.3f" % med(lambda r: r["copy_wall_s"] + r["worker"]["load_wall_s"]),
                         _mb(warm_pss), _mb(warm_rss),
                         _mb(med(lambda r: r["resident"])), _mb(med(lambda r: r["resident_after_drop"]))])
        out += _table(["candidate", "copy+verify s", "fsync s", "worker load s", "total s", "worker PSS MB",
                       "worker RSS MB", "copy in RAM MB", "after drop MB"], rows)
        out.append("  worker PSS/RSS: the whole worker after %s mixed lookups (the lookup names subtracted);"
                   % format(loads[0]["warmup_lookups"], ","))
        out.append("  copy in RAM: the copy's resident pages (mincore) once made; after drop: still resident after")
        out.append("  posix_fadvise(DONTNEED) with nothing mapping it (memory pressure would do the same; a memfd")
        out.append("  is shmem and stays, without swap). fsync: the O_TMPFILE's pages written to disk first.")
        out.append("")

    doms = results["domains"]
    out.append("3. Domain candidates over %s domain trails (one fresh process per candidate and run)"
               % format(info["domain_trails"], ","))
    out.append("  " + context)

    def med(cand, fn):
        runs = doms.get(cand)
        return _median([fn(r) for r in runs]) if runs else None

    def delta(r, after=False):
        d = r["mem_ready"]["Pss"] - r["mem_start"]["Pss"]
        if after:
            d += r["mem_after"]["Pss"] - r["mem_workloads"]["Pss"]
        return d

    ship_load = med(SHIPPED, lambda r: r["load_wall_s"])
    ship_mem = med(SHIPPED, lambda r: delta(r, True))
    rows = []
    for cand, label in CANDIDATES:
        if cand == "floor":
            continue
        if cand not in doms:
            rows.append([label, "skipped: %s" % results["skipped"].get(cand, "not run")] + [""] * 6)
            continue
        load = med(cand, lambda r: r["load_wall_s"])
        mem_after = med(cand, lambda r: delta(r, True))
        rows.append([label, "%.3f" % load, "%.3f" % med(cand, lambda r: r["structure_s"]), _ratio(load, ship_load),
                     _mb(med(cand, lambda r: delta(r))), _mb(mem_after), _ratio(mem_after, ship_mem),
                     _mb(med(cand, lambda r: r["mem_after"]["Rss"] - r["mem_workloads"]["Rss"]
                             + r["mem_ready"]["Rss"] - r["mem_start"]["Rss"]))])
    out += _table(["candidate", "load s", "of it build s", "x shipped", "PSS+ ready MB", "PSS+ after lookups",
                   "x shipped", "RSS+ after"], rows)
    out.append("  load = open the artifact (+ read the domain strings out of it + build) to ready; PSS+ = over the")
    out.append("  same process before loading; 'after lookups' adds the pages the lookups below touched")
    out.append("")

    n = info["workload_sizes"]["dom_miss"]
    out.append("  ns per name, suffix walk (name + each parent), %s names per workload, wall (cpu)" % format(n, ","))
    ship = {name: med(SHIPPED, lambda r, name=name: r["lookups"][name]["wall_ns"]) for name, _ in DOMAIN_WORKLOADS}
    rows = []
    for cand, label in CANDIDATES:
        if cand not in doms:
            continue
        row = [label]
        for name, _ in DOMAIN_WORKLOADS:
            wall = med(cand, lambda r, name=name: r["lookups"][name]["wall_ns"])
            cpu = med(cand, lambda r, name=name: r["lookups"][name]["cpu_ns"])
            row += ["%.0f (%.0f)" % (wall, cpu), _ratio(wall, ship[name])]
        row.append("/".join(format(int(med(cand, lambda r, name=name: r["lookups"][name]["found"])), ",")
                            for name, _ in DOMAIN_WORKLOADS))
        rows.append(row)
    out += _table(["candidate", "miss ns", "x shipped", "hit ns", "x shipped", "parent ns", "x shipped",
                   "found miss/hit/parent"], rows)
    out.append("")

    out.append("4. Whole matcher: TrailMatchers.load, ns per lookup (same processes as 2, after the warm-up)")
    out.append("  " + context)
    rows = []
    for key, first in loads[0]["lookups"].items():
        wall = _median([r["lookups"][key]["wall_ns"] for r in loads])
        cpu = _median([r["lookups"][key]["cpu_ns"] for r in loads])
        floor = _median([r["lookups"][key]["floor_ns"] for r in loads])
        rows.append([first["op"], first["workload"], "%.0f" % wall, "%.0f" % cpu, "%.0f" % floor,
                     _ratio(wall, floor), "%s/%s" % (format(first["found"], ","), format(first["n"], ","))])
    out += _table(["op", "workload", "wall ns", "cpu ns", "floor ns", "x floor", "found/lookups"], rows,
                  aligns=["<", "<"] + [">"] * 5)
    out.append("  floor = the same loop calling a Python function that does nothing, measured in the same process")
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.trails", description=__doc__.split("\n\n")[0])
    p.add_argument("--trails", default=DEFAULT_TRAILS, help="trail set to build from (default: %(default)s)")
    p.add_argument("--artifact", help="reuse this compiled artifact and skip the build")
    p.add_argument("--output", help="where the build writes its artifact (default: a temporary directory, "
                                    "removed afterwards)")
    p.add_argument("--runs", type=int, default=3, help="fresh processes per measurement (default 3)")
    p.add_argument("--lookups", type=int, default=200000, help="names per lookup workload (default 200000)")
    p.add_argument("--warmup", type=int, default=100000, help="mixed lookups before the warm memory figure")
    p.add_argument("--quick", action="store_true", help="smoke run: 1 run, 20k lookups, 20k warm-up")
    p.add_argument("--build-only", action="store_true", help="table 1 only (the build and its memory)")
    p.add_argument("--only", help="comma-separated domain candidates to run (default: all)")
    p.add_argument("--json", help="also write the raw numbers here")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--candidate", help=argparse.SUPPRESS)
    p.add_argument("--workloads", dest="workloads_path", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.child:
        print(json.dumps(CHILDREN[args.child](args)))
        return 0

    if args.quick:
        args.runs, args.lookups, args.warmup = 1, 20000, 20000
    if args.artifact:
        if not os.path.exists(args.artifact):
            print("bench.trails: --artifact %s does not exist" % args.artifact, file=sys.stderr)
            return 2
    elif not os.path.exists(args.trails):
        print("bench.trails: skipped: " + MISSING_TRAILS % args.trails + " (or --artifact PATH)")
        return 0

    workdir = tempfile.mkdtemp(prefix="bench-trails-")
    args.workloads_path = os.path.join(workdir, "workloads.msgpack")
    results = {"machine": machine(), "args": {k: v for k, v in vars(args).items() if k != "child"},
               "skipped": {}}
    try:
        if not args.artifact:
            args.output = args.output or os.path.join(workdir, "trails.mtdb")
            runs = {key: [] for key, _ in BUILD_RUNS}
            for _ in _runs(args, "build from %s (read, first build, rebuild)" % args.trails):
                runs["read"].append(run_child("read", args))
                if os.path.exists(args.output):
                    os.unlink(args.output)
                runs["first"].append(run_child("build", args))
                runs["rebuild"].append(run_child("build", args))
            results["build_runs"] = runs
            results["build"] = runs["first"]
            args.artifact = args.output
        results["info"] = {}
        if args.build_only:
            from matchers import Artifact
            artifact = Artifact.open(args.artifact)
            results["info"].update(trails=artifact.trail_count, rows_read=artifact.info.get("rows", {}).get("rows read"),
                                   by_kind_artifact=artifact.info.get("by_kind", {}))
            lines = report(results, args)
        else:
            _progress("preparing %d-name workloads" % args.lookups)
            prepare_workloads(args, results["info"])

            results["baseline"] = [run_child("baseline", args) for _ in _runs(args, "baseline")]
            results["matchers"] = [run_child("matchers", args) for _ in _runs(args, "load + matchers")]
            results["copies"] = {}
            for cand, _label in COPY_CANDIDATES:
                if cand == "tmpfile" and not _tmpfile_supported(args.artifact):
                    results["skipped"]["copy tmpfile"] = "O_TMPFILE not possible beside %s" % args.artifact
                    continue
                results["copies"][cand] = [run_child("copy", args, candidate=cand) for _ in _runs(args, "copy " + cand)]
            wanted = set(args.only.split(",")) if args.only else {c for c, _ in CANDIDATES}
            results["domains"] = {}
            for cand, _label in CANDIDATES:
                if cand not in wanted:
                    results["skipped"][cand] = "not selected (--only)"
                    continue
                if cand == "marisa" and importlib.util.find_spec("marisa_trie") is None:
                    results["skipped"][cand] = "marisa-trie not installed (pip install marisa-trie)"
                    _progress("marisa-trie: skipped, not installed (pip install marisa-trie)")
                    continue
                results["domains"][cand] = [run_child("domains", args, candidate=cand)
                                            for _ in _runs(args, "domains " + cand)]
            if SHIPPED not in results["domains"]:
                raise SystemExit("bench.trails: the shipped candidate %r must be part of the run" % SHIPPED)
            lines = report(results, args)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    print("\n".join(lines))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


def _tmpfile_supported(path: str) -> bool:
    try:
        os.close(os.open(os.path.dirname(os.path.abspath(path)), os.O_TMPFILE | os.O_RDWR, 0o400))
        return True
    except OSError:
        return False


def _runs(args, what):
    for i in range(args.runs):
        _progress("%s (run %d/%d)" % (what, i + 1, args.runs))
        yield i


def _progress(message: str) -> None:
    print("bench.trails: " + message, file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
