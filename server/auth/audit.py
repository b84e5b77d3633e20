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
kept out of both Maltrail layouts so their readers see what they always saw. Must not send
anything: the server hands records to a callback, the forwarders deliver them.
"""

from __future__ import annotations

import json
import time
from typing import NamedTuple

from events.forwarders.syslog import cef_extension_value, cef_header_value

__all__ = ["AuthEvent", "clean_username"]

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

    def cef(self, host: str, version: str) -> str:
        extension = "src=%s spt=%d duser=%s outcome=%s" % (
            self.src_ip, self.src_port, cef_extension_value(self.username), "accepted" if self.success else "failed")
        stamp = time.strftime("%b %d %H:%M:%S", time.localtime(self.ts_s))
        return "%s %s CEF:0|Maltrail|server|%s|auth|%s|%d|%s" % (
            stamp, host, cef_header_value(version), "login success" if self.success else "login failure",
            1 if self.success else 2, extension)

    def json(self, host: str) -> str:
        return json.dumps({"timestamp": int(self.ts_s), "sensor": host, "type": "auth",
                           "outcome": "success" if self.success else "failure", "username": self.username,
                           "src_ip": self.src_ip, "src_port": self.src_port})

    def line(self) -> str:
        return "%s password for %s from %s port %d" % (
            "Accepted" if self.success else "Failed", self.username, self.src_ip, self.src_port)
