"""The feeds' state directory: each feed's last good body, and the status file.

Owns the layout of the directory `[all] feeds_dir` names (default /var/lib/maltrail-engine/feeds):
`<feed>.body` is the feed's last good body as fetched (decompressed), `status.json` the per-feed
record (`STATUS_FORMAT` below documents it), `.<feed>.<random>.part` a download in progress. The
directory is opened once and every file in it is opened relative to that descriptor, never
through a symlink (O_NOFOLLOW) and, for a new file, only exclusively (O_EXCL); a body or the
status file is replaced by writing a new file and renaming it over the old one after fsync, so a
reader (or a crash) sees the old copy or the new one, never a mix. The directory must belong to
root or to us and must not be writable by anyone else (a planted symlink or hard link there
could otherwise redirect a write). An exclusive lock on the directory keeps two updates (the
sensor's periodic one and a manual one) from running at once.

Must not fetch, parse or judge bodies.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import secrets
import stat
from typing import BinaryIO

from trailsdb.feeds.catalog import NAME_RE

STATUS_FILE = "status.json"
BODY_SUFFIX = ".body"
PART_SUFFIX = ".part"
DIR_MODE = 0o750
FILE_MODE = 0o640

# status.json: {"format": 1, "feeds": {NAME: RECORD}}, RECORD holding
#   url                  the URL the last good body came from
#   state                how the last update went: "fresh" (a new body was accepted),
#                        "unchanged" (304, the last good body is current), "kept" (the update
#                        failed; the last good body is used), "missing" (it failed and there is
#                        no last good body), "offline" (not fetched: offline mode)
#   reason               why it was "kept" or "missing"; null otherwise
#   last_attempt         epoch seconds of the last update that tried it (or, offline, looked)
#   last_success         epoch seconds of the last fresh or unchanged answer; null if never
#   last_failure         epoch seconds of the last failure; null if never
#   last_failure_reason  the reason of that failure
#   rows                 rows the last good body holds (0 without one)
#   bytes                its size
#   skipped              {reason: count} of what its parser skipped in it
#   etag, last_modified  the validators that came with the last good body ("" if none)
STATUS_FORMAT = 1


class StoreError(Exception):
    """The state directory cannot be used; the message says why and names it."""


class StoreBusy(StoreError):
    """Another update holds the state directory."""


def _check_directory(path: str, st: os.stat_result) -> None:
    if not stat.S_ISDIR(st.st_mode):
        raise StoreError("%s: the feeds directory is not a directory" % path)
    if st.st_uid not in (0, os.geteuid()):
        raise StoreError("%s: the feeds directory belongs to uid %d, not to root or to us (uid %d)"
                         % (path, st.st_uid, os.geteuid()))
    if st.st_mode & 0o022:
        raise StoreError("%s: the feeds directory is writable by other users (mode %04o); "
                         "chmod go-w it" % (path, stat.S_IMODE(st.st_mode)))


class FeedStore:
    """An open state directory. Use as a context manager; `lock()` before changing anything."""

    def __init__(self, path: str, create: bool = True):
        self.path = os.path.abspath(path)
        if create and not os.path.lexists(self.path):
            try:
                os.makedirs(self.path, DIR_MODE, exist_ok=True)
            except OSError as exc:
                raise StoreError("%s: cannot create the feeds directory: %s" % (self.path, exc.strerror or exc)) from None
        try:
            self.fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            raise StoreError("%s: the feeds directory does not exist" % self.path) from None
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise StoreError("%s: the feeds directory is a symlink or not a directory; refused" % self.path) from None
            raise StoreError("%s: cannot open the feeds directory: %s" % (self.path, exc.strerror or exc)) from None
        try:
            _check_directory(self.path, os.fstat(self.fd))
        except StoreError:
            os.close(self.fd)
            raise
        self.locked = False

    # -- lifetime -------------------------------------------------------------------------------

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> "FeedStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def lock(self) -> None:
        """Exclusive use of the directory until closed; StoreBusy if another update has it.
        Leftover partial downloads of a crashed update are removed."""
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StoreBusy("%s: another trail update is using the feeds directory" % self.path) from None
        self.locked = True
        for entry in os.listdir(self.fd):
            if entry.startswith(".") and entry.endswith(PART_SUFFIX):
                self._unlink(entry)

    # -- bodies ---------------------------------------------------------------------------------

    @staticmethod
    def _body_name(name: str) -> str:
        if not NAME_RE.match(name):
            raise StoreError("%r is not a feed name" % name)
        return name + BODY_SUFFIX

    def open_body(self, name: str) -> BinaryIO | None:
        """The feed's last good body for reading, or None when there is none. Anything but a
        regular file at its name (a symlink, a directory, a fifo) is refused."""
        try:
            fd = os.open(self._body_name(name), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK,
                         dir_fd=self.fd)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise StoreError("%s/%s is a symlink; refused" % (self.path, self._body_name(name))) from None
            raise StoreError("%s/%s: cannot read: %s" % (self.path, self._body_name(name), exc.strerror or exc)) from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise StoreError("%s/%s is not a regular file; refused" % (self.path, self._body_name(name)))
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")

    def body_size(self, name: str) -> int | None:
        try:
            st = os.stat(self._body_name(name), dir_fd=self.fd, follow_symlinks=False)
        except FileNotFoundError:
            return None
        return st.st_size if stat.S_ISREG(st.st_mode) else None

    def new_part(self, name: str) -> tuple[BinaryIO, str]:
        """A new, empty file for a download of `name`: (writable file, its entry name)."""
        self._body_name(name)
        for _ in range(8):
            part = ".%s.%s%s" % (name, secrets.token_hex(6), PART_SUFFIX)
            try:
                fd = os.open(part, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                             FILE_MODE, dir_fd=self.fd)
            except FileExistsError:
                continue
            except OSError as exc:
                raise StoreError("%s: cannot create a file: %s" % (self.path, exc.strerror or exc)) from None
            return os.fdopen(fd, "w+b"), part
        raise StoreError("%s: cannot create a download file" % self.path)

    def commit(self, part: str, handle: BinaryIO, name: str) -> None:
        """Makes the download `part` the feed's last good body (fsync, then rename over it)."""
        try:
            handle.flush()
            os.fsync(handle.fileno())
            os.rename(part, self._body_name(name), src_dir_fd=self.fd, dst_dir_fd=self.fd)
            os.fsync(self.fd)
        except OSError as exc:
            self._unlink(part)
            raise StoreError("%s: cannot store the body of %s: %s" % (self.path, name, exc.strerror or exc)) from None

    def discard(self, part: str) -> None:
        self._unlink(part)

    def _unlink(self, entry: str) -> None:
        try:
            os.unlink(entry, dir_fd=self.fd)
        except FileNotFoundError:
            pass

    # -- status ---------------------------------------------------------------------------------

    def read_status(self) -> tuple[dict, str | None]:
        """(the per-feed records, a problem or None). A missing file is no records; a damaged
        one too, with the problem said (the bodies are still there)."""
        try:
            fd = os.open(STATUS_FILE, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=self.fd)
        except FileNotFoundError:
            return {}, None
        except OSError as exc:
            return {}, "%s/%s cannot be read (%s); starting a new one" % (self.path, STATUS_FILE, exc.strerror or exc)
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                return {}, "%s/%s is not a regular file; starting a new one" % (self.path, STATUS_FILE)
            os.set_blocking(f.fileno(), True)
            raw = f.read(16 * 1024 * 1024)
        try:
            doc = json.loads(raw.decode("utf-8"))
            feeds = doc["feeds"]
            if doc.get("format") != STATUS_FORMAT or not isinstance(feeds, dict):
                raise ValueError("unknown layout")
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
            return {}, "%s/%s is damaged (%s); starting a new one" % (self.path, STATUS_FILE, exc)
        return {k: v for k, v in feeds.items() if isinstance(v, dict)}, None

    def write_status(self, feeds: dict) -> None:
        handle, part = self.new_part("status")
        try:
            with handle:
                handle.write(json.dumps({"format": STATUS_FORMAT, "feeds": feeds}, indent=1, sort_keys=True).encode())
                handle.flush()
                os.fsync(handle.fileno())
            os.rename(part, STATUS_FILE, src_dir_fd=self.fd, dst_dir_fd=self.fd)
            os.fsync(self.fd)
        except OSError as exc:
            raise StoreError("%s: cannot write %s: %s" % (self.path, STATUS_FILE, exc.strerror or exc)) from None
        finally:
            self._unlink(part)


def read_status(path: str) -> dict:
    """The per-feed records of the state directory at `path` (for `trails stats`); {} when it
    has none. Raises StoreError for a directory that cannot be used."""
    with FeedStore(path, create=False) as store:
        feeds, _problem = store.read_status()
        return feeds
