"""`trails check INDICATOR`: which trails would match an indicator, and why.

Owns the explanation: what shape the indicator has (address, address:port, domain, URL, user
agent), every lookup the sensor would make for it, and the verdict, in plain lines. Uses the same
matchers the sensor uses, so the answer is the sensor's answer.

Must not be imported by the packet path.
"""

from __future__ import annotations

import ipaddress

from matchers.artifact import KIND_CIDR4, KIND_CIDR6, KIND_NAMES
from matchers.domains import render_span
from matchers.ips import parse_ipport
from matchers.urls import url_checks
from trailsdb.normalize import UA_PREFIX


def _describe(matchers, trail_id: int) -> str:
    r = matchers.artifact.record(trail_id)
    return "%s trail %r (id %d): %r %s" % (KIND_NAMES.get(r.kind, "?"), r.key, trail_id, r.info, r.reference)


def explain(matchers, indicator: str) -> tuple[bool, list[str]]:
    """(matched, lines)."""
    text = indicator.strip()
    if text[:len(UA_PREFIX)].lower() == UA_PREFIX:
        ua = text[len(UA_PREFIX):].strip()
        trail_id = matchers.user_agents.match(ua)
        if trail_id is None:
            return False, ["user agent %r: no user-agent trail occurs in it" % ua]
        return True, ["user agent %r: MATCH %s" % (ua, _describe(matchers, trail_id))]

    try:  # a bare address first: "dead::beef:1" is an IPv6 address, not dead::beef port 1
        addr, port = ipaddress.ip_address(text.strip("[]")), None
    except ValueError:
        try:
            host, port = parse_ipport(text)
            addr = ipaddress.ip_address(host)
        except ValueError:
            addr, port = None, None
    if addr is not None:
        return _explain_ip(matchers, addr, port)

    if "/" in text:
        return _explain_url(matchers, text)
    return _explain_domain(matchers, text.lower().rstrip("."))


def _explain_ip(matchers, addr, port) -> tuple[bool, list[str]]:
    lines = ["%s: IPv%d address%s" % (addr, addr.version, " with port %d" % port if port is not None else "")]
    matched = False
    if port is not None:
        trail_id = matchers.ips.lookup_ip_port(addr.version, int(addr), port)
        if trail_id is not None:
            matched = True
            lines.append("  MATCH address:port %s" % _describe(matchers, trail_id))
        else:
            lines.append("  no address:port trail")
    trail_id = matchers.ips.lookup_ip(addr.version, int(addr))
    if trail_id is not None:
        matched = True
        kind = matchers.artifact.kind(trail_id)
        how = "inside range" if kind in (KIND_CIDR4, KIND_CIDR6) else "exact address"
        lines.append("  MATCH %s: %s" % (how, _describe(matchers, trail_id)))
    else:
        lines.append("  no address or range trail")
    return matched, lines


def _explain_domain(matchers, name: str) -> tuple[bool, list[str]]:
    lines = ["%s: domain name" % name]
    for trail_id, start in matchers.domains.table.suffixes(name):
        what = "exact" if start == 0 else "parent %s of %s" % (name[start:], name)
        lines.append("  candidate (%s): %s" % (what, _describe(matchers, trail_id)))
    hit = matchers.domains.match(name)
    if hit is None:
        lines.append("  no domain trail matches (exact, parent, regex, .onion gateway, ip-adress.com)")
        return False, lines
    lines.append("  MATCH as %r: %s" % (render_span(name, hit.start, hit.end), _describe(matchers, hit.trail_id)))
    return True, lines


def _explain_url(matchers, text: str) -> tuple[bool, list[str]]:
    url = text.split("://", 1)[1] if "://" in text else text
    host, _, path = url.partition("/")
    host, path = host.lower(), ("/" + path).lower().replace("//", "/")
    lines = ["%s%s: URL (host %s, path %s)" % (host, path, host, path)]
    for check, post in url_checks(path, None):
        for candidate in (check, host + check):
            trail_id = matchers.urls.table.find(candidate)
            state = "MATCH " + _describe(matchers, trail_id) if trail_id is not None else "no trail"
            lines.append("  candidate %r: %s" % (candidate, state))
    hit = matchers.urls.match(host, path)
    matched, domain_lines = _explain_domain(matchers, host.split(":")[0])
    lines.extend("  " + line for line in domain_lines)
    if hit is not None:
        lines.append("  MATCH URL via %r: %s" % (hit.check, _describe(matchers, hit.trail_id)))
        return True, lines
    return matched, lines
