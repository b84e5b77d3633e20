"""Replaying capture files through the pipeline, and the run summary.

Owns the single-process replay loop (file -> batches -> worker -> event log), its progress bar on
a terminal, and the summary every run ends with (frames, skipped by reason, what was extracted,
events by type, rate). The multi-process engine will feed the same worker through rings; the
summary format stays.

Must not decode protocols (workers/ does) nor know the log's byte layout (engine/eventlog.py).
"""

from __future__ import annotations

import os
import sys
import time
from collections import Counter

from engine.eventlog import EventLogWriter
from engine.pcapfile import CaptureFileError, open_capture
from workers.pipeline import Worker

BATCH_FRAMES = 1024


class RunStats:
    def __init__(self):
        self.files = 0
        self.unreadable: list[str] = []
        self.reader_notes: list[str] = []
        self.truncated_records = 0
        self.started = time.monotonic()
        self.cpu_started = time.process_time()

    def elapsed(self) -> float:
        return time.monotonic() - self.started


def _progress(total_bytes: int):
    if not sys.stderr.isatty():
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total_bytes, unit="B", unit_scale=True, desc="replay", file=sys.stderr, leave=False)


def replay_files(paths, worker: Worker, writer: EventLogWriter, snaplen_bytes=None, reader="native",
                 stats: RunStats | None = None) -> RunStats:
    stats = stats or RunStats()
    total = sum(os.path.getsize(p) for p in paths if os.path.isfile(p))
    bar = _progress(total)
    try:
        for path in paths:
            try:
                capture = open_capture(path, snaplen_bytes=snaplen_bytes, reader=reader)
            except (CaptureFileError, OSError) as exc:
                stats.unreadable.append(str(exc))
                continue
            stats.files += 1
            with capture:
                while True:
                    batch = capture.read_batch(BATCH_FRAMES)
                    if batch is None:
                        break
                    writer.write(worker.process(batch))
                    writer.tick()
                    if bar is not None:
                        bar.update(len(batch.buf) + 16 * len(batch))
                stats.truncated_records += getattr(capture, "truncated_records", 0)
                stats.reader_notes.extend("%s: %s" % (os.path.basename(path), n) for n in getattr(capture, "notes", []))
        writer.write(worker.flush())
    finally:
        if bar is not None:
            bar.close()
    return stats


def summary_lines(worker: Worker, stats: RunStats, log_dir: str) -> list[str]:
    c = worker.counters
    elapsed = max(stats.elapsed(), 1e-9)
    cpu = time.process_time() - stats.cpu_started
    lines = ["frames: %d in %.2f s wall, %.2f s CPU (%.0f frames/s)" % (c.frames, elapsed, cpu, c.frames / elapsed),
             "decoded: %d; skipped: %d" % (c.decoded, sum(c.skipped.values()))]
    for reason, n in sorted(c.skipped.items(), key=lambda kv: -kv[1]):
        lines.append("  skipped %-50s %d" % (reason, n))
    if c.extracted:
        lines.append("extracted: " + ", ".join("%s %d" % kv for kv in sorted(c.extracted.items())))
    total_events = sum(c.events.values())
    lines.append("events: %d" % total_events + (" (" + ", ".join(
        "%s %d" % kv for kv in sorted(c.events.items(), key=lambda kv: (-kv[1], kv[0]))) + ")" if total_events else ""))
    if worker.condenser.suppressed:
        lines.append("  identical events condensed into counts: %d" % worker.condenser.suppressed)
    if stats.truncated_records:
        lines.append("capture files ended inside a record: %d" % stats.truncated_records)
    for note in stats.reader_notes[:10]:
        lines.append("  note: %s" % note)
    for problem in stats.unreadable:
        lines.append("unreadable: %s" % problem)
    lines.append("log: %s" % log_dir)
    return lines


def accounted(worker: Worker) -> bool:
    """Every frame ended decoded or skipped by one reason."""
    c = worker.counters
    return c.frames == c.decoded + sum(c.skipped.values())


def events_by_type(worker: Worker) -> Counter:
    return Counter(worker.counters.events)
