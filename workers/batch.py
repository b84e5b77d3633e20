"""The unit of work between capture and workers: a batch of frames.

Owns the in-memory shape of a batch (one contiguous buffer plus per-frame arrays), so that the
capture side can fill it with one copy per frame and the worker side (Python reference or C) can
walk it without per-frame objects. Must not know where frames came from (file, live, ring).
"""

from __future__ import annotations

from array import array

# Link-layer header types (LINKTYPE_* values as they appear in pcap/pcapng files and libpcap).
LINKTYPE_NULL = 0
LINKTYPE_ETHERNET = 1
LINKTYPE_PPP = 9
LINKTYPE_RAW = 101          # DLT_RAW is 12 (14 on OpenBSD); files carry 101
LINKTYPE_RAW_DLT12 = 12
LINKTYPE_RAW_DLT14 = 14
LINKTYPE_CHDLC = 104
LINKTYPE_LOOP = 108
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_NFLOG = 239
LINKTYPE_LINUX_SLL2 = 276


class FrameBatch:
    """Frames packed back to back in `buf`; frame i is buf[offsets[i]:offsets[i] + caplens[i]].

    ts_ns: capture timestamp in nanoseconds since the epoch (packet time, never wall clock).
    wirelens: original length on the wire (>= caplen when the snap length cut the frame).
    linktypes: LINKTYPE_* of each frame (pcapng files may mix link types).
    """

    __slots__ = ("buf", "offsets", "caplens", "wirelens", "ts_ns", "linktypes")

    def __init__(self, buf=b"", offsets=None, caplens=None, wirelens=None, ts_ns=None, linktypes=None):
        self.buf = buf
        self.offsets = offsets if offsets is not None else array("Q")
        self.caplens = caplens if caplens is not None else array("I")
        self.wirelens = wirelens if wirelens is not None else array("I")
        self.ts_ns = ts_ns if ts_ns is not None else array("q")
        self.linktypes = linktypes if linktypes is not None else array("H")

    def __len__(self) -> int:
        return len(self.offsets)

    def frame(self, i: int) -> bytes:
        start = self.offsets[i]
        return bytes(self.buf[start:start + self.caplens[i]])


class FrameBatchBuilder:
    """Accumulates frames into one bytearray; `take()` hands the batch over and starts a new one."""

    __slots__ = ("_buf", "_offsets", "_caplens", "_wirelens", "_ts", "_lt")

    def __init__(self):
        self._reset()

    def _reset(self):
        self._buf = bytearray()
        self._offsets = array("Q")
        self._caplens = array("I")
        self._wirelens = array("I")
        self._ts = array("q")
        self._lt = array("H")

    def add(self, data, ts_ns: int, linktype: int, wirelen: int | None = None) -> None:
        self._offsets.append(len(self._buf))
        self._caplens.append(len(data))
        self._wirelens.append(len(data) if wirelen is None else wirelen)
        self._ts.append(ts_ns)
        self._lt.append(linktype)
        self._buf += data

    def __len__(self) -> int:
        return len(self._offsets)

    @property
    def nbytes(self) -> int:
        return len(self._buf)

    def take(self) -> FrameBatch:
        batch = FrameBatch(bytes(self._buf), self._offsets, self._caplens, self._wirelens, self._ts, self._lt)
        self._reset()
        return batch
