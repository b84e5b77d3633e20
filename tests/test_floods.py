"""A flood of distinct scanners through the real engine: every scanner is reported, every probe
past the threshold is counted, whatever the heuristics' bounded state holds meanwhile.

180,000 IPv4 scanners (bench/floods.py's `write_scanner_pcap`, the flood `python -m bench floods`
measures), each sending SYNs to 20 ports of one target, are replayed by `maltrail-engine replay`
with one worker; the events are read back from the log with `maltrail-engine tail`. The port-scan
window holds at most `max_scan_keys` (65,536) keys, so most scanners are evicted long after their
verdict; noise control holds each scanner's repeats as one group. The memory this costs is
measured by the bench, never asserted here.
"""

from __future__ import annotations

import subprocess
from collections import Counter

from bench.floods import FIRST_PORT, scanner_address, write_scanner_pcap
from tests.collectors import logged_events
from tests.conftest import REPO
from tests.test_corpus import console_script
from trailsdb.compile import build

SCANNERS = 180_000
PORTS = 20
THRESHOLD = 10          # HeuristicSettings.port_scan_threshold: the 11th distinct port is the first verdict


def test_a_flood_of_180000_scanners_reports_every_scanner(tmp_path):
    pcap = tmp_path / "scanners.pcap"
    assert write_scanner_pcap(str(pcap), SCANNERS, PORTS) == SCANNERS * PORTS
    artifact = tmp_path / "trails.mtdb"
    build([str(REPO / "tests" / "corpus" / "trails.csv")], str(artifact))
    log_dir = tmp_path / "log"
    done = subprocess.run([console_script(), "replay", "--trails", str(artifact), "--log-dir", str(log_dir),
                           "--workers", "1", str(pcap)], capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    events = logged_events(log_dir)
    scans = [e for e in events if e["info"] == "potential port scanning"]
    assert len(scans) == len(events)            # the flood holds nothing else to report
    per_scanner = Counter()
    ports = {}
    for e in scans:
        assert e["trail"] == e["src_ip"] and e["dst_ip"] == "198.18.0.7"
        per_scanner[e["src_ip"]] += int(e["count"])
        ports.setdefault(e["src_ip"], set()).update(str(e["dst_port"]).split(","))
    # every scanner, each with all its probes past the threshold: the 11th to the 20th port
    assert len(per_scanner) == SCANNERS
    assert set(per_scanner) == {scanner_address(k) for k in range(SCANNERS)}
    assert set(per_scanner.values()) == {PORTS - THRESHOLD}
    want = {str(FIRST_PORT + v) for v in range(THRESHOLD, PORTS)}
    assert all(seen == want for seen in ports.values())
