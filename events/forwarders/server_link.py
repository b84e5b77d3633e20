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
"""

from __future__ import annotations

import ipaddress
import json
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
        self.http = HttpPoster(self.address, self.https, parts.hostname, parts.port or (443 if self.https else 80),
                               ca_file, connect_timeout_s=connect_timeout_s, total_timeout_s=total_timeout_s,
                               answer_bytes=ANSWER_BYTES)
        self.authorization = "Bearer %s:%s" % (sensor, key)
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


__all__ = ["ServerLink", "BATCH_EVENTS"]
