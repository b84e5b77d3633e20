"""The verdict bits of the stateful heuristics, shared with the C scan.

Owns their values. A stateful heuristic (the scans in scan.py, DNS exhaustion in dns.py) answers a
packet with these bits; on the fast path the C scan keeps that state and returns the same bits in
the high 16 bits of a flagged entry (workers/csrc/fastpath.c, enum V_*, which the extension also
exports as `_fastpath.PORT_SCAN` ...; tests/test_heuristics_fast.py holds both to these values).

Must not hold state or judge.
"""

from __future__ import annotations

PORT_SCAN = 0x01
UDP_SCAN = 0x02
INFECTION_SCAN = 0x04
WEB_SCAN = 0x08
DNS_EXHAUSTION = 0x10

# The verdicts that name a prober on the packet that holds them (the web scan and DNS exhaustion
# are reported where the request or query is judged).
SCANS = PORT_SCAN | UDP_SCAN | INFECTION_SCAN
