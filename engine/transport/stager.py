"""The stager: frames in, per-worker batches published into the workers' rings. One interface, two
backends, chosen once (`open_stager`):

- `engine.transport._capture.Stager` (csrc/capture.c), the one the engine ships: SipHash-2-4
  dispatch, staging and ring writes in C, and `add_pcap`, a walker of classic pcap records read
  straight from the file (engine/processes/capture.py `walk_pcap`);
- `PyStager`, its plain-Python reference: `Dispatcher.worker_for` (BLAKE2b), one
  `FrameBatchBuilder` per worker, `encode_batch` and `Ring.put`. It has no pcap walker: its
  caller hands it the batches a reader produces.

What both do, frame by frame (tests/test_capture_c.py holds them to the same ring messages, byte
for byte, where their dispatch agrees, i.e. with one ring):

- the frame goes to its worker's staged batch; a batch is published when it holds
  `batch_frames` frames, or before a frame that would make it too big for one ring message;
- a frame too big for any message is dropped and counted in the ring's drop counters and in
  `oversize_frames` (the supervisor sizes rings so that it cannot happen: ring.min_ring_bytes);
- a full ring: in replay the call returns RING_FULL at the first frame it could not stage (that
  frame and those after it are not taken; what was staged stays staged) and the caller waits and
  calls again; in live capture the batch is dropped and counted against that worker, never
  waited for.

- a frame whose payload cannot matter to the worker (dispatch.py `headers_cut`) is staged as its
  headers alone, its wire length kept; once a frame `reverses_flight`, every frame is staged
  whole (`whole_frames`).

Counters: `frames` taken in, `dispatched` per worker, `ring_waits` (calls that returned
RING_FULL), `oversize_frames`, `headers_only` (frames staged as their headers alone), `staged`,
`latest_ns` (the latest packet time taken in, None before any), `rings` (0 once closed).

Must not read sources, sleep or wait: the capture process decides what a full ring costs.
"""

from __future__ import annotations

import hashlib
import time

from engine.transport import _capture
from engine.transport.dispatch import Dispatcher, headers_cut
from engine.transport.ring import TIMELINE_BREAK, Ring, encode_batch, encoded_batch_bytes
from workers.batch import FrameBatch, FrameBatchBuilder

OK, RING_FULL = _capture.OK, _capture.RING_FULL     # one set of statuses for both backends


def open_stager(rings: list[Ring], seed: bytes, batch_frames: int, live: bool, reference: bool = False):
    """The C stager over `rings`, or with `reference` the plain-Python one; `seed` keys the
    dispatch hash (any length: SipHash takes 16 bytes, so another seed is condensed to 16)."""
    if reference:
        return PyStager(rings, seed, batch_frames, live)
    key = seed if len(seed) == 16 else hashlib.blake2b(seed, digest_size=16).digest()
    return _capture.Stager([r.buf for r in rings], key, batch_frames, live)


class _Staged:
    """One worker's batch being filled: `frames` frames of `nbytes` bytes in all, in the builder
    or, once the ring had no room for them (replay), in `refused`, encoded, so that waiting on a
    full ring costs no re-encoding. They stay staged until the ring takes the message."""

    __slots__ = ("builder", "refused", "frames", "nbytes", "opened_at_s")

    def __init__(self):
        self.builder = FrameBatchBuilder()
        self.refused: tuple[FrameBatch, bytes] | None = None
        self.frames = 0
        self.nbytes = 0
        self.opened_at_s = 0.0

    def add(self, frame: bytes, ts_ns: int, linktype: int, wirelen: int) -> None:
        if self.refused is not None:
            self.reopen()
        self.builder.add(frame, ts_ns, linktype, wirelen)
        self.frames += 1
        self.nbytes += len(frame)

    def reopen(self) -> None:
        """A refused batch takes another frame after all (a flush met a full ring, then a frame
        came that fits): back into the builder, as the C stager never took it out."""
        batch, _payload = self.refused
        self.refused = None
        for i in range(len(batch)):
            self.builder.add(batch.frame(i), batch.ts_ns[i], batch.linktypes[i], batch.wirelens[i])

    def emptied(self) -> None:
        self.refused = None
        self.frames = self.nbytes = 0


class PyStager:
    """The plain-Python stager (see the module docstring); `clock` gives monotonic seconds, for
    live capture's flush by age."""

    def __init__(self, rings: list[Ring], seed: bytes, batch_frames: int, live: bool, clock=time.monotonic):
        if not 1 <= len(rings) <= 4096:
            raise ValueError("between 1 and 4096 rings")
        if not 1 <= batch_frames <= 1 << 20:
            raise ValueError("batch_frames must be between 1 and 1048576")
        self._rings = list(rings)
        self._staged = [_Staged() for _ in self._rings]
        # the largest frame a message of each ring carries (alone in its batch)
        self._max_frame_bytes = [r.max_payload - encoded_batch_bytes(1, 0) for r in self._rings]
        self._dispatcher = Dispatcher(len(self._rings), seed)
        self._batch_frames = batch_frames
        self._live = live
        self._clock = clock
        self._dispatched = [0] * len(self._rings)
        self.frames = 0
        self.ring_waits = 0
        self.oversize_frames = 0
        self.headers_only = 0
        self.whole_frames = False
        self.latest_ns: int | None = None

    # -- counters ----------------------------------------------------------------------------------
    @property
    def rings(self) -> int:
        return len(self._rings)

    @property
    def dispatched(self) -> list[int]:
        return list(self._dispatched) if self._rings else []

    @property
    def staged(self) -> int:
        return sum(s.frames for s in self._staged)

    # -- frames in -----------------------------------------------------------------------------------
    def add_batch(self, buf, offsets, caplens, wirelens, ts_ns, linktypes, start: int = 0) -> tuple[int, int]:
        """Dispatches and stages frames start.. of a FrameBatch's arrays: (next index, OK or
        RING_FULL). Replay: RING_FULL at the first frame whose ring is full; call again from the
        index returned."""
        self._usable()
        n = len(offsets)
        if not len(caplens) == len(wirelens) == len(ts_ns) == len(linktypes) == n:
            raise ValueError("the batch's arrays differ in length")
        if not 0 <= start <= n:
            raise ValueError("start outside the batch")
        for i in range(start, n):
            if offsets[i] > len(buf) or caplens[i] > len(buf) - offsets[i]:
                raise ValueError("frame %d lies outside the buffer" % i)
        i, status = start, OK
        while i < n:
            frame = bytes(buf[offsets[i]:offsets[i] + caplens[i]])
            w = self._dispatcher.worker_for(frame, linktypes[i])
            cut = None
            if not self.whole_frames:
                cut, self.whole_frames = headers_cut(frame, linktypes[i])
            status = self._stage(w, frame if cut is None else frame[:cut], wirelens[i], ts_ns[i], linktypes[i])
            if status != OK:
                break
            if cut is not None:
                self.headers_only += 1
            i += 1
        self.frames += i - start
        if status == RING_FULL:
            self.ring_waits += 1
        return i, status

    def worker_for(self, frame, linktype: int) -> int:
        self._usable()
        return self._dispatcher.worker_for(bytes(frame), linktype)

    def _stage(self, w: int, frame: bytes, wirelen: int, ts_ns: int, linktype: int) -> int:
        if self.latest_ns is None or ts_ns > self.latest_ns:
            self.latest_ns = ts_ns
        if len(frame) > self._max_frame_bytes[w]:
            self._rings[w].count_drop(1)    # no message can carry it: that worker's drop
            self.oversize_frames += 1
            return OK
        staged = self._staged[w]
        if staged.frames >= self._batch_frames or (staged.frames and encoded_batch_bytes(
                staged.frames + 1, staged.nbytes + len(frame)) > self._rings[w].max_payload):
            # a ring message must fit in half a ring: close the batch before this frame
            if not self._publish(w):
                return RING_FULL
        if not staged.frames and self._live:
            staged.opened_at_s = self._clock()
        staged.add(frame, ts_ns, linktype, wirelen)
        self._dispatched[w] += 1
        if staged.frames >= self._batch_frames:
            self._publish(w)                # replay: a full ring leaves it staged; the next frame waits
        return OK

    # -- batches out ---------------------------------------------------------------------------------
    def _publish(self, w: int) -> bool:
        """True when worker w's staged batch is gone (published, or dropped and counted in live
        capture); False (replay) when the ring has no room for it yet."""
        staged = self._staged[w]
        if not staged.frames:
            return True
        if staged.refused is None:
            batch = staged.builder.take()
            staged.refused = (batch, encode_batch(batch))
        if self._rings[w].put(staged.refused[1]):
            staged.emptied()
            return True
        if not self._live:
            return False
        self._rings[w].count_drop(staged.frames)
        staged.emptied()
        return True

    def flush(self, max_age_s: float = -1.0) -> int:
        """Publishes every partly filled batch (live, with max_age_s >= 0: only those whose first
        frame was staged at least max_age_s ago). Replay: RING_FULL when one did not fit yet (it
        stays staged; call again later)."""
        self._usable()
        now_s = self._clock() if max_age_s >= 0 else 0.0
        status = OK
        for w, staged in enumerate(self._staged):
            if not staged.frames or (max_age_s >= 0 and self._live and now_s - staged.opened_at_s < max_age_s):
                continue
            if not self._publish(w):
                status = RING_FULL
        if status == RING_FULL:
            self.ring_waits += 1
        return status

    def mark(self, w: int) -> bool:
        """Publishes the mark of a timeline break (an empty batch) to ring w, which must hold no
        staged frames (flush first); False when the ring is full (call again later)."""
        self._usable()
        if not 0 <= w < len(self._rings) or self._staged[w].frames:
            raise ValueError("no such ring, or it still holds staged frames")
        return self._rings[w].put(TIMELINE_BREAK)

    def close(self) -> None:
        """Lets go of the rings; staged frames are not published."""
        self._rings = []
        self._staged = []

    def _usable(self) -> None:
        if not self._rings:
            raise ValueError("the stager is closed")
