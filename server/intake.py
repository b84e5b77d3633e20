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
  port list ("80,443", as Maltrail writes when it condenses events) becomes one event per port,
  pairing the lists position by position when both sides are lists of one length.
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
from events.record import Event, SeverityRule
from server.addresses import ip_key

MAX_PORTS_PER_LINE = 1024

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
R_EMPTY = "empty"
R_TOO_LONG = "too_long"                 # longer than the receive buffer (server/recv.py): cut by the kernel
REASONS = (R_EMPTY, R_TOO_LONG, R_NOT_UTF8, R_NO_EVENT_LINE, R_SIGNED, R_UNSIGNED, R_BAD_SIGNATURE, R_EPOCH, "quoting", "field_count", "time",
           R_ADDRESS, R_PORT, R_MISSING)

_SIGNED_PREFIX = b"MTS1 "
_EPOCH = re.compile(r"\A([0-9]{1,12}) ")
_MAX_EPOCH_S = 253402300799             # 9999-12-31T23:59:59Z


def _ports(value) -> list | None:
    """[port] or [None] or the list of a condensed field; None when malformed."""
    if value is None:
        return [None]
    if isinstance(value, int):
        return [value] if value <= 65535 else None
    parts = value.split(",")
    if len(parts) > MAX_PORTS_PER_LINE:
        return None
    found = []
    for part in parts:
        if not part.isascii() or not part.isdigit() or int(part) > 65535:
            return None
        found.append(int(part))
    return found


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
    src_ip, dst_ip = fields["src_ip"], fields["dst_ip"]
    if ip_key(src_ip) is None or ip_key(dst_ip) is None:
        return [], R_ADDRESS
    if fields["type"] is None or fields["trail"] is None or fields["proto"] is None:
        return [], R_MISSING
    src_ports, dst_ports = _ports(fields["src_port"]), _ports(fields["dst_port"])
    if src_ports is None or dst_ports is None:
        return [], R_PORT
    if len(src_ports) == len(dst_ports):
        pairs = list(zip(src_ports, dst_ports))
    elif len(src_ports) == 1:
        pairs = [(src_ports[0], p) for p in dst_ports]
    elif len(dst_ports) == 1:
        pairs = [(p, dst_ports[0]) for p in src_ports]
    else:
        return [], R_PORT
    info = fields["info"] or ""
    reference = fields["reference"] or ""
    severity = rule.of(info, reference)
    sensor = fields["sensor"] or ""
    return [Event(ts_us, sensor, src_ip, sp, dst_ip, dp, fields["proto"], fields["type"], fields["trail"],
                  info, reference, severity, 1, ts_us) for sp, dp in pairs], None


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
