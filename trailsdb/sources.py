"""Reading trail sources in Maltrail's formats.

Owns the readers: Maltrail's trails.csv (`trail,info,reference`, Python csv dialect, optionally
zstd- or gzip-compressed), directories of Maltrail-format static trail files (`*.txt`, one trail
per line, `#` comments, the info taken from the file name and the category directory it sits
in, reference "(static)"), a custom trails directory (info from the file name, reference
"(custom)") and a whitelist file (domains, IP addresses and CIDR ranges). Each reader yields raw
rows and counts what it skipped; nothing here normalises or merges.

Must not know about the compiled format or matching.
"""

from __future__ import annotations

import csv
import gzip
import io
import ipaddress
import os
import re
import zlib
from collections import Counter
from typing import Iterable, Iterator, NamedTuple

import zstandard

from matchers.domains import listed_with_parents

# The category directories whose name Maltrail appends to a static file's info ("... (malware)").
CATEGORIES = ("malware", "malicious", "suspicious")


class RawTrail(NamedTuple):
    trail: str
    info: str
    reference: str
    origin: str          # "file:line", for error messages and `trails check`


# What kind of source a row came from; the merge rules depend on it (trailsdb/merge.py): a feed's
# addresses need agreement ([all] ip_minimum_feeds) and may not be bogon or CDN addresses, what a
# file or the custom directory lists is always kept.
FEED = "feed"        # a public feed (trailsdb/feeds/)
FILE = "file"        # a trails.csv, a static trail tree or a .txt file (--source, [all] trail_sources)
CUSTOM = "custom"    # the custom trails directory ([all] custom_trails_dir)
SOURCE_KINDS = (FEED, FILE, CUSTOM)


class Source(NamedTuple):
    """One source of a build: its name (a feed's name, a file's path; what provenance and
    `trails stats` call it, and how a later build recognises it), its kind, and its rows (read
    lazily, once)."""
    name: str
    kind: str
    rows: Iterable[RawTrail]


class SourceError(Exception):
    """A source that cannot be read at all; the message names it."""


class _ZstdFrames(io.RawIOBase):
    """Decompresses every zstd frame of a file and refuses a file that ends inside a frame.

    python-zstandard's stream reader returns a truncated frame's bytes as if the file had ended
    normally; a trail file cut short must be an error, not a silently smaller trail set.
    """

    CHUNK = 1 << 20

    def __init__(self, raw):
        self._raw = raw
        self._dctx = zstandard.ZstdDecompressor()
        self._obj = None
        self._pending = memoryview(b"")
        self._pos = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while self._pos >= len(self._pending):
            data = self._raw.read(self.CHUNK)
            if not data:
                if self._obj is not None and not self._obj.eof:
                    raise zstandard.ZstdError("the file ends inside a zstd frame (truncated)")
                return 0
            out = []
            while data:
                if self._obj is None or self._obj.eof:
                    self._obj = self._dctx.decompressobj()
                out.append(self._obj.decompress(data))
                data = self._obj.unused_data if self._obj.eof else b""
            self._pending, self._pos = memoryview(b"".join(out)), 0
        # Handed out from a position, never by cutting the front off: one chunk decompresses to
        # megabytes and the reader asks for 8 KiB at a time, so re-slicing the rest each time
        # copied it over and over (half the time of reading the shared 1.6M-row set).
        n = min(len(buffer), len(self._pending) - self._pos)
        buffer[:n] = self._pending[self._pos:self._pos + n]
        self._pos += n
        return n

    def close(self) -> None:
        self._raw.close()
        super().close()


def _open_text(path: str):
    """Text handle for a plain, .gz or .zst file."""
    raw = open(path, "rb")
    head = raw.read(4)
    raw.seek(0)
    if head[:2] == b"\x1f\x8b":
        stream = gzip.GzipFile(fileobj=raw)
    elif head == b"\x28\xb5\x2f\xfd":
        stream = io.BufferedReader(_ZstdFrames(raw))
    else:
        stream = raw
    return io.TextIOWrapper(stream, encoding="utf-8", errors="replace", newline="")


def read_trails_csv(path: str, stats: Counter) -> Iterator[RawTrail]:
    """Maltrail's trails.csv: rows of exactly three fields; others are counted and skipped."""
    name = os.path.basename(path)
    try:
        handle = _open_text(path)
    except OSError as exc:
        raise SourceError("%s: cannot read trails file: %s" % (path, exc.strerror or exc)) from None
    with handle:
        try:
            for lineno, row in enumerate(csv.reader(handle, delimiter=",", quotechar='"'), 1):
                if len(row) != 3:
                    if row:
                        stats["csv rows without 3 fields"] += 1
                    continue
                stats["rows read"] += 1
                yield RawTrail(row[0], row[1], row[2], "%s:%d" % (name, lineno))
        except (csv.Error, zstandard.ZstdError, zlib.error, EOFError, OSError) as exc:
            raise SourceError("%s: unreadable trails file: %s" % (path, exc)) from None


def _text_lines(path: str, what: str = "") -> list[str]:
    """The lines of a small text file (a trail file, a list, a whitelist), undecodable bytes
    replaced; SourceError naming the file when it cannot be read."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise SourceError("%s: cannot read%s: %s" % (path, " " + what if what else "", exc.strerror or exc)) from None
    return data.decode("utf-8", "replace").splitlines()


def _clean_line(line: str) -> str | None:
    """A static/custom trail line without comments; None for blank and comment lines."""
    line = line.strip()
    if not line or line.startswith("#"):
        return None
    line = re.sub(r"\s*#.*", "", line)
    return line or None


def read_static_file(path: str, info: str, reference: str, stats: Counter,
                     custom: bool = False) -> Iterator[RawTrail]:
    """One Maltrail trail file, with Maltrail's line rules. Static files: a URL loses its scheme
    and a bare host taken from a URL gets a trailing '/' (a whole-host URL trail); a URL keeps its
    trailing '/' unless it has more than one '/'. Custom files (Maltrail's custom parser): the
    scheme goes and trailing '/' always goes. Non-URL lines lose surrounding dots."""
    name = os.path.basename(path)
    for lineno, raw in enumerate(_text_lines(path), 1):
        line = _clean_line(raw)
        if line is None:
            continue
        if "://" in line:
            line = line.split("://", 1)[1]
            if "/" not in line and not custom:
                line += "/"
        if custom:
            line = line.rstrip("/")
        if "/" in line:
            if line.count("/") > 1:
                line = line.rstrip("/")
        elif not re.match(r"\A\d+\.\d+\.\d+\.\d+\Z", line):
            line = line.strip(".")
        if not line:
            continue
        stats["rows read"] += 1
        yield RawTrail(line, info, reference, "%s:%d" % (name, lineno))


def _info_from_filename(path: str) -> str:
    return os.path.splitext(os.path.basename(path))[0].replace("_", " ")


def read_static_tree(root: str, stats: Counter) -> Iterator[RawTrail]:
    """A Maltrail static trail tree: *.txt files in `root` and its subdirectories; files in a
    directory named malware/malicious/suspicious get that category appended to their info.
    Files are read in sorted order so the same tree always yields the same labels."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        category = os.path.basename(dirpath)
        for filename in sorted(filenames):
            if not filename.endswith(".txt"):
                continue
            info = _info_from_filename(filename)
            if category in CATEGORIES and os.path.normpath(dirpath) != os.path.normpath(root):
                info = "%s (%s)" % (info, category)
            yield from read_static_file(os.path.join(dirpath, filename), info, "(static)", stats)


def read_custom_dir(root: str, stats: Counter) -> Iterator[RawTrail]:
    """Maltrail's CUSTOM_TRAILS_DIR: *.txt files, info from the file name, reference (custom)."""
    if not os.path.isdir(root):
        raise SourceError("%s: custom trails directory does not exist" % root)
    for filename in sorted(os.listdir(root)):
        if filename.endswith(".txt"):
            yield from read_static_file(os.path.join(root, filename), _info_from_filename(filename),
                                        "(custom)", stats, custom=True)


# Maltrail's suspicious user-agent list (misc/ua.txt): regular expressions its sensor joins into
# one case-insensitive alternation; a line holding " (compatible" is taken literally, and so is
# one that does not compile. Its events read "user agent (suspicious)", "(heuristic)".
UA_LIST_NAME = "ua.txt"
UA_LIST_INFO = "user agent (suspicious)"
UA_LIST_REFERENCE = "(heuristic)"
_REGEX_SPECIALS = re.compile(r"[.^$*+?{}\[\]\\|()]")


def ua_list_trail(line: str) -> str:
    """One misc/ua.txt line as a trail: `ua:TEXT` where Maltrail's sensor would match it as plain
    text, `ua-re:PATTERN` where it is a regular expression."""
    literal = " (compatible" in line
    if not literal:
        try:
            re.compile(line)
        except (re.error, RecursionError, OverflowError):
            literal = True
    if literal or not _REGEX_SPECIALS.search(line):
        return "ua:" + line
    return "ua-re:" + line


def read_ua_list(path: str, stats: Counter) -> Iterator[RawTrail]:
    """Maltrail's misc/ua.txt as user-agent trails (see ua_list_trail)."""
    name = os.path.basename(path)
    for lineno, raw in enumerate(_text_lines(path), 1):
        line = raw.strip()  # a '#' inside a pattern is part of it: only whole comment lines go
        if not line or line.startswith("#"):
            continue
        stats["rows read"] += 1
        yield RawTrail(ua_list_trail(line), UA_LIST_INFO, UA_LIST_REFERENCE, "%s:%d" % (name, lineno))


def maltrail_checkout(path: str) -> tuple[str, str] | None:
    """(static trail tree, misc/ua.txt or "") when `path` is a Maltrail checkout, its trails/ or
    its trails/static/ directory; None for any other directory."""
    path = os.path.abspath(path)
    for root, static in ((path, os.path.join(path, "trails", "static")),
                         (os.path.dirname(path), os.path.join(path, "static")),
                         (os.path.dirname(os.path.dirname(path)), path)):
        if (os.path.isdir(static) and os.path.normpath(static).endswith(os.path.join("trails", "static"))
                and os.path.isdir(os.path.join(root, "misc"))):
            ua = os.path.join(root, "misc", UA_LIST_NAME)
            return static, ua if os.path.isfile(ua) else ""
    return None


def read_source(path: str, stats: Counter) -> Iterator[RawTrail]:
    """Dispatch on what `path` is: a Maltrail checkout (its static tree and its user-agent
    list), another directory (a static tree), misc/ua.txt, a .txt file, or a trails.csv."""
    if os.path.isdir(path):
        checkout = maltrail_checkout(path)
        if checkout is None:
            yield from read_static_tree(path, stats)
        else:
            yield from read_static_tree(checkout[0], stats)
            if checkout[1]:
                yield from read_ua_list(checkout[1], stats)
    elif not os.path.exists(path):
        raise SourceError("%s: trail source does not exist" % path)
    elif os.path.basename(path) == UA_LIST_NAME:
        yield from read_ua_list(path, stats)
    elif path.endswith(".txt"):
        yield from read_static_file(path, _info_from_filename(path), "(static)", stats)
    else:
        yield from read_trails_csv(path, stats)


def path_source(path: str, stats: Counter) -> Source:
    """A trails.csv, static trail tree or .txt file as a build source, named by its absolute path
    (the same file given as a relative path later is still the same source)."""
    return Source(os.path.abspath(path), FILE, read_source(path, stats))


def custom_source(root: str, stats: Counter) -> Source:
    """The custom trails directory as a build source."""
    return Source(os.path.abspath(root), CUSTOM, read_custom_dir(root, stats))


class Whitelist(NamedTuple):
    domains: frozenset
    ips: frozenset          # ipaddress objects
    networks: tuple         # ipaddress networks

    def domain_listed(self, name: str) -> bool:
        """The name or one of its parents is whitelisted (Maltrail's check)."""
        return listed_with_parents(name, self.domains)

    def ip_listed(self, addr) -> bool:
        return addr in self.ips or any(addr in net for net in self.networks if net.version == addr.version)


EMPTY_WHITELIST = Whitelist(frozenset(), frozenset(), ())


def read_whitelist(path: str) -> Whitelist:
    """One entry per line: a domain (covers its subdomains), an IP address or a CIDR range."""
    if not path:
        return EMPTY_WHITELIST
    lines = _text_lines(path, "whitelist")
    domains, ips, nets = set(), set(), []
    for lineno, raw in enumerate(lines, 1):
        line = _clean_line(raw)
        if line is None:
            continue
        entry = line.lower()
        try:
            if "/" in entry:
                nets.append(ipaddress.ip_network(entry, strict=False))
                continue
            ips.add(ipaddress.ip_address(entry))
            continue
        except ValueError:
            pass
        name = entry.strip(".")
        if name.startswith("www."):
            name = name[4:]
        if not re.match(r"\A[a-z0-9_-]+(\.[a-z0-9_-]+)*\Z", name):
            raise SourceError("%s:%d: whitelist entry %r is neither a domain, an IP address nor a "
                              "CIDR range" % (path, lineno, line))
        domains.add(name)
    return Whitelist(frozenset(domains), frozenset(ips), tuple(nets))
