"""The web UI with a real sensor of ours behind it: what an analyst does in the browser reaches
the sensor, and what the sensor detects reaches the browser.

A real `maltrail-engine server` (tests/server_proc.py) with one analyst, and a real sensor
(`maltrail-engine replay` reading pcap records from a FIFO, tests/collectors.py Sensor) forwarding
to it over HTTP with [sensor] server_suppressions_poll_s = 1. Traffic comes in rounds of DNS
queries under a trail of the test artifact, ten minutes of packet time apart (so each round's
events are records of their own). Debian's chromium (tests/browser.py) drives the page the server
serves; every page fails its test on console output (tests/test_ui.py `pages`).

- A suppression made in the threat's drawer takes the pair out of the threat list, the sensor
  says it has it ("suppressions from the server: ..."), and in the next round the sensor reports
  that (host, trail) no more while the same trail from another host and another trail from the
  same host go on: read in the server's store through the API and in the sensor's own log
  through `maltrail-engine tail`.
- Live mode: an event the sensor detects after the page opened appears in the live table; while
  paused it is held (the page says how many wait) and appears on resume.

Nothing is timed: waits are on the page's elements, the sensor's lines and the API's answers.
"""

from __future__ import annotations

import collections
import itertools
import json

import pytest

from server.auth.users import make_user_line
from tests.browser import browser, shots  # noqa: F401  (fixtures)
from tests.collectors import T0_S, Sensor, logged_events
from tests.test_forward_rsyslog import artifact  # noqa: F401  (a fixture)
from tests.test_sensor_suppressions import query
from tests.test_server_api import PASSWORD, Client
from tests.test_server_link import new_server, sensor_key, until, url
from tests.test_ui import pages, suppress_in_drawer  # noqa: F401  (pages: a fixture checked for console output)

DAY = "2026-03-01"                  # T0_S's day: every round falls in it
HASH = "#/dashboard?from=%s&to=%s" % (DAY, DAY)
HOST_A, HOST_B, HOST_C = "10.9.0.1", "10.9.0.2", "10.9.0.3"
ROUND_S = 600


@pytest.fixture(scope="module")
def rig(tmp_path_factory, artifact):  # noqa: F811
    """(server, sensor, log_dir, next_round): the sensor runs for the whole module; next_round()
    gives the packet time of a round later than any before it."""
    tmp = tmp_path_factory.mktemp("ui-sensor")
    server = new_server(tmp, extra="users = %s\n" % json.dumps([make_user_line("admin", PASSWORD, 0, "")]))
    key = sensor_key(server, "fwd-test")
    server.start()
    log_dir = tmp / "sensor-log"
    sensor = Sensor(tmp / "sensor", artifact, log_dir, server_url=url(server), server_key=key,
                    server_suppressions_poll_s=1).start()
    rounds = itertools.count()
    try:
        yield server, sensor, log_dir, lambda: T0_S + ROUND_S * next(rounds)
        assert sensor.finish() == 0, sensor.text()
    finally:
        if sensor.proc.poll() is None:
            sensor.proc.kill()
            sensor.proc.wait()
        server.stop()


@pytest.fixture(scope="module")
def server(rig):
    """The name tests/test_ui.py's `pages` asks for."""
    return rig[0]


@pytest.fixture(scope="module")
def admin(server) -> Client:
    c = Client(server)
    assert c.login("admin")[0] == 200
    return c


def stored(admin: Client) -> collections.Counter:
    """(src_ip, trail) -> events, of every event the server's store holds for DAY (the API's
    /events, paged: it lists suppressed pairs' events too, as the store holds them)."""
    out, cursor = collections.Counter(), None
    while True:
        params = {"from": DAY, "to": DAY, "limit": 1000}
        if cursor:
            params["cursor"] = cursor
        page = admin.ok("events", **params)
        out.update((e["src_ip"], e["trail"]) for e in page["events"])
        cursor = page.get("next_cursor")
        if not cursor:
            return out


def logged(log_dir) -> collections.Counter:
    """The same count of the sensor's own log, through `maltrail-engine tail --format json`."""
    return collections.Counter((e["src_ip"], e["trail"]) for e in logged_events(log_dir))


def trail(name: str) -> str:
    return "(%s).evil-parent.net" % name


def threat_rows(page) -> dict:
    """(src_ip, trail) -> the events column, of the threat list as shown."""
    return {(tr.get_attribute("data-src"), tr.get_attribute("data-trail")):
            int(tr.query_selector("td.num").inner_text().replace(",", ""))
            for tr in page.query_selector_all("#threat-table tbody tr")}


def test_a_suppression_made_in_the_drawer_reaches_the_sensor(rig, pages, admin):  # noqa: F811
    server, sensor, log_dir, next_round = rig
    t = next_round()
    sensor.feed([query(HOST_A, "x", t, 0), query(HOST_B, "x", t, 1), query(HOST_A, "y", t, 2), query(HOST_A, "s1", t, 3)])
    until("round 1 in the store", lambda: stored(admin)[(HOST_A, trail("s1"))] == 1)
    w = pages()
    page = w.page
    w.go(HASH)
    before = threat_rows(page)
    assert {(HOST_A, trail("x")), (HOST_B, trail("x")), (HOST_A, trail("y"))} <= set(before)
    # The analyst opens (A, x) and suppresses it (the default expiry: an hour).
    row = next(tr for tr in page.query_selector_all("#threat-table tbody tr")
               if (tr.get_attribute("data-src"), tr.get_attribute("data-trail")) == (HOST_A, trail("x")))
    row.click()
    page.wait_for_selector("#suppress")
    assert page.inner_text("#drawer-title") == trail("x")
    suppress_in_drawer(w, "a scanner of ours")
    after = threat_rows(page)
    assert (HOST_A, trail("x")) not in after
    assert {(HOST_B, trail("x")), (HOST_A, trail("y"))} <= set(after)
    w.shot("ui-sensor-suppressed")
    listed = admin.ok("suppressions")["suppressions"]
    assert [(s["host"], s["trail"], s["reason"], s["created_by"]) for s in listed] == \
        [(HOST_A, trail("x"), "a scanner of ours", "admin")]
    # The sensor has it at its next poll: the host as a /32, the trail as its whitelist keys it.
    sensor.wait_line(r"suppressions from the server: 1 in force: 10\.9\.0\.1/32 x\.evil-parent\.net$")
    # The next round: (A, x) is dropped at the sensor; (B, x), (A, y) and the marker go on.
    t = next_round()
    sensor.feed([query(HOST_A, "x", t, 0), query(HOST_B, "x", t, 1), query(HOST_A, "y", t, 2), query(HOST_A, "s2", t, 3)])
    until("round 2 in the store", lambda: stored(admin)[(HOST_A, trail("s2"))] == 1)
    mine = lambda counts: {k: v for k, v in counts.items() if k[0] in (HOST_A, HOST_B)}  # noqa: E731
    expect = {(HOST_A, trail("x")): 1, (HOST_B, trail("x")): 2, (HOST_A, trail("y")): 2,
              (HOST_A, trail("s1")): 1, (HOST_A, trail("s2")): 1}
    assert mine(stored(admin)) == expect
    assert mine(logged(log_dir)) == expect
    # The page, reloaded, shows the other pairs grown and the suppressed one still out.
    w.stale()
    page.reload()
    w.ready()
    shown = threat_rows(page)
    assert (HOST_A, trail("x")) not in shown
    assert shown[(HOST_B, trail("x"))] == 2 and shown[(HOST_A, trail("y"))] == 2


def test_live_mode_shows_what_the_sensor_detects_and_holds_it_while_paused(rig, pages, admin):  # noqa: F811
    server, sensor, log_dir, next_round = rig
    w = pages()
    page = w.page
    opened = server.health()["live"]["streams"]
    w.go(HASH + "&live=1")
    page.wait_for_selector("#live-note:has-text('live')")
    # The note says "live" as the request goes out: wait for the server to hold the stream, or
    # an event stored in between would be published before the page subscribed.
    server.until(lambda h: h["live"]["streams"] > opened, indexed=False)
    # Detected after the page opened: it appears while live mode is on.
    t = next_round()
    sensor.feed([query(HOST_C, "live1", t, 0)])
    page.wait_for_selector("#live-rows td.trail:has-text('%s')" % trail("live1"))
    row = page.query_selector("#live-rows tr")
    assert [td.inner_text() for td in row.query_selector_all("td")][1:6] == \
        ["fwd-test", HOST_C, "10.0.0.53", "DNS", trail("live1")]
    w.shot("ui-sensor-live")
    # Paused: the next detection reaches the page but is held, not shown.
    page.click("#live-pause")
    assert page.inner_text("#live-pause") == "Resume"
    t = next_round()
    sensor.feed([query(HOST_C, "live2", t, 0)])
    until("live2 in the store", lambda: stored(admin)[(HOST_C, trail("live2"))] == 1)
    page.wait_for_selector("#live-note:has-text('paused: 1 new')")
    assert page.query_selector("#live-rows td.trail:has-text('%s')" % trail("live2")) is None
    assert len(page.query_selector_all("#live-rows tr")) == 1
    # Resumed: what was held is shown, newest first.
    page.click("#live-pause")
    page.wait_for_selector("#live-rows td.trail:has-text('%s')" % trail("live2"))
    assert [tr.query_selector("td.trail").inner_text() for tr in page.query_selector_all("#live-rows tr")] == \
        [trail("live2"), trail("live1")]
    assert page.inner_text("#live-note") == "live"
    w.shot("ui-sensor-live-resumed")
