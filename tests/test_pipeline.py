"""workers.pipeline (with batch and condense): frames in, Maltrail events out.

Each test builds frames with engine.sources.synthetic, runs them through a Worker over a small trail set
compiled in a temporary directory, and compares whole Event records: orientation, ports,
protocol, type, Maltrail's trail text, info, reference, severity and count. Timestamps are packet
time from a fixed base, never the wall clock. The corpus tests read ../shared (skipping when absent).
"""

from __future__ import annotations

import json
import struct
import tracemalloc

import pytest

from engine.sources import synthetic as g
from engine.sources.pcapfile import open_capture
from matchers import Artifact, TrailMatchers
from tests.conftest import MALTRAIL_CORPUS, REAL_CORPUS, need_shared
from trailsdb.compile import build
from workers.batch import (
    LINKTYPE_ETHERNET, LINKTYPE_LINUX_SLL2, LINKTYPE_NULL, LINKTYPE_RAW, FrameBatch, FrameBatchBuilder,
)
from workers.condense import MAX_COUNTED, MAX_LISTED, Condenser
from events.record import Event, severity_of
from workers.pipeline import Worker

BASE_S = 1_700_000_000
BASE_US = BASE_S * 1_000_000
WINDOW_S = 60

C = "192.168.1.10"               # the monitored client
C6 = "2001:db8:1::10"
RESOLVER = "192.0.2.53"
WEB = "192.0.2.80"               # an unlisted web server
MAL = "203.0.113.66"             # malware (test)
C2 = "198.51.100.7"              # botnet c2 (test)
IPORT = "203.0.113.80"           # listed only on port 8443
ATTACKER = "198.51.100.53"       # known attacker
PARKING = "198.51.100.91"        # parking site (suspicious)
SINKHOLE = "198.51.100.90"       # sinkhole testsink (malware)
V6 = "2001:db8:bad::1"
V6PORT = "2001:db8:bad::2"

TRAILS = [
    (MAL, "malware (test)"),
    (C2, "botnet c2 (test)"),
    (IPORT + ":8443", "malware (test)"),
    ("10.66.0.0/16", "reputation (test)"),
    (ATTACKER, "known attacker"),
    (PARKING, "parking site (suspicious)"),
    (SINKHOLE, "sinkhole testsink (malware)"),
    (V6, "malware (test)"),
    ("[%s]:8443" % V6PORT, "malware (test)"),
    ("evil-domain.com", "malware (test)"),
    ("evil-parent.net", "malware (test)"),
    ("corp-evil.local", "malware (test)"),
    ("evil-reverse.arpa", "malware (test)"),
    ("tls-evil.org", "malware (test)"),
    ("quic-evil.org", "malware (test)"),
    ("/malicious-login.php", "malware (test)"),
    ("evil-url.net/bad/path", "malware (test)"),
    ("hostonly.net/", "malware (test)"),
    ("/login.php?user=admin", "credential stuffing (test)"),
    ("ua:sqlmap", "sqlmap (tool)"),
]

SYN, SYNACK, ACK, PSHACK = g.TCP_SYN, g.TCP_SYN | g.TCP_ACK, g.TCP_ACK, g.TCP_PSH | g.TCP_ACK


@pytest.fixture(scope="module", params=["native", "reference"])
def matchers(request, tmp_path_factory):
    """The small trail set, behind the C matchers and behind the plain-Python reference ones:
    every event test runs against both and must give the same records."""
    directory = tmp_path_factory.mktemp("trails")
    source = directory / "trails.csv"
    source.write_text("".join('%s,%s,(static)\n' % row for row in TRAILS))
    build(sources=[str(source)], output=str(directory / "trails.bin"))
    artifact = Artifact.open(directory / "trails.bin")
    return TrailMatchers.load(artifact) if request.param == "native" else TrailMatchers.reference(artifact)


@pytest.fixture(scope="module")
def fixture_matchers(tmp_path_factory):
    """The shared Maltrail fixture trails (../shared/corpus/maltrail/trails.csv), compiled."""
    source = need_shared(MALTRAIL_CORPUS / "trails.csv")
    output = tmp_path_factory.mktemp("fixture") / "trails.bin"
    build(sources=[str(source)], output=str(output))
    return TrailMatchers.load(Artifact.open(output))


def _batch(frames, start_s: float = 0, step_s: float = 1, linktype: int = LINKTYPE_ETHERNET) -> FrameBatch:
    builder = FrameBatchBuilder()
    for i, frame in enumerate(frames):
        if isinstance(frame, tuple):
            frame, linktype_i = frame
        else:
            linktype_i = linktype
        builder.add(frame, int((BASE_S + start_s + i * step_s) * 1_000_000_000), linktype_i)
    return builder.take()


def _run(matchers, *frames, step_s: float = 1):
    """Events from processing `frames` (one per `step_s` seconds) then flushing."""
    worker = Worker(matchers, sensor="t", condense_window_s=WINDOW_S)
    return worker.process(_batch(frames, step_s=step_s)) + worker.flush()


def _ev(t_s, src, sport, dst, dport, proto, type_, trail, info="malware (test)", reference="(static)",
        severity="high", count=1, last_s=None) -> Event:
    ts = BASE_US + int(t_s * 1_000_000)
    last = BASE_US + int((t_s if last_s is None else last_s) * 1_000_000)
    return Event(ts, "t", src, sport, dst, dport, proto, type_, trail, info, reference, severity, count, last)


def _tcp(src, dst, sport, dport, flags=SYN, payload=b"", vlans=()):
    return g.tcp_frame(src, dst, sport, dport, flags, payload, vlans)


def _http(payload: bytes, dst=WEB, dport=80):
    return _tcp(C, dst, 50000, dport, PSHACK, payload)


# --- FrameBatch ---------------------------------------------------------------------------------

def test_frame_batch_builder_round_trip():
    builder = FrameBatchBuilder()
    frames = [b"\x01" * 10, b"", b"\x02\x03" * 7]
    for i, frame in enumerate(frames):
        linktype = (LINKTYPE_ETHERNET, LINKTYPE_RAW, LINKTYPE_NULL)[i]
        builder.add(frame, 1000 + i, linktype, wirelen=100 if i == 2 else None)
    assert len(builder) == 3 and builder.nbytes == 24
    batch = builder.take()
    assert len(builder) == 0 and builder.nbytes == 0
    assert len(batch) == 3
    assert [batch.frame(i) for i in range(3)] == frames
    assert list(batch.offsets) == [0, 10, 10] and list(batch.caplens) == [10, 0, 14]
    assert list(batch.wirelens) == [10, 0, 100] and list(batch.ts_ns) == [1000, 1001, 1002]
    assert list(batch.linktypes) == [LINKTYPE_ETHERNET, LINKTYPE_RAW, LINKTYPE_NULL]
    assert len(FrameBatch()) == 0


def test_one_batch_may_mix_link_types(matchers):
    ip = g.ipv4(C, MAL, 6, g.tcp(C, MAL, 50000, 443, SYN))
    sll2 = struct.pack("!HHIHBB8s", 0x0800, 0, 3, 1, 0, 6, bytes(8)) + ip
    worker = Worker(matchers, sensor="t", condense_window_s=WINDOW_S)
    events = worker.process(_batch([(g.ether(ip), LINKTYPE_ETHERNET), (ip, LINKTYPE_RAW),
                                    (sll2, LINKTYPE_LINUX_SLL2), (struct.pack("<I", 2) + ip, LINKTYPE_NULL)]))
    assert events == [_ev(0, C, 50000, MAL, 443, "TCP", "IP", MAL)]
    assert worker.flush() == [_ev(1, C, 50000, MAL, 443, "TCP", "IP", MAL, count=3, last_s=3)]
    assert worker.counters.frames == worker.counters.decoded == 4


# --- IP trails ----------------------------------------------------------------------------------

def test_ip_trail_on_syn(matchers):
    assert _run(matchers, _tcp(C, MAL, 50000, 443, SYN)) == [_ev(0, C, 50000, MAL, 443, "TCP", "IP", MAL)]


def test_ip_trail_on_syn_ack_only_is_reoriented_to_the_client(matchers):
    assert _run(matchers, _tcp(MAL, C, 443, 50000, SYNACK)) == [_ev(0, C, 50000, MAL, 443, "TCP", "IP", MAL)]


def test_ip_trail_mid_flow_higher_port_is_the_client(matchers):
    assert _run(matchers, _tcp(MAL, C, 443, 50000, ACK)) == [_ev(0, C, 50000, MAL, 443, "TCP", "IP", MAL)]
    assert _run(matchers, _tcp(C, C2, 22, 40000, PSHACK, b"x")) == [
        _ev(0, C2, 40000, C, 22, "TCP", "IP", C2, "botnet c2 (test)")]


def test_both_directions_of_a_flow_condense_into_one_event(matchers):
    worker = Worker(matchers, sensor="t", condense_window_s=WINDOW_S)
    flow = [_tcp(C, MAL, 50000, 443, SYN), _tcp(MAL, C, 443, 50000, SYNACK), _tcp(C, MAL, 50000, 443, ACK),
            _tcp(MAL, C, 443, 50000, PSHACK, b"data")]
    assert worker.process(_batch(flow)) == [_ev(0, C, 50000, MAL, 443, "TCP", "IP", MAL)]
    assert worker.flush() == [_ev(1, C, 50000, MAL, 443, "TCP", "IP", MAL, count=3, last_s=3)]
    assert worker.counters.events == {"IP": 4}


def test_iport_trail(matchers):
    assert _run(matchers, _tcp(C, IPORT, 50000, 8443)) == [
        _ev(0, C, 50000, IPORT, 8443, "TCP", "IPORT", IPORT + ":8443")]
    assert _run(matchers, _tcp(C, IPORT, 50000, 80)) == []


def test_cidr_trail(matchers):
    assert _run(matchers, _tcp(C, "10.66.3.4", 50000, 22)) == [
        _ev(0, C, 50000, "10.66.3.4", 22, "TCP", "IP", "10.66.3.4 (10.66.0.0/16)", "reputation (test)",
            severity="low")]


def test_ipv6_trails(matchers):
    assert _run(matchers, _tcp(C6, V6, 50000, 443)) == [_ev(0, C6, 50000, V6, 443, "TCP", "IP", V6)]
    assert _run(matchers, _tcp(C6, V6PORT, 50000, 8443)) == [
        _ev(0, C6, 50000, V6PORT, 8443, "TCP", "IPORT", "[%s]:8443" % V6PORT)]


def test_icmp_echo_request_and_reply(matchers):
    request = [_ev(0, C, None, MAL, None, "ICMP", "IP", MAL)]
    assert _run(matchers, g.icmp_frame(C, MAL)) == request
    assert _run(matchers, g.icmp_frame(MAL, C, reply=True)) == request      # the reply's client is dst
    both = _run(matchers, g.icmp_frame(C, MAL), g.icmp_frame(MAL, C, reply=True))
    assert both == request + [_ev(1, C, None, MAL, None, "ICMP", "IP", MAL, count=1)]
    assert _run(matchers, g.icmp_frame(C6, V6)) == [_ev(0, C6, None, V6, None, "ICMPV6", "IP", V6)]
    assert _run(matchers, g.icmp_frame(V6, C6, reply=True)) == [_ev(0, C6, None, V6, None, "ICMPV6", "IP", V6)]


# --- DNS ----------------------------------------------------------------------------------------

def _query(name, qtype=1, resolver=RESOLVER, vlans=()):
    return g.udp_frame(C, resolver, 50000, 53, g.dns_query(name, qtype=qtype), vlans)


def test_dns_query_exact_domain(matchers):
    assert _run(matchers, _query("evil-domain.com")) == [
        _ev(0, C, 50000, RESOLVER, 53, "UDP", "DNS", "evil-domain.com")]


def test_dns_query_parent_domain(matchers):
    assert _run(matchers, _query("www.evil-parent.net")) == [
        _ev(0, C, 50000, RESOLVER, 53, "UDP", "DNS", "(www).evil-parent.net")]


@pytest.mark.parametrize("qtype", [28, 12, 16, 65])
def test_dns_every_qtype_is_checked(matchers, qtype):
    assert _run(matchers, _query("Evil-Domain.COM", qtype)) == [
        _ev(0, C, 50000, RESOLVER, 53, "UDP", "DNS", "evil-domain.com")]


def test_dns_query_over_tcp(matchers):
    stream = b"".join(struct.pack("!H", len(m)) + m for m in (g.dns_query("evil-domain.com"),
                                                             g.dns_query("www.evil-parent.net")))
    assert _run(matchers, _tcp(C, RESOLVER, 50000, 53, PSHACK, stream)) == [
        _ev(0, C, 50000, RESOLVER, 53, "TCP", "DNS", "evil-domain.com"),
        _ev(0, C, 50000, RESOLVER, 53, "TCP", "DNS", "(www).evil-parent.net")]


def test_dns_only_standard_queries_and_class_in_answers(matchers):
    notify = bytearray(g.dns_query("evil-domain.com"))
    notify[2] = (notify[2] & 0x87) | (4 << 3)                     # opcode 4 (NOTIFY)
    chaos = g.dns_response("x.com", (SINKHOLE,))
    qclass_at = 12 + len(g.dns_name("x.com")) + 2
    chaos = chaos[:qclass_at] + b"\x00\x03" + chaos[qclass_at + 2:]
    assert _run(matchers, g.udp_frame(C, RESOLVER, 50000, 53, bytes(notify)),
                g.udp_frame(RESOLVER, C, 53, 50000, chaos)) == []


def test_dns_ignored_suffixes(matchers):
    worker = Worker(matchers, sensor="t", condense_window_s=WINDOW_S)
    frames = [_query("host.corp-evil.local"), _query("4.3.2.1.evil-reverse.arpa", 12)]
    assert worker.process(_batch(frames)) + worker.flush() == []
    assert worker.counters.extracted["dns queries"] == 2
    # The same trail is live elsewhere: an HTTP Host naming it fires.
    assert _run(matchers, _http(g.http_request(host="host.corp-evil.local"))) == [
        _ev(0, C, 50000, WEB, 80, "TCP", "DNS", "(host).corp-evil.local")]


def test_dns_query_to_a_listed_resolver(matchers):
    expected = _ev(0, C, 50000, ATTACKER, 53, "UDP", "IP", "%s (whatever.com)" % ATTACKER, "known attacker",
                   severity="low")
    assert _run(matchers, _query("whatever.com", resolver=ATTACKER)) == [expected]
    answer = g.udp_frame(ATTACKER, C, 53, 50000, g.dns_response("whatever.com", ("192.0.2.1",)))
    assert _run(matchers, _query("whatever.com", resolver=ATTACKER), answer) == [
        expected, expected._replace(ts_us=BASE_US + 1_000_000, last_ts_us=BASE_US + 1_000_000)]


def test_dns_sinkholed_answer(matchers):
    answer = g.udp_frame(RESOLVER, C, 53, 50000, g.dns_response("foo.sinkholed.com", ("192.0.2.9", SINKHOLE)))
    assert _run(matchers, answer) == [
        _ev(0, RESOLVER, 53, C, 50000, "UDP", "DNS", "(foo.sinkholed).com", "sinkholed by testsink (malware)",
            "(heuristic)", severity="high")]


def test_dns_parked_answer(matchers):
    answer = g.udp_frame(RESOLVER, C, 53, 50000, g.dns_response("parked.com", (PARKING,)))
    assert _run(matchers, answer) == [
        _ev(0, RESOLVER, 53, C, 50000, "UDP", "DNS", "(parked).com", "parked site (suspicious)", "(heuristic)",
            severity="low")]


def test_dns_answers_without_a_heuristic(matchers):
    nxdomain = g.udp_frame(RESOLVER, C, 53, 50000, g.dns_response("x.com", (SINKHOLE,), rcode=3))
    clean = g.udp_frame(RESOLVER, C, 53, 50000, g.dns_response("x.com", ("192.0.2.1",)))
    assert _run(matchers, nxdomain, clean) == []


def test_heuristic_severity_follows_severity_of(matchers):
    events = _run(matchers, g.udp_frame(RESOLVER, C, 53, 50000, g.dns_response("a.com", (SINKHOLE,))),
                  g.udp_frame(RESOLVER, C, 53, 50001, g.dns_response("b.com", (PARKING,))))
    assert [e.reference for e in events] == ["(heuristic)", "(heuristic)"]
    assert [e.severity for e in events] == [severity_of(e.info, e.reference) for e in events] == ["high", "low"]


# --- HTTP ---------------------------------------------------------------------------------------

def test_http_host_trail(matchers):
    assert _run(matchers, _http(g.http_request(host="Evil-Domain.com:80"))) == [
        _ev(0, C, 50000, WEB, 80, "TCP", "DNS", "evil-domain.com")]


def test_url_path_trail(matchers):
    assert _run(matchers, _http(g.http_request(target="/malicious-login.php", host="victim.org"))) == [
        _ev(0, C, 50000, WEB, 80, "TCP", "URL", "(victim.org)/malicious-login.php")]


def test_host_path_trail(matchers):
    assert _run(matchers, _http(g.http_request(target="/bad/path?q=1", host="evil-url.net"))) == [
        _ev(0, C, 50000, WEB, 80, "TCP", "URL", "evil-url.net/bad/path(?q=1)")]


def test_host_slash_trail(matchers):
    # written as Maltrail writes a whole-host hit: the trail alone, not the path requested
    assert _run(matchers, _http(g.http_request(target="/anything", host="hostonly.net"))) == [
        _ev(0, C, 50000, WEB, 80, "TCP", "URL", "hostonly.net/")]


def test_post_form_trail(matchers):
    request = g.http_request("POST", "/login.php", host="forms.org", body=b"user=admin")
    assert _run(matchers, _http(request)) == [
        _ev(0, C, 50000, WEB, 80, "TCP", "HTTP", "forms.org(/login.php \\(POST user=admin\\))",
            "credential stuffing (test)", severity="medium")]
    # The same body in a GET is not a form post.
    assert _run(matchers, _http(g.http_request("GET", "/login.php", host="forms.org", body=b"user=admin"))) == []


def test_absolute_uri_proxy_request(matchers):
    request = b"GET http://evil-url.net/bad/path HTTP/1.1\r\nHost: evil-url.net\r\n\r\n"
    assert _run(matchers, _http(request, dport=3128)) == [
        _ev(0, C, 50000, WEB, 3128, "TCP", "URL", "evil-url.net/bad/path")]
    # The domain in the URI is checked even when the Host header names the proxy.
    request = b"GET http://www.evil-parent.net/ HTTP/1.1\r\nHost: proxy.corp.org\r\n\r\n"
    assert _run(matchers, _http(request, dport=3128)) == [
        _ev(0, C, 50000, WEB, 3128, "TCP", "DNS", "(www).evil-parent.net")]


def test_proxy_request_naming_the_host_twice_is_one_detection(matchers):
    request = b"GET http://evil-domain.com/x HTTP/1.1\r\nHost: evil-domain.com\r\n\r\n"
    assert _run(matchers, _http(request, dport=3128)) == [
        _ev(0, C, 50000, WEB, 3128, "TCP", "DNS", "evil-domain.com")]


def test_connect(matchers):
    request = b"CONNECT evil-domain.com:443 HTTP/1.1\r\nHost: evil-domain.com:443\r\n\r\n"
    assert _run(matchers, _http(request, dport=3128)) == [
        _ev(0, C, 50000, WEB, 3128, "TCP", "DNS", "evil-domain.com")]


@pytest.mark.parametrize("user_agent,trail", [
    ("sqlmap/1.4#stable", "sqlmap(/1.4#stable)"),
    ("Mozilla/5.0 sqlmap (x)", "sqlmap (Mozilla/5.0 sqlmap \\(x\\))"),
    ("my-SQLMAP", "(my-)SQLMAP"),
    ("SqlMap", "SqlMap"),
])
def test_user_agent_trail(matchers, user_agent, trail):
    request = g.http_request(host="ok.org", user_agent=user_agent)
    assert _run(matchers, _http(request)) == [
        _ev(0, C, 50000, WEB, 80, "TCP", "UA", trail, "sqlmap (tool)", severity="medium")]


def test_http_to_a_listed_ip_is_annotated_with_an_alphabetic_host(matchers):
    assert _run(matchers, _http(g.http_request(host="hostcheck.org"), dst=MAL)) == [
        _ev(0, C, 50000, MAL, 80, "TCP", "IP", "%s (hostcheck.org)" % MAL)]
    assert _run(matchers, _http(g.http_request(host=MAL), dst=MAL)) == [
        _ev(0, C, 50000, MAL, 80, "TCP", "IP", MAL)]


# --- TLS and QUIC -------------------------------------------------------------------------------

def test_tls_sni(matchers):
    hello = g.tls_client_hello("www.TLS-evil.org")
    assert _run(matchers, _tcp(C, WEB, 50000, 443, PSHACK, hello)) == [
        _ev(0, C, 50000, WEB, 443, "TCP", "SNI", "(www).tls-evil.org")]


def test_quic_initial_sni(matchers):
    initial = g.quic_initial("quic-evil.org")
    assert _run(matchers, g.udp_frame(C, WEB, 50000, 443, initial)) == [
        _ev(0, C, 50000, WEB, 443, "UDP", "SNI", "quic-evil.org")]


def test_extraction_counters(matchers):
    worker = Worker(matchers, sensor="t", condense_window_s=WINDOW_S)
    frames = [_http(g.http_request(host="ok.org")), _tcp(C, WEB, 50001, 443, PSHACK, g.tls_client_hello("ok.org")),
              g.udp_frame(C, WEB, 50002, 443, g.quic_initial("ok.org")), _query("ok.org"),
              g.udp_frame(RESOLVER, C, 53, 50000, g.dns_response("ok.org", ("192.0.2.1",)))]
    assert worker.process(_batch(frames)) == []
    assert worker.counters.extracted == {"http requests": 1, "tls server names": 1, "quic server names": 1,
                                         "dns queries": 1, "dns responses": 1}
    assert worker.counters.as_dict()["frames"] == 5


# --- encapsulation ------------------------------------------------------------------------------

def test_vlan_and_qinq_frames_produce_the_same_events(matchers):
    ip = g.ipv4(C, MAL, 6, g.tcp(C, MAL, 50000, 443, SYN))
    expected = [_ev(0, C, 50000, MAL, 443, "TCP", "IP", MAL)]
    assert _run(matchers, _tcp(C, MAL, 50000, 443, vlans=(10,))) == expected
    assert _run(matchers, g.ether(ip, vlans=(100, 200), tag_type=0x88A8)) == expected
    assert _run(matchers, g.ether(ip, vlans=(30, 20, 10))) == expected
    assert _run(matchers, _query("evil-domain.com", vlans=(100, 200))) == [
        _ev(0, C, 50000, RESOLVER, 53, "UDP", "DNS", "evil-domain.com")]


# --- Maltrail's false-positive rules ------------------------------------------------------------

def test_connection_to_a_listed_attacker_is_not_reported(matchers):
    assert _run(matchers, _tcp(C, ATTACKER, 50000, 80)) == []
    assert _run(matchers, _tcp(ATTACKER, C, 80, 50000, SYNACK)) == []
    # The attacker connecting in is reported.
    assert _run(matchers, _tcp(ATTACKER, C, 40000, 22)) == [
        _ev(0, ATTACKER, 40000, C, 22, "TCP", "IP", ATTACKER, "known attacker", severity="low")]


def test_parking_site_matters_only_on_web_ports(matchers):
    assert _run(matchers, _tcp(C, PARKING, 50000, 8080)) == []
    for port in (80, 443):
        assert _run(matchers, _tcp(C, PARKING, 50000, port)) == [
            _ev(0, C, 50000, PARKING, port, "TCP", "IP", PARKING, "parking site (suspicious)", severity="low")]


def test_client_side_malware_is_backscatter(matchers):
    assert _run(matchers, _tcp(MAL, C, 40000, 22)) == []
    assert _run(matchers, g.udp_frame(MAL, C, 40000, 161, b"x")) == []
    # Not TCP/UDP: reported. And the malware host as a server: reported.
    assert _run(matchers, g.icmp_frame(MAL, C)) == [_ev(0, MAL, None, C, None, "ICMP", "IP", MAL)]
    assert _run(matchers, g.udp_frame(C, MAL, 40000, 4444, b"x")) == [
        _ev(0, C, 40000, MAL, 4444, "UDP", "IP", MAL)]


# --- condensing ---------------------------------------------------------------------------------

def test_identical_syns_condense_into_first_plus_summary(matchers):
    worker = Worker(matchers, sensor="t", condense_window_s=WINDOW_S)
    syns = [_tcp(C, MAL, 50000, 443, SYN)] * 8
    assert worker.process(_batch(syns, step_s=2)) == [_ev(0, C, 50000, MAL, 443, "TCP", "IP", MAL)]
    assert worker.flush() == [_ev(2, C, 50000, MAL, 443, "TCP", "IP", MAL, count=7, last_s=14)]
    assert worker.flush() == []
    assert worker.counters.events == {"IP": 8}


def test_identical_events_further_apart_than_the_window_are_separate(matchers):
    syn = _tcp(C, MAL, 50000, 443, SYN)
    assert _run(matchers, syn, syn, step_s=WINDOW_S + 1) == [
        _ev(0, C, 50000, MAL, 443, "TCP", "IP", MAL), _ev(WINDOW_S + 1, C, 50000, MAL, 443, "TCP", "IP", MAL)]


def test_window_closes_on_a_later_batch_and_on_expire(matchers):
    worker = Worker(matchers, sensor="t", condense_window_s=WINDOW_S)
    syn = _tcp(C, MAL, 50000, 443, SYN)
    assert worker.process(_batch([syn, syn, syn])) == [_ev(0, C, 50000, MAL, 443, "TCP", "IP", MAL)]
    # A later batch of unrelated traffic closes the window on packet time.
    later = worker.process(_batch([_tcp(C, WEB, 50001, 80)], start_s=WINDOW_S + 5))
    assert later == [_ev(1, C, 50000, MAL, 443, "TCP", "IP", MAL, count=2, last_s=2)]

    worker.process(_batch([syn, syn], start_s=1000))
    assert worker.expire(BASE_US + (1000 + WINDOW_S - 1) * 1_000_000) == []
    assert worker.expire(BASE_US + (1000 + WINDOW_S) * 1_000_000) == [
        _ev(1001, C, 50000, MAL, 443, "TCP", "IP", MAL, count=1)]
    assert worker.flush() == []


def test_condenser_overflow_closes_the_oldest_early():
    def event(i, t, port=50000):
        return _ev(t, "10.0.0.%d" % (i + 1), port, MAL, 443, "TCP", "IP", MAL)

    condenser = Condenser(window_us=WINDOW_S * 1_000_000, max_entries=2)
    offers = [event(0, 0), event(0, 1), event(1, 2), event(0, 3), event(2, 4), event(1, 5), event(3, 6),
              event(3, 7)]
    out = []
    for e in offers:
        condenser.offer(e, out)
    assert len(condenser) <= 2
    assert condenser.early_closes == 2
    # Source 0 (two repeats) was closed when source 2 arrived; source 1 when source 3 arrived.
    assert out == [event(0, 0), event(1, 2), event(2, 4), event(0, 1)._replace(count=2, last_ts_us=BASE_US + 3_000_000),
                   event(3, 6), event(1, 5)]
    condenser.flush(out)
    assert sum(e.count for e in out) == len(offers)
    for key in range(4):
        src = "10.0.0.%d" % (key + 1)
        assert sum(e.count for e in out if e.src_ip == src) == sum(1 for e in offers if e.src_ip == src)


def test_condenser_groups_by_source_and_trail():
    """Events of one source and trail fold together whatever their ports and destinations; any
    other field (sensor, type, trail, info, reference, severity) or another source starts a group."""
    condenser = Condenser(window_us=WINDOW_S * 1_000_000)
    first = _ev(0, C, 50000, MAL, 443, "TCP", "IP", MAL)
    variants = [first._replace(sensor="u"), first._replace(info="other"), first._replace(severity="low"),
                first._replace(trail=MAL + " (x.org)"), first._replace(src_ip="10.9.9.9"), first._replace(type="IPORT")]
    out = []
    for e in [first] + variants:
        condenser.offer(e, out)
    assert out == [first] + variants and condenser.suppressed == 0
    repeats = [first._replace(ts_us=BASE_US + i * 1_000_000, src_port=50000 + i, dst_port=p, proto=proto)
               for i, (p, proto) in enumerate([(443, "TCP"), (444, "TCP"), (53, "UDP")], 1)]
    for e in repeats:
        condenser.offer(e, out)
    assert condenser.suppressed == 3
    condenser.flush(out)
    summary = [e for e in out if e.count > 1]
    assert summary == [first._replace(ts_us=BASE_US + 1_000_000, src_port="50001,50002,50003", dst_port="53,443,444",
                                      proto="TCP,UDP", count=3, last_ts_us=BASE_US + 3_000_000)]


def test_condenser_lists_at_most_sixteen_values_then_counts_the_rest():
    condenser = Condenser(window_us=WINDOW_S * 1_000_000)
    out = []
    for port in range(1000, 1041):
        condenser.offer(_ev(0, C, 50000, MAL, port, "TCP", "IP", MAL), out)
    condenser.flush(out)
    assert out[1].dst_port == ",".join(str(p) for p in range(1001, 1017)) + ",+24" and out[1].count == 40
    assert out[1].src_port == 50000  # shared by every repeat: stays a number


def test_condenser_counts_at_most_a_thousand_values_per_field_then_says_or_more():
    condenser = Condenser(window_us=WINDOW_S * 1_000_000)
    out = []
    ports = range(1, 1 + 1 + MAX_LISTED + MAX_COUNTED + 500)   # the first event, then the repeats
    for port in ports:
        condenser.offer(_ev(0, C, 50000, MAL, port, "TCP", "IP", MAL), out)
    condenser.flush(out)
    summary = out[1]
    listed = ",".join(str(p) for p in range(2, 2 + MAX_LISTED))
    assert summary.dst_port == listed + ",+%d or more" % MAX_COUNTED
    assert summary.count == len(ports) - 1           # the count stays exact
    assert condenser.uncounted == 500


def test_condenser_shares_one_budget_of_values_and_frees_it_on_close():
    condenser = Condenser(window_us=WINDOW_S * 1_000_000, max_values=100)
    out = []
    for src in ("10.0.0.1", "10.0.0.2"):
        for port in range(1, 2 + MAX_LISTED + 80):   # 80 counted values wanted by each source
            condenser.offer(_ev(0, src, 50000, MAL, port, "TCP", "IP", MAL), out)
    condenser.flush(out)
    first, second = [e for e in out if e.count > 1]
    # the first source keeps 15 listed ports besides its first and counts 80 more: 95 of the 100;
    # the second lists its first port and 5 more, and the other 90 find no room
    assert first.dst_port == ",".join(str(p) for p in range(2, 18)) + ",+80"
    assert second.dst_port == "2,3,4,5,6,7,+more" and second.count == 96
    assert condenser.uncounted == 90
    # the closed groups gave their share back
    out = []
    for port in range(1, 2 + MAX_LISTED + 80):
        condenser.offer(_ev(1000, "10.0.0.3", 50000, MAL, port, "TCP", "IP", MAL), out)
    condenser.flush(out)
    assert out[1].dst_port.endswith(",+80")


def test_condenser_memory_plateaus_under_a_flood_of_distinct_values():
    """A scan from many sources over every port: memory grows with the caps, not the traffic."""
    def flood(sources, ports):
        condenser = Condenser(window_us=WINDOW_S * 1_000_000, max_entries=256, max_values=20_000)
        tracemalloc.start()
        out = []
        for port in range(ports):
            for s in range(sources):
                condenser.offer(_ev(0, "10.1.%d.%d" % (s // 256, s % 256), 40000 + port, "198.18.%d.%d"
                                    % (port // 256, port % 256), port, "TCP", "IP", MAL), out)
            out.clear()
        held = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        return held, condenser
    small, _ = flood(256, 300)
    large, condenser = flood(256, 1200)
    assert condenser.uncounted > 0
    assert large < small * 1.5, (small, large)


# --- corpus counters ----------------------------------------------------------------------------

def _captures(directory):
    return sorted(p for p in directory.iterdir() if p.suffix in (".pcap", ".pcapng")) if directory.exists() else []


@pytest.mark.parametrize("path", _captures(REAL_CORPUS) + _captures(MALTRAIL_CORPUS), ids=lambda p: p.name)
def test_every_frame_is_counted(fixture_matchers, path):
    worker = Worker(fixture_matchers, sensor="t", condense_window_s=WINDOW_S)
    events = []
    frames = 0
    with open_capture(path) as reader:
        for batch in reader:
            frames += len(batch)
            events += worker.process(batch)
    events += worker.flush()
    counters = worker.counters
    assert counters.frames == frames == counters.decoded + sum(counters.skipped.values())
    assert sum(counters.events.values()) == sum(e.count for e in events)
    assert all(e.severity == severity_of(e.info, e.reference) for e in events)
    if path.parent == MALTRAIL_CORPUS:
        manifest = {case["pcap"]: case for case in json.loads((MALTRAIL_CORPUS / "manifest.json").read_text())}
        assert frames == manifest[path.name]["packets"]
