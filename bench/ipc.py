"""Micro benchmark: moving event batches from a worker process to the log writer.

The engine sends events over a SOCK_SEQPACKET socket pair (engine/transport/ipc.py); the alternative was a
second shared-memory ring (engine/transport/ring.py). This measures both the same way: a forked producer
sends N events as msgpack batches, the consumer decodes them into Event objects; the figure is
events per second of wall time and the CPU each side spent, medians of --runs.

    .venv/bin/python -m bench.ipc [--events N] [--batch B] [--runs R]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import statistics
import sys
import time
from multiprocessing import shared_memory

import msgpack

from engine.transport import ipc
from engine.transport.ring import Ring, ring_bytes
from events.record import Event


def _events(n: int) -> list[list]:
    return [Event(1_700_000_000_000_000 + i, "bench", "10.0.0.%d" % (i % 250), 40000 + i % 20000, "203.0.113.66",
                  443, "TCP", "IP", "203.0.113.66", "bench trail (malware)", "(bench)", "high").to_record()
            for i in range(n)]


def _seqpacket_producer(sock, records, batch):
    for i in range(0, len(records), batch):
        ipc.send_records(sock, "events", 0, records[i:i + batch])
    ipc.send(sock, ["bye", 0])
    os._exit(0)


def _ring_producer(name, records, batch):
    block = shared_memory.SharedMemory(name=name)
    ring = Ring(block.buf)
    for i in range(0, len(records), batch):
        payload = msgpack.packb(records[i:i + batch], use_bin_type=True)
        while not ring.put(payload):
            time.sleep(0.0001)
    ring.close()
    os._exit(0)


def run_seqpacket(records, batch) -> tuple[float, float]:
    ctx = multiprocessing.get_context("fork")
    mine, theirs = ipc.channel()
    started, cpu = time.perf_counter(), time.process_time()
    proc = ctx.Process(target=_seqpacket_producer, args=(theirs, records, batch))
    proc.start()
    got = 0
    while True:
        message = ipc.receive(mine)
        if message[0] == "bye":
            break
        got += len([Event.from_record(r) for r in message[2]])
    proc.join()
    assert got == len(records)
    return time.perf_counter() - started, time.process_time() - cpu


def run_ring(records, batch) -> tuple[float, float]:
    ctx = multiprocessing.get_context("fork")
    block = shared_memory.SharedMemory(create=True, size=ring_bytes(1 << 20))
    ring = Ring(block.buf, 1 << 20, create=True)
    started, cpu = time.perf_counter(), time.process_time()
    proc = ctx.Process(target=_ring_producer, args=(block.name, records, batch))
    proc.start()
    got = 0
    while True:
        payload = ring.get()
        if payload is None:
            if ring.finished():
                break
            time.sleep(0.0001)
            continue
        got += len([Event.from_record(r) for r in msgpack.unpackb(payload, raw=False)])
    proc.join()
    ring.release()
    block.close()
    block.unlink()
    assert got == len(records)
    return time.perf_counter() - started, time.process_time() - cpu


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    records = _events(args.events)
    print("worker -> log writer transport: %d events in batches of %d, median of %d runs "
          "[CPython %s | %s, %d CPUs]" % (args.events, args.batch, args.runs, platform.python_version(),
                                          platform.machine(), os.cpu_count()))
    rows = {}
    for name, fn in (("seqpacket socket pair (shipped)", run_seqpacket), ("shared-memory ring", run_ring)):
        walls, cpus = [], []
        for _ in range(args.runs):
            wall, cpu = fn(records, args.batch)
            walls.append(wall)
            cpus.append(cpu)
        rows[name] = (statistics.median(walls), statistics.median(cpus))
    base = rows["seqpacket socket pair (shipped)"][0]
    print("  %-32s %12s %14s %10s" % ("transport", "events/s", "consumer CPU s", "x shipped"))
    for name, (wall, cpu) in rows.items():
        print("  %-32s %12.0f %14.2f %9.2fx" % (name, args.events / wall, cpu, wall / base))
    return 0


if __name__ == "__main__":
    sys.exit(main())
