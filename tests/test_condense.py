"""workers/condense.py's compact form: the listed ports held as three-byte codes, the source packed
into an integer, slots reused. What a record says must not depend on how the group was held: the
records are those the rule (the module docstring) gives, for the values a compact form could get
wrong (the edges of the port range, None, codes whose bytes could meet across a boundary, a value
no port code can hold) and for slots reused many times over.
"""

from __future__ import annotations

import pytest

from events.record import Event
from workers.condense import Condenser

BASE_US = 1_700_000_000 * 1_000_000
WINDOW_US = 60 * 1_000_000


def _ev(t_s, src="10.0.0.1", sport=40000, dst="198.18.0.7", dport=80, proto="TCP", trail="10.0.0.1"):
    ts = BASE_US + int(t_s * 1_000_000)
    return Event(ts, "t", src, sport, dst, dport, proto, "IP", trail, "potential port scanning", "(heuristic)",
                 "low", 1, ts)


def _summary(values, field="dst_port", source=None):
    condenser = Condenser(WINDOW_US)
    out = []
    for i, value in enumerate(values):
        condenser.offer(_ev(i)._replace(**{field: value}), out, source)
    condenser.flush(out)
    assert len(out) == 2 and out[1].count == len(values) - 1
    return getattr(out[1], field)


def test_ports_at_the_edges_and_none_are_listed_exactly():
    assert _summary([1, 0, 65535, None, 0, 65535]) == "-,0,65535"
    # codes whose bytes, read across a code boundary, spell another port's code in a naive layout
    assert _summary([5, 0x0380, 0x8003, 0x0380, 0x8003, 0x0303]) == "771,896,32771"
    assert _summary([5, 0x8003, 0x0380]) == "896,32771"


def test_a_value_no_port_code_holds_turns_the_listing_into_values():
    assert _summary([5, 80, 443, "x", 80, 70000, "x", 443]) == "80,443,70000,x"
    assert _summary([5, 80, -1, 80]) == "-1,80"


def test_a_field_that_never_varies_keeps_its_value_and_type():
    condenser = Condenser(WINDOW_US)
    out = []
    for i in range(3):
        condenser.offer(_ev(i, dport=8080), out, ("", 4, 0x0A000001))
    condenser.flush(out)
    assert out[1].dst_port == 8080 and out[1].src_port == 40000 and out[1].count == 2


def test_sources_are_told_apart_however_they_are_held():
    """A packed (domain "", version, address) never meets another version, a named domain, a
    tuple that merely looks packed, or an address given as text; an integer source, which could
    equal a packed one, is refused."""
    condenser = Condenser(WINDOW_US)
    out = []
    sources = [("", 4, 1), ("", 6, 1), ("example.org", 4, 1), (1 << 4 | 4,), None, ("", 4, 1)]
    for i, source in enumerate(sources):
        condenser.offer(_ev(i), out, source)
    assert len(out) == 5 and condenser.suppressed == 1      # the last repeats the first
    for source in (1 << 4 | 4, True):
        with pytest.raises(TypeError, match="not an integer"):
            condenser.offer(_ev(9), out, source)


def test_reused_slots_start_clean():
    condenser = Condenser(WINDOW_US, max_entries=4)
    out = []
    for round_ in range(50):
        for s in range(6):                      # past max_entries: the oldest closes early
            src = "10.0.%d.%d" % (round_, s)
            for port in range(3 + s % 3):
                condenser.offer(_ev(round_ + port / 100, src=src, trail=src, dport=1000 + port), out)
    condenser.flush(out)
    summaries = [e for e in out if e.count > 1]
    assert len(summaries) == 50 * 6
    for e in summaries:
        s = int(e.src_ip.rsplit(".", 1)[1])
        n = 3 + s % 3
        assert e.count == n - 1 and e.dst_port == ",".join(str(1000 + p) for p in range(1, n))
        assert e.src_port == 40000
    assert condenser.early_closes == 50 * 6 - 4 and len(condenser) == 0
