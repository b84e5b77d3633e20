"""The log-writer process: events from every worker in, the compressed event log out.

Owns the one writer of the log directory. It opens the directory while it may still reach it,
then runs as the unprivileged account with no capabilities (engine/processes/privileges.py). It waits on
every worker's event channel and on the supervisor's, writes each batch of events as it arrives
(events/log closes a frame at least every second), and when the supervisor says
`finish` (every worker is done) it takes whatever is still queued, closes the log and reports.

When the supervisor dies (killed, so `finish` never comes), the writer does what `finish` would
have done: it keeps taking events until every worker has closed its channel (workers drain their
rings and exit once orphaned), or ORPHAN_DRAIN_S has passed, then closes the log and exits. It
never outlives its run. Must not judge or reorder events.
"""

from __future__ import annotations

import os
import select
import selectors
import sys
import time

from engine.transport import ipc

from engine.processes import privileges
from engine.processes.child import ChildProcess
from events.log import EventLogWriter
from events.record import Event

TICK_S = 0.2
ORPHAN_DRAIN_S = 4.5
REOPEN_WAIT_S = 5.0


class WriterSpec:
    def __init__(self, log_dir: str, events, control, account=None, parent_pid=None, close=()):
        self.log_dir = log_dir
        self.events = events          # one channel per worker slot
        self.control = control
        self.account = account        # engine.processes.privileges.Account to become, None to stay
        self.parent_pid = parent_pid
        self.close = close            # the supervisor's descriptors this process must not hold


def _warn(text: str) -> None:
    sys.stderr.write("[!] %s log writer: %s\n" % (time.strftime("%Y-%m-%d %H:%M:%S"), text))
    sys.stderr.flush()


class _Control:
    """The supervisor's channel as the writer reads it: `finish` may arrive while the writer waits
    for an answer of the supervisor's, and is kept for the loop."""

    def __init__(self, sock):
        self.sock = sock
        self.finish = False

    def read(self) -> None:
        for message in ipc.receive_ready(self.sock):
            if message is None or message[0] == "finish":
                self.finish = True

    def log_dir_from_supervisor(self) -> int:
        """The log directory is gone and this account cannot make it again (or reach it): the
        supervisor, started as root, re-creates it as at start and hands over a descriptor."""
        from events.log import LogDirError
        try:
            ipc.send(self.sock, ["need_log_dir"])
        except OSError:
            raise LogDirError("the log directory is gone and the supervisor is not there to re-create it") from None
        deadline = time.monotonic() + REOPEN_WAIT_S
        while time.monotonic() < deadline:
            select.select([self.sock], [], [], 0.2)
            for message, fds in ipc.receive_ready_fds(self.sock, max_fds=1):
                if message is None or message[0] == "finish":
                    self.finish = True
                elif message[0] == "log_dir":
                    if message[1] and fds:
                        return fds[0]
                    for fd in fds:
                        os.close(fd)
                    raise LogDirError("the supervisor could not re-create the log directory: %s" % message[2])
        raise LogDirError("the supervisor did not re-create the log directory within %.0f s" % REOPEN_WAIT_S)


def run_writer(spec: WriterSpec) -> None:
    child = ChildProcess("mte-writer", parent_pid=spec.parent_pid, close=spec.close)
    spec.close = ()
    control = _Control(spec.control)
    try:
        # The directory is opened (and checked) while this process may still reach it; the
        # writer works relative to it from then on, as the unprivileged account.
        writer = EventLogWriter(spec.log_dir, warn=_warn,
                                trusted_uids=(spec.account.uid,) if spec.account is not None else (),
                                reopen_dir=control.log_dir_from_supervisor)
        child.drop_privileges(spec.account)
        ipc.send(spec.control, ["ready"])
    except (OSError, privileges.PrivilegeError) as exc:     # refused, unusable, or a drop that failed
        _warn(str(exc))
        sys.exit(1)
    selector = selectors.DefaultSelector()
    for sock in spec.events:
        selector.register(sock, selectors.EVENT_READ, "events")
    selector.register(spec.control, selectors.EVENT_READ, "control")
    records = 0
    finishing = False
    orphaned_at = None
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
                control.read()
            finishing = finishing or control.finish
            writer.tick()
            if orphaned_at is None and child.orphaned():
                orphaned_at = time.monotonic()
                _warn("the supervisor is gone: writing what the workers still send, then exiting")
            if orphaned_at is not None and (not open_channels or time.monotonic() - orphaned_at > ORPHAN_DRAIN_S):
                break
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
