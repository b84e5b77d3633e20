"""The server's /metrics, for real: a `maltrail-engine server` on loopback fed by UDP datagrams
and HTTPS batches, its exposition checked by promtool and scraped by a real Prometheus (Debian's,
started here on loopback) that answers queries with the server's own counts; and a client
outside [server] metrics_networks refused.
"""

from __future__ import annotations

import http.client
import json
import subprocess


from tests.server_proc import ServerProc
from tests.test_metrics import _free_port, _prom_value, _tool, _until
from tests.test_server_link import batch, event, https, new_server, post, sensor_key


def scrape(server: ServerProc) -> tuple[int, str, str]:
    conn = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=30)
    conn.request("GET", "/metrics")
    response = conn.getresponse()
    text = response.read().decode()
    conn.close()
    return response.status, response.getheader("Content-Type", ""), text


def test_a_real_prometheus_scrapes_the_servers_intake_and_sensor_counts(tmp_path):
    prometheus, promtool = _tool("prometheus"), _tool("promtool")
    server = new_server(tmp_path, "sensor_silent_after_s = 3600\n")
    key = sensor_key(server, "s1")
    server.start()
    prom = None
    try:
        assert post(server, batch("s1", [event(i) for i in range(7)]), "Bearer s1:" + key)[0] == 200
        assert post(server, b"junk", "Bearer s1:" + key)[0] == 400
        server.send([b'"2026-01-01 00:00:09.000001" udp-1 192.0.2.7 1234 198.51.100.1 80 TCP URL evil.example/x '
                     b'"malware" (static)', b"not an event"])
        server.until(lambda h: h["intake"]["udp"]["stored"] == 1 and h["intake"]["udp"]["datagrams"] == 2)

        status, content_type, text = scrape(server)
        assert status == 200 and content_type.startswith("text/plain; version=0.0.4")
        check = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
        assert check.returncode == 0, check.stdout + check.stderr
        for line in ("maltrail_server_https_events_total 7.0", 'maltrail_server_https_refused_total{reason="not_zstd"} 1.0',
                     "maltrail_server_udp_datagrams_total 2.0", "maltrail_server_udp_stored_total 1.0",
                     "maltrail_server_sensors 2.0", "maltrail_server_sensors_silent 0.0",
                     'maltrail_server_sensor_silent{sensor="udp-1"} 0.0', "maltrail_server_store_ready 1.0"):
            assert line + "\n" in text, line
        assert 'maltrail_server_udp_refused_total{reason="' in text

        prom_port = _free_port()
        (tmp_path / "prometheus.yml").write_text(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
            "scrape_configs:\n  - job_name: mtserver\n    static_configs:\n"
            "      - targets: ['127.0.0.1:%d']\n" % server.http_port)
        with open(tmp_path / "prometheus.log", "w") as plog:
            prom = subprocess.Popen([prometheus, "--config.file=%s" % (tmp_path / "prometheus.yml"),
                                     "--storage.tsdb.path=%s" % (tmp_path / "tsdb"),
                                     "--web.listen-address=127.0.0.1:%d" % prom_port], stdout=plog, stderr=plog)
        api = "http://127.0.0.1:%d" % prom_port
        for expr, value in (("maltrail_server_https_events_total", 7), ("maltrail_server_udp_stored_total", 1),
                            ('maltrail_server_https_refused_total{reason="not_zstd"}', 1),
                            ('maltrail_server_sensor_silent{sensor="s1"}', 0), ("maltrail_server_sensors", 2),
                            ('up{job="mtserver"}', 1)):
            _until("Prometheus answering %s = %s" % (expr, value),
                   lambda: (lambda v: (v == value, v))(_prom_value(prom, api, expr)))
    finally:
        if prom is not None:
            prom.terminate()
            prom.wait(timeout=30)
        assert server.stop() == 0


def test_metrics_answer_only_the_configured_networks(tmp_path):
    server = ServerProc(tmp_path, extra='metrics_networks = ["192.0.2.0/24"]\n').start()
    try:
        status, _, text = scrape(server)
        assert status == 403 and "metrics_networks" in json.loads(text)["error"]
    finally:
        assert server.stop() == 0


def test_api_latencies_and_refusals_reach_metrics(tmp_path):
    """A logged-in user's API requests appear in /metrics as a latency histogram per endpoint and
    answers by status; a refused parameter is counted by its reason."""
    from server.auth.users import make_user_line
    from tests.test_server_api import Client
    server = ServerProc(tmp_path, extra="users = %s\n" % json.dumps([make_user_line("admin", "pw-metrics-1", 0, "")]))
    server.start()
    try:
        client = Client(server)
        assert client.login("admin", "pw-metrics-1")[0] == 200
        for _ in range(3):
            assert client.get("events")[0] == 200
        assert client.get("events", limit="many")[0] == 400
        status, _type, text = scrape(server)
        assert status == 200
        check = subprocess.run([_tool("promtool"), "check", "metrics"], input=text, capture_output=True, text=True,
                               timeout=60)
        assert check.returncode == 0, check.stdout + check.stderr
        assert 'maltrail_server_api_request_seconds_count{endpoint="events"} 4.0\n' in text
        assert 'maltrail_server_api_request_seconds_bucket{endpoint="events",le="+Inf"} 4.0\n' in text
        assert 'maltrail_server_api_responses_total{endpoint="events",status="200"} 3.0\n' in text
        assert 'maltrail_server_api_responses_total{endpoint="events",status="400"} 1.0\n' in text
        assert 'maltrail_server_api_refused_total{reason="' in text
    finally:
        assert server.stop() == 0
