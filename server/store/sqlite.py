"""The embedded event store: the daily event log as the source of truth, SQLite as its index.

Owns `LOG_DIR/index/YYYY-MM-DD.sqlite`, one SQLite database per day file (stdlib sqlite3, WAL,
synchronous=NORMAL: the index is rebuildable from the fsync'd log, see _Day), as the `Index` of
the log half, server/store/daylog.py (the day files `LOG_DIR/YYYY-MM-DD.events.zst`, written by
the shared writer so `maltrail-engine tail --log-dir LOG_DIR` reads them, their fsync, the
directory lock, the catch-up). Must not know about HTTP, users or datagrams
(server/store/__init__.py holds the interface and its contract).

A day's database holds:
    events        one row per event record: typed columns, plus src_key/dst_key, the 16-byte
                  sortable form of each address (server/addresses.py), so a CIDR (IPv4 or IPv6)
                  is one index range; indexes on ts_us, src_key, dst_key and trail (each with
                  ts_us). Port, type, severity, sensor and info filters are applied while
                  walking the ts_us index newest first (each index costs every insert).
    counts_hour   (hour_us, type, severity, sensor) -> events: one row per combination seen in
                  an hour (few), summed over the other two when counting by one.
    top_hour      (field, hour_us, value) -> events, field one of src_ip, dst_ip, trail.
    threats_hour  (src_ip, trail, hour_us) -> events, first/last ts_us, highest severity (the
                  sensors that saw a ranked threat are read from events at query time).
    log_position  the day file's inode and the byte offset up to which its pairs are indexed.
Queries: events() walks the ts_us index (or an address index) with every filter, the scope and
the terms (server/store Term) as SQL conditions (_term_sql; trail, info, sensor and free text as
LIKE patterns, which fold ASCII letters only, as server/filters.py matches() does). Aggregates
without scope or terms read the roll-ups; with either, they group the matching event rows
themselves (_matching, at most row_cap of them a day, within the time budget). threats() ranks in
any THREAT_SORTS order, leaves out exclude_pairs (compared by address key, so ::ffff:10.0.0.1 and
10.0.0.1 are one source), and then, for the ranked pairs only, reads the latest event (type, info,
reference) with one probe of the source's index each, and the sparkline from threats_hour when
its slices are whole hours, else from the ranked sources' matching events (_threat_details).
Over several whole days, top sources and threats by most events (the dashboard's default) are
not merged from every row of every day: _threshold_merge (Fagin's threshold algorithm) reads
each day's threats_day best first in growing batches (SQLite sorts a day's pairs, or sums its
sources in the table's own order, in C), looks the candidates up by key in the other days, and
stops once nothing unread can reach the n-th best; exact, ties included, with no schema change
(so every existing day index serves it as it is). Days the range cuts are read whole, as before.

The roll-ups are summed in Python over the batch (one pass) and merged by UPSERT, and
change, with log_position, in the same transaction as the rows they count, so the
index is always "the log up to log_position", never half a batch. Hours are UTC hours
(hour_us = ts_us - ts_us mod 3600 s).

Durability (ingest): the batch is appended to the day files and every frame closed (the writer's
flush), each day file touched is fsync'd (and the directory, when a file is new), and only then
is each day's index transaction committed (synchronous=NORMAL: consistent at any crash; an OS
crash may roll the last commits back, log_position with them, and the repair redoes them). An event
counts as stored when both are done. A crash between the two leaves pairs in the log beyond
log_position: at start (SqliteStore.__init__) every day file's pairs after log_position are
read back (events/log PairReader) and indexed; a day file without a database, or whose inode or
size no longer fits its log_position (replaced, or cut shorter), is indexed again whole; a
database whose day file is gone (retention deleted the day) is removed. One process owns a log
directory: an exclusive flock on LOG_DIR/index/.lock, also taken by `reindex`. The same catch-up
runs during ingest when a day's log_position is not where the batch starts (an earlier batch
reached the log but not the index), so a failed batch is never skipped (server/store/daylog.py,
which holds this log half for both backends). In the server, after the start-up repair, this
process only logs and reads (`index_elsewhere`): the indexer process (server/indexer.py) runs
the catch-up into the same databases, and a query opens a day's database without creating or
writing it, skips one still being made, and reopens one the indexer replaced.
"""

from __future__ import annotations

import collections
import datetime
import heapq
import itertools
import os
import sqlite3
import threading
import time
import urllib.parse
from typing import Iterable, NamedTuple

from events.log import file_date
from events.record import SEVERITIES, Event
from server.addresses import AddressError, ip_key, key_range, key_text
from server.store.daylog import DayLog, append_logged, catch_up, indexer_locked, ingest_logged, split_by_day
from server.store import (
    BUCKETS, COUNT_BY, INDEX_WAIT_S, MAX_PAGE_EVENTS, TOP_FIELDS, AggregateQuery, Counts, EventQuery, EventStore, Page,
    THREAT_SORTS, QueryError, ascii_lower, StoreError, StoreStatus, Term, Threat, Threats, Top,
)

HOUR_US = 3_600_000_000
DB_SUFFIX = ".sqlite"
SCHEMA_VERSION = 2
_SEVERITY_RANK = {"low": 0, "medium": 1, "high": 2}
_RANK_SEVERITY = {v: k for k, v in _SEVERITY_RANK.items()}
_PROGRESS_STEPS = 20_000        # SQLite VM steps between two looks at the query's deadline
_MAX_OPEN_DAYS = 16
_SENSORS = ("(SELECT group_concat(sensor, char(31)) FROM (SELECT DISTINCT sensor FROM threat_sensors_hour"
            " WHERE src_ip = ? AND trail = ? AND hour_us >= ? AND hour_us < ?))")
# threats(sort=...) -> the threats_day column SQLite ranks a lone whole day by (src: by address,
# which the text does not sort as, so ranked in Python).
_SQL_ORDER = {"events": "events", "first": "first_ts_us", "last": "last_ts_us", "severity": "severity",
              "trail": "trail"}
MAX_SPARK = 1000                # slices of a threat's sparkline (the API asks for at most 96)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    ts_us INTEGER NOT NULL, last_ts_us INTEGER NOT NULL, sensor TEXT NOT NULL,
    src_ip TEXT NOT NULL, src_key BLOB, src_port INTEGER,
    dst_ip TEXT NOT NULL, dst_key BLOB, dst_port INTEGER,
    proto TEXT NOT NULL, type TEXT NOT NULL, trail TEXT NOT NULL, info TEXT NOT NULL,
    reference TEXT NOT NULL, severity TEXT NOT NULL, count INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS events_ts ON events (ts_us);
CREATE INDEX IF NOT EXISTS events_src ON events (src_key, ts_us);
CREATE INDEX IF NOT EXISTS events_dst ON events (dst_key, ts_us);
CREATE INDEX IF NOT EXISTS events_trail ON events (trail, ts_us);
CREATE TABLE IF NOT EXISTS counts_hour (
    hour_us INTEGER NOT NULL, type TEXT NOT NULL, severity TEXT NOT NULL, sensor TEXT NOT NULL,
    events INTEGER NOT NULL, PRIMARY KEY (hour_us, type, severity, sensor)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS top_hour (
    field TEXT NOT NULL, hour_us INTEGER NOT NULL, value TEXT NOT NULL, events INTEGER NOT NULL,
    PRIMARY KEY (field, hour_us, value)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS threats_hour (
    src_ip TEXT NOT NULL, trail TEXT NOT NULL, hour_us INTEGER NOT NULL, events INTEGER NOT NULL,
    first_ts_us INTEGER NOT NULL, last_ts_us INTEGER NOT NULL, severity INTEGER NOT NULL,
    PRIMARY KEY (src_ip, trail, hour_us)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS threats_hour_by_hour ON threats_hour (hour_us);
CREATE TABLE IF NOT EXISTS threats_day (
    src_ip TEXT NOT NULL, trail TEXT NOT NULL, events INTEGER NOT NULL,
    first_ts_us INTEGER NOT NULL, last_ts_us INTEGER NOT NULL, severity INTEGER NOT NULL,
    PRIMARY KEY (src_ip, trail)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS threat_sensors_hour (
    src_ip TEXT NOT NULL, trail TEXT NOT NULL, hour_us INTEGER NOT NULL, sensor TEXT NOT NULL,
    PRIMARY KEY (src_ip, trail, hour_us, sensor)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS log_position (
    one INTEGER PRIMARY KEY CHECK (one = 1), inode INTEGER NOT NULL, offset INTEGER NOT NULL);
"""

# Every write to the index is a multi-row INSERT of up to _ROWS_PER_STATEMENT rows (the rest, one
# row a statement): Python's sqlite3 gives the GIL up around every statement step, and with the
# intake's parse thread busy, taking it back after each of 50,000 single-row steps cost the store
# thread more than the inserting itself (measured: 31 us per event against 9 without the parse
# thread; 21 with 1,000-row statements). The parameters are flattened in _prepare, in the parse
# thread.
_ROWS_PER_STATEMENT = 500
_INSERT_EVENT = ("INSERT INTO events (ts_us, last_ts_us, sensor, src_ip, src_key, src_port, dst_ip, dst_key, dst_port,"
                 " proto, type, trail, info, reference, severity, count) VALUES %s", 16, "")
# The roll-ups of a batch are summed in Python (one pass over the batch, dictionaries keyed by
# hour and value) and merged into the tables with one UPSERT per distinct key: measured 2-3 us
# per event, where a GROUP BY per roll-up over the rows just inserted cost SQLite 10-15 us per
# event (each builds a temporary b-tree of the batch). Real batches repeat their keys (a few
# thousand sources and a few hundred trails a day), so the UPSERTs are far fewer than events.
_UPSERT_COUNTS = ("INSERT INTO counts_hour VALUES %s", 5, " ON CONFLICT (hour_us, type, severity, sensor)"
                  " DO UPDATE SET events = events + excluded.events")
_UPSERT_TOP = ("INSERT INTO top_hour VALUES %s", 4, " ON CONFLICT (field, hour_us, value)"
               " DO UPDATE SET events = events + excluded.events")
_UPSERT_THREATS = ("INSERT INTO threats_hour VALUES %s", 7, " ON CONFLICT (src_ip, trail, hour_us) DO UPDATE"
                   " SET events = events + excluded.events, first_ts_us = min(first_ts_us, excluded.first_ts_us),"
                   " last_ts_us = max(last_ts_us, excluded.last_ts_us), severity = max(severity, excluded.severity)")
_UPSERT_THREATS_DAY = ("INSERT INTO threats_day VALUES %s", 6, " ON CONFLICT (src_ip, trail) DO UPDATE"
                       " SET events = events + excluded.events, first_ts_us = min(first_ts_us, excluded.first_ts_us),"
                       " last_ts_us = max(last_ts_us, excluded.last_ts_us), severity = max(severity, excluded.severity)")
_ADD_THREAT_SENSOR = ("INSERT OR IGNORE INTO threat_sensors_hour VALUES %s", 4, "")


def _statements(template: tuple, rows: list) -> list[tuple[str, list]]:
    """(sql, parameters for executemany) writing `rows` with `template` (head with %s, columns,
    tail): _ROWS_PER_STATEMENT rows a statement, then the rest one a statement."""
    head, width, tail = template
    one = "(" + ",".join("?" * width) + ")"
    k = _ROWS_PER_STATEMENT
    whole = len(rows) // k * k
    out = []
    if whole:
        chain = itertools.chain.from_iterable
        out.append((head % ",".join([one] * k) + tail, [tuple(chain(rows[i:i + k])) for i in range(0, whole, k)]))
    if whole < len(rows):
        out.append((head % one + tail, rows[whole:]))
    return out


_SET_POSITION = ("INSERT INTO log_position VALUES (1, ?, ?) ON CONFLICT (one)"
                 " DO UPDATE SET inode = excluded.inode, offset = excluded.offset")

_EVENT_COLUMNS = ("id, ts_us, sensor, src_ip, src_port, dst_ip, dst_port, proto, type, trail, info, reference,"
                  " severity, count, last_ts_us")


def _row_to_event(row) -> Event:
    return Event(*row[1:])


def _day_of(name: str) -> datetime.date:
    return datetime.date.fromisoformat(name[:10])


def _db_name(day: datetime.date) -> str:
    return day.isoformat() + DB_SUFFIX


def _local_date(ts_us: int, margin_days: int = 0) -> datetime.date:
    """The local date of ts_us moved by margin_days, saturating at the ends of the calendar (a
    query may ask for any range)."""
    try:
        t = time.localtime(ts_us // 1_000_000)
        return datetime.date(t.tm_year, t.tm_mon, t.tm_mday) + datetime.timedelta(days=margin_days)
    except (OverflowError, OSError, ValueError):
        return datetime.date.min if ts_us < 0 else datetime.date.max


class _Deadline:
    """A query's time budget as an SQLite progress handler: returning true interrupts the statement."""

    def __init__(self, budget_ms: int):
        self.at = time.monotonic() + budget_ms / 1000.0
        self.hit = False

    def __call__(self) -> int:
        if time.monotonic() >= self.at:
            self.hit = True
            return 1
        return 0


class _Day:
    """One day's database (see the module docstring)."""

    def __init__(self, path: str, reader: bool = False):
        self.path = path
        if reader:
            self._open_reader(path)
            return
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.conn.execute("PRAGMA journal_mode=WAL")
        # NORMAL, not FULL: in WAL mode a commit is then not fsync'd (checkpoints are). A process
        # crash loses nothing committed (the WAL is in the page cache); an OS crash or power loss
        # may roll the last commits back, but never leaves the database inconsistent, and
        # log_position rolls back with the rows it describes: the repair at start indexes those
        # pairs again from the fsync'd log, the source of truth. Measured: about 10 us per event
        # less than FULL at 50,000-event batches.
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self.conn.execute("PRAGMA cache_size=-32768")     # KiB: a day's hot index pages stay cached
        self.conn.executescript(_SCHEMA)
        self.conn.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (SCHEMA_VERSION,))
        row = self.conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        # A database of another layout is not this day's index: the store drops it and indexes
        # the day file again (the log is the source of truth).
        self.current = row is not None and row[0] == SCHEMA_VERSION
        self.inode = os.stat(path).st_ino

    def _open_reader(self, path: str) -> None:
        """A query's view of a database the indexer process writes (SqliteStore.index_elsewhere):
        never created here (mode=rw: a database the indexer has just removed stays removed) and
        never written (no schema, no meta); `current` is false while the indexer is still
        making it, or for another layout (the indexer drops those), and then the day is skipped."""
        self.current = False
        self.inode = os.stat(path).st_ino       # FileNotFoundError: the caller skips the day
        self.conn = sqlite3.connect("file:%s?mode=rw" % urllib.parse.quote(path), uri=True, isolation_level=None,
                                    check_same_thread=False)
        try:
            row = self.conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        except sqlite3.OperationalError:        # no meta table yet
            row = None
        self.current = row is not None and row[0] == SCHEMA_VERSION

    def position(self) -> tuple[int, int] | None:
        row = self.conn.execute("SELECT inode, offset FROM log_position").fetchone()
        return None if row is None else (row[0], row[1])

    def index(self, events: list[Event], inode: int, offset: int, prepared: list | None = None) -> None:
        """Insert the events, update the roll-ups and the log position: one transaction.
        `prepared`: the events as _prepare made them (in the intake's parse thread), if it did."""
        parts = prepared if prepared is not None else ([_prepare(events)] if events else [])
        c = self.conn
        c.execute("BEGIN IMMEDIATE")
        try:
            for statements in parts:
                for sql, params in statements:
                    c.executemany(sql, params)
            c.execute(_SET_POSITION, (inode, offset))
            c.execute("COMMIT")
        except BaseException:
            c.execute("ROLLBACK")
            raise

    def close(self) -> None:
        self.conn.close()


def _prepare(events: list[Event]) -> list[tuple[str, list]]:
    """One day's events as the index writes them: the statements inserting the rows and merging
    each roll-up summed over them (_statements). Pure CPU and no database, so the intake runs it in its
    parse thread, beside the store thread's SQLite and fsync work."""
    key = ip_key
    rank = _SEVERITY_RANK
    rows = []
    counts: collections.Counter = collections.Counter()
    srcs: collections.Counter = collections.Counter()
    dsts: collections.Counter = collections.Counter()
    trails: collections.Counter = collections.Counter()
    threats: dict[tuple, list] = {}
    threat_sensors: set = set()
    for ts, sensor, src, sport, dst, dport, proto, typ, trail, info, ref, sev, count, last in events:
        last = last or ts
        sensor, src, dst, typ, trail, sev = sensor or "", src or "", dst or "", typ or "", trail or "", sev or "medium"
        rows.append((ts, last, sensor, src, key(src), sport, dst, key(dst), dport, proto or "", typ, trail,
                     info or "", ref or "", sev, count or 1))
        hour = ts - ts % HOUR_US
        counts[(hour, typ, sev, sensor)] += 1
        srcs[(hour, src)] += 1
        dsts[(hour, dst)] += 1
        trails[(hour, trail)] += 1
        threat_sensors.add((src, trail, hour, sensor))
        t = threats.get((src, trail, hour))
        r = rank.get(sev, 1)
        if t is None:
            threats[(src, trail, hour)] = [1, ts, last, r]
        else:
            t[0] += 1
            if ts < t[1]:
                t[1] = ts
            if last > t[2]:
                t[2] = last
            if r > t[3]:
                t[3] = r
    by_pair: dict[tuple, list] = {}
    for (src, trail, _hour), (n, first, last, r) in threats.items():
        t = by_pair.get((src, trail))
        if t is None:
            by_pair[(src, trail)] = [n, first, last, r]
        else:
            t[0] += n
            t[1] = min(t[1], first)
            t[2] = max(t[2], last)
            t[3] = max(t[3], r)
    return (_statements(_INSERT_EVENT, rows)
            + _statements(_UPSERT_COUNTS, [(*k, n) for k, n in counts.items()])
            + _statements(_UPSERT_TOP, [("src_ip", h, v, n) for (h, v), n in srcs.items()])
            + _statements(_UPSERT_TOP, [("dst_ip", h, v, n) for (h, v), n in dsts.items()])
            + _statements(_UPSERT_TOP, [("trail", h, v, n) for (h, v), n in trails.items()])
            + _statements(_UPSERT_THREATS, [(*k, *v) for k, v in threats.items()])
            + _statements(_UPSERT_THREATS_DAY, [(*k, *v) for k, v in by_pair.items()])
            + _statements(_ADD_THREAT_SENSOR, list(threat_sensors)))


class Prepared(NamedTuple):
    """A batch checked and made ready for the index outside the store's lock (SqliteStore.prepare)."""
    events: list
    by_day: dict          # day file name -> _prepare's tuple for that day's events


def _event_problem(event: Event) -> str | None:
    """Why an event cannot be stored (an address that is none, a port out of range, an unknown
    severity), or None."""
    for name in ("src_ip", "dst_ip"):
        if ip_key(getattr(event, name)) is None:
            return "%s %r is not an IPv4 or IPv6 address" % (name, getattr(event, name))
    for name in ("src_port", "dst_port"):
        port = getattr(event, name)
        if port is not None and (isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535):
            return "%s %r is not a port" % (name, port)
    if event.severity not in SEVERITIES:
        return "severity %r is none of %s" % (event.severity, ", ".join(SEVERITIES))
    return None


class SqliteStore(EventStore):
    """The embedded backend (see the module docstring). Thread-safe: one lock around the files.
    The log half (the day files, fsync, the directory lock, catching the index up with the log)
    is server/store/daylog.py, shared with the ClickHouse backend; this is its `Index`."""

    backend = "sqlite"

    def __init__(self, log_dir: str, warn=None, repair: bool = True, write_log: bool = True):
        self._warn = warn or (lambda text: None)
        self._link = None       # an IndexLink once an indexer process indexes (index_elsewhere)
        self._lock = threading.RLock()
        self._days: collections.OrderedDict[str, _Day] = collections.OrderedDict()
        self._events_indexed = 0
        self._repaired_events = 0
        self._last_commit = 0.0
        self._last_seq = 0
        self._closed = False
        self._log = DayLog(log_dir, self._warn, write=write_log)
        self.log_dir = self._log.log_dir
        self.index_dir = self._log.index_dir
        if repair:
            try:
                self._repair()
            except BaseException:
                self._log.close()
                raise

    @property
    def log(self) -> DayLog:
        return self._log

    def index_elsewhere(self, link) -> None:
        """From now on an indexer process (server/indexer.py) indexes the log: ingest_prepared
        returns once the batch is in the fsync'd log, ingest once it is indexed too, and the
        databases are only read here (reopened when the indexer replaces one)."""
        with self._lock:
            self._link = link

    # -- the index of each day file (daylog.Index) ------------------------------------------
    def _day(self, name: str) -> _Day | None:
        """The database of the day file `name` (YYYY-MM-DD.events.zst), opened or created; with
        the index elsewhere, opened for reading if it exists and is complete, else None."""
        db = _db_name(_day_of(name))
        if self._link is not None:
            return self._reader_day(db)
        day = self._days.get(db)
        if day is None:
            day = _Day(os.path.join(self.index_dir, db))
            if not day.current:
                self._warn("%s: an index of another layout; indexing its day again from the log" % db)
                day.close()
                self._forget(db)
                day = _Day(os.path.join(self.index_dir, db))
            self._days[db] = day
            while len(self._days) > _MAX_OPEN_DAYS:
                _, old = self._days.popitem(last=False)
                old.close()
        else:
            self._days.move_to_end(db)
        return day

    def _reader_day(self, db: str) -> _Day | None:
        path = os.path.join(self.index_dir, db)
        day = self._days.get(db)
        if day is not None:
            try:
                same = os.stat(path).st_ino == day.inode
            except FileNotFoundError:
                same = False
            if same and day.current:
                self._days.move_to_end(db)
                return day
            del self._days[db]
            day.close()
        try:
            day = _Day(path, reader=True)
        except (FileNotFoundError, sqlite3.Error):
            return None
        if not day.current:
            day.close()
            return None
        self._days[db] = day
        while len(self._days) > _MAX_OPEN_DAYS:
            _, old = self._days.popitem(last=False)
            old.close()
        return day

    def position(self, name: str) -> tuple[int, int] | None:
        return self._day(name).position()

    def index(self, name: str, events: list[Event], inode: int, end: int, prepared: list | None = None) -> None:
        self._day(name).index(events, inode, end, prepared)

    def restart(self, name: str) -> None:
        self._forget(_db_name(_day_of(name)))

    def _forget(self, db: str) -> None:
        day = self._days.pop(db, None)
        if day is not None:
            day.close()
        for suffix in ("", "-wal", "-shm"):
            try:
                os.unlink(os.path.join(self.index_dir, db + suffix))
            except FileNotFoundError:
                pass

    def prepare(self, events: Iterable[Event]) -> Prepared:
        """The batch checked (StoreError: refused whole) and its rows and roll-ups made, without
        the store's lock: the intake's parse thread calls this, the store thread ingest_prepared."""
        batch = list(events)
        for event in batch:   # refused whole, before anything is written (the interface's contract)
            problem = _event_problem(event)
            if problem:
                raise StoreError("a batch of %d events refused: %s" % (len(batch), problem))
        if not batch or self._link is not None:      # the indexer process makes the rows
            return Prepared(batch, {})
        return Prepared(batch, {name: _prepare(evs) for name, evs in split_by_day(batch).items()})

    def ingest(self, events: Iterable[Event]) -> int:
        n = self.ingest_prepared([self.prepare(events)])
        link = self._link
        if link is not None and n:
            link.wait_indexed(self._last_seq, INDEX_WAIT_S)
        return n

    def ingest_prepared(self, parts: list) -> int:
        """Store batches made by prepare() as one: one append and fsync, one transaction a day."""
        batch = [e for part in parts for e in part.events]
        if not batch:
            return 0
        by_day: dict[str, list] = {}
        for part in parts:
            for name, prepared in part.by_day.items():
                by_day.setdefault(name, []).append(prepared)
        with self._lock:
            if self._closed:
                raise StoreError("the store is closed")
            if self._link is not None:
                self._last_seq = append_logged(self._log, batch, self._link)
                self._last_commit = time.time()
                return len(batch)
            try:
                self._events_indexed += ingest_logged(self._log, self, batch, self._warn, by_day)
            except sqlite3.Error as exc:
                # The log holds the batch; the next batch (or start) indexes it from there.
                raise StoreError("cannot index events in %s: %s" % (self.index_dir, exc)) from None
            self._last_commit = time.time()
        return len(batch)

    def _repair(self) -> None:
        """At start: index what the log holds beyond each day's log_position (module docstring),
        holding index/.indexer.lock (a killed server's indexer may still be finishing)."""
        with indexer_locked(self._log):
            self._repair_locked()

    def _repair_locked(self) -> None:
        with self._lock:
            present = set()
            for name in self._log.day_files():
                present.add(_db_name(_day_of(name)))
                n = catch_up(self._log, self, name, self._warn)
                self._repaired_events += n
                self._events_indexed += n
            for entry in os.listdir(self.index_dir):
                if entry.endswith(DB_SUFFIX) and entry not in present:
                    self._warn("%s: its day file is gone (retention); removing its index" % entry)
                    self._forget(entry)

    def reindex(self) -> int:
        """Rebuild every day's database from the log; returns how many events were indexed."""
        with indexer_locked(self._log):
            return self._reindex_locked()

    def _reindex_locked(self) -> int:
        with self._lock:
            total = 0
            for entry in os.listdir(self.index_dir):
                if entry.endswith(DB_SUFFIX):
                    self._forget(entry)
            for name in self._log.day_files():
                n = catch_up(self._log, self, name, self._warn, announce=False)
                total += n
                self._events_indexed += n
            return total

    # -- queries --------------------------------------------------------------------------
    def _day_names(self, since_us: int, until_us: int, newest_first: bool = False) -> list[str]:
        """The day files whose databases may hold events in [since_us, until_us): a day's margin
        each side, as events/log does, since a file is named by the local date."""
        first = _local_date(since_us, -1)
        last = _local_date(max(until_us - 1, since_us), +1)
        names = []
        for entry in os.listdir(self.index_dir):
            if not entry.endswith(DB_SUFFIX):
                continue
            day = file_date(entry[:-len(DB_SUFFIX)] + ".events.zst")
            if day is not None and first <= day <= last:
                names.append(entry[:-len(DB_SUFFIX)] + ".events.zst")
        names.sort(reverse=newest_first)
        return names

    def _days_for(self, since_us: int, until_us: int, newest_first: bool = False):
        """The databases of _day_names, each opened as the caller reaches it (a range may hold
        more days than stay open at once)."""
        for name in self._day_names(since_us, until_us, newest_first):
            day = self._day(name)
            if day is not None:         # None: the indexer is still making it (index_elsewhere)
                yield day

    def events(self, query: EventQuery) -> Page:
        if not 1 <= query.limit <= MAX_PAGE_EVENTS:
            raise QueryError("limit must be from 1 to %d" % MAX_PAGE_EVENTS)
        where, args = _event_filters(query)
        cursor = _parse_cursor(query.cursor)
        deadline = _Deadline(query.budget_ms)
        found: list[Event] = []
        partial = False
        want = query.limit + 1
        with self._lock:
            for day in self._days_for(query.range.since_us, query.range.until_us, newest_first=True):
                clauses, params = list(where), list(args)
                if cursor is not None:
                    clauses.append("(ts_us < ? OR (ts_us = ? AND id < ?))")
                    params += [cursor[0], cursor[0], cursor[1]]
                sql = ("SELECT %s FROM events WHERE %s ORDER BY ts_us DESC, id DESC LIMIT ?"
                       % (_EVENT_COLUMNS, " AND ".join(clauses)))
                params.append(want - len(found))
                rows = _run(day, sql, params, deadline)
                if rows is None:
                    partial = True
                    break
                # The cursor's id orders arrival within its own day's database only; days hold
                # disjoint ts_us ranges (a day file is the local date of ts_us), so in any other
                # day the ts_us comparison alone decides, and the condition holds for all days.
                for row in rows:
                    found.append((day, row))
                if len(found) >= want:
                    break
        more = len(found) > query.limit
        found = found[:query.limit]
        next_cursor = None
        if found and (more or partial):
            last_row = found[-1][1]
            next_cursor = "%d.%d" % (last_row[1], last_row[0])
        elif partial:
            next_cursor = query.cursor
        return Page([_row_to_event(row) for _day, row in found], next_cursor, partial)

    def counts(self, query: AggregateQuery, by: str, bucket: str = "hour") -> Counts:
        if by not in COUNT_BY:
            raise QueryError("counts by %r: one of %s" % (by, ", ".join(COUNT_BY)))
        if bucket not in BUCKETS:
            raise QueryError("bucket %r: one of %s" % (bucket, ", ".join(BUCKETS)))
        lo, hi = _hours(query)
        from_rows = bool(query.scope or query.terms)
        deadline = _Deadline(query.budget_ms)
        merged: collections.Counter = collections.Counter()
        partial = False
        with self._lock:
            for day in self._days_for(lo, hi):
                if from_rows:
                    rows_sql, params = _matching("ts_us, " + by, lo, hi, query)
                    sql = "SELECT ts_us - ts_us %% %d, %s, count(*) FROM (%s) GROUP BY 1, 2" % (HOUR_US, by, rows_sql)
                else:
                    sql = ("SELECT hour_us, %s, sum(events) FROM counts_hour WHERE hour_us >= ? AND hour_us < ?"
                           " GROUP BY 1, 2" % by)
                    params = [lo, hi]
                rows = _run(day, sql, params, deadline)
                if rows is None:
                    partial = True
                    break
                if from_rows and sum(r[2] for r in rows) >= query.row_cap:
                    partial = True
                for hour, value, n in rows:
                    start = hour if bucket == "hour" else _day_start_us(hour)
                    merged[(start, value)] += n
        rows = sorted((start, value, n) for (start, value), n in merged.items())
        return Counts(lo, hi, by, bucket, rows, partial)

    def top(self, query: AggregateQuery, field: str, n: int = 10) -> Top:
        if field not in TOP_FIELDS:
            raise QueryError("top of %r: one of %s" % (field, ", ".join(TOP_FIELDS)))
        if n < 1:
            raise QueryError("n must be at least 1")
        lo, hi = _hours(query)
        from_rows = bool(query.scope or query.terms)
        deadline = _Deadline(query.budget_ms)
        merged: collections.Counter = collections.Counter()
        partial = False
        with self._lock:
            days = self._day_names(lo, hi)
            # Several days' sources: the whole days are ranked by the threshold algorithm over
            # each day's threats_day (one row per source and trail, in source order, so SQLite
            # sums a day's sources without sorting them: measured 4 ms a day of 4,000 sources
            # against 28 ms from top_hour's 24 rows per source), the others read whole below.
            ranked_days = []
            if field == "src_ip" and not from_rows and len(days) > 1:
                ranked_days = [name for name in days if _whole_day(name, lo, hi)]
                days = [name for name in days if name not in ranked_days]
            for name in days:
                day = self._day(name)
                if day is None:
                    continue
                if from_rows:
                    rows_sql, params = _matching(field, lo, hi, query)
                    sql = "SELECT %s, count(*) FROM (%s) GROUP BY 1" % (field, rows_sql)
                else:
                    # Within one day the database ranks; summing days needs every value's total.
                    limit = n if len(days) == 1 and not ranked_days else -1
                    sql = ("SELECT value, sum(events) AS c FROM top_hour WHERE field = ? AND hour_us >= ?"
                           " AND hour_us < ? GROUP BY value ORDER BY c DESC, value LIMIT ?")
                    params = [field, lo, hi, limit]
                rows = _run(day, sql, params, deadline)
                if rows is None:
                    partial = True
                    break
                if from_rows and sum(r[1] for r in rows) >= query.row_cap:
                    partial = True
                for value, count in rows:
                    merged[value] += count
            if ranked_days and not partial:
                partial = self._top_sources(ranked_days, merged, n, deadline)
        ranked = sorted(merged.items(), key=lambda kv: (-kv[1], kv[0]))[:n]
        return Top(lo, hi, field, ranked, partial)

    def _top_sources(self, names: list[str], merged: collections.Counter, n: int, deadline: _Deadline) -> bool:
        """Add the sources of whole days `names` to merged (source -> events) by _threshold_merge,
        so that its n best are exact; whether the deadline cut it."""
        totals = {value: [count] for value, count in merged.items()}

        def fetch(day, k):
            rows = _run(day, "SELECT src_ip, sum(events) AS c FROM threats_day GROUP BY src_ip ORDER BY c DESC LIMIT ?",
                        [k], deadline)
            return None if rows is None else [(value, [count]) for value, count in rows]

        def lookup(day, value):
            rows = _run(day, "SELECT sum(events) FROM threats_day WHERE src_ip = ?", [value], deadline)
            return _CUT if rows is None else ([rows[0][0]] if rows[0][0] is not None else None)

        def fold(m, more):
            m[0] += more[0]

        cut = _threshold_merge(names, self._day, totals, n, fetch, lookup, fold, lambda value: True)
        merged.clear()
        merged.update({value: m[0] for value, m in totals.items()})
        return cut

    def threats(self, query: AggregateQuery, n: int = 100, sort: str = "-events", spark: int = 0) -> Threats:
        if n < 1:
            raise QueryError("n must be at least 1")
        descending = sort.startswith("-")
        order = sort[1:] if descending else sort
        if order not in THREAT_SORTS:
            raise QueryError("sort %r: one of %s, each with a leading - for descending"
                             % (sort, ", ".join(THREAT_SORTS)))
        if not 0 <= spark <= MAX_SPARK:
            raise QueryError("spark must be from 0 to %d slices" % MAX_SPARK)
        lo, hi = _hours(query)
        from_rows = bool(query.scope or query.terms)
        excluded = {(ip_key(src) or src, ascii_lower(trail)) for src, trail in query.exclude_pairs}

        def left_out(pair) -> bool:
            return (ip_key(pair[0]) or pair[0], ascii_lower(pair[1])) in excluded

        # The whole-day roll-up may rank inside SQLite in any order but the address order of
        # `src` (its text sorts otherwise), keeping as many more rows as could be left out.
        sql_order = _SQL_ORDER.get(order)
        deadline = _Deadline(query.budget_ms)
        merged: dict[tuple[str, str], list] = {}
        partial = False
        contributing: list[str] = []
        ranked_days: list[str] = []
        with self._lock:
            names = self._day_names(lo, hi)
            if not from_rows and order == "events" and descending:
                # Several whole days, most events first (the dashboard's order): ranked by the
                # threshold algorithm over their threats_day (_threshold_threats) rather than
                # every pair of every day merged here (measured: 30 days of 31,000 pairs each,
                # 5 s merged); the days the range cuts are read whole below.
                whole = [name for name in names if _whole_day(name, lo, hi)]
                if len(whole) > 1:
                    ranked_days = whole
                    names = [name for name in names if name not in whole]
            if not from_rows:
                # The days cut by the range first: when none of them holds a threat in it (the
                # margin days around a whole day) and one whole day is all that is left, SQLite
                # ranks that day alone (measured on 30,000 pairs: 10 ms against 130 ms merged
                # here).
                whole = [name for name in names if _whole_day(name, lo, hi)]
                names = [name for name in names if name not in whole] + whole
            for i, name in enumerate(names):
                day = self._day(name)
                if day is None:
                    continue
                if from_rows:
                    rows_sql, params = _matching("src_ip, trail, ts_us, last_ts_us, severity, sensor", lo, hi, query)
                    sql = ("SELECT src_ip, trail, count(*), min(ts_us), max(last_ts_us),"
                           " max(CASE severity WHEN 'high' THEN 2 WHEN 'low' THEN 0 ELSE 1 END),"
                           " group_concat(DISTINCT sensor) FROM (%s) GROUP BY 1, 2" % rows_sql)
                elif _whole_day(name, lo, hi):
                    # The range holds this whole day: the day's own roll-up, one row per pair,
                    # ranked by SQLite when it is the only day (a day can hold 10^5 pairs).
                    alone = sql_order is not None and not merged and i == len(names) - 1
                    ranking = ""
                    if alone and not (order == "events" and descending):   # fewest events first too
                        ranking = "%s %s, " % (sql_order, "DESC" if descending else "ASC")
                    sql = ("SELECT src_ip, trail, events, first_ts_us, last_ts_us, severity, NULL FROM threats_day"
                           " ORDER BY %sevents DESC, src_ip, trail LIMIT ?" % ranking)
                    params = [n + len(excluded) if alone else -1]
                else:
                    sql = ("SELECT src_ip, trail, sum(events), min(first_ts_us), max(last_ts_us), max(severity),"
                           " NULL FROM threats_hour WHERE hour_us >= ? AND hour_us < ? GROUP BY 1, 2")
                    params = [lo, hi]
                rows = _run(day, sql, params, deadline)
                if rows is None:
                    partial = True
                    break
                if from_rows and sum(r[2] for r in rows) >= query.row_cap:
                    partial = True
                if rows:
                    contributing.append(name)
                for src, trail, count, first, last, rank, sensors in rows:
                    names_seen = set(sensors.split(",")) if sensors else set()
                    m = merged.get((src, trail))
                    if m is None:
                        merged[(src, trail)] = [count, first, last, rank, names_seen]
                    else:
                        m[0] += count
                        m[1] = min(m[1], first)
                        m[2] = max(m[2], last)
                        m[3] = max(m[3], rank)
                        m[4] |= names_seen
            listed = None
            if ranked_days and not partial:
                partial, listed = self._threshold_threats(ranked_days, merged, n, left_out, deadline)
                contributing += sorted({name for pair in listed for name in listed[pair]})
            if excluded:
                for pair in [p for p in merged if left_out(p)]:
                    del merged[pair]
            ranked = _ranked(merged, order, descending)[:n]
            details = {}
            if ranked and not partial:
                details, partial = self._threat_details(ranked, contributing, lo, hi, query, spark, from_rows, deadline,
                                                        ranked_days, listed)
        rows = []
        for (src, trail), m in ranked:
            latest, slices = details.get((src, trail), (None, None))
            typ, info, ref = latest[2:] if latest else ("", "", "")
            # A cut answer may lack a ranked pair's details: its sparkline is then all zeros,
            # as one the deadline cut part way has its missing slices.
            rows.append(Threat(src, trail, m[0], m[1], m[2], tuple(sorted(m[4])), _RANK_SEVERITY[m[3]], typ, info, ref,
                               tuple(slices) if slices is not None else (0,) * spark))
        return Threats(lo, hi, rows, partial)

    def _threshold_threats(self, names: list[str], merged: dict, n: int, left_out, deadline: _Deadline):
        """Add the pairs of whole days `names` to merged (pair -> [events, first, last, rank,
        sensors]) by _threshold_merge over each day's threats_day, so that its n best pairs by
        events that are not left_out(pair) are exact: (whether the deadline cut it, {pair: {day file name
        of `names` that holds it: the pair's last_ts_us there}})."""
        listed: dict[tuple[str, str], dict] = {}

        def fetch(day, k):
            rows = _run(day, "SELECT src_ip, trail, events, first_ts_us, last_ts_us, severity FROM threats_day"
                             " ORDER BY events DESC LIMIT ?", [k], deadline)
            if rows is None:
                return None
            name = os.path.basename(day.path)
            for src, trail, _count, _first, last, _rank in rows:
                listed.setdefault((src, trail), {})[name] = last
            return [((src, trail), [count, first, last, rank, set()]) for src, trail, count, first, last, rank in rows]

        def lookup(day, pair):
            rows = _run(day, "SELECT events, first_ts_us, last_ts_us, severity FROM threats_day WHERE src_ip = ?"
                             " AND trail = ?", pair, deadline)
            if rows is None:
                return _CUT
            if not rows:
                return None
            listed.setdefault(pair, {})[os.path.basename(day.path)] = rows[0][2]
            return list(rows[0])

        def fold(m, more):
            m[0] += more[0]
            m[1] = min(m[1], more[1])
            m[2] = max(m[2], more[2])
            m[3] = max(m[3], more[3])

        cut = _threshold_merge(names, self._day, merged, n, fetch, lookup, fold, lambda pair: not left_out(pair))
        return cut, {pair: {name[:-len(DB_SUFFIX)] + ".events.zst": last for name, last in days.items()}
                     for pair, days in listed.items()}

    def _threat_details(self, ranked, contributing, lo, hi, query, spark, from_rows, deadline, ranked_days=(),
                        listed=None):
        """({pair: (latest (ts_us, id, type, info, reference) or None, spark counts)}, partial)
        for the ranked pairs (and, from the roll-ups, each one's sensors into its m[4]): the latest
        event of each pair in the range, scope and terms (one probe of the source's index a pair,
        newest first), and its events per spark slice: from threats_hour when the slices are
        whole hours and no scope or terms narrow the events, else counted from the matching events
        of the ranked sources and trails, one query a day (each source's events read once, however
        many of its pairs ranked). A day of ranked_days (ranked by _threshold_threats) is probed only
        for the pairs `listed` ({pair: {day file name: the pair's last_ts_us that day}}) says it
        holds, and its events only when the pair's latest event was not found in a newer day."""
        where, args = _terms_filter(query.terms)
        scope_sql, scope_args = _scope_filter(query.scope)
        filters = "".join(" AND " + part for part in (scope_sql, where) if part)
        filter_args = scope_args + args
        slice_us = (hi - lo) // spark if spark else 0
        hourly = spark and not from_rows and (hi - lo) % spark == 0 and slice_us % HOUR_US == 0
        out = {pair: [None, [0] * spark] for pair, _m in ranked}
        srcs = sorted({src for (src, _trail), _m in ranked})
        trails = sorted({trail for (_src, trail), _m in ranked})

        def cut():
            return {k: tuple(v) for k, v in out.items()}, True

        # Newest day first, so that a ranked day's latest event is usually found before its older
        # days, whose probe of the events is then skipped.
        for name in sorted(contributing, reverse=True):
            day = self._day(name)
            if day is None:
                continue
            rolled = name in ranked_days
            for (src, trail), m in ranked:
                got = out[(src, trail)]
                if rolled:
                    day_last = listed.get((src, trail), {}).get(name)
                    if day_last is None:
                        continue            # the pair has no events that day
                    if got[0] is not None and got[0][0] >= day_last:
                        # Its latest event is in a newer day (every event of this one starts by
                        # day_last): only the sensors that saw it here are still wanted.
                        rows = _run(day, "SELECT " + _SENSORS, [src, trail, lo, hi], deadline)
                        if rows is None:
                            return cut()
                        if rows[0][0]:
                            m[4].update(rows[0][0].split("\x1f"))
                        if hourly:
                            if not self._spark_hours(day, src, trail, lo, hi, slice_us, spark, got[1], deadline):
                                return cut()
                        continue
                # ts_us <= the pair's latest last_ts_us (m[2]): the walk back along the source's
                # index starts at the pair's latest event (for an uncondensed one, the very row)
                # instead of at the end of the range (measured: 126 ms for 100 pairs of heavy
                # sources of a 1M-event day, against 3 ms).
                # Without scope and terms the row also says which sensors saw the pair, from their
                # own roll-up (one primary-key range; measured: 100 pairs of a 1M-event day in
                # 3 ms; one query with a row-value IN list scanned the table, 150 ms); the rows
                # path counted them while grouping.
                rows = _run(day, "SELECT ts_us, id, type, info, reference, %s FROM events WHERE src_key = ?"
                                 " AND src_ip = ? AND trail = ? AND ts_us >= ? AND ts_us < ? AND ts_us <= ?%s"
                                 " ORDER BY ts_us DESC, id DESC LIMIT 1"
                                 % (_SENSORS if not from_rows else "NULL", filters),
                            ([src, trail, lo, hi] if not from_rows else []) + [ip_key(src), src, trail, lo, hi, m[2]]
                            + filter_args, deadline)
                if rows is None:
                    return cut()
                if rows and (got[0] is None or rows[0][0] > got[0][0]):
                    got[0] = rows[0][:5]
                if rows and rows[0][5]:
                    m[4].update(rows[0][5].split("\x1f"))
                if hourly:
                    if not self._spark_hours(day, src, trail, lo, hi, slice_us, spark, got[1], deadline):
                        return cut()
            if spark and not hourly:
                keys = [ip_key(src) for src in srcs]
                rows = _run(day, "SELECT src_ip, trail, (ts_us - ?) * ? / ?, count(*) FROM events WHERE src_key IN (%s)"
                                 " AND trail IN (%s) AND ts_us >= ? AND ts_us < ?%s GROUP BY 1, 2, 3"
                                 % (",".join("?" * len(keys)), ",".join("?" * len(trails)), filters),
                            [lo, spark, hi - lo] + keys + trails + [lo, hi] + filter_args, deadline)
                if rows is None:
                    return cut()
                for src, trail, index, count in rows:
                    got = out.get((src, trail))
                    if got is not None:
                        got[1][min(int(index), spark - 1)] += count
        return {k: tuple(v) for k, v in out.items()}, False

    @staticmethod
    def _spark_hours(day, src, trail, lo, hi, slice_us, spark, counts, deadline) -> bool:
        """Add a pair's events of `day` to its sparkline `counts` from threats_hour (slices of
        whole hours); false when the deadline cut it."""
        rows = _run(day, "SELECT (hour_us - ?) / ?, events FROM threats_hour WHERE src_ip = ? AND trail = ?"
                         " AND hour_us >= ? AND hour_us < ?", [lo, slice_us, src, trail, lo, hi], deadline)
        if rows is None:
            return False
        for index, count in rows:
            counts[min(int(index), spark - 1)] += count
        return True

    def status(self) -> StoreStatus:
        # Without the lock: the HTTP loop asks for this while a batch may hold the lock for a
        # while; each figure is one attribute read, so at worst a batch's worth out of date.
        try:
            days = sum(1 for e in os.listdir(self.index_dir) if e.endswith(DB_SUFFIX))
        except OSError:
            days = 0
        details = {"log_dir": self.log_dir, "frames_written": self._log.frames_written}
        indexed = self._events_indexed
        if self._link is not None:
            details.update(self._link.status())
            indexed += self._link.indexed_events
        return StoreStatus(self.backend, not self._closed, days, indexed, self._repaired_events,
                           self._last_commit, details)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                self._log.close()
            finally:
                for day in self._days.values():
                    day.close()
                self._days.clear()


def _run(day: _Day, sql: str, params, deadline: _Deadline):
    """The rows of a query, or None when its deadline interrupted it."""
    if time.monotonic() >= deadline.at:
        return None
    day.conn.set_progress_handler(deadline, _PROGRESS_STEPS)
    try:
        return day.conn.execute(sql, params).fetchall()
    except sqlite3.OperationalError as exc:
        if deadline.hit or "interrupt" in str(exc):
            return None
        raise
    finally:
        day.conn.set_progress_handler(None, 0)


def _whole_day(name: str, lo: int, hi: int) -> bool:
    """Whether [lo, hi) holds the whole local day of day file `name` (so its day roll-up answers)."""
    d = _day_of(name)
    start = int(time.mktime((d.year, d.month, d.day, 0, 0, 0, 0, 0, -1))) * 1_000_000
    n = d + datetime.timedelta(days=1)
    end = int(time.mktime((n.year, n.month, n.day, 0, 0, 0, 0, 0, -1))) * 1_000_000
    return lo <= start and end <= hi


def _hours(query: AggregateQuery) -> tuple[int, int]:
    lo = query.range.since_us - query.range.since_us % HOUR_US
    hi = -(-query.range.until_us // HOUR_US) * HOUR_US
    return lo, hi


def _day_start_us(hour_us: int) -> int:
    """The local midnight starting the day of hour_us (day buckets group whole UTC hours by the
    local date the hour starts in)."""
    d = _local_date(hour_us)
    return int(time.mktime((d.year, d.month, d.day, 0, 0, 0, 0, 0, -1))) * 1_000_000


def _ranges(text: str) -> tuple[bytes, bytes]:
    try:
        return key_range(text)
    except AddressError as exc:
        raise QueryError(str(exc)) from None


def _scope_filter(scope) -> tuple[str, list]:
    if not scope:
        return "", []
    parts, args = [], []
    for item in scope:
        lo, hi = _ranges(item)
        parts.append("(src_key BETWEEN ? AND ?) OR (dst_key BETWEEN ? AND ?)")
        args += [lo, hi, lo, hi]
    return "(%s)" % " OR ".join(parts), args


def _in_scope(columns: str, lo: int, hi: int, scope, row_cap: int, where: str = "", where_args=()) -> tuple[str, list]:
    """SQL selecting `columns` of at most row_cap events of [lo, hi) in scope (and `where`): the
    ids found through the address indexes, one key range per network and side, rather than the
    time index with the scope as a filter (which SQLite's planner picks, and which reads every
    event of the range: measured 1,040 ms against 450 ms for 165,000 of a day's 1M events in
    scope)."""
    parts, args = [], []
    for item in scope:
        low, high = _ranges(item)
        for column in ("src_key", "dst_key"):
            parts.append("SELECT id FROM events WHERE %s BETWEEN ? AND ? AND ts_us >= ? AND ts_us < ?" % column)
            args += [low, high, lo, hi]
    return ("SELECT %s FROM events WHERE id IN (%s)%s LIMIT ?" % (columns, " UNION ".join(parts),
                                                                 " AND " + where if where else ""),
            args + list(where_args) + [row_cap])


def _matching(columns: str, lo: int, hi: int, query: AggregateQuery) -> tuple[str, list]:
    """SQL selecting `columns` of at most row_cap events of [lo, hi) in the query's scope that
    match all its terms (the filtered aggregates count these rows, not the roll-ups). SQLite
    picks the index (time, or an address term's); keeping the time index out of a whole day
    (+ts_us, a table scan) was measured no faster for a severity filter over a 1M-event day and
    three times slower for a source /16, so it is left to the planner."""
    where, args = _terms_filter(query.terms)
    if query.scope:
        return _in_scope(columns, lo, hi, query.scope, query.row_cap, where, args)
    return ("SELECT %s FROM events WHERE ts_us >= ? AND ts_us < ?%s LIMIT ?"
            % (columns, " AND " + where if where else ""), [lo, hi] + args + [query.row_cap])


def _like(value: str, whole: bool) -> str:
    """A trail/sensor (whole) or info/text (substring) Term value as a LIKE pattern (ESCAPE '\\'):
    `*` any run of characters, LIKE's own % and _ taken literally. LIKE folds ASCII letters only,
    as server/filters.py matches() does."""
    body = value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_").replace("*", "%")
    return body if whole else "%" + body + "%"


def _term_sql(term: Term) -> tuple[str, list]:
    """One Term as an SQL condition on events (server/store Term's semantics)."""
    f, values = term.field, term.values
    parts, args = [], []
    if f in ("src", "dst", "address"):
        columns = {"src": ("src_key",), "dst": ("dst_key",), "address": ("src_key", "dst_key")}[f]
        for value in values:
            low, high = _ranges(value)
            for column in columns:
                parts.append("%s BETWEEN ? AND ?" % column)
                args += [low, high]
    elif f == "port":
        marks = ",".join("?" * len(values))
        try:
            ports = [int(v) for v in values]
        except ValueError:
            raise QueryError("a port filter takes whole numbers, not %r" % (values,)) from None
        if not all(0 <= port <= 65535 for port in ports):
            raise QueryError("a port filter takes ports from 0 to 65535, not %r" % (values,))
        parts.append("src_port IN (%s) OR dst_port IN (%s)" % (marks, marks))
        args += ports + ports
    elif f in ("proto", "type"):
        parts.append("upper(%s) IN (%s)" % (f, ",".join("?" * len(values))))
        args += list(values)
    elif f == "severity":
        if not set(values) <= set(SEVERITIES):
            raise QueryError("a severity filter takes %s, not %r" % (", ".join(SEVERITIES), values))
        parts.append("severity IN (%s)" % ",".join("?" * len(values)))
        args += list(values)
    else:
        whole = f in ("trail", "sensor")
        columns = ("trail", "info") if f == "text" else (f,)
        for value in values:
            for column in columns:
                parts.append("%s LIKE ? ESCAPE '\\'" % column)
                args.append(_like(value, whole))
    sql = " OR ".join(parts)
    # NOT of a NULL (a port an ICMP event lacks) would drop the row: coalesce makes it false.
    return ("NOT coalesce((%s), 0)" % sql if term.negate else "(%s)" % sql), args


def _terms_filter(terms) -> tuple[str, list]:
    parts, args = [], []
    for term in terms:
        sql, more = _term_sql(term)
        parts.append(sql)
        args += more
    return " AND ".join(parts), args


def _canonical(src: str) -> str:
    """An address as the API writes it (::ffff:10.0.0.1 as 10.0.0.1), so ties rank as they show."""
    if ":" not in src:
        return src
    k = ip_key(src)
    return src if k is None else key_text(k)


def _ranked(merged: dict, order: str, descending: bool) -> list:
    """merged's (pair, [events, first, last, rank, sensors]) items in THREAT_SORTS order; ties by
    most events, then source (its canonical text), then trail. `src` orders by address, not by
    text (10.0.0.9 before 10.0.0.10, IPv4 before IPv6)."""
    canonical = {src: _canonical(src) for src, _trail in merged}
    if order == "trail" and descending:         # text cannot be negated: two stable sorts
        items = sorted(merged.items(), key=lambda kv: (-kv[1][0], canonical[kv[0][0]], kv[0][1]))
        return sorted(items, key=lambda kv: kv[0][1], reverse=True)
    sign = -1 if descending else 1
    if order == "src":
        number = {src: int.from_bytes(ip_key(src) or b"", "big") * sign for src in canonical}
        primary = lambda kv: number[kv[0][0]]               # noqa: E731
    elif order == "trail":
        primary = lambda kv: kv[0][1]                       # noqa: E731
    else:
        column = {"events": 0, "first": 1, "last": 2, "severity": 3}[order]
        primary = lambda kv: sign * kv[1][column]           # noqa: E731
    return sorted(merged.items(), key=lambda kv: (primary(kv), -kv[1][0], canonical[kv[0][0]], kv[0][1]))


# The first batch _threshold_merge reads of each day, as a multiple of the rows asked for (and at
# least _FIRST_BATCH): enough that one round usually decides; each further round reads 4 times more.
_BATCH_FACTOR = 2
_FIRST_BATCH = 64
_CUT = object()


def _threshold_merge(days: list, open_day, merged: dict, n: int, fetch, lookup, fold, accept) -> bool:
    """Complete `merged` (key -> aggregate, a list whose [0] is the events; exact over the days
    read whole) with the keys of `days` (day file names whose roll-up is read best first; open_day
    gives a name's database or None), so that merged's n best keys by events that `accept` takes
    are exact and are the true n best over all the days, ties included (a key left out or left
    incomplete has fewer events than the n-th).

    Fagin's threshold algorithm, in batches: each round reads each unfinished day's k rows with
    most events (fetch(day, k) -> [(key, aggregate)] best first, None when the deadline cut it); a
    day's floor is the events of its k-th row (0 once it returned fewer than k: read to its end),
    so a key not among a day's rows has at most that many there. The keys seen are then
    completed, most promising first, by looking each up by key in the days that did not list it
    (lookup(day, key) -> aggregate, None when absent, _CUT when cut), in growing chunks and one
    day at a time (a range may hold more days than stay open), until the next key's bound (its
    events so far plus the floors of the days it is unknown in) is below the n-th best complete
    total. When the sum of all the floors (the most a key no day listed can have) is below that
    total too, nothing unread can rank; else k grows 4-fold. fold(aggregate, more) merges into
    the first. Returns whether the deadline cut it (merged then holds what was read, to be
    flagged partial)."""
    k = max(_FIRST_BATCH, _BATCH_FACTOR * n)
    known = {key: set() for key in merged}      # day indexes already folded into merged[key]
    live = list(range(len(days)))               # the days not yet read to their end
    floor = [0] * len(days)
    while True:
        for i in live:
            day = open_day(days[i])
            rows = [] if day is None else fetch(day, k)
            if rows is None:
                return True
            for key, agg in rows:
                seen = known.get(key)
                if seen is None:
                    known[key] = {i}
                    merged[key] = agg
                elif i not in seen:         # a later round reads a day's first rows again
                    seen.add(i)
                    fold(merged[key], agg)
            floor[i] = rows[-1][1][0] if len(rows) >= k else 0
        live = [i for i in live if floor[i]]
        bound = sum(floor[i] for i in live)
        order = sorted(((merged[key][0] + bound - sum(floor[i] for i in seen if floor[i]), key)
                        for key, seen in known.items()), key=lambda uk: -uk[0])
        best: list[int] = []            # a min-heap of the n best complete totals of accepted keys
        at, chunk = 0, max(n, 16)
        while at < len(order) and not (len(best) == n and order[at][0] < best[0]):
            batch = [key for u, key in order[at:at + chunk] if not (len(best) == n and u < best[0])]
            at += chunk
            chunk *= 2
            for i in live:
                wanted = [key for key in batch if i not in known[key]]
                day = open_day(days[i]) if wanted else None
                for key in wanted:
                    agg = None if day is None else lookup(day, key)
                    if agg is _CUT:
                        return True
                    known[key].add(i)
                    if agg is not None:
                        fold(merged[key], agg)
            for key in batch:
                if accept(key):
                    if len(best) < n:
                        heapq.heappush(best, merged[key][0])
                    elif merged[key][0] > best[0]:
                        heapq.heapreplace(best, merged[key][0])
        if not live or (len(best) == n and bound < best[0]):
            return False
        k *= 4


def _event_filters(q: EventQuery) -> tuple[list[str], list]:
    clauses = ["ts_us >= ?", "ts_us < ?"]
    args: list = [q.range.since_us, q.range.until_us]
    for column, value in (("src_key", q.src), ("dst_key", q.dst)):
        if value:
            lo, hi = _ranges(value)
            clauses.append("%s BETWEEN ? AND ?" % column)
            args += [lo, hi]
    if q.address:
        lo, hi = _ranges(q.address)
        clauses.append("(src_key BETWEEN ? AND ? OR dst_key BETWEEN ? AND ?)")
        args += [lo, hi, lo, hi]
    for column, value in (("src_port", q.src_port), ("dst_port", q.dst_port), ("proto", q.proto),
                          ("type", q.type), ("trail", q.trail), ("sensor", q.sensor)):
        if value is not None:
            clauses.append("%s = ?" % column)
            args.append(value)
    if q.port is not None:
        clauses.append("(src_port = ? OR dst_port = ?)")
        args += [q.port, q.port]
    if q.info:
        clauses.append("instr(lower(info), ?) > 0")
        args.append(q.info.lower())
    if q.severity:
        clauses.append("severity IN (%s)" % ",".join("?" * len(q.severity)))
        args += list(q.severity)
    scope_sql, scope_args = _scope_filter(q.scope)
    if scope_sql:
        clauses.append(scope_sql)
        args += scope_args
    if q.terms:
        terms_sql, terms_args = _terms_filter(q.terms)
        clauses.append(terms_sql)
        args += terms_args
    return clauses, args


def _parse_cursor(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    ts, dot, rowid = text.partition(".")
    try:
        if not dot:
            raise ValueError
        return int(ts), int(rowid)
    except ValueError:
        raise QueryError("not a cursor from this store: %r" % text) from None


def reindex(log_dir: str, warn=None) -> int:
    """`maltrail-engine server reindex`: rebuild the index of log_dir from its day files (the
    server must not be running: the store's lock says so)."""
    store = SqliteStore(log_dir, warn=warn, repair=False)
    try:
        return store.reindex()
    finally:
        store.close()
