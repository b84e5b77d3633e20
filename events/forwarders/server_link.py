"""Our server (`[sensor] server_url`): every event, over HTTP(S), in acknowledged batches.

Owns the sensor's half of the protocol server/sensors.py answers (docs/API.md, "Sensors and
intake"): a batch is the events the forwarder read from the log, each with its place in the
log (the place just after it, events/forwarders/cursor.py: day file, inode, offset, records
done), packed as one msgpack map and compressed into one zstd frame, POSTed to
`SERVER_URL/api/v1/intake` with `Authorization: Bearer SENSOR_NAME:KEY`.

The places number the events: the server stores an event only if its place is beyond the last
one it stored for that day file, so a batch sent again (the answer lost, the sensor or the
server killed, the batch cut differently when resent) is stored once. Reliable: only a 200
moves the forwarder's saved place; anything else (no connection, a timeout, 503 while the
server's disk is full, even 400 or 401, which need an operator) is an outage: the batch waits
in the log and is offered again after the backoff (events/forwarders/base.py), so nothing is
lost; refusals are said once per status and counted.

HTTPS verifies the certificate and host name, always (the system's CAs or `ca_file`); redirects
are never followed. The key is never printed. Must not know how events are detected.

Also owns `SuppressionPoller`, the other direction: every `[sensor] server_suppressions_poll_s`
it asks `SERVER_URL/api/v1/sensor/suppressions` (same key) for the (host, trail) pairs analysts
suppressed, checks the answer (`parse_suppressions`: network input, believed only once every row
is an address or CIDR, a trail of printable text and an expiry), and keeps the latest set for the
forwarder process to hand to the supervisor, which merges it into the workers' per-host
whitelist. It has a connection and a thread of its own: a slow server never holds up forwarding,
and nothing here ever touches capture. While the server cannot be reached the last set stays,
each row until its own expiry (counted on this host's monotonic clock from the server's `now_s`,
so a wrong wall clock on either side does not stretch or cut a suppression).
"""

from __future__ import annotations

import ipaddress
import json
import math
import socket
import threading
import time
from urllib.parse import urlsplit

import msgpack
import zstandard

from events.forwarders.base import Destination, Unreachable
from events.forwarders.transports import HttpPoster
from events.record import Event

INTAKE_PATH = "/api/v1/intake"
BATCH_VERSION = 1
BATCH_EVENTS = 2000          # events per POST: one fsync'd store transaction on the server
CONNECT_TIMEOUT_S = 5.0
TOTAL_TIMEOUT_S = 60.0       # the server answers once the batch is durable (fsync, SQLite, ClickHouse)
ANSWER_BYTES = 65_536
SUPPRESSIONS_PATH = "/api/v1/sensor/suppressions"
MAX_SUPPRESSIONS = 10_000
MAX_TRAIL_CHARS = 2048
SUPPRESSIONS_ANSWER_BYTES = 8 << 20


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class ServerLink(Destination):
    kind = "server_url"
    reliable = True
    batch_events = BATCH_EVENTS

    def __init__(self, url: str, key: str, sensor: str, version: str = "", trails_date=lambda: "",
                 ca_file: str = "", warn=None, connect_timeout_s: float = CONNECT_TIMEOUT_S,
                 total_timeout_s: float = TOTAL_TIMEOUT_S):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.username or parts.password:
            raise ValueError('the server URL must be "https://host[:port]" (or http:// on loopback)')
        if not key:
            raise ValueError("server_key is empty: `maltrail-engine server sensor add %s` on the server prints one"
                             % sensor)
        super().__init__(url)
        self.https = parts.scheme == "https"
        self.host = parts.hostname
        self.target = parts.path.rstrip("/") + INTAKE_PATH
        self.http = server_poster(self.address, ca_file, connect_timeout_s, total_timeout_s, ANSWER_BYTES)
        self.authorization = bearer(sensor, key)
        self.sensor = sensor
        self.version = version
        self.trails_date = trails_date
        self.warn = warn or (lambda text: None)
        self.forwarder = None           # the Forwarder feeding it (attach): its cursor's places, its lag
        if not self.https and not _is_loopback(self.host):
            self.warn("%s %s: plain http:// to another host: the sensor's key and its events cross the network "
                      "unencrypted; use https://" % (self.kind, self.address))
        self._cctx = zstandard.ZstdCompressor(level=3, write_content_size=True)
        self._said: set[int] = set()
        self.batches = self.stored = self.repeated = self.refused_batches = 0

    def attach(self, forwarder) -> None:
        self.forwarder = forwarder

    def render(self, event: Event) -> Event:
        return event            # packed in deliver, with its place in the log

    def batch_body(self, events: list[Event], marks) -> bytes:
        """The compressed batch of `events`, `marks` being the place after each (cursor Marks)."""
        files: dict[tuple[str, int], int] = {}
        entries = []
        for event, mark in zip(events, marks):
            index = files.setdefault((mark.name, mark.place.inode), len(files))
            entries.append([index, mark.place.offset, mark.place.done, event.to_record()])
        f = self.forwarder
        lag_s = round(f.clock() - f.caught_up_at, 3) if f is not None and f.behind else 0.0
        doc = {"v": BATCH_VERSION, "sensor": self.sensor, "version": self.version, "trails": self.trails_date(),
               "lag_s": max(lag_s, 0.0), "sent_unix": time.time(),
               "files": [[name, inode] for name, inode in files], "events": entries}
        return self._cctx.compress(msgpack.packb(doc, use_bin_type=True))

    def deliver(self, messages: list[Event]) -> int:
        if self.forwarder is None:
            raise RuntimeError("ServerLink.attach(forwarder) was not called")
        marks = self.forwarder.cursor.pending_marks()
        if len(marks) != len(messages):
            raise RuntimeError("%d events but %d places" % (len(messages), len(marks)))
        status, reason, answer = self._post(self.batch_body(messages, marks))
        if status == 200:
            self.batches += 1
            try:
                found = json.loads(answer)
                self.stored += int(found.get("stored", 0))
                self.repeated += int(found.get("repeated", 0))
            except (ValueError, TypeError, AttributeError):
                pass
            self._said.clear()
            return len(messages)
        self.refused_batches += 1
        text = answer.decode("utf-8", "replace")[:300].strip()
        try:
            text = json.loads(text).get("error", text)
        except (ValueError, AttributeError):
            pass
        if status not in self._said and not (status >= 500 or status in (408, 429)):
            self._said.add(status)
            self.warn("%s %s refused a batch with %d %s: %s; the events wait in the log and are offered again "
                      "until it takes them" % (self.kind, self.address, status, reason, text))
        raise Unreachable("%s answered %d %s%s" % (self.address, status, reason, (": " + text) if text else ""))

    # -- HTTP --------------------------------------------------------------------------------
    def _post(self, body: bytes) -> tuple[int, str, bytes]:
        # The answer waits for the server's fsync: no short timeout for it.
        return self.http.post(self.target, body, {
            "Content-Type": "application/x-maltrail-batch+zstd", "Authorization": self.authorization,
            "User-Agent": "maltrail-engine/%s" % (self.version or "unknown")}, slow_answer=True)

    def stats(self) -> dict:
        return {"batches": self.batches, "stored": self.stored, "repeated": self.repeated,
                "refused_batches": self.refused_batches}

    def close(self) -> None:
        self.http.close()


class BadAnswer(ValueError):
    """An answer of the server that is not what docs/API.md says; the message says what is wrong."""


def _number(value, what: str) -> float:
    if type(value) not in (int, float) or not math.isfinite(value):
        raise BadAnswer("%s is not a number" % what)
    return float(value)


def parse_suppressions(answer: bytes, now_mono: float) -> list[tuple[str, str, float]]:
    """The rows of a /api/v1/sensor/suppressions answer: (network "a.b.c.d/n", trail as sent,
    expiry on the monotonic clock); rows already expired are left out. BadAnswer when any part of
    it is not as documented: then none of it is believed."""
    try:
        doc = json.loads(answer)
    except (ValueError, UnicodeDecodeError):
        raise BadAnswer("the answer is not JSON") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("suppressions"), list):
        raise BadAnswer('the answer is not {"now_s": ..., "suppressions": [...]}')
    server_now_s = _number(doc.get("now_s"), "now_s")
    rows = doc["suppressions"]
    if len(rows) > MAX_SUPPRESSIONS:
        raise BadAnswer("more than %d suppressions" % MAX_SUPPRESSIONS)
    out = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise BadAnswer("suppression %d is not an object" % i)
        try:
            network, trail = suppression_pair(row.get("host"), row.get("trail"))
        except ValueError as exc:
            raise BadAnswer("suppression %d: %s" % (i, exc)) from None
        left_s = _number(row.get("expires_s"), "suppression %d: expires_s" % i) - server_now_s
        if left_s > 0:
            out.append((network, trail, now_mono + left_s))
    return out


def suppression_pair(host, trail) -> tuple[str, str]:
    """(network "a.b.c.d/n", trail stripped) of one suppression from the server, or ValueError
    saying which part is not as documented: host an address or CIDR, trail 1 to MAX_TRAIL_CHARS
    printable characters. The forwarder checks the answer with it, and the supervisor again what
    the (unprivileged) forwarder hands it."""
    if not isinstance(host, str) or len(host) > 64:
        raise ValueError("host is not an address or CIDR")
    try:
        network = str(ipaddress.ip_network(host.strip(), strict=False))
    except ValueError:
        raise ValueError("host %r is not an address or CIDR" % host[:64]) from None
    if (not isinstance(trail, str) or not trail.strip() or len(trail) > MAX_TRAIL_CHARS
            or any(ord(c) < 32 or ord(c) == 127 for c in trail)):
        raise ValueError("trail is not 1 to %d printable characters" % MAX_TRAIL_CHARS)
    return network, trail.strip()


def server_poster(url: str, ca_file: str, connect_timeout_s: float, total_timeout_s: float,
                  answer_bytes: int) -> HttpPoster:
    """A connection to our server at `url` (https://, or http:// on loopback; the scheme's port
    unless the URL names one), its certificate checked against `ca_file` ("" for the system's)."""
    parts = urlsplit(url)
    https = parts.scheme == "https"
    return HttpPoster(url, https, parts.hostname, parts.port or (443 if https else 80), ca_file,
                      connect_timeout_s=connect_timeout_s, total_timeout_s=total_timeout_s, answer_bytes=answer_bytes)


def bearer(sensor: str, key: str) -> str:
    """The Authorization header's value by which a sensor proves its name to our server."""
    return "Bearer %s:%s" % (sensor, key)


class SuppressionPoller:
    """Asks our server for its active suppressions every `poll_s` seconds, in a thread (module
    doc). `take()` gives the newest checked set once after each change (None meanwhile)."""

    def __init__(self, url: str, key: str, sensor: str, poll_s: float, ca_file: str = "", version: str = "",
                 warn=None, clock=time.monotonic):
        self.address = url
        self.poll_s = poll_s
        self.target = urlsplit(url).path.rstrip("/") + SUPPRESSIONS_PATH
        # Its own connection (the forwarding thread keeps the other), made now: the CA file is read
        # while the forwarder may still read it.
        self.http = server_poster(url, ca_file, CONNECT_TIMEOUT_S, CONNECT_TIMEOUT_S * 2, SUPPRESSIONS_ANSWER_BYTES)
        self.headers = {"Authorization": bearer(sensor, key), "Accept": "application/json",
                        "User-Agent": "maltrail-engine/%s" % (version or "unknown")}
        self.warn = warn or (lambda text: None)
        self.clock = clock
        self.polls = self.failures = 0
        self._lock = threading.Lock()
        self._rows: list | None = None
        self._fresh = False
        self._problem = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def poll(self) -> bool:
        """One question; True when the answer was good (and kept)."""
        self.polls += 1
        try:
            status, reason, answer = self.http.post(self.target, None, self.headers, method="GET")
            if status != 200:
                raise BadAnswer("answered %d %s" % (status, reason))
            rows = parse_suppressions(answer, self.clock())
        except (Unreachable, BadAnswer) as exc:
            self.failures += 1
            if str(exc) != self._problem:       # said once per kind of failure
                self._problem = str(exc)
                self.warn("%s %s: cannot read the suppressions: %s; the ones known stay until they expire"
                          % (ServerLink.kind, self.address, exc))
            return False
        if self._problem:
            self.warn("%s %s: suppressions read again" % (ServerLink.kind, self.address))
            self._problem = ""
        with self._lock:
            if rows != self._rows:
                self._rows, self._fresh = rows, True
        return True

    def take(self) -> list | None:
        with self._lock:
            if not self._fresh:
                return None
            self._fresh = False
            return list(self._rows or ())

    def run(self) -> None:
        while not self._stop.is_set():
            self.poll()
            self._stop.wait(self.poll_s)

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="server-suppressions", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Ends the thread soon: a question under way is cut (its socket shut), so a server that
        does not answer never holds up the forwarder's exit."""
        self._stop.set()
        conn = self.http._conn
        if conn is not None and conn.sock is not None:
            try:
                conn.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(2.0)
        if self._thread is None or not self._thread.is_alive():
            self.http.close()

    def stats(self) -> dict:
        return {"suppression_polls": self.polls, "suppression_poll_failures": self.failures}


__all__ = ["ServerLink", "SuppressionPoller", "parse_suppressions", "BATCH_EVENTS"]
