"""Server UDP intake benchmark: the highest rate of Maltrail datagrams the server holds with zero loss.

`python -m bench server-udp [--duration-s S] [--rates R1,R2,...] [--drain-limit-s S] [--sources N]`

The real `maltrail-engine server` (installed console script) runs on loopback with a fresh store
in a temporary directory. For each rate, ascending, a sender process (its own core's worth of
Python, so the sender's work is not counted against the server's GIL) sends Maltrail LOG_SERVER
datagrams ("<epoch> <event line>", each line a distinct event: sources and ports vary) paced in
1 ms slices for `--duration-s`; then the server's own counters (/api/v1/health) are read until
every datagram is accounted for or nothing moves for 2 s. A rate is HELD when the server received
and stored every datagram sent (zero loss by its counters: stored = durable in the fsync'd daily
log) and had stored them all within `--drain-limit-s` after the sender finished (so a rate is not
held by buffering alone). The run stops at the first rate not held. Printed per rate: sent,
received, stored, lost, the send rate achieved, the drain time, the server's CPU seconds and peak
backlog; then, for the indexer process (server/indexer.py), which fills the index from the log
behind the intake: its CPU seconds, the peak index lag (events logged, not yet indexed) and when
the index had caught up after the sender finished. Then the highest rate held, with the machine
and Python version. Speed is measured here, never asserted in tests.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request


def _free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Info texts as trails carry them: a few labels (the severity rule's answers are remembered per
# label, as with real trail sets); sources, ports and trails vary per event.
_LABELS = ("malware", "known attacker", "mass scanner", "generic (malware)", "c2 server (malware)",
           "phishing (suspicious)", "tor exit node", "potential web scan")


def _datagrams(n: int, now_s: int, sources: int = 0) -> list[bytes]:
    """n distinct datagrams; `sources`: how many source addresses they share (0: one each)."""
    clock = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now_s))
    out = []
    for i in range(n):
        s = i % sources if sources else i
        out.append(('%d "%s.%06d" bench-%d 10.%d.%d.%d %d 192.0.2.%d 80 TCP IP 192.0.2.%d "%s" (static)\n'
                    % (now_s, clock, i % 1_000_000, i % 4, s >> 16 & 255, s >> 8 & 255, s & 255, 1024 + i % 60000,
                       i % 200, i % 200, _LABELS[i % len(_LABELS)])).encode())
    return out


def _send(port: int, rate: int, duration_s: float, result, sources: int = 0) -> None:
    pool = _datagrams(50_000, int(time.time()), sources)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    total = int(rate * duration_s)
    sent = 0
    start = time.monotonic()
    address = ("127.0.0.1", port)
    while sent < total:
        due = min(total, int((time.monotonic() - start) * rate) + max(rate // 1000, 1))
        while sent < due:
            sock.sendto(pool[sent % len(pool)], address)
            sent += 1
        ahead = sent / rate - (time.monotonic() - start)
        if ahead > 0:
            time.sleep(ahead)
    result.put((sent, time.monotonic() - start))


def _health(port: int) -> dict:
    with urllib.request.urlopen("http://127.0.0.1:%d/api/v1/health" % port, timeout=30) as r:
        return json.loads(r.read())


def _cpu_s(pid: int) -> float:
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _server_command() -> str:
    script = os.path.join(os.path.dirname(sys.executable), "maltrail-engine")
    return script if os.path.exists(script) else shutil.which("maltrail-engine") or "maltrail-engine"


def run_rate(http_port: int, udp_port: int, pid: int, rate: int, duration_s: float, drain_limit_s: float,
             sources: int = 0) -> dict:
    h0 = _health(http_port)
    before = h0["intake"]["udp"]
    cpu0 = _cpu_s(pid)
    indexer_pid = h0["store"].get("indexer", {}).get("pid", 0)
    indexer_cpu0 = _cpu_s(indexer_pid) if indexer_pid else 0.0
    peak_lag = 0
    result = multiprocessing.Queue()
    sender = multiprocessing.Process(target=_send, args=(udp_port, rate, duration_s, result, sources))
    sender.start()
    peak_backlog = 0
    while sender.is_alive():
        h = _health(http_port)
        peak_backlog = max(peak_backlog, h["intake"]["udp"]["backlog"])
        peak_lag = max(peak_lag, h["store"].get("index_lag_events", 0))
        time.sleep(0.25)
    sent, send_s = result.get()
    sender.join()
    sent_done = time.monotonic()
    last, still_since = None, time.monotonic()
    while True:
        now = _health(http_port)["intake"]["udp"]
        peak_backlog = max(peak_backlog, now["backlog"])
        done = now["stored"] - before["stored"]
        # Done when all is stored, or when the server has nothing left to store (backlog 0) and
        # its counters stood still for 2 s; a batch in progress can take longer than that.
        steady = last == now["datagrams"] + now["stored"] and time.monotonic() - still_since > 2.0
        if done >= sent or (steady and now["backlog"] == 0):
            break
        if last != now["datagrams"] + now["stored"]:
            last, still_since = now["datagrams"] + now["stored"], time.monotonic()
        time.sleep(0.05)
    drain_s = time.monotonic() - sent_done
    while True:     # the index behind the log (an indexer process): until it holds every event stored
        h = _health(http_port)
        peak_lag = max(peak_lag, h["store"].get("index_lag_events", 0))
        if h["store"].get("index_lag_events", 0) == 0:
            break
        time.sleep(0.05)
    indexed_s = time.monotonic() - sent_done
    same_indexer = indexer_pid and h["store"]["indexer"]["pid"] == indexer_pid      # not restarted meanwhile
    indexer_cpu_s = _cpu_s(indexer_pid) - indexer_cpu0 if same_indexer else None
    received = now["datagrams"] - before["datagrams"]
    stored = now["stored"] - before["stored"]
    lost = sent - stored
    return {"rate": rate, "sent": sent, "send_rate": round(sent / send_s), "received": received, "stored": stored,
            "lost": lost, "drain_s": round(drain_s, 2), "server_cpu_s": round(_cpu_s(pid) - cpu0, 2),
            "peak_backlog": peak_backlog, "held": lost == 0 and drain_s <= drain_limit_s,
            "parse_cpu_s": round(now["parse_cpu_s"] - before["parse_cpu_s"], 2),
            "store_cpu_s": round(now["store_cpu_s"] - before["store_cpu_s"], 2),
            "store_wall_s": round(now["store_wall_s"] - before["store_wall_s"], 2),
            "batches": now["batches"] - before["batches"], "peak_index_lag": peak_lag,
            "indexed_s": round(indexed_s, 2), "indexer_cpu_s": indexer_cpu_s}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench server-udp", description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration-s", type=float, default=10.0, help="seconds each rate is sent (60 for the figure)")
    ap.add_argument("--rates", default="10000,25000,50000,75000,100000,150000",
                    help="events per second to try, ascending (comma-separated)")
    ap.add_argument("--drain-limit-s", type=float, default=2.0,
                    help="most seconds after the sender stops for the server to have stored everything")
    ap.add_argument("--sources", type=int, default=0,
                    help="source addresses the datagrams share (0: every datagram its own, the index's worst case; "
                         "a real day has a few thousand)")
    args = ap.parse_args(argv)
    rates = [int(r) for r in args.rates.split(",") if r]
    work = tempfile.mkdtemp(prefix="bench-server-udp-")
    # Started as root, the server drops to its account ([server] user, nobody without one), which
    # must reach the store under this 0700 directory.
    os.chmod(work, 0o711)
    http_port, udp_port = _free_port(socket.SOCK_STREAM), _free_port(socket.SOCK_DGRAM)
    config = os.path.join(work, "server.toml")
    with open(config, "w") as f:
        f.write('[server]\nhttp_address = "127.0.0.1"\nhttp_port = %d\nudp_address = "127.0.0.1"\n'
                'udp_port = %d\nlog_dir = "%s"\n' % (http_port, udp_port, os.path.join(work, "store")))
    err = open(os.path.join(work, "server.err"), "wb")
    server = subprocess.Popen([_server_command(), "server", "-c", config], stderr=err)
    results = []
    try:
        for _ in range(600):
            try:
                _health(http_port)
                break
            except OSError:
                time.sleep(0.05)
        print("server-udp: %s, Python %s, %d CPUs; %.0f s per rate; %s; pid %d"
              % (platform.machine(), platform.python_version(), os.cpu_count() or 0, args.duration_s,
                 "%d sources" % args.sources if args.sources else "a source per datagram", server.pid))
        print("%8s %9s %9s %9s %9s %7s %8s %8s %9s %5s  %s" % (
            "rate", "sent", "send/s", "received", "stored", "lost", "drain_s", "cpu_s", "backlog", "held",
            "parse cpu / store cpu / store wall s, batches; indexer: cpu s, peak lag, indexed after s"))
        for rate in rates:
            r = run_rate(http_port, udp_port, server.pid, rate, args.duration_s, args.drain_limit_s, args.sources)
            results.append(r)
            print("%8d %9d %9d %9d %9d %7d %8.2f %8.2f %9d %5s  %.2f / %.2f / %.2f, %d; %s, %d, %.2f" % (
                r["rate"], r["sent"], r["send_rate"], r["received"], r["stored"], r["lost"], r["drain_s"],
                r["server_cpu_s"], r["peak_backlog"], "yes" if r["held"] else "NO", r["parse_cpu_s"],
                r["store_cpu_s"], r["store_wall_s"], r["batches"],
                "%.2f" % r["indexer_cpu_s"] if r["indexer_cpu_s"] is not None else "-", r["peak_index_lag"],
                r["indexed_s"]), flush=True)
            if not r["held"]:
                break
        held = [r["rate"] for r in results if r["held"]]
        h = _health(http_port)
        print("highest rate held: %s events/s (receive buffer %d bytes; refused %s; dropped %s)"
              % (max(held) if held else "none", h["intake"]["udp"]["receive_buffer_bytes"],
                 h["intake"]["udp"]["refused"], h["intake"]["udp"]["dropped"]))
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=300)
        err.close()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
