"""DNS heuristics: NXDOMAIN floods, DGA-like names, long names, DNS exhaustion.

Owns the judgement and the state:

- NXDOMAIN floods: answers with "no such name" are counted per name and per parent domain (the
  registered domain dispatch uses, workers/dns.py) in hours of packet time; more than
  `nxdomain_threshold` in one hour is an event, and that counter starts again. The parent's event
  lists the names it counted (sorted, at most MAX_LISTED_NAMES).
- DGA-like names: an NXDOMAIN for a registered domain itself (no subdomain) whose first label has
  Shannon entropy above `dga_entropy` bits per character, or more than `dga_consonants` consonants.
- Long names: a query whose first label is longer than `long_domain_length` and has no hyphen.
- DNS exhaustion (tunnels, random-subdomain floods): the distinct subdomains queried under one
  registered domain in a window of `dns_exhaustion_window_s` that starts with the first of them;
  every new subdomain beyond `dns_exhaustion_threshold` is reported. Numeric first labels (DNSBL
  and reverse lookups) are not counted.

Only names made of letters, digits, '-', '_' and dots are judged (what the C scan can decide the
same way). State is bounded: LRU on names and domains, a global budget on stored subdomains, and
counters of what eviction cost.

Must not build events (workers/pipeline.py does).
"""

from __future__ import annotations

import math
import re
from collections import OrderedDict

from workers.dns import registered_domain

MAX_LISTED_NAMES = 64
CONSONANTS = frozenset("bcdfghjklmnpqrstvwxyz")
# First labels Windows and directory clients look up under every search domain: never a flood.
LOCAL_LOOKUPS = ("wpad", "autodiscover", "_ldap")
_JUDGED_NAME = re.compile(r"\A[a-z0-9_-]+(?:\.[a-z0-9_-]+)+\Z")
_NUMERIC_LABEL = re.compile(r"\A(?:\d+|\d+-\d+-\d+-\d+)\Z")

INFO_NXDOMAIN = "excessive no such domain (suspicious)"
INFO_ENTROPY = "entropy threshold no such domain (suspicious)"
INFO_CONSONANTS = "consonant threshold no such domain (suspicious)"
INFO_LONG = "long domain (suspicious)"
INFO_EXHAUSTION = "potential dns exhaustion (suspicious)"


def judged(name: str) -> bool:
    return _JUDGED_NAME.match(name) is not None


def subdomain_of(name: str) -> tuple[str, str]:
    """(subdomain, registered domain); the subdomain is "" for a registered domain itself."""
    parent = registered_domain(name)
    return (name[:-len(parent) - 1] if len(name) > len(parent) else ""), parent


def entropy_bits(label: str) -> float:
    n = len(label)
    return -sum(c / n * math.log2(c / n) for c in (label.count(ch) for ch in set(label)))


def dga_info(name: str, settings) -> str | None:
    """The DGA verdict for an NXDOMAIN name, or None."""
    sub, _ = subdomain_of(name)
    if sub:
        return None
    label = name.split(".", 1)[0]
    if not label or "-" in label:
        return None
    if entropy_bits(label) > settings.dga_entropy:
        return INFO_ENTROPY
    if sum(ch in CONSONANTS for ch in label) > settings.dga_consonants:
        return INFO_CONSONANTS
    return None


def long_name_trail(name: str, settings) -> str | None:
    """Maltrail's rendering of a long name, "(head).parent.tld", or None when it is not one."""
    labels = name.split(".")
    if len(labels[0]) <= settings.long_domain_length or "-" in labels[0]:
        return None
    if len(labels) > 2:
        trail = "(%s).%s" % (".".join(labels[:-2]), ".".join(labels[-2:]))
    elif len(labels) == 2:
        trail = "(%s).%s" % (labels[0], labels[1])
    else:
        trail = name
    return None if "blogspot" in trail else trail


def dnsbl_lookup(labels: list[str]) -> bool:
    """d.c.b.a.zone: a blocklist (or reverse) lookup of an IPv4 address."""
    return len(labels) > 4 and all(x.isdigit() and int(x) < 256 for x in labels[:4])


class DnsHeuristics:
    """One worker's DNS state: the exhaustion windows per registered domain and the NXDOMAIN
    counters per name and parent, each bounded (the reference path's; on the fast path the C scan
    keeps the exhaustion state and this keeps the NXDOMAIN counters)."""

    def __init__(self, settings):
        self.settings = settings
        self.window_us = settings.dns_exhaustion_window_s * 1_000_000
        # registered domain -> [window start us, set of subdomains]
        self._domains: OrderedDict = OrderedDict()
        self._stored = 0
        self.evicted_domains = 0
        self.unstored_subdomains = 0
        # NXDOMAIN counters: name -> [hour, count]; parent -> [hour, count, names]
        self._nx_names: OrderedDict = OrderedDict()
        self._nx_parents: OrderedDict = OrderedDict()
        self.evicted_nxdomain = 0

    # -- DNS exhaustion ------------------------------------------------------------------------

    def observe_query(self, name: str, ts_us: int) -> bool:
        """A standard query; True when it is a new subdomain beyond the threshold."""
        if not judged(name):
            return False
        sub, parent = subdomain_of(name)
        if not sub or _NUMERIC_LABEL.match(sub.split(".", 1)[0]):
            return False
        state = self._domains.get(parent)
        if state is None:
            if len(self._domains) >= self.settings.max_dns_domains:
                self._evict_domain()
            state = self._domains[parent] = [ts_us, set()]
        else:
            self._domains.move_to_end(parent)
            if ts_us - state[0] > self.window_us:
                self._stored -= len(state[1])
                state[0], state[1] = ts_us, set()
        subs = state[1]
        if sub in subs:
            return False
        if len(subs) >= self.settings.dns_exhaustion_threshold:
            return True
        while self._stored >= self.settings.max_dns_subdomains and len(self._domains) > 1:
            self._evict_domain()
        if self._stored >= self.settings.max_dns_subdomains:
            self.unstored_subdomains += 1
            return False
        subs.add(sub)
        self._stored += 1
        return False

    def _evict_domain(self) -> None:
        _, (_, subs) = self._domains.popitem(last=False)
        self._stored -= len(subs)
        self.evicted_domains += 1

    # -- NXDOMAIN floods -------------------------------------------------------------------------

    def observe_nxdomain(self, name: str, ts_us: int) -> str | None:
        """An NXDOMAIN answer for `name` (already checked against trails and ignored suffixes);
        returns the trail of an "excessive no such domain" event, or None."""
        labels = name.split(".")
        if labels[-1].isdigit() or dnsbl_lookup(labels) or labels[0] in LOCAL_LOOKUPS:
            return None
        hour = ts_us // 3_600_000_000
        threshold = self.settings.nxdomain_threshold
        counter = self._touch(self._nx_names, name)
        if counter is None or counter[0] != hour:
            self._nx_names[name] = [hour, 1]
        else:
            counter[1] += 1
            if counter[1] > threshold:
                del self._nx_names[name]
                return name
        sub, parent = subdomain_of(name)
        if not sub:
            return None
        counter = self._touch(self._nx_parents, parent)
        if counter is None or counter[0] != hour:
            self._nx_parents[parent] = [hour, 1, {sub}]
            return None
        counter[1] += 1
        if len(counter[2]) < MAX_LISTED_NAMES:
            counter[2].add(sub)
        if counter[1] > threshold:
            del self._nx_parents[parent]
            return "(%s).%s" % (",".join(sorted(counter[2])), parent)
        return None

    def _touch(self, table: OrderedDict, key: str):
        entry = table.get(key)
        if entry is not None:
            table.move_to_end(key)
        elif len(table) >= self.settings.max_nxdomain_names:
            table.popitem(last=False)
            self.evicted_nxdomain += 1
        return entry

    def saturation(self) -> dict:
        return {"dns exhaustion domains evicted": self.evicted_domains,
                "dns exhaustion subdomains not stored": self.unstored_subdomains,
                "nxdomain counters evicted": self.evicted_nxdomain}
