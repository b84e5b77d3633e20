"""Fetching feeds for real: a local feed server (HTTP, and HTTPS with a CA made here) on loopback,
and a real proxy (Debian's tinyproxy, started here in the foreground with its own configuration
and log) in between.

What this file establishes:
1. every declared feed, served in its format (tests/test_feeds.py `fixture`) over HTTP and over
   HTTPS, some gzip-encoded, is fetched through the proxy and yields exactly its rows; the
   proxy's log has one request for every request the server answered (GET of the URL for HTTP,
   CONNECT for HTTPS), so none went around it; the status file records every feed;
2. a second update sends the validators and an unchanged feed costs a 304 (ETag and
   Last-Modified);
3. faults, over HTTP and HTTPS through the proxy: 404, 500 then success on retry, a hang past
   the timeout, a truncated body (Content-Length, chunked, gzip), a page without the marker, a
   feed shrunk to 10 %, garbage bytes, an HTML error page with status 200 (holding the marker):
   each is reported with its reason (log line, status file) and the last good copy's rows are
   the feed's rows;
4. offline: nothing fetched (the server and the proxy see nothing), last good copies used, one
   line saying so; no network at all: one line saying so, last good copies used;
5. the proxy environment variables, no_proxy, certificate verification (another CA, the system
   store), the size cap, a mirror, redirects, custom trail URLs, `force`, and the state
   directory's safety (a planted symlink, a directory others can write, a second update).
"""

from __future__ import annotations

import dataclasses
import datetime
import gzip as gzip_module
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import threading
import time
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.test_feeds import BY_NAME, NOW_S, fixture
from trailsdb.feeds import FEEDS, FetchSettings, StoreBusy, StoreError, custom_url_feeds, read_status, refresh
from trailsdb.feeds.fetch import bypasses_proxy

TINYPROXY = shutil.which("tinyproxy") or "/usr/bin/tinyproxy"


# ----------------------------------------------------------------------------------------------
# A test CA and certificates for 127.0.0.1
# ----------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Pki:
    ca: str
    cert: str
    key: str
    other_ca: str


def _write_pem(path: Path, *objs) -> str:
    out = b""
    for obj in objs:
        if isinstance(obj, x509.Certificate):
            out += obj.public_bytes(serialization.Encoding.PEM)
        else:
            out += obj.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption())
    path.write_bytes(out)
    return str(path)


def _ca(name: str):
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    return key, cert


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    base = tmp_path_factory.mktemp("pki")
    ca_key, ca_cert = _ca("maltrail-engine feeds test CA")
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    import ipaddress
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                        x509.DNSName("localhost")]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    _other_key, other_cert = _ca("some other CA")
    return Pki(_write_pem(base / "ca.pem", ca_cert), _write_pem(base / "server.pem", cert),
               _write_pem(base / "server.key", key), _write_pem(base / "other-ca.pem", other_cert))


# ----------------------------------------------------------------------------------------------
# The feed server
# ----------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Route:
    body: bytes = b""
    status: int = 200
    fail_first: int = 0          # answer 500 this many times first
    hang: bool = False           # accept the request and never answer
    truncate: str = ""           # "length" (half of a Content-Length body), "chunked", "gzip"
    gzip: bool = False
    etag: str = ""
    last_modified: str = ""
    location: str = ""           # a redirect
    served: int = 0              # 200 answers
    not_modified: int = 0        # 304 answers


class FeedServer:
    """A feed server on 127.0.0.1: routes by path, a log of every request (path, headers)."""

    def __init__(self, pki: Pki | None = None):
        self.routes: dict[str, Route] = {}
        self.requests: list[tuple[str, dict]] = []
        self.release = threading.Event()
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                outer._answer(self)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.scheme = "http"
        if pki is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(pki.cert, pki.key)
            self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
            self.scheme = "https"
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return "%s://127.0.0.1:%d%s" % (self.scheme, self.port, path)

    def route(self, path: str, **kw) -> Route:
        route = self.routes[path] = Route(**kw)
        return route

    def count(self, path: str) -> int:
        with self._lock:
            return sum(1 for p, _h in self.requests if p == path)

    def _answer(self, h: BaseHTTPRequestHandler) -> None:
        with self._lock:
            self.requests.append((h.path, dict(h.headers)))
            route = self.routes.get(h.path)
        h.close_connection = True
        if route is None:
            return self._simple(h, 404, b"no such feed\n")
        if route.fail_first > 0:
            route.fail_first -= 1
            return self._simple(h, 500, b"<html><body>Internal Server Error</body></html>\n")
        if route.location:
            h.send_response(302)
            h.send_header("Location", route.location)
            h.send_header("Content-Length", "0")
            h.send_header("Connection", "close")
            h.end_headers()
            return
        if route.status != 200:
            return self._simple(h, route.status, b"error %d\n" % route.status)
        if route.hang:
            self.release.wait(60)
            return
        if route.etag and h.headers.get("If-None-Match") == route.etag or (
                route.last_modified and h.headers.get("If-Modified-Since") == route.last_modified):
            route.not_modified += 1
            h.send_response(304)
            if route.etag:
                h.send_header("ETag", route.etag)
            h.send_header("Connection", "close")
            h.end_headers()
            return
        body = route.body
        h.send_response(200)
        h.send_header("Content-Type", "text/plain")
        h.send_header("Connection", "close")
        if route.etag:
            h.send_header("ETag", route.etag)
        if route.last_modified:
            h.send_header("Last-Modified", route.last_modified)
        if route.gzip or route.truncate == "gzip":
            body = gzip_module.compress(body, mtime=0)
            h.send_header("Content-Encoding", "gzip")
        if route.truncate == "chunked":
            h.send_header("Transfer-Encoding", "chunked")
            h.end_headers()
            h.wfile.write(b"%x\r\n%s" % (len(body), body[:len(body) // 2]))
            h.wfile.flush()
            return
        if route.truncate == "gzip":
            body = body[:len(body) // 2]
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body[:len(body) // 2] if route.truncate == "length" else body)
        h.wfile.flush()
        route.served += 1

    @staticmethod
    def _simple(h: BaseHTTPRequestHandler, status: int, body: bytes) -> None:
        h.send_response(status)
        h.send_header("Content-Type", "text/html" if body.startswith(b"<") else "text/plain")
        h.send_header("Content-Length", str(len(body)))
        h.send_header("Connection", "close")
        h.end_headers()
        h.wfile.write(body)

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def http_server():
    server = FeedServer()
    yield server
    server.close()


@pytest.fixture
def https_server(pki):
    server = FeedServer(pki)
    yield server
    server.close()


@pytest.fixture(params=["http", "https"])
def server(request, pki):
    server = FeedServer(pki if request.param == "https" else None)
    yield server
    server.close()


# ----------------------------------------------------------------------------------------------
# The proxy: tinyproxy in the foreground, on loopback, with its own configuration and log
# ----------------------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Tinyproxy:
    def __init__(self, base: Path):
        self.port = _free_port()
        self.log = base / "tinyproxy.log"
        conf = base / "tinyproxy.conf"
        conf.write_text("\n".join([
            "Port %d" % self.port, "Listen 127.0.0.1", "Timeout 30", 'LogFile "%s"' % self.log, "LogLevel Info",
            "MaxClients 64", "DisableViaHeader Yes", ""]))
        self.process = subprocess.Popen([TINYPROXY, "-d", "-c", str(conf)], stdout=subprocess.DEVNULL,
                                        stderr=subprocess.STDOUT)
        for _ in range(200):
            if self.process.poll() is not None:
                raise RuntimeError("tinyproxy exited: %s" % (self.log.read_text() if self.log.exists() else "no log"))
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        self.url = "http://127.0.0.1:%d" % self.port

    def requests(self, port: int) -> list[str]:
        """The request lines the proxy logged for the server on `port`: "GET http://..." or
        "CONNECT 127.0.0.1:port"."""
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        found = re.findall(r"Request \(file descriptor \d+\): (\S+ \S+) HTTP/1\.\d", text)
        return [r for r in found if ("127.0.0.1:%d" % port) in r]

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def proxy(tmp_path_factory):
    # One per test: its log then holds this test's requests only (a server port of an earlier
    # test may come back).
    if not os.path.exists(TINYPROXY):
        pytest.skip("tinyproxy is not installed (bootstrap.sh installs it: apt-get install tinyproxy)")
    running = Tinyproxy(tmp_path_factory.mktemp("proxy"))
    yield running
    running.stop()


# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------

class Log(list):
    def __call__(self, level: str, text: str) -> None:
        self.append((level, text))

    def lines(self, level: str) -> list[str]:
        return [text for lv, text in self if lv == level]


def settings_for(proxy: Tinyproxy | None, pki: Pki, **kw) -> FetchSettings:
    values = dict(proxy_url=proxy.url if proxy else "", ca_file=pki.ca, connect_timeout_s=5.0, total_timeout_s=10.0,
                  retries=2, backoff_s=0.01, concurrency=4, environ={})
    values.update(kw)
    return FetchSettings(**values)


def serve(server: FeedServer, feed, seed: int = 1, rows: int = 12, **route):
    """`feed` served by `server` at /feeds/<name>: (the test copy of the feed, expected rows)."""
    body, expected = fixture(feed, seed=seed, rows=rows)
    path = "/feeds/%s.txt" % feed.name
    server.route(path, body=body, **route)
    return dataclasses.replace(feed, url=server.url(path), backup_url=""), expected


def run(feeds_dir, settings, feeds, log=None, **kw):
    return refresh(str(feeds_dir), settings, feeds=feeds, disabled=(), log=log if log is not None else Log(),
                   now=lambda: NOW_S, sleep=lambda s: None, **kw)


def row_set(result) -> set:
    return {(r.trail, r.info) for r in result.rows()}


# ----------------------------------------------------------------------------------------------
# 1. Every feed through the proxy, over HTTP and HTTPS
# ----------------------------------------------------------------------------------------------

def test_every_feed_through_the_proxy_over_http_and_https(tmp_path, http_server, https_server, proxy, pki):
    for server in (http_server, https_server):
        feeds, expected = [], {}
        for index, feed in enumerate(FEEDS):
            copy, rows = serve(server, feed, seed=index, gzip=index % 3 == 0)
            feeds.append(copy)
            expected[feed.name] = rows
        log = Log()
        results = run(tmp_path / server.scheme, settings_for(proxy, pki), feeds, log)
        assert [r.feed.name for r in results] == [f.name for f in FEEDS]
        for result in results:
            assert result.status.state == "fresh", (result.feed.name, result.status.reason)
            assert result.status.route == "proxy %s" % proxy.url
            assert row_set(result) == expected[result.feed.name], result.feed.name
            assert result.status.rows == len(list(result.rows()))
        assert log.lines("!") == []
        # every request the server answered went through the proxy
        served = sorted(path for path, _h in server.requests)
        assert len(served) == len(FEEDS)
        logged = proxy.requests(server.port)
        if server.scheme == "http":
            assert sorted(line.split(" ", 1)[1] for line in logged) == sorted(server.url(p) for p in served)
        else:
            assert logged == ["CONNECT 127.0.0.1:%d" % server.port] * len(FEEDS)
        status = read_status(str(tmp_path / server.scheme))
        assert set(status) == {f.name for f in FEEDS}
        assert all(r["state"] == "fresh" and r["rows"] > 0 and r["last_success"] == NOW_S for r in status.values())


# ----------------------------------------------------------------------------------------------
# 2. Conditional GET
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("validator", ["etag", "last_modified"])
def test_an_unchanged_feed_costs_a_304(tmp_path, server, proxy, pki, validator):
    value = '"v1-abc"' if validator == "etag" else formatdate(NOW_S - 3600, usegmt=True)
    feed, expected = serve(server, BY_NAME["greensnow"], **{validator: value})
    settings = settings_for(proxy, pki)
    first = run(tmp_path, settings, [feed])[0]
    assert first.status.state == "fresh" and row_set(first) == expected
    second = run(tmp_path, settings, [feed])[0]
    assert second.status.state == "unchanged" and second.status.reason is None
    assert row_set(second) == expected
    route = server.routes["/feeds/greensnow.txt"]
    assert (route.served, route.not_modified) == (1, 1)
    header = "If-None-Match" if validator == "etag" else "If-Modified-Since"
    assert [h.get(header) for _p, h in server.requests] == [None, value]
    assert len(proxy.requests(server.port)) == 2
    assert read_status(str(tmp_path))["greensnow"]["state"] == "unchanged"


# ----------------------------------------------------------------------------------------------
# 3. Faults: the reason is reported and the last good copy is used
# ----------------------------------------------------------------------------------------------

def _html_error_page(marker: str) -> bytes:
    # An error page served with status 200 that even holds the feed's marker text: only the
    # HTML check can tell it is not the feed.
    return ("<!DOCTYPE html>\n<html><head><title>Service temporarily unavailable</title></head><body>"
            "<p>Please retry in 0.1 s (%s); reference 10.0.0.1</p></body></html>\n" % marker).encode()


FAULTS = {
    "404": (dict(status=404), "HTTP 404"),
    "hang": (dict(hang=True), "timed out"),
    "truncated": (dict(truncate="length"), "truncated"),
    "truncated-chunked": (dict(truncate="chunked"), "truncated"),
    "truncated-gzip": (dict(truncate="gzip"), "truncated"),
    "no-marker": ("no-marker", "marker '.1' is missing"),
    "shrunk": ("shrunk", "shrank to"),
    "garbage": ("garbage", "binary content"),
    "html-200": ("html", "an HTML page, not the feed"),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_a_fault_keeps_the_last_good_copy_and_says_why(tmp_path, server, proxy, pki, fault):
    feed, good = serve(server, BY_NAME["abuseipdb"], rows=40)
    settings = settings_for(proxy, pki, total_timeout_s=2.0)
    assert run(tmp_path, settings, [feed])[0].status.state == "fresh"
    spec, needle = FAULTS[fault]
    path = "/feeds/abuseipdb.txt"
    if spec == "no-marker":
        server.route(path, body=b"# a list\n" + b"".join(b"20.%d.%d.7\n" % (200 + i, 200 + i) for i in range(40)))
    elif spec == "shrunk":
        body, _rows = fixture(BY_NAME["abuseipdb"], seed=1, rows=40)
        kept = [line for line in body.split(b"\n") if not line[:1].isdigit()]
        server.route(path, body=b"\n".join(kept[:3] + body.split(b"\n")[3:7]) + b"\n")     # 4 of 40 rows
    elif spec == "garbage":
        server.route(path, body=bytes(range(256)) * 64 + b" .1 ")
    elif spec == "html":
        server.route(path, body=_html_error_page(".1"))
    else:
        server.route(path, body=fixture(BY_NAME["abuseipdb"], seed=2, rows=40)[0], **spec)
    log = Log()
    result = run(tmp_path, settings, [feed], log)[0]
    assert result.status.state == "kept"
    assert needle in result.status.reason, result.status.reason
    assert row_set(result) == good
    record = read_status(str(tmp_path))["abuseipdb"]
    assert needle in record["last_failure_reason"] and record["last_failure"] == NOW_S
    assert record["last_success"] == NOW_S and record["rows"] == len(good)
    assert any("abuseipdb" in line and needle in line and "last good copy" in line for line in log.lines("!")), log
    assert proxy.requests(server.port), "the fetch did not go through the proxy"


def test_a_500_then_success_is_retried(tmp_path, server, proxy, pki):
    feed, _good = serve(server, BY_NAME["cruzit"])
    settings = settings_for(proxy, pki)
    run(tmp_path, settings, [feed])
    body, newer = fixture(BY_NAME["cruzit"], seed=9)
    server.route("/feeds/cruzit.txt", body=body, fail_first=1)
    result = run(tmp_path, settings, [feed])[0]
    assert result.status.state == "fresh" and row_set(result) == newer
    assert server.count("/feeds/cruzit.txt") == 3      # the first update, then a 500 and the retry
    assert len(proxy.requests(server.port)) == 3


def test_a_lasting_5xx_is_retried_then_reported(tmp_path, server, proxy, pki):
    feed, good = serve(server, BY_NAME["cruzit"])
    settings = settings_for(proxy, pki, retries=2)
    run(tmp_path, settings, [feed])
    server.route("/feeds/cruzit.txt", status=503)
    result = run(tmp_path, settings, [feed])[0]
    assert result.status.state == "kept" and "HTTP 503" in result.status.reason
    assert "after 3 attempts" in result.status.reason
    assert server.count("/feeds/cruzit.txt") == 4 and row_set(result) == good


def test_a_failure_without_a_last_good_copy_adds_nothing(tmp_path, server, proxy, pki):
    feed, _good = serve(server, BY_NAME["cruzit"], status=404)
    log = Log()
    result = run(tmp_path, settings_for(proxy, pki), [feed], log)[0]
    assert result.status.state == "missing" and list(result.rows()) == []
    assert any("no last good copy" in line for line in log.lines("!"))


def test_force_accepts_a_shrunken_feed(tmp_path, server, proxy, pki):
    feed, _good = serve(server, BY_NAME["greensnow"], rows=40)
    settings = settings_for(proxy, pki)
    run(tmp_path, settings, [feed])
    body, small = fixture(BY_NAME["greensnow"], seed=5, rows=2)
    server.route("/feeds/greensnow.txt", body=body)
    assert run(tmp_path, settings, [feed])[0].status.state == "kept"
    result = run(tmp_path, settings, [feed], force=True)[0]
    assert result.status.state == "fresh" and row_set(result) == small


# ----------------------------------------------------------------------------------------------
# 4. Offline, and no network
# ----------------------------------------------------------------------------------------------

def test_offline_fetches_nothing_uses_the_last_good_copies_and_says_so_once(tmp_path, http_server, proxy, pki):
    feeds, expected = [], {}
    for name in ("abuseipdb", "blackbook", "sslblcert", "torproject"):
        copy, rows = serve(http_server, BY_NAME[name])
        feeds.append(copy)
        expected[name] = rows
    missing = dataclasses.replace(BY_NAME["urlhaus"], url=http_server.url("/feeds/never.txt"))
    settings = settings_for(proxy, pki)
    run(tmp_path, settings, feeds)
    served, proxied = len(http_server.requests), len(proxy.requests(http_server.port))
    log = Log()
    results = run(tmp_path, settings, feeds + [missing], log, offline=True)
    offline_lines = [text for _lv, text in log if "offline" in text]
    assert len(offline_lines) == 1 and "4 of 5" in offline_lines[0], log
    assert len(log) == 1
    assert (len(http_server.requests), len(proxy.requests(http_server.port))) == (served, proxied)
    for result in results[:-1]:
        assert result.status.state == "offline" and row_set(result) == expected[result.feed.name]
    assert results[-1].status.state == "missing" and list(results[-1].rows()) == []


def test_no_network_at_all_is_said_once_and_the_last_good_copies_stay(tmp_path, http_server, pki):
    feeds = [serve(http_server, BY_NAME[name])[0] for name in ("abuseipdb", "greensnow")]
    run(tmp_path, settings_for(None, pki), feeds)
    dead = _free_port()
    unreachable = [dataclasses.replace(f, url="http://127.0.0.1:%d/x" % dead) for f in feeds]
    log = Log()
    results = run(tmp_path, settings_for(None, pki, retries=1), unreachable, log)
    assert all(r.status.state == "kept" and "could not connect" in r.status.reason for r in results)
    assert all(list(r.rows()) for r in results)
    assert sum("no feed could be reached" in line for line in log.lines("!")) == 1


# ----------------------------------------------------------------------------------------------
# 5. Proxy selection, TLS, caps, mirrors, redirects, custom URLs, the state directory
# ----------------------------------------------------------------------------------------------

def test_the_proxy_environment_variables_and_no_proxy(tmp_path, http_server, https_server, proxy, pki):
    feeds = [serve(http_server, BY_NAME["greensnow"])[0], serve(https_server, BY_NAME["blackbook"])[0]]
    env = {"http_proxy": proxy.url, "HTTPS_PROXY": proxy.url}
    results = run(tmp_path / "a", settings_for(None, pki, environ=env), feeds)
    assert [r.status.state for r in results] == ["fresh", "fresh"]
    assert len(proxy.requests(http_server.port)) == 1 and len(proxy.requests(https_server.port)) == 1
    # no_proxy sends them direct, also past [all] proxy_url
    for settings in (settings_for(None, pki, environ=dict(env, no_proxy="localhost,127.0.0.0/8")),
                     settings_for(proxy, pki, environ={"NO_PROXY": "127.0.0.1"})):
        results = run(tmp_path / "b", settings, feeds)
        assert [r.status.route for r in results] == ["direct", "direct"]
    assert len(proxy.requests(http_server.port)) == 1 and len(proxy.requests(https_server.port)) == 1
    assert len(http_server.requests) == 3 and len(https_server.requests) == 3


def test_no_proxy_forms():
    assert bypasses_proxy("feeds.example.org", 443, "example.org")
    assert bypasses_proxy("example.org", 443, ".example.org")
    assert not bypasses_proxy("badexample.org", 443, "example.org")
    assert bypasses_proxy("10.1.2.3", 80, "10.0.0.0/8")
    assert bypasses_proxy("10.1.2.3", 80, "10.1.2.3:80") and not bypasses_proxy("10.1.2.3", 443, "10.1.2.3:80")
    assert bypasses_proxy("anything", 1, "*") and not bypasses_proxy("anything", 1, "")
    assert bypasses_proxy("::1", 443, "[::1]:443")


def test_certificates_are_verified(tmp_path, https_server, proxy, pki):
    feed, expected = serve(https_server, BY_NAME["greensnow"])
    for ca_file in (pki.other_ca, ""):
        result = run(tmp_path / ("x%d" % len(ca_file)), settings_for(proxy, pki, ca_file=ca_file), [feed])[0]
        assert result.status.state == "missing"
        assert "certificate verification failed" in result.status.reason, result.status.reason
    result = run(tmp_path / "ok", settings_for(proxy, pki), [feed])[0]
    assert result.status.state == "fresh" and row_set(result) == expected
    assert not any(f.name in ("verify", "insecure") for f in dataclasses.fields(FetchSettings))


@pytest.mark.parametrize("gzip", [False, True])
def test_a_body_over_its_cap_is_refused(tmp_path, server, proxy, pki, gzip):
    feed, _rows = serve(server, BY_NAME["greensnow"], rows=400, gzip=gzip)
    small = dataclasses.replace(feed, max_bytes=2000)
    result = run(tmp_path, settings_for(proxy, pki), [small])[0]
    assert result.status.state == "missing" and "larger than its cap" in result.status.reason


def test_a_mirror_serves_when_the_main_url_fails(tmp_path, http_server, proxy, pki):
    feed, expected = serve(http_server, BY_NAME["datashield"])
    broken = dataclasses.replace(feed, url=http_server.url("/gone"), backup_url=feed.url)
    result = run(tmp_path, settings_for(proxy, pki), [broken])[0]
    assert result.status.state == "fresh" and result.status.url == feed.url and row_set(result) == expected


def test_redirects_are_followed_but_never_to_plain_http(tmp_path, http_server, https_server, proxy, pki):
    feed, expected = serve(http_server, BY_NAME["greensnow"])
    http_server.route("/moved", location=feed.url)
    result = run(tmp_path / "a", settings_for(proxy, pki), [dataclasses.replace(feed, url=http_server.url("/moved"))])[0]
    assert result.status.state == "fresh" and row_set(result) == expected
    https_server.route("/down", location=feed.url)
    result = run(tmp_path / "b", settings_for(proxy, pki), [dataclasses.replace(feed, url=https_server.url("/down"))])[0]
    assert result.status.state == "missing" and "refused" in result.status.reason


def test_custom_trail_urls_are_fetched_like_feeds(tmp_path, http_server, proxy, pki):
    feed = custom_url_feeds([http_server.url("/mine.txt")])[0]
    body, expected = fixture(feed)
    http_server.route("/mine.txt", body=body)
    results = refresh(str(tmp_path), settings_for(proxy, pki), feeds=[], disabled=(),
                      custom_urls=[http_server.url("/mine.txt")], log=Log(), now=lambda: NOW_S)
    assert [r.feed.name for r in results] == ["custom_url"]
    assert row_set(results[0]) == expected
    assert {r.reference for r in results[0].rows()} == {"(remote custom)"}


def test_a_planted_symlink_is_replaced_not_written_through(tmp_path, http_server, pki):
    feeds_dir = tmp_path / "feeds"
    feeds_dir.mkdir(mode=0o750)
    precious = tmp_path / "precious"
    precious.write_text("keep me\n")
    (feeds_dir / "greensnow.body").symlink_to(precious)
    feed, expected = serve(http_server, BY_NAME["greensnow"])
    result = run(feeds_dir, settings_for(None, pki), [feed])[0]
    assert result.status.state == "fresh" and row_set(result) == expected
    assert precious.read_text() == "keep me\n"
    assert not (feeds_dir / "greensnow.body").is_symlink()
    assert not [p for p in os.listdir(feeds_dir) if p.endswith(".part")]


def test_an_unsafe_or_busy_state_directory_is_refused(tmp_path, http_server, pki):
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    open_dir.chmod(0o777)
    with pytest.raises(StoreError, match="writable by other users"):
        run(open_dir, settings_for(None, pki), [])
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (tmp_path / "elsewhere").mkdir(mode=0o750)
    with pytest.raises(StoreError, match="symlink"):
        run(link, settings_for(None, pki), [])
    feeds_dir = tmp_path / "feeds"
    feed, _ = serve(http_server, BY_NAME["greensnow"], hang=True)
    holder = threading.Thread(target=run, args=(feeds_dir, settings_for(None, pki, total_timeout_s=30.0), [feed]))
    holder.start()
    try:
        while http_server.count("/feeds/greensnow.txt") == 0:     # the first update is fetching
            time.sleep(0.01)
        with pytest.raises(StoreBusy):
            run(feeds_dir, settings_for(None, pki), [])
    finally:
        http_server.release.set()
        holder.join()


def test_a_damaged_status_file_is_said_and_rebuilt(tmp_path, http_server, pki):
    feed, expected = serve(http_server, BY_NAME["greensnow"], rows=30)
    run(tmp_path, settings_for(None, pki), [feed])
    (tmp_path / "status.json").write_text("{broken")
    body, _ = fixture(BY_NAME["greensnow"], seed=3, rows=3)
    http_server.route("/feeds/greensnow.txt", body=body)
    log = Log()
    result = run(tmp_path, settings_for(None, pki), [feed], log)[0]
    # the last good copy was counted again, so the shrink is still caught
    assert result.status.state == "kept" and "shrank to 5 rows from 32" in result.status.reason
    assert result.status.rows == 32 and row_set(result) == expected
    assert any("damaged" in line for line in log.lines("!"))
    assert json.loads((tmp_path / "status.json").read_text())["feeds"]["greensnow"]["state"] == "kept"


def test_unknown_disabled_names_are_reported(tmp_path, pki):
    log = Log()
    refresh(str(tmp_path), settings_for(None, pki), feeds=[], disabled=["nosuchfeed"], log=log, now=lambda: NOW_S)
    assert any("nosuchfeed" in line for line in log.lines("!"))
