"""One trail update, end to end: refresh the feeds, fetch the CDN range lists, build, publish.

Owns `run_update` (what `maltrail-engine trails update` runs, and what the sensor's periodic
update child runs) and `build_inputs` (where a build's sources, whitelist, prefixes and output
come from in the configuration, shared with `trails build`). An update:

1. refreshes every enabled feed (trailsdb/feeds/refresh.py: each body is judged there, and a
   feed whose download failed or was refused keeps its last good copy, so no set is ever built
   from a broken download); `[all] feed_updates = false` or `disabled_feeds = ["all"]` ("*")
   leaves the catalog out, custom_trails_url lists are still fetched;
2. fetches the CDN range lists of trailsdb/ranges.py (a last good copy of each is kept beside
   the feeds' bodies), when any catalog feed is used (the CDN rule applies to feed trails only);
3. decides whether anything changed since the artifact was built (the inputs' fingerprint is
   recorded in the artifact's build information); unchanged, the current artifact is kept;
4. builds with trailsdb/compile.py, which publishes atomically and refuses a set holding less
   than half the current one's trails unless forced: a refused shrink is a failed update that
   keeps the current artifact, with the reason.

The user's remote lists ([all] custom_trails_url, reference "(remote custom)") are merged as
custom trails, not as feeds: Maltrail's minimum-feeds rule spares them (its `custom|static`
test matches "(remote custom)"), and so do its bogon/CDN rules here (COMPATIBILITY.md M2).

Takes the configuration object as a plain value (its `.all` attributes); imports nothing of
config/, engine/ or events/ (trailsdb imports matchers only): whether the artifact's directory is
safe to write into is asked through the `directory_problem` callable the caller passes.

Must not: capture, reload a running sensor, or write anywhere but feeds_dir and the artifact's
directory.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import stat
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

from matchers.artifact import Artifact, ArtifactError
from trailsdb.compile import BuildReport, ShrinkRefused, build
from trailsdb.feeds import FEEDS, FeedStore, FetchSettings, StoreError, refresh
from trailsdb.feeds.fetch import fetch
from trailsdb.feeds.refresh import stderr_log
from trailsdb.ranges import CDN_RANGE_LISTS, RangeError, RangeSet, parse_ranges
from trailsdb.sources import CUSTOM, Source, SourceError

__all__ = ["ALL_FEEDS", "BuildInputs", "UpdateReport", "build_inputs", "catalog_disabled", "run_update"]

# Words in [all] disabled_feeds that disable every catalog feed (the custom_trails_url lists stay).
ALL_FEEDS = ("all", "*")
# The build information key holding the fingerprint of what the artifact was built from.
INPUTS_KEY = "update_inputs"
# A CDN range list's body is a few hundred kB (AWS's JSON is the largest); the cap bounds what a
# broken server can make us write.
CDN_MAX_BYTES = 16 * 1024 * 1024
CDN_BODY_PREFIX = "cdn_"
# How trailsdb/feeds/refresh.py's line begins when no feed could be reached at all.
NO_NETWORK_LINE = "no feed could be reached"

Log = Callable[[str, str], None]


@dataclass
class BuildInputs:
    """What a build reads and writes, as the configuration (and the command line) say."""

    sources: list                       # trails.csv files / static trail trees ([all] trail_sources)
    custom_dir: str                     # [all] custom_trails_dir ("" for none)
    whitelist_file: str                 # [all] whitelist_file ("" for none)
    output: str                         # [all] trails_artifact
    min_prefix: tuple                   # ([all] min_trail_prefix_v4, min_trail_prefix_v6)
    ip_minimum_feeds: int = 3
    disabled_info_regex: str = ""


def build_inputs(cfg, sources=None, custom_dir=None, whitelist_file=None, output=None) -> BuildInputs:
    """The build's inputs from `cfg` (a loaded configuration), each overridden when given."""
    a = cfg.all
    return BuildInputs(
        sources=list(sources) if sources else list(a.trail_sources),
        custom_dir=custom_dir if custom_dir is not None else a.custom_trails_dir,
        whitelist_file=whitelist_file if whitelist_file is not None else a.whitelist_file,
        output=output or a.trails_artifact,
        min_prefix=(a.min_trail_prefix_v4, a.min_trail_prefix_v6),
        ip_minimum_feeds=getattr(a, "ip_minimum_feeds", 3),
        disabled_info_regex=getattr(a, "disabled_trails_info_regex", ""),
    )


def catalog_disabled(cfg) -> list[str] | None:
    """The names refresh() is to leave out: every catalog feed when [all] feed_updates is false
    or disabled_feeds holds "all" or "*"; otherwise disabled_feeds as written."""
    a = cfg.all
    disabled = [str(name).strip().lower() for name in a.disabled_feeds]
    if not getattr(a, "feed_updates", True) or any(name in ALL_FEEDS for name in disabled):
        return sorted({f.name for f in FEEDS})
    return disabled


@dataclass
class UpdateReport:
    """What one update came to. `ok`: an artifact is in place that reflects this update (a new
    one was published, or the inputs were unchanged and the current one was kept)."""

    ok: bool = False
    published: bool = False
    unchanged: bool = False
    offline: bool = False                   # asked for (--offline)
    no_network: bool = False                # no feed could be reached at all
    failure: str = ""                       # why no artifact was published (ok is False)
    output: str = ""
    generation: int = 0
    trails: int = 0
    feeds: list = field(default_factory=list)       # trailsdb.feeds.FeedResult, in catalog order
    cdn: list = field(default_factory=list)         # (list name, state, reason) per CDN range list
    cdn_ranges: int = 0
    build: BuildReport | None = None
    seconds: float = 0.0
    peak_rss_bytes: int = 0                 # this process's peak RSS (the update runs in one process)

    def states(self) -> Counter:
        return Counter(r.status.state for r in self.feeds)

    def failed_feed_lines(self) -> list[str]:
        """One line per feed that did not come in fresh or unchanged this time, with its reason."""
        out = []
        for r in self.feeds:
            state = r.status.state
            if state == "kept":
                out.append("feed %s: %s; kept its last good copy (%d rows)" % (r.feed.name, r.status.reason,
                                                                              r.status.rows))
            elif state == "missing":
                out.append("feed %s: %s; no last good copy, it adds nothing" % (r.feed.name, r.status.reason))
        for name, state, reason in self.cdn:
            if state in ("kept", "missing"):
                out.append("CDN range list %s: %s; %s" % (name, reason, "kept its last good copy" if state == "kept"
                                                          else "no last good copy"))
        return out

    def summary(self) -> str:
        s = self.states()
        fresh = s["fresh"] + s["unchanged"]
        parts = ["feeds: %d ok (%d new, %d unchanged), %d kept last good, %d offline, %d missing"
                 % (fresh, s["fresh"], s["unchanged"], s["kept"], s["offline"], s["missing"])]
        if self.no_network:
            parts.append("no network: built as offline would (last good copies)")
        if self.published:
            parts.append("published %s generation %d: %d trails" % (self.output, self.generation, self.trails))
        elif self.unchanged:
            parts.append("sources unchanged: kept %s generation %d (%d trails)"
                         % (self.output, self.generation, self.trails))
        else:
            parts.append("FAILED, kept the current artifact %s: %s" % (self.output, self.failure))
        parts.append("%.1f s" % self.seconds)
        if self.peak_rss_bytes:
            parts.append("peak memory %.0f MB" % (self.peak_rss_bytes / 1e6))
        return "; ".join(parts)


# ----------------------------------------------------------------------------------------------
# CDN range lists
# ----------------------------------------------------------------------------------------------

def _cdn_body_name(name: str) -> str:
    return CDN_BODY_PREFIX + name.replace("-", "_")


def refresh_cdn_ranges(feeds_dir: str, settings: FetchSettings, offline: bool, log: Log,
                       lists=CDN_RANGE_LISTS) -> tuple[RangeSet, list]:
    """(the CDN ranges, [(list name, state, reason)]): each list fetched (unless offline) and,
    when it reads as ranges, kept as its last good copy in feeds_dir; a list that fails or no
    longer reads as ranges keeps its last good copy."""
    networks, states = [], []
    with FeedStore(feeds_dir) as store:
        store.lock()
        for entry in lists:
            body = _cdn_body_name(entry.name)
            state, reason, ranges = "offline", None, None
            if not offline:
                handle, part = store.new_part(body)
                result = fetch(entry.url, handle, settings, None, CDN_MAX_BYTES)
                reason = None if result.ok else result.reason or "not fetched"
                if result.ok:
                    handle.seek(0)
                    try:
                        ranges = parse_ranges(handle.read(), entry.format, entry.fields, entry.name)
                    except RangeError as exc:
                        reason = str(exc)
                if reason is None:
                    with handle:
                        store.commit(part, handle, body)
                    state = "fresh"
                else:
                    handle.close()
                    store.discard(part)
            if state == "fresh":   # the body just stored is what was parsed to judge it
                networks += [(net, entry.name) for net in ranges]
                states.append((entry.name, state, None))
                continue
            copy = store.open_body(body)
            if copy is None:
                states.append((entry.name, "missing" if reason else "offline", reason or "offline, and no copy"))
                continue
            with copy:
                raw = copy.read(CDN_MAX_BYTES)
            try:
                ranges = parse_ranges(raw, entry.format, entry.fields, entry.name)
            except RangeError as exc:
                states.append((entry.name, "missing", "%s; its stored copy is unreadable too (%s)" % (reason, exc)))
                continue
            networks += [(net, entry.name) for net in ranges]
            states.append((entry.name, "kept" if reason else state, reason))
    for name, state, reason in states:
        if state in ("kept", "missing"):
            log("!", "CDN range list %s: %s" % (name, reason))
    return RangeSet(networks), states


# ----------------------------------------------------------------------------------------------
# What the build is made from (to tell an unchanged update)
# ----------------------------------------------------------------------------------------------

def _file_marks(path: str) -> list:
    """(path, size, mtime_ns) of a file, or of every file under a directory, sorted."""
    out = []
    try:
        st = os.stat(path)
    except OSError:
        return [(path, None, None)]
    if not stat.S_ISDIR(st.st_mode):
        return [(path, st.st_size, st.st_mtime_ns)]
    for root, dirs, files in os.walk(path):
        dirs.sort()
        for name in sorted(files):
            full = os.path.join(root, name)
            try:
                fst = os.stat(full)
            except OSError:
                continue
            out.append((full, fst.st_size, fst.st_mtime_ns))
    return out


def _fingerprint(inputs: BuildInputs, feed_bodies: list, cdn_names: list, feeds_dir: str) -> str:
    """A digest of everything the build reads and every rule it applies."""
    marks = []
    for name in list(feed_bodies) + [_cdn_body_name(n) for n in cdn_names]:
        marks += [(name,) + tuple(_file_marks(os.path.join(feeds_dir, name + ".body"))[0][1:])]
    for path in inputs.sources:
        marks += _file_marks(os.path.abspath(path))
    for path in (inputs.custom_dir, inputs.whitelist_file):
        if path:
            marks += _file_marks(os.path.abspath(path))
    doc = {"marks": marks, "min_prefix": list(inputs.min_prefix), "ip_minimum_feeds": inputs.ip_minimum_feeds,
           "disabled_info_regex": inputs.disabled_info_regex}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def _current(output: str) -> tuple[int, int, str]:
    """(generation, trails, inputs fingerprint) of the artifact at `output`; (0, 0, "") when
    there is none or it cannot be read."""
    try:
        artifact = Artifact.open(output, verify=False)
    except (ArtifactError, OSError, ValueError):  # ValueError: msgpack's, for a damaged section
        return 0, 0, ""
    try:
        return artifact.generation, artifact.trail_count, str(artifact.info.get(INPUTS_KEY) or "")
    finally:
        close = getattr(artifact, "close", None)
        if close:
            close()


# ----------------------------------------------------------------------------------------------
# The update
# ----------------------------------------------------------------------------------------------

def fetch_settings(cfg) -> FetchSettings:
    """How feeds are fetched, from [all] proxy_url and feeds_ca_file (the proxy environment
    variables apply when proxy_url is "")."""
    return FetchSettings(proxy_url=cfg.all.proxy_url, ca_file=cfg.all.feeds_ca_file)


def run_update(cfg, *, offline: bool = False, force: bool = False, log: Log = stderr_log,
               settings: FetchSettings | None = None, directory_problem: Callable[[str], str | None] | None = None,
               now: Callable[[], float] = time.time) -> UpdateReport:
    """One update (the module docstring says what it does). Never raises for a failed update:
    the report's `ok` and `failure` say what happened, and the current artifact stays."""
    started = time.monotonic()
    inputs = build_inputs(cfg)
    a = cfg.all
    settings = settings or fetch_settings(cfg)
    report = UpdateReport(offline=offline, output=inputs.output)

    def finish(failure: str = "") -> UpdateReport:
        report.failure = failure
        report.ok = not failure
        report.seconds = time.monotonic() - started
        report.peak_rss_bytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        if failure:
            log("!", "trail update failed, the current artifact %s is kept: %s" % (inputs.output, failure))
        return report

    out_dir = os.path.dirname(os.path.abspath(inputs.output))
    problem = directory_problem(out_dir) if directory_problem else None
    if problem:
        return finish("refusing to write %s: %s" % (inputs.output, problem))

    disabled = catalog_disabled(cfg)

    def refresh_log(level: str, text: str) -> None:
        # refresh() says once when every feed failed to connect (no network, or the proxy is
        # down): the update then goes on as offline would, and fetches no CDN list either.
        if text.startswith(NO_NETWORK_LINE):
            report.no_network = True
        log(level, text)

    try:
        results = refresh(a.feeds_dir, settings, disabled=disabled, custom_urls=list(a.custom_trails_url),
                          offline=offline, force=force, log=refresh_log, now=now)
    except StoreError as exc:
        return finish(str(exc))
    report.feeds = results
    catalog = [r for r in results if r.feed.format != "custom"]
    custom = [r for r in results if r.feed.format == "custom"]

    cdn = RangeSet()
    cdn_names = []
    if catalog:
        try:
            cdn, report.cdn = refresh_cdn_ranges(a.feeds_dir, settings, offline or report.no_network, log)
        except StoreError as exc:
            return finish(str(exc))
        report.cdn_ranges = cdn.count
        cdn_names = [name for name, _state, _reason in report.cdn]

    with_copy = [r for r in results if r.status.has_copy]
    generation, trails, recorded = _current(inputs.output)
    fingerprint = _fingerprint(inputs, [r.feed.name for r in with_copy], cdn_names, a.feeds_dir)
    if recorded == fingerprint and not force:
        report.unchanged, report.generation, report.trails = True, generation, trails
        return finish()

    if not inputs.sources and not inputs.custom_dir and not with_copy:
        return finish("no trail source at all: no feed has a copy, and neither [all] trail_sources nor "
                      "custom_trails_dir is set")
    feeds = [(r.feed.name, r.rows()) for r in catalog if r.status.has_copy]
    remote = [Source(r.feed.name, CUSTOM, r.rows()) for r in custom if r.status.has_copy]
    try:
        built = build(list(inputs.sources) + remote, inputs.output, custom_dir=inputs.custom_dir,
                      whitelist_file=inputs.whitelist_file, min_prefix=inputs.min_prefix, force=force,
                      feeds=feeds, ip_minimum_feeds=inputs.ip_minimum_feeds, cdn_ranges=cdn,
                      now_s=int(now()), disabled_info_regex=inputs.disabled_info_regex,
                      extra_info={INPUTS_KEY: fingerprint})
    except ShrinkRefused as exc:
        return finish(str(exc))
    except (SourceError, ArtifactError) as exc:
        return finish(str(exc))
    except OSError as exc:
        return finish("cannot write %s: %s" % (inputs.output, exc.strerror or exc))
    report.build = built
    report.published, report.generation, report.trails = True, built.generation, built.trails
    return finish()
