"""The server process: one asyncio loop serving HTTP (aiohttp) and receiving UDP, a parse thread
and a store thread that makes the events durable in the daily log; the index is filled from the
log by the indexer process (server/indexer.py), forked here after the privilege drop.

Owns start-up (the listening rules, opening the store, which repairs the index), the UDP receive
loop, batching to the store, the HTTP endpoints served so far (`/ping`, `/api/v1/health`) and the
orderly stop on SIGTERM/SIGINT (stop intake, store what was received, close, exit 0). Must not
parse datagrams (server/intake.py) nor know how events are stored (server/store/).

The receive loop is an add_reader callback on a non-blocking socket that drains up to
_DRAIN_DATAGRAMS datagrams per wake-up (server/recv.py: up to 256 per recvmmsg call, keeping the
GIL) and only appends bytes to a list. Every _HANDOFF_S (or _BATCH_DATAGRAMS datagrams) the list goes to the parse
thread, which turns it into events for the store thread, which ingests what has accumulated as
one batch (appended and fsync'd: stored); while the store waits for fsync (which releases the
GIL), the loop receives and the parse thread parses. A backlog beyond [server] udp_backlog_datagrams is
dropped and counted (dropped.store_backlog), so memory stays bounded when the disk cannot keep up.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import queue
import signal
import socket
import sys
import threading
import time
from typing import NamedTuple

from events.record import SeverityRule
from server.intake import IntakeCounters, parse_datagram
from server.listen import SlowClients
from server.recv import Receiver
from server.store import EventStore, StoreError

_DRAIN_DATAGRAMS = 4096
_BATCH_DATAGRAMS = 20_000
_HANDOFF_S = 0.05
_SWITCH_INTERVAL_S = 0.0005
_STORE_INTERVAL_S = 0.5
_STORE_BATCH_EVENTS = 100_000


class ServerError(Exception):
    """The server cannot start as configured; the message names the key and the fix."""


def log(kind: str, text: str) -> None:
    sys.stderr.write("[%s] %s %s\n" % (kind, time.strftime("%Y-%m-%d %H:%M:%S"), text))
    sys.stderr.flush()


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_listening(cfg) -> None:
    """With no users configured, nobody can log in, so the HTTP side must not be reachable from
    other machines: refuse anything but loopback. The UDP intake is not held to this: it is how
    sensors on other machines deliver (Maltrail's UDP_ADDRESS is 0.0.0.0 by default), it returns
    nothing to whoever sends, and what it stores is only ever shown to a logged-in user."""
    s = cfg.server
    users = getattr(s, "users", ())
    if not users and not is_loopback(s.http_address):
        raise ServerError(
            '[server] http_address = "%s" but no users are configured ([server] users): the server '
            'would answer anyone who can reach it. Set http_address = "127.0.0.1" (this host only) '
            'or add a user first' % s.http_address)


def _udp_socket(address: str, port: int, buffer_bytes: int) -> tuple[socket.socket, int]:
    host = address.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        # SO_RCVBUFFORCE passes net.core.rmem_max when we may (CAP_NET_ADMIN); else the kernel
        # caps SO_RCVBUF there and the figure in /api/v1/health says what we got.
        try:
            sock.setsockopt(socket.SOL_SOCKET, getattr(socket, "SO_RCVBUFFORCE", 33), buffer_bytes)
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, buffer_bytes)
        sock.bind((host, port))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock, sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)


class Listeners(NamedTuple):
    """What run_server opened while it could (before the privilege drop, server/privileges.py):
    the HTTP sockets, the UDP socket and its buffer size, the TLS context, the login-record
    forwarder (server/auth/audit.py)."""
    http: list
    udp: socket.socket | None
    udp_buffer_bytes: int
    tls: object
    auth_forwarder: object


class Server:
    def __init__(self, cfg, store: EventStore, listeners: Listeners | None = None):
        self.cfg = cfg
        self.listeners = listeners
        self.store = store
        self.rule = SeverityRule(cfg.all.severity_regex)
        self.udp_secret = cfg.server.udp_secret.encode()
        self.counters = IntakeCounters()
        self.started = time.monotonic()
        self.started_unix = time.time()
        self._pending: list[bytes] = []
        self._queue: queue.SimpleQueue = queue.SimpleQueue()          # datagrams -> parse thread
        self._events_queue: queue.SimpleQueue = queue.SimpleQueue()   # events -> store thread
        # Datagrams handed on by the loop / finished by the store thread: each written by one
        # thread only, so the backlog (their difference) needs no lock.
        self._handed = 0
        self._done = 0
        self._backlog_max = cfg.server.udp_backlog_datagrams
        self._sock: socket.socket | None = None
        self._receiver: Receiver | None = None
        self.udp_buffer_bytes = 0
        self._threads = (threading.Thread(target=self._parse_loop, name="parse", daemon=True),
                         threading.Thread(target=self._store_loop, name="store", daemon=True))
        self._store_error = ""
        forwarder = listeners.auth_forwarder if listeners is not None else None
        self.auth_web = _auth_web(cfg, on_event=forwarder.submit if forwarder is not None else None)
        self.slow_clients = SlowClients(cfg.server.header_timeout_s, cfg.server.body_timeout_s)
        self.api = self.api_stats = None        # server/api/ sets them when it mounts its routes
        self.registry = None            # server/sensors.py Registry, once set up
        self.https_intake = None        # server/sensors.py HttpsIntake, once set up
        self.live = None                # server/live.py LiveHub, once set up

    # -- the parse and store threads -------------------------------------------------------
    # Two threads, so that parsing (Python, holding the GIL) overlaps the store's fsync and SQLite
    # work (which release it): on two cores the intake runs at the slower of the two, not their sum.
    @staticmethod
    def _take(q: queue.SimpleQueue, most: int) -> tuple[list, bool]:
        """One item of q (waiting for it) and whatever else is there now, up to `most` entries;
        and whether the end marker (None) was among them."""
        item = q.get()
        if item is None:
            return [], True
        batch = list(item)
        while len(batch) < most:
            try:
                more = q.get_nowait()
            except queue.Empty:
                break
            if more is None:
                return batch, True
            batch.extend(more)
        return batch, False

    def _parse_loop(self) -> None:
        c = self.counters
        while True:
            datagrams, stop = self._take(self._queue, _BATCH_DATAGRAMS)
            if datagrams:
                t0 = time.thread_time()
                events = []
                parsed = 0
                for data in datagrams:
                    found, why = parse_datagram(data, self.rule, self.udp_secret)
                    if why is not None:
                        c.refused[why] += 1
                    else:
                        parsed += 1
                        events.extend(found)
                c.parsed += parsed
                c.events += len(events)
                # The store's own CPU work that needs no lock (checks, index rows, roll-ups) is
                # done here, beside the store thread's fsync and SQLite work.
                try:
                    prepared = self.store.prepare(events)
                except StoreError as exc:
                    c.dropped["store_failed"] += len(events)
                    log("!", "events not stored: %s" % exc)
                    events, prepared = [], self.store.prepare([])
                c.parse_cpu_s += time.thread_time() - t0
                self._events_queue.put([(events, prepared, len(datagrams))])
            if stop:
                self._events_queue.put(None)
                return

    def _store_loop(self) -> None:
        c = self.counters
        last = time.monotonic()
        while True:
            items, stop = self._take(self._events_queue, 64)
            # Gather for up to _STORE_INTERVAL_S since the last batch: a commit's cost is mostly
            # per page touched, so fewer, larger batches store more events per second (measured:
            # about a quarter less time per event at 50,000 than at 6,500 per batch).
            count = sum(len(events) for events, _prepared, _datagrams in items)
            while not stop and count < _STORE_BATCH_EVENTS:
                wait_s = last + _STORE_INTERVAL_S - time.monotonic()
                if wait_s <= 0:
                    break
                try:
                    more = self._events_queue.get(timeout=wait_s)
                except queue.Empty:
                    break
                if more is None:
                    stop = True
                else:
                    items.extend(more)
                    count += sum(len(events) for events, _prepared, _datagrams in more)
            last = time.monotonic()
            if items:
                t0, w0 = time.thread_time(), time.monotonic()
                try:
                    c.stored += self.store.ingest_prepared([prepared for _events, prepared, _d in items])
                    self._store_error = ""
                    stored = [e for events, _p, _d in items for e in events]
                    if self.registry is not None:      # Maltrail's sensors, by name (server/sensors.py)
                        self.registry.heard_events(stored)
                    if self.live is not None:          # durable now: to the live streams (server/live.py)
                        self.live.publish(stored)
                except StoreError as exc:
                    c.dropped["store_failed"] += count
                    if str(exc) != self._store_error:
                        log("!", "events not stored: %s" % exc)
                    self._store_error = str(exc)
                finally:
                    c.store_cpu_s += time.thread_time() - t0
                    c.store_wall_s += time.monotonic() - w0
                    self._done += sum(d for _events, _prepared, d in items)
                    c.batches += 1
            if stop:
                return

    # -- the loop -------------------------------------------------------------------------
    def _on_readable(self) -> None:
        pending = self._pending
        n = 0
        try:
            while n < _DRAIN_DATAGRAMS:
                got = self._receiver.receive()
                if not got:
                    break
                pending.extend(got)
                n += len(got)
        except OSError as exc:      # ICMP errors surface here on some stacks; never stop the loop
            self.counters.socket_errors += 1
            log("!", "UDP receive: %s" % exc)
        self.counters.datagrams += n
        if self._receiver.truncated:
            self.counters.datagrams += self._receiver.truncated
            self.counters.too_long += self._receiver.truncated
            self._receiver.truncated = 0
        if len(pending) >= _BATCH_DATAGRAMS:
            self._hand_off()

    def _hand_off(self) -> None:
        if not self._pending:
            return
        batch, self._pending = self._pending, []
        if self._handed - self._done + len(batch) > self._backlog_max:
            self.counters.dropped["store_backlog"] += len(batch)
            return
        self._handed += len(batch)
        self._queue.put(batch)

    async def _ticker(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self._hand_off()
            try:
                await asyncio.wait_for(stop.wait(), _HANDOFF_S)
            except asyncio.TimeoutError:
                pass

    def health(self) -> dict:
        st = self.store.status()
        return {
            "status": "ok" if st.ready and not self._store_error else "degraded",
            "uptime_s": round(time.monotonic() - self.started, 3),
            "started_unix": self.started_unix,
            "intake": {"udp": dict(self.counters.as_dict(), backlog=self._handed - self._done,
                                   receive_buffer_bytes=self.udp_buffer_bytes),
                       "https": self.https_intake.counters.as_dict() if self.https_intake else None},
            "store": {"backend": st.backend, "ready": st.ready, "days": st.days,
                      "events_indexed": st.events_indexed, "repaired_events": st.repaired_events,
                      "last_commit_unix": st.last_commit_unix, "error": self._store_error, **st.details},
            "api": self.api.health() if self.api is not None else {},
            "live": self.live.health() if self.live is not None else {},
            "http": {"slow_clients": dict(self.slow_clients.refusals)},
            "auth_records": (self.listeners.auth_forwarder.stats()
                             if self.listeners is not None and self.listeners.auth_forwarder is not None else {}),
        }

    async def run(self) -> None:
        from aiohttp import web
        s = self.cfg.server
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)

        async def ping(_request):
            return web.Response(text="pong")

        async def health(_request):
            return web.Response(text=json.dumps(self.health()), content_type="application/json")

        app = web.Application(client_max_size=s.max_request_bytes, middlewares=[self.slow_clients.body_deadline])
        app.router.add_get("/ping", ping)
        app.router.add_get("/api/v1/health", health)
        self.auth_web.setup(app)
        # Each part of the HTTP side adds its routes here (server/api/, server/sensors/, ...):
        # they read the logged-in user from request[server.auth.web.SESSION_KEY].
        from server import live, metrics, sensors, triage, ui
        from server.api import compat
        from server.api import setup as setup_api
        triage.setup(app, self)         # shared triage, suppressions, last look (server/triage.py)
        setup_api(app, self)            # events and aggregates (server/api/v1.py)
        compat.setup(app, self)         # check, trails, Maltrail's endpoints
        sensors.setup(app, self)        # our sensors' HTTPS intake, the sensor registry
        live.setup(app, self)           # GET /api/v1/live, fed by both intakes
        metrics.setup(app, self)        # /metrics
        ui.setup(app, self)             # the web UI: / and /static/ (server/ui.py)
        runner = web.AppRunner(app, access_log=None, handle_signals=False, **self.slow_clients.runner_kwargs())
        await runner.setup()
        for thread in self._threads:
            thread.start()
        try:
            listeners = self.listeners
            if listeners is None:       # a Server made without run_server (no privilege drop)
                listeners = bind_listeners(self.cfg, None)
            for sock in listeners.http:
                await web.SockSite(runner, sock, ssl_context=listeners.tls).start()
            log("i", "HTTP%s on %s port %d" % ("S" if listeners.tls else "", s.http_address, s.http_port))
            if listeners.udp is not None:
                self._sock, self.udp_buffer_bytes = listeners.udp, listeners.udp_buffer_bytes
                self._receiver = Receiver(self._sock)
                loop.add_reader(self._sock.fileno(), self._on_readable)
                log("i", "UDP intake on %s port %d (receive buffer %d bytes, %s)"
                    % (s.udp_address, s.udp_port, self.udp_buffer_bytes, self._receiver.mode))
            log("i", "server ready; store in %s" % s.log_dir)
            await self._ticker(stop)
            log("i", "stopping: intake closed, storing what was received")
        finally:
            if self._sock is not None:
                loop.remove_reader(self._sock.fileno())
                # What the kernel already accepted is ours to keep: one last drain.
                self._on_readable()
                self._sock.close()
            self._hand_off()
            self._queue.put(None)
            for thread in self._threads:
                await loop.run_in_executor(None, thread.join)
            await runner.cleanup()


def _auth_web(cfg, on_event=None):
    """Users, sessions and the HTTP guard for every route under /api/v1 (server/auth/); every
    login attempt goes to on_event (the login-record forwarder)."""
    from server.auth.login import Authenticator
    from server.auth.state import StateDB, state_db_path
    from server.auth.users import users_from_config
    from server.auth.web import AuthWeb
    s = cfg.server
    if not s.state_db:      # its default lives in the store's directory, which a ClickHouse store does not make
        os.makedirs(s.log_dir, mode=0o700, exist_ok=True)
    authenticator = Authenticator(
        users_from_config(cfg, warn=lambda text: log("!", text)), StateDB(state_db_path(cfg)),
        idle_timeout_s=s.session_idle_timeout_s, absolute_timeout_s=s.session_lifetime_s,
        max_failures=s.login_max_failures, lockout_s=s.login_lockout_s,
        warn=lambda text: log("!", text), on_event=on_event)
    return AuthWeb(authenticator, tls=s.use_ssl, max_body_bytes=s.max_request_bytes,
                   public={"/api/v1/health"})


def bind_listeners(cfg, auth_forwarder) -> Listeners:
    """The HTTP and UDP sockets bound and the TLS key read: what needs root, done before the drop.
    OSError when a socket cannot be bound, TlsError for the PEM."""
    from server.listen import http_sockets
    from server.tls import server_context
    s = cfg.server
    tls = server_context(cfg)
    socks = http_sockets(s.http_address, s.http_port)
    udp, udp_buffer_bytes = None, 0
    try:
        if s.udp_port:
            udp, udp_buffer_bytes = _udp_socket(s.udp_address, s.udp_port, s.udp_buffer_bytes)
    except BaseException:
        for sock in socks:
            sock.close()
        raise
    return Listeners(socks, udp, udp_buffer_bytes, tls, auth_forwarder)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("maltrail-engine")
    except PackageNotFoundError:
        return ""


def run_server(cfg) -> int:
    """`maltrail-engine server`: returns the exit status.

    Order (server/privileges.py): the listening rule; as root, bind the sockets, read the TLS
    key, make the store directory the account's; drop to [server] user; only then open the
    store and the state database, as the account that owns them."""
    from server import privileges
    from server.auth.audit import forwarder_from_config
    from server.indexer import IndexLink, start_keeper
    from server.store import open_store
    from server.tls import TlsError
    s = cfg.server
    listeners = None
    link = IndexLink()
    try:
        check_listening(cfg)
        account = privileges.resolve_account(s.user, notice=lambda text: log("i", text))
        forwarder = forwarder_from_config(cfg, _version(), warn=lambda text: log("!", text))
        try:
            listeners = bind_listeners(cfg, forwarder)
        except OSError as exc:
            raise ServerError("cannot listen on HTTP %s port %d / UDP %s port %d: %s"
                              % (s.http_address, s.http_port, s.udp_address, s.udp_port, exc.strerror or exc)) from None
        if account is not None:
            privileges.give_directory(s.log_dir, account, notice=lambda text: log("i", text))
            if s.state_db:
                privileges.give_state_db(s.state_db, account)
        _import_before_drop()
        privileges.drop(account)
        if account is not None:
            log("i", "running as %s (uid %d), no capabilities" % (account.name, account.uid))
        # The indexer's keeper: forked now, as the account and before any thread or the store
        # exist; it starts the indexer once the store's start-up repair is done (server/indexer.py).
        start_keeper(cfg, link, close_in_child=listeners.http + ([listeners.udp] if listeners.udp else []))
        store = open_store(cfg, warn=lambda text: log("!", text))
        store.index_elsewhere(link)
        link.go()
    except (ServerError, StoreError, TlsError, privileges.PrivilegeError, ValueError) as exc:
        log("!", str(exc))
        _close_listeners(listeners)
        link.stop()
        return 1
    from server.auth.state import StateError
    from server.auth.users import UserConfigError
    try:
        server = Server(cfg, store, listeners)
    except (UserConfigError, StateError) as exc:
        link.stop()
        store.close()
        _close_listeners(listeners)
        log("!", str(exc))
        return 1
    forwarder.start()
    try:
        # The store thread gives the GIL up at every SQLite step and wants it straight back; with
        # the default 5 ms switch interval it then waits behind the parse thread (a convoy).
        sys.setswitchinterval(_SWITCH_INTERVAL_S)
        asyncio.run(server.run())
        c = server.counters
        log("i", "stopped: %d datagrams received, %d events stored, %d refused, %d dropped"
            % (c.datagrams, c.stored, sum(c.refused_by_reason().values()), sum(c.dropped.values())))
    except OSError as exc:
        log("!", "cannot serve: %s" % exc)
        return 1
    finally:
        forwarder.stop()
        link.stop()     # the indexer indexes what was logged, then stops
        store.close()
    return 0


def _import_before_drop() -> None:
    """Every module of the server package (and so everything they import at their top), and the
    standard modules the running server imports late, imported while it may still read the
    interpreter's library: an interpreter under /root (as pyenv installs one) is root's alone, and
    after the drop a late import fails. A handler importing inside a function must be listed here."""
    import importlib
    import pkgutil

    import server
    for info in pkgutil.walk_packages(server.__path__, "server."):
        importlib.import_module(info.name)
    # _strptime: datetime.strptime imports it at its first call; the encodings: text decoded from
    # the network or files in them; mimetypes: aiohttp's static files.
    for name in ("aiohttp.web", "sqlite3", "argon2", "encodings.idna", "encodings.latin_1", "encodings.ascii",
                 "encodings.utf_16", "json", "http.cookies", "concurrent.futures.thread", "_strptime", "mimetypes",
                 "email.utils", "unicodedata", "csv"):
        importlib.import_module(name)


def _close_listeners(listeners: Listeners | None) -> None:
    if listeners is not None:
        for sock in listeners.http + ([listeners.udp] if listeners.udp is not None else []):
            sock.close()


def run_reindex(cfg) -> int:
    """`maltrail-engine server reindex`: rebuild the index of [server] log_dir from its log, as
    the server's own account (started as root: the same drop as the server's), so the index stays
    the account's and the directory, which is the account's, passes the store's check."""
    from server import privileges
    from server.store.sqlite import reindex
    if cfg.server.store == "clickhouse":
        # Its rows are matched to the log by their log positions and the roll-ups are written by
        # ClickHouse's own views, so there is no index here to rebuild: the store inserts, at every
        # start, whatever the log holds beyond what ClickHouse has.
        log("!", "[server] store = \"clickhouse\": reindex rebuilds the SQLite index only. A ClickHouse "
            "store is repaired from the daily logs at every start; to rebuild it from them, stop every server "
            "sharing it, drop its database (%s) and start the servers again" % cfg.server.clickhouse_database)
        return 1
    try:
        account = privileges.resolve_account(cfg.server.user, notice=lambda text: log("i", text))
        if account is not None:
            privileges.give_directory(cfg.server.log_dir, account)
        privileges.drop(account)
        n = reindex(cfg.server.log_dir, warn=lambda text: log("!", text))
    except (StoreError, privileges.PrivilegeError) as exc:
        log("!", str(exc))
        return 1
    log("i", "reindexed %s: %d events" % (cfg.server.log_dir, n))
    return 0


__all__ = ["Listeners", "Server", "ServerError", "bind_listeners", "check_listening", "run_server", "run_reindex"]
