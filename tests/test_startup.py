"""Start-up (ARCHITECTURE.md, "Start-up"): what the engine does before its first packet, and the
safety that must survive making it faster.

The trail artifact's sections are checked once, on the sealed private copy the workers map (not
on the file first and the copy again); the copy is made on a thread while the engine is imported,
checked while the workers load it, and a replay's capture process starts only after the check, so
a damaged copy ends the start before any input is read or the log directory is touched. The first
packet of a replay still reaches the log, and the version every start names still is the
installed distribution's.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from importlib.metadata import version
from pathlib import Path

import pytest

from engine.sources import synthetic as g
from engine.trail_artifact import TrailCopy, resolve_artifact
from matchers import ArtifactError
from matchers.artifact import S_IP4
from tests.test_artifact_safety import flipped, table_of
from tests.test_engine import mte, records
from trailsdb.compile import build

CORPUS = Path(__file__).resolve().parent / "corpus"


@pytest.fixture(scope="module")
def corpus_artifact(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("trails") / "trails.mtdb"
    build([str(CORPUS / "trails.csv")], str(path))
    return path


@pytest.fixture()
def damaged(corpus_artifact, tmp_path) -> Path:
    """The corpus artifact with one bit flipped inside its `ip4` section: its header and section
    table are intact, only the section's checksum can tell."""
    data = corpus_artifact.read_bytes()
    ip4 = next(s for s in table_of(data) if s[0] == S_IP4)
    bad = tmp_path / "damaged.mtdb"
    bad.write_bytes(flipped(data, ip4[1] + ip4[2] // 2))
    return bad


def test_the_artifact_is_checked_once_on_the_copy_and_a_damaged_one_stops_the_start_before_any_input(
        damaged, tmp_path):
    # Resolving the path reads the header and table only: the sections are checked on the copy.
    assert resolve_artifact(str(damaged), False, log=lambda _: None) == str(damaged)

    # A FIFO as the capture file tells whether the capture process ever opened its input: a
    # writer opening it without blocking succeeds only while a reader has it open.
    fifo = tmp_path / "input.fifo"
    os.mkfifo(fifo)
    opened = threading.Event()
    done = threading.Event()

    def probe() -> None:
        while not done.is_set():
            try:
                fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            except OSError:  # ENXIO: no reader
                time.sleep(0.002)
                continue
            opened.set()
            os.close(fd)
            return

    prober = threading.Thread(target=probe, daemon=True)
    prober.start()
    log = tmp_path / "log"
    try:
        run = mte("replay", "--trails", str(damaged), "--log-dir", str(log), "--workers", "2", str(fifo))
    finally:
        done.set()
        prober.join()
    assert run.returncode == 1, run.stderr
    assert "%s: damaged: section 'ip4' does not match its checksum" % damaged in run.stderr
    assert "Traceback" not in run.stderr
    assert not opened.is_set(), "the capture process opened its input before the trails passed their check"
    assert not log.exists() or not any(log.iterdir())


def test_a_copy_made_on_a_thread_is_sealed_and_counts_as_checked_only_after_verify(corpus_artifact, damaged,
                                                                                      tmp_path):
    pending = TrailCopy.copy_on_thread(str(corpus_artifact))
    copy = pending.result()
    try:
        assert not copy.verified
        assert copy.trail_count > 0 and copy.generation >= 1
        seals = fcntl.fcntl(copy.fd, fcntl.F_GET_SEALS)
        for seal in (fcntl.F_SEAL_WRITE, fcntl.F_SEAL_SHRINK, fcntl.F_SEAL_GROW, fcntl.F_SEAL_SEAL):
            assert seals & seal
        with pytest.raises(OSError):
            os.write(copy.fd, b"x")  # sealed before anyone can be handed it
        copy.verify()
        assert copy.verified
    finally:
        copy.close()

    bad = TrailCopy.copy_on_thread(str(damaged)).result()
    try:
        with pytest.raises(ArtifactError, match=r"damaged: section 'ip4' does not match its checksum"):
            bad.verify()
        assert not bad.verified
    finally:
        bad.close()

    with pytest.raises(ArtifactError, match=r"cannot open trail artifact"):
        TrailCopy.copy_on_thread(str(tmp_path / "missing.mtdb")).result()

    before = _trail_copies_open()
    discarded = TrailCopy.copy_on_thread(str(corpus_artifact))
    discarded.discard()  # a start that failed before the engine ran: the copy is closed
    assert _trail_copies_open() == before
    with pytest.raises(ArtifactError):
        TrailCopy.copy_on_thread(str(tmp_path)).result()  # a directory is not an artifact


def _trail_copies_open() -> int:
    count = 0
    for name in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink("/proc/self/fd/%s" % name).startswith("/memfd:mte-trails")
        except OSError:
            pass
    return count


def test_the_first_and_only_packet_of_a_replay_reaches_the_log(corpus_artifact, tmp_path):
    pcap = tmp_path / "one.pcap"
    with g.PcapWriter(str(pcap)) as w:
        w.write(1_700_000_000_000_000_000, g.udp_frame("10.0.0.5", "10.0.0.53", 40000, 53,
                                                         g.dns_query("evil-exact.com")))
    log = tmp_path / "log"
    run = mte("replay", "--trails", str(corpus_artifact), "--log-dir", str(log), str(pcap))
    assert run.returncode == 0, run.stderr
    found = records(log)
    assert len(found) == 1, found
    assert any("evil-exact.com" in str(field) for field in found[0]), found


def test_every_start_names_the_installed_version():
    run = mte("--version")
    assert run.returncode == 0, run.stderr
    assert run.stdout.split()[:2] == ["maltrail-engine", version("maltrail-engine")]
