"""Compiling trail sources into one artifact, and publishing it atomically.

Owns the build: read every source in order and merge their rows (trailsdb/merge.py: Maltrail's
rules, in bounded memory, trails coming out in the artifact's order), give each trail its
provenance (trailsdb/provenance.py, carried over from the artifact being replaced), lay out the
sections matchers/artifact.py describes (roaring bitmaps for IPv4 and CIDR, a 64-bit roaring
bitmap for ip:port, C hash tables for domains and URLs with their key filters, id lists for regex and user-agent trails,
the trail table and its (info, reference) pairs, the provenance) as the trails arrive, write them
one at a time to a temporary file beside the target, verify it loads and finds a sample of its
own trails, then rename it into place with the next generation number. A reader therefore sees
the old artifact or the new one, never a mix. The temporary file is created exclusively under an
unpredictable name (a symlink planted where it will be cannot redirect the write), and a build
holding less than half the trails of the artifact it would replace is refused unless forced (a
source that came back short must not quietly shrink detection).

Memory: the rows are never all in memory (sorted runs, spilled); what is held is the artifact's
own compact sections while they are laid out (key text, 12-byte trail records, id arrays), each
let go once written. The shared 1.6M-row set builds in well under 250 MB (ARCHITECTURE.md).

Must not be imported by the packet path (workers/), nor import engine/ (whether a directory is
safe to write into is the caller's question): it only produces files.
"""

from __future__ import annotations

import ipaddress
import os
import random
import re
import socket
import struct
import sys
import tempfile
import time
from array import array
from collections import Counter
from dataclasses import dataclass, field

import msgpack
import pyroaring

from matchers import TrailMatchers, _native
from matchers.artifact import (
    KIND_CERT, KIND_CIDR4, KIND_CIDR6, KIND_DOMAIN, KIND_IPPORT4, KIND_IPPORT6, KIND_IPV4, KIND_IPV6,
    KIND_NAMES, KIND_PATH, KIND_REGEX, KIND_UA, KIND_UA_REGEX, KIND_URL, S_CIDR4, S_CIDR4_LIST, S_CIDR6_LIST,
    S_DOMAINS, S_INFO, S_IP4, S_IP4_IDS, S_IP4_KEYS, S_IP4_P24, S_IP6, S_IP6_IDS, S_IPPORT4, S_IPPORT4_IDS,
    S_IPPORT4_KEYS, S_IPPORT6, S_IPPORT6_IDS, S_META, S_PROV_CLASSES, S_PROV_IDS, S_PROV_SOURCES, S_REGEX,
    S_STRINGS, S_TRAILS, S_UA, S_URLS, S_WHITELIST, TRAIL_RECORD, Artifact, ArtifactError, ArtifactWriter,
    S_CERT_IDS, S_CERTS, S_DOMAINS_FILTER, S_URLS_FILTER, KEY_FILTERS, existing_summary,
)
from matchers.ips import ipport4_key, ipport6_key, parse_ipport
from trailsdb.merge import (
    DEFAULT_IP_MINIMUM_FEEDS, HIGH_PRIORITY_INFO_KEYWORDS, HIGH_PRIORITY_REFERENCES, LOW_PRIORITY_INFO_KEYWORDS,
    REJECT_EXAMPLES, Rules, merge, replaces,
)
from trailsdb.normalize import DEFAULT_MIN_PREFIX
from trailsdb.provenance import ProvenanceWriter, open_previous
from trailsdb.ranges import RangeSet
from trailsdb.sources import (
    EMPTY_WHITELIST, FEED, Source, SourceError, Whitelist, custom_source, path_source, read_whitelist,
)

__all__ = ["BuildReport", "ShrinkRefused", "build", "collect", "layout", "verify",
           "HIGH_PRIORITY_INFO_KEYWORDS", "HIGH_PRIORITY_REFERENCES", "LOW_PRIORITY_INFO_KEYWORDS",
           "REJECT_EXAMPLES"]

VERIFY_SAMPLE = 200
# A build holding fewer trails than this fraction of the artifact it replaces is refused unless
# forced; the sensor applies the same fraction before it adopts a reloaded artifact.
REPLACE_MIN_FRACTION = 0.5
# The artifact is public threat data: readable by everyone (the sensor's unprivileged processes,
# `trails check` run by any user), writable by its owner.
ARTIFACT_MODE = 0o644


class ShrinkRefused(ArtifactError):
    """The new build would replace an artifact holding more than twice its trails."""


@dataclass
class BuildReport:
    output: str = ""
    generation: int = 0
    trails: int = 0
    by_kind: Counter = field(default_factory=Counter)
    rows: Counter = field(default_factory=Counter)
    rejected: Counter = field(default_factory=Counter)
    reject_examples: dict = field(default_factory=dict)
    duplicates: int = 0
    whitelisted: int = 0
    dropped: Counter = field(default_factory=Counter)      # by the merge's rules, by reason
    sources: list = field(default_factory=list)            # source names, in merge order
    source_kinds: list = field(default_factory=list)
    source_rows: list = field(default_factory=list)        # rows read, per source
    source_trails: list = field(default_factory=list)      # trails of the artifact each lists
    provenance: str = ""                                    # what became of the previous provenance
    carried: int = 0                                        # trails the previous artifact also held
    spilled_runs: int = 0
    seconds: float = 0.0
    bytes: int = 0

    def lines(self) -> list[str]:
        out = ["artifact %s (generation %d): %d trails, %.1f MB, built in %.1f s"
               % (self.output, self.generation, self.trails, self.bytes / 1e6, self.seconds)]
        for kind, n in sorted(self.by_kind.items(), key=lambda kv: -kv[1]):
            out.append("  %-12s %9d" % (kind, n))
        out.append("rows read: %d; duplicates merged: %d; removed by whitelist: %d"
                   % (self.rows["rows read"], self.duplicates, self.whitelisted))
        for reason, n in sorted(self.dropped.items(), key=lambda kv: (-kv[1], kv[0])):
            out.append("dropped %d: %s" % (n, reason))
        for reason, n in sorted(self.rejected.items(), key=lambda kv: -kv[1]):
            out.append("rejected %d: %s (e.g. %s)" % (n, reason, ", ".join(self.reject_examples[reason])))
        if self.rows["csv rows without 3 fields"]:
            out.append("skipped %d csv rows without 3 fields" % self.rows["csv rows without 3 fields"])
        if self.provenance:
            out.append("provenance: %s" % self.provenance)
        return out


def _replaces(current: tuple[str, str], new: tuple[str, str]) -> bool:
    """Maltrail's merge rule (kept under its old name; trailsdb/merge.py owns it)."""
    return replaces(current, new)


def _sources(sources, custom_dir: str, feeds, stats: Counter) -> list[Source]:
    """The build's sources in merge order: feeds (Maltrail merges them first), then the given
    files, then the custom directory. A source is a path, or a Source; a feed is a Source or a
    (name, rows) pair."""
    out = []
    for feed in feeds:
        if isinstance(feed, Source):
            out.append(feed._replace(kind=FEED))
        else:
            name, rows = feed
            out.append(Source(str(name), FEED, rows))
    for source in sources:
        out.append(source if isinstance(source, Source) else path_source(source, stats))
    if custom_dir:
        out.append(custom_source(custom_dir, stats))
    names = [s.name for s in out]
    if len(set(names)) != len(names):
        repeated = sorted({n for n in names if names.count(n) > 1})
        raise SourceError("trail sources given twice: %s" % ", ".join(repeated))
    return out


def collect(sources, custom_dir: str = "", whitelist: Whitelist = EMPTY_WHITELIST,
            report: BuildReport | None = None, min_prefix: tuple[int, int] = DEFAULT_MIN_PREFIX,
            progress: bool = False, feeds=(), rules: Rules | None = None) -> tuple[list, list]:
    """Reads, normalises and merges (trailsdb/merge.py), all in memory: (entries, meta), entries
    (kind, key, meta index) in the artifact's order, meta the distinct (info, reference) pairs.
    For tests and small sets; `build` streams instead."""
    report = report or BuildReport()
    rules = (rules or Rules())._replace(whitelist=whitelist)
    srcs = _sources(sources, custom_dir, feeds, report.rows)
    report.sources = [s.name for s in srcs]
    meta_index: dict[tuple[str, str], int] = {}
    entries = []
    for trail in merge(srcs, rules, report, min_prefix, progress):
        m = meta_index.setdefault((trail.info, trail.reference), len(meta_index))
        entries.append((trail.kind, trail.key.decode("utf-8", "surrogateescape"), m))
    return entries, list(meta_index)


def _bitmap_bytes(values) -> bytes:
    bm = pyroaring.BitMap(values)
    bm.run_optimize()
    return bm.serialize()


def _ip4(text: str) -> int:
    return int.from_bytes(socket.inet_aton(text), "big")


def _ip6(text: str) -> int:
    return int.from_bytes(socket.inet_pton(socket.AF_INET6, text), "big")


def _sorted_pairs(keys: array, ids: array, code: str) -> tuple[array, array]:
    """keys ascending, and the ids that go with them: sorted as one integer per pair (key above,
    id below), one list of ints rather than a list of tuples."""
    packed = sorted((k << 32) | i for k, i in zip(keys, ids))
    return array(code, (p >> 32 for p in packed)), array("I", (p & 0xFFFFFFFF for p in packed))


# Every section of a build, in the order they are written (the table lists them in this order).
SECTION_ORDER = [S_STRINGS, S_TRAILS, S_META, S_IP4, S_IP4_KEYS, S_IP4_IDS, S_CIDR4, S_CIDR4_LIST,
                 S_IPPORT4, S_IPPORT4_KEYS, S_IPPORT4_IDS, S_IP4_P24, S_IP6, S_IP6_IDS, S_IPPORT6,
                 S_IPPORT6_IDS, S_CIDR6_LIST, S_DOMAINS, S_DOMAINS_FILTER, S_URLS, S_URLS_FILTER, S_REGEX, S_UA, S_CERTS, S_CERT_IDS, S_WHITELIST,
                 S_INFO]
PROVENANCE_SECTIONS = [S_PROV_SOURCES, S_PROV_CLASSES, S_PROV_IDS]


class _Layout:
    """The artifact's sections, filled trail by trail (trail id = the order of `add`), in
    compact form: key text in one bytearray, 12-byte records in another, ids and keys in typed
    arrays; only the few IPv6 and range trails as Python tuples."""

    def __init__(self):
        self.strings = bytearray()
        self.trails = bytearray()
        self.meta: list[tuple[str, str]] = []
        self._meta_index: dict[tuple[str, str], int] = {}
        self.ip4_keys, self.ip4_ids = array("I"), array("I")
        self.ipport4_keys, self.ipport4_ids = array("Q"), array("I")
        self.cidr4, self.ip6, self.ipport6, self.cidr6 = [], [], [], []
        self.domains, self.urls = array("I"), array("I")
        self.regex, self.uas = [], []
        self.certs: list[tuple[bytes, int]] = []   # (SHA-1 digest, trail id)
        self.by_kind = Counter()
        self.count = 0

    def meta_of(self, pair: tuple[str, str]) -> int:
        m = self._meta_index.get(pair)
        if m is None:
            m = self._meta_index[pair] = len(self.meta)
            self.meta.append(pair)
        return m

    def add(self, kind: int, raw: bytes, m: int) -> int:
        trail_id = self.count
        self.count += 1
        self.by_kind[kind] += 1
        self.trails += TRAIL_RECORD.pack(len(self.strings), len(raw), kind, 0, m)
        self.strings += raw
        if kind == KIND_DOMAIN:
            self.domains.append(trail_id)
        elif kind in (KIND_URL, KIND_PATH):
            self.urls.append(trail_id)
        elif kind == KIND_IPPORT4:
            host, port = parse_ipport(raw.decode())
            self.ipport4_keys.append(ipport4_key(_ip4(host), port))
            self.ipport4_ids.append(trail_id)
        elif kind == KIND_IPV4:
            self.ip4_keys.append(_ip4(raw.decode()))
            self.ip4_ids.append(trail_id)
        elif kind == KIND_CIDR4:
            net = ipaddress.IPv4Network(raw.decode())
            self.cidr4.append((int(net.network_address), int(net.broadcast_address), trail_id, net.prefixlen))
        elif kind == KIND_IPV6:
            self.ip6.append((_ip6(raw.decode()).to_bytes(16, "big"), trail_id))
        elif kind == KIND_IPPORT6:
            host, port = parse_ipport(raw.decode())
            self.ipport6.append((ipport6_key(_ip6(host), port), trail_id))
        elif kind == KIND_CIDR6:
            net = ipaddress.IPv6Network(raw.decode())
            self.cidr6.append((int(net.network_address), int(net.broadcast_address), trail_id, net.prefixlen))
        elif kind == KIND_REGEX:
            self.regex.append([trail_id, raw.decode("utf-8", "surrogateescape")])
        elif kind in (KIND_UA, KIND_UA_REGEX):
            self.uas.append([trail_id, raw.decode("utf-8", "surrogateescape")])
        elif kind == KIND_CERT:
            self.certs.append((bytes.fromhex(raw.decode("ascii")), trail_id))
        return trail_id

    def samples(self, rng: random.Random, per_kind: int) -> list[int]:
        """Trail ids to self-check: up to `per_kind` of every kind."""
        groups = [self.ip4_ids, self.ipport4_ids, self.domains, self.urls, [c[2] for c in self.cidr4],
                  [i for _, i in self.ip6], [i for _, i in self.ipport6], [c[2] for c in self.cidr6],
                  [i for _, i in self.certs]]
        out = []
        for ids in groups:
            out += [ids[i] for i in rng.sample(range(len(ids)), min(per_kind, len(ids)))]
        return out

    def sections(self, whitelist: Whitelist, info: dict):
        """(name, data) in SECTION_ORDER, each built when asked for and let go by the layout as
        it is handed out (the writer writes it and drops it)."""
        yield S_STRINGS, self.strings
        yield S_TRAILS, self.trails
        yield S_META, msgpack.packb([list(p) for p in self.meta], use_bin_type=True)

        ip4_keys, ip4_ids = _sorted_pairs(self.ip4_keys, self.ip4_ids, "I")
        self.ip4_keys = self.ip4_ids = None
        yield S_IP4, _bitmap_bytes(ip4_keys)
        yield S_IP4_KEYS, ip4_keys
        yield S_IP4_IDS, ip4_ids
        covered = pyroaring.BitMap()
        for first, last, _, _ in self.cidr4:
            covered.add_range(first, last + 1)
        covered.run_optimize()
        self.cidr4.sort(key=lambda c: (-c[3], c[2]))  # most specific first, then lowest id
        yield S_CIDR4, covered.serialize()
        del covered
        yield S_CIDR4_LIST, b"".join(struct.pack("<IIII", *c) for c in self.cidr4)
        ipport4_keys, ipport4_ids = _sorted_pairs(self.ipport4_keys, self.ipport4_ids, "Q")
        self.ipport4_keys = self.ipport4_ids = None
        bm64 = pyroaring.BitMap64(ipport4_keys)
        bm64.run_optimize()
        yield S_IPPORT4, bm64.serialize()
        del bm64
        yield S_IPPORT4_KEYS, ipport4_keys
        yield S_IPPORT4_IDS, ipport4_ids
        p24 = bytearray(1 << 21)
        for address in ip4_keys:
            p24[address >> 11] |= 1 << ((address >> 8) & 7)
        for key in ipport4_keys:
            address = key & 0xFFFFFFFF
            p24[address >> 11] |= 1 << ((address >> 8) & 7)
        for first, last, _, _ in self.cidr4:
            for prefix in range(first >> 8, (last >> 8) + 1):
                p24[prefix >> 3] |= 1 << (prefix & 7)
        del ip4_keys, ip4_ids, ipport4_keys, ipport4_ids
        yield S_IP4_P24, p24
        del p24
        self.ip6.sort()
        self.ipport6.sort()
        self.cidr6.sort(key=lambda c: (-c[3], c[2]))
        yield S_IP6, b"".join(a for a, _ in self.ip6)
        yield S_IP6_IDS, array("I", (i for _, i in self.ip6))
        yield S_IPPORT6, b"".join(k for k, _ in self.ipport6)
        yield S_IPPORT6_IDS, array("I", (i for _, i in self.ipport6))
        yield S_CIDR6_LIST, b"".join(f.to_bytes(16, "big") + l.to_bytes(16, "big") + struct.pack("<II", i, p)
                                     for f, l, i, p in self.cidr6)
        # Each table's key filter is built from the table as written, so it holds exactly its keys.
        for name, filter_name, ids in ((S_DOMAINS, S_DOMAINS_FILTER, self.domains),
                                       (S_URLS, S_URLS_FILTER, self.urls)):
            table = _native.build_hash_table(self.trails, self.strings, ids)
            yield name, table
            yield filter_name, _native.build_key_filter(table, self.trails, self.strings)
            del table
        yield S_REGEX, msgpack.packb(self.regex, use_bin_type=True)
        yield S_UA, msgpack.packb(self.uas, use_bin_type=True)
        # Trail ids follow key order, so the digests usually arrive sorted; sorted anyway (bisect).
        self.certs.sort()
        yield S_CERTS, b"".join(d for d, _ in self.certs)
        yield S_CERT_IDS, array("I", (i for _, i in self.certs))
        self.certs = []
        yield S_WHITELIST, msgpack.packb({
            "domains": sorted(whitelist.domains),
            "ips": sorted(str(a) for a in whitelist.ips),
            "cidrs": [str(n) for n in whitelist.networks]}, use_bin_type=True)
        yield S_INFO, msgpack.packb(info, use_bin_type=True)


def layout(entries: list, meta: list, whitelist: Whitelist, info: dict) -> list[tuple[str, bytes]]:
    """The artifact's sections (no provenance) for entries (kind, key, meta index), trail id =
    position, as given: lets a test lay out what a build would have merged."""
    lay = _Layout()
    lay.meta = list(meta)
    for kind, key, m in entries:
        lay.add(kind, key.encode("utf-8", "surrogateescape"), m)
    return [(name, bytes(data)) for name, data in lay.sections(whitelist, info)]


def verify(fd: int, name: str, samples: list[int]) -> None:
    """Loads the fresh artifact (open at `fd`: what was written, not whatever its name holds now)
    with the fast matchers, checking every section's checksum, and checks the sampled trail ids
    are found by their own keys, so a broken build never replaces a working one."""
    artifact = Artifact.from_fd(fd, name)
    for table, key_filter in KEY_FILTERS:
        # every key of each table, not a sample: a filter that hid one key would hide its trail
        try:
            misses = _native.filter_misses(artifact.section(key_filter), artifact.section(table),
                                           artifact.section(S_TRAILS), artifact.section(S_STRINGS))
        except ValueError as exc:
            raise ArtifactError("%s: self-check failed: %s: %s" % (name, key_filter, exc)) from None
        if misses:
            raise ArtifactError("%s: self-check failed: %s hides %d keys of %s" % (name, key_filter, misses, table))
    matchers = TrailMatchers.load(artifact)
    for trail_id in samples:
        kind, key = artifact.kind(trail_id), artifact.key(trail_id)
        if not _found(matchers, kind, key, trail_id):
            raise ArtifactError("%s: self-check failed: %s trail %r not found" % (name, KIND_NAMES[kind], key))


def _found(m: TrailMatchers, kind: int, key: str, trail_id: int) -> bool:
    if kind in (KIND_IPV4, KIND_IPV6):
        a = ipaddress.ip_address(key)
        return m.ips.lookup_ip(a.version, int(a)) == trail_id
    if kind in (KIND_CIDR4, KIND_CIDR6):
        net = ipaddress.ip_network(key)
        return m.ips.lookup_ip(net.version, int(net.network_address)) is not None
    if kind in (KIND_IPPORT4, KIND_IPPORT6):
        host, port = parse_ipport(key)
        a = ipaddress.ip_address(host)
        return m.ips.lookup_ip_port(a.version, int(a), port) == trail_id
    if kind == KIND_DOMAIN:
        return m.domains.table.find(key) == trail_id
    if kind in (KIND_URL, KIND_PATH):
        return m.urls.table.find(key) == trail_id
    if kind == KIND_CERT:
        return m.certs.lookup(bytes.fromhex(key)) == trail_id
    return True  # regex and user-agent trails are compiled at load; load itself is the check


def build(sources, output: str, custom_dir: str = "", whitelist_file: str = "",
          min_prefix: tuple[int, int] = DEFAULT_MIN_PREFIX, force: bool = False, progress: bool = False,
          feeds=(), ip_minimum_feeds: int = DEFAULT_IP_MINIMUM_FEEDS, cdn_ranges=(),
          now_s: int | None = None, disabled_info_regex: str = "", extra_info: dict | None = None) -> BuildReport:
    """Builds and atomically publishes an artifact at `output`. Raises SourceError, ArtifactError
    (ShrinkRefused when the build holds less than half the trails of the artifact at `output`
    and `force` is not set) or OSError.

    sources: trails.csv files, static trail trees or .txt files (paths), or Source objects;
    custom_dir: the custom trails directory; feeds: (name, rows) pairs or Sources, merged first,
    to which the feed rules apply ([all] ip_minimum_feeds, and bogon and CDN addresses dropped:
    `cdn_ranges`, networks or a RangeSet); min_prefix: the shortest (IPv4, IPv6) CIDR prefixes
    kept; progress: the rows read per source on stderr; now_s: the build's time (provenance,
    header), default now; disabled_info_regex: trails whose label it matches are dropped ([all]
    disabled_trails_info_regex); extra_info: more entries for the artifact's build information
    (trailsdb/update.py records what the build was made from)."""
    started = time.monotonic()
    now_s = int(time.time()) if now_s is None else int(now_s)
    report = BuildReport(output=output)
    whitelist = read_whitelist(whitelist_file) if whitelist_file else EMPTY_WHITELIST
    cdn = cdn_ranges if isinstance(cdn_ranges, RangeSet) else RangeSet(cdn_ranges)
    rules = Rules(ip_minimum_feeds=ip_minimum_feeds, cdn=cdn, whitelist=whitelist,
                  drop_info=re.compile(disabled_info_regex) if disabled_info_regex else None)
    srcs = _sources(sources, custom_dir, feeds, report.rows)
    report.sources = [s.name for s in srcs]
    report.source_kinds = [s.kind for s in srcs]
    directory = os.path.dirname(os.path.abspath(output))
    os.makedirs(directory, exist_ok=True)

    previous, why = open_previous(output)
    try:
        prov = ProvenanceWriter([(s.name, s.kind) for s in srcs], now_s, previous)
        lay = _Layout()
        for trail in merge(srcs, rules, report, min_prefix, progress, spill_dir=directory):
            lay.add(trail.kind, trail.key, lay.meta_of((trail.info, trail.reference)))
            prov.add(trail.kind, trail.key, trail.sources)
        report.carried = prov.carried
    finally:
        if previous is not None:
            previous.close()
    report.provenance = ("carried over for %d of %d trails from %s" % (prov.carried, lay.count, output)
                         if previous is not None else why)
    report.trails = lay.count
    for kind, n in lay.by_kind.items():
        report.by_kind[KIND_NAMES[kind]] += n
    summary = existing_summary(output)
    if summary is not None and summary[1] is not None and not force \
            and report.trails < REPLACE_MIN_FRACTION * summary[1]:
        raise ShrinkRefused("%s holds %d trails and this build only %d, less than half: refusing to replace it "
                            "(a source may have come back short; pass --force to replace it anyway)"
                            % (output, summary[1], report.trails))
    report.generation = (summary[0] if summary is not None else 0) + 1
    if progress:  # the rows are merged; what follows takes a few seconds for a million trails
        sys.stderr.write("laying out, writing and checking %d trails\n" % report.trails)
        sys.stderr.flush()
    info = {"sources": report.sources, "built_s": now_s, "rows": dict(report.rows),
            "rejected": dict(report.rejected), "duplicates": report.duplicates,
            "whitelisted": report.whitelisted, "by_kind": dict(report.by_kind),
            "dropped": dict(report.dropped), "ip_minimum_feeds": ip_minimum_feeds,
            "by_source": [[name, kind, rows, listed] for name, kind, rows, listed in
                          zip(report.sources, report.source_kinds, report.source_rows, report.source_trails)]}
    info.update(extra_info or {})
    samples = lay.samples(random.Random(0), VERIFY_SAMPLE)

    # mkstemp: O_CREAT | O_EXCL (a symlink or any file already at the name is never opened) under a
    # random name, so nobody can plant anything where the build will write.
    fd, tmp = tempfile.mkstemp(prefix=".%s." % os.path.basename(output), suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb", closefd=False) as f:
            writer = ArtifactWriter(f, SECTION_ORDER + PROVENANCE_SECTIONS)
            for name, data in lay.sections(whitelist, info):
                writer.add(name, data)
            del lay
            for name, data in prov.sections():
                writer.add(name, data)
            del prov
            writer.finish(report.generation, now_s)
        os.fchmod(fd, ARTIFACT_MODE)
        os.fsync(fd)
        verify(fd, tmp, samples)
        os.replace(tmp, output)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    finally:
        os.close(fd)
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    report.bytes = os.path.getsize(output)
    report.seconds = time.monotonic() - started
    return report
