"""The web UI (server/ui.py, server/web/) in a real browser against a real server.

A `maltrail-engine server` on loopback is fed real Maltrail-format UDP datagrams
(tests/test_server_api.py's events over three days, plus events whose trail and info are
markup), and Debian's chromium (tests/browser.py) loads the page the server serves, under its
strict CSP. What the page shows is read back from the page (text, and the numbers each chart
bar carries) and compared with the API's own answers for the same range. Every page fails its
test if anything reaches its console or raises, except the browser's own notes on API answers
the app expects (401 before login; /check's refusals on a server without a trail artifact: see
`expected`). Every endpoint the UI calls is this server's own, so no test skips for a missing
one. Screenshots of each view go to a
temporary folder whose path is printed. Nothing is timed: waits are on the app's
data-state="ready" and on elements.
"""

from __future__ import annotations

import json
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest

from server.auth.users import make_user_line
from server.ui import FILES
from tests.browser import Watched, browser, shots  # noqa: F401  (fixtures)
from tests.server_proc import ServerProc
from tests.test_server_api import DAY0_S, DARK, EVENTS, PASSWORD, Client, datagram

FROM, TO = "2026-11-23", "2026-11-25"
HASH = "#/dashboard?from=%s&to=%s" % (FROM, TO)
HOSTILE_TRAIL = '<img src=x onerror="window.__pwned=1">'
HOSTILE_TRAIL_2 = '"><script>window.__pwned=2</script>'
HOSTILE_INFO = "<b onmouseover=window.__pwned=3>bold</b>"
USERS = {"admin": (0, ""), "v4": (1000, "10.1.0.0/16")}


def hostile_events() -> list[dict]:
    """Enough events with markup in the trail to rank first among threats and trails."""
    base = dict(EVENTS[0], sensor="sensor-a", src_ip="10.1.66.6", dst_ip="192.168.5.66", proto="TCP", type="URL",
                info=HOSTILE_INFO, reference="(static)", severity="high")
    out = []
    for i in range(40):
        out.append(dict(base, ts_us=(DAY0_S + 3600 * (i % 60)) * 1_000_000 + 500_000 + i * 11, src_port=40000 + i,
                        trail=HOSTILE_TRAIL if i < 22 else HOSTILE_TRAIL_2))
    return out


ALL_EVENTS = EVENTS + hostile_events()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ui")
    extra = "users = %s\n" % json.dumps([make_user_line(n, PASSWORD, uid, nf) for n, (uid, nf) in USERS.items()])
    srv = ServerProc(tmp, extra=extra).start()
    try:
        srv.send(datagram(e) for e in ALL_EVENTS)
        srv.until(lambda h: h["intake"]["udp"]["stored"] >= len(ALL_EVENTS))
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def admin(server) -> Client:
    c = Client(server)
    assert c.login("admin")[0] == 200
    return c


def expected(url: str, status: int) -> bool:
    """The browser's notes on non-2xx answers the app is meant to get (tests/browser.py)."""
    path = urllib.parse.urlsplit(url).path
    if status == 401 and path in ("/api/v1/session", "/api/v1/login"):
        return True         # the app asks who is logged in before login; a wrong password
    if status in (400, 503) and path == "/api/v1/check":
        return True         # no trail artifact on the test server, or a trail that is no indicator
    return False


@pytest.fixture
def pages(browser, server, shots):
    """open(viewport=, color_scheme=, login=) -> a Watched page; every page is checked at the end."""
    opened = []

    def open_page(viewport=(1280, 720), color_scheme="light", login: str | None = "admin") -> Watched:
        context = browser.new_context(viewport={"width": viewport[0], "height": viewport[1]}, color_scheme=color_scheme)
        page = context.new_page()
        w = Watched(page, expected, shots)
        opened.append((context, w))
        page.goto(server.url + "/" + (HASH if login else ""))
        w.ready()
        if login:
            page.fill("#login-user", login)
            page.fill("#login-password", PASSWORD)
            w.act(lambda: page.click("#login-form button[type=submit]"))
            page.wait_for_selector("#bar", state="visible")
        return w

    yield open_page
    for context, w in opened:
        context.close()
    for _context, w in opened:
        w.check()


def figures(page) -> dict:
    return {el.get_attribute("data-figure"): int(el.inner_text().split("\n")[0].replace(",", ""))
            for el in page.query_selector_all("#totals .figure")}


# -- serving ----------------------------------------------------------------------------------------

def test_the_page_and_its_files_are_served_with_types_etags_and_the_csp(server):
    def get(path, headers=None):
        req = urllib.request.Request(server.url + path, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, dict(r.headers), r.read()
        except urllib.error.HTTPError as exc:
            return exc.code, dict(exc.headers), exc.read()

    status, headers, body = get("/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert "script-src 'self'" in headers["Content-Security-Policy"] and "style-src 'self'" in headers["Content-Security-Policy"]
    assert headers["Cache-Control"] == "no-cache" and headers["ETag"].startswith('"')
    assert get("/", {"If-None-Match": headers["ETag"]})[0] == 304
    html = body.decode()
    # No inline script or style in the page: every <script> has a src, no style attribute.
    assert re.findall(r"<script\b[^>]*>", html) == ['<script type="module" src="/static/app.js">']
    assert "style=" not in html and "<style" not in html
    weight = len(body)
    imported = set()
    for name in [n for n in FILES if n != "index.html"]:
        status, headers, data = get("/static/" + name)
        assert status == 200, name
        assert headers["Content-Type"].startswith("text/css" if name.endswith(".css") else "text/javascript"), name
        assert headers["X-Content-Type-Options"] == "nosniff"
        text = data.decode()
        # Values go in as text: nothing of ours writes markup from a string.
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
            assert sink not in text, (name, sink)
        imported |= set(re.findall(r'(?:from|import) "\./([a-z]+\.js)"', text))
        weight += len(data)
    assert imported <= set(FILES), "a module the app imports is not served"
    assert weight < 300_000, weight
    for bad in ("/static/index.html", "/static/../server/ui.py", "/static/ui.py", "/static/nothing.js", "/static/%2e%2e%2fsetup.py"):
        assert get(bad)[0] == 404, bad


# -- login --------------------------------------------------------------------------------------------

def test_login_refuses_wrong_password_and_unknown_user_alike_then_logs_in_and_out(pages):
    w = pages(login=None)
    page = w.page
    assert page.is_visible("#login-form") and not page.is_visible("#bar")
    w.shot("login")
    messages = []
    for user, password in (("admin", "wrong password"), ("nobody-here", PASSWORD)):
        page.fill("#login-user", user)
        page.fill("#login-password", password)
        w.act(lambda: page.click("#login-form button[type=submit]"))
        messages.append(page.inner_text("#login-error"))
        assert not page.is_visible("#bar")
        assert page.input_value("#login-password") == ""
    assert messages[0] == messages[1] and "Login failed" in messages[0]
    w.shot("login-failed")
    page.fill("#login-user", "admin")
    page.fill("#login-password", PASSWORD)
    w.act(lambda: page.click("#login-form button[type=submit]"))
    assert page.is_visible("#bar") and page.inner_text("#whoami") == "admin"
    assert page.inner_text("#login-error") == ""
    # Logged in survives a reload (the session cookie; the page asks /session).
    w.stale()
    page.reload()
    w.ready()
    assert page.is_visible("#bar") and page.inner_text("#whoami") == "admin"
    w.act(lambda: page.click("#logout"))
    assert page.is_visible("#login-form") and not page.is_visible("#bar")
    w.stale()
    page.reload()
    w.ready()
    assert page.is_visible("#login-form")


# -- the dashboard's figures are the API's ------------------------------------------------------------

def test_dashboard_figures_equal_the_apis_aggregates(pages, admin, shots):
    w = pages()
    page = w.page
    w.go(HASH)
    w.shot("dashboard")
    counts = admin.ok("counts", **{"from": FROM, "to": TO, "by": "type,severity", "bucket": "hour"})
    top = admin.ok("top", **{"from": FROM, "to": TO, "n": 10})
    total = sum(r["events"] for r in counts["counts"]["type"])
    assert total == len(ALL_EVENTS)
    severity = {}
    for r in counts["counts"]["severity"]:
        severity[r["value"]] = severity.get(r["value"], 0) + r["events"]
    shown = figures(page)
    assert shown == {"total": counts.get("total", total), **{s: severity.get(s, 0) for s in ("high", "medium", "low")}}

    def chart(by):
        bars = {}
        for g in page.query_selector_all("#chart svg g.bar"):
            segs = {r.get_attribute("data-value"): int(r.get_attribute("data-events")) for r in g.query_selector_all("rect")}
            if segs:
                bars[int(g.get_attribute("data-start-us"))] = segs
                assert sum(segs.values()) == int(g.get_attribute("data-events"))
        legend = {li.get_attribute("data-value"): int(li.query_selector("b").inner_text().replace(",", ""))
                  for li in page.query_selector_all("#chart .legend li")}
        expected = {}
        for r in counts["counts"][by]:
            expected.setdefault(r["start_us"], {})[r["value"]] = r["events"]
        assert bars == expected
        sums = {}
        for r in counts["counts"][by]:
            sums[r["value"]] = sums.get(r["value"], 0) + r["events"]
        assert legend == sums

    chart("type")
    y_axis(page)
    # Every hour of the three days has its bar (empty ones too), in order.
    starts = [int(g.get_attribute("data-start-us")) for g in page.query_selector_all("#chart svg g.bar")]
    assert len(starts) == 72 and starts == sorted(starts) and starts[0] == counts["requested"]["from_us"]
    split = {r.get_attribute("data-value"): int(r.get_attribute("data-events")) for r in page.query_selector_all("#split rect")}
    assert split == {k: v for k, v in severity.items() if v}
    for field in ("src_ip", "dst_ip", "trail"):
        shown_top = [(b.get_attribute("data-value"), int(b.get_attribute("data-events")))
                     for b in page.query_selector_all("#top-%s .top-item" % field)]
        assert shown_top == [(r["value"], r["events"]) for r in top["top"][field]], field
        assert [b.query_selector(".top-value").inner_text() for b in page.query_selector_all("#top-%s .top-item" % field)] == \
            [r["value"] for r in top["top"][field]]
    threats = admin.ok("threats", **{"from": FROM, "to": TO, "limit": 50})
    rows = [(tr.get_attribute("data-src"), tr.get_attribute("data-trail"))
            for tr in page.query_selector_all("#threat-table tbody tr")]
    assert rows == [(t["src_ip"], t["trail"]) for t in threats["threats"]]
    events_col = [int(tr.query_selector("td.num").inner_text().replace(",", "")) for tr in page.query_selector_all("#threat-table tbody tr")]
    assert events_col == [t["events"] for t in threats["threats"]]
    # The second page is the API's second page.
    if threats["next_cursor"]:
        w.act(lambda: page.click("#threats-next"))
        second = admin.ok("threats", **{"from": FROM, "to": TO, "limit": 50, "cursor": threats["next_cursor"]})
        assert [tr.get_attribute("data-trail") for tr in page.query_selector_all("#threat-table tbody tr")] == \
            [t["trail"] for t in second["threats"]]
    # Stacked by severity: the same check against the severity counts; the choice is in the URL.
    w.act(lambda: page.click(".seg-toggle button[data-by=severity]"))
    assert "by=severity" in page.url
    chart("severity")
    y_axis(page)
    w.shot("dashboard-by-severity")
    # A view whose tallest bar is one event: the axis says 0 and 1, once each (it said 1, 1, 0).
    one = next(t for t in admin.ok("threats", **{"from": FROM, "to": TO, "limit": 500})["threats"]
               if t["events"] == 1 and re.fullmatch(r"[a-z0-9.-]+", t["trail"]) and "." in t["src_ip"])
    q = "src:%s trail:%s" % (one["src_ip"], one["trail"])
    w.go("#/dashboard?" + urllib.parse.urlencode({"from": FROM, "to": TO, "q": q}))
    assert figures(page)["total"] == 1
    assert y_axis(page) == [0, 1]


def y_axis(page) -> list[int]:
    """The chart's y-axis labels, checked: distinct whole numbers from 0 up, the top one at or
    above the tallest bar (counts are whole: a tick between two, or two alike, says nothing)."""
    labels = [t.text_content() for t in page.query_selector_all("#chart svg text.axis[text-anchor=end]")]
    assert labels and all(re.fullmatch(r"\d{1,3}(,\d{3})*", t) for t in labels), labels
    ticks = sorted(int(t.replace(",", "")) for t in labels)
    assert len(set(ticks)) == len(ticks) and ticks[0] == 0, labels
    tallest = max([int(g.get_attribute("data-events")) for g in page.query_selector_all("#chart svg g.bar")] + [0])
    assert ticks[-1] >= tallest and (len(ticks) < 3 or ticks[-2] < tallest), (labels, tallest)
    return ticks


def test_previous_and_next_day_move_the_range_and_the_figures_follow(pages, admin):
    w = pages()
    page = w.page
    w.go("#/dashboard?from=2026-11-24&to=2026-11-24")
    for button, day in (("#prev-day", "2026-11-23"), ("#next-day", "2026-11-24"), ("#next-day", "2026-11-25")):
        w.act(lambda: page.click(button))
        assert "from=%s&to=%s" % (day, day) in page.url
        assert page.input_value("#range-from") == day
        counts = admin.ok("counts", **{"from": day, "to": day, "by": "type"})
        assert figures(page)["total"] == sum(r["events"] for r in counts["counts"]["type"])


# -- attacker-controlled text stays text ----------------------------------------------------------------

def test_a_trail_and_info_with_markup_render_as_text_and_run_nothing(pages):
    w = pages()
    page = w.page
    w.go(HASH)
    trails = [tr.query_selector("td.trail").inner_text() for tr in page.query_selector_all("#threat-table tbody tr")]
    assert HOSTILE_TRAIL in trails and HOSTILE_TRAIL_2 in trails
    tops = [b.inner_text() for b in page.query_selector_all("#top-trail .top-value")]
    assert HOSTILE_TRAIL in tops and HOSTILE_TRAIL_2 in tops

    def nothing_ran():
        assert page.evaluate("() => window.__pwned") is None
        assert page.query_selector_all("img") == []
        assert [s.get_attribute("src") for s in page.query_selector_all("script")] == ["/static/app.js"]
        assert page.query_selector_all("b[onmouseover]") == []

    nothing_ran()
    index = trails.index(HOSTILE_TRAIL_2)
    page.query_selector_all("#threat-table tbody tr")[index].click()
    page.wait_for_selector("#drawer", state="visible")
    page.wait_for_selector("#drawer-events .events")
    assert page.inner_text("#drawer-title") == HOSTILE_TRAIL_2
    assert HOSTILE_INFO in page.inner_text("#drawer-events")
    w.shot("drawer-hostile", full_page=False)
    nothing_ran()
    page.keyboard.press("Escape")
    assert not page.is_visible("#drawer")
    # A click on the hostile top trail makes a chip holding the text, quoted, as text.
    w.act(lambda: page.click('#top-trail .top-item[data-value="%s"]' % HOSTILE_TRAIL.replace('"', '\\"')))
    chip = page.query_selector("#chips .chip span").inner_text()
    assert chip == 'trail:"<img src=x onerror=\\"window.__pwned=1\\">"'
    nothing_ran()


# -- every view, no console output ------------------------------------------------------------------------

def test_every_view_loads_without_console_errors(pages, server, admin):
    w = pages()
    page = w.page
    w.go(HASH)
    page.query_selector("#threat-table tbody tr").click()
    page.wait_for_selector("#drawer-triage p, #drawer-triage select")
    page.wait_for_selector("#drawer-other p, #drawer-other ul")
    page.wait_for_selector("#drawer-check p, #drawer-check div")
    w.shot("drawer", full_page=False)
    page.keyboard.press("Escape")
    w.go("#/sensors")
    w.shot("sensors")
    w.go("#/suppressions")
    w.shot("suppressions")
    w.go(HASH + "&live=1")
    page.wait_for_selector("#live-note:not(:empty)")
    assert page.is_visible("#live") and page.is_visible("#live-pause")
    w.shot("dashboard-live")
    page.click("[data-export=threats-csv]")
    page.wait_for_selector("#export-note:not(:empty)")
    page.click("#mark-looked")
    page.wait_for_selector("#looked-note:not(:empty)")
    w.go("#/dashboard?from=2026-11-24&to=2026-11-24&by=severity")
    w.check()


def test_the_sensors_page_lists_each_sensor(pages, admin):
    w = pages()
    page = w.page
    w.go("#/sensors")
    names = [tr.get_attribute("data-sensor") for tr in page.query_selector_all("#sensor-table tbody tr")]
    api = admin.ok("sensors")
    assert sorted(names) == sorted(s["name"] for s in api["sensors"])
    assert {"sensor-a", "sensor b", "edge-3"} <= set(names)
    row = page.query_selector('#sensor-table tr[data-sensor="sensor b"]')
    by_name = {s["name"]: s for s in api["sensors"]}
    assert row.query_selector_all("td")[4].inner_text().replace(",", "") == str(by_name["sensor b"]["events"])
    assert ("silent" if by_name["sensor b"]["silent"] else "ok") == row.query_selector_all("td")[2].inner_text()


# -- theme, keyboard, screen sizes --------------------------------------------------------------------------

def background(page) -> str:
    return page.evaluate("() => getComputedStyle(document.body).backgroundColor")


def test_theme_follows_the_system_and_the_toggle_is_remembered(pages):
    light = pages(color_scheme="light")
    dark = pages(color_scheme="dark")
    light_bg, dark_bg = background(light.page), background(dark.page)
    assert light_bg != dark_bg
    light.page.click("#theme")
    assert light.page.get_attribute("html", "data-theme") == "dark"
    assert background(light.page) == dark_bg
    light.shot("dashboard-dark")
    light.stale()
    light.page.reload()
    light.ready()
    assert light.page.get_attribute("html", "data-theme") == "dark" and background(light.page) == dark_bg
    light.page.click("#theme")
    assert background(light.page) == light_bg


def test_keyboard_moves_through_the_threat_list_and_opens_and_closes_the_drawer(pages):
    w = pages()
    page = w.page
    w.go(HASH)
    rows = page.query_selector_all("#threat-table tbody tr")
    assert len(rows) >= 3
    page.locator("body").focus()
    key = lambda tr: (tr.get_attribute("data-src"), tr.get_attribute("data-trail"))  # noqa: E731

    def selected():
        chosen = page.query_selector_all("#threat-table tbody tr.selected")
        assert len(chosen) == 1
        return key(chosen[0])

    page.keyboard.press("j")            # the first press selects the first row
    assert selected() == key(rows[0])
    for k in ("j", "ArrowDown", "k"):
        page.keyboard.press(k)
    assert selected() == key(rows[1])
    page.keyboard.press("Enter")
    page.wait_for_selector("#drawer", state="visible")
    assert page.inner_text("#drawer-title") == rows[1].get_attribute("data-trail")
    page.keyboard.press("Escape")
    assert not page.is_visible("#drawer")
    page.keyboard.press("ArrowUp")
    assert selected() == key(rows[0])
    page.keyboard.press("k")            # stays on the first row
    assert selected() == key(rows[0])
    # Typing in the filter box is not navigation.
    page.click("#filter")
    page.keyboard.type("jjj")
    assert selected() == key(rows[0])


@pytest.mark.parametrize("size", [(390, 844), (1280, 720)], ids=["phone", "laptop"])
def test_no_horizontal_scroll_at_phone_and_laptop_sizes(pages, size):
    w = pages(viewport=size)
    page = w.page
    w.go(HASH)
    wide = "() => document.documentElement.scrollWidth - document.documentElement.clientWidth"
    assert page.evaluate(wide) <= 0
    w.shot("dashboard-%dx%d" % size)
    page.query_selector("#threat-table tbody tr").click()
    page.wait_for_selector("#drawer-events .events")
    assert page.evaluate(wide) <= 0
    w.shot("drawer-%dx%d" % size, full_page=False)
    page.keyboard.press("Escape")
    for view in ("#/sensors", "#/suppressions"):
        w.go(view)
        assert page.evaluate(wide) <= 0, view


# -- filter chips --------------------------------------------------------------------------------------------

def test_a_click_on_a_top_source_adds_a_chip_and_removing_it_restores_the_view(pages, admin):
    w = pages()
    page = w.page
    w.go(HASH)
    unfiltered = figures(page)["total"]
    first = page.query_selector("#top-src_ip .top-item")
    value = first.get_attribute("data-value")
    w.act(lambda: first.click())
    assert [c.inner_text() for c in page.query_selector_all("#chips .chip span")] == ["src:" + value]
    assert urllib.parse.unquote_plus(page.url.split("q=")[1].split("&")[0]) == "src:" + value
    counts = admin.ok("counts", **{"from": FROM, "to": TO, "by": "type", "q": "src:" + value})
    assert figures(page)["total"] == sum(r["events"] for r in counts["counts"]["type"]) < unfiltered
    sources = {tr.get_attribute("data-src") for tr in page.query_selector_all("#threat-table tbody tr")}
    assert sources == {value}
    w.shot("dashboard-filtered")
    w.act(lambda: page.click("#chips .chip-x"))
    assert page.query_selector_all("#chips .chip") == [] and "q=" not in page.url
    assert figures(page)["total"] == unfiltered
    # Tokens typed into the box become chips, quoted values kept whole.
    w.act(lambda: (page.fill("#filter", 'type:DNS trail:"bad.example/x y" -sev:low'), page.press("#filter", "Enter")))
    assert [c.inner_text() for c in page.query_selector_all("#chips .chip span")] == \
        ["type:DNS", 'trail:"bad.example/x y"', "-sev:low"]


# -- scope ----------------------------------------------------------------------------------------------------

def test_a_scoped_user_sees_the_figures_of_its_scope_only(pages, server):
    client = Client(server)
    assert client.login("v4")[0] == 200
    w = pages(login="v4")
    page = w.page
    w.go(HASH)
    counts = client.ok("counts", **{"from": FROM, "to": TO, "by": "type"})
    total = sum(r["events"] for r in counts["counts"]["type"])
    assert figures(page)["total"] == total < len(ALL_EVENTS)
    top = client.ok("top", **{"from": FROM, "to": TO, "n": 10})
    for field in ("src_ip", "dst_ip", "trail"):
        assert [b.get_attribute("data-value") for b in page.query_selector_all("#top-%s .top-item" % field)] == \
            [r["value"] for r in top["top"][field]]
    threats = client.ok("threats", **{"from": FROM, "to": TO, "limit": 50})
    assert [(tr.get_attribute("data-src"), tr.get_attribute("data-trail"))
            for tr in page.query_selector_all("#threat-table tbody tr")] == [(t["src_ip"], t["trail"]) for t in threats["threats"]]
    text = page.inner_text("main")
    for address in DARK:            # events between addresses nobody's scope holds leave no trace
        assert address not in text
    assert page.inner_text("#whoami") == "v4"


# -- triage, suppressions, live, export, sorting ------------------------------------------------------------

def _open_threat(w: Watched, trail: str):
    page = w.page
    w.go(HASH)
    row = page.query_selector('#threat-table tbody tr[data-trail="%s"]' % trail.replace('"', '\\"'))
    assert row is not None, trail
    row.click()
    page.wait_for_selector("#triage-status")
    return row


def test_triage_set_in_one_browser_appears_in_another_users(pages):
    first = pages(login="admin")
    _open_threat(first, HOSTILE_TRAIL)
    page = first.page
    page.select_option("#triage-status", "investigating")
    page.wait_for_selector("#triage-msg:empty", state="attached")
    page.fill("#triage-note", "looked at it <b>twice</b>")
    page.click("#triage-add-note")
    page.wait_for_selector("#triage-notes li")
    second = pages(login="v4")        # 10.1.66.6 is inside v4's netfilter
    _open_threat(second, HOSTILE_TRAIL)
    assert second.page.input_value("#triage-status") == "investigating"
    notes = second.page.inner_text("#triage-notes")
    assert "looked at it <b>twice</b>" in notes and "admin" in notes
    row = second.page.query_selector('#threat-table tbody tr[data-trail="%s"]' % HOSTILE_TRAIL.replace('"', '\\"'))
    assert "investigating" in row.inner_text()
    second.shot("drawer-triage", full_page=False)


def suppress_in_drawer(w, reason: str) -> None:
    """In the open drawer: suppress its pair (the default expiry) with `reason`, close the drawer,
    and reload the dashboard until it is ready."""
    page = w.page
    page.fill("#suppress-reason", reason)
    page.click("#suppress")
    page.wait_for_selector("#suppress-msg:has-text('suppressed')")
    page.keyboard.press("Escape")
    w.stale()
    page.reload()
    w.ready()


def test_a_suppression_hides_the_pair_is_listed_and_can_be_lifted(pages):
    w = pages()
    page = w.page
    _open_threat(w, HOSTILE_TRAIL_2)
    suppress_in_drawer(w, "test <i>reason</i>")
    trails = [tr.get_attribute("data-trail") for tr in page.query_selector_all("#threat-table tbody tr")]
    assert HOSTILE_TRAIL_2 not in trails
    w.go("#/suppressions")
    rows = page.query_selector_all("#suppression-table tbody tr")
    assert [r.query_selector("td.trail").inner_text() for r in rows] == [HOSTILE_TRAIL_2]
    assert "test <i>reason</i>" in rows[0].inner_text()
    w.shot("suppressions-listed")
    w.act(lambda: rows[0].query_selector("button").click())
    page.wait_for_selector("#suppressions p")
    assert page.query_selector_all("#suppression-table tbody tr") == []
    w.go(HASH)
    assert HOSTILE_TRAIL_2 in [tr.get_attribute("data-trail") for tr in page.query_selector_all("#threat-table tbody tr")]


def test_live_mode_shows_an_event_stored_after_the_page_opened(pages, server):
    w = pages()
    page = w.page
    opened = server.health()["live"]["streams"]
    w.go(HASH + "&live=1")
    page.wait_for_selector("#live-note:has-text('live')")
    server.until(lambda h: h["live"]["streams"] > opened, indexed=False)    # subscribed: see test_ui_sensor.py
    fresh = dict(EVENTS[0], ts_us=int(time.time() * 1_000_000), trail="live-%d.example" % os.getpid(), type="DNS")
    server.send([datagram(fresh)])
    page.wait_for_selector("#live-rows td.trail:has-text('%s')" % fresh["trail"])
    w.shot("dashboard-live-event")


def test_export_buttons_save_what_the_export_endpoint_answers(pages, admin):
    w = pages()
    page = w.page
    w.go(HASH)
    for fmt in ("csv", "json", "indicators"):
        with page.expect_download() as info:
            page.click("[data-export=threats-%s]" % fmt)
        saved = open(info.value.path(), "rb").read()
        req = urllib.request.Request(admin.base + "/api/v1/export?" + urllib.parse.urlencode(
            {"view": "threats", "format": fmt, "from": FROM, "to": TO}))
        with admin.opener.open(req, timeout=60) as r:
            assert saved == r.read(), fmt


def test_each_filter_token_gives_the_apis_figures_for_it(pages, admin):
    w = pages()
    page = w.page
    for q in ("src:10.1.0.0/16", "dst:2001:db8:1::/48", "port:53", "proto:udp", "type:DNS", "trail:evil.example",
              "info:malware", "sev:high", "sensor:edge-3", "-type:DNS", "trail:*.example", "evil",
              'trail:"bad.example/x y" -sev:low'):
        w.go("#/dashboard?" + urllib.parse.urlencode({"from": FROM, "to": TO, "q": q}))
        chips = ['trail:"bad.example/x y"', "-sev:low"] if q.endswith("-sev:low") else [q]
        assert [c.inner_text() for c in page.query_selector_all("#chips .chip span")] == chips
        assert page.inner_text("#filter-error") == ""
        counts = admin.ok("counts", **{"from": FROM, "to": TO, "by": "type", "q": q})
        assert figures(page)["total"] == sum(r["events"] for r in counts["counts"]["type"]), q
        threats = admin.ok("threats", **{"from": FROM, "to": TO, "limit": 50, "q": q})
        assert [(tr.get_attribute("data-src"), tr.get_attribute("data-trail"))
                for tr in page.query_selector_all("#threat-table tbody tr")] == \
            [(t["src_ip"], t["trail"]) for t in threats["threats"]], q
    # A token the server refuses: its message on the filter line, no figure.
    w.also.append(lambda url, status: status == 400 and "q=port%3A99999" in url)
    w.go("#/dashboard?" + urllib.parse.urlencode({"from": FROM, "to": TO, "q": "port:99999"}))
    assert "99999" in page.inner_text("#filter-error")


def test_sorting_the_threat_list_by_a_column_asks_the_server(pages, admin):
    w = pages()
    page = w.page
    w.go(HASH)
    for key, expect in (("trail", "-trail"), ("trail", "trail"), ("last", "-last")):
        w.act(lambda: page.click("#threat-table th button[data-sort=%s]" % key))
        assert "sort=" + urllib.parse.quote(expect) in page.url or "sort=" + expect in page.url
        threats = admin.ok("threats", **{"from": FROM, "to": TO, "limit": 50, "sort": expect})
        assert [(tr.get_attribute("data-src"), tr.get_attribute("data-trail"))
                for tr in page.query_selector_all("#threat-table tbody tr")] == \
            [(t["src_ip"], t["trail"]) for t in threats["threats"]], expect


def test_mark_all_seen_clears_the_new_markers(pages):
    w = pages(login="v4")
    page = w.page
    w.go(HASH)
    assert page.query_selector_all("#threat-table .badge.new")
    page.click("#mark-looked")
    page.wait_for_selector("#looked-note:has-text('marked')")
    w.stale()
    page.reload()
    w.ready()
    assert page.query_selector_all("#threat-table tbody tr") and not page.query_selector_all("#threat-table .badge.new")
