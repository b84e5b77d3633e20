"""Compiling trail sources into one artifact, and publishing it atomically.

Owns the build: read every source in order, normalise each trail (trailsdb/normalize.py), merge
duplicates with Maltrail's priority rule, drop whitelisted trails, assign trail ids, lay out the
sections matchers/artifact.py describes (roaring bitmaps for IPv4 and CIDR, a 64-bit roaring
bitmap for ip:port, C hash tables for domains and URLs, id lists for regex and user-agent trails,
the trail table and its (info, reference) pairs), write them to a temporary file beside the
target, verify it loads and finds a sample of its own trails, then rename it into place with the
next generation number. A reader therefore sees the old artifact or the new one, never a mix.
The temporary file is created exclusively under an unpredictable name (a symlink planted where it
will be cannot redirect the write), and a build holding less than half the trails of the artifact
it would replace is refused unless forced (a source that came back short must not quietly shrink
detection).

Must not be imported by the packet path (workers/), nor import engine/ (whether a directory is
safe to write into is the caller's question): it only produces files.
"""

from __future__ import annotations

import ipaddress
import os
import random
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
    KIND_CIDR4, KIND_CIDR6, KIND_DOMAIN, KIND_IPPORT4, KIND_IPPORT6, KIND_IPV4, KIND_IPV6,
    KIND_NAMES, KIND_PATH, KIND_REGEX, KIND_UA, KIND_URL, S_CIDR4, S_CIDR4_LIST, S_CIDR6_LIST,
    S_DOMAINS, S_INFO, S_IP4, S_IP4_IDS, S_IP4_KEYS, S_IP4_P24, S_IP6, S_IP6_IDS, S_IPPORT4, S_IPPORT4_IDS,
    S_IPPORT4_KEYS, S_IPPORT6, S_IPPORT6_IDS, S_META, S_REGEX, S_STRINGS, S_TRAILS,
    S_UA, S_URLS, S_WHITELIST, TRAIL_RECORD, Artifact, ArtifactError, existing_summary, write_artifact,
)
from matchers.ips import ipport4_key, ipport6_key, parse_ipport
from trailsdb.normalize import DEFAULT_MIN_PREFIX, normalize_trail
from trailsdb.sources import EMPTY_WHITELIST, Whitelist, read_custom_dir, read_source, read_whitelist

# Maltrail's merge priorities (core/settings.py): a trail listed twice keeps the label of the
# more trustworthy source.
LOW_PRIORITY_INFO_KEYWORDS = ("reputation", "attacker", "spammer", "abuser", "malicious", "dnspod",
                              "nicru", "crawler", "compromised", "bad history")
HIGH_PRIORITY_INFO_KEYWORDS = ("mass scanner", "ipinfo")
HIGH_PRIORITY_REFERENCES = ("bambenekconsulting.com", "github.com/stamparm/blackbook", "(static)", "(custom)")

REJECT_EXAMPLES = 5
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
    sources: list = field(default_factory=list)
    seconds: float = 0.0
    bytes: int = 0

    def lines(self) -> list[str]:
        out = ["artifact %s (generation %d): %d trails, %.1f MB, built in %.1f s"
               % (self.output, self.generation, self.trails, self.bytes / 1e6, self.seconds)]
        for kind, n in sorted(self.by_kind.items(), key=lambda kv: -kv[1]):
            out.append("  %-12s %9d" % (kind, n))
        out.append("rows read: %d; duplicates merged: %d; removed by whitelist: %d"
                   % (self.rows["rows read"], self.duplicates, self.whitelisted))
        for reason, n in sorted(self.rejected.items(), key=lambda kv: -kv[1]):
            out.append("rejected %d: %s (e.g. %s)" % (n, reason, ", ".join(self.reject_examples[reason])))
        if self.rows["csv rows without 3 fields"]:
            out.append("skipped %d csv rows without 3 fields" % self.rows["csv rows without 3 fields"])
        return out


def _replaces(current: tuple[str, str], new: tuple[str, str]) -> bool:
    """Maltrail's merge rule (core/update.py _merge), for a key already present."""
    info, reference = new
    if reference in HIGH_PRIORITY_REFERENCES and "history" not in info:
        return True
    if any(k in info for k in HIGH_PRIORITY_INFO_KEYWORDS):
        return True
    if any(k in info for k in LOW_PRIORITY_INFO_KEYWORDS) or current[1] in HIGH_PRIORITY_REFERENCES:
        return False
    return True


def _whitelisted(kind: int, key: str, wl: Whitelist) -> bool:
    if wl is EMPTY_WHITELIST:
        return False
    if kind == KIND_DOMAIN:
        return wl.domain_listed(key)
    if kind == KIND_URL:
        host = _url_host(key)
        return wl.domain_listed(host) or _ip_text_listed(host, wl)
    if kind in (KIND_IPV4, KIND_IPV6):
        return wl.ip_listed(ipaddress.ip_address(key))
    if kind in (KIND_IPPORT4, KIND_IPPORT6):
        return wl.ip_listed(ipaddress.ip_address(parse_ipport(key)[0]))
    if kind in (KIND_CIDR4, KIND_CIDR6):
        net = ipaddress.ip_network(key)
        return any(net.version == w.version and net.subnet_of(w) for w in wl.networks)
    return False


def _url_host(key: str) -> str:
    """The host of a host/path trail: without a port; IPv6 with or without brackets."""
    if key.startswith("["):
        return key[1:key.find("]")] if "]" in key else key
    host = key.split("/", 1)[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _ip_text_listed(text: str, wl: Whitelist) -> bool:
    try:
        return wl.ip_listed(ipaddress.ip_address(text))
    except ValueError:
        return False


def collect(sources, custom_dir: str = "", whitelist: Whitelist = EMPTY_WHITELIST,
            report: BuildReport | None = None, min_prefix: tuple[int, int] = DEFAULT_MIN_PREFIX,
            progress: bool = False) -> tuple[list, list]:
    """Reads, normalises and merges. Returns (entries, meta): entries are (kind, key, meta index)
    in first-seen order; meta is the list of distinct (info, reference) pairs. `min_prefix`: the
    shortest (IPv4, IPv6) CIDR prefixes kept (trailsdb/normalize.py). `progress` shows the rows
    read from each source on stderr (a terminal)."""
    report = report or BuildReport()
    entries: dict[str, list] = {}
    meta_index: dict[tuple[str, str], int] = {}
    meta: list[tuple[str, str]] = []

    streams = [(path, read_source(path, report.rows)) for path in sources]
    if custom_dir:
        streams.append((custom_dir, read_custom_dir(custom_dir, report.rows)))
    report.sources = list(sources) + ([custom_dir] if custom_dir else [])
    for path, stream in streams:
        if progress:
            stream = _progress_rows(stream, path)
        for raw in stream:
            kind, key = normalize_trail(raw.trail, raw.reference, min_prefix)
            if kind is None:
                report.rejected[key] += 1
                examples = report.reject_examples.setdefault(key, [])
                if len(examples) < REJECT_EXAMPLES:
                    examples.append("%s %r" % (raw.origin, raw.trail))
                continue
            pair = (raw.info, raw.reference)
            m = meta_index.get(pair)
            if m is None:
                m = meta_index[pair] = len(meta)
                meta.append(pair)
            # UA patterns live in their own namespace: "ua:abc" and the domain "abc" differ.
            slot = key if kind != KIND_UA else "\0ua\0" + key
            current = entries.get(slot)
            if current is None:
                entries[slot] = [kind, key, m]
            else:
                report.duplicates += 1
                if _replaces(meta[current[2]], pair):
                    current[0], current[2] = kind, m
    kept = []
    for kind, key, m in entries.values():
        if _whitelisted(kind, key, whitelist):
            report.whitelisted += 1
            continue
        kept.append((kind, key, m))
    return kept, meta


def _progress_rows(stream, path: str):
    """The rows of one source, counted on stderr as they are read (tqdm: a rate, no total, since
    rows are only known once read)."""
    from tqdm import tqdm
    with tqdm(stream, desc=os.path.basename(os.path.normpath(path)) or path, unit=" rows", unit_scale=True,
              file=sys.stderr, leave=True, mininterval=0.25) as rows:
        yield from rows


def _bitmap_bytes(values) -> bytes:
    bm = pyroaring.BitMap(values)
    bm.run_optimize()
    return bm.serialize()


def layout(entries: list, meta: list, whitelist: Whitelist, info: dict) -> list[tuple[str, bytes]]:
    """The artifact's sections for entries (kind, key, meta index); trail id = position."""
    strings = bytearray()
    trails = bytearray(TRAIL_RECORD.size * len(entries))
    ip4, cidr4, ipport4, ip6, cidr6, ipport6 = [], [], [], [], [], []
    domains, urls = array("I"), array("I")
    regex, uas = [], []
    for trail_id, (kind, key, m) in enumerate(entries):
        raw = key.encode("utf-8", "surrogateescape")
        TRAIL_RECORD.pack_into(trails, trail_id * TRAIL_RECORD.size, len(strings), len(raw), kind, 0, m)
        strings += raw
        if kind == KIND_IPV4:
            ip4.append((int(ipaddress.IPv4Address(key)), trail_id))
        elif kind == KIND_DOMAIN:
            domains.append(trail_id)
        elif kind == KIND_IPPORT4:
            host, port = parse_ipport(key)
            ipport4.append((ipport4_key(int(ipaddress.IPv4Address(host)), port), trail_id))
        elif kind in (KIND_URL, KIND_PATH):
            urls.append(trail_id)
        elif kind == KIND_CIDR4:
            net = ipaddress.IPv4Network(key)
            cidr4.append((int(net.network_address), int(net.broadcast_address), trail_id, net.prefixlen))
        elif kind == KIND_IPV6:
            ip6.append((int(ipaddress.IPv6Address(key)).to_bytes(16, "big"), trail_id))
        elif kind == KIND_IPPORT6:
            host, port = parse_ipport(key)
            ipport6.append((ipport6_key(int(ipaddress.IPv6Address(host)), port), trail_id))
        elif kind == KIND_CIDR6:
            net = ipaddress.IPv6Network(key)
            cidr6.append((int(net.network_address), int(net.broadcast_address), trail_id, net.prefixlen))
        elif kind == KIND_REGEX:
            regex.append([trail_id, key])
        elif kind == KIND_UA:
            uas.append([trail_id, key])

    sections = [(S_STRINGS, bytes(strings)), (S_TRAILS, bytes(trails)),
                (S_META, msgpack.packb([list(p) for p in meta], use_bin_type=True))]

    ip4.sort()
    sections += [(S_IP4, _bitmap_bytes(a for a, _ in ip4)),
                 (S_IP4_KEYS, array("I", (a for a, _ in ip4)).tobytes()),
                 (S_IP4_IDS, array("I", (i for _, i in ip4)).tobytes())]
    covered = pyroaring.BitMap()
    for first, last, _, _ in cidr4:
        covered.add_range(first, last + 1)
    covered.run_optimize()
    cidr4.sort(key=lambda c: (-c[3], c[2]))  # most specific first, then lowest id
    sections += [(S_CIDR4, covered.serialize()),
                 (S_CIDR4_LIST, b"".join(struct.pack("<IIII", *c) for c in cidr4))]
    ipport4.sort()
    bm64 = pyroaring.BitMap64(k for k, _ in ipport4)
    bm64.run_optimize()
    sections += [(S_IPPORT4, bm64.serialize()),
                 (S_IPPORT4_KEYS, array("Q", (k for k, _ in ipport4)).tobytes()),
                 (S_IPPORT4_IDS, array("I", (i for _, i in ipport4)).tobytes())]
    p24 = bytearray(1 << 21)
    for address in [a for a, _ in ip4] + [k & 0xFFFFFFFF for k, _ in ipport4]:
        p24[address >> 11] |= 1 << ((address >> 8) & 7)
    for first, last, _, _ in cidr4:
        for prefix in range(first >> 8, (last >> 8) + 1):
            p24[prefix >> 3] |= 1 << (prefix & 7)
    sections.append((S_IP4_P24, bytes(p24)))
    ip6.sort()
    ipport6.sort()
    cidr6.sort(key=lambda c: (-c[3], c[2]))
    sections += [(S_IP6, b"".join(a for a, _ in ip6)), (S_IP6_IDS, array("I", (i for _, i in ip6)).tobytes()),
                 (S_IPPORT6, b"".join(k for k, _ in ipport6)),
                 (S_IPPORT6_IDS, array("I", (i for _, i in ipport6)).tobytes()),
                 (S_CIDR6_LIST, b"".join(f.to_bytes(16, "big") + l.to_bytes(16, "big")
                                         + struct.pack("<II", i, p) for f, l, i, p in cidr6))]
    trails_b, strings_b = sections[1][1], sections[0][1]
    sections += [(S_DOMAINS, _native.build_hash_table(trails_b, strings_b, domains.tobytes())),
                 (S_URLS, _native.build_hash_table(trails_b, strings_b, urls.tobytes())),
                 (S_REGEX, msgpack.packb(regex, use_bin_type=True)), (S_UA, msgpack.packb(uas, use_bin_type=True))]
    sections.append((S_WHITELIST, msgpack.packb({
        "domains": sorted(whitelist.domains),
        "ips": sorted(str(a) for a in whitelist.ips),
        "cidrs": [str(n) for n in whitelist.networks]}, use_bin_type=True)))
    sections.append((S_INFO, msgpack.packb(info, use_bin_type=True)))
    return sections


def verify(fd: int, name: str, entries: list) -> None:
    """Loads the fresh artifact (open at `fd`: what was written, not whatever its name holds now)
    with the fast matchers, checking every section's checksum, and checks a sample of its own trails
    is found, so a broken build never replaces a working one."""
    artifact = Artifact.from_fd(fd, name)
    matchers = TrailMatchers.load(artifact)
    rng = random.Random(0)
    by_kind: dict[int, list[int]] = {}
    for trail_id, (kind, _, _) in enumerate(entries):
        by_kind.setdefault(kind, []).append(trail_id)
    for kind, ids in by_kind.items():
        for trail_id in rng.sample(ids, min(VERIFY_SAMPLE, len(ids))):
            key = artifact.key(trail_id)
            if not _found(matchers, kind, key, trail_id):
                raise ArtifactError("%s: self-check failed: %s trail %r not found" % (path, KIND_NAMES[kind], key))


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
    return True  # regex and user-agent trails are compiled at load; load itself is the check


def build(sources, output: str, custom_dir: str = "", whitelist_file: str = "",
          min_prefix: tuple[int, int] = DEFAULT_MIN_PREFIX, force: bool = False, progress: bool = False) -> BuildReport:
    """Builds and atomically publishes an artifact at `output`. Raises SourceError, ArtifactError
    (ShrinkRefused when the build holds less than half the trails of the artifact at `output`
    and `force` is not set) or OSError. `min_prefix`: the shortest (IPv4, IPv6) CIDR prefixes
    kept; wider ranges are rejected. `progress` shows the rows read per source on stderr."""
    started = time.monotonic()
    report = BuildReport(output=output)
    whitelist = read_whitelist(whitelist_file) if whitelist_file else EMPTY_WHITELIST
    entries, meta = collect(sources, custom_dir, whitelist, report, min_prefix, progress)
    report.trails = len(entries)
    for kind, _, _ in entries:
        report.by_kind[KIND_NAMES[kind]] += 1
    previous = existing_summary(output)
    if previous is not None and previous[1] is not None and not force \
            and report.trails < REPLACE_MIN_FRACTION * previous[1]:
        raise ShrinkRefused("%s holds %d trails and this build only %d, less than half: refusing to replace it "
                            "(a source may have come back short; pass --force to replace it anyway)"
                            % (output, previous[1], report.trails))
    report.generation = (previous[0] if previous is not None else 0) + 1
    if progress:  # the rows are read; what follows takes a few seconds for a million trails
        sys.stderr.write("laying out, writing and checking %d trails\n" % report.trails)
        sys.stderr.flush()
    info = {"sources": report.sources, "built_s": int(time.time()), "rows": dict(report.rows),
            "rejected": dict(report.rejected), "duplicates": report.duplicates,
            "whitelisted": report.whitelisted, "by_kind": dict(report.by_kind)}
    sections = layout(entries, meta, whitelist, info)

    directory = os.path.dirname(os.path.abspath(output))
    os.makedirs(directory, exist_ok=True)
    # mkstemp: O_CREAT | O_EXCL (a symlink or any file already at the name is never opened) under a
    # random name, so nobody can plant anything where the build will write.
    fd, tmp = tempfile.mkstemp(prefix=".%s." % os.path.basename(output), suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb", closefd=False) as f:
            write_artifact(f, report.generation, int(time.time()), sections)
        os.fchmod(fd, ARTIFACT_MODE)
        os.fsync(fd)
        verify(fd, tmp, entries)
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
