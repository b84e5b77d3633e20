"""Suppressions reach our sensors, for real: a real `maltrail-engine server` (tests/server_proc.py)
whose state database holds analysts' suppressions (written through StateDB, as the triage routes
write them), and a real sensor (`maltrail-engine replay` fed through a FIFO, tests/collectors.py
Sensor) forwarding to it with [sensor] server_suppressions_poll_s.

- Events of a suppressed (host, trail) pair stop once the sensor has polled, while the same
  trail from another host and other trails from the same host go on; what the sensor drops is
  counted as host-whitelisted, and the server's store holds exactly the events not suppressed.
- A suppression ends at its expiry on the sensor's side even while the server cannot be reached;
  the others stay through the outage.
- GET /api/v1/sensor/suppressions answers only a valid sensor key (401 and counted otherwise).
- The sensor believes an answer only when every row checks out (parse_suppressions).
"""

from __future__ import annotations

import collections
import http.client
import json
import time

import pytest

from events.forwarders.server_link import BadAnswer, parse_suppressions
from engine.sources import synthetic as g
from server.auth.state import StateDB, state_db_path
from config.load import load_config
from tests.collectors import T0_S, Sensor
from tests.test_forward_rsyslog import artifact  # noqa: F401 (a fixture)
from tests.test_server_link import new_server, sensor_key, stored_events, url

HOST_A, HOST_B = "10.9.0.1", "10.9.0.2"


def query(host: str, name: str, t_s: int, i: int):
    return (t_s * 1_000_000_000 + i * 1_000_000,
            g.udp_frame(host, "10.0.0.53", 20000 + i, 53, g.dns_query(name + ".evil-parent.net")))


def round_of(t_s: int, marker: str):
    """One round of traffic: (A, x), (B, x), (A, y), then a marker from A. Rounds are 10 minutes
    of packet time apart, beyond the condensing window: every round's events are records of
    their own."""
    return [query(HOST_A, "x", t_s, 0), query(HOST_B, "x", t_s, 1), query(HOST_A, "y", t_s, 2),
            query(HOST_A, marker, t_s, 3)]


def suppress(server, host: str, trail: str, for_s: float) -> int:
    state = StateDB(state_db_path(load_config(str(server.config))))
    try:
        now = time.time()
        return state.add_suppression(host, trail, now + for_s, "analyst", "test", now)
    finally:
        state.close()


def test_a_suppression_stops_its_pair_at_the_sensor_until_it_expires(artifact, tmp_path):  # noqa: F811
    server = new_server(tmp_path)
    key = sensor_key(server, "fwd-test")
    server.start()
    sensor = Sensor(tmp_path / "sensor", artifact, tmp_path / "sensor-log", server_url=url(server),
                    server_key=key, server_suppressions_poll_s=1).start()
    try:
        # Round 1, nothing suppressed: all four arrive.
        sensor.feed(round_of(T0_S, "m1"))
        server.until(lambda h: h["intake"]["https"]["events"] == 4)
        # Analysts suppress (A, x) for an hour and (B, x) for a few seconds, as the UI would: the
        # trail as the event shows it.
        suppress(server, HOST_A, "(x).evil-parent.net", 3600)
        suppress(server, HOST_B, "(x).evil-parent.net", 6)
        sensor.wait_line(r"suppressions from the server: 2 in force: 10\.9\.0\.1/32 x\.evil-parent\.net, "
                         r"10\.9\.0\.2/32 x\.evil-parent\.net")
        # Round 2: both x events are dropped at the sensor; (A, y) and the marker arrive.
        sensor.feed(round_of(T0_S + 600, "m2"))
        server.until(lambda h: h["intake"]["https"]["events"] == 6)
        # The server goes away; the short suppression still ends, on the sensor's own clock.
        assert server.stop() == 0
        sensor.wait_line(r"cannot read the suppressions")
        sensor.wait_line(r"suppressions from the server: 1 in force: 10\.9\.0\.1/32 x\.evil-parent\.net$")
        # Round 3, server still down: (B, x) is reported again, (A, x) is still suppressed.
        sensor.feed(round_of(T0_S + 1200, "m3"))
        server.start()
        code = sensor.finish()
    finally:
        if sensor.proc.poll() is None:
            sensor.proc.kill()
    assert code == 0, sensor.text()
    assert "events dropped by controls: host-whitelisted 3" in sensor.text(), sensor.text()
    server.until(lambda h: h["intake"]["https"]["events"] >= 3)     # since the restart
    assert server.stop() == 0
    pairs = collections.Counter((e.src_ip, e.trail) for e in stored_events(server))
    assert pairs == {(HOST_A, "(x).evil-parent.net"): 1, (HOST_B, "(x).evil-parent.net"): 2,
                     (HOST_A, "(y).evil-parent.net"): 3, (HOST_A, "(m1).evil-parent.net"): 1,
                     (HOST_A, "(m2).evil-parent.net"): 1, (HOST_A, "(m3).evil-parent.net"): 1}


def get(server, authorization: str | None) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=30)
    conn.request("GET", "/api/v1/sensor/suppressions",
                 headers={"Authorization": authorization} if authorization else {})
    response = conn.getresponse()
    body = json.loads(response.read() or b"{}")
    conn.close()
    return response.status, body


def test_the_route_answers_a_sensor_key_only(tmp_path):
    server = new_server(tmp_path)
    key = sensor_key(server, "s1")
    sid = suppress(server, "2001:db8::/64", "Evil.Example", 3600)
    suppress(server, "10.0.0.1", "gone.example", 0.001)        # expired by the time anyone asks
    server.start()
    status, body = get(server, "Bearer s1:" + key)
    assert status == 200, body
    assert [(r["host"], r["trail"]) for r in body["suppressions"]] == [("2001:db8::/64", "evil.example")]
    assert body["suppressions"][0]["expires_s"] > body["now_s"]
    assert sid > 0
    for wrong in (None, "Bearer s1:" + "0" * len(key), "Bearer s2:" + key, "Basic czE6eA=="):
        assert get(server, wrong)[0] == 401
    h = server.health()
    assert h["intake"]["https"]["refused"]["unauthorized"] == 4
    assert server.stop() == 0


GOOD = {"now_s": 1000.0, "suppressions": [{"host": "10.0.0.1", "trail": "(x).evil.net", "expires_s": 1060}]}


def test_the_sensor_believes_an_answer_only_when_every_row_checks_out():
    assert parse_suppressions(json.dumps(GOOD).encode(), 50.0) == [("10.0.0.1/32", "(x).evil.net", 110.0)]
    expired = dict(GOOD, suppressions=[dict(GOOD["suppressions"][0], expires_s=999)])
    assert parse_suppressions(json.dumps(expired).encode(), 50.0) == []
    row = GOOD["suppressions"][0]
    for bad in (b"not json", b"[]", json.dumps({"suppressions": []}).encode(),
                json.dumps(dict(GOOD, now_s="soon")).encode(),
                json.dumps(dict(GOOD, suppressions=[dict(row, host="10.0.0.1; rm -rf")])).encode(),
                json.dumps(dict(GOOD, suppressions=[dict(row, host=None)])).encode(),
                json.dumps(dict(GOOD, suppressions=[dict(row, trail="")])).encode(),
                json.dumps(dict(GOOD, suppressions=[dict(row, trail="a\nb")])).encode(),
                json.dumps(dict(GOOD, suppressions=[dict(row, trail="x" * 5000)])).encode(),
                json.dumps(dict(GOOD, suppressions=[dict(row, expires_s=None)])).encode(),
                json.dumps(dict(GOOD, suppressions=[row, "x"])).encode(),
                json.dumps(dict(GOOD, suppressions=[row] * 10_001)).encode()):
        with pytest.raises(BadAnswer):
            parse_suppressions(bad, 50.0)
    # NaN and infinity are not numbers here (json.loads takes them).
    with pytest.raises(BadAnswer):
        parse_suppressions(b'{"now_s": NaN, "suppressions": []}', 50.0)
