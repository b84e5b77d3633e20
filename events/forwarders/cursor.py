"""Where a forwarder is in the event log, and how it reads on from there.

Owns a destination's place in the compressed log (events/log) and its persistence, so that a
destination that was down, or a sensor that was restarted or killed, resumes exactly where the
destination last acknowledged:

- A place is kept per day file: (inode, offset of the next pair, records of that pair already
  acknowledged). A day file can grow at any time, older ones included (a replay of an old capture
  writes into its own day), so every day file has its own place; a file replaced under the same
  name (another inode) is read from its start; a file that is gone is forgotten.
- `LogCursor.read(n)` hands out up to n events in file order, with the place after each one;
  `ack(k)` moves the place past the first k of them. Nothing is ever skipped: a batch that was
  not acknowledged is read again.
- `PositionStore` keeps the places of one destination in `LOG_DIR/.forward/NAME.json`, written
  to a temporary file created exclusively and renamed over the old one (never through a
  symlink), so a kill at any moment leaves the old places or the new ones. What can be sent twice
  after a kill is what was acknowledged by the destination but not yet saved: at most the batch in
  flight (FORWARD_BATCH records), since places are saved after every acknowledged batch.
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

from events.log import PairReader, day_files_in, open_day_file
from events.record import Event

STATE_DIR = ".forward"
STATE_DIR_MODE = 0o750
STATE_FILE_MODE = 0o640
_STATE_VERSION = 1
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-_.")


class Place(NamedTuple):
    """Where to go on in one day file."""
    inode: int
    offset: int          # a pair boundary
    done: int            # records of the pair at `offset` already acknowledged


class Mark(NamedTuple):
    """The place just after one handed-out event."""
    name: str
    place: Place


class LogCursor:
    """Reads events from an open log directory from per-file places on (see the module doc)."""

    def __init__(self, dir_fd: int, places: dict[str, Place] | None = None):
        # A descriptor of its own for the directory: listing a directory moves the position of
        # its open file description, which descriptors made by dup() share, so cursors of other
        # threads listing the same description at once would see names twice or not at all.
        self.dir_fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=dir_fd)
        self.places: dict[str, Place] = dict(places or {})
        # (the place after each event handed out, or after damage passed; is it an event)
        self._pending: list[tuple[Mark, bool]] = []
        # ((name, inode, offset), PairInfo, events) of the pair the last read stopped inside
        self._cached = None
        self.corrupt_frames = 0

    @classmethod
    def at_end(cls, dir_fd: int) -> "LogCursor":
        """A cursor past everything the log holds now (a destination's first start)."""
        cursor = cls(dir_fd)
        for _day, name in day_files_in(dir_fd):
            try:
                fd = open_day_file(dir_fd, name)
            except FileNotFoundError:
                continue
            try:
                reader = PairReader(fd, 0)
                for _info in _infos(reader):
                    pass
                cursor.places[name] = Place(os.fstat(fd).st_ino, reader.resume, 0)
            finally:
                os.close(fd)
        return cursor

    def read(self, limit: int) -> list[Event]:
        """Up to `limit` events after the acknowledged places, in day-file then written order;
        [] when there is nothing new. Events handed out and not acknowledged are handed out
        again (the places only move on ack)."""
        self._pending = []
        out: list[Event] = []
        present = set()
        for _day, name in day_files_in(self.dir_fd):
            present.add(name)
            if len(out) >= limit:
                continue
            try:
                fd = open_day_file(self.dir_fd, name)
            except FileNotFoundError:
                continue
            try:
                st = os.fstat(fd)
                place = self.places.get(name)
                if place is None or place.inode != st.st_ino or st.st_size < place.offset:
                    place = Place(st.st_ino, 0, 0)      # new, or replaced: from its start
                    self.places[name] = place
                if st.st_size == place.offset:
                    continue
                skip = place.done
                last = place
                cached = self._cached
                start = place.offset
                pairs = []
                if cached is not None and cached[0] == (name, st.st_ino, place.offset):
                    # The pair the last read stopped in: decoded once, not again per batch.
                    pairs.append((cached[1], cached[2]))
                    start = cached[1].end
                reader = PairReader(fd, start)
                for info, events in _chain(pairs, reader.pairs()):
                    for i in range(skip, len(events)):
                        if len(out) >= limit:
                            break
                        out.append(events[i])
                        last = Place(st.st_ino, info.end, 0) if i + 1 == len(events) else \
                            Place(st.st_ino, info.offset, i + 1)
                        self._pending.append((Mark(name, last), True))
                    skip = 0
                    if len(out) >= limit:
                        if last.offset == info.offset:      # stopped inside this pair: keep it
                            self._cached = ((name, st.st_ino, info.offset), info, events)
                        break
                else:
                    # The file was read to its end: damaged pairs skipped on the way after the
                    # last event are passed too, so they are never read again.
                    if reader.resume > last.offset:
                        self._pending.append((Mark(name, Place(st.st_ino, reader.resume, 0)), False))
                self.corrupt_frames += reader.corrupt
            finally:
                os.close(fd)
        for name in [n for n in self.places if n not in present]:
            del self.places[name]       # removed (retention, a cleaner): nothing more to read
        return out

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
        self._pending = []

    def close(self) -> None:
        if self.dir_fd >= 0:
            os.close(self.dir_fd)
            self.dir_fd = -1

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


def _chain(first, rest):
    yield from first
    yield from rest


def _infos(reader: PairReader):
    for info, _events in reader.pairs():
        yield info


class PositionStore:
    """One destination's places in `LOG_DIR/.forward/NAME.json` (see the module doc)."""

    def __init__(self, dir_fd: int, name: str, description: str = ""):
        if not name or set(name) - _NAME_CHARS:
            raise ValueError("a position name is lower-case letters, digits, '-', '_' and '.': %r" % name)
        self.dir_fd = dir_fd
        self.name = name
        self.description = description
        self.saves = 0

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
        """The saved places, or None when this destination has none (its first start). A file
        that cannot be read as places is a fresh start too, said by the caller."""
        try:
            state_fd = self._state_dir()
        except OSError:
            return None
        try:
            try:
                fd = os.open(self.name + ".json", os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=state_fd)
            except FileNotFoundError:
                return None
            with os.fdopen(fd, "rb") as f:
                raw = f.read(1 << 20)
        finally:
            os.close(state_fd)
        try:
            doc = json.loads(raw)
            if doc.get("version") != _STATE_VERSION:
                return None
            return {str(name): Place(int(p[0]), int(p[1]), int(p[2])) for name, p in doc["files"].items()}
        except (ValueError, KeyError, TypeError, IndexError, AttributeError):
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
            os.rename(tmp, self.name + ".json", src_dir_fd=state_fd, dst_dir_fd=state_fd)
            self.saves += 1
        finally:
            os.close(state_fd)
