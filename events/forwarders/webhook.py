"""Webhook alerts (Maltrail's ALERT_WEBHOOK_URL, ALERT_SEVERITY, ALERT_FORMAT, ALERT_THROTTLE):
events of a severity or above POSTed to an HTTP(S) URL, one request each.

Owns the alert's body, the choice of events and the request:

- The body is `alert_format` with `%(name)s` placeholders (FIELDS): Maltrail's event fields as
  its alerter has them (time, timestamp, sensor, src_ip, src_port, dst_ip, dst_port, proto, type,
  trail, info, reference, severity) and our count; `%(json)s` is the event as LOGSTASH_SERVER sends
  it (events/forwarders/logstash.py), which is also the default body. Text values are inserted
  JSON-escaped (no quotes added): the body goes out as application/json, as Maltrail's does, and a
  trail is attacker-controlled text (a query name, a URL), so '{"text": "%(trail)s"}' must stay
  one valid JSON value whatever the trail holds. Values without a quote, backslash or control
  character are inserted as Maltrail inserts them.
- Events below `severity` are not alerted. At most one alert per (source address, trail) in
  `throttle_s` seconds of event time (packet time: a replay throttles as the live traffic would);
  the others are counted as throttled, not sent. The table is bounded (THROTTLE_KEYS, the oldest
  quarter forgotten when full) and kept in memory only: a restart may alert once more.
- One POST per alert over one kept-alive connection, with a connect timeout and a total timeout
  for the whole exchange (a server trickling its answer cannot hold the forwarder longer).
  HTTPS verifies the certificate and name, always (the system's CAs or `ca_file`); redirects are
  never followed (a 3xx is a refusal: the alert is not sent elsewhere).
- What an answer means for the event (events/forwarders/base.py does the retrying): 2xx sent;
  5xx, 408, 429, a timeout or a connection error is an outage: Unreachable, and the alert is
  offered again after a backoff, as is everything after it, so an outage loses nothing; any
  other answer (a 4xx: the webhook will not take that body) refuses that alert for good: counted,
  said once per status, skipped.
- Side effects of rendering (the throttle table, the counts) become real only for events the
  forwarder has passed (`committed`), so an alert offered again after an outage is neither
  throttled by itself nor counted twice.

The URL often holds the webhook's secret (Slack, Discord, Teams put it in the path): it is never
printed; the destination's name shows the scheme, the host and a hash of the whole URL.
Must not know how events are detected.
"""

from __future__ import annotations

import collections
import hashlib
import json
from typing import Callable
from urllib.parse import urlsplit

from events.formats import maltrail_time, maltrail_type
from events.forwarders.base import Destination, Unreachable
from events.forwarders.transports import HttpPoster
from events.forwarders.logstash import logstash_json
from events.record import SEVERITIES, Event

FIELDS = ("time", "timestamp", "sensor", "src_ip", "src_port", "dst_ip", "dst_port", "proto", "type", "trail",
          "info", "reference", "severity", "count", "json")
CONNECT_TIMEOUT_S = 5.0
TOTAL_TIMEOUT_S = 15.0
THROTTLE_KEYS = 10_000
ANSWER_BYTES = 65_536          # read of an answer's body; a longer one ends the kept-alive connection
_TRANSIENT = frozenset((408, 429))


def _escaped(value) -> str:
    return json.dumps("-" if value is None else str(value), ensure_ascii=False)[1:-1]


def alert_fields(event: Event) -> dict:
    """The values `%(name)s` stands for (see the module doc)."""
    fields = {name: _escaped(value) for name, value in (
        ("time", maltrail_time(event.ts_us)), ("sensor", event.sensor), ("src_ip", event.src_ip),
        ("src_port", event.src_port), ("dst_ip", event.dst_ip), ("dst_port", event.dst_port),
        ("proto", event.proto), ("type", maltrail_type(event.type)), ("trail", event.trail),
        ("info", event.info), ("reference", event.reference), ("severity", event.severity))}
    fields["timestamp"] = event.ts_us // 1_000_000
    fields["count"] = event.count
    fields["json"] = logstash_json(event)
    return fields


def alert_body(template: str, event: Event) -> bytes:
    return (template % alert_fields(event)).encode("utf-8", "backslashreplace")


def display_url(url: str) -> str:
    """The URL as it may be shown: scheme, host and port, and a hash standing for the rest."""
    parts = urlsplit(url)
    digest = hashlib.sha256(url.encode("utf-8", "surrogateescape")).hexdigest()[:10]
    host = parts.hostname or "?"
    if ":" in host:
        host = "[%s]" % host
    return "%s://%s%s/...(%s)" % (parts.scheme, host, ":%d" % parts.port if parts.port else "", digest)


class Webhook(Destination):
    kind = "alert_webhook_url"
    reliable = True

    def __init__(self, url: str, severity: str = "high", template: str = "%(json)s", throttle_s: int = 3600,
                 ca_file: str = "", version: str = "", warn: Callable[[str], None] | None = None,
                 connect_timeout_s: float = CONNECT_TIMEOUT_S, total_timeout_s: float = TOTAL_TIMEOUT_S):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("the webhook URL must be http://host/... or https://host/...")
        if severity not in SEVERITIES:
            raise ValueError("alert severity %r: one of %s" % (severity, ", ".join(SEVERITIES)))
        try:        # a template that cannot be filled fails now, not at the first alert
            alert_body(template, Event(0, "", "", None, "", None, "", "", "", "", "", "low"))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError("alert format %r: %s" % (template, exc)) from None
        super().__init__(display_url(url))
        https = parts.scheme == "https"
        self.target = (parts.path or "/") + ("?" + parts.query if parts.query else "")
        self.http = HttpPoster(self.address, https, parts.hostname, parts.port or (443 if https else 80), ca_file,
                               connect_timeout_s=connect_timeout_s, total_timeout_s=total_timeout_s,
                               answer_bytes=ANSWER_BYTES)
        self.min_rank = SEVERITIES.index(severity)
        self.template = template
        self.throttle_s = throttle_s
        self.user_agent = "maltrail-engine/%s" % (version or "unknown")
        self.warn = warn or (lambda text: None)
        self._last_alert: collections.OrderedDict = collections.OrderedDict()   # (src, trail) -> event time, s
        self._tentative: dict = {}                  # the same for alerts rendered, not yet passed
        self._rendered: list[tuple] = []            # per event rendered since the last `committed`
        self._said: set[int] = set()
        self.alerted = self.below = self.throttled = self.rejected = 0

    # -- which events, which body -----------------------------------------------------------
    def render(self, event: Event) -> bytes | None:
        # A severity this rule does not know counts as medium, the rule's own default.
        rank = SEVERITIES.index(event.severity) if event.severity in SEVERITIES else 1
        if rank < self.min_rank:
            self._rendered.append(("below",))
            return None
        key = (event.src_ip, event.trail)
        ts_s = event.ts_us / 1_000_000
        if self.throttle_s > 0:
            last = self._tentative.get(key, self._last_alert.get(key))
            if last is not None and abs(ts_s - last) < self.throttle_s:
                self._rendered.append(("throttled",))
                return None
        self._tentative[key] = ts_s
        self._rendered.append(("alert", key, ts_s))
        return alert_body(self.template, event)

    def committed(self, count: int) -> None:
        for entry in self._rendered[:count]:
            if entry[0] == "below":
                self.below += 1
            elif entry[0] == "throttled":
                self.throttled += 1
            else:
                self.alerted += 1
                self._last_alert[entry[1]] = entry[2]
                self._last_alert.move_to_end(entry[1])
                if len(self._last_alert) > THROTTLE_KEYS:
                    for _ in range(THROTTLE_KEYS // 4):
                        self._last_alert.popitem(last=False)
        self._rendered = []
        self._tentative = {}

    # -- sending ----------------------------------------------------------------------------
    def deliver(self, messages: list[bytes]) -> int:
        """POSTs the alerts in order; returns how many are done with (sent or refused), stopping at
        the first outage; Unreachable when not even the first could be."""
        done = 0
        for body in messages:
            try:
                status, reason, answer = self._post(body)
            except Unreachable:
                if done:
                    return done
                raise
            if status in _TRANSIENT or status >= 500:
                if done:
                    return done
                raise Unreachable("%s answered %d %s" % (self.address, status, reason))
            if not 200 <= status < 300:
                self.rejected += 1
                if status not in self._said:
                    self._said.add(status)
                    self.warn("%s %s refused an alert with %d %s%s; alerts it refuses so are counted and not sent "
                              "again" % (self.kind, self.address, status, reason,
                                         (": %s" % answer.decode("utf-8", "replace")[:200].strip()) if answer else ""))
            done += 1
        return done

    def connected(self) -> bool:
        return True

    def stats(self) -> dict:
        return {"alerted": self.alerted, "below_severity": self.below, "throttled": self.throttled,
                "refused": self.rejected}

    def _post(self, body: bytes) -> tuple[int, str, bytes]:
        return self.http.post(self.target, body, {"Content-Type": "application/json", "User-Agent": self.user_agent})

    def close(self) -> None:
        self.http.close()
