"""The endpoints Maltrail users' scripts call, on a real `maltrail-engine server` (SQLite and
ClickHouse): events fed as Maltrail UDP datagrams built from the documented layout, read back
over real HTTP as Maltrail lines (/events), per-day counts (/counts), firewall lists (/fail2ban,
/blacklist), and /check; a scoped user never sees an event outside its networks in any of them.

Events are dated today (local midnight plus seconds): /fail2ban and /blacklist are, as in
Maltrail, about today's events.
"""

from __future__ import annotations

import datetime
import http.client
import json
import time
from pathlib import Path

import pytest

from server.auth.users import make_user_line
from tests.conftest import MALTRAIL_CORPUS, need_shared
from tests.server_proc import ServerProc, backend_extra  # noqa: F401  (the fixture)
from tests.test_server_intake import line, udp
from trailsdb.compile import build

PASSWORD = "correct horse battery staple"
ANALYST_NETS = "10.0.0.0/8, 2001:db8:1::/48"
MALTRAIL_TRAILS = MALTRAIL_CORPUS / "trails.csv"     # ../shared: the tests needing it skip without it


def _midnight_s(days_ago: int) -> int:
    day = datetime.date.today() - datetime.timedelta(days=days_ago)
    return int(time.mktime((day.year, day.month, day.day, 0, 0, 0, 0, 0, -1)))


def _day(days_ago: int) -> str:
    return (datetime.date.today() - datetime.timedelta(days=days_ago)).isoformat()


# (days ago, seconds after midnight, sensor, src, sport, dst, dport, proto, type, trail, info, reference)
EVENTS = [
    (0, 10, "s1", "10.0.0.1", 40001, "192.0.2.1", 53, "UDP", "DNS", "evil-test-domain.com", "malware (test)", "(static)"),
    (0, 20, "s1", "203.0.113.5", 4444, "198.51.100.7", 80, "TCP", "IP", "203.0.113.5", "known attacker", "(static)"),
    (0, 30, "s 2", "2001:db8:1::5", 5000, "2001:db8:ff::1", 443, "TCP", "IP", "2001:db8:ff::1", "malware (test)",
     "(static)"),
    (0, 40, "s1", "198.51.100.9", 6000, "10.1.2.3", 22, "TCP", "IP", "198.51.100.9", "secret op", "(custom)"),
    (0, 50, "s1", "2001:db8:ff::7", 7000, "2001:db8:ff::8", 25, "TCP", "IP", "2001:db8:ff::8", "mass attacker",
     "(static)"),
    (1, 60, "s1", "10.0.0.9", 1111, "192.0.2.50", 80, "TCP", "URL", "evil-url.example/bad/path", 'say "hi"',
     "(static)"),
    (2, 70, "s1", "203.0.113.99", 2222, "192.0.2.51", 80, "TCP", "IP", "203.0.113.99", "attacker", "(static)"),
]
# Only these are outside the analyst's networks on both sides: their addresses must never reach it.
OUT_OF_SCOPE = {"203.0.113.5", "198.51.100.7", "2001:db8:ff::7", "2001:db8:ff::8", "203.0.113.99", "192.0.2.51"}


def event_line(e) -> str:
    days_ago, offset_s, *fields = e
    return line((_midnight_s(days_ago) + offset_s) * 1_000_000, *fields)


def masked_line(e) -> str:
    """The line as a uid >= 1000 user sees it: a custom trail's info is '-'."""
    if e[-1] == "(custom)":
        e = e[:-2] + ("-", e[-1])
    return event_line(e)


def users_extra() -> str:
    users = [make_user_line("admin", PASSWORD, 0), make_user_line("analyst", PASSWORD, 1000, ANALYST_NETS)]
    return "users = %s\n" % json.dumps(users)


@pytest.fixture(scope="module")
def artifact(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("trails")
    custom = base / "custom"
    custom.mkdir()
    (custom / "secret.txt").write_text("custom-secret.example\n")
    out = base / "trails.mtdb"
    build([str(need_shared(MALTRAIL_TRAILS))], str(out), custom_dir=str(custom))
    return out


def request(port: int, path: str, cookie: str | None = None, method: str = "GET", body=None, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    h = dict(headers or {})
    if cookie:
        h["Cookie"] = "mt_session=" + cookie
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        h["Content-Type"] = "application/json"
    conn.request(method, path, body=data, headers=h)
    r = conn.getresponse()
    payload = r.read()
    conn.close()
    return r.status, r.headers, payload


def login(port: int, username: str) -> str:
    status, headers, body = request(port, "/api/v1/login", method="POST",
                                    body={"username": username, "password": PASSWORD})
    assert status == 200, body
    for value in headers.get_all("Set-Cookie"):
        if value.startswith("mt_session="):
            return value.split(";", 1)[0].split("=", 1)[1]
    raise AssertionError("no session cookie")


@pytest.fixture
def server(tmp_path, artifact, backend_extra):  # noqa: F811
    extra = (users_extra() + backend_extra + 'fail2ban_regex = "attacker|malware"\n'
             'fail2ban_allowlist = ["127.0.0.1"]\nblacklist_allowlist = ["192.0.2.0/24"]\n'
             'blacklist = ["src_ip ~ ^10\\\\. and type !~ ^URL$", "v6: src_ip ~ :", "bad: trail ~ ("]\n'
             '[all]\ntrails_artifact = "%s"\n' % artifact)
    proc = ServerProc(tmp_path, extra=extra).start()
    proc.send([event_line(e).encode() for e in EVENTS])
    h = proc.until(lambda h: udp(h)["stored"] + sum(udp(h)["refused"].values()) == len(EVENTS))
    assert udp(h)["stored"] == len(EVENTS), h
    yield proc
    proc.stop()


def lines_of(body: bytes) -> list[str]:
    return body.decode().splitlines()


def test_events_by_day_and_range_are_maltrail_lines_and_a_scoped_user_sees_only_its_networks(server):
    port = server.http_port
    assert request(port, "/events?date=" + _day(0))[0] == 401
    admin, analyst = login(port, "admin"), login(port, "analyst")

    status, _, body = request(port, "/events?date=" + _day(0), admin)
    assert status == 200
    today = [e for e in EVENTS if e[0] == 0]
    assert lines_of(body) == [event_line(e) for e in today]          # the same lines, oldest first

    status, _, body = request(port, "/events?date=%s_%s" % (_day(2), _day(0)), admin)
    assert lines_of(body) == [event_line(e) for e in sorted(EVENTS, key=lambda e: (-e[0], e[1]))]
    # Reversed ends select the same days, as Maltrail's range does.
    assert request(port, "/events?date=%s_%s" % (_day(0), _day(2)), admin)[2] == body
    assert request(port, "/events?date=not-a-day", admin)[:1] == (200,)
    assert request(port, "/events?date=2026-13-45", admin)[2] == b""

    status, _, body = request(port, "/events?date=%s_%s" % (_day(2), _day(0)), analyst)
    visible = [e for e in sorted(EVENTS, key=lambda e: (-e[0], e[1])) if not {e[3], e[5]} <= OUT_OF_SCOPE]
    assert lines_of(body) == [masked_line(e) for e in visible]
    assert "secret op" not in body.decode()
    for address in OUT_OF_SCOPE:
        assert address not in body.decode()


def test_counts_per_day_in_maltrail_shape_over_the_users_scope(server):
    port = server.http_port
    assert request(port, "/counts")[0] == 401
    admin, analyst = login(port, "admin"), login(port, "analyst")
    status, headers, body = request(port, "/counts?from=%s&to=%s" % (_day(2), _day(0)), admin)
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    assert json.loads(body) == {_day(2): 1, _day(1): 1, _day(0): 5}
    assert json.loads(request(port, "/counts", admin)[2]) == {_day(2): 1, _day(1): 1, _day(0): 5}
    assert json.loads(request(port, "/counts?from=%s" % _day(1), admin)[2]) == {_day(1): 1, _day(0): 5}
    assert json.loads(request(port, "/counts?from=%s&to=%s" % (_day(2), _day(0)), analyst)[2]) == {
        _day(1): 1, _day(0): 3}


def test_fail2ban_and_blacklist_list_sources_by_maltrails_rules_and_gates(server):
    port = server.http_port
    # /fail2ban: loopback is allowlisted; no session, so no scope: every matching source of today.
    status, _, body = request(port, "/fail2ban")
    assert status == 200
    assert sorted(lines_of(body)) == sorted(["10.0.0.1", "203.0.113.5", "2001:db8:1::5", "2001:db8:ff::7"])
    analyst = login(port, "analyst")
    body = request(port, "/fail2ban", analyst)[2]
    assert sorted(lines_of(body)) == ["10.0.0.1", "2001:db8:1::5"]

    # /blacklist: loopback is not in blacklist_allowlist, so only a session gets in.
    assert request(port, "/blacklist")[0] == 404
    admin = login(port, "admin")
    assert lines_of(request(port, "/blacklist", admin)[2]) == ["10.0.0.1"]
    assert sorted(lines_of(request(port, "/blacklist/v6", admin)[2])) == ["2001:db8:1::5", "2001:db8:ff::7"]
    assert lines_of(request(port, "/blacklist/v6", analyst)[2]) == ["2001:db8:1::5"]
    assert request(port, "/blacklist/bad", admin)[2] == b"invalid rule in option BLACKLIST_BAD"
    assert request(port, "/blacklist/none", admin)[2] == b"configuration option BLACKLIST_NONE not set"
    assert "blacklist rule" in server.stderr()


def test_check_answers_in_maltrails_shape_and_ours_hiding_custom_trails_from_who_may_not_see_them(server):
    port = server.http_port
    status, _, body = request(port, "/check?q=WWW.Evil-Parent.com")
    assert status == 200
    assert json.loads(body) == {"query": "www.evil-parent.com", "found": True, "trail": "evil-parent.com",
                                "info": "malware (test)", "reference": "(static)", "confidence": None}
    assert json.loads(request(port, "/check?q=clean.example")[2]) == {"query": "clean.example", "found": False}
    assert json.loads(request(port, "/check?q=")[2])["error"] == "missing or oversized 'q'"
    assert json.loads(request(port, "/check?q=" + "a" * 300)[2])["error"] == "missing or oversized 'q'"
    # A custom trail: a miss to anyone not allowed to see custom trails, a hit for the admin.
    assert json.loads(request(port, "/check?q=custom-secret.example")[2])["found"] is False
    analyst, admin = login(port, "analyst"), login(port, "admin")
    assert json.loads(request(port, "/check?q=custom-secret.example", analyst)[2])["found"] is False
    assert json.loads(request(port, "/check?q=custom-secret.example", admin)[2])["reference"] == "(custom)"

    assert request(port, "/api/v1/check?q=66.66.66.66")[0] == 401
    status, _, body = request(port, "/api/v1/check?q=a.sub.evil-parent.com", admin)
    assert status == 200
    doc = json.loads(body)
    assert doc["matched"] and doc["shape"] == "domain"
    assert [(m["how"], m["trail"]) for m in doc["matches"]] == [("parent domain", "sub.evil-parent.com")]
    assert doc["matches"][0]["provenance"][0]["source"] == str(MALTRAIL_TRAILS)
    assert any("MATCH" in text for text in doc["explanation"])
    doc = json.loads(request(port, "/api/v1/check?q=10.1.2.3:80", admin)[2])
    assert doc == {**doc, "matched": False, "matches": [], "shape": "ip"}
    doc = json.loads(request(port, "/api/v1/check?q=6.6.6.6:8443", admin)[2])
    assert [m["how"] for m in doc["matches"]] == ["address:port"]
    doc = json.loads(request(port, "/api/v1/check?q=evil-url.example/bad/path?x=1", admin)[2])
    assert "url" in [m["how"] for m in doc["matches"]]
    status, _, body = request(port, "/api/v1/check?q=300.1.1.1", admin)
    assert status == 400 and "IPv4" in json.loads(body)["error"]
    doc = json.loads(request(port, "/api/v1/check?q=custom-secret.example", analyst)[2])
    assert doc["matched"] is False and "explanation" not in doc
    doc = json.loads(request(port, "/api/v1/check?q=custom-secret.example", admin)[2])
    assert doc["matches"][0]["how"] == "exact domain" and doc["matches"][0]["reference"] == "(custom)"
