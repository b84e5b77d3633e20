"""The login flow and the session rules, apart from HTTP: who may log in, when, and for how long.

Owns `Authenticator`: checking a user name and password against the configured users (and any
upgraded hash in the state database), the legacy SHA-256 gate (TLS or loopback only), replacing
a legacy or outdated hash with argon2id at a successful login, throttling failed logins per
address and per user with exponential backoff (in the state database, so a restart forgives
nothing), making and checking sessions (idle and absolute expiry), the CSRF token bound to a
session, and an `AuthEvent` for every attempt. Must not know HTTP (server/auth/web.py translates)
or read the wall clock directly: `clock` is passed in (time.time by default).

Throttling: after `max_failures` consecutive failures from an address, or for a user name, its
attempts are refused unevaluated for `lockout_s`, doubled for each further failure up to an hour.
A success clears both counters. Per user as well as per address, because an attacker spreads a
guessing run over many addresses; the cost (an attacker can slow down a named user's logins) is
bounded by the backoff, never a permanent lock.

Sessions: the id is 256 random bits, sent in the cookie as 43 URL-safe base64 characters; the
database keeps only its SHA-256. The CSRF token is HMAC-SHA256(session id, "csrf"): it is bound
to the session, needs no storage, and only a holder of the cookie value can compute it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import secrets
import threading
import time
from typing import Callable, NamedTuple

from server.auth.audit import AuthEvent, clean_username
from server.auth.scopes import Scope
from server.auth.state import StateDB, ThrottleRow, sha256_hex
from server.auth.users import (
    DUMMY_HASH, KIND_ARGON2ID, KIND_SHA256, User, check_password, hash_password, needs_rehash,
)

__all__ = ["Authenticator", "LoginResult", "Session", "is_loopback", "MAX_LOCKOUT_S"]

MAX_LOCKOUT_S = 3600
_KIND_ADDRESS = "address"
_KIND_USER = "user"


def is_loopback(ip_text: str) -> bool:
    """127.0.0.0/8, ::1 and their IPv4-mapped forms; anything unparsable is not."""
    try:
        address = ipaddress.ip_address(ip_text.split("%", 1)[0])
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


class Session(NamedTuple):
    id_hash: str
    user: User
    created_s: float
    last_used_s: float
    csrf_token: str

    @property
    def scope(self) -> Scope:
        return self.user.scope


class LoginResult(NamedTuple):
    ok: bool
    reason: str                 # "ok" or why not (for the audit record and the server's counters)
    session_id: str | None      # the cookie value, on success
    csrf_token: str | None
    retry_after_s: float        # > 0 when throttled
    event: AuthEvent


class Authenticator:
    """Login and sessions over a StateDB for the users given (a dict by name, as parse_users
    returns). `on_event(AuthEvent)` is called for every attempt; `warn(text)` for operator
    messages (a legacy hash used from an insecure place)."""

    def __init__(self, users: dict[str, User], state: StateDB, *, idle_timeout_s: float = 3600,
                 absolute_timeout_s: float = 86400, max_failures: int = 5, lockout_s: float = 60,
                 clock: Callable[[], float] = time.time, on_event: Callable[[AuthEvent], None] | None = None,
                 warn: Callable[[str], None] | None = None):
        self.users = dict(users)
        self.state = state
        self.idle_timeout_s = idle_timeout_s
        self.absolute_timeout_s = absolute_timeout_s
        self.max_failures = max_failures
        self.lockout_s = lockout_s
        self.clock = clock
        self.on_event = on_event
        self.warn = warn
        self.counts: dict[str, int] = {}      # login outcomes by reason, for /metrics
        self._count_lock = threading.Lock()

    # -- throttling ----------------------------------------------------------------------------

    def _locked_for(self, kind: str, key: str, now_s: float) -> float:
        row = self.state.throttle(kind, key)
        return max(0.0, row.locked_until_s - now_s) if row else 0.0

    def _failed(self, kind: str, key: str, now_s: float) -> None:
        row = self.state.throttle(kind, key)
        failures = 1
        if row is not None and now_s - row.last_failure_s < MAX_LOCKOUT_S:
            failures = row.failures + 1   # a failure an hour after the last starts a new run
        locked_until = 0.0
        if failures >= self.max_failures:
            locked_until = now_s + min(self.lockout_s * 2 ** (failures - self.max_failures), MAX_LOCKOUT_S)
        self.state.set_throttle(kind, key, ThrottleRow(failures, now_s, locked_until))

    # -- login ---------------------------------------------------------------------------------

    def login(self, username, password, client_ip: str, client_port: int, secure: bool) -> LoginResult:
        """One attempt. `secure`: the request came over TLS or from a loopback address (the
        caller decides from the connection, never from a header)."""
        now_s = self.clock()
        name = clean_username(username)
        wait_s = max(self._locked_for(_KIND_ADDRESS, client_ip, now_s), self._locked_for(_KIND_USER, name, now_s))
        if wait_s > 0:
            return self._finish(False, "throttled", name, client_ip, client_port, now_s, retry_after_s=wait_s)
        if not isinstance(username, str) or not isinstance(password, str) or not password:
            return self._fail("malformed", name, client_ip, client_port, now_s)
        user = self.users.get(username)
        if user is None:
            check_password(DUMMY_HASH, KIND_ARGON2ID, password)  # as slow as a real check
            return self._fail("unknown user", name, client_ip, client_port, now_s)
        stored, kind = user.hash, user.kind
        upgraded = self.state.upgraded_hash(user.name, user.hash)
        if upgraded is not None:
            stored, kind = upgraded, KIND_ARGON2ID
        if kind == KIND_SHA256 and not secure:
            # The unsalted hash is only as strong as the channel the password crosses; refuse
            # before checking, so a plain-HTTP attempt learns nothing about the password either.
            if self.warn:
                self.warn("user %s: login from %s refused: the user's hash is Maltrail's SHA-256, accepted only over "
                          "TLS or from loopback (log in once that way to upgrade it, or make a new line with "
                          "`maltrail-engine server user add %s`)" % (user.name, client_ip, user.name))
            return self._fail("insecure legacy hash", name, client_ip, client_port, now_s)
        if not check_password(stored, kind, password):
            return self._fail("wrong password", name, client_ip, client_port, now_s)
        if needs_rehash(stored, kind):
            self.state.store_upgraded_hash(user.name, user.hash, hash_password(password), now_s)
        self.state.clear_throttle(_KIND_ADDRESS, client_ip)
        self.state.clear_throttle(_KIND_USER, name)
        session_id = base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()
        self.state.add_session(sha256_hex(session_id), user.name, client_ip, now_s)
        self.state.prune_sessions(now_s - self.idle_timeout_s, now_s - self.absolute_timeout_s)
        return self._finish(True, "ok", name, client_ip, client_port, now_s, session_id=session_id)

    def _fail(self, reason: str, name: str, ip: str, port: int, now_s: float) -> LoginResult:
        self._failed(_KIND_ADDRESS, ip, now_s)
        self._failed(_KIND_USER, name, now_s)
        self.state.prune_throttles(now_s - MAX_LOCKOUT_S)
        return self._finish(False, reason, name, ip, port, now_s)

    def _finish(self, ok: bool, reason: str, name: str, ip: str, port: int, now_s: float,
                session_id: str | None = None, retry_after_s: float = 0.0) -> LoginResult:
        event = AuthEvent(now_s, name, ip, port, ok, reason)
        with self._count_lock:
            self.counts[reason] = self.counts.get(reason, 0) + 1
        if self.on_event is not None:
            self.on_event(event)
        return LoginResult(ok, reason, session_id, csrf_token(session_id) if session_id else None,
                           retry_after_s, event)

    # -- sessions ------------------------------------------------------------------------------

    def session(self, session_id: str | None) -> Session | None:
        """The live session of this cookie value, its last use moved to now; None when there is
        none, it expired (idle or absolute), or its user is no longer configured."""
        if not session_id or len(session_id) > 128:
            return None
        id_hash = sha256_hex(session_id)
        row = self.state.session(id_hash)
        if row is None:
            return None
        now_s = self.clock()
        user = self.users.get(row.username)
        if (user is None or now_s - row.last_used_s > self.idle_timeout_s
                or now_s - row.created_s > self.absolute_timeout_s):
            self.state.drop_session(id_hash)
            return None
        self.state.touch_session(id_hash, now_s)
        return Session(id_hash, user, row.created_s, now_s, csrf_token(session_id))

    def logout(self, session_id: str | None) -> None:
        if session_id:
            self.state.drop_session(sha256_hex(session_id))


def csrf_token(session_id: str) -> str:
    return hmac.new(session_id.encode(), b"csrf", hashlib.sha256).hexdigest()


def csrf_matches(session_id: str, presented) -> bool:
    return isinstance(presented, str) and hmac.compare_digest(csrf_token(session_id), presented)
