"""A real `maltrail-engine server` process for tests: loopback ports chosen free, its own store
directory and config, health polled from its own counters (never a clock)."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from tests.clickhouse import clickhouse_server  # noqa: F401  (the session fixture)
from tests.collectors import free_port
from tests.test_corpus import console_script

WAIT_LIMIT_S = 60


class ServerProc:
    """A `maltrail-engine server` on loopback ports chosen free, with its own store directory.
    `extra`: more lines of its [server] section (users, store = "clickhouse", ...); `more`: other
    sections after it. `user`: [server] user; "root" by default, because pytest's temporary
    directories are 0700 and root's, so an unprivileged account could not reach a store under
    them (tests/test_server_privileges.py runs the real drop). `tls`: (PEM, CA certificate; None: not verified by the test's own requests):
    HTTPS with that key and certificate, health checked against that CA."""

    def __init__(self, tmp_path: Path, log_dir: Path | None = None, http_address: str = "127.0.0.1",
                 extra: str = "", user: str | None = "root", tls: tuple | None = None, more: str = ""):
        self.log_dir = log_dir or tmp_path / "store"
        self.http_port = free_port()
        self.udp_port = free_port(socket.SOCK_DGRAM)
        self.config = tmp_path / ("server-%d.toml" % self.http_port)
        self.tls = tls
        if user is not None:
            extra = 'user = "%s"\n%s' % (user, extra)
        if tls is not None:
            extra = 'use_ssl = true\nssl_pem = "%s"\n%s' % (tls[0], extra)
        self.config.write_text(
            '[server]\nhttp_address = "%s"\nhttp_port = %d\nudp_address = "127.0.0.1"\nudp_port = %d\n'
            'log_dir = "%s"\n%s\n%s' % (http_address, self.http_port, self.udp_port, self.log_dir, extra, more))
        self.proc = None
        self.stderr_path = tmp_path / ("server-%d.err" % self.http_port)

    @property
    def url(self) -> str:
        return "%s://127.0.0.1:%d" % ("https" if self.tls else "http", self.http_port)

    def ssl_context(self):
        import ssl
        if not self.tls:
            return None
        if self.tls[1] is None:         # a certificate no CA of the test's vouches for (a rogue server's)
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            return context
        return ssl.create_default_context(cafile=str(self.tls[1]))

    def start(self, wait: bool = True) -> "ServerProc":
        self._err = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen([console_script(), "server", "-c", str(self.config)],
                                     stderr=self._err, stdout=subprocess.DEVNULL, env=dict(os.environ, TZ="UTC"))
        if wait:
            self.until(lambda h: True)
        return self

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def health(self) -> dict | None:
        try:
            with urllib.request.urlopen(self.url + "/api/v1/health", timeout=10, context=self.ssl_context()) as r:
                return json.loads(r.read())
        except OSError:
            return None

    def until(self, predicate, indexed: bool = True) -> dict:
        """Poll health until predicate(health) holds (the server's own counters, not a clock)
        and, unless indexed=False, in the same answer the index has caught up with the log: the
        intake counts an event stored once it is in the log, and the indexer process
        (server/indexer.py) indexes it a little later, so a test that waited for `stored` then
        finds every one of those events in the API's answers."""
        limit = time.monotonic() + WAIT_LIMIT_S
        while True:
            assert self.proc.poll() is None, "the server exited: %s" % self.stderr()
            h = self.health()
            if h is not None and predicate(h) and (not indexed or index_caught_up(h)):
                return h
            assert time.monotonic() < limit, "the server never got there: %s\n%s" % (h, self.stderr())
            time.sleep(0.05)

    def wait_indexed(self) -> dict:
        """Wait until everything the server counted stored is indexed (queries see it)."""
        return self.until(lambda h: True)

    def send(self, payloads) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for p in payloads:
                s.sendto(p, ("127.0.0.1", self.udp_port))

    def stop(self, sig=signal.SIGTERM) -> int:
        self.proc.send_signal(sig)
        rc = self.proc.wait(timeout=WAIT_LIMIT_S)
        self._err.close()
        return rc


def index_caught_up(health: dict) -> bool:
    """Whether a health answer says the index holds everything the log held when it was asked."""
    return health["store"].get("index_lag_events", 0) == 0


def clickhouse_extra(clickhouse, database: str) -> str:
    """The [server] lines that put a server's store in `database` of a test ClickHouse
    (tests/clickhouse.py's clickhouse_server fixture)."""
    return ('store = "clickhouse"\nclickhouse_url = %s\nclickhouse_database = %s\nclickhouse_user = %s\n'
            'clickhouse_password = %s\n' % tuple(json.dumps(v) for v in (
                clickhouse.url.rstrip("/"), database, clickhouse.user, clickhouse.password)))


@pytest.fixture(params=["sqlite", "clickhouse"])
def backend_extra(request):
    """Each backend in turn, as the [server] lines selecting it: every API test runs on both.
    A ClickHouse store gets a database of its own, dropped afterwards."""
    if request.param == "sqlite":
        yield ""
        return
    server = request.getfixturevalue("clickhouse_server")
    database = "t_" + uuid.uuid4().hex[:12]
    yield clickhouse_extra(server, database)
    basic = base64.b64encode(("%s:%s" % (server.user, server.password)).encode()).decode()
    req = urllib.request.Request(server.url, data=("DROP DATABASE IF EXISTS " + database).encode(),
                                 headers={"Authorization": "Basic " + basic})
    urllib.request.urlopen(req, timeout=30).close()
