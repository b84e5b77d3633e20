"""Live events: GET /api/v1/live, a server-sent event stream of the events as they are stored.

Owns `LiveHub` (the subscribers and what each is owed) and the route. The intakes hand every
batch they have made durable to `LiveHub.publish` (from their own threads: the UDP store thread in
server/process.py, the HTTPS intake thread in server/sensors.py); the hub takes it over to the
event loop with call_soon_threadsafe and returns at once, so an intake never waits for a browser.
On the loop, each subscriber gets the events its user may see (the netfilter, as the API applies
it: an event is visible when one of its addresses is in scope; custom trails masked as /events
masks them) that match its `q` filter (server/filters.py, the same grammar as the API's `q`).
Must not store or query events, nor decide who may log in (the session middleware has, before
the handler runs).

The stream (docs/API.md, "Live events"):
    event: events            at most every FLUSH_S, when there is something to send:
    data: {"events": [ROW, ...]}   rows exactly as /api/v1/events writes them, oldest first
    : keepalive              a comment every KEEPALIVE_S when nothing else was sent
    event: overflow          the last thing sent to a subscriber that fell too far behind:
    data: {"dropped": N}     more than MAX_PENDING_EVENTS waiting for it (a reader that does not
                             read, or more events than a browser can show); the stream then ends
                             and the client reconnects when it is ready
The first batch after a quiet spell goes out at once; later ones are gathered for FLUSH_S after
the previous send. A stream also ends when its session does (checked at every keepalive) and when
the server stops.

Bounds: at most [server] live_max_subscribers streams at once (one more is refused with 503);
each holds at most MAX_PENDING_EVENTS unsent events plus what the kernel and aiohttp buffer for
its socket; a write that does not complete in WRITE_TIMEOUT_S ends the stream. What was dropped
is counted (`health()`, in /api/v1/health as "live").
"""

from __future__ import annotations

import asyncio
import json
import time

from aiohttp import web

from server import filters
from server.auth.scopes import mask_custom
from server.auth.web import COOKIE_NAME, user_or_refusal

LIVE_PATH = "/api/v1/live"
FLUSH_S = 0.5
KEEPALIVE_S = 15.0
MAX_PENDING_EVENTS = 10_000
WRITE_TIMEOUT_S = 30.0
MAX_Q_CHARS = 4096

__all__ = ["LiveHub", "Subscriber", "LIVE_PATH", "setup"]


class Subscriber:
    """One open stream: the user's scope and filter, and the rows not yet written."""

    __slots__ = ("user", "predicate", "pending", "wake", "overflowed", "dropped", "closed")

    def __init__(self, user, predicate=None):
        self.user = user
        self.predicate = predicate       # Event -> bool, or None for every event
        self.pending: list[dict] = []
        self.wake = asyncio.Event()
        self.overflowed = False
        self.dropped = 0                 # events it was owed and will never get (overflow)
        self.closed = False

    def offer(self, events, row_of, mask_custom_trails: bool = True) -> int:
        """Take what this user may see of `events`; returns how many were taken."""
        scope, predicate = self.user.scope, self.predicate
        visible = [e for e in events
                   if (scope.everything or scope.contains_any((e.src_ip, e.dst_ip)))
                   and (predicate is None or predicate(e))]
        if not visible:
            return 0
        if len(self.pending) + len(visible) > MAX_PENDING_EVENTS:
            # Behind by more than it may hold: the rows go, the count stays, the stream ends (the
            # check comes before any row is made, so a flood costs a count, not a JSON row each).
            self.overflowed = True
            self.dropped += len(self.pending) + len(visible)
            self.pending = []
            self.wake.set()
            return 0
        mask = mask_custom_trails and self.user.restricted_view
        self.pending.extend(mask_custom(row_of(e)) if mask else row_of(e) for e in visible)
        self.wake.set()
        return len(visible)


class LiveHub:
    """The subscribers of GET /api/v1/live on one event loop (module doc)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, max_subscribers: int = 64, enable_mask_custom: bool = True):
        self.loop = loop
        self.enable_mask_custom = enable_mask_custom
        self.max_subscribers = max_subscribers
        self.subscribers: set[Subscriber] = set()
        self.closing = False
        # Counters (written on the loop only), for /api/v1/health.
        self.streams = 0             # streams opened
        self.refused_full = 0        # refused: max_subscribers open already
        self.overflows = 0           # streams ended because they fell behind
        self.dropped_events = 0      # events owed to those streams and never sent
        self.write_timeouts = 0      # streams ended because a write did not complete
        self.published = 0           # events handed to the hub while anyone listened
        self.sent = 0                # rows written to streams

    # -- from the intakes' threads ------------------------------------------------------------
    def publish(self, events) -> None:
        """Events just made durable (any thread). Returns at once: the loop does the rest."""
        if not self.subscribers or not events or self.closing:
            return
        try:
            self.loop.call_soon_threadsafe(self._deliver, list(events))
        except RuntimeError:        # the loop has closed: the server is stopping
            pass

    # -- on the loop --------------------------------------------------------------------------
    def _deliver(self, events) -> None:
        from server.api.v1 import event_json
        self.published += len(events)
        rows: dict[int, dict] = {}

        def row_of(event):      # one JSON row per event, however many subscribers take it
            row = rows.get(id(event))
            if row is None:
                row = rows[id(event)] = event_json(event)
            return row

        for sub in list(self.subscribers):
            sub.offer(events, row_of, self.enable_mask_custom)
            if sub.overflowed:      # it gets nothing more; its handler says overflow and ends
                self.subscribers.discard(sub)
                self.overflows += 1
                self.dropped_events += sub.dropped

    def subscribe(self, user, predicate=None) -> Subscriber | None:
        if self.closing or len(self.subscribers) >= self.max_subscribers:
            self.refused_full += 1
            return None
        sub = Subscriber(user, predicate)
        self.subscribers.add(sub)
        self.streams += 1
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        sub.closed = True
        self.subscribers.discard(sub)

    def close(self) -> None:
        """The server is stopping: every stream ends now."""
        self.closing = True
        for sub in list(self.subscribers):
            sub.closed = True
            sub.wake.set()

    def health(self) -> dict:
        return {"subscribers": len(self.subscribers), "max_subscribers": self.max_subscribers,
                "streams": self.streams, "refused_full": self.refused_full, "overflows": self.overflows,
                "dropped_events": self.dropped_events,
                "write_timeouts": self.write_timeouts, "published": self.published, "sent": self.sent}


# -- the route --------------------------------------------------------------------------------

def _predicate(q: str | None):
    """(predicate or None, error answer or None) for the `q` parameter (server/filters.py)."""
    if q is None or not q.strip():
        return None, None
    if len(q) > MAX_Q_CHARS:
        return None, {"error": "q: at most %d characters" % MAX_Q_CHARS, "parameter": "q", "token": None}
    try:
        terms = filters.parse(q)
    except filters.FilterError as exc:
        return None, {"error": str(exc), "parameter": "q", "token": exc.token}
    return (lambda event: filters.matches(terms, event)), None


def _frame(kind: str, body: dict) -> bytes:
    # json.dumps escapes nothing that could end an SSE field (no raw newline survives it).
    return ("event: %s\ndata: %s\n\n" % (kind, json.dumps(body, separators=(",", ":")))).encode()


class LiveRoute:
    def __init__(self, hub: LiveHub, auth_web):
        self.hub = hub
        self.auth_web = auth_web

    async def handle(self, request: web.Request) -> web.StreamResponse:
        hub = self.hub
        user, refusal = user_or_refusal(request)
        if refusal is not None:
            return web.json_response(refusal[2], status=refusal[1])
        from server.api.v1 import ParamError, single_params
        try:
            params = single_params(request, ("q",))
        except ParamError as exc:
            return web.json_response({"error": str(exc), "parameter": exc.parameter}, status=400)
        predicate, problem = _predicate(params.get("q"))
        if problem is not None:
            return web.json_response(problem, status=400)
        sub = hub.subscribe(user, predicate)
        if sub is None:
            return web.json_response({"error": "too many live streams are open (%d, [server] live_max_subscribers); "
                                      "try again later" % hub.max_subscribers}, status=503,
                                     headers={"Retry-After": "15"})
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store",
                                               "X-Accel-Buffering": "no"})
        try:
            await response.prepare(request)
            await self._stream(request, response, sub)
        except ConnectionError:         # the client went away
            pass
        except asyncio.TimeoutError:
            hub.write_timeouts += 1
            if request.transport is not None:
                request.transport.abort()
        finally:
            hub.unsubscribe(sub)
        return response

    async def _write(self, response, data: bytes) -> None:
        # A reader that stopped reading fills the socket's buffers and this write then waits: its
        # own stream waits, nothing else does; past WRITE_TIMEOUT_S it is given up on.
        await asyncio.wait_for(response.write(data), WRITE_TIMEOUT_S)

    async def _stream(self, request, response, sub: Subscriber) -> None:
        hub = self.hub
        cookie = request.cookies.get(COOKIE_NAME)
        await self._write(response, b": live\n\n")      # headers and a first byte: the client knows it is on
        last_sent = 0.0
        last_written = time.monotonic()
        while not sub.closed:
            now = time.monotonic()
            if sub.pending and now - last_sent < FLUSH_S:
                await asyncio.sleep(last_sent + FLUSH_S - now)      # gather: at most one send per FLUSH_S
                continue
            if sub.pending:
                rows, sub.pending = sub.pending, []
                sub.wake.clear()
                await self._write(response, _frame("events", {"events": rows}))
                hub.sent += len(rows)
                last_sent = last_written = time.monotonic()
                continue
            if sub.overflowed:
                await self._write(response, _frame("overflow", {"dropped": sub.dropped}))
                return
            try:
                await asyncio.wait_for(sub.wake.wait(), max(0.0, last_written + KEEPALIVE_S - now))
                sub.wake.clear()
            except asyncio.TimeoutError:
                # Quiet: a comment keeps proxies from closing the connection, and the session is
                # checked again (a logout or an expiry ends the stream).
                if self.auth_web.auth.session(cookie) is None:
                    return
                await self._write(response, b": keepalive\n\n")
                last_written = time.monotonic()


def setup(app: web.Application, server) -> LiveHub:
    """Mount GET /api/v1/live for `server` (server/process.py Server) and connect both intakes:
    the UDP store thread publishes through server.live, the HTTPS intake through its on_stored."""
    hub = LiveHub(asyncio.get_running_loop(), server.cfg.server.live_max_subscribers,
                  server.cfg.server.enable_mask_custom)
    server.live = hub
    if server.https_intake is not None:
        server.https_intake.on_stored = hub.publish
    app.router.add_get(LIVE_PATH, LiveRoute(hub, server.auth_web).handle)

    async def closing(_app):
        hub.close()
    app.on_shutdown.append(closing)
    return hub
