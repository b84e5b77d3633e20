"""The server's own small state database: everything it keeps that is not an event.

Owns one SQLite file (`[server] state_db`): its safe creation, WAL mode, the schema and its
version, and the rows in it: upgraded password hashes, sessions, login-failure counters,
sensor keys. Must not hold events (the event store is elsewhere), decide policy (how long a
session lives, when a login is refused: server/auth/login.py says, passing times in), or read
the wall clock: every method that needs the time takes `now_s`, so the caller's clock (and a
test's) is the only one.

Tables (schema version 1):
  meta(key, value)                          schema_version
  password_upgrades(username, hash, replaces, updated_s)
      an argon2id hash that replaced the config's hash for `username` at a login; `replaces`
      is the SHA-256 of the config hash it replaced, so an administrator who later writes a
      new hash into the config is obeyed (the upgrade no longer applies).
  sessions(id_hash, username, created_s, last_used_s, client_ip)
      id_hash: SHA-256 hex of the 256-bit session id (the cookie holds the id; a copy of this
      file does not let anyone in).
  login_failures(kind, key, failures, last_failure_s, locked_until_s)
      kind "address" or "user"; consecutive failures and the time until which attempts are
      refused unevaluated.
  sensor_keys(name, key_hash, created_s, revoked_s)
      key_hash: SHA-256 hex of the key (a random 256-bit key needs no slow hash: there is
      nothing to guess); revoked_s NULL while the key is valid.

Schema version 2 adds:
  suppressions(id, host, trail, created_s, created_by, expires_s, reason, lifted_s, lifted_by)
      an analyst's "do not report `trail` for `host`" until expires_s (or lifted); host is an
      address or CIDR, trail lower-case. Active rows reach our sensors' per-host whitelist.
  triage(src_ip, trail, status, assignee, hidden, updated_by, updated_s)
      the shared triage of one threat, keyed by (canonical source address, trail as stored);
      no row means the defaults (status "new", no assignee, not hidden).
  triage_notes(id, src_ip, trail, username, created_s, text)
      notes on a threat, oldest first; never edited.
  triage_history(id, src_ip, trail, username, changed_s, field, old, new)
      one row per field a triage change altered: who, when, from what, to what.
  last_looks(username, mark_us, previous_us)
      a user's "new since last look" mark (microseconds since the epoch) and the one before.
Values in these rows are what server/triage.py validated; this module checks only that the keys
are there.

Safety: the directory must pass events/fsafety.py's rule (not writable by others, owned by
root or us); the file is created exclusively with mode 0600, and an existing one is used only
if it is a regular file with one link, never through a symlink.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import sqlite3
import threading
from typing import NamedTuple

from events import fsafety

__all__ = ["StateError", "StateDB", "SessionRow", "ThrottleRow", "SuppressionRow", "TriageRow", "NoteRow",
           "HistoryRow", "SCHEMA_VERSION", "sha256_hex"]

SCHEMA_VERSION = 2

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS password_upgrades (
    username TEXT PRIMARY KEY, hash TEXT NOT NULL, replaces TEXT NOT NULL, updated_s REAL NOT NULL);
CREATE TABLE IF NOT EXISTS sessions (
    id_hash TEXT PRIMARY KEY, username TEXT NOT NULL, created_s REAL NOT NULL,
    last_used_s REAL NOT NULL, client_ip TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS sessions_by_user ON sessions (username);
CREATE TABLE IF NOT EXISTS login_failures (
    kind TEXT NOT NULL, key TEXT NOT NULL, failures INTEGER NOT NULL, last_failure_s REAL NOT NULL,
    locked_until_s REAL NOT NULL, PRIMARY KEY (kind, key));
CREATE TABLE IF NOT EXISTS sensor_keys (
    name TEXT PRIMARY KEY, key_hash TEXT NOT NULL, created_s REAL NOT NULL, revoked_s REAL);
CREATE TABLE IF NOT EXISTS suppressions (
    id INTEGER PRIMARY KEY, host TEXT NOT NULL, trail TEXT NOT NULL, created_s REAL NOT NULL,
    created_by TEXT NOT NULL, expires_s REAL NOT NULL, reason TEXT NOT NULL, lifted_s REAL, lifted_by TEXT);
CREATE INDEX IF NOT EXISTS suppressions_by_expiry ON suppressions (expires_s);
CREATE TABLE IF NOT EXISTS triage (
    src_ip TEXT NOT NULL, trail TEXT NOT NULL, status TEXT NOT NULL, assignee TEXT NOT NULL,
    hidden INTEGER NOT NULL, updated_by TEXT NOT NULL, updated_s REAL NOT NULL, PRIMARY KEY (src_ip, trail));
CREATE INDEX IF NOT EXISTS triage_hidden ON triage (hidden);
CREATE TABLE IF NOT EXISTS triage_notes (
    id INTEGER PRIMARY KEY, src_ip TEXT NOT NULL, trail TEXT NOT NULL, username TEXT NOT NULL,
    created_s REAL NOT NULL, text TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS triage_notes_by_pair ON triage_notes (src_ip, trail);
CREATE TABLE IF NOT EXISTS triage_history (
    id INTEGER PRIMARY KEY, src_ip TEXT NOT NULL, trail TEXT NOT NULL, username TEXT NOT NULL,
    changed_s REAL NOT NULL, field TEXT NOT NULL, old TEXT NOT NULL, new TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS triage_history_by_pair ON triage_history (src_ip, trail);
CREATE TABLE IF NOT EXISTS last_looks (
    username TEXT PRIMARY KEY, mark_us INTEGER NOT NULL, previous_us INTEGER NOT NULL);
"""


def sha256_hex(text: str | bytes) -> str:
    return hashlib.sha256(text.encode() if isinstance(text, str) else text).hexdigest()


def state_db_path(cfg) -> str:
    """[server] state_db, or its default: server-state.sqlite in [server] log_dir."""
    return cfg.server.state_db or os.path.join(cfg.server.log_dir, "server-state.sqlite")


class StateError(Exception):
    """The state database cannot be used; the message says which file and what to do."""


class SessionRow(NamedTuple):
    id_hash: str
    username: str
    created_s: float
    last_used_s: float
    client_ip: str


class ThrottleRow(NamedTuple):
    failures: int
    last_failure_s: float
    locked_until_s: float


class SuppressionRow(NamedTuple):
    id: int
    host: str
    trail: str
    created_s: float
    created_by: str
    expires_s: float
    reason: str
    lifted_s: float | None
    lifted_by: str | None


class TriageRow(NamedTuple):
    src_ip: str
    trail: str
    status: str
    assignee: str
    hidden: bool
    updated_by: str
    updated_s: float


class NoteRow(NamedTuple):
    id: int
    src_ip: str
    trail: str
    username: str
    created_s: float
    text: str


class HistoryRow(NamedTuple):
    id: int
    src_ip: str
    trail: str
    username: str
    changed_s: float
    field: str
    old: str
    new: str


class StateDB:
    """The state database at `path` (created when missing). Thread-safe: one connection, one
    lock; every call is a short transaction, so an asyncio handler may call it directly."""

    def __init__(self, path: str):
        self.path = os.path.abspath(path)
        directory, name = os.path.split(self.path)
        problem = fsafety.directory_problem(directory)
        if problem:
            raise StateError("state database %s: %s" % (self.path, problem))
        if not os.path.isdir(directory):
            raise StateError("state database %s: the directory %s does not exist; create it (mode 0700)"
                             % (self.path, directory))
        dir_fd = fsafety.open_dir(directory)
        try:
            try:
                fd = fsafety.open_regular_in_dir(dir_fd, name, os.O_RDWR)
            except FileNotFoundError:
                fd = fsafety.create_in_dir(dir_fd, name, os.O_RDWR, 0o600)
            except fsafety.UnsafeFile as exc:
                raise StateError("state database %s %s; move it aside" % (self.path, exc.reason)) from None
            os.close(fd)
        finally:
            os.close(dir_fd)
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA busy_timeout=5000")
            self._migrate()
        except sqlite3.DatabaseError as exc:
            raise StateError("state database %s is not usable (%s); move it aside to start afresh "
                             "(sessions and upgraded hashes are lost, the config's hashes still work)"
                             % (self.path, exc)) from None

    def _migrate(self) -> None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        self._db.execute(statement)
                row = self._db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
                if row is None:
                    self._db.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
                elif int(row[0]) > SCHEMA_VERSION:
                    raise StateError("state database %s has schema version %s, newer than this release "
                                     "understands (%d); run the release that wrote it"
                                     % (self.path, row[0], SCHEMA_VERSION))
                elif int(row[0]) < SCHEMA_VERSION:     # the tables it lacked were created above
                    self._db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION),))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def schema_version(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0])

    def _run(self, sql: str, params=()) -> sqlite3.Cursor:
        with self._lock:
            return self._db.execute(sql, params)

    # -- upgraded password hashes ------------------------------------------------------------

    def upgraded_hash(self, username: str, config_hash: str) -> str | None:
        """The argon2id hash stored for `username` when it replaced exactly `config_hash`."""
        row = self._run("SELECT hash, replaces FROM password_upgrades WHERE username = ?", (username,)).fetchone()
        if row is None or not hmac.compare_digest(row[1], sha256_hex(config_hash)):
            return None
        return row[0]

    def store_upgraded_hash(self, username: str, config_hash: str, new_hash: str, now_s: float) -> None:
        self._run("INSERT INTO password_upgrades VALUES (?, ?, ?, ?) ON CONFLICT (username) DO UPDATE SET "
                  "hash = excluded.hash, replaces = excluded.replaces, updated_s = excluded.updated_s",
                  (username, new_hash, sha256_hex(config_hash), now_s))

    # -- sessions ----------------------------------------------------------------------------

    def add_session(self, id_hash: str, username: str, client_ip: str, now_s: float) -> None:
        self._run("INSERT INTO sessions VALUES (?, ?, ?, ?, ?)", (id_hash, username, now_s, now_s, client_ip))

    def session(self, id_hash: str) -> SessionRow | None:
        row = self._run("SELECT * FROM sessions WHERE id_hash = ?", (id_hash,)).fetchone()
        return SessionRow(*row) if row else None

    def touch_session(self, id_hash: str, now_s: float) -> None:
        self._run("UPDATE sessions SET last_used_s = ? WHERE id_hash = ?", (now_s, id_hash))

    def drop_session(self, id_hash: str) -> None:
        self._run("DELETE FROM sessions WHERE id_hash = ?", (id_hash,))

    def drop_sessions_of(self, username: str) -> int:
        return self._run("DELETE FROM sessions WHERE username = ?", (username,)).rowcount

    def prune_sessions(self, idle_before_s: float, created_before_s: float) -> int:
        """Delete sessions idle since before `idle_before_s` or created before `created_before_s`."""
        return self._run("DELETE FROM sessions WHERE last_used_s < ? OR created_s < ?",
                         (idle_before_s, created_before_s)).rowcount

    def session_count(self) -> int:
        return self._run("SELECT count(*) FROM sessions").fetchone()[0]

    # -- login throttling --------------------------------------------------------------------

    def throttle(self, kind: str, key: str) -> ThrottleRow | None:
        row = self._run("SELECT failures, last_failure_s, locked_until_s FROM login_failures "
                        "WHERE kind = ? AND key = ?", (kind, key)).fetchone()
        return ThrottleRow(*row) if row else None

    def set_throttle(self, kind: str, key: str, row: ThrottleRow) -> None:
        self._run("INSERT INTO login_failures VALUES (?, ?, ?, ?, ?) ON CONFLICT (kind, key) DO UPDATE SET "
                  "failures = excluded.failures, last_failure_s = excluded.last_failure_s, "
                  "locked_until_s = excluded.locked_until_s", (kind, key, *row))

    def clear_throttle(self, kind: str, key: str) -> None:
        self._run("DELETE FROM login_failures WHERE kind = ? AND key = ?", (kind, key))

    def prune_throttles(self, before_s: float) -> int:
        """Forget counters whose last failure is older than `before_s` and that lock nothing now
        (bounds the table when failures come from many addresses)."""
        return self._run("DELETE FROM login_failures WHERE last_failure_s < ? AND locked_until_s < ?",
                         (before_s, before_s)).rowcount

    # -- sensor keys -------------------------------------------------------------------------

    def add_sensor_key(self, name: str, key: str, now_s: float) -> None:
        """Store the hash of `key` for sensor `name`; a sensor re-added gets the new key (its old
        one stops working). Raises StateError for an empty name."""
        if not name or len(name) > 255 or any(c.isspace() for c in name):
            raise StateError("sensor name %r: use 1-255 characters without whitespace" % name)
        self._run("INSERT INTO sensor_keys VALUES (?, ?, ?, NULL) ON CONFLICT (name) DO UPDATE SET "
                  "key_hash = excluded.key_hash, created_s = excluded.created_s, revoked_s = NULL",
                  (name, sha256_hex(key), now_s))

    def revoke_sensor_key(self, name: str, now_s: float) -> bool:
        return self._run("UPDATE sensor_keys SET revoked_s = ? WHERE name = ? AND revoked_s IS NULL",
                         (now_s, name)).rowcount == 1

    def check_sensor_key(self, name: str, key: str) -> bool:
        """Whether `key` is the valid key of sensor `name` (constant-time comparison of hashes)."""
        row = self._run("SELECT key_hash FROM sensor_keys WHERE name = ? AND revoked_s IS NULL", (name,)).fetchone()
        # Compare against something even when the sensor is unknown, so the answer takes as long.
        return hmac.compare_digest(row[0] if row else "0" * 64, sha256_hex(key)) and row is not None

    def sensors(self) -> list[tuple[str, float, float | None]]:
        """(name, created_s, revoked_s) of every sensor key, by name."""
        return [tuple(r) for r in self._run("SELECT name, created_s, revoked_s FROM sensor_keys ORDER BY name")]

    # -- suppressions ------------------------------------------------------------------------

    def add_suppression(self, host: str, trail: str, expires_s: float, created_by: str, reason: str,
                        now_s: float) -> int:
        """A new suppression of `trail` for `host` (an address or CIDR the caller has checked)
        until `expires_s`; returns its id."""
        if not host or not trail or expires_s <= now_s:
            raise StateError("a suppression needs a host, a trail and an expiry in the future")
        return self._run("INSERT INTO suppressions (host, trail, created_s, created_by, expires_s, reason) "
                         "VALUES (?, ?, ?, ?, ?, ?)", (host, trail.lower(), now_s, created_by, expires_s,
                                                       reason)).lastrowid

    def lift_suppression(self, suppression_id: int, lifted_by: str, now_s: float) -> bool:
        """End a suppression early; False when there is no active one with this id."""
        return self._run("UPDATE suppressions SET lifted_s = ?, lifted_by = ? WHERE id = ? AND lifted_s IS NULL "
                         "AND expires_s > ?", (now_s, lifted_by, suppression_id, now_s)).rowcount == 1

    def suppression(self, suppression_id: int) -> SuppressionRow | None:
        row = self._run("SELECT * FROM suppressions WHERE id = ?", (suppression_id,)).fetchone()
        return SuppressionRow(*row) if row else None

    def suppressions(self, now_s: float, include_ended: bool = False) -> list[SuppressionRow]:
        """Active suppressions (not lifted, not expired at `now_s`), newest first; with
        `include_ended`, every one ever made."""
        if include_ended:
            rows = self._run("SELECT * FROM suppressions ORDER BY id DESC")
        else:
            rows = self._run("SELECT * FROM suppressions WHERE lifted_s IS NULL AND expires_s > ? ORDER BY id DESC",
                             (now_s,))
        return [SuppressionRow(*r) for r in rows]

    # -- triage ------------------------------------------------------------------------------

    def triage(self, src_ip: str, trail: str) -> TriageRow | None:
        row = self._run("SELECT * FROM triage WHERE src_ip = ? AND trail = ?", (src_ip, trail)).fetchone()
        return TriageRow(*row[:4], bool(row[4]), *row[5:]) if row else None

    def triage_of(self, src_ips) -> list[TriageRow]:
        """Every triage row whose source is one of `src_ips` (asked in chunks: SQLite caps the
        number of parameters of one statement)."""
        src_ips = sorted(set(src_ips))
        out: list[TriageRow] = []
        for i in range(0, len(src_ips), 500):
            chunk = src_ips[i:i + 500]
            rows = self._run("SELECT * FROM triage WHERE src_ip IN (%s)" % ",".join("?" * len(chunk)), chunk)
            out += [TriageRow(*r[:4], bool(r[4]), *r[5:]) for r in rows]
        return out

    def hidden_pairs(self) -> list[tuple[str, str]]:
        return [tuple(r) for r in self._run("SELECT src_ip, trail FROM triage WHERE hidden = 1 ORDER BY src_ip, trail")]

    def set_triage(self, src_ip: str, trail: str, changes: dict, username: str,
                   now_s: float) -> tuple[TriageRow, list[tuple[str, str, str]]]:
        """Apply `changes` ({"status"|"assignee"|"hidden": value}) to the pair's triage in one
        transaction: a history row for each field whose value differs, the row's updated_by and
        updated_s moved only when something changed. Returns the row as it is afterwards and the
        (field, old, new) of each history row written."""
        if not src_ip or not trail or not username:
            raise StateError("a triage change needs a source address, a trail and a user")
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute("SELECT * FROM triage WHERE src_ip = ? AND trail = ?",
                                       (src_ip, trail)).fetchone()
                was = (TriageRow(*row[:4], bool(row[4]), *row[5:]) if row
                       else TriageRow(src_ip, trail, "new", "", False, "", 0.0))
                now = was
                written = []
                for field in ("status", "assignee", "hidden"):
                    if field not in changes or changes[field] == getattr(was, field):
                        continue
                    old, new = getattr(was, field), changes[field]
                    self._db.execute("INSERT INTO triage_history (src_ip, trail, username, changed_s, field, old, new) "
                                     "VALUES (?, ?, ?, ?, ?, ?, ?)", (src_ip, trail, username, now_s, field,
                                                                      _history_text(old), _history_text(new)))
                    now = now._replace(**{field: new})
                    written.append((field, _history_text(old), _history_text(new)))
                if now != was:
                    now = now._replace(updated_by=username, updated_s=now_s)
                    self._db.execute("INSERT INTO triage VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (src_ip, trail) "
                                     "DO UPDATE SET status = excluded.status, assignee = excluded.assignee, "
                                     "hidden = excluded.hidden, updated_by = excluded.updated_by, "
                                     "updated_s = excluded.updated_s",
                                     (src_ip, trail, now.status, now.assignee, int(now.hidden), username, now_s))
                self._db.execute("COMMIT")
                return now, written
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def add_note(self, src_ip: str, trail: str, username: str, text: str, now_s: float) -> int:
        if not src_ip or not trail or not username or not text:
            raise StateError("a note needs a source address, a trail, a user and some text")
        return self._run("INSERT INTO triage_notes (src_ip, trail, username, created_s, text) VALUES (?, ?, ?, ?, ?)",
                         (src_ip, trail, username, now_s, text)).lastrowid

    def notes(self, src_ip: str, trail: str) -> list[NoteRow]:
        return [NoteRow(*r) for r in self._run("SELECT * FROM triage_notes WHERE src_ip = ? AND trail = ? "
                                               "ORDER BY id", (src_ip, trail))]

    def note_counts(self, src_ips) -> dict[tuple[str, str], int]:
        """{(src_ip, trail): number of notes} for the pairs whose source is one of `src_ips`."""
        src_ips = sorted(set(src_ips))
        out: dict[tuple[str, str], int] = {}
        for i in range(0, len(src_ips), 500):
            chunk = src_ips[i:i + 500]
            for src, trail, n in self._run("SELECT src_ip, trail, count(*) FROM triage_notes WHERE src_ip IN (%s) "
                                           "GROUP BY 1, 2" % ",".join("?" * len(chunk)), chunk):
                out[(src, trail)] = n
        return out

    def history(self, src_ip: str, trail: str) -> list[HistoryRow]:
        return [HistoryRow(*r) for r in self._run("SELECT * FROM triage_history WHERE src_ip = ? AND trail = ? "
                                                  "ORDER BY id", (src_ip, trail))]

    # -- "new since last look" ---------------------------------------------------------------

    def last_look(self, username: str) -> tuple[int, int]:
        """(mark_us, previous_us) of `username`; (0, 0) for a user who never looked."""
        row = self._run("SELECT mark_us, previous_us FROM last_looks WHERE username = ?", (username,)).fetchone()
        return (row[0], row[1]) if row else (0, 0)

    def set_last_look(self, username: str, mark_us: int) -> int:
        """Move `username`'s mark to `mark_us` (the old mark becomes previous_us); returns it."""
        self._run("INSERT INTO last_looks VALUES (?, ?, 0) ON CONFLICT (username) DO UPDATE SET "
                  "previous_us = last_looks.mark_us, mark_us = excluded.mark_us", (username, int(mark_us)))
        return int(mark_us)


def _history_text(value) -> str:
    """A triage field's value as the history keeps it: booleans as "true"/"false"."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
