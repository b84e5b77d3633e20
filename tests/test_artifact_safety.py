"""A trail artifact that cannot hurt a running sensor: real builds, real files, the real engine.

What this file establishes:
1. integrity: damage anywhere in an artifact (a bit of any section, of the header, of the section
   table), a truncated or extended copy, or a file of the older format is refused when it is
   opened, and the message names the file and what is wrong;
2. building: `trails build` never writes through a symlink planted at the name its temporary
   file used to have, refuses a directory every user can write to, refuses to replace an artifact
   with a build of less than half its trails unless `--force`, and shows progress on a terminal
   only; the compile cache keeps a bounded number of builds;
3. the running sensor (`maltrail-engine replay` fed through a FIFO): a damaged artifact at start
   is refused with a non-zero exit and the reason; SIGHUP with a damaged file of any kind is
   refused and the running generation goes on detecting; a file overwritten in place under the
   sensor (a bigger valid one, a truncated one) is noticed and detection goes on unchanged; a
   worker whose reload fails keeps its generation, and a worker that dies after a reload is
   restarted on the last generation its slot ran, whatever the path holds by then.
"""

from __future__ import annotations

import fcntl
import os
import pty
import re
import shutil
import signal
import struct
import subprocess
import termios
import threading
import time
from pathlib import Path

import pytest

from engine.sources import synthetic as g
from matchers import Artifact, ArtifactError
from matchers.artifact import _HEADER, _SECTION, MAGIC, S_IP4, write_artifact
from tests import traffic
from tests.test_corpus import console_script
from tests.test_engine import _fifo_engine, _wait_line, children_named, records
from trailsdb.compile import build, collect, layout
from trailsdb.sources import EMPTY_WHITELIST

CORPUS = Path(__file__).resolve().parent / "corpus"


def mte(*args, timeout=120, **kw):
    return subprocess.run([console_script(), *args], capture_output=True, text=True, timeout=timeout, **kw)


def corpus_rows(extra=()) -> list[str]:
    return (CORPUS / "trails.csv").read_text().splitlines() + list(extra)


def write_csv(path, rows) -> str:
    Path(path).write_text("\n".join(rows) + "\n")
    return str(path)


def table_of(data: bytes) -> list[tuple[str, int, int, int]]:
    """(name, offset, length, where its table entry is) of every section, read with the layout the
    installed module declares."""
    count, = struct.unpack_from("<I", data, 32)
    out = []
    for i in range(count):
        at = _HEADER.size + i * _SECTION.size
        raw, offset, length = struct.unpack_from("<16sQQ", data, at)
        out.append((raw.rstrip(b"\0").decode(), offset, length, at))
    return out


def flipped(data: bytes, at: int, bit: int = 0) -> bytes:
    damaged = bytearray(data)
    damaged[at] ^= 1 << bit
    return bytes(damaged)


@pytest.fixture(scope="module")
def corpus_artifact(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("trails") / "trails.mtdb"
    build([str(CORPUS / "trails.csv")], str(path))
    return path


# ---- 1. integrity -----------------------------------------------------------------------------

def test_a_flipped_bit_in_any_section_is_refused_naming_the_section(corpus_artifact, tmp_path):
    data = corpus_artifact.read_bytes()
    sections = [s for s in table_of(data) if s[2]]
    assert len(sections) >= 20  # every kind of section the corpus fills
    for name, offset, length, _ in sections:
        for at, bit in ((offset, 0), (offset + length // 2, 3), (offset + length - 1, 7)):
            bad = tmp_path / "bad.mtdb"
            bad.write_bytes(flipped(data, at, bit))
            with pytest.raises(ArtifactError, match=r"bad.mtdb: damaged: section '%s' does not match its "
                                                    r"checksum; rebuild it" % name):
                Artifact.open(str(bad))
    Artifact.open(str(corpus_artifact)).close()  # the original is fine


def test_damage_to_the_header_or_the_section_table_is_refused(corpus_artifact, tmp_path):
    data = corpus_artifact.read_bytes()
    # header: header size, generation, build time, section count, byte-order mark, file length,
    # the checksum itself, the reserved bytes after it
    places = [12, 16, 24, 32, 36, 40, 48, 52]
    for _, _, _, entry in table_of(data):  # each entry's name, offset, length, checksum, reserved
        places += [entry + 1, entry + 16, entry + 24, entry + 32, entry + 36]
    for at in places:
        bad = tmp_path / "bad.mtdb"
        bad.write_bytes(flipped(data, at, 1))
        with pytest.raises(ArtifactError, match=r"bad.mtdb: damaged: its header"):
            Artifact.open(str(bad))


def test_truncated_or_extended_copies_are_refused_before_any_section_is_read(corpus_artifact, tmp_path):
    data = corpus_artifact.read_bytes()
    for cut in (20, _HEADER.size + 5, len(data) // 2, len(data) - 1):
        bad = tmp_path / "cut.mtdb"
        bad.write_bytes(data[:cut])
        with pytest.raises(ArtifactError, match=r"cut.mtdb: (too short|truncated)"):
            Artifact.open(str(bad), verify=False)
    bad = tmp_path / "longer.mtdb"
    bad.write_bytes(data + bytes(4096))
    with pytest.raises(ArtifactError, match=r"longer.mtdb: %d bytes where %d were written" % (len(data) + 4096, len(data))):
        Artifact.open(str(bad), verify=False)


def test_an_artifact_of_the_older_format_gets_the_rebuild_message(tmp_path):
    old = tmp_path / "old.mtdb"
    # format 1: magic, version, header size, generation, build time, section count, byte-order mark
    old.write_bytes(struct.pack("<8sIIQQII", MAGIC, 1, 40, 7, 0, 0, 0x01020304))
    with pytest.raises(ArtifactError, match=r"old.mtdb: artifact format 1, this version reads \d+; rebuild it with "
                                            r"`maltrail-engine trails build`"):
        Artifact.open(str(old))


# ---- 2. building --------------------------------------------------------------------------------

def test_build_never_writes_through_a_symlink_at_the_old_temporary_name(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    output = out_dir / "trails.mtdb"
    planted = out_dir / (".trails.mtdb.tmp-%d" % os.getpid())  # the name builds used to write
    planted.symlink_to(victim)
    report = build([str(CORPUS / "trails.csv")], str(output))
    assert victim.read_text() == "precious\n"
    assert planted.is_symlink() and os.readlink(planted) == str(victim)
    assert not output.is_symlink() and sorted(os.listdir(out_dir)) == sorted([planted.name, "trails.mtdb"])
    assert Artifact.open(str(output)).trail_count == report.trails
    assert output.stat().st_mode & 0o777 == 0o644


def test_trails_build_refuses_a_directory_every_user_can_write_to(tmp_path):
    source = str(CORPUS / "trails.csv")
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    result = mte("trails", "build", "--source", source, "-o", str(shared / "trails.mtdb"))
    assert result.returncode == 1, result.stderr
    assert "refusing to write %s" % (shared / "trails.mtdb") in result.stderr
    assert "writable by every user and has no sticky bit" in result.stderr
    assert os.listdir(shared) == []
    shared.chmod(0o1777)  # with the sticky bit nobody can replace what the build creates there
    result = mte("trails", "build", "--source", source, "-o", str(shared / "trails.mtdb"))
    assert result.returncode == 0, result.stderr


def test_trails_build_refuses_to_shrink_the_artifact_to_less_than_half_unless_forced(tmp_path):
    output = tmp_path / "trails.mtdb"
    assert mte("trails", "build", "--source", str(CORPUS / "trails.csv"), "-o", str(output)).returncode == 0
    full = Artifact.open(str(output)).trail_count
    before = output.read_bytes()
    fewer, enough = (full - 1) // 2, (full + 1) // 2     # less than half, and not less than half
    short = write_csv(tmp_path / "short.csv", corpus_rows()[:fewer])
    result = mte("trails", "build", "--source", short, "-o", str(output))
    assert result.returncode == 1
    assert re.search(r"holds %d trails and this build only %d, less than half: refusing to replace it .*--force"
                     % (full, fewer), result.stderr), result.stderr
    assert output.read_bytes() == before
    other = tmp_path / "other.mtdb"
    shutil.copyfile(output, other)
    half = write_csv(tmp_path / "half.csv", corpus_rows()[:enough])
    assert mte("trails", "build", "--source", half, "-o", str(other)).returncode == 0
    result = mte("trails", "build", "--source", short, "-o", str(output), "--force")
    assert result.returncode == 0, result.stderr
    artifact = Artifact.open(str(output))
    assert (artifact.trail_count, artifact.generation) == (fewer, 2)


def _run_on_a_terminal(args) -> tuple[int, str]:
    """Runs the command with its stdout and stderr on a pseudo-terminal; (exit status, output)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a 100-column terminal
    proc = subprocess.Popen([console_script(), *args], stdin=subprocess.DEVNULL, stdout=slave, stderr=slave)
    os.close(slave)
    chunks = []

    def read():
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the last holder of the terminal's other side is gone
                return
            if not chunk:
                return
            chunks.append(chunk)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    code = proc.wait(timeout=120)
    reader.join(timeout=30)
    os.close(master)
    return code, b"".join(chunks).decode("utf-8", "replace")


def test_trails_build_shows_progress_on_a_terminal_and_nothing_when_not_on_one(tmp_path):
    rows = corpus_rows(["filler-%d.example,filler (malware),(test)" % i for i in range(20000)])
    source = write_csv(tmp_path / "feed.csv", rows)
    code, shown = _run_on_a_terminal(["trails", "build", "--source", source, "-o", str(tmp_path / "tty.mtdb")])
    assert code == 0, shown
    assert re.search(r"feed\.csv: [\d.]+k? rows", shown), shown    # tqdm's count of the rows read
    assert "20.0k rows" in shown or "20023" in shown.replace(",", ""), shown
    quiet = mte("trails", "build", "--source", source, "-o", str(tmp_path / "pipe.mtdb"))
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stderr == "" and "rows/s" not in quiet.stdout and "\r" not in quiet.stdout


def test_the_compile_cache_keeps_a_bounded_number_of_builds(tmp_path, monkeypatch):
    from engine.trail_artifact import CACHE_KEEP_BUILDS, evict_cache, resolve_artifact
    cache = tmp_path / "cache"
    monkeypatch.setenv("MALTRAIL_ENGINE_CACHE", str(cache))
    sources = [write_csv(tmp_path / ("feed%d.csv" % i), ["evil%d.example,x (malware),(test)" % i])
               for i in range(CACHE_KEEP_BUILDS + 3)]
    used = []
    for source in sources:
        used.append(resolve_artifact(source, False, log=lambda _: None))
        cached = sorted(p.name for p in cache.glob("src-*.mtdb"))
        assert len(cached) <= CACHE_KEEP_BUILDS
        assert os.path.basename(used[-1]) in cached
    assert sorted(p.name for p in cache.glob("src-*.mtdb")) == sorted(os.path.basename(p) for p in used[-3:])
    # Least recently used goes first: a use counts, not only the build (times set explicitly).
    newest = [cache / os.path.basename(p) for p in used[-3:]]
    for seconds, path in zip((300, 100, 200), newest):
        os.utime(path, (seconds, path.stat().st_mtime))
    stale = cache / ".src-0123.mtdb.abc123.tmp"   # left by a build that was killed long ago
    stale.write_bytes(b"x")
    os.utime(stale, (1, 1))
    fresh = cache / ".src-4567.mtdb.def456.tmp"   # a build in progress
    fresh.write_bytes(b"x")
    keep = cache / "src-keep.mtdb"
    keep.write_bytes(b"x")
    os.utime(keep, (50, 50))
    removed = evict_cache(str(keep))
    assert sorted(removed) == sorted([stale.name, newest[1].name])
    assert sorted(p.name for p in cache.iterdir()) == sorted([fresh.name, keep.name, newest[0].name, newest[2].name])


# ---- 3. the running sensor ------------------------------------------------------------------------

def query(name: str, sport: int) -> bytes:
    return g.udp_frame("10.0.0.1", "10.0.0.53", sport, 53, g.dns_query(name))


def write_batch(stream, indicators: list[bytes], base_sport: int) -> None:
    """1,024 frames (one full read batch, dispatched at once): the indicators, then connections to
    an address no trail lists."""
    frames = indicators + [g.tcp_frame("10.0.0.1", "198.18.0.1", base_sport + i, 443)
                           for i in range(1024 - len(indicators))]
    stream.write(b"".join(struct.pack("<IIII", 1_772_323_200 + base_sport, i, len(f), len(f)) + f
                          for i, f in enumerate(frames)))
    stream.flush()


def pcap_header(stream) -> None:
    stream.write(struct.pack("<IHHiIII", g.PCAP_MAGIC_US, 2, 4, 0, 0, 262144, 1))


def swap_in(path: Path, data: bytes) -> None:
    """Publishes `data` at `path` the way a build does: a new file renamed over the old one."""
    tmp = path.with_name(path.name + ".new")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def overwrite_in_place(path: Path, data: bytes) -> None:
    """What `cp new.mtdb trails.mtdb` does: the same file (inode), truncated and written again."""
    with open(path, "r+b") as f:
        f.truncate(0)
        f.write(data)


def test_a_damaged_artifact_at_start_is_refused_with_the_reason(corpus_artifact, tmp_path):
    pcap = traffic.write(tmp_path / "t.pcap", 2000)
    data = corpus_artifact.read_bytes()
    ip4 = next(s for s in table_of(data) if s[0] == S_IP4)
    cases = {"section": (flipped(data, ip4[1] + ip4[2] // 2), r"damaged: section 'ip4' does not match its checksum"),
             "header": (flipped(data, 16), r"damaged: its header or section table"),
             "truncated": (data[:len(data) - 100], r"truncated: %d of its %d bytes" % (len(data) - 100, len(data))),
             "old format": (data[:8] + struct.pack("<I", 1) + data[12:], r"artifact format 1, this version reads")}
    for name, (content, message) in cases.items():
        bad = tmp_path / ("%s.mtdb" % name.replace(" ", "-"))
        bad.write_bytes(content)
        log = tmp_path / ("log-" + bad.stem)
        run = mte("replay", "--trails", str(bad), "--log-dir", str(log), pcap)
        assert run.returncode == 1, (name, run.stderr)
        assert re.search(re.escape(str(bad)) + ": " + message, run.stderr), (name, run.stderr)
        assert "Traceback" not in run.stderr
        assert not log.exists() or not any(log.iterdir())  # nothing started, nothing written


def test_sighup_with_a_damaged_artifact_is_refused_and_detection_goes_on(tmp_path):
    path = tmp_path / "trails.mtdb"
    build([write_csv(tmp_path / "t1.csv", corpus_rows())], str(path))
    side = tmp_path / "next.mtdb"
    shutil.copyfile(path, side)
    build([write_csv(tmp_path / "t2.csv", corpus_rows(["later-trail.org,added later (malware),(test)"]))], str(side))
    good = side.read_bytes()
    damaged = {"%s section" % name: flipped(good, offset + length // 2, 5)
               for name, offset, length, _ in table_of(good) if length}
    damaged["header"] = flipped(good, 24, 2)
    damaged["section table"] = flipped(good, _HEADER.size + 20)
    damaged["truncated copy"] = good[:len(good) * 2 // 3]
    proc, stream, lines, log = _fifo_engine(tmp_path, str(path))
    try:
        pcap_header(stream)
        write_batch(stream, [query("a1.evil-parent.net", 40001), query("a1.later-trail.org", 40002)], 41000)
        _wait_processed(lines, 1024)
        for what, data in damaged.items():
            swap_in(path, data)
            proc.send_signal(signal.SIGHUP)
            line = _wait_line(lines, r"reload failed, keeping generation 1: %s: (damaged|truncated)"
                              % re.escape(str(path)))
            lines.remove(line)
            if what.endswith(" section"):
                assert "section '%s' does not match its checksum" % what[:-len(" section")] in line, (what, line)
        write_batch(stream, [query("a2.evil-parent.net", 40003), query("a2.later-trail.org", 40004)], 42000)
        _wait_processed(lines, 2048)  # judged by generation 1, before the good file comes
        swap_in(path, good)
        proc.send_signal(signal.SIGHUP)
        _wait_line(lines, r"reload done: every worker runs generation 2")
        write_batch(stream, [query("a3.evil-parent.net", 40005), query("a3.later-trail.org", 40006)], 43000)
    finally:
        stream.close()
    proc.wait(timeout=60)
    err = "".join(lines)
    assert proc.returncode == 0, err
    assert "died" not in err and "reloading trails: generation 2" in err
    assert err.count("reloading trails") == 1  # no damaged copy ever reached a worker
    # generation 1 went on detecting through every refused reload; the later trail fired only once
    # the good file was adopted
    assert sorted(r[9] for r in records(log)) == ["(a1).evil-parent.net", "(a2).evil-parent.net",
                                                 "(a3).evil-parent.net", "(a3).later-trail.org"]


def _wait_processed(lines, frames: int) -> None:
    """Waits for a statistics line saying the workers together processed `frames` frames."""
    def total(line):
        m = re.search(r"processed ((?:w\d+:\d+ ?)+)", line)
        return sum(int(part.split(":")[1]) for part in m.group(1).split()) if m else -1
    _wait_line_count(lines, r"processed", 1)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if any(total(line) == frames for line in list(lines)):
            return
        time.sleep(0.05)
    raise AssertionError("the workers never reported %d frames processed:\n%s" % (frames, "".join(lines)))


def _notices(lines) -> int:
    return sum(1 for line in lines if "since it was loaded; detection goes on unchanged" in line)


def _wait_checks(lines, checks: int = 3) -> None:
    """Waits until the supervisor has looked at the artifact's path `checks` more times (it does
    each second; the statistics line comes each second too with stats_interval_s = 1)."""
    seen = sum(1 for line in lines if re.match(r"\[i\] \S+ \S+ frames", line))
    _wait_line_count(lines, r"^\[i\] \S+ \S+ frames", seen + checks + 1)


def _wait_line_count(lines, pattern, count, timeout_s=30.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if sum(1 for line in list(lines) if re.search(pattern, line)) >= count:
            return
        time.sleep(0.05)
    raise AssertionError("fewer than %d lines matching %r in:\n%s" % (count, pattern, "".join(lines)))


def test_an_artifact_overwritten_in_place_is_noticed_and_detection_goes_on(tmp_path):
    path = tmp_path / "trails.mtdb"
    build([write_csv(tmp_path / "t1.csv", corpus_rows())], str(path))
    original = path.read_bytes()
    # A valid, bigger artifact: the filler moves every section, so a worker still mapping the path
    # would read the new bytes at the old offsets.
    side = tmp_path / "bigger.mtdb"
    shutil.copyfile(path, side)
    fillers = ["filler-%d.example,filler (malware),(test)" % i for i in range(5000)]
    build([write_csv(tmp_path / "t2.csv", corpus_rows(fillers + ["later-trail.org,added later (malware),(test)"]))],
          str(side))
    bigger = side.read_bytes()
    moved = {name for (name, at, _, _), (_, old_at, _, _) in zip(table_of(bigger), table_of(original)) if at != old_at}
    assert len(bigger) > len(original) and len(moved) >= 15, moved
    proc, stream, lines, log = _fifo_engine(tmp_path, str(path))
    changes = 0
    try:
        pcap_header(stream)
        write_batch(stream, [query("b1.evil-parent.net", 40001)], 41000)
        _wait_line(lines, r"processed w0:1024\b")

        overwrite_in_place(path, bigger)
        changes += 1
        _wait_line(lines, r"\[!\] \d{4}-\d\d-\d\d \d\d:\d\d:\d\d trail artifact %s was written to in place \(%d bytes, now \d+\) since it was "
                          r"loaded; detection goes on unchanged with the loaded copy of generation 1; send SIGHUP"
                   % (re.escape(str(path)), len(original)))
        write_batch(stream, [query("b2.evil-parent.net", 40002), query("b2.later-trail.org", 40003)], 42000)
        _wait_line(lines, r"processed w0:2048\b")

        os.truncate(path, len(bigger) // 3)
        changes += 1
        _wait_line_count(lines, r"was written to in place", 2)
        write_batch(stream, [query("b3.evil-parent.net", 40004), query("b3.later-trail.org", 40005)], 43000)
        _wait_line(lines, r"processed w0:3072\b")
        said = _notices(lines)
        assert changes <= said <= changes + 1  # +1: a look between cp's truncation and its write
        _wait_checks(lines)
        assert _notices(lines) == said  # said once per change, not at every look

        proc.send_signal(signal.SIGHUP)
        _wait_line(lines, r"reload failed, keeping generation 1: .*truncated")
        overwrite_in_place(path, bigger)
        changes += 1
        _wait_line_count(lines, r"was written to in place", 3)
        proc.send_signal(signal.SIGHUP)  # adopts the file through the same checks as any reload
        _wait_line(lines, r"reload done: every worker runs generation 2")
        write_batch(stream, [query("b4.evil-parent.net", 40006), query("b4.later-trail.org", 40007)], 44000)
        _wait_line(lines, r"processed w0:4096\b")
        _wait_checks(lines)
    finally:
        stream.close()
    proc.wait(timeout=60)
    err = "".join(lines)
    assert proc.returncode == 0, err
    assert "died" not in err
    assert changes <= _notices(lines) <= changes + 2, err  # +1 per cp: a look between truncation and write
    assert sorted(r[9] for r in records(log)) == ["(b1).evil-parent.net", "(b2).evil-parent.net",
                                                 "(b3).evil-parent.net", "(b4).evil-parent.net",
                                                 "(b4).later-trail.org"]


def _unloadable(tmp_path, rows) -> bytes:
    """An artifact whose every checksum holds but whose IPv4 bitmap is not a roaring bitmap: it
    passes the supervisor's check and fails in the worker's load (any reason a reload may fail)."""
    entries, meta = collect([write_csv(tmp_path / "unloadable.csv", rows)])
    sections = [(name, b"\xff" * 64 if name == S_IP4 else data)
                for name, data in layout(entries, meta, EMPTY_WHITELIST, {})]
    out = tmp_path / "unloadable.mtdb"
    write_artifact(str(out), 9, 0, sections)
    return out.read_bytes()


def test_a_failed_reload_keeps_the_workers_generation_and_a_restart_uses_it(tmp_path):
    path = tmp_path / "trails.mtdb"
    build([write_csv(tmp_path / "t1.csv", corpus_rows())], str(path))
    poison = _unloadable(tmp_path, corpus_rows(["later-trail.org,added later (malware),(test)"]))
    proc, stream, lines, log = _fifo_engine(tmp_path, str(path))
    try:
        pcap_header(stream)
        write_batch(stream, [query("c1.evil-parent.net", 40001)], 41000)
        _wait_line(lines, r"processed w0:1024\b")
        swap_in(path, poison)
        proc.send_signal(signal.SIGHUP)
        _wait_line(lines, r"reloading trails: generation 9")
        _wait_line(lines, r"\[!\] \d{4}-\d\d-\d\d \d\d:\d\d:\d\d reload: worker 0 keeps generation 1: .*roaring")
        _wait_line(lines, r"reload failed in every worker; the sensor keeps generation 1")
        write_batch(stream, [query("c2.evil-parent.net", 40002), query("c2.later-trail.org", 40003)], 42000)
        _wait_line(lines, r"processed w0:2048\b")
        # The path still holds the file that failed: a restarted worker must not start on it.
        os.kill(children_named(proc.pid, "mte-worker")[0], signal.SIGKILL)
        _wait_line(lines, r"worker 0 died \(exit -9\); it held no batch, no frame is lost; restarting it")
        write_batch(stream, [query("c3.evil-parent.net", 40004), query("c3.later-trail.org", 40005)], 43000)
        _wait_line(lines, r"processed w0:3072\b")
    finally:
        stream.close()
    proc.wait(timeout=60)
    err = "".join(lines)
    assert proc.returncode == 0, err
    assert err.count("died") == 1, err
    assert sorted(r[9] for r in records(log)) == ["(c1).evil-parent.net", "(c2).evil-parent.net",
                                                 "(c3).evil-parent.net"]


def test_a_worker_that_dies_after_a_reload_restarts_on_the_generation_it_ran(tmp_path):
    path = tmp_path / "trails.mtdb"
    build([write_csv(tmp_path / "t1.csv", corpus_rows())], str(path))
    proc, stream, lines, log = _fifo_engine(tmp_path, str(path))
    try:
        pcap_header(stream)
        write_batch(stream, [query("d1.evil-parent.net", 40001), query("d1.later-trail.org", 40002)], 41000)
        _wait_line(lines, r"processed w0:1024\b")
        build([write_csv(tmp_path / "t2.csv", corpus_rows(["later-trail.org,added later (malware),(test)"]))],
              str(path))
        proc.send_signal(signal.SIGHUP)
        _wait_line(lines, r"reload done: every worker runs generation 2")
        # Then the file is destroyed in place; the worker dies: its successor runs generation 2.
        overwrite_in_place(path, b"\0" * 4096)
        os.kill(children_named(proc.pid, "mte-worker")[0], signal.SIGKILL)
        _wait_line(lines, r"worker 0 died \(exit -9\); it held no batch, no frame is lost; restarting it")
        write_batch(stream, [query("d2.evil-parent.net", 40003), query("d2.later-trail.org", 40004)], 42000)
        _wait_line(lines, r"processed w0:2048\b")
    finally:
        stream.close()
    proc.wait(timeout=60)
    err = "".join(lines)
    assert proc.returncode == 0, err
    assert err.count("died") == 1, err
    assert sorted(r[9] for r in records(log)) == ["(d1).evil-parent.net", "(d2).evil-parent.net",
                                                 "(d2).later-trail.org"]


def _trail_copies_mapped(pid: int) -> set[str]:
    """The trail copies (memfds) a process maps, by inode; and whether it maps an .mtdb path."""
    with open("/proc/%d/maps" % pid) as f:
        return {line.split()[4] for line in f if "/memfd:mte-trails" in line} | \
            {"PATH" for line in open("/proc/%d/maps" % pid) if ".mtdb" in line}


def _trail_copies_held(pid: int) -> int:
    held = 0
    for fd in os.listdir("/proc/%d/fd" % pid):
        try:
            held += os.readlink("/proc/%d/fd/%s" % (pid, fd)).startswith("/memfd:mte-trails")
        except OSError:
            pass
    return held


def test_workers_map_the_private_copy_never_the_path_and_let_go_of_the_old_one(tmp_path):
    path = tmp_path / "trails.mtdb"
    build([write_csv(tmp_path / "t1.csv", corpus_rows())], str(path))
    proc, stream, lines, _ = _fifo_engine(tmp_path, str(path), workers=3)
    try:
        pcap_header(stream)
        _wait_line(lines, r"processed w0:0 w1:0 w2:0")
        workers = children_named(proc.pid, "mte-worker")
        others = children_named(proc.pid, "mte-capture") + children_named(proc.pid, "mte-writer")
        assert len(workers) == 3 and len(others) == 2
        first = {pid: _trail_copies_mapped(pid) for pid in workers}
        assert all(len(m) == 1 and "PATH" not in m for m in first.values()), first
        assert len(set().union(*first.values())) == 1              # one copy, shared by all three
        assert _trail_copies_held(proc.pid) == 1                     # the supervisor's descriptor
        # a worker's one descriptor is its mapping's own (Python's mmap keeps a duplicate); the
        # capture process and the log writer hold none
        assert [_trail_copies_held(pid) for pid in workers + others] == [1, 1, 1, 0, 0]
        assert all(not _trail_copies_mapped(pid) for pid in others)

        build([write_csv(tmp_path / "t2.csv", corpus_rows(["later-trail.org,x (malware),(test)"]))], str(path))
        proc.send_signal(signal.SIGHUP)
        _wait_line(lines, r"reload done: every worker runs generation 2")
        second = {pid: _trail_copies_mapped(pid) for pid in workers}
        assert all(len(m) == 1 for m in second.values()), second    # the old copy is unmapped
        assert set().union(*second.values()).isdisjoint(set().union(*first.values()))
        assert _trail_copies_held(proc.pid) == 1                     # and the supervisor let it go
        assert [_trail_copies_held(pid) for pid in workers + others] == [1, 1, 1, 0, 0]
    finally:
        stream.close()
    proc.wait(timeout=60)
    assert proc.returncode == 0, "".join(lines)
