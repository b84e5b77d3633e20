"""Which worker gets a frame: a seeded hash over a key chosen so that no evidence is split.

Owns the dispatch key. Trail matching is per packet and would survive any split, but condensing
needs every packet of a flow in one place, and the heuristics need more: a scan is many flows from
one source (port scans per source and target, infection scans per source and port across many
targets, web scans per source and server), and the DNS heuristics count per queried name and per
parent domain whoever asks. So:

- DNS (UDP or TCP port 53, queries and answers): the key is the name's registered domain (its last
  two labels, three when the second-level label is short, as in co.uk): every query and answer
  about one domain, from any client, meets in one worker.
- Other UDP: the key is the sender's address, so everything one address sends by UDP meets in
  one worker: the UDP scan counts probes by sender, whatever their ports (port order cannot tell
  a scanner whose source port is below the probed port from a server answering a client). The
  two directions of a UDP flow may land in two workers; noise control groups them by sender.
- Everything else: the key is the address of the side that started the conversation (the SYN's
  sender, the SYN-ACK's receiver, the sender of a TCP probe without ACK or RST, the receiver of a
  reset answering one, else the higher port; the ICMP requester, the receiver of an ICMP reply
  or error), so all flows of one client, in both directions, meet in one worker.
- Frames that do not decode carry no evidence; they are spread by their first bytes.

Also owns which frames cross the ring as their headers alone (`headers_cut`): a TCP segment the
worker judges exactly as it would with no payload (a client's data segment opening with nothing
the worker parses: TLS application data, the bulk of most traffic) keeps only its link, IP and
TCP headers; the batch keeps its wire length. What the worker reads of a frame, and so what the
rule must keep: every header (IP and ip:port trails, orientation, the scan heuristics, counters);
the payload only of DNS (port 53), of a TLS handshake record (ClientHello server names, and the
server's certificate flight, the one thing followed across segments, by the server's direction
only), of an HTTP request (any port) or response head ("HTTP/"), and of UDP (QUIC, the UDP scan's
datagram size), which is never cut.

The rule itself (which end is the client, the sender, the DNS domain) is workers/flow.py's
`group_key`, the one noise control groups events by; this module only decodes what it needs
(workers/decode.py, the DNS question) and hashes. The hash is keyed with a per-run seed (BLAKE2b
here; SipHash-2-4 in the C capture path, engine/transport/csrc/capture.c, the deliberate twin) so
traffic cannot be crafted to pile onto one worker.
"""

from __future__ import annotations

import hashlib
import os

from workers.decode import IPPROTO_TCP, IPPROTO_UDP, decode_frame, tcp_payload_offset
from workers.dns import parse_dns, parse_dns_tcp
from workers.flow import client_is_src, group_key

TLS_HANDSHAKE_RECORD = 22
_TCP_SYN_RST_ACK = 0x16
_TCP_ACK = 0x10
_VISIBLE = frozenset(range(0x21, 0x7F))


def first_qname(p) -> str | None:
    """The name of the first question of a DNS packet (UDP or TCP port 53), else None."""
    if p.proto in (IPPROTO_UDP, IPPROTO_TCP) and (p.sport == 53 or p.dport == 53) and p.payload:
        if p.proto == IPPROTO_UDP:
            message = parse_dns(p.payload)
        else:
            messages = parse_dns_tcp(p.payload)
            message = messages[0] if messages else None
        if message is not None:
            return message.qname
    return None


def dispatch_key(data: bytes, linktype: int) -> bytes:
    """The bytes hashed to choose a frame's worker: b"d:" and the registered domain for DNS, the
    IP version and the owner's 16-byte address otherwise (workers/flow.py group_key, the rule
    noise control groups by too), the first 48 bytes of a frame that does not decode."""
    p = decode_frame(data, linktype)
    if type(p) is str:
        return data[:48]
    domain, version, owner = group_key(p, first_qname(p))
    if domain:
        return b"d:" + domain.encode("latin-1")
    return bytes((version,)) + owner.to_bytes(16, "big")


def headers_suffice(p) -> bool:
    """Whether the worker judges decoded packet `p` exactly as it would with its payload cut off.
    Only a TCP data segment inside a connection (ACK, no SYN or RST) sent by its client by the
    port rule (source port >= destination port; the certificate path follows only the server's
    segments, see `reverses_flight`), off port 53, whose payload opens with none of: a TLS
    handshake record, "HTTP/" (the response heuristics), a possible request line (1 to 32 visible
    characters, then a space: wider than workers/http.py looks_like_http_request, whose token
    characters are all visible)."""
    payload = p.payload
    if p.proto != IPPROTO_TCP or not payload:
        return False
    if p.tcp_flags & _TCP_SYN_RST_ACK != _TCP_ACK or p.sport < p.dport or p.sport == 53 or p.dport == 53:
        return False
    if payload[0] == TLS_HANDSHAKE_RECORD or payload.startswith(b"HTTP/"):
        return False
    space = payload.find(b" ", 0, 33)
    return not (space > 0 and all(c in _VISIBLE for c in payload[:space]))


def reverses_flight(p) -> bool:
    """A segment that could open a TLS server flight (its payload opens with a handshake record)
    sent by the server from the higher port (by a flag rule of workers/flow.py client_is_src: a
    SYN-ACK, a reset answering a probe). The worker would follow that flight (workers/certs.py,
    keyed by the server's direction) in the direction `headers_suffice` cuts, so a stager that sees
    one publishes every frame whole from then on."""
    return (p.proto == IPPROTO_TCP and bool(p.payload) and p.payload[0] == TLS_HANDSHAKE_RECORD
            and p.sport >= p.dport and not client_is_src(p))


def headers_cut(data: bytes, linktype: int) -> tuple[int | None, bool]:
    """(how many bytes of the frame to publish when its headers suffice, else None; whether it
    `reverses_flight`). The C stager's rule (engine/transport/csrc/capture.c), byte for byte."""
    p = decode_frame(data, linktype)
    if type(p) is str:
        return None, False
    if headers_suffice(p):
        return tcp_payload_offset(data, linktype), False
    return None, reverses_flight(p)


class Dispatcher:
    def __init__(self, workers: int, seed: bytes | None = None):
        self.workers = workers
        self.seed = seed if seed is not None else os.urandom(16)

    def worker_for(self, data: bytes, linktype: int) -> int:
        if self.workers == 1:
            return 0
        digest = hashlib.blake2b(dispatch_key(data, linktype), digest_size=8, key=self.seed).digest()
        return int.from_bytes(digest, "little") % self.workers
