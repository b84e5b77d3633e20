"""The log-writer process: events from every worker in, the compressed event log out.

Owns the one writer of the log directory. It waits on every worker's event channel and on the
supervisor's, writes each batch of events as it arrives (engine/eventlog.py closes a frame at least
every second), and when the supervisor says `finish` (every worker is done) it takes whatever is
still queued, closes the log and reports. Must not judge or reorder events.
"""

from __future__ import annotations

import selectors
import sys
import time

from engine import ipc
from engine.child import ChildProcess
from engine.eventlog import EventLogWriter
from workers.events import Event

TICK_S = 0.2


class WriterSpec:
    def __init__(self, log_dir: str, events, control):
        self.log_dir = log_dir
        self.events = events          # one channel per worker slot
        self.control = control


def _warn(message: str) -> None:
    # One line on stderr, like the supervisor's: "[!]", the local time, who says it.
    sys.stderr.write("[!] %s log writer: %s\n" % (time.strftime("%Y-%m-%d %H:%M:%S"), message))
    sys.stderr.flush()


def run_writer(spec: WriterSpec) -> None:
    ChildProcess("mte-writer")
    try:
        writer = EventLogWriter(spec.log_dir, warn=_warn)
    except OSError as exc:     # the log directory refused (unsafe) or unusable: said, and fatal
        _warn(str(exc))
        sys.exit(1)
    selector = selectors.DefaultSelector()
    for sock in spec.events:
        selector.register(sock, selectors.EVENT_READ, "events")
    selector.register(spec.control, selectors.EVENT_READ, "control")
    records = 0
    finishing = False
    open_channels = set(spec.events)

    def take(sock) -> None:
        nonlocal records
        for message in ipc.receive_ready(sock):
            if message is None:  # the other end is gone for good
                selector.unregister(sock)
                open_channels.discard(sock)
                return
            if message[0] == "events":
                writer.write(Event.from_record(r) for r in message[2])
                records += len(message[2])

    code = 0
    try:
        while not finishing:
            for key, _ in selector.select(TICK_S):
                if key.data == "events":
                    take(key.fileobj)
                    continue
                for message in ipc.receive_ready(spec.control):
                    if message is None or message[0] == "finish":
                        finishing = True
            writer.tick()
        for sock in list(open_channels):  # every worker has exited: what they sent is queued
            take(sock)
        writer.close()
    except OSError as exc:
        _warn(str(exc))
        code = 1
    stats = {"records": records, "frames": writer.frames_written, "bytes": writer.bytes_written,
             "repaired": writer.repaired, "moved_aside": writer.moved_aside,
             "files_reopened": writer.files_reopened, "dirs_recreated": writer.dirs_recreated,
             "finished_s": time.time()}
    try:
        ipc.send(spec.control, ["done", stats])
    except OSError:
        pass
    sys.exit(code)
