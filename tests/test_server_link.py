"""Our sensors to our server over HTTP(S), for real: `maltrail-engine replay` with [sensor]
server_url sending to a real `maltrail-engine server` (tests/server_proc.py) on loopback.

- Maltrail's replay corpus replayed by a sensor arrives whole: the server's store holds exactly
  the sensor's own log (a condensed record as its events, server/sensors.py expand), on SQLite
  and on ClickHouse.
- The server SIGKILLed again and again while a sensor streams, and restarted: every event is in
  the store exactly once (both backends).
- The store's disk full (a small tmpfs under [server] log_dir): acknowledgements stop (503,
  counted), the sensor keeps its backlog, and once space returns every event arrives, once.
- Batches built here from the documented layout (docs/API.md): a repeat is acknowledged and not
  stored again; a wrong key, a body that is no batch, a record that is not an event, a sensor
  speaking for another, an oversized body: each refused with its status and counted reason.
- The registry: /api/v1/sensors (logged in) lists our sensor with what its batches said and a
  Maltrail sensor heard over UDP by the name in its events; silent ones are flagged there and in
  /metrics.
"""

from __future__ import annotations

import collections
import http.client
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import msgpack
import pytest
import zstandard

from config.load import load_config
from events.log import EventLogReader
from events.record import Event
from server.sensors import expand
from server.store import EventQuery, TimeRange, open_store
from server.auth.users import make_user_line
from tests.collectors import Sensor, dns_frames, logged_events
from tests.conftest import MALTRAIL_CORPUS, need_shared
from tests.server_proc import ServerProc, backend_extra  # noqa: F401 (a fixture)
from tests.test_corpus import console_script
from tests.test_forward_rsyslog import artifact  # noqa: F401 (a fixture)
from tests.test_server_store_indexer import wait_gone
from trailsdb.compile import build

PASSWORD = "link test password"
WAIT_S = 120


# -- helpers -------------------------------------------------------------------------------------
def new_server(tmp_path: Path, extra: str = "", log_dir: Path | None = None) -> ServerProc:
    server = ServerProc(tmp_path, log_dir=log_dir, extra=extra)
    os.makedirs(server.log_dir, mode=0o700, exist_ok=True)
    return server


def sensor_key(server: ServerProc, name: str) -> str:
    out = subprocess.run([console_script(), "server", "-c", str(server.config), "sensor", "add", name],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def url(server: ServerProc) -> str:
    return "%s://localhost:%d" % ("https" if server.tls else "http", server.http_port)


def stored_events(server: ServerProc) -> list[Event]:
    """Every event the server's store holds (the server stopped), through the store's own query."""
    store = open_store(load_config(str(server.config)))
    try:
        out, cursor = [], None
        while True:
            page = store.events(EventQuery(TimeRange(0, 1 << 62), limit=10_000, cursor=cursor))
            assert not page.partial
            out.extend(page.events)
            cursor = page.next_cursor
            if cursor is None:
                return out
    finally:
        store.close()


def comparable(events) -> collections.Counter:
    return collections.Counter(tuple(e) for e in events)


def until(what: str, check):
    limit = time.monotonic() + WAIT_S
    while True:
        found = check()
        if found:
            return found
        assert time.monotonic() < limit, "never: %s" % what
        time.sleep(0.05)


def https(health: dict) -> dict:
    return health["intake"]["https"]


def post(server: ServerProc, body: bytes, authorization: str | None, headers=None) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=60)
    h = dict(headers or {})
    if authorization is not None:
        h["Authorization"] = authorization
    conn.request("POST", "/api/v1/intake", body=body, headers=h)
    response = conn.getresponse()
    payload = response.read()
    conn.close()
    return response.status, json.loads(payload) if payload.startswith(b"{") else {}


def batch(sensor: str, events, file=("2026-01-01.events.zst", 7), first_done: int = 1, **fields) -> bytes:
    """A batch as docs/API.md lays it out: each event at place (offset 0, done i) of one file."""
    doc = {"v": 1, "sensor": sensor, "version": "test", "trails": "2026-01-01", "lag_s": 1.5,
           "files": [list(file)],
           "events": [[0, 0, first_done + i, list(e)] for i, e in enumerate(events)]}
    doc.update(fields)
    return zstandard.ZstdCompressor().compress(msgpack.packb(doc))


def event(i: int, sensor: str = "s1", src: str = "192.0.2.1") -> Event:
    ts = 1_767_225_600_000_000 + i * 1_000_000         # 2026-01-01T00:00:00Z + i s
    return Event(ts, sensor, src, 40000 + i, "198.51.100.9", 443, "TCP", "IP", "198.51.100.9",
                 "known attacker", "(static)", "high", 1, ts)


# -- a real sensor replaying Maltrail's corpus ---------------------------------------------------------
@pytest.fixture(scope="module")
def corpus_artifact(tmp_path_factory):
    need_shared(MALTRAIL_CORPUS)
    path = str(tmp_path_factory.mktemp("link-trails") / "trails.mtdb")
    build([str(MALTRAIL_CORPUS / "trails.csv")], path)
    return path


def test_a_sensor_replaying_the_corpus_fills_the_store_with_exactly_its_log(corpus_artifact, backend_extra, pki,
                                                                           tmp_path):
    """Over HTTPS: the server's own TLS listener, the sensor verifying it against the test CA."""
    from tests.test_server_tls import pem
    server = ServerProc(tmp_path, extra=backend_extra, tls=(pem(pki, tmp_path), pki.ca))
    os.makedirs(server.log_dir, mode=0o700, exist_ok=True)
    key = sensor_key(server, "corpus-1")
    server.start()
    conf = tmp_path / "sensor.toml"
    conf.write_text('[sensor]\nserver_url = "%s"\nserver_key = "%s"\nserver_ca_file = "%s"\n'
                    % (url(server), key, pki.ca))
    pcaps = sorted(str(p) for p in MALTRAIL_CORPUS.glob("*.pcap"))
    out = subprocess.run([console_script(), "replay", "-c", str(conf), "--trails", corpus_artifact,
                          "--log-dir", str(tmp_path / "sensor-log"), "--sensor-name", "corpus-1"] + pcaps,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    logged = list(EventLogReader().iter_dir(str(tmp_path / "sensor-log")))
    assert len(logged) > 50
    assert "forwarded to server_url %s: sent %d, failed deliveries 0" % (url(server), len(logged)) in out.stderr
    health = server.until(lambda h: True)
    assert https(health)["refused"] == {}
    assert server.stop() == 0
    expected = [e for record in logged for e in expand(record)]
    assert comparable(stored_events(server)) == comparable(expected)
    assert "corpus-1" in {e.sensor for e in expected}


# -- the server killed during intake --------------------------------------------------------------------
KILLS = 2


def test_a_server_killed_during_intake_stores_every_event_exactly_once(artifact, backend_extra, tmp_path):  # noqa: F811
    server = new_server(tmp_path, backend_extra)
    key = sensor_key(server, "fwd-test")
    h = server.start().until(lambda h: h["store"]["indexer"]["pid"] > 0)
    sensor = Sensor(tmp_path / "sensor", artifact, tmp_path / "sensor-log", server_url=url(server),
                    server_key=key).start()
    total = 0
    kills = interrupted = 0
    try:
        # Each round the indexer is frozen first, so the round's first batch is written to the log
        # (its intent recorded) and then waits for the index: a SIGKILL then lands inside it (the
        # store's ingest done, its places not yet), which the next start settles and says. Frozen
        # rather than timed, so the kill lands there on a loaded machine too.
        while kills < KILLS:
            indexer = h["store"]["indexer"]["pid"]
            os.kill(indexer, signal.SIGSTOP)
            sensor.feed(dns_frames(total, 5000))
            total += 5000
            server.until(lambda h: h["store"].get("index_lag_events", 0) > 0, indexed=False)
            server.stop(signal.SIGKILL)
            kills += 1
            wait_gone(indexer)                  # the killed server's keeper takes it along
            h = server.start().until(lambda h: h["store"]["indexer"]["pid"] > 0)
            if "was interrupted by a stop" in server.stderr():
                interrupted += 1
        sensor.feed(dns_frames(total, 5000))    # and a round with nothing in the way
        total += 5000
        sensor.wait_line(r"events: DNS %d\b" % total)
        code = sensor.finish()
    finally:
        if sensor.proc.poll() is None:
            sensor.proc.kill()
    assert code == 0, sensor.text()
    assert server.stop() == 0
    assert interrupted == KILLS, "%d of %d kills landed inside a batch" % (interrupted, kills)
    names = collections.Counter(e.trail for e in stored_events(server))
    assert sorted(names) == sorted("(f%d).evil-parent.net" % i for i in range(total))
    assert set(names.values()) == {1}, [n for n, c in names.items() if c > 1][:10]
    if not backend_extra:       # SQLite: the daily log, the source of truth, holds each once too
        assert collections.Counter(e["trail"] for e in logged_events(server.log_dir)) == names


# -- disk full under the store ---------------------------------------------------------------------------
@pytest.fixture
def small_disk(tmp_path):
    mount = tmp_path / "small"
    mount.mkdir(mode=0o700)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m,mode=0700", "tmpfs", str(mount)]).returncode:
        pytest.skip("needs to mount a tmpfs (root)")
    yield mount
    subprocess.run(["umount", "-l", str(mount)])


def fill(directory: Path) -> Path:
    """Fills the file system of `directory` to the last byte; returns the filler file."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        for size in (1 << 16, 1 << 10, 1):
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError:
                pass
    finally:
        os.close(fd)
    return filler


@pytest.mark.parametrize("state", ["on the full disk", "elsewhere"])
def test_a_full_disk_stops_acknowledgements_and_loses_nothing_once_space_returns(
        state, artifact, small_disk, tmp_path):  # noqa: F811
    # The state database full too (its default place), or only the event log and its index.
    extra = "" if state == "on the full disk" else 'state_db = "%s"\n' % (tmp_path / "state.sqlite")
    server = new_server(tmp_path, extra, log_dir=small_disk / "store")
    key = sensor_key(server, "fwd-test")
    server.start()
    sensor = Sensor(tmp_path / "sensor", artifact, tmp_path / "sensor-log", server_url=url(server),
                    server_key=key).start()
    try:
        sensor.feed(dns_frames(0, 500))
        server.until(lambda h: https(h)["events"] == 500)
        filler = fill(small_disk)
        sensor.feed(dns_frames(500, 1500))
        sensor.wait_line(r"events: DNS 2000\b")
        h = server.until(lambda h: https(h)["refused"].get("store_failed", 0) >= 2)
        assert https(h)["events"] == 500            # nothing acknowledged while the disk is full
        assert h["status"] == "ok" or h["store"]["error"] is not None
        assert sensor.proc.poll() is None
        filler.unlink()                             # space returns
        server.until(lambda h: https(h)["events"] >= 2000)
        code = sensor.finish()
    finally:
        if sensor.proc.poll() is None:
            sensor.proc.kill()
    assert code == 0, sensor.text()
    assert "server_url %s unreachable" % url(server) in sensor.text()
    assert server.stop() == 0
    names = collections.Counter(e.trail for e in stored_events(server))
    assert sorted(names) == sorted("(f%d).evil-parent.net" % i for i in range(2000))
    assert set(names.values()) == {1}
    # The source of truth too: the server's daily log holds each once (tail reads it).
    assert collections.Counter(e["trail"] for e in logged_events(server.log_dir)) == names
    said = server.stderr()
    assert "a batch not stored (the sensor keeps it and sends it again)" in said      # said once each
    if state == "elsewhere":
        assert "No space left on device" in said or "disk is full" in said


# -- batches built from the documented layout -----------------------------------------------------------
def test_repeats_are_acknowledged_once_stored_and_bad_batches_are_refused_with_counted_reasons(tmp_path):
    server = new_server(tmp_path, extra="max_request_bytes = 65536\n")
    key = sensor_key(server, "s1")
    other = sensor_key(server, "s2")
    server.start()
    good = "Bearer s1:" + key
    try:
        body = batch("s1", [event(i) for i in range(10)])
        assert post(server, body, good) == (200, {"stored": 10, "repeated": 0})
        assert post(server, body, good) == (200, {"stored": 0, "repeated": 10})
        # Cut differently when sent again: the first 10 are repeats, the next 5 are new.
        assert post(server, batch("s1", [event(i) for i in range(15)]), good) == (200, {"stored": 5, "repeated": 10})
        # Another day file of the sensor's log is another stream: its places start afresh.
        assert post(server, batch("s1", [event(100)], file=("2026-01-02.events.zst", 8)), good)[0] == 200

        refusals = [
            (body, None, 401, "unauthorized"),
            (body, "Bearer s1:" + other, 401, "unauthorized"),
            (body, "Bearer s1:", 401, "unauthorized"),
            (b"not zstd at all", good, 400, "not_zstd"),
            # 2 KiB that would be 70 MiB: refused without being held (no content size in the frame)
            (zstandard.ZstdCompressor(write_content_size=False).compress(b"\0" * (70 << 20)), good, 400, "too_large"),
            (zstandard.ZstdCompressor().compress(b"\xc1\xc1"), good, 400, "not_msgpack"),
            (zstandard.ZstdCompressor().compress(msgpack.packb([1, 2])), good, 400, "bad_batch"),
            (batch("s1", [event(200)], v=2), good, 400, "bad_batch"),
            (batch("s1", [event(200)], files=[["x", -1]]), good, 400, "bad_batch"),
            (zstandard.ZstdCompressor().compress(msgpack.packb(
                {"v": 1, "sensor": "s1", "files": [["f", 1]], "events": [[0, 1, 1, ["too", "short"]]]})),
             good, 400, "bad_event"),
            (batch("s2", [event(200, "s2")]), good, 400, "sensor_mismatch"),
            (batch("s1", [event(200, "s2")]), good, 400, "sensor_mismatch"),
        ]
        for payload, authorization, status, reason in refusals:
            got, answer = post(server, payload, authorization)
            assert (got, answer.get("reason")) == (status, reason), (reason, answer)
            assert answer["error"]
        # A body over [server] max_request_bytes: 413 before it is read.
        big = os.urandom(70_000)
        assert post(server, big, good)[0] == 413
        h = server.health()
        assert https(h)["refused"] == {"unauthorized": 3, "not_zstd": 1, "too_large": 1, "not_msgpack": 1, "bad_batch": 3,
                                       "bad_event": 1, "sensor_mismatch": 2}
        assert https(h)["events"] == 16 and https(h)["repeated"] == 20
        metrics = get_text(server, "/metrics")
        assert 'maltrail_server_https_refused_total{reason="sensor_mismatch"} 2.0' in metrics
        assert 'maltrail_server_http_refused_total{reason="oversized body"} 1.0' in metrics
        assert "maltrail_server_https_events_total 16.0" in metrics
    finally:
        assert server.stop() == 0
    # Restarted, the places are still known: the first batch is still a repeat.
    server.start()
    try:
        assert post(server, body, good) == (200, {"stored": 0, "repeated": 10})
    finally:
        assert server.stop() == 0
    assert len(stored_events(server)) == 16


# -- the registry ------------------------------------------------------------------------------------------
def get_text(server: ServerProc, path: str, cookie: str | None = None) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=30)
    conn.request("GET", path, headers={"Cookie": "mt_session=" + cookie} if cookie else {})
    response = conn.getresponse()
    text = response.read().decode()
    conn.close()
    assert response.status == 200, (path, response.status, text)
    return text


def login(server: ServerProc) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=30)
    conn.request("POST", "/api/v1/login", body=json.dumps({"username": "admin", "password": PASSWORD}),
                 headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    response.read()
    conn.close()
    assert response.status == 200
    for value in response.headers.get_all("Set-Cookie"):
        if value.startswith("mt_session="):
            return value.split(";", 1)[0].split("=", 1)[1]
    raise AssertionError("no session cookie")


def sensors(server: ServerProc, cookie: str) -> dict:
    return {s["name"]: s for s in json.loads(get_text(server, "/api/v1/sensors", cookie))["sensors"]}


def test_the_registry_lists_https_and_udp_sensors_and_flags_the_silent_ones(tmp_path):
    users = json.dumps([make_user_line("admin", PASSWORD, 0)])
    server = new_server(tmp_path, extra="users = %s\nsensor_silent_after_s = 2\n" % users)
    key = sensor_key(server, "s1")
    sensor_key(server, "never")
    server.start()
    try:
        conn = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=30)
        conn.request("GET", "/api/v1/sensors")
        assert conn.getresponse().status == 401         # logged-in users only
        conn.close()
        cookie = login(server)
        assert post(server, batch("s1", [event(i) for i in range(5)]), "Bearer s1:" + key)[0] == 200
        server.send([b'"2026-01-01 00:00:09.000001" maltrail-udp 192.0.2.7 1234 198.51.100.1 80 TCP URL '
                     b'evil.example/x "malware" (static)'])
        server.until(lambda h: h["intake"]["udp"]["stored"] == 1)
        found = until("both sensors listed", lambda: (lambda s: s if "maltrail-udp" in s else None)(
            sensors(server, cookie)))
        s1 = found["s1"]
        assert (s1["transport"], s1["version"], s1["trails"], s1["forwarding_lag_s"], s1["events"], s1["key"]) \
            == ("https", "test", "2026-01-01", 1.5, 5, "valid")
        assert s1["last_seen_unix"] >= s1["first_seen_unix"] > 0 and s1["events_per_s"] > 0
        assert found["maltrail-udp"]["transport"] == "udp" and found["maltrail-udp"]["events"] == 1
        assert found["never"]["last_seen_unix"] is None and found["never"]["events"] == 0
        # Nothing heard for longer than sensor_silent_after_s: silent, here and in /metrics.
        found = until("every sensor silent", lambda: (lambda s: s if all(r["silent"] for r in s.values()) else None)(
            sensors(server, cookie)))
        assert found["s1"]["silent_s"] > 2 and found["maltrail-udp"]["silent_s"] > 2
        metrics = get_text(server, "/metrics")
        assert 'maltrail_server_sensor_silent{sensor="s1"} 1.0' in metrics
        assert "maltrail_server_sensors_silent 3.0" in metrics
        # Heard again: no longer silent.
        assert post(server, batch("s1", [event(50)], first_done=50), "Bearer s1:" + key) == (200, {"stored": 1, "repeated": 0})
        assert not sensors(server, cookie)["s1"]["silent"]
    finally:
        assert server.stop() == 0
    # The registry survives a restart.
    server.start()
    try:
        found = sensors(server, login(server))
        assert found["s1"]["events"] == 6 and found["s1"]["version"] == "test"
    finally:
        assert server.stop() == 0


def test_server_url_without_a_key_is_a_configuration_error_naming_the_fix(tmp_path):
    from config.load import ConfigError
    conf = tmp_path / "sensor.toml"
    conf.write_text('[sensor]\nserver_url = "https://server.example:8338"\n')
    with pytest.raises(ConfigError) as info:
        load_config(str(conf))
    assert "server_key" in str(info.value) and "server sensor add" in str(info.value)
    conf.write_text('[sensor]\nserver_url = "https://server.example:8338"\nserver_key = "mtk_x"\n'
                    'disable_local_log_storage = true\n')
    from engine.processes.forwarder import destinations_from_config, position_names
    cfg = load_config(str(conf))
    found = destinations_from_config(cfg)
    assert [(d["kind"], d["address"], d["key"]) for d in found] == [("server_url", "https://server.example:8338", "mtk_x")]
    assert position_names(found) == ["server-url-https___server.example_8338"]


# -- HTTPS: the sensor verifies the server's certificate --------------------------------------------------
@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    from tests.collectors import Pki
    return Pki(tmp_path_factory.mktemp("link-pki"))


@pytest.mark.parametrize("certificate", ["ours", "rogue"])
def test_the_sensor_sends_over_https_only_to_a_server_whose_certificate_verifies(
        certificate, artifact, pki, tmp_path):  # noqa: F811
    """The server's own TLS listener ([server] use_ssl, ssl_pem): a sensor verifying it with
    server_ca_file sends; one facing a certificate its CA did not sign refuses to, and says why."""
    from tests.test_server_tls import pem
    if certificate == "ours":
        tls = (pem(pki, tmp_path), pki.ca)
    else:
        tls = (pem(pki, tmp_path, key=pki.rogue_key, cert=pki.rogue_cert, name="rogue.pem"), None)
    server = ServerProc(tmp_path, tls=tls)
    os.makedirs(server.log_dir, mode=0o700, exist_ok=True)
    key = sensor_key(server, "fwd-test")
    server.start()
    address = "https://localhost:%d" % server.http_port
    sensor = Sensor(tmp_path / "sensor", artifact, tmp_path / "sensor-log", server_url=address, server_key=key,
                    server_ca_file=str(pki.ca)).start()
    try:
        sensor.feed(dns_frames(0, 300))
        if certificate == "ours":
            server.until(lambda h: https(h)["events"] == 300)
        else:
            sensor.wait_line(r"server_url %s unreachable: .*the certificate does not verify" % address)
            assert https(server.health())["batches"] == 0
    finally:
        code = sensor.finish()
    assert code == 0, sensor.text()
    assert server.stop() == 0
    assert len(stored_events(server)) == (300 if certificate == "ours" else 0)


def test_plain_http_to_another_host_is_warned_about_and_loopback_is_not():
    from events.forwarders.server_link import ServerLink
    said = []
    ServerLink("http://192.0.2.10:8338", "mtk_x", "s1", warn=said.append)
    assert len(said) == 1 and "unencrypted" in said[0] and "mtk_x" not in said[0]
    ServerLink("http://127.0.0.1:8338", "mtk_x", "s1", warn=said.append)
    ServerLink("https://192.0.2.10:8338", "mtk_x", "s1", warn=said.append)
    assert len(said) == 1
    with pytest.raises(ValueError, match="server_key is empty"):
        ServerLink("https://192.0.2.10:8338", "", "s1")
