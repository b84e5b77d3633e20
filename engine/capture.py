"""The capture process: frames in (capture files or libpcap), batches out into the workers' rings.

Owns reading the source, asking the dispatcher which worker each frame belongs to, packing per-
worker batches and publishing them. Replay never loses a frame: when a ring is full the reader
waits for the worker. Live capture never blocks libpcap: a batch that does not fit is dropped and
counted against that worker. Reports statistics to the supervisor and stops when told to (or when
orphaned), closing every ring so the workers drain and finish.

Must not judge packets (workers/ does) beyond the dispatch key.
"""

from __future__ import annotations

import os
import sys
import time

from engine import ipc
from engine.child import ChildProcess
from engine.dispatch import Dispatcher
from engine.live import CaptureError, LiveCapture
from engine.pcapfile import CaptureFileError, open_capture
from engine.ring import Ring, encode_batch
from workers.batch import FrameBatchBuilder

READ_FRAMES = 1024
BATCH_FRAMES = 512          # frames per ring message (per worker)
LIVE_FLUSH_S = 0.05         # live: a partly filled batch waits at most this long
RING_WAIT_S = 0.0005


class CaptureSpec:
    def __init__(self, mode: str, rings, control, seed: bytes, cpu=None, paths=(), reader="native",
                 snaplen_bytes=None, interfaces=(), promiscuous=True, buffer_bytes=None, bpf_filter="",
                 stats_interval_s=60):
        self.mode = mode
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


class _Capture:
    def __init__(self, spec: CaptureSpec):
        self.spec = spec
        self.child = ChildProcess("mte-capture", spec.cpu)
        self.rings = [Ring(r.buf) for r in spec.rings]
        self.dispatcher = Dispatcher(len(self.rings), spec.seed)
        self.builders = [FrameBatchBuilder() for _ in self.rings]
        self.opened_at = [0.0] * len(self.rings)
        self.stopping = False
        self.stats = {"frames": 0, "dispatched": [0] * len(self.rings), "ring_drop_frames": [0] * len(self.rings),
                      "ring_waits": 0, "files": 0, "unreadable": [], "notes": [], "truncated_records": 0}
        self.captures: list[LiveCapture] = []

    # -- control -------------------------------------------------------------------------------
    def poll_control(self) -> None:
        for message in ipc.receive_ready(self.spec.control):
            if message is None or message[0] == "stop":
                self.stopping = True
        if self.child.orphaned():
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
        self.stats["ring_drop_frames"] = [r.dropped_frames for r in self.rings]
        try:
            ipc.send(self.spec.control, [kind, self.stats])
        except OSError:
            self.stopping = True

    # -- batching ------------------------------------------------------------------------------
    def add(self, batch, now: float) -> None:
        buf, offsets, caplens = batch.buf, batch.offsets, batch.caplens
        dispatched = self.stats["dispatched"]
        for i in range(len(offsets)):
            start = offsets[i]
            frame = bytes(buf[start:start + caplens[i]])
            w = self.dispatcher.worker_for(frame, batch.linktypes[i])
            builder = self.builders[w]
            if len(builder) and builder.nbytes + len(frame) + 18 * (len(builder) + 1) + 16 > self.rings[w].max_payload:
                self.push(w)  # a ring message must fit in half a ring
            if not len(builder):
                self.opened_at[w] = now
            builder.add(frame, batch.ts_ns[i], batch.linktypes[i], batch.wirelens[i])
            dispatched[w] += 1
            if len(builder) >= BATCH_FRAMES:
                self.push(w)
        self.stats["frames"] += len(offsets)

    def push(self, w: int) -> None:
        builder = self.builders[w]
        frames = len(builder)
        if not frames:
            return
        payload = encode_batch(builder.take())
        ring = self.rings[w]
        if self.spec.mode == "live":
            if not ring.put(payload):
                ring.count_drop(frames)
            return
        while not ring.put(payload):
            self.stats["ring_waits"] += 1
            time.sleep(RING_WAIT_S)
            if self.child.orphaned():
                return

    def push_all(self) -> None:
        for w in range(len(self.rings)):
            self.push(w)

    # -- sources -------------------------------------------------------------------------------
    def replay(self) -> None:
        last_report = time.monotonic()
        for path in self.spec.paths:
            if self.stopping:
                break
            try:
                source = open_capture(path, snaplen_bytes=self.spec.snaplen_bytes, reader=self.spec.reader)
            except (CaptureFileError, OSError) as exc:
                self.stats["unreadable"].append(str(exc))
                continue
            self.stats["files"] += 1
            with source:
                while not self.stopping:
                    batch = source.read_batch(READ_FRAMES)
                    if batch is None:
                        break
                    self.add(batch, 0.0)
                    self.poll_control()
                    if self.spec.stats_interval_s and time.monotonic() - last_report >= self.spec.stats_interval_s:
                        self.report()
                        last_report = time.monotonic()
                self.stats["truncated_records"] += getattr(source, "truncated_records", 0)
                self.stats["notes"].extend("%s: %s" % (os.path.basename(path), n)
                                           for n in getattr(source, "notes", []))

    def live(self) -> None:
        spec = self.spec
        for name in spec.interfaces:
            self.captures.append(LiveCapture(name, snaplen_bytes=spec.snaplen_bytes, promiscuous=spec.promiscuous,
                                             immediate=True, buffer_bytes=spec.buffer_bytes,
                                             bpf_filter=spec.bpf_filter, timeout_ms=100))
        ipc.send(spec.control, ["ready", {"interfaces": spec.interfaces}])
        wait_ms = max(10, 100 // len(self.captures))
        last_report = time.monotonic()
        while not self.stopping:
            for cap in self.captures:
                batch = cap.read_batch(READ_FRAMES, max_wait_ms=wait_ms)
                now = time.monotonic()
                if len(batch):
                    self.add(batch, now)
            now = time.monotonic()
            for w, builder in enumerate(self.builders):
                if len(builder) and now - self.opened_at[w] >= LIVE_FLUSH_S:
                    self.push(w)
            self.poll_control()
            if spec.stats_interval_s and now - last_report >= spec.stats_interval_s:
                self.report()
                last_report = now

    def run(self) -> int:
        code = 0
        try:
            if self.spec.mode == "live":
                self.live()
            else:
                self.replay()
        except CaptureError as exc:
            self.stats["error"] = str(exc)
            code = 1
        finally:
            self.push_all()
            for ring in self.rings:
                ring.close()
            self.report("done")
            for cap in self.captures:
                cap.close()
        return code


def run_capture(spec: CaptureSpec) -> None:
    sys.exit(_Capture(spec).run())
