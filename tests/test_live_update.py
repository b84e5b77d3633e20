"""Trail updates while a live sensor runs (engine/processes/updater.py), for real: the installed
command capturing on a veth pair, updates run by its supervisor in a child process as the
unprivileged account, the reload that follows, and the faults.

- SIGUSR1 runs an update; a trail added to a source is detected after it, without a restart,
  and no frame is lost around the reload (frames sent == frames the kernel passed == frames the
  workers judged; no kernel or ring drops) while frames flow the whole time;
- a custom trail file edited on disk is picked up (an offline update) within a minute;
- an update that fails (a source that shrank below half) keeps the trails in use, and says why;
- an update that runs past [all] update_timeout_s is killed and reported; capture goes on;
- SIGTERM during an update: the update's process is killed, the sensor stops cleanly;
- the update runs as the workers' account, with no capability; SIGUSR1 sent to every process of
  the sensor is the supervisor's alone;
- a sensor running other trails than [all] trails_artifact (--trails) does not update, and says so.

The update's account must reach its files: pytest's tmp dirs are 0700 root, so the config,
sources and artifact live in a directory of their own under /tmp, given to that account.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from engine.sources import synthetic as g
from tests.conftest import need_root
from tests.netns import DST_MAC, send_frames, veth  # noqa: F401 (veth is a fixture)
from tests.test_cli import wait_for_records
from tests.test_corpus import console_script
from tests.test_engine import children_named, records
from tests.test_feeds_fetch import FeedServer
from tests.test_metrics import _get, _sample

CORPUS = Path(__file__).resolve().parent / "corpus"

# Sends frames from inside the namespace until its stdin closes, then prints how many it sent.
# Each send() that returned is one frame handed to the veth pair.
STREAMER = r"""
import os, select, socket, sys, time
sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
sock.bind((sys.argv[1], 0))
frame = bytes.fromhex(sys.argv[2])
sent = 0
while True:
    ready, _, _ = select.select([sys.stdin], [], [], 0.002)
    if ready and not os.read(sys.stdin.fileno(), 1):
        break
    for _ in range(10):
        # a different source port each time: the frames are not all one flow
        port = 20000 + sent % 40000
        sock.send(frame[:34] + port.to_bytes(2, "big") + frame[36:40] + b"\0\0" + frame[42:])
        sent += 1
print(sent, flush=True)
"""


def account():
    need_root()
    try:
        entry = pwd.getpwnam("maltrail-engine")
    except KeyError:
        entry = pwd.getpwnam("nobody")
    return entry


class Sensor:
    """A live sensor started with a config file; its stderr lines collected by a thread."""

    def __init__(self, config: Path, *flags: str):
        self.proc = subprocess.Popen([console_script(), "-c", str(config), *flags], stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        threading.Thread(target=lambda: self.lines.extend(iter(self.proc.stderr.readline, "")), daemon=True).start()

    def wait_line(self, pattern: str, timeout_s: float = 30.0, after: int = 0) -> re.Match:
        """The first line (from index `after`) matching; the deadline bounds a failing test."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for line in self.lines[after:]:
                m = re.search(pattern, line)
                if m:
                    return m
            if self.proc.poll() is not None and not any(re.search(pattern, x) for x in self.lines[after:]):
                time.sleep(0.2)   # the reader thread may still hold the last lines
                if not any(re.search(pattern, x) for x in self.lines[after:]):
                    break
            time.sleep(0.05)
        raise AssertionError("no line matching %r in:\n%s" % (pattern, self.text()))

    def text(self) -> str:
        return "".join(self.lines)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise


class Place:
    """The update's files in a directory its account owns: config, sources, custom trails,
    feeds and the artifact."""

    def __init__(self, root: Path, log_dir: Path, interface: str, server: FeedServer, **all_keys):
        self.root = root
        self.server = server
        # the user's own remote list ([all] custom_trails_url), served on loopback
        server.route("/mine.txt", body=b"# my list\nremote-first.org\n")
        self.user = account()
        self.source = root / "src" / "trails.csv"
        self.custom = root / "custom"
        self.artifact = root / "trails" / "trails.mtdb"
        self.config = root / "maltrail.toml"
        for d in (self.source.parent, self.custom, self.artifact.parent, root / "feeds"):
            d.mkdir()
        self.source.write_text((CORPUS / "trails.csv").read_text())
        (self.custom / "mine.txt").write_text("custom-first.org\n")
        keys = dict(log_dir=str(log_dir), trails_artifact=str(self.artifact), trail_sources=[str(self.source)],
                    custom_trails_dir=str(self.custom), feeds_dir=str(root / "feeds"), update_period_s="off",
                    # no catalog feed: the tests do not reach the Internet
                    disabled_feeds=["all"], custom_trails_url=[server.url("/mine.txt")])
        keys.update(all_keys)
        self.write_config(keys, interface)
        out = subprocess.run([console_script(), "trails", "update", "--config", str(self.config)],
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        self.give()

    def write_config(self, keys: dict, interface: str) -> None:
        self.keys, self.interface = keys, interface
        self.config.write_text(
            "[all]\n" + "".join("%s = %s\n" % (k, json.dumps(v)) for k, v in keys.items())
            + "[sensor]\n" + "interface = %s\nworkers = 2\nsensor_name = \"upd\"\n" % json.dumps([interface])
            + "stats_address = \"127.0.0.1:0\"\n")

    def give(self) -> None:
        """Everything under the place belongs to the update's account (what an installation
        would set up for a sensor that updates itself)."""
        for dirpath, dirnames, filenames in os.walk(self.root):
            for name in [dirpath] + [os.path.join(dirpath, n) for n in dirnames + filenames]:
                os.chown(name, self.user.pw_uid, self.user.pw_gid, follow_symlinks=False)

    def generation(self) -> int:
        out = subprocess.run([console_script(), "trails", "stats", str(self.artifact)], capture_output=True,
                             text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        return int(re.search(r"generation: (\d+)", out.stdout).group(1))


@pytest.fixture
def place(veth, tmp_path):
    root = Path(tempfile.mkdtemp(prefix="mte-live-update-", dir="/tmp"))
    os.chmod(root, 0o755)
    server = FeedServer()
    try:
        yield Place(root, tmp_path / "log", veth[1], server)
    finally:
        server.close()
        shutil.rmtree(root, ignore_errors=True)


def dns(name: str, sport: int) -> bytes:
    return DST_MAC + g.udp_frame("10.99.0.2", "10.99.0.1", sport, 53, g.dns_query(name))[6:]


def summary(text: str, pattern: str) -> int:
    m = re.search(pattern, text)
    assert m, text
    return int(m.group(1))


def test_an_update_asked_for_by_sigusr1_is_adopted_with_no_frame_lost(place, veth):
    namespace, host, peer = veth
    sensor = Sensor(place.config)
    streamer = None
    try:
        sensor.wait_line(r"capturing on %s" % host)
        sensor.wait_line(r"trail updates: not on a schedule .*, offline when .* changes; SIGUSR1 updates now")
        metrics = sensor.wait_line(r"metrics: (http://\S+)/metrics").group(1)
        send_frames(namespace, peer, [dns("before.added-later.org", 40001), dns("www.remote-first.org", 40003)])
        assert wait_for_records(place.keys["log_dir"], 1) == 1, sensor.text()
        # a trail added to the list the server serves
        place.server.route("/mine.txt", body=b"# my list\nremote-first.org\nadded-later.org\n")
        # frames flow from before the update until after the reload
        filler = DST_MAC + g.udp_frame("10.99.0.3", "10.99.0.1", 20000, 5000, b"filler" * 4)[6:]
        streamer = subprocess.Popen(["ip", "netns", "exec", namespace, sys.executable, "-c", STREAMER, peer,
                                     filler.hex()], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        mark = len(sensor.lines)
        sensor.proc.send_signal(signal.SIGUSR1)
        started = sensor.wait_line(r"trail update \(requested\) started: pid (\d+) as (\S+)", after=mark)
        assert started.group(2) == place.user.pw_name
        done = sensor.wait_line(r"trail update \(requested\) done in [\d.]+ s: loading the new artifact; "
                                r"supervisor RSS ([\d.]+) MB when it started, ([\d.]+) MB now", 120, after=mark)
        sensor.wait_line(r"reload done: every worker runs generation 2", after=mark)
        streamer.stdin.close()
        streamed = int(streamer.stdout.read())
        assert streamer.wait(timeout=30) == 0
        streamer = None
        send_frames(namespace, peer, [dns("after.added-later.org", 40002)])
        assert wait_for_records(place.keys["log_dir"], 2) == 2, sensor.text()
        _status, text, _headers = _get(metrics + "/metrics")
        assert _sample(text, "maltrail_trail_updates_total") == 1
        assert _sample(text, "maltrail_trail_update_failures_total") == 0
        assert _sample(text, "maltrail_trail_update_running") == 0
        assert _sample(text, "maltrail_trail_update_last_success_timestamp_seconds") > 0
        assert _sample(text, "maltrail_trail_generation") == 2
    finally:
        if streamer is not None:
            streamer.kill()
        code = sensor.stop()
    err = sensor.text()
    assert code == 0, err
    print("supervisor RSS across the update: %s MB -> %s MB" % done.groups())
    assert sorted(r[9] for r in records(place.keys["log_dir"])) == ["(after).added-later.org", "(www).remote-first.org"]
    sent = streamed + 3
    assert streamed > 100, err  # the stream really ran across the update and reload
    assert summary(err, r"kernel: received (\d+), dropped 0, interface dropped 0") == sent, err
    assert summary(err, r"(?m)^frames: (\d+) ") == sent, err
    assert "ring full" not in err
    assert place.generation() == 2


def test_an_edited_custom_trail_file_is_picked_up_within_a_minute(place, veth):
    namespace, host, peer = veth
    sensor = Sensor(place.config)
    try:
        sensor.wait_line(r"capturing on %s" % host)
        sensor.wait_line(r"SIGUSR1 updates now")  # the handler is in place
        mark = len(sensor.lines)
        with open(place.custom / "mine.txt", "a") as f:
            f.write("custom-edited.org\n")
        # a minute bounds the test's failure: the directory is looked at every 15 s, and a change
        # must hold still 5 s
        sensor.wait_line(r"custom trails changed in %s: an offline update picks them up" % re.escape(str(place.custom)),
                         60, after=mark)
        sensor.wait_line(r"trail update \(custom trails changed, offline\) done", 60, after=mark)
        sensor.wait_line(r"reload done: every worker runs generation 2", 30, after=mark)
        send_frames(namespace, peer, [dns("www.custom-edited.org", 40010), dns("www.custom-first.org", 40011)])
        assert wait_for_records(place.keys["log_dir"], 2) == 2, sensor.text()
    finally:
        code = sensor.stop()
    assert code == 0, sensor.text()
    assert sorted(r[9] for r in records(place.keys["log_dir"])) == ["(www).custom-edited.org",
                                                                      "(www).custom-first.org"]


def test_a_failed_update_keeps_the_trails_in_use_and_says_why(place, veth):
    namespace, host, peer = veth
    sensor = Sensor(place.config)
    try:
        sensor.wait_line(r"capturing on %s" % host)
        sensor.wait_line(r"SIGUSR1 updates now")  # the handler is in place
        # the feed server is down: the list's last good copy is used, the sources are unchanged
        place.server.close()
        mark = len(sensor.lines)
        sensor.proc.send_signal(signal.SIGUSR1)
        sensor.wait_line(r"\[!\] .* trail update: feed \S+: could not connect to 127\.0\.0\.1: .*its last good copy "
                         r".* is used", 120, after=mark)
        sensor.wait_line(r"trail update \(requested\) done in [\d.]+ s: the artifact is unchanged, generation 1 stays",
                         120, after=mark)
        # the source comes back short: 3 rows of 34, the build refuses to replace the artifact
        rows = (CORPUS / "trails.csv").read_text().splitlines()
        place.source.write_text("\n".join(rows[:3]) + "\n")
        mark = len(sensor.lines)
        sensor.proc.send_signal(signal.SIGUSR1)
        sensor.wait_line(r"trail update \(requested\) failed after [\d.]+ s, keeping generation 1: exit status 1: "
                         r".*less than half", 120, after=mark)
        send_frames(namespace, peer, [dns("www.evil-parent.net", 40020)])  # row 2: in both sets
        send_frames(namespace, peer, [dns("www.host-evil.info", 40021)])   # row 5: only in the set in use
        send_frames(namespace, peer, [dns("www.remote-first.org", 40022)])  # the remote list's last good copy
        assert wait_for_records(place.keys["log_dir"], 3) == 3, sensor.text()
    finally:
        code = sensor.stop()
    err = sensor.text()
    assert code == 0, err
    assert "reloading trails" not in err
    assert sorted(r[9] for r in records(place.keys["log_dir"])) == ["(www).evil-parent.net", "(www).host-evil.info",
                                                                      "(www).remote-first.org"]
    assert place.generation() == 1


def _slow_source(place) -> Path:
    """A source that never ends: a FIFO nobody writes to, so the update blocks reading it."""
    fifo = place.root / "src" / "slow.csv"
    os.mkfifo(fifo)
    os.chown(fifo, place.user.pw_uid, place.user.pw_gid)
    keys = dict(place.keys, trail_sources=[str(place.source), str(fifo)])
    return keys


def _status(pid: int) -> dict:
    out = {}
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            key, _, value = line.partition(":")
            out[key] = value.strip()
    return out


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_sigterm_during_an_update_kills_it_and_the_sensor_stops_cleanly(place, veth):
    namespace, host, peer = veth
    place.write_config(_slow_source(place), host)
    sensor = Sensor(place.config)
    try:
        sensor.wait_line(r"capturing on %s" % host)
        sensor.wait_line(r"SIGUSR1 updates now")  # the handler is in place
        sensor.proc.send_signal(signal.SIGUSR1)
        pid = int(sensor.wait_line(r"trail update \(requested\) started: pid (\d+)").group(1))
        # the child becomes the account (once it has imported what the update needs), holds no
        # capability, and is named as the sensor's children are
        deadline = time.monotonic() + 30
        while _status(pid)["Uid"].split()[0] != str(place.user.pw_uid) and time.monotonic() < deadline:
            time.sleep(0.05)
        status = _status(pid)
        assert status["Uid"].split() == [str(place.user.pw_uid)] * 4, status
        assert int(status["CapEff"], 16) == 0 and int(status["CapPrm"], 16) == 0, status
        assert status["NoNewPrivs"] == "1" and status["Name"] == "mte-update", status
        # a second request while one runs waits for it
        sensor.proc.send_signal(signal.SIGUSR1)
        sensor.wait_line(r"trail update \(requested\) queued: an update is running")
        # SIGUSR1 sent to every process of the sensor (`systemctl kill -s USR1` does) is the
        # supervisor's alone: the other processes ignore it
        others = [p for p in children_named(sensor.proc.pid, "mte-") if p != pid]
        assert len(others) == 4, others   # capture, two workers, log writer
        for other in others:
            os.kill(other, signal.SIGUSR1)
        sensor.wait_line(r"trail update \(requested\) queued")
    finally:
        code = sensor.stop()
    err = sensor.text()
    assert code == 0, err
    assert "stopping: the running trail update is killed; the trails in use stay" in err
    assert _gone(pid)
    assert err.count("trail update (requested) started") == 1  # the queued one never ran
    assert "died" not in err and "worker deaths" not in err
    assert place.generation() == 1


def test_an_update_past_its_timeout_is_killed_and_capture_goes_on(place, veth):
    namespace, host, peer = veth
    place.write_config(dict(_slow_source(place), update_timeout_s=10), host)
    sensor = Sensor(place.config)
    try:
        sensor.wait_line(r"capturing on %s" % host)
        sensor.wait_line(r"SIGUSR1 updates now")  # the handler is in place
        sensor.proc.send_signal(signal.SIGUSR1)
        pid = int(sensor.wait_line(r"trail update \(requested\) started: pid (\d+)").group(1))
        send_frames(namespace, peer, [dns("during.evil-parent.net", 40030)])
        sensor.wait_line(r"trail update \(requested\) failed after [\d.]+ s, keeping generation 1: still running "
                         r"after 10 s \(\[all\] update_timeout_s\): killed", 60)
        assert _gone(pid)
        send_frames(namespace, peer, [dns("after.evil-parent.net", 40031)])
        assert wait_for_records(place.keys["log_dir"], 2) == 2, sensor.text()
    finally:
        code = sensor.stop()
    assert code == 0, sensor.text()
    assert sorted(r[9] for r in records(place.keys["log_dir"])) == ["(after).evil-parent.net",
                                                                      "(during).evil-parent.net"]


def test_a_sensor_running_other_trails_does_not_update_them_and_says_so(place, veth):
    namespace, host, peer = veth
    other = place.root / "other.mtdb"
    shutil.copyfile(place.artifact, other)
    sensor = Sensor(place.config, "--trails", str(other))
    try:
        sensor.wait_line(r"capturing on %s" % host)
        sensor.wait_line(r"trail updates are off in this run: the sensor runs %s, not the artifact "
                         r"\[all\] trails_artifact names" % re.escape(str(other)))
        sensor.proc.send_signal(signal.SIGUSR1)
        sensor.wait_line(r"\[!\] .* SIGUSR1: trail updates are not available in this run \(not configured\)")
        send_frames(namespace, peer, [dns("www.evil-parent.net", 40040)])
        assert wait_for_records(place.keys["log_dir"], 1) == 1, sensor.text()
    finally:
        code = sensor.stop()
    assert code == 0, sensor.text()
    assert "trail update (" not in sensor.text()
