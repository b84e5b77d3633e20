"""Every login attempt on a real `maltrail-engine server` reaches the collectors Maltrail's server
sends it to: a real rsyslog (Debian's, tests/collectors.py) receives the CEF `auth` record over
UDP and TLS ([sensor] syslog_server), a UDP socket receives the JSON object ([sensor]
logstash_server). The expected records are written here from Maltrail's documented layout
(core/httpd.py `__log_auth`), not from our renderer. A collector that cannot be reached never
holds a login up: the logins are answered while the records wait or are dropped, counted.
"""

from __future__ import annotations

import json
import re
import socket
import time
from importlib.metadata import version

import pytest

from server.auth.users import make_user_line
from tests.collectors import Rsyslog, UdpCollector, free_port
from tests.server_proc import ServerProc
from tests.test_server_tls import pki, request  # noqa: F401  (pki: the fixture)

PASSWORD = "correct horse battery staple"
HOST = socket.gethostname()
CEF_STAMP = r"[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d"


def cef_record(user: str, port: int, success: bool) -> str:
    """Maltrail's: `MMM DD HH:MM:SS HOST CEF:0|Maltrail|server|VERSION|auth|login success|1|src=IP
    spt=PORT duser=USER outcome=accepted` (login failure, 2, outcome=failed when refused): a
    regular expression, the time being the server's clock."""
    return ("%s %s CEF:0\\|Maltrail\\|server\\|%s\\|auth\\|login %s\\|%d\\|"
            "src=127\\.0\\.0\\.1 spt=%d duser=%s outcome=%s") % (
        CEF_STAMP, re.escape(HOST), re.escape(version("maltrail-engine")), "success" if success else "failure",
        1 if success else 2, port, re.escape(user), "accepted" if success else "failed")


def login_from(server: ServerProc, port: int, user: str, password: str) -> int:
    """One login from a chosen local port (so the record's src port is known): the HTTP status."""
    import http.client
    conn = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=60, source_address=("127.0.0.1", port))
    try:
        conn.request("POST", "/api/v1/login", json.dumps({"username": user, "password": password}),
                     {"Content-Type": "application/json"})
        return conn.getresponse().status
    finally:
        conn.close()


def test_every_login_attempt_reaches_rsyslog_as_cef_and_logstash_as_json(pki, tmp_path):
    rsyslog_udp, rsyslog_tls = free_port(socket.SOCK_DGRAM), free_port()
    logstash = UdpCollector()
    sensor = ('[sensor]\nsyslog_server = ["udp://127.0.0.1:%d", "tls://127.0.0.1:%d"]\nsyslog_ca_file = "%s"\n'
              'logstash_server = ["udp://127.0.0.1:%d"]\n' % (rsyslog_udp, rsyslog_tls, pki.ca, logstash.port))
    users = "users = [%s]\n" % json.dumps(make_user_line("admin", PASSWORD))
    with Rsyslog(tmp_path / "rsyslog", udp=rsyslog_udp, tls=rsyslog_tls, pki=pki) as rsyslog:
        server = ServerProc(tmp_path, extra=users, more=sensor).start()
        try:
            before_s = int(time.time())
            attempts = [(free_port(), "admin", "wrong password", False), (free_port(), "admin", PASSWORD, True),
                        (free_port(), "mallory|x=y", "guess", False)]
            for port, user, password, success in attempts:
                assert login_from(server, port, user, password) == (200 if success else 401)
            after_s = int(time.time()) + 1
            received = {kind: [r.decode() for r in rsyslog.wait_lines(kind, len(attempts))] for kind in ("udp", "tls")}
            got_json = [json.loads(d) for d in logstash.wait(len(attempts))]
        finally:
            assert server.stop() == 0, server.stderr()
    for kind, lines in received.items():
        assert len(lines) == len(attempts), (kind, lines)
        for line, (port, user, _password, success) in zip(lines, attempts):
            # CEF escapes "=" (and "\\") in an extension value; "|" stays as it is there.
            assert re.fullmatch(cef_record(user.replace("=", "\\="), port, success), line), (kind, line)
    for record, (port, user, _password, success) in zip(got_json, attempts):
        assert list(record) == ["timestamp", "sensor", "type", "outcome", "username", "src_ip", "src_port"]
        assert before_s <= record["timestamp"] <= after_s
        assert record == {"timestamp": record["timestamp"], "sensor": HOST, "type": "auth",
                          "outcome": "success" if success else "failure", "username": user,
                          "src_ip": "127.0.0.1", "src_port": port}
    logstash.close()


def test_a_collector_that_cannot_be_reached_holds_no_login_up(tmp_path):
    # A TCP Logstash input whose accept queue is full: the server's connection attempt hangs in
    # SYN retries (until its connect timeout) while the logins are answered.
    stuck = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    stuck.bind(("127.0.0.1", 0))
    stuck.listen(0)
    filler = socket.create_connection(stuck.getsockname(), timeout=30)   # takes the one queue place
    sensor = '[sensor]\nlogstash_server = ["tcp://127.0.0.1:%d"]\n' % stuck.getsockname()[1]
    users = "users = [%s]\n" % json.dumps(make_user_line("admin", PASSWORD))
    server = ServerProc(tmp_path, extra=users, more=sensor).start()
    try:
        statuses = [request(server, "/api/v1/login", {"username": "admin", "password": ""})[0] for _ in range(10)]
        assert set(statuses) <= {401, 429} and len(statuses) == 10   # every one answered (429: throttled)
        h = server.health()
        # Answered while the delivery thread is still stuck on the first record: the others wait
        # in the queue. (Those ten answers take milliseconds: no argon2 for an empty password;
        # the connection attempt they overtake lasts the transport's 5 s connect timeout.)
        records = h["auth_records"]
        assert records["sent"] == {"logstash_server tcp://127.0.0.1:%d" % stuck.getsockname()[1]: 0}
        assert records["queued"] >= 9, records
        status, _h, body = request(server, "/metrics")
        assert status == 200
        assert ('maltrail_server_auth_records_sent_total{destination="logstash_server tcp://127.0.0.1:%d"} 0.0\n'
                % stuck.getsockname()[1]) in body.decode()
    finally:
        assert server.stop() == 0, server.stderr()
        filler.close()
        stuck.close()


@pytest.mark.parametrize("layout", ["rfc5424"])
def test_the_rfc5424_layout_wraps_the_same_cef(layout, tmp_path):
    collector = UdpCollector()
    sensor = '[sensor]\nsyslog_server = ["udp://127.0.0.1:%d"]\nsyslog_format = "%s"\n' % (collector.port, layout)
    users = "users = [%s]\n" % json.dumps(make_user_line("admin", PASSWORD))
    server = ServerProc(tmp_path, extra=users, more=sensor).start()
    try:
        port = free_port()
        assert login_from(server, port, "admin", "nope") == 401
        record = collector.wait(1)[0].decode()
    finally:
        assert server.stop() == 0, server.stderr()
        collector.close()
    # facility auth (4) * 8 + warning (4) = 36; CEF severity 9 for a failure on the 0-10 scale.
    assert re.fullmatch(r"<36>1 \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}[+-]\d\d:\d\d %s maltrail-engine - - - "
                        r"CEF:0\|Maltrail\|server\|%s\|auth\|login failure\|9\|src=127\.0\.0\.1 spt=%d duser=admin "
                        r"outcome=failed" % (re.escape(HOST), re.escape(version("maltrail-engine")), port),
                        record), record
