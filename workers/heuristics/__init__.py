"""Heuristic detections: what trails cannot list, recognised from behaviour.

Owns the settings every heuristic reads (`HeuristicSettings`: a switch and a threshold each, the
windows, the local networks, the caps on state) and the modules that hold per-worker state and
judge: `window.py` (distinct values per key in a sliding window of packet time), `scan.py` (TCP
and UDP port scans, infection scans, web scans), `dns.py` (NXDOMAIN floods, DGA-like names, long
names, DNS exhaustion), `http.py` (suspicious requests and responses).

Every map fed by traffic has a cap, an eviction rule and a saturation counter; time is always
packet time (microseconds), never the wall clock. Dispatch (engine/transport/dispatch.py, by
workers/flow.py's group rule) sends all the evidence of one heuristic to one worker, so a worker's
state is complete on its own. The verdict bits the stateful ones return are `verdicts.py`'s.

Must not know how frames were captured, how trails are stored, or how events are written.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field, fields

# Maltrail's worm ports (POTENTIAL_INFECTION_PORTS), with Redis and the ports of the worms that
# spread over them since (the list).
INFECTION_PORTS = (135, 139, 445, 1433, 3389, 6379, 6892, 6893, 6901)
# RFC 1918, shared address space (RFC 6598), loopback and link-local, IPv6 ULA and link-local.
LOCAL_NETWORKS = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "127.0.0.0/8",
                  "169.254.0.0/16", "fc00::/7", "fe80::/10", "::1/128")


@dataclass(frozen=True)
class HeuristicSettings:
    """What the `[heuristics]` section of maltrail.toml sets, with `enabled` for `[sensor]
    use_heuristics`. config/__init__.py's SCHEMA declares the same keys again (documents them,
    checks them, reads them from the file; engine/control_files.py builds this from it): neither
    package may import the other, so tests/test_heuristic_settings.py holds the two declarations
    to the same names, types and defaults."""

    enabled: bool = True                # [sensor] use_heuristics: the master switch
    # scans (sliding windows of packet time)
    scan_window_s: int = 30
    port_scan: bool = True
    port_scan_threshold: int = 10       # more than this many distinct ports from one source to one target
    udp_scan: bool = True
    udp_scan_threshold: int = 10
    udp_probe_max_bytes: int = 100      # larger datagrams are traffic (RTP, QUIC), not probes
    infection_scan: bool = True
    infection_scan_threshold: int = 32  # more than this many distinct hosts on one worm port
    infection_ports: tuple = INFECTION_PORTS
    web_scan: bool = True
    web_scan_threshold: int = 10        # more than this many distinct first path segments
    local_networks: tuple = LOCAL_NETWORKS
    # DNS
    nxdomain: bool = True
    nxdomain_threshold: int = 20        # more than this many NXDOMAIN answers per name / parent per hour
    dga: bool = True
    dga_entropy: float = 3.5
    dga_consonants: int = 9
    long_domain: bool = True
    long_domain_length: int = 24
    dns_exhaustion: bool = True
    dns_exhaustion_threshold: int = 1000
    dns_exhaustion_window_s: int = 60
    dns_answers: bool = True            # answers pointing at sinkhole / parking trails
    # HTTP
    user_agent: bool = True
    http_request: bool = True           # injection, traversal, RCE, XSS, XXE, config files, web shells...
    direct_download: bool = True
    iot_download: bool = True
    proxy_probe: bool = True
    missing_host: bool = False
    http_response: bool = True
    forwarded_for: bool = True
    # caps on state (per worker)
    max_scan_keys: int = 65536
    max_dns_domains: int = 16384
    max_dns_subdomains: int = 262144
    max_nxdomain_names: int = 65536
    _local: tuple = field(default=(), compare=False, repr=False)

    def on(self, name: str) -> bool:
        return self.enabled and bool(getattr(self, name))

    def networks(self) -> tuple:
        if not self._local:
            object.__setattr__(self, "_local", tuple(ipaddress.ip_network(n, strict=False)
                                                     for n in self.local_networks))
        return self._local

    def is_local(self, version: int, addr: int) -> bool:
        ip = ipaddress.IPv4Address(addr) if version == 4 else ipaddress.IPv6Address(addr)
        return any(ip in net for net in self.networks() if net.version == version)

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls) if not f.name.startswith("_")]


OFF = HeuristicSettings(enabled=False)
