"""`disable_local_log_storage`: the log directory as a spool, through the real sensor.

- A day file every configured destination has taken is deleted, unless it is today's; one that a
  destination has not taken (its collector is down) stays, however many runs it takes, and goes
  once the collector has it all. Nothing any destination was to get is ever deleted first.
- While the sensor runs, the log writer deletes a day every destination has passed; a later
  event of that day starts a new file, without a "deleted while open" warning, and is sent too.
- Without a destination that takes every event, it is a configuration error (tests/test_outputs.py).
"""

from __future__ import annotations

import json
import time

import pytest

from engine.sources import synthetic as g
from tests.test_outputs import (
    T0_S, Collector, FifoSensor, account_dir, artifact, replay, wait_for, write_conf, write_pcap,
)

DAY_S = 86_400


@pytest.fixture(scope="module")
def trails(tmp_path_factory):
    return artifact(tmp_path_factory.mktemp("trails") / "trails.mtdb")


def _days(log) -> list[str]:
    return sorted(p.name for p in log.glob("*.events.zst"))


def _conf(tmp_path, collector_port, out):
    return write_conf(tmp_path / "maltrail.toml", sensor={
        "disable_local_log_storage": True,
        "json_output": ["tcp://127.0.0.1:%d" % collector_port, "file://%s/ecs.json" % out]})


def test_days_every_destination_took_are_deleted_and_a_day_one_did_not_stays(tmp_path, trails):
    out = account_dir(tmp_path / "out")
    collector = Collector()
    port = collector.port
    collector.stop()                                  # down for the first run
    conf = _conf(tmp_path, port, out)
    log = tmp_path / "log"
    first = write_pcap(tmp_path / "a.pcap", [(0, g.tcp_frame("10.0.0.1", "203.0.113.66", 40001, 443)),
                                             (DAY_S, g.tcp_frame("10.0.0.2", "203.0.113.66", 40002, 443))])
    result = replay(conf, trails, log, first)
    assert result.returncode == 0, result.stderr
    # the file destination took both days, the collector neither: both stay
    assert _days(log) == ["2026-03-01.events.zst", "2026-03-02.events.zst"]
    assert (out / "ecs.json").read_text().count("\n") == 2
    collector = Collector(port)
    try:
        second = write_pcap(tmp_path / "b.pcap", [(0, g.tcp_frame("10.0.0.3", "203.0.113.69", 40003, 443))],
                            start_s=T0_S + 2 * DAY_S)
        result = replay(conf, trails, log, second)
        assert result.returncode == 0, result.stderr
        assert [d["source"]["ip"] for d in collector.json()] == ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
    finally:
        collector.stop()
    assert _days(log) == []                           # every destination took every day: none is today's
    assert [json.loads(line)["source"]["ip"] for line in (out / "ecs.json").read_text().splitlines()] == [
        "10.0.0.1", "10.0.0.2", "10.0.0.3"]


def test_todays_file_stays_though_it_was_taken(tmp_path, trails):
    out = account_dir(tmp_path / "out")
    collector = Collector()
    try:
        now_s = int(time.time())
        pcap = write_pcap(tmp_path / "x.pcap", [(0, g.tcp_frame("10.0.0.1", "203.0.113.66", 40001, 443)),
                                                (now_s - T0_S, g.tcp_frame("10.0.0.2", "203.0.113.66", 40002, 443))])
        log = tmp_path / "log"
        result = replay(_conf(tmp_path, collector.port, out), trails, log, pcap)
        assert result.returncode == 0, result.stderr
        assert len(collector.lines) == 2
    finally:
        collector.stop()
    assert _days(log) == [time.strftime("%Y-%m-%d.events.zst", time.localtime(now_s))]


def test_the_writer_deletes_a_passed_day_while_the_sensor_runs(tmp_path, trails):
    out = account_dir(tmp_path / "out")
    collector = Collector()
    sensor = FifoSensor(tmp_path, trails, _conf(tmp_path, collector.port, out))
    try:
        sensor.batch([g.tcp_frame("10.0.0.1", "203.0.113.66", 40001, 443)])
        wait_for(lambda: len(collector.lines) == 1, what="the first event at the collector")
        wait_for(lambda: _days(sensor.log) == [], what="the log writer deleting the day every destination took")
        # the same day again: a new file, no warning, sent like the first
        sensor.batch([g.tcp_frame("10.0.0.2", "203.0.113.66", 40002, 443)], at_s=T0_S + 600)
        wait_for(lambda: len(collector.lines) == 2, what="the second event at the collector")
        stats = sensor.finish()
    finally:
        sensor.kill()
        collector.stop()
    assert [d["source"]["ip"] for d in collector.json()] == ["10.0.0.1", "10.0.0.2"]
    assert "2026-03-01.events.zst" in stats["writer"]["spooled"]
    assert "deleted while open" not in sensor.text() and "log cleaner" not in sensor.text()
    assert _days(sensor.log) == []
