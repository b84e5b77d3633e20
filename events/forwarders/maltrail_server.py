"""Maltrail's `LOG_SERVER`: one UDP datagram per event to a Maltrail server (or ours).

The datagram is `"<epoch seconds> <event line>\\n"`: the event's packet time in whole seconds,
a space, and the event's Maltrail line exactly as `maltrail-engine tail --format maltrail` prints
it, with its newline; Maltrail's server (core/log.py start_logd) takes a leading run of digits
and a space as the time and appends the rest to that day's log. With a shared secret
(`log_server_secret`, Maltrail's LOG_SERVER_SECRET) the datagram is framed and signed as
Maltrail's newer servers expect: `MTS1 <32 hex digits> <datagram>`, the hex being the first 16
bytes of HMAC-SHA256(secret, datagram).

Best effort, as in Maltrail: a datagram the kernel will not take is counted as dropped, never
retried. Must not know how events are detected.
"""

from __future__ import annotations

import hashlib
import hmac

from events.formats import format_maltrail
from events.forwarders.base import Destination, Unreachable
from events.forwarders.transports import Datagram, Endpoint
from events.record import Event

SIGNED_PREFIX = b"MTS1 "


def datagram(event: Event) -> bytes:
    return ("%d %s\n" % (event.ts_us // 1_000_000, format_maltrail(event))).encode("utf-8", "backslashreplace")


def sign(secret: bytes, payload: bytes) -> bytes:
    mac = hmac.new(secret, payload, hashlib.sha256).digest()[:16].hex().encode()
    return SIGNED_PREFIX + mac + b" " + payload


class MaltrailServer(Destination):
    kind = "log_server"
    reliable = False

    def __init__(self, address: str, secret: str = ""):
        super().__init__(address)
        self.endpoint = Endpoint.parse(address, schemes=("udp",))
        self.secret = secret.encode() if secret else b""
        self.transport = Datagram(self.endpoint)

    def render(self, event: Event) -> bytes:
        payload = datagram(event)
        return sign(self.secret, payload) if self.secret else payload

    def deliver(self, messages: list[bytes]) -> int:
        return self.transport.send(messages)

    def refused(self) -> int:
        return getattr(self.transport, "refused", 0)

    def close(self) -> None:
        self.transport.close()


__all__ = ["MaltrailServer", "Unreachable", "datagram", "sign"]
