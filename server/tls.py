"""TLS for the server's HTTP side, as Maltrail configures it: `[server] use_ssl` and `ssl_pem`,
one PEM file holding the private key and the certificate (chain).

Owns `server_context(cfg)`: the file read once, at start, while the server may still be root
(the key is typically root's, mode 0600; the server then drops to its own account and never
reads it again), checked, and turned into an `ssl.SSLContext` for the listening socket.

Refused, each with a message naming the key and the file: use_ssl without ssl_pem; a file that
is missing, unreadable, not a regular file, or writable or readable by every user (it holds
the private key: mode 0600 or 0640 with a group such as Debian's ssl-cert); a file without a
private key or without a certificate; a key that is encrypted (Maltrail's SSL_PEM never is, and
a server must start unattended); a key that does not belong to the certificate. ssl_pem without
use_ssl is ignored, as by Maltrail.

Defaults: TLS 1.2 and 1.3 only; for 1.2, forward-secret AEAD suites only (ECDHE with AES-GCM or
ChaCha20-Poly1305); no compression (CRIME); the server's suite order. TLS 1.3's suites are all
AEAD and forward secret already. Must not know HTTP, users or the store.
"""

from __future__ import annotations

import os
import ssl
import stat

__all__ = ["TlsError", "server_context", "TLS12_CIPHERS"]

TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!eNULL"
_MAX_PEM_BYTES = 1 << 20


class TlsError(Exception):
    """TLS cannot be set up as configured; the message names the key, the file and the fix."""


def _refuse_password() -> bytes:
    raise TlsError("encrypted")


def server_context(cfg) -> ssl.SSLContext | None:
    """The server's TLS context, or None when [server] use_ssl is false. Raises TlsError."""
    s = cfg.server
    if not s.use_ssl:
        return None
    path = s.ssl_pem
    if not path:
        raise TlsError('[server] use_ssl = true needs ssl_pem: one PEM file holding the private key and the '
                       'certificate (e.g. `cat server.key server.crt > server.pem; chmod 600 server.pem`)')
    where = "[server] ssl_pem = %r" % path
    try:
        # Symlinks are followed (certbot's live/ files are symlinks); nothing is ever written here.
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError as exc:
        raise TlsError("%s cannot be opened: %s" % (where, exc.strerror or exc)) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise TlsError("%s is not a regular file" % where)
        if st.st_mode & (stat.S_IROTH | stat.S_IWOTH):
            raise TlsError("%s holds the private key but every user may %s it (mode %04o); fix with `chmod o-rwx %s`"
                           % (where, "write" if st.st_mode & stat.S_IWOTH else "read", stat.S_IMODE(st.st_mode), path))
        data = os.read(fd, _MAX_PEM_BYTES + 1)
        if len(data) > _MAX_PEM_BYTES:
            raise TlsError("%s is larger than %d bytes: not a PEM key and certificate" % (where, _MAX_PEM_BYTES))
        if b"PRIVATE KEY-----" not in data:
            raise TlsError("%s holds no private key (a PEM block '-----BEGIN ... PRIVATE KEY-----'); Maltrail's "
                           "SSL_PEM, like ours, is the key and the certificate in one file" % where)
        if b"-----BEGIN CERTIFICATE-----" not in data:
            raise TlsError("%s holds no certificate (a PEM block '-----BEGIN CERTIFICATE-----'); append it to "
                           "the key: the file is the key and the certificate together" % where)
        if b"ENCRYPTED" in data.split(b"PRIVATE KEY-----", 1)[0][-32:] or b"Proc-Type: 4,ENCRYPTED" in data:
            raise TlsError("%s holds an encrypted private key; the server starts unattended and cannot ask for its "
                           "passphrase: decrypt it (`openssl pkey -in KEY -out KEY.plain`)" % where)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
        context.set_ciphers(TLS12_CIPHERS)
        # The very file whose mode was checked, not whatever the path names a moment later.
        fd_path = "/proc/self/fd/%d" % fd
        try:
            context.load_cert_chain(fd_path, fd_path, password=_refuse_password)
        except TlsError:
            raise TlsError("%s holds an encrypted private key; the server starts unattended and cannot ask for its "
                           "passphrase: decrypt it (`openssl pkey -in KEY -out KEY.plain`)" % where) from None
        except ssl.SSLError as exc:
            reason = exc.reason or str(exc)
            if "KEY_VALUES_MISMATCH" in reason.upper():
                raise TlsError("%s: the private key does not belong to the certificate (they must be a pair: "
                               "the key the certificate was issued for)" % where) from None
            raise TlsError("%s cannot be used: %s" % (where, reason)) from None
        except OSError as exc:
            raise TlsError("%s cannot be read: %s" % (where, exc.strerror or exc)) from None
        return context
    finally:
        os.close(fd)
