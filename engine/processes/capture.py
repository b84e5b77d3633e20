"""The capture process: frames in (capture files or libpcap), batches out into the workers' rings.

Owns reading the source, asking the dispatcher which worker each frame belongs to, packing per-
worker batches and publishing them. Replay never loses a frame: when a ring is full the reader
waits for the worker. Live capture never blocks libpcap: a batch that does not fit is dropped and
counted against that worker. Reports statistics to the supervisor and stops when told to (or when
orphaned), closing every ring so the workers drain and finish.

The per-frame work (dispatch, staging, ring writes) is the stager's (engine/transport/stager.py),
chosen once: the C `_capture.Stager`, or with CaptureSpec(reference=True) its plain-Python twin
`PyStager`. Both take the FrameBatches that pcapng files, `--reader libpcap` and live capture
produce; classic pcap files on the C path are read in big chunks and walked in C (`walk_pcap`),
the reference reads them through PcapFileReader's batches. This module is the process around it:
sources, control messages, waiting on full rings, statistics.

Must not judge packets (workers/ does) beyond the dispatch key.
"""

from __future__ import annotations

import os
import select
import stat
import sys
import time

from engine.transport import _capture

from engine.transport import ipc

from engine.processes import privileges
from engine.processes.child import ChildProcess, own_cpu_s
from engine.sources.live import CaptureError, LiveCapture
from engine.sources.pcapfile import CaptureFileError, PcapFileReader, open_capture, starts_before
from engine.transport.ring import Ring
from engine.transport.stager import RING_FULL, open_stager

READ_FRAMES = 1024
BATCH_FRAMES = 512          # frames per ring message (per worker)
LIVE_FLUSH_S = 0.05         # live: a partly filled batch waits at most this long
RING_WAIT_S = 0.0005
# Classic pcap files are read this much at a time (C path). The buffer is the capture process's
# largest allocation and every byte of it is touched: 1 MiB costs the same CPU per frame as 4 MiB
# did (114 / 118 ns on a 3M-packet `hard`, capture alone) and 3 MB less PSS.
READ_CHUNK_BYTES = 1 << 20
_CLASSIC_PCAP = ("pcap", "pcap-ns", "pcap-kuznetzov")


class CaptureSpec:
    def __init__(self, mode: str, rings, control, seed: bytes, cpu=None, paths=(), reader="native",
                 snaplen_bytes=None, interfaces=(), promiscuous=True, buffer_bytes=None, bpf_filter="",
                 stats_interval_s=60, reference=False, account=None, parent_pid=None, close=(),
                 progress_interval_s=0.0):
        self.mode = mode
        self.progress_interval_s = progress_interval_s  # replay: how often to say how far it read (0: never)
        self.account = account          # engine.processes.privileges.Account to become, None to stay
        self.parent_pid = parent_pid
        self.close = close              # the supervisor's descriptors this process must not hold
        self.rings = rings
        self.control = control
        self.seed = seed
        self.cpu = cpu
        self.paths = list(paths)
        self.reader = reader
        self.snaplen_bytes = snaplen_bytes
        self.interfaces = list(interfaces)
        self.promiscuous = promiscuous
        self.buffer_bytes = buffer_bytes
        self.bpf_filter = bpf_filter
        self.stats_interval_s = stats_interval_s
        self.reference = reference      # the plain-Python capture path (the C path's reference)


class _Capture:
    def __init__(self, spec: CaptureSpec):
        self.spec = spec
        self.child = ChildProcess("mte-capture", spec.cpu, parent_pid=spec.parent_pid, close=spec.close)
        spec.close = ()
        self.restrict()
        self.rings = [Ring(r.buf) for r in spec.rings]
        for ring in self.rings:
            ring.populate()
        self.stager = open_stager(self.rings, spec.seed, BATCH_FRAMES, spec.mode == "live", spec.reference)
        # only the C stager walks classic pcap records itself (add_pcap); the reference reads batches
        self.walks_pcap = hasattr(self.stager, "add_pcap")
        self.stopping = False
        self.last_report = self.last_progress = time.monotonic()
        self.source_file = None     # the open file of the capture file being replayed (progress)
        self.bytes_before = 0       # sizes of the regular files replayed before it
        self.stats = {"frames": 0, "dispatched": [0] * len(self.rings), "ring_drop_frames": [0] * len(self.rings),
                      "ring_waits": 0, "files": 0, "unreadable": [], "notes": [], "truncated_records": 0,
                      "timeline_breaks": 0}
        self.captures: list[LiveCapture] = []

    # -- privileges ----------------------------------------------------------------------------
    def restrict(self) -> None:
        """Before reading anything: keep only what opening the source needs. Live capture keeps
        CAP_NET_RAW/CAP_NET_ADMIN (and, as root, what changing account needs) until its handles
        are open (then `settle`); a replay becomes the account at once, keeping only
        CAP_DAC_READ_SEARCH when it started as root, to read the files it was given."""
        have = privileges.effective_caps()
        if self.spec.mode == "live":
            keep = set(privileges.CAPTURE_CAPS)
            if self.spec.account is not None:
                keep |= {privileges.CAP_SETUID, privileges.CAP_SETGID, privileges.CAP_SETPCAP}
            privileges.drop(None, frozenset(keep) & have)
        else:
            keep = {privileges.CAP_DAC_READ_SEARCH} if os.geteuid() == 0 else set()
            privileges.drop(self.spec.account, frozenset(keep) & have)

    def settle(self) -> None:
        """Live: the handles are open; nothing more is needed from here on."""
        privileges.drop(self.spec.account, frozenset())

    # -- control -------------------------------------------------------------------------------
    def poll_control(self) -> None:
        for message in ipc.receive_ready(self.spec.control):
            if message is None or message[0] == "stop":
                self.stopping = True
        if self.child.orphaned():
            self.stopping = True

    def maybe_report(self) -> None:
        interval = self.spec.stats_interval_s
        now = time.monotonic()
        if interval and now - self.last_report >= interval:
            self.report()
            self.last_report = now
        if self.spec.progress_interval_s and now - self.last_progress >= self.spec.progress_interval_s:
            self.last_progress = now
            position = 0
            if self.source_file is not None:
                try:
                    position = os.lseek(self.source_file.fileno(), 0, os.SEEK_CUR)
                except (OSError, ValueError):
                    position = 0
            try:
                ipc.send(self.spec.control, ["progress", {"bytes": self.bytes_before + position,
                                                          "files": self.stats["files"]}])
            except OSError:
                self.stopping = True

    def report(self, kind: str = "stats") -> None:
        if self.captures:
            kernel = {"received": 0, "dropped": 0, "if_dropped": 0}
            for cap in self.captures:
                try:
                    for key, value in cap.stats().items():
                        kernel[key] += value
                except CaptureError:
                    pass
            self.stats["kernel"] = kernel
        stager = self.stager
        if stager.rings:
            self.stats["frames"] = stager.frames
            self.stats["dispatched"] = stager.dispatched
            self.stats["ring_waits"] = stager.ring_waits
            # round 1's "headers only" publishing: frames cut to their headers, and whether a
            # handshake from the higher port made the stager publish every frame whole since
            self.stats["headers_only"] = stager.headers_only
            self.stats["whole_frames"] = bool(stager.whole_frames)
            if stager.oversize_frames:
                self.stats["oversize_frames"] = stager.oversize_frames
        self.stats["ring_drop_frames"] = [r.dropped_frames for r in self.rings]
        self.stats["cpu_s"] = own_cpu_s()
        try:
            ipc.send(self.spec.control, [kind, self.stats])
        except OSError:
            self.stopping = True

    def wait_ring(self) -> bool:
        """Replay met a full ring: sleep briefly; False once the engine is going away."""
        time.sleep(RING_WAIT_S)
        if self.child.orphaned():
            self.stopping = True
            return False
        return True

    # -- batching ------------------------------------------------------------------------------
    def add(self, batch) -> None:
        i = 0
        while True:
            i, status = self.stager.add_batch(batch.buf, batch.offsets, batch.caplens, batch.wirelens,
                                              batch.ts_ns, batch.linktypes, i)
            if status != RING_FULL or not self.wait_ring():
                return

    def push_all(self) -> None:
        if self.stager.rings:
            while self.stager.flush() == RING_FULL and self.wait_ring():
                pass

    def push_old(self, max_age_s: float) -> None:
        """Live: a partly filled batch waits at most max_age_s."""
        self.stager.flush(max_age_s)

    # -- sources -------------------------------------------------------------------------------
    def replay(self) -> None:
        """Every file in turn. One that cannot be opened, or whose reading stops before its end for a
        reason other than damage in it (libpcap refuses to go on, a read error), goes into
        `unreadable` with the count of its frames that were replayed; the next file is read."""
        for path in self.spec.paths:
            if self.stopping:
                break
            try:
                source = open_capture(path, snaplen_bytes=self.spec.snaplen_bytes, reader=self.spec.reader)
            except (CaptureFileError, OSError) as exc:
                self.stats["unreadable"].append(str(exc))
                continue
            self.stats["files"] += 1
            if starts_before(path, self.stager.latest_ns, self.spec.snaplen_bytes, self.spec.reader):
                self.break_timeline()
            self.source_file = getattr(source, "_file", None)
            with source:
                if self.walks_pcap and isinstance(source, PcapFileReader) and source.format in _CLASSIC_PCAP:
                    frames, truncated, notes, stopped = self.walk_pcap(source)
                else:
                    frames, truncated, notes, stopped = self.read_batches(source)
            self.source_file = None
            try:
                self.bytes_before += os.path.getsize(path) if os.path.isfile(path) else 0
            except OSError:
                pass
            self.stats["truncated_records"] += truncated
            self.stats["notes"].extend("%s: %s" % (os.path.basename(path), n) for n in notes)
            if stopped is not None:
                # the frames before the stop are already staged or published: they are judged
                self.stats["unreadable"].append(stopped_part_way(stopped, frames))

    def break_timeline(self) -> None:
        """Every ring gets, after the frames before it, the mark of a new timeline (an empty
        batch): the workers close their noise-control groups there. Without it a group opened in
        one file could take in events of an unrelated file replayed after it with older times, or
        not, depending on what other traffic its worker happened to see in between."""
        self.stats["timeline_breaks"] += 1
        self.push_all()
        if self.stopping:
            return      # orphaned while a ring was full: frames may still be staged, no mark fits
        for w in range(len(self.rings)):
            while not self.stager.mark(w) and self.wait_ring():
                pass

    def read_batches(self, source) -> tuple[int, int, list, CaptureFileError | None]:
        """A file through its reader's batches: (frames, truncated records, notes, why reading
        stopped before the end or None). Readers hand out the frames before a stop, then raise."""
        frames = 0
        stopped = None
        while not self.stopping:
            try:
                batch = source.read_batch(READ_FRAMES)
            except CaptureFileError as exc:
                stopped = exc
                break
            if batch is None:
                break
            frames += len(batch)
            self.add(batch)
            self.poll_control()
            self.maybe_report()
        return frames, getattr(source, "truncated_records", 0), list(getattr(source, "notes", [])), stopped

    def walk_pcap(self, source: PcapFileReader) -> tuple[int, int, list, CaptureFileError | None]:
        def wait() -> bool:
            if not self.wait_ring():
                return False
            self.poll_control()
            return not self.stopping

        def between_chunks() -> bool:
            self.poll_control()
            self.maybe_report()
            return not self.stopping

        return walk_pcap(self.stager, source, wait, between_chunks, idle=self.push_all)

    def live(self) -> None:
        spec = self.spec
        for name in spec.interfaces:
            self.captures.append(LiveCapture(name, snaplen_bytes=spec.snaplen_bytes, promiscuous=spec.promiscuous,
                                             immediate=True, buffer_bytes=spec.buffer_bytes,
                                             bpf_filter=spec.bpf_filter, timeout_ms=100))
        self.settle()
        ipc.send(spec.control, ["ready", {"interfaces": spec.interfaces,
                                          "filters": [cap.bpf_filter for cap in self.captures]}])
        wait_ms = max(10, 100 // len(self.captures))
        while not self.stopping:
            for cap in self.captures:
                batch = cap.read_batch(READ_FRAMES, max_wait_ms=wait_ms)
                if len(batch):
                    self.add(batch)
            self.push_old(LIVE_FLUSH_S)
            self.poll_control()
            self.maybe_report()

    def run(self) -> int:
        code = 0
        try:
            if self.spec.mode == "live":
                self.live()
            else:
                ipc.send(self.spec.control, ["ready", {"files": len(self.spec.paths)}])
                self.replay()
        except (CaptureError, privileges.PrivilegeError) as exc:
            self.stats["error"] = str(exc)
            code = 1
        finally:
            self.push_all()
            for ring in self.rings:
                ring.close()
            self.report("done")
            self.stager.close()
            for cap in self.captures:
                cap.close()
        return code


def stopped_part_way(stopped: CaptureFileError, frames: int) -> str:
    """The `unreadable` entry of a file whose reading stopped before its end for a reason other
    than damage in it (libpcap refusing to go on, a read error), after `frames` frames."""
    replayed = "its first %d frame(s) were replayed, not the rest" % frames if frames else "none of it was replayed"
    return "%s; %s" % (stopped, replayed)


def walk_pcap(stager, source: PcapFileReader, wait, between_chunks, chunk_bytes: int | None = None, idle=None):
    """A classic pcap file through the C walker: returns (frames, truncated records, notes, why
    reading stopped before the end or None).

    PcapFileReader has read and checked the file header; from the first record on, its open file
    is read here `chunk_bytes` (READ_CHUNK_BYTES) at a time (a record straddling two reads is
    carried over; one longer than the buffer grows it) and `stager.add_pcap` walks, dispatches, stages and publishes the
    records. Damage ends the file and is noted exactly as PcapFileReader notes it; a read error
    ends it with the CaptureFileError PcapFileReader would raise, the frames before it staged.
    `wait()` is called when a ring is full (replay) and `between_chunks()` after each read; either
    returning False stops the walk (what was staged stays staged). `idle()` is called when a pipe
    has had nothing to read for a while: the frames staged so far should not wait for more to come.
    """
    layout = source.hand_over_records()
    rec = layout["record"]
    params = {key: layout[key] for key in ("byte_swapped", "nanosecond", "linktype", "snaplen_cut", "max_caplen",
                                           "swap_lengths", "file_snaplen")}
    params["record_bytes"] = rec.size
    pending, base, stream = layout["pending"], layout["offset"], layout["stream"]
    buf = bytearray(max(chunk_bytes or READ_CHUNK_BYTES, len(pending), 64))
    buf[:len(pending)] = pending
    fill, pos = len(pending), 0
    frames = 0
    notes = layout["notes"]
    over_before = stager.over_snaplen_frames
    noted_over = False
    poller = None
    if not stat.S_ISREG(os.fstat(stream.fileno()).st_mode):
        # A FIFO or pipe may have nothing to read for a while: wait for data in short polls so a
        # stop request is still noticed (a blocking read would hold the process until data came).
        poller = select.poll()
        poller.register(stream.fileno(), select.POLLIN | select.POLLHUP)

    def lengths(at: int) -> tuple[int, int]:
        _sec, _frac, caplen, wirelen = rec.unpack_from(buf, at)
        if layout["swap_lengths"] and (layout["swap_lengths"] == 2 or caplen > wirelen):
            caplen, wirelen = wirelen, caplen
        return caplen, wirelen

    while True:
        consumed, added, status = stager.add_pcap(buf, pos, fill, **params)
        pos += consumed
        frames += added
        if not noted_over and stager.over_snaplen_frames != over_before:
            noted_over = True
            notes.append("records longer than the file's snap length %d were cut to it, as libpcap does"
                         % layout["file_snaplen"])
        if status == _capture.RING_FULL:
            if not wait():
                break
            continue
        if status == _capture.BAD_RECORD:
            notes.append("stopped at byte %d: record %d claims %d captured bytes (limit %d)"
                         % (base + pos, frames + 1, lengths(pos)[0], layout["max_caplen"]))
            break
        if not between_chunks():
            break
        # what is left is a partial record: keep it and read more behind it
        if pos:
            buf[:fill - pos] = buf[pos:fill]
            base += pos
            fill -= pos
            pos = 0
        if fill == len(buf):            # a record longer than the buffer
            buf.extend(bytes(len(buf)))
        flushed = False
        while poller is not None and not poller.poll(200):
            if idle is not None and not flushed:
                idle()
                flushed = True
            if not between_chunks():
                return frames, 0, notes, None
        try:
            got = stream.readinto1(memoryview(buf)[fill:])
        except OSError as exc:
            # not damage: the bytes are there but cannot be had; the whole records before are staged
            return frames, 0, notes, CaptureFileError("%s: read error at byte %d: %s"
                                                      % (source.name, base + fill, exc.strerror or exc))
        if not got:
            if fill:
                need = rec.size + (lengths(0)[0] if fill >= rec.size else 0)
                notes.append("truncated at byte %d: the file ends %d bytes into a %d-byte record" % (base, fill, need))
                return frames, 1, notes, None
            break
        fill += got
    return frames, 0, notes, None


def run_capture(spec: CaptureSpec) -> None:
    try:
        capture = _Capture(spec)
    except privileges.PrivilegeError as exc:
        try:
            ipc.send(spec.control, ["done", {"error": "capture process: %s" % exc}])
        except OSError:
            pass
        sys.exit(1)
    sys.exit(capture.run())
