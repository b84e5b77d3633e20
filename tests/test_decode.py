"""workers.decode: every link type, IPv4/IPv6 header walks, skip reasons, the real corpora, fuzzing.

Frames are built with engine.sources.synthetic (and a few header builders below, one per protocol rule being
tested); real captures are read from ../shared through engine.sources.pcapfile and never copied here.
Tests needing ../shared skip with a reason when it is absent.
"""

from __future__ import annotations

import functools
import ipaddress
import struct
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.sources import synthetic as g
from engine.sources.pcapfile import open_capture
from tests.conftest import MALTRAIL_CORPUS, REAL_CORPUS, need_shared
from workers.batch import (
    LINKTYPE_CHDLC, LINKTYPE_ETHERNET, LINKTYPE_IPV4, LINKTYPE_IPV6, LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2, LINKTYPE_LOOP, LINKTYPE_NFLOG, LINKTYPE_NULL, LINKTYPE_PPP, LINKTYPE_RAW,
    LINKTYPE_RAW_DLT12, LINKTYPE_RAW_DLT14,
)
from workers.decode import (
    MAX_IPV6_EXT_HEADERS, MAX_VLAN_TAGS, SKIP_BAD_IP, SKIP_FRAGMENT, SKIP_IPV6_EXT, SKIP_NOT_IP,
    SKIP_REASONS, SKIP_TOO_MANY_TAGS, SKIP_TRUNCATED_IP, SKIP_TRUNCATED_LINK,
    SKIP_TRUNCATED_TRANSPORT, SKIP_UNSUPPORTED_LINKTYPE, Packet, decode_frame,
)

FUZZ = settings(max_examples=600, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

SUPPORTED_LINKTYPES = (LINKTYPE_NULL, LINKTYPE_ETHERNET, LINKTYPE_PPP, LINKTYPE_RAW, LINKTYPE_RAW_DLT12,
                       LINKTYPE_RAW_DLT14, LINKTYPE_CHDLC, LINKTYPE_LOOP, LINKTYPE_LINUX_SLL,
                       LINKTYPE_IPV4, LINKTYPE_IPV6, LINKTYPE_LINUX_SLL2)

C4, S4 = "10.1.2.3", "192.0.2.80"
C6, S6 = "2001:db8::10", "2001:db8::80"
PAYLOAD = b"GET / HTTP/1.1\r\n\r\n"


def _int(addr: str) -> int:
    return int(ipaddress.ip_address(addr))


def _tcp4(payload: bytes = PAYLOAD, flags: int = g.TCP_PSH | g.TCP_ACK, **kw) -> bytes:
    return g.ipv4(C4, S4, 6, g.tcp(C4, S4, 40000, 80, flags, payload), **kw)


def _tcp6(payload: bytes = PAYLOAD, flags: int = g.TCP_PSH | g.TCP_ACK) -> bytes:
    return g.ipv6(C6, S6, 6, g.tcp(C6, S6, 40000, 80, flags, payload))


TCP4 = Packet(4, _int(C4), _int(S4), 6, 40000, 80, g.TCP_PSH | g.TCP_ACK, -1, PAYLOAD, 1)  # pcapgen: seq 1
TCP6 = Packet(6, _int(C6), _int(S6), 6, 40000, 80, g.TCP_PSH | g.TCP_ACK, -1, PAYLOAD, 1)


# --- link-layer headers, built field by field ---

def _pppoe(ppp_payload: bytes, session: int = 0x0042) -> bytes:
    """PPPoE session header (RFC 2516 section 4): ver/type 0x11, code 0, session id, length."""
    return struct.pack("!BBHH", 0x11, 0x00, session, len(ppp_payload)) + ppp_payload


def _sll(ethertype: int, payload: bytes) -> bytes:
    """Linux cooked header v1: packet type, ARPHRD type, address length, 8 address bytes, protocol."""
    return struct.pack("!HHH8sH", 0, 1, 6, b"\x02\x00\x00\x00\x00\x01\x00\x00", ethertype) + payload


def _sll2(ethertype: int, payload: bytes) -> bytes:
    """Linux cooked header v2: protocol, reserved, ifindex, ARPHRD type, packet type, address length, address."""
    return struct.pack("!HHIHBB8s", ethertype, 0, 3, 1, 0, 6, b"\x02\x00\x00\x00\x00\x01\x00\x00") + payload


# --- link types -------------------------------------------------------------------------------

def test_ethernet_ipv4_and_ipv6():
    assert decode_frame(g.ether(_tcp4()), LINKTYPE_ETHERNET) == TCP4
    assert decode_frame(g.ether(_tcp6(), 0x86DD), LINKTYPE_ETHERNET) == TCP6


@pytest.mark.parametrize("vlans,tag_type", [
    ((10,), 0x8100),                  # 802.1Q
    ((100, 200), 0x88A8),             # 802.1ad QinQ: S-tag 0x88a8 outside, C-tag 0x8100 inside
    ((100, 200), 0x9100),             # pre-standard QinQ outer tag
    ((30, 20, 10), 0x8100),           # triple 802.1Q (zk_vlan-qinqinq shape)
    ((30, 20, 10), 0x88A8),
    (tuple(range(1, MAX_VLAN_TAGS + 1)), 0x8100),
])
def test_vlan_tags_are_walked(vlans, tag_type):
    assert decode_frame(g.ether(_tcp4(), vlans=vlans, tag_type=tag_type), LINKTYPE_ETHERNET) == TCP4
    assert decode_frame(g.ether(_tcp6(), 0x86DD, vlans=vlans, tag_type=tag_type), LINKTYPE_ETHERNET) == TCP6


def test_too_many_vlan_tags():
    frame = g.ether(_tcp4(), vlans=tuple(range(1, MAX_VLAN_TAGS + 2)))
    assert decode_frame(frame, LINKTYPE_ETHERNET) == SKIP_TOO_MANY_TAGS


def test_vlan_tag_cut_short_is_truncated_link():
    frame = g.ether(_tcp4(), vlans=(10, 20))
    assert decode_frame(frame[:16], LINKTYPE_ETHERNET) == SKIP_TRUNCATED_LINK   # second tag missing
    assert decode_frame(frame[:13], LINKTYPE_ETHERNET) == SKIP_TRUNCATED_LINK


def test_pppoe_session_ipv4_and_ipv6():
    assert decode_frame(g.ether(_pppoe(b"\x00\x21" + _tcp4()), 0x8864), LINKTYPE_ETHERNET) == TCP4
    assert decode_frame(g.ether(_pppoe(b"\x00\x57" + _tcp6()), 0x8864), LINKTYPE_ETHERNET) == TCP6


def test_pppoe_inside_qinq():
    frame = g.ether(_pppoe(b"\x00\x21" + _tcp4()), 0x8864, vlans=(3704, 2474), tag_type=0x88A8)
    assert decode_frame(frame, LINKTYPE_ETHERNET) == TCP4


def test_pppoe_lcp_is_not_ip_even_when_its_payload_looks_like_ip():
    # PPP protocol 0xc021 (LCP) followed by bytes that would parse as an IPv4 header.
    frame = g.ether(_pppoe(b"\xc0\x21" + _tcp4()), 0x8864)
    assert decode_frame(frame, LINKTYPE_ETHERNET) == SKIP_NOT_IP
    # PPPoE discovery (0x8863) carries no IP at all.
    assert decode_frame(g.ether(_pppoe(_tcp4()), 0x8863), LINKTYPE_ETHERNET) == SKIP_NOT_IP


def test_pppoe_header_cut_short():
    frame = g.ether(_pppoe(b"\x00\x21" + _tcp4()), 0x8864)
    assert decode_frame(frame[:14 + 7], LINKTYPE_ETHERNET) == SKIP_TRUNCATED_LINK
    assert decode_frame(frame[:14 + 8], LINKTYPE_ETHERNET) == SKIP_TRUNCATED_IP


def test_pppoe_with_compressed_protocol_field():
    frame = g.ether(_pppoe(b"\x21" + _tcp4()), 0x8864)
    assert decode_frame(frame, LINKTYPE_ETHERNET) == TCP4


def test_ethernet_non_ip_ethertypes():
    arp = bytes.fromhex("0001080006040001") + bytes(20)
    assert decode_frame(g.ether(arp, 0x0806), LINKTYPE_ETHERNET) == SKIP_NOT_IP
    assert decode_frame(g.ether(arp, 0x0806, vlans=(5,)), LINKTYPE_ETHERNET) == SKIP_NOT_IP
    assert decode_frame(g.ether(_tcp4(), 0x8847), LINKTYPE_ETHERNET) == SKIP_NOT_IP   # MPLS: not walked
    assert decode_frame(g.ether(b"\x42\x42\x03" + bytes(40), 0x0030), LINKTYPE_ETHERNET) == SKIP_NOT_IP  # 802.3


def test_linux_sll():
    assert decode_frame(_sll(0x0800, _tcp4()), LINKTYPE_LINUX_SLL) == TCP4
    assert decode_frame(_sll(0x86DD, _tcp6()), LINKTYPE_LINUX_SLL) == TCP6
    # libpcap puts a VLAN tag back after the cooked header with protocol 0x8100.
    assert decode_frame(_sll(0x8100, struct.pack("!HH", 7, 0x0800) + _tcp4()), LINKTYPE_LINUX_SLL) == TCP4
    assert decode_frame(_sll(0x0806, bytes(28)), LINKTYPE_LINUX_SLL) == SKIP_NOT_IP
    assert decode_frame(_sll(0x0800, b"")[:15], LINKTYPE_LINUX_SLL) == SKIP_TRUNCATED_LINK


def test_linux_sll2():
    assert decode_frame(_sll2(0x0800, _tcp4()), LINKTYPE_LINUX_SLL2) == TCP4
    assert decode_frame(_sll2(0x86DD, _tcp6()), LINKTYPE_LINUX_SLL2) == TCP6
    assert decode_frame(_sll2(0x8100, struct.pack("!HH", 7, 0x0800) + _tcp4()), LINKTYPE_LINUX_SLL2) == TCP4
    assert decode_frame(_sll2(0x8100, struct.pack("!HH", 7, 0x86DD) + _tcp6()), LINKTYPE_LINUX_SLL2) == TCP6
    assert decode_frame(_sll2(0x8864, _pppoe(b"\x00\x21" + _tcp4())), LINKTYPE_LINUX_SLL2) == TCP4
    assert decode_frame(_sll2(0x0806, bytes(28)), LINKTYPE_LINUX_SLL2) == SKIP_NOT_IP
    assert decode_frame(_sll2(0x0800, b"")[:19], LINKTYPE_LINUX_SLL2) == SKIP_TRUNCATED_LINK


@pytest.mark.parametrize("linktype", [LINKTYPE_RAW, LINKTYPE_RAW_DLT12, LINKTYPE_RAW_DLT14])
def test_raw_ip_picks_the_version_from_the_header(linktype):
    assert decode_frame(_tcp4(), linktype) == TCP4
    assert decode_frame(_tcp6(), linktype) == TCP6
    assert decode_frame(b"", linktype) == SKIP_TRUNCATED_IP
    assert decode_frame(b"\x50" + _tcp4()[1:], linktype) == SKIP_NOT_IP   # version 5 is neither


def test_linktype_ipv4_and_ipv6():
    assert decode_frame(_tcp4(), LINKTYPE_IPV4) == TCP4
    assert decode_frame(_tcp6(), LINKTYPE_IPV6) == TCP6
    # The link type fixes the version: a header that disagrees is malformed.
    assert decode_frame(_tcp6(), LINKTYPE_IPV4) == SKIP_BAD_IP
    assert decode_frame(_tcp4() + bytes(40), LINKTYPE_IPV6) == SKIP_BAD_IP


@pytest.mark.parametrize("family,ip,expected", [
    (2, "4", TCP4),      # AF_INET everywhere
    (10, "6", TCP6),     # AF_INET6 on Linux
    (24, "6", TCP6),     # NetBSD/OpenBSD
    (28, "6", TCP6),     # FreeBSD
    (30, "6", TCP6),     # macOS
])
def test_null_and_loop_address_families(family, ip, expected):
    packet = _tcp4() if ip == "4" else _tcp6()
    assert decode_frame(struct.pack("<I", family) + packet, LINKTYPE_NULL) == expected
    assert decode_frame(struct.pack("!I", family) + packet, LINKTYPE_LOOP) == expected
    # NULL is in the capturing host's byte order: a big-endian host's header still decodes.
    assert decode_frame(struct.pack(">I", family) + packet, LINKTYPE_NULL) == expected


def test_null_unknown_family_and_short_header():
    assert decode_frame(struct.pack("<I", 7) + _tcp4(), LINKTYPE_NULL) == SKIP_NOT_IP
    assert decode_frame(b"\x02\x00\x00", LINKTYPE_NULL) == SKIP_TRUNCATED_LINK
    assert decode_frame(b"\x00\x00\x00", LINKTYPE_LOOP) == SKIP_TRUNCATED_LINK


def test_ppp_with_and_without_address_control():
    assert decode_frame(b"\xff\x03\x00\x21" + _tcp4(), LINKTYPE_PPP) == TCP4
    assert decode_frame(b"\x00\x21" + _tcp4(), LINKTYPE_PPP) == TCP4
    assert decode_frame(b"\xff\x03\x00\x57" + _tcp6(), LINKTYPE_PPP) == TCP6
    assert decode_frame(b"\x00\x57" + _tcp6(), LINKTYPE_PPP) == TCP6
    assert decode_frame(b"\xff\x03\xc0\x21" + _tcp4(), LINKTYPE_PPP) == SKIP_NOT_IP   # LCP
    assert decode_frame(b"\xff\x03\x00", LINKTYPE_PPP) == SKIP_TRUNCATED_LINK


def test_cisco_hdlc():
    assert decode_frame(b"\x0f\x00\x08\x00" + _tcp4(), LINKTYPE_CHDLC) == TCP4
    assert decode_frame(b"\x8f\x00\x86\xdd" + _tcp6(), LINKTYPE_CHDLC) == TCP6
    assert decode_frame(b"\x8f\x00\x80\x35" + bytes(40), LINKTYPE_CHDLC) == SKIP_NOT_IP   # SLARP
    assert decode_frame(b"\x0f\x00\x08", LINKTYPE_CHDLC) == SKIP_TRUNCATED_LINK


@pytest.mark.parametrize("linktype", [LINKTYPE_NFLOG, 147, 65535])
def test_unsupported_linktype(linktype):
    assert decode_frame(g.ether(_tcp4()), linktype) == SKIP_UNSUPPORTED_LINKTYPE


# --- IPv4 -------------------------------------------------------------------------------------

@pytest.mark.parametrize("ihl", range(6, 16))
def test_ipv4_options_shift_the_transport_header(ihl):
    options = b"\x01" * ((ihl - 5) * 4 - 1) + b"\x00"     # NOPs then End of Option List
    packet = _tcp4(options=options)
    assert packet[0] == 0x40 | ihl
    assert decode_frame(g.ether(packet), LINKTYPE_ETHERNET) == TCP4


def test_ipv4_total_length_bounds_the_payload_under_ethernet_padding():
    packet = g.ipv4(C4, S4, 17, g.udp(C4, S4, 5353, 53, b"abc"))
    frame = g.ether(packet)
    frame += b"\x00" * (60 - len(frame))                  # minimum Ethernet frame, zero padded
    assert decode_frame(frame, LINKTYPE_ETHERNET) == Packet(4, _int(C4), _int(S4), 17, 5353, 53, 0, -1, b"abc")
    tcp = g.ether(_tcp4(b"")) + b"\xaa" * 6
    assert decode_frame(tcp, LINKTYPE_ETHERNET).payload == b""


def test_ipv4_total_length_beyond_the_capture_means_snap_length_cut():
    frame = g.ether(_tcp4(b"x" * 200))[:14 + 20 + 20 + 50]
    assert decode_frame(frame, LINKTYPE_ETHERNET).payload == b"x" * 50


def test_ipv4_fragments():
    first = g.ether(_tcp4(frag=0x2000))                       # MF set, offset 0: carries the ports
    assert decode_frame(first, LINKTYPE_ETHERNET) == TCP4
    assert decode_frame(g.ether(_tcp4(frag=0x4000)), LINKTYPE_ETHERNET) == TCP4   # DF only
    for frag in (0x0001, 0x2001, 0x1FFF, 0x4000 | 0x00B9):
        assert decode_frame(g.ether(_tcp4(frag=frag)), LINKTYPE_ETHERNET) == SKIP_FRAGMENT, hex(frag)


def test_ipv4_bad_headers():
    packet = bytearray(_tcp4())
    for ihl in range(0, 5):
        packet[0] = 0x40 | ihl
        assert decode_frame(g.ether(bytes(packet)), LINKTYPE_ETHERNET) == SKIP_BAD_IP
    # ethertype IPv4, version 6 in the header (and the reverse)
    assert decode_frame(g.ether(_tcp6()), LINKTYPE_ETHERNET) == SKIP_BAD_IP
    assert decode_frame(g.ether(_tcp4() + bytes(40), 0x86DD), LINKTYPE_ETHERNET) == SKIP_BAD_IP


def test_ipv4_options_beyond_the_capture():
    packet = _tcp4(options=b"\x01" * 40)
    assert decode_frame(g.ether(packet[:20 + 39]), LINKTYPE_ETHERNET) == SKIP_TRUNCATED_IP


def test_truncation_at_every_byte_of_a_built_frame():
    frame = g.ether(_tcp4())
    for n in range(len(frame) + 1):
        result = decode_frame(frame[:n], LINKTYPE_ETHERNET)
        if n < 14:
            assert result == SKIP_TRUNCATED_LINK, n
        elif n < 14 + 20:
            assert result == SKIP_TRUNCATED_IP, n
        elif n < 14 + 20 + 20:
            assert result == SKIP_TRUNCATED_TRANSPORT, n
        else:
            assert result == TCP4._replace(payload=PAYLOAD[:n - 54]), n


def test_truncation_at_every_byte_of_real_frames(real_corpus):
    frames = _sample_frames(real_corpus, per_file=3)
    assert frames
    for frame, linktype in frames:
        for n in range(len(frame) + 1):
            result = decode_frame(frame[:n], linktype)
            assert isinstance(result, Packet) or result in SKIP_REASONS


# --- IPv6 extension headers -------------------------------------------------------------------

def _opts(nxt: int, units: int = 0) -> bytes:
    """Hop-by-hop or destination options header of (units + 1) * 8 bytes, padded with PadN."""
    size = (units + 1) * 8
    return bytes([nxt, units, 1, size - 4]) + bytes(size - 4)


def _routing(nxt: int) -> bytes:
    return bytes([nxt, 2, 0, 1, 0, 0, 0, 0]) + ipaddress.ip_address("2001:db8::99").packed


def _ah(nxt: int) -> bytes:
    """AH (RFC 4302): payload length in 4-byte units minus 2; 12-byte ICV -> 24 bytes."""
    return bytes([nxt, 4, 0, 0]) + struct.pack("!II", 0x1000, 7) + b"\x5a" * 12


def _frag(nxt: int, offset_units: int = 0, more: bool = False) -> bytes:
    return bytes([nxt, 0]) + struct.pack("!HI", (offset_units << 3) | int(more), 0xCAFE)


def _v6_chain(first: int, chain: bytes, l4: bytes) -> bytes:
    return g.ipv6(C6, S6, first, chain + l4)


L4_TCP6 = g.tcp(C6, S6, 40000, 80, g.TCP_PSH | g.TCP_ACK, PAYLOAD)


@pytest.mark.parametrize("first,chain", [
    (0, _opts(6)),
    (0, _opts(6, units=3)),
    (43, _routing(6)),
    (60, _opts(6)),
    (51, _ah(6)),
    (44, _frag(6)),
    (44, _frag(6, more=True)),                   # first fragment: the ports are here
    (0, _opts(43) + _routing(44) + _frag(51) + _ah(60) + _opts(6)),
])
def test_ipv6_extension_headers_are_walked(first, chain):
    assert decode_frame(g.ether(_v6_chain(first, chain, L4_TCP6), 0x86DD), LINKTYPE_ETHERNET) == TCP6


def test_ipv6_non_first_fragment_is_skipped():
    for chain, first in ((_frag(6, offset_units=1), 44), (_opts(44) + _frag(6, 185, more=True), 0)):
        assert decode_frame(g.ether(_v6_chain(first, chain, L4_TCP6), 0x86DD), LINKTYPE_ETHERNET) == SKIP_FRAGMENT


def test_ipv6_too_many_extension_headers():
    chain = b"".join(_opts(60) for _ in range(MAX_IPV6_EXT_HEADERS)) + _opts(6)
    assert decode_frame(_v6_chain(60, chain, L4_TCP6), LINKTYPE_IPV6) == SKIP_IPV6_EXT
    chain = b"".join(_opts(60) for _ in range(MAX_IPV6_EXT_HEADERS - 2)) + _opts(6)
    assert decode_frame(_v6_chain(60, chain, L4_TCP6), LINKTYPE_IPV6) == TCP6


def test_ipv6_chain_of_exactly_the_maximum_decodes():
    chain = b"".join(_opts(60) for _ in range(MAX_IPV6_EXT_HEADERS - 1)) + _opts(6)
    assert decode_frame(_v6_chain(60, chain, L4_TCP6), LINKTYPE_IPV6) == TCP6


def test_ipv6_extension_header_beyond_the_packet():
    # Hop-by-hop options claiming 48 bytes when 8 are present.
    assert decode_frame(_v6_chain(0, bytes([6, 5]) + bytes(6), L4_TCP6), LINKTYPE_IPV6) == SKIP_IPV6_EXT
    assert decode_frame(_v6_chain(0, b"\x06\x00\x01", b""), LINKTYPE_IPV6) == SKIP_IPV6_EXT
    assert decode_frame(_v6_chain(44, b"\x06\x00\x00", b""), LINKTYPE_IPV6) == SKIP_IPV6_EXT
    assert decode_frame(_v6_chain(51, b"\x06\x04", b""), LINKTYPE_IPV6) == SKIP_IPV6_EXT


def test_ipv6_payload_length_bounds_the_payload():
    packet = g.ipv6(C6, S6, 17, g.udp(C6, S6, 5353, 53, b"abc"))
    assert decode_frame(g.ether(packet, 0x86DD) + b"\xee" * 10, LINKTYPE_ETHERNET).payload == b"abc"


def test_ipv6_truncated_header():
    assert decode_frame(_tcp6()[:39], LINKTYPE_IPV6) == SKIP_TRUNCATED_IP


# --- transport --------------------------------------------------------------------------------

def test_icmp_and_icmpv6_types():
    request = decode_frame(g.icmp_frame(C4, S4), LINKTYPE_ETHERNET)
    assert (request.proto, request.icmp_type, request.sport, request.dport) == (1, 8, 0, 0)
    assert decode_frame(g.icmp_frame(S4, C4, reply=True), LINKTYPE_ETHERNET).icmp_type == 0
    assert decode_frame(g.icmp_frame(C6, S6), LINKTYPE_ETHERNET).icmp_type == 128
    reply6 = decode_frame(g.icmp_frame(S6, C6, reply=True), LINKTYPE_ETHERNET)
    assert (reply6.version, reply6.proto, reply6.icmp_type) == (6, 58, 129)
    assert request.payload == struct.pack("!HH", 1, 1) + b"ping"
    unreachable = g.ipv4(S4, C4, 1, b"\x03\x03\x00\x00\x00\x00\x00\x00")
    assert decode_frame(unreachable, LINKTYPE_IPV4).icmp_type == 3
    assert decode_frame(g.ipv4(S4, C4, 1, b"\x03\x03\x00"), LINKTYPE_IPV4) == SKIP_TRUNCATED_TRANSPORT


def test_unknown_protocol_is_a_packet_without_ports():
    gre = g.ipv4(C4, S4, 47, b"\x00\x00\x08\x00" + _tcp4())
    assert decode_frame(gre, LINKTYPE_IPV4) == Packet(4, _int(C4), _int(S4), 47, 0, 0, 0, -1, b"")
    esp = g.ipv6(C6, S6, 50, b"\x00" * 16)
    assert decode_frame(esp, LINKTYPE_IPV6) == Packet(6, _int(C6), _int(S6), 50, 0, 0, 0, -1, b"")
    no_next = g.ipv6(C6, S6, 59, b"")
    assert decode_frame(no_next, LINKTYPE_IPV6).proto == 59


def test_udp_and_short_transport_headers():
    udp = decode_frame(g.udp_frame(C4, S4, 5353, 53, b"q"), LINKTYPE_ETHERNET)
    assert udp == Packet(4, _int(C4), _int(S4), 17, 5353, 53, 0, -1, b"q")
    assert decode_frame(g.ipv4(C4, S4, 17, b"\x00" * 7), LINKTYPE_IPV4) == SKIP_TRUNCATED_TRANSPORT
    assert decode_frame(g.ipv4(C4, S4, 6, b"\x00" * 19), LINKTYPE_IPV4) == SKIP_TRUNCATED_TRANSPORT


def test_tcp_data_offset_beyond_the_segment_gives_an_empty_payload():
    segment = bytearray(g.tcp(C4, S4, 40000, 80, g.TCP_SYN, b"abcd"))
    segment[12] = 0xF0                                   # 60-byte header claimed, 24 bytes present
    packet = decode_frame(g.ipv4(C4, S4, 6, bytes(segment)), LINKTYPE_IPV4)
    assert (packet.sport, packet.dport, packet.tcp_flags, packet.payload) == (40000, 80, g.TCP_SYN, b"")


# --- real captures ----------------------------------------------------------------------------

def _corpus_files():
    files = []
    for directory in (REAL_CORPUS, MALTRAIL_CORPUS):
        if directory.exists():
            files += sorted(p for p in directory.iterdir() if p.suffix in (".pcap", ".pcapng"))
    return files


def _frames(path):
    with open_capture(path) as reader:
        for batch in reader:
            for i in range(len(batch)):
                yield batch.frame(i), batch.linktypes[i]


@functools.lru_cache(maxsize=None)
def _decoded(path) -> tuple:
    return tuple((frame, linktype, decode_frame(frame, linktype)) for frame, linktype in _frames(path))


def _reasons(path) -> Counter:
    return Counter("IP" if isinstance(r, Packet) else r for _, _, r in _decoded(path))


def _sample_frames(directory, per_file: int) -> list:
    out = []
    for path in sorted(directory.iterdir()):
        if path.suffix in (".pcap", ".pcapng"):
            for k, item in enumerate(_frames(path)):
                if k >= per_file:
                    break
                out.append(item)
    return out


@pytest.mark.parametrize("path", _corpus_files(), ids=lambda p: p.name)
def test_every_corpus_frame_is_accounted_for(path):
    with open_capture(path) as reader:
        frames = sum(len(batch) for batch in reader)
    results = _decoded(path)
    assert len(results) == frames
    assert all(isinstance(r, Packet) or r in SKIP_REASONS for _, _, r in results)
    assert sum(_reasons(path).values()) == frames


# Reason counts checked by hand against the frames' bytes (and the manifest's description).
PINNED_REASONS = {
    "zk_vlan-qinqinq.pcap": {"IP": 14},
    "zk_http-qinq-0.pcap": {"IP": 14},
    "zk_pppoe-over-qinq.pcap": {"IP": 86},
    "zk_q-in-q.pcap": {"IP": 4, SKIP_NOT_IP: 1},                      # one ARP
    "zk_linux_dlt_sll2.pcap": {"IP": 4, SKIP_NOT_IP: 2},               # ARP and SLARP-like 0x8035
    "zk_nflog-http.pcap": {SKIP_UNSUPPORTED_LINKTYPE: 13},
    "zk_trunc_ip4-trunc.pcap": {SKIP_TRUNCATED_IP: 1},                 # 20-byte frame
    "zk_trunc_ip6-trunc.pcap": {SKIP_TRUNCATED_IP: 1},                 # 34 of 40 IPv6 header bytes
    "sv_decode-too-small_test.pcap": {"IP": 2, SKIP_TRUNCATED_TRANSPORT: 6},   # 2 empty GRE
    "sv_decode-too-many-layers_input.pcap": {SKIP_NOT_IP: 1},          # MPLS recursion
    "sv_security-8510_defrag-af-confusion-spray-h8.pcap": {"IP": 8192, SKIP_FRAGMENT: 8192},
    "sv_decode-chdlc-01_hdlc-http_1tx.pcap": {"IP": 17},
    "sv_linktype-228_flow-test-01.pcap": {"IP": 7},
    "zk_icmp_icmp6-mldv2.pcap": {"IP": 5},
    "zk_tunnels_socks.pcap": {"IP": 18},
    "zk_rotation.pcap": {"IP": 20},
    "zk_wikipedia.pcap": {"IP": 126, SKIP_NOT_IP: 10},
    "truncated.pcap": {SKIP_TRUNCATED_IP: 4, SKIP_BAD_IP: 4, SKIP_TRUNCATED_TRANSPORT: 2},
    "fragments.pcap": {"IP": 1, SKIP_FRAGMENT: 2},
    "pppoe.pcap": {"IP": 2, SKIP_NOT_IP: 1},
}


@pytest.mark.parametrize("name", sorted(PINNED_REASONS))
def test_pinned_reason_counts(name):
    path = REAL_CORPUS / name if (REAL_CORPUS / name).exists() else MALTRAIL_CORPUS / name
    need_shared(path)
    assert dict(_reasons(path)) == PINNED_REASONS[name]


def test_defrag_spray_every_non_first_fragment_is_skipped(real_corpus):
    """Both halves of the spray: IPv4 fragments with a non-zero offset, IPv6 fragment headers
    (behind a hop-by-hop header) with a non-zero offset; first fragments decode."""
    seen = Counter()
    for frame, _, result in _decoded(real_corpus / "sv_security-8510_defrag-af-confusion-spray-h8.pcap"):
        if frame[12:14] == b"\x08\x00":
            non_first = struct.unpack_from("!H", frame, 14 + 6)[0] & 0x1FFF != 0
            family = "v4"
        else:
            assert frame[12:14] == b"\x86\xdd" and frame[14 + 6] == 0 and frame[54] == 44
            non_first = struct.unpack_from("!H", frame, 54 + 8 + 2)[0] >> 3 != 0
            family = "v6"
        assert (result == SKIP_FRAGMENT) == non_first
        seen[family, non_first] += 1
    assert seen == {("v4", True): 4096, ("v4", False): 4096, ("v6", True): 4096, ("v6", False): 4096}


def test_three_stacked_tags_decode(real_corpus):
    for frame, _, result in _decoded(real_corpus / "zk_vlan-qinqinq.pcap"):
        assert frame[12:14] == frame[16:18] == frame[20:22] == b"\x81\x00"
        assert isinstance(result, Packet) and result.version == 4 and result.proto == 6
        assert 80 in (result.sport, result.dport)


def test_pppoe_inside_qinq_decodes(real_corpus):
    ports = Counter()
    for frame, _, result in _decoded(real_corpus / "zk_pppoe-over-qinq.pcap"):
        assert frame[12:14] == frame[16:18] == b"\x81\x00" and frame[20:22] == b"\x88\x64"
        assert isinstance(result, Packet)
        ports[443 in (result.sport, result.dport)] += 1
    assert ports[True] > 0


def test_ipv6_extension_headers_in_a_real_capture(real_corpus):
    walked = 0
    for frame, _, result in _decoded(real_corpus / "zk_ipv6-http-atomic-frag.pcap"):
        if frame[20] in (0, 43, 44, 60):                  # first next header is an extension
            assert result.proto == 6 and result.dport == 80
            walked += 1
    assert walked == 18


def test_sll2_capture_icmp_types(real_corpus):
    types = [r.icmp_type for _, _, r in _decoded(real_corpus / "zk_linux_dlt_sll2.pcap") if isinstance(r, Packet)]
    assert types == [8, 0, 128, 129]


def test_pppoe_session_http_capture_decodes(real_corpus):
    results = [r for _, _, r in _decoded(real_corpus / "sv_bug-4810_pppoe-session-http.pcap")]
    assert len(results) == 30
    assert all(isinstance(r, Packet) and r.proto == 6 for r in results)


# --- fuzzing ----------------------------------------------------------------------------------

def _assert_total(result):
    assert isinstance(result, Packet) or result in SKIP_REASONS, result


@FUZZ
@given(st.binary(max_size=200), st.sampled_from(SUPPORTED_LINKTYPES + (LINKTYPE_NFLOG, 0xFFFF)))
def test_fuzz_random_bytes(data, linktype):
    _assert_total(decode_frame(data, linktype))


def _built_frames() -> list:
    return [
        (g.ether(_tcp4(), vlans=(100, 200), tag_type=0x88A8), LINKTYPE_ETHERNET),
        (g.ether(_pppoe(b"\x00\x57" + _tcp6()), 0x8864, vlans=(5,)), LINKTYPE_ETHERNET),
        (g.ether(_v6_chain(0, _opts(43) + _routing(44) + _frag(51) + _ah(6), L4_TCP6), 0x86DD), LINKTYPE_ETHERNET),
        (_sll2(0x8100, struct.pack("!HH", 7, 0x0800) + _tcp4(options=b"\x01" * 8)), LINKTYPE_LINUX_SLL2),
        (_sll(0x86DD, _tcp6()), LINKTYPE_LINUX_SLL),
        (struct.pack("<I", 30) + _tcp6(), LINKTYPE_NULL),
        (b"\xff\x03\x00\x21" + _tcp4(), LINKTYPE_PPP),
        (b"\x0f\x00\x08\x00" + g.ipv4(C4, S4, 1, g.icmp_echo()), LINKTYPE_CHDLC),
    ]


@functools.lru_cache(maxsize=1)
def _seed_frames() -> tuple:
    frames = _built_frames()
    if REAL_CORPUS.exists():
        frames += _sample_frames(REAL_CORPUS, per_file=2)
    return tuple(frames)


@FUZZ
@given(st.data())
def test_fuzz_mutated_frames(data):
    frame, linktype = data.draw(st.sampled_from(_seed_frames()))
    buf = bytearray(frame)
    for _ in range(data.draw(st.integers(1, 6))):
        op = data.draw(st.sampled_from(("flip", "cut", "insert", "delete")))
        pos = data.draw(st.integers(0, max(0, len(buf) - 1)))
        if op == "flip" and buf:
            buf[pos] ^= 1 << data.draw(st.integers(0, 7))
        elif op == "cut":
            del buf[pos:]
        elif op == "insert":
            buf[pos:pos] = data.draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del buf[pos:pos + data.draw(st.integers(1, 8))]
    _assert_total(decode_frame(bytes(buf), linktype))
    _assert_total(decode_frame(bytes(buf), data.draw(st.sampled_from(SUPPORTED_LINKTYPES))))
