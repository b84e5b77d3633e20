"""`maltrail-engine demo`: the real job on an embedded default, with no network and no root.

Owns the demo scenario: a small trail set written here (every trail shape the engine matches),
a capture generated here (ordinary traffic with those indicators in it: DNS, HTTP, TLS and QUIC
server names, IPv4/IPv6 addresses, a CIDR range, an ip:port, a user agent, a sinkhole answer,
stacked VLAN tags, and for the heuristics a port scan, an XSS attempt and a DGA-like NXDOMAIN),
then the same steps a user runs: `trails build`, `replay`, `tail`.

Must not contain detection logic: it only prepares inputs and calls the real commands.
"""

from __future__ import annotations

import csv
import os
import sys

from engine.sources import synthetic as g

START_NS = 1_767_225_600 * 1_000_000_000  # 2026-01-01 00:00:00 UTC

DEMO_TRAILS = [
    ("evil-demo.com", "demo dropper (malware)", "(demo)"),
    ("badcdn-demo.net", "demo c2 (malware)", "(demo)"),
    ("203.0.113.66", "demo c2 (malware)", "(demo)"),
    ("198.51.100.77:4444", "demo rat (malware)", "(demo)"),
    ("192.0.2.128/25", "demo scanner net (suspicious)", "(demo)"),
    ("2001:db8::66", "demo c2 (malware)", "(demo)"),
    ("/wp-login/gate.php", "demo panel (malware)", "(demo)"),
    ("shop.phish-demo.org/account/verify", "demo phishing (suspicious)", "(demo)"),
    ("ua:sqlmap/", "demo sqlmap (suspicious)", "(demo)"),
    ("198.51.100.90", "sinkhole demo (malware)", "(demo)"),
]


def demo_frames():
    """(ts_ns, frame) pairs: benign traffic with the demo indicators woven in."""
    client, client6, resolver = "10.1.2.3", "2001:db8:1::3", "10.1.0.53"
    frames = []
    t = START_NS

    def add(frame, step_ms=7):
        nonlocal t
        t += step_ms * 1_000_000
        frames.append((t, frame))

    for i in range(40):
        port = 40000 + i
        add(g.udp_frame(client, resolver, port, 53, g.dns_query("www.site%d.org" % i)))
        add(g.udp_frame(resolver, client, 53, port, g.dns_response("www.site%d.org" % i, ["93.184.216.%d" % (i + 1)])))
        add(g.tcp_frame(client, "93.184.216.%d" % (i + 1), port, 443, g.TCP_SYN))
        add(g.tcp_frame("93.184.216.%d" % (i + 1), client, 443, port, g.TCP_SYN | g.TCP_ACK))
        add(g.tcp_frame(client, "93.184.216.%d" % (i + 1), port, 443, g.TCP_PSH | g.TCP_ACK,
                        g.tls_client_hello("www.site%d.org" % i)))
        if i == 5:
            add(g.udp_frame(client, resolver, 41000, 53, g.dns_query("update.evil-demo.com")))
            add(g.udp_frame(resolver, client, 53, 41001, g.dns_response("cdn.old-demo.com", ["198.51.100.90"])))
        if i == 10:
            for _ in range(3):  # a retrying client: one record, count 3
                add(g.tcp_frame(client, "203.0.113.66", 41010, 443, g.TCP_SYN))
            add(g.tcp_frame("203.0.113.66", client, 443, 41010, g.TCP_SYN | g.TCP_ACK))
            add(g.udp_frame(client, "198.51.100.77", 41011, 4444, b"\x00hello"))
        if i == 15:
            add(g.tcp_frame(client, "198.18.0.10", 41015, 80, g.TCP_PSH | g.TCP_ACK,
                            g.http_request("GET", "/wp-login/gate.php?id=7", "blog.demo-site.org", "Mozilla/5.0")))
            add(g.tcp_frame(client, "198.18.0.11", 41016, 80, g.TCP_PSH | g.TCP_ACK,
                            g.http_request("GET", "/account/verify", "shop.phish-demo.org", "Mozilla/5.0")))
            add(g.tcp_frame(client, "198.18.0.12", 41017, 80, g.TCP_PSH | g.TCP_ACK,
                            g.http_request("GET", "/?id=1", "www.demo-site.org", "sqlmap/1.7.2#stable")))
        if i == 20:
            add(g.tcp_frame(client, "198.18.0.20", 41020, 443, g.TCP_PSH | g.TCP_ACK,
                            g.tls_client_hello("c2.badcdn-demo.net")))
            add(g.udp_frame(client, "198.18.0.21", 41021, 443, g.quic_initial("quic.badcdn-demo.net")))
        if i == 25:
            add(g.tcp_frame(client6, "2001:db8::66", 41025, 443, g.TCP_SYN))
            add(g.tcp_frame("192.0.2.200", client, 51515, 22, g.TCP_SYN))
            add(g.udp_frame(client, resolver, 41026, 53, g.dns_query("evil-demo.com"), vlans=(100, 200)))
        if i == 30:  # what only the heuristics see: a port scan, an attack request, a DGA-like name
            for k in range(12):
                add(g.tcp_frame("198.51.100.200", client, 52000 + k, 20 + k, g.TCP_SYN), step_ms=1)
            add(g.tcp_frame(client, "198.18.0.30", 41030, 80, g.TCP_PSH | g.TCP_ACK,
                            g.http_request("GET", "/search?q=<script>alert(1)</script>", "www.demo-site.org",
                                           "Mozilla/5.0")))
            add(g.udp_frame(resolver, client, 53, 41031, g.dns_response("xkqwzlvbnmfghjd.com", rcode=3)))
    return frames


def write_inputs(out: str) -> tuple[str, str]:
    os.makedirs(out, exist_ok=True)
    trails = os.path.join(out, "trails.csv")
    with open(trails, "w", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows(DEMO_TRAILS)
    pcap = os.path.join(out, "demo.pcap")
    with g.PcapWriter(pcap) as w:
        for ts, frame in demo_frames():
            w.write(ts, frame)
    return trails, pcap


def run_demo(out: str) -> int:
    from cli import main as cli  # the real commands, as a user types them

    trails, pcap = write_inputs(out)
    artifact = os.path.join(out, "trails.mtdb")
    log_dir = os.path.join(out, "log")
    if os.path.isdir(log_dir):  # a rerun starts from an empty log
        for name in os.listdir(log_dir):
            os.unlink(os.path.join(log_dir, name))
    steps = [
        ["trails", "build", "--source", trails, "-o", artifact],
        ["replay", "--trails", artifact, "--log-dir", log_dir, "--sensor-name", "demo", pcap],
        ["tail", "--log-dir", log_dir],
    ]
    for step in steps:
        sys.stdout.write("\n$ maltrail-engine %s\n" % " ".join(step))
        sys.stdout.flush()
        code = cli(step)
        sys.stdout.flush()
        sys.stderr.flush()
        if code:
            return code
    # The demo's artifact holds its ten made-up trails only; a sensor on real traffic needs real
    # ones, so the hint builds those first and never names the demo's artifact.
    sys.stdout.write("\nInputs, artifact and log are in %s/ (the artifact holds the demo's %d made-up trails "
                     "only).\nOn a real span port, get real trails first (Maltrail's public feeds; add a Maltrail\n"
                     "checkout to [all] trail_sources for its static trails), then capture:\n"
                     "  sudo maltrail-engine trails update\n"
                     "  sudo maltrail-engine check-config -i eth1 && sudo maltrail-engine -i eth1\n"
                     % (out, len(DEMO_TRAILS)))
    return 0
