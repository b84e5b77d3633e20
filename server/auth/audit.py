"""Login attempts as records the forwarders send: Maltrail's `auth` event, CEF and JSON.

Owns `AuthEvent` (one login attempt: when, who, from where, the outcome and why) and its two
renderings, in Maltrail's layouts (core/httpd.py `__log_auth`, the server's own record of a login):

  CEF (SYSLOG_SERVER):  MMM DD HH:MM:SS HOST CEF:0|Maltrail|server|VERSION|auth|login success|1|
                        src=IP spt=PORT duser=USER outcome=accepted
                        ("login failure", severity 2, outcome=failed for a refusal)
  JSON (LOGSTASH_SERVER): {"timestamp": EPOCH_S, "sensor": HOST, "type": "auth",
                        "outcome": "success"|"failure", "username": USER, "src_ip": IP, "src_port": PORT}

and the sshd-shaped line Maltrail writes to the local auth log ("Accepted password for USER from
IP port PORT"). The user name is whatever the client sent: control characters are replaced and
its length capped before it goes anywhere. `reason` is ours (wrong password, throttled, ...),
kept out of both Maltrail layouts so their readers see what they always saw.

Owns `TriageRecord` too: one change to the analysts' shared triage (server/triage.py), sent to
the same collectors as login records, in the same two layouts (Maltrail has no such record: the
kind is ours, `triage`; its readers ignore a kind they do not know):

  CEF:   ... CEF:0|Maltrail|server|VERSION|triage|ACTION NAME|1|duser=USER act=ACTION
         cs1Label=host cs1=ADDRESS-OR-CIDR cs2Label=trail cs2=TRAIL
         [cs3Label=field cs3=FIELD cs4Label=old cs4=OLD cs5Label=new cs5=NEW]
  JSON:  {"timestamp": EPOCH_S, "sensor": HOST, "type": "triage", "action": ACTION,
          "username": USER, "host": ..., "trail": ..., "field": ..., "old": ..., "new": ...}

ACTION is `change` (a field of a pair's triage: status, assignee, hidden), `note` (a note added:
its length, never its text), `suppress` or `lift` (a suppression, its id as `new`/`old`). Every
value is one the triage book validated; the trail is attacker-controlled text and is escaped
like any other CEF value.

Owns `AuthForwarder` too: the delivery of these records to the destinations Maltrail's server
sends them to. Maltrail's configuration is one flat file, so its server sends its login records
to the same SYSLOG_SERVER and LOGSTASH_SERVER as its sensor sends events to; ours does the same
with `[sensor] syslog_server` (udp://, tcp:// or tls://, with syslog_format and the syslog_ca_file
/ client certificate keys) and `[sensor] logstash_server` (udp:// or tcp://; a JSON object per
record, newline-terminated over TCP). `syslog_format = "rfc5424"` wraps the CEF part in an
RFC 5424 header, facility auth, severity notice (success) or warning (failure), CEF severity on
the 0-10 scale (6, 9) as for events. Delivery never blocks a login: `submit` puts the record in a
bounded queue (a full queue drops it, counted) and one thread sends; a destination that cannot be
reached is left alone for a back-off (1 s, doubling to 60 s), its records meanwhile dropped and
counted (`dropped`), since a login record is worth little once stale and the login path must
not wait for a collector. Must not know HTTP or decide a login.
"""

from __future__ import annotations

import datetime
import json
import queue
import socket
import threading
import time
from typing import Callable, NamedTuple

from events.forwarders.base import Unreachable
from events.forwarders.syslog import cef_extension_value, cef_header_value
from events.forwarders.transports import Datagram, Endpoint, Stream, tls_context

__all__ = ["AuthEvent", "AuthForwarder", "TriageRecord", "clean_username", "TRIAGE_ACTIONS"]

# RFC 5424 section 6.2.1: facility 4 (security/authorization), severities 4 warning, 5 notice.
_FACILITY_AUTH = 4

_MAX_NAME = 64


def clean_username(text) -> str:
    """A client-supplied name fit for a log line: printable, at most 64 characters, "-" when empty."""
    if not isinstance(text, str):
        text = "" if text is None else str(text)
    text = "".join(c if c.isprintable() and c not in "\r\n" else "?" for c in text[:_MAX_NAME])
    return text or "-"


class AuthEvent(NamedTuple):
    ts_s: float
    username: str           # already cleaned (clean_username)
    src_ip: str
    src_port: int
    success: bool
    reason: str             # "ok", "wrong password", "unknown user", "throttled", "insecure legacy hash", ...

    def cef_part(self, version: str, severity: int | None = None) -> str:
        """The record from `CEF:0|` on; `severity` replaces Maltrail's 1/2 (the rfc5424 layout)."""
        extension = "src=%s spt=%d duser=%s outcome=%s" % (
            self.src_ip, self.src_port, cef_extension_value(self.username), "accepted" if self.success else "failed")
        return "CEF:0|Maltrail|server|%s|auth|%s|%d|%s" % (
            cef_header_value(version), "login success" if self.success else "login failure",
            severity if severity is not None else 1 if self.success else 2, extension)

    def cef(self, host: str, version: str) -> str:
        stamp = time.strftime("%b %d %H:%M:%S", time.localtime(self.ts_s))
        return "%s %s %s" % (stamp, host, self.cef_part(version))

    def rfc5424(self, host: str, version: str) -> str:
        pri = _FACILITY_AUTH * 8 + (5 if self.success else 4)
        stamp = datetime.datetime.fromtimestamp(self.ts_s).astimezone().isoformat(timespec="microseconds")
        return "<%d>1 %s %s maltrail-engine - - - %s" % (pri, stamp, host or "-",
                                                         self.cef_part(version, 6 if self.success else 9))

    def json(self, host: str) -> str:
        return json.dumps({"timestamp": int(self.ts_s), "sensor": host, "type": "auth",
                           "outcome": "success" if self.success else "failure", "username": self.username,
                           "src_ip": self.src_ip, "src_port": self.src_port})

    def line(self) -> str:
        return "%s password for %s from %s port %d" % (
            "Accepted" if self.success else "Failed", self.username, self.src_ip, self.src_port)


TRIAGE_ACTIONS = {"change": "triage change", "note": "triage note", "suppress": "suppression added",
                  "lift": "suppression lifted"}


class TriageRecord(NamedTuple):
    """One change to shared triage (module docstring); rendered like AuthEvent, so the
    AuthForwarder sends either."""
    ts_s: float
    username: str
    action: str             # a key of TRIAGE_ACTIONS
    host: str               # the pair's source address, or the suppression's address or CIDR
    trail: str
    field: str = ""         # for "change": status, assignee or hidden; "note": "note"; else "suppression"
    old: str = ""
    new: str = ""

    def cef_part(self, version: str, severity: int | None = None) -> str:
        extension = "duser=%s act=%s cs1Label=host cs1=%s cs2Label=trail cs2=%s" % (
            cef_extension_value(self.username), self.action, cef_extension_value(self.host),
            cef_extension_value(self.trail))
        if self.field:
            extension += " cs3Label=field cs3=%s cs4Label=old cs4=%s cs5Label=new cs5=%s" % tuple(
                cef_extension_value(v) for v in (self.field, self.old, self.new))
        return "CEF:0|Maltrail|server|%s|triage|%s|%d|%s" % (
            cef_header_value(version), TRIAGE_ACTIONS[self.action], 1 if severity is None else severity, extension)

    def cef(self, host: str, version: str) -> str:
        stamp = time.strftime("%b %d %H:%M:%S", time.localtime(self.ts_s))
        return "%s %s %s" % (stamp, host, self.cef_part(version))

    def rfc5424(self, host: str, version: str) -> str:
        pri = _FACILITY_AUTH * 8 + 5        # notice, as an accepted login
        stamp = datetime.datetime.fromtimestamp(self.ts_s).astimezone().isoformat(timespec="microseconds")
        return "<%d>1 %s %s maltrail-engine - - - %s" % (pri, stamp, host or "-", self.cef_part(version, 6))

    def json(self, host: str) -> str:
        return json.dumps({"timestamp": int(self.ts_s), "sensor": host, "type": "triage", "action": self.action,
                           "username": self.username, "host": self.host, "trail": self.trail,
                           "field": self.field, "old": self.old, "new": self.new})


class _Destination:
    """One collector: how a record is written for it, and its transport."""

    def __init__(self, kind: str, address: str, render: Callable[[AuthEvent], bytes], transport, framed):
        self.kind, self.address, self.render, self.transport, self.framed = kind, address, render, transport, framed
        self.retry_at = 0.0
        self.backoff_s = 0.0
        self.sent = 0

    def send(self, event: AuthEvent) -> bool:
        data = self.render(event)
        if isinstance(self.transport, Datagram):
            return self.transport.send([data]) == 1
        self.transport.send(self.framed(data))
        return True


class AuthForwarder:
    """Login records to syslog and Logstash collectors, off the login path (module docstring).

    syslog / logstash: addresses as the [sensor] keys take them. tls: the client context for
    tls:// syslog collectors (tls_context of the [sensor] syslog_* keys). ValueError naming the
    address when one cannot be used."""

    BACKOFF_MAX_S = 60.0

    def __init__(self, syslog=(), logstash=(), *, syslog_format: str = "maltrail", tls=None,
                 host: str | None = None, version: str = "", queue_records: int = 1024,
                 warn: Callable[[str], None] | None = None):
        self.host = host if host is not None else socket.gethostname()
        self.version = version
        self.warn = warn
        self.destinations: list[_Destination] = []
        for address in syslog:
            endpoint = Endpoint.parse(address)
            if endpoint.scheme == "tls" and tls is None:
                raise ValueError("%s: tls:// needs a TLS context" % address)
            if syslog_format == "rfc5424":
                render = (lambda e: e.rfc5424(self.host, self.version).encode("utf-8", "backslashreplace"))
            else:
                render = (lambda e: e.cef(self.host, self.version).encode("utf-8", "backslashreplace"))
            transport = Datagram(endpoint) if endpoint.scheme == "udp" else Stream(
                endpoint, tls if endpoint.scheme == "tls" else None)
            # RFC 6587 section 3.4.1 octet counting on a stream, as for events.
            self.destinations.append(_Destination("syslog_server", address, render, transport,
                                                  lambda data: b"%d %s" % (len(data), data)))
        for address in logstash:
            endpoint = Endpoint.parse(address, schemes=("udp", "tcp"))
            transport = Datagram(endpoint) if endpoint.scheme == "udp" else Stream(endpoint)
            self.destinations.append(_Destination("logstash_server", address,
                                                  lambda e: e.json(self.host).encode("ascii"), transport,
                                                  lambda data: data + b"\n"))
        self._queue: queue.Queue = queue.Queue(maxsize=queue_records)
        self.dropped: dict[str, int] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def _drop(self, reason: str) -> None:
        with self._lock:
            self.dropped[reason] = self.dropped.get(reason, 0) + 1

    def submit(self, event: AuthEvent | TriageRecord) -> None:
        """Never blocks: the Authenticator's on_event, the triage book's on_record."""
        if not self.destinations:
            return
        try:
            self._queue.put_nowait(event)
        except queue.Full:
            self._drop("queue full")

    def start(self) -> "AuthForwarder":
        if self.destinations and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="auth-forwarder", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout_s: float = 2.0) -> None:
        """Sends what is queued (for up to timeout_s), then closes the transports."""
        if self._thread is not None:
            try:
                self._queue.put(None, timeout=timeout_s)
            except queue.Full:
                pass
            self._thread.join(timeout_s)
            for d in self.destinations:
                if isinstance(d.transport, Stream):
                    d.transport.interrupt()
            self._thread = None
        for d in self.destinations:
            d.transport.close()

    def _run(self) -> None:
        while True:
            event = self._queue.get()
            if event is None:
                return
            for d in self.destinations:
                self._deliver(d, event)

    def _deliver(self, d: _Destination, event: AuthEvent) -> None:
        if time.monotonic() < d.retry_at:
            self._drop("%s unreachable" % d.kind)
            return
        try:
            if not d.send(event):
                self._drop("%s not sent" % d.kind)    # the kernel would not take the datagram
                return
        except Unreachable as exc:
            d.backoff_s = min(max(1.0, d.backoff_s * 2), self.BACKOFF_MAX_S)
            d.retry_at = time.monotonic() + d.backoff_s
            self._drop("%s unreachable" % d.kind)
            if self.warn is not None:
                self.warn("login records to %s %s: %s; trying again in %d s" % (d.kind, d.address, exc, d.backoff_s))
            return
        except (OSError, ValueError) as exc:
            self._drop("%s not sent" % d.kind)
            if self.warn is not None:
                self.warn("login records to %s %s: %s" % (d.kind, d.address, exc))
            return
        d.sent += 1
        d.backoff_s = 0.0

    def stats(self) -> dict:
        with self._lock:
            dropped = dict(self.dropped)
        return {"queued": self._queue.qsize(), "dropped": dropped,
                "sent": {"%s %s" % (d.kind, d.address): d.sent for d in self.destinations}}


def forwarder_from_config(cfg, version: str = "", warn=None) -> AuthForwarder:
    """The AuthForwarder of the [sensor] syslog_* and logstash_server keys (module docstring)."""
    s = cfg.sensor
    tls = None
    if any(str(a).strip().startswith("tls://") for a in s.syslog_server):
        tls = tls_context(s.syslog_ca_file, s.syslog_client_cert, s.syslog_client_key,
                          keys=("[sensor] syslog_ca_file", "[sensor] syslog_client_cert", "[sensor] syslog_client_key"))
    return AuthForwarder(tuple(s.syslog_server), tuple(s.logstash_server), syslog_format=s.syslog_format,
                         tls=tls, version=version, warn=warn)
