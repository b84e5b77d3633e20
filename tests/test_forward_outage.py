"""Nothing lost, nothing blocked: reliable forwarding (TCP, TLS) through outages, for real.

- A collector (Debian's rsyslog) killed with SIGKILL while events keep coming, then restarted:
  every event arrives exactly once, and the sensor says the collector was unreachable and back.
- The sensor killed with SIGKILL (every one of its processes at once) while it streams a backlog,
  then restarted on the same log directory: nothing is lost, and what is sent twice is at most
  the batch that was in flight (FORWARD_BATCH events).
- A collector down while a hundred thousand events are detected: none is lost once it is back,
  and the forwarder's memory does not grow with the backlog (the log is the queue).
"""

from __future__ import annotations

import collections
import json
import re
import signal
import time

import pytest

from events.forwarders.base import FORWARD_BATCH
from tests.collectors import (
    Pki, Rsyslog, Sensor, TcpLineCollector, dns_frames, free_port, logged_events, need_rsyslog, rss_kib, wait_until,
)
from tests.test_forward_rsyslog import artifact  # noqa: F401 (a fixture)

TRAIL = re.compile(rb" trail=\(f(\d+)\)\.evil-parent\.net ")


def event_numbers(lines) -> list[int]:
    """The i of each f<i>.evil-parent.net record, in the order received."""
    found = []
    for line in lines:
        m = TRAIL.search(line)
        assert m, line
        found.append(int(m.group(1)))
    return found


def logged_numbers(log_dir) -> list[int]:
    return [int(e["trail"][2:e["trail"].index(")")]) for e in logged_events(log_dir)]


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return Pki(tmp_path_factory.mktemp("pki"))


@pytest.mark.parametrize("scheme", ["tcp", "tls"])
def test_a_collector_killed_and_restarted_gets_every_event_exactly_once(scheme, artifact, pki, tmp_path):  # noqa: F811
    need_rsyslog()
    port = free_port()
    kind = {"tcp": "tcp", "tls": "tls"}[scheme]
    collector = Rsyslog(tmp_path / "rsyslog", pki=pki, **{kind: port}).start()
    address = "%s://%s:%d" % (scheme, "localhost" if scheme == "tls" else "127.0.0.1", port)
    sensor = Sensor(tmp_path / "sensor", artifact, tmp_path / "log", syslog_server=[address],
                    syslog_ca_file=str(pki.ca)).start()
    try:
        sensor.feed(dns_frames(0, 300))
        collector.wait_lines(kind, 300)
        collector.kill()                          # SIGKILL; the port is free again
        sensor.feed(dns_frames(300, 2000))        # detected while it is down
        sensor.wait_line(r"syslog_server %s unreachable: .*events wait in the log" % re.escape(address))
        sensor.wait_line(r"events: DNS 2300\b")   # all of them in the log
        collector.start()                         # the same port, a new process
        sensor.wait_line(r"syslog_server %s is reachable again after \d+ s" % re.escape(address))
        collector.wait_lines(kind, 2300)
        sensor.feed(dns_frames(2300, 100))        # and after it is back
        collector.wait_lines(kind, 2400)
    finally:
        code = sensor.finish()
        collector.stop()
    assert code == 0, sensor.text()
    received = event_numbers(collector.lines(kind))
    assert sorted(received) == sorted(logged_numbers(tmp_path / "log")) == list(range(2400))
    assert received == list(range(2400))          # in the order detected, too
    assert len(re.findall(r"unreachable", sensor.text())) == 1, sensor.text()


def _position_settled(log_dir, quiet_s: float = 1.0) -> None:
    """Waits until no position file in LOG_DIR/.forward has changed for quiet_s: the forwarder
    is stuck in the middle of a batch."""
    def snapshot():
        state = log_dir / ".forward"
        return sorted((p.name, p.stat().st_mtime_ns) for p in state.iterdir() if p.suffix == ".json")
    last, since = snapshot(), time.monotonic()
    while time.monotonic() - since < quiet_s:
        time.sleep(0.05)
        now = snapshot()
        if now != last:
            last, since = now, time.monotonic()


def test_the_sensor_killed_while_it_forwards_sends_at_most_one_batch_twice(artifact, tmp_path):  # noqa: F811
    """A Logstash-style TCP collector reads a while, then stops reading: its kernel takes what
    fits in a small receive buffer, the rest of that batch waits unacknowledged, and the whole
    sensor is killed then. The collector reads on (what the killed connection still carried
    arrives too); the sensor, restarted on the same log directory, sends that batch again."""
    collector = TcpLineCollector(rcvbuf_bytes=4096)
    log = tmp_path / "log"
    total = 30_000
    address = "tcp://127.0.0.1:%d" % collector.port
    first = Sensor(tmp_path / "sensor", artifact, log, logstash_server=[address]).start()
    try:
        first.feed(dns_frames(0, total))
        wait_until(lambda: len(collector.lines) >= 3000, "3000 lines")
        collector.pause()
        _position_settled(log)
        at_kill = len(collector.lines)
        first.kill_all()
    except BaseException:
        first.kill_all()
        collector.close()
        raise
    try:
        collector.resume()
        logged = logged_numbers(log)               # what survived the kill (the open frame may not)
        assert at_kill < len(logged), "the forwarder caught up before the kill: nothing was in flight"
        second = Sensor(tmp_path / "sensor", artifact, log, logstash_server=[address]).start()
        try:
            wait_until(lambda: set(int(json.loads(line)["trail"][2:].split(")")[0]) for line in collector.lines)
                       >= set(logged), "every logged event at the collector", timeout_s=120)
        finally:
            code = second.finish()
        received = [int(json.loads(line)["trail"][2:].split(")")[0]) for line in collector.lines]
    finally:
        collector.close()
    assert code == 0, second.text()
    counts = collections.Counter(received)
    assert set(counts) == set(logged), "lost: %s" % sorted(set(logged) - set(counts))[:20]
    twice = sum(n - 1 for n in counts.values())
    print("killed with %d of %d received; sent twice after the restart: %d (bound %d)"
          % (at_kill, len(logged), twice, FORWARD_BATCH))
    assert 0 < twice <= FORWARD_BATCH, "%d events sent twice; the bound is one batch (%d)" % (twice, FORWARD_BATCH)
    assert max(counts.values()) == 2


def test_a_long_outage_loses_nothing_and_the_backlog_stays_on_disk(artifact, tmp_path):  # noqa: F811
    need_rsyslog()
    port = free_port()
    collector = Rsyslog(tmp_path / "rsyslog", tcp=port)
    small, large = 2_000, 100_000
    sensor = Sensor(tmp_path / "sensor", artifact, tmp_path / "log", syslog_server=["tcp://127.0.0.1:%d" % port]).start()
    try:
        sensor.feed(dns_frames(0, small))
        sensor.wait_line(r"unreachable: .*connection refused|unreachable: .*Connection refused")
        sensor.wait_line(r"events: DNS %d\b" % small)
        forwarder = sensor.child("mte-forwarder")
        before_kib = rss_kib(forwarder, "VmRSS")
        sensor.feed(dns_frames(small, large - small))
        sensor.wait_line(r"events: DNS %d\b" % large, timeout_s=300)
        collector.start()
        collector.wait_lines("tcp", large, timeout_s=300)
        peak_kib = rss_kib(forwarder, "VmHWM")
    finally:
        code = sensor.finish()
        collector.stop()
    assert code == 0, sensor.text()
    received = event_numbers(collector.lines("tcp"))
    assert received == list(range(large))
    # Holding the backlog would cost far more than this (a decoded event is ~1 KiB in Python);
    # one batch and one decoded log frame (at most 4,096 records) fit well within it.
    print("forwarder memory: %d KiB with %d events waiting, peak %d KiB after sending %d" % (
        before_kib, small, peak_kib, large))
    assert peak_kib - before_kib < 24 * 1024, (before_kib, peak_kib)
    assert re.search(r"is reachable again after \d+ s", sensor.text())


def test_a_collector_that_stops_reading_gets_the_batch_again_and_not_its_tail_late(artifact, tmp_path):  # noqa: F811
    """A collector that stops reading is given up on after ACK_TIMEOUT_S (its TCP took only what
    fit in its receive buffer) and the batch goes out again on a new connection. The connection
    given up is reset: the part of the batch its TCP never acknowledged is not delivered later by
    the kernel beside the batch sent again, so only what it had acknowledged arrives twice."""
    collector = TcpLineCollector(rcvbuf_bytes=4096)
    address = "tcp://127.0.0.1:%d" % collector.port
    sensor = Sensor(tmp_path / "sensor", artifact, tmp_path / "log", logstash_server=[address])
    try:
        collector.pause()
        sensor.start()
        sensor.feed(dns_frames(0, FORWARD_BATCH))           # one batch
        sensor.wait_line(r"logstash_server %s unreachable: .* bytes not acknowledged by the collector"
                         % re.escape(address), timeout_s=60)
        collector.resume()
        sensor.wait_line(r"is reachable again", timeout_s=60)
        wait_until(lambda: len(set(collector.lines)) >= FORWARD_BATCH, "the batch at the collector")
        time.sleep(1.0)       # anything the first connection still carried would have come by now
    finally:
        code = sensor.finish()
        collector.close()
    assert code == 0, sensor.text()
    counts = collections.Counter(int(json.loads(line)["trail"][2:].split(")")[0]) for line in collector.lines)
    assert set(counts) == set(range(FORWARD_BATCH))
    twice = sum(n - 1 for n in counts.values())
    assert 0 < twice < FORWARD_BATCH, twice


def test_sigterm_with_a_collector_that_does_not_read_stops_in_order_and_loses_nothing(artifact, tmp_path):  # noqa: F811
    """SIGTERM while a batch waits for a collector that stopped reading: the forwarder gives up
    within what is left of the stop budget (status 0, nothing forced), and the events it had not
    delivered are sent by the next start."""
    collector = TcpLineCollector(rcvbuf_bytes=4096)
    address = "tcp://127.0.0.1:%d" % collector.port
    log = tmp_path / "log"
    try:
        collector.pause()
        first = Sensor(tmp_path / "sensor", artifact, log, logstash_server=[address]).start()
        first.feed(dns_frames(0, 2000))
        first.wait_line(r"events: DNS 2000\b")
        first.proc.send_signal(signal.SIGTERM)
        code = first.finish()
        assert code == 0, first.text()
        assert "stopped before everything drained" not in first.text()
        assert "unreachable" not in first.text()      # stopping is not the collector's failure
        collector.resume()
        second = Sensor(tmp_path / "sensor", artifact, log, logstash_server=[address]).start()
        try:
            wait_until(lambda: len(set(collector.lines)) >= 2000, "every event at the collector", timeout_s=60)
        finally:
            assert second.finish() == 0, second.text()
        numbers = {int(json.loads(line)["trail"][2:].split(")")[0]) for line in collector.lines}
    finally:
        collector.close()
    assert numbers == set(range(2000))
