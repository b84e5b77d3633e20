"""HTTP/1.x request parsing from one TCP payload.

Owns the request head: the request line (method, target, version), the header fields detection
uses (Host, User-Agent, and the forwarded-for family) and the body bytes that follow the head in
the same segment. Header names match case-insensitively (RFC 9110); only complete header lines
count, since a line cut by the snap length or the segment end is not the value that was sent.

Also owns whom a request is for (`request_authority`: the Host header, or the host an absolute-form
or CONNECT target names, and the path, as Maltrail reads them; the C scan's `split_authority` in
workers/csrc/fastpath.c is its twin) and how a request's text reads once decoded: the target
percent-decoded, and as an HTML form submits it (application/x-www-form-urlencoded, where '+'
stands for a space in the query and in a form body; `decoded_target`, `decoded_form`).

Must not know about trails or events; never raises.
"""

from __future__ import annotations

import re
from typing import NamedTuple
from urllib.parse import unquote

MAX_HEAD_BYTES = 16384
_TOKEN = re.compile(rb"\A[!#$%&'*+.^_`|~0-9A-Za-z-]{1,32}\Z")
# An absolute-form request target (a request to a proxy) starts with a scheme (RFC 3986); "://"
# further along is part of a path or query.
_ABSOLUTE = re.compile(r"\A[a-z][a-z0-9+.-]*://")


class HttpRequest(NamedTuple):
    method: str
    target: str             # the request-target as sent (path, absolute URI or authority)
    version: str
    host: str | None        # Host header value, stripped (None when absent)
    user_agent: str | None
    headers: dict           # lower-case name -> value (first occurrence) for the complete lines
    body: bytes             # whatever follows the head in this segment


def looks_like_http_request(payload: bytes) -> bool:
    """Cheap classifier: a token, a space, then ' HTTP/' before the end of the first line."""
    space = payload.find(b" ", 0, 33)
    if space <= 0:
        return False
    eol = payload.find(b"\n", 0, MAX_HEAD_BYTES)
    line = payload[:eol] if eol >= 0 else payload[:MAX_HEAD_BYTES]
    return b" HTTP/" in line and _TOKEN.match(payload[:space]) is not None


def parse_http_request(payload: bytes) -> HttpRequest | None:
    eol = payload.find(b"\r\n", 0, MAX_HEAD_BYTES)
    if eol < 0:
        return None
    parts = payload[:eol].split(b" ")
    # Maltrail's rule: exactly two spaces in the request line, the last part an HTTP version.
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/") or not parts[1]:
        return None
    if _TOKEN.match(parts[0]) is None:
        return None
    head_end = payload.find(b"\r\n\r\n", eol, MAX_HEAD_BYTES)
    head = payload[eol + 2:head_end if head_end >= 0 else min(len(payload), MAX_HEAD_BYTES)]
    headers = {}
    for raw in head.split(b"\r\n") if head_end >= 0 else head.split(b"\r\n")[:-1]:
        name, sep, value = raw.partition(b":")
        if not sep or not name or name != name.strip():
            continue
        key = name.decode("latin-1").lower()
        if key not in headers:
            headers[key] = value.strip().decode("latin-1")
    body = payload[head_end + 4:] if head_end >= 0 else b""
    return HttpRequest(parts[0].decode("latin-1"), parts[1].decode("latin-1"), parts[2].decode("latin-1"),
                       headers.get("host"), headers.get("user-agent"), headers, body)


def decoded_target(target: str) -> tuple[str, ...]:
    """The texts a server may read from a request target: the target percent-decoded, and when its
    query holds a '+', also the form-encoded reading (WHATWG URL, application/x-www-form-urlencoded:
    '+' is a space in the query, which is what form handlers such as PHP's $_GET or a CGI library
    hand to applications; in the path before the first '?' it is a literal '+'). The query starts
    at the first literal '?': an encoded "%3F" belongs to the path or a value."""
    path, sep, query = target.partition("?")
    plain = unquote(target)
    if "+" not in query:
        return (plain,)
    # unquote(a + "?" + b) == unquote(a) + "?" + unquote(b): an escape never spans a literal '?'
    return (plain, unquote(path) + sep + unquote(query.replace("+", " ")))


def decoded_form(body: str) -> tuple[str, ...]:
    """The texts a server may read from a request body: percent-decoded, and when it holds a '+',
    also as a form body reads ('+' is a space). Both, whatever the Content-Type says: the header
    is the sender's claim, and a JSON or XML body keeps its '+' in the first reading."""
    plain = unquote(body)
    if "+" not in body:
        return (plain,)
    return (plain, unquote(body.replace("+", " ")))


class RequestAuthority(NamedTuple):
    """Whom a request is for, in lower case, as Maltrail reads it."""

    host: str               # the target's host (absolute form, CONNECT), else the Host header's, else the server
    path: str               # the path on that host ("/..." for absolute form and CONNECT)
    url: str                # host + path: what URL trails are matched and written against
    target: str             # the request target as sent, in lower case
    header_host: str | None  # the Host header (None when absent or empty)
    target_host: str | None  # the host an absolute-form or CONNECT target names (None in origin form)
    absolute: bool          # the target is in absolute form (a request to a proxy)


def without_default_port(host: str) -> str:
    """A host without the port HTTP implies (":80"): "a.example:80" and "a.example" name the same
    site, and Maltrail writes it bare. Other ports stay: they name another service."""
    return host[:-3] if host.endswith(":80") else host


def request_authority(req: HttpRequest, server: str) -> RequestAuthority:
    """Whom `req` is for. `server`: the address it was sent to, as text, the host when the
    request names none. The Host header is taken as sent (stripped, lower case, without ":80");
    an absolute-form target ("http://host[:port]/path") or a CONNECT target ("host:port") names
    the real host, up to the first "/", and the rest is the path. Pure: never raises."""
    target = req.target.lower()
    header_host = without_default_port(req.host.strip().lower()) if req.host else None
    absolute = _ABSOLUTE.match(target) is not None
    if absolute:
        target_host, path = _split_authority(target.split("://", 1)[1])
    elif req.method.upper() == "CONNECT":
        target_host, path = _split_authority(target)
    else:
        target_host, path = None, target
    host = target_host if target_host is not None else header_host if header_host is not None else server
    return RequestAuthority(host, path, host + path, target, header_host, target_host, absolute)


def _split_authority(rest: str) -> tuple[str, str]:
    """"host[:port][/path]" -> (host without ":80", "/path")."""
    host, _, path = rest.partition("/")
    return without_default_port(host), "/" + path
