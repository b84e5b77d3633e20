"""The forwarder process: every configured destination fed from the event log.

Owns the process around events/forwarders: it opens the log directory and loads what TLS needs
while it may still reach them, lowers its priority (nice 10: when CPUs are short, forwarding
waits, detection does not), becomes the unprivileged account with no capabilities, and runs one
thread per destination (events/forwarders/base.py Forwarder), each following the log from its own
saved place. It reports their statistics to the supervisor every REPORT_S, and tells the
destinations the date of the trails in use when a reload changes it (syslog's CEF carries it).

It is started before the log writer, so that a destination seen for the first time starts at the
end of the log as it was before this run wrote anything. On `finish` (the log writer has closed
the log) or when the supervisor is gone, it keeps sending until every destination has caught up
with the log, or has made no progress for FINISH_IDLE_S (its collector is down), or the time the
`finish` message allows has passed (a SIGTERM's stop budget; a replay that ended allows as long
as destinations make progress, so a replayed capture is forwarded whole). Then it saves every
place and exits; what a destination had not taken by then it gets at the next start.

Must not judge packets or write the log.
"""

from __future__ import annotations

import os
import selectors
import sys
import time

from engine.processes import privileges
from engine.processes.child import ChildProcess
from engine.transport import ipc
from events.forwarders.base import Forwarder
from events.forwarders.logstash import Logstash
from events.forwarders.maltrail_server import MaltrailServer
from events.forwarders.syslog import Syslog
from events.forwarders.transports import tls_context

REPORT_S = 0.5
FINISH_IDLE_S = 3.0
NICE_INCREMENT = 10


class ForwarderSpec:
    def __init__(self, log_dir: str, destinations: list[dict], status, version: str, trails_date: str,
                 account=None, parent_pid=None, close=()):
        self.log_dir = log_dir
        self.destinations = destinations  # plain descriptions, see build_destinations
        self.status = status              # channel to the supervisor
        self.version = version
        self.trails_date = trails_date    # YYYY-MM-DD of the artifact in use
        self.account = account
        self.parent_pid = parent_pid
        self.close = close


def destinations_from_config(cfg) -> list[dict]:
    """The destinations `[sensor]` configures, as plain descriptions (what crosses to the
    forwarder process)."""
    s = cfg.sensor
    out = []
    if s.log_server:
        out.append({"kind": "log_server", "address": s.log_server, "secret": s.log_server_secret})
    for address in s.syslog_server:
        out.append({"kind": "syslog_server", "address": address, "layout": s.syslog_format,
                    "ca_file": s.syslog_ca_file, "client_cert": s.syslog_client_cert,
                    "client_key": s.syslog_client_key})
    for address in s.logstash_server:
        out.append({"kind": "logstash_server", "address": address})
    return out


class _TrailsDate:
    """The date of the trails in use, as the supervisor last said it."""

    def __init__(self, text: str):
        self.text = text

    def __call__(self) -> str:
        return self.text


def build_destinations(descriptions: list[dict], version: str, trails_date) -> list:
    """Destinations from their descriptions; ValueError or OSError (a TLS file that cannot be
    read) naming the destination."""
    built = []
    for d in descriptions:
        kind, address = d["kind"], d["address"]
        try:
            if kind == "log_server":
                built.append(MaltrailServer(address, d.get("secret", "")))
            elif kind == "syslog_server":
                tls = None
                if address.startswith("tls://"):
                    tls = tls_context(d.get("ca_file", ""), d.get("client_cert", ""), d.get("client_key", ""),
                                      keys=("syslog_ca_file", "syslog_client_cert", "syslog_client_key"))
                built.append(Syslog(address, d.get("layout", "maltrail"), version, trails_date, tls))
            elif kind == "logstash_server":
                built.append(Logstash(address))
            else:
                raise ValueError("unknown destination kind %r" % kind)
        except (ValueError, OSError) as exc:
            raise type(exc)("%s %s: %s" % (kind, address, exc)) from None
    return built


def _once_each(destinations: list) -> list:
    """A destination listed twice is fed once: two feeds would share one position file."""
    seen, kept = set(), []
    for d in destinations:
        if d.name in seen:
            _warn("%s %s is listed more than once; events are sent to it once" % (d.kind, d.address))
            d.close()
            continue
        seen.add(d.name)
        kept.append(d)
    return kept


def _warn(text: str) -> None:
    sys.stderr.write("[!] %s forwarder: %s\n" % (time.strftime("%Y-%m-%d %H:%M:%S"), text))
    sys.stderr.flush()


def run_forwarder(spec: ForwarderSpec) -> None:
    child = ChildProcess("mte-forwarder", parent_pid=spec.parent_pid, close=spec.close)
    spec.close = ()
    # Below capture and the workers: when the CPUs are short, forwarding waits (the log holds
    # what it has not sent yet), detection does not.
    try:
        os.nice(NICE_INCREMENT)
    except OSError:
        pass
    trails_date = _TrailsDate(spec.trails_date)
    try:
        dir_fd = os.open(spec.log_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        destinations = _once_each(build_destinations(spec.destinations, spec.version, trails_date))
        child.drop_privileges(spec.account)
        forwarders = [Forwarder(d, dir_fd, warn=_warn) for d in destinations]
    except (OSError, ValueError, privileges.PrivilegeError) as exc:
        _warn(str(exc))
        try:
            ipc.send(spec.status, ["done", {"error": str(exc)}])
        except OSError:
            pass
        sys.exit(1)
    for forwarder in forwarders:
        forwarder.start()
    ipc.send(spec.status, ["ready", [f.destination.name for f in forwarders]])

    def report(kind: str = "stats") -> None:
        try:
            ipc.send(spec.status, [kind, {f.destination.name: f.stats() for f in forwarders}])
        except OSError:
            pass

    selector = selectors.DefaultSelector()
    selector.register(spec.status, selectors.EVENT_READ)
    finishing_since = None
    finish_by = None            # a hard limit on finishing (monotonic), when one was given
    last_report = 0.0
    while True:
        selector.select(REPORT_S)
        for message in ipc.receive_ready(spec.status):
            if message is None or message[0] == "finish":
                if finishing_since is None:
                    finishing_since = time.monotonic()
                    within_s = message[1] if message is not None and len(message) > 1 else None
                    if within_s is not None:
                        finish_by = finishing_since + max(float(within_s), 0.0)
                    elif message is None:
                        finish_by = finishing_since + FINISH_IDLE_S   # the supervisor is gone
            elif message[0] == "trails_date":
                trails_date.text = message[1]
        if finishing_since is None and child.orphaned():
            finishing_since = time.monotonic()
            finish_by = finishing_since + FINISH_IDLE_S
        now = time.monotonic()
        if now - last_report >= REPORT_S:
            report()
            last_report = now
        if finishing_since is not None:
            # Caught up: an empty read that began after the log was closed (read by each thread
            # itself; the cursors are theirs alone); or stuck: no progress for FINISH_IDLE_S.
            if all(f.finished(finishing_since, FINISH_IDLE_S) for f in forwarders) or \
                    (finish_by is not None and now >= finish_by):
                break
    for forwarder in forwarders:
        forwarder.stop()
    report("done")
    sys.exit(0)
