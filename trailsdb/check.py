"""`trails check INDICATOR`: which trails would match an indicator, and why.

Owns the explanation: what shape the indicator has (address, address:port, domain, URL, user
agent, certificate SHA-1 fingerprint), every lookup the sensor would make for it, and the verdict, in plain lines. Uses the same
matchers the sensor uses, so the answer is the sensor's answer. Also owns the rules for what an
indicator may be (`parse_indicator`): text that is none of the shapes (an empty string, an
address with an octet over 255, a port over 65535, a name DNS cannot carry) is refused with the
reason, so that a typo is not answered with "no trail matches".

With provenance asked for (`trails check` does), every matching trail is followed by where it
comes from: each source that lists it and since when, or that listed it until when
(trailsdb/provenance.py).

Must not be imported by the packet path.
"""

from __future__ import annotations

import ipaddress
import re

from matchers.artifact import KIND_CIDR4, KIND_CIDR6, KIND_DOMAIN, KIND_NAMES, KIND_REGEX
from matchers.domains import render_span
from matchers.urls import url_checks
from trailsdb.normalize import UA_PREFIX, fingerprint_key
from trailsdb.provenance import Provenance, lines_for

SHAPES = ("an IP address, IP:port, [IPv6]:port, domain, host/path URL, ua:USER-AGENT, or a certificate's SHA-1 "
          "fingerprint")

# DNS limits (RFC 1035 2.3.4): a label is 1-63 octets, a name at most 253 characters as text
# (255 octets on the wire).
LABEL_MAX = 63
NAME_MAX = 253
PORT_MAX = 65535

# Text that can only have been meant as an IPv4 address: digits and dots, a dot in it.
_DOTTED_DIGITS_RE = re.compile(r"^[0-9]+(\.[0-9]+)+\.?$")
_SCHEME_RE = re.compile(r"^[a-z][a-z0-9+.-]*://", re.I)


class IndicatorError(ValueError):
    """Text that is not an indicator `trails check` can look up; the message says why."""


def _describe(matchers, trail_id: int) -> str:
    r = matchers.artifact.record(trail_id)
    return "%s trail %r (id %d): %r %s" % (KIND_NAMES.get(r.kind, "?"), r.key, trail_id, r.info, r.reference)


def _port(text: str, indicator: str) -> int:
    if not (text.isascii() and text.isdigit()):
        raise IndicatorError("%s: the port is not a number" % indicator)
    # A length check first: int() of thousands of digits is refused by Python itself.
    if len(text) > len(str(PORT_MAX)) or int(text) > PORT_MAX:
        raise IndicatorError("%s: the port %s is out of range (0-%d)"
                             % (indicator, text if len(text) <= 6 else text[:6] + "...", PORT_MAX))
    return int(text)


def _address(text: str, indicator: str, version: int | None = None):
    """The address `text` is, or None when it is not meant as one; raises when it is meant as
    one (dotted digits, or a bracketed IPv6 literal) but is not valid."""
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        if version == 6:
            raise IndicatorError("%s: not a valid IPv6 address" % indicator) from None
        if _DOTTED_DIGITS_RE.match(text):
            raise IndicatorError("%s: not a valid IPv4 address (four numbers from 0 to 255, separated by dots)"
                                 % indicator) from None
        return None
    if version is not None and addr.version != version:
        raise IndicatorError("%s: only IPv6 addresses are written in brackets" % indicator)
    return addr


def _domain(name: str, indicator: str) -> str:
    """`name` lower-cased without its final dot, if DNS can carry it."""
    name = name.lower()
    name = name[:-1] if name.endswith(".") else name
    if not name:
        raise IndicatorError("%s: the domain name is empty" % indicator)
    if any(c.isspace() or not c.isprintable() for c in name):
        raise IndicatorError("%s: a domain name has no spaces or control characters" % indicator)
    if len(name) > NAME_MAX:
        raise IndicatorError("%s: the name is %d characters long; DNS allows %d" % (indicator, len(name), NAME_MAX))
    for label in name.split("."):
        if not label:
            raise IndicatorError("%s: the name has an empty label (two dots in a row, or a leading dot)" % indicator)
        if len(label.encode("utf-8")) > LABEL_MAX:
            raise IndicatorError("%s: the label %r is longer than the %d bytes DNS allows"
                                 % (indicator, label[:20] + "...", LABEL_MAX))
    return name


def _endpoint(text: str, indicator: str) -> tuple:
    """("ip", address, port or None) or ("domain", name, port or None) for the host part of an
    indicator; raises IndicatorError when it is neither."""
    if text.startswith("["):  # [IPv6] or [IPv6]:port
        inside, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise IndicatorError("%s: write an IPv6 address with a port as [ADDRESS]:PORT" % indicator)
        return ("ip", _address(inside, indicator, 6), _port(rest[1:], indicator) if rest else None)
    # A bare address first: "dead::beef:1" is an IPv6 address, not dead::beef port 1.
    addr = _address(text, indicator)
    if addr is not None:
        return ("ip", addr, None)
    if text.count(":") == 1:
        host, _, port = text.partition(":")
        addr = _address(host, indicator)
        if addr is not None and addr.version != 4:
            raise IndicatorError("%s: write an IPv6 address with a port as [ADDRESS]:PORT" % indicator)
        port_number = _port(port, indicator)
        return ("ip", addr, port_number) if addr is not None else ("domain", _domain(host, indicator), port_number)
    if ":" in text:
        raise IndicatorError("%s: not a valid IPv6 address" % indicator)
    return ("domain", _domain(text, indicator), None)


def parse_indicator(indicator: str) -> tuple:
    """What `indicator` is, as one of ("ua", agent), ("cert", 40 lower-case hex digits),
    ("ip", address, port or None), ("url", host, path) (host "" for a path alone), ("domain",
    name); raises IndicatorError naming what is wrong when it is none of them."""
    text = indicator.strip()
    if not text:
        raise IndicatorError("the indicator is empty; give %s" % SHAPES)
    # Messages quote the indicator, shortened: it may be any text a user pasted.
    indicator = repr(text if len(text) <= 80 else text[:77] + "...")
    if text[:len(UA_PREFIX)].lower() == UA_PREFIX:
        agent = text[len(UA_PREFIX):].strip()
        if not agent:
            raise IndicatorError("%s: give the user agent after %s" % (indicator, UA_PREFIX))
        return ("ua", agent)
    fingerprint = fingerprint_key(text)
    if fingerprint is not None:
        # 40 hex digits, bare, in colon-separated pairs or after "sha1:": what a sensor matches a
        # server certificate by (a one-label name of 40 hex digits is not worth the ambiguity).
        return ("cert", fingerprint)
    if text[:5].lower() == "sha1:":
        raise IndicatorError("%s: a certificate fingerprint is 40 hex digits (SHA-1), with or without ':' "
                             "between the pairs" % indicator)
    if any(c.isspace() or not c.isprintable() for c in text):
        raise IndicatorError("%s: an address, name or URL has no spaces or control characters; give %s"
                             % (indicator, SHAPES))
    if "/" in text:
        host, _, path = _SCHEME_RE.sub("", text).partition("/")
        if host:
            _endpoint(host, indicator)
        return ("url", host.lower(), ("/" + path).lower().replace("//", "/"))
    shape, value, port = _endpoint(text, indicator)
    if shape == "domain":
        if port is not None:
            raise IndicatorError("%s: a port goes with an IP address (IP:PORT, [IPv6]:PORT); give a domain "
                                 "name without one" % indicator)
        return ("domain", value)
    return ("ip", value, port)


class _Sources:
    """Provenance lines for matched trails, the artifact's provenance decoded at the first one."""

    def __init__(self, artifact):
        self._artifact = artifact
        self._loaded = False
        self._provenance: Provenance | None = None

    def lines(self, trail_id: int, indent: str) -> list[str]:
        if not self._loaded:
            self._provenance, self._loaded = Provenance.load(self._artifact), True
        return lines_for(self._provenance, trail_id, indent)


def explain(matchers, indicator: str, with_provenance: bool = False,
            found: list | None = None) -> tuple[bool, list[str]]:
    """(matched, lines); raises IndicatorError when `indicator` is not one (parse_indicator).
    `with_provenance` follows each match with its sources (ArtifactError when the artifact's
    provenance does not decode). `found`, when given, receives a (how, trail id) pair per
    MATCH line, in the same order (the server's JSON answer is made from them: server/check.py)."""
    shape, *value = parse_indicator(indicator)
    sources = _Sources(matchers.artifact) if with_provenance else None
    found = [] if found is None else found
    if shape == "ua":
        ua = value[0]
        trail_id = matchers.user_agents.match(ua)
        if trail_id is None:
            return False, ["user agent %r: no user-agent trail occurs in it" % ua]
        found.append(("user agent", trail_id))
        return True, ["user agent %r: MATCH %s" % (ua, _describe(matchers, trail_id))] + _from(sources, trail_id, "  ")
    if shape == "cert":
        return _explain_cert(matchers, value[0], sources=sources, found=found)
    if shape == "ip":
        return _explain_ip(matchers, *value, sources=sources, found=found)
    if shape == "url":
        return _explain_url(matchers, *value, sources=sources, found=found)
    return _explain_domain(matchers, value[0], sources=sources, found=found)


def _found(found: list | None, how: str, trail_id: int) -> None:
    if found is not None:
        found.append((how, trail_id))


def _from(sources: _Sources | None, trail_id: int, indent: str) -> list[str]:
    return sources.lines(trail_id, indent) if sources is not None else []


def _explain_cert(matchers, fingerprint: str, sources=None, found=None) -> tuple[bool, list[str]]:
    lines = ["%s: certificate SHA-1 fingerprint" % fingerprint]
    trail_id = matchers.certs.lookup(bytes.fromhex(fingerprint))
    if trail_id is None:
        lines.append("  no certificate trail")
        return False, lines
    lines.append("  MATCH %s" % _describe(matchers, trail_id))
    _found(found, "certificate", trail_id)
    return True, lines + _from(sources, trail_id, "    ")


def _explain_ip(matchers, addr, port, sources=None, found=None) -> tuple[bool, list[str]]:
    lines = ["%s: IPv%d address%s" % (addr, addr.version, " with port %d" % port if port is not None else "")]
    matched = False
    if port is not None:
        trail_id = matchers.ips.lookup_ip_port(addr.version, int(addr), port)
        if trail_id is not None:
            matched = True
            lines.append("  MATCH address:port %s" % _describe(matchers, trail_id))
            _found(found, "address:port", trail_id)
            lines += _from(sources, trail_id, "    ")
        else:
            lines.append("  no address:port trail")
    trail_id = matchers.ips.lookup_ip(addr.version, int(addr))
    if trail_id is not None:
        matched = True
        kind = matchers.artifact.kind(trail_id)
        how = "inside range" if kind in (KIND_CIDR4, KIND_CIDR6) else "exact address"
        lines.append("  MATCH %s: %s" % (how, _describe(matchers, trail_id)))
        _found(found, how, trail_id)
        lines += _from(sources, trail_id, "    ")
    else:
        lines.append("  no address or range trail")
    return matched, lines


def _explain_domain(matchers, name: str, sources=None, found=None) -> tuple[bool, list[str]]:
    lines = ["%s: domain name" % name]
    for trail_id, start in matchers.domains.table.suffixes(name):
        what = "exact" if start == 0 else "parent %s of %s" % (name[start:], name)
        lines.append("  candidate (%s): %s" % (what, _describe(matchers, trail_id)))
    hit = matchers.domains.match(name)
    if hit is None:
        lines.append("  no domain trail matches (exact, parent, regex, .onion gateway, ip-adress.com)")
        return False, lines
    lines.append("  MATCH as %r: %s" % (render_span(name, hit.start, hit.end), _describe(matchers, hit.trail_id)))
    _found(found, "exact domain" if hit.start == 0 and matchers.artifact.kind(hit.trail_id) == KIND_DOMAIN
           else "domain regex" if matchers.artifact.kind(hit.trail_id) == KIND_REGEX else "parent domain",
           hit.trail_id)
    lines += _from(sources, hit.trail_id, "    ")
    return True, lines


def _explain_url(matchers, host: str, path: str, sources=None, found=None) -> tuple[bool, list[str]]:
    lines = ["%s%s: URL (host %s, path %s)" % (host, path, host or "any", path)]
    for check, post in url_checks(path, None):
        for candidate in (check, host + check):
            trail_id = matchers.urls.table.find(candidate)
            state = "MATCH " + _describe(matchers, trail_id) if trail_id is not None else "no trail"
            lines.append("  candidate %r: %s" % (candidate, state))
    hit = matchers.urls.match(host, path)
    matched = False
    if host:
        matched, domain_lines = _explain_domain(matchers, host.split(":")[0], sources, found)
        lines.extend("  " + line for line in domain_lines)
    if hit is not None:
        lines.append("  MATCH URL via %r: %s" % (hit.check, _describe(matchers, hit.trail_id)))
        _found(found, "url", hit.trail_id)
        lines += _from(sources, hit.trail_id, "    ")
        return True, lines
    return matched, lines
