"""Fetching one feed body over HTTP(S), directly or through a proxy.

Owns the client side of a feed download, on the standard library's http.client (no dependency:
it gives what this needs and urllib hides: the CONNECT tunnel made under the connect timeout, a
deadline over the whole download checked between reads, the body streamed to a file with a size
cap, and the exact HTTP status and validators):

- the proxy: `[all] proxy_url` when set, else the standard environment variables (http_proxy /
  https_proxy, upper or lower case, lower case first), either one skipped for the hosts
  no_proxy names (names and their subdomains, addresses, CIDR ranges, host:port, `*`); HTTP goes
  to the proxy in absolute form, HTTPS through a CONNECT tunnel, so the proxy never sees the
  content and the feed's certificate is verified end to end;
- TLS: certificates always verified against the system's CA store or a CA bundle
  (`[all] feeds_ca_file`), host names checked, TLS 1.2 at least; there is no switch to turn that
  off;
- a connect timeout (TCP connect, CONNECT and the TLS handshake) and a total timeout over the
  whole attempt (checked before every read, each read waiting at most the time left);
- retries with exponential backoff on connection errors and 5xx answers (a timeout in the
  middle of a body, a 4xx, a certificate that fails verification and a body over its cap are
  not retried: trying again would not change them);
- conditional GET: the validators (ETag, Last-Modified) of the last good copy are sent, and a
  304 says it is still current;
- redirects (at most 5, never from https:// to http://); gzip content encoding (decompressed
  as it streams, the cap applied to what it decompresses to); a body that ends before its
  Content-Length, inside a chunk or inside its gzip stream is reported as truncated.

Must not validate or parse what it fetched, or know about the state directory: it writes the
body to the file object it is given and reports what happened.
"""

from __future__ import annotations

import base64
import http.client
import ipaddress
import os
import socket
import ssl
import time
import zlib
from dataclasses import dataclass, field
from typing import BinaryIO, Callable, Mapping
from urllib.parse import unquote, urljoin, urlsplit

READ_CHUNK_BYTES = 64 * 1024
MAX_REDIRECTS = 5
USER_AGENT = "maltrail-engine/0.1 (trail feeds)"


@dataclass(frozen=True)
class FetchSettings:
    """How feeds are fetched. `environ` is where the proxy variables are read from (the
    process's environment unless given)."""

    proxy_url: str = ""
    ca_file: str = ""
    connect_timeout_s: float = 15.0
    total_timeout_s: float = 120.0
    retries: int = 2
    backoff_s: float = 2.0
    concurrency: int = 4
    user_agent: str = USER_AGENT
    environ: Mapping[str, str] | None = None

    def env(self) -> Mapping[str, str]:
        return os.environ if self.environ is None else self.environ


@dataclass
class FetchResult:
    """What one fetch came to. `ok`: a body was written in full; `not_modified`: 304, nothing
    written; otherwise `reason` says why not."""

    url: str
    ok: bool = False
    not_modified: bool = False
    reason: str = ""
    http_status: int = 0
    etag: str = ""
    last_modified: str = ""
    bytes: int = 0
    route: str = "direct"          # "direct", or "proxy http://host:port"
    attempts: int = 0
    connection_failed: bool = False  # every attempt failed before any HTTP answer
    notes: list = field(default_factory=list)


class FetchError(Exception):
    """One attempt failed. `retry`: whether trying again may help; `connection`: it failed
    before an HTTP answer came."""

    def __init__(self, reason: str, retry: bool = False, connection: bool = False, status: int = 0):
        super().__init__(reason)
        self.reason = reason
        self.retry = retry
        self.connection = connection
        self.status = status


@dataclass(frozen=True)
class Proxy:
    scheme: str
    host: str
    port: int
    authorization: str = ""    # a Proxy-Authorization value, from credentials in the variable

    def __str__(self) -> str:
        return "%s://%s:%d" % (self.scheme, self.host if ":" not in self.host else "[%s]" % self.host, self.port)


def _clean(text: str, limit: int = 120) -> str:
    """Text a server chose (a reason phrase, a Location), fit for a log line: printable, short."""
    text = "".join(c if c.isprintable() else "?" for c in str(text))
    return text if len(text) <= limit else text[:limit - 3] + "..."


# ----------------------------------------------------------------------------------------------
# Which proxy
# ----------------------------------------------------------------------------------------------

def _env(environ: Mapping[str, str], name: str) -> str:
    for key in (name.lower(), name.upper()):
        value = environ.get(key, "")
        if value.strip():
            return value.strip()
    return ""


def bypasses_proxy(host: str, port: int, no_proxy: str) -> bool:
    """Whether `host` is exempt from proxying by a no_proxy value: `*`; a name, matching itself
    and its subdomains (with or without a leading dot); an address or CIDR range; any of these
    with ":port" to exempt that port only."""
    host = host.lower().strip("[]").rstrip(".")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    for entry in (e.strip().lower() for e in no_proxy.split(",")):
        if not entry:
            continue
        if entry == "*":
            return True
        entry_port = None
        if entry.startswith("["):
            inside, _, rest = entry[1:].partition("]")
            entry, entry_port = inside, rest[1:] if rest.startswith(":") else None
        elif entry.count(":") == 1:
            entry, entry_port = entry.split(":")
        if entry_port is not None and entry_port != str(port):
            continue
        if address is not None:
            try:
                if address in ipaddress.ip_network(entry, strict=False):
                    return True
            except ValueError:
                pass
            continue
        name = entry.lstrip(".").rstrip(".")
        if name and (host == name or host.endswith("." + name)):
            return True
    return False


def _parse_proxy(text: str, where: str) -> Proxy:
    raw = text if "://" in text else "http://" + text
    try:
        parts = urlsplit(raw)
        port = parts.port
    except ValueError as exc:
        raise FetchError("%s %r is not a proxy URL (%s)" % (where, text, exc)) from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise FetchError("%s %r is not an http:// or https:// proxy URL" % (where, text))
    authorization = ""
    if parts.username is not None:
        pair = "%s:%s" % (unquote(parts.username), unquote(parts.password or ""))
        authorization = "Basic " + base64.b64encode(pair.encode("utf-8")).decode("ascii")
    return Proxy(parts.scheme, parts.hostname, port or (443 if parts.scheme == "https" else 80), authorization)


def proxy_for(url: str, settings: FetchSettings) -> Proxy | None:
    """The proxy a request for `url` goes through, or None for a direct connection."""
    parts = urlsplit(url)
    env = settings.env()
    port = parts.port or (443 if parts.scheme == "https" else 80)
    if bypasses_proxy(parts.hostname or "", port, _env(env, "no_proxy")):
        return None
    if settings.proxy_url:
        return _parse_proxy(settings.proxy_url, "[all] proxy_url")
    variable = "https_proxy" if parts.scheme == "https" else "http_proxy"
    value = _env(env, variable)
    return _parse_proxy(value, "$" + variable) if value else None


# ----------------------------------------------------------------------------------------------
# One attempt
# ----------------------------------------------------------------------------------------------

def tls_context(ca_file: str = "") -> ssl.SSLContext:
    """Certificates verified, host names checked, TLS 1.2 or newer; `ca_file` replaces the system
    store as the trusted CAs when given."""
    try:
        context = ssl.create_default_context(cafile=ca_file or None)
    except (OSError, ssl.SSLError) as exc:
        raise FetchError("the CA bundle %s cannot be used: %s" % (ca_file, exc)) from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = True
    context.verify_mode = ssl.CERT_REQUIRED
    return context


class _Deadline:
    def __init__(self, total_s: float, clock: Callable[[], float]):
        self._clock = clock
        self._end = clock() + total_s
        self.total_s = total_s

    def left(self) -> float:
        left = self._end - self._clock()
        if left <= 0:
            raise FetchError("timed out: no complete answer within %g s (the total timeout)" % self.total_s)
        return left


def _connection(url: str, settings: FetchSettings, proxy: Proxy | None, context: ssl.SSLContext | None):
    """(connection, request target, extra headers) for `url`."""
    parts = urlsplit(url)
    host = parts.hostname
    port = parts.port or (443 if parts.scheme == "https" else 80)
    target = (parts.path or "/") + ("?" + parts.query if parts.query else "")
    timeout = settings.connect_timeout_s
    headers = {}
    if proxy is None:
        if parts.scheme == "https":
            return http.client.HTTPSConnection(host, port, timeout=timeout, context=context), target, headers
        return http.client.HTTPConnection(host, port, timeout=timeout), target, headers
    if proxy.authorization:
        headers["Proxy-Authorization"] = proxy.authorization
    if parts.scheme == "https":
        if proxy.scheme == "https":
            raise FetchError("an https:// proxy cannot carry https:// feeds (TLS inside TLS is not supported): "
                             "give the proxy as http://host:port, CONNECT keeps the feed's TLS end to end")
        # CONNECT through the proxy, then TLS with the feed's host, verified against its name.
        connection = http.client.HTTPSConnection(proxy.host, proxy.port, timeout=timeout, context=context)
        connection.set_tunnel(host, port, headers=headers)
        return connection, target, {}
    if proxy.scheme == "https":
        connection = http.client.HTTPSConnection(proxy.host, proxy.port, timeout=timeout,
                                                 context=tls_context(settings.ca_file))
    else:
        connection = http.client.HTTPConnection(proxy.host, proxy.port, timeout=timeout)
    # Plain HTTP through a proxy: the request line names the whole URL (absolute form).
    return connection, parts._replace(fragment="").geturl(), headers


def _attempt(url: str, sink: BinaryIO, settings: FetchSettings, validators: Mapping[str, str],
             max_bytes: int, clock: Callable[[], float]) -> FetchResult:
    """One GET of `url`, following redirects; raises FetchError."""
    result = FetchResult(url)
    deadline = _Deadline(settings.total_timeout_s, clock)
    for _hop in range(MAX_REDIRECTS + 1):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise FetchError("%r is not an http:// or https:// URL" % url)
        proxy = proxy_for(url, settings)
        result.route = "proxy %s" % proxy if proxy else "direct"
        context = tls_context(settings.ca_file) if parts.scheme == "https" else None
        connection, target, extra = _connection(url, settings, proxy, context)
        try:
            try:
                connection.timeout = min(settings.connect_timeout_s, deadline.left())
                connection.connect()
            except ssl.SSLCertVerificationError as exc:
                raise FetchError("certificate verification failed for %s: %s"
                                 % (parts.hostname, exc.verify_message or exc)) from None
            except ssl.SSLError as exc:
                raise FetchError("TLS handshake with %s failed: %s" % (parts.hostname, exc.reason or exc),
                                 retry=True, connection=True) from None
            except socket.timeout:
                raise FetchError("could not connect to %s within %g s (the connect timeout)"
                                 % (proxy or parts.hostname, settings.connect_timeout_s),
                                 retry=True, connection=True) from None
            except OSError as exc:
                where = ("the proxy %s" % proxy) if proxy else parts.hostname
                raise FetchError("could not connect to %s: %s" % (where, exc.strerror or exc),
                                 retry=True, connection=True) from None
            # Kept apart: http.client lets go of the socket once it has a response that closes
            # the connection, and the body is still read through it.
            sock = connection.sock
            sock.settimeout(deadline.left())
            try:
                connection.putrequest("GET", target, skip_accept_encoding=True)
                connection.putheader("User-Agent", settings.user_agent)
                connection.putheader("Accept-Encoding", "gzip")
                connection.putheader("Connection", "close")
                for name, value in extra.items():
                    connection.putheader(name, value)
                for name, value in validators.items():
                    connection.putheader(name, value)
                connection.endheaders()
                response = connection.getresponse()
            except socket.timeout:
                raise FetchError("timed out waiting for %s to answer (total timeout %g s)"
                                 % (parts.hostname, settings.total_timeout_s)) from None
            except (http.client.HTTPException, OSError, ValueError) as exc:
                raise FetchError("the connection to %s failed before an answer: %s"
                                 % (parts.hostname, getattr(exc, "strerror", None) or exc or type(exc).__name__),
                                 retry=True, connection=True) from None
            result.http_status = response.status
            if response.status in (301, 302, 303, 307, 308):
                location = response.getheader("Location", "")
                if not location:
                    raise FetchError("HTTP %d without a Location" % response.status, status=response.status)
                new_url = urljoin(url, location)
                if parts.scheme == "https" and urlsplit(new_url).scheme != "https":
                    raise FetchError("redirected from https:// to %s: refused" % _clean(new_url),
                                     status=response.status)
                result.notes.append("redirected to %s" % _clean(new_url))
                url = new_url
                continue
            if response.status == 304:
                if not validators:
                    raise FetchError("HTTP 304 to a request without validators", status=304)
                result.not_modified = True
                result.url = url
                return result
            if response.status >= 500:
                raise FetchError("HTTP %d %s" % (response.status, _clean(response.reason)), retry=True,
                                 status=response.status)
            if response.status != 200:
                raise FetchError("HTTP %d %s" % (response.status, _clean(response.reason)), status=response.status)
            result.etag = response.getheader("ETag", "") or ""
            result.last_modified = response.getheader("Last-Modified", "") or ""
            result.bytes = _body(response, sock, sink, max_bytes, deadline, settings)
            result.url = url
            result.ok = True
            return result
        finally:
            connection.close()
    raise FetchError("more than %d redirects" % MAX_REDIRECTS)


def _body(response, sock, sink: BinaryIO, max_bytes: int, deadline: _Deadline,
          settings: FetchSettings) -> int:
    """Streams the body into `sink`; returns the bytes written (decompressed)."""
    length_header = response.getheader("Content-Length")
    expected = None
    if length_header is not None and not response.chunked:
        try:
            expected = int(length_header)
        except ValueError:
            raise FetchError("Content-Length %r is not a number" % _clean(length_header)) from None
    encoding = (response.getheader("Content-Encoding", "") or "identity").strip().lower()
    if encoding not in ("identity", "gzip", "x-gzip"):
        raise FetchError("unsupported Content-Encoding %r" % _clean(encoding))
    if encoding == "identity" and expected is not None and expected > max_bytes:
        raise FetchError("larger than its cap: Content-Length %d > %d bytes" % (expected, max_bytes))
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS) if encoding != "identity" else None
    received = written = 0
    while True:
        sock.settimeout(deadline.left())
        try:
            chunk = response.read1(READ_CHUNK_BYTES)
        except socket.timeout:
            raise FetchError("timed out after %d bytes of the body (total timeout %g s)"
                             % (received, settings.total_timeout_s)) from None
        except http.client.IncompleteRead as exc:
            raise FetchError("truncated: the body ended inside a chunk after %d bytes" % (received + len(exc.partial)))
        except (http.client.HTTPException, OSError, ValueError) as exc:
            raise FetchError("truncated: the connection failed after %d bytes of the body (%s)"
                             % (received, getattr(exc, "strerror", None) or exc or type(exc).__name__)) from None
        if not chunk:
            break
        received += len(chunk)
        pieces = [chunk]
        if inflater is not None:
            pieces = []
            data = chunk
            while data:
                try:
                    out = inflater.decompress(data, max_bytes - written + 1)
                except zlib.error as exc:
                    raise FetchError("the gzip body is damaged: %s" % exc) from None
                pieces.append(out)
                data = inflater.unconsumed_tail
                if written + sum(map(len, pieces)) > max_bytes:
                    break
                if inflater.eof:
                    break
        for piece in pieces:
            written += len(piece)
            if written > max_bytes:
                raise FetchError("larger than its cap of %d bytes" % max_bytes)
            try:
                sink.write(piece)
            except OSError as exc:
                raise FetchError("cannot store the body: %s" % (exc.strerror or exc)) from None
    if expected is not None and received < expected:
        raise FetchError("truncated: the body ended after %d of its %d bytes" % (received, expected))
    if inflater is not None and not inflater.eof:
        raise FetchError("truncated: the gzip body ends before its end (%d bytes received)" % received)
    return written


# ----------------------------------------------------------------------------------------------
# With retries
# ----------------------------------------------------------------------------------------------

def fetch(url: str, sink: BinaryIO, settings: FetchSettings, validators: Mapping[str, str] | None = None,
          max_bytes: int = 64 * 1024 * 1024, sleep: Callable[[float], None] = time.sleep,
          clock: Callable[[], float] = time.monotonic) -> FetchResult:
    """GET `url` into `sink` (a writable, seekable binary file), retrying connection errors and
    5xx answers `settings.retries` times with backoff (backoff_s, doubling). `validators`:
    If-None-Match / If-Modified-Since headers of the copy we hold. Never raises: the result says
    what happened."""
    validators = dict(validators or {})
    attempts = 1 + max(0, settings.retries)
    connection_failures = 0
    last = FetchResult(url)
    for attempt in range(attempts):
        sink.seek(0)
        sink.truncate()
        try:
            result = _attempt(url, sink, settings, validators, max_bytes, clock)
            result.attempts = attempt + 1
            return result
        except FetchError as exc:
            last = FetchResult(url, reason=exc.reason, http_status=exc.status, attempts=attempt + 1)
            connection_failures += exc.connection
            if not exc.retry or attempt + 1 == attempts:
                break
            sleep(settings.backoff_s * (2 ** attempt))
    sink.seek(0)
    sink.truncate()
    last.connection_failed = connection_failures == last.attempts
    if last.attempts > 1:
        last.reason += " (after %d attempts)" % last.attempts
    return last
