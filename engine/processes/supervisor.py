"""The supervisor: starts the engine's processes, watches them, and stops them in order.

Owns the process model: one capture process pinned to its own CPU, worker processes pinned to the
others, one log-writer process, their shared-memory rings and message channels, and everything
that happens to them while they run:

- Signals only queue (a wake-up pipe makes the loop notice); the loop does the work.
- SIGTERM/SIGINT: the capture process stops reading and closes the rings, the workers drain them
  and flush, the writer takes what they sent and closes the log; all within STOP_BUDGET_S.
- Trails: the workers map a verified, sealed private copy of the artifact (engine/trail_artifact.py
  TrailCopy), never the path: what happens to the file later cannot reach them. The path is
  watched; a change (a rebuild, an overwrite in place, a removal) is reported once and detection
  goes on with the loaded copy until a SIGHUP.
- SIGHUP: re-read the whitelists and ignore rules (a bad file keeps the current ones), and reload
  the trail artifact: a new copy is taken and verified before any worker hears of it; a damaged
  file, or one holding less than half as many trails as the current one, is refused and the
  current generation stays. Workers get the copy's descriptor over their status channel, switch
  between batches and say which generation they run; a worker that cannot load it keeps its own.
- A worker that dies is counted, the frames of the batch it held are counted as lost, and a new
  worker continues on the same ring, on the last generation that worker slot ran; more than
  MAX_WORKER_DEATHS deaths in a run is fatal. A dead capture process or log writer is fatal:
  non-zero exit.
- Trail updates (engine/processes/updater.py): every `[all] update_period_s` (plus jitter), on
  SIGUSR1, and offline when the custom trails directory changed, one at a time in a child process
  of its own (a fresh interpreter as the workers' account), polled from the loop; when it
  published, the reload path below adopts the new artifact; a failure keeps the current trails.
  While an update runs, the artifact's path is not watched: its replacement is expected.
- Statistics every `stats_interval_s` and at exit; with `[sensor] stats_address`, /metrics and
  /healthz from a thread (engine/processes/metrics.py) over a snapshot the loop publishes.

Must not judge packets or write the log itself.
"""

from __future__ import annotations

import gc
import mmap
import multiprocessing
import os
import resource
import selectors
import signal
import sys
import time

from engine.transport import ipc

from engine.processes import logdir

from engine.processes import privileges
from engine.processes.capture import CaptureSpec, run_capture
from engine.processes.child import own_cpu_s, pin_plan
from engine.processes.logwriter import WriterSpec, run_writer
from engine.transport.ring import Ring, min_ring_bytes, ring_bytes
from engine.processes.stats import empty_counters, merge_counters, stats_line, summary_lines
from engine.trail_artifact import TrailCopy, file_identity
from engine.server_suppressions import ServerSuppressions
from engine.processes.worker import WorkerSpec, run_worker
from matchers import ArtifactError

STOP_BUDGET_S = 4.5
MAX_WORKER_DEATHS = 5
RELOAD_MIN_FRACTION = 0.5
ARTIFACT_CHECK_S = 1.0  # how often the artifact's path is looked at for a change


class EngineError(Exception):
    """The engine could not start; the message says why. `code` is the exit status it means:
    2 for a configuration that cannot work, 1 for what the machine refused."""

    def __init__(self, message: str, code: int = 2):
        super().__init__(message)
        self.code = code


def _stamp() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S")


def _duration(seconds: float) -> str:
    """A period in words: 86400 -> "24 h", 900 -> "15 min"."""
    if seconds >= 3600 and seconds % 3600 == 0:
        return "%d h" % (seconds // 3600)
    if seconds >= 60 and seconds % 60 == 0:
        return "%d min" % (seconds // 60)
    return "%g s" % seconds


class Engine:
    def __init__(self, *, mode: str, workers: int, artifact_path: str, sensor: str, log_dir: str,
                 condense_window_s: int, ring_bytes_per_worker: int, stats_interval_s: int = 60,
                 paths=(), reader: str = "native", snaplen_bytes=None, interfaces=(), promiscuous=True,
                 buffer_bytes=None, bpf_filter="", reload_source=None, out=sys.stderr, seed: bytes | None = None,
                 reference: bool = False, heuristics=None, controls: dict | None = None, controls_source=None,
                 account=None, drop_privileges: bool = False, bpf_text: str = "", progress: bool = False,
                 forward_to: list | None = None, version: str = "", stats_address: str = "", severity=None,
                 console: bool = False, spool: list | None = None, update=None, pending_copy=None):
        self.mode = mode
        self.progress = progress and mode == "replay"   # a progress bar on self.out (a terminal)
        self._bar = None
        self.account = account                # engine.processes.privileges.Account the children become (root only)
        self.drop_privileges = drop_privileges  # the supervisor drops what it no longer needs (CLI runs)
        self.bpf_text = bpf_text
        self.forward_to = list(forward_to or [])   # destinations (engine/processes/forwarder.py descriptions)
        self.version = version
        self.severity = severity              # events.record.SeverityRule the workers classify events by
        self.console = console                # the log writer prints every event on stderr too
        self.spool = list(spool or [])        # position names whose destinations must pass a day file
                                              # before the log writer deletes it (disable_local_log_storage)
        self.reference = reference
        self.heuristics = heuristics          # workers.heuristics.HeuristicSettings (None: the defaults)
        self.controls = controls or {}        # engine/control_files.py read_controls() output
        self.controls_source = controls_source  # SIGHUP: re-reads the control files
        self.server_suppressions = ServerSuppressions()  # analysts' (host, trail) pairs, via the forwarder
        self.n = workers
        self.artifact_path = artifact_path
        self.pending_copy = pending_copy      # TrailCopy.copy_on_thread(artifact_path), already under way, or None
        self.reload_source = reload_source or (lambda: artifact_path)
        self.sensor = sensor
        self.log_dir = log_dir
        self.condense_window_s = condense_window_s
        self.capacity = ring_bytes_per_worker - ring_bytes_per_worker % 8
        self.stats_interval_s = stats_interval_s
        self.out = out
        self.capture_args = dict(paths=paths, reader=reader, snaplen_bytes=snaplen_bytes, interfaces=interfaces,
                                 promiscuous=promiscuous, buffer_bytes=buffer_bytes, bpf_filter=bpf_filter)
        self.seed = seed if seed is not None else os.urandom(16)
        self.ctx = multiprocessing.get_context("fork")
        # what the run ends with
        self.capture_stats: dict = {}
        self.writer_stats: dict = {}
        self.deaths = [0] * workers
        self.lost_frames = [0] * workers
        self.notes: list[str] = []
        self.counters = empty_counters()
        self.elapsed = 0.0
        self.cpu = 0.0
        self._carried = [empty_counters() for _ in range(workers)]  # from workers that died
        self._latest = [empty_counters() for _ in range(workers)]
        self._signals: list[int] = []
        self.capture_info: dict = {}
        self.lock_fd = None
        self.rings: list = []
        self.maps: list = []
        self.workers: list = []
        self.capture = self.writer = self.selector = None
        self.event_channels: list = []
        self.status_channels: list = []
        self.capture_channel = self.writer_channel = self.forwarder_channel = ()
        self.forwarder = None
        self.forwarder_stats: dict = {}   # destination name -> its statistics (events/forwarders/base.py)
        self._forwarder_finish_sent = False
        self._forwarder_deaths = 0
        self.wake_r = self.wake_w = None
        self._processed: list[int] = []
        # The Prometheus endpoint (engine/processes/metrics.py): off unless stats_address is set.
        self.stats_address = stats_address
        self._metrics = None
        self._heard = [0.0] * workers   # monotonic time of each slot's last statistics report
        self._capture_heard = 0.0       # ... and of the capture process's last report
        self.update_spec = update       # engine.processes.updater.UpdateSpec (None: no updates; replay)
        self._updater = None

    # -- set-up --------------------------------------------------------------------------------
    def _start(self) -> None:
        largest = self.capture_args["snaplen_bytes"] or 262144
        if self.capacity < min_ring_bytes(largest):
            raise EngineError("[sensor] ring_bytes = %d is too small for frames of up to %d bytes "
                              "(snaplen_bytes): allowed at least %d" % (self.capacity, largest, min_ring_bytes(largest)))
        try:
            # What every worker maps: sealed now, its sections checked below (`_verify_trails`)
            # while the children start, and always before the capture process can feed a worker.
            if self.pending_copy is not None:
                self.trails, self.pending_copy = self.pending_copy.result(), None
            else:
                self.trails = TrailCopy.copy(self.artifact_path)
        except ArtifactError as exc:
            raise EngineError(str(exc), code=1) from None
        self.trail_count, self.generation = self.trails.trail_count, self.trails.generation
        self._copies = {self.trails.sequence: self.trails}  # every copy held, by sequence
        self._slot_trails = [self.trails] * self.n  # the copy each worker slot runs (a restart's)
        self._offer = None           # the copy a reload is switching to, until every worker answered
        self._offer_previous = None  # what the sensor ran before it
        self._offer_replies: dict[int, tuple] = {}
        self._reload_again = False   # a SIGHUP came during a reload: run it when that one is done
        self._on_disk = self.trails.identity  # the artifact file as last read
        self._on_disk_reported = None
        self._next_disk_check = 0.0
        if self.mode == "live":
            self._claim_log_dir()
        # Anonymous shared mappings, inherited by fork: nothing is named in /dev/shm, so nothing
        # outlives the last process of the run, however the run ends.
        self.maps = [mmap.mmap(-1, ring_bytes(self.capacity)) for _ in range(self.n)]
        self.rings = [Ring(memoryview(m), self.capacity, create=True) for m in self.maps]
        self.event_channels = [ipc.channel() for _ in range(self.n)]     # (worker end, writer end)
        self.status_channels = [ipc.channel() for _ in range(self.n)]    # (worker end, supervisor end)
        self.capture_channel = ipc.channel()
        self.writer_channel = ipc.channel()
        self.capture_cpu, self.worker_cpus = pin_plan(self.n)
        self.selector = selectors.DefaultSelector()
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_w, False)
        os.set_blocking(self.wake_r, False)
        self.workers = [None] * self.n
        self._running = False

        self._start_metrics()
        # Every object this process holds now (the modules imported for every child, the
        # configuration) goes to the collector's permanent generation: a child's collections then
        # never walk them, so their pages stay shared with this process instead of each child
        # copying them on its first full collection (ARCHITECTURE.md, "Start-up, measured").
        gc.freeze()
        # The order of starts (ARCHITECTURE.md, "Start-up"). Live: the log directory claimed, then
        # the capture process first, so that a capture that cannot open (interface, filter,
        # privileges) ends the start with its one message before a worker or the writer exists;
        # the copy's sections are checked while it opens, before any worker exists. Replay: the
        # workers first (loading the trails is the longest start), their copy checked meanwhile;
        # then the log directory, the writer and last the capture process, whose first batch a
        # worker takes as soon as it is published. Either way no frame reaches a worker before the
        # copy it runs passed its check, and a damaged copy ends the start before the log
        # directory is touched (replay) or any worker exists (live).
        if self.mode == "live":
            self._start_capture()
            self._verify_trails()
            self._wait_capture_ready()
        else:
            for k in range(self.n):
                self._start_worker(k)
            self._verify_trails()
            self._claim_log_dir()
        if self.forward_to:
            # Before the writer: a destination seen for the first time starts at the end of the
            # log as it was before this run wrote anything.
            self.forwarder_channel = ipc.channel()
            self._start_forwarder()
        self.writer = self.ctx.Process(target=run_writer, name="mte-writer", args=(WriterSpec(
            self.log_dir, [w for _, w in self.event_channels], self.writer_channel[0], account=self.account,
            parent_pid=os.getpid(), close=self._not_owned_by("writer"), console=self.console,
            spool=self.spool),))
        self.writer.start()
        if self.mode == "live":
            for k in range(self.n):
                self._start_worker(k)
        else:
            self._start_capture()
        self._wait_children_ready(with_capture=self.mode != "live")
        if self.drop_privileges:
            # Children are started; what remains is restarting workers (as the account) and
            # signalling them, and reading reloaded trails and control files.
            try:
                privileges.drop(None, privileges.SUPERVISOR_CAPS)
            except privileges.PrivilegeError as exc:
                raise EngineError("supervisor: %s" % exc, code=1) from None

        self.selector.register(self.wake_r, selectors.EVENT_READ, ("wake", None))
        self.selector.register(self.capture_channel[1], selectors.EVENT_READ, ("capture", None))
        self.selector.register(self.writer_channel[1], selectors.EVENT_READ, ("writer", None))
        for k, (_, sup) in enumerate(self.status_channels):
            self.selector.register(sup, selectors.EVENT_READ, ("status", k))
        self.selector.register(self.capture.sentinel, selectors.EVENT_READ, ("exit", "capture"))
        self.selector.register(self.writer.sentinel, selectors.EVENT_READ, ("exit", "writer"))
        if self.forwarder is not None:
            self.selector.register(self.forwarder_channel[1], selectors.EVENT_READ, ("forwarder", None))
            self.selector.register(self.forwarder.sentinel, selectors.EVENT_READ, ("exit", "forwarder"))
        for k, proc in enumerate(self.workers):
            self.selector.register(proc.sentinel, selectors.EVENT_READ, ("exit", k))
        self._running = True
        self._banner()
        if self.progress:
            self._open_bar()

    def _start_capture(self) -> None:
        self.capture = self.ctx.Process(target=run_capture, name="mte-capture", args=(CaptureSpec(
            self.mode, self.rings, self.capture_channel[0], self.seed, cpu=self.capture_cpu,
            stats_interval_s=self._capture_report_s(), reference=self.reference, account=self.account,
            progress_interval_s=0.25 if self.progress else 0.0,
            parent_pid=os.getpid(), close=self._not_owned_by("capture"), **self.capture_args),))
        self.capture.start()

    def _verify_trails(self) -> None:
        """Checks every section of the copy the workers start on. A damaged copy ends the start
        with the damaged section's name; the children already started (replay: workers that may
        have loaded the copy; live: the capture process) are stopped, and no worker has judged a
        frame."""
        try:
            self.trails.verify()
        except ArtifactError as exc:
            self._stop_started()
            raise EngineError(str(exc), code=1) from None

    def _claim_log_dir(self) -> None:
        try:
            self.lock_fd = logdir.claim(self.log_dir, self.account, notice=self._notice)
        except logdir.LogDirError as exc:
            self._stop_started()
            raise EngineError(str(exc), code=1) from None

    def _stop_started(self) -> None:
        """A start that ends before any frame was judged: its children hold nothing to save (a
        worker with no frames, a capture with no worker to feed), so they are killed, not waited
        for."""
        for proc in [self.capture, *self.workers, self.writer, self.forwarder]:
            if proc is not None and proc.is_alive():
                proc.kill()

    def _wait_capture_ready(self) -> None:
        """Until the capture process says it is reading, or why it cannot."""
        sock = self.capture_channel[1]
        waiter = selectors.DefaultSelector()
        waiter.register(sock, selectors.EVENT_READ)
        waiter.register(self.capture.sentinel, selectors.EVENT_READ)
        try:
            ready = False
            while not ready:
                waiter.select(1.0)
                # Every message read here is handled: a short replay's last report may arrive in
                # the same read as its `ready`.
                failed = False
                for message in ipc.receive_ready(sock):
                    if message is None:
                        continue
                    ready = ready or message[0] == "ready"
                    failed = self._on_capture(message) or failed
                if failed and not ready:
                    self.capture.join()
                    raise EngineError(self.capture_stats["error"], code=1)
                if ready:
                    return
                if not self.capture.is_alive():
                    # It may have sent `ready` (and its last report) after the select above.
                    for message in ipc.receive_ready(sock):
                        if message is not None:
                            ready = ready or message[0] == "ready"
                            failed = self._on_capture(message) or failed
                    if ready:
                        return
                    self.capture.join()
                    if failed:
                        raise EngineError(self.capture_stats["error"], code=1)
                    raise EngineError("the capture process died while starting (exit %s)" % self.capture.exitcode,
                                      code=1)
        finally:
            waiter.close()

    def _wait_children_ready(self, with_capture: bool = False) -> None:
        """Until the writer and every worker have set themselves up (trails mapped, privileges
        dropped), and with `with_capture` the capture process too (a replay's, started last): the
        banner then describes a sensor that is really running."""
        waiting = {self.writer_channel[1]: "the log writer"}
        waiting.update((sup, "worker %d" % k) for k, (_, sup) in enumerate(self.status_channels))
        procs = {self.writer_channel[1]: self.writer}
        procs.update((sup, self.workers[k]) for k, (_, sup) in enumerate(self.status_channels))
        capture = None
        if with_capture:
            capture = self.capture_channel[1]
            waiting[capture] = "the capture process"
            procs[capture] = self.capture
        waiter = selectors.DefaultSelector()
        for sock in waiting:
            waiter.register(sock, selectors.EVENT_READ)
        try:
            slot = {sup: k for k, (_, sup) in enumerate(self.status_channels)}

            def read(sock) -> None:
                # Whatever follows `ready` in the same read is handled as the loop would: a
                # short replay's worker may already have sent its final report.
                for message in ipc.receive_ready(sock):
                    if message is None:
                        continue
                    if sock is capture:
                        # its `ready` is handled too (what it reads); a failure before it is fatal
                        if self._on_capture(message) and sock in waiting:
                            self.capture.join()
                            raise EngineError(self.capture_stats["error"], code=1)
                    if message[0] == "ready":
                        if waiting.pop(sock, None) is not None:
                            waiter.unregister(sock)
                    elif sock is capture:
                        pass
                    elif sock in slot:
                        self._on_status(slot[sock], message)
                    else:
                        self._on_writer(message)

            while waiting:
                for key, _ in waiter.select(0.5):
                    read(key.fileobj)
                for sock in list(waiting):
                    proc = procs[sock]
                    if not proc.is_alive():
                        # A short replay's child may have sent `ready` and finished between the
                        # select above and this check: what it left in its channel comes first.
                        read(sock)
                        if sock not in waiting:
                            continue
                        proc.join()
                        raise EngineError("%s failed to start (exit %s)" % (waiting[sock], proc.exitcode), code=1)
        finally:
            waiter.close()

    def _not_owned_by(self, who) -> list:
        """Everything of the supervisor's a child must close: every channel end but its own,
        the wake-up pipe and the selector (see engine/processes/child.py)."""
        mine = set()
        if who == "capture":
            mine.add(id(self.capture_channel[0]))
        elif who == "writer":
            mine.add(id(self.writer_channel[0]))
            mine.update(id(w) for _, w in self.event_channels)
        elif who == "forwarder":
            mine.add(id(self.forwarder_channel[0]))
        elif who == "update":
            pass  # a trail update owns no channel; nor the log directory's lock
        else:
            mine.update((id(self.event_channels[who][0]), id(self.status_channels[who][0])))
        ends = [end for pair in self.event_channels + self.status_channels
                + [self.capture_channel, self.writer_channel, self.forwarder_channel] for end in pair]
        extra = [self.lock_fd] if who == "update" else []
        return [end for end in ends if id(end) not in mine] + [self.wake_r, self.wake_w, self.selector] + extra

    def _start_forwarder(self) -> None:
        from engine.processes.forwarder import ForwarderSpec, run_forwarder
        spec = ForwarderSpec(self.log_dir, self.forward_to, self.forwarder_channel[0], self.version,
                             time.strftime("%Y-%m-%d", time.localtime(self.trails.created_s or time.time())),
                             account=self.account, parent_pid=os.getpid(), close=self._not_owned_by("forwarder"),
                             spool=bool(self.spool))
        self.forwarder = self.ctx.Process(target=run_forwarder, name="mte-forwarder", args=(spec,))
        self.forwarder.start()
        sock = self.forwarder_channel[1]
        waiter = selectors.DefaultSelector()
        waiter.register(sock, selectors.EVENT_READ)
        waiter.register(self.forwarder.sentinel, selectors.EVENT_READ)
        try:
            while True:
                waiter.select(1.0)
                ready = False
                for message in ipc.receive_ready(sock):
                    if message is None:
                        continue
                    if message[0] == "ready":
                        ready = True
                    elif message[0] == "done" and message[1].get("error"):
                        self.forwarder.join()
                        raise EngineError("forwarding: %s" % message[1]["error"], code=1)
                    else:
                        self._on_forwarder(message)
                if ready:
                    break
                if not self.forwarder.is_alive():
                    self.forwarder.join()
                    raise EngineError("the forwarder died while starting (exit %s)" % self.forwarder.exitcode,
                                      code=1)
        finally:
            waiter.close()
        if self._running:  # a restart: registered with the others
            self.selector.register(self.forwarder.sentinel, selectors.EVENT_READ, ("exit", "forwarder"))

    def _forwarder_died(self, exitcode) -> bool:
        """Restarts a forwarder that died (its destinations resume from their saved places);
        False when it died too often to go on (the log still holds every event)."""
        self._forwarder_deaths += 1
        if self._forwarder_deaths > MAX_WORKER_DEATHS:
            self._warn("the forwarder died %d times: forwarding stops; events stay in the log and are sent "
                       "from where each destination stopped at the next start" % self._forwarder_deaths)
            return False
        self._warn("the forwarder died (exit %s); restarting it: each destination resumes where it was "
                   "acknowledged" % exitcode)
        try:
            self._start_forwarder()
        except EngineError as exc:
            self._warn(str(exc))
            return False
        return True

    def _start_worker(self, k: int) -> None:
        trails = self._slot_trails[k]  # at start the first copy; after a death, what that slot last ran
        spec = WorkerSpec(k, self.rings[k], self.event_channels[k][0], self.status_channels[k][0],
                          trails.fd, self.sensor, self.condense_window_s, self.mode == "live",
                          cpu=self.worker_cpus[k], reference=self.reference, heuristics=self.heuristics,
                          controls=self.server_suppressions.merged(self.controls), account=self.account,
                          parent_pid=os.getpid(),
                          close=self._not_owned_by(k), severity=self.severity)
        proc = self.ctx.Process(target=run_worker, name="mte-worker-%d" % k, args=(spec,))
        with trails.inherited():  # the worker keeps this copy's descriptor across fork, no other
            proc.start()
        self.workers[k] = proc
        if self._running:  # a restart: the first workers are registered with the others
            self.selector.register(proc.sentinel, selectors.EVENT_READ, ("exit", k))

    def _notice(self, text: str) -> None:
        self._say("[i] %s %s" % (_stamp(), text))

    def _warn(self, text: str) -> None:
        self._say("[!] %s %s" % (_stamp(), text))

    def _say(self, line: str) -> None:
        if self._bar is not None:
            self._bar.write(line, file=self.out)     # above the bar, which is drawn again below
        else:
            self.out.write(line + "\n")
        self.out.flush()

    def _open_bar(self) -> None:
        from tqdm import tqdm
        sizes = [os.path.getsize(p) for p in self.capture_args["paths"] if os.path.isfile(p)]
        try:
            columns, rows = os.get_terminal_size(self.out.fileno())
        except (OSError, ValueError, AttributeError):
            columns, rows = 0, 0
        # A terminal that reports no size (a bare pty) gets a conventional 80x24: tqdm would
        # otherwise hide the bar as lying outside a screen of zero rows.
        self._bar = tqdm(total=sum(sizes) or None, unit="B", unit_scale=True, unit_divisor=1024, file=self.out,
                         desc="replay", leave=False, ncols=columns or 80, nrows=rows or 24, mininterval=0.25)

    def _progress(self, info: dict) -> None:
        if self._bar is not None:
            self._bar.update(max(0, info.get("bytes", 0) - self._bar.n))

    def _close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def _banner(self) -> None:
        """One line at start: what runs, on what, with which trails, writing where."""
        if self.mode == "live":
            source = "capturing on %s, filter %s" % (", ".join(self.capture_args["interfaces"]),
                                                     self.bpf_text or "none")
        else:
            source = "replaying %d file(s)" % len(self.capture_args["paths"])
        self._notice("maltrail-engine %s: %s; trails %s (generation %d, %d trails); %d worker(s)%s; log %s"
                     % (self.version or "(version unknown)", source, self.artifact_path, self.generation, self.trail_count, self.n,
                        " as %s" % self.account.name if self.account is not None else "", self.log_dir))

    def _signal(self, signum, _frame) -> None:
        self._signals.append(signum)

    # -- the run -------------------------------------------------------------------------------
    def run(self) -> int:
        started, cpu0 = time.monotonic(), time.process_time()
        # RUSAGE_CHILDREN holds every child this process ever waited for, and survives exec: the
        # run's own CPU is the difference across it.
        children0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        self.started_unix = time.time()
        previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1)}
        # SIGUSR1 (an update now) would end the process by default: ignored until the loop can
        # take it, and by every child forked meanwhile (child.py keeps it ignored).
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)
        try:
            self._start()
        except BaseException:
            signal.signal(signal.SIGUSR1, previous[signal.SIGUSR1])
            self._cleanup()
            raise
        old_wakeup = signal.set_wakeup_fd(self.wake_w)
        for s in previous:
            signal.signal(s, self._signal)
        self._start_updater()  # after the handlers: its line says SIGUSR1 is taken
        try:
            code = self._loop()
            self._drain_reports()
        finally:
            self._close_bar()
            self._processed = [r.processed for r in self.rings]
            signal.set_wakeup_fd(old_wakeup)
            for s, handler in previous.items():
                signal.signal(s, handler)
            self._cleanup()
        self.elapsed = time.monotonic() - started
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        self.cpu = (time.process_time() - cpu0 + children.ru_utime - children0.ru_utime
                    + children.ru_stime - children0.ru_stime)
        self.counters = merge_counters(self._carried + self._latest)
        return code

    def _loop(self) -> int:
        """gunicorn's arbiter shape: wait for something to happen (a child's message or exit, a
        queued signal, a timer), handle it, then see whether the stop sequence can advance."""
        self._code = 0
        self._capture_done = False
        self._workers_done = [False] * self.n
        self._finish_sent = False
        self._writer_done = False
        self._forwarder_done = self.forwarder is None
        self._stopping_since = None
        next_stats = time.monotonic() + self.stats_interval_s if self.stats_interval_s else None
        while not (self._writer_done and self._forwarder_done):
            timeout = 0.5
            if self._stopping_since is not None:
                left = STOP_BUDGET_S - (time.monotonic() - self._stopping_since)
                if left <= 0:
                    self._force_stop()
                    self.notes.append("stopped before everything drained (%.1f s budget)" % STOP_BUDGET_S)
                    return 1
                timeout = min(timeout, left)
            for key, _ in self.selector.select(timeout):
                if not self._handle(*key.data, key.fileobj):
                    self._force_stop()
                    return 1
            while self._signals:
                signum = self._signals.pop(0)
                if signum == signal.SIGHUP:
                    self._reload()
                elif signum == signal.SIGUSR1:
                    self._update_requested()
                else:
                    self._begin_stop()
            self._tick_updater()
            self._expire_suppressions()
            self._check_artifact_on_disk()
            self._advance_stop()
            if self._metrics is not None and self._metrics.due():
                self._metrics.publish(self._metrics_view())
            if next_stats is not None and time.monotonic() >= next_stats and not self._writer_done:
                self._notice(stats_line(merge_counters(self._carried + self._latest), self.capture_stats,
                                        self.engine_stats()))
                next_stats = time.monotonic() + self.stats_interval_s
        return self._code

    def _handle(self, kind: str, who, fileobj) -> bool:
        """One ready channel or exited child; False when the run cannot go on."""
        if kind == "wake":
            try:
                os.read(self.wake_r, 512)
            except BlockingIOError:
                pass
        elif kind == "capture":
            for message in ipc.receive_ready(self.capture_channel[1]):
                if message is not None and self._on_capture(message):
                    self._code = 1
        elif kind == "writer":
            for message in ipc.receive_ready(self.writer_channel[1]):
                if message is not None:
                    self._on_writer(message)
        elif kind == "forwarder":
            for message in ipc.receive_ready(self.forwarder_channel[1]):
                if message is not None:
                    self._on_forwarder(message)
        elif kind == "status":
            for message in ipc.receive_ready(fileobj):
                if message is not None:
                    self._on_status(who, message)
        elif kind == "exit":
            self.selector.unregister(fileobj)
            return self._on_exit(who)
        return True

    def _on_exit(self, who) -> bool:
        if who == "capture":
            self.capture.join()
            self._capture_done = True
            if self.capture.exitcode != 0:
                self._code = 1
                if not self.capture_stats.get("error"):
                    self.notes.append("the capture process died (exit %s)" % self.capture.exitcode)
                for ring in self.rings:  # its rings will get no more: let workers drain them
                    ring.close()
                self._begin_stop()
        elif who == "writer":
            self.writer.join()
            self._writer_done = True
            if not self._finish_sent or self.writer.exitcode != 0:
                self.notes.append("the log writer died (exit %s)" % self.writer.exitcode)
                self._begin_stop()
                return False
        elif who == "forwarder":
            self.forwarder.join()
            if self._writer_done:
                self._forwarder_done = True
            elif not self._forwarder_died(self.forwarder.exitcode):
                self._forwarder_done = True     # given up on: the log still holds every event
        else:
            proc = self.workers[who]
            proc.join()
            if proc.exitcode == 0:
                self._workers_done[who] = True
            else:
                if not self._worker_died(who, proc.exitcode):
                    self._code = 1
                    return False
                self._start_worker(who)
        return True

    def _begin_stop(self, reason: str | None = None) -> None:
        if self._stopping_since is None:
            self._stopping_since = time.monotonic()
            if reason:
                self.notes.append(reason)
            try:
                ipc.send(self.capture_channel[1], ["stop"])
            except OSError:
                pass
            if self._updater is not None and self._updater.stop():
                self._notice("stopping: the running trail update is killed; the trails in use stay")

    def _advance_stop(self) -> None:
        """The stop sequence: capture done and every worker done -> the writer finishes; the
        writer done -> the forwarder sends what the log holds and finishes."""
        if self._capture_done and all(self._workers_done) and not self._finish_sent:
            ipc.send(self.writer_channel[1], ["finish"])
            self._finish_sent = True
        if self._writer_done and not self._forwarder_done and not self._forwarder_finish_sent:
            # Stopping on a signal: what is left of the stop budget (the rest waits in the log
            # for the next start); a replay that ended: as long as destinations make progress.
            within_s = None if self._stopping_since is None else max(
                STOP_BUDGET_S - 0.5 - (time.monotonic() - self._stopping_since), 0.0)
            try:
                ipc.send(self.forwarder_channel[1], ["finish", within_s])
            except OSError:
                pass
            self._forwarder_finish_sent = True

    # -- messages from the children -----------------------------------------------------------
    def _on_capture(self, message) -> bool:
        """A capture process report; True when it says the capture failed."""
        self._capture_heard = time.monotonic()
        if message[0] == "ready":
            self.capture_info = message[1]
        elif message[0] == "progress":
            self._progress(message[1])
        elif message[0] in ("stats", "done"):
            self.capture_stats = message[1]
            if message[1].get("error"):
                self.notes.append("capture: %s" % message[1]["error"])
                return True
        return False

    def _on_forwarder(self, message) -> None:
        if message[0] in ("stats", "done") and isinstance(message[1], dict) and "error" not in message[1]:
            self.forwarder_stats = message[1]
        elif message[0] == "suppressions" and len(message) == 2 and isinstance(message[1], list):
            refused = self.server_suppressions.update(message[1], time.monotonic())
            if refused:
                self._warn("%d suppression(s) from the server were malformed and are ignored" % refused)
            self._expire_suppressions()

    def _expire_suppressions(self) -> None:
        """The server's suppressions in force changed (an answer, or an expiry): every worker gets
        the per-host whitelist with them (engine/server_suppressions.py)."""
        if not self.server_suppressions.changed(time.monotonic()):
            return
        self._send_controls(self.server_suppressions.merged(self.controls))
        self._notice("suppressions from the server: %s" % self.server_suppressions.describe())

    def _send_controls(self, controls: dict) -> None:
        for _, sup in self.status_channels:
            try:
                ipc.send(sup, ["controls", controls])
            except OSError:
                pass

    def _on_writer(self, message) -> None:
        if message[0] == "done":
            self.writer_stats = message[1]
        elif message[0] == "need_log_dir":
            self._give_log_dir()

    def _give_log_dir(self) -> None:
        """The log writer found its directory gone and cannot make it again as its account: the
        same preparation as at start (safety check, made if absent, given to the account), and a
        descriptor of it to the writer. A refusal goes back as the reason."""
        try:
            fd = logdir.reopen(self.log_dir, self.account)
        except logdir.LogDirError as exc:
            reply, fds = ["log_dir", False, str(exc)], []
        else:
            reply, fds = ["log_dir", True, ""], [fd]
        try:
            ipc.send_fds(self.writer_channel[1], reply, fds)
        except OSError:
            pass
        finally:
            for fd in fds:
                os.close(fd)

    def _on_status(self, k: int, message) -> None:
        if message[0] == "stats":
            self._latest[k] = message[2]
            self._heard[k] = time.monotonic()
        elif message[0] == "crash":
            self._warn("worker %d crashed:\n%s" % (k, message[2].rstrip("\n")))
        elif message[0] == "reloaded":
            self._report_reload(k, tuple(message[2:]))

    def _drain_reports(self) -> None:
        """Reports sent just before a process exited may still be queued when the loop ends."""
        for message in ipc.receive_ready(self.capture_channel[1]):
            if message is not None:
                self._on_capture(message)
        for message in ipc.receive_ready(self.writer_channel[1]):
            if message is not None:
                self._on_writer(message)
        if self.forwarder is not None:
            for message in ipc.receive_ready(self.forwarder_channel[1]):
                if message is not None:
                    self._on_forwarder(message)
        for k, (_, sup) in enumerate(self.status_channels):
            for message in ipc.receive_ready(sup):
                if message is not None:
                    self._on_status(k, message)

    def _worker_died(self, k: int, exitcode) -> bool:
        """Counts a death and its lost frames; False when deaths are too many to go on."""
        ring = self.rings[k]
        lost = ring.in_progress
        ring.set_in_progress(0)
        self.deaths[k] += 1
        self.lost_frames[k] += lost
        self._carried[k] = merge_counters([self._carried[k], self._latest[k]])
        self._latest[k] = empty_counters()
        what = ("at most %d frame(s) of the batch it held are lost (events it sent before are in the log)" % lost
                if lost else "it held no batch, no frame is lost")
        self._warn("worker %d died (exit %s); %s%s"
                   % (k, exitcode, what, "; restarting it" if sum(self.deaths) <= MAX_WORKER_DEATHS else ""))
        # Commands the dead worker had not read (a reload's copy among them) must not reach its
        # successor, which starts on the last generation this slot ran, with the current controls;
        # descriptors in them are closed by the kernel.
        ipc.receive_ready(self.status_channels[k][0])
        if self._offer is not None and k not in self._offer_replies:
            self._report_reload(k, (self._offer.sequence, self._slot_trails[k].generation, False,
                                    "it died during the reload"))
        if sum(self.deaths) > MAX_WORKER_DEATHS:
            self.notes.append("workers died %d times: giving up" % sum(self.deaths))
            return False
        return True

    def _reload(self) -> None:
        if self.controls_source is not None:
            try:
                controls = self.controls_source()
            except Exception as exc:  # a bad control file: the running controls stay
                self._warn("reload of the whitelists and ignore rules failed, keeping the current ones: %s" % exc)
            else:
                self.controls = controls  # workers started later get them too
                self._send_controls(self.server_suppressions.merged(controls))
                self._notice("whitelists and ignore rules reloaded")
        if self._offer is not None:
            self._reload_again = True
            self._notice("workers are still switching to generation %d; the trails are read again once "
                         "they are done" % self._offer.generation)
            return
        self._reload_trails()

    def _reload_trails(self) -> None:
        """Takes and verifies a new copy of the configured trails, then offers it to every worker.
        Nothing reaches a worker unless the whole copy checked out and holds at least half the
        trails in use."""
        path = None
        try:
            path = self.reload_source()
            trails = TrailCopy.take(path)
        except Exception as exc:  # whatever went wrong, the current trails stay
            if path is not None:
                self.artifact_path = path
                self._on_disk = self._on_disk_reported = file_identity(path)  # looked at: no notice for it
            self._warn("reload failed, keeping generation %d: %s" % (self.generation, exc))
            return
        self.artifact_path = path
        self._on_disk = self._on_disk_reported = trails.identity
        if trails.trail_count < RELOAD_MIN_FRACTION * self.trail_count:
            trails.close()
            self._warn("reload refused: %s holds %d trails, less than half of the %d in use; keeping "
                       "generation %d" % (path, trails.trail_count, self.trail_count, self.generation))
            return
        self._notice("reloading trails: generation %d (%d trails) from %s"
                     % (trails.generation, trails.trail_count, path))
        self._copies[trails.sequence] = trails
        self._offer, self._offer_replies = trails, {}
        self._offer_previous = self.trails
        self.trails, self.trail_count, self.generation = trails, trails.trail_count, trails.generation
        for k, (_, sup) in enumerate(self.status_channels):
            try:
                ipc.send_fds(sup, ["reload", trails.sequence], [trails.fd])
            except OSError as exc:  # the worker is gone: its death settles its answer
                self._warn("reload: worker %d did not get the new trails: %s" % (k, exc.strerror or exc))

    def _report_reload(self, k: int, reply: tuple) -> None:
        """A worker's answer to the reload on offer: ["reloaded", k, sequence, generation it runs,
        ok, why]. Once every worker answered: say how it went, and let go of copies nobody runs."""
        sequence, generation, ok, why = reply[:4]
        offer = self._offer
        if offer is None or sequence != offer.sequence or k in self._offer_replies:
            return  # an answer from a worker that died after it: its successor runs what its slot ran
        self._offer_replies[k] = (generation, ok, why)
        if ok:
            self._slot_trails[k] = offer
        if len(self._offer_replies) < self.n:
            return
        failed = {slot: r for slot, r in self._offer_replies.items() if not r[1]}
        for slot, (kept, _, why) in sorted(failed.items()):
            self._warn("reload: worker %d keeps generation %d: %s" % (slot, kept, why))
        if not failed:
            self._notice("reload done: every worker runs generation %d" % offer.generation)
            if self.forwarder is not None:
                try:
                    ipc.send(self.forwarder_channel[1], ["trails_date", time.strftime(
                        "%Y-%m-%d", time.localtime(offer.created_s or time.time()))])
                except OSError:
                    pass
        elif len(failed) == self.n:
            previous = self._offer_previous
            self.trails, self.trail_count, self.generation = previous, previous.trail_count, previous.generation
            self._warn("reload failed in every worker; the sensor keeps generation %d" % self.generation)
        else:
            self._warn("reload partly done: worker(s) %s run generation %d, the others keep theirs"
                       % (", ".join(str(slot) for slot in range(self.n) if slot not in failed), offer.generation))
        self._offer = None
        in_use = {copy.sequence for copy in self._slot_trails} | {self.trails.sequence}
        for sequence in [held for held in self._copies if held not in in_use]:
            self._copies.pop(sequence).close()
        if self._reload_again:
            self._reload_again = False
            self._reload_trails()

    # -- trail updates (engine/processes/updater.py) ---------------------------------------------------
    def _start_updater(self) -> None:
        spec = self.update_spec
        if spec is None or self.mode != "live":
            return
        from engine.processes.updater import Updater
        self._updater = Updater(spec, self._notice, self._warn, close=lambda: self._not_owned_by("update"))
        what = []
        if spec.period_s:
            what.append("every %s (plus up to %d %%)" % (_duration(spec.period_s), round(spec.jitter_fraction * 100)))
        else:
            what.append("not on a schedule ([all] update_period_s = \"off\")")
        if spec.custom_dir:
            what.append("offline when %s changes" % spec.custom_dir)
        self._notice("trail updates: %s; SIGUSR1 updates now" % ", ".join(what))

    def _update_requested(self) -> None:
        if self._updater is None:
            self._warn("SIGUSR1: trail updates are not available in this run (%s)"
                       % ("a replay" if self.mode != "live" else "not configured"))
        elif self._stopping_since is None:
            self._updater.request()

    def _tick_updater(self) -> None:
        """Polls the update child (never waits for it); on its end, the reload path or the
        reason it failed. The supervisor's memory is measured across the update: the child's
        build never adds to it."""
        updater = self._updater
        if updater is None:
            return
        outcome = updater.tick()
        if outcome is None:
            return
        from engine.processes.updater import rss_bytes
        memory = "supervisor RSS %.1f MB when it started, %.1f MB now" % (outcome.rss_before_bytes / 1e6,
                                                                          rss_bytes() / 1e6)
        what = "trail update (%s%s)" % (outcome.trigger, ", offline" if outcome.offline else "")
        if not outcome.ok:
            say = self._notice if updater.stopping else self._warn
            say("%s failed after %.1f s, keeping generation %d: %s; %s"
                % (what, outcome.duration_s, self.generation, outcome.why, memory))
            return
        identity = file_identity(self.artifact_path)
        if identity is not None and identity == self._on_disk:
            self._notice("%s done in %.1f s: the artifact is unchanged, generation %d stays; %s"
                         % (what, outcome.duration_s, self.generation, memory))
            return
        self._notice("%s done in %.1f s: loading the new artifact; %s" % (what, outcome.duration_s, memory))
        if updater.stopping or self._stopping_since is not None:
            return
        if self._offer is not None:
            self._reload_again = True   # read once the workers finished switching
            self._on_disk_reported = identity
            return
        self._reload_trails()

    def _check_artifact_on_disk(self) -> None:
        """Says once per change when the artifact's file is no longer the one last read (rebuilt,
        overwritten in place, truncated, removed). The workers are not affected: they map the
        private copy; a SIGHUP adopts the file through the same checks as any reload."""
        now = time.monotonic()
        if now < self._next_disk_check or (self._updater is not None and self._updater.running):
            return  # an update is expected to replace the file; its end says what it did
        self._next_disk_check = now + ARTIFACT_CHECK_S
        identity = file_identity(self.artifact_path)
        if identity == self._on_disk or identity == self._on_disk_reported:
            return
        self._on_disk_reported = identity
        say = self._warn
        if identity is None:
            what = "was removed"
        elif self._on_disk is None or identity[:2] != self._on_disk[:2]:
            say, what = self._notice, "was replaced (a new build?)"  # the normal way to publish one
        else:
            what = "was written to in place (%d bytes, now %d)" % (self._on_disk[2], identity[2])
        say("trail artifact %s %s since it was loaded; detection goes on unchanged with the loaded copy of "
            "generation %d; send SIGHUP to check and load the file" % (self.artifact_path, what, self.generation))

    def _force_stop(self) -> None:
        for proc in [self.capture, self.forwarder, *self.workers]:
            if proc is not None and proc.is_alive():
                proc.kill()
        for ring in self.rings:
            ring.close()
        try:
            ipc.send(self.writer_channel[1], ["finish"])
        except OSError:
            pass
        self.writer.join(1.0)
        if self.writer.is_alive():
            self.writer.kill()

    def _cleanup(self) -> None:
        gc.unfreeze()  # the run is over: what `_start` froze may be collected again (an embedding process)
        if self.pending_copy is not None:  # the start failed before it took the copy
            self.pending_copy.discard()
            self.pending_copy = None
        if self._updater is not None:
            self._updater.close()
        if self._metrics is not None:
            self._metrics.stop()
            self._metrics = None
        for proc in [self.capture, self.writer, self.forwarder, *self.workers]:
            if proc is not None:
                proc.join(0.5)
                if proc.is_alive():
                    proc.kill()
                    proc.join()
        for ring in self.rings:
            ring.release()
            ring.buf.release()
        for m in self.maps:
            try:
                m.close()
            except BufferError:
                pass  # a view is still alive somewhere; the mapping goes with the process
        for pair in self.event_channels + self.status_channels + [self.capture_channel, self.writer_channel,
                                                                  self.forwarder_channel]:
            for sock in pair:
                sock.close()
        for fd in (self.wake_r, self.wake_w, self.lock_fd):
            if fd is not None:
                os.close(fd)
        self.wake_r = self.wake_w = self.lock_fd = None
        if self.selector is not None:
            self.selector.close()

    # -- metrics (engine/processes/metrics.py) -----------------------------------------------------
    def _start_metrics(self) -> None:
        """[sensor] stats_address: bound here, before any child exists and while the supervisor
        still holds its privileges. An address that cannot be bound is reported and the sensor runs
        without the endpoint: metrics must never cost detection (a scraper sees the target down)."""
        if not self.stats_address:
            return
        from engine.processes import metrics  # prometheus_client is loaded only when metrics are on
        try:
            self._metrics = metrics.MetricsServer(self.stats_address, version=self.version or "(version unknown)")
        except metrics.MetricsError as exc:
            self._warn("%s; running without the metrics endpoint" % exc)
            return
        self._metrics.start()
        self._notice("metrics: %s/metrics, health: %s/healthz" % (self._metrics.url, self._metrics.url))

    def _capture_report_s(self) -> float:
        """How often the capture process reports: with the endpoint on, as often as workers do,
        so its counters are fresh and its silence is noticed (metrics.STALL_S)."""
        if self._metrics is None:
            return self.stats_interval_s
        from engine.processes.metrics import CAPTURE_REPORT_S
        return CAPTURE_REPORT_S

    def _metrics_view(self):
        """What the endpoint serves, as an immutable snapshot of this moment (the HTTP thread
        never reads the supervisor's own state)."""
        from engine.processes.metrics import MetricsView, WorkerView
        capture = self.capture_stats
        workers = []
        for k in range(self.n):
            ring, proc = self.rings[k], self.workers[k]
            workers.append(WorkerView(
                k, proc is not None and proc.is_alive(), self.deaths[k], self._heard[k], ring.processed,
                ring.used_bytes(), ring.in_progress, self.lost_frames[k], ring.dropped_frames,
                self._latest[k].get("generation", self._slot_trails[k].generation)))
        kernel = capture.get("kernel")
        # Copied, so that a later report of the forwarder never reaches a published view.
        forwarders = self.forwarder_stats
        return MetricsView(
            taken_monotonic=time.monotonic(), taken_unix=time.time(), started_unix=self.started_unix,
            counters=merge_counters(self._carried + self._latest),
            capture_frames=int(capture.get("frames", 0)), capture_kernel=dict(kernel) if kernel else None,
            capture_headers_only=int(capture.get("headers_only", 0)),
            capture_whole_frames=bool(capture.get("whole_frames")),
            capture_alive=self.capture.is_alive(), capture_exitcode=self.capture.exitcode,
            capture_heard_monotonic=self._capture_heard, mode=self.mode, workers=tuple(workers),
            trail_generation=self.generation, trail_count=self.trail_count,
            trails_built_unix=self.trails.created_s,
            forwarders=tuple((name, dict(stats)) for name, stats in sorted(forwarders.items())),
            updates=None if self._updater is None else (
                self._updater.running, self._updater.successes, self._updater.failures,
                self._updater.last_success_unix, self._updater.last_failure_unix))

    # -- reporting -----------------------------------------------------------------------------
    def engine_stats(self) -> dict:
        return {"processed": [r.processed for r in self.rings],
                "deaths": list(self.deaths), "lost_frames": list(self.lost_frames), "notes": list(self.notes)}

    def report(self) -> dict:
        """Everything the run measured, for `replay --stats-json` (benchmarks, tooling)."""
        return {"workers": self.n, "started_unix": self.started_unix, "elapsed_s": self.elapsed, "cpu_s": self.cpu,
                "counters": self.counters, "capture": self.capture_stats, "writer": self.writer_stats,
                "engine": {"processed": self._processed, "deaths": self.deaths, "lost_frames": self.lost_frames,
                           "notes": self.notes},
                "forwarders": self.forwarder_stats, "cpu_by_process": self.cpu_by_process()}

    def cpu_by_process(self) -> dict:
        """Each process's own CPU seconds, as it last reported them (a child reads its own at its
        final report, so the figure is whole); a worker slot counts its current process only; the
        forwarder is not named (its reports are per destination)."""
        out = {"supervisor": own_cpu_s()}
        for name, stats in (("mte-capture", self.capture_stats), ("mte-writer", self.writer_stats)):
            if isinstance(stats, dict) and isinstance(stats.get("cpu_s"), (int, float)):
                out[name] = float(stats["cpu_s"])
        for k, stats in enumerate(self._latest):
            if isinstance(stats, dict) and isinstance(stats.get("cpu_s"), (int, float)):
                out["mte-worker-%d" % k] = float(stats["cpu_s"])
        return out

    def summary_lines(self) -> list[str]:
        engine = {"processed": self._processed, "deaths": self.deaths, "lost_frames": self.lost_frames,
                  "notes": self.notes}
        lines = summary_lines(self.counters, self.elapsed, self.cpu, self.log_dir, self.capture_stats, engine)
        for name, st in sorted(self.forwarder_stats.items()):
            lines.append("forwarded to %s %s: sent %d, failed deliveries %d, dropped %d%s" % (
                st["kind"], st["destination"], st["sent"], st["failed"], st["dropped"],
                "" if not st.get("lag_s") else ", %.1f s behind" % st["lag_s"]))
        return lines
