"""`tail -n N` and `tail -f` on real log directories: the last N events are what a full `tail`
prints last, found by reading the newest pairs only; `tail -f` starts from the last 10 (or -n, or
--since) and then prints exactly what is appended afterwards, in the newest file, in older day
files and after a torn tail completes. Driven through run_tail and through the installed command."""

from __future__ import annotations

import calendar
import io
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from events.log import EventLogReader, EventLogWriter
from events.formats import format_maltrail
from events.tail import run_tail
from tests.conftest import pinned_tz
from tests.test_corpus import console_script
from events.record import TYPE_DNS, Event

CET = "CET-1CEST,M3.5.0,M10.5.0/3"
T0_US = calendar.timegm((2026, 11, 24, 12, 0, 0)) * 1_000_000      # 13:00 local
HOUR_US = 3600 * 1_000_000
DAY_US = 24 * HOUR_US


@pytest.fixture(autouse=True)
def cet():
    with pinned_tz(CET):
        yield


def ev(ts_us: int, n: int) -> Event:
    return Event(ts_us, "tail", "10.0.0.%d" % (n % 250 + 1), 40000 + n, "8.8.8.8", 53, "UDP", TYPE_DNS,
                 "evil%d.example" % n, "malware (test)", "(static)", "high", 1, ts_us)


def write_frames(log_dir, frames) -> None:
    with EventLogWriter(log_dir, max_frame_age_s=3600) as writer:
        for frame in frames:
            writer.write(frame)
            writer.flush()


def three_days(log_dir) -> list[Event]:
    """Three day files of 4 frames of 5 events each, written newest day first (file order and
    write order differ), with event numbers counting up in the order a full tail prints them."""
    frames_by_day = {}
    n = 0
    for day in range(3):
        frames_by_day[day] = []
        for f in range(4):
            frames_by_day[day].append([ev(T0_US + day * DAY_US + f * 1000 + i, n + i) for i in range(5)])
            n += 5
    write_frames(log_dir, frames_by_day[2] + frames_by_day[0] + frames_by_day[1])
    return [e for day in range(3) for frame in frames_by_day[day] for e in frame]


def tail_lines(log_dir, **kw) -> list[str]:
    out, err = io.StringIO(), io.StringIO()
    assert run_tail(str(log_dir), out=out, err=err, **kw) == 0, err.getvalue()
    return out.getvalue().splitlines()


def lines_of(events) -> list[str]:
    return [format_maltrail(e) for e in events]


def test_n_prints_the_last_n_lines_of_a_full_tail(tmp_path):
    events = three_days(tmp_path)
    full = tail_lines(tmp_path)
    assert full == lines_of(events)
    for n in (0, 1, 4, 5, 6, 21, 59, 60, 61, 1000):
        assert tail_lines(tmp_path, lines=n) == (full[-n:] if n else []), n
        assert tail_lines(tmp_path, lines=str(n)) == (full[-n:] if n else []), n

    # Within --since/--until: the last N of what they select.
    since, until = T0_US + 1000, T0_US + DAY_US + 2004
    selected = [e for e in events if since <= e.ts_us <= until]
    assert tail_lines(tmp_path, since=since, until=until) == lines_of(selected)
    for n in (1, 3, 7, len(selected), len(selected) + 3):
        assert tail_lines(tmp_path, since=since, until=until, lines=n) == lines_of(selected[-n:]), n


def test_n_decompresses_only_the_pairs_it_needs(tmp_path):
    three_days(tmp_path)
    newest = tmp_path / "2026-11-26.events.zst"
    reader = EventLogReader()
    events, _ = reader.last(str(tmp_path), 7)
    assert [e.trail for e in events] == ["evil%d.example" % n for n in range(53, 60)]
    assert reader.frames_read == 2            # the two newest pairs hold the last 7 events
    assert reader.corrupt_frames == 0
    # The older day files are not read at all: only pair headers and two frames of the newest.
    assert reader.bytes_read < newest.stat().st_size


def test_n_skips_damaged_pairs_and_counts_them(tmp_path):
    events = three_days(tmp_path)
    newest = tmp_path / "2026-11-26.events.zst"
    data = bytearray(newest.read_bytes())
    data[-3] ^= 0xFF            # the last pair's checksum: complete in length, so a torn tail
    data[100] ^= 0xFF           # the first pair's data: damage
    newest.write_bytes(bytes(data))
    reader = EventLogReader()
    got, _ = reader.last(str(tmp_path), 12)
    full = list(EventLogReader().iter_dir(str(tmp_path)))
    assert got == full[-12:]
    # Day 3 holds 40..59 in four pairs: 40..44 damaged, 55..59 a torn tail (not damage).
    assert got == events[38:40] + events[45:55]
    assert reader.corrupt_frames == 1


def test_bad_counts_are_usage_errors(tmp_path):
    three_days(tmp_path)
    for bad in ("-1", "+3", "x", "", "1.5", "٣"):
        err = io.StringIO()
        assert run_tail(str(tmp_path), lines=bad, out=io.StringIO(), err=err) == 2, bad
        assert "invalid count" in err.getvalue() and "-n" in err.getvalue(), bad


class Follower:
    """run_tail(follow=True) in a thread, stopped by the test; lines collected as they come."""

    def __init__(self, log_dir, **kw):
        self.out = io.StringIO()
        self.stopped = threading.Event()
        self.polled = threading.Event()     # set once follow() polls: what was there is taken
        self.result = {}

        def stop() -> bool:
            self.polled.set()
            return self.stopped.is_set()

        self.thread = threading.Thread(daemon=True, target=lambda: self.result.setdefault("rc", run_tail(
            str(log_dir), follow=True, out=self.out, err=io.StringIO(), stop=stop, poll_s=0.02, **kw)))
        self.thread.start()
        assert self.polled.wait(timeout=20)

    def wait_for(self, count: int, timeout_s: float = 20) -> list[str]:
        deadline = time.monotonic() + timeout_s      # a bound should the test fail, not a measure
        while len(self.out.getvalue().splitlines()) < count and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.out.getvalue().splitlines()

    def finish(self) -> list[str]:
        self.stopped.set()
        self.thread.join(timeout=20)
        assert not self.thread.is_alive() and self.result["rc"] == 0
        return self.out.getvalue().splitlines()


@pytest.fixture
def follow():
    """Start followers with follow(log_dir, **kw); every one is stopped when the test ends."""
    started = []

    def start(log_dir, **kw) -> Follower:
        started.append(Follower(log_dir, **kw))
        return started[-1]
    yield start
    for follower in started:
        follower.stopped.set()
        follower.thread.join(timeout=20)


def _round(log_dir, follower, events, already: int) -> list[str]:
    """Append `events` and wait for them; returns the lines printed after the first `already`."""
    write_frames(log_dir, [events])
    return follower.wait_for(already + len(events))[already:]


def test_follow_starts_from_the_last_10_then_prints_what_is_appended(tmp_path, follow):
    events = three_days(tmp_path)
    follower = follow(tmp_path)
    first = follower.wait_for(10)
    new = [ev(T0_US + 2 * DAY_US + 10_000 + i, 100 + i) for i in range(3)]
    later = _round(tmp_path, follower, new, 10)
    lines = follower.finish()
    assert first == lines_of(events[-10:])
    assert later == lines_of(new)
    assert lines == lines_of(events[-10:] + new)        # nothing printed twice, nothing else


def test_follow_with_n_zero_prints_only_new_events_and_since_prints_all_since(tmp_path, follow):
    events = three_days(tmp_path)
    follower = follow(tmp_path, lines=0)
    new = [ev(T0_US + 2 * DAY_US + 10_000, 100)]
    assert _round(tmp_path, follower, new, 0) == lines_of(new)
    assert follower.finish() == lines_of(new)

    # --since without -n: everything since then (the old behaviour, which scripts rely on).
    follower = follow(tmp_path, since=T0_US + DAY_US)
    expected = [e for e in events + new if e.ts_us >= T0_US + DAY_US]
    assert follower.wait_for(len(expected)) == lines_of(expected)
    assert follower.finish() == lines_of(expected)


def test_follow_after_n_sees_appends_to_an_older_day_file_once(tmp_path, follow):
    # The writer may append to an older day (a late event); tail -f -n never read that file.
    events = three_days(tmp_path)
    follower = follow(tmp_path, lines=3)
    assert follower.wait_for(3) == lines_of(events[-3:])
    late = [ev(T0_US + 50_000, 200), ev(T0_US + 50_001, 201)]
    assert _round(tmp_path, follower, late, 3) == lines_of(late)
    assert follower.finish() == lines_of(events[-3:] + late)


def test_follow_after_n_prints_a_pair_that_was_torn_when_it_started(tmp_path, follow):
    # An older day file and the newest one both end in a pair still being written.
    three_days(tmp_path)
    partial = {}
    for name, ts in (("2026-11-24.events.zst", T0_US + 60_000), ("2026-11-26.events.zst", T0_US + 2 * DAY_US + 60_000)):
        path = tmp_path / name
        before = path.stat().st_size
        write_frames(tmp_path, [[ev(ts, 300 + len(partial)), ev(ts + 1, 310 + len(partial))]])
        whole = path.read_bytes()
        partial[name] = (path, whole[before:])
        os.truncate(path, before + 45)      # the pair header and a little of its frame are there
    follower = follow(tmp_path, lines=2)
    first = follower.wait_for(2)
    for path, pair in partial.values():     # the rest of each pair lands
        with open(path, "ab") as f:
            f.write(pair[45:])
    lines = follower.wait_for(6)
    assert follower.finish() == lines
    assert first == lines_of([ev(T0_US + 2 * DAY_US + 3004 - 1, 58), ev(T0_US + 2 * DAY_US + 3004, 59)])
    assert sorted(lines[2:]) == sorted(lines_of([ev(T0_US + 60_000, 300), ev(T0_US + 60_001, 310),
                                                 ev(T0_US + 2 * DAY_US + 60_000, 301),
                                                 ev(T0_US + 2 * DAY_US + 60_001, 311)]))


def test_tail_f_n_from_the_command_line(tmp_path):
    events = three_days(tmp_path)
    proc = subprocess.Popen([console_script(), "tail", "-f", "-n", "2", "--log-dir", str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, TZ=CET))
    guard = threading.Timer(60, proc.kill)      # a bound should the test fail, not a measure
    guard.start()
    try:
        first = [proc.stdout.readline().rstrip("\n") for _ in range(2)]
        new = [ev(T0_US + 2 * DAY_US + 10_000, 100)]
        write_frames(tmp_path, [new])
        appended = proc.stdout.readline().rstrip("\n")
    finally:
        proc.send_signal(signal.SIGINT)          # Ctrl-C ends tail -f quietly
        _, err = proc.communicate(timeout=20)
        guard.cancel()
    assert first == lines_of(events[-2:])
    assert appended == format_maltrail(new[0])
    assert proc.returncode == 0 and "Traceback" not in err, err

    plain = subprocess.run([console_script(), "tail", "-n", "3", "--log-dir", str(tmp_path)],
                           capture_output=True, text=True, timeout=60, env=dict(os.environ, TZ=CET))
    assert plain.returncode == 0, plain.stderr
    assert plain.stdout.splitlines() == lines_of((events + new)[-3:])
    bad = subprocess.run([console_script(), "tail", "-n", "+3", "--log-dir", str(tmp_path)],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "invalid count" in bad.stderr
