"""Tests for config/ and the repository's maltrail.toml.

Every test writes real files under tmp_path and loads them through the public API; nothing is
mocked.  The checks on maltrail.toml are derived from SCHEMA, so a key added to the schema
without documentation in the file fails here.
"""

from __future__ import annotations

import re
import socket
import tomllib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from config import (
    SCHEMA,
    Config,
    ConfigError,
    apply_overrides,
    default_config_path,
    dump_config,
    iter_keys,
    load_config,
    parse_flag_value,
    resolved_sensor_name,
)

REPO_CONFIG = Path(__file__).resolve().parent.parent / "maltrail.toml"
INT_KEYS = [(s, k, spec) for s, k, spec in iter_keys() if spec.type == "int"]


def write(tmp_path: Path, text: str, name: str = "maltrail.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def load_error(path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return str(info.value)


# ------------------------------------------------------------------------------------------
# The repository's maltrail.toml
# ------------------------------------------------------------------------------------------

def test_repo_file_loads_with_every_default():
    cfg = load_config(REPO_CONFIG)
    for section, key, spec in iter_keys():
        assert getattr(getattr(cfg, section), key) == spec.default, (section, key)
        assert cfg.origin(section, key) == "file", (section, key)
    assert cfg.as_dict() == load_config(None).as_dict()


def test_repo_file_has_exactly_the_schema_keys():
    doc = tomllib.loads(REPO_CONFIG.read_text(encoding="utf-8"))
    assert list(doc) == list(SCHEMA)  # all sections, in schema order
    for section, keys in SCHEMA.items():
        assert list(doc[section]) == list(keys), section


def _comment_block_above(lines: list[str], index: int) -> list[str]:
    block = []
    for line in reversed(lines[:index]):
        if not line.startswith("#"):
            break
        block.append(line)
    return block[::-1]


def test_repo_file_documents_every_key():
    lines = REPO_CONFIG.read_text(encoding="utf-8").splitlines()
    text = "\n".join(lines[:20])  # the header comment: how the file is found
    for needle in ("-c", "$MALTRAIL_ENGINE_CONFIG", "/etc/maltrail-engine/maltrail.toml",
                   "override"):
        assert needle in text, needle
    section = None
    seen = set()
    for index, line in enumerate(lines):
        header_match = re.match(r"^\[(\w+)\]$", line)
        if header_match:
            section = header_match.group(1)
            continue
        key_match = re.match(r"^(\w+) = ", line)
        if not key_match:
            continue
        key = key_match.group(1)
        spec = SCHEMA[section][key]
        block = " ".join(_comment_block_above(lines, index))
        assert len(block) > 40, "no comment block above [%s] %s" % (section, key)
        if spec.maltrail:
            assert spec.maltrail in block, (section, key, spec.maltrail)
        if spec.type == "int":
            # the documented range is the declared one
            assert str(spec.min) in block and str(spec.max) in block, (section, key)
        seen.add((section, key))
    assert seen == {(s, k) for s, k, _ in iter_keys()}


# ------------------------------------------------------------------------------------------
# Loading
# ------------------------------------------------------------------------------------------

def test_no_file_means_defaults():
    cfg = load_config(None)
    assert cfg.path is None
    assert cfg.sensor.snaplen_bytes == 2000
    assert cfg.all.log_dir == "/var/log/maltrail-engine"
    assert cfg.server.http_port == 8338
    assert cfg.sensor.interface == ("any",)
    assert cfg.sensor.workers == "auto"
    assert all(cfg.origin(s, k) == "default" for s, k, _ in iter_keys())


def test_empty_file_is_fine(tmp_path):
    cfg = load_config(write(tmp_path, ""))
    assert cfg.as_dict() == load_config(None).as_dict()
    assert cfg.path == str(tmp_path / "maltrail.toml")


def test_missing_file_is_an_error(tmp_path):
    message = load_error(tmp_path / "absent.toml")
    assert "absent.toml" in message and "not found" in message


def test_directory_is_an_error(tmp_path):
    assert "is a directory" in load_error(tmp_path)


def test_file_values_and_normalisation(tmp_path):
    path = write(tmp_path, """
[all]
trail_sources = ["/srv/trails.csv", "/srv/static"]
proxy_url = "http://proxy.example:3128"
[sensor]
interface = "eth1, eth2"
workers = 4
snaplen_bytes = 1514
[server]
http_address = "::"
use_ssl = true
ssl_pem = "/etc/ssl/server.pem"
""")
    cfg = load_config(path)
    assert cfg.all.trail_sources == ("/srv/trails.csv", "/srv/static")
    assert cfg.sensor.interface == ("eth1", "eth2")
    assert cfg.sensor.workers == 4
    assert cfg.sensor.snaplen_bytes == 1514
    assert cfg.origin("sensor", "snaplen_bytes") == "file"
    assert cfg.origin("sensor", "promiscuous") == "default"
    assert cfg.as_dict()["sensor"]["interface"] == ["eth1", "eth2"]


def test_interface_list_form(tmp_path):
    cfg = load_config(write(tmp_path, '[sensor]\ninterface = ["eth0", "wlan0"]\n'))
    assert cfg.sensor.interface == ("eth0", "wlan0")


def test_config_is_read_only():
    cfg = load_config(None)
    with pytest.raises(AttributeError):
        cfg.sensor.snaplen_bytes = 10
    with pytest.raises(AttributeError):
        cfg.sensor = None
    with pytest.raises(AttributeError):
        cfg.sensor.no_such_key
    cfg.as_dict()["sensor"]["snaplen_bytes"] = 1  # a copy: the config is unchanged
    assert cfg.sensor.snaplen_bytes == 2000


def test_bom_is_tolerated(tmp_path):
    path = tmp_path / "bom.toml"
    path.write_bytes(b"\xef\xbb\xbf[sensor]\nsnaplen_bytes = 1500\n")
    assert load_config(path).sensor.snaplen_bytes == 1500


def test_bad_utf8_names_the_line(tmp_path):
    path = tmp_path / "latin1.toml"
    path.write_bytes(b"[sensor]\n# caf\xe9\nsnaplen_bytes = 1500\n")
    message = load_error(path)
    assert "latin1.toml:2:" in message and "UTF-8" in message


# ------------------------------------------------------------------------------------------
# Errors: file name, line, key, what was found, what is allowed
# ------------------------------------------------------------------------------------------

ERROR_CASES = [
    # (id, file text, line, substrings the message must contain)
    ("unknown-section", "[all]\nlog_dir = \"/x\"\n\n[sensr]\nworkers = 2\n", 4,
     ["unknown section [sensr]", "[all], [sensor], [heuristics], [server]", "did you mean [sensor]"]),
    ("unknown-key", "[sensor]\npromiscuous = true\nsnaplen = 1500\n", 3,
     ["[sensor] unknown key snaplen", "known keys of [sensor]", "capture_filter",
      "did you mean snaplen_bytes"]),
    ("key-in-wrong-section", "[sensor]\nlog_dir = \"/x\"\n", 2,
     ["unknown key log_dir", "log_dir belongs in [all]"]),
    ("str-for-int", "[sensor]\nsnaplen_bytes = \"1500\"\n", 2,
     ["snaplen_bytes", "wrong type", "expected an integer", "found a string",
      "an integer from 64 to 262144"]),
    ("bool-for-int", "[server]\n\nhttp_port = true\n", 3,
     ["http_port = true", "expected an integer", "found a boolean",
      "an integer from 1 to 65535"]),
    ("float-for-int", "[all]\nupdate_period_s = 3600.0\n", 2,
     ["update_period_s", "expected an integer", "found a float"]),
    ("int-for-bool", "[sensor]\n# comment\npromiscuous = 1\n", 3,
     ["promiscuous = 1", "expected a boolean", "found an integer", "true or false"]),
    ("list-item-not-str", "[all]\ntrail_sources = [\"/a\", 7]\n", 2,
     ["trail_sources", "item 2 is an integer", "expected a string", "an array of paths"]),
    ("str-for-list", "[all]\ntrail_sources = \"/a\"\n", 2,
     ["trail_sources", "expected an array of strings", "found a string"]),
    ("out-of-range", "[all]\n[sensor]\n\n\n\nsnaplen_bytes = 10\n", 6,
     ["[sensor] snaplen_bytes = 10 is out of range", "allowed: an integer from 64 to 262144"]),
    ("out-of-range-high", "[sensor]\ncapture_buffer_bytes = 4294967297\n", 2,
     ["capture_buffer_bytes = 4294967297 is out of range", "1048576 to 4294967296"]),
    ("workers-word", "[sensor]\nworkers = \"many\"\n", 2,
     ["workers = \"many\"", "\"auto\" or an integer from 1 to 256"]),
    ("workers-zero", "[sensor]\nworkers = 0\n", 2,
     ["workers = 0 is out of range", "\"auto\" or an integer from 1 to 256"]),
    ("bad-proxy-scheme", "[all]\nproxy_url = \"socks5://10.0.0.1:1080\"\n", 2,
     ["proxy_url", "socks5://10.0.0.1:1080", "scheme", "http://host:port"]),
    ("bad-proxy-no-port", "[all]\nproxy_url = \"http://proxy.example\"\n", 2,
     ["proxy_url", "port is missing", "http://host:port"]),
    ("bad-proxy-path", "[all]\nproxy_url = \"http://proxy.example:8080/x?y\"\n", 2,
     ["proxy_url", "only scheme, host and port", "https://host:port"]),
    ("bad-sensor-name", "[sensor]\nsensor_name = \"edge sensor\"\n", 2,
     ["sensor_name = \"edge sensor\"", "whitespace", "a name without whitespace"]),
    ("empty-interface", "[sensor]\ninterface = \"eth0,,eth1\"\n", 2,
     ["interface", "item 2 is empty", "interface names"]),
    ("no-interface", "[sensor]\ninterface = []\n", 2,
     ["interface = []", "fewer than 1", "interface names"]),
    ("duplicate-interface", "[sensor]\ninterface = \"eth0,eth0\"\n", 2,
     ["interface", "listed twice"]),
    ("empty-log-dir", "[all]\nlog_dir = \"\"\n", 2,
     ["log_dir = \"\"", "must not be empty", "a path (not empty)"]),
    ("bad-bind-address", "[server]\nhttp_address = \"0.0.0.0:80\"\n", 2,
     ["http_address", "an IP address or host name"]),
    ("ssl-without-pem", "[server]\nuse_ssl = true\n", 2,
     ["use_ssl = true", "ssl_pem", "use_ssl = false"]),
    ("key-outside-section", "snaplen_bytes = 1500\n", 1,
     ["snaplen_bytes is outside any section", "[sensor]"]),
    ("section-not-table", "sensor = 5\n", 1,
     ["sensor must be a table", "found an integer"]),
    ("nested-table", "[sensor]\n[sensor.extra]\nx = 1\n", 2,
     ["unknown key extra", "known keys of [sensor]"]),
    ("float-range", "[heuristics]\ndga_entropy = 9.5\n", 2,
     ["[heuristics] dga_entropy = 9.5 is out of range", "a number from 0.0 to 8.0"]),
    ("str-for-float", "[heuristics]\ndga_entropy = \"high\"\n", 2,
     ["dga_entropy", "expected a number", "found a string"]),
    ("bool-for-float", "[heuristics]\ndga_entropy = true\n", 2, ["expected a number", "found a boolean"]),
    ("port-list-item", "[heuristics]\ninfection_ports = [445, \"smb\"]\n", 2,
     ["infection_ports", "item 2 is a string, expected an integer", "an array of integers from 1 to 65535"]),
    ("port-list-range", "[heuristics]\ninfection_ports = [445, 70000]\n", 2,
     ["infection_ports", "out of range (item 2)"]),
    ("port-list-twice", "[heuristics]\ninfection_ports = [445, 445]\n", 2, ["listed twice"]),
    ("bad-network", "[heuristics]\nlocal_networks = [\"10.0.0.0/8\", \"10.0.0.0/33\"]\n", 2,
     ["local_networks", "not an IP address or CIDR range (item 2)", "IP addresses or CIDR ranges"]),
    ("bad-regex", "[sensor]\nignore_regex = \"evil(\"\n", 2,
     ["ignore_regex", "not a valid regular expression", "a regular expression"]),
    ("threshold-zero", "[heuristics]\nport_scan_threshold = 0\n", 2,
     ["port_scan_threshold = 0 is out of range", "an integer from 1 to 65535"]),
]


@pytest.mark.parametrize("text,line,needles", [c[1:] for c in ERROR_CASES],
                         ids=[c[0] for c in ERROR_CASES])
def test_error_messages(tmp_path, text, line, needles):
    path = write(tmp_path, text, name="bad-config.toml")
    message = load_error(path)
    assert "%s:%d:" % (path, line) in message, message
    for needle in needles:
        assert needle in message, (needle, message)


def test_syntax_error_uses_tomllib_position(tmp_path):
    path = write(tmp_path, "[sensor]\nsnaplen_bytes = 1500\nworkers = \n", name="syntax.toml")
    message = load_error(path)
    assert "%s:3:" % path in message and "TOML syntax error" in message


def test_duplicate_key_is_a_syntax_error(tmp_path):
    path = write(tmp_path, "[sensor]\nworkers = 2\nworkers = 3\n", name="dup.toml")
    message = load_error(path)
    assert "%s:3:" % path in message and "TOML syntax error" in message


def test_all_problems_reported_together(tmp_path):
    path = write(tmp_path, "[sensor]\nsnaplen_bytes = 1\nworkers = -1\n[all]\nbogus = 1\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert len(info.value.problems) == 3
    assert [p.split(": ")[0] for p in info.value.problems] == [
        "%s:2" % path, "%s:3" % path, "%s:5" % path]


@pytest.mark.parametrize("url", [
    "http://10.0.0.1:8118", "https://proxy.example.com:3128", "http://[fe80::1]:8080/"])
def test_good_proxy_urls(tmp_path, url):
    assert load_config(write(tmp_path, '[all]\nproxy_url = "%s"\n' % url)).all.proxy_url == url


@pytest.mark.parametrize("url", [
    "10.0.0.1:8118", "http://:8080", "http://user:pw@proxy:8080", "http://proxy:99999",
    "http://proxy:0", "http://proxy :80", "http://[::1:80"])
def test_bad_proxy_urls(tmp_path, url):
    message = load_error(write(tmp_path, '[all]\nproxy_url = "%s"\n' % url))
    assert "proxy_url" in message and "http://host:port" in message


@pytest.mark.parametrize("address", ["0.0.0.0", "::", "fe80::1%eth0", "localhost",
                                     "collector.example.org"])
def test_good_bind_addresses(tmp_path, address):
    cfg = load_config(write(tmp_path, '[server]\nudp_address = "%s"\n' % address))
    assert cfg.server.udp_address == address


# ------------------------------------------------------------------------------------------
# Command-line overrides
# ------------------------------------------------------------------------------------------

def test_flags_win_over_file(tmp_path):
    cfg = load_config(write(tmp_path, "[sensor]\nsnaplen_bytes = 1500\nworkers = 2\n"))
    merged = apply_overrides(cfg, {("sensor", "snaplen_bytes"): 9000,
                                   ("sensor", "interface"): "eth3",
                                   ("all", "log_dir"): None})  # None: flag not given
    assert merged.sensor.snaplen_bytes == 9000
    assert merged.origin("sensor", "snaplen_bytes") == "flag"
    assert merged.sensor.interface == ("eth3",)
    assert merged.origin("sensor", "interface") == "flag"
    assert merged.sensor.workers == 2 and merged.origin("sensor", "workers") == "file"
    assert merged.origin("all", "log_dir") == "default"
    assert merged.path == cfg.path
    assert cfg.sensor.snaplen_bytes == 1500  # the original is untouched


@pytest.mark.parametrize("overrides,needles", [
    ({("sensor", "snaplen_bytes"): 5},
     ["command line: [sensor] snaplen_bytes = 5 is out of range", "64 to 262144"]),
    ({("sensor", "promiscuous"): "yes"}, ["command line:", "expected a boolean"]),
    ({("sensor", "workers"): True}, ["command line:", "found a boolean"]),
    ({("sensor", "snaplenbytes"): 1500}, ["command line:", "did you mean snaplen_bytes"]),
    ({("sensors", "workers"): 2}, ["command line:", "unknown section [sensors]"]),
    ({("server", "use_ssl"): True}, ["command line:", "ssl_pem"]),
    ({("all", "log_dir"): "/var/log/\udcff"}, ["command line:", "UTF-8"]),
])
def test_invalid_override_names_command_line(overrides, needles):
    with pytest.raises(ConfigError) as info:
        apply_overrides(load_config(None), overrides)
    for needle in needles:
        assert needle in str(info.value), (needle, str(info.value))


def test_parse_flag_value():
    assert parse_flag_value("sensor", "snaplen_bytes", "1500") == 1500
    assert parse_flag_value("sensor", "workers", "auto") == "auto"
    assert parse_flag_value("sensor", "workers", "8") == 8
    assert parse_flag_value("sensor", "promiscuous", "false") is False
    assert parse_flag_value("sensor", "interface", "eth0,eth1") == "eth0,eth1"
    # Unparseable text is passed on, so apply_overrides reports it in the usual form.
    with pytest.raises(ConfigError, match="command line: .*snaplen_bytes"):
        apply_overrides(load_config(None), {
            ("sensor", "snaplen_bytes"): parse_flag_value("sensor", "snaplen_bytes", "big")})


# ------------------------------------------------------------------------------------------
# Printing
# ------------------------------------------------------------------------------------------

def _roundtrip(tmp_path: Path, cfg: Config) -> Config:
    text = dump_config(cfg)
    tomllib.loads(text)  # valid TOML on its own
    return load_config(write(tmp_path, text, name="dumped.toml"))


def test_dump_defaults_round_trips(tmp_path):
    cfg = load_config(None)
    text = dump_config(cfg)
    assert _roundtrip(tmp_path, cfg).as_dict() == cfg.as_dict()
    assert list(tomllib.loads(text)) == list(SCHEMA)
    for section, key, _spec in iter_keys():
        assert re.search(r"^%s = .*# default$" % key, text, re.M), key


def test_dump_names_every_origin(tmp_path):
    path = write(tmp_path, "[sensor]\n\nsnaplen_bytes = 1500\n[all]\nproxy_url = \"http://p:1\"\n")
    cfg = apply_overrides(load_config(path), {("sensor", "workers"): 3,
                                              ("all", "trail_sources"): ["/a", "/b\\c\"d"]})
    text = dump_config(cfg)
    assert re.search(r"^snaplen_bytes = 1500 +# file %s:3$" % re.escape(str(path)), text, re.M)
    assert re.search(r"^proxy_url = \"http://p:1\" +# file %s:5$" % re.escape(str(path)),
                     text, re.M)
    assert re.search(r"^workers = 3 +# command line$", text, re.M)
    assert re.search(r"^use_ssl = false +# default$", text, re.M)
    assert str(path) in text.splitlines()[1]
    assert _roundtrip(tmp_path, cfg).as_dict() == cfg.as_dict()


# tmp_path is shared by the examples; each one overwrites the same file, which is fine.
@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(filt=st.text(max_size=40),
       pem=st.text(min_size=1, max_size=20).filter(lambda s: "\0" not in s))
def test_dump_round_trips_any_string(tmp_path, filt, pem):
    cfg = apply_overrides(load_config(None), {("sensor", "capture_filter"): filt,
                                              ("server", "ssl_pem"): pem,
                                              ("server", "use_ssl"): True})
    back = _roundtrip(tmp_path, cfg)
    assert back.sensor.capture_filter == filt
    assert back.server.ssl_pem == pem


# ------------------------------------------------------------------------------------------
# Ints: any value either loads (in range) or is a ConfigError (out of range), nothing else
# ------------------------------------------------------------------------------------------

@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=st.sampled_from(INT_KEYS), value=st.one_of(
    st.integers(), st.integers(min_value=-2**63, max_value=2**63 - 1),
    st.integers(min_value=-10, max_value=300000)))
def test_any_int_loads_or_raises_config_error(tmp_path, case, value):
    section, key, spec = case
    path = write(tmp_path, "[%s]\n%s = %d\n" % (section, key, value), name="ints.toml")
    in_range = spec.min <= value <= spec.max
    try:
        cfg = load_config(path)
    except ConfigError as exc:
        assert not in_range
        assert "%s:2:" % path in str(exc) and key in str(exc) and "out of range" in str(exc)
        assert "from %d to %d" % (spec.min, spec.max) in str(exc)
    else:
        assert in_range and getattr(getattr(cfg, section), key) == value
    # The same rule on the command line.
    try:
        merged = apply_overrides(load_config(None), {(section, key): value})
    except ConfigError as exc:
        assert not in_range and str(exc).startswith("command line:")
    else:
        assert in_range and getattr(getattr(merged, section), key) == value


# ------------------------------------------------------------------------------------------
# Locating the file; the sensor name
# ------------------------------------------------------------------------------------------

def test_default_config_path(tmp_path):
    system = write(tmp_path, "", name="system.toml")
    env_file = str(tmp_path / "from-env.toml")
    assert default_config_path({"MALTRAIL_ENGINE_CONFIG": env_file}, str(system)) == env_file
    assert default_config_path({}, str(system)) == str(system)
    assert default_config_path({"MALTRAIL_ENGINE_CONFIG": ""}, str(system)) == str(system)
    assert default_config_path({}, str(tmp_path / "absent.toml")) is None


def test_default_config_path_reads_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("MALTRAIL_ENGINE_CONFIG", str(tmp_path / "x.toml"))
    assert default_config_path() == str(tmp_path / "x.toml")


def test_resolved_sensor_name(tmp_path):
    assert resolved_sensor_name(load_config(None)) == socket.gethostname()
    cfg = load_config(write(tmp_path, '[sensor]\nsensor_name = "dmz-1"\n'))
    assert resolved_sensor_name(cfg) == "dmz-1"


def test_heuristic_settings_come_from_the_file(tmp_path):
    from engine.control_files import heuristic_settings
    path = write(tmp_path, "[sensor]\nuse_heuristics = false\n[heuristics]\ndga_entropy = 4\n"
                           "infection_ports = [445]\nlocal_networks = \"10.0.0.0/8, fd00::/8\"\nweb_scan = false\n")
    settings = heuristic_settings(load_config(path))
    assert not settings.enabled and not settings.on("port_scan")
    assert settings.dga_entropy == 4.0 and settings.infection_ports == (445,) and not settings.web_scan
    assert settings.is_local(6, int.from_bytes(bytes.fromhex("fd00" + "00" * 14), "big"))
    assert not settings.is_local(4, 0xC0A80001)  # 192.168.0.1 is not in the configured networks
    defaults = heuristic_settings(load_config(None))
    assert defaults.enabled and defaults.on("port_scan") and defaults.is_local(4, 0xC0A80001)


def test_an_absurd_sensor_name_is_a_config_error(tmp_path):
    # The name is written into every event: a megabyte name would make every record a megabyte.
    # A host name (the default) is at most 255 bytes, so that is the bound, in bytes of UTF-8.
    message = load_error(write(tmp_path, '[sensor]\nsensor_name = "%s"\n' % ("x" * 1_000_000)))
    assert "maltrail.toml:2" in message and "sensor_name" in message and "255 bytes" in message
    assert len(message) < 1000  # the value is shortened in the message, not echoed whole
    assert load_config(write(tmp_path, '[sensor]\nsensor_name = "%s"\n' % ("x" * 255))).sensor.sensor_name == "x" * 255
    assert "255 bytes" in load_error(write(tmp_path, '[sensor]\nsensor_name = "%s"\n' % ("\u00e9" * 128)))
    with pytest.raises(ConfigError, match="255 bytes"):
        apply_overrides(load_config(None), {("sensor", "sensor_name"): "y" * 256})


MALTRAIL_CONF = """\
# [Sensor]

# Interface used for monitoring (e.g. eth0, eth1)
MONITOR_INTERFACE any

CAPTURE_BUFFER 10%
LOG_DIR $SYSTEM_LOG_DIR/maltrail
"""


def test_a_maltrail_conf_is_recognised_and_the_import_command_offered(tmp_path):
    path = write(tmp_path, MALTRAIL_CONF, name="maltrail.conf")
    message = load_error(path)
    assert "Maltrail" in message and "maltrail.conf" in message and "not TOML" in message
    assert "maltrail-engine config import %s" % path in message
    # an ordinary TOML mistake is still reported as one, with its position
    message = load_error(write(tmp_path, "[sensor]\nsnaplen_bytes = \n"))
    assert "TOML syntax error" in message and "config import" not in message


def test_a_secret_is_never_printed_and_the_printout_still_loads(tmp_path):
    path = write(tmp_path, '[sensor]\nlog_server = "192.0.2.7:8337"\nlog_server_secret = "hunter2-shared"\n')
    cfg = load_config(path)
    assert cfg.sensor.log_server_secret == "hunter2-shared"
    text = dump_config(cfg)
    assert "hunter2" not in text
    assert "# log_server_secret = (set, not shown)" in text
    again = write(tmp_path, text, "printed.toml")
    assert load_config(again).sensor.log_server == "192.0.2.7:8337"   # what is shown reads back


@pytest.mark.parametrize("value, problem", [
    ('"udp://h"', "the port is missing"), ('"ftp://h:1"', "the scheme must be"), ('"h:1/x"', "only scheme://host:port"),
    ('"h :1"', "whitespace"), ('["tls://h:99999"]', "host:port")])
def test_malformed_forwarding_destinations_name_the_key_and_the_fix(tmp_path, value, problem):
    key = "syslog_server" if value.startswith("[") else "log_server"
    path = write(tmp_path, "[sensor]\n%s = %s\n" % (key, value))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    text = str(info.value)
    assert key in text and problem in text and ":2" in text, text
