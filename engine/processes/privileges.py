"""What each engine process may do: the account it runs as and the capabilities it keeps.

Owns the privilege model (ARCHITECTURE.md, "Privileges"):

- started as root: the supervisor stays root but keeps only the capabilities it still needs to
  start and signal its children; the capture process opens its capture handles, then becomes
  the unprivileged account (`[sensor] user`) with no capabilities; workers and the log writer
  become that account before they read a byte of traffic. Replaying files as root, the capture
  process keeps uid 0 with CAP_DAC_READ_SEARCH alone, so that it can still read the files it
  was given;
- started as another account holding capabilities (a systemd unit's AmbientCapabilities, or
  `setcap` on the interpreter): no account change; the capture process keeps CAP_NET_RAW and
  CAP_NET_ADMIN only until its handles are open, everyone else drops every capability at once;
- every process sets no_new_privs, so nothing it executes can gain privileges again.

Linux's capability calls are reached through ctypes (glibc's capset and prctl). Every drop is
read back from /proc/self/status, and a drop that did not take is an error, never a warning.

Must not decide what a process does; only what it may do.
"""

from __future__ import annotations

import ctypes
import grp
import os
import pwd
import stat
from dataclasses import dataclass

# linux/capability.h
CAP_CHOWN = 0
CAP_DAC_OVERRIDE = 1
CAP_DAC_READ_SEARCH = 2
CAP_KILL = 5
CAP_SETGID = 6
CAP_SETUID = 7
CAP_SETPCAP = 8
CAP_NET_ADMIN = 12
CAP_NET_RAW = 13
CAP_NAMES = {CAP_CHOWN: "cap_chown", CAP_DAC_OVERRIDE: "cap_dac_override", CAP_DAC_READ_SEARCH: "cap_dac_read_search",
             CAP_KILL: "cap_kill", CAP_SETGID: "cap_setgid", CAP_SETUID: "cap_setuid", CAP_SETPCAP: "cap_setpcap",
             CAP_NET_ADMIN: "cap_net_admin", CAP_NET_RAW: "cap_net_raw"}
CAPTURE_CAPS = frozenset((CAP_NET_RAW, CAP_NET_ADMIN))
# What the supervisor keeps once its children run: start workers as the account (setuid,
# setgid, and setpcap to empty their bounding set), signal them across the account boundary
# (kill), read reloaded trails and control files wherever root may read them, and give a log
# directory a cleaner removed back to the writer's account when it makes it again (chown).
SUPERVISOR_CAPS = frozenset((CAP_SETUID, CAP_SETGID, CAP_SETPCAP, CAP_KILL, CAP_DAC_READ_SEARCH, CAP_CHOWN))

_PR_SET_PDEATHSIG = 1
_PR_SET_KEEPCAPS = 8
_PR_CAPBSET_DROP = 24
_PR_SET_NO_NEW_PRIVS = 38
_PR_CAP_AMBIENT = 47
_PR_CAP_AMBIENT_CLEAR_ALL = 4
_LINUX_CAPABILITY_VERSION_3 = 0x20080522

DEFAULT_USER = "maltrail-engine"
FALLBACK_USER = "nobody"


class PrivilegeError(Exception):
    """A privilege change failed or did not take; the message says which and why."""


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


_libc = None


def _lib():
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    return _libc


def _prctl(option: int, arg2: int = 0, what: str = "prctl") -> None:
    if _lib().prctl(option, arg2, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise PrivilegeError("%s failed: %s" % (what, os.strerror(err)))


def status_fields(pid: int | str = "self") -> dict:
    """The identity and capability lines of /proc/PID/status (Uid, Gid, Cap*, NoNewPrivs)."""
    out = {}
    with open("/proc/%s/status" % pid) as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("Uid", "Gid", "Groups", "CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs"):
                out[key] = value.strip()
    return out


def effective_caps(pid: int | str = "self") -> set[int]:
    mask = int(status_fields(pid)["CapEff"], 16)
    return {bit for bit in range(64) if mask >> bit & 1}


def _last_cap() -> int:
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 40


def _capset(keep: frozenset) -> None:
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    for cap in keep:
        data[cap // 32].effective |= 1 << (cap % 32)
        data[cap // 32].permitted |= 1 << (cap % 32)
    if _lib().capset(ctypes.byref(header), data) != 0:
        err = ctypes.get_errno()
        raise PrivilegeError("capset failed: %s" % os.strerror(err))


@dataclass(frozen=True)
class Account:
    """The unprivileged account the sensor's children run as."""
    name: str
    uid: int
    gid: int


def readable_by(top: str, account: Account) -> bool:
    """Whether `account`, as drop() leaves it (its own group its only one), may reach and read `top`,
    a file or a directory and everything in it: every directory from the root down searchable,
    every file readable, by their mode bits. A path that cannot be looked at counts as unreadable.
    (server/privileges.py reachable_problem checks the search bits alone, for a directory the
    server will make.)"""
    parts = os.path.abspath(top).split(os.sep)
    for i in range(1, len(parts)):
        if not _mode_allows(os.sep.join(parts[:i]) or os.sep, account, True):
            return False
    if not os.path.isdir(top):
        return _mode_allows(top, account, False)
    for folder, _dirs, files in os.walk(top):
        if not _mode_allows(folder, account, True) or not all(
                _mode_allows(os.path.join(folder, f), account, False) for f in files):
            return False
    return True


def _mode_allows(path: str, account: Account, directory: bool) -> bool:
    """By its mode bits: whether `account` may read `path` (and search it, a directory)."""
    try:
        st = os.stat(path)
    except OSError:
        return False
    if st.st_uid == account.uid:
        shift = 6
    elif st.st_gid == account.gid:
        shift = 3
    else:
        shift = 0
    need = (stat.S_IROTH | (stat.S_IXOTH if directory else 0)) << shift
    return st.st_mode & need == need


def resolve_account(name: str, notice=None) -> Account | None:
    """The account `[sensor] user` names, when this process is root and must change account;
    None when there is nothing to change (not root, or the name is root).

    The default account is created by the installation (deploy/install.sh); when it is missing
    (a checkout run with sudo) the sensor falls back to `nobody` and says so. An account named
    explicitly must exist.
    """
    if os.geteuid() != 0 or name in ("root", "0"):
        return None
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        if name != DEFAULT_USER:
            raise PrivilegeError(
                "[sensor] user = %r: no such account; create it (useradd --system --no-create-home "
                "--shell /usr/sbin/nologin %s) or name another" % (name, name)) from None
        try:
            entry = pwd.getpwnam(FALLBACK_USER)
        except KeyError:
            raise PrivilegeError("neither the account %r nor %r exists; create %r (deploy/install.sh does)"
                                 % (DEFAULT_USER, FALLBACK_USER, DEFAULT_USER)) from None
        if notice is not None:
            notice("the account %r does not exist (deploy/install.sh creates it): workers and the log "
                   "writer run as %r" % (DEFAULT_USER, FALLBACK_USER))
    if entry.pw_uid == 0:
        return None
    return Account(entry.pw_name, entry.pw_uid, entry.pw_gid)


def drop(account: Account | None, keep: frozenset = frozenset()) -> None:
    """Reduce this process to `account` (when not None) and the capabilities in `keep`, with
    no_new_privs set; read back and checked. Irreversible by design."""
    keep = frozenset(keep)
    is_root = os.geteuid() == 0
    have = effective_caps()
    if CAP_SETPCAP in have:
        # The bounding set limits what an exec could ever regain; only root-like processes may
        # shrink it, and without CAP_SETPCAP no_new_privs below does the same job.
        for cap in range(_last_cap() + 1):
            if cap not in keep:
                _prctl(_PR_CAPBSET_DROP, cap, "dropping %s from the bounding set" % CAP_NAMES.get(cap, cap))
    try:
        _prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, "clearing ambient capabilities")
    except PrivilegeError:
        pass  # kernels before 4.3 have no ambient set: nothing to clear
    if account is not None and is_root:
        try:
            groups = [account.gid]
            os.setgroups(groups)
            os.setresgid(account.gid, account.gid, account.gid)
            if keep:
                _prctl(_PR_SET_KEEPCAPS, 1, "keeping capabilities across the account change")
            os.setresuid(account.uid, account.uid, account.uid)
        except OSError as exc:
            raise PrivilegeError("cannot become %s (uid %d): %s" % (account.name, account.uid, exc.strerror)) from None
        if keep:
            _prctl(_PR_SET_KEEPCAPS, 0, "resetting keep-capabilities")
    _capset(keep & have)
    _prctl(_PR_SET_NO_NEW_PRIVS, 1, "setting no_new_privs")
    fields = status_fields()
    if effective_caps() - keep or int(fields["CapPrm"], 16) & ~_mask(keep):
        raise PrivilegeError("capabilities still held after the drop: %s" % fields["CapEff"])
    if account is not None and is_root and os.getuid() != account.uid:
        raise PrivilegeError("still uid %d after changing to %s" % (os.getuid(), account.name))


def _mask(caps) -> int:
    out = 0
    for cap in caps:
        out |= 1 << cap
    return out


def set_parent_death_signal(signum: int) -> None:
    """Ask the kernel to send `signum` when the parent dies (reset by any account change, so
    call it after drop())."""
    _prctl(_PR_SET_PDEATHSIG, signum, "setting the parent-death signal")


def group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)
