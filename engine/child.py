"""What every engine child process does first, and how it notices it has been orphaned.

Owns the child side of the process contract: signals belong to the supervisor (a Ctrl-C or a
systemd SIGTERM reaches the whole process group, and children that died on it would lose what
they hold; the supervisor stops them in order instead), CPU pinning, and the parent-death check a
child runs in its loop. Must not know what the child does.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal

_PR_SET_NAME = 15
_libc = None


def set_process_name(name: str) -> None:
    """The name ps/top show (Linux comm, 15 bytes): mte-capture, mte-worker-0, mte-writer."""
    global _libc
    try:
        if _libc is None:
            _libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        _libc.prctl(_PR_SET_NAME, ctypes.c_char_p(name.encode()[:15]), 0, 0, 0)
    except (OSError, AttributeError):
        pass


class ChildProcess:
    def __init__(self, name: str, cpu: int | None = None):
        set_process_name(name)
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, signal.SIG_IGN)
        try:
            signal.set_wakeup_fd(-1)  # the supervisor's wake-up pipe is not ours
        except ValueError:
            pass
        self.parent = os.getppid()
        if cpu is not None:
            try:
                os.sched_setaffinity(0, {cpu})
            except OSError:
                pass  # a restricted cpuset: run wherever allowed

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
