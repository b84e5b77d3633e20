"""The event store's interface: what the server's intake and API ask of any backend.

Owns the query and answer types and `EventStore`, the one interface every backend implements
(server/store/sqlite.py, the embedded default; a ClickHouse backend follows the same contract).
Must not hold any backend's SQL, nor know about HTTP, users or datagrams: a caller passes a
user's networks as `scope`, and the backend applies it inside its query, so counts and pages
never include an event outside it.

Contract, for every backend:
- `ingest(events)`: when it returns, the events are durable (in the daily event log, the source
  of truth, and in the index); it raises StoreError when they are not, and then nothing of the
  batch is acknowledged (a later repair may still index what reached the log).
- `index_elsewhere(link)` (the server, after the start-up repair): an indexer process
  (server/indexer.py) indexes the log from then on. `ingest_prepared` then returns once the batch
  is in the fsync'd log (durable: the UDP intake counts it stored), `ingest` once it is indexed
  too (waiting up to INDEX_WAIT_S for the indexer, else StoreError), queries answer from an index
  that may trail the log by the lag `status()` reports (`index_lag_events`, `index_lag_s`).
- Time ranges are half-open, [since_us, until_us), in microseconds since the epoch.
- Every query carries a time budget (`budget_ms`) and a row cap (`row_cap`: the most event rows
  it may examine); an answer cut by either has `partial = True` and is otherwise correct for the
  rows it did see. Aggregates are read from per-hour roll-ups: their range is widened to whole
  hours, and the answer's `since_us`/`until_us` say what it covers.
- `events()` pages newest first (ts_us, then arrival); `cursor` is opaque text from the previous
  Page's `next_cursor` (None: no more).
- Threads: methods may block (disk, a running batch); an asyncio caller runs queries in an
  executor, never on the loop. `status()` alone must answer at once (the loop calls it).
- `scope`: addresses, CIDRs (IPv4, IPv6) or `a-b` ranges; an event is in scope when its source or
  destination address is in one of them (Maltrail's netfilter); empty means every event.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Iterable, NamedTuple

from events.record import Event

DEFAULT_BUDGET_MS = 2000
DEFAULT_ROW_CAP = 1_000_000
MAX_PAGE_EVENTS = 10_000
INDEX_WAIT_S = 60.0     # the longest ingest() waits for the indexer process (index_elsewhere)


class StoreError(Exception):
    """The store cannot do what was asked (a disk full, a damaged index); the message says why."""


class QueryError(ValueError):
    """A query that cannot be answered as written (a bad CIDR, an unknown field, a bad cursor)."""


@dataclass(frozen=True)
class TimeRange:
    since_us: int
    until_us: int       # exclusive

    def __post_init__(self):
        if self.until_us <= self.since_us:
            raise QueryError("the range ends before it starts")


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def ascii_lower(text: str) -> str:
    """A-Z folded to a-z and nothing else, as every backend's case-insensitive comparison folds."""
    return text.translate(_ASCII_LOWER)


_ASCII_UPPER = str.maketrans("abcdefghijklmnopqrstuvwxyz", "ABCDEFGHIJKLMNOPQRSTUVWXYZ")


def ascii_upper(text: str) -> str:
    """a-z raised to A-Z and nothing else (SQL's upper() on proto and type words)."""
    return text.translate(_ASCII_UPPER)


FILTER_FIELDS = ("src", "dst", "address", "port", "proto", "type", "trail", "info", "severity", "sensor", "text")


@dataclass(frozen=True)
class Term:
    """One clause of a filter (server/filters.py parses the UI's tokens into these): the event's
    `field` matches any of `values`, or, with `negate`, none of them. Values, by field:
      src, dst, address (source OR destination): "a-b" address-key range text
          (server.addresses.range_text), one per address, CIDR or range;
      port (source OR destination port): a decimal number;
      proto, type: an upper-case word (TCP, DNS); severity: low, medium or high;
      trail, sensor: the whole value, case-insensitive; `*` matches any run of characters;
      info: a case-insensitive substring; `*` inside matches any run of characters;
      text (free text): like info, matched against the trail OR the info.
    A query's terms all hold (AND)."""
    field: str
    values: tuple[str, ...]
    negate: bool = False

    def __post_init__(self):
        if self.field not in FILTER_FIELDS:
            raise QueryError("unknown filter field %r; one of %s" % (self.field, ", ".join(FILTER_FIELDS)))
        if not self.values:
            raise QueryError("a filter term on %s has no value" % self.field)


@dataclass(frozen=True)
class EventQuery:
    """Which events, and how many. Every filter given must hold (AND); None/empty = any."""
    range: TimeRange
    src: str | None = None          # an address, CIDR or a-b range
    dst: str | None = None
    address: str | None = None      # source OR destination
    src_port: int | None = None
    dst_port: int | None = None
    port: int | None = None         # source OR destination port
    proto: str | None = None
    type: str | None = None
    trail: str | None = None        # exact trail
    info: str | None = None         # substring of info, case-insensitive (ASCII)
    severity: tuple[str, ...] = ()  # any of these
    sensor: str | None = None
    scope: tuple[str, ...] = ()
    terms: tuple[Term, ...] = ()    # more filters, all of which hold (Term)
    limit: int = 100
    cursor: str | None = None
    budget_ms: int = DEFAULT_BUDGET_MS
    row_cap: int = DEFAULT_ROW_CAP


class Page(NamedTuple):
    events: list[Event]
    next_cursor: str | None      # None: nothing older matches
    partial: bool                # cut by the time budget or row cap: there may be more in between


COUNT_BY = ("type", "severity", "sensor")
BUCKETS = ("hour", "day")
TOP_FIELDS = ("src_ip", "dst_ip", "trail")


class Counts(NamedTuple):
    since_us: int
    until_us: int
    by: str
    bucket: str
    rows: list[tuple[int, str, int]]    # (bucket start us, value, events), bucket then value order
    partial: bool


class Top(NamedTuple):
    since_us: int
    until_us: int
    field: str
    rows: list[tuple[str, int]]         # (value, events), most first, then by value
    partial: bool


class Threat(NamedTuple):
    src_ip: str
    trail: str
    events: int
    first_ts_us: int
    last_ts_us: int
    sensors: tuple[str, ...]
    severity: str                       # the highest seen
    type: str = ""                      # of the pair's latest event
    info: str = ""                      # of the pair's latest event
    reference: str = ""                 # of the pair's latest event
    spark: tuple[int, ...] = ()         # events per equal slice of the range (threats(spark=N)), oldest first


class Threats(NamedTuple):
    since_us: int
    until_us: int
    rows: list[Threat]                  # most events first
    partial: bool


THREAT_SORTS = ("events", "first", "last", "severity", "src", "trail")   # "-events": most first


@dataclass(frozen=True)
class AggregateQuery:
    """Aggregates over the events in `range` and `scope` that match every term. Without terms a
    backend answers from its roll-ups; with terms it aggregates the matching events themselves
    (bounded by the budget and row cap, `partial` when cut). `exclude_pairs`: (source address,
    trail) pairs left out of threats() (hidden or suppressed by triage; the trail compared
    case-insensitively, as the sensors' whitelist compares it); counts and tops ignore it."""
    range: TimeRange
    scope: tuple[str, ...] = ()
    terms: tuple[Term, ...] = ()
    exclude_pairs: tuple[tuple[str, str], ...] = ()
    budget_ms: int = DEFAULT_BUDGET_MS
    row_cap: int = DEFAULT_ROW_CAP


@dataclass
class StoreStatus:
    backend: str
    ready: bool
    days: int = 0
    events_indexed: int = 0             # since this process started (ingest and repair)
    repaired_events: int = 0            # indexed at start from the log's tail (see the backend)
    last_commit_unix: float = 0.0
    details: dict = field(default_factory=dict)


class EventStore(abc.ABC):
    """One backend of the event store (see the module's contract)."""

    @abc.abstractmethod
    def ingest(self, events: Iterable[Event]) -> int:
        """Store a batch durably; returns how many events were stored."""

    def prepare(self, events: Iterable[Event]):
        """Check a batch and do the CPU work of storing it that needs no lock (a backend may
        override; by default nothing): the intake calls this in its parse thread, then hands
        the results to ingest_prepared in its store thread. Raises StoreError for a batch
        that ingest() would refuse."""
        return list(events)

    def ingest_prepared(self, parts: list) -> int:
        """Store, as one batch, what prepare() returned for several batches (ingest's contract;
        with the index elsewhere, durable in the log only)."""
        return self.ingest([e for part in parts for e in part])

    def index_elsewhere(self, link) -> None:
        """Leave indexing to an indexer process from now on (the module's contract); `link` is
        its server/indexer.py IndexLink. A backend without it cannot run beside an indexer."""
        raise StoreError("the %s store cannot be indexed by another process" % type(self).__name__)

    @abc.abstractmethod
    def events(self, query: EventQuery) -> Page:
        ...

    @abc.abstractmethod
    def counts(self, query: AggregateQuery, by: str, bucket: str = "hour") -> Counts:
        ...

    @abc.abstractmethod
    def top(self, query: AggregateQuery, field: str, n: int = 10) -> Top:
        ...

    @abc.abstractmethod
    def threats(self, query: AggregateQuery, n: int = 100, sort: str = "-events", spark: int = 0) -> Threats:
        """The first n (source, trail) pairs in `sort` order (THREAT_SORTS, "-" for descending;
        ties by most events, then source, then trail); `spark` > 0: each Threat's events per
        range/spark slice."""

    @abc.abstractmethod
    def status(self) -> StoreStatus:
        ...

    @abc.abstractmethod
    def close(self) -> None:
        """Flush and release everything; the store is unusable afterwards."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def open_store(cfg, warn=None) -> EventStore:
    """The store the configuration selects ([server] store): the daily log under [server] log_dir
    with its index in SQLite beside it, or in a ClickHouse server. `warn(text)` hears what the store had to repair or refuse at start and
    later."""
    s = cfg.server
    if s.store == "clickhouse":
        from server.store.clickhouse import ClickHouseEventStore
        return ClickHouseEventStore(s.clickhouse_url, s.clickhouse_database, s.clickhouse_user,
                                    s.clickhouse_password, s.clickhouse_timezone, log_dir=s.log_dir, warn=warn)
    from server.store.sqlite import SqliteStore
    return SqliteStore(s.log_dir, warn=warn)
