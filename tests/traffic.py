"""Synthetic traffic for engine tests: many flows, with indicators of tests/corpus/trails.csv
spread through them at known places (so a test can tell which events a prefix must hold)."""

from __future__ import annotations

from engine.sources import synthetic as g

T0 = 1_772_323_200 * 1_000_000_000
STEP_NS = 20_000  # 50k frames per second of packet time


def frames(count: int, event_every: int = 97, start: int = 0):
    """(ts_ns, frame) pairs; every `event_every`-th frame is an indicator (a DNS query for a
    subdomain of a trail domain, from a port of its own), the rest ordinary traffic."""
    for i in range(start, count):
        ts = T0 + i * STEP_NS
        client = "10.%d.%d.%d" % (1 + i % 7, (i >> 8) & 255, 1 + i % 250)
        sport = 1024 + (i * 7919) % 60000
        if i % event_every == 0:
            yield ts, g.udp_frame(client, "10.0.0.53", sport, 53, g.dns_query("h%d.evil-parent.net" % i))
            continue
        kind = i % 5
        server = "198.18.%d.%d" % ((i >> 4) & 255, 1 + i % 200)
        if kind == 0:
            yield ts, g.udp_frame(client, "10.0.0.53", sport, 53, g.dns_query("www.site%d.org" % (i % 5000)))
        elif kind == 1:
            yield ts, g.tcp_frame(client, server, sport, 443, g.TCP_SYN)
        elif kind == 2:
            yield ts, g.tcp_frame(server, client, 443, sport, g.TCP_SYN | g.TCP_ACK)
        elif kind == 3:
            yield ts, g.tcp_frame(client, server, sport, 80, g.TCP_PSH | g.TCP_ACK,
                                  g.http_request("GET", "/p%d.html" % i, "www.site%d.org" % (i % 5000), "Mozilla/5.0"))
        else:
            yield ts, g.tcp_frame(client, server, sport, 443, g.TCP_PSH | g.TCP_ACK, b"\x17\x03\x03" + bytes(200))


def write(path, count: int, event_every: int = 97) -> str:
    with g.PcapWriter(str(path)) as w:
        for ts, frame in frames(count, event_every):
            w.write(ts, frame)
    return str(path)


def write_stream(handle, start: int, count: int, event_every: int = 97, header: bool = False) -> None:
    """Appends records (and, first, the file header) to an open binary stream such as a FIFO."""
    import struct
    if header:
        handle.write(struct.pack("<IHHiIII", g.PCAP_MAGIC_US, 2, 4, 0, 0, 262144, 1))
    for ts, frame in frames(start + count, event_every, start):
        sec, frac = divmod(ts, 1_000_000_000)
        handle.write(struct.pack("<IIII", sec, frac // 1000, len(frame), len(frame)) + frame)
    handle.flush()
