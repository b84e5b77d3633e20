"""Maltrail's public trail feeds: the list as data, a parser per format, fetching (through a
proxy where configured), and each feed's last good copy on disk.

Owns getting feed rows; must not merge them across feeds (minimum feeds, bogon/CDN ranges,
priority, the reference form), normalise them, record provenance or build the artifact: those
belong to the callers below. Takes plain values (paths, URLs, names), never the configuration
object: trailsdb imports matchers only.

The parts:
    catalog.py  FEEDS: one Feed entry per feed (name, URL, format, info, reference, marker,
                enabled by default, format options); custom_url_feeds() for [all] custom_trails_url
    parsers.py  parse(feed, bytes_or_stream, stats, now_s): rows of one body, by its format
    fetch.py    FetchSettings, fetch(): one HTTP(S) download (proxy, CONNECT, TLS verification,
                timeouts, retries, conditional GET, size cap)
    store.py    FeedStore: the state directory (last good bodies, status.json), read_status()
    refresh.py  refresh(): one update of every enabled feed

For the merge, the update command and the sensor's periodic update:

    from trailsdb.feeds import FetchSettings, refresh

    results = refresh(
        cfg.all.feeds_dir,                         # state directory, e.g. /var/lib/maltrail-engine/feeds
        FetchSettings(proxy_url=cfg.all.proxy_url, ca_file=cfg.all.feeds_ca_file),
        disabled=cfg.all.disabled_feeds,           # None = Maltrail's default set of disabled feeds
        custom_urls=cfg.all.custom_trails_url,     # [] for none
        offline=args.offline,                      # True: nothing fetched, last good copies used
    )
    for result in results:                         # one per enabled feed, in catalog order
        result.feed.name, result.feed.reference    # the feed (catalog.Feed)
        result.status.state                        # "fresh" | "unchanged" | "kept" | "missing" | "offline"
        result.status.reason                       # why kept/missing (None otherwise)
        result.status.rows, result.status.last_success, result.status.last_failure
        for row in result.rows():                  # trailsdb.sources.RawTrail(trail, info, reference, origin)
            ...                                    # origin is the feed's name; rows are streamed
                                                   # (from the rows a body accepted now was judged
                                                   # by, else from the stored body), so each call
                                                   # is a new pass

`rows()` yields rows from the body accepted in this update or, when the fetch or its checks
failed ("kept"), from the last good copy; nothing for "missing". A row's trail is raw text in
the shapes trailsdb/normalize.py reads ("1.2.3.4", "10.0.0.0/24", "1.2.3.4:443", "evil.com",
"host/path"), plus "sha1:<40 hex>" for the SSL certificate blacklist (the certificate trail
kind). Failures are logged through `log` (default: "[!] date time text" on stderr) and kept in
status.json; read_status(feeds_dir) returns those records for `trails stats` (store.py documents
each field). refresh() holds an exclusive lock on the directory (StoreBusy when another update
has it) and raises StoreError for a directory that is unsafe or unusable; nothing else escapes.
"""

from trailsdb.feeds.catalog import DEFAULT_MAX_BYTES, FEEDS, NOT_CARRIED, Feed, custom_url_feeds, feed_names
from trailsdb.feeds.fetch import FetchResult, FetchSettings, fetch
from trailsdb.feeds.parsers import PARSERS, parse
from trailsdb.feeds.refresh import FeedResult, FeedStatus, enabled_feeds, refresh
from trailsdb.feeds.store import FeedStore, StoreBusy, StoreError, read_status

__all__ = [
    "DEFAULT_MAX_BYTES", "FEEDS", "NOT_CARRIED", "Feed", "custom_url_feeds", "feed_names",
    "FetchResult", "FetchSettings", "fetch", "PARSERS", "parse",
    "FeedResult", "FeedStatus", "enabled_feeds", "refresh",
    "FeedStore", "StoreBusy", "StoreError", "read_status",
]
