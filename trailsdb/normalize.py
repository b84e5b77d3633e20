"""Turning one raw trail into (kind, normalised key), the way Maltrail normalises its trails.

Owns the shape rules: which text is an IPv4/IPv6 address, a CIDR range, an address:port, a
domain, a regex/wildcard domain, a host/path URL, a path-only URL, a user agent (`ua:TEXT`, or
`ua-re:PATTERN` for a regular expression) or a certificate's SHA-1 fingerprint (40 hex digits, any
case, bare, colon-separated in pairs as `openssl x509 -fingerprint` writes them, or after "sha1:"
as the abuse.ch feed's rows carry them), and the
normalisation Maltrail applies (lower case, IDNA for non-ASCII names, no leading "www.", no
trailing dots, no query string on non-path trails, "//" collapsed, no trailing '/' on a URL with
more than one). A domain is any name DNS can carry in text form (matchers/domains.py
is_dns_name), not only a hostname. Anything that fits no shape is rejected with a reason, never
guessed; so is a range so wide it would match (nearly) every address (0.0.0.0/0, ::/0, any
prefix shorter than the configured minimum).

Must not know about files, merging or the compiled format.
"""

from __future__ import annotations

import ipaddress
import re

from matchers.artifact import (
    KIND_CERT, KIND_CIDR4, KIND_CIDR6, KIND_DOMAIN, KIND_IPPORT4, KIND_IPPORT6, KIND_IPV4, KIND_IPV6,
    KIND_PATH, KIND_REGEX, KIND_UA, KIND_UA_REGEX, KIND_URL, MAX_KEY_BYTES,
)
from matchers.domains import MAX_LABEL_CHARS, MAX_NAME_CHARS

UA_PREFIX = "ua:"
# A user agent matched by a regular expression (case-insensitive, searched anywhere in the
# header), the form Maltrail's misc/ua.txt list is read in (trailsdb/sources.py read_ua_list).
UA_REGEX_PREFIX = "ua-re:"
CERT_PREFIX = "sha1:"

# A SHA-1 fingerprint: 20 bytes as hex, bare or as colon-separated pairs ("AB:CD:...").
_FINGERPRINT = re.compile(r"\A(?:[0-9a-fA-F]{40}|[0-9a-fA-F]{2}(?::[0-9a-fA-F]{2}){19})\Z")

_IPV4 = re.compile(r"\A(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})\Z")
_IPV4_PORT = re.compile(r"\A(\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}):(\d{1,5})\Z")
_IPV4_CIDR = re.compile(r"\A(\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3})/(\d{1,2})\Z")
_IPV6_PORT = re.compile(r"\A\[([0-9a-f:.]+)\]:(\d{1,5})\Z")
_IPV6_CIDR = re.compile(r"\A([0-9a-f:.]+)/(\d{1,3})\Z")
# Maltrail's test for a wildcard (regex) trail: a quantified '.' or ']' or a bracket class.
_REGEX_HINT = re.compile(r"[\].][*+]|\[[a-z0-9_.\-]+\]", re.I)
# Constructs that change meaning or stop compiling once a pattern sits inside Maltrail's combined
# alternation (matchers/regextrails.py): numbered backreferences (the wrapping groups renumber
# them), named backreferences, inline global flags (only legal at the very start), and the
# group names the alternation uses for itself.
_UNSUPPORTED_REGEX = re.compile(r"\\[1-9]|\(\?P=|\(\?[aiLmsux]+\)|\(\?P<g\d+>")
_ALPHA_ONLY = re.compile(r"\A\.?[a-z]+\Z")
# The shortest CIDR prefixes a trail may have, (IPv4, IPv6): [all] min_trail_prefix_v4 / _v6.
# A range wider than what IANA hands one regional registry (an IPv4 /8, an IPv6 /12) is no threat
# listing but a mistake in a feed (0.0.0.0/0, a bogon list's 224.0.0.0/3) that would flag every
# host; real lists stay far below it (the shared Maltrail set's widest range is a /18, Spamhaus
# DROP's a /11 or so).
DEFAULT_MIN_PREFIX = (8, 12)


def _ipv4_text(groups) -> str | None:
    octets = [int(g) for g in groups]
    if any(o > 255 for o in octets):
        return None
    return "%d.%d.%d.%d" % tuple(octets)


def _idna_host(host: str) -> str | None:
    if host.isascii():
        return host.lower()
    try:
        return host.encode("idna").decode("ascii").lower()
    except UnicodeError:
        return None


def _too_wide(version: int, minimum: int) -> str:
    return "range wider than /%d, would match (nearly) every address ([all] min_trail_prefix_v%d)" % (
        minimum, version)


def ua_regex_problem(pattern: str) -> str | None:
    """Why a user-agent regular expression cannot be a trail, or None. The patterns are joined
    into one alternation of named groups (matchers/useragents.py), so the constructs that change
    meaning there are refused, as for regex domain trails."""
    if _UNSUPPORTED_REGEX.search(pattern):
        return "regex uses backreferences, inline flags or a reserved group name"
    try:
        re.compile(pattern, re.IGNORECASE)
        re.compile("(?P<g0>%s)|(?P<g1>x)" % pattern, re.IGNORECASE)
    except (re.error, RecursionError, OverflowError):
        return "regex does not compile"
    if re.compile(pattern, re.IGNORECASE).search(""):
        return "regex matches an empty user agent (it would match every one)"
    return None
def fingerprint_key(text: str) -> str | None:
    """The certificate trail key (40 lower-case hex digits) `text` is, or None: a SHA-1
    fingerprint bare, colon-separated, or after "sha1:"."""
    t = text.strip()
    if t[:len(CERT_PREFIX)].lower() == CERT_PREFIX:
        t = t[len(CERT_PREFIX):].strip()
    if len(t) not in (40, 59) or not _FINGERPRINT.match(t):
        return None
    return t.replace(":", "").lower()


def normalize_trail(trail: str, reference: str = "",
                    min_prefix: tuple[int, int] = DEFAULT_MIN_PREFIX) -> tuple[int | None, str]:
    """Returns (kind, key), or (None, reason) when the trail is unusable. `min_prefix`: the
    shortest (IPv4, IPv6) CIDR prefixes accepted; /0 never is."""
    t = trail.strip()
    if not t:
        return None, "empty"
    if t[:len(UA_REGEX_PREFIX)].lower() == UA_REGEX_PREFIX:
        pattern = t[len(UA_REGEX_PREFIX):].strip()
        if not pattern:
            return None, "empty user agent"
        problem = ua_regex_problem(pattern)
        if problem:
            return None, problem
        return _checked(KIND_UA_REGEX, pattern)
    if t[:len(UA_PREFIX)].lower() == UA_PREFIX:
        pattern = t[len(UA_PREFIX):].strip().lower()
        if not pattern:
            return None, "empty user agent"
        return _checked(KIND_UA, pattern)
    if len(t) >= 40 or t[:len(CERT_PREFIX)].lower() == CERT_PREFIX:
        # Before the name rules: 40 hex digits would otherwise be a one-label domain trail.
        fingerprint = fingerprint_key(t)
        if fingerprint is not None:
            return KIND_CERT, fingerprint
        if t[:len(CERT_PREFIX)].lower() == CERT_PREFIX:
            return None, "not a SHA-1 fingerprint (40 hex digits) after %s" % CERT_PREFIX

    if "/" not in t and _REGEX_HINT.search(t) and re.escape(t) != t:
        if _UNSUPPORTED_REGEX.search(t):
            return None, "regex uses backreferences, inline flags or a reserved group name"
        try:
            re.compile(t, re.IGNORECASE)
            re.compile("(?P<g0>%s)|(?P<g1>x)" % t, re.IGNORECASE)
        except (re.error, RecursionError, OverflowError):
            return None, "regex does not compile"
        # Matched case-insensitively against lower-case names: lower-casing the pattern itself
        # (as Maltrail does) would turn \D, \W, \S into their opposites.
        return _checked(KIND_REGEX, t)

    # Non-ASCII: IDNA for the host part (phishing look-alikes), the path stays as text.
    if not t.isascii():
        host, sep, rest = t.partition("/")
        host = _idna_host(host) if host else host
        if host is None:
            return None, "not a valid internationalised name"
        t = host + sep + rest
    t = t.lower()
    if t.startswith("www.") and "/" not in t:
        t = t[4:]
    if "?" in t and not t.startswith("/"):
        t = t.split("?", 1)[0]
    while "//" in t:
        t = t.replace("//", "/")
    if not t:
        return None, "empty"

    # Every address shape starts with a digit or holds a ':' ("[v6]:port", "v6", "v6/len"); most
    # trails are names, which skip the address patterns altogether (a build normalises millions).
    if ":" in t or t[0].isdigit():
        shaped = _address_shape(t, min_prefix)
        if shaped is not None:
            return shaped

    if t.count("/") > 1:
        # Maltrail strips trailing '/' from every URL candidate it looks up (matchers/urls.py), so
        # "host/line/" (left by dropping "?fields=x" above) would never match; its static parser
        # strips it from such trails too. A single '/' stays: "host/" is the whole-host trail.
        t = t.rstrip("/")
    if t.startswith("/"):
        return _checked(KIND_PATH, t)
    if "/" in t:
        host = t.split("/", 1)[0]
        if not host or any(c.isspace() for c in host):
            return None, "URL without a usable host"
        return _checked(KIND_URL, t)

    t = t.strip(".")
    if t.startswith("*."):
        # "*.evil.com": a domain trail already covers every subdomain.
        t = t[2:]
    if not t:
        return None, "empty"
    reason = _not_a_dns_name(t)
    if reason:
        return None, reason
    if _ALPHA_ONLY.match(t) and "custom" not in reference and "static" not in reference:
        # Maltrail drops bare words (e.g. "com") that feeds sometimes emit; curated lists keep them.
        return None, "bare word from a feed"
    return _checked(KIND_DOMAIN, t)


def _address_shape(t: str, min_prefix: tuple[int, int]) -> tuple[int | None, str] | None:
    """(kind, key) or (None, reason) when `t` (lower case, cleaned) has an address shape: an
    [IPv6]:port, IPv4:port, IPv4 range, IPv4 address, IPv6 address or IPv6 range; None when it
    has none of them (a name or URL that happens to start with a digit)."""
    m = _IPV6_PORT.match(t)
    if m:
        try:
            addr = ipaddress.IPv6Address(m.group(1))
        except ValueError:
            return None, "malformed IPv6 address"
        port = int(m.group(2))
        if port > 65535:
            return None, "port out of range"
        return _checked(KIND_IPPORT6, "[%s]:%d" % (addr.compressed, port))
    m = _IPV4_PORT.match(t)
    if m:
        ip = _ipv4_text(m.group(1).split("."))
        port = int(m.group(2))
        if ip is None:
            return None, "IPv4 octet above 255"
        if port > 65535:
            return None, "port out of range"
        return _checked(KIND_IPPORT4, "%s:%d" % (ip, port))
    m = _IPV4_CIDR.match(t)
    if m:
        ip = _ipv4_text(m.group(1).split("."))
        prefix = int(m.group(2))
        if ip is None:
            return None, "IPv4 octet above 255"
        if prefix > 32:
            return None, "CIDR prefix above 32"
        if prefix < max(1, min_prefix[0]):
            return None, _too_wide(4, max(1, min_prefix[0]))
        net = ipaddress.IPv4Network("%s/%d" % (ip, prefix), strict=False)
        if prefix == 32:
            return _checked(KIND_IPV4, str(net.network_address))
        return _checked(KIND_CIDR4, str(net))
    m = _IPV4.match(t)
    if m:
        ip = _ipv4_text(m.groups())
        if ip is None:
            return None, "IPv4 octet above 255"
        return _checked(KIND_IPV4, ip)
    if ":" in t and "/" not in t:
        try:
            return _checked(KIND_IPV6, ipaddress.IPv6Address(t).compressed)
        except ValueError:
            return None, "malformed address (':' but not IPv6 or ip:port)"
    m = _IPV6_CIDR.match(t)
    if m and ":" in m.group(1):
        try:
            net = ipaddress.IPv6Network(t, strict=False)
        except ValueError:
            return None, "malformed IPv6 range"
        if net.prefixlen < max(1, min_prefix[1]):
            return None, _too_wide(6, max(1, min_prefix[1]))
        if net.prefixlen == 128:
            return _checked(KIND_IPV6, net.network_address.compressed)
        return _checked(KIND_CIDR6, net.compressed)
    return None

def _not_a_dns_name(name: str) -> str | None:
    """Why `name` cannot be a domain trail, or None. Every name DNS can carry in text form is
    accepted (matchers/domains.py is_dns_name: '_', '=', '+' and the like included; the same rule,
    checked here with whole-string tests), but not
    whitespace or control characters, and not a backslash: zone files write escapes with it
    ("\\." for a dot inside a label), so a trail holding one is an escaped name or an incomplete
    regex, and either way would never equal a name seen on the wire."""
    # Whole-string tests in C: the one character isspace() calls printable is ' ' itself, so "no
    # space and all printable" is "no whitespace or control character".
    if " " in name or not name.isprintable():
        return "not a domain name (whitespace or control characters)"
    if "\\" in name:
        return "not a domain name (a backslash: an escaped name or an incomplete regex)"
    labels = name.split(".")
    if "" in labels:
        return "not a domain name (an empty label)"
    if len(name) > MAX_NAME_CHARS:
        return "not a domain name (longer than %d characters)" % MAX_NAME_CHARS
    if max(map(len, labels)) > MAX_LABEL_CHARS:
        return "not a domain name (a label longer than %d characters)" % MAX_LABEL_CHARS
    # What is_dns_name still asks of a name that passed the tests above: printable ASCII.
    if not name.isascii():
        return "not a domain name (characters outside printable ASCII)"
    return None


def _checked(kind: int, key: str) -> tuple[int | None, str]:
    # A character is at most 4 bytes of UTF-8: shorter keys need no encoding to be measured.
    if len(key) > MAX_KEY_BYTES // 4 and len(key.encode("utf-8", "surrogateescape")) > MAX_KEY_BYTES:
        return None, "longer than %d bytes" % MAX_KEY_BYTES
    return kind, key
