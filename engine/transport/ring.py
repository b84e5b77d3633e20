"""Single-producer/single-consumer rings in shared memory, carrying batches of frames.

Owns the ring layout (below), the put/get protocol, and the batch message encoding. The capture
process is the only producer of a ring and one worker process its only consumer; the two never
lock. Positions are monotonic byte counters; the producer publishes `head` with a release store
after the message bytes are written, the consumer reads `head` with an acquire load before
reading them, and publishes `tail` (release) once it has copied a message out, or, for a batch
judged where it lies (get_batch), once the batch is finished, so the producer never overwrites
bytes still being read (engine/transport/csrc/ring.c holds the atomics).

Layout (little-endian, hot fields on their own 64-byte lines):

    0    magic "MTRING01", u64 capacity (bytes in the data area, a multiple of 8)
    64   head        u64  bytes ever published by the producer            (producer, release)
    128  tail        u64  bytes ever consumed                              (consumer, release)
    192  closed      u64  1 once the producer will write no more           (producer, release)
    200  drop_frames u64  frames the producer dropped because the ring was full (live capture)
    208  drop_batches u64
    256  in_progress u64  frames the consumer has taken but not finished   (consumer)
    264  processed   u64  frames the consumer has finished                  (consumer)
    272  taken       u64  the position after the batch being judged in place (consumer)
    320  data area   `capacity` bytes

A message is u32 payload length, u32 kind, then the payload, padded to 8 bytes. A message that
would not fit before the end of the data area is preceded by a PAD message filling the rest, and
starts again at offset 0. Free space is capacity - (head - tail).

Must not know what frames contain, or which process runs which side.
"""

from __future__ import annotations

import struct
from array import array

from engine.transport import _ring
from workers import _fastpath
from workers.batch import FrameBatch

MAGIC = b"MTRING01"
HEADER_BYTES = 320
OFF_HEAD, OFF_TAIL, OFF_CLOSED = 64, 128, 192
OFF_DROP_FRAMES, OFF_DROP_BATCHES = 200, 208
OFF_IN_PROGRESS, OFF_PROCESSED, OFF_TAKEN = 256, 264, 272

# linux/mman.h (Linux 5.14+): fault a range in now, writable (both sides write the header).
MADV_POPULATE_WRITE = 23

KIND_BATCH = 1
KIND_PAD = 2
_MSG = struct.Struct("<II")
_U64 = struct.Struct("<Q")
_BATCH_COUNT = struct.Struct("<I")
TIMELINE_BREAK = _BATCH_COUNT.pack(0) + bytes(4)   # an empty batch, as encode_batch writes it


MIN_CAPACITY_BYTES = 4096


def _align8(n: int) -> int:
    return (n + 7) & ~7


def ring_bytes(capacity: int) -> int:
    """Shared memory a ring of `capacity` data bytes needs (the header before the data area)."""
    return HEADER_BYTES + capacity


def max_payload_bytes(capacity: int) -> int:
    """The largest message a ring of `capacity` data bytes carries. A message that does not fit
    before the end of the data area is preceded by a PAD filling it, so it takes less than twice
    its own size (8-byte header, padding to 8 included); capping it at half the ring less those
    16 bytes means a drained ring always takes it, wherever the head is."""
    return capacity // 2 - 16


class Ring:
    """One ring over a writable buffer (an anonymous shared mmap, inherited across fork)."""

    def __init__(self, buf, capacity: int | None = None, create: bool = False):
        self.buf = buf
        if create:
            if capacity is None or capacity % 8 or capacity < MIN_CAPACITY_BYTES:
                raise ValueError("ring capacity must be a multiple of 8 and at least %d" % MIN_CAPACITY_BYTES)
            buf[:HEADER_BYTES] = bytes(HEADER_BYTES)
            buf[0:8] = MAGIC
            buf[8:16] = _U64.pack(capacity)
        elif bytes(buf[0:8]) != MAGIC:
            raise ValueError("not a ring")
        self.capacity = _U64.unpack_from(buf, 8)[0]
        self.data = buf[HEADER_BYTES:HEADER_BYTES + self.capacity]
        self.max_payload = max_payload_bytes(self.capacity)
        # Each side keeps its own position locally; only the other side's is loaded atomically.
        self._head = _ring.load_acquire(buf, OFF_HEAD)
        self._published_tail = _ring.load_acquire(buf, OFF_TAIL)
        # A consumer that died judging a batch in place left it `taken` (and counted in
        # `in_progress`, so as lost): the next consumer starts after it, never judges it twice.
        self._tail = max(self._published_tail, _U64.unpack_from(buf, OFF_TAKEN)[0])
        self._taken = self._tail

    def populate(self) -> bool:
        """Maps every page of the ring into this process now, before the first frame: otherwise
        the first pass through a ring takes a page fault every 4 KiB in the capture process (and
        again in the worker) on the packet path, 4,096 of them for a 16 MiB ring, which is the
        warm-up a short replay or the first burst of a live capture pays. The pages are the
        ring's anyway once traffic has gone round it once. False where the kernel cannot (older
        than 5.14, or a buffer that is not a mapping): the pages then fault in as they are used."""
        owner = self.buf.obj if isinstance(self.buf, memoryview) else self.buf
        try:
            owner.madvise(MADV_POPULATE_WRITE)
        except (AttributeError, OSError, ValueError):
            return False
        return True

    # -- producer ------------------------------------------------------------------------------
    def put(self, payload) -> bool:
        """Publishes one message; False (nothing written) when the ring lacks the space."""
        size = len(payload)
        if size > self.max_payload:
            raise ValueError("message of %d bytes exceeds the ring's limit of %d" % (size, self.max_payload))
        need = 8 + _align8(size)
        head, cap = self._head, self.capacity
        index = head % cap
        contiguous = cap - index
        total = need if need <= contiguous else contiguous + need
        if cap - (head - _ring.load_acquire(self.buf, OFF_TAIL)) < total:
            return False
        if need > contiguous:
            _MSG.pack_into(self.data, index, contiguous - 8, KIND_PAD)
            head += contiguous
            index = 0
        _MSG.pack_into(self.data, index, size, KIND_BATCH)
        self.data[index + 8:index + 8 + size] = payload
        head += need
        self._head = head
        _ring.store_release(self.buf, OFF_HEAD, head)
        return True

    def close(self) -> None:
        _ring.store_release(self.buf, OFF_CLOSED, 1)

    def count_drop(self, frames: int) -> None:
        """Live capture drops a batch rather than wait; the producer owns these counters."""
        self.buf[OFF_DROP_FRAMES:OFF_DROP_FRAMES + 8] = _U64.pack(self.dropped_frames + frames)
        self.buf[OFF_DROP_BATCHES:OFF_DROP_BATCHES + 8] = _U64.pack(self.dropped_batches + 1)

    # -- consumer ------------------------------------------------------------------------------
    def get(self) -> bytes | None:
        """Copies out the next message and frees its space; None when the ring is empty."""
        return self._take()

    def get_batch(self) -> memoryview | None:
        """The next batch message, judged where it lies in the ring: a view of its payload, whose
        bytes the producer does not reuse until finish_batch() (no copy out, which was 40 % of
        a worker's time when whole frames crossed the ring). Before the view is returned, the
        batch's frame count is recorded as `in_progress` and then the position after it as
        `taken`: whenever the consumer dies, a batch it took is either finished or counted in
        `in_progress`, never neither, and the consumer started after it begins past it. A
        timeline break (an empty batch) records nothing and is released at once. None when the
        ring is empty."""
        tail, index, size = self._next_message()
        if index is None:
            if tail != self._tail or self._tail != self._published_tail:
                # only padding was consumed, or a new consumer starts past a batch its predecessor took
                self._tail = tail
                self._publish_tail()
            return None
        view = self.data[index + 8:index + 8 + size]
        after = tail + 8 + _align8(size)
        frames = _BATCH_COUNT.unpack_from(view, 0)[0] if size >= 4 else 0
        self._tail = self._taken = after
        if frames:
            self.set_in_progress(frames)
            self.buf[OFF_TAKEN:OFF_TAKEN + 8] = _U64.pack(after)
        else:
            self._publish_tail()
        return view

    def _next_message(self) -> tuple:
        """From the local tail, past any padding: (the position of the next message, its index in
        the data area, its payload size), or (the position reached, None, 0) when the ring is empty."""
        tail, cap = self._tail, self.capacity
        head = _ring.load_acquire(self.buf, OFF_HEAD)
        while tail != head:
            index = tail % cap
            size, kind = _MSG.unpack_from(self.data, index)
            if kind != KIND_PAD:
                return tail, index, size
            tail += 8 + size
        return tail, None, 0

    def _publish_tail(self) -> None:
        self._published_tail = self._tail
        _ring.store_release(self.buf, OFF_TAIL, self._tail)

    def _take(self) -> bytes | None:
        tail, index, size = self._next_message()
        if index is None:
            if tail != self._tail:  # only padding was consumed
                self._tail = tail
                self._publish_tail()
            return None
        payload = bytes(self.data[index + 8:index + 8 + size])
        self._tail = tail + 8 + _align8(size)
        self._publish_tail()
        return payload

    def finish_batch(self, frames: int) -> None:
        """The batch taken by get_batch() is judged and its events sent: its bytes go back to the
        producer. `processed` moves first: a death between the two stores counts the batch twice
        (processed, and lost), so the frames reported lost are an upper bound, never an
        undercount."""
        self.add_processed(frames)
        self.set_in_progress(0)
        self._publish_tail()

    def finished(self) -> bool:
        """The producer closed the ring and every message has been taken."""
        return _ring.load_acquire(self.buf, OFF_CLOSED) == 1 and _ring.load_acquire(self.buf, OFF_HEAD) == self._tail

    def set_in_progress(self, frames: int) -> None:
        self.buf[OFF_IN_PROGRESS:OFF_IN_PROGRESS + 8] = _U64.pack(frames)

    def add_processed(self, frames: int) -> None:
        self.buf[OFF_PROCESSED:OFF_PROCESSED + 8] = _U64.pack(self.processed + frames)

    # -- either side, or an observer ---------------------------------------------------------------
    @property
    def in_progress(self) -> int:
        return _U64.unpack_from(self.buf, OFF_IN_PROGRESS)[0]

    @property
    def processed(self) -> int:
        return _U64.unpack_from(self.buf, OFF_PROCESSED)[0]

    @property
    def dropped_frames(self) -> int:
        return _U64.unpack_from(self.buf, OFF_DROP_FRAMES)[0]

    @property
    def dropped_batches(self) -> int:
        return _U64.unpack_from(self.buf, OFF_DROP_BATCHES)[0]

    def used_bytes(self) -> int:
        return _ring.load_acquire(self.buf, OFF_HEAD) - _ring.load_acquire(self.buf, OFF_TAIL)

    def release(self) -> None:
        """Drops this object's views so the shared memory can be closed."""
        self.data.release()
        self.data = None


# -- batch messages ------------------------------------------------------------------------------
# u32 n, i64 ts_ns[n], u32 caplen[n], u32 wirelen[n], u16 linktype[n], padding to 8, frame bytes.
# An empty batch (n = 0) is the mark of a timeline break (engine/processes/capture.py,
# break_timeline). engine/transport/csrc/capture.c writes the same bytes (payload_bytes there).

FRAME_META_BYTES = 8 + 4 + 4 + 2    # ts_ns, caplen, wirelen, linktype


def _batch_head_bytes(frames: int) -> int:
    return 4 + FRAME_META_BYTES * frames


def encoded_batch_bytes(frames: int, frame_bytes: int) -> int:
    """len(encode_batch(b)) for a batch of `frames` frames holding `frame_bytes` bytes in all."""
    return _align8(_batch_head_bytes(frames)) + frame_bytes


def min_ring_bytes(snaplen_bytes: int) -> int:
    """The smallest ring capacity (data bytes, a multiple of 8) that carries a batch of one frame
    of `snaplen_bytes`: smaller, and a frame cut to the snap length would be too big for any
    message (the capture process would have to drop it)."""
    one_frame = encoded_batch_bytes(1, snaplen_bytes)
    # the inverse of max_payload_bytes: capacity // 2 - 16 >= one_frame
    return max(MIN_CAPACITY_BYTES, _align8(2 * (one_frame + 16)))


def encode_batch(batch: FrameBatch) -> bytes:
    n = len(batch)
    parts = [_BATCH_COUNT.pack(n), batch.ts_ns.tobytes(), batch.caplens.tobytes(), batch.wirelens.tobytes(),
             batch.linktypes.tobytes()]
    head = _batch_head_bytes(n)
    parts.append(bytes(_align8(head) - head))
    parts.append(bytes(batch.buf))
    return b"".join(parts)


def decode_batch(payload: bytes) -> FrameBatch:
    n = _BATCH_COUNT.unpack_from(payload, 0)[0]
    pos = 4
    ts = array("q")
    ts.frombytes(payload[pos:pos + 8 * n])
    pos += 8 * n
    caplens = array("I")
    caplens.frombytes(payload[pos:pos + 4 * n])
    pos += 4 * n
    wirelens = array("I")
    wirelens.frombytes(payload[pos:pos + 4 * n])
    pos += 4 * n
    linktypes = array("H")
    linktypes.frombytes(payload[pos:pos + 2 * n])
    pos = _align8(pos + 2 * n)
    offsets = array("Q")
    offsets.frombytes(_fastpath.offsets(caplens))
    end = pos + (offsets[-1] + caplens[-1] if n else 0)
    return FrameBatch(memoryview(payload)[pos:end], offsets, caplens, wirelens, ts, linktypes)
