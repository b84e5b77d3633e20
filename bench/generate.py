"""Benchmark traffic: the `mix` and `hard` pcaps, deterministic from a seed.

Run `python -m bench.generate mix|hard --packets N --seed S -o PATH` (see bench/README.md).

- `mix` is Maltrail's benchmark mix: a round of 100 template packets repeated in order (60 TLS
  application-data segments, 15 SYNs to port 443, 10 DNS A queries, 10 HTTP GETs, 5 ICMP echo
  requests / mDNS queries), timestamps 1 ms apart (1 s per 1000 packets). Nothing in it is a
  trail: it measures the cost of judging ordinary traffic.
- `hard` has the same protocol shares but nothing repeats (unique DNS names, HTTP hosts, paths
  and user agents, random public addresses and ports), ~50k packets/s, and up to 500 planted
  indicators picked with a seeded RNG from the trail set given with `--trails`. The ground truth
  goes beside the pcap as PATH.truth.json: one entry per planted packet with the flow, the event
  type and a substring the event's trail text must contain.

Every frame is laid out by engine/sources/synthetic.py: the `mix` templates are its frames as they are; for
`hard`, the application payloads come from its builders (dns_query, http_request) and the
Ethernet/IPv4/TCP/UDP/ICMP headers are packed here with the same layout and defaults as its
tcp_frame/udp_frame/icmp_frame (tests/test_bench.py checks byte for byte), because building
300,000 frames through its text-address, checksum-in-Python builders would take minutes.

Owns nothing the engine uses; imports the trail reader only to pick planted indicators.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import random
import re
import struct
import sys
import time
import zlib

from bench.trails import DEFAULT_TRAILS
from engine.sources import synthetic as g

T0_NS = 1_772_323_200 * 1_000_000_000  # 2026-03-01 00:00:00 UTC, as the test corpus
EXTRA_TRAILS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "extra_trails.csv")

# One round of the mix: (class, packets). The 5 % slot is shared by ICMP echo and mDNS, one
# after the other, so each is 2.5 % of the file.
ROUND = (("tls", 60), ("syn", 15), ("dns", 10), ("http", 10), ("icmp_mdns", 5))
ROUND_LEN = sum(n for _, n in ROUND)
SLOT_CLASS = [cls for cls, n in ROUND for _ in range(n)]
HARD_STEP_NS = 20_000  # ~50k packets/s
MIX_STEP_NS = 1_000_000  # 1 s per 1000 packets

BROWSER_UA = ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
              "Chrome/124.0.0.0 Safari/537.36")
TLS_PAYLOAD = b"\x17" * 1400
# The pcaps are written in 4 MiB pieces. The replays read them from the page cache, and what a
# read() of it costs depends on how the cache holds the file: written in 8 KiB pieces on a
# machine whose memory has been in use, it sat in scattered 4 KiB pages, and the capture process
# alone spent 1.8x the CPU on the same bytes (82 against 45 ms for 300,000 `mix` packets;
# bench/README.md); in 4 MiB pieces it sits in large folios, as a capture file read from disk does.
WRITE_PIECE_BYTES = 4 << 20

# Planted indicators: category -> (share of 500, slot class it replaces, event type).
CATEGORIES = {
    "dns-exact": (70, "dns", "DNS"),
    "dns-parent": (70, "dns", "DNS"),
    "ip-syn-out": (60, "syn", "IP"),
    "ipport-syn-out": (60, "syn", "IPORT"),
    "ip-syn-in": (50, "syn", "IP"),
    "ip-udp": (50, "icmp_mdns", "IP"),
    "ip-icmp": (50, "icmp_mdns", "IP"),
    "url-host-path": (40, "http", "URL"),
    "url-path": (30, "http", "URL"),
    "ua": (20, "http", "UA"),
}
DEFAULT_PLANTED = sum(v[0] for v in CATEGORIES.values())  # 500

# --- frames -------------------------------------------------------------------------------------

_ETH4 = g.ether(b"")  # destination + source MAC + ethertype 0x0800, as pcapgen's ether()
_IP4 = struct.Struct("!BBHHHBBH4s4s")
_TCP = struct.Struct("!HHIIBBHHH")
_UDP = struct.Struct("!HHHH")
_ICMP = struct.Struct("!BBHHH")
_PSEUDO = struct.Struct("!4s4sBBH")
_IDENT, _TTL = 0x1234, 64  # pcapgen.ipv4's defaults


def _sum16(data: bytes) -> int:
    """The 16-bit ones' complement sum of `data` reduced mod 0xFFFF (2^16 = 1 mod 0xFFFF, so the
    big-endian integer of the bytes has the same residue as the sum of its 16-bit words)."""
    if len(data) & 1:
        data += b"\0"
    return int.from_bytes(data, "big") % 0xFFFF


def _fold(residue: int, nonzero: bool = True) -> int:
    """Checksum from a residue, the value pcapgen._checksum computes for the same bytes."""
    if residue:
        return 0xFFFF - residue
    return 0 if nonzero else 0xFFFF


def _ipv4(src: bytes, dst: bytes, proto: int, l4: bytes) -> bytes:
    header = _IP4.pack(0x45, 0, 20 + len(l4), _IDENT, 0, _TTL, proto, 0, src, dst)
    return _ETH4 + header[:10] + _fold(_sum16(header)).to_bytes(2, "big") + header[12:] + l4


def tcp4(src: bytes, dst: bytes, sport: int, dport: int, flags: int, payload: bytes = b"", seq: int = 1,
         ack: int = 0, payload_sum: int | None = None) -> bytes:
    """Ethernet + IPv4 + TCP as pcapgen.tcp_frame lays it out; addresses are 4 packed bytes.
    `payload_sum` is _sum16(payload) when the caller precomputed it (a payload sent many times)."""
    header = _TCP.pack(sport, dport, seq, ack, 5 << 4, flags, 65535, 0, 0)
    if payload_sum is None:
        payload_sum = _sum16(payload)
    residue = (_sum16(_PSEUDO.pack(src, dst, 0, 6, 20 + len(payload)) + header) + payload_sum) % 0xFFFF
    return _ipv4(src, dst, 6, header[:16] + _fold(residue).to_bytes(2, "big") + header[18:] + payload)


def udp4(src: bytes, dst: bytes, sport: int, dport: int, payload: bytes) -> bytes:
    header = _UDP.pack(sport, dport, 8 + len(payload), 0)
    csum = _fold(_sum16(_PSEUDO.pack(src, dst, 0, 17, 8 + len(payload)) + header + payload)) or 0xFFFF
    return _ipv4(src, dst, 17, header[:6] + csum.to_bytes(2, "big") + payload)


def icmp4(src: bytes, dst: bytes, ident: int = 1, seq: int = 1, payload: bytes = b"ping") -> bytes:
    body = _ICMP.pack(8, 0, 0, ident, seq) + payload
    return _ipv4(src, dst, 1, body[:2] + _fold(_sum16(body), any(body)).to_bytes(2, "big") + body[4:])


def _packed(text: str) -> bytes:
    return ipaddress.IPv4Address(text).packed


def _text(packed: bytes) -> str:
    return "%d.%d.%d.%d" % tuple(packed)


# --- mix ----------------------------------------------------------------------------------------

MIX_CLIENT, MIX_SERVER, MIX_WEB, MIX_RESOLVER = "192.168.1.10", "93.184.216.34", "93.184.216.80", "8.8.8.8"
MIX_PING, MIX_MDNS = "1.1.1.1", "224.0.0.251"


def mix_round(parity: int) -> list[bytes]:
    """The 100 frames of one round, built with pcapgen's frame builders. `parity` 0 puts ICMP
    first in the shared 5 % slot, 1 mDNS, so two rounds hold 5 of each."""
    frames = []
    for k in range(60):  # one TLS session's application data, client to server
        frames.append(g.ether(g.ipv4(MIX_CLIENT, MIX_SERVER, 6, g.tcp(
            MIX_CLIENT, MIX_SERVER, 50000, 443, g.TCP_ACK, TLS_PAYLOAD, seq=1 + 1400 * k, ack=1))))
    for k in range(15):
        frames.append(g.tcp_frame(MIX_CLIENT, MIX_SERVER, 50001 + k, 443, g.TCP_SYN))
    for i in range(10):
        frames.append(g.udp_frame(MIX_CLIENT, MIX_RESOLVER, 53000 + i, 53,
                                  g.dns_query("host%d.example.org" % i, ident=0x1000 + i)))
    for i in range(10):
        frames.append(g.tcp_frame(MIX_CLIENT, MIX_WEB, 51000 + i, 80, g.TCP_PSH | g.TCP_ACK,
                                  g.http_request("GET", "/index%d.html?id=%d" % (i, i), "www.example.org",
                                                 BROWSER_UA, headers=(("Accept", "*/*"),))))
    for k in range(5):
        if (k + parity) % 2 == 0:
            frames.append(g.icmp_frame(MIX_CLIENT, MIX_PING))
        else:
            frames.append(g.udp_frame(MIX_CLIENT, MIX_MDNS, 5353, 5353,
                                      g.dns_query("printer%d._ipp._tcp.local" % k, qtype=12, ident=0,
                                                  recursion=False)))
    assert len(frames) == ROUND_LEN
    return frames


def generate_mix(path: str, packets: int, seed: int, piece_bytes: int = WRITE_PIECE_BYTES) -> dict:
    """Templates repeated in order; `seed` only goes into the truth file (nothing is random)."""
    rounds = (mix_round(0), mix_round(1))
    with g.PcapWriter(path, piece_bytes=piece_bytes) as w:
        write = w.write
        for p in range(packets):
            write(T0_NS + p * MIX_STEP_NS, rounds[(p // ROUND_LEN) & 1][p % ROUND_LEN])
    truth = {"generator": "mix", "seed": seed, "packets": packets, "planted": 0, "entries": []}
    _write_truth(path, truth)
    return truth


# --- hard: background -----------------------------------------------------------------------------

_HEX2ALPHA = str.maketrans("0123456789abcdef", "ghijklmnopabcdef")
TLDS = ("com", "net", "org", "io", "de", "info", "co", "eu")
WORDS = ("cdn", "api", "img", "static", "mail", "shop", "news", "app", "media", "login", "files", "data")
EXTS = ("html", "php", "js", "css", "png", "jpg", "json", "aspx")


def _word(rng: random.Random, bits: int = 28) -> str:
    """A random lower-case word (hex digits mapped to letters)."""
    return format(rng.getrandbits(bits) | (1 << (bits - 1)), "x").translate(_HEX2ALPHA)


def _is_public(a: int) -> bool:
    first = a >> 24
    if first in (0, 10, 127) or first >= 224:
        return False
    second = (a >> 16) & 0xFF
    if first == 100 and 64 <= second < 128 or first == 169 and second == 254:
        return False
    if first == 172 and 16 <= second < 32 or first == 192 and second == 168:
        return False
    if first == 198 and second in (18, 19):
        return False
    top24 = a >> 8
    return top24 not in (0xC00000, 0xC00002, 0xC63364, 0xCB0071)  # 192.0.0, 192.0.2, 198.51.100, 203.0.113


def _public(rng: random.Random) -> bytes:
    while True:
        a = rng.getrandbits(32)
        if _is_public(a):
            return a.to_bytes(4, "big")


def _internal(rng: random.Random) -> bytes:
    """One of "our" hosts, 10.0.0.0/8 (a sensor's inside)."""
    return (0x0A000000 | rng.getrandbits(24) | 1).to_bytes(4, "big")


class HardTraffic:
    """Background packets for `hard`: every one unique."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.n = 0
        self.tls_sum = _sum16(TLS_PAYLOAD)
        self.mdns_src = _packed("192.168.0.0")

    def _ports(self) -> int:
        return 1024 + self.rng.getrandbits(16) % 64000

    def tls(self) -> bytes:
        r = self.rng
        return tcp4(_public(r), _public(r), self._ports(), 443, g.TCP_ACK, TLS_PAYLOAD, r.getrandbits(32),
                    r.getrandbits(32), payload_sum=self.tls_sum)

    def syn(self) -> bytes:
        r = self.rng
        return tcp4(_public(r), _public(r), self._ports(), 443, g.TCP_SYN, seq=r.getrandbits(32))

    def name(self) -> str:
        self.n += 1
        return "%s.%s%x.%s" % (_word(self.rng, 20), _word(self.rng), self.n, TLDS[self.n % len(TLDS)])

    def dns(self) -> bytes:
        r = self.rng
        return udp4(_public(r), _public(r), self._ports(), 53, g.dns_query(self.name(), ident=r.getrandbits(16)))

    def user_agent(self) -> str:
        r = self.rng
        return ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
                "Chrome/%d.0.%d.%d Safari/537.36 %s/%d" % (100 + r.getrandbits(5), r.getrandbits(13),
                                                           r.getrandbits(8), _word(r, 24).title(), self.n))

    def path(self) -> str:
        r = self.rng
        self.n += 1
        return "/%s/%s%x.%s?%s=%x" % (WORDS[r.getrandbits(8) % len(WORDS)], _word(r), self.n,
                                      EXTS[self.n % len(EXTS)], _word(r, 16), r.getrandbits(32))

    def http_payload(self, host: str, target: str, user_agent: str) -> bytes:
        return g.http_request("GET", target, host, user_agent, headers=(("Accept", "*/*"),))

    def http(self) -> bytes:
        r = self.rng
        payload = self.http_payload("www." + self.name(), self.path(), self.user_agent())
        return tcp4(_public(r), _public(r), self._ports(), 80, g.TCP_PSH | g.TCP_ACK, payload,
                    r.getrandbits(32), r.getrandbits(32))

    def icmp(self) -> bytes:
        r = self.rng
        return icmp4(_public(r), _public(r), r.getrandbits(16), r.getrandbits(16))

    def mdns(self) -> bytes:
        r = self.rng
        self.n += 1
        src = (0xC0A80000 | r.getrandbits(16) | 1).to_bytes(4, "big")
        return udp4(src, _packed(MIX_MDNS), 5353, 5353,
                    g.dns_query("%s-%x._ipp._tcp.local" % (_word(r), self.n), qtype=12, ident=0, recursion=False))


# --- hard: planted indicators ----------------------------------------------------------------------

# Checks the worker applies before a name reaches the domain matcher, and the matcher's
# exclusions (workers/pipeline.py, matchers/domains.py): a planted name must pass them all.
_NS_MX_PREFIX = re.compile(r"(?i)\A([rd]?ns|nf|mx|nic)\d*\.")
_VALID_NAME = re.compile(r"\A[a-z0-9_.-]*\.[a-z0-9_-]+\Z")
_NUMERIC_NAME = re.compile(r"\A[0-9.]+\Z")
_SAFE_URL = re.compile(r"\A[!$&'()*+,\-./0-9:;=?@A-Z_a-z~]+\Z")


POOL_FLOOR = 4096


def _select(key: str, seed: int, per_65536: int) -> bool:
    """A key-dependent, seeded sample: every row of a chosen key is seen, so merged labels are too."""
    return zlib.crc32(key.encode("utf-8", "surrogateescape"), seed & 0xFFFFFFFF) & 0xFFFF < per_65536


def read_pool(sources, seed: int) -> dict:
    """Candidate trails for planting, by kind: {kind: {key: set(info)}}, plus the sets the filters
    need (every path trail, every IPv4 that has an ip:port trail). From Maltrail trails.csv files
    (read and normalised as `trails build` does) or from a compiled artifact."""
    from matchers.artifact import (KIND_DOMAIN, KIND_IPPORT4, KIND_IPV4, KIND_PATH, KIND_UA, KIND_URL,
                                   MAGIC)
    rates = {KIND_DOMAIN: 2048, KIND_IPPORT4: 8192, KIND_IPV4: 65536, KIND_URL: 16384, KIND_PATH: 16384,
             KIND_UA: 65536}
    pool = {kind: {} for kind in rates}
    paths, ipport_ips = set(), set()

    def offer(kind, key, info):
        if kind == KIND_PATH:
            paths.add(key)
        elif kind == KIND_IPPORT4:
            ipport_ips.add(key.rsplit(":", 1)[0])
        rate = rates.get(kind)
        if rate is None:
            return
        chosen = pool[kind]
        # The first POOL_FLOOR keys of a kind are always kept, so a small trail set is used whole.
        if key in chosen or len(chosen) < POOL_FLOOR or rate >= 65536 or _select(key, seed, rate):
            chosen.setdefault(key, set()).add(info)

    for source in sources:
        with open(source, "rb") as f:
            is_artifact = f.read(len(MAGIC)) == MAGIC
        if is_artifact:
            from matchers import Artifact
            artifact = Artifact.open(source)
            try:
                for i in range(artifact.trail_count):
                    kind = artifact.kind(i)
                    if kind in rates:
                        offer(kind, artifact.key(i), artifact.meta_of(i)[0])
            finally:
                artifact.close()
            continue
        from collections import Counter

        from trailsdb.normalize import normalize_trail
        from trailsdb.sources import read_trails_csv
        for row in read_trails_csv(source, Counter()):
            kind, key = normalize_trail(row.trail, row.reference)
            if kind in rates:
                offer(kind, key, row.info)
    return {"by_kind": pool, "paths": paths, "ipport_ips": ipport_ips}


def _dns_name_ok(name: str) -> bool:
    from workers.pipeline import IGNORE_DNS_QUERY_SUFFIXES
    labels = name.split(".")
    return (len(name) <= 200 and all(0 < len(label) <= 63 for label in labels) and _VALID_NAME.match(name)
            and not _NUMERIC_NAME.match(name) and labels[-1] not in IGNORE_DNS_QUERY_SUFFIXES
            and ".intranet." not in name and "onion" not in name and not name.endswith("ip-adress.com")
            and not _NS_MX_PREFIX.match(name))


def _ip_ok(key: str, ipport_ips) -> bool:
    try:
        return ipaddress.IPv4Address(key).is_global and key not in ipport_ips
    except ValueError:
        return False


def _any(infos, words) -> bool:
    return any(word in info for info in infos for word in words)


def pick_indicators(pool: dict, counts: dict, rng: random.Random) -> dict:
    """{category: [(key, info)]}, avoiding what the engine's documented rules suppress (COMPATIBILITY.md,
    workers/pipeline.py): an outbound TCP connection to an "attacker", "scanner" or "parking site" IP, an
    inbound one from a "malware" IP, names the DNS path ignores or the domain matcher excludes
    (dynamic-DNS / free-hosting providers' own names, name servers under suspicious/sinkhole
    parents), and IPs that also have ip:port trails (the event would be IPORT)."""
    from matchers.artifact import KIND_DOMAIN, KIND_IPPORT4, KIND_IPV4, KIND_PATH, KIND_UA, KIND_URL
    by_kind, paths, ipport_ips = pool["by_kind"], pool["paths"], pool["ipport_ips"]

    def candidates(kind, ok):
        return sorted((key, sorted(infos)[0]) for key, infos in by_kind[kind].items() if ok(key, infos))

    def take(items, n):
        return rng.sample(items, min(n, len(items)))

    picked = {}
    domains = candidates(KIND_DOMAIN, lambda k, infos: _dns_name_ok(k) and not _any(infos, ("dynamic", "free web")))
    wanted = counts["dns-exact"] + counts["dns-parent"]
    chosen = take(domains, wanted)
    split = round(len(chosen) * counts["dns-exact"] / wanted) if wanted else 0  # a short pool is shared fairly
    picked["dns-exact"], picked["dns-parent"] = chosen[:split], chosen[split:]

    ips = candidates(KIND_IPV4, lambda k, infos: _ip_ok(k, ipport_ips))
    rng.shuffle(ips)
    used = set()
    for category, banned in (("ip-syn-out", ("attacker", "scanner", "parking")), ("ip-syn-in", ("malware",)),
                             ("ip-udp", ()), ("ip-icmp", ())):
        ok = [(k, i) for k, i in ips if k not in used and not (banned and _any((i,), banned))
              and not (banned and _any(by_kind[KIND_IPV4][k], banned))]
        picked[category] = ok[:counts[category]]
        used.update(k for k, _ in picked[category])

    def ipport_ok(key, infos):
        ip, _, port = key.rpartition(":")
        return (0 < int(port) < 65536 and ipaddress.IPv4Address(ip).is_global
                and not _any(infos, ("attacker", "scanner", "parking")))
    picked["ipport-syn-out"] = take(candidates(KIND_IPPORT4, ipport_ok), counts["ipport-syn-out"])

    def url_ok(key, infos):
        host, _, rest = key.partition("/")
        path = "/" + rest
        return (host and rest and not key.endswith("/") and len(key) <= 300 and _SAFE_URL.match(key)
                and not host.endswith(":80") and path not in paths and "//" not in key)
    picked["url-host-path"] = take(candidates(KIND_URL, url_ok), counts["url-host-path"])

    def path_ok(key, infos):
        return len(key) > 1 and not key.endswith("/") and len(key) <= 300 and _SAFE_URL.match(key) and "//" not in key
    picked["url-path"] = take(candidates(KIND_PATH, path_ok), counts["url-path"])

    uas = candidates(KIND_UA, lambda k, infos: _SAFE_URL.match(k.replace(" ", "")) and "(" not in k and ")" not in k)
    picked["ua"] = [uas[i % len(uas)] for i in range(counts["ua"])] if uas else []
    return picked


def _allocate(total: int) -> dict:
    """Category counts for `total` planted packets, in CATEGORIES' proportions (largest remainder)."""
    exact = {c: share * total / DEFAULT_PLANTED for c, (share, _, _) in CATEGORIES.items()}
    counts = {c: int(v) for c, v in exact.items()}
    for c in sorted(exact, key=lambda c: counts[c] - exact[c])[:total - sum(counts.values())]:
        counts[c] += 1
    return counts


class Planter:
    """One planted packet per indicator: the frame and its truth entry."""

    def __init__(self, rng: random.Random, traffic: HardTraffic):
        self.rng = rng
        self.traffic = traffic
        self.resolver = _packed("8.8.4.4")

    def _sport(self) -> int:
        return 49152 + self.rng.getrandbits(14)

    def plant(self, category: str, key: str, info: str):
        r, t = self.rng, self.traffic
        us = _internal(r)
        entry = {"category": category, "type": CATEGORIES[category][2], "key": key, "info": info}
        if category in ("dns-exact", "dns-parent"):
            name = key if category == "dns-exact" else "w%s.%s" % (_word(r, 20), key)
            sport = self._sport()
            frame = udp4(us, self.resolver, sport, 53, g.dns_query(name, ident=r.getrandbits(16)))
            flow = (us, sport, self.resolver, 53, "UDP")
            entry.update(query=name, trail=key)
        elif category in ("ip-syn-out", "ipport-syn-out"):
            if category == "ipport-syn-out":
                ip, _, port = key.rpartition(":")
                dport = int(port)
            else:
                ip, dport = key, (443, 80, 8080, 22, 25, 8443)[r.getrandbits(8) % 6]
            dst, sport = _packed(ip), self._sport()
            frame = tcp4(us, dst, sport, dport, g.TCP_SYN, seq=r.getrandbits(32))
            flow = (us, sport, dst, dport, "TCP")
            entry["trail"] = key
        elif category == "ip-syn-in":
            src, sport, dport = _packed(key), self._sport(), (22, 23, 445, 3389, 5900)[r.getrandbits(8) % 5]
            frame = tcp4(src, us, sport, dport, g.TCP_SYN, seq=r.getrandbits(32))
            flow = (src, sport, us, dport, "TCP")
            entry["trail"] = key
        elif category == "ip-udp":
            dst, sport, dport = _packed(key), self._sport(), (123, 1194, 4444, 5060, 9999)[r.getrandbits(8) % 5]
            frame = udp4(us, dst, sport, dport, b"\x01" + bytes(r.getrandbits(8) for _ in range(31)))
            flow = (us, sport, dst, dport, "UDP")
            entry["trail"] = key
        elif category == "ip-icmp":
            dst = _packed(key)
            frame = icmp4(us, dst, r.getrandbits(16), r.getrandbits(16))
            flow = (us, None, dst, None, "ICMP")
            entry["trail"] = key
        else:  # HTTP requests: host/path, path only, user agent
            if category == "url-host-path":
                host, _, rest = key.partition("/")
                target, ua = "/" + rest, t.user_agent()
            elif category == "url-path":
                host, target, ua = "www." + t.name(), key, t.user_agent()
            else:
                host, target = "www." + t.name(), t.path()
                ua = "%s%d.%d.%d#stable (https://%s.org)" % (key, 1 + r.getrandbits(2), r.getrandbits(4),
                                                             t.n, _word(r, 20))
            dst, sport = _public(r), self._sport()
            frame = tcp4(us, dst, sport, 80, g.TCP_PSH | g.TCP_ACK, t.http_payload(host, target, ua),
                         r.getrandbits(32), r.getrandbits(32))
            flow = (us, sport, dst, 80, "TCP")
            entry.update(trail=key, host=host, target=target, user_agent=ua)
        src, sport, dst, dport, proto = flow
        entry.update(src_ip=_text(src), src_port=sport, dst_ip=_text(dst), dst_port=dport, proto=proto)
        return frame, entry


def generate_hard(path: str, packets: int, seed: int, sources=(), planted: int = DEFAULT_PLANTED,
                  log=lambda message: None, piece_bytes: int = WRITE_PIECE_BYTES) -> dict:
    traffic_rng = random.Random("hard-traffic-%d" % seed)
    pick_rng = random.Random("hard-pick-%d" % seed)
    traffic = HardTraffic(traffic_rng)
    # Slot positions by class, so a planted packet replaces one of its own protocol's.
    slots = {}
    for p in range(packets):
        slots.setdefault(SLOT_CLASS[p % ROUND_LEN], []).append(p)
    counts = _allocate(planted)
    picked = {}
    if planted:
        start = time.perf_counter()
        pool = read_pool(sources, seed)
        log("read trail pool from %s in %.1f s" % (", ".join(sources), time.perf_counter() - start))
        picked = pick_indicators(pool, counts, pick_rng)
    plants, entries = {}, []
    planter = Planter(random.Random("hard-plant-%d" % seed), HardTraffic(random.Random("hard-plant-names-%d" % seed)))
    by_class = {}
    for category, items in picked.items():
        by_class.setdefault(CATEGORIES[category][1], []).extend((category, key, info) for key, info in items)
    for cls, items in sorted(by_class.items()):
        free = slots.get(cls, [])
        if len(items) > len(free):
            log("only %d %s slots for %d planted packets: planting %d" % (len(free), cls, len(items), len(free)))
            items = items[:len(free)]
        pick_rng.shuffle(items)  # categories sharing a slot class spread over the whole file
        for pos, (category, key, info) in zip(sorted(pick_rng.sample(free, len(items))), items):
            frame, entry = planter.plant(category, key, info)
            entry["index"] = pos
            plants[pos] = frame
            entries.append(entry)
    entries.sort(key=lambda e: e["index"])
    short = {c: n - sum(1 for e in entries if e["category"] == c) for c, n in counts.items()}
    for category, missing in short.items():
        if missing > 0:
            log("%s: %d fewer planted than asked (not enough usable trails of that kind)" % (category, missing))

    build = {"tls": traffic.tls, "syn": traffic.syn, "dns": traffic.dns, "http": traffic.http}
    icmp_mdns = (traffic.icmp, traffic.mdns)
    getrandbits = traffic_rng.getrandbits
    with g.PcapWriter(path, piece_bytes=piece_bytes) as w:
        write = w.write
        k = 0
        for p in range(packets):
            cls = SLOT_CLASS[p % ROUND_LEN]
            if cls == "icmp_mdns":
                maker = icmp_mdns[k & 1]
                k += 1
            else:
                maker = build[cls]
            frame = plants.get(p)
            if frame is None:
                frame = maker()
            write(T0_NS + p * HARD_STEP_NS + getrandbits(14), frame)  # jitter < 16.4 us < one step
    truth = {"generator": "hard", "seed": seed, "packets": packets, "trails": list(sources),
             "planted": len(entries), "by_category": {c: sum(1 for e in entries if e["category"] == c)
                                                      for c in CATEGORIES},
             "entries": entries}
    _write_truth(path, truth)
    return truth


def _write_truth(path: str, truth: dict) -> None:
    with open(path + ".truth.json", "w") as f:
        json.dump(truth, f, indent=1)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.generate", description=__doc__.split("\n\n")[0])
    p.add_argument("kind", choices=("mix", "hard"))
    p.add_argument("--packets", type=int, default=300000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("-o", "--output", required=True, metavar="PATH")
    p.add_argument("--trails", action="append", metavar="PATH",
                   help="hard: trail set(s) to plant indicators from, trails.csv or a compiled artifact "
                        "(repeatable; default %s; bench/extra_trails.csv is always added to CSV sources, as "
                        "the replay benchmark compiles it in)" % DEFAULT_TRAILS)
    p.add_argument("--planted", type=int, default=DEFAULT_PLANTED, help="hard: planted indicators (default 500)")
    p.add_argument("--piece-bytes", type=int, default=WRITE_PIECE_BYTES, metavar="N",
                   help="bytes gathered before each write (default %d; 8192 writes as Python's default buffer "
                        "does, which can leave the file in scattered 4 KiB pages of the page cache: see "
                        "bench/README.md)" % WRITE_PIECE_BYTES)
    args = p.parse_args(argv)
    if args.packets < 1:
        p.error("--packets must be at least 1")
    if args.piece_bytes < 1:
        p.error("--piece-bytes must be at least 1")
    log = lambda message: print("bench.generate: " + message, file=sys.stderr, flush=True)  # noqa: E731
    start = time.perf_counter()
    if args.kind == "mix":
        truth = generate_mix(args.output, args.packets, args.seed, args.piece_bytes)
    else:
        sources = list(args.trails or [DEFAULT_TRAILS])
        if args.planted:
            missing = [s for s in sources if not os.path.exists(s)]
            if missing:
                p.error("no such trail set: %s" % ", ".join(missing))
            with open(sources[0], "rb") as f:
                from matchers.artifact import MAGIC
                if f.read(len(MAGIC)) != MAGIC and EXTRA_TRAILS not in sources:
                    sources.append(EXTRA_TRAILS)
        truth = generate_hard(args.output, args.packets, args.seed, sources, args.planted, log, args.piece_bytes)
    log("%s: %d packets, %d planted, %.1f MB in %.1f s" % (args.output, args.packets, truth["planted"],
                                                           os.path.getsize(args.output) / 1e6,
                                                           time.perf_counter() - start))
    return 0


if __name__ == "__main__":
    sys.exit(main())
