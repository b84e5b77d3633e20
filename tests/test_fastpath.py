"""The C per-packet path (workers/csrc) against the plain-Python reference it replaces.

- decode.h decodes every frame exactly as workers/decode.py does (fields or skip reason);
- a Worker with the C scan and a Worker judging every frame in Python produce the same events and
  the same counters, on every corpus and on generated traffic, with a small trail set and with
  the real 1.6M-row one;
- the same on hypothesis-generated DNS, HTTP and TLS traffic aimed at the corners of the URL
  candidate forms, host normalisation, percent-encoding and case, against random trail sets.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.sources import synthetic as g
from engine.sources.pcapfile import open_capture
from matchers import Artifact, TrailMatchers
from tests import traffic
from tests.conftest import MALTRAIL_CORPUS, REAL_CORPUS, SHARED_TRAILS, need_shared
from trailsdb.compile import build
from workers import _fastpath
from workers.batch import FrameBatchBuilder
from workers.decode import SKIP_REASONS, decode_frame
from workers.pipeline import Worker

CORPUS = Path(__file__).resolve().parent / "corpus"


def _captures(tmp_path_factory):
    from tests.corpus.generate import write_corpus
    paths = list(write_corpus(str(tmp_path_factory.mktemp("own"))).values())
    for base in (MALTRAIL_CORPUS, REAL_CORPUS):
        if base.exists():
            paths += sorted(str(p) for p in base.glob("*.pcap*"))
    paths.append(traffic.write(tmp_path_factory.mktemp("gen") / "traffic.pcap", 20_000))
    return paths


@pytest.fixture(scope="module")
def captures(tmp_path_factory):
    return _captures(tmp_path_factory)


# Frames the comparisons must at least cover, so that a corpus silently gone missing fails them:
# the project's own corpus and the generated traffic come to more than 22,000 frames on their own
# (a user's clone has nothing else), the shared real and Maltrail captures add more than 18,000.
OWN_FRAMES = 22_000
MIN_FRAMES = OWN_FRAMES + (18_000 if REAL_CORPUS.exists() and MALTRAIL_CORPUS.exists() else 0)


def _python_view(packet):
    if type(packet) is str:
        return SKIP_REASONS.index(packet)
    width = 4 if packet.version == 4 else 16
    return (packet.version, packet.src.to_bytes(width, "big"), packet.dst.to_bytes(width, "big"), packet.proto,
            packet.sport, packet.dport, packet.tcp_flags, packet.icmp_type, len(packet.payload), packet.tcp_seq)


def _c_view(result, frame):
    if isinstance(result, int):
        return result
    version, src, dst, proto, sport, dport, flags, icmp, off, length, seq = result
    return (version, src, dst, proto, sport, dport, flags, icmp, length, seq)


def test_c_decode_equals_python_decode_on_every_captured_frame(captures):
    frames = 0
    for path in captures:
        with open_capture(path) as reader:
            for batch in reader:
                for i in range(len(batch)):
                    frame, lt = batch.frame(i), batch.linktypes[i]
                    c = _fastpath.decode(frame, lt)
                    assert _c_view(c, frame) == _python_view(decode_frame(frame, lt)), (path, i)
                    if not isinstance(c, int):
                        assert frame[c[8]:c[8] + c[9]] == decode_frame(frame, lt).payload
                    frames += 1
    assert frames > MIN_FRAMES


SEEDS = [g.tcp_frame("10.0.0.1", "10.0.0.2", 1, 2, g.TCP_SYN, b"x", vlans=(5, 6)),
         g.udp_frame("2001:db8::1", "2001:db8::2", 53, 53, g.dns_query("a.b.c")),
         g.icmp_frame("10.0.0.1", "10.0.0.2"),
         g.ether(g.ipv4("10.0.0.1", "10.0.0.2", 6, g.tcp("10.0.0.1", "10.0.0.2", 1, 2), options=b"\x01" * 8))]


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_c_decode_equals_python_decode_on_mutated_frames(data):
    frame = bytearray(data.draw(st.sampled_from(SEEDS)))
    for _ in range(data.draw(st.integers(0, 5))):
        pos = data.draw(st.integers(0, max(0, len(frame) - 1)))
        op = data.draw(st.sampled_from(("flip", "cut", "insert")))
        if op == "flip" and frame:
            frame[pos] ^= 1 << data.draw(st.integers(0, 7))
        elif op == "cut":
            del frame[pos:]
        else:
            frame[pos:pos] = data.draw(st.binary(min_size=1, max_size=6))
    lt = data.draw(st.sampled_from((1, 0, 9, 12, 14, 101, 104, 108, 113, 228, 229, 276, 147)))
    frame = bytes(frame)
    assert _c_view(_fastpath.decode(frame, lt), frame) == _python_view(decode_frame(frame, lt))


def _run(worker, path):
    events = []
    with open_capture(path) as reader:
        for batch in reader:
            events += worker.process(batch)
    return events + worker.flush()


def _compare(matchers_fast, matchers_ref, paths):
    judged = 0
    for path in paths:
        fast = Worker(matchers_fast, "t", 60, fast=True)
        ref = Worker(matchers_ref, "t", 60, fast=False)
        fast_events, ref_events = _run(fast, path), _run(ref, path)
        assert fast_events == ref_events, path
        assert fast.counters.as_dict() == ref.counters.as_dict(), path
        judged += fast.counters.frames
    return judged


@pytest.fixture(scope="module")
def fixture_artifact(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("fx") / "t.mtdb")
    sources = [str(CORPUS / "trails.csv")]
    if MALTRAIL_CORPUS.exists():
        sources.append(str(MALTRAIL_CORPUS / "trails.csv"))
    build(sources, out)
    return Artifact.open(out)


def test_fast_worker_equals_reference_on_every_capture(captures, fixture_artifact):
    matchers = TrailMatchers.load(fixture_artifact)
    assert _compare(matchers, matchers, captures) > MIN_FRAMES


@pytest.mark.slow
def test_fast_worker_equals_reference_with_the_real_trail_set(captures, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("big") / "t.mtdb")
    build([str(need_shared(SHARED_TRAILS)), str(CORPUS / "trails.csv")], out)
    matchers = TrailMatchers.load(Artifact.open(out))
    assert _compare(matchers, matchers, captures) > MIN_FRAMES


# --- generated traffic aimed at the corners ---------------------------------------------------------

# labels hold what DNS carries beyond hostnames too ('=', '+', '!', '~': DNS tunnels)
LABEL = st.text("abcxyz019-_=+!~", min_size=1, max_size=6)
NAME = st.lists(LABEL, min_size=1, max_size=4).map(".".join)
SEGMENT = st.text("abcdeXYZ019._-~%=?&/+ ", min_size=0, max_size=8).map(lambda s: s.replace(" ", "+union+select+"))
PATH = st.lists(SEGMENT, min_size=1, max_size=5).map(lambda parts: "/" + "/".join(parts))


@st.composite
def trail_sets(draw):
    domains = draw(st.lists(NAME, min_size=1, max_size=6))
    paths = draw(st.lists(PATH, min_size=1, max_size=6))
    rows = ["%s,d (malware),(t)" % d for d in domains]
    rows += ["%s,p (malware),(t)" % p.lower() for p in paths if p.strip("/")]
    rows += ["%s%s,u (malware),(t)" % (draw(st.sampled_from(domains)), p.lower()) for p in paths[:2]]
    rows += ["%s/,h (malware),(t)" % draw(st.sampled_from(domains))]
    rows += ["ua:%s,ua (suspicious),(t)" % draw(LABEL)]
    rows += ["dga[0-9]+\\.%s,rx (malware),(t)" % draw(NAME)]
    return rows, domains, paths


@st.composite
def requests(draw, domains, paths):
    host = draw(st.one_of(st.sampled_from(domains), NAME, st.sampled_from(domains).map(lambda d: "Www." + d.upper())))
    if draw(st.booleans()):
        host += draw(st.sampled_from((":80", ":8080", ".", "")))
    path = draw(st.one_of(st.sampled_from(paths), PATH))
    if draw(st.booleans()):
        path += "?" + draw(st.text("abc=&19/+'", max_size=10)).replace("c", "+or+1=1")
    method = draw(st.sampled_from(("GET", "POST", "get", "CONNECT", "HEAD")))
    target = path
    form = draw(st.integers(0, 3))
    if form == 1:
        target = "http://%s%s" % (host, path)
    elif form == 2 and method == "CONNECT":
        target = host + ":443"
    headers = ()
    with_host = draw(st.booleans())
    ua = draw(st.one_of(st.none(), st.text("abcxyz019-_ /()", max_size=20)))
    body = draw(st.binary(max_size=30)) if method == "POST" else b""
    if method == "POST" and draw(st.booleans()):
        body = draw(st.sampled_from(paths)).encode() + b"%41%3d1"
    return g.http_request(method, target, host if with_host else None, ua, headers, body)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.data())
def test_fast_equals_reference_on_generated_traffic(tmp_path_factory, data):
    rows, domains, paths = data.draw(trail_sets())
    directory = tmp_path_factory.mktemp("gen")
    (directory / "t.csv").write_text("\n".join(rows) + "\n")
    build([str(directory / "t.csv")], str(directory / "t.mtdb"))
    matchers = TrailMatchers.load(Artifact.open(str(directory / "t.mtdb")))
    builder = FrameBatchBuilder()
    for i in range(data.draw(st.integers(1, 12))):
        kind = data.draw(st.sampled_from(("http", "dns", "tls", "http6")))
        name = data.draw(st.one_of(st.sampled_from(domains), NAME, st.sampled_from(domains).map(lambda d: "x." + d)))
        if kind == "http":
            frame = g.tcp_frame("10.0.0.1", "203.0.113.%d" % (i + 1), 40000 + i, data.draw(st.sampled_from((80, 8081))),
                                g.TCP_PSH | g.TCP_ACK, data.draw(requests(domains, paths)))
        elif kind == "http6":
            frame = g.tcp_frame("2001:db8::1", "2001:db8::%x" % (i + 2), 40000 + i, 80, g.TCP_PSH | g.TCP_ACK,
                                data.draw(requests(domains, paths)))
        elif kind == "dns":
            qtype = data.draw(st.sampled_from((1, 28, 12, 16)))
            frame = g.udp_frame("10.0.0.1", "10.0.0.53", 40000 + i, 53, g.dns_query(name.upper() if i % 2 else name, qtype))
        else:
            frame = g.tcp_frame("10.0.0.1", "203.0.113.9", 40000 + i, 443, g.TCP_PSH | g.TCP_ACK,
                                g.tls_client_hello(name.upper() + data.draw(st.sampled_from(("", ".")))))
        builder.add(frame, 1_000_000_000 * (1 + i), 1)
    _judged_alike(matchers, builder.take())


def _judged_alike(matchers, batch) -> list:
    """`batch` judged by a Worker with the C scan and by one judging in Python: the same events and
    counters (asserted); returns the events."""
    fast, ref = Worker(matchers, "t", 60, fast=True), Worker(matchers, "t", 60, fast=False)
    events = fast.process(batch) + fast.flush()
    assert events == ref.process(batch) + ref.flush()
    assert fast.counters.as_dict() == ref.counters.as_dict()
    return events


def test_offsets_helper():
    from array import array
    caplens = array("I", [3, 0, 5, 7])
    assert array("Q", _fastpath.offsets(caplens)).tolist() == [0, 3, 3, 8]
    assert _fastpath.offsets(array("I")) == b""


def test_flagged_dns_answer_and_ipv6_lookup(tmp_path):
    (tmp_path / "t.csv").write_text("198.51.100.90,sinkhole x (malware),(t)\n2001:db8::bad,c2 (malware),(t)\n"
                                    "[2001:db8::bad]:8443,c2 port (malware),(t)\n")
    build([str(tmp_path / "t.csv")], str(tmp_path / "t.mtdb"))
    matchers = TrailMatchers.load(Artifact.open(str(tmp_path / "t.mtdb")))
    builder = FrameBatchBuilder()
    builder.add(g.udp_frame("10.0.0.53", "10.0.0.1", 53, 40000, g.dns_response("x.example-s.com", ["198.51.100.90"])), 10**9, 1)
    builder.add(g.tcp_frame("2001:db8::1", "2001:db8::bad", 40001, 443), 2 * 10**9, 1)
    builder.add(g.tcp_frame("2001:db8::1", "2001:db8::bad", 40002, 8443), 3 * 10**9, 1)
    events = Worker(matchers, "t").process(builder.take())
    assert [e.trail for e in events] == ["(x.example-s).com", str(ipaddress.IPv6Address("2001:db8::bad")),
                                         "[2001:db8::bad]:8443"]


def test_fast_equals_reference_on_case_and_high_bytes_at_every_offset(tmp_path):
    """The C scan lowers a request's host, target and user agent, and checks them for high bytes
    (handed to Python), eight bytes at a time, and finds CRLFs and " HTTP/" with memchr: capitals
    (A and Z, the ends of the range), the bytes beside the range ('@', '[', '`', '{'), and a Latin-1
    capital at every offset of a word and of the tail, and heads cut around their line ends, must
    be judged exactly as Python judges them. No request names a listed host unless the host is
    what is tested (a listed host hands the whole request to Python)."""
    (tmp_path / "t.csv").write_text("ua:qaz@[,ua (suspicious),(t)\nua:qz\u00e9,ua (suspicious),(t)\n"
                                    "zaq.example,d (malware),(t)\nok.example/qaz@[x,u (malware),(t)\n",
                                    encoding="utf-8")
    build([str(tmp_path / "t.csv")], str(tmp_path / "t.mtdb"))
    matchers = TrailMatchers.load(Artifact.open(str(tmp_path / "t.mtdb")))
    heads = []
    for k in range(20):
        pad = b"b" * k
        heads += [b"GET /x HTTP/1.1\r\nHost: ok.example\r\nUser-Agent: " + pad + b"QAZ@[\r\n\r\n",
                  b"GET /x HTTP/1.1\r\nHost: ok.example\r\nUser-Agent: " + pad + b"QAZ`{\r\n\r\n",
                  b"GET /x HTTP/1.1\r\nHost: ok.example\r\nUser-Agent: " + pad + b"QZ\xc9\r\n\r\n",
                  b"GET /x HTTP/1.1\r\nHost: " + pad + b".ZAQ.EXAMPLE\r\n\r\n",
                  b"GET /QAZ@[X HTTP/1.1\r\nHost: " + pad + b"OK.EXAMPLE\r\n\r\n",
                  b"GET /QAZ@[X" + pad + b" HTTP/1.1\r\nHost: ok.example\r\n\r\n",
                  b"GET /QAZ@[X?" + pad + b"\xc9 HTTP/1.1\r\nHost: ok.example\r\n\r\n"]
    whole = b"GET /QAZ@[X HTTP/1.1\r\nHost: ok.example\r\nUser-Agent: qaz@[\r\n\r\n"
    heads += [whole[:cut] for cut in range(8, len(whole) + 1)]
    heads += [b"GET / HTTP/1.1\r\r\nHost: ok.example\r\nUser-Agent: qaz@[\r\n\r\n",
              b"GET / HTTP/1.1\r\nHost: ok.example\r\r\nUser-Agent: qaz@[\r\n\r\n",
              b"GET / HTTP/1.1\n\r\nHost: ok.example\r\nUser-Agent: qaz@[\r\n\r\n",
              b"GET / HTTP/1.\r\nHost: ok.example\r\nUser-Agent: qaz@[\r\n\r\n",
              b"GET / HTTP/1.1\r\nUser-Agent: qaz@[\n\r\n\r\n",
              b"GET / HTTP HTTP/1.1\r\nUser-Agent: qaz@[\r\n\r\n"]
    builder = FrameBatchBuilder()
    for i, head in enumerate(heads):
        builder.add(g.tcp_frame("10.0.0.1", "203.0.113.7", 20000 + i, 80, g.TCP_PSH | g.TCP_ACK, head), 10**9 * (1 + i), 1)
    fast_events = _judged_alike(matchers, builder.take())
    # the comparison saw every trail hit, at every offset
    trails = {e.trail for e in fast_events}
    assert len({t for t in trails if t.endswith("QAZ@[")}) == 20 and len({t for t in trails if t.endswith("QZ\u00c9")}) == 20
    assert len({t for t in trails if t.endswith(".zaq.example")}) == 20    # "().zaq.example" to 19 b's
    assert sum(e.count for e in fast_events if "ok.example/qaz@[x" in e.trail) >= 40


def test_fast_equals_reference_on_onion_gateways_and_ignored_names(tmp_path):
    """The C scan finds ".onion." (a Tor gateway: the name up to it is looked up) and ".intranet."
    (never looked up) with memchr, and the ignored last labels by their lengths: the names around
    those rules, queried in DNS and named as HTTP hosts, must be judged as Python judges them."""
    ignored = ("arpa", "local", "guest", "intranet", "int", "corp", "home", "lan", "intra", "intran", "workgroup",
               "localdomain", "url", "alienvault", "example", "test", "invalid", "localhost")
    (tmp_path / "t.csv").write_text("badsite.onion,tor (malware),(t)\nb.onion,tor (malware),(t)\n"
                                    "evil.com,e (malware),(t)\nonion.evil.com,e2 (malware),(t)\n"
                                    + "".join("zone.%s,l (malware),(t)\nzone.%s,l (malware),(t)\n"
                                              % (label, label[:-1]) for label in ignored))
    build([str(tmp_path / "t.csv")], str(tmp_path / "t.mtdb"))
    matchers = TrailMatchers.load(Artifact.open(str(tmp_path / "t.mtdb")))
    names = ["badsite.onion.to", "badsite.onion.ly", "x.badsite.onion.to", "goodsite.onion.to", "b.onion.",
             "badsite.onion", "onion.evil.com", ".onion.evil.com", "a.onion.evil.com", "badsite.onion.onion.to",
             "zz.intranet.evil.com", "intranet.evil.com", "a.intranet.", "x.intranetx.evil.com", "evil.com.intranet",
             "printer.local", "a.b.localdomain", "evil.com.localhost", "evil.com.lan", "evil.com.lanx",
             "evil.com.example", "evil.com.examples", "evil.com.arpa", "evil.com.test", "evil.com.alienvault",
             "evil.com.int", "evil.com.in", "b.onion.to", "b.onion.", "bb.onion.to"]
    # the ignored labels, and labels one letter shorter or longer (ignored only if listed themselves)
    names += ["a.zone." + label[:cut] for label in ignored for cut in (None, -1)]
    names += ["a.zone.%sx" % label for label in ignored]
    builder = FrameBatchBuilder()
    for i, name in enumerate(names):
        builder.add(g.udp_frame("10.0.0.1", "10.0.0.53", 30000 + i, 53, g.dns_query(name)), 10**9 * (1 + 2 * i), 1)
        builder.add(g.tcp_frame("10.0.0.1", "203.0.113.%d" % (i + 1), 31000 + i, 80, g.TCP_PSH | g.TCP_ACK,
                                g.http_request("GET", "/", name)), 10**9 * (2 + 2 * i), 1)
    fast_events = _judged_alike(matchers, builder.take())
    trails = {e.trail for e in fast_events}
    assert any("badsite.onion" in t for t in trails) and any(t.endswith("evil.com") for t in trails)
    # the DNS path ignores names under ".intranet." and those ending in an ignored label
    dns = {e.trail for e in fast_events if e.proto == "UDP"}
    assert dns and not any(".intranet." in t or t.endswith((".localhost", ".lan", ".example")) for t in dns)
