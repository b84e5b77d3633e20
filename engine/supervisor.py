"""The supervisor: starts the engine's processes, watches them, and stops them in order.

Owns the process model: one capture process pinned to its own CPU, worker processes pinned to the
others, one log-writer process, their shared-memory rings and message channels, and everything
that happens to them while they run:

- Signals only queue (a wake-up pipe makes the loop notice); the loop does the work.
- SIGTERM/SIGINT: the capture process stops reading and closes the rings, the workers drain them
  and flush, the writer takes what they sent and closes the log; all within STOP_BUDGET_S.
- Trails: the workers map a verified, sealed private copy of the artifact (engine/trails.py
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
- Statistics every `stats_interval_s` and at exit.

Must not judge packets or write the log itself.
"""

from __future__ import annotations

import multiprocessing
import os
import resource
import selectors
import signal
import sys
import time
from multiprocessing import shared_memory

from engine import ipc
from engine.capture import CaptureSpec, run_capture
from engine.child import pin_plan
from engine.logwriter import WriterSpec, run_writer
from engine.ring import Ring, ring_bytes
from engine.stats import empty_counters, merge_counters, stats_line, summary_lines
from engine.trails import TrailCopy, file_identity
from engine.workerproc import WorkerSpec, run_worker
from matchers import ArtifactError

STOP_BUDGET_S = 4.5
MAX_WORKER_DEATHS = 5
RELOAD_MIN_FRACTION = 0.5
ARTIFACT_CHECK_S = 1.0  # how often the artifact's path is looked at for a change


class EngineError(Exception):
    """The engine could not run to a clean end; the message says why."""


class Engine:
    def __init__(self, *, mode: str, workers: int, artifact_path: str, sensor: str, log_dir: str,
                 condense_window_s: int, ring_bytes_per_worker: int, stats_interval_s: int = 60,
                 paths=(), reader: str = "native", snaplen_bytes=None, interfaces=(), promiscuous=True,
                 buffer_bytes=None, bpf_filter="", reload_source=None, out=sys.stderr, seed: bytes | None = None,
                 reference: bool = False, heuristics=None, controls: dict | None = None, controls_source=None):
        self.mode = mode
        self.reference = reference
        self.heuristics = heuristics          # workers.heuristics.HeuristicSettings (None: the defaults)
        self.controls = controls or {}        # engine/controls.py read_controls() output
        self.controls_source = controls_source  # SIGHUP: re-reads the control files
        self.n = workers
        self.artifact_path = artifact_path
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

    # -- set-up --------------------------------------------------------------------------------
    def _start(self) -> None:
        largest = (self.capture_args["snaplen_bytes"] or 262144) + 64
        if self.capacity // 2 - 16 < largest:
            raise EngineError("[sensor] ring_bytes = %d is too small for frames of up to %d bytes "
                              "(snaplen_bytes): allowed at least %d" % (self.capacity, largest - 64, 2 * largest + 32))
        try:
            self.trails = TrailCopy.take(self.artifact_path)  # what every worker maps; verified whole
        except ArtifactError as exc:
            raise EngineError(str(exc)) from None
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
        self.shms = [shared_memory.SharedMemory(create=True, size=ring_bytes(self.capacity)) for _ in range(self.n)]
        self.rings = [Ring(shm.buf, self.capacity, create=True) for shm in self.shms]
        self.event_channels = [ipc.channel() for _ in range(self.n)]     # (worker end, writer end)
        self.status_channels = [ipc.channel() for _ in range(self.n)]    # (worker end, supervisor end)
        self.capture_channel = ipc.channel()
        self.writer_channel = ipc.channel()
        self.capture_cpu, self.worker_cpus = pin_plan(self.n)
        self.selector = selectors.DefaultSelector()
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_w, False)
        os.set_blocking(self.wake_r, False)

        self.writer = self.ctx.Process(target=run_writer, name="mte-writer", args=(WriterSpec(
            self.log_dir, [w for _, w in self.event_channels], self.writer_channel[0]),))
        self.writer.start()
        self.workers = [None] * self.n
        self._running = False
        for k in range(self.n):
            self._start_worker(k)
        self.capture = self.ctx.Process(target=run_capture, name="mte-capture", args=(CaptureSpec(
            self.mode, self.rings, self.capture_channel[0], self.seed, cpu=self.capture_cpu,
            stats_interval_s=self.stats_interval_s, reference=self.reference, **self.capture_args),))
        self.capture.start()

        self.selector.register(self.wake_r, selectors.EVENT_READ, ("wake", None))
        self.selector.register(self.capture_channel[1], selectors.EVENT_READ, ("capture", None))
        self.selector.register(self.writer_channel[1], selectors.EVENT_READ, ("writer", None))
        for k, (_, sup) in enumerate(self.status_channels):
            self.selector.register(sup, selectors.EVENT_READ, ("status", k))
        self.selector.register(self.capture.sentinel, selectors.EVENT_READ, ("exit", "capture"))
        self.selector.register(self.writer.sentinel, selectors.EVENT_READ, ("exit", "writer"))
        for k, proc in enumerate(self.workers):
            self.selector.register(proc.sentinel, selectors.EVENT_READ, ("exit", k))
        self._running = True

    def _start_worker(self, k: int) -> None:
        trails = self._slot_trails[k]  # at start the first copy; after a death, what that slot last ran
        spec = WorkerSpec(k, self.rings[k], self.event_channels[k][0], self.status_channels[k][0],
                          trails.fd, self.sensor, self.condense_window_s, self.mode == "live",
                          cpu=self.worker_cpus[k], reference=self.reference, heuristics=self.heuristics,
                          controls=self.controls)
        proc = self.ctx.Process(target=run_worker, name="mte-worker-%d" % k, args=(spec,))
        with trails.inherited():  # the worker keeps this copy's descriptor across fork, no other
            proc.start()
        self.workers[k] = proc
        if self._running:  # a restart: the first workers are registered with the others
            self.selector.register(proc.sentinel, selectors.EVENT_READ, ("exit", k))

    def _signal(self, signum, _frame) -> None:
        self._signals.append(signum)

    # -- the run -------------------------------------------------------------------------------
    def run(self) -> int:
        started, cpu0 = time.monotonic(), time.process_time()
        self.started_unix = time.time()
        previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
        self._start()
        old_wakeup = signal.set_wakeup_fd(self.wake_w)
        for s in previous:
            signal.signal(s, self._signal)
        try:
            code = self._loop()
            self._drain_reports()
        finally:
            self._processed = [r.processed for r in self.rings]
            signal.set_wakeup_fd(old_wakeup)
            for s, handler in previous.items():
                signal.signal(s, handler)
            self._cleanup()
        self.elapsed = time.monotonic() - started
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        self.cpu = time.process_time() - cpu0 + usage.ru_utime + usage.ru_stime
        self.counters = merge_counters(self._carried + self._latest)
        return code

    def _loop(self) -> int:
        code = 0
        capture_done = False
        workers_done = [False] * self.n
        finish_sent = False
        writer_done = False
        stopping_since = None
        next_stats = time.monotonic() + self.stats_interval_s if self.stats_interval_s else None

        def begin_stop(reason: str | None = None) -> None:
            nonlocal stopping_since
            if stopping_since is None:
                stopping_since = time.monotonic()
                if reason:
                    self.notes.append(reason)
                try:
                    ipc.send(self.capture_channel[1], ["stop"])
                except OSError:
                    pass

        while not writer_done:
            timeout = 0.5
            if stopping_since is not None:
                left = STOP_BUDGET_S - (time.monotonic() - stopping_since)
                if left <= 0:
                    self._force_stop()
                    self.notes.append("stopped before everything drained (%.1f s budget)" % STOP_BUDGET_S)
                    return 1
                timeout = min(timeout, left)
            for key, _ in self.selector.select(timeout):
                kind, who = key.data
                if kind == "wake":
                    try:
                        os.read(self.wake_r, 512)
                    except BlockingIOError:
                        pass
                elif kind == "capture":
                    for message in ipc.receive_ready(self.capture_channel[1]):
                        if message is None:
                            continue
                        if message[0] == "ready":
                            self.out.write("[i] capturing on %s\n" % ", ".join(message[1]["interfaces"]))
                            self.out.flush()
                        elif message[0] in ("stats", "done"):
                            self.capture_stats = message[1]
                            if message[1].get("error"):
                                code = 1
                                self.notes.append("capture: %s" % message[1]["error"])
                elif kind == "writer":
                    for message in ipc.receive_ready(self.writer_channel[1]):
                        if message is not None and message[0] == "done":
                            self.writer_stats = message[1]
                elif kind == "status":
                    for message in ipc.receive_ready(key.fileobj):
                        if message is None:
                            continue
                        if message[0] == "stats":
                            self._latest[who] = message[2]
                        elif message[0] == "crash":
                            self.out.write("[!] worker %d crashed:\n%s" % (who, message[2]))
                        elif message[0] == "reloaded":
                            self._report_reload(who, tuple(message[2:]))
                elif kind == "exit":
                    self.selector.unregister(key.fileobj)
                    if who == "capture":
                        self.capture.join()
                        capture_done = True
                        if self.capture.exitcode != 0:
                            code = 1
                            if not self.capture_stats.get("error"):
                                self.notes.append("the capture process died (exit %s)" % self.capture.exitcode)
                            for ring in self.rings:  # its rings will get no more: let workers drain them
                                ring.close()
                            begin_stop()
                    elif who == "writer":
                        self.writer.join()
                        writer_done = True
                        if not finish_sent or self.writer.exitcode != 0:
                            self.notes.append("the log writer died (exit %s)" % self.writer.exitcode)
                            begin_stop()
                            self._force_stop()
                            return 1
                    else:
                        proc = self.workers[who]
                        proc.join()
                        if proc.exitcode == 0:
                            workers_done[who] = True
                        else:
                            if not self._worker_died(who, proc.exitcode):
                                code = 1
                                self._force_stop()
                                return 1
                            self._start_worker(who)
            while self._signals:
                signum = self._signals.pop(0)
                if signum == signal.SIGHUP:
                    self._reload()
                else:
                    begin_stop()
            self._check_artifact_on_disk()
            if capture_done and all(workers_done) and not finish_sent:
                ipc.send(self.writer_channel[1], ["finish"])
                finish_sent = True
            if next_stats is not None and time.monotonic() >= next_stats and not writer_done:
                self.out.write("[i] %s\n" % stats_line(merge_counters(self._carried + self._latest),
                                                       self.capture_stats, self.engine_stats()))
                self.out.flush()
                next_stats = time.monotonic() + self.stats_interval_s
        return code

    def _drain_reports(self) -> None:
        """Reports sent just before a process exited may still be queued when the loop ends."""
        for message in ipc.receive_ready(self.capture_channel[1]):
            if message is not None and message[0] in ("stats", "done"):
                self.capture_stats = message[1]
        for message in ipc.receive_ready(self.writer_channel[1]):
            if message is not None and message[0] == "done":
                self.writer_stats = message[1]
        for k, (_, sup) in enumerate(self.status_channels):
            for message in ipc.receive_ready(sup):
                if message is not None and message[0] == "stats":
                    self._latest[k] = message[2]

    def _worker_died(self, k: int, exitcode) -> bool:
        """Counts a death and its lost frames; False when deaths are too many to go on."""
        ring = self.rings[k]
        lost = ring.in_progress
        ring.set_in_progress(0)
        self.deaths[k] += 1
        self.lost_frames[k] += lost
        self._carried[k] = merge_counters([self._carried[k], self._latest[k]])
        self._latest[k] = empty_counters()
        self.out.write("[!] worker %d died (exit %s); %d frame(s) of the batch it held are lost%s\n"
                       % (k, exitcode, lost, "; restarting it" if sum(self.deaths) <= MAX_WORKER_DEATHS else ""))
        self.out.flush()
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
                self.out.write("[!] reload of the whitelists and ignore rules failed, keeping the current ones: %s\n"
                               % exc)
            else:
                self.controls = controls  # workers started later get them too
                for _, sup in self.status_channels:
                    try:
                        ipc.send(sup, ["controls", controls])
                    except OSError:
                        pass
                self.out.write("[i] whitelists and ignore rules reloaded\n")
            self.out.flush()
        if self._offer is not None:
            self._reload_again = True
            self.out.write("[i] workers are still switching to generation %d; the trails are read again once "
                           "they are done\n" % self._offer.generation)
            self.out.flush()
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
            self.out.write("[!] reload failed, keeping generation %d: %s\n" % (self.generation, exc))
            self.out.flush()
            return
        self.artifact_path = path
        self._on_disk = self._on_disk_reported = trails.identity
        if trails.trail_count < RELOAD_MIN_FRACTION * self.trail_count:
            trails.close()
            self.out.write("[!] reload refused: %s holds %d trails, less than half of the %d in use; keeping "
                           "generation %d\n" % (path, trails.trail_count, self.trail_count, self.generation))
            self.out.flush()
            return
        self.out.write("[i] reloading trails: generation %d (%d trails) from %s\n"
                       % (trails.generation, trails.trail_count, path))
        self.out.flush()
        self._copies[trails.sequence] = trails
        self._offer, self._offer_replies = trails, {}
        self._offer_previous = self.trails
        self.trails, self.trail_count, self.generation = trails, trails.trail_count, trails.generation
        for k, (_, sup) in enumerate(self.status_channels):
            try:
                ipc.send_fds(sup, ["reload", trails.sequence], [trails.fd])
            except OSError as exc:  # the worker is gone: its death settles its answer
                self.out.write("[!] reload: worker %d did not get the new trails: %s\n" % (k, exc.strerror or exc))
        self.out.flush()

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
            self.out.write("[!] reload: worker %d keeps generation %d: %s\n" % (slot, kept, why))
        if not failed:
            self.out.write("[i] reload done: every worker runs generation %d\n" % offer.generation)
        elif len(failed) == self.n:
            previous = self._offer_previous
            self.trails, self.trail_count, self.generation = previous, previous.trail_count, previous.generation
            self.out.write("[!] reload failed in every worker; the sensor keeps generation %d\n" % self.generation)
        else:
            self.out.write("[!] reload partly done: worker(s) %s run generation %d, the others keep theirs\n"
                           % (", ".join(str(slot) for slot in range(self.n) if slot not in failed), offer.generation))
        self.out.flush()
        self._offer = None
        in_use = {copy.sequence for copy in self._slot_trails} | {self.trails.sequence}
        for sequence in [held for held in self._copies if held not in in_use]:
            self._copies.pop(sequence).close()
        if self._reload_again:
            self._reload_again = False
            self._reload_trails()

    def _check_artifact_on_disk(self) -> None:
        """Says once per change when the artifact's file is no longer the one last read (rebuilt,
        overwritten in place, truncated, removed). The workers are not affected: they map the
        private copy; a SIGHUP adopts the file through the same checks as any reload."""
        now = time.monotonic()
        if now < self._next_disk_check:
            return
        self._next_disk_check = now + ARTIFACT_CHECK_S
        identity = file_identity(self.artifact_path)
        if identity == self._on_disk or identity == self._on_disk_reported:
            return
        self._on_disk_reported = identity
        level = "[!]"
        if identity is None:
            what = "was removed"
        elif self._on_disk is None or identity[:2] != self._on_disk[:2]:
            level, what = "[i]", "was replaced (a new build?)"  # the normal way to publish one
        else:
            what = "was written to in place (%d bytes, now %d)" % (self._on_disk[2], identity[2])
        self.out.write("%s trail artifact %s %s since it was loaded; detection goes on unchanged with the loaded "
                       "copy of generation %d; send SIGHUP to check and load the file\n"
                       % (level, self.artifact_path, what, self.generation))
        self.out.flush()

    def _force_stop(self) -> None:
        for proc in [self.capture, *self.workers]:
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
        for proc in [getattr(self, "capture", None), getattr(self, "writer", None), *getattr(self, "workers", [])]:
            if proc is not None:
                proc.join(0.5)
                if proc.is_alive():
                    proc.kill()
                    proc.join()
        for ring in getattr(self, "rings", []):
            ring.release()
        for shm in getattr(self, "shms", []):
            shm.close()
            shm.unlink()
        for pair in getattr(self, "event_channels", []) + getattr(self, "status_channels", []) + \
                [getattr(self, "capture_channel", ()), getattr(self, "writer_channel", ())]:
            for sock in pair:
                sock.close()
        for fd in (getattr(self, "wake_r", None), getattr(self, "wake_w", None)):
            if fd is not None:
                os.close(fd)
        if getattr(self, "selector", None) is not None:
            self.selector.close()

    # -- reporting -----------------------------------------------------------------------------
    def engine_stats(self) -> dict:
        return {"processed": [r.processed for r in self.rings] if hasattr(self, "rings") else [],
                "deaths": list(self.deaths), "lost_frames": list(self.lost_frames), "notes": list(self.notes)}

    def report(self) -> dict:
        """Everything the run measured, for `replay --stats-json` (benchmarks, tooling)."""
        return {"workers": self.n, "started_unix": self.started_unix, "elapsed_s": self.elapsed, "cpu_s": self.cpu,
                "counters": self.counters, "capture": self.capture_stats, "writer": self.writer_stats,
                "engine": {"processed": self._processed, "deaths": self.deaths, "lost_frames": self.lost_frames,
                           "notes": self.notes}}

    def summary_lines(self) -> list[str]:
        engine = {"processed": self._processed, "deaths": self.deaths, "lost_frames": self.lost_frames,
                  "notes": self.notes}
        return summary_lines(self.counters, self.elapsed, self.cpu, self.log_dir, self.capture_stats, engine)
