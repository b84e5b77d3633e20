"""engine/inprocess.py, the single-process replay loop, against the capture process it stands in
for: the same files give the same report (files read, files that could not be read or stopped part
way with how many frames were replayed, notes, records cut short, timeline breaks), and the
worker judges exactly the frames the capture process would have put in the rings.

Real files on a real FUSE filesystem that fails part way (tests/fusefile.py), the real forked
capture process, a real worker and event log.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.inprocess import accounted, replay_files
from events.log import EventLogWriter
from matchers import Artifact, TrailMatchers
from tests.fusefile import failing_file  # noqa: F401 (a fixture)
from tests.test_capture_c import _run_capture_process, files_that_stop, mixed_records, pcap_bytes
from trailsdb.compile import build
from workers.pipeline import Worker

CORPUS = Path(__file__).resolve().parent / "corpus"


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    path = tmp_path_factory.mktemp("trails") / "trails.mtdb"
    build([str(CORPUS / "trails.csv")], str(path))
    return str(path)


@pytest.mark.parametrize("reader", ["native", "libpcap"])
def test_files_that_stop_part_way_are_reported_as_the_capture_process_reports_them(
        failing_file, tmp_path, reader, artifact):
    paths, kept = files_that_stop(failing_file, tmp_path, reader)
    older = tmp_path / "older.pcap"          # starts before what was replayed: a new timeline
    older.write_bytes(pcap_bytes([(ts - 3_600_000_000_000, *rest) for ts, *rest in mixed_records(40, seed=8)]))
    paths.append(str(older))
    _, captured = _run_capture_process(paths, 1, reference=False, reader=reader)

    worker = Worker(TrailMatchers.load(Artifact.open(artifact)), "inprocess")
    with EventLogWriter(str(tmp_path / "log")) as writer:
        report = replay_files(paths, worker, writer, reader=reader)
    for key in ("files", "unreadable", "notes", "truncated_records", "timeline_breaks"):
        assert report[key] == captured[key], key
    # the pcapng, the good pcap and the older one each start before the first file's last packet
    assert len(report["unreadable"]) == 3 and report["timeline_breaks"] == 3
    counters = worker.stats()
    assert counters["frames"] == captured["frames"] == sum(len(k) for k in kept) + 40
    assert accounted(counters)
