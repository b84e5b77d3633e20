"""Triage shared between analysts: the state of each threat, notes, hiding, suppressions and the
per-user "new since last look" mark, kept server-side and audited (docs/API.md, "Triage").

Owns `TriageBook`: the routes GET/PUT /api/v1/triage, POST /api/v1/triage/notes,
GET /api/v1/analysts, GET/POST /api/v1/suppressions, DELETE /api/v1/suppressions/{id},
POST /api/v1/looked; the checking of every field a browser sends (a bad one is a 400 naming the
field and the fix); who may see and change what; the history and the operator's log line of
every change; and the two hooks the threats route calls, `excluded_pairs` and `annotate`. The
rows live in the state database (server/auth/state.py); the events in the store, which is only
asked whether a user may see a pair. Must not know how events are stored or how a user logged in
(server/auth/web.py puts the session on the request and checks the CSRF header of every change
before a handler here runs).

A threat is a (source address, trail) pair: the address in canonical text (server/addresses.py:
IPv4-mapped IPv6 as IPv4), the trail as the store holds it. A pair with no row has the defaults
(status "new", no assignee, not hidden).

Who may do what: every logged-in user may read and change triage, as Maltrail's users all share
one view of the events; a scoped user (a netfilter) only for pairs the store shows them at least
one event of (their scope, that source, that exact trail, any day the store keeps). Anything
else answers 404, exactly as a pair that does not exist, so a scoped user cannot learn that a
pair outside their networks exists. A scoped user suppresses only hosts wholly inside their
netfilter, and lists and lifts only those.

Suppressions (host = an address or a CIDR, trail, an expiry): the threats route leaves suppressed
pairs out through `excluded_pairs`, which must name exact (source, trail) pairs: a CIDR covering
up to MAX_EXPANDED_ADDRESSES addresses is written out address by address, a wider one is only
flagged by `annotate` (and still reaches the sensors, which read StateDB.suppressions). The
suppression's trail is lower-case, as the sensors' whitelist compares it.

"New since last look": POST /api/v1/looked moves the user's mark to now; `annotate` flags a row
`new` when its first_ts_us is after the mark (a user who never looked has mark 0: every row is new).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import time
from typing import Callable

from aiohttp import web

from server.addresses import AddressError, ip_key, key_range, key_text
from server.api import v1
from server.auth.audit import TriageRecord
from server.auth.state import StateDB, StateError, SuppressionRow, TriageRow
from server.auth.web import user_or_refusal
from server.store import EventQuery, EventStore, QueryError, StoreError, Term, TimeRange

__all__ = ["TriageBook", "FieldError", "setup", "STATUSES", "MAX_TRAIL", "MAX_NOTE", "MAX_REASON",
           "MIN_EXPIRES_S", "MAX_EXPIRES_S", "MAX_EXPANDED_ADDRESSES"]

PREFIX = "/api/v1"
STATUSES = ("new", "investigating", "resolved", "false_positive")
MAX_TRAIL = 2048
MAX_NOTE = 4000
MAX_REASON = 500
MIN_EXPIRES_S = 60
MAX_EXPIRES_S = 90 * 86_400
MAX_EXPANDED_ADDRESSES = 256        # a /24 (IPv4) or /120 (IPv6) suppression is written out as pairs
_LOOKBACK_AHEAD_US = 2 * 86_400_000_000     # events stamped a little ahead of the server's clock count


class FieldError(ValueError):
    """A field of a request that cannot be used; `field` names it, the message says the fix."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


class _NotFound(Exception):
    """Answered as 404: the pair, or suppression, does not exist for this user."""


def iso_utc(ts_s: float) -> str:
    """2026-11-24T10:00:00.000001Z, as the rest of the API writes instants (v1.iso_utc; the state
    database keeps seconds)."""
    return v1.iso_utc(int(round(ts_s * 1_000_000)))


def _shown(text: str, most: int = 200) -> str:
    """Network-supplied text fit for one log line: quoted, control characters escaped, capped."""
    return json.dumps(text[:most]) + ("..." if len(text) > most else "")


# -- fields --------------------------------------------------------------------------------------

def source_address(value) -> str:
    """A pair's source: one IPv4 or IPv6 address, in canonical text."""
    key = ip_key(value.strip()) if isinstance(value, str) and len(value) <= 64 else None
    if key is None:
        raise FieldError("src_ip", "src_ip: write one IPv4 or IPv6 address (203.0.113.5, 2001:db8::1)")
    return key_text(key)


def trail_text(value, field: str = "trail") -> str:
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_TRAIL:
        raise FieldError(field, "%s: write the trail as text of 1 to %d characters" % (field, MAX_TRAIL))
    return value


def suppression_host(value) -> tuple[str, bytes, bytes]:
    """(canonical text, low key, high key) of an address or a CIDR (host bits dropped)."""
    fix = "host: write an IPv4 or IPv6 address or a CIDR (10.0.0.0/24, 2001:db8::/64)"
    if not isinstance(value, str) or not value.strip() or len(value) > 64 or "-" in value:
        raise FieldError("host", fix)
    text = value.strip()
    try:
        lo, hi = key_range(text)
    except AddressError as exc:
        raise FieldError("host", "%s; %s" % (exc, fix)) from None
    if "/" not in text:
        return key_text(lo), lo, hi
    net = ipaddress.ip_network(text, strict=False)
    mapped = getattr(net.network_address, "ipv4_mapped", None)
    if mapped is not None and net.prefixlen >= 96:      # ::ffff:10.0.0.0/104 is 10.0.0.0/8
        net = ipaddress.ip_network("%s/%d" % (mapped, net.prefixlen - 96))
    return str(net), lo, hi


def _object(body: dict, allowed: tuple[str, ...], required: tuple[str, ...]) -> None:
    for name in body:
        if name not in allowed:
            raise FieldError(str(name)[:32], "unknown field %r; this request takes %s"
                             % (str(name)[:32], ", ".join(allowed)))
    for name in required:
        if name not in body:
            raise FieldError(name, "%s is missing; this request takes %s" % (name, ", ".join(allowed)))


class TriageBook:
    """The triage of every threat, over the state database `state`, the event store `store`
    (asked only whether a scoped user may see a pair) and the configured users (a dict by name).
    `now_s`: the clock (a test's, or time.time); `log(kind, text)`: the operator's log;
    `on_record(TriageRecord)`: the audit record of each change (the collectors' forwarder; it
    must not block)."""

    def __init__(self, state: StateDB, store: EventStore | None, users: dict, *,
                 now_s: Callable[[], float] = time.time, log: Callable[[str, str], None] | None = None,
                 on_record: Callable[[TriageRecord], None] | None = None):
        self.state = state
        self.store = store
        self.users = users
        self.now_s = now_s
        self.log = log or (lambda kind, text: None)
        self.on_record = on_record or (lambda record: None)
        self.refusals: dict[str, int] = {}

    def setup(self, app: web.Application) -> None:
        r = app.router
        r.add_get(PREFIX + "/triage", self._handler(self.get_triage))
        r.add_put(PREFIX + "/triage", self._handler(self.put_triage))
        r.add_post(PREFIX + "/triage/notes", self._handler(self.post_note))
        r.add_get(PREFIX + "/analysts", self._handler(self.analysts))
        r.add_get(PREFIX + "/suppressions", self._handler(self.list_suppressions))
        r.add_post(PREFIX + "/suppressions", self._handler(self.post_suppression))
        r.add_delete(PREFIX + "/suppressions/{id}", self._handler(self.delete_suppression))
        r.add_post(PREFIX + "/looked", self._handler(self.looked))

    # -- the hooks of the threats route ------------------------------------------------------

    def excluded_pairs(self, user, now_s: float) -> tuple[tuple[str, str], ...]:
        """(source address, trail) pairs the threats list leaves out: hidden ones, and the active
        suppressions of single addresses or CIDRs of up to MAX_EXPANDED_ADDRESSES addresses
        (module docstring). The same for every user: it only removes rows."""
        pairs = dict.fromkeys(self.state.hidden_pairs())
        for s in self.state.suppressions(now_s):
            lo, hi = key_range(s.host)
            first, last = int.from_bytes(lo, "big"), int.from_bytes(hi, "big")
            if last - first < MAX_EXPANDED_ADDRESSES:
                for n in range(first, last + 1):
                    pairs.setdefault((key_text(n.to_bytes(16, "big")), s.trail))
        return tuple(pairs)

    def annotate(self, user, rows: list[dict]) -> None:
        """Add to each threats row (a dict with src_ip, trail, first_ts_us), in place:
        "triage": {status, assignee, notes (how many)}, "hidden", "suppressed", "new"."""
        if not rows:
            return
        sources = {row["src_ip"] for row in rows}
        triaged = {(t.src_ip, t.trail): t for t in self.state.triage_of(sources)}
        notes = self.state.note_counts(sources)
        active = [(*key_range(s.host), s.trail) for s in self.state.suppressions(self.now_s())]
        mark_us = self.state.last_look(user.name)[0]
        for row in rows:
            pair = (row["src_ip"], row["trail"])
            t = triaged.get(pair)
            row["triage"] = {"status": t.status if t else "new", "assignee": t.assignee if t else "",
                             "notes": notes.get(pair, 0)}
            row["hidden"] = bool(t and t.hidden)
            key, trail = ip_key(row["src_ip"]), str(row["trail"]).lower()
            row["suppressed"] = key is not None and any(lo <= key <= hi and trail == s_trail
                                                        for lo, hi, s_trail in active)
            row["new"] = int(row.get("first_ts_us") or 0) > mark_us

    # -- plumbing ----------------------------------------------------------------------------

    def _refuse(self, reason: str, status: int, body: dict) -> web.Response:
        self.refusals[reason] = self.refusals.get(reason, 0) + 1
        return web.json_response(body, status=status)

    def _handler(self, fn):
        async def handle(request: web.Request) -> web.Response:
            user, refusal = user_or_refusal(request)
            if refusal is not None:
                return self._refuse(*refusal)
            try:
                return await fn(request, user)
            except FieldError as exc:
                return self._refuse("bad " + exc.field, 400, {"error": str(exc), "parameter": exc.field})
            except _NotFound as exc:
                return self._refuse("not found", 404, {"error": str(exc)})
            except StoreError as exc:
                return self._refuse("store unavailable", 503, {"error": "the event store cannot answer now: %s" % exc})
        return handle

    @staticmethod
    async def _body(request: web.Request) -> dict:
        try:
            body = json.loads(await request.read())
        except (ValueError, UnicodeDecodeError):
            raise FieldError("body", "the body is not JSON; send a JSON object") from None
        if not isinstance(body, dict):
            raise FieldError("body", "send a JSON object")
        return body

    @staticmethod
    def _query(request: web.Request, allowed: tuple[str, ...]) -> dict[str, str]:
        try:
            params = v1.single_params(request, allowed)
        except v1.ParamError as exc:
            raise FieldError(exc.parameter, str(exc)) from None
        for name in allowed:
            if name not in params:
                raise FieldError(name, "%s is missing; this endpoint takes %s" % (name, ", ".join(allowed)))
        return params

    async def _visible(self, user, src_ip: str, trail: str) -> bool:
        """Whether the store shows `user` at least one event of the pair, on any day it keeps."""
        now_us = int(self.now_s() * 1_000_000)
        # trail= is the exact match every backend has always done; the Term says the same to a
        # backend that reads terms (and, being case-insensitive, cannot widen the exact match).
        query = EventQuery(TimeRange(0, now_us + _LOOKBACK_AHEAD_US), src=src_ip, trail=trail,
                           terms=(Term("trail", (trail,)),), scope=user.scope.store_scope, limit=1)
        try:
            page = await asyncio.get_running_loop().run_in_executor(None, self.store.events, query)
        except QueryError:
            return False
        return any(user.scope.contains_any((e.src_ip, e.dst_ip)) for e in page.events)

    async def _pair(self, user, src_ip: str, trail: str) -> TriageRow | None:
        """The pair's triage row (None: defaults), or _NotFound when the user may not see it. An
        unscoped user reaches a pair with a triage row even after its events aged out."""
        row = self.state.triage(src_ip, trail)
        if user.scope.everything and row is not None:
            return row
        if self.store is None or not await self._visible(user, src_ip, trail):
            raise _NotFound("no threat with src_ip %s and this trail%s" % (
                src_ip, "" if user.scope.everything else " in your networks"))
        return row

    def _answer(self, src_ip: str, trail: str, row: TriageRow | None) -> dict:
        row = row or TriageRow(src_ip, trail, "new", "", False, "", 0.0)
        return {"src_ip": src_ip, "trail": trail, "status": row.status, "assignee": row.assignee,
                "hidden": row.hidden, "updated_by": row.updated_by or None,
                "updated_at": iso_utc(row.updated_s) if row.updated_by else None,
                "notes": [{"by": n.username, "at": iso_utc(n.created_s), "text": n.text}
                          for n in self.state.notes(src_ip, trail)],
                "history": [{"by": h.username, "at": iso_utc(h.changed_s), "field": h.field, "old": h.old,
                             "new": h.new} for h in self.state.history(src_ip, trail)]}

    # -- triage ------------------------------------------------------------------------------

    async def get_triage(self, request: web.Request, user) -> web.Response:
        p = self._query(request, ("src_ip", "trail"))
        src_ip, trail = source_address(p["src_ip"]), trail_text(p["trail"])
        row = await self._pair(user, src_ip, trail)
        return web.json_response(self._answer(src_ip, trail, row))

    async def put_triage(self, request: web.Request, user) -> web.Response:
        body = await self._body(request)
        _object(body, ("src_ip", "trail", "status", "assignee", "hidden"), ("src_ip", "trail"))
        src_ip, trail = source_address(body["src_ip"]), trail_text(body["trail"])
        changes = {}
        if "status" in body:
            if body["status"] not in STATUSES:
                raise FieldError("status", "status: one of %s" % ", ".join(STATUSES))
            changes["status"] = body["status"]
        if "assignee" in body:
            if not isinstance(body["assignee"], str) or (body["assignee"] and body["assignee"] not in self.users):
                raise FieldError("assignee", "assignee: a user name from GET %s/analysts, or \"\" for nobody" % PREFIX)
            changes["assignee"] = body["assignee"]
        if "hidden" in body:
            if not isinstance(body["hidden"], bool):
                raise FieldError("hidden", "hidden: true or false")
            changes["hidden"] = body["hidden"]
        if not changes:
            raise FieldError("status", "nothing to change; give status, assignee or hidden")
        await self._pair(user, src_ip, trail)
        now_s = self.now_s()
        row, written = self.state.set_triage(src_ip, trail, changes, user.name, now_s)
        for field, old, new in written:
            self.log("i", "triage: %s set %s of %s %s: %s -> %s" % (
                user.name, field, src_ip, _shown(trail), _shown(old), _shown(new)))
            self.on_record(TriageRecord(now_s, user.name, "change", src_ip, trail, field, old, new))
        return web.json_response(self._answer(src_ip, trail, row))

    async def post_note(self, request: web.Request, user) -> web.Response:
        body = await self._body(request)
        _object(body, ("src_ip", "trail", "text"), ("src_ip", "trail", "text"))
        src_ip, trail = source_address(body["src_ip"]), trail_text(body["trail"])
        text = body["text"]
        if not isinstance(text, str) or not text.strip() or len(text) > MAX_NOTE:
            raise FieldError("text", "text: write the note as 1 to %d characters" % MAX_NOTE)
        row = await self._pair(user, src_ip, trail)
        self.state.add_note(src_ip, trail, user.name, text, self.now_s())
        # The note's text stays out of the log: it is the analysts' record, not the operator's.
        self.log("i", "triage: %s added a note (%d characters) to %s %s" % (user.name, len(text), src_ip,
                                                                              _shown(trail)))
        self.on_record(TriageRecord(self.now_s(), user.name, "note", src_ip, trail, "note", "",
                                    "%d characters" % len(text)))
        return web.json_response(self._answer(src_ip, trail, row))

    async def analysts(self, request: web.Request, user) -> web.Response:
        self._query(request, ())
        return web.json_response({"analysts": sorted(self.users)})

    # -- suppressions ------------------------------------------------------------------------

    @staticmethod
    def _may_touch(user, lo: bytes, hi: bytes) -> bool:
        """Whether the whole of [lo, hi] lies in one range of the user's netfilter."""
        if user.scope.everything:
            return True
        return any(a <= lo and hi <= b for a, b in (key_range(r) for r in user.scope.store_scope))

    @staticmethod
    def _suppression_json(s: SuppressionRow) -> dict:
        return {"id": s.id, "host": s.host, "trail": s.trail, "created_at": iso_utc(s.created_s),
                "created_by": s.created_by, "expires_at": iso_utc(s.expires_s), "reason": s.reason}

    async def list_suppressions(self, request: web.Request, user) -> web.Response:
        self._query(request, ())
        rows = [s for s in self.state.suppressions(self.now_s()) if self._may_touch(user, *key_range(s.host))]
        return web.json_response({"suppressions": [self._suppression_json(s) for s in rows]})

    async def post_suppression(self, request: web.Request, user) -> web.Response:
        body = await self._body(request)
        _object(body, ("host", "trail", "expires_in_s", "reason"), ("host", "trail", "expires_in_s"))
        host, lo, hi = suppression_host(body["host"])
        trail = trail_text(body["trail"])
        expires_in_s = body["expires_in_s"]
        if (isinstance(expires_in_s, bool) or not isinstance(expires_in_s, int)
                or not MIN_EXPIRES_S <= expires_in_s <= MAX_EXPIRES_S):
            raise FieldError("expires_in_s", "expires_in_s: whole seconds from %d (a minute) to %d (90 days)"
                             % (MIN_EXPIRES_S, MAX_EXPIRES_S))
        reason = body.get("reason", "")
        if not isinstance(reason, str) or len(reason) > MAX_REASON:
            raise FieldError("reason", "reason: text of at most %d characters" % MAX_REASON)
        if not self._may_touch(user, lo, hi):
            raise FieldError("host", "host: %s is not inside your networks (%s); suppress a host or CIDR within them"
                             % (host, user.scope.text))
        now_s = self.now_s()
        try:
            sid = self.state.add_suppression(host, trail, now_s + expires_in_s, user.name, reason, now_s)
        except StateError as exc:
            raise FieldError("trail", str(exc)) from None
        self.log("i", "suppression %d: %s suppressed %s for %s %s until %s" % (
            sid, user.name, _shown(trail.lower()), host, "(a reason given)" if reason else "(no reason)",
            iso_utc(now_s + expires_in_s)))
        self.on_record(TriageRecord(now_s, user.name, "suppress", host, trail.lower(), "suppression", "", str(sid)))
        return web.json_response(self._suppression_json(self.state.suppression(sid)), status=201)

    async def delete_suppression(self, request: web.Request, user) -> web.Response:
        text = request.match_info["id"]
        if not text.isdigit() or len(text) > 18:
            raise FieldError("id", "the suppression id is a whole number from GET %s/suppressions" % PREFIX)
        now_s = self.now_s()
        s = self.state.suppression(int(text))
        if (s is None or s.lifted_s is not None or s.expires_s <= now_s
                or not self._may_touch(user, *key_range(s.host))):
            raise _NotFound("no active suppression %s%s" % (text, "" if user.scope.everything else " in your networks"))
        if not self.state.lift_suppression(s.id, user.name, now_s):
            raise _NotFound("no active suppression %s" % text)
        self.log("i", "suppression %d: %s lifted it (%s for %s)" % (s.id, user.name, _shown(s.trail), s.host))
        self.on_record(TriageRecord(now_s, user.name, "lift", s.host, s.trail, "suppression", str(s.id), ""))
        return web.json_response({"lifted": True})

    # -- new since last look -----------------------------------------------------------------

    async def looked(self, request: web.Request, user) -> web.Response:
        self._query(request, ())
        mark_us = self.state.set_last_look(user.name, int(self.now_s() * 1_000_000))
        return web.json_response({"last_look_us": mark_us})


def setup(app: web.Application, server) -> TriageBook:
    """Mount the triage routes on `app` for `server` (server/process.py Server); `server.triage`
    is the book, for the threats route's hooks (Api(..., triage=server.triage))."""
    from server.process import log
    auth = server.auth_web.auth
    forwarder = server.listeners.auth_forwarder if server.listeners is not None else None
    book = TriageBook(auth.state, server.store, auth.users, log=log,
                      on_record=forwarder.submit if forwarder is not None else None)
    book.setup(app)
    server.triage = book
    return book
