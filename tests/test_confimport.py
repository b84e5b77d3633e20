"""`maltrail-engine config import`: a Maltrail maltrail.conf carried over to maltrail.toml.

The maltrail.conf below is written here in Maltrail's format (option names and value forms as
Maltrail's maltrail.conf and core/settings.py define them) and sets every option Maltrail has.
The installed command converts it as a real process; the file it writes is loaded with our own
loader and every value checked.
"""

from __future__ import annotations

import os
import socket
import subprocess

import pytest

from config import iter_keys, load_config
from config.maltrail_conf import MALTRAIL_ONLY
from tests.test_corpus import console_script

# Every option of Maltrail's configuration, in its sections, with values of the forms Maltrail
# takes: $NAME substitutions, relative paths, a percentage, lists under a bare name, switches.
EVERY_OPTION = """\
# [Server]
HTTP_ADDRESS 127.0.0.1
HTTP_PORT 8444
USE_SSL true
SSL_PEM misc/site.pem
USERS
    alice:0000000000000000000000000000000000000000000000000000000000000000:0:   # an account
    bob:1111111111111111111111111111111111111111111111111111111111111111:1000:10.0.0.0/8
ENABLE_MASK_CUSTOM true
UDP_ADDRESS 127.0.0.1
UDP_PORT 8555
USE_SERVER_UPDATE_TRAILS false
IP_ALIASES
    192.0.2.1:gateway
HEADER_LOGO <b>ours</b>
FAIL2BAN_REGEX attacker|mass scanner
BLACKLIST
    src_ip ~ ^203.0.113. and dst_port ~ ^23$

# [Sensor]
PROCESS_COUNT $CPU_CORES
DISABLE_CPU_AFFINITY false
USE_FEED_UPDATES true
DISABLED_FEEDS one, two
IP_MINIMUM_FEEDS 2
DISABLED_TRAILS_INFO_REGEX tor exit
UPDATE_PERIOD 43200
CUSTOM_TRAILS_URL http://trails.example.org/custom.txt
CUSTOM_TRAILS_DIR ./trails/custom
CAPTURE_BUFFER 10%
MONITOR_INTERFACE eth1,eth2
CAPTURE_FILTER udp or icmp or (tcp and (tcp[tcpflags] == tcp-syn or port 80 or port 1080 or port 3128 or port 8000 or port 8080 or port 8118))
SENSOR_NAME $HOSTNAME
LOG_SERVER 192.0.2.50:8337
LOG_SERVER_SECRET s3cret-shared
SYSLOG_SERVER 192.0.2.50:514
LOGSTASH_SERVER 192.0.2.50:5000
REMOTE_SEVERITY_REGEX (?P<high>malware)|(?P<low>scanner)
DISABLE_LOCAL_LOG_STORAGE false
ALERT_WEBHOOK_URL https://hooks.example.org/services/T0/B0/secret
ALERT_SEVERITY medium
ALERT_FORMAT {"text": "%(severity)s %(info)s %(trail)s"}
ALERT_THROTTLE 600
UPDATE_SERVER http://192.0.2.50:8338/trails
USE_HEURISTICS true
CHECK_MISSING_HOST true
CHECK_HOST_DOMAINS false
USER_WHITELIST /etc/maltrail/whitelist.txt
USER_IGNORELIST misc/ignore_events.txt
IGNORE_EVENTS_REGEX sql injection|long domain
STATS_ADDRESS 127.0.0.1:9114

# [All]
SHOW_DEBUG false
LOG_DIR $SYSTEM_LOG_DIR/maltrail
PROXY_ADDRESS http://192.0.2.60:3128
DISABLE_CHECK_SUDO true
TRAILS_FILE /var/lib/maltrail/trails.csv
USE_MULTIPROCESSING false
SNAP_LEN 1600
"""


def mte(*args, **kw):
    return subprocess.run([console_script(), *args], capture_output=True, text=True, timeout=60, **kw)


def _options(text: str) -> list[str]:
    return [line.split()[0] for line in text.splitlines() if line[:1].isalpha()]


def test_the_conf_covers_every_option_maltrail_has_and_ours_name():
    names = set(_options(EVERY_OPTION))
    assert set(MALTRAIL_ONLY) <= names
    assert {spec.maltrail for _s, _k, spec in iter_keys() if spec.maltrail} <= names


def test_every_option_is_carried_over_or_named_not_applicable(tmp_path):
    conf = tmp_path / "maltrail" / "maltrail.conf"
    conf.parent.mkdir()
    conf.write_text(EVERY_OPTION)
    out = tmp_path / "maltrail.toml"
    done = mte("config", "import", str(conf), "-o", str(out))
    assert done.returncode == 0, done.stderr
    cfg = load_config(str(out))
    here = str(conf.parent)
    assert cfg.server.http_address == "127.0.0.1" and cfg.server.http_port == 8444
    assert cfg.server.use_ssl is True and cfg.server.ssl_pem == os.path.join(here, "misc", "site.pem")
    assert cfg.server.udp_address == "127.0.0.1" and cfg.server.udp_port == 8555
    assert cfg.server.users == ("alice:%s:0:" % ("0" * 64), "bob:%s:1000:10.0.0.0/8" % ("1" * 64))
    assert cfg.server.enable_mask_custom is True
    assert cfg.server.fail2ban_regex == "attacker|mass scanner"
    assert cfg.server.blacklist == ("src_ip ~ ^203.0.113. and dst_port ~ ^23$",)
    assert cfg.sensor.workers == "auto"
    assert cfg.all.update_period_s == 43200
    assert cfg.all.custom_trails_dir == os.path.join(here, "trails", "custom")
    assert cfg.sensor.capture_buffer_bytes == 33554432  # a share of memory sizes Maltrail's ring, not ours
    assert cfg.sensor.interface == ("eth1", "eth2")
    assert cfg.sensor.capture_filter == "default"  # Maltrail's shipped filter: ours does its job
    assert cfg.sensor.sensor_name == ""  # $HOSTNAME: the host name at run time, as Maltrail means it
    assert cfg.sensor.use_heuristics is True and cfg.heuristics.missing_host is True
    assert cfg.all.whitelist_file == "/etc/maltrail/whitelist.txt"
    assert cfg.sensor.ignore_file == os.path.join(here, "misc", "ignore_events.txt")
    assert cfg.sensor.ignore_regex == "(?i)sql injection|long domain"  # Maltrail matches case-insensitively
    assert cfg.all.log_dir == "/var/log/maltrail"
    assert cfg.all.proxy_url == "http://192.0.2.60:3128"
    assert cfg.all.trail_sources == ("/var/lib/maltrail/trails.csv",)
    assert cfg.sensor.snaplen_bytes == 1600
    assert cfg.sensor.stats_address == "127.0.0.1:9114"  # Maltrail's Rust sensor's metrics endpoint
    assert cfg.all.severity_regex == "(?P<high>malware)|(?P<low>scanner)"
    assert cfg.sensor.disable_local_log_storage is False
    assert cfg.sensor.alert_webhook_url == "https://hooks.example.org/services/T0/B0/secret"
    assert cfg.sensor.alert_severity == "medium" and cfg.sensor.alert_throttle_s == 600
    assert cfg.sensor.alert_format == '{"text": "%(severity)s %(info)s %(trail)s"}'
    # every option of the file is named in the written file and in the report, with where it went
    text = out.read_text()
    for name in _options(EVERY_OPTION):
        assert name in text and name in done.stdout, name
    for name in MALTRAIL_ONLY:
        assert "#   %s (line " % name in text, name
    assert "not applicable (%d)" % len(MALTRAIL_ONLY) in done.stdout
    assert "maltrail-engine check-config -c %s" % out in done.stdout


def test_an_existing_file_is_kept_unless_forced(tmp_path):
    conf = tmp_path / "maltrail.conf"
    conf.write_text("MONITOR_INTERFACE eth3\nCAPTURE_BUFFER 512MB\nLOG_DIR /srv/log\nUSE_HEURISTICS true\n")
    out = tmp_path / "maltrail.toml"
    out.write_text("# mine\n")
    done = mte("config", "import", str(conf), "-o", str(out))
    assert done.returncode == 2 and "exists; pass --force" in done.stderr
    assert out.read_text() == "# mine\n"
    done = mte("config", "import", str(conf), "-o", str(out), "--force")
    assert done.returncode == 0, done.stderr
    cfg = load_config(str(out))
    assert cfg.sensor.interface == ("eth3",) and cfg.sensor.capture_buffer_bytes == 512 * 1024 ** 2
    # a symlink where the file goes is replaced, never written through
    target = tmp_path / "precious"
    target.write_text("keep\n")
    link = tmp_path / "link.toml"
    link.symlink_to(target)
    assert mte("config", "import", str(conf), "-o", str(link)).returncode == 2
    assert mte("config", "import", str(conf), "-o", str(link), "--force").returncode == 0
    assert target.read_text() == "keep\n" and not link.is_symlink()
    assert load_config(str(link)).all.log_dir == "/srv/log"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".maltrail-import")] == []


def test_to_standard_output_and_an_absent_switch(tmp_path):
    conf = tmp_path / "maltrail.conf"
    conf.write_text("MONITOR_INTERFACE any\nCAPTURE_BUFFER 1048576\nLOG_DIR /srv/log\nSENSOR_NAME edge-$HOSTNAME\n")
    done = mte("config", "import", str(conf), "-o", "-")
    assert done.returncode == 0, done.stderr
    (tmp_path / "out.toml").write_text(done.stdout)
    cfg = load_config(str(tmp_path / "out.toml"))
    # Maltrail leaves a switch its file does not set off: no USE_HEURISTICS line, no heuristics
    assert cfg.sensor.use_heuristics is False
    assert cfg.sensor.sensor_name == "edge-" + socket.gethostname()
    assert "carried over" in done.stderr and "HOSTNAME" in done.stderr


@pytest.mark.parametrize("line, needles", [
    ("UPDATE_PERIOD 60", ["maltrail.conf:2", "UPDATE_PERIOD 60", "[all] update_period_s", "600"]),
    ("CAPTURE_BUFFER lots", ["maltrail.conf:2", "CAPTURE_BUFFER", "not a size"]),
    ("SENSOR_NAME two words", ["maltrail.conf:2", "[sensor] sensor_name", "whitespace"]),
    ("HTTP_PORT\tseven", ["maltrail.conf:2", "Maltrail refuses it too"]),
    ("USE_SSL true", ["do not fit together", "[server] use_ssl", "ssl_pem"]),  # and no SSL_PEM
])
def test_a_value_that_cannot_be_carried_over_is_an_error_and_nothing_is_written(tmp_path, line, needles):
    conf = tmp_path / "maltrail.conf"
    conf.write_text("MONITOR_INTERFACE any\n%s\n" % line)
    out = tmp_path / "maltrail.toml"
    done = mte("config", "import", str(conf), "-o", str(out))
    assert done.returncode == 2
    for needle in needles:
        assert needle in done.stderr, (needle, done.stderr)
    assert not out.exists() and "Traceback" not in done.stderr


def test_the_sensor_says_a_maltrail_conf_needs_importing(tmp_path):
    conf = tmp_path / "maltrail.conf"
    conf.write_text(EVERY_OPTION)
    for args in (["check-config", "-c", str(conf)], ["replay", "-c", str(conf), str(tmp_path / "x.pcap")]):
        done = mte(*args)
        assert done.returncode == 2
        assert "maltrail.conf format, not TOML" in done.stderr
        assert "maltrail-engine config import %s" % conf in done.stderr
    done = mte("check-config", env=dict(os.environ, MALTRAIL_ENGINE_CONFIG=str(conf)))
    assert done.returncode == 2 and "config import" in done.stderr


def test_a_missing_conf_is_a_clear_error(tmp_path):
    done = mte("config", "import", str(tmp_path / "absent.conf"), "-o", str(tmp_path / "x.toml"))
    assert done.returncode == 2 and "absent.conf: cannot read" in done.stderr
