"""`maltrail-engine demo`: the real job on an embedded default, with no network and no root.

Owns the demo scenario: a small trail set written here (every trail shape the engine matches),
a capture generated here (ordinary traffic with those indicators in it: DNS, HTTP, TLS and QUIC
server names, IPv4/IPv6 addresses, a CIDR range, an ip:port, a user agent, a sinkhole answer,
stacked VLAN tags, and for the heuristics a port scan, an XSS attempt and a DGA-like NXDOMAIN),
then the same steps a user runs: `trails build`, `replay`, `tail`.

Must not contain detection logic: it only prepares inputs and calls the real commands.
"""

from __future__ import annotations

import csv
import json
import os
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import urllib.request

from engine.sources import synthetic as g

START_NS = 1_767_225_600 * 1_000_000_000  # 2026-01-01 00:00:00 UTC
DEFAULT_EVERY_S = 10.0   # served: the capture is replayed again this often
DEMO_USER = "demo"
WAIT_S = 60              # the server's start, or its index catching up after a replay
STOP_S = 30              # a child's orderly stop (the sensor's is within 5 s) before SIGKILL

DEMO_TRAILS = [
    ("evil-demo.com", "demo dropper (malware)", "(demo)"),
    ("badcdn-demo.net", "demo c2 (malware)", "(demo)"),
    ("203.0.113.66", "demo c2 (malware)", "(demo)"),
    ("198.51.100.77:4444", "demo rat (malware)", "(demo)"),
    ("192.0.2.128/25", "demo scanner net (suspicious)", "(demo)"),
    ("2001:db8::66", "demo c2 (malware)", "(demo)"),
    ("/wp-login/gate.php", "demo panel (malware)", "(demo)"),
    ("shop.phish-demo.org/account/verify", "demo phishing (suspicious)", "(demo)"),
    ("ua:sqlmap/", "demo sqlmap (suspicious)", "(demo)"),
    ("198.51.100.90", "sinkhole demo (malware)", "(demo)"),
]


def demo_frames(start_ns: int = START_NS):
    """(ts_ns, frame) pairs: benign traffic with the demo indicators woven in, from start_ns on."""
    client, client6, resolver = "10.1.2.3", "2001:db8:1::3", "10.1.0.53"
    frames = []
    t = start_ns

    def add(frame, step_ms=7):
        nonlocal t
        t += step_ms * 1_000_000
        frames.append((t, frame))

    for i in range(40):
        port = 40000 + i
        add(g.udp_frame(client, resolver, port, 53, g.dns_query("www.site%d.org" % i)))
        add(g.udp_frame(resolver, client, 53, port, g.dns_response("www.site%d.org" % i, ["93.184.216.%d" % (i + 1)])))
        add(g.tcp_frame(client, "93.184.216.%d" % (i + 1), port, 443, g.TCP_SYN))
        add(g.tcp_frame("93.184.216.%d" % (i + 1), client, 443, port, g.TCP_SYN | g.TCP_ACK))
        add(g.tcp_frame(client, "93.184.216.%d" % (i + 1), port, 443, g.TCP_PSH | g.TCP_ACK,
                        g.tls_client_hello("www.site%d.org" % i)))
        if i == 5:
            add(g.udp_frame(client, resolver, 41000, 53, g.dns_query("update.evil-demo.com")))
            add(g.udp_frame(resolver, client, 53, 41001, g.dns_response("cdn.old-demo.com", ["198.51.100.90"])))
        if i == 10:
            for _ in range(3):  # a retrying client: one record, count 3
                add(g.tcp_frame(client, "203.0.113.66", 41010, 443, g.TCP_SYN))
            add(g.tcp_frame("203.0.113.66", client, 443, 41010, g.TCP_SYN | g.TCP_ACK))
            add(g.udp_frame(client, "198.51.100.77", 41011, 4444, b"\x00hello"))
        if i == 15:
            add(g.tcp_frame(client, "198.18.0.10", 41015, 80, g.TCP_PSH | g.TCP_ACK,
                            g.http_request("GET", "/wp-login/gate.php?id=7", "blog.demo-site.org", "Mozilla/5.0")))
            add(g.tcp_frame(client, "198.18.0.11", 41016, 80, g.TCP_PSH | g.TCP_ACK,
                            g.http_request("GET", "/account/verify", "shop.phish-demo.org", "Mozilla/5.0")))
            add(g.tcp_frame(client, "198.18.0.12", 41017, 80, g.TCP_PSH | g.TCP_ACK,
                            g.http_request("GET", "/?id=1", "www.demo-site.org", "sqlmap/1.7.2#stable")))
        if i == 20:
            add(g.tcp_frame(client, "198.18.0.20", 41020, 443, g.TCP_PSH | g.TCP_ACK,
                            g.tls_client_hello("c2.badcdn-demo.net")))
            add(g.udp_frame(client, "198.18.0.21", 41021, 443, g.quic_initial("quic.badcdn-demo.net")))
        if i == 25:
            add(g.tcp_frame(client6, "2001:db8::66", 41025, 443, g.TCP_SYN))
            add(g.tcp_frame("192.0.2.200", client, 51515, 22, g.TCP_SYN))
            add(g.udp_frame(client, resolver, 41026, 53, g.dns_query("evil-demo.com"), vlans=(100, 200)))
        if i == 30:  # what only the heuristics see: a port scan, an attack request, a DGA-like name
            for k in range(12):
                add(g.tcp_frame("198.51.100.200", client, 52000 + k, 20 + k, g.TCP_SYN), step_ms=1)
            add(g.tcp_frame(client, "198.18.0.30", 41030, 80, g.TCP_PSH | g.TCP_ACK,
                            g.http_request("GET", "/search?q=<script>alert(1)</script>", "www.demo-site.org",
                                           "Mozilla/5.0")))
            add(g.udp_frame(resolver, client, 53, 41031, g.dns_response("xkqwzlvbnmfghjd.com", rcode=3)))
    return frames


def write_inputs(out: str, start_ns: int = START_NS) -> tuple[str, str]:
    os.makedirs(out, exist_ok=True)
    trails = os.path.join(out, "trails.csv")
    with open(trails, "w", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows(DEMO_TRAILS)
    pcap = os.path.join(out, "demo.pcap")
    write_capture(pcap, start_ns)
    return trails, pcap


def write_capture(path: str, start_ns: int) -> None:
    with g.PcapWriter(path) as w:
        for ts, frame in demo_frames(start_ns):
            w.write(ts, frame)


def _empty_dir(path: str) -> None:
    """Remove what `path` holds (a rerun starts from an empty log, forwarding places included),
    never following a symbolic link out of it."""
    for name in os.listdir(path):
        entry = os.path.join(path, name)
        if stat.S_ISDIR(os.lstat(entry).st_mode):
            shutil.rmtree(entry)
        else:
            os.unlink(entry)


def run_demo(out: str, serve: bool = False, port: int = 0, every_s: float = DEFAULT_EVERY_S) -> int:
    """The demo: build the trails, replay the capture, show the events. With `serve`, also a
    real server on loopback fed by the replays (the sensor's server link), running until
    Ctrl-C (SIGINT) or SIGTERM; without, today's steps only, finishing by itself."""
    from cli import main as cli  # the real commands, as a user types them

    # Served, the capture is shifted to now, so the dashboard's default range (today) and live
    # mode show it; alone, it keeps its fixed date, so its output is the same on every run.
    trails, pcap = write_inputs(out, _now_start_ns() if serve else START_NS)
    artifact = os.path.join(out, "trails.mtdb")
    log_dir = os.path.join(out, "log")
    if os.path.isdir(log_dir):
        _empty_dir(log_dir)
    if not serve:
        steps = [
            ["trails", "build", "--source", trails, "-o", artifact],
            ["replay", "--trails", artifact, "--log-dir", log_dir, "--sensor-name", "demo", pcap],
            ["tail", "--log-dir", log_dir],
        ]
        for step in steps:
            code = _step(cli, step)
            if code:
                return code
        _closing_hint(out)
        return 0
    code = _step(cli, ["trails", "build", "--source", trails, "-o", artifact])
    if code:
        return code
    demo = DemoServer(out, artifact, log_dir, port)

    def interrupted(_sig, _frame):  # SIGTERM stops the demo as Ctrl-C does, cleaning up
        raise KeyboardInterrupt
    previous = signal.signal(signal.SIGTERM, interrupted)
    try:
        code = demo.run(cli, pcap, every_s)
    finally:
        demo.stop()
        signal.signal(signal.SIGTERM, previous)
    if code == 0:
        _closing_hint(out)
    return code


def _step(cli, step: list[str]) -> int:
    _say("\n$ maltrail-engine %s\n" % " ".join(step))
    code = cli(step)
    sys.stdout.flush()
    sys.stderr.flush()
    return code


def _say(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def _closing_hint(out: str) -> None:
    # The demo's artifact holds its ten made-up trails only; a sensor on real traffic needs real
    # ones, so the hint builds those first and never names the demo's artifact.
    _say("\nInputs, artifact and log are in %s/ (the artifact holds the demo's %d made-up trails "
         "only).\nOn a real span port, get real trails first (Maltrail's public feeds; add a Maltrail\n"
         "checkout to [all] trail_sources for its static trails), then capture:\n"
         "  sudo maltrail-engine trails update\n"
         "  sudo maltrail-engine check-config -i eth1 && sudo maltrail-engine -i eth1\n"
         % (out, len(DEMO_TRAILS)))


def _now_start_ns() -> int:
    """A start that puts the capture's last frame about now (never in the future: a server
    takes events as they come, but a range ending now would miss them)."""
    frames = demo_frames(0)
    return time.time_ns() - frames[-1][0] - 1_000_000_000


def _command() -> list[str]:
    """How to run `maltrail-engine` as a separate process: the console script beside this
    Python when installed (what `ps` then shows), else this Python running the same main()."""
    script = os.path.join(os.path.dirname(sys.executable), "maltrail-engine")
    if os.access(script, os.X_OK):
        return [script]
    return [sys.executable, "-c", "import sys; from cli import main; sys.exit(main(sys.argv[1:]))"]


def _die_with_parent() -> None:
    """In a child, before exec: SIGTERM when the demo dies, even by SIGKILL (Linux's
    PR_SET_PDEATHSIG), so a killed demo leaves no server behind. Best effort elsewhere."""
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _toml(value) -> str:
    return json.dumps(value)  # a JSON string is a TOML basic string


class DemoServer:
    """The served half of the demo: a server on loopback with its own configuration, state and
    store in a private temporary directory under the demo's output, a demo user with a random
    password, a sensor key for the sensor `demo`, and the replays that feed it through the
    sensor's server link. `stop` ends every process it started and removes the directory."""

    def __init__(self, out: str, artifact: str, log_dir: str, port: int):
        # mkdtemp: a new directory, mode 0700, never an existing one or a link planted there;
        # the key, the password's hash and the events stay readable by this account only.
        self.dir = tempfile.mkdtemp(prefix="server-", dir=out)
        os.mkdir(os.path.join(self.dir, "store"), 0o700)
        self.out = out
        self.artifact = os.path.abspath(artifact)
        self.log_dir = os.path.abspath(log_dir)
        self.port = port or _free_port()
        self.url = "http://127.0.0.1:%d" % self.port
        self.server_config = os.path.join(self.dir, "server.toml")
        self.sensor_config = os.path.join(self.dir, "sensor.toml")
        self.server_log_path = os.path.join(self.dir, "server.log")
        self.sensor_log_path = os.path.join(self.dir, "sensor.log")
        self.server = None
        self.replay = None
        self._logs = []

    def _start(self, args: list[str], stdout, stderr) -> subprocess.Popen:
        # A session of its own: Ctrl-C reaches the demo alone, which then stops each child in
        # order (the replay first, so what it sent is stored, then the server).
        return subprocess.Popen(_command() + args, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr,
                                start_new_session=True, preexec_fn=_die_with_parent)

    def _run(self, args: list[str], stdin_text: str = "") -> str:
        result = subprocess.run(_command() + args, input=stdin_text, capture_output=True, text=True, timeout=120)
        if result.returncode:
            raise DemoError("`maltrail-engine %s` failed: %s" % (" ".join(args), result.stderr.strip()))
        return result.stdout.strip()

    def _write_server_config(self, users_line: str) -> None:
        lines = ["# The demo's server: loopback only, its store beside this file.", "[server]",
                 'http_address = "127.0.0.1"', "http_port = %d" % self.port,
                 "udp_port = 0                     # no UDP intake: the demo's sensor sends over HTTP",
                 "log_dir = %s" % _toml(os.path.join(self.dir, "store")),
                 "users = [%s]" % _toml(users_line)]
        if os.geteuid() == 0:
            # Started as root the server would become [server] user, which cannot reach a
            # directory under another account's private one (the demo's output may be such):
            # the demo's server stays root, without capabilities, on loopback.
            lines.append('user = "root"')
        _write_private(self.server_config, "\n".join(lines) + "\n")

    def _write_sensor_config(self, key: str) -> None:
        _write_private(self.sensor_config, "\n".join([
            "# The demo's sensor: what a deployed sensor sets to send to a server.",
            "[all]", "log_dir = %s" % _toml(self.log_dir), "trails_artifact = %s" % _toml(self.artifact),
            "[sensor]", 'sensor_name = "demo"', "server_url = %s" % _toml(self.url),
            "server_key = %s" % _toml(key), ""]))

    def run(self, cli, pcap: str, every_s: float) -> int:
        try:
            return self._run_served(cli, pcap, every_s)
        except DemoError as exc:
            sys.stderr.write("maltrail-engine: demo: %s\n" % exc)
            return 1
        except KeyboardInterrupt:
            _say("\nStopping the demo's sensor and server ...\n")
            return 0

    def _run_served(self, cli, pcap: str, every_s: float) -> int:
        password = secrets.token_urlsafe(12)
        _say("\n$ maltrail-engine server user add %s        # the password: a random one\n" % DEMO_USER)
        users_line = self._run(["server", "user", "add", DEMO_USER, "--uid", "0"], password + "\n")
        self._write_server_config(users_line)
        _say("$ maltrail-engine server -c %s sensor add demo\n" % self.server_config)
        self._write_sensor_config(self._run(["server", "-c", self.server_config, "sensor", "add", "demo"]))
        _say("$ maltrail-engine server -c %s &     # its log: %s\n" % (self.server_config, self.server_log_path))
        server_log = open(self.server_log_path, "ab")
        self._logs.append(server_log)
        self.server = self._start(["server", "-c", self.server_config], subprocess.DEVNULL, server_log)
        self._wait_healthy()

        args = ["replay", "-c", self.sensor_config, pcap]
        _say("\n$ maltrail-engine %s        # [sensor] server_url = %s\n" % (" ".join(args), self.url))
        sys.stderr.flush()
        self._replay(args, None, None)
        indexed = self._wait_indexed()
        code = _step(cli, ["tail", "--log-dir", self.log_dir])
        if code:
            return code
        _say("\nThe server is running at %s/  log in as %s, password %s\n"
             "It holds the %d events above, sent by the sensor as a deployed one sends them ([sensor] "
             "server_url\nand server_key in %s). The capture is replayed every %g s, shifted to the time "
             "of the\nreplay, so live mode shows new events. Ctrl-C stops the server and the sensor and "
             "removes\n%s/.\n" % (self.url, DEMO_USER, password, indexed, self.sensor_config, every_s, self.dir))
        rounds = 1
        round_pcap = os.path.join(self.dir, "round.pcap")
        sensor_log = open(self.sensor_log_path, "ab")
        self._logs.append(sensor_log)
        while True:
            time.sleep(every_s)
            write_capture(round_pcap, _now_start_ns())
            rounds += 1
            self._replay(["replay", "--quiet", "-c", self.sensor_config, round_pcap], sensor_log, sensor_log)
            indexed = self._wait_indexed()
            _say("[i] %s replay %d: the server now holds %d events\n"
                 % (time.strftime("%Y-%m-%d %H:%M:%S"), rounds, indexed))

    def _replay(self, args: list[str], stdout, stderr) -> None:
        self.replay = self._start(args, stdout, stderr)
        code = self.replay.wait()
        self.replay = None
        if code:
            raise DemoError("the replay failed (status %d)%s" % (
                code, "; its output is in %s" % self.sensor_log_path if stderr is not None else ""))

    def _health(self) -> dict | None:
        try:
            with urllib.request.urlopen(self.url + "/api/v1/health", timeout=5) as answer:
                return json.loads(answer.read())
        except (OSError, ValueError):
            return None

    def _check_server(self) -> None:
        if self.server.poll() is not None:
            with open(self.server_log_path, errors="replace") as f:
                tail = "".join(f.readlines()[-10:])
            raise DemoError("the server stopped (status %d); its log ends:\n%s" % (self.server.returncode, tail))

    def _wait_healthy(self) -> dict:
        deadline = time.monotonic() + WAIT_S
        while True:
            self._check_server()
            health = self._health()
            if health is not None:
                return health
            if time.monotonic() > deadline:
                raise DemoError("the server did not answer within %d s; its log: %s" % (WAIT_S, self.server_log_path))
            time.sleep(0.1)

    def _wait_indexed(self) -> int:
        """Events the server's index holds once it has caught up with its log. The replay has
        ended, and its forwarder sends the whole capture before it exits, so every event is in
        the server's log by now; the indexer follows the log a little later."""
        deadline = time.monotonic() + WAIT_S
        while True:
            health = self._wait_healthy()
            store = health.get("store", {})
            if store.get("index_lag_events", 0) == 0:
                return int(store.get("events_indexed") or 0)
            if time.monotonic() > deadline:
                raise DemoError("the server's index did not catch up within %d s" % WAIT_S)
            time.sleep(0.1)

    def stop(self) -> None:
        """Stop the replay (if one runs), then the server, each by SIGTERM (their orderly stop),
        SIGKILL if one outlives STOP_S; close the logs; remove the temporary directory. Ctrl-C
        pressed again meanwhile does not cut this short."""
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            for proc in (self.replay, self.server):
                if proc is None or proc.poll() is not None:
                    continue
                proc.terminate()
                try:
                    proc.wait(timeout=STOP_S)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            for f in self._logs:
                f.close()
            shutil.rmtree(self.dir, ignore_errors=True)
            if self.server is not None:
                _say("Stopped the demo's server and sensor; removed %s/.\n" % self.dir)
        finally:
            signal.signal(signal.SIGINT, previous)


class DemoError(Exception):
    """A step of the served demo failed; the message says which and where its log is."""


def _write_private(path: str, text: str) -> None:
    """A new file, mode 0600, in the demo's private directory (it holds a key or a hash)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
