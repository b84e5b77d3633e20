"""What a detection looks like once it leaves a worker: the event record.

Owns the field list, the event types, how an event becomes the msgpack record stored in the
log, and the severity rule every event is classified by when it is made. Must not know how
events are written, forwarded or displayed.
"""

from __future__ import annotations

import re
from typing import NamedTuple

# Event types. Maltrail's names (core/enums.py TRAIL) where Maltrail has one; SNI is ours: a TLS or
# QUIC server name matched against a domain trail (Maltrail logs those as DNS, which the Maltrail
# line format keeps doing for compatibility).
TYPE_IP = "IP"
TYPE_IPORT = "IPORT"
TYPE_DNS = "DNS"
TYPE_URL = "URL"
TYPE_UA = "UA"
TYPE_HTTP = "HTTP"
TYPE_SNI = "SNI"
TYPE_PORT = "PORT"
TYPE_PATH = "PATH"
# CERT is ours too: the SHA-1 of a TLS server certificate matched against a certificate trail
# (Maltrail's Python sensor has no certificate trails; the Maltrail line writes CERT as is).
TYPE_CERT = "CERT"

SEVERITIES = ("low", "medium", "high")


class Event(NamedTuple):
    ts_us: int               # packet timestamp (first occurrence), microseconds since the epoch
    sensor: str
    src_ip: str
    src_port: int | None     # None where the protocol has no ports (ICMP): '-' in Maltrail lines
    dst_ip: str
    dst_port: int | None
    proto: str               # "TCP", "UDP", "ICMP", "ICMPV6", ...
    type: str                # one of the TYPE_* above
    trail: str
    info: str
    reference: str
    severity: str            # "low" | "medium" | "high"
    count: int = 1           # identical events condensed into this record
    last_ts_us: int = 0      # packet timestamp of the last condensed occurrence (== ts_us if count 1)

    def to_record(self) -> list:
        """The msgpack form: a flat list in field order (see RECORD_FIELDS)."""
        return list(self)

    @classmethod
    def from_record(cls, record) -> "Event":
        if not isinstance(record, (list, tuple)) or len(record) != len(RECORD_FIELDS):
            raise ValueError("not an event record: %r" % (record,))
        return cls(*record)


RECORD_FIELDS = Event._fields


# Severity: one rule for every output (the log, tail, CEF, Logstash, ECS, webhooks, console), applied
# once, when the event is made, by Maltrail's REMOTE_SEVERITY_REGEX convention (core/log.py
# severity_of): the regular expression is searched in "<info> <reference>"; of the named groups
# low, medium and high, the first in that order that took part in the match names the severity;
# no match (or no regular expression at all) is medium. `[all] severity_regex` configures it.
#
# The default says what this project's rule has always said, with no change to any event: a
# confirmed-bad label (malware, ransomware, botnet, C&C, sinkhole, backdoor, a RAT) or a custom trail
# is high; a reputation or noise label, or the sensor's own guess (a heuristic), is low; the rest is
# medium. Its shape follows from re.search taking the leftmost match: every alternative starts at
# \A, so the high ones, written first, win whenever they hold. A label word counts only in the
# info, so the text is split where the reference begins: at the last " (" when the text ends in
# one parenthesised group ("(static)", "(custom)", "(remote custom)", "(heuristic)"), else at the
# last space (a feed's name). Case does not matter in the label, and does in the reference, which
# must be exactly "(custom)" or "(heuristic)". (Only a reference that holds a space and does not
# end in a parenthesised group can be split wrongly; no trail source writes one.)
_REF_GROUP = r"\([^()]*\)"
_HIGH_WORDS = r"malware|ransomware|botnet|c&c|c2 |\(c2\)|sinkhole|backdoor|rat\)"
_LOW_WORDS = (r"reputation|attacker|scanner|crawler|spammer|abuser|bad history|compromised|parking|parked"
              r"|tor exit|dynamic|free web|known")


def _in_info(words: str) -> str:
    # A word of `words` that ends before the reference begins (see above).
    return (r"(?=.* %(g)s\Z).*?(?:%(w)s).* %(g)s|(?!.* %(g)s\Z).*?(?:%(w)s).* .*"
            % {"g": _REF_GROUP, "w": words})


DEFAULT_SEVERITY_REGEX = (r"(?is)\A(?:(?P<high>%s|.* (?-i:\(custom\)))|(?P<low>%s|.* (?-i:\(heuristic\))))\Z"
                          % (_in_info(_HIGH_WORDS), _in_info(_LOW_WORDS)))
SEVERITY_GROUPS = ("low", "medium", "high")
_SEVERITY_CACHE_MAX = 4096


class SeverityRule:
    """A compiled severity rule (see above); `of(info, reference)` is the event's severity.

    Compiled once, where the configuration is read, and handed to the workers with their spec:
    never a regular expression compiled per packet. The answers for the (info, reference) pairs
    seen are kept (trail labels are few; at most _SEVERITY_CACHE_MAX, then started afresh)."""

    def __init__(self, pattern: str = DEFAULT_SEVERITY_REGEX):
        self.pattern = pattern
        self._regex = re.compile(pattern) if pattern else None
        self._known: dict[tuple[str, str], str] = {}

    def of(self, info: str, reference: str) -> str:
        key = (info, reference)
        found = self._known.get(key)
        if found is None:
            found = "medium"
            if self._regex is not None:
                match = self._regex.search("%s %s" % (info or "", reference or ""))
                if match is not None:
                    groups = match.groupdict()     # a rule may leave a group out
                    for name in SEVERITY_GROUPS:
                        if groups.get(name):
                            found = name
                            break
            if len(self._known) >= _SEVERITY_CACHE_MAX:
                self._known.clear()
            self._known[key] = found
        return found

    def __getstate__(self):
        return self.pattern

    def __setstate__(self, pattern):
        self.__init__(pattern)


DEFAULT_SEVERITY = SeverityRule()


def severity_of(info: str, reference: str, rule: SeverityRule | None = None) -> str:
    """The severity of an event with this info and reference under `rule` (the default rule
    when None)."""
    return (rule or DEFAULT_SEVERITY).of(info, reference)
