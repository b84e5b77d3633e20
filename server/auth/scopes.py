"""What a user may see: netfilter scopes, their SQL form, and custom-trail masking.

Owns the netfilter grammar (Maltrail's fourth `USERS` field), the compiled `Scope` with its fast
`contains`, the integer encoding of addresses the event store indexes (`address_key`), the SQL
condition that expresses a scope over those columns, and `mask_custom` (Maltrail's
`ENABLE_MASK_CUSTOM`). Must not read files, know sessions or HTTP, or run queries: the store
takes the SQL text, the API takes `contains` and `mask_custom`.

Netfilter grammar: items separated by commas, semicolons or whitespace; each item is an IPv4 or
IPv6 address, a CIDR (`10.0.0.0/8`, `2001:db8::/32`; host bits are ignored, as Maltrail masks a
non-aligned `10.0.5.0/16` to its network) or a range `a-b` of one family (inclusive, a <= b).
Empty means everything; so do Maltrail's other spellings of "all": `*`, `::` and `0.0.0.0/0`
written alone (Maltrail's server knew only IPv4 and let such a user see every event; keeping
that is what keeps an imported admin line seeing IPv6 events too).

Address columns (the convention the store follows): every address column `X` (`src_ip`,
`dst_ip`) is stored as two signed 64-bit integer columns `X_hi` and `X_lo`. The address is
taken as 128 bits, an IPv4 address in its IPv4-mapped form `::ffff:a.b.c.d`; `X_hi` is the top
64 bits and `X_lo` the bottom 64 bits, each minus 2**63 so it fits a signed 64-bit integer
(SQLite INTEGER, ClickHouse Int64) while keeping its order. (hi, lo) compared as a pair then
orders addresses numerically, IPv4 after `::ffff:0:0` and below every global IPv6 address, so
a range of addresses is a range of pairs and an index on (X_hi, X_lo) answers it.
`address_key(text)` gives the pair; `Scope.sql("src_ip")` gives the condition for one column.
"""

from __future__ import annotations

import bisect
import re
import socket
from typing import Any, Iterable, NamedTuple

__all__ = ["ScopeError", "Scope", "parse_netfilter", "address_key", "mask_custom", "MASKED_REFERENCES",
           "EVERYTHING_WORDS"]

_V4_MAPPED = 0xFFFF << 32
_BIAS = 1 << 63
_MASK64 = (1 << 64) - 1
_MAX_V4 = (1 << 32) - 1
_MAX_V6 = (1 << 128) - 1
# Maltrail's ways of writing "no restriction" (core/httpd.py login: "", "*", "::", "0.0.0.0/0").
EVERYTHING_WORDS = ("", "*", "::", "0.0.0.0/0")
_SPLIT_RE = re.compile(r"[\s,;]+")


def _lit(value: int) -> str:
    # -2**63 written as a literal is parsed as minus a number that does not fit 64 bits (a float
    # in SQLite, an error elsewhere); spelt as an expression it stays an integer everywhere.
    return "(%d - 1)" % (value + 1) if value == -_BIAS else "%d" % value


class ScopeError(ValueError):
    """A netfilter that cannot be compiled; the message names the item and says what is allowed."""


def _v4(text: str) -> int | None:
    try:
        return int.from_bytes(socket.inet_pton(socket.AF_INET, text), "big")
    except (OSError, ValueError):
        return None


def _v6(text: str) -> int | None:
    try:
        return int.from_bytes(socket.inet_pton(socket.AF_INET6, text), "big")
    except (OSError, ValueError):
        return None


def _address(text: str) -> tuple[int, int] | None:
    """(family 4 or 6, integer) of an address, an IPv4-mapped IPv6 address counted as IPv4."""
    if ":" in text:
        value = _v6(text.split("%", 1)[0])  # a zone index (fe80::1%eth0) names a link, not an address
        if value is None:
            return None
        if value >> 32 == 0xFFFF:
            return 4, value & _MAX_V4
        return 6, value
    value = _v4(text)
    return None if value is None else (4, value)


def address_key(text: str) -> tuple[int, int] | None:
    """The (X_hi, X_lo) pair the store keeps for the address `text` (see the module docstring);
    None when `text` is not an address."""
    parsed = _address(text.strip())
    if parsed is None:
        return None
    family, value = parsed
    wide = _V4_MAPPED | value if family == 4 else value
    return (wide >> 64) - _BIAS, (wide & _MASK64) - _BIAS


_ALLOWED = ("an IPv4 or IPv6 address, a CIDR (10.0.0.0/8, 2001:db8::/32) or a range a-b of one family; "
            "items separated by commas or spaces; empty for everything")


def _item_range(item: str) -> tuple[int, int, int]:
    """(family, first, last) of one netfilter item; raises ScopeError."""
    if "/" in item:
        prefix, _, bits_text = item.partition("/")
        parsed = _address(prefix)
        if parsed is None or not bits_text.isdigit():
            raise ScopeError("%r is not a CIDR; allowed: %s" % (item, _ALLOWED))
        family, value = parsed
        bits = int(bits_text)
        if ":" in prefix and family == 4:  # ::ffff:10.0.0.0/104 is an IPv4 CIDR written as IPv6
            bits -= 96
        width = 32 if family == 4 else 128
        if not 0 <= bits <= width:
            raise ScopeError("%r has a prefix length outside 0-%d; allowed: %s" % (item, width, _ALLOWED))
        host_bits = width - bits
        first = (value >> host_bits) << host_bits
        return family, first, first | ((1 << host_bits) - 1)
    if "-" in item:
        left, _, right = item.partition("-")
        a, b = _address(left.strip()), _address(right.strip())
        if a is None or b is None:
            raise ScopeError("%r is not a range of two addresses; allowed: %s" % (item, _ALLOWED))
        if a[0] != b[0]:
            raise ScopeError("%r mixes IPv4 and IPv6; write one range per family" % item)
        if a[1] > b[1]:
            raise ScopeError("%r runs backwards; write the lower address first" % item)
        return a[0], a[1], b[1]
    parsed = _address(item)
    if parsed is None:
        raise ScopeError("%r is not an address; allowed: %s" % (item, _ALLOWED))
    return parsed[0], parsed[1], parsed[1]


def _merge(ranges: list[tuple[int, int]]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Sorted, disjoint, non-adjacent (starts, ends) covering `ranges`."""
    starts: list[int] = []
    ends: list[int] = []
    for first, last in sorted(ranges):
        if ends and first <= ends[-1] + 1:
            ends[-1] = max(ends[-1], last)
        else:
            starts.append(first)
            ends.append(last)
    return tuple(starts), tuple(ends)


class _Ranges(NamedTuple):
    starts: tuple[int, ...]
    ends: tuple[int, ...]

    def holds(self, value: int) -> bool:
        i = bisect.bisect_right(self.starts, value) - 1
        return i >= 0 and value <= self.ends[i]


class Scope:
    """A compiled netfilter: the addresses a user may see.

    `everything` is True for an unrestricted user. `contains(ip_text)` answers for one address
    (an IPv4-mapped IPv6 address is its IPv4 address; text that is no address is outside every
    restricted scope). `sql(column)` is the same rule as SQL over the store's integer columns.
    """

    __slots__ = ("text", "everything", "_v4", "_v6")

    def __init__(self, text: str, everything: bool, v4: _Ranges, v6: _Ranges):
        self.text = text
        self.everything = everything
        self._v4 = v4
        self._v6 = v6

    def __repr__(self) -> str:
        return "Scope(%r)" % ("everything" if self.everything else self.text)

    def contains(self, ip_text: str) -> bool:
        if self.everything:
            return True
        parsed = _address(ip_text)
        if parsed is None:
            return False
        family, value = parsed
        return (self._v4 if family == 4 else self._v6).holds(value)

    def contains_any(self, ip_texts: Iterable[str]) -> bool:
        """An event is visible when any of its addresses is in scope (Maltrail shows a line
        when an address on it falls inside the user's networks)."""
        return self.everything or any(self.contains(ip) for ip in ip_texts)

    def pair_ranges(self) -> list[tuple[tuple[int, int], tuple[int, int]]]:
        """The scope as inclusive ranges of (hi, lo) column pairs, ascending."""
        out = []
        for family, ranges in ((4, self._v4), (6, self._v6)):
            for first, last in zip(ranges.starts, ranges.ends):
                if family == 4:
                    first, last = _V4_MAPPED | first, _V4_MAPPED | last
                out.append((((first >> 64) - _BIAS, (first & _MASK64) - _BIAS),
                            ((last >> 64) - _BIAS, (last & _MASK64) - _BIAS)))
        return sorted(out)

    def sql(self, column: str) -> str:
        """A boolean SQL condition: the address in `column`_hi/`column`_lo is in scope.

        Integer literals only (no parameters, so no limit on their number and the same text
        works in SQLite and ClickHouse); "1 = 1" for everything and "1 = 0" for a scope that
        holds nothing. `column` must be a plain identifier.
        """
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", column):
            raise ValueError("not a column name: %r" % column)
        if self.everything:
            return "1 = 1"
        hi, lo = column + "_hi", column + "_lo"
        terms = []
        for (ah, al), (bh, bl) in self.pair_ranges():
            if ah == bh:
                ah, al, bl = _lit(ah), _lit(al), _lit(bl)
                if al == bl:
                    terms.append("(%s = %s AND %s = %s)" % (hi, ah, lo, al))
                else:
                    terms.append("(%s = %s AND %s BETWEEN %s AND %s)" % (hi, ah, lo, al, bl))
            else:
                ah, al, bh, bl = _lit(ah), _lit(al), _lit(bh), _lit(bl)
                terms.append("((%s > %s AND %s < %s) OR (%s = %s AND %s >= %s) OR (%s = %s AND %s <= %s))"
                             % (hi, ah, hi, bh, hi, ah, lo, al, hi, bh, lo, bl))
        return "(" + " OR ".join(terms) + ")" if terms else "1 = 0"

    def sql_any(self, columns: Iterable[str] = ("src_ip", "dst_ip")) -> str:
        """The event-visibility condition: any of `columns` in scope."""
        if self.everything:
            return "1 = 1"
        return "(" + " OR ".join(self.sql(c) for c in columns) + ")"


def parse_netfilter(text: str) -> Scope:
    """Compile a netfilter (grammar in the module docstring); raises ScopeError naming the item."""
    stripped = text.strip()
    if stripped in EVERYTHING_WORDS:
        return Scope(stripped, True, _Ranges((), ()), _Ranges((), ()))
    v4: list[tuple[int, int]] = []
    v6: list[tuple[int, int]] = []
    for item in _SPLIT_RE.split(stripped):
        if not item:
            continue
        family, first, last = _item_range(item)
        (v4 if family == 4 else v6).append((first, last))
    return Scope(stripped, False, _Ranges(*_merge(v4)), _Ranges(*_merge(v6)))


# References whose info names a trail list the operator keeps to themselves: their own
# (custom_trails_dir) and the ones fetched from their custom_trails_url lists.
MASKED_REFERENCES = ("(custom)", "(remote custom)")


def mask_custom(event: Any) -> Any:
    """The event as a user with uid >= 1000 sees it under Maltrail's ENABLE_MASK_CUSTOM: when its
    reference is a custom list, the info (where the list's own name for the threat appears) is
    replaced by "-". The trail is left alone: it is the address or domain seen on the wire, not
    the secret (Maltrail's core/logfmt.py redact_json keys on the reference and blanks info alone).

    Takes an events.record.Event (or any namedtuple with info/reference) or a dict with those
    keys; returns a new object, never changes the one given.
    """
    if isinstance(event, dict):
        if event.get("reference") in MASKED_REFERENCES and event.get("info") != "-":
            return {**event, "info": "-"}
        return event
    if getattr(event, "reference", None) in MASKED_REFERENCES and event.info != "-":
        return event._replace(info="-")
    return event
