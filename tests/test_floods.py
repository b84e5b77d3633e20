"""A flood of distinct scanners: every scanner is reported, every probe past the threshold is
counted, whatever the heuristics' bounded state holds meanwhile; and noise control holds each
scanner's open group in few enough bytes for a worker to stay within 100 MB under the flood
`python -m bench floods` measures (180,000 scanners).

The engine test replays a scaled-down flood (bench/floods.py's `write_scanner_pcap`: 24,000 IPv4
scanners, each sending SYNs to 20 ports of one target, 2 ms a scanner) through
`maltrail-engine replay` with one worker, with the two bounds the full flood reaches scaled down
with it: the port-scan window holds at most 4,096 keys (`max_scan_keys`; the full flood passes the
default 65,536), so most scanners are evicted long after their verdict, and noise control's window
is 10 s (`condense_window_s`), so 5,000 groups are open at a time and each is closed by its window
(the full flood: 60 s, 30,000 open). The events are read back from the log.

The memory test measures what noise control itself holds per open group (tracemalloc, exact and
deterministic: Python's allocations, not the process's resident size) for the events the worker
makes in that flood, and holds it to a bound derived from the 100 MB target (`BYTES_PER_GROUP`).
The worker's resident and proportional memory under the full flood are the bench's to measure.
"""

from __future__ import annotations

import json
import subprocess
import tracemalloc
from collections import Counter

from bench.floods import FIRST_PORT, scanner_address, write_scanner_pcap
from engine.sources.pcapfile import open_capture
from events.record import Event, severity_of
from matchers import Artifact, TrailMatchers
from tests.collectors import logged_events
from tests.conftest import REPO
from tests.test_corpus import console_script
from trailsdb.compile import build
from workers.condense import Condenser
from workers.flow import ip_text
from workers.pipeline import HEURISTIC, Worker

SCANNERS = 24_000
PORTS = 20
THRESHOLD = 10          # HeuristicSettings.port_scan_threshold: the 11th distinct port is the first verdict
MAX_SCAN_KEYS = 4_096   # the port-scan window's cap, scaled with the flood: 19,904 scanners evicted
CONDENSE_WINDOW_S = 10  # 5,000 groups open at a time (a scanner every 2 ms), each closed by its window
TARGET = "198.18.0.7"
INFO = "potential port scanning"

# The bound on noise control's bytes per open group, from the target of at most 100 MB per
# worker under the 180,000-scanner flood (bench/README.md, the floods section): at the flood's peak
# 30,000 groups are open (60 s of scanners 2 ms apart). Everything else the worker holds there (the
# interpreter, the modules, its share of the trails, the C port-scan window at its 65,536-key cap,
# the batch in flight, one part of the flush's records) came to 66 MB in the bench (2026-12-06: a
# 78.5 MB peak, 12.8 MB of it the groups). That leaves 34 MB for 30,000 groups: 1,133 bytes each.
# (Held in an object per group, each took about 1,700; in the flat arrays, about 430.)
OPEN_GROUPS_AT_PEAK = 30_000
REST_OF_WORKER_BYTES = 66_000_000
BYTES_PER_GROUP = (100_000_000 - REST_OF_WORKER_BYTES) // OPEN_GROUPS_AT_PEAK


def test_a_flood_of_scanners_past_every_bound_reports_every_scanner(tmp_path):
    pcap = tmp_path / "scanners.pcap"
    assert write_scanner_pcap(str(pcap), SCANNERS, PORTS) == SCANNERS * PORTS
    artifact = tmp_path / "trails.mtdb"
    build([str(REPO / "tests" / "corpus" / "trails.csv")], str(artifact))
    conf = tmp_path / "maltrail.toml"
    conf.write_text("[sensor]\ncondense_window_s = %d\n\n[heuristics]\nmax_scan_keys = %d\n"
                    % (CONDENSE_WINDOW_S, MAX_SCAN_KEYS))
    log_dir = tmp_path / "log"
    stats = tmp_path / "stats.json"
    done = subprocess.run([console_script(), "replay", "-c", str(conf), "--trails", str(artifact), "--log-dir",
                           str(log_dir), "--workers", "1", "--stats-json", str(stats), str(pcap)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    # the flood did pass the window's cap: most scanners were evicted from it
    saturation = json.loads(stats.read_text())["counters"]["saturation"]
    assert saturation["port scan keys evicted"] == SCANNERS - MAX_SCAN_KEYS
    events = logged_events(log_dir)
    scans = [e for e in events if e["info"] == INFO]
    assert len(scans) == len(events)            # the flood holds nothing else to report
    per_scanner = Counter()
    ports = {}
    for e in scans:
        assert e["trail"] == e["src_ip"] and e["dst_ip"] == TARGET
        per_scanner[e["src_ip"]] += int(e["count"])
        ports.setdefault(e["src_ip"], set()).update(str(e["dst_port"]).split(","))
    # every scanner, each with all its probes past the threshold: the 11th to the 20th port, as the
    # first event and one record of its nine repeats
    assert len(per_scanner) == SCANNERS
    assert set(per_scanner) == {scanner_address(k) for k in range(SCANNERS)}
    assert set(per_scanner.values()) == {PORTS - THRESHOLD}
    assert len(scans) == 2 * SCANNERS
    want = {str(FIRST_PORT + v) for v in range(THRESHOLD, PORTS)}
    assert all(seen == want for seen in ports.values())


def _scan_event(k: int, port: int, ts_us: int) -> tuple[Event, tuple]:
    """The port-scan event the worker makes for scanner k's probe of `port`, with the group source
    it passes (workers/flow.py group_key): fresh text and numbers per event, as a packet's are."""
    addr = int.from_bytes(bytes(int(x) for x in scanner_address(k).split(".")), "big")
    sport = int.from_bytes((40000).to_bytes(2, "big"), "big")      # a new int, as a decoded header's
    event = Event(ts_us, "bench", ip_text(4, addr), sport, ip_text(4, 0xC6120007), port, "TCP", "IP",
                  ip_text(4, addr), INFO, HEURISTIC, severity_of(INFO, HEURISTIC), 1, ts_us)
    return event, ("", 4, addr)


def test_noise_control_holds_a_scanner_of_the_flood_in_few_bytes():
    scanners = 10_000
    condenser = Condenser(window_us=3600 * 1_000_000)      # every group stays open
    out = []
    ts_us = 1_700_000_000 * 1_000_000
    tracemalloc.start()
    try:
        for k in range(scanners):
            for port in range(FIRST_PORT + THRESHOLD, FIRST_PORT + PORTS):  # the probes past the threshold
                ts_us += 100
                event, source = _scan_event(k, port, ts_us)
                condenser.offer(event, out, source)
            out.clear()
        held = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert len(condenser) == scanners and condenser.suppressed == scanners * (PORTS - THRESHOLD - 1)
    assert held / scanners <= BYTES_PER_GROUP, (held / scanners, BYTES_PER_GROUP)
    # what the groups held is what they report
    condenser.flush(out)
    assert len(out) == scanners
    assert {e.dst_port for e in out} == {",".join(str(FIRST_PORT + v) for v in range(THRESHOLD + 1, PORTS))}
    assert {e.count for e in out} == {PORTS - THRESHOLD - 1} and {e.src_port for e in out} == {40000}


def _two_flooded_workers(tmp_path):
    """Two workers that judged the same 3,000-scanner flood: 3,000 noise-control groups open in each."""
    pcap = tmp_path / "scanners.pcap"
    write_scanner_pcap(str(pcap), 3_000, PORTS)
    artifact = tmp_path / "trails.mtdb"
    build([str(REPO / "tests" / "corpus" / "trails.csv")], str(artifact))
    matchers = TrailMatchers.load(Artifact.open(str(artifact)))
    workers = Worker(matchers, "t"), Worker(matchers, "t")
    for worker in workers:
        with open_capture(str(pcap)) as reader:
            for batch in reader:
                worker.process(batch)
        assert len(worker.condenser) == 3_000
    return workers


def test_a_flushing_worker_emits_the_same_records_in_bounded_parts(tmp_path):
    """After a flood tens of thousands of groups are open; the worker process sends what closing
    them emits a part at a time (engine/processes/worker.py), and the parts are the records a
    single flush makes, in the same order."""
    whole, parted = _two_flooded_workers(tmp_path)
    parts = list(parted.flush_parts(1024))
    assert [len(p) for p in parts] == [1024, 1024, 952]
    assert [e for p in parts for e in p] == whole.flush()
    assert len(parted.condenser) == 0 and parted.stats()["events"] == whole.stats()["events"]


def test_a_live_worker_expires_a_flood_in_the_same_bounded_parts(tmp_path):
    """Live capture closes windows on the wall clock when traffic pauses: after a flood every group
    ends at once, and the worker process sends them a part at a time, the same records in the same
    order as one expire()."""
    whole, parted = _two_flooded_workers(tmp_path)
    later_us = (1 << 62)  # every window has ended
    parts = list(parted.expire_parts(later_us, 1024))
    assert [len(p) for p in parts] == [1024, 1024, 952]
    assert [e for p in parts for e in p] == whole.expire(later_us)
    assert len(parted.condenser) == 0 and parted.stats()["events"] == whole.stats()["events"]
