"""What the server process may do once it has started: the account it runs as, no capabilities.

Owns the server's privilege model (ARCHITECTURE.md, "The server's privileges"): started as root,
`maltrail-engine server` binds its sockets (HTTP, UDP: a port below 1024, a receive buffer
beyond net.core.rmem_max), reads its TLS key, makes its store directory belong to its account,
and then becomes `[server] user` for good: every uid and gid, supplementary groups reduced to
the account's own, no capability in any set (bounding and ambient included), no_new_privs.
Started as another account it keeps its account and drops whatever capabilities it was given
(a systemd unit's AmbientCapabilities=CAP_NET_BIND_SERVICE, for one) once it has bound.
Every drop is read back from /proc/self/status: one that did not take is an error, never a
warning.

The server's own copy, not engine/processes/privileges.py: the server must not import engine/
(tests/test_layering.py), and it needs only the all-or-nothing drop of one process (no kept
capabilities, no children), so the shared part would be the few ctypes calls below.

The account: the same rule as the sensor's `[sensor] user`: the default `maltrail-engine`
(deploy/install.sh creates it) falls back to `nobody` with a notice; a named account must exist;
"root" keeps root (not recommended).

Must not decide what the server does; only what it may do.
"""

from __future__ import annotations

import ctypes
import os
import pwd
import stat
from typing import NamedTuple

__all__ = ["Account", "PrivilegeError", "resolve_account", "drop", "status_fields", "reachable_problem",
           "DEFAULT_USER", "FALLBACK_USER"]

DEFAULT_USER = "maltrail-engine"
FALLBACK_USER = "nobody"

_CAP_SETPCAP = 8
_PR_CAPBSET_DROP = 24
_PR_SET_NO_NEW_PRIVS = 38
_PR_CAP_AMBIENT = 47
_PR_CAP_AMBIENT_CLEAR_ALL = 4
_LINUX_CAPABILITY_VERSION_3 = 0x20080522


class PrivilegeError(Exception):
    """A privilege change failed or did not take; the message says which and why."""


class Account(NamedTuple):
    name: str
    uid: int
    gid: int


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def _libc():
    lib = ctypes.CDLL(None, use_errno=True)
    lib.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    return lib


def _prctl(lib, option: int, arg2: int, what: str) -> None:
    if lib.prctl(option, arg2, 0, 0, 0) != 0:
        raise PrivilegeError("%s failed: %s" % (what, os.strerror(ctypes.get_errno())))


def status_fields(pid: int | str = "self") -> dict:
    """The identity and capability lines of /proc/PID/status (Uid, Gid, Groups, Cap*, NoNewPrivs)."""
    out = {}
    with open("/proc/%s/status" % pid) as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("Uid", "Gid", "Groups", "CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs"):
                out[key] = value.strip()
    return out


def resolve_account(name: str, notice=None) -> Account | None:
    """The account to become, when this process is root and `name` is not root; None when there
    is nothing to change. PrivilegeError for a named account that does not exist."""
    if os.geteuid() != 0 or name in ("root", "0"):
        return None
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        if name != DEFAULT_USER:
            raise PrivilegeError(
                "[server] user = %r: no such account; create it (useradd --system --no-create-home "
                "--shell /usr/sbin/nologin %s) or name another" % (name, name)) from None
        try:
            entry = pwd.getpwnam(FALLBACK_USER)
        except KeyError:
            raise PrivilegeError("neither the account %r nor %r exists; create %r (deploy/install.sh does)"
                                 % (DEFAULT_USER, FALLBACK_USER, DEFAULT_USER)) from None
        if notice is not None:
            notice("the account %r does not exist (deploy/install.sh creates it): the server runs as %r"
                   % (DEFAULT_USER, FALLBACK_USER))
    if entry.pw_uid == 0:
        return None
    return Account(entry.pw_name, entry.pw_uid, entry.pw_gid)


def reachable_problem(path: str, account: Account) -> str | None:
    """Why `account` could not reach the directory `path` (an ancestor it may not search), or None.
    Checked as root before the drop, so the failure is a sentence at start rather than a
    'permission denied' from the store at the first new day."""
    path = os.path.abspath(path)
    parts = path.split(os.sep)
    for i in range(2, len(parts)):
        ancestor = os.sep.join(parts[:i]) or os.sep
        try:
            st = os.stat(ancestor)
        except OSError:
            return None     # made later, by the account's own parent: checked then
        if st.st_uid == account.uid:
            ok = st.st_mode & stat.S_IXUSR
        elif st.st_gid == account.gid:
            ok = st.st_mode & stat.S_IXGRP
        else:
            ok = st.st_mode & stat.S_IXOTH
        if not ok:
            return ("the server runs as %s (uid %d), which cannot reach %s: %s (mode %04o, owner uid %d) is not "
                    "searchable by it; put the directory elsewhere, or allow it with `chmod o+x %s`"
                    % (account.name, account.uid, path, ancestor, stat.S_IMODE(st.st_mode), st.st_uid, ancestor))
    return None


def _last_cap() -> int:
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 40


def drop(account: Account | None) -> None:
    """Become `account` (when not None and root) with no capabilities and no_new_privs; read back
    and checked. Irreversible by design."""
    lib = _libc()
    effective = int(status_fields()["CapEff"], 16)
    if effective >> _CAP_SETPCAP & 1:
        # The bounding set caps what an exec could ever regain; emptying it needs CAP_SETPCAP,
        # which root has now and the account will not.
        for cap in range(_last_cap() + 1):
            _prctl(lib, _PR_CAPBSET_DROP, cap, "dropping capability %d from the bounding set" % cap)
    try:
        _prctl(lib, _PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, "clearing ambient capabilities")
    except PrivilegeError:
        pass    # kernels before 4.3 have no ambient set: nothing to clear
    if account is not None and os.geteuid() == 0:
        try:
            os.setgroups([account.gid])
            os.setresgid(account.gid, account.gid, account.gid)
            os.setresuid(account.uid, account.uid, account.uid)   # clears every capability set
        except OSError as exc:
            raise PrivilegeError("cannot become %s (uid %d): %s" % (account.name, account.uid, exc.strerror)) from None
    # A non-root start keeps its account but not what it was given to bind with.
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    if lib.capset(ctypes.byref(header), data) != 0:
        raise PrivilegeError("clearing capabilities failed: %s" % os.strerror(ctypes.get_errno()))
    _prctl(lib, _PR_SET_NO_NEW_PRIVS, 1, "setting no_new_privs")
    fields = status_fields()
    for key in ("CapEff", "CapPrm", "CapInh", "CapAmb"):
        if int(fields.get(key, "0"), 16):
            raise PrivilegeError("capabilities still held after the drop: %s %s" % (key, fields[key]))
    if account is not None and set(fields["Uid"].split()) != {str(account.uid)}:
        raise PrivilegeError("still uid %s after changing to %s" % (fields["Uid"], account.name))


def _give_entries(dir_fd: int, account: Account, names=None) -> None:
    """Gives the regular single-link files (and, one level down, the directories) in dir_fd to the
    account, never through a symlink: a hard link or a symlink planted there stays as it is."""
    for name in names if names is not None else os.listdir(dir_fd):
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
        except OSError:
            continue        # gone, or a symlink: whoever opens it later refuses it
        try:
            st = os.fstat(fd)
            if stat.S_ISDIR(st.st_mode) and names is None:
                if st.st_uid != account.uid:
                    os.fchown(fd, account.uid, account.gid)
                _give_entries(fd, account, names=[n for n in os.listdir(fd)])
            elif stat.S_ISREG(st.st_mode) and st.st_nlink == 1 and st.st_uid != account.uid:
                os.fchown(fd, account.uid, account.gid)
        finally:
            os.close(fd)


def give_directory(path: str, account: Account, notice=None) -> None:
    """Started as root: the server's store directory (made if absent, after the symlink-safe check
    of events/fsafety.py) and what the server keeps in it (day files, index/ and its databases,
    the state database) belong to the account it will run as, as systemd's StateDirectory= does.
    PrivilegeError saying why when it cannot."""
    from events.log import LogDirError, open_log_dir
    problem = reachable_problem(path, account)
    if problem:
        raise PrivilegeError("[server] log_dir: %s" % problem)
    try:
        dir_fd = open_log_dir(path, (account.uid,))
    except LogDirError as exc:
        raise PrivilegeError(str(exc)) from None
    try:
        if os.fstat(dir_fd).st_uid != account.uid:
            os.fchown(dir_fd, account.uid, account.gid)
            if notice is not None:
                notice("%s now belongs to %s, the account the server runs as" % (path, account.name))
        _give_entries(dir_fd, account)
    except OSError as exc:
        raise PrivilegeError("cannot give %s to %s: %s" % (path, account.name, exc.strerror or exc)) from None
    finally:
        os.close(dir_fd)


def give_state_db(path: str, account: Account) -> None:
    """The state database outside the store directory: its file (and SQLite's -wal and -shm
    beside it) belong to the account; its directory must already be the account's, since SQLite
    makes and removes those files there (a shared directory is never given away)."""
    directory, name = os.path.split(os.path.abspath(path))
    problem = reachable_problem(directory, account)
    if problem:
        raise PrivilegeError("[server] state_db: %s" % problem)
    try:
        st = os.stat(directory)
    except OSError as exc:
        raise PrivilegeError("[server] state_db = %r: %s: %s" % (path, directory, exc.strerror or exc)) from None
    if st.st_uid != account.uid:
        raise PrivilegeError("[server] state_db = %r: its directory %s must belong to %s, the account the server runs "
                             "as (SQLite makes its journal files beside the database): `chown %s %s`, or leave "
                             "state_db empty (server-state.sqlite in [server] log_dir)"
                             % (path, directory, account.name, account.name, directory))
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        _give_entries(dir_fd, account, names=[n for n in (name, name + "-wal", name + "-shm")])
    finally:
        os.close(dir_fd)
