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

The rule itself (which end is the client, the sender, the DNS domain) is workers/flow.py's
`group_key`, the one noise control groups events by; this module only decodes what it needs
(workers/decode.py, the DNS question) and hashes. The hash is keyed with a per-run seed (BLAKE2b
here; SipHash-2-4 in the C capture path, engine/transport/csrc/capture.c, the deliberate twin) so
traffic cannot be crafted to pile onto one worker.
"""

from __future__ import annotations

import hashlib
import os

from workers.decode import IPPROTO_TCP, IPPROTO_UDP, decode_frame
from workers.dns import parse_dns, parse_dns_tcp
from workers.flow import group_key


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


class Dispatcher:
    def __init__(self, workers: int, seed: bytes | None = None):
        self.workers = workers
        self.seed = seed if seed is not None else os.urandom(16)

    def worker_for(self, data: bytes, linktype: int) -> int:
        if self.workers == 1:
            return 0
        digest = hashlib.blake2b(dispatch_key(data, linktype), digest_size=8, key=self.seed).digest()
        return int.from_bytes(digest, "little") % self.workers
