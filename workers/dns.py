"""DNS message parsing: the question and the A/AAAA answers, over UDP or TCP.

Owns the wire format (RFC 1035 header, names with compression pointers, resource records) for
what detection needs: the first question's name, type and class, the header flags, and the
addresses in A/AAAA answers (sinkhole and parking trails are matched against those). DNS over TCP
carries one or more messages, each behind a two-byte length.

Must not know about trails, events or packets beyond the DNS payload; never raises.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

MAX_NAME_BYTES = 255
MAX_POINTER_HOPS = 32
MAX_ANSWERS = 64
MAX_TCP_MESSAGES = 64

QTYPE_A = 1
QTYPE_PTR = 12
QTYPE_AAAA = 28
QCLASS_IN = 1
RCODE_NXDOMAIN = 3

_HEADER = struct.Struct("!HHHHHH")
_RR = struct.Struct("!HHIH")
_QTAIL = struct.Struct("!HH")


class DnsMessage(NamedTuple):
    id: int
    flags: int
    is_response: bool
    opcode: int
    rcode: int
    qname: str | None           # lower-case, no trailing dot; None without a question
    qtype: int
    qclass: int
    answers: tuple              # ((version, address int), ...) from A and AAAA records


def parse_name(data: bytes, pos: int) -> tuple[str, int] | None:
    """Decodes the name at `pos`; returns (name, position after it in the message) or None.

    Compression pointers must point backwards (forward or self pointers are loops in disguise)
    and at most MAX_POINTER_HOPS are followed. Label bytes are kept as Latin-1 text so that any
    byte survives; callers decide which names are valid.
    """
    labels = []
    total = 0
    end = None
    hops = 0
    n = len(data)
    while True:
        if pos >= n:
            return None
        length = data[pos]
        if length == 0:
            if end is None:
                end = pos + 1
            break
        kind = length & 0xC0
        if kind == 0xC0:
            if pos + 1 >= n:
                return None
            target = ((length & 0x3F) << 8) | data[pos + 1]
            if end is None:
                end = pos + 2
            hops += 1
            if hops > MAX_POINTER_HOPS or target >= pos:
                return None
            pos = target
            continue
        if kind:
            return None  # 0x40/0x80: extended/obsolete label types
        if pos + 1 + length > n:
            return None
        total += length + 1
        if total + 1 > MAX_NAME_BYTES:  # RFC 1035 3.1: 255 bytes including the final zero
            return None
        labels.append(data[pos + 1:pos + 1 + length].decode("latin-1"))
        pos += 1 + length
    return ".".join(labels).lower(), end


def parse_dns(data: bytes) -> DnsMessage | None:
    """One DNS message (a UDP payload, or one TCP-framed message without its length)."""
    if len(data) < 12:
        return None
    ident, flags, qdcount, ancount, _nscount, _arcount = _HEADER.unpack_from(data, 0)
    is_response = bool(flags & 0x8000)
    opcode = (flags >> 11) & 0x0F
    rcode = flags & 0x0F
    qname, qtype, qclass = None, 0, 0
    pos = 12
    if qdcount:
        parsed = parse_name(data, pos)
        if parsed is None or parsed[1] + 4 > len(data):
            return None
        qname, pos = parsed
        qtype, qclass = _QTAIL.unpack_from(data, pos)
        pos += 4
        # Only the first question matters (servers answer one); skip the rest.
        for _ in range(min(qdcount - 1, 16)):
            parsed = parse_name(data, pos)
            if parsed is None or parsed[1] + 4 > len(data):
                return DnsMessage(ident, flags, is_response, opcode, rcode, qname, qtype, qclass, ())
            pos = parsed[1] + 4
    answers = []
    if is_response:
        for _ in range(min(ancount, MAX_ANSWERS)):
            parsed = parse_name(data, pos)
            if parsed is None or parsed[1] + _RR.size > len(data):
                break
            pos = parsed[1]
            rtype, rclass, _ttl, rdlength = _RR.unpack_from(data, pos)
            pos += _RR.size
            if pos + rdlength > len(data):
                break
            if rclass == QCLASS_IN and rtype == QTYPE_A and rdlength == 4:
                answers.append((4, int.from_bytes(data[pos:pos + 4], "big")))
            elif rclass == QCLASS_IN and rtype == QTYPE_AAAA and rdlength == 16:
                answers.append((6, int.from_bytes(data[pos:pos + 16], "big")))
            pos += rdlength
    return DnsMessage(ident, flags, is_response, opcode, rcode, qname, qtype, qclass, tuple(answers))


def parse_dns_tcp(data: bytes) -> list[DnsMessage]:
    """Every complete length-prefixed message in a TCP payload (a truncated last one is dropped:
    without stream reassembly its rest is in another segment)."""
    out = []
    pos = 0
    while pos + 2 <= len(data) and len(out) < MAX_TCP_MESSAGES:
        length = (data[pos] << 8) | data[pos + 1]
        if length < 12 or pos + 2 + length > len(data):
            break
        message = parse_dns(data[pos + 2:pos + 2 + length])
        if message is not None:
            out.append(message)
        pos += 2 + length
    return out


def registered_domain(name: str) -> str:
    """The domain a name belongs to, as dispatch and the DNS heuristics count it: its last two
    labels, three when the second-level label is at most three characters and there are more
    than three labels (co.uk, com.br). Not the public suffix list: one cheap rule shared by the
    capture process (C, engine/transport/csrc/capture.c) and the workers."""
    labels = name.split(".")
    if len(labels) > 3 and len(labels[-2]) <= 3:
        return ".".join(labels[-3:])
    return ".".join(labels[-2:])
