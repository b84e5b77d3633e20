"""Transport payloads out of capture files, decoded with dpkt: an oracle independent of
workers/decode.py for the parser tests (TLS, QUIC) that read real captures."""

from __future__ import annotations

import socket

import dpkt


def _ip_layer(linktype: int, frame: bytes):
    """IPv4/IPv6 packet of a frame for the link types the corpus uses, or None."""
    try:
        if linktype == dpkt.pcap.DLT_EN10MB:
            packet = dpkt.ethernet.Ethernet(frame).data
        elif linktype in (dpkt.pcap.DLT_NULL, dpkt.pcap.DLT_LOOP):
            # 4-byte address family in the capturing host's byte order, then the IP packet.
            raw = frame[4:]
            packet = dpkt.ip.IP(raw) if raw[:1] and raw[0] >> 4 == 4 else dpkt.ip6.IP6(raw)
        elif linktype in (12, 14, 101, 228, 229):  # DLT_RAW variants, LINKTYPE_IPV4/IPV6
            packet = dpkt.ip.IP(frame) if frame[0] >> 4 == 4 else dpkt.ip6.IP6(frame)
        else:
            return None
    except (dpkt.UnpackError, IndexError):
        return None
    return packet if isinstance(packet, (dpkt.ip.IP, dpkt.ip6.IP6)) else None


def transport_payloads(path, transport):
    """(ts, (src, sport, dst, dport), payload) of every non-empty TCP or UDP payload in a pcap."""
    out = []
    with open(path, "rb") as f:
        reader = dpkt.pcap.Reader(f)
        linktype = reader.datalink()
        frames = iter(reader)
        while True:
            try:
                ts, frame = next(frames)
            except StopIteration:
                break
            except dpkt.NeedData:
                break  # the file itself is cut short (some corpus files are, on purpose)
            ip = _ip_layer(linktype, frame)
            if ip is None or not isinstance(ip.data, transport):
                continue
            family = socket.AF_INET if isinstance(ip, dpkt.ip.IP) else socket.AF_INET6
            seg = ip.data
            if seg.data:
                key = (socket.inet_ntop(family, ip.src), seg.sport, socket.inet_ntop(family, ip.dst), seg.dport)
                out.append((ts, key, bytes(seg.data)))
    return out


def udp_datagrams(path):
    return transport_payloads(path, dpkt.udp.UDP)
