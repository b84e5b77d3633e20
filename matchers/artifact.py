"""The compiled trail artifact: its on-disk layout and its read-only loader.

Owns the format (header, section table, the sections' layouts) and `Artifact`, which maps a
compiled file read-only so that every worker shares the same pages, and answers "what is trail
N" (key text, kind, info, reference) without building per-trail Python objects. trailsdb/ writes
this format; the hot path only ever loads it.

Must not know where trails came from (feeds, files) or how they are normalised.
"""

from __future__ import annotations

import mmap
import os
import struct
import sys
from dataclasses import dataclass

import msgpack

MAGIC = b"MTRAILDB"
FORMAT_VERSION = 1

# Header: magic, format version, header size, generation, build time, section count, byte-order
# mark (so a file built on the other endianness is refused instead of misread).
_HEADER = struct.Struct("<8sIIQQII")
_SECTION = struct.Struct("<16sQQ")  # name, offset, length
_BOM = 0x01020304

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

KIND_NAMES = {
    KIND_IPV4: "ipv4", KIND_IPV6: "ipv6", KIND_CIDR4: "cidr4", KIND_CIDR6: "cidr6",
    KIND_IPPORT4: "ipv4:port", KIND_IPPORT6: "[ipv6]:port", KIND_DOMAIN: "domain",
    KIND_REGEX: "regex", KIND_URL: "url", KIND_PATH: "path", KIND_UA: "user-agent",
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
S_REGEX = "regex"            # msgpack [[id, pattern], ...] of regex domain trails, source order
S_UA = "ua"                  # msgpack [[id, pattern], ...] of user-agent trails
# (their own small sections: reading the keys out of `strings` would page in whole folios of the
# blob at load for a few dozen patterns)
S_WHITELIST = "whitelist"    # msgpack {"domains": [...], "ips": [...], "cidrs": [...]}
S_INFO = "info"              # msgpack build information (sources, counts, rejections)


class ArtifactError(Exception):
    """The file is not a usable artifact; the message names the file and the problem."""


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
    def open(cls, path: str | os.PathLike) -> "Artifact":
        path = os.fspath(path)
        name = os.path.basename(path)
        try:
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size < _HEADER.size:
                    raise ArtifactError("%s: too short to be a trail artifact (%d bytes)" % (name, size))
                mapping = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except OSError as exc:
            raise ArtifactError("%s: cannot open trail artifact: %s" % (path, exc.strerror or exc)) from None
        magic, version, header_size, generation, created_s, count, bom = _HEADER.unpack_from(mapping, 0)
        if magic != MAGIC:
            mapping.close()
            raise ArtifactError("%s: not a trail artifact (bad magic); build one with "
                                "`maltrail-engine trails build`" % name)
        if version != FORMAT_VERSION:
            mapping.close()
            raise ArtifactError("%s: artifact format %d, this version reads %d; rebuild it with "
                                "`maltrail-engine trails build`" % (name, version, FORMAT_VERSION))
        if bom != _BOM or sys.byteorder != "little":
            mapping.close()
            raise ArtifactError("%s: built for a different byte order; rebuild it on this machine" % name)
        sections = {}
        table_end = header_size + count * _SECTION.size
        if table_end > size:
            mapping.close()
            raise ArtifactError("%s: truncated section table" % name)
        for i in range(count):
            raw, offset, length = _SECTION.unpack_from(mapping, header_size + i * _SECTION.size)
            sname = raw.rstrip(b"\0").decode("ascii", "replace")
            if offset + length > size or offset < table_end:
                mapping.close()
                raise ArtifactError("%s: section %r lies outside the file (truncated copy?)" % (name, sname))
            sections[sname] = (offset, length)
        for required in (S_STRINGS, S_TRAILS, S_META):
            if required not in sections:
                mapping.close()
                raise ArtifactError("%s: missing section %r" % (name, required))
        return cls(path, mapping, generation, created_s, sections)

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


def write_artifact(path: str, generation: int, created_s: int, sections: list[tuple[str, bytes]]) -> None:
    """Writes sections to `path` (the caller handles atomic publication). 8-byte aligned."""
    count = len(sections)
    header_size = _HEADER.size
    offset = header_size + count * _SECTION.size
    offset = (offset + 7) & ~7
    table = []
    for name, data in sections:
        table.append((name, offset, len(data)))
        offset = (offset + len(data) + 7) & ~7
    with open(path, "wb") as f:
        f.write(_HEADER.pack(MAGIC, FORMAT_VERSION, header_size, generation, created_s, count, _BOM))
        for name, off, length in table:
            f.write(_SECTION.pack(name.encode("ascii"), off, length))
        for (name, off, length), (_, data) in zip(table, sections):
            f.seek(off)
            f.write(data)
        f.truncate(max(f.tell(), offset))
