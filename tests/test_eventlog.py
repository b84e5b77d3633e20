"""The event log on real files and real processes: layout, frame timing, crashes, torn tails,
repair, following a growing directory, time ranges, the `tail` command's logic, and the log
directory as a hostile or careless world leaves it: symlinks, hard links and foreign files at a
day file's name, an unsafe directory, files and the directory deleted or moved under a running
writer, and files built to make a reader's work blow up."""

from __future__ import annotations

import calendar
import io
import json
import os
import shlex
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import stat
import textwrap
import threading
import time
from pathlib import Path

import msgpack
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from events.log import (
    PAIR_SYNC,
    EventLogReader,
    EventLogWriter,
    file_name_for,
    list_day_files,
    repair_file,
)
from events.formats import CSV_HEADER, format_maltrail
from events.tail import run_tail
from events.record import TYPE_DNS, Event
from tests.conftest import pinned_tz
from tests.netns import veth  # noqa: F401 (a fixture)

REPO = Path(__file__).resolve().parent.parent
# Central European time, written as a POSIX rule so it needs no tzdata: local midnight is not
# UTC midnight, which is what the day-file naming must get right.
CET = "CET-1CEST,M3.5.0,M10.5.0/3"
# 2026-11-24 13:00:00 local (CET, UTC+1).
T0_US = calendar.timegm((2026, 11, 24, 12, 0, 0)) * 1_000_000
HOUR_US = 3600 * 1_000_000


@pytest.fixture(autouse=True)
def cet():
    with pinned_tz(CET):
        yield


def ev(ts_us: int, n: int = 0) -> Event:
    return Event(ts_us, "parity", "10.0.0.%d" % (n % 250 + 1), 40000 + n % 20000, "8.8.8.8", 53,
                 "UDP", TYPE_DNS, "evil%d.example" % n, "malware (test)", "(static)", "high", 1, ts_us)


def pairs_of(data: bytes) -> list[tuple[int, int, tuple]]:
    """(start, end, index) of each pair, parsed here independently of events/log."""
    spans = []
    pos = 0
    while pos < len(data):
        magic, frame_size = struct.unpack_from("<II", data, pos)
        assert (magic, frame_size) == (0x184D2A50, 24)
        index = struct.unpack_from("<IIQQ", data, pos + 8)
        end = pos + 32 + index[0]
        assert end <= len(data)
        spans.append((pos, end, index))
        pos = end
    return spans


def write_frames(log_dir, frames: list[list[Event]]) -> None:
    """One closed frame per list."""
    with EventLogWriter(log_dir, max_frame_age_s=3600) as writer:
        for frame in frames:
            writer.write(frame)
            writer.flush()


def read_all(log_dir, **kw) -> list[Event]:
    return list(EventLogReader().iter_dir(str(log_dir), **kw))


def run_py(code: str, *args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=60, check=True, **kw)


def popen_py(code: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


# -- layout and round trip ----------------------------------------------------------------------

def test_round_trip_across_two_local_dates(tmp_path):
    # 23:59:59 and 00:00:00 local are the same UTC date: only local naming splits them.
    before_midnight = calendar.timegm((2026, 11, 24, 22, 59, 59)) * 1_000_000
    events = [ev(before_midnight + i * 200_000, i) for i in range(10)]    # 2 s around midnight
    old_umask = os.umask(0o077)
    try:
        with EventLogWriter(tmp_path) as writer:
            writer.write(events)
    finally:
        os.umask(old_umask)

    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["2026-11-24.events.zst", "2026-11-25.events.zst"]
    for name in names:
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o644
    assert read_all(tmp_path) == events

    by_file = {}
    for e in events:
        by_file.setdefault(file_name_for(e.ts_us), []).append(e.to_record())
    assert sorted(by_file) == names
    for name in names:
        # The real zstd CLI skips our index frames and yields the plain msgpack stream.
        plain = subprocess.run(["zstd", "-dc", str(tmp_path / name)], capture_output=True,
                               check=True, timeout=30).stdout
        unpacker = msgpack.Unpacker(raw=False)
        unpacker.feed(plain)
        assert list(unpacker) == by_file[name]


def test_each_flush_appends_one_indexed_pair(tmp_path):
    frames = [[ev(T0_US + i * 1000 + j, j) for j in range(3 + i)] for i in range(4)]
    write_frames(tmp_path, frames)
    data = (tmp_path / "2026-11-24.events.zst").read_bytes()
    spans = pairs_of(data)
    assert len(spans) == 4
    for (start, end, (data_len, count, min_ts, max_ts)), frame in zip(spans, frames):
        assert count == len(frame)
        assert (min_ts, max_ts) == (min(e.ts_us for e in frame), max(e.ts_us for e in frame))
        data_frame = data[start + 32:end]
        params = zstandard.get_frame_parameters(data_frame)
        assert params.has_checksum and params.content_size > 0
        content = zstandard.ZstdDecompressor().decompress(data_frame)
        assert content == b"".join(msgpack.packb(e.to_record(), use_bin_type=True) for e in frame)


def test_counters_match_the_files(tmp_path):
    writer = EventLogWriter(tmp_path, max_frame_records=10)
    writer.write(ev(T0_US + i, i) for i in range(25))
    assert (writer.frames_written, writer.records_written, writer.pending_records) == (2, 20, 5)
    writer.close()
    assert (writer.frames_written, writer.records_written) == (3, 25)
    assert writer.bytes_written == sum(p.stat().st_size for p in tmp_path.iterdir())
    assert writer.repaired == []


def test_at_most_four_files_open(tmp_path):
    fds_before = len(os.listdir("/proc/self/fd"))
    writer = EventLogWriter(tmp_path)
    for day in range(8):
        writer.write([ev(T0_US + day * 24 * HOUR_US, day)])
        writer.flush()
        # At most four day files, and the log directory the writer opens them relative to.
        assert len(os.listdir("/proc/self/fd")) - fds_before <= 4 + 1
    writer.write(ev(T0_US + day * 24 * HOUR_US + 1, day) for day in range(8))   # reopen evicted
    writer.close()
    assert len(os.listdir("/proc/self/fd")) == fds_before
    assert len(list_day_files(str(tmp_path))) == 8
    assert len(read_all(tmp_path)) == 16


def test_files_not_named_like_day_files_are_ignored(tmp_path):
    write_frames(tmp_path, [[ev(T0_US)]])
    for name in ("notes.txt", "2026-13-45.events.zst", "2026-11-25.events.zst.tmp", "2026-11-25.log"):
        (tmp_path / name).write_bytes(b"not an event log")
    (tmp_path / "2026-11-26.events.zst").mkdir()
    assert read_all(tmp_path) == [ev(T0_US)]


# -- frame timing --------------------------------------------------------------------------------

READ_COUNT = """
    import sys
    from events.log import EventLogReader
    print(len(list(EventLogReader().iter_dir(sys.argv[1]))))
"""


class Clock:
    """A monotonic clock the test moves by hand (seconds, exact in binary)."""

    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_tick_closes_a_frame_after_its_age(tmp_path):
    clock = Clock()
    writer = EventLogWriter(tmp_path, max_frame_age_s=2, clock=clock)
    writer.write([ev(T0_US)])
    assert writer.tick() == 0
    assert run_py(READ_COUNT, str(tmp_path)).stdout.strip() == "0"
    clock.now += 1.5
    assert writer.tick() == 0                     # younger than its age: still open
    clock.now += 0.5
    assert writer.tick() == 1                     # exactly its age: closed
    # Another process sees it, with the writer still open and never flushed.
    assert run_py(READ_COUNT, str(tmp_path)).stdout.strip() == "1"
    assert writer.tick() == 0
    writer.close()


def test_write_closes_aged_frames_too(tmp_path):
    clock = Clock()
    writer = EventLogWriter(tmp_path, max_frame_age_s=2, clock=clock)
    writer.write([ev(T0_US, 1)])
    clock.now += 1
    writer.write([ev(T0_US + 24 * HOUR_US, 2)])   # another file, opened a second later
    assert read_all(tmp_path) == [] and writer.pending_records == 2
    clock.now += 1
    writer.write([])                              # the first frame is now due, the second not yet
    assert read_all(tmp_path) == [ev(T0_US, 1)]
    assert writer.pending_records == 1
    writer.close()


# -- crashes, torn tails, repair -----------------------------------------------------------------

CRASHING_WRITER = """
    import sys, time
    from events.log import EventLogWriter
    from events.record import Event
    log_dir, t0, frames = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    def ev(i):
        return Event(t0 + i, "parity", "10.0.0.1", 40000, "8.8.8.8", 53, "UDP", "DNS",
                     "evil%d.example" % i, "malware (test)", "(static)", "high", 1, t0 + i)
    writer = EventLogWriter(log_dir, max_frame_age_s=3600)
    i = 0
    for _ in range(frames):
        writer.write([ev(i + k) for k in range(7)])
        i += 7
        writer.flush()
    writer.write([ev(i + k) for k in range(5)])     # buffered, never closed
    print("ready", flush=True)
    time.sleep(60)
"""


def test_sigkill_loses_only_the_unclosed_frame(tmp_path):
    proc = popen_py(CRASHING_WRITER, str(tmp_path), str(T0_US), "3")
    try:
        assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stdout.close()
        proc.stderr.close()
    got = read_all(tmp_path)
    assert [e.trail for e in got] == ["evil%d.example" % i for i in range(21)]


def _three_frame_file(log_dir) -> tuple[Path, bytes, list[list[Event]]]:
    frames = [[ev(T0_US + f * 1000 + i, f * 10 + i) for i in range(5)] for f in range(3)]
    write_frames(log_dir, frames)
    path = Path(log_dir) / "2026-11-24.events.zst"
    return path, path.read_bytes(), frames


def _cut_positions(data: bytes) -> list[int]:
    start, end, _ = pairs_of(data)[-1]
    return sorted({start + 1, start + 4, start + 8, start + 31, start + 32, start + 33,
                   (start + end) // 2, end - 1})


def test_torn_last_pair_is_skipped_then_repaired(tmp_path):
    path, data, frames = _three_frame_file(tmp_path)
    last_start = pairs_of(data)[-1][0]
    for cut in _cut_positions(data):
        path.write_bytes(data[:cut])
        reader = EventLogReader()
        assert list(reader.iter_file(str(path))) == frames[0] + frames[1], cut
        assert reader.corrupt_frames == 0      # a torn tail is "not yet written", not damage

        extra = [ev(T0_US + 10_000, 99)]
        writer = EventLogWriter(tmp_path)
        writer.write(extra)
        writer.close()
        assert writer.repaired == [(str(path), cut - last_start)], cut
        assert read_all(tmp_path) == frames[0] + frames[1] + extra
        assert pairs_of(path.read_bytes())[-1][0] == last_start


@pytest.mark.parametrize("garbage", [
    b"\x00" * 100,
    os.urandom(5000),
    PAIR_SYNC + b"\xff" * 40,               # looks like the start of a pair, is not
    PAIR_SYNC[:5],
])
def test_garbage_after_the_last_pair(tmp_path, garbage):
    path, data, frames = _three_frame_file(tmp_path)
    path.write_bytes(data + garbage)
    reader = EventLogReader()
    assert list(reader.iter_file(str(path))) == frames[0] + frames[1] + frames[2]
    assert reader.corrupt_frames == 0
    assert repair_file(str(path)) == len(garbage)
    assert path.read_bytes() == data


def test_damaged_last_data_frame_is_a_torn_tail(tmp_path):
    path, data, frames = _three_frame_file(tmp_path)
    damaged = bytearray(data)
    damaged[-3] ^= 0xFF                       # inside the checksum of the last data frame
    path.write_bytes(bytes(damaged))
    assert list(EventLogReader().iter_file(str(path))) == frames[0] + frames[1]
    writer = EventLogWriter(tmp_path)
    writer.write([ev(T0_US + 10_000, 99)])
    writer.close()
    assert writer.repaired == [(str(path), len(data) - pairs_of(data)[-1][0])]
    assert read_all(tmp_path) == frames[0] + frames[1] + [ev(T0_US + 10_000, 99)]


def test_damage_in_the_middle_costs_one_frame_and_is_never_repaired_away(tmp_path):
    path, data, frames = _three_frame_file(tmp_path)
    start, end, _ = pairs_of(data)[1]
    for where in (start + 32 + 10, end - 1, start, start + 8, start + 12):
        # data bytes, checksum, magic, data length, record count
        damaged = bytearray(data)
        damaged[where] ^= 0x55
        path.write_bytes(bytes(damaged))
        reader = EventLogReader()
        assert list(reader.iter_file(str(path))) == frames[0] + frames[2], where
        assert reader.corrupt_frames == 1, where
        assert repair_file(str(path)) == 0
        assert path.read_bytes() == bytes(damaged)


_BASE = {}


def _base_file() -> tuple[bytes, list[list[Event]]]:
    if not _BASE:
        with tempfile.TemporaryDirectory() as d:
            path, data, frames = _three_frame_file(d)
            _BASE["v"] = (data, frames)
    return _BASE["v"]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_damage_costs_at_most_the_damaged_frame(tmp_path, data):
    base, frames = _base_file()
    spans = pairs_of(base)
    mutated = bytearray(base)
    kind = data.draw(st.sampled_from(["flip", "cut", "append"]))
    if kind == "flip":
        where = data.draw(st.integers(0, len(base) - 1))
        mutated[where] ^= data.draw(st.integers(1, 255))
        hit = next(i for i, (s, e, _) in enumerate(spans) if s <= where < e)
        survivors = [f for i, f in enumerate(frames) if i != hit]
        if 16 <= where - spans[hit][0] < 32:
            # The index's min/max ts are outside the checksum: the frame itself is intact and
            # is read unless the index became implausible (min > max).
            index = struct.unpack_from("<QQ", mutated, spans[hit][0] + 16)
            if index[0] <= index[1]:
                survivors = frames
    elif kind == "cut":
        cut = data.draw(st.integers(0, len(base) - 1))
        del mutated[cut:]
        survivors = [f for (s, e, _), f in zip(spans, frames) if e <= cut]
    else:
        mutated += data.draw(st.binary(min_size=1, max_size=200))
        survivors = frames
    path = tmp_path / "2026-11-24.events.zst"
    path.write_bytes(bytes(mutated))
    expected = [e for f in survivors for e in f]
    assert list(EventLogReader().iter_file(str(path))) == expected
    repair_file(str(path))
    assert list(EventLogReader().iter_file(str(path))) == expected


# -- time ranges ---------------------------------------------------------------------------------

def test_since_until_filter_records_and_skip_frames_by_index(tmp_path):
    # 10 frames, frame f holding ts T0 + f h + 0..4 min.
    minute = 60 * 1_000_000
    frames = [[ev(T0_US + f * HOUR_US + i * minute, f * 10 + i) for i in range(5)] for f in range(10)]
    write_frames(tmp_path, frames)
    every = [e for f in frames for e in f]

    since, until = T0_US + 3 * HOUR_US + 2 * minute, T0_US + 6 * HOUR_US + 1 * minute
    reader = EventLogReader()
    got = list(reader.iter_dir(str(tmp_path), since_us=since, until_us=until))
    assert got == [e for e in every if since <= e.ts_us <= until]
    assert got[0].ts_us == since and got[-1].ts_us == until      # both bounds inclusive
    assert (reader.frames_read, reader.frames_skipped) == (4, 6)  # frames 3..6 decompressed

    assert read_all(tmp_path, since_us=T0_US + 9 * HOUR_US) == frames[9]
    assert read_all(tmp_path, until_us=T0_US) == [frames[0][0]]
    assert read_all(tmp_path, since_us=T0_US + 100 * HOUR_US) == []


def test_range_skips_day_files(tmp_path):
    days = [[ev(T0_US + d * 24 * HOUR_US, d)] for d in range(5)]
    write_frames(tmp_path, days)
    assert len(list_day_files(str(tmp_path))) == 5
    reader = EventLogReader()
    got = list(reader.iter_dir(str(tmp_path), since_us=T0_US + 3 * 24 * HOUR_US))
    assert got == days[3][0:1] + days[4][0:1]
    # Day 2 is read (a day's margin) and skipped by its index; days 0 and 1 are never opened.
    assert (reader.frames_read, reader.frames_skipped) == (2, 1)


# -- follow --------------------------------------------------------------------------------------

APPENDING_WRITER = """
    import sys, time
    from events.log import EventLogWriter
    from events.record import Event
    log_dir, t0, day_us = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    writer = EventLogWriter(log_dir, max_frame_age_s=3600)
    n = 0
    for frame in range(6):
        base = t0 + (day_us if frame >= 3 else 0)      # frames 3..5 start a new day file
        writer.write([Event(base + n + i, "parity", "10.0.0.1", 40000, "8.8.8.8", 53, "UDP",
                            "DNS", "evil%d.example" % (n + i), "m", "(static)", "high", 1,
                            base + n + i) for i in range(4)])
        n += 4
        writer.flush()
        time.sleep(0.15)
    writer.close()
"""


def _follow_until(reader, log_dir, want: int, timeout_s: float = 30, **kw) -> list[Event]:
    stop = threading.Event()
    timer = threading.Timer(timeout_s, stop.set)     # a bound, should the test fail
    timer.start()
    got = []
    try:
        for event in reader.follow(str(log_dir), poll_s=0.05, stop=stop, **kw):
            got.append(event)
            if len(got) == want:
                stop.set()
    finally:
        timer.cancel()
    return got


def test_follow_sees_existing_then_appended_records_and_new_day_files(tmp_path):
    existing = [ev(T0_US - HOUR_US, 1000)]
    write_frames(tmp_path, [existing])
    proc = popen_py(APPENDING_WRITER, str(tmp_path), str(T0_US), str(24 * HOUR_US))
    try:
        got = _follow_until(EventLogReader(), tmp_path, want=1 + 24)
    finally:
        proc.wait(timeout=30)
        proc.stdout.close()
        proc.stderr.close()
    assert proc.returncode == 0
    assert got[0] == existing[0]
    assert [e.trail for e in got[1:]] == ["evil%d.example" % i for i in range(24)]
    assert len(list_day_files(str(tmp_path))) == 2


def test_follow_waits_out_a_torn_tail_and_resumes_after_repair(tmp_path):
    path, data, frames = _three_frame_file(tmp_path)
    last_start = pairs_of(data)[-1][0]
    path.write_bytes(data[:last_start + 40])       # the last pair half written
    extra = [ev(T0_US + 10_000, 99)]

    def repair_and_append():
        time.sleep(0.3)
        with EventLogWriter(tmp_path) as writer:
            writer.write(extra)

    t = threading.Thread(target=repair_and_append)
    t.start()
    try:
        got = _follow_until(EventLogReader(), tmp_path, want=11)
    finally:
        t.join()
    assert got == frames[0] + frames[1] + extra


def test_follow_since_and_a_callable_stop(tmp_path):
    write_frames(tmp_path, [[ev(T0_US + i * 1000, i) for i in range(6)]])
    got = []
    deadline = time.monotonic() + 10
    for event in EventLogReader().follow(str(tmp_path), since_us=T0_US + 3000, poll_s=0.01,
                                         stop=lambda: len(got) >= 3 or time.monotonic() > deadline):
        got.append(event)
    assert got == [ev(T0_US + i * 1000, i) for i in range(3, 6)]


# -- tail ----------------------------------------------------------------------------------------

def test_tail_missing_directory_is_exit_2(tmp_path):
    out, err = io.StringIO(), io.StringIO()
    assert run_tail(str(tmp_path / "nope"), out=out, err=err) == 2
    assert out.getvalue() == ""
    assert "does not exist" in err.getvalue() and "nope" in err.getvalue()


def test_tail_rejects_bad_options(tmp_path):
    err = io.StringIO()
    assert run_tail(str(tmp_path), since="yesterday-ish", out=io.StringIO(), err=err) == 2
    assert "30s" in err.getvalue()
    err = io.StringIO()
    assert run_tail(str(tmp_path), fmt="xml", out=io.StringIO(), err=err) == 2
    assert "maltrail" in err.getvalue()


def test_tail_prints_events_in_time_order_across_files(tmp_path):
    days = [[ev(T0_US + d * 24 * HOUR_US + i, d * 10 + i) for i in range(3)] for d in (2, 0, 1)]
    write_frames(tmp_path, days)
    out = io.StringIO()
    assert run_tail(str(tmp_path), out=out, err=io.StringIO()) == 0
    expected = sorted((e for d in days for e in d), key=lambda e: e.ts_us)
    assert out.getvalue() == "".join(format_maltrail(e) + "\n" for e in expected)

    out = io.StringIO()
    assert run_tail(str(tmp_path), fmt="csv", since="2026-11-25", until="2026-11-25 13:00:00.000001",
                    out=out, err=io.StringIO()) == 0
    lines = out.getvalue().splitlines()
    assert lines[0] == CSV_HEADER
    assert len(lines) == 3 and all(",evil1" in line for line in lines[1:])


def test_tail_follow_ends_when_stopped(tmp_path):
    write_frames(tmp_path, [[ev(T0_US, 1)]])
    stop = threading.Event()
    out = io.StringIO()
    result = {}
    t = threading.Thread(target=lambda: result.setdefault(
        "rc", run_tail(str(tmp_path), follow=True, fmt="json", out=out, stop=stop, poll_s=0.05)))
    t.start()
    time.sleep(0.2)
    with EventLogWriter(tmp_path) as writer:
        writer.write([ev(T0_US + 1, 2)])
    deadline = time.monotonic() + 10
    while out.getvalue().count("\n") < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    stop.set()
    t.join(timeout=10)
    assert not t.is_alive() and result["rc"] == 0
    assert [line.count('"trail"') for line in out.getvalue().splitlines()] == [1, 1]
    assert '"evil2.example"' in out.getvalue().splitlines()[1]


def test_tail_is_a_real_command_line_away(tmp_path):
    # The same logic driven from a separate process, as the CLI will: piping into `head` is fine.
    write_frames(tmp_path, [[ev(T0_US + i, i) for i in range(2000)]])
    code = "import sys; from events.tail import run_tail; sys.exit(run_tail(sys.argv[1]))"
    proc = subprocess.run("%s -c %s %s | head -n 3" % (shlex.quote(sys.executable), shlex.quote(code),
                                                        shlex.quote(str(tmp_path))),
                          shell=True, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.stdout.splitlines() == [format_maltrail(ev(T0_US + i, i)) for i in range(3)]
    assert "Error" not in proc.stderr and "Traceback" not in proc.stderr


# -- what the writer finds at a day file's name ---------------------------------------------------
# The writer runs in its own process here, as in the sensor, with its default warnings (stderr).

DRIVEN_WRITER = """
    import json, sys
    from events.log import EventLogWriter
    from events.record import Event
    try:
        writer = EventLogWriter(sys.argv[1], max_frame_age_s=3600)
    except OSError as exc:
        print("refused: %s" % exc, file=sys.stderr)
        sys.exit(3)
    for line in sys.stdin:
        try:
            writer.write(Event.from_record(r) for r in json.loads(line))
            writer.flush()
        except OSError as exc:
            print("failed: %s" % exc, file=sys.stderr)
            sys.exit(3)
        print("ok", flush=True)
    writer.close()
"""


class WriterProcess:
    """An EventLogWriter in a child process: each write() is one batch, flushed, acknowledged."""

    def __init__(self, log_dir):
        self.proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(DRIVEN_WRITER), str(log_dir)],
                                     cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)

    def write(self, events) -> bool:
        """True when the batch was written; False when the writer stopped (see finish())."""
        try:
            self.proc.stdin.write(json.dumps([e.to_record() for e in events]) + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            return False
        return self.proc.stdout.readline().strip() == "ok"

    def finish(self) -> tuple[int, str]:
        """(exit status, stderr) once the writer has closed the log."""
        try:
            self.proc.stdin.close()
        except BrokenPipeError:
            pass
        self.proc.stdin = None          # closed: the end of input; communicate must not flush it
        try:
            _, err = self.proc.communicate(timeout=60)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
        return self.proc.returncode, err


def write_in_process(log_dir, events) -> tuple[int, str]:
    writer = WriterProcess(log_dir)
    writer.write(events)
    return writer.finish()


def warning_lines(stderr: str) -> list[str]:
    lines = stderr.splitlines()
    assert all(line.startswith("[!] ") for line in lines), stderr      # one line per warning
    return lines


def aside_entries(log_dir, name) -> list[Path]:
    return sorted(Path(log_dir).glob(name + ".moved-*"))


PRECIOUS = b"root:x:0:0:a file the sensor must never write\n" * 20


@pytest.mark.parametrize("target_kind", ["precious file", "dangling", "event log elsewhere"])
def test_a_symlink_at_a_day_files_name_is_moved_aside_never_followed(tmp_path, target_kind):
    log_dir = tmp_path / "log"
    log_dir.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    target = elsewhere / "target"
    if target_kind == "precious file":
        target.write_bytes(PRECIOUS)
    elif target_kind == "event log elsewhere":
        # A valid event log: the old writer would have "repaired" and appended to it.
        write_frames(elsewhere, [[ev(T0_US, 1)]])
        os.rename(elsewhere / "2026-11-24.events.zst", target)
    before = target.read_bytes() if target.exists() else None
    name = "2026-11-24.events.zst"
    os.symlink(target, log_dir / name)

    code, err = write_in_process(log_dir, [ev(T0_US + 5, 5)])
    assert code == 0, err
    assert (target.read_bytes() if target.exists() else None) == before       # untouched
    [aside] = aside_entries(log_dir, name)
    assert aside.is_symlink() and os.readlink(aside) == str(target)
    assert stat.S_ISREG((log_dir / name).lstat().st_mode)
    assert read_all(log_dir) == [ev(T0_US + 5, 5)]
    [line] = warning_lines(err)
    assert "is a symbolic link (to %s)" % target in line and str(aside) in line, line
    assert "without writing to it" in line


def test_a_hard_link_at_a_day_files_name_is_moved_aside_and_its_other_name_untouched(tmp_path):
    log_dir = tmp_path / "log"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    write_frames(elsewhere, [[ev(T0_US, 1)]])       # an event log another name also reaches
    target = elsewhere / "2026-11-24.events.zst"
    before = target.read_bytes()
    log_dir.mkdir()
    os.link(target, log_dir / "2026-11-24.events.zst")

    code, err = write_in_process(log_dir, [ev(T0_US + 5, 5)])
    assert code == 0, err
    assert target.read_bytes() == before
    [aside] = aside_entries(log_dir, "2026-11-24.events.zst")
    assert aside.stat().st_ino == target.stat().st_ino and target.stat().st_nlink == 2
    assert read_all(log_dir) == [ev(T0_US + 5, 5)]
    [line] = warning_lines(err)
    assert "has 2 hard links" in line and str(aside) in line, line


@pytest.mark.parametrize("kind", ["fifo", "directory"])
def test_something_else_at_a_day_files_name_is_moved_aside(tmp_path, kind):
    # A FIFO would block a writer that opened it; a directory would make it fail.
    log_dir = tmp_path / "log"
    log_dir.mkdir()
    name = "2026-11-24.events.zst"
    if kind == "fifo":
        os.mkfifo(log_dir / name)
    else:
        (log_dir / name).mkdir()
    code, err = write_in_process(log_dir, [ev(T0_US, 1)])
    assert code == 0, err
    [aside] = aside_entries(log_dir, name)
    assert stat.S_ISFIFO(aside.lstat().st_mode) if kind == "fifo" else aside.is_dir()
    assert read_all(log_dir) == [ev(T0_US, 1)]
    [line] = warning_lines(err)
    assert ("is a FIFO" if kind == "fifo" else "is a directory") in line, line


@pytest.mark.parametrize("content", [
    b"operator's notes, not an event log\n" * 50,
    zstandard.ZstdCompressor().compress(b"a zstd file, but not ours" * 100),
    b"\x00" * 4096,
], ids=["text", "zstd", "zeros"])
def test_a_file_that_is_not_an_event_log_is_moved_aside_untouched(tmp_path, content):
    name = "2026-11-24.events.zst"
    (tmp_path / name).write_bytes(content)
    code, err = write_in_process(tmp_path, [ev(T0_US, 1)])
    assert code == 0, err
    [aside] = aside_entries(tmp_path, name)
    assert aside.read_bytes() == content                    # renamed, never truncated
    assert read_all(tmp_path) == [ev(T0_US, 1)]             # a fresh day file holds the event
    [line] = warning_lines(err)
    assert "is not an event log" in line and ("begins with bytes %s" % content[:8].hex(" ")) in line
    assert str(aside) in line, line


def test_a_repair_says_what_it_cut(tmp_path):
    path, data, frames = _three_frame_file(tmp_path)
    last_start = pairs_of(data)[-1][0]
    cut = last_start + 40
    path.write_bytes(data[:cut])
    code, err = write_in_process(tmp_path, [ev(T0_US + 10_000, 99)])
    assert code == 0, err
    [line] = warning_lines(err)
    assert ("repaired %s: cut %d bytes after offset %d: an incomplete pair of %d bytes"
            % (path, cut - last_start, last_start, cut - last_start)) in line, line
    assert read_all(tmp_path) == frames[0] + frames[1] + [ev(T0_US + 10_000, 99)]

    # A last pair complete in length whose data fails its checksum, and bytes that are no pair.
    path, data, frames = _three_frame_file(tmp_path / "again")
    damaged = bytearray(data)
    damaged[-3] ^= 0xFF
    path.write_bytes(bytes(damaged) + b"\x00" * 10)
    code, err = write_in_process(tmp_path / "again", [ev(T0_US + 10_000, 99)])
    assert code == 0, err
    [line] = warning_lines(err)
    assert ("cut %d bytes after offset %d: 1 complete pair(s) whose data fails its checksum and 10 "
            "bytes that are not a pair" % (len(data) + 10 - last_start, last_start)) in line, line


def test_a_clean_file_is_appended_to_without_a_word(tmp_path):
    _three_frame_file(tmp_path)
    code, err = write_in_process(tmp_path, [ev(T0_US + 10_000, 99)])
    assert (code, err) == (0, "")
    assert len(read_all(tmp_path)) == 16


def test_moving_aside_never_replaces_what_is_planted_at_the_new_name(tmp_path):
    from events.fsafety import move_aside, open_dir
    log_dir = tmp_path / "log"
    log_dir.mkdir()
    precious = tmp_path / "precious"
    precious.write_bytes(PRECIOUS)
    name = "2026-11-24.events.zst"
    (log_dir / name).write_bytes(b"foreign")
    now_s = T0_US // 1_000_000
    first = "%s.moved-%s" % (name, time.strftime("%Y%m%d-%H%M%S", time.localtime(now_s)))
    os.symlink(precious, log_dir / first)               # at the name it would pick first
    os.link(precious, log_dir / (first + "-2"))         # and at the next one
    fd = open_dir(str(log_dir))
    try:
        aside = move_aside(fd, name, now_s=now_s)
    finally:
        os.close(fd)
    assert aside == first + "-3"
    assert (log_dir / aside).read_bytes() == b"foreign" and not (log_dir / name).exists()
    assert os.readlink(log_dir / first) == str(precious) and precious.read_bytes() == PRECIOUS


# -- the log directory ---------------------------------------------------------------------------

def test_a_log_directory_others_can_write_is_refused_with_the_reason(tmp_path):
    log_dir = tmp_path / "log"
    log_dir.mkdir()
    log_dir.chmod(0o777)
    code, err = write_in_process(log_dir, [ev(T0_US, 1)])
    assert code == 3
    assert "writable by every user and has no sticky bit" in err and "chmod o-w %s" % log_dir in err, err
    assert list(log_dir.iterdir()) == []

    # A parent others can write is as bad: they could swap the directory itself.
    inner = tmp_path / "open" / "log"
    inner.mkdir(parents=True)
    (tmp_path / "open").chmod(0o777)
    code, err = write_in_process(inner, [ev(T0_US, 1)])
    assert code == 3 and "%s (above %s)" % (tmp_path / "open", inner) in err, err

    # With the sticky bit (like /tmp) others cannot remove or rename our files: accepted.
    log_dir.chmod(0o1777)
    code, err = write_in_process(log_dir, [ev(T0_US, 1)])
    assert (code, err) == (0, "")
    assert read_all(log_dir) == [ev(T0_US, 1)]


def test_the_sensor_refuses_an_unsafe_log_directory_before_it_starts(tmp_path):
    from tests.test_cli import CORPUS, _pcap, mte
    from engine.sources import synthetic as g
    log_dir = tmp_path / "log"
    log_dir.mkdir()
    log_dir.chmod(0o777)
    pcap = _pcap(tmp_path / "x.pcap", [g.tcp_frame("10.0.0.1", "203.0.113.66", 40000, 443)])
    result = mte("replay", "--trails", str(CORPUS / "trails.csv"), "--log-dir", str(log_dir), pcap,
                 env={"MALTRAIL_ENGINE_CACHE": str(tmp_path / "cache")})
    assert result.returncode == 1
    assert "refusing the log directory: %s is writable by every user" % log_dir in result.stderr
    assert "frames:" not in result.stderr             # nothing started
    assert list(log_dir.iterdir()) == []


# -- files and the directory removed under a running writer ---------------------------------------

def _gone_day_file(log_dir: Path, how: str) -> Path | None:
    """Do to the day file what a log cleaner does; returns where its old content is, if kept."""
    path = log_dir / "2026-11-24.events.zst"
    if how == "deleted":
        path.unlink()
        return None
    if how == "moved":
        moved = log_dir / "2026-11-24.events.zst.1"
        path.rename(moved)
        return moved
    if how == "replaced":               # moved away, and another writer's file put in its place
        moved = log_dir.parent / "kept.events.zst"
        path.rename(moved)
        write_frames(log_dir, [[ev(T0_US + 50, 50)]])
        return moved
    raise AssertionError(how)


@pytest.mark.parametrize("how", ["deleted", "moved", "replaced"])
def test_a_day_file_removed_while_open_is_noticed_and_a_new_one_opened(tmp_path, how):
    log_dir = tmp_path / "log"
    writer = WriterProcess(log_dir)
    assert writer.write([ev(T0_US, 1)])
    old = _gone_day_file(log_dir, how)
    assert writer.write([ev(T0_US + 100, 2)])
    assert writer.write([ev(T0_US + 200, 3)])
    code, err = writer.finish()
    assert code == 0, err
    expected = [ev(T0_US + 100, 2), ev(T0_US + 200, 3)]
    if how == "replaced":
        expected = [ev(T0_US + 50, 50)] + expected      # appended to the file now at the name
    assert read_all(log_dir) == expected
    if old is not None:
        assert list(EventLogReader().iter_file(str(old))) == [ev(T0_US, 1)]
    [line] = warning_lines(err)
    path = log_dir / "2026-11-24.events.zst"
    assert {"deleted": "%s was deleted while open" % path,
            "moved": "%s was moved away while open (it is now %s)" % (path, old),
            "replaced": "%s was replaced by another file while open (the old one is now %s)" % (path, old),
            }[how] in line, line


@pytest.mark.parametrize("how", ["deleted", "moved"])
def test_a_log_directory_removed_while_open_is_re_created(tmp_path, how):
    log_dir = tmp_path / "log"
    writer = WriterProcess(log_dir)
    assert writer.write([ev(T0_US, 1), ev(T0_US + 24 * HOUR_US, 2)])     # two day files open
    if how == "deleted":
        subprocess.run(["rm", "-rf", str(log_dir)], check=True)
    else:
        log_dir.rename(tmp_path / "log.old")
    assert writer.write([ev(T0_US + 100, 3), ev(T0_US + 24 * HOUR_US + 100, 4)])
    code, err = writer.finish()
    assert code == 0, err
    assert read_all(log_dir) == [ev(T0_US + 100, 3), ev(T0_US + 24 * HOUR_US + 100, 4)]
    if how == "moved":
        assert read_all(tmp_path / "log.old") == [ev(T0_US, 1), ev(T0_US + 24 * HOUR_US, 2)]
    [line] = warning_lines(err)     # one warning for the directory, not one per file
    assert ("log directory %s was deleted while the sensor ran; re-created it" % log_dir
            if how == "deleted" else
            "log directory %s was moved away while the sensor ran (it is now %s); re-created it"
            % (log_dir, tmp_path / "log.old")) in line, line


def test_a_re_created_log_directory_must_be_safe_too(tmp_path):
    log_dir = tmp_path / "log"
    writer = WriterProcess(log_dir)
    assert writer.write([ev(T0_US, 1)])
    subprocess.run(["rm", "-rf", str(log_dir)], check=True)
    log_dir.mkdir()
    log_dir.chmod(0o777)         # someone made it again, writable by all
    assert not writer.write([ev(T0_US + 100, 2)])
    code, err = writer.finish()
    assert code == 3
    assert "refusing the log directory: %s is writable by every user" % log_dir in err, err
    assert list(log_dir.iterdir()) == []


def test_deletion_is_checked_once_per_frame_not_per_event(tmp_path):
    # The check is one lstat of the day file's path when a frame is closed, whatever the number
    # of events: count the system calls that name the file while 1,000 events become one frame.
    strace = shutil.which("strace")
    if strace is None:
        pytest.skip("needs strace")
    script = """
        import sys
        from events.log import EventLogWriter
        from events.record import Event
        writer = EventLogWriter(sys.argv[1], max_frame_age_s=3600)
        def batch(base):
            return [Event(base + i, "s", "10.0.0.1", 1, "10.0.0.2", 2, "UDP", "DNS", "x%%d.example" %% i,
                          "m", "(static)", "high", 1, base + i) for i in range(1000)]
        writer.write(batch(%d))
        writer.flush()                       # the file is open from here on
        print("MARK", flush=True)
        writer.write(batch(%d))              # 1,000 events, then one frame closed
        writer.flush()
        print("MARK", flush=True)
        writer.close()
    """ % (T0_US, T0_US + 10_000)
    trace = subprocess.run([strace, "-f", "-e", "trace=%file,write", "-o",
                            str(tmp_path / "trace"), sys.executable, "-c", textwrap.dedent(script),
                            str(tmp_path / "log")], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert trace.returncode == 0, trace.stderr
    text = (tmp_path / "trace").read_text()
    between = text.split('write(1, "MARK')[1]
    stats_of_path = [line for line in between.splitlines() if "2026-11-24.events.zst" in line
                     and "write(" not in line]
    assert len(stats_of_path) == 1, stats_of_path


def test_the_writer_needs_no_root(tmp_path):
    # The log writer will run as an unprivileged account: everything above works without root.
    # A forked child drops to `nobody` (the interpreter lives where `nobody` cannot read).
    if os.geteuid() != 0:
        pytest.skip("needs root to become another user")
    base = Path(tempfile.mkdtemp(prefix="mte-unprivileged-", dir="/tmp"))
    try:
        base.chmod(0o755)
        log_dir = base / "log"
        log_dir.mkdir()
        os.chown(log_dir, 65534, 65534)
        target = base / "root-owned"
        target.write_bytes(PRECIOUS)
        os.symlink(target, log_dir / "2026-11-24.events.zst")
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:    # the child: never returns into pytest
            code = 1
            try:
                os.close(read_end)
                os.setgroups([])
                os.setgid(65534)
                os.setuid(65534)
                lines = []
                writer = EventLogWriter(log_dir, max_frame_age_s=3600, warn=lines.append)
                writer.write([ev(T0_US, 1)])
                writer.flush()
                os.unlink(log_dir / "2026-11-24.events.zst")
                writer.write([ev(T0_US + 1, 2)])
                writer.close()
                os.write(write_end, "\n".join(lines).encode())
                code = 0
            finally:
                os._exit(code)
        os.close(write_end)
        with os.fdopen(read_end, "rb") as f:
            warnings = f.read().decode().splitlines()
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, warnings
        assert target.read_bytes() == PRECIOUS
        assert read_all(log_dir) == [ev(T0_US + 1, 2)]
        assert (log_dir / "2026-11-24.events.zst").stat().st_uid == 65534
        assert len(warnings) == 2
        assert "is a symbolic link (to %s)" % target in warnings[0]
        assert "was deleted while open" in warnings[1]
    finally:
        shutil.rmtree(base)


# -- linear work on hostile files ----------------------------------------------------------------

def _rchar() -> int:
    """Bytes this process has read (any file, any way): the reader's work, measured outside it."""
    with open("/proc/self/io") as f:
        return int(next(line for line in f if line.startswith("rchar:")).split()[1])


def test_a_run_of_sync_words_is_read_in_linear_work(tmp_path):
    # 4 MiB of pair-sync words between good pairs: every 8 bytes looks like a pair's start.
    frames = [[ev(T0_US + f * 1000 + i, f * 10 + i) for i in range(5)] for f in range(3)]
    write_frames(tmp_path / "src", frames)
    data = (tmp_path / "src" / "2026-11-24.events.zst").read_bytes()
    spans = pairs_of(data)
    hostile = data[:spans[1][1]] + PAIR_SYNC * (4 << 17) + data[spans[2][0]:]
    path = tmp_path / "2026-11-24.events.zst"
    path.write_bytes(hostile)

    reader = EventLogReader()
    before = _rchar()
    got = list(reader.iter_file(str(path)))
    read = _rchar() - before
    assert got == frames[0] + frames[1] + frames[2]
    assert reader.corrupt_frames == 1
    # Each byte read about once (the old search reread a 1 MiB chunk per sync word: ~500 GB).
    assert read <= 2 * len(hostile), read
    assert reader.header_probes <= len(hostile) // 8 + 10


def _nested_pairs(units: int, unit_bytes: int) -> bytes:
    """Plausible pair headers every unit_bytes, each claiming a data frame that runs to the same
    far point, where garbage sits: a reader that decompresses each claim reads O(n^2) bytes."""
    total = units * unit_bytes
    out = bytearray()
    for i in range(units):
        pos = i * unit_bytes
        data_len = total - pos - 32
        # zstd frame header: magic, descriptor (4-byte content size, single segment, checksum).
        zstd_header = struct.pack("<IBI", 0xFD2FB528, 0b10100100, 1000)
        unit = struct.pack("<IIIIQQ", 0x184D2A50, 24, data_len, 1, T0_US, T0_US) + zstd_header
        out += unit + b"\xee" * (unit_bytes - len(unit))
    return bytes(out) + b"\xee" * 64


def test_nested_pair_claims_cost_linear_work(tmp_path):
    good = [ev(T0_US + i, i) for i in range(5)]
    write_frames(tmp_path / "src", [good])
    tail = (tmp_path / "src" / "2026-11-24.events.zst").read_bytes()
    hostile = _nested_pairs(2000, 256) + tail
    path = tmp_path / "2026-11-24.events.zst"
    path.write_bytes(hostile)

    reader = EventLogReader()
    before = _rchar()
    got = list(reader.iter_file(str(path)))
    read = _rchar() - before
    assert got == good                               # the good pair after the damage is found
    assert read <= 4 * len(hostile), read            # decompressing every claim: ~500 MB
    assert reader.unchecked_frames > 0               # claims inside failed ones, left unread


# -- the whole sensor ----------------------------------------------------------------------------

@pytest.mark.root
def test_a_live_sensor_re_creates_its_log_directory_when_a_cleaner_removes_it(veth, tmp_path):
    from engine.sources import synthetic as g
    from tests.netns import DST_MAC, send_frames
    from tests.test_cli import CORPUS, mte
    from tests.test_corpus import console_script

    namespace, host, peer = veth
    artifact = tmp_path / "trails.mtdb"
    built = mte("trails", "build", "--source", str(CORPUS / "trails.csv"), "-o", str(artifact))
    assert built.returncode == 0, built.stderr
    log = tmp_path / "log"

    def unicast(frame: bytes) -> bytes:     # to a MAC nobody owns: captured, then dropped
        return DST_MAC + frame[6:]

    def wait_for_events(count: int) -> list[Event]:
        deadline = time.monotonic() + 30        # a bound should the test fail, not a measure
        while time.monotonic() < deadline:
            try:
                got = read_all(log)
            except FileNotFoundError:
                got = []
            if len(got) >= count:
                return got
            time.sleep(0.1)
        return got

    proc = subprocess.Popen([console_script(), "-i", host, "--trails", str(artifact), "--log-dir", str(log),
                             "--sensor-name", "live"], stderr=subprocess.PIPE, text=True)
    try:
        seen = ""
        while "capturing on" not in seen:
            line = proc.stderr.readline()
            if not line:
                break
            seen += line
        assert "capturing on %s" % host in seen, seen
        send_frames(namespace, peer, [unicast(g.udp_frame("10.99.0.2", "10.99.0.1", 40000, 53,
                                                          g.dns_query("evil-exact.com")))])
        assert [e.trail for e in wait_for_events(1)] == ["evil-exact.com"]
        subprocess.run(["rm", "-rf", str(log)], check=True)         # a log cleaner
        # Another trail (a repeat of the first would be folded into a count until the end).
        send_frames(namespace, peer, [unicast(g.tcp_frame("10.99.0.2", "203.0.113.66", 40001, 443, g.TCP_SYN))])
        after = wait_for_events(1)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            _, rest = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert proc.returncode == 0, rest
    assert [(e.trail, e.src_port) for e in after] == [("203.0.113.66", 40001)], rest   # re-created dir
    warnings = [line for line in rest.splitlines() if line.startswith("[!]")]
    assert len(warnings) == 1 and "log writer: log directory %s was deleted while the sensor ran; " \
        "re-created it" % log in warnings[0], rest
