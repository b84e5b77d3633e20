"""The log-writer process: events from every worker in, the compressed event log out.

Owns the one writer of the log directory. It opens the directory while it may still reach it,
then runs as the unprivileged account with no capabilities (engine/processes/privileges.py). It waits on
every worker's event channel and on the supervisor's, writes each batch of events as it arrives
(events/log closes a frame at least every second), and when the supervisor says
`finish` (every worker is done) it takes whatever is still queued, closes the log and reports.

When the supervisor dies (killed, so `finish` never comes), the writer does what `finish` would
have done: it keeps taking events until every worker has closed its channel (workers drain their
rings and exit once orphaned), or ORPHAN_DRAIN_S has passed, then closes the log and exits. It
never outlives its run.

Two duties come with being the one process that sees every event first and the only one that
appends to the log: `--console` (events/console.py: each record written is also shown on stderr,
from a thread of its own, so a slow terminal never holds up the log), chosen here rather than as
a forwarding destination because a destination reads the log back from disk, a frame (up to a
second) later, and would need a saved place that means nothing for a screen; and the spool of
`disable_local_log_storage` (events/forwarders/spool.py): every SPOOL_SWEEP_S, between two
frames, the day files every destination has passed are deleted, which is safe only here, where
nothing can append to a file between the check and the unlink. Must not judge or reorder events.
"""

from __future__ import annotations

import os
import select
import selectors
import sys
import time

from engine.transport import ipc

from engine.processes import privileges
from engine.processes.child import ChildProcess, own_cpu_s
from events.console import Console
from events.forwarders import spool
from events.log import EventLogWriter
from events.record import Event

TICK_S = 0.2
ORPHAN_DRAIN_S = 4.5
REOPEN_WAIT_S = 5.0
SPOOL_SWEEP_S = 5.0


class WriterSpec:
    def __init__(self, log_dir: str, events, control, account=None, parent_pid=None, close=(),
                 console: bool = False, spool=()):
        self.log_dir = log_dir
        self.events = events          # one channel per worker slot
        self.control = control
        self.account = account        # engine.processes.privileges.Account to become, None to stay
        self.parent_pid = parent_pid
        self.close = close            # the supervisor's descriptors this process must not hold
        self.console = console        # every event on stderr too (events/console.py)
        self.spool = tuple(spool)     # position names of the destinations (disable_local_log_storage)


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
    console = Console(warn=_warn) if spec.console else None
    spooled: list[str] = []
    next_sweep = time.monotonic() + SPOOL_SWEEP_S

    def take(sock) -> None:
        nonlocal records
        for message in ipc.receive_ready(sock):
            if message is None:  # the other end is gone for good
                selector.unregister(sock)
                open_channels.discard(sock)
                return
            if message[0] == "events":
                events = [Event.from_record(r) for r in message[2]]
                writer.write(events)
                if console is not None:
                    console.show(events)
                records += len(message[2])

    def sweep() -> None:
        # Between two frames: nothing else appends to a day file, so what was passed stays passed.
        try:
            spooled.extend(spool.sweep(writer.dir_fd, spec.spool, release=writer.release))
        except OSError as exc:
            _warn("spool: %s; the day files stay until the next try" % exc)

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
            if spec.spool and time.monotonic() >= next_sweep:
                sweep()
                next_sweep = time.monotonic() + SPOOL_SWEEP_S
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
    if console is not None:
        console.close()
        if console.not_shown:
            _warn("console: %d event(s) were left off the console (stderr did not keep up or was closed); "
                  "the log has every one" % console.not_shown)
    stats = {"records": records, "frames": writer.frames_written, "bytes": writer.bytes_written,
             "repaired": writer.repaired, "moved_aside": writer.moved_aside,
             "files_reopened": writer.files_reopened, "dirs_recreated": writer.dirs_recreated,
             "spooled": spooled, "console_shown": console.shown if console is not None else 0,
             "console_not_shown": console.not_shown if console is not None else 0,
             "finished_s": time.time(), "cpu_s": own_cpu_s()}
    try:
        ipc.send(spec.control, ["done", stats])
    except OSError:
        pass
    sys.exit(code)
