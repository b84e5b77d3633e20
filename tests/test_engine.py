"""The multi-process engine for real: the installed command, its processes, signals and rings.

- the same events from 1, 2, 3 and 4 workers (dispatch keeps every piece of evidence together);
- a worker killed mid-replay is replaced, and the frames it held are counted;
- SIGTERM mid-replay: everything read before the signal is judged and in the log, exit 0 < 5 s;
- SIGHUP: a new trail generation is adopted between batches; a shrunken or broken one is refused;
- a dead capture process or log writer ends the run with a non-zero status;
- the default capture filter keeps what detection needs and drops bulk TCP;
- live capture with two workers on a veth pair.
"""

from __future__ import annotations

import json
import os
import re
import signal
import struct
import subprocess
import threading
import time
from pathlib import Path

import pcap
import pytest

from engine.sources import synthetic as g
from engine.transport.dispatch import Dispatcher, dispatch_key
from engine.transport.ring import min_ring_bytes
from engine.sources.live import expand_filter
from tests import traffic
from tests.conftest import MALTRAIL_CORPUS, REAL_CORPUS
from tests.netns import DST_MAC, send_frames, veth  # noqa: F401 (veth is a fixture)
from tests.test_cli import wait_for_records
from tests.test_corpus import console_script
from trailsdb.compile import build

CORPUS = Path(__file__).resolve().parent / "corpus"


def mte(*args, timeout=300, **kw):
    return subprocess.run([console_script(), *args], capture_output=True, text=True, timeout=timeout, **kw)


def process_table() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, name (comm)) of every process, read from /proc."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % entry) as f:
                fields = f.read()
        except OSError:
            continue
        comm = fields[fields.index("(") + 1:fields.rindex(")")]
        table[int(entry)] = (int(fields[fields.rindex(")") + 2:].split()[1]), comm)
    return table


def children_named(pid: int, prefix: str) -> list[int]:
    """Child processes of `pid` whose name (comm) starts with `prefix`."""
    return [p for p, (ppid, comm) in process_table().items() if ppid == pid and comm.startswith(prefix)]


def wait_for_children(pid: int, prefix: str, count: int = 1, timeout_s: float = 10) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = children_named(pid, prefix)
        if len(found) >= count:
            return found
        time.sleep(0.02)
    raise AssertionError("no %s child of %d" % (prefix, pid))


def records(log_dir) -> list[tuple]:
    out = mte("tail", "--log-dir", str(log_dir), "--format", "json")
    assert out.returncode == 0, out.stderr
    return sorted((tuple(json.loads(line).values()) for line in out.stdout.splitlines()), key=repr)


def summary_number(text: str, pattern: str) -> int:
    m = re.search(pattern, text)
    assert m, text
    return int(m.group(1))


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    path = tmp_path_factory.mktemp("trails") / "trails.mtdb"
    build([str(CORPUS / "trails.csv")], str(path))
    return str(path)


@pytest.fixture(scope="module")
def big_pcap(tmp_path_factory):
    return traffic.write(tmp_path_factory.mktemp("traffic") / "big.pcap", 120_000)


def config(tmp_path, **sensor) -> str:
    path = tmp_path / "maltrail.toml"
    path.write_text("[sensor]\n" + "".join("%s = %s\n" % (k, json.dumps(v)) for k, v in sensor.items()))
    return str(path)


# --- dispatch ------------------------------------------------------------------------------------

def test_dispatch_keeps_flows_clients_and_dns_names_together():
    c, s = "10.0.0.1", "198.51.100.7"
    syn = g.tcp_frame(c, s, 40000, 443)
    synack = g.tcp_frame(s, c, 443, 40000, g.TCP_SYN | g.TCP_ACK)
    data_back = g.tcp_frame(s, c, 443, 40000, g.TCP_PSH | g.TCP_ACK, b"x")
    other_flow = g.tcp_frame(c, "203.0.113.9", 40001, 22)
    assert dispatch_key(syn, 1) == dispatch_key(synack, 1) == dispatch_key(data_back, 1) == dispatch_key(other_flow, 1)
    scan = [g.tcp_frame("192.0.2.7", "10.0.%d.%d" % (i // 250, i % 250), 50000 + i, 445) for i in range(100)]
    assert len({dispatch_key(f, 1) for f in scan}) == 1  # one scanner, many targets: one key
    query = g.udp_frame("10.0.0.1", "10.0.0.53", 40000, 53, g.dns_query("a.b.example-dom.com"))
    answer = g.udp_frame("10.0.0.53", "10.0.0.2", 53, 40001, g.dns_response("x.example-dom.com", [], rcode=3))
    tcp_query = g.tcp_frame("10.0.0.9", "10.0.0.53", 40002, 53, g.TCP_PSH | g.TCP_ACK,
                            len(g.dns_query("c.example-dom.com")).to_bytes(2, "big") + g.dns_query("c.example-dom.com"))
    assert dispatch_key(query, 1) == dispatch_key(answer, 1) == dispatch_key(tcp_query, 1) == b"d:example-dom.com"
    assert dispatch_key(g.udp_frame(c, "10.0.0.53", 1, 53, g.dns_query("x.y.co.uk")), 1) == b"d:y.co.uk"
    d = Dispatcher(4, seed=b"0" * 16)
    assert d.worker_for(syn, 1) == d.worker_for(synack, 1)
    spread = {Dispatcher(4, seed=b"s").worker_for(g.tcp_frame("10.1.%d.%d" % (i // 250, i % 250), s, 1000, 80), 1)
              for i in range(400)}
    assert spread == {0, 1, 2, 3}


# --- worker counts -----------------------------------------------------------------------------

def _corpus_pcaps(tmp_path_factory):
    from tests.corpus.generate import write_corpus
    paths = list(write_corpus(str(tmp_path_factory.mktemp("own"))).values())
    if MALTRAIL_CORPUS.exists():
        paths += sorted(str(p) for p in MALTRAIL_CORPUS.glob("*.pcap"))
    if REAL_CORPUS.exists():
        paths += sorted(str(p) for p in REAL_CORPUS.glob("*.pcap*"))[:20]
    return paths


@pytest.fixture(scope="module")
def every_capture(tmp_path_factory, big_pcap):
    return _corpus_pcaps(tmp_path_factory) + [big_pcap]


def test_one_to_four_workers_give_the_same_events(every_capture, artifact, tmp_path):
    results = {}
    for n in (1, 2, 3, 4):
        log = tmp_path / ("log%d" % n)
        run = mte("replay", "--trails", artifact, "--log-dir", str(log), "--sensor-name", "w", "--workers", str(n),
                  *every_capture)
        assert run.returncode == 0, run.stderr
        results[n] = records(log)
        if n > 1:
            assert "workers: %d" % n in run.stderr
    assert len(results[1]) > 1000
    for n in (2, 3, 4):
        assert results[n] == results[1], "events differ between 1 and %d workers" % n


def _queries(path, start_s: int, count: int) -> str:
    with g.PcapWriter(str(path)) as w:
        for i in range(count):
            w.write((start_s + i) * 1_000_000_000,
                    g.udp_frame("10.0.0.5", "10.0.0.53", 40000 + i, 53, g.dns_query("evil-exact.com", ident=i)))
    return str(path)


@pytest.mark.parametrize("flags", [[], ["--reference"]], ids=["c", "reference"])
def test_a_file_older_than_the_ones_before_it_starts_a_new_timeline(artifact, tmp_path, flags):
    """Noise-control groups end where a replayed file goes back in time (a timeline break), so
    unrelated captures replayed together group the same whatever else each worker saw; a file that
    carries time on (a rotated capture) continues the groups."""
    first = _queries(tmp_path / "a.pcap", 1_700_000_100, 6)        # t .. t+5
    older = _queries(tmp_path / "b.pcap", 1_700_000_100, 6)        # back to t: a new timeline
    later = _queries(tmp_path / "c.pcap", 1_700_000_110, 6)        # t+10 .. t+15: carries on
    results = {}
    for name, files in (("break", [first, older]), ("continue", [first, later])):
        log, stats = tmp_path / name, tmp_path / (name + ".json")
        run = mte("replay", "--trails", artifact, "--log-dir", str(log), "--sensor-name", "w", "--workers", "2",
                  "--stats-json", str(stats), *flags, *files)
        assert run.returncode == 0, run.stderr
        results[name] = ([(r[9], r[13]) for r in records(log)],
                         json.loads(stats.read_text())["capture"]["timeline_breaks"])
    # two groups: each file's first query at once, its five repeats in one summary
    assert results["break"] == ([("evil-exact.com", 1)] * 2 + [("evil-exact.com", 5)] * 2, 1)
    # one group across both files: the first query, then eleven repeats within the 60 s window
    assert results["continue"] == ([("evil-exact.com", 1), ("evil-exact.com", 11)], 0)


def test_the_reference_paths_give_the_same_events_and_counters(every_capture, artifact, tmp_path):
    """`replay --reference` (Python capture and judgement) against the shipped C paths, 2 workers."""
    runs = {}
    for name, flags in (("c", []), ("reference", ["--reference"])):
        log = tmp_path / name
        stats = tmp_path / (name + ".json")
        run = mte("replay", "--trails", artifact, "--log-dir", str(log), "--sensor-name", "w", "--workers", "2",
                  "--stats-json", str(stats), *flags, *every_capture)
        assert run.returncode == 0, run.stderr
        counters = json.loads(stats.read_text())["counters"]
        counters.pop("first_batch_unix")  # a wall-clock time
        runs[name] = (records(log), counters)
    assert len(runs["c"][0]) > 1000
    assert runs["reference"][0] == runs["c"][0]
    assert runs["reference"][1] == runs["c"][1]


# --- failures and signals ------------------------------------------------------------------------

def _feed_until(stream, stop: threading.Event, after_stop: int = 4) -> list[int]:
    """Writes traffic to the FIFO in 2,048-frame chunks until `stop` is set, then `after_stop`
    chunks more; returns [frames written]. A closed reader (the engine stopped) ends it too."""
    written = [0]

    def run():
        extra = 0
        try:
            while extra < after_stop:
                traffic.write_stream(stream, written[0], 2048, header=written[0] == 0)
                written[0] += 2048
                if stop.is_set():
                    extra += 1
        except BrokenPipeError:
            pass

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    written.append(thread)
    return written


def test_a_killed_worker_is_replaced_and_its_frames_counted(artifact, tmp_path):
    proc, stream, lines, log = _fifo_engine(tmp_path, artifact, workers=2)
    killed = threading.Event()
    written = _feed_until(stream, killed)
    try:
        _wait_line(lines, r"processed w0:[1-9]\d* w1:[1-9]")
        os.kill(children_named(proc.pid, "mte-worker")[0], signal.SIGKILL)  # while frames keep flowing
        killed.set()
        written[1].join(timeout=120)
    finally:
        stream.close()
    proc.wait(timeout=120)
    err = "".join(lines)
    assert re.search(r"worker \d died \(exit -9\); (at most \d+ frame\(s\) of the batch it held are lost|it held "
                     r"no batch, no frame is lost).*; restarting it", err), err
    lost = sum(int(part.split(":")[1])
               for part in re.search(r"frames lost with them \(at most\): (.*)", err).group(1).split())
    per_worker = [int(n) for n in re.search(r"frames per worker: ([\d ]+)", err).group(1).split()]
    # Every frame was judged or is counted as lost; "lost" is an upper bound (a worker killed
    # between sending a batch's events and clearing its mark counts that batch both ways).
    assert sum(per_worker) <= written[0] <= sum(per_worker) + lost
    assert lost <= 1024  # at most the one batch the worker held
    # A replay that lost frames is not a complete measurement: it says so and exits 1.
    assert proc.returncode == (1 if lost else 0), err
    if lost:
        assert "frame(s) were lost with 1 worker death(s)" in err


def test_sigterm_mid_replay_logs_everything_read_before_it(artifact, tmp_path):
    proc, stream, lines, log = _fifo_engine(tmp_path, artifact, workers=2)
    never = threading.Event()
    written = _feed_until(stream, never)  # keeps writing until the engine stops reading
    try:
        _wait_line(lines, r"processed w0:[1-9]\d* w1:[1-9]")
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        took = time.monotonic() - sent
        written[1].join(timeout=30)
    finally:
        try:
            stream.close()
        except BrokenPipeError:
            pass
    err = "".join(lines)
    assert proc.returncode == 0, err
    assert took < 5.0
    read = summary_number(err, r"frames: (\d+) ")
    assert 0 < read <= written[0] + 2048  # the chunk being written when the engine stopped may be partly read
    # The events in the log are exactly those of the frames read before the stop.
    expected = {"h%d.evil-parent.net" % i for i in range(0, read, 97)}
    logged = {"%s.evil-parent.net" % r[9][1:r[9].index(")")] for r in records(log)}
    assert logged == expected


def _fifo_engine(tmp_path, artifact, *extra, workers=1, **sensor):
    fifo = tmp_path / "traffic.fifo"
    os.mkfifo(fifo)
    log = tmp_path / "log"
    conf = config(tmp_path, stats_interval_s=1, **sensor)
    proc = subprocess.Popen([console_script(), "replay", "-c", conf, "--trails", artifact, "--log-dir", str(log),
                             "--workers", str(workers), "--sensor-name", "f", *extra, str(fifo)],
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 20
    while True:  # opening for writing succeeds once the engine has opened the FIFO for reading
        try:
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            break
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise AssertionError("the engine never opened %s: %s" % (fifo, proc.stderr.read()))
            time.sleep(0.05)
    os.set_blocking(fd, True)
    writer = os.fdopen(fd, "wb")
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stderr.readline, "")), daemon=True)
    reader.start()
    return proc, writer, lines, log


def _wait_line(lines, pattern, timeout_s=20.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for line in list(lines):
            if re.search(pattern, line):
                return line
        time.sleep(0.05)
    raise AssertionError("no line matching %r in:\n%s" % (pattern, "".join(lines)))


def _trails_csv(path, extra_rows=(), keep=None):
    rows = (CORPUS / "trails.csv").read_text().splitlines()
    if keep is not None:
        rows = rows[:keep]
    path.write_text("\n".join(rows + list(extra_rows)) + "\n")
    return str(path)


def test_sighup_adopts_a_new_generation_and_refuses_a_bad_one(tmp_path):
    artifact = str(tmp_path / "trails.mtdb")
    build([_trails_csv(tmp_path / "t1.csv")], artifact)
    proc, stream, lines, log = _fifo_engine(tmp_path, artifact)
    try:
        def query(name, sport):
            return g.udp_frame("10.0.0.1", "10.0.0.53", sport, 53, g.dns_query(name))

        def write_batch(first_frames, base_sport):
            # 1,024 frames: one full read batch, so the capture process dispatches it at once.
            frames = first_frames + [g.tcp_frame("10.0.0.1", "198.18.0.1", base_sport + i, 443)
                                     for i in range(1024 - len(first_frames))]
            stream.write(b"".join(struct.pack("<IIII", 1_772_323_200 + base_sport, i, len(f), len(f)) + f
                                  for i, f in enumerate(frames)))
            stream.flush()

        stream.write(struct.pack("<IHHiIII", g.PCAP_MAGIC_US, 2, 4, 0, 0, 262144, 1))
        write_batch([query("new.later-trail.org", 40001)], 41000)
        _wait_line(lines, r"processed w0:1024")
        build([_trails_csv(tmp_path / "t2.csv", ["later-trail.org,added later (malware),(test)"])], artifact)
        proc.send_signal(signal.SIGHUP)
        _wait_line(lines, r"reload done: every worker runs generation 2")
        write_batch([query("new.later-trail.org", 40002)], 42000)
        _wait_line(lines, r"processed w0:2048")

        build([_trails_csv(tmp_path / "t3.csv", keep=3)], artifact, force=True)  # 3 trails: far less than half
        proc.send_signal(signal.SIGHUP)
        _wait_line(lines, r"reload refused: .* holds 3 trails, less than half of the 31 in use; keeping generation 2")
        Path(artifact).write_bytes(b"not an artifact at all")
        proc.send_signal(signal.SIGHUP)
        _wait_line(lines, r"reload failed, keeping generation 2")
        write_batch([query("again.later-trail.org", 40003), query("www.evil-parent.net", 40004)], 43000)
    finally:
        stream.close()
    proc.wait(timeout=60)
    assert proc.returncode == 0, "".join(lines)
    trails = sorted(r[9] for r in records(log))
    # the first query came before the reload: nothing; after it, the new trail fires, and it keeps
    # firing after the refused and failed reloads (generation 2 stays)
    assert trails == ["(again).later-trail.org", "(new).later-trail.org", "(www).evil-parent.net"]


def test_sighup_rereads_the_control_files_and_keeps_them_when_one_is_bad(tmp_path, artifact):
    hosts = tmp_path / "hosts.txt"
    hosts.write_text("# nothing silenced yet\n")
    proc, stream, lines, log = _fifo_engine(tmp_path, artifact, host_whitelist_file=str(hosts))
    try:
        def write_batch(base_sport):
            frames = [g.tcp_frame("10.0.0.9", "203.0.113.66", base_sport, 443)]  # a listed c2 address
            frames += [g.tcp_frame("10.0.0.1", "198.18.0.1", base_sport + i, 443) for i in range(1, 1024)]
            stream.write(b"".join(struct.pack("<IIII", 1_772_323_200 + base_sport, i, len(f), len(f)) + f
                                  for i, f in enumerate(frames)))
            stream.flush()

        stream.write(struct.pack("<IHHiIII", g.PCAP_MAGIC_US, 2, 4, 0, 0, 262144, 1))
        write_batch(41000)
        _wait_line(lines, r"processed w0:1024")
        hosts.write_text("10.0.0.9 203.0.113.66\n")
        proc.send_signal(signal.SIGHUP)
        _wait_line(lines, r"whitelists and ignore rules reloaded")
        _wait_line(lines, r"reload done")
        write_batch(42000)
        _wait_line(lines, r"processed w0:2048")
        hosts.write_text("not-an-address 203.0.113.66\n")
        proc.send_signal(signal.SIGHUP)
        _wait_line(lines, r"reload of the whitelists and ignore rules failed, keeping the current ones: .*hosts.txt:1")
        write_batch(43000)
    finally:
        stream.close()
    proc.wait(timeout=60)
    err = "".join(lines)
    assert proc.returncode == 0, err
    # the first connection was logged; the two after the reload were silenced for this host
    assert [(r[3], r[9]) for r in records(log)] == [("10.0.0.9", "203.0.113.66")]
    assert "events dropped by controls: host-whitelisted 2" in err


def test_a_killed_idle_worker_loses_nothing(tmp_path, artifact):
    proc, stream, lines, log = _fifo_engine(tmp_path, artifact)
    try:
        traffic.write_stream(stream, 0, 2048, header=True)
        _wait_line(lines, r"processed w0:2048")
        os.kill(children_named(proc.pid, "mte-worker")[0], signal.SIGKILL)
        _wait_line(lines, r"worker 0 died \(exit -9\); it held no batch, no frame is lost; restarting it")
        traffic.write_stream(stream, 2048, 2048)
    finally:
        stream.close()
    proc.wait(timeout=60)
    err = "".join(lines)
    assert proc.returncode == 0, err
    assert "frames lost with them (at most): w0:0" in err
    assert len(records(log)) == len([i for i in range(4096) if i % 97 == 0])


@pytest.mark.parametrize("name, message", [("mte-capture", "the capture process died"),
                                           ("mte-writer", "the log writer died")])
def test_a_dead_capture_process_or_log_writer_is_fatal(name, message, artifact, tmp_path):
    proc, stream, lines, _ = _fifo_engine(tmp_path, artifact)
    try:
        traffic.write_stream(stream, 0, 1024, header=True)
        _wait_line(lines, r"processed w0:1024")
        os.kill(children_named(proc.pid, name)[0], signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        try:
            stream.close()
        except BrokenPipeError:
            pass
    time.sleep(0.2)
    assert proc.returncode == 1, "".join(lines)
    assert message in "".join(lines)


def test_replay_waits_on_a_full_ring_and_loses_nothing(big_pcap, artifact, tmp_path):
    small = mte("replay", "-c", config(tmp_path, ring_bytes=65536), "--trails", artifact, "--log-dir",
                str(tmp_path / "small"), "--workers", "2", big_pcap)
    assert small.returncode == 0, small.stderr
    assert summary_number(small.stderr, r"frames: (\d+) ") == 120_000
    assert records(tmp_path / "small") == records_of_default(big_pcap, artifact, tmp_path)


def test_the_smallest_ring_the_snap_length_allows_carries_full_frames(artifact, tmp_path):
    """[sensor] ring_bytes at min_ring_bytes(snaplen_bytes) replays frames cut to the snap length
    without a drop; 8 bytes less is refused at start with the smallest size allowed."""
    snaplen_bytes = 40_000
    smallest = min_ring_bytes(snaplen_bytes)
    pcap_path = tmp_path / "jumbo.pcap"
    with g.PcapWriter(str(pcap_path)) as out:
        for i in range(30):
            out.write((1_700_000_000 + i) * 10**9, g.udp_frame("10.0.0.%d" % (i + 1), "10.9.0.1", 999, 9, bytes(50_000)))
    ok = mte("replay", "-c", config(tmp_path, ring_bytes=smallest), "--trails", artifact, "--log-dir",
             str(tmp_path / "ok"), "--workers", "2", "--snaplen", str(snaplen_bytes), str(pcap_path))
    assert ok.returncode == 0, ok.stderr
    assert summary_number(ok.stderr, r"frames: (\d+) ") == 30
    assert "ring full" not in ok.stderr
    refused = mte("replay", "-c", config(tmp_path, ring_bytes=smallest - 8), "--trails", artifact, "--log-dir",
                  str(tmp_path / "refused"), "--snaplen", str(snaplen_bytes), str(pcap_path))
    assert refused.returncode == 2
    assert "ring_bytes = %d is too small for frames of up to %d bytes" % (smallest - 8, snaplen_bytes) in refused.stderr
    assert "allowed at least %d" % smallest in refused.stderr


def records_of_default(pcap_path, artifact, tmp_path):
    run = mte("replay", "--trails", artifact, "--log-dir", str(tmp_path / "default"), "--workers", "2", pcap_path)
    assert run.returncode == 0, run.stderr
    return records(tmp_path / "default")


def test_periodic_statistics(tmp_path, artifact):
    proc, stream, lines, _ = _fifo_engine(tmp_path, artifact)
    try:
        traffic.write_stream(stream, 0, 2048, header=True)
        line = _wait_line(lines, r"^\[i\] \d{4}-\d\d-\d\d \d\d:\d\d:\d\d frames .*processed w0:2048")
        assert line.rstrip().endswith("events: DNS %d" % len(range(0, 2048, 97))), line
    finally:
        stream.close()
    proc.wait(timeout=60)
    assert proc.returncode == 0, "".join(lines)


# --- the default capture filter ------------------------------------------------------------------------

def test_default_filter_keeps_what_detection_needs():
    keep = {
        "syn": g.tcp_frame("10.0.0.1", "198.51.100.1", 40000, 443, g.TCP_SYN),
        "null scan": g.tcp_frame("10.0.0.1", "198.51.100.1", 40000, 22, 0),
        "fin scan": g.tcp_frame("10.0.0.1", "198.51.100.1", 40000, 22, g.TCP_FIN),
        "xmas scan": g.tcp_frame("10.0.0.1", "198.51.100.1", 40000, 22, g.TCP_FIN | g.TCP_PSH | g.TCP_URG),
        "rst": g.tcp_frame("10.0.0.1", "198.51.100.1", 40000, 22, g.TCP_RST | g.TCP_ACK),
        "client hello": g.tcp_frame("10.0.0.1", "198.51.100.1", 40000, 8443, g.TCP_PSH | g.TCP_ACK,
                                    g.tls_client_hello("a.example.org")),
        "http request, odd port": g.tcp_frame("10.0.0.1", "198.51.100.1", 40000, 8081, g.TCP_PSH | g.TCP_ACK,
                                              g.http_request("GET", "/", "a.example.org")),
        "http response": g.tcp_frame("198.51.100.1", "10.0.0.1", 80, 40000, g.TCP_PSH | g.TCP_ACK,
                                     b"HTTP/1.1 200 OK\r\n\r\n"),
        "dns over tcp": g.tcp_frame("10.0.0.1", "10.0.0.53", 40000, 53, g.TCP_PSH | g.TCP_ACK, b"\x00\x10" + bytes(16)),
        "udp": g.udp_frame("10.0.0.1", "198.51.100.1", 40000, 443, bytes(1200)),
        "icmp": g.icmp_frame("10.0.0.1", "198.51.100.1"),
        "ipv6 syn": g.tcp_frame("2001:db8::1", "2001:db8::2", 40000, 443, g.TCP_SYN),
        "ipv6 client hello": g.tcp_frame("2001:db8::1", "2001:db8::2", 40000, 443, g.TCP_PSH | g.TCP_ACK,
                                         g.tls_client_hello("a.example.org")),
        "vlan syn": g.tcp_frame("10.0.0.1", "198.51.100.1", 40000, 443, g.TCP_SYN, vlans=(7,)),
        "vlan client hello": g.tcp_frame("10.0.0.1", "198.51.100.1", 40000, 443, g.TCP_PSH | g.TCP_ACK,
                                         g.tls_client_hello("a.example.org"), vlans=(7,)),
    }
    drop = {
        "bulk tls": g.tcp_frame("10.0.0.1", "198.51.100.1", 40000, 443, g.TCP_PSH | g.TCP_ACK, b"\x17\x03\x03" + bytes(900)),
        "bare ack": g.tcp_frame("10.0.0.1", "198.51.100.1", 40000, 443, g.TCP_ACK),
        "ipv6 bulk": g.tcp_frame("2001:db8::1", "2001:db8::2", 40000, 443, g.TCP_PSH | g.TCP_ACK, b"\x17\x03\x03" + bytes(900)),
        "vlan bulk": g.tcp_frame("10.0.0.1", "198.51.100.1", 40000, 443, g.TCP_PSH | g.TCP_ACK, b"\x17\x03\x03" + bytes(900),
                                 vlans=(7,)),
    }
    bpf = pcap.bpf(expand_filter("default", 1).encode(), 1)
    assert [name for name, frame in keep.items() if not bpf.filter(frame)] == []
    assert [name for name, frame in drop.items() if bpf.filter(frame)] == []


# --- live ----------------------------------------------------------------------------------------

@pytest.mark.root
def test_live_capture_with_two_workers(veth, artifact, tmp_path):
    namespace, host, peer = veth
    log = tmp_path / "log"
    proc = subprocess.Popen([console_script(), "-i", host, "--trails", artifact, "--log-dir", str(log),
                             "--sensor-name", "live2", "--workers", "2"], stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(iter(proc.stderr.readline, "")), daemon=True).start()
    try:
        _wait_line(lines, r"capturing on %s" % host)
        frames = [DST_MAC + g.udp_frame("10.99.0.%d" % (2 + i % 50), "10.99.0.1", 40000 + i, 53,
                                        g.dns_query("q%d.evil-parent.net" % i))[6:] for i in range(100)]
        frames.append(DST_MAC + g.tcp_frame("10.99.0.2", "203.0.113.66", 41000, 443)[6:])
        frames.append(DST_MAC + g.tcp_frame("10.99.0.2", "10.99.0.1", 41001, 443, g.TCP_PSH | g.TCP_ACK,
                                            b"\x17\x03\x03" + bytes(500))[6:])  # bulk TLS: filtered out
        send_frames(namespace, peer, frames)
        wait_for_records(log, 101)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)
    err = "".join(lines)
    assert proc.returncode == 0, err
    assert "kernel: received 101" in err  # the bulk TLS segment never left the kernel
    trails = [r[9] for r in records(log)]
    assert sorted(trails) == sorted(["(q%d).evil-parent.net" % i for i in range(100)] + ["203.0.113.66"])


def test_the_stats_name_each_process_cpu_time(artifact, big_pcap, tmp_path):
    """`--stats-json` carries each process's own CPU time, as the process itself read it before it
    ended: a bench sampling /proc from outside misses a process that lives shorter than its period."""
    import resource
    stats = tmp_path / "stats.json"
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    run = mte("replay", "--trails", artifact, "--log-dir", str(tmp_path / "log"), "--workers", "2",
              "--stats-json", str(stats), big_pcap)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    assert run.returncode == 0, run.stderr
    report = json.loads(stats.read_text())
    by_process = report["cpu_by_process"]
    assert set(by_process) == {"supervisor", "mte-capture", "mte-writer", "mte-worker-0", "mte-worker-1"}
    # 120,000 frames were read by the capture process and judged by both workers
    assert by_process["mte-capture"] > 0 and by_process["mte-worker-0"] > 0 and by_process["mte-worker-1"] > 0
    assert all(seconds >= 0 for seconds in by_process.values())
    # the parts add up to no more than the whole process tree's CPU (the supervisor reaps its
    # children, so theirs is in its own, which this process has reaped); a 10 ms tick each at most
    tree = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    assert sum(by_process.values()) <= tree + 0.01 * len(by_process)


def _ring_residency(pid: int, ring_kb: int) -> list[tuple[int, int]]:
    """(Size, Rss) in kB of each shared anonymous mapping of `ring_kb` in process `pid`."""
    found, size = [], None
    with open("/proc/%d/smaps" % pid) as f:
        for line in f:
            if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
                size = None if "/dev/zero" not in line else 0
            elif size is not None and line.startswith("Size:"):
                size = int(line.split()[1])
            elif size and line.startswith("Rss:") and size == ring_kb:
                found.append((size, int(line.split()[1])))
    return found


def test_the_rings_are_resident_before_the_first_frame(artifact, tmp_path):
    """The capture process and the worker map their ring whole at start, so the first pass of
    traffic through it takes no page fault on the packet path (the warm-up a short replay and a
    live capture's first burst paid: a fault every 4 KiB)."""
    from engine.transport.ring import ring_bytes
    ring_kb = -(-ring_bytes(1 << 20) // 4096) * 4
    proc, stream, lines, log = _fifo_engine(tmp_path, artifact, ring_bytes=1 << 20)
    try:
        # the FIFO is open: the capture process and the worker have started; no frame was written
        deadline, residency = time.monotonic() + 20, {}
        while time.monotonic() < deadline:
            table = process_table()
            children = {comm: pid for pid, (ppid, comm) in table.items() if ppid == proc.pid}
            residency = {comm: _ring_residency(children[comm], ring_kb)
                         for comm in ("mte-capture", "mte-worker-0") if comm in children}
            if len(residency) == 2 and all(r and r[0][1] == ring_kb for r in residency.values()):
                break
            time.sleep(0.1)
        assert residency.get("mte-capture") == [(ring_kb, ring_kb)], residency
        assert residency.get("mte-worker-0") == [(ring_kb, ring_kb)], residency
        traffic.write_stream(stream, 0, 10, header=True)
    finally:
        stream.close()
        proc.wait(timeout=60)
    assert proc.returncode == 0, "".join(lines)
