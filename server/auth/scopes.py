"""What a user may see: netfilter scopes and custom-trail masking.

Owns the netfilter grammar (Maltrail's fourth `USERS` field), the compiled `Scope` (its
`contains` for one address and the `store_scope` the event store applies inside its queries), and
`mask_custom` (Maltrail's `ENABLE_MASK_CUSTOM`). Every address form is parsed by
server/addresses.py (one parser for the store, the API's filters and the netfilter): this module
adds only the list syntax and Maltrail's words for "everything". Must not read files, know
sessions or HTTP, or run queries.

Netfilter grammar: items separated by commas, semicolons or whitespace; each item is an IPv4 or
IPv6 address, a CIDR (`10.0.0.0/8`, `2001:db8::/32`; host bits are ignored, as Maltrail masks a
non-aligned `10.0.5.0/16` to its network) or a range `a-b` of one family (inclusive, a <= b). An
IPv4-mapped IPv6 address (`::ffff:10.0.0.1`) is its IPv4 address. Empty means everything; so do
Maltrail's other spellings of "all": `*`, `::` and `0.0.0.0/0` written alone (Maltrail's server
knew only IPv4 and let such a user see every event; keeping that is what keeps an imported admin
line seeing IPv6 events too).
"""

from __future__ import annotations

import bisect
import re
from typing import Any, Iterable

from server.addresses import AddressError, ip_key, key_range, merge_ranges, range_text

__all__ = ["ScopeError", "Scope", "parse_netfilter", "mask_custom", "MASKED_REFERENCES", "EVERYTHING_WORDS"]

# Maltrail's ways of writing "no restriction" (core/httpd.py login: "", "*", "::", "0.0.0.0/0").
EVERYTHING_WORDS = ("", "*", "::", "0.0.0.0/0")
_SPLIT_RE = re.compile(r"[\s,;]+")
_ALLOWED = ("an IPv4 or IPv6 address, a CIDR (10.0.0.0/8, 2001:db8::/32) or a range a-b of one family; "
            "items separated by commas or spaces; empty for everything")


class ScopeError(ValueError):
    """A netfilter that cannot be compiled; the message names the item and says what is allowed."""


class Scope:
    """A compiled netfilter: the addresses a user may see.

    `everything` is True for an unrestricted user. `contains(ip_text)` answers for one address
    (text that is no address is outside every restricted scope). `store_scope` is the same set as
    the event store's `scope` argument: merged `a-b` ranges (every backend reads that form; empty
    for everything), so the store and `contains` can never disagree about an edge.
    """

    __slots__ = ("text", "everything", "_starts", "_ends", "store_scope")

    def __init__(self, text: str, everything: bool, ranges: list[tuple[bytes, bytes]]):
        self.text = text
        self.everything = everything
        self._starts = [lo for lo, _hi in ranges]
        self._ends = [hi for _lo, hi in ranges]
        self.store_scope: tuple[str, ...] = () if everything else tuple(range_text(lo, hi) for lo, hi in ranges)

    def __repr__(self) -> str:
        return "Scope(%r)" % ("everything" if self.everything else self.text)

    def contains(self, ip_text: str | None) -> bool:
        if self.everything:
            return True
        key = ip_key(ip_text)
        if key is None:
            return False
        i = bisect.bisect_right(self._starts, key) - 1
        return i >= 0 and key <= self._ends[i]

    def contains_any(self, ip_texts: Iterable[str]) -> bool:
        """An event is visible when any of its addresses is in scope (Maltrail shows a line
        when an address on it falls inside the user's networks)."""
        return self.everything or any(self.contains(ip) for ip in ip_texts)


def parse_netfilter(text: str) -> Scope:
    """Compile a netfilter (grammar in the module docstring); raises ScopeError naming the item."""
    stripped = text.strip()
    if stripped in EVERYTHING_WORDS:
        return Scope(stripped, True, [])
    ranges = []
    for item in _SPLIT_RE.split(stripped):
        if not item:
            continue
        try:
            ranges.append(key_range(item))
        except AddressError as exc:
            raise ScopeError("%s; allowed: %s" % (exc, _ALLOWED)) from None
    if not ranges:      # only separators: not "everything", and an empty store scope would mean that
        raise ScopeError("%r holds no item; allowed: %s" % (text, _ALLOWED))
    return Scope(stripped, False, merge_ranges(ranges))


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
