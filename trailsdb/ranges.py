"""Address ranges a feed's trail may not point into: bogons and CDNs.

Owns two lists and the set they are looked up in. Bogons are this project's own list of public
facts: the blocks IANA's special-purpose address registries (RFC 6890 and its updates) mark as not
globally reachable, plus multicast and the reserved 240.0.0.0/4; an address there is no internet
host, so a feed listing it is wrong (a parser that read a private address out of a page, a
sinkhole's documentation example). CDN ranges are the edge networks that serve millions of
unrelated sites from shared addresses: a feed listing one would flag everybody's traffic to every
site behind it. CDNs publish their ranges, and they change; they are fetched at run time from the
lists declared in CDN_RANGE_LISTS (nothing of theirs is committed) and read with `parse_ranges`.
Maltrail drops feed trails in both (core/update.py, with misc/bogon_ranges.txt and
misc/cdn_ranges.txt), except trails labelled as sinkholes or parked domains, which exist to be
matched there.

Must not know about sources, merging or the artifact: it answers "which range holds this address".
"""

from __future__ import annotations

import ipaddress
import json
from bisect import bisect_right
from typing import Iterable, NamedTuple

# IANA IPv4 Special-Purpose Address Registry entries that are not globally reachable, the IPv4
# multicast space (IANA IPv4 Multicast Address Space Registry) and the reserved and limited
# broadcast blocks; with what each is, for the build report.
BOGONS_V4 = (
    ("0.0.0.0/8", "this network (RFC 791)"),
    ("10.0.0.0/8", "private use (RFC 1918)"),
    ("100.64.0.0/10", "shared address space (RFC 6598)"),
    ("127.0.0.0/8", "loopback (RFC 1122)"),
    ("169.254.0.0/16", "link local (RFC 3927)"),
    ("172.16.0.0/12", "private use (RFC 1918)"),
    ("192.0.0.0/24", "IETF protocol assignments (RFC 6890)"),
    ("192.0.2.0/24", "documentation, TEST-NET-1 (RFC 5737)"),
    ("192.88.99.0/24", "deprecated 6to4 relay anycast (RFC 7526)"),
    ("192.168.0.0/16", "private use (RFC 1918)"),
    ("198.18.0.0/15", "benchmarking (RFC 2544)"),
    ("198.51.100.0/24", "documentation, TEST-NET-2 (RFC 5737)"),
    ("203.0.113.0/24", "documentation, TEST-NET-3 (RFC 5737)"),
    ("224.0.0.0/4", "multicast (RFC 5771)"),
    ("240.0.0.0/4", "reserved (RFC 1112)"),
    ("255.255.255.255/32", "limited broadcast (RFC 919)"),
)
# IANA IPv6 Special-Purpose Address Registry entries that are not globally reachable, and the
# multicast space.
BOGONS_V6 = (
    ("::/128", "unspecified address (RFC 4291)"),
    ("::1/128", "loopback (RFC 4291)"),
    ("::ffff:0:0/96", "IPv4-mapped addresses (RFC 4291)"),
    ("64:ff9b:1::/48", "local-use IPv4/IPv6 translation (RFC 8215)"),
    ("100::/64", "discard-only (RFC 6666)"),
    ("2001:2::/48", "benchmarking (RFC 5180)"),
    ("2001:10::/28", "deprecated ORCHID (RFC 4843)"),
    ("2001:db8::/32", "documentation (RFC 3849)"),
    ("3fff::/20", "documentation (RFC 9637)"),
    ("5f00::/16", "segment routing SIDs (RFC 9602)"),
    ("fc00::/7", "unique local (RFC 4193)"),
    ("fe80::/10", "link-local unicast (RFC 4291)"),
    ("ff00::/8", "multicast (RFC 4291)"),
)


class RangeList(NamedTuple):
    """A CDN's published list of its address ranges: where it is, and how to read it."""
    name: str
    url: str
    format: str      # "lines": one range per line; "json": `fields` name the JSON paths to read
    fields: tuple = ()


# The CDNs of Maltrail's misc/cdn_ranges.txt that publish their ranges in a machine-readable list
# (facts: each URL is where that CDN says its ranges are). JSON paths: "key" is a list of ranges,
# "key[].field" a list of objects whose `field` is a range, "key[].field=value" only objects whose
# `service` is value.
CDN_RANGE_LISTS = (
    RangeList("cloudflare-v4", "https://www.cloudflare.com/ips-v4", "lines"),
    RangeList("cloudflare-v6", "https://www.cloudflare.com/ips-v6", "lines"),
    RangeList("fastly", "https://api.fastly.com/public-ip-list", "json", ("addresses", "ipv6_addresses")),
    RangeList("cloudfront", "https://ip-ranges.amazonaws.com/ip-ranges.json", "json",
              ("prefixes[].ip_prefix=CLOUDFRONT", "ipv6_prefixes[].ipv6_prefix=CLOUDFRONT")),
    RangeList("cachefly", "https://cachefly.cachefly.net/ips/rproxy.txt", "lines"),
)


class RangeError(ValueError):
    """A range list that cannot be read; the message says where."""


def parse_ranges(body: bytes, fmt: str = "lines", fields: tuple = (), name: str = "ranges") -> list:
    """The networks a published range list holds (ipaddress networks, host bits cleared). "lines":
    one range or address per line, '#' comments, blank lines; "json": the `fields` paths of
    CDN_RANGE_LISTS. A line or value that is not a range is a RangeError naming `name` and where:
    a list that changed its format must be noticed, not half read."""
    if fmt == "lines":
        text = body.decode("utf-8", "replace")
        values = []
        for lineno, line in enumerate(text.splitlines(), 1):
            line = line.split("#", 1)[0].strip()
            if line:
                values.append(("%s:%d" % (name, lineno), line))
    elif fmt == "json":
        try:
            doc = json.loads(body)
        except ValueError as exc:
            raise RangeError("%s: not JSON: %s" % (name, exc)) from None
        values = []
        for path in fields:
            values.extend(("%s %s" % (name, path), v) for v in _json_values(doc, path, name))
    else:
        raise RangeError("%s: unknown range list format %r" % (name, fmt))
    networks = []
    for where, value in values:
        try:
            networks.append(ipaddress.ip_network(str(value), strict=False))
        except ValueError:
            raise RangeError("%s: %r is not an address range" % (where, value)) from None
    return networks


def _json_values(doc, path: str, name: str) -> list:
    key, _, rest = path.partition("[].")
    items = doc.get(key) if isinstance(doc, dict) else None
    if not isinstance(items, list):
        raise RangeError("%s: no list %r in the JSON" % (name, key))
    if not rest:
        return items
    field, _, service = rest.partition("=")
    return [item[field] for item in items
            if isinstance(item, dict) and field in item and (not service or item.get("service") == service)]


class RangeSet:
    """Address ranges, each with a label, looked up by address: a sorted list of disjoint
    intervals per IP version, bisected (a few thousand ranges; one lookup per feed address)."""

    def __init__(self, ranges: Iterable = ()):
        spans = {4: [], 6: []}
        for item in ranges:
            net, label = item if isinstance(item, tuple) else (item, "")
            net = ipaddress.ip_network(net, strict=False) if isinstance(net, str) else net
            spans[net.version].append((int(net.network_address), int(net.broadcast_address), label))
        self._starts, self._ends, self._labels = {}, {}, {}
        for version, items in spans.items():
            # Overlapping ranges merge into one, labelled as the one that starts first (of those
            # starting together, the widest): the label says why, not which of several lists.
            items.sort(key=lambda item: (item[0], -item[1]))
            merged = []
            for first, last, label in items:
                if merged and first <= merged[-1][1] + 1:
                    if last > merged[-1][1]:
                        merged[-1][1] = last
                else:
                    merged.append([first, last, label])
            self._starts[version] = [m[0] for m in merged]
            self._ends[version] = [m[1] for m in merged]
            self._labels[version] = [m[2] for m in merged]
        self.count = sum(len(v) for v in spans.values())

    def __bool__(self) -> bool:
        return self.count > 0

    def label(self, version: int, address: int) -> str | None:
        """The label of the range holding `address` ("" when the range had none), or None."""
        starts = self._starts[version]
        i = bisect_right(starts, address) - 1
        if i >= 0 and address <= self._ends[version][i]:
            return self._labels[version][i]
        return None


def bogon_ranges() -> RangeSet:
    return RangeSet([(net, label) for net, label in BOGONS_V4 + BOGONS_V6])
