"""The indexer: the process that fills the store's index from the daily event log, apart from
the intake, and the keeper that starts it and starts it again when it dies.

Owns `IndexLink` (what the server and its indexer share: one anonymous shared page of counters
and two pipes), the keeper process and the indexer's loop. Must not write the event log, receive
events or answer queries: the server process does those (server/process.py), and the index is the
store backend's own (server/store/, which knows how to index a day file from the log: daylog.py
`catch_up`).

Why a process: the daily log, fsync'd, is the durable copy of every event (server/store/daylog.py),
so the intake counts an event as stored once it is there; building the index (the rows, the
roll-ups, SQLite's B-trees or ClickHouse's INSERTs) costs more CPU per event than receiving and
parsing it, and in the server's process it shared one GIL with the receive loop and the parser
(ARCHITECTURE.md, "UDP intake, measured"). Here it runs on the other core and may trail the log;
the lag is counted and published (`store.index_lag_events`, `store.index_lag_s` in
/api/v1/health and /metrics), and whoever needs "indexed up to here" waits for it
(`IndexLink.wait_indexed`: the HTTPS intake, whose exactly-once bookkeeping counts the index).

Sequence numbers: the server adds every batch it made durable in the log to `logged_seq` (events
since the server started); the indexer reads `logged_seq` BEFORE it looks at the day files, brings
the index of every day file that changed up to the file's end (complete pairs only: a pair being
written is left for the next round), and then publishes that value as `indexed_seq`. Everything
counted in `logged_seq` was fsync'd before it was counted, so it was in the files the indexer
then read: `indexed_seq >= n` means the first n events logged are indexed. The index's own
position per day file (daylog.py) keeps it exactly-once whatever the rounds look like, across an
indexer's death too.

Processes: the keeper is forked by the server right after the privilege drop (so both run as the
server's account, with no capabilities) and before any thread or the store exist (a fork of a
single-threaded process; the store's directory lock is not inherited). It waits for the server's
"go" (after the store's start-up repair, which indexes in the server itself, under
index/.indexer.lock), then forks the indexer, and forks it again, counted and logged, whenever it
dies other than by being told to stop. Both die with their parent (PR_SET_PDEATHSIG), so a killed
server leaves no indexer writing behind it; the indexer holds index/.indexer.lock while it runs,
so a new server's repair waits for an old indexer to be gone. SIGTERM stops either cleanly (the
indexer finishes the round it is in); SIGINT, which a terminal sends the whole group, is the
server's to act on.
"""

from __future__ import annotations

import collections
import ctypes
import mmap
import os
import select
import signal
import sys
import time

from server.store import StoreError

_PR_SET_PDEATHSIG = 1
_IDLE_WAIT_S = 0.5              # the longest the indexer sleeps without a notice (it re-checks its parent)
_RESTART_DELAY_S = 1.0          # between an indexer's death and the next one
_ERROR_DELAY_S = 1.0            # after a failed round (the backend down, the disk full)
# The indexer's scheduling priority, below the server's: under contention for the CPU, the intake,
# which cannot wait (a datagram is lost once the socket's buffer is full), runs first, and the
# index, which can (the log holds everything), trails and catches up when the burst is over.
# Measured (bench server-udp, 50,000 events/s): at the server's priority the indexer took the
# CPU the intake needed and the intake fell 4 s behind; see ARCHITECTURE.md.
INDEXER_NICE = 10

# The shared page: (offset, type, name). Each field is written by one process only.
_FIELDS = (
    (0, ctypes.c_int64, "logged_seq"),          # server: events made durable in the log
    (8, ctypes.c_int64, "indexed_seq"),         # indexer: the logged_seq it has indexed up to
    (16, ctypes.c_int64, "indexed_events"),     # indexer: events it indexed (the index's rows)
    (24, ctypes.c_int64, "restarts"),           # keeper: indexers started after one died
    (32, ctypes.c_int64, "indexer_pid"),        # keeper: the running indexer (0: none)
    (40, ctypes.c_double, "last_round_unix"),   # indexer: when it last finished a round
    (48, ctypes.c_int64, "failed_rounds"),      # indexer: rounds that raised (retried)
    (56, ctypes.c_int64, "running"),            # indexer: 1 once its first round is done
)


def log(kind: str, text: str) -> None:
    sys.stderr.write("[%s] %s %s\n" % (kind, time.strftime("%Y-%m-%d %H:%M:%S"), text))
    sys.stderr.flush()


class IndexLink:
    """What the server and its indexer share (module docstring). Made by the server before it
    forks the keeper; the server's side is logged/lag/wait_indexed/go/stop."""

    def __init__(self):
        self._page = mmap.mmap(-1, mmap.PAGESIZE)       # anonymous and MAP_SHARED: seen across fork
        self._values = {name: kind.from_buffer(self._page, offset) for offset, kind, name in _FIELDS}
        # The server's notice after each batch (one byte; a full pipe already says "look").
        self.notice_r, self.notice_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        # The server's go to the keeper (one byte), or its end of file: the server gave up.
        self.go_r, self.go_w = os.pipe2(os.O_CLOEXEC)
        self.keeper_pid = 0
        self._pending: collections.deque = collections.deque()      # (seq, monotonic s) not yet indexed

    def __getattr__(self, name):
        values = self.__dict__.get("_values")
        if values is not None and name in values:
            return values[name].value
        raise AttributeError(name)

    def set(self, name: str, value) -> None:
        self._values[name].value = value

    # -- the server's side --------------------------------------------------------------------
    def logged(self, n: int) -> int:
        """n more events are durable in the log: count them, tell the indexer; returns their
        sequence number (wait_indexed(seq) waits for them). Called by one thread at a time (the
        store's lock)."""
        seq = self.logged_seq + n
        self.set("logged_seq", seq)
        self._pending.append((seq, time.monotonic()))
        try:
            os.write(self.notice_w, b"!")
        except BlockingIOError:
            pass        # the pipe is full of notices the indexer has not read: it will look
        return seq

    def lag(self) -> tuple[int, float]:
        """(events logged but not yet indexed, seconds since the oldest of them was logged)."""
        indexed = self.indexed_seq
        pending = self._pending
        try:
            while pending and pending[0][0] <= indexed:
                pending.popleft()
            oldest = pending[0][1] if pending else None
        except IndexError:      # another thread emptied it meanwhile
            oldest = None
        lag_events = max(0, self.logged_seq - indexed)
        return lag_events, (round(time.monotonic() - oldest, 3) if lag_events and oldest is not None else 0.0)

    def status(self) -> dict:
        lag_events, lag_s = self.lag()
        return {"index_lag_events": lag_events, "index_lag_s": lag_s,
                "indexer": {"pid": self.indexer_pid, "running": bool(self.running and self.indexer_pid),
                            "restarts": self.restarts, "events_indexed": self.indexed_events,
                            "failed_rounds": self.failed_rounds, "last_round_unix": self.last_round_unix}}

    def wait_indexed(self, seq: int, timeout_s: float) -> None:
        """Return once the first `seq` events logged are indexed; StoreError after timeout_s."""
        limit = time.monotonic() + timeout_s
        pause = 0.001
        while self.indexed_seq < seq:
            if time.monotonic() >= limit:
                raise StoreError("the index is %d event(s) behind the log after %.0f s (indexer %s): the events "
                                 "are in the log and will be indexed when it catches up"
                                 % (self.logged_seq - self.indexed_seq, timeout_s,
                                    "running" if self.indexer_pid else "not running"))
            time.sleep(pause)
            pause = min(pause * 2, 0.02)

    def go(self) -> None:
        """The store's start-up repair is done: the keeper may start the indexer."""
        os.write(self.go_w, b"g")

    def stop(self, catch_up_s: float = 30.0) -> None:
        """Let the indexer index what the server logged (up to catch_up_s), then stop the keeper
        and the indexer (SIGTERM) and reap them."""
        if not self.keeper_pid:
            return
        try:
            if self.indexer_pid:
                try:
                    self.wait_indexed(self.logged_seq, catch_up_s)
                except StoreError as exc:
                    log("!", "stopping the indexer before it caught up (the next start indexes the rest): %s" % exc)
            os.kill(self.keeper_pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        finally:
            _close(self.go_w)
            os.waitpid(self.keeper_pid, 0)
            self.keeper_pid = 0


def _close(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


def _die_with_parent(parent_pid: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent_pid:      # the parent died before the prctl took effect
        os._exit(1)


def start_keeper(cfg, link: IndexLink, close_in_child=()) -> int:
    """Fork the keeper (module docstring); returns its pid. `close_in_child`: the server's
    sockets, which the keeper must not keep open (a killed server's ports would stay bound)."""
    parent = os.getpid()
    pid = os.fork()
    if pid:
        _close(link.go_r)
        _close(link.notice_r)
        link.keeper_pid = pid
        return pid
    status = 1
    try:
        _die_with_parent(parent)
        for sock in close_in_child:
            sock.close()
        _close(link.go_w)
        _close(link.notice_w)
        status = _keeper(cfg, link)
    except BaseException as exc:        # a child must never return into the server's code
        try:
            log("!", "index keeper: %s" % exc)
        except BaseException:
            pass
    finally:
        os._exit(status)


def _keeper(cfg, link: IndexLink) -> int:
    stopping = []
    child = [0]

    def on_term(*_):
        # Passed on from here: waitpid() is retried after a handler (PEP 475), so the loop
        # below would not look at `stopping` until the indexer exits by itself.
        stopping.append(1)
        if child[0]:
            try:
                os.kill(child[0], signal.SIGTERM)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, on_term)
    try:
        if os.read(link.go_r, 1) != b"g":
            return 0        # the server did not start: nothing to index for it
    except InterruptedError:
        pass
    if stopping:
        return 0
    me = os.getpid()
    while True:
        pid = os.fork()
        if pid == 0:
            status = 1
            try:
                _die_with_parent(me)
                status = _indexer(cfg, link)
            except SystemExit as exc:       # told to stop (its SIGTERM handler)
                status = exc.code if isinstance(exc.code, int) else 0
            except BaseException as exc:
                try:
                    log("!", "indexer: %s" % exc)
                except BaseException:
                    pass
            finally:
                os._exit(status)
        link.set("indexer_pid", pid)
        child[0] = pid
        if stopping:        # told while forking: the handler did not know this pid yet
            os.kill(pid, signal.SIGTERM)
        try:
            _pid, wstatus = os.waitpid(pid, 0)
        except ChildProcessError:
            wstatus = 0
        child[0] = 0
        link.set("indexer_pid", 0)
        link.set("running", 0)
        if stopping:
            return 0
        link.set("restarts", link.restarts + 1)
        how = ("exit status %d" % os.waitstatus_to_exitcode(wstatus) if os.WIFEXITED(wstatus)
               else "signal %d" % os.WTERMSIG(wstatus))
        log("!", "the indexer (pid %d) died (%s); starting it again (restart %d): the index catches up from the log"
            % (pid, how, link.restarts))
        time.sleep(_RESTART_DELAY_S)
        if stopping:
            return 0


def open_index(cfg, warn):
    """The configured backend as an index only: it reads the log, never writes it, and holds no
    directory lock (the server does)."""
    s = cfg.server
    if s.store == "clickhouse":
        from server.store.clickhouse import ClickHouseEventStore
        return ClickHouseEventStore(s.clickhouse_url, s.clickhouse_database, s.clickhouse_user,
                                    s.clickhouse_password, s.clickhouse_timezone, log_dir=s.log_dir, warn=warn,
                                    create=False, repair=False, write_log=False)
    from server.store.sqlite import SqliteStore
    return SqliteStore(s.log_dir, warn=warn, repair=False, write_log=False)


def _stop_now(*_):
    raise SystemExit(0)


def _indexer(cfg, link: IndexLink) -> int:
    from server.store.daylog import catch_up, indexer_lock
    os.nice(INDEXER_NICE)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Told to stop, it stops where it is: a transaction in progress rolls back (SQLite) or an
    # INSERT is whole or absent (ClickHouse), and the index's own position says where the next
    # indexer (or the next start's repair) goes on. The server first gives it time to catch up.
    signal.signal(signal.SIGTERM, _stop_now)
    said: set = set()

    def warn(text: str) -> None:
        log("!", "indexer: %s" % text)

    index = open_index(cfg, warn)
    lock_fd = indexer_lock(index.log)
    try:
        seen: dict[str, tuple[int, int]] = {}
        while True:
            target = link.logged_seq        # read before the files: see the module docstring
            n = 0
            try:
                for name in index.log.day_files():
                    try:
                        st = os.stat(name, dir_fd=index.log.dir_fd, follow_symlinks=False)
                    except FileNotFoundError:
                        continue
                    if seen.get(name) == (st.st_ino, st.st_size):
                        continue
                    n += catch_up(index.log, index, name, warn, announce=False)
                    seen[name] = (st.st_ino, st.st_size)
                    link.set("indexed_events", link.indexed_events + n)
                    n = 0
            except Exception as exc:        # noqa: BLE001 (a backend's error of any kind: retried)
                link.set("failed_rounds", link.failed_rounds + 1)
                if str(exc) not in said:
                    said.add(str(exc))
                    warn("cannot index (retrying every %.0f s): %s" % (_ERROR_DELAY_S, exc))
                seen.clear()
                time.sleep(_ERROR_DELAY_S)
                continue
            said.clear()
            link.set("indexed_seq", max(link.indexed_seq, target))
            link.set("last_round_unix", time.time())
            link.set("running", 1)
            if target != link.logged_seq:
                continue        # more came during the round
            try:
                ready, _, _ = select.select([link.notice_r], [], [], _IDLE_WAIT_S)
                if ready:
                    os.read(link.notice_r, 65536)
            except InterruptedError:
                pass
    finally:
        try:
            index.close()
        finally:
            os.close(lock_fd)
    return 0


__all__ = ["IndexLink", "open_index", "start_keeper"]
