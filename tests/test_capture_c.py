"""engine/transport/csrc/capture.c (engine.transport._capture) against its Python reference.

- the C dispatch key is engine.transport.dispatch.dispatch_key byte for byte: every frame of every capture
  (shared real and Maltrail corpora, the generated corpus) and hypothesis-mutated frames and DNS
  names;
- the ring messages the Stager writes decode into exactly the frames PcapFileReader yields (bytes,
  timestamp, caplen, wirelen, link type), in order per worker, for every classic pcap variant, for
  records straddling read chunks, and for truncated and garbled files (the same notes and counts);
- the capture process itself (a real forked process, real shared memory, a draining consumer)
  gives the same frames and statistics on the C path as on the reference path;
- dispatch keeps both directions of a flow and a domain's names together, and spreads traffic;
- full rings: replay waits and loses nothing, live capture drops and counts, nothing blocks.
"""

from __future__ import annotations

import gc
import multiprocessing
import os
import random
import struct
import time
from multiprocessing import shared_memory

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import engine.processes.capture as capture_mod
from engine.transport import _capture
from engine.transport import ipc
from engine.sources import synthetic as g
from engine.processes.capture import CaptureSpec, run_capture, walk_pcap
from engine.transport.dispatch import Dispatcher, dispatch_key, headers_cut
from engine.sources.pcapfile import CaptureFileError, PcapFileReader, open_capture
from engine.transport.ring import Ring, decode_batch, encode_batch, encoded_batch_bytes, ring_bytes
from engine.transport.stager import PyStager
from tests import traffic
from tests.conftest import MALTRAIL_CORPUS, REAL_CORPUS, need_shared
from tests.corpus.generate import SCENARIOS, port_unreachable, reset_answer, write_corpus
from tests.fusefile import failing_file  # noqa: F401 (a fixture)
from tests.test_pcapfile import ng_epb, ng_idb, ng_shb
from workers.batch import FrameBatchBuilder

SEED = bytes(range(16))
PCAP_US, PCAP_NS, PCAP_KUZNETZOV = 0xA1B2C3D4, 0xA1B23C4D, 0xA1B2CD34
LINKTYPES = (0, 1, 9, 12, 14, 101, 104, 108, 113, 228, 229, 276, 147)


# -- helpers -------------------------------------------------------------------------------------

class Rings:
    """n real shared-memory rings; drain() takes every message out, as a worker would."""

    def __init__(self, n: int, capacity: int):
        self.blocks = [shared_memory.SharedMemory(create=True, size=ring_bytes(capacity)) for _ in range(n)]
        self.producer = [Ring(b.buf, capacity, create=True) for b in self.blocks]
        self.consumer = [Ring(b.buf) for b in self.blocks]
        self.frames = [[] for _ in range(n)]        # (bytes, ts, caplen, wirelen, linktype) per ring
        self.payloads = [[] for _ in range(n)]

    @property
    def bufs(self):
        return [b.buf for b in self.blocks]

    def drain(self) -> bool:
        for k, ring in enumerate(self.consumer):
            while (payload := ring.get()) is not None:
                self.payloads[k].append(payload)
                self.frames[k].extend(rows(decode_batch(payload)))
        return True

    def close(self) -> None:
        for ring in self.producer + self.consumer:
            ring.release()
        self.producer = self.consumer = []
        gc.collect()
        for block in self.blocks:
            try:
                block.close()
            except BufferError:
                pass
            block.unlink()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def rows(batch) -> list[tuple]:
    return [(batch.frame(i), batch.ts_ns[i], batch.caplens[i], batch.wirelens[i], batch.linktypes[i])
            for i in range(len(batch))]


def published(frame_rows) -> list[tuple]:
    """The rows as a stager publishes them: cut to their headers where the reference rule
    (dispatch.headers_cut) says their payload cannot matter, whole from the first frame that
    reverses a flight on; the wire length kept."""
    out, whole = [], False
    for frame, ts, caplen, wirelen, linktype in frame_rows:
        cut = None
        if not whole:
            cut, whole = headers_cut(frame, linktype)
        out.append((frame, ts, caplen, wirelen, linktype) if cut is None else (frame[:cut], ts, cut, wirelen, linktype))
    return out


def reader_rows(path, snaplen_bytes=None):
    """PcapFileReader's frames, truncated records and notes: the reference."""
    out = []
    with PcapFileReader(path, snaplen_bytes) as reader:
        for batch in reader:
            out.extend(rows(batch))
        return out, reader.truncated_records, list(reader.notes)


def c_walk(path, nrings=1, capacity=1 << 20, chunk_bytes=None, snaplen_bytes=None, seed=SEED):
    """engine.processes.capture.walk_pcap over a file with a draining consumer: (per-ring frames, truncated,
    notes, stager stats)."""
    with Rings(nrings, capacity) as rings:
        stager = _capture.Stager(rings.bufs, seed, 512, False)
        try:
            with PcapFileReader(path, snaplen_bytes) as source:
                frames, truncated, notes, stopped = walk_pcap(stager, source, rings.drain, lambda: True, chunk_bytes)
            assert stopped is None and frames == stager.frames
            while stager.flush() == _capture.RING_FULL:
                rings.drain()
            rings.drain()
            stats = {"frames": stager.frames, "dispatched": stager.dispatched, "ring_waits": stager.ring_waits}
        finally:
            stager.close()
        return rings.frames, truncated, notes, stats


def dummy_ring() -> bytearray:
    """A ring in private memory: enough for Stager.worker_for."""
    buf = bytearray(ring_bytes(4096))
    with memoryview(buf) as view:
        Ring(view, 4096, create=True).release()
    return buf


def expected_split(frame_rows, nrings, seed=SEED):
    """The reference frames split by the ring the C dispatch picks (same seed)."""
    stager = _capture.Stager([dummy_ring()] * nrings, seed, 512, False)
    out = [[] for _ in range(nrings)]
    for row in frame_rows:
        out[stager.worker_for(row[0], row[4])].append(row)
    stager.close()
    return out


def pcap_bytes(records, order="<", nanosecond=False, version=(2, 4), snaplen=262144, linktype=1, kuznetzov=False):
    """A classic pcap file; records are (ts_ns, data[, wirelen]); version 2.2 writes the lengths
    swapped, as those files do."""
    magic = PCAP_KUZNETZOV if kuznetzov else PCAP_NS if nanosecond else PCAP_US
    out = [struct.pack(order + "IHHiIII", magic, version[0], version[1], 0, 0, snaplen, linktype)]
    for rec in records:
        ts, data = rec[0], rec[1]
        wirelen = rec[2] if len(rec) > 2 else len(data)
        sec, frac = divmod(ts, 1_000_000_000)
        if not nanosecond:
            frac //= 1000
        lengths = (len(data), wirelen) if version >= (2, 3) else (wirelen, len(data))
        out.append(struct.pack(order + "IIII", sec, frac, *lengths))
        if kuznetzov:
            out.append(bytes(8))
        out.append(data)
    return b"".join(out)


def scenario_frames():
    """(linktype, frame) of every generated scenario (the corpus without files)."""
    out = []
    for fn in SCENARIOS.values():
        linktype, frames = fn()
        out.extend((linktype, f) for _, f in frames)
    return out


_BASE = scenario_frames()


def mixed_records(count=600, seed=3):
    """Frames of many shapes and sizes (up to ~3 KB, so small read chunks split them)."""
    rng = random.Random(seed)
    out = []
    for i in range(count):
        lt, frame = _BASE[rng.randrange(len(_BASE))]
        if lt != 1:
            frame = g.udp_frame("10.1.%d.%d" % (i % 3, i % 250), "10.0.0.53", 1000 + i, 53, g.dns_query("n%d.x.org" % i))
        if i % 50 == 7:
            frame = frame + os.urandom(rng.randrange(1000, 3000))
        wirelen = len(frame) + (rng.randrange(0, 9) if i % 3 == 0 else 0)
        out.append((traffic.T0 + i * 1_234_567, frame, wirelen))
    return out


@pytest.fixture(scope="module")
def generated_corpus(tmp_path_factory):
    return write_corpus(str(tmp_path_factory.mktemp("own")))


# -- the hash and the dispatch key -------------------------------------------------------------

def test_siphash24_reference_vectors():
    # SipHash paper / reference test.c vectors_sip64: key 00..0f, message 00..n-1
    want = [0x726fdb47dd0e0e31, 0x74f839c593dc67fd, 0x0d6c8009d9a94f5a, 0x85676696d7fb7e2d, 0xcf2794e0277187b7,
            0x18765564cd99a68d, 0xcbc9466e58fee3ce, 0xab0200f58b01d137, 0x93f5f5799a932462, 0x9e0082df0ba9e4b0,
            0x7a5dbbc594ddb9f3, 0xf4b32f46226bada7, 0x751e8fbc860ee5fb, 0x14ea5627c0843d90, 0xf723ca908e7af2ee,
            0xa129ca6149be45e5, 0x3f2acc7f57c29bdb]
    assert [_capture.siphash24(SEED, bytes(range(n))) for n in range(len(want))] == want


def test_latin1_lower_case_rule_used_for_dns_names():
    # capture.c lower-cases non-ASCII name bytes as str.lower() does on Latin-1 text
    for i in range(256):
        lowered = chr(i).lower()
        assert len(lowered) == 1 and ord(lowered) < 256
        c_rule = i + 32 if (65 <= i <= 90 or (0xC0 <= i <= 0xDE and i != 0xD7)) else i
        assert ord(lowered) == c_rule


def _capture_paths(generated_corpus, which):
    if which == "generated":
        return sorted(generated_corpus.values())
    root = need_shared(REAL_CORPUS if which == "real" else MALTRAIL_CORPUS)
    return sorted(str(p) for p in root.glob("*.pcap*"))


@pytest.mark.parametrize("which", ["generated", "real", "maltrail"])
def test_c_dispatch_key_equals_python_on_every_frame(generated_corpus, which):
    frames = 0
    for path in _capture_paths(generated_corpus, which):
        with open_capture(path) as reader:
            for batch in reader:
                for i in range(len(batch)):
                    data, lt = batch.frame(i), batch.linktypes[i]
                    assert _capture.dispatch_key(data, lt) == dispatch_key(data, lt), (path, i)
                    frames += 1
    assert frames > 50


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_c_dispatch_key_equals_python_on_mutated_frames(data):
    lt, frame = data.draw(st.sampled_from(_BASE))
    frame = bytearray(frame)
    for _ in range(data.draw(st.integers(0, 6))):
        if not frame:
            break
        pos = data.draw(st.integers(0, len(frame) - 1))
        action = data.draw(st.sampled_from(["set", "cut", "insert"]))
        if action == "set":
            frame[pos] = data.draw(st.integers(0, 255))
        elif action == "cut":
            del frame[pos:]
        else:
            frame[pos:pos] = data.draw(st.binary(min_size=1, max_size=8))
    if data.draw(st.booleans()):
        lt = data.draw(st.sampled_from(LINKTYPES))
    frame = bytes(frame)
    assert _capture.dispatch_key(frame, lt) == dispatch_key(frame, lt)


_labels = st.lists(st.binary(min_size=1, max_size=20), min_size=0, max_size=6)


def _dns_message(labels, qdcount=1, tail=b"\x00\x01\x00\x01", pointer=None):
    name = b"".join(bytes((len(lab),)) + lab for lab in labels)
    name += struct.pack("!H", 0xC000 | pointer) if pointer is not None else b"\x00"
    return struct.pack("!HHHHHH", 0x1234, 0x0100, qdcount, 0, 0, 0) + name + tail


@settings(max_examples=500, deadline=None)
@given(labels=_labels, qdcount=st.integers(0, 2), tail=st.binary(max_size=6),
       upper=st.lists(st.sampled_from([b"A", b"Z", b"\xc0", b"\xd7", b"\xde", b"\xdf", b".", b"\xff"]), max_size=4),
       transport=st.sampled_from(["udp", "tcp", "tcp2", "udp-reply"]), pointer=st.none() | st.integers(0, 80))
def test_c_dispatch_key_equals_python_on_dns_names(labels, qdcount, tail, upper, transport, pointer):
    labels = list(labels)
    if labels and upper:
        labels[-1] = labels[-1] + b"".join(upper)
    message = _dns_message(labels, qdcount, tail, pointer)
    if transport == "udp":
        frame = g.udp_frame("10.0.0.1", "10.0.0.53", 40000, 53, message)
    elif transport == "udp-reply":
        frame = g.udp_frame("10.0.0.53", "10.0.0.1", 53, 40000, message)
    else:
        framed = struct.pack("!H", len(message)) + message
        if transport == "tcp2":   # messages that do not parse come first: the first that does counts
            bad = struct.pack("!HHHHHH", 1, 0, 1, 0, 0, 0) + b"\x3f"
            framed = struct.pack("!H", len(bad)) + bad + framed
            framed = struct.pack("!H", 12) + struct.pack("!HHHHHH", 1, 0, 1, 0, 0, 0) + framed
        frame = g.tcp_frame("10.0.0.1", "10.0.0.53", 40000, 53, g.TCP_PSH | g.TCP_ACK, framed)
    assert _capture.dispatch_key(frame, 1) == dispatch_key(frame, 1)


def test_dns_keys_by_registered_domain():
    def key(name):
        return _capture.dispatch_key(g.udp_frame("10.0.0.1", "10.0.0.53", 1, 53, g.dns_query(name)), 1)

    assert key("a.b.Example-Dom.COM") == b"d:example-dom.com"
    assert key("x.y.co.uk") == b"d:y.co.uk"
    assert key("y.co.uk") == b"d:co.uk"                    # three labels: the last two
    assert key("localhost") == b"d:localhost"
    tcp = g.tcp_frame("10.0.0.9", "10.0.0.53", 40002, 53, g.TCP_PSH | g.TCP_ACK,
                      len(g.dns_query("c.example-dom.com")).to_bytes(2, "big") + g.dns_query("c.example-dom.com"))
    assert _capture.dispatch_key(tcp, 1) == b"d:example-dom.com"


# -- ring messages equal the reader's frames -----------------------------------------------------

VARIANTS = {
    "us-little": dict(order="<"),
    "ns-little": dict(order="<", nanosecond=True),
    "us-big": dict(order=">"),
    "ns-big": dict(order=">", nanosecond=True),
    "kuznetzov": dict(order="<", kuznetzov=True),
    "v2.2-swapped-lengths": dict(order=">", version=(2, 2)),
    "v2.3": dict(order="<", version=(2, 3)),
}


@pytest.mark.parametrize("nrings, chunk_bytes", [(1, None), (3, None), (1, 777), (4, 5000)])
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_ring_messages_equal_reader_frames(tmp_path, variant, nrings, chunk_bytes):
    path = tmp_path / (variant + ".pcap")
    path.write_bytes(pcap_bytes(mixed_records(), **VARIANTS[variant]))
    want, want_truncated, want_notes = reader_rows(path)
    got, truncated, notes, stats = c_walk(path, nrings, chunk_bytes=chunk_bytes)
    assert got == expected_split(want, nrings)
    assert (truncated, notes) == (want_truncated, want_notes) == (0, [])
    assert stats["frames"] == len(want) == sum(stats["dispatched"])


def test_snaplen_cuts_and_over_snaplen_records_are_noted_like_the_reader(tmp_path):
    records = mixed_records(200)
    path = tmp_path / "over.pcap"
    path.write_bytes(pcap_bytes(records, snaplen=300))   # records claim more than the declared 300
    for snaplen_bytes in (None, 100, 5000):
        want, want_truncated, want_notes = reader_rows(path, snaplen_bytes)
        got, truncated, notes, _ = c_walk(path, 2, chunk_bytes=1000, snaplen_bytes=snaplen_bytes)
        assert got == expected_split(want, 2)
        assert (truncated, notes) == (want_truncated, want_notes)
        assert any("snap length 300" in n for n in notes)


@pytest.mark.parametrize("cut", [3, 16, 40, 1500, -1])
@pytest.mark.parametrize("chunk_bytes", [None, 500])
def test_truncated_files_match_the_reader(tmp_path, cut, chunk_bytes):
    data = pcap_bytes(mixed_records(100))
    path = tmp_path / "truncated.pcap"
    path.write_bytes(data[:len(data) - cut] if cut > 0 else data[:24 + 16 + 10])
    want, want_truncated, want_notes = reader_rows(path)
    got, truncated, notes, _ = c_walk(path, 2, chunk_bytes=chunk_bytes)
    assert got == expected_split(want, 2)
    assert (truncated, notes) == (want_truncated, want_notes)
    assert truncated == 1 and notes[0].startswith("truncated at byte")


@pytest.mark.parametrize("order", ["<", ">"])
def test_garbled_record_ends_the_file_like_the_reader(tmp_path, order):
    records = mixed_records(50)
    data = bytearray(pcap_bytes(records, order=order))
    pos = 24
    for ts, frame, _ in records[:30]:
        pos += 16 + len(frame)
    struct.pack_into(order + "I", data, pos + 8, 262145)     # record 31 claims more than libpcap allows
    path = tmp_path / "garbled.pcap"
    path.write_bytes(bytes(data))
    want, want_truncated, want_notes = reader_rows(path)
    got, truncated, notes, _ = c_walk(path, 3, chunk_bytes=600)
    assert len(want) == 30
    assert got == expected_split(want, 3)
    assert (truncated, notes) == (want_truncated, want_notes)
    assert "record 31 claims 262145 captured bytes" in notes[0]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sizes=st.lists(st.integers(0, 2000), max_size=30), tail=st.binary(max_size=40),
       order=st.sampled_from("<>"), chunk=st.integers(64, 3000), nrings=st.integers(1, 3),
       snaplen=st.sampled_from([65535, 0, 100]))
def test_random_record_streams_match_the_reader(tmp_path, sizes, tail, order, chunk, nrings, snaplen):
    records = [(i * 1_000_001, os.urandom(n)) for i, n in enumerate(sizes)]
    path = tmp_path / "random.pcap"
    path.write_bytes(pcap_bytes(records, order=order, snaplen=snaplen) + tail)
    want, want_truncated, want_notes = reader_rows(path)
    got, truncated, notes, _ = c_walk(path, nrings, chunk_bytes=chunk)
    assert got == expected_split(want, nrings)
    assert (truncated, notes) == (want_truncated, want_notes)


@pytest.mark.parametrize("chunk_bytes", [4096, None])
@pytest.mark.parametrize("fail_record,into_record", [(0, 0), (1, 7), (333, 0), (333, 17), (599, 40)])
def test_read_error_ends_the_walk_like_the_reader(failing_file, chunk_bytes, fail_record, into_record):
    records = mixed_records(600)
    fail_at = _record_offsets(records)[fail_record] + into_record
    path = failing_file("eio.pcap", pcap_bytes(records), fail_at)
    want = []
    with pytest.raises(CaptureFileError) as reader_error:
        with PcapFileReader(path) as reader:
            for batch in reader:
                want.extend(rows(batch))
    assert len(want) == fail_record
    with Rings(2, 1 << 20) as rings:
        stager = _capture.Stager(rings.bufs, SEED, 512, False)
        try:
            with PcapFileReader(path) as source:
                frames, truncated, notes, stopped = walk_pcap(stager, source, rings.drain, lambda: True, chunk_bytes)
            while stager.flush() == _capture.RING_FULL:
                rings.drain()
            rings.drain()
        finally:
            stager.close()
        assert rings.frames == expected_split(want, 2)
    assert (frames, truncated, notes) == (fail_record, 0, [])
    assert str(stopped) == str(reader_error.value) == "eio.pcap: read error at byte %d: Input/output error" % fail_at


def test_messages_are_byte_for_byte_encode_batch(tmp_path):
    path = tmp_path / "t.pcap"
    path.write_bytes(pcap_bytes(mixed_records(1500)))
    with Rings(1, 1 << 22) as rings:
        stager = _capture.Stager(rings.bufs, SEED, 512, False)
        with PcapFileReader(path) as source:
            walk_pcap(stager, source, rings.drain, lambda: True)
        assert stager.flush() == _capture.OK
        stager.close()
        rings.drain()
        want, _, _ = reader_rows(path)
        expected = []
        for start in range(0, len(want), 512):
            builder = FrameBatchBuilder()
            for data, ts, _caplen, wirelen, lt in want[start:start + 512]:
                builder.add(data, ts, lt, wirelen)
            expected.append(encode_batch(builder.take()))
        assert rings.payloads[0] == expected


def test_add_batch_stages_exactly_what_add_pcap_stages(generated_corpus, tmp_path):
    path = tmp_path / "t.pcap"
    path.write_bytes(pcap_bytes(mixed_records(900), order=">", nanosecond=True))
    via_pcap, _, _, _ = c_walk(path, 3)
    with Rings(3, 1 << 20) as rings:
        stager = _capture.Stager(rings.bufs, SEED, 512, False)
        with PcapFileReader(path) as reader:
            for batch in reader:
                assert stager.add_batch(batch.buf, batch.offsets, batch.caplens, batch.wirelens, batch.ts_ns,
                                        batch.linktypes) == (len(batch), _capture.OK)
        assert stager.flush() == _capture.OK
        stager.close()
        rings.drain()
        assert rings.frames == via_pcap


# -- the capture process, C path and reference path ------------------------------------------------

def _run_capture_process(paths, nrings, reference, capacity=65536, reader="native"):
    """Runs the real capture process (forked) over `paths` into small rings while this process
    drains them; returns (per-ring frames, the capture's final statistics)."""
    frames, _payloads, done = _capture_process_rings(paths, nrings, reference, capacity, reader)
    return frames, done


def _capture_process_rings(paths, nrings, reference, capacity=65536, reader="native"):
    """_run_capture_process, with the ring messages as they were published: (per-ring frames,
    per-ring payloads, the capture's final statistics). A process that dies without saying
    "done" fails the test rather than hanging it."""
    ctx = multiprocessing.get_context("fork")
    with Rings(nrings, capacity) as rings:
        mine, theirs = ipc.channel()
        spec = CaptureSpec("replay", rings.producer, theirs, SEED, paths=paths, stats_interval_s=0,
                           reference=reference, reader=reader)
        proc = ctx.Process(target=run_capture, args=(spec,))
        proc.start()
        done = None
        while done is None:
            exited = not proc.is_alive()
            rings.drain()
            time.sleep(0.001)
            for message in ipc.receive_ready(mine):
                if message and message[0] == "done":
                    done = message[1]
            assert done is not None or not exited, "the capture process died (exit %s)" % proc.exitcode
        proc.join(30)
        assert proc.exitcode == 0
        rings.drain()
        assert all(ring.finished() for ring in rings.consumer)
        mine.close()
        theirs.close()
        return rings.frames, rings.payloads, done


def test_capture_process_c_path_equals_reference(generated_corpus, tmp_path, monkeypatch):
    monkeypatch.setattr(capture_mod, "READ_CHUNK_BYTES", 4096)   # records straddle reads
    truncated = tmp_path / "truncated.pcap"
    data = pcap_bytes(mixed_records(700), order=">")
    truncated.write_bytes(data[:-5])
    variant = tmp_path / "ns-big.pcap"
    variant.write_bytes(pcap_bytes(mixed_records(500, seed=9), order=">", nanosecond=True))
    paths = sorted(generated_corpus.values()) + [str(truncated), str(variant), str(tmp_path / "missing.pcap")]
    want = []
    for p in paths[:-1]:
        with open_capture(p) as reader:
            for batch in reader:
                want.extend(rows(batch))
    want = published(want)
    nrings = 3
    c_frames, c_stats = _run_capture_process(paths, nrings, reference=False)
    ref_frames, ref_stats = _run_capture_process(paths, nrings, reference=True)
    assert c_frames == expected_split(want, nrings)
    dispatcher = Dispatcher(nrings, SEED)
    assert ref_frames == [[r for r in want if dispatcher.worker_for(r[0], r[4]) == k] for k in range(nrings)]
    for key in ("frames", "files", "unreadable", "notes", "truncated_records", "ring_drop_frames"):
        assert c_stats[key] == ref_stats[key], key
    assert c_stats["frames"] == len(want) == sum(c_stats["dispatched"])
    assert c_stats["truncated_records"] == 1 and len(c_stats["unreadable"]) == 1


def _boundary_records(max_payload: int) -> list[tuple]:
    """Frames whose batches fill a ring message to the byte: two frames whose encoded batch is
    exactly `max_payload` bytes, then three, then a run of small frames (512 to a batch)."""
    def frame(size, i):
        return g.udp_frame("10.3.0.%d" % (i % 250), "10.0.0.9", 4000 + i, 9, bytes(size - 42))
    out, i = [], 0
    for count in (2, 3):
        head = encoded_batch_bytes(count, 0)
        sizes = [100] * (count - 1)
        sizes.append(max_payload - head - sum(sizes))
        for size in sizes:
            out.append((traffic.T0 + i * 1000, frame(size, i)))
            i += 1
    for _ in range(1100):
        out.append((traffic.T0 + i * 1000, frame(60 + i % 700, i)))
        i += 1
    return out


def test_reference_capture_writes_the_c_paths_ring_messages(generated_corpus, tmp_path):
    """With one ring (no dispatch choice), the plain-Python stager closes batches where the C
    stager does, to the byte, including batches that fill a ring message exactly."""
    capacity = 65536
    boundary = tmp_path / "boundary.pcap"
    boundary.write_bytes(pcap_bytes(_boundary_records(capacity // 2 - 16)))
    mixed = tmp_path / "mixed.pcap"
    mixed.write_bytes(pcap_bytes(mixed_records(900), order=">", nanosecond=True))
    paths = [str(boundary), str(mixed)] + sorted(generated_corpus.values())[:6]
    _, c_payloads, c_stats = _capture_process_rings(paths, 1, reference=False, capacity=capacity)
    _, ref_payloads, ref_stats = _capture_process_rings(paths, 1, reference=True, capacity=capacity)
    assert len(c_payloads[0][0]) == capacity // 2 - 16          # the first batch fills a message
    assert ref_payloads == c_payloads
    for key in ("frames", "dispatched", "files", "notes", "ring_drop_frames", "timeline_breaks"):
        assert c_stats[key] == ref_stats[key], key


def test_an_oversize_frame_is_dropped_and_counted_on_both_paths(tmp_path):
    """A frame no ring message can hold (the supervisor sizes rings so that it cannot happen) is
    a counted drop on the C path and the reference path alike, never a dead capture process."""
    small = g.udp_frame("10.0.0.1", "10.0.0.2", 1, 2, b"s" * 100)
    big = g.udp_frame("10.0.0.1", "10.0.0.2", 1, 2, os.urandom(3000))
    path = tmp_path / "oversize.pcap"
    path.write_bytes(pcap_bytes([(traffic.T0, small), (traffic.T0 + 1, big), (traffic.T0 + 2, small)]))
    for reference in (False, True):
        frames, stats = _run_capture_process([str(path)], 1, reference, capacity=4096)
        assert [row[0] for row in frames[0]] == [small, small], reference
        assert (stats["frames"], stats["dispatched"], stats["ring_drop_frames"], stats["oversize_frames"]) == \
            (3, [2], [1], 1), reference


def _readable_rows(path, reader):
    """The frames a reader hands out before the file ends or reading stops."""
    out = []
    try:
        with open_capture(path, reader=reader) as source:
            while (batch := source.read_batch(1000)) is not None:
                out.extend(rows(batch))
    except CaptureFileError:
        pass
    return out


def _record_offsets(records, header_bytes=24, record_header_bytes=16):
    offsets, pos = [], header_bytes
    for rec in records:
        offsets.append(pos)
        pos += record_header_bytes + len(rec[1])
    return offsets


def files_that_stop(failing_file, tmp_path, reader):
    """A classic pcap with a read error after 200 frames, a pcapng file that stops (a read error
    natively, libpcap's refusal of a second snap length with --reader libpcap), a text file and a
    good pcap of 200 frames: (paths, the frames each readable file hands out before it stops)."""
    first = mixed_records(300)
    eio_pcap = failing_file("eio.pcap", pcap_bytes(first), _record_offsets(first)[200] + 5)
    ng_frames = [g.udp_frame("10.2.0.%d" % i, "10.0.0.53", 2000 + i, 53, g.dns_query("ng%d.x.org" % i))
                 for i in range(120)]
    if reader == "native":
        head = ng_shb("<") + ng_idb("<")
        blocks = [ng_epb("<", 0, traffic.T0 // 1000 + i, f) for i, f in enumerate(ng_frames)]
        second = failing_file("eio.pcapng", head + b"".join(blocks), len(head) + sum(map(len, blocks[:50])) + 3)
    else:
        # libpcap stops where an interface with another snap length is described
        second = tmp_path / "mixed-snaplen.pcapng"
        second.write_bytes(ng_shb("<") + ng_idb("<")
                           + b"".join(ng_epb("<", 0, i, f) for i, f in enumerate(ng_frames[:3]))
                           + ng_idb("<", snaplen=8192) + ng_epb("<", 1, 9, ng_frames[3]))
    not_a_capture = tmp_path / "notes.txt"
    not_a_capture.write_text("not a capture\n")
    good = tmp_path / "good.pcap"
    good.write_bytes(pcap_bytes(mixed_records(200, seed=5)))
    paths = [str(eio_pcap), str(second), str(not_a_capture), str(good)]
    return paths, [_readable_rows(p, reader) for p in (eio_pcap, second, good)]


@pytest.mark.parametrize("reader", ["native", "libpcap"])
def test_files_that_stop_mid_way_are_reported_and_the_next_ones_read(failing_file, tmp_path, reader):
    """A read error in a classic pcap file (the C walker on the shipped path), one in a pcapng file
    or libpcap's refusal of a pcapng file, an unreadable file: each is reported with the frames
    before it kept, and the files after it are read, on the C path and the reference path alike."""
    paths, kept = files_that_stop(failing_file, tmp_path, reader)
    second = paths[1]
    second_kept = 50 if reader == "native" else 3
    assert [len(k) for k in kept] == [200, second_kept, 200]
    want = [row for rows_of_file in kept for row in rows_of_file]
    nrings = 3
    c_frames, c_stats = _run_capture_process(paths, nrings, reference=False, reader=reader)
    ref_frames, ref_stats = _run_capture_process(paths, nrings, reference=True, reader=reader)
    assert c_frames == expected_split(want, nrings)
    dispatcher = Dispatcher(nrings, SEED)
    assert ref_frames == [[r for r in want if dispatcher.worker_for(r[0], r[4]) == k] for k in range(nrings)]
    for key in ("frames", "files", "unreadable", "notes", "truncated_records"):
        assert c_stats[key] == ref_stats[key], key
    assert c_stats["frames"] == len(want) and c_stats["files"] == 3
    eio, stopped, unreadable = c_stats["unreadable"]
    assert eio.startswith("eio.pcap: ") and "Input/output error" in eio
    assert eio.endswith("; its first 200 frame(s) were replayed, not the rest")
    assert stopped.startswith(os.path.basename(second) + ": ")
    assert stopped.endswith("; its first %d frame(s) were replayed, not the rest" % second_kept)
    assert ("Input/output error" if reader == "native" else "snapshot length") in stopped
    assert unreadable.startswith("notes.txt: ") and "replayed" not in unreadable


# -- dispatch: what lands together, and the spread -----------------------------------------------

@pytest.mark.parametrize("seed", [SEED, b"\xff" * 16, b"run-seed-pinned!"])
def test_flows_and_registered_domains_land_in_one_ring(seed):
    stager = _capture.Stager([dummy_ring()] * 4, seed, 512, False)
    w = stager.worker_for
    for i in range(200):
        c, s = "10.%d.%d.%d" % (i % 7, i, 1 + i % 200), "198.51.100.%d" % (i % 250)
        sport = 1024 + i * 13
        flow = [g.tcp_frame(c, s, sport, 443), g.tcp_frame(s, c, 443, sport, g.TCP_SYN | g.TCP_ACK),
                g.tcp_frame(c, s, sport, 443, g.TCP_ACK), g.tcp_frame(s, c, 443, sport, g.TCP_PSH | g.TCP_ACK, b"x"),
                g.udp_frame(c, s, sport, 123, b"ntp"), g.udp_frame(c, s, 7, 60000 - i, b"probe"),
                g.icmp_frame(c, s), g.icmp_frame(s, c, reply=True),
                # the answers to c's probes: a reset from a port above c's, a port unreachable
                reset_answer(s, c, 60000 - i, sport, 2), port_unreachable(s, c, g.udp_frame(c, s, sport, 60000 - i, b"p")),
                g.tcp_frame(c, "203.0.113.%d" % (i % 250), sport + 1, 22)]      # the same client, another flow
        assert len({w(f, 1) for f in flow}) == 1
        # UDP lands by sender: what s sends, with s's own connections
        sent_by_s = [g.udp_frame(s, c, 123, sport, b"ntp"), g.tcp_frame(s, "192.0.2.%d" % (i % 250), 50000, 80)]
        assert len({w(f, 1) for f in sent_by_s}) == 1
        dom = "dom%d.co.uk" % i
        names = [g.udp_frame(c, "10.0.0.53", sport, 53, g.dns_query("a.%s" % dom)),
                 g.udp_frame("10.0.0.53", "10.9.9.9", 53, sport, g.dns_response("b.c.%s" % dom, ["192.0.2.1"])),
                 g.tcp_frame("10.0.0.8", "10.0.0.53", sport, 53, g.TCP_PSH | g.TCP_ACK,
                             len(g.dns_query("www." + dom)).to_bytes(2, "big") + g.dns_query("WWW." + dom.upper()))]
        assert len({w(f, 1) for f in names}) == 1
    stager.close()


def test_traffic_spreads_evenly_over_four_rings(tmp_path):
    path = traffic.write(tmp_path / "traffic.pcap", 40_000)
    got, _, _, stats = c_walk(path, 4)
    shares = [len(r) / 40_000 for r in got]
    assert sum(len(r) for r in got) == 40_000 == stats["frames"]
    assert all(0.17 < s < 0.33 for s in shares), shares


# -- full rings ----------------------------------------------------------------------------------

def test_replay_waits_on_a_full_ring_and_loses_nothing(tmp_path):
    path = tmp_path / "t.pcap"
    path.write_bytes(pcap_bytes(mixed_records(3000)))
    want, _, _ = reader_rows(path)
    want = published(want)
    with Rings(2, 8192) as rings:
        stager = _capture.Stager(rings.bufs, SEED, 16, False)
        with open(path, "rb") as f:
            data = f.read()
        pos, full = 24, 0
        while True:
            consumed, added, status = stager.add_pcap(data, pos, len(data), False, False, 1, 262144)
            pos += consumed
            if status == _capture.OK:
                break
            assert status == _capture.RING_FULL
            full += 1
            rings.drain()
        assert pos == len(data)
        while stager.flush() == _capture.RING_FULL:
            rings.drain()
        rings.drain()
        assert full > 10 and stager.ring_waits >= full
        assert all(p and len(p) <= 8192 // 2 - 16 for r in rings.payloads for p in r)
        assert max(len(decode_batch(p)) for r in rings.payloads for p in r) == 16
        assert [r.dropped_frames for r in rings.consumer] == [0, 0]
        stager.close()
        assert rings.frames == expected_split(want, 2)


def test_live_drops_and_counts_without_blocking(tmp_path):
    path = tmp_path / "t.pcap"
    path.write_bytes(pcap_bytes(mixed_records(3000)))
    want, _, _ = reader_rows(path)
    with Rings(2, 4096) as rings:          # tiny rings, and nobody reads them
        stager = _capture.Stager(rings.bufs, SEED, 16, True)
        with PcapFileReader(path) as reader:
            for batch in reader:
                assert stager.add_batch(batch.buf, batch.offsets, batch.caplens, batch.wirelens, batch.ts_ns,
                                        batch.linktypes) == (len(batch), _capture.OK)
        assert stager.flush() == _capture.OK
        assert stager.staged == 0
        stager.close()
        rings.drain()
        delivered = [len(r) for r in rings.frames]
        dropped = [r.dropped_frames for r in rings.consumer]
        oversize = [sum(1 for row in part if 24 + row[2] > 4096 // 2 - 16) for part in expected_split(want, 2)]
        assert all(d > 100 for d in dropped)
        assert [a + b for a, b in zip(delivered, dropped)] == [len(p) for p in expected_split(want, 2)]
        assert all(r.dropped_batches > 5 for r in rings.consumer)
        # what was delivered are whole batches, intact and in order (a later, smaller batch may
        # still fit where a bigger one did not)
        for k in range(2):
            remaining = iter(expected_split(want, 2)[k])
            assert all(any(row == r for r in remaining) for row in rings.frames[k])
        assert sum(oversize) > 0


def test_live_flush_by_age(tmp_path):
    with Rings(1, 1 << 16) as rings:
        stager = _capture.Stager(rings.bufs, SEED, 512, True)
        f = g.udp_frame("10.0.0.1", "10.0.0.2", 1, 2, b"x")
        b = FrameBatchBuilder()
        b.add(f, 5, 1)
        batch = b.take()
        stager.add_batch(batch.buf, batch.offsets, batch.caplens, batch.wirelens, batch.ts_ns, batch.linktypes)
        assert stager.flush(60.0) == _capture.OK and stager.staged == 1   # younger than 60 s: kept
        assert stager.flush(0.0) == _capture.OK and stager.staged == 0
        stager.close()
        rings.drain()
        assert rings.frames == [[(f, 5, len(f), len(f), 1)]]


def test_oversize_frame_is_dropped_and_counted():
    with Rings(1, 4096) as rings:
        stager = _capture.Stager(rings.bufs, SEED, 512, False)
        big, small = os.urandom(3000), os.urandom(100)
        data = b"".join(struct.pack("<IIII", 1, 2, len(f), len(f)) + f for f in (small, big, small))
        assert stager.add_pcap(data, 0, len(data), False, False, 1, 262144) == (len(data), 3, _capture.OK)
        assert stager.flush() == _capture.OK
        assert stager.oversize_frames == 1 and stager.frames == 3
        stager.close()
        rings.drain()
        assert [r[0] for r in rings.frames[0]] == [small, small]
        assert rings.consumer[0].dropped_frames == 1


# -- the plain-Python stager against the C stager ---------------------------------------------------

def _batch_of(frames, ts0=0):
    builder = FrameBatchBuilder()
    for i, frame in enumerate(frames):
        builder.add(frame, ts0 + i * 7, 1 + i % 2, len(frame) + i % 3)
    return builder.take()


def _run_ops(stager, rings, ops):
    """Applies `ops` to a stager over `rings`; returns what every call answered, the counters
    after each, and finally the ring messages and drop counters."""
    seen = []
    for op in ops:
        try:
            if op[0] == "add":
                batch = _batch_of(op[1], op[2])
                got = stager.add_batch(batch.buf, batch.offsets, batch.caplens, batch.wirelens, batch.ts_ns,
                                       batch.linktypes, op[3] if op[3] <= len(batch) else 0)
            elif op[0] == "flush":
                got = stager.flush(*op[1:])
            elif op[0] == "mark":
                got = stager.mark(0)
            else:
                got = rings.drain()
        except ValueError as exc:
            got = ("ValueError", str(exc))
        seen.append((op[0], got, stager.frames, stager.dispatched, stager.ring_waits, stager.oversize_frames,
                     stager.staged, stager.latest_ns))
    rings.drain()
    seen.append((rings.payloads, [(r.dropped_frames, r.dropped_batches) for r in rings.consumer]))
    return seen


class PrivateRing(Rings):
    """One ring in this process's memory (no shared memory to make and unlink per example)."""

    def __init__(self, capacity: int):
        self.blocks = []
        self.buf = memoryview(bytearray(ring_bytes(capacity)))
        self.producer = [Ring(self.buf, capacity, create=True)]
        self.consumer = [Ring(self.buf)]
        self.frames, self.payloads = [[]], [[]]

    @property
    def bufs(self):
        return [self.buf]


def _c_and_python(ops, capacity, batch_frames, live):
    results = []
    for make in (lambda rings: _capture.Stager(rings.bufs, SEED, batch_frames, live),
                 lambda rings: PyStager(rings.producer, SEED, batch_frames, live)):
        rings = PrivateRing(capacity)
        stager = make(rings)
        try:
            results.append(_run_ops(stager, rings, ops))
        finally:
            stager.close()
    return results


_CAPACITIES = (4096, 6144, 16384)
# sizes that fill a message to the byte (a frame alone, two or three of 100 bytes and one more),
# or miss it by one, so that batches close exactly where the two stagers could disagree
_EDGE_SIZES = sorted({size + d for c in _CAPACITIES for size in (
    c // 2 - 16 - 24, c // 2 - 16 - 40 - 100, c // 2 - 16 - 64 - 200) for d in (-1, 0, 1)} | {100})
_FRAMES = st.lists(st.one_of(st.integers(0, 2100), st.sampled_from(_EDGE_SIZES)), max_size=12).map(
    lambda sizes: [bytes([i % 251]) * size for i, size in enumerate(sizes)])

_OPS = st.lists(st.one_of(
    st.tuples(st.just("add"), _FRAMES, st.integers(0, 2**40), st.integers(0, 3)),
    st.tuples(st.just("flush")),
    st.tuples(st.just("flush"), st.sampled_from([0.0, 3600.0])),
    st.tuples(st.just("mark")),
    st.tuples(st.just("drain"))), max_size=30)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=_OPS, capacity=st.sampled_from(_CAPACITIES), batch_frames=st.integers(1, 6), live=st.booleans())
def test_python_stager_answers_and_publishes_as_the_c_stager(ops, capacity, batch_frames, live):
    """One ring (the two dispatch hashes differ on purpose; with one ring there is no choice):
    every call answers the same, the counters agree after every call, and the ring holds the
    same messages byte for byte, through full rings (replay waits, live drops), oversize frames,
    flushes by age, timeline marks and misuse."""
    c, python = _c_and_python(ops, capacity, batch_frames, live)
    assert python == c


def test_a_batch_refused_by_a_full_ring_takes_a_later_frame_as_in_c():
    """Replay: a flush meets a full ring, then a frame comes that still fits the staged batch: it
    joins it (the C stager never took the batch out), and the batch is published once the
    worker has made room."""
    big = [os.urandom(2000)]                    # two such messages leave 32 bytes of a 4096-byte ring
    ops = [("add", big, 0, 0), ("flush",), ("add", big, 1, 0), ("flush",),
           ("add", [b"a" * 60], 10, 0), ("flush",), ("add", [b"b" * 70], 20, 0), ("drain",), ("flush",)]
    c, python = _c_and_python(ops, 4096, 8, False)
    assert [answer[1] for answer in c[:-1]] == [(1, 0), 0, (1, 0), 0, (1, 0), _capture.RING_FULL, (1, 0), True, 0]
    payloads = c[-1][0][0]
    assert len(payloads) == 3 and [r[0] for r in rows(decode_batch(payloads[2]))] == [b"a" * 60, b"b" * 70]
    assert python == c


# -- arguments and misuse --------------------------------------------------------------------------

def test_bad_arguments_raise_and_never_crash():
    with Rings(1, 4096) as rings:
        with pytest.raises(ValueError):
            _capture.Stager(rings.bufs, b"short", 512, False)
        with pytest.raises(ValueError):
            _capture.Stager([bytearray(4096)], SEED, 512, False)
        with pytest.raises(BufferError):
            _capture.Stager([b"read-only" * 100], SEED, 512, False)
        stager = _capture.Stager(rings.bufs, SEED, 512, False)
        from array import array
        good = [array("Q", [0]), array("I", [4]), array("I", [4]), array("q", [0]), array("H", [1])]
        with pytest.raises(ValueError):
            stager.add_batch(b"abc", *good)                       # the frame is outside the buffer
        with pytest.raises(TypeError):
            stager.add_batch(b"abcd", array("I", [0]), *good[1:])  # wrong item size
        with pytest.raises(ValueError):
            stager.add_pcap(b"x" * 10, 5, 20, False, False, 1, 100)
        assert stager.add_pcap(b"x" * 10, 0, 10, False, False, 1, 100) == (0, 0, _capture.OK)
        stager.close()
        with pytest.raises(ValueError):
            stager.flush()


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=600), swapped=st.booleans(), record_bytes=st.sampled_from([16, 24]),
       linktype=st.sampled_from(LINKTYPES), swap_lengths=st.integers(0, 2))
def test_add_pcap_on_garbage_returns_sane_values(data, swapped, record_bytes, linktype, swap_lengths):
    with Rings(2, 4096) as rings:
        stager = _capture.Stager(rings.bufs, SEED, 4, False)
        consumed, frames, status = stager.add_pcap(data, 0, len(data), swapped, False, linktype, 50,
                                                   record_bytes=record_bytes, max_caplen=300,
                                                   swap_lengths=swap_lengths)
        assert 0 <= consumed <= len(data) and status in (_capture.OK, _capture.BAD_RECORD, _capture.RING_FULL)
        assert frames == stager.frames == sum(stager.dispatched)
        stager.flush()
        stager.close()
