"""Synthetic traffic: frame builders and a pcap writer, for the demo, the test corpus and benches.

Owns building well-formed frames byte by byte (Ethernet with optional VLAN tags, IPv4/IPv6,
TCP/UDP/ICMP with correct checksums) and the application payloads detection looks at (DNS
queries and answers, HTTP requests, TLS ClientHellos with a server name, QUIC v1/v2 client
Initials, encrypted as a real client would). Deterministic: the same arguments give the same
bytes, so generated corpora are reproducible from their generator and seed.

Must not know about trails, matching or events.
"""

from __future__ import annotations

import ipaddress
import struct

from workers.batch import LINKTYPE_ETHERNET

PCAP_MAGIC_US = 0xA1B2C3D4
PCAP_MAGIC_NS = 0xA1B23C4D

TCP_FIN, TCP_SYN, TCP_RST, TCP_PSH, TCP_ACK, TCP_URG = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20


class PcapWriter:
    """Classic pcap, little-endian, microsecond or nanosecond timestamps."""

    def __init__(self, path: str, linktype: int = LINKTYPE_ETHERNET, nanosecond: bool = False,
                 snaplen: int = 262144, piece_bytes: int = -1):
        # piece_bytes: what is gathered before each write(2) (-1: Python's default buffer)
        self._f = open(path, "wb", buffering=piece_bytes)
        self._ns = nanosecond
        self._snaplen = snaplen
        self.frames = 0
        self._f.write(struct.pack("<IHHiIII", PCAP_MAGIC_NS if nanosecond else PCAP_MAGIC_US, 2, 4, 0, 0,
                                  snaplen, linktype))

    def write(self, ts_ns: int, frame: bytes, wirelen: int | None = None) -> None:
        sec, frac = divmod(ts_ns, 1_000_000_000)
        if not self._ns:
            frac //= 1000
        data = frame[:self._snaplen]
        self._f.write(struct.pack("<IIII", sec, frac, len(data), wirelen or len(frame)))
        self._f.write(data)
        self.frames += 1

    def close(self) -> None:
        self._f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def internet_checksum(data: bytes) -> int:
    """RFC 1071: the one's complement of the one's complement sum of 16-bit words."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _addr(text: str) -> bytes:
    return ipaddress.ip_address(text).packed


def mac(text: str) -> bytes:
    return bytes(int(part, 16) for part in text.split(":"))


DEFAULT_SRC_MAC = mac("02:00:00:00:00:01")
DEFAULT_DST_MAC = mac("02:00:00:00:00:02")


def ether(payload: bytes, ethertype: int = 0x0800, vlans=(), src=DEFAULT_SRC_MAC, dst=DEFAULT_DST_MAC,
          tag_type: int = 0x8100) -> bytes:
    """Ethernet II; `vlans` are VLAN ids, outermost first (802.1ad uses tag_type 0x88a8 outside)."""
    out = dst + src
    for i, vid in enumerate(vlans):
        out += struct.pack("!HH", tag_type if i == 0 else 0x8100, vid & 0x0FFF)
    return out + struct.pack("!H", ethertype) + payload


def ipv4(src: str, dst: str, proto: int, payload: bytes, ttl: int = 64, ident: int = 0x1234,
         frag: int = 0, options: bytes = b"") -> bytes:
    ihl = 5 + len(options) // 4
    header = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, 20 + len(options) + len(payload), ident, frag, ttl,
                         proto, 0, _addr(src), _addr(dst)) + options
    csum = internet_checksum(header)
    return header[:10] + struct.pack("!H", csum) + header[12:] + payload


def ipv6(src: str, dst: str, next_header: int, payload: bytes, hop_limit: int = 64) -> bytes:
    return struct.pack("!IHBB16s16s", 0x60000000, len(payload), next_header, hop_limit, _addr(src), _addr(dst)) + payload


def _pseudo(src: str, dst: str, proto: int, length: int) -> bytes:
    s, d = _addr(src), _addr(dst)
    if len(s) == 4:
        return struct.pack("!4s4sBBH", s, d, 0, proto, length)
    return struct.pack("!16s16sIxxxB", s, d, length, proto)


def tcp(src: str, dst: str, sport: int, dport: int, flags: int = TCP_SYN, payload: bytes = b"",
        seq: int = 1, ack: int = 0, window: int = 65535) -> bytes:
    header = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, 5 << 4, flags, window, 0, 0)
    csum = internet_checksum(_pseudo(src, dst, 6, len(header) + len(payload)) + header + payload)
    return header[:16] + struct.pack("!H", csum) + header[18:] + payload


def udp(src: str, dst: str, sport: int, dport: int, payload: bytes) -> bytes:
    header = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0)
    csum = internet_checksum(_pseudo(src, dst, 17, 8 + len(payload)) + header + payload) or 0xFFFF
    return header[:6] + struct.pack("!H", csum) + payload


def icmp_echo(ident: int = 1, seq: int = 1, payload: bytes = b"ping", reply: bool = False, v6: bool = False,
              src: str = "", dst: str = "") -> bytes:
    kind = (129 if reply else 128) if v6 else (0 if reply else 8)
    body = struct.pack("!BBHHH", kind, 0, 0, ident, seq) + payload
    pseudo = _pseudo(src, dst, 58, len(body)) if v6 else b""
    csum = internet_checksum(pseudo + body)
    return body[:2] + struct.pack("!H", csum) + body[4:]


def ip_packet(src: str, dst: str, proto: int, l4: bytes, **kw) -> bytes:
    """IPv4 or IPv6 by the address family of `src`."""
    if ":" in src:
        return ipv6(src, dst, proto, l4)
    return ipv4(src, dst, proto, l4, **kw)


def ethertype_for(src: str) -> int:
    return 0x86DD if ":" in src else 0x0800


def tcp_frame(src, dst, sport, dport, flags=TCP_SYN, payload=b"", vlans=()) -> bytes:
    return ether(ip_packet(src, dst, 6, tcp(src, dst, sport, dport, flags, payload)), ethertype_for(src), vlans)


def udp_frame(src, dst, sport, dport, payload, vlans=()) -> bytes:
    return ether(ip_packet(src, dst, 17, udp(src, dst, sport, dport, payload)), ethertype_for(src), vlans)


def icmp_frame(src, dst, reply=False) -> bytes:
    v6 = ":" in src
    body = icmp_echo(reply=reply, v6=v6, src=src, dst=dst)
    return ether(ip_packet(src, dst, 58 if v6 else 1, body), ethertype_for(src))


# --- application payloads -------------------------------------------------------------------

def dns_name(name: str) -> bytes:
    out = b""
    for label in name.strip(".").split("."):
        raw = label.encode("idna") if label else b""
        out += bytes([len(raw)]) + raw
    return out + b"\0"


def dns_query(name: str, qtype: int = 1, ident: int = 0x1337, recursion: bool = True) -> bytes:
    flags = 0x0100 if recursion else 0
    return struct.pack("!HHHHHH", ident, flags, 1, 0, 0, 0) + dns_name(name) + struct.pack("!HH", qtype, 1)


def dns_response(name: str, addresses=(), rcode: int = 0, ident: int = 0x1337, qtype: int = 1) -> bytes:
    """A response with one question and A/AAAA answers pointing back at the question name."""
    flags = 0x8180 | rcode
    out = struct.pack("!HHHHHH", ident, flags, 1, len(addresses), 0, 0) + dns_name(name) + struct.pack("!HH", qtype, 1)
    for address in addresses:
        raw = _addr(address)
        out += struct.pack("!HHHIH", 0xC00C, 1 if len(raw) == 4 else 28, 1, 300, len(raw)) + raw
    return out


def http_request(method: str = "GET", target: str = "/", host: str | None = None, user_agent: str | None = None,
                 headers=(), body: bytes = b"") -> bytes:
    lines = ["%s %s HTTP/1.1" % (method, target)]
    if host is not None:
        lines.append("Host: %s" % host)
    if user_agent is not None:
        lines.append("User-Agent: %s" % user_agent)
    lines.extend("%s: %s" % kv for kv in headers)
    if body:
        lines.append("Content-Length: %d" % len(body))
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def client_hello(server_name: str | None, random_bytes: bytes = b"\x11" * 32) -> bytes:
    """A TLS 1.2/1.3-style ClientHello handshake message (type 1) with an SNI extension."""
    extensions = b""
    if server_name is not None:
        host = server_name.encode("ascii")
        entry = b"\x00" + struct.pack("!H", len(host)) + host
        sni = struct.pack("!H", len(entry)) + entry
        extensions += struct.pack("!HH", 0, len(sni)) + sni
    # supported_versions (TLS 1.3, 1.2) so the hello looks like a modern client's
    extensions += struct.pack("!HHB", 43, 5, 4) + b"\x03\x04\x03\x03"
    body = (b"\x03\x03" + random_bytes + b"\x00" + struct.pack("!H", 4) + b"\x13\x01\xc0\x2f"
            + b"\x01\x00" + struct.pack("!H", len(extensions)) + extensions)
    return b"\x01" + len(body).to_bytes(3, "big") + body


def tls_client_hello(server_name: str | None) -> bytes:
    hello = client_hello(server_name)
    return b"\x16\x03\x01" + struct.pack("!H", len(hello)) + hello


def varint(value: int) -> bytes:
    """QUIC variable-length integer (RFC 9000 section 16)."""
    if value < 1 << 6:
        return value.to_bytes(1, "big")
    if value < 1 << 14:
        return (value | 0x4000).to_bytes(2, "big")
    if value < 1 << 30:
        return (value | 0x80000000).to_bytes(4, "big")
    return (value | 0xC000000000000000).to_bytes(8, "big")


def crypto_frame(offset: int, data: bytes) -> bytes:
    return b"\x06" + varint(offset) + varint(len(data)) + data


def protect_initial(frames: bytes, dcid: bytes, version: int = 1, pn: int = 0, payload_bytes: int = 1162,
                    scid: bytes = b"", token: bytes = b"") -> bytes:
    """A client Initial carrying `frames` padded to `payload_bytes`, with a 4-byte packet number,
    protected as RFC 9001 section 5 prescribes (RFC 9369 for version 2). With the RFC's inputs it
    reproduces the RFCs' sample client Initials byte for byte (tests/test_quic.py checks)."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from workers.quic import initial_client_keys

    key, iv, hp = initial_client_keys(version, dcid)
    payload = frames + bytes(max(0, payload_bytes - len(frames)))
    initial_type = 0b00 if version == 1 else 0b01
    length = 4 + len(payload) + 16
    header = bytearray(bytes([0xC0 | (initial_type << 4) | 0x03]) + version.to_bytes(4, "big")
                       + bytes([len(dcid)]) + dcid + bytes([len(scid)]) + scid + varint(len(token)) + token
                       + (length | 0x4000).to_bytes(2, "big") + pn.to_bytes(4, "big"))
    nonce = (int.from_bytes(iv, "big") ^ pn).to_bytes(12, "big")
    sealed = AESGCM(key).encrypt(nonce, payload, bytes(header))
    mask = Cipher(algorithms.AES(hp), modes.ECB()).encryptor().update(sealed[:16])
    header[0] ^= mask[0] & 0x0F
    for i in range(4):
        header[-4 + i] ^= mask[1 + i]
    return bytes(header) + sealed


def quic_initial(server_name: str, dcid: bytes = b"\x83\x94\xc8\xf0\x3e\x51\x57\x08", version: int = 1,
                 pn: int = 0) -> bytes:
    """A 1200-byte client Initial (the minimum a client datagram must have) whose CRYPTO frame
    carries a ClientHello naming `server_name`."""
    header_bytes = 1 + 4 + 1 + len(dcid) + 1 + 1 + 2 + 4
    return protect_initial(crypto_frame(0, client_hello(server_name)), dcid, version, pn,
                           payload_bytes=1200 - header_bytes - 16)
