"""The UDP datagram grammar (server/intake.py parse_datagram) on its own: condensed port lists,
the epoch prefix against the line's clock, and that no input makes it raise."""

from __future__ import annotations

from hypothesis import given, settings, strategies as st

from events.formats import parse_maltrail_why
from events.record import SeverityRule
from server.intake import parse_datagram

RULE = SeverityRule()
LINE = '"2026-11-24 10:00:00.250000" s1 10.0.0.1 %s 10.0.0.2 %s TCP IP 10.0.0.2 "port scan" (heuristic)'


def test_a_condensed_port_list_is_one_event_per_port():
    events, why = parse_datagram((LINE % ("40000", "22,23,80")).encode(), RULE)
    assert why is None
    assert [(e.src_port, e.dst_port) for e in events] == [(40000, 22), (40000, 23), (40000, 80)]
    assert {e.severity for e in events} == {"low"}
    events, why = parse_datagram((LINE % ("1,2", "3,4")).encode(), RULE)
    assert [(e.src_port, e.dst_port) for e in events] == [(1, 3), (2, 4)]
    assert parse_datagram((LINE % ("1,2", "3,4,5")).encode(), RULE) == ([], "port")
    assert parse_datagram((LINE % ("1,,2", "3")).encode(), RULE) == ([], "port")


def test_the_epoch_prefix_sets_the_second_and_the_line_the_microseconds():
    events, why = parse_datagram(b"1795514400 " + (LINE % ("1", "2")).encode() + b"\r\n", RULE)
    assert why is None and events[0].ts_us == 1795514400_250000 and events[0].last_ts_us == events[0].ts_us


def test_refusals_name_the_broken_part_of_the_line():
    assert parse_maltrail_why('"2026-11-24 10:00:00.000000 a')[1] == "quoting"
    assert parse_maltrail_why('"2026-11-24 10:00:00.000000" a b')[1] == "field_count"
    assert parse_maltrail_why('"2026-02-30 10:00:00.000000" s 1 2 3 4 5 6 7 8 9')[1] == "time"
    fields, why = parse_maltrail_why('"2026-11-24 10:00:00.000000" s 1 2 3 4 5 6 7 "a ""b""" 9')
    assert why is None and fields["info"] == 'a "b"'


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_any_bytes_are_parsed_or_refused_never_raised(data):
    events, why = parse_datagram(data, RULE)
    assert (why is None) == bool(events)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n"), max_size=40))
def test_any_info_text_round_trips_through_the_quoting(info):
    # The documented rule: quoted when it holds a space or a double quote, inner quotes doubled.
    quoted = '"%s"' % info.replace('"', '""') if (" " in info or '"' in info) else (info or "-")
    events, why = parse_datagram((LINE % ("1", "2")).replace('"port scan"', quoted).encode(), RULE)
    assert why is None
    assert events[0].info == ("" if info in ("", "-") else info)


_PIECES = st.sampled_from(['"', '""', " ", "-", "a", "10.0.0.1", "2001:db8::1", "80", "1,2", "\u00e9", "9" * 13,
                           '"2026-11-24 10:00:00.250000"', '"2026-13-01 00:00:00.000000"', "1795514400 ",
                           "TCP", "IP", "x y", '""""'])


@settings(max_examples=600, deadline=None)
@given(st.lists(_PIECES, min_size=0, max_size=30), st.booleans())
def test_the_fast_path_and_the_reference_path_agree(pieces, well_formed_start):
    from server.intake import parse_datagram_reference
    text = "".join(pieces)
    if well_formed_start:
        text = (LINE % ("1", "2"))[:40] + text
    assert parse_datagram(text.encode(), RULE) == parse_datagram_reference(text.rstrip("\r\n"), RULE)


_ANY = ['a', 'b c', '"q"', '-', '', ' ', '""', 'x"y', '%', '\u00e9t\u00e9']
_AT = {
    "sensor": _ANY,
    "src_ip": ["10.0.0.1", "2001:db8::1", "::ffff:10.0.0.1", "-", "10.0.0.256", "fe80::1%eth0", "x y"],
    "src_port": ["80", "-", "0", "65535", "65536", "70000", "1,2", "1,2,3", "080", "", "a"],
    "dst_ip": ["192.0.2.1", "::", "-", "1.2.3"],
    "dst_port": ["443", "-", "99999", "3,4", "7"],
    "proto": ["TCP", "-", "UDP", "two words", ""],
    "type": ["IP", "DNS", "-", '"q"'],
    "trail": ["evil.example", "-", "a b", '"x"', ""],
    "info": _ANY + ["malware", "known attacker"],
    "reference": _ANY + ["(static)", "(custom)", "(heuristic)"],
}
_CLOCKS = ["2026-11-24 10:00:00.250000", "2026-02-30 10:00:00.000000", "2026-11-24 24:00:00.000000"]


def _q(v: str) -> str:
    return '"%s"' % v.replace('"', '""') if (" " in v or '"' in v or not v) else v


@settings(max_examples=1500, deadline=None)
@given(st.fixed_dictionaries({k: st.sampled_from(v) for k, v in _AT.items()}), st.sampled_from(_CLOCKS),
       st.sampled_from(["", "1795514400 ", "999999999999 ", "1 "]), st.booleans())
def test_fast_and_reference_agree_on_lines_of_eleven_fields(values, clock, prefix, raw_quotes):
    """Every position drawn from values that are and are not what it should hold, written by the
    documented rule (or, with raw_quotes, quoted where the rule would not quote)."""
    from server.intake import parse_datagram_reference
    quote = (lambda v: '"%s"' % v.replace('"', '""')) if raw_quotes else _q
    text = prefix + '"%s" ' % clock + " ".join(quote(values[k]) for k in _AT)
    assert parse_datagram(text.encode(), RULE) == parse_datagram_reference(text, RULE)


def test_a_condensed_address_list_becomes_one_event_per_address():
    """Our sensor condenses a scan's targets into an address list ending in "+N" (those not
    listed); Maltrail lists ports. Either way each listed position becomes one event, paired by
    position, and the unlisted tail is dropped rather than the whole line refused."""
    text = ('1795514400 "2026-11-24 12:00:00.000001" s 10.0.0.1 - 10.9.9.33,10.9.9.34,+5 22,23 TCP '
            'PORT "potential port scanning" "-" (heuristic)')
    events, why = parse_datagram(text.encode(), RULE)
    assert why is None
    assert [(e.dst_ip, e.dst_port, e.src_port) for e in events] == [("10.9.9.33", 22, None), ("10.9.9.34", 23, None)]
    assert parse_datagram(text.replace("22,23", "22,23,24").encode(), RULE) == ([], "port")
    assert parse_datagram(text.replace("10.9.9.34", "10.9.9.x").encode(), RULE) == ([], "address")
