"""One update of the feeds: fetch each enabled feed, judge the body, keep or refuse it, and hand
out every feed's rows with its status.

Owns the rules that decide whether a fetched body replaces the feed's last good copy. A body is
refused, and the last good copy stays in use, when the fetch failed (connection, timeout, an HTTP
error, over the size cap), when it is truncated, when it is binary (a NUL byte, or mostly
undecodable text), when it is an HTML page where the feed is not one (an error page served with
status 200), when the feed's marker is missing (not the feed), when it holds no trail at all, and
when it holds less than half the rows of the last good copy (a list cut short must not shrink
detection; `force` accepts it). Each refusal is reported with its reason, and recorded in the
status file (trailsdb/feeds/store.py) with the time of the last success and the last failure.
Offline (no fetch at all), every feed's last good copy is used, and one line says so.

A body is parsed once: the parse that judges it (its rows counted for the rules above) also
writes its rows to an unnamed file in the state directory (ParsedRows), and the build reads those
back. So the rows built are exactly the rows judged, and parsing, most of an update's CPU, is not
paid twice. A feed whose copy was not replaced now (unchanged, kept, offline) is parsed from its
stored copy as the build reads it.

Must not merge rows across feeds, normalise trails or build the artifact: it hands each feed's
rows, as parsed, to the caller (trailsdb/feeds/__init__.py says how).
"""

from __future__ import annotations

import io
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import BinaryIO, Callable, Iterable, Iterator

from trailsdb.feeds.catalog import FEEDS, Feed, custom_url_feeds, feed_names
from trailsdb.feeds.fetch import FetchSettings, fetch
from trailsdb.feeds.parsers import parse
from trailsdb.feeds.store import FeedStore
from trailsdb.sources import RawTrail

# A body whose first bytes hold this share of undecodable UTF-8 is not a text feed.
BINARY_SNIFF_BYTES = 64 * 1024
BINARY_MAX_BAD_SHARE = 0.05
# The fraction of its last good row count below which a new body is refused (compile.py's
# REPLACE_MIN_FRACTION is the same rule for a whole artifact).
SHRINK_MIN_FRACTION = 0.5
_HTML_STARTS = (b"<!doctype html", b"<html", b"<head", b"<body", b"<title")

Log = Callable[[str, str], None]


def stderr_log(level: str, text: str) -> None:
    """The project's process line: "[i]|[!] YYYY-mm-dd HH:MM:SS text" on stderr."""
    sys.stderr.write("[%s] %s %s\n" % (level, time.strftime("%Y-%m-%d %H:%M:%S"), text))
    sys.stderr.flush()


@dataclass
class FeedStatus:
    """How one feed stands after an update (the record status.json keeps)."""

    name: str
    url: str
    state: str                      # fresh, unchanged, kept, missing, offline
    reason: str | None = None
    rows: int = 0
    bytes: int = 0
    last_attempt: float | None = None
    last_success: float | None = None
    last_failure: float | None = None
    last_failure_reason: str | None = None
    skipped: dict = field(default_factory=dict)
    etag: str = ""
    last_modified: str = ""
    route: str = ""

    def record(self) -> dict:
        return {"url": self.url, "state": self.state, "reason": self.reason, "rows": self.rows,
                "bytes": self.bytes, "last_attempt": self.last_attempt, "last_success": self.last_success,
                "last_failure": self.last_failure, "last_failure_reason": self.last_failure_reason,
                "skipped": self.skipped, "etag": self.etag, "last_modified": self.last_modified}

    @property
    def has_copy(self) -> bool:
        return self.state in ("fresh", "unchanged", "kept", "offline") and self.bytes > 0


@dataclass
class FeedResult:
    """One feed's outcome: its entry, its status, and its rows (from the body accepted now or
    the last good copy; none when there is neither)."""

    feed: Feed
    status: FeedStatus
    _store_path: str
    _now_s: float | None
    _parsed: "ParsedRows | None" = None

    def rows(self, stats: Counter | None = None) -> Iterator[RawTrail]:
        """The feed's rows (call again for another pass; each pass reads its file anew). A body
        accepted in this update was parsed once, to judge it, and its rows kept (ParsedRows):
        they are read back instead of parsing it again. Otherwise the stored body is parsed as
        it is read."""
        if not self.status.has_copy:
            return
        if self._parsed is not None:
            yield from self._parsed.rows(self.feed, stats)
            return
        with FeedStore(self._store_path, create=False) as store:
            handle = store.open_body(self.feed.name)
        if handle is None:
            return
        with handle:
            yield from parse(self.feed, handle, stats if stats is not None else Counter(), self._now_s)


class ParsedRows:
    """The rows a body was parsed to, as the judging parse made them, in an unnamed file in the
    state directory (removed from it at once; gone when closed): parsing is most of an update's
    CPU, so the build reads these back rather than parse the body a second time (read back,
    a row costs a fraction of its parse). One line a row: the trail, then a tab and the info
    when it is not the feed's own. Holds nothing in memory but a write buffer."""

    def __init__(self, handle: BinaryIO):
        self._handle = handle
        self._text = io.TextIOWrapper(handle, encoding="utf-8", errors="surrogateescape", newline="\n",
                                      write_through=False)
        self.stats: Counter = Counter()
        self.usable = True

    def add(self, row: RawTrail, default_info: str) -> None:
        if not self.usable:
            return
        line = row.trail + "\n" if row.info == default_info else row.trail + "\t" + row.info + "\n"
        if line.count("\n") != 1 or line.count("\t") > (row.info != default_info):
            # A tab or line end inside a trail or a label (a scraped page's label could hold
            # one): the line form cannot carry it, so this body is parsed again instead.
            self.usable = False
            return
        self._text.write(line)

    def finish(self, stats: Counter) -> None:
        self._text.flush()
        self.stats = Counter(stats)

    def rows(self, feed: Feed, stats: Counter | None) -> Iterator[RawTrail]:
        info, reference, origin = feed.info, feed.reference, feed.name
        self._text.seek(0)
        for line in self._text:
            trail, tab, label = line[:-1].partition("\t")
            yield RawTrail(trail, label if tab else info, reference, origin)
        if stats is not None:
            stats.update(self.stats)

    def close(self) -> None:
        self._text.close()


@dataclass
class _Outcome:
    """What a worker thread brings back for one feed."""

    feed: Feed
    accepted: bool = False
    not_modified: bool = False
    reason: str | None = None
    part: str = ""
    handle: BinaryIO | None = None
    rows: int = 0
    bytes: int = 0
    skipped: Counter = field(default_factory=Counter)
    etag: str = ""
    last_modified: str = ""
    url: str = ""
    route: str = ""
    connection_failed: bool = False
    last_rows: int = 0               # rows of the last good copy (counted again without a record)
    parsed: ParsedRows | None = None  # the accepted body's rows, as judged


def enabled_feeds(disabled: Iterable[str] | None, custom_urls: Iterable[str] = (),
                  feeds: Iterable[Feed] = FEEDS) -> tuple[list[Feed], list[str]]:
    """(the feeds an update fetches, the names in `disabled` that name no feed). `disabled`
    None means Maltrail's default (the feeds it ships disabled); a list replaces that default,
    as DISABLED_FEEDS does. A name disables a feed, or every feed of a group."""
    feeds = list(feeds)
    if disabled is None:
        off = {f.name for f in feeds if not f.enabled}
        unknown = []
    else:
        off = {name.strip().lower() for name in disabled if name.strip()}
        unknown = sorted(off - feed_names() - {f.name for f in feeds})
    chosen = [f for f in feeds if not off.intersection(f.names())]
    return chosen + custom_url_feeds(custom_urls), unknown


def _sniff(handle: BinaryIO) -> str | None:
    """Why the body is not a text feed at all, or None."""
    handle.seek(0)
    head = handle.read(BINARY_SNIFF_BYTES)
    if b"\0" in head:
        return "binary content (NUL bytes), not a text feed"
    text = head.decode("utf-8", "replace")
    if len(head) >= 64 and text.count("\ufffd") > BINARY_MAX_BAD_SHARE * len(text):
        return "binary content (mostly not UTF-8 text), not a text feed"
    return None


def _looks_like_html(handle: BinaryIO) -> bool:
    handle.seek(0)
    head = handle.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if head.startswith(b"<?xml"):
        head = head[head.find(b"?>") + 2:].lstrip() if b"?>" in head else head
    return head.startswith(_HTML_STARTS)


def _has_marker(handle: BinaryIO, marker: str) -> bool:
    """`marker` anywhere in the body, read in chunks that overlap by the marker's length."""
    needle = marker.encode("utf-8")
    handle.seek(0)
    tail = b""
    while True:
        chunk = handle.read(1024 * 1024)
        if not chunk:
            return False
        if needle in tail + chunk:
            return True
        tail = chunk[-(len(needle) - 1):] if len(needle) > 1 else b""


def _judge(feed: Feed, handle: BinaryIO, last_rows: int, force: bool, now_s: float,
           parsed: ParsedRows | None = None) -> tuple[str | None, int, Counter]:
    """(why the body is refused or None, its rows, what its parser skipped). Each row parsed is
    also added to `parsed` when one is given (the rows the build reads back)."""
    size = handle.seek(0, 2)
    if size == 0:
        return "the body is empty", 0, Counter()
    problem = _sniff(handle)
    if problem:
        return problem, 0, Counter()
    if feed.format != "html" and not feed.option("line_break") and _looks_like_html(handle):
        return "an HTML page, not the feed (an error page served with status 200?)", 0, Counter()
    if feed.marker and not _has_marker(handle, feed.marker):
        return "the marker %r is missing: the page is not the feed" % feed.marker, 0, Counter()
    stats: Counter = Counter()
    handle.seek(0)
    rows = 0
    if parsed is None:
        for _ in parse(feed, handle, stats, now_s):
            rows += 1
    else:
        add, info = parsed.add, feed.info
        for row in parse(feed, handle, stats, now_s):
            rows += 1
            add(row, info)
        parsed.finish(stats)
    skipped = Counter({k: v for k, v in stats.items() if k != "rows"})
    if rows == 0:
        detail = ", ".join("%d %s" % (n, reason) for reason, n in skipped.most_common(3))
        return "no trails in it%s" % (" (%s)" % detail if detail else ""), 0, skipped
    if not force and last_rows and rows < SHRINK_MIN_FRACTION * last_rows:
        return ("it shrank to %d rows from %d (less than half of the last good copy)" % (rows, last_rows),
                rows, skipped)
    return None, rows, skipped


def _parsed_rows(store: FeedStore, feed: Feed) -> ParsedRows:
    """A new ParsedRows in an unnamed file of the state directory (created as a download part,
    exclusively and without following links, then unlinked at once: a crash leaves nothing)."""
    handle, part = store.new_part(feed.name)
    store.discard(part)
    return ParsedRows(handle)


def _validators(record: dict | None, url: str, have_copy: bool) -> dict:
    """Conditional GET headers: only for the URL the last good copy came from, and only while
    that copy is there (a 304 for a copy we no longer hold would leave the feed empty)."""
    if not record or not have_copy or record.get("url") != url:
        return {}
    out = {}
    if record.get("etag"):
        out["If-None-Match"] = record["etag"]
    if record.get("last_modified"):
        out["If-Modified-Since"] = record["last_modified"]
    return out


def _update_one(store: FeedStore, feed: Feed, record: dict | None, settings: FetchSettings,
                force: bool, now_s: float, sleep, keep_parsed: bool = True) -> _Outcome:
    have_copy = store.body_size(feed.name) is not None
    last_rows = int((record or {}).get("rows") or 0) if have_copy else 0
    if have_copy and not last_rows and record is None:
        # No status record (a damaged status file): count the last good copy's rows again.
        handle = store.open_body(feed.name)
        if handle is not None:
            with handle:
                last_rows = sum(1 for _ in parse(feed, handle, Counter(), now_s))
    outcome = _Outcome(feed, last_rows=last_rows)
    reasons = []
    connection_failed = True
    for url in filter(None, (feed.url, feed.backup_url)):
        handle, part = store.new_part(feed.name)
        result = fetch(url, handle, settings, _validators(record, url, have_copy), feed.max_bytes, sleep=sleep)
        outcome.route = result.route
        connection_failed = connection_failed and result.connection_failed
        if result.not_modified:
            handle.close()
            store.discard(part)
            outcome.not_modified, outcome.url = True, url
            return outcome
        if not result.ok:
            handle.close()
            store.discard(part)
            reasons.append(result.reason if not feed.backup_url else "%s: %s" % (url, result.reason))
            continue
        parsed = _parsed_rows(store, feed) if keep_parsed else None
        reason, rows, skipped = _judge(feed, handle, last_rows, force, now_s, parsed)
        outcome.skipped = skipped
        if reason:
            handle.close()
            store.discard(part)
            if parsed is not None:
                parsed.close()
            reasons.append(reason if not feed.backup_url else "%s: %s" % (url, reason))
            connection_failed = False
            continue
        outcome.accepted, outcome.part, outcome.handle = True, part, handle
        if parsed is not None and parsed.usable:
            outcome.parsed = parsed
        elif parsed is not None:
            parsed.close()
        outcome.rows, outcome.bytes, outcome.url = rows, result.bytes, url
        outcome.etag, outcome.last_modified = result.etag, result.last_modified
        return outcome
    outcome.reason = "; ".join(reasons)
    outcome.connection_failed = connection_failed
    return outcome


def _age(seconds: float | None, now_s: float) -> str:
    if not seconds:
        return "an unknown time"
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(seconds))


def refresh(feeds_dir: str, settings: FetchSettings = FetchSettings(), *, disabled: Iterable[str] | None = None,
            custom_urls: Iterable[str] = (), offline: bool = False, force: bool = False,
            log: Log = stderr_log, now: Callable[[], float] = time.time,
            sleep: Callable[[float], None] = time.sleep, feeds: Iterable[Feed] = FEEDS,
            keep_parsed: bool = True) -> list[FeedResult]:
    """Update every enabled feed in the state directory `feeds_dir` (created if missing) and
    return one FeedResult per enabled feed, in catalog order (custom URLs last). See the
    package docstring (trailsdb/feeds/__init__.py) for the whole contract. `keep_parsed`: a
    body accepted now hands out the rows its judging parse made (ParsedRows) rather than be
    parsed again from its stored copy (False: parsed again, the reference path)."""
    chosen, unknown = enabled_feeds(disabled, custom_urls, feeds)
    if unknown:
        log("!", "disabled_feeds names no feed: %s (known: see COMPATIBILITY.md, Trail feeds)" % ", ".join(unknown))
    now_s = now()
    results: list[FeedResult] = []
    with FeedStore(feeds_dir) as store:
        store.lock()
        records, problem = store.read_status()
        if problem:
            log("!", problem)
        if offline:
            with_copy = sum(1 for f in chosen if store.body_size(f.name))
            log("i", "offline: no feed is fetched; the trails are the static and custom ones plus the last good "
                     "copy of each feed (%d of %d enabled feeds have one, in %s)" % (with_copy, len(chosen), store.path))
            for feed in chosen:
                record = dict(records.get(feed.name) or {})
                size = store.body_size(feed.name) or 0
                status = FeedStatus(feed.name, record.get("url") or feed.url, "offline" if size else "missing",
                                    None if size else "offline, and no last good copy", int(record.get("rows") or 0),
                                    size, now_s, record.get("last_success"), record.get("last_failure"),
                                    record.get("last_failure_reason"), record.get("skipped") or {},
                                    record.get("etag") or "", record.get("last_modified") or "")
                records[feed.name] = status.record()
                results.append(FeedResult(feed, status, store.path, now_s))
            store.write_status(records)
            return results

        with ThreadPoolExecutor(max_workers=max(1, settings.concurrency), thread_name_prefix="feed") as pool:
            futures = [pool.submit(_update_one, store, feed, records.get(feed.name), settings, force, now_s, sleep,
                                   keep_parsed) for feed in chosen]
            outcomes = [f.result() for f in futures]

        unreachable = 0
        for outcome in outcomes:
            feed = outcome.feed
            record = dict(records.get(feed.name) or {})
            status = FeedStatus(feed.name, record.get("url") or feed.url, "", None,
                                int(record.get("rows") or outcome.last_rows or 0),
                                store.body_size(feed.name) or 0, now_s, record.get("last_success"),
                                record.get("last_failure"), record.get("last_failure_reason"),
                                record.get("skipped") or {}, record.get("etag") or "",
                                record.get("last_modified") or "", outcome.route)
            if outcome.accepted:
                with outcome.handle:
                    store.commit(outcome.part, outcome.handle, feed.name)
                status.state, status.url, status.rows = "fresh", outcome.url, outcome.rows
                status.bytes, status.skipped = store.body_size(feed.name) or outcome.bytes, dict(outcome.skipped)
                status.etag, status.last_modified, status.last_success = outcome.etag, outcome.last_modified, now_s
            elif outcome.not_modified:
                status.state, status.last_success = "unchanged", now_s
            else:
                unreachable += outcome.connection_failed
                status.reason = outcome.reason
                status.last_failure, status.last_failure_reason = now_s, outcome.reason
                if status.bytes:
                    status.state = "kept"
                    log("!", "feed %s: %s; its last good copy (%s, %d rows) is used"
                        % (feed.name, outcome.reason, _age(status.last_success, now_s), status.rows))
                else:
                    status.state, status.rows = "missing", 0
                    log("!", "feed %s: %s; there is no last good copy, so it adds no trails"
                        % (feed.name, outcome.reason))
            records[feed.name] = status.record()
            results.append(FeedResult(feed, status, store.path, now_s,
                                      outcome.parsed if outcome.accepted else None))
        store.write_status(records)
    if chosen and unreachable == len(chosen):
        log("!", "no feed could be reached (no network, or the proxy is down?): the trails are the static and "
                 "custom ones plus the last good copy of each feed")
    return results
