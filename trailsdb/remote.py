"""Trails from a server: the signed artifact a maltrail-engine server publishes, and a sensor's
download of it (`[sensor] update_server`).

Owns the signed manifest (its format, how it is signed and verified: `make_manifest`,
`sign_manifest`, `verify_manifest`) and `download_update`, what `trails update` runs instead of
fetching feeds when `[sensor] update_server` is set. A download:

1. fetches the manifest (`<server>/trails/artifact.sig`, a small JSON document) and checks its
   Ed25519 signature against the key pinned in `[sensor] update_server_key`: nothing the server
   (or anyone between) sends is believed before that;
2. compares the manifest's SHA-256 with the artifact in place: the same bytes are "unchanged";
3. fetches the artifact (`<server>/trails/artifact`) into a temporary file beside
   `[all] trails_artifact`, at most the manifest's size, and checks its size and SHA-256 against
   the signed manifest, then every section's checksum and the generation and trail count the
   manifest names (matchers.Artifact);
4. publishes it with a rename (atomic: the path holds the old artifact or the new one, whole).

Any failure (no answer, a bad signature, a truncated or altered download) is refused with the
reason and leaves the artifact in place untouched; the running sensor's reload (SIGHUP, or the
update child's exit 0) then takes the new file through its own checks.

Signing: the manifest is canonical JSON text; the signature is Ed25519 over its UTF-8 bytes. The
key is written `ed25519:<base64 of the 32-byte public key>`. Must not: capture, reload a running
sensor, hold the server's private key, or write anywhere but the artifact's directory.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import time
from dataclasses import dataclass
from typing import Callable
from urllib.parse import urlsplit

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from matchers.artifact import Artifact, ArtifactError
from trailsdb.feeds import FetchSettings
from trailsdb.feeds.fetch import fetch

__all__ = ["MANIFEST_FORMAT", "KEY_PREFIX", "RemoteError", "RemoteReport", "artifact_urls", "public_key_text",
           "parse_public_key", "make_manifest", "sign_manifest", "verify_manifest", "download_update"]

MANIFEST_FORMAT = "maltrail-engine-artifact/1"
KEY_PREFIX = "ed25519:"
# The signed document is a few hundred bytes; an artifact of the 1.6M-row set is ~150 MB.
MAX_MANIFEST_BYTES = 64 * 1024
MAX_ARTIFACT_BYTES = 4 << 30
_HASH_CHUNK_BYTES = 1 << 20

Log = Callable[[str, str], None]


class RemoteError(Exception):
    """A download that cannot be adopted; the message says why (and the old trails stay)."""


def artifact_urls(update_server: str) -> tuple[str, str]:
    """(manifest URL, artifact URL) of a server: its base URL, or Maltrail's UPDATE_SERVER form
    ending in /trails (what `config import` carries over), which names the same place."""
    base = update_server.strip().rstrip("/")
    if not base.endswith("/trails"):
        base += "/trails"
    return base + "/artifact.sig", base + "/artifact"


def public_key_text(key: Ed25519PublicKey) -> str:
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
    return KEY_PREFIX + base64.b64encode(key.public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()


def parse_public_key(text: str) -> Ed25519PublicKey:
    """The key of `ed25519:<base64>`; RemoteError saying what is wrong otherwise."""
    text = (text or "").strip()
    if not text:
        raise RemoteError("[sensor] update_server_key is empty: pin the server's key (the server prints it at "
                          "start, and serves it at /trails/artifact.key) so a download can be verified")
    if not text.startswith(KEY_PREFIX):
        raise RemoteError("[sensor] update_server_key must start with %r" % KEY_PREFIX)
    try:
        raw = base64.b64decode(text[len(KEY_PREFIX):], validate=True)
    except (binascii.Error, ValueError):
        raise RemoteError("[sensor] update_server_key: not base64 after %r" % KEY_PREFIX) from None
    if len(raw) != 32:
        raise RemoteError("[sensor] update_server_key: an Ed25519 key is 32 bytes, this one is %d" % len(raw))
    return Ed25519PublicKey.from_public_bytes(raw)


def _sha256_fd(fd: int, size: int) -> str:
    digest = hashlib.sha256()
    at = 0
    while at < size:
        chunk = os.pread(fd, min(_HASH_CHUNK_BYTES, size - at), at)
        if not chunk:
            break
        digest.update(chunk)
        at += len(chunk)
    return digest.hexdigest()


def make_manifest(fd: int, artifact: Artifact, signed_s: int) -> dict:
    """What the server signs about the artifact open at `fd` (already verified as `artifact`)."""
    size = os.fstat(fd).st_size
    return {"format": MANIFEST_FORMAT, "size_bytes": size, "sha256": _sha256_fd(fd, size),
            "generation": artifact.generation, "trails": artifact.trail_count, "created_s": artifact.created_s,
            "signed_s": signed_s}


def sign_manifest(manifest: dict, key: Ed25519PrivateKey) -> bytes:
    """The document served at /trails/artifact.sig: the manifest as text, its signature, and
    the public key (informative only: a sensor verifies against its pinned key)."""
    text = json.dumps(manifest, sort_keys=True, separators=(",", ":"))
    signature = key.sign(text.encode())
    return json.dumps({"manifest": text, "signature": base64.b64encode(signature).decode(),
                       "key": public_key_text(key.public_key())}, indent=1).encode() + b"\n"


def verify_manifest(document: bytes, key: Ed25519PublicKey) -> dict:
    """The manifest of a signed document, once its signature holds; RemoteError otherwise."""
    try:
        doc = json.loads(document)
        text, signature = doc["manifest"], base64.b64decode(doc["signature"], validate=True)
        if not isinstance(text, str):
            raise TypeError("manifest is not text")
    except (ValueError, KeyError, TypeError, binascii.Error):
        raise RemoteError("the server's artifact signature document is not one (not JSON with a manifest and "
                          "a signature)") from None
    try:
        key.verify(signature, text.encode())
    except InvalidSignature:
        raise RemoteError("BAD SIGNATURE: the artifact manifest is not signed by the pinned key "
                          "([sensor] update_server_key); refused") from None
    try:
        manifest = json.loads(text)
        ok = (manifest.get("format") == MANIFEST_FORMAT and isinstance(manifest.get("sha256"), str)
              and len(manifest["sha256"]) == 64 and all(isinstance(manifest.get(k), int) and manifest[k] >= 0
                                                        for k in ("size_bytes", "generation", "trails")))
    except (ValueError, AttributeError):
        ok = False
    if not ok:
        raise RemoteError("the signed manifest is not of format %s (a newer server?)" % MANIFEST_FORMAT)
    if manifest["size_bytes"] > MAX_ARTIFACT_BYTES:
        raise RemoteError("the signed manifest names an artifact of %d bytes, over the %d accepted"
                          % (manifest["size_bytes"], MAX_ARTIFACT_BYTES))
    return manifest


@dataclass
class RemoteReport:
    ok: bool = False
    published: bool = False
    unchanged: bool = False
    failure: str = ""
    output: str = ""
    server: str = ""
    generation: int = 0
    trails: int = 0
    size_bytes: int = 0
    seconds: float = 0.0

    def summary(self) -> str:
        if self.published:
            what = "published %s generation %d: %d trails (%d bytes, signature verified)" % (
                self.output, self.generation, self.trails, self.size_bytes)
        elif self.unchanged:
            what = "unchanged: %s already holds the server's generation %d (%d trails)" % (
                self.output, self.generation, self.trails)
        else:
            what = "FAILED, kept the current artifact %s: %s" % (self.output, self.failure)
        return "trails from %s: %s; %.1f s" % (self.server, what, self.seconds)


def _current_sha256(path: str) -> str:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return ""
    try:
        return _sha256_fd(fd, os.fstat(fd).st_size)
    finally:
        os.close(fd)


def download_update(update_server: str, key_text: str, output: str, settings: FetchSettings, log: Log,
                    directory_problem: Callable[[str], str | None] | None = None) -> RemoteReport:
    """One download (module docstring). Never raises for a failed download: the report says."""
    started = time.monotonic()
    report = RemoteReport(output=output, server=update_server)
    try:
        _download(update_server, key_text, output, settings, log, directory_problem, report)
        report.ok = True
    except RemoteError as exc:
        report.failure = str(exc)
        log("!", "trail download failed, the current artifact %s is kept: %s" % (output, exc))
    report.seconds = time.monotonic() - started
    return report


def _download(update_server, key_text, output, settings, log, directory_problem, report) -> None:
    key = parse_public_key(key_text)
    scheme = urlsplit(update_server.strip()).scheme
    if scheme not in ("http", "https"):
        raise RemoteError("[sensor] update_server %r is not an http:// or https:// URL" % update_server)
    manifest_url, artifact_url = artifact_urls(update_server)
    out_dir = os.path.dirname(os.path.abspath(output))
    problem = directory_problem(out_dir) if directory_problem else None
    if problem:
        raise RemoteError("refusing to write %s: %s" % (output, problem))
    os.makedirs(out_dir, exist_ok=True)
    tmp = os.path.join(out_dir, ".%s.download-%d" % (os.path.basename(output), os.getpid()))
    try:
        os.unlink(tmp)      # a leftover of a killed download of this pid number
    except FileNotFoundError:
        pass
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    published = False
    try:
        with os.fdopen(os.dup(fd), "w+b") as sink:
            result = fetch(manifest_url, sink, settings, None, MAX_MANIFEST_BYTES)
            if not result.ok:
                raise RemoteError("%s: %s" % (manifest_url, result.reason or "no answer"))
            sink.seek(0)
            manifest = verify_manifest(sink.read(MAX_MANIFEST_BYTES + 1), key)
        report.generation, report.trails, report.size_bytes = (manifest["generation"], manifest["trails"],
                                                              manifest["size_bytes"])
        if _current_sha256(output) == manifest["sha256"]:
            report.unchanged = True
            return
        with os.fdopen(os.dup(fd), "w+b") as sink:
            result = fetch(artifact_url, sink, settings, None, manifest["size_bytes"])
            if not result.ok:
                raise RemoteError("%s: %s" % (artifact_url, result.reason or "no answer"))
            sink.flush()
        size = os.fstat(fd).st_size
        if size != manifest["size_bytes"]:
            raise RemoteError("%s: TRUNCATED download: %d bytes of the %d the signed manifest names"
                              % (artifact_url, size, manifest["size_bytes"]))
        if _sha256_fd(fd, size) != manifest["sha256"]:
            raise RemoteError("%s: the download's SHA-256 is not the signed one (altered in transit, or the server's "
                              "artifact changed between the two requests: the next update tries again)" % artifact_url)
        try:
            artifact = Artifact.from_fd(fd, artifact_url, verify=True)
        except ArtifactError as exc:
            raise RemoteError("the signed artifact does not load: %s" % exc) from None
        try:
            if (artifact.generation, artifact.trail_count) != (manifest["generation"], manifest["trails"]):
                raise RemoteError("the artifact's generation and trail count are not the signed ones")
        finally:
            artifact.close()
        os.fsync(fd)
        os.rename(tmp, output)
        published = True
        try:
            dir_fd = os.open(out_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError:
            pass
        report.published = True
        log("i", "trails from %s: generation %d, %d trails, signature verified" % (
            update_server, manifest["generation"], manifest["trails"]))
    except OSError as exc:
        raise RemoteError("cannot write %s: %s" % (output, exc.strerror or exc)) from None
    finally:
        os.close(fd)
        if not published:
            try:
                os.unlink(tmp)
            except OSError:
                pass
