"""Scans: TCP and UDP port scans, infection (worm) scans, web scans.

Owns which packets count as evidence and how they are keyed; the counting itself is
`DistinctWindow` (window.py), one per heuristic, all with the same sliding window of packet time:

- TCP port scan: every TCP segment without ACK and without RST is a probe (SYN, NULL, FIN, XMAS;
  bare ACKs are normal traffic and never count). Key (source, target), value the target port.
- UDP port scan: non-DNS datagrams of at most `udp_probe_max_bytes` payload (bigger ones are media
  or QUIC, not probes), counted for whoever sends them: key (sender, receiver), value the
  destination port. Port order says nothing about who probes (a scanner's source port, often new
  for every probe, is as often below the probed port as above it), and dispatch sends all a UDP
  sender sends to one worker. Not counted: datagrams to the traceroute ports 33434-33534, and
  datagrams from a well-known port (below 1024) to a higher one, which are a service's answers
  (NTP, SNMP, NetBIOS) to a client whose source port changes with every request.
- Infection scan: TCP probes from a local source to a worm port. Key (source, port), value the
  target address.
- Web scan: HTTP requests in origin form. Key (client, server), value the first path segment
  (lower case, query left out).

A heuristic holds when more than its threshold of distinct values fall in the window; every probe
that finds it holding is reported (noise control folds the repeats into one record per source and
trail). The verdicts are bit flags (verdicts.py), the same the C scan returns for the frames it
flags.

Must not build events (workers/pipeline.py does) nor know how frames were captured.
"""

from __future__ import annotations

from workers.decode import IPPROTO_TCP, IPPROTO_UDP
from workers.heuristics.verdicts import INFECTION_SCAN, PORT_SCAN, UDP_SCAN, WEB_SCAN
from workers.heuristics.window import DistinctWindow

_ACK_OR_RST = 0x14
TRACEROUTE_PORTS = range(33434, 33535)
# Ports below this are the well-known (system) ports of RFC 6335: services listen there, clients
# do not send from them.
WELL_KNOWN_PORTS = 1024


def web_segment(path: str) -> str:
    """The first path segment of an origin-form target, as the web scan counts it."""
    return path.split("?", 1)[0].split("/", 2)[1].lower() if path.startswith("/") else ""


class ScanHeuristics:
    """The four scan windows of one worker (the reference path's; the C scan keeps its own)."""

    def __init__(self, settings):
        self.settings = s = settings
        window_us = s.scan_window_s * 1_000_000
        self.port = DistinctWindow(s.port_scan_threshold, window_us, s.max_scan_keys)
        self.udp = DistinctWindow(s.udp_scan_threshold, window_us, s.max_scan_keys)
        self.infection = DistinctWindow(s.infection_scan_threshold, window_us, s.max_scan_keys)
        self.web = DistinctWindow(s.web_scan_threshold, window_us, s.max_scan_keys)
        self._port_on = s.on("port_scan")
        self._udp_on = s.on("udp_scan")
        self._infection_on = s.on("infection_scan")
        self._web_on = s.on("web_scan")
        self._infection_ports = frozenset(s.infection_ports)

    def observe(self, p, ts_us: int) -> int:
        """A decoded packet; returns the verdict bits that hold after it."""
        bits = 0
        if p.proto == IPPROTO_TCP:
            if p.tcp_flags & _ACK_OR_RST:
                return 0
            if self._port_on and self.port.observe((p.version, p.src, p.dst), p.dport, ts_us):
                bits |= PORT_SCAN
            if (self._infection_on and p.dport in self._infection_ports
                    and self.settings.is_local(p.version, p.src)
                    and self.infection.observe((p.version, p.src, p.dport), p.dst, ts_us)):
                bits |= INFECTION_SCAN
        elif p.proto == IPPROTO_UDP and self._udp_on:
            sport, dport = p.sport, p.dport
            if (sport == 53 or dport == 53 or len(p.payload) > self.settings.udp_probe_max_bytes
                    or dport in TRACEROUTE_PORTS or sport < WELL_KNOWN_PORTS <= dport):
                return 0
            if self.udp.observe((p.version, p.src, p.dst), dport, ts_us):
                bits |= UDP_SCAN
        return bits

    def observe_request(self, p, ts_us: int, target: str, client_is_src: bool) -> int:
        """An HTTP request with its request target, keyed (client, server) as dispatch sees the
        conversation (a request sent from the lower port still counts for the other end's worker)."""
        if not self._web_on or not target.startswith("/"):
            return 0
        key = (p.version, p.src, p.dst) if client_is_src else (p.version, p.dst, p.src)
        if self.web.observe(key, web_segment(target), ts_us):
            return WEB_SCAN
        return 0

    def saturation(self) -> dict:
        return {"port scan keys evicted": self.port.evicted_keys, "udp scan keys evicted": self.udp.evicted_keys,
                "infection scan keys evicted": self.infection.evicted_keys,
                "web scan keys evicted": self.web.evicted_keys}
