"""What the forwarding tests (tests/test_forward_*.py) run for real, on loopback: the sensor fed
through a FIFO, Debian's rsyslog in the foreground as a syslog collector (UDP, TCP, TLS), plain
UDP and TCP sockets as collectors, and the certificates TLS needs, made here with `cryptography`.

Nothing here knows how forwarding works inside: the expected records are written out in each test
from the documented layouts, and compared with what the collectors received.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time
from pathlib import Path

import pytest

from engine.sources import synthetic as g
from tests.test_corpus import console_script
from tests.test_engine import process_table

T0_S = 1_772_323_200          # 2026-03-01 00:00:00 UTC: packet time of the first frame


# --- ports --------------------------------------------------------------------------------------

def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A loopback port nothing is bound to right now (for a collector to take, or to stay closed)."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _bound(port: int, tcp: bool) -> bool:
    """Whether something listens on (TCP) or is bound to (UDP) 127.0.0.1:port, from /proc: no
    probe that a collector would log or receive."""
    path = "/proc/net/tcp" if tcp else "/proc/net/udp"
    want = ":%04X" % port
    with open(path) as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            if fields[1].endswith(want) and (not tcp or fields[3] == "0A"):   # 0A: LISTEN
                return True
    return False


def wait_until(predicate, what, timeout_s: float = 30.0, step_s: float = 0.05):
    """predicate()'s first true value; `what` (text, or a function giving it: what the failure
    message should show as it is then) names what was awaited."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step_s)
    raise AssertionError("timed out after %.0f s waiting for %s" % (timeout_s, what() if callable(what) else what))


# --- certificates ---------------------------------------------------------------------------------

class Pki:
    """A test CA with a server certificate for 127.0.0.1/localhost and a client certificate, and a
    second CA (`rogue`) with a server certificate for the same names that our CA did not sign."""

    def __init__(self, directory: Path):
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

        directory.mkdir(parents=True, exist_ok=True)
        now = datetime.datetime.now(datetime.timezone.utc)

        def name(text):
            return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)])

        def write(stem, key, cert):
            (directory / (stem + ".key")).write_bytes(key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
            (directory / (stem + ".pem")).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
            return directory / (stem + ".pem"), directory / (stem + ".key")

        def ca(stem, common_name):
            key = ec.generate_private_key(ec.SECP256R1())
            cert = (x509.CertificateBuilder().subject_name(name(common_name)).issuer_name(name(common_name))
                    .public_key(key.public_key()).serial_number(x509.random_serial_number())
                    .not_valid_before(now - datetime.timedelta(hours=1))
                    .not_valid_after(now + datetime.timedelta(days=2))
                    .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                    .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                                 content_commitment=False, key_encipherment=False,
                                                 data_encipherment=False, key_agreement=False,
                                                 encipher_only=False, decipher_only=False), critical=True)
                    .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
                    .sign(key, hashes.SHA256()))
            write(stem, key, cert)
            return key, cert

        def leaf(stem, common_name, issuer_key, issuer_cert, server: bool):
            key = ec.generate_private_key(ec.SECP256R1())
            builder = (x509.CertificateBuilder().subject_name(name(common_name)).issuer_name(issuer_cert.subject)
                       .public_key(key.public_key()).serial_number(x509.random_serial_number())
                       .not_valid_before(now - datetime.timedelta(hours=1))
                       .not_valid_after(now + datetime.timedelta(days=2))
                       .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                       .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
                                      critical=False)
                       .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server
                                                             else ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False))
            if server:
                builder = builder.add_extension(x509.SubjectAlternativeName([
                    x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            return write(stem, key, builder.sign(issuer_key, hashes.SHA256()))

        ca_key, ca_cert = ca("ca", "maltrail-engine test CA")
        rogue_key, rogue_cert = ca("rogue-ca", "somebody else's CA")
        self.ca = directory / "ca.pem"
        self.server_cert, self.server_key = leaf("server", "localhost", ca_key, ca_cert, server=True)
        self.client_cert, self.client_key = leaf("client", "sensor", ca_key, ca_cert, server=False)
        self.rogue_cert, self.rogue_key = leaf("rogue-server", "localhost", rogue_key, rogue_cert, server=True)


# --- rsyslog ------------------------------------------------------------------------------------

RSYSLOGD = shutil.which("rsyslogd") or "/usr/sbin/rsyslogd"


def need_rsyslog() -> str:
    if not os.path.exists(RSYSLOGD):
        pytest.skip("needs Debian's rsyslog (bootstrap.sh installs it: apt-get install rsyslog rsyslog-openssl)")
    return RSYSLOGD


class Rsyslog:
    """rsyslogd in the foreground with a configuration of its own: no system sockets, no system
    log, inputs on loopback only (imudp, imtcp with octet counting, imtcp over TLS with the
    openssl driver), everything received written to one file with a raw template (`%rawmsg%`:
    the record as it came, without the TCP framing)."""

    def __init__(self, directory: Path, *, udp: int | None = None, tcp: int | None = None,
                 tls: int | None = None, pki: Pki | None = None, auth_mode: str = "anon",
                 rogue: bool = False):
        need_rsyslog()
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "work").mkdir(exist_ok=True)
        self.udp, self.tcp, self.tls = udp, tcp, tls
        lines = []
        tls_globals = ""
        if tls is not None:
            cert, key = (pki.rogue_cert, pki.rogue_key) if rogue else (pki.server_cert, pki.server_key)
            tls_globals = (' defaultNetstreamDriverCAFile="%s" defaultNetstreamDriverCertFile="%s"'
                           ' defaultNetstreamDriverKeyFile="%s"' % (pki.ca, cert, key))
        lines.append('global(workDirectory="%s" parser.escapeControlCharactersOnReceive="off"'
                     ' maxMessageSize="64k"%s)' % (directory / "work", tls_globals))
        lines.append('template(name="raw" type="string" string="%rawmsg%\\n")')
        # A ruleset and a file per input: a test knows which transport brought each record.
        for kind in ("udp", "tcp", "tls"):
            lines.append('ruleset(name="%s") { action(type="omfile" file="%s" template="raw") }'
                         % (kind, directory / ("received-%s.log" % kind)))
        if udp is not None:
            lines.append('module(load="imudp")')
            lines.append('input(type="imudp" address="127.0.0.1" port="%d" ruleset="udp")' % udp)
        if tcp is not None or tls is not None:
            lines.append('module(load="imtcp" maxSessions="64")')
        if tcp is not None:
            lines.append('input(type="imtcp" address="127.0.0.1" port="%d" ruleset="tcp")' % tcp)
        if tls is not None:
            lines.append('input(type="imtcp" address="127.0.0.1" port="%d" ruleset="tls" '
                         'streamDriver.name="ossl" streamDriver.mode="1" streamDriver.authMode="%s")'
                         % (tls, auth_mode))
        self.conf = directory / "rsyslog.conf"
        self.conf.write_text("\n".join(lines) + "\n")
        self.proc: subprocess.Popen | None = None
        self.stderr = directory / "rsyslogd.stderr"

    def start(self) -> "Rsyslog":
        pidfile = self.directory / "rsyslogd.pid"
        try:
            pidfile.unlink()          # a killed one leaves it behind
        except FileNotFoundError:
            pass
        self.proc = subprocess.Popen([RSYSLOGD, "-n", "-f", str(self.conf), "-i", str(pidfile)],
                                     stdout=subprocess.DEVNULL, stderr=open(self.stderr, "ab"))
        for port, tcp in ((self.udp, False), (self.tcp, True), (self.tls, True)):
            if port is not None:
                wait_until(lambda: _bound(port, tcp) or self.proc.poll() is not None, "rsyslogd on port %d" % port)
        if self.proc.poll() is not None:
            raise AssertionError("rsyslogd exited (%s): %s" % (self.proc.returncode, self.stderr.read_text()))
        return self

    def kill(self) -> None:
        """SIGKILL: no goodbye to the sensor, whatever it had not read yet is gone."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for port, tcp in ((self.udp, False), (self.tcp, True), (self.tls, True)):
            if port is not None:
                wait_until(lambda: not _bound(port, tcp), "port %d to be free" % port)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def lines(self, kind: str) -> list[bytes]:
        """The records that came by `kind` ("udp", "tcp", "tls"), in the order written."""
        try:
            data = (self.directory / ("received-%s.log" % kind)).read_bytes()
        except FileNotFoundError:
            return []
        return data.split(b"\n")[:-1]       # a line still being written waits for its newline

    def wait_lines(self, kind: str, count: int, timeout_s: float = 60.0) -> list[bytes]:
        wait_until(lambda: len(self.lines(kind)) >= count,
                   lambda: "%d records by %s in rsyslog (have %d)" % (count, kind, len(self.lines(kind))), timeout_s)
        return self.lines(kind)

    def __enter__(self) -> "Rsyslog":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


# --- plain socket collectors ---------------------------------------------------------------------

class UdpCollector:
    """A bound UDP socket on loopback keeping every datagram it receives."""

    def __init__(self, family: int = socket.AF_INET):
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.sock.bind(("::1" if family == socket.AF_INET6 else "127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.datagrams: list[bytes] = []
        self.sock.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.datagrams.append(self.sock.recv(65535))
            except socket.timeout:
                continue
            except OSError:
                return

    def wait(self, count: int, timeout_s: float = 60.0) -> list[bytes]:
        wait_until(lambda: len(self.datagrams) >= count, lambda: "%d datagrams (have %d)" % (count, len(self.datagrams)),
                   timeout_s)
        return list(self.datagrams)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


class TcpLineCollector:
    """A TCP listener on loopback keeping every line (newline-terminated) of every connection.
    `pause()` stops reading (the kernel then acknowledges only what fits in the receive buffer,
    `rcvbuf_bytes` if given), `resume()` reads on."""

    def __init__(self, rcvbuf_bytes: int | None = None):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if rcvbuf_bytes:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf_bytes)   # accepted sockets inherit it
        self.reading = threading.Event()
        self.reading.set()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.lines: list[bytes] = []
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(0.2)
        buf = b""
        with conn:
            while not self._stop.is_set():
                if not self.reading.wait(0.2):
                    continue
                try:
                    data = conn.recv(65536)
                except socket.timeout:
                    continue
                except OSError:
                    return
                if not data:
                    return
                buf += data
                *complete, buf = buf.split(b"\n")
                self.lines.extend(complete)

    def pause(self) -> None:
        self.reading.clear()

    def resume(self) -> None:
        self.reading.set()

    def wait(self, count: int, timeout_s: float = 60.0) -> list[bytes]:
        wait_until(lambda: len(self.lines) >= count, lambda: "%d lines (have %d)" % (count, len(self.lines)), timeout_s)
        return list(self.lines)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


# --- the sensor -----------------------------------------------------------------------------------

def dns_frames(first: int, count: int, domain: str = "evil-parent.net", start_s: int = T0_S):
    """(ts_ns, frame): DNS queries for f<i>.<domain>, i from `first`, one per 10 ms of packet time
    from start_s + i/100: each is an event of its own (a trail of its own, nothing condensed)."""
    for i in range(first, first + count):
        ts_ns = (start_s * 1_000_000_000) + i * 10_000_000
        client = "10.1.%d.%d" % ((i >> 8) & 255, 1 + i % 250)
        yield ts_ns, g.udp_frame(client, "10.0.0.53", 1024 + i % 60000, 53, g.dns_query("f%d.%s" % (i, domain)))


def write_config(path: Path, sensor: dict) -> Path:
    path.write_text("[sensor]\n" + "".join("%s = %s\n" % (k, json.dumps(v)) for k, v in sensor.items()))
    return path


class Sensor:
    """`maltrail-engine replay` reading pcap records from a FIFO, so a test decides when traffic
    comes and when the input ends; stderr is collected line by line."""

    def __init__(self, directory: Path, artifact: str, log_dir: Path, workers: int = 1, **sensor):
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.artifact = artifact
        self.log_dir = log_dir
        self.workers = workers
        # Heuristics off: a test's thousands of f<i>.evil-parent.net queries would also be a DNS
        # exhaustion, and each record here is to be one trail event.
        self.conf = write_config(directory / ("sensor-%s.toml" % os.urandom(3).hex()),
                                 dict({"stats_interval_s": 1, "use_heuristics": False}, **sensor))
        self.proc: subprocess.Popen | None = None
        self.lines: list[str] = []
        self.stream = None
        self.fed = 0

    def start(self) -> "Sensor":
        fifo = self.directory / ("traffic-%s.fifo" % os.urandom(3).hex())
        os.mkfifo(fifo)
        self.proc = subprocess.Popen([console_script(), "replay", "-c", str(self.conf), "--trails", self.artifact,
                                      "--log-dir", str(self.log_dir), "--workers", str(self.workers),
                                      "--sensor-name", "fwd-test", str(fifo)],
                                     stderr=subprocess.PIPE, text=True)
        threading.Thread(target=lambda: self.lines.extend(iter(self.proc.stderr.readline, "")), daemon=True).start()
        deadline = time.monotonic() + 30
        while True:   # opening for writing succeeds once the engine has opened the FIFO for reading
            try:
                fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
                break
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.proc.kill()
                    self.proc.wait()
                    raise AssertionError("the sensor never opened its FIFO:\n%s" % self.text())
                time.sleep(0.05)
        os.set_blocking(fd, True)
        self.stream = os.fdopen(fd, "wb")
        self.stream.write(struct.pack("<IHHiIII", g.PCAP_MAGIC_US, 2, 4, 0, 0, 262144, 1))
        self.stream.flush()
        return self

    def feed(self, frames) -> int:
        """Writes (ts_ns, frame) records; returns how many."""
        n = 0
        chunk = []
        for ts_ns, frame in frames:
            sec, frac = divmod(ts_ns, 1_000_000_000)
            chunk.append(struct.pack("<IIII", sec, frac // 1000, len(frame), len(frame)) + frame)
            n += 1
            if len(chunk) >= 1024:
                self.stream.write(b"".join(chunk))
                chunk = []
        self.stream.write(b"".join(chunk))
        self.stream.flush()
        self.fed += n
        return n

    def text(self) -> str:
        return "".join(self.lines)

    def wait_line(self, pattern: str, timeout_s: float = 60.0) -> str:
        rx = re.compile(pattern)
        return wait_until(lambda: next((line for line in list(self.lines) if rx.search(line)), None),
                          lambda: "a sensor line matching %r in:\n%s" % (pattern, self.text()), timeout_s)

    def finish(self, timeout_s: float = 120.0) -> int:
        """Ends the input: the replay finishes as a replay does (forwarders catch up, places
        saved); returns the exit status."""
        try:
            self.stream.close()
        except BrokenPipeError:
            pass
        self.proc.wait(timeout=timeout_s)
        time.sleep(0.1)       # the stderr reader takes the last lines
        return self.proc.returncode

    def pids(self) -> list[int]:
        """The sensor and every process under it."""
        table = process_table()
        found, frontier = [self.proc.pid], [self.proc.pid]
        while frontier:
            parent = frontier.pop()
            children = [pid for pid, (ppid, _) in table.items() if ppid == parent]
            found += children
            frontier += children
        return found

    def child(self, prefix: str) -> int:
        table = process_table()
        return next(pid for pid in self.pids()[1:] if table.get(pid, (0, ""))[1].startswith(prefix))

    def kill_all(self) -> None:
        """SIGKILL to the sensor and all its processes at once (the forwarder first): nothing
        gets to finish or save anything."""
        table = process_table()
        pids = self.pids()
        pids.sort(key=lambda pid: not table.get(pid, (0, ""))[1].startswith("mte-forwarder"))
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            self.stream.close()
        except (BrokenPipeError, OSError):
            pass
        self.proc.wait(timeout=30)
        for pid in pids:
            wait_until(lambda: not os.path.exists("/proc/%d/stat" % pid) or _zombie(pid), "process %d to go" % pid)


def _zombie(pid: int) -> bool:
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def logged_events(log_dir: Path) -> list[dict]:
    """Every event in the log, as `tail --format json` gives them (written order)."""
    out = subprocess.run([console_script(), "tail", "--log-dir", str(log_dir), "--format", "json"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in out.stdout.splitlines()]


def rss_kib(pid: int, field: str = "VmHWM") -> int:
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError("no %s for %d" % (field, pid))
