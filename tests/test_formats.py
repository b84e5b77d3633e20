"""Output formats (Maltrail line, JSON lines, CSV) and the time bounds `tail` accepts."""

from __future__ import annotations

import calendar
import csv
import io
import json
import re
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from events.formats import (
    COLUMNS,
    CSV_HEADER,
    FORMATS,
    format_csv,
    format_json,
    format_maltrail,
    parse_maltrail,
    safe_value,
)
from events.tail import parse_time
from events.record import SEVERITIES, TYPE_DNS, TYPE_IP, TYPE_SNI, TYPE_URL, Event
from tests.conftest import pinned_tz

CET = "CET-1CEST,M3.5.0,M10.5.0/3"    # UTC+1 in November, UTC+2 in summer; no tzdata needed


@pytest.fixture(autouse=True)
def cet():
    with pinned_tz(CET):
        yield


def utc_us(*fields, micros: int = 0) -> int:
    return calendar.timegm(fields) * 1_000_000 + micros


def event(ts_us=0, sensor="parity", src_ip="10.0.0.66", src_port=50000, dst_ip="8.8.8.8",
          dst_port=53, proto="UDP", type=TYPE_DNS, trail="evil-test-domain.com",
          info="malware (test)", reference="(static)", severity="high", count=1, last_ts_us=None):
    return Event(ts_us, sensor, src_ip, src_port, dst_ip, dst_port, proto, type, trail, info,
                 reference, severity, count, ts_us if last_ts_us is None else last_ts_us)


# -- Maltrail line -------------------------------------------------------------------------------

def test_maltrail_examples_byte_for_byte():
    # Maltrail wrote these at 04:48 local time on a CET machine, i.e. 03:48 UTC.
    dns = event(utc_us(2026, 11, 24, 3, 48, 28, micros=209106))
    assert format_maltrail(dns) == (
        '"2026-11-24 04:48:28.209106" parity 10.0.0.66 50000 8.8.8.8 53 UDP DNS '
        'evil-test-domain.com "malware (test)" (static)')
    icmp = event(utc_us(2026, 11, 24, 3, 48, 52, micros=594577), src_port=None, dst_ip="66.66.66.66",
                 dst_port=None, proto="ICMP", type=TYPE_IP, trail="66.66.66.66")
    assert format_maltrail(icmp) == (
        '"2026-11-24 04:48:52.594577" parity 10.0.0.66 - 66.66.66.66 - ICMP IP 66.66.66.66 '
        '"malware (test)" (static)')


def test_maltrail_line_uses_local_time_and_writes_sni_as_dns():
    summer = event(utc_us(2026, 7, 1, 21, 59, 59, micros=5), type=TYPE_SNI, trail="tls.example")
    assert format_maltrail(summer).startswith('"2026-07-01 23:59:59.000005" parity ')
    assert " UDP DNS tls.example " in format_maltrail(summer)
    with pinned_tz("UTC"):
        assert format_maltrail(summer).startswith('"2026-07-01 21:59:59.000005" ')


@pytest.mark.parametrize("value, written", [
    ("plain", "plain"),
    ("with space", '"with space"'),
    ('say "hi"', '"say ""hi"""'),
    ('"', '""""'),
    ("two\nlines", '"two lines"'),
    ("cr\r\nlf", '"cr  lf"'),
    ("\n", '" "'),                        # flattened first, so it is quoted, never a bare space
    ("", "-"),
    (None, "-"),
    (0, "-"),                             # a 0 port, as Maltrail writes it
    (53, "53"),
    ("-", "-"),
    ("tab\there", "tab\there"),           # only spaces and quotes need quoting
])
def test_safe_value_follows_maltrail(value, written):
    assert safe_value(value) == written


def test_quoting_inside_a_whole_line():
    e = event(utc_us(2026, 11, 24, 3, 0, 0), sensor="", src_port=0, trail='a "b"\nc', info="",
              reference=None)
    assert format_maltrail(e) == ('"2026-11-24 04:00:00.000000" - 10.0.0.66 - 8.8.8.8 53 UDP DNS '
                                  '"a ""b"" c" - -')


def test_parse_maltrail_reads_quoting_back():
    line = ('"2026-11-24 04:48:28.209106" parity 10.0.0.66 50000,50001 8.8.8.8 - UDP URL '
            '"x ""y"" z" "malware (test)" (static)\n')
    assert parse_maltrail(line) == {
        "time": "2026-11-24 04:48:28.209106", "ts_us": utc_us(2026, 11, 24, 3, 48, 28, micros=209106),
        "sensor": "parity", "src_ip": "10.0.0.66", "src_port": "50000,50001", "dst_ip": "8.8.8.8",
        "dst_port": None, "proto": "UDP", "type": "URL", "trail": 'x "y" z',
        "info": "malware (test)", "reference": "(static)",
    }


@pytest.mark.parametrize("line", [
    "",
    "not a line",
    '"2026-11-24 04:48:28.209106" parity 10.0.0.66 50000 8.8.8.8 53 UDP DNS trail "info" ',
    '"2026-11-24 04:48:28.209106" parity 10.0.0.66 50000 8.8.8.8 53 UDP DNS trail "info (static)',
    '"2026-11-24 04:48:28.209106" parity 10.0.0.66 50000 8.8.8.8 53 UDP DNS trail "info"x (static)',
    '"2026-11-24 04:48:28.209106" parity 10.0.0.66 50000 8.8.8.8 53 UDP DNS trail a"b (static)',
    '"2026-11-24 04:48:28.209106" parity 10.0.0.66  8.8.8.8 53 UDP DNS trail info (static)',
    '"2026-11-24 04:48:28.209106" parity 10.0.0.66 50000 8.8.8.8 53 UDP DNS trail info',
    '"2026-11-24 04:48:28.209106" parity 10.0.0.66 50000 8.8.8.8 53 UDP DNS trail info ref extra',
    '"2026-02-30 04:48:28.209106" parity 10.0.0.66 50000 8.8.8.8 53 UDP DNS trail info ref',
    '"2026-11-24 04:48:28" parity 10.0.0.66 50000 8.8.8.8 53 UDP DNS trail info ref',
])
def test_parse_maltrail_rejects_what_is_not_a_line(line):
    assert parse_maltrail(line) is None


def _maltrail_text(value):
    """What a text field reads back as after a trip through the Maltrail line."""
    if not value:
        return None
    text = re.sub(r"[\r\n]", " ", str(value))
    return None if text == "-" else text


texts = st.text(max_size=30)
ports = st.one_of(st.none(), st.integers(0, 65535))
events = st.builds(
    Event,
    ts_us=st.integers(0, utc_us(2100, 1, 1, 0, 0, 0)),
    sensor=texts, src_ip=texts, src_port=ports, dst_ip=texts, dst_port=ports, proto=texts,
    type=st.sampled_from([TYPE_DNS, TYPE_IP, TYPE_SNI, TYPE_URL, "", "X Y"]),
    trail=texts, info=texts, reference=texts,
    severity=st.sampled_from(SEVERITIES), count=st.integers(1, 10**6),
    last_ts_us=st.integers(0, utc_us(2100, 1, 1, 0, 0, 0)),
)


@settings(max_examples=300, deadline=None)
@given(events)
def test_parse_maltrail_inverts_format_maltrail(e):
    with pinned_tz("UTC"):      # no repeated hour, so local time reads back exactly
        line = format_maltrail(e)
        assert "\n" not in line and "\r" not in line
        parsed = parse_maltrail(line)
    assert parsed is not None, line
    assert parsed["ts_us"] == e.ts_us
    for name in ("sensor", "src_ip", "dst_ip", "proto", "trail", "info", "reference"):
        assert parsed[name] == _maltrail_text(getattr(e, name)), name
    for name in ("src_port", "dst_port"):
        assert parsed[name] == (getattr(e, name) or None)
    assert parsed["type"] == _maltrail_text(TYPE_DNS if e.type == TYPE_SNI else e.type)


def test_maltrail_corpus_lines_reformat_byte_for_byte(maltrail_corpus):
    # Every line Maltrail's own sensor wrote, parsed and written again by us.
    lines = [line for path in sorted((maltrail_corpus / "expected").glob("*.log"))
             for line in path.read_text(encoding="utf-8").splitlines() if line]
    assert len(lines) > 20
    with pinned_tz("UTC"):
        for line in lines:
            p = parse_maltrail(line)
            assert p is not None, line
            again = Event(p["ts_us"], p["sensor"], p["src_ip"], p["src_port"], p["dst_ip"],
                          p["dst_port"], p["proto"], p["type"], p["trail"], p["info"],
                          p["reference"], "high")
            assert format_maltrail(again) == line


# -- JSON and CSV --------------------------------------------------------------------------------

def test_json_line_has_the_columns_in_order():
    e = event(utc_us(2026, 11, 24, 3, 48, 52, micros=594577), src_port=None, dst_port=None,
              proto="ICMP", type=TYPE_SNI, info='line\nbreak "quoted"', count=3,
              last_ts_us=utc_us(2026, 11, 24, 3, 49, 0))
    line = format_json(e)
    assert "\n" not in line
    obj = json.loads(line)
    assert tuple(obj) == COLUMNS
    assert obj["time"] == "2026-11-24T04:48:52.594577+01:00"
    assert (obj["src_port"], obj["dst_port"]) == (None, None)
    assert obj["type"] == TYPE_SNI           # JSON keeps our own type; only the Maltrail line maps it
    assert [obj[k] for k in COLUMNS[1:]] == list(e)      # the record's own field order


def test_json_time_carries_the_offset_in_force():
    summer = event(utc_us(2026, 7, 1, 12, 0, 0))
    assert json.loads(format_json(summer))["time"] == "2026-07-01T14:00:00.000000+02:00"
    with pinned_tz("UTC"):
        assert json.loads(format_json(summer))["time"] == "2026-07-01T12:00:00.000000+00:00"


@settings(max_examples=200, deadline=None)
@given(events)
def test_json_and_csv_round_trip(e):
    obj = json.loads(format_json(e))
    assert list(obj) == list(COLUMNS)
    assert obj["ts_us"] == e.ts_us and obj["count"] == e.count and obj["last_ts_us"] == e.last_ts_us
    for name in ("sensor", "src_ip", "dst_ip", "proto", "type", "trail", "info", "reference",
                 "severity"):
        assert obj[name] == getattr(e, name)
    assert (obj["src_port"], obj["dst_port"]) == (e.src_port or None, e.dst_port or None)

    rows = list(csv.reader(io.StringIO(CSV_HEADER + "\r\n" + format_csv(e) + "\r\n", newline="")))
    assert rows[0] == list(COLUMNS)
    assert len(rows) == 2
    row = dict(zip(COLUMNS, rows[1]))
    assert row["time"] == obj["time"]
    for name in ("sensor", "src_ip", "dst_ip", "proto", "type", "trail", "info", "reference",
                 "severity"):
        assert row[name] == getattr(e, name)
    for name in ("ts_us", "count", "last_ts_us"):
        assert int(row[name]) == getattr(e, name)
    assert (row["src_port"], row["dst_port"]) == (str(e.src_port or ""), str(e.dst_port or ""))


def test_csv_quotes_what_needs_quoting():
    e = event(utc_us(2026, 11, 24, 3, 0, 0), trail="a,b", info='say "hi"', src_port=None)
    assert CSV_HEADER.split(",") == list(COLUMNS)
    assert format_csv(e) == ('2026-11-24T04:00:00.000000+01:00,%d,parity,10.0.0.66,,8.8.8.8,53,UDP,DNS,'
                             '"a,b","say ""hi""",(static),high,1,%d' % (e.ts_us, e.ts_us))


def test_formats_table():
    assert FORMATS == {"maltrail": format_maltrail, "json": format_json, "csv": format_csv}


# -- parse_time ----------------------------------------------------------------------------------

NOW = utc_us(2026, 11, 24, 12, 0, 0) / 1_000_000


@pytest.mark.parametrize("text, expected", [
    ("2026-11-24", utc_us(2026, 11, 23, 23, 0, 0)),                      # local midnight
    ("2026-11-24 04:48", utc_us(2026, 11, 24, 3, 48, 0)),
    ("2026-11-24 04:48:28", utc_us(2026, 11, 24, 3, 48, 28)),
    ("2026-11-24 04:48:28.209106", utc_us(2026, 11, 24, 3, 48, 28, micros=209106)),
    ("2026-11-24 04:48:28.2", utc_us(2026, 11, 24, 3, 48, 28, micros=200000)),
    ("2026-11-24T04:48:28.209106", utc_us(2026, 11, 24, 3, 48, 28, micros=209106)),
    ("2026-07-01T04:48", utc_us(2026, 7, 1, 2, 48, 0)),                  # summer time: UTC+2
    ("2026-11-24T04:48:28Z", utc_us(2026, 11, 24, 4, 48, 28)),
    ("2026-11-24t04:48:28z", utc_us(2026, 11, 24, 4, 48, 28)),
    ("2026-11-24T04:48:28+05:30", utc_us(2026, 11, 23, 23, 18, 28)),
    ("2026-11-24 04:48:28.5 -0800", utc_us(2026, 11, 24, 12, 48, 28, micros=500000)),
    ("2026-11-24T04:48-03", utc_us(2026, 11, 24, 7, 48, 0)),
    ("@1700000000", 1_700_000_000_000_000),
    ("@1700000000.25", 1_700_000_000_250_000),
    ("@0", 0),
    ("1700000000", 1_700_000_000_000_000),
    ("  1700000000.000001 ", 1_700_000_000_000_001),
    ("30s", utc_us(2026, 11, 24, 11, 59, 30)),
    ("15m", utc_us(2026, 11, 24, 11, 45, 0)),
    ("2h", utc_us(2026, 11, 24, 10, 0, 0)),
    ("1d", utc_us(2026, 11, 23, 12, 0, 0)),
    ("1w", utc_us(2026, 11, 17, 12, 0, 0)),
    ("0s", utc_us(2026, 11, 24, 12, 0, 0)),
])
def test_parse_time_accepted_forms(text, expected):
    assert parse_time(text, now=NOW) == expected


def test_parse_time_relative_defaults_to_now():
    before = time.time()
    got = parse_time("1h")
    after = time.time()
    assert (before - 3600) * 1e6 - 1 <= got <= (after - 3600) * 1e6 + 1


@pytest.mark.parametrize("text", [
    "", "   ", "yesterday", "2026-02-30", "2026-11-24 25:00", "2026-11-24 04:60", "2026-11-24 4:48",
    "2026-11-24T04:48:28+25:00", "2026-11-24T04:48:28.1234567", "12345678", "1.5", "@", "@x",
    "10x", "-5m", "5 minutes", "2026/11/24", "26-11-24",
])
def test_parse_time_rejects_with_the_accepted_forms(text):
    with pytest.raises(ValueError) as info:
        parse_time(text, now=NOW)
    message = str(info.value)
    assert repr(text) in message
    for form in ("YYYY-MM-DD", "HH:MM", "@", "30s", "1w"):
        assert form in message
