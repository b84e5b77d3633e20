"""What a detection looks like once it leaves a worker: the event record.

Owns the field list, the event types and how an event becomes the msgpack record stored in the
log. Must not know how events are written, forwarded or displayed (engine/ does that).
"""

from __future__ import annotations

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


# Severity from the trail's labels. Maltrail classifies with REMOTE_SEVERITY_REGEX at forwarding
# time; we classify once, when the event is made, with the same idea: a confirmed-bad label is
# high, a reputation/noise label or the sensor's own guess is low, everything else medium.
_HIGH = ("malware", "ransomware", "botnet", "c&c", "c2 ", "(c2)", "sinkhole", "backdoor", "rat)")
_LOW = ("reputation", "attacker", "scanner", "crawler", "spammer", "abuser", "bad history",
        "compromised", "parking", "parked", "tor exit", "dynamic", "free web", "known")


def severity_of(info: str, reference: str) -> str:
    text = info.lower()
    if any(k in text for k in _HIGH) or reference == "(custom)":
        return "high"
    if reference == "(heuristic)" or any(k in text for k in _LOW):
        return "low"
    return "medium"
