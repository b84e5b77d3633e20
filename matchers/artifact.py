"""The compiled trail artifact: its on-disk layout, its integrity check and its read-only loader.

Owns the format (header, section table, the sections' layouts, the CRC-32 checksums that let a
loader tell a damaged file from a good one) and `Artifact`, which maps a compiled file read-only so
that every worker shares the same pages, and answers "what is trail N" (key text, kind, info,
reference) without building per-trail Python objects. trailsdb/ writes this format; the hot path
only ever loads it.

Must not know where trails came from (feeds, files) or how they are normalised, nor where the
file it is handed came from (a path, a private copy): it checks what it is given.
"""

from __future__ import annotations

import mmap
import os
import stat
import struct
import sys
import zlib
from dataclasses import dataclass

import msgpack

MAGIC = b"MTRAILDB"
# 2: checksums of the header, the section table and every section, and the file's length.
# 3: provenance sections (which sources list each trail, since when), and trail ids in the
#    builder's order (see S_PROV_SOURCES): a format-2 file loads the same but has no provenance.
FORMAT_VERSION = 3
# Versions whose header and section table read like this one's (generation, trail count).
_SAME_HEADER_VERSIONS = (2, 3)

# Every version starts with the magic and the format version, so any version's file is recognised
# and an old one gets "rebuild it" rather than a misreading.
_PREFIX = struct.Struct("<8sI")
# Header: magic, format version, header size, generation, build time, section count, byte-order
# mark (so a file built on the other endianness is refused instead of misread), the file's length
# in bytes (a truncated or extended copy is refused before any section is looked at), the CRC-32 of
# the header (with this field zeroed) followed by the section table, and 4 bytes kept zero.
# CRC-32 (zlib's, ~4 GB/s here, twice SHA-256's speed) is there to catch damage, not forgery:
# whoever can write the file can write a valid one. It detects every burst of up to 32 bits and
# any other damage but one time in 2^32, per section.
_HEADER = struct.Struct("<8sIIQQIIQII")
_SECTION = struct.Struct("<16sQQII")  # name, offset, length, CRC-32 of the section's bytes, zero
_CHECKSUM_OFFSET = _HEADER.size - 8
_BOM = 0x01020304
MAX_SECTIONS = 64  # the builder writes about twenty; a count beyond this is damage
# Version 1 (no checksums), read only to keep generations counting and to compare trail counts when a
# build replaces one.
_HEADER_V1 = struct.Struct("<8sIIQQII")
_SECTION_V1 = struct.Struct("<16sQQ")
_VERIFY_CHUNK_BYTES = 1 << 20
_WRITE_SLICE_BYTES = 1 << 20


# Trail kinds (one byte in the trail record).
KIND_IPV4 = 1
KIND_IPV6 = 2
KIND_CIDR4 = 3
KIND_CIDR6 = 4
KIND_IPPORT4 = 5
KIND_IPPORT6 = 6
KIND_DOMAIN = 7
KIND_REGEX = 8
KIND_URL = 9        # host/path
KIND_PATH = 10      # /path (any host)
KIND_UA = 11        # user-agent substring
KIND_CERT = 12      # SHA-1 fingerprint of a server certificate (40 lower-case hex digits)
KIND_UA_REGEX = 13  # user-agent regular expression (Maltrail's misc/ua.txt)

KIND_NAMES = {
    KIND_IPV4: "ipv4", KIND_IPV6: "ipv6", KIND_CIDR4: "cidr4", KIND_CIDR6: "cidr6",
    KIND_IPPORT4: "ipv4:port", KIND_IPPORT6: "[ipv6]:port", KIND_DOMAIN: "domain",
    KIND_REGEX: "regex", KIND_URL: "url", KIND_PATH: "path", KIND_UA: "user-agent", KIND_CERT: "certificate",
    KIND_UA_REGEX: "user-agent regex",
}

# A trail record: u32 offset of its key in the string blob, u16 key length, u8 kind, u8 flags,
# u32 index of its (info, reference) pair. Mirrors mt_trail in csrc/artifact.h.
TRAIL_RECORD = struct.Struct("<IHBBI")
MAX_KEY_BYTES = 0xFFFF

# Section names.
S_STRINGS = "strings"        # UTF-8 key text of every trail, back to back
S_TRAILS = "trails"          # TRAIL_RECORD per trail id
S_META = "meta"              # msgpack [[info, reference], ...]
S_IP4 = "ip4"                # roaring bitmap of exact IPv4 trails
S_IP4_KEYS = "ip4_keys"      # u32 addresses, ascending (bisect on a bitmap hit)
S_IP4_IDS = "ip4_ids"        # u32 trail ids, parallel to S_IP4_KEYS
S_CIDR4 = "cidr4"            # roaring bitmap of every address some IPv4 CIDR trail covers
S_CIDR4_LIST = "cidr4_list"  # (u32 first, u32 last, u32 trail id, u32 prefix) sorted by prefix desc
S_IPPORT4 = "ipport4"        # roaring64 bitmap of (port << 32 | address), see ips.ipport4_key
S_IPPORT4_KEYS = "ipport4_keys"  # u64 keys, ascending
S_IPPORT4_IDS = "ipport4_ids"    # u32 trail ids, parallel
S_IP4_P24 = "ip4_p24"        # 2^24-bit map: bit (address >> 8) set when some IPv4, ip:port or CIDR
                             # trail touches that /24: one memory read says "no" for most addresses
S_IP6 = "ip6"                # sorted 16-byte addresses
S_IP6_IDS = "ip6_ids"
S_CIDR6_LIST = "cidr6_list"  # (16B first, 16B last, u32 id, u32 prefix) sorted by prefix desc
S_IPPORT6 = "ipport6"        # sorted (16-byte address + u16 big-endian port)
S_IPPORT6_IDS = "ipport6_ids"
S_DOMAINS = "domains"        # hash table (csrc/artifact.h) over domain trail keys
S_URLS = "urls"              # hash table over URL and path trail keys
S_DOMAINS_FILTER = "domains_filter"  # key filter over the domains table (csrc/artifact.h mt_filter):
S_URLS_FILTER = "urls_filter"        # answers "absent" for most misses from cache. Optional: a file
                                     # without them (built before) loads; the worker builds its own
KEY_FILTERS = ((S_DOMAINS, S_DOMAINS_FILTER), (S_URLS, S_URLS_FILTER))  # (table, its key filter)
S_REGEX = "regex"            # msgpack [[id, pattern], ...] of regex domain trails, source order
S_UA = "ua"                  # msgpack [[id, pattern], ...] of user-agent trails (both kinds)
# (their own small sections: reading the keys out of `strings` would page in whole folios of the
# blob at load for a few dozen patterns)
S_CERTS = "certs"            # sorted 20-byte SHA-1 digests of certificate trails (matchers/certs.py)
S_CERT_IDS = "cert_ids"      # u32 trail ids, parallel to S_CERTS; a file without the two sections
                             # (built before certificate trails) loads with no certificate trails
S_WHITELIST = "whitelist"    # msgpack {"domains": [...], "ips": [...], "cidrs": [...]}
S_INFO = "info"              # msgpack build information (sources, counts, rejections)
# Provenance (trailsdb/provenance.py reads and writes them; no lookup ever maps them):
S_PROV_SOURCES = "prov_sources"  # msgpack {"order": 1, "sources": [[name, kind], ...]}: every source
                                 # a trail's provenance may name; "order" 1 says trail ids follow
                                 # the builder's order (regex and user-agent trails first, in the
                                 # order their sources listed them, then the rest by key bytes)
S_PROV_CLASSES = "prov_classes"  # msgpack [[source, first_s, last_s, source, ...], ...]: the distinct
                                 # provenances (source index, first and last build that listed it)
S_PROV_IDS = "prov_ids"          # zstd frame of u32 per trail id: its index in prov_classes


class ArtifactError(Exception):
    """The file is not a usable artifact; the message names the file and the problem."""


_REBUILD = "rebuild it with `maltrail-engine trails build`"


def _damaged(name: str, what: str) -> ArtifactError:
    return ArtifactError("%s: damaged: %s does not match its checksum; %s (or restore a good copy)"
                         % (name, what, _REBUILD))


@dataclass(frozen=True)
class Layout:
    """What the header and the section table say, after their checksum held."""
    generation: int
    created_s: int
    file_bytes: int
    sections: dict  # name -> (offset, length, CRC-32)
    version: int = FORMAT_VERSION


def parse_layout(buf, size: int, name: str, any_version: bool = False) -> Layout:
    """Reads and checks the header and section table at the start of `buf` (a file of `size`
    bytes; `buf` must hold at least its header and table). Raises ArtifactError naming `name` and
    the problem. Sections are not read: `verify_sections` checks them. `any_version` also accepts
    an older format whose header is this one's (a build reads the file it replaces)."""
    if size < _PREFIX.size:
        raise ArtifactError("%s: too short to be a trail artifact (%d bytes)" % (name, size))
    magic, version = _PREFIX.unpack_from(buf, 0)
    if magic != MAGIC:
        raise ArtifactError("%s: not a trail artifact (bad magic); build one with "
                            "`maltrail-engine trails build`" % name)
    if version != FORMAT_VERSION and not (any_version and version in _SAME_HEADER_VERSIONS):
        raise ArtifactError("%s: artifact format %d, this version reads %d; %s"
                            % (name, version, FORMAT_VERSION, _REBUILD))
    if size < _HEADER.size:
        raise ArtifactError("%s: truncated: %d bytes, shorter than the header (truncated copy?)" % (name, size))
    _, _, header_size, generation, created_s, count, bom, file_bytes, checksum, _ = _HEADER.unpack_from(buf, 0)
    table_end = _HEADER.size + count * _SECTION.size
    if header_size != _HEADER.size or count > MAX_SECTIONS:
        raise _damaged(name, "its header")
    if table_end > size:
        if file_bytes > size:
            raise ArtifactError("%s: truncated: %d of its %d bytes (truncated copy?)" % (name, size, file_bytes))
        raise _damaged(name, "its header")
    if _table_checksum(buf[:_HEADER.size], buf[_HEADER.size:table_end]) != checksum:
        raise _damaged(name, "its header or section table")
    if bom != _BOM or sys.byteorder != "little":
        raise ArtifactError("%s: built for a different byte order; rebuild it on this machine" % name)
    if file_bytes != size:
        # The table's checksum held, so file_bytes is what the builder wrote.
        if size < file_bytes:
            raise ArtifactError("%s: truncated: %d of its %d bytes (truncated copy?)" % (name, size, file_bytes))
        raise ArtifactError("%s: %d bytes where %d were written (overwritten or appended to?); %s"
                            % (name, size, file_bytes, _REBUILD))
    sections = {}
    for i in range(count):
        raw, offset, length, section_checksum, _ = _SECTION.unpack_from(buf, _HEADER.size + i * _SECTION.size)
        sname = raw.rstrip(b"\0").decode("ascii", "replace")
        if offset < table_end or offset + length > size or sname in sections:
            raise ArtifactError("%s: section %r lies outside the file or repeats; %s" % (name, sname, _REBUILD))
        sections[sname] = (offset, length, section_checksum)
    for required in (S_STRINGS, S_TRAILS, S_META):
        if required not in sections:
            raise ArtifactError("%s: missing section %r" % (name, required))
    return Layout(generation, created_s, file_bytes, sections, version)


def _table_checksum(header, table) -> int:
    """CRC-32 of the header with its checksum field zeroed, then the section table."""
    check = zlib.crc32(header[:_CHECKSUM_OFFSET])
    check = zlib.crc32(bytes(4), check)
    check = zlib.crc32(header[_CHECKSUM_OFFSET + 4:_HEADER.size], check)
    return zlib.crc32(table, check)


def verify_sections(fd: int, layout: Layout, name: str) -> None:
    """Checks every section of the file open at `fd` against its checksum; raises ArtifactError
    naming the first damaged section. Reads the whole file once (~20 ms of CRC per 78 MB here,
    plus the reading) through one reused buffer, not through a mapping: the check adds no mapped
    pages to the process's memory, and a file cut short meanwhile is an error, not a SIGBUS."""
    buf = bytearray(min(_VERIFY_CHUNK_BYTES, layout.file_bytes))
    view = memoryview(buf)
    for sname, (offset, length, checksum) in sorted(layout.sections.items(), key=lambda kv: kv[1][0]):
        check, pos, end = 0, offset, offset + length
        while pos < end:
            got = os.preadv(fd, [view[:min(len(buf), end - pos)]], pos)
            if got <= 0:
                raise ArtifactError("%s: truncated while it was being read" % name)
            check = zlib.crc32(view[:got], check)
            pos += got
        if check != checksum:
            raise _damaged(name, "section %r" % sname)


def _close_mapping(mapping) -> None:
    try:
        mapping.close()
    except BufferError:
        pass  # a view of it is still alive; it is released with the last one


@dataclass(frozen=True)
class TrailRecord:
    trail_id: int
    key: str
    kind: int
    info: str
    reference: str


class Artifact:
    """A compiled trail artifact mapped read-only.

    `section(name)` returns a memoryview over the mapping (zero copy); pages are only read when a
    lookup touches them, and forked workers share them.
    """

    def __init__(self, path: str, mapping, generation: int, created_s: int, sections: dict):
        self.path = path
        self._map = mapping
        self.format_version = FORMAT_VERSION   # from_fd sets what the file says (2 or 3)
        self.generation = generation
        self.created_s = created_s
        self._sections = sections
        view = memoryview(mapping)
        self._view = view
        self._strings = self.section(S_STRINGS)
        self._trails = self.section(S_TRAILS)
        self.trail_count = len(self._trails) // TRAIL_RECORD.size
        self.meta = [tuple(pair) for pair in msgpack.unpackb(self.section(S_META), raw=False)]
        self.info = msgpack.unpackb(self.section(S_INFO), raw=False) if S_INFO in sections else {}

    @classmethod
    def open(cls, path: str | os.PathLike, verify: bool = True) -> "Artifact":
        """Maps the artifact at `path`. `verify` checks every section's checksum first (the whole
        file is read once); without it only the header and section table are checked."""
        path = os.fspath(path)
        try:
            # O_NONBLOCK: a FIFO at the path must be refused below, not wait for a writer.
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError as exc:
            raise ArtifactError("%s: cannot open trail artifact: %s" % (path, exc.strerror or exc)) from None
        try:
            return cls.from_fd(fd, path, verify)
        finally:
            os.close(fd)

    @classmethod
    def from_fd(cls, fd: int, name: str, verify: bool = True) -> "Artifact":
        """Maps the artifact open at `fd` (the caller keeps the descriptor; the mapping does not
        need it). `name` is what messages call it."""
        try:
            st = os.fstat(fd)
        except OSError as exc:
            raise ArtifactError("%s: cannot read trail artifact: %s" % (name, exc.strerror or exc)) from None
        if not stat.S_ISREG(st.st_mode):
            raise ArtifactError("%s: not a regular file" % name)
        size = st.st_size
        if size < _HEADER.size:
            # Read, not mapped: a file this short is refused (and the prefix tells an old format).
            parse_layout(os.pread(fd, _PREFIX.size, 0), size, name)
            raise ArtifactError("%s: truncated: %d bytes, shorter than the header (truncated copy?)" % (name, size))
        try:
            mapping = mmap.mmap(fd, size, access=mmap.ACCESS_READ)
        except (OSError, ValueError) as exc:
            raise ArtifactError("%s: cannot map trail artifact: %s" % (name, exc)) from None
        try:
            # Format 2 lays out every section the lookups use as format 3 does: it loads (its
            # trails simply have no provenance), so an upgrade does not stop a sensor.
            layout = parse_layout(mapping, size, name, any_version=True)
            if verify:
                verify_sections(fd, layout, name)
            sections = {sname: (offset, length) for sname, (offset, length, _) in layout.sections.items()}
            artifact = cls(name, mapping, layout.generation, layout.created_s, sections)
            artifact.format_version = layout.version
            if verify:
                artifact.check_filters()
            return artifact
        except ArtifactError:
            _close_mapping(mapping)
            raise
        except Exception as exc:  # a section that passed its checksum but does not decode
            _close_mapping(mapping)
            raise ArtifactError("%s: unreadable: %s" % (name, exc)) from None

    def check_filters(self) -> None:
        """Refuses key filter sections the C worker path would refuse (a forged or mis-built
        filter with a valid checksum): checked with the whole file, so a supervisor never hands
        workers a copy they cannot load. Reads the filters (2.3 MB for the shared set) once."""
        from matchers import _native
        for table, key_filter in KEY_FILTERS:
            if key_filter not in self._sections:
                continue
            try:
                if table not in self._sections:
                    raise ValueError("there is no %r table for it" % table)
                _native.filter_check(self.section(key_filter), self.section(table))
            except ValueError as exc:
                raise ArtifactError("%s: section %r refused: %s; %s" % (self.path, key_filter, exc, _REBUILD)) from None

    def has(self, name: str) -> bool:
        return name in self._sections

    def section(self, name: str) -> memoryview:
        offset, length = self._sections.get(name, (0, 0))
        return self._view[offset:offset + length]

    def section_sizes(self) -> dict:
        return {name: length for name, (_, length) in self._sections.items()}

    def key(self, trail_id: int) -> str:
        off, length, _, _, _ = TRAIL_RECORD.unpack_from(self._trails, trail_id * TRAIL_RECORD.size)
        return bytes(self._strings[off:off + length]).decode("utf-8", "replace")

    def kind(self, trail_id: int) -> int:
        return self._trails[trail_id * TRAIL_RECORD.size + 6]

    def meta_of(self, trail_id: int) -> tuple[str, str]:
        meta = TRAIL_RECORD.unpack_from(self._trails, trail_id * TRAIL_RECORD.size)[4]
        return self.meta[meta]

    def record(self, trail_id: int) -> TrailRecord:
        off, length, kind, _, meta = TRAIL_RECORD.unpack_from(self._trails, trail_id * TRAIL_RECORD.size)
        key = bytes(self._strings[off:off + length]).decode("utf-8", "replace")
        info, reference = self.meta[meta]
        return TrailRecord(trail_id, key, kind, info, reference)

    def pairs(self, name: str) -> list[tuple[int, str]]:
        """A msgpack [[id, text], ...] section (regex and user-agent patterns)."""
        if name not in self._sections:
            return []
        return [(int(i), str(t)) for i, t in msgpack.unpackb(self.section(name), raw=False)]

    def ids(self, name: str) -> memoryview:
        """A u32 id section as a sequence of ints."""
        return self.section(name).cast("I")

    def close(self) -> None:
        """Releases the mapping. Matchers built on this artifact must be dropped first."""
        try:
            self._strings.release()
            self._trails.release()
            self._view.release()
            self._map.close()
        except (BufferError, ValueError):
            # Still exported to a live matcher: the mapping is released when the last user goes.
            pass


def _aligned(offset: int) -> int:
    return (offset + 7) & ~7


class ArtifactWriter:
    """Writes an artifact section by section to a binary file object open for writing at offset
    0, so that a builder can let each section go once written (a build need not hold the whole
    artifact in memory). The section names are given first: the table's size fixes where the
    first section starts. `finish` writes the header and table; the caller handles atomic
    publication."""

    def __init__(self, f, names: list[str]):
        if len(names) > MAX_SECTIONS or len(set(names)) != len(names):
            raise ValueError("section names must be distinct and at most %d" % MAX_SECTIONS)
        self._f = f
        self._names = list(names)
        self._table: list[tuple[str, int, int, int]] = []
        self._offset = _aligned(_HEADER.size + len(names) * _SECTION.size)

    def add(self, name: str, data) -> None:
        """Writes the next section (in the order the names were given): bytes or any buffer."""
        if len(self._table) >= len(self._names) or self._names[len(self._table)] != name:
            raise ValueError("section %r out of order" % name)
        view = memoryview(data).cast("B")
        self._f.seek(self._offset)
        # In slices: a buffered file copies what it is handed, and a section can be tens of MB.
        for at in range(0, len(view), _WRITE_SLICE_BYTES):
            self._f.write(view[at:at + _WRITE_SLICE_BYTES])
        self._table.append((name, self._offset, len(view), zlib.crc32(view)))
        self._offset = _aligned(self._offset + len(view))

    def finish(self, generation: int, created_s: int) -> int:
        """Writes the header and section table; returns the file's length in bytes."""
        if len(self._table) != len(self._names):
            raise ValueError("sections missing: %s" % ", ".join(self._names[len(self._table):]))
        file_bytes = self._offset
        table_bytes = b"".join(_SECTION.pack(name.encode("ascii"), off, length, checksum, 0)
                               for name, off, length, checksum in self._table)
        count = len(self._table)
        header = _HEADER.pack(MAGIC, FORMAT_VERSION, _HEADER.size, generation, created_s, count, _BOM,
                              file_bytes, 0, 0)
        header = _HEADER.pack(MAGIC, FORMAT_VERSION, _HEADER.size, generation, created_s, count, _BOM,
                              file_bytes, _table_checksum(header, table_bytes), 0)
        self._f.seek(0)
        self._f.write(header)
        self._f.write(table_bytes)
        self._f.truncate(file_bytes)
        self._f.flush()
        return file_bytes


def write_artifact(target, generation: int, created_s: int, sections: list[tuple[str, bytes]]) -> None:
    """Writes sections, 8-byte aligned, with their checksums, to `target`: a binary file object
    open for writing at offset 0, or a path (tests). The caller handles atomic publication."""
    if isinstance(target, (str, os.PathLike)):
        with open(target, "wb") as f:
            write_artifact(f, generation, created_s, sections)
        return
    writer = ArtifactWriter(target, [name for name, _ in sections])
    for name, data in sections:
        writer.add(name, data)
    writer.finish(generation, created_s)


def existing_summary(path: str) -> tuple[int, int | None] | None:
    """(generation, trail count) of the artifact already at `path`, of this format or an older
    one, from its header and section table alone: what a new build continues counting from and
    is compared with. None when there is no artifact there, or a damaged one; the count is None
    when a format-1 table does not list the trails."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(_HEADER.size + MAX_SECTIONS * _SECTION.size)
    except OSError:
        return None
    if len(head) < _HEADER_V1.size or head[:len(MAGIC)] != MAGIC:
        return None
    _, version, header_size, generation, _, count, _ = _HEADER_V1.unpack_from(head, 0)
    if version in _SAME_HEADER_VERSIONS:
        try:
            layout = parse_layout(head, size, path, any_version=True)
        except ArtifactError:
            return None  # damaged: nothing in it can be trusted, its generation included
        return generation, layout.sections[S_TRAILS][1] // TRAIL_RECORD.size
    if version == 1 and header_size == _HEADER_V1.size and count <= MAX_SECTIONS:
        for i in range(count):
            at = header_size + i * _SECTION_V1.size
            if at + _SECTION_V1.size > len(head):
                break
            raw, _, length = _SECTION_V1.unpack_from(head, at)
            if raw.rstrip(b"\0") == S_TRAILS.encode():
                return generation, length // TRAIL_RECORD.size
        return generation, None
    return None
