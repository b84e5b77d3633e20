"""A worker process: batches from its ring in, events to the log writer out.

Owns the worker's loop around workers.pipeline.Worker: take a batch (marking its frames as in
progress in the ring, so a death is accounted), judge it where it lies in the ring (no copy out),
send its events at once, mark it done (its bytes go back to the capture process then).
Between batches: adopt a reloaded trail generation or new whitelists and ignore rules when the
supervisor says so, close condensing windows on the wall clock in live capture, report statistics.
An empty batch marks a timeline break (a replayed file older than the ones before it): the
condenser is flushed there. When the capture process has closed the ring and the ring is empty:
flush the condenser, report, say goodbye, exit.

Trails come as an open descriptor of the supervisor's verified, sealed copy (engine/trail_artifact.py
TrailCopy): inherited at start, received over the status channel on a reload. The worker never
opens the artifact's path. A reload that fails for any reason (the copy does not map, a section
does not load, memory) is reported and the worker keeps the generation it runs.

A Python exception while judging a batch sends the events already made, reports the crash and
exits non-zero; the supervisor counts the frames of that batch as lost and starts a new worker on
the same ring. Must not know how frames were captured or how events are written.
"""

from __future__ import annotations

import os
import sys
import time
import traceback

from engine.transport import ipc
from engine.processes.child import ChildProcess, own_cpu_s
from engine.processes import privileges
from engine.processes.privileges import PrivilegeError
from engine.transport.ring import Ring, decode_batch
from engine.trail_artifact import load_copy
from matchers import ArtifactError
from workers import quic
from workers.controls import Controls
from workers.pipeline import Worker

IDLE_SLEEP_MIN_S = 0.0002
IDLE_SLEEP_MAX_S = 0.005
LIVE_EXPIRE_S = 0.5
REPORT_S = 0.5  # counters reach the supervisor this often: a death loses at most this much of them
CONTROL_S = 0.05  # while batches flow, control messages (reload, controls) are read this often
# Noise-control groups closed per events message when a worker flushes (a timeline break, the end):
# the records of a flood's 30,000 open groups at once cost more memory than the groups did.
FLUSH_GROUPS = 1024


class WorkerSpec:
    def __init__(self, slot: int, ring, events, status, artifact_fd: int, sensor: str, condense_window_s: int,
                 live: bool, cpu=None, reference: bool = False, heuristics=None, controls: dict | None = None,
                 account=None, parent_pid=None, close=(), severity=None):
        self.slot = slot
        self.severity = severity      # events.record.SeverityRule ([all] severity_regex), None for the default
        self.account = account        # engine.processes.privileges.Account to become, None to stay
        self.parent_pid = parent_pid
        self.close = close            # the supervisor's descriptors this process must not hold
        self.ring = ring
        self.events = events
        self.status = status
        self.artifact_fd = artifact_fd  # the trail copy to start on, inherited from the supervisor
        self.sensor = sensor
        self.condense_window_s = condense_window_s
        self.live = live
        self.cpu = cpu
        self.reference = reference  # judge every frame in Python (benchmarks, differential runs)
        self.heuristics = heuristics  # workers.heuristics.HeuristicSettings, None for the defaults
        self.controls = controls      # plain form (engine/control_files.py), None for none


class _WorkerProcess:
    def __init__(self, spec: WorkerSpec):
        self.spec = spec
        self.child = ChildProcess("mte-worker-%d" % spec.slot, spec.cpu, parent_pid=spec.parent_pid, close=spec.close)
        spec.close = ()
        self.ring = Ring(spec.ring.buf)  # positions as they are now (a restarted worker resumes)
        self.ring.populate()
        try:
            matchers = load_copy(spec.artifact_fd)
        finally:
            os.close(spec.artifact_fd)  # the mapping keeps the copy; the supervisor holds its own descriptor
        self.worker = Worker(matchers, spec.sensor, spec.condense_window_s, fast=not spec.reference,
                             heuristics=spec.heuristics, controls=Controls.from_plain(spec.controls),
                             severity=spec.severity)
        # QUIC Initials are decrypted with cryptography, imported at the first one so that no
        # process maps its library for nothing; an account that could not import it then gets it
        # imported now.
        if spec.account is not None:
            quic.load_aes_unless_readable(lambda path: privileges.readable_by(path, spec.account))
        # The trails are mapped; from here on this process reads attacker-controlled bytes, and
        # holds nothing worth taking: the unprivileged account, no capabilities.
        self.child.drop_privileges(spec.account)
        ipc.send(spec.status, ["ready", spec.slot])
        self.first_batch_unix = 0.0  # wall time the first batch was taken (start-up cost, for benches)

    def flush(self) -> None:
        """Closes every open noise-control group and sends what they emit, a part at a time."""
        for events in self.worker.flush_parts(FLUSH_GROUPS):
            self.send_events(events)

    def send_events(self, events) -> None:
        if events:
            ipc.send_records(self.spec.events, "events", self.spec.slot, [e.to_record() for e in events])

    def report(self, final: bool = False) -> None:
        stats = self.worker.stats()
        stats["generation"] = self.worker.matchers.generation
        stats["first_batch_unix"] = self.first_batch_unix
        stats["cpu_s"] = own_cpu_s()
        ipc.send(self.spec.status, ["stats", self.spec.slot, stats, final])

    def control(self) -> None:
        for message, fds in ipc.receive_ready_fds(self.spec.status):
            try:
                if message is None:
                    continue
                if message[0] == "controls":
                    self.worker.controls = Controls.from_plain(message[1])
                elif message[0] == "reload":
                    self.reload(message[1], fds[0] if fds else -1)
            finally:
                for fd in fds:
                    os.close(fd)

    def reload(self, sequence: int, fd: int) -> None:
        """Switches to the trail copy at `fd`, or keeps the current one and says why. Whatever
        goes wrong (a descriptor that does not map, a section that does not load, memory), the
        worker goes on with the generation it has: a reload must never cost detection."""
        try:
            if fd < 0:
                raise ArtifactError("the reload came without its trail copy")
            matchers = load_copy(fd)
            self.worker.adopt(matchers)  # builds the new tables first, then switches
        except Exception as exc:  # noqa: BLE001 (any failure keeps the running generation)
            why = (str(exc) or type(exc).__name__).splitlines()[0]
            ipc.send(self.spec.status, ["reloaded", self.spec.slot, sequence, self.worker.matchers.generation,
                                        False, why])
            return
        ipc.send(self.spec.status, ["reloaded", self.spec.slot, sequence, matchers.generation, True, ""])

    def run(self) -> int:
        spec, ring, worker = self.spec, self.ring, self.worker
        idle = IDLE_SLEEP_MIN_S
        last_report = last_expire = last_control = time.monotonic()
        while True:
            payload = ring.get_batch()
            if payload is None:
                if ring.finished():
                    break
                self.control()
                now = time.monotonic()
                if spec.live and now - last_expire >= LIVE_EXPIRE_S:
                    for events in worker.expire_parts(int(time.time() * 1_000_000), FLUSH_GROUPS):
                        self.send_events(events)
                    last_expire = now
                if now - last_report >= REPORT_S:
                    self.report()
                    last_report = now
                if self.child.orphaned():
                    # The supervisor is gone: what the ring held is judged, the rest is not
                    # coming (a dead capture process closes nothing).
                    break
                time.sleep(idle)
                idle = min(idle * 2, IDLE_SLEEP_MAX_S)
                continue
            idle = IDLE_SLEEP_MIN_S
            if not self.first_batch_unix:
                self.first_batch_unix = time.time()
            batch = decode_batch(payload)
            frames = len(batch)
            if not frames:
                # a timeline break (engine/processes/capture.py): the groups open so far end here
                self.flush()
                continue
            out: list = []
            try:
                worker.process(batch, out)
            except Exception:
                # What was detected before the failure still goes to the log.
                self.send_events(out)
                ipc.send(spec.status, ["crash", spec.slot, traceback.format_exc(limit=8)])
                return 70
            self.send_events(out)
            ring.finish_batch(frames)
            # Control messages are read on a clock, not after every batch (a recvmsg per 512
            # frames was 8 % of a worker's time): a reload waits at most CONTROL_S more.
            now = time.monotonic()
            if now - last_control >= CONTROL_S:
                self.control()
                last_control = now
            if now - last_report >= REPORT_S:
                self.report()
                last_report = now
        self.flush()
        self.report(final=True)
        ipc.send(spec.events, ["bye", spec.slot])
        return 0


def run_worker(spec: WorkerSpec) -> None:
    try:
        code = _WorkerProcess(spec).run()
    except (ArtifactError, OSError, PrivilegeError) as exc:
        sys.stderr.write("[!] %s worker %d: %s\n" % (time.strftime("%Y-%m-%d %H:%M:%S"), spec.slot, exc))
        code = 71
    sys.exit(code)
