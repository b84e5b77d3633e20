"""HTTP/1.x request parsing from one TCP payload.

Owns the request head: the request line (method, target, version), the header fields detection
uses (Host, User-Agent, and the forwarded-for family) and the body bytes that follow the head in
the same segment. Header names match case-insensitively (RFC 9110); only complete header lines
count, since a line cut by the snap length or the segment end is not the value that was sent.

Also owns how a request's text reads once decoded: the target percent-decoded, and as an HTML
form submits it (application/x-www-form-urlencoded, where '+' stands for a space in the query and
in a form body; `decoded_target`, `decoded_form`).

Must not know about trails or events; never raises.
"""

from __future__ import annotations

import re
from typing import NamedTuple
from urllib.parse import unquote

MAX_HEAD_BYTES = 16384
_TOKEN = re.compile(rb"\A[!#$%&'*+.^_`|~0-9A-Za-z-]{1,32}\Z")


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
