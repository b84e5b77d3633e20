"""Where a forwarder is in the event log, and how it reads on from there.

Owns a destination's place in the compressed log (events/log) and its persistence, so that a
destination that was down, or a sensor that was restarted or killed, resumes exactly where the
destination last acknowledged:

- A place is kept per day file: (inode, offset of the next pair, records of that pair already
  acknowledged, the file's first pair header). A day file can grow at any time, older ones
  included (a replay of an old capture writes into its own day), so every day file has its own
  place. A file replaced under the same name is read from its start: another inode, a size below
  the place, or a different first pair header (a file system that gives a new file the inode
  number of the deleted one, ext4 does; a file emptied in place and written again). A file that
  is gone is forgotten.
- `LogCursor.read(n)` hands out up to n events in file order, with the place after each one;
  `ack(k)` moves the place past the first k of them. Nothing is ever skipped: a batch that was
  not acknowledged is read again. Damaged frames (events/log skips them) are passed with the
  events after them, and counted in `damaged` once, when passed.
- `PositionStore` keeps the places of one destination in `LOG_DIR/.forward/NAME.json`, written
  to a temporary file created exclusively and renamed over the old one (never through a
  symlink), so a kill at any moment leaves the old places or the new ones. A position file that
  cannot be used (damaged, or anything but a regular file at its name: a symlink is never
  followed, a FIFO never waited on) is moved aside and `problem` says so: the destination starts
  as a new one. What can be sent twice
  after a kill is what was acknowledged by the destination but not yet saved: at most the batch in
  flight (FORWARD_BATCH records), since places are saved after every acknowledged batch. The
  file is not synced: a power cut (not a kill) can bring back an older place, and with it more
  events sent twice, never fewer sent.
- A destination seen for the first time starts at the end of the log as it is: it gets what is
  detected from then on, not the history (which `tail` shows).

Works on the directory's descriptor: the forwarder runs as an account that may not be able to
walk the path down to the log directory. Must not know what destinations do with the events.
"""

from __future__ import annotations

import errno
import json
import os
import stat
from typing import NamedTuple

from events.fsafety import move_aside
from events.log import PAIR_HEADER_BYTES, PairReader, day_files_in, examine, file_date, open_day_file
from events.record import Event

STATE_DIR = ".forward"
STATE_DIR_MODE = 0o750
STATE_FILE_MODE = 0o640
STATE_MAX_BYTES = 1 << 20
_STATE_VERSION = 2
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-_.")


class Place(NamedTuple):
    """Where to go on in one day file."""
    inode: int
    offset: int          # a pair boundary
    done: int            # records of the pair at `offset` already acknowledged
    head: str = ""       # hex of the file's first PAIR_HEADER_BYTES (its first pair header)


class Mark(NamedTuple):
    """The place just after one handed-out event (or after damage passed)."""
    name: str
    place: Place
    damaged: int         # damaged frames passed on the way from the previous mark


def _head(fd: int) -> str:
    return os.pread(fd, PAIR_HEADER_BYTES, 0).hex()


class LogCursor:
    """Reads events from an open log directory from per-file places on (see the module doc)."""

    def __init__(self, dir_fd: int, places: dict[str, Place] | None = None):
        # A handle of its own on the directory (a new open file description, not a dup): listing
        # a directory moves its read position, and cursors of several destinations reading in
        # threads through one shared handle would each see part of the listing, and take the
        # day files missing from theirs for removed (and then read them again from the start).
        self.dir_fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=dir_fd)
        self.places: dict[str, Place] = dict(places or {})
        # (the place after each event handed out, or after damage passed; is it an event)
        self._pending: list[tuple[Mark, bool]] = []
        # ((name, inode, offset, head), PairInfo, events) of the pair the last read stopped inside
        self._cached = None
        self.damaged = 0        # damaged frames passed (acknowledged with what follows them)
        self.moved = False      # whether the last ack (or a forgotten file) changed a place

    @classmethod
    def at_end(cls, dir_fd: int) -> "LogCursor":
        """A cursor past everything the log holds now (a destination's first start): at the end
        of each day file's last complete pair, found by the index (nothing decompressed but the
        last pair); a torn tail stays ahead, since the writer cuts it or completes it."""
        cursor = cls(dir_fd)
        for _day, name in day_files_in(cursor.dir_fd):
            try:
                fd = open_day_file(cursor.dir_fd, name)
            except FileNotFoundError:
                continue
            try:
                found = examine(fd)
                # Not an event log at all: the writer moves it aside; nothing in it to send.
                end = found.good_end if found.event_log else found.size
                cursor.places[name] = Place(os.fstat(fd).st_ino, end, 0, _head(fd))
            finally:
                os.close(fd)
        return cursor

    def _start_of(self, name: str, fd: int, st: os.stat_result) -> Place:
        """The place to read `name` from: the saved one, or the file's start when the file is
        not the one the place was taken in (see the module doc)."""
        place = self.places.get(name)
        head = _head(fd)
        if place is not None and place.inode == st.st_ino and place.offset <= st.st_size:
            if place.offset == 0 and place.done == 0:
                return Place(st.st_ino, 0, 0, head)
            # The head may have been taken while the first pair was still being written (a
            # reader can see part of a write): what was seen must begin what is there now.
            if head.startswith(place.head):
                return place._replace(head=head)
        place = Place(st.st_ino, 0, 0, head)
        self.places[name] = place
        return place

    def read(self, limit: int) -> list[Event]:
        """Up to `limit` events after the acknowledged places, in day-file then written order;
        [] when there is nothing new. Events handed out and not acknowledged are handed out
        again (the places only move on ack)."""
        self._pending = []
        self.moved = False
        out: list[Event] = []
        present = set()
        for _day, name in day_files_in(self.dir_fd):
            present.add(name)
            if len(out) >= limit:
                continue
            try:
                # Unchanged since the place was taken (same file, same size): nothing to open.
                st = os.stat(name, dir_fd=self.dir_fd, follow_symlinks=False)
                place = self.places.get(name)
                if place is not None and place.inode == st.st_ino and place.offset == st.st_size:
                    continue
                fd = open_day_file(self.dir_fd, name)
            except FileNotFoundError:
                continue
            try:
                st = os.fstat(fd)
                place = self._start_of(name, fd, st)
                if st.st_size == place.offset:
                    continue
                skip = place.done
                last = place
                passed = 0      # damage already put on a mark
                start, first = place.offset, []
                cached = self._cached
                if cached is not None and cached[0] == (name, st.st_ino, place.offset, place.head):
                    # The pair the last read stopped inside: decoded once, not once per batch.
                    first, start = [(cached[1], cached[2])], cached[1].end
                reader = PairReader(fd, start)
                for info, events in _chain(first, reader.pairs()):
                    for i in range(skip, len(events)):
                        if len(out) >= limit:
                            break
                        out.append(events[i])
                        last = Place(st.st_ino, info.end, 0, place.head) if i + 1 == len(events) else \
                            Place(st.st_ino, info.offset, i + 1, place.head)
                        self._pending.append((Mark(name, last, reader.corrupt - passed), True))
                        passed = reader.corrupt
                    skip = 0
                    if len(out) >= limit:
                        if last.offset == info.offset:      # stopped inside this pair: keep it
                            self._cached = ((name, st.st_ino, info.offset, place.head), info, events)
                        break
                else:
                    # The file was read to its end: damaged pairs skipped on the way after the
                    # last event are passed too, so they are never read again.
                    if reader.resume > last.offset:
                        self._pending.append((Mark(name, Place(st.st_ino, reader.resume, 0, place.head),
                                                   reader.corrupt - passed), False))
            finally:
                os.close(fd)
        for name in [n for n in self.places if n not in present]:
            try:
                os.stat(name, dir_fd=self.dir_fd, follow_symlinks=False)
                continue                # listed late, not gone
            except FileNotFoundError:
                pass
            del self.places[name]       # removed (retention, a cleaner): nothing more to read
            self.moved = True
        return out

    def pending_marks(self) -> list[Mark]:
        """The place after each event of the last read, in order (a destination that numbers
        events by their place in the log: events/forwarders/server_link.py)."""
        return [mark for mark, is_event in self._pending if is_event]

    def close(self) -> None:
        if self.dir_fd >= 0:
            os.close(self.dir_fd)
            self.dir_fd = -1

    def ack(self, count: int | None = None) -> None:
        """The first `count` events of the last read (all when None) reached the destination:
        the places move past them (and past damage that follows the last of them)."""
        events = 0
        for mark, is_event in self._pending:
            if is_event:
                if count is not None and events >= count:
                    break
                events += 1
            elif count is not None and events < count:
                break
            self.places[mark.name] = mark.place
            self.damaged += mark.damaged
            self.moved = True
        self._pending = []

    def caught_up(self) -> bool:
        """Whether every day file has been read to its end (checked by size, nothing decoded)."""
        for _day, name in day_files_in(self.dir_fd):
            try:
                st = os.stat(name, dir_fd=self.dir_fd, follow_symlinks=False)
            except FileNotFoundError:
                continue
            place = self.places.get(name)
            if place is None or place.inode != st.st_ino or place.offset < st.st_size:
                return False
        return True


def _place(value) -> Place:
    """A saved place, checked: what a damaged file could hold is refused, not trusted."""
    if not isinstance(value, list) or len(value) != 4:
        raise ValueError("a place is [inode, offset, done, head]")
    inode, offset, done, head = value
    if not all(type(n) is int and n >= 0 for n in (inode, offset, done)):
        raise ValueError("inode, offset and done are integers from 0")
    if not isinstance(head, str) or len(head) > 2 * PAIR_HEADER_BYTES or set(head) - set("0123456789abcdef"):
        raise ValueError("head is hex")
    return Place(inode, offset, done, head)


def _chain(first, rest):
    yield from first
    yield from rest


class PositionStore:
    """One destination's places in `LOG_DIR/.forward/NAME.json` (see the module doc)."""

    def __init__(self, dir_fd: int, name: str, description: str = ""):
        if not name or set(name) - _NAME_CHARS:
            raise ValueError("a position name is lower-case letters, digits, '-', '_' and '.': %r" % name)
        self.dir_fd = dir_fd
        self.name = name
        self.description = description
        self.saves = 0
        self.problem = ""       # why the saved places could not be used (set by load)

    @property
    def file_name(self) -> str:
        return self.name + ".json"

    def _state_dir(self) -> int:
        try:
            os.mkdir(STATE_DIR, STATE_DIR_MODE, dir_fd=self.dir_fd)
        except FileExistsError:
            pass
        fd = os.open(STATE_DIR, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self.dir_fd)
        st = os.fstat(fd)
        if st.st_uid != os.geteuid() or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            os.close(fd)
            raise OSError(errno.EPERM, "%s is not this account's own directory (owner uid %d, mode %o)"
                          % (STATE_DIR, st.st_uid, stat.S_IMODE(st.st_mode)))
        return fd

    def load(self) -> dict[str, Place] | None:
        """The saved places, or None when there are none to use: this destination's first start,
        or a position file that cannot be used (`problem` says why; it was moved aside)."""
        self.problem = ""
        state_fd = self._state_dir()
        try:
            try:
                # O_NONBLOCK: a FIFO planted at the name must not hang the forwarder.
                fd = os.open(self.file_name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                             dir_fd=state_fd)
            except FileNotFoundError:
                return None
            except OSError as exc:
                # ELOOP: a symlink (never followed); anything else unopenable the same way.
                why = "a symbolic link" if exc.errno == errno.ELOOP else exc.strerror
                return self._unusable(state_fd, why)
            try:
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode):
                    return self._unusable(state_fd, "not a regular file")
                raw = os.read(fd, STATE_MAX_BYTES + 1)
            except OSError as exc:
                return self._unusable(state_fd, exc.strerror)
            finally:
                os.close(fd)
            try:
                if len(raw) > STATE_MAX_BYTES:
                    raise ValueError("larger than %d bytes" % STATE_MAX_BYTES)
                doc = json.loads(raw)
                if not isinstance(doc, dict) or doc.get("version") != _STATE_VERSION:
                    raise ValueError("not a version %d position file" % _STATE_VERSION)
                files = doc["files"]
                if not isinstance(files, dict) or any(file_date(name) is None for name in files):
                    raise ValueError("its files are not day files")
                return {name: _place(value) for name, value in files.items()}
            except (ValueError, KeyError, TypeError) as exc:
                return self._unusable(state_fd, "damaged (%s)" % exc)
        finally:
            os.close(state_fd)

    def _unusable(self, state_fd: int, why: str) -> None:
        try:
            aside = move_aside(state_fd, self.file_name)
            where = "moved aside to %s/%s" % (STATE_DIR, aside)
        except OSError as exc:
            where = "could not be moved aside (%s)" % (exc.strerror or exc)
        self.problem = "its position file %s/%s is %s: %s" % (STATE_DIR, self.file_name, why, where)
        return None

    def save(self, places: dict[str, Place]) -> None:
        doc = {"version": _STATE_VERSION, "destination": self.description,
               "files": {name: list(place) for name, place in sorted(places.items())}}
        data = json.dumps(doc, sort_keys=True).encode()
        state_fd = self._state_dir()
        try:
            tmp = ".%s.%s.tmp" % (self.name, os.urandom(6).hex())
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                         STATE_FILE_MODE, dir_fd=state_fd)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
            finally:
                os.close(fd)
            # rename() replaces the name itself: a symlink planted there is replaced, never
            # followed.
            os.rename(tmp, self.file_name, src_dir_fd=state_fd, dst_dir_fd=state_fd)
            self.saves += 1
        finally:
            os.close(state_fd)
