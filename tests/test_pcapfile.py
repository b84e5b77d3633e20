"""engine.sources.pcapfile: the native pcap/pcapng reader, against libpcap, the corpus and crafted files.

Crafted files are written here with struct from the layouts in the pcap and pcapng specs, so each
test states the exact bytes it feeds in. The libpcap comparison runs through
engine.sources.live.LibpcapFileReader (pypcap); its limits are libpcap's and pypcap's:
  * pypcap gives (timestamp, bytes) only, so wirelen cannot be compared (libpcap side reports
    wirelen == caplen); the native side is checked against the file instead;
  * libpcap folds LINKTYPE_RAW (101) and a file's literal DLT_RAW (12) into DLT 12, so raw-IP link
    types are compared after mapping 12/14/101 to 101;
  * libpcap refuses pcapng files whose interfaces differ in link type or snap length.
"""

from __future__ import annotations

import csv
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.sources.live import LibpcapFileReader
from engine.sources.pcapfile import CaptureFileError, PcapFileReader, open_capture
from tests.conftest import MALTRAIL_CORPUS, REAL_CORPUS, need_shared
from tests.fusefile import failing_file  # noqa: F401 (a fixture)
from workers.batch import LINKTYPE_ETHERNET, LINKTYPE_LINUX_SLL, LINKTYPE_RAW

NS = 1_000_000_000
RAW_LINKTYPES = (12, 14, 101)


# -- corpus helpers ------------------------------------------------------------------------------

def _corpus_files() -> list[Path]:
    files = []
    for root in (REAL_CORPUS, MALTRAIL_CORPUS):
        if root.exists():
            files += sorted(p for p in root.iterdir() if p.suffix in (".pcap", ".pcapng"))
    return files


def _manifest() -> dict[str, int]:
    path = need_shared(REAL_CORPUS / "manifest.tsv")
    with open(path, newline="") as handle:
        return {row["file"]: int(row["packets"]) for row in csv.DictReader(handle, delimiter="\t")}


def _rows(reader) -> list[tuple]:
    """(ts_ns, caplen, wirelen, linktype, bytes) for every frame, batch boundaries erased."""
    rows = []
    for batch in reader:
        _check_batch_shape(batch)
        for i in range(len(batch)):
            rows.append((batch.ts_ns[i], batch.caplens[i], batch.wirelens[i], batch.linktypes[i], batch.frame(i)))
    return rows


def _check_batch_shape(batch) -> None:
    n = len(batch)
    assert len(batch.caplens) == len(batch.wirelens) == len(batch.ts_ns) == len(batch.linktypes) == n
    end = 0
    for i in range(n):
        assert batch.offsets[i] == end
        assert batch.wirelens[i] >= batch.caplens[i]
        end += batch.caplens[i]
    assert end == len(batch.buf)


def _read_all(path, **kwargs) -> tuple[PcapFileReader, list[tuple]]:
    with PcapFileReader(path, **kwargs) as reader:
        rows = _rows(reader)
    return reader, rows


def _comparable(rows) -> list[tuple]:
    """What libpcap can be compared on: ts_ns, caplen, link type (raw IP folded), bytes."""
    return [(ts, caplen, LINKTYPE_RAW if lt in RAW_LINKTYPES else lt, data) for ts, caplen, _w, lt, data in rows]


# -- crafted-file helpers (layouts from the pcap and pcapng specifications) ----------------------

PCAP_US = 0xA1B2C3D4
PCAP_NS = 0xA1B23C4D


def pcap_file(records, order="<", magic=PCAP_US, snaplen=65535, linktype=LINKTYPE_ETHERNET, version=(2, 4)):
    """records: (seconds, fraction, data[, wirelen])."""
    out = [struct.pack(order + "IHHiIII", magic, version[0], version[1], 0, 0, snaplen, linktype)]
    for record in records:
        sec, frac, data = record[:3]
        wirelen = record[3] if len(record) > 3 else len(data)
        out.append(struct.pack(order + "IIII", sec, frac, len(data), wirelen) + data)
    return b"".join(out)


def _pad4(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 4)


def ng_block(order, btype, body):
    body = _pad4(body)
    length = len(body) + 12
    return struct.pack(order + "II", btype, length) + body + struct.pack(order + "I", length)


def ng_option(order, code, value):
    return struct.pack(order + "HH", code, len(value)) + _pad4(value)


def ng_shb(order, major=1, minor=0):
    return ng_block(order, 0x0A0D0D0A, struct.pack(order + "IHHq", 0x1A2B3C4D, major, minor, -1))


def ng_idb(order, linktype=LINKTYPE_ETHERNET, snaplen=0, tsresol=None, tsoffset_s=None):
    options = b""
    if tsresol is not None:
        options += ng_option(order, 9, bytes([tsresol]))
    if tsoffset_s is not None:
        options += ng_option(order, 14, struct.pack(order + "q", tsoffset_s))
    if options:
        options += ng_option(order, 0, b"")
    return ng_block(order, 1, struct.pack(order + "HHI", linktype, 0, snaplen) + options)


def ng_epb(order, iface, ts_units, data, wirelen=None):
    wirelen = len(data) if wirelen is None else wirelen
    head = struct.pack(order + "IIIII", iface, ts_units >> 32, ts_units & 0xFFFFFFFF, len(data), wirelen)
    return ng_block(order, 6, head + data)


def ng_spb(order, wirelen, data):
    return ng_block(order, 3, struct.pack(order + "I", wirelen) + data)


def ng_pb(order, iface, ts_units, data):
    head = struct.pack(order + "HHIIII", iface, 0, ts_units >> 32, ts_units & 0xFFFFFFFF, len(data), len(data))
    return ng_block(order, 2, head + data)


def frame(tag: int, size: int = 60) -> bytes:
    """A recognisable Ethernet-sized frame: broadcast header, then the tag repeated."""
    return (b"\xff" * 6 + b"\x02\x00\x00\x00\x00\x01" + b"\x88\xb5" + bytes([tag]) * size)[:size]


def write(tmp_path, name, data) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


# -- the corpus ----------------------------------------------------------------------------------

def test_every_real_capture_matches_its_manifest_count(real_corpus):
    manifest = _manifest()
    assert len(manifest) == 54
    for name, packets in manifest.items():
        reader, rows = _read_all(real_corpus / name)
        assert reader.frames == len(rows) == packets, (name, reader.notes)
        assert reader.bad_blocks == 0, (name, reader.notes)
        # The one capture cut short mid-record in the corpus is the only one that says so.
        assert reader.truncated_records == (1 if name == "sv_http-mime-truncated_input.pcap" else 0), name


@pytest.mark.parametrize("path", _corpus_files(), ids=lambda p: p.name)
def test_native_and_libpcap_agree(path):
    try:
        libpcap = LibpcapFileReader(path)
        expected = _rows(libpcap)
    except CaptureFileError as exc:
        # libpcap refuses the file; the native reader must still read all of it.
        assert path.name in str(exc)
        reader, rows = _read_all(path)
        if path.parent == REAL_CORPUS:
            assert len(rows) == _manifest()[path.name]
        assert rows and reader.bad_blocks == 0
        return
    reader, rows = _read_all(path)
    assert _comparable(rows) == _comparable(expected)
    assert reader.truncated_records == libpcap.truncated_records
    assert reader.bad_blocks == libpcap.bad_blocks == 0
    # pypcap cannot report the length on the wire; the native side must at least not shrink it.
    assert all(w == c for _t, c, w, _l, _d in expected)
    assert all(w >= c for _t, c, w, _l, _d in rows)


@pytest.mark.parametrize("snaplen", [1, 54, 96])
def test_snaplen_cut_agrees_with_libpcap(real_corpus, snaplen):
    for name in ("zk_pe_pe.pcap", "zk_quic_merlinc2_Zeek_example.pcapng", "zk_nflog-http.pcap"):
        _reader, rows = _read_all(real_corpus / name, snaplen_bytes=snaplen)
        with LibpcapFileReader(real_corpus / name, snaplen_bytes=snaplen) as libpcap:
            expected = _rows(libpcap)
        assert _comparable(rows) == _comparable(expected), name


def test_libpcap_refuses_mixed_snaplen_pcapng(real_corpus):
    path = real_corpus / "zk_ldap_gap-data-missing.pcapng"
    with pytest.raises(CaptureFileError) as info:
        with LibpcapFileReader(path) as libpcap:
            _rows(libpcap)
    assert "zk_ldap_gap-data-missing.pcapng" in str(info.value)
    assert "snapshot length" in str(info.value)


def test_nanosecond_pcap_timestamps_are_exact(real_corpus):
    path = real_corpus / "zk_http_get-to-ssh-server.pcap"
    data = path.read_bytes()
    assert struct.unpack_from("<I", data)[0] == PCAP_NS
    expected, pos = [], 24
    while pos < len(data):
        sec, nsec, caplen, _wirelen = struct.unpack_from("<IIII", data, pos)
        expected.append(sec * NS + nsec)
        pos += 16 + caplen
    reader, rows = _read_all(path)
    assert reader.format == "pcap-ns"
    assert [r[0] for r in rows] == expected
    assert expected[0] == 1770126425732560000
    with LibpcapFileReader(path) as libpcap:
        assert [r[0] for r in _rows(libpcap)] == expected


def test_pcapng_frames_carry_their_interface_linktype(real_corpus):
    path = real_corpus / "zk_ldap_gap-data-missing.pcapng"
    data = path.read_bytes()
    # Walk the blocks here, independently of the reader: interface link types, then EPB owners.
    idb_linktypes, epb_ifaces, pos = [], [], 0
    while pos < len(data):
        btype, blen = struct.unpack_from("<II", data, pos)
        if btype == 1:
            idb_linktypes.append(struct.unpack_from("<H", data, pos + 8)[0])
        elif btype == 6:
            epb_ifaces.append(struct.unpack_from("<I", data, pos + 8)[0])
        pos += blen
    assert len(set(idb_linktypes)) > 1          # the file really mixes link types
    reader, rows = _read_all(path)
    assert [r[3] for r in rows] == [idb_linktypes[i] for i in epb_ifaces]
    assert reader.linktype == idb_linktypes[0]
    assert reader.skipped_blocks == 5           # name resolution blocks


# -- crafted pcap --------------------------------------------------------------------------------

@pytest.mark.parametrize("order", ["<", ">"])
@pytest.mark.parametrize("magic,frac_ns", [(PCAP_US, 1000), (PCAP_NS, 1)])
def test_pcap_variants(tmp_path, order, magic, frac_ns):
    records = [(1700000000, 123, frame(1), 60), (1700000001, 999999, frame(2, 80), 1500), (4000000000, 0, frame(3), 60)]
    path = write(tmp_path, "variant.pcap", pcap_file(records, order=order, magic=magic, linktype=LINKTYPE_LINUX_SLL))
    reader, rows = _read_all(path)
    assert reader.linktype == LINKTYPE_LINUX_SLL
    assert reader.format == ("pcap-ns" if magic == PCAP_NS else "pcap")
    assert rows == [(sec * NS + frac * frac_ns, len(data), wirelen, LINKTYPE_LINUX_SLL, data)
                    for sec, frac, data, wirelen in records]
    with LibpcapFileReader(path) as libpcap:
        # libpcap reads the seconds as signed 32-bit, so leave out the post-2038 record.
        assert _comparable(_rows(libpcap))[:2] == _comparable(rows)[:2]


def test_pcap_old_version_swaps_lengths(tmp_path):
    # Before version 2.3 the record header held len before caplen.
    data = frame(7, 64)
    raw = struct.pack("<IHHiIII", PCAP_US, 2, 2, 0, 0, 65535, 1) + struct.pack("<IIII", 5, 6, 1500, 64) + data
    _reader, rows = _read_all(write(tmp_path, "old.pcap", raw))
    assert rows == [(5 * NS + 6000, 64, 1500, 1, data)]


def test_snaplen_bytes_cuts_frames_and_keeps_wirelen(real_corpus):
    path = real_corpus / "zk_pe_pe.pcap"
    _reader, full = _read_all(path)
    _reader, cut = _read_all(path, snaplen_bytes=100)
    assert len(cut) == len(full) == 535
    assert any(caplen > 100 for _t, caplen, _w, _l, _d in full)
    for (ts, caplen, wirelen, lt, data), (cts, ccaplen, cwirelen, clt, cdata) in zip(full, cut):
        assert (cts, cwirelen, clt) == (ts, wirelen, lt)
        assert ccaplen == min(caplen, 100) == len(cdata)
        assert cdata == data[:100]


def test_record_longer_than_file_snaplen_is_cut_like_libpcap(tmp_path):
    path = write(tmp_path, "oversnap.pcap", pcap_file([(1, 0, frame(1, 200))], snaplen=100))
    reader, rows = _read_all(path)
    assert rows == [(NS, 100, 200, 1, frame(1, 200)[:100])]
    assert reader.notes
    with LibpcapFileReader(path) as libpcap:
        assert _comparable(_rows(libpcap)) == _comparable(rows)


# -- crafted pcapng ------------------------------------------------------------------------------

@pytest.mark.parametrize("order", ["<", ">"])
def test_pcapng_binary_tsresol_and_tsoffset(tmp_path, order):
    # if_tsresol 0x8a: units of 2^-10 s; if_tsoffset: 1000 s added to every timestamp.
    units = 1_700_000_000 * 1024 + 512 + 1     # .5 s plus one unit of 1/1024 s
    data = ng_shb(order) + ng_idb(order, tsresol=0x80 | 10, tsoffset_s=1000) + ng_epb(order, 0, units, frame(1))
    path = write(tmp_path, "pow2.pcapng", data)
    reader, rows = _read_all(path)
    expected_ns = (1_700_000_000 + 1000) * NS + 500_000_000 + NS // 1024   # 976562.5 ns floors
    assert rows == [(expected_ns, 60, 60, 1, frame(1))]
    with LibpcapFileReader(path) as libpcap:
        assert _comparable(_rows(libpcap)) == _comparable(rows)


@pytest.mark.parametrize("tsresol,units,expected_ns", [
    (None, 1_234_567, 1_234_567_000),    # default: microseconds
    (3, 1_234_567, 1_234_567_000_000),   # milliseconds
    (9, 1_234_567, 1_234_567),           # nanoseconds
    (12, 1_234_567_891, 1_234_567),      # picoseconds floor to nanoseconds
])
def test_pcapng_decimal_tsresol(tmp_path, tsresol, units, expected_ns):
    path = write(tmp_path, "pow10.pcapng", ng_shb("<") + ng_idb("<", tsresol=tsresol) + ng_epb("<", 0, units, frame(1)))
    _reader, rows = _read_all(path)
    assert [r[0] for r in rows] == [expected_ns]
    with LibpcapFileReader(path) as libpcap:
        assert [r[0] for r in _rows(libpcap)] == [expected_ns]


def test_pcapng_mixed_linktypes_per_frame(tmp_path):
    ip_packet = bytes.fromhex("450000140000000040000000c0000201c0000202")
    data = (ng_shb("<") + ng_idb("<", LINKTYPE_ETHERNET) + ng_idb("<", LINKTYPE_RAW)
            + ng_epb("<", 0, 1, frame(1)) + ng_epb("<", 1, 2, ip_packet) + ng_epb("<", 0, 3, frame(2)))
    reader, rows = _read_all(write(tmp_path, "mixed.pcapng", data))
    assert [(r[3], r[4]) for r in rows] == [(1, frame(1)), (101, ip_packet), (1, frame(2))]
    assert reader.linktype == LINKTYPE_ETHERNET


def test_pcapng_simple_packet_block(tmp_path):
    # SPB: interface 0, wirelen from the block, caplen = min(wirelen, snaplen, data in block).
    long_frame = frame(1, 100)
    data = (ng_shb("<") + ng_idb("<", snaplen=64, tsoffset_s=7)
            + ng_spb("<", 100, long_frame[:64]) + ng_spb("<", 62, frame(2, 62)) + ng_spb("<", 1514, frame(3, 60)))
    path = write(tmp_path, "spb.pcapng", data)
    reader, rows = _read_all(path)
    assert rows == [
        (7 * NS, 64, 100, 1, long_frame[:64]),
        (7 * NS, 62, 62, 1, frame(2, 62)),
        (7 * NS, 60, 1514, 1, frame(3, 60)),     # the block held only 60 bytes
    ]
    assert reader.bad_blocks == 0


def test_pcapng_obsolete_packet_block(tmp_path):
    data = ng_shb("<") + ng_idb("<") + ng_pb("<", 0, 5_000_001, frame(4))
    path = write(tmp_path, "pb.pcapng", data)
    _reader, rows = _read_all(path)
    assert rows == [(5 * NS + 1000, 60, 60, 1, frame(4))]
    with LibpcapFileReader(path) as libpcap:
        assert _comparable(_rows(libpcap)) == _comparable(rows)


def test_pcapng_unknown_block_is_skipped(tmp_path):
    data = (ng_shb("<") + ng_idb("<") + ng_epb("<", 0, 1, frame(1))
            + ng_block("<", 0x00C0FFEE, b"opaque vendor data")
            + ng_block("<", 5, b"\0" * 12)                       # interface statistics
            + ng_epb("<", 0, 2, frame(2)))
    path = write(tmp_path, "unknown.pcapng", data)
    reader, rows = _read_all(path)
    assert [r[4] for r in rows] == [frame(1), frame(2)]
    assert reader.skipped_blocks == 2
    assert any("0xc0ffee" in note for note in reader.notes)
    with LibpcapFileReader(path) as libpcap:
        assert _comparable(_rows(libpcap)) == _comparable(rows)


def test_pcapng_sections_in_both_byte_orders(tmp_path):
    data = (ng_shb("<") + ng_idb("<", LINKTYPE_ETHERNET) + ng_epb("<", 0, 1, frame(1))
            + ng_shb(">") + ng_idb(">", LINKTYPE_LINUX_SLL, tsresol=9) + ng_epb(">", 0, 2, frame(2)))
    reader, rows = _read_all(write(tmp_path, "sections.pcapng", data))
    assert [(r[0], r[3], r[4]) for r in rows] == [(1000, 1, frame(1)), (2, LINKTYPE_LINUX_SLL, frame(2))]
    assert reader.bad_blocks == 0


def test_pcapng_without_interfaces_reads_nothing(tmp_path):
    reader, rows = _read_all(write(tmp_path, "shb-only.pcapng", ng_shb("<")))
    assert rows == [] and reader.linktype is None and reader.truncated_records == 0


def test_pcapng_packet_on_unknown_interface_stops(tmp_path):
    data = ng_shb("<") + ng_idb("<") + ng_epb("<", 0, 1, frame(1)) + ng_epb("<", 3, 2, frame(2))
    reader, rows = _read_all(write(tmp_path, "noiface.pcapng", data))
    assert len(rows) == 1 and reader.bad_blocks == 1
    assert any("interface 3" in note for note in reader.notes)


# -- damage --------------------------------------------------------------------------------------

@pytest.mark.parametrize("cut", [10, 16 + 20, 16 + 59])
def test_pcap_truncated_mid_record_stops_and_counts(tmp_path, cut):
    full = pcap_file([(1, 0, frame(1)), (2, 0, frame(2)), (3, 0, frame(3))])
    data = full[:24 + 2 * 76 + cut]          # two whole records, then part of the third
    reader, rows = _read_all(write(tmp_path, "cut.pcap", data))
    assert [r[4] for r in rows] == [frame(1), frame(2)]
    assert reader.truncated_records == 1 and reader.bad_blocks == 0
    assert reader.notes and "truncated" in reader.notes[0]
    assert reader.read_batch() is None


def test_pcapng_truncated_mid_block_stops_and_counts(tmp_path):
    data = ng_shb("<") + ng_idb("<") + ng_epb("<", 0, 1, frame(1)) + ng_epb("<", 0, 2, frame(2))
    reader, rows = _read_all(write(tmp_path, "cut.pcapng", data[:-30]))
    assert [r[4] for r in rows] == [frame(1)]
    assert reader.truncated_records == 1


def test_pcapng_garbled_block_stops_and_counts(tmp_path):
    bad = bytearray(ng_epb("<", 0, 2, frame(2)))
    bad[-4:] = struct.pack("<I", len(bad) + 4)        # trailer disagrees with header
    data = ng_shb("<") + ng_idb("<") + ng_epb("<", 0, 1, frame(1)) + bytes(bad) + ng_epb("<", 0, 3, frame(3))
    reader, rows = _read_all(write(tmp_path, "garbled.pcapng", data))
    assert [r[4] for r in rows] == [frame(1)]
    assert reader.bad_blocks == 1 and reader.truncated_records == 0


def test_pcap_absurd_capture_length_stops_and_counts(tmp_path):
    data = pcap_file([(1, 0, frame(1))]) + struct.pack("<IIII", 2, 0, 0x7FFFFFFF, 60) + frame(2)
    reader, rows = _read_all(write(tmp_path, "absurd.pcap", data))
    assert len(rows) == 1 and reader.bad_blocks == 1


def test_bad_magic_names_the_file(tmp_path):
    path = write(tmp_path, "capture.pcap", b"GIF89a" + b"\0" * 64)
    with pytest.raises(CaptureFileError) as info:
        PcapFileReader(path)
    assert "capture.pcap" in str(info.value)
    assert "not a pcap or pcapng file (magic 0x47494638)" in str(info.value)


@pytest.mark.parametrize("data,fragment", [
    (b"", "empty file"),
    (b"\xd4\xc3\xb2", "truncated file header"),
    (pcap_file([])[:20], "truncated file header"),
    (ng_shb("<")[:20], "truncated pcapng section header"),
    (pcap_file([], version=(1, 0)), "unsupported pcap version 1.0"),
    (ng_shb("<", major=2), "unsupported pcapng version 2.0"),
])
def test_bad_headers_raise_at_open(tmp_path, data, fragment):
    path = write(tmp_path, "bad.pcap", data)
    with pytest.raises(CaptureFileError) as info:
        PcapFileReader(path)
    assert str(info.value).startswith("bad.pcap: ") and fragment in str(info.value)


def test_missing_file_raises_capture_file_error(tmp_path):
    with pytest.raises(CaptureFileError, match="nowhere.pcap: cannot open"):
        PcapFileReader(tmp_path / "nowhere.pcap")


def test_header_only_file_has_no_frames(tmp_path):
    path = write(tmp_path, "empty.pcap", pcap_file([]))
    with PcapFileReader(path) as reader:
        assert reader.read_batch() is None
        assert reader.frames == 0 and reader.truncated_records == 0 and reader.linktype == 1


# -- what libpcap reads, the native reader reads: constructed files, frame for frame ----------------

def ng_shb_damaged(order, trailer=None, length=28):
    """A version 1.0 section header block `length` bytes long (past the 28-byte fixed part: zero
    padding, so the length need not be a multiple of 4) whose trailing length is `trailer`
    (default: the leading length)."""
    body = struct.pack(order + "IHHq", 0x1A2B3C4D, 1, 0, -1) + b"\0" * (length - 28)
    return struct.pack(order + "II", 0x0A0D0D0A, length) + body + struct.pack(order + "I",
                                                                              length if trailer is None else trailer)


def _section(order="<", snaplen=0, first=1, count=2):
    """An interface and `count` Ethernet frames on it."""
    return ng_idb(order, snaplen=snaplen) + b"".join(ng_epb(order, 0, first + i, frame(first + i))
                                                      for i in range(count))


def _epb_with_options(order, iface, ts_units, data):
    head = struct.pack(order + "IIIII", iface, ts_units >> 32, ts_units & 0xFFFFFFFF, len(data), len(data))
    options = ng_option(order, 1, b"a packet comment") + ng_option(order, 2, struct.pack(order + "I", 1)) \
        + ng_option(order, 0, b"")
    return ng_block(order, 6, head + _pad4(data) + options)


def _garbled(block: bytes, order="<") -> bytes:
    damaged = bytearray(block)
    damaged[-4:] = struct.pack(order + "I", len(block) + 4)
    return bytes(damaged)


_RECORDS = [(1, i, frame(i)) for i in range(1, 4)]

# (name, bytes, why the native reader may read on where libpcap stops; None: it must not)
LIBPCAP_CASES = [
    # libpcap reads the first section header's fixed part and never looks at its trailing length
    ("shb-trailer-larger", ng_shb_damaged("<", trailer=36) + _section(), None),
    ("shb-trailer-zero", ng_shb_damaged("<", trailer=0) + _section(), None),
    ("shb-trailer-big-endian", ng_shb_damaged(">", trailer=1234) + _section(">"), None),
    ("shb-length-30", ng_shb_damaged("<", length=30) + _section(), None),
    ("shb-length-30-trailer-garbage", ng_shb_damaged("<", trailer=0xDEADBEEF, length=30) + _section(), None),
    ("shb-length-47-big-endian", ng_shb_damaged(">", length=47) + _section(">"), None),
    ("shb-minor-2", ng_shb("<", 1, 2) + _section(), None),
    # ... but a later section header is an ordinary block to it: lengths must agree
    ("second-shb-trailer-disagrees", ng_shb("<") + _section() + ng_shb_damaged("<", trailer=36) + _section(), None),
    ("second-shb-length-30", ng_shb("<") + _section() + ng_shb_damaged("<", length=30) + _section(), None),
    ("epb-options", ng_shb("<") + ng_idb("<") + _epb_with_options("<", 0, 5, frame(5)), None),
    ("unknown-and-statistics-blocks", ng_shb("<") + ng_idb("<") + ng_block("<", 0xBAD, b"custom")
     + ng_epb("<", 0, 1, frame(1)) + ng_block("<", 5, b"\0" * 12) + ng_epb("<", 0, 2, frame(2)), None),
    ("trailing-partial-block", ng_shb("<") + _section() + b"\x06\0\0\0", None),
    ("epb-cut-short", ng_shb("<") + _section() + ng_epb("<", 0, 9, frame(9))[:-10], None),
    ("garbled-epb", ng_shb("<") + _section() + _garbled(ng_epb("<", 0, 9, frame(9))) + ng_epb("<", 0, 10, frame(10)),
     None),
    ("packet-on-unknown-interface", ng_shb("<") + _section() + ng_epb("<", 4, 9, frame(9)), None),
    ("pcap-trailing-partial-header", pcap_file(_RECORDS) + b"\1\2\3", None),
    ("pcap-record-over-snaplen", pcap_file(_RECORDS, snaplen=40), None),
    ("pcap-absurd-capture-length", pcap_file(_RECORDS) + struct.pack("<IIII", 9, 0, 0x7FFFFFFF, 60) + frame(9),
     None),
    # where libpcap stops or refuses and the native reader deliberately reads on
    ("spb-shorter-than-its-length",
     ng_shb("<") + ng_idb("<") + ng_spb("<", 1514, frame(3)) + ng_epb("<", 0, 4, frame(4)),
     "an SPB is read as far as its block goes"),
    ("epb-over-snaplen", ng_shb("<") + _section(snaplen=40), "a frame over its interface's snap length is cut to it"),
    ("sections-in-both-byte-orders", ng_shb("<") + _section() + ng_shb(">") + _section(">", first=7),
     "libpcap refuses a section in the other byte order"),
    ("mixed-snaplen", ng_shb("<") + _section() + ng_idb("<", snaplen=8192) + ng_epb("<", 1, 9, frame(9)),
     "libpcap refuses interfaces that differ in snap length"),
    ("mixed-linktype", ng_shb("<") + _section() + ng_idb("<", LINKTYPE_LINUX_SLL) + ng_epb("<", 1, 9, frame(9)),
     "libpcap refuses interfaces that differ in link type"),
    ("shb-minor-1", ng_shb("<", 1, 1) + _section(), "libpcap refuses pcapng 1.1 at open"),
    ("idb-end-of-options-with-a-length", ng_shb("<")
     + ng_block("<", 1, struct.pack("<HHI", 1, 0, 0) + ng_option("<", 0, b"ab")) + ng_epb("<", 0, 1, frame(1)),
     "libpcap refuses an end-of-options option with a length at open"),
]


def _libpcap_rows(path) -> tuple[list, object, Exception | None]:
    """What libpcap hands out before it stops: (comparable rows, the reader, its refusal or None);
    the reader is None when libpcap refuses the file at open."""
    rows = []
    try:
        libpcap = LibpcapFileReader(path)
    except CaptureFileError as exc:
        return rows, None, exc
    with libpcap:
        try:
            while (batch := libpcap.read_batch()) is not None:
                rows += _comparable([(batch.ts_ns[i], batch.caplens[i], batch.wirelens[i], batch.linktypes[i],
                                      batch.frame(i)) for i in range(len(batch))])
        except CaptureFileError as exc:
            return rows, libpcap, exc
    return rows, libpcap, None


@pytest.mark.parametrize("name,data,reads_on", LIBPCAP_CASES, ids=[case[0] for case in LIBPCAP_CASES])
def test_constructed_files_read_like_libpcap(tmp_path, name, data, reads_on):
    path = write(tmp_path, name + (".pcap" if name.startswith("pcap-") else ".pcapng"), data)
    expected, libpcap, refusal = _libpcap_rows(path)
    reader, rows = _read_all(path)
    got = _comparable(rows)
    if reads_on is None:
        # Frame for frame, and the same end: clean, cut short, or stopped at the same damage.
        assert refusal is None and libpcap is not None
        assert got == expected
        assert (reader.truncated_records, reader.bad_blocks) == (libpcap.truncated_records, libpcap.bad_blocks)
    else:
        assert got[:len(expected)] == expected and len(got) > len(expected)
        assert reader.bad_blocks == 0


@pytest.mark.parametrize("order", ["<", ">"])
@pytest.mark.parametrize("trailer,length", [(36, 28), (0, 28), (None, 30), (7, 30), (None, 1024)])
def test_damaged_section_header_is_read_and_noted(tmp_path, order, trailer, length):
    data = ng_shb_damaged(order, trailer, length) + _section(order, count=3)
    reader, rows = _read_all(write(tmp_path, "shb.pcapng", data))
    assert [r[4] for r in rows] == [frame(1), frame(2), frame(3)]
    assert reader.truncated_records == reader.bad_blocks == 0
    notes = " ".join(reader.notes)
    if trailer is not None:
        assert "section header's trailing length %d disagrees with its leading length %d" % (trailer, length) in notes
    if length % 4:
        assert "section header length %d is not a multiple of 4" % length in notes
    if trailer is None and length % 4 == 0:
        assert reader.notes == []


# -- read errors (a disk that fails mid-file) -----------------------------------------------------

def _disk_file(fmt: str, count: int = 40):
    """(bytes, the frames, the offset of each record) of a pcap or pcapng file of `count` frames."""
    frames = [frame(i % 256, 200) for i in range(count)]
    if fmt == "pcap":
        head, blocks = pcap_file([]), [pcap_file([(1, i, f)])[24:] for i, f in enumerate(frames)]
    else:
        head, blocks = ng_shb("<") + ng_idb("<"), [ng_epb("<", 0, i, f) for i, f in enumerate(frames)]
    offsets, pos = [], len(head)
    for block in blocks:
        offsets.append(pos)
        pos += len(block)
    return head + b"".join(blocks), frames, offsets


@pytest.mark.parametrize("reader", ["native", "libpcap"])
@pytest.mark.parametrize("fmt", ["pcap", "pcapng"])
@pytest.mark.parametrize("into_record", [0, 10])
def test_read_error_mid_file_keeps_the_frames_before_it(failing_file, reader, fmt, into_record):
    data, frames, offsets = _disk_file(fmt)
    path = failing_file("disk." + fmt, data, offsets[25] + into_record)
    got = []
    with pytest.raises(CaptureFileError) as info:
        with open_capture(path, reader=reader) as source:
            while (batch := source.read_batch(1000)) is not None:
                got += [batch.frame(i) for i in range(len(batch))]
    assert got == frames[:25]
    message = str(info.value)
    assert message.startswith("disk.%s: " % fmt) and "Input/output error" in message, message
    if reader == "native":
        assert "read error at byte %d" % (offsets[25] + into_record) in message


@pytest.mark.parametrize("reader", ["native", "libpcap"])
@pytest.mark.parametrize("fmt", ["pcap", "pcapng"])
def test_read_error_in_the_file_header_is_refused_at_open(failing_file, reader, fmt):
    data, _frames, _offsets = _disk_file(fmt, 2)
    path = failing_file("head." + fmt, data, 10)
    with pytest.raises(CaptureFileError) as info:
        open_capture(path, reader=reader)
    assert str(info.value).startswith("head.%s: " % fmt) and "Input/output error" in str(info.value)


# -- batch interface -----------------------------------------------------------------------------

def test_batches_respect_max_frames_and_concatenate(real_corpus):
    path = real_corpus / "zk_tunnels_gre-within-gre.pcap"
    _reader, whole = _read_all(path)
    with PcapFileReader(path) as reader:
        pieces, sizes = [], []
        while (batch := reader.read_batch(max_frames=100)) is not None:
            sizes.append(len(batch))
            pieces += [(batch.ts_ns[i], batch.caplens[i], batch.wirelens[i], batch.linktypes[i], batch.frame(i))
                       for i in range(len(batch))]
        assert reader.read_batch() is None
    assert sizes == [100] * 6 + [28]
    assert pieces == whole


def test_open_capture_selects_backend(real_corpus):
    path = real_corpus / "zk_wikipedia.pcap"
    with open_capture(path) as native, open_capture(path, reader="libpcap") as libpcap:
        assert isinstance(native, PcapFileReader) and isinstance(libpcap, LibpcapFileReader)
        assert _comparable(_rows(native)) == _comparable(_rows(libpcap))
    with pytest.raises(ValueError):
        open_capture(path, reader="scapy")


# -- fuzz ----------------------------------------------------------------------------------------

_FUZZ_SEEDS = ["zk_http_get-to-ssh-server.pcap", "zk_ldap_gap-data-missing.pcapng",
               "zk_quic_merlinc2_Zeek_example.pcapng", "zk_dns_ech.pcap", "zk_nflog-http.pcap"]


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


@settings(max_examples=400, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    seed=st.sampled_from(_FUZZ_SEEDS),
    cut=st.one_of(st.none(), st.floats(min_value=0.0, max_value=1.0)),
    flips=st.lists(st.tuples(st.floats(min_value=0.0, max_value=1.0), st.integers(1, 255)), max_size=8),
    snaplen=st.sampled_from([None, 1, 64]),
)
def test_mutated_files_never_raise_after_open(fuzz_dir, seed, cut, flips, snaplen):
    source = need_shared(REAL_CORPUS / seed).read_bytes()
    data = bytearray(source if cut is None else source[: int(len(source) * cut)])
    for where, mask in flips:
        if data:
            data[min(int(where * len(data)), len(data) - 1)] ^= mask
    path = fuzz_dir / "mutant.bin"
    path.write_bytes(bytes(data))
    try:
        reader = PcapFileReader(path, snaplen_bytes=snaplen)
    except CaptureFileError as exc:
        assert str(exc).startswith("mutant.bin: ")
        return
    with reader:
        rows = _rows(reader)
    assert reader.frames == len(rows)
    assert reader.truncated_records + reader.bad_blocks <= 1
    if snaplen is not None:
        assert all(r[1] <= snaplen for r in rows)


def _differential_seeds() -> dict[str, bytes]:
    """Small files of every block and record kind both readers handle, in both byte orders."""
    seeds = {}
    for order in "<>":
        seeds["pcapng" + order] = (
            ng_shb(order) + ng_block(order, 0xBAD, b"custom data") + ng_idb(order, tsresol=9)
            + ng_idb(order, tsresol=0x80 | 20, tsoffset_s=5) + ng_epb(order, 0, 1, frame(1))
            + _epb_with_options(order, 1, 2, frame(2)) + ng_spb(order, 60, frame(3)) + ng_pb(order, 0, 4, frame(4))
            + ng_block(order, 5, b"\0" * 12) + ng_shb(order, 1, 2) + ng_idb(order) + ng_epb(order, 0, 5, frame(5, 90)))
        seeds["pcap" + order] = pcap_file([(1, 2, frame(1)), (3, 4, frame(2, 90), 1500), (5, 6, frame(3))],
                                          order=order)
    seeds["pcap-ns"] = pcap_file([(1, 999_999_999, frame(1)), (2, 0, frame(2))], magic=PCAP_NS)
    return seeds


_DIFFERENTIAL_SEEDS = _differential_seeds()


@settings(max_examples=600, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    seed=st.sampled_from(sorted(_DIFFERENTIAL_SEEDS)),
    cut=st.one_of(st.none(), st.floats(min_value=0.0, max_value=1.0)),
    head_flips=st.lists(st.tuples(st.integers(0, 159), st.integers(1, 255)), max_size=4),
    flips=st.lists(st.tuples(st.floats(min_value=0.0, max_value=1.0), st.integers(1, 255)), max_size=4),
)
def test_mutated_files_the_native_reader_reads_what_libpcap_reads(fuzz_dir, seed, cut, head_flips, flips):
    """Wherever libpcap opens a damaged file, the native reader opens it too and hands out the
    same frames libpcap hands out (then possibly more: see LIBPCAP_CASES). Timestamps are left out
    here (the constructed tests check them): libpcap reads a classic pcap's seconds as signed and
    scales pcapng units through 64-bit products that overflow for extreme resolutions, so a
    flipped timestamp or if_tsresol byte may read as another value, never as another frame."""
    source = _DIFFERENTIAL_SEEDS[seed]
    data = bytearray(source if cut is None else source[: int(len(source) * cut)])
    for where, mask in head_flips:
        if where < len(data):
            data[where] ^= mask
    for where, mask in flips:
        if data:
            data[min(int(where * len(data)), len(data) - 1)] ^= mask
    path = fuzz_dir / "differential.bin"
    path.write_bytes(bytes(data))
    expected, libpcap, _refusal = _libpcap_rows(path)
    if libpcap is None:
        return
    with PcapFileReader(path) as reader:
        rows = _rows(reader)
    assert [row[1:] for row in _comparable(rows)][:len(expected)] == [row[1:] for row in expected]
