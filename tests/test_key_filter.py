"""The key filters in front of the domain and URL hash tables (matchers/csrc/artifact.h mt_filter).

What this file establishes:
1. on a real compiled artifact (a sample of the shared 1.63M-row trail set), each filter passes
   every key of its table, and rules out most keys that are not in it;
2. a filter section that was damaged is refused: by its checksum when the file is opened, and,
   when the damage came with a fresh checksum, by the filter's own check (the whole-file check
   and the C tables both run it), so the engine does not start on it rather than quietly missing
   trails;
3. an artifact built without filter sections (before them) still loads, the worker building its
   own filters, and detects exactly what the same trails with stored filters detect.
"""

from __future__ import annotations

import random
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import zstandard

from engine.inprocess import replay_files
from events.formats import format_maltrail
from events.log import EventLogReader, EventLogWriter
from matchers import Artifact, TrailMatchers, _native
from matchers.artifact import (
    S_DOMAINS, S_DOMAINS_FILTER, S_STRINGS, S_TRAILS, S_URLS, S_URLS_FILTER, ArtifactError, write_artifact,
)
from tests.conftest import SHARED_TRAILS, need_shared
from trailsdb.compile import build
from workers.pipeline import Worker, fast_tables

CORPUS = Path(__file__).resolve().parent / "corpus"
PAIRS = ((S_DOMAINS, S_DOMAINS_FILTER), (S_URLS, S_URLS_FILTER))


@pytest.fixture(scope="module")
def sampled_artifact(tmp_path_factory):
    """Every 6th row of the shared trail set (about 270,000 real trails of every kind), compiled."""
    source = need_shared(SHARED_TRAILS)
    base = tmp_path_factory.mktemp("key-filter")
    with open(source, "rb") as f:
        text = zstandard.ZstdDecompressor().stream_reader(f).read().decode("utf-8", "surrogateescape")
    rows = text.splitlines(keepends=True)
    sample = base / "sample.csv"
    sample.write_text("".join(rows[::6]), encoding="utf-8", errors="surrogateescape")
    output = base / "sample.mtdb"
    build([str(sample)], str(output))
    return output


def _sections(artifact: Artifact) -> list[tuple[str, bytes]]:
    sizes = artifact.section_sizes()
    order = sorted(sizes, key=lambda name: artifact._sections[name][0])
    return [(name, bytes(artifact.section(name))) for name in order]


def test_filters_pass_every_key_of_a_real_artifact(sampled_artifact):
    artifact = Artifact.open(sampled_artifact)
    trails, strings = artifact.section(S_TRAILS), artifact.section(S_STRINGS)
    for table, key_filter in PAIRS:
        assert artifact.has(key_filter)
        count = int.from_bytes(artifact.section(table)[4:8], "little")
        assert count > 10_000, (table, count)
        assert _native.filter_misses(artifact.section(key_filter), artifact.section(table), trails, strings) == 0
    # and they are filters: random names that are no trail are mostly ruled out
    rng = random.Random(13)
    absent = [("%016x.example-%d.test" % (rng.getrandbits(64), i)).encode() for i in range(20_000)]
    for _, key_filter in PAIRS:
        assert _native.filter_passes(artifact.section(key_filter), absent) < len(absent) // 10


def _with_filter(sections, key_filter, data):
    return [(name, data if name == key_filter else old) for name, old in sections]


def test_damaged_filter_is_refused(sampled_artifact, tmp_path):
    artifact = Artifact.open(sampled_artifact)
    sections = _sections(artifact)
    data = bytearray(dict(sections)[S_DOMAINS_FILTER])
    at = next(i for i in range(16, len(data)) if data[i])
    data[at] &= data[at] - 1              # one bit of a key cleared: that key would be hidden

    # damage in place: the section's checksum no longer holds, the file is refused when opened
    raw = bytearray(sampled_artifact.read_bytes())
    offset = artifact._sections[S_DOMAINS_FILTER][0]
    raw[offset:offset + len(data)] = data
    (tmp_path / "damaged.mtdb").write_bytes(raw)
    with pytest.raises(ArtifactError, match="domains_filter"):
        Artifact.open(tmp_path / "damaged.mtdb")

    # the same damage written with fresh checksums: refused by the whole-file check (what the
    # supervisor's copy runs), and by the C tables' own check where that is skipped
    forged = tmp_path / "forged.mtdb"
    write_artifact(str(forged), 1, 0, _with_filter(sections, S_DOMAINS_FILTER, bytes(data)))
    with pytest.raises(ArtifactError, match="domains_filter.*damaged"):
        Artifact.open(forged)
    with pytest.raises(ValueError, match="domains_filter"):
        fast_tables(Artifact.open(forged, verify=False))
    # and the engine does not start on it (an empty capture file: the trails are loaded first)
    empty = tmp_path / "empty.pcap"
    empty.write_bytes(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
    done = subprocess.run([sys.executable, "-c", "from cli import main; raise SystemExit(main())", "replay",
                           "--trails", str(forged), "--log-dir", str(tmp_path / "log"), "--workers", "1",
                           str(empty)], capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "domains_filter" in done.stderr

    # a filter built for another table (its key count differs) is refused too
    other = bytearray(dict(sections)[S_URLS_FILTER])
    wrong = tmp_path / "wrong.mtdb"
    write_artifact(str(wrong), 1, 0, _with_filter(sections, S_DOMAINS_FILTER, bytes(other)))
    with pytest.raises(ArtifactError, match="domains_filter.*(another table|wrong size)"):
        Artifact.open(wrong)
    with pytest.raises(ValueError, match="another table|wrong size"):
        fast_tables(Artifact.open(wrong, verify=False))


def _events(artifact: str, pcaps: list[str], log_dir: Path) -> list[str]:
    worker = Worker(TrailMatchers.load(Artifact.open(artifact)), "filters", fast=True)
    with EventLogWriter(str(log_dir)) as writer:
        replay_files(pcaps, worker, writer)
    return sorted(format_maltrail(e).split('" ', 1)[1] for e in EventLogReader().iter_dir(str(log_dir)))


def test_artifact_without_filters_loads_and_detects_the_same(tmp_path):
    from tests.corpus.generate import write_corpus
    pcaps = sorted(write_corpus(str(tmp_path / "pcaps")).values())
    stored = str(tmp_path / "stored.mtdb")
    build([str(CORPUS / "trails.csv")], stored)
    artifact = Artifact.open(stored)
    assert artifact.has(S_DOMAINS_FILTER) and artifact.has(S_URLS_FILTER)
    bare = str(tmp_path / "bare.mtdb")
    write_artifact(bare, 1, 0, [(n, d) for n, d in _sections(artifact) if n not in (S_DOMAINS_FILTER, S_URLS_FILTER)])
    assert not Artifact.open(bare).has(S_DOMAINS_FILTER)
    with_filters = _events(stored, pcaps, tmp_path / "log-stored")
    without = _events(bare, pcaps, tmp_path / "log-bare")
    assert any(' DNS ' in e for e in with_filters) and any(' URL ' in e for e in with_filters), with_filters
    assert without == with_filters
