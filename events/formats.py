"""How an event is shown to people and other tools: Maltrail's event line, JSON lines and CSV.

Owns the text forms of an event and the parser of Maltrail's line. Must not read or write files
(events/log does) nor decide which events to show (events/tail.py does). Every function
returns one line without its line terminator.
"""

from __future__ import annotations

import csv
import datetime
import io
import json
import re
import time

from events.record import TYPE_DNS, TYPE_SNI, Event

# Maltrail's core/settings.py TIME_FORMAT; the line carries microseconds after it.
MALTRAIL_TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
MALTRAIL_FIELDS = ("time", "sensor", "src_ip", "src_port", "dst_ip", "dst_port", "proto", "type",
                   "trail", "info", "reference")
COLUMNS = ("time", "ts_us", "sensor", "src_ip", "src_port", "dst_ip", "dst_port", "proto", "type",
           "trail", "info", "reference", "severity", "count", "last_ts_us")

_CRLF = re.compile(r"[\r\n]")
_MALTRAIL_TIME = re.compile(r"^(\d{4})-(\d{2})-(\d{2}) (\d{2}):(\d{2}):(\d{2})\.(\d{6})\Z")
_DIGITS = re.compile(r"^[0-9]+\Z")


def safe_value(value) -> str:
    """One field of a Maltrail line, by Maltrail's rule (core/log.py safe_value): the value or
    '-' (so None, '' and a 0 port are '-'); CR/LF flattened to spaces first, so a field never
    spans lines; then quoted if it holds a space or a double quote, inner quotes doubled."""
    text = str(value or "-")
    text = _CRLF.sub(" ", text)
    if " " in text or '"' in text:
        text = '"%s"' % text.replace('"', '""')
    return text


def maltrail_time(ts_us: int) -> str:
    """Local time with microseconds, as Maltrail writes it: 'YYYY-MM-DD HH:MM:SS.ffffff'."""
    seconds, micros = divmod(ts_us, 1_000_000)
    return "%s.%06d" % (time.strftime(MALTRAIL_TIME_FORMAT, time.localtime(seconds)), micros)


def maltrail_type(event_type: str) -> str:
    # Maltrail has no SNI type: it logs TLS/QUIC server names as DNS, and tools reading its
    # logs expect that.
    return TYPE_DNS if event_type == TYPE_SNI else event_type


def format_maltrail(event: Event) -> str:
    """Maltrail's event line, byte for byte what Maltrail's core/log.py log_event writes."""
    fields = (maltrail_time(event.ts_us), event.sensor, event.src_ip, event.src_port,
              event.dst_ip, event.dst_port, event.proto, maltrail_type(event.type), event.trail,
              event.info, event.reference)
    return " ".join(safe_value(v) for v in fields)


def _split_maltrail(line: str) -> list[str] | None:
    """The fields of a Maltrail line with the quoting undone, or None if the quoting is broken."""
    fields = []
    i, n = 0, len(line)
    while True:
        if i < n and line[i] == '"':
            chunks = []
            i += 1
            while True:
                j = line.find('"', i)
                if j < 0:
                    return None                     # unterminated quote
                chunks.append(line[i:j])
                if j + 1 < n and line[j + 1] == '"':
                    chunks.append('"')              # a doubled quote inside the field
                    i = j + 2
                    continue
                i = j + 1
                break
            fields.append("".join(chunks))
            if i == n:
                return fields
            if line[i] != " ":
                return None                         # text glued to a closing quote
            i += 1
        else:
            j = line.find(" ", i)
            field = line[i:] if j < 0 else line[i:j]
            if not field or '"' in field:
                return None                         # an empty field or a stray quote
            fields.append(field)
            if j < 0:
                return fields
            i = j + 1


def parse_maltrail(line: str) -> dict | None:
    """The fields of a Maltrail event line (the inverse of format_maltrail), or None if the line
    is not one. '-' becomes None; decimal ports become ints (a condensed list such as
    '50000,50001' stays text); ts_us is the time read as local time (in the repeated hour when
    clocks go back, the first of the two readings)."""
    return parse_maltrail_why(line)[0]


# Why parse_maltrail_why refused a line: short words, used as counter labels by the server.
WHY_QUOTING = "quoting"          # an unterminated quote, text glued to one, an empty field
WHY_FIELD_COUNT = "field_count"  # not the 11 fields of MALTRAIL_FIELDS
WHY_TIME = "time"                # the first field is not 'YYYY-MM-DD HH:MM:SS.ffffff', or no such time


def parse_maltrail_why(line: str) -> tuple[dict | None, str | None]:
    """parse_maltrail, and when the line is refused, why: (fields, None) or (None, WHY_*)."""
    fields = _split_maltrail(line.rstrip("\r\n"))
    if fields is None:
        return None, WHY_QUOTING
    if len(fields) != len(MALTRAIL_FIELDS):
        return None, WHY_FIELD_COUNT
    m = _MALTRAIL_TIME.match(fields[0])
    if m is None:
        return None, WHY_TIME
    year, month, day, hour, minute, second, micros = (int(g) for g in m.groups())
    try:
        datetime.datetime(year, month, day, hour, minute, second)
        seconds = int(time.mktime((year, month, day, hour, minute, second, 0, 0, -1)))
    except (ValueError, OverflowError):
        return None, WHY_TIME
    parsed: dict = {"time": fields[0], "ts_us": seconds * 1_000_000 + micros}
    for name, value in zip(MALTRAIL_FIELDS[1:], fields[1:]):
        if value == "-":
            parsed[name] = None
        elif name in ("src_port", "dst_port") and _DIGITS.match(value):
            parsed[name] = int(value)
        else:
            parsed[name] = value
    return parsed, None


def iso_time(ts_us: int) -> str:
    """ISO 8601 local time with microseconds and UTC offset, e.g. 2026-11-24T04:48:28.209106+01:00."""
    seconds, micros = divmod(ts_us, 1_000_000)
    # From an aware UTC instant, so the offset is right in the repeated hour too.
    local = datetime.datetime.fromtimestamp(seconds, tz=datetime.timezone.utc).astimezone()
    return local.replace(microsecond=micros).isoformat(timespec="microseconds")


def _row(event: Event) -> list:
    return [iso_time(event.ts_us), event.ts_us, event.sensor, event.src_ip, event.src_port or None,
            event.dst_ip, event.dst_port or None, event.proto, event.type, event.trail, event.info,
            event.reference, event.severity, event.count, event.last_ts_us]


def format_json(event: Event) -> str:
    """One JSON object (one line: newlines inside values are escaped), keys in COLUMNS order."""
    return json.dumps(dict(zip(COLUMNS, _row(event))), ensure_ascii=False)


def _csv_line(values) -> str:
    buf = io.StringIO()
    # RFC 4180's CRLF terminator, then cut off: the csv module quotes a field holding a character
    # of the terminator, so an empty terminator would leave a newline in a value unquoted.
    csv.writer(buf, lineterminator="\r\n").writerow(values)
    return buf.getvalue()[:-2]


def format_csv(event: Event) -> str:
    """One RFC 4180 record, columns as CSV_HEADER; an absent port is an empty field. A value
    holding a newline is quoted, so the record may span lines (csv.reader reads it whole)."""
    return _csv_line(_row(event))


CSV_HEADER = _csv_line(COLUMNS)

FORMATS = {
    "maltrail": format_maltrail,
    "json": format_json,
    "csv": format_csv,
}
