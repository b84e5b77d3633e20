"""The endpoints Maltrail users' scripts and sensors call, and the trail endpoints of ours.

Owns the HTTP translation (no logic of its own beyond who may see what) of:
  GET /check?q=            Maltrail's answer shape (server/check.py), public for the public trails
  GET /api/v1/check?q=     ours: every match, how it matched, provenance (session required)
  GET /trails              the trail set as Maltrail's trails.csv, for Maltrail sensors' UPDATE_SERVER
  GET /trails/artifact     our compiled artifact, for `[sensor] update_server` (see the gate below)
  GET /trails/artifact.sig its signed manifest (trailsdb/remote.py); /trails/artifact.key the public key
  GET /events?date=D|A_B   the day's (days') events as Maltrail event lines, oldest first
  GET /counts?from=&to=    {"YYYY-MM-DD": events} per day, Maltrail's shape
  GET /fail2ban            source addresses of today's events matching [server] fail2ban_regex
  GET /blacklist[/NAME]    source addresses of today's events matching [server] blacklist rules

Who may call what follows Maltrail's server (core/httpd.py): /events and /counts need a logged-in
session (401 without); /check and /trails answer anyone, but custom trails only to a session that
may see them (not masked: uid < 1000, or [server] enable_mask_custom off); /fail2ban answers a
caller whose address is in [server] fail2ban_allowlist, /blacklist one in blacklist_allowlist
(else fail2ban_allowlist) or with a session, and both are 404 otherwise (Maltrail's answer; an
empty allowlist lets nobody in). The artifact holds custom trails and cannot be stripped, so it
goes to a session that may see them or to an address in [server] artifact_allowlist (loopback by
default). Where a user is involved, the user's netfilter is the store's `scope` (applied in the
query, so no count or page holds an address outside it) and custom trails are masked.

Sessions: the routes under /api/v1 get theirs from the auth middleware; the others read the same
cookie through the same Authenticator. Store queries and CSV/artifact work run in executor
threads, never on the loop. Must not parse datagrams, hold SQL, or know how trails are matched.
"""

from __future__ import annotations

import asyncio
import datetime
import os
import re
import time
from typing import Iterator

from aiohttp import web

from events.formats import format_maltrail, maltrail_type
from server.addresses import AddressError, ip_key, key_range
from server.auth.scopes import mask_custom
from server.auth.web import COOKIE_NAME, SESSION_KEY
from server.check import IndicatorError, answer, maltrail_answer
from server.store import MAX_PAGE_EVENTS, AggregateQuery, EventQuery, QueryError, StoreError, TimeRange
from server.trailserve import TrailServe

__all__ = ["Compat", "setup", "parse_blacklist", "selected_days"]

# Maltrail's MAX_RANGE_DAYS: a date range is cut to its most recent 92 days.
MAX_RANGE_DAYS = 92
# Maltrail caches /fail2ban and /blacklist for 8 s (int(time.time()) >> 3).
LIST_CACHE_SHIFT = 3
_STREAM_CHUNK_BYTES = 1 << 20
_HOUR_US = 3600 * 1_000_000
_DAY_RE = re.compile(r"^(\d{4}-\d{2}-\d{2})$")
_RANGE_RE = re.compile(r"^(\d{4}-\d{2}-\d{2})_(\d{4}-\d{2}-\d{2})$")
_SPLIT_RE = re.compile(r"[\s,;]+")
_NAMED_RULE_RE = re.compile(r"^(\w+):\s+(.*)$", re.S)
# Maltrail's BLACKLIST fields (indices into its event line; "filter" is the info column).
BLACKLIST_FIELDS = ("src_ip", "src_port", "dst_ip", "dst_port", "protocol", "type", "trail", "filter")


def selected_days(value: str) -> list[datetime.date]:
    """The days a `date` parameter selects, oldest first: one day or Maltrail's START_END range
    (swapped when reversed, cut to the most recent MAX_RANGE_DAYS); [] for anything else."""
    value = (value or "").strip()
    m = _DAY_RE.match(value)
    try:
        if m:
            return [datetime.datetime.strptime(m.group(1), "%Y-%m-%d").date()]
        m = _RANGE_RE.match(value)
        if not m:
            return []
        start = datetime.datetime.strptime(m.group(1), "%Y-%m-%d").date()
        end = datetime.datetime.strptime(m.group(2), "%Y-%m-%d").date()
    except ValueError:
        return []
    if end < start:
        start, end = end, start
    span = min((end - start).days + 1, MAX_RANGE_DAYS)
    return [end - datetime.timedelta(days=span - 1 - i) for i in range(span)]


def _local_midnight_us(day: datetime.date) -> int:
    return int(time.mktime((day.year, day.month, day.day, 0, 0, 0, 0, 0, -1))) * 1_000_000


def parse_blacklist(rules) -> tuple[dict[str, list], list[str]]:
    """[server] blacklist items -> ({name: [[(field, negated, regex), ...] (AND), ...] (OR)},
    problems). An item is Maltrail's rule `FIELD ~ REGEX [and FIELD !~ REGEX ...]`; written
    `NAME: rule` it belongs to /blacklist/NAME (Maltrail's BLACKLIST_NAME), else to /blacklist."""
    lists: dict[str, list] = {}
    problems = []
    for item in rules:
        m = _NAMED_RULE_RE.match(item.strip())
        name, text = (m.group(1).upper(), m.group(2)) if m else ("", item.strip())
        conditions = []
        try:
            for part in text.split(" and "):
                field, op, pattern = part.strip().split(" ", 2)
                if field not in BLACKLIST_FIELDS:
                    raise ValueError("unknown field %r (one of %s)" % (field, ", ".join(BLACKLIST_FIELDS)))
                conditions.append((field, op.startswith("!"), re.compile(pattern, re.I)))
        except (ValueError, re.error) as exc:
            problems.append("[server] blacklist rule %r: %s" % (item, exc))
            lists.setdefault(name, None)     # Maltrail answers "invalid rule" for that list
            continue
        if name in lists and lists[name] is None:
            continue
        lists.setdefault(name, []).append(conditions)
    return lists, problems


def _event_fields(e) -> dict:
    """An event's values as Maltrail's BLACKLIST rules see them (its line's fields, '-' for empty)."""
    def text(v):
        return "-" if v in (None, "") else str(v)
    return {"src_ip": text(e.src_ip), "src_port": text(e.src_port), "dst_ip": text(e.dst_ip),
            "dst_port": text(e.dst_port), "protocol": text(e.proto), "type": maltrail_type(e.type),
            "trail": text(e.trail), "filter": text(e.info)}


def _in_list(cidrs) -> list[tuple[bytes, bytes]]:
    out = []
    for item in cidrs:
        try:
            out.append(key_range(item))
        except AddressError:
            pass        # the config's "cidr" form has checked them already
    return out


class Compat:
    """The routes of the module docstring, over a running Server (cfg, store, auth_web)."""

    def __init__(self, server, trails: TrailServe):
        self.server = server
        self.cfg = server.cfg
        self.store = server.store
        self.auth = server.auth_web.auth
        self.trails = trails
        s = self.cfg.server
        self.fail2ban_allow = _in_list(s.fail2ban_allowlist)
        self.blacklist_allow = _in_list(s.blacklist_allowlist or s.fail2ban_allowlist)
        self.artifact_allow = _in_list(s.artifact_allowlist)
        self.fail2ban_re = re.compile(s.fail2ban_regex, re.I) if s.fail2ban_regex else None
        self.blacklists, problems = parse_blacklist(s.blacklist)
        for text in problems:
            server_log("!", text)
        self._cache: dict = {}
        self.refusals: dict[str, int] = {}

    def setup(self, app: web.Application) -> None:
        r = app.router
        r.add_get("/check", self.check_maltrail)
        r.add_get("/api/v1/check", self.check_v1)
        r.add_get("/trails", self.trails_csv)
        r.add_get("/trails/artifact", self.artifact)
        r.add_get("/trails/artifact.sig", self.artifact_sig)
        r.add_get("/trails/artifact.key", self.artifact_key)
        r.add_get("/events", self.events)
        r.add_get("/counts", self.counts)
        r.add_get("/fail2ban", self.fail2ban)
        r.add_get("/blacklist", self.blacklist)
        r.add_get("/blacklist/{name}", self.blacklist)

    # -- who is asking -------------------------------------------------------------------------

    def _refuse(self, reason: str, status: int, text: str = "") -> web.Response:
        self.refusals[reason] = self.refusals.get(reason, 0) + 1
        return web.Response(status=status, text=text, content_type="text/plain")

    def session(self, request: web.Request):
        found = request.get(SESSION_KEY)
        if found is None:
            found = self.auth.session(request.cookies.get(COOKIE_NAME))
        return found

    def masked(self, session) -> bool:
        """Custom trails hidden: no session, or a uid >= 1000 user under enable_mask_custom."""
        return session is None or (self.cfg.server.enable_mask_custom and session.user.restricted_view)

    @staticmethod
    def scope(session) -> tuple[str, ...]:
        if session is None or session.user.scope.everything:
            return ()
        return tuple(item for item in _SPLIT_RE.split(session.user.netfilter.strip()) if item)

    @staticmethod
    def _peer_in(request: web.Request, ranges) -> bool:
        peer = request.transport.get_extra_info("peername") if request.transport else None
        key = ip_key(str(peer[0]).split("%", 1)[0]) if peer else None
        return key is not None and any(lo <= key <= hi for lo, hi in ranges)

    async def _run(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(None, fn, *args)

    # -- check ---------------------------------------------------------------------------------

    async def check_maltrail(self, request: web.Request) -> web.Response:
        session = self.session(request)
        loaded = await self._run(self.trails.current)
        q = request.query.get("q") or request.query.get("query") or ""
        if loaded is None:
            return web.json_response({"query": q.strip().lower()[:256], "found": False,
                                      "error": "trail store unavailable"})
        matchers = await self._run(self.trails.matchers, loaded)
        return web.json_response(await self._run(maltrail_answer, matchers, q, not self.masked(session)))

    async def check_v1(self, request: web.Request) -> web.Response:
        session = request[SESSION_KEY]
        q = (request.query.get("q") or "").strip()
        if not q:
            return self._json_error(400, "give the indicator as ?q= (a domain, an IP address, a URL, ...)")
        loaded = await self._run(self.trails.current)
        if loaded is None:
            return self._json_error(503, "no trail set is loaded: %s" % self.trails.problem)
        matchers = await self._run(self.trails.matchers, loaded)
        try:
            result = await self._run(answer, matchers, q, not self.masked(session))
        except IndicatorError as exc:
            return self._json_error(400, str(exc))
        return web.json_response(result)

    @staticmethod
    def _json_error(status: int, message: str) -> web.Response:
        return web.json_response({"error": message}, status=status)

    # -- trails ----------------------------------------------------------------------------------

    async def _stream_fd(self, request, response: web.StreamResponse, fd: int, size: int) -> web.StreamResponse:
        await response.prepare(request)
        at = 0
        while at < size:
            chunk = await self._run(os.pread, fd, min(_STREAM_CHUNK_BYTES, size - at), at)
            if not chunk:
                break
            await response.write(chunk)
            at += len(chunk)
        await response.write_eof()
        return response

    async def trails_csv(self, request: web.Request) -> web.StreamResponse:
        session = self.session(request)
        with_custom = not self.masked(session)
        loaded = await self._run(self.trails.current)
        if loaded is None:
            # Maltrail: an empty body, on which its sensor keeps its current trails.
            return web.Response(text="", content_type="text/plain")
        etag = '"%d-%d-%d-%s"' % (loaded.artifact.generation, loaded.identity[1], loaded.identity[3],
                                   "full" if with_custom else "public")
        headers = {"ETag": etag, "Vary": "Cookie, Accept-Encoding"}
        if request.headers.get("If-None-Match", "").strip() == etag:
            return web.Response(status=304, headers=headers)
        f = await self._run(self.trails.trails_csv, loaded, with_custom)
        size = os.fstat(f.fileno()).st_size
        response = web.StreamResponse(headers=dict(headers, **{"Content-Type": "text/plain; charset=utf-8"}))
        response.content_length = size
        return await self._stream_fd(request, response, f.fileno(), size)

    def _may_have_artifact(self, request) -> bool:
        return self._peer_in(request, self.artifact_allow) or not self.masked(self.session(request))

    async def artifact(self, request: web.Request) -> web.StreamResponse:
        if not self._may_have_artifact(request):
            return self._refuse("artifact not allowed", 403, "the trail artifact holds custom trails: log in, or add "
                                "this sensor's address to [server] artifact_allowlist\n")
        loaded = await self._run(self.trails.current)
        if loaded is None:
            return self._refuse("no artifact", 503, "no trail artifact is loaded: %s\n" % self.trails.problem)
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream",
                                               "X-Trail-Generation": str(loaded.artifact.generation)})
        response.content_length = loaded.size_bytes
        return await self._stream_fd(request, response, loaded.fd, loaded.size_bytes)

    async def artifact_sig(self, request: web.Request) -> web.Response:
        loaded = await self._run(self.trails.current)
        if loaded is None:
            return self._refuse("no artifact", 503, "no trail artifact is loaded: %s\n" % self.trails.problem)
        signed = await self._run(self.trails.signed, loaded)
        if signed is None:
            return self._refuse("no signing key", 503, "the server has no usable signing key: %s\n"
                                % self.trails.key_problem)
        return web.Response(body=signed, content_type="application/json")

    async def artifact_key(self, request: web.Request) -> web.Response:
        if not self.trails.public_key:
            return self._refuse("no signing key", 503, "the server has no usable signing key: %s\n"
                                % self.trails.key_problem)
        return web.Response(text=self.trails.public_key + "\n", content_type="text/plain")

    # -- events and counts -------------------------------------------------------------------------

    def _all_events(self, since_us: int, until_us: int, scope: tuple) -> Iterator[list]:
        """Every event in [since_us, until_us) in scope, page by page, newest first."""
        cursor = None
        while True:
            page = self.store.events(EventQuery(TimeRange(since_us, until_us), scope=scope, limit=MAX_PAGE_EVENTS,
                                                cursor=cursor))
            if page.events:
                yield page.events
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    def _window(self, since_us: int, until_us: int, scope: tuple, masked: bool) -> bytes:
        """One window's events as Maltrail lines, oldest first (the log's order)."""
        events = [e for page in self._all_events(since_us, until_us, scope) for e in page]
        events.reverse()
        if masked:
            events = [mask_custom(e) for e in events]
        return "".join(format_maltrail(e) + "\n" for e in events).encode("utf-8")

    async def events(self, request: web.Request) -> web.StreamResponse:
        session = self.session(request)
        if session is None:
            return self._refuse("no session", 401)
        days = selected_days(request.query.get("date", ""))
        scope, masked = self.scope(session), self.masked(session) and session is not None
        response = web.StreamResponse(headers={"Content-Type": "text/plain; charset=utf-8"})
        await response.prepare(request)
        # An hour at a time: the store pages newest first and Maltrail's lines go oldest first,
        # so each hour is read whole, turned round and written before the next is read.
        for day in days:
            start = _local_midnight_us(day)
            end = _local_midnight_us(day + datetime.timedelta(days=1))
            for since in range(start, end, _HOUR_US):
                try:
                    body = await self._run(self._window, since, min(since + _HOUR_US, end), scope, masked)
                except (StoreError, QueryError) as exc:
                    server_log("!", "/events: %s" % exc)
                    await response.write_eof()
                    return response
                if body:
                    await response.write(body)
        await response.write_eof()
        return response

    async def counts(self, request: web.Request) -> web.Response:
        session = self.session(request)
        if session is None:
            return self._refuse("no session", 401)

        def bound(name: str, default: datetime.date) -> datetime.date:
            m = re.search(r"\d+-\d+-\d+", request.query.get(name, ""))
            try:
                return datetime.datetime.strptime(m.group(0), "%Y-%m-%d").date() if m else default
            except ValueError:
                return default
        first = bound("from", datetime.date.fromtimestamp(0))
        last = bound("to", datetime.date.today())
        since, until = _local_midnight_us(first), _local_midnight_us(last + datetime.timedelta(days=1))
        if until <= since:
            return web.json_response({})
        query = AggregateQuery(TimeRange(max(since, 0), until), scope=self.scope(session))
        try:
            result = await self._run(self.store.counts, query, "severity", "day")
        except (StoreError, QueryError) as exc:
            return self._json_error(503, str(exc))
        out: dict[str, int] = {}
        for bucket_us, _severity, n in result.rows:
            day = time.strftime("%Y-%m-%d", time.localtime(bucket_us // 1_000_000))
            out[day] = out.get(day, 0) + n
        return web.json_response({day: n for day, n in sorted(out.items()) if n})

    # -- fail2ban and blacklist --------------------------------------------------------------------

    def _today_sources(self, scope: tuple, test) -> str:
        """Source addresses of today's events (in scope) for which test(event) holds, one a line."""
        today = datetime.date.today()
        since, until = _local_midnight_us(today), _local_midnight_us(today + datetime.timedelta(days=1))
        found = set()
        for page in self._all_events(since, until, scope):
            for e in page:
                if e.src_ip and test(e):
                    found.add(e.src_ip)
        return "\n".join(sorted(found))

    async def _cached(self, key: tuple, fn, *args) -> str:
        key = key + (int(time.time()) >> LIST_CACHE_SHIFT,)
        if key not in self._cache:
            value = await self._run(fn, *args)
            self._cache = {k: v for k, v in self._cache.items() if k[-1] == key[-1]}
            self._cache[key] = value
        return self._cache[key]

    async def fail2ban(self, request: web.Request) -> web.Response:
        session = self.session(request)
        if session is None and not self._peer_in(request, self.fail2ban_allow):
            return self._refuse("not allowlisted", 404)
        if self.fail2ban_re is None:
            return web.Response(text="configuration option FAIL2BAN_REGEX not set", content_type="text/plain")
        scope = self.scope(session)
        pattern = self.fail2ban_re
        try:
            text = await self._cached(("fail2ban", scope), self._today_sources, scope,
                                      lambda e: pattern.search(format_maltrail(e)) is not None)
        except (StoreError, QueryError) as exc:
            return self._refuse("store", 503, str(exc))
        return web.Response(text=text, content_type="text/plain")

    async def blacklist(self, request: web.Request) -> web.Response:
        session = self.session(request)
        if session is None and not self._peer_in(request, self.blacklist_allow):
            return self._refuse("not allowlisted", 404)
        name = request.match_info.get("name", "").split("/")[0].upper()
        option = "BLACKLIST" + ("_" + name if name else "")
        if name not in self.blacklists:
            return web.Response(text="configuration option %s not set" % option, content_type="text/plain")
        rules = self.blacklists[name]
        if rules is None:
            return web.Response(text="invalid rule in option %s" % option, content_type="text/plain")

        def test(e) -> bool:
            fields = _event_fields(e)
            return any(all((r.search(fields[f]) is not None) ^ negated for f, negated, r in conditions)
                       for conditions in rules)
        scope = self.scope(session)
        try:
            text = await self._cached(("blacklist", name, scope), self._today_sources, scope, test)
        except (StoreError, QueryError) as exc:
            return self._refuse("store", 503, str(exc))
        return web.Response(text=text, content_type="text/plain")


def server_log(kind: str, text: str) -> None:
    from server.process import log
    log(kind, text)


def setup(app: web.Application, server) -> Compat:
    """Mount the routes of module docstring on `app` for `server` (server/process.py Server)."""
    from server.auth.state import state_db_path
    key_dir = os.path.dirname(os.path.abspath(state_db_path(server.cfg)))
    compat = Compat(server, TrailServe(server.cfg.all.trails_artifact, key_dir, server_log))
    compat.setup(app)
    server.compat = compat
    if compat.trails.public_key:
        server_log("i", "trail artifact signing key (sensors pin it as [sensor] update_server_key): %s"
                   % compat.trails.public_key)
    return compat
