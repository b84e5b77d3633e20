"""IP trail matching: IPv4/IPv6 addresses, CIDR ranges and address:port pairs.

Owns the semantics: an exact address trail beats a range; among ranges the most specific prefix
wins (ties: the lower trail id); address:port trails are a separate question the caller asks.
`IPMatcher` answers from a compiled artifact (roaring bitmaps read in place for the fast "no",
sorted arrays for the id on the rare "yes"); `ReferenceIPMatcher` answers from dicts and
`ipaddress` networks. Both take addresses as ints and return a trail id or None.

Must not know about packets, directions or protocols.
"""

from __future__ import annotations

import ipaddress
from bisect import bisect_left

from matchers import _native
from matchers.artifact import (
    KIND_CIDR4, KIND_CIDR6, KIND_IPPORT4, KIND_IPPORT6, KIND_IPV4, KIND_IPV6,
    S_CIDR4, S_CIDR4_LIST, S_CIDR6_LIST, S_IP4, S_IP4_IDS, S_IP4_KEYS, S_IP6, S_IP6_IDS,
    S_IPPORT4, S_IPPORT4_IDS, S_IPPORT4_KEYS, S_IPPORT6, S_IPPORT6_IDS,
)

# ip:port keys put the port in the high 32 bits: ports repeat (443, 80, 8080...) while addresses
# do not, so the 64-bit roaring bitmap holds a few dense 32-bit bitmaps instead of one tiny
# bitmap per address.
def ipport4_key(addr: int, port: int) -> int:
    return (port << 32) | addr


def ipport6_key(addr: int, port: int) -> bytes:
    return addr.to_bytes(16, "big") + port.to_bytes(2, "big")


class IPMatcher:
    """Fast IP lookups over an artifact's sections (see matchers/artifact.py)."""

    def __init__(self, artifact):
        a = artifact
        self._ip4 = _native.RoaringView(a.section(S_IP4)) if a.has(S_IP4) else None
        self._ip4_keys = a.section(S_IP4_KEYS).cast("I") if a.has(S_IP4_KEYS) else None
        self._ip4_ids = a.ids(S_IP4_IDS) if a.has(S_IP4_IDS) else None
        self._cidr4 = _native.RoaringView(a.section(S_CIDR4)) if a.has(S_CIDR4) else None
        self._cidr4_by_prefix = _by_prefix(_unpack_cidr4(a.section(S_CIDR4_LIST)) if a.has(S_CIDR4_LIST) else [], 32)
        self._ipport4 = _native.RoaringView64(a.section(S_IPPORT4)) if a.has(S_IPPORT4) else None
        self._ipport4_keys = a.section(S_IPPORT4_KEYS).cast("Q") if a.has(S_IPPORT4_KEYS) else None
        self._ipport4_ids = a.ids(S_IPPORT4_IDS) if a.has(S_IPPORT4_IDS) else None
        # IPv6 trails are few (thousands): plain dicts built at load.
        self._ip6 = _dict_from_sorted(a, S_IP6, S_IP6_IDS, 16, lambda b: int.from_bytes(b, "big"))
        self._ipport6 = _dict_from_sorted(a, S_IPPORT6, S_IPPORT6_IDS, 18, bytes)
        self._cidr6_by_prefix = _by_prefix(_unpack_cidr6(a.section(S_CIDR6_LIST)) if a.has(S_CIDR6_LIST) else [], 128)

    def lookup_ip(self, version: int, addr: int) -> int | None:
        if version == 4:
            if self._ip4 is not None and addr in self._ip4:
                i = bisect_left(self._ip4_keys, addr)
                return self._ip4_ids[i]
            if self._cidr4 is not None and addr in self._cidr4:
                return _most_specific(self._cidr4_by_prefix, addr)
            return None
        trail_id = self._ip6.get(addr)
        if trail_id is not None:
            return trail_id
        return _most_specific(self._cidr6_by_prefix, addr)

    def lookup_ip_port(self, version: int, addr: int, port: int) -> int | None:
        if version == 4:
            if self._ipport4 is None:
                return None
            key = ipport4_key(addr, port)
            if key in self._ipport4:
                return self._ipport4_ids[bisect_left(self._ipport4_keys, key)]
            return None
        return self._ipport6.get(ipport6_key(addr, port))


def _by_prefix(ranges, bits: int) -> list[tuple[int, dict]]:
    """[(mask, {network: trail id})] longest prefix first; within a prefix the lowest id wins
    (the list comes sorted by prefix, then id)."""
    tables: dict[int, dict] = {}
    for first, _last, trail_id, prefix in ranges:
        tables.setdefault(prefix, {}).setdefault(first, trail_id)
    full = (1 << bits) - 1
    return [((full >> (bits - p)) << (bits - p) if p else 0, tables[p]) for p in sorted(tables, reverse=True)]


def _most_specific(by_prefix, addr: int) -> int | None:
    for mask, networks in by_prefix:
        trail_id = networks.get(addr & mask)
        if trail_id is not None:
            return trail_id
    return None


def _unpack_cidr4(view) -> list[tuple[int, int, int, int]]:
    v = view.cast("I")
    return [(v[i], v[i + 1], v[i + 2], v[i + 3]) for i in range(0, len(v), 4)]


def _unpack_cidr6(view) -> list[tuple[int, int, int, int]]:
    out = []
    raw = bytes(view)
    for i in range(0, len(raw), 40):
        first = int.from_bytes(raw[i:i + 16], "big")
        last = int.from_bytes(raw[i + 16:i + 32], "big")
        trail_id = int.from_bytes(raw[i + 32:i + 36], "little")
        prefix = int.from_bytes(raw[i + 36:i + 40], "little")
        out.append((first, last, trail_id, prefix))
    return out


def _dict_from_sorted(a, keys_name, ids_name, width, convert) -> dict:
    if not a.has(keys_name):
        return {}
    raw = bytes(a.section(keys_name))
    ids = a.ids(ids_name)
    return {convert(raw[i * width:(i + 1) * width]): ids[i] for i in range(len(ids))}


class ReferenceIPMatcher:
    """The same answers from plain Python structures, built from (trail_id, kind, key) triples."""

    def __init__(self, trails):
        self._exact = {4: {}, 6: {}}
        self._nets = {4: [], 6: []}
        self._ipport = {4: {}, 6: {}}
        for trail_id, kind, key in sorted(trails):
            if kind in (KIND_IPV4, KIND_IPV6):
                addr = ipaddress.ip_address(key)
                self._exact[addr.version].setdefault(int(addr), trail_id)
            elif kind in (KIND_CIDR4, KIND_CIDR6):
                net = ipaddress.ip_network(key, strict=False)
                self._nets[net.version].append((net, trail_id))
            elif kind in (KIND_IPPORT4, KIND_IPPORT6):
                host, port = parse_ipport(key)
                addr = ipaddress.ip_address(host)
                self._ipport[addr.version].setdefault((int(addr), port), trail_id)

    def lookup_ip(self, version: int, addr: int) -> int | None:
        trail_id = self._exact[version].get(addr)
        if trail_id is not None:
            return trail_id
        best = None
        ip = ipaddress.ip_address(addr) if version == 4 else ipaddress.IPv6Address(addr)
        for net, tid in self._nets[version]:
            if ip in net:
                if best is None or (net.prefixlen, -tid) > (best[0], -best[1]):
                    best = (net.prefixlen, tid)
        return best[1] if best else None

    def lookup_ip_port(self, version: int, addr: int, port: int) -> int | None:
        return self._ipport[version].get((addr, port))


def parse_ipport(key: str) -> tuple[str, int]:
    """'1.2.3.4:80' -> ('1.2.3.4', 80); '[dead::beef]:443' -> ('dead::beef', 443)."""
    if key.startswith("["):
        host, _, port = key[1:].partition("]:")
    else:
        host, _, port = key.rpartition(":")
    return host, int(port)
