"""Certificate trails end to end: TLS 1.2 server certificates joined across TCP segments and TLS
records (workers/certs.py), matched by SHA-1 (matchers/certs.py) and reported as CERT events.

Handshakes are built here with a real X.509 chain made by `cryptography`, written into pcaps with
dpkt, and replayed through the installed `maltrail-engine replay`; the real captures of
../shared/corpus/real holding TLS 1.2 server certificates are found by an extractor of this file
(dpkt + in-order joining, independent of the worker's) and cross-checked with `openssl x509`.
Tests needing ../shared skip with a reason when it is absent.
"""

from __future__ import annotations

import csv
import datetime
import functools
import hashlib
import random
import shutil
import socket
import subprocess
from pathlib import Path

import dpkt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.sources.pcapfile import open_capture
from matchers import Artifact, TrailMatchers
from tests.collectors import logged_events
from tests.conftest import REAL_CORPUS, need_shared
from tests.pcaps import _ip_layer
from tests.test_corpus import console_script
from trailsdb.compile import build
from workers.certs import (
    FOUND, MALFORMED, MORE, NO_CERTIFICATE, ServerCertAssembler, parse_server_flight, starts_server_hello,
)
from workers.pipeline import Worker

T0_S = 1_700_000_000
CLIENT4, SERVER4 = "10.1.2.3", "198.51.100.7"
CLIENT6, SERVER6 = "2001:db8::c", "2001:db8:1::5"
CLIENT_PORT, SERVER_PORT = 51515, 443


# --- a real certificate chain ---------------------------------------------------------------------

def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


@functools.lru_cache(maxsize=None)
def chain() -> tuple[bytes, bytes]:
    """(leaf DER, CA DER): a CA and a leaf it signed, the leaf with enough names to take a few
    segments (a real chain's size)."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    start = datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc)
    end = start + datetime.timedelta(days=3650)
    ca = (x509.CertificateBuilder().subject_name(_name("certs test CA")).issuer_name(_name("certs test CA"))
          .public_key(ca_key.public_key()).serial_number(1).not_valid_before(start).not_valid_after(end)
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    names = [x509.DNSName("host%03d.c2.example" % i) for i in range(50)]
    leaf = (x509.CertificateBuilder().subject_name(_name("c2.example")).issuer_name(ca.subject)
            .public_key(leaf_key.public_key()).serial_number(2).not_valid_before(start).not_valid_after(end)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .sign(ca_key, hashes.SHA256()))
    return leaf.public_bytes(serialization.Encoding.DER), ca.public_bytes(serialization.Encoding.DER)


def fingerprint(der: bytes) -> str:
    return hashlib.sha1(der).hexdigest()


# --- TLS messages and records (RFC 5246 sections 6.2.1, 7.4) --------------------------------------

def _u24(n: int) -> bytes:
    return n.to_bytes(3, "big")


def _message(msg_type: int, body: bytes) -> bytes:
    return bytes([msg_type]) + _u24(len(body)) + body


def server_hello(version: bytes = b"\x03\x03", extensions: bytes = b"") -> bytes:
    body = version + bytes(range(32)) + b"\x20" + b"\x77" * 32 + b"\xc0\x2b" + b"\x00"
    if extensions:
        body += len(extensions).to_bytes(2, "big") + extensions
    return _message(2, body)


def certificate(*ders: bytes) -> bytes:
    entries = b"".join(_u24(len(d)) + d for d in ders)
    return _message(11, _u24(len(entries)) + entries)


SERVER_HELLO_DONE = _message(14, b"")


def records(handshake: bytes, fragment_bytes: int = 1 << 14, content_type: int = 22,
            version: bytes = b"\x03\x03") -> bytes:
    """`handshake` in records of at most `fragment_bytes` (a message may span records)."""
    out = b""
    for at in range(0, len(handshake), fragment_bytes):
        fragment = handshake[at:at + fragment_bytes]
        out += bytes([content_type]) + version + len(fragment).to_bytes(2, "big") + fragment
    return out


def tls12_flight(fragment_bytes: int = 1 << 14) -> bytes:
    """ServerHello, Certificate (leaf then CA), ServerHelloDone; records of `fragment_bytes`."""
    leaf, ca = chain()
    return records(server_hello() + certificate(leaf, ca) + SERVER_HELLO_DONE, fragment_bytes)


def tls13_flight() -> bytes:
    """A TLS 1.3 first flight: ServerHello (supported_versions 1.3), ChangeCipherSpec, then
    application-data records; the leaf's DER bytes sit in one of them in the clear, which a
    parser that hunted for certificates anywhere would take for one."""
    hello = records(server_hello(extensions=b"\x00\x2b\x00\x02\x03\x04"))
    ccs = b"\x14\x03\x03\x00\x01\x01"
    leaf, ca = chain()
    inner = certificate(leaf, ca)
    return hello + ccs + records(inner, content_type=23)


def split(data: bytes, parts: int) -> list[bytes]:
    """`data` in `parts` segments of about equal size, each cut a few bytes off the even split
    (so cuts fall inside records and messages, not on their boundaries)."""
    rng = random.Random(parts * 7919 + len(data))
    step = len(data) // parts
    cuts = [i * step + rng.randrange(-5, 6) for i in range(1, parts)]
    bounds = [0] + cuts + [len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:])]


# --- pcaps -----------------------------------------------------------------------------------------

class Conversation:
    """One TCP connection client -> server written frame by frame into an Ethernet pcap."""

    def __init__(self, version: int, client: str = "", server: str = "", client_port: int = CLIENT_PORT,
                 server_port: int = SERVER_PORT):
        self.version = version
        self.client = client or (CLIENT4 if version == 4 else CLIENT6)
        self.server = server or (SERVER4 if version == 4 else SERVER6)
        self.client_port, self.server_port = client_port, server_port
        self.client_seq, self.server_seq = 1000, 70000
        self.frames: list[bytes] = []

    def _frame(self, from_client: bool, flags: int, payload: bytes = b"", seq: int | None = None) -> bytes:
        src, dst = (self.client, self.server) if from_client else (self.server, self.client)
        sport, dport = (self.client_port, self.server_port) if from_client else (self.server_port, self.client_port)
        own = self.client_seq if from_client else self.server_seq
        other = self.server_seq if from_client else self.client_seq
        tcp = dpkt.tcp.TCP(sport=sport, dport=dport, seq=own if seq is None else seq, ack=other, flags=flags,
                           win=65535, data=payload)
        family = socket.AF_INET if self.version == 4 else socket.AF_INET6
        if self.version == 4:
            ip = dpkt.ip.IP(src=socket.inet_pton(family, src), dst=socket.inet_pton(family, dst), p=6, ttl=64,
                            data=tcp)
            ip.len = 20 + len(bytes(tcp))
            kind = dpkt.ethernet.ETH_TYPE_IP
        else:
            ip = dpkt.ip6.IP6(src=socket.inet_pton(family, src), dst=socket.inet_pton(family, dst), nxt=6, hlim=64,
                              data=tcp)
            ip.plen = len(bytes(tcp))
            kind = dpkt.ethernet.ETH_TYPE_IP6
        eth = dpkt.ethernet.Ethernet(src=b"\x02\x00\x00\x00\x00\x01", dst=b"\x02\x00\x00\x00\x00\x02", type=kind,
                                     data=ip)
        return bytes(eth)

    def handshake(self) -> None:
        self.frames.append(self._frame(True, dpkt.tcp.TH_SYN))
        self.client_seq += 1
        self.frames.append(self._frame(False, dpkt.tcp.TH_SYN | dpkt.tcp.TH_ACK))
        self.server_seq += 1
        self.frames.append(self._frame(True, dpkt.tcp.TH_ACK))
        hello = records(_message(1, b"\x03\x03" + bytes(32) + b"\x00\x00\x02\xc0\x2b\x01\x00"), version=b"\x03\x01")
        self.send(True, hello)

    def send(self, from_client: bool, payload: bytes) -> None:
        self.frames.append(self._frame(from_client, dpkt.tcp.TH_ACK | dpkt.tcp.TH_PUSH, payload))
        if from_client:
            self.client_seq += len(payload)
        else:
            self.server_seq += len(payload)

    def server_segments(self, segments: list[bytes], order: list[int] | None = None) -> None:
        """The server's segments, in `order` (indices) when given: sequence numbers stay the
        segments' own, so a reordered list is out-of-order delivery."""
        at, seqs = self.server_seq, []
        for s in segments:
            seqs.append(at)
            at += len(s)
        for i in (order if order is not None else range(len(segments))):
            self.frames.append(self._frame(False, dpkt.tcp.TH_ACK | dpkt.tcp.TH_PUSH, segments[i], seq=seqs[i]))
        self.server_seq = at
        self.frames.append(self._frame(True, dpkt.tcp.TH_ACK))

    def write(self, path: Path) -> Path:
        with open(path, "wb") as f:
            writer = dpkt.pcap.Writer(f, snaplen=65535, linktype=dpkt.pcap.DLT_EN10MB)
            for i, frame in enumerate(self.frames):
                writer.writepkt(frame, ts=T0_S + i / 1000)
        return path


def conversation_pcap(path: Path, version: int, flight: bytes, parts: int, order=None) -> Path:
    c = Conversation(version)
    c.handshake()
    c.server_segments(split(flight, parts) if parts > 1 else [flight], order)
    return c.write(path)


# --- trails and replay -----------------------------------------------------------------------------

def artifact_with(tmp_path: Path, rows: list[tuple[str, str, str]], name: str = "certs") -> Path:
    source = tmp_path / (name + ".csv")
    with open(source, "w", newline="") as f:
        csv.writer(f).writerows(rows)
    out = tmp_path / (name + ".mtdb")
    result = subprocess.run([console_script(), "trails", "build", "--source", str(source), "-o", str(out)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return out


def replay(tmp_path: Path, artifact: Path, *pcaps: Path, log: str = "log") -> tuple[list[dict], str]:
    log_dir = tmp_path / log
    result = subprocess.run([console_script(), "replay", "--trails", str(artifact), "--log-dir", str(log_dir)]
                            + [str(p) for p in pcaps], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    return logged_events(log_dir), result.stderr


@pytest.fixture(scope="module")
def leaf_artifact(tmp_path_factory) -> Path:
    """The leaf's fingerprint as a trail, written as openssl writes it (upper case, colon pairs)."""
    leaf, _ = chain()
    hexed = fingerprint(leaf).upper()
    colons = ":".join(hexed[i:i + 2] for i in range(0, 40, 2))
    return artifact_with(tmp_path_factory.mktemp("trails"),
                         [(colons, "dridex c2 certificate (suspicious)", "abuse.ch"),
                          ("sha1:" + fingerprint(chain()[1]), "the CA, never the leaf", "custom")])


# --- end to end ------------------------------------------------------------------------------------

@pytest.mark.parametrize("version", [4, 6])
@pytest.mark.parametrize("parts,fragment_bytes", [(2, 1 << 14), (3, 700), (4, 300)])
def test_a_certificate_split_over_segments_and_records_is_one_cert_event(tmp_path, leaf_artifact, version, parts,
                                                                           fragment_bytes):
    flight = tls12_flight(fragment_bytes)
    # segments an Ethernet path carries (MSS 1448 or less): the sensor's snap length keeps them whole
    assert max(map(len, split(flight, parts))) <= 1448
    pcap = conversation_pcap(tmp_path / "tls12.pcap", version, flight, parts)
    events, stderr = replay(tmp_path, leaf_artifact, pcap)
    leaf, _ = chain()
    client, server = (CLIENT4, SERVER4) if version == 4 else (CLIENT6, SERVER6)
    assert [(e["type"], e["trail"], e["src_ip"], e["src_port"], e["dst_ip"], e["dst_port"], e["proto"], e["info"],
             e["reference"]) for e in events] == [
        ("CERT", fingerprint(leaf), client, CLIENT_PORT, server, SERVER_PORT, "TCP",
         "dridex c2 certificate (suspicious)", "abuse.ch")]
    assert "tls certificates 1" in stderr


def test_tls13_handshake_gives_no_event(tmp_path, leaf_artifact):
    pcap = conversation_pcap(tmp_path / "tls13.pcap", 4, tls13_flight(), 3)
    events, _ = replay(tmp_path, leaf_artifact, pcap)
    assert events == []


def test_out_of_order_and_missing_segments_give_up_without_an_event(tmp_path, leaf_artifact):
    """Segment 3 before segment 2, and a flight whose second segment was never captured: each
    is given up (no waiting for the hole), counted, and no event; a clean flow after them in the
    same capture is still reported."""
    flight = tls12_flight(900)
    c = Conversation(4, client_port=40001)
    c.handshake()
    c.server_segments(split(flight, 4), order=[0, 2, 1, 3])
    lost = Conversation(4, client_port=40002)
    lost.handshake()
    lost.server_segments(split(flight, 3), order=[0, 2])
    good = Conversation(4, client_port=40003)
    good.handshake()
    good.server_segments(split(flight, 2))
    for conv in (lost, good):
        c.frames += conv.frames
    events, stderr = replay(tmp_path, leaf_artifact, c.write(tmp_path / "reordered.pcap"))
    assert [(e["type"], e["src_port"]) for e in events] == [("CERT", 40003)]
    assert "out of order or missing segment 2" in stderr


def _garbage_flights() -> list[bytes]:
    leaf, ca = chain()
    good = server_hello() + certificate(leaf, ca) + SERVER_HELLO_DONE
    bad_list = bytearray(certificate(leaf, ca))
    bad_list[4:7] = (len(bad_list) * 3).to_bytes(3, "big")       # certificate_list longer than its message
    bad_cert = bytearray(certificate(leaf))
    bad_cert[7:10] = (0xFFFFFF).to_bytes(3, "big")                # the first certificate longer than the list
    return [
        records(server_hello() + bytes(bad_list)),
        records(server_hello() + bytes(bad_cert)),
        records(good)[:3] + b"\x40\x01" + records(good)[5:],    # a record longer than 2^14 bytes
        records(good, 300)[:306] + b"\x07" + records(good, 300)[307:],  # a second record of version 7.x
        records(good)[: len(records(good)) // 2],               # cut short: the rest never comes
    ]


def test_malformed_and_truncated_flights_are_counted_not_fatal(tmp_path, leaf_artifact):
    frames = []
    for i, flight in enumerate(_garbage_flights()):
        c = Conversation(4, client_port=41000 + i)
        c.handshake()
        c.server_segments(split(flight, 2))
        frames += c.frames
    c = Conversation(6)
    c.handshake()
    c.server_segments(split(tls12_flight(), 3))
    c.frames = frames + c.frames
    events, stderr = replay(tmp_path, leaf_artifact, c.write(tmp_path / "garbage.pcap"))
    assert [(e["type"], e["src_ip"]) for e in events] == [("CERT", CLIENT6)]
    assert "malformed certificate list length 1" in stderr
    assert "malformed certificate length 1" in stderr
    assert "malformed record length 1" in stderr
    assert "malformed record version 1" in stderr


def test_no_certificate_trails_no_certificate_path(tmp_path):
    """Trails without certificates: the certificate path never runs (nothing extracted)."""
    artifact = artifact_with(tmp_path, [("evil.example", "malware", "custom")])
    pcap = conversation_pcap(tmp_path / "tls12.pcap", 4, tls12_flight(), 3)
    events, stderr = replay(tmp_path, artifact, pcap)
    assert events == [] and "tls certificates" not in stderr


def test_outputs_carry_the_cert_event(tmp_path, leaf_artifact):
    """The CERT event through `tail` in every format: Maltrail's line writes the type as CERT."""
    pcap = conversation_pcap(tmp_path / "tls12.pcap", 4, tls12_flight(), 2)
    replay(tmp_path, leaf_artifact, pcap)
    fp = fingerprint(chain()[0])
    outputs = {}
    for fmt in ("maltrail", "json", "csv"):
        out = subprocess.run([console_script(), "tail", "--log-dir", str(tmp_path / "log"), "--format", fmt],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        outputs[fmt] = out.stdout
    line = outputs["maltrail"].strip()
    assert line.endswith(" %s %d %s %d TCP CERT %s \"dridex c2 certificate (suspicious)\" abuse.ch"
                         % (CLIENT4, CLIENT_PORT, SERVER4, SERVER_PORT, fp)), line
    assert '"type": "CERT"' in outputs["json"] and fp in outputs["json"]
    assert ",CERT,%s," % fp in outputs["csv"]


# --- trails check, the build, the matcher ---------------------------------------------------------

def test_trails_check_answers_a_fingerprint_in_every_spelling(leaf_artifact):
    hexed = fingerprint(chain()[0])
    for spelling in (hexed, hexed.upper(), ":".join(hexed[i:i + 2] for i in range(0, 40, 2)), "sha1:" + hexed):
        out = subprocess.run([console_script(), "trails", "check", "--trails", str(leaf_artifact), spelling],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stdout + out.stderr
        assert "MATCH certificate trail %r" % hexed in out.stdout
        assert "dridex c2 certificate (suspicious)" in out.stdout
        assert "listed by" in out.stdout                  # provenance, as for every kind
    out = subprocess.run([console_script(), "trails", "check", "--trails", str(leaf_artifact), "ab" * 20],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "no certificate trail" in out.stdout


def test_fast_matcher_equals_reference_and_old_artifacts_load(tmp_path):
    rng = random.Random(5)
    digests = sorted({rng.randbytes(20) for _ in range(500)})
    rows = [((d.hex() if i % 3 else "sha1:" + d.hex().upper()), "family %d" % i, "abuse.ch")
            for i, d in enumerate(digests)]
    out = tmp_path / "many.mtdb"
    build([str(_csv(tmp_path / "many.csv", rows))], str(out))
    artifact = Artifact.open(str(out))
    fast, ref = TrailMatchers.load(artifact), TrailMatchers.reference(artifact)
    assert len(fast.certs) == len(ref.certs) == 500
    probes = digests + [rng.randbytes(20) for _ in range(500)] + [b"", b"\x00" * 20, b"\xff" * 20]
    for d in probes:
        assert fast.certs.lookup(d) == ref.certs.lookup(d)
        if d in digests:
            assert artifact.key(fast.certs.lookup(d)) == d.hex()


def test_an_artifact_without_the_certificate_sections_loads_with_none(tmp_path):
    """A format-3 file built before certificate trails: the same sections minus certs/cert_ids."""
    from matchers.artifact import S_CERT_IDS, S_CERTS, write_artifact
    from trailsdb.compile import layout
    from trailsdb.sources import EMPTY_WHITELIST
    sections = [(n, d) for n, d in layout([(7, "evil.example", 0)], [("malware", "x")], EMPTY_WHITELIST, {})
                if n not in (S_CERTS, S_CERT_IDS)]
    path = tmp_path / "old.mtdb"
    write_artifact(str(path), 1, T0_S, sections)
    artifact = Artifact.open(str(path))
    matchers = TrailMatchers.load(artifact)
    assert len(matchers.certs) == 0 and matchers.certs.lookup(b"\x00" * 20) is None
    assert matchers.domains.match("evil.example") is not None
    worker = Worker(matchers, "t")
    pcap = conversation_pcap(tmp_path / "tls12.pcap", 4, tls12_flight(), 3)
    with open_capture(str(pcap)) as reader:
        for batch in reader:
            assert worker.process(batch) == []


def _csv(path: Path, rows) -> Path:
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(rows)
    return path


# --- the assembler's bounds ------------------------------------------------------------------------

def test_assembler_caps_flows_and_bytes_evicting_the_oldest():
    flight = tls12_flight()
    first = flight[:600]
    a = ServerCertAssembler(max_flows=8, max_total_bytes=8 * 600 * 2)
    for i in range(20):
        assert a.feed(("flow", i), 1, first) is None
    assert len(a) == 8 and a.counts["flows evicted"] == 12
    assert a.held_bytes == 8 * 600
    # the newest flows are the ones kept: finishing flow 19 yields its certificate
    assert a.feed(("flow", 19), 601, flight[600:]) == chain()[0]
    assert not a.active(("flow", 19)) and not a.active(("flow", 0))
    small = ServerCertAssembler(max_total_bytes=1500)
    for i in range(5):
        small.feed(("f", i), 1, first)
    assert small.held_bytes <= 1500 and small.counts["flows evicted"] == 3
    long_flight = ServerCertAssembler(max_flight_bytes=1000)
    long_flight.feed("x", 1, first)
    assert long_flight.feed("x", 601, flight[600:1200]) is None
    assert long_flight.counts["flight too long"] == 1 and len(long_flight) == 0


def test_assembler_takes_retransmissions_and_sequence_wraparound():
    flight = tls12_flight(500)
    segs = split(flight, 4)
    a = ServerCertAssembler()
    seq = (1 << 32) - len(segs[0]) - 10           # the flight crosses 2^32
    got = None
    for i, s in enumerate(segs):
        got = a.feed("k", seq % (1 << 32), s) or got
        if i == 1:
            assert a.feed("k", seq % (1 << 32), s) is None   # a retransmission of what is held
        seq += len(s)
    assert got == chain()[0] and a.counts["certificates"] == 1


def test_parse_server_flight_outcomes():
    leaf, ca = chain()
    whole = tls12_flight(300)
    assert parse_server_flight(whole) == (FOUND, leaf)
    assert parse_server_flight(whole[:len(whole) // 3]) == (MORE, None)
    assert parse_server_flight(records(server_hello() + SERVER_HELLO_DONE)) == (NO_CERTIFICATE, None)
    assert parse_server_flight(tls13_flight()) == (NO_CERTIFICATE, None)
    assert parse_server_flight(records(server_hello()) + b"\x14\x03") == (NO_CERTIFICATE, None)
    for flight in _garbage_flights()[:4]:
        assert parse_server_flight(flight)[0] == MALFORMED
    assert starts_server_hello(whole) and not starts_server_hello(whole[:5])
    assert not starts_server_hello(records(server_hello(), version=b"\x03\x04"))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_fuzz_parser_and_assembler_never_raise(data):
    """Random and mutated flights: parse returns an outcome, the assembler returns bytes or None,
    and its state stays within its caps."""
    base = tls12_flight(data.draw(st.sampled_from([200, 1000, 1 << 14])))
    choice = data.draw(st.integers(0, 2))
    if choice == 0:
        flight = data.draw(st.binary(max_size=3000))
    else:
        flight = bytearray(base)
        for _ in range(data.draw(st.integers(1, 8))):
            at = data.draw(st.integers(0, len(flight) - 1))
            flight[at] = data.draw(st.integers(0, 255))
        flight = bytes(flight[:data.draw(st.integers(0, len(flight)))]) if choice == 2 else bytes(flight)
    outcome, der = parse_server_flight(flight)
    assert outcome in (MORE, FOUND, NO_CERTIFICATE, MALFORMED)
    a = ServerCertAssembler(max_flows=4, max_flight_bytes=4096, max_total_bytes=10000)
    seq = data.draw(st.integers(0, (1 << 32) - 1))
    for i, piece in enumerate(split(flight, 3) if len(flight) > 20 else [flight]):
        if piece:
            got = a.feed(("k", i % 5), seq, piece)
            assert got is None or isinstance(got, bytes)
        seq = (seq + data.draw(st.integers(0, 2000))) % (1 << 32)
        assert len(a) <= 4 and a.held_bytes <= 10000


# --- the C scan and the reference agree -----------------------------------------------------------

def _run(worker, path):
    events = []
    with open_capture(str(path)) as reader:
        for batch in reader:
            events += worker.process(batch)
    return events + worker.flush()


def test_fast_path_equals_reference_on_constructed_and_real_handshakes(tmp_path, leaf_artifact):
    pcaps = [conversation_pcap(tmp_path / ("v%d-%d.pcap" % (v, n)), v, tls12_flight(frag), n)
             for v in (4, 6) for n, frag in ((1, 1 << 14), (2, 700), (4, 300))]
    pcaps.append(conversation_pcap(tmp_path / "tls13.pcap", 4, tls13_flight(), 2))
    pcaps.append(conversation_pcap(tmp_path / "ooo.pcap", 6, tls12_flight(), 4, order=[0, 2, 1, 3]))
    if REAL_CORPUS.exists():
        pcaps += sorted(REAL_CORPUS.glob("*.pcap*"))
    artifact = Artifact.open(str(leaf_artifact))
    matchers = TrailMatchers.load(artifact)
    cert_events = 0
    for path in pcaps:
        fast, ref = Worker(matchers, "t", 60, fast=True), Worker(matchers, "t", 60, fast=False)
        fast_events, ref_events = _run(fast, path), _run(ref, path)
        assert fast_events == ref_events, path
        assert fast.counters.as_dict() == ref.counters.as_dict(), path
        assert fast.certs.counts == ref.certs.counts, path
        cert_events += sum(e.type == "CERT" for e in fast_events)
    assert cert_events == 6


# --- real captures ---------------------------------------------------------------------------------

def _real_server_certificates(path: Path) -> list[tuple[str, int, str, int, bytes]]:
    """(client, client port, server, server port, leaf DER) of every TLS 1.2 server certificate in
    a capture: server segments joined in sequence order with dpkt, records and messages walked
    here (not with workers/certs.py)."""
    flows: dict = {}
    with open(path, "rb") as f:
        reader = dpkt.pcap.Reader(f) if path.suffix == ".pcap" else dpkt.pcapng.Reader(f)
        linktype = reader.datalink()
        frames = iter(reader)
        while True:
            try:
                _, frame = next(frames)
            except (StopIteration, dpkt.NeedData, dpkt.UnpackError):
                break
            ip = _ip_layer(linktype, frame)
            if ip is None or not isinstance(ip.data, dpkt.tcp.TCP) or not ip.data.data:
                continue
            family = socket.AF_INET if isinstance(ip, dpkt.ip.IP) else socket.AF_INET6
            key = (socket.inet_ntop(family, ip.src), ip.data.sport, socket.inet_ntop(family, ip.dst), ip.data.dport)
            flows.setdefault(key, {}).setdefault(ip.data.seq, bytes(ip.data.data))
    found = []
    for (server, sport, client, cport), segments in flows.items():
        if sport >= cport:
            continue
        starts = [s for s in sorted(segments) if segments[s][:1] == b"\x16" and segments[s][5:6] == b"\x02"]
        if not starts:
            continue
        stream, at = b"", starts[0]
        while at in segments:
            stream += segments[at]
            at += len(segments[at])
        handshake, pos = b"", 0
        while pos + 5 <= len(stream) and stream[pos] == 22:
            length = int.from_bytes(stream[pos + 3:pos + 5], "big")
            handshake += stream[pos + 5:pos + 5 + length]
            pos += 5 + length
        pos = 0
        while pos + 4 <= len(handshake):
            length = int.from_bytes(handshake[pos + 1:pos + 4], "big")
            if handshake[pos] == 11:
                cert_len = int.from_bytes(handshake[pos + 7:pos + 10], "big")
                der = handshake[pos + 10:pos + 10 + cert_len]
                if len(der) == cert_len:
                    found.append((client, cport, server, sport, der))
                break
            pos += 4 + length
    return found


def _openssl_sha1(der: bytes, tmp_path: Path) -> str:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("needs openssl to cross-check the fingerprints")
    path = tmp_path / "cert.der"
    path.write_bytes(der)
    out = subprocess.run([openssl, "x509", "-inform", "DER", "-in", str(path), "-noout", "-fingerprint", "-sha1"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().split("=", 1)[1].replace(":", "").lower()


def test_real_captures_server_certificates_are_reported(tmp_path):
    corpus = need_shared(REAL_CORPUS)
    expected, pcaps = [], []
    for path in sorted(corpus.glob("*.pcap*")):
        for client, cport, server, sport, der in _real_server_certificates(path):
            fp = _openssl_sha1(der, tmp_path)
            assert fp == fingerprint(der)
            expected.append(("CERT", fp, client, cport, server, sport))
            pcaps.append(path)
    # at least the two of the corpus (a Google certificate over 300-byte segments, the Heartbleed
    # capture's server): a corpus without them would make this test prove nothing
    assert len(expected) >= 2, expected
    artifact = artifact_with(tmp_path, [(e[1], "real capture certificate", "test") for e in expected])
    events, _ = replay(tmp_path, artifact, *sorted(set(pcaps)))
    got = sorted((e["type"], e["trail"], e["src_ip"], e["src_port"], e["dst_ip"], e["dst_port"]) for e in events)
    assert got == sorted(expected)


# --- outputs ---------------------------------------------------------------------------------------

def test_a_cert_event_through_every_output_form():
    """CEF, Logstash JSON, ECS, the webhook fields and the Maltrail-server datagram each carry a
    CERT event through their ordinary path; ECS names the fingerprint in tls.server.hash.sha1."""
    import json

    from events.forwarders.ecs import ecs_document
    from events.forwarders.logstash import logstash_json
    from events.forwarders.maltrail_server import datagram
    from events.forwarders.syslog import maltrail_record
    from events.forwarders.webhook import alert_fields
    from events.record import TYPE_CERT, Event
    fp = "1fe9decfd5b48302ff8156b6a7e551c85d7a9647"
    event = Event(T0_S * 1_000_000, "s1", CLIENT4, CLIENT_PORT, SERVER4, SERVER_PORT, "TCP", TYPE_CERT, fp,
                  "dridex c2 certificate (suspicious)", "abuse.ch", "high", 1, T0_S * 1_000_000)
    record = maltrail_record(event, "host", "0.1", "2024-01-01")
    assert "|dridex c2 certificate (suspicious)|2|" in record and "trail=%s ref=abuse.ch" % fp in record
    assert json.loads(logstash_json(event))["type"] == "CERT"
    assert alert_fields(event)["type"] == "CERT"
    assert b" CERT %s " % fp.encode() in datagram(event)
    doc = ecs_document(event)
    assert doc["tls"] == {"server": {"hash": {"sha1": fp.upper()}}}
    assert doc["threat"]["indicator"]["type"] == "x509-certificate"
    assert doc["network"]["protocol"] == "tls" and doc["maltrail"]["type"] == "CERT"


def test_the_sslbl_certificate_feed_becomes_certificate_trails(tmp_path):
    """abuse.ch's SSL certificate blacklist (trailsdb/feeds: sslblcert) parsed and built: each
    listed fingerprint is a certificate trail with the feed's label and reference."""
    from trailsdb.feeds.catalog import FEEDS
    from trailsdb.feeds.parsers import parse
    feed = next(f for f in FEEDS if f.name == "sslblcert")
    leaf = fingerprint(chain()[0])
    body = ("################################################################\n"
            "# abuse.ch SSL Certificate Blacklist (SHA1 Fingerprints)       #\n"
            "# Listingdate,SHA1,Listingreason\n"
            "2024-05-01 10:00:00,%s,Dridex C&C\n"
            "2024-05-02 11:00:00,%s,AsyncRAT C&C\n"
            "2024-05-03 12:00:00,not-a-fingerprint,Broken C&C\n" % (leaf.upper(), "ab" * 20)).encode()
    rows = list(parse(feed, body))
    out = tmp_path / "feed.mtdb"
    report = build([], str(out), feeds=[(feed.name, rows)])
    assert report.by_kind["certificate"] == 2
    artifact = Artifact.open(str(out))
    matchers = TrailMatchers.load(artifact)
    record = artifact.record(matchers.certs.lookup(bytes.fromhex(leaf)))
    assert (record.key, record.info, record.reference) == (leaf, "dridex c2 certificate (suspicious)", "abuse.ch")
    assert artifact.record(matchers.certs.lookup(b"\xab" * 20)).info == "asyncrat c2 certificate (suspicious)"
