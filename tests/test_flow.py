"""workers.flow: the one orientation and group rule, and the per-packet flow record.

- dispatch (engine/transport/dispatch.py) and noise control (the worker's groups) read one rule,
  `group_key`: the tests decode real frames, build the worker's flow record and the dispatch key,
  and require that they name the same domain or owner;
- the capture process's dispatch loads only what the key needs, never the judgement;
- the flow record writes addresses exactly as Python's ipaddress does (every event holds them);
- `client_to_server` turns a flow around only when the server sent the packet; `attributed_to`
  names another source and keeps the packet's group and loopback rule.
"""

from __future__ import annotations

import ipaddress
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.sources import synthetic as g
from engine.transport.dispatch import dispatch_key, first_qname
from tests.corpus.generate import reset_answer
from workers.decode import decode_frame
from workers.flow import Flow, flow_of, group_key, ip_text

CLIENT, SERVER, RESOLVER = "10.0.0.1", "198.51.100.7", "10.0.0.53"


def packet(frame):
    p = decode_frame(frame, 1)
    assert type(p) is not str, p
    return p


def expected_key(group) -> bytes:
    domain, version, owner = group
    return b"d:" + domain.encode("latin-1") if domain else bytes((version,)) + owner.to_bytes(16, "big")


FRAMES = {
    "syn": g.tcp_frame(CLIENT, SERVER, 40000, 443, g.TCP_SYN),
    "syn-ack": g.tcp_frame(SERVER, CLIENT, 443, 40000, g.TCP_SYN | g.TCP_ACK),
    "data back": g.tcp_frame(SERVER, CLIENT, 443, 40000, g.TCP_PSH | g.TCP_ACK, b"x"),
    "reset answering a probe": reset_answer(SERVER, CLIENT, 1000, 40000, 2),
    "probe from a low port": g.tcp_frame(CLIENT, SERVER, 80, 8080, 0x29),
    "udp request": g.udp_frame(CLIENT, SERVER, 40000, 123, b"q"),
    "udp answer": g.udp_frame(SERVER, CLIENT, 123, 40000, b"a"),
    "icmp echo": g.icmp_frame(CLIENT, SERVER),
    "icmp reply": g.icmp_frame(SERVER, CLIENT, reply=True),
    "dns query": g.udp_frame(CLIENT, RESOLVER, 40000, 53, g.dns_query("a.b.example-dom.co.uk")),
    "dns answer": g.udp_frame(RESOLVER, CLIENT, 53, 40000, g.dns_response("a.b.example-dom.co.uk", ["192.0.2.1"])),
    "dns over tcp": g.tcp_frame(CLIENT, RESOLVER, 40001, 53, g.TCP_PSH | g.TCP_ACK,
                                len(g.dns_query("x.example.org")).to_bytes(2, "big") + g.dns_query("x.example.org")),
    "ipv6 syn": g.tcp_frame("2001:db8::1", "2001:db8::2", 40000, 443, g.TCP_SYN),
}


@pytest.mark.parametrize("name", sorted(FRAMES))
def test_dispatch_and_noise_control_read_one_rule(name):
    frame = FRAMES[name]
    p = packet(frame)
    flow = flow_of(p, 0, first_qname(p))
    assert dispatch_key(frame, 1) == expected_key(flow.group)


def test_the_group_rule():
    def group(name):
        p = packet(FRAMES[name])
        return group_key(p, first_qname(p))

    client = int(ipaddress.ip_address(CLIENT))
    server = int(ipaddress.ip_address(SERVER))
    # TCP and ICMP: both directions belong to the client
    for name in ("syn", "syn-ack", "data back", "reset answering a probe", "probe from a low port", "icmp echo",
                 "icmp reply"):
        assert group(name) == ("", 4, client), name
    # UDP: each direction to its sender
    assert group("udp request") == ("", 4, client) and group("udp answer") == ("", 4, server)
    # DNS: the registered domain of the first question, and the client within it
    assert group("dns query") == group("dns answer") == ("example-dom.co.uk", 4, client)
    assert group("dns over tcp") == ("example.org", 4, client)


def test_the_flow_record_of_a_packet_sent_by_the_server():
    p = packet(FRAMES["data back"])
    flow = flow_of(p, 123)
    # flow_of builds the tuple directly: field for field what the class would build
    assert flow == Flow(123, 4, p.src, 443, p.dst, 40000, 6, False, group_key(p, None)) and type(flow) is Flow
    assert (flow.ts_us, flow.src, flow.sport, flow.dst, flow.dport, flow.proto) == (123, SERVER, 443, CLIENT, 40000,
                                                                                     "TCP")
    assert not flow.client_is_src and not flow.loopback
    back = flow.client_to_server()
    assert (back.src, back.sport, back.dst, back.dport, back.client_is_src) == (CLIENT, 40000, SERVER, 443, True)
    assert back.group == flow.group and back.ts_us == 123
    # an event attributed to a forwarded client names it; the packet's rules stay the packet's
    told = flow.attributed_to("203.0.113.77")
    assert (told.src, told.sport, told.dst, told.group, told.loopback) == ("203.0.113.77", 443, CLIENT, flow.group, False)
    local = flow_of(packet(g.tcp_frame("127.0.0.1", "127.0.0.1", 40000, 80, g.TCP_SYN)), 0)
    assert local.attributed_to("203.0.113.77").loopback
    sent = flow_of(packet(FRAMES["syn"]), 5)
    assert sent.client_to_server() is sent
    assert flow_of(packet(g.udp_frame("127.0.0.1", CLIENT, 5000, 53, g.dns_query("a.example.org"))), 0).loopback
    assert flow_of(packet(g.tcp_frame("2001:db8::1", "::1", 40000, 80)), 0).loopback
    assert flow_of(packet(FRAMES["ipv6 syn"]), 0).proto == "TCP"


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(0, 2**128 - 1))
def test_addresses_are_written_as_ipaddress_writes_them(v4, v6):
    assert ip_text(4, v4) == str(ipaddress.IPv4Address(v4))
    assert ip_text(6, v6) == str(ipaddress.IPv6Address(v6))
    assert ip_text(6, 0xFFFF_0102_0304) == str(ipaddress.IPv6Address("::ffff:1.2.3.4"))


def test_dispatch_loads_only_what_the_key_needs(tmp_path):
    # The capture process imports dispatch: it must not pay for (or expose) the judgement, the
    # matchers, QUIC's crypto or the heuristics to compute a key. A fresh interpreter, outside the
    # checkout, so the installed package is what is imported.
    code = ("import sys, engine.transport.dispatch\n"
            "print(' '.join(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('workers', 'matchers', 'events', 'config', 'trailsdb'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, check=True)
    loaded = set(out.stdout.split())
    assert loaded <= {"workers", "workers.batch", "workers.decode", "workers.dns", "workers.flow"}, sorted(loaded)
