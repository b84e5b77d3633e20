"""The JSON API (server/api/v1.py) through a real `maltrail-engine server` on loopback, on the
SQLite and the ClickHouse store.

Events are fed as Maltrail-format UDP datagrams built here from the documented line layout
(tests/test_server_intake.py's `line`), over three days, IPv4 and IPv6. Every answer is compared
with what the test computes itself from the events it sent: pages (every event exactly once
across a multi-day range), each filter, counts, tops and threats. Users log in through
POST /api/v1/login. Scoped users (an IPv4 CIDR, an IPv6 CIDR, an a-b range) try every endpoint
and parameter, and every address any answer holds must belong to an event the user may see.
Nothing is timed: waits poll the server's own counters.
"""

from __future__ import annotations

import calendar
import contextlib
import collections
import hashlib
import http.cookiejar
import json
import random
import sqlite3
import urllib.error
import urllib.parse
import urllib.request
import uuid

import pytest

from events.record import SeverityRule
from server.addresses import ip_key
from server.auth.scopes import parse_netfilter
from server.auth.users import make_user_line
from tests.server_proc import ServerProc, clickhouse_extra
from tests.test_server_intake import line

PASSWORD = "correct horse battery"
DAY0_S = calendar.timegm((2026, 11, 23, 0, 0, 0, 0, 0, 0))
DAY_S = 86_400
HOUR_US = 3_600_000_000
DAY_US = 86_400_000_000
RANGE = {"from": "2026-11-23", "to": "2026-11-25"}          # three whole days, `to` inclusive

USERS = {  # name: (uid, netfilter)
    "admin": (0, ""),
    "v4": (1000, "10.1.0.0/16"),
    "v6": (1000, "2001:db8:1::/48"),
    "rng": (1000, "192.168.5.10-192.168.5.20"),
}

# Address pools: inside one scoped user's netfilter, just outside its edges, and elsewhere.
POOLS = {
    "v4": ["10.1.0.0", "10.1.7.9", "10.1.255.255", "::ffff:10.1.3.3"],
    "v6": ["2001:db8:1::1", "2001:db8:1:ffff:ffff:ffff:ffff:ffff", "2001:db8:1:0:abcd::7"],
    "rng": ["192.168.5.10", "192.168.5.15", "192.168.5.20"],
    "edges": ["10.0.255.255", "10.2.0.0", "2001:db8:2::", "2001:db8:0:ffff:ffff:ffff:ffff:ffff", "192.168.5.9",
              "192.168.5.21"],
    "outside": ["203.0.113.5", "198.51.100.77", "2001:db8:dead::beef", "172.20.1.1"],
}
TYPES = [("IP", "UDP"), ("DNS", "UDP"), ("URL", "TCP"), ("IPORT", "TCP"), ("UA", "TCP")]
INFOS = [("malware", "(static)"), ("known attacker", "alienvault"), ("suspicious domain", "(heuristic)"),
         ("operation nightjar", "(custom)"), ("potential scanning", "(remote custom)")]
SENSORS = ["sensor-a", "sensor b", "edge-3"]


def make_events(count=150, seed=7) -> list[dict]:
    rng = random.Random(seed)
    rule = SeverityRule()
    names = list(POOLS)
    out = []
    used_ts = set()
    for i in range(count):
        src = rng.choice(POOLS[rng.choice(names)])
        dst = rng.choice(POOLS[rng.choice(names)])
        typ, proto = rng.choice(TYPES)
        info, ref = rng.choice(INFOS)
        trail = {"IP": dst, "IPORT": "%s:%d" % (dst, 4444)}.get(typ) or rng.choice(
            ["evil.example", "bad.example/x y", "c2.example", "Mozilla/5.0 (evil)"])
        while True:   # distinct instants: newest-first order is then the same for every reader
            ts_us = (DAY0_S + rng.randrange(3 * DAY_S)) * 1_000_000 + rng.randrange(1_000_000)
            if ts_us not in used_ts:
                used_ts.add(ts_us)
                break
        sport = rng.randrange(1024, 65536)
        dport = rng.choice([53, 80, 443, 4444, 8080])
        out.append(dict(ts_us=ts_us, sensor=rng.choice(SENSORS), src_ip=src, src_port=sport, dst_ip=dst,
                        dst_port=dport, proto=proto, type=typ, trail=trail, info=info, reference=ref,
                        severity=rule.of(info, ref)))
    return out


# Events between addresses that are in no user's scope and appear nowhere else: what a scoped
# user must never see a trace of.
DARK = ["203.0.113.200", "2001:db8:bad::1", "192.168.5.30", "10.3.0.1"]


def dark_events(count=20, seed=8) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for e in make_events(count, seed):
        src, dst = rng.sample(DARK, 2)
        out.append(dict(e, src_ip=src, dst_ip=dst, trail=dst if e["type"] == "IP" else e["trail"],
                        ts_us=e["ts_us"] + 7))    # + 7 us: never the instant of another event
    return out


EVENTS = make_events() + dark_events()


def datagram(e: dict) -> bytes:
    text = line(e["ts_us"], e["sensor"], e["src_ip"], e["src_port"], e["dst_ip"], e["dst_port"], e["proto"],
                e["type"], e["trail"], e["info"], e["reference"])
    return ("%d %s" % (e["ts_us"] // 1_000_000, text)).encode()


def stored_form(e: dict) -> dict:
    """How the server answers with an event it was sent: an IPv4-mapped address as IPv4."""
    out = dict(e)
    for k in ("src_ip", "dst_ip"):
        if out[k].startswith("::ffff:"):
            out[k] = out[k][len("::ffff:"):]
    return out


STORED = [stored_form(e) for e in EVENTS]


def visible_to(name: str) -> list[dict]:
    scope = parse_netfilter(USERS[name][1])
    return [e for e in STORED if scope.contains(e["src_ip"]) or scope.contains(e["dst_ip"])]


def newest_first(events):
    return sorted(events, key=lambda e: -e["ts_us"])


def masked(name: str, e: dict) -> dict:
    if USERS[name][0] >= 1000 and e["reference"] in ("(custom)", "(remote custom)"):
        return dict(e, info="-")
    return e


KEYS = ("ts_us", "sensor", "src_ip", "src_port", "dst_ip", "dst_port", "proto", "type", "trail", "info",
        "reference", "severity")


def key(e: dict) -> tuple:
    return tuple(e[k] for k in KEYS)


# -- the server, one per backend, with the events stored ------------------------------------------

class Client:
    """One logged-in user: the session cookie and the CSRF token, over real HTTP."""

    def __init__(self, server: ServerProc):
        self.base = "http://127.0.0.1:%d" % server.http_port
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar))
        self.csrf = None

    def call(self, method: str, path: str, params=None, body=None, headers=None):
        url = self.base + path + ("?" + urllib.parse.urlencode(params) if params else "")
        data = json.dumps(body).encode() if body is not None else None
        h = {"Content-Type": "application/json"} if data is not None else {}
        if self.csrf:
            h["X-CSRF-Token"] = self.csrf
        h.update(headers or {})
        req = urllib.request.Request(url, data=data, method=method, headers=h)
        try:
            with self.opener.open(req, timeout=60) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")

    def login(self, name: str, password: str = PASSWORD):
        status, body = self.call("POST", "/api/v1/login", body={"username": name, "password": password})
        if status == 200:
            self.csrf = body["csrf_token"]
        return status, body

    def get(self, endpoint: str, **params):
        return self.call("GET", "/api/v1/" + endpoint, params)

    def ok(self, endpoint: str, **params) -> dict:
        status, body = self.get(endpoint, **params)
        assert status == 200, (endpoint, params, body)
        return body


@contextlib.contextmanager
def users_server(request, tmp_path_factory, label: str, users: dict, events):
    """(server, {user: Client}): a real server on the backend `request.param` names, with `users`
    ({name: (uid, netfilter)}) logged in and `events` stored through the UDP intake; its ClickHouse
    database is dropped afterwards."""
    tmp = tmp_path_factory.mktemp(label + "-" + request.param)
    extra = "users = %s\n" % json.dumps([make_user_line(n, PASSWORD, uid, nf) for n, (uid, nf) in users.items()])
    database = None
    if request.param == "clickhouse":
        ch = request.getfixturevalue("clickhouse_server")
        database = "t_" + uuid.uuid4().hex[:12]
        extra += clickhouse_extra(ch, database)
    events = list(events)
    server = ServerProc(tmp, extra=extra).start()
    try:
        server.send(datagram(e) for e in events)
        server.until(lambda h: h["intake"]["udp"]["stored"] >= len(events))
        clients = {}
        for name in users:
            clients[name] = Client(server)
            assert clients[name].login(name)[0] == 200
        yield server, clients
    finally:
        server.stop()
        if database is not None:
            ch = request.getfixturevalue("clickhouse_server")
            import base64
            basic = base64.b64encode(("%s:%s" % (ch.user, ch.password)).encode()).decode()
            req = urllib.request.Request(ch.url, data=("DROP DATABASE IF EXISTS " + database).encode(),
                                         headers={"Authorization": "Basic " + basic})
            urllib.request.urlopen(req, timeout=30).close()


@pytest.fixture(scope="module", params=["sqlite", "clickhouse"])
def api(request, tmp_path_factory):
    """(server, {user: Client}) with EVENTS stored, on each backend in turn."""
    with users_server(request, tmp_path_factory, "api", USERS, EVENTS) as served:
        yield served


def all_pages(client: Client, endpoint="events", limit=7, **params) -> list[dict]:
    rows, cursor, seen_cursors = [], None, set()
    while True:
        extra = {"cursor": cursor} if cursor else {}
        body = client.ok(endpoint, limit=limit, **RANGE, **params, **extra)
        assert not body["partial"]
        rows += body[endpoint]
        cursor = body["next_cursor"]
        if cursor is None:
            return rows
        assert cursor not in seen_cursors
        seen_cursors.add(cursor)


def strip(row: dict) -> dict:
    return {k: row[k] for k in KEYS}


# -- events ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(USERS))
def test_paging_a_multi_day_range_returns_every_visible_event_exactly_once_newest_first(api, name):
    _server, clients = api
    rows = all_pages(clients[name])
    expected = [masked(name, e) for e in newest_first(visible_to(name))]
    assert [strip(r) for r in rows] == [strip(e) for e in expected]
    assert len({r["ts_us"] for r in rows}) == len(rows) and len({e["ts_us"] for e in expected}) == len(rows)
    days = {r["time"][:10] for r in rows}
    assert days == {"2026-11-23", "2026-11-24", "2026-11-25"} if name == "admin" else len(days) >= 2
    assert rows[0]["time"].endswith("Z") and rows[0]["count"] == 1 and rows[0]["last_ts_us"] == rows[0]["ts_us"]


def in_net(text, net):
    k = ip_key(text)
    lo, hi = net
    return k is not None and lo <= k <= hi


def net(text):
    from server.addresses import key_range
    return key_range(text)


FILTERS = [
    ({"src": "10.1.0.0/16"}, lambda e: in_net(e["src_ip"], net("10.1.0.0/16"))),
    ({"dst": "2001:db8:1::/48"}, lambda e: in_net(e["dst_ip"], net("2001:db8:1::/48"))),
    ({"dst": "192.168.5.9-192.168.5.15"}, lambda e: in_net(e["dst_ip"], net("192.168.5.9-192.168.5.15"))),
    ({"src": "203.0.113.5"}, lambda e: e["src_ip"] == "203.0.113.5"),
    ({"src": "::ffff:10.1.3.3"}, lambda e: e["src_ip"] == "10.1.3.3"),
    ({"address": "2001:db8:dead::/48"}, lambda e: in_net(e["src_ip"], net("2001:db8:dead::/48"))
        or in_net(e["dst_ip"], net("2001:db8:dead::/48"))),
    ({"port": "4444"}, lambda e: 4444 in (e["src_port"], e["dst_port"])),
    ({"dport": "53"}, lambda e: e["dst_port"] == 53),
    ({"sport": str(EVENTS[0]["src_port"])}, lambda e: e["src_port"] == EVENTS[0]["src_port"]),
    ({"proto": "udp"}, lambda e: e["proto"] == "UDP"),
    ({"type": "DNS"}, lambda e: e["type"] == "DNS"),
    ({"trail": "bad.example/x y"}, lambda e: e["trail"] == "bad.example/x y"),
    ({"info": "ATTACK"}, lambda e: "attack" in e["info"].lower()),
    ({"severity": "high,low"}, lambda e: e["severity"] in ("high", "low")),
    ({"sensor": "sensor b"}, lambda e: e["sensor"] == "sensor b"),
    ({"src": "10.0.0.0/8", "type": "IPORT", "dport": "443"},
     lambda e: in_net(e["src_ip"], net("10.0.0.0/8")) and e["type"] == "IPORT" and e["dst_port"] == 443),
]


@pytest.mark.parametrize("params,holds", FILTERS, ids=[json.dumps(p) for p, _ in FILTERS])
def test_each_filter_returns_exactly_the_events_it_names(api, params, holds):
    _server, clients = api
    for name in ("admin", "v4"):
        rows = all_pages(clients[name], limit=50, **params)
        expected = [masked(name, e) for e in newest_first(visible_to(name)) if holds(e)]
        assert [strip(r) for r in rows] == [strip(e) for e in expected], (name, params)
        if name == "admin":
            assert expected, params    # the filter is not vacuous


def test_a_range_narrower_than_the_data_and_its_time_forms(api):
    _server, clients = api
    admin = clients["admin"]
    day1 = [e for e in newest_first(STORED) if DAY0_S + DAY_S <= e["ts_us"] // 1_000_000 < DAY0_S + 2 * DAY_S]
    forms = [{"from": "2026-11-24", "to": "2026-11-24"},
             {"from": "2026-11-24T00:00:00Z", "to": "2026-11-25T00:00:00+00:00"},
             {"from": str(DAY0_S + DAY_S), "to": "%d.000000" % (DAY0_S + 2 * DAY_S)},
             {"to": "2026-11-24"}]
    for params in forms:
        body = admin.ok("events", limit=1000, **params)
        assert [strip(r) for r in body["events"]] == [strip(e) for e in day1], params
        assert body["range"]["from"] == "2026-11-24T00:00:00.000000Z" and body["range"]["to_us"] == (
            DAY0_S + 2 * DAY_S) * 1_000_000
    # Half-open: an event exactly at `to` is left out, one exactly at `from` kept.
    first = day1[-1]
    body = admin.ok("events", limit=1000, **{"from": "%d.%06d" % divmod(first["ts_us"], 1_000_000),
                                             "to": "%d.%06d" % divmod(day1[0]["ts_us"], 1_000_000)})
    assert [strip(r) for r in body["events"]] == [strip(e) for e in day1[1:]]


def test_limit_is_capped_and_said(api):
    _server, clients = api
    body = clients["admin"].ok("events", limit=99999, **RANGE)
    assert body["limit"] == 1000 and len(body["events"]) == len(EVENTS) and body["next_cursor"] is None


def test_custom_trails_are_masked_for_viewers_only(api):
    _server, clients = api
    custom = [e for e in STORED if e["reference"] == "(custom)"]
    assert custom
    admin_infos = {r["info"] for r in all_pages(clients["admin"], limit=200, trail=custom[0]["trail"])}
    assert "operation nightjar" in admin_infos
    for name in ("v4", "v6", "rng"):
        for r in all_pages(clients[name], limit=200):
            if r["reference"] in ("(custom)", "(remote custom)"):
                assert r["info"] == "-" and r["trail"]
            assert r["info"] not in ("operation nightjar", "potential scanning")


# -- aggregates --------------------------------------------------------------------------------

def hour(ts_us):
    return ts_us - ts_us % HOUR_US


@pytest.mark.parametrize("name", list(USERS))
def test_counts_per_hour_and_day_by_type_severity_sensor_are_the_users_events(api, name):
    _server, clients = api
    visible = visible_to(name)
    for bucket, cut in (("hour", hour), ("day", lambda us: us - us % DAY_US)):
        body = clients[name].ok("counts", by="type,severity,sensor", bucket=bucket, **RANGE)
        assert not body["partial"] and body["bucket"] == bucket
        assert body["range"]["from_us"] <= DAY0_S * 1_000_000 and body["range"]["to_us"] >= (DAY0_S + 3 * DAY_S) * 1_000_000
        for by in ("type", "severity", "sensor"):
            expected = collections.Counter((cut(e["ts_us"]), e[by]) for e in visible)
            got = {(r["start_us"], r["value"]): r["events"] for r in body["counts"][by]}
            assert got == dict(expected), (name, bucket, by)
    default = clients[name].ok("counts", **RANGE)
    assert set(default["counts"]) == {"type", "severity"}


@pytest.mark.parametrize("name", list(USERS))
def test_top_sources_destinations_trails_are_the_users_events(api, name):
    _server, clients = api
    visible = visible_to(name)
    body = clients[name].ok("top", field="sources,dst_ip,trails", n=1000, **RANGE)
    assert not body["partial"]
    for field in ("src_ip", "dst_ip", "trail"):
        expected = collections.Counter(e[field] for e in visible)
        rows = body["top"][field]
        assert {r["value"]: r["events"] for r in rows} == dict(expected), (name, field)
        assert [r["events"] for r in rows] == sorted((r["events"] for r in rows), reverse=True)
    small = clients[name].ok("top", field="src_ip", n=2, **RANGE)
    assert small["top"]["src_ip"] == body["top"]["src_ip"][:2]


def expected_threats(events) -> dict:
    rank = {"low": 0, "medium": 1, "high": 2}
    out = {}
    for e in events:
        t = out.setdefault((e["src_ip"], e["trail"]), {"events": 0, "first": e["ts_us"], "last": e["ts_us"],
                                                       "sensors": set(), "severity": e["severity"]})
        t["events"] += 1
        t["first"], t["last"] = min(t["first"], e["ts_us"]), max(t["last"], e["ts_us"])
        t["sensors"].add(e["sensor"])
        if rank[e["severity"]] > rank[t["severity"]]:
            t["severity"] = e["severity"]
    return out


@pytest.mark.parametrize("name", list(USERS))
def test_threats_grouped_by_source_and_trail_paged_exactly_once(api, name):
    _server, clients = api
    expected = expected_threats(visible_to(name))
    rows = all_pages(clients[name], endpoint="threats", limit=3)
    got = {(r["src_ip"], r["trail"]): r for r in rows}
    assert len(got) == len(rows) == len(expected)
    for k, t in expected.items():
        r = got[k]
        assert (r["events"], r["first_ts_us"], r["last_ts_us"], r["severity"]) == (
            t["events"], t["first"], t["last"], t["severity"]), (name, k)
        assert set(r["sensors"]) == t["sensors"], (name, k)
    assert [r["events"] for r in rows] == sorted((r["events"] for r in rows), reverse=True)


# -- scopes: no address outside what the user may see ------------------------------------------

def strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from strings(k)
            yield from strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from strings(v)


SCOPE_PROBES = [
    ("events", {}), ("events", {"src": "203.0.113.0/24"}), ("events", {"dst": "2001:db8:dead::/48"}),
    ("events", {"address": "0.0.0.0/0"}), ("events", {"address": "::/0"}), ("events", {"src": "192.168.5.0-192.168.5.255"}),
    ("events", {"limit": "2"}), ("events", {"type": "IP"}), ("events", {"from": "2026-11-25", "to": "2026-11-25"}),
    ("counts", {"by": "type,severity,sensor"}), ("counts", {"bucket": "day"}),
    ("top", {"field": "src_ip,dst_ip,trail", "n": "1000"}), ("threats", {"limit": "1000"}),
]


@pytest.mark.parametrize("name", ["v4", "v6", "rng"])
def test_a_scoped_user_never_sees_an_address_outside_its_events(api, name):
    server, clients = api
    client = clients[name]
    scope = parse_netfilter(USERS[name][1])
    visible = visible_to(name)
    assert visible and len(visible) < len(STORED)
    allowed = {v for e in visible for v in e.values() if isinstance(v, str)}
    every_address = {e[k] for e in STORED for k in ("src_ip", "dst_ip")}
    hidden = every_address - allowed
    assert hidden, "the data must hold addresses this user may not see"
    answers = []
    for endpoint, params in SCOPE_PROBES:
        status, body = client.get(endpoint, **{**RANGE, **params})
        assert status == 200, (endpoint, params, body)
        answers.append(body)
        if endpoint == "events":
            for r in body["events"]:
                assert scope.contains(r["src_ip"]) or scope.contains(r["dst_ip"]), r
    # Following cursors too: every page of events and threats.
    answers += all_pages(client, limit=3)
    answers += all_pages(client, endpoint="threats", limit=2)
    for body in answers:
        for text in strings(body):
            if ip_key(text) is not None or ip_key(text.rsplit(":", 1)[0]) is not None:
                assert text in allowed, (name, text)
    # The counts add up to the user's events, not to everyone's.
    body = client.ok("counts", **RANGE)
    assert sum(r["events"] for r in body["counts"]["type"]) == len(visible)


# -- refusals ------------------------------------------------------------------------------------

BAD = [
    ("events", {"from": "yesterday"}, "from"), ("events", {"to": "2026-02-30"}, "to"),
    ("events", {"from": "2026-11-25", "to": "2026-11-24"}, "to"), ("events", {"src": "10.0.0.0/33"}, "src"),
    ("events", {"dst": "example.com"}, "dst"), ("events", {"address": "10.0.0.9-10.0.0.1"}, "address"),
    ("events", {"port": "65536"}, "port"), ("events", {"dport": "-1"}, "dport"), ("events", {"sport": "x"}, "sport"),
    ("events", {"proto": "T C P"}, "proto"), ("events", {"severity": "critical"}, "severity"),
    ("events", {"limit": "0"}, "limit"), ("events", {"cursor": "not-a-cursor"}, "cursor"),
    ("events", {"colour": "red"}, "colour"), ("counts", {"by": "colour"}, "by"),
    ("counts", {"bucket": "week"}, "bucket"), ("top", {"field": "info"}, "field"), ("top", {"n": "1001"}, "n"),
    ("threats", {"cursor": "abc"}, "cursor"), ("threats", {"limit": "x"}, "limit"),
]


@pytest.mark.parametrize("endpoint,params,parameter", BAD, ids=["%s-%s" % (e, p) for e, _, p in BAD])
def test_bad_parameters_get_a_400_naming_the_parameter(api, endpoint, params, parameter):
    server, clients = api
    before = server.health()["api"]["refused"]
    status, body = clients["v4"].get(endpoint, **{**RANGE, **params})
    assert status == 400 and body["parameter"] == parameter and parameter in body["error"], body
    after = server.health()["api"]["refused"]
    reason = "unknown parameter" if parameter == "colour" else "bad " + parameter
    assert after.get(reason, 0) == before.get(reason, 0) + 1


def clients_of(api):
    return api[1]


def test_no_session_a_wrong_password_and_an_expired_session_are_refused(api):
    server, _clients = api
    anonymous = Client(server)
    for endpoint in ("events", "counts", "top", "threats"):
        status, body = anonymous.get(endpoint, **RANGE)
        assert status == 401 and "not logged in" in body["error"]
    assert anonymous.login("v4", "wrong password")[0] == 401
    assert anonymous.get("events", **RANGE)[0] == 401
    # A session idle past [server] session_idle_timeout_s: its last use moved back in the state
    # database the server reads (no waiting on a clock).
    stale = Client(server)
    assert stale.login("rng")[0] == 200
    assert stale.get("events", **RANGE)[0] == 200
    cookie = next(c.value for c in stale.jar if c.name == "mt_session")
    db = sqlite3.connect(str(server.log_dir / "server-state.sqlite"))
    with db:
        changed = db.execute("UPDATE sessions SET last_used_s = last_used_s - 7200 WHERE id_hash = ?",
                             (hashlib.sha256(cookie.encode()).hexdigest(),)).rowcount
    db.close()
    assert changed == 1
    for endpoint in ("events", "counts", "top", "threats"):
        status, body = stale.get(endpoint, **RANGE)
        assert status == 401 and "expired" in body["error"], body
    assert clients_of(api)["rng"].get("events", **RANGE)[0] == 200    # the user's other session lives on


def test_latency_is_kept_per_endpoint(api):
    server, clients = api
    clients["admin"].ok("top", **RANGE)
    stats = server.health()["api"]["requests"]
    for endpoint in ("events", "counts", "top", "threats"):
        s = stats[endpoint]
        assert s["requests"] >= 1 and s["latency_ms"]["buckets"]["+Inf"] == s["requests"]


# -- threats: sort, sparklines, the latest event, paging, counts' total (issue 12) ----------------

THREAT_SORT_KEYS = {
    "events": lambda k, t: t["events"], "first": lambda k, t: t["first"], "last": lambda k, t: t["last"],
    "severity": lambda k, t: {"low": 0, "medium": 1, "high": 2}[t["severity"]],
    "src": lambda k, t: ip_key(k[0]), "trail": lambda k, t: k[1]}


def sorted_threats(expected: dict, sort: str) -> list:
    """The pairs in `sort` order as the API documents it: ties by most events, then source and
    trail as text."""
    items = sorted(expected.items(), key=lambda kv: (-kv[1]["events"], kv[0]))
    key = THREAT_SORT_KEYS[sort.lstrip("-")]
    return [k for k, _t in sorted(items, key=lambda kv: key(*kv), reverse=sort.startswith("-"))]


@pytest.mark.parametrize("sort", ["-events", "events", "first", "-first", "last", "-last", "severity", "-severity",
                                  "src", "-src", "trail", "-trail"])
def test_threats_sort_in_every_order_across_pages(api, sort):
    _server, clients = api
    for name in ("admin", "v6"):
        expected = expected_threats(visible_to(name))
        rows = all_pages(clients[name], endpoint="threats", limit=4, sort=sort)
        assert [(r["src_ip"], r["trail"]) for r in rows] == sorted_threats(expected, sort), (name, sort)


def test_threat_rows_carry_the_latest_events_type_info_reference_and_a_sparkline(api):
    _server, clients = api
    for name in ("admin", "v4"):
        visible = visible_to(name)
        rows = all_pages(clients[name], endpoint="threats", limit=50, spark=72)     # 3 days: one slice an hour
        assert rows
        start = DAY0_S * 1_000_000
        for r in rows:
            mine = [e for e in visible if (e["src_ip"], e["trail"]) == (r["src_ip"], r["trail"])]
            latest = masked(name, max(mine, key=lambda e: e["ts_us"]))
            assert (r["type"], r["info"], r["reference"]) == (latest["type"], latest["info"], latest["reference"])
            spark = [0] * 72
            for e in mine:
                spark[(e["ts_us"] - start) // HOUR_US] += 1
            assert r["spark"] == spark, (name, r)
        assert all(r["spark"] == [] for r in clients[name].ok("threats", **RANGE)["threats"])
    # Slices shorter than an hour are counted from the events themselves.
    rows = all_pages(clients["admin"], endpoint="threats", limit=50, spark=96, q="sev:high")
    for r in rows:
        mine = [e for e in STORED if (e["src_ip"], e["trail"]) == (r["src_ip"], r["trail"]) and e["severity"] == "high"]
        spark = [0] * 96
        for e in mine:
            spark[(e["ts_us"] - DAY0_S * 1_000_000) * 96 // (3 * DAY_US)] += 1
        assert r["spark"] == spark


def test_counts_answer_the_total(api):
    _server, clients = api
    for name in USERS:
        assert clients[name].ok("counts", **RANGE)["total"] == len(visible_to(name))
        assert clients[name].ok("counts", by="sensor", **RANGE)["total"] == len(visible_to(name))


BAD_THREATS = [({"sort": "colour"}, "sort"), ({"sort": "--events"}, "sort"), ({"sort": "events-"}, "sort"),
               ({"spark": "97"}, "spark"), ({"spark": "-1"}, "spark"), ({"hidden": "maybe"}, "hidden")]


@pytest.mark.parametrize("params,parameter", BAD_THREATS, ids=[p for _, p in BAD_THREATS])
def test_bad_threats_parameters_are_400s(api, params, parameter):
    _server, clients = api
    status, body = clients["admin"].get("threats", **{**RANGE, **params})
    assert status == 400 and body["parameter"] == parameter, body


# -- the triage hook: an Api given a triage book (a tiny real one here) -----------------------------

def address_text(text):
    from server.api.v1 import address_text as canonical
    return canonical(text)


class TinyTriage:
    """A triage book of the hook's shape: hides pairs per user, annotates rows, records calls."""

    def __init__(self, hidden: dict):
        self.hidden = hidden            # user name -> {(src_ip, trail)}
        self.calls = []

    def excluded_pairs(self, user, now_s):
        self.calls.append(("excluded_pairs", user.name, now_s))
        return tuple(sorted(self.hidden.get(user.name, ())))

    def annotate(self, user, rows):
        self.calls.append(("annotate", user.name, len(rows)))
        for row in rows:
            hidden = {(address_text(a), t) for a, t in self.hidden.get(user.name, ())}
            row["hidden"] = (row["src_ip"], row["trail"]) in hidden
            row["triage"] = {"status": "new", "assignee": None, "notes": 0}


def test_the_triage_hook_leaves_out_hidden_pairs_and_annotates_rows(tmp_path):
    import asyncio
    from aiohttp import test_utils, web
    from events.record import Event
    from server.api.v1 import Api
    from server.auth.login import Session
    from server.auth.users import parse_user_line
    from server.auth.web import SESSION_KEY
    from server.store.sqlite import SqliteStore

    store = SqliteStore(str(tmp_path / "store"))
    store.ingest([Event(e["ts_us"], e["sensor"], e["src_ip"], e["src_port"], e["dst_ip"], e["dst_port"], e["proto"],
                        e["type"], e["trail"], e["info"], e["reference"], e["severity"]) for e in EVENTS])
    users = {n: parse_user_line(make_user_line(n, PASSWORD, uid, nf)) for n, (uid, nf) in USERS.items()}
    everything = expected_threats(visible_to("admin"))
    hide = set(sorted(everything)[:3])
    # The book may hold a pair as IPv4-mapped text: it is the same address.
    hide_as_written = {("::ffff:" + s if "." in s else s, t) for s, t in hide}
    book = TinyTriage({"admin": hide_as_written})
    api = Api(store, triage=book, now_s=lambda: 1_800_000_000.0)

    @web.middleware
    async def as_user(request, handler):
        request[SESSION_KEY] = Session("x", users[request.headers["X-Test-User"]], 0, 0, "t")
        return await handler(request)

    async def run():
        app = web.Application(middlewares=[as_user])
        api.setup(app)
        async with test_utils.TestClient(test_utils.TestServer(app)) as client:
            async def threats(user, **params):
                r = await client.get("/api/v1/threats", params={**RANGE, "limit": "1000", **params},
                                     headers={"X-Test-User": user})
                assert r.status == 200
                return (await r.json())["threats"]
            return (await threats("admin"), await threats("admin", hidden="show"), await threats("v4"),
                    await threats("admin", q="sev:high"))

    try:
        hidden_left_out, shown, other_user, filtered = asyncio.run(run())
    finally:
        store.close()
    assert {(r["src_ip"], r["trail"]) for r in hidden_left_out} == set(everything) - hide
    assert {(r["src_ip"], r["trail"]) for r in shown} == set(everything)
    assert {(r["src_ip"], r["trail"]) for r in shown if r["hidden"]} == hide
    assert all(r["triage"]["status"] == "new" for r in shown + hidden_left_out + other_user)
    assert {(r["src_ip"], r["trail"]) for r in other_user} == set(expected_threats(visible_to("v4")))
    assert {(r["src_ip"], r["trail"]) for r in filtered} == {
        k for k, t in expected_threats([e for e in STORED if e["severity"] == "high"]).items()} - hide
    for name in ("admin", "v4"):
        assert ("excluded_pairs", name, 1_800_000_000.0) in book.calls
    # hidden=show asks no exclusions; every answer was annotated.
    assert sum(1 for c in book.calls if c[0] == "excluded_pairs") == 3
    assert sum(1 for c in book.calls if c[0] == "annotate") == 4
