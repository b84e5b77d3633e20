"""The engine's processes as an operator's host sees them: who they run as, what they hold, and
what is left when the supervisor is killed.

Everything here runs the installed `maltrail-engine` and reads the kernel's own account of its
processes (/proc/PID/status), never the engine's word for it.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from engine.sources import synthetic as g
from engine.processes.privileges import CAP_DAC_READ_SEARCH, SUPERVISOR_CAPS, Account, readable_by, status_fields
from tests import traffic
from tests.conftest import need_root
from tests.netns import DST_MAC, send_frames, veth  # noqa: F401 (veth is a fixture)
from tests.test_engine import (  # noqa: F401 (artifact is a fixture)
    _fifo_engine, _wait_line, artifact, console_script, mte, process_table, records)

EXPECTED_EVENTS = len(range(0, 4096, 97))  # tests/traffic.py plants a listed DNS name every 97 frames


def _account() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam("maltrail-engine")
    except KeyError:
        return pwd.getpwnam("nobody")


def _mask(caps) -> int:
    out = 0
    for cap in caps:
        out |= 1 << cap
    return out


def _descendants(pid: int) -> dict[int, str]:
    """pid -> comm of every live process whose parent chain reaches `pid`."""
    table = process_table()
    out = {}
    for p, (parent, name) in table.items():
        while parent in table and parent not in (0, 1):
            if parent == pid:
                out[p] = name
                break
            parent = table[parent][0]
    return out


def _alive(pids) -> list[int]:
    alive = []
    for pid in pids:
        try:
            with open("/proc/%d/stat" % pid) as f:
                if f.read().split(")")[-1].split()[0] != "Z":
                    alive.append(pid)
        except OSError:
            pass
    return alive


def _caps(fields: dict, key: str) -> int:
    return int(fields[key], 16)


def _wait_processed(lines, total: int, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for line in list(lines):
            m = re.search(r"processed ((?:w\d+:\d+ ?)+)", line)
            if m and sum(int(part.split(":")[1]) for part in m.group(1).split()) >= total:
                return
        time.sleep(0.05)
    raise AssertionError("never processed %d frames:\n%s" % (total, "".join(lines)))


# -- process faults ---------------------------------------------------------------------------

def test_a_killed_supervisor_leaves_no_process_and_no_shared_memory_and_loses_no_event(tmp_path, artifact):
    proc, stream, lines, log = _fifo_engine(tmp_path, artifact, workers=2)
    try:
        traffic.write_stream(stream, 0, 4096, header=True)
        _wait_processed(lines, 4096)
        children = _descendants(proc.pid)
        assert sorted(children.values()) == ["mte-capture", "mte-worker-0", "mte-worker-1", "mte-writer"], children
        # The rings are anonymous mappings: no process of the sensor maps anything named in
        # /dev/shm that could outlive it (read from the kernel's maps, not from /dev/shm, which
        # other programs on the host use too).
        for pid in [proc.pid, *children]:
            with open("/proc/%d/maps" % pid) as f:
                named = [line for line in f if "/dev/shm/" in line]
            assert named == [], (pid, named)
        os.kill(proc.pid, signal.SIGKILL)   # no chance to stop anything in order
        proc.wait(timeout=10)
        # The FIFO stays open: nothing tells the capture process to stop but its parent's death.
        deadline = time.monotonic() + 20
        while _alive(children) and time.monotonic() < deadline:
            time.sleep(0.1)
        left = {pid: children[pid] for pid in _alive(children)}
    finally:
        stream.close()
        for pid in _alive(_descendants(proc.pid)):
            os.kill(pid, signal.SIGKILL)
    assert left == {}, "still running after the supervisor was killed: %s" % left
    # Every event of every frame the workers judged reached the log before the writer exited.
    assert len(records(log)) == EXPECTED_EVENTS
    # ...and the log directory is free again for the next sensor.
    again = mte("replay", "--trails", artifact, "--log-dir", str(log), "-q", traffic.write(tmp_path / "t.pcap", 97))
    assert again.returncode == 0, again.stderr


def test_a_second_sensor_on_the_same_log_directory_is_refused(tmp_path, artifact):
    proc, stream, lines, log = _fifo_engine(tmp_path, artifact)
    try:
        traffic.write_stream(stream, 0, 1024, header=True)
        _wait_processed(lines, 1024)
        second = mte("replay", "--trails", artifact, "--log-dir", str(log), traffic.write(tmp_path / "t.pcap", 97))
        assert second.returncode == 1, second.stderr
        assert second.stderr.strip().splitlines()[-1] == (
            "maltrail-engine: another maltrail-engine (pid %d) is writing to %s; stop it first, or give this one "
            "another log directory (--log-dir)" % (proc.pid, log)), second.stderr
        assert "frames:" not in second.stderr     # refused before anything ran
    finally:
        stream.close()
    proc.wait(timeout=30)
    assert proc.returncode == 0
    assert len(records(log)) == len(range(0, 1024, 97))


def test_the_run_counts_only_its_own_cpu(tmp_path, artifact):
    # A shell that burned CPU in a child before exec'ing the sensor hands that time on in
    # RUSAGE_CHILDREN; the summary must not count it.
    pcap = traffic.write(tmp_path / "t.pcap", 97)
    burn = "import time\nwhile time.process_time() < 4: pass\n"
    script = '"%s" -c "%s"; exec "%s" replay --trails "%s" --log-dir "%s" "%s"' % (
        sys.executable, burn, console_script(), artifact, tmp_path / "log", pcap)
    run = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    cpu = float(re.search(r"wall, ([\d.]+) s CPU", run.stderr).group(1))
    assert 0 < cpu < 4, run.stderr


# -- least privilege --------------------------------------------------------------------------

def _check_children(children: dict, account: pwd.struct_passwd, capture_caps: int) -> None:
    for pid, name in children.items():
        fields = status_fields(pid)
        uids = fields["Uid"].split()
        assert set(uids) == {str(account.pw_uid)}, (name, fields)
        assert set(fields["Gid"].split()) == {str(account.pw_gid)}, (name, fields)
        assert fields["NoNewPrivs"] == "1", (name, fields)
        assert _caps(fields, "CapAmb") == 0 and _caps(fields, "CapInh") == 0, (name, fields)
        want = capture_caps if name == "mte-capture" else 0
        assert _caps(fields, "CapEff") == want and _caps(fields, "CapPrm") == want, (name, fields)
        if os.geteuid() == 0:
            assert _caps(fields, "CapBnd") == want, (name, fields)


@pytest.mark.root
def test_replaying_as_root_no_process_that_reads_traffic_keeps_root(tmp_path, artifact):
    if os.geteuid() != 0:
        pytest.skip("needs root: the account change is what is tested")
    proc, stream, lines, log = _fifo_engine(tmp_path, artifact, workers=2)
    try:
        traffic.write_stream(stream, 0, 1024, header=True)
        _wait_processed(lines, 1024)
        children = _descendants(proc.pid)
        account = _account()
        # The replaying capture process keeps only the right to read the files it was given.
        _check_children(children, account, _mask([CAP_DAC_READ_SEARCH]))
        supervisor = status_fields(proc.pid)
        assert _caps(supervisor, "CapEff") == _mask(SUPERVISOR_CAPS), supervisor
        assert supervisor["NoNewPrivs"] == "1"
        banner = _wait_line(lines, r"maltrail-engine \S+: replaying 1 file")
        assert re.match(r"\[i\] \d{4}-\d\d-\d\d \d\d:\d\d:\d\d maltrail-engine ", banner), banner
        assert "(generation 1, " in banner and "2 worker(s) as %s" % account.pw_name in banner
        assert "log %s" % log in banner
    finally:
        stream.close()
    proc.wait(timeout=30)
    assert proc.returncode == 0, "".join(lines)
    assert os.stat(log).st_uid == account.pw_uid
    assert all(os.stat(p).st_uid == account.pw_uid for p in log.glob("*.events.zst"))


def _live(command, host, lines_out):
    proc = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    seen = ""
    deadline = time.monotonic() + 20
    while "capturing on" not in seen and time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        seen += line
    lines_out.append(seen)
    assert "capturing on %s" % host in seen, seen
    return proc


def _frames():
    client, server = "10.99.0.2", "10.99.0.1"
    return [DST_MAC + f[6:] for f in (
        g.udp_frame(client, server, 40000, 53, g.dns_query("evil-exact.com")),
        g.tcp_frame(client, "203.0.113.66", 40001, 443, g.TCP_SYN))]


def _stop(proc) -> str:
    proc.send_signal(signal.SIGTERM)
    try:
        _, rest = proc.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    return rest


@pytest.mark.root
def test_live_capture_started_as_root_keeps_no_capability_once_capturing(veth, artifact, tmp_path):
    namespace, host, peer = veth
    log = tmp_path / "log"
    seen: list[str] = []
    proc = _live([console_script(), "-i", host, "--trails", artifact, "--log-dir", str(log), "--workers", "2",
                  "--sensor-name", "live"], host, seen)
    try:
        assert re.search(r"capturing on %s, filter default \(" % host, seen[0]), seen[0]
        children = _descendants(proc.pid)
        assert sorted(children.values()) == ["mte-capture", "mte-worker-0", "mte-worker-1", "mte-writer"]
        _check_children(children, _account(), 0)
        assert _caps(status_fields(proc.pid), "CapEff") == _mask(SUPERVISOR_CAPS)
        send_frames(namespace, peer, _frames())
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and len(records_or_empty(log)) < 2:
            time.sleep(0.2)
    finally:
        rest = _stop(proc)
    assert proc.returncode == 0, rest
    assert len(records(log)) == 2, rest


def records_or_empty(log):
    return records(log) if log.exists() and any(log.glob("*.events.zst")) else []


@pytest.mark.root
def test_live_capture_as_an_account_with_ambient_capabilities(veth, artifact):
    # As the systemd unit runs it: User= and AmbientCapabilities=CAP_NET_RAW (deploy/).
    if shutil.which("setpriv") is None:
        pytest.skip("needs setpriv (util-linux)")
    namespace, host, peer = veth
    account = pwd.getpwnam("nobody")
    place = tempfile.mkdtemp(prefix="mte-ambient-")   # reachable by the account, unlike pytest's tmp
    try:
        os.chmod(place, 0o755)
        trails = os.path.join(place, "trails.mtdb")
        shutil.copy(artifact, trails)
        os.chmod(trails, 0o644)
        log = os.path.join(place, "log")
        os.mkdir(log, 0o750)
        os.chown(log, account.pw_uid, account.pw_gid)
        seen: list[str] = []
        proc = _live(["setpriv", "--reuid", str(account.pw_uid), "--regid", str(account.pw_gid), "--clear-groups",
                      "--inh-caps", "+net_raw", "--ambient-caps", "+net_raw",
                      console_script(), "-i", host, "--trails", trails, "--log-dir", log, "--sensor-name", "amb"],
                     host, seen)
        try:
            children = _descendants(proc.pid)
            assert sorted(children.values()) == ["mte-capture", "mte-worker-0", "mte-writer"], children
            for pid, name in children.items():
                fields = status_fields(pid)
                assert set(fields["Uid"].split()) == {str(account.pw_uid)}, (name, fields)
                assert _caps(fields, "CapEff") == _caps(fields, "CapPrm") == _caps(fields, "CapAmb") == 0, (name, fields)
                assert fields["NoNewPrivs"] == "1", (name, fields)
            supervisor = status_fields(proc.pid)
            assert _caps(supervisor, "CapEff") == _caps(supervisor, "CapAmb") == 0, supervisor
            send_frames(namespace, peer, _frames())
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and len(records_or_empty(Path(log))) < 2:
                time.sleep(0.2)
        finally:
            rest = _stop(proc)
        assert proc.returncode == 0, rest
        assert len(records(log)) == 2, rest
    finally:
        shutil.rmtree(place, ignore_errors=True)


# -- what the operator sees -------------------------------------------------------------------

def _run_on_a_terminal(args, timeout_s=120.0) -> tuple[int, str]:
    """Runs `args` with stderr on a pseudo-terminal; (exit status, what the terminal showed)."""
    import pty
    master, slave = pty.openpty()
    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=slave)
    os.close(slave)
    shown = b""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            chunk = os.read(master, 65536)
        except OSError:     # EIO: the last writer closed the terminal
            break
        if not chunk:
            break
        shown += chunk
    os.close(master)
    return proc.wait(timeout=30), shown.decode("utf-8", "replace")


def test_replay_shows_progress_on_a_terminal_and_not_in_a_pipe(tmp_path, artifact):
    pcap = traffic.write(tmp_path / "t.pcap", 60_000)
    args = [console_script(), "replay", "--trails", artifact, "--log-dir", str(tmp_path / "log1"), pcap]
    code, shown = _run_on_a_terminal(args)
    assert code == 0, shown
    assert re.search(r"replay: +\d+%\|", shown), shown         # tqdm's bar, with a percentage of the bytes
    assert "events: " in shown                                   # the summary still follows
    piped = mte("replay", "--trails", artifact, "--log-dir", str(tmp_path / "log2"), pcap)
    assert piped.returncode == 0, piped.stderr
    assert "replay:" not in piped.stderr and "\r" not in piped.stderr
    quiet_code, quiet = _run_on_a_terminal([console_script(), "replay", "-q", "--trails", artifact, "--log-dir",
                                            str(tmp_path / "log3"), pcap])
    assert quiet_code == 0 and "replay:" not in quiet, quiet


def _ready_then_exit(sock) -> None:
    from engine.transport import ipc
    ipc.send(sock, ("ready", {}))


def test_a_child_ready_and_finished_between_two_looks_has_started(monkeypatch):
    """A short replay's worker can send `ready` and exit after the supervisor's select returned
    and before it checks who is alive: that child started, and the run goes on (CI saw
    "worker 0 failed to start (exit 0)" on a one-frame replay)."""
    import multiprocessing
    import selectors

    from engine.processes import supervisor as sup_module
    from engine.transport import ipc

    class LostWakeUp(selectors.DefaultSelector):
        def select(self, timeout=None):
            return []  # the select that returned just before the child's message arrived

    ctx = multiprocessing.get_context("fork")
    sup = sup_module.Engine.__new__(sup_module.Engine)
    sup.writer_channel = ipc.channel()
    sup.status_channels = [ipc.channel()]
    sup.writer = ctx.Process(target=_ready_then_exit, args=(sup.writer_channel[0],))
    sup.workers = [ctx.Process(target=_ready_then_exit, args=(sup.status_channels[0][0],))]
    for proc in [sup.writer] + sup.workers:
        proc.start()
        proc.join()
        assert proc.exitcode == 0
    monkeypatch.setattr(sup_module.selectors, "DefaultSelector", LostWakeUp)
    sup._wait_children_ready()  # raised EngineError("worker 0 failed to start (exit 0)") before
    for pair in [sup.writer_channel] + sup.status_channels:
        for end in pair:
            end.close()


def test_what_an_account_may_read_is_read_from_mode_bits_from_the_root_down():
    """privileges.readable_by, which a worker asks before it changes account (whether that account
    could import the QUIC AES library later: workers/quic.py load_aes_unless_readable)."""
    need_root()  # files of other owners (a worker changes account only when the engine runs as root)
    # pytest's own temporary directories sit under a 0700 one: this tree hangs off /tmp itself
    with tempfile.TemporaryDirectory(dir="/tmp") as top:
        _check_readable_by(Path(top))


def _check_readable_by(tmp_path: Path) -> None:
    nobody, other = Account("nobody", 65534, 65534), Account("other", 65533, 65533)
    other_in_nobody_group = Account("other", 65533, 65534)
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "sub" / "m.py").write_text("")
    os.chmod(tmp_path, 0o755)
    for path in (package, package / "sub"):
        os.chmod(path, 0o755)
    os.chmod(package / "sub" / "m.py", 0o644)
    assert readable_by(str(package), nobody)
    os.chmod(package / "sub" / "m.py", 0o600)           # a file only its owner (root) reads
    assert not readable_by(str(package), nobody)
    os.chown(package / "sub" / "m.py", nobody.uid, nobody.gid)
    assert readable_by(str(package), nobody)
    os.chmod(package / "sub" / "m.py", 0o640)
    os.chown(package / "sub" / "m.py", 0, nobody.gid)   # the group may read
    assert readable_by(str(package), other_in_nobody_group) and not readable_by(str(package), other)
    os.chmod(package / "sub", 0o750)                    # a directory above, as /root is: 0700 or 0750
    assert not readable_by(str(package), other)
    assert not readable_by(str(package / "sub" / "m.py"), other)
    os.chmod(package / "sub", 0o755)
    os.chmod(tmp_path, 0o700)
    assert not readable_by(str(package), other)
    assert not readable_by(str(tmp_path / "missing"), Account("root", 0, 0))   # cannot be looked at
