"""The HTTP side of users and sessions: aiohttp routes and middlewares the API mounts.

Owns `AuthWeb`, which adds to an aiohttp Application:
  POST {prefix}/login    JSON {"username", "password"} -> 200 {"username", "uid", "csrf_token"} and
                         the session cookie; 401 {"error"} for any failure (the same answer for an
                         unknown user, a wrong password, or a legacy hash used from an insecure
                         place: the reason goes to the audit record and the operator's log, not
                         to the client); 429 with Retry-After when throttled.
  POST {prefix}/logout   ends the session (needs the CSRF header), 200 and an expired cookie.
  GET  {prefix}/session  who is logged in, and the CSRF token again (a reloaded page needs it).
and three middlewares, in order: body limit (413 JSON before reading a body declared larger
than `max_body_bytes`, and for one that turns out larger), session (401 JSON without a live
session on every route under `prefix` except login and the `public` paths; the session is put
in request[SESSION_KEY]), CSRF (403 JSON for a state-changing method without the right
`X-CSRF-Token` header). Security headers go on every response, errors included (a
response-prepare signal): a strict CSP, nosniff, frame denial, no referrer, no caching of API
answers, HSTS under TLS.

CSRF choice: a per-session token in a request header (login.py derives it from the session id),
not a double-submit cookie: a header cannot be set by a cross-site form, and the token is bound
to the session, so a cookie planted by a sibling subdomain cannot forge it. SameSite=Strict on the
session cookie is a second line. Login is the one state change without a session; it accepts only
`application/json` (a cross-site page cannot send that without a CORS preflight this server
never grants) and refuses a foreign Origin.

"Secure" (for the legacy-hash gate and the cookie's Secure flag) is decided from the connection
itself: TLS on the socket, or a loopback peer address (`is_local`, injectable so a test can try
both sides). Forwarding headers are never believed. Password checks (argon2, deliberately slow)
run in a thread, off the event loop.

Refusals are counted by reason in `refusals` (for /metrics); login outcomes in
`authenticator.counts`. Must not know events, the store or the API's own routes.
"""

from __future__ import annotations

import asyncio
import json
from typing import Callable, Iterable
from urllib.parse import urlsplit

from aiohttp import web

from server.auth.login import Authenticator, csrf_matches, is_loopback

__all__ = ["AuthWeb", "COOKIE_NAME", "CSRF_HEADER", "SECURITY_HEADERS", "CSP", "SESSION_KEY", "user_or_refusal"]

# Where a handler finds the request's login.Session: request[SESSION_KEY].
if hasattr(web, "RequestKey"):
    SESSION_KEY = web.RequestKey("session", object)
    _SESSION_ID_KEY = web.RequestKey("session_id", str)
else:  # aiohttp before 3.10
    SESSION_KEY, _SESSION_ID_KEY = "session", "session_id"

COOKIE_NAME = "mt_session"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset(("GET", "HEAD", "OPTIONS"))
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "font-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}


def user_or_refusal(request: web.Request):
    """(the request's logged-in user, None), or (None, (reason, status, JSON body)) when it must
    get no answer: no session (the session middleware refuses first; a handler never answers
    without a user), or a netfilter that holds no address (its empty store scope would mean
    "every event": a restricted user must never reach that). Every route that reads events asks
    this before anything else."""
    session = request.get(SESSION_KEY)
    if session is None:
        return None, ("no session", 401, {"error": "not logged in"})
    scope = session.user.scope
    if not scope.everything and not scope.store_scope:
        return None, ("empty scope", 403, {"error": "your netfilter holds no address"})
    return session.user, None


def _error(status: int, message: str, **headers) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers or None)


class AuthWeb:
    """The routes and middlewares of module docstring, over an Authenticator.

    tls: the server listens with TLS (sets Secure on the cookie and HSTS).
    is_local(peer_ip): whether a peer counts as local for the legacy-hash gate (loopback).
    public: paths outside `prefix`'s session rule (e.g. a health check).
    """

    def __init__(self, authenticator: Authenticator, *, prefix: str = "/api/v1", tls: bool = False,
                 max_body_bytes: int = 1 << 20, is_local: Callable[[str], bool] = is_loopback,
                 public: Iterable[str] = ()):
        self.auth = authenticator
        self.prefix = prefix.rstrip("/")
        self.tls = tls
        self.max_body_bytes = max_body_bytes
        self.is_local = is_local
        self.public = frozenset(public) | {self.prefix + "/login"}
        self.refusals: dict[str, int] = {}

    def setup(self, app: web.Application) -> None:
        """Add the routes, middlewares and header signal to `app` (before it starts). Create the
        app with client_max_size=max_body_bytes too, so every handler's body read is capped."""
        app.middlewares.extend([self.body_limit, self.session_middleware, self.csrf_middleware])
        app.on_response_prepare.append(self._headers)
        app.router.add_post(self.prefix + "/login", self.login)
        app.router.add_post(self.prefix + "/logout", self.logout)
        app.router.add_get(self.prefix + "/session", self.whoami)

    def _refuse(self, reason: str, status: int, message: str, **headers) -> web.Response:
        self.refusals[reason] = self.refusals.get(reason, 0) + 1
        return _error(status, message, **headers)

    # -- connection facts --------------------------------------------------------------------

    @staticmethod
    def peer(request: web.Request) -> tuple[str, int]:
        peername = request.transport.get_extra_info("peername") if request.transport else None
        if not peername:
            return "-", 0
        return str(peername[0]), int(peername[1])

    def secure(self, request: web.Request) -> bool:
        return request.transport is not None and (
            request.transport.get_extra_info("sslcontext") is not None or self.is_local(self.peer(request)[0]))

    # -- middlewares ---------------------------------------------------------------------------

    @web.middleware
    async def body_limit(self, request: web.Request, handler):
        if request.content_length is not None and request.content_length > self.max_body_bytes:
            return self._refuse("oversized body", 413, "the request body is larger than %d bytes" % self.max_body_bytes)
        try:
            return await handler(request)
        except web.HTTPRequestEntityTooLarge:   # a chunked body found too large while read
            return self._refuse("oversized body", 413, "the request body is larger than %d bytes" % self.max_body_bytes)

    def _guarded(self, request: web.Request) -> bool:
        path = request.path
        return (path == self.prefix or path.startswith(self.prefix + "/")) and path not in self.public

    @web.middleware
    async def session_middleware(self, request: web.Request, handler):
        if not self._guarded(request):
            return await handler(request)
        cookie = request.cookies.get(COOKIE_NAME)
        session = self.auth.session(cookie)
        if session is None:
            if cookie:
                return self._refuse("expired session", 401, "the session has expired or ended; log in again")
            return self._refuse("no session", 401, "not logged in")
        request[SESSION_KEY] = session
        request[_SESSION_ID_KEY] = cookie
        return await handler(request)

    @web.middleware
    async def csrf_middleware(self, request: web.Request, handler):
        if request.method in SAFE_METHODS or _SESSION_ID_KEY not in request:
            return await handler(request)
        if not csrf_matches(request[_SESSION_ID_KEY], request.headers.get(CSRF_HEADER)):
            return self._refuse("missing csrf token", 403,
                                "a state-changing request needs the %s header from login or %s/session"
                                % (CSRF_HEADER, self.prefix))
        return await handler(request)

    async def _headers(self, request: web.Request, response: web.StreamResponse) -> None:
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        if request.path.startswith(self.prefix + "/") or request.path == self.prefix:
            response.headers.setdefault("Cache-Control", "no-store")
        if self.tls:
            response.headers.setdefault("Strict-Transport-Security", "max-age=31536000")

    # -- handlers ------------------------------------------------------------------------------

    def _cookie(self, response: web.Response, value: str, max_age_s: int) -> None:
        response.set_cookie(COOKIE_NAME, value, max_age=max_age_s, path="/", httponly=True,
                            samesite="Strict", secure=self.tls)

    async def login(self, request: web.Request) -> web.Response:
        if request.content_type != "application/json":
            return self._refuse("malformed login", 415, 'login takes a JSON body {"username": ..., "password": ...}')
        origin = request.headers.get("Origin")
        if origin is not None and urlsplit(origin).netloc != request.host:
            return self._refuse("foreign origin", 403, "login from another site's page is refused")
        # read(n) returns what has arrived, up to n: a body sent in pieces needs a loop, which
        # stops as soon as the limit is passed (the rest is never buffered).
        data = b""
        while len(data) <= self.max_body_bytes:
            piece = await request.content.read(self.max_body_bytes + 1 - len(data))
            if not piece:
                break
            data += piece
        if len(data) > self.max_body_bytes:
            return self._refuse("oversized body", 413, "the request body is larger than %d bytes" % self.max_body_bytes)
        try:
            body = json.loads(data)
        except (ValueError, UnicodeDecodeError):
            return self._refuse("malformed login", 400, "the body is not JSON")
        if not isinstance(body, dict):
            return self._refuse("malformed login", 400, 'login takes a JSON object {"username": ..., "password": ...}')
        ip, port = self.peer(request)
        result = await asyncio.get_running_loop().run_in_executor(
            None, self.auth.login, body.get("username"), body.get("password"), ip, port, self.secure(request))
        if result.reason == "throttled":
            retry = max(1, int(result.retry_after_s + 0.999))
            return _error(429, "too many failed logins; try again in %d s" % retry, **{"Retry-After": str(retry)})
        if not result.ok:
            return _error(401, "login failed")
        user = self.auth.users[body["username"]]
        response = web.json_response({"username": user.name, "uid": user.uid, "csrf_token": result.csrf_token})
        self._cookie(response, result.session_id, int(self.auth.absolute_timeout_s))
        return response

    async def logout(self, request: web.Request) -> web.Response:
        self.auth.logout(request[_SESSION_ID_KEY])
        response = web.json_response({"logged_out": True})
        self._cookie(response, "", 0)
        return response

    async def whoami(self, request: web.Request) -> web.Response:
        session = request[SESSION_KEY]
        return web.json_response({"username": session.user.name, "uid": session.user.uid,
                                  "netfilter": session.user.netfilter, "csrf_token": session.csrf_token})
