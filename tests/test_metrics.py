"""The Prometheus endpoint ([sensor] stats_address, engine/processes/metrics.py), for real:

- a real Prometheus (Debian's `prometheus`, started here in the foreground on loopback) scrapes a
  running sensor, and a query through its HTTP API returns the sensor's own counts; the sensor
  listens on a port below 1024 that the supervisor bound before dropping its privileges, and no
  child process holds the socket;
- `promtool check metrics` accepts the exposition, with and without forwarders;
- /healthz is 200 while the sensor judges traffic, 503 with the reason when a worker with frames
  in its ring is stopped (SIGSTOP) or the capture process stops reporting, and 200 again after;
- the HTTP side stands up to slow, silent and malformed clients; only GET of the two paths;
- an address that cannot be bound is one warning, and the sensor runs on without the endpoint;
- health is judged from the reports and the rings (an idle worker is healthy, a stuck one not).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest

from engine.processes import metrics
from engine.processes.metrics import (
    CLIENT_DEADLINE_S, MAX_CLIENTS, MAX_REQUEST_BYTES, STALL_S, MetricsError, MetricsServer, MetricsView,
    ProgressJudge, SensorCollector, WorkerView,
)
from engine.processes.privileges import effective_caps
from tests import traffic
from tests.test_engine import _fifo_engine, _wait_line, artifact, children_named, config, mte  # noqa: F401

CAP_NET_BIND_SERVICE = 10
WAIT_S = 60.0   # how long a test waits for something that must happen (never a measured duration)


# -- helpers --------------------------------------------------------------------------------------

def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip("needs %s (Debian's prometheus package; bootstrap.sh installs it)" % name)
    return path


def _free_port(below_1024: bool = False) -> int:
    candidates = range(1000, 900, -1) if below_1024 else [0]
    for port in candidates:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return s.getsockname()[1]
    pytest.skip("no free port below 1024 on 127.0.0.1")


def _get(url: str, timeout_s: float = 10.0) -> tuple[int, str, dict]:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as r:
            return r.status, r.read().decode(), dict(r.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(), dict(exc.headers)


def _until(what: str, check, timeout_s: float = WAIT_S):
    """Polls `check()` until it returns something true; fails naming `what` and the last value."""
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last and last[0]:
            return last
        time.sleep(0.2)
    raise AssertionError("%s never happened; last: %r" % (what, last))


def _health_until(url: str, status: int, contains: str = "") -> str:
    """Polls /healthz until it answers `status` with `contains` in its body; returns the body."""
    def check():
        got, body, _ = _get(url + "/healthz")
        return got == status and contains in body, got, body
    return _until("/healthz %d %r" % (status, contains), check)[2]


def _prom_value(server, api: str, expr: str) -> float | None:
    """The value of the first series `expr` selects in a running Prometheus, None for none yet."""
    if server.poll() is not None:
        raise AssertionError("prometheus exited (status %s)" % server.returncode)
    try:
        status, body, _ = _get(api + "/api/v1/query?" + urllib.parse.urlencode({"query": expr}), 5)
    except OSError:
        return None  # not listening yet
    result = json.loads(body)["data"]["result"] if status == 200 else []
    return float(result[0]["value"][1]) if result else None


def _endpoint(lines) -> str:
    return re.search(r"metrics: (http://\S+)/metrics", _wait_line(lines, r"metrics: http://")).group(1)


def _sample(text: str, name: str, labels: str = "") -> float | None:
    m = re.search(r"^%s%s (\S+)$" % (re.escape(name), re.escape(labels)), text, re.M)
    return float(m.group(1)) if m else None


def _listener_inode(port: int) -> str:
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "0A":
                    return fields[9]
    raise AssertionError("nothing listens on port %d" % port)


def _holds_socket(pid: int, inode: str) -> bool:
    for fd in os.listdir("/proc/%d/fd" % pid):
        try:
            if os.readlink("/proc/%d/fd/%s" % (pid, fd)) == "socket:[%s]" % inode:
                return True
        except OSError:
            pass
    return False


def _stop(proc, stream) -> None:
    for closer in (stream.close,):
        try:
            closer()
        except (BrokenPipeError, OSError):
            pass
    try:
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _view(now: float, workers=(), capture_heard: float = 0.0, capture_alive: bool = True, exitcode=None,
          mode: str = "live", forwarders=(), counters=None) -> MetricsView:
    return MetricsView(taken_monotonic=now, taken_unix=1_800_000_000.0 + now, started_unix=1_800_000_000.0,
                       counters=counters or {"frames": 0, "decoded": 0, "skipped": {}, "events": {}},
                       capture_frames=0, capture_kernel=None, capture_alive=capture_alive, capture_exitcode=exitcode,
                       capture_heard_monotonic=capture_heard, mode=mode, workers=tuple(workers),
                       trail_generation=3, trail_count=30, trails_built_unix=1_799_990_000, forwarders=tuple(forwarders))


def _worker(slot=0, heard=0.0, processed=0, backlog=0, in_hand=0, restarts=0, alive=True) -> WorkerView:
    return WorkerView(slot, alive, restarts, heard, processed, backlog, in_hand, 0, 0, 3)


# -- a real Prometheus scrapes a running sensor ---------------------------------------------------

def test_a_real_prometheus_scrapes_the_sensor_and_queries_its_counters(artifact, tmp_path):
    prometheus, promtool = _tool("prometheus"), _tool("promtool")
    sensor_port = _free_port(below_1024=os.geteuid() == 0)  # as root: bound before the privileges go
    proc, stream, lines, log = _fifo_engine(tmp_path, artifact, stats_address="127.0.0.1:%d" % sensor_port)
    server = None
    try:
        url = _endpoint(lines)
        assert url == "http://127.0.0.1:%d" % sensor_port
        traffic.write_stream(stream, 0, 2048, header=True)
        _wait_line(lines, r"processed w0:2048")
        events = len(range(0, 2048, 97))  # tests/traffic.py: every 97th frame queries a trail domain
        _wait_line(lines, r"events: DNS %d" % events)

        # The supervisor serves it without CAP_NET_BIND_SERVICE (it never had to keep it), and the
        # listening socket is the supervisor's alone: no child inherited it.
        if os.geteuid() == 0:
            assert CAP_NET_BIND_SERVICE not in effective_caps(proc.pid)
        inode = _listener_inode(sensor_port)
        assert _holds_socket(proc.pid, inode)
        children = children_named(proc.pid, "mte-")
        assert len(children) == 3  # capture, one worker, log writer
        assert not [pid for pid in children if _holds_socket(pid, inode)]

        # The exposition passes promtool's checks.
        status, text, headers = _get(url + "/metrics")
        assert status == 200 and headers["Content-Type"].startswith("text/plain; version=0.0.4")
        check = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True,
                               timeout=60)
        assert check.returncode == 0, check.stdout + check.stderr

        prom_port = _free_port()
        (tmp_path / "prometheus.yml").write_text(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
            "scrape_configs:\n  - job_name: maltrail\n    static_configs:\n"
            "      - targets: ['127.0.0.1:%d']\n" % sensor_port)
        with open(tmp_path / "prometheus.log", "w") as plog:
            server = subprocess.Popen([prometheus, "--config.file=%s" % (tmp_path / "prometheus.yml"),
                                       "--storage.tsdb.path=%s" % (tmp_path / "tsdb"),
                                       "--web.listen-address=127.0.0.1:%d" % prom_port], stdout=plog, stderr=plog)
        api = "http://127.0.0.1:%d" % prom_port
        # Each query is answered from what Prometheus scraped from the sensor; the first scrapes
        # may come before the counts settle, so wait for the expected value, then hold all of them.
        for expr, value in (("maltrail_packets_processed_total", 2048), ('maltrail_events_total{type="DNS"}', events),
                            ("maltrail_packets_received_total", 2048), ('maltrail_up{job="maltrail"}', 1),
                            ('maltrail_worker_packets_total{worker="0"}', 2048),
                            ("maltrail_trails", 30)):  # tests/corpus/trails.csv
            _until("Prometheus answering %s = %s" % (expr, value),
                   lambda: (lambda v: (v == value, v))(_prom_value(server, api, expr)))
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)
        _stop(proc, stream)
    assert proc.returncode == 0, "".join(lines)


# -- /healthz follows real faults -----------------------------------------------------------------

def test_healthz_is_503_while_a_worker_with_frames_in_its_ring_is_stopped_and_200_after(artifact, tmp_path):
    proc, stream, lines, log = _fifo_engine(tmp_path, artifact, stats_address="127.0.0.1:0")
    stopped = []
    try:
        url = _endpoint(lines)
        traffic.write_stream(stream, 0, 2048, header=True)
        _wait_line(lines, r"processed w0:2048")
        assert _health_until(url, 200) == "ok\n"

        # A worker stopped with frames in its ring: it neither reports nor finishes them.
        worker = children_named(proc.pid, "mte-worker")[0]
        os.kill(worker, signal.SIGSTOP)
        stopped.append(worker)
        traffic.write_stream(stream, 2048, 1024)
        body = _health_until(url, 503, "frames waiting")
        assert re.search(r"^worker 0 has frames waiting \(\d+ bytes in its ring, \d+ in hand\) and has finished "
                         r"none for \d+ s$", body, re.M), body
        assert re.search(r"^worker 0 has not reported for \d+ s$", body, re.M), body
        status, text, _ = _get(url + "/metrics")
        assert _sample(text, "maltrail_up") == 0
        assert _sample(text, "maltrail_worker_ring_backlog_bytes", '{worker="0"}') > 0
        assert _sample(text, "maltrail_worker_packets_total", '{worker="0"}') == 2048

        os.kill(worker, signal.SIGCONT)
        stopped.remove(worker)
        _wait_line(lines, r"processed w0:3072")
        _health_until(url, 200)

        # The capture process stopped: it no longer reports (an idle FIFO still reports).
        capture = children_named(proc.pid, "mte-capture")[0]
        os.kill(capture, signal.SIGSTOP)
        stopped.append(capture)
        body = _health_until(url, 503)
        assert re.fullmatch(r"the capture process has not reported for \d+ s\n", body), body
        os.kill(capture, signal.SIGCONT)
        stopped.remove(capture)
        _health_until(url, 200)
    finally:
        for pid in stopped:
            os.kill(pid, signal.SIGCONT)
        _stop(proc, stream)
    assert proc.returncode == 0, "".join(lines)


def test_an_address_that_cannot_be_bound_is_reported_and_the_sensor_runs_on(artifact, tmp_path):
    pcap = traffic.write(tmp_path / "t.pcap", 500)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        address = "127.0.0.1:%d" % taken.getsockname()[1]
        conf = config(tmp_path, stats_address=address)
        run = mte("replay", "-c", conf, "--trails", artifact, "--log-dir", str(tmp_path / "log"), "--workers", "1", pcap)
    assert run.returncode == 0, run.stderr
    assert re.search(r"^\[!\] \d{4}-\d\d-\d\d \d\d:\d\d:\d\d \[sensor\] stats_address = '%s': cannot listen there: "
                     r"Address already in use; another process \(another sensor\?\) listens there: choose another "
                     r"port; running without the metrics endpoint$" % re.escape(address), run.stderr, re.M), run.stderr
    events = len(range(0, 500, 97))
    assert "events: %d (DNS %d)" % (events, events) in run.stderr


def test_config_takes_ip_literals_with_a_port_and_names_the_fix_otherwise(tmp_path):
    good = {"": "", "127.0.0.1:9114": "127.0.0.1:9114", "[::1]:9114": "[::1]:9114", "0.0.0.0:0": "0.0.0.0:0"}
    for value in good:
        run = mte("check-config", "--config-only", "-c", config(tmp_path, stats_address=value))
        assert run.returncode == 0 and 'stats_address = "%s"' % value in run.stdout, run.stdout + run.stderr
    bad = {"localhost:9114": "'localhost' is not an IP address (a host name is not resolved here",
           "::1:9114": "an IPv6 address is written in brackets, as in [::1]:9114",
           "127.0.0.1": "the port is missing",
           "127.0.0.1:65536": "the port '65536' is not a number from 0 to 65535",
           "[::g]:1": "[::g] is not an IPv6 address"}
    for value, why in bad.items():
        run = mte("check-config", "--config-only", "-c", config(tmp_path, stats_address=value))
        assert run.returncode == 2, run.stdout
        assert "[sensor] stats_address = %s is not valid: %s" % (json.dumps(value), why) in run.stderr, run.stderr


# -- the HTTP side, against clients of every kind ----------------------------------------------------

@pytest.fixture
def server():
    s = MetricsServer("127.0.0.1:0", version="9.9")
    s.start()
    yield s
    s.stop()


def _exchange(server, request: bytes, timeout_s: float = 10.0) -> bytes:
    host, port = server.url[len("http://"):].rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=timeout_s) as c:
        c.sendall(request)
        out = b""
        while chunk := c.recv(65536):
            out += chunk
    return out


def test_only_get_of_the_two_paths_is_served(server):
    assert _exchange(server, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").endswith(
        b"\r\n\r\nstarting: the sensor's processes are not all running yet\n")
    first = _exchange(server, b"GET /metrics HTTP/1.1\r\n\r\n")
    assert first.startswith(b"HTTP/1.1 200 OK\r\n") and b"\nmaltrail_up 0.0\n" in first
    assert b'maltrail_build_info{version="9.9"} 1.0' in first
    now = time.monotonic()
    server.publish(_view(now, [_worker(heard=now)], capture_heard=now))
    assert _exchange(server, b"GET /healthz?verbose=1 HTTP/1.0\r\n\r\n").endswith(b"\r\n\r\nok\n")
    assert b"\nmaltrail_up 1.0\n" in _exchange(server, b"GET /metrics HTTP/1.1\r\n\r\n")
    for method in (b"POST", b"HEAD", b"PUT", b"DELETE"):
        answer = _exchange(server, method + b" /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 405 Method Not Allowed\r\n") and b"\r\nAllow: GET\r\n" in answer
    assert _exchange(server, b"GET /../etc/passwd HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 404 ")
    assert _exchange(server, b"GET / HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 404 ")
    for garbage in (b"\x16\x03\x01\x02\x00\x01\r\n\r\n", b"GET\r\n\r\n", b"GET /metrics SPDY/3\r\n\r\n",
                    b"GET http://x/metrics HTTP/1.1\r\n\r\n"):
        assert _exchange(server, garbage).startswith(b"HTTP/1.1 400 Bad Request\r\n"), garbage
    huge = b"GET /metrics HTTP/1.1\r\n" + b"X-Filler: " + b"a" * (MAX_REQUEST_BYTES + 10) + b"\r\n\r\n"
    assert _exchange(server, huge).startswith(b"HTTP/1.1 431 ")
    assert _exchange(server, b"GET /metrics HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 200 OK\r\n")


def test_silent_and_slow_clients_neither_block_others_nor_the_supervisor(server):
    host, port = server.url[len("http://"):].rsplit(":", 1)
    silent = [socket.create_connection((host, int(port)), timeout=CLIENT_DEADLINE_S + WAIT_S)
              for _ in range(MAX_CLIENTS - 1)]
    slow = socket.create_connection((host, int(port)), timeout=CLIENT_DEADLINE_S + WAIT_S)
    try:
        slow.sendall(b"GET /metr")        # and never the rest
        for s in silent:
            s.sendall(b"G")
        # Every slot but one is held, and the last one is still answered; publishing never waits.
        now = time.monotonic()
        server.publish(_view(now, [_worker(heard=now)], capture_heard=now))
        # the server has every silent connection registered before the next one is made
        _until("the slots taken", lambda: (len(server._clients) == MAX_CLIENTS, len(server._clients)))
        over = socket.create_connection((host, int(port)), timeout=WAIT_S)
        assert over.recv(100) == b""   # over the cap: closed at once, unanswered
        over.close()
        _until("the slow clients dropped at their deadline", lambda: (len(server._clients) == 0, len(server._clients)))
        for s in silent + [slow]:
            assert s.recv(100) == b""  # closed by the server without an answer
        assert _exchange(server, b"GET /healthz HTTP/1.1\r\n\r\n").endswith(b"\r\n\r\nok\n")
    finally:
        for s in silent + [slow]:
            s.close()


def test_children_forked_by_the_supervisor_hold_none_of_the_endpoint_sockets(server):
    host, port = server.url[len("http://"):].rsplit(":", 1)
    held = socket.create_connection((host, int(port)), timeout=WAIT_S)  # a client mid-request
    held.sendall(b"GET /")
    _until("the client registered", lambda: (len(server._clients) == 1, len(server._clients)))
    fds = [server._listener.fileno(), server._wake_r.fileno(), server._wake_w.fileno(),
           *[s.fileno() for s in server._clients]]
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: every one of those descriptors must be closed already
        open_fds = []
        for fd in fds:
            try:
                os.fstat(fd)
                open_fds.append(fd)
            except OSError:
                pass
        os.write(write, json.dumps(open_fds).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as f:
        still_open = json.loads(f.read())
    os.waitpid(pid, 0)
    assert still_open == []
    held.sendall(b"healthz HTTP/1.1\r\n\r\n")  # the parent's sockets are untouched
    assert held.recv(100).startswith(b"HTTP/1.1 503 ")
    held.close()


def test_a_port_below_1024_without_the_capability_is_refused_naming_the_fix():
    if os.geteuid() != 0:
        pytest.skip("needs root to become nobody")
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)  # nobody, no capabilities
            MetricsServer("127.0.0.1:%d" % 999)
            message = "bound"
        except MetricsError as exc:
            message = str(exc)
        except BaseException as exc:  # noqa: BLE001
            message = "unexpected %r" % exc
        os.write(write, message.encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as f:
        message = f.read()
    os.waitpid(pid, 0)
    assert message == ("[sensor] stats_address = '127.0.0.1:999': cannot listen there: Permission denied; ports "
                       "below 1024 need CAP_NET_BIND_SERVICE, which the sensor is not given (the installed service "
                       "has CAP_NET_RAW alone): choose a port from 1024 up")


# -- the exposition and the health judgement --------------------------------------------------------

def test_the_collector_renders_forwarders_and_every_counter_and_promtool_accepts_it(tmp_path):
    from prometheus_client.exposition import generate_latest
    from prometheus_client.registry import CollectorRegistry
    promtool = _tool("promtool")
    now = 500.0
    forwarders = [("syslog-0", {"kind": "syslog", "destination": "tls://collector.example:6514", "sent": 1200,
                                "failed": 3, "dropped": 0, "lag_s": 2.5, "connected": True}),
                  ("log-server", {"kind": "udp", "destination": "[2001:db8::5]:8337", "sent": 40, "failed": 0,
                                  "dropped": 7, "lag_s": 0.0, "connected": False})]
    counters = {"frames": 900, "decoded": 850, "skipped": {"truncated IPv4 header": 50},
                "extracted": {"dns queries": 12}, "events": {"DNS": 4, "IP": 2}, "condensed": 6,
                "dropped": {"whitelisted": 1}, "saturation": {"port scan keys evicted": 0}}
    view = _view(now, [_worker(0, heard=now - 0.3, processed=500, backlog=64, restarts=1),
                       _worker(1, heard=now - 0.2, processed=400)], capture_heard=now - 0.1,
                 forwarders=forwarders, counters=counters)
    health = ProgressJudge().judge(view)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SensorCollector(lambda: (view, health, view.taken_unix), "1.2.3"))
    text = generate_latest(registry).decode()
    labels = '{destination="tls://collector.example:6514",forwarder="syslog-0",kind="syslog"}'
    expected = {("maltrail_forwarder_sent_total", labels): 1200, ("maltrail_forwarder_failed_total", labels): 3,
                ("maltrail_forwarder_lag_seconds", labels): 2.5, ("maltrail_forwarder_connected", labels): 1,
                ("maltrail_forwarder_dropped_total",
                 '{destination="[2001:db8::5]:8337",forwarder="log-server",kind="udp"}'): 7,
                ("maltrail_packets_processed_total", ""): 900, ("maltrail_packets_decoded_total", ""): 850,
                ("maltrail_packets_skipped_total", '{reason="truncated IPv4 header"}'): 50,
                ("maltrail_events_total", '{type="DNS"}'): 4, ("maltrail_events_condensed_total", ""): 6,
                ("maltrail_events_dropped_total", '{reason="whitelisted"}'): 1,
                ("maltrail_worker_restarts_total", '{worker="0"}'): 1, ("maltrail_workers_alive", ""): 2,
                ("maltrail_worker_packets_total", '{worker="1"}'): 400, ("maltrail_trail_generation", ""): 3,
                ("maltrail_trails", ""): 30, ("maltrail_trail_age_seconds", ""): 10_000 + now,
                ("maltrail_up", ""): 1, ("maltrail_build_info", '{version="1.2.3"}'): 1}
    for (name, lbl), value in expected.items():
        assert _sample(text, name, lbl) == value, (name, lbl, text)
    check = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr


def test_an_idle_sensor_is_healthy_and_a_stuck_or_silent_one_is_not():
    judge = ProgressJudge(stall_s=STALL_S)
    t = 1000.0
    # Idle for a minute of view time: nothing waits, everybody reports.
    for step in range(120):
        now = t + step * 0.5
        health = judge.judge(_view(now, [_worker(0, heard=now, processed=10), _worker(1, heard=now)], capture_heard=now))
        assert health.ok, health
    t = now
    # Worker 1 has frames waiting and finishes none, while still reporting: unhealthy after STALL_S.
    seen = []
    for step in range(1, 30):
        now = t + step * 0.5
        seen.append(judge.judge(_view(now, [_worker(0, heard=now, processed=10), _worker(1, heard=now, backlog=4096)],
                                      capture_heard=now)))
    assert seen[int(STALL_S / 0.5) - 2].ok
    assert not seen[-1].ok and len(seen[-1].reasons) == 1
    assert re.fullmatch(r"worker 1 has frames waiting \(4096 bytes in its ring, 0 in hand\) and has finished none for "
                        r"1[0-4] s", seen[-1].reasons[0]), seen[-1].reasons
    # Progress (its processed count moves) makes it healthy at once, even with a backlog.
    now += 0.5
    assert judge.judge(_view(now, [_worker(0, heard=now, processed=10), _worker(1, heard=now, processed=512,
                                                                               backlog=4096)], capture_heard=now)).ok
    # A batch held without finishing counts as waiting too; a restart starts the clocks again.
    start = now
    for step in range(1, 30):
        now = start + step * 0.5
        health = judge.judge(_view(now, [_worker(0, heard=now, processed=10, in_hand=512),
                                         _worker(1, heard=now, processed=512)], capture_heard=now))
    assert not health.ok and health.reasons[0].startswith("worker 0 has frames waiting (0 bytes in its ring, 512 in hand)")
    now += 0.5
    assert judge.judge(_view(now, [_worker(0, heard=0.0, processed=10, in_hand=512, restarts=1),
                                   _worker(1, heard=now, processed=512)], capture_heard=now)).ok
    # Silence: a worker or the capture process that stops reporting.
    later = now + STALL_S + 1
    health = judge.judge(_view(later, [_worker(0, heard=now, processed=10, restarts=1),
                                       _worker(1, heard=later, processed=512)], capture_heard=now))
    assert health.reasons == ("the capture process has not reported for 11 s", "worker 0 has not reported for 11 s")
    # Processes that are gone.
    health = judge.judge(_view(later, [_worker(0, alive=False, restarts=1), _worker(1, heard=later, processed=512)],
                               capture_heard=later, capture_alive=False, exitcode=1))
    assert health.reasons == ("the capture process is not running (exit 1)", "worker 0 is not running")
    health = judge.judge(_view(later, [_worker(1, heard=later, processed=512)], capture_heard=later,
                               capture_alive=False, exitcode=0, mode="replay"))
    assert health.reasons == ("the capture process has finished: its input ended",)


def test_a_stale_view_means_the_supervisor_is_stuck(server):
    now = time.monotonic()
    server.publish(_view(now - STALL_S - 5, [_worker(heard=now - STALL_S - 5)], capture_heard=now - STALL_S - 5))
    health = server.health()
    assert not health.ok and re.match(r"the supervisor has not refreshed its view for 1[5-9] s",
                                      health.reasons[-1]), health
    assert b"\nmaltrail_up 0.0\n" in _exchange(server, b"GET /metrics HTTP/1.1\r\n\r\n")


def test_listen_addresses_are_literals():
    assert metrics.resolve_listen_address("127.0.0.1:9114") == (socket.AF_INET, ("127.0.0.1", 9114))
    family, sockaddr = metrics.resolve_listen_address("[::1]:0")
    assert family == socket.AF_INET6 and sockaddr[:2] == ("::1", 0)
    for bad in ("localhost:9114", "127.0.0.1", "[::1]", "1.2.3.4:x", "[zz]:1"):
        with pytest.raises(MetricsError, match=re.escape(repr(bad))):
            metrics.resolve_listen_address(bad)
    six = MetricsServer("[::1]:0")
    try:
        assert re.fullmatch(r"http://\[::1\]:\d+", six.url)
    finally:
        six.stop()

