"""TLS on the server's HTTP side, through a real `maltrail-engine server` on loopback: `[server]
use_ssl` with `ssl_pem` (key and certificate in one file, as Maltrail's SSL_PEM), a certificate
from a test CA made here (tests/collectors.py Pki), verified by the client; TLS 1.2 at least; the
session cookie Secure and HSTS sent under TLS; and every unusable PEM refused at start with a
message naming the key and the file.
"""

from __future__ import annotations

import http.cookies
import json
import os
import socket
import ssl
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from server.auth.users import make_user_line
from tests.collectors import Pki
from tests.server_proc import ServerProc
from tests.test_corpus import console_script

PASSWORD = "correct horse battery staple"


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return Pki(tmp_path_factory.mktemp("pki"))


def pem(pki: Pki, directory: Path, key: Path | None = None, cert: Path | None = None, mode: int = 0o600,
        name: str = "server.pem") -> Path:
    """Maltrail's SSL_PEM: the private key and the certificate in one file."""
    path = directory / name
    path.write_bytes((key or pki.server_key).read_bytes() + (cert or pki.server_cert).read_bytes())
    path.chmod(mode)
    return path


def request(server: ServerProc, path: str, body=None, headers=None, context=None):
    """(status, headers, body) of one request to the server, over its own scheme."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(server.url + path, data=data, headers=dict(
        {"Content-Type": "application/json"} if data is not None else {}, **(headers or {})))
    try:
        with urllib.request.urlopen(req, timeout=30, context=context or server.ssl_context()) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()


def start_failure(tmp_path: Path, extra: str, status: int = 1, **kw) -> str:
    """A server that must refuse to start: its exit status is `status` (1: refused at start, 2:
    by the configuration check) and its stderr is returned."""
    server = ServerProc(tmp_path, extra=extra, **kw)
    out = subprocess.run([console_script(), "server", "-c", str(server.config)], capture_output=True, text=True,
                         timeout=60, env=dict(os.environ, TZ="UTC"))
    assert out.returncode == status, out.stderr
    return out.stderr


def test_https_with_a_certificate_the_client_verifies(pki, tmp_path):
    server = ServerProc(tmp_path, tls=(pem(pki, tmp_path), pki.ca)).start()
    try:
        h = server.health()                           # over https, verified against the test CA
        assert h is not None and h["status"] == "ok"
        with socket.create_connection(("127.0.0.1", server.http_port), timeout=30) as raw:
            with server.ssl_context().wrap_socket(raw, server_hostname="localhost") as tls:
                assert tls.version() in ("TLSv1.2", "TLSv1.3")
                assert tls.getpeercert()["subject"] == ((("commonName", "localhost"),),)
        # Plain HTTP to the HTTPS port gets no HTTP answer.
        with pytest.raises((urllib.error.URLError, ConnectionError, OSError)) as caught:
            urllib.request.urlopen("http://127.0.0.1:%d/api/v1/health" % server.http_port, timeout=30).read()
        assert not isinstance(caught.value, urllib.error.HTTPError)
        assert "HTTPS on 127.0.0.1" in server.stderr()
    finally:
        assert server.stop() == 0, server.stderr()


def test_nothing_older_than_tls_1_2_is_spoken(pki, tmp_path):
    server = ServerProc(tmp_path, tls=(pem(pki, tmp_path), pki.ca)).start()
    try:
        # TLS 1.2 exactly: accepted, and only with a forward-secret AEAD suite.
        ctx = server.ssl_context()
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        with socket.create_connection(("127.0.0.1", server.http_port), timeout=30) as raw:
            with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
                name, version, _bits = tls.cipher()
                assert version == "TLSv1.2" and name.startswith("ECDHE-") and ("GCM" in name or "CHACHA" in name)
        # A client offering only CBC suites without forward secrecy finds nothing in common.
        ctx = server.ssl_context()
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        ctx.set_ciphers("AES128-SHA:AES256-SHA")
        with socket.create_connection(("127.0.0.1", server.http_port), timeout=30) as raw:
            with pytest.raises(ssl.SSLError):
                ctx.wrap_socket(raw, server_hostname="localhost")
        # TLS 1.1 and older: refused (where this OpenSSL can still offer them at all).
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        try:
            ctx.minimum_version = ssl.TLSVersion.TLSv1
            ctx.maximum_version = ssl.TLSVersion.TLSv1_1
            ctx.set_ciphers("ALL:@SECLEVEL=0")
        except (ValueError, ssl.SSLError):
            pytest.skip("this OpenSSL cannot offer TLS 1.1")
        with socket.create_connection(("127.0.0.1", server.http_port), timeout=30) as raw:
            with pytest.raises(ssl.SSLError):
                ctx.wrap_socket(raw)
    finally:
        assert server.stop() == 0, server.stderr()


def test_under_tls_the_session_cookie_is_secure_and_hsts_is_sent(pki, tmp_path):
    line = make_user_line("admin", PASSWORD)
    server = ServerProc(tmp_path, tls=(pem(pki, tmp_path), pki.ca), extra="users = [%s]\n" % json.dumps(line)).start()
    try:
        status, headers, body = request(server, "/api/v1/login", {"username": "admin", "password": PASSWORD})
        assert status == 200, body
        assert headers["Strict-Transport-Security"].startswith("max-age=")
        cookie = http.cookies.SimpleCookie(headers["Set-Cookie"])["mt_session"]
        assert cookie["secure"] and cookie["httponly"] and cookie["samesite"].lower() == "strict"
        status, headers, body = request(server, "/api/v1/session", headers={"Cookie": "mt_session=" + cookie.value})
        assert status == 200 and json.loads(body)["username"] == "admin"
        assert headers["Strict-Transport-Security"].startswith("max-age=")
    finally:
        assert server.stop() == 0, server.stderr()


def test_without_tls_there_is_no_secure_flag_and_no_hsts(tmp_path):
    line = make_user_line("admin", PASSWORD)
    server = ServerProc(tmp_path, extra="users = [%s]\n" % json.dumps(line)).start()
    try:
        status, headers, _body = request(server, "/api/v1/login", {"username": "admin", "password": PASSWORD})
        assert status == 200
        assert "Strict-Transport-Security" not in headers
        assert not http.cookies.SimpleCookie(headers["Set-Cookie"])["mt_session"]["secure"]
    finally:
        assert server.stop() == 0, server.stderr()


def test_use_ssl_without_ssl_pem_is_refused(tmp_path):
    err = start_failure(tmp_path, "use_ssl = true\n", status=2)      # the configuration check says it
    assert "[server] use_ssl = true needs [server] ssl_pem" in err


@pytest.mark.parametrize("case", ["missing", "readable by all", "writable by all", "no key", "no certificate",
                                  "mismatched", "encrypted", "directory", "garbage"])
def test_an_unusable_pem_is_refused_naming_the_key_and_the_file(case, pki, tmp_path):
    from cryptography.hazmat.primitives import serialization
    path = tmp_path / "server.pem"
    expected = {
        "missing": "cannot be opened: No such file or directory",
        "readable by all": "every user may read it (mode 0644)",
        "writable by all": "every user may write it (mode 0602)",
        "no key": "holds no private key",
        "no certificate": "holds no certificate",
        "mismatched": "the private key does not belong to the certificate",
        "encrypted": "holds an encrypted private key",
        "directory": "is not a regular file",
        "garbage": "cannot be used",
    }[case]
    if case == "readable by all":
        pem(pki, tmp_path, mode=0o644)
    elif case == "writable by all":
        pem(pki, tmp_path, mode=0o602)
    elif case == "no key":
        path.write_bytes(pki.server_cert.read_bytes())
        path.chmod(0o600)
    elif case == "no certificate":
        path.write_bytes(pki.server_key.read_bytes())
        path.chmod(0o600)
    elif case == "mismatched":
        pem(pki, tmp_path, key=pki.client_key)        # another key than the certificate's
    elif case == "encrypted":
        key = serialization.load_pem_private_key(pki.server_key.read_bytes(), None)
        path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.BestAvailableEncryption(b"secret"))
                         + pki.server_cert.read_bytes())
        path.chmod(0o600)
    elif case == "directory":
        path.mkdir()
    elif case == "garbage":
        path.write_bytes(b"-----BEGIN PRIVATE KEY-----\nnot base64 at all\n-----END PRIVATE KEY-----\n"
                         + pki.server_cert.read_bytes())
        path.chmod(0o600)
    err = start_failure(tmp_path, 'use_ssl = true\nssl_pem = "%s"\n' % path)
    assert "[server] ssl_pem = %r" % str(path) in err and expected in err, err
    assert "Traceback" not in err


def test_ssl_pem_without_use_ssl_is_ignored_as_by_maltrail(pki, tmp_path):
    server = ServerProc(tmp_path, extra='ssl_pem = "%s"\n' % (tmp_path / "absent.pem")).start()
    try:
        assert server.health()["status"] == "ok"       # plain HTTP
    finally:
        assert server.stop() == 0, server.stderr()
