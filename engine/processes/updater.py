"""Trail updates while the sensor runs: when one runs, the child process that runs it, and the
custom trails directory watched for edits.

Owns, for the supervisor (engine/processes/supervisor.py):

- the schedule: an update every `[all] update_period_s` plus up to JITTER_FRACTION of it (sensors
  started together do not all ask the feeds at the same second), one at once on request
  (SIGUSR1), and an OFFLINE one (no fetching: the feeds' last good copies, static and custom
  trails) when the custom trails directory changed. The directory is looked at every
  CUSTOM_CHECK_S (names, sizes, mtimes: a few stat calls), and a change must hold still for
  CUSTOM_SETTLE_S before it is acted on, so that a file an editor is still writing is not built;
- the child: a process forked from the supervisor, as the workers are, that closes what belongs
  to the others, becomes the unprivileged account the workers run as (no capability, in a session
  of its own, killed by the kernel if the supervisor dies) and runs the command line's
  `trails update` in it (the command line hands the supervisor its entry point: engine/ does not
  import cli/). The fetch, merge and build allocate in that process, which exits: the
  supervisor's memory is never a second copy of the trails (the fork shares its pages, copied
  only where the child writes). Forked rather than a fresh interpreter: an interpreter the
  account may not execute (a Python under root's home) cannot break updates, and nothing is read
  from disk to start one. Its output is relayed line by line. One update at a time; one asked
  for while another runs is run after it. A child that runs past `[all] update_timeout_s` is
  killed and reported; stopping the sensor kills a running one;
- the outcome: exit status 0 means an artifact was published or the current one kept unchanged
  (the supervisor then runs its reload path); anything else is a failure, reported with the
  child's last complaint, and the current trails stay.

Must not: fetch, build or load trails itself (the child and the supervisor's reload do), or talk
to the workers.
"""

from __future__ import annotations

import errno
import importlib
import multiprocessing
import os
import random
import re
import signal
import sys
import time
from dataclasses import dataclass
from typing import Callable

from engine.processes import privileges
from engine.processes.child import ChildProcess

JITTER_FRACTION = 0.05
CUSTOM_CHECK_S = 15.0        # how often the custom trails directory is looked at
CUSTOM_SETTLE_S = 5.0        # a change must look the same this long before it is built
KILL_GRACE_S = 1.0           # SIGTERM to SIGKILL when a child is stopped
MAX_RELAYED_LINES = 200      # of one update's output; the rest is counted, not printed
MAX_LINE_CHARS = 1000
OUTPUT_READ_BYTES = 65536
MAX_READS_PER_TICK = 16      # a child that writes without pause cannot hold the loop

SCHEDULED = "scheduled"
REQUESTED = "requested"
CUSTOM = "custom trails changed"

_PROCESS_LINE = re.compile(r"^\[([i!])\] \d{4}-\d\d-\d\d \d\d:\d\d:\d\d (.*)$")


@dataclass(frozen=True)
class UpdateSpec:
    """What the supervisor needs to run updates (the command line builds it from the config)."""

    run: Callable                       # the command line's entry point: run(argv) -> exit status
    args: tuple                         # its argv for one online update ("trails", "update", ...)
    offline_args: tuple = ("--offline",)  # appended for an offline update
    preload: tuple = ()                 # modules the update imports, imported before the child drops
                                        # its privileges (the account may not read the interpreter's
                                        # library: a Python under root's home)
    period_s: int = 0                   # between scheduled updates; 0: none (update_period_s = "off")
    timeout_s: float = 3600.0           # a child running longer is killed
    custom_dir: str = ""                # watched for edits; "" for none
    account: object = None              # privileges.Account the child becomes (None: the supervisor's own)
    jitter_fraction: float = JITTER_FRACTION
    custom_check_s: float = CUSTOM_CHECK_S
    custom_settle_s: float = CUSTOM_SETTLE_S


@dataclass(frozen=True)
class Outcome:
    """How one update ended."""

    ok: bool
    trigger: str        # SCHEDULED, REQUESTED or CUSTOM
    offline: bool
    duration_s: float
    why: str            # for a failure: the cause (exit status and the child's last complaint)
    rss_before_bytes: int = 0   # the supervisor's resident memory when the child started


def rss_bytes(pid: int | str = "self") -> int:
    """Resident memory of a process (VmRSS), 0 when it cannot be read."""
    try:
        with open("/proc/%s/status" % pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def directory_state(path: str) -> tuple | None:
    """What a change of the custom trails directory is judged by: every *.txt entry's name, size,
    mtime and inode (an editor that writes a new file and renames it over the old one changes the
    inode even within one mtime tick). None when the directory cannot be listed."""
    try:
        entries = []
        with os.scandir(path) as it:
            for entry in it:
                if not entry.name.endswith(".txt"):
                    continue
                try:
                    st = entry.stat()
                except OSError:
                    continue  # removed between the listing and the stat: the next look sees it
                entries.append((entry.name, st.st_size, st.st_mtime_ns, st.st_ino))
        return tuple(sorted(entries))
    except OSError:
        return None


class Updater:
    """Decides when an update runs, runs it in a child process, and says how it ended. The
    supervisor calls tick() from its loop (never blocking) and acts on the Outcome it returns.
    `close`, given by the supervisor, names what of its own a new child must close (channels,
    pipes, the log directory's lock)."""

    def __init__(self, spec: UpdateSpec, notice, warn, close: Callable = list, now: float | None = None,
                 rng=None):
        self.spec = spec
        self._notice, self._warn = notice, warn
        self._rng = rng or random.Random()
        now = time.monotonic() if now is None else now
        self.next_due = self._next(now) if spec.period_s else None
        self.child = None                    # the multiprocessing Process of the update running
        self._running: tuple | None = None   # (trigger, offline, started monotonic)
        self._queued: tuple | None = None    # (trigger, offline) to run once the current one ends
        self._output = b""
        self._relayed = 0
        self._last_complaint = ""
        self._killed_why = ""
        self._term_sent_at: float | None = None
        self._rss_before = 0
        self._read_fd: int | None = None
        self._unstarted: Outcome | None = None
        self._ctx = multiprocessing.get_context("fork")
        self._not_owned = close
        self.stopping = False
        # custom trails directory
        self._custom_seen = directory_state(spec.custom_dir) if spec.custom_dir else None
        self._custom_candidate = None        # a changed state waiting to hold still
        self._next_custom_check = now + spec.custom_check_s
        # what metrics and reports show
        self.successes = 0
        self.failures = 0
        self.last_success_unix = 0.0
        self.last_failure_unix = 0.0
        self.last_failure_why = ""

    def _next(self, now: float) -> float:
        return now + self.spec.period_s * (1.0 + self._rng.uniform(0.0, self.spec.jitter_fraction))

    @property
    def running(self) -> bool:
        return self.child is not None

    # -- what asks for an update ------------------------------------------------------------------
    def request(self, trigger: str = REQUESTED, offline: bool = False, now: float | None = None) -> None:
        """An update as soon as none runs. A request while one runs is queued (an online one wins
        over an offline one: it reads the custom trails too)."""
        if self.stopping:
            return
        if self.child is None:
            self._start(trigger, offline, time.monotonic() if now is None else now)
        elif self._queued is None or (self._queued[1] and not offline):
            self._queued = (trigger, offline)
            self._notice("trail update (%s) queued: an update is running" % trigger)

    def _check_custom(self, now: float) -> None:
        if not self.spec.custom_dir or now < self._next_custom_check:
            return
        state = directory_state(self.spec.custom_dir)
        if state == self._custom_seen:
            self._custom_candidate = None
            self._next_custom_check = now + self.spec.custom_check_s
        elif state != self._custom_candidate:
            # Something changed (or is still changing): look again once it may have settled.
            self._custom_candidate = state
            self._next_custom_check = now + self.spec.custom_settle_s
        else:
            # Unchanged for custom_settle_s: the edit is complete.
            self._custom_seen, self._custom_candidate = state, None
            self._next_custom_check = now + self.spec.custom_check_s
            self._notice("custom trails changed in %s: an offline update picks them up" % self.spec.custom_dir)
            self.request(CUSTOM, offline=True, now=now)

    # -- the child --------------------------------------------------------------------------------
    def _start(self, trigger: str, offline: bool, now: float) -> None:
        argv = list(self.spec.args) + (list(self.spec.offline_args) if offline else [])
        account = self.spec.account
        read_fd, write_fd = os.pipe()
        try:
            proc = self._ctx.Process(target=_run_child, name="mte-update", args=(
                self.spec.run, argv, account, write_fd, [read_fd] + list(self._not_owned()), os.getpid(),
                self.spec.preload))
            for stream in (sys.stdout, sys.stderr):
                stream.flush()   # what the supervisor buffered must not be written twice
            proc.start()
        except OSError as exc:
            os.close(read_fd)
            # reported by the next tick(), as any other end of an update
            self._unstarted = self._failed(trigger, offline, 0.0, "cannot start its process: %s"
                                           % (exc.strerror or exc))
            self._reschedule(trigger, now)
            return
        finally:
            os.close(write_fd)
        os.set_blocking(read_fd, False)
        self.child, self._read_fd = proc, read_fd
        self._running = (trigger, offline, now)
        self._rss_before = rss_bytes()
        self._output, self._relayed, self._last_complaint, self._killed_why = b"", 0, "", ""
        self._term_sent_at = None
        self._notice("trail update (%s%s) started: pid %d%s" % (
            trigger, ", offline" if offline else "", proc.pid,
            " as %s" % account.name if account is not None else ""))

    def _relay(self, final: bool = False) -> None:
        """The child's output, relayed as the supervisor's own lines (its own level kept, its
        text prefixed), a line at a time; partial lines wait for their end."""
        if self.child is None:
            return
        fd = self._read_fd
        for _ in range(MAX_READS_PER_TICK):
            try:
                chunk = os.read(fd, OUTPUT_READ_BYTES)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno == errno.EINTR:
                    continue
                break
            if not chunk:
                final = True
                break
            self._output += chunk
        *lines, self._output = self._output.split(b"\n")
        if len(self._output) > MAX_LINE_CHARS * 4:
            lines.append(self._output)   # no line end in sight: what came so far, as a line
            self._output = b""
        if final and self._output:
            lines.append(self._output)
            self._output = b""
        for raw in lines:
            text = raw.decode("utf-8", "replace").rstrip("\r")
            text = "".join(c if c.isprintable() else "?" for c in text)[:MAX_LINE_CHARS]
            if not text.strip():
                continue
            m = _PROCESS_LINE.match(text)
            level, body = (m.group(1), m.group(2)) if m else ("i", text)
            if level == "!" or body.startswith(("maltrail-engine: ", "update FAILED")):
                self._last_complaint = body
            self._relayed += 1
            if self._relayed <= MAX_RELAYED_LINES:
                (self._warn if level == "!" else self._notice)("trail update: %s" % body)

    def tick(self, now: float | None = None) -> Outcome | None:
        """Advances: relays output, reaps a child that ended, kills one past its time, starts one
        that is due. Returns the Outcome of an update that ended, else None. Never blocks."""
        now = time.monotonic() if now is None else now
        outcome, self._unstarted = self._unstarted, None
        if self.child is not None:
            self._relay()
            if self.child.exitcode is not None:
                outcome = self._reap(now)
            elif self._term_sent_at is not None:
                if now - self._term_sent_at >= KILL_GRACE_S:
                    self._kill(signal.SIGKILL)
            elif now - self._running[2] > self.spec.timeout_s:
                self._killed_why = "still running after %d s ([all] update_timeout_s): killed" % self.spec.timeout_s
                self._kill(signal.SIGTERM)
                self._term_sent_at = now
        if self.stopping:
            return outcome
        if self.spec.period_s:
            if self.child is None and now >= self.next_due:
                self._start(SCHEDULED, False, now)
        self._check_custom(now)
        if self.child is None and self._queued is not None:
            trigger, offline = self._queued
            self._queued = None
            self._start(trigger, offline, now)
        return outcome

    def _reap(self, now: float) -> Outcome:
        self._relay(final=True)
        child, (trigger, offline, started) = self.child, self._running
        child.join()
        code = child.exitcode
        os.close(self._read_fd)
        self.child, self._running, self._read_fd = None, None, None
        duration_s = now - started
        self._reschedule(trigger, now)
        if code == 0 and not self._killed_why:
            self.successes += 1
            self.last_success_unix = time.time()
            if self._relayed > MAX_RELAYED_LINES:
                self._notice("trail update: %d more line(s) not shown" % (self._relayed - MAX_RELAYED_LINES))
            return Outcome(True, trigger, offline, duration_s, "", self._rss_before)
        if self._killed_why:
            why = self._killed_why
        elif code < 0:
            why = "killed by signal %d" % -code
        else:
            why = "exit status %d" % code
        if self._last_complaint:
            why += ": %s" % self._last_complaint
        return self._failed(trigger, offline, duration_s, why)

    def _failed(self, trigger: str, offline: bool, duration_s: float, why: str) -> Outcome:
        self.failures += 1
        self.last_failure_unix = time.time()
        self.last_failure_why = why
        return Outcome(False, trigger, offline, duration_s, why, self._rss_before)

    def _reschedule(self, trigger: str, now: float) -> None:
        """The next scheduled update counts from the end of a scheduled or requested one (an
        online update just ran); an offline one for custom trails leaves the schedule alone."""
        if self.spec.period_s and trigger != CUSTOM:
            self.next_due = self._next(now)

    def _kill(self, signum: int) -> None:
        """Signals the child's whole session (what it may have started goes too)."""
        try:
            os.killpg(self.child.pid, signum)
        except OSError:
            # not yet the leader of its own session (just forked): the process alone
            try:
                os.kill(self.child.pid, signum)
            except OSError:
                pass

    # -- stopping -----------------------------------------------------------------------------------
    def stop(self) -> bool:
        """The sensor stops: no new update; a running one is sent SIGTERM now, SIGKILL after
        KILL_GRACE_S (tick() does that). True when one was running."""
        self.stopping = True
        self._queued = None
        if self.child is None or self._term_sent_at is not None:
            return False
        self._killed_why = "stopped with the sensor"
        self._kill(signal.SIGTERM)
        self._term_sent_at = time.monotonic()
        return True

    def close(self) -> None:
        """At the end of the run: nothing of the update outlives the supervisor."""
        if self.child is None:
            return
        if self.child.exitcode is None:
            self._kill(signal.SIGKILL)
        self.child.join(5.0)
        self._relay(final=True)
        os.close(self._read_fd)
        self.child, self._read_fd = None, None


def _run_child(run: Callable, argv: list, account, write_fd: int, close: list, parent_pid: int,
               preload: tuple = ()) -> None:
    """The update's process: a session of its own (the supervisor signals the whole of it), the
    supervisor's descriptors closed, its output into the pipe the supervisor reads, the
    workers' account with no capability, then the command line's update."""
    os.setsid()
    child = ChildProcess("mte-update", parent_pid=parent_pid, close=close)
    # ChildProcess leaves stopping to the supervisor; this process has nothing to flush, and the
    # supervisor's SIGTERM must end it at once (its publish is atomic).
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    os.dup2(write_fd, 1)
    os.dup2(write_fd, 2)
    os.close(write_fd)
    # Whatever sys.stdout and sys.stderr were in the supervisor (a terminal's, a test harness's
    # capture), the update writes into the pipe.
    sys.stdout = open(1, "w", buffering=1, encoding="utf-8", errors="replace", closefd=False)
    sys.stderr = open(2, "w", buffering=1, encoding="utf-8", errors="replace", closefd=False)
    try:
        for name in preload:
            importlib.import_module(name)
        child.drop_privileges(account)
        privileges.set_parent_death_signal(signal.SIGKILL)
    except privileges.PrivilegeError as exc:
        sys.stderr.write("maltrail-engine: cannot drop privileges: %s\n" % exc)
        sys.exit(1)
    if child.orphaned():
        sys.exit(1)
    sys.exit(run(argv))
