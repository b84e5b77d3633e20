"""Replaying capture files through one in-process worker.

Owns the single-process replay loop (file -> batches -> worker -> event log). The engine's own
replay (`maltrail-engine replay`) goes through the capture, worker and log-writer processes
(engine/processes/supervisor.py); this loop is the same judgement without processes, used where
a test or a benchmark wants the pipeline alone. It reads files as the capture process does
(engine/processes/capture.py `replay`) and reports them the same way: a file that cannot be
opened, or whose reading stops part way for a reason other than damage in it, is named in
`unreadable` (with how many of its frames were replayed) and the next file is read; a file that
starts before what was replayed is a timeline break.

Must not decode protocols (workers/ does) nor know the log's byte layout (events/log).
"""

from __future__ import annotations

import os

from events.log import EventLogWriter
from engine.processes.capture import stopped_part_way
from engine.sources.pcapfile import CaptureFileError, open_capture, starts_before
from workers.pipeline import Worker

BATCH_FRAMES = 1024


def replay_files(paths, worker: Worker, writer: EventLogWriter, snaplen_bytes=None, reader="native") -> dict:
    """Replays `paths` in order; returns what the capture side saw (files, unreadable, notes,
    truncated records, timeline breaks), as the capture process reports it."""
    capture = {"files": 0, "unreadable": [], "notes": [], "truncated_records": 0, "timeline_breaks": 0}
    latest = None
    for path in paths:
        try:
            source = open_capture(path, snaplen_bytes=snaplen_bytes, reader=reader)
        except (CaptureFileError, OSError) as exc:
            capture["unreadable"].append(str(exc))
            continue
        capture["files"] += 1
        if starts_before(path, latest, snaplen_bytes, reader):
            capture["timeline_breaks"] += 1
            writer.write(worker.flush())    # a timeline break, as the capture process marks it
        frames = 0
        stopped = None
        with source:
            while True:
                try:
                    batch = source.read_batch(BATCH_FRAMES)
                except CaptureFileError as exc:
                    stopped = exc       # the frames before it were handed out and are judged
                    break
                if batch is None:
                    break
                frames += len(batch)
                if len(batch.ts_ns):
                    newest = max(batch.ts_ns)
                    if latest is None or newest > latest:
                        latest = newest
                writer.write(worker.process(batch))
                writer.tick()
            capture["truncated_records"] += getattr(source, "truncated_records", 0)
            capture["notes"].extend("%s: %s" % (os.path.basename(path), n) for n in getattr(source, "notes", []))
        if stopped is not None:
            capture["unreadable"].append(stopped_part_way(stopped, frames))
    writer.write(worker.flush())
    return capture


def accounted(counters: dict) -> bool:
    """Every frame ended decoded or skipped by one reason."""
    return counters["frames"] == counters["decoded"] + sum(counters["skipped"].values())
