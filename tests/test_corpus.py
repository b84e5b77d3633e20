"""Scenario corpora replayed through the real pipeline and event log, compared with expectations.

- The project's own corpus (tests/corpus: generated captures, manifest.toml): exact event sets.
- Maltrail's replay corpus (../shared/corpus/maltrail): every expected line Maltrail's sensor wrote
  is produced (timestamps aside), every `expect` string of a trail case appears, cases without
  expectations stay silent, and any line Maltrail did not write is one of the documented
  deliberate differences (COMPATIBILITY.md), heuristics included: where Maltrail's sensor missed a
  timing-dependent detection (it stamps packets with the wall clock), the manifest's `expect`
  strings are what must fire.
- The real captures (../shared/corpus/real) go through the installed `maltrail-engine replay`
  command: exit 0, no traceback, every frame accounted for.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import subprocess
import sys
import tomllib
from collections import Counter
from pathlib import Path

import pytest
import zstandard

from events.log import EventLogReader, EventLogWriter
from events.formats import format_maltrail
from engine.inprocess import accounted, replay_files
from matchers import Artifact, TrailMatchers
from tests.conftest import MALTRAIL_CORPUS, REAL_CORPUS, SHARED_TRAILS, need_shared
from trailsdb.compile import build
from workers.pipeline import Worker

CORPUS = Path(__file__).resolve().parent / "corpus"
MANIFEST = tomllib.loads((CORPUS / "manifest.toml").read_text())


def _strip_time(line: str) -> str:
    return line.split('" ', 1)[1]


def replay_to_log(pcap: str, artifact: str, log_dir: Path, sensor: str, fast: bool = True):
    """Replays one capture through the worker (the C path, or the Python reference) into a real
    event log, reads the log back."""
    worker = Worker(TrailMatchers.load(Artifact.open(artifact)), sensor, fast=fast)
    with EventLogWriter(str(log_dir)) as writer:
        replay_files([pcap], worker, writer)
    events = list(EventLogReader().iter_dir(str(log_dir)))
    return worker, events


@pytest.fixture(scope="module")
def own_corpus(tmp_path_factory):
    from tests.corpus.generate import write_corpus
    base = tmp_path_factory.mktemp("own-corpus")
    paths = write_corpus(str(base / "pcaps"))
    artifact = str(base / "trails.mtdb")
    build([str(CORPUS / "trails.csv")], artifact)
    return paths, artifact


def test_manifest_covers_every_scenario(own_corpus):
    paths, _ = own_corpus
    assert sorted(paths) == sorted(MANIFEST)


PATHS = [pytest.param(True, id="c"), pytest.param(False, id="reference")]


@pytest.mark.parametrize("fast", PATHS)
@pytest.mark.parametrize("name", sorted(MANIFEST))
def test_own_corpus_scenario(name, fast, own_corpus, tmp_path):
    paths, artifact = own_corpus
    expect = MANIFEST[name]
    worker, events = replay_to_log(paths[name], artifact, tmp_path / "log", "corpus", fast)
    assert accounted(worker.stats())
    totals = Counter()
    for event in events:
        totals[_strip_time(format_maltrail(event))] += event.count
    assert set(totals) == set(expect["events"]), "\n".join(sorted(totals))
    for line in expect["events"]:
        assert totals[line] == expect.get("counts", {}).get(line, 1), line
    assert dict(worker.counters.skipped) == expect.get("skipped", {})
    assert dict(worker.counters.dropped) == expect.get("dropped", {})


# --- Maltrail's corpus --------------------------------------------------------------------------

_NX_LIST = re.compile(r"DNS \(([^)]*)\)(\.\S+) \"excessive no such domain")


def _same_nxdomain_flood(ours: str, theirs: str) -> bool:
    """Maltrail lists the names of an NXDOMAIN flood in set order and leaves out the first one it
    counted; we list every name, sorted (COMPATIBILITY.md)."""
    a, b = _NX_LIST.search(ours), _NX_LIST.search(theirs)
    if not a or not b or a.group(2) != b.group(2):
        return False
    if _NX_LIST.sub("", ours) != _NX_LIST.sub("", theirs):
        return False
    return set(b.group(1).split(",")) <= set(a.group(1).split(","))


_VARYING = (1, 2, 3, 4, 5)  # src_ip, src_port, dst_ip, dst_port, proto in a line without its time


def _covered_by_summary(expected_line: str, ours: set[str]) -> bool:
    """An expected line Maltrail wrote on its own is one of the repeats our noise control folded
    into a record of the same source and trail (its fields list the repeats' values)."""
    want = expected_line.split(" ")
    for line in ours:
        have = line.split(" ")
        if len(have) != len(want):
            continue
        if all(h == w if i not in _VARYING else w in h.split(",") for i, (h, w) in enumerate(zip(have, want))):
            return True
    return False


def _produced(expected_line: str, ours: set[str]) -> bool:
    return (expected_line in ours or _covered_by_summary(expected_line, ours)
            or any(_same_nxdomain_flood(line, expected_line) for line in ours))


def _deliberate_difference(info: dict, line: str, expected: list[str]) -> str | None:
    """Why a line Maltrail's Python sensor did not write is right (see COMPATIBILITY.md)."""
    case = info["name"]
    for other in expected:
        a, b = line.split(" "), other.split(" ")
        if len(a) == len(b) and all(x == y for i, (x, y) in enumerate(zip(a, b)) if i not in _VARYING):
            return "a repeat of an expected event from the same source (noise control folds them into one record)"
        if _same_nxdomain_flood(line, other):
            return "the NXDOMAIN flood's names, all of them and sorted"
    if info["needs_pcap_timestamps"] and any(text in line for text in info["expect"]):
        return "Maltrail's sensor missed it: it stamps packets with the wall clock (the manifest's expectation)"
    if case == "dns_resolver_trail" and re.search(r'UDP IP "198\.51\.100\.53 \(skipme2?\.com\)"', line):
        return "IP trails are checked on every packet: AAAA/PTR queries to a listed resolver too"
    if case == "vlan" and "50062 66.66.66.66 443 TCP IP" in line:
        return "stacked 802.1Q tags are followed (Maltrail drops QinQ)"
    if case == "icmp" and line.startswith("parity 66.66.66.66 - 10.0.0.66 - ICMP IP"):
        return "an echo reply is judged too (oriented to the request it answers)"
    if case in ("udp_malware_dst", "dns_same_socket_burst"):
        return "the manifest's expect_rust_only detections"
    return None


def _maltrail_cases():
    path = MALTRAIL_CORPUS / "manifest.json"
    if not path.exists():
        return [pytest.param(None, marks=pytest.mark.skip(reason="needs ../shared/corpus/maltrail"))]
    return [case["name"] for case in json.loads(path.read_text())]


@pytest.fixture(scope="module")
def maltrail_fixture_artifact(tmp_path_factory):
    need_shared(MALTRAIL_CORPUS)
    artifact = str(tmp_path_factory.mktemp("maltrail") / "trails.mtdb")
    build([str(MALTRAIL_CORPUS / "trails.csv")], artifact)
    return artifact


@pytest.mark.parametrize("fast", PATHS)
@pytest.mark.parametrize("name", _maltrail_cases())
def test_maltrail_corpus_case(name, fast, maltrail_fixture_artifact, tmp_path):
    case = {c["name"]: c for c in json.loads((MALTRAIL_CORPUS / "manifest.json").read_text())}[name]
    worker, events = replay_to_log(str(MALTRAIL_CORPUS / case["pcap"]), maltrail_fixture_artifact,
                                   tmp_path / "log", "parity", fast)
    assert accounted(worker.stats())
    assert worker.counters.frames == case["packets"]
    ours = {_strip_time(format_maltrail(e)) for e in events}
    expected = [_strip_time(line) for line in (MALTRAIL_CORPUS / "expected" / ("%s.log" % name)).read_text().splitlines()
                if line.strip()]
    for line in expected:
        assert _produced(line, ours), "missing Maltrail line: %s\nours: %s" % (line, sorted(ours))
    for text in case["expect"]:
        assert any(text in line for line in ours), "expected %r in one of %s" % (text, sorted(ours))
    if not case["expect"] and not expected:
        assert ours == set(), ours
    for line in ours - set(expected):
        assert _deliberate_difference(case, line, expected), "unexplained extra event: %s" % line


# --- real captures through the installed command --------------------------------------------------

def _real_captures():
    path = REAL_CORPUS / "manifest.tsv"
    if not path.exists():
        return [pytest.param(None, None, marks=pytest.mark.skip(reason="needs ../shared/corpus/real"))]
    rows = [line.split("\t") for line in path.read_text().splitlines()[1:] if line.strip()]
    return [pytest.param(row[0], int(row[9]), id=row[0]) for row in rows]


def console_script() -> str:
    script = os.path.join(os.path.dirname(sys.executable), "maltrail-engine")
    assert os.path.exists(script), "the package is not installed in this interpreter's environment"
    return script


_SUMMARY = re.compile(r"^frames: (\d+) .*\ndecoded: (\d+); skipped: (\d+)", re.M)


def test_a_client_of_a_server_in_a_mass_scanner_range_is_not_reported(tmp_path):
    """zk_tls_heartbleed-success.pcap holds a client's TLS session with 107.170.241.107, inside the
    shared trail set's 107.170.192.0/18 "mass scanner cidr": the client is not the scanner, the
    session is no event (Maltrail's attacker rule, followed by the scanner ranges too)."""
    capture = need_shared(REAL_CORPUS) / "zk_tls_heartbleed-success.pcap"
    source = tmp_path / "ranges.csv"
    with open(need_shared(SHARED_TRAILS), "rb") as raw, open(source, "w", newline="") as out:
        text = io.TextIOWrapper(zstandard.ZstdDecompressor().stream_reader(raw), encoding="utf-8", errors="replace")
        writer = csv.writer(out)
        for row in csv.reader(text):
            if len(row) == 3 and re.match(r"\A[0-9a-f.:]+/\d+\Z", row[0].strip()):
                writer.writerow(row)     # every range trail of the shared set, nothing else
    artifact = tmp_path / "ranges.mtdb"
    assert subprocess.run([console_script(), "trails", "build", "--source", str(source), "-o", str(artifact)],
                          capture_output=True, timeout=120).returncode == 0
    check = subprocess.run([console_script(), "trails", "check", "--trails", str(artifact), "107.170.241.107"],
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0 and "'107.170.192.0/18'" in check.stdout and "mass scanner cidr" in check.stdout
    result = subprocess.run([console_script(), "replay", "--trails", str(artifact), "--log-dir", str(tmp_path / "log"),
                             str(capture)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "frames: 34 " in result.stderr and "\nevents: 0\n" in result.stderr, result.stderr


@pytest.mark.parametrize("name,packets", _real_captures())
def test_real_capture_replays_cleanly(name, packets, maltrail_fixture_artifact, tmp_path):
    result = subprocess.run([console_script(), "replay", "--trails", maltrail_fixture_artifact,
                             "--log-dir", str(tmp_path / "log"), str(REAL_CORPUS / name)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    m = _SUMMARY.search(result.stderr)
    assert m, result.stderr
    frames, decoded, skipped = map(int, m.groups())
    assert frames == packets
    assert decoded + skipped == frames
