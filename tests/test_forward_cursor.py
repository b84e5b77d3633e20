"""A forwarder's place in the event log (events/forwarders/cursor.py), on real logs written by the
real writer (events/log EventLogWriter): partial acknowledgement, damage passed once, day files
replaced (another inode, or the same inode number again), an older day file growing, the first
start at the end, and position files that are damaged or planted (a symlink is never followed, a
FIFO never waited on). The Forwarder around it is fed to a real TCP collector.
"""

from __future__ import annotations

import collections
import json
import os
import stat
import threading
from pathlib import Path

import pytest

from events.forwarders.base import Forwarder
from events.forwarders.cursor import STATE_DIR, LogCursor, PositionStore
from events.forwarders.logstash import Logstash
from events.log import PAIR_HEADER_BYTES, EventLogWriter, file_name_for
from events.record import Event
from tests.collectors import TcpLineCollector

DAY1_US = 1_772_323_200_000_000       # 2026-03-01 00:00:00 UTC (the suite runs with TZ=UTC)
DAY2_US = DAY1_US + 86_400_000_000


def event(i: int, base_us: int = DAY1_US) -> Event:
    return Event(base_us + i * 1000, "s1", "10.0.0.%d" % (1 + i % 200), 40000 + i, "10.0.0.53", 53, "UDP",
                 "DNS", "(f%d).evil-parent.net" % i, "corpus parent (malware)", "(corpus)", "high")


def write(log_dir: Path, events, per_frame: int) -> None:
    """Appends `events` in frames (pairs) of `per_frame` records."""
    writer = EventLogWriter(str(log_dir), max_frame_age_s=3600)
    try:
        events = list(events)
        for k in range(0, len(events), per_frame):
            writer.write(events[k:k + per_frame])
            writer.flush()
    finally:
        writer.close()


def trails(events) -> list[str]:
    return [e.trail for e in events]


@pytest.fixture
def log(tmp_path):
    directory = tmp_path / "log"
    directory.mkdir()
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    yield directory, fd
    os.close(fd)


def test_a_first_start_begins_at_the_end_of_the_log(log):
    directory, fd = log
    write(directory, [event(i) for i in range(5)], per_frame=2)
    write(directory, [event(i, DAY2_US) for i in range(3)], per_frame=3)
    cursor = LogCursor.at_end(fd)
    assert cursor.read(100) == []
    write(directory, [event(i) for i in range(5, 7)], per_frame=2)
    write(directory, [event(i, DAY2_US) for i in range(3, 4)], per_frame=1)
    assert trails(cursor.read(100)) == trails([event(5), event(6), event(3, DAY2_US)])


def test_a_torn_tail_at_the_first_start_is_not_skipped_when_it_is_completed_or_cut(log):
    """A crash left half a pair; the first start stops before it (the writer cuts it when it
    opens the file, and then writes whole pairs there)."""
    directory, fd = log
    write(directory, [event(i) for i in range(4)], per_frame=2)
    name = file_name_for(DAY1_US)
    whole = (directory / name).read_bytes()
    with open(directory / name, "ab") as f:
        f.write(whole[:PAIR_HEADER_BYTES + 5])          # a pair header and a few bytes of its frame
    cursor = LogCursor.at_end(fd)
    assert cursor.places[name].offset == len(whole)
    write(directory, [event(i) for i in range(4, 6)], per_frame=2)   # the writer cuts the torn tail
    assert trails(cursor.read(100)) == trails([event(4), event(5)])


def test_partial_acknowledgement_resumes_inside_a_pair_and_survives_a_restart(log):
    directory, fd = log
    write(directory, [event(i) for i in range(15)], per_frame=5)      # three pairs of five
    cursor = LogCursor(fd, {})
    assert trails(cursor.read(7)) == trails(event(i) for i in range(7))
    cursor.ack(3)                      # the destination took three: the place is inside pair 1
    assert trails(cursor.read(4)) == trails(event(i) for i in range(3, 7))
    cursor.ack(0)                      # nothing taken: nothing moves
    assert trails(cursor.read(4)) == trails(event(i) for i in range(3, 7))
    cursor.ack(4)                      # across the pair boundary
    store = PositionStore(fd, "test-dest")
    store.save(cursor.places)

    resumed = LogCursor(fd, PositionStore(fd, "test-dest").load())     # a restart
    assert trails(resumed.read(100)) == trails(event(i) for i in range(7, 15))
    resumed.ack()
    assert resumed.read(100) == []


def _damage_pair(path: Path, index: int) -> None:
    """Flips a byte inside the data frame of the index-th pair (its index header stays sound)."""
    data = bytearray(path.read_bytes())
    offset = 0
    for _ in range(index):
        length = int.from_bytes(data[offset + 8:offset + 12], "little")
        offset += PAIR_HEADER_BYTES + length
    length = int.from_bytes(data[offset + 8:offset + 12], "little")
    data[offset + PAIR_HEADER_BYTES + length // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_a_damaged_pair_is_passed_once_and_counted_once(log):
    directory, fd = log
    write(directory, [event(i) for i in range(9)], per_frame=3)       # pairs 0-2, 3-5, 6-8
    write(directory, [event(i, DAY2_US) for i in range(2)], per_frame=2)
    _damage_pair(directory / file_name_for(DAY1_US), 1)
    cursor = LogCursor(fd, {})
    assert trails(cursor.read(3)) == trails(event(i) for i in range(3))
    cursor.ack()
    assert cursor.damaged == 0                  # not passed yet
    got = cursor.read(100)
    assert trails(got) == trails([event(6), event(7), event(8), event(0, DAY2_US), event(1, DAY2_US)])
    cursor.ack(2)                               # the damage lies before event 6: passed with it
    assert cursor.damaged == 1
    assert trails(cursor.read(100)) == trails([event(8), event(0, DAY2_US), event(1, DAY2_US)])
    cursor.ack()
    for _ in range(3):                          # polls of a caught-up cursor: nothing re-counted
        assert cursor.read(100) == []
        cursor.ack()
    assert cursor.damaged == 1


def test_damage_after_the_last_event_is_passed_by_an_empty_read(log):
    directory, fd = log
    write(directory, [event(i) for i in range(6)], per_frame=3)
    write(directory, [event(i) for i in range(6, 7)], per_frame=1)
    _damage_pair(directory / file_name_for(DAY1_US), 1)   # events 3-5, followed by the pair of 6
    cursor = LogCursor(fd, {})
    assert trails(cursor.read(3)) == trails(event(i) for i in range(3))
    cursor.ack()
    assert trails(cursor.read(100)) == [event(6).trail]
    cursor.ack()
    assert cursor.damaged == 1 and cursor.read(100) == []


def test_a_day_file_replaced_is_read_from_its_start(log):
    directory, fd = log
    name = file_name_for(DAY1_US)
    write(directory, [event(i) for i in range(4)], per_frame=2)
    cursor = LogCursor(fd, {})
    cursor.read(100)
    cursor.ack()
    # Replaced by another file (a restore, a rotation that came back): a new inode.
    os.rename(directory / name, directory / "old")
    write(directory, [event(i) for i in range(100, 103)], per_frame=3)
    os.unlink(directory / "old")
    assert trails(cursor.read(100)) == trails(event(i) for i in range(100, 103))
    cursor.ack()
    # Emptied in place and written again, longer than before: the same inode, the place's
    # offset within the new size; the first pair header tells it is not the file it was.
    os.truncate(directory / name, 0)
    write(directory, [event(i) for i in range(200, 210)], per_frame=5)
    assert trails(cursor.read(100)) == trails(event(i) for i in range(200, 210))


def test_a_deleted_file_whose_inode_number_comes_back_is_read_from_its_start(log):
    """ext4 hands a new file the inode number of one just deleted: the saved place's inode
    matches, the first pair header does not."""
    directory, fd = log
    name = file_name_for(DAY1_US)
    write(directory, [event(i) for i in range(4)], per_frame=2)
    cursor = LogCursor(fd, {})
    cursor.read(100)
    cursor.ack()
    old = cursor.places[name]
    os.unlink(directory / name)
    write(directory, [event(i) for i in range(300, 340)], per_frame=4)
    st = os.stat(directory / name)
    if st.st_ino != old.inode:
        # This file system gave another number: the place is made to claim the new one, as if it
        # had been reused, which is what the check is about.
        cursor.places[name] = old._replace(inode=st.st_ino)
    assert st.st_size > old.offset
    assert trails(cursor.read(100)) == trails(event(i) for i in range(300, 340))


def test_an_older_day_file_that_grows_is_read_on(log):
    directory, fd = log
    write(directory, [event(i, DAY2_US) for i in range(3)], per_frame=3)
    cursor = LogCursor(fd, {})
    assert trails(cursor.read(100)) == trails(event(i, DAY2_US) for i in range(3))
    cursor.ack()
    write(directory, [event(i) for i in range(2)], per_frame=2)        # a replay of an older capture
    write(directory, [event(i, DAY2_US) for i in range(3, 4)], per_frame=1)
    assert trails(cursor.read(100)) == trails([event(0), event(1), event(3, DAY2_US)])


def test_a_removed_day_file_is_forgotten(log):
    directory, fd = log
    write(directory, [event(i) for i in range(2)], per_frame=2)
    cursor = LogCursor(fd, {})
    cursor.read(100)
    cursor.ack()
    os.unlink(directory / file_name_for(DAY1_US))
    assert cursor.read(100) == [] and cursor.places == {} and cursor.moved


# --- position files ---------------------------------------------------------------------------

def _state(directory: Path) -> Path:
    return directory / STATE_DIR


def test_position_files_are_written_whole_and_private(log):
    directory, fd = log
    write(directory, [event(i) for i in range(2)], per_frame=2)
    store = PositionStore(fd, "dest")
    cursor = LogCursor(fd, {})
    cursor.read(100)
    cursor.ack()
    store.save(cursor.places)
    state = _state(directory)
    assert stat.S_IMODE(state.stat().st_mode) == 0o750
    assert stat.S_IMODE((state / "dest.json").stat().st_mode) == 0o640
    assert sorted(os.listdir(state)) == ["dest.json"]           # no temporary file left behind
    assert PositionStore(fd, "dest").load() == cursor.places


@pytest.mark.parametrize("content", [b"", b"{not json", b'{"version": 2, "files": {"x": [1, 2, 3, ""]}}',
                                     b'{"version": 2, "files": {"2026-03-01.events.zst": [1, -5, 0, ""]}}',
                                     b'{"version": 2, "files": {"2026-03-01.events.zst": [1, 5, 0, "zz"]}}',
                                     b'{"version": 1, "files": {}}', b"[]"])
def test_a_damaged_position_file_is_moved_aside_and_said(log, content):
    directory, fd = log
    store = PositionStore(fd, "dest")
    store.save({})
    (_state(directory) / "dest.json").write_bytes(content)
    assert store.load() is None
    assert "dest.json is" in store.problem and "moved aside to .forward/dest.json.moved-" in store.problem
    aside = [n for n in os.listdir(_state(directory)) if n.startswith("dest.json.moved-")]
    assert len(aside) == 1 and (_state(directory) / aside[0]).read_bytes() == content
    assert store.load() is None and store.problem == ""        # now simply a first start


def test_a_symlink_planted_as_the_position_file_is_never_followed(log, tmp_path):
    directory, fd = log
    target = tmp_path / "precious"
    target.write_text('{"version": 2, "files": {}}')
    store = PositionStore(fd, "dest")
    store.save({})
    os.unlink(_state(directory) / "dest.json")
    os.symlink(target, _state(directory) / "dest.json")
    assert store.load() is None
    assert "a symbolic link" in store.problem
    store.save({"2026-03-01.events.zst": LogCursor(fd).places.get("x") or ((1, 2, 0, ""))})
    assert target.read_text() == '{"version": 2, "files": {}}'     # untouched
    assert not os.path.islink(_state(directory) / "dest.json")
    assert PositionStore(fd, "dest").load() is not None


def test_a_fifo_or_a_directory_at_the_position_file_neither_hangs_nor_blocks_saving(log):
    directory, fd = log
    store = PositionStore(fd, "dest")
    store.save({})
    os.unlink(_state(directory) / "dest.json")
    os.mkfifo(_state(directory) / "dest.json")
    done = []
    reader = threading.Thread(target=lambda: done.append(store.load()), daemon=True)
    reader.start()
    reader.join(10)
    assert done == [None] and "not a regular file" in store.problem
    os.mkdir(_state(directory) / "dest.json")
    assert store.load() is None and "not a regular file" in store.problem
    store.save({})
    assert PositionStore(fd, "dest").load() == {}


def test_a_state_directory_that_is_not_ours_is_an_error_not_a_silent_fresh_start(log):
    directory, fd = log
    state = _state(directory)
    state.mkdir(mode=0o777)
    os.chmod(state, 0o777)
    with pytest.raises(OSError, match="not this account's own directory"):
        PositionStore(fd, "dest").load()


# --- the Forwarder around the cursor, fed to a real TCP collector ------------------------------------

def test_the_forwarder_says_a_damaged_position_file_and_damaged_frames_once(log):
    directory, fd = log
    collector = TcpLineCollector()
    said: list[str] = []
    try:
        write(directory, [event(i) for i in range(3)], per_frame=3)
        destination = Logstash("tcp://127.0.0.1:%d" % collector.port)
        forwarder = Forwarder(destination, fd, warn=said.append)
        assert said == []                                   # a first start: nothing to say
        forwarder.stop()
        (_state(directory) / (destination.name + ".json")).write_text("garbage")
        forwarder = Forwarder(Logstash("tcp://127.0.0.1:%d" % collector.port), fd, warn=said.append)
        assert len(said) == 1 and "is damaged" in said[0] and "starts at the end of the log" in said[0]
        write(directory, [event(i) for i in range(3, 12)], per_frame=3)
        _damage_pair(directory / file_name_for(DAY1_US), 2)          # events 6-8
        while forwarder.step():
            pass
        for _ in range(3):
            forwarder.step()
        lines = collector.wait(6)
        assert [json.loads(line)["trail"] for line in lines] == trails(
            [event(i) for i in (3, 4, 5, 9, 10, 11)])
        assert len([s for s in said if "damaged frame(s)" in s]) == 1, said
        stats = forwarder.stats()
        assert (stats["sent"], stats["damaged"], stats["failed"]) == (6, 1, 0)
        forwarder.stop()
    finally:
        collector.close()


def test_cursors_of_several_destinations_reading_at_once_each_see_every_event_once(log):
    """The forwarder runs one thread per destination over one log directory: listing it through
    a shared handle moved one read position for all, and a cursor that missed its day file in
    a listing took it for removed and read it again from the start."""
    directory, fd = log
    for k in range(300):                       # a long listing: the threads' listings overlap
        (directory / ("unrelated-%03d" % k)).touch()
    total = 12_000
    done = threading.Event()

    def produce():
        writer = EventLogWriter(str(directory), max_frame_age_s=3600, max_frame_records=512)
        try:
            for i in range(0, total, 100):
                writer.write([event(j) for j in range(i, i + 100)])
                writer.flush()
        finally:
            writer.close()
            done.set()

    seen = [collections.Counter() for _ in range(4)]

    def follow(counter):
        cursor = LogCursor(fd, {})
        while True:
            finished = done.is_set()
            events = cursor.read(256)
            cursor.ack()
            counter.update(e.trail for e in events)
            if not events and finished:
                break
        cursor.close()

    threads = [threading.Thread(target=follow, args=(counter,)) for counter in seen] + [threading.Thread(target=produce)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    for counter in seen:
        assert len(counter) == total and max(counter.values()) == 1, (len(counter), sum(counter.values()))
