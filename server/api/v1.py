"""The JSON API, version 1: events and aggregates for the logged-in user (docs/API.md).

Owns the routes GET /api/v1/events, /api/v1/counts, /api/v1/top and /api/v1/threats (and mounts
/api/v1/export, server/api/export.py): reading and checking their parameters (a bad one is a 400
naming the parameter and the fix, counted by reason in `Api.refusals`; a bad filter `q` names the
token too, server/filters.py), turning them into store queries, and the JSON answers. The threats
route asks the triage book, when the Api has one, which pairs the user has hidden or suppressed
(`excluded_pairs`) and lets it annotate the rows (`annotate`); the book is another module's. Every query carries
the user's netfilter as the store's `scope`, so rows, counts, tops and threats are computed over
the user's events only; event rows are checked once more against the scope here (a row the store
should not have returned is dropped, counted and logged) and custom trails are masked for users
with uid >= 1000 under [server] enable_mask_custom. Queries run in a small thread pool, never on
the event loop (a store call blocks). Per-endpoint request counts and latency histograms live in
`ApiStats` (server.api_stats, exported on /metrics by the metrics module).

Must not know how events are stored, how a user logged in (server/auth/web.py puts the session
on the request and refuses requests without one before they reach these handlers) or how
events arrive.

Time parameters (`from`, `to`): a date YYYY-MM-DD (UTC midnight; as `to` it means the end of that
day, so from=D&to=D is the day D), an ISO 8601 date and time (UTC when it has no offset) or epoch
seconds (a decimal fraction allowed). The range is half-open [from, to).
"""

from __future__ import annotations

import asyncio
import calendar
import concurrent.futures
import datetime
import re
import sys
import time
from typing import Callable

from aiohttp import web

from events.record import SEVERITIES, Event
from server.addresses import AddressError, ip_key, key_range, key_text, range_text
from server.auth.scopes import mask_custom
from server.auth.web import user_or_refusal
from server.filters import FilterError, parse as parse_filter
from server.store import (BUCKETS, COUNT_BY, THREAT_SORTS, AggregateQuery, EventQuery, EventStore, QueryError,
                          StoreError, Threat, TimeRange)

__all__ = ["Api", "ApiStats", "ParamError", "setup", "MAX_EVENTS_PER_PAGE", "MAX_TOP", "MAX_THREATS"]

PREFIX = "/api/v1"
DAY_US = 86_400_000_000
DEFAULT_EVENTS_PER_PAGE = 100
MAX_EVENTS_PER_PAGE = 1000          # a larger `limit` is cut to this (the answer says which was used)
MAX_TOP = 1000
DEFAULT_THREATS_PER_PAGE = 100
MAX_THREATS = 10_000                # the most frequent threats a client can page through
MAX_SPARK = 96                      # sparkline slices a /threats row may carry
QUERY_THREADS = 4
# Field names of an event as the events package's JSON output writes them (events/formats.py COLUMNS).
EVENT_FIELDS = ("time", "ts_us", "sensor", "src_ip", "src_port", "dst_ip", "dst_port", "proto", "type",
                "trail", "info", "reference", "severity", "count", "last_ts_us")
TOP_ALIASES = {"src_ip": "src_ip", "sources": "src_ip", "dst_ip": "dst_ip", "destinations": "dst_ip",
               "trail": "trail", "trails": "trail"}

_EPOCH_RE = re.compile(r"\d{1,12}(\.\d{1,6})?")
_DATE_RE = re.compile(r"(\d{4})-(\d{2})-(\d{2})")
_WORD_RE = re.compile(r"[A-Za-z0-9_]{1,16}")
_TIME_FIX = "write a date (2026-11-24), an ISO date and time (2026-11-24T10:00:00Z) or epoch seconds"


def log(kind: str, text: str) -> None:
    sys.stderr.write("[%s] %s %s\n" % (kind, time.strftime("%Y-%m-%d %H:%M:%S"), text))
    sys.stderr.flush()


class ParamError(ValueError):
    """A query parameter that cannot be used; `parameter` names it, the message says the fix."""

    def __init__(self, parameter: str, message: str, reason: str | None = None, token: str | None = None):
        super().__init__(message)
        self.parameter = parameter
        self.reason = reason or "bad " + parameter     # the refusal counter's label
        self.token = token                              # for q: the filter token refused


# -- parameters ----------------------------------------------------------------------------------

def iso_utc(ts_us: int) -> str:
    """2026-11-24T10:00:00.000001Z: the instant in UTC (the API never answers in the server's zone)."""
    seconds, micros = divmod(ts_us, 1_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + ".%06dZ" % micros


def parse_time_us(name: str, text: str, end: bool) -> int:
    """A `from`/`to` value in microseconds since the epoch (module docstring); `end`: a date
    means the end of that day."""
    text = text.strip()
    if _EPOCH_RE.fullmatch(text):
        whole, _, frac = text.partition(".")
        return int(whole) * 1_000_000 + int((frac + "000000")[:6])
    m = _DATE_RE.fullmatch(text)
    if m:
        try:
            day = datetime.date(int(m[1]), int(m[2]), int(m[3]))
        except ValueError:
            raise ParamError(name, "%s=%s is not a calendar date; %s" % (name, text, _TIME_FIX)) from None
        start_us = calendar.timegm(day.timetuple()) * 1_000_000
        return start_us + DAY_US if end else start_us
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise ParamError(name, "%s=%s is not a time; %s" % (name, text[:64], _TIME_FIX)) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.timezone.utc)
    delta = moment - datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
    us = (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    if us < 0:
        raise ParamError(name, "%s=%s is before 1970; %s" % (name, text[:64], _TIME_FIX))
    return us


def parse_range(params: dict[str, str], now_s: Callable[[], float] = time.time) -> TimeRange:
    """[from, to): both given; `to` alone: the UTC day that ends there; `from` alone: up to the
    end of today (UTC); neither: today (UTC)."""
    since = parse_time_us("from", params["from"], end=False) if "from" in params else None
    until = parse_time_us("to", params["to"], end=True) if "to" in params else None
    if until is None:
        if since is None:
            today_us = int(now_s()) // 86_400 * DAY_US
            return TimeRange(today_us, today_us + DAY_US)
        until = (int(now_s()) // 86_400 + 1) * DAY_US
        if until <= since:
            raise ParamError("from", "from=%s is in the future; give `to` too" % params["from"])
    if since is None:
        since = (until - 1) // DAY_US * DAY_US
    if until <= since:
        raise ParamError("to", "to=%s is not after from=%s; the range is [from, to)" % (params["to"], params["from"]))
    return TimeRange(since, until)


def _int(params: dict[str, str], name: str, low: int, high: int | None, default: int | None = None) -> int | None:
    text = params.get(name)
    if text is None:
        return default
    if not text.isdigit() or len(text) > 12 or int(text) < low or (high is not None and int(text) > high):
        raise ParamError(name, "%s=%s: write a whole number from %d%s" % (
            name, text[:32], low, " to %d" % high if high is not None else " up"))
    return int(text)


def _port(params: dict[str, str], name: str) -> int | None:
    return _int(params, name, 0, 65535)


def _address(params: dict[str, str], name: str) -> str | None:
    """An address, CIDR or a-b range as the `a-b` text every backend reads the same way."""
    text = params.get(name)
    if text is None:
        return None
    try:
        return range_text(*key_range(text))
    except AddressError as exc:
        raise ParamError(name, "%s: %s; write an address, a CIDR (10.0.0.0/8, 2001:db8::/32) or a range a-b"
                         % (name, exc)) from None


def _word(params: dict[str, str], name: str) -> str | None:
    text = params.get(name)
    if text is None:
        return None
    if not _WORD_RE.fullmatch(text):
        raise ParamError(name, "%s=%s: write one word of letters and digits (e.g. TCP, DNS)" % (name, text[:32]))
    return text.upper()


def _text(params: dict[str, str], name: str, most: int) -> str | None:
    text = params.get(name)
    if text is None:
        return None
    if not text or len(text) > most:
        raise ParamError(name, "%s: write 1 to %d characters" % (name, most))
    return text


def filter_terms(params: dict[str, str]) -> tuple:
    """The store Terms of the `q` filter (server/filters.py); () when absent or blank."""
    text = params.get("q")
    if text is None:
        return ()
    try:
        return parse_filter(text)
    except FilterError as exc:
        raise ParamError("q", "q: %s" % exc, token=exc.token) from None


def threat_sort(params: dict[str, str]) -> str:
    text = params.get("sort", "-events")
    if text.lstrip("-") not in THREAT_SORTS or text.count("-") > 1 or (text.count("-") == 1 and text[0] != "-"):
        raise ParamError("sort", "sort=%s: one of %s; a leading - sorts descending (-events: most first)"
                         % (text[:32], ", ".join(THREAT_SORTS)))
    return text


def _choices(params: dict[str, str], name: str, allowed, default: tuple[str, ...],
             aliases: dict[str, str] | None = None) -> tuple[str, ...]:
    text = params.get(name)
    if text is None:
        return default
    chosen: list[str] = []
    for item in (part.strip().lower() for part in text.split(",")):
        value = (aliases or {}).get(item, item)
        if value not in allowed:
            raise ParamError(name, "%s=%s: one or more of %s, separated by commas" % (
                name, text[:64], ", ".join(aliases or allowed)))
        if value not in chosen:
            chosen.append(value)
    return tuple(chosen)


def single_params(request: web.Request, allowed: tuple[str, ...]) -> dict[str, str]:
    """The query's parameters, each given once and each one this endpoint knows."""
    params: dict[str, str] = {}
    for name, value in request.query.items():
        if name not in allowed:
            raise ParamError(name[:32], "unknown parameter %r; this endpoint takes %s" % (name[:32], ", ".join(allowed)),
                             "unknown parameter")
        if name in params:
            raise ParamError(name, "%s is given twice; give it once" % name)
        params[name] = value
    return params


# -- answers -------------------------------------------------------------------------------------

def address_text(text: str) -> str:
    """An address as every backend answers it: canonical text, an IPv4-mapped IPv6 address as IPv4."""
    key = ip_key(text)
    return text if key is None else key_text(key)


def event_json(event: Event) -> dict:
    return dict(zip(EVENT_FIELDS, (
        iso_utc(event.ts_us), event.ts_us, event.sensor, address_text(event.src_ip), event.src_port,
        address_text(event.dst_ip), event.dst_port,
        event.proto, event.type, event.trail, event.info, event.reference, event.severity, event.count,
        event.last_ts_us or event.ts_us)))


def range_json(since_us: int, until_us: int) -> dict:
    return {"from": iso_utc(since_us), "to": iso_utc(until_us), "from_us": since_us, "to_us": until_us}


class ApiStats:
    """Requests and latency per endpoint: a cumulative histogram (Prometheus `le` buckets, in
    milliseconds), its sum and count, and answers by HTTP status. Written on the event loop only."""

    BUCKETS_MS = (5, 10, 25, 50, 100, 200, 500, 1000, 2000, 5000)

    def __init__(self):
        self.endpoints: dict[str, dict] = {}

    def record(self, endpoint: str, seconds: float, status: int) -> None:
        e = self.endpoints.get(endpoint)
        if e is None:
            e = self.endpoints[endpoint] = {"requests": 0, "by_status": {}, "latency_ms_sum": 0.0,
                                            "latency_ms_buckets": [0] * (len(self.BUCKETS_MS) + 1)}
        ms = seconds * 1000.0
        e["requests"] += 1
        e["by_status"][status] = e["by_status"].get(status, 0) + 1
        e["latency_ms_sum"] += ms
        buckets = e["latency_ms_buckets"]
        for i, bound in enumerate(self.BUCKETS_MS):
            if ms <= bound:
                buckets[i] += 1
        buckets[-1] += 1        # +Inf

    def as_dict(self) -> dict:
        """{endpoint: {"requests", "by_status": {status: n}, "latency_ms": {"sum", "count",
        "buckets": {"5": n, ..., "+Inf": n}}}}; bucket counts are cumulative."""
        out = {}
        for name, e in self.endpoints.items():
            labels = [str(b) for b in self.BUCKETS_MS] + ["+Inf"]
            out[name] = {"requests": e["requests"], "by_status": {str(k): v for k, v in e["by_status"].items()},
                         "latency_ms": {"sum": round(e["latency_ms_sum"], 3), "count": e["requests"],
                                        "buckets": dict(zip(labels, e["latency_ms_buckets"]))}}
        return out


class Api:
    """The /api/v1 event and aggregate routes over one store, for the server `server`."""

    def __init__(self, store: EventStore, *, enable_mask_custom: bool = True,
                 now_s: Callable[[], float] = time.time, triage=None):
        self.store = store
        self.enable_mask_custom = enable_mask_custom
        # The triage book (optional): excluded_pairs(user, now_s) -> ((src_ip, trail), ...) and
        # annotate(user, rows) -> None, both given the session's User, called on the event loop.
        self.triage = triage
        self.now_s = now_s
        self.stats = ApiStats()
        self.refusals: dict[str, int] = {}
        self._pool = concurrent.futures.ThreadPoolExecutor(QUERY_THREADS, thread_name_prefix="api-query")

    def setup(self, app: web.Application) -> None:
        for name, handler in (("events", self.events), ("counts", self.counts), ("top", self.top),
                              ("threats", self.threats)):
            app.router.add_get("%s/%s" % (PREFIX, name), self._measured(name, handler))
        from server.api import export
        app.router.add_get("%s/export" % PREFIX, self._measured("export", export.Export(self).handle))
        app.on_cleanup.append(self._close)

    def health(self) -> dict:
        """For /api/v1/health: refusals by reason and requests, latency by endpoint."""
        return {"refused": dict(self.refusals), "requests": self.stats.as_dict()}

    async def _close(self, _app) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    # -- plumbing ----------------------------------------------------------------------------

    def _refuse(self, reason: str, status: int, body: dict) -> web.Response:
        self.refusals[reason] = self.refusals.get(reason, 0) + 1
        return web.json_response(body, status=status)

    def _measured(self, name: str, handler):
        async def measured(request: web.Request) -> web.Response:
            t0 = time.perf_counter()
            status = 500
            try:
                response = await self._answer(request, handler)
                status = response.status
                return response
            finally:
                self.stats.record(name, time.perf_counter() - t0, status)
        return measured

    async def _answer(self, request: web.Request, handler) -> web.Response:
        user, refusal = user_or_refusal(request)
        if refusal is not None:
            return self._refuse(*refusal)
        try:
            return await handler(request, user)
        except ParamError as exc:
            body = {"error": str(exc), "parameter": exc.parameter}
            if exc.token is not None:
                body["token"] = exc.token
            return self._refuse(exc.reason, 400, body)
        except QueryError as exc:
            parameter = "cursor" if "cursor" in str(exc) else None
            return self._refuse("bad " + (parameter or "query"), 400, {"error": str(exc), "parameter": parameter})
        except StoreError as exc:
            return self._refuse("store unavailable", 503, {"error": "the event store cannot answer now: %s" % exc})

    async def _query(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    # -- routes ------------------------------------------------------------------------------

    async def events(self, request: web.Request, user) -> web.Response:
        p = single_params(request, EVENTS_PARAMS)
        rng = parse_range(p, self.now_s)
        severity = _choices(p, "severity", SEVERITIES, ())
        asked = _int(p, "limit", 1, None, DEFAULT_EVENTS_PER_PAGE)
        limit = min(asked, MAX_EVENTS_PER_PAGE)
        cursor = _text(p, "cursor", 128)
        query = EventQuery(
            rng, src=_address(p, "src"), dst=_address(p, "dst"), address=_address(p, "address"),
            src_port=_port(p, "sport"), dst_port=_port(p, "dport"), port=_port(p, "port"),
            proto=_word(p, "proto"), type=_word(p, "type"), trail=_text(p, "trail", 2048),
            info=_text(p, "info", 256), severity=severity, sensor=_text(p, "sensor", 256),
            scope=user.scope.store_scope, terms=filter_terms(p), limit=limit, cursor=cursor)
        page = await self._query(self.store.events, query)
        rows = self.event_rows(user, page.events)
        return web.json_response({"range": range_json(rng.since_us, rng.until_us), "limit": limit,
                                  "events": rows, "next_cursor": page.next_cursor, "partial": page.partial})

    def event_rows(self, user, events) -> list[dict]:
        """Event rows as JSON for `user`: each checked against the scope once more (a row the
        store should not have returned is dropped, counted and logged), custom trails masked."""
        mask = self.enable_mask_custom and user.restricted_view
        rows = []
        for event in events:
            if not user.scope.contains_any((event.src_ip, event.dst_ip)):
                self.refusals["out of scope row"] = self.refusals.get("out of scope row", 0) + 1
                log("!", "the store returned an event outside %s's netfilter; dropped" % user.name)
                continue
            rows.append(event_json(mask_custom(event) if mask else event))
        return rows

    async def counts(self, request: web.Request, user) -> web.Response:
        p = single_params(request, COUNTS_PARAMS)
        rng = parse_range(p, self.now_s)
        by = _choices(p, "by", COUNT_BY, ("type", "severity"))
        bucket = _choices(p, "bucket", BUCKETS, ("hour",))
        if len(bucket) != 1:
            raise ParamError("bucket", "bucket: one of %s" % ", ".join(BUCKETS))
        query = AggregateQuery(rng, scope=user.scope.store_scope, terms=filter_terms(p))

        def run():
            return [self.store.counts(query, field, bucket[0]) for field in by]

        answers = await self._query(run)
        return web.json_response({
            "requested": range_json(rng.since_us, rng.until_us),
            "range": _covered(answers, rng), "bucket": bucket[0],
            "counts": {a.by: [{"start": iso_utc(start), "start_us": start, "value": value, "events": n}
                              for start, value, n in a.rows] for a in answers},
            # Every event has one value of each `by`: any one answer's rows sum to the total.
            "total": sum(n for _start, _value, n in answers[0].rows) if answers else 0,
            "partial": any(a.partial for a in answers)})

    async def top(self, request: web.Request, user) -> web.Response:
        p = single_params(request, TOP_PARAMS)
        rng = parse_range(p, self.now_s)
        fields = _choices(p, "field", set(TOP_ALIASES.values()), ("src_ip", "dst_ip", "trail"), TOP_ALIASES)
        n = _int(p, "n", 1, MAX_TOP, 10)
        query = AggregateQuery(rng, scope=user.scope.store_scope, terms=filter_terms(p))

        def run():
            return [self.store.top(query, field, n) for field in fields]

        answers = await self._query(run)
        return web.json_response({
            "requested": range_json(rng.since_us, rng.until_us), "range": _covered(answers, rng), "n": n,
            "top": {a.field: _top_rows(a) for a in answers},
            "partial": any(a.partial for a in answers)})

    async def threats(self, request: web.Request, user) -> web.Response:
        p = single_params(request, THREATS_PARAMS)
        rng = parse_range(p, self.now_s)
        limit = min(_int(p, "limit", 1, None, DEFAULT_THREATS_PER_PAGE), MAX_THREATS)
        cursor = _text(p, "cursor", 16)
        offset = 0
        if cursor is not None:
            if not cursor.isdigit() or int(cursor) >= MAX_THREATS:
                raise ParamError("cursor", "cursor=%s is not a cursor of /threats; pass next_cursor from the "
                                 "previous answer, or leave it out for the first page" % cursor[:16])
            offset = int(cursor)
        want = min(offset + limit, MAX_THREATS)
        answer, rows = await self.threat_rows(user, p, rng, want)
        rows = rows[offset:want]
        if self.triage is not None:
            self.triage.annotate(user, rows)
        more = len(answer.rows) > want and want < MAX_THREATS
        return web.json_response({
            "requested": range_json(rng.since_us, rng.until_us), "range": _covered([answer], rng), "limit": limit,
            "threats": rows, "next_cursor": str(want) if more else None, "partial": answer.partial})

    async def threat_rows(self, user, p: dict[str, str], rng: TimeRange, want: int):
        """(the store's Threats, the first `want` rows as JSON) for the threats parameters `p`
        (q, sort, spark, hidden): the store asked for one more row than `want`, so that the
        caller knows whether more follow."""
        terms = filter_terms(p)
        sort = threat_sort(p)
        spark = _int(p, "spark", 0, MAX_SPARK, 0)
        hidden = _choices(p, "hidden", ("hide", "show"), ("hide",))
        if len(hidden) != 1:
            raise ParamError("hidden", "hidden: hide (the default: leave out what triage hid or suppressed) or show")
        excluded: tuple = ()
        if self.triage is not None and hidden[0] == "hide":
            excluded = tuple(self.triage.excluded_pairs(user, self.now_s()))
        query = AggregateQuery(rng, scope=user.scope.store_scope, terms=terms, exclude_pairs=excluded)
        answer = await self._query(self.store.threats, query, min(want + 1, MAX_THREATS), sort, spark)
        mask = self.enable_mask_custom and user.restricted_view
        return answer, [threat_json(t, mask) for t in _merge_threats(answer.rows, sort)[:want]]


def threat_json(t: Threat, mask: bool) -> dict:
    """A threat row as JSON; `mask`: its latest event's info hidden when the reference is a custom
    list (as event rows are, server/auth/scopes.py mask_custom)."""
    shown = mask_custom(t) if mask else t
    return {"src_ip": t.src_ip, "trail": t.trail, "events": t.events,
            "first_seen": iso_utc(t.first_ts_us), "first_ts_us": t.first_ts_us,
            "last_seen": iso_utc(t.last_ts_us), "last_ts_us": t.last_ts_us,
            "sensors": sorted(t.sensors), "severity": t.severity,
            "type": t.type, "info": shown.info, "reference": t.reference, "spark": list(t.spark)}


def _top_rows(answer) -> list[dict]:
    """A Top's rows as JSON; addresses canonical (a store that keeps the text as received may
    rank ::ffff:10.0.0.1 and 10.0.0.1 apart: they are one address, so their counts are summed)."""
    rows = answer.rows
    if answer.field in ("src_ip", "dst_ip"):
        merged: dict[str, int] = {}
        for value, count in rows:
            value = address_text(value)
            merged[value] = merged.get(value, 0) + count
        rows = sorted(merged.items(), key=lambda kv: (-kv[1], kv[0]))
    return [{"value": value, "events": count} for value, count in rows]


_SEVERITY_RANK = {name: i for i, name in enumerate(SEVERITIES)}


def _threat_key(sort: str):
    """A sort key giving the store's THREAT_SORTS order for `sort` without its "-" (ties, by the
    caller's earlier sort: most events, then source, then trail)."""
    return {"events": lambda t: t.events, "first": lambda t: t.first_ts_us, "last": lambda t: t.last_ts_us,
            "severity": lambda t: _SEVERITY_RANK.get(t.severity, 1), "src": lambda t: ip_key(t.src_ip) or b"",
            "trail": lambda t: t.trail}[sort.lstrip("-")]


def _merge_threats(rows, sort: str = "-events") -> list:
    """Threats with canonical source addresses, two spellings of one address merged (see _top_rows),
    in `sort` order, as the store ranks them."""
    merged: dict[tuple[str, str], Threat] = {}
    for t in rows:
        t = t._replace(src_ip=address_text(t.src_ip))
        k = (t.src_ip, t.trail)
        was = merged.get(k)
        if was is not None:
            t = t._replace(events=was.events + t.events, first_ts_us=min(was.first_ts_us, t.first_ts_us),
                           last_ts_us=max(was.last_ts_us, t.last_ts_us),
                           sensors=tuple(sorted(set(was.sensors) | set(t.sensors))),
                           severity=max(was.severity, t.severity, key=lambda v: _SEVERITY_RANK.get(v, 1)),
                           spark=tuple(a + b for a, b in zip(was.spark, t.spark)))
            if was.last_ts_us > t.last_ts_us:     # the latest event's type, info and reference
                t = t._replace(type=was.type, info=was.info, reference=was.reference)
        merged[k] = t
    if len(merged) == len(rows):
        return list(merged.values())
    ranked = sorted(merged.values(), key=lambda t: (-t.events, t.src_ip, t.trail))
    return sorted(ranked, key=_threat_key(sort), reverse=sort.startswith("-"))


def _covered(answers, rng: TimeRange) -> dict:
    """The range the aggregates cover (the store widens to whole hours)."""
    if not answers:
        return range_json(rng.since_us, rng.until_us)
    return range_json(min(a.since_us for a in answers), max(a.until_us for a in answers))


EVENTS_PARAMS = ("from", "to", "q", "src", "dst", "address", "port", "sport", "dport", "proto", "type", "trail",
                 "info", "severity", "sensor", "limit", "cursor")
COUNTS_PARAMS = ("from", "to", "q", "by", "bucket")
TOP_PARAMS = ("from", "to", "q", "field", "n")
THREATS_PARAMS = ("from", "to", "q", "sort", "spark", "hidden", "limit", "cursor")


def setup(app: web.Application, server) -> Api:
    """Mount the API on the server's app; `server.api` and `server.api_stats` are set for /metrics.
    `server.triage`, when the server has one (the triage book), is the threats route's hook."""
    api = Api(server.store, enable_mask_custom=server.cfg.server.enable_mask_custom,
              triage=getattr(server, "triage", None))
    api.setup(app)
    server.api = api
    server.api_stats = api.stats
    return api
