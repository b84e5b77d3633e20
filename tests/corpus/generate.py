"""The project's own scenario corpus: one small capture per scenario, generated, never committed.

Each scenario is a function returning (linktype, [(ts_ns, frame), ...]) built with
engine/pcapgen.py; `write_corpus(dir)` writes every scenario as DIR/<name>.pcap (or .pcapng for
the mixed-link-type one). manifest.toml beside this file says, per scenario, exactly which events
must come out (Maltrail lines without the timestamp). Timestamps are pinned (2026-03-01 UTC plus
fixed steps); nothing depends on the wall clock.

Run `python tests/corpus/generate.py OUTDIR` to look at the captures with tcpdump/tshark.
"""

from __future__ import annotations

import os
import struct
import sys

from engine import pcapgen as g
from workers.batch import (
    LINKTYPE_ETHERNET, LINKTYPE_IPV4, LINKTYPE_LINUX_SLL, LINKTYPE_LINUX_SLL2, LINKTYPE_NULL, LINKTYPE_RAW,
)

T0 = 1_772_323_200 * 1_000_000_000  # 2026-03-01 00:00:00 UTC
CLIENT, CLIENT6, RESOLVER, SERVER = "10.0.0.1", "2001:db8:1::1", "10.0.0.53", "198.18.0.80"
SCENARIOS = {}


def scenario(fn):
    SCENARIOS[fn.__name__] = fn
    return fn


def _ts(frames, step_ms=10, linktype=LINKTYPE_ETHERNET):
    return linktype, [(T0 + i * step_ms * 1_000_000, f) for i, f in enumerate(frames)]


def _dns(name, sport=40000, qtype=1, src=CLIENT, dst=RESOLVER, vlans=()):
    return g.udp_frame(src, dst, sport, 53, g.dns_query(name, qtype), vlans=vlans)


def _http(payload, sport=40100, dst=SERVER, dport=80, src=CLIENT):
    return g.tcp_frame(src, dst, sport, dport, g.TCP_PSH | g.TCP_ACK, payload)


# --- DNS ---------------------------------------------------------------------------------------

@scenario
def dns_exact():
    return _ts([_dns("evil-exact.com")])


@scenario
def dns_parent():
    return _ts([_dns("www.evil-parent.net", 40001), _dns("a.b.evil-parent.net", 40002)])


@scenario
def dns_not_a_parent():
    """Label boundaries: notevil-parent.net is not under evil-parent.net."""
    return _ts([_dns("notevil-parent.net", 40003), _dns("evil-parent.net.example-cdn.org", 40004)])


@scenario
def dns_every_qtype():
    """AAAA, TXT, MX and HTTPS queries are checked too (Maltrail skips AAAA)."""
    return _ts([_dns("evil-exact.com", 40010 + i, qtype) for i, qtype in enumerate((28, 16, 15, 65))])


@scenario
def dns_regex():
    return _ts([_dns("c2123.regex-evil.com", 40020), _dns("c2.regex-evil.com", 40021)])


@scenario
def dns_over_tcp():
    q1, q2 = g.dns_query("evil-exact.com"), g.dns_query("clean-name.org", ident=2)
    payload = struct.pack("!H", len(q1)) + q1 + struct.pack("!H", len(q2)) + q2
    return _ts([g.tcp_frame(CLIENT, RESOLVER, 40030, 53, g.TCP_PSH | g.TCP_ACK, payload)])


@scenario
def dns_ignored_suffixes():
    return _ts([_dns("evil-exact.com.local", 40040), _dns("1.0.0.10.in-addr.arpa", 40041, 12),
                _dns("printer.lan", 40042)])


@scenario
def dns_answers_sinkhole_parking():
    return _ts([g.udp_frame(RESOLVER, CLIENT, 53, 40050, g.dns_response("victim-site.com", ["198.51.100.90"])),
                g.udp_frame(RESOLVER, CLIENT, 53, 40051, g.dns_response("parked-site.org", ["198.51.100.91"])),
                g.udp_frame(RESOLVER, CLIENT, 53, 40052, g.dns_response("fine-site.org", ["93.184.216.34"]))])


@scenario
def dns_to_listed_resolver():
    return _ts([g.udp_frame(CLIENT, "203.0.113.67", 40060, 53, g.dns_query("anything.org"))])


# --- HTTP --------------------------------------------------------------------------------------

@scenario
def http_host_trail():
    return _ts([_http(g.http_request("GET", "/", "www.host-evil.info", "Mozilla/5.0"))])


@scenario
def http_path_trail():
    return _ts([_http(g.http_request("GET", "/gate/panel.php?id=42", "innocent-blog.org", "Mozilla/5.0"))])


@scenario
def http_host_path_trail():
    return _ts([_http(g.http_request("GET", "/drop/payload", "files-evil.biz", "curl/8.0"), 40110)])


@scenario
def http_whole_host_trail():
    return _ts([_http(g.http_request("GET", "/anything/at/all.html", "whole-host-evil.biz", "curl/8.0"), 40120)])


@scenario
def http_param_trail():
    return _ts([_http(g.http_request("GET", "/track.php?uid=123&x=1", "ads-site.org", "Mozilla/5.0"), 40130)])


@scenario
def http_post_form_trail():
    return _ts([_http(g.http_request("POST", "/api/submit", "collector-site.org", "Mozilla/5.0",
                                     body=b"data=beacon"), 40140)])


@scenario
def http_proxy_absolute_uri():
    return _ts([_http(g.http_request("GET", "http://www.host-evil.info/gate/panel.php", "proxy.corp-net.org",
                                     "Mozilla/5.0"), 40150, "10.0.0.3", 3128)])


@scenario
def http_connect():
    return _ts([_http(g.http_request("CONNECT", "evil-exact.com:443", "evil-exact.com:443"), 40160, "10.0.0.3", 3128)])


@scenario
def http_user_agent_trail():
    return _ts([_http(g.http_request("GET", "/", "clean-site.org", "EvilBot/2.1 (compatible)"), 40170)])


@scenario
def http_listed_ip_with_host():
    return _ts([_http(g.http_request("GET", "/", "front.cdn-site.org", "Mozilla/5.0"), 40180, "203.0.113.70")])


@scenario
def http_on_odd_port():
    return _ts([_http(g.http_request("GET", "/gate/panel.php", "odd-port-site.org", "Mozilla/5.0"), 40190,
                      SERVER, 8081)])


# --- TLS and QUIC server names -------------------------------------------------------------------

@scenario
def tls_sni():
    return _ts([_http(g.tls_client_hello("login.tls-evil.org"), 40200, SERVER, 443),
                _http(g.tls_client_hello("clean-site.org"), 40201, SERVER, 443)])


@scenario
def tls_sni_ipv6_odd_port():
    return _ts([g.tcp_frame(CLIENT6, "2001:db8:2::80", 40210, 8443, g.TCP_PSH | g.TCP_ACK,
                            g.tls_client_hello("tls-evil.org"))])


@scenario
def quic_v1_sni():
    return _ts([g.udp_frame(CLIENT, SERVER, 40220, 443, g.quic_initial("quic-evil.org"))])


@scenario
def quic_v2_sni():
    return _ts([g.udp_frame(CLIENT, SERVER, 40230, 443, g.quic_initial("cdn.quic-evil.org", version=0x6B3343CF))])


# --- IP trails ---------------------------------------------------------------------------------

@scenario
def ip_tcp_handshake():
    """SYN, SYN-ACK, ACK and data of one flow: one event (client -> server), counted 4 times."""
    return _ts([g.tcp_frame(CLIENT, "203.0.113.66", 40300, 443, g.TCP_SYN),
                g.tcp_frame("203.0.113.66", CLIENT, 443, 40300, g.TCP_SYN | g.TCP_ACK),
                g.tcp_frame(CLIENT, "203.0.113.66", 40300, 443, g.TCP_ACK),
                g.tcp_frame(CLIENT, "203.0.113.66", 40300, 443, g.TCP_PSH | g.TCP_ACK, b"x" * 40)])


@scenario
def ip_midflow_reply_only():
    """Only the server's packets were captured (asymmetric span): still reported client -> server."""
    return _ts([g.tcp_frame("203.0.113.66", CLIENT, 443, 40310, g.TCP_PSH | g.TCP_ACK, b"y" * 40)])


@scenario
def ip_port_trail():
    return _ts([g.tcp_frame(CLIENT, "198.51.100.44", 40320, 8443, g.TCP_SYN),
                g.tcp_frame(CLIENT, "198.51.100.44", 40321, 8444, g.TCP_SYN)])


@scenario
def ip_cidr_trail():
    return _ts([g.tcp_frame("192.0.2.200", CLIENT, 51000, 22, g.TCP_SYN),
                g.tcp_frame("192.0.2.100", CLIENT, 51001, 22, g.TCP_SYN)])


@scenario
def ipv6_trails():
    return _ts([g.tcp_frame(CLIENT6, "2001:db8:bad::1", 40330, 80, g.TCP_SYN),
                g.tcp_frame(CLIENT6, "2001:db8:bad::2", 40331, 443, g.TCP_SYN),
                g.tcp_frame(CLIENT6, "2001:db8:bad::2", 40332, 444, g.TCP_SYN)])


@scenario
def icmp_echo():
    return _ts([g.icmp_frame(CLIENT, "203.0.113.66"), g.icmp_frame("203.0.113.66", CLIENT, reply=True)])


@scenario
def udp_to_malware():
    return _ts([g.udp_frame(CLIENT, "203.0.113.66", 40340, 4444, b"beacon")])


@scenario
def fp_rules():
    """Maltrail's false-positive rules: connecting to a listed attacker, a parking site off the web
    ports, and inbound TCP from a malware-listed client raise nothing; a parking site on 80 does."""
    return _ts([g.tcp_frame(CLIENT, "203.0.113.67", 40350, 443, g.TCP_SYN),
                g.tcp_frame(CLIENT, "203.0.113.68", 40351, 8080, g.TCP_SYN),
                g.tcp_frame("203.0.113.69", CLIENT, 51500, 22, g.TCP_SYN),
                g.tcp_frame(CLIENT, "203.0.113.68", 40352, 80, g.TCP_SYN)])


@scenario
def repeated_syns():
    """Eight identical SYNs: the first at once, the other seven condensed into one record."""
    return _ts([g.tcp_frame(CLIENT, "203.0.113.66", 40360, 443, g.TCP_SYN)] * 8, step_ms=500)


# --- link layers and IP options --------------------------------------------------------------------

def _ip_only(frame: bytes) -> bytes:
    return frame[14:]  # strip the Ethernet header pcapgen added


@scenario
def link_qinq():
    syn = g.ipv4(CLIENT, "203.0.113.66", 6, g.tcp(CLIENT, "203.0.113.66", 40400, 443))
    return _ts([g.ether(syn, vlans=(10, 20), tag_type=0x88A8),
                g.ether(g.ipv4(CLIENT, RESOLVER, 17, g.udp(CLIENT, RESOLVER, 40401, 53, g.dns_query("evil-exact.com"))),
                        vlans=(30, 40, 50))])


@scenario
def link_pppoe():
    ip = g.ipv4(CLIENT, "203.0.113.66", 6, g.tcp(CLIENT, "203.0.113.66", 40410, 443))
    pppoe = struct.pack("!BBHH", 0x11, 0, 0x1234, len(ip) + 2) + b"\x00\x21" + ip
    lcp = struct.pack("!BBHH", 0x11, 0, 0x1234, len(ip) + 2) + b"\xc0\x21" + ip  # LCP: not IP
    return _ts([g.ether(pppoe, 0x8864), g.ether(lcp, 0x8864)])


@scenario
def link_sll():
    ip = _ip_only(g.tcp_frame(CLIENT, "203.0.113.66", 40420, 443))
    header = struct.pack("!HHH8sH", 0, 1, 6, b"\x02\x00\x00\x00\x00\x01\x00\x00", 0x0800)
    return _ts([header + ip], linktype=LINKTYPE_LINUX_SLL)


@scenario
def link_sll2():
    ip = _ip_only(g.tcp_frame(CLIENT, "203.0.113.66", 40430, 443))
    header = struct.pack("!HHIHBB8s", 0x0800, 0, 2, 1, 0, 6, b"\x02\x00\x00\x00\x00\x01\x00\x00")
    return _ts([header + ip], linktype=LINKTYPE_LINUX_SLL2)


@scenario
def link_raw():
    return _ts([_ip_only(g.tcp_frame(CLIENT, "203.0.113.66", 40440, 443))], linktype=LINKTYPE_RAW)


@scenario
def link_ipv4_ipv6_dlt():
    return _ts([_ip_only(g.tcp_frame(CLIENT, "203.0.113.66", 40450, 443))], linktype=LINKTYPE_IPV4)


@scenario
def link_null_loopback():
    ip = _ip_only(g.tcp_frame(CLIENT, "203.0.113.66", 40460, 443))
    return _ts([struct.pack("<I", 2) + ip], linktype=LINKTYPE_NULL)


@scenario
def ipv4_options_and_fragments():
    l4 = g.tcp(CLIENT, "203.0.113.66", 40470, 443)
    with_options = g.ipv4(CLIENT, "203.0.113.66", 6, l4, options=b"\x01\x01\x01\x00" * 2)
    first = g.ipv4(CLIENT, "198.51.100.44", 6, g.tcp(CLIENT, "198.51.100.44", 40471, 8443), frag=0x2000)
    later = g.ipv4(CLIENT, "198.51.100.44", 6, b"\x00" * 16, frag=185)
    return _ts([g.ether(with_options), g.ether(first), g.ether(later)])


@scenario
def ipv6_extension_headers():
    tcp = g.tcp(CLIENT6, "2001:db8:bad::1", 40480, 443)
    hop = bytes([60, 0]) + b"\x01\x04\x00\x00\x00\x00"      # hop-by-hop -> destination options
    dst = bytes([44, 0]) + b"\x01\x04\x00\x00\x00\x00"      # destination options -> fragment
    frag = bytes([6, 0]) + struct.pack("!HI", 0, 7)          # fragment, offset 0 -> TCP
    return _ts([g.ether(g.ipv6(CLIENT6, "2001:db8:bad::1", 0, hop + dst + frag + tcp), 0x86DD)])


@scenario
def clean_traffic():
    frames = []
    for i in range(20):
        frames.append(_dns("www.clean%d.org" % i, 41000 + i))
        frames.append(g.tcp_frame(CLIENT, "93.184.216.%d" % (i + 1), 41000 + i, 443, g.TCP_SYN))
        frames.append(_http(g.tls_client_hello("www.clean%d.org" % i), 41000 + i, "93.184.216.%d" % (i + 1), 443))
    return _ts(frames)


# --- writing -----------------------------------------------------------------------------------

def write_pcapng_mixed(path: str) -> None:
    """Two interfaces with different link types (Ethernet and raw IPv4) in one pcapng section,
    which libpcap refuses to read and the native reader handles."""
    def block(kind, body):
        pad = (-len(body)) % 4
        total = 12 + len(body) + pad
        return struct.pack("<II", kind, total) + body + b"\0" * pad + struct.pack("<I", total)

    def epb(iface, ts_us, data):
        return block(6, struct.pack("<IIIII", iface, ts_us >> 32, ts_us & 0xFFFFFFFF, len(data), len(data)) + data)

    out = block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))
    out += block(1, struct.pack("<HHI", LINKTYPE_ETHERNET, 0, 262144))
    out += block(1, struct.pack("<HHI", LINKTYPE_IPV4, 0, 262144))
    ts = T0 // 1000
    out += epb(0, ts, _dns("evil-exact.com", 42000))
    out += epb(1, ts + 10_000, _ip_only(g.tcp_frame(CLIENT, "203.0.113.66", 42001, 443)))
    with open(path, "wb") as f:
        f.write(out)


def write_corpus(directory: str) -> dict[str, str]:
    """Writes every scenario; returns {name: path}."""
    os.makedirs(directory, exist_ok=True)
    paths = {}
    for name, fn in SCENARIOS.items():
        linktype, frames = fn()
        path = os.path.join(directory, name + ".pcap")
        with g.PcapWriter(path, linktype=linktype) as w:
            for ts, frame in frames:
                w.write(ts, frame)
        paths[name] = path
    path = os.path.join(directory, "pcapng_mixed_linktypes.pcapng")
    write_pcapng_mixed(path)
    paths["pcapng_mixed_linktypes"] = path
    return paths


if __name__ == "__main__":
    for name, path in write_corpus(sys.argv[1] if len(sys.argv) > 1 else "corpus-out").items():
        print(path)
