"""Controls over events: the run-time whitelist, the per-host whitelist, ignore rules and the
ignore regex.

Owns the decision whether an event is kept, and why not: "whitelisted" (an address on either side
is whitelisted, except for DNS events, whose resolver address says nothing about the name; or the
event's name is a whitelisted domain or under one), "host-whitelisted" (this trail is silenced for
this host only), "ignored" (an ignore rule over addresses and ports matches, or the ignore regex
matches the event's text). Events dropped here are counted by the worker under that reason, so
nothing disappears unseen.

The rules arrive parsed (engine/control_files.py reads the files named in maltrail.toml); this module
must not read files, nor know about packets.
"""

from __future__ import annotations

import ipaddress
import re
from typing import NamedTuple

from matchers.domains import listed_with_parents
from events.record import TYPE_DNS


class IgnoreRule(NamedTuple):
    """One ignore rule: an event matches when each of its four parts does (None matches any)."""

    src: object = None        # ipaddress network, or None for any
    src_ports: object = None  # (low, high) inclusive, or None for any
    dst: object = None
    dst_ports: object = None

    def matches(self, src, sport, dst, dport) -> bool:
        return (_in(src, self.src) and _port_in(sport, self.src_ports) and _in(dst, self.dst)
                and _port_in(dport, self.dst_ports))


def _in(addr, net) -> bool:
    return net is None or (addr is not None and addr.version == net.version and addr in net)


def _port_in(port, ports) -> bool:
    if ports is None:
        return True
    return isinstance(port, int) and ports[0] <= port <= ports[1]


def _addr(text):
    try:
        return ipaddress.ip_address(text)
    except (ValueError, TypeError):
        return None


# A domain name in an event's trail: labels of printable ASCII other than '.', '/' and ':' (names
# carry more than hostname characters, matchers/domains.py is_dns_name), at least two of them.
_HOST = re.compile(r"\A[!-\-0-9;-~]+(?:\.[!-\-0-9;-~]+)+\Z")


def plain_trail(trail: str) -> str:
    """A trail without Maltrail's parentheses (which mark the part a trail matched), lower case:
    the form a per-host whitelist's indicator is compared in."""
    return trail.replace("\\(", "").replace("\\)", "").replace("(", "").replace(")", "").lower()


def event_names(event) -> tuple[str, str]:
    """(the trail without Maltrail's parentheses, lower case; the host name in it or "")."""
    plain = plain_trail(event.trail)
    token = plain.split(" ", 1)[0].split("/", 1)[0]
    if token.count(":") == 1:
        token = token.split(":", 1)[0]
    return plain, token if _HOST.match(token) else ""


class Controls:
    """The whitelists and ignore rules one worker applies to every event (`verdict`), built from
    the plain data the supervisor sends (`from_plain`)."""

    def __init__(self, whitelist_ips=(), whitelist_networks=(), whitelist_domains=(), host_trails=(),
                 ignore_rules=(), ignore_regex: str = ""):
        self.whitelist_ips = frozenset(whitelist_ips)
        self.whitelist_networks = tuple(whitelist_networks)
        self.whitelist_domains = frozenset(whitelist_domains)
        # (network, indicator lower case)
        self.host_trails = tuple((net, ind.lower()) for net, ind in host_trails)
        self.ignore_rules = tuple(ignore_rules)
        self.ignore_regex = re.compile(ignore_regex) if ignore_regex else None
        self.active = bool(self.whitelist_ips or self.whitelist_networks or self.whitelist_domains
                           or self.host_trails or self.ignore_rules or self.ignore_regex)

    @classmethod
    def from_plain(cls, plain: dict | None) -> "Controls":
        """From the plain form engine/control_files.py reads the files into (strings and lists only,
        so it can cross to a worker process): addresses, "a.b.c.d/n" networks, domains,
        [network, indicator] pairs, [src, sport, dst, dport] rules ("" for any, ports "low-high")."""
        if not plain:
            return NO_CONTROLS

        def net(text):
            return ipaddress.ip_network(text, strict=False) if text else None

        def ports(text):
            if not text:
                return None
            low, _, high = text.partition("-")
            return (int(low), int(high or low))

        rules = [IgnoreRule(net(a), ports(b), net(c), ports(d)) for a, b, c, d in plain.get("ignore_rules", ())]
        return cls(whitelist_ips=[ipaddress.ip_address(x) for x in plain.get("whitelist_ips", ())],
                   whitelist_networks=[net(x) for x in plain.get("whitelist_networks", ())],
                   whitelist_domains=plain.get("whitelist_domains", ()),
                   host_trails=[(net(n), ind) for n, ind in plain.get("host_trails", ())],
                   ignore_rules=rules, ignore_regex=plain.get("ignore_regex", ""))

    def _ip_listed(self, addr) -> bool:
        return addr is not None and (addr in self.whitelist_ips or any(
            addr in net for net in self.whitelist_networks if net.version == addr.version))

    def verdict(self, event) -> str | None:
        """None to keep the event, else the reason it is dropped."""
        if not self.active:
            return None
        src, dst = _addr(event.src_ip), _addr(event.dst_ip)
        if event.type != TYPE_DNS and (self._ip_listed(src) or self._ip_listed(dst)):
            return "whitelisted"
        plain, host = event_names(event)
        if host and self.whitelist_domains and listed_with_parents(host, self.whitelist_domains):
            return "whitelisted"
        for net, indicator in self.host_trails:
            if not (_in(src, net) or _in(dst, net)):
                continue
            if (plain == indicator or plain.startswith(indicator + " ") or host == indicator
                    or (host and host.endswith("." + indicator)) or event.info.lower() == indicator
                    or event.info.lower().startswith(indicator + " (")):
                return "host-whitelisted"
        for rule in self.ignore_rules:
            if rule.matches(src, event.src_port, dst, event.dst_port):
                return "ignored"
        if self.ignore_regex is not None and self.ignore_regex.search(event_text(event)):
            return "ignored"
        return None


def event_text(event) -> str:
    """The text the ignore regex is matched against: Maltrail's event line without time and sensor."""
    return " ".join(str(v) if v not in (None, "") else "-" for v in (
        event.src_ip, event.src_port, event.dst_ip, event.dst_port, event.proto, event.type, event.trail,
        event.info, event.reference))


NO_CONTROLS = Controls()
