"""Frames from libpcap (through pypcap) as FrameBatch objects: live interfaces and capture files.

Owns the libpcap side of capture: opening an interface with a snap length, promiscuous and
immediate mode, a kernel buffer size and a BPF filter; turning libpcap's failures into messages
a person can act on; reading with a bounded wait so the capture loop can check signals; and a
pypcap-backed file reader that mirrors engine.sources.pcapfile.PcapFileReader so the two backends can be
run side by side. Must not decode frames, and must not multiplex interfaces: a caller that wants
several interfaces opens several LiveCapture objects.

pypcap hands over (timestamp, bytes) only. It cannot report a frame's length on the wire, so
`wirelens` here equal the captured length (a lower bound whenever the snap length cut a frame).
Timestamps are requested in integer nanoseconds (pypcap >= 1.3, libpcap nanosecond precision).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import select
import sys
import time

import pcap

from engine.sources.pcapfile import CaptureFileError, start_reader_counters
from workers.batch import LINKTYPE_ETHERNET, LINKTYPE_RAW, FrameBatch, FrameBatchBuilder

__all__ = [
    "CaptureError",
    "CaptureOpenError",
    "CaptureReadError",
    "LibpcapFileReader",
    "LiveCapture",
    "linktype_from_dlt",
]

# libpcap reports DLT_* values; a few differ from the LINKTYPE_* values batches carry.
# (Linux values; DLT_RAW is 14 on OpenBSD, which the batch side also treats as raw IP.)
_DLT_TO_LINKTYPE = {
    11: 100,            # DLT_ATM_RFC1483 -> LINKTYPE_ATM_RFC1483
    12: LINKTYPE_RAW,   # DLT_RAW -> LINKTYPE_RAW (files may say 12 or 101; libpcap folds both to 12)
    15: 102,            # DLT_SLIP_BSDOS
    16: 103,            # DLT_PPP_BSDOS
}

# libpcap stops on these although the file is well formed: it cannot yet hand out frames from
# pcapng interfaces that differ in link type or snap length, nor sections in another byte order.
_LIBPCAP_REFUSALS = (
    "different from the type of the first interface",
    "different from the snapshot length of the first interface",
    "sections with different byte orders",
)

# libpcap's words when read(2) itself failed (savefile.c, sf-pcap.c, sf-pcapng.c), before strerror.
_LIBPCAP_READ_ERROR = "error reading dump file"

_PERMISSION_HINTS = ("Operation not permitted", "Permission denied", "permission")
_MISSING_HINTS = ("No such device", "no such device", "doesn't exist", "does not exist")


class CaptureError(Exception):
    """Base class for live-capture failures."""


class CaptureOpenError(CaptureError):
    """The capture could not be opened; the message says why and what to do about it."""


class CaptureReadError(CaptureError):
    """libpcap failed while reading an open capture (for example, the interface went away)."""


def linktype_from_dlt(dlt: int) -> int:
    """The LINKTYPE_* value for a DLT_* value reported by libpcap."""
    return _DLT_TO_LINKTYPE.get(dlt, dlt)


def _text(message) -> str:
    if isinstance(message, bytes):
        return message.decode("utf-8", "replace")
    return str(message)


def _pypcap_reason(exc: OSError) -> str:
    """libpcap's own words from a pypcap OSError (pypcap wraps them in its own prefix)."""
    text = _text(exc.args[0] if exc.args else exc)
    marker = "Error returned by packet capture library was "
    if marker in text:
        text = text.split(marker, 1)[1]
        if text[:2] in ("b'", 'b"') and text[-1:] == text[1]:
            text = text[2:-1]
    return text


def _libpcap_offline_error(path: str) -> str | None:
    """Ask libpcap itself why it will not open `path` as a capture file.

    pypcap, when a file fails to open, retries the name as a network interface and reports that
    failure instead ("No such device exists"), hiding libpcap's reason. This asks libpcap's
    pcap_open_offline_with_tstamp_precision directly, for the message only.
    """
    library = ctypes.util.find_library("pcap")
    if not library:
        return None
    try:
        lib = ctypes.CDLL(library)
        open_offline = lib.pcap_open_offline_with_tstamp_precision
    except (OSError, AttributeError):
        return None
    open_offline.restype = ctypes.c_void_p
    open_offline.argtypes = [ctypes.c_char_p, ctypes.c_uint, ctypes.c_char_p]
    errbuf = ctypes.create_string_buffer(512)       # PCAP_ERRBUF_SIZE is 256
    handle = open_offline(os.fsencode(path), 1, errbuf)
    if handle:
        lib.pcap_close.argtypes = [ctypes.c_void_p]
        lib.pcap_close(handle)
        return None
    return errbuf.value.decode("utf-8", "replace") or None


class LibpcapFileReader:
    """A capture file read through libpcap, with PcapFileReader's batch interface.

    Differences from the native reader, all libpcap's or pypcap's: wirelen is not available
    (frames report wirelen == caplen unless `snaplen_bytes` cut them); link types come back as
    DLT values and are mapped back (LINKTYPE_RAW and a file's literal 12 both read as 101);
    pcapng files whose interfaces differ in link type or snap length raise CaptureFileError
    when libpcap reaches the second interface; `skipped_blocks` stays 0 (libpcap does not say).
    As with the native reader, a read error (libpcap's "error reading dump file") also raises
    CaptureFileError after the frames before it; damage is counted and noted, never raised.
    """

    def __init__(self, path, snaplen_bytes: int | None = None):
        start_reader_counters(self, path, snaplen_bytes, "libpcap")
        self._done = False
        self._pending_error: CaptureFileError | None = None
        self._pcap = None
        # An absolute path can never be taken for an interface name by pypcap's fallback.
        abspath = os.path.abspath(self.path)
        try:
            with open(abspath, "rb"):
                pass
        except OSError as exc:
            raise CaptureFileError("%s: cannot open: %s" % (self.name, exc.strerror or exc)) from None
        if not os.path.isfile(abspath):
            raise CaptureFileError("%s: cannot open: not a regular file" % self.name)
        try:
            self._pcap = pcap.pcap(name=abspath, promisc=False, timestamp_in_ns=True)
        except OSError as exc:
            reason = _libpcap_offline_error(abspath) or _pypcap_reason(exc)
            raise CaptureFileError("%s: libpcap cannot read it: %s" % (self.name, reason)) from None
        self._linktype = linktype_from_dlt(self._pcap.datalink())
        if self._linktype > 0xFFFF:
            self.close()
            raise CaptureFileError("%s: link type %d out of range" % (self.name, self._linktype))

    @property
    def linktype(self) -> int:
        return self._linktype

    def read_batch(self, max_frames: int = 1024) -> FrameBatch | None:
        """The next up to `max_frames` frames, or None once the file is exhausted.

        Raises CaptureFileError (libpcap's message) where libpcap refuses to go on with a
        well-formed file or cannot read it; the frames before that point are delivered first.
        """
        if max_frames <= 0:
            raise ValueError("max_frames must be positive, got %r" % (max_frames,))
        if self._pending_error is not None:
            error, self._pending_error = self._pending_error, None
            raise error
        if self._done or self._pcap is None:
            return None
        builder = FrameBatchBuilder()
        add = builder.add
        linktype = self._linktype
        cut = self._snaplen_bytes

        def on_frame(ts_ns, data):
            if cut is not None and len(data) > cut:
                add(data[:cut], ts_ns, linktype, len(data))
            else:
                add(data, ts_ns, linktype)

        while len(builder) < max_frames:
            got = self._pcap.dispatch(max_frames - len(builder), on_frame)
            if got < 0:
                self._stop_on_error()
                break
            if got == 0:            # a savefile at its end
                self._done = True
                break
        if not len(builder):
            if self._pending_error is not None:
                error, self._pending_error = self._pending_error, None
                raise error
            return None
        self.frames += len(builder)
        return builder.take()

    def _stop_on_error(self) -> None:
        self._done = True
        message = _text(self._pcap.geterr())
        if message.startswith("truncated"):
            self.truncated_records += 1
            self.notes.append(message)
        elif any(refusal in message for refusal in _LIBPCAP_REFUSALS):
            self._pending_error = CaptureFileError("%s: libpcap refuses to read on: %s" % (self.name, message))
        elif message.startswith(_LIBPCAP_READ_ERROR):
            # the file could not be read (an I/O error), which says nothing about its contents
            self._pending_error = CaptureFileError("%s: %s" % (self.name, message))
        else:
            self.bad_blocks += 1
            self.notes.append(message)

    def __iter__(self):
        while True:
            batch = self.read_batch()
            if batch is None:
                return
            yield batch

    def close(self) -> None:
        self._done = True
        if self._pcap is not None:
            self._pcap.close()
            self._pcap = None

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


# The default capture filter (bpf_filter="default"), like Maltrail's CAPTURE_FILTER: keep what
# detection looks at and leave out bulk TCP. Kept: all UDP (DNS, QUIC, UDP scans), ICMP/ICMPv6,
# DNS over TCP, TCP segments with SYN, FIN or RST set or without ACK (connections, and the NULL,
# FIN and XMAS scans), and TCP segments whose payload starts a TLS handshake record or an HTTP
# request/response line, on any port. IPv6 TCP is matched at fixed offsets (libpcap cannot index
# tcp[] under IPv6), so IPv6 with extension headers before TCP is not recognised by the filter.
_HTTP_STARTS = ("0x47455420", "0x504f5354", "0x48454144", "0x50555420", "0x44454c45", "0x434f4e4e",
                "0x4f505449", "0x50415443", "0x48545450")  # "GET ", "POST", "HEAD", "PUT ", ... "HTTP"


def _tcp_clause(payload: str, flags: str) -> str:
    starts = " or ".join("%s = %s" % (payload % 4, word) for word in _HTTP_STARTS)
    return "(%s or %s = 0x16 or %s)" % (flags, payload % 1, starts)


DEFAULT_FILTER = "udp or icmp or icmp6 or (tcp port 53) or (tcp and %s) or (ip6 and ip6[6] = 6 and %s)" % (
    _tcp_clause("tcp[((tcp[12:1] & 0xf0) >> 2):%d]",
                "tcp[tcpflags] & (tcp-syn|tcp-fin|tcp-rst) != 0 or tcp[tcpflags] & tcp-ack = 0"),
    _tcp_clause("ip6[40 + ((ip6[52:1] & 0xf0) >> 2):%d]", "ip6[53] & 0x07 != 0 or ip6[53] & 0x10 = 0"))


def expand_filter(bpf_filter: str, linktype: int) -> str:
    """"default" becomes DEFAULT_FILTER; on Ethernet it also applies inside one 802.1Q tag (tags
    the NIC did not strip stay in the frame, and shift every offset the expression tests)."""
    if bpf_filter != "default":
        return bpf_filter
    if linktype == LINKTYPE_ETHERNET:
        return "(%s) or (vlan and (%s))" % (DEFAULT_FILTER, DEFAULT_FILTER)
    return DEFAULT_FILTER


class LiveCapture:
    """One network interface captured through libpcap, read as FrameBatch objects.

    read_batch() never blocks longer than about `max_wait_ms`, so the caller can check for
    signals and shutdown between batches.
    """

    def __init__(
        self,
        interface: str = "any",
        snaplen_bytes: int = 2000,
        promiscuous: bool = True,
        immediate: bool = True,
        buffer_bytes: int | None = None,
        bpf_filter: str = "",
        timeout_ms: int = 100,
    ):
        self.interface = interface
        self.snaplen_bytes = snaplen_bytes
        self.bpf_filter = bpf_filter
        self._pcap = None
        if not interface or "/" in interface:
            raise CaptureOpenError("%r is not an interface name; available: %s" % (interface, _available()))
        if os.path.isfile(interface):
            # pypcap tries a name as a capture file before trying it as an interface.
            raise CaptureOpenError("%r names a file in the current directory %s, which pypcap would read "
                                   "instead of the interface; run from another directory"
                                   % (interface, os.getcwd()))
        try:
            self._pcap = pcap.pcap(
                name=interface,
                snaplen=snaplen_bytes,
                promisc=promiscuous,
                timeout_ms=timeout_ms,
                immediate=immediate,
                timestamp_in_ns=True,
                buffer_size=buffer_bytes or 0,
            )
        except OSError as exc:
            raise self._open_error(_pypcap_reason(exc)) from None
        try:
            bpf_filter = self.bpf_filter = expand_filter(bpf_filter, linktype_from_dlt(self._pcap.datalink()))
            if bpf_filter:
                try:
                    self._pcap.setfilter(bpf_filter)
                except OSError as exc:
                    raise CaptureOpenError("bad BPF filter %r for %r: %s"
                                           % (bpf_filter, interface, _pypcap_reason(exc))) from None
            # Non-blocking reads plus poll() bound the wait in read_batch (poll, not select:
            # a sensor process may hold more than FD_SETSIZE descriptors).
            self._pcap.setnonblock(True)
            self._fd = self._pcap.fileno()
            self._poller = select.poll()
            self._poller.register(self._fd, select.POLLIN)
            self._linktype = linktype_from_dlt(self._pcap.datalink())
        except BaseException:
            self.close()
            raise

    def _open_error(self, reason: str) -> CaptureOpenError:
        interface = self.interface
        devices = _devices()
        if devices is not None and interface not in devices:
            return CaptureOpenError("interface %r not found; available: %s (libpcap: %s)"
                                    % (interface, ", ".join(devices) or "none", reason))
        if any(hint in reason for hint in _PERMISSION_HINTS):
            return CaptureOpenError(
                "capturing on %r needs root or CAP_NET_RAW "
                "(e.g. setcap cap_net_raw=eip %s); libpcap: %s"
                % (interface, os.path.realpath(_python_binary()), reason))
        if any(hint in reason for hint in _MISSING_HINTS):
            return CaptureOpenError("interface %r not found; available: %s (libpcap: %s)"
                                    % (interface, _available(), reason))
        return CaptureOpenError("cannot capture on %r: %s" % (interface, reason))

    @property
    def linktype(self) -> int:
        return self._linktype

    def read_batch(self, max_frames: int = 1024, max_wait_ms: int = 100) -> FrameBatch:
        """Frames that arrived, at most `max_frames`; empty if none came within `max_wait_ms`.

        Returns as soon as libpcap's buffer is drained once at least one frame is in hand.
        """
        if max_frames <= 0:
            raise ValueError("max_frames must be positive, got %r" % (max_frames,))
        if self._pcap is None:
            raise CaptureReadError("capture on %r is closed" % self.interface)
        builder = FrameBatchBuilder()
        add = builder.add
        linktype = self._linktype

        def on_frame(ts_ns, data):
            add(data, ts_ns, linktype)

        deadline = time.monotonic() + max(0, max_wait_ms) / 1000.0
        while len(builder) < max_frames:
            got = self._pcap.dispatch(max_frames - len(builder), on_frame)
            if got < 0:
                raise CaptureReadError("capture on %r failed: %s" % (self.interface, _text(self._pcap.geterr())))
            if got > 0:
                continue
            if len(builder):
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._poller.poll(max(1, int(remaining * 1000)))
        return builder.take()

    def stats(self) -> dict:
        """libpcap's counters: frames received, dropped by the buffer, dropped by the interface."""
        if self._pcap is None:
            raise CaptureReadError("capture on %r is closed" % self.interface)
        received, dropped, if_dropped = self._pcap.stats()
        return {"received": received, "dropped": dropped, "if_dropped": if_dropped}

    def fileno(self) -> int:
        return self._fd

    def close(self) -> None:
        if self._pcap is not None:
            self._pcap.close()
            self._pcap = None

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


def _devices() -> list[str] | None:
    try:
        return pcap.findalldevs()
    except OSError:
        return None


def _available() -> str:
    devices = _devices()
    if devices is None:
        return "(libpcap could not list interfaces)"
    return ", ".join(devices) or "none"


def _python_binary() -> str:
    return sys.executable or "python3"
