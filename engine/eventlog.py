"""The event log on disk: daily zstd files of msgpack event records, written in indexed frames.

Owns the file layout, the writer (buffering, frame closing, torn-tail repair, a few open handles)
and the reader (whole files, a time range, and following a directory as it grows). Must not know
how events are produced or displayed: workers/events.py defines the record, engine/formats.py
renders it.

Layout. `LOG_DIR/YYYY-MM-DD.events.zst`, the date being the local date of the event's ts_us (as
Maltrail names its daily logs). A file is a sequence of pairs, each appended with one os.write:

    skippable frame   magic 0x184D2A50 (u32 LE), frame size 24 (u32 LE), then the index:
                      u32 LE data frame length, u32 LE record count, u64 LE min ts_us, u64 LE max ts_us
    data frame        one complete zstd frame (content size and content checksum present) whose
                      content is the concatenated msgpack encodings of the records

zstd skips skippable frames (RFC 8878 section 3.1.2), so `zstd -dc FILE` yields the plain msgpack
stream; the index lets a reader skip a frame by length and by time without decompressing it.

Failure model. A crash loses at most the frames not yet closed. A pair is written whole or, after
a crash or a full disk, torn at the end of the file; a reader treats an incomplete pair at EOF as
"not yet written" (a writer may be appending right now), and a writer truncates a torn tail the
first time it appends to the file. Damage in the middle of a file costs only the damaged pair: the
reader skips it by the index length, or, if the index itself is damaged, by searching for the next
pair header; either way it is counted in `corrupt_frames`. One writer per log directory.
"""

from __future__ import annotations

import collections
import datetime
import os
import re
import struct
import time
from typing import Callable, Iterable, Iterator, NamedTuple

import msgpack
import zstandard

from workers.events import Event

# RFC 8878: skippable frames use magic numbers 0x184D2A50..0x184D2A5F; we use the first.
SKIPPABLE_MAGIC = 0x184D2A50
INDEX = struct.Struct("<IIQQ")          # data frame length, record count, min ts_us, max ts_us
PAIR_HEADER = struct.Struct("<II" + INDEX.format[1:])   # magic, skippable frame size, index
PAIR_HEADER_BYTES = PAIR_HEADER.size    # 32
# The 8 bytes every pair starts with: how a reader finds the next pair after a damaged index.
PAIR_SYNC = struct.pack("<II", SKIPPABLE_MAGIC, INDEX.size)

# Bounds that keep a damaged index from making a reader allocate or read without limit. The
# writer closes a frame before its content reaches MAX_FRAME_CONTENT_BYTES // 4.
MAX_FRAME_CONTENT_BYTES = 256 << 20
MAX_DATA_FRAME_BYTES = MAX_FRAME_CONTENT_BYTES + (1 << 20)
FRAME_CONTENT_LIMIT_BYTES = MAX_FRAME_CONTENT_BYTES // 4

FILE_SUFFIX = ".events.zst"
FILE_RE = re.compile(r"^(\d{4})-(\d{2})-(\d{2})\.events\.zst\Z")
FILE_MODE = 0o644
MAX_OPEN_FILES = 4
_U64_MAX = (1 << 64) - 1
_SCAN_CHUNK_BYTES = 1 << 20


def file_name_for(ts_us: int) -> str:
    """The day file an event belongs in: the LOCAL date of ts_us, as Maltrail names its logs."""
    t = time.localtime(ts_us // 1_000_000)
    return "%04d-%02d-%02d%s" % (t.tm_year, t.tm_mon, t.tm_mday, FILE_SUFFIX)


def file_date(name: str) -> datetime.date | None:
    """The date a day file's name stands for, or None for any other name."""
    m = FILE_RE.match(name)
    if m is None:
        return None
    try:
        return datetime.date(int(m.group(1)), int(m.group(2)), int(m.group(3)))
    except ValueError:
        return None


def list_day_files(log_dir: str) -> list[tuple[datetime.date, str]]:
    """(date, path) of the day files in log_dir, oldest first; other names are ignored."""
    found = []
    with os.scandir(log_dir) as entries:
        for entry in entries:
            day = file_date(entry.name)
            if day is not None and entry.is_file():
                found.append((day, entry.path))
    found.sort()
    return found


def encode_pair(frame: bytes, count: int, min_ts_us: int, max_ts_us: int) -> bytes:
    """The bytes appended for one closed frame: skippable index frame + the data frame."""
    return PAIR_HEADER.pack(SKIPPABLE_MAGIC, INDEX.size, len(frame), count, min_ts_us, max_ts_us) + frame


class PairInfo(NamedTuple):
    offset: int           # where the pair starts in the file
    end: int              # where the next pair starts
    count: int
    min_ts_us: int
    max_ts_us: int


def _ts_index(ts_us: int) -> int:
    # The index stores u64; timestamps before 1970 (never seen from a capture) are clamped so a
    # frame holding one is still written, and is never skipped wrongly by a range query.
    return min(max(ts_us, 0), _U64_MAX)


class _Decoder:
    """Decompresses and decodes one data frame; None (not an exception) for anything damaged."""

    def __init__(self):
        self._dctx = zstandard.ZstdDecompressor()

    def decode(self, frame: bytes, count: int) -> list[Event] | None:
        try:
            params = zstandard.get_frame_parameters(frame)
        except zstandard.ZstdError:
            return None
        # Our frames always carry size and checksum; without them the checksum proves nothing.
        if not params.has_checksum or not 0 < params.content_size <= MAX_FRAME_CONTENT_BYTES:
            return None
        try:
            content = self._dctx.decompress(frame, allow_extra_data=False)
        except zstandard.ZstdError:
            return None
        unpacker = msgpack.Unpacker(raw=False, max_buffer_size=max(len(content), 1))
        unpacker.feed(content)
        events = []
        try:
            for record in unpacker:
                events.append(Event.from_record(record))
        except (ValueError, TypeError, msgpack.UnpackException):
            return None
        if len(events) != count:
            return None
        return events


def _find_sync(f, start: int, size: int) -> int | None:
    """Offset of the next PAIR_SYNC at or after start (before size), or None."""
    pos = start
    overlap = len(PAIR_SYNC) - 1
    while pos < size:
        f.seek(pos)
        chunk = f.read(min(_SCAN_CHUNK_BYTES, size - pos))
        if not chunk:
            return None
        i = chunk.find(PAIR_SYNC)
        if i >= 0:
            return pos + i
        if pos + len(chunk) >= size:
            return None
        pos += len(chunk) - overlap
    return None


class _Walk:
    """One pass over the pairs of an open file from `start` to the size seen at the start.

    `pairs(want, decoder)` yields (PairInfo, events-or-None): events when want(info) said to
    decode the pair, None when the pair was skipped by its index. Damaged pairs are skipped and
    counted in `corrupt`. When the walk ends, `resume` is where the next walk should start: the
    end of the file, or the start of an incomplete (or damaged, last) pair that may be completed
    or repaired later.
    """

    def __init__(self, f, start: int):
        self.f = f
        self.start = start
        self.size = os.fstat(f.fileno()).st_size
        self.resume = start
        self.corrupt = 0
        self.torn = False

    def _read_at(self, pos: int, n: int) -> bytes:
        self.f.seek(pos)
        return self.f.read(n)

    def _header_at(self, pos: int):
        """The pair header at pos if it is structurally valid, else None."""
        raw = self._read_at(pos, PAIR_HEADER_BYTES)
        if len(raw) < PAIR_HEADER_BYTES:
            return None
        magic, frame_size, data_len, count, min_ts, max_ts = PAIR_HEADER.unpack(raw)
        if magic != SKIPPABLE_MAGIC or frame_size != INDEX.size:
            return None
        if not 0 < data_len <= MAX_DATA_FRAME_BYTES or count == 0 or min_ts > max_ts:
            return None
        return data_len, count, min_ts, max_ts

    def _resync(self, pos: int) -> int | None:
        """The next plausible pair after a damaged one at pos, or None if there is none."""
        probe = pos + 1
        while True:
            nxt = _find_sync(self.f, probe, self.size)
            if nxt is None:
                return None
            header = self._header_at(nxt)
            if header is not None and nxt + PAIR_HEADER_BYTES + header[0] <= self.size:
                return nxt
            probe = nxt + 1

    def pairs(self, want: Callable[[PairInfo], bool], decoder: _Decoder):
        pos = self.start
        size = self.size
        # Start of the pair just skipped by its index: its length was trusted unverified, so if
        # no pair header follows it, that length may be the damage and the search starts there.
        skipped_at = None
        while pos < size:
            self.resume = pos
            header = self._header_at(pos) if size - pos >= PAIR_HEADER_BYTES else None
            end = pos + PAIR_HEADER_BYTES + header[0] if header is not None else None
            if header is None or end > size:
                # A short or unreadable header, or a data frame running past EOF: a torn tail
                # (or a pair still being written) unless a complete pair follows further on.
                nxt = self._resync(pos if skipped_at is None else skipped_at)
                skipped_at = None
                if nxt is None:
                    self.torn = True
                    return
                self.corrupt += 1
                pos = nxt
                continue
            data_len, count, min_ts, max_ts = header
            info = PairInfo(pos, end, count, min_ts, max_ts)
            if not want(info):
                self.resume = end
                yield info, None
                skipped_at = pos
                pos = end
                continue
            skipped_at = None
            events = decoder.decode(self._read_at(pos + PAIR_HEADER_BYTES, data_len), count)
            if events is None:
                if end == size:
                    # Complete length but bad content as the very last pair: torn by a crash
                    # (a filesystem may extend a file before its data lands); never an error.
                    self.torn = True
                    return
                self.corrupt += 1
                # Skip by the index length when a pair header sits there (only the data was
                # damaged); otherwise the length itself may be wrong: search instead.
                if self._header_at(end) is not None:
                    pos = end
                    continue
                nxt = self._resync(pos)
                if nxt is None:
                    self.torn = True
                    return
                pos = nxt
                continue
            self.resume = end
            yield info, events
            pos = end
        self.resume = max(pos, self.start)


def _never(_info: PairInfo) -> bool:
    return False


def repair_file(path: str, dir_fd: int | None = None) -> int:
    """Truncate a torn tail after the last good pair of path; returns the bytes dropped.

    Never drops a good pair: damage followed by good pairs is left for readers to skip.
    Only the pairs at the end are decompressed; the rest are walked by their index.
    """
    decoder = _Decoder()
    with open(os.open(path, os.O_RDWR | os.O_CLOEXEC, dir_fd=dir_fd), "r+b") as f:
        walk = _Walk(f, 0)
        spans = [info for info, _ in walk.pairs(_never, decoder)]
        size = walk.size
        good_end = 0
        for info in reversed(spans):
            f.seek(info.offset + PAIR_HEADER_BYTES)
            if decoder.decode(f.read(info.end - info.offset - PAIR_HEADER_BYTES), info.count) is not None:
                good_end = info.end
                break
        if good_end >= size:
            return 0
        f.truncate(good_end)
        f.flush()
        os.fsync(f.fileno())
        return size - good_end


class _Pending:
    __slots__ = ("records", "content_bytes", "min_ts_us", "max_ts_us", "opened_at")

    def __init__(self, opened_at: float):
        self.records: list[bytes] = []
        self.content_bytes = 0
        self.min_ts_us = _U64_MAX
        self.max_ts_us = 0
        self.opened_at = opened_at


def _sanitize_record(record: list) -> list:
    # A str that is not valid Unicode (a lone surrogate) cannot be msgpack'd as text; keep the
    # event, with the offending code points written as \\uXXXX.
    return [v.encode("utf-8", "backslashreplace").decode("utf-8") if isinstance(v, str) else v
            for v in record]


class EventLogWriter:
    """Appends events to the day files of log_dir in indexed zstd frames.

    A frame per target file collects records and is closed (compressed and appended with one
    os.write) when it holds max_frame_records, when its oldest record has waited max_frame_age_s
    of wall time (checked on every write() and tick()), or on flush()/close().
    """

    def __init__(self, log_dir: str, max_frame_age_s: float = 1.0, max_frame_records: int = 4096,
                 level: int = 3):
        if max_frame_records < 1:
            raise ValueError("max_frame_records must be at least 1")
        self.log_dir = os.fspath(log_dir)
        self.max_frame_age_s = max_frame_age_s
        self.max_frame_records = max_frame_records
        os.makedirs(self.log_dir, mode=0o755, exist_ok=True)
        # Everything below is opened relative to this descriptor: the writer may drop to an
        # account that could not walk the path down to the directory.
        self._dir_fd = os.open(self.log_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self._cctx = zstandard.ZstdCompressor(level=level, write_checksum=True, write_content_size=True)
        self._packer = msgpack.Packer(use_bin_type=True)
        self._pending: dict[str, _Pending] = {}
        self._handles: collections.OrderedDict[str, int] = collections.OrderedDict()
        self._checked: set[str] = set()     # files this writer has repaired or created
        self._names: dict[str, str] = {}
        self.frames_written = 0
        self.records_written = 0
        self.bytes_written = 0
        self.records_sanitized = 0
        self.repaired: list[tuple[str, int]] = []
        self._closed = False

    # -- buffering -------------------------------------------------------------------------
    def write(self, events: Iterable[Event]) -> None:
        if self._closed:
            raise ValueError("write to a closed EventLogWriter")
        now = time.monotonic()
        for event in events:
            record = event.to_record()
            try:
                packed = self._packer.pack(record)
            except UnicodeEncodeError:
                packed = self._packer.pack(_sanitize_record(record))
                self.records_sanitized += 1
            ts_us = event.ts_us
            name = file_name_for(ts_us)
            path = self._names.get(name)
            if path is None:
                path = self._names[name] = os.path.join(self.log_dir, name)
            pending = self._pending.get(path)
            if pending is None:
                pending = self._pending[path] = _Pending(now)
            pending.records.append(packed)
            pending.content_bytes += len(packed)
            ts_index = _ts_index(ts_us)
            if ts_index < pending.min_ts_us:
                pending.min_ts_us = ts_index
            if ts_index > pending.max_ts_us:
                pending.max_ts_us = ts_index
            if (len(pending.records) >= self.max_frame_records
                    or pending.content_bytes >= FRAME_CONTENT_LIMIT_BYTES):
                self._close_frame(path)
        self.tick(now)

    def tick(self, now: float | None = None) -> int:
        """Close every frame whose oldest record has waited max_frame_age_s; returns how many."""
        if now is None:
            now = time.monotonic()
        due = [path for path, p in self._pending.items() if now - p.opened_at >= self.max_frame_age_s]
        for path in due:
            self._close_frame(path)
        return len(due)

    def flush(self) -> int:
        """Close every open frame now; returns how many."""
        paths = list(self._pending)
        for path in paths:
            self._close_frame(path)
        return len(paths)

    def close(self) -> None:
        if self._closed:
            return
        try:
            self.flush()
        finally:
            self._closed = True
            while self._handles:
                _, fd = self._handles.popitem(last=False)
                os.close(fd)
            os.close(self._dir_fd)

    def __enter__(self) -> "EventLogWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def pending_records(self) -> int:
        return sum(len(p.records) for p in self._pending.values())

    # -- frames and files ------------------------------------------------------------------
    def _close_frame(self, path: str) -> None:
        pending = self._pending.pop(path)
        frame = self._cctx.compress(b"".join(pending.records))
        data = encode_pair(frame, len(pending.records), pending.min_ts_us, pending.max_ts_us)
        fd = self._handle(path)
        before = os.fstat(fd).st_size
        try:
            written = os.write(fd, data)
            while written < len(data):      # only on a short write (a signal, a nearly full disk)
                written += os.write(fd, data[written:])
        except OSError:
            # Leave no torn pair behind for readers; the records of this frame are lost.
            try:
                os.ftruncate(fd, before)
            except OSError:
                pass
            raise
        self.frames_written += 1
        self.records_written += len(pending.records)
        self.bytes_written += len(data)

    def _handle(self, path: str) -> int:
        fd = self._handles.get(path)
        if fd is not None:
            self._handles.move_to_end(path)
            return fd
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
        try:
            fd = os.open(os.path.basename(path), flags | os.O_EXCL, FILE_MODE, dir_fd=self._dir_fd)
            os.fchmod(fd, FILE_MODE)    # the mode Maltrail gives its logs, whatever the umask
        except FileExistsError:
            if path not in self._checked:   # repair once; after that the tail is our own writes
                dropped = repair_file(os.path.basename(path), dir_fd=self._dir_fd)
                if dropped:
                    self.repaired.append((path, dropped))
            fd = os.open(os.path.basename(path), flags, FILE_MODE, dir_fd=self._dir_fd)
        self._checked.add(path)
        self._handles[path] = fd
        while len(self._handles) > MAX_OPEN_FILES:
            _, old = self._handles.popitem(last=False)
            os.close(old)
        return fd


def _is_set(stop) -> bool:
    if stop is None:
        return False
    is_set = getattr(stop, "is_set", None)
    return bool(is_set() if is_set is not None else stop())


def _wait(stop, seconds: float) -> None:
    wait = getattr(stop, "wait", None)
    if wait is not None:
        wait(seconds)
    else:
        time.sleep(seconds)


class EventLogReader:
    """Reads events back from day files; tolerant of a writer appending at the same time."""

    def __init__(self):
        self._decoder = _Decoder()
        self.corrupt_frames = 0      # damaged pairs skipped (not counting a torn tail)
        self.frames_read = 0         # pairs decompressed
        self.frames_skipped = 0      # pairs skipped by their index (outside the time range)

    def iter_file(self, path: str, since_us: int | None = None,
                  until_us: int | None = None) -> Iterator[Event]:
        """Events of one file in written order, those with since_us <= ts_us <= until_us."""
        with open(path, "rb") as f:
            yield from self._read_from(f, 0, since_us, until_us)[1]

    def _read_from(self, f, start: int, since_us, until_us):
        walk = _Walk(f, start)
        return walk, self._events(walk, since_us, until_us)

    def _events(self, walk: _Walk, since_us, until_us) -> Iterator[Event]:
        lo = None if since_us is None else _ts_index(since_us)
        hi = None if until_us is None else _ts_index(until_us)

        def want(info: PairInfo) -> bool:
            # The index is clamped to u64, so compare against clamped bounds.
            if lo is not None and info.max_ts_us < lo:
                return False
            if hi is not None and info.min_ts_us > hi:
                return False
            return True

        seen_corrupt = 0
        try:
            for info, events in walk.pairs(want, self._decoder):
                self.corrupt_frames += walk.corrupt - seen_corrupt
                seen_corrupt = walk.corrupt
                if events is None:
                    self.frames_skipped += 1
                    continue
                self.frames_read += 1
                for event in events:
                    if since_us is not None and event.ts_us < since_us:
                        continue
                    if until_us is not None and event.ts_us > until_us:
                        continue
                    yield event
        finally:
            self.corrupt_frames += walk.corrupt - seen_corrupt

    def iter_dir(self, log_dir: str, since_us: int | None = None,
                 until_us: int | None = None) -> Iterator[Event]:
        """Events of every day file in date order (written order within a file), in range."""
        for _day, path in _files_in_range(log_dir, since_us, until_us):
            try:
                yield from self.iter_file(path, since_us, until_us)
            except FileNotFoundError:
                continue    # removed (retention) between listing and opening

    def follow(self, log_dir: str, since_us: int | None = None, poll_s: float = 0.2,
               stop=None, until_us: int | None = None) -> Iterator[Event]:
        """The events already in log_dir (from since_us), then new ones as they are appended,
        including to day files that appear later. Ends when stop (a threading.Event or a
        callable returning true) is set; checked at least every poll_s."""
        # path -> (inode, offset of the first pair not yet read)
        positions: dict[str, tuple[int, int]] = {}
        while not _is_set(stop):
            # Files dated outside the range cannot gain a matching event, so never read them.
            try:
                files = _files_in_range(log_dir, since_us, until_us)
            except FileNotFoundError:
                files = []      # the directory is not there (yet, or any more): keep waiting
            present = set()
            for _day, path in files:
                present.add(path)
                try:
                    f = open(path, "rb")
                except FileNotFoundError:
                    continue
                with f:
                    st = os.fstat(f.fileno())
                    inode, offset = positions.get(path, (st.st_ino, 0))
                    if inode != st.st_ino or st.st_size < offset:
                        offset = 0              # the file was replaced: read the new one whole
                    if st.st_size == offset:
                        positions[path] = (st.st_ino, offset)
                        continue
                    walk, events = self._read_from(f, offset, since_us, until_us)
                    yield from events
                    positions[path] = (st.st_ino, walk.resume)
                if _is_set(stop):
                    return
            for path in list(positions):
                if path not in present:
                    del positions[path]
            if _is_set(stop):
                return
            _wait(stop, poll_s)


def _files_in_range(log_dir: str, since_us, until_us) -> list[tuple[datetime.date, str]]:
    files = list_day_files(log_dir)
    # A day file holds events whose local date is its name; a day's margin on each side keeps
    # this right where a zone moved its clocks across midnight.
    if since_us is not None:
        first = _local_date(since_us, -1)
        files = [(d, p) for d, p in files if d >= first]
    if until_us is not None:
        last = _local_date(until_us, +1)
        files = [(d, p) for d, p in files if d <= last]
    return files


def _local_date(ts_us: int, margin_days: int) -> datetime.date:
    """The local date of ts_us moved by margin_days, saturating at the ends of the calendar."""
    try:
        t = time.localtime(ts_us // 1_000_000)
        return datetime.date(t.tm_year, t.tm_mon, t.tm_mday) + datetime.timedelta(days=margin_days)
    except (OverflowError, OSError, ValueError):
        return datetime.date.min if ts_us < 0 else datetime.date.max
