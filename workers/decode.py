"""Link, IP and transport decode: one captured frame -> a packet summary, or a skip reason.

Owns the header walk: link types (Ethernet, Linux SLL and SLL2, raw IPv4/IPv6, NULL/loopback,
PPP, Cisco HDLC), 802.1Q/802.1ad tags including stacked tags (QinQ and deeper), PPPoE sessions,
IPv4 with options, IPv6 with extension headers, TCP, UDP, ICMP and ICMPv6. Non-first fragments
are counted and skipped: their transport header is elsewhere, and guessing would invent ports.
Every frame ends as a `Packet` or as exactly one skip reason, so counters always add up.

This is the plain-Python reference of the per-packet path; it must not know about trails,
events or where frames came from.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from workers.batch import (
    LINKTYPE_CHDLC, LINKTYPE_ETHERNET, LINKTYPE_IPV4, LINKTYPE_IPV6, LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2, LINKTYPE_LOOP, LINKTYPE_NULL, LINKTYPE_PPP, LINKTYPE_RAW,
    LINKTYPE_RAW_DLT12, LINKTYPE_RAW_DLT14,
)

IPPROTO_ICMP = 1
IPPROTO_TCP = 6
IPPROTO_UDP = 17
IPPROTO_ICMPV6 = 58

ETHERTYPE_IPV4 = 0x0800
ETHERTYPE_IPV6 = 0x86DD
ETHERTYPE_VLAN = 0x8100
ETHERTYPE_QINQ = 0x88A8
ETHERTYPE_QINQ_OLD = 0x9100
ETHERTYPE_PPPOE_SESSION = 0x8864
PPP_IPV4 = 0x0021
PPP_IPV6 = 0x0057

MAX_VLAN_TAGS = 8  # deeper stacks are malformed or hostile (decode-too-many-layers)

# IPv6 extension headers walked to reach the transport header (RFC 8200 section 4).
_IPV6_EXT_HOPOPTS = 0
_IPV6_EXT_ROUTING = 43
_IPV6_EXT_FRAGMENT = 44
_IPV6_EXT_DSTOPTS = 60
_IPV6_EXT_AH = 51
_IPV6_EXT_MOBILITY = 135
_IPV6_EXT_HIP = 139
_IPV6_EXT_SHIM6 = 140
_IPV6_GENERIC_EXT = (_IPV6_EXT_HOPOPTS, _IPV6_EXT_ROUTING, _IPV6_EXT_DSTOPTS, _IPV6_EXT_MOBILITY,
                     _IPV6_EXT_HIP, _IPV6_EXT_SHIM6)
MAX_IPV6_EXT_HEADERS = 8

# Skip reasons (counter names).
SKIP_UNSUPPORTED_LINKTYPE = "unsupported link type"
SKIP_TRUNCATED_LINK = "truncated link header"
SKIP_NOT_IP = "not IP (ARP, LCP, other ethertypes)"
SKIP_TOO_MANY_TAGS = "too many VLAN tags"
SKIP_TRUNCATED_IP = "truncated IP header"
SKIP_BAD_IP = "malformed IP header"
SKIP_FRAGMENT = "non-first fragment"
SKIP_TRUNCATED_TRANSPORT = "truncated TCP/UDP/ICMP header"
SKIP_IPV6_EXT = "IPv6 extension header chain too long or truncated"

SKIP_REASONS = (SKIP_UNSUPPORTED_LINKTYPE, SKIP_TRUNCATED_LINK, SKIP_NOT_IP, SKIP_TOO_MANY_TAGS,
                SKIP_TRUNCATED_IP, SKIP_BAD_IP, SKIP_FRAGMENT, SKIP_TRUNCATED_TRANSPORT, SKIP_IPV6_EXT)

PROTO_NAMES = {IPPROTO_TCP: "TCP", IPPROTO_UDP: "UDP", IPPROTO_ICMP: "ICMP", IPPROTO_ICMPV6: "ICMPV6",
               2: "IGMP", 4: "IPIP", 41: "IPV6", 47: "GRE", 50: "ESP", 51: "AH", 89: "OSPF",
               103: "PIM", 112: "VRRP", 132: "SCTP"}

_ETH = struct.Struct("!H")
_IPV4 = struct.Struct("!BBHHHBBH4s4s")
_PORTS = struct.Struct("!HH")
_TCP_PORTS_SEQ = struct.Struct("!HHI")


class Packet(NamedTuple):
    version: int          # 4 or 6
    src: int              # address as an int
    dst: int
    proto: int            # IP protocol number of the transport (after IPv6 extension headers)
    sport: int            # 0 when the protocol has no ports
    dport: int
    tcp_flags: int        # 0 unless TCP
    icmp_type: int        # -1 unless ICMP/ICMPv6
    payload: bytes        # transport payload (b"" when none or unknown)
    tcp_seq: int = 0      # the TCP sequence number (0 unless TCP): a reset that answers a segment
                          # without ACK carries 0 (RFC 9293 3.10.7.1), which orients it


def _link_to_l3(data: bytes, linktype: int):
    """Returns (ethertype-like network protocol, offset of the network header) or a skip reason."""
    if linktype == LINKTYPE_ETHERNET:
        if len(data) < 14:
            return SKIP_TRUNCATED_LINK
        return _ethertype_walk(data, 12)
    if linktype in (LINKTYPE_RAW, LINKTYPE_RAW_DLT12, LINKTYPE_RAW_DLT14):
        if not data:
            return SKIP_TRUNCATED_IP
        version = data[0] >> 4
        return (ETHERTYPE_IPV4 if version == 4 else ETHERTYPE_IPV6 if version == 6 else 0), 0
    if linktype == LINKTYPE_IPV4:
        return ETHERTYPE_IPV4, 0
    if linktype == LINKTYPE_IPV6:
        return ETHERTYPE_IPV6, 0
    if linktype == LINKTYPE_LINUX_SLL:
        # 16-byte cooked header; the protocol (an ethertype) is its last two bytes.
        if len(data) < 16:
            return SKIP_TRUNCATED_LINK
        return _ethertype_walk(data, 14)
    if linktype == LINKTYPE_LINUX_SLL2:
        # 20-byte cooked header v2; the protocol comes first.
        if len(data) < 20:
            return SKIP_TRUNCATED_LINK
        proto = _ETH.unpack_from(data, 0)[0]
        if proto in (ETHERTYPE_VLAN, ETHERTYPE_QINQ, ETHERTYPE_QINQ_OLD, ETHERTYPE_PPPOE_SESSION):
            return _ethertype_dispatch(data, proto, 20)
        return proto, 20
    if linktype in (LINKTYPE_NULL, LINKTYPE_LOOP):
        # 4-byte address family, host byte order for NULL, network order for LOOP; AF_INET is
        # 2 everywhere, AF_INET6 is 10/24/28/30 depending on the capturing OS.
        if len(data) < 4:
            return SKIP_TRUNCATED_LINK
        family = struct.unpack_from("<I" if linktype == LINKTYPE_NULL else "!I", data, 0)[0]
        if family > 0xFFFF:
            family = struct.unpack_from("!I" if linktype == LINKTYPE_NULL else "<I", data, 0)[0]
        if family == 2:
            return ETHERTYPE_IPV4, 4
        if family in (10, 24, 28, 30):
            return ETHERTYPE_IPV6, 4
        return 0, 4
    if linktype == LINKTYPE_PPP:
        if len(data) < 4:
            return SKIP_TRUNCATED_LINK
        offset = 2 if data[0] == 0xFF and data[1] == 0x03 else 0  # address/control present
        return _ppp_protocol(data, offset)
    if linktype == LINKTYPE_CHDLC:
        if len(data) < 4:
            return SKIP_TRUNCATED_LINK
        return _ETH.unpack_from(data, 2)[0], 4
    return SKIP_UNSUPPORTED_LINKTYPE


def _ppp_protocol(data: bytes, offset: int):
    if len(data) < offset + 1:
        return SKIP_TRUNCATED_LINK
    # Protocol-field compression (RFC 1661 section 6.5): protocol numbers have an even first byte
    # and an odd second byte, so an odd first byte is a one-byte (compressed) protocol field.
    if data[offset] & 1:
        proto, offset = data[offset], offset + 1
    elif len(data) < offset + 2:
        return SKIP_TRUNCATED_LINK
    else:
        proto, offset = _ETH.unpack_from(data, offset)[0], offset + 2
    if proto == PPP_IPV4:
        return ETHERTYPE_IPV4, offset
    if proto == PPP_IPV6:
        return ETHERTYPE_IPV6, offset
    return 0, offset


def _ethertype_walk(data: bytes, type_offset: int):
    return _ethertype_dispatch(data, _ETH.unpack_from(data, type_offset)[0], type_offset + 2)


def _ethertype_dispatch(data: bytes, ethertype: int, offset: int):
    tags = 0
    while ethertype in (ETHERTYPE_VLAN, ETHERTYPE_QINQ, ETHERTYPE_QINQ_OLD):
        tags += 1
        if tags > MAX_VLAN_TAGS:
            return SKIP_TOO_MANY_TAGS
        if len(data) < offset + 4:
            return SKIP_TRUNCATED_LINK
        ethertype = _ETH.unpack_from(data, offset + 2)[0]
        offset += 4
    if ethertype == ETHERTYPE_PPPOE_SESSION:
        # PPPoE header: ver/type, code, session id, length (6 bytes), then the PPP protocol.
        if len(data) < offset + 8:
            return SKIP_TRUNCATED_LINK
        return _ppp_protocol(data, offset + 6)
    return ethertype, offset


def decode_frame(data: bytes, linktype: int):
    """Returns a Packet, or one of the SKIP_* reasons (a str). Never raises."""
    where = _network(data, linktype)
    if isinstance(where, str):
        return where
    return _decode_transport(where, data)


def tcp_payload_offset(data: bytes, linktype: int) -> int | None:
    """Where the payload `decode_frame` gives a TCP segment starts in `data` (its link, IP and TCP
    headers end there), or None when the frame does not decode to TCP. A frame cut there decodes
    to the same Packet with an empty payload: every header lies before it, and neither the IP
    total length nor the IPv6 payload length is ever required of the bytes captured (the snap
    length may cut any frame). The capture process cuts there the frames whose payload cannot
    matter (engine/transport/dispatch.py `headers_cut`)."""
    where = _network(data, linktype)
    if isinstance(where, str) or where[3] != IPPROTO_TCP:
        return None
    pos, end = where[4], where[5]
    if end < pos + 20:
        return None
    return pos + max((data[pos + 12] >> 4) * 4, 20)


def _network(data: bytes, linktype: int):
    """The link and IP layers: (version, src, dst, protocol, transport offset, end of the
    datagram), or a skip reason."""
    l3 = _link_to_l3(data, linktype)
    if isinstance(l3, str):
        return l3
    ethertype, offset = l3
    if ethertype == ETHERTYPE_IPV4:
        return _ipv4_bounds(data, offset)
    if ethertype == ETHERTYPE_IPV6:
        return _ipv6_bounds(data, offset)
    return SKIP_NOT_IP


def _ipv4_bounds(data: bytes, offset: int):
    """(version, src, dst, protocol, transport offset, end of the datagram) or a skip reason."""
    if len(data) < offset + 20:
        return SKIP_TRUNCATED_IP
    vihl, _tos, total, _ident, frag, _ttl, proto, _csum, src, dst = _IPV4.unpack_from(data, offset)
    ihl = (vihl & 0x0F) * 4
    if vihl >> 4 != 4 or ihl < 20:
        return SKIP_BAD_IP
    if len(data) < offset + ihl:
        return SKIP_TRUNCATED_IP
    if frag & 0x1FFF:
        return SKIP_FRAGMENT
    # The IP total length bounds the payload (Ethernet pads short frames); a total length larger
    # than what was captured just means the snap length cut it.
    end = len(data)
    if ihl <= total < end - offset:
        end = offset + total
    return 4, int.from_bytes(src, "big"), int.from_bytes(dst, "big"), proto, offset + ihl, end


def _ipv6_bounds(data: bytes, offset: int):
    """As _ipv4_bounds, after the extension headers."""
    if len(data) < offset + 40:
        return SKIP_TRUNCATED_IP
    if data[offset] >> 4 != 6:
        return SKIP_BAD_IP
    payload_len = _ETH.unpack_from(data, offset + 4)[0]
    nxt = data[offset + 6]
    src = int.from_bytes(data[offset + 8:offset + 24], "big")
    dst = int.from_bytes(data[offset + 24:offset + 40], "big")
    end = len(data)
    if payload_len and offset + 40 + payload_len < end:
        end = offset + 40 + payload_len
    pos = offset + 40
    for _ in range(MAX_IPV6_EXT_HEADERS + 1):  # up to MAX headers, then the transport
        if nxt in _IPV6_GENERIC_EXT:
            if end < pos + 8:
                return SKIP_IPV6_EXT
            nxt, pos = data[pos], pos + (data[pos + 1] + 1) * 8
        elif nxt == _IPV6_EXT_FRAGMENT:
            if end < pos + 8:
                return SKIP_IPV6_EXT
            if _ETH.unpack_from(data, pos + 2)[0] & 0xFFF8:
                return SKIP_FRAGMENT
            nxt, pos = data[pos], pos + 8
        elif nxt == _IPV6_EXT_AH:
            if end < pos + 8:
                return SKIP_IPV6_EXT
            nxt, pos = data[pos], pos + (data[pos + 1] + 2) * 4
        else:
            break
    else:
        return SKIP_IPV6_EXT
    if pos > end:
        return SKIP_IPV6_EXT
    return 6, src, dst, nxt, pos, end


def _decode_transport(where: tuple, data: bytes):
    version, src, dst, proto, pos, end = where
    if proto == IPPROTO_TCP:
        if end < pos + 20:
            return SKIP_TRUNCATED_TRANSPORT
        sport, dport, seq = _TCP_PORTS_SEQ.unpack_from(data, pos)
        doff = (data[pos + 12] >> 4) * 4
        flags = data[pos + 13]
        start = pos + max(doff, 20)
        return Packet(version, src, dst, proto, sport, dport, flags, -1, data[start:end] if start < end else b"", seq)
    if proto == IPPROTO_UDP:
        if end < pos + 8:
            return SKIP_TRUNCATED_TRANSPORT
        sport, dport = _PORTS.unpack_from(data, pos)
        return Packet(version, src, dst, proto, sport, dport, 0, -1, data[pos + 8:end])
    if proto in (IPPROTO_ICMP, IPPROTO_ICMPV6):
        if end < pos + 4:
            return SKIP_TRUNCATED_TRANSPORT
        return Packet(version, src, dst, proto, 0, 0, 0, data[pos], data[pos + 4:end])
    return Packet(version, src, dst, proto, 0, 0, 0, -1, b"")
