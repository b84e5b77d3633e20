"""Shared triage (server/triage.py) through a real `maltrail-engine server` on loopback, on the
SQLite and the ClickHouse store, and its hooks on a TriageBook over a real state database.

Events are fed as Maltrail-format UDP datagrams (tests/test_server_api.py's `datagram`); two users
log in through POST /api/v1/login: `admin` (sees everything) and `v4` (netfilter 10.1.0.0/16).
Each answer is compared with what the test did: who changed what and when, notes, the 404 a
scoped user gets for a pair outside their networks (identical to a pair that does not exist),
suppressions inside and outside a netfilter, the CSRF header on every change, a 400 naming each
bad field. The hooks the threats route calls (excluded_pairs, annotate) are checked on a
TriageBook over the server's own state database file and over a fresh one with a test clock.
Nothing is timed: waits poll the server's own counters.
"""

from __future__ import annotations

import calendar
import csv
import io
import datetime
import json

import pytest

from server.addresses import key_range
from server.auth.state import StateDB
from server.auth.users import make_user_line, parse_users
from server.triage import MAX_EXPIRES_S, TriageBook
from tests.server_proc import ServerProc
from tests.test_server_api import PASSWORD, Client, datagram, users_server
from tests.test_server_export import download

DAY0_US = calendar.timegm((2026, 11, 23, 0, 0, 0, 0, 0, 0)) * 1_000_000
USERS = {"admin": (0, ""), "v4": (1000, "10.1.0.0/16")}


def event(i, src, dst, trail, typ="DNS"):
    return dict(ts_us=DAY0_US + i * 60_000_000 + i, sensor="sensor-a", src_ip=src, src_port=40000 + i, dst_ip=dst,
                dst_port=53, proto="UDP", type=typ, trail=trail, info="malware", reference="(static)")


INSIDE = ("10.1.2.3", "evil.example")               # the source is in v4's networks
VIA_DST = ("198.51.100.20", "Bad.Example/Path")     # only the destination is
OUTSIDE = ("203.0.113.5", "198.51.100.7")           # neither
EVENTS = [event(1, INSIDE[0], "203.0.113.9", INSIDE[1]), event(2, INSIDE[0], "203.0.113.9", INSIDE[1]),
          event(3, VIA_DST[0], "10.1.9.9", VIA_DST[1], "URL"), event(4, OUTSIDE[0], "198.51.100.7", OUTSIDE[1], "IP"),
          event(5, "::ffff:10.1.4.4", "203.0.113.9", "mapped.example")]


@pytest.fixture(scope="module", params=["sqlite", "clickhouse"])
def served(request, tmp_path_factory):
    """(server, {user: Client}) with EVENTS stored, on each backend in turn."""
    with users_server(request, tmp_path_factory, "triage", USERS, EVENTS) as both:
        yield both


def triage(client, pair):
    return client.get("triage", src_ip=pair[0], trail=pair[1])


def put(client, pair, **fields):
    return client.call("PUT", "/api/v1/triage", body={"src_ip": pair[0], "trail": pair[1], **fields})


def note(client, pair, text):
    return client.call("POST", "/api/v1/triage/notes", body={"src_ip": pair[0], "trail": pair[1], "text": text})


def suppress(client, host, trail, expires_in_s=3600, reason=""):
    return client.call("POST", "/api/v1/suppressions",
                       body={"host": host, "trail": trail, "expires_in_s": expires_in_s, "reason": reason})


def instant(text):
    assert text.endswith("Z")
    return datetime.datetime.fromisoformat(text[:-1])


def state_of(server) -> StateDB:
    """The server's own state database, opened beside it (what the sensors' side reads too)."""
    return StateDB(str(server.log_dir / "server-state.sqlite"))


# -- shared, audited triage ------------------------------------------------------------------------

def test_two_users_see_the_same_triage_and_every_change_records_who_and_when(served):
    server, c = served
    pair = (INSIDE[0], INSIDE[1])
    status, fresh = triage(c["v4"], pair)
    assert status == 200, fresh
    assert fresh == {"src_ip": pair[0], "trail": pair[1], "status": "new", "assignee": "", "hidden": False,
                     "updated_by": None, "updated_at": None, "notes": [], "history": []}

    status, after_admin = put(c["admin"], pair, status="investigating", assignee="v4")
    assert status == 200, after_admin
    assert (after_admin["status"], after_admin["assignee"], after_admin["updated_by"]) == ("investigating", "v4", "admin")
    # The other analyst's session sees exactly what the first wrote.
    assert triage(c["v4"], pair) == (200, after_admin)

    status, after_v4 = put(c["v4"], pair, status="resolved", hidden=False)   # hidden unchanged: no history row
    assert status == 200 and after_v4["updated_by"] == "v4"
    status, with_note = note(c["v4"], pair, "seen <b>before</b> on the VPN \u2013 benign")
    assert status == 200
    status, seen_by_admin = triage(c["admin"], pair)
    assert status == 200 and seen_by_admin == with_note
    assert [(h["by"], h["field"], h["old"], h["new"]) for h in seen_by_admin["history"]] == [
        ("admin", "status", "new", "investigating"), ("admin", "assignee", "", "v4"),
        ("v4", "status", "investigating", "resolved")]
    assert [(n["by"], n["text"]) for n in seen_by_admin["notes"]] == [("v4", "seen <b>before</b> on the VPN \u2013 benign")]
    times = [instant(h["at"]) for h in seen_by_admin["history"]] + [instant(seen_by_admin["notes"][0]["at"])]
    assert times == sorted(times)
    assert instant(seen_by_admin["updated_at"]) == times[2]

    # The operator's log says who changed what; a note's text never goes there.
    log = server.stderr()
    assert 'triage: admin set status of 10.1.2.3 "evil.example": "new" -> "investigating"' in log
    assert 'triage: v4 set status of 10.1.2.3 "evil.example": "investigating" -> "resolved"' in log
    assert "triage: v4 added a note (" in log and "VPN" not in log
    assert all(line.startswith("[i] ") for line in log.splitlines() if "triage:" in line)


def test_an_address_is_keyed_in_canonical_form(served):
    _server, c = served
    status, body = put(c["admin"], ("::ffff:10.1.4.4", "mapped.example"), status="investigating")
    assert status == 200 and body["src_ip"] == "10.1.4.4"
    assert triage(c["v4"], ("10.1.4.4", "mapped.example"))[1]["status"] == "investigating"


def test_analysts_are_the_configured_users(served):
    _server, c = served
    assert c["v4"].get("analysts") == (200, {"analysts": ["admin", "v4"]})


# -- scope -----------------------------------------------------------------------------------------

def test_a_scoped_user_gets_404_for_a_pair_outside_their_networks_as_for_one_that_does_not_exist(served):
    _server, c = served
    assert put(c["admin"], OUTSIDE, status="investigating")[0] == 200       # a row exists now
    missing = ("10.1.2.3", "never.example")
    for pair in (OUTSIDE, missing):
        expected = (404, {"error": "no threat with src_ip %s and this trail in your networks" % pair[0]})
        assert triage(c["v4"], pair) == expected
        assert put(c["v4"], pair, status="false_positive") == expected
        assert put(c["v4"], pair, hidden=True) == expected
        assert note(c["v4"], pair, "mine") == expected
    status, body = triage(c["admin"], OUTSIDE)
    assert status == 200 and body["status"] == "investigating" and body["notes"] == [] and not body["hidden"]
    assert [h["by"] for h in body["history"]] == ["admin"]
    # The admin too gets 404 for a pair no event has; a scoped user reaches a pair through its destination.
    assert triage(c["admin"], missing)[0] == 404
    assert triage(c["v4"], VIA_DST)[0] == 200
    assert put(c["v4"], VIA_DST, assignee="admin")[1]["assignee"] == "admin"


def test_suppressions_are_listed_lifted_and_kept_inside_a_scoped_users_networks(served):
    server, c = served
    for host in ("203.0.113.5", "10.0.0.0/8", "10.1.0.0/15", "::ffff:10.0.0.0/104"):
        status, body = suppress(c["v4"], host, "x.example")
        assert (status, body["parameter"]) == (400, "host"), (host, body)
        assert "not inside your networks" in body["error"]
    status, mine = suppress(c["v4"], "10.1.2.0/24", "Evil.Example", reason="lab scanner")
    assert status == 201, mine
    assert (mine["host"], mine["trail"], mine["created_by"], mine["reason"]) == ("10.1.2.0/24", "evil.example", "v4",
                                                                                "lab scanner")
    assert (instant(mine["expires_at"]) - instant(mine["created_at"])).total_seconds() == 3600
    status, theirs = suppress(c["admin"], "::ffff:203.0.113.5", OUTSIDE[1], expires_in_s=MAX_EXPIRES_S)
    assert status == 201 and theirs["host"] == "203.0.113.5"

    assert c["v4"].get("suppressions") == (200, {"suppressions": [mine]})
    assert c["admin"].get("suppressions") == (200, {"suppressions": [theirs, mine]})
    # The sensors' side reads the same rows from the state database.
    state = state_of(server)
    try:
        now_s = instant(mine["created_at"]).replace(tzinfo=datetime.timezone.utc).timestamp()
        assert {(s.host, s.trail) for s in state.suppressions(now_s)} == {("10.1.2.0/24", "evil.example"),
                                                                        ("203.0.113.5", OUTSIDE[1])}
    finally:
        state.close()

    theirs_path = "/api/v1/suppressions/%d" % theirs["id"]
    assert c["v4"].call("DELETE", theirs_path)[0] == 404        # outside v4's networks: as if absent
    assert c["admin"].call("DELETE", theirs_path) == (200, {"lifted": True})
    assert c["admin"].call("DELETE", theirs_path)[0] == 404     # lifted already
    assert c["admin"].call("DELETE", "/api/v1/suppressions/999999")[0] == 404
    assert c["v4"].call("DELETE", "/api/v1/suppressions/%d" % mine["id"]) == (200, {"lifted": True})
    assert c["admin"].get("suppressions") == (200, {"suppressions": []})
    assert "suppression %d: admin lifted it" % theirs["id"] in server.stderr()


# -- CSRF and bad fields -----------------------------------------------------------------------------

def test_every_change_needs_the_csrf_header(served):
    server, c = served
    admin = c["admin"]
    status, row = suppress(admin, "10.1.7.7", "csrf.example")
    assert status == 201
    pair = (INSIDE[0], INSIDE[1])
    before = triage(admin, pair)[1]
    token, admin.csrf = admin.csrf, None
    try:
        for method, path, body in (
                ("PUT", "/api/v1/triage", {"src_ip": pair[0], "trail": pair[1], "status": "false_positive"}),
                ("POST", "/api/v1/triage/notes", {"src_ip": pair[0], "trail": pair[1], "text": "forged"}),
                ("POST", "/api/v1/suppressions", {"host": "10.1.7.8", "trail": "x", "expires_in_s": 60}),
                ("DELETE", "/api/v1/suppressions/%d" % row["id"], None),
                ("POST", "/api/v1/looked", None)):
            status, answer = admin.call(method, path, body=body)
            assert status == 403 and "X-CSRF-Token" in answer["error"], (method, path, answer)
            status, answer = admin.call(method, path, body=body, headers={"X-CSRF-Token": "0" * 43})
            assert status == 403, (method, path, answer)
    finally:
        admin.csrf = token
    assert triage(admin, pair)[1] == before
    assert [s["id"] for s in admin.get("suppressions")[1]["suppressions"]] == [row["id"]]
    state = state_of(server)
    try:
        assert state.last_look("admin") == (0, 0)
    finally:
        state.close()
    assert admin.call("DELETE", "/api/v1/suppressions/%d" % row["id"])[0] == 200


BAD_TRIAGE = [
    ({"src_ip": "10.1.2.0/24"}, "src_ip"), ({"src_ip": "evil.example"}, "src_ip"), ({"src_ip": 167838211}, "src_ip"),
    ({"trail": ""}, "trail"), ({"trail": "x" * 2049}, "trail"), ({"trail": ["evil.example"]}, "trail"),
    ({"status": "closed"}, "status"), ({"status": None}, "status"), ({"assignee": "mallory"}, "assignee"),
    ({"assignee": 0}, "assignee"), ({"hidden": "yes"}, "hidden"), ({"hidden": 1}, "hidden"),
    ({"colour": "red"}, "colour"),
]
BAD_SUPPRESSION = [
    ({"host": "10.1.2.3-10.1.2.9"}, "host"), ({"host": "evil.example"}, "host"), ({"host": "10.1.2.0/33"}, "host"),
    ({"host": ""}, "host"), ({"trail": ""}, "trail"), ({"trail": "y" * 2049}, "trail"),
    ({"expires_in_s": 59}, "expires_in_s"), ({"expires_in_s": MAX_EXPIRES_S + 1}, "expires_in_s"),
    ({"expires_in_s": "3600"}, "expires_in_s"), ({"expires_in_s": True}, "expires_in_s"),
    ({"expires_in_s": 3600.5}, "expires_in_s"), ({"reason": "r" * 501}, "reason"), ({"reason": 5}, "reason"),
    ({"until": 5}, "until"),
]


def test_a_bad_field_is_a_400_naming_it_and_the_fix(served):
    server, c = served
    admin = c["admin"]
    good = {"src_ip": INSIDE[0], "trail": INSIDE[1], "status": "investigating"}
    for change, field in BAD_TRIAGE:
        status, body = admin.call("PUT", "/api/v1/triage", body={**good, **change})
        assert (status, body.get("parameter")) == (400, field), (change, body)
        assert field in body["error"] and len(body["error"]) > len(field) + 10
    for text, field in (("", "text"), ("   ", "text"), ("n" * 4001, "text"), (None, "text")):
        status, body = admin.call("POST", "/api/v1/triage/notes",
                                  body={"src_ip": INSIDE[0], "trail": INSIDE[1], "text": text})
        assert (status, body.get("parameter")) == (400, field), (text, body)
    assert admin.call("PUT", "/api/v1/triage", body={"src_ip": INSIDE[0], "trail": INSIDE[1]})[0] == 400
    assert admin.call("PUT", "/api/v1/triage", body={"trail": INSIDE[1], "status": "new"})[1]["parameter"] == "src_ip"
    assert admin.call("PUT", "/api/v1/triage", body=["not", "an", "object"])[1]["parameter"] == "body"
    status, body = admin.call("PUT", "/api/v1/triage", headers={"Content-Type": "application/json"})
    assert (status, body["parameter"]) == (400, "body")
    good_s = {"host": "10.1.2.3", "trail": "s.example", "expires_in_s": 3600, "reason": ""}
    for change, field in BAD_SUPPRESSION:
        status, body = admin.call("POST", "/api/v1/suppressions", body={**good_s, **change})
        assert (status, body.get("parameter")) == (400, field), (change, body)
    assert admin.call("DELETE", "/api/v1/suppressions/abc")[1]["parameter"] == "id"
    assert admin.get("triage", src_ip=INSIDE[0])[1]["parameter"] == "trail"
    assert admin.get("triage", src_ip=INSIDE[0], trail=INSIDE[1], x="1")[1]["parameter"] == "x"
    # Nothing of it was stored.
    assert admin.get("suppressions")[1]["suppressions"] == []
    assert all(h["new"] != "closed" for h in triage(admin, INSIDE)[1]["history"])


# -- the hooks, and "new since last look" ------------------------------------------------------------

def test_the_hooks_over_the_servers_own_state(served):
    server, c = served
    assert put(c["v4"], VIA_DST, hidden=True, assignee="admin")[0] == 200
    assert note(c["admin"], VIA_DST, "one")[0] == 200
    status, row = suppress(c["admin"], OUTSIDE[0], OUTSIDE[1])
    assert status == 201
    status, looked = c["v4"].call("POST", "/api/v1/looked")
    assert status == 200 and set(looked) == {"last_look_us"}
    mark_us = looked["last_look_us"]

    users = parse_users([make_user_line(n, PASSWORD, uid, nf) for n, (uid, nf) in USERS.items()])
    state = state_of(server)
    try:
        book = TriageBook(state, None, users, now_s=lambda: instant(row["created_at"]).replace(
            tzinfo=datetime.timezone.utc).timestamp() + 1)
        now_s = book.now_s()
        excluded = set(book.excluded_pairs(users["v4"], now_s))
        assert excluded == {VIA_DST, OUTSIDE}
        rows = [{"src_ip": VIA_DST[0], "trail": VIA_DST[1], "first_ts_us": mark_us + 1},
                {"src_ip": OUTSIDE[0], "trail": OUTSIDE[1], "first_ts_us": mark_us},
                {"src_ip": INSIDE[0], "trail": INSIDE[1], "first_ts_us": mark_us - 1}]
        book.annotate(users["v4"], rows)
        assert [(r["hidden"], r["suppressed"], r["new"]) for r in rows] == [
            (True, False, True), (False, True, False), (False, False, False)]
        assert rows[0]["triage"] == {"status": "new", "assignee": "admin", "notes": 1}
        # admin never looked: everything is new to them.
        book.annotate(users["admin"], rows)
        assert all(r["new"] for r in rows)
        # Lifted: the pair is back.
        assert c["admin"].call("DELETE", "/api/v1/suppressions/%d" % row["id"])[0] == 200
        assert set(book.excluded_pairs(users["v4"], now_s)) == {VIA_DST}
    finally:
        state.close()
    assert put(c["v4"], VIA_DST, hidden=False)[0] == 200
    status, again = c["v4"].call("POST", "/api/v1/looked")
    assert status == 200 and again["last_look_us"] >= mark_us


class Clock:
    def __init__(self, now_s):
        self.now_s = now_s

    def __call__(self):
        return self.now_s


def test_excluded_pairs_and_annotate_on_a_fresh_state_database(tmp_path):
    users = parse_users([make_user_line(n, PASSWORD, uid, nf) for n, (uid, nf) in USERS.items()])
    state = StateDB(str(tmp_path / "state.sqlite"))
    clock = Clock(1_800_000_000.0)
    book = TriageBook(state, None, users, now_s=clock)
    try:
        assert book.excluded_pairs(users["admin"], clock()) == ()
        state.set_triage("192.0.2.1", "Hidden.Example", {"hidden": True}, "admin", clock())
        state.set_triage("192.0.2.2", "shown.example", {"status": "investigating", "assignee": "v4"}, "admin", clock())
        state.add_note("192.0.2.2", "shown.example", "v4", "n1", clock())
        state.add_note("192.0.2.2", "shown.example", "admin", "n2", clock())
        state.add_suppression("10.1.2.0/30", "Net.Example", clock() + 600, "admin", "", clock())
        wide = state.add_suppression("10.0.0.0/8", "wide.example", clock() + 600, "admin", "", clock())
        state.add_suppression("2001:db8::7", "v6.example", clock() + 60, "admin", "", clock())
        lifted = state.add_suppression("192.0.2.9", "lifted.example", clock() + 600, "admin", "", clock())
        assert state.lift_suppression(lifted, "admin", clock())

        pairs = book.excluded_pairs(users["v4"], clock())
        assert set(pairs) == {("192.0.2.1", "Hidden.Example"), ("2001:db8::7", "v6.example")} | {
            ("10.1.2.%d" % i, "net.example") for i in range(4)}
        assert len(pairs) == len(set(pairs))
        # Past the v6 suppression's expiry it is gone; the /8 is never written out address by address.
        assert set(book.excluded_pairs(users["v4"], clock() + 61)) == set(pairs) - {("2001:db8::7", "v6.example")}

        rows = [{"src_ip": "192.0.2.1", "trail": "Hidden.Example", "first_ts_us": 5},
                {"src_ip": "192.0.2.2", "trail": "shown.example", "first_ts_us": 6},
                {"src_ip": "10.200.1.1", "trail": "WIDE.example", "first_ts_us": 7},
                {"src_ip": "10.1.2.3", "trail": "net.example", "first_ts_us": 8},
                {"src_ip": "10.1.2.4", "trail": "net.example", "first_ts_us": 9}]
        book.annotate(users["v4"], rows)
        assert [(r["hidden"], r["suppressed"], r["new"]) for r in rows] == [
            (True, False, True), (False, False, True), (False, True, True), (False, True, True), (False, False, True)]
        assert rows[1]["triage"] == {"status": "investigating", "assignee": "v4", "notes": 2}
        assert rows[0]["triage"] == {"status": "new", "assignee": "", "notes": 0}

        # The mark: rows first seen after it are new, at or before it are not.
        state.set_last_look("v4", 7)
        book.annotate(users["v4"], rows)
        assert [r["new"] for r in rows] == [False, False, False, True, True]
        assert state.last_look("v4") == (7, 0)
        state.set_last_look("v4", 8)
        assert state.last_look("v4") == (8, 7)
        book.annotate(users["v4"], rows)
        assert [r["new"] for r in rows] == [False, False, False, False, True]

        assert state.lift_suppression(wide, "admin", clock())
        book.annotate(users["v4"], rows)
        assert not rows[2]["suppressed"]

        # A host is inside a netfilter only when the whole of it is (a range's edge cuts a CIDR).
        ranged = parse_users([make_user_line("r", PASSWORD, 1000, "10.1.0.0-10.1.0.200")])["r"]
        assert book._may_touch(ranged, *key_range("10.1.0.0/25"))
        assert not book._may_touch(ranged, *key_range("10.1.0.128/25"))
        assert not book._may_touch(ranged, *key_range("10.0.255.255"))
    finally:
        state.close()


def test_a_change_to_the_same_value_records_nothing(tmp_path):
    state = StateDB(str(tmp_path / "state.sqlite"))
    try:
        row, written = state.set_triage("192.0.2.1", "t", {"status": "new", "hidden": False}, "admin", 10.0)
        assert (written, row.updated_by, state.triage("192.0.2.1", "t"), state.history("192.0.2.1", "t")) == ([], "", None, [])
        row, written = state.set_triage("192.0.2.1", "t", {"status": "resolved", "hidden": True}, "v4", 11.0)
        assert written == [("status", "new", "resolved"), ("hidden", "false", "true")]
        assert (row.status, row.hidden, row.updated_by, row.updated_s) == ("resolved", True, "v4", 11.0)
        assert [(h.field, h.old, h.new) for h in state.history("192.0.2.1", "t")] == [
            ("status", "new", "resolved"), ("hidden", "false", "true")]
        state.set_triage("192.0.2.1", "t", {"status": "resolved"}, "admin", 12.0)
        assert state.triage("192.0.2.1", "t").updated_by == "v4" and len(state.history("192.0.2.1", "t")) == 2
    finally:
        state.close()


# -- the audit record at the collectors -------------------------------------------------------------

def test_every_change_reaches_the_collectors_as_a_triage_record(tmp_path):
    from importlib.metadata import version
    import re
    import socket

    from tests.collectors import UdpCollector
    logstash, syslog = UdpCollector(), UdpCollector()
    sensor = '[sensor]\nlogstash_server = ["udp://127.0.0.1:%d"]\nsyslog_server = ["udp://127.0.0.1:%d"]\n' % (
        logstash.port, syslog.port)
    extra = "users = %s\n" % json.dumps([make_user_line(n, PASSWORD, uid, nf) for n, (uid, nf) in USERS.items()])
    pair = ("10.1.2.3", "evil.example/a=b\\c")      # CEF escapes = and \ in an extension value
    server = ServerProc(tmp_path, extra=extra, more=sensor).start()
    try:
        server.send([datagram(event(1, pair[0], "203.0.113.9", pair[1], "URL"))])
        server.until(lambda h: h["intake"]["udp"]["stored"] >= 1)
        admin = Client(server)
        assert admin.login("admin")[0] == 200
        assert put(admin, pair, status="investigating", hidden=True)[0] == 200
        assert note(admin, pair, "secret-ish words")[0] == 200
        status, row = suppress(admin, "10.1.2.0/24", "Evil.Example")
        assert status == 201
        assert admin.call("DELETE", "/api/v1/suppressions/%d" % row["id"])[0] == 200
        got_json = [json.loads(d) for d in logstash.wait(6)]
        got_cef = [d.decode() for d in syslog.wait(6)]
    finally:
        assert server.stop() == 0, server.stderr()
        logstash.close()
        syslog.close()
    triage_json = [{k: v for k, v in r.items() if k != "timestamp"} for r in got_json if r["type"] == "triage"]
    base = {"sensor": socket.gethostname(), "type": "triage", "username": "admin"}
    assert triage_json == [
        dict(base, action="change", host=pair[0], trail=pair[1], field="status", old="new", new="investigating"),
        dict(base, action="change", host=pair[0], trail=pair[1], field="hidden", old="false", new="true"),
        dict(base, action="note", host=pair[0], trail=pair[1], field="note", old="", new="16 characters"),
        dict(base, action="suppress", host="10.1.2.0/24", trail="evil.example", field="suppression", old="",
             new=str(row["id"])),
        dict(base, action="lift", host="10.1.2.0/24", trail="evil.example", field="suppression",
             old=str(row["id"]), new="")]
    cef = [r for r in got_cef if "|triage|" in r]
    assert len(cef) == 5 and not any("secret-ish" in r for r in got_cef + [json.dumps(got_json)])
    head = r"[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d %s CEF:0\|Maltrail\|server\|%s\|triage\|" % (
        re.escape(socket.gethostname()), re.escape(version("maltrail-engine")))
    assert re.fullmatch(head + r"triage change\|1\|duser=admin act=change cs1Label=host cs1=10\.1\.2\.3 "
                        r"cs2Label=trail cs2=evil\.example/a\\=b\\\\c cs3Label=field cs3=status "
                        r"cs4Label=old cs4=new cs5Label=new cs5=investigating", cef[0]), cef[0]
    assert re.fullmatch(head + r"suppression lifted\|1\|duser=admin act=lift cs1Label=host cs1=10\.1\.2\.0/24 "
                        r"cs2Label=trail cs2=evil\.example cs3Label=field cs3=suppression cs4Label=old cs4=%d "
                        r"cs5Label=new cs5=" % row["id"], cef[4]), cef[4]


# -- the threats route and the export, wired to the book ----------------------------------------------

def test_hidden_and_suppressed_pairs_leave_the_threats_list_and_export_carries_the_triage(served):
    """What the UI's threat list shows: a hidden pair and a suppressed one (its trail in capitals,
    the suppression's in lower case) are left out by default, shown flagged with hidden=show, and
    the CSV export of the view carries each row's triage status."""
    server, c = served
    before = server.health()["intake"]["udp"]["stored"]
    hide_me = ("10.1.7.7", "hide-me.example")
    quiet = ("10.1.7.8", "Loud.Example/PATH")
    kept = ("10.1.7.9", "kept.example")
    extra = [event(20 + i, src, "203.0.113.9", trail) for i, (src, trail) in enumerate((hide_me, quiet, kept))]
    server.send(datagram(e) for e in extra)
    server.until(lambda h: h["intake"]["udp"]["stored"] >= before + len(extra))
    day = {"from": "2026-11-23", "to": "2026-11-23"}

    def listed(**params):
        return {(t["src_ip"], t["trail"]): t for t in c["admin"].ok("threats", limit=1000, **day, **params)["threats"]}

    assert {hide_me, quiet, kept} <= set(listed())
    assert put(c["admin"], hide_me, hidden=True, status="false_positive")[0] == 200
    assert suppress(c["admin"], quiet[0], quiet[1], reason="noisy lab host")[0] == 201
    shown = listed()
    assert hide_me not in shown and quiet not in shown and kept in shown
    everything = listed(hidden="show")
    assert everything[hide_me]["hidden"] and everything[quiet]["suppressed"] and not everything[kept]["hidden"]
    # The scoped analyst's list leaves them out too (hiding is shared).
    assert hide_me not in {(t["src_ip"], t["trail"]) for t in c["v4"].ok("threats", limit=1000, **day)["threats"]}

    status, _headers, body = download(c["admin"], view="threats", format="csv", hidden="show", **day)
    assert status == 200
    rows = {(r["src_ip"], r["trail"]): r for r in csv.DictReader(io.StringIO(body.decode()))}
    assert rows[hide_me]["status"] == "false_positive" and rows[kept]["status"] == "new"
