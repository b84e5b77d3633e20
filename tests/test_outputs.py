"""Events out, beyond the forwarding core: the one severity rule, and what the other output tests share.

- The default `[all] severity_regex` is this project's rule as it always was, event for event:
  held to that rule (written out below as it stood) over generated labels and references.
- A configured rule reaches every output through the real sensor: the log (`tail`), Logstash
  JSON over TCP, ECS JSON lines and the webhook all carry the severity the rule gave when the
  event was made; a rule that names no severity group is a configuration error naming the fix.
- Maltrail's semantics: re.search's leftmost match, then the first of low, medium, high.
- The new keys: documented, secrets never printed, Maltrail's options carried over by `config import`.

Helpers for tests/test_outputs_*.py live here too: capture files, configurations, a TCP
collector and a webhook receiver that run in the test, the FIFO-fed sensor.
"""

from __future__ import annotations

import http.server
import json
import os
import pwd
import socket
import struct
import subprocess
import threading
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from config import SCHEMA, toml_value
from engine.sources import synthetic as g
from tests.test_corpus import console_script
from trailsdb.compile import build

CORPUS = Path(__file__).resolve().parent / "corpus"
T0_S = 1_772_323_200            # 2026-03-01 00:00:00 UTC: every capture here starts then


# --- helpers ---------------------------------------------------------------------------------------

def mte(*args, env=None, timeout=180, **kw):
    return subprocess.run([console_script(), *args], capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, **(env or {})), **kw)


def write_pcap(path, frames, start_s: int = T0_S, step_us: int = 1000) -> str:
    """frames: bytes, or (seconds after start, bytes)."""
    with g.PcapWriter(str(path)) as w:
        for i, frame in enumerate(frames):
            at_us = int(frame[0] * 1_000_000) if isinstance(frame, tuple) else i * step_us
            w.write((start_s * 1_000_000 + at_us) * 1000, frame[1] if isinstance(frame, tuple) else frame)
    return str(path)


def write_conf(path, **sections) -> str:
    """A maltrail.toml: write_conf(p, all={...}, sensor={...})."""
    lines = []
    for section, keys in sections.items():
        lines.append("[%s]" % section)
        lines += ["%s = %s" % (key, toml_value(value)) for key, value in keys.items()]
    Path(path).write_text("\n".join(lines) + "\n")
    return str(path)


def trails_csv(path, *rows) -> str:
    """The project's corpus trails plus `rows`."""
    text = (CORPUS / "trails.csv").read_text()
    Path(path).write_text(text + "".join(row + "\n" for row in rows))
    return str(path)


def artifact(path, *rows) -> str:
    source = trails_csv(Path(path).with_suffix(".csv"), *rows)
    build([source], str(path))
    return str(path)


def replay(conf, trails, log, *pcaps, extra=(), env=None):
    return mte("replay", "-c", str(conf), "--trails", str(trails), "--log-dir", str(log), "--sensor-name", "s1",
               *extra, *map(str, pcaps), env=env)


def log_records(log) -> list[dict]:
    out = mte("tail", "--log-dir", str(log), "--format", "json")
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in out.stdout.splitlines()]


def log_lines(log) -> list[str]:
    out = mte("tail", "--log-dir", str(log))
    assert out.returncode == 0, out.stderr
    return out.stdout.splitlines()


def account_dir(path) -> Path:
    """A directory the sensor's unprivileged account (nobody, in the tests) may write in; pytest's
    own are 0700 root, which the forwarder reaches by the descriptor it opened first."""
    path = Path(path)
    path.mkdir(mode=0o750)
    nobody = pwd.getpwnam("nobody")
    os.chown(path, nobody.pw_uid, nobody.pw_gid)
    return path


def wait_for(predicate, timeout_s: float = 30.0, what: str = "the condition"):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("waited %.0f s for %s" % (timeout_s, what))


class Collector:
    """A TCP collector on loopback: keeps every line it is sent. `stop()` closes it (and every
    connection: the sensor sees a collector that went away); `start()` listens again on the same port."""

    def __init__(self, port: int = 0):
        self.lines: list[bytes] = []
        self.port = port
        self._lock = threading.Lock()
        self._server = None
        self._conns: list[socket.socket] = []
        self.start()

    def start(self) -> None:
        server = socket.socket()
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", self.port))
        server.listen(8)
        self.port = server.getsockname()[1]
        self._server = server
        threading.Thread(target=self._accept, args=(server,), daemon=True).start()

    def _accept(self, server) -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            self._conns.append(conn)
            threading.Thread(target=self._read, args=(conn,), daemon=True).start()

    def _read(self, conn) -> None:
        buffered = b""
        while True:
            try:
                data = conn.recv(65536)
            except OSError:
                return
            if not data:
                return
            buffered += data
            *complete, buffered = buffered.split(b"\n")
            with self._lock:
                self.lines.extend(complete)

    def stop(self) -> None:
        # shutdown first: a thread blocked in accept() keeps a listening socket alive past close().
        try:
            self._server.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._server.close()
        for conn in self._conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            conn.close()
        self._conns = []

    def json(self) -> list[dict]:
        with self._lock:
            return [json.loads(line) for line in self.lines]


class WebhookReceiver:
    """An HTTP server on loopback that keeps every POST (path, headers, body); `answers` is a list
    of statuses to give, in order, before it answers 200 to everything."""

    def __init__(self, answers=(), tls=None, port: int = 0):
        self.posts: list[tuple[str, dict, bytes]] = []
        self.answers = list(answers)
        self.statuses: list[int] = []
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                status = receiver.answers.pop(0) if receiver.answers else 200
                if callable(status):
                    status = status(body)
                receiver.statuses.append(status)
                if status == 200:
                    receiver.posts.append((self.path, dict(self.headers), body))
                answer = b"no thanks" if status != 200 else b""
                self.send_response(status)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, path="/hooks/T0/B0/s3cret", scheme="http", host="127.0.0.1") -> str:
        return "%s://%s:%d%s" % (scheme, host, self.port, path)

    def bodies(self) -> list[bytes]:
        return [body for _p, _h, body in self.posts]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class FifoSensor:
    """`replay` of a FIFO the test writes to: the sensor runs until the FIFO is closed, and a
    full batch of 1,024 frames is judged as soon as it is written."""

    def __init__(self, tmp_path, trails, conf, *extra):
        self.fifo = tmp_path / "traffic.fifo"
        os.mkfifo(self.fifo)
        self.log = tmp_path / "log"
        self.stats = tmp_path / "stats.json"
        self.proc = subprocess.Popen([console_script(), "replay", "-c", str(conf), "--trails", str(trails),
                                      "--log-dir", str(self.log), "--sensor-name", "f", "--stats-json",
                                      str(self.stats), *extra, str(self.fifo)], stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        threading.Thread(target=lambda: self.lines.extend(iter(self.proc.stderr.readline, "")), daemon=True).start()
        deadline = time.monotonic() + 30
        while True:     # opening for writing succeeds once the sensor has opened the FIFO
            try:
                fd = os.open(self.fifo, os.O_WRONLY | os.O_NONBLOCK)
                break
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.proc.kill()
                    raise AssertionError("the sensor never opened the FIFO: %s" % "".join(self.lines))
                time.sleep(0.05)
        os.set_blocking(fd, True)
        self.stream = os.fdopen(fd, "wb")
        self.stream.write(struct.pack("<IHHiIII", g.PCAP_MAGIC_US, 2, 4, 0, 0, 262144, 1))
        self.batches = 0

    def batch(self, frames, at_s: int = T0_S) -> None:
        """`frames` first, then filler that matches nothing, 1,024 in all, stamped `at_s`."""
        frames = list(frames) + [g.tcp_frame("10.9.9.9", "198.18.0.1", 20000 + i, 443)
                                 for i in range(1024 - len(frames))]
        self.stream.write(b"".join(struct.pack("<IIII", at_s, i, len(f), len(f)) + f for i, f in enumerate(frames)))
        self.stream.flush()
        self.batches += 1

    def finish(self, timeout_s: float = 60) -> dict:
        self.stream.close()
        self.proc.wait(timeout=timeout_s)
        assert self.proc.returncode == 0, "".join(self.lines)
        return json.loads(self.stats.read_text())

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        try:
            self.stream.close()
        except OSError:
            pass

    def text(self) -> str:
        return "".join(self.lines)


# --- the severity rule -----------------------------------------------------------------------------

# The rule as it stood before it became [all] severity_regex (events/record.py at issue 8), word for
# word: the default regular expression must say exactly this.
_OLD_HIGH = ("malware", "ransomware", "botnet", "c&c", "c2 ", "(c2)", "sinkhole", "backdoor", "rat)")
_OLD_LOW = ("reputation", "attacker", "scanner", "crawler", "spammer", "abuser", "bad history",
            "compromised", "parking", "parked", "tor exit", "dynamic", "free web", "known")


def old_rule(info: str, reference: str) -> str:
    text = info.lower()
    if any(k in text for k in _OLD_HIGH) or reference == "(custom)":
        return "high"
    if reference == "(heuristic)" or any(k in text for k in _OLD_LOW):
        return "low"
    return "medium"


_WORDS = list(_OLD_HIGH + _OLD_LOW) + ["C2 ", "MALWARE", "Known", "c2", "rat", "(", ")", " ", "x", "-", "\n",
                                       "(custom)", "(heuristic)", "potential", "suspicious"]
_REFERENCES = ["(static)", "(custom)", "(heuristic)", "(remote custom)", "(CUSTOM)", "(corpus)", "x(custom)",
               "alienvault.com", "malware.example", "scanner", "c2", "", "(known attacker)", "(a b c)"]


@settings(max_examples=3000, deadline=None)
@given(st.lists(st.sampled_from(_WORDS), max_size=7).map("".join), st.sampled_from(_REFERENCES))
def test_the_default_rule_is_the_rule_events_always_had(info, reference):
    from events.record import DEFAULT_SEVERITY_REGEX, SeverityRule, severity_of
    assert severity_of(info, reference) == SeverityRule(DEFAULT_SEVERITY_REGEX).of(info, reference) \
        == old_rule(info, reference)


def test_the_configuration_default_is_the_events_default():
    from events.record import DEFAULT_SEVERITY_REGEX
    # config imports nothing of ours: the text is written twice, and held equal here.
    assert SCHEMA["all"]["severity_regex"].default == DEFAULT_SEVERITY_REGEX


def test_maltrails_semantics_leftmost_match_then_low_medium_high():
    from events.record import SeverityRule
    rule = SeverityRule("(?P<high>malware)|(?P<low>corpus)")
    # re.search takes the leftmost match: "corpus" comes first in the text, so the event is low
    assert rule.of("corpus parent (malware)", "(corpus)") == "low"
    assert rule.of("parent (malware)", "(x)") == "high"
    assert rule.of("nothing", "(x)") == "medium"
    # a group that matched the empty string did not name the severity (Maltrail tests its truth)
    assert SeverityRule("(?P<high>x?)(?P<low>y)").of("y", "") == "low"
    # the reference is part of the text, as Maltrail has it since it matches "<info> <reference>"
    assert SeverityRule(r"(?P<low>\(heuristic\))").of("long domain (suspicious)", "(heuristic)") == "low"
    assert SeverityRule("").of("malware", "(static)") == "medium"


def test_a_configured_rule_is_the_severity_of_every_output(tmp_path):
    out = account_dir(tmp_path / "out")
    collector = Collector()
    hook = WebhookReceiver()
    try:
        conf = write_conf(tmp_path / "maltrail.toml",
                          all={"severity_regex": r"(?P<low>corpus parent)|(?P<high>corpus c2)"},
                          sensor={"logstash_server": ["tcp://127.0.0.1:%d" % collector.port],
                                  "json_output": ["file://%s/ecs.json" % out],
                                  "alert_webhook_url": hook.url(), "alert_severity": "low", "alert_throttle_s": 0})
        pcap = write_pcap(tmp_path / "x.pcap", [
            g.udp_frame("10.0.0.1", "10.0.0.53", 40000, 53, g.dns_query("www.evil-parent.net")),   # corpus parent
            g.tcp_frame("10.0.0.1", "203.0.113.66", 40001, 443),                                   # corpus c2
            g.tcp_frame("10.0.0.1", "203.0.113.69", 40002, 443),                                   # corpus bot
        ])
        result = replay(conf, CORPUS / "trails.csv", tmp_path / "log", pcap)
        assert result.returncode == 0, result.stderr
        by_info = {r["info"]: r["severity"] for r in log_records(tmp_path / "log")}
        # the default would say high for all three ("(malware)"); the configured rule decides
        assert by_info == {"corpus parent (malware)": "low", "corpus c2 (malware)": "high",
                           "corpus bot (malware)": "medium"}
        wait_for(lambda: len(collector.lines) == 3, what="three Logstash lines")
        assert {o["info"]: o["severity"] for o in collector.json()} == by_info
        ecs = [json.loads(line) for line in (out / "ecs.json").read_text().splitlines()]
        assert {d["rule"]["name"]: (d["maltrail"]["severity"], d["event"]["severity"]) for d in ecs} == {
            "corpus parent (malware)": ("low", 21), "corpus c2 (malware)": ("high", 73),
            "corpus bot (malware)": ("medium", 47)}
        assert {json.loads(b)["info"]: json.loads(b)["severity"] for b in hook.bodies()} == by_info
    finally:
        collector.stop()
        hook.close()


def test_a_rule_that_names_no_severity_is_refused_naming_the_key_and_the_fix(tmp_path):
    conf = write_conf(tmp_path / "maltrail.toml", all={"severity_regex": "(?P<bad>malware)"})
    result = mte("check-config", "-c", conf, "--config-only")
    assert result.returncode == 2
    assert "[all] severity_regex" in result.stderr and "(?P<high>malware)|(?P<low>scanner)" in result.stderr
    broken = write_conf(tmp_path / "broken.toml", all={"severity_regex": "(?P<high>malware"})
    result = mte("check-config", "-c", broken, "--config-only")
    assert result.returncode == 2 and "not a valid regular expression" in result.stderr


# --- the keys ------------------------------------------------------------------------------------

def test_the_webhook_url_is_never_printed(tmp_path):
    conf = write_conf(tmp_path / "maltrail.toml",
                      sensor={"alert_webhook_url": "https://hooks.example.org/services/T0/B0/s3cret"})
    result = mte("check-config", "-c", conf, "--config-only")
    assert result.returncode == 0, result.stderr
    assert "s3cret" not in result.stdout + result.stderr
    assert "# alert_webhook_url = (set, not shown)" in result.stdout
    wrong = write_conf(tmp_path / "wrong.toml", sensor={"alert_webhook_url": "htps://hooks.example.org/T0/s3cret"})
    result = mte("check-config", "-c", wrong, "--config-only")
    assert result.returncode == 2 and "[sensor] alert_webhook_url" in result.stderr
    assert "s3cret" not in result.stderr


@pytest.mark.parametrize("key, value, needles", [
    ("json_output", ["file://host/x.json"], ["[sensor] json_output", "file:///absolute/path"]),
    ("json_output", ["udp://127.0.0.1:5000"], ["[sensor] json_output", "file:// or tcp://"]),
    ("alert_webhook_url", "ftp://x.example/hook", ["[sensor] alert_webhook_url", "http:// or https://"]),
    ("alert_severity", "critical", ["[sensor] alert_severity", '"low", "medium" or "high"']),
    ("alert_format", '{"text": "%(nonsense)s"}', ["[sensor] alert_format", "%(nonsense)s is not a field",
                                                   "trail"]),
    ("alert_format", "100% sure", ["[sensor] alert_format", "%%"]),
    ("disable_local_log_storage", True, ["[sensor] disable_local_log_storage", "set log_server, syslog_server"]),
])
def test_malformed_output_settings_name_the_key_and_the_fix(tmp_path, key, value, needles):
    conf = write_conf(tmp_path / "maltrail.toml", sensor={key: value})
    result = mte("check-config", "-c", conf, "--config-only")
    assert result.returncode == 2
    for needle in needles:
        assert needle in result.stderr, (needle, result.stderr)


def test_config_import_carries_maltrails_alerting_and_keeps_the_log_without_a_destination(tmp_path):
    conf = tmp_path / "maltrail.conf"
    conf.write_text("MONITOR_INTERFACE eth1\nCAPTURE_BUFFER 10%\nLOG_DIR /var/log/maltrail\n"
                    "REMOTE_SEVERITY_REGEX (?P<high>malware)|(?P<low>scanner)\n"
                    "ALERT_WEBHOOK_URL https://hooks.example.org/x\nALERT_SEVERITY MEDIUM\nALERT_THROTTLE 60\n"
                    "ALERT_FORMAT {\"text\": \"%(info)s\"}\nDISABLE_LOCAL_LOG_STORAGE true\n")
    out = tmp_path / "maltrail.toml"
    done = mte("config", "import", str(conf), "-o", str(out))
    assert done.returncode == 0, done.stderr
    text = out.read_text()
    assert "severity_regex = \"(?P<high>malware)|(?P<low>scanner)\"" in text
    assert 'alert_severity = "medium"' in text and "alert_throttle_s = 60" in text
    assert "disable_local_log_storage = true" not in text
    assert "prints events on the console instead" in done.stdout


def test_the_spool_asks_about_the_places_the_forwarder_keeps(tmp_path):
    # The log writer deletes a day only when every destination's saved place is at its end: it must
    # ask about the names the forwarder saves under, the webhook's secret-free one included.
    from engine.processes.forwarder import build_destinations, destinations_from_config, position_names
    from config import load_config
    conf = write_conf(tmp_path / "maltrail.toml", sensor={
        "log_server": "127.0.0.1:8337", "syslog_server": ["tcp://127.0.0.1:514"],
        "logstash_server": ["udp://127.0.0.1:5000"], "json_output": ["tcp://127.0.0.1:5170"],
        "alert_webhook_url": "https://hooks.example.org/services/T0/B0/s3cret"})
    descriptions = destinations_from_config(load_config(conf))
    built = build_destinations(descriptions, "0.1.0", lambda: "2026-03-01")
    try:
        assert position_names(descriptions) == [d.name for d in built]
        assert len(set(position_names(descriptions))) == 5
        assert not any("s3cret" in name for name in position_names(descriptions))
    finally:
        for destination in built:
            destination.close()
