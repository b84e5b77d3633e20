"""config/: the value types (config/values.py), the section records a Config is made of, the
import-time check of the schema, and every kind of message pinned byte for byte.

tests/test_config.py covers loading, overrides and the printer by behaviour; this file holds the
rules of each value type to one contract (what `dump` writes, the file and the command line read
back unchanged) and pins the exact text of each message, so a reshaping of config/ that changes
one character of what a user reads fails here.  Keys are picked by type from SCHEMA where the
test is about a type, not about a key, so keys added or renamed elsewhere do not break it.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from config import SCHEMA, ConfigError, apply_overrides, iter_keys, load_config, parse_flag_value


def write(tmp_path: Path, text: str, name: str = "maltrail.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def first_key(type_name: str, **wanted):
    """(section, key, spec) of the first key of `type_name` whose spec has the `wanted` values."""
    return next((s, k, spec) for s, k, spec in iter_keys()
                if spec.type == type_name and all(getattr(spec, a) == v for a, v in wanted.items()))


# ------------------------------------------------------------------------------------------
# Every value type: what dump writes, the file and the command line read back unchanged
# ------------------------------------------------------------------------------------------

# Good strings for the forms that random text almost never satisfies.
GOOD = {
    "host": ["127.0.0.1", "::1", "fe80::1%eth0", "sensor-1.example.org", "localhost"],
    "cidr": ["10.0.0.0/8", "192.0.2.1", "2001:db8::/32", "::1/128"],
    "regex": ["", "(?i)evil", r"^10\.0\.0\.\d+ .* (sqlmap|nikto)$", "a|b"],
    "proxy_url": ["", "http://proxy:3128", "https://[2001:db8::1]:8443", "http://10.0.0.1:8080/"],
}


def text_for(spec) -> st.SearchStrategy[str]:
    # Control characters, quotes and backslashes included: dump must escape them all.
    return st.one_of(st.sampled_from(GOOD.get(spec.form, ["/var/log/x", "eth0"])),
                     st.text(st.characters(blacklist_categories=("Cs",)), max_size=24))


def valid_value(spec) -> st.SearchStrategy:
    """Values of `spec`'s type its own rules accept (the rules are the judge: see assume below)."""
    if spec.type == "int":
        return st.one_of(st.integers(spec.min, spec.max), *[st.just(w) for w in spec.words])
    if spec.type == "float":
        return st.floats(spec.min, spec.max, allow_nan=False)
    if spec.type == "bool":
        return st.booleans()
    if spec.type == "str":
        return text_for(spec)
    if spec.type == "ints":
        return st.lists(st.integers(spec.min, spec.max), unique=True, max_size=6).map(tuple)
    return st.lists(text_for(spec), unique=True, min_size=spec.min_items, max_size=4).map(tuple)


def flag_text(spec, value, data) -> str | None:
    """How a user types `value` after a flag, or None where a key's type has no flag form."""
    if spec.type == "int":
        return value if isinstance(value, str) else data.draw(st.sampled_from([str(value), " %d " % value]))
    if spec.type == "float":
        return repr(value)
    if spec.type == "bool":
        words = ["true", "yes", "on", "1", "TRUE"] if value else ["false", "no", "off", "0", "Off"]
        return data.draw(st.sampled_from(words))
    if spec.type == "str":
        return value
    # A comma list cannot spell an empty list ("" is one empty item), nor items with commas or
    # edge spaces (they are split and stripped).
    if spec.type == "list" and spec.split and value and all("," not in v and v == v.strip() for v in value):
        return ",".join(value)
    return None


@settings(max_examples=600, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.filter_too_much])
@given(case=st.sampled_from(list(iter_keys())), data=st.data())
def test_every_value_type_reads_back_what_it_dumps(tmp_path, case, data):
    section, key, spec = case
    value = data.draw(valid_value(spec))
    normalised, problem = spec.rules.check(spec, value)
    assume(problem is None)
    assert normalised == value
    # What the rules between keys need, so that any one value passes them: a PEM file for
    # use_ssl = true, a destination for disable_local_log_storage = true.
    pem = {} if key == "ssl_pem" else {("server", "ssl_pem"): "/etc/ssl/sensor.pem"}
    if key != "log_server":
        pem[("sensor", "log_server")] = "192.0.2.1:8337"
    # The file: what the type's dump writes loads back as the same value.
    tables = {section: ["%s = %s" % (key, spec.rules.dump(value))]}
    for (s, k), v in pem.items():
        tables.setdefault(s, []).append("%s = %s" % (k, SCHEMA[s][k].rules.dump(v)))
    cfg = load_config(write(tmp_path, "".join("[%s]\n%s\n" % (s, "\n".join(t)) for s, t in tables.items())))
    assert cfg.value(section, key) == value and cfg.origin(section, key) == "file"
    # The command line: what a user types parses to a value the same rules accept unchanged.
    text = flag_text(spec, value, data)
    if text is not None:
        merged = apply_overrides(load_config(None), {**pem, (section, key): parse_flag_value(section, key, text)})
        assert getattr(getattr(merged, section), key) == value


def test_a_flag_that_is_not_of_the_type_is_passed_on_for_the_usual_message():
    for section, key, spec in iter_keys():
        if spec.type in ("int", "float", "bool"):
            assert parse_flag_value(section, key, "many") == "many", (section, key)
        else:
            assert parse_flag_value(section, key, " as typed ") == " as typed ", (section, key)


# ------------------------------------------------------------------------------------------
# Sections are frozen records
# ------------------------------------------------------------------------------------------

def test_sections_are_frozen_records_with_a_field_per_key_in_schema_order():
    cfg = load_config(None)
    for section, keys in SCHEMA.items():
        record = getattr(cfg, section)
        assert [f.name for f in dataclasses.fields(record)] == list(keys)
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(record, next(iter(keys)), None)
        with pytest.raises(dataclasses.FrozenInstanceError):
            record.not_a_key = 1  # not even a new attribute
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.path = "/elsewhere"


def test_sections_compare_by_what_they_say(tmp_path):
    # A reload can tell whether a section changed by comparing it with the running one.
    path = write(tmp_path, "[sensor]\nsnaplen_bytes = 1500\n")
    before, after = load_config(None), load_config(path)
    assert after.sensor != before.sensor
    for section in SCHEMA:
        if section != "sensor":
            assert getattr(after, section) == getattr(before, section), section
            assert hash(getattr(after, section)) == hash(getattr(before, section)), section
    back = apply_overrides(after, {("sensor", "snaplen_bytes"): 2000})
    assert back.sensor == before.sensor
    assert back.origin("sensor", "snaplen_bytes") == "flag"  # where it came from is the Config's, not the section's


# ------------------------------------------------------------------------------------------
# The schema is checked at import
# ------------------------------------------------------------------------------------------

def import_config_after(tmp_path: Path, setup: str) -> subprocess.CompletedProcess:
    """Run `setup` on config.values in a fresh interpreter, then run config/schema.py again as its
    import does.  (Importing config.values imports the package, and so the schema, first.)  Run
    away from the checkout, so the installed package is the one imported."""
    code = ("import importlib\nimport config.values as values\n%s\n"
            "importlib.reload(importlib.import_module('config.schema'))\n" % setup)
    return subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)


def test_a_key_of_a_type_without_rules_fails_at_import(tmp_path):
    section, key, _spec = first_key("float")
    done = import_config_after(tmp_path, "del values.VALUE_TYPES['float']")
    assert done.returncode != 0
    assert "AssertionError: [%s] %s: unknown type 'float'" % (section, key) in done.stderr


def test_a_key_of_a_form_without_rules_fails_at_import(tmp_path):
    section, key, spec = first_key("list", form="cidr")
    done = import_config_after(tmp_path, "del values.FORMS['cidr']")
    assert done.returncode != 0
    assert "AssertionError: [%s] %s: unknown form 'cidr'" % (section, key) in done.stderr


def test_a_default_its_own_rules_refuse_fails_at_import(tmp_path):
    section, key, _spec = first_key("int")
    done = import_config_after(tmp_path, "values.VALUE_TYPES['int'] = values.VALUE_TYPES['bool']")
    assert done.returncode != 0
    assert "AssertionError: default of [%s] %s has the wrong type" % (section, key) in done.stderr


def test_the_schema_as_shipped_imports(tmp_path):
    done = import_config_after(tmp_path, "")
    assert done.returncode == 0, done.stderr


# ------------------------------------------------------------------------------------------
# Every kind of message, byte for byte
# ------------------------------------------------------------------------------------------

FLOAT = first_key("float")
INTS = first_key("ints")
CIDRS = first_key("list", form="cidr")
SENSOR_KEYS = ", ".join(SCHEMA["sensor"])
SECTIONS = ", ".join("[%s]" % s for s in SCHEMA)
NAME = "a name without whitespace, at most 255 bytes"
IFNAMES = "an array of interface names (at least 1), or one string of comma-separated interface names"
PROXY = 'a URL "http://host:port" or "https://host:port" or "" (empty)'
CIDR_LIST = ("an array of IP addresses or CIDR ranges, or one string of comma-separated IP addresses or "
             "CIDR ranges")

MESSAGES = [
    # (id, file text, the problems with {f} for the file's path)
    ("int", '[sensor]\nsnaplen_bytes = 1.5\nworkers = 0\nworkers_ = 1\n', [
        "{f}:2: [sensor] snaplen_bytes = 1.5 has the wrong type: expected an integer, found a float; "
        "allowed: an integer from 64 to 262144",
        '{f}:3: [sensor] workers = 0 is out of range; allowed: "auto" or an integer from 1 to 256',
        "{f}:4: [sensor] unknown key workers_; known keys of [sensor]: %s; did you mean workers?" % SENSOR_KEYS]),
    ("int-words", '[sensor]\nworkers = "many"\n[server]\nhttp_port = [1]\n', [
        '{f}:2: [sensor] workers = "many" is not valid; allowed: "auto" or an integer from 1 to 256',
        "{f}:4: [server] http_port = [1] has the wrong type: expected an integer, found an array; "
        "allowed: an integer from 1 to 65535"]),
    ("bool", '[sensor]\npromiscuous = "yes"\n', [
        '{f}:2: [sensor] promiscuous = "yes" has the wrong type: expected a boolean (true or false), '
        "found a string; allowed: true or false"]),
    ("float", "[%s]\n%s = \"high\"\n" % FLOAT[:2], [
        '{f}:2: [%s] %s = "high" has the wrong type: expected a number, found a string; allowed: a number '
        "from %s to %s" % (FLOAT[0], FLOAT[1], FLOAT[2].min, FLOAT[2].max)]),
    ("float-range", "[%s]\n%s = %r\n" % (FLOAT[0], FLOAT[1], FLOAT[2].max + 1), [
        "{f}:2: [%s] %s = %r is out of range; allowed: a number from %s to %s"
        % (FLOAT[0], FLOAT[1], FLOAT[2].max + 1, FLOAT[2].min, FLOAT[2].max)]),
    ("str", '[sensor]\nsensor_name = "a b"\nuser = ""\nignore_regex = "a("\nhost_whitelist_file = "a\\u0000b"\n', [
        '{f}:2: [sensor] sensor_name = "a b" is not valid: it contains whitespace; allowed: %s or "" (empty)' % NAME,
        '{f}:3: [sensor] user = "" is not valid: it must not be empty; allowed: %s (not empty)' % NAME,
        '{f}:4: [sensor] ignore_regex = "a(" is not valid: it is not a valid regular expression (missing ), '
        'unterminated subpattern at position 1); allowed: a regular expression (Python syntax) or "" (empty)',
        '{f}:5: [sensor] host_whitelist_file = "a\\u0000b" is not valid: it contains a NUL character; '
        'allowed: a path or "" (empty)']),
    ("str-long-name", '[sensor]\nsensor_name = "%s"\n' % ("x" * 300), [
        '{f}:2: [sensor] sensor_name = "%s... is not valid: it is 300 bytes long, more than the 255 bytes a '
        'host name may have; allowed: %s or "" (empty)' % ("x" * 76, NAME)]),
    ("str-table", "[all]\nlog_dir = {a = 1}\n", [
        "{f}:2: [all] log_dir = {'a': 1} has the wrong type: expected a string, found a table; "
        "allowed: a path (not empty)"]),
    ("host", '[server]\nhttp_address = "999.1.1.1"\n', [
        '{f}:2: [server] http_address = "999.1.1.1" is not valid: it is neither an IP address nor a host name; '
        "allowed: an IP address or host name (not empty)"]),
    ("proxy", '[all]\nproxy_url = "http://h"\n', [
        '{f}:2: [all] proxy_url = "http://h" is not valid: the port is missing; allowed: %s' % PROXY]),
    ("proxy-credentials", '[all]\nproxy_url = "http://u:p@h:1"\n', [
        '{f}:2: [all] proxy_url = "http://u:p@h:1" is not valid: credentials in the URL are not supported; '
        "allowed: %s" % PROXY]),
    ("proxy-port", '[all]\nproxy_url = "http://h:99999"\n', [
        '{f}:2: [all] proxy_url = "http://h:99999" is not valid: it is not a valid URL (Port out of range '
        "0-65535); allowed: %s" % PROXY]),
    ("proxy-path", '[all]\nproxy_url = "http://h:1/x"\n', [
        '{f}:2: [all] proxy_url = "http://h:1/x" is not valid: only scheme, host and port are allowed; '
        "allowed: %s" % PROXY]),
    ("proxy-host", '[all]\nproxy_url = "http://:1"\n', [
        '{f}:2: [all] proxy_url = "http://:1" is not valid: the host is missing; allowed: %s' % PROXY]),
    ("proxy-space", '[all]\nproxy_url = "http://h :1"\n', [
        '{f}:2: [all] proxy_url = "http://h :1" is not valid: it contains whitespace; allowed: %s' % PROXY]),
    ("proxy-scheme", '[all]\nproxy_url = "ftp://h:1"\n', [
        '{f}:2: [all] proxy_url = "ftp://h:1" is not valid: the scheme must be http:// or https://; '
        "allowed: %s" % PROXY]),
    ("list", '[sensor]\ninterface = 5\n[all]\ntrail_sources = ["/a", ""]\n', [
        "{f}:2: [sensor] interface = 5 has the wrong type: expected a string or an array of strings, found an "
        "integer; allowed: %s" % IFNAMES,
        '{f}:4: [all] trail_sources = ["/a", ""] is not valid: item 2 is empty; allowed: an array of paths']),
    ("list-items", '[sensor]\ninterface = []\n', [
        "{f}:2: [sensor] interface = [] is not valid: it has fewer than 1 item(s); allowed: %s" % IFNAMES]),
    ("list-twice", '[sensor]\ninterface = "eth0,eth1,eth0"\n', [
        '{f}:2: [sensor] interface = "eth0,eth1,eth0" is not valid: "eth0" is listed twice; allowed: %s' % IFNAMES]),
    ("list-form", '[sensor]\ninterface = ["eth 0"]\n', [
        '{f}:2: [sensor] interface = ["eth 0"] is not valid: an interface name contains whitespace (item 1); '
        "allowed: %s" % IFNAMES]),
    ("list-item-type", "[%s]\n%s = [\"10.0.0.0/8\", 7]\n" % CIDRS[:2], [
        '{f}:2: [%s] %s = ["10.0.0.0/8", 7] has the wrong type: item 2 is an integer, expected a string; '
        "allowed: %s" % (CIDRS[0], CIDRS[1], CIDR_LIST)]),
    ("list-item-empty", "[%s]\n%s = \"10.0.0.0/8, , fe80::/10\"\n" % CIDRS[:2], [
        '{f}:2: [%s] %s = "10.0.0.0/8, , fe80::/10" is not valid: item 2 is empty; allowed: %s'
        % (CIDRS[0], CIDRS[1], CIDR_LIST)]),
    ("list-cidr", "[%s]\n%s = [\"10.0.0.0/33\"]\n" % CIDRS[:2], [
        '{f}:2: [%s] %s = ["10.0.0.0/33"] is not valid: it is not an IP address or CIDR range (item 1); '
        "allowed: %s" % (CIDRS[0], CIDRS[1], CIDR_LIST)]),
    ("ints", "[%s]\n%s = 445\n" % INTS[:2], [
        "{f}:2: [%s] %s = 445 has the wrong type: expected an array of integers, found an integer; allowed: an "
        "array of integers from %d to %d" % (INTS[0], INTS[1], INTS[2].min, INTS[2].max)]),
    ("ints-item-type", "[%s]\n%s = [445, true]\n" % INTS[:2], [
        "{f}:2: [%s] %s = [445, true] has the wrong type: item 2 is a boolean, expected an integer; allowed: an "
        "array of integers from %d to %d" % (INTS[0], INTS[1], INTS[2].min, INTS[2].max)]),
    ("ints-range", "[%s]\n%s = [445, %d]\n" % (INTS[0], INTS[1], INTS[2].max + 1), [
        "{f}:2: [%s] %s = [445, %d] is out of range (item 2); allowed: an array of integers from %d to %d"
        % (INTS[0], INTS[1], INTS[2].max + 1, INTS[2].min, INTS[2].max)]),
    ("ints-twice", "[%s]\n%s = [445, 445]\n" % INTS[:2], [
        "{f}:2: [%s] %s = [445, 445] is not valid: an item is listed twice; allowed: an array of integers "
        "from %d to %d" % (INTS[0], INTS[1], INTS[2].min, INTS[2].max)]),
    ("date", "[sensor]\nsnaplen_bytes = 1979-05-27\n", [
        "{f}:2: [sensor] snaplen_bytes = datetime.date(1979, 5, 27) has the wrong type: expected an integer, "
        "found a date/time; allowed: an integer from 64 to 262144"]),
    ("sections", "[sensr]\nworkers = 1\n[zzz]\nx = 1\n", [
        "{f}:1: unknown section [sensr]; known sections: %s; did you mean [sensor]?" % SECTIONS,
        "{f}:3: unknown section [zzz]; known sections: %s" % SECTIONS]),
    ("wrong-section", '[sensor]\nlog_dir = "/x"\nqqqq = 1\n', [
        "{f}:2: [sensor] unknown key log_dir; known keys of [sensor]: %s; log_dir belongs in [all]" % SENSOR_KEYS,
        "{f}:3: [sensor] unknown key qqqq; known keys of [sensor]: %s" % SENSOR_KEYS]),
    ("top-level", "snaplen_bytes = 1\nsensor = 1\n", [
        "{f}:1: snaplen_bytes is outside any section; it belongs under [sensor]",
        "{f}:2: sensor must be a table (a [sensor] header), found an integer"]),
    ("cross-key", "[server]\nuse_ssl = true\n", [
        "{f}:2: [server] use_ssl = true needs [server] ssl_pem to name a PEM file; allowed: set ssl_pem, "
        "or use_ssl = false"]),
    ("toml-column", "[sensor]\nworkers = \n", ["{f}:2:11: TOML syntax error: Invalid value"]),
    ("toml-end", "[sensor]\nworkers = [1,\n", ["{f}:3: TOML syntax error: Invalid value"]),
    ("maltrail-conf", "LOG_DIR /var/log\nUSE_HEURISTICS true\n", [
        "{f}: this is Maltrail's maltrail.conf format, not TOML; maltrail-engine reads maltrail.toml. Write the "
        "equivalent maltrail.toml with: maltrail-engine config import {f} (-o FILE to choose where; every "
        "option is carried over or named as not applicable)"]),
]


@pytest.mark.parametrize("text,expected", [c[1:] for c in MESSAGES], ids=[c[0] for c in MESSAGES])
def test_file_messages_byte_for_byte(tmp_path, text, expected):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    assert raised.value.problems == [line.replace("{f}", str(path)) for line in expected]


def test_file_messages_for_unreadable_files_byte_for_byte(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_bytes(b'[sensor]\n\nworkers = "\xff"\n')
    cases = [(bad, "%s:3: not valid UTF-8 text (byte offset 21)" % bad),
             (tmp_path / "none.toml", "%s: configuration file not found" % (tmp_path / "none.toml")),
             (tmp_path, "%s: is a directory, not a configuration file" % tmp_path)]
    for path, message in cases:
        with pytest.raises(ConfigError) as raised:
            load_config(path)
        assert raised.value.problems == [message]


@pytest.mark.parametrize("overrides,expected", [
    ({("sensr", "x"): 1},
     ["command line: unknown section [sensr]; known sections: %s; did you mean [sensor]?" % SECTIONS]),
    ({("sensor", "log_dir"): "/x"},
     ["command line: [sensor] unknown key log_dir; known keys of [sensor]: %s; log_dir belongs in [all]"
      % SENSOR_KEYS]),
    ({("sensor", "snaplen_bytes"): "big", ("sensor", "interface"): "a,\udcff"},
     ['command line: [sensor] snaplen_bytes = "big" has the wrong type: expected an integer, found a string; '
      "allowed: an integer from 64 to 262144",
      'command line: [sensor] interface = "a,\udcff" is not valid: it is not valid UTF-8 text (item 2); '
      "allowed: %s" % IFNAMES]),
    ({("sensor", "capture_filter"): "\udcff"},
     ['command line: [sensor] capture_filter = "\udcff" is not valid: it is not valid UTF-8 text; '
      "allowed: any string"]),
    ({("server", "use_ssl"): True},
     ["command line: [server] use_ssl = true needs [server] ssl_pem to name a PEM file; allowed: set ssl_pem, "
      "or use_ssl = false"]),
], ids=["section", "wrong-section", "types", "undecodable", "cross-key"])
def test_command_line_messages_byte_for_byte(overrides, expected):
    with pytest.raises(ConfigError) as raised:
        apply_overrides(load_config(None), overrides)
    assert raised.value.problems == expected
