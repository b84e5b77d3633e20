"""`maltrail-engine replay` over capture files that cannot be read to their end, for real: the
installed command and its processes, over a pcapng libpcap refuses part-way, a pcap on a FUSE
filesystem that fails with EIO part-way (tests/fusefile.py), a file that is not a capture, and
files damaged in ways both readers read past.

- a file that stops is named in the summary with how many of its frames were replayed; those
  frames are judged (their events are in the log) and every file after it is replayed;
- the shipped C path and `--reference` alike, with the native reader and `--reader libpcap`;
- the exit status is 1 when any file given was not read to its end (not a capture, a read error,
  refused by libpcap), and 0 when every file was read to its end, damage in a file (a last record
  cut short, a section header whose lengths disagree) being a note only.

Every frame is a DNS query for a trail, one client address per file, so the events' counts per
source say exactly how many frames of each file were judged.
"""

from __future__ import annotations

import json
import os
import re
import struct
import subprocess
from pathlib import Path

import pytest

from engine.sources import synthetic as g
from tests.conftest import REAL_CORPUS, need_shared
from tests.fusefile import failing_file  # noqa: F401 (a fixture)
from tests.test_corpus import console_script
from tests.test_pcapfile import ng_epb, ng_idb, ng_shb, ng_shb_damaged
from trailsdb.compile import build

CORPUS = Path(__file__).resolve().parent / "corpus"
T0_S = 1_700_000_000


def mte(*args):
    return subprocess.run([console_script(), *args], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    path = tmp_path_factory.mktemp("trails") / "trails.mtdb"
    build([str(CORPUS / "trails.csv")], str(path))
    return str(path)


def queries(client: str, first_s: int, count: int) -> list[tuple[int, bytes]]:
    """(ts_ns, frame): `count` DNS queries for evil-exact.com (a trail) from `client`, one a second."""
    return [((first_s + i) * 1_000_000_000,
             g.udp_frame(client, "10.0.0.53", 40000 + i, 53, g.dns_query("evil-exact.com", ident=i)))
            for i in range(count)]


def pcap_bytes(frames) -> bytes:
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1)]
    for ts_ns, data in frames:
        out.append(struct.pack("<IIII", ts_ns // 1_000_000_000, ts_ns % 1_000_000_000 // 1000, len(data), len(data)))
        out.append(data)
    return b"".join(out)


def epbs(frames, iface=0) -> bytes:
    return b"".join(ng_epb("<", iface, ts_ns // 1000, data) for ts_ns, data in frames)


def judged_per_source(log_dir) -> dict[str, int]:
    """Frames that raised an event, per source address: the events' counts added up."""
    out = mte("tail", "--log-dir", str(log_dir), "--format", "json")
    assert out.returncode == 0, out.stderr
    totals: dict[str, int] = {}
    for line in out.stdout.splitlines():
        record = json.loads(line)
        assert record["trail"] == "evil-exact.com"
        totals[record["src_ip"]] = totals.get(record["src_ip"], 0) + record["count"]
    return totals


def unreadable_lines(stderr: str) -> list[str]:
    return [line[len("unreadable: "):] for line in stderr.splitlines() if line.startswith("unreadable: ")]


@pytest.fixture
def stopping_files(tmp_path, failing_file):  # noqa: F811 (the fixture above)
    """[a pcapng libpcap refuses after 3 of its 5 frames, a pcap failing with EIO inside its 6th
    of 8 frames, a text file, a good pcap of 4 frames]; clients 10.0.0.1, .2, -, .3."""
    refused = tmp_path / "refused.pcapng"
    refused.write_bytes(ng_shb("<") + ng_idb("<") + epbs(queries("10.0.0.1", T0_S, 3))
                        + ng_idb("<", snaplen=8192) + epbs(queries("10.0.0.1", T0_S + 3, 2), iface=1))
    eio_frames = queries("10.0.0.2", T0_S + 10, 8)
    eio_bytes = pcap_bytes(eio_frames)
    fail_at = len(pcap_bytes(eio_frames[:5])) + 20
    eio = failing_file("eio.pcap", eio_bytes, fail_at)
    text = tmp_path / "notes.txt"
    text.write_text("these are not packets\n")
    good = tmp_path / "good.pcap"
    good.write_bytes(pcap_bytes(queries("10.0.0.3", T0_S + 20, 4)))
    return [str(refused), str(eio), str(text), str(good)]


@pytest.mark.parametrize("flags", [[], ["--reference"]], ids=["c", "reference"])
@pytest.mark.parametrize("reader", ["native", "libpcap"])
def test_files_that_stop_are_reported_the_frames_before_judged_the_rest_replayed(artifact, stopping_files,
                                                                                tmp_path, reader, flags):
    log = tmp_path / "log"
    run = mte("replay", "--trails", artifact, "--log-dir", str(log), "--sensor-name", "s", "--workers", "2",
              "--reader", reader, *flags, *stopping_files)
    assert "Traceback" not in run.stderr and "died" not in run.stderr, run.stderr
    assert run.returncode == 1, run.stderr
    problems = unreadable_lines(run.stderr)
    if reader == "libpcap":
        assert judged_per_source(log) == {"10.0.0.1": 3, "10.0.0.2": 5, "10.0.0.3": 4}
        refused, eio, text = problems
        assert refused.startswith("refused.pcapng: libpcap refuses to read on: an interface has a snapshot length")
        assert refused.endswith("; its first 3 frame(s) were replayed, not the rest")
    else:
        # the native reader reads interfaces of different snap lengths (libpcap does not)
        assert judged_per_source(log) == {"10.0.0.1": 5, "10.0.0.2": 5, "10.0.0.3": 4}
        eio, text = problems
    assert eio.startswith("eio.pcap: ") and "Input/output error" in eio, eio
    assert eio.endswith("; its first 5 frame(s) were replayed, not the rest")
    assert text == ("notes.txt: libpcap cannot read it: unknown file format" if reader == "libpcap"
                    else "notes.txt: not a pcap or pcapng file (magic 0x74686573)")
    assert "frames: %d " % (12 if reader == "libpcap" else 14) in run.stderr


def test_quiet_replay_still_says_why_it_failed(artifact, stopping_files, tmp_path):
    run = mte("replay", "--trails", artifact, "--log-dir", str(tmp_path / "log"), "-q", *stopping_files)
    assert run.returncode == 1
    assert len(unreadable_lines(run.stderr)) == 2, run.stderr


@pytest.mark.parametrize("reader", ["native", "libpcap"])
def test_every_file_read_to_its_end_exits_0_with_damage_noted(artifact, tmp_path, reader):
    shb = tmp_path / "shb.pcapng"
    shb.write_bytes(ng_shb_damaged("<", trailer=0, length=30) + ng_idb("<") + epbs(queries("10.0.0.4", T0_S, 3)))
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(pcap_bytes(queries("10.0.0.5", T0_S + 10, 3))[:-7])
    log = tmp_path / "log"
    run = mte("replay", "--trails", artifact, "--log-dir", str(log), "--reader", reader, str(shb), str(cut))
    assert run.returncode == 0, run.stderr
    assert unreadable_lines(run.stderr) == []
    assert judged_per_source(log) == {"10.0.0.4": 3, "10.0.0.5": 2}
    assert "capture files ended inside a record: 1" in run.stderr
    if reader == "native":
        assert "note: shb.pcapng: the section header's trailing length 0 disagrees with its leading length 30" \
            in run.stderr


def test_the_real_capture_libpcap_refuses_is_skipped(artifact, tmp_path):
    """The case the issue names: a real pcapng whose interfaces differ in snap length."""
    refused = need_shared(REAL_CORPUS / "zk_ldap_gap-data-missing.pcapng")
    after = REAL_CORPUS / "zk_wikipedia.pcap"
    alone = mte("replay", "--trails", artifact, "--log-dir", str(tmp_path / "alone"), "--reader", "libpcap",
                str(after))
    assert alone.returncode == 0, alone.stderr
    run = mte("replay", "--trails", artifact, "--log-dir", str(tmp_path / "log"), "--reader", "libpcap",
              str(refused), str(after))
    assert "Traceback" not in run.stderr and run.returncode == 1, run.stderr
    frames = [re.search(r"^frames: (\d+) in ", text, re.M) for text in (alone.stderr, run.stderr)]
    assert frames[0] and frames[1] and frames[0].group(1) == frames[1].group(1)
    assert unreadable_lines(run.stderr) == [
        "zk_ldap_gap-data-missing.pcapng: libpcap refuses to read on: an interface has a snapshot length 8192 "
        "different from the snapshot length of the first interface; none of it was replayed"]
    assert os.path.basename(after) not in "".join(unreadable_lines(run.stderr))
