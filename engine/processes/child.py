"""What every engine child process does first, and how it notices it has been orphaned.

Owns the child side of the process contract: signals (INT, TERM, HUP, USR1) belong to the
supervisor (a Ctrl-C or a systemd SIGTERM reaches the whole process group, and children that
died on it would lose what they hold; the supervisor stops them in order instead), closing the inherited descriptors that
belong to other processes (a child that kept the supervisor's end of a channel would never see
that channel close, and would outlive a killed supervisor), CPU pinning, dropping privileges
(engine/processes/privileges.py) once the child holds what it needed them for, and the parent-death check
a child runs in its loop.

Must not know what the child does.
"""

from __future__ import annotations

import ctypes
import os
import signal

from engine.processes import privileges

_PR_SET_NAME = 15
_libc = None


def set_process_name(name: str) -> None:
    """The name ps/top show (Linux comm, 15 bytes): mte-capture, mte-worker-0, mte-writer."""
    global _libc
    try:
        if _libc is None:
            # The process's own symbols, libc's among them: ctypes.util.find_library("c") would
            # run `ldconfig -p` in a subprocess, a fork and exec in every child's start-up.
            _libc = ctypes.CDLL(None, use_errno=True)
        _libc.prctl(_PR_SET_NAME, ctypes.c_char_p(name.encode()[:15]), 0, 0, 0)
    except (OSError, AttributeError):
        pass


def own_cpu_s() -> float:
    """This process's own CPU seconds (user + system) since it was forked: a child reports it
    itself, as no one outside can read it after the process is gone."""
    times = os.times()
    return times.user + times.system


def close_inherited(objects) -> None:
    """Close what the child inherited but does not own: socket objects (closed through the
    object, so that it is never closed twice) or raw descriptors."""
    for obj in objects:
        if obj is None:
            continue
        try:
            if isinstance(obj, int):
                os.close(obj)
            else:
                obj.close()
        except OSError:
            pass


class ChildProcess:
    def __init__(self, name: str, cpu: int | None = None, parent_pid: int | None = None, close=()):
        set_process_name(name)
        # SIGUSR1 (a trail update now) is the supervisor's too: `systemctl kill -s USR1` without
        # --kill-whom=main reaches every process of the unit.
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1):
            signal.signal(signum, signal.SIG_IGN)
        try:
            signal.set_wakeup_fd(-1)  # the supervisor's wake-up pipe is not ours
        except ValueError:
            pass
        # The supervisor's pid as the supervisor knew it before the fork: had it died before this
        # line ran, getppid() would already name the reaper and the death would go unnoticed.
        self.parent = parent_pid if parent_pid is not None else os.getppid()
        close_inherited(close)
        if cpu is not None:
            try:
                os.sched_setaffinity(0, {cpu})
            except OSError:
                pass  # a restricted cpuset: run wherever allowed

    def drop_privileges(self, account, keep=frozenset()) -> None:
        """Become `account` (None: stay) with only the capabilities in `keep`."""
        privileges.drop(account, keep)

    def orphaned(self) -> bool:
        return os.getppid() != self.parent


def pin_plan(workers: int) -> tuple[int | None, list[int | None]]:
    """(capture cpu, [worker cpus]): capture alone on the first allowed CPU, workers spread over
    the others (all on the same one when only two exist); no pinning on a single CPU."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None, [None] * workers
    rest = cpus[1:]
    return cpus[0], [rest[i % len(rest)] for i in range(workers)]


def auto_workers() -> int:
    """`workers = "auto"`: every CPU but the capture process's."""
    return max(1, len(os.sched_getaffinity(0)) - 1)
