"""Where the sensor may safely write, and how it opens files there.

Owns two rules. The rule for a directory a privileged process writes into (the event log
directory, the trail artifact's directory, a lock file's directory): the directory, and every
directory above it, must not be writable by other users unless the sticky bit is set, and must
belong to root or to an account the sensor runs as. Otherwise another user could plant a symlink
or a hard link at a name the sensor is about to open and make it overwrite a file of their choosing.
And the rule for a file in such a directory: opened relative to the directory's descriptor,
never through a symlink (O_NOFOLLOW), created only exclusively (O_EXCL), never inherited by a child
(O_CLOEXEC); an existing file is used only if it is a regular file with exactly one link, and
anything else at its name is refused (the caller may move it aside, never write through it).

Must not decide what to do with a refused file or directory (the caller says so in its own words)
and must not chmod or chown anything; the only entries it changes are the ones a caller asks it
to create or move aside.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import pwd
import stat
import time


def _owner_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return "uid %d" % uid


def directory_problem(path: str, trusted_uids=()) -> str | None:
    """Why `path` is not a safe directory to write into, or None when it is (or does not exist
    yet: its nearest existing ancestor is checked instead, since that is where it would be made).

    Unsafe: not a directory; it or an ancestor writable by every user without the sticky bit;
    it or an ancestor owned by someone other than root, the caller or `trusted_uids`. When the
    path goes through a symlink, the directories it resolves to are held to the same rule (the
    symlink's target is where the files land).
    """
    path = os.path.abspath(path)
    problem = _chain_problem(path, trusted_uids)
    if problem is None:
        real = os.path.realpath(path)
        if real != path:
            problem = _chain_problem(real, trusted_uids)
    return problem


def _chain_problem(path: str, trusted_uids) -> str | None:
    trusted = {0, os.geteuid(), *trusted_uids}
    try:
        st = os.stat(path)
    except FileNotFoundError:
        st = None
    except OSError as exc:
        return "%s cannot be examined: %s" % (path, exc.strerror or exc)
    if st is not None and not stat.S_ISDIR(st.st_mode):
        return "%s is not a directory" % path
    current = path
    while True:
        try:
            st = os.stat(current)
        except FileNotFoundError:
            st = None
        except OSError as exc:
            return "%s cannot be examined: %s" % (current, exc.strerror or exc)
        if st is not None:
            what = "%s" % current if current == path else "%s (above %s)" % (current, path)
            if st.st_mode & stat.S_IWOTH and not st.st_mode & stat.S_ISVTX:
                return ("%s is writable by every user and has no sticky bit: anyone could plant a "
                        "symlink where the sensor writes; fix with `chmod o-w %s` (or `chmod +t`)"
                        % (what, current))
            if st.st_uid not in trusted:
                return ("%s belongs to %s, who could plant files where the sensor writes; make it "
                        "belong to root or to the sensor's account" % (what, _owner_name(st.st_uid)))
        parent = os.path.dirname(current)
        if parent == current:
            return None
        current = parent


def directory_fd_problem(fd: int, path: str, trusted_uids=()) -> str | None:
    """The rule of directory_problem applied to an open directory itself (not its ancestors):
    what was checked by path is what was opened, even if the path changed in between."""
    st = os.fstat(fd)
    if not stat.S_ISDIR(st.st_mode):
        return "%s is not a directory" % path
    if st.st_mode & stat.S_IWOTH and not st.st_mode & stat.S_ISVTX:
        return ("%s is writable by every user and has no sticky bit: anyone could plant a symlink "
                "where the sensor writes; fix with `chmod o-w %s` (or `chmod +t`)" % (path, path))
    if st.st_uid not in {0, os.geteuid(), *trusted_uids}:
        return ("%s belongs to %s, who could plant files where the sensor writes; make it belong "
                "to root or to the sensor's account" % (path, _owner_name(st.st_uid)))
    return None


class UnsafeFile(OSError):
    """An entry in a safe directory that must not be opened for writing: a symlink, a hard
    link, or not a regular file. `reason` says what it is, in words for an operator."""

    def __init__(self, name: str, reason: str):
        super().__init__(errno.EPERM, "%s %s" % (name, reason))
        self.name = name
        self.reason = reason


def open_dir(path: str) -> int:
    """A descriptor of the directory at path (for the *_in_dir calls below); close it yourself.

    The path itself may go through symlinks (a configured path is the administrator's choice;
    directory_problem has checked where it leads); the entries opened in it never do."""
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a regular file"


def entry_problem(dir_fd: int, name: str) -> str | None:
    """What is wrong with the existing entry `name` in dir_fd for writing, or None when it is a
    regular file with one link (or absent). Words for an operator: 'is a symbolic link to X'."""
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None
    return _stat_problem(dir_fd, name, st)


def _stat_problem(dir_fd: int, name: str, st: os.stat_result) -> str | None:
    if stat.S_ISLNK(st.st_mode):
        try:
            target = os.readlink(name, dir_fd=dir_fd)
        except OSError:
            target = "?"
        return "is a symbolic link (to %s)" % target
    if not stat.S_ISREG(st.st_mode):
        return "is %s" % _kind(st.st_mode)
    if st.st_nlink != 1:
        # Another name for the same file exists, possibly outside this directory: writing here
        # would change that file too.
        return "has %d hard links (the same file has another name, perhaps outside this directory)" % st.st_nlink
    return None


def open_regular_in_dir(dir_fd: int, name: str, flags: int) -> int:
    """Open the existing regular file `name` of dir_fd with `flags` (O_RDONLY, O_RDWR, O_APPEND..).

    Raises FileNotFoundError when there is none, UnsafeFile when the entry is a symlink, a hard
    link or not a regular file. Never follows a symlink, never blocks on a FIFO, never opens a
    device (the entry is examined first, and the opened file is examined again)."""
    st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    problem = _stat_problem(dir_fd, name, st)
    if problem:
        raise UnsafeFile(name, problem)
    try:
        fd = os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY,
                     dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:    # became a symlink since it was examined
            raise UnsafeFile(name, entry_problem(dir_fd, name) or "is a symbolic link") from None
        raise
    try:
        opened = os.fstat(fd)
        # What was opened is what counts: the entry may have been replaced after it was examined.
        problem = _stat_problem(dir_fd, name, opened)
        if problem:
            raise UnsafeFile(name, problem)
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def create_in_dir(dir_fd: int, name: str, flags: int, mode: int) -> int:
    """Create `name` in dir_fd, exclusively (FileExistsError if anything, even a dangling
    symlink, is there), with exactly `mode` whatever the umask."""
    fd = os.open(name, flags | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY,
                 mode, dir_fd=dir_fd)
    try:
        os.fchmod(fd, mode)
    except BaseException:
        os.close(fd)
        raise
    return fd


_RENAME_NOREPLACE = 1
_libc = None


def _rename_noreplace(dir_fd: int, old: str, new: str) -> bool:
    """renameat2(RENAME_NOREPLACE); False where the kernel or filesystem cannot do it."""
    global _libc
    try:
        if _libc is None:
            _libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        renameat2 = _libc.renameat2
    except (OSError, AttributeError):
        return False
    if renameat2(dir_fd, os.fsencode(old), dir_fd, os.fsencode(new), _RENAME_NOREPLACE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), new)


def move_aside(dir_fd: int, name: str, now_s: float | None = None) -> str:
    """Rename the entry `name` of dir_fd (whatever it is: a symlink is renamed, not followed) to
    a new name `NAME.moved-YYYYmmdd-HHMMSS[-N]` that nothing had; returns the new name.

    Never replaces an existing entry and never opens, truncates or writes the entry itself."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now_s))
    for n in range(1, 1000):
        aside = "%s.moved-%s%s" % (name, stamp, "" if n == 1 else "-%d" % n)
        try:
            if _rename_noreplace(dir_fd, name, aside):
                return aside
        except FileExistsError:
            continue
        # No renameat2 here: look first, then rename. Only the sensor's own accounts can write
        # in a directory that passed directory_problem, so nobody can slip an entry in between.
        try:
            os.stat(aside, dir_fd=dir_fd, follow_symlinks=False)
            continue
        except FileNotFoundError:
            pass
        os.rename(name, aside, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        return aside
    raise FileExistsError(errno.EEXIST, "no free name to move %s aside" % name)
