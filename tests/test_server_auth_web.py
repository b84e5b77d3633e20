"""The login, session, CSRF and header rules of server/auth/web.py, on a real aiohttp server
listening on loopback (and, for the "not loopback" side, on a veth address reached from a
network namespace), driven by a real HTTP client. The clock is the test's, so expiry and
backoff are exact and nothing depends on the wall clock.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import http.client
import json
import ssl
import subprocess
import sys
import threading

import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from server.auth.login import Authenticator
from server.auth.state import StateDB
from server.auth.users import KIND_SHA256, check_password, make_user_line, parse_users
from server.auth.web import CSP, CSRF_HEADER, SESSION_KEY, AuthWeb
from tests.netns import run, veth  # noqa: F401 (fixture)

PASSWORD = "correct horse battery"
LEGACY_PASSWORD = "changeme!"
LEGACY_HASH = hashlib.sha256(LEGACY_PASSWORD.encode()).hexdigest()


class Clock:
    def __init__(self):
        self.now_s = 1_800_000_000.0

    def __call__(self):
        return self.now_s


class Server:
    """An aiohttp app with AuthWeb and two protected routes, in a thread of its own."""

    def __init__(self, authenticator, host="127.0.0.1", tls_context=None, max_body_bytes=4096, **options):
        self.auth_web = AuthWeb(authenticator, tls=tls_context is not None, max_body_bytes=max_body_bytes, **options)
        self.loop = asyncio.new_event_loop()
        app = web.Application(client_max_size=max_body_bytes)
        self.auth_web.setup(app)

        async def things(request):
            session = request[SESSION_KEY]
            return web.json_response({"user": session.user.name, "method": request.method})

        app.router.add_get("/api/v1/things", things)
        app.router.add_post("/api/v1/things", things)
        self.runner = web.AppRunner(app)
        self.loop.run_until_complete(self.runner.setup())
        site = web.TCPSite(self.runner, host, 0, ssl_context=tls_context)
        self.loop.run_until_complete(site.start())
        self.host, self.port = host, site._server.sockets[0].getsockname()[1]
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def close(self):
        if self.loop.is_closed():
            return
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def request(server, method, path, body=None, headers=None, cookie=None, context=None, raw=None):
    if context is not None:
        conn = http.client.HTTPSConnection(server.host, server.port, timeout=30, context=context)
    else:
        conn = http.client.HTTPConnection(server.host, server.port, timeout=30)
    headers = dict(headers or {})
    data = raw
    if body is not None:
        data = json.dumps(body).encode()
        headers.setdefault("Content-Type", "application/json")
    if cookie:
        headers["Cookie"] = "mt_session=%s" % cookie
    conn.request(method, path, body=data, headers=headers)
    response = conn.getresponse()
    payload = response.read()
    conn.close()
    try:
        parsed = json.loads(payload) if payload else None
    except ValueError:
        parsed = payload
    return response.status, response.headers, parsed


def session_cookie(headers):
    for value in headers.get_all("Set-Cookie") or []:
        if value.startswith("mt_session="):
            return value
    return None


def cookie_value(headers):
    return session_cookie(headers).split(";", 1)[0].split("=", 1)[1]


@pytest.fixture(scope="module")
def lines():
    return [make_user_line("admin", PASSWORD, 0), make_user_line("analyst", PASSWORD, 1000, "10.0.0.0/8"),
            "legacy:%s:0:" % LEGACY_HASH]


@pytest.fixture
def world(tmp_path, lines):
    clock = Clock()
    events, warnings = [], []
    state = StateDB(str(tmp_path / "state.sqlite"))
    auth = Authenticator(parse_users(lines), state, idle_timeout_s=600, absolute_timeout_s=3600,
                         max_failures=3, lockout_s=60, clock=clock, on_event=events.append, warn=warnings.append)
    server = Server(auth)
    yield server, auth, clock, events, warnings
    server.close()
    state.close()


def login(server, username="admin", password=PASSWORD, **kw):
    return request(server, "POST", "/api/v1/login", {"username": username, "password": password}, **kw)


def test_wrong_password_is_refused_and_audited_and_the_right_one_gets_a_strict_cookie(world):
    server, auth, clock, events, _ = world
    status, headers, body = login(server, password="wrong")
    assert status == 401 and body == {"error": "login failed"} and session_cookie(headers) is None
    status, _, body = login(server, username="nobody")
    assert status == 401 and body == {"error": "login failed"}
    assert [(e.username, e.success, e.reason) for e in events] == [
        ("admin", False, "wrong password"), ("nobody", False, "unknown user")]
    assert events[0].src_ip == "127.0.0.1" and events[0].src_port > 0

    status, headers, body = login(server)
    assert status == 200 and body["username"] == "admin" and body["uid"] == 0
    cookie = session_cookie(headers)
    attributes = {part.strip().split("=")[0].lower() for part in cookie.split(";")[1:]}
    assert {"httponly", "path", "samesite", "max-age"} <= attributes
    assert "samesite=strict" in cookie.lower() and "secure" not in attributes  # plain HTTP
    assert events[-1].success and events[-1].reason == "ok"

    status, _, me = request(server, "GET", "/api/v1/session", cookie=cookie_value(headers))
    assert status == 200 and me["username"] == "admin" and me["csrf_token"] == body["csrf_token"]


def test_no_session_and_a_forged_cookie_get_401_json_with_security_headers(world):
    server, *_ = world
    status, headers, body = request(server, "GET", "/api/v1/things")
    assert status == 401 and body == {"error": "not logged in"}
    assert headers["Content-Security-Policy"] == CSP and headers["X-Frame-Options"] == "DENY"
    assert headers["X-Content-Type-Options"] == "nosniff" and headers["Referrer-Policy"] == "no-referrer"
    assert headers["Cache-Control"] == "no-store"
    status, _, body = request(server, "GET", "/api/v1/things", cookie="A" * 43)
    assert status == 401 and "expired" in body["error"]
    assert server.auth_web.refusals == {"no session": 1, "expired session": 1}


def test_failed_logins_are_throttled_per_address_and_user_and_survive_a_restart(world, tmp_path, lines):
    server, auth, clock, events, _ = world
    for _ in range(3):
        assert login(server, password="guess")[0] == 401
    status, headers, body = login(server)  # the right password, but too late
    assert status == 429 and int(headers["Retry-After"]) == 60 and "try again" in body["error"]
    assert events[-1].reason == "throttled" and not events[-1].success
    # Another user from the same address is refused too (the address is locked) ...
    assert login(server, username="analyst")[0] == 429

    # ... and the lock is in the database: a new server over the same file still refuses.
    server.close()
    restarted = Authenticator(parse_users(lines), StateDB(str(tmp_path / "state.sqlite")), max_failures=3,
                              lockout_s=60, clock=clock)
    again = Server(restarted)
    try:
        assert login(again)[0] == 429
        clock.now_s += 61
        status, _, body = login(again)
        assert status == 200
        # A success forgets the count: one more failure does not lock.
        assert login(again, password="guess")[0] == 401 and login(again)[0] == 200
        # A further failure past the threshold doubles the lockout.
        for _ in range(3):
            login(again, password="guess")
        assert login(again)[0] == 429
        clock.now_s += 61
        assert login(again, password="guess")[0] == 401
        status, headers, _ = login(again)
        assert status == 429 and int(headers["Retry-After"]) == 120
    finally:
        again.close()


def test_sessions_end_when_idle_or_too_old_and_survive_a_restart(world, tmp_path, lines):
    server, auth, clock, *_ = world
    _, headers, _ = login(server)
    cookie = cookie_value(headers)
    clock.now_s += 599
    assert request(server, "GET", "/api/v1/things", cookie=cookie)[0] == 200
    # A restarted server (new Authenticator over the same state file) knows the session.
    other = Server(Authenticator(parse_users(lines), StateDB(str(tmp_path / "state.sqlite")),
                                 idle_timeout_s=600, absolute_timeout_s=3600, clock=clock))
    try:
        assert request(other, "GET", "/api/v1/things", cookie=cookie)[0] == 200
    finally:
        other.close()
    clock.now_s += 601   # idle for longer than 600 s
    status, _, body = request(server, "GET", "/api/v1/things", cookie=cookie)
    assert status == 401 and "expired" in body["error"]

    _, headers, _ = login(server)
    cookie = cookie_value(headers)
    for _ in range(7):    # used every 500 s, never idle, but older than 3600 s at the end
        clock.now_s += 500
        last = request(server, "GET", "/api/v1/things", cookie=cookie)[0]
    assert last == 200
    clock.now_s += 500
    assert request(server, "GET", "/api/v1/things", cookie=cookie)[0] == 401


def test_state_changes_need_the_csrf_header_and_logout_ends_the_session(world):
    server, *_ = world
    _, headers, body = login(server)
    cookie, token = cookie_value(headers), body["csrf_token"]
    status, _, refused = request(server, "POST", "/api/v1/things", {"x": 1}, cookie=cookie)
    assert status == 403 and CSRF_HEADER in refused["error"]
    status, _, _ = request(server, "POST", "/api/v1/things", {"x": 1}, cookie=cookie, headers={CSRF_HEADER: "0" * 64})
    assert status == 403
    status, _, ok = request(server, "POST", "/api/v1/things", {"x": 1}, cookie=cookie, headers={CSRF_HEADER: token})
    assert status == 200 and ok == {"user": "admin", "method": "POST"}
    assert request(server, "POST", "/api/v1/logout", cookie=cookie)[0] == 403
    status, headers, _ = request(server, "POST", "/api/v1/logout", cookie=cookie, headers={CSRF_HEADER: token})
    assert status == 200 and "max-age=0" in session_cookie(headers).lower()
    assert request(server, "GET", "/api/v1/things", cookie=cookie)[0] == 401
    assert server.auth_web.refusals["missing csrf token"] == 3


def test_oversized_and_malformed_bodies_are_refused_with_reasons(world):
    server, auth, clock, events, _ = world
    status, _, body = request(server, "POST", "/api/v1/login", raw=b"{" + b" " * 5000 + b"}",
                              headers={"Content-Type": "application/json"})
    assert status == 413 and "4096" in body["error"]
    # A chunked body gives no length up front; it is cut off while read.
    conn = http.client.HTTPConnection(server.host, server.port, timeout=30)
    conn.request("POST", "/api/v1/login", body=iter([b"{", b" " * 3000, b" " * 3000, b"}"]),
                 headers={"Content-Type": "application/json"}, encode_chunked=True)
    response = conn.getresponse()
    assert response.status == 413 and "4096" in json.loads(response.read())["error"]
    conn.close()
    # A body within the limit that arrives in pieces is read whole (and checked as usual).
    conn = http.client.HTTPConnection(server.host, server.port, timeout=30)
    pieces = [b'{"username": "admin", ', b' ' * 1500, b'"password": "wrong"', b' ' * 1500, b'}']
    conn.request("POST", "/api/v1/login", body=iter(pieces), headers={"Content-Type": "application/json"},
                 encode_chunked=True)
    response = conn.getresponse()
    assert response.status == 401 and json.loads(response.read()) == {"error": "login failed"}
    conn.close()
    assert events.pop().reason == "wrong password"
    assert request(server, "POST", "/api/v1/login", raw=b"not json", headers={"Content-Type": "application/json"})[0] == 400
    assert request(server, "POST", "/api/v1/login", raw=b"username=admin", headers={
        "Content-Type": "application/x-www-form-urlencoded"})[0] == 415
    assert request(server, "POST", "/api/v1/login", {"username": "admin", "password": PASSWORD},
                   headers={"Origin": "http://evil.example"})[0] == 403
    assert server.auth_web.refusals == {"oversized body": 2, "malformed login": 2, "foreign origin": 1}
    assert events == []   # none of these reached the password check


def test_a_legacy_sha256_user_logs_in_over_loopback_and_is_upgraded_to_argon2id(world, tmp_path):
    server, auth, clock, events, warnings = world
    assert login(server, "legacy", "wrong")[0] == 401
    status, _, body = login(server, "legacy", LEGACY_PASSWORD)
    assert status == 200 and body["username"] == "legacy"
    upgraded = auth.state.upgraded_hash("legacy", LEGACY_HASH)
    assert upgraded.startswith("$argon2id$") and check_password(upgraded, "argon2id", LEGACY_PASSWORD)
    assert auth.users["legacy"].kind == KIND_SHA256          # the config is not rewritten
    # The upgraded hash is what is checked from now on, from anywhere.
    assert login(server, "legacy", LEGACY_PASSWORD)[0] == 200
    # An administrator who writes a new hash into the config is obeyed: the upgrade was for the old one.
    assert auth.state.upgraded_hash("legacy", hashlib.sha256(b"new").hexdigest()) is None
    assert warnings == []


def test_parse_users_warns_about_legacy_hashes_naming_the_user_never_the_hash(lines):
    said = []
    parse_users(lines, warn=said.append)
    assert len(said) == 1 and "legacy" in said[0] and LEGACY_HASH not in said[0]


AGENT = r"""
import json, ssl, sys, urllib.request, urllib.error
context = ssl._create_unverified_context()  # the test's self-signed certificate
req = urllib.request.Request(sys.argv[1], data=json.dumps({"username": sys.argv[2], "password": sys.argv[3]}).encode(),
                             headers={"Content-Type": "application/json"})
try:
    print(urllib.request.urlopen(req, timeout=30, context=context).status)
except urllib.error.HTTPError as exc:
    print(exc.code)
"""


def test_a_legacy_hash_is_refused_from_a_non_loopback_address(tmp_path, lines, veth):  # noqa: F811
    namespace, host_end, peer_end = veth
    run("ip", "addr", "add", "10.77.0.1/30", "dev", host_end)
    run("ip", "netns", "exec", namespace, "ip", "addr", "add", "10.77.0.2/30", "dev", peer_end)
    events, warnings = [], []
    state = StateDB(str(tmp_path / "state.sqlite"))
    auth = Authenticator(parse_users(lines), state, clock=Clock(), on_event=events.append, warn=warnings.append)
    server = Server(auth, host="10.77.0.1")
    try:
        def from_namespace(user, password):
            done = subprocess.run(["ip", "netns", "exec", namespace, sys.executable, "-c", AGENT,
                                   "http://10.77.0.1:%d/api/v1/login" % server.port, user, password],
                                  capture_output=True, text=True, timeout=60)
            assert done.returncode == 0, done.stderr
            return int(done.stdout)

        assert from_namespace("legacy", LEGACY_PASSWORD) == 401
        assert events[-1].src_ip == "10.77.0.2" and events[-1].reason == "insecure legacy hash"
        assert len(warnings) == 1 and "legacy" in warnings[0] and LEGACY_HASH not in warnings[0]
        assert state.upgraded_hash("legacy", LEGACY_HASH) is None
        # An argon2id user logs in from there: only the legacy hash needs a safe channel.
        assert from_namespace("admin", PASSWORD) == 200
    finally:
        server.close()
    # Over TLS the same address may use the legacy hash, and the login upgrades it.
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(_self_signed(tmp_path))
    server = Server(auth, host="10.77.0.1", tls_context=server_ctx)
    try:
        status = subprocess.run(["ip", "netns", "exec", namespace, sys.executable, "-c", AGENT,
                                 "https://10.77.0.1:%d/api/v1/login" % server.port, "legacy", LEGACY_PASSWORD],
                                capture_output=True, text=True, timeout=60)
        assert status.stdout.strip() == "200", status.stderr
        assert events[-1].src_ip == "10.77.0.2" and events[-1].success
        assert state.upgraded_hash("legacy", LEGACY_HASH).startswith("$argon2id$")
    finally:
        server.close()
        state.close()


def _self_signed(tmp_path):
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    start = datetime.datetime(2020, 1, 1)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(start).not_valid_after(start + datetime.timedelta(days=36500))
            .sign(key, hashes.SHA256()))
    pem = tmp_path / "server.pem"
    pem.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()) + cert.public_bytes(serialization.Encoding.PEM))
    return pem


def test_under_tls_the_cookie_is_secure_and_hsts_is_sent(tmp_path, lines):
    pem = _self_signed(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(pem)
    client_ctx = ssl.create_default_context()
    client_ctx.check_hostname = False
    client_ctx.verify_mode = ssl.CERT_NONE
    state = StateDB(str(tmp_path / "state.sqlite"))
    server = Server(Authenticator(parse_users(lines), state, clock=Clock()), tls_context=server_ctx)
    try:
        status, headers, _ = login(server, context=client_ctx)
        assert status == 200
        attributes = [part.strip().lower() for part in session_cookie(headers).split(";")]
        assert "secure" in attributes and "httponly" in attributes
        assert headers["Strict-Transport-Security"].startswith("max-age=")
    finally:
        server.close()
        state.close()
