"""Maltrail's `LOGSTASH_SERVER`: one JSON object per event, by UDP (a datagram each) or TCP (a
line each).

The object is Maltrail's (core/log.py event_json), key for key and in order: timestamp (the
event's packet time, whole epoch seconds), sensor, severity, src_ip, src_port, dst_ip, dst_port,
proto, type, trail, info, reference; ports are numbers, or "-" where the protocol has none; type
is Maltrail's (a TLS/QUIC server name is "DNS"); Python's default json.dumps separators, ASCII
escaped. One difference: Maltrail sends its host name as `sensor`, we send the configured sensor
name (the one every event carries), so events of several sensors on one host stay apart
(COMPATIBILITY.md).

UDP is best effort; TCP acknowledges every line before the place moves on.
"""

from __future__ import annotations

import json

from events.formats import maltrail_type
from events.forwarders.base import Destination
from events.forwarders.transports import Datagram, Endpoint, Stream
from events.record import Event


def logstash_json(event: Event) -> str:
    fields = (("timestamp", event.ts_us // 1_000_000), ("sensor", event.sensor), ("severity", event.severity),
              ("src_ip", event.src_ip), ("src_port", "-" if event.src_port is None else event.src_port),
              ("dst_ip", event.dst_ip), ("dst_port", "-" if event.dst_port is None else event.dst_port),
              ("proto", event.proto), ("type", maltrail_type(event.type)), ("trail", event.trail),
              ("info", event.info), ("reference", event.reference))
    return json.dumps(dict(fields))


class Logstash(Destination):
    kind = "logstash_server"

    def __init__(self, address: str):
        super().__init__(address)
        self.endpoint = Endpoint.parse(address, schemes=("udp", "tcp"))
        self.reliable = self.endpoint.scheme == "tcp"
        self.transport = Datagram(self.endpoint) if not self.reliable else Stream(self.endpoint)

    def render(self, event: Event) -> bytes:
        data = logstash_json(event).encode("ascii")
        return data if not self.reliable else data + b"\n"

    def deliver(self, messages: list[bytes]) -> int:
        if not self.reliable:
            return self.transport.send(messages)
        self.transport.send(b"".join(messages))
        return len(messages)

    def connected(self) -> bool:
        return not self.reliable or self.transport.connected

    def refused(self) -> int:
        return getattr(self.transport, "refused", 0)

    def close(self) -> None:
        self.transport.close()
