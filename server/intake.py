"""The UDP intake: Maltrail sensors' datagrams turned into events, and the counters that say
what became of each datagram.

Owns the datagram's grammar (`parse_datagram`) and `IntakeCounters`. Must not store anything
(server/store does) nor touch sockets (server/process.py owns the receive loop).

A datagram is what Maltrail's sensors send to LOG_SERVER (and events/forwarders/maltrail_server.py
sends): `"<epoch seconds> <event line>"`, or the event line alone (it starts with '"', the quoted
time), with or without a final newline. The event line is Maltrail's (events/formats.py
parse_maltrail). Rules, each refusal counted by its reason (REASONS):
- signing (Maltrail's LOG_SERVER_SECRET): with [server] udp_secret set, a datagram must be
  "MTS1 <32 hex> <datagram>" with the HMAC of that secret, else it is refused (unsigned,
  bad_signature); without a secret a signed datagram is refused (signed), as it cannot be checked.
  The signature carries no sequence number, so a captured datagram can be replayed: that is
  Maltrail's protocol; our sensors' HTTPS intake has none of this weakness.
- the time: with an epoch prefix, ts_us is the prefix's seconds plus the line's microseconds
  (the prefix is UTC; the line's clock text is the sensor's local time, unknown here); without
  one, the line's time read as this server's local time.
- addresses must be IPv4 or IPv6 addresses; ports decimal 0..65535 or '-' (none); a condensed
  record (ports or addresses as comma lists, "80,443", as Maltrail and our sensor write a scan;
  ours may end the list with "+N" for N not listed) becomes one event per listed position,
  pairing lists of one length position by position (`expand`, shared with the HTTPS intake).
- type, trail and proto must be present ('-' is refused for them); info and reference may be '-'
  (stored as "").
- severity is decided here, with the same SeverityRule the sensor uses ([all] severity_regex).
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import re

from events.formats import parse_maltrail_why
from events.record import SEVERITIES, Event, SeverityRule
from server.addresses import ip_key


# Why a datagram was refused (counter labels; also events/formats.py WHY_* for the line itself).
R_NOT_UTF8 = "not_utf8"
R_NO_EVENT_LINE = "no_event_line"       # neither "<digits> <line>" nor a line starting with '"'
R_SIGNED = "signed"                     # "MTS1 <mac> ..." but no [server] udp_secret to check it with
R_UNSIGNED = "unsigned"                 # no "MTS1 <mac> " although [server] udp_secret is set
R_BAD_SIGNATURE = "bad_signature"       # "MTS1 <mac> ..." whose mac is not the secret's
R_EPOCH = "epoch"                       # an epoch prefix out of range
R_ADDRESS = "address"
R_PORT = "port"
R_MISSING = "missing_field"             # type, trail or proto given as '-'
R_SEVERITY = "severity"                 # (our sensors' records) a severity that is none of ours
R_EMPTY = "empty"
R_TOO_LONG = "too_long"                 # longer than the receive buffer (server/recv.py): cut by the kernel
REASONS = (R_EMPTY, R_TOO_LONG, R_NOT_UTF8, R_NO_EVENT_LINE, R_SIGNED, R_UNSIGNED, R_BAD_SIGNATURE, R_EPOCH, "quoting", "field_count", "time",
           R_ADDRESS, R_PORT, R_MISSING, R_SEVERITY)

_SIGNED_PREFIX = b"MTS1 "
_EPOCH = re.compile(r"\A([0-9]{1,12}) ")
_MAX_EPOCH_S = 253402300799             # 9999-12-31T23:59:59Z


MAX_CONDENSED = 4096


class Unstorable(ValueError):
    """A record the store cannot hold as written; `reason` is one of REASONS."""

    def __init__(self, reason: str, text: str):
        super().__init__(text)
        self.reason = reason


def _list(value, reason: str) -> list:
    """A condensed field ("a,b,c", as Maltrail and our sensor write a scan's ports or addresses,
    ours ending in "+N" or "+N or more" when N more were not listed), or the one value."""
    if isinstance(value, str) and "," in value:
        parts = value.split(",")
        if len(parts) > MAX_CONDENSED:
            raise Unstorable(reason, "more than %d values in one field" % MAX_CONDENSED)
        if parts[-1].startswith("+"):       # not listed: the record's count has them
            parts.pop()
        return parts
    return [value]


def _port(value):
    if value is None or value == "-":
        return None
    if isinstance(value, str) and value.isascii() and value.isdigit():
        value = int(value)
    if type(value) is not int or not 0 <= value <= 65535:
        raise Unstorable(R_PORT, "%r is not a port" % (value,))
    return value


def expand(event: Event) -> tuple:
    """The events the store holds for one record. The store has one address and one port per
    row, so a condensed record (ports or addresses written as comma lists) becomes one event per
    listed position: lists of one length paired position by position, a single value repeated;
    the record's count is kept whole over them (the last carries what the others do not).
    Raises Unstorable (with its reason) for a record the store cannot hold. Used by both
    intakes: Maltrail's datagrams here, our sensors' batches in server/sensors.py."""
    fields = [_list(event.src_ip, R_ADDRESS), _list(event.src_port, R_PORT),
              _list(event.dst_ip, R_ADDRESS), _list(event.dst_port, R_PORT)]
    n = max(len(f) for f in fields)
    if any(len(f) not in (1, n) for f in fields):
        addresses_agree = len({len(fields[0]), len(fields[2])} - {1}) <= 1
        raise Unstorable(R_PORT if addresses_agree else R_ADDRESS, "condensed fields of different lengths")
    if event.severity not in SEVERITIES:
        raise Unstorable(R_SEVERITY, "severity %r is none of %s" % (event.severity, ", ".join(SEVERITIES)))
    out = []
    for i in range(n):
        src, sport, dst, dport = (f[i] if len(f) > 1 else f[0] for f in fields)
        if ip_key(src) is None or ip_key(dst) is None:
            raise Unstorable(R_ADDRESS, "an address is not IPv4 or IPv6")
        count = event.count if n == 1 else (1 if i + 1 < n else max(event.count - (n - 1), 1))
        out.append(event._replace(src_ip=src, src_port=_port(sport), dst_ip=dst, dst_port=_port(dport), count=count))
    return tuple(out)


# The fast path: the common datagram (addresses, ports, proto and type unquoted, one port each)
# in one regular expression match (C) and straight into an Event. Quoted fields are unquoted by
# the rule of events/formats.py _split_maltrail (a quoted field is '"', then any run of non-quote
# characters and doubled quotes, then '"'; an unquoted one is non-empty, without space or quote).
# Whatever it does not take goes the reference way (parse_datagram_reference), which also names
# the reason; tests/test_server_datagrams.py holds the two to the same answers.
_FIELD = r'("(?:[^"]|"")*"|[^ "]+)'
_TOKEN = r'([^ "]+)'
_PORT = r'(-|[0-9]{1,5})'
_FAST_LINE = re.compile(
    r'\A(?:([0-9]{1,12}) )?"([0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2})\.([0-9]{6})" '
    + " ".join((_FIELD, _TOKEN, _PORT, _TOKEN, _PORT, _TOKEN, _TOKEN, _FIELD, _FIELD, _FIELD)) + r"\Z")
_CLOCK_CACHE_MAX = 4096
_clock_seconds: dict[str, int | None] = {}


def _seconds_of(clock: str) -> int | None:
    """'YYYY-MM-DD HH:MM:SS' read as local time (as parse_maltrail does), None if no such time;
    remembered, since a burst of datagrams shares a few seconds."""
    found = _clock_seconds.get(clock, False)
    if found is False:
        fields, _why = parse_maltrail_why('"%s.000000" s 1 2 3 4 5 6 7 8 9' % clock)
        found = None if fields is None else fields["ts_us"] // 1_000_000
        if len(_clock_seconds) >= _CLOCK_CACHE_MAX:
            _clock_seconds.clear()
        _clock_seconds[clock] = found
    return found


def _value(text: str):
    if text[0] == '"':
        text = text[1:-1].replace('""', '"')
    return None if text == "-" else text


def _fast_events(text: str, rule: SeverityRule) -> list[Event] | None:
    """The event of a common, well-formed datagram, or None: then the reference path decides."""
    m = _FAST_LINE.match(text)
    if m is None:
        return None
    epoch, clock, micros, sensor, src_ip, sport, dst_ip, dport, proto, typ, trail, info, reference = m.groups()
    seconds = _seconds_of(clock)        # checked even with an epoch: the reference refuses a bad time
    if seconds is None:
        return None
    if epoch is not None:
        seconds = int(epoch)
        if seconds > _MAX_EPOCH_S:
            return None
    if proto == "-" or typ == "-" or ip_key(src_ip) is None or ip_key(dst_ip) is None:
        return None
    src_port = None if sport == "-" else int(sport)
    dst_port = None if dport == "-" else int(dport)
    if (src_port or 0) > 65535 or (dst_port or 0) > 65535:
        return None
    trail = _value(trail)
    if trail is None:
        return None
    info = _value(info) or ""
    reference = _value(reference) or ""
    ts_us = seconds * 1_000_000 + int(micros)
    return [Event(ts_us, _value(sensor) or "", src_ip, src_port, dst_ip, dst_port, proto, typ, trail, info,
                  reference, rule.of(info, reference), 1, ts_us)]


def unsigned_payload(data: bytes, secret: bytes) -> tuple[bytes | None, str | None]:
    """The datagram inside a signed one ("MTS1 <32 hex> <datagram>", the hex being the first 16
    bytes of HMAC-SHA256(secret, datagram): events/forwarders/maltrail_server.py), checked against
    `secret`; (None, reason) when it is not signed with it. Without a secret, a signed datagram is
    refused (it cannot be checked) and an unsigned one passes."""
    signed = data.startswith(_SIGNED_PREFIX)
    if not secret:
        return (None, R_SIGNED) if signed else (data, None)
    if not signed:
        return None, R_UNSIGNED
    start = len(_SIGNED_PREFIX)
    presented, payload = data[start:start + 32], data[start + 33:]
    if data[start + 32:start + 33] != b" ":
        return None, R_BAD_SIGNATURE
    mac = hmac.new(secret, payload, hashlib.sha256).digest()[:16].hex().encode()
    if not hmac.compare_digest(mac, presented.lower()):
        return None, R_BAD_SIGNATURE
    return payload, None


def parse_datagram(data: bytes, rule: SeverityRule, secret: bytes = b"") -> tuple[list[Event], str | None]:
    """The events of one datagram, or ([], reason) when it is refused. Never raises. With a
    `secret` ([server] udp_secret) only datagrams signed with it are taken."""
    if secret or data.startswith(_SIGNED_PREFIX):
        data, why = unsigned_payload(data, secret)
        if data is None:
            return [], why
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return [], R_NOT_UTF8
    text = text.rstrip("\r\n")
    fast = _fast_events(text, rule)
    if fast is not None:
        return fast, None
    return parse_datagram_reference(text, rule)


def parse_datagram_reference(text: str, rule: SeverityRule) -> tuple[list[Event], str | None]:
    """parse_datagram's reference path, on the decoded text without its line terminator."""
    if not text.strip():
        return [], R_EMPTY
    epoch_s = None
    m = _EPOCH.match(text)
    if m is not None:
        epoch_s = int(m.group(1))
        if epoch_s > _MAX_EPOCH_S:
            return [], R_EPOCH
        text = text[m.end():]
    if not text.startswith('"'):
        return [], R_NO_EVENT_LINE
    fields, why = parse_maltrail_why(text)
    if fields is None:
        return [], why
    return _events(epoch_s, fields, rule)


def _events(epoch_s: int | None, fields: dict, rule: SeverityRule) -> tuple[list[Event], str | None]:
    if epoch_s is not None:
        ts_us = epoch_s * 1_000_000 + int(fields["time"][-6:])
    else:
        ts_us = fields["ts_us"]
    if fields["type"] is None or fields["trail"] is None or fields["proto"] is None:
        return [], R_MISSING
    info = fields["info"] or ""
    reference = fields["reference"] or ""
    record = Event(ts_us, fields["sensor"] or "", fields["src_ip"], fields["src_port"], fields["dst_ip"],
                   fields["dst_port"], fields["proto"], fields["type"], fields["trail"], info, reference,
                   rule.of(info, reference), 1, ts_us)
    try:
        return list(expand(record)), None
    except Unstorable as exc:
        return [], exc.reason


class IntakeCounters:
    """What became of every datagram: received = parsed + refused (by reason) + dropped (by
    reason: the store's backlog full, the store failing). Written by one thread at a time."""

    def __init__(self):
        self.datagrams = 0          # received from the socket
        self.parsed = 0             # datagrams that became events
        self.events = 0             # events they became (a condensed line is several)
        self.stored = 0             # events the store has made durable
        self.refused: collections.Counter = collections.Counter()    # written by the parse thread
        # Written by the receive loop (one writer per field): datagrams longer than the receive
        # buffer (refused as too_long), and receive errors (not datagrams: counted apart).
        self.too_long = 0
        self.socket_errors = 0
        self.dropped: collections.Counter = collections.Counter()
        self.batches = 0
        # Where the intake's time goes (CPU of the parse and store threads; the store's wall
        # time includes waiting for fsync): the first thing to look at when it falls behind.
        self.parse_cpu_s = 0.0
        self.store_cpu_s = 0.0
        self.store_wall_s = 0.0

    def refused_by_reason(self) -> dict:
        found = dict(self.refused)
        if self.too_long:
            found[R_TOO_LONG] = self.too_long
        return found

    def as_dict(self) -> dict:
        return {"datagrams": self.datagrams, "parsed": self.parsed, "events": self.events,
                "stored": self.stored, "refused": self.refused_by_reason(), "dropped": dict(self.dropped),
                "socket_errors": self.socket_errors,
                "batches": self.batches, "parse_cpu_s": round(self.parse_cpu_s, 3),
                "store_cpu_s": round(self.store_cpu_s, 3), "store_wall_s": round(self.store_wall_s, 3)}
