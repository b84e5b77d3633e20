"""A real ClickHouse for the store tests: Debian's `clickhouse-server` (18.16) started in the
foreground on loopback, one per test session.

`clickhouse_server` (a session fixture; import it into a test module) writes a config and a users
file under a temporary directory of its own, points the data directory there, binds only the HTTP
interface on a free loopback port (18.16 opens its native port only when the config names one, and
no test needs it), waits until `SELECT 1` answers over HTTP and stops the server at the end of the
session. It runs as the user the tests run as (root here: clickhouse-server does not insist on its
`clickhouse` account; it needs only its config, the data directory and the port). The server's
time zone is set to Asia/Kathmandu (UTC+05:45) on purpose: the store must place days and hours by
its own configured zone, never by the server's.

Two users: `default` with no password (loopback only) and `maltrail` with CLICKHOUSE_PASSWORD, so
the client's authentication is exercised. Skips, saying why, only when the binary is not installed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from typing import NamedTuple

import pytest

CLICKHOUSE_SERVER = shutil.which("clickhouse-server") or "/usr/sbin/clickhouse-server"
CLICKHOUSE_USER = "maltrail"
CLICKHOUSE_PASSWORD = "s3cret 'quoted\" pw"
SERVER_TIMEZONE = "Asia/Kathmandu"
_START_LIMIT_S = 60.0       # a bound on waiting, not an assertion of speed


class ClickHouse(NamedTuple):
    url: str                # http://127.0.0.1:PORT/
    user: str
    password: str
    directory: str
    version: str


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _xml_text(s: str) -> str:
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def _write_config(directory: str, port: int) -> str:
    data = os.path.join(directory, "data") + "/"
    os.makedirs(data, mode=0o700)
    config = os.path.join(directory, "config.xml")
    with open(config, "w") as f:
        f.write("""<?xml version="1.0"?>
<yandex>
    <logger><level>warning</level><console>1</console></logger>
    <http_port>%(port)d</http_port>
    <listen_host>127.0.0.1</listen_host>
    <path>%(data)s</path>
    <tmp_path>%(data)stmp/</tmp_path>
    <user_files_path>%(data)suser_files/</user_files_path>
    <format_schema_path>%(data)sformat_schemas/</format_schema_path>
    <users_config>users.xml</users_config>
    <default_profile>default</default_profile>
    <default_database>default</default_database>
    <mark_cache_size>268435456</mark_cache_size>
    <timezone>%(tz)s</timezone>
</yandex>
""" % {"port": port, "data": data, "tz": SERVER_TIMEZONE})
    with open(os.path.join(directory, "users.xml"), "w") as f:
        f.write("""<?xml version="1.0"?>
<yandex>
    <profiles><default></default></profiles>
    <users>
        <default><password></password><networks><ip>127.0.0.1</ip></networks>
            <profile>default</profile><quota>default</quota></default>
        <%(user)s><password>%(pw)s</password><networks><ip>127.0.0.1</ip></networks>
            <profile>default</profile><quota>default</quota></%(user)s>
    </users>
    <quotas><default></default></quotas>
</yandex>
""" % {"user": CLICKHOUSE_USER, "pw": _xml_text(CLICKHOUSE_PASSWORD)})
    return config


def _ask(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url + "?query=SELECT%20version()", timeout=5) as resp:
            return resp.read().decode().strip()
    except (urllib.error.URLError, OSError):
        return None


class ClickHouseStartError(RuntimeError):
    """clickhouse-server exited or did not answer; the message holds the end of its output."""


@contextlib.contextmanager
def running_clickhouse():
    """A clickhouse-server on a free loopback port with its data in a new temporary directory,
    answering `SELECT version()` over HTTP; stopped (SIGTERM, then SIGKILL) and removed on exit.
    Also used by bench/clickhouse_store.py."""
    directory = tempfile.mkdtemp(prefix="clickhouse-test-")
    port = _free_port()
    config = _write_config(directory, port)
    log = open(os.path.join(directory, "server.log"), "wb")
    proc = subprocess.Popen([CLICKHOUSE_SERVER, "--config-file=" + config], cwd=directory,
                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    url = "http://127.0.0.1:%d/" % port
    try:
        deadline = time.monotonic() + _START_LIMIT_S
        version = None
        while version is None:
            if proc.poll() is not None or time.monotonic() > deadline:
                log.flush()
                with open(log.name, "rb") as f:
                    tail = f.read()[-3000:].decode("utf-8", "replace")
                raise ClickHouseStartError("clickhouse-server did not answer on %s (exit %s):\n%s"
                                           % (url, proc.poll(), tail))
            version = _ask(url)
            if version is None:
                time.sleep(0.05)
        yield ClickHouse(url, CLICKHOUSE_USER, CLICKHOUSE_PASSWORD, directory, version)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def clickhouse_server():
    if not os.access(CLICKHOUSE_SERVER, os.X_OK):
        pytest.skip("needs Debian's clickhouse-server (bootstrap.sh installs it: apt-get install clickhouse-server)")
    try:
        with running_clickhouse() as server:
            yield server
    except ClickHouseStartError as exc:
        pytest.fail(str(exc))
