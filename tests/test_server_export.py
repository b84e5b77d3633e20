"""GET /api/v1/export (server/api/export.py) through a real `maltrail-engine server` fed by UDP
datagrams: tests/test_server_api.py's events plus events whose trails a spreadsheet would run as
formulas. Each format is read back (CSV with the csv module, JSON, the indicators list) and
compared with what the view's own endpoint answers and with what the test computes from the
events it sent; a scoped user's export holds only that user's events, masked as /events masks.
"""

from __future__ import annotations

import csv
import io
import json
import urllib.error
import urllib.parse
import urllib.request

import pytest

from tests.test_server_api import (EVENTS, RANGE, USERS, Client, expected_threats, masked, newest_first,
                                   stored_form, users_server)

HOSTILE_TRAILS = ["=cmd|' /C calc'!A0", "+1+1", "@SUM(A1)", "-2+3"]
HOSTILE = [dict(EVENTS[i], ts_us=EVENTS[i]["ts_us"] + 3, trail=trail, type="URL")
           for i, trail in enumerate(HOSTILE_TRAILS)]
ALL = EVENTS + HOSTILE
ALL_STORED = [stored_form(e) for e in ALL]


@pytest.fixture(scope="module", params=["sqlite", "clickhouse"])
def served(request, tmp_path_factory):
    with users_server(request, tmp_path_factory, "export", USERS, ALL) as both:
        yield both


def download(client: Client, **params):
    url = client.base + "/api/v1/export?" + urllib.parse.urlencode({**RANGE, **params})
    try:
        with client.opener.open(url, timeout=60) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()


def visible(name, events=ALL_STORED):
    from server.auth.scopes import parse_netfilter
    scope = parse_netfilter(USERS[name][1])
    return [e for e in events if scope.contains(e["src_ip"]) or scope.contains(e["dst_ip"])]


def all_event_rows(client, **params):
    rows, cursor = [], None
    while True:
        body = client.ok("events", limit=1000, **RANGE, **params, **({"cursor": cursor} if cursor else {}))
        rows += body["events"]
        cursor = body["next_cursor"]
        if cursor is None:
            return rows


def test_events_as_json_csv_and_indicators_are_the_views_rows(served):
    _server, clients = served
    for name, q in (("admin", ""), ("admin", "type:URL"), ("v4", ""), ("v6", "-sev:low")):
        client = clients[name]
        params = {"q": q} if q else {}
        rows = all_event_rows(client, **params)
        assert rows
        status, headers, body = download(client, view="events", format="json", **params)
        assert status == 200 and headers["Content-Type"].startswith("application/json")
        assert headers["Content-Disposition"] == 'attachment; filename="maltrail-events-2026-11-23.json"'
        assert headers["X-Export-Cap"] == "100000"
        assert json.loads(body) == rows, (name, q)

        status, headers, body = download(client, view="events", format="csv", **params)
        assert status == 200 and headers["Content-Type"].startswith("text/csv")
        assert "attachment" in headers["Content-Disposition"] and headers["Content-Disposition"].endswith('.csv"')
        back = list(csv.DictReader(io.StringIO(body.decode())))
        assert len(back) == len(rows)
        for got, want in zip(back, rows):
            for field, value in want.items():
                text = "" if value is None else str(value)
                if text[:1] in ("=", "+", "-", "@", "\t"):
                    text = "'" + text
                assert got[field] == text, (name, field, got, want)

        status, headers, body = download(client, view="events", format="indicators", **params)
        assert status == 200 and headers["Content-Type"].startswith("text/plain")
        lines = body.decode().splitlines()
        assert lines == list(dict.fromkeys(r["trail"].replace("\t", " ") for r in rows))


def test_a_scoped_users_export_holds_only_its_events_masked(served):
    _server, clients = served
    for name in ("v4", "v6", "rng"):
        expected = [masked(name, e) for e in newest_first(visible(name))]
        status, _headers, body = download(clients[name], view="events", format="json")
        got = json.loads(body)
        assert [(r["ts_us"], r["src_ip"], r["dst_ip"], r["trail"], r["info"]) for r in got] == [
            (e["ts_us"], e["src_ip"], e["dst_ip"], e["trail"], e["info"]) for e in expected]
        assert len(got) < len(ALL)
        masked_rows = [r for r in got if r["reference"] in ("(custom)", "(remote custom)")]
        assert masked_rows and all(r["info"] == "-" for r in masked_rows)
        status, _headers, body = download(clients[name], view="events", format="csv")
        back = list(csv.DictReader(io.StringIO(body.decode())))
        assert all(r["info"] == "'-" for r in back if r["reference"] in ("(custom)", "(remote custom)"))
        status, _headers, body = download(clients[name], view="threats", format="json")
        assert {(r["src_ip"], r["trail"]) for r in json.loads(body)} == set(expected_threats(visible(name)))


def test_formula_cells_are_neutralised_in_csv_only(served):
    _server, clients = served
    client = clients["admin"]
    for view in ("events", "threats"):
        status, _headers, body = download(client, view=view, format="csv", q="type:URL")
        back = list(csv.DictReader(io.StringIO(body.decode())))
        trails = {r["trail"] for r in back}
        for trail in HOSTILE_TRAILS:
            assert "'" + trail in trails and trail not in trails, (view, trail)
        assert "bad.example/x y" in trails or "c2.example" in trails      # plain cells are as they were
        status, _headers, body = download(client, view=view, format="json", q="type:URL")
        assert set(HOSTILE_TRAILS) <= {r["trail"] for r in json.loads(body)}


def test_threats_export_is_the_threats_view(served):
    _server, clients = served
    for name, params in (("admin", {}), ("admin", {"sort": "trail", "q": "sev:high"}), ("rng", {"sort": "-last"})):
        client = clients[name]
        view = client.ok("threats", limit=10000, **RANGE, **params)["threats"]
        status, headers, body = download(client, view="threats", format="json", **params)
        assert status == 200 and headers["X-Export-Cap"] == "10000"
        assert json.loads(body) == view
        status, headers, body = download(client, view="threats", format="csv", **params)
        back = list(csv.DictReader(io.StringIO(body.decode())))
        assert [(r["src_ip"], r["trail"].lstrip("'"), int(r["events"]), r["sensors"].split(";"))
                for r in back] == [(v["src_ip"], v["trail"], v["events"], v["sensors"]) for v in view]
        status, headers, body = download(client, view="threats", format="indicators", **params)
        assert body.decode().splitlines() == list(dict.fromkeys(v["trail"].replace("\t", " ") for v in view))


def test_an_empty_export_and_bad_parameters(served):
    _server, clients = served
    client = clients["admin"]
    status, _h, body = download(client, view="events", format="json", q="src:198.18.0.0/15")
    assert status == 200 and json.loads(body) == []
    status, _h, body = download(client, view="events", format="csv", q="src:198.18.0.0/15")
    assert body.decode().splitlines() == [",".join(("time", "ts_us", "sensor", "src_ip", "src_port", "dst_ip",
                                                    "dst_port", "proto", "type", "trail", "info", "reference",
                                                    "severity", "count", "last_ts_us"))]
    for params, parameter in (({"view": "sensors"}, "view"), ({"format": "xlsx"}, "format"),
                              ({"view": "events", "sort": "trail"}, "sort"), ({"view": "threats", "sort": "x"}, "sort"),
                              ({"colour": "red"}, "colour"), ({"from": "yesterday"}, "from")):
        status, _h, body = download(client, **params)
        assert status == 400 and json.loads(body)["parameter"] == parameter, (params, body)
    anonymous = Client(_server)
    status, _h, _body = download(anonymous, view="events", format="csv")
    assert status == 401
