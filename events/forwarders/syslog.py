"""Maltrail's `SYSLOG_SERVER`: events as CEF over syslog, by UDP, TCP or TLS.

The default layout is Maltrail's, byte for byte (core/log.py with core/settings.py CEF_FORMAT):

    MMM DD HH:MM:SS HOST CEF:0|Maltrail|sensor|VERSION|TRAILS-DATE|INFO|SEV|src=S spt=SP dst=D dpt=DP trail=T ref=R

the event's local time (`%b %d %H:%M:%S`), this host's name, our version, the date of the trails
in use (YYYY-MM-DD), the event's info as the CEF name, its severity low/medium/high as 0/1/2,
and the extension; no `<PRI>`. CEF's escaping: `\\` and `|` in header fields, `\\` and `=` in
extension values (trail, reference); CR and LF become spaces anywhere (a record is one line).
`syslog_format = "rfc5424"` writes a proper RFC 5424 record instead,
`<PRI>1 TIMESTAMP HOST maltrail-engine - - - CEF:...`, facility user, syslog severity critical /
warning / notice for high / medium / low, and CEF severity on CEF's own 0-10 scale (9 / 6 / 3),
since SIEMs read Maltrail's 0-2 as "low".

Transports (events/forwarders/transports.py): `udp://` (or Maltrail's bare `host:port`) one
datagram per record, best effort; `tcp://` and `tls://` with RFC 6587 octet counting
(`LENGTH SP RECORD`), every record acknowledged before the place moves on.
Must not know how events are detected.
"""

from __future__ import annotations

import datetime
import socket
import time

from events.formats import safe_value
from events.forwarders.base import Destination
from events.forwarders.transports import Datagram, Endpoint, Stream
from events.record import Event

LAYOUTS = ("maltrail", "rfc5424")
MALTRAIL_SEVERITY = {"low": 0, "medium": 1, "high": 2}
CEF10_SEVERITY = {"low": 3, "medium": 6, "high": 9}
# RFC 5424 section 6.2.1: facility 1 (user-level), severities 2 critical, 4 warning, 5 notice.
_FACILITY_USER = 1
_SYSLOG_SEVERITY = {"high": 2, "medium": 4, "low": 5}
APP_NAME = "maltrail-engine"


def _flat(text: str) -> str:
    return text.replace("\r", " ").replace("\n", " ")


def cef_header_value(value) -> str:
    return _flat(str(value).replace("\\", "\\\\").replace("|", "\\|"))


def cef_extension_value(value) -> str:
    return _flat(str(value).replace("\\", "\\\\").replace("=", "\\="))


def _port(value) -> str:
    return "-" if value is None else str(value)


def cef(event: Event, version: str, trails_date: str, severity_scale: dict) -> str:
    """The CEF part of the record (from `CEF:0|`)."""
    extension = "src=%s spt=%s dst=%s dpt=%s trail=%s ref=%s" % (
        event.src_ip, _port(event.src_port), event.dst_ip, _port(event.dst_port),
        cef_extension_value(event.trail), cef_extension_value(event.reference))
    return "CEF:0|Maltrail|sensor|%s|%s|%s|%s|%s" % (
        cef_header_value(version), trails_date, cef_header_value(event.info),
        severity_scale.get(event.severity, severity_scale["medium"]), extension)


def maltrail_record(event: Event, host: str, version: str, trails_date: str) -> str:
    stamp = time.strftime("%b %d %H:%M:%S", time.localtime(event.ts_us // 1_000_000))
    return "%s %s %s" % (stamp, host, cef(event, version, trails_date, MALTRAIL_SEVERITY))


def rfc5424_record(event: Event, host: str, version: str, trails_date: str) -> str:
    pri = _FACILITY_USER * 8 + _SYSLOG_SEVERITY.get(event.severity, 4)
    when = datetime.datetime.fromtimestamp(event.ts_us / 1_000_000).astimezone()
    stamp = when.isoformat(timespec="microseconds")
    return "<%d>1 %s %s %s - - - %s" % (pri, stamp, host or "-", APP_NAME,
                                        cef(event, version, trails_date, CEF10_SEVERITY))


class Syslog(Destination):
    kind = "syslog_server"

    def __init__(self, address: str, layout: str = "maltrail", version: str = "", trails_date=None,
                 tls=None, host: str | None = None):
        super().__init__(address)
        if layout not in LAYOUTS:
            raise ValueError("syslog layout %r: one of %s" % (layout, ", ".join(LAYOUTS)))
        self.endpoint = Endpoint.parse(address)
        self.layout = layout
        self.version = version
        # The date of the trails in use changes with a reload: asked for each record.
        self.trails_date = trails_date or (lambda: time.strftime("%Y-%m-%d"))
        self.host = host if host is not None else socket.gethostname()
        self.reliable = self.endpoint.scheme != "udp"
        if self.endpoint.scheme == "udp":
            self.transport = Datagram(self.endpoint)
        else:
            if self.endpoint.scheme == "tls" and tls is None:
                raise ValueError("%s: tls:// needs a TLS context" % address)
            self.transport = Stream(self.endpoint, tls if self.endpoint.scheme == "tls" else None)

    def record(self, event: Event) -> str:
        build = maltrail_record if self.layout == "maltrail" else rfc5424_record
        return build(event, self.host, self.version, self.trails_date())

    def render(self, event: Event) -> bytes:
        data = self.record(event).encode("utf-8", "backslashreplace")
        if self.endpoint.scheme == "udp":
            return data
        return b"%d %s" % (len(data), data)      # RFC 6587 section 3.4.1, octet counting

    def deliver(self, messages: list[bytes]) -> int:
        if self.endpoint.scheme == "udp":
            return self.transport.send(messages)
        self.transport.send(b"".join(messages))
        return len(messages)

    def connected(self) -> bool:
        return self.endpoint.scheme == "udp" or self.transport.connected

    def refused(self) -> int:
        return getattr(self.transport, "refused", 0)

    def close(self) -> None:
        self.transport.close()


__all__ = ["Syslog", "cef", "maltrail_record", "rfc5424_record", "safe_value"]
