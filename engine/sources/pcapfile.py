"""Capture files as batches of frames: the native pcap / pcapng reader.

Owns the on-disk capture formats: classic pcap (microsecond and nanosecond magic, either byte
order, plus the Kuznetzov variant that libpcap also reads) and pcapng (sections in either byte
order; per-interface link type, snap length, if_tsresol and if_tsoffset; Enhanced, Simple and
obsolete Packet Blocks; every other block skipped by its length). It hands out FrameBatch objects
and must not look inside a frame, nor know what happens to a batch next.

Error policy: a file whose header is not a capture header, or that cannot be read as far as its
header, raises CaptureFileError when the reader is opened. Damage later in the file (a record cut
short by the end of the file, a block whose lengths disagree) ends reading at that point and is
counted (`truncated_records`, `bad_blocks`) with a short note; it never raises, so a damaged
capture still yields every frame before the damage. A read that fails after the header (an I/O
error: the bytes are there but cannot be had) is not damage: the frames before it are handed out
first, then read_batch raises CaptureFileError, as LibpcapFileReader does when libpcap gives up.

What libpcap reads, this reader reads, frame for frame (tests/test_pcapfile.py holds it to libpcap
on the corpus and on constructed files). libpcap tolerates a first section header whose length is
not a multiple of 4 or whose trailing length disagrees with its leading one (it never reads the
trailer): so does this reader, going on from the leading length, with a note. Where libpcap stops
on a well-formed file (interfaces that differ in link type or snap length, a section in the other
byte order) or on lesser damage (a Simple Packet Block shorter than its packet, a frame over its
interface's snap length), this reader reads on.

The record walkers (`_walk_pcap`, `_walk_pcapng`) take the read buffer, a position and a frame
budget, append frames to a FrameBatchBuilder and report how many bytes the next record needs:
that is the whole interface a C walker has to implement later.
"""

from __future__ import annotations

import os
import stat
import struct
import sys

from workers.batch import FrameBatch, FrameBatchBuilder

__all__ = ["CaptureFileError", "PcapFileReader", "open_capture"]

# Classic pcap magic numbers as read in the file's own byte order.
_PCAP_MAGIC_US = 0xA1B2C3D4
_PCAP_MAGIC_NS = 0xA1B23C4D
_PCAP_MAGIC_KUZNETZOV = 0xA1B2CD34     # "modified" pcap: 24-byte record headers, microseconds
_PCAP_MAGICS = (_PCAP_MAGIC_US, _PCAP_MAGIC_NS, _PCAP_MAGIC_KUZNETZOV)

# pcapng block types. The SHB type reads the same in both byte orders on purpose (\n\r\r\n).
_BT_SHB = 0x0A0D0D0A
_BT_IDB = 0x00000001
_BT_PB = 0x00000002                   # obsolete Packet Block
_BT_SPB = 0x00000003
_BT_EPB = 0x00000006
_SHB_RAW = b"\n\r\r\n"
_BOM_LITTLE = b"\x4d\x3c\x2b\x1a"     # byte-order magic 0x1A2B3C4D written little-endian
_BOM_BIG = b"\x1a\x2b\x3c\x4d"
_OPT_ENDOFOPT = 0
_IF_TSRESOL = 9
_IF_TSOFFSET = 14

_BLOCK_NAMES = {
    0x00000004: "name resolution",
    0x00000005: "interface statistics",
    0x00000009: "systemd journal export",
    0x0000000A: "decryption secrets",
    0x00000BAD: "custom",
    0x40000BAD: "custom (do not copy)",
}

# libpcap's sanity limits, kept so both readers agree on what counts as a garbled record:
# a capture length above the link type's maximum snap length is damage, not a big packet.
_MAX_SNAPLEN_BYTES = 262144
_MAX_SNAPLEN_BY_LINKTYPE = {
    231: 128 * 1024 * 1024,           # D-Bus messages
    249: 1024 * 1024,                 # USBPcap
    279: 8 * 1024 * 1024,             # EBHSCR
}
_MAX_SHB_BYTES = 1024 * 1024
_INITIAL_MAX_BLOCK_BYTES = 16 * 1024 * 1024
_EPB_OPTIONS_ALLOWANCE_BYTES = 131072 + 32

_READ_CHUNK_BYTES = 1 << 20
_NS_PER_S = 1_000_000_000
_TS_MIN_NS = -(1 << 63)
_TS_MAX_NS = (1 << 63) - 1

_U32_LE = struct.Struct("<I")
_U32_BE = struct.Struct(">I")


class CaptureFileError(Exception):
    """The file cannot be read as a capture; the message names the file and the problem."""


def _max_snaplen(linktype: int) -> int:
    return _MAX_SNAPLEN_BY_LINKTYPE.get(linktype, _MAX_SNAPLEN_BYTES)


def _adjusted_snaplen(linktype: int, snaplen: int) -> int:
    """The snap length libpcap would use: 0 or an absurd value means the link type's maximum."""
    limit = _max_snaplen(linktype)
    return snaplen if 0 < snaplen <= limit else limit


def _tsresol_scale(tsresol: int) -> tuple[int, int]:
    """(mul, div) turning pcapng timestamp units into nanoseconds: ns = units * mul // div.

    The high bit selects a negative power of two, otherwise a negative power of ten
    (pcapng if_tsresol). Flooring matches libpcap for every resolution finer than 1 ns.
    """
    if tsresol & 0x80:
        return _NS_PER_S, 1 << (tsresol & 0x7F)
    exponent = tsresol
    if exponent <= 9:
        return 10 ** (9 - exponent), 1
    return 1, 10 ** (exponent - 9)


def start_reader_counters(reader, path, snaplen_bytes: int | None, format_name: str) -> None:
    """The attributes every capture file reader reports (this one and engine.sources.live's
    LibpcapFileReader), zeroed, with the snap length checked."""
    if snaplen_bytes is not None and snaplen_bytes <= 0:
        raise ValueError("snaplen_bytes must be positive, got %r" % (snaplen_bytes,))
    reader.path = os.fspath(path)
    reader.name = os.path.basename(reader.path)
    reader.format = format_name
    reader.frames = 0
    reader.truncated_records = 0
    reader.bad_blocks = 0
    reader.skipped_blocks = 0
    reader.notes = []
    reader._snaplen_bytes = snaplen_bytes


class PcapFileReader:
    """Reads a pcap or pcapng file as FrameBatch objects, `max_frames` at a time.

    Attributes after (and during) reading: `frames` delivered, `truncated_records` (the file
    ended inside a record or block), `bad_blocks` (a record or block that contradicts itself),
    `skipped_blocks` (pcapng blocks that carry no frames), `notes` (short strings, at most one
    per kind of event), `format` ("pcap", "pcap-ns", "pcap-kuznetzov" or "pcapng").
    """

    def __init__(self, path, snaplen_bytes: int | None = None):
        start_reader_counters(self, path, snaplen_bytes, "")
        self._noted: set = set()
        self._buf = b""
        self._pos = 0
        self._buf_offset = 0          # file offset of _buf[0], for notes
        self._eof = False
        self._done = False
        self._read_error: CaptureFileError | None = None   # raised once the frames before it are out
        self._linktype: int | None = None
        try:
            self._file = open(self.path, "rb")
        except OSError as exc:
            raise CaptureFileError("%s: cannot open: %s" % (self.name, exc.strerror or exc)) from None
        try:
            self._open_header()
        except BaseException:
            self.close()
            raise

    # -- public interface -------------------------------------------------------------------

    @property
    def linktype(self) -> int | None:
        """Link type of the file (pcap) or of its first interface (pcapng; None if it has none)."""
        return self._linktype

    def read_batch(self, max_frames: int = 1024) -> FrameBatch | None:
        """The next up to `max_frames` frames, or None once the file is exhausted.

        Raises CaptureFileError once, after the frames before it, when reading the file failed.
        """
        if max_frames <= 0:
            raise ValueError("max_frames must be positive, got %r" % (max_frames,))
        if self._done:
            self._raise_read_error()
            return None
        builder = FrameBatchBuilder()
        self._pump(builder, max_frames)
        if not len(builder):
            self._raise_read_error()
            return None
        self.frames += len(builder)
        return builder.take()

    def _raise_read_error(self) -> None:
        error, self._read_error = self._read_error, None
        if error is not None:
            raise error

    def __iter__(self):
        while True:
            batch = self.read_batch()
            if batch is None:
                return
            yield batch

    def hand_over_records(self) -> dict:
        """For a classic pcap file whose header was read: what a record walker outside this class
        (the capture process's C walker) needs to go on from the first unread record — the record
        layout, the open stream, and the bytes already read but not walked with their file offset.
        The reader must not read again afterwards."""
        if self.format not in ("pcap", "pcap-ns", "pcap-kuznetzov"):
            raise ValueError("%s: only classic pcap records can be handed over" % self.name)
        rec = self._rec_struct
        return {"stream": self._file, "pending": bytes(self._buf[self._pos:]), "offset": self._buf_offset + self._pos,
                "record": rec, "byte_swapped": (rec.format[0] == "<") != (sys.byteorder == "little"),
                "nanosecond": self._ts_frac_ns == 1, "linktype": self._linktype, "snaplen_cut": self._cut_bytes,
                "max_caplen": self._max_caplen, "swap_lengths": self._swap_lengths,
                "file_snaplen": self._file_snaplen, "notes": list(self.notes)}

    def close(self) -> None:
        self._done = True
        self._buf = b""
        self._pos = 0
        if getattr(self, "_file", None) is not None:
            self._file.close()
            self._file = None

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    # -- buffering --------------------------------------------------------------------------

    def _fill(self, need: int) -> bool:
        """Make at least `need` unread bytes available; False when the file ends first."""
        have = len(self._buf) - self._pos
        if have >= need:
            return True
        if self._eof or self._file is None:
            return False
        chunks = [self._buf[self._pos:]]
        self._buf_offset += self._pos
        failed = None
        while have < need:
            # read1: one read(2) at most, so a pipe or FIFO hands over what it has (read() would wait
            # for a whole chunk); a regular file gives full chunks either way
            try:
                data = self._file.read1(max(_READ_CHUNK_BYTES, need - have))
            except OSError as exc:
                failed = CaptureFileError("%s: read error at byte %d: %s"
                                          % (self.name, self._buf_offset + have, exc.strerror or exc))
                self._eof = True
                break
            if not data:
                self._eof = True
                break
            chunks.append(data)
            have += len(data)
        self._buf = b"".join(chunks)
        self._pos = 0
        if failed is not None:
            # What was read before the failure holds no whole record (the loop reads only until
            # the one record in hand is complete), so nothing readable is lost here.
            raise failed
        return have >= need

    def _pump(self, builder: FrameBatchBuilder, max_frames: int, stop_after_idb: bool = False) -> None:
        """Walk records until the budget is used, the file ends or damage stops reading."""
        while not self._done:
            need = self._walk(builder, max_frames - len(builder), stop_after_idb)
            if need == 0:
                return
            try:
                filled = self._fill(need)
            except CaptureFileError as exc:
                # Not damage in the file: the frames walked so far go out, the error after them.
                self._read_error = exc
                self._done = True
                self._buf = b""
                self._pos = 0
                return
            if not filled:
                self._end_of_data(need)
                return

    def _end_of_data(self, need: int) -> None:
        left = len(self._buf) - self._pos
        if left:
            self.truncated_records += 1
            self._note("truncated", "truncated at byte %d: the file ends %d bytes into a %d-byte %s"
                       % (self._buf_offset + self._pos, left, need,
                          "block" if self.format == "pcapng" else "record"))
        self._done = True
        self._buf = b""
        self._pos = 0

    def _note(self, kind, text: str) -> None:
        # One note per kind: notes describe the file, they are not a per-packet log.
        if kind not in self._noted:
            self._noted.add(kind)
            self.notes.append(text)

    def _bad(self, pos: int, text: str) -> None:
        self.bad_blocks += 1
        self._note("bad", "stopped at byte %d: %s" % (self._buf_offset + pos, text))
        self._done = True

    # -- headers ----------------------------------------------------------------------------

    def _open_header(self) -> None:
        if not self._fill(4):
            size = len(self._buf)
            if size == 0:
                raise CaptureFileError("%s: empty file, not a pcap or pcapng capture" % self.name)
            raise CaptureFileError("%s: truncated file header (%d bytes)" % (self.name, size))
        raw = self._buf[:4]
        if raw == _SHB_RAW:
            self._open_pcapng()
            return
        if _U32_LE.unpack(raw)[0] in _PCAP_MAGICS:
            self._open_pcap("<")
        elif _U32_BE.unpack(raw)[0] in _PCAP_MAGICS:
            self._open_pcap(">")
        else:
            raise CaptureFileError("%s: not a pcap or pcapng file (magic 0x%s)" % (self.name, raw.hex()))

    def _open_pcap(self, order: str) -> None:
        if not self._fill(24):
            raise CaptureFileError("%s: truncated file header (%d of 24 bytes)" % (self.name, len(self._buf)))
        magic, major, minor, _zone, _sigfigs, snaplen, network = struct.unpack_from(order + "IHHiIII", self._buf, 0)
        # Versions libpcap reads: 2.0-2.4, and 543.0 from DG/UX tcpdump.
        if not ((major == 2 and minor <= 4) or (major == 543 and minor == 0)):
            raise CaptureFileError("%s: unsupported pcap version %d.%d" % (self.name, major, minor))
        # The upper six bits of the link-type field carry FCS information, not the link type.
        linktype = network & 0x03FFFFFF
        if linktype > 0xFFFF:
            raise CaptureFileError("%s: link type %d out of range" % (self.name, linktype))
        self._linktype = linktype
        self._file_snaplen = _adjusted_snaplen(linktype, snaplen)
        if magic == _PCAP_MAGIC_KUZNETZOV:
            self.format = "pcap-kuznetzov"
            self._rec_struct = struct.Struct(order + "IIII8x")
            if linktype == 1:
                # libpcap assumes such files came from cooked captures with a fake 14-byte
                # Ethernet header on top of the snap length.
                self._file_snaplen += 14
        else:
            self.format = "pcap-ns" if magic == _PCAP_MAGIC_NS else "pcap"
            self._rec_struct = struct.Struct(order + "IIII")
        self._ts_frac_ns = 1 if magic == _PCAP_MAGIC_NS else 1000
        self._max_caplen = max(_max_snaplen(linktype), self._file_snaplen)
        self._cut_bytes = self._file_snaplen if self._snaplen_bytes is None else min(self._file_snaplen, self._snaplen_bytes)
        # caplen and len traded places in version 2.3; files claiming 2.3 may hold either order.
        if major == 543 or minor < 3:
            self._swap_lengths = 2
        elif minor == 3:
            self._swap_lengths = 1
        else:
            self._swap_lengths = 0
        self._pos = 24
        self._walk = self._walk_pcap

    def _open_pcapng(self) -> None:
        if not self._fill(12):
            raise CaptureFileError("%s: truncated pcapng section header (%d bytes)" % (self.name, len(self._buf)))
        order = self._bom_order(self._buf, 0)
        if order is None:
            raise CaptureFileError("%s: not a pcap or pcapng file (pcapng byte-order magic 0x%s)"
                                   % (self.name, self._buf[8:12].hex()))
        length = struct.unpack_from(order + "I", self._buf, 4)[0]
        # libpcap's limits for the first section header: its fixed part, at most 1 MiB.
        if length < 28 or length > _MAX_SHB_BYTES:
            raise CaptureFileError("%s: pcapng section header has a bad length %d" % (self.name, length))
        if not self._fill(length):
            raise CaptureFileError("%s: truncated pcapng section header (%d of %d bytes)"
                                   % (self.name, len(self._buf), length))
        major, minor = struct.unpack_from(order + "HH", self._buf, 12)
        if major != 1:
            raise CaptureFileError("%s: unsupported pcapng version %d.%d" % (self.name, major, minor))
        # libpcap reads the first section header by its leading length alone: a length that is not
        # a multiple of 4, or a trailing length that disagrees, does not stop it. Read on from the
        # leading length as it does, and say so (a later section header is an ordinary block: there
        # both readers stop, _walk_pcapng below).
        if length % 4:
            self._note("shb-length", "the section header length %d is not a multiple of 4; read on from it,"
                       " as libpcap does" % length)
        trailer = struct.unpack_from(order + "I", self._buf, length - 4)[0]
        if trailer != length:
            self._note("shb-trailer", "the section header's trailing length %d disagrees with its leading length"
                       " %d; read on from the leading one, as libpcap does" % (trailer, length))
        self.format = "pcapng"
        self._order = order
        self._ifaces: list[tuple] = []
        self._max_block = _INITIAL_MAX_BLOCK_BYTES
        self._pos = length
        self._walk = self._walk_pcapng
        # Read up to the first interface description so `linktype` is known before any batch.
        self._pump(FrameBatchBuilder(), 0, stop_after_idb=True)

    @staticmethod
    def _bom_order(buf: bytes, pos: int) -> str | None:
        bom = buf[pos + 8:pos + 12]
        if bom == _BOM_LITTLE:
            return "<"
        if bom == _BOM_BIG:
            return ">"
        return None

    # -- record walkers ---------------------------------------------------------------------

    def _walk_pcap(self, builder: FrameBatchBuilder, budget: int, stop_after_idb: bool = False) -> int:
        """Append up to `budget` records; return 0 when done or the budget is used, else the
        number of unread bytes the next record needs."""
        buf = self._buf
        view = memoryview(buf)
        pos = self._pos
        end = len(buf)
        unpack = self._rec_struct.unpack_from
        hdr_bytes = self._rec_struct.size
        frac_ns = self._ts_frac_ns
        linktype = self._linktype
        cut = self._cut_bytes
        file_snaplen = self._file_snaplen
        max_caplen = self._max_caplen
        swap_lengths = self._swap_lengths
        add = builder.add
        need = 0
        n = 0
        while n < budget:
            if end - pos < hdr_bytes:
                need = hdr_bytes
                break
            sec, frac, caplen, wirelen = unpack(buf, pos)
            if swap_lengths and (swap_lengths == 2 or caplen > wirelen):
                caplen, wirelen = wirelen, caplen
            if caplen > max_caplen:
                self._bad(pos, "record %d claims %d captured bytes (limit %d)"
                          % (self.frames + len(builder) + 1, caplen, max_caplen))
                break
            if end - pos - hdr_bytes < caplen:
                need = hdr_bytes + caplen
                break
            start = pos + hdr_bytes
            if caplen > cut:
                if caplen > file_snaplen:
                    self._note("over-snaplen", "records longer than the file's snap length %d were cut to it,"
                               " as libpcap does" % file_snaplen)
                add(view[start:start + cut], sec * _NS_PER_S + frac * frac_ns, linktype,
                    wirelen if wirelen > caplen else caplen)
            else:
                add(view[start:start + caplen], sec * _NS_PER_S + frac * frac_ns, linktype,
                    wirelen if wirelen > caplen else caplen)
            pos = start + caplen
            n += 1
        self._pos = pos
        return need

    def _walk_pcapng(self, builder: FrameBatchBuilder, budget: int, stop_after_idb: bool = False) -> int:
        """Walk blocks, appending up to `budget` frames; same return contract as _walk_pcap.

        Non-frame blocks are consumed even when the budget is used up; the walk stops in front
        of the first packet block that does not fit the budget.
        """
        buf = self._buf
        view = memoryview(buf)
        pos = self._pos
        end = len(buf)
        order = self._order
        ifaces = self._ifaces
        add = builder.add
        need = 0
        n = 0
        while True:
            if end - pos < 12:
                need = 12
                break
            if buf[pos:pos + 4] == _SHB_RAW:
                # A new section may switch byte order; its byte-order magic says which.
                shb_order = self._bom_order(buf, pos)
                if shb_order is None:
                    self._bad(pos, "section header with a bad byte-order magic 0x%s" % buf[pos + 8:pos + 12].hex())
                    break
                btype, blen = struct.unpack_from(shb_order + "II", buf, pos)
            else:
                shb_order = None
                btype, blen = struct.unpack_from(order + "II", buf, pos)
            if blen < 12 or blen % 4:
                self._bad(pos, "block type 0x%x has a bad length %d" % (btype, blen))
                break
            if blen > self._max_block:
                self._bad(pos, "block type 0x%x claims %d bytes (limit %d)" % (btype, blen, self._max_block))
                break
            if end - pos < blen:
                need = blen
                break
            if struct.unpack_from((shb_order or order) + "I", buf, pos + blen - 4)[0] != blen:
                self._bad(pos, "block type 0x%x: lengths in header and trailer disagree" % btype)
                break
            body_bytes = blen - 12

            if btype == _BT_EPB or btype == _BT_PB:
                if n >= budget:
                    break
                if body_bytes < 20:
                    self._bad(pos, "packet block too short (%d bytes)" % blen)
                    break
                if btype == _BT_EPB:
                    iface, ts_high, ts_low, caplen, wirelen = struct.unpack_from(order + "IIIII", buf, pos + 8)
                else:
                    iface, _drops, ts_high, ts_low, caplen, wirelen = struct.unpack_from(order + "HHIIII", buf, pos + 8)
                if caplen > body_bytes - 20:
                    self._bad(pos, "packet block claims %d captured bytes in a %d-byte block" % (caplen, blen))
                    break
                if iface >= len(ifaces):
                    self._bad(pos, "packet on interface %d, which has no interface description" % iface)
                    break
                linktype, snaplen, cut, mul, div, offset_ns = ifaces[iface]
                ts_ns = ((ts_high << 32) | ts_low) * mul // div + offset_ns
                start = pos + 28
            elif btype == _BT_SPB:
                if n >= budget:
                    break
                if body_bytes < 4:
                    self._bad(pos, "simple packet block too short (%d bytes)" % blen)
                    break
                if not ifaces:
                    self._bad(pos, "simple packet block before any interface description")
                    break
                linktype, snaplen, cut, mul, div, offset_ns = ifaces[0]
                wirelen = struct.unpack_from(order + "I", buf, pos + 8)[0]
                # No captured length in an SPB: what fits the snap length and the block.
                caplen = min(wirelen, snaplen, body_bytes - 4)
                ts_ns = offset_ns      # no timestamp either; libpcap reports 0 + if_tsoffset
                start = pos + 12
            elif btype == _BT_IDB:
                iface = self._parse_idb(buf, pos, blen, order)
                if iface is None:
                    break
                ifaces.append(iface)
                if self._linktype is None:
                    self._linktype = iface[0]
                pos += blen
                if stop_after_idb:
                    break
                continue
            elif btype == _BT_SHB:
                if body_bytes < 16:
                    self._bad(pos, "section header too short (%d bytes)" % blen)
                    break
                major, minor = struct.unpack_from(shb_order + "HH", buf, pos + 12)
                if major != 1:
                    self._bad(pos, "section with unsupported pcapng version %d.%d" % (major, minor))
                    break
                order = self._order = shb_order
                ifaces = self._ifaces = []       # interface ids restart in every section
                pos += blen
                continue
            else:
                self.skipped_blocks += 1
                self._note(("skipped", btype), "skipped %s block(s) (type 0x%x)"
                           % (_BLOCK_NAMES.get(btype, "unknown"), btype))
                pos += blen
                continue

            # A frame: clamp what cannot be represented rather than drop the packet.
            if not _TS_MIN_NS <= ts_ns <= _TS_MAX_NS:
                self._note("ts-range", "timestamps outside the 64-bit nanosecond range were clamped")
                ts_ns = _TS_MIN_NS if ts_ns < 0 else _TS_MAX_NS
            if caplen > cut:
                if caplen > snaplen:
                    self._note("over-snaplen", "frames longer than their interface's snap length were cut to it")
                add(view[start:start + cut], ts_ns, linktype, wirelen if wirelen > caplen else caplen)
            else:
                add(view[start:start + caplen], ts_ns, linktype, wirelen if wirelen > caplen else caplen)
            n += 1
            pos += blen
        self._pos = pos
        return need

    def _parse_idb(self, buf: bytes, pos: int, blen: int, order: str) -> tuple | None:
        """Interface tuple (linktype, snaplen, cut, mul, div, offset_ns), or None if garbled."""
        if blen < 20:
            self._bad(pos, "interface description too short (%d bytes)" % blen)
            return None
        linktype, _reserved, snaplen = struct.unpack_from(order + "HHI", buf, pos + 8)
        tsresol = 6
        offset_s = 0
        opt = pos + 16
        opt_end = pos + blen - 4
        while opt < opt_end:
            if opt_end - opt < 4:
                self._bad(pos, "interface description with a garbled option")
                return None
            code, length = struct.unpack_from(order + "HH", buf, opt)
            value = opt + 4
            opt = value + ((length + 3) & ~3)
            if opt > opt_end:
                self._bad(pos, "interface description option %d overruns the block" % code)
                return None
            if code == _OPT_ENDOFOPT:
                break
            if code == _IF_TSRESOL and length == 1:
                tsresol = buf[value]
            elif code == _IF_TSOFFSET and length == 8:
                offset_s = struct.unpack_from(order + "q", buf, value)[0]
        snaplen = _adjusted_snaplen(linktype, snaplen)
        cut = snaplen if self._snaplen_bytes is None else min(snaplen, self._snaplen_bytes)
        mul, div = _tsresol_scale(tsresol)
        self._max_block = max(self._max_block, _max_snaplen(linktype) + _EPB_OPTIONS_ALLOWANCE_BYTES)
        return (linktype, snaplen, cut, mul, div, offset_s * _NS_PER_S)


def open_capture(path, snaplen_bytes: int | None = None, reader: str = "native"):
    """A frame-batch reader for `path`: the native reader, or reader="libpcap" for pypcap."""
    if reader == "native":
        return PcapFileReader(path, snaplen_bytes)
    if reader == "libpcap":
        from engine.sources.live import LibpcapFileReader   # pypcap is only needed for this backend

        return LibpcapFileReader(path, snaplen_bytes)
    raise ValueError("reader must be 'native' or 'libpcap', got %r" % (reader,))


def starts_before(path, latest_ns, snaplen_bytes: int | None = None, reader: str = "native") -> bool:
    """Whether a capture file's first packet is older than `latest_ns`, the latest packet replayed
    before it (None: nothing was): a timeline break. False when the file holds no packet or cannot
    be read. Only a regular file is opened a second time: reading a pipe would take its first
    packets from the replay."""
    if latest_ns is None:
        return False
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return False
        with open_capture(path, snaplen_bytes=snaplen_bytes, reader=reader) as source:
            batch = source.read_batch(1)
    except (CaptureFileError, OSError):
        return False
    return batch is not None and len(batch) > 0 and batch.ts_ns[0] < latest_ns
