"""Domain trail matching with Maltrail's semantics.

Owns how a (normalised, lower-case) name is matched against domain trails: the name itself and
every parent at a label boundary, most specific first; Maltrail's special cases (the
`.ip-adress.com` relation, `.onion` gateways, wildcard/regex trails); and Maltrail's two
exclusions that keep well-known false positives out (name servers / mail exchangers under
"suspicious" or "sinkhole" trails; the bare or `www.` name of a dynamic-DNS or free-web-hosting
parent). A hit is (trail id, start, end): the part of the name the trail covers, which the
caller renders Maltrail's way, e.g. "(www).evil-parent.com".

Two interchangeable suffix tables answer "which keys are this name or its parents": the C hash
table over the mmap'd artifact, and a plain dict (the reference). Everything above that is
shared, so differential tests compare the tables.

Must not know about packets, protocols (DNS, HTTP, TLS all arrive as a name) or files.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from matchers import _native
from matchers.artifact import KIND_DOMAIN, KIND_REGEX, S_DOMAINS, S_REGEX, S_STRINGS, S_TRAILS
from matchers.regextrails import ReferenceRegexTrails, RegexTrails

# Maltrail: name servers and mail exchangers of a "suspicious"/"sinkhole" parent are not reported
# (e.g. ns2.<sinkholed-domain>): they answer for the domain, they are not the domain's traffic.
_NS_MX_PREFIX = re.compile(r"(?i)\A([rd]?ns|nf|mx|nic)\d*\.")
_IP_ADRESS_SUFFIX = ".ip-adress.com"

# A domain name as trails write it and the sensor sees it: labels of printable ASCII without space
# (0x21-0x7E), 1 to 63 characters each, at most 253 in all (255 octets on the wire: RFC 1035 2.3.4,
# 3.1). DNS itself carries any octet in a label (RFC 2181 section 11); hostnames keep to letters,
# digits and '-' (RFC 1123), but service labels ("_ldap._tcp") and DNS tunnels ("AAAA.=auth...")
# use the rest, and a trail must name what is queried. Left out: whitespace and control octets (a
# trail line holding them is a parsing accident, and an event line could not show them) and bytes
# above 0x7E (non-ASCII names are IDNA-encoded first).
MAX_NAME_CHARS = 253
MAX_LABEL_CHARS = 63
_DNS_NAME = re.compile(r"\A[!-~]{1,%d}\Z" % MAX_NAME_CHARS)


def is_dns_name(name: str) -> bool:
    """`name` can be a domain name in text form: see the rule above (case is not judged)."""
    return (_DNS_NAME.match(name) is not None
            and all(0 < len(label) <= MAX_LABEL_CHARS for label in name.split(".")))


class DomainHit(NamedTuple):
    trail_id: int
    start: int      # name[start:end] is what the trail matched
    end: int


def listed_with_parents(name: str, domains) -> bool:
    """The name or one of its parents at a label boundary is in `domains` (a set of names): how a
    domain whitelist covers subdomains, at build time (trailsdb) and at run time (workers)."""
    while name:
        if name in domains:
            return True
        dot = name.find(".")
        if dot < 0:
            return False
        name = name[dot + 1:]
    return False


def render_span(name: str, start: int, end: int) -> str:
    """Maltrail's trail text for a hit: the matched part bare, the rest of the name in parentheses,
    e.g. "(www).evil-parent.com", "badsite.onion(.to)", "evilname(.ip-adress.com)"."""
    trail = name[start:end]
    if start:
        trail = "(%s)%s" % (name[:start], trail)
    if end < len(name):
        trail = "%s(%s)" % (trail, name[end:])
    return trail.replace(".)", ").")


class NativeSuffixTable:
    """Suffix lookups in the artifact's domain hash table (C, zero copy)."""

    def __init__(self, artifact):
        self._table = _native.Table(artifact.section(S_DOMAINS), artifact.section(S_TRAILS),
                                    artifact.section(S_STRINGS))

    def suffixes(self, name: str) -> list[tuple[int, int]]:
        return self._table.suffixes(name.encode("ascii", "replace"))

    def find(self, name: str) -> int | None:
        trail_id = self._table.find(name.encode("ascii", "replace"))
        return trail_id if trail_id >= 0 else None


class ReferenceSuffixTable:
    """The same answers from a dict {domain: trail id}."""

    def __init__(self, domains: dict[str, int]):
        self._domains = domains

    def suffixes(self, name: str) -> list[tuple[int, int]]:
        out = []
        start = 0
        while True:
            trail_id = self._domains.get(name[start:])
            if trail_id is not None:
                out.append((trail_id, start))
            dot = name.find(".", start)
            if dot < 0:
                return out
            start = dot + 1

    def find(self, name: str) -> int | None:
        return self._domains.get(name)


class DomainMatcher:
    """Maltrail's `_check_domain` trail semantics over a suffix table and the regex trails.

    `regex` is a RegexTrails or ReferenceRegexTrails; `meta_of(trail_id) -> (info, reference)`
    supplies the labels the exclusions look at.
    """

    def __init__(self, table, regex, meta_of):
        self.table = table
        self._regex = regex
        self._meta_of = meta_of

    def match(self, name: str) -> DomainHit | None:
        """`name` must already be lower-case ASCII without a trailing dot or port."""
        if not name:
            return None
        if name.endswith(_IP_ADRESS_SUFFIX):
            # ip-adress.com serves "<anything>.ip-adress.com" pages about a host: the trail is
            # the host part, reported as "evilname(.ip-adress.com)".
            head = name[:-len(_IP_ADRESS_SUFFIX)]
            trail_id = self.table.find(head) if head else None
            if trail_id is not None:
                return DomainHit(trail_id, 0, len(head))
        for trail_id, start in self.table.suffixes(name):
            if self._excluded(name, trail_id, start):
                continue
            return DomainHit(trail_id, start, len(name))
        found = self._regex.search(name)
        if found is not None and found[2] > found[1]:
            return DomainHit(*found)
        onion = name.find(".onion.")
        if onion > 0:
            # Tor2web-style gateways: "<x>.onion.to" is the onion service "<x>.onion".
            head = name[:onion + len(".onion")]
            trail_id = self.table.find(head)
            if trail_id is not None:
                return DomainHit(trail_id, 0, len(head))
        return None

    def _excluded(self, name: str, trail_id: int, start: int) -> bool:
        info = self._meta_of(trail_id)[0]
        if ("suspicious" in info or "sinkhole" in info) and _NS_MX_PREFIX.search(name):
            return True
        if ("dynamic" in info or "free web" in info) and (start == 0 or name.startswith("www.")):
            # A dynamic-DNS provider's own site (or www of it) is not a customer's host.
            return True
        return False


def load_domain_matcher(artifact) -> DomainMatcher:
    regex = RegexTrails(artifact.pairs(S_REGEX))
    table = NativeSuffixTable(artifact) if artifact.has(S_DOMAINS) else ReferenceSuffixTable({})
    return DomainMatcher(table, regex, artifact.meta_of)


def reference_domain_matcher(trails, meta_of) -> DomainMatcher:
    """From (trail_id, kind, key) triples: dict suffix table, same regex handling."""
    domains: dict[str, int] = {}
    patterns = []
    for trail_id, kind, key in sorted(trails):
        if kind == KIND_DOMAIN:
            domains.setdefault(key, trail_id)
        elif kind == KIND_REGEX:
            patterns.append((trail_id, key))
    return DomainMatcher(ReferenceSuffixTable(domains), ReferenceRegexTrails(patterns), meta_of)
