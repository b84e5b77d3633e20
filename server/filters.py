"""The filter language of the UI and the API's `q` parameter: Maltrail-style tokens into store Terms.

Owns the token syntax (docs/API.md, "Filters"), its parsing into server.store.Term clauses
(`parse`), the chips a client shows for it (`tokens`), and `matches`, the same semantics in Python
for one events.record.Event (the live stream filters with it; every store backend answers the
same Terms in its own query language, and tests hold the two equal on the same events). Must not
hold SQL or know about HTTP, users or sessions: the API turns a FilterError into its 400.

Syntax: tokens are separated by white space; a value holding spaces is written in double quotes
(`trail:"bad.example/x y"`, `"known attacker"`; inside quotes `\\"` is a quote and `\\\\` a
backslash).
    src:ADDR  dst:ADDR  ip:ADDR   an address, a CIDR (IPv4 or IPv6) or an a-b range; ip: is the
                                  source OR the destination, as is a bare address or CIDR
    port:N                        the source OR the destination port
    proto:WORD  type:WORD         TCP, UDP, ICMP / IP, DNS, URL, UA, IPORT ... (any case)
    sev:LEVEL (severity:)         low, medium or high
    trail:TEXT  sensor:TEXT       the whole value, case-insensitive; `*` matches any run
    info:TEXT                     a case-insensitive substring of info; `*` matches any run
    anything else                 free text: a substring of the trail OR the info
A leading `-` excludes (`-type:DNS`, `-10.0.0.0/8`, `-"known attacker"`). Positive tokens of one
field are ORed into one Term (`type:DNS type:URL`, or `type:DNS,URL` for the listed fields);
different fields are ANDed; each negative token is its own Term. Case-insensitive means ASCII
letters only (what every backend's case folding does alike).
"""

from __future__ import annotations

import functools
import re
from typing import Callable, NamedTuple

from events.record import SEVERITIES, Event
from server.addresses import AddressError, ip_key, key_range, range_text
from server.store import Term, ascii_upper

__all__ = ["FilterError", "Token", "parse", "tokens", "matches", "MAX_QUERY_CHARS", "MAX_TOKENS", "FIELD_NAMES"]

MAX_QUERY_CHARS = 1024
MAX_TOKENS = 32
MAX_VALUE_CHARS = 512

# The token's field name -> the store's Term field.
FIELD_NAMES = {"src": "src", "dst": "dst", "ip": "address", "port": "port", "proto": "proto", "type": "type",
               "trail": "trail", "info": "info", "sev": "severity", "severity": "severity", "sensor": "sensor"}
# Fields whose token value may list several values separated by commas (none of these values can
# hold a comma; a trail, an info or a sensor name can).
_LISTED = {"src", "dst", "address", "port", "proto", "type", "severity"}
_WORD_RE = re.compile(r"[A-Za-z0-9_]{1,16}")
_FIELD_LIKE_RE = re.compile(r"[A-Za-z]{2,12}")
_ADDRESS_FIX = "write an address, a CIDR (10.0.0.0/8, 2001:db8::/32) or a range a-b"


class FilterError(ValueError):
    """A filter that cannot be used: `token` is the offending token as written, the message says
    what is wrong with it and how to write it."""

    def __init__(self, token: str, message: str):
        super().__init__(message)
        self.token = token


class Token(NamedTuple):
    """One token as a client shows it (a chip): the text as written, the store field it filters,
    its values, and whether it excludes."""
    text: str
    field: str
    values: tuple[str, ...]
    negate: bool


def _split(q: str) -> list[str]:
    """The raw tokens of q: runs of non-space characters, a double-quoted part kept whole."""
    out: list[str] = []
    i, n = 0, len(q)
    while i < n:
        if q[i].isspace():
            i += 1
            continue
        start = i
        quoted = False
        while i < n and (quoted or not q[i].isspace()):
            if q[i] == "\\" and quoted and i + 1 < n:
                i += 2
                continue
            if q[i] == '"':
                quoted = not quoted
            i += 1
        if quoted:
            raise FilterError(q[start:i], "%s: a quote is not closed; end the quoted value with \"" % q[start:i][:64])
        out.append(q[start:i])
    return out


def _unquote(token: str, text: str) -> str:
    """A value as meant: "a b" without its quotes and escapes; quotes inside an unquoted value
    are refused (where the value begins and ends would be a guess)."""
    if len(text) >= 2 and text[0] == '"' and text[-1] == '"' and '"' not in re.sub(r'\\.', "", text[1:-1]):
        return re.sub(r'\\(.)', r"\1", text[1:-1])
    if '"' in text:
        raise FilterError(token, '%s: quote the whole value, e.g. trail:"a b"' % token[:64])
    return text


def _address(token: str, text: str) -> str:
    try:
        return range_text(*key_range(text))
    except AddressError as exc:
        raise FilterError(token, "%s: %s; %s" % (token[:64], exc, _ADDRESS_FIX)) from None


def _value(token: str, field: str, text: str) -> str:
    """One value of `field` as the store's Term takes it (server/store Term's docstring)."""
    if not text:
        raise FilterError(token, "%s: give a value after the colon, e.g. %s" % (token[:64], _EXAMPLES[field]))
    if len(text) > MAX_VALUE_CHARS:
        raise FilterError(token, "%s...: a value is at most %d characters" % (token[:32], MAX_VALUE_CHARS))
    if field in ("src", "dst", "address"):
        return _address(token, text)
    if field == "port":
        if not text.isdigit() or len(text) > 5 or int(text) > 65535:
            raise FilterError(token, "%s: a port is a whole number from 0 to 65535, e.g. port:443" % token[:64])
        return str(int(text))
    if field in ("proto", "type"):
        if not _WORD_RE.fullmatch(text):
            raise FilterError(token, "%s: write one word of letters and digits, e.g. %s"
                              % (token[:64], _EXAMPLES[field]))
        return ascii_upper(text)
    if field == "severity":
        level = text.lower()
        if level not in SEVERITIES:
            raise FilterError(token, "%s: the severity is one of %s, e.g. sev:high"
                              % (token[:64], ", ".join(SEVERITIES)))
        return level
    if field in ("info", "text") and not text.strip("*"):
        raise FilterError(token, "%s: give some text besides *" % token[:64])
    return text


_EXAMPLES = {"src": "src:10.0.0.0/8", "dst": "dst:2001:db8::/32", "address": "ip:192.168.1.5", "port": "port:443",
             "proto": "proto:TCP", "type": "type:DNS", "trail": "trail:*.example.com", "info": "info:malware",
             "severity": "sev:high", "sensor": "sensor:edge-*", "text": '"known attacker"'}


def _token(raw: str) -> Token:
    """One raw token as (field, values, negate)."""
    negate = raw.startswith("-") and len(raw) > 1
    body = raw[1:] if negate else raw
    if body.startswith('"'):
        return Token(raw, "text", (_value(raw, "text", _unquote(raw, body)),), negate)
    name, colon, rest = body.partition(":")
    field = FIELD_NAMES.get(name.lower()) if colon else None
    if field is not None:
        text = _unquote(raw, rest)
        parts = text.split(",") if field in _LISTED else [text]
        values: list[str] = []
        for part in parts:
            value = _value(raw, field, part.strip() if field in _LISTED else part)
            if value not in values:
                values.append(value)
        return Token(raw, field, tuple(values), negate)
    # A bare address, CIDR or range: the source or the destination.
    if any(c in body for c in ".:") and body[:1] not in "*":
        try:
            return Token(raw, "address", (range_text(*key_range(body)),), negate)
        except AddressError:
            pass
    if colon and _FIELD_LIKE_RE.fullmatch(name) and rest and not rest.startswith("/"):
        raise FilterError(raw, "%s: no filter is called %r; use one of %s, or quote the text to search for it "
                          "('\"%s\"')" % (raw[:64], name[:16], ", ".join(n + ":" for n in FIELD_NAMES), body[:64]))
    return Token(raw, "text", (_value(raw, "text", _unquote(raw, body)),), negate)


def tokens(q: str) -> list[Token]:
    """The tokens of q in the order written (FilterError for the first bad one, or for a q over
    MAX_QUERY_CHARS characters or MAX_TOKENS tokens)."""
    if len(q) > MAX_QUERY_CHARS:
        raise FilterError(q[:32], "the filter starting %r is %d characters; write at most %d"
                          % (q[:32], len(q), MAX_QUERY_CHARS))
    raw = _split(q)
    if len(raw) > MAX_TOKENS:
        raise FilterError(raw[MAX_TOKENS], "the filter has %d tokens; write at most %d" % (len(raw), MAX_TOKENS))
    return [_token(r) for r in raw]


def parse(q: str) -> tuple[Term, ...]:
    """The store Terms of q: positive tokens of one field ORed into one Term (the field's first
    place), each negative token a Term of its own; () for an empty q."""
    terms: list = []
    positive: dict[str, int] = {}
    for t in tokens(q):
        if t.negate:
            terms.append(Term(t.field, t.values, True))
            continue
        at = positive.get(t.field)
        if at is None:
            positive[t.field] = len(terms)
            terms.append(Term(t.field, t.values))
        else:
            was = terms[at]
            terms[at] = Term(t.field, was.values + tuple(v for v in t.values if v not in was.values))
    return tuple(terms)


# -- the same semantics in Python, for one event -------------------------------------------------

def _pattern(value: str, whole: bool) -> re.Pattern:
    """A trail/sensor (whole) or info/text (substring) value as a regular expression: `*` any run
    of characters, ASCII letters case-insensitive (re.ASCII: as the backends fold case)."""
    body = ".*".join(re.escape(part) for part in value.split("*"))
    return re.compile(body if whole else ".*" + body, re.ASCII | re.IGNORECASE | re.DOTALL)


def _predicate(term: Term) -> Callable[[Event], bool]:
    f, values = term.field, term.values
    if f in ("src", "dst", "address"):
        nets = [key_range(v) for v in values]

        def within(text) -> bool:
            k = ip_key(text)
            return k is not None and any(lo <= k <= hi for lo, hi in nets)
        if f == "src":
            return lambda e: within(e.src_ip)
        if f == "dst":
            return lambda e: within(e.dst_ip)
        return lambda e: within(e.src_ip) or within(e.dst_ip)
    if f == "port":
        ports = {int(v) for v in values}
        return lambda e: e.src_port in ports or e.dst_port in ports
    if f in ("proto", "type"):
        words = set(values)
        return lambda e: ascii_upper(getattr(e, f) or "") in words
    if f == "severity":
        levels = set(values)
        return lambda e: e.severity in levels
    whole = f in ("trail", "sensor")
    patterns = [_pattern(v, whole) for v in values]
    if f == "text":
        return lambda e: any(p.match(e.trail or "") or p.match(e.info or "") for p in patterns)
    if whole:
        return lambda e: any(p.fullmatch(getattr(e, f) or "") for p in patterns)
    return lambda e: any(p.match(e.info or "") for p in patterns)


@functools.lru_cache(maxsize=256)
def _compiled(terms: tuple[Term, ...]) -> tuple:
    return tuple((_predicate(t), t.negate) for t in terms)


def matches(terms: tuple[Term, ...], event: Event) -> bool:
    """Whether `event` satisfies every term (what a store's query with these terms returns)."""
    for holds, negate in _compiled(tuple(terms)):
        if holds(event) == negate:
            return False
    return True
