"""Merging every source's rows into one trail set, by Maltrail's rules, in bounded memory.

Owns the merge. Rows are normalised (trailsdb/normalize.py) as they are read and kept as compact
records (key bytes, row number, kind, label index, source index) in sorted runs of RUN_ROWS rows,
spilled to unlinked temporary files beside the artifact; the runs are then merged, so every
trail's rows arrive together, in the order the sources listed them, and the whole set never sits
in memory at once. Per trail, Maltrail's rules (core/update.py):

- the label: of two rows, the later replaces the earlier unless it carries a low-priority word
  ("reputation", "attacker", ...) or the earlier came from a high-priority reference ((static),
  (custom), ...); a high-priority reference (without "history" in its label) or a high-priority
  word ("mass scanner", "ipinfo") always replaces;
- the reference: the winner's, followed by the other sources' references, `first (+second,third)`;
- a feed's address (an IP trail only feeds list) is kept when at least `ip_minimum_feeds`
  distinct feed references list it (Maltrail's IP_MINIMUM_FEEDS, 3); what a file or the custom
  directory lists is always kept;
- a trail only feeds list whose address (an IP, ip:port, range or URL host) is a bogon or a CDN
  address (trailsdb/ranges.py) is dropped, unless its label says sinkhole or parking;
- the labels "malware" (on an IPv4 trail) and "ransomware" get Maltrail's longer forms;
- a trail whose label matches [all] disabled_trails_info_regex (Maltrail's
  DISABLED_TRAILS_INFO_REGEX) goes, whatever lists it (the winning label is tested, before the
  clean-up below, as Maltrail does);
- whitelisted trails go.
Every drop is counted by reason. The merged trails come out in the artifact's order: regex and
user-agent trails first, in the order their sources listed them (their order decides which is
reported when several match), then every other trail by its key's bytes (a sorted order the next build can walk its
predecessor in, to carry provenance over: trailsdb/provenance.py).

Must not know the artifact's layout or how provenance is stored; reads no file but its sources
(through their readers) and its own spill files.
"""

from __future__ import annotations

import heapq
import ipaddress
import os
import re
import socket
import struct
import sys
import tempfile
from typing import Iterable, Iterator, NamedTuple

import msgpack

from matchers.artifact import (
    KIND_CIDR4, KIND_CIDR6, KIND_DOMAIN, KIND_IPPORT4, KIND_IPPORT6, KIND_IPV4, KIND_IPV6, KIND_REGEX,
    KIND_UA, KIND_UA_REGEX, KIND_URL,
)
from matchers.ips import parse_ipport
from trailsdb.normalize import DEFAULT_MIN_PREFIX, normalize_trail
from trailsdb.ranges import RangeSet, bogon_ranges
from trailsdb.sources import EMPTY_WHITELIST, FEED, Source, Whitelist

# Maltrail's merge priorities (core/settings.py): a trail listed twice keeps the label of the
# more trustworthy source.
LOW_PRIORITY_INFO_KEYWORDS = ("reputation", "attacker", "spammer", "abuser", "malicious", "dnspod",
                              "nicru", "crawler", "compromised", "bad history")
HIGH_PRIORITY_INFO_KEYWORDS = ("mass scanner", "ipinfo")
HIGH_PRIORITY_REFERENCES = ("bambenekconsulting.com", "github.com/stamparm/blackbook", "(static)", "(custom)")
# Labels under which an address in a bogon or CDN range is the point, not a mistake.
RANGE_EXEMPT_INFO_KEYWORDS = ("sinkhole", "parking")
DEFAULT_IP_MINIMUM_FEEDS = 3

# Rows held in memory before a sorted run is spilled: ~80 bytes each (one bytes object and its
# place in a list), so a run costs ~16 MB whatever the size of the sources.
RUN_ROWS = 200_000
_WRITE_BATCH = 20_000
_READ_BYTES = 1 << 18

REJECT_EXAMPLES = 5

# Reasons a normalised trail is dropped by the merge (BuildReport.dropped).
DROP_MIN_FEEDS = "address listed by fewer than %d feeds ([all] ip_minimum_feeds)"
DROP_BOGON = "feed address in a bogon range (%s)"
DROP_CDN = "feed address in a CDN range (%s)"
DROP_INFO = "label matches [all] disabled_trails_info_regex"

# A row is one bytes record: its slot, escaped and terminated so that records sort as their
# slots' bytes do, then the row's number, kind, label and source, big-endian (so rows of one slot
# sort in the order they were read):
#   slot with 0x00 written 0x00 0x01 | 0x00 0x00 | row u32 | kind u8 | label u32 | source u16
# Bytes compare in C, which keeps sorting and merging cheap; one object per row keeps them small.
# The slot's first byte puts regex and user-agent trails (which match by pattern, in the order
# they were listed; then their kind byte) before every other trail, whose order is its key's bytes.
_SPECIAL = b"\x01"
_ORDINARY = b"\x02"
_SPECIAL_KINDS = (KIND_REGEX, KIND_UA, KIND_UA_REGEX)
_END = b"\x00\x00"
_TAIL = struct.Struct(">IBIH")
_TAIL_BYTES = _TAIL.size
MAX_ROWS = 1 << 32
MAX_SOURCES = 1 << 16


class Rules(NamedTuple):
    """What the merge applies beyond the label priorities."""
    ip_minimum_feeds: int = DEFAULT_IP_MINIMUM_FEEDS
    bogons: RangeSet | None = None       # None: trailsdb/ranges.py's list
    cdn: RangeSet | None = None          # None: no CDN ranges known
    whitelist: Whitelist = EMPTY_WHITELIST
    drop_info: re.Pattern | None = None  # labels whose trails are dropped; None: none


class Trail(NamedTuple):
    """One trail of the merged set."""
    kind: int
    key: bytes           # UTF-8 (surrogateescape) of the normalised key
    info: str
    reference: str
    sources: tuple       # indices of the sources that list it, ascending
    first_row: int       # the number of its first row over all sources (source order)


def replaces(current: tuple[str, str], new: tuple[str, str]) -> bool:
    """Maltrail's merge rule (core/update.py _merge) for a key already present: whether the
    (info, reference) `new` replaces `current`."""
    info, reference = new
    if reference in HIGH_PRIORITY_REFERENCES and "history" not in info:
        return True
    if any(k in info for k in HIGH_PRIORITY_INFO_KEYWORDS):
        return True
    if any(k in info for k in LOW_PRIORITY_INFO_KEYWORDS) or current[1] in HIGH_PRIORITY_REFERENCES:
        return False
    return True


def relabel(kind: int, info: str) -> str:
    """Maltrail's label clean-up after merging (core/update.py): a bare "malware" on an address
    says too little, a bare "ransomware" lacks its category."""
    if info == "malware" and kind == KIND_IPV4:
        return "potential malware site"
    if info == "ransomware":
        return "ransomware (malware)"
    return info


def reference_form(reference: str, references: set) -> str:
    """Maltrail's reference of a trail several sources list: the winner's, then the others,
    sorted, `first (+second,third)`; a reference that already has that form keeps it."""
    others = sorted(references - {reference})
    if others and " (+" not in reference:
        return "%s (+%s)" % (reference, ",".join(others))
    return reference


def whitelisted(kind: int, key: str, wl: Whitelist) -> bool:
    if wl is EMPTY_WHITELIST:
        return False
    if kind == KIND_DOMAIN:
        return wl.domain_listed(key)
    if kind == KIND_URL:
        host = url_host(key)
        return wl.domain_listed(host) or _ip_text_listed(host, wl)
    if kind in (KIND_IPV4, KIND_IPV6):
        return wl.ip_listed(ipaddress.ip_address(key))
    if kind in (KIND_IPPORT4, KIND_IPPORT6):
        return wl.ip_listed(ipaddress.ip_address(parse_ipport(key)[0]))
    if kind in (KIND_CIDR4, KIND_CIDR6):
        net = ipaddress.ip_network(key)
        return any(net.version == w.version and net.subnet_of(w) for w in wl.networks)
    return False


def url_host(key: str) -> str:
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


def leading_address(kind: int, key: str) -> tuple[int, int] | None:
    """(IP version, address) a trail starts with: the address of an IP or ip:port trail, the
    first address of a range, the host of a URL when it is an address (Maltrail's leading_ipv4,
    IPv6 too); None for names."""
    if kind == KIND_IPV4:
        return 4, int.from_bytes(socket.inet_aton(key), "big")
    if kind == KIND_IPV6:
        return 6, int.from_bytes(socket.inet_pton(socket.AF_INET6, key), "big")
    if kind in (KIND_IPPORT4, KIND_IPPORT6, KIND_CIDR4, KIND_CIDR6, KIND_URL):
        if kind in (KIND_IPPORT4, KIND_IPPORT6):
            text = parse_ipport(key)[0]
        elif kind == KIND_URL:
            text = url_host(key)
        else:
            text = key.split("/", 1)[0]
        try:
            a = ipaddress.ip_address(text)
        except ValueError:
            return None
        return a.version, int(a)
    return None


class _Runs:
    """Sorted runs of records: in memory while they fit in one, else spilled to unlinked
    temporary files in `directory` (beside the artifact: /tmp may be a tmpfs, i.e. memory)."""

    def __init__(self, directory: str | None, run_rows: int):
        self._directory = directory
        self._run_rows = run_rows
        self._buffer: list = []
        self._files: list = []

    def add(self, record: bytes) -> None:
        self._buffer.append(record)
        if len(self._buffer) >= self._run_rows:
            self._spill()

    def _spill(self) -> None:
        self._buffer.sort()
        f = tempfile.TemporaryFile(dir=self._directory, prefix=".trails-merge.")
        try:
            pack = msgpack.Packer(use_bin_type=True).pack
            buffer = self._buffer
            for start in range(0, len(buffer), _WRITE_BATCH):
                f.write(b"".join(map(pack, buffer[start:start + _WRITE_BATCH])))
            f.flush()
        except BaseException:
            f.close()
            raise
        self._files.append(f)
        self._buffer = []

    def streams(self) -> list[Iterator[bytes]]:
        """Every run, each an iterator of records in sorted order."""
        if not self._files:
            self._buffer.sort()
            buffer, self._buffer = self._buffer, []
            return [iter(buffer)]
        if self._buffer:
            self._spill()
        streams = []
        for f in self._files:
            f.seek(0)
            streams.append(msgpack.Unpacker(f, raw=False, read_size=_READ_BYTES))
        return streams

    def close(self) -> None:
        for f in self._files:
            f.close()
        self._files = []
        self._buffer = []

    @property
    def spilled(self) -> int:
        return len(self._files)


def _read(sources: list[Source], runs: _Runs, report, min_prefix, progress: bool) -> list[tuple[str, str]]:
    """Reads and normalises every row into `runs` (records: see _TAIL); returns the distinct
    (info, reference) pairs the records index."""
    pair_index: dict[tuple[str, str], int] = {}
    pairs: list[tuple[str, str]] = []
    rejected, examples = report.rejected, report.reject_examples
    seq = 0
    if len(sources) > MAX_SOURCES:
        raise ValueError("at most %d sources" % MAX_SOURCES)
    for index, source in enumerate(sources):
        rows = source.rows
        if progress:
            rows = _progress_rows(rows, source.name)
        count = 0
        add = runs.add
        for raw in rows:
            count += 1
            kind, key = normalize_trail(raw.trail, raw.reference, min_prefix)
            if kind is None:
                rejected[key] += 1
                shown = examples.setdefault(key, [])
                if len(shown) < REJECT_EXAMPLES:
                    shown.append("%s %r" % (raw.origin, raw.trail))
                continue
            pair = (raw.info, raw.reference)
            p = pair_index.get(pair)
            if p is None:
                p = pair_index[pair] = len(pairs)
                pairs.append(pair)
            raw_key = key.encode("utf-8", "surrogateescape")
            if b"\x00" in raw_key:
                raw_key = raw_key.replace(b"\x00", b"\x00\x01")
            if kind in _SPECIAL_KINDS:
                slot = _SPECIAL + bytes((kind,)) + raw_key
            else:
                slot = _ORDINARY + raw_key
            add(slot + _END + _TAIL.pack(seq, kind, p, index))
            seq += 1
            if seq >= MAX_ROWS:
                raise ValueError("more than %d rows" % MAX_ROWS)
        report.source_rows[index] = count
    return pairs


def _progress_rows(stream, name: str):
    """The rows of one source, counted on stderr as they are read (tqdm: a rate, no total, since
    rows are only known once read)."""
    from tqdm import tqdm
    with tqdm(stream, desc=os.path.basename(os.path.normpath(name)) or name, unit=" rows", unit_scale=True,
              file=sys.stderr, leave=True, mininterval=0.25) as rows:
        yield from rows


def _groups(records: Iterable[bytes]) -> Iterator[tuple[bytes, list]]:
    """(slot with its end mark, [record tails]) of one slot at a time, tails (row, kind, label,
    source) in row order: the runs are sorted by slot, then row."""
    slot, tails = None, None
    unpack = _TAIL.unpack_from
    for record in records:
        at = len(record) - _TAIL_BYTES
        head = record[:at]
        if head == slot:
            tails.append(unpack(record, at))
            continue
        if slot is not None:
            yield slot, tails
        slot, tails = head, [unpack(record, at)]
    if slot is not None:
        yield slot, tails


def merge(sources: list[Source], rules: Rules, report, min_prefix: tuple[int, int] = DEFAULT_MIN_PREFIX,
          progress: bool = False, spill_dir: str | None = None, run_rows: int | None = None) -> Iterator[Trail]:
    """The merged trail set of `sources` (read in order), in the artifact's order. `report` (a
    compile.BuildReport) receives the counts: rows, rejected (+ examples), duplicates,
    whitelisted, dropped, per-source rows and trails (source_rows, source_trails). Raises what
    the sources' readers raise (SourceError). Spill files go to `spill_dir`; `run_rows` rows are
    held before a run is spilled (default RUN_ROWS)."""
    report.source_rows = [0] * len(sources)
    report.source_trails = [0] * len(sources)
    runs = _Runs(spill_dir, run_rows or RUN_ROWS)
    try:
        pairs = _read(sources, runs, report, min_prefix, progress)
        streams = runs.streams()
        report.spilled_runs = runs.spilled
        yield from _merged(streams, pairs, [s.kind == FEED for s in sources], rules, report)
    finally:
        runs.close()


def _merged(streams, pairs, from_feed: list[bool], rules: Rules, report) -> Iterator[Trail]:
    bogons = rules.bogons if rules.bogons is not None else bogon_ranges()
    cdn = rules.cdn
    minimum = rules.ip_minimum_feeds
    wl = rules.whitelist
    drop_info = rules.drop_info
    dropped = report.dropped
    listed = report.source_trails
    specials: list[Trail] | None = []
    records = streams[0] if len(streams) == 1 else heapq.merge(*streams)
    for slot, group in _groups(records):
        first_row, kind, p, s = group[0]
        if len(group) == 1:
            info, reference = pairs[p]
            sources = (s,)
            references = None
        else:
            report.duplicates += len(group) - 1
            win = p
            for record in group[1:]:
                if replaces(pairs[win], pairs[record[2]]):
                    win = record[2]
            info, reference = pairs[win]
            sources = tuple(sorted({record[3] for record in group}))
            references = {pairs[record[2]][1] for record in group}
        special = slot[:1] == _SPECIAL
        raw_key = slot[2 if special else 1:-len(_END)]
        if b"\x00" in raw_key:
            raw_key = raw_key.replace(b"\x00\x01", b"\x00")
        key = raw_key.decode("utf-8", "surrogateescape")
        if drop_info is not None and drop_info.search(info):
            dropped[DROP_INFO] += 1
            continue
        if all(from_feed[i] for i in sources):
            reason = _feed_rule(kind, key, info, len(references) if references else 1, minimum, bogons, cdn)
            if reason is not None:
                dropped[reason] += 1
                continue
        if whitelisted(kind, key, wl):
            report.whitelisted += 1
            continue
        info = relabel(kind, info)
        if references is not None:
            reference = reference_form(reference, references)
        for i in sources:
            listed[i] += 1
        trail = Trail(kind, raw_key, info, reference, sources, first_row)
        if specials is not None:
            if special:
                specials.append(trail)
                continue
            # The first ordinary trail: regex and user-agent trails go first, in listing order.
            specials.sort(key=lambda t: t.first_row)
            yield from specials
            specials = None
        yield trail
    if specials:
        specials.sort(key=lambda t: t.first_row)
        yield from specials


def _feed_rule(kind: int, key: str, info: str, references: int, minimum: int, bogons: RangeSet,
               cdn: RangeSet | None) -> str | None:
    """Why a trail only feeds list is dropped, or None."""
    if kind in (KIND_IPV4, KIND_IPV6) and minimum > 1 and references < minimum:
        return DROP_MIN_FEEDS % minimum
    address = leading_address(kind, key)
    if address is None or any(k in info for k in RANGE_EXEMPT_INFO_KEYWORDS):
        return None
    label = bogons.label(*address)
    if label is not None:
        return DROP_BOGON % (label or "bogon")
    if cdn:
        label = cdn.label(*address)
        if label is not None:
            return DROP_CDN % (label or "CDN")
    return None
