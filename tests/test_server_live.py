"""GET /api/v1/live for real: a real `maltrail-engine server` (tests/server_proc.py), logged-in
users reading its server-sent event stream over a real socket, and events arriving the two ways
events arrive: a real sensor (`maltrail-engine replay` fed through a FIFO, tests/collectors.py
Sensor) forwarding to it over HTTP (events/forwarders/server_link.py), and Maltrail's UDP
datagrams.

- What a sensor detects and what a datagram carries both appear on an open stream, as /events
  writes them (and, with the stream open, before /events is asked).
- A scoped user's stream carries no event outside their netfilter (the same datagrams on an
  unrestricted user's stream show they went by).
- A reader that stops reading does not hold up intake: every datagram is still stored, another
  stream still gets its events, and the stalled one, once it reads, finds `event: overflow` as
  its last frame; the drop is counted in /api/v1/health.
- live_max_subscribers: one stream more is refused with 503 and counted.
- `q` goes to server/filters.py: a filtered stream carries only what matches; a bad filter is a
  400 naming `q` and the token.
- A server stopping with streams open ends them and exits 0.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import threading
import time
import urllib.parse


from server.auth.users import make_user_line
from tests.collectors import Sensor, dns_frames
from tests.server_proc import ServerProc
from tests.test_forward_rsyslog import artifact  # noqa: F401 (a fixture)
from tests.test_server_api import Client
from tests.test_server_intake import line
from tests.test_server_link import sensor_key, url

PASSWORD = "live test password"
WAIT_S = 60
USERS = {"admin": (0, ""), "scoped": (1000, "10.1.0.0/16")}
T_S = 1_780_000_000


def until(what, check, wait_s: float = WAIT_S):
    limit = time.monotonic() + wait_s
    while True:
        found = check()
        if found:
            return found
        assert time.monotonic() < limit, "never: %s" % (what() if callable(what) else what)
        time.sleep(0.02)


class Stream:
    """One logged-in user's GET /api/v1/live, read line by line in a thread: `frames` gets
    (event, data) of every frame, `comments` every comment line, `ended` is set at EOF."""

    def __init__(self, server: ServerProc, client: Client, q: str | None = None):
        cookie = "; ".join("%s=%s" % (c.name, c.value) for c in client.jar)
        self.conn = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=120)
        self.conn.request("GET", "/api/v1/live" + ("?" + urllib.parse.urlencode({"q": q}) if q is not None else ""),
                          headers={"Cookie": cookie, "Accept": "text/event-stream"})
        self.response = self.conn.getresponse()
        self.status = self.response.status
        self.frames: list[tuple[str, object]] = []
        self.comments: list[str] = []
        self.arrived: list[tuple[float, dict]] = []     # (monotonic time, row): for the measurement
        self.ended = threading.Event()
        if self.status == 200:
            assert self.response.getheader("Content-Type").startswith("text/event-stream")
            threading.Thread(target=self._read, daemon=True).start()
        else:
            self.body = json.loads(self.response.read())
            self.ended.set()

    def _read(self) -> None:
        kind, data = "message", []
        try:
            for raw in iter(self.response.fp.readline, b""):
                text = raw.decode().rstrip("\n")
                if text.startswith(":"):
                    self.comments.append(text)
                elif text.startswith("event: "):
                    kind = text[len("event: "):]
                elif text.startswith("data: "):
                    data.append(text[len("data: "):])
                elif text == "":
                    if data:
                        body = json.loads("\n".join(data))
                        if kind == "events":
                            now = time.monotonic()
                            self.arrived.extend((now, row) for row in body["events"])
                        self.frames.append((kind, body))
                    kind, data = "message", []
        except (OSError, ValueError):
            pass
        finally:
            self.ended.set()

    def rows(self) -> list[dict]:
        return [row for kind, body in list(self.frames) if kind == "events" for row in body["events"]]

    def trails(self) -> set:
        return {row["trail"] for row in self.rows()}

    def close(self) -> None:
        self.conn.close()


def datagram(i: int, src: str, dst: str, trail: str, sensor: str = "maltrail-1") -> bytes:
    ts_us = T_S * 1_000_000 + i
    return ("%d %s" % (T_S, line(ts_us, sensor, src, 40000 + i % 20000, dst, 80, "TCP", "URL", trail,
                                  "malware", "(static)"))).encode()


def new_server(tmp_path, extra: str = "") -> ServerProc:
    users = "users = %s\n" % json.dumps([make_user_line(n, PASSWORD, uid, nf) for n, (uid, nf) in USERS.items()])
    server = ServerProc(tmp_path, extra=users + extra)
    os.makedirs(server.log_dir, mode=0o700, exist_ok=True)
    return server


def logged_in(server: ServerProc, name: str) -> Client:
    client = Client(server)
    assert client.login(name, PASSWORD)[0] == 200
    return client


def live(health: dict) -> dict:
    return health["live"]


# -- a sensor's and a datagram's events reach an open stream --------------------------------------

def test_a_sensors_events_and_udp_datagrams_arrive_on_open_streams_within_scope(artifact, tmp_path):  # noqa: F811
    server = new_server(tmp_path)
    key = sensor_key(server, "fwd-test")
    server.start()
    admin, scoped = logged_in(server, "admin"), logged_in(server, "scoped")
    a, s = Stream(server, admin), Stream(server, scoped)
    assert a.status == s.status == 200
    server.until(lambda h: live(h)["subscribers"] == 2, indexed=False)
    sensor = Sensor(tmp_path / "sensor", artifact, tmp_path / "sensor-log", server_url=url(server),
                    server_key=key).start()
    try:
        # The sensor: 40 DNS queries from 10.1.x.y (inside the scoped user's netfilter).
        fed_at = time.monotonic()
        sensor.feed(dns_frames(0, 40))
        want = {"(f%d).evil-parent.net" % i for i in range(40)}
        until(lambda: "admin's stream: %s" % sorted(a.trails())[:5], lambda: want <= a.trails())
        until("scoped stream", lambda: want <= s.trails())
        first = min(t for t, row in a.arrived if row["trail"] in want) - fed_at
        last = max(t for t, row in a.arrived if row["trail"] in want) - fed_at
        print("sensor feed -> browser stream: first event after %.3f s, last after %.3f s" % (first, last))
        rows = [r for r in a.rows() if r["trail"] in want]
        assert len(rows) == 40 and {r["sensor"] for r in rows} == {"fwd-test"}
        # Rows exactly as /events writes them.
        listed = admin.ok("events", **{"from": "2026-03-01", "to": "2026-03-01", "limit": 1000})["events"]
        assert sorted(rows, key=lambda r: r["ts_us"]) == sorted(
            [r for r in listed if r["trail"] in want], key=lambda r: r["ts_us"])
        # UDP: out of scope first, then in scope; the in-scope one arriving on the scoped stream
        # means the earlier one was offered to it too (one store thread, in order).
        sent_at = time.monotonic()
        server.send([datagram(1, "203.0.113.9", "198.51.100.1", "dark.example"),
                     datagram(2, "10.1.2.3", "198.51.100.1", "light.example")])
        until("admin sees both", lambda: {"dark.example", "light.example"} <= a.trails())
        until("scoped sees its own", lambda: "light.example" in s.trails())
        print("UDP datagram -> browser stream after %.3f s"
              % (min(t for t, row in a.arrived if row["trail"] == "light.example") - sent_at))
        assert "dark.example" not in s.trails()
        assert all(r["src_ip"].startswith("10.1.") or r["dst_ip"].startswith("10.1.") for r in s.rows())
        assert sensor.finish() == 0, sensor.text()
    finally:
        if sensor.proc.poll() is None:
            sensor.proc.kill()
    h = server.until(lambda h: True, indexed=False)
    assert live(h)["streams"] == 2 and live(h)["overflows"] == 0
    assert server.stop() == 0
    # Stopping ended both streams (they did not hold the server up).
    assert a.ended.wait(WAIT_S) and s.ended.wait(WAIT_S)


# -- a stalled reader --------------------------------------------------------------------------------

def test_a_reader_that_stops_reading_is_dropped_with_overflow_and_intake_goes_on(tmp_path):
    server = new_server(tmp_path, "live_max_subscribers = 2\n")
    server.start()
    admin = logged_in(server, "admin")
    cookie = "; ".join("%s=%s" % (c.name, c.value) for c in admin.jar)
    stalled = socket.socket()
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)     # a small window: it fills soon
    stalled.connect(("127.0.0.1", server.http_port))
    # HTTP/1.0: the body is the stream itself (no chunks) and ends with the connection.
    stalled.sendall(("GET /api/v1/live HTTP/1.0\r\nHost: 127.0.0.1\r\nCookie: %s\r\n\r\n" % cookie).encode())
    server.until(lambda h: live(h)["subscribers"] == 1, indexed=False)
    reader = Stream(server, logged_in(server, "scoped"))
    server.until(lambda h: live(h)["subscribers"] == 2, indexed=False)
    # live_max_subscribers = 2: a third stream is refused and counted.
    third = Stream(server, logged_in(server, "admin"))
    assert third.status == 503 and "live_max_subscribers" in third.body["error"]
    assert live(server.health())["refused_full"] == 1
    # Datagrams until the stalled stream has fallen behind by more than it may hold; outside the
    # scoped reader's netfilter (a reader that is offered more than MAX_PENDING_EVENTS within one
    # flush interval overflows too, by design).
    sent = rounds = 0
    while live(server.health())["overflows"] == 0:
        assert rounds < 100, server.health()
        server.send(datagram(sent + i, "203.0.113.%d" % (1 + i % 200), "198.51.100.1", "flood-%d.example" % (sent + i))
                    for i in range(5000))
        sent += 5000
        rounds += 1
        server.until(lambda h: h["intake"]["udp"]["datagrams"] >= sent, indexed=False)
    # The intake never waited for it: everything received was stored, nothing dropped.
    h = server.until(lambda h: h["intake"]["udp"]["stored"] == h["intake"]["udp"]["events"]
                     and h["intake"]["udp"]["backlog"] == 0, indexed=False)
    assert h["intake"]["udp"]["dropped"] == {}
    assert live(h)["overflows"] == 1 and live(h)["dropped_events"] > 0 and live(h)["subscribers"] == 1
    # The other stream goes on: a marker sent now reaches it.
    server.send([datagram(sent + 1, "10.1.9.9", "198.51.100.1", "after-the-flood.example")])
    until("the reading stream gets the marker", lambda: "after-the-flood.example" in reader.trails())
    # The stalled reader reads at last: its stream ends with an overflow frame.
    stalled.settimeout(WAIT_S)
    got = b""
    while True:
        piece = stalled.recv(1 << 20)
        if not piece:
            break
        got += piece
    stalled.close()
    frames = [f for f in got.split(b"\r\n\r\n", 1)[1].split(b"\n\n") if f.strip()]
    assert got.startswith(b"HTTP/1.0 200") or got.startswith(b"HTTP/1.1 200"), got[:200]
    tail = frames[-1].decode().splitlines()
    assert tail[0] == "event: overflow" and tail[1].startswith("data: "), frames[-1][-300:]
    assert json.loads(tail[1][len("data: "):])["dropped"] > 0
    assert any(f.startswith(b"event: events") for f in frames[:-1])     # it had been sent events before
    reader.close()
    assert server.stop() == 0


# -- the filter ---------------------------------------------------------------------------------------

def test_q_filters_the_stream_and_a_bad_q_is_refused(tmp_path):
    server = new_server(tmp_path)
    server.start()
    admin = logged_in(server, "admin")
    bad = Stream(server, admin, q="nosuchfield:x")
    assert bad.status == 400 and bad.body["parameter"] == "q" and bad.body["token"] == "nosuchfield:x"
    everything, only = Stream(server, admin), Stream(server, admin, q="trail:wanted.example")
    server.until(lambda h: live(h)["subscribers"] == 2, indexed=False)
    server.send([datagram(1, "10.1.0.1", "198.51.100.1", "unwanted.example"),
                 datagram(2, "10.1.0.1", "198.51.100.1", "wanted.example")])
    until("both on the unfiltered stream", lambda: {"wanted.example", "unwanted.example"} <= everything.trails())
    until("the filtered stream", lambda: "wanted.example" in only.trails())
    assert only.trails() == {"wanted.example"}
    assert server.stop() == 0


def test_a_stream_needs_a_session_and_takes_only_q(tmp_path):
    server = new_server(tmp_path)
    server.start()
    conn = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=30)
    conn.request("GET", "/api/v1/live")
    response = conn.getresponse()
    assert response.status == 401
    conn.close()
    conn = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=30)
    conn.request("GET", "/api/v1/live?from=2026-01-01", headers={"Cookie": "; ".join(
        "%s=%s" % (c.name, c.value) for c in logged_in(server, "admin").jar)})
    response = conn.getresponse()
    assert response.status == 400 and json.loads(response.read())["parameter"] == "from"
    conn.close()
    assert live(server.health())["streams"] == 0
    assert server.stop() == 0
