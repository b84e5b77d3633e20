"""Least privilege for the server, through a real `maltrail-engine server` started as root (the
tests run as root): it binds, reads what it must, makes its store directory its account's, and
then runs as `[server] user` with no capabilities, still storing what it receives and still
keeping sessions; a store its account could not reach, or an account that does not exist, stops
the start with a sentence. Also: the "no users: loopback only" rule is the HTTP side's (the UDP
intake may listen anywhere), and a client sending its request slowly does not hold the server.
"""

from __future__ import annotations

import http.cookies
import json
import os
import pwd
import select
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

from server.auth.users import make_user_line
from tests.server_proc import ServerProc
from tests.test_corpus import console_script
from tests.test_server_intake import CASES, datagrams, tail_json, udp
from tests.test_server_tls import pem, pki, request, start_failure  # noqa: F401  (pki: the fixture)

PASSWORD = "correct horse battery staple"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the privilege drop is tested from root")


def status_of(pid: int) -> dict:
    out = {}
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            key, _, value = line.partition(":")
            out[key] = value.strip()
    return out


@pytest.fixture
def reachable_dir():
    """A directory an unprivileged account can reach (pytest's own are root's, mode 0700)."""
    path = Path(tempfile.mkdtemp(prefix="mt-server-priv-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def login(server: ServerProc) -> str:
    status, headers, body = request(server, "/api/v1/login", {"username": "admin", "password": PASSWORD})
    assert status == 200, body
    return http.cookies.SimpleCookie(headers["Set-Cookie"])["mt_session"].value


def test_started_as_root_it_runs_as_its_account_without_capabilities_and_still_works(reachable_dir, tmp_path,
                                                                                     pki):
    nobody = pwd.getpwnam("nobody")
    users = "users = [%s]\n" % json.dumps(make_user_line("admin", PASSWORD))
    store = reachable_dir / "store"
    # The PEM (root's, mode 0600, under a root-only directory) is read before the drop.
    server = ServerProc(tmp_path, log_dir=store, user="nobody", extra=users, tls=(pem(pki, tmp_path), pki.ca)).start()
    try:
        st = status_of(server.proc.pid)
        assert st["Uid"].split() == [str(nobody.pw_uid)] * 4
        assert st["Gid"].split() == [str(nobody.pw_gid)] * 4
        assert st["Groups"].split() in ([str(nobody.pw_gid)], [])
        for key in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
            assert int(st[key], 16) == 0, (key, st[key])
        assert st["NoNewPrivs"] == "1"
        assert "running as nobody (uid %d), no capabilities" % nobody.pw_uid in server.stderr()
        # It still stores (the day file and the day's index made as the account) ...
        server.send(datagrams())
        server.until(lambda h: udp(h)["stored"] == len(CASES))
        for path in [store, store / "index", *store.iterdir(), *(store / "index").iterdir()]:
            assert path.lstat().st_uid == nobody.pw_uid, path
        # ... and keeps sessions in its state database.
        cookie = login(server)
    finally:
        assert server.stop() == 0, server.stderr()
    # Started again as root over a directory that is now the account's: accepted, the session
    # survived the restart, and the store answers.
    again = ServerProc(tmp_path, log_dir=store, user="nobody", extra=users).start()
    try:
        status, _h, body = request(again, "/api/v1/session", headers={"Cookie": "mt_session=" + cookie})
        assert status == 200 and json.loads(body)["username"] == "admin"
        assert status_of(again.proc.pid)["CapEff"] == "0000000000000000"
        again.send(datagrams())     # into the day file and index the first run made
        again.until(lambda h: udp(h)["stored"] == len(CASES))
        # Every part of the HTTP side answers as the account (nothing it needs is imported or
        # opened late, where the account could not reach it).
        session = {"Cookie": "mt_session=" + cookie}
        day = "from=2026-11-24&to=2026-11-25"
        status, _h, body = request(again, "/api/v1/events?" + day, headers=session)
        assert status == 200 and len(json.loads(body)["events"]) == 2 * len(CASES), body
        for path in ("/api/v1/counts?" + day, "/api/v1/top?field=sources&" + day, "/api/v1/threats?" + day,
                     "/api/v1/sensors", "/events?date=2026-11-24", "/counts", "/metrics"):
            status, _h, body = request(again, path, headers=session)
            assert status == 200, (path, body)
        # No trail artifact in this configuration: check says so (503 with its reason), no crash.
        status, _h, body = request(again, "/api/v1/check?q=evil.example", headers=session)
        assert status == 503 and "artifact" in json.loads(body)["error"], (status, body)
    finally:
        assert again.stop() == 0, again.stderr()
    assert "!" not in "".join(l[:3] for l in again.stderr().splitlines()), again.stderr()
    assert len(tail_json(store)) == 2 * len(CASES)
    # `server reindex` from root works on the account's directory, and leaves it the account's.
    out = subprocess.run([console_script(), "server", "-c", str(again.config), "reindex"], capture_output=True,
                         text=True, timeout=120, env=dict(os.environ, TZ="UTC"))
    assert out.returncode == 0 and "reindexed %s: %d events" % (store, 2 * len(CASES)) in out.stderr, out.stderr
    for path in [store / "index", *(store / "index").iterdir()]:
        assert path.lstat().st_uid == nobody.pw_uid, path


def test_a_store_the_account_cannot_reach_stops_the_start_with_a_sentence(tmp_path):
    # tmp_path is under pytest's root-only (0700) directory: "nobody" could not reach a store there.
    err = start_failure(tmp_path, "", user="nobody")
    assert "[server] log_dir: the server runs as nobody" in err and "is not searchable by it" in err, err
    assert "Traceback" not in err


def test_an_account_that_does_not_exist_stops_the_start(tmp_path):
    err = start_failure(tmp_path, "", user="no-such-account-here")
    assert "[server] user = 'no-such-account-here': no such account" in err, err


def test_a_state_database_in_a_directory_not_the_accounts_is_refused(reachable_dir, tmp_path):
    shared = reachable_dir / "shared"
    shared.mkdir(mode=0o755)
    err = start_failure(tmp_path, 'state_db = "%s"\n' % (shared / "state.sqlite"), user="nobody",
                        log_dir=reachable_dir / "store")
    assert "[server] state_db" in err and "must belong to nobody" in err, err


def test_with_no_users_http_stays_on_loopback_but_udp_may_listen_anywhere(tmp_path):
    # HTTP on every address with nobody able to log in: refused.
    refused = ServerProc(tmp_path, http_address="0.0.0.0")
    out = subprocess.run([console_script(), "server", "-c", str(refused.config)], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 1 and "no users are configured" in out.stderr, out.stderr
    # The UDP intake on every address: sensors elsewhere deliver there; it shows nobody anything.
    server = ServerProc(tmp_path)
    server.config.write_text(server.config.read_text().replace('udp_address = "127.0.0.1"', 'udp_address = "0.0.0.0"'))
    server.start()
    try:
        assert "UDP intake on 0.0.0.0 port %d" % server.udp_port in server.stderr()
        server.send(datagrams())
        server.until(lambda h: udp(h)["stored"] == len(CASES))
    finally:
        assert server.stop() == 0, server.stderr()


def _connect(server: ServerProc) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.http_port), timeout=60)


def test_a_client_sending_its_headers_slowly_is_cut_off_and_others_are_served(tmp_path):
    server = ServerProc(tmp_path, extra="header_timeout_s = 1\n").start()
    try:
        slow = [_connect(server) for _ in range(20)]
        for sock in slow:
            sock.sendall(b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\nX-Slow: ")     # never the blank line
        # Served meanwhile: the slow ones hold no worker.
        assert server.health()["status"] == "ok"
        # The slow clients keep trickling a header in, a byte at a time (far below any header
        # size limit); the server closes every one of them without an answer all the same (the
        # deadline runs from the connection's start, not from its last byte). Bounded: at most
        # 300 rounds of a byte each.
        open_socks, answered = set(slow), []
        for _round in range(300):
            if not open_socks:
                break
            for sock in list(open_socks):
                try:
                    sock.sendall(b"a")
                except (BrokenPipeError, ConnectionResetError):
                    open_socks.discard(sock)
            readable, _, _ = select.select(list(open_socks), [], [], 0.2)
            for sock in readable:
                try:
                    data = sock.recv(4096)
                except ConnectionResetError:
                    data = b""
                if data:
                    answered.append(data)
                open_socks.discard(sock)
        assert not open_socks, "%d slow connections still open" % len(open_socks)
        assert answered == []
        for sock in slow:
            sock.close()
    finally:
        assert server.stop() == 0, server.stderr()


def test_a_body_that_never_completes_is_cut_off(tmp_path):
    users = "users = [%s]\n" % json.dumps(make_user_line("admin", PASSWORD))
    server = ServerProc(tmp_path, extra=users + "body_timeout_s = 1\n").start()
    try:
        sock = _connect(server)
        sock.sendall(b"POST /api/v1/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 1000\r\n\r\n{\"username\": ")
        sock.settimeout(60)
        got = b""
        try:
            while True:
                piece = sock.recv(4096)
                if not piece:
                    break
                got += piece
        except ConnectionResetError:
            pass
        sock.close()
        assert not got.startswith(b"HTTP/1.1 200"), got       # closed, not answered as a login
        # A whole login in one go is still served.
        status, _h, _b = request(server, "/api/v1/login", {"username": "admin", "password": PASSWORD})
        assert status == 200
        # Counted where an operator looks.
        status, _h, body = request(server, "/metrics")
        assert status == 200 and 'maltrail_server_http_refused_total{reason="slow body"} 1.0\n' in body.decode()
    finally:
        assert server.stop() == 0, server.stderr()


def test_user_root_keeps_root_but_no_capability(tmp_path):
    server = ServerProc(tmp_path, user="root").start()
    try:
        st = status_of(server.proc.pid)
        assert st["Uid"].split() == ["0"] * 4
        for key in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
            assert int(st[key], 16) == 0, (key, st[key])
        assert st["NoNewPrivs"] == "1"
        server.send(datagrams())
        server.until(lambda h: udp(h)["stored"] == len(CASES))
    finally:
        assert server.stop() == 0, server.stderr()
