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
from events.forwarders import spool as spooling
from events.forwarders.base import FORWARD_BATCH, Destination, Forwarder
# The destinations' modules (and what they bring: http.client, ssl, email) are imported where a
# destination is built or named, not here: every sensor start imports this module for
# destinations_from_config, most with no destination at all.

REPORT_S = 0.5
FINISH_IDLE_S = 3.0
FINISH_POLL_S = 0.02
NICE_INCREMENT = 10


class ForwarderSpec:
    def __init__(self, log_dir: str, destinations: list[dict], status, version: str, trails_date: str,
                 account=None, parent_pid=None, close=(), spool: bool = False):
        self.spool = spool                # disable_local_log_storage: sweep the passed day files at the end
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
    for address in s.json_output:
        out.append({"kind": "json_output", "address": address})
    if s.alert_webhook_url:
        out.append({"kind": "alert_webhook_url", "address": s.alert_webhook_url, "severity": s.alert_severity,
                    "format": s.alert_format, "throttle_s": s.alert_throttle_s, "ca_file": s.alert_ca_file})
    if s.server_url:
        from config.load import resolved_sensor_name
        out.append({"kind": "server_url", "address": s.server_url, "key": s.server_key,
                    "ca_file": s.server_ca_file, "sensor": resolved_sensor_name(cfg),
                    "suppressions_poll_s": s.server_suppressions_poll_s})
    return out


def position_names(descriptions: list[dict]) -> list[str]:
    """The names of the destinations' saved places (LOG_DIR/.forward/NAME.json), as the forwarder
    will call them: what the log writer's spool asks about (disable_local_log_storage)."""
    from events.forwarders.transports import Endpoint
    from events.forwarders.webhook import display_url
    names = []
    for d in descriptions:
        kind, address = d["kind"], d["address"]
        named = Destination(display_url(address) if kind == "alert_webhook_url" else address)
        named.kind = kind
        schemes = _ENDPOINT_SCHEMES.get(kind)
        if schemes and (kind != "json_output" or address.startswith("tcp://")):
            # the normal form the destination itself names its place by (Destination.identity)
            named.endpoint = Endpoint.parse(address, schemes=schemes)
        names.append(named.name)
    return names


# The schemes each network destination accepts (its Endpoint.parse), for position_names.
_ENDPOINT_SCHEMES = {"log_server": ("udp",), "syslog_server": ("udp", "tcp", "tls"),
                     "logstash_server": ("udp", "tcp"), "json_output": ("tcp",)}


class _TrailsDate:
    """The date of the trails in use, as the supervisor last said it."""

    def __init__(self, text: str):
        self.text = text

    def __call__(self) -> str:
        return self.text


def build_destinations(descriptions: list[dict], version: str, trails_date, warn=None, trusted_uids=()) -> list:
    """Destinations from their descriptions; ValueError or OSError (a TLS file that cannot be
    read, a json_output directory that is missing or unsafe) naming the destination. `warn` is
    how a destination says something once (a webhook's refusal); `trusted_uids` are the accounts
    besides root that may own a json_output file's directory (the sensor's own)."""
    from events.forwarders.ecs import EcsOutput
    from events.forwarders.logstash import Logstash
    from events.forwarders.maltrail_server import MaltrailServer
    from events.forwarders.server_link import ServerLink
    from events.forwarders.syslog import Syslog
    from events.forwarders.transports import tls_context
    from events.forwarders.webhook import Webhook, display_url
    built = []
    for d in descriptions:
        kind, address = d["kind"], d["address"]
        if kind == "alert_webhook_url":
            address = display_url(address)     # the URL holds the webhook's secret: never in a message
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
            elif kind == "json_output":
                built.append(EcsOutput(address, version, trusted_uids))
            elif kind == "alert_webhook_url":
                built.append(Webhook(d["address"], d.get("severity", "high"), d.get("format", "%(json)s"),
                                     d.get("throttle_s", 3600), d.get("ca_file", ""), version, warn))
            elif kind == "server_url":
                built.append(ServerLink(address, d.get("key", ""), d.get("sensor", ""), version, trails_date,
                                        d.get("ca_file", ""), warn))
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
    # Before the privileges go: an unprivileged account may not read the interpreter's library.
    from events.forwarders.server_link import SuppressionPoller
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
        destinations = _once_each(build_destinations(
            spec.destinations, spec.version, trails_date, warn=_warn,
            trusted_uids=(spec.account.uid,) if spec.account is not None else ()))
        # The analysts' suppressions, asked of our server (events/forwarders/server_link.py); the
        # supervisor merges them into the workers' per-host whitelist.
        pollers = [SuppressionPoller(d["address"], d.get("key", ""), d.get("sensor", ""), d["suppressions_poll_s"],
                                     d.get("ca_file", ""), spec.version, warn=_warn)
                   for d in spec.destinations if d["kind"] == "server_url" and d.get("suppressions_poll_s")][:1]
        child.drop_privileges(spec.account)
        forwarders = [Forwarder(d, dir_fd, warn=_warn, batch=getattr(d, "batch_events", FORWARD_BATCH))
                      for d in destinations]
        for f in forwarders:
            if hasattr(f.destination, "attach"):    # a destination that reads the forwarder's places
                f.destination.attach(f)
    except (OSError, ValueError, privileges.PrivilegeError) as exc:
        _warn(str(exc))
        try:
            ipc.send(spec.status, ["done", {"error": str(exc)}])
        except OSError:
            pass
        sys.exit(1)
    for forwarder in forwarders:
        forwarder.start()
    for poller in pollers:
        poller.start()
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
    writer_done = False
    last_report = 0.0
    while True:
        selector.select(REPORT_S if finishing_since is None else FINISH_POLL_S)
        for message in ipc.receive_ready(spec.status):
            if message is None or message[0] == "finish":
                if finishing_since is None:
                    finishing_since = time.monotonic()
                    for forwarder in forwarders:
                        forwarder.wake()    # the log is complete: read it now
                    within_s = message[1] if message is not None and len(message) > 1 else None
                    if within_s is not None:
                        finish_by = finishing_since + max(float(within_s), 0.0)
                    elif message is None:
                        finish_by = finishing_since + FINISH_IDLE_S   # the supervisor is gone
                writer_done = writer_done or message is not None
            elif message[0] == "trails_date":
                trails_date.text = message[1]
        if finishing_since is None and child.orphaned():
            finishing_since = time.monotonic()
            finish_by = finishing_since + FINISH_IDLE_S
        now = time.monotonic()
        if now - last_report >= REPORT_S:
            report()
            last_report = now
            for poller in pollers:
                rows = poller.take()
                if rows is not None:
                    try:
                        ipc.send(spec.status, ["suppressions", [list(r) for r in rows]])
                    except OSError:
                        pass
        if finishing_since is not None:
            # Caught up: an empty read that began after the log was closed (read by each thread
            # itself; the cursors are theirs alone); or stuck: no progress for FINISH_IDLE_S.
            if all(f.finished(finishing_since, FINISH_IDLE_S) for f in forwarders) or \
                    (finish_by is not None and now >= finish_by):
                break
    for poller in pollers:
        poller.stop()
    for forwarder in forwarders:
        forwarder.stop()
    if spec.spool and writer_done:
        # The log writer has closed the log (`finish` comes after it exited): nothing can append
        # to a day file any more, so what every destination passed can go (events/forwarders/spool.py).
        try:
            spooling.sweep(dir_fd, [f.destination.name for f in forwarders])
        except OSError as exc:
            _warn("spool: %s; the day files stay until the next run" % exc)
    report("done")
    sys.exit(0)
