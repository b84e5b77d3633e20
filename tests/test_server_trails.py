"""The server's trail set, served: Maltrail's trails.csv for Maltrail sensors' UPDATE_SERVER, and the
signed artifact our sensors adopt with `[sensor] update_server`.

All through real processes: a `maltrail-engine server` on loopback (SQLite and ClickHouse), real
HTTP, `maltrail-engine trails update` on a sensor configuration, and a corpus replay detecting with
the downloaded trails. Tampering is done by a real HTTP relay on loopback between the sensor and
the server, which alters, truncates or re-signs what passes.
"""

from __future__ import annotations

import csv
import hashlib
import http.server
import io
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import threading
import urllib.request
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from matchers import Artifact
from tests.conftest import need_shared
from tests.netns import veth  # noqa: F401  (the fixture)
from tests.server_proc import WAIT_LIMIT_S, ServerProc, backend_extra  # noqa: F401  (the fixture)
from tests.test_corpus import console_script
from tests.test_server_compat import MALTRAIL_TRAILS, login, request, users_extra
from trailsdb.compile import build
from trailsdb.remote import sign_manifest

CORPUS = MALTRAIL_TRAILS.parent
NO_PROXY_ENV = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}


def build_server_trails(directory: Path, extra_trail: str | None = None) -> Path:
    custom = directory / "custom"
    custom.mkdir(exist_ok=True)
    (custom / "secret.txt").write_text("custom-secret.example\n" + (extra_trail + "\n" if extra_trail else ""))
    out = directory / "trails.mtdb"
    build([str(need_shared(MALTRAIL_TRAILS))], str(out), custom_dir=str(custom), force=True)
    return out


@pytest.fixture
def served(tmp_path, backend_extra):  # noqa: F811
    trails_dir = tmp_path / "server-trails"
    trails_dir.mkdir()
    artifact = build_server_trails(trails_dir)
    proc = ServerProc(tmp_path, extra=users_extra() + backend_extra + '[all]\ntrails_artifact = "%s"\n' % artifact)
    proc.start()
    yield proc, artifact
    proc.stop()


def csv_rows(body: bytes) -> list[tuple]:
    return [tuple(r) for r in csv.reader(io.StringIO(body.decode()))]


def test_trails_is_maltrails_csv_without_custom_trails_for_who_may_not_see_them(served, tmp_path):
    proc, artifact = served
    port = proc.http_port
    status, headers, public = request(port, "/trails")
    assert status == 200
    rows = csv_rows(public)
    assert public.count(b",") >= 2                  # what Maltrail's sensor requires of the answer
    assert ("evil-parent.com", "malware (test)", "(static)") in rows
    assert ("[dead::beef]:443", "malware (test)", "(static)") in rows
    assert all(r[2] != "(custom)" for r in rows)
    etag = headers["ETag"]
    assert request(port, "/trails", headers={"If-None-Match": etag})[0] == 304

    admin, analyst = login(port, "admin"), login(port, "analyst")
    status, headers, full = request(port, "/trails", admin)
    assert ("custom-secret.example", "(custom)") in [(r[0], r[2]) for r in csv_rows(full)]
    assert headers["ETag"] != etag
    assert request(port, "/trails", analyst)[2] == public

    # Read back as a trails.csv source, the full set builds the same trails the server holds.
    (tmp_path / "back.csv").write_bytes(full)
    build([str(tmp_path / "back.csv")], str(tmp_path / "back.mtdb"))
    a, b = Artifact.open(artifact), Artifact.open(tmp_path / "back.mtdb")
    assert ({(r.kind, r.key) for r in map(a.record, range(a.trail_count))}
            == {(r.kind, r.key) for r in map(b.record, range(b.trail_count))})


def test_the_server_follows_a_trail_update_on_its_host(served, tmp_path):
    proc, artifact = served
    port = proc.http_port
    assert json.loads(request(port, "/check?q=fresh-trail.org", login(port, "admin"))[2])["found"] is False
    # What `trails build` / `trails update` does on the server's host: a new file renamed into place.
    staging = tmp_path / "staging"
    staging.mkdir()
    shutil.copy(artifact, staging / "trails.mtdb")
    new = build_server_trails(staging, extra_trail="fresh-trail.org")
    os.rename(new, artifact)
    admin = login(port, "admin")
    proc_until_http(proc, lambda: json.loads(request(port, "/check?q=fresh-trail.org", admin)[2])["found"])
    assert "generation 2" in proc.stderr()


def proc_until_http(proc, predicate):
    import time
    limit = time.monotonic() + WAIT_LIMIT_S
    while not predicate():
        assert proc.proc.poll() is None and time.monotonic() < limit, proc.stderr()
        time.sleep(0.1)


def sensor_config(tmp_path: Path, update_server: str, key: str) -> tuple[Path, Path]:
    sensor = tmp_path / "sensor"
    sensor.mkdir(exist_ok=True)
    conf = sensor / "maltrail.toml"
    trails = sensor / "trails.mtdb"
    conf.write_text('[all]\ntrails_artifact = "%s"\nfeeds_dir = "%s"\n[sensor]\nupdate_server = "%s"\n'
                    'update_server_key = "%s"\nuse_heuristics = false\n'
                    % (trails, sensor / "feeds", update_server, key))
    return conf, trails


def mte(*args) -> subprocess.CompletedProcess:
    return subprocess.run([console_script(), *args], capture_output=True, text=True, timeout=300,
                          env=dict(NO_PROXY_ENV, TZ="UTC"))


def server_key(proc) -> str:
    status, _, body = request(proc.http_port, "/trails/artifact.key")
    assert status == 200
    key = body.decode().strip()
    assert key in proc.stderr()        # what the operator compares before pinning it
    return key


def test_a_sensor_adopts_the_signed_artifact_and_detects_with_it(served, tmp_path):
    proc, artifact = served
    conf, trails = sensor_config(tmp_path, "http://127.0.0.1:%d" % proc.http_port, server_key(proc))
    key_file = proc.log_dir / "trail-signing.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600

    pcap = str(CORPUS / "ip_trails.pcap")
    before = mte("replay", "-c", str(conf), "--log-dir", str(tmp_path / "log0"), pcap)
    assert before.returncode != 0 and not trails.exists()     # no trails yet: the sensor refuses to run blind

    out = mte("trails", "update", "-c", str(conf))
    assert out.returncode == 0, out.stderr + out.stdout
    assert "signature verified" in out.stdout
    assert trails.read_bytes() == artifact.read_bytes()
    out = mte("trails", "update", "-c", str(conf))
    assert out.returncode == 0 and "unchanged" in out.stdout, out.stdout

    out = mte("replay", "-c", str(conf), "--log-dir", str(tmp_path / "log"), "--sensor-name", "s1", pcap)
    assert out.returncode == 0, out.stderr
    lines = mte("tail", "--log-dir", str(tmp_path / "log")).stdout
    for expected in ("66.66.66.66", "6.6.6.6:8443", "198.51.100.66"):
        assert expected in lines


class Relay:
    """An HTTP relay on loopback in front of the server: `alter(path, body) -> body` changes what
    passes (the headers follow the new body)."""

    def __init__(self, upstream_port: int, alter):
        relay = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                with urllib.request.urlopen("http://127.0.0.1:%d%s" % (upstream_port, self.path), timeout=60) as r:
                    body = r.read()
                body = alter(self.path, body)
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = "http://127.0.0.1:%d" % self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        relay.alter = alter

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def _flip_one_byte(body: bytes) -> bytes:
    i = len(body) // 2
    return body[:i] + bytes([body[i] ^ 0x01]) + body[i + 1:]


def _forged(body: bytes) -> bytes:
    """The server's manifest, re-signed by another key (the sha256 of an altered artifact)."""
    manifest = json.loads(json.loads(body)["manifest"])
    manifest["sha256"] = hashlib.sha256(b"whatever").hexdigest()
    return sign_manifest(manifest, Ed25519PrivateKey.generate())


@pytest.mark.parametrize("backend_extra", ["sqlite"], indirect=True)
@pytest.mark.parametrize("case,alter,complaint", [
    ("altered", lambda p, b: _flip_one_byte(b) if p.endswith("/artifact") else b, "SHA-256 is not the signed one"),
    ("truncated", lambda p, b: b[: len(b) // 2] if p.endswith("/artifact") else b, "TRUNCATED"),
    ("re-signed", lambda p, b: _forged(b) if p.endswith(".sig") else b, "BAD SIGNATURE"),
    ("not signed", lambda p, b: b'{"manifest": "{}", "signature": ""}' if p.endswith(".sig") else b, "BAD SIGNATURE"),
])
def test_a_tampered_download_is_refused_and_the_trails_in_use_stay(served, tmp_path, case, alter, complaint):
    proc, artifact = served
    key = server_key(proc)
    conf, trails = sensor_config(tmp_path, "http://127.0.0.1:%d/trails" % proc.http_port, key)
    out = mte("trails", "update", "-c", str(conf))         # Maltrail's ".../trails" form, straight from the server
    assert out.returncode == 0, out.stderr
    good = trails.read_bytes()
    # The server's trails change; the new set passes through the relay, tampered with.
    staging = tmp_path / "staging"
    staging.mkdir()
    shutil.copy(artifact, staging / "trails.mtdb")
    os.rename(build_server_trails(staging, extra_trail="fresh-trail.org"), artifact)
    relay = Relay(proc.http_port, alter)
    try:
        conf, trails = sensor_config(tmp_path, relay.url, key)
        proc_until_http(proc, lambda: json.loads(request(proc.http_port, "/trails/artifact.sig")[2])
                        ["manifest"].find('"generation":2') >= 0)
        out = mte("trails", "update", "-c", str(conf))
    finally:
        relay.close()
    assert out.returncode == 1
    assert complaint in out.stderr and "the current artifact" in out.stderr, out.stderr
    assert trails.read_bytes() == good
    assert not [p for p in trails.parent.iterdir() if ".download-" in p.name]


@pytest.mark.parametrize("backend_extra", ["sqlite"], indirect=True)
def test_a_sensor_pinned_to_another_key_refuses_the_servers_artifact(served, tmp_path):
    proc, _artifact = served
    other = "ed25519:" + __import__("base64").b64encode(
        Ed25519PrivateKey.generate().public_key().public_bytes_raw()).decode()
    conf, trails = sensor_config(tmp_path, "http://127.0.0.1:%d" % proc.http_port, other)
    out = mte("trails", "update", "-c", str(conf))
    assert out.returncode == 1 and "BAD SIGNATURE" in out.stderr, out.stderr
    assert not trails.exists()
    conf, _ = sensor_config(tmp_path, "http://127.0.0.1:%d" % proc.http_port, "")
    out = mte("trails", "update", "-c", str(conf))
    assert out.returncode == 1 and "update_server_key is empty" in out.stderr


@pytest.mark.parametrize("backend_extra", ["sqlite"], indirect=True)
def test_the_artifact_goes_only_to_allowlisted_sensors_or_a_session_that_may_see_custom_trails(tmp_path, backend_extra):  # noqa: F811
    artifact = build_server_trails(tmp_path)
    proc = ServerProc(tmp_path, extra=users_extra() + 'artifact_allowlist = ["192.0.2.0/24"]\n'
                      '[all]\ntrails_artifact = "%s"\n' % artifact).start()
    try:
        port = proc.http_port
        status, _, body = request(port, "/trails/artifact")
        assert status == 403 and b"artifact_allowlist" in body
        assert request(port, "/trails/artifact", login(port, "analyst"))[0] == 403
        status, headers, body = request(port, "/trails/artifact", login(port, "admin"))
        assert status == 200 and body == artifact.read_bytes()
        assert request(port, "/trails/artifact.sig")[0] == 200
        assert re.fullmatch(r"ed25519:[A-Za-z0-9+/=]{44}\n", request(port, "/trails/artifact.key")[2].decode())
    finally:
        proc.stop()


@pytest.mark.parametrize("backend_extra", ["sqlite"], indirect=True)
def test_a_live_sensor_adopts_the_servers_new_artifact_through_its_reload(served, tmp_path, veth):  # noqa: F811
    """SIGUSR1 on a live sensor with update_server: its update child (the unprivileged account)
    downloads the server's new artifact, and the reload that follows detects with it."""
    import tempfile
    from tests.test_cli import wait_for_records
    from tests.test_engine import records
    from tests.test_live_update import Sensor, account, dns
    proc, artifact = served
    namespace, host, peer = veth
    user = account()
    root = Path(tempfile.mkdtemp(prefix="mte-server-trails-", dir="/tmp"))
    os.chmod(root, 0o755)
    try:
        (root / "trails").mkdir()
        (root / "feeds").mkdir()
        config = root / "maltrail.toml"
        log_dir = tmp_path / "log"
        config.write_text(
            '[all]\nlog_dir = "%s"\ntrails_artifact = "%s"\nfeeds_dir = "%s"\nupdate_period_s = "off"\n'
            '[sensor]\ninterface = ["%s"]\nworkers = 1\nsensor_name = "upd"\nupdate_server = "http://127.0.0.1:%d"\n'
            'update_server_key = "%s"\n' % (log_dir, root / "trails" / "trails.mtdb", root / "feeds", host,
                                            proc.http_port, server_key(proc)))
        out = mte("trails", "update", "-c", str(config))
        assert out.returncode == 0, out.stderr
        for dirpath, dirnames, filenames in os.walk(root):
            for name in [dirpath] + [os.path.join(dirpath, n) for n in dirnames + filenames]:
                os.chown(name, user.pw_uid, user.pw_gid, follow_symlinks=False)
        sensor = Sensor(config)
        try:
            sensor.wait_line(r"capturing on %s" % host)
            sensor.wait_line(r"SIGUSR1 updates now")
            from tests.netns import send_frames
            send_frames(namespace, peer, [dns("before.fresh-trail.org", 40001), dns("www.evil-parent.com", 40002)])
            assert wait_for_records(log_dir, 1) == 1, sensor.text()
            staging = tmp_path / "staging"
            staging.mkdir()
            shutil.copy(artifact, staging / "trails.mtdb")
            os.rename(build_server_trails(staging, extra_trail="fresh-trail.org"), artifact)
            proc_until_http(proc, lambda: '"generation":2' in json.loads(
                request(proc.http_port, "/trails/artifact.sig")[2])["manifest"])
            mark = len(sensor.lines)
            sensor.proc.send_signal(signal.SIGUSR1)
            sensor.wait_line(r"signature verified", 120, after=mark)
            sensor.wait_line(r"reload done: every worker runs generation 2", 60, after=mark)
            send_frames(namespace, peer, [dns("after.fresh-trail.org", 40003)])
            assert wait_for_records(log_dir, 2) == 2, sensor.text()
        finally:
            code = sensor.stop()
        assert code == 0, sensor.text()
        assert sorted(r[9] for r in records(log_dir)) == ["(after).fresh-trail.org", "(www).evil-parent.com"]
    finally:
        shutil.rmtree(root, ignore_errors=True)
