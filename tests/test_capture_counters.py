"""The capture process's "headers only" counters, as a run reports them.

Holds: a replay of client TLS data reports how many frames crossed the rings as their headers
alone, in the summary and in `--stats-json`, on the C and the reference capture path; a flight
begun from the higher port reports that every later frame went whole; a running sensor's /metrics
shows both (maltrail_capture_headers_only_total, maltrail_capture_whole_frames).
"""

from __future__ import annotations

import json
import random
import re
import subprocess
import time

from tests.test_certs import Conversation
from tests.test_engine import _fifo_engine, _wait_line, artifact, console_script  # noqa: F401
from tests.test_headers_only import _reversed_flight_pcap
from tests.test_metrics import _get, _sample

DATA_SEGMENTS = 40      # the client's TLS application data: each is published as its headers alone
WAIT_S = 60.0           # how long the test waits for something that must happen (never measured)


def _tls_data_pcap(path):
    """One connection: handshake, then DATA_SEGMENTS application data records from the client
    (cut: ACK, payload, sent from the higher port, opening with record type 23) and as many from
    the server (kept whole: the capture process cannot tell them from a certificate flight)."""
    c = Conversation(4, client_port=50000, server_port=443)
    c.handshake()
    noise = random.Random(13)
    for _ in range(DATA_SEGMENTS):
        c.send(True, b"\x17\x03\x03\x04\xb0" + noise.randbytes(1200))
        c.send(False, b"\x17\x03\x03\x04\xb0" + noise.randbytes(1200))
    return c.write(path), len(c.frames)


def _replay(tmp_path, artifact, pcap, *extra):  # noqa: F811 (the fixture's value)
    stats = tmp_path / ("stats%s.json" % "".join(extra))
    done = subprocess.run([console_script(), "replay", "--trails", str(artifact), "--log-dir",
                           str(tmp_path / ("log" + "".join(extra))), "--stats-json", str(stats), *extra, str(pcap)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(stats.read_text())["capture"], done.stderr


def test_a_replay_reports_the_frames_published_as_headers_alone(tmp_path, artifact):  # noqa: F811
    pcap, frames = _tls_data_pcap(tmp_path / "tls.pcap")
    for extra in ([], ["--reference"]):
        capture, stderr = _replay(tmp_path, artifact, pcap, *extra)
        assert capture["frames"] == frames
        assert capture["headers_only"] == DATA_SEGMENTS and capture["whole_frames"] is False, capture
        assert "published as headers alone: %d frames\n" % DATA_SEGMENTS in stderr, stderr


def test_a_flight_from_the_higher_port_is_reported_as_whole_frames(tmp_path, artifact):  # noqa: F811
    pcap, _before = _reversed_flight_pcap(tmp_path / "reversed.pcap")
    cut = 3     # the other connection's three data segments, before the SYN-ACK's flight
    for extra in ([], ["--reference"]):
        capture, stderr = _replay(tmp_path, artifact, pcap, *extra)
        assert capture["headers_only"] == cut and capture["whole_frames"] is True, capture
        assert re.search(r"published as headers alone: %d frames; every frame whole since" % cut, stderr), stderr


def _metric(url: str, name: str) -> float | None:
    return _sample(_get(url + "/metrics")[1], name)


def test_metrics_show_the_headers_only_counters(tmp_path, artifact):  # noqa: F811
    pcap, frames = _tls_data_pcap(tmp_path / "tls.pcap")
    proc, stream, lines, _log = _fifo_engine(tmp_path, artifact, stats_address="127.0.0.1:0")
    try:
        url = re.search(r"metrics: (http://\S+)/metrics", _wait_line(lines, r"metrics: http://")).group(1)
        stream.write(pcap.read_bytes())
        stream.flush()
        _wait_line(lines, r"processed w0:%d" % frames, timeout_s=WAIT_S)
        # the capture process reports every stats_interval_s (1 s here): poll until a report
        # taken after the frames reaches the supervisor's view
        deadline = time.monotonic() + WAIT_S
        seen = _metric(url, "maltrail_capture_headers_only_total")
        while seen != DATA_SEGMENTS and time.monotonic() < deadline:
            time.sleep(0.2)
            seen = _metric(url, "maltrail_capture_headers_only_total")
        assert seen == DATA_SEGMENTS
        assert _metric(url, "maltrail_capture_whole_frames") == 0
    finally:
        stream.close()
        proc.wait(timeout=WAIT_S)
    assert proc.returncode == 0, "".join(lines)
