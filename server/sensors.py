"""Our sensors' HTTPS intake and the sensor registry.

Owns `POST /api/v1/intake` (a batch of events from one of our sensors, events/forwarders/
server_link.py), the rule that stores each of a sensor's events exactly once, the registry of
every sensor heard (ours over HTTPS, Maltrail's over UDP by the sensor name in their events)
and `GET /api/v1/sensors`. Must not parse datagrams (server/intake.py), know a backend's SQL
(server/store/) or decide who may log in (server/auth/).

The batch (docs/API.md, "Sensors and intake"): a zstd frame holding one msgpack map
    {"v": 1, "sensor": NAME, "version": TEXT, "trails": TEXT, "lag_s": FLOAT,
     "files": [[DAY_FILE_NAME, INODE], ...],
     "events": [[FILE_INDEX, OFFSET, DONE, RECORD], ...]}
sent with `Authorization: Bearer NAME:KEY` (the key `server sensor add NAME` printed). Each
event carries its place in the sensor's own log, (OFFSET, DONE) within the day file
FILES[FILE_INDEX]: the place just after the event, as events/forwarders/cursor.py keeps it. Within
one day file (a stream: name and inode) these only grow, so they number the sensor's events:
the server keeps, per sensor and stream, the highest place stored, and an event at or below it
is a repeat (acknowledged, not stored again). The sensor resends from its saved place after any
failure, with whatever batch boundaries it then has, and nothing is lost or doubled.

Exactly once across a crash. The store's ingest and the saved places cannot be one transaction
(the store may be ClickHouse), so the order is:
  1. an intent, committed to the state database (synchronous=FULL): the sensor, how many of its
     events the store held in the batch's hours before (`before`), and the places of the events
     about to be stored, in order;
  2. the store's ingest (events of one server day at a time, in the sensor's order: a store
     interrupted holds a prefix of them: the SQLite log writes frames in order and truncates a
     torn one, a ClickHouse INSERT of one block is whole);
  3. in one transaction: the new places, the registry row, the intent removed; then 200.
A kill between 1 and 3 leaves the intent; at the next start (after the store's own repair) the
store's count of that sensor's events in those hours, less `before`, is how many of the batch
got in, and the places move past exactly those. The same resolution runs at once when the ingest
fails (disk full: 503, the sensor keeps its backlog and retries). This needs that nothing else
stores events of that sensor name in those hours meanwhile: one intake thread does steps 1-3 for
every batch, and a sensor sends to one server.

HTTPS batches do not go through the UDP path's store thread: that thread gathers for up to half
a second to make big batches, and a sensor waits for its acknowledgement; they go through the
same store object (one log writer, one lock) from an intake thread of their own.

Refusals, each counted by reason: 401 no or wrong key (`unauthorized`), 400 a body that is not
a batch (`not_zstd`, `too_large`, `not_msgpack`, `bad_batch`, `bad_event`, `sensor_mismatch`),
413 a body over [server] max_request_bytes (AuthWeb's body limit), 503 the store failing
(`store_failed`).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import json
import sqlite3
import threading
import time
from typing import NamedTuple

import msgpack
import zstandard

from events.log import file_name_for
from events.record import RECORD_FIELDS, Event
from server.intake import expand
from server.store import AggregateQuery, StoreError, TimeRange

INTAKE_PATH = "/api/v1/intake"
SENSORS_PATH = "/api/v1/sensors"
BATCH_VERSION = 1
MAX_BATCH_EVENTS = 50_000
MAX_BATCH_BYTES = 64 << 20          # decompressed
HOUR_US = 3_600_000_000
RATE_WINDOW_S = 60
MAX_NAME = 255

R_UNAUTHORIZED = "unauthorized"
R_NOT_ZSTD = "not_zstd"
R_TOO_LARGE = "too_large"
R_NOT_MSGPACK = "not_msgpack"
R_BAD_BATCH = "bad_batch"
R_BAD_EVENT = "bad_event"
R_MISMATCH = "sensor_mismatch"
R_STORE = "store_failed"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS link_places (
    sensor TEXT NOT NULL, stream TEXT NOT NULL, offset INTEGER NOT NULL, done INTEGER NOT NULL,
    PRIMARY KEY (sensor, stream)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS link_intents (id INTEGER PRIMARY KEY, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS link_sensors (
    name TEXT PRIMARY KEY, kind TEXT NOT NULL, first_seen_s REAL NOT NULL, last_seen_s REAL NOT NULL,
    version TEXT NOT NULL, trails TEXT NOT NULL, lag_s REAL NOT NULL, events INTEGER NOT NULL);
"""


class Refused(Exception):
    """A batch refused: `reason` is the counted reason, the message the answer's text."""

    def __init__(self, reason: str, message: str, status: int = 400):
        super().__init__(message)
        self.reason = reason
        self.status = status


class Item(NamedTuple):
    stream: str          # "DAY_FILE_NAME:INODE" of the sensor's log
    offset: int
    done: int
    events: tuple        # the record as stored: one Event, or several for a condensed record


class Batch(NamedTuple):
    sensor: str
    version: str
    trails: str
    lag_s: float
    items: list[Item]
    unstorable: int = 0         # records the store cannot hold (counted, acknowledged, not stored)
    problem: str = ""           # why the first of them could not be


def _text(value, what: str, most: int = MAX_NAME) -> str:
    if not isinstance(value, str) or len(value) > most:
        raise Refused(R_BAD_BATCH, "%s must be text of at most %d characters" % (what, most))
    return value


def _check_record(record) -> Event:
    """An event record from the network, checked field by field before it is believed."""
    if not isinstance(record, list) or len(record) != len(RECORD_FIELDS):
        raise ValueError("not a list of %d fields" % len(RECORD_FIELDS))
    ev = Event(*record)
    for name in ("sensor", "src_ip", "dst_ip", "proto", "type", "trail", "info", "reference", "severity"):
        if not isinstance(getattr(ev, name), str):
            raise ValueError("%s is not text" % name)
    for name in ("ts_us", "count", "last_ts_us"):
        value = getattr(ev, name)
        if type(value) is not int or not 0 <= value < 1 << 62:
            raise ValueError("%s is not a time or count" % name)
    for name in ("src_port", "dst_port"):
        value = getattr(ev, name)
        if value is not None and not isinstance(value, str) and (type(value) is not int or not 0 <= value <= 65535):
            raise ValueError("%s is not a port" % name)
    return ev


def decode_batch(body: bytes, sensor: str) -> Batch:
    """The batch in `body`, sent by the sensor authenticated as `sensor`; Refused otherwise."""
    try:
        params = zstandard.get_frame_parameters(body)
    except zstandard.ZstdError:
        raise Refused(R_NOT_ZSTD, "the body is not a zstd frame") from None
    if params.content_size > MAX_BATCH_BYTES:
        raise Refused(R_TOO_LARGE, "the batch is larger than %d bytes decompressed" % MAX_BATCH_BYTES)
    try:
        # A frame without its content size is decompressed into at most MAX_BATCH_BYTES (more is
        # an error, not an allocation): a small body cannot make the server hold gigabytes.
        raw = zstandard.ZstdDecompressor().decompress(body, max_output_size=MAX_BATCH_BYTES)
    except zstandard.ZstdError as exc:
        if params.content_size in (-1, zstandard.CONTENTSIZE_UNKNOWN) and "output" in str(exc).lower():
            raise Refused(R_TOO_LARGE, "the batch is larger than %d bytes decompressed" % MAX_BATCH_BYTES) from None
        raise Refused(R_NOT_ZSTD, "the zstd frame is damaged: %s" % exc) from None
    try:
        doc = msgpack.unpackb(raw, raw=False, strict_map_key=True, max_array_len=MAX_BATCH_EVENTS * 4 + 16,
                              max_map_len=64, max_str_len=1 << 20, max_bin_len=0, max_ext_len=0)
    except Exception as exc:  # noqa: BLE001 (msgpack raises several types for bad input)
        raise Refused(R_NOT_MSGPACK, "the batch is not one msgpack value: %s" % type(exc).__name__) from None
    if not isinstance(doc, dict) or doc.get("v") != BATCH_VERSION:
        raise Refused(R_BAD_BATCH, "the batch is not a version %d batch map" % BATCH_VERSION)
    if doc.get("sensor") != sensor:
        raise Refused(R_MISMATCH, "the batch names sensor %r, the key is of %r" % (doc.get("sensor"), sensor))
    files, entries = doc.get("files"), doc.get("events")
    if not isinstance(files, list) or not isinstance(entries, list) or len(entries) > MAX_BATCH_EVENTS:
        raise Refused(R_BAD_BATCH, "files and events must be lists (at most %d events)" % MAX_BATCH_EVENTS)
    streams = []
    for f in files:
        if (not isinstance(f, list) or len(f) != 2 or not isinstance(f[0], str) or not 0 < len(f[0]) <= MAX_NAME
                or type(f[1]) is not int or f[1] < 0):
            raise Refused(R_BAD_BATCH, "a file is [day file name, inode]")
        streams.append("%s:%d" % (f[0], f[1]))
    lag = doc.get("lag_s", 0.0)
    if type(lag) not in (int, float) or not 0 <= lag < 1e9:
        raise Refused(R_BAD_BATCH, "lag_s must be a number of seconds")
    items = []
    unstorable, problem = 0, ""
    for i, entry in enumerate(entries):
        try:
            if not isinstance(entry, list) or len(entry) != 4:
                raise ValueError("an event is [file index, offset, done, record]")
            index, offset, done, record = entry
            if type(index) is not int or not 0 <= index < len(streams):
                raise ValueError("no such file index")
            if type(offset) is not int or type(done) is not int or offset < 0 or done < 0:
                raise ValueError("the place is two integers from 0")
            event = _check_record(record)
        except (ValueError, TypeError) as exc:
            raise Refused(R_BAD_EVENT, "event %d of the batch: %s" % (i, exc)) from None
        if event.sensor != sensor:
            raise Refused(R_MISMATCH, "event %d names sensor %r, the key is of %r" % (i, event.sensor, sensor))
        try:
            stored_as = expand(event)
        except ValueError as exc:
            # Well formed but not storable: acknowledged with the batch and counted (refusing the
            # batch would stop the sensor's forwarding for good on one record).
            stored_as = ()
            unstorable += 1
            problem = problem or "event %d: %s" % (i, exc)
        items.append(Item(streams[index], offset, done, stored_as))
    return Batch(sensor, _text(doc.get("version", ""), "version"), _text(doc.get("trails", ""), "trails"),
                 float(lag), items, unstorable, problem)


# -- the registry ----------------------------------------------------------------------------
class SensorState:
    __slots__ = ("name", "kind", "first_seen_s", "last_seen_s", "version", "trails", "lag_s", "events", "recent")

    def __init__(self, name: str, kind: str, first_seen_s: float, last_seen_s: float = 0.0, version: str = "",
                 trails: str = "", lag_s: float = 0.0, events: int = 0):
        self.name, self.kind = name, kind
        self.first_seen_s, self.last_seen_s = first_seen_s, last_seen_s
        self.version, self.trails, self.lag_s, self.events = version, trails, lag_s, events
        self.recent: collections.deque = collections.deque()     # (monotonic second, events)

    def heard(self, events: int, now_s: float, mono_s: float) -> None:
        self.last_seen_s = now_s
        self.events += events
        second = int(mono_s)
        if self.recent and self.recent[-1][0] == second:
            self.recent[-1] = (second, self.recent[-1][1] + events)
        else:
            self.recent.append((second, events))
        while self.recent and self.recent[0][0] <= second - RATE_WINDOW_S:
            self.recent.popleft()

    def rate(self, mono_s: float) -> float:
        """Events per second over the last RATE_WINDOW_S seconds (this process's)."""
        return sum(n for s, n in self.recent if s > int(mono_s) - RATE_WINDOW_S) / RATE_WINDOW_S


class Registry:
    """Every sensor heard, with what its batches say; persisted in the state database (HTTPS
    sensors with each batch, UDP sensors at most every FLUSH_S). Thread-safe."""

    FLUSH_S = 5.0

    def __init__(self, db: "LinkDB", silent_after_s: float, keys=lambda: ()):
        self.db = db
        self.silent_after_s = silent_after_s
        self.keys = keys            # () -> [(name, created_s, revoked_s)] of sensor keys
        self._lock = threading.Lock()
        self.sensors: dict[str, SensorState] = {r.name: r for r in db.load_sensors()}
        self._dirty: set[str] = set()
        self._flushed = time.monotonic()

    def heard(self, name: str, kind: str, events: int, version: str = "", trails: str = "",
              lag_s: float | None = None) -> SensorState:
        now, mono = time.time(), time.monotonic()
        with self._lock:
            s = self.sensors.get(name)
            if s is None:
                s = self.sensors[name] = SensorState(name, kind, now)
            s.kind = kind
            if version:
                s.version = version
            if trails:
                s.trails = trails
            if lag_s is not None:
                s.lag_s = lag_s
            s.heard(events, now, mono)
            self._dirty.add(name)
            return s

    def heard_events(self, events) -> None:
        """UDP (Maltrail) sensors: the events just stored, by their sensor name."""
        for name, n in collections.Counter(e.sensor for e in events).items():
            if name and len(name) <= MAX_NAME:
                self.heard(name, "udp", n)
        if time.monotonic() - self._flushed >= self.FLUSH_S:
            self.flush()

    def dirty_rows(self) -> list[tuple]:
        with self._lock:
            rows = [self._row(self.sensors[n]) for n in self._dirty]
            self._dirty.clear()
            self._flushed = time.monotonic()
        return rows

    @staticmethod
    def _row(s: SensorState) -> tuple:
        return (s.name, s.kind, s.first_seen_s, s.last_seen_s, s.version, s.trails, s.lag_s, s.events)

    def flush(self) -> None:
        rows = self.dirty_rows()
        if rows:
            try:
                self.db.save_sensors(rows)
            except sqlite3.Error:
                pass        # kept in memory; the next flush tries again with newer values

    def snapshot(self, now_s: float | None = None) -> list[dict]:
        now_s = time.time() if now_s is None else now_s
        mono = time.monotonic()
        out = {}
        with self._lock:
            for s in self.sensors.values():
                out[s.name] = {
                    "name": s.name, "transport": s.kind, "first_seen_unix": s.first_seen_s,
                    "last_seen_unix": s.last_seen_s, "version": s.version or None,
                    "trails": s.trails or None, "events": s.events,
                    "events_per_s": round(s.rate(mono), 3), "forwarding_lag_s": s.lag_s,
                    "silent_s": round(max(now_s - s.last_seen_s, 0.0), 3),
                    "silent": now_s - s.last_seen_s > self.silent_after_s, "key": None}
        for name, created_s, revoked_s in self.keys():
            row = out.get(name)
            if row is None:     # a key issued, nothing heard yet: silent once the grace has passed
                row = out[name] = {
                    "name": name, "transport": "https", "first_seen_unix": None, "last_seen_unix": None,
                    "version": None, "trails": None, "events": 0, "events_per_s": 0.0, "forwarding_lag_s": None,
                    "silent_s": None, "silent": now_s - created_s > self.silent_after_s}
            row["key"] = "revoked" if revoked_s is not None else "valid"
        return [out[n] for n in sorted(out)]


# -- the state it keeps ------------------------------------------------------------------------
class LinkDB:
    """The intake's tables in the server's state database (server/auth/state.py makes and checks
    the file; this is a second connection of its own, with synchronous=FULL: an intent or a place
    must survive a power cut, not only a kill). Used from the intake thread, and for the
    registry's flushes; one lock."""

    def __init__(self, path: str):
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def places(self) -> dict[str, dict[str, tuple[int, int]]]:
        out: dict = collections.defaultdict(dict)
        with self._lock:
            for sensor, stream, offset, done in self._db.execute("SELECT * FROM link_places"):
                out[sensor][stream] = (offset, done)
        return out

    def load_sensors(self) -> list[SensorState]:
        with self._lock:
            return [SensorState(*row) for row in self._db.execute(
                "SELECT name, kind, first_seen_s, last_seen_s, version, trails, lag_s, events FROM link_sensors")]

    def save_sensors(self, rows) -> None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._save_sensors(rows)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def _save_sensors(self, rows) -> None:
        self._db.executemany("INSERT OR REPLACE INTO link_sensors VALUES (?,?,?,?,?,?,?,?)", rows)

    def add_intent(self, intent: dict) -> int:
        with self._lock:
            return self._db.execute("INSERT INTO link_intents (body) VALUES (?)", (json.dumps(intent),)).lastrowid

    def intents(self) -> list[tuple[int, dict]]:
        with self._lock:
            return [(i, json.loads(body)) for i, body in self._db.execute("SELECT id, body FROM link_intents ORDER BY id")]

    def settle(self, intent_id: int, sensor: str, places: dict[str, tuple[int, int]], rows=()) -> None:
        """In one transaction: the sensor's new places, registry rows, and the intent gone."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany("INSERT OR REPLACE INTO link_places VALUES (?,?,?,?)",
                                     [(sensor, stream, o, d) for stream, (o, d) in places.items()])
                if rows:
                    self._save_sensors(rows)
                self._db.execute("DELETE FROM link_intents WHERE id = ?", (intent_id,))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise


class IntakeCounters:
    """What became of every HTTPS batch (written by the loop and the intake thread, one field
    each; read by /api/v1/health and /metrics)."""

    def __init__(self):
        self.batches = 0            # batches acknowledged (stored or repeated)
        self.events = 0             # events stored
        self.repeated = 0           # events already stored, acknowledged again
        self.refused: collections.Counter = collections.Counter()      # by reason (requests)
        self.recovered = 0          # events of interrupted batches found stored at a start

    def as_dict(self) -> dict:
        return {"batches": self.batches, "events": self.events, "repeated": self.repeated,
                "refused": dict(self.refused), "recovered": self.recovered}


class HttpsIntake:
    """The intake of our sensors' batches (see the module doc)."""

    def __init__(self, store, state_path: str, check_key, silent_after_s: float, keys=lambda: (),
                 log=lambda kind, text: None):
        self.store = store
        self.check_key = check_key          # (name, key) -> bool
        self.log = log
        self.db = LinkDB(state_path)
        self.registry = Registry(self.db, silent_after_s, keys)
        self.counters = IntakeCounters()
        self._places = self.db.places()     # sensor -> stream -> (offset, done), as durable
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="https-intake")
        self.store_error = ""
        self.on_stored = lambda events: None     # events just made durable (server/live.py publish)
        self._unsettled: list[int] = []
        self.recover()

    # -- the durable steps (intake thread) ---------------------------------------------------
    def _sensor_count(self, sensor: str, lo_us: int, hi_us: int) -> int:
        counts = self.store.counts(AggregateQuery(TimeRange(lo_us, hi_us), budget_ms=60_000), "sensor", "hour")
        return sum(n for _b, value, n in counts.rows if value == sensor)

    def recover(self) -> None:
        """Intents left by a kill (module doc): count what the store holds and settle them."""
        for intent_id, intent in self.db.intents():
            got = self._resolve(intent_id, intent)
            self.counters.recovered += got
            self.log("i", "HTTPS intake: a batch of sensor %s was interrupted by a stop; %d of its %d event(s) "
                     "had been stored and count as stored, the rest will be sent again"
                     % (intent["sensor"], got, len(intent["places"])))

    def _resolve(self, intent_id: int, intent: dict) -> int:
        """Settle an intent by the store's count: the places move past the records whose events
        are all in (a record found half stored is sent again, and its stored part doubled: the
        rare case of a condensed record cut by a kill, never a loss)."""
        sensor = intent["sensor"]
        now = self._sensor_count(sensor, intent["lo_us"], intent["hi_us"])
        total = sum(n for _s, _o, _d, n in intent["places"])
        got = max(0, min(now - intent["before"], total))
        places = dict(self._places.get(sensor, {}))
        seen = 0
        for stream, offset, done, n in intent["places"]:
            if seen + n > got:
                break
            seen += n
            if (offset, done) > places.get(stream, (-1, -1)):
                places[stream] = (offset, done)
        self._places[sensor] = places
        self.db.settle(intent_id, sensor, places)
        return got

    def store_batch(self, batch: Batch) -> tuple[int, int]:
        """Steps 1-3 of the module doc for one batch: (events stored, records repeated). Raises
        Refused(store_failed) when the store fails; what it stored before failing counts."""
        self._settle_unsettled()
        known = self._places.get(batch.sensor, {})
        fresh = [it for it in batch.items if (it.offset, it.done) > known.get(it.stream, (-1, -1))]
        repeated = len(batch.items) - len(fresh)
        if batch.unstorable and any(not it.events for it in fresh):
            self.counters.refused["unstorable_event"] += sum(1 for it in fresh if not it.events)
            self.log("!", "HTTPS intake: sensor %s sent %d record(s) the store cannot hold (acknowledged, not "
                     "stored; they stay in the sensor's log): %s" % (batch.sensor, batch.unstorable, batch.problem))
        # Runs of consecutive records of one server day, in the sensor's order: the store writes
        # one day file per ingest, so what an interrupted ingest left is a prefix of its run, and
        # everything before the run is stored: the places move only past a prefix of the batch
        # (the places of a day file of the sensor only grow along the batch).
        runs: list[list[Item]] = []
        day = None
        for it in fresh:
            if it.events and file_name_for(it.events[0].ts_us) != day:
                day = file_name_for(it.events[0].ts_us)
                runs.append([])
            if not runs:
                runs.append([])
            runs[-1].append(it)
        stored = 0
        for items in runs:
            events = [e for it in items for e in it.events]
            places = dict(self._places.get(batch.sensor, {}))
            for it in items:
                if (it.offset, it.done) > places.get(it.stream, (-1, -1)):
                    places[it.stream] = (it.offset, it.done)
            if not events:      # only records the store cannot hold: past them
                try:
                    self.db.settle(0, batch.sensor, places)
                except sqlite3.Error as exc:
                    raise self._failed(exc) from None
                self._places[batch.sensor] = places
                continue
            lo = min(e.ts_us for e in events) // HOUR_US * HOUR_US
            hi = (max(e.ts_us for e in events) // HOUR_US + 1) * HOUR_US
            try:
                intent = {"sensor": batch.sensor, "lo_us": lo, "hi_us": hi,
                          "before": self._sensor_count(batch.sensor, lo, hi),
                          "places": [[it.stream, it.offset, it.done, len(it.events)] for it in items]}
                intent_id = self.db.add_intent(intent)
            except (StoreError, sqlite3.Error) as exc:
                raise self._failed(exc) from None
            try:
                self.store.ingest(events)
            except StoreError as exc:
                try:    # part of it may be stored: settle by counting, as at a start
                    self._resolve(intent_id, intent)
                except (StoreError, sqlite3.Error):
                    pass        # the intent stays; the next start settles it
                raise self._failed(exc) from None
            self.on_stored(events)
            s = self.registry.heard(batch.sensor, "https", len(events), batch.version, batch.trails, batch.lag_s)
            self._places[batch.sensor] = places     # stored: whatever happens to the state file now
            stored += len(events)
            try:
                self.db.settle(intent_id, batch.sensor, places, [Registry._row(s)])
            except sqlite3.Error as exc:
                # The events are stored, the state file cannot say so yet (disk full): the places
                # are kept here and written with the next batch; the intent stays, and a start
                # before then settles it by counting (all of it is in the store).
                self._unsettled.append(intent_id)
                self.log("!", "HTTPS intake: cannot record stored places in the state database: %s" % exc)
        if not stored:
            self.registry.heard(batch.sensor, "https", 0, batch.version, batch.trails, batch.lag_s)
        self.store_error = ""
        return stored, repeated

    def _settle_unsettled(self) -> None:
        """Intents whose events were stored but whose places could not be written: write every
        sensor's places (as stored) and remove those intents, once the state file takes it."""
        if not self._unsettled:
            return
        try:
            for sensor, places in self._places.items():
                self.db.settle(0, sensor, places)
            for intent_id in self._unsettled:
                self.db.settle(intent_id, "", {})
            self._unsettled = []
        except sqlite3.Error:
            pass

    def _failed(self, exc) -> Refused:
        if str(exc) != self.store_error:
            self.log("!", "HTTPS intake: a batch not stored (the sensor keeps it and sends it again): %s" % exc)
        self.store_error = str(exc)
        return Refused(R_STORE, "the store cannot take events now: %s" % exc, 503)

    # -- HTTP ----------------------------------------------------------------------------------
    def _refuse(self, web, reason: str, status: int, message: str, **headers):
        self.counters.refused[reason] += 1
        return web.json_response({"error": message, "reason": reason}, status=status, headers=headers)

    async def handle(self, request):
        from aiohttp import web
        name = bearer_sensor(request, self.check_key)
        if name is None:
            return self._refuse(web, R_UNAUTHORIZED, 401, "a sensor key is needed: Authorization: Bearer NAME:KEY",
                                **{"WWW-Authenticate": 'Bearer realm="maltrail-engine sensors"'})
        body = await request.read()
        loop = asyncio.get_running_loop()
        try:
            batch = await loop.run_in_executor(None, decode_batch, body, name)
            stored, repeated = await loop.run_in_executor(self._pool, self.store_batch, batch)
        except Refused as exc:
            return self._refuse(web, exc.reason, exc.status, str(exc),
                                **({"Retry-After": "5"} if exc.status == 503 else {}))
        self.counters.batches += 1
        self.counters.events += stored
        self.counters.repeated += repeated
        return web.json_response({"stored": stored, "repeated": repeated})

    async def sensors(self, request):
        from aiohttp import web
        return web.json_response({"silent_after_s": self.registry.silent_after_s,
                                  "sensors": self.registry.snapshot()})

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self._settle_unsettled()
        self.registry.flush()
        self.db.close()


def bearer_sensor(request, check_key) -> str | None:
    """The sensor a request's `Authorization: Bearer NAME:KEY` authenticates, or None."""
    scheme, _, cred = request.headers.get("Authorization", "").partition(" ")
    name, _, key = cred.partition(":")
    if scheme != "Bearer" or not name or not key or not check_key(name, key):
        return None
    return name


def setup(app, server) -> HttpsIntake:
    """Mount the intake and the registry on `app` for `server` (server/process.py Server): the
    intake path is outside the session rule (a sensor has a key, not a session)."""
    from server.auth.state import state_db_path
    state = server.auth_web.auth.state
    intake = HttpsIntake(server.store, state_db_path(server.cfg), state.check_sensor_key,
                         server.cfg.server.sensor_silent_after_s, keys=state.sensors,
                         log=_log)
    server.https_intake = intake
    server.registry = intake.registry
    server.auth_web.public = server.auth_web.public | {INTAKE_PATH}
    app.router.add_post(INTAKE_PATH, intake.handle)
    app.router.add_get(SENSORS_PATH, intake.sensors)
    from server import sensor_suppressions      # what analysts suppressed, for our sensors to poll
    sensor_suppressions.setup(app, server, intake)

    async def closing(_app):
        await asyncio.get_running_loop().run_in_executor(None, intake.close)
    app.on_cleanup.append(closing)
    return intake


def _log(kind: str, text: str) -> None:
    from server.process import log
    log(kind, text)


__all__ = ["HttpsIntake", "Registry", "Refused", "decode_batch", "setup", "INTAKE_PATH", "SENSORS_PATH"]
