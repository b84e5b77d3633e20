"""Long replays and the scaling model for `python -m bench replay --long` / `--scaling-model`.

Owns three measurements that bench/replay.py reports as tables 7 and 8 (bench/README.md):

- long replays: `mix` and `hard` pcaps long enough that the steady window lasts at least
  `window_s` at the target rate, generated on the fly into a temporary file (one at a time, deleted
  as soon as its rounds are done; never stored in the repository), measured in alternating rounds
  of a 1-packet and a full replay, medians taken;
- the capture process alone: the real capture process (engine/processes/capture.py, its C
  stager) forked here with its own rings, each drained by a bare consumer that copies every
  message out and does nothing else. Its steady rate is what the capture process sustains
  whatever the workers do: the ceiling for N workers;
- 1 against 2 workers with the engine held to two CPUs (its own pinning puts the capture process
  on the first, the workers on the second), and what each process of the pipeline spent per packet
  (as each process reports its own, replay --stats-json), from which the rate with one core per worker is modelled.

Also the documented reference: Maltrail's Rust sensor as ../shared/bench/README.md records it
(measured in another session on this machine kind), and the targets set as ratios of it.
Owns nothing the engine uses; imports the engine only to fork the capture process.
"""

from __future__ import annotations

import math
import mmap
import os
import time

# Maltrail's Rust sensor 3.1.2, one worker, as ../shared/bench/README.md documents it (300,000-
# packet pcaps, this machine kind, another session). Not measured here: the sensor is not built
# on this machine. Figures are (low, high) where the document gives a range.
RUST_DOC = {
    "source": "../shared/bench/README.md (Maltrail Rust sensor 3.1.2, 1 worker; another session)",
    "mix_pps": 1.94e6, "hard_pps": 0.40e6,
    "start_s": (0.63, 0.69), "peak_mb": (165.0, 205.0),
    "mix_cpu_ns": 618.0, "hard_cpu_ns": 2545.0,
}
# What the engine is built to reach, as multiples of that reference (steady rate) or absolute.
TARGET_X_RUST = 2.5
TARGET_START_S = 0.3
TARGET_PEAK_MB = 150.0
MIN_LONG_PACKETS = 3_000_000
DEFAULT_WINDOW_S = 2.0
RING_CAPACITY = 16 << 20  # [sensor] ring_bytes' default


def target_pps(kind: str) -> float:
    return TARGET_X_RUST * RUST_DOC["%s_pps" % kind]


def long_packets(kind: str, window_s: float = DEFAULT_WINDOW_S, override: int = 0) -> int:
    """Packets for a steady window of `window_s` at the target rate (at least MIN_LONG_PACKETS)."""
    if override:
        return override
    return max(MIN_LONG_PACKETS, int(math.ceil(window_s * target_pps(kind))))


def generate_long(kind: str, path: str, packets: int, artifact: str, log) -> dict:
    """The `kind` pcap of `packets` packets at `path` (bench/generate.py; seed 1, the same bytes as
    the short pcaps' first packets). `hard` plants its indicators from the compiled artifact."""
    from bench.generate import generate_hard, generate_mix
    start = time.perf_counter()
    if kind == "mix":
        truth = generate_mix(path, packets, 1)
    else:
        truth = generate_hard(path, packets, 1, [artifact], log=log)
    # On disk before the first replay: writeback of gigabytes of dirty pages would otherwise run
    # beside the measured replays (the file stays in the page cache).
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    log("generated %s: %d packets, %.0f MB in %.1f s" % (os.path.basename(path), packets,
                                                         os.path.getsize(path) / 1e6, time.perf_counter() - start))
    return truth


def steady(frames: int, wall_s: float, one_wall_s: float):
    """The peers' definition: (frames - 1) / (wall(N) - wall(1 packet))."""
    if frames < 2 or wall_s <= one_wall_s:
        return None
    return (frames - 1) / (wall_s - one_wall_s)


def steady_cpu_ns(frames: int, cpu_s: float, one_cpu_s: float):
    """CPU per packet with start-up and shutdown taken out, as the steady rate takes them out."""
    if frames < 2:
        return None
    return (cpu_s - one_cpu_s) * 1e9 / (frames - 1)


# ---- the capture process alone ---------------------------------------------------------------------

def _drain(ring, cpu) -> None:
    """A consumer that copies every message out of its ring and nothing else, until the producer
    has closed it and it is empty. Runs in a forked child; never returns."""
    code = 0
    try:
        if cpu is not None:
            os.sched_setaffinity(0, {cpu})
        get, finished = ring.get, ring.finished
        while True:
            if get() is None:
                if finished():
                    break
                time.sleep(0.0001)
    except BaseException:  # noqa: BLE001 (a forked child must never return into the harness)
        code = 1
    os._exit(code)


def capture_alone(pcap: str, rings: int, capture_cpu, drain_cpu) -> dict:
    """One run of the real capture process over `pcap` into `rings` rings, each drained by `_drain`.
    Returns the wall time from the fork to the capture process's exit, its CPU (wait4), and its
    final statistics."""
    from engine.processes.capture import CaptureSpec, run_capture
    from engine.transport import ipc
    from engine.transport.ring import Ring, ring_bytes
    maps = [mmap.mmap(-1, ring_bytes(RING_CAPACITY)) for _ in range(rings)]
    ring_objs = [Ring(memoryview(m), RING_CAPACITY, create=True) for m in maps]
    ours, theirs = ipc.channel()
    drainers = []
    for ring in ring_objs:
        pid = os.fork()
        if pid == 0:
            _drain(ring, drain_cpu)
        drainers.append(pid)
    start = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            ours.close()
            run_capture(CaptureSpec("replay", ring_objs, theirs, os.urandom(16), cpu=capture_cpu, paths=[pcap],
                                    parent_pid=os.getppid()))
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        finally:
            os._exit(code)
    _, status, usage = os.wait4(pid, 0)
    wall = time.perf_counter() - start
    theirs.close()
    drained_ok = True
    drain_cpu_s = 0.0
    for d in drainers:
        _, dstatus, dusage = os.wait4(d, 0)
        drained_ok = drained_ok and os.waitstatus_to_exitcode(dstatus) == 0
        drain_cpu_s += dusage.ru_utime + dusage.ru_stime
    stats = None
    for message in ipc.receive_ready(ours):
        if message and message[0] == "done":
            stats = message[1]
    ours.close()
    for ring in ring_objs:
        ring.release()
    del ring_objs, maps  # the mappings go with their last view
    if os.waitstatus_to_exitcode(status) != 0 or stats is None or not drained_ok:
        raise RuntimeError("capture process alone over %s: exit %d, statistics %r, drainers ok %s"
                           % (pcap, os.waitstatus_to_exitcode(status), stats, drained_ok))
    return {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime, "frames": stats["frames"],
            "dispatched": stats["dispatched"], "ring_waits": stats.get("ring_waits"), "drain_cpu_s": drain_cpu_s}


def capture_ceiling(pcap: str, one: str, rings: int, runs: int, capture_cpu, drain_cpu, progress) -> dict:
    """Alternating rounds of a 1-packet and a full capture-alone run; medians."""
    full, single = [], []
    for i in range(runs):
        progress("%s: capture process alone, %d ring(s), run %d/%d" % (os.path.basename(pcap), rings, i + 1, runs))
        single.append(capture_alone(one, rings, capture_cpu, drain_cpu))
        full.append(capture_alone(pcap, rings, capture_cpu, drain_cpu))
    wall = _median([r["wall_s"] for r in full])
    one_wall = _median([r["wall_s"] for r in single])
    cpu = _median([r["cpu_s"] for r in full])
    one_cpu = _median([r["cpu_s"] for r in single])
    frames = full[0]["frames"]
    cpu_ns = steady_cpu_ns(frames, cpu, one_cpu)
    return {"rings": rings, "frames": frames, "wall_s": wall, "one_wall_s": one_wall, "cpu_s": cpu,
            "steady_pps": steady(frames, wall, one_wall), "cpu_ns": cpu_ns,
            # what it sustains with a core to itself: its CPU is all it spends per frame (it
            # sleeps while a ring is full), so 1 / CPU per frame, whatever else shares the machine
            "cpu_bound_pps": 1e9 / cpu_ns if cpu_ns and cpu_ns > 0 else None,
            "ring_waits": _median([r["ring_waits"] for r in full]),
            "drain_cpu_ns": _median([r["drain_cpu_s"] for r in full]) * 1e9 / frames,
            "dispatched": full[0]["dispatched"], "runs": full + single}


def _median(values):
    values = sorted(v for v in values if v is not None)
    if not values:
        return None
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


# ---- per-process CPU and the model ------------------------------------------------------------------

def role(name: str) -> str:
    """A process's part from its name in the sampler (`mte-worker-0[123]` -> `mte-worker-0`)."""
    return name.split("[", 1)[0]


def steady_cpu_by_role(full_runs: list, single_runs: list) -> dict:
    """Median CPU seconds per process part (capture, each worker, writer, supervisor, ...) over the
    full runs, less the same over the 1-packet runs: what each part spent on the packets."""
    def by_role(run):
        out = {}
        for name, seconds in run["cpu_by_process"].items():
            out[role(name)] = out.get(role(name), 0.0) + seconds
        return out
    fulls = [by_role(r) for r in full_runs]
    singles = [by_role(r) for r in single_runs]
    roles = sorted(set().union(*fulls)) if fulls else []
    return {k: (_median([f.get(k, 0.0) for f in fulls]) or 0.0) - (_median([s.get(k, 0.0) for s in singles]) or 0.0)
            for k in roles}


def modelled_pps(frames: int, cpu_by_role: dict, ceiling_pps=None):
    """The rate with one core per pipeline process: the busiest of the capture process and the
    workers sets the pace (each spends its CPU only on the frames it is given; the log writer and
    supervisor take a core of their own on a bigger machine), capped by the capture process's
    ceiling (its CPU-bound rate alone). CPU time, unlike wall time, barely moves when other jobs
    share the machine, so the model holds on a busy machine where measured rates do not."""
    busiest = max([s for k, s in cpu_by_role.items() if k == "mte-capture" or k.startswith("mte-worker")] or [0.0])
    if frames < 2 or busiest <= 0:
        return None
    pps = (frames - 1) / busiest
    return min(pps, ceiling_pps) if ceiling_pps else pps
