"""Provenance: which sources list each trail, and since when.

Owns the provenance sections of the artifact (matchers/artifact.py S_PROV_*), writing them at
build time and reading them for `trails check` and `trails stats`. A trail's provenance is, per
source that lists it or once did: the source, the first build that saw it there and the last.
The previous artifact is the memory of earlier builds: its trails are in the order the builder
writes (regex and user-agent trails first, then by key bytes: trailsdb/merge.py), so the new
build walks it once, in step with its own sorted trails, reading its trail records and key text
through a small window rather than mapping it. Provenances repeat (most trails share their
sources and first build), so they are stored once each ("classes") and every trail holds the
index of its class, in a zstd-compressed u32 array: a few MB for 1.6M trails.

Also reads the feeds' status files (trailsdb/feeds/ writes them) for `trails stats`.

Must not be imported by the packet path: the sensor loads artifacts, never their provenance.
"""

from __future__ import annotations

import json
import os
import stat
import time
from array import array
from typing import NamedTuple

import msgpack
import zstandard

from matchers.artifact import (
    KIND_REGEX, KIND_UA, KIND_UA_REGEX, S_PROV_CLASSES, S_PROV_IDS, S_PROV_SOURCES, S_STRINGS, S_TRAILS, TRAIL_RECORD,
    ArtifactError, parse_layout, verify_sections,
)

# prov_sources "order": trail ids follow the builder's order (trailsdb/merge.py).
BUILDER_ORDER = 1
_SPECIAL_KINDS = (KIND_REGEX, KIND_UA, KIND_UA_REGEX)
_READ_RECORDS = 1 << 16
_WINDOW_BYTES = 1 << 20
_HEAD_BYTES = 1 << 16
# A feed's status file is a few hundred bytes; anything much larger is not one.
MAX_STATUS_BYTES = 1 << 16


class SourceSeen(NamedTuple):
    name: str
    kind: str
    first_s: int     # the build that first saw the trail in this source
    last_s: int      # the last build that saw it there (the artifact's own build while it still does)


class _PreviousArtifact:
    """The artifact a build replaces, read for its provenance: trail by trail, in id order,
    through pread (no mapping: a build's memory stays its own)."""

    def __init__(self, fd: int, path: str, layout, sources: list, classes: list, ids: array):
        self._fd, self.path = fd, path
        self.sources, self.classes, self.ids = sources, classes, ids
        self._trails = layout.sections[S_TRAILS][:2]
        self._strings = layout.sections[S_STRINGS][:2]
        self.count = self._trails[1] // TRAIL_RECORD.size
        self._window_at, self._window = 0, b""

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def entries(self):
        """(kind, key bytes, class index) of every trail, in id order."""
        offset, length = self._trails
        chunk = TRAIL_RECORD.size * _READ_RECORDS
        trail_id = 0
        for at in range(0, length, chunk):
            data = os.pread(self._fd, min(chunk, length - at), offset + at)
            if len(data) != min(chunk, length - at):
                raise ArtifactError("%s: truncated while it was being read" % self.path)
            for str_off, str_len, kind, _, _ in TRAIL_RECORD.iter_unpack(data):
                yield kind, self._key(str_off, str_len), self.ids[trail_id]
                trail_id += 1

    def _key(self, str_off: int, str_len: int) -> bytes:
        start = str_off - self._window_at
        if start < 0 or start + str_len > len(self._window):
            # Keys are written in id order, so a window read forward serves the next ones too.
            base, length = self._strings
            if str_off + str_len > length:
                raise ArtifactError("%s: a trail points outside its string section" % self.path)
            size = min(max(_WINDOW_BYTES, str_len), length - str_off)
            self._window = os.pread(self._fd, size, base + str_off)
            self._window_at, start = str_off, 0
            if len(self._window) < str_len:
                raise ArtifactError("%s: truncated while it was being read" % self.path)
        return self._window[start:start + str_len]


def open_previous(path: str) -> tuple[_PreviousArtifact | None, str]:
    """The artifact at `path`, opened for its provenance, or (None, why not): there is none, it
    is of an older format or holds no provenance, or it fails its checksums (a damaged file's
    provenance is not carried over; the build goes on without it)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        return None, "no previous artifact"
    except OSError as exc:
        return None, "previous artifact unreadable (%s)" % (exc.strerror or exc)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ArtifactError("not a regular file")
        layout = parse_layout(os.pread(fd, _HEAD_BYTES, 0), st.st_size, path, any_version=True)
        if not all(name in layout.sections for name in (S_PROV_SOURCES, S_PROV_CLASSES, S_PROV_IDS)):
            raise ArtifactError("no provenance in it (format %d)" % layout.version)
        verify_sections(fd, layout, path)
        sources_doc = msgpack.unpackb(_read_section(fd, layout, S_PROV_SOURCES), raw=False)
        if not isinstance(sources_doc, dict) or sources_doc.get("order") != BUILDER_ORDER:
            raise ArtifactError("its trails are not in the builder's order")
        sources = [(str(name), str(kind)) for name, kind in sources_doc["sources"]]
        classes = _check_classes(msgpack.unpackb(_read_section(fd, layout, S_PROV_CLASSES), raw=False),
                                 len(sources))
        count = layout.sections[S_TRAILS][1] // TRAIL_RECORD.size
        ids = _decode_ids(_read_section(fd, layout, S_PROV_IDS), count, len(classes))
        return _PreviousArtifact(fd, path, layout, sources, classes, ids), ""
    except (ArtifactError, ValueError, TypeError, KeyError, msgpack.UnpackException, zstandard.ZstdError) as exc:
        os.close(fd)
        text = str(exc)
        return None, "previous artifact's provenance not used: %s" % (text.split(": ", 1)[-1] if path in text else text)
    except BaseException:
        os.close(fd)
        raise


def _read_section(fd: int, layout, name: str) -> bytes:
    offset, length, _ = layout.sections[name]
    data = os.pread(fd, length, offset)
    if len(data) != length:
        raise ArtifactError("truncated while it was being read")
    return data


def _check_classes(classes, source_count: int) -> list[tuple]:
    """Classes as tuples of (source, first_s, last_s) triples, every source index in range."""
    out = []
    for flat in classes:
        if len(flat) % 3 or any(not isinstance(v, int) for v in flat):
            raise ValueError("a provenance class is not (source, first, last) triples")
        triples = tuple((flat[i], flat[i + 1], flat[i + 2]) for i in range(0, len(flat), 3))
        if any(not 0 <= s < source_count for s, _, _ in triples):
            raise ValueError("a provenance class names a source that is not listed")
        out.append(triples)
    return out


def _decode_ids(blob, count: int, class_count: int) -> array:
    raw = zstandard.ZstdDecompressor().decompress(bytes(blob), max_output_size=max(4 * count, 1))
    if len(raw) != 4 * count:
        raise ValueError("provenance for %d trails where the artifact holds %d" % (len(raw) // 4, count))
    ids = array("I")
    ids.frombytes(raw)
    if count and max(ids) >= class_count:
        raise ValueError("a trail's provenance class is out of range")
    return ids


class ProvenanceWriter:
    """Gives each trail of a build its provenance, carried over from `previous` where that
    listed it, and lays out the provenance sections."""

    def __init__(self, sources: list[tuple[str, str]], now_s: int, previous: _PreviousArtifact | None = None):
        self.now_s = now_s
        self._sources = list(sources)                      # (name, kind); grows by previous-only ones
        self._index = {name: i for i, (name, _) in enumerate(self._sources)}
        self._classes: list[tuple] = []
        self._class_index: dict[tuple, int] = {}
        self._memo: dict[tuple, int] = {}
        self.ids = array("I")
        self.carried = 0                                   # trails the previous artifact also held
        self._previous = previous
        self._prev_map: dict[int, int] = {}
        self._prev_specials: dict[tuple[int, bytes], int] = {}
        self._prev_iter = None
        self._prev_next = None
        self._prev_last = None
        if previous is not None:
            self._prev_iter = previous.entries()
            self._advance_past_specials()

    def _advance_past_specials(self) -> None:
        for kind, key, cls in self._prev_iter:
            if kind in _SPECIAL_KINDS:
                self._prev_specials[(kind, key)] = cls
                continue
            self._prev_next = (key, cls)
            return
        self._prev_next = None

    def _previous_class(self, kind: int, key: bytes) -> int:
        """The previous artifact's class for this trail, or -1. Ordinary trails are looked up by
        walking the previous artifact forward: both sides are sorted by key bytes."""
        if self._previous is None:
            return -1
        if kind in _SPECIAL_KINDS:
            return self._prev_specials.get((kind, key), -1)
        while self._prev_next is not None and self._prev_next[0] < key:
            self._step()
        if self._prev_next is not None and self._prev_next[0] == key:
            cls = self._prev_next[1]
            self._step()
            return cls
        return -1

    def _step(self) -> None:
        last = self._prev_next[0]
        try:
            kind, key, cls = next(self._prev_iter)
        except StopIteration:
            self._prev_next = None
            return
        if key <= last or kind in _SPECIAL_KINDS:
            # Not in the builder's order after all: stop carrying over rather than guess.
            self._prev_next = None
            return
        self._prev_next = (key, cls)

    def add(self, kind: int, key: bytes, sources: tuple) -> int:
        """Records the next trail (trail ids in order) listed now by `sources` (indices into
        the sources given at construction); returns its class."""
        prev = self._previous_class(kind, key)
        if prev >= 0:
            self.carried += 1
        memo_key = (sources, prev)
        cls = self._memo.get(memo_key)
        if cls is None:
            cls = self._memo[memo_key] = self._intern(self._combine(sources, prev))
        self.ids.append(cls)
        return cls

    def _combine(self, sources: tuple, prev: int) -> tuple:
        seen: dict[int, tuple[int, int]] = {}
        if prev >= 0:
            for source, first_s, last_s in self._previous.classes[prev]:
                # "Last seen at this build" means "listed now" (lines_for): a clock that went back
                # since an earlier build must not make a source that stopped look current.
                last_s = min(last_s, self.now_s - 1)
                seen[self._from_previous(source)] = (min(first_s, last_s), last_s)
        for source in sources:
            first_s = seen[source][0] if source in seen else self.now_s
            seen[source] = (min(first_s, self.now_s), self.now_s)
        return tuple((s, f, l) for s, (f, l) in sorted(seen.items()))

    def _from_previous(self, prev_source: int) -> int:
        index = self._prev_map.get(prev_source)
        if index is None:
            name, kind = self._previous.sources[prev_source]
            index = self._index.get(name)
            if index is None:
                index = self._index[name] = len(self._sources)
                self._sources.append((name, kind))
            self._prev_map[prev_source] = index
        return index

    def _intern(self, provenance: tuple) -> int:
        cls = self._class_index.get(provenance)
        if cls is None:
            cls = self._class_index[provenance] = len(self._classes)
            self._classes.append(provenance)
        return cls

    def sections(self) -> list[tuple[str, bytes]]:
        flat = [[v for triple in provenance for v in triple] for provenance in self._classes]
        return [
            (S_PROV_SOURCES, msgpack.packb({"order": BUILDER_ORDER, "built_s": self.now_s,
                                            "sources": [list(s) for s in self._sources]}, use_bin_type=True)),
            (S_PROV_CLASSES, msgpack.packb(flat, use_bin_type=True)),
            (S_PROV_IDS, zstandard.ZstdCompressor(level=3).compress(self.ids.tobytes())),
        ]

    @property
    def class_count(self) -> int:
        return len(self._classes)


class Provenance:
    """The provenance sections of a loaded artifact (matchers.Artifact), decoded on demand."""

    def __init__(self, sources: list[tuple[str, str]], built_s: int, classes: list[tuple], ids: array):
        self.sources, self.built_s, self._classes, self._ids = sources, built_s, classes, ids

    @classmethod
    def load(cls, artifact) -> "Provenance | None":
        """None when the artifact holds no provenance (format 2, or laid out without it); raises
        ArtifactError when its provenance does not decode."""
        if not all(artifact.has(name) for name in (S_PROV_SOURCES, S_PROV_CLASSES, S_PROV_IDS)):
            return None
        try:
            doc = msgpack.unpackb(artifact.section(S_PROV_SOURCES), raw=False)
            sources = [(str(name), str(kind)) for name, kind in doc["sources"]]
            classes = _check_classes(msgpack.unpackb(artifact.section(S_PROV_CLASSES), raw=False), len(sources))
            ids = _decode_ids(artifact.section(S_PROV_IDS), artifact.trail_count, len(classes))
            return cls(sources, int(doc.get("built_s", artifact.created_s)), classes, ids)
        except (ValueError, TypeError, KeyError, msgpack.UnpackException, zstandard.ZstdError) as exc:
            raise ArtifactError("%s: provenance unreadable: %s" % (artifact.path, exc)) from None

    def of(self, trail_id: int) -> list[SourceSeen]:
        """Every source that lists the trail or once did, in source order."""
        return [SourceSeen(*self.sources[s], first_s, last_s) for s, first_s, last_s in self._classes[self._ids[trail_id]]]


def lines_for(provenance: Provenance | None, trail_id: int, indent: str = "    ") -> list[str]:
    """`trails check`'s account of where a trail comes from."""
    if provenance is None:
        return [indent + "provenance: not recorded (an artifact built before format 3; the next build records it)"]
    out = []
    for seen in provenance.of(trail_id):
        what = "%s %s" % (seen.kind, seen.name)
        if seen.last_s >= provenance.built_s:
            out.append("%slisted by %s since %s" % (indent, what, _when(seen.first_s)))
        else:
            out.append("%sno longer listed by %s (listed from %s to %s)"
                       % (indent, what, _when(seen.first_s), _when(seen.last_s)))
    return out


def _when(seconds: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds))


def read_feed_status(path: str) -> dict | None:
    """A feed's status file (JSON object), or None when there is none or it is not one: read
    without following a symlink, at most MAX_STATUS_BYTES."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        data = os.read(fd, MAX_STATUS_BYTES + 1)
    except OSError:
        return None
    finally:
        os.close(fd)
    if len(data) > MAX_STATUS_BYTES:
        return None
    try:
        doc = json.loads(data)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


FEED_STATUS_FILE = "status.json"


def feed_statuses(feeds_dir: str) -> dict:
    """{feed name: status record} from the feeds' state directory (trailsdb/feeds/store.py
    writes `status.json`: {"format": 1, "feeds": {NAME: RECORD}}); {} when there is none or it
    is not that."""
    if not feeds_dir:
        return {}
    doc = read_feed_status(os.path.join(feeds_dir, FEED_STATUS_FILE))
    feeds = doc.get("feeds") if doc is not None and doc.get("format") == 1 else None
    if not isinstance(feeds, dict):
        return {}
    return {str(name): record for name, record in feeds.items() if isinstance(record, dict)}


def _status_text(record: dict) -> str:
    parts = []
    state = record.get("state")
    if isinstance(state, str) and state:
        parts.append(state + (" (%s)" % record["reason"] if isinstance(record.get("reason"), str) else ""))
    success = record.get("last_success")
    parts.append("last success %s" % (_when(int(success)) if isinstance(success, (int, float)) else "never"))
    failure = record.get("last_failure")
    if isinstance(failure, (int, float)):
        reason = record.get("last_failure_reason")
        parts.append("last failure %s%s" % (_when(int(failure)), " (%s)" % reason if isinstance(reason, str) else ""))
    return "; ".join(parts)


def source_lines(artifact, feeds_dir: str = "") -> list[str]:
    """`trails stats`'s account of the sources: per source its kind, the rows read from it and
    the trails it lists in this artifact; per feed also its last success and failure (from the
    feeds' status file, when there is one); then what provenance the artifact records."""
    info = artifact.info
    by_source = info.get("by_source")
    statuses = feed_statuses(feeds_dir)
    if not isinstance(by_source, list):
        out = ["sources: %s" % (", ".join(info.get("sources", [])) or "none")]
    else:
        out = ["sources (in merge order): %d" % len(by_source)]
        for name, kind, rows, listed in by_source:
            line = "  %-6s %s: %d rows read, listed in %d trails" % (kind, name, rows, listed)
            if name in statuses:  # a feed, or a custom_trails_url list (merged as custom)
                line += "; " + _status_text(statuses.pop(name))
            out.append(line)
        if info.get("ip_minimum_feeds") is not None and any(kind == "feed" for _, kind, _, _ in by_source):
            out.append("feed addresses kept when listed by at least %d feeds" % info["ip_minimum_feeds"])
    for name, record in sorted(statuses.items()):
        out.append("  feed   %s: not in this artifact; %s" % (name, _status_text(record)))
    provenance = Provenance.load(artifact)
    if provenance is None:
        out.append("provenance: not recorded (built before format 3; the next build records it)")
    else:
        first = [f for triples in provenance._classes for _, f, _ in triples]
        out.append("provenance: recorded for every trail; first seen between %s and %s"
                   % (_when(min(first)), _when(max(first))) if first else "provenance: recorded (no trails)")
    return out
