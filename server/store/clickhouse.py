"""The ClickHouse backend of the server's event store: the scale-out index beside the daily logs.

Owns: a small async client for ClickHouse's HTTP interface (aiohttp; no native driver), the strict
quoting every value in our SQL goes through, the schema (the events table, its roll-ups kept by
materialized views, all partitioned by day), ingest, the queries the API asks (events newest first
with a cursor; counts per hour or day; top sources, destinations, trails; threats) and retention
by whole day partitions.

Must not: know about HTTP requests, users or intake (the caller passes a scope, a list of
networks, already decided), import engine/ or workers/, or trust what comes back from the network
(every answer is parsed strictly and a malformed one is an error).

Written for the ClickHouse Debian ships (18.16), so:
- no query parameters on the HTTP interface (they came in 19.x): every value is rendered into the
  SQL by `bind` and the `quote_*` functions below, which accept only typed values (str, int,
  addresses, networks) and escape every byte a ClickHouse string literal treats specially;
- no IPv4/IPv6 column types (19.x): an address is a FixedString(16), the IPv6 address or the
  IPv4-mapped IPv6 form of an IPv4 one (::ffff:a.b.c.d), so one column holds both families and a
  network is one byte range (`col BETWEEN lo AND hi`: FixedString compares as bytes, which is
  network order);
- no DateTime64: times are microseconds in UInt64 (`ts_us`) with a DateTime column computed from
  them for the partition key, the sort key and the hour buckets;
- one statement per HTTP request.

Filters (server/store/__init__.py Term) become SQL in `_term_condition`: an address range is one
BETWEEN on the 16-byte keys; text is matched ASCII case-insensitively (lower() and a pattern
folded the same way), `*` through LIKE with LIKE's own % _ and backslash escaped, then quoted as every
value is. Aggregates without terms or scope read the roll-ups; with either, the matching events
themselves, at most row_cap of them (a LIMIT in a subquery; WITH TOTALS tells a top-n whether
the cap was reached).

Rows travel as TabSeparated both ways: it is byte-exact for any string (quotes, backslashes,
newlines, NUL), where 18.16's JSON formats are not for every byte sequence.

`ClickHouseEventStore` implements the backend-neutral interface (server/store/__init__.py
EventStore, synchronous) over the async store below, whose own interface (coroutines) is:
    store = ClickHouseStore(url, database="maltrail", user="default", password="", timezone="UTC")
    await store.create()                      # database, tables, views (idempotent)
    await store.ingest(events)                # events.record.Event list; all or none on error
    page = await store.events(EventQuery(...))        # Page(events, next_cursor, partial)
    await store.counts(start_us, end_us, by="type", bucket="hour", scope=None, terms=())
    await store.top(start_us, end_us, field="src_ip", n=10, scope=None, terms=())
    await store.threats(start_us, end_us, n=100, scope=None, terms=(), exclude=(), sort="-events", spark=0)
    await store.aggregate_counts(...) / aggregate_top(...) / aggregate_threats(...)   # (rows, partial)
    await store.days()                        # the day partitions held, as dates
    await store.drop_days_before(date)        # retention: whole days, every table
    await store.close()
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import ipaddress
import os
import random
import re
import threading
import time
import zoneinfo
from typing import Iterable, NamedTuple, Sequence

import aiohttp

from events.record import SEVERITIES, Event
from server.store.daylog import INDEX_DIR, DayLog, append_logged, catch_up, indexer_locked, ingest_logged
from server.addresses import AddressError, key_range
from server.store import (BUCKETS, COUNT_BY, DEFAULT_BUDGET_MS, DEFAULT_ROW_CAP, INDEX_WAIT_S, MAX_PAGE_EVENTS, THREAT_SORTS, TOP_FIELDS, AggregateQuery,
                          Counts, EventStore, QueryError, ascii_lower, ascii_upper, StoreError, StoreStatus, Threats, Top)
from server.store import EventQuery as StoreEventQuery
from server.store import Threat as StoreThreat

__all__ = [
    "ClickHouseError", "ClickHouseUnavailable", "QueryTimeout", "StoreInputError", "ClickHouseClient",
    "ClickHouseStore", "ClickHouseEventStore", "EventQuery", "Page", "Threat", "bind", "quote_str", "quote_int", "quote_addr",
    "addr_bytes", "addr_text", "network_range",
]


# ----------------------------------------------------------------------------------------------
# Errors


class ClickHouseError(Exception):
    """ClickHouse refused a statement. `code` is its error code (62 syntax, 60 unknown table,
    81 unknown database, 159 timeout, 192/193/516 authentication ...), -1 when the answer held none;
    `status` the HTTP status; the message is ClickHouse's own text, shortened."""

    def __init__(self, code: int, message: str, status: int = 0, sql: str = ""):
        self.code = code
        self.status = status
        self.sql = sql
        where = (" in: %s" % _shorten(sql, 200)) if sql else ""
        super().__init__("ClickHouse error %d (HTTP %d): %s%s" % (code, status, message, where))
        self.message = message


class ClickHouseUnavailable(ClickHouseError):
    """The server could not be reached, or it broke the connection: nothing is known to be stored."""


class QueryTimeout(ClickHouseError):
    """A statement ran past its time budget (ClickHouse code 159)."""


class StoreInputError(ValueError):
    """An event or a query the store cannot take, with the field and the reason; nothing was sent."""


_ERROR_RE = re.compile(r"Code:\s*(\d+),\s*e\.displayText\(\)\s*=\s*(?:DB::Exception:\s*)?(.*?)(?:,\s*e\.what\(\)\s*=.*)?\s*\Z",
                       re.S)


def parse_error(status: int, body: str, sql: str = "") -> ClickHouseError:
    """The exception for an error answer: ClickHouse 18.16 writes
    'Code: N, e.displayText() = DB::Exception: TEXT, e.what() = DB::Exception'."""
    m = _ERROR_RE.match(body.strip())
    if m is None:
        return ClickHouseError(-1, _shorten(body.strip() or "(empty answer)", 500), status, sql)
    code = int(m.group(1))
    cls = QueryTimeout if code == 159 else ClickHouseError
    return cls(code, _shorten(m.group(2).strip(), 500), status, sql)


def _shorten(text: str, n: int) -> str:
    text = text.replace("\n", " ")
    return text if len(text) <= n else text[:n] + "..."


# ----------------------------------------------------------------------------------------------
# Quoting. ClickHouse's string literal: 'text' where a backslash starts an escape (\\ \' \n \t \0
# \xHH ...) and a quote ends it. Rather than rely on which other bytes its lexer tolerates, every
# control character and DEL is written as \xHH; the rest of UTF-8 passes through.

_ESCAPE_RE = re.compile(r"[\x00-\x1f\x7f\\']")


def _escape_char(m: re.Match) -> str:
    c = m.group(0)
    return "\\" + c if c in "\\'" else "\\x%02x" % ord(c)


def quote_str(value: str) -> str:
    """A ClickHouse string literal holding exactly `value`'s UTF-8 bytes."""
    if not isinstance(value, str):
        raise StoreInputError("a string value is needed, not %s" % type(value).__name__)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise StoreInputError("text holds a lone surrogate: not UTF-8") from None
    return "'" + _ESCAPE_RE.sub(_escape_char, value) + "'"


def quote_int(value: int) -> str:
    """A decimal integer literal; bools and anything else are refused (True is not 1 here)."""
    if type(value) is not int:
        raise StoreInputError("an integer value is needed, not %s" % type(value).__name__)
    return str(value)


def addr_bytes(text: str) -> bytes:
    """The 16 bytes stored for an address: IPv6 as is, IPv4 as IPv4-mapped IPv6 (::ffff:a.b.c.d)."""
    if not isinstance(text, str):
        raise StoreInputError("an address must be text, not %s" % type(text).__name__)
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        raise StoreInputError("not an IPv4 or IPv6 address: %r" % text[:80]) from None
    if addr.version == 4:
        return b"\0" * 10 + b"\xff\xff" + addr.packed
    if addr.scope_id:
        raise StoreInputError("an address with a zone (%r) cannot be stored" % text[:80])
    return addr.packed


def addr_text(raw: bytes) -> str:
    """The address text for 16 stored bytes: IPv4-mapped ones are written as IPv4."""
    if len(raw) != 16:
        raise ClickHouseError(-1, "an address column held %d bytes, not 16" % len(raw))
    if raw[:12] == b"\0" * 10 + b"\xff\xff":
        return str(ipaddress.IPv4Address(raw[12:]))
    return str(ipaddress.IPv6Address(raw))


def quote_addr(raw: bytes) -> str:
    """A FixedString(16) literal of 16 address bytes (hex inside unhex: only [0-9a-f] reach SQL)."""
    if not isinstance(raw, bytes) or len(raw) != 16:
        raise StoreInputError("an address literal needs 16 bytes")
    return "toFixedString(unhex('%s'), 16)" % raw.hex()


def network_range(text: str) -> tuple[bytes, bytes]:
    """The first and last stored address (16 bytes each) of a network ("10.0.0.0/8",
    "2001:db8::/32"), an `a-b` range (Maltrail's netfilter form) or one address; a network with
    host bits set is refused."""
    if not isinstance(text, str):
        raise StoreInputError("a network must be text")
    if "-" in text:
        first, _, last = text.partition("-")
        lo, hi = addr_bytes(first.strip()), addr_bytes(last.strip())
        if lo > hi:
            raise StoreInputError("the range %r ends before it starts" % text[:80])
        return lo, hi
    try:
        net = ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        raise StoreInputError("not a network or address: %r (%s)" % (text[:80], exc)) from None
    return addr_bytes(str(net.network_address)), addr_bytes(str(net.broadcast_address))


class _Addr(NamedTuple):
    raw: bytes


def bind(template: str, **values) -> str:
    """`template` with each {name} replaced by `values[name]` rendered as a literal: str → quoted
    string, int → decimal, _Addr → FixedString(16), a list/tuple → (a, b, ...). Anything else is
    refused, so no value reaches the SQL unquoted."""

    def render(v) -> str:
        if isinstance(v, _Addr):
            return quote_addr(v.raw)
        if isinstance(v, str):
            return quote_str(v)
        if isinstance(v, (list, tuple)):
            if not v:
                raise StoreInputError("an empty list cannot be bound")
            return "(" + ", ".join(render(x) for x in v) + ")"
        return quote_int(v)

    return template.format_map({k: render(v) for k, v in values.items()})


# ----------------------------------------------------------------------------------------------
# TabSeparated rows. ClickHouse escapes \b \f \r \n \t \0 \' \\ in what it writes and reads those
# (and \xHH) back; we write the few that must be escaped.

_TSV_OUT = {"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r", "\0": "\\0", "\b": "\\b", "\f": "\\f"}
_TSV_OUT_RE = re.compile(r"[\\\t\n\r\0\b\f]")
_TSV_IN = {"b": "\b", "f": "\f", "r": "\r", "n": "\n", "t": "\t", "0": "\0", "'": "'", "\\": "\\",
           "a": "\a", "v": "\v", "e": "\x1b", "N": None}
_TSV_IN_RE = re.compile(r"\\(x[0-9A-Fa-f]{2}|.)", re.S)


_BYTE_ESCAPES = ["\\x%02x" % b for b in range(256)]


def _tsv_bytes(raw: bytes) -> str:
    """Binary bytes (a FixedString) as a TabSeparated field: every byte as \\xHH."""
    return "".join([_BYTE_ESCAPES[b] for b in raw])


def tsv_field(value: str) -> str:
    return _TSV_OUT_RE.sub(lambda m: _TSV_OUT[m.group(0)], value)


def _tsv_unescape(field: bytes) -> bytes:
    def one(m: re.Match) -> bytes:
        seq = m.group(1)
        if seq[:1] == b"x" and len(seq) == 3:
            return bytes([int(seq[1:], 16)])
        out = _TSV_IN.get(seq.decode("latin-1"))
        if out is None:
            return seq  # ClickHouse drops the backslash of an escape it does not know
        return out.encode("latin-1")
    return re.sub(rb"\\(x[0-9A-Fa-f]{2}|.)", one, field, flags=re.S) if b"\\" in field else field


def parse_tsv(body: bytes) -> list[list[bytes]]:
    """Rows of a TabSeparated answer, each field unescaped to its bytes."""
    if not body:
        return []
    if not body.endswith(b"\n"):
        raise ClickHouseError(-1, "a TabSeparated answer did not end in a newline (cut short?)")
    return [[_tsv_unescape(f) for f in line.split(b"\t")] for line in body[:-1].split(b"\n")]


# ----------------------------------------------------------------------------------------------
# The client


class ClickHouseClient:
    """One ClickHouse server's HTTP interface. Statements are POSTed (the body is the SQL, or the
    INSERT's rows after the statement in the `query` parameter); settings go as URL parameters;
    the user and password travel as HTTP basic authentication, never in the URL."""

    def __init__(self, url: str, database: str = "default", user: str = "default", password: str = "",
                 timeout_s: float = 60.0):
        if not re.fullmatch(r"https?://[^/?#@\s]+/?", url):
            raise StoreInputError("clickhouse_url must be http(s)://host:port with no path, user or query: %r"
                                  % url[:100])
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,62}", database):
            raise StoreInputError("a database name is letters, digits and _ (not starting with a digit): %r"
                                  % database[:100])
        self.url = url.rstrip("/") + "/"
        self.database = database
        # HTTP basic authentication, built here (aiohttp deprecates its helper for this).
        token = base64.b64encode(("%s:%s" % (user, password)).encode("utf-8")).decode("ascii")
        self._headers = {"Authorization": "Basic " + token}
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            # Idle connections are dropped after 1 s, before ClickHouse's own keep_alive_timeout
            # (3 s by default) closes them: a request written onto a connection the server is
            # closing fails with a broken pipe, and an INSERT cannot safely be sent twice (the
            # 1M-event bench failed that way 3 times in 3 on a loaded machine; not since).
            self._session = aiohttp.ClientSession(headers=self._headers, timeout=self._timeout,
                                                  connector=aiohttp.TCPConnector(keepalive_timeout=1.0))
        return self._session

    async def _post(self, params: dict, body: bytes, sql: str) -> bytes:
        try:
            async with self._http().post(self.url, params=params, data=body) as resp:
                answer = await resp.read()
                if resp.status != 200:
                    raise parse_error(resp.status, answer.decode("utf-8", "replace"), sql)
                # An error after the first bytes of an answer arrives inside a 200 body.
                if b"e.displayText() = DB::Exception" in answer[-2048:] and b"\nCode: " in b"\n" + answer[-2048:]:
                    tail = answer[answer.rfind(b"Code: "):].decode("utf-8", "replace")
                    raise parse_error(resp.status, tail, sql)
                return answer
        except (aiohttp.ClientConnectionError, asyncio.TimeoutError) as exc:
            raise ClickHouseUnavailable(-1, "%s: %s" % (type(exc).__name__, exc), 0, sql) from None

    async def execute(self, sql: str, database: str | None = None, **settings) -> bytes:
        """Run one statement (DDL, ALTER, or a SELECT whose raw answer the caller reads)."""
        params = {"database": database or self.database}
        params.update({k: str(v) for k, v in settings.items()})
        return await self._post(params, sql.encode("utf-8"), sql)

    async def select(self, sql: str, **settings) -> list[list[bytes]]:
        """Rows of a SELECT (FORMAT TabSeparated is added), each field's bytes."""
        return parse_tsv(await self.execute(sql + "\nFORMAT TabSeparated", **settings))

    async def insert(self, table: str, columns: Sequence[str], rows: Iterable[Sequence[str]]) -> None:
        """INSERT rows (each a sequence of field texts already in TabSeparated form: ints as
        decimals, strings through tsv_field) into `table` (a name of ours, never user input)."""
        sql = "INSERT INTO %s (%s) FORMAT TabSeparated" % (table, ", ".join(columns))
        body = "".join("\t".join(r) + "\n" for r in rows).encode("utf-8")
        await self._post({"database": self.database, "query": sql}, body, sql)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


# ----------------------------------------------------------------------------------------------
# The schema. Each statement is one request; {db} and {tz} are filled in by the store (both
# checked names), the rest is fixed text.
#
# events: one row per Event. PARTITION BY the day (in the store's time zone) so retention drops
# whole days; ORDER BY (hour, src_ip, ts_us) because every query is a time range (whole hours are
# skipped by the sparse primary index) and, within an hour, the commonest filter is a source
# address or network (threats, fail2ban, a scope), which the index then narrows too.
# Ports: -1 stands for none ('-' in Maltrail lines). id: a random 64-bit number, the tiebreak of
# the newest-first order that a paging cursor needs (two events may share a microsecond).
# log_source, log_day, log_inode, log_end: where in which server's daily log the row's batch
# ends (the id of the server's log directory, the day file's date as YYYYMMDD, its inode, the
# byte offset after the batch). ClickHouse has no transactions, so the index's position in each
# day file (server/store/daylog.py) travels with the rows themselves: max(log_end) is how far a
# day file is indexed, and an INSERT (one block, one part) either holds the rows and their
# position or neither. 0 in all four: rows ingested without a log (the benchmark's raw store).

_SEVERITY_ENUM = "Enum8(%s)" % ", ".join("'%s' = %d" % (s, i + 1) for i, s in enumerate(SEVERITIES))

SCHEMA = [
    "CREATE DATABASE IF NOT EXISTS {db}",
    """CREATE TABLE IF NOT EXISTS {db}.events (
        ts_us UInt64, last_ts_us UInt64, id UInt64,
        ts DateTime('{tz}') MATERIALIZED toDateTime(intDiv(ts_us, 1000000), '{tz}'),
        sensor String, src_ip FixedString(16), src_port Int32, dst_ip FixedString(16), dst_port Int32,
        proto String, type String, trail String, info String, reference String,
        severity %s, count UInt32,
        log_source UInt64 DEFAULT 0, log_day UInt32 DEFAULT 0, log_inode UInt64 DEFAULT 0, log_end UInt64 DEFAULT 0
    ) ENGINE = MergeTree PARTITION BY toYYYYMMDD(ts) ORDER BY (toStartOfHour(ts), src_ip, ts_us)""" % _SEVERITY_ENUM,
    # Per-hour counts by type, severity and sensor together: any of the three (or a pair) is a
    # GROUP BY over this table, a few hundred rows a day.
    """CREATE TABLE IF NOT EXISTS {db}.hourly (
        hour DateTime('{tz}'), type String, severity %s, sensor String, events UInt64, hits UInt64
    ) ENGINE = SummingMergeTree((events, hits)) PARTITION BY toYYYYMMDD(hour)
      ORDER BY (hour, type, severity, sensor)""" % _SEVERITY_ENUM,
    """CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.hourly_mv TO {db}.hourly AS
       SELECT toStartOfHour(ts) AS hour, type, severity, sensor, count() AS events, sum(count) AS hits
       FROM {db}.events GROUP BY hour, type, severity, sensor""",
    # Top-N: per hour, per value. (kind 's' source, 'd' destination, 't' trail; addresses as hex.)
    """CREATE TABLE IF NOT EXISTS {db}.top_hourly (
        hour DateTime('{tz}'), kind FixedString(1), value String, events UInt64
    ) ENGINE = SummingMergeTree(events) PARTITION BY toYYYYMMDD(hour) ORDER BY (hour, kind, value)""",
    """CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.top_src_mv TO {db}.top_hourly AS
       SELECT toStartOfHour(ts) AS hour, toFixedString('s', 1) AS kind, hex(src_ip) AS value, count() AS events
       FROM {db}.events GROUP BY hour, value""",
    """CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.top_dst_mv TO {db}.top_hourly AS
       SELECT toStartOfHour(ts) AS hour, toFixedString('d', 1) AS kind, hex(dst_ip) AS value, count() AS events
       FROM {db}.events GROUP BY hour, value""",
    """CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.top_trail_mv TO {db}.top_hourly AS
       SELECT toStartOfHour(ts) AS hour, toFixedString('t', 1) AS kind, trail AS value, count() AS events
       FROM {db}.events GROUP BY hour, value""",
    # Threats: events grouped by source and trail, with first/last seen, sensors and the highest
    # severity; partial aggregates merged at query time (AggregatingMergeTree).
    """CREATE TABLE IF NOT EXISTS {db}.threats_hourly (
        hour DateTime('{tz}'), src_ip FixedString(16), trail String,
        events AggregateFunction(count), first_us AggregateFunction(min, UInt64),
        last_us AggregateFunction(max, UInt64), sensors AggregateFunction(groupUniqArray, String),
        severity AggregateFunction(max, %s)
    ) ENGINE = AggregatingMergeTree PARTITION BY toYYYYMMDD(hour) ORDER BY (hour, src_ip, trail)""" % _SEVERITY_ENUM,
    """CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.threats_mv TO {db}.threats_hourly AS
       SELECT toStartOfHour(ts) AS hour, src_ip, trail, countState() AS events, minState(ts_us) AS first_us,
              maxState(greatest(ts_us, last_ts_us)) AS last_us, groupUniqArrayState(sensor) AS sensors,
              maxState(severity) AS severity
       FROM {db}.events GROUP BY hour, src_ip, trail""",
]

# The same per day, with the latest event's type, info and reference (argMax by ts_us): a day's
# dashboard ranks one row per pair (30,000 on the bench's day) instead of one per pair and hour,
# and reads the winners' details from it too. Days whose events were inserted before this table
# existed (a database from an older version) are listed in threats_daily_missing and keep being
# answered from threats_hourly: filling them in afterwards could count twice the rows another
# server inserts meanwhile (ClickHouse has no transaction to make the copy and the view one step).
THREATS_DAILY = [
    """CREATE TABLE IF NOT EXISTS {db}.threats_daily (
        day DateTime('{tz}'), src_ip FixedString(16), trail String,
        events AggregateFunction(count), first_us AggregateFunction(min, UInt64),
        last_us AggregateFunction(max, UInt64), sensors AggregateFunction(groupUniqArray, String),
        severity AggregateFunction(max, %s), type AggregateFunction(argMax, String, UInt64),
        info AggregateFunction(argMax, String, UInt64), reference AggregateFunction(argMax, String, UInt64)
    ) ENGINE = AggregatingMergeTree PARTITION BY toYYYYMMDD(day) ORDER BY (day, src_ip, trail)""" % _SEVERITY_ENUM,
    """CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.threats_daily_mv TO {db}.threats_daily AS
       SELECT toStartOfDay(ts) AS day, src_ip, trail, countState() AS events, minState(ts_us) AS first_us,
              maxState(greatest(ts_us, last_ts_us)) AS last_us, groupUniqArrayState(sensor) AS sensors,
              maxState(severity) AS severity, argMaxState(type, ts_us) AS type, argMaxState(info, ts_us) AS info,
              argMaxState(reference, ts_us) AS reference
       FROM {db}.events GROUP BY day, src_ip, trail""",
]
THREATS_DAILY_MISSING = "CREATE TABLE IF NOT EXISTS {db}.threats_daily_missing (day Date) ENGINE = Log"

TABLES = ("events", "hourly", "top_hourly", "threats_hourly", "threats_daily")
EVENT_COLUMNS = ("ts_us", "last_ts_us", "id", "sensor", "src_ip", "src_port", "dst_ip", "dst_port", "proto",
                 "type", "trail", "info", "reference", "severity", "count")
LOG_COLUMNS = ("log_source", "log_day", "log_inode", "log_end")
_SELECT_EVENT = ("ts_us, last_ts_us, id, sensor, hex(src_ip), src_port, hex(dst_ip), dst_port, proto, type, "
                 "trail, info, reference, severity, count")
INSERT_BATCH_ROWS = 100_000


# ----------------------------------------------------------------------------------------------
# Queries and answers


class EventQuery(NamedTuple):
    """What `events` is asked: [start_us, end_us) newest first, every given filter ANDed.
    src/dst/addr: networks or addresses (any of the list; `addr` matches either side); port
    matches either side; info: a substring; scope: the user's networks (an event is visible when
    its source or destination is in one; None means all); cursor: from the previous Page."""
    start_us: int
    end_us: int
    src: tuple[str, ...] = ()
    dst: tuple[str, ...] = ()
    addr: tuple[str, ...] = ()
    port: int | None = None
    src_port: int | None = None
    dst_port: int | None = None
    proto: str | None = None
    type: str | None = None
    trail: str | None = None
    info: str | None = None           # a substring, ASCII case-insensitive
    severity: str | tuple[str, ...] | None = None    # one severity, or any of several
    sensor: str | None = None
    scope: tuple[str, ...] | None = None
    cursor: str | None = None
    limit: int = 100
    budget_ms: int = 5000
    terms: tuple = ()                 # server.store.Term clauses, all of which hold (_term_condition)


class Page(NamedTuple):
    events: list          # list[Event], newest first
    next_cursor: str | None   # None on the last page
    partial: bool         # the time budget ran out: rows may be missing from this page


class Threat(NamedTuple):
    src_ip: str
    trail: str
    events: int
    first_us: int
    last_us: int
    sensors: tuple[str, ...]
    severity: str
    type: str = ""                    # of the pair's latest event (the greatest ts_us)
    info: str = ""
    reference: str = ""
    spark: tuple[int, ...] = ()       # events per equal slice of the range, oldest first


_MAX_LIMIT = 10_000
_MAX_SPARK = 96
_DAY_US = 86_400_000_000


def _addr_text_sql(col: str) -> str:
    """SQL for an address column's text (IPv4-mapped ones as IPv4), used only to ORDER ties the
    way the SQLite backend does (by the address text); answers are rendered in Python."""
    return ("if(substring(%(c)s, 1, 12) = unhex('00000000000000000000FFFF'), "
            "IPv4NumToString(reinterpretAsUInt32(reverse(substring(%(c)s, 13, 4)))), IPv6NumToString(%(c)s))"
            % {"c": col})
_COUNT_KEYS = {"type": "type", "severity": "severity", "sensor": "sensor"}
_TOP_FIELDS = {"src_ip": "s", "dst_ip": "d", "trail": "t"}


def _net_condition(column: str, networks: Sequence[str]) -> str:
    parts = []
    for text in networks:
        lo, hi = network_range(text)
        parts.append(bind("%s BETWEEN {lo} AND {hi}" % column, lo=_Addr(lo), hi=_Addr(hi)))
    return "(" + " OR ".join(parts) + ")"


def _scope_condition(scope: Sequence[str] | None) -> list[str]:
    if not scope:
        return []      # None or empty: every event (Maltrail's empty netfilter)
    return ["(%s OR %s)" % (_net_condition("src_ip", scope), _net_condition("dst_ip", scope))]


# Filter terms (server/store/__init__.py Term). Text matching is ASCII case-insensitive, as the
# SQLite backend's LIKE is: ClickHouse's lower() folds A-Z only, and the pattern is folded the same
# way here (str.lower would fold other letters too, which lower() would then never match).
_LIKE_ESCAPE_RE = re.compile(r"[\\%_]")


def _like_pattern(value: str, anchored: bool) -> str:
    """A LIKE pattern (before string quoting) for a Term value: `*` is any run of characters, every
    other character literal (LIKE's own % _ and backslash escaped with a backslash, which 18.16 honours);
    not `anchored`: a substring anywhere."""
    pieces = [_LIKE_ESCAPE_RE.sub(lambda m: "\\" + m.group(0), p) for p in ascii_lower(value).split("*")]
    body = "%".join(pieces)
    return body if anchored else "%" + body + "%"


def _text_match(column: str, value: str, anchored: bool) -> str:
    if not isinstance(value, str):
        raise StoreInputError("a filter value must be text")
    if "*" not in value:
        if anchored:
            return bind("lower(%s) = {v}" % column, v=ascii_lower(value))
        return bind("positionCaseInsensitive(%s, {v}) > 0" % column, v=value)
    return bind("lower(%s) LIKE {p}" % column, p=_like_pattern(value, anchored))


def _key_ranges(column: str, values) -> list[str]:
    out = []
    for text in values:
        if not isinstance(text, str):
            raise StoreInputError("an address filter value must be text")
        try:
            lo, hi = key_range(text)
        except AddressError as exc:
            raise StoreInputError(str(exc)) from None
        out.append(bind("%s BETWEEN {lo} AND {hi}" % column, lo=_Addr(lo), hi=_Addr(hi)))
    return out


def _term_condition(term) -> str:
    """The SQL of one filter Term: any of its values holds, or with `negate`, none does."""
    field, values = term.field, tuple(term.values)
    if not values:
        raise StoreInputError("a filter term on %s has no value" % field)
    if field in ("src", "dst"):
        parts = _key_ranges("src_ip" if field == "src" else "dst_ip", values)
    elif field == "address":
        parts = _key_ranges("src_ip", values) + _key_ranges("dst_ip", values)
    elif field == "port":
        ports = []
        for v in values:
            if not isinstance(v, str) or not re.fullmatch(r"\d{1,5}", v) or int(v) > 65535:
                raise StoreInputError("a port filter is a number 0-65535, not %r" % (v,)[:80])
            ports.append(int(v))
        parts = [bind("src_port IN {p} OR dst_port IN {p}", p=ports)]
    elif field in ("proto", "type"):
        if not all(isinstance(v, str) for v in values):
            raise StoreInputError("a %s filter value must be text" % field)
        parts = [bind("upper(%s) IN {v}" % field, v=[ascii_upper(v) for v in values])]
    elif field == "severity":
        if not all(isinstance(v, str) and v in SEVERITIES for v in values):
            raise StoreInputError("a severity filter is one of %s" % ", ".join(SEVERITIES))
        parts = [bind("severity IN {v}", v=list(values))]
    elif field in ("trail", "sensor"):
        parts = [_text_match(field, v, anchored=True) for v in values]
    elif field == "info":
        parts = [_text_match("info", v, anchored=False) for v in values]
    elif field == "text":
        parts = ["%s OR %s" % (_text_match("trail", v, anchored=False), _text_match("info", v, anchored=False))
                 for v in values]
    else:
        raise StoreInputError("unknown filter field %r" % (field,))
    any_of = "(" + " OR ".join("(%s)" % p for p in parts) + ")"
    return "NOT " + any_of if term.negate else any_of


def _terms_condition(terms) -> list[str]:
    return [_term_condition(t) for t in terms or ()]


def _exclude_condition(pairs) -> list[str]:
    """(source address, trail) pairs left out (triage: hidden or suppressed), the trail in any case.
    A source that is not an address matches no event, so it needs no clause."""
    keep = []
    for pair in pairs or ():
        if not isinstance(pair, (tuple, list)) or len(pair) != 2 or not all(isinstance(x, str) for x in pair):
            raise StoreInputError("an excluded pair is (source address, trail)")
        try:
            keep.append((_Addr(addr_bytes(pair[0])), ascii_lower(pair[1])))
        except StoreInputError:
            continue
    # The trail compared case-insensitively (the store contract): lower() folds A-Z only, so the
    # pairs are folded the same way here.
    return [bind("(src_ip, lower(trail)) NOT IN {pairs}", pairs=keep)] if keep else []



def _range_condition(start_us: int, end_us: int, tz: str) -> list[str]:
    # ts (seconds) narrows by the primary key; ts_us is the exact bound.
    return [bind("ts >= toDateTime({s}, '%s') AND ts <= toDateTime({e}, '%s')" % (tz, tz),
                 s=start_us // 1_000_000, e=max(0, (end_us - 1)) // 1_000_000),
            bind("ts_us >= {s} AND ts_us < {e}", s=start_us, e=end_us)]


def _check_range(start_us, end_us) -> None:
    for v in (start_us, end_us):
        if type(v) is not int or v < 0 or v >= 1 << 63:
            raise StoreInputError("a time bound must be microseconds since the epoch, not %r" % (v,))
    if end_us < start_us:
        raise StoreInputError("the range ends before it starts")


def _cursor_parse(cursor: str) -> tuple[int, int]:
    m = re.fullmatch(r"(\d{1,20})\.(\d{1,20})", cursor or "")
    if m is None or int(m.group(1)) >= 1 << 64 or int(m.group(2)) >= 1 << 64:
        raise StoreInputError("not a cursor of this store: %r" % (cursor or "")[:80])
    return int(m.group(1)), int(m.group(2))


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "strict")


def _port(raw: bytes) -> int | None:
    v = int(raw)
    return None if v < 0 else v


def _port_field(port) -> str:
    if port is None:
        return "-1"
    if type(port) is not int or not 0 <= port <= 65535:
        raise StoreInputError("a port is 0..65535 or None, not %r" % (port,))
    return str(port)


class ClickHouseStore:
    """The event store on ClickHouse (see the module docstring for the interface)."""

    def __init__(self, url: str, database: str = "maltrail", user: str = "default", password: str = "",
                 timezone: str = "UTC", timeout_s: float = 60.0):
        try:
            self._zone = zoneinfo.ZoneInfo(timezone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise StoreInputError("not a time zone name: %r" % timezone[:80]) from None
        if not re.fullmatch(r"[A-Za-z0-9_+\-/]+", timezone):
            raise StoreInputError("not a time zone name: %r" % timezone[:80])
        self.timezone = timezone
        self.client = ClickHouseClient(url, database, user, password, timeout_s)
        self.db = database
        # Row ids need to be distinct, not secret: a fast generator seeded from the OS.
        self._ids = random.Random(os.urandom(16))
        # Days threats_daily lacks rows of (_create_threats_daily); None: not read yet, so
        # threats_daily is not used.
        self._daily_missing: set[datetime.date] | None = None

    async def close(self) -> None:
        await self.client.close()

    async def create(self) -> None:
        """The database, tables and views (IF NOT EXISTS: safe on every start, and from several
        servers sharing one ClickHouse)."""
        for stmt in SCHEMA:
            await self.client.execute(stmt.replace("{db}", self.db).replace("{tz}", self.timezone),
                                      database="default")
        await self._create_threats_daily()
        # A database made before the log columns existed gets them (18.16 has no ADD COLUMN IF
        # NOT EXISTS); their DEFAULT 0 marks the old rows as from no log.
        have = {_text(r[0]) for r in await self.client.select(bind(
            "SELECT name FROM system.columns WHERE database = {db} AND table = 'events'", db=self.db))}
        for name in LOG_COLUMNS:
            if name not in have:
                await self.client.execute("ALTER TABLE %s.events ADD COLUMN %s %s DEFAULT 0"
                                          % (self.db, name, "UInt32" if name == "log_day" else "UInt64"))

    async def _create_threats_daily(self) -> None:
        """The per-day threats roll-up. When its view is new to a database already holding events,
        the days held are recorded as missing from it, AFTER the view exists: a day with a row
        inserted before the view is then surely listed (a day listed whose rows all came after
        is only answered the slower way)."""
        def sql(stmt):
            return stmt.replace("{db}", self.db).replace("{tz}", self.timezone)
        await self.client.execute(sql(THREATS_DAILY_MISSING), database="default")
        had_view = await self.client.select(bind(
            "SELECT name FROM system.tables WHERE database = {db} AND name = 'threats_daily_mv'", db=self.db))
        for stmt in THREATS_DAILY:
            await self.client.execute(sql(stmt), database="default")
        if not had_view:
            held = await self.days()
            if held:
                await self.client.insert(self.db + ".threats_daily_missing", ("day",),
                                         [[d.isoformat()] for d in held])
        self._daily_missing = {d for d in (datetime.date.fromisoformat(_text(r[0])) for r in
                               await self.client.select("SELECT DISTINCT day FROM %s.threats_daily_missing" % self.db))}

    # -- ingest --------------------------------------------------------------------------------

    def _row(self, i: int, ev: Event) -> list[str]:
        if not isinstance(ev, Event):
            raise StoreInputError("item %d is not an Event" % i)
        try:
            for name in ("ts_us", "count"):
                v = getattr(ev, name)
                if type(v) is not int or v < 0 or v >= 1 << 63:
                    raise StoreInputError("%s must be a non-negative integer, not %r" % (name, v))
            if ev.count >= 1 << 32:
                raise StoreInputError("count too large: %r" % ev.count)
            last = ev.last_ts_us
            if type(last) is not int or last < 0 or last >= 1 << 63:
                raise StoreInputError("last_ts_us must be a non-negative integer, not %r" % (last,))
            if ev.severity not in SEVERITIES:
                raise StoreInputError("severity must be one of %s, not %r" % ("/".join(SEVERITIES), ev.severity))
            texts = []
            for name in ("sensor", "proto", "type", "trail", "info", "reference"):
                v = getattr(ev, name)
                if not isinstance(v, str):
                    raise StoreInputError("%s must be text, not %s" % (name, type(v).__name__))
                v.encode("utf-8")
                texts.append(tsv_field(v))
            src, dst = addr_bytes(ev.src_ip), addr_bytes(ev.dst_ip)
            return [str(ev.ts_us), str(last or ev.ts_us), str(self._ids.getrandbits(64)), texts[0],
                    _tsv_bytes(src), _port_field(ev.src_port), _tsv_bytes(dst), _port_field(ev.dst_port),
                    texts[1], texts[2], texts[3], texts[4], texts[5], ev.severity, str(ev.count)]
        except UnicodeEncodeError:
            raise StoreInputError("event %d: text holds a lone surrogate" % i) from None
        except StoreInputError as exc:
            raise StoreInputError("event %d: %s" % (i, exc)) from None

    async def ingest(self, events: Sequence[Event], log_tag: tuple[int, int, int, int] | None = None) -> None:
        """Insert events. Every event is checked first: one bad event refuses the whole call with
        StoreInputError (nothing sent). Stored once ClickHouse answers (its INSERT is atomic per
        block of up to max_insert_block_size rows; batches above INSERT_BATCH_ROWS go in several
        INSERTs, so an error part way may have stored the earlier ones).

        `log_tag` (log_source, log_day, log_inode, log_end): the events are one day file's pairs
        up to log_end, sent as ONE insert whatever their number (the caller keeps it under
        max_insert_block_size), so that the rows and the position they carry arrive together."""
        rows = [self._row(i, ev) for i, ev in enumerate(events)]
        if log_tag is not None:
            tag = [quote_int(v) for v in log_tag]
            await self.client.insert(self.db + ".events", EVENT_COLUMNS + LOG_COLUMNS, [r + tag for r in rows])
            return
        for start in range(0, len(rows), INSERT_BATCH_ROWS):
            await self.client.insert(self.db + ".events", EVENT_COLUMNS, rows[start:start + INSERT_BATCH_ROWS])

    async def log_positions(self, log_source: int) -> dict[tuple[int, int], int]:
        """{(log_day, log_inode): max(log_end)}: how far each day file of one server's log is in
        the events table."""
        rows = await self.client.select(bind(
            "SELECT log_day, log_inode, max(log_end) FROM %s.events WHERE log_source = {s} GROUP BY log_day, log_inode"
            % self.db, s=log_source))
        return {(int(r[0]), int(r[1])): int(r[2]) for r in rows}

    # -- events --------------------------------------------------------------------------------

    def _event_where(self, q: EventQuery) -> list[str]:
        _check_range(q.start_us, q.end_us)
        where = _range_condition(q.start_us, q.end_us, self.timezone)
        if q.src:
            where.append(_net_condition("src_ip", q.src))
        if q.dst:
            where.append(_net_condition("dst_ip", q.dst))
        if q.addr:
            where.append("(%s OR %s)" % (_net_condition("src_ip", q.addr), _net_condition("dst_ip", q.addr)))
        for name, col in (("port", None), ("src_port", "src_port"), ("dst_port", "dst_port")):
            v = getattr(q, name)
            if v is not None:
                _port_field(v)
                where.append(bind("(src_port = {p} OR dst_port = {p})", p=v) if col is None
                             else bind("%s = {p}" % col, p=v))
        for name in ("proto", "type", "trail", "sensor"):
            v = getattr(q, name)
            if v is not None:
                where.append(bind("%s = {v}" % name, v=v))
        if q.severity:
            wanted = (q.severity,) if isinstance(q.severity, str) else tuple(q.severity)
            if not all(isinstance(v, str) and v in SEVERITIES for v in wanted):
                raise StoreInputError("severity must be one of %s" % "/".join(SEVERITIES))
            where.append(bind("severity IN {v}", v=list(wanted)))
        if q.info is not None:
            # ASCII case-insensitive, as the SQLite backend's LIKE is.
            where.append(bind("positionCaseInsensitive(info, {v}) > 0", v=q.info))
        where += _scope_condition(q.scope)
        where += _terms_condition(q.terms)
        return where

    async def events(self, q: EventQuery) -> Page:
        """A page of events, newest first (ts_us, then id, descending). `partial` is set when the
        time budget (ClickHouse's max_execution_time, in break mode) ran out."""
        if type(q.limit) is not int or not 1 <= q.limit <= _MAX_LIMIT:
            raise StoreInputError("limit must be 1..%d" % _MAX_LIMIT)
        where = self._event_where(q)[2:]      # the filters; the range is set per window below
        end_us = q.end_us
        if q.cursor is not None:
            c_ts, c_id = _cursor_parse(q.cursor)
            where.append(bind("(ts_us < {t} OR (ts_us = {t} AND id < {i}))", t=c_ts, i=c_id))
            end_us = min(end_us, c_ts + 1)
        # Two passes: 18.16 sorts every matching row with every selected column, so first find
        # the page's keys (two UInt64 columns), then read whole rows for those keys only, which
        # the sort key's hour narrows to a granule or two.
        # The keys are looked for in windows walking back from the newest day held: one day, then
        # twice as long each time, until the page is full. 18.16 cannot read a table in sort order,
        # so a page over 30 days read and top-N sorted every event of the 30 (211 ms for 10M
        # events) where the newest day alone nearly always fills it (17 ms).
        held = await self.days()
        if held:
            newest = datetime.datetime.combine(held[-1] + datetime.timedelta(days=2), datetime.time(), self._zone)
            end_us = min(end_us, int(newest.timestamp()) * 1_000_000)
        else:
            end_us = q.start_us
        deadline = time.monotonic() + q.budget_ms / 1000.0
        keys: list = []
        partial = False
        hi, span = end_us, _DAY_US
        while hi > q.start_us and len(keys) <= q.limit:
            lo = max(q.start_us, hi - span)
            left_ms = int((deadline - time.monotonic()) * 1000)
            if left_ms < 1:
                partial = True
                break
            sql = "SELECT ts_us, id FROM %s.events WHERE %s ORDER BY ts_us DESC, id DESC LIMIT %d" % (
                self.db, " AND ".join(_range_condition(lo, hi, self.timezone) + where), q.limit + 1 - len(keys))
            found, cut = await self._timed_select(sql, left_ms)
            keys += found
            if cut:
                partial = True
                break
            hi, span = lo, span * 2
        rows = []
        if keys:
            first, last = int(keys[-1][0]), int(keys[0][0])
            sql = bind("SELECT %s FROM %s.events WHERE %s AND id IN {ids} ORDER BY ts_us DESC, id DESC"
                       % (_SELECT_EVENT, self.db, " AND ".join(_range_condition(first, last + 1, self.timezone))),
                       ids=[int(k[1]) for k in keys[:q.limit]])
            rows = await self.client.select(sql)
            if len(rows) != min(len(keys), q.limit):
                raise ClickHouseError(-1, "a page's rows changed between its two passes")
            rows += keys[q.limit:]     # only its presence matters: there is a next page
        out = []
        for r in rows[:min(len(keys), q.limit)]:
            if len(r) != 15:
                raise ClickHouseError(-1, "an events row held %d fields, not 15" % len(r))
            out.append((int(r[2]), Event(
                ts_us=int(r[0]), sensor=_text(r[3]), src_ip=addr_text(bytes.fromhex(_text(r[4]))),
                src_port=_port(r[5]), dst_ip=addr_text(bytes.fromhex(_text(r[6]))), dst_port=_port(r[7]),
                proto=_text(r[8]), type=_text(r[9]), trail=_text(r[10]), info=_text(r[11]),
                reference=_text(r[12]), severity=_text(r[13]), count=int(r[14]), last_ts_us=int(r[1]))))
        nxt = None
        if out and (len(rows) > q.limit or partial):
            nxt = "%d.%d" % (out[-1][1].ts_us, out[-1][0])
        return Page([ev for _, ev in out], nxt, partial)

    async def _timed_select(self, sql: str, budget_ms: int) -> tuple[list, bool]:
        if type(budget_ms) is not int or budget_ms < 1:
            raise StoreInputError("budget_ms must be a positive integer")
        budget_s = max(1, -(-budget_ms // 1000))   # 18.16 takes whole seconds
        started = time.monotonic()
        rows = await self.client.select(sql, max_execution_time=budget_s, timeout_overflow_mode="break")
        # In break mode ClickHouse stops reading at the budget and answers what it has, without
        # saying so: an answer that took the whole budget is reported as possibly partial.
        return rows, time.monotonic() - started >= budget_s

    # -- aggregates ----------------------------------------------------------------------------

    def _hour_aligned(self, us: int) -> bool:
        if us % 1_000_000:
            return False
        t = datetime.datetime.fromtimestamp(us // 1_000_000, self._zone)
        return t.minute == 0 and t.second == 0

    def _use_rollups(self, start_us: int, end_us: int, scope, terms=()) -> bool:
        # The roll-ups hold whole hours, every event: a range cut inside an hour, a user limited
        # to some networks or a filter is answered from the events themselves.
        return (scope is None and not terms and self._hour_aligned(start_us) and self._hour_aligned(end_us))

    def _hour_range(self, start_us: int, end_us: int) -> str:
        return bind("hour >= toDateTime({s}, '%s') AND hour < toDateTime({e}, '%s')" % (self.timezone, self.timezone),
                    s=start_us // 1_000_000, e=end_us // 1_000_000)

    def _matching(self, columns: str, start_us: int, end_us: int, scope, terms, row_cap: int,
                  extra: Sequence[str] = ()) -> str:
        """A subquery of the events in range, scope and every term, at most `row_cap` of them (the
        rows an aggregate may examine; LIMIT without ORDER BY stops the read there)."""
        if type(row_cap) is not int or row_cap < 1:
            raise StoreInputError("row_cap must be a positive integer")
        where = (_range_condition(start_us, end_us, self.timezone) + _scope_condition(scope)
                 + _terms_condition(terms) + list(extra))
        return "(SELECT %s FROM %s.events WHERE %s LIMIT %d)" % (columns, self.db, " AND ".join(where), row_cap)

    async def _select_budget(self, sql: str, deadline: float) -> tuple[list, bool]:
        """A select within what is left of a query's time budget: (rows, cut)."""
        left_ms = int((deadline - time.monotonic()) * 1000)
        if left_ms < 1:
            return [], True
        return await self._timed_select(sql, left_ms)

    def _rollup_plan(self, start_us: int, end_us: int) -> tuple[str | None, str | None]:
        """How threats_daily and threats_hourly share an hour-aligned range: the conditions on
        each (None: that table has no part): the whole days of the store's zone in the range that
        threats_daily holds in full from the first, the other hours from the second."""
        if self._daily_missing is None:
            return None, self._hour_range(start_us, end_us)
        zone = self._zone

        def midnight_s(day: datetime.date) -> int:
            return int(datetime.datetime.combine(day, datetime.time(), zone).timestamp())

        first = datetime.datetime.fromtimestamp(start_us // 1_000_000, zone).date()
        if midnight_s(first) * 1_000_000 < start_us:
            first += datetime.timedelta(days=1)
        last = datetime.datetime.fromtimestamp(end_us // 1_000_000, zone).date()    # whole days end before it
        runs = []       # [start, end) in seconds: the whole days, less those threats_daily lacks
        day = first
        for gap in sorted(d for d in self._daily_missing if first <= d < last) + [last]:
            if day < gap:
                runs.append((midnight_s(day), midnight_s(gap)))
            day = gap + datetime.timedelta(days=1)
        if not runs:
            return None, self._hour_range(start_us, end_us)

        def within(column: str, a: int, b: int) -> str:
            return bind("(%s >= toDateTime({a}, '%s') AND %s < toDateTime({b}, '%s'))"
                        % (column, self.timezone, column, self.timezone), a=a, b=b)

        days_sql = "(%s)" % " OR ".join(within("day", a, b) for a, b in runs)
        if sum(b - a for a, b in runs) * 1_000_000 == end_us - start_us:
            return days_sql, None
        return days_sql, " AND ".join([self._hour_range(start_us, end_us)]
                                      + ["NOT " + within("hour", a, b) for a, b in runs])

    @staticmethod
    def _deadline(budget_ms) -> float:
        if type(budget_ms) is not int or budget_ms < 1:
            raise StoreInputError("budget_ms must be a positive integer")
        return time.monotonic() + budget_ms / 1000.0

    @staticmethod
    def _split_totals(rows: list) -> tuple[list, list | None]:
        """The rows and the totals row of a WITH TOTALS answer (TabSeparated puts an empty line
        between them)."""
        for i, r in enumerate(rows):
            if r == [b""]:
                return rows[:i], (rows[i + 1] if i + 1 < len(rows) else None)
        return rows, None

    async def counts(self, start_us: int, end_us: int, by: str = "type", bucket: str = "hour",
                     scope: Sequence[str] | None = None, **filters) -> list[tuple[int, str, int]]:
        """(bucket start in µs, key, events) for each bucket and value of `by` (type, severity or
        sensor), oldest bucket first, then by key; buckets are hours or days of the store's zone.
        `filters`: terms, row_cap, budget_ms (aggregate_counts)."""
        return (await self.aggregate_counts(start_us, end_us, by, bucket, scope, **filters))[0]

    async def aggregate_counts(self, start_us: int, end_us: int, by: str = "type", bucket: str = "hour",
                               scope: Sequence[str] | None = None, terms=(), row_cap: int = DEFAULT_ROW_CAP,
                               budget_ms: int = DEFAULT_BUDGET_MS) -> tuple[list[tuple[int, str, int]], bool]:
        """counts() and whether the answer is partial (the row cap reached or the budget spent)."""
        _check_range(start_us, end_us)
        if by not in _COUNT_KEYS:
            raise StoreInputError("counts by type, severity or sensor, not %r" % (by,))
        if bucket not in ("hour", "day"):
            raise StoreInputError("bucket is hour or day, not %r" % (bucket,))
        deadline = self._deadline(budget_ms)
        key = _COUNT_KEYS[by]
        rollup = self._use_rollups(start_us, end_us, scope, terms)
        if rollup:
            b = "hour" if bucket == "hour" else "toStartOfDay(hour)"
            sql = ("SELECT toUnixTimestamp(%s) AS b, %s AS k, sum(events) FROM %s.hourly WHERE %s "
                   "GROUP BY b, k ORDER BY b, k" % (b, key, self.db, self._hour_range(start_us, end_us)))
        else:
            b = "toStartOfHour(ts)" if bucket == "hour" else "toStartOfDay(ts)"
            sql = ("SELECT toUnixTimestamp(%s) AS b, %s AS k, count() FROM %s "
                   "GROUP BY b, k ORDER BY b, k" % (b, key, self._matching("ts, " + key, start_us, end_us, scope,
                                                                          terms, row_cap)))
        rows, cut = await self._select_budget(sql, deadline)
        # Sorted here by the key's text (ClickHouse orders the severity Enum by its rank).
        out = sorted((int(r[0]) * 1_000_000, _text(r[1]), int(r[2])) for r in rows)
        return out, cut or (not rollup and sum(r[2] for r in out) >= row_cap)

    async def top(self, start_us: int, end_us: int, field: str = "src_ip", n: int = 10,
                  scope: Sequence[str] | None = None, **filters) -> list[tuple[str, int]]:
        """The n commonest values of `field` (src_ip, dst_ip or trail) with their event counts,
        most first (ties by the value's text). `filters`: terms, row_cap, budget_ms."""
        return (await self.aggregate_top(start_us, end_us, field, n, scope, **filters))[0]

    async def aggregate_top(self, start_us: int, end_us: int, field: str = "src_ip", n: int = 10,
                            scope: Sequence[str] | None = None, terms=(), row_cap: int = DEFAULT_ROW_CAP,
                            budget_ms: int = DEFAULT_BUDGET_MS) -> tuple[list[tuple[str, int]], bool]:
        """top() and whether the answer is partial."""
        _check_range(start_us, end_us)
        if field not in _TOP_FIELDS:
            raise StoreInputError("top of src_ip, dst_ip or trail, not %r" % (field,))
        if type(n) is not int or not 1 <= n <= _MAX_LIMIT:
            raise StoreInputError("n must be 1..%d" % _MAX_LIMIT)
        deadline = self._deadline(budget_ms)
        rollup = self._use_rollups(start_us, end_us, scope, terms)
        if rollup:
            text = "value" if field == "trail" else _addr_text_sql("toFixedString(unhex(value), 16)")
            sql = bind("SELECT value, sum(events) AS c, %s AS v FROM %s.top_hourly WHERE %s AND kind = {k} "
                       "GROUP BY value ORDER BY c DESC, v LIMIT {n}"
                       % (text, self.db, self._hour_range(start_us, end_us)), k=_TOP_FIELDS[field], n=n)
        else:
            col = "hex(%s)" % field if field != "trail" else "trail"
            text = "trail" if field == "trail" else _addr_text_sql(field)
            # WITH TOTALS: the count over every value, so a cut at row_cap shows past the top n.
            sql = bind("SELECT %s AS value, count() AS c, any(%s) AS v FROM %s GROUP BY value WITH TOTALS "
                       "ORDER BY c DESC, v LIMIT {n}"
                       % (col, text, self._matching(field, start_us, end_us, scope, terms, row_cap)), n=n)
        rows, cut = await self._select_budget(sql, deadline)
        rows, totals = self._split_totals(rows)
        out = []
        for r in rows:
            value = _text(r[0])
            out.append((addr_text(bytes.fromhex(value)) if field != "trail" else value, int(r[1])))
        return out, cut or (totals is not None and int(totals[1]) >= row_cap)

    async def threats(self, start_us: int, end_us: int, n: int = 100,
                      scope: Sequence[str] | None = None, **filters) -> list[Threat]:
        """Events grouped by source and trail, most events first, ties by the source's text, then
        the trail; sensors sorted. `filters`: terms, exclude, sort, spark, row_cap, budget_ms
        (aggregate_threats)."""
        return (await self.aggregate_threats(start_us, end_us, n, scope, **filters))[0]

    async def aggregate_threats(self, start_us: int, end_us: int, n: int = 100,
                                scope: Sequence[str] | None = None, terms=(), exclude=(), sort: str = "-events",
                                spark: int = 0, row_cap: int = DEFAULT_ROW_CAP,
                                budget_ms: int = DEFAULT_BUDGET_MS) -> tuple[list[Threat], bool]:
        """The first n (source, trail) pairs in `sort` order (THREAT_SORTS; "-" descending; ties by
        most events, then the source's text, then the trail), leaving out the `exclude` pairs, with
        the latest event's type, info and reference and, for `spark` > 0, the events in each of
        `spark` equal slices of [start_us, end_us); and whether the answer is partial. Sensor
        names travel hex-encoded so no byte of a name can split the list."""
        _check_range(start_us, end_us)
        if type(n) is not int or not 1 <= n <= _MAX_LIMIT:
            raise StoreInputError("n must be 1..%d" % _MAX_LIMIT)
        if not isinstance(sort, str) or sort.lstrip("-") not in THREAT_SORTS or sort.startswith("--"):
            raise StoreInputError("sort threats by one of %s (\"-\" first: descending), not %r"
                                  % (", ".join(THREAT_SORTS), sort))
        if type(spark) is not int or not 0 <= spark <= _MAX_SPARK or (spark and end_us <= start_us):
            raise StoreInputError("spark is 0..%d slices of a non-empty range" % _MAX_SPARK)
        deadline = self._deadline(budget_ms)
        excluded = _exclude_condition(exclude)
        key, desc = sort.lstrip("-"), sort.startswith("-")
        # Pass 1 ranks the (source, trail) pairs by the sort key alone; pass 2 computes the rest
        # for the n winners only (a day can hold a million pairs, and the per-pair arrays and the
        # latest event's strings are what costs).
        rollup = self._use_rollups(start_us, end_us, scope, terms)
        days_sql, hours_sql = self._rollup_plan(start_us, end_us) if rollup else (None, None)
        if rollup:
            # Whole days from threats_daily, the hours around them from threats_hourly.
            parts = ["SELECT src_ip, trail, events, first_us, last_us, severity FROM %s.%s WHERE %s"
                     % (self.db, table, " AND ".join([cond] + excluded))
                     for table, cond in (("threats_daily", days_sql), ("threats_hourly", hours_sql)) if cond]
            source = "(%s)" % " UNION ALL ".join(parts)
            aggregates = {"events": "countMerge(events)", "first": "minMerge(first_us)",
                          "last": "maxMerge(last_us)", "severity": "maxMerge(severity)"}
        else:
            source = self._matching("src_ip, trail, ts_us, last_ts_us, severity", start_us, end_us, scope, terms,
                                    row_cap, excluded)
            aggregates = {"events": "count()", "first": "min(ts_us)", "last": "max(greatest(ts_us, last_ts_us))",
                          "severity": "max(severity)"}
        direction = " DESC" if desc else ""
        src_text = _addr_text_sql("src_ip")
        # sort=src is address order (the 16-byte keys: IPv4 before IPv6, 10.0.0.2 before 10.0.0.10),
        # as SQLite sorts it; ties go by the source's text.
        order = {"events": ["c" + direction], "src": ["src_ip" + direction, "c DESC"],
                 "trail": ["trail" + direction, "c DESC"]}.get(key, ["k" + direction, "c DESC"])
        sort_value = aggregates.get(key, "0")
        sql = ("SELECT hex(src_ip), trail, %s AS c, %s AS k FROM %s GROUP BY src_ip, trail%s ORDER BY %s LIMIT %d"
               % (aggregates["events"], sort_value, source, "" if rollup else " WITH TOTALS",
                  ", ".join(order + [src_text, "trail"]), n))
        ranked, cut = await self._select_budget(sql, deadline)
        ranked, totals = self._split_totals(ranked)
        partial = cut or (totals is not None and int(totals[2]) >= row_cap)
        if not ranked or cut:
            return [], partial
        pairs = [(_Addr(bytes.fromhex(_text(r[0]))), _text(r[1])) for r in ranked]
        # Pass 2: the winners' details, from threats_daily when it covers the whole range, else
        # from the events (the hourly roll-up holds no latest event): their rows in range, scope
        # and terms.
        winners = bind("(src_ip, trail) IN {pairs}", pairs=pairs)
        where = (_range_condition(start_us, end_us, self.timezone) + _scope_condition(scope) + _terms_condition(terms)
                 + [winners])
        if days_sql and not hours_sql:
            sql = ("SELECT hex(src_ip), trail, minMerge(first_us), maxMerge(last_us), "
                   "arrayStringConcat(arrayMap(x -> hex(x), arraySort(groupUniqArrayMerge(sensors))), ','), "
                   "maxMerge(severity), argMaxMerge(type), argMaxMerge(info), argMaxMerge(reference) "
                   "FROM %s.threats_daily WHERE %s AND %s GROUP BY src_ip, trail" % (self.db, days_sql, winners))
        else:
            sql = ("SELECT hex(src_ip), trail, min(ts_us), max(greatest(ts_us, last_ts_us)), "
                   "arrayStringConcat(arrayMap(x -> hex(x), arraySort(groupUniqArray(sensor))), ','), max(severity), "
                   "max(ts_us) FROM %s.events WHERE %s GROUP BY src_ip, trail" % (self.db, " AND ".join(where)))
        details, cut = await self._select_budget(sql, deadline)
        found = {(_text(r[0]), _text(r[1])): r for r in details}
        if not (days_sql and not hours_sql) and found and not cut:
            # The latest event's strings: only the rows at each winner's greatest ts_us (a
            # handful of granules), where argMax over every winner's rows read the strings of
            # all of them. Rows sharing that microsecond: the greatest id, as any one would do.
            # The range narrowed to those microseconds lets the primary key skip the hours before.
            latest = [(_Addr(bytes.fromhex(k[0])), k[1], int(r[6])) for k, r in found.items()]
            first_ts, last_ts = min(x[2] for x in latest), max(x[2] for x in latest)
            narrow = (_range_condition(first_ts, last_ts + 1, self.timezone) + _scope_condition(scope)
                      + _terms_condition(terms))
            rows, cut = await self._select_budget(bind(
                "SELECT hex(src_ip), trail, id, type, info, reference FROM %s.events "
                "PREWHERE (src_ip, trail, ts_us) IN {latest} WHERE %s" % (self.db, " AND ".join(narrow)),
                latest=latest), deadline)
            chosen: dict = {}
            for r in rows:
                key = (_text(r[0]), _text(r[1]))
                if key not in chosen or int(r[2]) > int(chosen[key][2]):
                    chosen[key] = r
            for key, r in list(found.items()):
                c = chosen.get(key)
                found[key] = r[:6] + ([c[3], c[4], c[5]] if c is not None else [b"", b"", b""])
        slices: dict[tuple[str, str], list[int]] = {}
        if spark and not cut:
            # Slice i holds ts_us in [start + i*span/spark, start + (i+1)*span/spark): integer
            # arithmetic, the same in every backend (ts_us - start < 2^57 here, times <= 96 fits).
            # Slices of whole hours (a day in 24 or 12 or 8 ...) count from threats_hourly: every
            # hour then lies in one slice, found from its start.
            if rollup and (end_us - start_us) % (spark * 3_600_000_000) == 0:
                sql = ("SELECT hex(src_ip), trail, intDiv((toUInt64(toUnixTimestamp(hour)) * 1000000 - {s}) * {k}, {w}) "
                       "AS i, countMerge(events) FROM %s.threats_hourly WHERE %s AND %s GROUP BY src_ip, trail, i"
                       % (self.db, self._hour_range(start_us, end_us), winners))
            else:
                sql = ("SELECT hex(src_ip), trail, intDiv((ts_us - {s}) * {k}, {w}) AS i, count() FROM %s.events "
                       "WHERE %s GROUP BY src_ip, trail, i" % (self.db, " AND ".join(where)))
            rows, cut = await self._select_budget(bind(sql, s=start_us, k=spark, w=end_us - start_us), deadline)
            for r in rows:
                i = int(r[2])
                if 0 <= i < spark:
                    slices.setdefault((_text(r[0]), _text(r[1])), [0] * spark)[i] += int(r[3])
        partial = partial or cut
        out = []
        for r in ranked:
            pair = (_text(r[0]), _text(r[1]))
            d = found.get(pair)
            if d is None:
                continue    # its day was dropped between the two passes (retention), or the budget ran out
            if len(d) != 9:
                raise ClickHouseError(-1, "a threats row held %d fields, not 9" % len(d))
            sensors = _text(d[4])
            out.append(Threat(addr_text(bytes.fromhex(pair[0])), pair[1], int(r[2]), int(d[2]), int(d[3]),
                              tuple(bytes.fromhex(x).decode("utf-8") for x in sensors.split(",")) if sensors else (),
                              _text(d[5]), _text(d[6]), _text(d[7]), _text(d[8]),
                              tuple(slices.get(pair, [0] * spark)) if spark else ()))
        return out, partial

    # -- retention -----------------------------------------------------------------------------

    async def days(self) -> list[datetime.date]:
        """The days (partitions) the events table holds, oldest first."""
        rows = await self.client.select(bind(
            "SELECT DISTINCT partition FROM system.parts WHERE database = {db} AND table = 'events' AND active "
            "ORDER BY partition", db=self.db))
        return [_partition_date(_text(r[0])) for r in rows]

    async def drop_days_before(self, day: datetime.date) -> list[datetime.date]:
        """Retention: drop every whole day older than `day` from the events and every roll-up.
        Returns the days dropped."""
        if not isinstance(day, datetime.date):
            raise StoreInputError("a date is needed")
        rows = await self.client.select(bind(
            "SELECT DISTINCT table, partition FROM system.parts WHERE database = {db} AND table IN {t} AND active",
            db=self.db, t=list(TABLES)))
        dropped = set()
        for table, part in rows:
            d = _partition_date(_text(part))
            t = _text(table)
            if d < day and t in TABLES:
                await self.client.execute("ALTER TABLE %s.%s DROP PARTITION %s" % (self.db, t, d.strftime("%Y%m%d")))
                dropped.add(d)
        return sorted(dropped)


def _partition_date(text: str) -> datetime.date:
    if not re.fullmatch(r"\d{8}", text):
        raise ClickHouseError(-1, "a partition id that is not YYYYMMDD: %r" % text[:40])
    return datetime.date(int(text[:4]), int(text[4:6]), int(text[6:]))


# ----------------------------------------------------------------------------------------------
# The backend-neutral interface (server/store/__init__.py EventStore), over the async store.


class ClickHouseEventStore(EventStore):
    """`EventStore` on ClickHouse: the synchronous interface the server's intake and API call,
    over ClickHouseStore, whose coroutines run on an event loop of this object's own, in one
    thread (an aiohttp session belongs to one loop; callers may be in any thread or loop).

    What it answers as the SQLite backend does: half-open ranges; aggregates widened to whole
    hours (of the store's time zone: UTC by default, the SQLite backend's hours) and read from
    the roll-ups unless a scope is given; ties ordered by the value's text; `row_cap` bounds the
    rows a scoped aggregate may count (the answer is partial when it is reached); a page's
    `partial` when the time budget ran out. Day buckets are midnights of the store's time zone.

    The daily event log is the source of truth here too: `ingest` appends the batch to the day
    files under `log_dir` and fsyncs them (server/store/daylog.py, as the SQLite backend does),
    then INSERTs each day file's part tagged with where in the log it ends (the log_* columns);
    the batch is stored when both are done. At start, and whenever a batch does not begin where
    ClickHouse's rows of that day file end, the missing pairs are read back from the log and
    inserted, each once (see ARCHITECTURE.md, "The server's ClickHouse store").
    """

    backend = "clickhouse"

    def __init__(self, url: str, database: str = "maltrail", user: str = "default", password: str = "",
                 timezone: str = "UTC", timeout_s: float = 60.0, create: bool = True, *, log_dir: str,
                 warn=None, repair: bool = True, write_log: bool = True):
        try:
            self._store = ClickHouseStore(url, database, user, password, timezone, timeout_s)
        except StoreInputError as exc:
            raise StoreError(str(exc)) from None
        self._warn = warn or (lambda text: None)
        self._link = None       # an IndexLink once an indexer process indexes (index_elsewhere)
        self._last_seq = 0
        self._log = DayLog(log_dir, self._warn, write=write_log)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="clickhouse-store", daemon=True)
        self._thread.start()
        self._closed = False
        self._events_indexed = 0
        self._repaired_events = 0
        self._last_commit = 0.0
        self._lock = threading.RLock()
        self._positions: dict[tuple[int, int], int] | None = None   # (log_day, inode) -> end; None: ask
        try:
            self._source = _log_source_id(self._log)
            if create:
                self._call(self._store.create())
            if repair:
                self._repair()
        except BaseException:
            self.close()
            raise

    @property
    def log(self) -> DayLog:
        return self._log

    def index_elsewhere(self, link) -> None:
        """From now on an indexer process (server/indexer.py) inserts the log's events:
        ingest_prepared returns once the batch is in the fsync'd log, ingest once it is in
        ClickHouse too (server/store/__init__.py)."""
        with self._lock:
            self._link = link

    def _call(self, coro):
        if self._closed:
            coro.close()
            raise StoreError("the store is closed")
        try:
            return asyncio.run_coroutine_threadsafe(coro, self._loop).result()
        except StoreInputError as exc:
            raise QueryError(str(exc)) from None
        except ClickHouseError as exc:
            raise StoreError(str(exc)) from None

    # -- the index of each day file (daylog.Index) ---------------------------------------------
    def position(self, name: str) -> tuple[int, int] | None:
        if self._positions is None:
            self._positions = self._call(self._store.log_positions(self._source))
        try:
            inode = os.stat(name, dir_fd=self._log.dir_fd, follow_symlinks=False).st_ino
        except FileNotFoundError:
            return None
        end = self._positions.get((_log_day(name), inode))
        return None if end is None else (inode, end)

    def index(self, name: str, events: list, inode: int, end: int) -> None:
        key = (_log_day(name), inode)
        if events:
            try:
                self._call(self._store.ingest(events, (self._source, key[0], inode, end)))
            except StoreError:
                # The INSERT may have landed with its answer lost: ask ClickHouse again next time
                # rather than trust what this process last knew.
                self._positions = None
                raise
        elif end != (self._positions or {}).get(key):
            # Nothing to insert (damaged pairs only): the position cannot move without a row, so
            # a later catch-up reads those bytes again and finds nothing again. Harmless.
            return
        if self._positions is not None:
            self._positions[key] = end

    def restart(self, name: str) -> None:
        # The rows already inserted from this day file stay (ClickHouse deletes only by an
        # asynchronous mutation, and the roll-ups would keep them anyway): say so.
        self._warn("%s: ClickHouse keeps the rows indexed from its former content; indexing the file again "
                   "from its start may count some events twice" % name)
        if self._positions is not None:
            for key in [k for k in self._positions if k[0] == _log_day(name)]:
                del self._positions[key]

    def _repair(self) -> None:
        """At start: insert what every day file holds beyond ClickHouse's rows of it (holding
        index/.indexer.lock: a killed server's indexer may still be finishing)."""
        with indexer_locked(self._log):
            self._repair_locked()

    def _repair_locked(self) -> None:
        with self._lock:
            for name in self._log.day_files():
                n = catch_up(self._log, self, name, self._warn)
                self._repaired_events += n
                self._events_indexed += n

    def ingest(self, events: Iterable[Event]) -> int:
        return self._ingest(list(events), wait=True)

    def ingest_prepared(self, parts: list) -> int:
        """ingest() of the parts as one batch; with the index elsewhere, durable in the log only."""
        return self._ingest([e for part in parts for e in part], wait=False)

    def _ingest(self, batch: list, wait: bool) -> int:
        if not batch:
            return 0
        try:
            for i, ev in enumerate(batch):     # refused whole, before anything is written
                self._store._row(i, ev)
        except StoreInputError as exc:
            raise StoreError("a batch of %d events refused: %s" % (len(batch), exc)) from None
        with self._lock:
            if self._closed:
                raise StoreError("the store is closed")
            link = self._link
            if link is not None:
                seq = append_logged(self._log, batch, link)
            else:
                self._events_indexed += ingest_logged(self._log, self, batch, self._warn)
            self._last_commit = time.time()
        if link is not None and wait:
            link.wait_indexed(seq, INDEX_WAIT_S)
        return len(batch)

    def events(self, query: StoreEventQuery) -> Page:
        if not 1 <= query.limit <= MAX_PAGE_EVENTS:
            raise QueryError("limit must be from 1 to %d" % MAX_PAGE_EVENTS)
        q = EventQuery(
            query.range.since_us, query.range.until_us,
            src=(query.src,) if query.src else (), dst=(query.dst,) if query.dst else (),
            addr=(query.address,) if query.address else (), port=query.port, src_port=query.src_port,
            dst_port=query.dst_port, proto=query.proto, type=query.type, trail=query.trail,
            info=query.info or None, severity=tuple(query.severity) or None, sensor=query.sensor,
            scope=tuple(query.scope), cursor=query.cursor, limit=query.limit, budget_ms=query.budget_ms,
            terms=tuple(query.terms))
        page = self._call(self._store.events(q))
        if page.partial and not page.events:
            page = page._replace(next_cursor=query.cursor)    # nothing seen yet: ask again from here
        return page

    def _hours(self, query: AggregateQuery) -> tuple[int, int]:
        """The query's range widened to whole hours of the store's zone."""
        zone = self._store._zone

        def floor(us: int) -> int:
            t = datetime.datetime.fromtimestamp(us // 1_000_000, zone).replace(minute=0, second=0)
            return int(t.timestamp()) * 1_000_000

        # DateTime ends in 2106 (UInt32 seconds): a range reaching past it is cut there.
        since_us = min(max(query.range.since_us, 0), _LAST_HOUR_US)
        until_us = min(max(query.range.until_us, 0), _LAST_HOUR_US)
        lo = floor(since_us)
        hi = floor(until_us)
        if hi < until_us:
            hi = floor(hi + 3_600_000_000 + 1)   # the next hour's start (zones may shift by 30 min)
        return lo, hi

    def _filters(self, query: AggregateQuery) -> dict:
        return dict(scope=tuple(query.scope) or None, terms=tuple(query.terms), row_cap=query.row_cap,
                    budget_ms=query.budget_ms)

    def counts(self, query: AggregateQuery, by: str, bucket: str = "hour") -> Counts:
        if by not in COUNT_BY or bucket not in BUCKETS:
            raise QueryError("counts by one of %s per one of %s" % (", ".join(COUNT_BY), ", ".join(BUCKETS)))
        lo, hi = self._hours(query)
        rows, partial = self._call(self._store.aggregate_counts(lo, hi, by, bucket, **self._filters(query)))
        return Counts(lo, hi, by, bucket, rows, partial)

    def top(self, query: AggregateQuery, field: str, n: int = 10) -> Top:
        if field not in TOP_FIELDS:
            raise QueryError("top of %r: one of %s" % (field, ", ".join(TOP_FIELDS)))
        lo, hi = self._hours(query)
        rows, partial = self._call(self._store.aggregate_top(lo, hi, field, n, **self._filters(query)))
        return Top(lo, hi, field, rows, partial)

    def threats(self, query: AggregateQuery, n: int = 100, sort: str = "-events", spark: int = 0) -> Threats:
        lo, hi = self._hours(query)
        found, partial = self._call(self._store.aggregate_threats(
            lo, hi, n, exclude=tuple(query.exclude_pairs), sort=sort, spark=spark, **self._filters(query)))
        rows = [StoreThreat(t.src_ip, t.trail, t.events, t.first_us, t.last_us, t.sensors, t.severity, t.type, t.info,
                            t.reference, t.spark) for t in found]
        return Threats(lo, hi, rows, partial)

    def status(self) -> StoreStatus:
        with self._lock:
            indexed, last = self._events_indexed, self._last_commit
        try:
            days = len(self._call(self._store.days()))
            ready, details = True, {"url": self._store.client.url, "database": self._store.db}
        except StoreError as exc:
            days, ready, details = 0, False, {"url": self._store.client.url, "error": str(exc)}
        details.update(log_dir=self._log.log_dir, frames_written=self._log.frames_written)
        if self._link is not None:
            details.update(self._link.status())
            indexed += self._link.indexed_events
        return StoreStatus(self.backend, ready, days, indexed, self._repaired_events, last, details)

    def drop_days_before(self, day: datetime.date) -> list[datetime.date]:
        """Retention: whole days before `day`, from the events and every roll-up."""
        return self._call(self._store.drop_days_before(day))

    def close(self) -> None:
        if self._closed:
            return
        try:
            asyncio.run_coroutine_threadsafe(self._store.close(), self._loop).result()
        finally:
            self._closed = True
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop.close()
            self._log.close()


_LAST_HOUR_US = ((1 << 32) - 2 * 3600) // 3600 * 3600 * 1_000_000


def _log_day(name: str) -> int:
    """A day file's date as the log_day column holds it (YYYYMMDD)."""
    return int(name[:4] + name[5:7] + name[8:10])


def _log_source_id(log: DayLog) -> int:
    """This log directory's id in the log_source column: a random 64-bit number kept in
    LOG_DIR/index/clickhouse.id, made once, so several servers (each with its own log) can share
    one ClickHouse and each knows its own rows."""
    name = "clickhouse.id"
    dir_fd = _index_fd(log)
    try:
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
        except FileNotFoundError:
            value = random.SystemRandom().getrandbits(63) or 1
            fd = os.open(name + ".new", os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                         dir_fd=dir_fd)
            try:
                os.write(fd, b"%016x\n" % value)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(name + ".new", name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            os.fsync(dir_fd)
            return value
        try:
            text = os.read(fd, 64).decode("ascii", "replace").strip()
        finally:
            os.close(fd)
    finally:
        os.close(dir_fd)
    if not re.fullmatch(r"[0-9a-f]{16}", text) or int(text, 16) == 0:
        raise StoreError("%s/%s/%s is not a log id (16 hex digits): remove it to make a new one"
                         % (log.log_dir, INDEX_DIR, name))
    return int(text, 16)


def _index_fd(log: DayLog) -> int:
    return os.open(INDEX_DIR, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=log.dir_fd)
