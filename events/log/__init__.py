"""The event log on disk: daily zstd files of msgpack event records, written in indexed frames.

Owns the file layout, the writer (buffering, frame closing, opening day files safely, torn-tail
repair, noticing files and the directory removed under it, a few open handles) and the reader
(whole files, a time range, the last N events, and following a directory as it grows). Must not
know how events are produced or displayed: events/record.py defines the record, events/formats.py
renders it; events/fsafety.py holds the rules for a safe directory and a safe open.

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
first time it opens the file, and says what it cut. A file at a day file's name that is not an
event log, a symlink, a hard link or anything but a regular file is moved aside (renamed, never
opened for writing) and a new day file is started. Before each frame is appended, one lstat of the
day file's path tells whether the file (or the log directory) was deleted, moved or replaced since
it was opened; if so the writer says so and opens a new one, re-creating the directory after the
same safety check as at start. Damage in the middle of a file costs only the damaged pair: the
reader skips it by the index length, or, if the index itself is damaged, by searching for the next
pair header; either way it is counted in `corrupt_frames`. The search reads each byte once, so a
reader's work stays linear in the file's size whatever the file holds. One writer per log directory.
"""

from __future__ import annotations

import collections
import datetime
import errno
import os
import re
import stat
import struct
import sys
import time
from typing import Callable, Iterable, Iterator, NamedTuple

import msgpack
import zstandard

from events.fsafety import (
    UnsafeFile, create_in_dir, directory_fd_problem, directory_problem, move_aside, open_dir,
    open_regular_in_dir,
)
from events.record import Event

# RFC 8878: skippable frames use magic numbers 0x184D2A50..0x184D2A5F; we use the first.
SKIPPABLE_MAGIC = 0x184D2A50
INDEX = struct.Struct("<IIQQ")          # data frame length, record count, min ts_us, max ts_us
PAIR_HEADER = struct.Struct("<II" + INDEX.format[1:])   # magic, skippable frame size, index
PAIR_HEADER_BYTES = PAIR_HEADER.size    # 32
# The 8 bytes every pair starts with: how a reader finds the next pair after a damaged index.
# They cannot overlap themselves (no proper suffix is a prefix), so two are at least 8 bytes apart.
PAIR_SYNC = struct.pack("<II", SKIPPABLE_MAGIC, INDEX.size)
# RFC 8878 section 3.1.1: a zstd frame starts with this magic, then its Frame_Header_Descriptor.
ZSTD_MAGIC = 0xFD2FB528
_ZSTD_HEADER_MAX_BYTES = 18             # magic 4, descriptor 1, window 1, dictionary id 4, size 8
_PROBE_BYTES = PAIR_HEADER_BYTES + _ZSTD_HEADER_MAX_BYTES

# Bounds that keep a damaged index from making a reader allocate or read without limit. The
# writer closes a frame before its content reaches MAX_FRAME_CONTENT_BYTES // 4.
MAX_FRAME_CONTENT_BYTES = 256 << 20
MAX_DATA_FRAME_BYTES = MAX_FRAME_CONTENT_BYTES + (1 << 20)
FRAME_CONTENT_LIMIT_BYTES = MAX_FRAME_CONTENT_BYTES // 4

FILE_SUFFIX = ".events.zst"
FILE_RE = re.compile(r"^(\d{4})-(\d{2})-(\d{2})\.events\.zst\Z")
FILE_MODE = 0o644
DIR_MODE = 0o755
MAX_OPEN_FILES = 4
_U64_MAX = (1 << 64) - 1
_SCAN_CHUNK_BYTES = 1 << 20


class LogDirError(OSError):
    """The log directory cannot be written safely; the message says why, for an operator."""


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
    """(date, path) of the day files in log_dir, oldest first; other names are ignored, and so
    is anything at a day file's name that is not a regular file (a symlink is not followed)."""
    found = []
    with os.scandir(log_dir) as entries:
        for entry in entries:
            day = file_date(entry.name)
            if day is not None and entry.is_file(follow_symlinks=False):
                found.append((day, entry.path))
    found.sort()
    return found


def day_files_in(dir_fd: int) -> list[tuple[datetime.date, str]]:
    """(date, name) of the day files in an open log directory, oldest first (see
    list_day_files); for a reader that reached the directory by descriptor."""
    found = []
    for name in set(os.listdir(dir_fd)):
        day = file_date(name)
        if day is None:
            continue
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            continue
        if stat.S_ISREG(st.st_mode):
            found.append((day, name))
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


def _zstd_header_plausible(raw: bytes, off: int, data_len: int, count: int) -> bool:
    """Whether raw[off:] starts a zstd frame header the writer could have written for a pair of
    data_len bytes and count records: checksum flag set, content size present and in bounds."""
    if len(raw) < off + 5 or struct.unpack_from("<I", raw, off)[0] != ZSTD_MAGIC:
        return False
    descriptor = raw[off + 4]
    size_flag = descriptor >> 6
    single_segment = descriptor >> 5 & 1
    if descriptor >> 3 & 1 or not descriptor >> 2 & 1:     # reserved bit set; no checksum
        return False
    if size_flag == 0 and not single_segment:               # no content size field
        return False
    at = off + 5 + (0 if single_segment else 1) + (0, 1, 2, 4)[descriptor & 3]
    size_bytes = (1, 2, 4, 8)[size_flag]
    if len(raw) < at + size_bytes:
        return False
    content = int.from_bytes(raw[at:at + size_bytes], "little") + (256 if size_bytes == 2 else 0)
    header_bytes = at + size_bytes - off
    # Every record is at least one byte of msgpack; a frame is its header, at least one block
    # header (3 bytes) and the checksum (4).
    return 0 < content <= MAX_FRAME_CONTENT_BYTES and count <= content and data_len >= header_bytes + 7


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


class _Walk:
    """One pass over the pairs of an open file (a descriptor) from `start` to the size seen at
    the start.

    `pairs(want, decoder)` yields (PairInfo, events-or-None): events when want(info) said to
    decode the pair, None when the pair was skipped by its index. Damaged pairs are skipped and
    counted in `corrupt`. When the walk ends, `resume` is where the next walk should start: the
    end of the file, or the start of an incomplete (or damaged, last) pair that may be completed
    or repaired later.

    Work stays linear in the bytes walked, whatever they hold: the search for the next pair reads
    the file forward in chunks and never rereads them (a probe is answered from the chunk), every
    probe reads at most 50 bytes, and a data frame is decompressed a second time only inside a
    pair that already failed (a damaged length hides the next pair inside it), within a budget of
    twice the bytes walked. `bytes_read` and `header_probes` count the work.
    """

    def __init__(self, fd: int, start: int, size: int | None = None):
        self.fd = fd
        self.start = start
        self.size = os.fstat(fd).st_size if size is None else size
        self.resume = start
        self.corrupt = 0
        self.torn = False
        self.bytes_read = 0
        self.header_probes = 0
        self.unchecked = 0      # pairs inside damage left undecoded once the budget was spent
        self._chunk = b""       # the file's bytes at [_chunk_at, _chunk_at + len(_chunk))
        self._chunk_at = 0
        self._ahead = b""       # the probe bytes read with the last data frame, at _ahead_at
        self._ahead_at = -1
        self._failed_end = start
        self._recheck_left = 2 * max(self.size - start, 0) + _SCAN_CHUNK_BYTES

    def _read_at(self, pos: int, n: int) -> bytes:
        at = pos - self._chunk_at
        if at >= 0 and at + n <= len(self._chunk):
            return self._chunk[at:at + n]
        if pos == self._ahead_at and n <= len(self._ahead):
            return self._ahead[:n]
        data = os.pread(self.fd, n, pos)
        self.bytes_read += len(data)
        return data

    def _read_frame(self, info: PairInfo) -> bytes:
        """The data frame of a pair, and (in the same read) the bytes the next probe at its end
        will want: one system call per pair on the way through a sound file."""
        pos = info.offset + PAIR_HEADER_BYTES
        data_len = info.end - pos
        at = pos - self._chunk_at
        if at >= 0 and at + data_len <= len(self._chunk):
            return self._chunk[at:at + data_len]
        data = os.pread(self.fd, data_len + _PROBE_BYTES, pos)
        self.bytes_read += len(data)
        self._ahead, self._ahead_at = data[data_len:], info.end
        return data[:data_len]

    def _header_at(self, pos: int, strict: bool = False):
        """The pair header at pos if it is structurally valid, else None. `strict` also checks
        the zstd frame header after it: for a candidate found by searching (or after damage),
        where a mere sync word must not pass for a pair; on the way through a sound file the
        decode checks the frame anyway."""
        self.header_probes += 1
        raw = self._read_at(pos, min(_PROBE_BYTES, self.size - pos))
        if len(raw) < PAIR_HEADER_BYTES:
            return None
        magic, frame_size, data_len, count, min_ts, max_ts = PAIR_HEADER.unpack_from(raw)
        if magic != SKIPPABLE_MAGIC or frame_size != INDEX.size:
            return None
        if not 0 < data_len <= MAX_DATA_FRAME_BYTES or count == 0 or min_ts > max_ts:
            return None
        if strict and not _zstd_header_plausible(raw, PAIR_HEADER_BYTES, data_len, count):
            return None
        return data_len, count, min_ts, max_ts

    def _next_sync(self, start: int) -> int | None:
        """Offset of the first PAIR_SYNC at or after start, or None.

        Calls come with non-decreasing starts within a walk, so the chunk read for one call
        serves the next ones: each byte is read once (plus 7 bytes of overlap per chunk)."""
        need = len(PAIR_SYNC)
        while start + need <= self.size:
            at = start - self._chunk_at
            if at < 0 or at + need > len(self._chunk):
                self._chunk = b""
                self._chunk = self._read_at(start, min(_SCAN_CHUNK_BYTES, self.size - start))
                self._chunk_at = start
                at = 0
                if len(self._chunk) < need:
                    return None                 # the file shrank under us
            i = self._chunk.find(PAIR_SYNC, at)
            if i >= 0:
                return self._chunk_at + i
            # None in this chunk; one could still start in its last 7 bytes.
            start = self._chunk_at + len(self._chunk) - (need - 1)
        return None

    def _resync(self, pos: int) -> int | None:
        """The next plausible pair after a damaged one at pos, or None if there is none."""
        probe = pos + 1
        while True:
            nxt = self._next_sync(probe)
            if nxt is None:
                return None
            header = self._header_at(nxt, strict=True)
            if header is not None and nxt + PAIR_HEADER_BYTES + header[0] <= self.size:
                return nxt
            probe = nxt + len(PAIR_SYNC)        # sync words never overlap

    def decode(self, info: PairInfo, decoder: _Decoder) -> list[Event] | None:
        """The events of the pair, or None when its data is damaged (or, inside a pair that
        already failed, when the budget for reading bytes twice is spent: then it is counted in
        `unchecked` rather than read)."""
        data_len = info.end - info.offset - PAIR_HEADER_BYTES
        if info.offset < self._failed_end:
            if data_len > self._recheck_left:
                self.unchecked += 1
                return None
            self._recheck_left -= data_len
        events = decoder.decode(self._read_frame(info), info.count)
        if events is None:
            # Pairs starting past here cost nothing extra: their bytes were never read for a
            # failed pair, so all such decodes together read each byte once.
            self._failed_end = max(self._failed_end, info.end)
        return events

    def pairs(self, want: Callable[[PairInfo], bool], decoder: _Decoder | None):
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
            events = self.decode(info, decoder)
            if events is None:
                if end == size:
                    # Complete length but bad content as the very last pair: torn by a crash
                    # (a filesystem may extend a file before its data lands); never an error.
                    self.torn = True
                    return
                self.corrupt += 1
                # Skip by the index length when a pair header sits there (only the data was
                # damaged); otherwise the length itself may be wrong: search instead.
                if self._header_at(end, strict=True) is not None:
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

    def index(self) -> list[PairInfo]:
        """The pairs from start by their index alone (nothing decompressed), in file order and
        never overlapping: a pair the search found another pair inside is dropped (its length
        was the damage)."""
        kept: list[PairInfo] = []
        for info, _ in self.pairs(_never, None):
            while kept and info.offset < kept[-1].end:
                kept.pop()
            kept.append(info)
        return kept


def _never(_info: PairInfo) -> bool:
    return False


class Examined(NamedTuple):
    """What examine() found in a file: whether it is an event log, and what a repair would cut."""
    size: int
    good_end: int         # the end of the last pair that decodes (0 when none does)
    event_log: bool       # False: not an event log at all (never to be truncated)
    what: str             # what lies after good_end, or why the file is not an event log


def _sync_prefix(head: bytes) -> bool:
    return len(head) > 0 and PAIR_SYNC.startswith(head[:len(PAIR_SYNC)])


def examine(fd: int) -> Examined:
    """Walk an open file by its index and decompress only the pairs at its end, back to the last
    one that decodes: where a repair would cut, what it would cut, and whether the file is an
    event log at all (empty, starting as a pair does, or holding a pair that decodes)."""
    decoder = _Decoder()
    walk = _Walk(fd, 0)
    infos = walk.index()
    size = walk.size
    good_end = 0
    damaged = 0
    # The pairs are disjoint, so decoding backwards reads each byte at most once.
    for info in reversed(infos):
        if decoder.decode(walk._read_at(info.offset + PAIR_HEADER_BYTES,
                                        info.end - info.offset - PAIR_HEADER_BYTES), info.count) is not None:
            good_end = info.end
            break
        damaged += 1
    head = os.pread(fd, len(PAIR_SYNC), 0)
    if size and good_end == 0 and not _sync_prefix(head):
        return Examined(size, 0, False, "it begins with bytes %s and holds no event frame"
                        % " ".join("%02x" % b for b in head[:8]))
    if good_end >= size:
        return Examined(size, good_end, True, "")
    parts = []
    rest_at = good_end
    if damaged:
        parts.append("%d complete pair(s) whose data fails its checksum" % damaged)
        rest_at = infos[-1].end
    if rest_at < size:
        if _sync_prefix(os.pread(fd, len(PAIR_SYNC), rest_at)):
            parts.append("an incomplete pair of %d bytes (a write cut short by a crash or a full "
                         "disk)" % (size - rest_at))
        else:
            parts.append("%d bytes that are not a pair" % (size - rest_at))
    return Examined(size, good_end, True, " and ".join(parts))


class NotAnEventLog(ValueError):
    pass


def repair_file(path: str) -> int:
    """Truncate a torn tail after the last good pair of path; returns the bytes dropped.

    Never drops a good pair: damage followed by good pairs is left for readers to skip. Raises
    NotAnEventLog (and changes nothing) for a file that is not an event log, and UnsafeFile for
    a symlink, a hard link or anything but a regular file.
    """
    dir_fd = open_dir(os.path.dirname(os.path.abspath(path)))
    try:
        fd = open_regular_in_dir(dir_fd, os.path.basename(path), os.O_RDWR)
    finally:
        os.close(dir_fd)
    try:
        found = examine(fd)
        if not found.event_log:
            raise NotAnEventLog("%s is not an event log: %s" % (path, found.what))
        if found.good_end >= found.size:
            return 0
        os.ftruncate(fd, found.good_end)
        os.fsync(fd)
        return found.size - found.good_end
    finally:
        os.close(fd)


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


def _identity(st: os.stat_result) -> tuple[int, int]:
    return st.st_dev, st.st_ino


def _stderr_warning(message: str) -> None:
    sys.stderr.write("[!] %s event log: %s\n" % (time.strftime("%Y-%m-%d %H:%M:%S"), message))


def _where_now(fd: int) -> str | None:
    """Where an open file or directory is now (after a rename), or None once it is deleted."""
    try:
        target = os.readlink("/proc/self/fd/%d" % fd)
    except OSError:
        return None
    return None if target.endswith(" (deleted)") else target


def open_log_dir(log_dir: str, trusted_uids=()) -> int:
    """A descriptor of log_dir, created (mode 0755) if absent, after the safety check of
    events/fsafety.py on the path and again on what was opened; raises LogDirError saying why."""
    problem = directory_problem(log_dir, trusted_uids)
    if problem is None:
        try:
            os.makedirs(log_dir, mode=DIR_MODE, exist_ok=True)
        except OSError as exc:
            raise LogDirError("cannot create the log directory %s: %s" % (log_dir, exc.strerror or exc)) from None
        # Directories makedirs made above it take the umask's mode: look at the chain again.
        problem = directory_problem(log_dir, trusted_uids)
    if problem is not None:
        raise LogDirError("refusing the log directory: %s" % problem)
    try:
        fd = open_dir(log_dir)
    except OSError as exc:
        raise LogDirError("cannot open the log directory %s: %s" % (log_dir, exc.strerror or exc)) from None
    problem = directory_fd_problem(fd, log_dir, trusted_uids)
    if problem is not None:
        os.close(fd)
        raise LogDirError("refusing the log directory: %s" % problem)
    return fd


class EventLogWriter:
    """Appends events to the day files of log_dir in indexed zstd frames.

    A frame per target file collects records and is closed (compressed and appended with one
    os.write) when it holds max_frame_records, when its oldest record has waited max_frame_age_s
    on `clock` (checked on every write() and tick()), or on flush()/close(). `clock` is
    time.monotonic unless a caller (a test) drives the age itself: packet time has nothing to
    do with how long a record has waited to be written.

    Files are opened relative to the log directory's descriptor, never through a symlink, and
    created exclusively; what is found at a day file's name and is not a regular single-link
    event log is moved aside. Everything worth an operator's attention (a repair, a file moved
    aside, a file or the directory gone) is one line to `warn` (default: stderr, "[!]" and the
    time). The log directory must pass events/fsafety.py's check (LogDirError otherwise), at
    start and whenever it is re-created; `trusted_uids` are the accounts besides root and this
    process that may own it.
    """

    def __init__(self, log_dir: str, max_frame_age_s: float = 1.0, max_frame_records: int = 4096,
                 level: int = 3, warn: Callable[[str], None] | None = None, trusted_uids=(),
                 reopen_dir: Callable[[], int] | None = None, clock: Callable[[], float] = time.monotonic):
        if max_frame_records < 1:
            raise ValueError("max_frame_records must be at least 1")
        self.log_dir = os.fspath(log_dir)
        self.max_frame_age_s = max_frame_age_s
        self.max_frame_records = max_frame_records
        self._clock = clock
        self.trusted_uids = tuple(trusted_uids)
        # Asked for a descriptor of the log directory (re-created and checked) when this process
        # cannot open it again itself: a writer that dropped its privileges may not be allowed to
        # make the directory, or even to walk the path to it (engine/processes/logwriter.py asks the
        # supervisor). Raises LogDirError.
        self._reopen_elsewhere = reopen_dir
        self._warn = warn if warn is not None else _stderr_warning
        self._dir_fd = open_log_dir(self.log_dir, self.trusted_uids)
        self._dir_id = _identity(os.fstat(self._dir_fd))
        self._cctx = zstandard.ZstdCompressor(level=level, write_checksum=True, write_content_size=True)
        self._packer = msgpack.Packer(use_bin_type=True)
        self._pending: dict[str, _Pending] = {}                     # by day file name
        self._handles: collections.OrderedDict[str, int] = collections.OrderedDict()
        # name -> (st_dev, st_ino) of the file this writer appends to under that name; kept after
        # its handle is closed, so a reopen knows the tail is its own and needs no repair.
        self._files: dict[str, tuple[int, int]] = {}
        self.frames_written = 0
        self.records_written = 0
        self.bytes_written = 0
        self.records_sanitized = 0
        self.repaired: list[tuple[str, int]] = []        # (path, bytes cut)
        self.moved_aside: list[tuple[str, str]] = []     # (path, where it went)
        self.files_reopened = 0     # day files found deleted, moved or replaced, started anew
        self.dirs_recreated = 0     # times the log directory was found gone and made again
        self._closed = False

    # -- buffering -------------------------------------------------------------------------
    def write(self, events: Iterable[Event]) -> None:
        if self._closed:
            raise ValueError("write to a closed EventLogWriter")
        now = self._clock()
        for event in events:
            record = event.to_record()
            try:
                packed = self._packer.pack(record)
            except UnicodeEncodeError:
                packed = self._packer.pack(_sanitize_record(record))
                self.records_sanitized += 1
            ts_us = event.ts_us
            name = file_name_for(ts_us)
            pending = self._pending.get(name)
            if pending is None:
                pending = self._pending[name] = _Pending(now)
            pending.records.append(packed)
            pending.content_bytes += len(packed)
            ts_index = _ts_index(ts_us)
            if ts_index < pending.min_ts_us:
                pending.min_ts_us = ts_index
            if ts_index > pending.max_ts_us:
                pending.max_ts_us = ts_index
            if (len(pending.records) >= self.max_frame_records
                    or pending.content_bytes >= FRAME_CONTENT_LIMIT_BYTES):
                self._close_frame(name)
        self.tick(now)

    def tick(self, now: float | None = None) -> int:
        """Close every frame whose oldest record has waited max_frame_age_s; returns how many.
        `now`: the writer's clock when not given."""
        if now is None:
            now = self._clock()
        due = [name for name, p in self._pending.items() if now - p.opened_at >= self.max_frame_age_s]
        for name in due:
            self._close_frame(name)
        return len(due)

    def flush(self) -> int:
        """Close every open frame now; returns how many."""
        names = list(self._pending)
        for name in names:
            self._close_frame(name)
        return len(names)

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

    @property
    def dir_fd(self) -> int:
        """The log directory as this writer holds it open (it may be re-opened: ask each time)."""
        return self._dir_fd

    def release(self, name: str) -> bool:
        """Lets go of the day file `name` so that it can be deleted (a spool, events/forwarders/
        spool.py): False while a frame for it is waiting (the file is about to grow); otherwise its
        handle is closed and forgotten, and a later event of that day starts a new file as any
        first event of a day does, without a warning."""
        if name in self._pending:
            return False
        fd = self._handles.pop(name, None)
        if fd is not None:
            os.close(fd)
        self._files.pop(name, None)
        return True

    # -- frames and files ------------------------------------------------------------------
    def _path(self, name: str) -> str:
        return os.path.join(self.log_dir, name)

    def _close_frame(self, name: str) -> None:
        pending = self._pending.pop(name)
        frame = self._cctx.compress(b"".join(pending.records))
        data = encode_pair(frame, len(pending.records), pending.min_ts_us, pending.max_ts_us)
        fd = self._writable(name)
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

    def _writable(self, name: str) -> int:
        """The descriptor to append the next frame of `name` to. An open one is checked with one
        lstat of its path, which fails or shows another file when the file or the directory was
        deleted, moved or replaced (a log cleaner): appending there would lose every event."""
        fd = self._handles.get(name)
        if fd is not None:
            st = self._entry_stat(name)
            if st is not None and _identity(st) == self._files.get(name):
                self._handles.move_to_end(name)
                return fd
            self._lost(name, st)
        return self._open(name)

    def _entry_stat(self, name: str):
        """lstat of the day file's path, or None when nothing is there. A writer that dropped to
        an account that cannot walk the path down to the directory (it opened the directory
        before) looks from the directory instead: a deleted directory, or what is at the name."""
        try:
            return os.stat(self._path(name), follow_symlinks=False)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except PermissionError:
            if os.fstat(self._dir_fd).st_nlink == 0:
                return None
            try:
                return os.stat(name, dir_fd=self._dir_fd, follow_symlinks=False)
            except FileNotFoundError:
                return None

    def _dir_changed(self) -> bool:
        try:
            return _identity(os.stat(self.log_dir)) != self._dir_id
        except (FileNotFoundError, NotADirectoryError):
            return True
        except PermissionError:     # see _entry_stat: only a deletion can be seen from here
            return os.fstat(self._dir_fd).st_nlink == 0

    def _lost(self, name: str, st) -> None:
        """The open file at `name` is no longer what the path leads to: say what happened."""
        fd = self._handles.pop(name)
        self._files.pop(name, None)
        links = os.fstat(fd).st_nlink
        where = _where_now(fd)
        os.close(fd)
        if self._dir_changed():
            self._reopen_dir()
            return
        path = self._path(name)
        if links == 0:
            what = "was deleted while open (a log cleaner?); the frames already in it went with it"
        elif st is None:
            what = "was moved away while open (it is now %s)" % (where or "elsewhere")
        else:
            what = "was replaced by another file while open (the old one is now %s)" % (where or "elsewhere")
        self.files_reopened += 1
        self._warn("%s %s; new events go to a new %s" % (path, what, path))

    def _reopen_dir(self) -> None:
        """The log directory at our path is gone or another one: open (or re-create) it, after the
        same safety check as at start, and forget every handle into the old one."""
        old = self._dir_fd
        deleted = os.fstat(old).st_nlink == 0
        where = _where_now(old)
        while self._handles:
            _, fd = self._handles.popitem(last=False)
            os.close(fd)
        self._files.clear()
        existed = os.path.lexists(self.log_dir)
        try:
            self._dir_fd = open_log_dir(self.log_dir, self.trusted_uids)     # LogDirError if unsafe
        except LogDirError:
            if self._reopen_elsewhere is None:
                raise
            self._dir_fd = self._reopen_elsewhere()
        os.close(old)
        self._dir_id = _identity(os.fstat(self._dir_fd))
        self.dirs_recreated += 1
        if deleted:
            what = "was deleted while the sensor ran"
        else:
            what = "was moved away while the sensor ran (it is now %s)" % (where or "elsewhere")
        self._warn("log directory %s %s; %s it and go on writing there" % (
            self.log_dir, what, "found a new one at its path, checked" if existed else "re-created"))

    def _open(self, name: str) -> int:
        if self._dir_changed():         # one stat per file opened, not per frame
            self._reopen_dir()
        path = self._path(name)
        known = self._files.pop(name, None)
        for _attempt in range(4):
            try:
                fd = create_in_dir(self._dir_fd, name, os.O_WRONLY | os.O_APPEND, FILE_MODE)
                created = True
            except FileExistsError:
                try:
                    fd = open_regular_in_dir(self._dir_fd, name, os.O_RDWR | os.O_APPEND)
                except FileNotFoundError:
                    continue            # removed in between: create it
                except UnsafeFile as exc:
                    self._move_aside(name, "%s %s" % (path, exc.reason))
                    continue
                created = False
            ident = _identity(os.fstat(fd))
            if known is not None and ident != known:
                self.files_reopened += 1
                self._warn("%s was %s since this writer last appended to it; new events go to %s%s"
                           % (path, "deleted" if created else "replaced", "a new " if created else "", path))
            if not created and ident != known:
                # A file this writer did not write last: its tail may be torn, or it may not be
                # an event log at all.
                fd = self._adopt(name, fd)
                if fd is None:
                    continue
            self._files[name] = ident
            self._handles[name] = fd
            while len(self._handles) > MAX_OPEN_FILES:
                _, old = self._handles.popitem(last=False)
                os.close(old)
            return fd
        raise OSError(errno.EAGAIN, "%s keeps changing under the log writer; giving up on it" % path)

    def _adopt(self, name: str, fd: int) -> int | None:
        """Repair the tail of an existing day file (saying what was cut), or move it aside when it
        is not an event log; returns the descriptor to append to, or None (moved aside)."""
        path = self._path(name)
        try:
            found = examine(fd)
            if not found.event_log:
                os.close(fd)
                fd = None
                self._move_aside(name, "%s is not an event log (%s)" % (path, found.what))
                return None
            if found.good_end < found.size:
                os.ftruncate(fd, found.good_end)
                os.fsync(fd)
                self.repaired.append((path, found.size - found.good_end))
                self._warn("repaired %s: cut %d bytes after offset %d: %s" % (
                    path, found.size - found.good_end, found.good_end, found.what))
            return fd
        except BaseException:
            if fd is not None:
                os.close(fd)
            raise

    def _move_aside(self, name: str, why: str) -> None:
        aside = move_aside(self._dir_fd, name)
        self.moved_aside.append((self._path(name), self._path(aside)))
        self._warn("%s: moved it aside to %s without writing to it; new events go to a new %s"
                   % (why, self._path(aside), self._path(name)))


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


def _open_for_reading(path: str, dir_fd: int | None = None) -> int:
    """A read descriptor of a day file (a path, or a name in `dir_fd`): never through a symlink,
    never blocking on a FIFO; FileNotFoundError for anything that is not a regular file (it is
    not a day file)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno != errno.ELOOP:
            raise
        raise FileNotFoundError(errno.ENOENT, "a symbolic link", path) from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise FileNotFoundError(errno.ENOENT, "not a regular file", path)
    return fd


def open_day_file(dir_fd: int, name: str) -> int:
    """A read descriptor of the day file `name` in an open log directory (see _open_for_reading)."""
    return _open_for_reading(name, dir_fd)


class PairReader:
    """The complete pairs of an open day file from a pair boundary on, decoded, for a reader that
    keeps its own place (a forwarder): `pairs()` yields (PairInfo, events); damaged pairs are
    skipped (counted in `corrupt`), and `resume` is where the next read should start (the end,
    or a pair still being written)."""

    def __init__(self, fd: int, start: int, decoder: "_Decoder | None" = None):
        self._walk = _Walk(fd, start)
        self._decoder = decoder or _Decoder()

    def pairs(self) -> Iterator[tuple[PairInfo, list[Event]]]:
        for info, events in self._walk.pairs(_always, self._decoder):
            if events is not None:
                yield info, events

    @property
    def resume(self) -> int:
        return self._walk.resume

    @property
    def corrupt(self) -> int:
        return self._walk.corrupt

    @property
    def size(self) -> int:
        return self._walk.size


def _always(_info: PairInfo) -> bool:
    return True


class FollowFrom(NamedTuple):
    """Where follow() goes on in one file: the inode, an offset, and whether the offset is known
    to be a pair boundary (False: only that every pair ending at or before it was seen)."""
    inode: int
    offset: int
    exact: bool


class EventLogReader:
    """Reads events back from day files; tolerant of a writer appending at the same time."""

    def __init__(self):
        self._decoder = _Decoder()
        self.corrupt_frames = 0      # damaged pairs skipped (not counting a torn tail)
        self.frames_read = 0         # pairs decompressed
        self.frames_skipped = 0      # pairs skipped by their index (outside the time range)
        self.bytes_read = 0          # bytes read from day files, and probes for a pair header:
        self.header_probes = 0       # the work done, linear in the bytes of the files
        self.unchecked_frames = 0    # pairs inside damage left unread (see _Walk)

    def _account(self, walk: _Walk) -> None:
        self.bytes_read += walk.bytes_read
        self.header_probes += walk.header_probes
        self.unchecked_frames += walk.unchecked
        walk.bytes_read = walk.header_probes = walk.unchecked = 0

    def iter_file(self, path: str, since_us: int | None = None,
                  until_us: int | None = None) -> Iterator[Event]:
        """Events of one file in written order, those with since_us <= ts_us <= until_us."""
        fd = _open_for_reading(path)
        try:
            yield from self._read_from(fd, 0, since_us, until_us)[1]
        finally:
            os.close(fd)

    def _read_from(self, fd: int, start: int, since_us, until_us):
        walk = _Walk(fd, start)
        return walk, self._events(walk, since_us, until_us)

    def _events(self, walk: _Walk, since_us, until_us) -> Iterator[Event]:
        want = _range_filter(since_us, until_us)
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
            self._account(walk)

    def iter_dir(self, log_dir: str, since_us: int | None = None,
                 until_us: int | None = None) -> Iterator[Event]:
        """Events of every day file in date order (written order within a file), in range."""
        for _day, path in _files_in_range(log_dir, since_us, until_us):
            try:
                yield from self.iter_file(path, since_us, until_us)
            except FileNotFoundError:
                continue    # removed (retention) between listing and opening

    def last(self, log_dir: str, n: int, since_us: int | None = None, until_us: int | None = None
             ) -> tuple[list[Event], dict[str, FollowFrom]]:
        """The last n events iter_dir would yield (in the same order), and where follow() should
        go on from in every day file of the range.

        Reads the newest files' indexes (nothing decompressed) and decompresses pairs from the
        end only until n events are found; older files are not read at all."""
        want = _range_filter(since_us, until_us)
        chunks: list[list[Event]] = []
        need = n
        positions: dict[str, FollowFrom] = {}
        newest = True
        try:
            files = _files_in_range(log_dir, since_us, until_us)
        except FileNotFoundError:
            files = []          # the directory went away (a cleaner): nothing to show yet
        for _day, path in reversed(files):
            try:
                fd = _open_for_reading(path)
            except FileNotFoundError:
                continue
            try:
                st = os.fstat(fd)
                if need <= 0 and not newest:
                    # Everything in it comes before the last n; a pair being appended right now
                    # (ending past this size) is found when the file grows (see follow).
                    positions[path] = FollowFrom(st.st_ino, st.st_size, False)
                    continue
                newest = False
                walk = _Walk(fd, 0, st.st_size)
                infos = walk.index()
                resume = walk.resume
                for i, info in enumerate(reversed(infos)):
                    # The last pair is decoded even when no event is needed from it: complete in
                    # length but not in content, it is a tail still being written, to re-read.
                    last_pair = i == 0 and info.end == walk.size
                    if need <= 0 and not last_pair:
                        break
                    if not want(info) and not last_pair:
                        self.frames_skipped += 1
                        continue
                    events = walk.decode(info, self._decoder)
                    if events is None:
                        if last_pair:
                            resume = info.offset
                        else:
                            self.corrupt_frames += 1
                        continue
                    self.frames_read += 1
                    if need > 0 and want(info):
                        matching = [e for e in events if (since_us is None or e.ts_us >= since_us)
                                    and (until_us is None or e.ts_us <= until_us)]
                        if matching:
                            chunk = matching[-need:]
                            chunks.append(chunk)
                            need -= len(chunk)
                self.corrupt_frames += walk.corrupt
                self._account(walk)
                positions[path] = FollowFrom(st.st_ino, resume, True)
            finally:
                os.close(fd)
        return [e for chunk in reversed(chunks) for e in chunk], positions

    def _pair_ending_after(self, fd: int, offset: int) -> int:
        """Where the first pair ending after `offset` starts: the place to go on from in a file
        known only to have been seen up to `offset` (see FollowFrom)."""
        walk = _Walk(fd, 0)
        infos = walk.index()
        self._account(walk)
        for info in infos:
            if info.end > offset:
                return info.offset
        return walk.resume

    def follow(self, log_dir: str, since_us: int | None = None, poll_s: float = 0.2,
               stop=None, until_us: int | None = None,
               start: dict[str, FollowFrom] | None = None) -> Iterator[Event]:
        """The events already in log_dir (from since_us), then new ones as they are appended,
        including to day files that appear later. Ends when stop (a threading.Event or a
        callable returning true) is set; checked at least every poll_s. `start` (from last())
        says where to begin in files already seen; other files are read from their start."""
        positions: dict[str, FollowFrom] = dict(start or {})
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
                    fd = _open_for_reading(path)
                except FileNotFoundError:
                    continue
                try:
                    st = os.fstat(fd)
                    seen = positions.get(path, FollowFrom(st.st_ino, 0, True))
                    offset = seen.offset
                    if seen.inode != st.st_ino or st.st_size < offset:
                        seen, offset = FollowFrom(st.st_ino, 0, True), 0   # replaced: read it whole
                    if st.st_size == offset:
                        positions[path] = seen
                        continue
                    if not seen.exact:
                        offset = self._pair_ending_after(fd, offset)
                    walk, events = self._read_from(fd, offset, since_us, until_us)
                    yield from events
                    positions[path] = FollowFrom(st.st_ino, walk.resume, True)
                finally:
                    os.close(fd)
                if _is_set(stop):
                    return
            for path in list(positions):
                if path not in present:
                    del positions[path]
            if _is_set(stop):
                return
            _wait(stop, poll_s)


def _range_filter(since_us, until_us) -> Callable[[PairInfo], bool]:
    lo = None if since_us is None else _ts_index(since_us)
    hi = None if until_us is None else _ts_index(until_us)

    def want(info: PairInfo) -> bool:
        # The index is clamped to u64, so compare against clamped bounds.
        if lo is not None and info.max_ts_us < lo:
            return False
        if hi is not None and info.min_ts_us > hi:
            return False
        return True
    return want


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
