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


def _prefix_length(text: str, bits_text: str, width: int) -> None:
    if not bits_text.isdigit():
        raise AddressError("%r is not a CIDR: the part after / must be a prefix length" % text)
    if int(bits_text) > width:
        raise AddressError("%r has a prefix length outside 0-%d" % (text, width))


def key_range(text: str) -> tuple[bytes, bytes]:
    """The closed key range (low, high) an address, CIDR (IPv4 or IPv6; host bits are ignored, as
    Maltrail masks a non-aligned 10.0.5.0/16 to its network) or `a-b` range covers. An a-b range
    may not mix IPv4 and IPv6 (the keys between the two families are no one's network). Raises
    AddressError with a message for a person."""
    text = text.strip()
    if "-" in text:
        first, _, last = text.partition("-")
        lo, hi = ip_key(first.strip()), ip_key(last.strip())
        if lo is None or hi is None:
            raise AddressError("%r is not an address range (write a-b with two addresses)" % text)
        if lo.startswith(_V4_MAPPED) != hi.startswith(_V4_MAPPED):
            raise AddressError("%r mixes IPv4 and IPv6; write one range per family" % text)
        if lo > hi:
            raise AddressError("%r runs backwards: the range ends before it starts; write the lower address first"
                               % text)
        return lo, hi
    if "/" in text:
        prefix, _, bits_text = text.partition("/")
        _prefix_length(text, bits_text.strip(), 32 if ":" not in prefix else 128)
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
        raise AddressError("%r is not an address (IPv4 or IPv6)" % text)
    return key, key


def key_text(key: bytes) -> str:
    """The address text of a 16-byte key: an IPv4-mapped key is written as IPv4."""
    if len(key) != KEY_BYTES:
        raise ValueError("a key is %d bytes, not %d" % (KEY_BYTES, len(key)))
    if key.startswith(_V4_MAPPED):
        return socket.inet_ntop(socket.AF_INET, key[12:])
    return socket.inet_ntop(socket.AF_INET6, key)


def merge_ranges(ranges) -> list[tuple[bytes, bytes]]:
    """Sorted, disjoint, non-adjacent closed key ranges covering `ranges` ((low, high) pairs)."""
    merged: list[list[bytes]] = []
    for lo, hi in sorted(ranges):
        if merged and int.from_bytes(lo, "big") <= int.from_bytes(merged[-1][1], "big") + 1:
            if hi > merged[-1][1]:
                merged[-1][1] = hi
        else:
            merged.append([lo, hi])
    return [(lo, hi) for lo, hi in merged]


def range_text(lo: bytes, hi: bytes) -> str:
    """A closed key range as the `a-b` text key_range reads back to the same range (every store
    backend takes this form, whatever form the range was first written in)."""
    return "%s-%s" % (key_text(lo), key_text(hi))
