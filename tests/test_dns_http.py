"""workers.dns and workers.http: messages and requests built field by field, real captures, fuzzing.

DNS messages are assembled below from RFC 1035 pieces (header, names with and without compression
pointers, resource records) so each malformation is exactly the one named; real captures are read
from ../shared through engine.sources.pcapfile and never copied here (tests skip when it is absent).
"""

from __future__ import annotations

import csv
import functools
import ipaddress
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.sources import synthetic as g
from engine.sources.pcapfile import open_capture
from tests.conftest import MALTRAIL_CORPUS, REAL_CORPUS, need_shared
from workers.decode import Packet, decode_frame
from workers.dns import (
    MAX_POINTER_HOPS, MAX_TCP_MESSAGES, QTYPE_A, QTYPE_AAAA, QTYPE_PTR, RCODE_NXDOMAIN, DnsMessage,
    parse_dns, parse_dns_tcp, parse_name,
)
from workers.http import (
    MAX_HEAD_BYTES, HttpRequest, RequestAuthority, decoded_form, decoded_target, looks_like_http_request,
    parse_http_request, request_authority,
)

FUZZ = settings(max_examples=500, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

QTYPE_CNAME, QTYPE_TXT, QTYPE_HTTPS = 5, 16, 65


# --- DNS builders (RFC 1035 section 4) ---

def _header(qd=1, an=0, ns=0, ar=0, flags=0x0100, ident=0x4242) -> bytes:
    return struct.pack("!HHHHHH", ident, flags, qd, an, ns, ar)


def _labels(*labels: bytes) -> bytes:
    return b"".join(bytes([len(label)]) + label for label in labels)


def _name(text: str) -> bytes:
    return _labels(*(label.encode() for label in text.split("."))) + b"\x00"


def _ptr(offset: int) -> bytes:
    return struct.pack("!H", 0xC000 | offset)


def _question(name: bytes, qtype=QTYPE_A, qclass=1) -> bytes:
    return name + struct.pack("!HH", qtype, qclass)


def _rr(owner: bytes, rtype: int, rdata: bytes, rclass=1, ttl=300) -> bytes:
    return owner + struct.pack("!HHIH", rtype, rclass, ttl, len(rdata)) + rdata


def _ip(text: str) -> int:
    return int(ipaddress.ip_address(text))


# --- parse_name -------------------------------------------------------------------------------

def test_parse_name_plain_and_root():
    data = _header() + _name("WwW.Example.ORG")
    assert parse_name(data, 12) == ("www.example.org", len(data))
    assert parse_name(_header() + b"\x00", 12) == ("", 13)


def test_parse_name_pointer_ends_after_the_pointer():
    data = _header() + _name("example.org") + _labels(b"mail") + _ptr(12)
    start = 12 + len(_name("example.org"))
    assert parse_name(data, start) == ("mail.example.org", len(data))
    assert parse_name(data + b"trailing", start) == ("mail.example.org", len(data))


def test_parse_name_keeps_any_byte_as_latin1():
    data = _header() + _labels(b"\xe9t\xc9", b"a b") + b"\x00"
    assert parse_name(data, 12) == ("\xe9t\xe9.a b", len(data))


@pytest.mark.parametrize("data", [
    _header() + _ptr(12),                                               # pointer to itself
    _header() + _ptr(14) + _name("forward.org"),                        # forward pointer
    _header() + _labels(b"a") + _ptr(16) + _labels(b"b") + _ptr(12),    # A -> B -> A
    _header() + _labels(b"abcdef")[:5],                                 # label over the end
    _header() + b"\x05ab",
    _header() + _labels(b"abc"),                                        # no terminating zero
    _header() + b"\xc0",                                                # half a pointer
    _header() + b"\x41abc\x00",                                         # 0x40 extended label type
    _header() + b"\x81abc\x00",                                         # 0x80 reserved label type
    _header(),                                                          # nothing at pos
])
def test_parse_name_malformed(data):
    assert parse_name(data, 12) is None


def test_parse_name_pointer_hop_limit():
    # A chain of pointers, each to the previous one: backwards, so no loop, but long.
    def chain(hops):
        data = bytearray(_header() + _name("deep.org"))
        prev = 12
        for _ in range(hops):
            here = len(data)
            data += _ptr(prev)
            prev = here
        return bytes(data), prev

    data, last = chain(MAX_POINTER_HOPS)
    assert parse_name(data, last) == ("deep.org", last + 2)
    data, last = chain(MAX_POINTER_HOPS + 1)
    assert parse_name(data, last) is None


def _long_name(wire_bytes: int) -> bytes:
    """A name whose wire form (length bytes, labels and the root zero) is exactly `wire_bytes`."""
    labels, left = [], wire_bytes - 1
    while left:
        size = min(63, left - 1)
        labels.append(b"a" * size)
        left -= size + 1
    name = _labels(*labels) + b"\x00"
    assert len(name) == wire_bytes
    return name


def test_parse_name_length_limit():
    assert parse_name(_header() + _long_name(255), 12)[1] == 12 + 255
    assert parse_name(_header() + _long_name(300), 12) is None
    assert parse_name(_header() + _labels(*[b"b" * 63] * 5) + b"\x00", 12) is None


def test_parse_name_256_wire_bytes_is_too_long():
    assert parse_name(_header() + _long_name(256), 12) is None


def test_parse_name_long_name_through_a_pointer():
    # 200 bytes behind a pointer plus 63 + 1 bytes in front: 264 in total.
    base = _long_name(200)
    data = _header() + base + _labels(b"c" * 63) + _ptr(12)
    assert parse_name(data, 12 + len(base)) is None


# --- parse_dns: queries and responses ---------------------------------------------------------

@pytest.mark.parametrize("qtype", [QTYPE_A, QTYPE_AAAA, QTYPE_PTR, QTYPE_TXT, QTYPE_HTTPS])
def test_queries_of_several_types(qtype):
    name = "4.3.2.1.in-addr.arpa" if qtype == QTYPE_PTR else "Query.Example.NET"
    m = parse_dns(g.dns_query(name, qtype=qtype, ident=0xBEEF))
    assert m == DnsMessage(0xBEEF, 0x0100, False, 0, 0, name.lower(), qtype, 1, ())


def test_query_opcode_and_flags():
    notify = _header(flags=(4 << 11)) + _question(_name("zone.org"), qtype=6)
    m = parse_dns(notify)
    assert (m.opcode, m.is_response, m.qname, m.qtype) == (4, False, "zone.org", 6)


def test_response_with_a_and_aaaa_answers_pointing_at_the_question():
    data = g.dns_response("www.example.org", ("192.0.2.1", "2001:db8::1", "198.51.100.2"))
    m = parse_dns(data)
    assert m.is_response and m.rcode == 0 and m.qname == "www.example.org"
    assert m.answers == ((4, _ip("192.0.2.1")), (6, _ip("2001:db8::1")), (4, _ip("198.51.100.2")))


def test_cname_chain_before_the_a_record():
    question = _question(_name("www.shop.org"))
    cdn_at = 12 + len(question) + 12                       # where the first CNAME's rdata starts
    answers = (_rr(_ptr(12), QTYPE_CNAME, _labels(b"cdn") + _ptr(16))        # cdn.shop.org
               + _rr(_ptr(cdn_at), QTYPE_CNAME, _name("edge.cdnhost.net"))
               + _rr(_name("edge.cdnhost.net"), QTYPE_A, ipaddress.ip_address("203.0.113.7").packed))
    data = _header(an=3, flags=0x8180) + question + answers
    assert parse_name(data, cdn_at) == ("cdn.shop.org", cdn_at + 6)
    m = parse_dns(data)
    assert m.qname == "www.shop.org" and m.answers == ((4, _ip("203.0.113.7")),)


def test_answers_that_are_not_in_a_aaaa_are_ignored():
    question = _question(_name("x.org"))
    answers = (_rr(_ptr(12), QTYPE_A, b"\x01\x02\x03\x04\x05")        # wrong rdlength
               + _rr(_ptr(12), QTYPE_A, b"\x01\x02\x03\x04", rclass=3)  # CHAOS class
               + _rr(_ptr(12), QTYPE_TXT, b"\x03abc")
               + _rr(_ptr(12), QTYPE_A, b"\x0a\x00\x00\x01"))
    m = parse_dns(_header(an=4, flags=0x8180) + question + answers)
    assert m.answers == ((4, _ip("10.0.0.1")),)


def test_answers_of_a_query_are_not_read():
    question = _question(_name("x.org"))
    data = _header(an=1) + question + _rr(_ptr(12), QTYPE_A, b"\x0a\x00\x00\x01")
    assert parse_dns(data).answers == ()


def test_truncated_answer_section_keeps_what_was_complete():
    data = g.dns_response("cut.example.org", ("192.0.2.1", "192.0.2.2"))
    m = parse_dns(data[:-2])
    assert m.qname == "cut.example.org" and m.answers == ((4, _ip("192.0.2.1")),)
    assert parse_dns(data[:-16]).answers == ((4, _ip("192.0.2.1")),)


def test_nxdomain():
    m = parse_dns(g.dns_response("no-such.example.org", (), rcode=RCODE_NXDOMAIN))
    assert (m.is_response, m.rcode, m.qname, m.answers) == (True, RCODE_NXDOMAIN, "no-such.example.org", ())


def test_header_only_and_no_question():
    assert parse_dns(_header(qd=0)) == DnsMessage(0x4242, 0x0100, False, 0, 0, None, 0, 0, ())
    assert parse_dns(_header(qd=1)) is None
    assert parse_dns(_header()[:11]) is None
    assert parse_dns(b"") is None
    response = _header(qd=0, an=1, flags=0x8180) + _rr(_name("a.org"), QTYPE_A, b"\x01\x02\x03\x04")
    m = parse_dns(response)
    assert m.qname is None and m.answers == ((4, _ip("1.2.3.4")),)


@pytest.mark.parametrize("question", [
    _ptr(12) + struct.pack("!HH", 1, 1),                 # self pointer
    _ptr(20) + b"\x00\x01\x00\x01" + _name("x.org"),      # forward pointer
    _name("x.org")[:-1],                                  # name runs off the end
    _name("x.org") + b"\x00\x01",                         # qclass missing
])
def test_malformed_question_gives_none(question):
    assert parse_dns(_header() + question) is None


def test_second_question_malformed_keeps_the_first():
    data = _header(qd=2) + _question(_name("first.org")) + b"\x05ab"
    m = parse_dns(data)
    assert m.qname == "first.org" and m.answers == ()


def test_extra_questions_are_skipped_to_reach_the_answers():
    data = (_header(qd=2, an=1, flags=0x8180) + _question(_name("one.org")) + _question(_labels(b"two") + _ptr(16))
            + _rr(_ptr(12), QTYPE_A, b"\xc0\x00\x02\x09"))
    assert parse_dns(data).answers == ((4, _ip("192.0.2.9")),)


# --- parse_dns_tcp ----------------------------------------------------------------------------

def _framed(message: bytes) -> bytes:
    return struct.pack("!H", len(message)) + message


def test_tcp_several_messages_and_a_truncated_last_one():
    names = ["a.example.org", "b.example.org", "c.example.org", "d.example.org"]
    stream = b"".join(_framed(g.dns_query(n, ident=i)) for i, n in enumerate(names))
    assert [m.qname for m in parse_dns_tcp(stream)] == names
    assert [m.id for m in parse_dns_tcp(stream)] == [0, 1, 2, 3]
    assert [m.qname for m in parse_dns_tcp(stream[:-1])] == names[:3]
    assert [m.qname for m in parse_dns_tcp(stream + b"\x00")] == names   # a lone byte: no length yet


def test_tcp_unparsable_message_is_skipped_and_short_length_stops():
    good = _framed(g.dns_query("ok.example.org"))
    bad = _framed(_header() + b"\x05ab" + bytes(4))
    assert [m.qname for m in parse_dns_tcp(good + bad + good)] == ["ok.example.org"] * 2
    assert parse_dns_tcp(b"\x00\x05hello" + good) == []                   # shorter than a header
    assert parse_dns_tcp(b"") == [] and parse_dns_tcp(b"\x00") == []


def test_tcp_message_count_is_bounded():
    stream = _framed(g.dns_query("many.example.org")) * (MAX_TCP_MESSAGES + 5)
    assert len(parse_dns_tcp(stream)) == MAX_TCP_MESSAGES


def _tcp_payloads(path):
    with open_capture(path) as reader:
        for batch in reader:
            for i in range(len(batch)):
                packet = decode_frame(batch.frame(i), batch.linktypes[i])
                if isinstance(packet, Packet) and packet.proto == 6 and packet.payload:
                    yield packet


def test_tcp_pipelined_queries_in_a_real_capture(real_corpus):
    path = real_corpus / "sv_dns_dns-tcp-multirequest-buffer_dns-tcp-multirequest-buffer.pcap"
    queries, responses = [], []
    for packet in _tcp_payloads(path):
        for m in parse_dns_tcp(packet.payload):
            (responses if m.is_response else queries).append(m)
    expected = ["%d.google.com" % i for i in range(20)]
    assert [m.qname for m in queries] == expected           # all 20 in one segment, in order
    assert [m.qname for m in responses] == expected
    assert all(m.rcode == RCODE_NXDOMAIN and m.answers == () for m in responses)

    # The same segment cut short: only the messages wholly inside the cut remain.
    segment = next(p.payload for p in _tcp_payloads(path) if p.dport == 53)
    ends, pos = [], 0
    while pos < len(segment):
        pos += 2 + struct.unpack_from("!H", segment, pos)[0]
        ends.append(pos)
    assert len(ends) == 20 and ends[-1] == len(segment)
    for cut in (ends[4], ends[4] + 1, ends[4] + 2, ends[18] + 20, len(segment) - 1):
        complete = sum(1 for end in ends if end <= cut)
        assert [m.qname for m in parse_dns_tcp(segment[:cut])] == expected[:complete]


def test_real_udp_dns_names(real_corpus):
    names = set()
    with open_capture(real_corpus / "zk_wikipedia.pcap") as reader:
        for batch in reader:
            for i in range(len(batch)):
                p = decode_frame(batch.frame(i), batch.linktypes[i])
                if isinstance(p, Packet) and p.proto == 17 and 53 in (p.sport, p.dport):
                    m = parse_dns(p.payload)
                    assert m is not None
                    names.add(m.qname)
    assert {"upload.wikimedia.org", "meta.wikimedia.org", "upload.wikimedia.org.ncsa.uiuc.edu"} <= names


# --- HTTP -------------------------------------------------------------------------------------

def test_get_with_host_and_user_agent():
    req = parse_http_request(g.http_request("GET", "/index.html?q=1", host="Www.Example.ORG:8080",
                                            user_agent="curl/8.5.0"))
    assert req == HttpRequest("GET", "/index.html?q=1", "HTTP/1.1", "Www.Example.ORG:8080", "curl/8.5.0",
                              {"host": "Www.Example.ORG:8080", "user-agent": "curl/8.5.0"}, b"")


def test_header_names_are_case_insensitive_and_first_wins():
    payload = (b"GET / HTTP/1.0\r\nhOsT:   a.example.org  \r\nUSER-AGENT:UA/1\r\nHost: b.example.org\r\n"
               b"X-Forwarded-For: 192.0.2.1\r\n\r\n")
    req = parse_http_request(payload)
    assert (req.host, req.user_agent, req.version) == ("a.example.org", "UA/1", "HTTP/1.0")
    assert req.headers["x-forwarded-for"] == "192.0.2.1"


def test_header_with_space_before_colon_or_without_colon_is_ignored():
    req = parse_http_request(b"GET / HTTP/1.1\r\nHost : evil.org\r\nnocolon\r\n: empty\r\nHost: ok.org\r\n\r\n")
    assert req.host == "ok.org" and list(req.headers) == ["host"]


def test_absolute_form_proxy_request():
    target = "http://proxied.example.org/a/b?c=d"
    req = parse_http_request(b"GET %s HTTP/1.1\r\nHost: proxied.example.org\r\n\r\n" % target.encode())
    assert (req.method, req.target, req.host) == ("GET", target, "proxied.example.org")


def test_connect_authority_form():
    req = parse_http_request(b"CONNECT tunnel.example.org:443 HTTP/1.1\r\nHost: tunnel.example.org:443\r\n\r\n")
    assert (req.method, req.target, req.host) == ("CONNECT", "tunnel.example.org:443", "tunnel.example.org:443")


@pytest.mark.parametrize("head, authority", [
    # origin form: the Host header, stripped and in lower case, without the port HTTP implies
    (b"GET /A/b?C=d HTTP/1.1\r\nHost: Www.Example.ORG:80\r\n",
     RequestAuthority("www.example.org", "/a/b?c=d", "www.example.org/a/b?c=d", "/a/b?c=d", "www.example.org", None,
                      False)),
    # another port names another service: it stays
    (b"GET / HTTP/1.1\r\nHost: a.example.org:8080\r\n",
     RequestAuthority("a.example.org:8080", "/", "a.example.org:8080/", "/", "a.example.org:8080", None, False)),
    # no Host header (or an empty one): the server's address
    (b"GET /x HTTP/1.0\r\n", RequestAuthority("192.0.2.7", "/x", "192.0.2.7/x", "/x", None, None, False)),
    (b"GET /x HTTP/1.1\r\nHost:\r\n", RequestAuthority("192.0.2.7", "/x", "192.0.2.7/x", "/x", None, None, False)),
    # absolute form (a request to a proxy): the target names the host, ":80" dropped there too
    (b"GET HTTP://Proxied.example.org:80/a//b HTTP/1.1\r\nHost: proxy.example.net\r\n",
     RequestAuthority("proxied.example.org", "/a//b", "proxied.example.org/a//b", "http://proxied.example.org:80/a//b",
                      "proxy.example.net", "proxied.example.org", True)),
    (b"GET ftp://files.example.org HTTP/1.1\r\n",
     RequestAuthority("files.example.org", "/", "files.example.org/", "ftp://files.example.org", None,
                      "files.example.org", True)),
    # "://" past the start is part of a path, not a scheme
    (b"GET /r?u=http://a.example.org/ HTTP/1.1\r\nHost: b.example.org\r\n",
     RequestAuthority("b.example.org", "/r?u=http://a.example.org/", "b.example.org/r?u=http://a.example.org/",
                      "/r?u=http://a.example.org/", "b.example.org", None, False)),
    # CONNECT: host:port (any case of the method)
    (b"connect Tunnel.example.org:443 HTTP/1.1\r\nHost: tunnel.example.org:443\r\n",
     RequestAuthority("tunnel.example.org:443", "/", "tunnel.example.org:443/", "tunnel.example.org:443",
                      "tunnel.example.org:443", "tunnel.example.org:443", False)),
    (b"CONNECT t.example.org:80/p HTTP/1.1\r\n",
     RequestAuthority("t.example.org", "/p", "t.example.org/p", "t.example.org:80/p", None, "t.example.org", False)),
])
def test_request_authority_says_whom_a_request_is_for(head, authority):
    req = parse_http_request(head + b"\r\n")
    assert request_authority(req, "192.0.2.7") == authority


def test_post_with_body():
    req = parse_http_request(g.http_request("POST", "/submit", host="forms.example.org", body=b"a=1&b=%20x"))
    assert req.method == "POST" and req.body == b"a=1&b=%20x" and req.headers["content-length"] == "10"


def test_head_cut_mid_line_ignores_the_incomplete_header():
    full = g.http_request("GET", "/", host="cut.example.org", user_agent="Agent/1.0 (long)")
    cut = full[:full.index(b"User-Agent") + 14]
    req = parse_http_request(cut)
    assert req.host == "cut.example.org" and req.user_agent is None and req.body == b""
    # Cut right after a complete line: that line counts.
    req = parse_http_request(full[:full.index(b"User-Agent")])
    assert req.host == "cut.example.org" and req.user_agent is None
    # Cut inside the Host line itself: no host.
    assert parse_http_request(full[:full.index(b"Host") + 8]).host is None


@pytest.mark.parametrize("payload", [
    b"GET  / HTTP/1.1\r\nHost: a.org\r\n\r\n",          # two spaces
    b"GET / HTTP/1.1 \r\nHost: a.org\r\n\r\n",          # trailing space: four parts
    b"GET /a b HTTP/1.1\r\n\r\n",                       # space inside the target
    b"GET / FTP/1.0\r\n\r\n",
    b"GET  HTTP/1.1\r\n\r\n",
    b"G(T / HTTP/1.1\r\n\r\n",                          # '(' is not a token character
    b"G\xc9T / HTTP/1.1\r\n\r\n",
    b"/ HTTP/1.1\r\n\r\n",
    b"GET / HTTP/1.1",                                  # no end of the request line
    b"",
])
def test_rejected_request_lines(payload):
    assert parse_http_request(payload) is None


def test_head_limit():
    padding = b"X-Pad: " + b"p" * (MAX_HEAD_BYTES) + b"\r\n"
    req = parse_http_request(b"GET / HTTP/1.1\r\nHost: early.org\r\n" + padding + b"User-Agent: late\r\n\r\n")
    assert req.host == "early.org" and req.user_agent is None
    assert parse_http_request(b"GET /" + b"a" * MAX_HEAD_BYTES + b" HTTP/1.1\r\n\r\n") is None


def test_a_target_reads_as_a_browser_encodes_it():
    # application/x-www-form-urlencoded: '+' is a space in the query (not in the path), "%2B" a '+'
    assert decoded_target("/a+b/c?x=1+2&y=%2B%3D") == ("/a+b/c?x=1+2&y=+=", "/a+b/c?x=1 2&y=+=")
    assert decoded_target("/news.php?id=7+and+1%3D1%23") == ("/news.php?id=7+and+1=1#", "/news.php?id=7 and 1=1#")
    # the query starts at the first literal '?': an encoded one belongs to the path
    assert decoded_target("/a%3Fb+c?d") == ("/a?b+c?d",)
    assert decoded_target("/x?a=b?c+d") == ("/x?a=b?c+d", "/x?a=b?c d")
    assert decoded_target("/c++/x") == ("/c++/x",)             # no query: one reading
    assert decoded_target("/plain?q=%41") == ("/plain?q=A",)
    assert decoded_form("user=admin&q=1+and+1%3D1%23") == ("user=admin&q=1+and+1=1#", "user=admin&q=1 and 1=1#")
    assert decoded_form('{"a": "%41"}') == ('{"a": "A"}',)


def test_looks_like_http_request():
    assert looks_like_http_request(g.http_request("GET", "/", host="a.org"))
    assert looks_like_http_request(b"PROPFIND /dav HTTP/1.1\r\n")
    assert looks_like_http_request(b"OPTIONS * HTTP/1.1")
    assert not looks_like_http_request(g.tls_client_hello("a.example.org"))
    assert not looks_like_http_request(g.dns_query("a.example.org"))
    assert not looks_like_http_request(b"HTTP/1.1 200 OK\r\n\r\n")        # a response
    assert not looks_like_http_request(b"SSH-2.0-OpenSSH_9.6\r\n")
    assert not looks_like_http_request(b" GET / HTTP/1.1\r\n")
    assert not looks_like_http_request(b"GET /\r\nHost: HTTP/1.1\r\n")    # ' HTTP/' only on a later line
    assert not looks_like_http_request(b"\x00\x01 / HTTP/1.1\r\n")
    assert not looks_like_http_request(b"")


# Hosts each real capture's HTTP requests carry, per the corpus manifest (http_host=...). Left out:
# captures whose HTTP sits inside a tunnel (GRE/ERSPAN, VXLAN, MPLS) or an unsupported link type
# (NFLOG), and sv_bug-4810 (PPPoE with a compressed PPP protocol field; see test_decode).
MANIFEST_HTTP_CAPTURES = (
    "zk_wikipedia.pcap", "sv_bug-28_input.pcap", "zk_http-qinq-0.pcap", "zk_vlan-qinqinq.pcap",
    "sv_decode-chdlc-01_hdlc-http_1tx.pcap", "sv_decode-sll2-02_input.pcap", "zk_tunnels_socks.pcap",
    "sv_http-ipv6_input.pcap", "sv_http-mime-truncated_input.pcap", "zk_tunnels_Teredo.pcap",
    "sv_filestore-filecontainer-http_filecontainer-http.pcap",
)


@functools.lru_cache(maxsize=1)
def _manifest_hosts() -> dict:
    out = {}
    with open(REAL_CORPUS / "manifest.tsv", newline="") as f:
        for row in csv.DictReader(f, delimiter="\t"):
            for item in row["observed_by_tshark"].split("; "):
                if item.startswith("http_host="):
                    out[row["file"]] = set(item[len("http_host="):].split(","))
    return out


@pytest.mark.parametrize("name", MANIFEST_HTTP_CAPTURES)
def test_real_http_hosts_match_the_manifest(name):
    path = need_shared(REAL_CORPUS / name)
    hosts = set()
    for packet in _tcp_payloads(path):
        if looks_like_http_request(packet.payload):
            req = parse_http_request(packet.payload)
            assert req is not None
            hosts.add(req.host)
    assert hosts == _manifest_hosts()[name]


def test_real_http_request_details(real_corpus):
    requests = [parse_http_request(p.payload) for p in _tcp_payloads(real_corpus / "sv_bug-28_input.pcap")
                if looks_like_http_request(p.payload)]
    assert len(requests) == 6
    for req in requests:
        assert req.method == "GET" and req.host == "btg.btgrab.com"
        assert req.target.startswith("/a/Drk.syn?adcontext=ROUTINE_CHECKIN")
        assert req.user_agent.startswith("{2CAA09DF-35D8-471C-9979-A11DA")


# --- fuzzing ----------------------------------------------------------------------------------

def _check_message(m):
    assert m is None or isinstance(m, DnsMessage)
    if m is not None:
        assert m.qname is None or isinstance(m.qname, str)
        assert all(v in (4, 6) and isinstance(a, int) for v, a in m.answers)


@functools.lru_cache(maxsize=1)
def _dns_seeds() -> tuple:
    seeds = [
        g.dns_query("seed.example.org", qtype=QTYPE_HTTPS),
        g.dns_response("seed.example.org", ("192.0.2.1", "2001:db8::1")),
        _header(qd=2, an=1, flags=0x8180) + _question(_name("one.org")) + _question(_labels(b"two") + _ptr(16))
        + _rr(_ptr(12), QTYPE_A, b"\xc0\x00\x02\x09"),
    ]
    for directory in (REAL_CORPUS, MALTRAIL_CORPUS):
        if not directory.exists():
            continue
        for path in sorted(directory.glob("*dns*.pcap")):
            with open_capture(path) as reader:
                for batch in reader:
                    for i in range(min(len(batch), 20)):
                        p = decode_frame(batch.frame(i), batch.linktypes[i])
                        if isinstance(p, Packet) and 53 in (p.sport, p.dport) and p.payload:
                            seeds.append(p.payload[2:] if p.proto == 6 else p.payload)
    return tuple(seeds)


def _mutate(data, buf: bytearray) -> bytes:
    for _ in range(data.draw(st.integers(1, 5))):
        op = data.draw(st.sampled_from(("flip", "cut", "insert", "byte")))
        pos = data.draw(st.integers(0, max(0, len(buf) - 1)))
        if op == "flip" and buf:
            buf[pos] ^= 1 << data.draw(st.integers(0, 7))
        elif op == "byte" and buf:
            buf[pos] = data.draw(st.sampled_from((0x00, 0xC0, 0xC0 | (pos >> 8 & 0x3F), 0x3F, 0xFF, 12)))
        elif op == "cut":
            del buf[pos:]
        elif op == "insert":
            buf[pos:pos] = data.draw(st.binary(min_size=1, max_size=6))
    return bytes(buf)


@FUZZ
@given(st.binary(max_size=300), st.integers(0, 320))
def test_fuzz_random_dns(data, pos):
    parsed = parse_name(data, pos)
    assert parsed is None or (isinstance(parsed[0], str) and pos < parsed[1] <= len(data))
    _check_message(parse_dns(data))
    assert all(isinstance(m, DnsMessage) for m in parse_dns_tcp(data))


@FUZZ
@given(st.data())
def test_fuzz_mutated_dns(data):
    seed = data.draw(st.sampled_from(_dns_seeds()))
    mutated = _mutate(data, bytearray(seed))
    _check_message(parse_dns(mutated))
    for m in parse_dns_tcp(_framed(mutated) + _framed(seed) + mutated[:7]):
        _check_message(m)
    parsed = parse_name(mutated, 12)
    assert parsed is None or isinstance(parsed[0], str)


@functools.lru_cache(maxsize=1)
def _http_seeds() -> tuple:
    seeds = [
        g.http_request("POST", "/submit?x=1", host="a.example.org", user_agent="UA/1", body=b"k=v"),
        b"CONNECT t.example.org:443 HTTP/1.1\r\nHost: t.example.org:443\r\n\r\n",
        b"GET http://p.example.org/ HTTP/1.0\r\nhost: p.example.org\r\nUser-Agent: x",
    ]
    if REAL_CORPUS.exists():
        for name in ("zk_wikipedia.pcap", "sv_bug-28_input.pcap", "zk_tunnels_Teredo.pcap"):
            seeds += [p.payload for p in _tcp_payloads(REAL_CORPUS / name) if looks_like_http_request(p.payload)]
    return tuple(seeds)


def _check_request(req):
    assert req is None or isinstance(req, HttpRequest)
    if req is not None:
        assert all(isinstance(v, str) for v in (req.method, req.target, req.version))
        assert req.host is None or isinstance(req.host, str)
        assert req.user_agent is None or isinstance(req.user_agent, str)
        assert isinstance(req.body, bytes)
        authority = request_authority(req, "192.0.2.1")
        assert authority.url == authority.host + authority.path
        assert authority.target_host is None or authority.host == authority.target_host


@FUZZ
@given(st.binary(max_size=400))
def test_fuzz_random_http(payload):
    assert looks_like_http_request(payload) in (True, False)
    _check_request(parse_http_request(payload))


@FUZZ
@given(st.data())
def test_fuzz_mutated_http(data):
    buf = bytearray(data.draw(st.sampled_from(_http_seeds())))
    for _ in range(data.draw(st.integers(1, 5))):
        op = data.draw(st.sampled_from(("flip", "cut", "insert", "crlf")))
        pos = data.draw(st.integers(0, max(0, len(buf) - 1)))
        if op == "flip" and buf:
            buf[pos] ^= 1 << data.draw(st.integers(0, 7))
        elif op == "cut":
            del buf[pos:]
        elif op == "insert":
            buf[pos:pos] = data.draw(st.binary(min_size=1, max_size=6))
        else:
            buf[pos:pos] = data.draw(st.sampled_from((b"\r\n", b"\r\n\r\n", b" ", b":", b"\n")))
    payload = bytes(buf)
    looks_like_http_request(payload)
    _check_request(parse_http_request(payload))
