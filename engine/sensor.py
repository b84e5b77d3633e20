"""The live sensor loop: capture on the configured interfaces, judge, log, until told to stop.

Owns the single-process live run: opening every configured interface through libpcap, the read
loop (bounded waits so signals are noticed), closing condensing windows on the wall clock when
traffic pauses, periodic and final statistics, and a clean stop on SIGTERM/SIGINT (flush the
worker, close the log, exit 0). Signal handlers only set a flag; the loop does the work.

Must not decode protocols or know the log's byte layout.
"""

from __future__ import annotations

import signal
import sys
import threading
import time

from engine.live import CaptureOpenError, CaptureReadError, LiveCapture

POLL_MS = 100


def run_live(cfg, worker, writer, out=sys.stderr, stop: threading.Event | None = None) -> int:
    stop = stop or threading.Event()
    interfaces = list(cfg.sensor.interface)
    captures = []
    try:
        for name in interfaces:
            captures.append(LiveCapture(name, snaplen_bytes=cfg.sensor.snaplen_bytes,
                                        promiscuous=cfg.sensor.promiscuous, immediate=True,
                                        buffer_bytes=cfg.sensor.capture_buffer_bytes,
                                        bpf_filter=cfg.sensor.capture_filter, timeout_ms=POLL_MS))
            out.write("[i] capturing on %s%s\n" % (
                name, " (filter: %s)" % cfg.sensor.capture_filter if cfg.sensor.capture_filter else ""))
    except CaptureOpenError as exc:
        for cap in captures:
            cap.close()
        out.write("[!] %s\n" % exc)
        return 1
    out.flush()

    def on_signal(signum, _frame):
        stop.set()

    previous = {}
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGINT):
            previous[signum] = signal.signal(signum, on_signal)
    interval = cfg.sensor.stats_interval_s
    next_stats = time.monotonic() + interval if interval else None
    wait_ms = max(10, POLL_MS // len(captures))
    code = 0
    try:
        while not stop.is_set():
            for cap in captures:
                batch = cap.read_batch(1024, max_wait_ms=wait_ms)
                if len(batch):
                    writer.write(worker.process(batch))
            # Packet time stands still when traffic pauses; close windows on the wall clock too.
            writer.write(worker.expire(int(time.time() * 1_000_000)))
            writer.tick()
            if next_stats is not None and time.monotonic() >= next_stats:
                out.write("[i] %s\n" % stats_line(worker, captures))
                out.flush()
                next_stats = time.monotonic() + interval
    except CaptureReadError as exc:
        out.write("[!] capture failed: %s\n" % exc)
        code = 1
    finally:
        writer.write(worker.flush())
        writer.close()
        out.write("[i] stopped: %s\n" % stats_line(worker, captures))
        out.flush()
        for cap in captures:
            cap.close()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return code


def stats_line(worker, captures) -> str:
    c = worker.counters
    received = dropped = 0
    for cap in captures:
        try:
            s = cap.stats()
        except Exception:  # a capture that already failed has no stats to give
            continue
        received += s.get("received", 0)
        dropped += s.get("dropped", 0) + s.get("if_dropped", 0)
    events = ", ".join("%s %d" % kv for kv in sorted(c.events.items())) or "none"
    skipped = sum(c.skipped.values())
    return ("frames %d (kernel received %d, dropped %d); decoded %d, skipped %d; events: %s"
            % (c.frames, received, dropped, c.decoded, skipped, events))
