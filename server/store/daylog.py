"""The server's daily event log, the source of truth under every backend, and keeping an index
in step with it.

Owns `DayLog` (LOG_DIR/YYYY-MM-DD.events.zst written by the shared writer, events/log
EventLogWriter, so `maltrail-engine tail --log-dir LOG_DIR` reads a server's directory whatever
the backend; fsync of each day file a batch touched; LOG_DIR/index/.lock, the one-process-per-
directory lock) and the routines both backends run over it: `ingest_logged` (append, fsync,
then index), `catch_up` (index what the log holds beyond the index's position) and
`append_logged` (append and fsync only, when the server's indexer process indexes: server/indexer.py).
A `DayLog(write=False)` only reads the day files (the indexer's view: no writer, no directory
lock); `indexer_lock` is index/.indexer.lock, held by whoever indexes beside a running server
(its start-up repair, then its indexer process), so two never catch the same day file up at once. Must not hold
any backend's SQL: a backend is an `Index` (below), told what to index and where in which day
file the indexed part ends.

The invariant: an index holds, for each day file, exactly the events of the pairs before its
position (inode, byte offset), each once. A backend keeps its position with the rows it
describes: in the same transaction (SQLite), or as columns of the rows themselves, read back
with max() (ClickHouse, which has no transactions). Ingest appends the batch to the day files,
fsyncs them, and indexes each day's part ending at the file's new size; when the index's
position is not where this batch starts (an earlier batch reached the log but not the index: a
failed insert, a crash), the pairs from the index's position up to the new end are read back
from the log and indexed instead, so the index never skips a batch and never takes one twice.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from typing import Callable, NamedTuple, Protocol

from events.fsafety import directory_problem
from events.log import EventLogWriter, LogDirError, PairReader, day_files_in, file_name_for, open_day_file
from events.record import Event
from server.store import StoreError

INDEX_DIR = "index"
LOCK_NAME = ".lock"
INDEXER_LOCK_NAME = ".indexer.lock"
REPAIR_CHUNK_EVENTS = 50_000


class Appended(NamedTuple):
    """One day file's part of a batch: the file's inode, its size before and after the append."""
    name: str
    inode: int
    start: int
    end: int
    events: list


class Index(Protocol):
    """What a backend offers the log: where its index of a day file ends, and indexing more."""

    def position(self, name: str) -> tuple[int, int] | None:
        """(inode, offset) up to which day file `name` is indexed, or None: nothing of it is."""

    def index(self, name: str, events: list[Event], inode: int, end: int) -> None:
        """Index `events`, the pairs of day file `name` up to byte `end`, and move the position
        there: all or nothing (raises on failure, leaving the position where it was)."""

    def restart(self, name: str) -> None:
        """The day file no longer fits the position (replaced, or cut shorter): forget its index,
        so it is indexed again from its first byte."""


class DayLog:
    """The daily event log of a server's log directory (see the module docstring)."""

    def __init__(self, log_dir: str, warn: Callable[[str], None] | None = None, write: bool = True):
        self.log_dir = os.path.abspath(log_dir)
        self._warn = warn or (lambda text: None)
        self.index_dir = os.path.join(self.log_dir, INDEX_DIR)
        self._synced_names: set[str] = set()
        if not write:       # a reader beside the writing server: no writer, no lock
            self._writer = None
            self._lock_fd = -1
            try:
                self._dir_fd = os.open(self.log_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
            except OSError as exc:
                raise StoreError("cannot open the log directory %s: %s" % (self.log_dir, exc.strerror or exc)) from None
            return
        try:
            # Frames are closed by flush() after every batch, never by age.
            self._writer = EventLogWriter(self.log_dir, max_frame_age_s=3600.0, warn=self._warn)
        except LogDirError as exc:
            raise StoreError(str(exc)) from None
        self._dir_fd = self._writer.dir_fd
        try:
            self._lock_fd = _lock_index_dir(self.index_dir)
        except BaseException:
            self._writer.close()
            raise

    @property
    def dir_fd(self) -> int:
        return self._dir_fd

    @property
    def frames_written(self) -> int:
        return self._writer.frames_written if self._writer is not None else 0

    def day_files(self) -> list[str]:
        """The day files' names, oldest first."""
        return [name for _day, name in day_files_in(self.dir_fd)]

    def append(self, batch: list[Event]) -> list[Appended]:
        """Append the batch and make it durable: each day file it touched is fsync'd (and the
        directory, when a file is new). Raises OSError (nothing of the batch counts as stored)."""
        by_day = split_by_day(batch)
        starts = {name: self._size(name) for name in by_day}
        self._writer.write(batch)
        self._writer.flush()
        out = []
        for name, events in by_day.items():
            inode, end = self._sync(name)
            out.append(Appended(name, inode, starts[name], end, events))
        return out

    def _size(self, name: str) -> int:
        try:
            return os.stat(name, dir_fd=self.dir_fd, follow_symlinks=False).st_size
        except FileNotFoundError:
            return 0

    def _sync(self, name: str) -> tuple[int, int]:
        """fsync a day file the writer just flushed; returns its (inode, size): every pair in it
        up to that size is complete and durable."""
        dir_fd = self.dir_fd
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
        try:
            os.fsync(fd)
            st = os.fstat(fd)
        finally:
            os.close(fd)
        if name not in self._synced_names:
            os.fsync(dir_fd)        # a new file's directory entry must be durable too
            self._synced_names.add(name)
        return st.st_ino, st.st_size

    def close(self) -> None:
        if self._writer is None:
            os.close(self._dir_fd)
            return
        try:
            self._writer.close()
        finally:
            os.close(self._lock_fd)


def append_logged(log: DayLog, batch: list[Event], link) -> int:
    """Append the batch to the log and make it durable, leaving the index to the indexer
    process (server/indexer.py): `link.logged` counts it and tells the indexer. Returns the
    batch's sequence number (link.wait_indexed(seq) waits for its index). Raises StoreError."""
    try:
        log.append(batch)
    except OSError as exc:
        raise StoreError("cannot append to the event log in %s: %s" % (log.log_dir, exc.strerror or exc)) from None
    return link.logged(len(batch))


def indexer_lock(log: DayLog) -> int:
    """index/.indexer.lock taken (waiting for it): returns the descriptor, whose closing frees it."""
    index_fd = os.open(INDEX_DIR, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=log.dir_fd)
    try:
        fd = os.open(INDEXER_LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=index_fd)
    finally:
        os.close(index_fd)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)      # PEP 475: retried after a signal
    except BaseException:
        os.close(fd)
        raise
    return fd


@contextlib.contextmanager
def indexer_locked(log: DayLog):
    """index/.indexer.lock held for the `with` block (indexer_lock)."""
    fd = indexer_lock(log)
    try:
        yield
    finally:
        os.close(fd)


def ingest_logged(log: DayLog, index: Index, batch: list[Event], warn: Callable[[str], None],
                  prepared: dict | None = None) -> int:
    """Append the batch to the log, then index it (module docstring); returns how many events
    the index took (the batch, plus what a catch-up found before it). Raises StoreError.
    `prepared`: day file name -> what the backend prepared for that day's events (passed on to
    its index(); a catch-up reads the log instead)."""
    try:
        appended = log.append(batch)
    except OSError as exc:
        raise StoreError("cannot append to the event log in %s: %s" % (log.log_dir, exc.strerror or exc)) from None
    total = 0
    for part in appended:
        known = index.position(part.name)
        if known == (part.inode, part.start) or (known is None and part.start == 0):
            if prepared is not None:
                index.index(part.name, part.events, part.inode, part.end, prepared[part.name])
            else:
                index.index(part.name, part.events, part.inode, part.end)
            total += len(part.events)
        else:
            n = catch_up(log, index, part.name, warn, until=part.end, announce=False)
            total += n
            if n > len(part.events):
                warn("%s: indexed %d event(s) the log held beyond the index (a batch the index had refused)"
                     % (part.name, n - len(part.events)))
    return total


def catch_up(log: DayLog, index: Index, name: str, warn: Callable[[str], None], until: int | None = None,
             announce: bool = True) -> int:
    """Index the pairs of day file `name` from the index's position to `until` (default: the
    end of the file); returns how many events."""
    try:
        fd = open_day_file(log.dir_fd, name)
    except FileNotFoundError:
        return 0
    try:
        st = os.fstat(fd)
        known = index.position(name)
        if known is not None and (known[0] != st.st_ino or known[1] > st.st_size):
            warn("%s changed under its index (replaced or cut); indexing it again" % name)
            index.restart(name)
            known = None
        start = 0 if known is None else known[1]
        stop = st.st_size if until is None else until
        if start >= stop:
            return 0
        reader = PairReader(fd, start)
        count = 0
        batch: list[Event] = []
        position = start
        cut = False
        for info, events in reader.pairs():
            if info.end > stop:
                cut = True
                break
            batch.extend(events)
            position = info.end
            if len(batch) >= REPAIR_CHUNK_EVENTS:
                index.index(name, batch, st.st_ino, position)
                count += len(batch)
                batch = []
        if not cut:
            # Past damaged pairs the reader skipped (never past a pair still being written).
            position = max(position, min(reader.resume, stop))
        if batch or position != start:
            index.index(name, batch, st.st_ino, position)
            count += len(batch)
        if reader.corrupt:
            warn("%s: %d damaged frame(s) skipped while indexing" % (name, reader.corrupt))
        if count and known is not None and announce:
            warn("%s: indexed %d event(s) the log held beyond the index (repair after a stop)" % (name, count))
        return count
    finally:
        os.close(fd)


def split_by_day(batch: list[Event]) -> dict[str, list[Event]]:
    """The batch split by day file; a batch is nearly always one day: then by two look-ups."""
    first = file_name_for(min(e.ts_us for e in batch))
    if first == file_name_for(max(e.ts_us for e in batch)):
        return {first: batch}
    by_day: dict[str, list[Event]] = {}
    for e in batch:
        by_day.setdefault(file_name_for(e.ts_us), []).append(e)
    return by_day


def _lock_index_dir(index_dir: str) -> int:
    problem = directory_problem(index_dir)
    if problem is None:
        try:
            os.makedirs(index_dir, mode=0o755, exist_ok=True)
        except OSError as exc:
            raise StoreError("cannot create the index directory %s: %s" % (index_dir, exc.strerror or exc)) from None
        problem = directory_problem(index_dir)
    if problem is not None:
        raise StoreError("refusing the index directory: %s" % problem)
    fd = os.open(os.path.join(index_dir, LOCK_NAME), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise StoreError("%s is in use by another maltrail-engine server (or a reindex): one process "
                             "owns a log directory" % os.path.dirname(index_dir)) from None
        raise
    return fd
