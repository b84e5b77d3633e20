"""The logic of the `tail` command: print the events of a log directory, optionally following it.

Owns reading the user's time bounds (--since/--until) and count (-n), deciding what is printed
first, and turning the event log into lines on a stream. Must not parse command-line arguments
(the CLI does and calls run_tail) nor know the log's byte layout (events/log does).

What is printed: the events --since/--until select, all of them (as `tail` always did, and as
`--since` users rely on), or with -n N only the last N of them. `tail -f` prints the last 10 and
then follows, like coreutils' tail, unless -n or --since says where to start (-n 0: new events
only; --since without -n: everything since then). "Last" is the order tail prints: day files by
date, events in the order they were written.
"""

from __future__ import annotations

import datetime
import os
import re
import sys
import time

from events.log import EventLogReader
from events.formats import CSV_HEADER, FORMATS

EXIT_OK = 0
EXIT_USAGE = 2
FOLLOW_LINES = 10       # tail -f without -n or --since: coreutils' default

ACCEPTED_TIME_FORMS = (
    "YYYY-MM-DD, 'YYYY-MM-DD HH:MM[:SS[.ffffff]]' or YYYY-MM-DDTHH:MM[:SS[.ffffff]] "
    "(local time, or with a Z or +HH:MM offset), @EPOCH_SECONDS or epoch seconds of 9+ digits, "
    "or an age: 30s, 15m, 2h, 1d, 1w"
)

_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_RELATIVE = re.compile(r"^(\d+)\s*([smhdw])\Z")
_EPOCH = re.compile(r"^(?:@(-?\d+)|(\d{9,}))(?:\.(\d{1,6}))?\Z")
_DATETIME = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})"
    r"(?:[T ](\d{2}):(\d{2})(?::(\d{2})(?:\.(\d{1,6}))?)?)?"
    r"\s*(Z|[+-]\d{2}(?::?\d{2})?)?\Z",
    re.IGNORECASE,
)
_EPOCH_ORDINAL = datetime.date(1970, 1, 1).toordinal()


def _invalid(value: str) -> ValueError:
    return ValueError("invalid time %r; accepted forms: %s" % (value, ACCEPTED_TIME_FORMS))


def _micros(fraction: str | None) -> int:
    return int(fraction.ljust(6, "0")) if fraction else 0


def parse_time(value: str, now: float | None = None) -> int:
    """A point in time given by a user, in microseconds since the epoch.

    Raises ValueError naming the accepted forms; unlike the parse_* of packet decoding this reads
    a user's option, where an error message is the useful answer.
    """
    text = value.strip() if isinstance(value, str) else ""
    m = _RELATIVE.match(text)
    if m:
        if now is None:
            now = time.time()
        return round(now * 1_000_000) - int(m.group(1)) * _UNIT_S[m.group(2)] * 1_000_000
    m = _EPOCH.match(text)
    if m:
        whole = m.group(1) if m.group(1) is not None else m.group(2)
        seconds = int(whole)
        micros = _micros(m.group(3))
        return seconds * 1_000_000 + (-micros if whole.startswith("-") else micros)
    m = _DATETIME.match(text)
    if not m:
        raise _invalid(value)
    year, month, day = int(m.group(1)), int(m.group(2)), int(m.group(3))
    hour = int(m.group(4) or 0)
    minute = int(m.group(5) or 0)
    second = int(m.group(6) or 0)
    micros = _micros(m.group(7))
    zone = m.group(8)
    try:
        date = datetime.date(year, month, day)
        datetime.time(hour, minute, second)
    except ValueError:
        raise _invalid(value) from None
    if zone is None:
        try:
            seconds = int(time.mktime((year, month, day, hour, minute, second, 0, 0, -1)))
        except (OverflowError, ValueError):
            raise _invalid(value) from None
    else:
        offset_s = 0
        if zone.upper() != "Z":
            digits = zone[1:].replace(":", "")
            offset_h, offset_m = int(digits[:2]), int(digits[2:] or 0)
            if offset_h > 23 or offset_m > 59:
                raise _invalid(value)
            offset_s = (offset_h * 3600 + offset_m * 60) * (-1 if zone[0] == "-" else 1)
        seconds = ((date.toordinal() - _EPOCH_ORDINAL) * 86400 + hour * 3600 + minute * 60 + second
                   - offset_s)
    return seconds * 1_000_000 + micros


def parse_count(value) -> int:
    """A user's -n: a count of events, 0 or more. Raises ValueError saying so."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    text = value.strip() if isinstance(value, str) else ""
    if not text.isdigit() or not text.isascii():
        # coreutils' `-n +N` (from the Nth line on) is not supported: refuse it rather than
        # print the last N, which would surprise whoever meant the other thing.
        raise ValueError("invalid count %r for -n: give the number of last events to print "
                         "(0 or more)" % (value,))
    return int(text)


def _bound(value) -> int | None:
    if value is None or isinstance(value, int):
        return value
    return parse_time(value)


def run_tail(log_dir: str, follow: bool = False, since=None, until=None, fmt: str = "maltrail",
             out=None, stop=None, err=None, poll_s: float = 0.2, lines=None) -> int:
    """Print the events of log_dir (those with since <= ts_us <= until) one per line in `fmt`;
    with lines=N only the last N of them; with follow, keep printing new ones until
    KeyboardInterrupt or `stop` is set (first the last FOLLOW_LINES when neither lines nor since
    is given).

    since/until are parse_time strings or microseconds, lines a count (int or string). Returns the
    exit code: 0, or 2 with a message on err (stderr) for a missing log directory, a bad time or
    count, or an unknown format.
    """
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    formatter = FORMATS.get(fmt)
    if formatter is None:
        err.write("tail: unknown format %r (choose from %s)\n" % (fmt, ", ".join(sorted(FORMATS))))
        return EXIT_USAGE
    try:
        since_us = _bound(since)
        until_us = _bound(until)
        count = None if lines is None else parse_count(lines)
    except ValueError as exc:
        err.write("tail: %s\n" % exc)
        return EXIT_USAGE
    if count is None and follow and since_us is None:
        count = FOLLOW_LINES
    if not os.path.isdir(log_dir):
        err.write("tail: log directory %s does not exist (is the sensor writing elsewhere? see "
                  "log_dir in maltrail.toml)\n" % log_dir)
        return EXIT_USAGE

    reader = EventLogReader()
    newline = "\r\n" if fmt == "csv" else "\n"     # RFC 4180 records end in CRLF
    try:
        if fmt == "csv":
            out.write(CSV_HEADER + newline)
        start = None
        if count is not None:
            # Only the newest pairs are decompressed; follow goes on where this left off.
            last, start = reader.last(log_dir, count, since_us=since_us, until_us=until_us)
            for event in last:
                out.write(formatter(event) + newline)
        if follow:
            out.flush()
            for event in reader.follow(log_dir, since_us=since_us, poll_s=poll_s, stop=stop,
                                       until_us=until_us, start=start):
                out.write(formatter(event) + newline)
                out.flush()     # someone is watching: show each event as it arrives
        else:
            if count is None:
                for event in reader.iter_dir(log_dir, since_us=since_us, until_us=until_us):
                    out.write(formatter(event) + newline)
            out.flush()
    except KeyboardInterrupt:
        pass
    except BrokenPipeError:
        # The reader went away (`| head`): not an error. Point stdout at /dev/null so the
        # interpreter's final flush does not complain.
        if out is sys.stdout:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)
        return EXIT_OK
    if reader.corrupt_frames:
        err.write("tail: skipped %d damaged frame(s) in %s%s\n" % (
            reader.corrupt_frames, log_dir,
            "; %d of them inside other damage were not read again (a file this damaged is best "
            "examined on its own)" % reader.unchecked_frames if reader.unchecked_frames else ""))
    return EXIT_OK
