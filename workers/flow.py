"""Who talks to whom in one packet: orientation, the group rule, and the per-packet flow record.

Owns three rules that every part splitting or grouping traffic must apply alike:

- `client_is_src`: which end started the conversation (events of IP trails are reported client ->
  server, and the worker judges a flow as one);
- `dispatch_is_src`: whose address a non-DNS packet belongs to: the client's, except for UDP,
  where it is the sender's;
- `group_key`: what a packet is dispatched (engine/transport/dispatch.py) and its events grouped
  (workers/condense.py) by: for DNS the registered domain of the first question, otherwise the
  `dispatch_is_src` end. Dispatch and noise control call this one function, so a group never
  spans two workers.

And `Flow`, the record of one inspected packet that every judgement of it reads: both ends (as
text when read) with their ports in the packet's direction, the packet time, the protocol's name,
the orientation, the group.

The C twins are deliberate: `mt_client_is_src` and `mt_dispatch_is_src` (workers/csrc/decode.h)
and the dispatch key (engine/transport/csrc/capture.c); tests/test_capture_c.py holds the keys
byte for byte to `group_key` through engine.transport.dispatch.

Must not parse payloads (the caller hands in the first question's name), match trails or judge.
Imported by the capture process: keep it free of matchers, heuristics and crypto.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import NamedTuple

from workers.decode import IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP, PROTO_NAMES
from workers.dns import registered_domain

# ICMP messages that answer something their receiver sent, so the receiver started the exchange:
# echo, timestamp, information and address-mask replies, and the errors (destination unreachable,
# source quench, redirect, time exceeded, parameter problem; ICMPv6's packet too big). A victim's
# port-unreachable answer to a UDP probe is oriented from the prober.
_ICMP_ANSWERS = {IPPROTO_ICMP: frozenset((0, 3, 4, 5, 11, 12, 14, 16, 18)),
                 IPPROTO_ICMPV6: frozenset((1, 2, 3, 4, 129))}
_TCP_SYN, _TCP_RST, _TCP_ACK = 0x02, 0x04, 0x10


def client_is_src(p) -> bool:
    """Which end of a packet started the conversation: the SYN's sender, the SYN-ACK's receiver,
    the sender of a TCP segment with neither ACK nor RST (a probe), the receiver of a reset that
    answers a probe, otherwise the side with the higher (ephemeral) port, and for ICMP the sender
    of a request (the receiver of a reply or an error). Every packet of a flow answers the same,
    so a flow is judged (and dispatched) as one."""
    if p.proto == IPPROTO_TCP:
        flags = p.tcp_flags
        if flags & _TCP_SYN:
            return not flags & _TCP_ACK
        if not flags & (_TCP_ACK | _TCP_RST):
            # Every segment of an open connection carries ACK, and a reset answers something: a
            # segment with neither (NULL, FIN, XMAS probes) is sent by the side that starts.
            return True
        if flags & _TCP_RST and flags & _TCP_ACK and p.tcp_seq == 0:
            # A reset answering a segment without ACK (a SYN or a stealth probe to a closed port)
            # takes sequence number 0 and acknowledges it (RFC 9293 3.10.7.1); a reset inside a
            # connection carries that connection's sequence number. Its receiver is the prober.
            return False
    if p.sport or p.dport:
        return p.sport >= p.dport  # the well-known (lower) port is the server's
    return p.icmp_type not in _ICMP_ANSWERS.get(p.proto, ())


def dispatch_is_src(p, c_is_src: bool | None = None) -> bool:
    """Whose address a non-DNS packet is dispatched and grouped by: the client's, except for UDP,
    where it is the sender's. A UDP exchange has no handshake, so port order cannot tell a scanner
    probing a port above its own source port from a server answering a client; the UDP scan
    counts what each address sends, and all it sends meets in one worker. The two directions of
    a UDP flow may then be judged in two workers, so their events are grouped apart (by sender)
    on every worker count. `c_is_src`: `client_is_src(p)` when the caller has it already."""
    if p.proto == IPPROTO_UDP:
        return True
    return client_is_src(p) if c_is_src is None else c_is_src


def group_key(p, first_qname: str | None, c_is_src: bool | None = None) -> tuple[str, int, int]:
    """(registered domain, IP version, owner address) of a packet. A DNS packet (`first_qname`,
    the name of its first question, non-empty) belongs to the registered domain of that name, and
    its owner is the client; any other packet has domain "" and the `dispatch_is_src` end as its
    owner. A non-empty name never has an empty registered domain, so the two kinds never meet.

    Dispatch keys a DNS packet by the domain alone (every client's queries about one domain meet
    in one worker) and any other by the owner; noise control groups by all three."""
    if c_is_src is None:
        c_is_src = client_is_src(p)
    if first_qname:
        return registered_domain(first_qname), p.version, p.src if c_is_src else p.dst
    return "", p.version, p.src if dispatch_is_src(p, c_is_src) else p.dst


def ip_text(version: int, addr: int) -> str:
    """An address as events write it: the dotted quad, or Python's IPv6 text (RFC 5952; not
    inet_ntop's, which writes an IPv4-mapped address differently)."""
    if version == 4:
        return socket.inet_ntoa(addr.to_bytes(4, "big"))  # the same text as IPv4Address, faster
    return str(ipaddress.IPv6Address(addr))


def is_loopback(version: int, addr: int) -> bool:
    """127.0.0.0/8 or ::1."""
    return addr >> 24 == 127 if version == 4 else addr == 1


class Flow(NamedTuple):
    """One inspected packet as its events describe it. `src`/`dst` go the packet's way; the
    client is the source when `client_is_src`. Built once per packet (`flow_of`), read by every
    judgement of it, never changed: `client_to_server` and `attributed_to` make copies.

    The addresses are kept as integers and written as text (`src`, `dst`) only when read: the
    reference path builds a flow for every frame, and most frames produce no event."""

    ts_us: int              # packet time
    version: int            # 4 or 6
    src_addr: int           # the sender's address
    sport: int              # 0 when the protocol has no ports
    dst_addr: int
    dport: int
    proto_number: int       # IP protocol number of the transport
    client_is_src: bool
    group: tuple            # group_key(): the noise-control group of its events
    attributed_src: str | None = None  # the source an event names instead of the sender (attributed_to)

    @property
    def src(self) -> str:
        return self.attributed_src or ip_text(self.version, self.src_addr)

    @property
    def dst(self) -> str:
        return ip_text(self.version, self.dst_addr)

    @property
    def proto(self) -> str:
        """The protocol's name ("TCP", "UDP", "ICMP", ...), the number as text when unnamed."""
        return PROTO_NAMES.get(self.proto_number) or str(self.proto_number)

    @property
    def loopback(self) -> bool:
        """Either end is a loopback address (the packet's, whatever an event is attributed to)."""
        return is_loopback(self.version, self.src_addr) or is_loopback(self.version, self.dst_addr)

    def client_to_server(self) -> "Flow":
        """The same flow written client -> server (how IP trail events are reported)."""
        if self.client_is_src:
            return self
        return self._replace(src_addr=self.dst_addr, sport=self.dport, dst_addr=self.src_addr, dport=self.sport,
                             client_is_src=True)

    def attributed_to(self, source: str) -> "Flow":
        """The same flow with its events naming `source` as the source (the client a proxy names in
        X-Forwarded-For); ports, group and the loopback rule stay the packet's."""
        return self._replace(attributed_src=source)


_new_tuple = tuple.__new__


def flow_of(p, ts_us: int, first_qname: str | None = None) -> Flow:
    """The flow record of a decoded packet; `first_qname` as for `group_key`."""
    c_is_src = client_is_src(p)
    # tuple.__new__ rather than Flow(...): the NamedTuple's generated __new__ is one more Python
    # call, and the reference path builds a flow for every frame. The fields in Flow's order.
    return _new_tuple(Flow, (ts_us, p.version, p.src, p.sport, p.dst, p.dport, p.proto, c_is_src,
                             group_key(p, first_qname, c_is_src), None))
