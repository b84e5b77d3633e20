"""Addresses as the store indexes them: one sortable 16-byte key for IPv4 and IPv6 alike.

Owns the key (an IPv4 address is keyed as its IPv4-mapped IPv6 form ::ffff:a.b.c.d, so both
families sort in one space and a CIDR is one closed key range) and the parsing of the address
forms queries and netfilters use (a single address, a CIDR, an `a-b` range). Must not know about
events, SQL or HTTP.
"""

from __future__ import annotations

import ipaddress
import socket

KEY_BYTES = 16
_V4_MAPPED = b"\x00" * 10 + b"\xff\xff"
_CACHE_MAX = 65536
_cache: dict[str, bytes | None] = {}


def ip_key(text: str | None) -> bytes | None:
    """The 16-byte key of an IPv4 or IPv6 address in text form, or None if `text` is not one
    (a scope id such as fe80::1%eth0 is not an address here). Never raises."""
    if not text:
        return None
    found = _cache.get(text, False)
    if found is not False:
        return found
    try:
        key = _V4_MAPPED + socket.inet_pton(socket.AF_INET, text)
    except (OSError, ValueError, TypeError):
        try:
            key = socket.inet_pton(socket.AF_INET6, text)
        except (OSError, ValueError, TypeError):
            key = None
    if len(_cache) >= _CACHE_MAX:   # addresses repeat; a bounded memo, started afresh when full
        _cache.clear()
    _cache[text] = key
    return key


class AddressError(ValueError):
    """Text that is not an address, a CIDR or an a-b range; the message says which form it broke."""


def key_range(text: str) -> tuple[bytes, bytes]:
    """The closed key range (low, high) an address, CIDR (IPv4 or IPv6) or `a-b` range covers.
    Raises AddressError with a message for a person."""
    text = text.strip()
    if "-" in text:
        first, _, last = text.partition("-")
        lo, hi = ip_key(first.strip()), ip_key(last.strip())
        if lo is None or hi is None:
            raise AddressError("%r is not an address range (write a-b with two addresses)" % text)
        if lo > hi:
            raise AddressError("%r: the range ends before it starts" % text)
        return lo, hi
    if "/" in text:
        try:
            net = ipaddress.ip_network(text, strict=False)
        except ValueError as exc:
            raise AddressError("%r is not a CIDR: %s" % (text, exc)) from None
        lo, hi = net.network_address.packed, net.broadcast_address.packed
        if net.version == 4:
            lo, hi = _V4_MAPPED + lo, _V4_MAPPED + hi
        return lo, hi
    key = ip_key(text)
    if key is None:
        raise AddressError("%r is not an IPv4 or IPv6 address" % text)
    return key, key
