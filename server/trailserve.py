"""The server's trail set: the compiled artifact it answers `check` from and serves to sensors.

Owns `TrailServe`: the artifact at `[all] trails_artifact` (the same file `trails build` and
`trails update` publish on the server's host), opened and checked whole, and opened again when
the path changes (an update renames a new file into place: the file is looked at, at most once
per CHECK_INTERVAL_S, by device, inode, size and modification time); the matchers over it (for
`check`, built at the first question); Maltrail's trails.csv made from it (for Maltrail sensors'
UPDATE_SERVER), in two versions, with and without custom trails; and the server's Ed25519
signing key with the signed manifest of the artifact (for our sensors' `[sensor] update_server`,
format in trailsdb/remote.py).

Everything it serves is read through the descriptor it opened and hashed: a file replaced
meanwhile never mixes with the one described (a rename leaves the old inode whole while it is
open). A new file that does not load keeps the previous one, with a message once.

The key is made at the first start (0600, without following a symlink) in the state
directory (the directory of `[server] state_db`), and refused if others may read it.

Must not know HTTP, sessions or users (server/api/compat.py decides who gets which version).
"""

from __future__ import annotations

import csv
import io
import os
import stat
import tempfile
import threading
import time
from typing import Callable

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from matchers import Artifact, ArtifactError, TrailMatchers
from matchers.artifact import KIND_CERT, KIND_UA, KIND_UA_REGEX
from trailsdb.normalize import CERT_PREFIX, UA_PREFIX, UA_REGEX_PREFIX
from trailsdb.remote import make_manifest, public_key_text, sign_manifest

KEY_FILE = "trail-signing.key"
CHECK_INTERVAL_S = 1.0
# A trail's reference naming the operator's own lists: masked from users who may not see them,
# and left out of the public trails.csv (Maltrail's rule: "(custom)" rows stripped).
CUSTOM_REFERENCES = ("(custom)", "(remote custom)")


class TrailKeyError(Exception):
    """The signing key cannot be used; the message names the file and the fix."""


def load_signing_key(directory: str, log: Callable[[str, str], None]) -> Ed25519PrivateKey:
    """The server's signing key in `directory`, made there (0600) the first time."""
    os.makedirs(directory, mode=0o700, exist_ok=True)
    path = os.path.join(directory, KEY_FILE)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise TrailKeyError("cannot make the trail signing key %s: %s" % (path, exc.strerror or exc)) from None
        try:
            os.write(fd, pem)
            os.fsync(fd)
        finally:
            os.close(fd)
        log("i", "made the trail signing key %s; sensors pin its public key: %s" % (path, public_key_text(key.public_key())))
        return key
    except OSError as exc:
        raise TrailKeyError("cannot open the trail signing key %s: %s (a symlink is refused)"
                            % (path, exc.strerror or exc)) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_mode & 0o077:
            raise TrailKeyError("%s: others may read it (mode %o); chmod 600 it, or remove it to make a new key "
                                "(sensors then pin the new one)" % (path, stat.S_IMODE(st.st_mode)))
        data = os.read(fd, 65536)
    finally:
        os.close(fd)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise TrailKeyError("%s: not a PEM private key: %s" % (path, exc)) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise TrailKeyError("%s: not an Ed25519 key" % path)
    return key


def trail_text(kind: int, key: str) -> str:
    """A trail as Maltrail's trails.csv (and our trails.csv reader) writes it: the key, with the
    prefix our kinds that Maltrail has no column for carry (trailsdb/normalize.py reads them back)."""
    if kind == KIND_UA:
        return UA_PREFIX + key
    if kind == KIND_UA_REGEX:
        return UA_REGEX_PREFIX + key
    if kind == KIND_CERT:
        return CERT_PREFIX + key
    return key


class _Loaded:
    """One artifact file, open and checked; what is made from it is made once, on demand."""

    def __init__(self, fd: int, identity: tuple, artifact: Artifact):
        self.fd = fd
        self.identity = identity
        self.artifact = artifact
        self.size_bytes = os.fstat(fd).st_size
        self.matchers: TrailMatchers | None = None
        self.signed: bytes | None = None
        self.csv: dict[bool, object] = {}      # with custom trails? -> an unlinked temp file
        self.lock = threading.Lock()

    def __del__(self):
        try:
            os.close(self.fd)
        except OSError:
            pass


class TrailServe:
    """The trail set of module docstring. Thread-safe: the HTTP side calls it from executor threads."""

    def __init__(self, artifact_path: str, key_dir: str, log: Callable[[str, str], None],
                 clock: Callable[[], float] = time.monotonic):
        self.path = artifact_path
        self.key_dir = key_dir
        self.log = log
        self.clock = clock
        self._lock = threading.Lock()
        self._loaded: _Loaded | None = None
        self._looked_at = -CHECK_INTERVAL_S
        self._identity_seen: tuple | None = None
        self._problem = ""
        self.key: Ed25519PrivateKey | None = None
        self.key_problem = ""
        try:
            self.key = load_signing_key(key_dir, log)
        except TrailKeyError as exc:
            self.key_problem = str(exc)
            log("!", "signed trails for sensors are off: %s" % exc)

    @property
    def public_key(self) -> str:
        return public_key_text(self.key.public_key()) if self.key is not None else ""

    @property
    def problem(self) -> str:
        """Why no artifact is served, when none is."""
        return self._problem

    def current(self) -> _Loaded | None:
        """The artifact in use: the path opened again when it changed since it was last looked at."""
        with self._lock:
            now = self.clock()
            if self._loaded is not None and now - self._looked_at < CHECK_INTERVAL_S:
                return self._loaded
            self._looked_at = now
            try:
                st = os.stat(self.path)
                identity = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
            except OSError as exc:
                if self._loaded is None:
                    self._problem = "no trail artifact at %s: %s" % (self.path, exc.strerror or exc)
                return self._loaded
            if self._loaded is not None and identity == self._loaded.identity:
                return self._loaded
            if identity == self._identity_seen:     # this file was refused already
                return self._loaded
            self._identity_seen = identity
            try:
                fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
            except OSError as exc:
                self.log("!", "trail artifact %s: cannot open: %s" % (self.path, exc.strerror or exc))
                return self._loaded
            try:
                st = os.fstat(fd)
                identity = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
                artifact = Artifact.from_fd(fd, self.path, verify=True)
            except (ArtifactError, OSError) as exc:
                os.close(fd)
                keeps = ("; generation %d stays in use" % self._loaded.artifact.generation) if self._loaded else ""
                self.log("!", "trail artifact refused: %s%s" % (exc, keeps))
                if self._loaded is None:
                    self._problem = str(exc)
                return self._loaded
            old, self._loaded = self._loaded, _Loaded(fd, identity, artifact)
            self._problem = ""
            self.log("i", "trails for check and sensors: %s generation %d, %d trails"
                     % (self.path, artifact.generation, artifact.trail_count))
        # The previous one is not closed here: a check may still be running on its matchers, a
        # download still reading its descriptor. It goes when the last of them lets go (__del__).
        del old
        return self._loaded

    # -- what is made from one artifact -------------------------------------------------------

    @staticmethod
    def matchers(loaded: _Loaded) -> TrailMatchers:
        with loaded.lock:
            if loaded.matchers is None:
                loaded.matchers = TrailMatchers.load(loaded.artifact)
            return loaded.matchers

    def signed(self, loaded: _Loaded) -> bytes | None:
        """The signed manifest document of `loaded` (None without a key)."""
        if self.key is None:
            return None
        with loaded.lock:
            if loaded.signed is None:
                manifest = make_manifest(loaded.fd, loaded.artifact, int(time.time()))
                loaded.signed = sign_manifest(manifest, self.key)
            return loaded.signed

    def trails_csv(self, loaded: _Loaded, with_custom: bool):
        """An open file holding the trail set as Maltrail's trails.csv (`trail,info,reference`,
        Python csv quoting); without the custom trails unless `with_custom`."""
        with loaded.lock:
            if with_custom not in loaded.csv:
                full = tempfile.TemporaryFile(dir=self.key_dir)
                public = tempfile.TemporaryFile(dir=self.key_dir)
                text_full = io.TextIOWrapper(full, encoding="utf-8", newline="", write_through=False)
                text_public = io.TextIOWrapper(public, encoding="utf-8", newline="", write_through=False)
                w_full, w_public = csv.writer(text_full, lineterminator="\n"), csv.writer(text_public, lineterminator="\n")
                artifact = loaded.artifact
                for trail_id in range(artifact.trail_count):
                    r = artifact.record(trail_id)
                    row = (trail_text(r.kind, r.key), r.info, r.reference)
                    w_full.writerow(row)
                    if r.reference not in CUSTOM_REFERENCES:
                        w_public.writerow(row)
                for text, binary, custom in ((text_full, full, True), (text_public, public, False)):
                    text.flush()
                    text.detach()
                    binary.seek(0)
                    loaded.csv[custom] = binary
            return loaded.csv[with_custom]

    def close(self) -> None:
        with self._lock:
            self._loaded = None
