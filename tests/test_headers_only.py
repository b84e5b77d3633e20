"""Frames published as their headers alone (engine/transport/dispatch.py headers_cut, the C
stager's headers_suffice/reverses_flight in engine/transport/csrc/capture.c).

Holds: the C rule to the Python reference frame by frame (every captured frame, mutated frames);
the two stagers to the same cuts and counts; the worker, fast and reference, to the same events
and counters on the frames the stager publishes as on the whole frames, over every corpus; and
the one flight the worker follows in the direction the rule cuts (a ServerHello from the higher
port, in a SYN-ACK) to its certificate event, through the real engine on both paths.
"""

from __future__ import annotations

import mmap
import random

import dpkt
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.sources import synthetic as g
from engine.sources.pcapfile import open_capture
from engine.transport import _capture
from engine.transport.dispatch import headers_cut
from engine.transport.ring import Ring, decode_batch, ring_bytes
from engine.transport.stager import PyStager
from matchers import TrailMatchers
from tests.test_certs import (CLIENT4, SERVER4, Conversation, chain, fingerprint, leaf_artifact, replay,  # noqa: F401
                              split, tls12_flight)
from tests.test_fastpath import MIN_FRAMES, captures, fixture_artifact  # noqa: F401
from workers.batch import FrameBatch
from workers.decode import decode_frame
from workers.pipeline import Worker

SEED = bytes(range(16))
CAPACITY = 64 << 20


def _frames(path):
    with open_capture(path) as reader:
        for batch in reader:
            for i in range(len(batch)):
                yield batch.frame(i), batch.linktypes[i]


def test_c_rule_equals_the_reference_on_every_captured_frame(captures):
    seen = cut = reversing = 0
    for path in captures:
        for frame, linktype in _frames(path):
            want = headers_cut(frame, linktype)
            assert _capture.headers_cut(frame, linktype) == want, (path, frame.hex())
            seen += 1
            if want[0] is not None:
                cut += 1
                # what is published decodes to the same packet with no payload
                whole, headers = decode_frame(frame, linktype), decode_frame(frame[:want[0]], linktype)
                assert whole.payload and headers == whole._replace(payload=b"")
            reversing += want[1]
    assert seen > MIN_FRAMES
    assert cut > 3_000             # tests/traffic.py's TLS data, and the real captures' bulk
    assert reversing == 0          # no real capture carries a ServerHello in a SYN-ACK


# Segments the rule must tell apart: the payload openings it keeps and ones it cuts.
OPENINGS = [b"", b"\x17\x03\x03\x05\x00", b"\x16\x03\x01\x00\x05\x01", b"\x16\x03\x03\x00\x05\x02", b"GET / HTTP/1.1",
            b"POST /x HTTP/1.0", b"HTTP/1.1 200 OK", b"HTTP/", b"HTTP", b" GET", b"A" * 32 + b" ", b"A" * 33 + b" ",
            b"GE\x00 ", b"\x00\x01", b"\x00\x1c\x12\x34\x01\x00"]


@st.composite
def tcp_frames(draw):
    opening = draw(st.sampled_from(OPENINGS)) + draw(st.binary(max_size=40))
    ports = st.sampled_from([53, 80, 443, 1024, 8080, 50000, 65535])
    flags = draw(st.integers(0, 0xFF))
    v6 = draw(st.booleans())
    src, dst = ("2001:db8::1", "2001:db8::2") if v6 else ("10.0.0.1", "10.0.0.2")
    segment = g.tcp(src, dst, draw(ports), draw(ports), flags, opening, seq=draw(st.sampled_from([0, 7])))
    frame = g.ether(g.ip_packet(src, dst, 6, segment), g.ethertype_for(src), draw(st.sampled_from([(), (5,)])))
    if draw(st.booleans()):         # Ethernet padding past the IP datagram, or a snap-length cut
        frame = frame + bytes(draw(st.integers(1, 8))) if draw(st.booleans()) else frame[:draw(st.integers(0, len(frame)))]
    return frame


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tcp_frames())
def test_c_rule_equals_the_reference_on_generated_segments(frame):
    assert _capture.headers_cut(frame, 1) == headers_cut(frame, 1)


def test_the_rule_keeps_what_the_worker_parses():
    def cut(sport, dport, flags, payload):
        return headers_cut(g.tcp_frame("10.0.0.1", "10.0.0.2", sport, dport, flags, payload), 1)[0]
    ack = g.TCP_ACK | g.TCP_PSH
    data = b"\x17\x03\x03\x05\x00" + bytes(1395)
    assert cut(50000, 443, ack, data) == 54                   # the client's TLS data: headers only
    assert cut(443, 443, ack, data) == 54
    assert cut(443, 50000, ack, data) is None                 # the server's: a certificate flight may go on
    assert cut(50000, 443, g.TCP_SYN | g.TCP_ACK, data) is None
    assert cut(50000, 443, g.TCP_RST | g.TCP_ACK, data) is None
    assert cut(50000, 443, g.TCP_PSH, data) is None           # no ACK: a probe
    assert cut(50000, 53, ack, data) is None and cut(50053, 53, ack, data) is None
    for kept in (b"\x16\x03\x01\x02\x00\x01", b"GET / HTTP/1.1\r\n", b"PROPFIND /a HTTP/1.1", b"HTTP/1.1 200 OK",
                 b"HTTP/x", b"X" * 32 + b" not HTTP"):
        assert cut(50000, 8080, ack, kept) is None, kept
    for cuttable in (b"X" * 33 + b" ", b" GET / HTTP/1.1", b"GE\tT / HTTP/1.1", b"\x00", b"HTTP"):
        assert cut(50000, 8080, ack, cuttable) == 54, cuttable
    assert cut(50000, 443, ack, b"") is None                  # nothing to cut


def _published(stager_kind, frames, whole_after=None):
    """Frames through a stager with one ring: the batches a worker takes, and the stager."""
    ring_buf = memoryview(mmap.mmap(-1, ring_bytes(CAPACITY)))
    ring = Ring(ring_buf, CAPACITY, create=True)
    stager = (_capture.Stager([ring_buf], SEED, 512, False) if stager_kind == "c"
              else PyStager([ring], SEED, 512, False))
    batches = []
    for batch in frames:
        start = 0
        while True:
            start, status = stager.add_batch(batch.buf, batch.offsets, batch.caplens, batch.wirelens, batch.ts_ns,
                                             batch.linktypes, start)
            while (payload := ring.get()) is not None:
                batches.append(decode_batch(payload))
            if status == _capture.OK:
                break
    while stager.flush() != _capture.OK:
        while (payload := ring.get()) is not None:
            batches.append(decode_batch(payload))
    while (payload := ring.get()) is not None:
        batches.append(decode_batch(payload))
    counts = (stager.frames, stager.headers_only, stager.whole_frames)
    stager.close()
    ring.release()
    return [b for b in batches if len(b)], counts


def _reader_batches(path):
    with open_capture(path) as reader:
        return list(reader)


def _judge(matchers, batches, fast):
    worker = Worker(matchers, "t", 60, fast=fast)
    events = []
    for batch in batches:
        events += worker.process(batch)
    return events + worker.flush(), worker.counters.as_dict()


def test_the_worker_judges_published_frames_as_whole_ones(captures, fixture_artifact):
    """Every corpus, fast and reference worker: the same events and counters from the frames the
    C stager publishes as from the frames the files hold; the Python stager publishes the same."""
    matchers = TrailMatchers.load(fixture_artifact)
    judged = cut = events = 0
    for path in captures:
        whole = _reader_batches(path)
        published, (frames, headers_only, _) = _published("c", whole)
        ref_published, ref_counts = _published("py", whole)
        assert ref_counts == (frames, headers_only, False)
        assert [_rows(b) for b in ref_published] == [_rows(b) for b in published], path
        assert sum(b.caplens[i] for b in published for i in range(len(b))) <= sum(
            b.caplens[i] for b in whole for i in range(len(b)))
        assert [w for b in published for w in b.wirelens] == [w for b in whole for w in b.wirelens]
        for fast in (True, False):
            want = _judge(matchers, whole, fast)
            assert _judge(matchers, published, fast) == want, (path, fast)
            events += len(want[0])
        judged += frames
        cut += headers_only
    assert judged > MIN_FRAMES and cut > 3_000 and events > 100


def _rows(batch: FrameBatch) -> list[tuple]:
    return [(batch.frame(i), batch.ts_ns[i], batch.caplens[i], batch.wirelens[i], batch.linktypes[i])
            for i in range(len(batch))]


def _reversed_flight_pcap(path):
    """A TLS 1.2 server on a port above its client's (60000 -> 443) whose ServerHello comes in its
    SYN-ACK: the worker follows that flight (client_is_src is false for a SYN-ACK), and the rest of
    it travels from the higher port with ACK alone, the direction the rule cuts. Preceded by the
    client's TLS data of another connection, which is cut until the SYN-ACK is seen."""
    flight = tls12_flight(700)
    segments = split(flight, 4)
    other = Conversation(4, client_port=50000, server_port=443)
    other.handshake()
    c = Conversation(4, client=CLIENT4, server=SERVER4, client_port=443, server_port=60000)
    c.frames.append(c._frame(True, dpkt.tcp.TH_SYN))
    c.client_seq += 1
    c.frames.append(c._frame(False, dpkt.tcp.TH_SYN | dpkt.tcp.TH_ACK, segments[0]))
    c.server_seq += len(segments[0])
    c.server_segments(segments[1:])
    for _ in range(3):
        other.send(True, b"\x17\x03\x03\x05\x00" + random.Random(1).randbytes(1200))
    c.frames[:0] = other.frames
    return c.write(path), len(other.frames)


def test_a_flight_from_the_higher_port_stops_the_cuts(tmp_path, leaf_artifact):
    pcap, before = _reversed_flight_pcap(tmp_path / "reversed.pcap")
    batches = _reader_batches(str(pcap))
    for kind in ("c", "py"):
        published, (frames, headers_only, whole_frames) = _published(kind, batches)
        assert whole_frames and headers_only == 3 and frames == sum(len(b) for b in batches)
    leaf, _ = chain()
    for extra in ([], ["--reference"]):
        events, stderr = replay(tmp_path, leaf_artifact, pcap, *extra, log="log" + "".join(extra))
        assert [(e["type"], e["trail"]) for e in events] == [("CERT", fingerprint(leaf))], stderr
        assert "tls certificates 1" in stderr
