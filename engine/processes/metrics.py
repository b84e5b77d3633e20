"""The sensor's Prometheus endpoint: /metrics and /healthz, served by a thread of the supervisor.

Owns `[sensor] stats_address`: the listening socket (bound by the supervisor while it still holds
its privileges, before any child exists), a deliberately small HTTP/1.x server on one thread, the
prometheus_client Collector that renders the supervisor's latest snapshot (`MetricsView`), and the
health judgement behind /healthz and `maltrail_up`.

Thread contract. The supervisor's loop builds an immutable `MetricsView` (plain numbers, fresh
dicts it never touches again) and hands it to `MetricsServer.publish`, which judges progress and
replaces the published (view, health) pair with one reference assignment. The HTTP thread only
reads that reference. Nothing the supervisor calls here waits for a client, and nothing the HTTP
thread does waits for the supervisor: a slow, silent or hostile client costs one of
`MAX_CLIENTS` connection slots until its `CLIENT_DEADLINE_S`, and a flood of requests costs
socket I/O only (the exposition is rendered once per published view).

Children never hold these sockets: a fork hook closes them in every child the supervisor starts
(a restarted worker included), and the accepting thread holds the same lock as the fork, so no
connection is ever half-registered when a child is made.

What is served: GET /metrics (Prometheus text format 0.0.4, the one every Prometheus reads and
`promtool check metrics` checks) and GET /healthz (200 "ok" or 503 with one reason per line);
anything else is 404, 405 or 400, and a request head over MAX_REQUEST_BYTES is 431.

Must not: change the supervisor's state, talk to its children, or write anything but HTTP
responses.
"""

from __future__ import annotations

import errno
import os
import selectors
import socket
import threading
import time
import weakref
from dataclasses import dataclass, field

# Health (ARCHITECTURE.md, "Metrics"): a process that has not reported for STALL_S, or a worker
# whose ring holds frames while its processed count has not moved for STALL_S, is not healthy.
# Workers report every 0.5 s and the capture process every CAPTURE_REPORT_S while metrics are
# on, so this is twenty missed reports: a busy or briefly starved machine stays healthy.
STALL_S = 10.0
CAPTURE_REPORT_S = 0.5      # the capture process's report interval while the endpoint is on
PUBLISH_S = 0.25            # the supervisor publishes a new view at most this often

MAX_REQUEST_BYTES = 8192    # request line and headers; Prometheus sends a few hundred
CLIENT_DEADLINE_S = 5.0     # from accept to the last byte of the answer
MAX_CLIENTS = 16            # connections open at once; more are closed at once
LISTEN_BACKLOG = 16
ACCEPT_PAUSE_S = 1.0        # after accept() itself fails (out of descriptors): breathe, then retry

CONTENT_TYPE_METRICS = "text/plain; version=0.0.4; charset=utf-8"
CONTENT_TYPE_TEXT = "text/plain; charset=utf-8"
PATHS = ("/metrics", "/healthz")


class MetricsError(Exception):
    """The endpoint cannot be served; the message names the address, the cause and the fix."""


# -- the snapshot ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class WorkerView:
    slot: int
    alive: bool
    restarts: int                   # deaths, each followed at once by a new worker on the same ring
    heard_monotonic: float          # when its last statistics report arrived (0: none yet)
    processed_frames: int           # frames it finished (the ring's `processed`)
    backlog_bytes: int              # bytes published into its ring and not yet taken
    in_progress_frames: int         # frames of the batch it holds
    lost_frames: int                # frames that went with its deaths (an upper bound)
    ring_dropped_frames: int        # frames dropped because its ring was full (live capture)
    generation: int                 # the trail generation it runs


@dataclass(frozen=True)
class MetricsView:
    """What the supervisor knows, at one moment, as plain values the HTTP thread may read."""
    taken_monotonic: float
    taken_unix: float
    started_unix: float
    counters: dict                  # the workers' merged counters (engine/processes/stats.py shape)
    capture_frames: int             # frames the capture process read
    capture_kernel: dict | None     # libpcap's received / dropped / if_dropped (live capture)
    capture_alive: bool
    capture_exitcode: int | None
    capture_heard_monotonic: float  # when its last report arrived (0: none yet)
    mode: str                       # "live" or "replay"
    workers: tuple = ()             # WorkerView per slot
    trail_generation: int = 0
    trail_count: int = 0
    trails_built_unix: int = 0      # the artifact's build time
    forwarders: tuple = ()          # (name, {"kind", "destination", "sent", "failed", "dropped", "lag_s",
                                    #  "connected"}) per forwarder
    updates: tuple | None = None    # trail updates (engine/processes/updater.py): (running, successes,
                                    # failures, last success unix, last failure unix); None: updates off
    capture_headers_only: int = 0   # frames the capture process published as their headers alone
    capture_whole_frames: bool = False  # it publishes every frame whole (a flight from the higher port)


@dataclass(frozen=True)
class Health:
    ok: bool
    reasons: tuple = ()


STARTING = Health(False, ("starting: the sensor's processes are not all running yet",))


@dataclass
class _Progress:
    processed: int
    restarts: int
    baseline: float                 # heartbeats count from here (first seen, or restarted)
    waiting_since: float | None = None  # frames waiting and none finished since then


class ProgressJudge:
    """Decides whether the capture process and every worker are alive and progressing.

    Progressing, precisely: the process reports (a worker every 0.5 s whether or not traffic
    comes, so an idle link is healthy), and a worker with frames waiting in its ring (or a batch
    in hand) finishes some within STALL_S. Runs in the supervisor's thread, once per view."""

    def __init__(self, stall_s: float = STALL_S):
        self.stall_s = stall_s
        self._workers: dict[int, _Progress] = {}
        self._capture_baseline: float | None = None

    def judge(self, view: MetricsView) -> Health:
        now = view.taken_monotonic
        reasons = []
        if self._capture_baseline is None:
            self._capture_baseline = now
        if not view.capture_alive:
            if view.capture_exitcode == 0 and view.mode == "replay":
                reasons.append("the capture process has finished: its input ended")
            else:
                reasons.append("the capture process is not running (exit %s)" % view.capture_exitcode)
        else:
            silent = now - max(view.capture_heard_monotonic, self._capture_baseline)
            if silent > self.stall_s:
                reasons.append("the capture process has not reported for %.0f s" % silent)
        for w in view.workers:
            p = self._workers.get(w.slot)
            if p is None or p.restarts != w.restarts:
                p = self._workers[w.slot] = _Progress(w.processed_frames, w.restarts, now)
            if not w.alive:
                reasons.append("worker %d is not running" % w.slot)
                continue
            silent = now - max(w.heard_monotonic, p.baseline)
            if silent > self.stall_s:
                reasons.append("worker %d has not reported for %.0f s" % (w.slot, silent))
            waiting = w.backlog_bytes > 0 or w.in_progress_frames > 0
            if not waiting or w.processed_frames != p.processed:
                p.processed, p.waiting_since = w.processed_frames, (now if waiting else None)
            elif p.waiting_since is None:
                p.waiting_since = now
            elif now - p.waiting_since > self.stall_s:
                reasons.append("worker %d has frames waiting (%d bytes in its ring, %d in hand) and has "
                               "finished none for %.0f s" % (w.slot, w.backlog_bytes, w.in_progress_frames,
                                                              now - p.waiting_since))
        return Health(not reasons, tuple(reasons))


# -- the exposition -------------------------------------------------------------------------------

class SensorCollector:
    """A prometheus_client collector over the published view: every scrape renders the numbers
    the supervisor aggregated, nothing is counted here. Names follow Maltrail's Rust sensor where
    the meaning is the same (maltrail_up, maltrail_packets_received_total, maltrail_trails, ...)."""

    def __init__(self, current, version: str = ""):
        self._current = current     # () -> (MetricsView | None, Health, now_unix)
        self._version = version

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        view, health, now_unix = self._current()

        def gauge(name, doc, value=None, labels=None, rows=()):
            family = GaugeMetricFamily(name, doc, value=value, labels=labels)
            for label_values, v in rows:
                family.add_metric(label_values, v)
            return family

        def counter(name, doc, value=None, labels=None, rows=()):
            family = CounterMetricFamily(name, doc, value=value, labels=labels)
            for label_values, v in rows:
                family.add_metric(label_values, v)
            return family

        yield gauge("maltrail_up", "1 while /healthz answers 200: the capture process and every worker are "
                    "alive and progressing; 0 means traffic is not being judged (see /healthz for why).",
                    1 if health.ok else 0)
        yield gauge("maltrail_build_info", "The sensor's version, as a label; always 1.", labels=["version"],
                    rows=[([self._version], 1)])
        if view is None:
            return
        yield gauge("maltrail_uptime_seconds", "Seconds since the sensor started.",
                    max(0.0, now_unix - view.started_unix))
        c = view.counters
        yield counter("maltrail_packets_received", "Frames the capture process read (from libpcap or the "
                      "replayed files) and handed to the workers.", view.capture_frames)
        yield counter("maltrail_packets_processed", "Frames the workers judged.", c.get("frames", 0))
        yield counter("maltrail_packets_decoded", "Frames decoded down to their transport layer.",
                      c.get("decoded", 0))
        yield counter("maltrail_packets_skipped", "Frames skipped, by reason (malformed, not IP, ...).",
                      labels=["reason"], rows=_rows(c.get("skipped")))
        if view.capture_kernel is not None:
            k = view.capture_kernel
            yield counter("maltrail_capture_kernel_received", "Packets the kernel passed to libpcap (live "
                          "capture).", k.get("received", 0))
            yield counter("maltrail_capture_dropped", "Packets the kernel dropped because libpcap's buffer "
                          "was full: missed detections.", k.get("dropped", 0))
            yield counter("maltrail_capture_ifdropped", "Packets the interface dropped.", k.get("if_dropped", 0))
        yield counter("maltrail_capture_headers_only", "Frames published to the workers as their headers "
                      "alone (payload no detection reads).", view.capture_headers_only)
        yield gauge("maltrail_capture_whole_frames", "1 once the capture process publishes every frame "
                    "whole (it saw a certificate flight begun from the higher port).",
                    1 if view.capture_whole_frames else 0)
        yield counter("maltrail_ring_dropped", "Frames dropped because a worker's ring was full (live "
                      "capture never waits for a worker): missed detections.", labels=["worker"],
                      rows=[([str(w.slot)], w.ring_dropped_frames) for w in view.workers])
        yield counter("maltrail_extracted", "Indicators extracted from frames, by kind.", labels=["kind"],
                      rows=_rows(c.get("extracted")))
        yield counter("maltrail_events", "Events detected, by type (IP, IPORT, DNS, URL, UA, HTTP, SNI).",
                      labels=["type"], rows=_rows(c.get("events")))
        yield counter("maltrail_events_condensed", "Repeats folded into per-source records by noise "
                      "control ([sensor] condense_window_s).", c.get("condensed", 0))
        yield counter("maltrail_events_dropped", "Events dropped by the whitelists and ignore rules, by "
                      "reason.", labels=["reason"], rows=_rows(c.get("dropped")))
        yield counter("maltrail_state_saturations", "Times a bounded heuristic or noise-control table was "
                      "at its cap; exact trail matching is unaffected.", labels=["state"],
                      rows=_rows(c.get("saturation")))
        yield gauge("maltrail_workers", "Worker processes configured.", len(view.workers))
        yield gauge("maltrail_workers_alive", "Worker processes running.", sum(w.alive for w in view.workers))
        yield gauge("maltrail_worker_alive", "1 while this worker process runs.", labels=["worker"],
                    rows=[([str(w.slot)], 1 if w.alive else 0) for w in view.workers])
        yield counter("maltrail_worker_restarts", "Deaths of this worker slot's process, each replaced at "
                      "once on the same ring; the sum is the run's worker deaths.", labels=["worker"],
                      rows=[([str(w.slot)], w.restarts) for w in view.workers])
        yield counter("maltrail_frames_lost", "Frames that went with worker deaths (an upper bound: a "
                      "batch a worker died finishing counts both here and as processed).", labels=["worker"],
                      rows=[([str(w.slot)], w.lost_frames) for w in view.workers])
        yield gauge("maltrail_worker_last_heartbeat_seconds", "Unix time of this worker's last report "
                    "(every 0.5 s, traffic or not).", labels=["worker"],
                    rows=[([str(w.slot)], _unix(view, w.heard_monotonic)) for w in view.workers if w.heard_monotonic])
        yield counter("maltrail_worker_packets", "Frames this worker finished.", labels=["worker"],
                      rows=[([str(w.slot)], w.processed_frames) for w in view.workers])
        yield gauge("maltrail_worker_ring_backlog_bytes", "Bytes waiting in this worker's ring.",
                    labels=["worker"], rows=[([str(w.slot)], w.backlog_bytes) for w in view.workers])
        yield gauge("maltrail_worker_trail_generation", "The trail generation this worker runs.",
                    labels=["worker"], rows=[([str(w.slot)], w.generation) for w in view.workers])
        yield gauge("maltrail_capture_alive", "1 while the capture process runs.", 1 if view.capture_alive else 0)
        if view.capture_heard_monotonic:
            yield gauge("maltrail_capture_last_report_seconds", "Unix time of the capture process's last "
                        "report.", _unix(view, view.capture_heard_monotonic))
        yield gauge("maltrail_trails", "Trails in the generation the sensor runs.", view.trail_count)
        yield gauge("maltrail_trail_generation", "The trail generation the sensor runs (SIGHUP loads a new "
                    "one).", view.trail_generation)
        yield gauge("maltrail_trails_built_timestamp_seconds", "Unix time the running trail artifact was "
                    "built.", view.trails_built_unix)
        yield gauge("maltrail_trail_age_seconds", "Seconds since the running trail artifact was built.",
                    max(0.0, now_unix - view.trails_built_unix) if view.trails_built_unix else 0.0)
        if view.updates is not None:
            running, successes, failures, last_success, last_failure = view.updates
            yield gauge("maltrail_trail_update_running", "1 while a trail update's child process runs.",
                        1 if running else 0)
            yield counter("maltrail_trail_updates", "Trail updates that ended with an artifact published or "
                          "kept unchanged.", successes)
            yield counter("maltrail_trail_update_failures", "Trail updates that failed (the sensor's log says "
                          "why); the trails in use stayed.", failures)
            yield gauge("maltrail_trail_update_last_success_timestamp_seconds", "Unix time the last trail update "
                        "succeeded (0: none in this run).", last_success)
            yield gauge("maltrail_trail_update_last_failure_timestamp_seconds", "Unix time the last trail update "
                        "failed (0: none in this run).", last_failure)
        labels = ["forwarder", "kind", "destination"]
        rows = [([name, str(s.get("kind", "")), str(s.get("destination", ""))], s) for name, s in view.forwarders]
        yield counter("maltrail_forwarder_sent", "Events this forwarder delivered.", labels=labels,
                      rows=[(lv, s.get("sent", 0)) for lv, s in rows])
        yield counter("maltrail_forwarder_failed", "Sends that failed (retried on stream destinations).",
                      labels=labels, rows=[(lv, s.get("failed", 0)) for lv, s in rows])
        yield counter("maltrail_forwarder_dropped", "Events this forwarder gave up on (best-effort UDP).",
                      labels=labels, rows=[(lv, s.get("dropped", 0)) for lv, s in rows])
        yield gauge("maltrail_forwarder_lag_seconds", "How far behind the event log this forwarder is.",
                    labels=labels, rows=[(lv, s.get("lag_s", 0.0)) for lv, s in rows])
        yield gauge("maltrail_forwarder_connected", "1 while this forwarder's destination is connected.",
                    labels=labels, rows=[(lv, 1 if s.get("connected") else 0) for lv, s in rows])


def _rows(counts) -> list:
    return [([str(key)], value) for key, value in sorted((counts or {}).items())]


def _unix(view: MetricsView, monotonic: float) -> float:
    return view.taken_unix - (view.taken_monotonic - monotonic)


# -- the address ----------------------------------------------------------------------------------

def resolve_listen_address(text: str) -> tuple[int, tuple]:
    """"IPv4:PORT" or "[IPv6]:PORT" (config's `listen_address` form) as (family, sockaddr); a
    literal only, never a name to look up."""
    host, colon, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host, family = host[1:-1], socket.AF_INET6
    else:
        family = socket.AF_INET
    if not colon or not host or not (port.isascii() and port.isdigit()) or int(port) > 65535:
        raise MetricsError("[sensor] stats_address = %r: not an address to listen on; write \"127.0.0.1:9114\" "
                           "(or \"[::1]:9114\")" % text)
    try:
        infos = socket.getaddrinfo(host, int(port), family, socket.SOCK_STREAM, 0,
                                   socket.AI_NUMERICHOST | socket.AI_NUMERICSERV | socket.AI_PASSIVE)
    except socket.gaierror:
        raise MetricsError("[sensor] stats_address = %r: %s is not an IP%s address"
                           % (text, host, "v6" if family == socket.AF_INET6 else "v4")) from None
    return family, infos[0][4]


def _url(family: int, sockaddr: tuple) -> str:
    host = sockaddr[0]
    return "http://%s:%d" % ("[%s]" % host if family == socket.AF_INET6 else host, sockaddr[1])


# -- the server -----------------------------------------------------------------------------------

_SERVERS: "weakref.WeakSet[MetricsServer]" = weakref.WeakSet()
_FORK_LOCK = threading.Lock()   # held by the accepting thread between accept() and registration


def _before_fork() -> None:
    _FORK_LOCK.acquire()


def _after_fork_in_parent() -> None:
    _FORK_LOCK.release()


def _after_fork_in_child() -> None:
    # Only the forking thread exists in the child; the server's sockets are its copies of the
    # supervisor's: closing them here leaves the supervisor's untouched.
    for server in list(_SERVERS):
        server._close_descriptors()
    _SERVERS.clear()
    _FORK_LOCK.release()


os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent,
                    after_in_child=_after_fork_in_child)


@dataclass(eq=False)
class _Client:
    sock: socket.socket
    deadline: float
    inbox: bytearray = field(default_factory=bytearray)
    outbox: bytes = b""
    sent: int = 0
    state: str = "read"             # read -> write -> drain (the answer is out; wait for the close)


class MetricsServer:
    """Binds at construction (raising MetricsError with the reason and the fix), serves from a
    daemon thread once `start`ed, stops with `stop`."""

    def __init__(self, address: str, version: str = "", stall_s: float = STALL_S):
        from prometheus_client.registry import CollectorRegistry  # loaded only when metrics are on

        family, sockaddr = resolve_listen_address(address)
        self.address = address
        self.stall_s = stall_s
        listener = socket.socket(family, socket.SOCK_STREAM)
        try:
            # A restarted sensor must find its port again at once, whatever connections of the
            # previous one linger in TIME_WAIT.
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)  # exactly what was asked
            listener.bind(sockaddr)
            listener.listen(LISTEN_BACKLOG)
            listener.setblocking(False)
        except OSError as exc:
            listener.close()
            raise MetricsError("[sensor] stats_address = %r: cannot listen there: %s%s"
                               % (address, exc.strerror or exc, _bind_hint(exc, sockaddr[1]))) from None
        self._listener = listener
        self.url = _url(family, listener.getsockname())
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_w.setblocking(False)
        self._selector = selectors.DefaultSelector()
        self._clients: dict[socket.socket, _Client] = {}
        self._judge = ProgressJudge(stall_s)
        self._published: tuple[MetricsView | None, Health] = (None, STARTING)
        self._last_publish = 0.0
        self._rendered: tuple | None = None   # (published pair, stale?, exposition bytes)
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(SensorCollector(self._scrape_view, version))
        self._stopping = False
        self._accept_paused_until = 0.0
        self._thread: threading.Thread | None = None
        _SERVERS.add(self)

    # -- the supervisor's side -------------------------------------------------------------------
    def start(self) -> None:
        self._selector.register(self._listener, selectors.EVENT_READ, "listener")
        self._selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._thread = threading.Thread(target=self._serve, name="mte-metrics", daemon=True)
        self._thread.start()

    def due(self) -> bool:
        """Whether a new view is worth building: PUBLISH_S since the last one."""
        return time.monotonic() - self._last_publish >= PUBLISH_S

    def publish(self, view: MetricsView) -> None:
        """Judges the view and makes it the one served: a single reference assignment, which the
        HTTP thread reads without a lock."""
        self._last_publish = time.monotonic()
        self._published = (view, self._judge.judge(view))

    def stop(self) -> None:
        self._stopping = True
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass
        if self._thread is not None:
            self._thread.join(2.0)
        self._close_descriptors()
        _SERVERS.discard(self)

    def _close_descriptors(self) -> None:
        for client in list(self._clients.values()):
            client.sock.close()
        self._clients.clear()
        for sock in (self._listener, self._wake_r, self._wake_w):
            sock.close()
        try:
            self._selector.close()
        except (OSError, RuntimeError):
            pass

    # -- what is served ----------------------------------------------------------------------------
    def health(self) -> Health:
        """The published judgement, and whether the supervisor itself still publishes."""
        view, health = self._published
        if view is None:
            return health
        silent = time.monotonic() - view.taken_monotonic
        if silent > self.stall_s:
            return Health(False, health.reasons + ("the supervisor has not refreshed its view for %.0f s" % silent,))
        return health

    def _scrape_view(self):
        return self._published[0], self.health(), time.time()

    def exposition(self) -> bytes:
        """The /metrics body, rendered once per published view (and again if it goes stale), so
        a client asking in a loop costs no rendering."""
        from prometheus_client.exposition import generate_latest

        published = self._published
        stale = published[0] is not None and time.monotonic() - published[0].taken_monotonic > self.stall_s
        cached = self._rendered
        if cached is not None and cached[0] is published and cached[1] == stale:
            return cached[2]
        body = generate_latest(self._registry)
        self._rendered = (published, stale, body)
        return body

    def answer(self, head: bytes) -> tuple[int, str, bytes, tuple]:
        """(status, content type, body, extra headers) for a request head (request line and
        headers, without the blank line)."""
        line = head.split(b"\n", 1)[0].rstrip(b"\r").decode("latin-1")
        parts = line.split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1.") or not parts[1].startswith("/"):
            return 400, CONTENT_TYPE_TEXT, b"bad request\n", ()
        method, path = parts[0], parts[1].split("?", 1)[0]
        if path not in PATHS:
            return 404, CONTENT_TYPE_TEXT, b"not found: this endpoint serves /metrics and /healthz\n", ()
        if method != "GET":
            return 405, CONTENT_TYPE_TEXT, b"method not allowed: GET only\n", (("Allow", "GET"),)
        if path == "/metrics":
            return 200, CONTENT_TYPE_METRICS, self.exposition(), ()
        health = self.health()
        if health.ok:
            return 200, CONTENT_TYPE_TEXT, b"ok\n", ()
        return 503, CONTENT_TYPE_TEXT, ("\n".join(health.reasons) + "\n").encode("utf-8"), ()

    # -- the HTTP thread ---------------------------------------------------------------------------
    def _serve(self) -> None:
        selector = self._selector
        while not self._stopping:
            now = time.monotonic()
            deadlines = [c.deadline for c in self._clients.values()]
            if self._accept_paused_until:
                deadlines.append(self._accept_paused_until)
            timeout = max(0.0, min([now + 1.0] + deadlines) - now)
            try:
                ready = selector.select(timeout)
            except (OSError, ValueError):  # closed under us by stop()
                return
            for key, _ in ready:
                if key.data == "wake":
                    return
                try:
                    if key.data == "listener":
                        self._accept()
                    else:
                        self._step(key.data)
                except Exception:  # noqa: BLE001 (one bad exchange must never end the endpoint)
                    if key.data != "listener":
                        self._drop(key.data)
            now = time.monotonic()
            for client in [c for c in self._clients.values() if c.deadline <= now]:
                self._drop(client)
            if self._accept_paused_until and now >= self._accept_paused_until:
                self._accept_paused_until = 0.0
                selector.register(self._listener, selectors.EVENT_READ, "listener")

    def _accept(self) -> None:
        while True:
            with _FORK_LOCK:
                try:
                    sock, _ = self._listener.accept()
                except (BlockingIOError, InterruptedError):
                    return
                except OSError:
                    # Out of descriptors (or the like): the listener stays readable, so stop
                    # watching it for a moment instead of spinning.
                    self._selector.unregister(self._listener)
                    self._accept_paused_until = time.monotonic() + ACCEPT_PAUSE_S
                    return
                if len(self._clients) >= MAX_CLIENTS:
                    sock.close()
                    continue
                sock.setblocking(False)
                client = _Client(sock, time.monotonic() + CLIENT_DEADLINE_S)
                self._clients[sock] = client
                self._selector.register(sock, selectors.EVENT_READ, client)

    def _step(self, client: _Client) -> None:
        if client.state == "write":
            self._send(client)
            return
        try:
            data = client.sock.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._drop(client)
            return
        if client.state == "drain":
            client.sent += len(data)  # what a client sends after its answer is read and discarded
            if client.sent > MAX_REQUEST_BYTES:
                self._drop(client)
            return
        client.inbox += data
        end = client.inbox.find(b"\r\n\r\n")
        if end < 0:
            end = client.inbox.find(b"\n\n")
        if end < 0:
            if len(client.inbox) > MAX_REQUEST_BYTES:
                self._respond(client, 431, CONTENT_TYPE_TEXT, b"request header fields too large\n", ())
            return
        if end > MAX_REQUEST_BYTES:
            self._respond(client, 431, CONTENT_TYPE_TEXT, b"request header fields too large\n", ())
            return
        try:
            status, ctype, body, extra = self.answer(bytes(client.inbox[:end]))
        except Exception:  # noqa: BLE001 (a rendering bug answers 500, the endpoint stays up)
            status, ctype, body, extra = 500, CONTENT_TYPE_TEXT, b"internal error\n", ()
        self._respond(client, status, ctype, body, extra)

    def _respond(self, client: _Client, status: int, ctype: str, body: bytes, extra) -> None:
        head = ["HTTP/1.1 %d %s" % (status, _REASONS.get(status, "")), "Content-Type: " + ctype,
                "Content-Length: %d" % len(body), "Cache-Control: no-store", "Connection: close"]
        head += ["%s: %s" % kv for kv in extra]
        client.outbox = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body
        client.inbox = bytearray()
        client.state, client.sent = "write", 0
        self._selector.modify(client.sock, selectors.EVENT_WRITE, client)
        self._send(client)

    def _send(self, client: _Client) -> None:
        try:
            client.sent += client.sock.send(memoryview(client.outbox)[client.sent:])
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(client)
            return
        if client.sent < len(client.outbox):
            return
        # All of it is out. Closing now, with bytes of the client's still unread, would make the
        # kernel answer with a reset that can destroy the answer in flight: say we are done and
        # let the client close first (bounded by the same deadline).
        try:
            client.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self._drop(client)
            return
        client.state, client.sent, client.outbox = "drain", 0, b""
        self._selector.modify(client.sock, selectors.EVENT_READ, client)

    def _drop(self, client: _Client) -> None:
        with _FORK_LOCK:
            if self._clients.pop(client.sock, None) is None:
                return
            try:
                self._selector.unregister(client.sock)
            except (KeyError, ValueError, OSError):
                pass
            client.sock.close()


_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            431: "Request Header Fields Too Large", 500: "Internal Server Error", 503: "Service Unavailable"}


def _bind_hint(exc: OSError, port: int) -> str:
    if exc.errno == errno.EACCES and 0 < port < 1024:
        return ("; ports below 1024 need CAP_NET_BIND_SERVICE, which the sensor is not given "
                "(the installed service has CAP_NET_RAW alone): choose a port from 1024 up")
    if exc.errno == errno.EADDRINUSE:
        return "; another process (another sensor?) listens there: choose another port"
    if exc.errno == errno.EADDRNOTAVAIL:
        return "; no interface of this host has that address"
    return ""
