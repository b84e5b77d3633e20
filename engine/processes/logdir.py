"""The event log directory as a running sensor claims it.

Owns the three things a sensor settles about its log directory before any child starts:
- it is safe to write into (events/fsafety.py: nobody else can plant files there), and exists
  (events/log open_log_dir: the same check the log writer makes);
- the log writer's account can write into it: started as root, the sensor makes the directory
  (and the day files already in it) belong to the unprivileged account the log writer runs as,
  as systemd's LogsDirectory= does, and says so when it changes an existing directory;
- one sensor at a time: an exclusive lock on `.maltrail-engine.lock` inside it, taken by the
  supervisor and inherited by every child, so it is held until the last process of a run has
  flushed and exited (even when the supervisor was killed), and a second sensor on the same
  directory is refused with the pid of the first.

Must not read or write events (events/log does).
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat

from events.log import FILE_RE, open_log_dir
from events.log import LogDirError as EventLogDirError

LOCK_NAME = ".maltrail-engine.lock"


class LogDirError(Exception):
    """The log directory cannot be used; the message says why and what to do."""


def _lock(dir_fd: int, path: str) -> int:
    try:
        fd = os.open(LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise LogDirError("%s: %s is a symlink; remove it" % (path, LOCK_NAME)) from None
        raise LogDirError("%s: cannot open the lock file %s: %s" % (path, LOCK_NAME, exc.strerror)) from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise LogDirError("%s: %s is not a regular file; remove it" % (path, LOCK_NAME))
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "?"
        os.close(fd)
        raise LogDirError("another maltrail-engine (pid %s) is writing to %s; stop it first, or give this "
                          "one another log directory (--log-dir)" % (holder, path)) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, b"%d\n" % os.getpid(), 0)
    return fd


def _give_to(dir_fd: int, path: str, account, notice) -> None:
    """Started as root: the directory and its day files belong to the writer's account."""
    st = os.fstat(dir_fd)
    if st.st_uid != account.uid:
        os.fchown(dir_fd, account.uid, account.gid)
        if notice is not None:
            notice("log directory %s now belongs to %s, the account the log writer runs as" % (path, account.name))
    for name in os.listdir(dir_fd):
        if not FILE_RE.match(name):
            continue
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
        except OSError:
            continue  # a symlink or worse: the writer refuses it when it gets there
        try:
            fst = os.fstat(fd)
            if stat.S_ISREG(fst.st_mode) and fst.st_nlink == 1 and fst.st_uid != account.uid:
                os.fchown(fd, account.uid, account.gid)
        finally:
            os.close(fd)


def reopen(path: str, account=None) -> int:
    """The log directory prepared again as claim() does (checked, made if absent, given to the
    account) for a log writer that found it gone; returns a descriptor of it. Raises LogDirError."""
    trusted = (account.uid,) if account is not None else ()
    try:
        dir_fd = open_log_dir(path, trusted)
    except EventLogDirError as exc:
        raise LogDirError(str(exc)) from None
    try:
        if account is not None:
            _give_to(dir_fd, path, account, None)
    except OSError as exc:
        os.close(dir_fd)
        raise LogDirError("cannot give %s to %s: %s" % (path, account.name, exc.strerror or exc)) from None
    return dir_fd


def claim(path: str, account=None, notice=None) -> int:
    """Checks, prepares and locks the log directory; returns the lock's descriptor (keep it
    open for the whole run). Raises LogDirError."""
    trusted = (account.uid,) if account is not None else ()
    try:
        dir_fd = open_log_dir(path, trusted)     # the safety check, the directory made if absent
    except EventLogDirError as exc:
        raise LogDirError(str(exc)) from None
    try:
        if account is not None:
            _give_to(dir_fd, path, account, notice)
        return _lock(dir_fd, path)
    finally:
        os.close(dir_fd)
