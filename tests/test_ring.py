"""engine/transport/ring.py: the SPSC shared-memory ring, in one process and across a real fork."""

from __future__ import annotations

import gc
import hashlib
import multiprocessing
import os
import random
from multiprocessing import shared_memory

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.transport import _ring
from engine.transport.ring import (HEADER_BYTES, KIND_PAD, MIN_CAPACITY_BYTES, Ring, decode_batch, encode_batch,
                                   encoded_batch_bytes, min_ring_bytes, ring_bytes)
from workers.batch import FrameBatchBuilder


@pytest.fixture
def shm():
    blocks = []

    def make(capacity):
        block = shared_memory.SharedMemory(create=True, size=ring_bytes(capacity))
        blocks.append(block)
        return block

    yield make
    gc.collect()  # drop rings (and their views) the test left behind
    for block in blocks:
        try:
            block.close()
        except BufferError:
            pass
        block.unlink()


def test_atomics_round_trip_and_refuse_bad_offsets():
    buf = bytearray(64)
    _ring.store_release(buf, 16, 2**64 - 1)
    assert _ring.load_acquire(buf, 16) == 2**64 - 1
    for bad in (-8, 3, 64, 60):
        with pytest.raises(ValueError):
            _ring.load_acquire(buf, bad)
    with pytest.raises(BufferError):
        _ring.store_release(b"read-only bytes!", 0, 1)


def test_messages_come_out_in_order_across_wrap_arounds(shm):
    block = shm(4096)
    producer = Ring(block.buf, 4096, create=True)
    consumer = Ring(block.buf)
    rng = random.Random(1)
    sent, got = [], []
    for _ in range(2000):
        if rng.random() < 0.55:
            payload = os.urandom(rng.randint(0, 700))
            if producer.put(payload):
                sent.append(payload)
        else:
            message = consumer.get()
            if message is not None:
                got.append(message)
    while (message := consumer.get()) is not None:
        got.append(message)
    assert got == sent and len(sent) > 500
    assert producer.used_bytes() == 0


def test_full_ring_refuses_without_writing_and_padding_is_used(shm):
    block = shm(8192)
    ring = Ring(block.buf, 8192, create=True)
    assert ring.put(b"a" * 4000) and ring.put(b"b" * 4080)   # 4008 + 4088 bytes: 96 left
    assert not ring.put(b"c" * 100)                         # needs 108
    assert ring.used_bytes() == 8096
    assert ring.get() == b"a" * 4000 and ring.get() == b"b" * 4080
    assert ring.put(b"c" * 2000)               # 96 bytes before the end: a PAD, then at offset 0
    assert int.from_bytes(bytes(ring.data[8096 + 4:8096 + 8]), "little") == KIND_PAD
    assert ring.get() == b"c" * 2000 and ring.get() is None
    with pytest.raises(ValueError):
        ring.put(b"x" * 4081)                  # over capacity / 2 - 16
    ring.release()


def test_closed_and_finished(shm):
    block = shm(4096)
    ring = Ring(block.buf, 4096, create=True)
    ring.put(b"last")
    ring.close()
    assert not ring.finished()
    assert ring.get() == b"last"
    assert ring.finished()


def test_counters_live_in_shared_memory(shm):
    block = shm(4096)
    ring = Ring(block.buf, 4096, create=True)
    ring.count_drop(7)
    ring.set_in_progress(512)
    ring.add_processed(100)
    ring.add_processed(5)
    observer = Ring(block.buf)
    assert (observer.dropped_frames, observer.dropped_batches, observer.in_progress, observer.processed) == (7, 1, 512, 105)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.binary(max_size=1600), st.integers(0, 2**62), st.integers(0, 300)), max_size=60))
def test_batch_encoding_round_trips(frames):
    builder = FrameBatchBuilder()
    for data, ts, lt in frames:
        builder.add(data, ts, lt, len(data) + 3)
    batch = decode_batch(encode_batch(builder.take()))
    assert len(batch) == len(frames)
    for i, (data, ts, lt) in enumerate(frames):
        assert batch.frame(i) == data
        assert batch.ts_ns[i] == ts and batch.linktypes[i] == lt and batch.wirelens[i] == len(data) + 3


def _consume(name: str, out):
    block = shared_memory.SharedMemory(name=name)
    ring = Ring(block.buf)
    digest, count = hashlib.sha256(), 0
    while True:
        message = ring.get()
        if message is None:
            if ring.finished():
                break
            continue
        digest.update(message)
        count += 1
    out.send((count, digest.hexdigest()))
    ring.release()
    block.close()


def test_a_consumer_process_sees_every_byte_in_order(shm):
    """Producer here, consumer in a forked process, both busy at once: nothing lost, torn or
    reordered (checked by a digest over everything)."""
    block = shm(1 << 16)
    ring = Ring(block.buf, 1 << 16, create=True)
    here, there = multiprocessing.get_context("fork").Pipe()
    proc = multiprocessing.get_context("fork").Process(target=_consume, args=(block.name, there))
    proc.start()
    digest, rng = hashlib.sha256(), random.Random(7)
    for i in range(20000):
        payload = i.to_bytes(4, "little") + rng.randbytes(rng.randint(0, 3000))
        while not ring.put(payload):
            pass
        digest.update(payload)
    ring.close()
    count, their_digest = here.recv()
    proc.join(10)
    assert proc.exitcode == 0
    assert count == 20000 and their_digest == digest.hexdigest()
    ring.release()


def test_header_layout_is_what_the_docs_say(shm):
    block = shm(8192)
    Ring(block.buf, 8192, create=True)
    assert bytes(block.buf[:8]) == b"MTRING01"
    assert int.from_bytes(bytes(block.buf[8:16]), "little") == 8192
    assert HEADER_BYTES == 320 and block.size >= HEADER_BYTES + 8192


# -- sizes derived from the layout ----------------------------------------------------------------

@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=40))
def test_encoded_batch_bytes_is_the_encoded_length(frames):
    builder = FrameBatchBuilder()
    for i, frame in enumerate(frames):
        builder.add(frame, i, 1)
    nbytes = builder.nbytes
    assert encoded_batch_bytes(len(frames), nbytes) == len(encode_batch(builder.take()))


def _positions(capacity: int, message_bytes: int) -> list[int]:
    """Every head position (multiples of 8) in a small ring; in a big one those near where a
    message starts to need a PAD, the middle and both ends."""
    if capacity <= 8192:
        return list(range(0, capacity, 8))
    near = (0, capacity // 2, capacity - message_bytes, capacity)
    return sorted({p for c in near for p in range(c // 8 * 8 - 128, c + 128, 8) if 0 <= p < capacity})


@pytest.mark.parametrize("snaplen_bytes", [64, 65, 1514, 2000, 2001, 2003, 9000, 65535])
def test_min_ring_bytes_carries_one_frame_of_snaplen_from_any_position(shm, snaplen_bytes):
    """The smallest capacity the supervisor allows takes a one-frame batch of `snaplen_bytes`
    wherever the head is once the worker has drained the ring (the message may need a PAD before
    it); 8 bytes less cannot carry it at all."""
    capacity = min_ring_bytes(snaplen_bytes)
    assert capacity % 8 == 0 and capacity >= MIN_CAPACITY_BYTES
    builder = FrameBatchBuilder()
    builder.add(os.urandom(snaplen_bytes), 7, 1)
    payload = encode_batch(builder.take())
    block = shm(capacity)
    for position in _positions(capacity, 8 + len(payload)):
        producer = Ring(block.buf, capacity, create=True)
        consumer = Ring(block.buf)
        try:
            moved = 0
            while moved < position:                 # fillers, taken out again, move the head on
                filler = min(position - moved, producer.max_payload // 8 * 8)
                assert producer.put(bytes(filler - 8)) and consumer.get() == bytes(filler - 8)
                moved += filler
            assert producer.put(payload), position
            assert consumer.get() == payload
        finally:
            producer.release()
            consumer.release()
    if capacity > MIN_CAPACITY_BYTES:
        smaller = Ring(memoryview(bytearray(ring_bytes(capacity - 8))), capacity - 8, create=True)
        with pytest.raises(ValueError):
            smaller.put(payload)
        smaller.release()


def _batch_of(frames: list[bytes]) -> bytes:
    builder = FrameBatchBuilder()
    for i, frame in enumerate(frames):
        builder.add(frame, 1_000 * i, 1)
    return encode_batch(builder.take())


def test_a_batch_is_judged_in_place_and_its_bytes_held_until_finished(shm):
    capacity = 8192
    block = shm(capacity)
    producer, consumer = Ring(block.buf, capacity, create=True), Ring(block.buf)
    frames = [b"a" * 2000, b"b" * 1900]
    held = _batch_of(frames)
    assert producer.put(held) and producer.put(b"f" * 4000)
    view = consumer.get_batch()
    assert isinstance(view, memoryview) and bytes(view) == held and consumer.in_progress == 2
    batch = decode_batch(view)
    # while it is judged the producer cannot reuse its bytes: a message that needs them waits,
    # and the frames read back unchanged
    assert not producer.put(b"x" * 1000)
    assert [batch.frame(i) for i in range(len(batch))] == frames
    consumer.finish_batch(len(batch))
    assert consumer.in_progress == 0 and consumer.processed == 2
    assert producer.put(b"x" * 1000)


def test_a_consumer_that_died_judging_a_batch_is_followed_past_it(shm):
    block = shm(MIN_CAPACITY_BYTES)
    producer, dying = Ring(block.buf, MIN_CAPACITY_BYTES, create=True), Ring(block.buf)
    held, after = _batch_of([b"h" * 300] * 3), _batch_of([b"n" * 200])
    assert producer.put(held) and producer.put(after)
    assert bytes(dying.get_batch()) == held
    del dying   # killed judging it: never finished
    restarted = Ring(block.buf)
    assert restarted.in_progress == 3   # the supervisor counts them as lost
    assert bytes(restarted.get_batch()) == after    # and they are not judged twice
    restarted.finish_batch(1)
    assert restarted.get_batch() is None and restarted.used_bytes() == 0
    # a consumer started when nothing follows the held batch gives its bytes back too
    assert producer.put(held)
    assert bytes(Ring(block.buf).get_batch()) == held
    again = Ring(block.buf)
    assert again.get_batch() is None and again.used_bytes() == 0
    producer.close()
    assert again.finished()
