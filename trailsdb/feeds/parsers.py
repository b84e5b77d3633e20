"""Feed bodies to raw trail rows: one parser per format, not one per feed.

Owns the formats Maltrail's feeds come in: one address per line with `#` comments (`ip_lines`),
FireHOL .ipset/.netset (`ipset`), CSV with a per-row label (`csv`), pipe-separated (`pipe`),
`IP # comment` (`ip_comment`), URL lists (`urls`), domain lists (`domains`), addresses scraped
from HTML (`html`), addresses, IP:ports and domains from Suricata rules (`suricata`), Apache
htaccess `deny from` (`htaccess`), Tor relays in Onionoo's JSON (`json_tor`), the abuse.ch SSL
certificate blacklist (`sslbl_cert`: "sha1:<40 hex>" trails) and Maltrail's remote custom lists
(`custom`). A feed's entry (trailsdb/feeds/catalog.py) names its format and the format's options.

Every parser is pure: bytes (or a binary stream) in, trailsdb.sources.RawTrail rows out, with the
feed's name as the origin; it raises nothing on garbage (a line that is not what the format holds
is counted in `stats` by reason and skipped) and holds one line at a time where the format allows
(the HTML and JSON formats hold the body, which the fetcher caps). A row's trail is text in the
shape trailsdb/normalize.py reads; normalising, merging and judging rows is the caller's work.

Must not fetch, open files or know about the state directory.
"""

from __future__ import annotations

import binascii
import csv
import datetime
import functools
import io
import ipaddress
import json
import re
import socket
from collections import Counter
from typing import Callable, Iterator

from matchers.artifact import MAX_KEY_BYTES
from matchers.domains import MAX_LABEL_CHARS, MAX_NAME_CHARS, is_dns_name
from trailsdb.feeds.catalog import Feed
from trailsdb.sources import RawTrail

# A feed line longer than this is not a trail line (the longest trail key is far shorter): it is
# counted and skipped, so one newline-free body cannot make a parser hold it whole.
MAX_LINE_BYTES = 64 * 1024
# How much of a body is read at a time (a parser holds this much beside the line it is on).
READ_BYTES = 32 * 1024

_IPV4_IN_TEXT = re.compile(r"(?<![\d.])(\d{1,3}(?:\.\d{1,3}){3})(?![\d.])")
_SHA1 = re.compile(r"\A[0-9a-f]{40}\Z")
_SSLBL_RULE = re.compile(r"any -> \[([\d.]+)\] (\d{1,5}) .+likely ([^)]+?) C&C")
_SURICATA_NAME = re.compile(r'(?:dns[._]query|tls[._]sni);\s*content:\s*"([^"]{1,1024})"')
_HEX_RUN = re.compile(r"\|([0-9a-fA-F ]{1,1024})\|")
_DENY_FROM = re.compile(r"(?i)\bdeny\s+from\s+(\S+)")
_CERT_REASON_TAIL = re.compile(r"(?i)\s*(C&C|malware distribution)\s*\Z")
_PANEL_TAIL = re.compile(r"/(web)?panel.*")
_ADDRESS_ONLY = re.compile(r"\A\d[\d.]*\d\Z")
_DIGITS_AND_DOTS = re.compile(r"\A[\d.]+\Z")
_COMMENT_TAIL = re.compile(r"\s*#.*")


# ----------------------------------------------------------------------------------------------
# Reading lines
# ----------------------------------------------------------------------------------------------

def _stream(data):
    return io.BytesIO(data) if isinstance(data, (bytes, bytearray, memoryview)) else data


def _lines(data, stats: Counter) -> Iterator[str]:
    """The body's lines as text (UTF-8; undecodable bytes become U+FFFD and fail every shape
    check), without their line ends; over-long lines are counted and skipped. Read in blocks of
    READ_BYTES, each block's whole lines decoded and split at once (one call a block, not a few a
    line); _lines_reference is the same, a line at a time."""
    stream = _stream(data)
    pending = b""        # the start of a line whose end is not read yet (at most MAX_LINE_BYTES)
    skipping = False     # inside a line already counted as too long: dropped up to its end
    while True:
        chunk = stream.read(READ_BYTES)
        if not chunk:
            break
        if skipping:
            end = chunk.find(b"\n")
            if end < 0:
                continue
            chunk, skipping = chunk[end + 1:], False
        block = pending + chunk if pending else chunk
        end = block.rfind(b"\n")
        if end < 0:
            pending = block
        else:
            pending = block[end + 1:]
            whole = block[:end]
            if len(whole) <= MAX_LINE_BYTES or max(map(len, whole.split(b"\n"))) <= MAX_LINE_BYTES:
                # A line feed never ends inside a UTF-8 sequence, so decoding the block and
                # splitting it gives what decoding each line does.
                for line in whole.decode("utf-8", "replace").split("\n"):
                    yield line.rstrip("\r")
            else:
                for raw in whole.split(b"\n"):
                    if len(raw) > MAX_LINE_BYTES:
                        stats["lines longer than 64 KiB"] += 1
                        continue
                    yield raw.decode("utf-8", "replace").rstrip("\r")
        if len(pending) > MAX_LINE_BYTES:
            stats["lines longer than 64 KiB"] += 1
            pending, skipping = b"", True
    if pending:
        yield pending.decode("utf-8", "replace").rstrip("\r")


def _lines_reference(data, stats: Counter) -> Iterator[str]:
    """_lines a line at a time (readline), the reference the differential tests hold it to."""
    stream = _stream(data)
    while True:
        raw = stream.readline(MAX_LINE_BYTES + 1)
        if not raw:
            return
        if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
            stats["lines longer than 64 KiB"] += 1
            while raw and not raw.endswith(b"\n"):
                raw = stream.readline(MAX_LINE_BYTES + 1)
            continue
        yield raw.decode("utf-8", "replace").rstrip("\r\n")


def _whole_text(data) -> str:
    """The whole body as text, for the formats that cannot be read line by line (the fetcher
    bounds the body's size)."""
    raw = bytes(data) if isinstance(data, (bytes, bytearray, memoryview)) else data.read()
    return raw.decode("utf-8", "replace")


# ----------------------------------------------------------------------------------------------
# Shapes
# ----------------------------------------------------------------------------------------------

# One compiled shape per common case, so that the usual rows cost a regex match or two and no
# ipaddress object (parsing is most of an update's CPU: every row of every feed, ~1.6M rows).
# Each fast helper has a reference twin below it (the plain rule, slower), which the
# differential tests in tests/test_feeds.py hold it to.
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
# Four octets up to 255 without leading zeros (ipaddress refuses those too: they read as octal
# elsewhere).
_IPV4_EXACT = re.compile(r"%s\.%s\.%s\.%s\Z" % ((_OCTET,) * 4))
_IPV4_CIDR_EXACT = re.compile(r"(%s\.%s\.%s\.%s)/([0-9]|[12][0-9]|3[0-2])\Z" % ((_OCTET,) * 4))
# What an IPv4 address or range can be made of at all; anything else without a ':' is not one.
_IPV4_CHARS = re.compile(r"[0-9./]+\Z")
# A domain name as _domain_reference accepts it, after its strip and lower(): labels of 1 to 63
# printable ASCII characters other than '.', ':' and '\\', at least two labels (the length
# limit and "not digits and dots only" are checked beside it).
_NAME_LABEL = r"[!-\-/-9;-\[\]-~]{1,%d}" % MAX_LABEL_CHARS
_NAME_SHAPE = re.compile(r"(?:%s\.)+%s\Z" % (_NAME_LABEL, _NAME_LABEL))
# What an IPv6 address or range can be made of (a scope id, after '%', is left to ipaddress).
_IPV6_CHARS = re.compile(r"[0-9A-Fa-f:./]+\Z")
# The usual line of a list, taken as it is: an IPv4 address (_IPV4_EXACT) or a lower-case host
# name that is not digits and dots only (what _domain would return unchanged: no dots around
# it, labels of 1 to 63 characters; its length is checked beside it).
_PLAIN_TRAIL = re.compile(r"(?:%s\.%s\.%s\.%s|(?![0-9.]+\Z)(?:[a-z0-9_-]{1,%d}\.)+[a-z0-9_-]{1,%d})\Z"
                          % ((_OCTET,) * 4 + (MAX_LABEL_CHARS, MAX_LABEL_CHARS)))
# Printable ASCII without whitespace: a URL trail's characters in the common (ASCII) case.
_VISIBLE_ASCII = re.compile(r"[!-~]*\Z")


def _address(token: str) -> str | None:
    """`token` as an IPv4/IPv6 address or CIDR range in canonical text, else None."""
    if not token or len(token) > 64 or not token.isascii():
        return None
    if _IPV4_EXACT.match(token):
        return token
    if ":" not in token:
        if not _IPV4_CHARS.match(token):
            return None
        cidr = _IPV4_CIDR_EXACT.match(token)
        if cidr:
            # ip_network(strict=False) keeps the network: the host bits cleared.
            bits = int(cidr.group(2))
            value = int.from_bytes(socket.inet_aton(cidr.group(1)), "big")
            value &= (0xFFFFFFFF << (32 - bits)) & 0xFFFFFFFF
            return "%s/%d" % (socket.inet_ntoa(value.to_bytes(4, "big")), bits)
    elif "%" not in token and (token.count(":") < 2 or not _IPV6_CHARS.match(token)):
        # IPv6 text has at least two colons (three parts) and hex digits, dots and '/' beside
        # them: an address:port or a URL-like token is not an address.
        return None
    return _address_reference(token)


def _address_reference(token: str) -> str | None:
    """_address by ipaddress alone (the reference, and the path for IPv6 and odd forms)."""
    if not token or len(token) > 64 or not token.isascii():
        return None
    try:
        if "/" in token:
            return str(ipaddress.ip_network(token, strict=False))
        return str(ipaddress.ip_address(token))
    except ValueError:
        return None


def _domain(name: str) -> str | None:
    name = name.strip().strip(".").lower()
    if len(name) <= MAX_NAME_CHARS and _NAME_SHAPE.match(name) and not _DIGITS_AND_DOTS.match(name):
        return name
    return None


def _domain_reference(name: str) -> str | None:
    name = name.strip().strip(".").lower()
    if "." not in name or ":" in name or "\\" in name or len(name) > MAX_NAME_CHARS or not is_dns_name(name):
        return None
    # Digits and dots only is an address, and not a valid one (valid ones were taken before).
    return None if _DIGITS_AND_DOTS.match(name) else name


def _host(host: str, address: Callable[[str], str | None] | None = None) -> bool:
    """A URL's host: an address (IPv6 in brackets), a DNS name, or an internationalised name that
    IDNA encodes; any of them with a :port. `address` is the address check (_address)."""
    check = address or _address
    if host.startswith("["):
        inside, _, rest = host[1:].partition("]")
        return check(inside) is not None and (not rest or (rest[0] == ":" and rest[1:].isdigit()))
    name, sep, port = host.rpartition(":") if host.count(":") == 1 else (host, "", "")
    if sep and not (port.isascii() and port.isdigit() and int(port) <= 65535):
        return False
    if check(name):
        return True
    if not name.isascii():
        try:
            name = name.encode("idna").decode("ascii")
        except UnicodeError:
            return False
    return bool(name) and is_dns_name(name) and not _DIGITS_AND_DOTS.match(name)


def _url(text: str) -> str | None:
    """A host/path trail (scheme already removed): a valid host, then a path without whitespace."""
    if not text:
        return None
    if text.isascii():
        # ASCII: one character per byte, and printable without whitespace is one range.
        if len(text) > MAX_KEY_BYTES or not _VISIBLE_ASCII.match(text):
            return None
        return text if _host(text.split("/", 1)[0]) else None
    return _url_reference(text)


def _url_reference(text: str) -> str | None:
    if not text or len(text.encode("utf-8", "surrogateescape")) > MAX_KEY_BYTES:
        return None
    if any(c.isspace() or not c.isprintable() for c in text):
        return None
    return text if _host(text.split("/", 1)[0], _address_reference) else None


def _trail_shape(text: str) -> str | None:
    """Any trail a feed may carry: an address or range, an address:port, a domain, a URL."""
    return _address(text) or _other_shape(text)


def _other_shape(text: str) -> str | None:
    """_trail_shape of a text already known not to be an address."""
    if "/" in text:
        return _url(text)
    host, sep, port = text.rpartition(":")
    if sep and port.isdigit() and int(port) <= 65535 and _address(host.strip("[]")):
        return text
    return _domain(text)


def _trail_shape_reference(text: str) -> str | None:
    """_trail_shape with the reference twins (the differential tests' reference)."""
    address = _address_reference(text)
    if address:
        return address
    if "/" in text:
        return _url_reference(text)
    host, sep, port = text.rpartition(":")
    if sep and port.isdigit() and int(port) <= 65535 and _address_reference(host.strip("[]")):
        return text
    return _domain_reference(text)


def _row(feed: Feed, trail: str, info: str, stats: Counter) -> RawTrail:
    stats["rows"] += 1
    return RawTrail(trail, info, feed.reference, feed.name)


def _strip_comment(line: str) -> str:
    return line.split("#", 1)[0].strip()


def _without_scheme(text: str) -> str:
    return text.split("://", 1)[1] if "://" in text else text


# ----------------------------------------------------------------------------------------------
# The formats
# ----------------------------------------------------------------------------------------------

def parse_ip_lines(feed: Feed, data, stats: Counter, now_s: float | None = None) -> Iterator[RawTrail]:
    """One address (or CIDR range) per line; `#` starts a comment; other fields after the
    address (tab- or space-separated, as bruteforceblocker and dshield have) are ignored."""
    for line in _lines(data, stats):
        text = _strip_comment(line)
        if not text:
            continue
        address = _address(text.split()[0].rstrip(",;"))
        if address is None:
            stats["not an address"] += 1
            continue
        yield _row(feed, address, feed.info, stats)


def parse_ipset(feed: Feed, data, stats: Counter, now_s: float | None = None) -> Iterator[RawTrail]:
    """FireHOL .ipset/.netset: `#` comment lines (the list's name, its sources, its dates), then
    exactly one address or CIDR range per line."""
    for line in _lines(data, stats):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        address = _address(text)
        if address is None:
            stats["not an address"] += 1
            continue
        yield _row(feed, address, feed.info, stats)


def parse_ip_comment(feed: Feed, data, stats: Counter, now_s: float | None = None) -> Iterator[RawTrail]:
    """`IP # reason,...` lines (AlienVault's reputation.generic). A line whose first reason is in
    the feed's `skip_reasons` is left out and counted (AlienVault's "Scanning" listings: too many
    false positives, as Maltrail judged)."""
    skip = {r.lower() for r in feed.option("skip_reasons", ())}
    for line in _lines(data, stats):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        head, _, comment = text.partition("#")
        address = _address(head.strip())
        if address is None:
            stats["not an address"] += 1
            continue
        words = comment.split()
        reason = words[0].rstrip(",;").lower() if words else ""
        if reason in skip:
            stats["left out: reason %s" % reason] += 1
            continue
        yield _row(feed, address, feed.info, stats)


def parse_pipe(feed: Feed, data, stats: Counter, now_s: float | None = None) -> Iterator[RawTrail]:
    """Pipe-separated rows (DataPlane.org: `ASN | AS name | address | last seen | category`);
    option `address_field` is the address's 0-based field."""
    index = feed.option("address_field", 0)
    for line in _lines(data, stats):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        fields = text.split("|")
        if len(fields) <= index:
            stats["rows with too few fields"] += 1
            continue
        address = _address(fields[index].strip())
        if address is None:
            stats["not an address"] += 1
            continue
        yield _row(feed, address, feed.info, stats)


def _panel_trail(url: str) -> str | None:
    """Where a C2 panel lives (viriback, as Maltrail reads it): the URL without its scheme, query
    and fragment, without its last path segment and any /panel or /webpanel part; a bare address
    gets a trailing '/' (a whole-host URL trail). ".xsph.ru.xsph.ru" (a doubling in the feed) is
    undone."""
    if "://" not in url:
        return None
    trail = url.split("://")[-1].split("?")[0].split("#")[0]
    trail = re.sub(r"/[^/]+$", "", trail)
    trail = _PANEL_TAIL.sub("", trail)
    if _ADDRESS_ONLY.match(trail):
        trail += "/"
    return trail.replace(".xsph.ru.xsph.ru", ".xsph.ru")


def parse_csv(feed: Feed, data, stats: Counter, now_s: float | None = None) -> Iterator[RawTrail]:
    """CSV rows, optionally with a per-row label. Options: `trail_column`; `label_column` and
    `label_format` (the label, "%s" its cell; lower-cased when the trail is a URL panel);
    `port_column` (the trail becomes address:port); `date_column` and `max_age_days` (rows whose
    YYYY-MM-DD date is older than that, by `now_s`, are left out); `url_trail` = "panel" (the
    trail is a C2 panel's location, see _panel_trail); `header` (a line starting with it is the
    header). `#` lines are comments."""
    trail_col = feed.option("trail_column", 0)
    label_col = feed.option("label_column")
    label_format = feed.option("label_format", "%s")
    port_col = feed.option("port_column")
    date_col = feed.option("date_column")
    max_age_days = feed.option("max_age_days")
    panel = feed.option("url_trail") == "panel"
    header = (feed.option("header") or "").lower()
    needed = max(c if c >= 0 else -c - 1 for c in (trail_col, label_col, port_col, date_col) if c is not None) + 1

    def content_lines():
        for line in _lines(data, stats):
            text = line.strip()
            if not text or text.startswith("#") or (header and text.lower().startswith(header)):
                continue
            yield text

    try:
        for row in csv.reader(content_lines()):
            if len(row) < needed:
                stats["rows with too few fields"] += 1
                continue
            if panel:
                row = [cell.lower() for cell in row]
            cell = row[trail_col].strip()
            trail = _panel_trail(cell) if panel else cell
            if port_col is not None:
                port = row[port_col].strip()
                if not (port.isascii() and port.isdigit() and int(port) <= 65535) or _address(cell) is None:
                    stats["not an address and port"] += 1
                    continue
                trail = "%s:%d" % (_address(cell), int(port))
            elif trail is not None:
                trail = _trail_shape(trail)
            if trail is None:
                stats["not a trail"] += 1
                continue
            if max_age_days is not None and date_col is not None:
                age = _age_days(row[date_col].strip(), now_s)
                if age is None:
                    stats["no valid date"] += 1
                    continue
                if age >= max_age_days:
                    stats["older than %d days" % max_age_days] += 1
                    continue
            if label_col is not None:
                label = row[label_col].strip()
                if not label or any(not c.isprintable() for c in label):
                    stats["no label"] += 1
                    continue
                info = label_format % label
            else:
                info = feed.info
            yield _row(feed, trail, info, stats)
    except csv.Error:
        # A NUL byte or a field beyond csv's size limit: the rest of the body is not this
        # format; what was read stays, the rest is counted as one failure.
        stats["unreadable CSV"] += 1


def _age_days(text: str, now_s: float | None) -> float | None:
    if now_s is None:
        return 0.0
    try:
        day = datetime.datetime.strptime(text[:10], "%Y-%m-%d").replace(tzinfo=datetime.timezone.utc)
    except ValueError:
        return None
    return (now_s - day.timestamp()) / 86400.0


def parse_urls(feed: Feed, data, stats: Counter, now_s: float | None = None) -> Iterator[RawTrail]:
    """One URL per line; the scheme is dropped (a trail is host/path). Options: `require_scheme`
    (lines without "://" are not URLs), `line_break` (a text that also separates lines, e.g. an
    HTML "<br />"), `skip_containing` (lines holding it are left out), `strip_slash` (trailing '/'
    removed: "http://host/" becomes the domain trail "host"), `also_host` (each URL's host is a
    row too, labelled `address_host_info` when it is an address)."""
    require_scheme = feed.option("require_scheme", False)
    line_break = feed.option("line_break")
    skip = feed.option("skip_containing")
    strip_slash = feed.option("strip_slash", False) or feed.option("also_host", False)
    also_host = feed.option("also_host", False)
    host_info = feed.option("address_host_info") or feed.info
    for line in _lines(data, stats):
        for part in (line.split(line_break) if line_break else (line,)):
            text = part.strip()
            if not text or text.startswith("#"):
                continue
            if skip and skip in text:
                stats["left out: %s" % skip] += 1
                continue
            if "://" not in text and require_scheme:
                stats["not a URL"] += 1
                continue
            text = _without_scheme(text)
            if strip_slash:
                text = text.rstrip("/")
            if "/" not in text:
                trail = _trail_shape(text.split(":")[0] if also_host and text.count(":") == 1 else text)
                if trail is None:
                    stats["not a URL"] += 1
                    continue
                yield _row(feed, trail, host_info if _address(trail) else feed.info, stats)
                continue
            url = _url(text)
            if url is None:
                stats["not a URL"] += 1
                continue
            yield _row(feed, url, feed.info, stats)
            if also_host:
                host = url.split("/", 1)[0]
                host = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
                address = _address(host)
                name = address or _domain(host)
                if name:
                    yield _row(feed, name, host_info if address else feed.info, stats)


def parse_domains(feed: Feed, data, stats: Counter, now_s: float | None = None) -> Iterator[RawTrail]:
    """One domain per line; `#` comments; names in option `exclude` are left out."""
    exclude = set(feed.option("exclude", ()))
    for line in _lines(data, stats):
        text = _strip_comment(line)
        if not text:
            continue
        name = _domain(text.split()[0])
        if name is None:
            stats["not a domain"] += 1
            continue
        if name in exclude:
            stats["left out: excluded name"] += 1
            continue
        yield _row(feed, name, feed.info, stats)


@functools.lru_cache(maxsize=64)
def _pattern(text: str) -> re.Pattern:
    return re.compile(text)


def parse_html(feed: Feed, data, stats: Counter, now_s: float | None = None) -> Iterator[RawTrail]:
    """Trails scraped from an HTML page: every match of the feed's `pattern` (its group "trail";
    an optional group "label" gives the row's label). The patterns are ours and bounded, so a
    hostile page costs linear time."""
    pattern = _pattern(feed.option("pattern"))
    text = _whole_text(data)
    for match in pattern.finditer(text):
        trail = _trail_shape(match.group("trail").strip())
        if trail is None:
            stats["not a trail"] += 1
            continue
        label = match.groupdict().get("label")
        yield _row(feed, trail, label.strip() if label else feed.info, stats)


def _unescape_content(text: str) -> str:
    """A Suricata content string with its |hex| runs decoded: printable bytes as themselves,
    the rest (DNS label lengths) as '.'."""
    def one(match: re.Match) -> str:
        try:
            raw = binascii.unhexlify(match.group(1).replace(" ", ""))
        except (binascii.Error, ValueError):
            return "\ufffd"
        return "".join(chr(b) if 0x21 <= b <= 0x7e else "." for b in raw)
    return _HEX_RUN.sub(one, text)


def parse_suricata(feed: Feed, data, stats: Counter, now_s: float | None = None) -> Iterator[RawTrail]:
    """Suricata rules, by option `mode`: "addresses" (every IPv4 address in a rule), "domains"
    (the dns.query / tls.sni content of the rules whose text matches `msg_pattern`), "ipport"
    (abuse.ch SSLBL: `any -> [IP] PORT (msg:"... likely FAMILY C&C"` as IP:PORT, labelled
    "<family> (malware)", "generic" for the family "malware"). Commented-out rules are not read."""
    mode = feed.option("mode")
    msg = _pattern(feed.option("msg_pattern")) if feed.option("msg_pattern") else None
    for line in _lines(data, stats):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        if mode == "addresses":
            found = False
            for match in _IPV4_IN_TEXT.finditer(text):
                address = _address(match.group(1))
                if address is None:
                    stats["not an address"] += 1
                    continue
                found = True
                yield _row(feed, address, feed.info, stats)
            if not found:
                stats["rules without an address"] += 1
        elif mode == "domains":
            if msg is not None and not msg.search(text):
                continue
            for match in _SURICATA_NAME.finditer(text):
                name = _domain(_unescape_content(match.group(1)).split("//")[-1])
                if name is None:
                    stats["not a domain"] += 1
                    continue
                yield _row(feed, name, feed.info, stats)
        elif mode == "ipport":
            match = _SSLBL_RULE.search(text)
            address = _address(match.group(1)) if match else None
            if match is None or address is None or int(match.group(2)) > 65535:
                stats["rules without an address and port"] += 1
                continue
            family = match.group(3).strip().lower()
            if not family or any(not c.isprintable() for c in family):
                stats["no label"] += 1
                continue
            info = "%s (malware)" % (family if family != "malware" else "generic")
            yield _row(feed, "%s:%s" % (address, int(match.group(2))), info, stats)


def parse_htaccess(feed: Feed, data, stats: Counter, now_s: float | None = None) -> Iterator[RawTrail]:
    """An Apache .htaccess block list: the address or range of every `deny from` line."""
    for line in _lines(data, stats):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        match = _DENY_FROM.search(text)
        if match is None:
            continue
        address = _address(match.group(1))
        if address is None:
            stats["not an address"] += 1
            continue
        yield _row(feed, address, feed.info, stats)


def parse_json_tor(feed: Feed, data, stats: Counter, now_s: float | None = None) -> Iterator[RawTrail]:
    """Tor relays in Onionoo's details document: `{"relays": [{"or_addresses": ["ip:port",
    "[ipv6]:port"], "exit_addresses": ["ip"]}, ...]}`. Each relay's exit addresses and the
    addresses of its OR ports, each address once."""
    try:
        doc = json.loads(_whole_text(data))
    except (ValueError, RecursionError):
        stats["not JSON"] += 1
        return
    relays = doc.get("relays") if isinstance(doc, dict) else None
    if not isinstance(relays, list):
        stats["no relays list"] += 1
        return
    seen = set()
    for relay in relays:
        if not isinstance(relay, dict):
            stats["relays that are not objects"] += 1
            continue
        texts = []
        for key in ("exit_addresses", "or_addresses"):
            values = relay.get(key) or []
            if isinstance(values, list):
                texts.extend(v for v in values if isinstance(v, str))
        found = False
        for text in texts:
            if text.startswith("["):
                text = text[1:].split("]", 1)[0]
            elif text.count(":") == 1:
                text = text.split(":", 1)[0]
            address = _address(text)
            if address is None or "/" in address:
                stats["not an address"] += 1
                continue
            found = True
            if address not in seen:
                seen.add(address)
                yield _row(feed, address, feed.info, stats)
        if not found:
            stats["relays without an address"] += 1


def parse_sslbl_cert(feed: Feed, data, stats: Counter, now_s: float | None = None) -> Iterator[RawTrail]:
    """abuse.ch's SSL certificate blacklist: `Listingdate,SHA1,Listingreason` rows. The trail is
    "sha1:<40 lower-case hex>", the label "<family> c2 certificate (suspicious)" (the reason
    without its "C&C" / "malware distribution" tail, lower-cased; "unknown" when empty)."""
    for line in _lines(data, stats):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        parts = text.split(",")
        if len(parts) < 3:
            stats["rows with too few fields"] += 1
            continue
        fingerprint = parts[1].strip().lower()
        if not _SHA1.match(fingerprint):
            stats["not a SHA-1 fingerprint"] += 1
            continue
        family = _CERT_REASON_TAIL.sub("", ",".join(parts[2:]).strip()).strip().lower() or "unknown"
        if any(not c.isprintable() for c in family):
            stats["no label"] += 1
            continue
        yield _row(feed, "sha1:" + fingerprint, "%s c2 certificate (suspicious)" % family, stats)


def parse_custom(feed: Feed, data, stats: Counter, now_s: float | None = None) -> Iterator[RawTrail]:
    """A remote custom list (Maltrail's CUSTOM_TRAILS_URL): one trail per line, `#` comments,
    the scheme dropped, trailing '/' dropped, surrounding dots dropped from names. A CIDR range
    is a range trail (Maltrail expands ranges of up to 1024 addresses instead)."""
    # The rules of _parse_custom_reference, in the order that costs least for the usual line
    # (an address or a name): each shape tried once, the row made inline.
    info, reference, origin = feed.info, feed.reference, feed.name
    plain = _PLAIN_TRAIL.match
    rows = bad = 0
    try:
        for line in _lines(data, stats):
            text = line.strip()
            if not text or text[0] == "#":
                continue
            if len(text) <= MAX_NAME_CHARS and plain(text):
                rows += 1
                yield RawTrail(text, info, reference, origin)
                continue
            if "#" in text:
                text = _COMMENT_TAIL.sub("", text)
            if "://" in text:
                text = text.split("://", 1)[1]
            text = text.rstrip("/")
            if "/" in text:
                trail = _trail_shape(text)
            else:
                trail = _address(text)
                if trail is None:
                    name = text.strip(".")
                    if name == text:
                        trail = _other_shape(text)
                    else:
                        trail = _trail_shape(name) if name else None
            if trail is None:
                bad += 1
                continue
            rows += 1
            yield RawTrail(trail, info, reference, origin)
    finally:
        # Counted as the rows went (a consumer that stops early sees what it took).
        stats["rows"] += rows
        if bad:
            stats["not a trail"] += bad


def _parse_custom_reference(feed: Feed, data, stats: Counter, now_s: float | None = None) -> Iterator[RawTrail]:
    """parse_custom as the rules say it, one step per rule (the differential tests' reference)."""
    for line in _lines(data, stats):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        text = re.sub(r"\s*#.*", "", text)
        text = _without_scheme(text).rstrip("/")
        if "/" not in text and _address_reference(text) is None:
            text = text.strip(".")
        trail = _trail_shape_reference(text) if text else None
        if trail is None:
            stats["not a trail"] += 1
            continue
        yield _row(feed, trail, feed.info, stats)


Parser = Callable[..., Iterator[RawTrail]]

PARSERS: dict[str, Parser] = {
    "ip_lines": parse_ip_lines,
    "ipset": parse_ipset,
    "ip_comment": parse_ip_comment,
    "pipe": parse_pipe,
    "csv": parse_csv,
    "urls": parse_urls,
    "domains": parse_domains,
    "html": parse_html,
    "suricata": parse_suricata,
    "htaccess": parse_htaccess,
    "json_tor": parse_json_tor,
    "sslbl_cert": parse_sslbl_cert,
    "custom": parse_custom,
}


def parse(feed: Feed, data, stats: Counter | None = None, now_s: float | None = None) -> Iterator[RawTrail]:
    """The rows of `feed`'s body (bytes or a binary stream), by its format. `stats` counts rows
    ("rows") and what was skipped, by reason; `now_s` (epoch seconds) is the time age limits are
    judged at (none applied when None)."""
    return PARSERS[feed.format](feed, data, stats if stats is not None else Counter(), now_s)
