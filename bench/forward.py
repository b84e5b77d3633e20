"""Forwarding benchmark: how fast each destination kind forwards, and what forwarding costs the sensor.

`python -m bench forward [--events N] [--packets N] [--runs N]`

1. Destination throughput (in one process): N events are written to a fresh log with the real
   log writer; then, for each kind (Maltrail LOG_SERVER over UDP, CEF syslog over UDP, TCP and
   TLS, Logstash JSON over UDP and TCP), a real Forwarder reads them from the log and delivers
   them to a local collector (a socket drained by a thread of this process; TLS with a
   certificate made for the run and verified). Reported: events per second of wall time, the
   forwarding thread's CPU per event, and what the collector received.
2. The sensor with and without forwarding: the same eventful pcap (`--packets` frames, one event
   in ten, each from its own source so noise control folds nothing) replayed by the real
   `maltrail-engine replay`, alternately with no destination and with all six, `--runs` times
   each; reported: wall time, CPU, replay rate and the ratio, with the events forwarded beside.
   Forwarding runs in its own process and follows the log, so the target is <= 5 % slower.

The collectors live in this process: what they cost is CPU the sensor does not have (2 cores
here); it is counted in wall time, not excluded.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time

from engine.sources import synthetic as g
from events.forwarders.base import Forwarder
from events.forwarders.cursor import PositionStore
from events.forwarders.logstash import Logstash
from events.forwarders.maltrail_server import MaltrailServer
from events.forwarders.syslog import Syslog
from events.forwarders.transports import tls_context
from events.log import EventLogWriter
from events.record import Event

from bench.replay import engine_command

KINDS = ("log_server udp", "syslog udp", "syslog tcp", "syslog tls", "logstash udp", "logstash tcp")


def _progress(text: str) -> None:
    sys.stderr.write("bench.forward: %s\n" % text)
    sys.stderr.flush()


# -- collectors ----------------------------------------------------------------------------------

class UdpCollector(threading.Thread):
    def __init__(self):
        super().__init__(daemon=True)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 << 20)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.received = 0
        self.stopping = False

    def run(self):
        while not self.stopping:
            try:
                self.sock.recv(65535)
                self.received += 1
            except socket.timeout:
                continue
            except OSError:
                return

    def stop(self):
        self.stopping = True
        self.join(2)
        self.sock.close()


class StreamCollector(threading.Thread):
    """Accepts connections and counts messages: octet-counted syslog, or lines."""

    def __init__(self, framing: str, tls: ssl.SSLContext | None = None):
        super().__init__(daemon=True)
        self.framing = framing
        self.tls = tls
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.received = 0
        self.stopping = False

    def run(self):
        while not self.stopping:
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        if self.tls is not None:
            try:
                conn = self.tls.wrap_socket(conn, server_side=True)
            except (OSError, ssl.SSLError):
                return
        conn.settimeout(0.5)
        buf = b""
        while not self.stopping:
            try:
                data = conn.recv(1 << 20)
            except socket.timeout:
                continue
            except OSError:
                return
            if not data:
                return
            buf += data
            if self.framing == "lines":
                self.received += buf.count(b"\n")
                buf = buf[buf.rfind(b"\n") + 1:]
                continue
            while True:                       # RFC 6587 octet counting
                space = buf.find(b" ")
                if space < 0:
                    break
                length = int(buf[:space])
                if len(buf) < space + 1 + length:
                    break
                buf = buf[space + 1 + length:]
                self.received += 1

    def stop(self):
        self.stopping = True
        self.join(2)
        self.sock.close()


def make_certificate(directory: str) -> tuple[str, str, str]:
    """A CA and a server certificate for 127.0.0.1 signed by it, for the run: (ca, cert, key)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    import ipaddress

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = tuple(os.path.join(directory, name) for name in ("ca.pem", "server.pem", "server.key"))
    with open(paths[0], "wb") as f:
        f.write(ca.public_bytes(serialization.Encoding.PEM))
    with open(paths[1], "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(paths[2], "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    return paths


def server_context(cert: str, key: str) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    return context


def collector_for(kind: str, certs) -> tuple:
    proto = kind.split()[1]
    if proto == "udp":
        return UdpCollector(), "udp"
    framing = "octets" if kind.startswith("syslog") else "lines"
    tls = server_context(certs[1], certs[2]) if proto == "tls" else None
    return StreamCollector(framing, tls), proto


def destination_for(kind: str, port: int, certs):
    if kind == "log_server udp":
        return MaltrailServer("127.0.0.1:%d" % port)
    if kind.startswith("syslog"):
        proto = kind.split()[1]
        tls = tls_context(certs[0]) if proto == "tls" else None
        return Syslog("%s://127.0.0.1:%d" % (proto, port), "maltrail", "bench", tls=tls)
    return Logstash("%s://127.0.0.1:%d" % (kind.split()[1], port))


# -- 1. destination throughput --------------------------------------------------------------------

def write_events(log_dir: str, count: int) -> None:
    base_us = int(time.time()) * 1_000_000
    with EventLogWriter(log_dir) as writer:
        batch = []
        for i in range(count):
            batch.append(Event(base_us + i * 1000, "bench", "10.%d.%d.%d" % (i >> 16 & 255, i >> 8 & 255, i & 255),
                               40000 + i % 20000, "192.0.2.%d" % (i % 250 + 1), 53, "UDP", "DNS",
                               "h%d.evil-bench.net" % i, "bench malware (malware)", "(bench)", "high"))
            if len(batch) == 4096:
                writer.write(batch)
                batch = []
        writer.write(batch)


def destination_throughput(count: int, workdir: str, certs) -> list[dict]:
    log_dir = os.path.join(workdir, "log")
    write_events(log_dir, count)
    rows = []
    for kind in KINDS:
        collector, _ = collector_for(kind, certs)
        collector.start()
        destination = destination_for(kind, collector.port, certs)
        dir_fd = os.open(log_dir, os.O_RDONLY | os.O_DIRECTORY)
        store = PositionStore(dir_fd, destination.name)
        store.save({})                           # a saved, empty place: from the log's start
        forwarder = Forwarder(destination, dir_fd, warn=_progress)
        _progress("%s: %d events" % (kind, count))
        wall0, cpu0 = time.perf_counter(), time.thread_time()
        while forwarder.step():
            pass
        wall, cpu = time.perf_counter() - wall0, time.thread_time() - cpu0
        deadline = time.monotonic() + 5
        while collector.received < forwarder.sent and time.monotonic() < deadline:
            time.sleep(0.05)
        forwarder.stop()
        collector.stop()
        os.close(dir_fd)
        rows.append({"kind": kind, "events": count, "sent": forwarder.sent, "dropped": forwarder.dropped,
                     "received": collector.received, "wall_s": wall, "cpu_s": cpu})
    return rows


# -- 2. the sensor with and without forwarding ---------------------------------------------------

def eventful_pcap(path: str, packets: int, every: int = 10) -> str:
    """One event in `every` frames (a DNS query for a listed name from a source of its own), the
    rest ordinary connections; deterministic."""
    t0 = 1_767_225_600 * 1_000_000_000
    with g.PcapWriter(path) as w:
        for i in range(packets):
            client = "10.%d.%d.%d" % (1 + (i >> 16) % 200, (i >> 8) & 255, i & 255 or 1)
            if i % every == 0:
                frame = g.udp_frame(client, "10.0.0.53", 1024 + i % 60000, 53,
                                    g.dns_query("q%d.evil-bench.net" % i))
            else:
                frame = g.tcp_frame(client, "198.18.%d.%d" % ((i >> 8) & 255, i % 250 + 1), 1024 + i % 60000,
                                    443, g.TCP_SYN)
            w.write(t0 + i * 20_000, frame)
    return path


def run_replay(engine: str, pcap: str, artifact: str, workdir: str, config: str | None) -> dict:
    log_dir = tempfile.mkdtemp(prefix="log-", dir=workdir)
    stats_path = os.path.join(workdir, "stats-%s.json" % os.path.basename(log_dir))
    cmd = [engine, "replay", "--trails", artifact, "--log-dir", log_dir, "--stats-json", stats_path, "-q", pcap]
    if config:
        cmd[2:2] = ["-c", config]
    start_unix = time.time()
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        sys.stderr.write(done.stderr)
        raise SystemExit("bench.forward: %s exited %d" % (" ".join(cmd), done.returncode))
    with open(stats_path) as f:
        stats = json.load(f)
    shutil.rmtree(log_dir, ignore_errors=True)
    # Judged: the log writer closed the log (every frame judged, every event written); the wall
    # time after that is the forwarders sending what the log holds before the run ends.
    judged = stats.get("writer", {}).get("finished_s", start_unix + wall) - start_unix
    return {"wall_s": wall, "judged_s": judged, "cpu_s": stats["cpu_s"], "frames": stats["counters"]["frames"],
            "records": stats.get("writer", {}).get("records", 0), "forwarders": stats.get("forwarders", {})}


DENSITIES = (("1 event in 10 frames", 10), ("1 event in 500 frames", 500))


def sensor_cost(packets: int, runs: int, workdir: str, certs) -> dict:
    engine = engine_command()
    trails = os.path.join(workdir, "trails.csv")
    with open(trails, "w") as f:
        f.write("evil-bench.net,bench malware (malware),(bench)\n")
    artifact = os.path.join(workdir, "trails.mtdb")
    subprocess.run([engine, "trails", "build", "--source", trails, "-o", artifact], check=True, capture_output=True)
    collectors = {kind: collector_for(kind, certs)[0] for kind in KINDS}
    for collector in collectors.values():
        collector.start()
    port = {kind: c.port for kind, c in collectors.items()}
    config = os.path.join(workdir, "forward.toml")
    with open(config, "w") as f:
        f.write('[sensor]\nlog_server = "127.0.0.1:%d"\n' % port["log_server udp"])
        f.write('syslog_server = ["udp://127.0.0.1:%d", "tcp://127.0.0.1:%d", "tls://127.0.0.1:%d"]\n'
                % (port["syslog udp"], port["syslog tcp"], port["syslog tls"]))
        f.write('syslog_ca_file = "%s"\n' % certs[0])
        f.write('logstash_server = ["udp://127.0.0.1:%d", "tcp://127.0.0.1:%d"]\n'
                % (port["logstash udp"], port["logstash tcp"]))
    results = {}
    for label, every in DENSITIES:
        pcap = eventful_pcap(os.path.join(workdir, "every-%d.pcap" % every), packets, every)
        off, on = [], []
        for i in range(runs):
            _progress("%s: forwarding off, run %d/%d" % (label, i + 1, runs))
            off.append(run_replay(engine, pcap, artifact, workdir, None))
            _progress("%s: forwarding to 6 destinations, run %d/%d" % (label, i + 1, runs))
            on.append(run_replay(engine, pcap, artifact, workdir, config))
        results[label] = {"off": off, "on": on}
    for collector in collectors.values():
        collector.stop()
    return {"densities": results, "packets": packets,
            "received": {kind: c.received for kind, c in collectors.items()}}


# -- the report ------------------------------------------------------------------------------------

def report(throughput: list[dict], cost: dict, args) -> list[str]:
    out = ["maltrail-engine forwarding benchmark (python -m bench forward)",
           "CPython %s, %s, %d CPUs; medians of %d runs where runs are repeated"
           % (platform.python_version(), platform.machine(), os.cpu_count() or 0, args.runs), "",
           "1. Destination throughput: a Forwarder reading %d events from the log, one destination at a time, to a "
           "collector on loopback" % args.events,
           "  %-14s %9s %9s %9s %10s %12s %14s" % ("kind", "events", "sent", "received", "wall s", "events/s",
                                                   "CPU us/event")]
    for row in throughput:
        out.append("  %-14s %9d %9d %9d %10.3f %12.0f %14.1f" % (
            row["kind"], row["events"], row["sent"], row["received"], row["wall_s"],
            row["events"] / max(row["wall_s"], 1e-9), row["cpu_s"] * 1e6 / max(row["events"], 1)))
    out += ["", "2. The sensor replaying %d frames, forwarding off and on (all 6 destinations); judged = until the log "
            "writer closed the log (every frame judged), wall = until the run ended (forwarders caught up)"
            % cost["packets"],
            "  %-22s %-4s %8s %9s %9s %8s %12s %9s %10s" % ("pcap", "fwd", "events", "judged s", "wall s", "CPU s",
                                                         "judged kpps", "x off", "wall x off")]
    for label, runs in cost["densities"].items():
        base_judged = statistics.median(r["judged_s"] for r in runs["off"])
        base_wall = statistics.median(r["wall_s"] for r in runs["off"])
        for fwd in ("off", "on"):
            rs = runs[fwd]
            judged = statistics.median(r["judged_s"] for r in rs)
            wall = statistics.median(r["wall_s"] for r in rs)
            frames = rs[0]["frames"]
            out.append("  %-22s %-4s %8d %9.3f %9.3f %8.3f %12.1f %9.3f %10.3f" % (
                label, fwd, rs[0]["records"], judged, wall, statistics.median(r["cpu_s"] for r in rs),
                frames / judged / 1e3, base_judged / judged, base_wall / wall))
        sent = sorted({(st["kind"], st["destination"], st["sent"]) for r in runs["on"]
                       for st in r["forwarders"].values()})
        complete = all(st["sent"] == r["records"] for r in runs["on"] for st in r["forwarders"].values())
        out.append("  %-22s every destination got every event in every run: %s (%d destinations)"
                   % ("", "yes" if complete else "NO", len({(k, d) for k, d, _ in sent})))
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench forward", description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=100_000, help="events forwarded per destination kind")
    parser.add_argument("--packets", type=int, default=200_000, help="frames of the eventful pcap")
    parser.add_argument("--runs", type=int, default=3, help="replays per figure, median taken")
    parser.add_argument("--json", metavar="FILE", help="also write the raw numbers here")
    args = parser.parse_args(argv)
    workdir = tempfile.mkdtemp(prefix="bench-forward-")
    try:
        certs = make_certificate(workdir)
        throughput = destination_throughput(args.events, workdir, certs)
        cost = sensor_cost(args.packets, args.runs, workdir, certs)
        print("\n".join(report(throughput, cost, args)))
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"throughput": throughput, "cost": cost}, f, indent=1)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
