"""Server HTTPS intake benchmark: events per second our sensors' batches are stored at.

`python -m bench server-https [--sensors N] [--batch-events B] [--duration-s S]`

The real `maltrail-engine server` (installed console script) runs on loopback with a fresh SQLite
store in a temporary directory; N sensor keys are issued with `server sensor add`. N sender
processes, one per sensor, each POST batches as events/forwarders/server_link.py makes them
(its batch_body: zstd msgpack, every event numbered by a place in a log) one after the other
over a kept-alive connection, each waiting for its acknowledgement as a sensor does, for
`--duration-s`. The batches are built before the clock starts, so what is measured is the
server's side: decode, check, intent, the store's durable ingest, the places. Printed: batches
and events acknowledged, events/s, mean and worst acknowledgement time, the server's CPU
seconds and peak RSS, and the server's own counters (which must show no refusals). Plain HTTP
on loopback: TLS costs are the TLS listener's, not the intake's. Speed is measured here, never
asserted in tests.
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

from events.forwarders.cursor import Mark, Place
from events.forwarders.server_link import ServerLink
from events.record import Event


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _server_command() -> str:
    return os.path.join(os.path.dirname(sys.executable), "maltrail-engine")


def _health(port: int) -> dict:
    with urllib.request.urlopen("http://127.0.0.1:%d/api/v1/health" % port, timeout=10) as r:
        return json.loads(r.read())


def _bodies(sensor: str, batches: int, size: int) -> list[bytes]:
    link = ServerLink("http://127.0.0.1:1", "unused", sensor)
    now_us = int(time.time()) * 1_000_000
    out = []
    for b in range(batches):
        events, marks = [], []
        for j in range(size):
            i = b * size + j
            ts = now_us + i
            events.append(Event(ts, sensor, "10.%d.%d.%d" % (i >> 16 & 255, i >> 8 & 255, i & 255), 1024 + i % 60000,
                                "192.0.2.%d" % (i % 200), 443, "TCP", "IP", "192.0.2.%d" % (i % 200),
                                "known attacker", "(static)", "high", 1, ts))
            marks.append(Mark("bench.events.zst", Place(1, i // 100, i % 100 + 1), 0))
        out.append(link.batch_body(events, marks))
    return out


def _sender(port: int, sensor: str, key: str, bodies: list[bytes], duration_s: float, start_at: float, result) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    headers = {"Authorization": "Bearer %s:%s" % (sensor, key), "Content-Type": "application/x-maltrail-batch+zstd"}
    while time.monotonic() < start_at:
        time.sleep(0.001)
    sent = events = refused = 0
    worst = total = 0.0
    end = start_at + duration_s
    for body in bodies:
        if time.monotonic() >= end:
            break
        t0 = time.monotonic()
        conn.request("POST", "/api/v1/intake", body=body, headers=headers)
        response = conn.getresponse()
        answer = response.read()
        took = time.monotonic() - t0
        total += took
        worst = max(worst, took)
        if response.status == 200:
            sent += 1
            events += json.loads(answer)["stored"]
        else:
            refused += 1
    result.put({"batches": sent, "events": events, "refused": refused, "ack_total_s": total, "ack_worst_s": worst,
                "elapsed_s": time.monotonic() - start_at})


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench server-https", description=__doc__.split("\n\n")[0])
    ap.add_argument("--sensors", type=int, default=2, help="sensors sending at once (a process each)")
    ap.add_argument("--batch-events", type=int, default=2000, help="events per batch (the forwarder's default)")
    ap.add_argument("--duration-s", type=float, default=20.0, help="seconds of sending")
    ap.add_argument("--max-batches", type=int, default=400, help="batches built per sensor (memory bound)")
    args = ap.parse_args(argv)
    work = tempfile.mkdtemp(prefix="bench-server-https-")
    port = _free_port()
    config = os.path.join(work, "server.toml")
    store = os.path.join(work, "store")
    os.makedirs(store, mode=0o700)
    with open(config, "w") as f:
        f.write('[server]\nhttp_address = "127.0.0.1"\nhttp_port = %d\nudp_port = 0\nlog_dir = "%s"\n'
                'max_request_bytes = 16777216\n' % (port, store))
    keys = {}
    for n in range(args.sensors):
        name = "bench-%d" % n
        keys[name] = subprocess.run([_server_command(), "server", "-c", config, "sensor", "add", name],
                                    capture_output=True, text=True, check=True).stdout.strip()
    err = open(os.path.join(work, "server.err"), "wb")
    server = subprocess.Popen([_server_command(), "server", "-c", config], stderr=err)
    try:
        for _ in range(600):
            try:
                _health(port)
                break
            except OSError:
                time.sleep(0.05)
        bodies = {name: _bodies(name, args.max_batches, args.batch_events) for name in keys}
        print("server-https: %s, Python %s, %d CPUs; %d sensor(s), %d events per batch (%.0f bytes compressed), "
              "%.0f s; pid %d" % (platform.machine(), platform.python_version(), os.cpu_count() or 0, args.sensors,
                                  args.batch_events, sum(len(b) for b in bodies["bench-0"]) / len(bodies["bench-0"]),
                                  args.duration_s, server.pid))
        cpu0 = _cpu_s(server.pid)
        result = multiprocessing.Queue()
        start_at = time.monotonic() + 1.0
        procs = [multiprocessing.Process(target=_sender, args=(port, name, key, bodies[name], args.duration_s,
                                                               start_at, result)) for name, key in keys.items()]
        for p in procs:
            p.start()
        found = [result.get(timeout=args.duration_s + 300) for _ in procs]
        for p in procs:
            p.join()
        elapsed = max(r["elapsed_s"] for r in found)
        events = sum(r["events"] for r in found)
        batches = sum(r["batches"] for r in found)
        h = _health(port)
        print("acknowledged: %d batches, %d events in %.1f s: %.0f events/s; ack mean %.1f ms, worst %.1f ms; "
              "refused %d" % (batches, events, elapsed, events / elapsed, 1000 * sum(r["ack_total_s"] for r in found)
                              / max(batches, 1), 1000 * max(r["ack_worst_s"] for r in found),
                              sum(r["refused"] for r in found)))
        print("server: cpu %.1f s, peak RSS %d MiB; counters %s" % (
            _cpu_s(server.pid) - cpu0, _rss_kib(server.pid) // 1024, json.dumps(h["intake"]["https"])))
        if batches == len(bodies["bench-0"]) * len(keys):
            print("note: every prepared batch was sent before the time was up; raise --max-batches")
    finally:
        server.terminate()
        server.wait(timeout=120)
        err.close()
        shutil.rmtree(work, ignore_errors=True)
    return 0


def _cpu_s(pid: int) -> float:
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_kib(pid: int) -> int:
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


if __name__ == "__main__":
    sys.exit(main())
