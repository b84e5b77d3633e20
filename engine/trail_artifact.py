"""Getting the sensor a usable trail artifact, and the private copy its workers map.

Owns what `--trails PATH` and `[all] trails_artifact` may name (a compiled artifact, a Maltrail
trails.csv, a directory of Maltrail static trail files), compiling the latter once into a cache
keyed by the source's identity (bounded: the least recently used builds are evicted), the
fail-closed rule (no usable trails and no explicit opt-in is an error that says how to get
trails), and `TrailCopy`: the verified, sealed in-memory copy of an artifact that the supervisor
hands its workers instead of the path, so nothing done to the file afterwards (a rebuild, `cp`
over it, a truncation) can reach a running worker.

Must not decode packets or write events.
"""

from __future__ import annotations

import fcntl
import hashlib
import itertools
import os
import stat
import sys
import threading
import time
from contextlib import contextmanager

from matchers import Artifact, ArtifactError, TrailMatchers
from matchers.artifact import MAGIC

CACHE_DIR_ENV = "MALTRAIL_ENGINE_CACHE"
# Compiled sources kept in the cache; each is the size of an artifact (~78 MB for Maltrail's full
# set). Beyond this, the least recently used go (atime, set explicitly on every use).
CACHE_KEEP_BUILDS = 3
# A temporary file of a build older than this is left over by a build that was killed.
STALE_TEMP_S = 3600


class TrailsUnavailable(Exception):
    """No usable trails; the message says what was tried and how to fix it."""


def _is_artifact(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(len(MAGIC)) == MAGIC
    except OSError:
        return False


def cache_dir() -> str:
    base = os.environ.get(CACHE_DIR_ENV) or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "maltrail-engine")
    os.makedirs(base, exist_ok=True)
    return base


def _source_identity(path: str) -> str:
    """Changes whenever the source (or any file in a source directory) changes."""
    h = hashlib.sha256(os.path.abspath(path).encode())
    if os.path.isdir(path):
        for dirpath, dirnames, filenames in os.walk(path):
            dirnames.sort()
            for name in sorted(filenames):
                st = os.stat(os.path.join(dirpath, name))
                h.update(("%s/%s %d %d\n" % (dirpath, name, st.st_size, st.st_mtime_ns)).encode())
    else:
        st = os.stat(path)
        h.update(("%d %d" % (st.st_size, st.st_mtime_ns)).encode())
    return h.hexdigest()[:24]


def compiled_path_for(source: str, min_prefix: tuple[int, int] | None = None) -> str:
    """Where the compiled form of a trails.csv or static trail directory is cached; `min_prefix`
    (None: the build's default) is part of the key, since it changes what is compiled."""
    identity = _source_identity(source) + ("" if min_prefix is None else "-p%d-%d" % tuple(min_prefix))
    return os.path.join(cache_dir(), "src-%s.mtdb" % identity)


def _mark_used(path: str) -> None:
    """Records a use of a cached build in its access time (the eviction order). The modification
    time stays: a running sensor watches it to tell a changed file."""
    try:
        os.utime(path, ns=(time.time_ns(), os.stat(path).st_mtime_ns))
    except OSError:
        pass


def evict_cache(keep: str, directory: str | None = None, builds: int = CACHE_KEEP_BUILDS) -> list[str]:
    """Bounds the compile cache: keeps the `builds` most recently used compiled sources (always
    `keep`, the one about to be used) and removes the rest, and the temporary files of builds
    killed more than STALE_TEMP_S ago. Returns the names removed."""
    directory = directory or os.path.dirname(keep)
    now_s = time.time()
    cached, removed = [], []
    for entry in os.scandir(directory):
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if not stat.S_ISREG(st.st_mode):
            continue
        if entry.name.startswith("src-") and entry.name.endswith(".mtdb"):
            if entry.path != keep:
                cached.append((st.st_atime_ns, entry.name))
        elif entry.name.startswith(".src-") and entry.name.endswith(".tmp") and now_s - st.st_mtime > STALE_TEMP_S:
            removed.append(entry.name)
    cached.sort(reverse=True)
    removed += [name for _, name in cached[max(0, builds - 1):]]
    for name in removed:
        try:
            os.unlink(os.path.join(directory, name))
        except FileNotFoundError:
            pass
    return removed


def resolve_artifact(path: str, allow_no_trails: bool, log=print,
                     min_prefix: tuple[int, int] | None = None) -> str:
    """The artifact the sensor runs for `path` (compiling a source first, keeping range trails no
    wider than `min_prefix` allows); raises TrailsUnavailable. An artifact named directly is
    checked here as far as its header and section table (its format, its length, its trail
    count): the sensor never maps the path, and `TrailCopy.take` checks every section of the copy
    its workers map, so checking the file's sections here too read the whole 78 MB twice at every
    start (~0.04 s of the time to the first packet)."""
    artifact_path, artifact = _resolve(path, allow_no_trails, log, min_prefix, verify=False)
    artifact.close()
    return artifact_path


def resolve_trails(path: str, allow_no_trails: bool, log=print,
                   min_prefix: tuple[int, int] | None = None) -> TrailMatchers:
    return TrailMatchers.load(_resolve(path, allow_no_trails, log, min_prefix)[1])


def _open_verified(path: str, verify: bool = True) -> Artifact:
    try:
        return Artifact.open(path, verify=verify)
    except ArtifactError as exc:
        raise TrailsUnavailable(str(exc)) from None


def _resolve(path: str, allow_no_trails: bool, log, min_prefix=None, verify: bool = True) -> tuple[str, Artifact]:
    """`verify`: check every section of an artifact named directly (False: its header and table
    only, for a caller that checks what it loads itself)."""
    if path and os.path.exists(path):
        if _is_artifact(path):
            artifact_path, artifact = path, _open_verified(path, verify)
        else:
            artifact_path, artifact = _compiled(path, log, min_prefix)
        if artifact.trail_count or allow_no_trails:
            return artifact_path, artifact
        artifact.close()
        problem = "%s holds no trails" % path
    else:
        problem = "no trails at %s" % (path or "(no path configured)")
    if not allow_no_trails:
        raise TrailsUnavailable(
            "%s. Get trails first: `maltrail-engine trails build --source /path/to/trails.csv` "
            "(Maltrail's trails.csv or a directory of its static trail files; set [all] trail_sources "
            "in maltrail.toml to make it the default), or pass --trails PATH. To run on heuristics "
            "alone, pass --allow-no-trails (or set [sensor] allow_no_trails = true)." % problem)
    empty = empty_artifact()
    return empty, _open_verified(empty)


def _compiled(source: str, log, min_prefix=None) -> tuple[str, Artifact]:
    """The cached build of a source, compiled first when there is none (or only one of an older
    format, or a damaged one)."""
    artifact_path = compiled_path_for(source, min_prefix)
    if os.path.exists(artifact_path):
        try:
            artifact = Artifact.open(artifact_path)
        except ArtifactError as exc:
            log("[!] cached build unusable, compiling again: %s" % exc)
        else:
            _mark_used(artifact_path)
            return artifact_path, artifact
    from trailsdb.compile import build  # only when a source must be compiled
    from trailsdb.sources import SourceError
    log("[i] compiling trails from %s (cached as %s)" % (source, artifact_path))
    try:
        options = {} if min_prefix is None else {"min_prefix": min_prefix}
        report = build([source], artifact_path, force=True, progress=sys.stderr.isatty(), **options)
    except (SourceError, ArtifactError) as exc:
        raise TrailsUnavailable(str(exc)) from None
    # the summary, and every kind of rejected trail with its reason
    for line in report.lines()[:1] + [line for line in report.lines() if line.startswith("rejected ")]:
        log("[i] %s" % line)
    for name in evict_cache(artifact_path):
        log("[i] compile cache: removed %s (keeping the %d most recently used builds)" % (name, CACHE_KEEP_BUILDS))
    return artifact_path, _open_verified(artifact_path)


def empty_artifact() -> str:
    from trailsdb.compile import build
    path = os.path.join(cache_dir(), "empty.mtdb")
    if not _is_current(path):
        build([], path, force=True)
    return path


def _is_current(path: str) -> bool:
    """An artifact of this format version is at `path` (an older one is rebuilt)."""
    try:
        Artifact.open(path, verify=False).close()
        return True
    except ArtifactError:
        return False


# ---- the private copy ------------------------------------------------------------------------------

# Descriptors of the copies this process holds, and those the next fork must keep open (a worker
# about to map one). Every other child (capture process, log writer, a worker started on another
# generation) closes them right after fork: a child holding a copy it never maps would keep an old
# generation's memory alive after every worker has moved on.
_HELD: set[int] = set()
_INHERIT: set[int] = set()


def _close_copies_in_child() -> None:
    for fd in _HELD - _INHERIT:
        try:
            os.close(fd)
        except OSError:
            pass
    _HELD.clear()
    _INHERIT.clear()


os.register_at_fork(after_in_child=_close_copies_in_child)

_SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL


def file_identity(path: str):
    """(device, inode, size, modification time) of the file at `path` (following a symlink), None
    when there is none: what changes when the file is rebuilt, replaced or written in place."""
    try:
        return _identity(os.stat(path))
    except OSError:
        return None


def _identity(st: os.stat_result) -> tuple:
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


class TrailCopy:
    """A verified private copy of an artifact that nothing can change: what the workers map.

    `take` copies the file into a memfd, seals it (no writes, no resizing, no further seals: even
    its holder cannot change it), then checks the copy's header, table and every section against
    their checksums, so what was checked is exactly what the workers will map. Workers get the
    descriptor by fork at start (`inherited`) and over their status channel (SCM_RIGHTS) on a
    reload, so they never open the path or /proc themselves. The memory is the page cache's of a
    tmpfs file: one copy, shared by every worker that maps it, freed when the last descriptor and
    mapping go.

    At start the supervisor splits `take` in two (`copy`, then `verify`) so that the workers load
    the copy while it is being checked: `verified` stays False until every section passed, and the
    supervisor starts the process that feeds the workers frames only after that (ARCHITECTURE.md,
    "The private copy").
    """

    _sequence = itertools.count(1)

    def __init__(self, fd: int, path: str, generation: int, trail_count: int, identity: tuple,
                 created_s: int = 0):
        self.fd = fd
        self.path = path
        self.generation = generation
        self.trail_count = trail_count
        self.created_s = created_s  # when the artifact was built (the trails' date, their age)
        self.identity = identity  # of the file at `path` when it was copied
        self.sequence = next(self._sequence)  # tells copies apart (two builds may share a generation)
        self.verified = False  # every section checked against its checksum (`verify`)
        _HELD.add(fd)

    @classmethod
    def take(cls, path: str) -> "TrailCopy":
        """Copies and verifies the artifact at `path`; raises ArtifactError saying what is wrong."""
        trails = cls.copy(path)
        try:
            trails.verify()
        except BaseException:
            trails.close()
            raise
        return trails

    @classmethod
    def copy(cls, path: str) -> "TrailCopy":
        """The sealed copy of the artifact at `path` with its header and section table checked,
        its sections not yet (`verify`); raises ArtifactError saying what is wrong."""
        try:
            # O_NONBLOCK: a FIFO at the path is refused below instead of waiting for a writer.
            src = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError as exc:
            raise ArtifactError("%s: cannot open trail artifact: %s" % (path, exc.strerror or exc)) from None
        try:
            before = os.fstat(src)
            if not stat.S_ISREG(before.st_mode):
                raise ArtifactError("%s: not a regular file" % path)
            fd = os.memfd_create("mte-trails", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
            try:
                copied = 0
                while copied < before.st_size:
                    sent = os.sendfile(fd, src, copied, before.st_size - copied)
                    if sent == 0:
                        break
                    copied += sent
                if copied != before.st_size or _identity(os.fstat(src)) != _identity(before):
                    raise ArtifactError("%s: changed while it was being read (a build or copy in progress?); "
                                        "try again when it is complete" % path)
                fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SEALS)
                artifact = Artifact.from_fd(fd, path, verify=False)
                generation, count, created_s = artifact.generation, artifact.trail_count, artifact.created_s
                artifact.close()
            except BaseException:
                os.close(fd)
                raise
        except OSError as exc:  # no memory for the copy, memfd refused by a sandbox, a read error
            raise ArtifactError("%s: cannot make the private copy of the trails: %s"
                                % (path, exc.strerror or exc)) from None
        finally:
            os.close(src)
        return cls(fd, path, generation, count, _identity(before), created_s)

    @classmethod
    def copy_on_thread(cls, path: str) -> "PendingCopy":
        """`copy` started on a thread of its own (the kernel's `sendfile` holds no interpreter
        lock), so that the caller can go on importing what it needs meanwhile; `result()` joins
        it. Nothing may fork before `result()` returned: a child of a process with a thread in
        the middle of the copy would inherit a copy the supervisor may still close."""
        return PendingCopy(path)

    def verify(self) -> None:
        """Checks every section of the sealed copy against its checksum (the whole copy read once,
        ~35 ms for 78 MB here); raises ArtifactError naming the first damaged one."""
        try:
            Artifact.from_fd(self.fd, self.path, verify=True).close()
        except OSError as exc:
            raise ArtifactError("%s: cannot read the private copy of the trails: %s"
                                % (self.path, exc.strerror or exc)) from None
        self.verified = True

    @contextmanager
    def inherited(self):
        """Inside, a fork keeps this copy's descriptor open in the child (a worker starting on
        it); every other copy this process holds is closed there."""
        _INHERIT.add(self.fd)
        try:
            yield self.fd
        finally:
            _INHERIT.discard(self.fd)

    def close(self) -> None:
        if self.fd >= 0:
            _HELD.discard(self.fd)
            os.close(self.fd)
            self.fd = -1


class PendingCopy:
    """TrailCopy.copy(path) running on its own thread (TrailCopy.copy_on_thread)."""

    def __init__(self, path: str):
        self.path = path
        self._copy = None
        self._error = None
        self._thread = threading.Thread(target=self._run, name="mte-trail-copy", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._copy = TrailCopy.copy(self.path)
        except BaseException as exc:  # noqa: BLE001 (handed to whoever asks for the copy)
            self._error = exc

    def result(self) -> TrailCopy:
        """The copy, once made; raises what making it raised (ArtifactError saying why)."""
        self._thread.join()
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        return self._copy

    def discard(self) -> None:
        """The copy is not wanted after all (the start failed before the engine ran)."""
        self._thread.join()
        if self._copy is not None:
            self._copy.close()
        self._copy = self._error = None


def load_copy(fd: int, name: str = "trail copy") -> TrailMatchers:
    """A worker's matchers over a copy it was handed (by fork or SCM_RIGHTS). The copy is sealed
    and was verified whole by the supervisor, so only its header and table are checked here; the
    descriptor stays the caller's (the mapping does not need it)."""
    return TrailMatchers.load(Artifact.from_fd(fd, name, verify=False))
